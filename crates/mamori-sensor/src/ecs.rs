//! Rendering sensor events with ECS field names.

use nix::time::{ClockId, clock_gettime};
use serde::Serialize;

use crate::bpf::{DnsEvent, FileEvent, FileOp, Kind, NetAction, NetEvent, RawEvent, SensorEvent};
use crate::process::{ProcInfo, ProcessTable};

/// Facts about this host included in every event.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// Host name.
    pub name: String,
    /// Kernel release.
    pub kernel: String,
    /// Wall-clock time at boot, nanoseconds since the Unix epoch (to date kernel timestamps).
    pub boot_epoch_ns: i128,
    /// User, group and cgroup names.
    pub names: std::sync::Arc<std::sync::Mutex<crate::names::Names>>,
}

impl HostInfo {
    /// Reads the host facts.
    pub fn current() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let boot = clock_gettime(ClockId::CLOCK_BOOTTIME)
            .map(|t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
            .unwrap_or(0);
        HostInfo {
            name: read("/proc/sys/kernel/hostname"),
            kernel: read("/proc/sys/kernel/osrelease"),
            boot_epoch_ns: now - boot,
            names: Default::default(),
        }
    }

    /// The host's IP addresses (loopback and link-local left out), for the inventory.
    pub fn addresses() -> Vec<String> {
        let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
            return Vec::new();
        };
        let mut out: Vec<String> = addrs
            .filter_map(|a| {
                let sa = a.address?;
                let ip: std::net::IpAddr = if let Some(v4) = sa.as_sockaddr_in() {
                    std::net::IpAddr::V4(v4.ip())
                } else {
                    std::net::IpAddr::V6(sa.as_sockaddr_in6()?.ip())
                };
                let link_local = match ip {
                    std::net::IpAddr::V4(v) => v.is_link_local(),
                    std::net::IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
                };
                (!ip.is_loopback() && !link_local).then(|| ip.to_string())
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// RFC 3339 time of a kernel boot-clock timestamp.
    pub fn time(&self, boot_ns: u64) -> String {
        let ns = self.boot_epoch_ns + i128::from(boot_ns);
        let secs = (ns / 1_000_000_000) as i64;
        let nanos = (ns % 1_000_000_000) as u32;
        chrono_like(secs, nanos)
    }
}

/// Formats seconds + nanoseconds since the epoch as RFC 3339 UTC with microseconds.
fn chrono_like(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        nanos / 1000
    )
}

/// A process as ECS shows it, borrowed from the process table.
#[derive(Serialize)]
struct ProcDoc<'a> {
    pid: u32,
    entity_id: &'a str,
    executable: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args_count: Option<usize>,
    command_line: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<Box<ProcDoc<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args_truncated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_directory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<HashDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_signal: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tty: Option<TtyDoc>,
}

impl<'a> ProcDoc<'a> {
    fn of(p: &'a ProcInfo) -> Self {
        ProcDoc {
            pid: p.pid,
            entity_id: &p.entity_id,
            executable: &p.executable,
            name: &p.name,
            args: Some(&p.args),
            args_count: Some(p.args.len()),
            command_line: p.command_line(),
            parent: None,
            args_truncated: None,
            working_directory: None,
            hash: None,
            exit_code: None,
            exit_signal: None,
            tty: None,
        }
    }

    /// A parent or grandparent: its command line but not the argument array again (the
    /// bytes of every event are what the agent pays for).
    fn ancestor(p: &'a ProcInfo) -> Self {
        ProcDoc {
            args: None,
            args_count: None,
            ..ProcDoc::of(p)
        }
    }
}

#[derive(Serialize)]
struct HashDoc {
    sha256: String,
}

#[derive(Serialize)]
struct EventDoc {
    kind: &'static str,
    category: [&'static str; 1],
    #[serde(rename = "type")]
    kind_type: [&'static str; 1],
    action: &'static str,
    module: &'static str,
    dataset: &'static str,
}

#[derive(Serialize)]
struct OsDoc<'a> {
    #[serde(rename = "type")]
    os_type: &'static str,
    kernel: &'a str,
}

#[derive(Serialize)]
struct HostDoc<'a> {
    name: &'a str,
    os: OsDoc<'a>,
}

