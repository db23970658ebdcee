//! The process table: what the sensor knows about each live process, so that every event
//! carries its parent and grandparent, and every process a stable entity id.
//!
//! Seeded from `/proc` at start (processes older than the sensor), then kept current from
//! exec/fork/exit events; an entry leaves the table when its process exits. Bounded by the
//! number of live processes.

use std::collections::HashMap;

use crate::bpf::{Kind, RawEvent};

/// Length of a clock tick (`USER_HZ` is 100 on Linux).
const TICK_NS: u64 = 10_000_000;

/// What is known of one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Stable id: `boot id : pid : start time`.
    pub entity_id: String,
    /// Executable path.
    pub executable: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Task name.
    pub name: String,
    /// Working directory: read at exec, inherited at fork, followed through chdir when the
    /// syscall hooks are on.
    pub cwd: String,
}

impl ProcInfo {
    /// The command line: arguments joined by spaces.
    pub fn command_line(&self) -> String {
        self.args.join(" ")
    }
}

/// What `/proc` shows of a process right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Task name.
    pub name: String,
    /// Parent process id.
    pub ppid: u32,
    /// Start time since boot, ns (tick precision).
    pub start_ns: u64,
    /// Arguments.
    pub args: Vec<String>,
    /// Executable path.
    pub executable: String,
    /// Working directory.
    pub cwd: String,
}

impl Snapshot {
    /// Reads `/proc/<pid>`; `None` when the process is gone.
    pub fn read(pid: u32) -> Option<Snapshot> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid ..."; comm may contain spaces and parentheses.
        let close = stat.rfind(')')?;
        let name = stat.get(stat.find('(')? + 1..close)?.to_string();
        let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
        let ppid = rest.get(1)?.parse().ok()?;
        // Field 22 (starttime, clock ticks since boot) is index 19 after the state.
        let ticks: u64 = rest.get(19)?.parse().ok()?;
        let link = |what: &str| {
            std::fs::read_link(format!("/proc/{pid}/{what}"))
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        Some(Snapshot {
            name,
            ppid,
            start_ns: ticks.saturating_mul(TICK_NS),
            args: std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    b.split(|&c| c == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect()
                })
                .unwrap_or_default(),
            executable: link("exe"),
            cwd: link("cwd"),
        })
    }
}

/// Live processes by pid.
#[derive(Debug, Default)]
pub struct ProcessTable {
    boot_id: String,
    procs: HashMap<u32, ProcInfo>,
    /// Processes that exited recently: records that arrive late (audit, DNS answers) are
    /// still attributed. Bounded by age and count.
    exited: HashMap<u32, (std::time::Instant, ProcInfo)>,
    exit_order: std::collections::VecDeque<(std::time::Instant, u32)>,
    follows_chdir: bool,
}

/// How long and how many exited processes are remembered.
const EXITED_KEEP: std::time::Duration = std::time::Duration::from_secs(30);
const EXITED_MAX: usize = 8192;

/// The kernel's boot id (changes at every boot), for entity ids.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown-boot".into())
}

