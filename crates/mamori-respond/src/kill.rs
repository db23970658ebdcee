//! Killing a process or its whole tree, identified by pid and start time.
//!
//! The start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`) is checked before
//! anything is signalled, so a pid that was reused by another process is never hit. For a
//! tree, every process is stopped first (`SIGSTOP`, so nothing forks while the tree is
//! walked), the walk is repeated until no new descendant appears, then all are killed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::RespondError;

/// A process as `/proc` shows it.
#[derive(Debug, Clone)]
struct Proc {
    ppid: u32,
    ticks: u64,
    name: String,
    executable: String,
    state: char,
}

fn read(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    let name = stat.get(stat.find('(')? + 1..close)?.to_string();
    let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    Some(Proc {
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        ticks: rest.get(19)?.parse().ok()?,
        name,
        executable: std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    })
}

fn all() -> BTreeMap<u32, Proc> {
    let mut m = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some(p) = read(pid)
            {
                m.insert(pid, p);
            }
        }
    }
    m
}

/// `pid` and its descendants, each with its start time.
fn tree(root: u32) -> BTreeMap<u32, Proc> {
    let procs = all();
    let mut out = BTreeMap::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if let Some(info) = procs.get(&p)
            && out.insert(p, info.clone()).is_none()
        {
            todo.extend(procs.iter().filter(|(_, c)| c.ppid == p).map(|(&c, _)| c));
        }
    }
    out
}

/// Never killed: init, the kernel thread daemon, the agent itself. (The agent's ancestors
/// are not protected, since a shell may start it; but a tree that contains the agent is.)
fn protected() -> [u32; 3] {
    [1, 2, std::process::id()]
}

/// Kills `pid` (started at `start_ticks`) and, with `tree`, all its descendants.
pub fn kill_process(
    pid: u32,
    start_ticks: u64,
    boot_id: Option<&str>,
    with_tree: bool,
) -> Result<serde_json::Value, RespondError> {
    if let Some(b) = boot_id
        && !b.is_empty()
        && b != mamori_sensor::process::boot_id()
    {
        return Err(RespondError::Refused(format!(
            "process {pid} belongs to an earlier boot ({b}): it is gone"
        )));
    }
    let protected = protected();
    if protected.contains(&pid) {
        return Err(RespondError::Refused(format!(
            "process {pid} is {}: refusing to kill it",
            match pid {
                1 => "PID 1 (init)",
                2 => "the kernel thread daemon",
                _ => "the Mamori agent",
            }
        )));
    }
    let info = read(pid).ok_or_else(|| RespondError::NotFound(format!("no process {pid}")))?;
    if info.ticks != start_ticks {
        return Err(RespondError::Refused(format!(
            "pid {pid} now belongs to another process ({}, started at tick {}, not {start_ticks})",
            info.name, info.ticks
        )));
    }
    if info.ppid == 2 {
        return Err(RespondError::Refused(format!(
            "process {pid} ({}) is a kernel thread",
            info.name
        )));
    }
    let mut victims = BTreeMap::new();
    victims.insert(pid, info);
    if with_tree {
        // Stop, walk again, until the tree stops growing.
        for _ in 0..10 {
            let found = tree(pid);
            let before = victims.len();
            for (p, info) in found {
                if protected.contains(&p) {
                    return Err(RespondError::Refused(format!(
                        "the tree of {pid} contains process {p}, which is protected"
                    )));
                }
                victims.entry(p).or_insert(info);
            }
            for (&p, info) in &victims {
                if read(p).is_some_and(|now| now.ticks == info.ticks) {
                    let _ = kill(Pid::from_raw(p as i32), Signal::SIGSTOP);
                }
            }
            if victims.len() == before {
                break;
            }
        }
    }
    let mut killed = Vec::new();
    for (&p, info) in &victims {
        // Checked again right before the signal: only the process that was identified.
        if read(p).is_some_and(|now| now.ticks == info.ticks) {
            kill(Pid::from_raw(p as i32), Signal::SIGKILL)
                .map_err(|e| RespondError::Failed(format!("killing {p} ({}): {e}", info.name)))?;
            killed.push(
                json!({"pid": p, "name": info.name, "executable": info.executable,
                "start_ticks": info.ticks}),
            );
        }
    }
    // Wait until they are gone (or zombies whose parent has not reaped them).
    let deadline = Instant::now() + Duration::from_secs(2);
    let alive = || {
        victims
            .iter()
            .filter(|(p, info)| {
                read(**p).is_some_and(|now| now.ticks == info.ticks && now.state != 'Z')
            })
            .map(|(p, _)| *p)
            .collect::<Vec<_>>()
    };
    let mut left = alive();
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        left = alive();
    }
    if !left.is_empty() {
        return Err(RespondError::Failed(format!(
            "still running after SIGKILL: {left:?}"
        )));
    }
    Ok(json!({"killed": killed, "tree": with_tree}))
}

/// The start time (ticks since boot) of a running process, for callers that know a pid.
pub fn start_ticks(pid: u32) -> Option<u64> {
    read(pid).map(|p| p.ticks)
}
