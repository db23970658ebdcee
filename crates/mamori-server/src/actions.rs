//! Response actions: requested through the API, signed with the CA key, queued per agent,
//! delivered over the agent's control channel, and tracked until the agent reports the
//! outcome.
//!
//! A command's life: `queued` (stored, signed) → `sent` (written to the agent's control
//! stream) → `received` (the agent verified and accepted it) → `succeeded` or `failed` (with
//! the agent's output or reason). A command not delivered before its expiry becomes
//! `expired` and is never sent. Commands queued while an agent is offline are sent when it
//! connects; commands sent but not finished are sent again on the next connection (the agent
//! recognises ids it has already executed and reports the stored outcome). Every request
//! and outcome is in the audit log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use mamori_wire::command::{Action, Allow, Command};
use mamori_wire::control::control_server::Control;
use mamori_wire::{Report, SignedCommand};
use rusqlite::{OptionalExtension, params};
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::ServerError;
use crate::service::Shared;
use crate::state::{NewAlert, State};

/// Tables of the response side.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, agent TEXT NOT NULL, action TEXT NOT NULL,
    body BLOB NOT NULL, signature BLOB NOT NULL, reason TEXT NOT NULL, issued_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, status TEXT NOT NULL,
    updated_ms INTEGER NOT NULL, output TEXT, error TEXT);
