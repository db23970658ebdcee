//! Response commands: what the server asks one agent to do.
//!
//! A [`Command`] travels as JSON inside a [`crate::SignedCommand`]. The agent executes it only
//! if the signature is the pinned CA's, the command names this agent, it has not expired,
//! and its id was not executed before (a replayed command gets the stored outcome again).

use serde::{Deserialize, Serialize};

/// Largest file a collection returns (it travels in one control message).
pub const MAX_COLLECT_BYTES: u64 = 24 << 20;

/// One command for one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Unique id (`cmd-…`).
    pub id: String,
    /// The agent that must execute it.
    pub agent_id: String,
    /// The agent's tenant.
    pub tenant: String,
    /// What to do.
    pub action: Action,
    /// Why (from the person or policy that asked).
    pub reason: String,
    /// Who asked (API token name and id, or the automatic policy).
    pub issued_by: String,
    /// When it was asked, Unix milliseconds.
    pub issued_at_ms: i64,
    /// Not executed after this, Unix milliseconds.
    pub expires_at_ms: i64,
}

/// An address the isolated host may still reach (and be reached from).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allow {
    /// An IP address or network (`10.0.0.5`, `10.0.0.0/24`, `fd00::/64`).
    pub net: String,
    /// One port (TCP and UDP), or every port.
    #[serde(default)]
    pub port: Option<u16>,
}

impl std::fmt::Display for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) if self.net.contains(':') => write!(f, "[{}]:{p}", self.net),
            Some(p) => write!(f, "{}:{p}", self.net),
            None => f.write_str(&self.net),
        }
    }
}

impl std::str::FromStr for Allow {
    type Err = String;

    /// `ADDR`, `ADDR/PREFIX`, `ADDR:PORT`, `ADDR/PREFIX:PORT`, `[V6]:PORT`, `[V6/PREFIX]:PORT`.
    fn from_str(s: &str) -> Result<Allow, String> {
        let bad = || format!("{s:?}: expected ADDR[/PREFIX][:PORT] (IPv6 as [ADDR]:PORT)");
        let (net, port) = if let Some(rest) = s.strip_prefix('[') {
            let (net, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p.parse::<u16>().map_err(|_| bad())?),
                None if after.is_empty() => None,
                None => return Err(bad()),
            };
            (net.to_string(), port)
        } else if s.matches(':').count() == 1 {
            let (net, p) = s.split_once(':').ok_or_else(bad)?;
            (net.to_string(), Some(p.parse::<u16>().map_err(|_| bad())?))
        } else {
            (s.to_string(), None)
        };
        let (addr, prefix) = match net.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (net.as_str(), None),
        };
        let ip: std::net::IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        if prefix.is_some_and(|p| p > max) || port == Some(0) {
            return Err(bad());
        }
        Ok(Allow { net, port })
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Cut the host off the network except from the server and `allow`.
    Isolate {
        /// Reachable besides the server.
        #[serde(default)]
        allow: Vec<Allow>,
    },
    /// End isolation.
    Release,
    /// Kill a process (and its descendants with `tree`), identified by pid and start time
    /// so that a reused pid is never hit.
    Kill {
        /// Process id.
        pid: u32,
        /// Start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`; the last
        /// part of a `process.entity_id`).
        start_ticks: u64,
        /// The boot the pid belongs to (first part of a `process.entity_id`).
        #[serde(default)]
        boot_id: Option<String>,
        /// Also every descendant.
        #[serde(default)]
        tree: bool,
    },
    /// Move a file into the agent's quarantine.
    Quarantine {
        /// Absolute path.
        path: String,
    },
    /// Put a quarantined file back where it was, as it was.
    Restore {
        /// Quarantine item id.
        item: String,
    },
    /// Delete a quarantined file for good.
    DeleteQuarantined {
        /// Quarantine item id.
        item: String,
    },
    /// List the quarantine.
    ListQuarantine,
    /// Replace the agent's execution blocklist.
    Blocklist {
        /// Increases with every change.
        version: u64,
        /// SHA-256 (hex) of files that must not execute.
        block: Vec<String>,
        /// SHA-256 (hex) never blocked.
        #[serde(default)]
        allow: Vec<String>,
    },
    /// Fetch a file.
    CollectFile {
        /// Absolute path.
        path: String,
        /// Refuse larger files.
        max_bytes: u64,
    },
    /// A process's details: status, maps, open files, sockets, environment.
    CollectProcess {
        /// Process id.
        pid: u32,
    },
    /// The host's state in one bundle: processes, sockets, users, logins, persistence.
    Triage,
}

impl Action {
    /// The action's name as in the API (`isolate`, `kill`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Isolate { .. } => "isolate",
            Action::Release => "release",
            Action::Kill { .. } => "kill",
            Action::Quarantine { .. } => "quarantine",
            Action::Restore { .. } => "restore",
            Action::DeleteQuarantined { .. } => "delete_quarantined",
            Action::ListQuarantine => "list_quarantine",
            Action::Blocklist { .. } => "blocklist",
            Action::CollectFile { .. } => "collect_file",
            Action::CollectProcess { .. } => "collect_process",
            Action::Triage => "triage",
        }
    }
}

/// A process entity id `boot:pid:start_ticks` → (pid, start ticks, boot id).
pub fn parse_entity(e: &str) -> Option<(u32, u64, Option<String>)> {
    let mut parts = e.rsplitn(3, ':');
    let (ticks, pid, boot) = (parts.next(), parts.next(), parts.next());
    Some((
        pid?.parse().ok()?,
        ticks?.parse().ok()?,
        boot.map(str::to_string),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_entries_parse_and_print() {
        for (text, net, port) in [
            ("10.0.0.5", "10.0.0.5", None),
            ("10.0.0.0/24", "10.0.0.0/24", None),
            ("10.0.0.5:443", "10.0.0.5", Some(443)),
            ("10.0.0.0/8:53", "10.0.0.0/8", Some(53)),
            ("fd00::1", "fd00::1", None),
            ("[fd00::1]:53", "fd00::1", Some(53)),
            ("[fd00::/64]", "fd00::/64", None),
        ] {
            let a: Allow = text.parse().unwrap();
            assert_eq!((a.net.as_str(), a.port), (net, port), "{text}");
            assert_eq!(a.to_string().parse::<Allow>().unwrap(), a);
        }
        for bad in [
            "",
            "host.example",
            "10.0.0.5:0",
            "10.0.0.5:x",
            "10.0.0.0/33",
            "[fd00::1",
            "1.2.3.4:5:6x",
            "[::1]x",
        ] {
            assert!(bad.parse::<Allow>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commands_round_trip_and_refuse_unknown_fields() {
        let c = Command {
            id: "cmd-1".into(),
            agent_id: "agt-1".into(),
            tenant: "default".into(),
            action: Action::Kill {
                pid: 42,
                start_ticks: 7,
                boot_id: None,
                tree: true,
            },
            reason: "r".into(),
            issued_by: "admin".into(),
            issued_at_ms: 1,
            expires_at_ms: 2,
        };
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Command>(&j).unwrap(), c);
        let bad = j.replace("\"tree\":true", "\"tree\":true,\"force\":true");
        assert!(serde_json::from_str::<Command>(&bad).is_err());
        assert_eq!(c.action.name(), "kill");
    }
}
