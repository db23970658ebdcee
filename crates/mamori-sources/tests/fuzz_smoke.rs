//! Mutation smoke test of the readers (the coverage-guided target lives in `fuzz/`): real
//! EVTX and JSON samples with bytes flipped, cut and overwritten. Invariant: no panic, and
//! every record delivered is counted.

use std::path::Path;

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
fn mutated_logs_never_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    let evtx = std::fs::read(root.join("evtx/DeepBlueCLI/many-events-application.evtx"))
        .unwrap_or_else(|e| panic!("shared test data missing in {}: {e}", root.display()));
    let dir = root.join(
        "sigma/regression_data/rules/windows/process_creation/proc_creation_win_driverquery_usage",
    );
    let json_file = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .expect("a JSON regression sample");
    let json = std::fs::read(json_file.path()).unwrap();
    let clean = mamori_sources::read_bytes(&evtx, &mut |_| {});
    assert!(clean.records > 100 && clean.errors == 0, "{clean:?}");
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for round in 0..300 {
        let seed = if round % 3 == 0 { &json } else { &evtx };
        let mut v = seed.clone();
        for _ in 0..1 + rng.below(20) {
            match rng.below(3) {
                0 => {
                    let i = rng.below(v.len());
                    v[i] ^= 1 << rng.below(8);
                }
                1 => {
                    let cut = rng.below(v.len());
                    v.truncate(cut.max(8));
                }
                _ => {
                    let i = rng.below(v.len());
                    let n = rng.below(256).min(v.len() - i);
                    for b in &mut v[i..i + n] {
                        *b = rng.next() as u8;
                    }
                }
            }
        }
        let mut n = 0u64;
        let stats = mamori_sources::read_bytes(&v, &mut |rec| {
            assert!(rec.event.data.is_object());
            n += 1;
        });
        assert_eq!(stats.records, n);
    }
}
