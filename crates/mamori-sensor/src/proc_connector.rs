//! Fallback process collector: the kernel's netlink process connector (`CONFIG_PROC_EVENTS`).
//!
//! Used when BPF cannot load (no BTF, no privilege for BPF, old kernel). It reports fork, exec
//! and exit with pids only; the executable and arguments are read from `/proc` when the event
//! arrives, so a process that exits at once may be reported without them (counted). Network,
//! file, privilege, ptrace and module events are not available in this mode, and the agent's
//! health report says so.

use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{MsgFlags, NetlinkAddr, bind, recv, send};
use socket2::{Domain, Protocol, Socket, Type};

use crate::SensorError;
use crate::bpf::{Kind, RawEvent};

const NETLINK_CONNECTOR: i32 = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const NLMSG_DONE: u16 = 3;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXEC: u32 = 0x2;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

fn subscribe_message() -> Vec<u8> {
    // nlmsghdr (16) + cn_msg (20) + op (4)
    let len = 16 + 20 + 4;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&std::process::id().to_ne_bytes());
    m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // ack
    m.extend_from_slice(&4u16.to_ne_bytes()); // len
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
    m
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads what `/proc` still shows of a process: (executable, args, start ns, ppid).
fn from_proc(pid: u32) -> (String, Vec<String>, u64, u32) {
    crate::process::Snapshot::read(pid)
        .map(|s| (s.executable, s.args, s.start_ns, s.ppid))
        .unwrap_or_default()
}

/// Decodes one proc connector message into an event (reading `/proc` for exec details).
fn decode(msg: &[u8]) -> Option<RawEvent> {
    // nlmsghdr (16) + cn_msg (20) + proc_event: what u32, cpu u32, timestamp u64, data.
    let ev = msg.get(36..)?;
    let what = u32_at(ev, 0)?;
    let ts = u64_at(ev, 8)?;
    let data = ev.get(16..)?;
    let base = |kind, pid: u32, ppid: u32| RawEvent::new(kind, pid, ppid, ts);
    match what {
        PROC_EVENT_FORK => {
            let (parent_tgid, child_pid, child_tgid) =
                (u32_at(data, 4)?, u32_at(data, 8)?, u32_at(data, 12)?);
            if child_pid != child_tgid {
                return None; // a thread
            }
            let mut e = base(Kind::Fork, child_tgid, parent_tgid);
            e.start_ns = from_proc(child_tgid).2;
            Some(e)
        }
        PROC_EVENT_EXEC => {
            let tgid = u32_at(data, 4)?;
            // The event is sent while exec is finishing; /proc refuses to show the new image
            // for a moment. Retry briefly (fallback mode only).
            let mut got = from_proc(tgid);
            for _ in 0..5 {
                if !got.0.is_empty() || !got.1.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
                got = from_proc(tgid);
            }
            let (exe, args, start, ppid) = got;
            let mut e = base(Kind::Exec, tgid, ppid);
            e.filename = exe;
            e.args = args;
            e.start_ns = start;
            e.comm = std::fs::read_to_string(format!("/proc/{tgid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            Some(e)
        }
        PROC_EVENT_EXIT => {
            let (pid, tgid, code) = (u32_at(data, 0)?, u32_at(data, 4)?, u32_at(data, 8)?);
            if pid != tgid {
                return None;
            }
            let mut e = base(Kind::Exit, tgid, u32_at(data, 20).unwrap_or(0));
            e.exit_code = code as i32;
            Some(e)
        }
        _ => None,
    }
}

/// Subscribes to process events and calls `on_event` until `keep_going` returns false.
pub fn run(
    on_ready: &mut dyn FnMut(),
    on_event: &mut dyn FnMut(RawEvent),
    keep_going: &mut dyn FnMut(u64) -> bool,
) -> Result<(), SensorError> {
    let mut lost = 0u64;
    let overruns = &mut lost;
    let err = |what: &str, e: &dyn std::fmt::Display| {
        SensorError::Unsupported(format!("process connector: {what}: {e}"))
    };
    let sock = Socket::new(
        Domain::from(libc_af_netlink()),
        Type::DGRAM,
        Some(Protocol::from(NETLINK_CONNECTOR)),
    )
    .map_err(|e| err("socket", &e))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| err("timeout", &e))?;
    let fd = sock.as_raw_fd();
    bind(fd, &NetlinkAddr::new(std::process::id(), CN_IDX_PROC)).map_err(|e| err("bind", &e))?;
    send(fd, &subscribe_message(), MsgFlags::empty()).map_err(|e| err("subscribe", &e))?;
    on_ready();
    let mut buf = vec![0u8; 8192];
    loop {
        match recv(fd, &mut buf, MsgFlags::empty()) {
            Ok(n) => {
                if let Some(e) = decode(&buf[..n]) {
                    on_event(e);
                }
            }
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
            // The socket buffer overflowed: events were lost. Count and go on.
            Err(nix::errno::Errno::ENOBUFS) => *overruns += 1,
            Err(e) => return Err(err("recv", &e)),
        }
        if !keep_going(*overruns) {
            return Ok(());
        }
    }
}

/// `AF_NETLINK`.
fn libc_af_netlink() -> i32 {
    16
}