CREATE INDEX IF NOT EXISTS commands_agent ON commands (agent, status);
CREATE TABLE IF NOT EXISTS isolation (
    agent TEXT PRIMARY KEY, tenant TEXT NOT NULL, since_ms INTEGER NOT NULL, by TEXT NOT NULL,
    reason TEXT NOT NULL, command TEXT NOT NULL, verified TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hash_lists (
    tenant TEXT NOT NULL, list TEXT NOT NULL, sha256 TEXT NOT NULL, reason TEXT NOT NULL,
    by TEXT NOT NULL, at_ms INTEGER NOT NULL, PRIMARY KEY (tenant, list, sha256));
CREATE TABLE IF NOT EXISTS hash_list_versions (tenant TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS agent_blocklist (agent TEXT PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS isolation_log (
    id INTEGER PRIMARY KEY, agent TEXT NOT NULL, at_ms INTEGER NOT NULL, event TEXT NOT NULL,
    actor TEXT NOT NULL, detail TEXT NOT NULL);
";

/// Default time a command may wait for its agent.
pub const DEFAULT_TTL_S: i64 = 3600;
/// Longest.
pub const MAX_TTL_S: i64 = 7 * 86_400;

/// Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A command and where it stands.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ActionRecord {
    /// Command id.
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Agent.
    pub agent: String,
    /// `isolate`, `kill`, …
    pub action: String,
    /// The action with its parameters.
    pub request: Value,
    /// Why it was asked.
    pub reason: String,
    /// Who asked.
    pub issued_by: String,
    /// When (Unix ms).
    pub created_ms: i64,
    /// Not delivered after (Unix ms).
    pub expires_ms: i64,
    /// `queued`, `sent`, `received`, `succeeded`, `failed`, `expired`.
    pub status: String,
    /// Last change (Unix ms).
    pub updated_ms: i64,
    /// What the agent reported.
    pub output: Value,
    /// Why it failed.
    pub error: Option<String>,
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<ActionRecord> {
    let body: Vec<u8> = r.get(4)?;
    let output: Option<String> = r.get(11)?;
    Ok(ActionRecord {
        id: r.get(0)?,
        tenant: r.get(1)?,
        agent: r.get(2)?,
        action: r.get(3)?,
        request: serde_json::from_slice::<Value>(&body)
            .map(|v| v["action"].clone())
            .unwrap_or(Value::Null),
        reason: r.get(5)?,
        issued_by: r.get(6)?,
        created_ms: r.get(7)?,
        expires_ms: r.get(8)?,
        status: r.get(9)?,
        updated_ms: r.get(10)?,
        output: output
            .and_then(|o| serde_json::from_str(&o).ok())
            .unwrap_or(Value::Null),
        error: r.get(12)?,
    })
}

const COLUMNS: &str = "id, tenant, agent, action, body, reason, issued_by, created_ms, expires_ms,
    status, updated_ms, output, error";

impl State {
    fn queue_command(&self, cmd: &Command, body: &[u8], sig: &[u8]) -> Result<(), ServerError> {
        let t = now_ms();
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO commands (id, tenant, agent, action, body, signature, reason,
                     issued_by, created_ms, expires_ms, status, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'queued', ?9)",
                params![
                    cmd.id,
                    cmd.tenant,
                    cmd.agent_id,
                    cmd.action.name(),
                    body,
                    sig,
                    cmd.reason,
                    cmd.issued_by,
                    t,
                    cmd.expires_at_ms
                ],
            )?;
            crate::state::audit_in(
                &tx,
                &cmd.issued_by,
                &format!("response.{}", cmd.action.name()),
                &format!("agent:{}", cmd.agent_id),
                &format!(
                    "command={} reason={:?} request={}",
                    cmd.id,
                    cmd.reason,
                    serde_json::to_string(&cmd.action).unwrap_or_default()
                ),
            )?;
            if matches!(cmd.action, Action::Isolate { .. } | Action::Release) {
                tx.execute(
                    "INSERT INTO isolation_log (agent, at_ms, event, actor, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        cmd.agent_id,
                        t,
                        format!("{} requested", cmd.action.name()),
                        cmd.issued_by,
                        cmd.reason
                    ],
                )?;
            }
            tx.commit()
        })
    }

    /// Commands to send to `agent` now: queued ones, and with `resend` those sent earlier and
    /// not finished. Marks expired ones first.
    fn deliverable(
        &self,
        agent: &str,
        resend: bool,
    ) -> Result<Vec<(String, SignedCommand)>, ServerError> {
        let t = now_ms();
        self.with(|c| {
            c.execute(
                "UPDATE commands SET status = 'expired', updated_ms = ?2,
                     error = 'not delivered before it expired'
                 WHERE agent = ?1 AND status = 'queued' AND expires_ms < ?2",
                params![agent, t],
            )?;
            let mut st = c.prepare(
                "SELECT id, body, signature FROM commands
                 WHERE agent = ?1 AND (status = 'queued'
                     OR (?2 AND status IN ('sent', 'received') AND expires_ms >= ?3))
                 ORDER BY created_ms, rowid",
            )?;
            st.query_map(params![agent, resend, t], |r| {
                Ok((
                    r.get(0)?,
                    SignedCommand {
                        body: r.get(1)?,
                        signature: r.get(2)?,
                    },
                ))
            })?
            .collect()
        })
    }

    fn set_command_status(&self, id: &str, agent: &str, status: &str) -> Result<(), ServerError> {
        self.with(|c| {
            c.execute(
                "UPDATE commands SET status = ?3, updated_ms = ?4
                 WHERE id = ?1 AND agent = ?2 AND status IN ('queued', 'sent', 'received')",
                params![id, agent, status, now_ms()],
            )
            .map(|_| ())
        })
    }

    /// Records an agent's outcome; `None` if the command is not this agent's or finished.
    fn finish_command(
        &self,
        id: &str,
        agent: &str,
        ok: bool,
        output: &Value,
        error: &str,
    ) -> Result<Option<ActionRecord>, ServerError> {
        let t = now_ms();
        self.with(|c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE commands SET status = ?3, updated_ms = ?4, output = ?5, error = ?6
                 WHERE id = ?1 AND agent = ?2 AND status IN ('queued', 'sent', 'received')",
                params![
                    id,
                    agent,
                    if ok { "succeeded" } else { "failed" },
                    t,
                    output.to_string(),
                    (!ok).then_some(error)
                ],
            )?;
            if n == 0 {
                return Ok(None);
            }
            let rec = tx.query_row(
                &format!("SELECT {COLUMNS} FROM commands WHERE id = ?1"),
                params![id],
                record,
            )?;
            crate::state::audit_in(
                &tx,
                &format!("agent:{agent}"),
                &format!(
                    "response.{}.{}",
                    rec.action,
                    if ok { "succeeded" } else { "failed" }
                ),
                &format!("agent:{agent}"),
                &if ok {
                    format!("command={id}")
                } else {
                    format!("command={id} error={error:?}")
                },
            )?;
            let iso = |event: &str, detail: &str| {
                tx.execute(
                    "INSERT INTO isolation_log (agent, at_ms, event, actor, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![agent, t, event, rec.issued_by, detail],
                )
            };
            match (rec.action.as_str(), ok) {
                ("isolate", true) => {
                    tx.execute(
                        "INSERT OR REPLACE INTO isolation
                             (agent, tenant, since_ms, by, reason, command, verified)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            agent,
                            rec.tenant,
                            t,
                            rec.issued_by,
                            rec.reason,
                            id,
                            output.to_string()
                        ],
                    )?;
                    iso("isolated", &output.to_string())?;
                }
                ("release", true) => {
                    tx.execute("DELETE FROM isolation WHERE agent = ?1", params![agent])?;
                    iso("released", &output.to_string())?;
                }
                ("isolate" | "release", false) => {
                    iso(&format!("{} failed", rec.action), error)?;
                }
                _ => {}
            }
            tx.commit()?;
            Ok(Some(rec))
        })
    }

    /// One command.
    pub fn command(&self, id: &str) -> Result<Option<ActionRecord>, ServerError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM commands WHERE id = ?1"),
                params![id],
                record,
            )
            .optional()
        })
    }

    /// Commands, newest first, optionally of one tenant and one agent.
    pub fn commands(
        &self,
        tenant: Option<&str>,
        agent: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ActionRecord>, ServerError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLUMNS} FROM commands
                 WHERE (?1 IS NULL OR tenant = ?1) AND (?2 IS NULL OR agent = ?2)
                 ORDER BY created_ms DESC, rowid DESC LIMIT ?3"
            ))?;
            st.query_map(params![tenant, agent, limit as i64], record)?
                .collect()
        })
    }

    /// The host's isolation (since, by, why, the verification) and its log, newest first.
    pub fn isolation(&self, agent: &str) -> Result<Value, ServerError> {
        self.with(|c| {
            let current = c
                .query_row(
                    "SELECT since_ms, by, reason, command, verified FROM isolation WHERE agent = ?1",
                    params![agent],
                    |r| {
                        let verified: String = r.get(4)?;
                        Ok(json!({"since_ms": r.get::<_, i64>(0)?, "by": r.get::<_, String>(1)?,
                            "reason": r.get::<_, String>(2)?, "command": r.get::<_, String>(3)?,
                            "verified": serde_json::from_str::<Value>(&verified).unwrap_or(Value::Null)}))
                    },
                )
                .optional()?;
            let mut st = c.prepare(
                "SELECT at_ms, event, actor, detail FROM isolation_log WHERE agent = ?1
                 ORDER BY id DESC LIMIT 200",
            )?;
            let log: Vec<Value> = st
                .query_map(params![agent], |r| {
                    Ok(json!({"at_ms": r.get::<_, i64>(0)?, "event": r.get::<_, String>(1)?,
                        "actor": r.get::<_, String>(2)?, "detail": r.get::<_, String>(3)?}))
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(json!({"isolated": current.is_some(), "current": current, "log": log}))
        })
    }

    /// Agents currently isolated, with since when.
    pub fn isolated_agents(&self) -> Result<HashMap<String, Value>, ServerError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT agent, since_ms, by, reason FROM isolation")?;
            st.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    json!({"since_ms": r.get::<_, i64>(1)?, "by": r.get::<_, String>(2)?,
                        "reason": r.get::<_, String>(3)?}),
                ))
            })?
            .collect()
        })
    }

    fn log_isolation(&self, agent: &str, event: &str, detail: &str) -> Result<(), ServerError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO isolation_log (agent, at_ms, event, actor, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![agent, now_ms(), event, format!("agent:{agent}"), detail],
            )
            .map(|_| ())
        })
    }
}

