//! The automated SOC's policy: how an alert's severity follows from its evidence, and what is
//! contained automatically.
//!
//! A [`Policy`] is data: a TOML file (the default is `config/soc-policy.toml`, compiled in),
//! with overrides per tenant. [`Policy::assess`] turns the [`Facts`] of an alert into a
//! [`Severity`] and the reasons that raised it or kept it from being raised;
//! [`Policy::containment`] says what to do with the host of a Critical alert;
//! [`verdict::verdict`] judges an incident. The policy also says how alerts are grouped into
//! incidents, the response-time clocks, the report language and where notifications go. No
//! I/O: the server gathers the facts.

pub mod verdict;

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;

/// The default policy (`config/soc-policy.toml`).
pub const DEFAULT_POLICY: &str = include_str!("../../../config/soc-policy.toml");

/// Why a policy cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not TOML of the expected shape.
    #[error("SOC policy: {0}")]
    Syntax(String),
    /// A value is not one the policy knows.
    #[error("SOC policy: {0}")]
    Invalid(String),
}

/// Severity levels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Kept for the record.
    Informational,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// A serious detection without aggravating facts.
    High,
    /// Act now: see the reasons.
    Critical,
}

impl Severity {
    /// `critical`, `high`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Informational => "informational",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses `critical`, `high`, `medium`, `low` or `informational`.
    pub fn parse(s: &str) -> Option<Severity> {
        Some(match s {
            "critical" => Severity::Critical,
            "high" => Severity::High,
            "medium" => Severity::Medium,
            "low" => Severity::Low,
            "informational" => Severity::Informational,
            _ => return None,
        })
    }

    /// The severity a rule level starts from (unknown levels count as informational).
    pub fn from_rule_level(level: &str) -> Severity {
        match level.to_ascii_lowercase().as_str() {
            "critical" | "high" => Severity::High,
            "medium" => Severity::Medium,
            "low" => Severity::Low,
            _ => Severity::Informational,
        }
    }
}

/// What is known about an alert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The rule's level (`critical`, `high`, …).
    pub rule_level: String,
    /// Something in the alert was prevented (the execution was blocked).
    pub prevented: bool,
    /// External addresses the process tree talked to (`ip:port`).
    pub external: Vec<String>,
    /// The blocklisted SHA-256 involved, if any.
    pub known_bad_hash: Option<String>,
    /// Different rules that fired on the process or its parent (this one included).
    pub rules_on_tree: usize,
}

/// A severity and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// The severity.
    pub severity: Severity,
    /// Facts that raised it or kept it from being raised, in plain words.
    pub reasons: Vec<String>,
}

/// What to do with the host of a Critical alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Containment {
    /// Isolate at once.
    Isolate,
    /// Limited: stop the alert's process tree, keep the host on the network (critical
    /// servers).
    Kill,
    /// Wait for a person.
    Approve,
    /// Nothing.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    ExternalNotPrevented,
    KnownBadHash,
    MultipleDetections,
}

