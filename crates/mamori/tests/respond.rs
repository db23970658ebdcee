//! Response for real, in network namespaces this test creates: a "host" namespace running
//! the agent, a "server" namespace running `mamori server`, an "outside" peer and an
//! "allowed" peer, each joined to the host by its own veth pair. Through the CLI and the
//! API: isolate (outside blocked both ways, established connections cut, the server and the
//! allowlist still reachable), tamper with the table (repaired, critical alert), restart the
//! agent and simulate a reboot (isolation comes back), release (the ruleset is exactly what
//! it was), kill a process tree, quarantine and restore a file, collect a file and a triage
//! bundle; refusals for roles, tenants, PID 1 and system files; everything in the audit log.
//! Needs root (namespaces, nftables, eBPF); without root it says SKIPPED.

mod common;
use common::{can_run, tempdir};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The namespaces and links; removed on drop.
struct Net {
    tag: String,
}

impl Net {
    fn ns(&self, role: &str) -> String {
        format!("mrt{}-{role}", self.tag)
    }

    fn create() -> Net {
        // Unique per test in this process (tests run in parallel).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let net = Net {
            tag: format!("{}{n}", std::process::id() % 100_000),
        };
        for role in ["h", "s", "o", "a"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &net.ns(role)])
                .output();
            sh(&["ip", "netns", "add", &net.ns(role)]);
            sh(&["ip", "-n", &net.ns(role), "link", "set", "lo", "up"]);
        }
        // host <-> server 10.201.1.0/24, host <-> outside .2, host <-> allowed .3
        for (i, role) in [(1, "s"), (2, "o"), (3, "a")] {
            let (hv, pv) = (
                format!("mh{}{role}", net.tag),
                format!("mp{}{role}", net.tag),
            );
            sh(&[
                "ip",
                "link",
                "add",
                &hv,
                "netns",
                &net.ns("h"),
                "type",
                "veth",
                "peer",
                "name",
                &pv,
                "netns",
                &net.ns(role),
            ]);
            sh(&[
                "ip",
                "-n",
                &net.ns("h"),
                "addr",
                "add",
                &format!("10.201.{i}.2/24"),
                "dev",
                &hv,
            ]);
            sh(&[
                "ip",
                "-n",
                &net.ns(role),
                "addr",
                "add",
                &format!("10.201.{i}.1/24"),
                "dev",
                &pv,
            ]);
            sh(&["ip", "-n", &net.ns("h"), "link", "set", &hv, "up"]);
            sh(&["ip", "-n", &net.ns(role), "link", "set", &pv, "up"]);
        }
        net
    }

    /// Runs `f` in a thread inside namespace `role`: sockets made there belong to it.
    fn within<T: Send + 'static>(&self, role: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.ns(role));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    fn nft(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns("h"), "nft"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for role in ["h", "s", "o", "a"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .output();
        }
    }
}

/// A TCP echo server in a namespace.
fn echo(net: &Net, role: &str, addr: &str) {
    let addr: SocketAddr = addr.parse().unwrap();
    let listener = net.within(role, move || TcpListener::bind(addr).unwrap());
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Whether a TCP connection from namespace `from` to `to` gets an echo.
fn reaches(net: &Net, from: &str, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    net.within(from, move || {
        let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_millis(700)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(700)));
        let mut buf = [0u8; 4];
        s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
    })
}

fn mamori(data: &Path, ns: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_mamori")]);
    c.env("MAMORI_DATA_DIR", data);
    c
}

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(mut c: Command, log: PathBuf) -> Proc {
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log2)
            .unwrap();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = writeln!(f, "{line}");
            let _ = tx.send(line);
        }
    });
    Proc {
        child,
        lines: rx,
        log,
    }
}

fn wait_line(p: &Proc, what: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match p
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(l) if l.contains(what) => return l,
            Ok(_) => {}
            Err(_) => panic!(
                "{what:?} not seen within {secs} s; log:\n{}",
                std::fs::read_to_string(&p.log).unwrap_or_default()
            ),
        }
    }
}

/// `mamori respond …` from the server's namespace; (success, stdout, stderr).
fn respond(net: &Net, srv: &Path, token: &str, args: &[&str]) -> (bool, Value, String) {
    let out = mamori(srv, &net.ns("s"))
        .args([
            "respond",
            "--server",
            "https://10.201.1.1:7443",
            "--token",
            token,
        ])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::String(stdout)),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An API call from the server's namespace (curl), returning (status, JSON).
