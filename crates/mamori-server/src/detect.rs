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
//!
//! Detection survives a crash: how far it has gone through the event log is committed with
//! the alerts of those events (at least every [`PROGRESS_EVERY`] otherwise), the log keeps
//! what detection has not passed yet, and on start [`replay`] sends detection what the log
//! holds beyond that point. An event acknowledged to its agent is detected exactly once,
//! whenever the server stops. A round whose writes the state database refuses is rolled
//! back and detected again until they are committed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use mamori_model::walk::{Item, Leaf};
use mamori_model::{Event, Shape};
use mamori_sigma::{CorrelationInput, Correlator, RuleSet};
use serde_json::Value;

use crate::ServerError;
use crate::state::{NewAlert, State};
use crate::store::EventLog;

mod parts;

/// Events kept as evidence per alert.
pub const EVIDENCE_MAX: usize = 10;
/// Batches waiting for detection at most (each up to a few thousand parsed events).
const QUEUE: usize = 4;

/// Events of one batch for detection.
#[derive(Debug)]
pub struct Job {
    /// Agent that sent them.
    pub agent: std::sync::Arc<str>,
    /// Its tenant.
    pub tenant: std::sync::Arc<str>,
    /// The agent's sequence number of the first event (the others follow it).
    pub first_seq: u64,
    /// The log position of the first event (the others follow it).
    pub first_log_seq: u64,
    /// The events (JSON objects, validated at ingest).
    pub events: Vec<mamori_wire::Bytes>,
}

/// How far detection has gone is recorded at least this often when no alert is raised.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What the detection thread receives.
#[derive(Debug)]
pub enum Msg {
    /// Events to scan (one log writer's round: the new events of several batches).
    Events {
        /// The events, by batch.
        jobs: Vec<Job>,
        /// The log position of the last of them.
        through: u64,
        /// When they were durable (synced; for events detected again after a restart,
        /// when they were read back): what [`Progress::delay`] counts from.
        durable_at: SystemTime,
    },
    /// A new rule set to use from now on.
    Rules(Arc<RuleSet>),
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Detection this far behind the log ([`Progress::delay`]) is late: the server warns
/// (alerts are that late), the compactor stops waiting for detection's rows, and `mamori
/// server status` reports it.
pub const FAR_BEHIND: Duration = Duration::from_secs(5);
/// And the warning is repeated at most this often while it lasts.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Rule ids whose alerts are suppressed.
pub type Disabled = Arc<RwLock<HashSet<String>>>;

/// How far detection has gone through the event log: recorded in the state database, and
/// shared with the compactor, which must not release what detection has not passed.
#[derive(Debug, Clone)]
pub struct Progress {
    through: Arc<AtomicU64>,
    /// Since when (seconds since the epoch) the state database has refused detection's
    /// current round, and why; `None` while rounds commit.
    failing: Arc<Mutex<Option<(i64, String)>>>,
    /// When the round detection is working on was durable (microseconds since the epoch),
    /// 0 while it waits for one: the oldest durable event not yet detected.
    working_on: Arc<AtomicI64>,
}

impl Progress {
    /// Where detection starts: the recorded position, or (on the first start that records
    /// one) the end of the log.
    pub fn load(state: &State, log: &EventLog) -> Result<Progress, ServerError> {
        let through = match state.detected_through()? {
            Some(t) => t,
            None => {
                state.set_detected_through(log.synced())?;
                log.synced()
            }
        };
        Ok(Progress::new(through))
    }

    fn new(through: u64) -> Progress {
        Progress {
            through: Arc::new(AtomicU64::new(through)),
            failing: Arc::default(),
            working_on: Arc::default(),
        }
    }

    /// How long the oldest durable event that detection has not finished with has waited
    /// (zero while detection waits for events): how late its alert would be, beyond the
    /// event's way to the server. `None` once the detection thread has ended.
    pub fn delay(&self) -> Option<Duration> {
        if self.through() == u64::MAX {
            return None;
        }
        let since = self.working_on.load(Ordering::Acquire);
        Some(if since == 0 {
            Duration::ZERO
        } else {
            Duration::from_micros(micros(SystemTime::now()).saturating_sub(since) as u64)
        })
    }

    pub(crate) fn set_working_on(&self, durable_at: Option<SystemTime>) {
        // A time at or before the epoch would read as "waiting": 1 µs is as old.
        let at = durable_at.map_or(0, |t| micros(t).max(1));
        self.working_on.store(at, Ordering::Release);
    }

    /// Since when (seconds since the epoch) the state database has refused detection's
    /// current round, and the last error; `None` while rounds commit.
    pub fn failing(&self) -> Option<(i64, String)> {
        self.failing.lock().ok().and_then(|f| f.clone())
    }

    fn set_failing(&self, error: Option<String>) {
        if let Ok(mut f) = self.failing.lock() {
            *f = error.map(|e| (f.as_ref().map_or_else(crate::state::now, |f| f.0), e));
        }
    }

    /// The log position through which every event has been detected and recorded
    /// (`u64::MAX` once the detection thread has ended: nothing is waited for).
    pub fn through(&self) -> u64 {
        self.through.load(Ordering::Acquire)
    }
}

/// Sends detection the events the log holds after `progress` (acknowledged to their
/// agents, not yet detected when the server stopped). Returns how many.
pub fn replay(
    log: &Mutex<EventLog>,
    progress: &Progress,
    queue: &SyncSender<Msg>,
) -> Result<u64, ServerError> {
    let mut next = progress.through() + 1;
    let mut sent = 0;
    loop {
        let recs = log
            .lock()
            .map_err(|_| ServerError::Store("event log lock poisoned".into()))?
            .read(next, 8192)?;
        let Some(through) = recs.last().map(|r| r.log_seq) else {
            return Ok(sent);
        };
        let mut jobs: Vec<Job> = Vec::new();
        for r in recs {
            sent += 1;
            match jobs.last_mut() {
                Some(j)
                    if *j.agent == *r.agent
                        && *j.tenant == *r.tenant
                        && j.first_seq + j.events.len() as u64 == r.seq
                        && j.first_log_seq + j.events.len() as u64 == r.log_seq =>
                {
                    j.events.push(r.event.into())
                }
                _ => jobs.push(Job {
                    agent: r.agent.clone(),
                    tenant: r.tenant.clone(),
                    first_seq: r.seq,
                    first_log_seq: r.log_seq,
                    events: vec![r.event.into()],
                }),
            }
        }
        queue
            .send(Msg::Events {
                jobs,
                through,
                // When they were synced is not kept: the time they are read back is the
                // latest it can be.
                durable_at: SystemTime::now(),
            })
            .map_err(|_| ServerError::Store("the detection thread has stopped".into()))?;
        next = through + 1;
    }
}

/// Threads detection scans with: one per core (the detection thread and helpers), at most
/// [`SCAN_THREADS_MAX`].
pub fn scan_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(SCAN_THREADS_MAX)
}

