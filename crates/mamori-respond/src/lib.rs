//! Response actions on a Linux host, executed by the agent for verified server commands.
//!
//! * [`isolate`]: network isolation in its own nftables table (server and allowlist only),
//!   verified after loading, reloaded at start and when tampered with.
//! * [`kill`]: a process or its tree, by pid and start time.
//! * [`quarantine`]: files sealed with ChaCha20-Poly1305 in the agent's store; restore puts
//!   them back exactly.
//! * [`collect`]: a file, a process's details, a triage bundle.
//! * [`block`]: execution blocked by SHA-256 in the exec path (fanotify permission events).
//!
//! [`Responder`] maps a [`mamori_wire::command::Action`] to one of them. Every refusal and
//! failure is a [`RespondError`] with a reason the server shows to the person who asked.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mamori_wire::command::{Action, Command};
use serde_json::{Value, json};

pub mod block;
pub mod collect;
pub mod isolate;
pub mod kill;
pub mod quarantine;

/// Why an action was not done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RespondError {
    /// Not allowed (would cut the agent off, hit PID 1 or the agent, a system file, …).
    #[error("refused: {0}")]
    Refused(String),
    /// The target does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// This host cannot do it (a tool or kernel feature is missing).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// It was tried and failed.
    #[error("failed: {0}")]
    Failed(String),
}

/// The agent's response side.
#[derive(Debug)]
pub struct Responder {
    isolation: isolate::Isolation,
    quarantine: quarantine::Quarantine,
    blocker: block::Blocker,
    server: Vec<SocketAddr>,
}

impl Responder {
    /// Opens the response state in `dir` (isolation state, quarantine store). `server` is
    /// where the agent's server is (kept reachable by isolation); files under `protected`
    /// are never quarantined; each execution the blocklist prevents goes to `prevented`.
    pub fn open(
        dir: &Path,
        server: Vec<SocketAddr>,
        protected: Vec<PathBuf>,
        prevented: std::sync::Arc<dyn Fn(block::Prevented) + Send + Sync>,
    ) -> Result<Responder, RespondError> {
        Ok(Responder {
            isolation: isolate::Isolation::open(dir)?,
            quarantine: quarantine::Quarantine::open(&dir.join("quarantine"), protected)?,
            blocker: block::Blocker::open(dir, prevented)?,
            server,
        })
    }

    /// The execution blocklist in force.
    pub fn blocklist(&self) -> block::Lists {
        self.blocker.lists()
    }

    /// Where the server is now (isolation keeps these reachable).
    pub fn set_server(&mut self, server: Vec<SocketAddr>) {
        self.server = server;
    }

    /// Loads isolation again if the host was isolated (call first thing at start).
    pub fn resume(&mut self) -> Result<bool, RespondError> {
        self.isolation.resume()
    }

    /// The isolation in force, if any.
    pub fn isolation(&self) -> Option<&isolate::IsolationState> {
        self.isolation.state()
    }

    /// Checks that isolation is still in force; returns what was wrong (and repaired).
    pub fn check(&mut self) -> Option<String> {
        self.isolation.check()
    }

    /// Executes one verified command.
    pub fn execute(&mut self, cmd: &Command) -> Result<Value, RespondError> {
        match &cmd.action {
            Action::Isolate { allow } => self.isolation.isolate(isolate::IsolationState {
                server: self.server.clone(),
                allow: allow.clone(),
                since_ms: cmd.issued_at_ms,
                by: cmd.issued_by.clone(),
                reason: cmd.reason.clone(),
                command: cmd.id.clone(),
            }),
            Action::Release => self.isolation.release(),
            Action::Kill {
                pid,
                start_ticks,
                boot_id,
                tree,
            } => kill::kill_process(*pid, *start_ticks, boot_id.as_deref(), *tree),
            Action::Quarantine { path } => Ok(json!({"item": self.quarantine.quarantine(path)?})),
            Action::Restore { item } => Ok(json!({"restored": self.quarantine.restore(item)?})),
            Action::DeleteQuarantined { item } => {
                Ok(json!({"deleted": self.quarantine.delete(item)?}))
            }
            Action::ListQuarantine => Ok(json!({"items": self.quarantine.list()?})),
            Action::CollectFile { path, max_bytes } => collect::file(path, *max_bytes),
            Action::CollectProcess { pid } => collect::process(*pid),
            Action::Triage => Ok(collect::triage()),
            Action::Blocklist {
                version,
                block,
                allow,
            } => self.blocker.set(block::Lists {
                version: *version,
                block: block.iter().cloned().collect(),
                allow: allow.iter().cloned().collect(),
            }),
        }
    }
}
