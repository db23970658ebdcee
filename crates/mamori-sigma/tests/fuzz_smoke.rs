//! Mutation smoke test of the rule parser and compiler, run in every test pass (the
//! coverage-guided targets live in `fuzz/`). Seeds are real SigmaHQ rules; mutations flip,
//! insert, delete and splice bytes. Invariant: nothing panics, and every rule that loads can
//! be evaluated.

use std::path::Path;

use mamori_model::Event;
use mamori_sigma::{Compiler, parse::parse_documents};
use serde_json::json;

fn mutate(rng: &mut fastrand::Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.usize(..8) {
        match rng.usize(..5) {
            0 if !v.is_empty() => {
                let i = rng.usize(..v.len().max(1));
                v[i] ^= 1 << rng.usize(..8);
            }
            1 => {
                let i = rng.usize(..=v.len());
                let tokens: [&[u8]; 10] = [
                    b"|", b"*", b"\\", b"'", b"\n  ", b": ", b"- ", b"(", b" of ", b"%x%",
                ];
                let t = tokens[rng.usize(..tokens.len())];
                v.splice(i..i, t.iter().copied());
            }
            2 if !v.is_empty() => {
                let i = rng.usize(..v.len().max(1));
                let j = (i + rng.usize(..16)).min(v.len());
                v.drain(i..j);
            }
            3 if !other.is_empty() => {
                let i = rng.usize(..=v.len());
                let a = rng.usize(..other.len().max(1));
                let b = (a + rng.usize(..64)).min(other.len());
                v.splice(i..i, other[a..b].iter().copied());
            }
            _ => {
                let i = rng.usize(..=v.len());
                v.insert(i, rng.u8(..));
            }
        }
    }
    v
}

#[test]
fn mutated_rules_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/sigma/rules/windows/process_creation");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("shared test data missing in {}: {e}", dir.display()))
        .flatten()
        .take(60)
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    seeds.push(b"title: t\ncorrelation: {type: temporal, rules: [a, b], timespan: 1m}\n".to_vec());
    let event = Event::new(
        json!({"Event": {"System": {"Channel": "Microsoft-Windows-Sysmon/Operational", "EventID": 1},
        "EventData": {"Image": "C:\\Windows\\System32\\cmd.exe", "CommandLine": "cmd.exe /c whoami -all",
                      "ParentImage": "C:\\x\\explorer.exe", "User": "a\\b", "Size": 5}}}),
    );
    let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
    let mut loaded = 0;
    for _ in 0..3000 {
        let a = rng.usize(..seeds.len());
        let b = rng.usize(..seeds.len());
        let input = mutate(&mut rng, &seeds[a], &seeds[b]);
        let Ok(text) = std::str::from_utf8(&input) else {
            continue;
        };
        let mut c = Compiler::default();
        for d in parse_documents(text).into_iter().flatten() {
            c.add(d);
        }
        let (set, _) = c.compile();
        loaded += set.detection_count();
        let mut hits = Vec::new();
        set.scanner().scan(&event, &mut hits);
    }
    assert!(
        loaded > 100,
        "mutations too destructive to exercise the compiler ({loaded} loaded)"
    );
}
