//! Offline hunting: run a compiled [`RuleSet`] over log files and build a timeline.
//!
//! [`hunt`] spreads the files over `jobs` threads (largest first), each with its own
//! [`mamori_sigma::Scanner`]; detections are merged and sorted by time. Matches of rules that
//! feed correlation rules are collected from every file, sorted by time and streamed through
//! one [`Correlator`], so correlations work across files. [`output`] renders the timeline as
//! a table, CSV or JSON lines, and [`Summary`] counts by level, rule, host and technique.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use mamori_model::{Level, attack};
use mamori_sigma::{CorrelationInput, Correlator, RuleSet};
use mamori_sources::{FileStats, Record};
use serde_json::{Value, json};

pub mod coverage;
pub mod output;
pub mod regress;
pub mod timeline;

pub use timeline::Timeline;
use timeline::{Collector, SortKey};

/// Options of a hunt.
#[derive(Debug, Clone)]
pub struct HuntOptions {
    /// Worker threads.
    pub jobs: usize,
    /// Detections below this level are not reported.
    pub min_level: Level,
    /// Events before this time are skipped.
    pub from: Option<DateTime<Utc>>,
    /// Events after this time are skipped.
    pub to: Option<DateTime<Utc>>,
}

impl Default for HuntOptions {
    fn default() -> Self {
        HuntOptions {
            jobs: std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(1),
            min_level: Level::Informational,
            from: None,
            to: None,
        }
    }
}

/// One detection on the timeline.
#[derive(Debug, Clone)]
pub struct Detection {
    /// Event time (for correlations: time of the last contributing event).
    pub timestamp: Option<DateTime<Utc>>,
    /// Host (Windows `Computer`, ECS `host.name`).
    pub host: String,
    /// Index of the rule in the rule set.
    pub rule: usize,
    /// Rule id.
    pub rule_id: String,
    /// Rule title.
    pub rule_title: String,
    /// Rule level.
    pub level: Level,
    /// Rule tags.
    pub tags: Vec<String>,
    /// Where the event came from (for correlations: the last contributing event).
    pub source: String,
    /// Key fields of the event, in display order.
    pub fields: Vec<(String, String)>,
    /// The event as compact JSON text (for correlations: a summary with the group and the
    /// contributing events). Text, not a tree: detections are kept until the timeline is
    /// sorted, and text is several times smaller.
    pub event: Arc<str>,
}

impl Detection {
    /// Rough heap size, for the timeline's memory budget.
    pub fn approx_size(&self) -> usize {
        std::mem::size_of::<Detection>()
            + self.host.len()
            + self.rule_id.len()
            + self.rule_title.len()
            + self.source.len()
            + self.tags.iter().map(|t| t.len() + 24).sum::<usize>()
            + self.fields.iter().map(|(k, v)| k.len() + v.len() + 48).sum::<usize>()
            // The event text is shared by the detections of one event; count it anyway.
            + self.event.len()
    }
}

/// Per-file result.
#[derive(Debug, Clone)]
pub struct FileResult {
    /// The file.
    pub path: PathBuf,
    /// What was read, or why the file could not be read.
    pub result: Result<FileStats, String>,
}

/// What a hunt produced.
#[derive(Debug, Default)]
pub struct HuntReport {
    /// Detections, sorted by time.
    pub detections: Timeline,
    /// Per-file statistics, in input order.
    pub files: Vec<FileResult>,
    /// Records read.
    pub records: u64,
    /// Records skipped by `--from`/`--to`.
    pub skipped_by_time: u64,
    /// Rule evaluations performed after routing and prefiltering.
    pub evaluated: u64,
    /// Correlation entries dropped because a window was full.
    pub correlation_dropped: u64,
}

impl HuntReport {
    /// Unreadable records across all files.
    pub fn record_errors(&self) -> u64 {
        self.files
            .iter()
            .map(|f| f.result.as_ref().map(|s| s.errors).unwrap_or(0))
            .sum()
    }

    /// Files that could not be read at all.
    pub fn failed_files(&self) -> usize {
        self.files.iter().filter(|f| f.result.is_err()).count()
    }
}

