//! Incidents: alerts that belong together, with everything a SOC analyst would put in front
//! of a customer.
//!
//! Grouping ([`State::attach_alert`]): each alert has keys — its process and its parent on
//! its host (`tree:`), its user on its host (`user:`), and the SHA-256 of a file outside the
//! system's own directories (`hash:`, on any host: a file spreading). An alert joins the open
//! incident that used one of its keys within the tenant's window (default 60 minutes); when
//! its keys lead to several incidents they are merged into the oldest. An alert below the
//! policy's `min_severity` joins incidents but never opens one. An incident's severity is the
//! highest of its alerts'.
//!
//! [`build`] assembles an incident on demand: verdict ([`mamori_soc::verdict`]), hosts and
//! their isolation, users, files with their trajectory across hosts (from the event store),
//! network destinations, ATT&CK techniques, the process tree, a timeline of events, alerts,
//! response actions and notifications, the response-time clocks, and the blind spots (sensor
//! gaps recorded from heartbeats during the incident's window).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use mamori_report::model::{self, Incident};
use mamori_soc::{Policy, Severity};
use rusqlite::{OptionalExtension, params};
use serde_json::Value;

use crate::ServerError;
use crate::service::Shared;
use crate::state::{Alert, State, audit_in, now, severity_rank};

/// Tables of incidents, notifications and sensor gaps.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, title TEXT NOT NULL, severity TEXT NOT NULL,
    status TEXT NOT NULL, opened_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
    first_notice_at INTEGER, report_at INTEGER, notified_rank INTEGER NOT NULL DEFAULT 0,
    reported_rank INTEGER NOT NULL DEFAULT 0, merged_into INTEGER);
CREATE INDEX IF NOT EXISTS incidents_tenant ON incidents (tenant, id);
CREATE TABLE IF NOT EXISTS incident_alerts (
    alert INTEGER PRIMARY KEY, incident INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS incident_alerts_incident ON incident_alerts (incident);
CREATE TABLE IF NOT EXISTS incident_keys (
    tenant TEXT NOT NULL, key TEXT NOT NULL, incident INTEGER NOT NULL,
    last_at INTEGER NOT NULL, PRIMARY KEY (tenant, key));
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY, incident INTEGER NOT NULL, kind TEXT NOT NULL,
    channel TEXT NOT NULL, at INTEGER NOT NULL, ok INTEGER NOT NULL, error TEXT NOT NULL,
    severity TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS notifications_incident ON notifications (incident);
CREATE TABLE IF NOT EXISTS sensor_gaps (
    id INTEGER PRIMARY KEY, agent TEXT NOT NULL, at INTEGER NOT NULL, kind TEXT NOT NULL,
    detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sensor_gaps_agent ON sensor_gaps (agent, at);
";

/// An incident as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IncidentRow {
    /// Id.
    pub id: i64,
    /// Tenant.
    pub tenant: String,
    /// Title.
    pub title: String,
    /// Highest severity of its alerts.
    pub severity: String,
    /// `open` or `closed`.
    pub status: String,
    /// Opened (Unix seconds).
    pub opened_at: i64,
    /// Last alert joined.
    pub updated_at: i64,
    /// First notice delivered.
    pub first_notice_at: Option<i64>,
    /// Detailed report delivered.
    pub report_at: Option<i64>,
    /// Alerts in it.
    pub alerts: i64,
    /// Severity rank already notified (notifier bookkeeping).
    #[serde(skip)]
    pub notified_rank: i64,
    /// Severity rank already reported.
    #[serde(skip)]
    pub reported_rank: i64,
}

const ROW: &str = "id, tenant, title, severity, status, opened_at, updated_at, first_notice_at,
    report_at, (SELECT count(*) FROM incident_alerts WHERE incident = incidents.id),
    notified_rank, reported_rank";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IncidentRow> {
    Ok(IncidentRow {
        id: r.get(0)?,
        tenant: r.get(1)?,
        title: r.get(2)?,
        severity: r.get(3)?,
        status: r.get(4)?,
        opened_at: r.get(5)?,
        updated_at: r.get(6)?,
        first_notice_at: r.get(7)?,
        report_at: r.get(8)?,
        alerts: r.get(9)?,
        notified_rank: r.get(10)?,
        reported_rank: r.get(11)?,
    })
}

/// Directories of the operating system's own programs: their hashes do not link incidents
/// (every shell would be one incident).
pub fn system_path(p: &str) -> bool {
    let lower = p.to_ascii_lowercase();
    [
        "/usr/bin/",
        "/usr/sbin/",
        "/bin/",
        "/sbin/",
        "/usr/lib/",
        "/lib/",
        "/usr/libexec/",
        "c:\\windows\\",
        "c:\\program files",
    ]
    .iter()
    .any(|s| lower.starts_with(s))
}

fn first_event(a: &Alert) -> &Value {
    match &a.evidence {
        Value::Array(v) if !v.is_empty() => {
            // Correlation alerts keep their events one level down.
            if v[0]["events"].is_array() {
                v[0]["events"].get(0).unwrap_or(&Value::Null)
            } else {
                &v[0]
            }
        }
        _ => &Value::Null,
    }
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    crate::detect::text(v, path).unwrap_or("")
}

