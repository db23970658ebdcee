//! The `mamori` binary as a user runs it: `hunt` output formats, filters, exit codes,
//! correlations across files, compressed and corrupt input; `rules check|regress|install`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mamori"));
    // Never touch the user's data directory.
    c.env("MAMORI_DATA_DIR", tempdir("data"));
    c
}

fn tempdir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    mamori_model::testing::scratch_dir("mamori-cli", &format!("{n}-{tag}"))
}

fn shared() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    assert!(
        p.join("evtx").is_dir(),
        "shared test data missing in {} (../shared/data relative to the project root)",
        p.display()
    );
    p
}

const RULES: &str = r#"
title: Whoami Execution
id: 6a2c2b4e-0000-4000-8000-000000000001
level: medium
tags: [attack.discovery, attack.t1033]
logsource: {product: windows, category: process_creation}
detection:
    sel: {Image|endswith: '\whoami.exe'}
    condition: sel
---
title: Encoded PowerShell
id: 6a2c2b4e-0000-4000-8000-000000000002
level: high
tags: [attack.execution, attack.t1059.001]
logsource: {product: windows, category: process_creation}
detection:
    sel:
        Image|endswith: '\powershell.exe'
        CommandLine|contains|windash: ' -enc '
    condition: sel
---
title: Failed logon
id: 6a2c2b4e-0000-4000-8000-000000000003
name: failed_logon
level: low
logsource: {product: windows, service: security}
detection:
    sel: {EventID: 4625}
    condition: sel
---
title: Password guessing
id: 6a2c2b4e-0000-4000-8000-000000000004
level: high
tags: [attack.credential-access, attack.t1110]
correlation:
    type: event_count
    rules: [failed_logon]
    group-by: [TargetUserName]
    timespan: 10m
    condition: {gte: 4}
"#;

fn sysmon1(time: &str, image: &str, cmd: &str) -> String {
    serde_json::json!({"Event": {"System": {"Channel": "Microsoft-Windows-Sysmon/Operational",
        "EventID": 1, "Computer": "ws1", "TimeCreated_attributes": {"SystemTime": time}},
        "EventData": {"Image": image, "CommandLine": cmd, "User": "corp\\eve"}}})
    .to_string()
}

fn failed(time: &str, user: &str) -> String {
    serde_json::json!({"Event": {"System": {"Channel": "Security", "EventID": 4625, "Computer": "dc1",
        "TimeCreated_attributes": {"SystemTime": time}},
        "EventData": {"TargetUserName": user, "IpAddress": "10.0.0.9"}}})
    .to_string()
}

struct Setup {
    dir: PathBuf,
    rules: PathBuf,
    logs: PathBuf,
}