/// Key fields for a detection: the rule's own `fields`, else the common ones the event has.
fn key_fields(rules: &RuleSet, rule: usize, rec: &Record<'_>) -> Vec<(String, String)> {
    let info = &rules.rules()[rule];
    let wanted: Vec<&str> = if info.meta.fields.is_empty() {
        mamori_model::fields::KEY_FIELDS.to_vec()
    } else {
        info.meta.fields.iter().map(String::as_str).collect()
    };
    let mut found: Vec<(usize, String, String)> = Vec::new();
    rec.event.for_each_field(&mut |k, v| {
        let Some(pos) = wanted.iter().position(|w| *w == k) else {
            return;
        };
        if found.iter().any(|(p, _, _)| *p == pos) {
            return;
        }
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Null => return,
            other => other.to_string(),
        };
        if !text.is_empty() {
            found.push((pos, k.to_string(), text));
        }
    });
    found.sort_by_key(|(p, _, _)| *p);
    found.into_iter().take(6).map(|(_, k, v)| (k, v)).collect()
}

struct Shared<'a> {
    rules: &'a RuleSet,
    opts: &'a HuntOptions,
    files: Vec<(usize, PathBuf, u64)>,
    next: AtomicUsize,
    progress: &'a (dyn Fn(u64) + Sync),
}

/// What a correlation match shows of each contributing detection.
#[derive(Debug, Clone)]
struct Evidence {
    key: SortKey,
    title: String,
    source: String,
    timestamp: Option<DateTime<Utc>>,
    host: String,
}

struct WorkerOut {
    detections: Collector,
    corr: Vec<(CorrelationInput, Evidence)>,
    files: Vec<(usize, FileResult)>,
    records: u64,
    skipped: u64,
    evaluated: u64,
}

/// Runs `rules` over `files`. `progress` is called with the byte size of each finished file.
pub fn hunt(
    rules: &RuleSet,
    files: &[PathBuf],
    opts: &HuntOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> HuntReport {
    let mut sized: Vec<(usize, PathBuf, u64)> = files
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                i,
                p.clone(),
                std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect();
    sized.sort_by_key(|f| std::cmp::Reverse(f.2));
    let shared = Shared {
        rules,
        opts,
        files: sized,
        next: AtomicUsize::new(0),
        progress,
    };
    let jobs = opts.jobs.max(1).min(files.len().max(1));
    let outs: Mutex<Vec<WorkerOut>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                let out = worker(&shared);
                outs.lock().unwrap_or_else(|e| e.into_inner()).push(out);
            });
        }
    });
    let outs = outs.into_inner().unwrap_or_else(|e| e.into_inner());

    let mut report = HuntReport::default();
    let mut file_results: Vec<(usize, FileResult)> = Vec::new();
    let mut corr_inputs = Vec::new();
    let mut collectors = Vec::new();
    for o in outs {
        collectors.push(o.detections);
        file_results.extend(o.files);
        corr_inputs.extend(o.corr);
        report.records += o.records;
        report.skipped_by_time += o.skipped;
        report.evaluated += o.evaluated;
    }
    report.detections = Timeline::merge(collectors);
    file_results.sort_by_key(|(i, _)| *i);
    report.files = file_results.into_iter().map(|(_, f)| f).collect();

    if !corr_inputs.is_empty() {
        correlate(rules, opts, corr_inputs, &mut report);
    }
    report.detections.sort();
    report
}

