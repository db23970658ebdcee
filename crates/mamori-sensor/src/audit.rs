//! Logins and sessions from the kernel audit stream.
//!
//! PAM (used by sshd, login, su, sudo, cron …) reports every authentication and session to
//! the kernel's audit subsystem; so does sshd itself on audit-enabled builds. The sensor
//! listens on the audit *read-log* multicast group, which works next to auditd without
//! disturbing it. The kernel drops user messages while audit is disabled: in that case the
//! sensor enables it (only the flag, plus a `task,never` rule so that processes do not pay
//! for syscall auditing) and restores both when it stops.
//!
//! Messages are text (`pid=… uid=… msg='op=PAM:authentication acct="root" exe="/usr/bin/su"
//! … res=failed'`), parsed leniently: unknown keys are ignored, hex-encoded values (how audit
//! writes strings with spaces or quotes) are decoded, a malformed message yields nothing
//! rather than an error.

use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{MsgFlags, NetlinkAddr, bind, recv, send};
use socket2::{Domain, Protocol, Socket, Type};

use crate::SensorError;

const NETLINK_AUDIT: i32 = 9;
const AUDIT_NLGRP_READLOG: u32 = 1;
const AUDIT_GET: u16 = 1000;
const AUDIT_SET: u16 = 1001;
const AUDIT_ADD_RULE: u16 = 1011;
const AUDIT_DEL_RULE: u16 = 1012;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;

/// What an authentication record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// A user was authenticated, or failed to be (PAM `pam_authenticate`, `USER_AUTH`).
    Authentication,
    /// A login (sshd, login: `USER_LOGIN`).
    Login,
    /// A logout (`USER_LOGOUT`).
    Logout,
    /// A session was opened (`USER_START`).
    SessionStart,
    /// A session was closed (`USER_END`).
    SessionEnd,
    /// An account could not log in for another reason (`USER_ERR`: locked, expired …).
    Error,
    /// A command run through sudo (`USER_CMD`).
    Command,
}

impl AuthKind {
    fn of(msg_type: u16) -> Option<AuthKind> {
        Some(match msg_type {
            1100 => AuthKind::Authentication,
            1105 => AuthKind::SessionStart,
            1106 => AuthKind::SessionEnd,
            1109 => AuthKind::Error,
            1112 => AuthKind::Login,
            1113 => AuthKind::Logout,
            1123 => AuthKind::Command,
            _ => return None,
        })
    }

    /// The ECS `event.action`.
    pub fn action(self) -> &'static str {
        match self {
            AuthKind::Authentication => "authentication",
            AuthKind::Login => "logged-in",
            AuthKind::Logout => "logged-out",
            AuthKind::SessionStart => "session-opened",
            AuthKind::SessionEnd => "session-closed",
            AuthKind::Error => "login-refused",
            AuthKind::Command => "sudo-command",
        }
    }
}

/// One authentication or session record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthEvent {
    /// What happened.
    pub kind: AuthKind,
    /// Audit record type name (`USER_AUTH`, …).
    pub record: &'static str,
    /// Event time: seconds and milliseconds since the epoch (the audit timestamp).
    pub epoch_ms: i64,
    /// The process that reported it (sshd, su, sudo, login …).
    pub pid: u32,
    /// Its user id.
    pub uid: u32,
    /// The login user id of the session it runs in (`None`: unset).
    pub auid: Option<u32>,
    /// PAM operation (`PAM:authentication`, `PAM:session_open` …) or sshd's `login`.
    pub op: String,
    /// The account being authenticated or opened.
    pub account: Option<String>,
    /// The reporting program.
    pub exe: Option<String>,
    /// Remote host name and address (sshd).
    pub hostname: Option<String>,
    /// Remote address.
    pub addr: Option<String>,
    /// Terminal (`ssh`, `pts/0`, `/dev/tty1` …).
    pub terminal: Option<String>,
    /// The command (sudo).
    pub command: Option<String>,
    /// `Some(true)` on success, `Some(false)` on failure.
    pub success: Option<bool>,
}

fn record_name(t: u16) -> &'static str {
    match t {
        1100 => "USER_AUTH",
        1105 => "USER_START",
        1106 => "USER_END",
        1109 => "USER_ERR",
        1112 => "USER_LOGIN",
        1113 => "USER_LOGOUT",
        1123 => "USER_CMD",
        _ => "OTHER",
    }
}

