//! Live detection: every event, once durable, goes through the Sigma engine (the same
//! compiled rule set as `mamori hunt`: SigmaHQ plus Mamori's rules, Linux rules applied to
//! sensor events through the ECS field mapping). A hit becomes an alert; repeats of the same
//! rule on the same process are folded into one alert with a count and up to
//! [`EVIDENCE_MAX`] events kept as evidence.
//!
//! Runs in its own thread behind a bounded queue: when detection falls behind, ingest waits
//! (acknowledgements slow down) instead of memory growing.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};

use mamori_model::{Event, Shape};
use mamori_sigma::RuleSet;
use serde_json::Value;

use crate::state::{NewAlert, State};

/// Events kept as evidence per alert.
pub const EVIDENCE_MAX: usize = 10;
const QUEUE: usize = 256;

/// Events of one batch for detection.
#[derive(Debug)]
pub struct Job {
    /// Agent that sent them.
    pub agent: String,
    /// Its tenant.
    pub tenant: String,
    /// The events (JSON).
    pub events: Vec<Vec<u8>>,
}

/// Starts the detection thread; returns its queue.
pub fn spawn(rules: RuleSet, state: Arc<State>) -> SyncSender<Job> {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("mamori-detect".into())
        .spawn(move || run(rules, state, rx))
        .expect("spawning the detection thread");
    tx
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn run(rules: RuleSet, state: Arc<State>, rx: Receiver<Job>) {
    let mut scanner = rules.scanner();
    let mut hits = Vec::new();
    for job in rx {
        for raw in &job.events {
            let Ok(value) = serde_json::from_slice::<Value>(raw) else {
                continue; // validated at ingest; nothing to detect in a non-object
            };
            let event = Event::with_shape(value, Shape::Ecs);
            hits.clear();
            scanner.scan(&event, &mut hits);
            if hits.is_empty() {
                continue;
            }
            let v = &event.data;
            for &h in &hits {
                let meta = &scanner.rule_set().rules()[h].meta;
                let alert = NewAlert {
                    tenant: &job.tenant,
                    agent: &job.agent,
                    host: text(v, &["host", "name"]).unwrap_or(""),
                    rule_id: meta.id.as_deref().unwrap_or(&meta.title),
                    rule_title: &meta.title,
                    level: meta.level.as_str(),
                    tags: &meta.tags,
                    user: text(v, &["user", "name"])
                        .or_else(|| text(v, &["user", "id"]))
                        .unwrap_or(""),
                    process_entity: text(v, &["process", "entity_id"]).unwrap_or(""),
                    process_executable: text(v, &["process", "executable"]).unwrap_or(""),
                    command_line: text(v, &["process", "command_line"]).unwrap_or(""),
                    timestamp: text(v, &["@timestamp"]).unwrap_or(""),
                    evidence: raw,
                };
                if let Err(e) = state.record_alert(&alert) {
                    tracing::error!("recording an alert: {e}");
                }
            }
        }
    }
}
