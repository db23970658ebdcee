//! The scanner: matches one event at a time against a [`RuleSet`].
//!
//! A scanner is cheap to create and holds per-thread scratch space (as a YARA-X `Scanner`
//! does), so scanning allocates nothing in the steady state. For each event it:
//!
//! 1. works out which logsources the event belongs to (cached per channel/provider/id),
//!    and stops at once if no rule applies;
//! 2. reads the fields the rules name into slots: raw text and a lowercased copy;
//! 3. runs the Aho-Corasick prefilter over the lowercased slot text to learn which
//!    prefiltered rules can match at all;
//! 4. evaluates only those rules (plus the few the prefilter cannot judge).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use mamori_model::{Event, EventKind, Product};
use serde_json::Value;

use crate::condition::Cond;
use crate::compile::{CompiledCond, FieldTest, RefMode, RuleSet, SelNode, TestKind};
use crate::matcher::{ValueMatcher, lower};

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    start: u32,
    end: u32,
    /// 0: absent; 1: filled from an alias; 2: filled from the Sigma name itself.
    prio: u8,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    raw: (u32, u32),
    low: (u32, u32),
}

/// Text values with their lowercased copies.
#[derive(Debug, Default)]
struct Values {
    entries: Vec<Entry>,
    raw: String,
    low: String,
}

impl Values {
    fn clear(&mut self) {
        self.entries.clear();
        self.raw.clear();
        self.low.clear();
    }

    fn push_str(&mut self, s: &str) {
        let r0 = self.raw.len() as u32;
        self.raw.push_str(s);
        let l0 = self.low.len() as u32;
        lower(s, &mut self.low);
        // A separator keeps prefilter literals from matching across two values.
        self.low.push('\0');
        self.entries.push(Entry {
            raw: (r0, self.raw.len() as u32),
            low: (l0, self.low.len() as u32 - 1),
        });
    }

    fn push_value(&mut self, v: &Value, depth: u8) {
        match v {
            Value::String(s) => self.push_str(s),
            Value::Number(n) => {
                let r0 = self.raw.len();
                let _ = write!(self.raw, "{n}");
                let text = self.raw[r0..].to_string();
                self.raw.truncate(r0);
                self.push_str(&text);
            }
            Value::Bool(b) => self.push_str(if *b { "true" } else { "false" }),
            Value::Null => self.push_str(""),
            Value::Array(a) if depth == 0 => {
                for item in a {
                    self.push_value(item, 1);
                }
            }
            other => self.push_str(&other.to_string()),
        }
    }

    #[inline]
    fn get(&self, e: &Entry) -> (&str, &str) {
        (
            &self.raw[e.raw.0 as usize..e.raw.1 as usize],
            &self.low[e.low.0 as usize..e.low.1 as usize],
        )
    }
}

/// Counters a scanner keeps, for benchmarks and `--stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Events scanned.
    pub events: u64,
    /// Events no rule's logsource applied to.
    pub unrouted: u64,
    /// Rule evaluations performed (after routing and prefiltering).
    pub evaluated: u64,
    /// Rule matches.
    pub matched: u64,
}

/// Per-thread matcher over a [`RuleSet`].
#[derive(Debug)]
pub struct Scanner<'r> {
    set: &'r RuleSet,
    slots: Vec<Slot>,
    touched: Vec<u32>,
    values: Values,
    keywords: Values,
    keywords_ready: bool,
    candidates: Vec<u64>,
    route_cache: HashMap<String, Arc<[u32]>>,
    key: String,
    stats: ScanStats,
}

impl RuleSet {
    /// A scanner over this rule set.
    pub fn scanner(&self) -> Scanner<'_> {
        Scanner {
            set: self,
            slots: vec![Slot::default(); self.fields.len()],
            touched: Vec::new(),
            values: Values::default(),
            keywords: Values::default(),
            keywords_ready: false,
            candidates: vec![0; self.rules.len().div_ceil(64)],
            route_cache: HashMap::new(),
            key: String::new(),
            stats: ScanStats::default(),
        }
    }
}