#[derive(Serialize)]
struct IdDoc {
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective: Option<Box<IdDoc>>,
}

impl HostInfo {
    fn id_doc(&self, id: u32, name: fn(&mut crate::names::Names, u32) -> Option<String>) -> IdDoc {
        IdDoc {
            id: id.to_string(),
            name: self.names.lock().ok().and_then(|mut n| name(&mut n, id)),
            effective: None,
        }
    }

    fn user_doc(&self, uid: u32) -> IdDoc {
        self.id_doc(uid, crate::names::Names::user)
    }

    fn group_doc(&self, gid: u32) -> IdDoc {
        self.id_doc(gid, crate::names::Names::group)
    }
}

#[derive(Serialize)]
struct Doc<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    event: EventDoc,
    host: HostDoc<'a>,
    process: ProcDoc<'a>,
    user: IdDoc,
    group: IdDoc,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<ContainerDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mamori: Option<CgroupDoc>,
}

#[derive(Serialize)]
struct ContainerDoc {
    id: String,
}

#[derive(Serialize)]
struct CgroupDoc {
    cgroup: String,
}

#[derive(Serialize)]
struct TtyDoc {
    name: String,
}

fn host_doc(host: &HostInfo) -> HostDoc<'_> {
    HostDoc {
        name: &host.name,
        os: OsDoc {
            os_type: "linux",
            kernel: &host.kernel,
        },
    }
}

/// Applies the event to the table and renders it as an ECS document (one line of JSON),
/// serialised straight from borrowed data: no intermediate JSON tree.
pub fn render(
    e: &RawEvent,
    table: &mut ProcessTable,
    host: &HostInfo,
    hasher: &mut crate::hash::Hasher,
) -> String {
    let me = table.apply(e);
    let (action, kind_type) = match e.kind {
        Kind::Exec => ("exec", "start"),
        Kind::Fork => ("fork", "info"),
        Kind::Exit => ("exit", "end"),
    };
    let unknown_parent;
    let mut process = ProcDoc::of(&me);
    process.parent = Some(Box::new(match table.get(e.ppid) {
        Some(parent) => {
            let mut pd = ProcDoc::ancestor(parent);
            pd.parent = table
                .get(parent.ppid)
                .map(|gp| Box::new(ProcDoc::ancestor(gp)));
            pd
        }
        None => {
            unknown_parent = ProcInfo {
                pid: e.ppid,
                entity_id: table.entity_id(e.ppid, e.parent_start_ns),
                ..ProcInfo::default()
            };
            ProcDoc::ancestor(&unknown_parent)
        }
    }));
    if e.kind == Kind::Exec {
        process.args_truncated = Some(e.args_truncated);
        process.tty = (!e.tty.is_empty()).then(|| TtyDoc {
            name: e.tty.clone(),
        });
        process.working_directory = (!me.cwd.is_empty()).then(|| me.cwd.clone());
        // The file as the new process sees it (its root), hashed once per version.
        let path = format!("/proc/{}/root{}", e.pid, e.filename);
        let exec = crate::hash::Exec {
            pid: e.pid,
            entity_id: &me.entity_id,
            executable: &e.filename,
        };
        process.hash = hasher
            .sha256_of(e.file_key, &path, exec)
            .or_else(|| hasher.sha256(&e.filename))
            .map(|sha256| HashDoc { sha256 });
    }
    if e.kind == Kind::Exit {
        // `wait` status: exit code in the high byte, terminating signal in the low 7 bits.
        let signal = e.exit_code & 0x7f;
        process.exit_code = Some(if signal != 0 {
            128 + signal
        } else {
            (e.exit_code >> 8) & 0xff
        });
        process.exit_signal = (signal != 0).then_some(signal);
    }
    let cgroup = if e.kind == Kind::Exec {
        host.names
            .lock()
            .ok()
            .and_then(|mut n| n.cgroup(e.cgroup_id))
    } else {
        None
    };
    let doc = Doc {
        timestamp: host.time(e.ts_ns),
        event: EventDoc {
            kind: "event",
            category: ["process"],
            kind_type: [kind_type],
            action,
            module: "mamori",
            dataset: "mamori.process",
        },
        host: host_doc(host),
        process,
        user: IdDoc {
            effective: e.effective.map(|(euid, _)| Box::new(host.user_doc(euid))),
            ..host.user_doc(e.uid)
        },
        group: IdDoc {
            effective: e.effective.map(|(_, egid)| Box::new(host.group_doc(egid))),
            ..host.group_doc(e.gid)
        },
        container: cgroup
            .as_deref()
            .and_then(crate::names::container_id)
            .map(|id| ContainerDoc { id: id.to_string() }),
        mamori: cgroup.map(|cgroup| CgroupDoc { cgroup }),
    };
    serde_json::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(chrono_like(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            chrono_like(1_700_000_000, 123_456_789),
            "2023-11-14T22:13:20.123456Z"
        );
        assert_eq!(chrono_like(951_782_400, 0), "2000-02-29T00:00:00.000000Z");
    }
}

