//! The words: incident and monthly reports in English and Japanese, built from the evidence.
//! Sentences name the host, the process, the file and the account so that someone who is not
//! a security specialist knows what happened and what to do.

use crate::doc::{Block, Doc, Tone};
use crate::model::{Incident, Monthly};
use crate::{fmt_rfc3339, fmt_time, shorten};

/// Report language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English.
    En,
    /// Japanese.
    Ja,
}

impl Lang {
    /// Parses `en` or `ja`.
    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "en" => Some(Lang::En),
            "ja" => Some(Lang::Ja),
            _ => None,
        }
    }

    /// `en` or `ja`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ja => "ja",
        }
    }

    fn t<'a>(self, en: &'a str, ja: &'a str) -> &'a str {
        match self {
            Lang::En => en,
            Lang::Ja => ja,
        }
    }
}

/// A severity in words.
pub fn severity(l: Lang, s: &str) -> String {
    match (l, s) {
        (Lang::En, s) => {
            let mut c = s.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        }
        (Lang::Ja, "critical") => "緊急 (Critical)".into(),
        (Lang::Ja, "high") => "高 (High)".into(),
        (Lang::Ja, "medium") => "中 (Medium)".into(),
        (Lang::Ja, "low") => "低 (Low)".into(),
        (Lang::Ja, "informational") => "情報 (Informational)".into(),
        (Lang::Ja, s) => s.into(),
    }
}

/// A verdict in words.
pub fn verdict(l: Lang, v: &str) -> String {
    match (l, v) {
        (Lang::En, "malicious") => "malicious".into(),
        (Lang::En, "suspicious") => "suspicious".into(),
        (Lang::En, "benign-likely") => "probably benign".into(),
        (Lang::Ja, "malicious") => "悪性 (攻撃と判断)".into(),
        (Lang::Ja, "suspicious") => "不審 (要確認)".into(),
        (Lang::Ja, "benign-likely") => "良性の可能性が高い".into(),
        (_, v) => v.into(),
    }
}

fn tactic(l: Lang, t: &str) -> String {
    let ja = match t {
        "reconnaissance" => "偵察",
        "resource-development" => "リソース開発",
        "initial-access" => "初期アクセス",
        "execution" => "実行",
        "persistence" => "永続化",
        "privilege-escalation" => "権限昇格",
        "defense-evasion" => "防御回避",
        "credential-access" => "認証情報アクセス",
        "discovery" => "探索",
        "lateral-movement" => "横展開",
        "collection" => "収集",
        "command-and-control" => "C2 通信",
        "exfiltration" => "持ち出し",
        "impact" => "破壊・妨害",
        _ => return t.to_string(),
    };
    match l {
        Lang::En => t.replace('-', " "),
        Lang::Ja => format!("{ja} ({t})"),
    }
}

fn tone(sev: &str) -> Tone {
    match sev {
        "critical" => Tone::Danger,
        "high" => Tone::Warning,
        _ => Tone::Info,
    }
}

fn list(l: Lang, items: &[String]) -> String {
    match l {
        Lang::En => items.join(", "),
        Lang::Ja => items.join("、"),
    }
}