fn worker(sh: &Shared<'_>) -> WorkerOut {
    let mut scanner = sh.rules.scanner();
    let mut out = WorkerOut {
        detections: Collector::default(),
        corr: Vec::new(),
        files: Vec::new(),
        records: 0,
        skipped: 0,
        evaluated: 0,
    };
    let mut hits = Vec::new();
    loop {
        let i = sh.next.fetch_add(1, Ordering::Relaxed);
        let Some((index, path, size)) = sh.files.get(i) else {
            break;
        };
        let result = mamori_sources::read_file(path, &mut |rec: Record<'_>| {
            out.records += 1;
            // Parsing the time costs; only do it when a window is set or something matched.
            let mut ts = None;
            if sh.opts.from.is_some() || sh.opts.to.is_some() {
                ts = rec.event.timestamp();
                let outside = ts.is_some_and(|t| {
                    sh.opts.from.is_some_and(|f| t < f) || sh.opts.to.is_some_and(|to| t > to)
                });
                if outside {
                    out.skipped += 1;
                    return;
                }
            }
            hits.clear();
            scanner.scan(&rec.event, &mut hits);
            if hits.is_empty() {
                return;
            }
            if ts.is_none() {
                ts = rec.event.timestamp();
            }
            let text: Arc<str> = match rec.text {
                Some(t) => Arc::from(t),
                None => Arc::from(rec.event.data.to_string()),
            };
            for &h in &hits {
                let info = &sh.rules.rules()[h];
                let feeds = sh.rules.feeds_correlation(h);
                if !feeds && (!info.reported || info.meta.level < sh.opts.min_level) {
                    continue;
                }
                let det = make_detection(sh.rules, h, &rec, ts, text.clone());
                let key = SortKey::new(ts, *index as u32, rec.source.record, h);
                if feeds {
                    let fields = sh
                        .rules
                        .correlation_fields(h)
                        .iter()
                        .map(|f| (f.clone(), scanner.value(f).unwrap_or_default().to_string()))
                        .collect();
                    let input = CorrelationInput {
                        rule: h,
                        time_ms: ts.map(|t| t.timestamp_millis()).unwrap_or(0),
                        id: 0,
                        fields,
                    };
                    let evidence = Evidence {
                        key,
                        title: det.rule_title.clone(),
                        source: det.source.clone(),
                        timestamp: det.timestamp,
                        host: det.host.clone(),
                    };
                    out.corr.push((input, evidence));
                }
                if info.reported && info.meta.level >= sh.opts.min_level {
                    out.detections.push(key, det);
                }
            }
        });
        out.files.push((
            *index,
            FileResult {
                path: path.clone(),
                result: result.map_err(|e| e.to_string()),
            },
        ));
        (sh.progress)(*size);
    }
    out.evaluated = scanner.stats().evaluated;
    out
}

fn make_detection(
    rules: &RuleSet,
    rule: usize,
    rec: &Record<'_>,
    ts: Option<DateTime<Utc>>,
    event: Arc<str>,
) -> Detection {
    let info = &rules.rules()[rule];
    Detection {
        timestamp: ts,
        host: rec.event.host().unwrap_or("").to_string(),
        rule,
        rule_id: info.meta.id.clone().unwrap_or_default(),
        rule_title: info.meta.title.clone(),
        level: info.meta.level,
        tags: info.meta.tags.clone(),
        source: rec.source.to_string(),
        fields: key_fields(rules, rule, rec),
        event,
    }
}