/// A tenant's execution blocklist and allowlist.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HashLists {
    /// Tenant.
    pub tenant: String,
    /// Increases with every change.
    pub version: u64,
    /// Hashes that must not execute: {sha256, reason, by, at_ms}.
    pub block: Vec<Value>,
    /// Hashes never blocked (and never flagged again).
    pub allow: Vec<Value>,
}

impl State {
    /// The tenant's lists.
    pub fn hash_lists(&self, tenant: &str) -> Result<HashLists, ServerError> {
        self.with(|c| {
            let version: i64 = c
                .query_row(
                    "SELECT version FROM hash_list_versions WHERE tenant = ?1",
                    params![tenant],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            let mut st = c.prepare(
                "SELECT list, sha256, reason, by, at_ms FROM hash_lists WHERE tenant = ?1
                 ORDER BY at_ms, sha256",
            )?;
            let (mut block, mut allow) = (Vec::new(), Vec::new());
            for row in st.query_map(params![tenant], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    json!({"sha256": r.get::<_, String>(1)?, "reason": r.get::<_, String>(2)?,
                        "by": r.get::<_, String>(3)?, "at_ms": r.get::<_, i64>(4)?}),
                ))
            })? {
                let (list, v) = row?;
                if list == "block" {
                    block.push(v)
                } else {
                    allow.push(v)
                }
            }
            Ok(HashLists {
                tenant: tenant.to_string(),
                version: version as u64,
                block,
                allow,
            })
        })
    }

    /// Adds (or with `add` false removes) a hash on a tenant's `block` or `allow` list;
    /// returns the new version. An allowlisted hash cannot be blocked.
    pub fn change_hash_list(
        &self,
        actor: &str,
        tenant: &str,
        list: &str,
        sha256: &str,
        reason: &str,
        add: bool,
    ) -> Result<Option<u64>, ServerError> {
        if list != "block" && list != "allow" {
            return Err(ServerError::Invalid(format!(
                "list {list:?}: block or allow"
            )));
        }
        if sha256.len() != 64
            || !sha256
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        {
            return Err(ServerError::Invalid(format!(
                "{sha256:?}: a SHA-256 is 64 lowercase hex digits"
            )));
        }
        let t = now_ms();
        let r = self.with(|c| {
            let tx = c.transaction()?;
            if add && list == "block" {
                let allowed: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM hash_lists WHERE tenant = ?1 AND list = 'allow' AND sha256 = ?2)",
                    params![tenant, sha256],
                    |r| r.get(0),
                )?;
                if allowed {
                    return Ok(Err(format!("{sha256} is allowlisted: remove it from the allowlist first")));
                }
            }
            let n = if add {
                tx.execute(
                    "INSERT OR REPLACE INTO hash_lists (tenant, list, sha256, reason, by, at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![tenant, list, sha256, reason, actor, t],
                )?
            } else {
                tx.execute(
                    "DELETE FROM hash_lists WHERE tenant = ?1 AND list = ?2 AND sha256 = ?3",
                    params![tenant, list, sha256],
                )?
            };
            if n == 0 {
                return Ok(Ok(None));
            }
            tx.execute(
                "INSERT INTO hash_list_versions (tenant, version) VALUES (?1, 1)
                 ON CONFLICT(tenant) DO UPDATE SET version = version + 1",
                params![tenant],
            )?;
            let v: i64 = tx.query_row(
                "SELECT version FROM hash_list_versions WHERE tenant = ?1",
                params![tenant],
                |r| r.get(0),
            )?;
            crate::state::audit_in(
                &tx,
                actor,
                &format!("{list}list.{}", if add { "add" } else { "remove" }),
                &format!("sha256:{sha256}"),
                &format!("tenant={tenant} version={v} reason={reason:?}"),
            )?;
            tx.commit()?;
            Ok(Ok(Some(v as u64)))
        })?;
        r.map_err(ServerError::Invalid)
    }

    /// Whether any of `hashes` is on the tenant's allowlist (its files are never flagged).
    pub fn allowlisted(&self, tenant: &str, hashes: &[&str]) -> Result<bool, ServerError> {
        if hashes.is_empty() {
            return Ok(false);
        }
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM hash_lists
                 WHERE tenant = ?1 AND list = 'allow' AND sha256 = ?2)",
            )?;
            for h in hashes {
                if st.query_row(params![tenant, h.to_ascii_lowercase()], |r| {
                    r.get::<_, bool>(0)
                })? {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }

    /// The first of `hashes` on the tenant's blocklist (and not allowlisted).
    pub fn blocklisted(
        &self,
        tenant: &str,
        hashes: &[&str],
    ) -> Result<Option<String>, ServerError> {
        if hashes.is_empty() {
            return Ok(None);
        }
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM hash_lists WHERE tenant = ?1 AND list = 'block'
                     AND sha256 = ?2)
                 AND NOT EXISTS (SELECT 1 FROM hash_lists WHERE tenant = ?1 AND list = 'allow'
                     AND sha256 = ?2)",
            )?;
            for h in hashes {
                let h = h.to_ascii_lowercase();
                if st.query_row(params![tenant, h], |r| r.get::<_, bool>(0))? {
                    return Ok(Some(h));
                }
            }
            Ok(None)
        })
    }

    /// Enrolled, unrevoked agents of a tenant whose applied blocklist is older than
    /// `version` (all of them with `agent` None, else just that one).
    fn agents_behind(
        &self,
        tenant: &str,
        version: u64,
        agent: Option<&str>,
    ) -> Result<Vec<String>, ServerError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT a.id FROM agents a LEFT JOIN agent_blocklist b ON b.agent = a.id
                 WHERE a.tenant = ?1 AND a.revoked_at IS NULL AND (?3 IS NULL OR a.id = ?3)
                   AND COALESCE(b.version, 0) < ?2",
            )?;
            st.query_map(params![tenant, version as i64, agent], |r| r.get(0))?
                .collect()
        })
    }

    fn applied_blocklist(&self, agent: &str, version: u64) -> Result<(), ServerError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO agent_blocklist (agent, version) VALUES (?1, ?2)
                 ON CONFLICT(agent) DO UPDATE SET version = MAX(version, excluded.version)",
                params![agent, version as i64],
            )
            .map(|_| ())
        })
    }

    /// Older blocklist commands still waiting for `agent` are replaced by a newer one.
    fn supersede_blocklists(&self, agent: &str) -> Result<(), ServerError> {
        self.with(|c| {
            c.execute(
                "UPDATE commands SET status = 'superseded', updated_ms = ?2
                 WHERE agent = ?1 AND action = 'blocklist' AND status IN ('queued', 'sent', 'received')",
                params![agent, now_ms()],
            )
            .map(|_| ())
        })
    }
}