/// The incident report.
pub fn incident(i: &Incident, l: Lang, now: i64) -> Doc {
    let title = match l {
        Lang::En => format!("Incident #{}: {}", i.id, i.title),
        Lang::Ja => format!("インシデント #{}: {}", i.id, i.title),
    };
    let mut d = Doc::new(l.code(), title);
    let hosts: Vec<String> = i.hosts.iter().map(|h| h.name.clone()).collect();
    let isolated: Vec<&crate::model::Host> = i.hosts.iter().filter(|h| h.isolated).collect();
    let auto = i
        .actions
        .iter()
        .find(|a| a.automatic && a.action == "isolate");
    let auto_kill = i.actions.iter().find(|a| a.automatic && a.action == "kill");

    // Summary.
    let mut summary = match l {
        Lang::En => format!(
            "Severity {}: {}. {} on {}.",
            severity(l, &i.severity),
            verdict(l, &i.verdict),
            plural(i.alerts.len(), "detection", "detections"),
            list(l, &hosts)
        ),
        Lang::Ja => format!(
            "重大度 {}、判定: {}。{} で {} 件の検知がありました。",
            severity(l, &i.severity),
            verdict(l, &i.verdict),
            list(l, &hosts),
            i.alerts.len()
        ),
    };
    if let Some(a) = auto {
        summary.push(' ');
        summary.push_str(&match (l, a.status.as_str()) {
            (Lang::En, "succeeded") => format!(
                "Mamori isolated {} from the network automatically at {} (verified).",
                a.host,
                fmt_time(a.at_ms / 1000)
            ),
            (Lang::Ja, "succeeded") => format!(
                "Mamori は {} に {} をネットワークから自動的に隔離しました (確認済み)。",
                fmt_time(a.at_ms / 1000),
                a.host
            ),
            (Lang::En, s) => format!("Automatic isolation of {} is {s}.", a.host),
            (Lang::Ja, s) => format!("{} の自動隔離の状態: {s}", a.host),
        });
    }
    if let Some(k) = auto_kill {
        summary.push(' ');
        summary.push_str(&match l {
            Lang::En => format!(
                "By the policy for this host's group, Mamori stopped the offending process tree \
                 on {} automatically instead of isolating the host ({}).",
                k.host, k.status
            ),
            Lang::Ja => format!(
                "このホストのグループのポリシーにより、Mamori はホストを隔離せず、{} 上の該当プロセス\
                 ツリーを自動的に停止しました (状態: {})。",
                k.host, k.status
            ),
        });
    }
    d.push(Block::Callout(tone(&i.severity), summary));

    // What happened.
    d.push(Block::Heading(l.t("What happened", "何が起きたか").into()));
    let first = i
        .alerts
        .first()
        .map(|a| fmt_rfc3339(&a.time))
        .unwrap_or_default();
    let last = i
        .alerts
        .last()
        .map(|a| fmt_rfc3339(&a.time))
        .unwrap_or_default();
    let users = if i.users.is_empty() {
        l.t("an unknown account", "不明なアカウント").to_string()
    } else {
        list(l, &i.users)
    };
    d.push(Block::Para(match l {
        Lang::En => format!(
            "Between {first} and {last}, Mamori saw activity on {} by {users} that matches \
             known attack behaviour:",
            list(l, &hosts)
        ),
        Lang::Ja => format!(
            "{first} から {last} にかけて、{} 上でアカウント {users} による、既知の攻撃手口に\
             一致する動作を検知しました:",
            list(l, &hosts)
        ),
    }));
    let mut seen = std::collections::HashSet::new();
    let lines: Vec<String> = i
        .alerts
        .iter()
        .filter(|a| seen.insert((a.rule.clone(), a.command_line.clone())))
        .take(12)
        .map(|a| {
            let what = if a.command_line.is_empty() {
                a.process.clone()
            } else {
                shorten(&crate::redact(&a.command_line), 160)
            };
            let who = match (a.process.is_empty(), l) {
                (false, _) => a.process.as_str(),
                (true, Lang::En) => "a process",
                (true, Lang::Ja) => "プロセス",
            };
            let times = match (a.count > 1, l) {
                (false, _) => String::new(),
                (true, Lang::En) => format!(" ({} times)", a.count),
                (true, Lang::Ja) => format!(" ({} 回)", a.count),
            };
            let when = fmt_rfc3339(&a.time);
            match l {
                Lang::En => format!("{when}: {} — {who} ran “{what}”{times}", a.rule),
                Lang::Ja => format!("{when}: {} — {who} が「{what}」を実行{times}", a.rule),
            }
        })
        .collect();
    d.push(Block::Bullets(lines));
    let external: Vec<String> = i
        .destinations
        .iter()
        .filter(|d| d.external)
        .map(|d| d.address.clone())
        .collect();
    if !external.is_empty() {
        d.push(Block::Para(match l {
            Lang::En => format!(
                "Processes involved connected to addresses outside your network: {}. This is \
                 how attackers control a machine remotely or take data out.",
                list(l, &external)
            ),
            Lang::Ja => format!(
                "関係するプロセスが社外のアドレスへ通信しました: {}。攻撃者による遠隔操作や\
                 データ持ち出しに使われる通信です。",
                list(l, &external)
            ),
        }));
    }
    if !i.tactics.is_empty() {
        let t: Vec<String> = i.tactics.iter().map(|t| tactic(l, t)).collect();
        d.push(Block::Para(match l {
            Lang::En => format!(
                "The activity covers these stages of an attack (MITRE ATT&CK tactics): {}.",
                list(l, &t)
            ),
            Lang::Ja => format!(
                "この動作は攻撃の次の段階 (MITRE ATT&CK の戦術) に当たります: {}。",
                list(l, &t)
            ),
        }));
    }

    // How dangerous.
    d.push(Block::Heading(
        l.t("How dangerous it is, and why", "危険度とその根拠")
            .into(),
    ));
    d.push(Block::Para(match l {
        Lang::En => format!(
            "Mamori rates this incident {} and judges it {}, because:",
            severity(l, &i.severity),
            verdict(l, &i.verdict)
        ),
        Lang::Ja => format!(
            "Mamori はこのインシデントの重大度を {}、判定を「{}」としました。根拠:",
            severity(l, &i.severity),
            verdict(l, &i.verdict)
        ),
    }));
    d.push(Block::Bullets(i.verdict_reasons.clone()));

    // What was done.
    d.push(Block::Heading(
        l.t("What was done automatically", "自動で実施した対応")
            .into(),
    ));
    let done: Vec<String> = i
        .actions
        .iter()
        .map(|a| {
            let who = if a.automatic {
                l.t("automatically (policy)", "ポリシーにより自動")
                    .to_string()
            } else {
                a.issued_by.clone()
            };
            match l {
                Lang::En => format!(
                    "{}: {} on {} — {} ({who})",
                    fmt_time(a.at_ms / 1000),
                    a.action,
                    a.host,
                    a.status
                ),
                Lang::Ja => format!(
                    "{}: {} に対して {} — 状態 {} ({who})",
                    fmt_time(a.at_ms / 1000),
                    a.host,
                    a.action,
                    a.status
                ),
            }
        })
        .collect();
    if done.is_empty() {
        d.push(Block::Para(
            l.t(
                "Nothing was done automatically: the policy contains hosts of Critical \
                 incidents only, or this host is exempt.",
                "自動対応は行っていません (自動隔離の対象は緊急度 Critical のインシデントのみ、\
                 またはこのホストは対象外です)。",
            )
            .into(),
        ));
    } else {
        d.push(Block::Bullets(done));
    }

    // What to do now.
    d.push(Block::Heading(
        l.t("What to do now", "今すぐ行うこと").into(),
    ));
    d.push(Block::Steps(steps(i, l, &isolated, &external)));

    // Blind spots.
    d.push(Block::Heading(
        l.t("Blind spots", "見えていない可能性のある部分").into(),
    ));
    if i.blind_spots.is_empty() {
        d.push(Block::Para(
            l.t(
                "No telemetry was lost on these hosts during the incident: the sensors were \
                 online and reported no drops.",
                "インシデントの期間中、これらのホストでテレメトリの欠落はありません (センサーは\
                 稼働しており、取りこぼしの報告もありません)。",
            )
            .into(),
        ));
    } else {
        d.push(Block::Callout(
            Tone::Warning,
            l.t(
                "Telemetry may be missing for part of this incident; what happened may be more \
                 than this report shows:",
                "このインシデントの一部でテレメトリが欠けている可能性があります。実際の被害は\
                 この報告より大きいかもしれません:",
            )
            .into(),
        ));
        d.push(Block::Bullets(i.blind_spots.clone()));
    }

    // Indicators.
    d.push(Block::Heading(l.t("Indicators", "侵害の痕跡 (IoC)").into()));
    let mut rows = Vec::new();
    for f in &i.files {
        if !f.sha256.is_empty() {
            rows.push(vec!["SHA-256".into(), f.sha256.clone(), f.path.clone()]);
        }
    }
    for dst in &i.destinations {
        rows.push(vec![
            l.t("address", "通信先").into(),
            dst.address.clone(),
            format!(
                "{}{}",
                dst.process,
                if dst.external {
                    l.t(" (external)", " (社外)")
                } else {
                    ""
                }
            ),
        ]);
    }
    for f in &i.files {
        rows.push(vec![
            l.t("path", "パス").into(),
            f.path.clone(),
            String::new(),
        ]);
    }
    d.push(Block::Table(
        vec![
            l.t("kind", "種類").into(),
            l.t("value", "値").into(),
            l.t("context", "補足").into(),
        ],
        rows,
    ));
    if !i.techniques.is_empty() {
        d.push(Block::Para(format!(
            "MITRE ATT&CK: {}",
            i.techniques.join(", ")
        )));
    }

    // Scope.
    d.push(Block::Heading(l.t("Scope", "影響範囲").into()));
    d.push(Block::Fields(vec![
        (
            l.t("Hosts", "ホスト").into(),
            i.hosts
                .iter()
                .map(|h| {
                    if h.isolated {
                        format!("{} ({})", h.name, l.t("isolated", "隔離中"))
                    } else {
                        h.name.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (l.t("Accounts", "アカウント").into(), i.users.join(", ")),
        (
            l.t("Network destinations", "通信先").into(),
            i.destinations
                .iter()
                .map(|d| d.address.clone())
                .collect::<Vec<_>>()
                .join(", "),
        ),
    ]));
    if !i.files.is_empty() {
        d.push(Block::Para(
            l.t(
                "Files and where they were seen (trajectory):",
                "ファイルと確認されたホスト (トラジェクトリ):",
            )
            .into(),
        ));
        let mut rows = Vec::new();
        for f in &i.files {
            if f.seen_on.is_empty() {
                rows.push(vec![
                    f.path.clone(),
                    short_hash(&f.sha256),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
            }
            for s in &f.seen_on {
                rows.push(vec![
                    f.path.clone(),
                    short_hash(&f.sha256),
                    s.host.clone(),
                    fmt_rfc3339(&s.first),
                    s.events.to_string(),
                ]);
            }
        }
        d.push(Block::Table(
            vec![
                l.t("file", "ファイル").into(),
                "SHA-256".into(),
                l.t("host", "ホスト").into(),
                l.t("first seen", "初回確認").into(),
                l.t("events", "イベント数").into(),
            ],
            rows,
        ));
    }

    // Process tree.
    if !i.process_tree.is_empty() {
        d.push(Block::Heading(l.t("Process tree", "プロセスツリー").into()));
        let rows = i
            .process_tree
            .iter()
            .map(|p| {
                vec![
                    format!("{}{}", "  ".repeat(p.depth.min(8)), p.pid),
                    format!(
                        "{}{}",
                        "› ".repeat(p.depth.min(8)),
                        if p.command_line.is_empty() {
                            &p.executable
                        } else {
                            &p.command_line
                        }
                    ),
                    p.user.clone(),
                    p.rules.join(", "),
                ]
            })
            .collect();
        d.push(Block::Table(
            vec![
                "PID".into(),
                l.t("command", "コマンド").into(),
                l.t("user", "ユーザー").into(),
                l.t("detections", "検知").into(),
            ],
            rows,
        ));
    }

    // Timeline.
    d.push(Block::Heading(l.t("Timeline", "タイムライン").into()));
    let rows = i
        .timeline
        .iter()
        .take(200)
        .map(|e| {
            vec![
                fmt_time(e.at_ms.div_euclid(1000)),
                e.host.clone(),
                kind(l, &e.kind),
                crate::redact(&e.text),
            ]
        })
        .collect();
    d.push(Block::Table(
        vec![
            l.t("time", "時刻").into(),
            l.t("host", "ホスト").into(),
            l.t("kind", "種別").into(),
            l.t("what", "内容").into(),
        ],
        rows,
    ));

    // Clocks.
    d.push(Block::Heading(l.t("Response times", "対応時間").into()));
    let c = &i.clocks;
    d.push(Block::Fields(vec![
        (l.t("Opened", "発生").into(), fmt_time(i.opened_at)),
        (
            l.t("First notice", "第一報").into(),
            clock(
                l,
                c.first_notice_due,
                c.first_notice_at,
                c.first_notice_met(now),
            ),
        ),
        (
            l.t("Detailed report", "詳細報告").into(),
            clock(l, c.report_due, c.report_at, c.report_met(now)),
        ),
        (
            l.t("Notifications", "通知").into(),
            i.notifications
                .iter()
                .map(|n| {
                    format!(
                        "{} {} {} {}",
                        fmt_time(n.at),
                        n.channel,
                        n.kind,
                        if n.ok {
                            "ok".to_string()
                        } else {
                            format!("failed: {}", n.error)
                        }
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
    ]));
    d
}

fn kind(l: Lang, k: &str) -> String {
    match (l, k) {
        (Lang::Ja, "event") => "イベント".into(),
        (Lang::Ja, "alert") => "検知".into(),
        (Lang::Ja, "action") => "対応".into(),
        (Lang::Ja, "notice") => "通知".into(),
        (_, k) => k.into(),
    }
}

fn short_hash(h: &str) -> String {
    shorten(h, 17)
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn clock(l: Lang, due: Option<i64>, at: Option<i64>, met: Option<bool>) -> String {
    let Some(due) = due else {
        return l
            .t("no target for this severity", "この重大度には目標なし")
            .into();
    };
    let state = match met {
        Some(true) => l.t("met", "達成"),
        Some(false) => l.t("missed", "未達"),
        None => l.t("pending", "未了"),
    };
    match (l, at) {
        (Lang::En, Some(a)) => format!("due {}, done {} — {state}", fmt_time(due), fmt_time(a)),
        (Lang::En, None) => format!("due {} — {state}", fmt_time(due)),
        (Lang::Ja, Some(a)) => format!("期限 {}、実施 {} — {state}", fmt_time(due), fmt_time(a)),
        (Lang::Ja, None) => format!("期限 {} — {state}", fmt_time(due)),
    }
}

/// Specific steps: which host, which process, which file, which account.
fn steps(
    i: &Incident,
    l: Lang,
    isolated: &[&crate::model::Host],
    external: &[String],
) -> Vec<String> {
    let mut s = Vec::new();
    let serious = matches!(i.severity.as_str(), "critical" | "high");
    for h in isolated {
        s.push(match l {
            Lang::En => format!(
                "{} is isolated: it can reach only the Mamori server. Keep it isolated until \
                 the steps below are done, then release it with: mamori respond release {} \
                 --reason \"incident {} resolved\"",
                h.name, h.agent, i.id
            ),
            Lang::Ja => format!(
                "{} は隔離中です (Mamori サーバーとしか通信できません)。以下の手順が終わるまで隔離を\
                 解除しないでください。解除: mamori respond release {} --reason \"incident {} resolved\"",
                h.name, h.agent, i.id
            ),
        });
    }
    if serious && i.verdict != "benign-likely" {
        for h in i
            .hosts
            .iter()
            .filter(|h| !h.isolated && !h.agent.starts_with("win:"))
        {
            s.push(match l {
                Lang::En => format!(
                    "Isolate {} now if you cannot rule the activity out: mamori respond \
                     isolate {} --reason \"incident {}\"",
                    h.name, h.agent, i.id
                ),
                Lang::Ja => format!(
                    "正当な作業だと確認できない場合は、{} を今すぐ隔離してください: mamori respond \
                     isolate {} --reason \"incident {}\"",
                    h.name, h.agent, i.id
                ),
            });
        }
    }
    let agent_of = |host: &str| {
        i.hosts
            .iter()
            .find(|h| h.name == host)
            .map(|h| h.agent.clone())
            .unwrap_or_else(|| host.to_string())
    };
    for p in i
        .process_tree
        .iter()
        .filter(|p| !p.rules.is_empty())
        .take(3)
    {
        s.push(match l {
            Lang::En => format!(
                "Stop what is left of the process {} (pid {}) on {} and its children: mamori \
                 respond kill {} --entity-id {} --tree --reason \"incident {}\"",
                p.executable,
                p.pid,
                p.host,
                agent_of(&p.host),
                p.entity,
                i.id
            ),
            Lang::Ja => format!(
                "{} 上のプロセス {} (pid {}) と子プロセスが残っていれば停止してください: mamori \
                 respond kill {} --entity-id {} --tree --reason \"incident {}\"",
                p.host,
                p.executable,
                p.pid,
                agent_of(&p.host),
                p.entity,
                i.id
            ),
        });
    }
    // The incident's files never include the system's own programs (the server leaves
    // them out): each is a candidate for quarantine.
    for f in i.files.iter().take(3) {
        let host = f
            .seen_on
            .first()
            .map(|s| s.host.clone())
            .unwrap_or_default();
        s.push(match l {
            Lang::En => format!(
                "Quarantine {} on {host} (mamori respond quarantine {} {} --reason \"incident \
                 {}\"){}",
                f.path,
                agent_of(&host),
                f.path,
                i.id,
                if f.sha256.is_empty() {
                    String::new()
                } else {
                    format!(
                        " and block it on every host: mamori respond block {} --reason \
                         \"incident {}\"",
                        f.sha256, i.id
                    )
                }
            ),
            Lang::Ja => format!(
                "{host} の {} を隔離保管してください (mamori respond quarantine {} {} --reason \
                 \"incident {}\"){}",
                f.path,
                agent_of(&host),
                f.path,
                i.id,
                if f.sha256.is_empty() {
                    String::new()
                } else {
                    format!(
                        "。全ホストで実行を禁止: mamori respond block {} --reason \"incident {}\"",
                        f.sha256, i.id
                    )
                }
            ),
        });
    }
    for u in &i.users {
        s.push(match (l, u.as_str()) {
            (Lang::En, "root") => format!(
                "The attacker acted as root on {}: change the root password, and check \
                 /root/.ssh/authorized_keys and /etc/sudoers for entries you did not add.",
                list(
                    l,
                    &i.hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>()
                )
            ),
            (Lang::Ja, "root") => format!(
                "攻撃者は {} で root として動作しました。root のパスワードを変更し、\
                 /root/.ssh/authorized_keys と /etc/sudoers に心当たりのない設定がないか確認して\
                 ください。",
                list(
                    l,
                    &i.hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>()
                )
            ),
            (Lang::En, u) => format!(
                "Reset the password of the account {u}, end its sessions, and review its SSH \
                 keys (~{u}/.ssh/authorized_keys) and recent logins."
            ),
            (Lang::Ja, u) => format!(
                "アカウント {u} のパスワードを変更し、ログイン中のセッションを切断して、SSH 鍵 \
                 (~{u}/.ssh/authorized_keys) と最近のログインを確認してください。"
            ),
        });
    }
    if i.tactics.iter().any(|t| t == "persistence") {
        let agent = i.hosts.first().map(|h| h.agent.clone()).unwrap_or_default();
        s.push(match l {
            Lang::En => format!(
                "Look for persistence the attacker may have left (cron jobs, systemd units, \
                 shell profiles, SSH keys): mamori respond triage {agent} --reason \"incident {}\" \
                 collects them all.",
                i.id
            ),
            Lang::Ja => format!(
                "攻撃者が残した永続化の仕組み (cron、systemd ユニット、シェルの設定、SSH 鍵) を確認して\
                 ください。mamori respond triage {agent} --reason \"incident {}\" でまとめて収集できます。",
                i.id
            ),
        });
    }
    for ip in external.iter().take(3) {
        let addr = ip
            .trim_start_matches('[')
            .rsplit_once(':')
            .map(|(a, _)| a.trim_end_matches(']'))
            .unwrap_or(ip);
        s.push(match l {
            Lang::En => format!(
                "Block {addr} at your firewall and find other hosts that talked to it: mamori \
                 query \"SELECT host_name, count(*) FROM events WHERE destination_ip = '{addr}' \
                 GROUP BY host_name\""
            ),
            Lang::Ja => format!(
                "ファイアウォールで {addr} を遮断し、他に通信したホストを確認してください: mamori \
                 query \"SELECT host_name, count(*) FROM events WHERE destination_ip = '{addr}' \
                 GROUP BY host_name\""
            ),
        });
    }
    if !i.blind_spots.is_empty() {
        s.push(
            l.t(
                "Telemetry is incomplete for this incident (see Blind spots): also check the \
                 host's own logs (journal, /var/log/auth.log) for that time.",
                "このインシデントではテレメトリが欠けています (「見えていない可能性のある部分」参照)。\
                 その時間帯のホスト自身のログ (journal、/var/log/auth.log) も確認してください。",
            )
            .into(),
        );
    }
    if i.verdict == "benign-likely" {
        s.push(
            l.t(
                "If this was expected administration, close the incident and add a suppression \
                 so it does not come back: mamori soc suppress --rule <rule id> --host <host> \
                 --reason \"...\" (the preview shows how many past alerts it would have hidden).",
                "想定された管理作業であれば、インシデントをクローズし、再発しないよう抑制設定を\
                 追加してください: mamori soc suppress --rule <rule id> --host <host> --reason \
                 \"...\" (過去の何件が抑制対象になるかを事前に確認できます)。",
            )
            .into(),
        );
    }
    s.push(match l {
        Lang::En => format!(
            "When done, close the incident: mamori soc close {} --reason \"what you found\"",
            i.id
        ),
        Lang::Ja => format!(
            "対応が終わったらインシデントをクローズしてください: mamori soc close {} --reason \
             \"確認結果\"",
            i.id
        ),
    });
    s
}

/// A short notification: subject and plain text (the first notice; the detailed report
/// follows as HTML and PDF).
pub fn notice(i: &Incident, l: Lang, now: i64) -> (String, String) {
    let hosts: Vec<String> = i.hosts.iter().map(|h| h.name.clone()).collect();
    let subject = match l {
        Lang::En => format!(
            "[Mamori {}] Incident #{}: {}",
            severity(l, &i.severity),
            i.id,
            i.title
        ),
        Lang::Ja => format!(
            "[Mamori {}] インシデント #{}: {}",
            severity(l, &i.severity),
            i.id,
            i.title
        ),
    };
    let d = incident(i, l, now);
    let mut body = String::new();
    // The summary callout, the reasons and the steps are what someone needs first.
    for b in &d.blocks {
        if let Block::Callout(_, t) = b {
            body.push_str(t);
            body.push_str("\n\n");
            break;
        }
    }
    body.push_str(&match l {
        Lang::En => format!("Hosts: {}\nWhy:\n", list(l, &hosts)),
        Lang::Ja => format!("ホスト: {}\n根拠:\n", list(l, &hosts)),
    });
    for r in i.verdict_reasons.iter().take(5) {
        body.push_str(&format!("- {r}\n"));
    }
    body.push_str(l.t("\nWhat to do now:\n", "\n今すぐ行うこと:\n"));
    for (n, st) in steps(
        i,
        l,
        &i.hosts.iter().filter(|h| h.isolated).collect::<Vec<_>>(),
        &[],
    )
    .iter()
    .take(5)
    .enumerate()
    {
        body.push_str(&format!("{}. {st}\n", n + 1));
    }
    (subject, body)
}

/// The periodic (monthly) report.
pub fn monthly(m: &Monthly, l: Lang) -> Doc {
    let title = match l {
        Lang::En => format!("Mamori monthly report {} — {}", m.period, m.tenant),
        Lang::Ja => format!("Mamori 月次レポート {} — {}", m.period, m.tenant),
    };
    let mut d = Doc::new(l.code(), title);
    let total_alerts: u64 = m.alerts_by_severity.iter().map(|(_, n)| n).sum();
    let total_incidents: u64 = m.incidents_by_severity.iter().map(|(_, n)| n).sum();
    let critical = m
        .incidents_by_severity
        .iter()
        .find(|(s, _)| s == "critical")
        .map(|(_, n)| *n)
        .unwrap_or(0);
    d.push(Block::Callout(
        if critical > 0 { Tone::Danger } else { Tone::Info },
        match l {
            Lang::En => format!(
                "{} to {}: {total_alerts} alerts grouped into {total_incidents} incidents, \
                 {critical} of them critical; {} hosts isolated automatically; response-time \
                 targets met {} times and missed {} times.",
                fmt_time(m.from),
                fmt_time(m.to),
                m.auto_isolations,
                m.clocks_met,
                m.clocks_missed
            ),
            Lang::Ja => format!(
                "{} から {} まで: アラート {total_alerts} 件を {total_incidents} 件のインシデントに\
                 集約 (うち緊急 {critical} 件)。自動隔離 {} 件。対応時間の目標は {} 回達成、{} 回未達。",
                fmt_time(m.from),
                fmt_time(m.to),
                m.auto_isolations,
                m.clocks_met,
                m.clocks_missed
            ),
        },
    ));
    let sev = |v: &[(String, u64)]| -> Vec<(String, u64)> {
        v.iter().map(|(s, n)| (severity(l, s), *n)).collect()
    };
    d.push(Block::Heading(
        l.t("Alerts and incidents", "アラートとインシデント").into(),
    ));
    d.push(Block::Bars(
        l.t("Alerts by severity", "重大度別アラート").into(),
        sev(&m.alerts_by_severity),
    ));
    d.push(Block::Bars(
        l.t("Incidents by severity", "重大度別インシデント").into(),
        sev(&m.incidents_by_severity),
    ));
    d.push(Block::Bars(
        l.t("Incidents by verdict", "判定別インシデント").into(),
        m.incidents_by_verdict
            .iter()
            .map(|(v, n)| (verdict(l, v), *n))
            .collect(),
    ));
    if !m.top_incidents.is_empty() {
        d.push(Block::Table(
            vec![
                "#".into(),
                l.t("severity", "重大度").into(),
                l.t("incident", "インシデント").into(),
            ],
            m.top_incidents
                .iter()
                .map(|(id, s, t)| vec![id.to_string(), severity(l, s), t.clone()])
                .collect(),
        ));
    }
    d.push(Block::Heading(l.t("Attack techniques", "攻撃手法").into()));
    if m.techniques.is_empty() {
        d.push(Block::Para(l.t("None seen.", "該当なし。").into()));
    } else {
        d.push(Block::Bars(
            l.t("Alerts by ATT&CK technique", "ATT&CK 手法別アラート")
                .into(),
            m.techniques.clone(),
        ));
    }
    d.push(Block::Heading(
        l.t("Hosts most affected", "影響の大きいホスト").into(),
    ));
    d.push(Block::Bars(
        l.t("Alerts by host", "ホスト別アラート").into(),
        m.hosts.clone(),
    ));
    d.push(Block::Heading(l.t("Response times", "対応時間").into()));
    d.push(Block::Fields(vec![
        (
            l.t("Targets met", "目標達成").into(),
            m.clocks_met.to_string(),
        ),
        (
            l.t("Targets missed", "目標未達").into(),
            m.clocks_missed.to_string(),
        ),
        (
            l.t("Automatic isolations", "自動隔離").into(),
            m.auto_isolations.to_string(),
        ),
    ]));
    d.push(Block::Heading(
        l.t("Sensor coverage and gaps", "センサーの稼働状況と欠落")
            .into(),
    ));
    let mut cov = vec![(
        l.t("Sensors enrolled", "登録センサー数").into(),
        m.sensors.to_string(),
    )];
    for (s, n) in &m.sensors_by_status {
        cov.push((s.clone(), n.to_string()));
    }
    cov.push((
        l.t(
            "Windows hosts (uploaded logs only)",
            "Windows ホスト (ログ取り込みのみ)",
        )
        .into(),
        m.upload_hosts.to_string(),
    ));
    d.push(Block::Fields(cov));
    if m.gaps.is_empty() {
        d.push(Block::Para(
            l.t(
                "No telemetry gaps were recorded.",
                "テレメトリの欠落は記録されていません。",
            )
            .into(),
        ));
    } else {
        d.push(Block::Callout(
            Tone::Warning,
            l.t(
                "Telemetry was incomplete on some hosts; detections may have been missed there:",
                "一部のホストでテレメトリが欠けており、その間の検知漏れの可能性があります:",
            )
            .into(),
        ));
        d.push(Block::Bullets(m.gaps.clone()));
    }
    d.push(Block::Heading(l.t("Tuning", "チューニング").into()));
    if !m.rules.is_empty() {
        d.push(Block::Bars(
            l.t("Noisiest rules", "アラートの多いルール").into(),
            m.rules.clone(),
        ));
    }
    if m.tuning.is_empty() {
        d.push(Block::Para(
            l.t(
                "No tuning changes this period.",
                "この期間のチューニング変更はありません。",
            )
            .into(),
        ));
    } else {
        d.push(Block::Bullets(m.tuning.clone()));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    pub(crate) fn sample() -> Incident {
        Incident {
            id: 7,
            tenant: "default".into(),
            title: "Suspicious Activity in Shell Commands on web-01".into(),
            severity: "critical".into(),
            status: "open".into(),
            verdict: "malicious".into(),
            verdict_reasons: vec!["raised to critical: 3 different rules fired".into()],
            opened_at: 1_795_722_300,
            updated_at: 1_795_722_310,
            hosts: vec![Host {
                agent: "agt-1".into(),
                name: "web-01".into(),
                isolated: true,
                isolated_by: "policy:auto-contain".into(),
            }],
            users: vec!["alice".into()],
            files: vec![File {
                path: "/tmp/.x/beacon".into(),
                sha256: "ab".repeat(32),
                seen_on: vec![Seen {
                    host: "web-01".into(),
                    first: "2026-11-26T19:45:01Z".into(),
                    events: 3,
                }],
            }],
            destinations: vec![Destination {
                address: "203.0.113.7:443".into(),
                external: true,
                process: "/tmp/.x/beacon".into(),
            }],
            techniques: vec!["T1059.004".into()],
            tactics: vec!["execution".into(), "persistence".into()],
            alerts: vec![AlertLine {
                id: 1,
                time: "2026-11-26T19:45:01Z".into(),
                rule: "Suspicious Activity in Shell Commands".into(),
                severity: "critical".into(),
                host: "web-01".into(),
                process: "/usr/bin/sh".into(),
                command_line: "sh -c echo x | base64 -d | sh".into(),
                count: 2,
                reasons: vec![],
            }],
            process_tree: vec![Process {
                entity: "12:34".into(),
                pid: 12,
                executable: "/usr/bin/sh".into(),
                host: "web-01".into(),
                rules: vec!["Suspicious Activity in Shell Commands".into()],
                ..Process::default()
            }],
            timeline: vec![],
            actions: vec![ActionLine {
                id: "c1".into(),
                action: "isolate".into(),
                host: "web-01".into(),
                status: "succeeded".into(),
                issued_by: "policy:auto-contain".into(),
                automatic: true,
                at_ms: 1_795_722_301_000,
                reason: "x".into(),
            }],
            blind_spots: vec!["web-01: 12 events dropped".into()],
            clocks: Clocks {
                first_notice_due: Some(1_795_723_200),
                first_notice_at: Some(1_795_722_302),
                report_due: Some(1_795_725_900),
                report_at: None,
            },
            notifications: vec![],
        }
    }

    #[test]
    fn the_incident_report_names_what_to_act_on_in_both_languages() {
        let i = sample();
        for l in [Lang::En, Lang::Ja] {
            let d = incident(&i, l, 1_795_722_400);
            let html = crate::html::render(&d);
            for needle in [
                "web-01",
                "mamori respond release agt-1",
                "mamori respond kill agt-1 --entity-id 12:34 --tree",
                "mamori respond quarantine agt-1 /tmp/.x/beacon",
                &"ab".repeat(32),
                "203.0.113.7",
                "alice",
                "T1059.004",
                "web-01: 12 events dropped",
            ] {
                assert!(html.contains(needle), "{l:?}: {needle} missing");
            }
            assert!(!html.contains("<script"), "self-contained and script-free");
        }
        let ja = crate::html::render(&incident(&i, Lang::Ja, 0));
        assert!(ja.contains("自動的に隔離しました") && ja.contains("今すぐ行うこと"));
        assert!(ja.contains("lang=\"ja\""));
        let en = crate::html::render(&incident(&i, Lang::En, 0));
        assert!(en.contains("isolated web-01 from the network automatically"));
    }

    #[test]
    fn hostile_text_is_escaped() {
        let mut i = sample();
        i.alerts[0].command_line = "<script>alert(1)</script>".into();
        let html = crate::html::render(&incident(&i, Lang::En, 0));
        assert!(!html.contains("<script>alert"));
        assert!(html.contains("&lt;script&gt;"));
    }

    #[test]
    fn pdfs_are_well_formed() {
        let i = sample();
        let pdf = crate::pdf::render(&incident(&i, Lang::Ja, 0));
        assert!(pdf.starts_with(b"%PDF-1.7"));
        assert!(pdf.ends_with(b"%%EOF\n"));
        // The xref table is where startxref says.
        let tail = &pdf[pdf.len() - 40..];
        let tail = std::str::from_utf8(tail).unwrap();
        let start: usize = tail
            .rsplit("startxref\n")
            .next()
            .and_then(|s| s.lines().next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        assert!(pdf[start..].starts_with(b"xref"));
        let m = Monthly {
            tenant: "default".into(),
            period: "2026-11".into(),
            alerts_by_severity: vec![("critical".into(), 3), ("low".into(), 40)],
            hosts: vec![("web-01".into(), 43)],
            ..Monthly::default()
        };
        for l in [Lang::En, Lang::Ja] {
            let pdf = crate::pdf::render(&monthly(&m, l));
            assert!(pdf.len() > 1000);
            let html = crate::html::render(&monthly(&m, l));
            assert!(html.contains("<svg") && html.contains("web-01"));
        }
    }
}
