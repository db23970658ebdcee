//! Tuning without fear: suppressions scoped by rule, host, process path or command line
//! pattern, hash and user, each with a reason and an expiry, previewed against past alerts
//! before they are made, audited, and counted while they work; and the "initial tuning"
//! report of the noisiest rules with a suggested suppression for each.
//!
//! Patterns are globs (`*` any run of characters, `?` one). Every field given must match; a
//! suppression with no field but the rule silences that rule for the tenant.

use rusqlite::params;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ServerError;
use crate::state::{Alert, State, audit_in, now};

/// Tables.
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS suppressions (
    id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, rule_id TEXT NOT NULL, host TEXT NOT NULL,
    process TEXT NOT NULL, command_line TEXT NOT NULL, sha256 TEXT NOT NULL, user TEXT NOT NULL,
    host_group TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL, created_by TEXT NOT NULL, created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL, hits INTEGER NOT NULL DEFAULT 0, removed_at INTEGER);
";

/// Longest a suppression may last (days).
pub const MAX_DAYS: i64 = 365;

/// What a suppression matches (empty fields match anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Rule id.
    #[serde(default)]
    pub rule_id: String,
    /// Host name (glob).
    #[serde(default)]
    pub host: String,
    /// Process executable (glob).
    #[serde(default)]
    pub process: String,
    /// Command line (glob).
    #[serde(default)]
    pub command_line: String,
    /// SHA-256 of the process or file.
    #[serde(default)]
    pub sha256: String,
    /// User.
    #[serde(default)]
    pub user: String,
    /// Host group (from the SOC policy's `[containment.groups]`).
    #[serde(default)]
    pub group: String,
}

/// A suppression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Suppression {
    /// Id.
    pub id: i64,
    /// Tenant.
    pub tenant: String,
    /// What it matches.
    #[serde(flatten)]
    pub scope: Scope,
    /// Why.
    pub reason: String,
    /// Who made it.
    pub created_by: String,
    /// When (Unix seconds).
    pub created_at: i64,
    /// Until (Unix seconds).
    pub expires_at: i64,
    /// Detections it suppressed.
    pub hits: i64,
}

/// Glob match: `*` any run, `?` one character.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// What is matched against: one detection.
#[derive(Debug, Clone, Copy)]
pub struct Detection<'a> {
    /// Rule id.
    pub rule_id: &'a str,
    /// Host.
    pub host: &'a str,
    /// Executable.
    pub process: &'a str,
    /// Command line.
    pub command_line: &'a str,
    /// Hashes of the process and file.
    pub hashes: &'a [&'a str],
    /// User.
    pub user: &'a str,
    /// The host's group in the SOC policy.
    pub group: Option<&'a str>,
}

impl Scope {
    /// Checks a new scope: something to match, sane sizes.
    pub fn check(&self) -> Result<(), ServerError> {
        let fields = [
            &self.rule_id,
            &self.host,
            &self.process,
            &self.command_line,
            &self.sha256,
            &self.user,
            &self.group,
        ];
        if fields.iter().all(|f| f.is_empty()) {
            return Err(ServerError::Invalid(
                "a suppression needs at least one of rule_id, host, group, process, \
                 command_line, sha256, user"
                    .into(),
            ));
        }
        if fields.iter().any(|f| f.len() > 1000) {
            return Err(ServerError::Invalid(
                "suppression fields: at most 1000 characters".into(),
            ));
        }
        if self.command_line.chars().all(|c| c == '*') && !self.command_line.is_empty()
            || self.process.chars().all(|c| c == '*') && !self.process.is_empty()
        {
            return Err(ServerError::Invalid(
                "a pattern of only '*' matches everything: leave the field empty instead".into(),
            ));
        }
        let hex64 = self.sha256.len() == 64 && self.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !self.sha256.is_empty() && !hex64 {
            return Err(ServerError::Invalid(
                "sha256: 64 hexadecimal characters".into(),
            ));
        }
        Ok(())
    }

    /// Whether `d` is matched.
    pub fn matches(&self, d: &Detection<'_>) -> bool {
        (self.rule_id.is_empty() || self.rule_id == d.rule_id)
            && (self.host.is_empty() || glob(&self.host, d.host))
            && (self.process.is_empty() || glob(&self.process, d.process))
            && (self.command_line.is_empty() || glob(&self.command_line, d.command_line))
            && (self.sha256.is_empty()
                || d.hashes
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(&self.sha256)))
            && (self.user.is_empty() || self.user == d.user)
            && (self.group.is_empty() || d.group == Some(self.group.as_str()))
    }
}

