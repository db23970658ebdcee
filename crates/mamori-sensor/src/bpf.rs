//! Loading the BPF programs and decoding their events.

use std::mem::MaybeUninit;
use std::time::Duration;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, RingBufferBuilder};

use crate::SensorError;
use crate::skel::SensorSkelBuilder;

/// Kind of a raw process event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A program was executed (`execve` completed).
    Exec,
    /// A process ended.
    Exit,
    /// A process was created (fork/clone of a new thread group).
    Fork,
}

/// What a network event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetAction {
    /// An outbound connect (TCP, or a connected UDP socket).
    Connect,
    /// A TCP socket started listening.
    Listen,
    /// An inbound TCP connection was established (attributed to the listening process).
    Accept,
    /// A UDP socket was bound to a port (UDP's way of listening).
    Bind,
}

impl NetAction {
    /// The ECS `event.action`.
    pub fn as_str(self) -> &'static str {
        match self {
            NetAction::Connect => "connect",
            NetAction::Listen => "listen",
            NetAction::Accept => "accept",
            NetAction::Bind => "bind",
        }
    }
}

/// A network event as the kernel reported it. Mirrors `struct sp_net_event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetEvent {
    /// What happened.
    pub action: NetAction,
    /// Process id.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Task name.
    pub comm: String,
    /// IP protocol number (6 TCP, 17 UDP).
    pub protocol: u32,
    /// Local address and port (listen, bind, accept).
    pub local: Option<std::net::SocketAddr>,
    /// Remote address and port (connect, accept).
    pub remote: Option<std::net::SocketAddr>,
    /// Event time, ns since boot.
    pub ts_ns: u64,
}

/// What a file event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOp {
    /// Opened with O_CREAT.
    Create,
    /// Opened for writing (or truncation) without O_CREAT.
    Write,
    /// unlink / unlinkat.
    Delete,
    /// rename / renameat / renameat2.
    Rename,
    /// chmod / fchmodat.
    Chmod,
    /// chown / lchown / fchownat.
    Chown,
    /// setuid / setreuid / setresuid (ids requested in `dirfd`, `dirfd2`, `flags`; -1: unchanged).
    SetUid,
    /// setgid / setregid / setresgid (same layout).
    SetGid,
    /// capset.
    Capset,
    /// ptrace attach or seize (`dirfd`: request, `dirfd2`: target pid).
    Ptrace,
    /// init_module / finit_module (`dirfd`: file descriptor of the module, or -1).
    ModuleLoad,
    /// delete_module (`path`: module name).
    ModuleUnload,
    /// chdir (`path`) or fchdir (`dirfd`): keeps the process table's working directories
    /// right for resolving relative paths; not reported as an event.
    Chdir,
}

impl FileOp {
    /// Whether this is a file change (as opposed to a privilege, debug or module call).
    pub fn is_file(self) -> bool {
        matches!(
            self,
            FileOp::Create
                | FileOp::Write
                | FileOp::Delete
                | FileOp::Rename
                | FileOp::Chmod
                | FileOp::Chown
        )
    }
}

/// A successful file change as the kernel reported it. Mirrors `struct sp_file_event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEvent {
    /// What happened.
    pub op: FileOp,
    /// Process id.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Directory descriptor the path is relative to (`-100`: the working directory).
    pub dirfd: i32,
    /// Same for the second path (rename target).
    pub dirfd2: i32,
    /// open flags, or the mode for chmod.
    pub flags: u32,
    /// Task name.
    pub comm: String,
    /// The path as the process passed it.
    pub path: String,
    /// The rename target, as passed.
    pub path2: String,
    /// Event time, ns since boot.
    pub ts_ns: u64,
    /// The syscall's return value (negative errno on failure; file changes are reported on
    /// success only).
    pub ret: i64,
}

