//! A round's scan, split over threads.
//!
//! Nearly all of detection's time goes into reading each event and matching it against the
//! rules, and that needs nothing but the event and the rules. [`Scan`] does it for a run of
//! a round's batches and settles most events there: one that is the sensor's and matches
//! nothing needs nothing more (its row for the store is built from the same walk), and a
//! connection to an external address that matches nothing needs only its destination noted
//! on its process tree. The rest (a hit, a heartbeat, an event the one pass cannot read) it
//! leaves [`Pending`], and the detector handles those, and the connections, in log order
//! with its state (process trees, correlations, folded alerts), exactly as it would have
//! after scanning everything itself.
//!
//! A [`Pool`] holds the helper threads, which live as long as the rules they scan with.
//! A round of at least `2 × PART_MIN` events is split into as many runs of whole batches
//! as there are threads (the detection thread takes the first); a smaller round is not
//! worth the hand-over. A helper that has died leaves its share to the detection thread.

use std::ops::Range;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender};

use mamori_sigma::RuleSet;

use super::{Facts, Job, Soc, StoreRows};

/// Fewest events in a part: below this, handing a part to another thread costs more than
/// scanning it here.
const PART_MIN: usize = 256;

/// What the detector still does for an event, in log order.
#[derive(Debug)]
pub(super) enum After {
    /// Everything but the scan's row: read again with the detector's state.
    Full,
    /// A connection to an external address that matched nothing: noted on its process tree.
    Connected { dest: String, tree: [String; 2] },
}

/// An event of the round the detector still has to handle.
#[derive(Debug)]
pub(super) struct Pending {
    /// Index of its batch in the round.
    pub job: usize,
    /// Index of the event in its batch.
    pub event: usize,
    pub after: After,
}

/// One part's scan: what is left for the detector, and the store's rows.
#[derive(Debug, Default)]
pub(super) struct Part {
    pub pending: Vec<Pending>,
    /// First and last log position and the rows, by tenant (when rows are built and the
    /// part's positions are consecutive).
    pub rows: Option<(u64, u64, Vec<mamori_columnar::Built>)>,
}

/// One thread's scanning state.
pub(super) struct Scan<'r> {
    scanner: mamori_sigma::Scanner<'r>,
    soc: &'r Soc,
    facts: Facts,
    hits: Vec<usize>,
    /// The store's rows (none without a feed).
    rows: Option<StoreRows>,
}

impl<'r> Scan<'r> {
    pub fn new(rules: &'r RuleSet, soc: &'r Soc, rows: bool) -> Self {
        Scan {
            scanner: rules.scanner(),
            soc,
            facts: Facts::default(),
            hits: Vec::new(),
            rows: rows.then(StoreRows::new),
        }
    }

    /// Scans the batches `range` of `jobs`.
    pub fn part(&mut self, jobs: &[Job], range: Range<usize>) -> Part {
        let mut part = Part::default();
        let mine = &jobs[range.clone()];
        if let Some(rows) = &mut self.rows {
            rows.begin(mine);
        }
        for (j, job) in range.clone().zip(mine) {
            let tenant = self.rows.as_ref().and_then(|r| r.tenant_of(job));
            for (i, raw) in job.events.iter().enumerate() {
                #[cfg(test)]
                if std::thread::current()
                    .name()
                    .is_some_and(|n| n.starts_with("mamori-scan-"))
                    && raw
                        .windows(tests::PANIC.len())
                        .any(|w| w == tests::PANIC.as_bytes())
                {
                    panic!("a scan helper fails (test)");
                }
                if let Some(after) = self.event(job, raw) {
                    part.pending.push(Pending {
                        job: j,
                        event: i,
                        after,
                    });
                }
                if let (Some(rows), Some(t)) = (&mut self.rows, tenant) {
                    rows.push(t, job, i, raw);
                }
            }
        }
        part.rows = self.rows.as_mut().and_then(|r| r.take(mine));
        part
    }

    /// Scans one event (noting its row's fields); what the detector still has to do.
    fn event(&mut self, job: &Job, raw: &[u8]) -> Option<After> {
        let Scan {
            scanner,
            soc,
            facts,
            hits,
            rows,
        } = self;
        hits.clear();
        facts.clear();
        let mut fields = rows.as_mut().map(|r| &mut r.fields);
        if let Some(f) = fields.as_mut() {
            f.clear();
        }
        let walked = scanner
            .scan_ecs_json_with(raw, hits, &mut |name, leaf| {
                facts.note(name, leaf);
                if let Some(f) = fields.as_mut() {
                    f.note(name, leaf);
                }
            })
            .is_ok();
        if let Some(f) = fields {
            f.walked(walked);
        }
        // As `Detector::event` decides, which it does again for what is left to it.
        if !(walked && facts.sensor() && hits.is_empty()) {
            return Some(After::Full);
        }
        let ip = facts.external(soc, &job.tenant)?;
        Some(match facts.connection(ip) {
            Some((dest, tree)) => After::Connected {
                dest,
                tree: tree.map(str::to_string),
            },
            None => After::Full,
        })
    }
}