fn hashes_of(a: &Alert) -> Vec<String> {
    let e = a.evidence.get(0).cloned().unwrap_or(Value::Null);
    [
        &e["process"]["hash"]["sha256"],
        &e["file"]["hash"]["sha256"],
    ]
    .into_iter()
    .filter_map(|v| v.as_str().map(str::to_string))
    .collect()
}

/// Whether `scope` matches a stored alert.
pub fn matches_alert(scope: &Scope, a: &Alert, policy: &mamori_soc::Policy) -> bool {
    let hashes = hashes_of(a);
    let h: Vec<&str> = hashes.iter().map(String::as_str).collect();
    scope.matches(&Detection {
        rule_id: &a.rule_id,
        host: &a.host,
        process: &a.process_executable,
        command_line: &a.command_line,
        hashes: &h,
        user: &a.user,
        group: policy.group_of(&a.tenant, &a.host),
    })
}

/// How many past alerts (and detections) a scope would have suppressed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Preview {
    /// Alerts matched.
    pub alerts: u64,
    /// Detections folded into them.
    pub detections: u64,
    /// Of those, High or Critical (think twice).
    pub high_or_critical: u64,
    /// Alerts looked at.
    pub of_alerts: u64,
    /// Days looked back.
    pub days: i64,
    /// Some matched alert ids.
    pub examples: Vec<i64>,
}