/// A DNS message seen on UDP port 53. Mirrors `struct sp_dns_event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEvent {
    /// `true`: an answer arriving; `false`: a query leaving.
    pub answer: bool,
    /// Process id (of the sender; for answers, of the socket's last sender).
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Task name.
    pub comm: String,
    /// Packet source.
    pub source: Option<std::net::SocketAddr>,
    /// Packet destination.
    pub destination: Option<std::net::SocketAddr>,
    /// The DNS message bytes (cut at 512 by the kernel).
    pub payload: Vec<u8>,
    /// Event time, ns since boot.
    pub ts_ns: u64,
}

/// Anything the BPF programs report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SensorEvent {
    /// Process lifecycle.
    Process(RawEvent),
    /// Network.
    Net(NetEvent),
    /// File changes.
    File(FileEvent),
    /// DNS queries and answers.
    Dns(DnsEvent),
    /// Logins, authentications and sessions (from the audit stream, not BPF).
    Auth(crate::audit::AuthEvent),
    /// The hash of a large executable, computed in the background after its exec.
    Hashed(crate::hash::Hashed),
}

const DNS_EVENT_SIZE: usize = 88 + 512;

fn decode_dns(b: &[u8]) -> Option<DnsEvent> {
    if b.len() < DNS_EVENT_SIZE {
        return None;
    }
    let family = u32_at(b, 16);
    let sport = u16::from_ne_bytes([b[24], b[25]]);
    let dport = u16::from_ne_bytes([b[26], b[27]]);
    let len = (u32_at(b, 28) as usize).min(512);
    Some(DnsEvent {
        answer: u32_at(b, 20) != 0,
        pid: u32_at(b, 4),
        uid: u32_at(b, 8),
        gid: u32_at(b, 12),
        ts_ns: u64_at(b, 32),
        comm: cstr(&b[40..56]),
        source: ip(family, &b[56..72]).map(|a| std::net::SocketAddr::new(a, sport)),
        destination: ip(family, &b[72..88]).map(|a| std::net::SocketAddr::new(a, dport)),
        payload: b[88..88 + len].to_vec(),
    })
}

/// Fixed part of `struct sp_file_event`; the paths follow, only as long as they are.
const FILE_HEADER: usize = 72;

fn decode_file(b: &[u8]) -> Option<FileEvent> {
    if b.len() < FILE_HEADER {
        return None;
    }
    let op = match u32_at(b, 16) {
        1 => FileOp::Create,
        2 => FileOp::Write,
        3 => FileOp::Delete,
        4 => FileOp::Rename,
        5 => FileOp::Chmod,
        6 => FileOp::Chown,
        7 => FileOp::SetUid,
        8 => FileOp::SetGid,
        9 => FileOp::Capset,
        10 => FileOp::Ptrace,
        11 => FileOp::ModuleLoad,
        12 => FileOp::ModuleUnload,
        13 => FileOp::Chdir,
        _ => return None,
    };
    let len1 = u32_at(b, 64) as usize;
    let len2 = u32_at(b, 68) as usize;
    let paths = &b[FILE_HEADER..];
    let first = paths.get(..len1)?;
    let second = paths.get(len1..len1 + len2)?;
    Some(FileEvent {
        op,
        pid: u32_at(b, 4),
        uid: u32_at(b, 8),
        gid: u32_at(b, 12),
        dirfd: u32_at(b, 20) as i32,
        dirfd2: u32_at(b, 24) as i32,
        flags: u32_at(b, 28),
        ts_ns: u64_at(b, 32),
        comm: cstr(&b[40..56]),
        path: cstr(first),
        path2: cstr(second),
        ret: u64_at(b, 56) as i64,
    })
}

const NET_EVENT_SIZE: usize = 96;

fn ip(family: u32, b: &[u8]) -> Option<std::net::IpAddr> {
    match family {
        2 => Some(std::net::IpAddr::from([b[0], b[1], b[2], b[3]])),
        10 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            Some(std::net::IpAddr::from(a))
        }
        _ => None,
    }
}