/// The grouping keys of an alert.
pub fn keys(a: &Alert) -> Vec<String> {
    let view = crate::detect::flat_view(first_event(a));
    let e: &Value = &view;
    let mut k = Vec::new();
    let entity = if a.process_entity.starts_with("correlation:") {
        s(e, &["process", "entity_id"])
    } else {
        &a.process_entity
    };
    let parent = crate::detect::parent_entity(e);
    for ent in [entity, parent.as_str()] {
        if !ent.is_empty() {
            k.push(format!("tree:{}|{ent}", a.agent));
        }
    }
    // A user links alerts of medium severity and above only: one account's low-level noise
    // (an admin's curl, a cleanup) would otherwise join every incident of that account.
    if !a.user.is_empty() && severity_rank(&a.severity) >= 2 {
        k.push(format!("user:{}|{}", a.agent, a.user));
    }
    let process_hash = sha256_of(e);
    for (path, hash) in [
        (a.process_executable.as_str(), process_hash.as_str()),
        (s(e, &["file", "path"]), s(e, &["file", "hash", "sha256"])),
    ] {
        if !hash.is_empty() && !system_path(path) {
            k.push(format!("hash:{}", hash.to_ascii_lowercase()));
        }
    }
    k
}

/// What [`State::attach_alert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// The incident.
    pub incident: i64,
    /// It was opened by this alert.
    pub opened: bool,
}

