//! Quarantine: a file moved into the agent's store, encrypted so that it cannot run or be
//! opened by accident, with what is needed to put it back exactly.
//!
//! An item is two files in the quarantine directory (mode 0700): `<id>.bin`, the content
//! sealed with ChaCha20-Poly1305 under a key kept next to it (mode 0600, made on first use),
//! and `<id>.json`, the metadata (path, owner, mode, times, size, SHA-256). The original is
//! removed only after both are written and synced. Restore decrypts, checks the SHA-256,
//! writes the file beside its old path and renames it into place with its owner, mode and
//! modification time; it refuses to overwrite a file that appeared at that path since.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::RespondError;

/// Largest file quarantined (it is read into memory to be sealed).
pub const MAX_BYTES: u64 = 256 << 20;

/// What is kept about a quarantined file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Item id (`q-…`).
    pub id: String,
    /// Where it was.
    pub path: String,
    /// Owner and group ids.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Permission bits (including setuid and friends).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content (hex).
    pub sha256: String,
    /// Modification time (seconds and nanoseconds since the epoch).
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: i64,
    /// When it was quarantined (Unix milliseconds).
    pub quarantined_ms: i64,
}

/// Paths never quarantined: the system would not boot or the agent would break.
const CRITICAL_PREFIXES: [&str; 6] = [
    "/proc/",
    "/sys/",
    "/dev/",
    "/boot/",
    "/run/",
    "/lib/modules/",
];
const CRITICAL_FILES: [&str; 10] = [
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/gshadow",
    "/etc/sudoers",
    "/etc/fstab",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/ld.so.cache",
];

