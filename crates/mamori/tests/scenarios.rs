//! Scenarios written down in advance, run on this machine with the real sensor, the real
//! server and the SigmaHQ corpus (`mamori up`, the README's main job):
//!
//! 1. A benign workload — a build, a package install and removal, an archive, admin
//!    commands — must produce no High or Critical incident.
//! 2. The attack imitation (`mamori demo attack`) must produce exactly one Critical incident,
//!    judged malicious, with its report in both languages. Its host runs the server, so the
//!    policy records that it was not isolated automatically (isolation of a separate host is
//!    proven in `respond.rs`, in network namespaces).

mod common;
use common::{can_run, tempdir};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

struct Up(Child);
impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mamori(data: &Path, port: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mamori"));
    c.env("MAMORI_DATA_DIR", data)
        .env("MAMORI_LISTEN", format!("127.0.0.1:{port}"))
        .env("MAMORI_SERVER", format!("https://127.0.0.1:{port}"));
    c
}

fn incidents(data: &Path, port: u16, token: &str) -> Vec<Value> {
    let out = mamori(data, port)
        .env("MAMORI_TOKEN", token)
        .args(["soc", "incidents", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// One step of the benign workload; it must succeed (a workload that did not run proves
/// nothing).
fn run(what: &str, cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("benign workload: {what}: {e}"));
    assert!(
        out.status.success(),
        "benign workload: {what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn benign_workload_is_quiet_and_the_attack_is_one_critical_incident() {
    if !can_run(
        "benign_workload_is_quiet_and_the_attack_is_one_critical_incident",
        "to run the sensor",
    ) {
        return;
    }
    let data = tempdir("scenario", "up");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    common::install_sigma(&data);
    let mut child = mamori(&data, port)
        .args(["up", "--without", "file"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let up = Up(child);
    let (tx, rx) = mpsc::channel();
    let log = data.join("up.log");
    std::thread::spawn(move || {
        use std::io::Write;
        let mut f = std::fs::File::create(log).unwrap();
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = writeln!(f, "{l}");
            let _ = tx.send(l);
        }
    });
    let mut token = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("mamori up did not become ready; see {}", data.display()));
        if let Some(t) = l
            .split_whitespace()
            .find(|w| w.starts_with("mamori_admin_"))
        {
            token = Some(t.to_string());
        }
        if l.contains("collecting process") {
            break;
        }
    }
    let token = token.expect("mamori up prints the admin token");
    std::thread::sleep(Duration::from_secs(2));

    // 1. Benign workload.
    let work = data.join("work");
    std::fs::create_dir_all(work.join("pkg/DEBIAN")).unwrap();
    std::fs::create_dir_all(work.join("pkg/usr/share/mamori-benign")).unwrap();
    std::fs::write(
        work.join("pkg/DEBIAN/control"),
        "Package: mamori-benign-test\nVersion: 1.0\nArchitecture: all\n\
         Maintainer: Mamori <test@example.com>\nDescription: test package\n",
    )
    .unwrap();
    std::fs::write(work.join("pkg/usr/share/mamori-benign/README"), "hello\n").unwrap();
    std::fs::write(
        work.join("hello.c"),
        "#include <stdio.h>\nint main(void){puts(\"hi\");return 0;}\n",
    )
    .unwrap();
    run(
        "build (cc)",
        Command::new("cc")
            .arg(work.join("hello.c"))
            .arg("-o")
            .arg(work.join("hello")),
    );
    run("run the build", &mut Command::new(work.join("hello")));
    run(
        "package build",
        Command::new("dpkg-deb")
            .args(["--build"])
            .arg(work.join("pkg"))
            .arg(work.join("benign.deb")),
    );
    run(
        "package install",
        Command::new("dpkg").arg("-i").arg(work.join("benign.deb")),
    );
    run(
        "package removal",
        Command::new("dpkg").args(["-r", "mamori-benign-test"]),
    );
    run(
        "archive",
        Command::new("tar")
            .args(["czf"])
            .arg(work.join("a.tgz"))
            .arg("-C")
            .arg(&work)
            .arg("pkg"),
    );
    for (what, prog, args) in [
        ("processes", "ps", &["aux"][..]),
        ("disk", "df", &["-h"][..]),
        ("addresses", "ip", &["addr"][..]),
        ("kernel", "uname", &["-r"][..]),
        ("logins", "last", &["-n", "5"][..]),
        ("configuration", "ls", &["/etc"][..]),
    ] {
        run(what, Command::new(prog).args(args));
    }
    std::thread::sleep(Duration::from_secs(6));
    let quiet = incidents(&data, port, &token);
    let loud: Vec<&Value> = quiet
        .iter()
        .filter(|i| i["severity"] == "high" || i["severity"] == "critical")
        .collect();
    assert!(
        loud.is_empty(),
        "the benign workload raised High/Critical incidents: {loud:?}"
    );
    eprintln!(
        "benign workload: {} incidents, none High or Critical: {:?}",
        quiet.len(),
        quiet
            .iter()
            .map(|i| format!("{} ({})", i["title"], i["severity"]))
            .collect::<Vec<_>>()
    );

    // 2. The attack imitation.
    let started = Instant::now();
    let out = mamori(&data, port)
        .args(["demo", "attack"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let critical = loop {
        let c: Vec<Value> = incidents(&data, port, &token)
            .into_iter()
            .filter(|i| i["severity"] == "critical")
            .collect();
        if !c.is_empty() || Instant::now() > deadline {
            break c;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    eprintln!(
        "attack imitation → critical incident in {:?}",
        started.elapsed()
    );
    assert_eq!(
        critical.len(),
        1,
        "exactly one Critical incident: {critical:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let all = incidents(&data, port, &token);
    assert_eq!(
        all.iter().filter(|i| i["severity"] == "critical").count(),
        1,
        "still one: {all:?}"
    );
    let id = critical[0]["id"].as_i64().unwrap();
    let inc = mamori(&data, port)
        .env("MAMORI_TOKEN", &token)
        .args(["soc", "incident", &id.to_string()])
        .output()
        .unwrap();
    let inc: Value = serde_json::from_slice(&inc.stdout).unwrap();
    assert_eq!(inc["verdict"], "malicious", "{inc}");
    assert!(inc["alerts"].as_array().unwrap().len() >= 3, "{inc}");
    assert!(
        inc["actions"]
            .to_string()
            .contains("runs the Mamori server"),
        "the server's own host is not isolated, and the incident says so: {inc}"
    );
    for (lang, needle) in [("en", "What to do now"), ("ja", "今すぐ行うこと")] {
        let out = mamori(&data, port)
            .env("MAMORI_TOKEN", &token)
            .args(["soc", "report", &id.to_string(), "--lang", lang])
            .output()
            .unwrap();
        let html = String::from_utf8_lossy(&out.stdout);
        assert!(html.contains(needle), "{lang}: {needle}");
        assert!(html.contains("base64"), "{lang}: the report names what ran");
    }
    drop(up);
}
