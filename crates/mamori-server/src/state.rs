//! Server state in an embedded SQL database (SQLite): admin tokens, enrollment tokens,
//! agents, and the audit log. Secrets are stored as hashes only. Every change that a person
//! or an agent causes is written to the audit log in the same transaction.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mamori_pki::Secret;
use rusqlite::{Connection, OptionalExtension, params};

use crate::ServerError;

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Why an enrollment token was refused. The agent is told only "refused"; the server log and
/// the audit log keep the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No token with this value.
    Unknown,
    /// Past its expiry.
    Expired,
    /// All its uses are spent.
    UsedUp,
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenRefusal::Unknown => "unknown enrollment token",
            TokenRefusal::Expired => "enrollment token expired",
            TokenRefusal::UsedUp => "enrollment token used up",
        })
    }
}

/// A new enrollment token (the secret is shown once).
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Its id (not secret: for listing and deleting).
    pub id: i64,
    /// The secret.
    pub token: String,
    /// Tenant the agents enrolled with it belong to.
    pub tenant: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: i64,
    /// Uses allowed.
    pub uses: i64,
}

/// What an API token may do. Each role may do what the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read alerts, hosts and events.
    Viewer,
    /// Also change alerts, upload Windows logs, manage rules.
    Analyst,
    /// Also create and revoke API and enrollment tokens.
    Admin,
}

impl Role {
    /// Parses `viewer`, `analyst` or `admin`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "analyst" => Some(Role::Analyst),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }
}

/// Who is calling the API: an API token's identity (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Token id.
    pub token_id: i64,
    /// The name given to the token (a person or an integration).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The one tenant it may see; `None`: every tenant.
    pub tenant: Option<String>,
}

impl Principal {
    /// The actor written to the audit log.
    pub fn actor(&self) -> String {
        format!("token:{}:{}", self.token_id, self.name)
    }

    /// Whether it may see `tenant`'s data.
    pub fn sees(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }
}

/// An API token as listed (the secret exists only as a hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiToken {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Tenant it is limited to.
    pub tenant: Option<String>,
    /// Created, seconds since the epoch.
    pub created_at: i64,
    /// Revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// An enrollment token as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EnrollToken {
    /// Id.
    pub id: i64,
    /// Tenant of the agents that enroll with it.
    pub tenant: String,
    /// Expiry, seconds since the epoch.
    pub expires_at: i64,
    /// Uses left.
    pub uses_left: i64,
    /// Created, seconds since the epoch.
    pub created_at: i64,
}

/// Checks a tenant name: letters, digits, `-`, `_`, `.`; at most 64.
pub fn check_tenant(tenant: &str) -> Result<(), ServerError> {
    if tenant.is_empty()
        || tenant.len() > 64
        || !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(ServerError::Invalid(format!(
            "tenant {tenant:?}: 1 to 64 letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

/// An open alert on a process tree (for assessing severity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeAlert {
    /// Alert id.
    pub id: i64,
    /// Rule id.
    pub rule_id: String,
    /// Rule level.
    pub level: String,
    /// Severity now.
    pub severity: String,
    /// Host.
    pub host: String,
}

/// Order of severities (unknown: lowest).
pub fn severity_rank(s: &str) -> i64 {
    match s {
        "critical" => 4,
        "high" => 3,
        "medium" => 2,
        "low" => 1,
        _ => 0,
    }
}

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// Agent id (the common name of its certificate).
    pub id: String,
    /// Tenant.
    pub tenant: String,
    /// Host name it reported.
    pub hostname: String,
    /// Serial of its current certificate (hex).
    pub serial: String,
    /// When it enrolled.
    pub enrolled_at: i64,
    /// When it last connected.
    pub last_seen: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// One audit record: who did what to what, when, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    /// Seconds since the epoch.
    pub at: i64,
    /// Who (`admin`, `agent:<id>`, `peer:<address>`, `server`).
    pub actor: String,
    /// What (`agent.enroll`, `agent.revoke`, …).
    pub action: String,
    /// On what.
    pub target: String,
    /// Details (never secrets).
    pub detail: String,
}

/// A detection to record as an alert (or fold into an existing one).
#[derive(Debug)]
pub struct NewAlert<'a> {
    /// Tenant.
    pub tenant: &'a str,
    /// Agent.
    pub agent: &'a str,
    /// Host name from the event.
    pub host: &'a str,
    /// Rule id (title when the rule has none).
    pub rule_id: &'a str,
    /// Rule title.
    pub rule_title: &'a str,
    /// Rule level.
    pub level: &'a str,
    /// Rule tags (ATT&CK).
    pub tags: &'a [String],
    /// User.
    pub user: &'a str,
    /// Process entity id (the fold key's process).
    pub process_entity: &'a str,
    /// Process executable.
    pub process_executable: &'a str,
    /// Command line.
    pub command_line: &'a str,
    /// Event time.
    pub timestamp: &'a str,
    /// The event (JSON), kept as evidence.
    pub evidence: &'a [u8],
    /// Severity from the evidence (`critical`, `high`, …; see `mamori-soc`).
    pub severity: &'a str,
    /// The facts that set it.
    pub severity_reasons: &'a [String],
}

/// A stored alert.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Alert {
    /// Alert id.
    pub id: i64,
    /// Tenant.
    pub tenant: String,
    /// Agent.
    pub agent: String,
    /// Host.
    pub host: String,
    /// Rule id.
    pub rule_id: String,
    /// Rule title.
    pub rule_title: String,
    /// Level.
    pub level: String,
    /// Tags.
    pub tags: serde_json::Value,
    /// User.
    pub user: String,
    /// Process entity id.
    pub process_entity: String,
    /// Executable.
    pub process_executable: String,
    /// Command line.
    pub command_line: String,
    /// First and last event times.
    pub first_seen: String,
    /// Last event time.
    pub last_seen: String,
    /// Detections folded into this alert.
    pub count: i64,
    /// `open`, …
    pub status: String,
    /// Up to ten events that caused it.
    pub evidence: serde_json::Value,
    /// Severity from the evidence: `critical`, `high`, `medium`, `low`, `informational`.
    pub severity: String,
    /// The facts that raised it or kept it from being raised.
    pub severity_reasons: serde_json::Value,
}

/// An agent's sensor, as its heartbeats describe it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HostStatus {
    /// Agent id.
    pub agent: String,
    /// Tenant.
    pub tenant: String,
    /// Host name.
    pub hostname: String,
    /// Addresses reported.
    pub addresses: serde_json::Value,
    /// `online`, `degraded` (collecting with gaps or drops), `offline` (no heartbeat for
    /// three intervals), `stopped` (the sensor said it stopped), `revoked`, or `unknown` (no
    /// heartbeat yet).
    pub status: String,
    /// Last heartbeat, seconds since the epoch.
    pub heartbeat_at: Option<i64>,
    /// The sensor's last health report.
    pub health: serde_json::Value,
    /// Network isolation in force (since, by, why), or null.
    pub isolation: serde_json::Value,
}

/// The state database.
pub struct State {
    conn: Mutex<Connection>,
    path: PathBuf,
    alerted: Arc<Alerted>,
}

