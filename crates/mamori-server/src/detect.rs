//! Live detection: every event, once durable, goes through the Sigma engine (the same
//! compiled rule set as `mamori hunt`: SigmaHQ plus Mamori's rules, Linux rules applied to
//! sensor events through the ECS field mapping). A hit becomes an alert; repeats of the same
//! rule on the same process are folded into one alert with a count and up to
//! [`EVIDENCE_MAX`] events kept as evidence.
//!
//! Correlation rules (event_count, value_count, temporal …) run on the stream too, one
//! correlator per tenant so that groups never mix customers; rules that only feed a
//! correlation (`generate: false`) do not raise alerts of their own. A correlation alert keeps
//! the contributing events as evidence.
//!
//! Rules can change while it runs (`crate::rules`): a new rule set arrives on the queue and
//! takes over between two batches (correlation windows in progress start again); disabled
//! rules raise no alerts.
//!
//! Runs in its own thread behind a bounded queue: when detection falls behind, ingest waits
//! (acknowledgements slow down) instead of memory growing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, RwLock};

use mamori_model::{Event, Shape};
use mamori_sigma::{CorrelationInput, Correlator, RuleSet};
use serde_json::Value;

use crate::state::{NewAlert, State};

/// Events kept as evidence per alert.
pub const EVIDENCE_MAX: usize = 10;
/// Batches waiting for detection at most (each up to a few thousand parsed events).
const QUEUE: usize = 4;

/// Events of one batch for detection.
#[derive(Debug)]
pub struct Job {
    /// Agent that sent them.
    pub agent: String,
    /// Its tenant.
    pub tenant: String,
    /// The events (JSON objects, validated at ingest).
    pub events: Vec<Vec<u8>>,
}

/// What the detection thread receives.
#[derive(Debug)]
pub enum Msg {
    /// Events to scan.
    Events(Job),
    /// A new rule set to use from now on.
    Rules(Arc<RuleSet>),
}

/// Rule ids whose alerts are suppressed.
pub type Disabled = Arc<RwLock<HashSet<String>>>;

/// Starts the detection thread; returns its queue.
pub fn spawn(rules: Arc<RuleSet>, disabled: Disabled, state: Arc<State>) -> SyncSender<Msg> {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("mamori-detect".into())
        .spawn(move || {
            let mut rules = rules;
            while let Some(next) = run(&rules, &disabled, &state, &rx) {
                tracing::info!(rules = next.rules().len(), "detection rules replaced");
                rules = next;
            }
        })
        .expect("spawning the detection thread");
    tx
}

fn is_disabled(disabled: &Disabled, meta: &mamori_sigma::ast::RuleMeta) -> bool {
    disabled
        .read()
        .map(|d| !d.is_empty() && d.contains(crate::rules::rule_id(meta)))
        .unwrap_or(false)
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// A sensor's heartbeat or stop notice: updates the inventory; a stop is an alert.
fn health(state: &State, job: &Job, v: &Value, raw: &[u8]) {
    let stopped = text(v, &["event", "action"]) == Some("agent-stopped");
    let interval = v["mamori"]["heartbeat_interval_s"].as_i64().unwrap_or(60);
    if let Err(e) = state.heartbeat(
        &job.agent,
        &v["mamori"]["health"],
        &v["host"]["ip"],
        interval,
        stopped,
    ) {
        tracing::error!("recording a heartbeat: {e}");
    }
    if stopped {
        let tags = vec![
            "attack.defense-evasion".to_string(),
            "attack.t1562.001".to_string(),
        ];
        let alert = NewAlert {
            tenant: &job.tenant,
            agent: &job.agent,
            host: text(v, &["host", "name"]).unwrap_or(""),
            rule_id: "mamori-sensor-stopped",
            rule_title: "Sensor stopped on host",
            level: "medium",
            tags: &tags,
            user: "",
            process_entity: text(v, &["@timestamp"]).unwrap_or(""),
            process_executable: "",
            command_line: "",
            timestamp: text(v, &["@timestamp"]).unwrap_or(""),
            evidence: raw,
        };
        if let Err(e) = state.record_alert(&alert) {
            tracing::error!("recording a sensor-stopped alert: {e}");
        }
    }
}

/// Raises an alert for each sensor that went silent (three heartbeat intervals without a
/// report): a host whose agent was killed, uninstalled or cut off.
pub fn silent_hosts(state: &State) {
    let silent = match state.newly_silent() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("looking for silent hosts: {e}");
            return;
        }
    };
    let tags = vec![
        "attack.defense-evasion".to_string(),
        "attack.t1562.001".to_string(),
    ];
    for (agent, tenant, host) in silent {
        let at = crate::state::now().to_string();
        let evidence =
            serde_json::json!({"agent": agent, "host": host, "silent_since_s": at}).to_string();
        let alert = NewAlert {
            tenant: &tenant,
            agent: &agent,
            host: &host,
            rule_id: "mamori-host-silent",
            rule_title: "Host stopped reporting",
            level: "high",
            tags: &tags,
            user: "",
            process_entity: &at,
            process_executable: "",
            command_line: "",
            timestamp: &at,
            evidence: evidence.as_bytes(),
        };
        if let Err(e) = state.record_alert(&alert) {
            tracing::error!("recording a silent-host alert: {e}");
        }
    }
}

