//! Tests on data we did not write: the SigmaHQ corpus and the recorded Windows attack logs in
//! `../shared/data` (relative to the project root).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mamori_hunt::{HuntOptions, hunt_paths};
use mamori_model::Event;
use mamori_sigma::{CompileOptions, RuleSet, load};

fn shared() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    assert!(
        p.join("sigma/rules").is_dir() && p.join("evtx").is_dir(),
        "shared test data missing: expected the SigmaHQ corpus and EVTX samples in {} \
         (../shared/data relative to the project root)",
        p.display()
    );
    p
}

fn corpus_dirs() -> Vec<PathBuf> {
    let s = shared().join("sigma");
    [
        "rules",
        "rules-threat-hunting",
        "rules-emerging-threats",
        "rules-dfir",
        "rules-compliance",
    ]
    .iter()
    .map(|d| s.join(d))
    .collect()
}

fn corpus(ignore_logsource: bool) -> &'static RuleSet {
    static ROUTED: OnceLock<RuleSet> = OnceLock::new();
    static UNROUTED: OnceLock<RuleSet> = OnceLock::new();
    let cell = if ignore_logsource { &UNROUTED } else { &ROUTED };
    cell.get_or_init(|| {
        let opts = CompileOptions {
            ignore_logsource,
            ..Default::default()
        };
        load::load(&corpus_dirs(), &[], opts)
            .expect("corpus loads")
            .rules
    })
}

#[test]
fn whole_corpus_loads_or_says_why() {
    let mut dirs = corpus_dirs();
    dirs.push(shared().join("sigma/rules-placeholder"));
    let loaded = load::load(&dirs, &[], CompileOptions::default()).unwrap();
    let total = loaded.report.len();
    assert!(
        total >= 3700,
        "expected the whole corpus, found {total} documents"
    );
    let mut unexplained = Vec::new();
    for o in &loaded.report {
        if let Some(e) = &o.error {
            let msg = e.to_string();
            // The only rules that may fail are those that need site-specific placeholder
            // values (rules-placeholder and a few others using `expand`).
            if !msg.contains("placeholder %") {
                unexplained.push(format!("{}: {msg}", o.path.display()));
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "unexpected failures:\n{}",
        unexplained.join("\n")
    );
    assert!(loaded.failed() <= 30, "{} failed", loaded.failed());
}

#[test]
fn every_regression_sample_triggers_its_rule() {
    let root = shared().join("sigma");
    let (tests, errors) = mamori_hunt::regress::discover(&root.join("regression_data"), &root);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(tests.len() >= 200, "found only {} tests", tests.len());
    let results = mamori_hunt::regress::run_all(corpus(false), &tests);
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| {
            r.failure
                .as_ref()
                .map(|f| format!("{}: {f}", r.test.rule_title))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} failures:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// Windows event ids each generic category may fire on (Sysmon, and the Security log for
/// process creation/termination).
fn allowed_ids(category: &str) -> Option<&'static [u32]> {
    Some(match category {
        "process_creation" => &[1, 4688],
        "network_connection" => &[3],
        "image_load" => &[7],
        "file_event" => &[11],
        "registry_set" => &[13],
        "registry_add" | "registry_delete" => &[12],
        "registry_event" => &[12, 13, 14],
        "process_access" => &[10],
        "pipe_created" => &[17, 18],
        "create_remote_thread" => &[8],
        "driver_load" => &[6],
        "dns_query" => &[22],
        "ps_script" => &[4104],
        "ps_module" => &[4103],
        _ => return None,
    })
}

#[test]
fn rules_fire_only_on_their_logsource_and_routing_prevents_overmatching() {
    let evtx = shared().join("evtx");
    let opts = HuntOptions {
        jobs: 2,
        ..HuntOptions::default()
    };
    let routed_set = corpus(false);
    let routed = hunt_paths(routed_set, std::slice::from_ref(&evtx), &opts).unwrap();
    assert!(routed.records > 10_000, "only {} records", routed.records);
    assert!(!routed.detections.is_empty());
    let mut checked = 0;
    for d in routed.detections.iter() {
        let d = d.unwrap();
        let info = &routed_set.rules()[d.rule];
        let Some(cat) = info.logsource.category.as_deref() else {
            continue;
        };
        let Some(ids) = allowed_ids(cat) else {
            continue;
        };
        let ev = Event::new(serde_json::from_str(&d.event).unwrap());
        let id = ev.kind().event_id.unwrap_or(0);
        assert!(
            ids.contains(&id),
            "{} ({cat}) fired on event id {id} at {}",
            d.rule_title,
            d.source
        );
        checked += 1;
    }
    assert!(
        checked > 500,
        "only {checked} detections had a checkable category"
    );

    let plain = hunt_paths(corpus(true), &[evtx], &opts).unwrap();
    let ratio = plain.detections.len() as f64 / routed.detections.len() as f64;
    println!(
        "detections with logsource routing: {}, without: {} ({:.0}% more)",
        routed.detections.len(),
        plain.detections.len(),
        (ratio - 1.0) * 100.0
    );
    assert!(
        ratio > 1.7,
        "plain Sigma should over-match by more than 70%, got {ratio:.2}x"
    );
}

#[test]
fn every_attack_technique_folder_has_a_detection_with_mamori_rules() {
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rules");
    let own_only = load::load(std::slice::from_ref(&own), &[], CompileOptions::default()).unwrap();
    assert_eq!(
        own_only.failed(),
        0,
        "{:?}",
        own_only
            .report
            .iter()
            .filter(|o| o.error.is_some())
            .collect::<Vec<_>>()
    );
    let mut dirs = corpus_dirs();
    dirs.push(own);
    let rules = load::load(&dirs, &[], CompileOptions::default())
        .unwrap()
        .rules;
    let root = shared().join("evtx/EVTX-to-MITRE-Attack");
    let rows = mamori_hunt::coverage::coverage(&rules, &root, 2).unwrap();
    assert!(rows.len() >= 60, "{} folders", rows.len());
    let blind: Vec<&str> = rows
        .iter()
        .filter(|r| r.detections == 0)
        .map(|r| r.folder.as_str())
        .collect();
    assert!(blind.is_empty(), "no detection in: {blind:?}");
}
