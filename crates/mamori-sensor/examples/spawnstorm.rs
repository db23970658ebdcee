//! Exec storm for the sensor benchmark: `spawnstorm N THREADS` runs N short processes
//! (`/bin/true`) from THREADS spawners and prints the rate.

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let threads: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..n / threads {
                    let status = std::process::Command::new("/bin/true")
                        .status()
                        .expect("spawn /bin/true");
                    assert!(status.success());
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} execs in {secs:.2}s = {:.0}/s",
        n / threads * threads,
        (n / threads * threads) as f64 / secs
    );
}
