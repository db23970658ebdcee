//! `mamori soc …`: the automated SOC through the server's API — incidents and their
//! reports (English or Japanese, HTML or PDF), the monthly report, closing incidents,
//! suppressions with their preview, and the initial tuning report.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// `mamori soc`.
#[derive(Debug, Args)]
pub struct SocArgs {
    #[command(subcommand)]
    command: SocCommand,
    /// The server (default: this machine's, from the local configuration).
    #[arg(long, env = "MAMORI_SERVER", global = true)]
    server: Option<String>,
    /// API token.
    #[arg(long, env = "MAMORI_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The server's CA fingerprint (default: trust the local server's CA file).
    #[arg(long, global = true)]
    ca_fingerprint: Option<String>,
    /// Tenant (tokens bound to one tenant use theirs).
    #[arg(long, global = true)]
    tenant: Option<String>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum SocCommand {
    /// Incidents, newest first.
    Incidents {
        /// `open` or `closed`.
        #[arg(long)]
        status: Option<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// One incident with its evidence (JSON).
    Incident {
        /// Incident id.
        id: i64,
    },
    /// An incident's report.
    Report {
        /// Incident id.
        id: i64,
        /// `en` or `ja` (default: the tenant's language).
        #[arg(long)]
        lang: Option<String>,
        /// `html`, `pdf` or `json`.
        #[arg(long, default_value = "html")]
        format: String,
        /// Write it here (default: standard output; PDFs need --out).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The monthly report.
    Monthly {
        /// `YYYY-MM` (default: this month).
        #[arg(long)]
        month: Option<String>,
        /// `en` or `ja`.
        #[arg(long)]
        lang: Option<String>,
        /// `html`, `pdf` or `json`.
        #[arg(long, default_value = "html")]
        format: String,
        /// Write it here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Close an incident (and its alerts).
    Close {
        /// Incident id.
        id: i64,
        /// What you found.
        #[arg(long)]
        reason: String,
    },
    /// Suppress future alerts matching every field given; shows what it would have hidden.
    Suppress {
        /// Rule id.
        #[arg(long)]
        rule: Option<String>,
        /// Host name (glob).
        #[arg(long)]
        host: Option<String>,
        /// Executable (glob).
        #[arg(long)]
        process: Option<String>,
        /// Command line (glob).
        #[arg(long)]
        command_line: Option<String>,
        /// SHA-256.
        #[arg(long)]
        sha256: Option<String>,
        /// User.
        #[arg(long)]
        user: Option<String>,
        /// Host group (from the SOC policy).
        #[arg(long)]
        group: Option<String>,
        /// Why (audited).
        #[arg(long, default_value = "")]
        reason: String,
        /// Days until it expires (1 to 365).
        #[arg(long, default_value_t = 90)]
        expires_days: i64,
        /// Only show the preview.
        #[arg(long)]
        preview: bool,
    },
    /// Active suppressions.
    Suppressions,
    /// Remove a suppression.
    Unsuppress {
        /// Suppression id.
        id: i64,
    },
    /// The initial tuning report: the noisiest rules with suggested suppressions.
    Tuning {
        /// Days to look back.
        #[arg(long, default_value_t = 30)]
        days: i64,
    },
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs `mamori soc`.
pub fn run(args: SocArgs) -> Result<ExitCode> {
    let (rt, api) = crate::respond_cmd::connect_local_default(
        args.server.clone(),
        args.token.clone(),
        args.ca_fingerprint.clone(),
    )?;
    let raw = |method: &str, path: &str, body: Option<Value>| -> Result<Vec<u8>> {
        let body = body.map(|b| b.to_string());
        let reply = rt.block_on(api.request(method, path, body.as_deref().map(str::as_bytes)))?;
        if !(200..300).contains(&reply.status) {
            return Err(crate::respond_cmd::api_error(reply.status, &reply.body));
        }
        Ok(reply.bytes)
    };
    let call = |method: &str, path: &str, body: Option<Value>| -> Result<Value> {
        let b = raw(method, path, body)?;
        serde_json::from_slice(&b).with_context(|| format!("{path}: not JSON"))
    };
    let write = |bytes: Vec<u8>, out: Option<PathBuf>, format: &str| -> Result<()> {
        match out {
            Some(p) => {
                std::fs::write(&p, &bytes).with_context(|| format!("writing {}", p.display()))?;
                eprintln!("wrote {} ({} bytes)", p.display(), bytes.len());
                Ok(())
            }
            None if format == "pdf" => bail!("a PDF needs --out FILE"),
            None => crate::print_out(&String::from_utf8_lossy(&bytes)),
        }
    };
    let tenant = args.tenant.clone();
    match args.command {
        SocCommand::Incidents { status, json } => {
            let path = format!(
                "/api/v1/incidents{}",
                query(&[("tenant", tenant), ("status", status)])
            );
            let v = call("GET", &path, None)?;
            let rows = v.as_array().cloned().unwrap_or_default();
            if json {
                for r in rows {
                    crate::print_out(&format!("{r}\n"))?;
                }
            } else {
                crate::print_out(&format!(
                    "{:>5} {:<13} {:<7} {:>6} {:<24} TITLE\n",
                    "ID", "SEVERITY", "STATUS", "ALERTS", "OPENED"
                ))?;
                for r in rows {
                    crate::print_out(&format!(
                        "{:>5} {:<13} {:<7} {:>6} {:<24} {}\n",
                        r["id"],
                        r["severity"].as_str().unwrap_or(""),
                        r["status"].as_str().unwrap_or(""),
                        r["alerts"],
                        mamori_report::fmt_time(r["opened_at"].as_i64().unwrap_or(0)),
                        r["title"].as_str().unwrap_or("")
                    ))?;
                }
            }
        }
        SocCommand::Incident { id } => {
            let v = call("GET", &format!("/api/v1/incidents/{id}"), None)?;
            crate::print_out(&format!("{}\n", serde_json::to_string_pretty(&v)?))?;
        }
        SocCommand::Report {
            id,
            lang,
            format,
            out,
        } => {
            let path = format!(
                "/api/v1/incidents/{id}/report{}",
                query(&[("lang", lang), ("format", Some(format.clone()))])
            );
            write(raw("GET", &path, None)?, out, &format)?;
        }
        SocCommand::Monthly {
            month,
            lang,
            format,
            out,
        } => {
            let path = format!(
                "/api/v1/reports/monthly{}",
                query(&[
                    ("tenant", tenant),
                    ("month", month),
                    ("lang", lang),
                    ("format", Some(format.clone()))
                ])
            );
            write(raw("GET", &path, None)?, out, &format)?;
        }
        SocCommand::Close { id, reason } => {
            call(
                "POST",
                &format!("/api/v1/incidents/{id}/status"),
                Some(json!({"status": "closed", "reason": reason})),
            )?;
            eprintln!("incident {id} closed");
        }
        SocCommand::Suppress {
            rule,
            host,
            process,
            command_line,
            sha256,
            user,
            group,
            reason,
            expires_days,
            preview,
        } => {
            let mut body = json!({
                "rule_id": rule.unwrap_or_default(), "host": host.unwrap_or_default(),
                "process": process.unwrap_or_default(),
                "command_line": command_line.unwrap_or_default(),
                "sha256": sha256.unwrap_or_default(), "user": user.unwrap_or_default(),
                "group": group.unwrap_or_default(),
            });
            if let Some(t) = tenant {
                body["tenant"] = json!(t);
            }
            let p = if preview {
                call("POST", "/api/v1/suppressions/preview", Some(body))?
            } else {
                body["reason"] = json!(reason);
                body["expires_days"] = json!(expires_days);
                let v = call("POST", "/api/v1/suppressions", Some(body))?;
                eprintln!(
                    "suppression {} added, expires {}",
                    v["suppression"]["id"],
                    mamori_report::fmt_time(v["suppression"]["expires_at"].as_i64().unwrap_or(0))
                );
                v["preview"].clone()
            };
            crate::print_out(&format!(
                "would have suppressed {} of {} alerts ({} detections, {} high or critical) in \
                 the last {} days\n",
                p["alerts"], p["of_alerts"], p["detections"], p["high_or_critical"], p["days"]
            ))?;
        }
        SocCommand::Suppressions => {
            let v = call(
                "GET",
                &format!("/api/v1/suppressions{}", query(&[("tenant", tenant)])),
                None,
            )?;
            for s in v.as_array().into_iter().flatten() {
                crate::print_out(&format!("{s}\n"))?;
            }
        }
        SocCommand::Unsuppress { id } => {
            call("DELETE", &format!("/api/v1/suppressions/{id}"), None)?;
            eprintln!("suppression {id} removed");
        }
        SocCommand::Tuning { days } => {
            let v = call(
                "GET",
                &format!(
                    "/api/v1/tuning{}",
                    query(&[("tenant", tenant), ("days", Some(days.to_string()))])
                ),
                None,
            )?;
            for n in v["noisiest_rules"].as_array().into_iter().flatten() {
                let s = &n["suggestion"];
                let mut flags = vec![format!("--rule {}", s["rule_id"].as_str().unwrap_or(""))];
                for (k, f) in [("host", "--host"), ("process", "--process")] {
                    if let Some(v) = s[k].as_str().filter(|v| !v.is_empty()) {
                        flags.push(format!("{f} '{v}'"));
                    }
                }
                crate::print_out(&format!(
                    "{} ({}): {} alerts, {} detections, {} hosts, up to {}\n  {}\n  suggested: \
                     mamori soc suppress {} --reason \"...\"  (would have hidden {} alerts)\n",
                    n["rule_title"].as_str().unwrap_or(""),
                    n["rule_id"].as_str().unwrap_or(""),
                    n["alerts"],
                    n["detections"],
                    n["hosts"],
                    n["top_severity"].as_str().unwrap_or(""),
                    n["why"].as_str().unwrap_or(""),
                    flags.join(" "),
                    n["preview"]["alerts"]
                ))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
