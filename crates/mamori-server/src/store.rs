//! The ingest log: every event an agent sends, durable before it is acknowledged.
//!
//! It is a spool (`mamori-spool`: checksummed, sequenced segment files that survive crashes)
//! whose records are `agent id, agent sequence number, event`. Per agent, the log remembers
//! the highest sequence number stored (its *watermark*): a batch is appended, synced to disk,
//! and only then does the watermark move and the agent get its acknowledgement; events at or
//! below the watermark are replays and are not stored again. Watermarks are rebuilt on
//! start from a checkpoint plus the records written after it, so a crash between the sync and
//! the acknowledgement loses nothing and duplicates nothing.
//!
//! The log is the write-ahead part of the store: the compactor (`crate::compact`) reads it
//! in order into the columnar store and then releases what it has stored ([`EventLog::ack`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mamori_spool::{Spool, SpoolConfig};
use serde::{Deserialize, Serialize};

use crate::ServerError;

/// One stored event, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Position in the log.
    pub log_seq: u64,
    /// The tenant it belongs to.
    pub tenant: Arc<str>,
    /// The agent that sent it.
    pub agent: Arc<str>,
    /// Its sequence number at the agent.
    pub seq: u64,
    /// The event (JSON).
    pub event: Vec<u8>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    /// Log records up to this sequence number are reflected in `watermarks`.
    covered: u64,
    watermarks: HashMap<String, u64>,
}

/// The log and its watermarks.
pub struct EventLog {
    spool: Spool,
    watermarks: HashMap<String, u64>,
    checkpoint: PathBuf,
    since_checkpoint: u64,
    last_log_seq: u64,
    /// A write or sync failed: nothing more is written until a restart.
    failed: bool,
    /// The record being written (reused).
    record: Vec<u8>,
    /// Syncs done (how well group commit groups).
    pub syncs: u64,
    /// The position the last sync reached: readers must not go past it (what is beyond may
    /// still be lost, and then sent again by its agent).
    synced: u64,
    /// The position released last (by this process).
    released: u64,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Events stored.
    pub stored: u64,
    /// Events skipped as replays.
    pub duplicates: u64,
    /// Sequence numbers missing between the watermark and this batch (lost at the agent,
    /// e.g. evicted from a full spool).
    pub gap: u64,
    /// The agent's watermark after the append: acknowledge through this once durable.
    pub durable_through: u64,
    /// The log position of the last record written: durable once a sync reaches it.
    pub position: u64,
}

/// A batch for the log writer ([`Writer`]).
pub struct Append {
    /// The tenant it belongs to (shared: a stream sends every batch with the same).
    pub tenant: Arc<str>,
    /// The agent that sent it.
    pub agent: Arc<str>,
    /// The agent's sequence number of the first event; `None`: the numbers after its
    /// watermark (uploads, whose events carry no numbers of their own).
    pub first_seq: Option<u64>,
    /// The events (slices of the message they came in).
    pub events: Vec<mamori_wire::Bytes>,
}

/// Answered once a batch is durable (or could not be made so).
enum Done {
    /// The one waiting for this batch.
    Once(tokio::sync::oneshot::Sender<Result<Appended, String>>),
    /// An ingest stream, which reads how far its batches are durable when it acknowledges.
    Stream(Arc<Progress>),
}

impl From<tokio::sync::oneshot::Sender<Result<Appended, String>>> for Done {
    fn from(tx: tokio::sync::oneshot::Sender<Result<Appended, String>>) -> Done {
        Done::Once(tx)
    }
}

impl Done {
    fn send(self, result: Result<Appended, String>) {
        match self {
            Done::Once(tx) => {
                let _ = tx.send(result);
            }
            Done::Stream(p) => p.answer(result),
        }
    }
}

/// How far an ingest stream's batches are durable, published by the writer.
///
/// The stream hands batches over without waiting for each ([`Writer::submit`]) and reads
/// this when an acknowledgement is due: the writer wakes it only if it is waiting then, not
/// once per batch.
#[derive(Default)]
pub struct Progress {
    /// Batches answered.
    answered: std::sync::atomic::AtomicU64,
    /// The agent's watermark after the batches answered.
    through: std::sync::atomic::AtomicU64,
    /// The first batch that could not be made durable, and why.
    failed: std::sync::Mutex<Option<String>>,
    waiting: futures_util::task::AtomicWaker,
}

impl Progress {
    fn answer(&self, result: Result<Appended, String>) {
        use std::sync::atomic::Ordering;
        match result {
            Ok(a) => {
                self.through.fetch_max(a.durable_through, Ordering::AcqRel);
            }
            Err(e) => {
                if let Ok(mut failed) = self.failed.lock() {
                    failed.get_or_insert(e);
                }
            }
        }
        self.answered.fetch_add(1, Ordering::AcqRel);
        self.waiting.wake();
    }