impl SensorEvent {
    /// Decodes a ring-buffer record by its kind.
    pub fn decode(b: &[u8]) -> Option<SensorEvent> {
        if b.len() < 4 {
            return None;
        }
        match u32_at(b, 0) {
            1..=3 => RawEvent::decode(b).map(SensorEvent::Process),
            k @ (4 | 5 | 8 | 9) if b.len() >= NET_EVENT_SIZE => {
                let family = u32_at(b, 20);
                let sport = u16::from_ne_bytes([b[28], b[29]]);
                let dport = u16::from_ne_bytes([b[30], b[31]]);
                let action = match k {
                    4 => NetAction::Connect,
                    5 => NetAction::Listen,
                    8 => NetAction::Accept,
                    _ => NetAction::Bind,
                };
                let saddr = ip(family, &b[64..80]);
                let daddr = ip(family, &b[80..96]);
                let (local, remote) = match action {
                    NetAction::Connect => {
                        (None, daddr.map(|a| std::net::SocketAddr::new(a, dport)))
                    }
                    NetAction::Listen | NetAction::Bind => {
                        (saddr.map(|a| std::net::SocketAddr::new(a, sport)), None)
                    }
                    NetAction::Accept => (
                        saddr.map(|a| std::net::SocketAddr::new(a, sport)),
                        daddr.map(|a| std::net::SocketAddr::new(a, dport)),
                    ),
                };
                Some(SensorEvent::Net(NetEvent {
                    action,
                    pid: u32_at(b, 4),
                    uid: u32_at(b, 12),
                    gid: u32_at(b, 16),
                    protocol: u32_at(b, 24),
                    local,
                    remote,
                    ts_ns: u64_at(b, 32),
                    comm: cstr(&b[48..64]),
                }))
            }
            7 => decode_dns(b).map(SensorEvent::Dns),
            6 => decode_file(b).map(SensorEvent::File),
            _ => None,
        }
    }
}

/// One event as the kernel reported it. Mirrors `struct sp_event` in `sensor.bpf.c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// Which event.
    pub kind: Kind,
    /// Process id (thread group id).
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Real user id of the task that triggered the event.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Raw exit code (`status` as `wait` reports it) for exits.
    pub exit_code: i32,
    /// Event time, nanoseconds since boot (CLOCK_BOOTTIME).
    pub ts_ns: u64,
    /// Process start time (task `start_boottime`, ns since boot), part of its entity id.
    pub start_ns: u64,
    /// Parent's start time.
    pub parent_start_ns: u64,
    /// Task name (up to 15 bytes).
    pub comm: String,
    /// Executed file (exec only).
    pub filename: String,
    /// Arguments (exec only), as the process saw them.
    pub args: Vec<String>,
    /// Whether the argument area was longer than the kernel copied.
    pub args_truncated: bool,
    /// Executed file's identity (exec only): device, inode, size, mtime (ns), ctime (s).
    pub file_key: Option<(u64, u64, i64, i64, i64)>,
    /// Effective user and group ids (exec only).
    pub effective: Option<(u32, u32)>,
    /// Cgroup v2 id of the process (exec only; the inode of its cgroup directory).
    pub cgroup_id: u64,
    /// Controlling terminal (`pts3`, `tty1`; exec only, empty without one).
    pub tty: String,
}

