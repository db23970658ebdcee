//! Hostile text in every field (agents and uploads control command lines, paths, host and
//! user names, times): rendering reports in both languages and formats never panics, and
//! HTML never carries a tag it was given.

use mamori_report::model::{AlertLine, Entry, File, Host, Incident, Monthly, Process, Seen};
use mamori_report::{Lang, html, pdf, text};

/// Pieces that break naive code: multi-byte characters at slicing points, surrogate-range
/// neighbours, controls, markup, very long words, RFC 3339 look-alikes.
const PIECES: &[&str] = &[
    "",
    " ",
    "é",
    "日本語",
    "😀",
    "\u{0}",
    "\r\n",
    "<script>",
    "&amp;",
    "\"'",
    "2026-11-26Tééééééééé",
    "2026-11-26T1ééééééééé",
    "2026-11-26T10:00:00Z",
    "Bearer",
    "password=x",
    "mamori_admin_0123456789abcdef0123456789abcdef",
    "\u{ffff}",
    "\u{feff}",
    "ｱｲｳ",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn text(&mut self) -> String {
        let n = self.next() % 12;
        let mut s = String::new();
        for _ in 0..n {
            s.push_str(PIECES[(self.next() % PIECES.len() as u64) as usize]);
            if self.next().is_multiple_of(5) {
                s.push_str(&"x".repeat((self.next() % 300) as usize));
            }
        }
        s
    }
}

#[test]
fn hostile_fields_never_break_a_report() {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let mut i = Incident {
            id: round,
            title: r.text(),
            severity: ["critical", "high", "medium", "low", "", "??"][round as usize % 6].into(),
            verdict: r.text(),
            verdict_reasons: vec![r.text(), r.text()],
            opened_at: r.next() as i64 % 4_000_000_000,
            users: vec![r.text()],
            tactics: vec![r.text(), "persistence".into()],
            techniques: vec![r.text()],
            blind_spots: vec![r.text()],
            ..Incident::default()
        };
        i.hosts.push(Host {
            agent: r.text(),
            name: r.text(),
            isolated: round % 2 == 0,
            isolated_by: r.text(),
        });
        i.files.push(File {
            path: r.text(),
            sha256: r.text(),
            seen_on: vec![Seen {
                host: r.text(),
                first: r.text(),
                events: r.next() % 10,
            }],
        });
        for _ in 0..3 {
            i.alerts.push(AlertLine {
                time: r.text(),
                rule: r.text(),
                command_line: r.text(),
                process: r.text(),
                host: r.text(),
                count: (r.next() % 5) as i64,
                ..AlertLine::default()
            });
            i.process_tree.push(Process {
                entity: r.text(),
                executable: r.text(),
                command_line: r.text(),
                depth: (r.next() % 40) as usize,
                rules: vec![r.text()],
                ..Process::default()
            });
            i.timeline.push(Entry {
                at_ms: r.next() as i64,
                kind: r.text(),
                host: r.text(),
                text: r.text(),
            });
        }
        for l in [Lang::En, Lang::Ja] {
            let d = text::incident(&i, l, 0);
            let h = html::render(&d);
            assert!(
                !h.contains("<script>"),
                "markup from the evidence is escaped"
            );
            let p = pdf::render(&d);
            assert!(p.starts_with(b"%PDF") && p.ends_with(b"%%EOF\n"));
            let (subject, body) = text::notice(&i, l, 0);
            assert!(subject.contains("Mamori") && !body.is_empty());
            let m = Monthly {
                period: r.text(),
                tenant: r.text(),
                hosts: vec![(r.text(), r.next() % 100)],
                gaps: vec![r.text()],
                top_incidents: vec![(1, r.text(), r.text())],
                ..Monthly::default()
            };
            let _ = pdf::render(&text::monthly(&m, l));
            assert!(!html::render(&text::monthly(&m, l)).contains("<script>"));
        }
        let _ = mamori_report::fmt_rfc3339(&r.text());
        let _ = mamori_report::redact(&r.text());
    }
}