    /// Waits until the first `n` batches submitted are answered: the agent's watermark
    /// after them, or why one of them could not be made durable.
    pub async fn durable(&self, n: u64) -> Result<u64, String> {
        use std::sync::atomic::Ordering;
        std::future::poll_fn(|cx| {
            if self.answered.load(Ordering::Acquire) < n {
                self.waiting.register(cx.waker());
                if self.answered.load(Ordering::Acquire) < n {
                    return std::task::Poll::Pending;
                }
            }
            let failed = match self.failed.lock() {
                Ok(f) => f.clone(),
                Err(_) => Some("lock poisoned".to_string()),
            };
            std::task::Poll::Ready(match failed {
                Some(e) => Err(e),
                None => Ok(self.through.load(Ordering::Acquire)),
            })
        })
        .await
    }
}

/// Batches queued for the writer at most (ingest waits when it is full).
const WRITER_QUEUE: usize = 1024;
/// Bytes of events queued for the writer or being appended, at most: ingest waits beyond
/// this. Agents draining their spools after an outage send batches of up to 2 MiB, and
/// [`WRITER_QUEUE`] of those would be 2 GiB; this keeps a reconnect storm's memory bounded.
/// A batch larger than the whole budget waits until nothing else is queued.
pub const WRITER_QUEUE_BYTES: usize = 64 << 20;
/// Events the writer appends before syncing, at most.
const WRITER_ROUND_EVENTS: usize = 64 * 1024;
/// Syncs start at least this far apart: under load, batches that arrive meanwhile share the
/// next one (a sync costs the kernel far more than appending a batch), at the price of
/// acknowledging up to this much later. An idle log syncs at once. At 1,000 agents (1,000
/// batches a second) 4 ms allowed up to 250 syncs a second and the writer thread took 6–7%
/// of a core; 20 ms allows 50 and it takes 3–4%, for ~10 ms more before an alert (BENCHMARKS).
const SYNC_SPACING: std::time::Duration = std::time::Duration::from_millis(20);

/// The log's one writer: a thread that appends every batch queued meanwhile, makes them
/// durable with one sync (group commit), hands what was new to detection, and only then
/// answers each batch. Batches wait in a bounded queue, so a slow disk or a slow detection
/// thread slows agents down instead of growing memory.
#[derive(Clone)]
pub struct Writer {
    queue: tokio::sync::mpsc::Sender<Queued>,
    /// Permits for [`WRITER_QUEUE_BYTES`] (or the budget given), one per byte of events.
    bytes: Arc<tokio::sync::Semaphore>,
    budget: usize,
    pace: Arc<Pace>,
}

/// A batch in the writer's queue, with the share of the byte budget it holds until the
/// writer has appended it.
struct Queued {
    append: Append,
    done: Done,
    bytes: tokio::sync::OwnedSemaphorePermit,
    /// When it was handed to the writer (before waiting for the budget).
    handed: std::time::Instant,
}

/// How the log writer keeps pace, as of its latest round (`GET /api/v1/status`).
#[derive(Debug, Default)]
pub struct Pace {
    /// The longest any batch of the round waited from being handed to the writer to being
    /// durable, in microseconds.
    wait_us: AtomicU64,
    /// The age of the round's oldest event (by its `@timestamp`: the agent's clock) when it
    /// was durable, in milliseconds; 0 when no event said.
    age_ms: AtomicU64,
}

impl Pace {
    /// The latest round's longest wait in the server (handed to the writer → durable) and
    /// its oldest event's age when durable (created on the endpoint → durable).
    pub fn latest(&self) -> (Duration, Duration) {
        (
            Duration::from_micros(self.wait_us.load(Ordering::Relaxed)),
            Duration::from_millis(self.age_ms.load(Ordering::Relaxed)),
        )
    }
}

/// When an event says it happened: its `@timestamp`, if it comes first (as in the
/// sensor's events; others are not searched for it).
fn event_time(event: &[u8]) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    let rest = event.strip_prefix(b"{\"@timestamp\":\"")?;
    let end = rest.iter().take(64).position(|&b| b == b'"')?;
    chrono::DateTime::parse_from_rfc3339(std::str::from_utf8(&rest[..end]).ok()?).ok()
}

const STOPPED: &str = "the event log writer has stopped";

impl Writer {
    /// Starts the writer thread for `log`; durable events go to `detect` (if any).
    pub fn spawn(
        log: Arc<std::sync::Mutex<EventLog>>,
        detect: Option<std::sync::mpsc::SyncSender<crate::detect::Msg>>,
    ) -> Result<Writer, ServerError> {
        Writer::spawn_with_budget(log, detect, WRITER_QUEUE_BYTES)
    }

