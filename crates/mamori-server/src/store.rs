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

use mamori_spool::{Spool, SpoolConfig};
use serde::{Deserialize, Serialize};

use crate::ServerError;

/// One stored event, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Position in the log.
    pub log_seq: u64,
    /// The tenant it belongs to.
    pub tenant: String,
    /// The agent that sent it.
    pub agent: String,
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
    /// Syncs done (how well group commit groups).
    pub syncs: u64,
    /// The position the last sync reached: readers must not go past it (what is beyond may
    /// still be lost, and then sent again by its agent).
    synced: u64,
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

/// Group commit: appenders wait until a sync covers their position; one of them runs the
/// sync for everyone who appended meanwhile, so one fsync serves many batches.
#[derive(Default)]
pub struct GroupCommit {
    state: std::sync::Mutex<(u64, bool, bool)>, // (synced through, a sync is running, failed)
    done: std::sync::Condvar,
}

impl GroupCommit {
    /// Returns once `position` is durable in `log` (syncing it if no one else is).
    pub fn wait(&self, log: &std::sync::Mutex<EventLog>, position: u64) -> Result<(), ServerError> {
        let poisoned = || ServerError::Store("event log lock poisoned".into());
        let mut g = self.state.lock().map_err(|_| poisoned())?;
        loop {
            if g.0 >= position {
                return Ok(());
            }
            if g.2 {
                return Err(ServerError::Store(
                    "the event log failed earlier; restart the server".into(),
                ));
            }
            if !g.1 {
                g.1 = true;
                drop(g);
                let synced = log
                    .lock()
                    .map_err(|_| poisoned())
                    .and_then(|mut l| l.sync());
                g = self.state.lock().map_err(|_| poisoned())?;
                g.1 = false;
                match synced {
                    Ok(through) => g.0 = g.0.max(through),
                    Err(e) => {
                        g.2 = true;
                        self.done.notify_all();
                        return Err(e);
                    }
                }
                self.done.notify_all();
                continue;
            }
            g = self.done.wait(g).map_err(|_| poisoned())?;
        }
    }
}

/// A record: `u16 len, agent, u16 len, tenant, u64 seq, event` (little endian).
fn encode(tenant: &str, agent: &str, seq: u64, event: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(4 + agent.len() + tenant.len() + 8 + event.len());
    r.extend_from_slice(&(agent.len() as u16).to_le_bytes());
    r.extend_from_slice(agent.as_bytes());
    r.extend_from_slice(&(tenant.len() as u16).to_le_bytes());
    r.extend_from_slice(tenant.as_bytes());
    r.extend_from_slice(&seq.to_le_bytes());
    r.extend_from_slice(event);
    r
}

fn decode(r: &[u8]) -> Option<(String, String, u64, Vec<u8>)> {
    let text = |at: usize| -> Option<(String, usize)> {
        let n = u16::from_le_bytes([*r.get(at)?, *r.get(at + 1)?]) as usize;
        let s = std::str::from_utf8(r.get(at + 2..at + 2 + n)?).ok()?;
        Some((s.to_string(), at + 2 + n))
    };
    let (agent, at) = text(0)?;
    let (tenant, at) = text(at)?;
    let seq = u64::from_le_bytes(r.get(at..at + 8)?.try_into().ok()?);
    Some((agent, tenant, seq, r.get(at + 8..)?.to_vec()))
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
                    let w = watermarks.entry(agent).or_insert(0);
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
            syncs: 0,
            synced: last,
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
        events: &[Vec<u8>],
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
            match self.spool.append(&encode(tenant, agent, seq, ev)) {
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
        Ok(recs
            .into_iter()
            .take_while(|(log_seq, _)| *log_seq <= synced)
            .filter_map(|(log_seq, r)| {
                decode(&r).map(|(agent, tenant, seq, event)| Stored {
                    log_seq,
                    tenant,
                    agent,
                    seq,
                    event,
                })
            })
            .collect())
    }

    /// Releases the log through `log_seq` (stored downstream): whole segments are deleted.
    pub fn ack(&mut self, log_seq: u64) -> Result<(), ServerError> {
        // Watermarks are rebuilt from the records after the checkpoint, and acknowledged
        // records are not read again: the checkpoint must cover them first, and it may only
        // cover durable records.
        self.sync()?;
        self.write_checkpoint()?;
        self.spool
            .ack(log_seq)
            .map_err(|e| ServerError::Store(e.to_string()))
    }

    /// Syncs and writes the checkpoint (on shutdown).
    pub fn close(mut self) -> Result<(), ServerError> {
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
            .filter(|s| s.agent == "a1")
            .map(|s| s.seq)
            .collect();
        assert_eq!(a1, vec![1, 2, 3, 4, 5, 8]);
        log.close().unwrap();
        let log = EventLog::open(&d, 1 << 30).unwrap();
        assert_eq!(log.watermark("a1"), 8);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn group_commit_makes_every_batch_durable_with_fewer_syncs() {
        let d = dir("group");
        let log = std::sync::Arc::new(std::sync::Mutex::new(EventLog::open(&d, 1 << 30).unwrap()));
        let commit = std::sync::Arc::new(GroupCommit::default());
        // Two batches appended before anyone waits: the first wait's sync covers both.
        let a = log.lock().unwrap().append("t", "x", 1, &evs(2)).unwrap();
        let b = log.lock().unwrap().append("t", "y", 1, &evs(2)).unwrap();
        commit.wait(&log, a.position).unwrap();
        commit.wait(&log, b.position).unwrap();
        assert_eq!(log.lock().unwrap().syncs, 1, "one sync for two batches");
        // Many writers at once: every batch durable when its wait returns.
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (log, commit) = (log.clone(), commit.clone());
                std::thread::spawn(move || {
                    for b in 0..50u64 {
                        let a = log
                            .lock()
                            .unwrap()
                            .append("t", &format!("a{t}"), b * 2 + 1, &evs(2))
                            .unwrap();
                        commit.wait(&log, a.position).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        eprintln!("{} syncs for 402 batches", log.lock().unwrap().syncs);
        // Everything acknowledged is on disk: reopen without closing.
        drop(log);
        let mut log = EventLog::open(&d, 1 << 30).unwrap();
        assert_eq!(log.read(1, 10_000).unwrap().len(), 804);
        assert_eq!(log.watermark("a7"), 100);
        let _ = std::fs::remove_dir_all(d);
    }
}