const EVENT_SIZE: usize = 1448;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl RawEvent {
    /// An event with only its kind, process, parent and time known (the other collectors
    /// fill in what they learn).
    pub fn new(kind: Kind, pid: u32, ppid: u32, ts_ns: u64) -> RawEvent {
        RawEvent {
            kind,
            pid,
            ppid,
            uid: 0,
            gid: 0,
            exit_code: 0,
            ts_ns,
            start_ns: 0,
            parent_start_ns: 0,
            comm: String::new(),
            filename: String::new(),
            args: Vec::new(),
            args_truncated: false,
            file_key: None,
            effective: None,
            cgroup_id: 0,
            tty: String::new(),
        }
    }

    /// Decodes a ring-buffer record; `None` for a record of the wrong size or kind.
    pub fn decode(b: &[u8]) -> Option<RawEvent> {
        if b.len() < EVENT_SIZE {
            return None;
        }
        let kind = match u32_at(b, 0) {
            1 => Kind::Exec,
            2 => Kind::Exit,
            3 => Kind::Fork,
            _ => return None,
        };
        let args_len = (u32_at(b, 64) as usize).min(1024);
        let args_area = &b[328..328 + args_len];
        let mut args: Vec<String> = args_area
            .split(|&c| c == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // The area ends with a NUL: the split leaves an empty last piece.
        if args.last().is_some_and(String::is_empty) {
            args.pop();
        }
        Some(RawEvent {
            kind,
            pid: u32_at(b, 4),
            ppid: u32_at(b, 8),
            uid: u32_at(b, 12),
            gid: u32_at(b, 16),
            exit_code: u32_at(b, 20) as i32,
            ts_ns: u64_at(b, 24),
            start_ns: u64_at(b, 32),
            parent_start_ns: u64_at(b, 40),
            comm: cstr(&b[48..64]),
            filename: cstr(&b[72..328]),
            args,
            args_truncated: u32_at(b, 68) != 0,
            file_key: (kind == Kind::Exec).then(|| {
                let mtime = u64_at(b, 1376) as i64 * 1_000_000_000 + i64::from(u32_at(b, 1384));
                (
                    u64_at(b, 1360),
                    u64_at(b, 1352),
                    u64_at(b, 1368) as i64,
                    mtime,
                    u64_at(b, 1392) as i64,
                )
            }),
            effective: (kind == Kind::Exec).then(|| (u32_at(b, 1400), u32_at(b, 1404))),
            cgroup_id: u64_at(b, 1408),
            tty: cstr(&b[1416..1448]),
        })
    }
}

/// Which file paths are reported: prefixes that keep or drop events, longest match wins,
/// paths that match nothing are kept. Applied in the kernel to absolute paths, and by
/// [`PathRules::keeps`] in user space to paths that were relative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRules {
    rules: Vec<(String, bool)>,
}

/// Longest prefix the kernel filter compares (`SP_PREFIX_MAX`).
pub const PATH_PREFIX_MAX: usize = 128;

impl Default for PathRules {
    /// Kernel interfaces are not files: `/proc/`, `/sys/` and `/dev/` are excluded.
    fn default() -> Self {
        PathRules {
            rules: ["/proc/", "/sys/", "/dev/"]
                .iter()
                .map(|p| (p.to_string(), false))
                .collect(),
        }
    }
}

impl PathRules {
    /// Adds a prefix whose events are dropped. Prefixes must be absolute and at most
    /// [`PATH_PREFIX_MAX`] bytes.
    pub fn exclude(&mut self, prefix: &str) -> Result<(), SensorError> {
        self.add(prefix, false)
    }

    /// Adds a prefix whose events are kept even inside an excluded one.
    pub fn include(&mut self, prefix: &str) -> Result<(), SensorError> {
        self.add(prefix, true)
    }

    fn add(&mut self, prefix: &str, keep: bool) -> Result<(), SensorError> {
        if !prefix.starts_with('/') || prefix.len() > PATH_PREFIX_MAX {
            return Err(SensorError::Unsupported(format!(
                "path filter {prefix:?}: a prefix must be an absolute path of at most                  {PATH_PREFIX_MAX} bytes"
            )));
        }
        self.rules.retain(|(p, _)| p != prefix);
        self.rules.push((prefix.to_string(), keep));
        Ok(())
    }

