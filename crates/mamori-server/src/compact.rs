//! The compactor: moves events from the ingest log into the columnar store, in log order,
//! then releases the log through what the store holds.
//!
//! It wakes every flush interval (or when asked to stop), reads what the log holds after
//! the store's position, writes it (one file per tenant), and acknowledges the log. Every
//! minute it applies retention and merges small files. A crash anywhere in between repeats
//! work but neither loses nor duplicates events (see `mamori_columnar`).
//!
//! When detection runs, it walks every event anyway: it builds the rows as it goes and
//! hands them over through a [`Feed`], and the compactor stores those instead of reading
//! the log and each event's JSON again. Where the feed has a gap (a restart, detection
//! behind the store, rows dropped to bound memory) the compactor reads the log as before;
//! the store skips rows it holds already, so either way each event is stored once.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use mamori_columnar::{Built, EventStore, Origin, Row};

use crate::store::EventLog;

/// Events read from the log per file at most.
const MAX_ROWS: usize = 65_536;
/// Events read per lock of the log (ingest waits while the log is read).
const CHUNK: usize = 8192;

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// What wakes the compactor before its interval is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Flush once more and return.
    Stop,
    /// The feed holds enough rows for a file: flush now.
    Flush,
}

/// Rows held in the feed beyond which the compactor is woken.
const FEED_WAKE_ROWS: usize = MAX_ROWS;
/// Rows held in the feed beyond which it is emptied (the compactor then reads those events
/// from the log): memory stays bounded when the compactor falls behind.
const FEED_MAX_ROWS: usize = 2 * MAX_ROWS;

/// Rows detection built, waiting for the compactor: they cover log positions `from..=to`,
/// every one of them.
#[derive(Default)]
pub struct Feed {
    pending: Mutex<Pending>,
    wake: Mutex<Option<Sender<Signal>>>,
}

#[derive(Default)]
struct Pending {
    built: Vec<Built>,
    from: u64,
    to: u64,
    rows: usize,
    /// The compactor was woken for what is held.
    woken: bool,
}

impl Feed {
    /// The first and last log position held and the rows for them.
    #[cfg(test)]
    pub(crate) fn held(&self) -> (u64, u64, usize) {
        let p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        (p.from, p.to, p.rows)
    }

