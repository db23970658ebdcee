//! An incident's verdict: malicious, suspicious or benign-likely, with the evidence for it.
//!
//! The verdict follows the alerts' severities (themselves from the evidence, see
//! [`crate::Policy::assess`]) and what the incident as a whole shows: how many independent
//! rules and ATT&CK tactics, whether a known-bad file or an external destination is involved,
//! and whether everything was prevented.

use crate::Severity;

/// What an incident is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Probably harmless (administration, a noisy rule); kept for the record.
    BenignLikely,
    /// Needs a person to look.
    Suspicious,
    /// An attack: act now.
    Malicious,
}

impl Verdict {
    /// `malicious`, `suspicious` or `benign-likely`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Malicious => "malicious",
            Verdict::Suspicious => "suspicious",
            Verdict::BenignLikely => "benign-likely",
        }
    }
}

/// What is known about an incident as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncidentFacts {
    /// The highest severity of its alerts.
    pub severity: Option<Severity>,
    /// Why its Critical alerts are Critical.
    pub critical_reasons: Vec<String>,
    /// Different rules that fired.
    pub rules: usize,
    /// Different ATT&CK tactics among their tags.
    pub tactics: Vec<String>,
    /// External addresses its processes talked to.
    pub external: Vec<String>,
    /// A blocklisted file is involved.
    pub known_bad: bool,
    /// Every execution in it was prevented.
    pub all_prevented: bool,
}

/// The verdict and the evidence for it, in plain words (English; reports translate the
/// verdict, the evidence lines keep the facts).
pub fn verdict(f: &IncidentFacts) -> (Verdict, Vec<String>) {
    let mut why = Vec::new();
    let sev = f.severity.unwrap_or(Severity::Informational);
    if f.known_bad {
        why.push("a file on the blocklist (known bad) is involved".to_string());
    }
    if sev == Severity::Critical {
        why.extend(f.critical_reasons.iter().cloned());
    }
    if !why.is_empty() {
        if f.all_prevented {
            why.push("every execution was prevented".into());
        }
        return (Verdict::Malicious, dedup(why));
    }
    if sev == Severity::High {
        why.push("a high-severity detection without aggravating facts".into());
    }
    if f.rules >= 2 {
        why.push(format!("{} different rules fired", f.rules));
    }
    if f.tactics.len() >= 3 {
        why.push(format!(
            "activity across {} ATT&CK tactics ({})",
            f.tactics.len(),
            f.tactics.join(", ")
        ));
    }
    if !f.external.is_empty() {
        why.push(format!(
            "connections to external addresses: {}",
            f.external.join(", ")
        ));
    }
    if !why.is_empty() {
        return (Verdict::Suspicious, why);
    }
    why.push(format!(
        "one {} rule and no aggravating fact (no external connection, no known-bad file, no \
         second detection)",
        sev.as_str()
    ));
    (Verdict::BenignLikely, why)
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_evidence() {
        let base = IncidentFacts {
            severity: Some(Severity::Medium),
            rules: 1,
            ..IncidentFacts::default()
        };
        let (v, why) = verdict(&base);
        assert_eq!(v, Verdict::BenignLikely);
        assert!(why[0].contains("one medium rule"), "{why:?}");

        let two = IncidentFacts {
            rules: 2,
            ..base.clone()
        };
        assert_eq!(verdict(&two).0, Verdict::Suspicious);
        let high = IncidentFacts {
            severity: Some(Severity::High),
            ..base.clone()
        };
        assert_eq!(verdict(&high).0, Verdict::Suspicious);
        let tactics = IncidentFacts {
            tactics: vec!["discovery".into(), "execution".into(), "persistence".into()],
            ..base.clone()
        };
        let (v, why) = verdict(&tactics);
        assert_eq!(v, Verdict::Suspicious);
        assert!(why[0].contains("3 ATT&CK tactics"), "{why:?}");

        let critical = IncidentFacts {
            severity: Some(Severity::Critical),
            critical_reasons: vec![
                "raised to critical: x".into(),
                "raised to critical: x".into(),
            ],
            ..base.clone()
        };
        let (v, why) = verdict(&critical);
        assert_eq!(v, Verdict::Malicious);
        assert_eq!(
            why,
            vec!["raised to critical: x".to_string()],
            "deduplicated"
        );
        let bad = IncidentFacts {
            known_bad: true,
            all_prevented: true,
            ..base
        };
        let (v, why) = verdict(&bad);
        assert_eq!(v, Verdict::Malicious);
        assert!(why.iter().any(|w| w.contains("prevented")), "{why:?}");
    }
}
