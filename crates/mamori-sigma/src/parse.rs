//! YAML text → [`Document`]s.
//!
//! A file may hold several documents separated by `---` (a correlation rule followed by the
//! rules it uses, for example). Each document is parsed on its own: one bad document never
//! hides the others. Parsing checks structure only; whether values and modifiers make sense
//! is decided by the compiler.

use yaml_rust2::{Yaml, YamlLoader};

use crate::ast::*;
use crate::error::SigmaError;

/// Largest rule file accepted, a guard against hostile input (SigmaHQ rules are < 100 KiB).
pub const MAX_RULE_FILE_BYTES: usize = 4 << 20;

/// Deepest YAML nesting accepted.
const MAX_DEPTH: usize = 64;

/// Parses every document in `text`; each element is one document or why it was refused.
pub fn parse_documents(text: &str) -> Vec<Result<Document, SigmaError>> {
    if text.len() > MAX_RULE_FILE_BYTES {
        return vec![Err(SigmaError::Yaml(format!(
            "file is {} bytes, larger than the {} byte limit",
            text.len(),
            MAX_RULE_FILE_BYTES
        )))];
    }
    let docs = match YamlLoader::load_from_str(text) {
        Ok(d) => d,
        Err(e) => return vec![Err(SigmaError::Yaml(e.to_string()))],
    };
    docs.iter()
        .filter(|d| !matches!(d, Yaml::Null))
        .map(parse_document)
        .collect()
}

/// Parses one YAML document.
pub fn parse_document(doc: &Yaml) -> Result<Document, SigmaError> {
    if depth(doc) > MAX_DEPTH {
        return Err(SigmaError::Yaml(format!(
            "nesting deeper than {MAX_DEPTH} levels"
        )));
    }
    if !matches!(doc, Yaml::Hash(_)) {
        return Err(SigmaError::invalid(
            "(document)",
            "a Sigma document must be a mapping",
        ));
    }
    let meta = parse_meta(doc)?;
    if !doc["correlation"].is_badvalue() {
        return parse_correlation(doc, meta).map(Document::Correlation);
    }
    if !doc["filter"].is_badvalue() {
        return parse_filter(doc, meta).map(Document::Filter);
    }
    let logsource = parse_logsource(&doc["logsource"])?;
    let detection = match &doc["detection"] {
        Yaml::BadValue => return Err(SigmaError::Missing("detection")),
        d => parse_detection(d, "detection")?,
    };
    Ok(Document::Rule(Rule {
        meta,
        logsource,
        detection,
    }))
}

