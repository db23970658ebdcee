//! Correlation rules over a time-ordered stream of detections.
//!
//! The [`Correlator`] consumes [`CorrelationInput`]s — a match of a rule that feeds a
//! correlation, with its time and the group-by values captured from the event — in time
//! order, and emits a [`CorrelationMatch`] when a correlation's condition holds:
//!
//! * `event_count`: number of matches per group within the sliding time span;
//! * `value_count`: number of distinct values of a field per group within the time span;
//! * `temporal`: every referenced rule matched within the time span, in any order;
//! * `temporal_ordered`: they matched in the order listed.
//!
//! Conditions that only grow true (`gt`, `gte`, `eq` reached from below) fire as soon as
//! they hold; conditions with an upper bound (`lt`, `lte`) are judged when a group's window
//! closes, or at [`Correlator::finish`]. After firing, a group starts afresh. A group keeps
//! at most [`MAX_WINDOW`] entries; older ones are dropped and counted.
//!
//! A correlation match is itself an input to correlations that refer to the correlation
//! rule, so correlations can chain.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::ast::{CmpOp, CorrelationKind};
use crate::compile::{CompiledCorrelation, RuleSet};

/// Most entries kept per correlation group.
pub const MAX_WINDOW: usize = 10_000;

/// A match of a rule that feeds correlations.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelationInput {
    /// The matching rule (index into [`RuleSet::rules`]).
    pub rule: usize,
    /// Event time, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Caller's identifier for the match, listed in the correlation match.
    pub id: u64,
    /// Field values captured from the event (see [`RuleSet::correlation_fields`]).
    pub fields: Vec<(String, String)>,
}

/// A correlation rule whose condition held.
#[derive(Debug, Clone, PartialEq)]
pub struct CorrelationMatch {
    /// The correlation rule (index into [`RuleSet::rules`]).
    pub rule: usize,
    /// Group-by field values of the group that fired.
    pub group: Vec<(String, String)>,
    /// Time of the first and last contributing match.
    pub first_ms: i64,
    /// Time of the last contributing match.
    pub last_ms: i64,
    /// Number of contributing matches.
    pub count: usize,
    /// Identifiers of the contributing matches (at most 100).
    pub ids: Vec<u64>,
}

#[derive(Debug, Clone)]
struct Item {
    time_ms: i64,
    id: u64,
    pos: usize,
    value: Option<String>,
}

#[derive(Debug, Default)]
struct Window {
    items: VecDeque<Item>,
}

/// Streams detections through the correlation rules of a [`RuleSet`].
#[derive(Debug)]
pub struct Correlator<'r> {
    set: &'r RuleSet,
    groups: HashMap<(usize, Vec<String>), Window>,
    /// Entries dropped because a group's window was full.
    pub dropped: u64,
}

impl<'r> Correlator<'r> {
    /// A correlator for the correlation rules in `set`.
    pub fn new(set: &'r RuleSet) -> Self {
        Correlator {
            set,
            groups: HashMap::new(),
            dropped: 0,
        }
    }

    /// Feeds one match (in time order) and appends any correlation that fires to `out`.
    pub fn push(&mut self, input: &CorrelationInput, out: &mut Vec<CorrelationMatch>) {
        let mut queue = vec![input.clone()];
        let mut guard = 0;
        while let Some(inp) = queue.pop() {
            guard += 1;
            if guard > 1000 {
                break;
            }
            let Some(feeds) = self.set.feeds.get(inp.rule) else {
                continue;
            };
            for &ci in feeds {
                let (rule_idx, cc) = &self.set.correlations[ci as usize];
                for (pos, &r) in cc.rules.iter().enumerate() {
                    if r as usize != inp.rule {
                        continue;
                    }
                    if let Some(m) = self.feed(ci as usize, *rule_idx as usize, cc, pos, &inp) {
                        queue.push(CorrelationInput {
                            rule: m.rule,
                            time_ms: m.last_ms,
                            id: inp.id,
                            fields: m.group.clone(),
                        });
                        out.push(m);
                    }
                }
            }
        }
    }

