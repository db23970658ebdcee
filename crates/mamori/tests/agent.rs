//! `mamori agent` for real: eBPF programs in the running kernel, our own processes as the
//! workload, events asserted field by field. Needs root; without root the tests say SKIPPED
//! (and fail under CI, which runs as root and must not skip them).

mod common;
use common::{can_run, tempdir};

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

struct Agent {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the agent and waits until its programs are attached.
fn start(args: &[&str], data: &PathBuf) -> Agent {
    // Agents of tests running side by side must not fight over the kernel's audit flag:
    // only the login test reads logins.
    let logins = args.contains(&"--with-logins");
    let args: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--with-logins")
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mamori"))
        .arg("agent")
        .args(&args)
        .args(if logins {
            &[][..]
        } else {
            &["--without", "login"][..]
        })
        .env("MAMORI_DATA_DIR", data)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let log = data.join("agent.err");
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(log).ok();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("agent: {line}");
            if let Some(f) = file.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
            }
            if line.contains("collecting") {
                let _ = ready_tx.send(());
            }
        }
    });
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the agent did not report that it is collecting within 30 s");
    Agent { child, lines }
}

/// Collects events until `done` says the wanted ones arrived (or 15 s pass).
fn collect(agent: &Agent, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(line) = agent.lines.recv_timeout(Duration::from_millis(200)) {
            seen.push(
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")),
            );
            if done(&seen) {
                break;
            }
        }
    }
    seen
}

/// What the agent wrote on standard error so far.
fn agent_stderr(data: &std::path::Path) -> String {
    // The reader thread may still be writing the last lines.
    std::thread::sleep(Duration::from_millis(200));
    std::fs::read_to_string(data.join("agent.err")).unwrap_or_default()
}