    /// Whether an event on this (absolute) path is reported.
    pub fn keeps(&self, path: &str) -> bool {
        self.rules
            .iter()
            .filter(|(p, _)| path.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .is_none_or(|(_, keep)| *keep)
    }

    /// LPM trie key: prefix length in bits, then the bytes.
    fn key(prefix: &str) -> Vec<u8> {
        let mut k = vec![0u8; 4 + PATH_PREFIX_MAX];
        k[..4].copy_from_slice(&((prefix.len() * 8) as u32).to_ne_bytes());
        k[4..4 + prefix.len()].copy_from_slice(prefix.as_bytes());
        k
    }
}

/// How file, privilege and module syscalls are hooked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyscallHooks {
    /// Per-syscall tracepoints when tracefs is available (mounting it if needed), the raw
    /// hooks otherwise.
    #[default]
    Auto,
    /// The raw `sys_enter`/`sys_exit` hooks: no tracefs needed, but a BPF program runs for
    /// every syscall of every process.
    Raw,
    /// Per-syscall tracepoints only (fails without tracefs).
    Tracepoints,
}

/// What was attached, for the agent's health report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// How syscalls are hooked (`None` when file collection is off).
    pub syscall_hooks: Option<SyscallHooks>,
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// The tracefs directory of the syscall tracepoints, mounting tracefs if it is not.
fn syscall_tracepoints() -> Option<std::path::PathBuf> {
    let present = || {
        [TRACEFS, "/sys/kernel/debug/tracing"]
            .iter()
            .map(|t| std::path::Path::new(t).join("events/syscalls"))
            .find(|p| p.is_dir())
    };
    present().or_else(|| {
        let _ = nix::mount::mount(
            Some("tracefs"),
            TRACEFS,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        );
        present()
    })
}

/// Options of the BPF collector.
#[derive(Debug, Clone)]
pub struct BpfOptions {
    /// Wake the reader only when this many bytes are queued (0: on every event). The reader
    /// polls every `poll` anyway, so latency stays bounded.
    pub wake_bytes: u64,
    /// Poll timeout.
    pub poll: Duration,
    /// Collect file changes (syscall tracepoints: every syscall pays a small cost).
    pub files: bool,
    /// Collect network connects and listens.
    pub network: bool,
    /// Which file paths are reported.
    pub paths: PathRules,
    /// How syscalls are hooked for file, privilege and module events.
    pub syscall_hooks: SyscallHooks,
}

impl Default for BpfOptions {
    fn default() -> Self {
        BpfOptions {
            wake_bytes: 64 << 10,
            poll: Duration::from_millis(100),
            files: true,
            network: true,
            paths: PathRules::default(),
            syscall_hooks: SyscallHooks::Auto,
        }
    }
}

