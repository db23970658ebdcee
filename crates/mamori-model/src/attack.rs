//! MITRE ATT&CK tags as Sigma writes them (`attack.t1059.001`, `attack.execution`).

/// A parsed ATT&CK tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttackTag {
    /// A technique or sub-technique id, upper-cased: `T1059` or `T1059.001`.
    Technique(String),
    /// A tactic name in Sigma's spelling: `execution`, `credential-access`, ….
    Tactic(String),
    /// A group (`G0016`) or software (`S0002`) id.
    Other(String),
}

/// Parses one Sigma tag; returns `None` for tags outside the `attack.` namespace.
pub fn parse_tag(tag: &str) -> Option<AttackTag> {
    let rest = tag.strip_prefix("attack.")?;
    let bytes = rest.as_bytes();
    if bytes.len() >= 5 && (bytes[0] == b't' || bytes[0] == b'T') && bytes[1].is_ascii_digit() {
        return Some(AttackTag::Technique(rest.to_ascii_uppercase()));
    }
    if bytes.len() >= 5
        && matches!(bytes[0], b'g' | b'G' | b's' | b'S')
        && bytes[1..].iter().all(u8::is_ascii_digit)
    {
        return Some(AttackTag::Other(rest.to_ascii_uppercase()));
    }
    Some(AttackTag::Tactic(rest.to_ascii_lowercase()))
}

/// The technique ids (`T1059.001`) among `tags`, in order, without duplicates.
pub fn techniques<'a>(tags: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in tags {
        if let Some(AttackTag::Technique(id)) = parse_tag(t)
            && !out.contains(&id)
        {
            out.push(id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tags() {
        assert_eq!(
            parse_tag("attack.t1059.001"),
            Some(AttackTag::Technique("T1059.001".into()))
        );
        assert_eq!(
            parse_tag("attack.execution"),
            Some(AttackTag::Tactic("execution".into()))
        );
        assert_eq!(
            parse_tag("attack.g0016"),
            Some(AttackTag::Other("G0016".into()))
        );
        assert_eq!(parse_tag("cve.2021-44228"), None);
        assert_eq!(
            techniques(["attack.t1003", "attack.credential-access", "attack.t1003"]),
            vec!["T1003".to_string()]
        );
    }
}