/// Every `agent|process entity` that has an alert, shared by the connections of one server
/// ([`State::reopen`]), so that the lookup detection makes for each connection to an external
/// address ([`State::alerts_on_tree`]) skips the database for the trees that have none, which
/// is nearly all of them. A superset: an alert rolled back or closed stays in it, and that
/// costs only a lookup. `None` (every lookup goes to the database) until the server starts
/// tracking alerts ([`State::track_alerts`], before any is recorded), and once it would hold
/// more than [`ALERTED_MAX`].
#[derive(Debug)]
struct Alerted(Mutex<Option<HashSet<String>>>);

/// Most entries [`Alerted`] keeps.
const ALERTED_MAX: usize = 1_000_000;

impl Alerted {
    fn key(agent: &str, entity: &str) -> String {
        format!("{agent}|{entity}")
    }

    fn load(conn: &Connection) -> Result<Option<HashSet<String>>, ServerError> {
        let mut keys = HashSet::new();
        let mut st = conn
            .prepare("SELECT DISTINCT agent, process_entity FROM alerts")
            .map_err(db)?;
        let mut rows = st.query([]).map_err(db)?;
        while let Some(r) = rows.next().map_err(db)? {
            if keys.len() >= ALERTED_MAX {
                return Ok(None);
            }
            let (agent, entity): (String, String) = (r.get(0).map_err(db)?, r.get(1).map_err(db)?);
            keys.insert(Alerted::key(&agent, &entity));
        }
        Ok(Some(keys))
    }

    fn insert(&self, agent: &str, entity: &str) {
        if let Ok(mut keys) = self.0.lock()
            && let Some(set) = keys.as_mut()
        {
            if set.len() >= ALERTED_MAX {
                *keys = None;
            } else {
                set.insert(Alerted::key(agent, entity));
            }
        }
    }

