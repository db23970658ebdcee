//! Scan-only benchmark: loads rules, reads every event of the given log paths into memory,
//! then times matching alone (no parsing) and prints the rules that cost the most.
//!
//! `cargo run --release -p mamori-sigma --example scanbench -- RULES_DIR... -- LOG_PATH...`
//!
//! Files named `*.ecs.jsonl` are taken as the Linux sensor's ECS events, one per line, and
//! matched as the server matches them: from the text in one pass (`Scanner::scan_ecs_json`).

use std::path::PathBuf;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args
        .iter()
        .position(|a| a == "--")
        .expect("usage: RULES... -- LOGS...");
    let rules: Vec<PathBuf> = args[..split].iter().map(PathBuf::from).collect();
    let logs: Vec<PathBuf> = args[split + 1..].iter().map(PathBuf::from).collect();
    let rss = || {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS"))
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    println!("before load: {}", rss());
    let mut docs = Vec::new();
    for f in mamori_sigma::load::rule_files(&rules).expect("rule files") {
        docs.extend(mamori_sigma::load::read_file(&f).into_iter().flatten());
    }
    println!("parsed {} documents: {}", docs.len(), rss());
    let t = Instant::now();
    let mut compiler = mamori_sigma::Compiler::default();
    for d in docs {
        compiler.add(d);
    }
    let (set, _) = compiler.compile();
    println!(
        "compiled {} rules in {:.3}s: {}",
        set.rules().len(),
        t.elapsed().as_secs_f64(),
        rss()
    );
    println!(
        "prefilter: {} literals, {} KiB; {} regexes",
        set.prefilter_literals(),
        set.prefilter_bytes() / 1024,
        set.regex_count()
    );
    let loaded = mamori_sigma::load::Loaded {
        rules: set,
        report: Vec::new(),
    };
    let (ecs, logs): (Vec<PathBuf>, Vec<PathBuf>) = logs
        .into_iter()
        .partition(|p| p.to_string_lossy().ends_with(".ecs.jsonl"));
    let mut raw: Vec<Vec<u8>> = Vec::new();
    for f in &ecs {
        let text = std::fs::read(f).expect("reading ECS JSON lines");
        raw.extend(
            text.split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    let mut events = Vec::new();
    for f in mamori_sources::discover(&logs).expect("discover") {
        let _ = mamori_sources::read_file(&f, &mut |r| events.push(r.event));
    }
    let set = &loaded.rules;
    let mut scanner = set.scanner();
    let mut hits = Vec::new();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let t = Instant::now();
    let mut n = 0;
    let mut gave_up = 0;
    for _ in 0..rounds {
        for e in &events {
            hits.clear();
            scanner.scan(e, &mut hits);
            n += hits.len();
        }
        for r in &raw {
            hits.clear();
            if scanner.scan_ecs_json(r, &mut hits).is_err() {
                gave_up += 1;
            }
            n += hits.len();
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let count = events.len() + raw.len();
    let per = secs / (rounds * count) as f64;
    println!(
        "{count} events ({} as ECS text, {} gave up) x {rounds}: {:.3}s, {:.2} us/event, {:.0} events/s, {} matches, stats {:?}",
        raw.len(),
        gave_up / rounds,
        secs,
        per * 1e6,
        1.0 / per,
        n / rounds,
        scanner.stats()
    );
    let mut per: Vec<(u64, usize)> = scanner.evaluations().iter().copied().zip(0..).collect();
    per.sort_by(|a, b| b.cmp(a));
    println!("most evaluated rules:");
    for (n, i) in per.iter().take(25) {
        let info = &set.rules()[*i];
        println!(
            "  {:>8}  {}  {}",
            n / rounds as u64,
            info.meta.title,
            info.meta
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
}
