//! Execution blocking by SHA-256, in the kernel's exec path.
//!
//! While the blocklist is not empty, a fanotify group of class `FAN_CLASS_CONTENT` holds a
//! `FAN_OPEN_EXEC_PERM` mark on every file-holding filesystem: the kernel stops each
//! `execve` (and each `mmap` of a file for execution by the loader) until this thread
//! answers. The answer is `FAN_DENY` when the file's SHA-256 is on the blocklist and not on
//! the allowlist, `FAN_ALLOW` otherwise; the caller's `execve` then fails with `EPERM`. Hashes
//! are cached by (device, inode, size, modification and change times), so a file is read once
//! until it changes. Blocking works without the server: the list is kept on disk and loaded
//! when the agent starts. The agent's own program is never blocked. With an empty list no
//! group exists and execs cost nothing.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use nix::sys::fanotify::{EventFFlags, Fanotify, FanotifyResponse, InitFlags, MaskFlags, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::RespondError;
use crate::quarantine::hex;

/// The lists in force.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lists {
    /// Increases with every change on the server.
    pub version: u64,
    /// SHA-256 (lowercase hex) that must not execute.
    pub block: HashSet<String>,
    /// SHA-256 never blocked.
    pub allow: HashSet<String>,
}

/// An execution that was prevented.
#[derive(Debug, Clone, PartialEq)]
pub struct Prevented {
    /// The file that was to run.
    pub path: String,
    /// Its SHA-256.
    pub sha256: String,
    /// The process that tried (before the exec: its old program).
    pub pid: u32,
    /// That process's program.
    pub caller: String,
    /// Its command line.
    pub caller_command_line: String,
    /// Its real user id.
    pub uid: u32,
}

type Report = Arc<dyn Fn(Prevented) + Send + Sync>;

/// The blocker: the lists (kept in `blocklist.json`) and the enforcing thread.
pub struct Blocker {
    path: PathBuf,
    lists: Arc<RwLock<Lists>>,
    report: Report,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// Execs answered, denied.
    pub stats: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>,
}

