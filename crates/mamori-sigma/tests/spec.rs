//! Conformance with the Sigma specification (v2): each case is a rule, an event and whether
//! the rule must match. Events are Sysmon process-creation records unless they say otherwise,
//! so logsource routing is exercised as well.

use mamori_model::Event;
use mamori_sigma::{CompileOptions, Compiler, parse::parse_documents};
use serde_json::{Value, json};

fn sysmon1(data: Value) -> Event {
    Event::new(json!({"Event": {
        "System": {"Channel": "Microsoft-Windows-Sysmon/Operational", "EventID": 1,
                   "Computer": "pc1", "TimeCreated_attributes": {"SystemTime": "2024-01-01T00:00:00Z"}},
        "EventData": data}}))
}

fn compile_one(detection: &str, options: CompileOptions) -> mamori_sigma::RuleSet {
    let text = format!(
        "title: case\nid: case\nlogsource: {{product: windows, category: process_creation}}\ndetection:\n{detection}\n"
    );
    let mut c = Compiler::new(options);
    for d in parse_documents(&text) {
        c.add(d.unwrap_or_else(|e| panic!("parse failed: {e}\n{text}")));
    }
    let (set, rejected) = c.compile();
    assert!(
        rejected.is_empty(),
        "{text}\n{:?}",
        rejected
            .iter()
            .map(|r| r.error.to_string())
            .collect::<Vec<_>>()
    );
    set
}

fn matches(detection: &str, data: Value) -> bool {
    let set = compile_one(detection, CompileOptions::default());
    let mut hits = Vec::new();
    set.scanner().scan(&sysmon1(data), &mut hits);
    !hits.is_empty()
}

macro_rules! case {
    ($name:ident, $det:expr, $data:expr, $want:expr) => {
        #[test]
        fn $name() {
            assert_eq!(matches($det, $data), $want, "{}\n{}", $det, $data);
        }
    };
}

// Field maps, lists, case.
case!(
    equals_is_case_insensitive,
    "  sel: {Image: 'C:\\Windows\\cmd.exe'}\n  condition: sel",
    json!({"Image": "c:\\windows\\CMD.EXE"}),
    true
);
case!(
    equals_is_whole_value,
    "  sel: {Image: 'cmd.exe'}\n  condition: sel",
    json!({"Image": "c:\\cmd.exe"}),
    false
);
case!(
    list_is_or,
    "  sel: {Image|endswith: ['\\a.exe', '\\b.exe']}\n  condition: sel",
    json!({"Image": "c:\\b.exe"}),
    true
);
case!(
    map_is_and,
    "  sel: {Image|endswith: '\\a.exe', User: bob}\n  condition: sel",
    json!({"Image": "c:\\a.exe", "User": "alice"}),
    false
);
case!(
    list_of_maps_is_or,
    "  sel:\n    - {Image|endswith: '\\a.exe'}\n    - {User: bob}\n  condition: sel",
    json!({"Image": "x", "User": "BOB"}),
    true
);
case!(
    number_matches_string,
    "  sel: {ProcessId: 42}\n  condition: sel",
    json!({"ProcessId": "42"}),
    true
);
case!(
    string_matches_number,
    "  sel: {ProcessId: '42'}\n  condition: sel",
    json!({"ProcessId": 42}),
    true
);
case!(
    missing_field_no_match,
    "  sel: {Nope: x}\n  condition: sel",
    json!({"Image": "x"}),
    false
);
case!(
    null_matches_missing,
    "  sel: {Image: 'x', Nope: null}\n  condition: sel",
    json!({"Image": "x"}),
    true
);
case!(
    null_matches_empty,
    "  sel: {Nope: null}\n  condition: sel",
    json!({"Nope": ""}),
    true
);
case!(
    null_rejects_value,
    "  sel: {Nope: null}\n  condition: sel",
    json!({"Nope": "v"}),
    false
);
case!(
    empty_string_matches_empty,
    "  sel: {CommandLine: ''}\n  condition: sel",
    json!({"CommandLine": ""}),
    true
);
case!(
    array_values_any,
    "  sel: {Tag: b}\n  condition: sel",
    json!({"Tag": ["a", "b"]}),
    true
);
case!(
    keywords_any_field,
    "  kw: ['mimikatz', 'other']\n  condition: kw",
    json!({"CommandLine": "x MIMIKATZ y"}),
    true
);
case!(
    keywords_all,
    "  kw: {'|all': ['alpha', 'beta']}\n  condition: kw",
    json!({"A": "alpha", "B": "beta"}),
    true
);
case!(
    keywords_all_missing_one,
    "  kw: {'|all': ['alpha', 'beta']}\n  condition: kw",
    json!({"A": "alpha"}),
    false
);

