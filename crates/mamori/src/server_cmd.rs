//! `mamori server …`: run the server and administer it locally.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use mamori_server::rules::RuleSource;
use mamori_server::{Admin, Server, ServerConfig};

use crate::data;

/// `mamori server` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Run the server (creates its CA, certificate and admin token on first start).
    Run {
        /// TOML configuration file (see the README for the keys).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen on this address:port (default 127.0.0.1:7443; MAMORI_LISTEN).
        #[arg(long)]
        listen: Option<String>,
        /// Detection rules (default: the installed SigmaHQ corpus and Mamori's own rules).
        #[arg(long, short)]
        rules: Vec<PathBuf>,
    },
    /// Show alerts, newest first.
    Alerts {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// JSON lines with evidence instead of a table.
        #[arg(long)]
        json: bool,
        /// Keep running: the last --limit alerts oldest first, then each new alert as it is
        /// raised (like `tail -f`; Ctrl-C ends it).
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        target: crate::query_cmd::Target,
    },
    /// Create an enrollment token.
    Token {
        /// Tenant of the agents that enroll with it.
        #[arg(long, default_value = "default")]
        tenant: String,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: i64,
        /// Lifetime: `30m`, `24h`, `7d`.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// The server address agents will use (for the printed command).
        #[arg(long, default_value = "https://127.0.0.1:7443")]
        server: String,
    },
    /// Create an API token (shown once) for a person or an integration.
    ApiToken {
        /// Who or what it is for (kept in the audit log with every change it makes).
        #[arg(long)]
        name: String,
        /// viewer (read), analyst (also change alerts and rules, upload logs), admin (also
        /// manage tokens).
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Limit it to one tenant's data.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// List enrolled agents: inventory and sensor status (online, degraded, offline, stopped).
    Agents {
        /// JSON lines with each sensor's last health report.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: crate::query_cmd::Target,
    },
    /// Revoke an agent: its certificate is refused from now on.
    Revoke {
        /// Agent id.
        id: String,
        /// Why (kept in the audit log).
        #[arg(long, default_value = "revoked by an administrator")]
        reason: String,
    },
    /// Show how the running server keeps up: events durable in its log, how late detection
    /// (and so alerts) runs, how far the columnar store is behind. Exits 1 when detection is
    /// 5 s or more behind or its writes are refused. Needs an admin token (--token or
    /// MAMORI_TOKEN); --server defaults to this machine's server.
    Status {
        /// The API's JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: crate::query_cmd::Target,
    },
    /// Show the audit log.
    Audit {
        #[command(flatten)]
        target: crate::query_cmd::Target,
    },
}

/// With `--server`: `GET path` on that server's API (the token's role and tenant apply);
/// without: `None` (the caller reads the local state database).
fn remote(target: &crate::query_cmd::Target, path: &str) -> Result<Option<Vec<serde_json::Value>>> {
    let Some(server) = &target.server else {
        return Ok(None);
    };
    let config = ServerConfig::load(None, server_dir(), |k| std::env::var(k).ok())?;
    let (rt, api) = crate::query_cmd::connect(server, target, &config)?;
    let reply = rt.block_on(api.request("GET", path, None))?;
    listed(server, path, &reply).map(Some)
}

/// The items of a list the API answered to `GET path`, or its refusal as an error.
fn listed(
    server: &str,
    path: &str,
    reply: &mamori_link::api::Reply,
) -> Result<Vec<serde_json::Value>> {
    Ok(answer(server, path, reply)?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// What the API answered to `GET path`, or its refusal as an error.
fn answer(server: &str, path: &str, reply: &mamori_link::api::Reply) -> Result<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&reply.body).with_context(|| format!("{server}{path}: not JSON"))?;
    if reply.status != 200 {
        bail!(
            "{server}: {} {}",
            reply.status,
            v["error"].as_str().unwrap_or(&reply.body)
        );
    }
    Ok(v)
}

fn alert_header() -> String {
    format!(
        "{:>5} {:<13} {:<13} {:<5} {:<16} {:<44} PROCESS\n",
        "ID", "SEVERITY", "LEVEL", "COUNT", "HOST", "RULE"
    )
}