fn setup() -> Setup {
    let dir = tempdir("hunt");
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("test.yml"), RULES).unwrap();
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let a = [
        sysmon1(
            "2024-05-01T10:00:00Z",
            r"C:\Windows\System32\whoami.exe",
            "whoami /all",
        ),
        sysmon1(
            "2024-05-01T10:05:00Z",
            r"C:\Windows\System32\notepad.exe",
            "notepad",
        ),
        sysmon1(
            "2024-05-01T10:06:00Z",
            r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe",
            "powershell /enc SQBFAFgA",
        ),
        failed("2024-05-01T11:00:00Z", "admin"),
        failed("2024-05-01T11:01:00Z", "admin"),
    ];
    std::fs::write(logs.join("a.jsonl"), a.join("\n") + "\n").unwrap();
    // The rest of the burst is in another file: correlation works across files.
    let b = [
        failed("2024-05-01T11:02:00Z", "admin"),
        failed("2024-05-01T11:03:00Z", "admin"),
    ];
    std::fs::write(logs.join("b.json"), b.join("\n")).unwrap();
    Setup { dir, rules, logs }
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn hunt_jsonl_has_the_documented_keys() {
    let st = setup();
    let out = run(&[
        "hunt",
        "--rules",
        s(&st.rules),
        s(&st.logs),
        "--format",
        "jsonl",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let titles: Vec<&str> = lines
        .iter()
        .map(|l| l["rule_title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        vec![
            "Whoami Execution",
            "Encoded PowerShell",
            "Password guessing"
        ],
        "{text}"
    );
    for l in &lines {
        for key in [
            "timestamp",
            "host",
            "rule_id",
            "rule_title",
            "level",
            "tags",
            "source",
            "event",
        ] {
            assert!(l.get(key).is_some(), "missing {key} in {l}");
        }
    }
    assert_eq!(lines[0]["host"], "ws1");
    assert_eq!(lines[0]["level"], "medium");
    assert_eq!(lines[0]["timestamp"], "2024-05-01T10:00:00+00:00");
    assert!(lines[0]["source"].as_str().unwrap().ends_with("a.jsonl#1"));
    assert_eq!(
        lines[0]["event"]["Event"]["EventData"]["CommandLine"],
        "whoami /all"
    );
    assert_eq!(lines[1]["techniques"][0], "T1059.001");
    // The correlation: four failures for one account across two files.
    assert_eq!(lines[2]["event"]["count"], 4);
    assert_eq!(lines[2]["event"]["group"]["TargetUserName"], "admin");
    // The base rule feeds a correlation (generate: false): not reported on its own.
    assert!(!titles.contains(&"Failed logon"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 detections"), "{stderr}");
}

#[test]
fn hunt_table_csv_filters_and_exit_codes() {
    let st = setup();
    let out = run(&["hunt", "--rules", s(&st.rules), s(&st.logs)]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("TIMESTAMP"), "{table}");
    assert!(
        table.contains("Summary")
            && table.contains("by ATT&CK technique")
            && table.contains("T1033")
    );

    let out = run(&[
        "hunt",
        "--rules",
        s(&st.rules),
        s(&st.logs),
        "-f",
        "csv",
        "--min-level",
        "high",
    ]);
    let csv = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "timestamp,host,level,rule_title,rule_id,techniques,source,fields"
    );
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows.iter().skip(1).all(|r| r.contains(",high,")));

    let out = run(&[
        "hunt",
        "--rules",
        s(&st.rules),
        s(&st.logs),
        "-f",
        "jsonl",
        "--from",
        "2024-05-01T10:01:00Z",
        "--to",
        "2024-05-01 10:30:00",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("Encoded PowerShell"));

    // Nothing found: exit 0. Error: exit 2 with a message.
    let quiet = st.dir.join("quiet.jsonl");
    std::fs::write(
        &quiet,
        sysmon1("2024-05-01T10:00:00Z", r"C:\x\calc.exe", "calc"),
    )
    .unwrap();
    assert_eq!(
        run(&["hunt", "--rules", s(&st.rules), s(&quiet)])
            .status
            .code(),
        Some(0)
    );
    let out = run(&["hunt", "--rules", s(&st.rules), "/nonexistent/logs"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error:"));
    let out = run(&[
        "hunt",
        "--rules",
        s(&st.rules),
        s(&st.logs),
        "--from",
        "yesterday",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn hunt_without_installed_rules_says_what_to_do() {
    let st = setup();
    let out = run(&["hunt", s(&st.logs)]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mamori rules install"), "{err}");
}

#[test]
fn hunt_reads_gzip_and_survives_bad_lines() {
    let st = setup();
    let gz = st.dir.join("c.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    writeln!(
        enc,
        "{}",
        sysmon1(
            "2024-05-02T00:00:00Z",
            r"C:\Windows\System32\whoami.exe",
            "whoami"
        )
    )
    .unwrap();
    writeln!(enc, "{{not json").unwrap();
    writeln!(
        enc,
        "{}",
        sysmon1(
            "2024-05-02T00:01:00Z",
            r"C:\Windows\System32\whoami.exe",
            "whoami"
        )
    )
    .unwrap();
    enc.finish().unwrap();
    let out = run(&["hunt", "--rules", s(&st.rules), s(&gz), "-f", "jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 unreadable records"), "{err}");
    assert!(err.contains("line 2: invalid JSON"), "{err}");
}

#[test]
fn hunt_over_corrupt_evtx_counts_damage_and_keeps_going() {
    let src = shared().join("evtx/DeepBlueCLI/many-events-application.evtx");
    let data = std::fs::read(&src).unwrap();
    let dir = tempdir("corrupt");
    // Truncated mid-chunk, and a copy with garbage sprayed over its second chunk.
    std::fs::write(dir.join("truncated.evtx"), &data[..data.len() * 2 / 3]).unwrap();
    let mut sprayed = data.clone();
    for i in (4096 + 65536 + 512..4096 + 2 * 65536).step_by(97) {
        if i < sprayed.len() {
            sprayed[i] ^= 0x5a;
        }
    }
    std::fs::write(dir.join("sprayed.evtx"), &sprayed).unwrap();
    std::fs::write(dir.join("empty.evtx"), b"").unwrap();
    std::fs::write(dir.join("header-only.evtx"), &data[..4096.min(data.len())]).unwrap();
    let rules = tempdir("rules");
    std::fs::write(rules.join("r.yml"), RULES).unwrap();
    let out = run(&["hunt", "--rules", s(&rules), s(&dir), "-f", "jsonl"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{err}");
    // Records before the damage were read, and the damage is reported.
    let records: u64 = err
        .split_whitespace()
        .skip_while(|w| *w != "detections")
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(records > 100, "{err}");
    assert!(err.contains("input problems"), "{err}");
}

#[test]
fn rules_check_reports_reasons_and_counts() {
    let dir = tempdir("check");
    std::fs::write(dir.join("ok.yml"), RULES).unwrap();
    std::fs::write(
        dir.join("bad.yml"),
        "title: Bad\nlogsource: {product: windows, category: process_creation}\ndetection:\n  sel: {Image|frob: x}\n  condition: sel\n",
    )
    .unwrap();
    std::fs::write(dir.join("broken.yml"), "title: [unclosed\n").unwrap();
    let out = run(&["rules", "check", s(&dir)]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("unknown modifier `frob`"), "{text}");
    assert!(text.contains("invalid YAML"), "{text}");
    assert_eq!(text.lines().last(), Some("4 passed, 2 failed"));
}

#[test]
fn rules_install_then_hunt_with_the_default_set() {
    let sigma = tempdir("sigmahq");
    std::fs::create_dir_all(sigma.join("rules/windows")).unwrap();
    std::fs::write(sigma.join("rules/windows/r.yml"), RULES).unwrap();
    std::fs::write(sigma.join("VERSION"), "r2026-01-01\n").unwrap();
    let data = tempdir("data");
    let out = bin()
        .env("MAMORI_DATA_DIR", &data)
        .args(["rules", "install", "--from", s(&sigma)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("r2026-01-01"));
    let st = setup();
    let out = bin()
        .env("MAMORI_DATA_DIR", &data)
        .args(["hunt", s(&st.logs), "-f", "jsonl"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let where_out = bin()
        .env("MAMORI_DATA_DIR", &data)
        .args(["rules", "where"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&where_out.stdout).contains("r2026-01-01"));
    // A folder that is not a SigmaHQ checkout is refused.
    let out = bin()
        .env("MAMORI_DATA_DIR", &data)
        .args(["rules", "install", "--from", s(&st.logs)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn rules_regress_on_the_sigmahq_corpus() {
    let out = run(&["rules", "regress", s(&shared().join("sigma"))]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let last = text.lines().last().unwrap();
    let passed: u32 = last.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        passed >= 200 && last.ends_with(" passed, 0 failed"),
        "{last}"
    );
}