// Wildcards and escapes.
case!(
    wildcard_star,
    "  sel: {Image: 'C:\\Users\\\\*\\evil.exe'}\n  condition: sel",
    json!({"Image": "C:\\Users\\bob\\evil.exe"}),
    true
);
case!(
    wildcard_question,
    "  sel: {Image: 'a?c'}\n  condition: sel",
    json!({"Image": "abc"}),
    true
);
case!(
    escaped_star_is_literal,
    "  sel: {CommandLine: 'a\\*b'}\n  condition: sel",
    json!({"CommandLine": "axxb"}),
    false
);
case!(
    escaped_star_matches_star,
    "  sel: {CommandLine: 'a\\*b'}\n  condition: sel",
    json!({"CommandLine": "a*b"}),
    true
);

// Modifiers.
case!(
    contains,
    "  sel: {CommandLine|contains: 'Invoke-'}\n  condition: sel",
    json!({"CommandLine": "x invoke-y"}),
    true
);
case!(
    startswith,
    "  sel: {CommandLine|startswith: 'net '}\n  condition: sel",
    json!({"CommandLine": "NET user"}),
    true
);
case!(
    endswith,
    "  sel: {Image|endswith: '\\net.exe'}\n  condition: sel",
    json!({"Image": "c:\\net.exe.bak"}),
    false
);
case!(
    contains_all,
    "  sel: {CommandLine|contains|all: [' -a', ' -b']}\n  condition: sel",
    json!({"CommandLine": "x -b -a"}),
    true
);
case!(
    contains_all_partial,
    "  sel: {CommandLine|contains|all: [' -a', ' -b']}\n  condition: sel",
    json!({"CommandLine": "x -a"}),
    false
);
case!(
    cased,
    "  sel: {CommandLine|contains|cased: 'AbC'}\n  condition: sel",
    json!({"CommandLine": "abc"}),
    false
);
case!(
    cased_ok,
    "  sel: {CommandLine|contains|cased: 'AbC'}\n  condition: sel",
    json!({"CommandLine": "xAbCx"}),
    true
);
case!(
    windash_slash,
    "  sel: {CommandLine|contains|windash: ' -nop '}\n  condition: sel",
    json!({"CommandLine": "powershell /nop -c"}),
    true
);
case!(
    windash_endash,
    "  sel: {CommandLine|contains|windash: ' -nop '}\n  condition: sel",
    json!({"CommandLine": "powershell \u{2013}nop -c"}),
    true
);
case!(
    base64,
    "  sel: {CommandLine|base64: 'abc'}\n  condition: sel",
    json!({"CommandLine": "YWJj"}),
    true
);
case!(
    base64offset,
    "  sel: {CommandLine|base64offset|contains: 'Invoke'}\n  condition: sel",
    json!({"CommandLine": "ZXhJbnZva2U="}),
    true
);
case!(
    utf16le_base64,
    "  sel: {CommandLine|wide|base64offset|contains: 'ping'}\n  condition: sel",
    json!({"CommandLine": "-enc cABpAG4AZwAgAA=="}),
    true
);
case!(
    utf16be_base64,
    "  sel: {CommandLine|utf16be|base64: 'A'}\n  condition: sel",
    json!({"CommandLine": "AEE="}),
    true
);
case!(
    utf16_bom_base64,
    "  sel: {CommandLine|utf16|base64: 'A'}\n  condition: sel",
    json!({"CommandLine": "//5BAA=="}),
    true
);
case!(
    re_case_sensitive,
    "  sel: {CommandLine|re: '^ab+c$'}\n  condition: sel",
    json!({"CommandLine": "ABBC"}),
    false
);
case!(
    re_i,
    "  sel: {CommandLine|re|i: '^ab+c$'}\n  condition: sel",
    json!({"CommandLine": "ABBC"}),
    true
);
case!(
    re_m,
    "  sel: {CommandLine|re|m: '^b$'}\n  condition: sel",
    json!({"CommandLine": "a\nb\nc"}),
    true
);
case!(
    re_s,
    "  sel: {CommandLine|re|s: 'a.c'}\n  condition: sel",
    json!({"CommandLine": "a\nc"}),
    true
);
case!(
    re_without_s,
    "  sel: {CommandLine|re: 'a.c'}\n  condition: sel",
    json!({"CommandLine": "a\nc"}),
    false
);
case!(
    cidr_v4,
    "  sel: {DestinationIp|cidr: '192.168.0.0/16'}\n  condition: sel",
    json!({"DestinationIp": "192.168.4.2"}),
    true
);
case!(
    cidr_v6,
    "  sel: {DestinationIp|cidr: 'fd00::/8'}\n  condition: sel",
    json!({"DestinationIp": "fd12::1"}),
    true
);
case!(
    cidr_miss,
    "  sel: {DestinationIp|cidr: '10.0.0.0/8'}\n  condition: sel",
    json!({"DestinationIp": "11.0.0.1"}),
    false
);
case!(
    gt,
    "  sel: {Size|gt: 10}\n  condition: sel",
    json!({"Size": 11}),
    true
);
case!(
    gte_edge,
    "  sel: {Size|gte: 10}\n  condition: sel",
    json!({"Size": "10"}),
    true
);
case!(
    lt,
    "  sel: {Size|lt: 10}\n  condition: sel",
    json!({"Size": 10}),
    false
);
case!(
    lte,
    "  sel: {Size|lte: 10.5}\n  condition: sel",
    json!({"Size": 10.5}),
    true
);
case!(
    exists_true,
    "  sel: {User|exists: true}\n  condition: sel",
    json!({"User": "x"}),
    true
);
case!(
    exists_false,
    "  sel: {User|exists: false}\n  condition: sel",
    json!({"User": "x"}),
    false
);
case!(
    exists_false_missing,
    "  sel: {User|exists: false}\n  condition: sel",
    json!({"Image": "x"}),
    true
);
case!(
    fieldref,
    "  sel: {ParentImage|fieldref: Image}\n  condition: sel",
    json!({"Image": "C:\\a.exe", "ParentImage": "c:\\A.exe"}),
    true
);
case!(
    fieldref_differs,
    "  sel: {ParentImage|fieldref: Image}\n  condition: sel",
    json!({"Image": "a", "ParentImage": "b"}),
    false
);
case!(
    fieldref_endswith,
    "  sel: {Image|fieldref|endswith: OriginalFileName}\n  condition: sel",
    json!({"Image": "c:\\x\\net.exe", "OriginalFileName": "net.exe"}),
    true
);

