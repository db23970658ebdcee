//! Coverage by ATT&CK technique: which technique folders of a labelled corpus (such as
//! EVTX-to-MITRE-Attack, organised `TA0002-Execution/T1059.001-PowerShell/…`) any rule
//! detects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mamori_model::Level;
use mamori_sigma::RuleSet;

use crate::{HuntOptions, hunt};

/// Coverage of one folder.
#[derive(Debug, Clone)]
pub struct FolderCoverage {
    /// Folder path relative to the corpus root.
    pub folder: String,
    /// Log files in it.
    pub files: usize,
    /// Records read.
    pub records: u64,
    /// Detections.
    pub detections: usize,
    /// Most severe level detected.
    pub max_level: Option<Level>,
    /// Rule titles that fired, most frequent first, with counts.
    pub rules: Vec<(String, usize)>,
}

/// The folders to report: technique folders (`T…` under a tactic folder), and other
/// top-level folders as they are.
pub fn folders(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut top: Vec<PathBuf> = std::fs::read_dir(root)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    top.sort();
    for t in top {
        let mut subs: Vec<PathBuf> = std::fs::read_dir(&t)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_dir()
                    && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                        n.starts_with('T') && n.as_bytes().get(1).is_some_and(u8::is_ascii_digit)
                    })
            })
            .collect();
        subs.sort();
        if subs.is_empty() {
            out.push(t);
        } else {
            out.extend(subs);
        }
    }
    Ok(out)
}

/// Hunts each folder of `root` and reports what fired.
pub fn coverage(rules: &RuleSet, root: &Path, jobs: usize) -> std::io::Result<Vec<FolderCoverage>> {
    let mut out = Vec::new();
    for folder in folders(root)? {
        let files = mamori_sources::discover(std::slice::from_ref(&folder))
            .map_err(std::io::Error::other)?;
        let opts = HuntOptions {
            jobs,
            ..HuntOptions::default()
        };
        let report = hunt(rules, &files, &opts, &|_| {});
        let mut by_rule: BTreeMap<String, usize> = BTreeMap::new();
        let mut max_level = None;
        for d in report.detections.iter() {
            let d = d.map_err(std::io::Error::other)?;
            *by_rule.entry(d.rule_title.clone()).or_default() += 1;
            max_level = max_level.max(Some(d.level));
        }
        let mut rules_fired: Vec<(String, usize)> = by_rule.into_iter().collect();
        rules_fired.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out.push(FolderCoverage {
            folder: folder
                .strip_prefix(root)
                .unwrap_or(&folder)
                .display()
                .to_string(),
            files: files.len(),
            records: report.records,
            detections: report.detections.len(),
            max_level,
            rules: rules_fired,
        });
    }
    Ok(out)
}

/// Renders the coverage as a Markdown table.
pub fn markdown(rows: &[FolderCoverage]) -> String {
    let mut s = String::from(
        "| folder | files | records | detections | max level | rules that fired (top 3) |\n|---|---:|---:|---:|---|---|\n",
    );
    for r in rows {
        let top: Vec<String> = r
            .rules
            .iter()
            .take(3)
            .map(|(t, n)| format!("{t} ({n})"))
            .collect();
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.folder,
            r.files,
            r.records,
            r.detections,
            r.max_level.map(|l| l.as_str()).unwrap_or("**none**"),
            top.join("; ").replace('|', "\\|")
        ));
    }
    let covered = rows.iter().filter(|r| r.detections > 0).count();
    s.push_str(&format!(
        "\n{covered} of {} folders have at least one detection.\n",
        rows.len()
    ));
    s
}