    /// [`Writer::spawn`] with a byte budget of its own instead of [`WRITER_QUEUE_BYTES`].
    pub fn spawn_with_budget(
        log: Arc<std::sync::Mutex<EventLog>>,
        detect: Option<std::sync::mpsc::SyncSender<crate::detect::Msg>>,
        budget: usize,
    ) -> Result<Writer, ServerError> {
        let (queue, rx) = tokio::sync::mpsc::channel(WRITER_QUEUE);
        let pace = Arc::new(Pace::default());
        let paced = pace.clone();
        std::thread::Builder::new()
            .name("mamori-ingest".into())
            .spawn(move || write_loop(&log, detect.as_ref(), rx, &paced))
            .map_err(|e| ServerError::Store(format!("starting the log writer: {e}")))?;
        let budget = budget.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Ok(Writer {
            queue,
            bytes: Arc::new(tokio::sync::Semaphore::new(budget)),
            budget,
            pace,
        })
    }

    /// How the writer keeps pace (see [`Pace`]).
    pub fn pace(&self) -> &Pace {
        &self.pace
    }

    /// The permits a batch takes: its events' bytes, at most the whole budget.
    fn cost(&self, a: &Append) -> u32 {
        let bytes = a.events.iter().map(|e| e.len()).sum::<usize>().max(1);
        bytes.min(self.budget).min(u32::MAX as usize) as u32
    }

    /// Appends a batch; returns once it is durable (from async code).
    pub async fn append(&self, a: Append) -> Result<Appended, String> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.enqueue(a, done.into()).await?;
        answer.await.map_err(|_| STOPPED.to_string())?
    }

    /// Queues a batch of an ingest stream without waiting for it: `progress` says when it
    /// is durable. Waits only while the queue is full (in batches or in bytes).
    pub async fn submit(&self, a: Append, progress: &Arc<Progress>) -> Result<(), String> {
        self.enqueue(a, Done::Stream(progress.clone())).await
    }

    async fn enqueue(&self, append: Append, done: Done) -> Result<(), String> {
        let handed = std::time::Instant::now();
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(self.cost(&append))
            .await
            .map_err(|_| STOPPED.to_string())?;
        self.queue
            .send(Queued {
                append,
                done,
                bytes: permit,
                handed,
            })
            .await
            .map_err(|_| STOPPED.to_string())
    }

    /// Appends a batch; returns once it is durable (from blocking code).
    pub fn append_blocking(&self, a: Append) -> Result<Appended, String> {
        let (done, answer) = tokio::sync::oneshot::channel();
        futures_executor::block_on(self.enqueue(a, done.into()))?;
        answer.blocking_recv().map_err(|_| STOPPED.to_string())?
    }
}

/// Records how long the round's batches waited in the server, and how old its oldest event
/// was, now that they are durable.
fn note_pace(
    pace: &Pace,
    round: &[(Append, Done, Result<Appended, String>)],
    handed: &[std::time::Instant],
) {
    let now = chrono::Utc::now();
    let (mut wait, mut age) = (Duration::ZERO, 0i64);
    for ((a, _, result), at) in round.iter().zip(handed) {
        if result.is_err() {
            continue;
        }
        wait = wait.max(at.elapsed());
        if let Some(t) = a.events.first().and_then(|e| event_time(e)) {
            age = age.max((now - t.with_timezone(&chrono::Utc)).num_milliseconds());
        }
    }
    pace.wait_us
        .store(wait.as_micros() as u64, Ordering::Relaxed);
    pace.age_ms.store(age.max(0) as u64, Ordering::Relaxed);
}

