//! The spool's promises, tested on real files: order and sequence across restarts, acks,
//! torn writes, corruption, quota eviction with exact counts, and SIGKILL at random moments.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use mamori_spool::{Spool, SpoolConfig};

fn tempdir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    mamori_model::testing::scratch_dir("mamori-spool", &format!("{n}-{tag}"))
}

fn small() -> SpoolConfig {
    SpoolConfig {
        segment_bytes: 4096,
        quota_bytes: 1 << 30,
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("event {i} {}", "x".repeat((i % 97) as usize)).into_bytes()
}

#[test]
fn order_acks_and_restart() {
    let dir = tempdir("basic");
    let (mut s, rec) = Spool::open(&dir, small()).unwrap();
    assert_eq!(rec.records, 0);
    for i in 1..=500 {
        assert_eq!(s.append(&payload(i)).unwrap(), i);
    }
    s.sync().unwrap();
    let first = s.read(0, 10).unwrap();
    assert_eq!(
        first.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(first[3].1, payload(4));
    s.ack(300).unwrap();
    let segs_before = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(s.stats().depth_records, 200);
    drop(s);

    let (mut s, rec) = Spool::open(&dir, small()).unwrap();
    assert_eq!(rec.acked, 300);
    assert_eq!((rec.corrupted_records, rec.truncated_tail_bytes), (0, 0));
    let rest = s.read(0, 1000).unwrap();
    assert_eq!(rest.first().map(|r| r.0), Some(301));
    assert_eq!(rest.len(), 200);
    // Sequence numbers continue after a restart, past everything reserved before it.
    let n = s.append(b"after restart").unwrap();
    assert!(n > 500, "{n}");
    s.ack(n).unwrap();
    assert!(s.read(0, 10).unwrap().is_empty());
    let segs_after = std::fs::read_dir(&dir).unwrap().count();
    assert!(
        segs_after < segs_before,
        "acknowledged segments are deleted ({segs_before} → {segs_after})"
    );
    assert!(
        s.append(&vec![0; mamori_spool::MAX_RECORD_BYTES + 1])
            .is_err()
    );
}

#[test]
fn torn_tail_is_cut_and_counted() {
    let dir = tempdir("torn");
    let (mut s, _) = Spool::open(&dir, SpoolConfig::default()).unwrap();
    for i in 1..=100 {
        s.append(&payload(i)).unwrap();
    }
    s.sync().unwrap();
    drop(s);
    let seg = newest_segment(&dir);
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 7).unwrap();
    let (mut s, rec) = Spool::open(&dir, SpoolConfig::default()).unwrap();
    assert_eq!(rec.records, 99);
    assert!(rec.truncated_tail_bytes > 0);
    // Appending continues cleanly after the cut, and never reuses the lost record's number
    // (it may already have been sent).
    assert!(s.append(b"next").unwrap() > 100);
    let all = s.read(0, 1000).unwrap();
    assert_eq!(all.len(), 100);
    assert_eq!(all.last().unwrap().1, b"next");
}

#[test]
fn corruption_is_skipped_and_counted() {
    let dir = tempdir("corrupt");
    let (mut s, _) = Spool::open(&dir, SpoolConfig::default()).unwrap();
    for i in 1..=50 {
        s.append(&payload(i)).unwrap();
    }
    s.sync().unwrap();
    drop(s);
    let seg = newest_segment(&dir);
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 40] {
        *b ^= 0xA5;
    }
    std::fs::write(&seg, &bytes).unwrap();
    let (mut s, rec) = Spool::open(&dir, SpoolConfig::default()).unwrap();
    assert!(rec.corrupted_records >= 1, "{rec:?}");
    let got = s.read(0, 1000).unwrap();
    assert!(
        got.len() >= 47 && got.len() < 50,
        "{} records survive",
        got.len()
    );
    // What survives is intact and in order.
    for w in got.windows(2) {
        assert!(w[0].0 < w[1].0);
    }
    for (seq, p) in &got {
        assert_eq!(p, &payload(*seq));
    }
    assert_eq!(got.last().unwrap().0, 50);
}

/// Segments larger than a reader's first piece: records cut by piece ends are read whole,
/// a damaged one lying across a piece end is skipped and counted once, and reads of a few
/// records at a time give the same as one read of everything.
#[test]
fn big_segments_are_read_in_pieces() {
    let dir = tempdir("pieces");
    let cfg = || SpoolConfig {
        segment_bytes: 64 << 20,
        quota_bytes: 1 << 30,
    };
    // ~97 KiB each, of varying length: records straddle every 1 MiB boundary.
    let big = |i: u64| {
        let mut v = payload(i);
        v.resize(97 * 1024 + i as usize * 13, (i % 251) as u8);
        v
    };
    let (mut s, _) = Spool::open(&dir, cfg()).unwrap();
    for i in 1..=60 {
        s.append(&big(i)).unwrap();
    }
    s.sync().unwrap();
    let in_steps = |s: &mut Spool, step: usize| {
        let (mut next, mut got) = (1, Vec::new());
        loop {
            let r = s.read(next, step).unwrap();
            let Some(&(last, _)) = r.last() else { break };
            assert!(r.len() <= step);
            next = last + 1;
            got.extend(r);
        }
        got
    };
    let all = s.read(1, 1000).unwrap();
    assert_eq!(all.len(), 60);
    for (seq, p) in &all {
        assert_eq!(p, &big(*seq));
    }
    assert_eq!(in_steps(&mut s, 7), all);
    assert_eq!(in_steps(&mut s, 1), all);
    drop(s);
    // Damage the record that lies across the end of the first 1 MiB.
    let seg = newest_segment(&dir);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[(1 << 20) + 5] ^= 0xA5;
    std::fs::write(&seg, &bytes).unwrap();
    let (mut s, rec) = Spool::open(&dir, cfg()).unwrap();
    assert_eq!(rec.corrupted_records, 1, "{rec:?}");
    let got = in_steps(&mut s, 7);
    assert_eq!(got.len(), 59, "one record lost to the damage");
    for (seq, p) in &got {
        assert_eq!(p, &big(*seq));
    }
    assert_eq!(s.read(1, 1000).unwrap(), got);
    assert_eq!(
        s.stats().corrupted_records,
        0,
        "counted once, when opened, however often it is read"
    );
}

