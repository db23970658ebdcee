//! Compilation: parsed documents → an immutable [`RuleSet`].
//!
//! Compile once, match many (as YARA-X separates its compiler from its scanner):
//!
//! * every field a rule names becomes a numbered *slot*; the [`FieldIndex`] maps event field
//!   names — Sigma names and their ECS/Security-log aliases from
//!   [`mamori_model::fields`] — to slots, so an event is read once per scan;
//! * every logsource becomes a [`Route`]; rules are grouped by route;
//! * every rule gets, where one exists, a set of lowercase literals at least one of which
//!   must occur in the event for the rule to match. One Aho-Corasick automaton over all those
//!   literals tells the scanner which rules can match an event at all; the others are never
//!   evaluated.
//!
//! A rule that cannot be compiled is returned with its [`SigmaError`] and left out; it never
//! stops the others.

use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

use crate::ast::*;
use crate::condition::{Cond, parse_condition};
use crate::error::SigmaError;
use crate::logsource::Route;
use crate::matcher::{Modifiers, ValueMatcher, compile_values};

/// Options that change how rules compile.
#[derive(Debug, Clone, Default)]
pub struct CompileOptions {
    /// Values for `%name%` placeholders used with the `expand` modifier.
    pub placeholders: HashMap<String, Vec<String>>,
    /// Apply every rule to every event, whatever its logsource says: plain Sigma matching
    /// as naive tools do it. Only for measuring what routing prevents.
    pub ignore_logsource: bool,
}

/// What kind of rule a [`RuleInfo`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// A detection rule, matched against single events.
    Detection,
    /// A correlation rule, matched against detections over time.
    Correlation(CorrelationKind),
}

/// Public facts about one compiled rule.
#[derive(Debug, Clone)]
pub struct RuleInfo {
    /// The rule's metadata.
    pub meta: Arc<RuleMeta>,
    /// Its logsource (empty for correlations).
    pub logsource: LogSource,
    /// Detection or correlation.
    pub kind: RuleKind,
    /// Whether its own matches are reported (false for rules used only by correlations
    /// with `generate: false`).
    pub reported: bool,
}

/// A field test inside a selection map.
#[derive(Debug, Clone)]
pub(crate) struct FieldTest {
    pub slot: u32,
    pub kind: TestKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefMode {
    Eq,
    Contains,
    Prefix,
    Suffix,
}

#[derive(Debug, Clone)]
pub(crate) enum TestKind {
    Values {
        matchers: Vec<ValueMatcher>,
        all: bool,
    },
    Exists(bool),
    FieldRef {
        other: u32,
        mode: RefMode,
        cased: bool,
    },
}

/// A compiled search identifier.
#[derive(Debug, Clone)]
pub(crate) enum SelNode {
    /// Keyword search over every value of the event.
    Keywords {
        matchers: Vec<ValueMatcher>,
        all: bool,
    },
    /// Maps, ORed; tests within a map ANDed.
    Maps(Vec<Vec<FieldTest>>),
}

/// A condition with its search identifiers.
#[derive(Debug, Clone)]
pub(crate) struct CompiledCond {
    pub cond: Cond,
    pub sels: Vec<SelNode>,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub route: u32,
    pub main: CompiledCond,
    /// Sigma filters applied to this rule: all must hold as well.
    pub filters: Vec<CompiledCond>,
    /// Whether the prefilter can rule this rule out.
    pub prefiltered: bool,
    /// Event ids the rule can only match (from `EventID` selections), if known.
    pub event_ids: Option<Vec<u32>>,
}

/// A compiled correlation rule.
#[derive(Debug, Clone)]
pub(crate) struct CompiledCorrelation {
    pub kind: CorrelationKind,
    /// Referenced rules (indices into the rule list), in the listed order.
    pub rules: Vec<u32>,
    /// Group-by field names; per referenced rule, the field name to read (aliases resolved).
    pub group_by: Vec<String>,
    pub group_fields: Vec<Vec<String>>,
    pub value_field: Option<String>,
    pub timespan_ms: i64,
    pub condition: Vec<(CmpOp, f64)>,
}

/// Event field name → slots, resolved once at compile time.
#[derive(Debug, Default, Clone)]
pub(crate) struct FieldIndex {
    map: HashMap<Box<str>, Vec<(u32, bool)>, FxBuild>,
    names: Vec<String>,
}

impl FieldIndex {
    fn slot(&mut self, sigma_name: &str) -> u32 {
        if let Some(v) = self.map.get(sigma_name)
            && let Some((s, _)) = v.iter().find(|(_, direct)| *direct)
        {
            return *s;
        }
        let s = self.names.len() as u32;
        self.names.push(sigma_name.to_string());
        self.map
            .entry(sigma_name.into())
            .or_default()
            .push((s, true));
        for alias in mamori_model::fields::aliases_of(sigma_name) {
            self.map
                .entry((*alias).into())
                .or_default()
                .push((s, false));
        }
        s
    }

