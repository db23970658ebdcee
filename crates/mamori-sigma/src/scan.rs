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

use mamori_model::{Event, EventKind, Product, Shape};
use serde_json::Value;

use crate::compile::{
    ANY_FIELD, CompiledCond, FieldTest, RefMode, RuleSet, SLOT_CHANNEL, SLOT_EVENT_ID,
    SLOT_PROVIDER, SelNode, TestKind,
};
use crate::condition::Cond;
use crate::matcher::{ValueMatcher, lower};

/// What applies to one kind of event.
#[derive(Debug, Default)]
struct Candidates {
    /// Detection rules whose logsource (and EventID, when they name one) fit.
    rules: Vec<u32>,
    /// Whether any of them is prefiltered.
    prefiltered: bool,
    /// Prefilter automata serving those rules.
    groups: Vec<u32>,
}

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
                // Numbers are ASCII: their lowercase is themselves.
                let r0 = self.raw.len() as u32;
                let _ = write!(self.raw, "{n}");
                let l0 = self.low.len() as u32;
                let r1 = self.raw.len();
                self.low.push_str(&self.raw[r0 as usize..r1]);
                self.low.push('\0');
                self.entries.push(Entry {
                    raw: (r0, r1 as u32),
                    low: (l0, self.low.len() as u32 - 1),
                });
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
    /// Bytes of event text the prefilter automata scanned.
    pub prefilter_bytes: u64,
    /// Literal hits the prefilter reported.
    pub prefilter_hits: u64,
}

/// Per-thread matcher over a [`RuleSet`].
#[derive(Debug)]
pub struct Scanner<'r> {
    set: &'r RuleSet,
    slots: Vec<Slot>,
    touched: Vec<u32>,
    values: Values,
    candidates: Vec<u64>,
    /// Event kind → the detection rules and prefilter automata that apply to it.
    route_cache: HashMap<String, Arc<Candidates>>,
    key: String,
    name_buf: String,
    stats: ScanStats,
    evaluations: Vec<u64>,
}

impl RuleSet {
    /// A scanner over this rule set.
    pub fn scanner(&self) -> Scanner<'_> {
        Scanner {
            set: self,
            slots: vec![Slot::default(); self.fields.len()],
            touched: Vec::new(),
            values: Values::default(),
            candidates: vec![0; self.rules.len().div_ceil(64)],
            route_cache: HashMap::new(),
            key: String::new(),
            name_buf: String::new(),
            stats: ScanStats::default(),
            evaluations: vec![0; self.rules.len()],
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

    /// How many times each detection rule was evaluated (after routing and prefiltering):
    /// the rules at the top of this list are the ones the prefilter cannot keep away.
    pub fn evaluations(&self) -> &[u64] {
        &self.evaluations
    }

    /// Builds the route-cache key of an event kind into `k`.
    fn kind_key(kind: &EventKind<'_>, k: &mut String) {
        k.clear();
        let product = match &kind.product {
            Product::Windows => "w",
            Product::Linux => "l",
            Product::MacOs => "m",
            Product::Other(o) => o.as_str(),
            Product::Unknown => "?",
        };
        k.push_str(product);
        for part in [kind.channel.unwrap_or(""), kind.provider.unwrap_or("")] {
            k.push('\x1f');
            k.push_str(part);
        }
        k.push('\x1f');
        if let Some(id) = kind.event_id {
            let _ = write!(k, "{id}");
        }
        for list in [&kind.ecs_category, &kind.ecs_type] {
            k.push('\x1f');
            for c in list.iter() {
                k.push_str(c);
                k.push(',');
            }
        }
        k.push('\x1f');
        k.push_str(kind.service.as_deref().unwrap_or(""));
    }

    /// The text of the first value of a slot in the event being scanned.
    fn slot_text(&self, slot: u32) -> Option<&str> {
        let sl = self.slots.get(slot as usize)?;
        if sl.prio == 0 || sl.start == sl.end {
            return None;
        }
        Some(
            self.values
                .get(self.values.entries.get(sl.start as usize)?)
                .0,
        )
    }

    /// What applies to the event just filled. Windows events (EVTX, Winlogbeat) are keyed by
    /// the Channel, Provider_Name and EventID slots already read; other shapes by their kind.
    fn candidates_for(&mut self, event: &Event) -> Arc<Candidates> {
        let mut key = std::mem::take(&mut self.key);
        let kind = if matches!(event.shape, Shape::Evtx | Shape::Winlogbeat) {
            EventKind {
                product: Product::Windows,
                channel: self.slot_text(SLOT_CHANNEL),
                provider: self.slot_text(SLOT_PROVIDER),
                event_id: self
                    .slot_text(SLOT_EVENT_ID)
                    .and_then(|t| t.trim().parse::<u32>().ok()),
                ecs_category: Vec::new(),
                ecs_type: Vec::new(),
                service: None,
            }
        } else {
            event.kind()
        };
        Self::kind_key(&kind, &mut key);
        if let Some(c) = self.route_cache.get(key.as_str()) {
            let c = c.clone();
            self.key = key;
            return c;
        }
        let c = Arc::new(compute_candidates(self.set, &kind));
        drop(kind);
        if self.route_cache.len() >= ROUTE_CACHE_MAX {
            self.route_cache.clear();
        }
        self.route_cache.insert(key.clone(), c.clone());
        self.key = key;
        c
    }
}

/// Detection rules and prefilter automata that apply to an event kind.
fn compute_candidates(set: &RuleSet, kind: &EventKind<'_>) -> Candidates {
    let mut c = Candidates::default();
    let mut accepted = vec![false; set.routes.len()];
    for (route, r) in set.routes.iter().enumerate() {
        if !r.accepts(kind) {
            continue;
        }
        accepted[route] = true;
        for &i in &set.route_rules[route] {
            let ids = &set.rules[i as usize].event_ids;
            if ids
                .as_ref()
                .is_none_or(|ids| kind.event_id.is_some_and(|id| ids.contains(&id)))
            {
                c.rules.push(i);
            }
        }
    }
    c.rules.sort_unstable();
    c.prefiltered = c.rules.iter().any(|&i| set.rules[i as usize].prefiltered);
    c.groups = set
        .prefilter
        .groups
        .iter()
        .enumerate()
        .filter(|(_, g)| accepted[g.route as usize])
        .map(|(i, _)| i as u32)
        .collect();
    c
}

impl Scanner<'_> {
    fn reset(&mut self) {
        for &s in &self.touched {
            self.slots[s as usize] = Slot::default();
        }
        self.touched.clear();
        self.values.clear();
    }

