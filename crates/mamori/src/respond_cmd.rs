//! `mamori respond …`: response actions through the server's API — isolate and release a
//! host, kill a process tree, quarantine and restore files, collect evidence — and their
//! status. Each action waits for the agent's outcome (up to `--wait` seconds) and prints it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use mamori_wire::command::{Action, Allow};
use serde_json::{Value, json};

use crate::query_cmd::{Target, connect};

/// `mamori respond`.
#[derive(Debug, Args)]
pub struct RespondArgs {
    #[command(subcommand)]
    action: RespondAction,
    /// The server (default: this machine's, from the local configuration).
    #[arg(long, env = "MAMORI_SERVER", global = true)]
    server: Option<String>,
    /// API token (analyst or admin).
    #[arg(long, env = "MAMORI_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The server's CA fingerprint (default: trust the local server's CA file).
    #[arg(long, global = true)]
    ca_fingerprint: Option<String>,
    /// Seconds to wait for the agent's outcome (0: print the queued action and return).
    #[arg(long, default_value_t = 30, global = true)]
    wait: u64,
}

/// Actions.
#[derive(Debug, Subcommand)]
pub enum RespondAction {
    /// Cut HOST off the network except from the server and --allow.
    Isolate {
        /// Agent id or host name.
        host: String,
        /// Also reachable: ADDR[/PREFIX][:PORT] (IPv6 as [ADDR]:PORT). Repeatable.
        #[arg(long)]
        allow: Vec<String>,
        /// Why (goes to the audit log).
        #[arg(long)]
        reason: String,
    },
    /// End HOST's isolation.
    Release {
        /// Agent id or host name.
        host: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Kill a process (and with --tree its descendants), named by its entity id
    /// (`boot:pid:start`, from events and alerts) or by --pid and --start-ticks.
    Kill {
        /// Agent id or host name.
        host: String,
        /// `process.entity_id` of the process.
        #[arg(long, conflicts_with_all = ["pid", "start_ticks"])]
        entity_id: Option<String>,
        /// Process id.
        #[arg(long, requires = "start_ticks")]
        pid: Option<u32>,
        /// Start time in clock ticks since boot (field 22 of /proc/PID/stat).
        #[arg(long)]
        start_ticks: Option<u64>,
        /// Also every descendant.
        #[arg(long)]
        tree: bool,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Move a file into HOST's encrypted quarantine.
    Quarantine {
        /// Agent id or host name.
        host: String,
        /// Absolute path.
        path: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Put a quarantined file back exactly as it was.
    Restore {
        /// Agent id or host name.
        host: String,
        /// Quarantine item id (`q-…`).
        item: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Also allowlist the file's SHA-256 for the tenant, so that it is not flagged (or
        /// blocked) again.
        #[arg(long)]
        allowlist: bool,
    },
    /// Delete a quarantined file for good.
    DeleteQuarantined {
        /// Agent id or host name.
        host: String,
        /// Quarantine item id.
        item: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// List HOST's quarantine.
    ListQuarantine {
        /// Agent id or host name.
        host: String,
    },
    /// Fetch a file from HOST (hashed, stored on the server; --out writes it here too).
    CollectFile {
        /// Agent id or host name.
        host: String,
        /// Absolute path.
        path: String,
        /// Refuse larger files.
        #[arg(long, default_value_t = 16 << 20)]
        max_bytes: u64,
        /// Write the file here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// A process's details: status, maps, open files, sockets, environment.
    CollectProcess {
        /// Agent id or host name.
        host: String,
        /// Process id.
        pid: u32,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// A triage bundle of HOST's state: processes, sockets, users, logins, persistence.
    Triage {
        /// Agent id or host name.
        host: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Refuse execution of files with this SHA-256 on every host of the tenant.
    Block {
        /// SHA-256 (hex).
        sha256: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Tenant (default: the token's, or `default`).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Never block (or flag) files with this SHA-256.
    Allow {
        /// SHA-256 (hex).
        sha256: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// Tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Take a SHA-256 off the blocklist (or with --allowlist, off the allowlist).
    Unblock {
        /// SHA-256 (hex).
        sha256: String,
        /// The allowlist instead.
        #[arg(long)]
        allowlist: bool,
        /// Tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// The tenant's blocklist and allowlist.
    Blocklist {
        /// Tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Recent actions (optionally of one host), with status.
    List {
        /// Agent id or host name.
        host: Option<String>,
    },
    /// One action with the agent's outcome.
    Status {
        /// Action id (`cmd-…`).
        id: String,
    },
    /// HOST's isolation state and isolation log.
    Isolation {
        /// Agent id or host name.
        host: String,
    },
}

/// Prints a line on standard output (a closed pipe ends the output quietly).
fn print_line(text: impl std::fmt::Display) -> Result<()> {
    crate::print_out(&format!("{text}\n"))
}

/// The error for a refused API request: the server's reason.
pub fn api_error(status: u16, body: &str) -> anyhow::Error {
    let why = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string());
    anyhow::anyhow!("the server answered {status}: {why}")
}

/// Connects to `server`, or to this machine's server (from the local configuration).
pub fn connect_local_default(
    server: Option<String>,
    token: Option<String>,
    ca_fingerprint: Option<String>,
) -> Result<(tokio::runtime::Runtime, mamori_link::api::Api)> {
    let config = mamori_server::ServerConfig::load(None, crate::server_cmd::server_dir(), |k| {
        std::env::var(k).ok()
    })?;
    let server = server.unwrap_or_else(|| format!("https://{}", config.listen));
    let target = Target {
        server: Some(server.clone()),
        token,
        ca_fingerprint,
    };
    connect(&server, &target, &config)
}

/// Runs `mamori respond`.
pub fn run(args: RespondArgs) -> Result<ExitCode> {
    let (rt, api) = connect_local_default(
        args.server.clone(),
        args.token.clone(),
        args.ca_fingerprint.clone(),
    )?;
    let call = |method: &str, path: &str, body: Option<Value>| -> Result<Value> {
        let body = body.map(|b| b.to_string());
        let reply = rt.block_on(api.request(method, path, body.as_deref().map(str::as_bytes)))?;
        if !(200..300).contains(&reply.status) {
            return Err(api_error(reply.status, &reply.body));
        }
        serde_json::from_str(&reply.body).with_context(|| format!("{path}: not JSON"))
    };
    // A host name is looked up among the hosts the token sees.
    let agent_of = |host: &str| -> Result<String> {
        if host.starts_with("agt-") {
            return Ok(host.to_string());
        }
        let hosts = call("GET", "/api/v1/hosts", None)?;
        let found: Vec<String> = hosts
            .as_array()
            .into_iter()
            .flatten()
            .filter(|h| h["hostname"] == host && h["status"] != "revoked")
            .filter_map(|h| h["agent"].as_str().map(str::to_string))
            .collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => bail!("no enrolled host named {host:?} (see `mamori server agents`)"),
            many => bail!(
                "{host:?} names several agents ({}); give the agent id",
                many.join(", ")
            ),
        }
    };
    let is_block = matches!(args.action, RespondAction::Block { .. });
    let mut allowlist_restored = false;
    let (host, action, reason, out) = match args.action {
        RespondAction::List { host } => {
            let path = match host {
                Some(h) => format!("/api/v1/actions?agent={}", agent_of(&h)?),
                None => "/api/v1/actions".to_string(),
            };
            let list = call("GET", &path, None)?;
            for a in list.as_array().into_iter().flatten() {
                print_line(format!(
                    "{}  {:<10} {:<18} {:<10} {}  {}",
                    a["id"].as_str().unwrap_or_default(),
                    a["status"].as_str().unwrap_or_default(),
                    a["action"].as_str().unwrap_or_default(),
                    a["agent"].as_str().unwrap_or_default(),
                    a["issued_by"].as_str().unwrap_or_default(),
                    a["error"]
                        .as_str()
                        .unwrap_or(a["reason"].as_str().unwrap_or_default()),
                ))?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        RespondAction::Block {
            sha256,
            reason,
            tenant,
        }
        | RespondAction::Allow {
            sha256,
            reason,
            tenant,
        } => {
            let list = if is_block { "block" } else { "allow" };
            let v = call(
                "POST",
                "/api/v1/blocklist",
                Some(json!({"sha256": sha256, "list": list, "reason": reason, "tenant": tenant})),
            )?;
            print_line(format!("{v:#}"))?;
            return Ok(ExitCode::SUCCESS);
        }
        RespondAction::Unblock {
            sha256,
            allowlist,
            tenant,
        } => {
            let list = if allowlist { "allow" } else { "block" };
            let q = tenant.map(|t| format!("?tenant={t}")).unwrap_or_default();
            print_line(format!(
                "{:#}",
                call(
                    "DELETE",
                    &format!("/api/v1/blocklist/{list}/{sha256}{q}"),
                    None
                )?
            ))?;
            return Ok(ExitCode::SUCCESS);
        }
        RespondAction::Blocklist { tenant } => {
            let q = tenant.map(|t| format!("?tenant={t}")).unwrap_or_default();
            print_line(format!(
                "{:#}",
                call("GET", &format!("/api/v1/blocklist{q}"), None)?
            ))?;
            return Ok(ExitCode::SUCCESS);
        }
        RespondAction::Status { id } => {
            print_line(format!(
                "{:#}",
                call("GET", &format!("/api/v1/actions/{id}"), None)?
            ))?;
            return Ok(ExitCode::SUCCESS);
        }
        RespondAction::Isolation { host } => {
            let agent = agent_of(&host)?;
            print_line(format!(
                "{:#}",
                call("GET", &format!("/api/v1/hosts/{agent}/isolation"), None)?
            ))?;
            return Ok(ExitCode::SUCCESS);
        }
        RespondAction::Isolate {
            host,
            allow,
            reason,
        } => {
            let allow = allow
                .iter()
                .map(|a| a.parse::<Allow>().map_err(anyhow::Error::msg))
                .collect::<Result<Vec<_>>>()?;
            (host, Action::Isolate { allow }, reason, None)
        }
        RespondAction::Release { host, reason } => (host, Action::Release, reason, None),
        RespondAction::Kill {
            host,
            entity_id,
            pid,
            start_ticks,
            tree,
            reason,
        } => {
            let (pid, start_ticks, boot_id) = match (entity_id, pid, start_ticks) {
                (Some(e), _, _) => parse_entity(&e)?,
                (None, Some(p), Some(t)) => (p, t, None),
                _ => bail!("name the process with --entity-id, or --pid with --start-ticks"),
            };
            (
                host,
                Action::Kill {
                    pid,
                    start_ticks,
                    boot_id,
                    tree,
                },
                reason,
                None,
            )
        }
        RespondAction::Quarantine { host, path, reason } => {
            (host, Action::Quarantine { path }, reason, None)
        }
        RespondAction::Restore {
            host,
            item,
            reason,
            allowlist,
        } => {
            allowlist_restored = allowlist;
            (host, Action::Restore { item }, reason, None)
        }
        RespondAction::DeleteQuarantined { host, item, reason } => {
            (host, Action::DeleteQuarantined { item }, reason, None)
        }
        RespondAction::ListQuarantine { host } => (
            host,
            Action::ListQuarantine,
            "list the quarantine".to_string(),
            None,
        ),
        RespondAction::CollectFile {
            host,
            path,
            max_bytes,
            out,
            reason,
        } => (host, Action::CollectFile { path, max_bytes }, reason, out),
        RespondAction::CollectProcess { host, pid, reason } => {
            (host, Action::CollectProcess { pid }, reason, None)
        }
        RespondAction::Triage { host, reason } => (host, Action::Triage, reason, None),
    };
    let agent = agent_of(&host)?;
    let queued = call(
        "POST",
        &format!("/api/v1/hosts/{agent}/actions"),
        Some(json!({"action": action, "reason": reason})),
    )?;
    let id = queued["id"]
        .as_str()
        .context("the server's answer has no id")?
        .to_string();
    eprintln!("{} {id} queued for {agent}", action.name());
    if args.wait == 0 {
        print_line(format!("{queued:#}"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    loop {
        let a = call("GET", &format!("/api/v1/actions/{id}"), None)?;
        match a["status"].as_str().unwrap_or_default() {
            "succeeded" => {
                print_line(format!("{:#}", a["output"]))?;
                if allowlist_restored && let Some(sha) = a["output"]["restored"]["sha256"].as_str()
                {
                    let v = call(
                        "POST",
                        "/api/v1/blocklist",
                        Some(json!({"sha256": sha, "list": "allow",
                            "reason": format!("restored from quarantine: {reason}"),
                            "tenant": a["tenant"]})),
                    )?;
                    eprintln!("allowlisted {sha} (version {})", v["version"]);
                }
                if let Some(out) = out {
                    let reply = rt.block_on(api.request(
                        "GET",
                        &format!("/api/v1/actions/{id}/file"),
                        None,
                    ))?;
                    if reply.status != 200 {
                        return Err(api_error(
                            reply.status,
                            &String::from_utf8_lossy(&reply.bytes),
                        ));
                    }
                    std::fs::write(&out, &reply.bytes)
                        .with_context(|| format!("writing {}", out.display()))?;
                    eprintln!("wrote {} ({} bytes)", out.display(), reply.bytes.len());
                }
                return Ok(ExitCode::SUCCESS);
            }
            "failed" | "expired" => {
                bail!(
                    "{} {id} {}: {}",
                    action.name(),
                    a["status"].as_str().unwrap_or_default(),
                    a["error"].as_str().unwrap_or("no reason given")
                )
            }
            status if Instant::now() >= deadline => {
                eprintln!(
                    "{} {id} is still {status} after {} s; see `mamori respond status {id}`",
                    action.name(),
                    args.wait
                );
                return Ok(ExitCode::from(3));
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `boot:pid:ticks` → (pid, ticks, boot).
fn parse_entity(e: &str) -> Result<(u32, u64, Option<String>)> {
    mamori_wire::command::parse_entity(e)
        .with_context(|| format!("{e:?} is not a process entity id (boot:pid:start_ticks)"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn entity_ids_parse() {
        let (p, t, b) = super::parse_entity("3f2a-boot:1234:98765").unwrap();
        assert_eq!((p, t, b.as_deref()), (1234, 98765, Some("3f2a-boot")));
        assert!(super::parse_entity("1234").is_err());
        assert!(super::parse_entity("b:x:1").is_err());
    }
}
