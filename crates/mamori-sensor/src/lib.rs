//! The Linux sensor: kernel telemetry turned into ECS events.
//!
//! * [`bpf`] loads the CO-RE BPF programs in `src/bpf/` (scheduler tracepoints for exec, fork
//!   and exit; syscall tracepoints for file, privilege, ptrace and module events; cgroup
//!   hooks for connect, bind and DNS packets; the TCP state tracepoint for listen and accept)
//!   and reads their ring buffer. BPF only collects and filters; everything else happens here.
//! * [`process`] keeps the process table (from `/proc` at start, then from events) that
//!   gives each event its parent and grandparent, and stable entity ids
//!   (`boot id : pid : start time`).
//! * [`proc_connector`] is the fallback when BPF cannot load: process events from the
//!   kernel's netlink process connector, with the other event types reported missing.
//! * [`dns`] parses the DNS messages the BPF programs copy from UDP port 53.
//! * [`audit`] reads logins, authentications and sessions (PAM, sshd) from the kernel's
//!   audit multicast stream.
//! * [`fanotify`] is the file fallback when BPF cannot load: completed writes on every
//!   filesystem.
//! * [`names`] turns uids, gids and cgroup ids into names and container ids.
//! * [`hash`] computes SHA-256 of executed files, cached by inode, size and times.
//! * [`ecs`] renders events with ECS field names (`process.command_line`,
//!   `process.parent.executable`, …), which the detection engine maps onto Sigma's names.
//!
//! On this machine's kernel (see `../shared/reference/sensor-spike.md`) tracepoints and
//! `tp_btf` load while fentry/LSM programs do not, which is why the programs use them.

pub mod audit;
pub mod bpf;
pub mod dns;
pub mod ecs;
pub mod fanotify;
pub mod hash;
pub mod names;
pub mod proc_connector;
pub mod process;

// SAFETY: the generated skeleton wraps libbpf's C objects; its unsafe blocks are libbpf-rs's
// own contract (the object outlives the skeleton that borrows it).
#[allow(
    unsafe_code,
    clippy::all,
    missing_docs,
    dead_code,
    unused_imports,
    unused_qualifications
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/sensor.skel.rs"));
}

/// Why the sensor could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SensorError {
    /// Loading or attaching the BPF programs failed.
    #[error("BPF: {0}")]
    Bpf(String),
    /// The machine lacks something the sensor needs.
    #[error("{0}")]
    Unsupported(String),
}
