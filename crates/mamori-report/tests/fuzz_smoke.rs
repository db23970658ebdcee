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

/// Up to eleven pieces, some followed by a run of up to 299 `x`.
fn hostile(r: &mut fastrand::Rng) -> String {
    let mut s = String::new();
    for _ in 0..r.usize(..12) {
        s.push_str(PIECES[r.usize(..PIECES.len())]);
        if r.u32(..5) == 0 {
            s.push_str(&"x".repeat(r.usize(..300)));
        }
    }
    s
}

#[test]
fn hostile_fields_never_break_a_report() {
    let mut r = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let mut i = Incident {
            id: round,
            title: hostile(&mut r),
            severity: ["critical", "high", "medium", "low", "", "??"][round as usize % 6].into(),
            verdict: hostile(&mut r),
            verdict_reasons: vec![hostile(&mut r), hostile(&mut r)],
            opened_at: r.i64(..) % 4_000_000_000,
            users: vec![hostile(&mut r)],
            tactics: vec![hostile(&mut r), "persistence".into()],
            techniques: vec![hostile(&mut r)],
            blind_spots: vec![hostile(&mut r)],
            ..Incident::default()
        };
        i.hosts.push(Host {
            agent: hostile(&mut r),
            name: hostile(&mut r),
            isolated: round % 2 == 0,
            isolated_by: hostile(&mut r),
        });
        i.files.push(File {
            path: hostile(&mut r),
            sha256: hostile(&mut r),
            seen_on: vec![Seen {
                host: hostile(&mut r),
                first: hostile(&mut r),
                events: r.u64(..10),
            }],
        });
        for _ in 0..3 {
            i.alerts.push(AlertLine {
                time: hostile(&mut r),
                rule: hostile(&mut r),
                command_line: hostile(&mut r),
                process: hostile(&mut r),
                host: hostile(&mut r),
                count: r.i64(..5),
                ..AlertLine::default()
            });
            i.process_tree.push(Process {
                entity: hostile(&mut r),
                executable: hostile(&mut r),
                command_line: hostile(&mut r),
                depth: r.usize(..40),
                rules: vec![hostile(&mut r)],
                ..Process::default()
            });
            i.timeline.push(Entry {
                at_ms: r.i64(..),
                kind: hostile(&mut r),
                host: hostile(&mut r),
                text: hostile(&mut r),
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
                period: hostile(&mut r),
                tenant: hostile(&mut r),
                hosts: vec![(hostile(&mut r), r.u64(..100))],
                gaps: vec![hostile(&mut r)],
                top_incidents: vec![(1, hostile(&mut r), hostile(&mut r))],
                ..Monthly::default()
            };
            let _ = pdf::render(&text::monthly(&m, l));
            assert!(!html::render(&text::monthly(&m, l)).contains("<script>"));
        }
        let _ = mamori_report::fmt_rfc3339(&hostile(&mut r));
        let _ = mamori_report::redact(&hostile(&mut r));
    }
}
