//! SHA-256 of executed files, cached by (device, inode, size, mtime, ctime) so that a binary
//! run a thousand times is read once, and a binary replaced in place is read again.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;

use sha2::{Digest, Sha256};

/// Files larger than this are not hashed inline (reported without a hash).
pub const MAX_INLINE_BYTES: u64 = 64 << 20;
/// Cache entries kept (oldest dropped beyond).
const CACHE_MAX: usize = 16_384;

type Key = (u64, u64, u64, i64, i64);

/// Hashes executables with a cache.
#[derive(Debug, Default)]
pub struct Hasher {
    cache: HashMap<Key, String>,
    /// Files hashed (cache misses).
    pub hashed: u64,
    /// Cache hits.
    pub hits: u64,
    /// Files skipped because they are larger than [`MAX_INLINE_BYTES`].
    pub too_large: u64,
}

impl Hasher {
    /// The SHA-256 of an executed file whose identity the kernel reported: a cache hit costs
    /// no syscall. On a miss the file is read through `path` (and the kernel key cached). A
    /// key without times (kernels whose inode layout the sensor cannot read) is not trusted.
    pub fn sha256_of(
        &mut self,
        key: Option<(u64, u64, i64, i64, i64)>,
        path: &str,
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
            self.too_large += 1;
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
        let mut f = std::fs::File::open(path).ok()?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = f.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
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
}