/// An IP network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Result<Net, PolicyError> {
        let bad = || PolicyError::Invalid(format!("internal_networks: {s:?} is not ADDR/PREFIX"));
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let prefix: u8 = p.trim().parse().map_err(|_| bad())?;
        if prefix > if addr.is_ipv4() { 32 } else { 128 } {
            return Err(bad());
        }
        Ok(Net { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        // IPv4-mapped IPv6 addresses count as IPv4.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct TenantPolicy {
    critical_when: Vec<Condition>,
    internal: Vec<Net>,
    containment: Containment,
    exempt_hosts: Vec<String>,
    groups: Vec<(String, Vec<String>, Containment)>,
    incidents: Incidents,
    clocks: Vec<(Severity, Clock)>,
    language: Language,
    notify: Vec<Channel>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainmentFile {
    critical: Option<String>,
    exempt_hosts: Option<Vec<String>>,
    groups: Option<HashMap<String, GroupFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    hosts: Vec<String>,
    critical: String,
}

fn containment_of(v: &str, what: &str) -> Result<Containment, PolicyError> {
    match v {
        "isolate" => Ok(Containment::Isolate),
        "kill" => Ok(Containment::Kill),
        "approve" => Ok(Containment::Approve),
        "none" => Ok(Containment::None),
        other => Err(PolicyError::Invalid(format!(
            "{what}: {other:?} (isolate, kill, approve or none)"
        ))),
    }
}

fn host_matches(patterns: &[String], host: &str) -> bool {
    patterns.iter().any(|e| match e.strip_suffix('*') {
        Some(prefix) => host.starts_with(prefix),
        None => host == e,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentsFile {
    window_minutes: Option<u32>,
    min_severity: Option<String>,
    report_quiet_seconds: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockFile {
    first_notice_minutes: u32,
    report_minutes: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Part {
    critical_when: Option<Vec<String>>,
    internal_networks: Option<Vec<String>>,
    containment: Option<ContainmentFile>,
    incidents: Option<IncidentsFile>,
    clocks: Option<HashMap<String, ClockFile>>,
    language: Option<String>,
    notify: Option<Vec<Channel>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(flatten)]
    base: Part,
    smtp: Option<Smtp>,
    #[serde(default)]
    tenants: HashMap<String, Part>,
}

/// How alerts are grouped into incidents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incidents {
    /// Alerts that share a process tree, a user on a host or a file hash within this many
    /// minutes belong to one incident.
    pub window_minutes: u32,
    /// Alerts below this severity join an incident but never open one.
    pub min_severity: Severity,
    /// The detailed report is sent once the incident has had no new alert for this long.
    pub report_quiet_seconds: u32,
}

/// Response-time targets for an incident of one severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// Minutes from the incident's opening to the first notice.
    pub first_notice_minutes: u32,
    /// Minutes from the incident's opening to the detailed report.
    pub report_minutes: u32,
}

/// The language of reports and notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    /// English.
    En,
    /// Japanese.
    Ja,
}

impl Language {
    /// Parses `en` or `ja`.
    pub fn parse(s: &str) -> Option<Language> {
        match s {
            "en" => Some(Language::En),
            "ja" => Some(Language::Ja),
            _ => None,
        }
    }

    /// `en` or `ja`.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Ja => "ja",
        }
    }
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    /// `email`, `webhook` (JSON with an HMAC signature), `slack` or `teams`.
    pub kind: String,
    /// Recipients (email).
    #[serde(default)]
    pub to: Vec<String>,
    /// Address (webhooks): `http://` or `https://`.
    #[serde(default)]
    pub url: String,
    /// Incidents of this severity and above are sent.
    #[serde(default = "default_notify_severity")]
    pub min_severity: String,
    /// Language of what is sent (default: the tenant's).
    #[serde(default)]
    pub language: Option<String>,
    /// Name of the environment variable holding the webhook's HMAC key.
    #[serde(default)]
    pub secret_env: Option<String>,
}

fn default_notify_severity() -> String {
    "high".into()
}

/// The mail server notifications are sent through.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smtp {
    /// `host:port`.
    pub server: String,
    /// Sender address.
    pub from: String,
    /// `starttls` (default), `tls` (implicit, port 465) or `none` (a relay on this machine).
    #[serde(default = "default_smtp_tls")]
    pub tls: String,
    /// User for AUTH PLAIN (only over TLS).
    #[serde(default)]
    pub username: Option<String>,
    /// Name of the environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A PEM file of CA certificates trusted besides the system's (a private mail relay).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

fn default_smtp_tls() -> String {
    "starttls".into()
}

impl TenantPolicy {
    /// `self` with the parts `p` sets replaced.
    fn with(&self, p: &Part) -> Result<TenantPolicy, PolicyError> {
        let mut t = self.clone();
        if let Some(c) = &p.critical_when {
            t.critical_when = c
                .iter()
                .map(|c| match c.as_str() {
                    "external_communication_not_prevented" => Ok(Condition::ExternalNotPrevented),
                    "known_bad_hash" => Ok(Condition::KnownBadHash),
                    "multiple_detections" => Ok(Condition::MultipleDetections),
                    other => Err(PolicyError::Invalid(format!(
                        "critical_when: unknown condition {other:?} (known: \
                         external_communication_not_prevented, known_bad_hash, multiple_detections)"
                    ))),
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(n) = &p.internal_networks {
            t.internal = n.iter().map(|s| Net::parse(s)).collect::<Result<_, _>>()?;
        }
        if let Some(c) = &p.containment {
            if let Some(v) = &c.critical {
                t.containment = containment_of(v, "containment.critical")?;
            }
            if let Some(g) = &c.groups {
                let mut groups: Vec<(String, Vec<String>, Containment)> = g
                    .iter()
                    .map(|(name, g)| {
                        Ok((
                            name.clone(),
                            g.hosts.clone(),
                            containment_of(&g.critical, &format!("containment.groups.{name}"))?,
                        ))
                    })
                    .collect::<Result<_, PolicyError>>()?;
                groups.sort_by(|a, b| a.0.cmp(&b.0));
                t.groups = groups;
            }
            if let Some(e) = &c.exempt_hosts {
                t.exempt_hosts = e.clone();
            }
        }
        if let Some(i) = &p.incidents {
            if let Some(w) = i.window_minutes {
                if w == 0 || w > 7 * 24 * 60 {
                    return Err(PolicyError::Invalid(format!(
                        "incidents.window_minutes: {w} (1 to 10080)"
                    )));
                }
                t.incidents.window_minutes = w;
            }
            if let Some(q) = i.report_quiet_seconds {
                t.incidents.report_quiet_seconds = q;
            }
            if let Some(m) = &i.min_severity {
                t.incidents.min_severity = severity(m, "incidents.min_severity")?;
            }
        }
        if let Some(c) = &p.clocks {
            for (name, clock) in c {
                let sev = severity(name, "clocks")?;
                t.clocks.retain(|(s, _)| *s != sev);
                t.clocks.push((
                    sev,
                    Clock {
                        first_notice_minutes: clock.first_notice_minutes,
                        report_minutes: clock.report_minutes,
                    },
                ));
            }
        }
        if let Some(l) = &p.language {
            t.language = Language::parse(l)
                .ok_or_else(|| PolicyError::Invalid(format!("language: {l:?} (en or ja)")))?;
        }
        if let Some(n) = &p.notify {
            for c in n {
                check_channel(c)?;
            }
            t.notify = n.clone();
        }
        Ok(t)
    }
}

fn severity(s: &str, what: &str) -> Result<Severity, PolicyError> {
    Severity::parse(s).ok_or_else(|| {
        PolicyError::Invalid(format!(
            "{what}: {s:?} (critical, high, medium, low or informational)"
        ))
    })
}

fn check_channel(c: &Channel) -> Result<(), PolicyError> {
    severity(&c.min_severity, "notify.min_severity")?;
    if let Some(l) = &c.language {
        Language::parse(l)
            .ok_or_else(|| PolicyError::Invalid(format!("notify.language: {l:?} (en or ja)")))?;
    }
    match c.kind.as_str() {
        "email" => {
            if c.to.is_empty() || c.to.iter().any(|a| !valid_address(a)) {
                return Err(PolicyError::Invalid(format!(
                    "notify (email): `to` needs one or more addresses like soc@example.com, \
                     got {:?}",
                    c.to
                )));
            }
        }
        "webhook" | "slack" | "teams" => {
            if !(c.url.starts_with("https://") || c.url.starts_with("http://")) {
                return Err(PolicyError::Invalid(format!(
                    "notify ({}): `url` must be an http:// or https:// address",
                    c.kind
                )));
            }
        }
        other => {
            return Err(PolicyError::Invalid(format!(
                "notify: kind {other:?} (email, webhook, slack or teams)"
            )));
        }
    }
    Ok(())
}

/// A plain mail address: no spaces, angle brackets or line breaks (they would let a policy
/// inject SMTP commands).
pub fn valid_address(a: &str) -> bool {
    let ok_chars = a
        .chars()
        .all(|c| c.is_ascii_graphic() && !"<>()[],;:\\\"".contains(c));
    matches!(a.split_once('@'), Some((l, d)) if !l.is_empty() && d.contains('.') && !d.contains('@'))
        && ok_chars
        && a.len() <= 254
}

/// The policy: a default and per-tenant overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    base: TenantPolicy,
    tenants: HashMap<String, TenantPolicy>,
    smtp: Option<Smtp>,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy::parse(DEFAULT_POLICY).expect("the default SOC policy is valid")
    }
}

impl Policy {
    /// Parses a policy file; what it leaves out comes from the default policy.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let file: File = toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        let empty = TenantPolicy {
            critical_when: Vec::new(),
            internal: Vec::new(),
            containment: Containment::None,
            exempt_hosts: Vec::new(),
            groups: Vec::new(),
            incidents: Incidents {
                window_minutes: 60,
                min_severity: Severity::Medium,
                report_quiet_seconds: 60,
            },
            clocks: Vec::new(),
            language: Language::En,
            notify: Vec::new(),
        };
        let defaults = if text == DEFAULT_POLICY {
            empty
        } else {
            Policy::default().base
        };
        let base = defaults.with(&file.base)?;
        let tenants = file
            .tenants
            .iter()
            .map(|(name, part)| Ok((name.clone(), base.with(part)?)))
            .collect::<Result<_, PolicyError>>()?;
        let smtp = match file.smtp {
            Some(s) => {
                if !valid_address(&s.from) {
                    return Err(PolicyError::Invalid(format!(
                        "smtp.from: {:?} is not a mail address",
                        s.from
                    )));
                }
                if !["starttls", "tls", "none"].contains(&s.tls.as_str()) {
                    return Err(PolicyError::Invalid(format!(
                        "smtp.tls: {:?} (starttls, tls or none)",
                        s.tls
                    )));
                }
                if s.username.is_some() && s.tls == "none" {
                    return Err(PolicyError::Invalid(
                        "smtp: a username (password) is never sent without TLS".into(),
                    ));
                }
                Some(s)
            }
            None => None,
        };
        Ok(Policy {
            base,
            tenants,
            smtp,
        })
    }

    fn of(&self, tenant: &str) -> &TenantPolicy {
        self.tenants.get(tenant).unwrap_or(&self.base)
    }

    /// Whether `ip` is internal for `tenant` (not "external communication").
    pub fn is_internal(&self, tenant: &str, ip: IpAddr) -> bool {
        self.of(tenant).internal.iter().any(|n| n.contains(ip))
    }

    /// The severity of an alert of `tenant` with these facts, and why.
    pub fn assess(&self, tenant: &str, f: &Facts) -> Assessment {
        let p = self.of(tenant);
        let base = Severity::from_rule_level(&f.rule_level);
        let mut reasons = vec![format!(
            "rule level {} gives {}",
            if f.rule_level.is_empty() {
                "unknown"
            } else {
                &f.rule_level
            },
            base.as_str()
        )];
        let mut raised = Vec::new();
        for c in &p.critical_when {
            match c {
                Condition::ExternalNotPrevented if !f.external.is_empty() => {
                    if f.prevented {
                        reasons.push(format!(
                            "the process tree talked to {} (external), but the execution was \
                             prevented: not raised for that",
                            f.external.join(", ")
                        ));
                    } else {
                        raised.push(format!(
                            "the process tree talked to {} (external) and nothing was prevented",
                            f.external.join(", ")
                        ));
                    }
                }
                Condition::KnownBadHash => {
                    if let Some(h) = &f.known_bad_hash {
                        raised.push(format!("known-bad file: {h} is on the blocklist"));
                    }
                }
                Condition::MultipleDetections if f.rules_on_tree >= 2 => {
                    raised.push(format!(
                        "{} different rules fired on this process tree",
                        f.rules_on_tree
                    ));
                }
                _ => {}
            }
        }
        if f.prevented && f.external.is_empty() {
            reasons.push("the execution was prevented".into());
        }
        let severity = if base == Severity::High && !raised.is_empty() {
            Severity::Critical
        } else {
            base
        };
        if severity == Severity::Critical {
            reasons.extend(
                raised
                    .into_iter()
                    .map(|r| format!("raised to critical: {r}")),
            );
        } else if !raised.is_empty() {
            reasons.extend(
                raised
                    .into_iter()
                    .map(|r| format!("{r} (not raised: the rule is below high)")),
            );
        }
        Assessment { severity, reasons }
    }

    /// How `tenant`'s alerts are grouped into incidents.
    pub fn incidents(&self, tenant: &str) -> Incidents {
        self.of(tenant).incidents
    }

    /// Response-time targets for an incident of `severity` (none below the lowest set).
    pub fn clock(&self, tenant: &str, severity: Severity) -> Option<Clock> {
        self.of(tenant)
            .clocks
            .iter()
            .find(|(s, _)| *s == severity)
            .map(|(_, c)| *c)
    }

    /// The language of `tenant`'s reports.
    pub fn language(&self, tenant: &str) -> Language {
        self.of(tenant).language
    }

    /// Where `tenant`'s notifications go.
    pub fn channels(&self, tenant: &str) -> &[Channel] {
        &self.of(tenant).notify
    }

    /// The mail server, if one is set.
    pub fn smtp(&self) -> Option<&Smtp> {
        self.smtp.as_ref()
    }

    /// What to do with `host` (of `tenant`) when it has a Critical alert: exempt hosts
    /// nothing, a host group its own containment, else the tenant's.
    pub fn containment(&self, tenant: &str, host: &str) -> Containment {
        let p = self.of(tenant);
        if host_matches(&p.exempt_hosts, host) {
            return Containment::None;
        }
        p.groups
            .iter()
            .find(|(_, hosts, _)| host_matches(hosts, host))
            .map(|(_, _, c)| *c)
            .unwrap_or(p.containment)
    }

    /// The host group `host` belongs to (the first by name), if any.
    pub fn group_of(&self, tenant: &str, host: &str) -> Option<&str> {
        self.of(tenant)
            .groups
            .iter()
            .find(|(_, hosts, _)| host_matches(hosts, host))
            .map(|(n, _, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(level: &str) -> Facts {
        Facts {
            rule_level: level.into(),
            rules_on_tree: 1,
            ..Facts::default()
        }
    }

    #[test]
    fn severity_follows_the_evidence() {
        let p = Policy::default();
        assert_eq!(p.assess("t", &facts("high")).severity, Severity::High);
        assert_eq!(
            p.assess("t", &facts("critical")).severity,
            Severity::High,
            "no aggravating fact"
        );
        assert_eq!(p.assess("t", &facts("medium")).severity, Severity::Medium);
        assert_eq!(p.assess("t", &facts("")).severity, Severity::Informational);

        let c2 = Facts {
            external: vec!["203.0.113.7:443".into()],
            ..facts("high")
        };
        let a = p.assess("t", &c2);
        assert_eq!(a.severity, Severity::Critical);
        assert!(
            a.reasons
                .iter()
                .any(|r| r.contains("203.0.113.7:443") && r.contains("raised")),
            "{a:?}"
        );

        let prevented = Facts {
            prevented: true,
            ..c2.clone()
        };
        let a = p.assess("t", &prevented);
        assert_eq!(
            a.severity,
            Severity::High,
            "prevented: not raised for the connection"
        );
        assert!(a.reasons.iter().any(|r| r.contains("prevented")), "{a:?}");

        let bad = Facts {
            known_bad_hash: Some("ab".repeat(32)),
            prevented: true,
            ..facts("high")
        };
        assert_eq!(
            p.assess("t", &bad).severity,
            Severity::Critical,
            "known bad, even if prevented"
        );
        let many = Facts {
            rules_on_tree: 2,
            ..facts("high")
        };
        assert_eq!(p.assess("t", &many).severity, Severity::Critical);
        let low = Facts {
            external: vec!["203.0.113.7:443".into()],
            ..facts("medium")
        };
        let a = p.assess("t", &low);
        assert_eq!(
            a.severity,
            Severity::Medium,
            "only high-or-worse rules become critical"
        );
        assert!(a.reasons.iter().any(|r| r.contains("not raised")), "{a:?}");
    }

    #[test]
    fn internal_networks_and_containment_per_tenant() {
        let p = Policy::parse(
            r#"
[containment]
exempt_hosts = ["db-*", "dc01"]
[tenants.acme]
internal_networks = ["10.0.0.0/8", "203.0.113.0/24"]
critical_when = ["known_bad_hash"]
[tenants.acme.containment]
critical = "approve"
"#,
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(p.is_internal("other", ip("192.168.1.5")), "defaults kept");
        assert!(p.is_internal("other", ip("::ffff:10.1.2.3")), "mapped IPv4");
        assert!(!p.is_internal("other", ip("203.0.113.7")));
        assert!(
            p.is_internal("acme", ip("203.0.113.7")),
            "the tenant's own list"
        );
        assert!(
            !p.is_internal("acme", ip("192.168.1.5")),
            "replaced, not merged"
        );
        assert!(
            p.is_internal("other", ip("fe80::1")) && !p.is_internal("other", ip("2001:db8::1"))
        );
        assert_eq!(
            p.containment("other", "web1"),
            Containment::Isolate,
            "default: isolate"
        );
        assert_eq!(
            p.containment("other", "db-7"),
            Containment::None,
            "exempt by prefix"
        );
        assert_eq!(p.containment("other", "dc01"), Containment::None);
        assert_eq!(p.containment("acme", "web1"), Containment::Approve);
        let c2 = Facts {
            external: vec!["198.51.100.1:80".into()],
            rule_level: "high".into(),
            rules_on_tree: 1,
            ..Facts::default()
        };
        assert_eq!(
            p.assess("acme", &c2).severity,
            Severity::High,
            "acme does not escalate on connections"
        );
        assert_eq!(p.assess("other", &c2).severity, Severity::Critical);
    }

    #[test]
    fn incidents_clocks_and_channels_per_tenant() {
        let p = Policy::default();
        assert_eq!(p.incidents("t").window_minutes, 60);
        assert_eq!(p.incidents("t").min_severity, Severity::Medium);
        assert_eq!(
            p.clock("t", Severity::Critical)
                .unwrap()
                .first_notice_minutes,
            15
        );
        assert_eq!(p.clock("t", Severity::Low), None);
        assert_eq!(p.language("t"), Language::En);
        assert!(p.channels("t").is_empty() && p.smtp().is_none());
        let p = Policy::parse(
            r#"
language = "ja"
[smtp]
server = "127.0.0.1:2525"
from = "mamori@example.com"
tls = "none"
[[notify]]
kind = "email"
to = ["soc@example.com"]
[tenants.acme]
language = "en"
[tenants.acme.clocks.critical]
first_notice_minutes = 5
report_minutes = 30
[[tenants.acme.notify]]
kind = "teams"
url = "https://example.invalid/hook"
min_severity = "critical"
"#,
        )
        .unwrap();
        assert_eq!(p.language("other"), Language::Ja);
        assert_eq!(p.language("acme"), Language::En);
        assert_eq!(p.channels("other")[0].kind, "email");
        assert_eq!(p.channels("other")[0].min_severity, "high");
        assert_eq!(p.channels("acme").len(), 1, "replaced, not merged");
        assert_eq!(
            p.clock("acme", Severity::Critical).unwrap().report_minutes,
            30
        );
        assert_eq!(
            p.clock("acme", Severity::High).unwrap().report_minutes,
            240,
            "other clocks kept"
        );
        assert_eq!(p.smtp().unwrap().server, "127.0.0.1:2525");
    }

    #[test]
    fn host_groups_have_their_own_containment() {
        let p = Policy::parse(
            r#"
[containment]
exempt_hosts = ["lab-1"]
[containment.groups.databases]
hosts = ["db-*", "pg01"]
critical = "kill"
[containment.groups.finance]
hosts = ["fin-*"]
critical = "approve"
"#,
        )
        .unwrap();
        assert_eq!(p.containment("t", "db-7"), Containment::Kill);
        assert_eq!(p.containment("t", "pg01"), Containment::Kill);
        assert_eq!(p.containment("t", "fin-ws3"), Containment::Approve);
        assert_eq!(p.containment("t", "web1"), Containment::Isolate);
        assert_eq!(p.containment("t", "lab-1"), Containment::None);
        assert_eq!(p.group_of("t", "db-7"), Some("databases"));
        assert_eq!(p.group_of("t", "web1"), None);
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        for (text, why) in [
            ("critical_when = [\"sunspots\"]", "unknown condition"),
            ("internal_networks = [\"10.0.0.0\"]", "ADDR/PREFIX"),
            ("internal_networks = [\"10.0.0.0/40\"]", "ADDR/PREFIX"),
            (
                "[containment]\ncritical = \"nuke\"",
                "isolate, kill, approve or none",
            ),
            (
                "[containment.groups.db]\nhosts = [\"db-*\"]\ncritical = \"maybe\"",
                "containment.groups.db",
            ),
            ("critcal_when = []", "critcal_when"),
            (
                "[[notify]]\nkind = \"email\"\nto = [\"a b@x.com\"]",
                "addresses",
            ),
            (
                "[[notify]]\nkind = \"email\"\nto = [\"a@x.com>\\r\\nRCPT TO:<b@y.com\"]",
                "addresses",
            ),
            (
                "[[notify]]\nkind = \"pager\"",
                "email, webhook, slack or teams",
            ),
            ("[[notify]]\nkind = \"slack\"\nurl = \"file:///x\"", "http"),
            (
                "[[notify]]\nkind = \"slack\"\nurl = \"https://x\"\nmin_severity = \"loud\"",
                "critical, high",
            ),
            (
                "[smtp]\nserver = \"x:25\"\nfrom = \"a@b.c\"\ntls = \"none\"\nusername = \"u\"",
                "never sent without TLS",
            ),
            ("[incidents]\nwindow_minutes = 0", "1 to 10080"),
            (
                "[clocks.urgent]\nfirst_notice_minutes = 1\nreport_minutes = 2",
                "critical, high",
            ),
            ("language = \"fr\"", "en or ja"),
            ("this is not toml", "SOC policy"),
        ] {
            let e = Policy::parse(text).unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }
}