impl State {
    /// Puts an alert (new, folded or raised) into its incident; see the module docs.
    pub fn attach_alert(&self, id: i64, policy: &Policy) -> Result<Option<Attached>, ServerError> {
        let Some(a) = self.alert(id)? else {
            return Ok(None);
        };
        let cfg = policy.incidents(&a.tenant);
        let keys = keys(&a);
        let t = now();
        let since = t - i64::from(cfg.window_minutes) * 60;
        let sev = Severity::parse(&a.severity).unwrap_or(Severity::Informational);
        let title = format!("{} on {}", a.rule_title, a.host);
        self.with(|c| {
            // A savepoint: part of the detection thread's batch when there is one.
            let tx = c.savepoint()?;
            let existing: Option<i64> = tx
                .query_row(
                    "SELECT incident FROM incident_alerts WHERE alert = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()?;
            let mut found: BTreeSet<i64> = existing.into_iter().collect();
            {
                let mut st = tx.prepare_cached(
                    "SELECT k.incident FROM incident_keys k JOIN incidents i ON i.id = k.incident
                     WHERE k.tenant = ?1 AND k.key = ?2 AND k.last_at >= ?3
                       AND i.status = 'open'",
                )?;
                for k in &keys {
                    if let Some(i) = st
                        .query_row(params![a.tenant, k, since], |r| r.get::<_, i64>(0))
                        .optional()?
                    {
                        found.insert(i);
                    }
                }
            }
            let (target, opened) = match found.iter().next() {
                Some(&i) => (i, false),
                None if sev < cfg.min_severity => return Ok(None),
                None => {
                    let i = tx.query_row(
                        "INSERT INTO incidents (tenant, title, severity, status, opened_at,
                             updated_at) VALUES (?1, ?2, ?3, 'open', ?4, ?4) RETURNING id",
                        params![a.tenant, title, a.severity, t],
                        |r| r.get(0),
                    )?;
                    audit_in(
                        &tx,
                        "policy:incidents",
                        "incident.open",
                        &format!("incident:{i}"),
                        &format!("alert {id}: {title}"),
                    )?;
                    (i, true)
                }
            };
            // Several incidents share this alert's keys: they are one.
            for &other in found.iter().skip(1) {
                tx.execute(
                    "UPDATE incident_alerts SET incident = ?1 WHERE incident = ?2",
                    params![target, other],
                )?;
                tx.execute(
                    "UPDATE incident_keys SET incident = ?1 WHERE incident = ?2",
                    params![target, other],
                )?;
                tx.execute(
                    "UPDATE incidents SET status = 'merged', merged_into = ?1 WHERE id = ?2",
                    params![target, other],
                )?;
                audit_in(
                    &tx,
                    "policy:incidents",
                    "incident.merge",
                    &format!("incident:{other}"),
                    &format!("merged into incident {target} (alert {id} links them)"),
                )?;
            }
            tx.execute(
                "INSERT INTO incident_alerts (alert, incident) VALUES (?1, ?2)
                 ON CONFLICT (alert) DO UPDATE SET incident = excluded.incident",
                params![id, target],
            )?;
            for k in &keys {
                tx.execute(
                    "INSERT INTO incident_keys (tenant, key, incident, last_at)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (tenant, key) DO UPDATE SET incident = ?3, last_at = ?4",
                    params![a.tenant, k, target, t],
                )?;
            }
            // The severity is the highest of its alerts' (the title follows it).
            let (max_sev, max_title): (String, String) = tx.query_row(
                "SELECT a.severity, a.rule_title || ' on ' || a.host
                 FROM incident_alerts ia JOIN alerts a ON a.id = ia.alert
                 WHERE ia.incident = ?1
                 ORDER BY CASE a.severity WHEN 'critical' THEN 4 WHEN 'high' THEN 3
                     WHEN 'medium' THEN 2 WHEN 'low' THEN 1 ELSE 0 END DESC, a.id
                 LIMIT 1",
                params![target],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            tx.execute(
                "UPDATE incidents SET updated_at = ?2, severity = ?3, title = ?4 WHERE id = ?1",
                params![target, t, max_sev, max_title],
            )?;
            tx.commit()?;
            Ok(Some(Attached {
                incident: target,
                opened,
            }))
        })
    }

    /// Incidents, newest first (merged ones are left out).
    pub fn incidents(
        &self,
        tenant: Option<&str>,
        status: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IncidentRow>, ServerError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {ROW} FROM incidents
                 WHERE (?1 IS NULL OR tenant = ?1) AND status != 'merged'
                   AND (?2 IS NULL OR status = ?2)
                 ORDER BY id DESC LIMIT ?3"
            ))?;
            st.query_map(params![tenant, status, limit as i64], row)?
                .collect()
        })
    }

    /// One incident (a merged one answers as the incident it joined).
    pub fn incident(&self, id: i64) -> Result<Option<IncidentRow>, ServerError> {
        self.with(|c| {
            let mut id = id;
            for _ in 0..16 {
                let merged: Option<Option<i64>> = c
                    .query_row(
                        "SELECT merged_into FROM incidents WHERE id = ?1",
                        params![id],
                        |r| r.get(0),
                    )
                    .optional()?;
                match merged {
                    Some(Some(into)) => id = into,
                    _ => break,
                }
            }
            c.query_row(
                &format!("SELECT {ROW} FROM incidents WHERE id = ?1"),
                params![id],
                row,
            )
            .optional()
        })
    }

    /// The alerts of an incident, oldest first.
    pub fn incident_alerts(&self, id: i64) -> Result<Vec<Alert>, ServerError> {
        let ids: Vec<i64> = self.with(|c| {
            let mut st = c.prepare(
                "SELECT alert FROM incident_alerts WHERE incident = ?1 ORDER BY alert LIMIT 500",
            )?;
            st.query_map(params![id], |r| r.get(0))?.collect()
        })?;
        let mut out = Vec::with_capacity(ids.len());
        for a in ids {
            if let Some(a) = self.alert(a)? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Closes or reopens an incident (audited); closing closes its alerts too.
    pub fn set_incident_status(
        &self,
        actor: &str,
        id: i64,
        status: &str,
        reason: &str,
    ) -> Result<bool, ServerError> {
        if !["open", "closed"].contains(&status) {
            return Err(ServerError::Invalid(format!(
                "status {status:?}: open or closed"
            )));
        }
        self.with(|c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE incidents SET status = ?2 WHERE id = ?1 AND status != 'merged'",
                params![id, status],
            )?;
            if n > 0 {
                if status == "closed" {
                    tx.execute(
                        "UPDATE alerts SET status = 'closed' WHERE id IN
                         (SELECT alert FROM incident_alerts WHERE incident = ?1)",
                        params![id],
                    )?;
                }
                audit_in(
                    &tx,
                    actor,
                    "incident.status",
                    &format!("incident:{id}"),
                    &format!("status={status} reason={reason}"),
                )?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
    }

    /// Records a gap in a sensor's telemetry.
    pub fn record_gap(&self, agent: &str, kind: &str, detail: &str) -> Result<(), ServerError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sensor_gaps (agent, at, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                params![agent, now(), kind, detail],
            )
            .map(|_| ())
        })
    }

    /// Gaps of `agent` between `from` and `to` (Unix seconds): (at, kind, detail).
    pub fn gaps(
        &self,
        agent: Option<&str>,
        from: i64,
        to: i64,
    ) -> Result<Vec<(String, i64, String, String)>, ServerError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT agent, at, kind, detail FROM sensor_gaps
                 WHERE (?1 IS NULL OR agent = ?1) AND at >= ?2 AND at <= ?3
                 ORDER BY at LIMIT 1000",
            )?;
            st.query_map(params![agent, from, to], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
        })
    }

    /// The last health report of an agent.
    pub fn agent_health(&self, agent: &str) -> Result<Value, ServerError> {
        self.with(|c| {
            let h: Option<Option<String>> = c
                .query_row(
                    "SELECT health FROM agents WHERE id = ?1",
                    params![agent],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(h.flatten()
                .and_then(|h| serde_json::from_str(&h).ok())
                .unwrap_or(Value::Null))
        })
    }

    /// Where a notification of `kind` at `severity` on `channel` stands: delivered, or the
    /// time of the last failed attempt.
    pub fn notification_state(
        &self,
        incident: i64,
        kind: &str,
        channel: &str,
        severity: &str,
    ) -> Result<(bool, Option<i64>), ServerError> {
        self.with(|c| {
            c.query_row(
                "SELECT coalesce(max(ok), 0), max(CASE WHEN ok = 0 THEN at END)
                 FROM notifications
                 WHERE incident = ?1 AND kind = ?2 AND channel = ?3 AND severity = ?4",
                params![incident, kind, channel, severity],
                |r| Ok((r.get::<_, i64>(0)? == 1, r.get(1)?)),
            )
        })
    }

    /// Records a notification attempt; a delivered one starts or meets the clocks.
    pub fn record_notification(
        &self,
        incident: i64,
        kind: &str,
        channel: &str,
        severity: &str,
        ok: bool,
        error: &str,
    ) -> Result<(), ServerError> {
        let t = now();
        self.with(|c| {
            c.execute(
                "INSERT INTO notifications (incident, kind, channel, at, ok, error, severity)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![incident, kind, channel, t, ok, error, severity],
            )?;
            if ok {
                let col = if kind == "report" {
                    "report_at"
                } else {
                    "first_notice_at"
                };
                c.execute(
                    &format!("UPDATE incidents SET {col} = coalesce({col}, ?2) WHERE id = ?1"),
                    params![incident, t],
                )?;
                if kind == "report" {
                    // A report is also a notice.
                    c.execute(
                        "UPDATE incidents SET first_notice_at = coalesce(first_notice_at, ?2)
                         WHERE id = ?1",
                        params![incident, t],
                    )?;
                }
            }
            Ok(())
        })
    }

    /// Marks what the notifier has sent for an incident (severity ranks).
    pub fn mark_notified(
        &self,
        incident: i64,
        notified_rank: i64,
        reported_rank: i64,
    ) -> Result<(), ServerError> {
        self.with(|c| {
            c.execute(
                "UPDATE incidents SET notified_rank = max(notified_rank, ?2),
                     reported_rank = max(reported_rank, ?3) WHERE id = ?1",
                params![incident, notified_rank, reported_rank],
            )
            .map(|_| ())
        })
    }

    /// Notifications of an incident.
    pub fn notifications(&self, incident: i64) -> Result<Vec<model::Notice>, ServerError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT kind, channel, at, ok, error FROM notifications WHERE incident = ?1
                 ORDER BY id",
            )?;
            st.query_map(params![incident], |r| {
                Ok(model::Notice {
                    kind: r.get(0)?,
                    channel: r.get(1)?,
                    at: r.get(2)?,
                    ok: r.get(3)?,
                    error: r.get(4)?,
                })
            })?
            .collect()
        })
    }

    /// Audit records about `target` since `since` (Unix seconds).
    pub fn audit_about(
        &self,
        target: &str,
        since: i64,
    ) -> Result<Vec<crate::state::AuditRecord>, ServerError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT at, actor, action, target, detail FROM audit
                 WHERE target = ?1 AND at >= ?2 ORDER BY id LIMIT 200",
            )?;
            st.query_map(params![target, since], |r| {
                Ok(crate::state::AuditRecord {
                    at: r.get(0)?,
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    detail: r.get(4)?,
                })
            })?
            .collect()
        })
    }
}