// Conditions.
case!(
    not_filter,
    "  sel: {Image|endswith: '\\a.exe'}\n  filter: {User: SYSTEM}\n  condition: sel and not filter",
    json!({"Image": "c:\\a.exe", "User": "system"}),
    false
);
case!(
    one_of_wildcard,
    "  sel_a: {Image: a}\n  sel_b: {Image: b}\n  condition: 1 of sel_*",
    json!({"Image": "b"}),
    true
);
case!(
    all_of_wildcard,
    "  sel_a: {Image: a}\n  sel_b: {User: b}\n  condition: all of sel_*",
    json!({"Image": "a", "User": "x"}),
    false
);
case!(
    all_of_them,
    "  s1: {Image: a}\n  s2: {User: b}\n  condition: all of them",
    json!({"Image": "a", "User": "b"}),
    true
);
case!(
    n_of_them,
    "  s1: {Image: a}\n  s2: {User: b}\n  s3: {CommandLine: c}\n  condition: 2 of them",
    json!({"Image": "a", "CommandLine": "c"}),
    true
);
case!(
    parentheses,
    "  a: {Image: a}\n  b: {User: b}\n  c: {CommandLine: c}\n  condition: a and (b or c)",
    json!({"Image": "a", "CommandLine": "c"}),
    true
);
case!(
    not_one_of,
    "  sel: {Image: a}\n  f_1: {User: x}\n  f_2: {User: y}\n  condition: sel and not 1 of f_*",
    json!({"Image": "a", "User": "y"}),
    false
);
case!(
    condition_list_is_or,
    "  a: {Image: a}\n  b: {Image: b}\n  condition: [a, b]",
    json!({"Image": "b"}),
    true
);