/// Why `path` must not be quarantined, if it must not.
pub fn critical(path: &Path, protected: &[PathBuf]) -> Option<String> {
    let s = path.to_string_lossy();
    if let Some(p) = CRITICAL_PREFIXES.iter().find(|p| s.starts_with(*p)) {
        return Some(format!("{s} is under {p}, which the system needs"));
    }
    if CRITICAL_FILES.contains(&s.as_ref()) {
        return Some(format!("{s} is a system file the host cannot run without"));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if name.starts_with("ld-linux") || name.starts_with("libc.so") || name.starts_with("libc-") {
        return Some(format!("{s} is the C library or dynamic loader"));
    }
    // PID 1's program, the agent's own program and data.
    for p in ["/proc/1/exe", "/proc/self/exe"] {
        if std::fs::canonicalize(p).is_ok_and(|e| e == path) {
            return Some(format!(
                "{s} is the program of {}",
                if p.contains('1') {
                    "PID 1"
                } else {
                    "the Mamori agent"
                }
            ));
        }
    }
    if let Some(p) = protected.iter().find(|p| path.starts_with(p)) {
        return Some(format!(
            "{s} is under {}, which belongs to the Mamori agent",
            p.display()
        ));
    }
    None
}

/// The quarantine store.
pub struct Quarantine {
    dir: PathBuf,
    key: LessSafeKey,
    protected: Vec<PathBuf>,
}

impl std::fmt::Debug for Quarantine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quarantine")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RespondError + '_ {
    move |e| RespondError::Failed(format!("{}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<(), RespondError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Quarantine {
    /// Opens (creating) the store in `dir`; files under `protected` are never quarantined.
    pub fn open(dir: &Path, protected: Vec<PathBuf>) -> Result<Quarantine, RespondError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let key_path = dir.join("key");
        let key = match std::fs::read(&key_path) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = vec![0u8; 32];
                SystemRandom::new()
                    .fill(&mut k)
                    .map_err(|_| RespondError::Failed("no randomness".into()))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&key_path)
                    .map_err(io(&key_path))?;
                f.write_all(&k)
                    .and_then(|_| f.sync_all())
                    .map_err(io(&key_path))?;
                k
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key)
            .map_err(|_| RespondError::Failed(format!("{}: not a key", key_path.display())))?;
        Ok(Quarantine {
            dir: dir.to_path_buf(),
            key: LessSafeKey::new(key),
            protected,
        })
    }

    fn item_paths(&self, id: &str) -> Result<(PathBuf, PathBuf), RespondError> {
        if !id.starts_with("q-") || !id[2..].chars().all(|c| c.is_ascii_hexdigit()) || id.len() > 40
        {
            return Err(RespondError::Refused(format!(
                "{id:?} is not a quarantine item id"
            )));
        }
        Ok((
            self.dir.join(format!("{id}.bin")),
            self.dir.join(format!("{id}.json")),
        ))
    }

    /// Moves `path` into the quarantine.
    pub fn quarantine(&self, path: &str) -> Result<Item, RespondError> {
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(RespondError::Refused(format!(
                "{path:?} is not an absolute path"
            )));
        }
        let real =
            std::fs::canonicalize(p).map_err(|e| RespondError::NotFound(format!("{path}: {e}")))?;
        if real != p {
            return Err(RespondError::Refused(format!(
                "{path} is (or passes through) a symbolic link to {}; name the file itself",
                real.display()
            )));
        }
        if let Some(why) = critical(p, &self.protected) {
            return Err(RespondError::Refused(format!("will not quarantine: {why}")));
        }
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(p)
            .map_err(io(p))?;
        let meta = f.metadata().map_err(io(p))?;
        if !meta.is_file() {
            return Err(RespondError::Refused(format!(
                "{path} is not a regular file"
            )));
        }
        if meta.len() > MAX_BYTES {
            return Err(RespondError::Refused(format!(
                "{path} is {} bytes; the quarantine takes files up to {MAX_BYTES}",
                meta.len()
            )));
        }
        let mut content = Vec::with_capacity(meta.len() as usize);
        std::io::Read::read_to_end(&mut f, &mut content).map_err(io(p))?;
        let mut id_bytes = [0u8; 8];
        SystemRandom::new()
            .fill(&mut id_bytes)
            .map_err(|_| RespondError::Failed("no randomness".into()))?;
        let id = format!("q-{}", hex(&id_bytes));
        let item = Item {
            id: id.clone(),
            path: path.to_string(),
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
            size: content.len() as u64,
            sha256: hex(&Sha256::digest(&content)),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            quarantined_ms: now_ms(),
        };
        let (bin, json) = self.item_paths(&id)?;
        let mut nonce = [0u8; 12];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| RespondError::Failed("no randomness".into()))?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(item.sha256.as_bytes()),
                &mut content,
            )
            .map_err(|_| RespondError::Failed("sealing failed".into()))?;
        write_synced(&bin, &[&nonce, &content])?;
        let meta_json =
            serde_json::to_vec_pretty(&item).map_err(|e| RespondError::Failed(e.to_string()))?;
        write_synced(&json, &[&meta_json])?;
        sync_dir(&self.dir)?;
        std::fs::remove_file(p).map_err(io(p))?;
        if let Some(parent) = p.parent() {
            sync_dir(parent)?;
        }
        Ok(item)
    }

    /// Every item, oldest first.
    pub fn list(&self) -> Result<Vec<Item>, RespondError> {
        let mut items = Vec::new();
        for e in std::fs::read_dir(&self.dir)
            .map_err(io(&self.dir))?
            .flatten()
        {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") {
                let body = std::fs::read(&path).map_err(io(&path))?;
                match serde_json::from_slice::<Item>(&body) {
                    Ok(i) => items.push(i),
                    Err(e) => {
                        tracing::warn!("{}: unreadable quarantine record: {e}", path.display())
                    }
                }
            }
        }
        items.sort_by_key(|i| i.quarantined_ms);
        Ok(items)
    }

    fn item(&self, id: &str) -> Result<Item, RespondError> {
        let (_, json) = self.item_paths(id)?;
        let body = std::fs::read(&json)
            .map_err(|_| RespondError::NotFound(format!("no quarantine item {id}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| RespondError::Failed(format!("{}: {e}", json.display())))
    }

    /// Puts an item back exactly as it was, and removes it from the quarantine.
    pub fn restore(&self, id: &str) -> Result<Item, RespondError> {
        let item = self.item(id)?;
        let (bin, json) = self.item_paths(id)?;
        let sealed = std::fs::read(&bin).map_err(io(&bin))?;
        if sealed.len() < 12 {
            return Err(RespondError::Failed(format!(
                "{}: truncated",
                bin.display()
            )));
        }
        let (nonce, rest) = sealed.split_at(12);
        let mut content = rest.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| RespondError::Failed("bad nonce".into()))?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(item.sha256.as_bytes()), &mut content)
            .map_err(|_| {
                RespondError::Failed(format!(
                    "{}: does not decrypt (damaged or another key)",
                    bin.display()
                ))
            })?;
        if hex(&Sha256::digest(&*plain)) != item.sha256 {
            return Err(RespondError::Failed(format!(
                "{id}: content does not match its SHA-256"
            )));
        }
        let target = Path::new(&item.path);
        if std::fs::symlink_metadata(target).is_ok() {
            return Err(RespondError::Refused(format!(
                "{} exists again; move it away before restoring",
                item.path
            )));
        }
        let parent = target
            .parent()
            .ok_or_else(|| RespondError::Failed(format!("{}: no parent directory", item.path)))?;
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let tmp = parent.join(format!(".{}.mamori-restore", item.id));
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(plain).map_err(io(&tmp))?;
            std::os::unix::fs::fchown(&f, Some(item.uid), Some(item.gid)).map_err(io(&tmp))?;
            f.set_permissions(std::fs::Permissions::from_mode(item.mode))
                .map_err(io(&tmp))?;
            let mtime = std::time::UNIX_EPOCH
                + std::time::Duration::new(item.mtime.max(0) as u64, item.mtime_nsec.max(0) as u32);
            f.set_modified(mtime).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, target).map_err(io(target))?;
        sync_dir(parent)?;
        std::fs::remove_file(&bin).map_err(io(&bin))?;
        std::fs::remove_file(&json).map_err(io(&json))?;
        sync_dir(&self.dir)?;
        Ok(item)
    }

    /// Deletes an item for good.
    pub fn delete(&self, id: &str) -> Result<Item, RespondError> {
        let item = self.item(id)?;
        let (bin, json) = self.item_paths(id)?;
        std::fs::remove_file(&bin).map_err(io(&bin))?;
        std::fs::remove_file(&json).map_err(io(&json))?;
        sync_dir(&self.dir)?;
        Ok(item)
    }
}

fn write_synced(path: &Path, parts: &[&[u8]]) -> Result<(), RespondError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    for p in parts {
        f.write_all(p).map_err(io(path))?;
    }
    f.sync_all().map_err(io(path))
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