    /// Forgets every slot created after `checkpoint` (a previous [`FieldIndex::len`]), so a
    /// rule that fails to compile leaves nothing behind.
    fn rollback(&mut self, checkpoint: usize) {
        if self.names.len() <= checkpoint {
            return;
        }
        for name in self.names.drain(checkpoint..).collect::<Vec<_>>() {
            for key in std::iter::once(name.as_str())
                .chain(mamori_model::fields::aliases_of(&name).iter().copied())
            {
                if let Some(v) = self.map.get_mut(key) {
                    v.retain(|(s, _)| (*s as usize) < checkpoint);
                    if v.is_empty() {
                        self.map.remove(key);
                    }
                }
            }
        }
    }

    /// Slots an event field named `name` fills, each with whether it is the Sigma name itself.
    #[inline]
    pub(crate) fn lookup(&self, name: &str) -> Option<&[(u32, bool)]> {
        self.map.get(name).map(Vec::as_slice)
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn find(&self, sigma_name: &str) -> Option<u32> {
        self.map
            .get(sigma_name)?
            .iter()
            .find(|(_, d)| *d)
            .map(|(s, _)| *s)
    }
}

/// Slots every rule set has, in this order: the scanner keys Windows events by them.
pub(crate) const SLOT_EVENT_ID: u32 = 0;
pub(crate) const SLOT_CHANNEL: u32 = 1;
pub(crate) const SLOT_PROVIDER: u32 = 2;

impl FieldIndex {
    fn with_routing_slots() -> Self {
        let mut f = FieldIndex::default();
        for (name, want) in [
            ("EventID", SLOT_EVENT_ID),
            ("Channel", SLOT_CHANNEL),
            ("Provider_Name", SLOT_PROVIDER),
        ] {
            let got = f.slot(name);
            debug_assert_eq!(got, want);
        }
        f
    }
}

/// FxHash: a fast non-cryptographic hash for the short field names looked up per event.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxBuild;

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl std::hash::BuildHasher for FxBuild {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher(0)
    }
}

impl std::hash::Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// One prefilter automaton: the literals that must occur in one slot's value.
#[derive(Debug, Clone)]
pub(crate) struct PrefilterGroup {
    /// The logsource route of the rules it serves.
    pub route: u32,
    /// The slot whose text is scanned, or [`ANY_FIELD`] for all of the event's text.
    pub slot: u32,
    pub ac: AhoCorasick,
    /// Pattern id → rules that need it.
    pub pattern_rules: Vec<Vec<u32>>,
}

/// The prefilter: per field, literal → rules that need it.
#[derive(Debug, Clone)]
pub(crate) struct Prefilter {
    pub groups: Vec<PrefilterGroup>,
}

/// An immutable, compiled set of Sigma rules, shared by any number of scanners.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub(crate) infos: Vec<RuleInfo>,
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) correlations: Vec<(u32, CompiledCorrelation)>,
    pub(crate) fields: FieldIndex,
    pub(crate) routes: Vec<Route>,
    pub(crate) route_rules: Vec<Vec<u32>>,
    pub(crate) prefilter: Prefilter,
    /// Per detection rule: correlations (indices into `correlations`) it feeds.
    pub(crate) feeds: Vec<Vec<u32>>,
    /// Per rule, the correlation fields to capture when it matches.
    pub(crate) capture: Vec<Vec<String>>,
}

impl RuleSet {
    /// Every compiled rule: detection rules first, then correlation rules. A rule's index
    /// here is the `rule` of its matches.
    pub fn rules(&self) -> &[RuleInfo] {
        &self.infos
    }

    /// Number of detection rules (correlations follow them in [`RuleSet::rules`]).
    pub fn detection_count(&self) -> usize {
        self.rules.len()
    }

    /// Number of correlation rules.
    pub fn correlation_count(&self) -> usize {
        self.correlations.len()
    }

    /// Number of distinct literals in the prefilter.
    pub fn prefilter_literals(&self) -> usize {
        self.prefilter
            .groups
            .iter()
            .map(|g| g.pattern_rules.len())
            .sum()
    }

    /// Heap bytes of the prefilter automata.
    pub fn prefilter_bytes(&self) -> usize {
        self.prefilter
            .groups
            .iter()
            .map(|g| g.ac.memory_usage())
            .sum()
    }

    /// Number of regular expressions compiled (`re` values and wildcard patterns).
    pub fn regex_count(&self) -> usize {
        let mut n = 0;
        for r in &self.rules {
            for c in std::iter::once(&r.main).chain(r.filters.iter()) {
                for s in &c.sels {
                    let ms: Vec<&ValueMatcher> = match s {
                        SelNode::Keywords { matchers, .. } => matchers.iter().collect(),
                        SelNode::Maps(maps) => maps
                            .iter()
                            .flatten()
                            .filter_map(|t| match &t.kind {
                                TestKind::Values { matchers, .. } => Some(matchers.iter()),
                                _ => None,
                            })
                            .flatten()
                            .collect(),
                    };
                    n += ms.iter().filter(|m| m.is_regex()).count();
                }
            }
        }
        n
    }