// Field mapping: Sigma names answer for ECS and Security-log names.
#[test]
fn ecs_fields_answer_sigma_names() {
    let set = compile_one(
        "  sel: {CommandLine|contains: whoami, ParentImage|endswith: /bash}\n  condition: sel",
        CompileOptions::default(),
    );
    // The same rule, given a Winlogbeat document carrying ECS names.
    let ev = Event::new(json!({"@timestamp": "2024-01-01T00:00:00Z",
        "winlog": {"channel": "Microsoft-Windows-Sysmon/Operational", "event_id": 1},
        "process": {"command_line": "whoami /all", "parent": {"executable": "/usr/bin/bash"}}}));
    let mut hits = Vec::new();
    set.scanner().scan(&ev, &mut hits);
    assert_eq!(hits, vec![0]);
}

#[test]
fn security_4688_answers_process_creation_rules() {
    let set = compile_one(
        "  sel: {Image|endswith: '\\whoami.exe'}\n  condition: sel",
        CompileOptions::default(),
    );
    let ev = Event::new(
        json!({"Event": {"System": {"Channel": "Security", "EventID": 4688},
        "EventData": {"NewProcessName": "C:\\Windows\\System32\\whoami.exe"}}}),
    );
    let mut hits = Vec::new();
    set.scanner().scan(&ev, &mut hits);
    assert_eq!(hits, vec![0]);
}

#[test]
fn logsource_routing_keeps_rules_on_their_events() {
    let set = compile_one(
        "  sel: {Image|endswith: '\\cmd.exe'}\n  condition: sel",
        CompileOptions::default(),
    );
    // An image-load event (Sysmon 7) of cmd.exe must not fire a process_creation rule.
    let ev = Event::new(
        json!({"Event": {"System": {"Channel": "Microsoft-Windows-Sysmon/Operational", "EventID": 7},
        "EventData": {"Image": "C:\\Windows\\System32\\cmd.exe"}}}),
    );
    let mut hits = Vec::new();
    set.scanner().scan(&ev, &mut hits);
    assert!(hits.is_empty());
}

#[test]
fn expand_uses_configured_placeholders() {
    let mut options = CompileOptions::default();
    options
        .placeholders
        .insert("admins".into(), vec!["alice".into(), "bob*".into()]);
    let set = compile_one(
        "  sel: {User|expand: '%admins%'}\n  condition: sel",
        options,
    );
    for (user, want) in [("alice", true), ("bobby", true), ("carol", false)] {
        let mut hits = Vec::new();
        set.scanner()
            .scan(&sysmon1(json!({"User": user})), &mut hits);
        assert_eq!(!hits.is_empty(), want, "{user}");
    }
}

#[test]
fn sigma_filter_document_suppresses_its_rule() {
    let text = r#"
title: Whoami
id: 11111111-1111-1111-1111-111111111111
logsource: {product: windows, category: process_creation}
detection:
    sel: {Image|endswith: '\whoami.exe'}
    condition: sel
---
title: Allow the backup account
logsource: {product: windows, category: process_creation}
filter:
    rules: [11111111-1111-1111-1111-111111111111]
    selection: {User|endswith: '\backup'}
    condition: not selection
"#;
    let mut c = Compiler::default();
    for d in parse_documents(text) {
        c.add(d.unwrap());
    }
    let (set, rejected) = c.compile();
    assert!(rejected.is_empty());
    let mut scanner = set.scanner();
    let mut hits = Vec::new();
    scanner.scan(
        &sysmon1(json!({"Image": "c:\\whoami.exe", "User": "corp\\backup"})),
        &mut hits,
    );
    assert!(hits.is_empty(), "filtered");
    scanner.scan(
        &sysmon1(json!({"Image": "c:\\whoami.exe", "User": "corp\\eve"})),
        &mut hits,
    );
    assert_eq!(hits, vec![0]);
}

