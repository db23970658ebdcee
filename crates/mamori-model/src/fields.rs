//! The field mapping layer: Sigma (Sysmon-style) field names ↔ ECS names.
//!
//! Sigma rules, for Windows and Linux alike, name fields the way Sysmon does (`Image`,
//! `CommandLine`, `ParentImage`, `TargetFilename`, `DestinationIp`, …). Mamori's own sensor
//! emits ECS names (`process.executable`, …), Winlogbeat documents may carry both, and the
//! Windows Security log has its own names for the same facts (`NewProcessName` in 4688).
//!
//! [`ALIASES`] is the one table that reconciles them: for each Sigma name, the other names
//! an event may carry the same value under. The detection engine resolves it when rules are
//! compiled, so it costs nothing per event: an event field named `process.command_line`
//! simply fills the slot of every rule that asks for `CommandLine`. A field the event carries
//! under the Sigma name itself always wins over an alias.

/// Sigma field name → other names carrying the same value, in order of preference.
pub const ALIASES: &[(&str, &[&str])] = &[
    // Processes (Sysmon 1, Security 4688, ECS process events).
    ("Image", &["process.executable", "NewProcessName"]),
    ("CommandLine", &["process.command_line"]),
    ("ProcessId", &["process.pid", "NewProcessId"]),
    ("ProcessGuid", &["process.entity_id"]),
    ("CurrentDirectory", &["process.working_directory"]),
    ("OriginalFileName", &["process.pe.original_file_name"]),
    ("Product", &["process.pe.product"]),
    ("Company", &["process.pe.company"]),
    ("Description", &["process.pe.description"]),
    (
        "IntegrityLevel",
        &["process.integrity_level", "MandatoryLabel"],
    ),
    (
        "ParentImage",
        &["process.parent.executable", "ParentProcessName"],
    ),
    ("ParentCommandLine", &["process.parent.command_line"]),
    ("ParentProcessId", &["process.parent.pid"]),
    ("ParentProcessGuid", &["process.parent.entity_id"]),
    ("GrandparentImage", &["process.parent.parent.executable"]),
    (
        "GrandparentCommandLine",
        &["process.parent.parent.command_line"],
    ),
    ("User", &["user.name"]),
    ("LogonId", &["process.user.logon_id"]),
    ("TerminalSessionId", &["process.session_leader.pid"]),
    ("sha256", &["process.hash.sha256", "file.hash.sha256"]),
    ("sha1", &["process.hash.sha1", "file.hash.sha1"]),
    ("md5", &["process.hash.md5", "file.hash.md5"]),
    // Files.
    ("TargetFilename", &["file.path"]),
    ("SourceFilename", &["file.Ext.original.path"]),
    ("ImageLoaded", &["dll.path"]),
    // Network.
    ("SourceIp", &["source.ip"]),
    ("SourcePort", &["source.port"]),
    ("DestinationIp", &["destination.ip"]),
    ("DestinationPort", &["destination.port"]),
    ("DestinationHostname", &["destination.domain"]),
    ("Protocol", &["network.transport"]),
    // DNS.
    ("QueryName", &["dns.question.name"]),
    ("QueryResults", &["dns.resolved_ip"]),
    // Registry.
    ("TargetObject", &["registry.path"]),
    ("Details", &["registry.data.strings"]),
    // Event metadata.
    ("Computer", &["host.name"]),
    ("EventID", &["event.code"]),
    ("Channel", &["winlog.channel"]),
    ("Provider_Name", &["winlog.provider_name"]),
];

/// The other names an event may carry the Sigma field `sigma_name` under.
pub fn aliases_of(sigma_name: &str) -> &'static [&'static str] {
    ALIASES
        .iter()
        .find(|(k, _)| *k == sigma_name)
        .map(|(_, v)| *v)
        .unwrap_or(&[])
}

/// Fields worth showing for a detection when the rule does not name its own (`fields:`):
/// the facts an analyst reads first, in order.
pub const KEY_FIELDS: &[&str] = &[
    "CommandLine",
    "Image",
    "ParentImage",
    "ParentCommandLine",
    "User",
    "TargetFilename",
    "TargetObject",
    "Details",
    "ImageLoaded",
    "TargetImage",
    "SourceImage",
    "QueryName",
    "DestinationIp",
    "DestinationPort",
    "DestinationHostname",
    "PipeName",
    "ScriptBlockText",
    "ServiceName",
    "ImagePath",
    "TargetUserName",
    "SubjectUserName",
    "IpAddress",
    "LogonType",
    "ProcessName",
    "process.command_line",
    "process.executable",
    "file.path",
    "destination.ip",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let mut seen = std::collections::HashSet::new();
        for (k, v) in ALIASES {
            assert!(seen.insert(*k), "duplicate Sigma name {k}");
            assert!(!v.is_empty());
            assert!(!v.contains(k));
        }
        assert_eq!(aliases_of("CommandLine"), &["process.command_line"]);
        assert!(aliases_of("NoSuchField").is_empty());
    }
}
