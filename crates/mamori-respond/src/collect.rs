//! Evidence collection: a file, a process's details, or a triage bundle of the host's state.
//! Everything is read from the file system and `/proc`; nothing is executed.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::RespondError;
use crate::quarantine::hex;

pub use mamori_wire::command::MAX_COLLECT_BYTES as MAX_FILE_BYTES;
/// Largest text kept from one persistence file in a triage bundle.
const TEXT_BYTES: usize = 64 << 10;

/// Fetches a file: content (base64), size, SHA-256, owner, mode, times.
pub fn file(path: &str, max_bytes: u64) -> Result<Value, RespondError> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(RespondError::Refused(format!(
            "{path:?} is not an absolute path"
        )));
    }
    let limit = max_bytes.min(MAX_FILE_BYTES);
    let meta = std::fs::metadata(p).map_err(|e| RespondError::NotFound(format!("{path}: {e}")))?;
    if !meta.is_file() {
        return Err(RespondError::Refused(format!(
            "{path} is not a regular file"
        )));
    }
    if meta.len() > limit {
        return Err(RespondError::Refused(format!(
            "{path} is {} bytes, over the limit of {limit}",
            meta.len()
        )));
    }
    let body = std::fs::read(p).map_err(|e| RespondError::Failed(format!("{path}: {e}")))?;
    if body.len() as u64 > limit {
        return Err(RespondError::Refused(format!(
            "{path} grew over the limit of {limit} bytes"
        )));
    }
    Ok(json!({
        "path": path,
        "size": body.len(),
        "sha256": hex(&Sha256::digest(&body)),
        "uid": meta.uid(), "gid": meta.gid(), "mode": format!("{:o}", meta.mode() & 0o7777),
        "mtime": meta.mtime(), "ctime": meta.ctime(),
        "content_base64": base64::engine::general_purpose::STANDARD.encode(&body),
    }))
}

/// Environment variable names whose values are withheld.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "PASS",
        "SECRET",
        "TOKEN",
        "KEY",
        "CREDENTIAL",
        "AUTH",
        "COOKIE",
        "SESSION",
    ]
    .iter()
    .any(|s| n.contains(s))
}

fn nul_list(b: &[u8]) -> Vec<String> {
    b.split(|&c| c == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Socket inode → (protocol, local, remote, state) from `/proc/<pid>/net/*` (the process's
/// own network namespace).
fn sockets(pid: &str) -> HashMap<u64, Value> {
    let mut m = HashMap::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{proto}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            if let Ok(inode) = f[9].parse::<u64>() {
                m.insert(
                    inode,
                    json!({"protocol": proto, "local": addr(f[1]), "remote": addr(f[2]),
                        "state": tcp_state(proto, f[3]), "uid": f[7].parse::<u32>().ok()}),
                );
            }
        }
    }
    m
}

/// `0100007F:1F90` → `127.0.0.1:8080` (and the IPv6 form).
fn addr(hexaddr: &str) -> String {
    let Some((ip, port)) = hexaddr.split_once(':') else {
        return hexaddr.to_string();
    };
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    let bytes: Vec<u8> = (0..ip.len() / 2)
        .filter_map(|i| u8::from_str_radix(&ip[2 * i..2 * i + 2], 16).ok())
        .collect();
    match bytes.len() {
        4 => format!("{}.{}.{}.{}:{port}", bytes[3], bytes[2], bytes[1], bytes[0]),
        16 => {
            // Four little-endian 32-bit words.
            let mut o = [0u8; 16];
            for w in 0..4 {
                for b in 0..4 {
                    o[w * 4 + b] = bytes[w * 4 + 3 - b];
                }
            }
            format!("[{}]:{port}", std::net::Ipv6Addr::from(o))
        }
        _ => hexaddr.to_string(),
    }
}

fn tcp_state(proto: &str, st: &str) -> &'static str {
    if proto.starts_with("udp") {
        return "";
    }
    match st {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => "LISTEN",
        "0B" => "CLOSING",
        _ => "UNKNOWN",
    }
}