#[test]
fn quota_evicts_oldest_with_exact_counts() {
    let dir = tempdir("quota");
    let cfg = SpoolConfig {
        segment_bytes: 2048,
        quota_bytes: 8192,
    };
    let (mut s, _) = Spool::open(&dir, cfg).unwrap();
    let n = 1000u64;
    for i in 1..=n {
        s.append(&payload(i)).unwrap();
    }
    let st = s.stats();
    assert!(st.depth_bytes <= 8192 + 2048, "{st:?}");
    assert!(st.evicted_records > 0);
    let kept = s.read(0, 10_000).unwrap();
    // Every record is either still here or counted as evicted: nothing vanishes silently.
    assert_eq!(kept.len() as u64 + st.evicted_records, n);
    assert_eq!(kept.last().unwrap().0, n);
    assert_eq!(kept.first().unwrap().0, st.evicted_records + 1);
}

#[test]
fn model_random_operations() {
    // A queue model: what was appended and not acknowledged must be exactly what read returns.
    let dir = tempdir("model");
    let cfg = SpoolConfig {
        segment_bytes: 1500,
        quota_bytes: 1 << 30,
    };
    let (mut s, _) = Spool::open(&dir, cfg).unwrap();
    let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
    let mut next = 1u64;
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut rand = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for _ in 0..2000 {
        match rand(10) {
            0..=5 => {
                let p = payload(rand(1000));
                assert_eq!(s.append(&p).unwrap(), next);
                model.push_back((next, p));
                next += 1;
            }
            6 | 7 => {
                if let Some(&(hi, _)) = model.get(rand(model.len() as u64 + 1) as usize) {
                    s.ack(hi).unwrap();
                    while model.front().is_some_and(|(q, _)| *q <= hi) {
                        model.pop_front();
                    }
                }
            }
            8 => {
                s.sync().unwrap();
                drop(s);
                let (reopened, rec) = Spool::open(&dir, cfg).unwrap();
                assert_eq!(rec.corrupted_records, 0);
                s = reopened;
                // Numbers continue after the durable reservation: a gap, never a reuse.
                assert!(s.stats().next_seq >= next);
                next = s.stats().next_seq;
            }
            _ => {
                let got = s.read(0, 100_000).unwrap();
                assert_eq!(got, model.iter().cloned().collect::<Vec<_>>());
            }
        }
    }
}

fn newest_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

/// Child mode for the SIGKILL test: appends numbered records forever, syncing and reporting
/// the last durable number on stdout, and acknowledging with a lag as a server would.
#[test]
fn sigkill_child() {
    let Some(dir) = std::env::var_os("MAMORI_SPOOL_CHILD_DIR") else {
        return;
    };
    use std::io::Write;
    let (mut s, _) = Spool::open(PathBuf::from(dir), small()).unwrap();
    let mut out = std::io::stdout().lock();
    loop {
        let mut last = 0;
        for _ in 0..50 {
            let n = s.stats().next_seq;
            last = s.append(&payload(n)).unwrap();
        }
        s.sync().unwrap();
        if last > 200 {
            s.ack(last - 200).unwrap();
        }
        writeln!(out, "durable {last} acked {}", s.stats().acked).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_at_random_moments_loses_nothing_durable() {
    let dir = tempdir("kill");
    let exe = std::env::current_exe().unwrap();
    let mut durable = 0u64;
    let mut acked = 0u64;
    let mut run_starts = vec![1u64];
    for round in 0..6u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "sigkill_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MAMORI_SPOOL_CHILD_DIR", &dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(40 + 37 * round));
        child.kill().unwrap(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            if let ["durable", d, "acked", a] = w.as_slice() {
                durable = durable.max(d.parse().unwrap());
                acked = acked.max(a.parse().unwrap());
            }
        }
        let (mut s, rec) = Spool::open(&dir, small()).unwrap();
        assert_eq!(rec.corrupted_records, 0, "round {round}: {rec:?}");
        assert!(rec.acked >= acked, "round {round}: ack went backwards");
        let all = s.read(0, 10_000_000).unwrap();
        // Everything after the ack is there, in order, intact; numbering may jump only where
        // a run started (after the previous run's reservation).
        for w in all.windows(2) {
            assert!(w[0].0 < w[1].0, "round {round}: order");
            if w[1].0 != w[0].0 + 1 {
                assert!(
                    run_starts.contains(&w[1].0),
                    "round {round}: gap before {} inside a run",
                    w[1].0
                );
            }
        }
        for (seq, p) in &all {
            assert_eq!(p, &payload(*seq), "round {round}: payload of {seq}");
        }
        let last = all.last().map_or(rec.acked, |r| r.0);
        assert!(
            last >= durable,
            "round {round}: durable {durable} but only {last} recovered"
        );
        run_starts.push(s.stats().next_seq);
    }
    assert!(durable > 500, "the child made progress ({durable})");
}