/// Loads and attaches the programs, then calls `on_event` for each event until `keep_going`
/// returns false. `on_ready` is called once everything is attached.
pub fn run(
    opts: BpfOptions,
    on_ready: &mut dyn FnMut(Attached),
    on_event: &mut dyn FnMut(SensorEvent),
    keep_going: &mut dyn FnMut(u64) -> bool,
) -> Result<(), SensorError> {
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(SensorError::Unsupported(
            "the kernel exposes no BTF (/sys/kernel/btf/vmlinux): BPF collectors cannot load"
                .into(),
        ));
    }
    let bpf = |e: libbpf_rs::Error| SensorError::Bpf(e.to_string());
    let mut obj = MaybeUninit::uninit();
    let mut open = SensorSkelBuilder::default().open(&mut obj).map_err(bpf)?;
    if let Some(ro) = open.maps.rodata_data.as_deref_mut() {
        ro.wake_bytes = opts.wake_bytes;
    }
    // cgroup programs attach to a cgroup, not automatically.
    for prog in [
        &mut open.progs.on_connect4,
        &mut open.progs.on_connect6,
        &mut open.progs.on_post_bind4,
        &mut open.progs.on_post_bind6,
        &mut open.progs.on_egress,
        &mut open.progs.on_ingress,
    ] {
        prog.set_autoattach(false);
        if !opts.network {
            prog.set_autoload(false);
        }
    }
    let events_dir = match (opts.files, opts.syscall_hooks) {
        (false, _) | (true, SyscallHooks::Raw) => None,
        (true, _) => syscall_tracepoints(),
    };
    if opts.files && opts.syscall_hooks == SyscallHooks::Tracepoints && events_dir.is_none() {
        return Err(SensorError::Unsupported(format!(
            "syscall tracepoints need tracefs, which is not mounted at {TRACEFS} and could not \
             be mounted there"
        )));
    }
    let hooks = match (opts.files, &events_dir) {
        (false, _) => None,
        (true, Some(_)) => Some(SyscallHooks::Tracepoints),
        (true, None) => Some(SyscallHooks::Raw),
    };
    open.progs
        .on_sys_enter
        .set_autoload(hooks == Some(SyscallHooks::Raw));
    open.progs
        .on_sys_exit
        .set_autoload(hooks == Some(SyscallHooks::Raw));
    for mut prog in open.open_object_mut().progs_mut() {
        let name = prog.name().to_string_lossy().into_owned();
        let Some(syscall) = name
            .strip_prefix("enter_")
            .or_else(|| name.strip_prefix("exit_"))
        else {
            continue;
        };
        // A syscall the kernel was built without (init_module without module support)
        // has no tracepoint: nothing to hook, nothing missed.
        let exists = events_dir
            .as_ref()
            .is_some_and(|d| d.join(format!("sys_enter_{syscall}")).is_dir());
        prog.set_autoload(exists);
    }
    if !opts.network {
        open.progs.on_sock_state.set_autoload(false);
    }
    let mut skel = open.load().map_err(bpf)?;
    for (prefix, keep) in &opts.paths.rules {
        skel.maps
            .path_filter
            .update(&PathRules::key(prefix), &[u8::from(*keep)], MapFlags::ANY)
            .map_err(bpf)?;
    }
    skel.attach().map_err(bpf)?;
    let mut links = Vec::new();
    if opts.network {
        let cgroup_root = cgroup_v2_root().ok_or_else(|| {
            SensorError::Unsupported(
                "no cgroup v2 hierarchy mounted: connection and DNS events unavailable".into(),
            )
        })?;
        let cg = std::fs::File::open(&cgroup_root)
            .map_err(|e| SensorError::Bpf(format!("opening {}: {e}", cgroup_root.display())))?;
        use std::os::fd::AsRawFd;
        let p = &skel.progs;
        for prog in [
            &p.on_connect4,
            &p.on_connect6,
            &p.on_post_bind4,
            &p.on_post_bind6,
            &p.on_egress,
            &p.on_ingress,
        ] {
            links.push(prog.attach_cgroup(cg.as_raw_fd()).map_err(bpf)?);
        }
    }
    let events = std::cell::RefCell::new(on_event);
    let mut rb = RingBufferBuilder::new();
    rb.add(&skel.maps.events, |data: &[u8]| {
        if let Some(ev) = SensorEvent::decode(data) {
            (events.borrow_mut())(ev);
        }
        0
    })
    .map_err(bpf)?;
    let rb = rb.build().map_err(bpf)?;
    on_ready(Attached {
        syscall_hooks: hooks,
    });
    loop {
        // With wake-ups suppressed the poll mostly times out: consume what is queued anyway.
        match rb.poll(opts.poll) {
            // A signal (the agent being asked to stop): let `keep_going` decide.
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
            other => other.map_err(bpf)?,
        }
        rb.consume().map_err(bpf)?;
        let dropped = drops(&skel.maps.drops);
        if !keep_going(dropped) {
            // Deliver what is queued before leaving.
            let _ = rb.consume();
            return Ok(());
        }
    }
}

/// The cgroup v2 hierarchy: `/sys/fs/cgroup` when unified, `/sys/fs/cgroup/unified` in the
/// hybrid layout. When neither is there but `/sys/fs/cgroup` is an empty directory — a fresh
/// sysfs, as `ip netns exec` and many containers give — the unified hierarchy is mounted
/// there (it is the same hierarchy the whole machine shares, so the programs attached to its
/// root still see every process).
pub(crate) fn cgroup_v2_root() -> Option<std::path::PathBuf> {
    let present = || {
        ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.join("cgroup.controllers").exists())
    };
    present().or_else(|| {
        let empty = std::fs::read_dir("/sys/fs/cgroup").is_ok_and(|mut d| d.next().is_none());
        if empty {
            let _ = nix::mount::mount(
                Some("cgroup2"),
                "/sys/fs/cgroup",
                Some("cgroup2"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            );
        }
        present()
    })
}