    /// Reads every field value of the event into the text buffers (the prefilter and
    /// keyword searches look at all of them) and points the rules' slots at their values.
    fn fill(&mut self, event: &Event) {
        let Scanner {
            set,
            slots,
            touched,
            values,
            name_buf,
            ..
        } = self;
        event.for_each_field_with(name_buf, &mut |name, value| {
            let start = values.entries.len() as u32;
            values.push_value(value, 0);
            let end = values.entries.len() as u32;
            let Some(targets) = set.fields.lookup(name) else {
                return;
            };
            for &(s, direct) in targets {
                let prio = if direct { 2 } else { 1 };
                let slot = &mut slots[s as usize];
                if slot.prio >= prio {
                    continue;
                }
                if slot.prio == 0 {
                    touched.push(s);
                }
                *slot = Slot { start, end, prio };
            }
        });
    }

    /// Matches `event`; appends the indices (into [`RuleSet::rules`]) of the detection
    /// rules that match to `out`. Slot values stay readable through [`Scanner::value`]
    /// until the next call.
    pub fn scan(&mut self, event: &Event, out: &mut Vec<usize>) {
        self.reset();
        self.stats.events += 1;
        if self.set.rules.is_empty() {
            self.stats.unrouted += 1;
            return;
        }
        self.fill(event);
        let candidates = self.candidates_for(event);
        if candidates.rules.is_empty() {
            self.stats.unrouted += 1;
            return;
        }
        let set = self.set;
        if candidates.prefiltered {
            self.candidates.iter_mut().for_each(|w| *w = 0);
            for &gi in &candidates.groups {
                let g = &set.prefilter.groups[gi as usize];
                let text = if g.slot == ANY_FIELD {
                    self.values.low.as_str()
                } else {
                    match self.slots.get(g.slot as usize) {
                        Some(sl) if sl.prio > 0 && sl.end > sl.start => {
                            let first = self.values.entries[sl.start as usize].low.0 as usize;
                            let last = self.values.entries[sl.end as usize - 1].low.1 as usize;
                            &self.values.low[first..last]
                        }
                        _ => continue,
                    }
                };
                self.stats.prefilter_bytes += text.len() as u64;
                // The longest literal at each position where one starts; shorter literals
                // starting there are credited to it at compile time.
                let mut at = 0;
                while at < text.len() {
                    let Some(m) =
                        g.ac.find(aho_corasick::Input::new(text).span(at..text.len()))
                    else {
                        break;
                    };
                    self.stats.prefilter_hits += 1;
                    for &r in &g.pattern_rules[m.pattern().as_usize()] {
                        self.candidates[(r / 64) as usize] |= 1u64 << (r % 64);
                    }
                    at = m.start() + 1;
                }
            }
        }
        for &i in candidates.rules.iter() {
            let rule = &set.rules[i as usize];
            if rule.prefiltered && self.candidates[(i / 64) as usize] & (1u64 << (i % 64)) == 0 {
                continue;
            }
            self.stats.evaluated += 1;
            self.evaluations[i as usize] += 1;
            if self.eval(&rule.main) && rule.filters.iter().all(|f| self.eval(f)) {
                self.stats.matched += 1;
                out.push(i as usize);
            }
        }
    }

    /// The first value of the field `name` (a Sigma name a loaded rule uses) in the event
    /// last scanned.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.slot_text(self.set.fields.find(name)?)
    }

    fn eval(&self, c: &CompiledCond) -> bool {
        self.eval_cond(&c.cond, &c.sels)
    }

    fn eval_cond(&self, c: &Cond, sels: &[SelNode]) -> bool {
        match c {
            Cond::Sel(i) => sels.get(*i).is_some_and(|s| self.eval_sel(s)),
            Cond::And(xs) => xs.iter().all(|x| self.eval_cond(x, sels)),
            Cond::Or(xs) => xs.iter().any(|x| self.eval_cond(x, sels)),
            Cond::Not(x) => !self.eval_cond(x, sels),
            Cond::AtLeast(n, xs) => {
                let mut hits = 0;
                for &i in xs {
                    if sels.get(i).is_some_and(|s| self.eval_sel(s)) {
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

    fn eval_sel(&self, s: &SelNode) -> bool {
        match s {
            SelNode::Keywords { matchers, all } => {
                let v = &self.values;
                let hit = |m: &ValueMatcher| {
                    v.entries.iter().any(|e| {
                        let (r, l) = v.get(e);
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
                    if *all {
                        matchers.iter().all(null)
                    } else {
                        matchers.iter().any(null)
                    }
                }
                Some(entries) => {
                    let hit = |m: &ValueMatcher| {
                        entries.iter().any(|e| {
                            let (r, l) = self.values.get(e);
                            m.matches(r, l)
                        })
                    };
                    if *all {
                        matchers.iter().all(hit)
                    } else {
                        matchers.iter().any(hit)
                    }
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