fn nonce() -> String {
    format!(
        "mamori-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

#[test]
fn exec_fork_and_exit_of_our_own_processes() {
    if !can_run(
        "exec_fork_and_exit_of_our_own_processes",
        "to load eBPF programs",
    ) {
        return;
    }
    let data = tempdir("agent", "events");
    let agent = start(&["--stdout"], &data);
    let tag = nonce();
    let me = std::process::id();
    let echo = Command::new("/bin/echo")
        .args([tag.as_str(), "second arg"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(echo.success());
    // Effective ids differ from real ones after setpriv --euid.
    let tag2 = format!("{tag}-euid");
    let echo2 = Command::new("setpriv")
        .args([
            "--euid=65534",
            "--egid=65534",
            "--keep-groups",
            "/bin/echo",
            tag2.as_str(),
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(echo2.success());
    // A process on a terminal: `script` runs it on a new pseudo-terminal.
    let tag3 = format!("{tag}-tty");
    let on_tty = Command::new("script")
        .args(["-qec", &format!("/bin/echo {tag3}"), "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("script (util-linux) runs");
    assert!(on_tty.success());
    let mut sh = Command::new("/bin/sh")
        .args(["-c", "exit 7"])
        .spawn()
        .unwrap();
    let sh_pid = sh.id();
    assert_eq!(sh.wait().unwrap().code(), Some(7));

    let events = collect(&agent, |seen| {
        seen.iter()
            .any(|e| e["process"]["pid"] == sh_pid && e["event"]["action"] == "exit")
            && seen.iter().any(|e| {
                e["process"]["command_line"]
                    .as_str()
                    .is_some_and(|c| c.contains(&tag))
            })
            && seen
                .iter()
                .any(|e| e["process"]["args"][1] == tag2.as_str())
            && seen
                .iter()
                .any(|e| e["process"]["args"][1] == tag3.as_str())
    });
    let exec = events
        .iter()
        .find(|e| e["event"]["action"] == "exec" && e["process"]["args"][1] == tag.as_str())
        .unwrap_or_else(|| panic!("no exec event for {tag} among {} events", events.len()));
    assert_eq!(exec["event"]["category"][0], "process");
    assert_eq!(exec["event"]["type"][0], "start");
    assert!(
        exec["process"]["executable"]
            .as_str()
            .unwrap()
            .ends_with("/echo"),
        "{exec}"
    );
    assert_eq!(exec["process"]["args"][2], "second arg");
    assert_eq!(
        exec["process"]["command_line"],
        format!("/bin/echo {tag} second arg")
    );
    assert_eq!(exec["process"]["parent"]["pid"], me, "{exec}");
    assert_eq!(
        exec["process"]["parent"]["executable"]
            .as_str()
            .map(PathBuf::from),
        Some(std::env::current_exe().unwrap()),
        "the parent is this test binary: {exec}"
    );
    assert_eq!(exec["user"]["id"], "0");
    assert_eq!(exec["user"]["name"], "root");
    assert_eq!(exec["user"]["effective"]["id"], "0");
    assert_eq!(exec["group"]["name"], "root");
    assert!(
        exec["mamori"]["cgroup"]
            .as_str()
            .is_some_and(|c| c.starts_with('/')),
        "the process's cgroup: {exec}"
    );
    let exec2 = events
        .iter()
        .find(|e| e["event"]["action"] == "exec" && e["process"]["args"][1] == tag2.as_str())
        .unwrap();
    assert_eq!(exec2["user"]["id"], "0", "{exec2}");
    assert_eq!(exec2["user"]["effective"]["id"], "65534", "{exec2}");
    assert_eq!(exec2["user"]["effective"]["name"], "nobody", "{exec2}");
    assert_eq!(exec2["group"]["effective"]["id"], "65534", "{exec2}");
    let exec3 = events
        .iter()
        .find(|e| e["event"]["action"] == "exec" && e["process"]["args"][1] == tag3.as_str())
        .unwrap();
    assert!(
        exec3["process"]["tty"]["name"]
            .as_str()
            .is_some_and(|t| t.starts_with("pts")),
        "{exec3}"
    );
    let sha = exec["process"]["hash"]["sha256"]
        .as_str()
        .expect("exec events carry the file's SHA-256");
    assert_eq!(sha.len(), 64, "{sha}");
    assert!(sha.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(exec["host"]["os"]["type"], "linux");
    let entity = exec["process"]["entity_id"].as_str().unwrap();
    assert!(
        entity.contains(&format!(":{}:", exec["process"]["pid"])),
        "{entity}"
    );
    assert!(
        exec["@timestamp"].as_str().unwrap().starts_with("20"),
        "{exec}"
    );

    let fork = events
        .iter()
        .find(|e| e["event"]["action"] == "fork" && e["process"]["pid"] == sh_pid)
        .expect("a fork event for the shell");
    assert_eq!(fork["process"]["parent"]["pid"], me);
    let exit = events
        .iter()
        .find(|e| e["event"]["action"] == "exit" && e["process"]["pid"] == sh_pid)
        .expect("an exit event for the shell");
    assert_eq!(exit["process"]["exit_code"], 7);
    assert_eq!(exit["event"]["type"][0], "end");
    assert_eq!(exit["process"]["command_line"], "/bin/sh -c exit 7");
    // Same process, same entity id, from start to end.
    let sh_exec = events
        .iter()
        .find(|e| e["event"]["action"] == "exec" && e["process"]["pid"] == sh_pid)
        .expect("an exec event for the shell");
    assert_eq!(
        sh_exec["process"]["entity_id"],
        exit["process"]["entity_id"]
    );
}

#[test]
fn local_rules_print_detections_next_to_events() {
    if !can_run(
        "local_rules_print_detections_next_to_events",
        "to load eBPF programs",
    ) {
        return;
    }
    let data = tempdir("agent", "rules");
    let tag = nonce();
    let rules = data.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("r.yml"),
        format!(
            "title: Test marker executed\nid: 9d1f6a52-0000-4000-8000-00000000a9e1\nlevel: high\n\
             logsource: {{product: linux, category: process_creation}}\n\
             detection:\n  sel:\n    CommandLine|contains: '{tag}'\n    ParentImage|endswith: '{}'\n  condition: sel\n",
            std::env::current_exe().unwrap().file_name().unwrap().to_string_lossy()
        ),
    )
    .unwrap();
    let agent = start(&["--stdout", "--rules", rules.to_str().unwrap()], &data);
    Command::new("/bin/echo")
        .arg(&tag)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let events = collect(&agent, |seen| {
        seen.iter().any(|e| e.get("detection").is_some())
    });
    let det = events
        .iter()
        .find(|e| e.get("detection").is_some())
        .expect("a detection line");
    assert_eq!(det["detection"]["rule_title"], "Test marker executed");
    assert_eq!(det["detection"]["level"], "high");
}

#[test]
fn without_stdout_events_go_to_the_spool() {
    if !can_run(
        "without_stdout_events_go_to_the_spool",
        "to load eBPF programs",
    ) {
        return;
    }
    let data = tempdir("agent", "spool");
    let tag = nonce();
    let agent = start(&["--duration", "3", "--health-interval", "1"], &data);
    Command::new("/bin/echo")
        .arg(&tag)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let mut child = agent;
    let status = child.child.wait().unwrap();
    assert!(status.success(), "agent exited with {status}");
    let health: Vec<Value> = agent_stderr(&data)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("health").is_some())
        .collect();
    let h = health.last().expect("a health report on standard error");
    assert_eq!(h["health"]["collectors"]["process"], "bpf");
    assert_eq!(h["health"]["dropped"]["ring_buffer_full"], 0);
    assert!(h["health"]["rss_kib"].as_u64().unwrap() > 0);
    assert!(h["health"]["spool"]["depth_records"].as_u64().is_some());
    let (mut spool, rec) =
        mamori_spool::Spool::open(data.join("spool"), Default::default()).unwrap();
    assert_eq!(rec.corrupted_records, 0);
    let records = spool.read(0, 1_000_000).unwrap();
    assert!(
        records
            .iter()
            .any(|(_, p)| String::from_utf8_lossy(p).contains(&tag)),
        "the spool holds {} records, none with {tag}",
        records.len()
    );
}

#[test]
fn listen_and_connect_over_loopback_tcp_udp_v4_v6() {
    if !can_run(
        "listen_and_connect_over_loopback_tcp_udp_v4_v6",
        "to load eBPF programs",
    ) {
        return;
    }
    let data = tempdir("agent", "net");
    let agent = start(&["--stdout"], &data);
    let me = std::process::id();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (_accepted, peer) = listener.accept().unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    udp.connect(("127.0.0.1", 9)).unwrap();
    let v6 = std::net::TcpListener::bind("[::1]:0").ok();
    let port6 = v6.as_ref().map(|l| l.local_addr().unwrap().port());
    let _client6 = port6.map(|p| std::net::TcpStream::connect(("::1", p)).unwrap());

    let mine = |e: &Value| e["process"]["pid"] == me && e["event"]["category"][0] == "network";
    let events = collect(&agent, |seen| {
        let n = seen.iter().filter(|e| mine(e)).count();
        n >= if port6.is_some() { 7 } else { 5 }
    });
    let net: Vec<&Value> = events.iter().filter(|e| mine(e)).collect();
    let find = |action: &str, side: &str, ip: &str, port: u16| {
        net.iter()
            .find(|e| {
                e["event"]["action"] == action && e[side]["ip"] == ip && e[side]["port"] == port
            })
            .unwrap_or_else(|| panic!("no {action} {ip}:{port} among {net:?}"))
    };
    let l = find("listen", "source", "127.0.0.1", port);
    assert_eq!(l["network"]["transport"], "tcp");
    assert_eq!(
        l["process"]["executable"].as_str().map(PathBuf::from),
        Some(std::env::current_exe().unwrap())
    );
    let c = find("connect", "destination", "127.0.0.1", port);
    assert_eq!(c["network"]["transport"], "tcp");
    assert_eq!(c["network"]["direction"], "egress");
    assert_eq!(c["event"]["type"][0], "start");
    let u = find("connect", "destination", "127.0.0.1", 9);
    assert_eq!(u["network"]["transport"], "udp");
    // The inbound side: completed in softirq context, attributed to the listening process.
    let a = find("accept", "source", "127.0.0.1", peer.port());
    assert_eq!(a["destination"]["port"], port);
    assert_eq!(a["network"]["direction"], "ingress");
    assert_eq!(a["network"]["transport"], "tcp");
    // UDP has no listen: binding a port is reported instead.
    let b = find("bind", "source", "127.0.0.1", udp_port);
    assert_eq!(b["network"]["transport"], "udp");
    if let Some(p6) = port6 {
        assert_eq!(
            find("listen", "source", "::1", p6)["network"]["type"],
            "ipv6"
        );
        assert_eq!(
            find("connect", "destination", "::1", p6)["network"]["type"],
            "ipv6"
        );
    }
}

#[test]
fn file_create_write_rename_chmod_delete() {
    if !can_run(
        "file_create_write_rename_chmod_delete",
        "to load eBPF programs",
    ) {
        return;
    }
    let data = tempdir("agent", "files");
    let agent = start(&["--stdout"], &data);
    assert!(
        agent_stderr(&data).contains("per-syscall tracepoints"),
        "the default hooks are the per-syscall tracepoints (tracefs is mounted if needed)"
    );
    let me = std::process::id();
    let dir = tempdir("agent", "files-work");
    let a = dir.join("created.txt");
    let b = dir.join("renamed.txt");
    std::fs::write(&a, b"one").unwrap();
    std::fs::OpenOptions::new().append(true).open(&a).unwrap();
    std::fs::rename(&a, &b).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o640)).unwrap();
    // Reading is not a change: filtered in the kernel.
    std::fs::read(&b).unwrap();
    std::fs::remove_file(&b).unwrap();
    let (a, b) = (a.display().to_string(), b.display().to_string());
    let mine = |e: &Value| e["process"]["pid"] == me && e["event"]["category"][0] == "file";
    let events = collect(&agent, |seen| {
        seen.iter()
            .any(|e| mine(e) && e["event"]["action"] == "delete" && e["file"]["path"] == b.as_str())
    });
    let file: Vec<&Value> = events.iter().filter(|e| mine(e)).collect();
    let find = |action: &str, path: &str| {
        file.iter()
            .find(|e| e["event"]["action"] == action && e["file"]["path"] == path)
            .unwrap_or_else(|| panic!("no {action} of {path} among {file:?}"))
    };
    assert_eq!(find("create", &a)["event"]["type"][0], "creation");
    assert_eq!(find("write", &a)["event"]["type"][0], "change");
    let r = find("rename", &b);
    assert_eq!(r["file"]["Ext"]["original"]["path"], a.as_str());
    assert_eq!(find("chmod", &b)["file"]["mode"], "640");
    assert_eq!(find("delete", &b)["event"]["type"][0], "deletion");
    assert_eq!(
        file.iter()
            .filter(|e| e["file"]["path"] == b.as_str())
            .count(),
        3,
        "rename, chmod, delete — and no event for the read: {file:?}"
    );
}

#[test]
fn privilege_changes_ptrace_and_module_load_attempts() {
    if !can_run(
        "privilege_changes_ptrace_and_module_load_attempts",
        "to load eBPF programs",
    ) {
        return;
    }
    let data = tempdir("agent", "priv");
    // The raw syscall hooks (the fallback when tracefs is missing) are exercised here; the
    // other tests use the default per-syscall tracepoints. Only the raw hooks see a module
    // load attempted on a kernel built without modules: it has no tracepoint for them.
    let agent = start(&["--stdout", "--file-hooks", "raw"], &data);
    assert!(agent_stderr(&data).contains("raw syscall hooks"));
    // A helper process does what attackers do: load a "module" (it fails: not a module),
    // attach to another process with ptrace, and drop to nobody with setgid/setuid.
    let script = r#"
import ctypes, os, subprocess, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open('/bin/true', os.O_RDONLY)
libc.syscall(313, fd, b'', 0)
victim = subprocess.Popen(['sleep', '10'])
print(victim.pid, flush=True)
libc.ptrace(16, victim.pid, 0, 0)
time.sleep(0.05)
libc.ptrace(17, victim.pid, 0, 0)
victim.kill()
os.setgid(65534)
os.setuid(65534)
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let victim: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let events = collect(&agent, |seen| {
        seen.iter()
            .filter(|e| {
                e["event"]["dataset"] == "mamori.privilege" && e["process"]["name"] == "python3"
            })
            .count()
            >= 4
    });
    let mine: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["event"]["dataset"] == "mamori.privilege" && e["process"]["name"] == "python3"
        })
        .collect();
    let find = |action: &str| {
        mine.iter()
            .find(|e| e["event"]["action"] == action)
            .unwrap_or_else(|| panic!("no {action} among {mine:?}"))
    };
    let m = find("module-load");
    assert_eq!(m["event"]["outcome"], "failure");
    assert_eq!(m["event"]["category"][0], "driver");
    // The module file is named from the loader's descriptor table, best effort: a loader that
    // has already exited leaves it out.
    if let Some(path) = m["file"]["path"].as_str() {
        assert!(path.ends_with("/true"), "{m}");
    }
    let p = find("ptrace-attach");
    assert_eq!(p["event"]["outcome"], "success");
    assert_eq!(p["target"]["process"]["pid"], victim);
    let g = find("setgid");
    assert_eq!(g["requested"]["ids"][0], 65534);
    let u = find("setuid");
    assert_eq!(u["event"]["outcome"], "success");
    assert_eq!(
        u["user"]["id"], "65534",
        "user.id is the identity after the change"
    );
}

#[test]
fn fallback_process_connector_reports_what_is_missing() {
    if !can_run(
        "fallback_process_connector_reports_what_is_missing",
        "to load eBPF programs",
    ) {
        return;
    }
    let data = tempdir("agent", "fallback");
    let agent = start(
        &[
            "--stdout",
            "--collector",
            "proc-connector",
            "--health-interval",
            "1",
        ],
        &data,
    );
    let me = std::process::id();
    let tag = nonce();
    // Long enough for /proc to still show the arguments when the event is read.
    let mut sleeper = Command::new("/bin/sh")
        .args(["-c", "sleep 0.7", &tag])
        .spawn()
        .unwrap();
    let sleeper_pid = sleeper.id();
    sleeper.wait().unwrap();
    let mut sh = Command::new("/bin/sh")
        .args(["-c", "sleep 0.3; exit 5"])
        .spawn()
        .unwrap();
    let sh_pid = sh.id();
    assert_eq!(sh.wait().unwrap().code(), Some(5));
    // Files: completed writes through fanotify.
    let written = tempdir("agent", "fallback-work").join("written.txt");
    std::fs::write(&written, b"x").unwrap();
    let written = written.display().to_string();
    let events = collect(&agent, |seen| {
        seen.iter()
            .any(|e| e["process"]["pid"] == sh_pid && e["event"]["action"] == "exit")
            && seen.iter().any(|e| e["file"]["path"] == written.as_str())
    });
    let w = events
        .iter()
        .find(|e| e["file"]["path"] == written.as_str())
        .unwrap_or_else(|| panic!("no fanotify write of {written}"));
    assert_eq!(w["event"]["action"], "write");
    assert_eq!(w["process"]["pid"], me);
    assert_eq!(w["user"]["id"], "0");
    let exec = events
        .iter()
        .find(|e| e["event"]["action"] == "exec" && e["process"]["pid"] == sleeper_pid)
        .unwrap_or_else(|| panic!("no exec of the sleeper among {events:?}"));
    assert_eq!(exec["process"]["args"][3], tag.as_str(), "{exec}");
    assert!(
        exec["process"]["executable"]
            .as_str()
            .unwrap()
            .ends_with("sh"),
        "{exec}"
    );
    assert_eq!(exec["process"]["parent"]["pid"], me);
    let exit = events
        .iter()
        .find(|e| e["event"]["action"] == "exit" && e["process"]["pid"] == sh_pid)
        .unwrap();
    assert_eq!(exit["process"]["exit_code"], 5);
    assert!(
        events.iter().all(
            |e| ["process", "file"].contains(&e["event"]["category"][0].as_str().unwrap_or(""))
        ),
        "the fallback reports processes and file writes only"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let found: Vec<Value> = agent_stderr(&data)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("health").is_some())
            .collect();
        if !found.is_empty() || Instant::now() > deadline {
            break found;
        }
    };
    let h = health.last().expect("a health report");
    assert_eq!(h["health"]["collectors"]["process"], "proc-connector");
    assert_eq!(h["health"]["collectors"]["network"], "off");
    let missing: Vec<&str> = h["health"]["missing"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        h["health"]["collectors"]["file"], "fanotify (writes only)",
        "{h}"
    );
    for m in [
        "network",
        "dns",
        "file-delete",
        "file-rename",
        "privilege",
        "ptrace",
        "module",
    ] {
        assert!(
            missing.contains(&m),
            "{m} should be reported missing: {missing:?}"
        );
    }
    let err = agent_stderr(&data);
    assert!(err.contains("netlink process connector fallback"), "{err}");
}

#[test]
fn dns_query_and_answer_through_a_local_stub() {
    if !can_run(
        "dns_query_and_answer_through_a_local_stub",
        "to load eBPF programs",
    ) {
        return;
    }
    use mamori_sensor::dns;
    let data = tempdir("agent", "dns");
    let agent = start(&["--stdout"], &data);
    let me = std::process::id();
    // A stub resolver on a loopback address of its own, port 53 (the kernel filter's port).
    let stub = std::net::UdpSocket::bind("127.0.0.154:53").expect("bind the stub on port 53");
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let (n, from) = stub.recv_from(&mut buf).unwrap();
        let reply = dns::answer(&buf[..n], &[[10, 66, 77, 88]]);
        stub.send_to(&reply, from).unwrap();
    });
    let name = format!("c2-{me}.mamori-test.example");
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.connect("127.0.0.154:53").unwrap();
    client.send(&dns::query(0x4d4d, &name, 1)).unwrap();
    let mut buf = [0u8; 512];
    let n = client.recv(&mut buf).expect("the stub answers");
    assert!(n > 12);
    server.join().unwrap();

    let mine = |e: &Value| e["dns"]["question"]["name"] == name.as_str();
    let events = collect(&agent, |seen| seen.iter().filter(|e| mine(e)).count() >= 2);
    let dns: Vec<&Value> = events.iter().filter(|e| mine(e)).collect();
    let q = dns
        .iter()
        .find(|e| e["event"]["action"] == "dns_query")
        .unwrap_or_else(|| panic!("no query among {dns:?}"));
    assert_eq!(q["process"]["pid"], me);
    assert_eq!(q["dns"]["type"], "query");
    assert_eq!(q["dns"]["id"], 0x4d4d);
    assert_eq!(q["dns"]["question"]["type"], "A");
    assert_eq!(q["destination"]["ip"], "127.0.0.154");
    assert_eq!(q["destination"]["port"], 53);
    assert_eq!(q["network"]["protocol"], "dns");
    let a = dns
        .iter()
        .find(|e| e["event"]["action"] == "dns_answer")
        .unwrap_or_else(|| panic!("no answer among {dns:?}"));
    assert_eq!(
        a["process"]["pid"], me,
        "answers arrive in softirq context: attributed through the querying socket"
    );
    assert_eq!(a["dns"]["response_code"], "NOERROR");
    assert_eq!(a["dns"]["resolved_ip"][0], "10.66.77.88");
    assert_eq!(a["dns"]["answers"][0]["ttl"], 60);
    assert_eq!(a["source"]["port"], 53);
}