/// The most threads detection scans with.
pub const SCAN_THREADS_MAX: usize = 8;

/// Starts the detection thread, which splits each round's scan over `scan_threads`
/// threads (itself included); returns its queue.
pub fn spawn(
    rules: Arc<RuleSet>,
    disabled: Disabled,
    state: Arc<State>,
    soc: Soc,
    progress: Progress,
    feed: Option<Arc<crate::compact::Feed>>,
    scan_threads: usize,
) -> SyncSender<Msg> {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("mamori-detect".into())
        .spawn(move || {
            let _gone = Gone(progress.clone());
            let mut rules = rules;
            let mut trees = Trees::new();
            let mut saved = Saved {
                reached: progress.through(),
                progress,
                at: Instant::now(),
                lag: Lag::default(),
            };
            let feed = feed.as_deref();
            let context = Context {
                disabled: &disabled,
                state: &state,
                soc: &soc,
                feed,
                scan_threads,
            };
            while let Some(next) = run(&rules, &context, &mut trees, &mut saved, &rx) {
                tracing::info!(rules = next.rules().len(), "detection rules replaced");
                rules = next;
            }
            // Stopping: what was detected since the last record is recorded now.
            saved.catch_up(&state);
        })
        .expect("spawning the detection thread");
    tx
}

/// Dropped when the detection thread ends, even by a panic: the log no longer waits for
/// detection (it would otherwise grow until its quota stops ingest).
struct Gone(Progress);

impl Drop for Gone {
    fn drop(&mut self) {
        self.0.through.store(u64::MAX, Ordering::Release);
    }
}

/// The detection thread's side of [`Progress`].
struct Saved {
    progress: Progress,
    /// The last position detected (recorded or not).
    reached: u64,
    /// When it was last recorded.
    at: Instant,
    lag: Lag,
}

/// Warns when detection falls behind the stored events, and says when it has caught up.
#[derive(Debug, Default)]
struct Lag {
    warned_at: Option<Instant>,
}

impl Lag {
    /// Detection starts a round whose events have waited `delay` since they were durable.
    fn note(&mut self, delay: Duration) {
        if delay >= FAR_BEHIND {
            if self.warned_at.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                tracing::warn!(
                    delay_ms = delay.as_millis() as u64,
                    "detection is {:.1} s behind the events the server has stored, so \
                     alerts are as late: the server needs more CPU, or fewer rules or \
                     agents (`GET /api/v1/status` shows the delay)",
                    delay.as_secs_f64()
                );
                self.warned_at = Some(Instant::now());
            }
        } else if delay < FAR_BEHIND / 5 && self.warned_at.take().is_some() {
            // At the warning's level: whoever saw it needs to see that it is over.
            tracing::warn!(
                delay_ms = delay.as_millis() as u64,
                "detection has caught up with the stored events"
            );
        }
    }
}

impl Saved {
    /// Records the position reached, unless it is recorded already.
    fn catch_up(&mut self, state: &State) {
        if self.reached <= self.progress.through() {
            return;
        }
        match state.set_detected_through(self.reached) {
            Ok(()) => self.done(self.reached),
            Err(e) => tracing::error!("recording how far detection has gone: {e}"),
        }
    }

    /// `through` is recorded (committed): the compactor may release the log through it.
    fn done(&mut self, through: u64) {
        self.progress.through.store(through, Ordering::Release);
        self.at = Instant::now();
    }
}

fn is_disabled(disabled: &Disabled, meta: &mamori_sigma::ast::RuleMeta) -> bool {
    disabled
        .read()
        .map(|d| !d.is_empty() && d.contains(crate::rules::rule_id(meta)))
        .unwrap_or(false)
}

pub(crate) fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// One writer round's writes to the state database, committed together: an alert storm
/// costs one commit (one fsync) per round instead of two or three per alert, and so do
/// heartbeats. The batch starts at the round's first write, not at its first read: a round
/// that only reads (connections to external addresses, say) commits nothing. Containment
/// requests wait for the commit: the containment thread reads the alert through another
/// connection.
struct Round<'a> {
    state: &'a State,
    open: bool,
    contain: Vec<Contain>,
}

impl<'a> Round<'a> {
    fn new(state: &'a State) -> Self {
        Round {
            state,
            open: false,
            contain: Vec::new(),
        }
    }

    /// The state database, inside the round's batch (started at the first write).
    fn write(&mut self) -> Result<&'a State, ServerError> {
        if !self.open {
            self.state.begin_batch()?;
            self.open = true;
        }
        Ok(self.state)
    }

    /// Commits the round's writes with the log position it reached, then sends its
    /// containment requests. A round that wrote nothing records its position only when
    /// [`PROGRESS_EVERY`] has passed (a commit costs an fsync). On an error nothing of the
    /// round is recorded; the caller [abandons](Round::abandon) it.
    fn finish(&mut self, soc: &Soc, saved: &mut Saved, through: u64) -> Result<(), ServerError> {
        if self.open {
            self.state.set_detected_through(through)?;
            self.state.commit_batch()?;
            self.open = false;
            saved.reached = through;
            saved.done(through);
        } else {
            saved.reached = through;
            if saved.at.elapsed() >= PROGRESS_EVERY {
                saved.catch_up(self.state);
            }
        }
        for c in self.contain.drain(..) {
            let _ = soc.contain.send(c);
        }
        Ok(())
    }

    /// Rolls back what the round wrote; its containment requests are dropped with it.
    fn abandon(&mut self) {
        if std::mem::take(&mut self.open)
            && let Err(e) = self.state.rollback_batch()
        {
            tracing::error!("rolling back a round of alert writes: {e}");
        }
        self.contain.clear();
    }
}

/// A write's outcome within a round. An error the database may not give later (locked past
/// the busy timeout, disk full) aborts the round: it is rolled back and detected again. Any
/// other error would come again: it is logged and the write skipped.
fn soft<T>(r: Result<T, ServerError>, what: &str) -> Result<Option<T>, ServerError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_transient() => Err(e),
        Err(e) => {
            tracing::error!("{what}: {e}");
            Ok(None)
        }
    }
}

