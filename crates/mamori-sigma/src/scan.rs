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

use mamori_model::walk::{GaveUp, Item, Leaf, Next, Scratch, walk};
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
    /// Whether any detection rule's logsource (and EventID, when it names one) fits.
    routed: bool,
    /// Those rules evaluated whatever the prefilter saw, as a bitmap of rule indexes.
    always: Vec<u64>,
    /// Those evaluated only when the prefilter saw one of their literals, as a bitmap.
    /// Bitmaps, so that a scan touches only the rules it evaluates, not each of the
    /// route's hundreds of compiled rules to ask whether it is prefiltered.
    filtered: Vec<u64>,
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
    /// Ranges of `entries` that keyword searches skip: the ancestry an ECS event carries
    /// (see [`ANCESTRY`]).
    context: Vec<(u32, u32)>,
}

/// Fields under this prefix describe the process's parent (and its parent), not what the
/// event itself records. Sigma keywords search a log line, and a Linux log line of a
/// process (auditd's EXECVE, a shell's history) holds that process's own command, not its
/// parent's: searched in the sensor's ancestry fields, a keyword rule that matches a
/// process would match each of its children and grandchildren again, each one a new
/// alert. Rules that name a parent field (`ParentCommandLine`, …) still read them.
const ANCESTRY: &str = "process.parent.";

impl Values {
    fn clear(&mut self) {
        self.entries.clear();
        self.raw.clear();
        self.low.clear();
        self.context.clear();
    }

    /// Entries `start..` (just pushed for the field `name`) are context if `name` is.
    fn note_context(&mut self, name: &str, start: u32) {
        let end = self.entries.len() as u32;
        if end > start && name.starts_with(ANCESTRY) {
            match self.context.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => self.context.push((start, end)),
            }
        }
    }

    /// The entries keyword searches read: all but the context.
    fn searched(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().enumerate().filter_map(|(i, e)| {
            let i = i as u32;
            (!self.context.iter().any(|&(s, end)| s <= i && i < end)).then_some(e)
        })
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

    fn push_number(&mut self, n: &serde_json::Number) {
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

    /// A scalar of the one-pass walk, as [`Values::push_value`] pushes it from the tree.
    fn push_item(&mut self, item: &Item<'_>) {
        match item {
            Item::Str(s) => self.push_str(s),
            Item::Num(n) => self.push_number(n),
            Item::Bool(b) => self.push_str(if *b { "true" } else { "false" }),
            Item::Null => self.push_str(""),
        }
    }

    fn push_value(&mut self, v: &Value, depth: u8) {
        match v {
            Value::String(s) => self.push_str(s),
            Value::Number(n) => self.push_number(n),
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
    routes: Routes,
    name_buf: String,
    walk_scratch: Scratch,
    ecs_kind: EcsKind,
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
            routes: Routes::default(),
            name_buf: String::new(),
            walk_scratch: Scratch::default(),
            ecs_kind: EcsKind::default(),
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
        slot_text_in(&self.slots, &self.values, slot)
    }

    /// What applies to the event just filled. Windows events (EVTX, Winlogbeat) are keyed by
    /// the Channel, Provider_Name and EventID slots already read; other shapes by their kind.
    fn candidates_for(&mut self, event: &Event) -> Arc<Candidates> {
        let kind = if matches!(event.shape, Shape::Evtx | Shape::Winlogbeat) {
            let text = |slot| slot_text_in(&self.slots, &self.values, slot);
            EventKind {
                product: Product::Windows,
                channel: text(SLOT_CHANNEL),
                provider: text(SLOT_PROVIDER),
                event_id: text(SLOT_EVENT_ID).and_then(|t| t.trim().parse::<u32>().ok()),
                ecs_category: Vec::new(),
                ecs_type: Vec::new(),
                service: None,
            }
        } else {
            event.kind()
        };
        self.routes.candidates(self.set, &kind)
    }
}

fn slot_text_in<'a>(slots: &'a [Slot], values: &'a Values, slot: u32) -> Option<&'a str> {
    let sl = slots.get(slot as usize)?;
    if sl.prio == 0 || sl.start == sl.end {
        return None;
    }
    Some(values.get(values.entries.get(sl.start as usize)?).0)
}

/// Event kind → the detection rules and prefilter automata that apply to it.
#[derive(Debug, Default)]
struct Routes {
    cache: HashMap<String, Arc<Candidates>>,
    key: String,
}

impl Routes {
    /// What applies to an event of `kind` (cached by kind).
    fn candidates(&mut self, set: &RuleSet, kind: &EventKind<'_>) -> Arc<Candidates> {
        Scanner::kind_key(kind, &mut self.key);
        if let Some(c) = self.cache.get(self.key.as_str()) {
            return c.clone();
        }
        let c = Arc::new(compute_candidates(set, kind));
        if self.cache.len() >= ROUTE_CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(self.key.clone(), c.clone());
        c
    }
}

/// Detection rules and prefilter automata that apply to an event kind.
fn compute_candidates(set: &RuleSet, kind: &EventKind<'_>) -> Candidates {
    let mut c = Candidates::default();
    let mut rules = Vec::new();
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
                rules.push(i);
            }
        }
    }
    let words = set.rules.len().div_ceil(64);
    (c.always, c.filtered) = (vec![0; words], vec![0; words]);
    c.routed = !rules.is_empty();
    for i in rules {
        let map = if set.rules[i as usize].prefiltered {
            &mut c.filtered
        } else {
            &mut c.always
        };
        map[(i / 64) as usize] |= 1 << (i % 64);
    }
    c.prefiltered = c.filtered.iter().any(|&w| w != 0);
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

