//! What a report is made from: the server fills these from its state and event store; they
//! are also the JSON of `GET /api/v1/incidents/{id}` and `GET /api/v1/reports/monthly`.

use serde::{Deserialize, Serialize};

/// An incident with everything known about it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Id.
    pub id: i64,
    /// Tenant.
    pub tenant: String,
    /// Short title (the most severe detection and its host).
    pub title: String,
    /// `critical`, `high`, `medium`, `low`, `informational`.
    pub severity: String,
    /// `open` or `closed`.
    pub status: String,
    /// `malicious`, `suspicious` or `benign-likely`.
    pub verdict: String,
    /// The evidence for the verdict.
    pub verdict_reasons: Vec<String>,
    /// Opened, Unix seconds.
    pub opened_at: i64,
    /// Last alert joined, Unix seconds.
    pub updated_at: i64,
    /// Hosts involved.
    pub hosts: Vec<Host>,
    /// Accounts involved.
    pub users: Vec<String>,
    /// Files involved, with where they were seen (trajectory).
    pub files: Vec<File>,
    /// Network destinations of the processes involved.
    pub destinations: Vec<Destination>,
    /// ATT&CK techniques (`T1059.004`) and tactics (`execution`).
    pub techniques: Vec<String>,
    /// ATT&CK tactics.
    pub tactics: Vec<String>,
    /// The alerts, oldest first.
    pub alerts: Vec<AlertLine>,
    /// The processes, parents before children.
    pub process_tree: Vec<Process>,
    /// Everything in time order.
    pub timeline: Vec<Entry>,
    /// Response actions on its hosts since it opened.
    pub actions: Vec<ActionLine>,
    /// Telemetry that may be missing for its window.
    pub blind_spots: Vec<String>,
    /// Response-time clocks.
    pub clocks: Clocks,
    /// Notifications sent.
    pub notifications: Vec<Notice>,
}

/// A host of an incident.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Host {
    /// Agent id (`win:<name>` for hosts known from uploaded Windows logs).
    pub agent: String,
    /// Host name.
    pub name: String,
    /// Isolated now.
    pub isolated: bool,
    /// By whom (`policy:auto-contain` when automatic).
    pub isolated_by: String,
}

/// A file of an incident and its trajectory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct File {
    /// Path.
    pub path: String,
    /// SHA-256 (may be empty).
    pub sha256: String,
    /// Hosts where this hash was seen, with first time and events.
    pub seen_on: Vec<Seen>,
}

/// Where a file was seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    /// Host name.
    pub host: String,
    /// First event (RFC 3339).
    pub first: String,
    /// Events naming the hash (executions, writes).
    pub events: u64,
}

/// A network destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    /// `ip:port` or a domain.
    pub address: String,
    /// Outside the tenant's internal networks.
    pub external: bool,
    /// The process that connected.
    pub process: String,
}

/// An alert in an incident.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertLine {
    /// Alert id.
    pub id: i64,
    /// First event time (RFC 3339).
    pub time: String,
    /// Rule title.
    pub rule: String,
    /// Severity.
    pub severity: String,
    /// Host.
    pub host: String,
    /// Executable.
    pub process: String,
    /// Command line.
    pub command_line: String,
    /// Detections folded into it.
    pub count: i64,
    /// Why it has its severity.
    pub reasons: Vec<String>,
}

/// A process of an incident.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Process {
    /// Entity id (pid and start time).
    pub entity: String,
    /// Parent's entity id.
    pub parent: String,
    /// Depth in the tree (0: a root).
    pub depth: usize,
    /// Pid.
    pub pid: i64,
    /// Executable.
    pub executable: String,
    /// Command line.
    pub command_line: String,
    /// User.
    pub user: String,
    /// Host.
    pub host: String,
    /// Rules that fired on it.
    pub rules: Vec<String>,
}

/// One line of the timeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// `event`, `alert`, `action`, `notice`.
    pub kind: String,
    /// Host.
    pub host: String,
    /// What happened.
    pub text: String,
}

/// A response action.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionLine {
    /// Command id.
    pub id: String,
    /// `isolate`, `kill`, …
    pub action: String,
    /// Host.
    pub host: String,
    /// Where it stands.
    pub status: String,
    /// Who issued it.
    pub issued_by: String,
    /// Issued automatically by the policy.
    pub automatic: bool,
    /// When (Unix ms).
    pub at_ms: i64,
    /// Why.
    pub reason: String,
}

/// Response-time clocks of an incident (Unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Clocks {
    /// First notice due.
    pub first_notice_due: Option<i64>,
    /// First notice delivered.
    pub first_notice_at: Option<i64>,
    /// Detailed report due.
    pub report_due: Option<i64>,
    /// Detailed report delivered.
    pub report_at: Option<i64>,
}

impl Clocks {
    /// Whether the first notice was (or can still be) on time: `Some(true)` met,
    /// `Some(false)` missed, `None` pending or no clock.
    pub fn first_notice_met(&self, now: i64) -> Option<bool> {
        met(self.first_notice_due, self.first_notice_at, now)
    }

    /// The same for the report.
    pub fn report_met(&self, now: i64) -> Option<bool> {
        met(self.report_due, self.report_at, now)
    }
}

fn met(due: Option<i64>, at: Option<i64>, now: i64) -> Option<bool> {
    match (due, at) {
        (Some(d), Some(a)) => Some(a <= d),
        (Some(d), None) if now > d => Some(false),
        _ => None,
    }
}

/// A notification sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// `notice` or `report`.
    pub kind: String,
    /// Channel kind.
    pub channel: String,
    /// When (Unix seconds).
    pub at: i64,
    /// Delivered.
    pub ok: bool,
    /// Why not.
    pub error: String,
}

/// A month (or any period) for one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Monthly {
    /// Tenant.
    pub tenant: String,
    /// `2026-11`.
    pub period: String,
    /// Start (Unix seconds, inclusive).
    pub from: i64,
    /// End (Unix seconds, exclusive).
    pub to: i64,
    /// Alerts by severity, highest first.
    pub alerts_by_severity: Vec<(String, u64)>,
    /// Incidents by severity, highest first.
    pub incidents_by_severity: Vec<(String, u64)>,
    /// Incidents by verdict.
    pub incidents_by_verdict: Vec<(String, u64)>,
    /// Alerts by ATT&CK technique, most first.
    pub techniques: Vec<(String, u64)>,
    /// Alerts by host, most first.
    pub hosts: Vec<(String, u64)>,
    /// Noisiest rules.
    pub rules: Vec<(String, u64)>,
    /// Clocks: met, missed, pending.
    pub clocks_met: u64,
    /// Missed.
    pub clocks_missed: u64,
    /// Automatic isolations.
    pub auto_isolations: u64,
    /// Sensors enrolled.
    pub sensors: u64,
    /// Sensors by status now (`online`, `degraded`, `offline` …).
    pub sensors_by_status: Vec<(String, u64)>,
    /// Hosts known only from uploaded Windows logs.
    pub upload_hosts: u64,
    /// Telemetry gaps in the period (host: what).
    pub gaps: Vec<String>,
    /// Tuning changes in the period (suppressions added and removed, rules switched).
    pub tuning: Vec<String>,
    /// The most serious incidents: (id, severity, title).
    pub top_incidents: Vec<(i64, String, String)>,
}