    /// Whether any of `entities` of `agent` may have an alert.
    fn any(&self, agent: &str, entities: &[&str]) -> bool {
        let Ok(keys) = self.0.lock() else {
            return true;
        };
        let Some(set) = keys.as_ref() else {
            return true;
        };
        let mut key = String::with_capacity(agent.len() + 64);
        entities.iter().filter(|e| !e.is_empty()).any(|e| {
            key.clear();
            key.push_str(agent);
            key.push('|');
            key.push_str(e);
            set.contains(&key)
        })
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS admin_tokens (
    id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS enroll_tokens (
    id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL,
    expires_at INTEGER NOT NULL, uses_left INTEGER NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, hostname TEXT NOT NULL, os TEXT NOT NULL,
    kernel TEXT NOT NULL, agent_version TEXT NOT NULL, serial TEXT NOT NULL,
    enrolled_at INTEGER NOT NULL, last_seen INTEGER NOT NULL, revoked_at INTEGER);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY, fold_key TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL,
    agent TEXT NOT NULL, host TEXT NOT NULL, rule_id TEXT NOT NULL, rule_title TEXT NOT NULL,
    level TEXT NOT NULL, tags TEXT NOT NULL, user TEXT NOT NULL, process_entity TEXT NOT NULL,
    process_executable TEXT NOT NULL, command_line TEXT NOT NULL, first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL, count INTEGER NOT NULL, status TEXT NOT NULL,
    evidence TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_tenant ON alerts (tenant, id);
CREATE INDEX IF NOT EXISTS alerts_process ON alerts (agent, process_entity);
CREATE TABLE IF NOT EXISTS uploaded_hosts (
    tenant TEXT NOT NULL, host TEXT NOT NULL, first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL, events INTEGER NOT NULL, PRIMARY KEY (tenant, host));
CREATE TABLE IF NOT EXISTS custom_rules (
    id TEXT PRIMARY KEY, title TEXT NOT NULL, yaml TEXT NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS disabled_rules (
    id TEXT PRIMARY KEY, at INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS progress (name TEXT PRIMARY KEY, through INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, at INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL, detail TEXT NOT NULL);
";

/// The open alerts of one process of an agent. Detection asks this for every alert it raises,
/// so it must go through the `alerts_process` index: a scan of the table made each alert cost
/// more than the one before.
const ALERTS_ON_TREE: &str = "SELECT id, rule_id, level, severity, host FROM alerts
     WHERE agent = ?1 AND process_entity = ?2 AND status != 'closed'";

/// Alerts by status and id (`?3`, `?4`; each may be NULL) and `tenant`, newest first, at most
/// `?2`; or, from id `?5` on (one past the last alert a reader has), oldest first. The id is
/// a range so that one alert is found through the primary key: an `id = ?4` inside an `OR`
/// made SQLite walk the table from the newest alert down to it.
macro_rules! alerts_where {
    ($tenant:literal, $order:literal) => {
        concat!(
            "SELECT id, tenant, agent, host, rule_id, rule_title, level, tags, user,
                process_entity, process_executable, command_line, first_seen, last_seen, count,
                status, evidence, severity, severity_reasons
             FROM alerts WHERE ",
            $tenant,
            " AND (?3 IS NULL OR status = ?3)
               AND id BETWEEN coalesce(?4, ?5, -9223372036854775808)
                   AND coalesce(?4, 9223372036854775807)
             ORDER BY id ",
            $order,
            " LIMIT ?2"
        )
    };
}
/// All tenants' alerts (`?1` is NULL).
const ALERTS_WHERE: &str = alerts_where!("?1 IS NULL", "DESC");
/// One tenant's alerts, through `alerts_tenant`: `?1 IS NULL OR tenant = ?1` could not use
/// the index, so a tenant with few alerts among many walked all of them.
const ALERTS_OF_TENANT: &str = alerts_where!("tenant = ?1", "DESC");
/// [`ALERTS_WHERE`] after an alert, oldest first.
const ALERTS_AFTER: &str = alerts_where!("?1 IS NULL", "ASC");
/// [`ALERTS_OF_TENANT`] after an alert, oldest first.
const ALERTS_OF_TENANT_AFTER: &str = alerts_where!("tenant = ?1", "ASC");

/// Which alerts [`State::alerts_where`] lists.
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertFilter<'a> {
    /// One tenant's (all tenants' when `None`).
    pub tenant: Option<&'a str>,
    /// Only those with this status.
    pub status: Option<&'a str>,
    /// Only this one.
    pub id: Option<i64>,
    /// Only those raised after the alert with this id, oldest first (a reader that keeps
    /// the last id it saw gets each new alert once). Without it: newest first.
    pub after: Option<i64>,
}

fn db(e: rusqlite::Error) -> ServerError {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        Some(
            DatabaseBusy
            | DatabaseLocked
            | DiskFull
            | SystemIoFailure
            | OutOfMemory
            | CannotOpen
            | ReadOnly
            | FileLockingProtocolFailed,
        ) => ServerError::StateUnavailable(e.to_string()),
        _ => ServerError::State(e.to_string()),
    }
}

/// A connection to the database at `path` (created if missing).
fn connect(path: &Path) -> Result<Connection, ServerError> {
    let conn = Connection::open(path).map_err(db)?;
    // Detection writes through a connection of its own: a writer waits for the other.
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db)?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
        .map_err(db)?;
    Ok(conn)
}

impl State {
    /// Opens (creating) the database.
    pub fn open(path: &Path) -> Result<State, ServerError> {
        let conn = connect(path)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        conn.execute_batch(crate::actions::SCHEMA).map_err(db)?;
        conn.execute_batch(crate::incidents::SCHEMA).map_err(db)?;
        conn.execute_batch(crate::tuning::SCHEMA).map_err(db)?;
        // Columns added after the first release of the schema.
        for col in [
            "name TEXT NOT NULL DEFAULT 'admin'",
            "role TEXT NOT NULL DEFAULT 'admin'",
            "tenant TEXT",
            "revoked_at INTEGER",
        ] {
            match conn.execute(&format!("ALTER TABLE admin_tokens ADD COLUMN {col}"), []) {
                Ok(_) => {}
                Err(e) if e.to_string().contains("duplicate column") => {}
                Err(e) => return Err(db(e)),
            }
        }
        for col in [
            "severity TEXT NOT NULL DEFAULT ''",
            "severity_reasons TEXT NOT NULL DEFAULT '[]'",
        ] {
            match conn.execute(&format!("ALTER TABLE alerts ADD COLUMN {col}"), []) {
                Ok(_) => {}
                Err(e) if e.to_string().contains("duplicate column") => {}
                Err(e) => return Err(db(e)),
            }
        }
        for col in [
            "heartbeat_at INTEGER",
            "heartbeat_interval INTEGER",
            "health TEXT",
            "addresses TEXT",
            "stopped_at INTEGER",
            "silent_alerted INTEGER NOT NULL DEFAULT 0",
        ] {
            match conn.execute(&format!("ALTER TABLE agents ADD COLUMN {col}"), []) {
                Ok(_) => {}
                Err(e) if e.to_string().contains("duplicate column") => {}
                Err(e) => return Err(db(e)),
            }
        }
        Ok(State {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            alerted: Arc::new(Alerted(Mutex::new(None))),
        })
    }

    /// Keeps in memory which processes have alerts, so that looking up the alerts of a
    /// process tree that has none costs no query. The server calls it once, at start, before
    /// any alert is recorded and before [`State::reopen`]: an alert recorded meanwhile by
    /// another process would be missed (the CLI's commands never record alerts).
    pub fn track_alerts(&self) -> Result<(), ServerError> {
        let keys = self.with(|c| Ok(Alerted::load(c)))??;
        *self
            .alerted
            .0
            .lock()
            .map_err(|_| ServerError::State("alert set lock poisoned".into()))? = keys;
        Ok(())
    }

    /// Another connection to the same database, for a thread that writes in batches of its
    /// own (detection); it shares what this one knows of alerts.
    pub fn reopen(&self) -> Result<State, ServerError> {
        Ok(State {
            conn: Mutex::new(connect(&self.path)?),
            path: self.path.clone(),
            alerted: self.alerted.clone(),
        })
    }

    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, ServerError> {
        let mut c = self
            .conn
            .lock()
            .map_err(|_| ServerError::State("state lock poisoned".into()))?;
        f(&mut c).map_err(db)
    }

    /// Starts a batch: the writes that follow, until [`State::commit_batch`], are committed
    /// together, with one fsync for all. Holds the database's write lock until then. Only for
    /// a connection that one thread owns (a `State` opened for it): another user of the same
    /// connection would write into the batch.
    pub fn begin_batch(&self) -> Result<(), ServerError> {
        self.with(|c| c.execute_batch("BEGIN IMMEDIATE"))
    }

    /// Commits a batch; if the commit fails, rolls it back so that the connection stays
    /// usable.
    pub fn commit_batch(&self) -> Result<(), ServerError> {
        self.with(|c| {
            c.execute_batch("COMMIT").inspect_err(|_| {
                let _ = c.execute_batch("ROLLBACK");
            })
        })
    }

    /// Rolls a batch back: none of its writes are kept.
    pub fn rollback_batch(&self) -> Result<(), ServerError> {
        self.with(|c| {
            if c.is_autocommit() {
                Ok(()) // already rolled back (a failed commit does that)
            } else {
                c.execute_batch("ROLLBACK")
            }
        })
    }

    /// How far detection has gone through the event log (`None` before the first start
    /// that recorded it).
    pub fn detected_through(&self) -> Result<Option<u64>, ServerError> {
        self.with(|c| {
            c.query_row(
                "SELECT through FROM progress WHERE name = 'detection'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()
        })
        .map(|t| t.map(|t| t as u64))
    }

    /// Records how far detection has gone (in a batch: with the alerts of those events).
    pub fn set_detected_through(&self, through: u64) -> Result<(), ServerError> {
        self.with(|c| {
            c.prepare_cached(
                "INSERT INTO progress (name, through) VALUES ('detection', ?1)
                 ON CONFLICT (name) DO UPDATE SET through = excluded.through",
            )?
            .execute(params![through as i64])
            .map(|_| ())
        })
    }

    /// Creates the first admin token if there is none; returns it (to be shown once).
    pub fn first_admin_token(&self) -> Result<Option<String>, ServerError> {
        self.with(|c| {
            let n: i64 = c.query_row("SELECT COUNT(*) FROM admin_tokens", [], |r| r.get(0))?;
            if n > 0 {
                return Ok(None);
            }
            let (token, hash) = Secret::generate("mamori_admin");
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO admin_tokens (hash, created_at) VALUES (?1, ?2)",
                params![hash, now()],
            )?;
            audit_in(&tx, "server", "admin-token.create", "admin", "first start")?;
            tx.commit()?;
            Ok(Some(token))
        })
    }

    /// The principal behind an API token, if the token is valid and not revoked.
    pub fn authenticate(&self, token: &str) -> Result<Option<Principal>, ServerError> {
        let hash = Secret::hash(token);
        self.with(|c| {
            let found: Option<(i64, String, String, String, Option<String>)> = c
                .query_row(
                    "SELECT id, hash, name, role, tenant FROM admin_tokens
                     WHERE hash = ?1 AND revoked_at IS NULL",
                    params![hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            Ok(found.and_then(|(id, h, name, role, tenant)| {
                (Secret::verify(token, &h)).then_some(())?;
                Some(Principal {
                    token_id: id,
                    name,
                    role: Role::parse(&role)?,
                    tenant,
                })
            }))
        })
    }

    /// Creates an API token (the secret is returned once).
    pub fn create_api_token(
        &self,
        actor: &str,
        name: &str,
        role: Role,
        tenant: Option<&str>,
    ) -> Result<(i64, String), ServerError> {
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(ServerError::Invalid(
                "name: 1 to 64 printable characters".into(),
            ));
        }
        if let Some(t) = tenant {
            check_tenant(t)?;
        }
        let (token, hash) = Secret::generate("mamori_api");
        let id = self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO admin_tokens (hash, created_at, name, role, tenant)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![hash, now(), name, role.as_str(), tenant],
            )?;
            let id = tx.last_insert_rowid();
            audit_in(
                &tx,
                actor,
                "api-token.create",
                &format!("api-token:{id}"),
                &format!(
                    "name={name} role={} tenant={}",
                    role.as_str(),
                    tenant.unwrap_or("*")
                ),
            )?;
            tx.commit()?;
            Ok(id)
        })?;
        Ok((id, token))
    }

