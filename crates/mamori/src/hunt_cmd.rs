//! `mamori hunt`: detection over log files, printed as a timeline.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use mamori_hunt::{HuntOptions, output};
use mamori_model::Level;
use mamori_sigma::CompileOptions;

use crate::{Format, data};

/// Arguments of `mamori hunt`.
#[derive(Debug, Args)]
pub struct HuntArgs {
    /// EVTX or JSON files, or directories searched recursively (*.evtx, *.json, *.jsonl,
    /// *.ndjson, each possibly .gz).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Rule files or directories (repeatable). Default: the installed SigmaHQ corpus
    /// (`mamori rules where`) plus Mamori's own rules.
    #[arg(long, short)]
    rules: Vec<PathBuf>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Report only detections at or above this level.
    #[arg(long, default_value = "informational")]
    min_level: Level,
    /// Skip events before this time (RFC 3339, or `YYYY-MM-DD[ HH:MM:SS]` in UTC).
    #[arg(long, value_parser = parse_time)]
    from: Option<DateTime<Utc>>,
    /// Skip events after this time.
    #[arg(long, value_parser = parse_time)]
    to: Option<DateTime<Utc>>,
    /// Worker threads (default: one per CPU).
    #[arg(long, short)]
    jobs: Option<usize>,
    /// Values for `%placeholder%` names used with the `expand` modifier (YAML map).
    #[arg(long)]
    placeholders: Option<PathBuf>,
    /// Write the timeline to this file instead of standard output.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Do not print the summary (table format prints it to standard output, the machine
    /// formats to standard error).
    #[arg(long)]
    no_summary: bool,
    /// Print load and throughput statistics to standard error.
    #[arg(long)]
    stats: bool,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S") {
        return Ok(t.and_utc());
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    Err(format!(
        "{s:?} is not a time (use RFC 3339 like 2024-01-31T12:00:00Z, or 2024-01-31)"
    ))
}

pub fn run(args: HuntArgs) -> Result<ExitCode> {
    let mut options = CompileOptions::default();
    if let Some(p) = &args.placeholders {
        options.placeholders = mamori_sigma::load::load_placeholders(p)?;
    }
    let t0 = Instant::now();
    let loaded = data::load_rules(&args.rules, options)?;
    let load_time = t0.elapsed();
    if loaded.rules.rules().is_empty() && !args.rules.is_empty() {
        eprintln!("warning: no rules loaded from {:?}", args.rules);
    }
    if loaded.failed() > 0 {
        eprintln!(
            "note: {} rules loaded, {} skipped (see `mamori rules check`)",
            loaded.passed(),
            loaded.failed()
        );
    }
    let files = mamori_sources::discover(&args.paths).context("finding log files")?;
    if files.is_empty() {
        bail!("no EVTX or JSON files found in {:?}", args.paths);
    }
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} ({eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let opts = HuntOptions {
        jobs: args.jobs.unwrap_or_else(|| HuntOptions::default().jobs),
        min_level: args.min_level,
        from: args.from,
        to: args.to,
    };
    let t1 = Instant::now();
    let report = mamori_hunt::hunt(&loaded.rules, &files, &opts, &|n| bar.inc(n));
    let scan_time = t1.elapsed();
    bar.finish_and_clear();

    let sink: Box<dyn Write> = match &args.output {
        Some(p) => {
            Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut w = BufWriter::new(sink);
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(200);
    match args.format {
        Format::Table => {
            output::write_table(&mut w, &report.detections, width)?;
            if !args.no_summary {
                output::write_summary(&mut w, &report, 10)?;
            }
        }
        Format::Csv => output::write_machine(&mut w, &report.detections, true)?,
        Format::Jsonl => output::write_machine(&mut w, &report.detections, false)?,
    }
    w.flush()?;
    if args.format != Format::Table && !args.no_summary {
        output::write_summary(&mut std::io::stderr().lock(), &report, 10)?;
    }
    if let Some(e) = &report.detections.spill_error {
        eprintln!(
            "warning: could not spill detections to a temporary file ({e}); kept them in memory"
        );
    }
    if args.stats {
        let secs = scan_time.as_secs_f64().max(1e-9);
        eprintln!(
            "stats: {} rules ({} detection, {} correlation, {} prefiltered, {} literals) loaded in {:.3}s; \
             {} records in {:.3}s = {:.0} records/s with {} jobs; {} rule evaluations ({:.2} per record); \
             {} detections ({} spilled to disk)",
            loaded.rules.rules().len(),
            loaded.rules.detection_count(),
            loaded.rules.correlation_count(),
            loaded.rules.prefiltered_rules(),
            loaded.rules.prefilter_literals(),
            load_time.as_secs_f64(),
            report.records,
            secs,
            report.records as f64 / secs,
            opts.jobs,
            report.evaluated,
            report.evaluated as f64 / (report.records.max(1) as f64),
            report.detections.len(),
            report.detections.spilled()
        );
    }
    Ok(if report.detections.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
