//! Correlation rules (event_count, value_count, temporal, temporal_ordered) over a stream of
//! detections, with group-by, aliases and time spans.

use mamori_model::Event;
use mamori_sigma::{
    Compiler, CorrelationInput, CorrelationMatch, Correlator, RuleSet, parse::parse_documents,
};
use serde_json::json;

const BASE: &str = r#"
title: Failed logon
id: failed
name: failed_logon
logsource: {product: windows, service: security}
detection:
    sel: {EventID: 4625}
    condition: sel
---
title: Successful logon
id: success
name: successful_logon
logsource: {product: windows, service: security}
detection:
    sel: {EventID: 4624}
    condition: sel
"#;

fn build(corr: &str) -> RuleSet {
    let mut c = Compiler::default();
    for d in parse_documents(&format!("{BASE}---\n{corr}")) {
        c.add(d.unwrap());
    }
    let (set, rejected) = c.compile();
    assert!(
        rejected.is_empty(),
        "{:?}",
        rejected
            .iter()
            .map(|r| r.error.to_string())
            .collect::<Vec<_>>()
    );
    set
}

fn logon(id: u32, user: &str, ip: &str, t: i64) -> (Event, i64) {
    (
        Event::new(
            json!({"Event": {"System": {"Channel": "Security", "EventID": id},
            "EventData": {"TargetUserName": user, "IpAddress": ip}}}),
        ),
        t * 1000,
    )
}

/// Scans events in order and streams matches through the correlator.
fn run(set: &RuleSet, events: &[(Event, i64)]) -> Vec<CorrelationMatch> {
    let mut scanner = set.scanner();
    let mut corr = Correlator::new(set);
    let mut out = Vec::new();
    let mut hits = Vec::new();
    for (i, (e, t)) in events.iter().enumerate() {
        hits.clear();
        scanner.scan(e, &mut hits);
        for &h in &hits {
            if set.feeds_correlation(h) {
                let fields = set
                    .correlation_fields(h)
                    .iter()
                    .map(|f| (f.clone(), scanner.value(f).unwrap_or_default().to_string()))
                    .collect();
                corr.push(
                    &CorrelationInput {
                        rule: h,
                        time_ms: *t,
                        id: i as u64,
                        fields,
                    },
                    &mut out,
                );
            }
        }
    }
    corr.finish(&mut out);
    out
}

#[test]
fn event_count_per_group_within_timespan() {
    let set = build(
        "title: Brute force\ncorrelation:\n  type: event_count\n  rules: [failed_logon]\n  group-by: [TargetUserName]\n  timespan: 1m\n  condition: {gte: 3}\nlevel: high\n",
    );
    let corr_idx = set
        .rules()
        .iter()
        .position(|r| r.meta.title == "Brute force")
        .unwrap();
    assert!(
        !set.rules()[set.find("failed").unwrap()].reported,
        "generate defaults to false"
    );
    let events = vec![
        logon(4625, "alice", "1.1.1.1", 0),
        logon(4625, "bob", "1.1.1.1", 1),
        logon(4625, "alice", "1.1.1.1", 10),
        logon(4625, "alice", "1.1.1.1", 100), // outside the minute: window restarts
        logon(4625, "alice", "1.1.1.1", 110),
        logon(4625, "alice", "1.1.1.1", 120),
    ];
    let out = run(&set, &events);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].rule, corr_idx);
    assert_eq!(
        out[0].group,
        vec![("TargetUserName".to_string(), "alice".to_string())]
    );
    assert_eq!(out[0].count, 3);
    assert_eq!(out[0].ids, vec![3, 4, 5]);
}

#[test]
fn value_count_distinct_users_from_one_ip() {
    let set = build(
        "title: Spray\ncorrelation:\n  type: value_count\n  rules: [failed]\n  group-by: [IpAddress]\n  timespan: 5m\n  condition: {gte: 3, field: TargetUserName}\n",
    );
    let events = vec![
        logon(4625, "a", "9.9.9.9", 0),
        logon(4625, "a", "9.9.9.9", 1),
        logon(4625, "b", "9.9.9.9", 2),
        logon(4625, "c", "8.8.8.8", 3),
        logon(4625, "c", "9.9.9.9", 4),
    ];
    let out = run(&set, &events);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].group,
        vec![("IpAddress".to_string(), "9.9.9.9".to_string())]
    );
}