/// Points the slots of the rules' fields named `name` at the values `start..end`: a value
/// under the Sigma name itself wins over one under an alias, and the first of each wins.
fn point_slots(
    set: &RuleSet,
    slots: &mut [Slot],
    touched: &mut Vec<u32>,
    name: &str,
    start: u32,
    end: u32,
) {
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
}

/// Top-level fields that route an ECS document as a Windows export or a cloud trail (see
/// `EventKind` in mamori-model): [`Scanner::scan_ecs_json`] leaves those to the tree.
const ROUTING_FIELDS: &[&str] = &[
    "EventID",
    "Channel",
    "Provider_Name",
    "eventSource",
    "awsRegion",
];

/// The fields an ECS document is routed by, noted during a walk (as `Event::kind` reads
/// them from the tree: strings only). Their text is kept in one reused buffer.
#[derive(Debug, Default)]
struct EcsKind {
    text: String,
    /// `host.os.type`, `host.os.platform`, `host.os.family`.
    os: [Option<(usize, usize)>; 3],
    category: Vec<(usize, usize)>,
    types: Vec<(usize, usize)>,
    dataset: Option<(usize, usize)>,
    module: Option<(usize, usize)>,
}

impl EcsKind {
    fn clear(&mut self) {
        self.text.clear();
        self.os = [None; 3];
        self.category.clear();
        self.types.clear();
        self.dataset = None;
        self.module = None;
    }

    fn keep(text: &mut String, s: &str) -> (usize, usize) {
        text.push_str(s);
        (text.len() - s.len(), text.len())
    }

    fn note(&mut self, name: &str, leaf: &Leaf<'_>) {
        let EcsKind {
            text,
            os,
            category,
            types,
            dataset,
            module,
        } = self;
        let one = |text: &mut String| match leaf {
            Leaf::One(i) => i.as_str().map(|s| EcsKind::keep(text, s)),
            _ => None,
        };
        let list = |text: &mut String, out: &mut Vec<(usize, usize)>| match leaf {
            Leaf::One(i) => out.extend(i.as_str().map(|s| EcsKind::keep(text, s))),
            Leaf::List(items) => {
                for s in items.iter().filter_map(Item::as_str) {
                    out.push(EcsKind::keep(text, s));
                }
            }
            Leaf::Object => {}
        };
        match name {
            "host.os.type" => os[0] = one(text),
            "host.os.platform" => os[1] = one(text),
            "host.os.family" => os[2] = one(text),
            "event.category" => list(text, category),
            "event.type" => list(text, types),
            "event.dataset" => *dataset = one(text),
            "event.module" => *module = one(text),
            _ => {}
        }
    }

