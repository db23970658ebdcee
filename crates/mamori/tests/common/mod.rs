//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test file uses some of them

use std::path::PathBuf;

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        .unwrap_or(false)
}

/// Returns false (after saying so loudly) when the privileged test `name` cannot run here;
/// under CI that is a failure.
pub fn can_run(name: &str, needs: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!("SKIPPED: {name} needs root ({needs})");
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{name} was skipped under CI: CI must run the privileged tests as root"
    );
    false
}

/// A fresh scratch directory `mamori-<suite>-<pid>-<tag>` under the temporary directory
/// (those of earlier runs are swept: see `mamori_model::testing::scratch_dir`).
pub fn tempdir(suite: &str, tag: &str) -> PathBuf {
    mamori_model::testing::scratch_dir(&format!("mamori-{suite}"), tag)
}

/// Installs the SigmaHQ corpus from `../shared/data/sigma` into the Mamori data directory
/// `data` (the default rules of a server and of `mamori up` there).
pub fn install_sigma(data: &std::path::Path) {
    let sigma = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/sigma");
    assert!(
        sigma.join("rules").is_dir(),
        "the SigmaHQ corpus is expected in ../shared/data/sigma"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mamori"))
        .env("MAMORI_DATA_DIR", data)
        .args(["rules", "install", "--from"])
        .arg(&sigma)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