/// The process's SHA-256: ECS `process.hash.sha256`, or Sysmon's `Hashes` (`SHA256=…,…`).
fn sha256_of(e: &Value) -> String {
    let h = s(e, &["process", "hash", "sha256"]);
    let h = if h.is_empty() { s(e, &["Hashes"]) } else { h };
    mamori_columnar::schema::sha256_of(h).unwrap_or_default()
}

fn millis(t: &str) -> i64 {
    mamori_model::event::parse_time(t).map_or(0, |d| d.timestamp_millis())
}

fn sql_text(s: &str) -> String {
    s.replace('\'', "''")
}

/// Rows of a store query as JSON objects (empty when the store cannot answer).
fn query(shared: &Shared, tenant: &str, sql: &str) -> Vec<Value> {
    let scope = mamori_columnar::Scope::Tenant(tenant.to_string());
    let limits = mamori_columnar::Limits {
        rows: 200,
        ..Default::default()
    };
    match shared.events.query(&scope, sql, limits) {
        Ok(t) => match t.to_json() {
            Value::Array(rows) => rows,
            other => other["rows"].as_array().cloned().unwrap_or_default(),
        },
        Err(e) => {
            tracing::warn!("incident evidence query failed: {e}");
            Vec::new()
        }
    }
}

/// Everything known about incident `id`.
pub fn build(shared: &Shared, policy: &Policy, id: i64) -> Result<Option<Incident>, ServerError> {
    let state = &shared.state;
    let Some(row) = state.incident(id)? else {
        return Ok(None);
    };
    let alerts = state.incident_alerts(row.id)?;
    let tenant = row.tenant.clone();
    let mut inc = Incident {
        id: row.id,
        tenant: tenant.clone(),
        title: row.title.clone(),
        severity: row.severity.clone(),
        status: row.status.clone(),
        opened_at: row.opened_at,
        updated_at: row.updated_at,
        ..Incident::default()
    };

    // Hosts, users, techniques, tactics.
    let mut hosts: BTreeMap<String, String> = BTreeMap::new();
    let mut users = BTreeSet::new();
    let mut techniques = BTreeSet::new();
    let mut tactics = BTreeSet::new();
    let mut rules = HashSet::new();
    let mut critical_reasons = Vec::new();
    let mut known_bad = false;
    let mut all_prevented = !alerts.is_empty();
    for a in &alerts {
        hosts
            .entry(a.agent.clone())
            .or_insert_with(|| a.host.clone());
        if !a.user.is_empty() {
            users.insert(a.user.clone());
        }
        rules.insert(a.rule_id.clone());
        for t in a
            .tags
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            match mamori_model::attack::parse_tag(t) {
                Some(mamori_model::attack::AttackTag::Technique(id)) => {
                    techniques.insert(id);
                }
                Some(mamori_model::attack::AttackTag::Tactic(t)) => {
                    tactics.insert(t);
                }
                _ => {}
            }
        }
        let reasons: Vec<String> = a
            .severity_reasons
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str().map(str::to_string))
            .collect();
        if a.severity == "critical" {
            critical_reasons.extend(reasons.iter().filter(|r| r.starts_with("raised")).cloned());
        }
        known_bad |= reasons.iter().any(|r| r.contains("known-bad"));
        all_prevented &= s(first_event(a), &["event", "action"]) == "exec-prevented";
        inc.alerts.push(model::AlertLine {
            id: a.id,
            time: a.first_seen.clone(),
            rule: a.rule_title.clone(),
            severity: a.severity.clone(),
            host: a.host.clone(),
            process: a.process_executable.clone(),
            command_line: a.command_line.clone(),
            count: a.count,
            reasons,
        });
    }
    inc.alerts.sort_by_key(|a| (millis(&a.time), a.id));
    inc.users = users.into_iter().collect();
    inc.techniques = techniques.into_iter().collect();
    inc.tactics = tactics.into_iter().collect();
    for (agent, name) in &hosts {
        let iso = state.isolation(agent)?;
        inc.hosts.push(model::Host {
            agent: agent.clone(),
            name: name.clone(),
            isolated: iso["isolated"] == true,
            isolated_by: iso["current"]["by"].as_str().unwrap_or("").to_string(),
        });
    }

    // The process tree, from the evidence.
    let mut procs: HashMap<String, model::Process> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut destinations: BTreeMap<String, model::Destination> = BTreeMap::new();
    let mut files: BTreeMap<String, model::File> = BTreeMap::new();
    let add_file = |path: &str, sha: &str, files: &mut BTreeMap<String, model::File>| {
        // The system's own programs are context, not evidence to quarantine or trace.
        if path.is_empty() || system_path(path) {
            return;
        }
        let f = files
            .entry(path.to_string())
            .or_insert_with(|| model::File {
                path: path.to_string(),
                ..model::File::default()
            });
        if f.sha256.is_empty() && sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            f.sha256 = sha.to_ascii_lowercase();
        }
    };
    for a in &alerts {
        let events: Vec<&Value> = a
            .evidence
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| match e["events"].as_array() {
                Some(inner) => inner.iter().collect::<Vec<_>>(),
                None => vec![e],
            })
            .collect();
        for e in events {
            let view = crate::detect::flat_view(e);
            let e: &Value = &view;
            let (ent, parent) = (
                crate::detect::process_entity(e),
                crate::detect::parent_entity(e),
            );
            let (ent, parent) = (ent.as_str(), parent.as_str());
            let exe = crate::detect::first_text(
                e,
                &[&["process", "executable"], &["Image"], &["NewProcessName"]],
            );
            let cmd =
                crate::detect::first_text(e, &[&["process", "command_line"], &["CommandLine"]]);
            if !parent.is_empty() && !procs.contains_key(parent) {
                procs.insert(
                    parent.to_string(),
                    model::Process {
                        entity: parent.to_string(),
                        pid: e["process"]["parent"]["pid"].as_i64().unwrap_or(0),
                        executable: crate::detect::first_text(
                            e,
                            &[
                                &["process", "parent", "executable"],
                                &["ParentImage"],
                                &["ParentProcessName"],
                            ],
                        )
                        .to_string(),
                        command_line: crate::detect::first_text(
                            e,
                            &[
                                &["process", "parent", "command_line"],
                                &["ParentCommandLine"],
                            ],
                        )
                        .to_string(),
                        host: a.host.clone(),
                        ..model::Process::default()
                    },
                );
                order.push(parent.to_string());
            }
            if !ent.is_empty() {
                let p = procs.entry(ent.to_string()).or_insert_with(|| {
                    order.push(ent.to_string());
                    model::Process {
                        entity: ent.to_string(),
                        host: a.host.clone(),
                        ..model::Process::default()
                    }
                });
                p.parent = parent.to_string();
                p.pid = e["process"]["pid"].as_i64().unwrap_or(p.pid);
                if p.executable.is_empty() {
                    p.executable = exe.to_string();
                }
                if p.command_line.is_empty() {
                    p.command_line = cmd.to_string();
                }
                if p.user.is_empty() {
                    p.user = crate::detect::user_of(e).to_string();
                }
                if ent == a.process_entity && !p.rules.contains(&a.rule_title) {
                    p.rules.push(a.rule_title.clone());
                }
            }
            add_file(exe, &sha256_of(e), &mut files);
            add_file(
                s(e, &["file", "path"]),
                s(e, &["file", "hash", "sha256"]),
                &mut files,
            );
            let ip = s(e, &["destination", "ip"]);
            if !ip.is_empty() {
                add_destination(
                    &mut destinations,
                    policy,
                    &tenant,
                    ip,
                    e["destination"]["port"].as_u64(),
                    s(e, &["process", "executable"]),
                );
            }
            inc.timeline.push(model::Entry {
                at_ms: millis(crate::detect::first_text(
                    e,
                    &[
                        &["@timestamp"],
                        &["TimeCreated_SystemTime"],
                        &["SystemTime"],
                    ],
                )),
                kind: "event".into(),
                host: a.host.clone(),
                text: event_text(e),
            });
        }
    }
    // Depth by parent links within the incident; parents before children.
    let depths: HashMap<String, usize> = order
        .iter()
        .map(|e| (e.clone(), depth_of(&procs, e)))
        .collect();
    let mut tree: Vec<model::Process> = Vec::new();
    fn walk(
        e: &str,
        procs: &HashMap<String, model::Process>,
        depths: &HashMap<String, usize>,
        order: &[String],
        out: &mut Vec<model::Process>,
        seen: &mut HashSet<String>,
    ) {
        if !seen.insert(e.to_string()) || out.len() > 300 {
            return;
        }
        if let Some(p) = procs.get(e) {
            let mut p = p.clone();
            p.depth = depths.get(e).copied().unwrap_or(0);
            out.push(p);
        }
        for c in order {
            if procs.get(c).is_some_and(|p| p.parent == e) {
                walk(c, procs, depths, order, out, seen);
            }
        }
    }
    let mut seen = HashSet::new();
    for e in &order {
        if depths.get(e) == Some(&0) {
            walk(e, &procs, &depths, &order, &mut tree, &mut seen);
        }
    }
    inc.process_tree = tree;

    // Network destinations and DNS of these processes, from the store.
    let entities: Vec<String> = procs
        .keys()
        .filter(|e| !e.is_empty())
        .take(200)
        .map(|e| format!("'{}'", sql_text(e)))
        .collect();
    // Children of the alerted processes count too (their parent is in the event).
    let children: Vec<String> = inc
        .process_tree
        .iter()
        .filter(|p| !p.rules.is_empty())
        .take(20)
        .map(|p| format!("raw LIKE '%\"entity_id\":\"{}\"%'", sql_text(&p.entity)))
        .collect();
    if !entities.is_empty() {
        let rows = query(
            shared,
            &tenant,
            &format!(
                "SELECT destination_ip, destination_port, process_executable, dns_question_name
                 FROM events WHERE (destination_ip IS NOT NULL OR dns_question_name IS NOT NULL)
                   AND (process_entity_id IN ({}){}{})
                 LIMIT 200",
                entities.join(","),
                if children.is_empty() { "" } else { " OR " },
                children.join(" OR ")
            ),
        );
        for r in rows {
            if let Some(ip) = r["destination_ip"].as_str() {
                add_destination(
                    &mut destinations,
                    policy,
                    &tenant,
                    ip,
                    r["destination_port"].as_u64(),
                    r["process_executable"].as_str().unwrap_or(""),
                );
            }
            if let Some(d) = r["dns_question_name"].as_str() {
                destinations
                    .entry(d.to_string())
                    .or_insert_with(|| model::Destination {
                        address: d.to_string(),
                        external: true,
                        process: r["process_executable"].as_str().unwrap_or("").to_string(),
                    });
            }
        }
    }
    inc.destinations = destinations.into_values().collect();

    // Files and their trajectory across hosts.
    for (_, mut f) in files.into_iter().take(20) {
        let filter = if f.sha256.is_empty() {
            let p = sql_text(&f.path);
            format!("(process_executable = '{p}' OR file_path = '{p}')")
        } else {
            // Executions by hash (a column); the hash in any other field (a file written).
            format!(
                "(process_hash_sha256 = '{0}' OR raw LIKE '%{0}%')",
                f.sha256
            )
        };
        for r in query(
            shared,
            &tenant,
            &format!(
                "SELECT host_name, CAST(min(time) AS VARCHAR) AS first, count(*) AS n
                 FROM events WHERE {filter} GROUP BY host_name ORDER BY first LIMIT 50"
            ),
        ) {
            f.seen_on.push(model::Seen {
                host: r["host_name"].as_str().unwrap_or("").to_string(),
                first: r["first"].as_str().unwrap_or("").replace(' ', "T"),
                events: r["n"].as_u64().unwrap_or(0),
            });
        }
        inc.files.push(f);
    }

    // Response actions on its hosts since it opened (and what the policy did not do).
    let since_ms = (row.opened_at - 60) * 1000;
    for (agent, name) in &hosts {
        for c in state.commands(None, Some(agent), 100)? {
            if c.created_ms < since_ms {
                continue;
            }
            inc.timeline.push(model::Entry {
                at_ms: c.created_ms,
                kind: "action".into(),
                host: name.clone(),
                text: format!("{} by {}: {}", c.action, c.issued_by, c.status),
            });
            inc.actions.push(model::ActionLine {
                automatic: c.issued_by == "policy:auto-contain",
                id: c.id,
                action: c.action,
                host: name.clone(),
                status: c.status,
                issued_by: c.issued_by,
                at_ms: c.created_ms,
                reason: c.reason,
            });
        }
        for r in state.audit_about(&format!("agent:{agent}"), row.opened_at - 60)? {
            if inc.actions.iter().any(|a| {
                a.reason == r.detail.split_once(": ").map_or("", |x| x.1)
                    && a.host == *name
                    && a.id.is_empty()
            }) {
                continue; // the same refusal for another alert of this incident
            }
            let status = match r.action.as_str() {
                "containment.skipped" => "not done",
                "containment.awaiting_approval" => "awaiting approval",
                _ => continue,
            };
            inc.actions.push(model::ActionLine {
                id: String::new(),
                action: "isolate".into(),
                host: name.clone(),
                status: format!(
                    "{status}: {}",
                    r.detail.split_once(": ").map_or(r.detail.as_str(), |x| x.1)
                ),
                issued_by: r.actor,
                automatic: true,
                at_ms: r.at * 1000,
                reason: r.detail.split_once(": ").map_or("", |x| x.1).to_string(),
            });
        }
    }
    inc.actions.sort_by_key(|a| a.at_ms);
    for a in &inc.alerts {
        inc.timeline.push(model::Entry {
            at_ms: millis(&a.time),
            kind: "alert".into(),
            host: a.host.clone(),
            text: format!("{} ({})", a.rule, a.severity),
        });
    }

    // Blind spots: gaps in the incident's window, and sensors not fully working now.
    let window = i64::from(policy.incidents(&tenant).window_minutes) * 60;
    let statuses: HashMap<String, crate::state::HostStatus> = state
        .hosts()?
        .into_iter()
        .map(|h| (h.agent.clone(), h))
        .collect();
    for (agent, name) in &hosts {
        if agent.starts_with("win:") {
            inc.blind_spots.push(format!(
                "{name}: known only from uploaded Windows logs — no live process, network or file \
                 telemetry, and Mamori cannot isolate it"
            ));
            continue;
        }
        for (_, at, _kind, detail) in state.gaps(
            Some(agent),
            row.opened_at - window,
            row.updated_at.max(now()),
        )? {
            inc.blind_spots.push(format!(
                "{name}: {detail} (at {})",
                mamori_report::fmt_time(at)
            ));
        }
        if let Some(h) = statuses.get(agent)
            && matches!(h.status.as_str(), "offline" | "stopped" | "degraded")
        {
            let missing = h.health["missing"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            inc.blind_spots.push(format!(
                "{name}: the sensor is {} now{}",
                h.status,
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(" (not collecting: {missing})")
                }
            ));
        }
    }

    // Verdict.
    let (verdict, why) = mamori_soc::verdict::verdict(&mamori_soc::verdict::IncidentFacts {
        severity: Severity::parse(&row.severity),
        critical_reasons,
        rules: rules.len(),
        tactics: inc.tactics.clone(),
        external: inc
            .destinations
            .iter()
            .filter(|d| d.external && d.address.contains(':'))
            .map(|d| d.address.clone())
            .collect(),
        known_bad,
        all_prevented,
    });
    inc.verdict = verdict.as_str().into();
    inc.verdict_reasons = why;

    // Clocks and notifications.
    if let Some(c) = Severity::parse(&row.severity).and_then(|s| policy.clock(&tenant, s)) {
        inc.clocks.first_notice_due = Some(row.opened_at + i64::from(c.first_notice_minutes) * 60);
        inc.clocks.report_due = Some(row.opened_at + i64::from(c.report_minutes) * 60);
    }
    inc.clocks.first_notice_at = row.first_notice_at;
    inc.clocks.report_at = row.report_at;
    inc.notifications = state.notifications(row.id)?;
    for n in &inc.notifications {
        inc.timeline.push(model::Entry {
            at_ms: n.at * 1000,
            kind: "notice".into(),
            host: String::new(),
            text: format!(
                "{} via {}: {}",
                n.kind,
                n.channel,
                if n.ok { "delivered" } else { "failed" }
            ),
        });
    }
    inc.timeline.sort_by_key(|e| e.at_ms);
    inc.timeline.dedup();
    Ok(Some(inc))
}