fn link(p: String) -> String {
    std::fs::read_link(p)
        .map(|l| l.display().to_string())
        .unwrap_or_default()
}

/// Socket inodes a process holds.
fn socket_inodes(pid: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            let target = link(e.path().display().to_string());
            if let Some(i) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                && let Ok(i) = i.parse()
            {
                out.push((e.file_name().to_string_lossy().into_owned(), i));
            }
        }
    }
    out
}

/// A process's details: status, command line, executable, working directory, memory maps,
/// open files, sockets and environment (values of secret-looking names withheld).
pub fn process(pid: u32) -> Result<Value, RespondError> {
    let p = pid.to_string();
    let status = std::fs::read_to_string(format!("/proc/{p}/status"))
        .map_err(|_| RespondError::NotFound(format!("no process {pid}")))?;
    let status: serde_json::Map<String, Value> = status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), Value::String(v.trim().to_string())))
        .collect();
    let maps: Vec<String> = std::fs::read_to_string(format!("/proc/{p}/maps"))
        .unwrap_or_default()
        .lines()
        .take(4000)
        .map(String::from)
        .collect();
    let mut files = Vec::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/fd")) {
        for e in rd.flatten() {
            files.push(json!({"fd": e.file_name().to_string_lossy(),
                "target": link(e.path().display().to_string())}));
        }
    }
    let table = sockets(&p);
    let socks: Vec<Value> = socket_inodes(&p)
        .into_iter()
        .filter_map(|(fd, inode)| {
            table.get(&inode).map(|s| {
                let mut s = s.clone();
                s["fd"] = json!(fd);
                s
            })
        })
        .collect();
    let environment: Vec<String> = std::fs::read(format!("/proc/{p}/environ"))
        .map(|b| nul_list(&b))
        .unwrap_or_default()
        .into_iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if secret_name(k) => format!("{k}=<withheld>"),
            _ => kv,
        })
        .collect();
    Ok(json!({
        "pid": pid,
        "status": status,
        "command_line": std::fs::read(format!("/proc/{p}/cmdline")).map(|b| nul_list(&b)).unwrap_or_default(),
        "executable": link(format!("/proc/{p}/exe")),
        "cwd": link(format!("/proc/{p}/cwd")),
        "start_ticks": crate::kill::start_ticks(pid),
        "maps": maps,
        "open_files": files,
        "sockets": socks,
        "environment": environment,
    }))
}

/// A file's facts and (for small text) content, for the persistence part of a triage.
fn file_facts(path: &Path) -> Option<Value> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    let body = std::fs::read(path).ok()?;
    let text = std::str::from_utf8(&body[..body.len().min(TEXT_BYTES)]).ok();
    Some(json!({
        "path": path.display().to_string(), "size": meta.len(),
        "sha256": hex(&Sha256::digest(&body)), "uid": meta.uid(),
        "mode": format!("{:o}", meta.mode() & 0o7777), "mtime": meta.mtime(),
        "content": text,
    }))
}

fn files_in(dir: &str, depth: usize, out: &mut Vec<Value>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() && depth > 0 {
            files_in(&p.display().to_string(), depth - 1, out);
        } else if let Some(f) = file_facts(&p) {
            out.push(f);
        }
        if out.len() > 2000 {
            return;
        }
    }
}

/// Home directories from `/etc/passwd` (and root's).
fn users() -> Vec<(String, u32, String, String)> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 7).then(|| {
                (
                    f[0].to_string(),
                    f[2].parse().unwrap_or(u32::MAX),
                    f[5].to_string(),
                    f[6].to_string(),
                )
            })
        })
        .collect()
}

/// Current logins from utmp (`USER_PROCESS` records).
fn logins() -> Vec<Value> {
    const RECORD: usize = 384;
    let Ok(b) = std::fs::read("/var/run/utmp") else {
        return Vec::new();
    };
    let text = |s: &[u8]| {
        String::from_utf8_lossy(s.split(|&c| c == 0).next().unwrap_or_default()).into_owned()
    };
    b.chunks_exact(RECORD)
        .filter(|r| i32::from_le_bytes([r[0], r[1], r[2], r[3]]) == 7)
        .map(|r| {
            json!({"pid": i32::from_le_bytes([r[4], r[5], r[6], r[7]]), "line": text(&r[8..40]),
                "user": text(&r[44..76]), "host": text(&r[76..332]),
                "time": i32::from_le_bytes([r[340], r[341], r[342], r[343]])})
        })
        .collect()
}

