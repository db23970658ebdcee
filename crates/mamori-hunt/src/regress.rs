//! SigmaHQ regression samples: every sample must trigger exactly the rule its `info.yml`
//! names, `match_count` times.
//!
//! Layout (SigmaHQ `regression_data/`): one folder per rule holding `info.yml` and the
//! sample as `<rule id>.evtx` (often with a `<rule id>.json` twin rendered from it). The
//! samples are matched with the whole loaded rule set — logsource routing, prefilter and
//! all — exactly as `mamori hunt` would, and the JSON twin is checked too, so the EVTX and
//! JSON readers must agree.

use std::path::{Path, PathBuf};

use mamori_sigma::RuleSet;
use yaml_rust2::{Yaml, YamlLoader};

/// One regression test from an `info.yml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegressionTest {
    /// The `info.yml` it came from.
    pub info: PathBuf,
    /// The rule id that must fire.
    pub rule_id: String,
    /// The rule title, for messages.
    pub rule_title: String,
    /// The sample (`type: evtx`), resolved against the corpus root.
    pub sample: PathBuf,
    /// How many matches are expected (`None`: at least one).
    pub match_count: Option<u64>,
}

/// The outcome of one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegressionResult {
    /// The test.
    pub test: RegressionTest,
    /// `None` if it passed; otherwise why not.
    pub failure: Option<String>,
    /// Matches of the named rule per sample file (EVTX, then the JSON twin).
    pub counts: Vec<u64>,
}

impl RegressionResult {
    /// Whether the count differs from the `match_count` that info.yml states. SigmaHQ's own
    /// runner only checks that the rule fires; some info.yml counts are the number of
    /// attack steps, not of matching events, so a difference is reported, not failed.
    pub fn count_differs(&self) -> bool {
        self.test
            .match_count
            .is_some_and(|want| self.counts.iter().any(|&n| n != want))
    }
}

/// Finds every test under `regression_dir`, resolving sample paths against `root` (the
/// folder that contains `regression_data`). Malformed `info.yml` files are returned as
/// errors with their reason.
pub fn discover(
    regression_dir: &Path,
    root: &Path,
) -> (Vec<RegressionTest>, Vec<(PathBuf, String)>) {
    let mut tests = Vec::new();
    let mut errors = Vec::new();
    let mut infos: Vec<PathBuf> = walkdir::WalkDir::new(regression_dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file() && e.file_name() == "info.yml")
        .map(|e| e.path().to_path_buf())
        .collect();
    infos.sort();
    for info in infos {
        match parse_info(&info, root) {
            Ok(t) => tests.extend(t),
            Err(e) => errors.push((info, e)),
        }
    }
    (tests, errors)
}

fn parse_info(info: &Path, root: &Path) -> Result<Vec<RegressionTest>, String> {
    let text = std::fs::read_to_string(info).map_err(|e| e.to_string())?;
    let docs = YamlLoader::load_from_str(&text).map_err(|e| format!("invalid YAML: {e}"))?;
    let doc = docs.first().ok_or("empty info.yml")?;
    let meta = &doc["rule_metadata"][0];
    let rule_id = meta["id"]
        .as_str()
        .ok_or("rule_metadata[0].id missing")?
        .to_string();
    let rule_title = meta["title"].as_str().unwrap_or("").to_string();
    let mut out = Vec::new();
    if let Yaml::Array(tests) = &doc["regression_tests_info"] {
        for t in tests {
            if t["type"].as_str() != Some("evtx") {
                continue;
            }
            let rel = t["path"].as_str().ok_or("regression test without path")?;
            out.push(RegressionTest {
                info: info.to_path_buf(),
                rule_id: rule_id.clone(),
                rule_title: rule_title.clone(),
                sample: root.join(rel),
                match_count: t["match_count"]
                    .as_i64()
                    .and_then(|n| u64::try_from(n).ok()),
            });
        }
    }
    Ok(out)
}

fn count_matches(rules: &RuleSet, rule: usize, path: &Path) -> Result<(u64, u64), String> {
    let mut scanner = rules.scanner();
    let mut hits = Vec::new();
    let mut n = 0;
    let stats = mamori_sources::read_file(path, &mut |rec| {
        hits.clear();
        scanner.scan(&rec.event, &mut hits);
        n += hits.iter().filter(|&&h| h == rule).count() as u64;
    })
    .map_err(|e| e.to_string())?;
    Ok((n, stats.records))
}

/// Runs one test: the named rule must be loaded and fire on the sample (and on its JSON
/// twin, the same number of times).
pub fn run_test(rules: &RuleSet, test: &RegressionTest) -> RegressionResult {
    let mut result = RegressionResult {
        test: test.clone(),
        failure: None,
        counts: Vec::new(),
    };
    let Some(rule) = rules.find(&test.rule_id) else {
        result.failure = Some(format!("rule {} is not loaded", test.rule_id));
        return result;
    };
    let mut samples = vec![test.sample.clone()];
    let twin = test.sample.with_extension("json");
    if twin.is_file() {
        samples.push(twin);
    }
    for s in samples {
        let name = s
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        match count_matches(rules, rule, &s) {
            Ok((n, records)) => {
                result.counts.push(n);
                if n == 0 {
                    result.failure = Some(format!("{name}: no match in {records} records"));
                    return result;
                }
            }
            Err(e) => {
                result.failure = Some(e);
                return result;
            }
        }
    }
    if result.counts.windows(2).any(|w| w[0] != w[1]) {
        result.failure = Some(format!(
            "EVTX and JSON twin disagree: {:?} matches",
            result.counts
        ));
    }
    result
}

/// Runs every test.
pub fn run_all(rules: &RuleSet, tests: &[RegressionTest]) -> Vec<RegressionResult> {
    tests.iter().map(|t| run_test(rules, t)).collect()
}