fn api(
    net: &Net,
    srv: &Path,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u32, Value) {
    let mut c = Command::new("ip");
    c.args([
        "netns",
        "exec",
        &net.ns("s"),
        "curl",
        "-s",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
        "--cacert",
    ])
    .arg(srv.join("server/pki/ca.pem"))
    .args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = c
        .arg(format!("https://10.201.1.1:7443{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

fn start_agent(net: &Net, agent: &Path) -> Proc {
    start_agent_without(net, agent, "file,network,login")
}

fn start_agent_without(net: &Net, agent: &Path, without: &str) -> Proc {
    let mut c = mamori(agent, &net.ns("h"));
    c.args(["agent", "--without", without, "--health-interval", "2"]);
    let p = spawn(c, agent.join("agent.err"));
    wait_line(&p, "shipping to", 60);
    p
}

/// The server in the server namespace with `config`: (process, admin token, CA fingerprint,
/// an enrollment token).
fn start_server(net: &Net, srv: &Path, config: &Path) -> (Proc, String, String, String) {
    let mut c = mamori(srv, &net.ns("s"));
    c.args(["server", "run", "--listen", "10.201.1.1:7443", "--config"])
        .arg(config);
    let server = spawn(c, srv.join("server.err"));
    let admin = wait_line(&server, "stored only as a hash): ", 60)
        .rsplit_once(": ")
        .unwrap()
        .1
        .to_string();
    let fp = wait_line(&server, "CA fingerprint ", 30)
        .rsplit_once(' ')
        .unwrap()
        .1
        .to_string();
    wait_line(&server, "listening on", 60);
    let token = sh(&[
        "env",
        &format!("MAMORI_DATA_DIR={}", srv.display()),
        env!("CARGO_BIN_EXE_mamori"),
        "server",
        "token",
    ])
    .trim()
    .to_string();
    (server, admin, fp, token)
}

/// Enrolls the agent of the host namespace; returns its id.
fn enroll_agent(net: &Net, agent_dir: &Path, token: &str, fp: &str) -> String {
    let out = mamori(agent_dir, &net.ns("h"))
        .args(["agent", "enroll", "--server", "https://10.201.1.1:7443"])
        .args(["--token", token, "--ca-fingerprint", fp])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str::<Value>(
        &std::fs::read_to_string(agent_dir.join("agent/identity.json")).unwrap(),
    )
    .unwrap()["agent_id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn isolate_kill_quarantine_collect_in_real_namespaces() {
    if !can_run(
        "isolate_kill_quarantine_collect_in_real_namespaces",
        "network namespaces, nftables, eBPF",
    ) {
        return;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        panic!("nft is missing: apt-get install nftables (scripts/deps.sh installs it)");
    }
    let net = Net::create();
    let (srv, agent_dir) = (tempdir("respond", "srv"), tempdir("respond", "agent"));

    // The server, in its namespace.
    // The administrator's isolation allowlist (every isolation) holds one port of the
    // allowed peer; the isolate command adds another.
    let config = srv.join("server.toml");
    // A SOC policy for which the outside peer's network is external.
    let policy = srv.join("soc-policy.toml");
    std::fs::write(
        &policy,
        "internal_networks = [\"10.201.1.0/24\", \"10.201.3.0/24\", \"127.0.0.0/8\", \"::1/128\"]\n",
    )
    .unwrap();
    std::fs::write(
        &config,
        format!(
            "isolation_allow = [\"10.201.3.1:8444\"]\nsoc_policy = \"{}\"\n",
            policy.display()
        ),
    )
    .unwrap();
    let (server, admin, fp, token) = start_server(&net, &srv, &config);
    // The agent, in the host namespace.
    let agent_id = enroll_agent(&net, &agent_dir, &token, &fp);
    let mut agent = start_agent(&net, &agent_dir);

    // Peers: an echo service outside and on the allowed peer (two ports), one in the host.
    echo(&net, "o", "10.201.2.1:8080");
    echo(&net, "a", "10.201.3.1:8443");
    echo(&net, "a", "10.201.3.1:8444");
    echo(&net, "a", "10.201.3.1:8445");
    echo(&net, "h", "0.0.0.0:9090");
    assert!(
        reaches(&net, "h", "10.201.2.1:8080"),
        "before: host -> outside"
    );
    assert!(
        reaches(&net, "o", "10.201.2.2:9090"),
        "before: outside -> host"
    );
    // A connection established before isolation (a reverse shell, say).
    let mut established = net.within("h", || {
        let s = TcpStream::connect("10.201.2.1:8080").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        s
    });
    // Someone else's table in the host, which isolation must leave alone.
    let (ok, e) = net.nft(&["add", "table", "inet", "preexisting"]);
    assert!(ok, "{e}");
    net.nft(&[
        "add",
        "set",
        "inet",
        "preexisting",
        "s",
        "{ type ipv4_addr; }",
    ]);
    net.nft(&[
        "add",
        "element",
        "inet",
        "preexisting",
        "s",
        "{ 192.0.2.7 }",
    ]);
    let ruleset_before = net.nft(&["list", "ruleset"]).1;

    // Refusals: a viewer cannot isolate; PID 1 cannot be killed; no reason, no action.
    let viewer = api(
        &net,
        &srv,
        &admin,
        "POST",
        "/api/v1/tokens",
        Some(r#"{"name":"v","role":"viewer"}"#),
    )
    .1["token"]
        .as_str()
        .unwrap()
        .to_string();
    let isolate_body = r#"{"action":{"type":"isolate","allow":[{"net":"10.201.3.1","port":8443}]},"reason":"test"}"#;
    let path = format!("/api/v1/hosts/{agent_id}/actions");
    assert_eq!(
        api(&net, &srv, &viewer, "POST", &path, Some(isolate_body)).0,
        403
    );
    let (code, v) = api(
        &net,
        &srv,
        &admin,
        "POST",
        &path,
        Some(r#"{"action":{"type":"kill","pid":1,"start_ticks":0},"reason":"x"}"#),
    );
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("PID 1"), "{v}");
    let (code, v) = api(
        &net,
        &srv,
        &admin,
        "POST",
        &path,
        Some(r#"{"action":{"type":"release"},"reason":" "}"#),
    );
    assert_eq!(code, 400, "{v}");
    let other = api(
        &net,
        &srv,
        &admin,
        "POST",
        "/api/v1/tokens",
        Some(r#"{"name":"t2","role":"admin","tenant":"other"}"#),
    )
    .1["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        api(&net, &srv, &other, "POST", &path, Some(isolate_body)).0,
        404,
        "another tenant's host does not exist"
    );

    // Isolate through the CLI, waiting for the verified outcome.
    let t0 = Instant::now();
    let (ok, out, err) = respond(
        &net,
        &srv,
        &admin,
        &[
            "isolate",
            &agent_id,
            "--allow",
            "10.201.3.1:8443",
            "--reason",
            "test: contain",
        ],
    );
    let took = t0.elapsed();
    assert!(ok, "isolate failed: {err}\n{out}");
    assert_eq!(out["isolated"], true, "{out}");
    assert_eq!(
        out["probe"]["result"], "blocked",
        "a probe past the filter was refused: {out}"
    );
    eprintln!("isolate through the CLI, verified: {took:?}");
    assert!(
        !reaches(&net, "h", "10.201.2.1:8080"),
        "isolated: host -> outside"
    );
    assert!(
        !reaches(&net, "o", "10.201.2.2:9090"),
        "isolated: outside -> host"
    );
    assert!(
        reaches(&net, "h", "10.201.3.1:8443"),
        "isolated: the allowlisted port still works"
    );
    assert!(
        reaches(&net, "h", "10.201.3.1:8444"),
        "isolated: the configured allowlist works"
    );
    assert!(
        !reaches(&net, "h", "10.201.3.1:8445"),
        "isolated: only the allowlisted port"
    );
    let mut buf = [0u8; 4];
    let cut = established.write_all(b"ping").is_err() || established.read_exact(&mut buf).is_err();
    assert!(cut, "an established connection to outside is cut");
    // The server still talks to the agent: a triage comes back through isolation.
    let (ok, tri, err) = respond(
        &net,
        &srv,
        &admin,
        &["triage", &agent_id, "--reason", "test: triage"],
    );
    assert!(ok, "{err}");
    assert!(
        tri["processes"].as_array().unwrap().len() > 3,
        "triage has processes"
    );
    assert!(tri["persistence"].is_array() && tri["kernel_modules"].is_array());
    // The host shows who isolated it, when and why.
    let (_, iso) = api(
        &net,
        &srv,
        &admin,
        "GET",
        &format!("/api/v1/hosts/{agent_id}/isolation"),
        None,
    );
    assert_eq!(iso["isolated"], true, "{iso}");
    assert_eq!(iso["current"]["reason"], "test: contain");
    assert!(
        iso["current"]["by"].as_str().unwrap().contains("admin"),
        "{iso}"
    );
    let (_, hosts) = api(&net, &srv, &admin, "GET", "/api/v1/hosts", None);
    let me = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["agent"] == agent_id.as_str())
        .unwrap();
    assert_eq!(me["isolation"]["reason"], "test: contain", "{me}");

    // Tampering: a local root deletes the table. It comes back, and a critical alert says so.
    let (ok, e) = net.nft(&["delete", "table", "inet", "mamori_isolation"]);
    assert!(ok, "{e}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !net.nft(&["list", "table", "inet", "mamori_isolation"]).0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        net.nft(&["list", "table", "inet", "mamori_isolation"]).0,
        "the table was loaded again"
    );
    assert!(
        !reaches(&net, "h", "10.201.2.1:8080"),
        "isolated again after tampering"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let tamper = loop {
        let (_, alerts) = api(&net, &srv, &admin, "GET", "/api/v1/alerts", None);
        let found = alerts
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["rule_id"] == "mamori-isolation-tamper")
            .cloned();
        if found.is_some() || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let tamper = tamper.expect("a tamper alert");
    assert_eq!(tamper["level"], "critical");

    // The agent stops: the table stays. It restarts: still isolated, and says so.
    drop(agent);
    assert!(
        !reaches(&net, "h", "10.201.2.1:8080"),
        "isolation outlives the agent"
    );
    // A command for an offline host waits for it.
    let (ok, queued, err) = respond(
        &net,
        &srv,
        &admin,
        &[
            "--wait",
            "0",
            "triage",
            &agent_id,
            "--reason",
            "test: while offline",
        ],
    );
    assert!(ok && queued["status"] == "queued", "{err}{queued}");
    agent = start_agent(&net, &agent_dir);
    let id = queued["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let (_, a) = api(
            &net,
            &srv,
            &admin,
            "GET",
            &format!("/api/v1/actions/{id}"),
            None,
        );
        if a["status"] == "succeeded" || Instant::now() > deadline {
            break a["status"].clone();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        status, "succeeded",
        "the queued command ran when the agent came back"
    );
    assert!(
        std::fs::read_to_string(agent_dir.join("agent.err"))
            .unwrap()
            .contains("ISOLATED")
    );
    // A reboot empties the kernel's tables; the agent loads isolation again at start.
    drop(agent);
    net.nft(&["delete", "table", "inet", "mamori_isolation"]);
    assert!(
        reaches(&net, "h", "10.201.2.1:8080"),
        "the 'reboot' emptied the table"
    );
    agent = start_agent(&net, &agent_dir);
    assert!(
        !reaches(&net, "h", "10.201.2.1:8080"),
        "isolated again after the 'reboot'"
    );
    assert!(reaches(&net, "h", "10.201.3.1:8443"));

    // Release: traffic flows, and the ruleset is exactly what it was.
    // What a boot unit loads before the network comes up (packaging/systemd).
    let boot = agent_dir.join("agent/isolation.nft");
    let text = std::fs::read_to_string(&boot).unwrap();
    assert!(text.contains("table inet mamori_isolation {") && text.contains("policy drop"));
    let (ok, out, err) = respond(
        &net,
        &srv,
        &admin,
        &["release", &agent_id, "--reason", "test: all clear"],
    );
    assert!(ok, "{err}\n{out}");
    assert_eq!(out["isolated"], false);
    assert!(
        reaches(&net, "h", "10.201.2.1:8080"),
        "released: host -> outside"
    );
    assert!(
        !boot.exists(),
        "released: nothing is loaded at the next boot"
    );
    assert!(
        reaches(&net, "o", "10.201.2.2:9090"),
        "released: outside -> host"
    );
    assert_eq!(
        net.nft(&["list", "ruleset"]).1,
        ruleset_before,
        "release restores the ruleset exactly"
    );
    let (_, iso) = api(
        &net,
        &srv,
        &admin,
        "GET",
        &format!("/api/v1/hosts/{agent_id}/isolation"),
        None,
    );
    assert_eq!(iso["isolated"], false);
    let events: Vec<&str> = iso["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    for e in [
        "isolate requested",
        "isolated",
        "tampered",
        "release requested",
        "released",
    ] {
        assert!(events.contains(&e), "isolation log lacks {e:?}: {events:?}");
    }

    // Kill a process tree, by pid and start time.
    let mut tree = Command::new("sh")
        .args(["-c", "sleep 1000 & sleep 1000 & wait"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = tree.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ticks = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    let kids: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(kids.len(), 2);
    let wrong = (ticks.parse::<u64>().unwrap() + 5).to_string();
    let (ok, _, err) = respond(
        &net,
        &srv,
        &admin,
        &[
            "kill",
            &agent_id,
            "--pid",
            &pid.to_string(),
            "--start-ticks",
            &wrong,
            "--tree",
            "--reason",
            "test",
        ],
    );
    assert!(
        !ok && err.contains("another process"),
        "a reused pid is never hit: {err}"
    );
    let (ok, out, err) = respond(
        &net,
        &srv,
        &admin,
        &[
            "kill",
            &agent_id,
            "--pid",
            &pid.to_string(),
            "--start-ticks",
            &ticks,
            "--tree",
            "--reason",
            "test: kill",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out["killed"].as_array().unwrap().len(), 3, "{out}");
    let _ = tree.wait();
    for k in kids {
        assert!(
            std::fs::read_to_string(format!("/proc/{k}/stat")).map_or(true, |s| s.contains(") Z ")),
            "child {k} survived"
        );
    }

    // Quarantine and restore a file; refuse a system file.
    // (Not in the agent's data directory: the agent protects its own files.)
    let scratch = tempdir("respond", "scratch");
    let victim = scratch.join("payload.sh");
    std::fs::write(&victim, b"#!/bin/sh\necho pwned\n").unwrap();
    let v = victim.display().to_string();
    let (ok, out, err) = respond(
        &net,
        &srv,
        &admin,
        &["quarantine", &agent_id, &v, "--reason", "test: quarantine"],
    );
    assert!(ok, "{err}");
    assert!(!victim.exists());
    let item = out["item"]["id"].as_str().unwrap().to_string();
    let (ok, list, _) = respond(&net, &srv, &admin, &["list-quarantine", &agent_id]);
    assert!(ok && list["items"][0]["path"] == v.as_str(), "{list}");
    let (ok, _, err) = respond(
        &net,
        &srv,
        &admin,
        &[
            "restore",
            &agent_id,
            &item,
            "--allowlist",
            "--reason",
            "test: false positive",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"#!/bin/sh\necho pwned\n");
    // Restored with --allowlist: its hash is on the tenant's allowlist now.
    let (_, lists) = api(&net, &srv, &admin, "GET", "/api/v1/blocklist", None);
    let restored_hash = {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(&victim).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert!(
        lists["allow"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["sha256"] == restored_hash.as_str()),
        "{lists}"
    );
    let (ok, _, err) = respond(
        &net,
        &srv,
        &admin,
        &["quarantine", &agent_id, "/etc/passwd", "--reason", "test"],
    );
    assert!(!ok && err.contains("system file"), "{err}");
    let own = agent_dir.join("agent/identity.json").display().to_string();
    let (ok, _, err) = respond(
        &net,
        &srv,
        &admin,
        &["quarantine", &agent_id, &own, "--reason", "test"],
    );
    assert!(!ok && err.contains("belongs to the Mamori agent"), "{err}");

    // Collect a file: hashed, stored on the server, fetched back.
    let got = agent_dir.join("collected.bin");
    let (ok, out, err) = respond(
        &net,
        &srv,
        &admin,
        &[
            "collect-file",
            &agent_id,
            &v,
            "--out",
            got.to_str().unwrap(),
            "--reason",
            "test: evidence",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(&got).unwrap(),
        std::fs::read(&victim).unwrap()
    );
    assert_eq!(out["size"], 21);
    use sha2::Digest;
    let want: String = sha2::Sha256::digest(std::fs::read(&victim).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(out["sha256"], want.as_str());
    assert!(
        out["content_base64"].is_null(),
        "the content is stored apart, not in the action record"
    );

    // Block by hash: the next execution fails in the kernel, a prevention alert follows;
    // other files still run; an allowlisted hash and the agent's own program never block.
    let script = scratch.join("dropper.sh");
    let marker = format!("blocked-{}", std::process::id());
    std::fs::write(&script, format!("#!/bin/sh\necho {marker}\n")).unwrap();
    let other = scratch.join("harmless.sh");
    std::fs::write(&other, "#!/bin/sh\necho harmless\n").unwrap();
    for f in [&script, &other] {
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let hash = |p: &Path| -> String {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(p).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let runs = |p: &Path| Command::new(p).output().map(|o| o.status.success());
    assert!(runs(&script).unwrap(), "runs before it is blocked");
    let (ok, out, err) = respond(
        &net,
        &srv,
        &admin,
        &["block", &hash(&script), "--reason", "test: known dropper"],
    );
    assert!(ok, "{err}");
    assert_eq!(out["agents_updated"], 1, "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs(&script).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let e = runs(&script).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    assert!(runs(&other).unwrap(), "a file not on the list still runs");
    let deadline = Instant::now() + Duration::from_secs(15);
    let prevented = loop {
        let (_, alerts) = api(&net, &srv, &admin, "GET", "/api/v1/alerts", None);
        let found = alerts
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["rule_title"] == "Execution Prevented by the Hash Blocklist")
            .cloned();
        if found.is_some() || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let prevented = prevented.expect("a prevention alert");
    assert_eq!(
        prevented["evidence"][0]["file"]["hash"]["sha256"],
        hash(&script).as_str(),
        "{prevented}"
    );
    // The agent's own program is never blocked, even when listed.
    let (ok, _, err) = respond(
        &net,
        &srv,
        &admin,
        &[
            "block",
            &hash(Path::new(env!("CARGO_BIN_EXE_mamori"))),
            "--reason",
            "test: must not bite",
        ],
    );
    assert!(ok, "{err}");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        Command::new(env!("CARGO_BIN_EXE_mamori"))
            .arg("--version")
            .output()
            .unwrap()
            .status
            .success()
    );
    // Allowlisting wins over the blocklist, and blocking an allowlisted hash is refused.
    let (ok, _, err) = respond(
        &net,
        &srv,
        &admin,
        &["allow", &hash(&script), "--reason", "test: false positive"],
    );
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs(&script).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(runs(&script).unwrap(), "allowlisted: runs again");
    let (ok, _, err) = respond(&net, &srv, &admin, &["unblock", &hash(&script)]);
    assert!(ok, "{err}");
    let (ok, _, err) = respond(
        &net,
        &srv,
        &admin,
        &["block", &hash(&script), "--reason", "again"],
    );
    assert!(!ok && err.contains("allowlisted"), "{err}");

    // Everything is audited with who and why.
    let audit = sh(&[
        "env",
        &format!("MAMORI_DATA_DIR={}", srv.display()),
        env!("CARGO_BIN_EXE_mamori"),
        "server",
        "audit",
    ]);
    for a in [
        "response.isolate",
        "response.isolate.succeeded",
        "response.release",
        "response.kill",
        "response.kill.failed",
        "response.quarantine",
        "response.restore",
        "response.collect_file",
        "response.triage",
    ] {
        assert!(audit.contains(a), "audit lacks {a}:\n{audit}");
    }
    assert!(audit.contains("test: contain"), "the reason is audited");

    // Automatic containment, 1: the prevented execution of a blocklisted file is Critical
    // (known-bad file on the host), and the policy isolated the host on its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first_auto = loop {
        let (_, list) = api(
            &net,
            &srv,
            &admin,
            "GET",
            &format!("/api/v1/actions?agent={agent_id}"),
            None,
        );
        let found = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["issued_by"] == "policy:auto-contain" && c["status"] == "succeeded")
            .cloned();
        if found.is_some() || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let first_auto = first_auto.expect("the known-bad file's alert isolated the host");
    assert!(
        first_auto["reason"].as_str().unwrap().contains("blocklist"),
        "{first_auto}"
    );
    assert!(
        !reaches(&net, "h", "10.201.2.1:8080"),
        "isolated automatically"
    );
    let (ok, _, err) = respond(
        &net,
        &srv,
        &admin,
        &["release", &agent_id, "--reason", "test: known-bad handled"],
    );
    assert!(ok, "{err}");

    // Automatic containment, 2: two different high rules fire on one shell; the second
    // alert is Critical and the host is isolated at once.
    let marker = format!("sevmarker{}", std::process::id());
    for (n, part) in [(2, "a"), (3, "b")] {
        let rule = srv.join(format!("rule-{part}.yml"));
        std::fs::write(
            &rule,
            format!(
                "title: Test Marked Shell {part}\nid: 5b7f6a4e-0000-4000-8000-00000000c5e{n}\nstatus: test\n\
                 level: high\nlogsource:\n  product: linux\n  category: process_creation\n\
                 detection:\n  selection:\n    CommandLine|contains: '{marker}-{part}'\n  condition: selection\n"
            ),
        )
        .unwrap();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.ns("s"),
                "curl",
                "-s",
                "-w",
                "\n%{http_code}",
                "-X",
                "POST",
                "--cacert",
            ])
            .arg(srv.join("server/pki/ca.pem"))
            .args([
                "-H",
                &format!("Authorization: Bearer {admin}"),
                "-H",
                "Content-Type: application/yaml",
                "--data-binary",
            ])
            .arg(format!("@{}", rule.display()))
            .arg("https://10.201.1.1:7443/api/v1/rules")
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(t.ends_with("\n201"), "{t}");
    }
    let t0 = Instant::now();
    let attack = Command::new("ip")
        .args(["netns", "exec", &net.ns("h"), "sh", "-c"])
        .arg(format!("true {marker}-a {marker}-b; sleep 0.2"))
        .status()
        .unwrap();
    assert!(attack.success(), "the marked shell ran");
    let deadline = Instant::now() + Duration::from_secs(20);
    let auto = loop {
        let (_, list) = api(
            &net,
            &srv,
            &admin,
            "GET",
            &format!("/api/v1/actions?agent={agent_id}"),
            None,
        );
        let found = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| {
                c["issued_by"] == "policy:auto-contain"
                    && c["status"] == "succeeded"
                    && c["id"] != first_auto["id"]
            })
            .cloned();
        if found.is_some() || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t0.elapsed();
    let (_, alerts) = api(&net, &srv, &admin, "GET", "/api/v1/alerts", None);
    let marked = alerts
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| {
            a["rule_title"]
                .as_str()
                .unwrap_or("")
                .starts_with("Test Marked Shell")
                && a["severity"] == "critical"
        })
        .cloned()
        .unwrap_or_else(|| panic!("no alert for the marked shell: {alerts}"));
    let auto = auto.unwrap_or_else(|| panic!("no automatic isolation; alert: {marked}"));
    eprintln!("attack started → host isolated automatically and verified: {took:?}");
    assert_eq!(marked["severity"], "critical", "{marked}");
    assert!(
        marked["severity_reasons"]
            .to_string()
            .contains("2 different rules"),
        "{marked}"
    );
    assert_eq!(auto["action"], "isolate");
    assert_eq!(auto["output"]["probe"]["result"], "blocked", "{auto}");
    assert!(
        !reaches(&net, "h", "10.201.2.1:8080"),
        "isolated automatically"
    );
    let (ok, _, err) = respond(
        &net,
        &srv,
        &admin,
        &[
            "release",
            &agent_id,
            "--reason",
            "test: after auto-containment",
        ],
    );
    assert!(ok, "{err}");
    assert!(reaches(&net, "h", "10.201.2.1:8080"));

    // Blocking holds without the server: the list is on the host.
    let offline = scratch.join("offline.sh");
    std::fs::write(&offline, format!("#!/bin/sh\necho offline-{marker}\n")).unwrap();
    std::fs::set_permissions(
        &offline,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (ok, _, err) = respond(
        &net,
        &srv,
        &admin,
        &["block", &hash(&offline), "--reason", "test: offline"],
    );
    assert!(ok, "{err}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while runs(&offline).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);
    drop(agent);
    let agent = start_agent(&net, &agent_dir);
    let e = runs(&offline).unwrap_err();
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied,
        "blocked with the server down: {e}"
    );
    assert!(runs(&other).unwrap());
    drop(agent);
    // With the agent gone, nothing is hooked any more.
    assert!(runs(&offline).unwrap());
}

/// The scenario the SOC is judged by, on a host of its own: the attack imitation
/// (`mamori demo attack`) runs in the host namespace; the server (with the SigmaHQ corpus)
/// must open exactly one Critical incident, judged malicious, isolate the host automatically
/// and verify it, notify by email (a real SMTP server, aiosmtpd) and webhook, meet the
/// first-notice clock, and serve the report in both languages.
#[test]
fn attack_imitation_is_one_critical_incident_isolated_and_notified() {
    if !can_run(
        "attack_imitation_is_one_critical_incident_isolated_and_notified",
        "network namespaces, nftables, eBPF",
    ) {
        return;
    }
    let net = Net::create();
    let (srv, agent_dir) = (
        tempdir("respond", "soc-srv"),
        tempdir("respond", "soc-agent"),
    );
    common::install_sigma(&srv);

    // Mail and a webhook receiver, next to the server.
    let maildir = srv.join("maildir");
    let mut smtpd = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.ns("s"),
            "/usr/bin/python3",
            "-m",
            "aiosmtpd",
            "-n",
        ])
        .args(["-l", "127.0.0.1:2525", "-c", "aiosmtpd.handlers.Mailbox"])
        .arg(&maildir)
        .stderr(Stdio::null())
        .spawn()
        .expect("aiosmtpd (apt install python3-aiosmtpd)");
    let hook = net.within("s", || TcpListener::bind("127.0.0.1:8099").unwrap());
    let (hook_tx, hooks) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for s in hook.incoming().flatten() {
            let mut s = s;
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let t = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = t.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
            let _ = hook_tx.send(String::from_utf8_lossy(&buf).to_string());
        }
    });

    let policy = srv.join("soc-policy.toml");
    std::fs::write(
        &policy,
        "internal_networks = [\"10.201.1.0/24\", \"10.201.3.0/24\", \"127.0.0.0/8\", \"::1/128\"]\n\
         [incidents]\nreport_quiet_seconds = 3\n\
         [smtp]\nserver = \"127.0.0.1:2525\"\nfrom = \"mamori@example.com\"\ntls = \"none\"\n\
         [[notify]]\nkind = \"email\"\nto = [\"customer@example.com\"]\nlanguage = \"ja\"\n\
         [[notify]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:8099/soc\"\nmin_severity = \"critical\"\n",
    )
    .unwrap();
    let config = srv.join("server.toml");
    std::fs::write(&config, format!("soc_policy = \"{}\"\n", policy.display())).unwrap();
    let (_server, admin, fp, token) = start_server(&net, &srv, &config);
    enroll_agent(&net, &agent_dir, &token, &fp);
    // Network collection on: the beacon to the outside peer is external communication.
    let _agent = start_agent_without(&net, &agent_dir, "file,login");
    std::thread::sleep(Duration::from_secs(2));

    echo(&net, "o", "10.201.2.1:8080");
    assert!(
        reaches(&net, "h", "10.201.2.1:8080"),
        "before: host -> outside"
    );

    // The attack imitation, on the host.
    let started = crate_now_ms();
    let out = mamori(&agent_dir, &net.ns("h"))
        .args(["demo", "attack", "--c2", "10.201.2.1:8080"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let (incident, isolation) = loop {
        let (_, list) = api(&net, &srv, &admin, "GET", "/api/v1/incidents", None);
        let critical: Vec<Value> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["severity"] == "critical")
            .cloned()
            .collect();
        let (_, actions) = api(&net, &srv, &admin, "GET", "/api/v1/actions", None);
        let iso = actions
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| {
                c["issued_by"] == "policy:auto-contain"
                    && c["action"] == "isolate"
                    && c["status"] == "succeeded"
            })
            .cloned();
        if (!critical.is_empty() && iso.is_some()) || Instant::now() > deadline {
            assert_eq!(critical.len(), 1, "exactly one Critical incident: {list}");
            break (
                critical[0].clone(),
                iso.expect("the host isolated automatically"),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "attack imitation started → host isolated automatically and verified: {} ms",
        isolation["updated_ms"].as_i64().unwrap() - started
    );
    assert_eq!(
        isolation["output"]["probe"]["result"], "blocked",
        "{isolation}"
    );
    assert!(
        !reaches(&net, "h", "10.201.2.1:8080"),
        "the host is cut off from the outside"
    );
    let id = incident["id"].as_i64().unwrap();
    // The beacon's destination comes from the event store (once compacted).
    let deadline = Instant::now() + Duration::from_secs(20);
    let inc = loop {
        let (_, inc) = api(
            &net,
            &srv,
            &admin,
            "GET",
            &format!("/api/v1/incidents/{id}"),
            None,
        );
        let found = inc["destinations"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["address"] == "10.201.2.1:8080" && d["external"] == true);
        if found || Instant::now() > deadline {
            assert!(found, "the C2 is among the destinations: {inc}");
            break inc;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(inc["verdict"], "malicious", "{inc}");
    assert_eq!(inc["hosts"][0]["isolated"], true, "{inc}");
    assert!(
        inc["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["automatic"] == true && a["status"] == "succeeded"),
        "{inc}"
    );

    // Notifications: email (Japanese) and webhook; clocks met.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut hooked = Vec::new();
    let mails = loop {
        while let Ok(h) = hooks.try_recv() {
            hooked.push(h);
        }
        let mails: Vec<String> = std::fs::read_dir(maildir.join("new"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        if (mails.len() >= 2 && hooked.len() >= 2) || Instant::now() > deadline {
            break mails;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let _ = smtpd.kill();
    let _ = smtpd.wait();
    assert!(
        mails.len() >= 2,
        "notice and report by email: {}",
        mails.len()
    );
    assert!(
        mails.iter().any(|m| m.contains("application/pdf")),
        "the report carries its PDF"
    );
    assert!(
        hooked.len() >= 2,
        "notice and report by webhook: {hooked:?}"
    );
    assert!(hooked.iter().all(|h| h.starts_with("POST /soc ")));
    let (_, inc) = api(
        &net,
        &srv,
        &admin,
        "GET",
        &format!("/api/v1/incidents/{id}"),
        None,
    );
    let clocks = &inc["clocks"];
    assert!(
        clocks["first_notice_at"].as_i64().unwrap() <= clocks["first_notice_due"].as_i64().unwrap(),
        "{clocks}"
    );
    assert!(
        clocks["report_at"].as_i64().unwrap() <= clocks["report_due"].as_i64().unwrap(),
        "{clocks}"
    );

    // The report in both languages says what was done and what to do.
    for (lang, needles) in [
        (
            "en",
            [
                "from the network automatically",
                "What to do now",
                "mamori respond release",
            ],
        ),
        (
            "ja",
            [
                "自動的に隔離しました",
                "今すぐ行うこと",
                "mamori respond release",
            ],
        ),
    ] {
        let out = Command::new("ip")
            .args(["netns", "exec", &net.ns("s"), "curl", "-s", "--cacert"])
            .arg(srv.join("server/pki/ca.pem"))
            .args(["-H", &format!("Authorization: Bearer {admin}")])
            .arg(format!(
                "https://10.201.1.1:7443/api/v1/incidents/{id}/report?lang={lang}"
            ))
            .output()
            .unwrap();
        let html = String::from_utf8_lossy(&out.stdout);
        for n in needles {
            assert!(html.contains(n), "{lang}: {n:?} not in the report");
        }
    }
}

fn crate_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