fn depth_of(procs: &HashMap<String, model::Process>, entity: &str) -> usize {
    let mut d = 0;
    let mut e = entity;
    while let Some(p) = procs.get(e).map(|p| p.parent.as_str()) {
        if p.is_empty() || !procs.contains_key(p) || d > 32 {
            break;
        }
        d += 1;
        e = p;
    }
    d
}

fn add_destination(
    d: &mut BTreeMap<String, model::Destination>,
    policy: &Policy,
    tenant: &str,
    ip: &str,
    port: Option<u64>,
    process: &str,
) {
    let Ok(addr) = ip.parse::<std::net::IpAddr>() else {
        return;
    };
    let address = match port {
        Some(p) if addr.is_ipv6() => format!("[{addr}]:{p}"),
        Some(p) => format!("{addr}:{p}"),
        None => addr.to_string(),
    };
    d.entry(address.clone())
        .or_insert_with(|| model::Destination {
            address,
            external: !policy.is_internal(tenant, addr),
            process: process.to_string(),
        });
}

fn event_text(e: &Value) -> String {
    let action = match s(e, &["event", "action"]) {
        "" => match &e["EventID"] {
            Value::Null => "",
            _ => "event",
        },
        a => a,
    };
    let exe = crate::detect::first_text(
        e,
        &[&["process", "executable"], &["Image"], &["NewProcessName"]],
    );
    let cmd = crate::detect::first_text(e, &[&["process", "command_line"], &["CommandLine"]]);
    let mut t = if !cmd.is_empty() {
        format!("{action} {cmd}")
    } else {
        format!("{action} {exe}")
    };
    if let Some(id) = e["EventID"].as_u64() {
        t = format!("EventID {id}: {t}");
    }
    let ip = s(e, &["destination", "ip"]);
    if !ip.is_empty() {
        t.push_str(&format!(" → {ip}:{}", e["destination"]["port"]));
    }
    let path = s(e, &["file", "path"]);
    if !path.is_empty() {
        t.push_str(&format!(" file {path}"));
    }
    mamori_report::shorten(t.trim(), 300)
}

