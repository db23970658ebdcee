//! Mutation smoke test of what reaches the sensor from outside its control (the
//! coverage-guided target is `fuzz/fuzz_targets/sensor_parsers.rs`): a DNS answer, a PAM audit
//! record and ring-buffer records with bytes flipped, cut and overwritten. Invariant: no
//! panic, and a parsed DNS message never holds more records than the parser's bound.

use mamori_sensor::{audit, bpf::SensorEvent, dns};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

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
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        for seed in [&answer, &record] {
            let mut v = seed.clone();
            for _ in 0..=rng.below(4) {
                match rng.below(3) {
                    0 => {
                        let i = rng.below(v.len());
                        v[i] ^= 1 << rng.below(8);
                    }
                    1 => v.truncate(rng.below(v.len() + 1)),
                    _ => {
                        let i = rng.below(v.len());
                        v[i] = rng.next() as u8;
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