    /// Number of detection rules the prefilter can rule out.
    pub fn prefiltered_rules(&self) -> usize {
        self.rules.iter().filter(|r| r.prefiltered).count()
    }

    /// Whether matches of rule `rule` feed a correlation rule.
    pub fn feeds_correlation(&self, rule: usize) -> bool {
        self.feeds.get(rule).is_some_and(|f| !f.is_empty())
    }

    /// Fields to capture from an event matched by `rule`, for the correlations it feeds.
    pub fn correlation_fields(&self, rule: usize) -> &[String] {
        self.capture.get(rule).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Finds a rule by id, then by name.
    pub fn find(&self, reference: &str) -> Option<usize> {
        find_ref(&self.infos, reference)
    }
}

/// Collects documents and compiles them into a [`RuleSet`].
#[derive(Debug)]
pub struct Compiler {
    options: CompileOptions,
    fields: FieldIndex,
    rejected: Vec<Rejected>,
    infos: Vec<RuleInfo>,
    rules: Vec<CompiledRule>,
    literal_sets: Vec<Option<Vec<Lit>>>,
    routes: Vec<Route>,
    route_keys: Vec<LogSource>,
    seen_ids: HashMap<String, ()>,
    filters: Vec<FilterRule>,
    correlations: Vec<CorrelationRule>,
}

/// A document the compiler refused, with the reason.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The document's metadata.
    pub meta: RuleMeta,
    /// Why.
    pub error: SigmaError,
}

impl Default for Compiler {
    fn default() -> Self {
        Compiler::new(CompileOptions::default())
    }
}

impl Compiler {
    /// A compiler with these options.
    pub fn new(options: CompileOptions) -> Self {
        Compiler {
            options,
            fields: FieldIndex::with_routing_slots(),
            rejected: Vec::new(),
            infos: Vec::new(),
            rules: Vec::new(),
            literal_sets: Vec::new(),
            routes: Vec::new(),
            route_keys: Vec::new(),
            seen_ids: HashMap::new(),
            filters: Vec::new(),
            correlations: Vec::new(),
        }
    }

    /// Adds a parsed document. Detection rules are compiled at once (so their parsed form is
    /// freed early); filters and correlations wait for [`Compiler::compile`], when every
    /// rule they may refer to is known.
    pub fn add(&mut self, doc: Document) {
        let Compiler {
            options,
            fields,
            rejected,
            infos,
            rules,
            literal_sets,
            routes,
            route_keys,
            seen_ids,
            filters,
            correlations,
        } = self;
        let placeholders = |name: &str| options.placeholders.get(name).cloned();
        let meta = doc.meta().clone();
        if let Some(id) = meta.id.clone()
            && seen_ids.insert(id.clone(), ()).is_some()
        {
            rejected.push(Rejected {
                meta,
                error: SigmaError::DuplicateId(id),
            });
            return;
        }
        match doc {
            Document::Rule(rule) => {
                let compiled_route = if options.ignore_logsource {
                    Ok(Route::Any)
                } else {
                    Route::compile(&rule.logsource)
                };
                let route = match compiled_route {
                    Ok(r) => r,
                    Err(e) => {
                        rejected.push(Rejected {
                            meta,
                            error: SigmaError::Logsource(e),
                        });
                        return;
                    }
                };
                // A failed rule must leave no slots behind.
                let checkpoint = fields.len();
                match compile_detection(&rule.detection, fields, &placeholders) {
                    Ok(main) => {
                        let route_id = match route_keys.iter().position(|k| *k == rule.logsource) {
                            Some(i) => i,
                            None => {
                                route_keys.push(rule.logsource.clone());
                                routes.push(route);
                                routes.len() - 1
                            }
                        };
                        literal_sets.push(needed_literals(&main));
                        let event_ids = fields
                            .find("EventID")
                            .and_then(|slot| needed_ids(&main.cond, &main.sels, slot));
                        rules.push(CompiledRule {
                            route: route_id as u32,
                            main,
                            filters: Vec::new(),
                            prefiltered: false,
                            event_ids,
                        });
                        infos.push(RuleInfo {
                            meta: Arc::new(rule.meta),
                            logsource: rule.logsource,
                            kind: RuleKind::Detection,
                            reported: true,
                        });
                    }
                    Err(error) => {
                        fields.rollback(checkpoint);
                        rejected.push(Rejected { meta, error });
                    }
                }
            }
            Document::Filter(f) => filters.push(f),
            Document::Correlation(c) => correlations.push(c),
        }
    }