/// One alert as `mamori server alerts` prints it: a table row, or a JSON line.
fn alert_line(a: &serde_json::Value, json: bool) -> String {
    if json {
        return format!("{a}\n");
    }
    format!(
        "{:>5} {:<13} {:<13} {:>5} {:<16} {:<44} {}\n",
        text(&a["id"]),
        text(&a["severity"]).to_uppercase(),
        text(&a["level"]),
        text(&a["count"]),
        text(&a["host"]),
        text(&a["rule_title"]).chars().take(44).collect::<String>(),
        text(&a["command_line"])
            .chars()
            .take(80)
            .collect::<String>()
    )
}

/// Alerts after an id (or the newest), at most so many.
type AlertSource = dyn FnMut(Option<i64>, usize) -> Result<Vec<serde_json::Value>>;

/// `mamori server alerts --follow`: the last `limit` alerts, oldest first, then every new
/// one as it is raised, read every second through the API (one connection kept open, only
/// the alerts after the last one shown) or from the local state database. Ends when the
/// output is closed.
fn follow_alerts(
    tenant: Option<&str>,
    limit: usize,
    json: bool,
    target: &crate::query_cmd::Target,
) -> Result<ExitCode> {
    use std::io::Write;
    // The API's largest page.
    const PAGE: usize = 10_000;
    let mut source: Box<AlertSource> = match &target.server {
        Some(server) => {
            let config = ServerConfig::load(None, server_dir(), |k| std::env::var(k).ok())?;
            let (rt, api) = crate::query_cmd::connect(server, target, &config)?;
            let mut session = api.session();
            let server = server.clone();
            let tenant = tenant.map(|t| format!("&tenant={t}")).unwrap_or_default();
            Box::new(move |after, limit| {
                let after = after.map(|a| format!("&after={a}")).unwrap_or_default();
                let path = format!("/api/v1/alerts?limit={limit}{after}{tenant}");
                let reply = rt.block_on(session.request("GET", &path, None))?;
                listed(&server, &path, &reply)
            })
        }
        None => {
            let admin = Admin::open(&config(None, None)?)?;
            let tenant = tenant.map(str::to_string);
            Box::new(move |after, limit| {
                let filter = mamori_server::state::AlertFilter {
                    tenant: tenant.as_deref(),
                    after,
                    ..Default::default()
                };
                local(admin.state().alerts_where(filter, limit)?)
            })
        }
    };
    let mut out = std::io::stdout().lock();
    let mut show = |text: String| match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        // The reader went away (`| head`): done.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        r => r.map(|_| true),
    };
    if !json && !show(alert_header())? {
        return Ok(ExitCode::SUCCESS);
    }
    // The last `limit`, newest first: shown oldest first (at least the newest is read, so
    // that `--limit 0` starts after it).
    let recent = source(None, limit.clamp(1, PAGE))?;
    let mut last = recent
        .iter()
        .filter_map(|a| a["id"].as_i64())
        .max()
        .unwrap_or(0);
    for a in recent.iter().take(limit).rev() {
        if !show(alert_line(a, json))? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    loop {
        let page = source(Some(last), PAGE)?;
        for a in &page {
            last = last.max(a["id"].as_i64().unwrap_or(last));
            if !show(alert_line(a, json))? {
                return Ok(ExitCode::SUCCESS);
            }
        }
        if page.len() < PAGE {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

fn local<T: serde::Serialize>(items: Vec<T>) -> Result<Vec<serde_json::Value>> {
    items
        .into_iter()
        .map(|i| Ok(serde_json::to_value(i)?))
        .collect()
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The server's data directory: `<data>/server`.
pub fn server_dir() -> PathBuf {
    data::data_dir().join("server")
}

fn config(file: Option<&std::path::Path>, listen: Option<String>) -> Result<ServerConfig> {
    let mut c = ServerConfig::load(file, server_dir(), |k| std::env::var(k).ok())?;
    if let Some(l) = listen {
        c.listen = l
            .parse()
            .with_context(|| format!("--listen {l:?}: expected address:port"))?;
    }
    Ok(c)
}

fn parse_ttl(t: &str) -> Result<i64> {
    let (n, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: i64 = n
        .parse()
        .with_context(|| format!("--ttl {t:?}: expected e.g. 30m, 24h, 7d"))?;
    Ok(n * match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86_400,
        _ => bail!("--ttl {t:?}: the unit is s, m, h or d"),
    })
}

/// Where the server's base rules come from: `--rules`, else the installed SigmaHQ corpus
/// with Mamori's own rules, else Mamori's own rules alone (with a warning).
pub fn server_rules(rules: &[PathBuf]) -> RuleSource {
    let own = || {
        data::own_rules()
            .into_iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    };
    if !rules.is_empty() {
        return RuleSource {
            paths: rules.to_vec(),
            ..RuleSource::default()
        };
    }
    if !data::sigmahq_dir().is_dir() {
        eprintln!(
            "mamori server: the SigmaHQ corpus is not installed ({}): detecting with Mamori's \
             own rules only; install it with `mamori rules install --from DIR`",
            data::sigmahq_dir().display()
        );
        return RuleSource {
            texts: own(),
            ..RuleSource::default()
        };
    }
    RuleSource {
        paths: data::DEFAULT_SIGMA_DIRS
            .iter()
            .map(|d| data::sigmahq_dir().join(d))
            .filter(|p| p.is_dir())
            .collect(),
        texts: own(),
        ..RuleSource::default()
    }
}

/// Prints what loading the rules produced. A broken rule is refused with its reason, never
/// loaded.
pub fn print_rules_report(init: &mamori_server::Initialised) {
    let Some(r) = &init.rules else { return };
    eprintln!(
        "mamori server: live detection with {} rules on {} thread{}",
        r.loaded,
        init.detection_threads,
        if init.detection_threads == 1 { "" } else { "s" }
    );
    if !r.refused.is_empty() {
        eprintln!(
            "mamori server: {} rule documents refused (`mamori rules check` lists them all)",
            r.refused.len()
        );
        for (path, why) in r.refused.iter().take(5) {
            eprintln!("mamori server:   {path}: {why}");
        }
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    eprintln!("mamori server: stopping");
}

/// Runs a `mamori server` subcommand.
pub fn run(cmd: ServerCommand) -> Result<ExitCode> {
    match cmd {
        ServerCommand::Run {
            config: file,
            listen,
            rules,
        } => {
            let c = config(file.as_deref(), listen)?;
            let (server, init) = Server::open(c.clone(), Some(server_rules(&rules)))?;
            print_rules_report(&init);
            eprintln!("mamori server: data in {}", c.data_dir.display());
            if let Some(token) = &init.admin_token {
                eprintln!(
                    "mamori server: admin API token (shown once, stored only as a hash): {token}"
                );
            }
            eprintln!("mamori server: CA fingerprint {}", init.ca_fingerprint);
            let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            rt.block_on(async move {
                let shutdown = shutdown_signal();
                let bound = server.bind().await?;
                // The address bound (the port the system chose, for port 0), and only once
                // it is open: scripts and tests wait for the listening line.
                let at = bound.local_addr();
                eprintln!(
                    "mamori server: enroll agents with: mamori server token, then \
                     sudo mamori agent enroll --server https://{at} --token TOKEN --ca-fingerprint {}",
                    init.ca_fingerprint
                );
                eprintln!("mamori server: listening on https://{at}");
                bound.serve(shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        ServerCommand::Token {
            tenant,
            uses,
            ttl,
            server,
        } => {
            let srv = Admin::open(&config(None, None)?)?;
            let t =
                srv.state()
                    .create_enroll_token("admin:cli", &tenant, parse_ttl(&ttl)?, uses)?;
            crate::print_out(&format!("{}\n", t.token))?;
            eprintln!(
                "enrollment token {} for tenant {:?}: {} use(s), expires in {ttl}. On the host:\n  \
                 sudo mamori agent enroll --server {server} --token {} --ca-fingerprint {}",
                t.id, t.tenant, t.uses, t.token, srv.ca_fingerprint
            );
            Ok(ExitCode::SUCCESS)
        }
        ServerCommand::ApiToken { name, role, tenant } => {
            let Some(r) = mamori_server::state::Role::parse(&role) else {
                bail!("--role {role:?}: viewer, analyst or admin");
            };
            let srv = Admin::open(&config(None, None)?)?;
            let (id, token) =
                srv.state()
                    .create_api_token("admin:cli", &name, r, tenant.as_deref())?;
            crate::print_out(&format!("{token}\n"))?;
            eprintln!(
                "API token {id} ({role}{}) for {name:?}: shown once, stored only as a hash. \
                 Use it as `Authorization: Bearer <token>`.",
                tenant
                    .as_deref()
                    .map(|t| format!(", tenant {t}"))
                    .unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        ServerCommand::Agents { json, target } => {
            let hosts = match remote(&target, "/api/v1/hosts")? {
                Some(h) => h,
                None => local(Admin::open(&config(None, None)?)?.state().hosts()?)?,
            };
            if json {
                for h in &hosts {
                    crate::print_out(&(format!("{h}") + "\n"))?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            crate::print_out(
                &(format!(
                    "{:<22} {:<12} {:<20} {:<9} {:<8} {:<9} MISSING",
                    "AGENT", "TENANT", "HOST", "STATUS", "SEEN", "ISOLATED"
                ) + "\n"),
            )?;
            let now = mamori_server::state::now();
            for h in hosts {
                let seen = h["heartbeat_at"]
                    .as_i64()
                    .map(|t| format!("{}s ago", now - t))
                    .unwrap_or_else(|| "never".into());
                let missing = h["health"]["missing"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .filter_map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let isolated = if h["isolation"].is_object() {
                    "yes"
                } else {
                    ""
                };
                crate::print_out(
                    &(format!(
                        "{:<22} {:<12} {:<20} {:<9} {:<8} {:<9} {}",
                        text(&h["agent"]),
                        text(&h["tenant"]),
                        text(&h["hostname"]),
                        text(&h["status"]),
                        seen,
                        isolated,
                        missing
                    ) + "\n"),
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ServerCommand::Revoke { id, reason } => {
            let srv = Admin::open(&config(None, None)?)?;
            if srv.state().agent(&id)?.is_none() {
                bail!("no agent {id:?}");
            }
            if srv.state().revoke("admin:cli", &id, &reason)? {
                eprintln!("agent {id} revoked");
            } else {
                eprintln!("agent {id} was already revoked");
            }
            Ok(ExitCode::SUCCESS)
        }
        ServerCommand::Alerts {
            tenant,
            limit,
            json,
            follow,
            target,
        } => {
            if follow {
                return follow_alerts(tenant.as_deref(), limit, json, &target);
            }
            let mut path = format!("/api/v1/alerts?limit={limit}");
            if let Some(t) = &tenant {
                path.push_str(&format!("&tenant={t}"));
            }
            let alerts = match remote(&target, &path)? {
                Some(a) => a,
                None => local(
                    Admin::open(&config(None, None)?)?
                        .state()
                        .alerts(tenant.as_deref(), limit)?,
                )?,
            };
            if !json {
                crate::print_out(&alert_header())?;
            }
            for a in &alerts {
                crate::print_out(&alert_line(a, json))?;
            }
            Ok(if alerts.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ServerCommand::Status { json, mut target } => {
            let config = config(None, None)?;
            let server = target
                .server
                .get_or_insert_with(|| format!("https://{}", config.listen))
                .clone();
            let (rt, api) = crate::query_cmd::connect(&server, &target, &config)?;
            let path = "/api/v1/status";
            let v = answer(&server, path, &rt.block_on(api.request("GET", path, None))?)?;
            let (text, late) = status_text(&server, &v);
            crate::print_out(&if json { format!("{v}\n") } else { text })?;
            Ok(if late {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        ServerCommand::Audit { target } => {
            let records = match remote(&target, "/api/v1/audit")? {
                Some(r) => r,
                None => local(Admin::open(&config(None, None)?)?.state().audit_log()?)?,
            };
            for r in records {
                crate::print_out(&(format!("{r}") + "\n"))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `mamori server status` in words, and whether detection runs late (5 s or more behind,
/// or its writes refused).
fn status_text(server: &str, v: &serde_json::Value) -> (String, bool) {
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let took = |ms: u64| {
        if ms < 1000 {
            format!("{ms} ms")
        } else {
            format!("{:.1} s", ms as f64 / 1000.0)
        }
    };
    let mut out = format!(
        "server {server} (version {})\nevents durable in the log: {}\n\
         ingest, latest round: events {} old when durable (agents' clocks), {} of it in \
         the server\n",
        v["version"].as_str().unwrap_or("?"),
        n(&v["log"]["synced"]),
        took(n(&v["ingest"]["event_age_ms"])),
        took(n(&v["ingest"]["wait_ms"])),
    );
    let det = &v["detection"];
    let mut late = false;
    if det.is_null() {
        out.push_str("detection: off (no rules loaded)\n");
    } else if det["running"] != true {
        late = true;
        out.push_str("detection: STOPPED (see the server's log)\n");
    } else {
        let delay = n(&det["delay_ms"]);
        late = delay >= mamori_server::detect::FAR_BEHIND.as_millis() as u64;
        out.push_str(&if delay == 0 {
            // Events it has detected may still count as behind for up to a second, until
            // their position is recorded.
            "detection: keeping up\n".to_string()
        } else {
            format!(
                "detection: {} events behind; the oldest has waited {:.1} s{}\n",
                n(&det["behind"]),
                delay as f64 / 1000.0,
                if late { ": alerts are that LATE" } else { "" }
            )
        });
        if let Some(since) = det["failing_since"].as_i64() {
            late = true;
            out.push_str(&format!(
                "detection: the state database has REFUSED its writes for {} s: {}\n",
                mamori_server::state::now() - since,
                det["last_error"].as_str().unwrap_or("")
            ));
        }
    }
    out.push_str(&format!(
        "columnar store: {} events behind the log\n",
        n(&v["store"]["behind"])
    ));
    (out, late)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status in words, and when it counts as late.
    #[test]
    fn status_reads_as_late_only_when_detection_is() {
        let status = |det: serde_json::Value| {
            serde_json::json!({"version": "0.1.0", "log": {"synced": 10},
                "ingest": {"wait_ms": 30, "event_age_ms": 1250},
                "detection": det, "store": {"through": 8, "behind": 2}})
        };
        let ok = status(
            serde_json::json!({"running": true, "through": 10, "behind": 0,
            "delay_ms": 0, "failing_since": null, "last_error": null}),
        );
        let (text, late) = status_text("https://h:1", &ok);
        assert!(!late && text.contains("keeping up"), "{text}");
        assert!(text.contains("events durable in the log: 10"), "{text}");
        assert!(text.contains("events 1.2 s old when durable"), "{text}");
        assert!(text.contains("30 ms of it in the server"), "{text}");
        assert!(text.contains("columnar store: 2 events behind"), "{text}");
        let slow = |ms: u64| {
            status(
                serde_json::json!({"running": true, "through": 4, "behind": 6,
                "delay_ms": ms, "failing_since": null, "last_error": null}),
            )
        };
        let (text, late) = status_text("https://h:1", &slow(1_200));
        assert!(
            !late && text.contains("the oldest has waited 1.2 s\n"),
            "{text}"
        );
        let (text, late) = status_text("https://h:1", &slow(7_500));
        assert!(
            late && text.contains("7.5 s: alerts are that LATE"),
            "{text}"
        );
        let refused = status(
            serde_json::json!({"running": true, "through": 4, "behind": 6,
            "delay_ms": 900, "failing_since": 1, "last_error": "database is locked"}),
        );
        let (text, late) = status_text("https://h:1", &refused);
        assert!(
            late && text.contains("REFUSED") && text.contains("locked"),
            "{text}"
        );
        let stopped = status(serde_json::json!({"running": false, "through": null,
            "behind": null, "delay_ms": null}));
        assert!(status_text("https://h:1", &stopped).1);
        let off = status(serde_json::Value::Null);
        let (text, late) = status_text("https://h:1", &off);
        assert!(!late && text.contains("detection: off"), "{text}");
    }

    /// Every column of `mamori server alerts` starts where its header does, whatever the
    /// level ("informational" is the longest).
    #[test]
    fn alert_rows_line_up_with_the_header_at_every_level() {
        let header = alert_header();
        let count = header.find("COUNT").unwrap();
        let host = header.find("HOST").unwrap();
        for level in ["informational", "low", "medium", "high", "critical"] {
            let a = serde_json::json!({"id": 7, "severity": level, "level": level,
                "count": 3, "host": "web-1", "rule_title": "r", "command_line": "c"});
            let line = alert_line(&a, false);
            assert_eq!(&line[count..count + 5], "    3", "{level}:\n{header}{line}");
            assert_eq!(&line[host..host + 5], "web-1", "{level}:\n{header}{line}");
        }
    }
}