/// A sensor's heartbeat or stop notice: updates the inventory; a stop is an alert.
fn health(state: &State, soc: &Soc, job: &Job, v: &Value, raw: &[u8]) -> Result<(), ServerError> {
    let stopped = text(v, &["event", "action"]) == Some("agent-stopped");
    let interval = v["mamori"]["heartbeat_interval_s"].as_i64().unwrap_or(60);
    gaps(
        state,
        &job.agent,
        &state.agent_health(&job.agent).unwrap_or_default(),
        v,
    )?;
    soft(
        state.heartbeat(
            &job.agent,
            &v["mamori"]["health"],
            &v["host"]["ip"],
            interval,
            stopped,
        ),
        "recording a heartbeat",
    )?;
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
            severity: "medium",
            severity_reasons: &[
                "the sensor reported that it stopped: the host is not watched".to_string(),
            ],
        };
        soft(
            state.record_gap(&job.agent, "stopped", "the sensor stopped"),
            "recording a gap",
        )?;
        if let Some(id) = soft(
            state.record_alert(&alert),
            "recording a sensor-stopped alert",
        )? {
            attach(state, soc, id)?;
        }
    }
    Ok(())
}

/// Records what a heartbeat says was lost since the previous one: events dropped in the
/// kernel, collectors not running, a spool that evicted records.
fn gaps(state: &State, agent: &str, before: &Value, v: &Value) -> Result<(), ServerError> {
    let now = &v["mamori"]["health"];
    let count = |h: &Value, path: &[&str]| path.iter().fold(h, |h, k| &h[k]).as_u64().unwrap_or(0);
    for (path, what) in [
        (
            &["dropped", "ring_buffer_full"][..],
            "events dropped in the kernel (ring buffer full)",
        ),
        (
            &["spool", "evicted_records"][..],
            "spooled batches evicted before they were shipped (disk quota)",
        ),
    ] {
        let (old, new) = (count(before, path), count(now, path));
        // Counters restart with the agent.
        let lost = if new >= old { new - old } else { new };
        if lost > 0 {
            let gap = state.record_gap(agent, "dropped", &format!("{lost} {what}"));
            soft(gap, "recording a gap")?;
        }
    }
    let missing = |h: &Value| -> Vec<String> {
        h["missing"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str().map(str::to_string))
            .collect()
    };
    let m = missing(now);
    if !m.is_empty() && m != missing(before) {
        let gap = state.record_gap(
            agent,
            "missing",
            &format!("collectors not running: {}", m.join(", ")),
        );
        soft(gap, "recording a gap")?;
    }
    Ok(())
}

/// Raises an alert for each sensor that went silent (three heartbeat intervals without a
/// report): a host whose agent was killed, uninstalled or cut off.
pub fn silent_hosts(state: &State, policy: &mamori_soc::Policy) {
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
    let silent_reasons = vec![
        "no heartbeat for three intervals: the agent was stopped, removed or cut off".to_string(),
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
            severity: "high",
            severity_reasons: &silent_reasons,
        };
        let _ = state.record_gap(
            &agent,
            "silent",
            "no heartbeat for three intervals: telemetry from then on is missing",
        );
        match state.record_alert(&alert) {
            Ok(id) => {
                if let Err(e) = state.attach_alert(id, policy) {
                    tracing::error!("grouping a silent-host alert: {e}");
                }
            }
            Err(e) => tracing::error!("recording a silent-host alert: {e}"),
        }
    }
}

/// The event as flat Sigma field names (`CommandLine`, `NewProcessId`, `Computer`, …) for
/// Windows shapes (EVTX, Winlogbeat); ECS and flat events as they are.
pub(crate) fn flat_view(v: &Value) -> std::borrow::Cow<'_, Value> {
    let e = Event::new(v.clone());
    match e.shape {
        Shape::Evtx | Shape::Winlogbeat => {
            let mut m = serde_json::Map::new();
            e.for_each_field(&mut |k, v| {
                m.entry(k.to_string()).or_insert_with(|| v.clone());
            });
            std::borrow::Cow::Owned(Value::Object(m))
        }
        _ => std::borrow::Cow::Borrowed(v),
    }
}

/// The first non-empty text among `paths` of `v`.
pub(crate) fn first_text<'a>(v: &'a Value, paths: &[&[&str]]) -> &'a str {
    paths
        .iter()
        .find_map(|p| text(v, p).filter(|s| !s.is_empty()))
        .unwrap_or("")
}

/// A Windows process id field as text (EVTX gives numbers or hex strings).
fn win_pid(v: &Value, key: &str) -> Option<String> {
    match &v[key] {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The process of an event, whatever its shape: ECS `process.entity_id`, Sysmon's
/// `ProcessGuid`, or for Security 4688 the computer and the new process id.
pub(crate) fn process_entity(v: &Value) -> String {
    let e = first_text(v, &[&["process", "entity_id"], &["ProcessGuid"]]);
    if !e.is_empty() {
        return e.to_string();
    }
    match win_pid(v, "NewProcessId") {
        Some(pid) => format!("{}|{pid}", first_text(v, &[&["Computer"]])),
        None => String::new(),
    }
}

/// The process an alert on the event is about: the event's process, unless it still runs
/// its parent's program. The sensor reports a forked child before it executes anything (and
/// the exit of one that never does, such as a pipeline's subshell) with its parent's
/// executable and command line: a detection on it folds into the parent's alert rather
/// than raising one more for each subshell.
pub(crate) fn alert_entity(v: &Value) -> String {
    let own = |k: &str| text(v, &["process", k]).filter(|t| !t.is_empty());
    let parents = |k: &str| text(v, &["process", "parent", k]);
    let inherited = text(v, &["event", "action"]) == Some("fork")
        || (own("command_line").is_some()
            && own("command_line") == parents("command_line")
            && own("executable") == parents("executable"));
    if inherited {
        let parent = parent_entity(v);
        if !parent.is_empty() {
            return parent;
        }
    }
    process_entity(v)
}

/// The parent process of an event, as [`process_entity`].
pub(crate) fn parent_entity(v: &Value) -> String {
    let e = first_text(
        v,
        &[&["process", "parent", "entity_id"], &["ParentProcessGuid"]],
    );
    if !e.is_empty() {
        return e.to_string();
    }
    match (win_pid(v, "NewProcessId"), win_pid(v, "ProcessId")) {
        (Some(_), Some(ppid)) => format!("{}|{ppid}", first_text(v, &[&["Computer"]])),
        _ => String::new(),
    }
}

/// The account of an event, whatever its shape.
pub(crate) fn user_of(v: &Value) -> &str {
    first_text(
        v,
        &[
            &["user", "name"],
            &["user", "id"],
            &["User"],
            &["SubjectUserName"],
            &["TargetUserName"],
        ],
    )
}

/// An alert of `meta` on the event `v` of `job`.
fn alert_of<'a>(
    job: &'a Job,
    v: &'a Value,
    meta: &'a mamori_sigma::ast::RuleMeta,
    evidence: &'a [u8],
    entity: &'a str,
) -> NewAlert<'a> {
    NewAlert {
        tenant: &job.tenant,
        agent: &job.agent,
        host: first_text(v, &[&["host", "name"], &["Computer"]]),
        rule_id: meta.id.as_deref().unwrap_or(&meta.title),
        rule_title: &meta.title,
        level: meta.level.as_str(),
        tags: &meta.tags,
        user: user_of(v),
        process_entity: entity,
        process_executable: first_text(
            v,
            &[&["process", "executable"], &["Image"], &["NewProcessName"]],
        ),
        command_line: first_text(v, &[&["process", "command_line"], &["CommandLine"]]),
        timestamp: text(v, &["@timestamp"]).unwrap_or(""),
        evidence,
        severity: "",
        severity_reasons: &[],
    }
}