#[derive(Serialize)]
struct EndpointDoc {
    ip: String,
    port: u16,
}

#[derive(Serialize)]
struct NetworkDoc {
    transport: &'static str,
    #[serde(rename = "type")]
    net_type: &'static str,
    direction: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'static str>,
}

fn endpoint(a: Option<std::net::SocketAddr>) -> Option<EndpointDoc> {
    a.map(|a| EndpointDoc {
        ip: a.ip().to_string(),
        port: a.port(),
    })
}

fn net_type(a: Option<std::net::SocketAddr>) -> &'static str {
    if a.is_some_and(|a| a.is_ipv6()) {
        "ipv6"
    } else {
        "ipv4"
    }
}

#[derive(Serialize)]
struct NetDoc<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    event: EventDoc,
    host: HostDoc<'a>,
    process: ProcDoc<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<EndpointDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<EndpointDoc>,
    network: NetworkDoc,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns: Option<DnsDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorDoc>,
    user: IdDoc,
    group: IdDoc,
}

/// The acting process as ECS shows it, with its parent.
fn with_parent<'a>(me: &'a ProcInfo, table: &'a ProcessTable) -> ProcDoc<'a> {
    let mut process = ProcDoc::of(me);
    process.parent = table.get(me.ppid).map(|p| Box::new(ProcDoc::ancestor(p)));
    process
}

/// The process behind a network, file or privilege event: from the table, or as little as
/// the kernel said (pid and task name) for a process the table does not know.
fn acting_process(table: &ProcessTable, pid: u32, comm: &str) -> ProcInfo {
    table.get(pid).cloned().unwrap_or_else(|| ProcInfo {
        pid,
        name: comm.to_string(),
        ..ProcInfo::default()
    })
}

/// Renders a network event, attributed to its process through the table. Outbound
/// connections have the remote end as `destination`; accepted connections have the remote
/// end as `source` and the local one as `destination`; listens and binds have the local
/// address as `source`.
pub fn render_net(e: &NetEvent, table: &ProcessTable, host: &HostInfo) -> String {
    let me = acting_process(table, e.pid, &e.comm);
    let process = with_parent(&me, table);
    let (source, destination) = match e.action {
        NetAction::Connect => (e.local, e.remote),
        NetAction::Accept => (e.remote, e.local),
        NetAction::Listen | NetAction::Bind => (e.local, None),
    };
    let doc = NetDoc {
        timestamp: host.time(e.ts_ns),
        event: EventDoc {
            kind: "event",
            category: ["network"],
            kind_type: [match e.action {
                NetAction::Connect | NetAction::Accept => "start",
                NetAction::Listen | NetAction::Bind => "info",
            }],
            action: e.action.as_str(),
            module: "mamori",
            dataset: "mamori.network",
        },
        host: host_doc(host),
        process,
        source: endpoint(source),
        destination: endpoint(destination),
        network: NetworkDoc {
            transport: match e.protocol {
                6 => "tcp",
                17 => "udp",
                _ => "other",
            },
            net_type: net_type(e.local.or(e.remote)),
            direction: if e.action == NetAction::Connect {
                "egress"
            } else {
                "ingress"
            },
            protocol: None,
        },
        dns: None,
        error: None,
        user: host.user_doc(e.uid),
        group: host.group_doc(e.gid),
    };
    serde_json::to_string(&doc).unwrap_or_default()
}