impl ProcessTable {
    /// A table seeded from `/proc`.
    pub fn from_proc() -> Self {
        let mut t = ProcessTable {
            boot_id: boot_id(),
            procs: HashMap::new(),
            exited: HashMap::new(),
            exit_order: std::collections::VecDeque::new(),
            follows_chdir: false,
        };
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(info) = t.read_proc(pid) {
                    t.procs.insert(pid, info);
                }
            }
        }
        t
    }

    fn read_proc(&self, pid: u32) -> Option<ProcInfo> {
        let snap = Snapshot::read(pid)?;
        Some(ProcInfo {
            pid,
            ppid: snap.ppid,
            entity_id: self.entity_id(pid, snap.start_ns),
            executable: snap.executable,
            args: snap.args,
            name: snap.name,
            cwd: snap.cwd,
        })
    }

    /// The entity id of a process: boot id, pid and start time in clock ticks since boot
    /// (the precision `/proc` offers, so ids from `/proc` and from the kernel agree).
    pub fn entity_id(&self, pid: u32, start_ns: u64) -> String {
        format!("{}:{pid}:{}", self.boot_id, start_ns / TICK_NS)
    }

    /// Looks a process up.
    pub fn get(&self, pid: u32) -> Option<&ProcInfo> {
        self.procs
            .get(&pid)
            .or_else(|| self.exited.get(&pid).map(|(_, p)| p))
    }

    fn remember_exited(&mut self, info: &ProcInfo) {
        let now = std::time::Instant::now();
        while let Some(&(at, pid)) = self.exit_order.front() {
            if now.duration_since(at) < EXITED_KEEP && self.exit_order.len() < EXITED_MAX {
                break;
            }
            self.exit_order.pop_front();
            // Only forget the entry if no later exit of a reused pid replaced it.
            if self.exited.get(&pid).is_some_and(|(t, _)| *t == at) {
                self.exited.remove(&pid);
            }
        }
        self.exited.insert(info.pid, (now, info.clone()));
        self.exit_order.push_back((now, info.pid));
    }

    /// Says that chdir events will be applied (the syscall hooks are on), so working
    /// directories inherited at fork stay right and exec need not read `/proc`.
    pub fn follow_chdir(&mut self, on: bool) {
        self.follows_chdir = on;
    }

    /// Records a working directory change (chdir); ignored for unknown processes or an
    /// empty path.
    pub fn set_cwd(&mut self, pid: u32, cwd: String) {
        if let Some(p) = self.procs.get_mut(&pid)
            && !cwd.is_empty()
        {
            p.cwd = cwd;
        }
    }

    /// Number of processes known.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Updates the table with an event; returns the process as known after the event (for
    /// an exit: as it was just before).
    pub fn apply(&mut self, e: &RawEvent) -> ProcInfo {
        let entity_id = self.entity_id(e.pid, e.start_ns);
        match e.kind {
            Kind::Fork => {
                // A fork runs the parent's image until it execs.
                let parent = self.procs.get(&e.ppid).cloned().unwrap_or_default();
                let info = ProcInfo {
                    pid: e.pid,
                    ppid: e.ppid,
                    entity_id,
                    executable: parent.executable,
                    args: parent.args,
                    name: e.comm.clone(),
                    cwd: parent.cwd,
                };
                self.procs.insert(e.pid, info.clone());
                info
            }
            Kind::Exec => {
                // While chdir is followed, the directory inherited at fork is current: no
                // syscall needed. Otherwise ask /proc (which may have moved on, or be gone).
                let known = self
                    .procs
                    .get(&e.pid)
                    .map(|p| p.cwd.clone())
                    .filter(|c| !c.is_empty());
                let cwd = match known {
                    Some(c) if self.follows_chdir => c,
                    known => std::fs::read_link(format!("/proc/{}/cwd", e.pid))
                        .map(|p| p.display().to_string())
                        .ok()
                        .or(known)
                        .unwrap_or_default(),
                };
                let info = ProcInfo {
                    pid: e.pid,
                    ppid: e.ppid,
                    entity_id,
                    executable: e.filename.clone(),
                    args: e.args.clone(),
                    name: e.comm.clone(),
                    cwd,
                };
                self.procs.insert(e.pid, info.clone());
                info
            }
            Kind::Exit => {
                let info = self.procs.remove(&e.pid).unwrap_or(ProcInfo {
                    pid: e.pid,
                    ppid: e.ppid,
                    entity_id,
                    name: e.comm.clone(),
                    ..ProcInfo::default()
                });
                self.remember_exited(&info);
                info
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: Kind, pid: u32, ppid: u32, file: &str, args: &[&str]) -> RawEvent {
        RawEvent {
            start_ns: 100 + u64::from(pid),
            comm: "x".into(),
            filename: file.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..RawEvent::new(kind, pid, ppid, 1)
        }
    }

    #[test]
    fn lineage_through_fork_exec_exit() {
        let mut t = ProcessTable::from_proc();
        let me = std::process::id();
        let mine = t.get(me).expect("the test process is in /proc").clone();
        assert!(!mine.executable.is_empty(), "{mine:?}");
        t.apply(&ev(Kind::Exec, 50_001, me, "/bin/sh", &["sh", "-c", "x"]));
        let child = t.apply(&ev(Kind::Fork, 50_002, 50_001, "", &[]));
        assert_eq!(
            child.executable, "/bin/sh",
            "a fork runs its parent's image"
        );
        t.apply(&ev(
            Kind::Exec,
            50_002,
            50_001,
            "/usr/bin/id",
            &["id", "-u"],
        ));
        let c = t.get(50_002).unwrap();
        assert_eq!(c.command_line(), "id -u");
        assert_eq!(t.get(c.ppid).unwrap().executable, "/bin/sh");
        let live = t.len();
        let gone = t.apply(&ev(Kind::Exit, 50_002, 50_001, "", &[]));
        assert_eq!(gone.executable, "/usr/bin/id");
        assert_eq!(t.len(), live - 1, "an exited process is no longer live");
        // Late records (audit, DNS answers) still find a process that just exited.
        assert_eq!(
            t.get(50_002).map(|p| p.executable.as_str()),
            Some("/usr/bin/id")
        );
    }
}