/// Splits `k=v k2="v 2" k3='…'` into pairs (values unquoted; `msg='…'` is flattened into
/// the same list, since that is where PAM's fields live).
fn pairs(text: &str) -> Vec<(&str, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].rsplit(' ').next().unwrap_or("").trim();
        let after = &rest[eq + 1..];
        let (value, next) = match after.chars().next() {
            Some(q @ ('"' | '\'')) => match after[1..].find(q) {
                Some(end) => (&after[1..1 + end], &after[end + 2..]),
                None => (&after[1..], ""),
            },
            _ => {
                let end = after.find(' ').unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        if key == "msg" && after.starts_with('\'') {
            out.extend(pairs(value));
        } else if !key.is_empty() {
            let quoted = after.starts_with('"');
            out.push((key, decode_value(key, value, quoted)));
        }
        rest = next;
    }
    out
}

/// Fields that carry untrusted strings, which audit writes quoted when clean and as bare
/// hex otherwise. Other fields (pid=9097) are never hex, however they look.
const STRING_FIELDS: [&str; 7] = ["acct", "exe", "hostname", "terminal", "cmd", "cwd", "comm"];

fn decode_value(key: &str, v: &str, quoted: bool) -> String {
    if !quoted
        && STRING_FIELDS.contains(&key)
        && v.len() >= 2
        && v.len().is_multiple_of(2)
        && v.bytes().all(|c| c.is_ascii_hexdigit())
    {
        let bytes: Option<Vec<u8>> = (0..v.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&v[i..i + 2], 16).ok())
            .collect();
        if let Some(b) = bytes
            && b.iter().all(|&c| c >= 0x20 || c == b'\t')
        {
            return String::from_utf8_lossy(&b).into_owned();
        }
    }
    v.to_string()
}

/// Parses the text of one audit user record of type `msg_type`; `None` for types that are
/// not authentication or session records, or text without the audit header.
pub fn parse(msg_type: u16, text: &str) -> Option<AuthEvent> {
    let kind = AuthKind::of(msg_type)?;
    // "audit(1795690685.963:2): …"
    let head = text.strip_prefix("audit(")?;
    let close = head.find("):")?;
    let stamp = &head[..close];
    let secs_ms = stamp.split(':').next()?;
    let (secs, ms) = secs_ms.split_once('.').unwrap_or((secs_ms, "0"));
    let ms = ms.get(..3).unwrap_or(ms).parse::<i64>().unwrap_or(0);
    let epoch_ms = secs
        .parse::<i64>()
        .ok()?
        .checked_mul(1000)?
        .checked_add(ms)?;
    let fields = pairs(&head[close + 2..]);
    let get = |k: &str| {
        fields
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
            .filter(|v| v != "?" && !v.is_empty())
    };
    let num = |k: &str| get(k).and_then(|v| v.parse::<u32>().ok());
    let account = get("acct").or_else(|| get("id")).or_else(|| get("user"));
    Some(AuthEvent {
        kind,
        record: record_name(msg_type),
        epoch_ms,
        pid: num("pid").unwrap_or(0),
        uid: num("uid").unwrap_or(0),
        auid: num("auid").filter(|&a| a != u32::MAX),
        op: get("op").unwrap_or_default(),
        account,
        exe: get("exe"),
        hostname: get("hostname"),
        addr: get("addr"),
        terminal: get("terminal"),
        command: get("cmd"),
        success: get("res").map(|r| r == "success" || r == "1"),
    })
}

/// Whether audit was enabled before the sensor started, and what it changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditState {
    /// Audit was already enabled (auditd or the distribution did it).
    pub was_enabled: bool,
    /// The sensor enabled it (and will restore it).
    pub enabled_by_us: bool,
}

/// The audit listener: a multicast socket for reading, a control socket for the flag.
pub struct AuditListener {
    read: Socket,
    control: Socket,
    state: AuditState,
    rule_added: bool,
    /// Messages lost because the socket buffer overflowed.
    pub overruns: u64,
}

fn nl_message(msg_type: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&msg_type.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    m
}

