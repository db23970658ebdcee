//! Mutation smoke test of what a command carries into the host (the coverage-guided target is
//! `fuzz/fuzz_targets/commands.rs`): allowlist entries and whole commands, mutated from valid
//! ones. Invariants: no panic; an allowlist entry that parses prints back to itself; and the
//! nftables script built from it has exactly the structure of a script without it (no entry
//! can add statements, chains or tables).

use mamori_wire::command::{Allow, Command};

const ALPHABET: &[u8] = b"0123456789abcdef.:/[] ;{}\"\\\n#-accept flush";

fn structure(script: &str) -> (usize, usize, usize) {
    (
        script.matches(';').count(),
        script.matches('{').count(),
        script.matches("table").count(),
    )
}

#[test]
fn mutated_allowlists_and_commands_never_escape() {
    let server = ["10.0.0.1:7443".parse().unwrap()];
    let base = structure(&mamori_respond::isolate::ruleset(&server, &[]).unwrap());
    let seeds = [
        "10.0.0.5",
        "10.0.0.0/24:53",
        "[fd00::1]:443",
        "[fd00::/64]",
        "192.168.1.1:22",
    ];
    let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
    let mut parsed = 0;
    for round in 0..20_000 {
        let mut v = seeds[round % seeds.len()].as_bytes().to_vec();
        for _ in 0..1 + rng.usize(..4) {
            let at = rng.usize(..=v.len());
            match rng.usize(..3) {
                0 if at < v.len() => v[at] = ALPHABET[rng.usize(..ALPHABET.len())],
                1 => v.insert(at.min(v.len()), ALPHABET[rng.usize(..ALPHABET.len())]),
                _ if at < v.len() => {
                    v.remove(at);
                }
                _ => {}
            }
        }
        let text = String::from_utf8_lossy(&v);
        let Ok(a) = text.parse::<Allow>() else {
            continue;
        };
        parsed += 1;
        assert_eq!(a.to_string().parse::<Allow>().as_ref(), Ok(&a), "{text:?}");
        if let Ok(script) = mamori_respond::isolate::ruleset(&server, std::slice::from_ref(&a)) {
            assert_eq!(
                structure(&script),
                base,
                "{text:?} changed the script:\n{script}"
            );
        }
    }
    assert!(
        parsed > 1000,
        "the mutations keep enough valid entries ({parsed})"
    );

    // Whole commands: mutated JSON never panics the parser.
    let cmd = r#"{"id":"cmd-1","agent_id":"agt-1","tenant":"default","action":{"type":"isolate","allow":[{"net":"10.0.0.5","port":53}]},"reason":"r","issued_by":"a","issued_at_ms":1,"expires_at_ms":2}"#;
    assert!(serde_json::from_str::<Command>(cmd).is_ok());
    for _ in 0..20_000 {
        let mut v = cmd.as_bytes().to_vec();
        for _ in 0..1 + rng.usize(..3) {
            let at = rng.usize(..v.len().max(1));
            v[at] = rng.u8(..);
        }
        let _ = serde_json::from_slice::<Command>(&v);
    }
}
