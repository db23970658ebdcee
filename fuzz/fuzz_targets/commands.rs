//! What a response command carries onto a host: an allowlist entry ends up in an nftables
//! script, and the whole command is JSON. Invariant: no panic; an entry that parses prints
//! back to itself and adds no statement, chain or table to the script.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let server = ["10.0.0.1:7443".parse().unwrap()];
    if let Ok(a) = text.parse::<mamori_wire::command::Allow>() {
        assert_eq!(a.to_string().parse::<mamori_wire::command::Allow>().as_ref(), Ok(&a));
        let shape = |s: &str| (s.matches(';').count(), s.matches('{').count());
        let base = shape(&mamori_respond::isolate::ruleset(&server, &[]).unwrap());
        if let Ok(s) = mamori_respond::isolate::ruleset(&server, &[a]) {
            assert_eq!(shape(&s), base);
        }
    }
    let _ = serde_json::from_slice::<mamori_wire::command::Command>(data);
});