#[test]
fn temporal_and_ordered() {
    let unordered = build(
        "title: Fail then success\ncorrelation:\n  type: temporal\n  rules: [successful_logon, failed_logon]\n  group-by: [TargetUserName]\n  timespan: 1m\n",
    );
    let ordered = build(
        "title: Fail then success\ncorrelation:\n  type: temporal_ordered\n  rules: [successful_logon, failed_logon]\n  group-by: [TargetUserName]\n  timespan: 1m\n",
    );
    // Failure then success: temporal fires; ordered (success first) does not.
    let events = vec![
        logon(4625, "eve", "1.1.1.1", 0),
        logon(4624, "eve", "1.1.1.1", 5),
    ];
    assert_eq!(run(&unordered, &events).len(), 1);
    assert_eq!(run(&ordered, &events).len(), 0);
    let events = vec![
        logon(4624, "eve", "1.1.1.1", 0),
        logon(4625, "eve", "1.1.1.1", 5),
    ];
    assert_eq!(run(&ordered, &events).len(), 1);
    // Too far apart.
    let events = vec![
        logon(4624, "eve", "1.1.1.1", 0),
        logon(4625, "eve", "1.1.1.1", 500),
    ];
    assert_eq!(run(&ordered, &events).len(), 0);
}

#[test]
fn aliases_map_group_fields_per_rule() {
    let set = build(
        "title: Same account\ncorrelation:\n  type: temporal\n  rules: [failed, success]\n  group-by: [account]\n  timespan: 1m\n  aliases:\n    account:\n      failed: TargetUserName\n      success: IpAddress\n",
    );
    // The alias reads TargetUserName from failures and IpAddress from successes.
    let events = vec![logon(4625, "x", "a", 0), logon(4624, "y", "x", 1)];
    assert_eq!(run(&set, &events).len(), 1);
}

#[test]
fn upper_bounded_condition_is_judged_when_window_closes() {
    let set = build(
        "title: Few\ncorrelation:\n  type: event_count\n  rules: [failed]\n  group-by: [TargetUserName]\n  timespan: 1m\n  condition: {gte: 2, lt: 4}\n",
    );
    let many: Vec<_> = (0..5).map(|i| logon(4625, "a", "", i)).collect();
    assert!(
        run(&set, &many).is_empty(),
        "five in a window is not fewer than four"
    );
    let two = vec![logon(4625, "b", "", 0), logon(4625, "b", "", 1)];
    assert_eq!(run(&set, &two).len(), 1);
}

#[test]
fn generate_true_keeps_base_rule_reported() {
    let set = build(
        "title: C\ncorrelation:\n  type: event_count\n  rules: [failed]\n  timespan: 1m\n  condition: {gte: 2}\n  generate: true\n",
    );
    assert!(set.rules()[set.find("failed").unwrap()].reported);
}

#[test]
fn chained_correlations() {
    let set = build(
        "title: Burst\nname: burst\ncorrelation:\n  type: event_count\n  rules: [failed]\n  group-by: [TargetUserName]\n  timespan: 1m\n  condition: {gte: 2}\n---\ntitle: Burst then success\ncorrelation:\n  type: temporal_ordered\n  rules: [burst, success]\n  group-by: [TargetUserName]\n  timespan: 5m\n",
    );
    let events = vec![
        logon(4625, "z", "", 0),
        logon(4625, "z", "", 1),
        logon(4624, "z", "", 30),
    ];
    let out = run(&set, &events);
    let titles: Vec<&str> = out
        .iter()
        .map(|m| set.rules()[m.rule].meta.title.as_str())
        .collect();
    assert_eq!(titles, vec!["Burst", "Burst then success"]);
}