#[derive(Serialize)]
struct QuestionDoc {
    name: String,
    #[serde(rename = "type")]
    qtype: String,
    class: String,
}

#[derive(Serialize)]
struct AnswerDoc {
    name: String,
    #[serde(rename = "type")]
    rtype: String,
    class: String,
    ttl: u32,
    data: String,
}

#[derive(Serialize)]
struct DnsDoc {
    #[serde(rename = "type")]
    dns_type: &'static str,
    id: u16,
    op_code: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    question: Option<QuestionDoc>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    answers: Vec<AnswerDoc>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    resolved_ip: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

#[derive(Serialize)]
struct ErrorDoc {
    message: String,
}

#[derive(Serialize)]
struct AuthUserDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

#[derive(Serialize)]
struct AuthSourceDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
}

#[derive(Serialize)]
struct AuthEventDoc {
    kind: &'static str,
    category: Vec<&'static str>,
    #[serde(rename = "type")]
    kind_type: [&'static str; 1],
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    module: &'static str,
    dataset: &'static str,
    provider: &'static str,
}

#[derive(Serialize)]
struct AuditDoc<'a> {
    record: &'static str,
    op: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    terminal: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    login_uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a str>,
}

#[derive(Serialize)]
struct MamoriDoc<'a> {
    audit: AuditDoc<'a>,
}

#[derive(Serialize)]
struct AuthDoc<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    event: AuthEventDoc,
    host: HostDoc<'a>,
    process: ProcDoc<'a>,
    user: AuthUserDoc,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<AuthSourceDoc>,
    mamori: MamoriDoc<'a>,
}

/// Renders a login, authentication or session record. `user.name` is the account being
/// logged into; the reporting program (sshd, su, sudo …) is the process.
pub fn render_auth(e: &crate::audit::AuthEvent, table: &ProcessTable, host: &HostInfo) -> String {
    use crate::audit::AuthKind;
    let mut me = table.get(e.pid).cloned().unwrap_or_else(|| ProcInfo {
        pid: e.pid,
        ..ProcInfo::default()
    });
    if me.executable.is_empty()
        && let Some(exe) = &e.exe
    {
        me.executable = exe.clone();
        me.name = exe.rsplit('/').next().unwrap_or(exe).to_string();
    }
    let process = with_parent(&me, table);
    let (category, kind_type) = match e.kind {
        AuthKind::Authentication => (vec!["authentication"], "start"),
        AuthKind::Login => (vec!["authentication", "session"], "start"),
        AuthKind::Logout => (vec!["session"], "end"),
        AuthKind::SessionStart => (vec!["session"], "start"),
        AuthKind::SessionEnd => (vec!["session"], "end"),
        AuthKind::Error => (vec!["authentication"], "denied"),
        AuthKind::Command => (vec!["process"], "start"),
    };
    let source = (e.addr.is_some() || e.hostname.is_some()).then(|| AuthSourceDoc {
        ip: e.addr.clone(),
        address: e.hostname.clone(),
    });
    let doc = AuthDoc {
        timestamp: chrono_like(
            e.epoch_ms.div_euclid(1000),
            (e.epoch_ms.rem_euclid(1000) * 1_000_000) as u32,
        ),
        event: AuthEventDoc {
            kind: "event",
            category,
            kind_type: [kind_type],
            action: e.kind.action(),
            outcome: e.success.map(|ok| if ok { "success" } else { "failure" }),
            module: "mamori",
            dataset: "mamori.auth",
            provider: if e.op.starts_with("PAM:") {
                "pam"
            } else {
                "audit"
            },
        },
        host: host_doc(host),
        process,
        user: AuthUserDoc {
            name: e.account.clone(),
        },
        source,
        mamori: MamoriDoc {
            audit: AuditDoc {
                record: e.record,
                op: &e.op,
                terminal: e.terminal.as_deref(),
                login_uid: e.auid,
                command: e.command.as_deref(),
            },
        },
    };
    serde_json::to_string(&doc).unwrap_or_default()
}

