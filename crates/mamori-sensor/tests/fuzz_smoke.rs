//! Mutation smoke test of what reaches the sensor from outside its control (the
//! coverage-guided target is `fuzz/fuzz_targets/sensor_parsers.rs`): a DNS answer, a PAM audit
//! record and ring-buffer records with bytes flipped, cut and overwritten. Invariant: no
//! panic, and a parsed DNS message never holds more records than the parser's bound.

use mamori_sensor::{audit, bpf::SensorEvent, dns};

#[test]
fn mutated_inputs_never_panic() {
    let answer = dns::answer(
        &dns::query(7, "c2.example.com", 1),
        &[[10, 0, 0, 1], [10, 0, 0, 2]],
    );
    assert_eq!(dns::parse(&answer).unwrap().answers.len(), 2);
    let record = b"audit(1795690685.963:8): pid=10698 uid=65534 auid=4294967295 ses=4294967295 \
        msg='op=PAM:authentication grantors=? acct=\"root\" exe=\"/usr/bin/su\" hostname=? \
        addr=? terminal=pts/1 res=failed'"
        .to_vec();
    assert!(audit::parse(1100, std::str::from_utf8(&record).unwrap()).is_some());
    let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        for seed in [&answer, &record] {
            let mut v = seed.clone();
            for _ in 0..=rng.usize(..4) {
                match rng.usize(..3) {
                    0 => {
                        let i = rng.usize(..v.len().max(1));
                        v[i] ^= 1 << rng.usize(..8);
                    }
                    1 => v.truncate(rng.usize(..=v.len())),
                    _ => {
                        let i = rng.usize(..v.len().max(1));
                        v[i] = rng.u8(..);
                    }
                }
                if v.is_empty() {
                    break;
                }
            }
            if let Ok(m) = dns::parse(&v) {
                assert!(m.questions.len() <= 64 && m.answers.len() <= 64);
            }
            let text = String::from_utf8_lossy(&v);
            for t in [1100u16, 1105, 1112, 1123] {
                let _ = audit::parse(t, &text);
            }
            let _ = SensorEvent::decode(&v);
        }
    }
}