/// Sends the tenant's current lists to its agents that do not have them (one agent with
/// `agent`); returns how many were sent a command.
pub fn push_blocklist(
    shared: &Shared,
    tenant: &str,
    agent: Option<&str>,
) -> Result<usize, ServerError> {
    let lists = shared.state.hash_lists(tenant)?;
    if lists.version == 0 {
        return Ok(0);
    }
    let hashes = |l: &[Value]| -> Vec<String> {
        l.iter()
            .filter_map(|v| v["sha256"].as_str().map(str::to_string))
            .collect()
    };
    let behind = shared.state.agents_behind(tenant, lists.version, agent)?;
    for a in &behind {
        shared.state.supersede_blocklists(a)?;
        issue_signed(
            shared,
            "server",
            a,
            tenant,
            Action::Blocklist {
                version: lists.version,
                block: hashes(&lists.block),
                allow: hashes(&lists.allow),
            },
            &format!("blocklist version {}", lists.version),
            MAX_TTL_S,
        )?;
    }
    Ok(behind.len())
}

/// Wakes an agent's control stream when a command is queued for it.
#[derive(Default)]
pub struct Dispatch(Mutex<HashMap<String, Arc<tokio::sync::Notify>>>);

impl Dispatch {
    fn waker(&self, agent: &str) -> Arc<tokio::sync::Notify> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(agent.to_string()).or_default().clone()
    }

    fn wake(&self, agent: &str) {
        self.waker(agent).notify_one();
    }
}