/// Severity rank of an incident row (for the notifier).
pub fn rank(r: &IncidentRow) -> i64 {
    severity_rank(&r.severity)
}

/// `YYYY-MM` → [start, end) in Unix seconds (the current month when `None`).
pub fn month_range(month: Option<&str>) -> Result<(String, i64, i64), ServerError> {
    use chrono::{Datelike, NaiveDate};
    let today = chrono::Utc::now().date_naive();
    let (y, m) = match month {
        None => (today.year(), today.month()),
        Some(s) => {
            let bad = || ServerError::Invalid(format!("month {s:?}: YYYY-MM"));
            let (y, m) = s.split_once('-').ok_or_else(bad)?;
            (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?)
        }
    };
    let start = NaiveDate::from_ymd_opt(y, m, 1)
        .ok_or_else(|| ServerError::Invalid(format!("month {y}-{m}: no such month")))?;
    let next = if m == 12 {
        NaiveDate::from_ymd_opt(y + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(y, m + 1, 1)
    }
    .ok_or_else(|| ServerError::Invalid("month out of range".into()))?;
    let secs = |d: NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp())
            .unwrap_or(0)
    };
    Ok((format!("{y:04}-{m:02}"), secs(start), secs(next)))
}

fn counted(m: HashMap<String, u64>, top: usize) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(top);
    v
}