    /// API tokens, oldest first.
    pub fn api_tokens(&self) -> Result<Vec<ApiToken>, ServerError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, name, role, tenant, created_at, revoked_at FROM admin_tokens ORDER BY id",
            )?;
            let rows = st.query_map([], |r| {
                let role: String = r.get(2)?;
                Ok(ApiToken {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    role: Role::parse(&role).unwrap_or(Role::Viewer),
                    tenant: r.get(3)?,
                    created_at: r.get(4)?,
                    revoked_at: r.get(5)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Revokes an API token; false if there is no such token or it was already revoked.
    /// The last unrevoked all-tenant admin token cannot be revoked (nobody could administer
    /// the server any more).
    pub fn revoke_api_token(&self, actor: &str, id: i64) -> Result<bool, ServerError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let row: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT role, tenant FROM admin_tokens WHERE id = ?1 AND revoked_at IS NULL",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((role, tenant)) = row else {
                return Ok(Ok(false));
            };
            if role == "admin" && tenant.is_none() {
                let others: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM admin_tokens
                     WHERE role = 'admin' AND tenant IS NULL AND revoked_at IS NULL AND id != ?1",
                    params![id],
                    |r| r.get(0),
                )?;
                if others == 0 {
                    return Ok(Err(()));
                }
            }
            tx.execute(
                "UPDATE admin_tokens SET revoked_at = ?2 WHERE id = ?1",
                params![id, now()],
            )?;
            audit_in(
                &tx,
                actor,
                "api-token.revoke",
                &format!("api-token:{id}"),
                "",
            )?;
            tx.commit()?;
            Ok(Ok(true))
        })?
        .map_err(|()| {
            ServerError::Invalid(
                "this is the last administrator token: create another before revoking it".into(),
            )
        })
    }

    /// Custom rules: (id, YAML), oldest first.
    pub fn custom_rules(&self) -> Result<Vec<(String, String)>, ServerError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT id, yaml FROM custom_rules ORDER BY created_at, id")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    /// Stores a custom rule (already validated).
    pub fn add_custom_rule(
        &self,
        actor: &str,
        id: &str,
        title: &str,
        yaml: &str,
    ) -> Result<(), ServerError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO custom_rules (id, title, yaml, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, title, yaml, now()],
            )?;
            audit_in(&tx, actor, "rule.add", &format!("rule:{id}"), title)?;
            tx.commit()
        })
    }

    /// Deletes a custom rule.
    pub fn delete_custom_rule(&self, actor: &str, id: &str) -> Result<(), ServerError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute("DELETE FROM custom_rules WHERE id = ?1", params![id])?;
            audit_in(&tx, actor, "rule.delete", &format!("rule:{id}"), "")?;
            tx.commit()
        })
    }

    /// Ids of disabled rules.
    pub fn disabled_rules(&self) -> Result<Vec<String>, ServerError> {
        self.with(|c| {
            let mut st = c.prepare("SELECT id FROM disabled_rules")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Enables or disables a rule (audited with the reason).
    pub fn set_rule_enabled(
        &self,
        actor: &str,
        id: &str,
        enabled: bool,
        reason: &str,
    ) -> Result<(), ServerError> {
        self.with(|c| {
            let tx = c.transaction()?;
            if enabled {
                tx.execute("DELETE FROM disabled_rules WHERE id = ?1", params![id])?;
            } else {
                tx.execute(
                    "INSERT OR REPLACE INTO disabled_rules (id, at, reason) VALUES (?1, ?2, ?3)",
                    params![id, now(), reason],
                )?;
            }
            let action = if enabled {
                "rule.enable"
            } else {
                "rule.disable"
            };
            audit_in(&tx, actor, action, &format!("rule:{id}"), reason)?;
            tx.commit()
        })
    }

    /// Enrollment tokens still usable (not expired, uses left), limited to `tenant` if given.
    pub fn enroll_tokens(&self, tenant: Option<&str>) -> Result<Vec<EnrollToken>, ServerError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, tenant, expires_at, uses_left, created_at FROM enroll_tokens
                 WHERE expires_at > ?1 AND uses_left > 0 AND (?2 IS NULL OR tenant = ?2)
                 ORDER BY id",
            )?;
            let rows = st.query_map(params![now(), tenant], |r| {
                Ok(EnrollToken {
                    id: r.get(0)?,
                    tenant: r.get(1)?,
                    expires_at: r.get(2)?,
                    uses_left: r.get(3)?,
                    created_at: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Withdraws an enrollment token (no more uses). Limited to `tenant` if given.
    pub fn revoke_enroll_token(
        &self,
        actor: &str,
        id: i64,
        tenant: Option<&str>,
    ) -> Result<bool, ServerError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE enroll_tokens SET uses_left = 0
                 WHERE id = ?1 AND uses_left > 0 AND (?2 IS NULL OR tenant = ?2)",
                params![id, tenant],
            )?;
            if n > 0 {
                audit_in(
                    &tx,
                    actor,
                    "enroll-token.revoke",
                    &format!("token:{id}"),
                    "",
                )?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
    }

    /// Creates an enrollment token for `tenant`, valid `ttl_secs`, usable `uses` times.
    pub fn create_enroll_token(
        &self,
        actor: &str,
        tenant: &str,
        ttl_secs: i64,
        uses: i64,
    ) -> Result<NewToken, ServerError> {
        check_tenant(tenant)?;
        if ttl_secs <= 0 || uses <= 0 {
            return Err(ServerError::Invalid(
                "an enrollment token needs a positive lifetime and number of uses".into(),
            ));
        }
        let (token, hash) = Secret::generate("mamori_enroll");
        let expires_at = now() + ttl_secs;
        let id = self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO enroll_tokens (hash, tenant, expires_at, uses_left, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![hash, tenant, expires_at, uses, now()],
            )?;
            let id = tx.last_insert_rowid();
            audit_in(
                &tx,
                actor,
                "enroll-token.create",
                &format!("token:{id}"),
                &format!("tenant={tenant} uses={uses} expires_at={expires_at}"),
            )?;
            tx.commit()?;
            Ok(id)
        })?;
        Ok(NewToken {
            id,
            token,
            tenant: tenant.to_string(),
            expires_at,
            uses,
        })
    }

    /// Spends one use of an enrollment token; returns its tenant, or why it was refused.
    pub fn spend_enroll_token(
        &self,
        token: &str,
    ) -> Result<Result<(i64, String), TokenRefusal>, ServerError> {
        let hash = Secret::hash(token);
        self.with(|c| {
            let tx = c.transaction()?;
            let row: Option<(i64, String, i64, i64)> = tx
                .query_row(
                    "SELECT id, tenant, expires_at, uses_left FROM enroll_tokens WHERE hash = ?1",
                    params![hash],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let result = match row {
                None => Err(TokenRefusal::Unknown),
                Some((_, _, exp, _)) if exp <= now() => Err(TokenRefusal::Expired),
                Some((_, _, _, left)) if left <= 0 => Err(TokenRefusal::UsedUp),
                Some((id, tenant, _, _)) => {
                    tx.execute(
                        "UPDATE enroll_tokens SET uses_left = uses_left - 1 WHERE id = ?1",
                        params![id],
                    )?;
                    Ok((id, tenant))
                }
            };
            tx.commit()?;
            Ok(result)
        })
    }

    /// Records a newly enrolled agent.
    #[allow(clippy::too_many_arguments)]
    pub fn add_agent(
        &self,
        id: &str,
        tenant: &str,
        hostname: &str,
        os: &str,
        kernel: &str,
        version: &str,
        serial: &str,
        token_id: i64,
    ) -> Result<(), ServerError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let t = now();
            tx.execute(
                "INSERT INTO agents (id, tenant, hostname, os, kernel, agent_version, serial,
                                     enrolled_at, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
                params![id, tenant, hostname, os, kernel, version, serial, t],
            )?;
            audit_in(
                &tx,
                &format!("agent:{id}"),
                "agent.enroll",
                &format!("agent:{id}"),
                &format!("tenant={tenant} host={hostname} token={token_id} serial={serial}"),
            )?;
            tx.commit()
        })
    }

    /// An agent by id.
    pub fn agent(&self, id: &str) -> Result<Option<Agent>, ServerError> {
        self.with(|c| {
            c.query_row(
                "SELECT id, tenant, hostname, serial, enrolled_at, last_seen, revoked_at
                 FROM agents WHERE id = ?1",
                params![id],
                agent_row,
            )
            .optional()
        })
    }

    /// Revokes an agent: its certificate is refused from now on.
    pub fn revoke(&self, actor: &str, id: &str, why: &str) -> Result<bool, ServerError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE agents SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now()],
            )?;
            if n > 0 {
                audit_in(&tx, actor, "agent.revoke", &format!("agent:{id}"), why)?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
    }

    /// Notes that an agent connected.
    pub fn touch(&self, id: &str) -> Result<(), ServerError> {
        self.with(|c| {
            c.execute(
                "UPDATE agents SET last_seen = ?2 WHERE id = ?1",
                params![id, now()],
            )
            .map(|_| ())
        })
    }

    /// Writes an audit record.
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), ServerError> {
        self.with(|c| audit_in(c, actor, action, target, detail))
    }

    /// The audit log, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditRecord>, ServerError> {
        self.with(|c| {
            let mut st =
                c.prepare("SELECT at, actor, action, target, detail FROM audit ORDER BY id")?;
            let rows = st.query_map([], |r| {
                Ok(AuditRecord {
                    at: r.get(0)?,
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    detail: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }
}

impl State {
    /// Records a heartbeat (or, with `stopped`, the sensor's notice that it stopped).
    pub fn heartbeat(
        &self,
        agent: &str,
        health: &serde_json::Value,
        addresses: &serde_json::Value,
        interval_s: i64,
        stopped: bool,
    ) -> Result<(), ServerError> {
        self.with(|c| {
            c.execute(
                "UPDATE agents SET heartbeat_at = ?2, last_seen = ?2, heartbeat_interval = ?3,
                     health = CASE WHEN ?5 THEN health ELSE ?4 END,
                     addresses = ?6, silent_alerted = 0,
                     stopped_at = CASE WHEN ?5 THEN ?2 ELSE NULL END
                 WHERE id = ?1",
                params![
                    agent,
                    now(),
                    interval_s.max(1),
                    health.to_string(),
                    stopped,
                    addresses.to_string()
                ],
            )
            .map(|_| ())
        })
    }

    /// Agents whose heartbeats stopped (three intervals without one) and that were not
    /// reported yet; marks them reported. Returns (agent, tenant, hostname).
    pub fn newly_silent(&self) -> Result<Vec<(String, String, String)>, ServerError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let rows: Vec<(String, String, String)> = {
                let mut st = tx.prepare(
                    "SELECT id, tenant, hostname FROM agents
                     WHERE revoked_at IS NULL AND stopped_at IS NULL AND silent_alerted = 0
                       AND heartbeat_at IS NOT NULL
                       AND heartbeat_at + 3 * heartbeat_interval < ?1",
                )?;
                st.query_map(params![now()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<rusqlite::Result<_>>()?
            };
            for (id, _, _) in &rows {
                tx.execute(
                    "UPDATE agents SET silent_alerted = 1 WHERE id = ?1",
                    params![id],
                )?;
            }
            tx.commit()?;
            Ok(rows)
        })
    }

    /// The inventory with each sensor's status and isolation.
    pub fn hosts(&self) -> Result<Vec<HostStatus>, ServerError> {
        let isolated = self.isolated_agents()?;
        let mut hosts = self.sensors()?;
        for h in &mut hosts {
            if let Some(i) = isolated.get(&h.agent) {
                h.isolation = i.clone();
            }
        }
        Ok(hosts)
    }

    fn sensors(&self) -> Result<Vec<HostStatus>, ServerError> {
        let t = now();
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, tenant, hostname, addresses, heartbeat_at, heartbeat_interval, health,
                        stopped_at, revoked_at
                 FROM agents ORDER BY enrolled_at",
            )?;
            let rows = st.query_map([], |r| {
                let json = |i: usize| -> rusqlite::Result<serde_json::Value> {
                    let t: Option<String> = r.get(i)?;
                    Ok(t.and_then(|t| serde_json::from_str(&t).ok())
                        .unwrap_or(serde_json::Value::Null))
                };
                let heartbeat_at: Option<i64> = r.get(4)?;
                let interval: Option<i64> = r.get(5)?;
                let health = json(6)?;
                let stopped: Option<i64> = r.get(7)?;
                let revoked: Option<i64> = r.get(8)?;
                let degraded = health["missing"].as_array().is_some_and(|m| !m.is_empty())
                    || health["dropped"]["ring_buffer_full"].as_u64().unwrap_or(0) > 0;
                let status = match (revoked, stopped, heartbeat_at) {
                    (Some(_), _, _) => "revoked",
                    (_, Some(_), _) => "stopped",
                    (_, _, None) => "unknown",
                    (_, _, Some(h)) if h + 3 * interval.unwrap_or(60) < t => "offline",
                    _ if degraded => "degraded",
                    _ => "online",
                };
                Ok(HostStatus {
                    agent: r.get(0)?,
                    tenant: r.get(1)?,
                    hostname: r.get(2)?,
                    addresses: json(3)?,
                    status: status.into(),
                    heartbeat_at,
                    health,
                    isolation: serde_json::Value::Null,
                })
            })?;
            let mut hosts: Vec<HostStatus> = rows.collect::<rusqlite::Result<_>>()?;
            // Windows hosts without an agent, known from their uploaded logs.
            let mut st = c.prepare(
                "SELECT tenant, host, first_seen, last_seen, events FROM uploaded_hosts
                 ORDER BY first_seen",
            )?;
            let uploaded = st.query_map([], |r| {
                let host: String = r.get(1)?;
                let (first, last, events): (i64, i64, i64) = (r.get(2)?, r.get(3)?, r.get(4)?);
                Ok(HostStatus {
                    agent: format!("win:{host}"),
                    tenant: r.get(0)?,
                    hostname: host,
                    addresses: serde_json::Value::Null,
                    status: "uploads".into(),
                    heartbeat_at: Some(last),
                    health: serde_json::json!({"source": "uploaded Windows logs",
                        "first_seen": first, "last_seen": last, "events": events}),
                    isolation: serde_json::Value::Null,
                })
            })?;
            for h in uploaded {
                hosts.push(h?);
            }
            Ok(hosts)
        })
    }

    /// Records an upload of `events` Windows events for `host` (a host without an agent).
    pub fn record_upload(&self, tenant: &str, host: &str, events: u64) -> Result<(), ServerError> {
        let t = now();
        self.with(|c| {
            c.execute(
                "INSERT INTO uploaded_hosts (tenant, host, first_seen, last_seen, events)
                 VALUES (?1, ?2, ?3, ?3, ?4)
                 ON CONFLICT (tenant, host) DO UPDATE SET last_seen = ?3, events = events + ?4",
                params![tenant, host, t, events as i64],
            )?;
            Ok(())
        })
    }

    /// Records a detection: a new alert, or one more on the alert of the same rule, agent and
    /// process. Returns the alert id.
    pub fn record_alert(&self, a: &NewAlert<'_>) -> Result<i64, ServerError> {
        let fold_key = format!("{}|{}|{}", a.agent, a.rule_id, a.process_entity);
        // Before the insert: a lookup that finds the key in the set always reads the table.
        self.alerted.insert(a.agent, a.process_entity);
        let tags = serde_json::to_string(a.tags).unwrap_or_else(|_| "[]".into());
        let evidence = std::str::from_utf8(a.evidence).unwrap_or("{}");
        let reasons = serde_json::to_string(a.severity_reasons).unwrap_or_else(|_| "[]".into());
        self.with(|c| {
            c.prepare_cached(
                "INSERT INTO alerts (fold_key, tenant, agent, host, rule_id, rule_title, level,
                     tags, user, process_entity, process_executable, command_line, first_seen,
                     last_seen, count, status, evidence, created_at, severity, severity_reasons)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, 1, 'open',
                     json_array(json(?14)), ?15, ?17, ?18)
                 ON CONFLICT(fold_key) DO UPDATE SET
                     count = count + 1,
                     last_seen = excluded.last_seen,
                     evidence = CASE WHEN json_array_length(evidence) < ?16
                         THEN json_insert(evidence, '$[#]', json(?14)) ELSE evidence END,
                     severity = CASE WHEN ?19 > (CASE severity WHEN 'critical' THEN 4
                         WHEN 'high' THEN 3 WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END)
                         THEN excluded.severity ELSE severity END,
                     severity_reasons = CASE WHEN ?19 > (CASE severity WHEN 'critical' THEN 4
                         WHEN 'high' THEN 3 WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END)
                         THEN excluded.severity_reasons ELSE severity_reasons END
                 RETURNING id",
            )?
            .query_row(
                params![
                    fold_key,
                    a.tenant,
                    a.agent,
                    a.host,
                    a.rule_id,
                    a.rule_title,
                    a.level,
                    tags,
                    a.user,
                    a.process_entity,
                    a.process_executable,
                    a.command_line,
                    a.timestamp,
                    evidence,
                    now(),
                    crate::detect::EVIDENCE_MAX as i64,
                    a.severity,
                    reasons,
                    severity_rank(a.severity),
                ],
                |r| r.get(0),
            )
        })
    }

    /// Raises an alert's severity (never lowers it); returns whether it changed.
    pub fn raise_severity(
        &self,
        id: i64,
        severity: &str,
        reasons: &[String],
    ) -> Result<bool, ServerError> {
        let reasons = serde_json::to_string(reasons).unwrap_or_else(|_| "[]".into());
        self.with(|c| {
            let old: String = c.query_row(
                "SELECT severity FROM alerts WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )?;
            if severity_rank(severity) <= severity_rank(&old) {
                return Ok(false);
            }
            c.execute(
                "UPDATE alerts SET severity = ?2, severity_reasons = ?3 WHERE id = ?1",
                params![id, severity, reasons],
            )?;
            Ok(true)
        })
    }

    /// Open alerts of `agent` on any of these process entities.
    pub fn alerts_on_tree(
        &self,
        agent: &str,
        entities: &[&str],
    ) -> Result<Vec<TreeAlert>, ServerError> {
        let mut out = Vec::new();
        if !self.alerted.any(agent, entities) {
            return Ok(out);
        }
        self.with(|c| {
            let mut st = c.prepare_cached(ALERTS_ON_TREE)?;
            for e in entities.iter().filter(|e| !e.is_empty()) {
                for row in st.query_map(params![agent, e], |r| {
                    Ok(TreeAlert {
                        id: r.get(0)?,
                        rule_id: r.get(1)?,
                        level: r.get(2)?,
                        severity: r.get(3)?,
                        host: r.get(4)?,
                    })
                })? {
                    out.push(row?);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Changes an alert's status (`open`, `acknowledged`, `closed`), audited with the reason.
    /// Returns whether the alert exists.
    pub fn set_alert_status(
        &self,
        actor: &str,
        id: i64,
        status: &str,
        reason: &str,
    ) -> Result<bool, ServerError> {
        if !["open", "acknowledged", "closed"].contains(&status) {
            return Err(ServerError::Invalid(format!(
                "status {status:?}: open, acknowledged or closed"
            )));
        }
        self.with(|c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE alerts SET status = ?2 WHERE id = ?1",
                params![id, status],
            )?;
            if n > 0 {
                audit_in(
                    &tx,
                    actor,
                    "alert.status",
                    &format!("alert:{id}"),
                    &format!("status={status} reason={reason}"),
                )?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
    }

    /// One alert with its evidence.
    pub fn alert(&self, id: i64) -> Result<Option<Alert>, ServerError> {
        let one = AlertFilter {
            id: Some(id),
            ..AlertFilter::default()
        };
        Ok(self.alerts_where(one, 1)?.into_iter().next())
    }

    /// Alerts, newest first (all tenants when `tenant` is `None`).
    pub fn alerts(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<Alert>, ServerError> {
        let of = AlertFilter {
            tenant,
            ..AlertFilter::default()
        };
        self.alerts_where(of, limit)
    }

    /// At most `limit` alerts as `filter` says.
    pub fn alerts_where(
        &self,
        filter: AlertFilter<'_>,
        limit: usize,
    ) -> Result<Vec<Alert>, ServerError> {
        let AlertFilter {
            tenant,
            status,
            id,
            after,
        } = filter;
        self.with(|c| {
            let mut st = c.prepare_cached(match (tenant, after) {
                (Some(_), None) => ALERTS_OF_TENANT,
                (None, None) => ALERTS_WHERE,
                (Some(_), Some(_)) => ALERTS_OF_TENANT_AFTER,
                (None, Some(_)) => ALERTS_AFTER,
            })?;
            let from = match after.map(|a| a.checked_add(1)) {
                Some(None) => return Ok(Vec::new()), // nothing is after the largest id
                Some(from) => from,
                None => None,
            };
            let rows = st.query_map(params![tenant, limit as i64, status, id, from], |r| {
                let json = |i: usize| -> rusqlite::Result<serde_json::Value> {
                    let t: String = r.get(i)?;
                    Ok(serde_json::from_str(&t).unwrap_or(serde_json::Value::Null))
                };
                Ok(Alert {
                    id: r.get(0)?,
                    tenant: r.get(1)?,
                    agent: r.get(2)?,
                    host: r.get(3)?,
                    rule_id: r.get(4)?,
                    rule_title: r.get(5)?,
                    level: r.get(6)?,
                    tags: json(7)?,
                    user: r.get(8)?,
                    process_entity: r.get(9)?,
                    process_executable: r.get(10)?,
                    command_line: r.get(11)?,
                    first_seen: r.get(12)?,
                    last_seen: r.get(13)?,
                    count: r.get(14)?,
                    status: r.get(15)?,
                    evidence: json(16)?,
                    severity: r.get(17)?,
                    severity_reasons: json(18)?,
                })
            })?;
            rows.collect()
        })
    }
}

fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Agent> {
    Ok(Agent {
        id: r.get(0)?,
        tenant: r.get(1)?,
        hostname: r.get(2)?,
        serial: r.get(3)?,
        enrolled_at: r.get(4)?,
        last_seen: r.get(5)?,
        revoked_at: r.get(6)?,
    })
}

pub(crate) fn audit_in(
    c: &Connection,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO audit (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now(), actor, action, target, detail],
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (State, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "mamori-state-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        (State::open(&dir.join("state.db")).unwrap(), dir)
    }

    /// A high alert of rule `r1` on process `entity` of agent `a1` (tenant `acme`).
    fn high_alert<'a>(tags: &'a [String], entity: &'a str, at: &'a str) -> NewAlert<'a> {
        NewAlert {
            tenant: "acme",
            agent: "a1",
            host: "web1",
            rule_id: "r1",
            rule_title: "Suspicious",
            level: "high",
            tags,
            user: "root",
            process_entity: entity,
            process_executable: "/bin/sh",
            command_line: "sh -c evil",
            timestamp: at,
            evidence: b"{\"n\":1}",
            severity: "high",
            severity_reasons: &[],
        }
    }

    /// SQLite's plan for `sql` with `params`, one line per step.
    fn plan(s: &State, sql: &str, params: impl rusqlite::Params) -> String {
        s.with(|c| {
            let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
            let rows = st.query_map(params, |r| r.get::<_, String>(3))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .unwrap()
        .join("\n")
    }

    #[test]
    fn alerts_of_a_process_a_tenant_and_by_id_are_found_through_an_index() {
        let (s, dir) = state();
        let none = None::<String>;
        let p = plan(&s, ALERTS_ON_TREE, params!["agt-1", "boot:1"]);
        assert!(p.contains("USING INDEX alerts_process"), "{p}");
        // One alert by id (incidents, folding, the API) through the primary key.
        let p = plan(&s, ALERTS_WHERE, params![none, 1, none, 7, none]);
        assert!(p.contains("USING INTEGER PRIMARY KEY"), "{p}");
        // One tenant's alerts through the tenant index, newest first without a sort.
        let p = plan(&s, ALERTS_OF_TENANT, params!["acme", 50, none, none, none]);
        assert!(p.contains("USING INDEX alerts_tenant (tenant=?"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
        // A reader's new alerts: a range of the primary key (or of the tenant index), in
        // order without a sort, however many alerts came before.
        let p = plan(&s, ALERTS_AFTER, params![none, 50, none, none, 1000]);
        assert!(p.contains("USING INTEGER PRIMARY KEY (rowid>?"), "{p}");
        assert!(!p.contains("TEMP B-TREE"), "{p}");
        let p = plan(
            &s,
            ALERTS_OF_TENANT_AFTER,
            params!["acme", 50, none, none, 1000],
        );
        assert!(
            p.contains("USING INDEX alerts_tenant (tenant=? AND id>?"),
            "{p}"
        );
        assert!(!p.contains("TEMP B-TREE"), "{p}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_batch_commits_alerts_and_their_incidents_together() {
        let (s, dir) = state();
        // Detection's own connection to the same database, as the server opens it.
        let detection = s.reopen().unwrap();
        let tags = vec!["attack.t1059".to_string()];
        let alert = |entity| high_alert(&tags, entity, "2026-01-01T00:00:00Z");
        let policy = mamori_soc::Policy::default();
        detection.begin_batch().unwrap();
        let mut ids = Vec::new();
        for entity in ["p1", "p2", "p3"] {
            let id = detection.record_alert(&alert(entity)).unwrap();
            // Grouping runs inside the batch (a savepoint, not a transaction of its own).
            let attached = detection.attach_alert(id, &policy).unwrap();
            assert!(attached.is_some(), "a high alert belongs to an incident");
            ids.push(id);
        }
        assert!(
            s.alerts(Some("acme"), 10).unwrap().is_empty(),
            "nothing is visible before the commit"
        );
        // The API's writes wait for the batch instead of joining it.
        let s = std::sync::Arc::new(s);
        let api = {
            let s = s.clone();
            std::thread::spawn(move || s.audit("admin", "test.write", "x", "during a batch"))
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!api.is_finished(), "another connection's write waits");
        detection.commit_batch().unwrap();
        api.join().unwrap().unwrap();
        let seen: Vec<i64> = s
            .alerts(Some("acme"), 10)
            .unwrap()
            .iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(seen.len(), 3, "{seen:?}");
        for id in ids {
            assert!(seen.contains(&id));
            let incident: i64 = s
                .with(|c| {
                    c.query_row(
                        "SELECT incident FROM incident_alerts WHERE alert = ?1",
                        params![id],
                        |r| r.get(0),
                    )
                })
                .unwrap();
            assert!(s.incident(incident).unwrap().is_some());
        }
        // Without a batch every write commits on its own, as before.
        let id = detection.record_alert(&alert("p4")).unwrap();
        assert!(s.alert(id).unwrap().is_some());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn alerts_on_a_tree_are_found_whichever_connection_recorded_them() {
        let (s, dir) = state();
        let tags = vec!["attack.t1059".to_string()];
        let at = "2026-01-01T00:00:00Z";
        let old = s.record_alert(&high_alert(&tags, "p-old", at)).unwrap();
        // Not tracked (the CLI's connections): every lookup reads the table.
        let found = s.alerts_on_tree("a1", &["p-old"]).unwrap();
        assert_eq!(found.iter().map(|a| a.id).collect::<Vec<_>>(), vec![old]);
        drop(s);
        // Alerts recorded before this start, through the API's connection, through
        // detection's, and one on another agent.
        let s = State::open(&dir.join("state.db")).unwrap();
        s.track_alerts().unwrap();
        let detection = s.reopen().unwrap();
        let api = s.record_alert(&high_alert(&tags, "p-api", at)).unwrap();
        let det = detection
            .record_alert(&high_alert(&tags, "p-det", at))
            .unwrap();
        let other = NewAlert {
            agent: "a2",
            ..high_alert(&tags, "p-a2", at)
        };
        s.record_alert(&other).unwrap();
        let ids = |st: &State, tree: &[&str]| -> Vec<i64> {
            let mut v: Vec<i64> = st
                .alerts_on_tree("a1", tree)
                .unwrap()
                .iter()
                .map(|a| a.id)
                .collect();
            v.sort();
            v
        };
        for st in [&s, &detection] {
            assert_eq!(ids(st, &["p-old", ""]), vec![old]);
            assert_eq!(ids(st, &["x", "p-api"]), vec![api]);
            assert_eq!(ids(st, &["p-det", "p-old"]), vec![old, det]);
            assert!(ids(st, &["p-a2", "nothing"]).is_empty(), "another agent's");
            assert!(ids(st, &["", ""]).is_empty());
        }
        // A closed alert is not open, though its tree is still looked up.
        s.set_alert_status("admin", api, "closed", "benign")
            .unwrap();
        assert!(ids(&detection, &["p-api"]).is_empty());
        s.set_alert_status("admin", api, "open", "again").unwrap();
        assert_eq!(ids(&detection, &["p-api"]), vec![api]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn tokens_expire_and_run_out() {
        let (s, dir) = state();
        let admin = s.first_admin_token().unwrap().expect("first start");
        assert!(s.first_admin_token().unwrap().is_none(), "shown once");
        let p = s
            .authenticate(&admin)
            .unwrap()
            .expect("the first token works");
        assert_eq!((p.role, p.tenant.as_deref()), (Role::Admin, None));
        assert!(s.authenticate("mamori_admin_nope").unwrap().is_none());
        // Roles and tenants; revocation; the last administrator stays.
        let (id, viewer) = s
            .create_api_token("test", "acme-soc", Role::Viewer, Some("acme"))
            .unwrap();
        let v = s.authenticate(&viewer).unwrap().unwrap();
        assert_eq!((v.role, v.tenant.as_deref()), (Role::Viewer, Some("acme")));
        assert!(v.sees("acme") && !v.sees("other") && p.sees("other"));
        assert!(
            s.create_api_token("test", "x", Role::Viewer, Some("../x"))
                .is_err()
        );
        assert!(s.revoke_api_token("test", id).unwrap());
        assert!(s.authenticate(&viewer).unwrap().is_none());
        assert!(!s.revoke_api_token("test", id).unwrap(), "already revoked");
        let e = s.revoke_api_token("test", p.token_id).unwrap_err();
        assert!(e.to_string().contains("last administrator"), "{e}");
        assert_eq!(s.api_tokens().unwrap().len(), 2);
        let t = s.create_enroll_token("admin", "acme", 3600, 2).unwrap();
        assert_eq!(
            s.spend_enroll_token(&t.token).unwrap().map(|x| x.1),
            Ok("acme".into())
        );
        assert!(s.spend_enroll_token(&t.token).unwrap().is_ok());
        assert_eq!(
            s.spend_enroll_token(&t.token).unwrap(),
            Err(TokenRefusal::UsedUp)
        );
        assert_eq!(
            s.spend_enroll_token("mamori_enroll_x").unwrap(),
            Err(TokenRefusal::Unknown)
        );
        let expired = s.create_enroll_token("admin", "acme", 1, 5).unwrap();
        s.with(|c| {
            c.execute(
                "UPDATE enroll_tokens SET expires_at = 0 WHERE id = ?1",
                params![expired.id],
            )
        })
        .unwrap();
        assert_eq!(
            s.spend_enroll_token(&expired.token).unwrap(),
            Err(TokenRefusal::Expired)
        );
        assert!(
            s.create_enroll_token("admin", "bad tenant!", 60, 1)
                .is_err()
        );
        assert!(s.create_enroll_token("admin", "acme", 0, 1).is_err());
        let log = s.audit_log().unwrap();
        assert!(log.iter().any(|l| l.action == "enroll-token.create"));
        assert!(
            log.iter().all(|l| !l.detail.contains(&t.token)),
            "no secret in the audit log"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn repeats_fold_into_one_alert_with_bounded_evidence() {
        let (s, dir) = state();
        let tags = vec!["attack.t1059".to_string()];
        let mk = |entity, n: usize| {
            let at = if n == 0 {
                "2026-01-01T00:00:00Z"
            } else {
                "2026-01-01T00:00:09Z"
            };
            high_alert(&tags, entity, at)
        };
        let first = s.record_alert(&mk("p1", 0)).unwrap();
        for i in 1..15 {
            assert_eq!(s.record_alert(&mk("p1", i)).unwrap(), first, "folded");
        }
        let other = s.record_alert(&mk("p2", 0)).unwrap();
        assert_ne!(other, first, "another process is another alert");
        let all = s.alerts(Some("acme"), 10).unwrap();
        let a = all.iter().find(|a| a.id == first).unwrap();
        assert_eq!(a.count, 15);
        assert_eq!(
            a.evidence.as_array().unwrap().len(),
            crate::detect::EVIDENCE_MAX
        );
        assert_eq!(a.tags[0], "attack.t1059");
        assert_eq!(
            (a.first_seen.as_str(), a.last_seen.as_str()),
            ("2026-01-01T00:00:00Z", "2026-01-01T00:00:09Z")
        );
        assert!(
            s.alerts(Some("other"), 10).unwrap().is_empty(),
            "per tenant"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A reader that keeps the last id it saw gets each new alert once, oldest first, per
    /// tenant and status as asked; a repeat folded into an old alert is not new.
    #[test]
    fn alerts_after_an_id_are_the_new_ones_oldest_first() {
        let (s, dir) = state();
        let tags = vec!["attack.t1059".to_string()];
        let at = "2026-01-01T00:00:00Z";
        let ids: Vec<i64> = ["p1", "p2", "p3", "p4"]
            .iter()
            .map(|e| s.record_alert(&high_alert(&tags, e, at)).unwrap())
            .collect();
        let mut other = high_alert(&tags, "q1", at);
        other.tenant = "other";
        let theirs = s.record_alert(&other).unwrap();
        let after = |tenant, after, limit| -> Vec<i64> {
            let f = AlertFilter {
                tenant,
                after: Some(after),
                ..AlertFilter::default()
            };
            s.alerts_where(f, limit)
                .unwrap()
                .iter()
                .map(|a| a.id)
                .collect()
        };
        assert_eq!(after(Some("acme"), ids[0], 10), ids[1..].to_vec());
        assert_eq!(after(Some("acme"), ids[0], 2), ids[1..3].to_vec(), "a page");
        assert_eq!(after(None, ids[3], 10), vec![theirs], "every tenant's");
        assert_eq!(after(Some("acme"), i64::MIN, 10), ids, "from the start");
        assert!(
            after(Some("acme"), i64::MAX, 10).is_empty(),
            "nothing after the last"
        );
        // A repeat on p1 folds into its alert: nothing new.
        s.record_alert(&high_alert(&tags, "p1", at)).unwrap();
        assert!(after(None, theirs, 10).is_empty());
        // Status still filters.
        let open = AlertFilter {
            status: Some("closed"),
            after: Some(0),
            ..AlertFilter::default()
        };
        assert!(s.alerts_where(open, 10).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn agents_are_recorded_and_revoked() {
        let (s, dir) = state();
        s.add_agent("a1", "acme", "web1", "linux", "6.18", "0.1", "ff", 1)
            .unwrap();
        assert!(
            s.add_agent("a1", "acme", "web1", "linux", "6.18", "0.1", "ff", 1)
                .is_err()
        );
        let a = s.agent("a1").unwrap().unwrap();
        assert_eq!((a.tenant.as_str(), a.revoked_at), ("acme", None));
        assert!(s.revoke("admin", "a1", "test").unwrap());
        assert!(
            !s.revoke("admin", "a1", "again").unwrap(),
            "already revoked"
        );
        assert!(s.agent("a1").unwrap().unwrap().revoked_at.is_some());
        assert!(s.agent("nope").unwrap().is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
