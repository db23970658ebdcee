//! What blocking by hash costs each exec: spawns `/bin/true` many times with no blocklist
//! (nothing hooked) and with one (every exec waits for the agent's verdict), alternating in
//! rounds so both see the same machine, and prints latency percentiles and the difference.
//! Needs root (fanotify permission events).
//!
//! `cargo run --release -p mamori-respond --example exec_bench -- [EXECS_PER_ROUND] [ROUNDS]`

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use mamori_respond::block::{Blocker, Lists};

fn round(n: usize, out: &mut Vec<f64>) {
    for _ in 0..n {
        let t = Instant::now();
        let st = Command::new("/bin/true").status().expect("spawn /bin/true");
        assert!(st.success());
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, rounds) = (
        args.first().copied().unwrap_or(500),
        args.get(1).copied().unwrap_or(6),
    );
    let dir = std::env::temp_dir().join(format!("mamori-exec-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let mut blocker = Blocker::open(&dir, Arc::new(|_| {})).expect("blocker");
    let (mut off, mut on) = (Vec::new(), Vec::new());
    // Warm up the page cache and the hash cache.
    round(50, &mut Vec::new());
    for r in 0..rounds {
        let list = Lists {
            version: r as u64 * 2 + 1,
            block: ["0".repeat(64)].into_iter().collect(),
            allow: Default::default(),
        };
        blocker.set(list).expect("blocklist on");
        round(n, &mut on);
        blocker
            .set(Lists {
                version: r as u64 * 2 + 2,
                ..Default::default()
            })
            .expect("blocklist off");
        round(n, &mut off);
    }
    let answered = blocker.stats.0.load(std::sync::atomic::Ordering::Relaxed);
    let (p50_off, p99_off) = (pct(&mut off, 0.5), pct(&mut off, 0.99));
    let (p50_on, p99_on) = (pct(&mut on, 0.5), pct(&mut on, 0.99));
    println!(
        "execs: {} without a blocklist, {} with one ({answered} verdicts given)",
        off.len(),
        on.len()
    );
    println!("without: p50 {p50_off:.0} µs, p99 {p99_off:.0} µs");
    println!("with:    p50 {p50_on:.0} µs, p99 {p99_on:.0} µs");
    println!(
        "added:   p50 {:+.0} µs, p99 {:+.0} µs (ratio p50 {:.3})",
        p50_on - p50_off,
        p99_on - p99_off,
        p50_on / p50_off
    );
    let _ = std::fs::remove_dir_all(&dir);
}
