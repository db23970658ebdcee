//! The compactor: moves events from the ingest log into the columnar store, in log order,
//! then releases the log through what the store holds.
//!
//! It wakes every flush interval (or when asked to stop), reads what the log holds after
//! the store's position, writes it (one file per tenant), and acknowledges the log. Every
//! minute it applies retention and merges small files. A crash anywhere in between repeats
//! work but neither loses nor duplicates events (see `mamori_columnar`).

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use mamori_columnar::{EventStore, Origin, Row};

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

/// Moves what the log holds after the store's position into the store; returns the number
/// of events stored.
pub fn flush(
    log: &Mutex<EventLog>,
    store: &dyn EventStore,
    detected: Option<&crate::detect::Progress>,
) -> Result<u64, String> {
    let mut stored = 0;
    loop {
        let from = store.position() + 1;
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
            recs.extend(chunk);
            if n < CHUNK {
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

/// Runs the compactor until `stop` receives (or its sender is dropped); flushes once more
/// before returning.
pub fn run(shared: Arc<crate::service::Shared>, every: Duration, stop: Receiver<()>) {
    let (log, store) = (&shared.log, shared.events.as_ref());
    let mut last_maintenance = Instant::now() - Duration::from_secs(3600);
    loop {
        let stopping = !matches!(stop.recv_timeout(every), Err(RecvTimeoutError::Timeout));
        if let Err(e) = flush(log, store, shared.detected.as_ref()) {
            tracing::error!("moving events into the columnar store: {e} (retrying)");
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
        assert_eq!(flush(&log, &store, Some(&behind)).unwrap(), 10);
        assert_eq!(unread(&log), 10, "stored, but not detected: kept");
        // Detection has passed 4 of them: those go, the rest stay (nothing new to store).
        state.set_detected_through(4).unwrap();
        let progress = Progress::load(&state, &log.lock().unwrap()).unwrap();
        assert_eq!(flush(&log, &store, Some(&progress)).unwrap(), 0);
        assert_eq!(unread(&log), 6);
        // Without detection, what is stored goes.
        assert_eq!(flush(&log, &store, None).unwrap(), 0);
        assert_eq!(unread(&log), 0);
        let _ = std::fs::remove_dir_all(d);
    }
}