/// A helper thread's queues: parts to scan in, scanned parts out.
struct Helper {
    tx: SyncSender<(Arc<[Job]>, Range<usize>)>,
    rx: Receiver<Part>,
}

/// The helper threads of the detection thread.
pub(super) struct Pool {
    helpers: Vec<Helper>,
}

impl Pool {
    /// Starts `threads - 1` helpers in `scope`, each with a scanner of `rules`. They end
    /// when the pool is dropped.
    pub fn start<'scope, 'env: 'scope>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        rules: &'env RuleSet,
        soc: &'env Soc,
        rows: bool,
        threads: usize,
    ) -> Pool {
        let mut helpers = Vec::new();
        for n in 1..threads {
            let (tx, jobs) = std::sync::mpsc::sync_channel::<(Arc<[Job]>, Range<usize>)>(1);
            let (done, rx) = std::sync::mpsc::sync_channel(1);
            let spawned = std::thread::Builder::new()
                .name(format!("mamori-scan-{n}"))
                .spawn_scoped(scope, move || {
                    let mut scan = Scan::new(rules, soc, rows);
                    while let Ok((jobs, range)) = jobs.recv() {
                        // A panic ends this helper quietly (the detection thread scans its
                        // share from then on), rather than the scope when the rules change.
                        let part = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            scan.part(&jobs, range)
                        }));
                        let Ok(part) = part else {
                            tracing::error!("a detection scan thread failed; scanning on fewer");
                            break;
                        };
                        if done.send(part).is_err() {
                            break;
                        }
                    }
                });
            match spawned {
                Ok(_) => helpers.push(Helper { tx, rx }),
                Err(e) => {
                    tracing::warn!("starting a scan thread: {e}; detection scans with fewer");
                    break;
                }
            }
        }
        Pool { helpers }
    }

    /// Scans a round: the first part with `mine` on this thread, the others on the
    /// helpers. The parts, in log order.
    pub fn scan(&mut self, mine: &mut Scan<'_>, jobs: &Arc<[Job]>) -> Vec<Part> {
        let ranges = split(jobs, self.helpers.len() + 1);
        let sent: Vec<bool> = ranges[1..]
            .iter()
            .zip(&self.helpers)
            .map(|(r, h)| h.tx.send((jobs.clone(), r.clone())).is_ok())
            .collect();
        let mut parts = vec![mine.part(jobs, ranges[0].clone())];
        for (i, range) in ranges[1..].iter().enumerate() {
            let theirs = sent[i].then(|| self.helpers[i].rx.recv().ok()).flatten();
            parts.push(theirs.unwrap_or_else(|| mine.part(jobs, range.clone())));
        }
        parts
    }
}

/// Splits a round into at most `n` runs of whole batches of about equal numbers of
/// events, each of at least [`PART_MIN`] (one run when the round is small).
fn split(jobs: &[Job], n: usize) -> Vec<Range<usize>> {
    let total: usize = jobs.iter().map(|j| j.events.len()).sum();
    let n = n.min(total / PART_MIN).max(1);
    let mut ranges = Vec::with_capacity(n);
    let (mut start, mut seen) = (0, 0);
    for (i, j) in jobs.iter().enumerate() {
        seen += j.events.len();
        // The k-th run ends once it holds k/n of the events (the last batch ends the last).
        if ranges.len() + 1 < n && i + 1 < jobs.len() && seen * n >= total * (ranges.len() + 1) {
            ranges.push(start..i + 1);
            start = i + 1;
        }
    }
    ranges.push(start..jobs.len());
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Disabled, Msg, Progress, spawn};
    use crate::state::State;

    const RULE: &str = r#"
title: A test marker
id: 5b3c1a2e-0000-4000-8000-000000000001
status: test
logsource: {product: linux, category: process_creation}
detection:
  sel: {CommandLine|contains: 'mamori-test-marker'}
  condition: sel