fn depth(y: &Yaml) -> usize {
    match y {
        Yaml::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Yaml::Hash(h) => 1 + h.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn opt_str(y: &Yaml, key: &str) -> Result<Option<String>, SigmaError> {
    match &y[key] {
        Yaml::BadValue | Yaml::Null => Ok(None),
        v => scalar_string(v)
            .map(Some)
            .ok_or_else(|| SigmaError::invalid(key, "expected a string")),
    }
}

fn scalar_string(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn str_list(y: &Yaml, key: &str) -> Result<Vec<String>, SigmaError> {
    match &y[key] {
        Yaml::BadValue | Yaml::Null => Ok(Vec::new()),
        Yaml::Array(a) => a
            .iter()
            .map(|v| {
                scalar_string(v)
                    .ok_or_else(|| SigmaError::invalid(key, "expected a list of strings"))
            })
            .collect(),
        v => scalar_string(v)
            .map(|s| vec![s])
            .ok_or_else(|| SigmaError::invalid(key, "expected a list of strings")),
    }
}

fn parse_meta(doc: &Yaml) -> Result<RuleMeta, SigmaError> {
    let title = opt_str(doc, "title")?.ok_or(SigmaError::Missing("title"))?;
    let level = match opt_str(doc, "level")? {
        Some(l) => l.parse().map_err(|e: mamori_model::ParseLevelError| {
            SigmaError::invalid("level", e.to_string())
        })?,
        None => mamori_model::Level::Medium,
    };
    let author = match &doc["author"] {
        Yaml::Array(_) => Some(str_list(doc, "author")?.join(", ")),
        _ => opt_str(doc, "author")?,
    };
    Ok(RuleMeta {
        id: opt_str(doc, "id")?,
        name: opt_str(doc, "name")?,
        title,
        status: opt_str(doc, "status")?,
        description: opt_str(doc, "description")?,
        author,
        references: str_list(doc, "references")?,
        level,
        tags: str_list(doc, "tags")?,
        falsepositives: str_list(doc, "falsepositives")?,
        fields: str_list(doc, "fields")?,
        date: opt_str(doc, "date")?,
        modified: opt_str(doc, "modified")?,
        path: None,
    })
}

fn parse_logsource(y: &Yaml) -> Result<LogSource, SigmaError> {
    match y {
        Yaml::BadValue => Err(SigmaError::Missing("logsource")),
        Yaml::Hash(_) => {
            let get = |k: &str| -> Result<Option<String>, SigmaError> {
                Ok(opt_str(y, k)
                    .map_err(|_| {
                        SigmaError::invalid(format!("logsource.{k}"), "expected a string")
                    })?
                    .map(|s| s.to_ascii_lowercase()))
            };
            Ok(LogSource {
                product: get("product")?,
                category: get("category")?,
                service: get("service")?,
            })
        }
        _ => Err(SigmaError::invalid("logsource", "expected a mapping")),
    }
}

fn parse_scalar(y: &Yaml, key: &str) -> Result<Scalar, SigmaError> {
    Ok(match y {
        Yaml::String(s) => Scalar::Str(s.clone()),
        Yaml::Integer(i) => Scalar::Int(*i),
        Yaml::Real(r) => Scalar::Float(r.clone()),
        Yaml::Boolean(b) => Scalar::Bool(*b),
        Yaml::Null => Scalar::Null,
        _ => {
            return Err(SigmaError::invalid(
                key,
                "expected a string, number, boolean or null",
            ));
        }
    })
}

fn parse_values(y: &Yaml, key: &str) -> Result<Vec<Scalar>, SigmaError> {
    match y {
        Yaml::Array(a) => a.iter().map(|v| parse_scalar(v, key)).collect(),
        v => Ok(vec![parse_scalar(v, key)?]),
    }
}

fn parse_map(h: &yaml_rust2::yaml::Hash, key: &str) -> Result<Vec<FieldSpec>, SigmaError> {
    let mut out = Vec::with_capacity(h.len());
    for (k, v) in h {
        let kstr = scalar_string(k)
            .ok_or_else(|| SigmaError::invalid(key, "field names must be strings"))?;
        let mut parts = kstr.split('|');
        let field = parts.next().unwrap_or_default().to_string();
        let modifiers: Vec<String> = parts.map(str::to_string).collect();
        if modifiers.iter().any(String::is_empty) {
            return Err(SigmaError::invalid(
                format!("{key}.{kstr}"),
                "empty modifier (`||` or trailing `|`)",
            ));
        }
        out.push(FieldSpec {
            field: (!field.is_empty()).then_some(field),
            modifiers,
            values: parse_values(v, &format!("{key}.{kstr}"))?,
        });
    }
    Ok(out)
}

fn parse_detection(y: &Yaml, key: &str) -> Result<Detection, SigmaError> {
    let Yaml::Hash(h) = y else {
        return Err(SigmaError::invalid(key, "expected a mapping"));
    };
    let mut selections = Vec::new();
    let mut conditions = Vec::new();
    for (k, v) in h {
        let name = scalar_string(k)
            .ok_or_else(|| SigmaError::invalid(key, "search identifiers must be strings"))?;
        if name == "condition" {
            match v {
                Yaml::Array(a) => {
                    for c in a {
                        conditions.push(scalar_string(c).ok_or_else(|| {
                            SigmaError::invalid("detection.condition", "expected a string")
                        })?);
                    }
                }
                other => conditions.push(scalar_string(other).ok_or_else(|| {
                    SigmaError::invalid("detection.condition", "expected a string")
                })?),
            }
            continue;
        }
        if name == "timeframe" {
            return Err(SigmaError::invalid(
                "detection.timeframe",
                "timeframe belongs to deprecated aggregation conditions; use a correlation rule",
            ));
        }
        let path = format!("{key}.{name}");
        let sel = match v {
            Yaml::Hash(m) => Selection::Maps(vec![parse_map(m, &path)?]),
            Yaml::Array(items)
                if items.iter().all(|i| matches!(i, Yaml::Hash(_))) && !items.is_empty() =>
            {
                let mut maps = Vec::new();
                for i in items {
                    if let Yaml::Hash(m) = i {
                        maps.push(parse_map(m, &path)?);
                    }
                }
                Selection::Maps(maps)
            }
            Yaml::Array(items) => {
                if items
                    .iter()
                    .any(|i| matches!(i, Yaml::Hash(_) | Yaml::Array(_)))
                {
                    return Err(SigmaError::invalid(
                        path,
                        "a list must hold either only maps or only plain values",
                    ));
                }
                Selection::Keywords(parse_values(v, &path)?)
            }
            Yaml::Null => return Err(SigmaError::invalid(path, "empty search identifier")),
            other => Selection::Keywords(vec![parse_scalar(other, &path)?]),
        };
        selections.push((name, sel));
    }
    if conditions.is_empty() {
        return Err(SigmaError::Missing("detection.condition"));
    }
    Ok(Detection {
        selections,
        conditions,
    })
}

/// Parses a Sigma time span (`30s`, `5m`, `1h`, `2d`, `1w`) into milliseconds.
pub fn parse_timespan(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult).filter(|v| *v > 0)
}

fn parse_correlation(doc: &Yaml, meta: RuleMeta) -> Result<CorrelationRule, SigmaError> {
    let c = &doc["correlation"];
    if !matches!(c, Yaml::Hash(_)) {
        return Err(SigmaError::invalid("correlation", "expected a mapping"));
    }
    let kind = match opt_str(c, "type")?.as_deref() {
        Some("event_count") => CorrelationKind::EventCount,
        Some("value_count") => CorrelationKind::ValueCount,
        Some("temporal") => CorrelationKind::Temporal,
        Some("temporal_ordered") => CorrelationKind::TemporalOrdered,
        Some(other) => {
            return Err(SigmaError::invalid(
                "correlation.type",
                format!(
                    "unknown type {other:?} (expected event_count, value_count, temporal or temporal_ordered)"
                ),
            ));
        }
        None => return Err(SigmaError::Missing("correlation.type")),
    };
    let rules = str_list(c, "rules")?;
    if rules.is_empty() {
        return Err(SigmaError::Missing("correlation.rules"));
    }
    let group_by = match &c["group-by"] {
        Yaml::BadValue => str_list(c, "group_by")?,
        _ => str_list(c, "group-by")?,
    };
    let timespan = opt_str(c, "timespan")?
        .or(opt_str(c, "timeframe")?)
        .ok_or(SigmaError::Missing("correlation.timespan"))?;
    let timespan_ms = parse_timespan(&timespan).ok_or_else(|| {
        SigmaError::invalid(
            "correlation.timespan",
            format!("{timespan:?} is not a time span like 30s, 5m, 1h or 1d"),
        )
    })?;
    let mut condition = Vec::new();
    let mut value_field = None;
    match &c["condition"] {
        Yaml::BadValue | Yaml::Null => {}
        Yaml::Hash(h) => {
            for (k, v) in h {
                let k = scalar_string(k).unwrap_or_default();
                if k == "field" {
                    value_field = Some(scalar_string(v).ok_or_else(|| {
                        SigmaError::invalid("correlation.condition.field", "expected a field name")
                    })?);
                    continue;
                }
                let op = match k.as_str() {
                    "gt" => CmpOp::Gt,
                    "gte" => CmpOp::Gte,
                    "lt" => CmpOp::Lt,
                    "lte" => CmpOp::Lte,
                    "eq" => CmpOp::Eq,
                    "neq" => CmpOp::Neq,
                    other => {
                        return Err(SigmaError::invalid(
                            "correlation.condition",
                            format!(
                                "unknown operator {other:?} (expected gt, gte, lt, lte, eq, neq, field)"
                            ),
                        ));
                    }
                };
                let n = match v {
                    Yaml::Integer(i) => *i as f64,
                    Yaml::Real(r) => r.parse().unwrap_or(f64::NAN),
                    _ => f64::NAN,
                };
                if !n.is_finite() {
                    return Err(SigmaError::invalid(
                        format!("correlation.condition.{k}"),
                        "expected a number",
                    ));
                }
                condition.push((op, n));
            }
        }
        _ => {
            return Err(SigmaError::invalid(
                "correlation.condition",
                "expected a mapping",
            ));
        }
    }
    match kind {
        CorrelationKind::EventCount | CorrelationKind::ValueCount if condition.is_empty() => {
            return Err(SigmaError::Missing("correlation.condition"));
        }
        CorrelationKind::ValueCount if value_field.is_none() => {
            return Err(SigmaError::Missing("correlation.condition.field"));
        }
        _ => {}
    }
    let mut aliases = Vec::new();
    if let Yaml::Hash(h) = &c["aliases"] {
        for (alias, map) in h {
            let alias = scalar_string(alias).unwrap_or_default();
            let Yaml::Hash(m) = map else {
                return Err(SigmaError::invalid(
                    format!("correlation.aliases.{alias}"),
                    "expected a mapping of rule → field",
                ));
            };
            let mut pairs = Vec::new();
            for (r, f) in m {
                match (scalar_string(r), scalar_string(f)) {
                    (Some(r), Some(f)) => pairs.push((r, f)),
                    _ => {
                        return Err(SigmaError::invalid(
                            format!("correlation.aliases.{alias}"),
                            "expected a mapping of rule → field",
                        ));
                    }
                }
            }
            aliases.push((alias, pairs));
        }
    }
    let generate = match &c["generate"] {
        Yaml::Boolean(b) => *b,
        Yaml::BadValue | Yaml::Null => match &doc["generate"] {
            Yaml::Boolean(b) => *b,
            _ => false,
        },
        _ => {
            return Err(SigmaError::invalid(
                "correlation.generate",
                "expected true or false",
            ));
        }
    };
    Ok(CorrelationRule {
        meta,
        kind,
        rules,
        group_by,
        timespan_ms,
        condition,
        value_field,
        aliases,
        generate,
    })
}

fn parse_filter(doc: &Yaml, meta: RuleMeta) -> Result<FilterRule, SigmaError> {
    let f = &doc["filter"];
    if !matches!(f, Yaml::Hash(_)) {
        return Err(SigmaError::invalid("filter", "expected a mapping"));
    }
    let rules = str_list(f, "rules")?;
    // The filter's selections sit beside `rules` and `condition` inside `filter`.
    let mut body = yaml_rust2::yaml::Hash::new();
    if let Yaml::Hash(h) = f {
        for (k, v) in h {
            if k.as_str() != Some("rules") {
                body.insert(k.clone(), v.clone());
            }
        }
    }
    let detection = parse_detection(&Yaml::Hash(body), "filter")?;
    let logsource = match &doc["logsource"] {
        Yaml::BadValue => LogSource::default(),
        l => parse_logsource(l)?,
    };
    Ok(FilterRule {
        meta,
        logsource,
        rules,
        detection,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Document, SigmaError> {
        let mut d = parse_documents(text);
        assert_eq!(d.len(), 1);
        d.remove(0)
    }

    #[test]
    fn parses_a_rule() {
        let d = one(r#"
title: Test
id: 1
level: high
tags: [attack.t1059]
logsource: {product: Windows, category: process_creation}
detection:
    sel:
        Image|endswith: '\cmd.exe'
        CommandLine|contains|all: [a, b]
    kw: [evil, 3]
    condition: sel and not kw
"#)
        .unwrap();
        let Document::Rule(r) = d else { panic!() };
        assert_eq!(r.meta.level, mamori_model::Level::High);
        assert_eq!(r.logsource.product.as_deref(), Some("windows"));
        assert_eq!(r.detection.selections.len(), 2);
        let Selection::Maps(m) = &r.detection.selections[0].1 else {
            panic!()
        };
        assert_eq!(m[0][1].modifiers, vec!["contains", "all"]);
        assert!(matches!(r.detection.selections[1].1, Selection::Keywords(ref k) if k.len() == 2));
    }

    #[test]
    fn precise_errors() {
        let e = one("title: x\nlogsource: {}\n").unwrap_err();
        assert_eq!(e, SigmaError::Missing("detection"));
        let e = one("title: x\nlogsource: {}\ndetection: {sel: {a: 1}}\n").unwrap_err();
        assert_eq!(e, SigmaError::Missing("detection.condition"));
        let e = one(
            "title: x\nlevel: severe\nlogsource: {}\ndetection: {sel: {a: 1}, condition: sel}\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown level"), "{e}");
        let d = parse_documents("title: [unclosed");
        assert!(matches!(d[0], Err(SigmaError::Yaml(_))));
    }

    #[test]
    fn parses_correlation_and_filter() {
        let d = parse_documents(
            r#"
title: Many failures
correlation:
    type: event_count
    rules: [failed_logon]
    group-by: [TargetUserName]
    timespan: 5m
    condition: {gte: 10}
---
title: Allow backup
logsource: {product: windows}
filter:
    rules: [abc]
    sel: {User: backup}
    condition: not sel
"#,
        );
        let Ok(Document::Correlation(c)) = &d[0] else {
            panic!("{:?}", d[0])
        };
        assert_eq!(c.timespan_ms, 300_000);
        assert_eq!(c.condition, vec![(CmpOp::Gte, 10.0)]);
        let Ok(Document::Filter(f)) = &d[1] else {
            panic!("{:?}", d[1])
        };
        assert_eq!(f.rules, vec!["abc"]);
        assert_eq!(f.detection.conditions, vec!["not sel"]);
    }

    #[test]
    fn timespans() {
        assert_eq!(parse_timespan("30s"), Some(30_000));
        assert_eq!(parse_timespan("1h"), Some(3_600_000));
        assert_eq!(parse_timespan("h"), None);
        assert_eq!(parse_timespan("10y"), None);
        assert_eq!(parse_timespan("99999999999999999999d"), None);
    }
}
