//! Helpers for tests in other crates (feature `testing`): not part of the product.

/// `seed` with one to three random edits: a byte replaced by JSON punctuation or a letter,
/// the text cut, a random byte inserted, or a stretch of up to `splice_max` bytes of `seed`
/// copied in. Mutation tests compare a fast reader with the tree on what comes out.
pub fn mutate(rng: &mut fastrand::Rng, seed: &[u8], splice_max: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"{}[]\",:.\\a1 ";
    let mut v = seed.to_vec();
    for _ in 0..rng.usize(1..4) {
        let i = rng.usize(..v.len());
        match rng.u32(0..4) {
            0 => v[i] = ALPHABET[rng.usize(..ALPHABET.len())],
            1 => v.truncate(i.max(1)),
            2 => v.insert(i, rng.u8(..)),
            _ => {
                let j = rng.usize(..seed.len());
                let k = (j + rng.usize(..splice_max)).min(seed.len());
                v.splice(i..i, seed[j..k].iter().copied());
            }
        }
    }
    v
}

/// A fresh, empty scratch directory `<temp>/<prefix>-<pid>-<tag>` for one test.
///
/// The first call with a `prefix` in a process also removes the `<prefix>-<pid>-…`
/// directories left by test processes of that prefix that have exited: test runs do not pile
/// up in the temporary directory, and the files of a failed run stay for inspection until
/// the next run.
pub fn scratch_dir(prefix: &str, tag: &str) -> std::path::PathBuf {
    static SWEPT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let tmp = std::env::temp_dir();
    let mut swept = SWEPT.lock().unwrap_or_else(|e| e.into_inner());
    if !swept.iter().any(|p| p == prefix) {
        swept.push(prefix.to_string());
        sweep(&tmp, prefix);
    }
    drop(swept);
    let p = tmp.join(format!("{prefix}-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p)
        .unwrap_or_else(|e| panic!("creating scratch directory {}: {e}", p.display()));
    p
}

/// Removes `<prefix>-<pid>-…` directories in `tmp` whose process no longer runs.
fn sweep(tmp: &std::path::Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let me = std::process::id();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix)?.strip_prefix('-'))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        if pid != me && gone && e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_dirs_of_exited_processes_are_swept_and_live_ones_kept() {
        let tmp = std::env::temp_dir();
        let prefix = format!("mamori-sweeptest-{}", std::process::id());
        // A pid above the kernel's limit (pid_max is at most 2^22) never runs.
        let dead = tmp.join(format!("{prefix}-4294967-old"));
        let live = tmp.join(format!("{prefix}-1-init"));
        let other = tmp.join(format!("{prefix}x-4294967-other"));
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
        }
        let mine = scratch_dir(&prefix, "new");
        assert!(mine.is_dir() && std::fs::read_dir(&mine).unwrap().next().is_none());
        assert!(!dead.exists(), "a directory of an exited process was kept");
        assert!(
            live.exists(),
            "a directory of a running process (pid 1) was removed"
        );
        assert!(other.exists(), "a directory of another prefix was removed");
        for d in [&live, &other, &mine] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}