/// Checks an action's parameters before it is signed.
pub fn validate(action: &Action) -> Result<(), String> {
    let path_ok = |p: &str| {
        if !p.starts_with('/') || p.len() > 4096 || p.contains('\0') {
            Err(format!("{p:?}: an absolute path is needed"))
        } else {
            Ok(())
        }
    };
    let item_ok = |i: &str| {
        if i.starts_with("q-") && i.len() <= 40 && i[2..].chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(format!("{i:?} is not a quarantine item id"))
        }
    };
    match action {
        Action::Isolate { allow } => {
            if allow.len() > 64 {
                return Err("at most 64 allowlist entries".into());
            }
            for a in allow {
                a.to_string().parse::<Allow>()?;
            }
            Ok(())
        }
        Action::Kill { pid, .. } if *pid <= 1 => Err(format!(
            "refusing to kill PID {pid}: the host would go down"
        )),
        Action::Quarantine { path } => path_ok(path),
        Action::CollectFile { path, max_bytes } => {
            path_ok(path)?;
            if *max_bytes == 0 || *max_bytes > mamori_wire::command::MAX_COLLECT_BYTES {
                return Err(format!(
                    "max_bytes: 1 to {}",
                    mamori_wire::command::MAX_COLLECT_BYTES
                ));
            }
            Ok(())
        }
        Action::Restore { item } | Action::DeleteQuarantined { item } => item_ok(item),
        Action::Blocklist { .. } => {
            Err("blocklists are managed with /api/v1/blocklist, not per host".into())
        }
        _ => Ok(()),
    }
}