    /// Compiles everything added; refused documents come back with their reasons.
    pub fn compile(self) -> (RuleSet, Vec<Rejected>) {
        let Compiler {
            options,
            mut fields,
            mut rejected,
            mut infos,
            mut rules,
            literal_sets,
            routes,
            route_keys: _,
            seen_ids: _,
            filters,
            correlations,
        } = self;
        let placeholders = |name: &str| options.placeholders.get(name).cloned();

        // Sigma filters: AND their condition into the rules they name.
        for f in filters {
            let checkpoint = fields.len();
            let compiled = match compile_detection(&f.detection, &mut fields, &placeholders) {
                Ok(c) => c,
                Err(error) => {
                    fields.rollback(checkpoint);
                    rejected.push(Rejected {
                        meta: f.meta,
                        error,
                    });
                    continue;
                }
            };
            let targets: Vec<usize> = if f.rules.is_empty() {
                (0..rules.len())
                    .filter(|&i| logsource_covers(&f.logsource, &infos[i].logsource))
                    .collect()
            } else {
                let mut t = Vec::new();
                let mut missing = Vec::new();
                for r in &f.rules {
                    match find_ref(&infos, r) {
                        Some(i) if i < rules.len() => t.push(i),
                        _ => missing.push(r.clone()),
                    }
                }
                if !missing.is_empty() {
                    fields.rollback(checkpoint);
                    rejected.push(Rejected {
                        meta: f.meta,
                        error: SigmaError::Reference(format!(
                            "filter refers to rules that are not loaded: {}",
                            missing.join(", ")
                        )),
                    });
                    continue;
                }
                t
            };
            for t in targets {
                rules[t].filters.push(compiled.clone());
            }
        }

        // Correlations, possibly referring to each other: resolve in passes.
        let n_detect = rules.len();
        let mut compiled_corr: Vec<(u32, CompiledCorrelation)> = Vec::new();
        let mut pending = correlations;
        let total = infos.len() + pending.len();
        let mut generated = vec![false; total];
        let mut silenced = vec![false; total];
        loop {
            let before = pending.len();
            let mut next = Vec::new();
            for c in pending {
                let refs: Vec<Option<usize>> =
                    c.rules.iter().map(|r| find_ref(&infos, r)).collect();
                if refs.iter().all(Option::is_some) {
                    let refs: Vec<usize> = refs.into_iter().flatten().collect();
                    match compile_correlation(&c, &refs, &infos, &mut fields) {
                        Ok(cc) => {
                            let idx = infos.len() as u32;
                            for &r in &refs {
                                if c.generate {
                                    generated[r] = true;
                                } else {
                                    silenced[r] = true;
                                }
                            }
                            infos.push(RuleInfo {
                                meta: Arc::new(c.meta.clone()),
                                logsource: LogSource::default(),
                                kind: RuleKind::Correlation(c.kind),
                                reported: true,
                            });
                            compiled_corr.push((idx, cc));
                        }
                        Err(error) => rejected.push(Rejected {
                            meta: c.meta,
                            error,
                        }),
                    }
                } else {
                    next.push(c);
                }
            }
            if next.is_empty() {
                break;
            }
            if next.len() == before {
                for c in next {
                    let missing: Vec<String> = c
                        .rules
                        .iter()
                        .filter(|r| find_ref(&infos, r).is_none())
                        .cloned()
                        .collect();
                    rejected.push(Rejected {
                        meta: c.meta,
                        error: SigmaError::Reference(format!(
                            "correlation refers to rules that are not loaded: {}",
                            missing.join(", ")
                        )),
                    });
                }
                break;
            }
            pending = next;
        }
        // A rule used only by correlations with `generate: false` reports no matches itself.
        for (i, info) in infos.iter_mut().enumerate() {
            if silenced.get(i).copied().unwrap_or(false)
                && !generated.get(i).copied().unwrap_or(false)
            {
                info.reported = false;
            }
        }

        let mut feeds = vec![Vec::new(); infos.len()];
        let mut capture: Vec<Vec<String>> = vec![Vec::new(); infos.len()];
        for (ci, (_, cc)) in compiled_corr.iter().enumerate() {
            for (pos, &r) in cc.rules.iter().enumerate() {
                feeds[r as usize].push(ci as u32);
                for f in cc.group_fields[pos].iter().chain(cc.value_field.iter()) {
                    if !capture[r as usize].contains(f) {
                        capture[r as usize].push(f.clone());
                    }
                }
            }
        }

        // Prefilter: one automaton per field (and one for keyword literals), so each scans
        // only the text its literals can occur in.
        // Automata are per logsource too: an event only pays for the literals of the rules
        // that apply to it.
        // (route, slot, literals, rules per literal)
        type Group = (u32, u32, Vec<String>, Vec<Vec<u32>>);
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of: HashMap<(u32, u32), usize> = HashMap::new();
        let mut pattern_ids: HashMap<(usize, String), u32> = HashMap::new();
        for (i, set) in literal_sets.iter().enumerate() {
            let Some(set) = set else { continue };
            rules[i].prefiltered = true;
            let route = rules[i].route;
            for (slot, lit) in set {
                let g = *group_of.entry((route, *slot)).or_insert_with(|| {
                    groups.push((route, *slot, Vec::new(), Vec::new()));
                    groups.len() - 1
                });
                let id = *pattern_ids.entry((g, lit.clone())).or_insert_with(|| {
                    groups[g].2.push(lit.clone());
                    groups[g].3.push(Vec::new());
                    (groups[g].2.len() - 1) as u32
                });
                let list = &mut groups[g].3[id as usize];
                if list.last() != Some(&(i as u32)) {
                    list.push(i as u32);
                }
            }
        }
        let mut prefilter = Prefilter { groups: Vec::new() };
        for (route, slot, patterns, mut pattern_rules) in groups {
            // The scanner asks for the longest literal starting at each position (a search
            // that can use SIMD prefilters, unlike an overlapping one). A literal that is a
            // prefix of the one reported occurs there too: credit its rules to the longer one.
            let index: HashMap<&[u8], usize> = patterns
                .iter()
                .enumerate()
                .map(|(i, p)| (p.as_bytes(), i))
                .collect();
            let mut extra: Vec<(usize, Vec<u32>)> = Vec::new();
            for (i, p) in patterns.iter().enumerate() {
                let bytes = p.as_bytes();
                let mut credit = Vec::new();
                for len in 1..bytes.len() {
                    if let Some(&j) = index.get(&bytes[..len]) {
                        credit.extend_from_slice(&pattern_rules[j]);
                    }
                }
                if !credit.is_empty() {
                    extra.push((i, credit));
                }
            }
            for (i, credit) in extra {
                let list = &mut pattern_rules[i];
                list.extend(credit);
                list.sort_unstable();
                list.dedup();
            }
            // Up to 64 literals, an automaton gets aho-corasick's SIMD prefilter (Teddy), which
            // skips text no literal can start in; a mid-sized set is cheaper scanned as several
            // such automata than as one (scanbench on sensor events: 5.1 against 5.7 µs per
            // event; on EVTX unchanged). Large sets stay whole (as chunks they were slower).
            let parts: Vec<(Vec<String>, Vec<Vec<u32>>)> =
                if patterns.len() > SIMD_LITERALS && patterns.len() <= SPLIT_UP_TO {
                    let mut rules_of = pattern_rules.into_iter();
                    patterns
                        .chunks(SIMD_LITERALS)
                        .map(|c| (c.to_vec(), rules_of.by_ref().take(c.len()).collect()))
                        .collect()
                } else {
                    vec![(patterns, pattern_rules)]
                };
            for (patterns, pattern_rules) in parts {
                // Small automata as DFAs (fastest); large ones as contiguous NFAs (compact).
                let kind = if patterns.len() <= 500 {
                    AhoCorasickKind::DFA
                } else {
                    AhoCorasickKind::ContiguousNFA
                };
                match AhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .kind(Some(kind))
                    .build(&patterns)
                    .or_else(|_| {
                        AhoCorasickBuilder::new()
                            .match_kind(MatchKind::LeftmostLongest)
                            .build(&patterns)
                    }) {
                    Ok(ac) => prefilter.groups.push(PrefilterGroup {
                        route,
                        slot,
                        ac,
                        pattern_rules,
                    }),
                    Err(_) => {
                        // Cannot happen with these sizes; if it does, those rules are simply
                        // always evaluated.
                        for rules_of in &pattern_rules {
                            for &r in rules_of {
                                rules[r as usize].prefiltered = false;
                            }
                        }
                    }
                }
            }
        }

        let mut route_rules = vec![Vec::new(); routes.len()];
        for (i, r) in rules.iter().enumerate() {
            route_rules[r.route as usize].push(i as u32);
        }
        debug_assert_eq!(n_detect, rules.len());

        (
            RuleSet {
                infos,
                rules,
                correlations: compiled_corr,
                fields,
                routes,
                route_rules,
                prefilter,
                feeds,
                capture,
            },
            rejected,
        )
    }
}