fn write_loop(
    log: &std::sync::Mutex<EventLog>,
    detect: Option<&std::sync::mpsc::SyncSender<crate::detect::Msg>>,
    mut rx: tokio::sync::mpsc::Receiver<Queued>,
    pace: &Pace,
) {
    // Each batch keeps its share of the byte budget until it has been appended and handed
    // on (the detection queue is bounded on its own).
    let mut round: Vec<(Append, Done, Result<Appended, String>)> = Vec::new();
    let mut permits = Vec::new();
    let mut handed = Vec::new();
    let mut last_sync = std::time::Instant::now() - SYNC_SPACING;
    let mut through = 0;
    while let Some(first) = rx.blocking_recv() {
        let wait = SYNC_SPACING.saturating_sub(last_sync.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        // Everything queued meanwhile joins this round.
        let mut events = first.append.events.len();
        let mut take = |q: Queued| {
            round.push((q.append, q.done, Err(String::new())));
            permits.push(q.bytes);
            handed.push(q.handed);
        };
        take(first);
        while events < WRITER_ROUND_EVENTS
            && let Ok(next) = rx.try_recv()
        {
            events += next.append.events.len();
            take(next);
        }
        match log.lock() {
            Ok(mut log) => {
                for (a, _, result) in round.iter_mut() {
                    let first = a.first_seq.unwrap_or_else(|| log.watermark(&a.agent) + 1);
                    *result = log
                        .append(&a.tenant, &a.agent, first, &a.events)
                        .map_err(|e| e.to_string());
                    // Agents skip reserved numbers after a restart; real losses are counted
                    // by the agent (spool eviction) and reported in its health.
                    if let Ok(done) = result
                        && done.gap > 0
                    {
                        tracing::debug!(agent = %a.agent, skipped = done.gap, "sequence jump");
                    }
                }
                // Durable before acknowledged: one sync for the whole round.
                last_sync = std::time::Instant::now();
                if round.iter().any(|(_, _, r)| r.is_ok())
                    && let Err(e) = log.sync()
                {
                    for (_, _, result) in round.iter_mut() {
                        *result = Err(e.to_string());
                    }
                }
                through = log.synced();
            }
            Err(_) => {
                for (_, _, result) in round.iter_mut() {
                    *result = Err("event log lock poisoned".to_string());
                }
            }
        }
        note_pace(pace, &round, &handed);
        handed.clear();
        // Durable: detection gets what was new (a full queue makes the writer, and so
        // ingest, wait).
        if let Some(q) = detect {
            let jobs: Vec<crate::detect::Job> = round
                .iter_mut()
                .filter_map(|(a, _, r)| {
                    let done = r.as_ref().ok()?;
                    let stored = done.stored as usize;
                    // The stored events are the batch's last (replayed ones come first), at
                    // consecutive log positions.
                    (stored > 0).then(|| crate::detect::Job {
                        agent: a.agent.clone(),
                        tenant: a.tenant.clone(),
                        first_seq: done.durable_through + 1 - done.stored,
                        first_log_seq: done.position + 1 - done.stored,
                        events: a.events.split_off(a.events.len() - stored),
                    })
                })
                .collect();
            if !jobs.is_empty() {
                let _ = q.send(crate::detect::Msg::Events {
                    jobs,
                    through,
                    durable_at: std::time::SystemTime::now(),
                });
            }
        }
        for (_, done, result) in round.drain(..) {
            done.send(result);
        }
        permits.clear(); // their bytes may be queued again
    }
}

/// A record: `u16 len, agent, u16 len, tenant, u64 seq, event` (little endian).
fn encode(tenant: &str, agent: &str, seq: u64, event: &[u8], r: &mut Vec<u8>) {
    r.clear();
    r.extend_from_slice(&(agent.len() as u16).to_le_bytes());
    r.extend_from_slice(agent.as_bytes());
    r.extend_from_slice(&(tenant.len() as u16).to_le_bytes());
    r.extend_from_slice(tenant.as_bytes());
    r.extend_from_slice(&seq.to_le_bytes());
    r.extend_from_slice(event);
}

/// A record's parts: (agent, tenant, seq, where the event starts).
fn decode(r: &[u8]) -> Option<(&str, &str, u64, usize)> {
    let text = |at: usize| -> Option<(&str, usize)> {
        let n = u16::from_le_bytes([*r.get(at)?, *r.get(at + 1)?]) as usize;
        let s = std::str::from_utf8(r.get(at + 2..at + 2 + n)?).ok()?;
        Some((s, at + 2 + n))
    };
    let (agent, at) = text(0)?;
    let (tenant, at) = text(at)?;
    let seq = u64::from_le_bytes(r.get(at..at + 8)?.try_into().ok()?);
    Some((agent, tenant, seq, at + 8))
}

/// The last agent and tenant names read, shared by the records that repeat them (most do:
/// records come in batches).
#[derive(Default)]
struct Names {
    agent: Option<Arc<str>>,
    tenant: Option<Arc<str>>,
}

impl Names {
    fn share(slot: &mut Option<Arc<str>>, name: &str) -> Arc<str> {
        match slot {
            Some(n) if &**n == name => n.clone(),
            _ => slot.insert(Arc::from(name)).clone(),
        }
    }
}

const CHECKPOINT_EVERY: u64 = 64;

impl EventLog {
    /// Opens the log in `dir`, recovering watermarks.
    pub fn open(dir: &Path, quota_bytes: u64) -> Result<EventLog, ServerError> {
        let store = |e: mamori_spool::SpoolError| ServerError::Store(e.to_string());
        let (mut spool, recovery) = Spool::open(
            dir.join("log"),
            SpoolConfig {
                quota_bytes,
                ..SpoolConfig::default()
            },
        )
        .map_err(store)?;
        if recovery.corrupted_records > 0 || recovery.truncated_tail_bytes > 0 {
            tracing::warn!(
                corrupted = recovery.corrupted_records,
                torn_tail_bytes = recovery.truncated_tail_bytes,
                "event log damaged on disk: damaged records skipped and counted"
            );
        }
        let checkpoint = dir.join("watermarks.json");
        let cp: Checkpoint = match std::fs::read(&checkpoint) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| ServerError::Store(format!("{}: {e}", checkpoint.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Checkpoint::default(),
            Err(e) => return Err(ServerError::Store(format!("{}: {e}", checkpoint.display()))),
        };
        let mut watermarks = cp.watermarks;
        let mut last = cp.covered;
        // Replay what was written after the checkpoint.
        let mut from = cp.covered + 1;
        loop {
            let recs = spool.read(from, 4096).map_err(store)?;
            let Some(&(tail, _)) = recs.last() else {
                break;
            };
            for (log_seq, r) in &recs {
                if let Some((agent, _, seq, _)) = decode(r) {
                    let w = watermarks.entry(agent.to_string()).or_insert(0);
                    *w = (*w).max(seq);
                }
                last = *log_seq;
            }
            from = tail + 1;
        }
        let mut log = EventLog {
            spool,
            watermarks,
            checkpoint,
            since_checkpoint: 0,
            last_log_seq: last,
            failed: false,
            record: Vec::new(),
            syncs: 0,
            synced: last,
            released: 0,
        };
        log.write_checkpoint()?;
        Ok(log)
    }

    fn write_checkpoint(&mut self) -> Result<(), ServerError> {
        let cp = Checkpoint {
            covered: self.last_log_seq,
            watermarks: self.watermarks.clone(),
        };
        let tmp = self.checkpoint.with_extension("tmp");
        let io = |e: std::io::Error| ServerError::Store(format!("{}: {e}", tmp.display()));
        let body = serde_json::to_vec(&cp).map_err(|e| ServerError::Store(e.to_string()))?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&body).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.checkpoint).map_err(io)?;
        self.since_checkpoint = 0;
        Ok(())
    }

    /// The highest sequence number stored for `agent`.
    pub fn watermark(&self, agent: &str) -> u64 {
        self.watermarks.get(agent).copied().unwrap_or(0)
    }

    /// Appends a batch (events numbered from `first_seq`), skipping replayed numbers, and
    /// moves the agent's watermark. Not durable yet: [`Appended::position`] is durable once
    /// [`EventLog::sync`] (or [`GroupCommit::wait`]) has covered it, and only then may the
    /// agent be acknowledged. After any storage error the log refuses further writes (the
    /// server must restart and recover from disk, never acknowledge what may be lost).
    pub fn append(
        &mut self,
        tenant: &str,
        agent: &str,
        first_seq: u64,
        events: &[impl AsRef<[u8]>],
    ) -> Result<Appended, ServerError> {
        if self.failed {
            return Err(ServerError::Store(
                "the event log failed earlier; restart the server".into(),
            ));
        }
        let w = self.watermark(agent);
        let mut out = Appended {
            stored: 0,
            duplicates: 0,
            gap: first_seq.saturating_sub(w + 1),
            durable_through: w,
            position: self.last_log_seq,
        };
        for (i, ev) in events.iter().enumerate() {
            let seq = first_seq + i as u64;
            if seq <= w {
                out.duplicates += 1;
                continue;
            }
            encode(tenant, agent, seq, ev.as_ref(), &mut self.record);
            match self.spool.append(&self.record) {
                Ok(pos) => self.last_log_seq = pos,
                Err(e) => {
                    self.failed = true;
                    return Err(ServerError::Store(e.to_string()));
                }
            }
            out.stored += 1;
            out.durable_through = seq;
        }
        out.position = self.last_log_seq;
        if out.stored > 0 {
            self.watermarks
                .insert(agent.to_string(), out.durable_through);
        }
        Ok(out)
    }

    /// The position the last sync reached.
    pub fn synced(&self) -> u64 {
        self.synced
    }

    /// Makes everything appended so far durable; returns the position it reached. Writes the
    /// watermark checkpoint now and then (it must only ever cover durable records).
    pub fn sync(&mut self) -> Result<u64, ServerError> {
        if self.failed {
            return Err(ServerError::Store(
                "the event log failed earlier; restart the server".into(),
            ));
        }
        if let Err(e) = self.spool.sync() {
            self.failed = true;
            return Err(ServerError::Store(e.to_string()));
        }
        self.syncs += 1;
        self.synced = self.last_log_seq;
        self.since_checkpoint += 1;
        if self.since_checkpoint >= CHECKPOINT_EVERY {
            self.write_checkpoint()?;
        }
        Ok(self.last_log_seq)
    }

    /// Reads durable events from log position `from` (for consumers and tests).
    pub fn read(&mut self, from: u64, max: usize) -> Result<Vec<Stored>, ServerError> {
        if from > self.synced {
            return Ok(Vec::new());
        }
        let recs = self
            .spool
            .read(from, max)
            .map_err(|e| ServerError::Store(e.to_string()))?;
        let synced = self.synced;
        let mut names = Names::default();
        Ok(recs
            .into_iter()
            .take_while(|(log_seq, _)| *log_seq <= synced)
            .filter_map(|(log_seq, mut r)| {
                let (agent, tenant, seq, at) = decode(&r)?;
                let agent = Names::share(&mut names.agent, agent);
                let tenant = Names::share(&mut names.tenant, tenant);
                r.drain(..at); // the event, in the record's own buffer
                Some(Stored {
                    log_seq,
                    tenant,
                    agent,
                    seq,
                    event: r,
                })
            })
            .collect())
    }

    /// Releases the log through `log_seq` (stored downstream): whole segments are deleted.
    /// Releasing no further than before does nothing.
    pub fn ack(&mut self, log_seq: u64) -> Result<(), ServerError> {
        if log_seq <= self.released {
            return Ok(());
        }
        // Watermarks are rebuilt from the records after the checkpoint, and acknowledged
        // records are not read again: the checkpoint must cover them first, and it may only
        // cover durable records.
        self.sync()?;
        self.write_checkpoint()?;
        self.spool
            .ack(log_seq)
            .map_err(|e| ServerError::Store(e.to_string()))?;
        self.released = log_seq;
        Ok(())
    }

    /// Syncs and writes the checkpoint (on shutdown).
    pub fn close(&mut self) -> Result<(), ServerError> {
        self.sync()?;
        self.write_checkpoint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mamori-log-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn evs(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{{\"n\":{i}}}").into_bytes())
            .collect()
    }

    #[test]
    fn replays_are_not_stored_twice_even_across_restarts() {
        let d = dir("replay");
        let mut log = EventLog::open(&d, 1 << 30).unwrap();
        let a = log.append("t", "a1", 1, &evs(3)).unwrap();
        assert_eq!((a.stored, a.durable_through, a.gap), (3, 3, 0));
        // The same batch again, and an overlapping one.
        let a = log.append("t", "a1", 1, &evs(3)).unwrap();
        assert_eq!((a.stored, a.duplicates, a.durable_through), (0, 3, 3));
        let a = log.append("t", "a1", 2, &evs(4)).unwrap();
        assert_eq!((a.stored, a.duplicates, a.durable_through), (2, 2, 5));
        // Another agent has its own numbers.
        assert_eq!(log.append("t", "a2", 1, &evs(1)).unwrap().stored, 1);
        // No checkpoint written since open: the watermarks come back from the records.
        log.sync().unwrap();
        drop(log);
        let mut log = EventLog::open(&d, 1 << 30).unwrap();
        assert_eq!((log.watermark("a1"), log.watermark("a2")), (5, 1));
        assert_eq!(log.append("t", "a1", 1, &evs(5)).unwrap().stored, 0);
        let a = log.append("t", "a1", 8, &evs(1)).unwrap();
        assert_eq!((a.gap, a.durable_through), (2, 8), "6 and 7 never arrived");
        // Readers see only synced records.
        assert_eq!(log.read(a.position, 10).unwrap().len(), 0);
        assert_eq!(log.sync().unwrap(), a.position);
        let all = log.read(1, 100).unwrap();
        let a1: Vec<u64> = all
            .iter()
            .filter(|s| &*s.agent == "a1")
            .map(|s| s.seq)
            .collect();
        assert_eq!(a1, vec![1, 2, 3, 4, 5, 8]);
        log.close().unwrap();
        let log = EventLog::open(&d, 1 << 30).unwrap();
        assert_eq!(log.watermark("a1"), 8);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn reads_give_back_each_event_exactly_with_its_origin() {
        let d = dir("read-exact");
        let mut log = EventLog::open(&d, 1 << 30).unwrap();
        // Events of many sizes, from two agents of two tenants, interleaved batch by batch.
        let mut want = Vec::new();
        for b in 0..40u64 {
            let (tenant, agent) = if b % 3 == 0 { ("t2", "b") } else { ("t1", "a") };
            let first = log.watermark(agent) + 1;
            let events: Vec<Vec<u8>> = (0..(b % 7 + 1))
                .map(|i| {
                    format!(
                        "{{\"b\":{b},\"pad\":\"{}\"}}",
                        "x".repeat((b * 37 + i * 101) as usize % 3000)
                    )
                    .into_bytes()
                })
                .collect();
            let a = log.append(tenant, agent, first, &events).unwrap();
            for (i, e) in events.into_iter().enumerate() {
                want.push((
                    a.position - a.stored + 1 + i as u64,
                    tenant,
                    agent,
                    first + i as u64,
                    e,
                ));
            }
        }
        log.sync().unwrap();
        // Read in pieces of every size from 1 to 9, each piece after the last.
        for step in 1..10 {
            let mut got = Vec::new();
            let mut from = 1;
            loop {
                let piece = log.read(from, step).unwrap();
                let Some(last) = piece.last() else { break };
                assert!(piece.len() <= step);
                from = last.log_seq + 1;
                got.extend(piece);
            }
            assert_eq!(got.len(), want.len(), "step {step}");
            for (g, (log_seq, tenant, agent, seq, event)) in got.iter().zip(&want) {
                assert_eq!(
                    (g.log_seq, &*g.tenant, &*g.agent, g.seq, &g.event[..]),
                    (*log_seq, *tenant, *agent, *seq, &event[..]),
                    "step {step}"
                );
            }
        }
        let _ = std::fs::remove_dir_all(d);
    }

    /// A batch as the writer's queue holds it (with a share of a budget of its own).
    fn queued(append: Append, done: Done) -> Queued {
        let budget = Arc::new(tokio::sync::Semaphore::new(1));
        Queued {
            append,
            done,
            bytes: budget.try_acquire_owned().unwrap(),
            handed: std::time::Instant::now(),
        }
    }

    fn batch(agent: &str, first_seq: Option<u64>, n: usize) -> Append {
        Append {
            tenant: "t".into(),
            agent: agent.into(),
            first_seq,
            events: evs(n).into_iter().map(Into::into).collect(),
        }
    }

    /// The writer's queue holds at most its budget of event bytes: past it, ingest waits
    /// (an agent's stream stops being read) instead of the server's memory growing.
    #[test]
    fn the_writer_queue_is_bounded_in_bytes() {
        let d = dir("budget");
        let log = Arc::new(std::sync::Mutex::new(EventLog::open(&d, 1 << 30).unwrap()));
        let writer = Writer::spawn_with_budget(log.clone(), None, 1000).unwrap();
        let sized = |agent: &str, bytes: usize| Append {
            tenant: "t".into(),
            agent: agent.into(),
            first_seq: Some(1),
            events: vec![
                format!("{{\"pad\":\"{}\"}}", "x".repeat(bytes - 10))
                    .into_bytes()
                    .into(),
            ],
        };
        assert_eq!(writer.cost(&sized("x", 300)), 300);
        // The log is held: the writer takes batches off the queue but cannot append them.
        let held = log.lock().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let progress = Arc::new(Progress::default());
        let wait = std::time::Duration::from_millis(300);
        for i in 0..3 {
            let a = sized(&format!("a{i}"), 300);
            let submitted = rt
                .block_on(async { tokio::time::timeout(wait, writer.submit(a, &progress)).await });
            assert_eq!(submitted, Ok(Ok(())), "batch {i} fits in the budget");
        }
        let a = sized("a3", 300);
        let fourth =
            rt.block_on(async { tokio::time::timeout(wait, writer.submit(a, &progress)).await });
        assert!(fourth.is_err(), "a fourth 300-byte batch waits: {fourth:?}");
        assert_eq!(
            progress.answered.load(std::sync::atomic::Ordering::Acquire),
            0
        );
        assert_eq!(writer.bytes.available_permits(), 100);
        // Once the log moves again, their bytes are given back and the fourth goes in.
        drop(held);
        rt.block_on(writer.submit(sized("a3", 300), &progress))
            .unwrap();
        assert_eq!(rt.block_on(progress.durable(4)), Ok(1));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while writer.bytes.available_permits() < 1000 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            writer.bytes.available_permits(),
            1000,
            "every byte given back"
        );
        // A batch larger than the whole budget still goes through, on its own.
        let a = writer.append_blocking(sized("big", 5000)).unwrap();
        assert_eq!(a.stored, 1);
        assert_eq!(writer.bytes.available_permits(), 1000);
        let _ = std::fs::remove_dir_all(d);
    }

    /// A stream that does not wait for each batch reads how far they are durable, and an
    /// append that failed is never reported as durable.
    #[test]
    fn a_stream_reads_how_far_its_batches_are_durable() {
        let d = dir("progress");
        let log = std::sync::Mutex::new(EventLog::open(&d, 1 << 30).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let progress = Arc::new(Progress::default());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.try_send(queued(
            batch("a0", Some(1), 3),
            Done::Stream(progress.clone()),
        ))
        .unwrap();
        tx.try_send(queued(
            batch("a0", Some(4), 2),
            Done::Stream(progress.clone()),
        ))
        .unwrap();
        drop(tx);
        write_loop(&log, None, rx, &Pace::default());
        assert_eq!(rt.block_on(progress.durable(2)), Ok(5));
        // Nothing answered a third batch: still waiting.
        let waiting = rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(50), progress.durable(3)).await
        });
        assert!(waiting.is_err(), "{waiting:?}");

        log.lock().unwrap().failed = true;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.try_send(queued(
            batch("a0", Some(6), 2),
            Done::Stream(progress.clone()),
        ))
        .unwrap();
        drop(tx);
        write_loop(&log, None, rx, &Pace::default());
        let failed = rt.block_on(progress.durable(3));
        assert!(failed.unwrap_err().contains("failed earlier"));
    }

    /// The writer notes how long its latest round's batches waited in the server and how old
    /// their oldest event was (by its `@timestamp`) once durable.
    #[test]
    fn the_writer_notes_its_pace() {
        let d = dir("pace");
        let log = std::sync::Mutex::new(EventLog::open(&d, 1 << 30).unwrap());
        let pace = Pace::default();
        let stamped = |ago: chrono::Duration| {
            let t = (chrono::Utc::now() - ago).to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            format!("{{\"@timestamp\":\"{t}\",\"event\":{{\"kind\":\"event\"}}}}")
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        for (agent, first) in [
            ("a", stamped(chrono::Duration::seconds(3))),
            ("b", "{}".into()),
        ] {
            let mut q = queued(
                Append {
                    tenant: "t".into(),
                    agent: agent.into(),
                    first_seq: Some(1),
                    events: vec![
                        first.into_bytes().into(),
                        stamped(chrono::Duration::zero()).into_bytes().into(),
                    ],
                },
                tokio::sync::oneshot::channel().0.into(),
            );
            q.handed -= Duration::from_millis(200);
            tx.try_send(q).unwrap();
        }
        drop(tx);
        write_loop(&log, None, rx, &pace);
        let (wait, age) = pace.latest();
        assert!(
            wait >= Duration::from_millis(200) && wait < Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(
            age >= Duration::from_secs(3) && age < Duration::from_secs(60),
            "{age:?}"
        );
        // Only a leading `@timestamp` in RFC 3339 counts.
        assert!(event_time(br#"{"@timestamp":"2026-12-08T01:02:03.5Z","a":1}"#).is_some());
        for no in [
            &br#"{"a":1,"@timestamp":"2026-12-08T01:02:03Z"}"#[..],
            br#"{"@timestamp":"yesterday"}"#,
            br#"{"@timestamp":"2026-12-08T01:02:03Z"#,
            b"",
        ] {
            assert!(event_time(no).is_none(), "{}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn batches_queued_together_share_one_sync() {
        let d = dir("round");
        let log = std::sync::Mutex::new(EventLog::open(&d, 1 << 30).unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut answers = Vec::new();
        for a in 0..8 {
            let (done, answer) = tokio::sync::oneshot::channel();
            tx.try_send(queued(batch(&format!("a{a}"), Some(1), 3), done.into()))
                .unwrap();
            answers.push(answer);
        }
        // The same batch again in the same round: acknowledged, stored once.
        let (done, again) = tokio::sync::oneshot::channel();
        tx.try_send(queued(batch("a0", Some(1), 3), done.into()))
            .unwrap();
        drop(tx);
        let (detect, detected) = std::sync::mpsc::sync_channel(16);
        write_loop(&log, Some(&detect), rx, &Pace::default());
        assert_eq!(log.lock().unwrap().syncs, 1, "one sync for nine batches");
        for answer in answers {
            let a = answer.blocking_recv().unwrap().unwrap();
            assert_eq!((a.stored, a.durable_through), (3, 3));
        }
        let a = again.blocking_recv().unwrap().unwrap();
        assert_eq!((a.stored, a.duplicates, a.durable_through), (0, 3, 3));
        // Detection got the round's new events in one message, none twice.
        let Ok(crate::detect::Msg::Events { jobs, through, .. }) = detected.try_recv() else {
            panic!("no detection job");
        };
        assert_eq!(jobs.len(), 8);
        assert_eq!(through, 24, "the log position they reach");
        assert!(jobs.iter().all(|j| j.events.len() == 3));
        assert!(detected.try_recv().is_err());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn the_writer_makes_every_batch_durable_before_answering() {
        let d = dir("writer");
        let log = Arc::new(std::sync::Mutex::new(EventLog::open(&d, 1 << 30).unwrap()));
        let (detect, detected) = std::sync::mpsc::sync_channel(1024);
        let writer = Writer::spawn(log.clone(), Some(detect)).unwrap();
        // Many writers at once.
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for b in 0..50u64 {
                        let a = writer
                            .append_blocking(batch(&format!("a{t}"), Some(b * 2 + 1), 2))
                            .unwrap();
                        assert_eq!((a.stored, a.durable_through), (2, b * 2 + 2));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // A replay is acknowledged but neither stored nor detected again; a batch without
        // numbers follows the watermark.
        let a = writer.append_blocking(batch("a0", Some(99), 2)).unwrap();
        assert_eq!((a.stored, a.duplicates, a.durable_through), (0, 2, 100));
        let a = writer.append_blocking(batch("a0", None, 3)).unwrap();
        assert_eq!((a.stored, a.durable_through), (3, 103));
        eprintln!("{} syncs for 402 batches", log.lock().unwrap().syncs);
        let mut seen = 0;
        while let Ok(crate::detect::Msg::Events { jobs, .. }) = detected.try_recv() {
            seen += jobs.iter().map(|j| j.events.len()).sum::<usize>();
        }
        assert_eq!(seen, 803);
        // Everything acknowledged is on disk: reopen without closing, once the writer has
        // let go of the log.
        drop(writer);
        while Arc::strong_count(&log) > 1 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(log);
        let mut log = EventLog::open(&d, 1 << 30).unwrap();
        assert_eq!(log.read(1, 10_000).unwrap().len(), 803);
        assert_eq!((log.watermark("a7"), log.watermark("a0")), (100, 103));
        let _ = std::fs::remove_dir_all(d);
    }
}