const ROUTE_CACHE_MAX: usize = 4096;

impl<'r> Scanner<'r> {
    /// The rule set this scanner matches against.
    pub fn rule_set(&self) -> &'r RuleSet {
        self.set
    }

    /// Counters so far.
    pub fn stats(&self) -> ScanStats {
        self.stats
    }

    fn routes_for(&mut self, kind: &EventKind<'_>) -> Arc<[u32]> {
        self.key.clear();
        let product = match &kind.product {
            Product::Windows => "w",
            Product::Linux => "l",
            Product::MacOs => "m",
            Product::Other(o) => o.as_str(),
            Product::Unknown => "?",
        };
        let _ = write!(
            self.key,
            "{product}\x1f{}\x1f{}\x1f{:?}\x1f{}\x1f{}\x1f{}",
            kind.channel.unwrap_or(""),
            kind.provider.unwrap_or(""),
            kind.event_id,
            kind.ecs_category.join(","),
            kind.ecs_type.join(","),
            kind.service.as_deref().unwrap_or("")
        );
        if let Some(r) = self.route_cache.get(self.key.as_str()) {
            return r.clone();
        }
        let routes: Arc<[u32]> = self
            .set
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.accepts(kind))
            .map(|(i, _)| i as u32)
            .collect();
        if self.route_cache.len() >= ROUTE_CACHE_MAX {
            self.route_cache.clear();
        }
        self.route_cache.insert(self.key.clone(), routes.clone());
        routes
    }

    fn reset(&mut self) {
        for &s in &self.touched {
            self.slots[s as usize] = Slot::default();
        }
        self.touched.clear();
        self.values.clear();
        self.keywords_ready = false;
    }

    fn fill(&mut self, event: &Event) {
        let Scanner {
            set,
            slots,
            touched,
            values,
            ..
        } = self;
        event.for_each_field(&mut |name, value| {
            let Some(targets) = set.fields.lookup(name) else { return };
            for &(s, direct) in targets {
                let prio = if direct { 2 } else { 1 };
                let slot = &mut slots[s as usize];
                if slot.prio >= prio {
                    continue;
                }
                if slot.prio == 0 {
                    touched.push(s);
                }
                let start = values.entries.len() as u32;
                values.push_value(value, 0);
                *slot = Slot {
                    start,
                    end: values.entries.len() as u32,
                    prio,
                };
            }
        });
    }

    /// Matches `event`; appends the indices (into [`RuleSet::rules`]) of the detection
    /// rules that match to `out`. Slot values stay readable through [`Scanner::value`]
    /// until the next call.
    pub fn scan(&mut self, event: &Event, out: &mut Vec<usize>) {
        self.reset();
        self.stats.events += 1;
        let kind = event.kind();
        let routes = self.routes_for(&kind);
        let set = self.set;
        if routes.iter().all(|&r| set.route_rules[r as usize].is_empty()) {
            self.stats.unrouted += 1;
            return;
        }
        self.fill(event);

        let need_prefilter = routes
            .iter()
            .any(|&r| set.route_rules[r as usize].iter().any(|&i| set.rules[i as usize].prefiltered));
        if need_prefilter {
            self.candidates.iter_mut().for_each(|w| *w = 0);
            if let Some(ac) = &set.prefilter.ac {
                for m in ac.find_overlapping_iter(self.values.low.as_str()) {
                    for &r in &set.prefilter.pattern_rules[m.pattern().as_usize()] {
                        self.candidates[(r / 64) as usize] |= 1u64 << (r % 64);
                    }
                }
            }
        }
        for &route in routes.iter() {
            for &i in &set.route_rules[route as usize] {
                let rule = &set.rules[i as usize];
                if rule.prefiltered && self.candidates[(i / 64) as usize] & (1u64 << (i % 64)) == 0 {
                    continue;
                }
                self.stats.evaluated += 1;
                if self.eval(&rule.main, event) && rule.filters.iter().all(|f| self.eval(f, event)) {
                    self.stats.matched += 1;
                    out.push(i as usize);
                }
            }
        }
    }

    /// The first value of the field `name` (a Sigma name a loaded rule uses) in the event
    /// last scanned.
    pub fn value(&self, name: &str) -> Option<&str> {
        let s = self.set.fields.find(name)?;
        let slot = self.slots.get(s as usize)?;
        if slot.prio == 0 || slot.start == slot.end {
            return None;
        }
        let e = self.values.entries.get(slot.start as usize)?;
        Some(self.values.get(e).0)
    }

    fn eval(&mut self, c: &CompiledCond, event: &Event) -> bool {
        self.eval_cond(&c.cond, &c.sels, event)
    }

    fn eval_cond(&mut self, c: &Cond, sels: &[SelNode], event: &Event) -> bool {
        match c {
            Cond::Sel(i) => sels.get(*i).is_some_and(|s| self.eval_sel(s, event)),
            Cond::And(xs) => xs.iter().all(|x| self.eval_cond(x, sels, event)),
            Cond::Or(xs) => xs.iter().any(|x| self.eval_cond(x, sels, event)),
            Cond::Not(x) => !self.eval_cond(x, sels, event),
            Cond::AtLeast(n, xs) => {
                let mut hits = 0;
                for &i in xs {
                    if sels.get(i).is_some_and(|s| self.eval_sel(s, event)) {
                        hits += 1;
                        if hits >= *n {
                            return true;
                        }
                    }
                }
                false
            }
        }
    }

    fn eval_sel(&mut self, s: &SelNode, event: &Event) -> bool {
        match s {
            SelNode::Keywords { matchers, all } => {
                if !self.keywords_ready {
                    self.keywords.clear();
                    let kw = &mut self.keywords;
                    event.for_each_field(&mut |_, v| kw.push_value(v, 0));
                    self.keywords_ready = true;
                }
                let kw = &self.keywords;
                let hit = |m: &ValueMatcher| {
                    kw.entries.iter().any(|e| {
                        let (r, l) = kw.get(e);
                        m.matches(r, l)
                    })
                };
                if *all {
                    matchers.iter().all(hit)
                } else {
                    matchers.iter().any(hit)
                }
            }
            SelNode::Maps(maps) => maps.iter().any(|tests| tests.iter().all(|t| self.test(t))),
        }
    }

    fn entries(&self, slot: u32) -> Option<&[Entry]> {
        let s = self.slots.get(slot as usize)?;
        if s.prio == 0 {
            return None;
        }
        self.values.entries.get(s.start as usize..s.end as usize)
    }

    fn test(&self, t: &FieldTest) -> bool {
        let entries = self.entries(t.slot);
        match &t.kind {
            TestKind::Exists(want) => entries.is_some() == *want,
            TestKind::Values { matchers, all } => match entries {
                None => {
                    let null = |m: &ValueMatcher| matches!(m, ValueMatcher::Null);
                    if *all { matchers.iter().all(null) } else { matchers.iter().any(null) }
                }
                Some(entries) => {
                    let hit = |m: &ValueMatcher| {
                        entries.iter().any(|e| {
                            let (r, l) = self.values.get(e);
                            m.matches(r, l)
                        })
                    };
                    if *all { matchers.iter().all(hit) } else { matchers.iter().any(hit) }
                }
            },
            TestKind::FieldRef { other, mode, cased } => {
                let (Some(a), Some(b)) = (entries, self.entries(*other)) else {
                    return false;
                };
                a.iter().any(|ea| {
                    b.iter().any(|eb| {
                        let (ar, al) = self.values.get(ea);
                        let (br, bl) = self.values.get(eb);
                        let (x, y) = if *cased { (ar, br) } else { (al, bl) };
                        match mode {
                            RefMode::Eq => x == y,
                            RefMode::Contains => x.contains(y),
                            RefMode::Prefix => x.starts_with(y),
                            RefMode::Suffix => x.ends_with(y),
                        }
                    })
                })
            }
        }
    }
}