#[derive(Serialize)]
struct HashedProcDoc<'a> {
    pid: u32,
    entity_id: &'a str,
    executable: &'a str,
    hash: HashDoc,
}

#[derive(Serialize)]
struct HashedDoc<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    event: EventDoc,
    host: HostDoc<'a>,
    process: HashedProcDoc<'a>,
}

/// Renders the hash of a large executable, computed after its exec event went out: the
/// server attaches it to the process by `process.entity_id`.
pub fn render_hashed(h: &crate::hash::Hashed, host: &HostInfo) -> String {
    let now = clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    let doc = HashedDoc {
        timestamp: host.time(now),
        event: EventDoc {
            kind: "event",
            category: ["process"],
            kind_type: ["info"],
            action: "hash",
            module: "mamori",
            dataset: "mamori.process",
        },
        host: host_doc(host),
        process: HashedProcDoc {
            pid: h.pid,
            entity_id: &h.entity_id,
            executable: &h.executable,
            hash: HashDoc {
                sha256: h.sha256.clone(),
            },
        },
    };
    serde_json::to_string(&doc).unwrap_or_default()
}

/// Renders a DNS query or answer. A message that does not parse is still reported, with
/// `error.message` saying why (anything can be sent to port 53).
pub fn render_dns(e: &DnsEvent, table: &ProcessTable, host: &HostInfo) -> String {
    let me = acting_process(table, e.pid, &e.comm);
    let process = with_parent(&me, table);
    let parsed = crate::dns::parse(&e.payload);
    let (dns, error) = match parsed {
        Ok(m) => (
            Some(DnsDoc {
                dns_type: if m.response { "answer" } else { "query" },
                id: m.id,
                op_code: m.opcode,
                response_code: m.response.then(|| crate::dns::rcode_name(m.rcode)),
                question: m.questions.first().map(|q| QuestionDoc {
                    name: q.name.clone(),
                    qtype: crate::dns::type_name(q.qtype),
                    class: crate::dns::class_name(q.qclass),
                }),
                resolved_ip: m
                    .answers
                    .iter()
                    .filter_map(|a| a.ip.map(|ip| ip.to_string()))
                    .collect(),
                answers: m
                    .answers
                    .into_iter()
                    .map(|a| AnswerDoc {
                        name: a.name,
                        rtype: crate::dns::type_name(a.rtype),
                        class: crate::dns::class_name(a.class),
                        ttl: a.ttl,
                        data: a.data,
                    })
                    .collect(),
                truncated: m.truncated,
            }),
            None,
        ),
        Err(err) => (
            None,
            Some(ErrorDoc {
                message: err.to_string(),
            }),
        ),
    };
    let doc = NetDoc {
        timestamp: host.time(e.ts_ns),
        event: EventDoc {
            kind: "event",
            category: ["network"],
            kind_type: ["protocol"],
            action: if e.answer { "dns_answer" } else { "dns_query" },
            module: "mamori",
            dataset: "mamori.dns",
        },
        host: host_doc(host),
        process,
        source: endpoint(e.source),
        destination: endpoint(e.destination),
        network: NetworkDoc {
            transport: "udp",
            net_type: net_type(e.source),
            direction: if e.answer { "ingress" } else { "egress" },
            protocol: Some("dns"),
        },
        dns,
        error,
        user: host.user_doc(e.uid),
        group: host.group_doc(e.gid),
    };
    serde_json::to_string(&doc).unwrap_or_default()
}

#[derive(Serialize)]
struct OriginalDoc {
    path: String,
}

#[derive(Serialize)]
struct FileExtDoc {
    original: OriginalDoc,
}

#[derive(Serialize)]
struct FileDoc {
    path: String,
    name: String,
    directory: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(rename = "Ext", skip_serializing_if = "Option::is_none")]
    ext: Option<FileExtDoc>,
}