/// `struct audit_status` with only `mask` and `enabled` set.
fn status_payload(enabled: bool) -> Vec<u8> {
    let mut p = vec![0u8; 44];
    p[0..4].copy_from_slice(&1u32.to_ne_bytes()); // AUDIT_STATUS_ENABLED
    p[4..8].copy_from_slice(&u32::from(enabled).to_ne_bytes());
    p
}

/// `struct audit_rule_data` for `-a task,never`: no process gets a syscall audit context.
fn task_never_rule() -> Vec<u8> {
    // flags, action, field_count, mask[64], fields[64], values[64], fieldflags[64], buflen
    let mut p = vec![0u8; 4 * (3 + 64 * 4 + 1)];
    p[0..4].copy_from_slice(&1u32.to_ne_bytes()); // AUDIT_FILTER_TASK
    p[4..8].copy_from_slice(&0u32.to_ne_bytes()); // AUDIT_NEVER
    for i in 0..64 {
        let at = 12 + i * 4;
        p[at..at + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
    }
    p
}

/// A control request the kernel refused.
#[derive(Debug)]
enum RequestError {
    Io(u16, nix::errno::Errno),
    Errno(nix::errno::Errno),
}

impl From<RequestError> for SensorError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::Io(t, e) => err(&format!("request {t}"), &e),
            RequestError::Errno(e) => err("the kernel refused the request", &e),
        }
    }
}

fn err(what: &str, e: &dyn std::fmt::Display) -> SensorError {
    SensorError::Unsupported(format!("audit: {what}: {e}"))
}

impl AuditListener {
    /// Subscribes to the audit log; with `enable`, turns audit on if it is off.
    pub fn open(enable: bool) -> Result<AuditListener, SensorError> {
        let new_socket = || {
            Socket::new(
                Domain::from(16),
                Type::RAW,
                Some(Protocol::from(NETLINK_AUDIT)),
            )
        };
        let read = new_socket().map_err(|e| err("socket", &e))?;
        read.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| err("timeout", &e))?;
        // Large buffer: bursts of logins (cron, CI) must not overflow it.
        let _ = read.set_recv_buffer_size(4 << 20);
        bind(read.as_raw_fd(), &NetlinkAddr::new(0, AUDIT_NLGRP_READLOG))
            .map_err(|e| err("joining the read-log group (needs CAP_AUDIT_READ)", &e))?;
        let control = new_socket().map_err(|e| err("socket", &e))?;
        control
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| err("timeout", &e))?;
        bind(control.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| err("bind", &e))?;
        let mut me = AuditListener {
            read,
            control,
            state: AuditState {
                was_enabled: false,
                enabled_by_us: false,
            },
            rule_added: false,
            overruns: 0,
        };
        me.state.was_enabled = me.enabled()?;
        if !me.state.was_enabled && enable {
            // The rule may be there already (the administrator's, or left by an agent that
            // was killed): keep it then, and leave it in place at exit.
            match me.request(AUDIT_ADD_RULE, &task_never_rule()) {
                Ok(()) => me.rule_added = true,
                Err(RequestError::Errno(nix::errno::Errno::EEXIST)) => {}
                Err(e) => return Err(e.into()),
            }
            me.request(AUDIT_SET, &status_payload(true))?;
            me.state.enabled_by_us = true;
        }
        Ok(me)
    }

    /// What the sensor found and changed.
    pub fn state(&self) -> AuditState {
        self.state
    }

    fn enabled(&self) -> Result<bool, SensorError> {
        let fd = self.control.as_raw_fd();
        send(
            fd,
            &nl_message(AUDIT_GET, NLM_F_REQUEST, 1, &[]),
            MsgFlags::empty(),
        )
        .map_err(|e| err("status request", &e))?;
        let mut buf = vec![0u8; 8192];
        for _ in 0..4 {
            let n = recv(fd, &mut buf, MsgFlags::empty()).map_err(|e| err("status", &e))?;
            let t = u16::from_ne_bytes([buf[4], buf[5]]);
            if t == AUDIT_GET && n >= 24 {
                return Ok(u32::from_ne_bytes([buf[20], buf[21], buf[22], buf[23]]) != 0);
            }
        }
        Err(err("status", &"no status reply"))
    }

    /// Sends a request and waits for its acknowledgement.
    fn request(&self, msg_type: u16, payload: &[u8]) -> Result<(), RequestError> {
        let fd = self.control.as_raw_fd();
        send(
            fd,
            &nl_message(msg_type, NLM_F_REQUEST | NLM_F_ACK, 2, payload),
            MsgFlags::empty(),
        )
        .map_err(|e| RequestError::Io(msg_type, e))?;
        let mut buf = vec![0u8; 8192];
        let n = recv(fd, &mut buf, MsgFlags::empty()).map_err(|e| RequestError::Io(msg_type, e))?;
        if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            if code != 0 {
                return Err(RequestError::Errno(nix::errno::Errno::from_raw(-code)));
            }
        }
        Ok(())
    }

    /// Waits up to 200 ms for the next record; `None` on timeout or for records that are not
    /// logins or sessions.
    pub fn next(&mut self, buf: &mut [u8]) -> Result<Option<AuthEvent>, SensorError> {
        match recv(self.read.as_raw_fd(), buf, MsgFlags::empty()) {
            Ok(n) if n >= 16 => {
                let len = (u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize).min(n);
                let t = u16::from_ne_bytes([buf[4], buf[5]]);
                let text = String::from_utf8_lossy(&buf[16..len.max(16)]);
                Ok(parse(t, text.trim_end_matches('\0')))
            }
            Ok(_) => Ok(None),
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => Ok(None),
            Err(nix::errno::Errno::ENOBUFS) => {
                self.overruns += 1;
                Ok(None)
            }
            Err(e) => Err(err("recv", &e)),
        }
    }
}