fn by_severity(m: &HashMap<String, u64>) -> Vec<(String, u64)> {
    ["critical", "high", "medium", "low", "informational"]
        .iter()
        .map(|s| (s.to_string(), m.get(*s).copied().unwrap_or(0)))
        .collect()
}

/// The monthly summary of a tenant.
pub fn monthly(
    shared: &Shared,
    tenant: &str,
    month: Option<&str>,
) -> Result<model::Monthly, ServerError> {
    let (period, from, to) = month_range(month)?;
    let state = &shared.state;
    let policy = &shared.policy;
    let mut m = model::Monthly {
        tenant: tenant.to_string(),
        period,
        from,
        to,
        ..model::Monthly::default()
    };
    let alerts: Vec<Alert> = state
        .alerts_since(tenant, from)?
        .into_iter()
        .filter(|a| {
            let t = millis(&a.first_seen) / 1000;
            t == 0 || t < to
        })
        .collect();
    let (mut sev, mut tech, mut hosts, mut rules) = (
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
    );
    for a in &alerts {
        *sev.entry(a.severity.clone()).or_default() += 1;
        *hosts.entry(a.host.clone()).or_default() += 1;
        *rules.entry(a.rule_title.clone()).or_default() += a.count as u64;
        let tags: Vec<&str> = a
            .tags
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for t in mamori_model::attack::techniques(tags) {
            *tech.entry(t).or_default() += 1;
        }
    }
    m.alerts_by_severity = by_severity(&sev);
    m.techniques = counted(tech, 12);
    m.hosts = counted(hosts, 10);
    m.rules = counted(rules, 10);
    let (mut isev, mut verdicts) = (HashMap::new(), HashMap::new());
    let mut top: Vec<(i64, String, String)> = Vec::new();
    let t = now();
    for r in state
        .incidents(Some(tenant), None, 10_000)?
        .into_iter()
        .filter(|r| r.opened_at >= from && r.opened_at < to)
    {
        *isev.entry(r.severity.clone()).or_default() += 1;
        if top.len() < 200
            && let Some(i) = build(shared, policy, r.id)?
        {
            *verdicts.entry(i.verdict.clone()).or_default() += 1;
            for met in [i.clocks.first_notice_met(t), i.clocks.report_met(t)] {
                match met {
                    Some(true) => m.clocks_met += 1,
                    Some(false) => m.clocks_missed += 1,
                    None => {}
                }
            }
        }
        top.push((r.id, r.severity.clone(), r.title.clone()));
    }
    top.sort_by_key(|(id, s, _)| (-severity_rank(s), *id));
    top.truncate(10);
    m.top_incidents = top;
    m.incidents_by_severity = by_severity(&isev);
    m.incidents_by_verdict = ["malicious", "suspicious", "benign-likely"]
        .iter()
        .map(|v| (v.to_string(), verdicts.get(*v).copied().unwrap_or(0)))
        .collect();
    m.auto_isolations = state
        .commands(Some(tenant), None, 100_000)?
        .iter()
        .filter(|c| {
            c.issued_by == "policy:auto-contain"
                && c.action == "isolate"
                && c.created_ms / 1000 >= from
                && c.created_ms / 1000 < to
        })
        .count() as u64;
    let mut statuses: HashMap<String, u64> = HashMap::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for h in state.hosts()?.into_iter().filter(|h| h.tenant == tenant) {
        if h.status == "uploads" {
            m.upload_hosts += 1;
        } else {
            m.sensors += 1;
            *statuses.entry(h.status.clone()).or_default() += 1;
            names.insert(h.agent.clone(), h.hostname.clone());
        }
    }
    m.sensors_by_status = counted(statuses, 10);
    for (agent, at, _, detail) in state.gaps(None, from, to)? {
        if let Some(name) = names.get(&agent)
            && m.gaps.len() < 50
        {
            m.gaps.push(format!(
                "{name}: {detail} ({})",
                mamori_report::fmt_time(at)
            ));
        }
    }
    for r in state.audit_log()? {
        let tuning = r.action.starts_with("suppression.") || r.action.starts_with("rule.");
        let ours = r.detail.contains(&format!("tenant={tenant}")) || r.action.starts_with("rule.");
        if tuning && ours && r.at >= from && r.at < to && m.tuning.len() < 100 {
            m.tuning.push(format!(
                "{} {} {} by {}: {}",
                mamori_report::fmt_time(r.at),
                r.action,
                r.target,
                r.actor,
                mamori_report::shorten(&r.detail, 200)
            ));
        }
    }
    Ok(m)
}