#[derive(Serialize)]
struct FileEventDoc<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    event: EventDoc,
    host: HostDoc<'a>,
    process: ProcDoc<'a>,
    file: FileDoc,
    user: IdDoc,
    group: IdDoc,
}

/// Turns a path as a process passed it into an absolute one: relative paths are resolved
/// against the process's working directory (as the table followed it) or the directory
/// descriptor (best effort: the process may be gone).
fn resolve(pid: u32, dirfd: i32, path: &str, known_cwd: &str) -> String {
    if path.starts_with('/') || path.is_empty() {
        return path.to_string();
    }
    // The table follows chdir as it happened; /proc shows the directory as it is now.
    let base = if dirfd == -100 {
        (!known_cwd.is_empty())
            .then(|| std::path::PathBuf::from(known_cwd))
            .or_else(|| std::fs::read_link(format!("/proc/{pid}/cwd")).ok())
    } else {
        std::fs::read_link(format!("/proc/{pid}/fd/{dirfd}")).ok()
    };
    match base {
        Some(b) => b.join(path).display().to_string(),
        None => path.to_string(),
    }
}

/// Renders a file event, attributed to its process through the table; `None` when the
/// path rules drop it. The kernel judged absolute paths already; relative ones (and the
/// fanotify fallback's) are judged here once resolved. A rename is kept if either side is.
pub fn render_file(
    e: &FileEvent,
    table: &ProcessTable,
    host: &HostInfo,
    paths: &crate::bpf::PathRules,
) -> Option<String> {
    let me = acting_process(table, e.pid, &e.comm);
    let process = with_parent(&me, table);
    let (action, kind_type) = match e.op {
        FileOp::Create => ("create", "creation"),
        FileOp::Write => ("write", "change"),
        FileOp::Delete => ("delete", "deletion"),
        FileOp::Rename => ("rename", "change"),
        FileOp::Chmod => ("chmod", "change"),
        FileOp::Chown => ("chown", "change"),
        _ => ("other", "info"),
    };
    let first = resolve(e.pid, e.dirfd, &e.path, &me.cwd);
    let (path, original) = if e.op == FileOp::Rename {
        (resolve(e.pid, e.dirfd2, &e.path2, &me.cwd), Some(first))
    } else {
        (first, None)
    };
    if !paths.keeps(&path) && !original.as_deref().is_some_and(|o| paths.keeps(o)) {
        return None;
    }
    let p = std::path::Path::new(&path);
    let file = FileDoc {
        name: p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        directory: p
            .parent()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        mode: (e.op == FileOp::Chmod).then(|| format!("{:o}", e.flags & 0o7777)),
        ext: original.map(|o| FileExtDoc {
            original: OriginalDoc { path: o },
        }),
        path,
    };
    let doc = FileEventDoc {
        timestamp: host.time(e.ts_ns),
        event: EventDoc {
            kind: "event",
            category: ["file"],
            kind_type: [kind_type],
            action,
            module: "mamori",
            dataset: "mamori.file",
        },
        host: host_doc(host),
        process,
        file,
        user: host.user_doc(e.uid),
        group: host.group_doc(e.gid),
    };
    Some(serde_json::to_string(&doc).unwrap_or_default())
}

#[derive(Serialize)]
struct TargetDoc<'a> {
    process: ProcDoc<'a>,
}

#[derive(Serialize)]
struct SysDoc<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: String,
    event: OutcomeEventDoc,
    host: HostDoc<'a>,
    process: ProcDoc<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<TargetDoc<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<FileDoc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested: Option<RequestedDoc>,
    user: IdDoc,
    group: IdDoc,
}

#[derive(Serialize)]
struct OutcomeEventDoc {
    #[serde(flatten)]
    base: EventDoc,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<i64>,
}

/// Ids a setuid/setgid-family call asked for (absent: left unchanged).
#[derive(Serialize)]
struct RequestedDoc {
    ids: Vec<i64>,
}