fn random_id(prefix: &str) -> String {
    let b: [u8; 12] = rand::random();
    format!(
        "{prefix}-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// Signs and queues `action` for `agent` (of `tenant`), on behalf of `actor`.
pub fn issue(
    shared: &Shared,
    actor: &str,
    agent: &str,
    tenant: &str,
    action: Action,
    reason: &str,
    ttl_s: Option<i64>,
) -> Result<ActionRecord, ServerError> {
    validate(&action).map_err(ServerError::Invalid)?;
    // The administrator's allowlist applies to every isolation.
    let action = match action {
        Action::Isolate { mut allow } => {
            for a in &shared.isolation_allow {
                if !allow.contains(a) {
                    allow.push(a.clone());
                }
            }
            Action::Isolate { allow }
        }
        other => other,
    };
    if reason.trim().is_empty() || reason.len() > 1000 {
        return Err(ServerError::Invalid(
            "reason: say why (1 to 1000 characters); it goes to the audit log".into(),
        ));
    }
    let ttl = ttl_s.unwrap_or(DEFAULT_TTL_S);
    if !(10..=MAX_TTL_S).contains(&ttl) {
        return Err(ServerError::Invalid(format!(
            "ttl_seconds: 10 to {MAX_TTL_S}"
        )));
    }
    issue_signed(shared, actor, agent, tenant, action, reason, ttl)
}

fn issue_signed(
    shared: &Shared,
    actor: &str,
    agent: &str,
    tenant: &str,
    action: Action,
    reason: &str,
    ttl: i64,
) -> Result<ActionRecord, ServerError> {
    let t = now_ms();
    let cmd = Command {
        id: random_id("cmd"),
        agent_id: agent.to_string(),
        tenant: tenant.to_string(),
        action,
        reason: reason.to_string(),
        issued_by: actor.to_string(),
        issued_at_ms: t,
        expires_at_ms: t + ttl * 1000,
    };
    let body = serde_json::to_vec(&cmd).map_err(|e| ServerError::Invalid(e.to_string()))?;
    let sig = shared
        .ca
        .sign(&body)
        .map_err(|e| ServerError::Transport(format!("signing a command: {e}")))?;
    shared.state.queue_command(&cmd, &body, &sig)?;
    shared.dispatch.wake(agent);
    tracing::info!(command = %cmd.id, %agent, action = cmd.action.name(), by = %actor, "response queued");
    shared
        .state
        .command(&cmd.id)?
        .ok_or_else(|| ServerError::State("a queued command vanished".into()))
}

/// Isolates the host of a Critical alert, as the policy says, unless it is already isolated
/// or being isolated; the command is recorded as automatic (`policy:auto-contain`).
pub fn contain(
    shared: &Shared,
    req: &crate::detect::Contain,
) -> Result<Option<ActionRecord>, ServerError> {
    if req.agent.starts_with("win:") {
        return Ok(None); // no agent to isolate (uploaded logs)
    }
    if req.kill {
        return contain_by_kill(shared, req);
    }
    if shared.state.isolation(&req.agent)?["isolated"] == true {
        return Ok(None);
    }
    let local = shared
        .local_agents
        .lock()
        .map(|l| l.contains(&req.agent))
        .unwrap_or(false);
    if local {
        shared.state.audit(
            "policy:auto-contain",
            "containment.skipped",
            &format!("agent:{}", req.agent),
            &format!(
                "critical alert {}: not isolated automatically, the host runs the Mamori server",
                req.alert
            ),
        )?;
        return Ok(None);
    }
    let pending = shared
        .state
        .commands(None, Some(&req.agent), 50)?
        .into_iter()
        .any(|c| {
            c.action == "isolate" && matches!(c.status.as_str(), "queued" | "sent" | "received")
        });
    if pending {
        return Ok(None);
    }
    let mut reason = format!(
        "automatic containment of critical alert {}: {}",
        req.alert,
        req.reasons.join("; ")
    );
    if reason.len() > 1000 {
        let mut cut = 997;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
        reason.push_str("...");
    }
    issue(
        shared,
        "policy:auto-contain",
        &req.agent,
        &req.tenant,
        Action::Isolate { allow: Vec::new() },
        &reason,
        None,
    )
    .map(Some)
}

/// Limited containment (a host group whose policy is `kill`): the alert's process tree is
/// killed, the host stays on the network. Once per process.
fn contain_by_kill(
    shared: &Shared,
    req: &crate::detect::Contain,
) -> Result<Option<ActionRecord>, ServerError> {
    let Some(alert) = shared.state.alert(req.alert)? else {
        return Ok(None);
    };
    let Some((pid, start_ticks, boot_id)) =
        mamori_wire::command::parse_entity(&alert.process_entity)
    else {
        return Ok(None); // a correlation or health alert: no one process
    };
    let done = shared
        .state
        .commands(None, Some(&req.agent), 200)?
        .into_iter()
        .any(|c| {
            c.action == "kill" && c.request["pid"] == pid && c.request["start_ticks"] == start_ticks
        });
    if done {
        return Ok(None);
    }
    let reason = format!(
        "automatic containment (limited: kill) of critical alert {}: {}",
        req.alert,
        req.reasons.join("; ")
    );
    let reason: String = reason.chars().take(1000).collect();
    issue(
        shared,
        "policy:auto-contain",
        &req.agent,
        &req.tenant,
        Action::Kill {
            pid,
            start_ticks,
            boot_id,
            tree: true,
        },
        &reason,
        None,
    )
    .map(Some)
}

/// The control service.
pub struct ControlService(pub Arc<Shared>);

type CommandStream = tokio_stream::wrappers::ReceiverStream<Result<SignedCommand, Status>>;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::State(e.to_string()))?
}