impl Drop for AuditListener {
    fn drop(&mut self) {
        if self.state.enabled_by_us {
            let _ = self.request(AUDIT_SET, &status_payload(false));
        }
        if self.rule_added {
            let _ = self.request(AUDIT_DEL_RULE, &task_never_rule());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pam_records() {
        let t = "audit(1795690685.963:8): pid=10698 uid=65534 auid=4294967295 ses=4294967295 \
                 msg='op=PAM:authentication grantors=? acct=\"root\" exe=\"/usr/bin/su\" \
                 hostname=? addr=? terminal=pts/1 res=failed'";
        let e = parse(1100, t).unwrap();
        assert_eq!(e.kind, AuthKind::Authentication);
        assert_eq!(e.epoch_ms, 1_795_690_685_963);
        assert_eq!((e.pid, e.uid, e.auid), (10698, 65534, None));
        assert_eq!(e.op, "PAM:authentication");
        assert_eq!(e.account.as_deref(), Some("root"));
        assert_eq!(e.exe.as_deref(), Some("/usr/bin/su"));
        assert_eq!(e.terminal.as_deref(), Some("pts/1"));
        assert_eq!(e.addr, None);
        assert_eq!(e.success, Some(false));
        // A pid that looks like hex stays a pid.
        let t = "audit(1.370:5863): pid=9097 uid=0 msg='op=PAM:authentication acct=\"nobody\" res=success'";
        assert_eq!(parse(1100, t).unwrap().pid, 9097);
        // sshd's login record, with a hex-encoded account (it contains a space).
        let t = "audit(1.5:9): pid=1 uid=0 auid=1000 ses=3 msg='op=login acct=6576696C2075736572 \
                 exe=\"/usr/sbin/sshd\" hostname=10.0.0.9 addr=10.0.0.9 terminal=ssh res=success'";
        let e = parse(1112, t).unwrap();
        assert_eq!(e.kind, AuthKind::Login);
        assert_eq!(e.account.as_deref(), Some("evil user"));
        assert_eq!(e.addr.as_deref(), Some("10.0.0.9"));
        assert_eq!(e.auid, Some(1000));
        assert_eq!(e.success, Some(true));
    }

    #[test]
    fn ignores_other_and_malformed_records() {
        assert_eq!(parse(1300, "audit(1.0:1): syscall=59"), None);
        assert_eq!(parse(1100, "no header"), None);
        assert_eq!(parse(1100, "audit(x:1): pid=1"), None);
        // Found by fuzzing: a timestamp that overflows milliseconds.
        assert_eq!(parse(1100, "audit(99999999999999999.0:1): pid=1"), None);
        // Unterminated quotes and stray '=' do not panic.
        for t in [
            "audit(1.0:1): msg='op=x acct=\"ro",
            "audit(1.0:1): ===",
            "audit(1.0:1): msg='",
            "audit(1.0:1): a=\"",
        ] {
            let _ = parse(1100, t);
        }
    }
}