    /// Where to send [`Signal::Flush`].
    pub fn wake_with(&self, tx: Sender<Signal>) {
        *self.wake.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// Adds rows for log positions `from..=to` (all of them). Rows that do not follow what
    /// is held replace it: the compactor reads the gap from the log.
    pub fn push(&self, from: u64, to: u64, built: Vec<Built>) {
        let rows: usize = built.iter().map(|b| b.log_seqs.len()).sum();
        if rows == 0 || to < from {
            return;
        }
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if p.built.is_empty() || from != p.to + 1 || p.rows + rows > FEED_MAX_ROWS {
            if !p.built.is_empty() {
                tracing::debug!(
                    held = p.rows,
                    "rows for the store dropped; the compactor reads them from the log"
                );
            }
            *p = Pending {
                from,
                ..Pending::default()
            };
        }
        p.built.extend(built);
        p.to = to;
        p.rows += rows;
        if p.rows >= FEED_WAKE_ROWS && !p.woken {
            p.woken = true;
            if let Some(tx) = &*self.wake.lock().unwrap_or_else(|p| p.into_inner()) {
                let _ = tx.send(Signal::Flush);
            }
        }
    }

    /// Takes what is held: the rows and the log positions they cover.
    fn take(&self) -> Option<(Vec<Built>, u64, u64)> {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let p = std::mem::take(&mut *p);
        (!p.built.is_empty()).then_some((p.built, p.from, p.to))
    }
}

/// Moves what the log holds after the store's position into the store; returns the number
/// of events stored. Rows from the `feed` are stored instead of reading the log where they
/// follow what the store holds.
pub fn flush(
    log: &Mutex<EventLog>,
    store: &dyn EventStore,
    detected: Option<&crate::detect::Progress>,
    feed: Option<&Feed>,
) -> Result<u64, String> {
    let mut stored = 0;
    // How far the log is read. While detection feeds rows and keeps up, only through what it
    // has passed: the rows it has not fed for those (dropped, a gap, a restart) come from
    // the log, the rest will come through the feed (reading them too would parse every
    // event twice). When it falls far behind (an alert storm, refused writes) or has
    // stopped, through the log's end: what is stored must not wait for it.
    let limit = match (feed, detected.and_then(|d| Some((d.delay()?, d.through())))) {
        (Some(_), Some((delay, through))) if delay < crate::detect::FAR_BEHIND => through,
        _ => u64::MAX,
    };
    if let Some((built, from, to)) = feed.and_then(Feed::take) {
        let position = store.position();
        if from <= position + 1 && to > position {
            let w = store
                .write_built(&built, to, now_us())
                .map_err(|e| e.to_string())?;
            stored = w.rows;
        }
        // A gap before them (or all stored already): the log has every event.
    }
    loop {
        let from = store.position() + 1;
        if from > limit {
            release(log, store, detected)?;
            return Ok(stored);
        }
        let mut recs = Vec::new();
        while recs.len() < MAX_ROWS {
            let chunk = log
                .lock()
                .map_err(|_| "event log lock poisoned".to_string())?
                .read(
                    from.max(
                        recs.last()
                            .map_or(0, |r: &crate::store::Stored| r.log_seq + 1),
                    ),
                    CHUNK,
                )
                .map_err(|e| e.to_string())?;
            let n = chunk.len();
            recs.extend(chunk.into_iter().take_while(|r| r.log_seq <= limit));
            if n < CHUNK || recs.last().is_some_and(|r| r.log_seq >= limit) {
                break;
            }
        }
        let Some(through) = recs.last().map(|r| r.log_seq) else {
            // Detection may have passed more since the last release.
            release(log, store, detected)?;
            return Ok(stored);
        };
        let received = now_us();
        let rows: Vec<Row<'_>> = recs
            .iter()
            .map(|r| Row {
                log_seq: r.log_seq,
                origin: Origin {
                    tenant: &r.tenant,
                    host_id: &r.agent,
                    seq: r.seq,
                    received_us: received,
                },
                event: &r.event,
            })
            .collect();
        let w = store
            .write(&rows, through, received)
            .map_err(|e| e.to_string())?;
        stored += w.rows;
        release(log, store, detected)?;
        if recs.len() < MAX_ROWS {
            return Ok(stored);
        }
    }
}

/// Releases the log through what the store holds and, when detection runs, what detection
/// has passed too: after a crash, detection reads the rest again.
fn release(
    log: &Mutex<EventLog>,
    store: &dyn EventStore,
    detected: Option<&crate::detect::Progress>,
) -> Result<(), String> {
    let stored = store.position();
    let through = detected.map_or(stored, |d| stored.min(d.through()));
    log.lock()
        .map_err(|_| "event log lock poisoned".to_string())?
        .ack(through)
        .map_err(|e| e.to_string())
}

/// Runs the compactor until `signals` says stop (or its senders are dropped); flushes once
/// more before returning.
pub fn run(shared: Arc<crate::service::Shared>, every: Duration, signals: Receiver<Signal>) {
    let (log, store) = (&shared.log, shared.events.as_ref());
    let mut last_maintenance = Instant::now() - Duration::from_secs(3600);
    loop {
        let stopping = match signals.recv_timeout(every) {
            Ok(Signal::Flush) | Err(RecvTimeoutError::Timeout) => false,
            Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => true,
        };
        let feed = shared.feed.as_deref();
        if let Err(e) = flush(log, store, shared.detected.as_ref(), feed) {
            tracing::error!("moving events into the columnar store: {e} (retrying)");
        }
        // Stopping: what detection has not built yet is read from the log.
        if stopping
            && feed.is_some()
            && let Err(e) = flush(log, store, shared.detected.as_ref(), None)
        {
            tracing::error!("moving events into the columnar store: {e}");
        }
        if last_maintenance.elapsed() >= Duration::from_secs(60) && !stopping {
            last_maintenance = Instant::now();
            match store.maintain(now_us()) {
                Ok(m) if m.expired_files + m.evicted_files + m.merges > 0 => tracing::info!(
                    expired = m.expired_files,
                    evicted = m.evicted_files,
                    freed_bytes = m.deleted_bytes,
                    merges = m.merges,
                    ms = last_maintenance.elapsed().as_millis() as u64,
                    "event store maintenance"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!("event store maintenance: {e}"),
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Progress;
    use crate::state::State;

    /// The rows of log positions `from..=to` (one tenant, agent `a1`, whose sequence
    /// numbers are the positions); rows from detection's noted fields are the same (tested
    /// in `mamori_columnar::schema`).
    fn built(events: &[Vec<u8>], from: u64, to: u64) -> Vec<Built> {
        let mut b = mamori_columnar::RowBuilder::new();
        for seq in from..=to {
            let origin = Origin {
                tenant: "t1",
                host_id: "a1",
                seq,
                received_us: 1,
            };
            b.push(origin, &events[seq as usize - 1]);
        }
        vec![Built {
            tenant: "t1".into(),
            log_seqs: (from..=to).collect(),
            batch: b.finish(),
        }]
    }

    #[test]
    fn rows_from_detection_are_stored_and_gaps_are_read_from_the_log() {
        let d = std::env::temp_dir().join(format!("mamori-feed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut log = EventLog::open(&d.join("events"), 1 << 30).unwrap();
        let events: Vec<Vec<u8>> = (1..=40)
            .map(|i| {
                format!(
                    r#"{{"@timestamp":"2026-11-26T10:00:00Z","event":{{"category":["process"]}},"process":{{"pid":{i},"command_line":"cmd {i}"}}}}"#
                )
                .into_bytes()
            })
            .collect();
        log.append("t1", "a1", 1, &events).unwrap();
        log.sync().unwrap();
        let store = mamori_columnar::ParquetStore::open(
            &d.join("columnar"),
            mamori_columnar::Retention::default(),
        )
        .unwrap();
        let state = State::open(&d.join("state.db")).unwrap();
        let detected = |through: u64, log: &Mutex<EventLog>| {
            state.set_detected_through(through).unwrap();
            Progress::load(&state, &log.lock().unwrap()).unwrap()
        };
        let log = Mutex::new(log);
        let feed = Feed::default();
        // 1..=10 from detection, which has passed them and keeps up: the other 30 events
        // are left for its feed, not read from the log.
        feed.push(1, 10, built(&events, 1, 10));
        let progress = detected(10, &log);
        assert_eq!(
            flush(&log, &store, Some(&progress), Some(&feed)).unwrap(),
            10
        );
        assert_eq!(store.position(), 10);
        assert_eq!(
            flush(&log, &store, Some(&progress), Some(&feed)).unwrap(),
            0
        );
        // 11..=15 never reach the feed; 16..=25 do (a gap): once detection has passed them
        // all, the log is read for them, through what detection has passed.
        feed.push(16, 25, built(&events, 16, 25));
        let progress = detected(30, &log);
        assert_eq!(
            flush(&log, &store, Some(&progress), Some(&feed)).unwrap(),
            20,
            "from the log"
        );
        assert_eq!(store.position(), 30);
        // Detection far behind (its round in hand durable 6 s ago): the rest of the log is
        // read without waiting for it.
        progress.set_working_on(Some(
            std::time::SystemTime::now() - std::time::Duration::from_secs(6),
        ));
        assert_eq!(
            flush(&log, &store, Some(&progress), Some(&feed)).unwrap(),
            10
        );
        assert_eq!(store.position(), 40);
        feed.push(20, 40, built(&events, 20, 40));
        let progress = detected(40, &log);
        assert_eq!(
            flush(&log, &store, Some(&progress), Some(&feed)).unwrap(),
            0,
            "stored already"
        );
        let t = store
            .query(
                &mamori_columnar::Scope::All,
                "SELECT count(*) AS n, count(DISTINCT process_pid) AS pids, \
                 count(DISTINCT seq) AS seqs FROM events WHERE process_command_line LIKE 'cmd %'",
                mamori_columnar::Limits::default(),
            )
            .unwrap()
            .to_json();
        let row = &t["rows"][0];
        assert_eq!(
            (&row["n"], &row["pids"], &row["seqs"]),
            (&40.into(), &40.into(), &40.into())
        );
        // Rows that do not follow what the feed holds replace it.
        feed.push(41, 42, built(&events, 1, 2));
        feed.push(50, 51, built(&events, 3, 4));
        let (_, from, to) = feed.take().unwrap();
        assert_eq!((from, to), (50, 51));
        assert!(feed.take().is_none());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn the_log_keeps_what_detection_has_not_passed() {
        let d = std::env::temp_dir().join(format!("mamori-compact-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut log = EventLog::open(&d.join("events"), 1 << 30).unwrap();
        let state = State::open(&d.join("state.db")).unwrap();
        let behind = Progress::load(&state, &log).unwrap();
        assert_eq!(behind.through(), 0, "an empty log on the first start");
        let events: Vec<Vec<u8>> = (0..10)
            .map(|i| format!("{{\"n\":{i}}}").into_bytes())
            .collect();
        log.append("t1", "a1", 1, &events).unwrap();
        log.sync().unwrap();
        let store = mamori_columnar::ParquetStore::open(
            &d.join("columnar"),
            mamori_columnar::Retention {
                max_age_days: 45,
                max_bytes: 1 << 30,
            },
        )
        .unwrap();
        let log = Mutex::new(log);
        let unread = |log: &Mutex<EventLog>| log.lock().unwrap().read(1, 100).unwrap().len();
        assert_eq!(flush(&log, &store, Some(&behind), None).unwrap(), 10);
        assert_eq!(unread(&log), 10, "stored, but not detected: kept");
        // Detection has passed 4 of them: those go, the rest stay (nothing new to store).
        state.set_detected_through(4).unwrap();
        let progress = Progress::load(&state, &log.lock().unwrap()).unwrap();
        assert_eq!(flush(&log, &store, Some(&progress), None).unwrap(), 0);
        assert_eq!(unread(&log), 6);
        // Without detection, what is stored goes.
        assert_eq!(flush(&log, &store, None, None).unwrap(), 0);
        assert_eq!(unread(&log), 0);
        let _ = std::fs::remove_dir_all(d);
    }
}
