//! File fallback: fanotify, for when the BPF programs cannot load.
//!
//! Every mounted filesystem that holds files (not `/proc`, `/sys` and other kernel
//! interfaces) gets a filesystem-wide mark for `FAN_CLOSE_WRITE`: a file that was open for
//! writing has been closed. The event carries an open descriptor of the file (its path comes
//! from `/proc/self/fd`) and the pid of the writer. What fanotify cannot give without file
//! handles (which need `open_by_handle_at`): deletes, renames, chmod and chown; the agent's
//! health report lists them as missing in this mode.

use std::os::fd::AsRawFd;

use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};

use crate::SensorError;
use crate::bpf::{FileEvent, FileOp};

/// Filesystem types that are kernel interfaces or virtual, not files worth watching.
const PSEUDO: [&str; 17] = [
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "devtmpfs",
    "tracefs",
    "debugfs",
    "bpf",
    "securityfs",
    "mqueue",
    "hugetlbfs",
    "pstore",
    "configfs",
    "fusectl",
    "autofs",
    "nsfs",
];

/// A fanotify group watching every filesystem for completed writes.
pub struct FileWatcher {
    group: Fanotify,
    /// Mount points marked.
    pub marked: Vec<String>,
}

impl FileWatcher {
    /// Creates the group and marks every file-holding filesystem.
    pub fn open() -> Result<FileWatcher, SensorError> {
        let err =
            |what: &str, e: nix::Error| SensorError::Unsupported(format!("fanotify: {what}: {e}"));
        let group = Fanotify::init(
            InitFlags::FAN_CLASS_NOTIF | InitFlags::FAN_CLOEXEC,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(|e| err("init (needs CAP_SYS_ADMIN)", e))?;
        let marked = mark_filesystems(&group, MaskFlags::FAN_CLOSE_WRITE)?;
        Ok(FileWatcher { group, marked })
    }

    /// Blocks until events arrive and returns them as file writes; events of `skip_pid`
    /// (the agent itself) are left out.
    pub fn next_batch(&self, skip_pid: u32) -> Result<Vec<FileEvent>, SensorError> {
        let events = match self.group.read_events() {
            Ok(ev) => ev,
            Err(nix::errno::Errno::EINTR) => return Ok(Vec::new()),
            Err(e) => return Err(SensorError::Unsupported(format!("fanotify: read: {e}"))),
        };
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        Ok(events
            .iter()
            .filter(|e| e.pid() as u32 != skip_pid)
            .filter_map(|e| {
                let fd = e.fd()?;
                let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
                let (uid, gid) = ids_of(e.pid() as u32);
                Some(FileEvent {
                    op: FileOp::Write,
                    pid: e.pid() as u32,
                    uid,
                    gid,
                    dirfd: -100,
                    dirfd2: -100,
                    flags: 0,
                    comm: String::new(),
                    path: path.display().to_string(),
                    path2: String::new(),
                    ts_ns: now,
                    ret: 0,
                })
            })
            .collect())
    }
}

/// Marks every file-holding filesystem (one mark per filesystem, however often it is
/// mounted) for `mask`; returns the mount points marked.
pub fn mark_filesystems(group: &Fanotify, mask: MaskFlags) -> Result<Vec<String>, SensorError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| SensorError::Unsupported(format!("reading /proc/self/mounts: {e}")))?;
    let mut marked = Vec::new();
    let mut devices = std::collections::HashSet::new();
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_dev), Some(point), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        // Mount points with spaces are octal-escaped (\040).
        let point = point.replace("\\040", " ");
        if PSEUDO.contains(&fstype) {
            continue;
        }
        // One mark per filesystem, however many times it is mounted.
        let dev = std::fs::metadata(&point).map(|m| std::os::unix::fs::MetadataExt::dev(&m));
        if !dev.is_ok_and(|d| devices.insert(d)) {
            continue;
        }
        let cwd = std::fs::File::open("/")
            .map_err(|e| SensorError::Unsupported(format!("fanotify: opening /: {e}")))?;
        if group
            .mark(
                MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
                mask,
                &cwd,
                Some(point.as_str()),
            )
            .is_ok()
        {
            marked.push(point);
        }
    }
    if marked.is_empty() {
        return Err(SensorError::Unsupported(
            "fanotify: no filesystem could be marked".into(),
        ));
    }
    Ok(marked)
}

/// Real user and group of a process, from `/proc` (best effort: the writer may be gone, then
/// `u32::MAX`, which renders as an unknown id).
fn ids_of(pid: u32) -> (u32, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let id = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX)
    };
    (id("Uid:"), id("Gid:"))
}