    fn feed(
        &mut self,
        ci: usize,
        rule_idx: usize,
        cc: &CompiledCorrelation,
        pos: usize,
        inp: &CorrelationInput,
    ) -> Option<CorrelationMatch> {
        let get = |name: &str| {
            inp.fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let key: Vec<String> = cc.group_fields[pos]
            .iter()
            .map(|f| get(f).unwrap_or_default())
            .collect();
        let value = match &cc.value_field {
            Some(f) => Some(get(f)?),
            None => None,
        };
        let window = self.groups.entry((ci, key.clone())).or_default();
        // Slide: entries older than the time span leave the window. Upper-bounded
        // conditions are judged on the window that is closing.
        let mut fired = None;
        if let Some(front) = window.items.front()
            && inp.time_ms - front.time_ms > cc.timespan_ms
        {
            if has_upper_bound(&cc.condition) && holds(cc, &window.items) {
                fired = Some(make_match(rule_idx, cc, &key, &window.items));
                window.items.clear();
            }
            while let Some(f) = window.items.front() {
                if inp.time_ms - f.time_ms > cc.timespan_ms {
                    window.items.pop_front();
                } else {
                    break;
                }
            }
        }
        if window.items.len() >= MAX_WINDOW {
            window.items.pop_front();
            self.dropped += 1;
        }
        window.items.push_back(Item {
            time_ms: inp.time_ms,
            id: inp.id,
            pos,
            value,
        });
        if fired.is_none() && !has_upper_bound(&cc.condition) && holds(cc, &window.items) {
            fired = Some(make_match(rule_idx, cc, &key, &window.items));
            window.items.clear();
        }
        fired
    }

    /// Judges the windows still open (upper-bounded conditions) at the end of the stream.
    pub fn finish(&mut self, out: &mut Vec<CorrelationMatch>) {
        let mut keys: Vec<(usize, Vec<String>)> = self.groups.keys().cloned().collect();
        keys.sort();
        for k in keys {
            let (rule_idx, cc) = &self.set.correlations[k.0];
            if let Some(w) = self.groups.get(&k)
                && has_upper_bound(&cc.condition)
                && holds(cc, &w.items)
            {
                out.push(make_match(*rule_idx as usize, cc, &k.1, &w.items));
            }
        }
        self.groups.clear();
    }
}

fn has_upper_bound(cond: &[(CmpOp, f64)]) -> bool {
    cond.iter()
        .any(|(op, _)| matches!(op, CmpOp::Lt | CmpOp::Lte | CmpOp::Neq))
}

fn cond_holds(cond: &[(CmpOp, f64)], n: usize) -> bool {
    !cond.is_empty() && cond.iter().all(|(op, v)| op.holds(n as f64, *v))
}

fn holds(cc: &CompiledCorrelation, items: &VecDeque<Item>) -> bool {
    match cc.kind {
        CorrelationKind::EventCount => cond_holds(&cc.condition, items.len()),
        CorrelationKind::ValueCount => {
            let distinct: HashSet<&str> = items.iter().filter_map(|i| i.value.as_deref()).collect();
            cond_holds(&cc.condition, distinct.len())
        }
        CorrelationKind::Temporal => {
            let distinct: HashSet<usize> = items.iter().map(|i| i.pos).collect();
            if cc.condition.is_empty() {
                distinct.len() == cc.rules.len()
            } else {
                cond_holds(&cc.condition, distinct.len())
            }
        }
        CorrelationKind::TemporalOrdered => {
            let mut next = 0;
            for i in items {
                if i.pos == next {
                    next += 1;
                    if next == cc.rules.len() {
                        return true;
                    }
                }
            }
            false
        }
    }
}

fn make_match(
    rule: usize,
    cc: &CompiledCorrelation,
    key: &[String],
    items: &VecDeque<Item>,
) -> CorrelationMatch {
    CorrelationMatch {
        rule,
        group: cc
            .group_by
            .iter()
            .cloned()
            .zip(key.iter().cloned())
            .collect(),
        first_ms: items.front().map(|i| i.time_ms).unwrap_or_default(),
        last_ms: items.back().map(|i| i.time_ms).unwrap_or_default(),
        count: items.len(),
        ids: items.iter().take(100).map(|i| i.id).collect(),
    }
}