level: high
"#;

    /// A command line that makes a helper scan thread panic (see `Scan::part`).
    pub(super) const PANIC: &str = "mamori-test-panic";

    fn process(n: usize, entity: &str, cmd: &str) -> String {
        format!(
            r#"{{"@timestamp":"2026-12-07T10:00:00Z","event":{{"kind":"event","category":["process"],"type":["start"],"action":"exec","module":"mamori","dataset":"mamori.process"}},"host":{{"name":"h1","os":{{"type":"linux"}}}},"process":{{"pid":{n},"entity_id":"{entity}","executable":"/usr/bin/sh","name":"sh","command_line":"{cmd}","parent":{{"pid":1,"entity_id":"q-{entity}","executable":"/usr/bin/bash","command_line":"bash"}}}},"user":{{"id":"1000","name":"app"}}}}"#
        )
    }

    fn connection(entity: &str) -> String {
        format!(
            r#"{{"@timestamp":"2026-12-07T10:00:00Z","event":{{"kind":"event","category":["network"],"type":["connection","start"],"module":"mamori","dataset":"mamori.network"}},"host":{{"name":"h1","os":{{"type":"linux"}}}},"destination":{{"ip":"198.51.100.7","port":443}},"process":{{"pid":7,"entity_id":"{entity}","parent":{{"entity_id":"q-{entity}"}}}}}}"#
        )
    }

    /// 3,000 events in batches of 5 from log position `from`: markers in both halves (one
    /// process's twice, across the halves), connections on the trees of markers before and
    /// after them, and an event the one pass does not read. With `fail`, an event in the
    /// second half makes a helper thread that scans it panic.
    fn round(from: u64, fail: bool) -> Vec<Job> {
        let marker = "sh -c mamori-test-marker";
        let events: Vec<String> = (1..=3000)
            .map(|n| match n {
                10 | 2000 => process(n, "m1", marker),
                20 => process(n, "m2", marker),
                2500 => connection("m2"),
                30 => connection("m3"),
                2600 => process(n, "m3", marker),
                1700 => r#"{"EventID":1,"Channel":"Microsoft-Windows-Sysmon/Operational","CommandLine":"whoami"}"#.into(),
                2200 if fail => process(n, "f", PANIC),
                _ => process(n, &format!("p{n}"), &format!("python3 worker.py --job {n}")),
            })
            .collect();
        events
            .chunks(5)
            .enumerate()
            .map(|(i, c)| Job {
                agent: "a1".into(),
                tenant: "t1".into(),
                first_seq: from + 5 * i as u64,
                first_log_seq: from + 5 * i as u64,
                events: c.iter().map(|e| e.clone().into_bytes().into()).collect(),
            })
            .collect()
    }

    fn rules() -> Arc<RuleSet> {
        let mut c = mamori_sigma::Compiler::default();
        for d in mamori_sigma::parse::parse_documents(RULE) {
            c.add(d.unwrap());
        }
        let (rules, rejected) = c.compile();
        assert!(rejected.is_empty());
        Arc::new(rules)
    }

    /// Per alert: process, count, severity, the pids of its evidence in order.
    type Seen = (Vec<(String, i64, String, Vec<u64>)>, (u64, u64, usize));

    /// Sends `msgs` to detection with `threads` scan threads: the alerts (process, count,
    /// severity, evidence) and the rows handed to the compactor.
    fn detect(name: &str, threads: usize, msgs: Vec<Msg>) -> Seen {
        let dir = std::env::temp_dir().join(format!(
            "mamori-parts-{}-{name}-{threads}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state = Arc::new(State::open(&dir.join("state.db")).unwrap());
        let progress = Progress::new(0);
        let feed = Arc::new(crate::compact::Feed::default());
        let soc = Soc {
            policy: Arc::new(mamori_soc::Policy::default()),
            contain: std::sync::mpsc::channel().0,
        };
        let queue = spawn(
            rules(),
            Disabled::default(),
            state.clone(),
            soc,
            progress.clone(),
            Some(feed.clone()),
            threads,
        );
        for m in msgs {
            queue.send(m).unwrap();
        }
        drop(queue);
        let start = std::time::Instant::now();
        while progress.through() != u64::MAX {
            assert!(start.elapsed().as_secs() < 60, "detection did not finish");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut alerts: Vec<_> = state
            .alerts(None, 100)
            .unwrap()
            .into_iter()
            .map(|a| {
                let pids = a.evidence.as_array().map_or(Vec::new(), |events| {
                    events
                        .iter()
                        .filter_map(|e| e["process"]["pid"].as_u64())
                        .collect()
                });
                (a.process_entity, a.count, a.severity, pids)
            })
            .collect();
        alerts.sort();
        let _ = std::fs::remove_dir_all(&dir);
        (alerts, feed.held())
    }

    /// A round split over two threads is detected as one thread detects it: the same
    /// alerts, a repeat folded into the alert of the other half, severities that depend on
    /// connections in the other half, and a row for the store for every event, in order.
    #[test]
    fn a_round_split_over_threads_is_detected_as_by_one() {
        let round = || {
            vec![Msg::Events {
                jobs: round(1, false),
                through: 3000,
                durable_at: std::time::SystemTime::now(),
            }]
        };
        let one = detect("split", 1, round());
        let two = detect("split", 2, round());
        assert_eq!(one, two);
        let (alerts, rows) = one;
        let entities: Vec<(&str, i64, &[u64])> = alerts
            .iter()
            .map(|(e, n, _, pids)| (e.as_str(), *n, pids.as_slice()))
            .collect();
        assert_eq!(
            entities,
            vec![
                ("m1", 2, &[10, 2000][..]),
                ("m2", 1, &[20]),
                ("m3", 1, &[2600])
            ],
            "{alerts:?}"
        );
        assert_eq!(rows, (1, 3000, 3000));
        // The connection of m3's tree came first; m2's came after its alert: both count.
        let plain = &alerts[0].2;
        assert_ne!(&alerts[1].2, plain, "{alerts:?}");
        assert_ne!(&alerts[2].2, plain, "{alerts:?}");
    }

    fn jobs(sizes: &[usize]) -> Vec<Job> {
        let mut log = 1;
        sizes
            .iter()
            .map(|&n| {
                let j = Job {
                    agent: "a".into(),
                    tenant: "t".into(),
                    first_seq: 1,
                    first_log_seq: log,
                    events: vec![mamori_wire::Bytes::from_static(b"{}"); n],
                };
                log += n as u64;
                j
            })
            .collect()
    }

    /// Runs cover every batch once, in order, with about equal events; small rounds stay
    /// whole, and no run is empty.
    #[test]
    fn a_round_splits_into_runs_of_whole_batches() {
        let covered = |ranges: &[Range<usize>], len: usize| {
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(len));
            for w in ranges.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            assert!(ranges.iter().all(|r| !r.is_empty()), "{ranges:?}");
        };
        let even = jobs(&[5; 400]);
        let r = split(&even, 2);
        covered(&r, 400);
        assert_eq!(r, vec![0..200, 200..400]);
        let r = split(&even, 4);
        covered(&r, 400);
        assert_eq!(r.len(), 4);
        // 2,000 events: at most 7 parts of 256 or more.
        let r = split(&even, 16);
        covered(&r, 400);
        assert_eq!(r.len(), 7);
        // Too small to split.
        assert_eq!(split(&jobs(&[5; 100]), 2), vec![0..100]);
        assert_eq!(split(&jobs(&[]), 2), vec![0..0]);
        // One big batch and small ones: the big one is a run of its own.
        let uneven = jobs(&[2000, 5, 5, 5, 5, 5, 5, 5]);
        let r = split(&uneven, 2);
        covered(&r, 8);
        assert_eq!(r, vec![0..1, 1..8]);
        // … unless it comes last: then the round stays whole.
        assert_eq!(split(&jobs(&[5, 5, 5, 5, 5, 5, 5, 2000]), 2), vec![0..8]);
    }

    /// A helper thread that panics leaves its share to the detection thread: the round is
    /// detected in full, and detection goes on after its rules change (its helpers end
    /// with the old rules, and new ones start).
    #[test]
    fn a_scan_thread_that_fails_leaves_its_share_to_the_detection_thread() {
        let msgs = |fail| {
            vec![
                Msg::Events {
                    jobs: round(1, fail),
                    through: 3000,
                    durable_at: std::time::SystemTime::now(),
                },
                Msg::Rules(rules()),
                Msg::Events {
                    jobs: round(3001, false),
                    through: 6000,
                    durable_at: std::time::SystemTime::now(),
                },
            ]
        };
        let (alerts, rows) = detect("fail", 2, msgs(true));
        assert_eq!(detect("fine", 2, msgs(false)), (alerts.clone(), rows));
        // Each marker process twice over: once per round (two rounds, one alert each,
        // folded).
        let counts: Vec<(&str, i64)> = alerts.iter().map(|(e, n, _, _)| (e.as_str(), *n)).collect();
        assert_eq!(counts, vec![("m1", 4), ("m2", 2), ("m3", 2)], "{alerts:?}");
        assert_eq!(rows, (1, 6000, 6000));
    }
}