/// The host's state: processes, sockets (with owning process), users, logins, and the usual
/// persistence locations (cron, systemd units, shell profiles, authorized_keys,
/// `ld.so.preload`, kernel modules).
pub fn triage() -> Value {
    let mut procs = Vec::new();
    let mut owner: HashMap<u64, u32> = HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(pid) = name.parse::<u32>() else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(format!("/proc/{name}/status")) else {
                continue;
            };
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                    .unwrap_or_default()
            };
            for (_, inode) in socket_inodes(&name) {
                owner.insert(inode, pid);
            }
            procs.push(json!({
                "pid": pid, "ppid": field("PPid:").parse::<u32>().ok(), "name": field("Name:"),
                "uid": field("Uid:").split_whitespace().next().and_then(|u| u.parse::<u32>().ok()),
                "executable": link(format!("/proc/{name}/exe")),
                "command_line": std::fs::read(format!("/proc/{name}/cmdline")).map(|b| nul_list(&b)).unwrap_or_default(),
                "start_ticks": crate::kill::start_ticks(pid),
            }));
        }
    }
    let mut socks: Vec<Value> = sockets("self")
        .into_iter()
        .map(|(inode, mut s)| {
            s["pid"] = json!(owner.get(&inode));
            s
        })
        .collect();
    socks.sort_by_key(|s| s["local"].as_str().unwrap_or_default().to_string());
    let users = users();
    let mut persistence = Vec::new();
    for f in [
        "/etc/crontab",
        "/etc/ld.so.preload",
        "/etc/profile",
        "/etc/bash.bashrc",
        "/etc/rc.local",
    ] {
        if let Some(v) = file_facts(Path::new(f)) {
            persistence.push(v);
        }
    }
    for d in [
        "/etc/cron.d",
        "/etc/cron.hourly",
        "/etc/cron.daily",
        "/var/spool/cron/crontabs",
        "/etc/profile.d",
    ] {
        files_in(d, 0, &mut persistence);
    }
    for d in ["/etc/systemd/system", "/run/systemd/system"] {
        files_in(d, 2, &mut persistence);
    }
    for (_, _, home, _) in &users {
        if home.is_empty() || home == "/" || home == "/nonexistent" {
            continue;
        }
        for f in [
            ".bashrc",
            ".profile",
            ".bash_profile",
            ".zshrc",
            ".ssh/authorized_keys",
            ".ssh/authorized_keys2",
        ] {
            if let Some(v) = file_facts(&Path::new(home).join(f)) {
                persistence.push(v);
            }
        }
        files_in(&format!("{home}/.config/systemd/user"), 1, &mut persistence);
        files_in(&format!("{home}/.config/autostart"), 0, &mut persistence);
    }
    let modules: Vec<Value> = std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            json!({"name": f.first(), "size": f.get(1).and_then(|s| s.parse::<u64>().ok()),
                "state": f.get(4), "taint": f.get(6)})
        })
        .collect();
    json!({
        "collected_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "hostname": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim(),
        "processes": procs,
        "sockets": socks,
        "users": users.iter().map(|(n, uid, home, shell)| json!({"name": n, "uid": uid, "home": home, "shell": shell})).collect::<Vec<_>>(),
        "logins": logins(),
        "persistence": persistence,
        "kernel_modules": modules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_decode() {
        assert_eq!(addr("0100007F:1F90"), "127.0.0.1:8080");
        assert_eq!(addr("00000000000000000000000001000000:0016"), "[::1]:22");
        assert_eq!(tcp_state("tcp", "0A"), "LISTEN");
        assert!(secret_name("AWS_SECRET_ACCESS_KEY") && !secret_name("PATH"));
    }
}
