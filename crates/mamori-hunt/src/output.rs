//! Rendering a hunt: a table for people, CSV and JSON lines for machines.
//!
//! JSON lines carry, per detection: `timestamp`, `host`, `rule_id`, `rule_title`, `level`,
//! `tags`, `techniques`, `source` (file#record), `fields` (key fields) and `event`.

use std::io::{self, Write};

use mamori_model::attack;
use serde_json::json;

use crate::{Detection, HuntReport, Summary, Timeline};

fn ts(d: &Detection) -> String {
    d.timestamp
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Writes one detection as a JSON line.
pub fn write_jsonl(w: &mut dyn Write, d: &Detection) -> io::Result<()> {
    let v = json!({
        "timestamp": d.timestamp.map(|t| t.to_rfc3339()),
        "host": d.host,
        "rule_id": d.rule_id,
        "rule_title": d.rule_title,
        "level": d.level.as_str(),
        "tags": d.tags,
        "techniques": attack::techniques(d.tags.iter().map(String::as_str)),
        "source": d.source,
        "fields": d.fields.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "event": serde_json::value::RawValue::from_string(d.event.to_string())
            .map_err(io::Error::other)?,
    });
    serde_json::to_writer(&mut *w, &v)?;
    w.write_all(b"\n")
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes the CSV header.
pub fn write_csv_header(w: &mut dyn Write) -> io::Result<()> {
    writeln!(
        w,
        "timestamp,host,level,rule_title,rule_id,techniques,source,fields"
    )
}

/// Writes one detection as a CSV row.
pub fn write_csv(w: &mut dyn Write, d: &Detection) -> io::Result<()> {
    let fields: Vec<String> = d.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(
        w,
        "{},{},{},{},{},{},{},{}",
        csv_field(&ts(d)),
        csv_field(&d.host),
        d.level,
        csv_field(&d.rule_title),
        csv_field(&d.rule_id),
        csv_field(&attack::techniques(d.tags.iter().map(String::as_str)).join(" ")),
        csv_field(&d.source),
        csv_field(&fields.join(" | "))
    )
}

fn clip(s: &str, n: usize) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().count() <= n {
        s
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Writes the timeline as an aligned table `width` columns wide.
pub fn write_table(w: &mut dyn Write, timeline: &Timeline, width: usize) -> io::Result<()> {
    let mut host_w = 4;
    for d in timeline.iter() {
        host_w = host_w.max(d.map_err(io::Error::other)?.host.chars().count());
    }
    let host_w = host_w.clamp(4, 24);
    let rule_w = 48;
    writeln!(
        w,
        "{:<24} {:<host_w$} {:<8} {:<rule_w$} DETAILS",
        "TIMESTAMP", "HOST", "LEVEL", "RULE"
    )?;
    let fixed = 24 + 1 + host_w + 1 + 8 + 1 + rule_w + 1;
    let details_w = width.saturating_sub(fixed).max(20);
    for d in timeline.iter() {
        let d = d.map_err(io::Error::other)?;
        let details: Vec<String> = d.fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        writeln!(
            w,
            "{:<24} {:<host_w$} {:<8} {:<rule_w$} {}",
            ts(&d),
            clip(&d.host, host_w),
            d.level.as_str(),
            clip(&d.rule_title, rule_w),
            clip(&details.join(" ¦ "), details_w)
        )?;
    }
    Ok(())
}

/// Writes every detection as CSV (with its header) or JSON lines.
pub fn write_machine(w: &mut dyn Write, timeline: &Timeline, csv: bool) -> io::Result<()> {
    if csv {
        write_csv_header(w)?;
    }
    for d in timeline.iter() {
        let d = d.map_err(io::Error::other)?;
        if csv {
            write_csv(w, &d)?;
        } else {
            write_jsonl(w, &d)?;
        }
    }
    Ok(())
}

/// Writes the summary: counts by level, rule, host and technique, plus read statistics.
pub fn write_summary(w: &mut dyn Write, report: &HuntReport, top: usize) -> io::Result<()> {
    // Streams (spilled detections are read back one at a time); a read error was already
    // reported by the timeline output.
    let s = Summary::of(report.detections.iter().filter_map(Result::ok));
    writeln!(w)?;
    writeln!(w, "Summary")?;
    writeln!(
        w,
        "  {} detections in {} records from {} files ({} unreadable records, {} unreadable files)",
        report.detections.len(),
        report.records,
        report.files.len(),
        report.record_errors(),
        report.failed_files()
    )?;
    if report.skipped_by_time > 0 {
        writeln!(
            w,
            "  {} records outside --from/--to skipped",
            report.skipped_by_time
        )?;
    }
    writeln!(w, "  by level:")?;
    for (l, n) in &s.by_level {
        writeln!(w, "    {:<14} {n}", l.as_str())?;
    }
    writeln!(w, "  by rule (top {top}):")?;
    for (r, l, n) in s.by_rule.iter().take(top) {
        writeln!(w, "    {n:>6}  {:<8} {}", l.as_str(), r)?;
    }
    writeln!(w, "  by host:")?;
    for (h, n) in s.by_host.iter().take(top) {
        writeln!(w, "    {n:>6}  {h}")?;
    }
    writeln!(w, "  by ATT&CK technique (top {top}):")?;
    for (t, n) in s.by_technique.iter().take(top) {
        writeln!(w, "    {n:>6}  {t}")?;
    }
    let bad: Vec<_> = report
        .files
        .iter()
        .filter(|f| f.result.as_ref().map(|s| s.errors > 0).unwrap_or(true))
        .collect();
    if !bad.is_empty() {
        writeln!(w, "  input problems:")?;
        for f in bad {
            match &f.result {
                Ok(st) => writeln!(
                    w,
                    "    {}: {} unreadable records (first: {})",
                    f.path.display(),
                    st.errors,
                    st.first_error.as_deref().unwrap_or("-")
                )?,
                Err(e) => writeln!(w, "    {e}")?,
            }
        }
    }
    Ok(())
}
