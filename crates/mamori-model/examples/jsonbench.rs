//! Times the three ways the server reads an event's JSON text, on every line of the given
//! JSON-lines files: serde_json skipping it (`IgnoredAny`, what ingest used to check events
//! with), `json::validate` (what it checks them with now) and `walk` (detection's read).
//!
//! `cargo run --release -p mamori-model --example jsonbench -- FILE.jsonl [...]`
//! (`ROUNDS=N`, default 20).

use std::time::Instant;

use mamori_model::json;
use mamori_model::walk::{Next, Scratch, walk};

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: jsonbench FILE.jsonl [...]");
        std::process::exit(2);
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let text: Vec<u8> = files
        .iter()
        .flat_map(|f| {
            let mut t = std::fs::read(f).unwrap_or_else(|e| panic!("{f}: {e}"));
            t.push(b'\n');
            t
        })
        .collect();
    let lines: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    println!(
        "{} events, {} bytes each on average, {rounds} rounds",
        lines.len(),
        bytes / lines.len().max(1)
    );
    let time = |name: &str, read: &mut dyn FnMut(&[u8]) -> bool| {
        let start = Instant::now();
        let mut ok = 0usize;
        for _ in 0..rounds {
            ok += lines.iter().filter(|l| read(l)).count();
        }
        let per = start.elapsed().as_nanos() as f64 / (rounds * lines.len()).max(1) as f64;
        println!("{name:<24} {:>8.0} ns per event ({ok} read)", per);
    };
    time("serde_json IgnoredAny", &mut |l| {
        serde_json::from_slice::<serde::de::IgnoredAny>(l).is_ok()
    });
    time("json::validate", &mut |l| json::validate(l).is_ok());
    let mut scratch = Scratch::default();
    time("walk", &mut |l| {
        walk(l, &mut scratch, &mut |_, _| Next::Go).is_ok()
    });
}