impl State {
    /// Active suppressions of a tenant (all tenants: `None`).
    pub fn suppressions(&self, tenant: Option<&str>) -> Result<Vec<Suppression>, ServerError> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, tenant, rule_id, host, process, command_line, sha256, user, reason,
                        created_by, created_at, expires_at, hits, host_group
                 FROM suppressions WHERE (?1 IS NULL OR tenant = ?1) AND removed_at IS NULL
                   AND expires_at > ?2 ORDER BY id",
            )?;
            st.query_map(params![tenant, now()], |r| {
                Ok(Suppression {
                    id: r.get(0)?,
                    tenant: r.get(1)?,
                    scope: Scope {
                        rule_id: r.get(2)?,
                        host: r.get(3)?,
                        process: r.get(4)?,
                        command_line: r.get(5)?,
                        sha256: r.get(6)?,
                        user: r.get(7)?,
                        group: r.get(13)?,
                    },
                    reason: r.get(8)?,
                    created_by: r.get(9)?,
                    created_at: r.get(10)?,
                    expires_at: r.get(11)?,
                    hits: r.get(12)?,
                })
            })?
            .collect()
        })
    }

    /// The suppression that silences `d` (counted), if any.
    pub fn suppressed(&self, tenant: &str, d: &Detection<'_>) -> Result<Option<i64>, ServerError> {
        let Some(s) = self
            .suppressions(Some(tenant))?
            .into_iter()
            .find(|s| s.scope.matches(d))
        else {
            return Ok(None);
        };
        self.with(|c| {
            c.execute(
                "UPDATE suppressions SET hits = hits + 1 WHERE id = ?1",
                params![s.id],
            )
        })?;
        Ok(Some(s.id))
    }

    /// What `scope` would have suppressed among `tenant`'s alerts of the last `days`.
    pub fn preview(
        &self,
        tenant: &str,
        scope: &Scope,
        days: i64,
        policy: &mamori_soc::Policy,
    ) -> Result<Preview, ServerError> {
        let since = now() - days * 86_400;
        let alerts = self.alerts_since(tenant, since)?;
        let mut p = Preview {
            of_alerts: alerts.len() as u64,
            days,
            ..Preview::default()
        };
        for a in alerts.iter().filter(|a| matches_alert(scope, a, policy)) {
            p.alerts += 1;
            p.detections += a.count as u64;
            if matches!(a.severity.as_str(), "high" | "critical") {
                p.high_or_critical += 1;
            }
            if p.examples.len() < 10 {
                p.examples.push(a.id);
            }
        }
        Ok(p)
    }

    /// Alerts of a tenant created since `since` (Unix seconds), at most 50,000.
    pub fn alerts_since(&self, tenant: &str, since: i64) -> Result<Vec<Alert>, ServerError> {
        let ids: Vec<i64> = self.with(|c| {
            let mut st = c.prepare(
                "SELECT id FROM alerts WHERE tenant = ?1 AND created_at >= ?2
                 ORDER BY id DESC LIMIT 50000",
            )?;
            st.query_map(params![tenant, since], |r| r.get(0))?
                .collect()
        })?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(a) = self.alert(id)? {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Adds a suppression (audited with its preview).
    pub fn add_suppression(
        &self,
        actor: &str,
        tenant: &str,
        scope: &Scope,
        reason: &str,
        days: i64,
        policy: &mamori_soc::Policy,
    ) -> Result<(Suppression, Preview), ServerError> {
        scope.check()?;
        crate::state::check_tenant(tenant)?;
        if reason.trim().is_empty() || reason.len() > 1000 {
            return Err(ServerError::Invalid(
                "reason: say why (1 to 1000 characters)".into(),
            ));
        }
        if !(1..=MAX_DAYS).contains(&days) {
            return Err(ServerError::Invalid(format!(
                "expires_days: 1 to {MAX_DAYS}"
            )));
        }
        let preview = self.preview(tenant, scope, 30, policy)?;
        let t = now();
        let id: i64 = self.with(|c| {
            let tx = c.transaction()?;
            let id = tx.query_row(
                "INSERT INTO suppressions (tenant, rule_id, host, process, command_line, sha256,
                     user, reason, created_by, created_at, expires_at, host_group)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING id",
                params![
                    tenant,
                    scope.rule_id,
                    scope.host,
                    scope.process,
                    scope.command_line,
                    scope.sha256.to_ascii_lowercase(),
                    scope.user,
                    reason,
                    actor,
                    t,
                    t + days * 86_400,
                    scope.group
                ],
                |r| r.get(0),
            )?;
            audit_in(
                &tx,
                actor,
                "suppression.add",
                &format!("suppression:{id}"),
                &format!(
                    "tenant={tenant} scope={} days={days} reason={reason} would have suppressed \
                     {} alerts ({} high or critical) in 30 days",
                    serde_json::to_string(scope).unwrap_or_default(),
                    preview.alerts,
                    preview.high_or_critical
                ),
            )?;
            tx.commit()?;
            Ok(id)
        })?;
        let s = self
            .suppressions(Some(tenant))?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| ServerError::State("a new suppression vanished".into()))?;
        Ok((s, preview))
    }

    /// Removes a suppression (audited). Returns its tenant when it existed.
    pub fn remove_suppression(
        &self,
        actor: &str,
        id: i64,
        visible: impl Fn(&str) -> bool,
    ) -> Result<bool, ServerError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let tenant: Option<String> = rusqlite::OptionalExtension::optional(tx.query_row(
                "SELECT tenant FROM suppressions WHERE id = ?1 AND removed_at IS NULL",
                params![id],
                |r| r.get(0),
            ))?;
            let Some(tenant) = tenant.filter(|t| visible(t)) else {
                return Ok(false);
            };
            tx.execute(
                "UPDATE suppressions SET removed_at = ?2 WHERE id = ?1",
                params![id, now()],
            )?;
            audit_in(
                &tx,
                actor,
                "suppression.remove",
                &format!("suppression:{id}"),
                &format!("tenant={tenant}"),
            )?;
            tx.commit()?;
            Ok(true)
        })
    }
}

/// One line of the tuning report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Noisy {
    /// Rule id.
    pub rule_id: String,
    /// Title.
    pub rule_title: String,
    /// Alerts.
    pub alerts: u64,
    /// Detections.
    pub detections: u64,
    /// Hosts.
    pub hosts: u64,
    /// Highest severity seen.
    pub top_severity: String,
    /// A suggested suppression.
    pub suggestion: Scope,
    /// Why that one.
    pub why: String,
    /// What it would have suppressed.
    pub preview: Preview,
}