/// Renders a privilege change, ptrace attach or module load/unload.
fn render_sys(e: &FileEvent, table: &ProcessTable, host: &HostInfo) -> String {
    let me = acting_process(table, e.pid, &e.comm);
    let process = with_parent(&me, table);
    let (category, kind_type, action) = match e.op {
        FileOp::SetUid => ("process", "change", "setuid"),
        FileOp::SetGid => ("process", "change", "setgid"),
        FileOp::Capset => ("process", "change", "capset"),
        FileOp::Ptrace => ("process", "access", "ptrace-attach"),
        FileOp::ModuleLoad => ("driver", "start", "module-load"),
        FileOp::ModuleUnload => ("driver", "end", "module-unload"),
        _ => ("file", "info", "other"),
    };
    let target_fallback;
    let target = if e.op == FileOp::Ptrace {
        let pid = e.dirfd2 as u32;
        Some(TargetDoc {
            process: match table.get(pid) {
                Some(t) => ProcDoc::of(t),
                None => {
                    target_fallback = ProcInfo {
                        pid,
                        ..ProcInfo::default()
                    };
                    ProcDoc::of(&target_fallback)
                }
            },
        })
    } else {
        None
    };
    let file = match e.op {
        FileOp::ModuleLoad if e.dirfd >= 0 => {
            std::fs::read_link(format!("/proc/{}/fd/{}", e.pid, e.dirfd))
                .ok()
                .map(|p| {
                    let path = p.display().to_string();
                    FileDoc {
                        name: p
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        directory: p
                            .parent()
                            .map(|d| d.display().to_string())
                            .unwrap_or_default(),
                        mode: None,
                        ext: None,
                        path,
                    }
                })
        }
        FileOp::ModuleUnload => Some(FileDoc {
            path: String::new(),
            name: e.path.clone(),
            directory: String::new(),
            mode: None,
            ext: None,
        }),
        _ => None,
    };
    let requested = matches!(e.op, FileOp::SetUid | FileOp::SetGid).then(|| RequestedDoc {
        ids: [e.dirfd as i64, e.dirfd2 as i64, e.flags as i32 as i64]
            .into_iter()
            .filter(|&i| i >= 0)
            .collect(),
    });
    let doc = SysDoc {
        timestamp: host.time(e.ts_ns),
        event: OutcomeEventDoc {
            base: EventDoc {
                kind: "event",
                category: [category],
                kind_type: [kind_type],
                action,
                module: "mamori",
                dataset: "mamori.privilege",
            },
            outcome: if e.ret < 0 { "failure" } else { "success" },
            error_code: (e.ret < 0).then_some(-e.ret),
        },
        host: host_doc(host),
        process,
        target,
        file,
        requested,
        user: host.user_doc(e.uid),
        group: host.group_doc(e.gid),
    };
    serde_json::to_string(&doc).unwrap_or_default()
}

/// Renders any sensor event (updating the process table for process events); `None` for
/// what is not reported (chdir, file events the path rules drop).
pub fn render_any(
    e: &SensorEvent,
    table: &mut ProcessTable,
    host: &HostInfo,
    hasher: &mut crate::hash::Hasher,
    paths: &crate::bpf::PathRules,
) -> Option<String> {
    Some(match e {
        SensorEvent::Process(p) => render(p, table, host, hasher),
        SensorEvent::Net(n) => render_net(n, table, host),
        SensorEvent::Dns(d) => render_dns(d, table, host),
        SensorEvent::Auth(a) => render_auth(a, table, host),
        SensorEvent::Hashed(h) => {
            hasher.remember(h);
            render_hashed(h, host)
        }
        SensorEvent::File(f) if f.op == FileOp::Chdir => {
            let cwd = table.get(f.pid).map(|p| p.cwd.clone()).unwrap_or_default();
            let dir = if f.path.is_empty() {
                std::fs::read_link(format!("/proc/{}/fd/{}", f.pid, f.dirfd))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            } else {
                resolve(f.pid, -100, &f.path, &cwd)
            };
            table.set_cwd(f.pid, dir);
            return None;
        }
        SensorEvent::File(f) if f.op.is_file() => return render_file(f, table, host, paths),
        SensorEvent::File(f) => render_sys(f, table, host),
    })
}
