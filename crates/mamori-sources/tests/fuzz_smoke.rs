//! Mutation smoke test of the readers (the coverage-guided target lives in `fuzz/`): real
//! EVTX and JSON samples with bytes flipped, cut and overwritten. Invariant: no panic, and
//! every record delivered is counted.

use std::path::Path;

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
    let mut rng = fastrand::Rng::with_seed(0x2545_F491_4F6C_DD1D);
    for round in 0..300 {
        let seed = if round % 3 == 0 { &json } else { &evtx };
        let mut v = seed.clone();
        for _ in 0..1 + rng.usize(..20) {
            match rng.usize(..3) {
                0 => {
                    let i = rng.usize(..v.len().max(1));
                    v[i] ^= 1 << rng.usize(..8);
                }
                1 => {
                    let cut = rng.usize(..v.len().max(1));
                    v.truncate(cut.max(8));
                }
                _ => {
                    let i = rng.usize(..v.len().max(1));
                    let n = rng.usize(..256).min(v.len() - i);
                    for b in &mut v[i..i + n] {
                        *b = rng.u8(..);
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