#[test]
fn logins_success_and_failure_from_pam() {
    if !can_run(
        "logins_success_and_failure_from_pam",
        "to load eBPF programs",
    ) {
        return;
    }
    let su = ["/usr/bin/su", "/bin/su"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("this test logs in with su (util-linux): apt-get install -y util-linux");
    let data = tempdir("agent", "logins");
    let mut agent = start(&["--stdout", "--with-logins"], &data);
    let err = agent_stderr(&data);
    assert!(
        err.contains("logins: audit"),
        "login collector not running: {err}"
    );
    let me = std::process::id();
    // Success: root switches to nobody (pam_rootok). Failure: nobody tries root with no
    // password (pam_unix refuses after its delay).
    let ok = Command::new(su)
        .args(["-s", "/bin/true", "nobody"])
        .status()
        .unwrap();
    assert!(ok.success());
    let failed = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", su])
        .args(["root", "-c", "true"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!failed.success(), "su without a password must fail");
    let auth =
        |e: &Value| e["event"]["dataset"] == "mamori.auth" && e["process"]["parent"]["pid"] == me;
    let events = collect(&agent, |seen| {
        seen.iter()
            .any(|e| auth(e) && e["event"]["outcome"] == "failure")
    });
    let mine: Vec<&Value> = events.iter().filter(|e| auth(e)).collect();
    let all_auth: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"]["dataset"] == "mamori.auth")
        .collect();
    assert!(!mine.is_empty(), "none of ours among {all_auth:?}");
    let find = |action: &str, user: &str, outcome: &str| {
        mine.iter()
            .find(|e| {
                e["event"]["action"] == action
                    && e["user"]["name"] == user
                    && e["event"]["outcome"] == outcome
            })
            .unwrap_or_else(|| panic!("no {action} {user} {outcome} among {mine:?}"))
    };
    let s = find("authentication", "nobody", "success");
    assert_eq!(s["event"]["category"][0], "authentication");
    assert_eq!(s["process"]["executable"], su);
    assert_eq!(s["mamori"]["audit"]["record"], "USER_AUTH");
    let o = find("session-opened", "nobody", "success");
    assert_eq!(o["event"]["category"][0], "session");
    let f = find("authentication", "root", "failure");
    assert_eq!(f["event"]["provider"], "pam");
    assert!(
        f["process"]["entity_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "attributed to the su process: {f}"
    );
    // SIGTERM stops the agent cleanly (audit restored, spool synced) with status 0.
    let pid = agent.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "agent exited with {status}");
    assert!(
        agent_stderr(&data).contains("events in"),
        "no summary after SIGTERM"
    );
}

#[test]
fn file_include_and_exclude_prefixes() {
    if !can_run("file_include_and_exclude_prefixes", "to load eBPF programs") {
        return;
    }
    let work = tempdir("agent", "filter-work");
    let quiet = work.join("quiet");
    let loud = quiet.join("loud");
    std::fs::create_dir_all(&loud).unwrap();
    let data = tempdir("agent", "filter");
    let ex = format!("{}/", quiet.display());
    let inc = format!("{}/", loud.display());
    let agent = start(
        &["--stdout", "--file-exclude", &ex, "--file-include", &inc],
        &data,
    );
    std::fs::write(quiet.join("absolute-dropped"), b"x").unwrap();
    // Relative paths are judged in user space once resolved against the working directory,
    // which the agent follows through chdir.
    let sh = |dir: &std::path::Path, script: &str| {
        assert!(
            Command::new("sh")
                .args(["-c", script])
                .current_dir(dir)
                .status()
                .unwrap()
                .success()
        );
    };
    sh(
        &work,
        "cd quiet && echo x > relative-dropped && cd loud && echo y > relative-kept",
    );
    std::fs::write(loud.join("absolute-kept"), b"x").unwrap();
    let last = loud.join("absolute-kept").display().to_string();
    let events = collect(&agent, |seen| {
        seen.iter().any(|e| e["file"]["path"] == last.as_str())
    });
    let paths: Vec<&str> = events
        .iter()
        .filter(|e| e["event"]["category"][0] == "file")
        .filter_map(|e| e["file"]["path"].as_str())
        .filter(|p| p.starts_with(&work.display().to_string()))
        .collect();
    assert!(paths.contains(&last.as_str()), "{paths:?}");
    let kept = loud.join("relative-kept").display().to_string();
    assert!(
        paths.contains(&kept.as_str()),
        "relative path kept and resolved: {paths:?}"
    );
    assert!(
        !paths.iter().any(|p| p.contains("dropped")),
        "excluded paths were reported: {paths:?}"
    );
}

#[test]
fn large_executables_are_hashed_in_the_background() {
    if !can_run(
        "large_executables_are_hashed_in_the_background",
        "to load eBPF programs",
    ) {
        return;
    }
    // /bin/true with 9 MiB appended (the loader ignores trailing bytes): above the inline
    // hashing limit.
    let dir = tempdir("agent", "bigexe-work");
    let exe = dir.join("big-true");
    let mut bytes = std::fs::read("/bin/true").unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 9 << 20));
    std::fs::write(&exe, &bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = tempdir("agent", "bigexe");
    let agent = start(&["--stdout"], &data);
    assert!(Command::new(&exe).status().unwrap().success());
    let path = exe.display().to_string();
    let events = collect(&agent, |seen| {
        seen.iter()
            .any(|e| e["event"]["action"] == "hash" && e["process"]["executable"] == path.as_str())
    });
    let exec = events
        .iter()
        .find(|e| e["event"]["action"] == "exec" && e["process"]["executable"] == path.as_str())
        .unwrap_or_else(|| panic!("no exec of {path}"));
    assert!(
        exec["process"].get("hash").is_none(),
        "not hashed inline: {exec}"
    );
    // Other tests run large executables at the same time (the mamori binary itself): the
    // hash wanted is the one of this executable.
    let hashed = events
        .iter()
        .find(|e| e["event"]["action"] == "hash" && e["process"]["executable"] == path.as_str())
        .unwrap_or_else(|| panic!("no background hash for {path}"));
    assert_eq!(hashed["process"]["entity_id"], exec["process"]["entity_id"]);
    use sha2::Digest;
    let want: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hashed["process"]["hash"]["sha256"], want.as_str());
}

