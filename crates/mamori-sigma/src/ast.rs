//! The parsed form of Sigma documents, before compilation.
//!
//! These types mirror the Sigma specification (v2): detection rules, correlation rules and
//! filters. They carry no matching logic; see [`crate::compile`] for that.

use std::path::PathBuf;

use mamori_model::Level;

/// Metadata shared by every Sigma document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleMeta {
    /// `id`, a UUID in well-formed rules.
    pub id: Option<String>,
    /// `name`, the alternative reference used by correlation rules.
    pub name: Option<String>,
    /// `title`.
    pub title: String,
    /// `status` (`stable`, `test`, `experimental`, …).
    pub status: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// `author`, kept for attribution (Detection Rule License).
    pub author: Option<String>,
    /// `references`.
    pub references: Vec<String>,
    /// `level`; rules without one are treated as medium.
    pub level: Level,
    /// `tags` (ATT&CK tags among them).
    pub tags: Vec<String>,
    /// `falsepositives`.
    pub falsepositives: Vec<String>,
    /// `fields`: the event fields worth showing with a detection.
    pub fields: Vec<String>,
    /// `date`.
    pub date: Option<String>,
    /// `modified`.
    pub modified: Option<String>,
    /// File the document was read from, when it was read from a file.
    pub path: Option<PathBuf>,
}

/// `logsource`: which events a rule applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogSource {
    /// `product` (`windows`, `linux`, …), lowercased.
    pub product: Option<String>,
    /// `category` (`process_creation`, …), lowercased.
    pub category: Option<String>,
    /// `service` (`security`, `sysmon`, …), lowercased.
    pub service: Option<String>,
}

/// A scalar value as written in a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// A string (may contain `*`/`?` wildcards and `\` escapes).
    Str(String),
    /// An integer.
    Int(i64),
    /// A floating point number, as written.
    Float(String),
    /// A boolean.
    Bool(bool),
    /// `null`.
    Null,
}

/// One `field|modifier|…: values` entry of a selection.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSpec {
    /// The field name; `None` for a keyword search (`'|all': [...]`).
    pub field: Option<String>,
    /// Modifiers, in the order written.
    pub modifiers: Vec<String>,
    /// The values (a single value is a one-element list).
    pub values: Vec<Scalar>,
}

/// A named search identifier in `detection`.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// A list of plain values: keyword search over all fields, ORed.
    Keywords(Vec<Scalar>),
    /// One or more maps, ORed; the entries of each map are ANDed.
    Maps(Vec<Vec<FieldSpec>>),
}

/// `detection`: search identifiers and the condition(s) that combine them.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// Search identifiers in the order written.
    pub selections: Vec<(String, Selection)>,
    /// Conditions; several conditions are ORed.
    pub conditions: Vec<String>,
}

/// A Sigma detection rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Metadata.
    pub meta: RuleMeta,
    /// Which events it applies to.
    pub logsource: LogSource,
    /// What it looks for.
    pub detection: Detection,
}

/// The kind of a correlation rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CorrelationKind {
    /// Count matching events per group in the time span.
    EventCount,
    /// Count distinct values of a field per group in the time span.
    ValueCount,
    /// All referenced rules match within the time span, in any order.
    Temporal,
    /// All referenced rules match within the time span, in the listed order.
    TemporalOrdered,
}

impl CorrelationKind {
    /// The name used in rules.
    pub fn as_str(self) -> &'static str {
        match self {
            CorrelationKind::EventCount => "event_count",
            CorrelationKind::ValueCount => "value_count",
            CorrelationKind::Temporal => "temporal",
            CorrelationKind::TemporalOrdered => "temporal_ordered",
        }
    }
}

/// A comparison in a correlation condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `gt`.
    Gt,
    /// `gte`.
    Gte,
    /// `lt`.
    Lt,
    /// `lte`.
    Lte,
    /// `eq`.
    Eq,
    /// `neq`.
    Neq,
}

impl CmpOp {
    /// Whether `lhs op rhs` holds.
    pub fn holds(self, lhs: f64, rhs: f64) -> bool {
        match self {
            CmpOp::Gt => lhs > rhs,
            CmpOp::Gte => lhs >= rhs,
            CmpOp::Lt => lhs < rhs,
            CmpOp::Lte => lhs <= rhs,
            CmpOp::Eq => lhs == rhs,
            CmpOp::Neq => lhs != rhs,
        }
    }
}

/// A Sigma correlation rule.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelationRule {
    /// Metadata.
    pub meta: RuleMeta,
    /// `correlation.type`.
    pub kind: CorrelationKind,
    /// `correlation.rules`: ids or names of the rules it combines.
    pub rules: Vec<String>,
    /// `correlation.group-by`.
    pub group_by: Vec<String>,
    /// `correlation.timespan` in milliseconds.
    pub timespan_ms: i64,
    /// `correlation.condition`: comparisons that must all hold.
    pub condition: Vec<(CmpOp, f64)>,
    /// `correlation.condition.field` (value_count).
    pub value_field: Option<String>,
    /// `correlation.aliases`: alias → (rule reference → field).
    pub aliases: Vec<(String, Vec<(String, String)>)>,
    /// `correlation.generate`: whether the referenced rules also report their own matches.
    pub generate: bool,
}

/// A Sigma filter (a condition added to existing rules, for tuning).
#[derive(Debug, Clone, PartialEq)]
pub struct FilterRule {
    /// Metadata.
    pub meta: RuleMeta,
    /// Which events it applies to.
    pub logsource: LogSource,
    /// `filter.rules`: ids or names of the rules it applies to (empty: every rule).
    pub rules: Vec<String>,
    /// The filter's selections and condition.
    pub detection: Detection,
}

/// Any Sigma document.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    /// A detection rule.
    Rule(Rule),
    /// A correlation rule.
    Correlation(CorrelationRule),
    /// A filter.
    Filter(FilterRule),
}

impl Document {
    /// The document's metadata.
    pub fn meta(&self) -> &RuleMeta {
        match self {
            Document::Rule(r) => &r.meta,
            Document::Correlation(c) => &c.meta,
            Document::Filter(f) => &f.meta,
        }
    }

    /// Mutable metadata.
    pub fn meta_mut(&mut self) -> &mut RuleMeta {
        match self {
            Document::Rule(r) => &mut r.meta,
            Document::Correlation(c) => &mut c.meta,
            Document::Filter(f) => &mut f.meta,
        }
    }
}