fn correlate(
    rules: &RuleSet,
    opts: &HuntOptions,
    mut inputs: Vec<(CorrelationInput, Evidence)>,
    report: &mut HuntReport,
) {
    inputs.sort_by_key(|(_, e)| e.key);
    let evidence: Vec<Evidence> = inputs.iter().map(|(_, e)| e.clone()).collect();
    let mut correlator = Correlator::new(rules);
    let mut fired = Vec::new();
    for (i, (mut input, _)) in inputs.into_iter().enumerate() {
        input.id = i as u64;
        correlator.push(&input, &mut fired);
    }
    correlator.finish(&mut fired);
    report.correlation_dropped = correlator.dropped;
    for m in fired {
        let info = &rules.rules()[m.rule];
        if info.meta.level < opts.min_level {
            continue;
        }
        let contributing: Vec<&Evidence> = m
            .ids
            .iter()
            .filter_map(|&i| evidence.get(i as usize))
            .collect();
        let mut hosts: Vec<&str> = contributing.iter().map(|d| d.host.as_str()).collect();
        hosts.sort();
        hosts.dedup();
        let kind = match info.kind {
            mamori_sigma::RuleKind::Correlation(k) => k.as_str(),
            mamori_sigma::RuleKind::Detection => "detection",
        };
        let ts = Utc.timestamp_millis_opt(m.last_ms).single();
        let key = contributing
            .last()
            .map(|e| SortKey {
                rule: m.rule as u32,
                ..e.key
            })
            .unwrap_or(SortKey::new(ts, u32::MAX, 0, m.rule));
        report.detections.push(key, Detection {
            timestamp: ts,
            host: hosts.join(","),
            rule: m.rule,
            rule_id: info.meta.id.clone().unwrap_or_default(),
            rule_title: info.meta.title.clone(),
            level: info.meta.level,
            tags: info.meta.tags.clone(),
            source: contributing
                .last()
                .map(|d| d.source.clone())
                .unwrap_or_default(),
            fields: m
                .group
                .iter()
                .cloned()
                .chain(std::iter::once(("count".to_string(), m.count.to_string())))
                .collect(),
            event: Arc::from(
                json!({
                    "correlation": kind,
                    "group": m.group.iter().cloned().collect::<BTreeMap<_, _>>(),
                    "count": m.count,
                    "first": Utc.timestamp_millis_opt(m.first_ms).single().map(|t| t.to_rfc3339()),
                    "last": ts.map(|t| t.to_rfc3339()),
                    "events": contributing.iter().map(|d| json!({
                        "rule_title": d.title, "source": d.source,
                        "timestamp": d.timestamp.map(|t| t.to_rfc3339()),
                    })).collect::<Vec<_>>(),
                })
                .to_string(),
            ),
        });
    }
}

/// Counts of a hunt's detections.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// By level, most severe first.
    pub by_level: Vec<(Level, usize)>,
    /// By rule title, most frequent first.
    pub by_rule: Vec<(String, Level, usize)>,
    /// By host, most frequent first.
    pub by_host: Vec<(String, usize)>,
    /// By ATT&CK technique, most frequent first.
    pub by_technique: Vec<(String, usize)>,
}

impl Summary {
    /// Counts `detections`.
    pub fn of<D: std::borrow::Borrow<Detection>>(
        detections: impl IntoIterator<Item = D>,
    ) -> Summary {
        let mut level: BTreeMap<Level, usize> = BTreeMap::new();
        let mut rule: BTreeMap<(String, Level), usize> = BTreeMap::new();
        let mut host: BTreeMap<String, usize> = BTreeMap::new();
        let mut tech: BTreeMap<String, usize> = BTreeMap::new();
        for d in detections {
            let d = d.borrow();
            *level.entry(d.level).or_default() += 1;
            *rule.entry((d.rule_title.clone(), d.level)).or_default() += 1;
            *host
                .entry(if d.host.is_empty() {
                    "-".into()
                } else {
                    d.host.clone()
                })
                .or_default() += 1;
            for t in attack::techniques(d.tags.iter().map(String::as_str)) {
                *tech.entry(t).or_default() += 1;
            }
        }
        let sorted = |m: BTreeMap<String, usize>| {
            let mut v: Vec<(String, usize)> = m.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v
        };
        let mut by_rule: Vec<(String, Level, usize)> =
            rule.into_iter().map(|((t, l), n)| (t, l, n)).collect();
        by_rule.sort_by(|a, b| {
            b.2.cmp(&a.2)
                .then_with(|| b.1.cmp(&a.1))
                .then_with(|| a.0.cmp(&b.0))
        });
        Summary {
            by_level: level.into_iter().rev().collect(),
            by_rule,
            by_host: sorted(host),
            by_technique: sorted(tech),
        }
    }
}

/// Convenience for tests and tools: hunts `paths` (files or directories) with `rules`.
pub fn hunt_paths(
    rules: &RuleSet,
    paths: &[PathBuf],
    opts: &HuntOptions,
) -> Result<HuntReport, String> {
    let files = mamori_sources::discover(paths).map_err(|e| e.to_string())?;
    Ok(hunt(rules, &files, opts, &|_| {}))
}