/// What an agent's report changes; the collected file's content goes to disk.
fn on_report(shared: &Shared, agent: &str, tenant: &str, r: Report) -> Result<(), ServerError> {
    match r.kind.as_str() {
        "received" => shared
            .state
            .set_command_status(&r.command_id, agent, "received"),
        "done" => {
            let mut output: Value = serde_json::from_str(&r.output_json).unwrap_or(Value::Null);
            if let Some(b64) = output
                .get("content_base64")
                .and_then(Value::as_str)
                .map(str::to_string)
            {
                // Collected files are stored beside the state, not in it.
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| ServerError::Invalid(format!("collected file: {e}")))?;
                let path = shared.collected_dir.join(format!("{}.bin", r.command_id));
                // Only for this agent's own pending collection (an agent cannot write the
                // evidence of another's command).
                let own = shared.state.command(&r.command_id)?.is_some_and(|c| {
                    c.agent == agent
                        && c.action == "collect_file"
                        && matches!(c.status.as_str(), "queued" | "sent" | "received")
                });
                if own
                    && r.command_id.starts_with("cmd-")
                    && r.command_id[4..].chars().all(|c| c.is_ascii_hexdigit())
                {
                    std::fs::create_dir_all(&shared.collected_dir)
                        .and_then(|_| std::fs::write(&path, &bytes))
                        .map_err(|e| ServerError::Store(format!("{}: {e}", path.display())))?;
                    output["stored_bytes"] = json!(bytes.len());
                }
                // Never kept in the state database.
                output["content_base64"] = Value::Null;
            }
            let rec = shared
                .state
                .finish_command(&r.command_id, agent, r.ok, &output, &r.error)?;
            if let Some(rec) = rec {
                tracing::info!(command = %rec.id, %agent, action = %rec.action, ok = r.ok, "response finished");
                if rec.action == "blocklist"
                    && r.ok
                    && let Some(v) = output["version"].as_u64()
                {
                    shared.state.applied_blocklist(agent, v)?;
                }
            }
            Ok(())
        }
        "event" => {
            let v: Value = serde_json::from_str(&r.output_json).unwrap_or(Value::Null);
            let what = v["event"].as_str().unwrap_or("unknown");
            let detail = v["detail"].as_str().unwrap_or_default();
            tracing::warn!(%agent, event = %what, "{detail}");
            if what == "isolation_tampered" {
                shared.state.log_isolation(agent, "tampered", detail)?;
                let host = shared
                    .state
                    .agent(agent)?
                    .map(|a| a.hostname)
                    .unwrap_or_default();
                let at = crate::state::now().to_string();
                let tags = vec![
                    "attack.defense-evasion".to_string(),
                    "attack.t1562.004".to_string(),
                ];
                let evidence =
                    json!({"agent": agent, "host": host, "event": what, "detail": detail})
                        .to_string();
                shared.state.record_alert(&NewAlert {
                    tenant,
                    agent,
                    host: &host,
                    rule_id: "mamori-isolation-tamper",
                    rule_title: "Network isolation was tampered with",
                    level: "critical",
                    tags: &tags,
                    user: "root",
                    process_entity: &at,
                    process_executable: "",
                    command_line: "",
                    timestamp: &at,
                    evidence: evidence.as_bytes(),
                    severity: "critical",
                    severity_reasons: &[format!(
                        "someone with root on the host changed or deleted its isolation ({detail}); \
                         the agent loaded it again"
                    )],
                })?;
            }
            Ok(())
        }
        "hello" => {
            // An agent that missed blocklist changes gets the current lists.
            push_blocklist(shared, tenant, Some(agent))?;
            Ok(())
        }
        "rejected" => {
            {
                tracing::warn!(%agent, command = %r.command_id, "agent rejected a command: {}", r.error);
                shared.state.finish_command(
                    &r.command_id,
                    agent,
                    false,
                    &Value::Null,
                    &format!("rejected by the agent: {}", r.error),
                )?;
            }
            Ok(())
        }
        other => Err(ServerError::Invalid(format!(
            "unknown report kind {other:?}"
        ))),
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    type ChannelStream = CommandStream;

    async fn channel(
        &self,
        r: Request<Streaming<Report>>,
    ) -> Result<Response<Self::ChannelStream>, Status> {
        let remote = r.remote_addr();
        let (metadata, extensions, mut inbound) = r.into_parts();
        let r = Request::from_parts(metadata, extensions, ());
        let (agent, tenant) = crate::ingest::state_call(&self.0, move |shared| {
            crate::service::authorise_agent(shared, &r)
        })
        .await?;
        if remote.is_some_and(|a| a.ip().is_loopback())
            && let Ok(mut local) = self.0.local_agents.lock()
        {
            local.insert(agent.clone());
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let shared = self.0.clone();
        let waker = shared.dispatch.waker(&agent);
        // Commands out.
        let (out_shared, out_agent, out_tx) = (shared.clone(), agent.clone(), tx.clone());
        tokio::spawn(async move {
            let mut resend = true;
            loop {
                let (s, a) = (out_shared.clone(), out_agent.clone());
                let list = match blocking(move || s.state.deliverable(&a, resend)).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(agent = %out_agent, "reading commands: {e}");
                        Vec::new()
                    }
                };
                resend = false;
                for (id, signed) in list {
                    if out_tx.send(Ok(signed)).await.is_err() {
                        return;
                    }
                    let (s, a) = (out_shared.clone(), out_agent.clone());
                    let _ = blocking(move || s.state.set_command_status(&id, &a, "sent")).await;
                }
                tokio::select! {
                    _ = waker.notified() => {}
                    _ = out_tx.closed() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        });
        // Reports in.
        tokio::spawn(async move {
            while let Some(next) = inbound.next().await {
                let report = match next {
                    Ok(r) => r,
                    Err(status) => {
                        tracing::debug!(%agent, "control stream ended: {status}");
                        break;
                    }
                };
                let (s, a, t) = (shared.clone(), agent.clone(), tenant.clone());
                if let Err(e) = blocking(move || on_report(&s, &a, &t, report)).await {
                    tracing::warn!(%agent, "control report refused: {e}");
                    let _ = tx.send(Err(Status::invalid_argument(e.to_string()))).await;
                    break;
                }
            }
        });
        Ok(Response::new(CommandStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(id: &str, expires_at_ms: i64) -> Command {
        Command {
            id: id.into(),
            agent_id: "agt-1".into(),
            tenant: "default".into(),
            action: Action::Triage,
            reason: "test".into(),
            issued_by: "admin".into(),
            issued_at_ms: 0,
            expires_at_ms,
        }
    }

    #[test]
    fn commands_wait_for_their_agent_expire_and_finish_once() {
        let dir = std::env::temp_dir().join(format!("mamori-actions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let st = State::open(&dir.join("state.db")).unwrap();
        st.queue_command(&cmd("cmd-old", now_ms() - 1), b"{}", b"s")
            .unwrap();
        st.queue_command(&cmd("cmd-new", now_ms() + 60_000), b"{}", b"s")
            .unwrap();
        let d = st.deliverable("agt-1", true).unwrap();
        assert_eq!(
            d.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
            ["cmd-new"]
        );
        assert_eq!(st.command("cmd-old").unwrap().unwrap().status, "expired");
        assert!(
            st.deliverable("agt-2", true).unwrap().is_empty(),
            "per agent"
        );
        // Sent but unfinished: sent again only on a new connection.
        st.set_command_status("cmd-new", "agt-1", "sent").unwrap();
        assert!(st.deliverable("agt-1", false).unwrap().is_empty());
        assert_eq!(st.deliverable("agt-1", true).unwrap().len(), 1);
        // Another agent cannot finish it; the first outcome counts, once.
        assert!(
            st.finish_command("cmd-new", "agt-2", true, &json!({}), "")
                .unwrap()
                .is_none()
        );
        let done = st
            .finish_command("cmd-new", "agt-1", false, &Value::Null, "boom")
            .unwrap()
            .unwrap();
        assert_eq!(
            (done.status.as_str(), done.error.as_deref()),
            ("failed", Some("boom"))
        );
        assert!(
            st.finish_command("cmd-new", "agt-1", true, &json!({}), "")
                .unwrap()
                .is_none()
        );
        assert!(st.deliverable("agt-1", true).unwrap().is_empty());
        let audit = st.audit_log().unwrap();
        assert!(
            audit
                .iter()
                .any(|a| a.action == "response.triage.failed" && a.detail.contains("boom"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn actions_are_validated_before_signing() {
        assert!(
            validate(&Action::Kill {
                pid: 1,
                start_ticks: 0,
                boot_id: None,
                tree: false
            })
            .is_err()
        );
        assert!(
            validate(&Action::Quarantine {
                path: "relative".into()
            })
            .is_err()
        );
        assert!(
            validate(&Action::CollectFile {
                path: "/x".into(),
                max_bytes: 1 << 40
            })
            .is_err()
        );
        assert!(
            validate(&Action::Restore {
                item: "../../etc".into()
            })
            .is_err()
        );
        assert!(
            validate(&Action::Blocklist {
                version: 1,
                block: vec![],
                allow: vec![]
            })
            .is_err()
        );
        let bad = Action::Isolate {
            allow: vec![Allow {
                net: "1.2.3.4; flush ruleset".into(),
                port: None,
            }],
        };
        assert!(validate(&bad).is_err());
        assert!(
            validate(&Action::Isolate {
                allow: vec!["10.0.0.0/8:53".parse().unwrap()]
            })
            .is_ok()
        );
    }
}