fn find_ref(infos: &[RuleInfo], r: &str) -> Option<usize> {
    infos
        .iter()
        .position(|i| i.meta.id.as_deref() == Some(r))
        .or_else(|| infos.iter().position(|i| i.meta.name.as_deref() == Some(r)))
}

fn logsource_covers(filter: &LogSource, rule: &LogSource) -> bool {
    let part = |f: &Option<String>, r: &Option<String>| f.is_none() || f == r;
    part(&filter.product, &rule.product)
        && part(&filter.category, &rule.category)
        && part(&filter.service, &rule.service)
}

fn compile_detection(
    d: &Detection,
    fields: &mut FieldIndex,
    placeholders: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<CompiledCond, SigmaError> {
    let names: Vec<&str> = d.selections.iter().map(|(n, _)| n.as_str()).collect();
    let mut conds = Vec::new();
    for c in &d.conditions {
        conds.push(
            parse_condition(c, &names).map_err(|reason| SigmaError::Condition {
                condition: c.clone(),
                reason,
            })?,
        );
    }
    let cond = if conds.len() == 1 {
        conds.remove(0)
    } else {
        Cond::Or(conds)
    };
    let mut sels = Vec::with_capacity(d.selections.len());
    for (name, sel) in &d.selections {
        sels.push(compile_selection(name, sel, fields, placeholders)?);
    }
    Ok(CompiledCond { cond, sels })
}

fn compile_selection(
    name: &str,
    sel: &Selection,
    fields: &mut FieldIndex,
    placeholders: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<SelNode, SigmaError> {
    let err = |field: &str, reason: String| SigmaError::Value {
        selection: name.to_string(),
        field: field.to_string(),
        reason,
    };
    match sel {
        Selection::Keywords(values) => {
            let matchers = compile_values(
                &Modifiers::parse(&["contains".into()]).unwrap_or_default(),
                values,
                placeholders,
            )
            .map_err(|e| err("(keywords)", e))?;
            Ok(SelNode::Keywords {
                matchers,
                all: false,
            })
        }
        Selection::Maps(maps) => {
            let mut out = Vec::with_capacity(maps.len());
            for map in maps {
                let mut tests = Vec::with_capacity(map.len());
                let mut keyword_tests = Vec::new();
                for spec in map {
                    let written = match &spec.field {
                        Some(f) if spec.modifiers.is_empty() => f.clone(),
                        Some(f) => format!("{f}|{}", spec.modifiers.join("|")),
                        None => format!("|{}", spec.modifiers.join("|")),
                    };
                    let mods = Modifiers::parse(&spec.modifiers).map_err(|e| err(&written, e))?;
                    let Some(field) = &spec.field else {
                        // `'|all': [...]`: keywords that must all occur.
                        let mut kw_mods = mods;
                        if !(kw_mods.contains
                            || kw_mods.startswith
                            || kw_mods.endswith
                            || kw_mods.re)
                        {
                            kw_mods.contains = true;
                        }
                        let matchers = compile_values(&kw_mods, &spec.values, placeholders)
                            .map_err(|e| err(&written, e))?;
                        keyword_tests.push(SelNode::Keywords {
                            matchers,
                            all: kw_mods.all,
                        });
                        continue;
                    };
                    let slot = fields.slot(field);
                    let kind = if mods.exists {
                        match spec.values.as_slice() {
                            [Scalar::Bool(b)] => TestKind::Exists(*b),
                            [Scalar::Str(s)] if s == "true" || s == "false" => {
                                TestKind::Exists(s == "true")
                            }
                            _ => return Err(err(&written, "`exists` takes true or false".into())),
                        }
                    } else if mods.fieldref {
                        let [Scalar::Str(other)] = spec.values.as_slice() else {
                            return Err(err(&written, "`fieldref` takes one field name".into()));
                        };
                        let mode = if mods.contains {
                            RefMode::Contains
                        } else if mods.startswith {
                            RefMode::Prefix
                        } else if mods.endswith {
                            RefMode::Suffix
                        } else {
                            RefMode::Eq
                        };
                        TestKind::FieldRef {
                            other: fields.slot(other),
                            mode,
                            cased: mods.cased,
                        }
                    } else {
                        let matchers = compile_values(&mods, &spec.values, placeholders)
                            .map_err(|e| err(&written, e))?;
                        TestKind::Values {
                            matchers,
                            all: mods.all,
                        }
                    };
                    tests.push(FieldTest { slot, kind });
                }
                if !keyword_tests.is_empty() {
                    if !tests.is_empty() {
                        return Err(err(
                            "(keywords)",
                            "a map cannot mix keyword entries with field entries".into(),
                        ));
                    }
                    // Only keyword entries: compile as keyword selection(s).
                    if keyword_tests.len() == 1 && maps.len() == 1 {
                        return Ok(keyword_tests.remove(0));
                    }
                    return Err(err(
                        "(keywords)",
                        "several keyword entries in one selection are not supported".into(),
                    ));
                }
                out.push(tests);
            }
            Ok(SelNode::Maps(out))
        }
    }
}

fn compile_correlation(
    c: &CorrelationRule,
    refs: &[usize],
    infos: &[RuleInfo],
    fields: &mut FieldIndex,
) -> Result<CompiledCorrelation, SigmaError> {
    if matches!(
        c.kind,
        CorrelationKind::Temporal | CorrelationKind::TemporalOrdered
    ) && refs.len() < 2
    {
        return Err(SigmaError::invalid(
            "correlation.rules",
            "temporal correlations need at least two rules",
        ));
    }
    let mut group_fields = Vec::with_capacity(refs.len());
    for (pos, _) in refs.iter().enumerate() {
        let reference = &c.rules[pos];
        let mut per_rule = Vec::with_capacity(c.group_by.len());
        for g in &c.group_by {
            let mut name = g.clone();
            if let Some((_, pairs)) = c.aliases.iter().find(|(a, _)| a == g) {
                match pairs.iter().find(|(r, _)| r == reference) {
                    Some((_, f)) => name = f.clone(),
                    None => {
                        return Err(SigmaError::invalid(
                            format!("correlation.aliases.{g}"),
                            format!("no field given for rule {reference}"),
                        ));
                    }
                }
            }
            // Only detection rules have event fields; correlations pass group values on.
            if refs[pos] < infos.len() && infos[refs[pos]].kind == RuleKind::Detection {
                fields.slot(&name);
            }
            per_rule.push(name);
        }
        group_fields.push(per_rule);
    }
    if let Some(v) = &c.value_field {
        fields.slot(v);
    }
    Ok(CompiledCorrelation {
        kind: c.kind,
        rules: refs.iter().map(|&r| r as u32).collect(),
        group_by: c.group_by.clone(),
        group_fields,
        value_field: c.value_field.clone(),
        timespan_ms: c.timespan_ms,
        condition: c.condition.clone(),
    })
}

// ---- EventID analysis ----

/// The event ids one of which every event the condition matches carries, when the rule says
/// so through `EventID` equality tests.
fn needed_ids(c: &Cond, sels: &[SelNode], slot: u32) -> Option<Vec<u32>> {
    let ids = |c: &Cond| needed_ids(c, sels, slot);
    match c {
        Cond::Sel(i) => match sels.get(*i)? {
            SelNode::Keywords { .. } => None,
            SelNode::Maps(maps) => {
                let mut out = Vec::new();
                for tests in maps {
                    let t = tests.iter().find(|t| t.slot == slot)?;
                    let TestKind::Values {
                        matchers,
                        all: false,
                    } = &t.kind
                    else {
                        return None;
                    };
                    for m in matchers {
                        out.push(m.exact_u32()?);
                    }
                }
                Some(out)
            }
        },
        Cond::And(xs) => xs.iter().filter_map(ids).min_by_key(Vec::len),
        Cond::Or(xs) => {
            let mut out = Vec::new();
            for x in xs {
                out.extend(ids(x)?);
            }
            Some(out)
        }
        Cond::AtLeast(n, xs) if *n >= 1 => {
            let mut out = Vec::new();
            for &i in xs {
                out.extend(ids(&Cond::Sel(i))?);
            }
            Some(out)
        }
        _ => None,
    }
    .map(|mut v| {
        v.sort_unstable();
        v.dedup();
        v
    })
}

// ---- prefilter literal analysis ----

/// Pseudo-slot for literals of keyword searches: they may occur in any field.
pub(crate) const ANY_FIELD: u32 = u32::MAX;

/// Literals an Aho-Corasick automaton may hold and still get the SIMD prefilter.
const SIMD_LITERALS: usize = 64;
/// Prefilter literal sets up to this size are split into automata of [`SIMD_LITERALS`].
const SPLIT_UP_TO: usize = 256;

/// A literal that must occur in the (lowercased) value of a slot, or of any field.
type Lit = (u32, String);

/// The literals at least one of which occurs in every event the condition matches, or
/// `None` when no such set is known.
fn needed_literals(c: &CompiledCond) -> Option<Vec<Lit>> {
    let mut set = need_cond(&c.cond, &c.sels)?;
    set.sort();
    set.dedup();
    // Drop literals that contain a shorter literal of the same slot: the shorter one fires
    // anyway. (Quadratic, so only for sets of ordinary size.)
    if set.len() <= 64 {
        let short = set.clone();
        set.retain(|(slot, l)| {
            !short
                .iter()
                .any(|(s2, s)| s2 == slot && s.len() < l.len() && l.contains(s.as_str()))
        });
    }
    Some(set)
}

fn score(set: &[Lit]) -> (usize, std::cmp::Reverse<usize>) {
    let min = set.iter().map(|(_, l)| l.len()).min().unwrap_or(0);
    (min.min(8), std::cmp::Reverse(set.len()))
}

fn best(options: impl Iterator<Item = Option<Vec<Lit>>>) -> Option<Vec<Lit>> {
    options.flatten().max_by_key(|s| score(s))
}

fn union(options: impl Iterator<Item = Option<Vec<Lit>>>) -> Option<Vec<Lit>> {
    let mut out = Vec::new();
    for o in options {
        out.extend(o?);
    }
    (!out.is_empty()).then_some(out)
}

fn need_cond(c: &Cond, sels: &[SelNode]) -> Option<Vec<Lit>> {
    match c {
        Cond::Sel(i) => need_sel(sels.get(*i)?),
        Cond::And(xs) => best(xs.iter().map(|x| need_cond(x, sels))),
        Cond::Or(xs) => union(xs.iter().map(|x| need_cond(x, sels))),
        Cond::Not(_) => None,
        Cond::AtLeast(n, xs) if *n <= xs.len() => {
            union(xs.iter().map(|&i| sels.get(i).and_then(need_sel)))
        }
        Cond::AtLeast(..) => None,
    }
}

fn matcher_lits(slot: u32, matchers: &[ValueMatcher], all: bool) -> Option<Vec<Lit>> {
    let each = matchers.iter().map(|m| {
        m.literals()
            .map(|ls| ls.into_iter().map(|l| (slot, l)).collect())
    });
    if all { best(each) } else { union(each) }
}

fn need_sel(s: &SelNode) -> Option<Vec<Lit>> {
    match s {
        SelNode::Keywords { matchers, all } => matcher_lits(ANY_FIELD, matchers, *all),
        SelNode::Maps(maps) => union(maps.iter().map(|tests| best(tests.iter().map(need_test)))),
    }
}

fn need_test(t: &FieldTest) -> Option<Vec<Lit>> {
    match &t.kind {
        TestKind::Values { matchers, all } => matcher_lits(t.slot, matchers, *all),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_documents;

    fn compile(text: &str) -> (RuleSet, Vec<Rejected>) {
        let mut c = Compiler::default();
        for d in parse_documents(text) {
            c.add(d.unwrap());
        }
        c.compile()
    }

    /// A field with more literals than one SIMD-prefiltered automaton holds is split into
    /// several; every rule still matches exactly where it should, including a literal that is
    /// a prefix of literals in another automaton.
    #[test]
    fn split_prefilter_automata_miss_nothing() {
        let mut text = String::new();
        for i in 0..150 {
            text.push_str(&format!(
                "title: r{i}\nlogsource: {{product: linux, category: process_creation}}\n\
                 detection: {{sel: {{CommandLine|contains: 'token{i:03}x'}}, condition: sel}}\n---\n"
            ));
        }
        text.push_str(
            "title: prefix\nlogsource: {product: linux, category: process_creation}\n\
             detection: {sel: {CommandLine|contains: 'token04'}, condition: sel}\n",
        );
        let (set, rej) = compile(&text);
        assert!(rej.is_empty(), "{rej:?}");
        assert_eq!(
            set.prefilter.groups.len(),
            3,
            "151 literals in automata of 64"
        );
        let mut scanner = set.scanner();
        let names = |hits: &[usize]| -> Vec<String> {
            hits.iter()
                .map(|&h| set.rules()[h].meta.title.clone())
                .collect()
        };
        for (line, want) in [
            ("run token042x now", vec!["r42", "prefix"]),
            ("token149x", vec!["r149"]),
            ("token000x token130x", vec!["r0", "r130"]),
            ("token04", vec!["prefix"]),
            ("token15x", vec![]),
        ] {
            let doc = format!(
                r#"{{"event":{{"category":["process"],"type":["start"],"module":"mamori"}},"host":{{"os":{{"type":"linux"}}}},"process":{{"command_line":"{line}"}}}}"#
            );
            let mut hits = Vec::new();
            scanner.scan_ecs_json(doc.as_bytes(), &mut hits).unwrap();
            let mut got = names(&hits);
            got.sort();
            let mut want: Vec<String> = want.into_iter().map(String::from).collect();
            want.sort();
            assert_eq!(got, want, "{line}");
        }
    }

    #[test]
    fn literal_sets() {
        let (set, rej) = compile(
            r#"
title: t
logsource: {product: windows, category: process_creation}
detection:
    sel_img: {Image|endswith: ['\rundll32.exe', '\regsvr32.exe']}
    sel_cli: {CommandLine|contains: 'javascript:'}
    filter: {User: SYSTEM}
    condition: all of sel_* and not filter
"#,
        );
        assert!(rej.is_empty());
        assert!(set.rules[0].prefiltered);
        // The longer-min literal set wins: the two image names (>= 8) over 'javascript:'? both >= 8;
        // fewer literals wins the tie.
        let lits = needed_literals(&set.rules[0].main).unwrap();
        assert_eq!(lits.len(), 1);
        assert_eq!(lits[0].1, "javascript:");
    }

    #[test]
    fn not_only_rules_are_not_prefiltered() {
        let (set, _) = compile(
            r#"
title: t
logsource: {product: windows, service: security}
detection:
    sel: {EventID: 4624}
    filter: {LogonType: 3}
    condition: not filter
"#,
        );
        assert!(!set.rules[0].prefiltered);
    }

    #[test]
    fn rejects_with_reasons_and_keeps_others() {
        let (set, rej) = compile(
            r#"
title: bad modifier
logsource: {product: windows}
detection: {sel: {a|nope: 1}, condition: sel}
---
title: good
id: g
logsource: {product: windows}
detection: {sel: {a: 1}, condition: sel}
---
title: dup
id: g
logsource: {product: windows}
detection: {sel: {a: 1}, condition: sel}
---
title: corr
correlation: {type: event_count, rules: [missing], timespan: 1m, condition: {gte: 2}}
"#,
        );
        assert_eq!(set.detection_count(), 1);
        let reasons: Vec<String> = rej.iter().map(|r| r.error.to_string()).collect();
        assert!(
            reasons[0].contains("unknown modifier `nope`"),
            "{reasons:?}"
        );
        assert!(reasons[1].contains("duplicate rule id g"), "{reasons:?}");
        assert!(reasons[2].contains("not loaded: missing"), "{reasons:?}");
    }
}