/// An alert of `meta` on the event `v` of `job`.
fn alert_of<'a>(
    job: &'a Job,
    v: &'a Value,
    meta: &'a mamori_sigma::ast::RuleMeta,
    evidence: &'a [u8],
) -> NewAlert<'a> {
    NewAlert {
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
        evidence,
    }
}

/// Events that fed correlations, kept to be the evidence of correlation alerts.
const FED_KEEP: usize = 4096;

/// Scans with `rules` until the queue closes (`None`) or brings new rules.
fn run(
    rules: &RuleSet,
    disabled: &Disabled,
    state: &State,
    rx: &Receiver<Msg>,
) -> Option<Arc<RuleSet>> {
    let mut scanner = rules.scanner();
    let mut correlators: HashMap<String, Correlator<'_>> = HashMap::new();
    let mut fed: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    let mut next_id = 0u64;
    let mut fired = Vec::new();
    let mut hits = Vec::new();
    for msg in rx {
        let mut job = match msg {
            Msg::Events(job) => job,
            Msg::Rules(next) => return Some(next),
        };
        for raw in std::mem::take(&mut job.events) {
            let Ok(value) = serde_json::from_slice::<Value>(&raw) else {
                continue;
            };
            if text(&value, &["event", "dataset"]) == Some("mamori.health") {
                health(state, &job, &value, &raw);
                continue;
            }
            // The sensor's events are ECS; uploads (Windows logs) are recognised by shape.
            let event = if text(&value, &["event", "module"]) == Some("mamori") {
                Event::with_shape(value, Shape::Ecs)
            } else {
                Event::new(value)
            };
            hits.clear();
            scanner.scan(&event, &mut hits);
            if hits.is_empty() {
                continue;
            }
            let v = &event.data;
            // Files on the tenant's allowlist are never flagged.
            let hashes: Vec<&str> = [
                &v["process"]["hash"]["sha256"],
                &v["file"]["hash"]["sha256"],
            ]
            .into_iter()
            .filter_map(Value::as_str)
            .collect();
            if state.allowlisted(&job.tenant, &hashes).unwrap_or(false) {
                continue;
            }
            for &h in &hits {
                if !rules.feeds_correlation(h) {
                    continue;
                }
                next_id += 1;
                let input = CorrelationInput {
                    rule: h,
                    time_ms: event.timestamp().map(|t| t.timestamp_millis()).unwrap_or(0),
                    id: next_id,
                    fields: rules
                        .correlation_fields(h)
                        .iter()
                        .map(|f| (f.clone(), scanner.value(f).unwrap_or_default().to_string()))
                        .collect(),
                };
                fed.push_back((next_id, raw.clone()));
                if fed.len() > FED_KEEP {
                    fed.pop_front();
                }
                fired.clear();
                correlators
                    .entry(job.tenant.clone())
                    .or_insert_with(|| Correlator::new(rules))
                    .push(&input, &mut fired);
                for m in &fired {
                    let meta = &rules.rules()[m.rule].meta;
                    if is_disabled(disabled, meta) {
                        continue;
                    }
                    let group: Vec<String> =
                        m.group.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let evidence: Vec<Value> = m
                        .ids
                        .iter()
                        .filter_map(|id| fed.iter().find(|(i, _)| i == id))
                        .filter_map(|(_, r)| serde_json::from_slice(r).ok())
                        .collect();
                    let evidence = serde_json::to_vec(&serde_json::json!({
                        "correlation": {"group": group, "count": m.count,
                                        "first_ms": m.first_ms, "last_ms": m.last_ms},
                        "events": evidence,
                    }))
                    .unwrap_or_default();
                    // One alert per group and window start; the group is what it is about.
                    let key = format!("correlation:{}:{}", group.join(","), m.first_ms);
                    let alert = NewAlert {
                        process_entity: &key,
                        process_executable: "",
                        command_line: "",
                        ..alert_of(&job, v, meta, &evidence)
                    };
                    if let Err(e) = state.record_alert(&alert) {
                        tracing::error!("recording a correlation alert: {e}");
                    }
                }
            }
            for &h in &hits {
                let info = &scanner.rule_set().rules()[h];
                if !info.reported || is_disabled(disabled, &info.meta) {
                    continue; // feeds a correlation only, or switched off
                }
                let alert = alert_of(&job, v, &info.meta, &raw);
                if let Err(e) = state.record_alert(&alert) {
                    tracing::error!("recording an alert: {e}");
                }
            }
        }
    }
    None
}