    fn kind(&self) -> EventKind<'_> {
        let at = |&(a, b): &(usize, usize)| &self.text[a..b];
        EventKind {
            product: self
                .os
                .iter()
                .find_map(|o| o.as_ref().map(at))
                .map_or(Product::Unknown, Product::from_os),
            channel: None,
            provider: None,
            event_id: None,
            ecs_category: self.category.iter().map(at).collect(),
            ecs_type: self.types.iter().map(at).collect(),
            service: self
                .dataset
                .as_ref()
                .or(self.module.as_ref())
                .map(|r| std::borrow::Cow::Borrowed(at(r))),
        }
    }
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
            values.note_context(name, start);
            point_slots(
                set,
                slots,
                touched,
                name,
                start,
                values.entries.len() as u32,
            );
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
        self.match_filled(&candidates, out);
    }

    /// [`Scanner::scan`] for an ECS document (the sensor's events) given as JSON text: the
    /// fields are read in one pass ([`mamori_model::walk`]) without building a tree, and
    /// the matches are those of scanning `Event::with_shape(tree, Shape::Ecs)`. Where the
    /// walk gives up (see there), or the document names Windows or cloud fields that change
    /// how it is routed, nothing is matched or counted: scan the tree instead.
    pub fn scan_ecs_json(&mut self, raw: &[u8], out: &mut Vec<usize>) -> Result<(), GaveUp> {
        self.scan_ecs_json_with(raw, out, &mut |_, _| {})
    }

    /// [`Scanner::scan_ecs_json`], handing every field to `also` too as the walk reads it:
    /// a caller that needs a few of the event's fields itself reads the text once, not twice.
    /// (With no rules loaded nothing is read.)
    pub fn scan_ecs_json_with(
        &mut self,
        raw: &[u8],
        out: &mut Vec<usize>,
        also: &mut dyn FnMut(&str, &Leaf<'_>),
    ) -> Result<(), GaveUp> {
        self.reset();
        if self.set.rules.is_empty() {
            self.stats.events += 1;
            self.stats.unrouted += 1;
            return Ok(());
        }
        let mut kind = std::mem::take(&mut self.ecs_kind);
        kind.clear();
        let Scanner {
            set,
            slots,
            touched,
            values,
            walk_scratch,
            ..
        } = self;
        let walked = walk(raw, walk_scratch, &mut |name, leaf| {
            if ROUTING_FIELDS.contains(&name) {
                return Next::Stop; // routed by these in the tree's reading
            }
            also(name, &leaf);
            kind.note(name, &leaf);
            let start = values.entries.len() as u32;
            match leaf {
                Leaf::Object => return Next::Go,
                Leaf::One(item) => values.push_item(&item),
                Leaf::List(items) => items.iter().for_each(|i| values.push_item(i)),
            }
            values.note_context(name, start);
            point_slots(
                set,
                slots,
                touched,
                name,
                start,
                values.entries.len() as u32,
            );
            Next::Go
        });
        if let Err(e) = walked {
            self.ecs_kind = kind;
            self.reset();
            return Err(e);
        }
        self.stats.events += 1;
        let candidates = self.routes.candidates(self.set, &kind.kind());
        self.ecs_kind = kind;
        self.match_filled(&candidates, out);
        Ok(())
    }

    /// Prefilters and evaluates the rules that apply, over the fields already read.
    fn match_filled(&mut self, candidates: &Candidates, out: &mut Vec<usize>) {
        if !candidates.routed {
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
        // In rule order: the rules always evaluated and the prefiltered ones whose literal
        // was seen (bits of rules outside this route are masked off).
        for (w, (&always, &filtered)) in candidates
            .always
            .iter()
            .zip(&candidates.filtered)
            .enumerate()
        {
            let mut bits = always | (filtered & self.candidates[w]);
            while bits != 0 {
                let i = w as u32 * 64 + bits.trailing_zeros();
                bits &= bits - 1;
                self.evaluate(i, out);
            }
        }
    }

    /// Evaluates rule `i` over the fields read; pushes it to `out` if it matches.
    fn evaluate(&mut self, i: u32, out: &mut Vec<usize>) {
        let rule = &self.set.rules[i as usize];
        self.stats.evaluated += 1;
        self.evaluations[i as usize] += 1;
        if self.eval(&rule.main) && rule.filters.iter().all(|f| self.eval(f)) {
            self.stats.matched += 1;
            out.push(i as usize);
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
                    v.searched().any(|e| {
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