/// The SOC policy and where automatic containment requests go.
pub struct Soc {
    /// Severity and containment policy.
    pub policy: Arc<mamori_soc::Policy>,
    /// Requests to isolate a host (served by a thread that can sign commands).
    pub contain: std::sync::mpsc::Sender<Contain>,
}

/// A request to contain a host because of a Critical alert.
#[derive(Debug, Clone)]
pub struct Contain {
    /// Agent.
    pub agent: String,
    /// Tenant.
    pub tenant: String,
    /// The alert.
    pub alert: i64,
    /// Why it is Critical.
    pub reasons: Vec<String>,
    /// Limited containment: kill the alert's process tree instead of isolating the host.
    pub kill: bool,
}

/// External destinations each process (and its parent) talked to: `agent|entity` → `ip:port`.
type Trees = HashMap<String, Vec<String>>;
const TREES_MAX: usize = 200_000;

/// The few fields of a sensor event that decide how detection reads it, noted as the
/// scanner's walk reads them (one pass over the text for both), and those a connection to an
/// external address adds to its process tree.
#[derive(Default)]
struct Facts {
    mamori: bool,
    health: bool,
    network: bool,
    ip: String,
    port: Option<u64>,
    /// `process.entity_id` and `process.parent.entity_id`, when they are strings.
    entity: String,
    parent: String,
    /// A top-level field that [`process_entity`] or [`parent_entity`] would also read:
    /// those two are then read from the tree.
    other_ids: bool,
}

impl Facts {
    fn clear(&mut self) {
        (self.mamori, self.health, self.network) = (false, false, false);
        self.ip.clear();
        self.port = None;
        self.entity.clear();
        self.parent.clear();
        self.other_ids = false;
    }

    fn note(&mut self, name: &str, leaf: &Leaf<'_>) {
        match (name, leaf) {
            ("event.module", Leaf::One(i)) => self.mamori = i.as_str() == Some("mamori"),
            ("event.dataset", Leaf::One(i)) => self.health = i.as_str() == Some("mamori.health"),
            ("event.category", Leaf::One(i)) => self.network = i.as_str() == Some("network"),
            ("event.category", Leaf::List(items)) => {
                self.network = items.iter().any(|i| i.as_str() == Some("network"))
            }
            ("destination.ip", Leaf::One(Item::Str(ip))) => self.ip.push_str(ip),
            ("destination.port", Leaf::One(Item::Num(n))) => self.port = n.as_u64(),
            ("process.entity_id", Leaf::One(Item::Str(e))) => self.entity.push_str(e),
            ("process.parent.entity_id", Leaf::One(Item::Str(e))) => self.parent.push_str(e),
            ("ProcessGuid" | "ParentProcessGuid" | "NewProcessId" | "ProcessId", _) => {
                self.other_ids = true
            }
            _ => {}
        }
    }

    /// Whether the event is one of the sensor's, and not a heartbeat.
    fn sensor(&self) -> bool {
        self.mamori && !self.health
    }

    /// The address of a connection outside the tenant's internal networks.
    fn external(&self, soc: &Soc, tenant: &str) -> Option<std::net::IpAddr> {
        if !self.network {
            return None;
        }
        let ip = self.ip.parse().ok()?;
        (!soc.policy.is_internal(tenant, ip)).then_some(ip)
    }

    /// `ip:port` and the process tree of a connection to the external address `ip` (from
    /// [`Facts::external`]), as [`external_destination`] and [`tree_of`] read them from the
    /// tree; `None` when the tree must be read.
    fn connection(&self, ip: std::net::IpAddr) -> Option<(String, [&str; 2])> {
        if self.other_ids {
            return None;
        }
        Some((
            destination(ip, self.port),
            [self.entity.as_str(), self.parent.as_str()],
        ))
    }
}

/// `ip:port` of a network event to an address outside the tenant's internal networks.
fn external_destination(soc: &Soc, tenant: &str, v: &Value) -> Option<String> {
    let network = match &v["event"]["category"] {
        Value::Array(a) => a.iter().any(|c| c == "network"),
        Value::String(c) => c == "network",
        _ => false,
    };
    if !network {
        return None;
    }
    let ip: std::net::IpAddr = text(v, &["destination", "ip"])?.parse().ok()?;
    if soc.policy.is_internal(tenant, ip) {
        return None;
    }
    Some(destination(ip, v["destination"]["port"].as_u64()))
}

fn destination(ip: std::net::IpAddr, port: Option<u64>) -> String {
    match port {
        Some(p) if ip.is_ipv6() => format!("[{ip}]:{p}"),
        Some(p) => format!("{ip}:{p}"),
        None => ip.to_string(),
    }
}

