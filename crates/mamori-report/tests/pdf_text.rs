//! The PDFs open in a real PDF reader (poppler's `pdftotext` and `pdfinfo`) and their text,
//! Japanese included, reads back exactly.

use std::process::Command;

use mamori_report::model::{AlertLine, Entry, Host, Incident};
use mamori_report::{Lang, pdf, text};

fn poppler() -> bool {
    let ok = Command::new("pdftotext").arg("-v").output().is_ok();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "pdftotext is missing under CI: install poppler-utils (scripts/deps.sh does)"
        );
        eprintln!("SKIPPED: pdftotext not installed (apt install poppler-utils)");
    }
    ok
}

#[test]
fn a_reader_extracts_the_text_of_both_languages() {
    if !poppler() {
        return;
    }
    let mut i = Incident {
        id: 3,
        title: "Linux Shell Pipe to Shell on web-01".into(),
        severity: "critical".into(),
        verdict: "malicious".into(),
        verdict_reasons: vec!["raised to critical: 2 different rules fired".into()],
        hosts: vec![Host {
            agent: "agt-1".into(),
            name: "web-01".into(),
            ..Host::default()
        }],
        users: vec!["alice".into()],
        ..Incident::default()
    };
    // Enough alerts for several pages.
    for n in 0..80 {
        i.alerts.push(AlertLine {
            id: n,
            time: "2026-11-26T19:45:01Z".into(),
            rule: format!("Rule number {n}"),
            severity: "high".into(),
            host: "web-01".into(),
            process: "/usr/bin/sh".into(),
            command_line: format!("sh -c 'echo {n} | base64 -d | sh'"),
            count: 1,
            reasons: vec![],
        });
        i.timeline.push(Entry {
            at_ms: 1_795_722_300_000 + n * 1000,
            kind: "event".into(),
            host: "web-01".into(),
            text: format!("timeline entry {n}"),
        });
    }
    let dir = std::env::temp_dir().join(format!("mamori-report-pdf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (l, needles) in [
        (
            Lang::En,
            vec![
                "What to do now",
                "web-01",
                "Rule number 11",
                "timeline entry 79",
                "malicious",
            ],
        ),
        (
            Lang::Ja,
            vec![
                "今すぐ行うこと",
                "重大度",
                "web-01",
                "timeline entry 79",
                "悪性",
            ],
        ),
    ] {
        let path = dir.join(format!("{}.pdf", l.code()));
        std::fs::write(&path, pdf::render(&text::incident(&i, l, 0))).unwrap();
        let out = Command::new("pdftotext")
            .args(["-enc", "UTF-8"])
            .arg(&path)
            .arg("-")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        for n in needles {
            assert!(
                text.contains(n),
                "{l:?}: {n:?} not in the PDF's text:\n{text}"
            );
        }
        let info = Command::new("pdfinfo").arg(&path).output().unwrap();
        let info = String::from_utf8_lossy(&info.stdout).to_string();
        let pages: usize = info
            .lines()
            .find_map(|l| l.strip_prefix("Pages:"))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0);
        assert!(pages >= 2, "{l:?}: several pages expected:\n{info}");
        assert!(info.contains("Linux Shell Pipe to Shell"), "title: {info}");
    }
    if std::env::var_os("KEEP_PDF").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