impl std::fmt::Debug for Blocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blocker")
            .field("path", &self.path)
            .field("enforcing", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

fn valid_hash(h: &str) -> bool {
    h.len() == 64
        && h.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

impl Blocker {
    /// Loads the lists kept in `dir` and enforces them if any hash is blocked; every
    /// prevention is given to `report`.
    pub fn open(dir: &Path, report: Report) -> Result<Blocker, RespondError> {
        let path = dir.join("blocklist.json");
        let lists = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| RespondError::Failed(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Lists::default(),
            Err(e) => return Err(RespondError::Failed(format!("{}: {e}", path.display()))),
        };
        let mut b = Blocker {
            path,
            lists: Arc::new(RwLock::new(lists)),
            report,
            running: None,
            stats: Arc::default(),
        };
        b.enforce()?;
        Ok(b)
    }

    /// The lists in force.
    pub fn lists(&self) -> Lists {
        self.lists.read().map(|l| l.clone()).unwrap_or_default()
    }

    /// Replaces the lists (an older version than the one in force is ignored).
    pub fn set(&mut self, new: Lists) -> Result<serde_json::Value, RespondError> {
        if let Some(bad) = new.block.iter().chain(&new.allow).find(|h| !valid_hash(h)) {
            return Err(RespondError::Refused(format!(
                "{bad:?} is not a SHA-256 (64 lowercase hex digits)"
            )));
        }
        let current = self.lists();
        if new.version < current.version {
            return Ok(json!({"version": current.version, "ignored_older": new.version}));
        }
        let tmp = self.path.with_extension("tmp");
        let body = serde_json::to_vec(&new).map_err(|e| RespondError::Failed(e.to_string()))?;
        std::fs::write(&tmp, body)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| RespondError::Failed(format!("{}: {e}", self.path.display())))?;
        if let Ok(mut l) = self.lists.write() {
            *l = new.clone();
        }
        self.enforce()?;
        Ok(
            json!({"version": new.version, "blocked": new.block.len(), "allowed": new.allow.len(),
            "enforcing": self.running.is_some()}),
        )
    }

    /// Starts or stops the enforcing thread to match the lists.
    fn enforce(&mut self) -> Result<(), RespondError> {
        let wanted = !self.lists().block.is_empty();
        match (&self.running, wanted) {
            (None, true) => {
                let group = Fanotify::init(
                    InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
                    EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
                )
                .map_err(|e| {
                    RespondError::Unavailable(format!(
                        "fanotify permission events (needs CAP_SYS_ADMIN and CONFIG_FANOTIFY_ACCESS_PERMISSIONS): {e}"
                    ))
                })?;
                mamori_sensor::fanotify::mark_filesystems(&group, MaskFlags::FAN_OPEN_EXEC_PERM)
                    .map_err(|e| RespondError::Unavailable(e.to_string()))?;
                let stop = Arc::new(AtomicBool::new(false));
                let (lists, report, stats, stop2) = (
                    self.lists.clone(),
                    self.report.clone(),
                    self.stats.clone(),
                    stop.clone(),
                );
                let own = own_hash();
                let t = std::thread::Builder::new()
                    .name("mamori-exec-block".into())
                    .spawn(move || run(group, lists, report, stats, own, stop2))
                    .map_err(|e| RespondError::Failed(format!("starting the blocker: {e}")))?;
                self.running = Some((stop, t));
            }
            (Some(_), false) => {
                if let Some((stop, t)) = self.running.take() {
                    stop.store(true, Ordering::Relaxed);
                    let _ = t.join();
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Drop for Blocker {
    fn drop(&mut self) {
        if let Some((stop, t)) = self.running.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
    }
}

fn own_hash() -> Option<String> {
    std::fs::read("/proc/self/exe")
        .ok()
        .map(|b| hex(&Sha256::digest(&b)))
}

/// (device, inode, size, mtime ns, ctime ns): a file's identity and version.
type Key = (u64, u64, u64, i64, i64);

fn run(
    group: Fanotify,
    lists: Arc<RwLock<Lists>>,
    report: Report,
    stats: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>,
    own: Option<String>,
    stop: Arc<AtomicBool>,
) {
    let cache: Mutex<HashMap<Key, String>> = Mutex::new(HashMap::new());
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [nix::poll::PollFd::new(
            group.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, 200u16) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::error!("exec blocker: poll: {e}");
                return;
            }
        }
        let events = match group.read_events() {
            Ok(e) => e,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!("exec blocker: read: {e}");
                return;
            }
        };
        for ev in events {
            let Some(fd) = ev.fd() else { continue };
            let mut verdict = Response::FAN_ALLOW;
            if ev.mask().contains(MaskFlags::FAN_OPEN_EXEC_PERM)
                && let Some(hash) = hash_of(fd, &cache)
            {
                let blocked = lists
                    .read()
                    .is_ok_and(|l| l.block.contains(&hash) && !l.allow.contains(&hash));
                if blocked && own.as_deref() != Some(&hash) {
                    verdict = Response::FAN_DENY;
                    let pid = ev.pid() as u32;
                    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    let caller = std::fs::read_link(format!("/proc/{pid}/exe"))
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|b| {
                            b.split(|&c| c == 0)
                                .filter(|a| !a.is_empty())
                                .map(|a| String::from_utf8_lossy(a).into_owned())
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    let uid = std::fs::metadata(format!("/proc/{pid}"))
                        .map(|m| m.uid())
                        .unwrap_or(u32::MAX);
                    report(Prevented {
                        path,
                        sha256: hash,
                        pid,
                        caller,
                        caller_command_line: cmd,
                        uid,
                    });
                    stats.1.fetch_add(1, Ordering::Relaxed);
                }
            }
            stats.0.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = group.write_response(FanotifyResponse::new(fd, verdict)) {
                tracing::warn!("exec blocker: answering the kernel: {e}");
            }
        }
    }
}

/// SHA-256 of the file behind `fd`, cached by its identity and version.
fn hash_of(fd: std::os::fd::BorrowedFd<'_>, cache: &Mutex<HashMap<Key, String>>) -> Option<String> {
    // fstat on the event's descriptor: no copy of it unless the file must be read.
    let m = nix::sys::stat::fstat(fd).ok()?;
    if m.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG {
        return None;
    }
    let key = (
        m.st_dev,
        m.st_ino,
        m.st_size as u64,
        m.st_mtime * 1_000_000_000 + m.st_mtime_nsec,
        m.st_ctime * 1_000_000_000 + m.st_ctime_nsec,
    );
    if let Some(h) = cache.lock().ok()?.get(&key) {
        return Some(h.clone());
    }
    let mut f = std::fs::File::from(fd.try_clone_to_owned().ok()?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let h = hex(&hasher.finalize());
    if let Ok(mut c) = cache.lock() {
        if c.len() > 100_000 {
            c.clear();
        }
        c.insert(key, h.clone());
    }
    Some(h)
}