/// A process tree talked to `dest`: noted for it (and its parent), and the alerts open on
/// it assessed again.
fn connected(
    round: &mut Round<'_>,
    soc: &Soc,
    trees: &mut Trees,
    job: &Job,
    dest: &str,
    tree: &[&str; 2],
) -> Result<(), ServerError> {
    if trees.len() > TREES_MAX {
        trees.clear();
    }
    for e in tree.iter().filter(|e| !e.is_empty()) {
        let d = trees.entry(format!("{}|{e}", job.agent)).or_default();
        if !d.iter().any(|x| x == dest) && d.len() < 16 {
            d.push(dest.to_string());
        }
    }
    reassess(round, soc, trees, job, tree)
}

fn tree_of(v: &Value) -> [String; 2] {
    [process_entity(v), parent_entity(v)]
}

fn destinations(trees: &Trees, agent: &str, tree: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = tree
        .iter()
        .filter(|e| !e.is_empty())
        .filter_map(|e| trees.get(&format!("{agent}|{e}")))
        .flatten()
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What the policy does with a host whose alert became Critical (a request is sent once the
/// round is committed).
fn contain(
    round: &mut Round<'_>,
    soc: &Soc,
    tenant: &str,
    agent: &str,
    host: &str,
    alert: i64,
    reasons: &[String],
) -> Result<(), ServerError> {
    match soc.policy.containment(tenant, host) {
        c @ (mamori_soc::Containment::Isolate | mamori_soc::Containment::Kill) => {
            round.contain.push(Contain {
                agent: agent.to_string(),
                tenant: tenant.to_string(),
                alert,
                reasons: reasons.to_vec(),
                kill: c == mamori_soc::Containment::Kill,
            });
        }
        mamori_soc::Containment::Approve => {
            let audit = round.write()?.audit(
                "policy",
                "containment.awaiting_approval",
                &format!("agent:{agent}"),
                &format!("critical alert {alert}: {}", reasons.join("; ")),
            );
            soft(audit, "auditing a containment awaiting approval")?;
        }
        mamori_soc::Containment::None => {}
    }
    Ok(())
}

/// Puts an alert into its incident.
fn attach(state: &State, soc: &Soc, id: i64) -> Result<(), ServerError> {
    let attached = soft(
        state.attach_alert(id, &soc.policy),
        &format!("grouping alert {id} into an incident"),
    )?;
    if let Some(Some(a)) = attached
        && a.opened
    {
        tracing::info!(incident = a.incident, alert = id, "incident opened")
    }
    Ok(())
}

/// The SHA-256s an event names: its process's and its file's.
fn hashes_of(v: &Value) -> Vec<&str> {
    [
        &v["process"]["hash"]["sha256"],
        &v["file"]["hash"]["sha256"],
    ]
    .into_iter()
    .filter_map(Value::as_str)
    .collect()
}

/// Records an alert with its severity from the evidence; contains the host when Critical.
fn record(
    round: &mut Round<'_>,
    soc: &Soc,
    trees: &Trees,
    job: &Job,
    v: &Value,
    alert: NewAlert<'_>,
) -> Result<(), ServerError> {
    let state = round.write()?;
    let owned = tree_of(v);
    let tree = [owned[0].as_str(), owned[1].as_str()];
    let hashes = hashes_of(v);
    let mut rules: HashSet<String> = state
        .alerts_on_tree(&job.agent, &tree)
        .unwrap_or_default()
        .into_iter()
        .map(|a| a.rule_id)
        .collect();
    rules.insert(alert.rule_id.to_string());
    let facts = mamori_soc::Facts {
        rule_level: alert.level.to_string(),
        prevented: text(v, &["event", "action"]) == Some("exec-prevented"),
        external: destinations(trees, &job.agent, &tree),
        known_bad_hash: state.blocklisted(&job.tenant, &hashes).unwrap_or(None),
        rules_on_tree: rules.len(),
    };
    let a = soc.policy.assess(&job.tenant, &facts);
    let alert = NewAlert {
        severity: a.severity.as_str(),
        severity_reasons: &a.reasons,
        ..alert
    };
    let Some(id) = soft(state.record_alert(&alert), "recording an alert")? else {
        return Ok(());
    };
    attach(state, soc, id)?;
    if a.severity == mamori_soc::Severity::Critical {
        contain(
            round,
            soc,
            &job.tenant,
            &job.agent,
            alert.host,
            id,
            &a.reasons,
        )?;
    }
    Ok(())
}

/// A process tree talked to an external address: its open alerts are assessed again.
fn reassess(
    round: &mut Round<'_>,
    soc: &Soc,
    trees: &Trees,
    job: &Job,
    tree: &[&str],
) -> Result<(), ServerError> {
    let state = round.state;
    let open = state.alerts_on_tree(&job.agent, tree).unwrap_or_default();
    let rules: HashSet<&str> = open.iter().map(|a| a.rule_id.as_str()).collect();
    for crate::state::TreeAlert {
        id,
        level,
        severity,
        host,
        ..
    } in &open
    {
        if severity == "critical" {
            continue;
        }
        let prevented = state
            .alert(*id)
            .ok()
            .flatten()
            .is_some_and(|a| a.evidence[0]["event"]["action"] == "exec-prevented");
        let facts = mamori_soc::Facts {
            rule_level: level.clone(),
            prevented,
            external: destinations(trees, &job.agent, tree),
            known_bad_hash: None,
            rules_on_tree: rules.len(),
        };
        let a = soc.policy.assess(&job.tenant, &facts);
        if a.severity == mamori_soc::Severity::Critical
            && soft(
                round.write()?.raise_severity(*id, "critical", &a.reasons),
                "raising an alert's severity",
            )?
            .unwrap_or(false)
        {
            attach(state, soc, *id)?;
            contain(round, soc, &job.tenant, &job.agent, host, *id, &a.reasons)?;
        }
    }
    Ok(())
}

/// Events that fed correlations, kept to be the evidence of correlation alerts.
const FED_KEEP: usize = 4096;

/// The longest wait between two attempts at a round the state database refused.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What detection works with whatever the rules.
struct Context<'c> {
    disabled: &'c Disabled,
    state: &'c State,
    soc: &'c Soc,
    feed: Option<&'c crate::compact::Feed>,
    /// Threads a round's scan may be split over (this one and its helpers).
    scan_threads: usize,
}

/// Scans with `rules` until the queue closes (`None`) or brings new rules; hands the rows
/// it builds to the context's feed. Helper threads for the scan live as long as the rules.
fn run(
    rules: &RuleSet,
    cx: &Context<'_>,
    trees: &mut Trees,
    saved: &mut Saved,
    rx: &Receiver<Msg>,
) -> Option<Arc<RuleSet>> {
    std::thread::scope(|scope| {
        let rows = cx.feed.is_some();
        let mut pool = parts::Pool::start(scope, rules, cx.soc, rows, cx.scan_threads);
        let mut d = Detector {
            rules,
            disabled: cx.disabled,
            soc: cx.soc,
            scanner: rules.scanner(),
            scan: parts::Scan::new(rules, cx.soc, rows),
            correlators: HashMap::new(),
            fed: VecDeque::new(),
            next_id: 0,
            fired: Vec::new(),
            hits: Vec::new(),
            facts: Facts::default(),
        };
        let state = cx.state;
        loop {
            let msg = match rx.recv_timeout(PROGRESS_EVERY) {
                Ok(msg) => msg,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    // Idle: the last rounds' position is recorded, so that a restart does
                    // not read them again.
                    saved.catch_up(state);
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
            };
            let (jobs, through) = match msg {
                Msg::Events {
                    jobs,
                    through,
                    durable_at,
                } => {
                    saved.progress.set_working_on(Some(durable_at));
                    saved.lag.note(durable_at.elapsed().unwrap_or_default());
                    (Arc::<[Job]>::from(jobs), through)
                }
                Msg::Rules(next) => return Some(next),
            };
            // A round the state database refused (locked past the busy timeout, disk full)
            // is rolled back whole and detected again, until it is recorded: its alerts are
            // never lost, nor recorded twice. Meanwhile the queue fills and ingest waits.
            let mut wait = Duration::from_millis(100);
            for attempt in 1u32.. {
                let mut round = Round::new(state);
                let done = d
                    .round(&mut round, trees, &jobs, &mut pool)
                    .and_then(|parts| {
                        round.finish(cx.soc, saved, through)?;
                        Ok(parts)
                    });
                match done {
                    Ok(parts) => {
                        // The compactor is given the rows of recorded rounds only, in order.
                        if let Some(feed) = cx.feed {
                            for (first, last, built) in parts.into_iter().filter_map(|p| p.rows) {
                                feed.push(first, last, built);
                            }
                        }
                        if attempt > 1 {
                            saved.progress.set_failing(None);
                            tracing::info!(attempt, "the refused round is recorded");
                        }
                        saved.progress.set_working_on(None);
                        break;
                    }
                    Err(e) => {
                        round.abandon();
                        saved.progress.set_failing(Some(e.to_string()));
                        // The failed attempt fed the correlations: their windows start again
                        // (as when rules change) rather than count its events twice.
                        d.correlators.clear();
                        d.fed.clear();
                        tracing::error!(
                            attempt,
                            retry_in_ms = wait.as_millis() as u64,
                            "detecting a round of events: {e}; its writes were rolled back \
                             and the round will be retried"
                        );
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                }
            }
        }
    })
}

/// Detection's working state between events and rounds.
struct Detector<'r> {
    rules: &'r RuleSet,
    disabled: &'r Disabled,
    soc: &'r Soc,
    /// For the events [`parts::Scan`] leaves to the detector, read again in order.
    scanner: mamori_sigma::Scanner<'r>,
    /// This thread's share of each round's scan.
    scan: parts::Scan<'r>,
    correlators: HashMap<String, Correlator<'r>>,
    fed: VecDeque<(u64, mamori_wire::Bytes)>,
    next_id: u64,
    fired: Vec<mamori_sigma::CorrelationMatch>,
    hits: Vec<usize>,
    facts: Facts,
}

/// The store's rows of one round, built from detection's walk of each event (see
/// `compact::Feed`): by tenant, with each row's log position.
struct StoreRows {
    fields: mamori_columnar::Fields,
    tenants: Vec<(String, mamori_columnar::RowBuilder, Vec<u64>)>,
    received_us: i64,
}

impl StoreRows {
    fn new() -> Self {
        StoreRows {
            fields: mamori_columnar::Fields::default(),
            tenants: Vec::new(),
            received_us: 0,
        }
    }

    /// Starts a round (again, after a failed attempt).
    fn begin(&mut self, jobs: &[Job]) {
        self.tenants.clear();
        self.received_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        // Each tenant's builder sized for its events: Arrow's buffers do not grow in place.
        let mut sizes: Vec<(&str, usize, usize)> = Vec::new();
        for j in jobs {
            let bytes = j.events.iter().map(|e| e.len()).sum::<usize>();
            match sizes.iter_mut().find(|(t, _, _)| *t == &*j.tenant) {
                Some((_, n, b)) => (*n, *b) = (*n + j.events.len(), *b + bytes),
                None => sizes.push((&*j.tenant, j.events.len(), bytes)),
            }
        }
        self.tenants
            .extend(sizes.into_iter().map(|(tenant, events, bytes)| {
                (
                    tenant.to_string(),
                    mamori_columnar::RowBuilder::with_capacity(events, bytes),
                    Vec::with_capacity(events),
                )
            }));
    }

    /// Where the rows of `job`'s tenant are built: looked up once per job, not per event.
    fn tenant_of(&self, job: &Job) -> Option<usize> {
        self.tenants
            .iter()
            .position(|(t, _, _)| t.as_str() == &*job.tenant)
    }

    /// Adds the row of `job`'s event `i`, whose fields the walk noted (or not), to the
    /// rows of its tenant (`tenant`, from [`StoreRows::tenant_of`]).
    fn push(&mut self, tenant: usize, job: &Job, i: usize, raw: &[u8]) {
        let Some((_, b, seqs)) = self.tenants.get_mut(tenant) else {
            return;
        };
        let origin = mamori_columnar::Origin {
            tenant: &job.tenant,
            host_id: &job.agent,
            seq: job.first_seq + i as u64,
            received_us: self.received_us,
        };
        b.push_fields(origin, &self.fields, raw);
        seqs.push(job.first_log_seq + i as u64);
    }

    /// The rows of `jobs` for the compactor, with the first and last log position they
    /// cover, when the jobs cover consecutive positions (they do, but the compactor must
    /// never be told of a position it is not given).
    fn take(&mut self, jobs: &[Job]) -> Option<(u64, u64, Vec<mamori_columnar::Built>)> {
        let mut next = None;
        for j in jobs {
            if next.is_some_and(|n| n != j.first_log_seq) {
                tracing::debug!("a round with a gap in log positions: the compactor reads it");
                self.tenants.clear();
                return None;
            }
            next = Some(j.first_log_seq + j.events.len() as u64);
        }
        let (Some(first), Some(end)) = (jobs.first(), next) else {
            self.tenants.clear();
            return None;
        };
        // Every position told must have its row: the store would move past a missing one.
        let rows: usize = self.tenants.iter().map(|(_, _, seqs)| seqs.len()).sum();
        if rows as u64 != end - first.first_log_seq {
            tracing::debug!("a round without a row for each event: the compactor reads it");
            self.tenants.clear();
            return None;
        }
        let built = self
            .tenants
            .drain(..)
            .map(|(tenant, mut b, log_seqs)| mamori_columnar::Built {
                tenant,
                log_seqs,
                batch: b.finish(),
            })
            .collect();
        Some((first.first_log_seq, end - 1, built))
    }
}

impl<'r> Detector<'r> {
    /// Detects a round's events, writing their alerts into the round's batch: scanned in
    /// parts (here and on the pool's helpers), then what the scan left to the detector in
    /// log order. Returns the parts, with the store's rows of each.
    fn round(
        &mut self,
        round: &mut Round<'_>,
        trees: &mut Trees,
        jobs: &Arc<[Job]>,
        pool: &mut parts::Pool,
    ) -> Result<Vec<parts::Part>, ServerError> {
        let parts = pool.scan(&mut self.scan, jobs);
        for part in &parts {
            for p in &part.pending {
                let job = &jobs[p.job];
                match &p.after {
                    parts::After::Full => self.event(round, trees, job, &job.events[p.event])?,
                    parts::After::Connected { dest, tree } => {
                        connected(round, self.soc, trees, job, dest, &[&tree[0], &tree[1]])?
                    }
                }
            }
        }
        Ok(parts)
    }

    /// The rest of detecting an event that [`parts::Scan`] did not settle: read again, in
    /// log order, with the detector's state.
    fn event(
        &mut self,
        round: &mut Round<'_>,
        trees: &mut Trees,
        job: &Job,
        raw: &mamori_wire::Bytes,
    ) -> Result<(), ServerError> {
        let (rules, soc, hits, facts) = (self.rules, self.soc, &mut self.hits, &mut self.facts);
        hits.clear();
        facts.clear();
        // A sensor event (not a heartbeat) read in one pass has the hits a scan of its tree
        // would give; only a connection to an external address needs the tree besides, for
        // the fact it adds to its process tree. (What needs neither, or only the one pass's
        // connection facts, `parts::Scan` settled already.)
        let walked = self
            .scanner
            .scan_ecs_json_with(raw, hits, &mut |name, leaf| facts.note(name, leaf))
            .is_ok();
        let scanned = walked && facts.sensor();
        let plain = scanned && facts.external(soc, &job.tenant).is_none();
        if !scanned {
            hits.clear(); // read again from the tree below
        }
        let state = round.state;
        let Ok(value) = serde_json::from_slice::<Value>(raw) else {
            return Ok(());
        };
        // The sensor's events are ECS; uploads (Windows logs) are recognised by shape.
        let event = if text(&value, &["event", "module"]) == Some("mamori") {
            Event::with_shape(value, Shape::Ecs)
        } else {
            Event::new(value)
        };
        if !scanned && text(&event.data, &["event", "dataset"]) == Some("mamori.health") {
            return health(round.write()?, soc, job, &event.data, raw);
        }
        if !plain {
            // Connections to external addresses, by process and parent: a fact for severity
            // (alerts already open on that tree are assessed again).
            if let Some(dest) = external_destination(soc, &job.tenant, &event.data) {
                let owned = tree_of(&event.data);
                let tree = [owned[0].as_str(), owned[1].as_str()];
                connected(round, soc, trees, job, &dest, &tree)?;
            }
        }
        if !scanned {
            self.scanner.scan(&event, hits);
        }
        if hits.is_empty() {
            return Ok(());
        }
        // Windows events are read through their Sigma field names.
        let view = flat_view(&event.data);
        let v: &Value = &view;
        // Files on the tenant's allowlist are never flagged.
        let hashes = hashes_of(v);
        if state.allowlisted(&job.tenant, &hashes).unwrap_or(false) {
            return Ok(());
        }
        for &h in hits.iter() {
            if !rules.feeds_correlation(h) {
                continue;
            }
            self.next_id += 1;
            let input = CorrelationInput {
                rule: h,
                time_ms: event.timestamp().map(|t| t.timestamp_millis()).unwrap_or(0),
                id: self.next_id,
                fields: rules
                    .correlation_fields(h)
                    .iter()
                    .map(|f| {
                        let value = self.scanner.value(f).unwrap_or_default();
                        (f.clone(), value.to_string())
                    })
                    .collect(),
            };
            self.fed.push_back((self.next_id, raw.clone()));
            if self.fed.len() > FED_KEEP {
                self.fed.pop_front();
            }
            self.fired.clear();
            self.correlators
                .entry(job.tenant.to_string())
                .or_insert_with(|| Correlator::new(rules))
                .push(&input, &mut self.fired);
            for m in &self.fired {
                let meta = &rules.rules()[m.rule].meta;
                if is_disabled(self.disabled, meta) {
                    continue;
                }
                let group: Vec<String> = m.group.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let evidence: Vec<Value> = m
                    .ids
                    .iter()
                    .filter_map(|id| self.fed.iter().find(|(i, _)| i == id))
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
                    ..alert_of(job, v, meta, &evidence, "")
                };
                record(round, soc, trees, job, v, alert)?;
            }
        }
        let entity = alert_entity(v);
        for &h in hits.iter() {
            let info = &rules.rules()[h];
            if !info.reported || is_disabled(self.disabled, &info.meta) {
                continue; // feeds a correlation only, or switched off
            }
            let alert = alert_of(job, v, &info.meta, raw, &entity);
            let d = crate::tuning::Detection {
                rule_id: alert.rule_id,
                host: alert.host,
                process: alert.process_executable,
                command_line: alert.command_line,
                hashes: &hashes,
                user: alert.user,
                group: soc.policy.group_of(&job.tenant, alert.host),
            };
            // Counts a hit on the suppression that matches, if any: a write.
            let suppressed = round.write()?.suppressed(&job.tenant, &d);
            if soft(suppressed, "checking suppressions")?
                .flatten()
                .is_some()
            {
                continue; // tuned away (counted on the suppression)
            }
            record(round, soc, trees, job, v, alert)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The delay counts from when the round detection works on was durable, is zero while
    /// detection waits for events, and is unknown once the detection thread has ended.
    #[test]
    fn delay_counts_from_when_the_round_in_hand_was_durable() {
        let p = Progress::new(7);
        assert_eq!(p.delay(), Some(Duration::ZERO), "idle");
        p.set_working_on(Some(SystemTime::now() - Duration::from_secs(3)));
        let d = p.delay().unwrap();
        assert!(
            d >= Duration::from_secs(3) && d < Duration::from_secs(60),
            "{d:?}"
        );
        // A clock before the epoch still reads as waiting, not as idle.
        p.set_working_on(Some(SystemTime::UNIX_EPOCH));
        assert!(p.delay().unwrap() > Duration::from_secs(3600));
        p.set_working_on(None);
        assert_eq!(p.delay(), Some(Duration::ZERO), "done");
        drop(Gone(p.clone()));
        assert_eq!(p.delay(), None, "the thread has ended");
    }

    /// Within a round, an error the database may not give later aborts the round (to be
    /// retried); any other skips its write.
    #[test]
    fn only_errors_that_may_pass_abort_a_round() {
        let busy = || ServerError::StateUnavailable("database is locked".into());
        let broken = || ServerError::State("CHECK constraint failed".into());
        assert!(soft(Err::<(), _>(busy()), "w").is_err());
        assert!(matches!(soft(Err::<(), _>(broken()), "w"), Ok(None)));
        assert!(matches!(soft(Ok(7), "w"), Ok(Some(7))));
    }

    /// A process still running its parent's program (a fork, or the exit of a subshell that
    /// executed nothing) is alerted on as its parent; any other as itself.
    #[test]
    fn a_fork_is_alerted_on_as_its_parent() {
        let sh = r#"{"entity_id":"p","executable":"/bin/sh","command_line":"sh -c x | y"}"#;
        let orphan = r#"{"executable":"/bin/sh","command_line":"sh -c x | y"}"#;
        let blank = r#"{"entity_id":"p","executable":"/bin/sh","command_line":""}"#;
        // (action, executable, command line, parent, the alert's process)
        let cases = [
            ("fork", "/bin/sh", "sh -c x | y", sh, "p"),
            ("exit", "/bin/sh", "sh -c x | y", sh, "p"),
            ("exec", "/usr/bin/y", "y", sh, "c"),
            ("exit", "/bin/bash", "sh -c x | y", sh, "c"),
            // Without a parent entity, or a command line, the event's own process.
            ("fork", "/bin/sh", "sh -c x | y", orphan, "c"),
            ("exit", "/bin/sh", "", blank, "c"),
        ];
        for (action, exe, cmd, parent, want) in cases {
            let v = serde_json::json!({"event": {"action": action}, "process": {
                "entity_id": "c", "executable": exe, "command_line": cmd,
                "parent": serde_json::from_str::<Value>(parent).unwrap()}});
            assert_eq!(alert_entity(&v), want, "{v}");
        }
    }

    /// What a connection adds to its process tree, read in one pass ([`Facts`]) and from the
    /// tree, on events that vary each field the two read.
    #[test]
    fn a_connection_reads_the_same_in_one_pass_as_from_the_tree() {
        let soc = Soc {
            policy: Arc::new(mamori_soc::Policy::default()),
            contain: std::sync::mpsc::channel().0,
        };
        let docs = [
            r#"{"event":{"category":["network"],"module":"mamori"},"destination":{"ip":"203.0.113.9","port":443},"process":{"entity_id":"boot:5:1","parent":{"entity_id":"boot:4:1"}}}"#,
            r#"{"event":{"category":"network","module":"mamori"},"destination":{"ip":"2001:db8::1","port":53},"process":{"entity_id":"a\"b","parent":{"entity_id":"c\u0041"}}}"#,
            r#"{"event":{"category":["network"]},"destination":{"ip":"198.51.100.7"},"process":{"entity_id":"boot:5:1"}}"#,
            r#"{"event":{"category":["network"]},"destination":{"ip":"198.51.100.7","port":"443"},"process":{"entity_id":7,"parent":{"entity_id":""}}}"#,
            r#"{"event":{"category":["network"]},"destination":{"ip":"198.51.100.7","port":44.5},"process":{"parent":{"entity_id":"p"}}}"#,
            r#"{"event":{"category":["network"]},"destination":{"ip":"198.51.100.7","port":-1}}"#,
            r#"{"event":{"category":["network"]},"destination":{"ip":"198.51.100.7","port":[443]},"process":{"entity_id":["x"]}}"#,
            r#"{"event":{"category":["network"]},"destination":{"ip":"198.51.100.7"},"process":{"entity_id":""},"ProcessGuid":"{g}"}"#,
            r#"{"event":{"category":["network"]},"destination":{"ip":"198.51.100.7"},"NewProcessId":"0x10","ProcessId":4,"Computer":"pc"}"#,
            r#"{"event":{"category":["network"]},"destination":{"ip":"10.1.2.3","port":443},"process":{"entity_id":"boot:5:1"}}"#,
            r#"{"event":{"category":["process"]},"destination":{"ip":"203.0.113.9","port":443}}"#,
            r#"{"event":{"category":["network"]},"destination":{"ip":"not an address"}}"#,
            r#"{"event":{"category":["network"]},"destination":{"ip":"203.0.113.\u0039"}}"#,
        ];
        let mut scratch = mamori_model::walk::Scratch::default();
        let mut fast_paths = 0;
        for doc in docs {
            let mut facts = Facts::default();
            mamori_model::walk::walk(doc.as_bytes(), &mut scratch, &mut |name, leaf| {
                facts.note(name, &leaf);
                mamori_model::walk::Next::Go
            })
            .unwrap();
            let v: Value = serde_json::from_str(doc).unwrap();
            let from_tree = external_destination(&soc, "t", &v);
            assert_eq!(
                facts.external(&soc, "t").is_some(),
                from_tree.is_some(),
                "{doc}"
            );
            if let Some((dest, tree)) = facts
                .external(&soc, "t")
                .and_then(|ip| facts.connection(ip))
            {
                fast_paths += 1;
                assert_eq!(Some(dest), from_tree, "{doc}");
                assert_eq!(tree.map(str::to_string), tree_of(&v), "{doc}");
            }
        }
        // Every external connection but the two with Windows process ids.
        assert_eq!(fast_paths, 8);
    }
}
