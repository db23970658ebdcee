//! The agent's end of the control channel: receives signed commands, checks them, runs them
//! through an [`Executor`], and reports the outcome.
//!
//! A command is executed only if the signature is the pinned CA's over exactly the bytes
//! received, the command names this agent, and it has not expired. Outcomes are kept by
//! command id (`commands.json` next to the identity): a command delivered again (the server
//! did not hear the outcome) is answered with the stored outcome, never executed twice.
//! Events the agent must report outside any command (isolation tampered with) are sent
//! whenever the channel is up; they wait in the queue while it is down.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mamori_wire::command::Command;
use mamori_wire::control::control_client::ControlClient;
use mamori_wire::{Report, SignedCommand};
use serde::{Deserialize, Serialize};

use crate::{Identity, LinkError, channel, status_error};

/// What runs verified commands on the host.
pub trait Executor: Send {
    /// Executes one command: its output (JSON) or why it was not done.
    fn execute(&mut self, cmd: &Command) -> Result<serde_json::Value, String>;
}

/// A stored outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Outcome {
    id: String,
    ok: bool,
    output: String,
    error: String,
}

/// Outcomes of the last commands, by id, kept on disk.
#[derive(Debug)]
pub struct Outcomes {
    path: PathBuf,
    recent: VecDeque<Outcome>,
}

const KEEP: usize = 1000;
/// Outputs larger than this are not kept for redelivery.
const KEEP_OUTPUT_BYTES: usize = 256 << 10;

impl Outcomes {
    /// Loads `commands.json` from `dir` (an unreadable file is started afresh, with a
    /// warning: commands already executed may then run again, which is why the file is
    /// written before each outcome is reported).
    pub fn open(dir: &Path) -> Outcomes {
        let path = dir.join("commands.json");
        let recent = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!("{}: unreadable ({e}); starting afresh", path.display());
                VecDeque::new()
            }),
            Err(_) => VecDeque::new(),
        };
        Outcomes { path, recent }
    }

    fn get(&self, id: &str) -> Option<&Outcome> {
        self.recent.iter().find(|o| o.id == id)
    }

    fn put(&mut self, o: Outcome) -> Result<(), LinkError> {
        self.recent.push_back(o);
        while self.recent.len() > KEEP {
            self.recent.pop_front();
        }
        let tmp = self.path.with_extension("tmp");
        let body =
            serde_json::to_vec(&self.recent).map_err(|e| LinkError::Invalid(e.to_string()))?;
        std::fs::write(&tmp, body)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| LinkError::Io {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }
}