/// Events the kernel side could not queue (ring buffer full), summed over CPUs.
fn drops(map: &dyn MapCore) -> u64 {
    let key = 0u32.to_ne_bytes();
    match map.lookup_percpu(&key, MapFlags::ANY) {
        Ok(Some(per_cpu)) => per_cpu
            .iter()
            .filter(|v| v.len() >= 8)
            .map(|v| u64_at(v, 0))
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_variable_length_file_records() {
        let mut b = vec![0u8; FILE_HEADER];
        b[0..4].copy_from_slice(&6u32.to_ne_bytes());
        b[16..20].copy_from_slice(&4u32.to_ne_bytes()); // rename
        b[56..64].copy_from_slice(&0i64.to_ne_bytes());
        b[64..68].copy_from_slice(&7u32.to_ne_bytes());
        b[68..72].copy_from_slice(&7u32.to_ne_bytes());
        b.extend_from_slice(b"/tmp/a\0/tmp/b\0");
        let Some(SensorEvent::File(f)) = SensorEvent::decode(&b) else {
            panic!("not decoded");
        };
        assert_eq!(
            (f.op, f.path.as_str(), f.path2.as_str()),
            (FileOp::Rename, "/tmp/a", "/tmp/b")
        );
        // Lengths that point past the record are refused, not trusted.
        b[68..72].copy_from_slice(&9u32.to_ne_bytes());
        assert!(SensorEvent::decode(&b).is_none());
    }

    #[test]
    fn longest_prefix_wins() {
        let mut r = PathRules::default();
        assert!(!r.keeps("/proc/1/status"));
        assert!(r.keeps("/etc/passwd"));
        r.exclude("/var/log/").unwrap();
        r.include("/var/log/secure/").unwrap();
        assert!(!r.keeps("/var/log/syslog"));
        assert!(r.keeps("/var/log/secure/x"));
        assert!(r.include("relative").is_err());
        assert!(
            r.exclude(&format!("/{}", "a".repeat(PATH_PREFIX_MAX)))
                .is_err()
        );
        let k = PathRules::key("/tmp/");
        assert_eq!(k.len(), 4 + PATH_PREFIX_MAX);
        assert_eq!(u32::from_ne_bytes([k[0], k[1], k[2], k[3]]), 40);
    }

    #[test]
    fn decodes_the_c_layout() {
        let mut b = vec![0u8; EVENT_SIZE];
        b[0..4].copy_from_slice(&1u32.to_ne_bytes());
        b[4..8].copy_from_slice(&42u32.to_ne_bytes());
        b[8..12].copy_from_slice(&7u32.to_ne_bytes());
        b[20..24].copy_from_slice(&(3i32 << 8).to_ne_bytes());
        b[48..52].copy_from_slice(b"echo");
        let args = b"/bin/echo\0hello\0world\0";
        b[64..68].copy_from_slice(&(args.len() as u32).to_ne_bytes());
        b[72..81].copy_from_slice(b"/bin/echo");
        b[328..328 + args.len()].copy_from_slice(args);
        let e = RawEvent::decode(&b).unwrap();
        assert_eq!((e.kind, e.pid, e.ppid), (Kind::Exec, 42, 7));
        assert_eq!(e.comm, "echo");
        assert_eq!(e.filename, "/bin/echo");
        assert_eq!(e.args, vec!["/bin/echo", "hello", "world"]);
        assert!(RawEvent::decode(&b[..100]).is_none());
        b[0] = 9;
        assert!(RawEvent::decode(&b).is_none());
    }
}