/// The noisiest rules of a tenant over `days`, with a suppression suggested for each.
pub fn report(
    state: &State,
    policy: &mamori_soc::Policy,
    tenant: &str,
    days: i64,
) -> Result<Vec<Noisy>, ServerError> {
    use std::collections::HashMap;
    let alerts = state.alerts_since(tenant, crate::state::now() - days * 86_400)?;
    let mut by_rule: HashMap<&str, Vec<&Alert>> = HashMap::new();
    for a in &alerts {
        if a.rule_id.starts_with("mamori-host-") || a.rule_id.starts_with("mamori-sensor-") {
            continue; // sensor health is not noise to tune away
        }
        by_rule.entry(&a.rule_id).or_default().push(a);
    }
    let mut out = Vec::new();
    for (rule, list) in by_rule {
        let n = list.len() as u64;
        let detections: u64 = list.iter().map(|a| a.count as u64).sum();
        let top = |f: &dyn Fn(&Alert) -> &str| -> (String, u64) {
            let mut m: HashMap<&str, u64> = HashMap::new();
            for a in &list {
                *m.entry(f(a)).or_default() += 1;
            }
            m.into_iter()
                .max_by_key(|(k, v)| (*v, std::cmp::Reverse(k.to_string())))
                .map(|(k, v)| (k.to_string(), v))
                .unwrap_or_default()
        };
        let hosts = {
            let mut h: Vec<&str> = list.iter().map(|a| a.host.as_str()).collect();
            h.sort();
            h.dedup();
            h.len() as u64
        };
        let (exe, exe_n) = top(&|a| a.process_executable.as_str());
        let (host, host_n) = top(&|a| a.host.as_str());
        let top_severity = list
            .iter()
            .map(|a| a.severity.as_str())
            .max_by_key(|s| crate::state::severity_rank(s))
            .unwrap_or("")
            .to_string();
        let (suggestion, why) = if !exe.is_empty() && exe_n * 10 >= n * 8 {
            (
                Scope {
                    rule_id: rule.to_string(),
                    process: exe.clone(),
                    ..Scope::default()
                },
                format!("{exe_n} of {n} alerts come from {exe}"),
            )
        } else if host_n * 10 >= n * 8 && hosts > 0 {
            (
                Scope {
                    rule_id: rule.to_string(),
                    host: host.clone(),
                    ..Scope::default()
                },
                format!("{host_n} of {n} alerts are on {host}"),
            )
        } else {
            (
                Scope {
                    rule_id: rule.to_string(),
                    ..Scope::default()
                },
                format!("spread over {hosts} hosts and many programs: review the rule itself"),
            )
        };
        let preview = state.preview(tenant, &suggestion, days, policy)?;
        out.push(Noisy {
            rule_id: rule.to_string(),
            rule_title: list[0].rule_title.clone(),
            alerts: n,
            detections,
            hosts,
            top_severity,
            suggestion,
            why,
            preview,
        });
    }
    out.sort_by(|a, b| {
        b.detections
            .cmp(&a.detections)
            .then(a.rule_id.cmp(&b.rule_id))
    });
    out.truncate(20);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("/usr/bin/*", "/usr/bin/apt"));
        assert!(glob("*apt-get install*", "sudo apt-get install -y curl"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(glob("*", ""));
        assert!(!glob("/usr/bin/*", "/tmp/usr/bin/x"));
        assert!(glob("**x**", "abxcd"));
    }

    #[test]
    fn scopes_match_every_given_field() {
        let d = Detection {
            rule_id: "r1",
            host: "build-7",
            process: "/usr/bin/make",
            command_line: "make -j8",
            hashes: &["AB"],
            user: "ci",
            group: Some("builders"),
        };
        let s = |f: fn(&mut Scope)| {
            let mut s = Scope::default();
            f(&mut s);
            s
        };
        assert!(s(|s| s.rule_id = "r1".into()).matches(&d));
        assert!(!s(|s| s.rule_id = "r2".into()).matches(&d));
        assert!(
            s(|s| {
                s.rule_id = "r1".into();
                s.host = "build-*".into();
                s.user = "ci".into()
            })
            .matches(&d)
        );
        assert!(
            !s(|s| {
                s.rule_id = "r1".into();
                s.user = "root".into()
            })
            .matches(&d)
        );
        assert!(s(|s| s.sha256 = "ab".into()).matches(&d));
        assert!(s(|s| s.group = "builders".into()).matches(&d));
        assert!(!s(|s| s.group = "databases".into()).matches(&d));
        assert!(Scope::default().check().is_err(), "matches everything");
        assert!(s(|s| s.process = "**".into()).check().is_err());
        assert!(s(|s| s.sha256 = "xyz".into()).check().is_err());
    }
}
