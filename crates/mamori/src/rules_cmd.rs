//! `mamori rules …`: check, regress, install, coverage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use mamori_sigma::{CompileOptions, load};

use crate::data;

pub fn check(paths: &[PathBuf], placeholders: Option<&Path>, verbose: bool) -> Result<ExitCode> {
    let mut options = CompileOptions::default();
    if let Some(p) = placeholders {
        options.placeholders = load::load_placeholders(p)?;
    }
    let loaded = load::load(paths, &[], options).context("loading rules")?;
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for o in &loaded.report {
        match &o.error {
            Some(e) => {
                println!(
                    "FAIL {}: {}{}",
                    o.path.display(),
                    o.title
                        .as_deref()
                        .map(|t| format!("{t}: "))
                        .unwrap_or_default(),
                    e
                );
                let class = e.to_string();
                let class = class.split(':').next().unwrap_or("").to_string();
                *reasons.entry(class).or_default() += 1;
            }
            None if verbose => println!(
                "ok   {}: {}",
                o.path.display(),
                o.title.as_deref().unwrap_or("")
            ),
            None => {}
        }
    }
    println!("{} passed, {} failed", loaded.passed(), loaded.failed());
    Ok(if loaded.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn regress(dir: &Path, rules: &[PathBuf]) -> Result<ExitCode> {
    let (regression_dir, root) = if dir.join("regression_data").is_dir() {
        (dir.join("regression_data"), dir.to_path_buf())
    } else if dir.file_name().is_some_and(|n| n == "regression_data") {
        (
            dir.to_path_buf(),
            dir.parent().unwrap_or(Path::new(".")).to_path_buf(),
        )
    } else {
        bail!("{} holds no regression_data folder", dir.display());
    };
    let rule_dirs: Vec<PathBuf> = if rules.is_empty() {
        data::DEFAULT_SIGMA_DIRS
            .iter()
            .map(|d| root.join(d))
            .filter(|p| p.is_dir())
            .collect()
    } else {
        rules.to_vec()
    };
    let loaded = load::load(&rule_dirs, &[], CompileOptions::default()).context("loading rules")?;
    let (tests, errors) = mamori_hunt::regress::discover(&regression_dir, &root);
    for (p, e) in &errors {
        println!("FAIL {}: {e}", p.display());
    }
    let results = mamori_hunt::regress::run_all(&loaded.rules, &tests);
    let mut passed = 0;
    let mut failed = errors.len();
    for r in &results {
        if r.failure.is_none() && r.count_differs() {
            println!(
                "note {} ({}): {} matches, info.yml says {}",
                r.test.rule_title,
                r.test.rule_id,
                r.counts.first().copied().unwrap_or(0),
                r.test.match_count.unwrap_or(0)
            );
        }
        match &r.failure {
            None => passed += 1,
            Some(f) => {
                failed += 1;
                println!("FAIL {} ({}): {f}", r.test.rule_title, r.test.rule_id);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn copy_dir(from: &Path, to: &Path) -> Result<usize> {
    let mut n = 0;
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry?;
        let rel = entry.path().strip_prefix(from)?;
        let target = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target)?;
        } else if entry.file_type().is_file() {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
            n += 1;
        }
    }
    Ok(n)
}

pub fn install(from: &Path, version: Option<String>) -> Result<ExitCode> {
    let mut dirs = Vec::new();
    for d in data::DEFAULT_SIGMA_DIRS
        .iter()
        .chain(["rules-placeholder"].iter())
    {
        if from.join(d).is_dir() {
            dirs.push(*d);
        }
    }
    if !dirs.contains(&"rules") {
        bail!(
            "{} does not look like a SigmaHQ folder (no rules/ inside)",
            from.display()
        );
    }
    let version = match version {
        Some(v) => v,
        None => ["VERSION", "SOURCE.txt"]
            .iter()
            .find_map(|f| std::fs::read_to_string(from.join(f)).ok())
            .and_then(|t| {
                t.split_whitespace()
                    .find(|w| w.len() == 40 && w.chars().all(|c| c.is_ascii_hexdigit()))
                    .map(|c| format!("commit {c}"))
                    .or_else(|| t.lines().next().map(str::to_string))
            })
            .unwrap_or_else(|| "unknown".into()),
    };
    // Validate before replacing anything: the corpus must load.
    let sources: Vec<PathBuf> = dirs
        .iter()
        .filter(|d| **d != "rules-placeholder")
        .map(|d| from.join(d))
        .collect();
    let loaded =
        load::load(&sources, &[], CompileOptions::default()).context("validating the corpus")?;
    if loaded.passed() == 0 {
        bail!("no rule in {} loads; not installing", from.display());
    }
    let target = data::sigmahq_dir();
    let staging = target.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let mut files = 0;
    for d in &dirs {
        files += copy_dir(&from.join(d), &staging.join(d))?;
    }
    for extra in ["LICENSE", "SOURCE.txt"] {
        if from.join(extra).is_file() {
            std::fs::copy(from.join(extra), staging.join(extra))?;
        }
    }
    std::fs::write(staging.join("VERSION"), format!("{version}\n"))?;
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&staging, &target)
        .with_context(|| format!("installing into {}", target.display()))?;
    println!(
        "installed SigmaHQ ({version}) into {}: {files} files; {} rules load, {} skipped \
         (`mamori rules check {}` lists them with their reasons)",
        target.display(),
        loaded.passed(),
        loaded.failed(),
        target.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn coverage(dir: &Path, rules: &[PathBuf], jobs: Option<usize>) -> Result<ExitCode> {
    let loaded = data::load_rules(rules, CompileOptions::default())?;
    let jobs = jobs.unwrap_or_else(|| mamori_hunt::HuntOptions::default().jobs);
    let rows = mamori_hunt::coverage::coverage(&loaded.rules, dir, jobs)
        .with_context(|| format!("reading {}", dir.display()))?;
    print!("{}", mamori_hunt::coverage::markdown(&rows));
    Ok(if rows.iter().all(|r| r.detections > 0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn show_where() -> Result<ExitCode> {
    let dir = data::sigmahq_dir();
    println!("data directory: {}", data::data_dir().display());
    match std::fs::read_to_string(dir.join("VERSION")) {
        Ok(v) => println!("SigmaHQ corpus: {} ({})", dir.display(), v.trim()),
        Err(_) => println!(
            "SigmaHQ corpus: not installed (expected in {})",
            dir.display()
        ),
    }
    println!(
        "Mamori's own rules: {} files compiled into this binary",
        data::own_rules().len()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn dump(paths: &[PathBuf], event_id: Option<u32>) -> Result<ExitCode> {
    use std::io::Write;
    let files = mamori_sources::discover(paths)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for f in files {
        let mut failed = None;
        let stats = mamori_sources::read_file(&f, &mut |rec| {
            if failed.is_some() {
                return;
            }
            let kind = rec.event.kind();
            if event_id.is_some() && kind.event_id != event_id {
                return;
            }
            let mut fields = serde_json::Map::new();
            fields.insert("_source".into(), rec.source.to_string().into());
            rec.event.for_each_field(&mut |k, v| {
                fields.insert(k.to_string(), v.clone());
            });
            let written = serde_json::to_writer(&mut out, &fields)
                .map_err(std::io::Error::from)
                .and_then(|_| out.write_all(b"\n"));
            if let Err(e) = written {
                failed = Some(e);
            }
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        if stats.errors > 0 {
            eprintln!(
                "{}: {} unreadable records ({})",
                f.display(),
                stats.errors,
                stats.first_error.unwrap_or_default()
            );
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