#[test]
fn unsupported_rules_are_reported_not_loaded() {
    for (detection, reason) in [
        (
            "  sel: {CommandLine|re: '(?<=a)b'}\n  condition: sel",
            "linear time",
        ),
        (
            "  sel: {CommandLine|frobnicate: a}\n  condition: sel",
            "unknown modifier",
        ),
        (
            "  sel: {CommandLine: a}\n  condition: sel | count() > 5",
            "deprecated",
        ),
        (
            "  sel: {CommandLine: a}\n  condition: other",
            "undefined search identifier",
        ),
        (
            "  sel: {User|expand: '%nobody%'}\n  condition: sel",
            "placeholder",
        ),
        (
            "  sel: {DestinationIp|cidr: 'not-an-ip'}\n  condition: sel",
            "not an IP network",
        ),
    ] {
        let text = format!(
            "title: bad\nlogsource: {{product: windows, category: process_creation}}\ndetection:\n{detection}\n"
        );
        let mut c = Compiler::default();
        for d in parse_documents(&text) {
            c.add(d.unwrap());
        }
        let (set, rejected) = c.compile();
        assert_eq!(set.detection_count(), 0);
        assert_eq!(rejected.len(), 1);
        let msg = rejected[0].error.to_string();
        assert!(msg.contains(reason), "{msg} should mention {reason}");
    }
}

/// The prefilter reports the longest literal at each position: rules whose literal is a
/// prefix of another's, or overlaps it, must still be evaluated.
#[test]
fn prefilter_keeps_prefix_and_overlapping_literals() {
    let text = r#"
title: short
logsource: {product: windows, category: process_creation}
detection: {sel: {CommandLine|contains: 'mimi'}, condition: sel}
---
title: long
logsource: {product: windows, category: process_creation}
detection: {sel: {CommandLine|contains: 'mimikatz'}, condition: sel}
---
title: abc
logsource: {product: windows, category: process_creation}
detection: {sel: {CommandLine|contains: 'xabc'}, condition: sel}
---
title: bcd
logsource: {product: windows, category: process_creation}
detection: {sel: {CommandLine|contains: 'bcdy'}, condition: sel}
"#;
    let mut c = Compiler::default();
    for d in parse_documents(text) {
        c.add(d.unwrap());
    }
    let (set, _) = c.compile();
    assert_eq!(set.prefiltered_rules(), 4);
    let mut scanner = set.scanner();
    let mut hits = Vec::new();
    scanner.scan(
        &sysmon1(json!({"CommandLine": "run MIMIKATZ now"})),
        &mut hits,
    );
    assert_eq!(hits, vec![0, 1]);
    hits.clear();
    scanner.scan(&sysmon1(json!({"CommandLine": "xabcdy"})), &mut hits);
    assert_eq!(hits, vec![2, 3]);
}

/// Rules are evaluated in rule order, across more than 64 rules: those the prefilter cannot
/// judge always, prefiltered ones only when their literal was seen.
#[test]
fn prefiltered_and_unfiltered_rules_are_evaluated_in_rule_order() {
    let mut text = String::new();
    for i in 0..70 {
        text.push_str(&format!(
            "title: r{i}\nlogsource: {{product: windows, category: process_creation}}\n\
             detection: {{sel: {{CommandLine|contains: '<lit{i}>'}}, condition: sel}}\n---\n"
        ));
    }
    text.push_str(
        "title: any pid\nlogsource: {product: windows, category: process_creation}\n\
         detection: {sel: {ProcessId|gt: 0}, condition: sel}\n---\n\
         title: zzz\nlogsource: {product: windows, category: process_creation}\n\
         detection: {sel: {CommandLine|contains: 'zzz'}, condition: sel}\n",
    );
    let mut c = Compiler::default();
    for d in parse_documents(&text) {
        c.add(d.unwrap());
    }
    let (set, rejected) = c.compile();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(set.prefiltered_rules(), 71);
    let mut scanner = set.scanner();
    let mut hits = Vec::new();
    scanner.scan(
        &sysmon1(json!({"CommandLine": "zzz <lit68> <lit3>", "ProcessId": 42})),
        &mut hits,
    );
    assert_eq!(hits, vec![3, 68, 70, 71]);
    assert_eq!(
        scanner.stats().evaluated,
        4,
        "only the rules seen and the unfiltered one"
    );
    hits.clear();
    scanner.scan(
        &sysmon1(json!({"CommandLine": "<lit69>", "ProcessId": 0})),
        &mut hits,
    );
    assert_eq!(hits, vec![69]);
    assert_eq!(scanner.stats().evaluated, 6);
}
