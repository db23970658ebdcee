//! SHA-256 of executed files, cached by (device, inode, size, mtime, ctime) so that a binary
//! run a thousand times is read once, and a binary replaced in place is read again. Files
//! larger than [`MAX_INLINE_BYTES`] are hashed lazily by a background thread (when one is
//! started), which reports each result as a [`Hashed`] event so that the exec event is not
//! held up and the hash still reaches the server.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

use sha2::{Digest, Sha256};

/// Files larger than this are not hashed inline: in the background, or not at all.
pub const MAX_INLINE_BYTES: u64 = 8 << 20;
/// Files larger than this are not hashed at all.
pub const MAX_BYTES: u64 = 1 << 30;
/// Background jobs queued at most (beyond, a large file goes without a hash, counted).
const LAZY_QUEUE: usize = 256;

/// A hash computed in the background for a process whose exec event went out without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    /// The cache key, so the result is remembered.
    pub key: (u64, u64, u64, i64, i64),
    /// The process that executed the file.
    pub pid: u32,
    /// Its entity id.
    pub entity_id: String,
    /// The executed file.
    pub executable: String,
    /// Lowercase hex SHA-256.
    pub sha256: String,
}

struct Job {
    key: Key,
    path: String,
    fallback: String,
    pid: u32,
    entity_id: String,
}

/// Who executed a file, for a background job's report.
#[derive(Debug, Clone, Copy)]
pub struct Exec<'a> {
    /// Process id.
    pub pid: u32,
    /// Entity id.
    pub entity_id: &'a str,
    /// The executable as reported.
    pub executable: &'a str,
}
/// Cache entries kept (oldest dropped beyond).
const CACHE_MAX: usize = 16_384;

type Key = (u64, u64, u64, i64, i64);

/// Hashes executables with a cache.
#[derive(Default)]
pub struct Hasher {
    cache: HashMap<Key, String>,
    lazy: Option<std::sync::mpsc::SyncSender<Job>>,
    in_flight: std::collections::HashSet<Key>,
    /// Files hashed (cache misses).
    pub hashed: u64,
    /// Cache hits.
    pub hits: u64,
    /// Files skipped: larger than [`MAX_BYTES`], or too large to hash inline with no
    /// background queue room.
    pub too_large: u64,
    /// Files handed to the background thread.
    pub deferred: u64,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("cached", &self.cache.len())
            .field("hashed", &self.hashed)
            .field("hits", &self.hits)
            .field("too_large", &self.too_large)
            .field("deferred", &self.deferred)
            .finish()
    }
}

fn hash_file(path: &str, max: u64) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    if f.metadata().ok()?.len() > max {
        return None;
    }
    let mut f = f;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Hasher {
    /// Starts the background thread for large files; each result is passed to `report`.
    pub fn with_background(report: impl Fn(Hashed) -> bool + Send + 'static) -> Hasher {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(LAZY_QUEUE);
        std::thread::spawn(move || {
            for job in rx {
                // The file as the process saw it, or by its path once the process is gone.
                let Some(sha256) =
                    hash_file(&job.path, MAX_BYTES).or_else(|| hash_file(&job.fallback, MAX_BYTES))
                else {
                    continue;
                };
                let done = Hashed {
                    key: job.key,
                    pid: job.pid,
                    entity_id: job.entity_id,
                    executable: job.fallback,
                    sha256,
                };
                if !report(done) {
                    return;
                }
            }
        });
        Hasher {
            lazy: Some(tx),
            ..Hasher::default()
        }
    }

    /// Remembers a hash computed in the background.
    pub fn remember(&mut self, h: &Hashed) {
        self.in_flight.remove(&h.key);
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(h.key, h.sha256.clone());
    }

    /// The SHA-256 of an executed file whose identity the kernel reported: a cache hit costs
    /// no syscall. On a miss the file is read through `path` (and the kernel key cached); a
    /// large file is handed to the background thread and `None` returned. A key without
    /// times (kernels whose inode layout the sensor cannot read) is not trusted.
    pub fn sha256_of(
        &mut self,
        key: Option<(u64, u64, i64, i64, i64)>,
        path: &str,
        exec: Exec<'_>,
    ) -> Option<String> {
        let Some((dev, ino, size, mtime, ctime)) = key.filter(|k| k.3 != 0 || k.4 != 0) else {
            return self.sha256(path);
        };
        let k = (dev | (1 << 63), ino, size as u64, mtime, ctime);
        if let Some(h) = self.cache.get(&k) {
            self.hits += 1;
            return Some(h.clone());
        }
        if size as u64 > MAX_INLINE_BYTES {
            let queued = size as u64 <= MAX_BYTES
                && (self.in_flight.contains(&k)
                    || self.lazy.as_ref().is_some_and(|tx| {
                        tx.try_send(Job {
                            key: k,
                            path: path.to_string(),
                            fallback: exec.executable.to_string(),
                            pid: exec.pid,
                            entity_id: exec.entity_id.to_string(),
                        })
                        .is_ok()
                    }));
            if queued {
                self.in_flight.insert(k);
                self.deferred += 1;
            } else {
                self.too_large += 1;
            }
            return None;
        }
        let h = self.sha256(path)?;
        self.cache.insert(k, h.clone());
        Some(h)
    }

    /// The lowercase hex SHA-256 of `path`, or `None` when it cannot be read or is too large.
    pub fn sha256(&mut self, path: &str) -> Option<String> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_file() {
            return None;
        }
        let key = (
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
            meta.ctime(),
        );
        if let Some(h) = self.cache.get(&key) {
            self.hits += 1;
            return Some(h.clone());
        }
        if meta.size() > MAX_INLINE_BYTES {
            self.too_large += 1;
            return None;
        }
        let hex = hash_file(path, MAX_INLINE_BYTES)?;
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(key, hex.clone());
        self.hashed += 1;
        Some(hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_caches_and_notices_changes() {
        let p = std::env::temp_dir().join(format!("mamori-hash-{}", std::process::id()));
        std::fs::write(&p, b"abc").unwrap();
        let mut h = Hasher::default();
        let path = p.to_str().unwrap();
        let want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(h.sha256(path).as_deref(), Some(want));
        assert_eq!(h.sha256(path).as_deref(), Some(want));
        assert_eq!((h.hashed, h.hits), (1, 1));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"abcd").unwrap();
        assert_ne!(
            h.sha256(path).as_deref(),
            Some(want),
            "a rewritten file is hashed again"
        );
        assert_eq!(h.sha256("/nonexistent/file"), None);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn large_files_are_hashed_in_the_background() {
        let p = std::env::temp_dir().join(format!("mamori-hash-big-{}", std::process::id()));
        std::fs::write(&p, vec![7u8; (MAX_INLINE_BYTES + 1) as usize]).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut h = Hasher::with_background(move |d| tx.send(d).is_ok());
        let path = p.to_str().unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        let key = Some((meta.dev(), meta.ino(), meta.size() as i64, 1, 1));
        let who = Exec {
            pid: 42,
            entity_id: "b:42:1",
            executable: path,
        };
        assert_eq!(h.sha256_of(key, path, who), None, "not inline");
        assert_eq!(h.sha256_of(key, path, who), None, "queued once");
        assert_eq!(h.deferred, 2);
        let done = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!((done.pid, done.entity_id.as_str()), (42, "b:42:1"));
        assert_eq!(done.sha256.len(), 64);
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "hashed once"
        );
        h.remember(&done);
        assert_eq!(
            h.sha256_of(key, path, who),
            Some(done.sha256.clone()),
            "then cached"
        );
        let _ = std::fs::remove_file(&p);
    }
}