/// Checks a signed command: the pinned CA's signature, addressed to this agent, not expired.
pub fn open_command(
    ident: &Identity,
    signed: &SignedCommand,
    now_ms: i64,
) -> Result<Command, String> {
    mamori_pki::verify(&ident.ca_pem, &signed.body, &signed.signature)
        .map_err(|_| "the signature is not the server CA's".to_string())?;
    let cmd: Command =
        serde_json::from_slice(&signed.body).map_err(|e| format!("unreadable command: {e}"))?;
    if cmd.agent_id != ident.agent_id {
        return Err(format!("addressed to agent {}, not this one", cmd.agent_id));
    }
    if now_ms > cmd.expires_at_ms {
        return Err(format!("expired at {} ms", cmd.expires_at_ms));
    }
    Ok(cmd)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn report(kind: &str, id: &str, ok: bool, output: String, error: String) -> Report {
    Report {
        kind: kind.into(),
        command_id: id.into(),
        ok,
        output_json: output,
        error,
    }
}

/// Runs the control channel until `stop`, reconnecting after failures. `events` are
/// reported (kind `event`) whenever connected.
pub async fn control(
    ident: &Identity,
    executor: Arc<Mutex<dyn Executor>>,
    events: Arc<Mutex<VecDeque<serde_json::Value>>>,
    outcomes: Arc<Mutex<Outcomes>>,
    stop: Arc<AtomicBool>,
) -> Result<(), LinkError> {
    crate::reconnecting(
        "control channel",
        &ident.server,
        &stop,
        Duration::from_secs(5),
        async || control_once(ident, &executor, &events, &outcomes, &stop).await,
    )
    .await
}

async fn control_once(
    ident: &Identity,
    executor: &Arc<Mutex<dyn Executor>>,
    events: &Arc<Mutex<VecDeque<serde_json::Value>>>,
    outcomes: &Arc<Mutex<Outcomes>>,
    stop: &Arc<AtomicBool>,
) -> Result<(), LinkError> {
    let ch = channel(
        &ident.server,
        &ident.ca_pem,
        Some((&ident.cert_pem, &ident.key_pem)),
    )
    .await?;
    let mut client = ControlClient::new(ch)
        .max_decoding_message_size(1 << 20)
        .max_encoding_message_size(mamori_wire::MAX_CONTROL_BYTES);
    let (tx, rx) = tokio::sync::mpsc::channel::<Report>(16);
    tx.send(report("hello", "", true, String::new(), String::new()))
        .await
        .map_err(|_| LinkError::Transport("the control stream closed".into()))?;
    let response = client
        .channel(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(status_error)?;
    let mut inbound = response.into_inner();
    let lost = || LinkError::Transport("the control stream closed".into());
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Events first (a tamper report must not wait behind commands).
        let pending: Vec<serde_json::Value> = events
            .lock()
            .map(|mut q| q.drain(..).collect())
            .unwrap_or_default();
        for (i, e) in pending.iter().enumerate() {
            if tx
                .send(report("event", "", true, e.to_string(), String::new()))
                .await
                .is_err()
            {
                // Put back what was not sent.
                if let Ok(mut q) = events.lock() {
                    for e in pending[i..].iter().rev() {
                        q.push_front(e.clone());
                    }
                }
                return Err(lost());
            }
        }
        let next = match tokio::time::timeout(Duration::from_millis(250), inbound.message()).await {
            Err(_) => continue,
            Ok(Err(status)) => return Err(status_error(status)),
            Ok(Ok(None)) => {
                return Err(LinkError::Transport(
                    "the server closed the control stream".into(),
                ));
            }
            Ok(Ok(Some(m))) => m,
        };
        let cmd = match open_command(ident, &next, now_ms()) {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!("command rejected: {why}");
                // The id of a rejected command is reported only if it parses; it may be
                // forged, and the server accepts a rejection only for its own pending ids.
                let id = serde_json::from_slice::<serde_json::Value>(&next.body)
                    .ok()
                    .and_then(|v| v["id"].as_str().map(str::to_string))
                    .unwrap_or_default();
                tx.send(report("rejected", &id, false, String::new(), why))
                    .await
                    .map_err(|_| lost())?;
                continue;
            }
        };
        let stored = outcomes.lock().ok().and_then(|o| o.get(&cmd.id).cloned());
        let outcome = match stored {
            Some(o) => o,
            None => {
                tx.send(report(
                    "received",
                    &cmd.id,
                    true,
                    String::new(),
                    String::new(),
                ))
                .await
                .map_err(|_| lost())?;
                tracing::info!(command = %cmd.id, action = cmd.action.name(), by = %cmd.issued_by, "executing");
                let exec = executor.clone();
                let c2 = cmd.clone();
                let result = tokio::task::spawn_blocking(move || {
                    exec.lock()
                        .map_err(|_| "the responder is unavailable".to_string())
                        .and_then(|mut e| e.execute(&c2))
                })
                .await
                .map_err(|e| LinkError::Transport(e.to_string()))?;
                let o = match result {
                    Ok(v) => Outcome {
                        id: cmd.id.clone(),
                        ok: true,
                        output: v.to_string(),
                        error: String::new(),
                    },
                    Err(e) => Outcome {
                        id: cmd.id.clone(),
                        ok: false,
                        output: String::new(),
                        error: e,
                    },
                };
                // Large outputs (a collected file) are reported but not kept for redelivery:
                // a repeat gets a failure asking for a new collection, never a second run.
                let kept = if o.output.len() > KEEP_OUTPUT_BYTES {
                    Outcome {
                        id: o.id.clone(),
                        ok: false,
                        output: String::new(),
                        error: format!(
                            "the outcome ({} bytes) was delivered once and not kept; run it again",
                            o.output.len()
                        ),
                    }
                } else {
                    o.clone()
                };
                if let Ok(mut store) = outcomes.lock()
                    && let Err(e) = store.put(kept)
                {
                    tracing::error!("keeping the outcome of {}: {e}", cmd.id);
                }
                o
            }
        };
        tx.send(report(
            "done",
            &outcome.id,
            outcome.ok,
            outcome.output,
            outcome.error,
        ))
        .await
        .map_err(|_| lost())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(ca: &mamori_pki::Ca) -> Identity {
        Identity {
            server: "https://127.0.0.1:7443".into(),
            agent_id: "agt-1".into(),
            tenant: "default".into(),
            ca_pem: ca.cert_pem().into(),
            cert_pem: String::new(),
            key_pem: String::new(),
        }
    }

    fn signed(ca: &mamori_pki::Ca, agent: &str, expires: i64) -> SignedCommand {
        let cmd = Command {
            id: "cmd-1".into(),
            agent_id: agent.into(),
            tenant: "default".into(),
            action: mamori_wire::command::Action::Release,
            reason: "test".into(),
            issued_by: "admin".into(),
            issued_at_ms: 0,
            expires_at_ms: expires,
        };
        let body = serde_json::to_vec(&cmd).unwrap();
        SignedCommand {
            signature: ca.sign(&body).unwrap(),
            body,
        }
    }

    #[test]
    fn only_the_pinned_cas_unaltered_unexpired_commands_for_this_agent_open() {
        let ca = mamori_pki::Ca::generate("server").unwrap();
        let me = ident(&ca);
        assert!(open_command(&me, &signed(&ca, "agt-1", 10), 5).is_ok());
        let forger = mamori_pki::Ca::generate("forger").unwrap();
        let e = open_command(&me, &signed(&forger, "agt-1", 10), 5).unwrap_err();
        assert!(e.contains("signature"), "{e}");
        let mut altered = signed(&ca, "agt-1", 10);
        altered.body = String::from_utf8(altered.body)
            .unwrap()
            .replace("release", "isolate")
            .into_bytes();
        assert!(
            open_command(&me, &altered, 5)
                .unwrap_err()
                .contains("signature")
        );
        let e = open_command(&me, &signed(&ca, "agt-2", 10), 5).unwrap_err();
        assert!(e.contains("not this one"), "{e}");
        let e = open_command(&me, &signed(&ca, "agt-1", 10), 11).unwrap_err();
        assert!(e.contains("expired"), "{e}");
    }

    #[test]
    fn outcomes_survive_a_restart_and_stay_bounded() {
        let dir = std::env::temp_dir().join(format!("mamori-outcomes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut o = Outcomes::open(&dir);
        for i in 0..KEEP + 5 {
            o.put(Outcome {
                id: format!("cmd-{i}"),
                ok: true,
                output: "{}".into(),
                error: String::new(),
            })
            .unwrap();
        }
        let again = Outcomes::open(&dir);
        assert!(
            again.get(&format!("cmd-{}", KEEP + 4)).is_some(),
            "kept across a restart"
        );
        assert!(again.get("cmd-0").is_none(), "the oldest are dropped");
        assert_eq!(again.recent.len(), KEEP);
        std::fs::write(dir.join("commands.json"), b"garbage").unwrap();
        assert!(
            Outcomes::open(&dir).recent.is_empty(),
            "an unreadable file starts afresh"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