#[test]
fn up_and_demo_attack_raise_alerts_end_to_end() {
    if !can_run(
        "up_and_demo_attack_raise_alerts_end_to_end",
        "to load eBPF programs",
    ) {
        return;
    }
    // `mamori up` on a port of its own, with Mamori's own rules (no SigmaHQ installed here).
    let data = tempdir("agent", "up");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Logins off: the login test, running beside this one, owns the kernel's audit flag.
    let mut up = Command::new(env!("CARGO_BIN_EXE_mamori"))
        .args(["up", "--without", "login"])
        .env("MAMORI_DATA_DIR", &data)
        .env("MAMORI_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = up.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("up: {line}");
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut enrolled = false;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("mamori up did not start collecting within 60 s");
        enrolled |= line.contains("sensor enrolled as agt-");
        if line.contains("collecting process") {
            break;
        }
    }
    assert!(enrolled, "mamori up enrolls this machine's sensor");
    let demo = Command::new(env!("CARGO_BIN_EXE_mamori"))
        .args(["demo", "attack"])
        .env("MAMORI_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(15);
    let alerts: Vec<Value> = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_mamori"))
            .args(["server", "alerts", "--json"])
            .env("MAMORI_DATA_DIR", &data)
            .output()
            .unwrap();
        let v: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if v.iter()
            .any(|a| a["rule_title"] == "Cron or Systemd Persistence File Written")
            || Instant::now() > deadline
        {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("alert visible {:?} after the demo ended", started.elapsed());
    let cron = alerts
        .iter()
        .find(|a| a["rule_title"] == "Cron or Systemd Persistence File Written")
        .unwrap_or_else(|| panic!("no persistence alert among {alerts:?}"));
    assert_eq!(cron["level"], "medium");
    assert_eq!(cron["tags"][1], "attack.t1053.003");
    let evidence = &cron["evidence"][0];
    assert!(
        evidence["file"]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/etc/cron.d/mamori-demo")),
        "{evidence}"
    );
    assert_eq!(evidence["event"]["action"], "create");
    // The demo's commands are stored and searchable with SQL within a few seconds.
    let sql = "SELECT process_command_line, host_id FROM events \
               WHERE event_action = 'exec' AND process_command_line LIKE '%base64 -d%'";
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let out = Command::new(env!("CARGO_BIN_EXE_mamori"))
            .args(["query", "--format", "json", sql])
            .env("MAMORI_DATA_DIR", &data)
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let rows = v["rows"].as_array().cloned().unwrap_or_default();
        if !rows.is_empty() || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        !rows.is_empty(),
        "the demo's encoded command is not in the store"
    );
    assert!(
        rows[0]["host_id"].as_str().unwrap().starts_with("agt-"),
        "{rows:?}"
    );
    // Every alert has a severity from its evidence, and the machine that runs the server is
    // never isolated automatically (it would cut every agent off the server).
    assert!(
        alerts
            .iter()
            .all(|a| a["severity"].as_str().is_some_and(|s| !s.is_empty())),
        "{alerts:?}"
    );
    if let Ok(out) = Command::new("nft")
        .args(["list", "table", "inet", "mamori_isolation"])
        .output()
    {
        assert!(!out.status.success(), "the server's own host was isolated");
    }
    // SIGTERM stops both, cleanly.
    assert!(
        Command::new("kill")
            .args(["-TERM", &up.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = up.wait().unwrap();
    assert!(status.success(), "mamori up exited with {status}");
}
