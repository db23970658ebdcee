//! `mamori query "SELECT …"`: SQL over stored events, through a server's API (`--server`) or
//! straight from the local server's files.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use mamori_columnar::{Engine, Limits, Scope};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A text table.
    Table,
    /// `{"columns": [...], "rows": [{...}], "truncated": bool}`.
    Json,
    /// CSV with a header line.
    Csv,
}

/// Where the query runs.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Query this server's API (`https://host:port`) instead of the local files.
    #[arg(long, env = "MAMORI_SERVER")]
    pub server: Option<String>,
    /// API token for --server.
    #[arg(long, env = "MAMORI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The server's CA fingerprint (default: trust the local server's CA file).
    #[arg(long)]
    pub ca_fingerprint: Option<String>,
}

/// Runs `sql`.
pub fn run(
    sql: &str,
    format: Format,
    limit: usize,
    tenant: Option<String>,
    target: Target,
) -> Result<ExitCode> {
    let config = mamori_server::ServerConfig::load(None, crate::server_cmd::server_dir(), |k| {
        std::env::var(k).ok()
    })?;
    if let Some(server) = &target.server {
        return remote(server, &target, &config, sql, format, limit, tenant);
    }
    let root = mamori_server::columnar_dir(&config.data_dir);
    if !root.is_dir() {
        bail!(
            "no events stored yet in {} (start the server with `mamori up` or `mamori server run`)",
            root.display()
        );
    }
    let scope = tenant.map_or(Scope::All, Scope::Tenant);
    let limits = Limits {
        rows: limit,
        ..Limits::default()
    };
    let table = Engine::new()?.run(&root, &scope, sql, limits)?;
    match format {
        Format::Table => crate::print_out(&table.to_text())?,
        Format::Json => crate::print_out(&format!("{}\n", table.to_json()))?,
        Format::Csv => crate::print_out(&table.to_csv())?,
    }
    Ok(ExitCode::SUCCESS)
}

fn remote(
    server: &str,
    target: &Target,
    config: &mamori_server::ServerConfig,
    sql: &str,
    format: Format,
    limit: usize,
    tenant: Option<String>,
) -> Result<ExitCode> {
    let (rt, api) = connect(server, target, config)?;
    let body = serde_json::json!({
        "sql": sql,
        "format": if format == Format::Csv { "csv" } else { "json" },
        "limit": limit,
        "tenant": tenant,
    });
    let reply = rt.block_on(api.request(
        "POST",
        "/api/v1/events/query",
        Some(body.to_string().as_bytes()),
    ))?;
    if reply.status != 200 {
        let why = serde_json::from_str::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(reply.body);
        bail!("{server}: {} {why}", reply.status);
    }
    match format {
        Format::Csv => crate::print_out(&reply.body)?,
        Format::Json => crate::print_out(&format!("{}\n", reply.body))?,
        Format::Table => crate::print_out(&text_table(&serde_json::from_str(&reply.body)?))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// A client for `server`'s API with the target's token, trusting the pinned CA (or the local
/// server's CA file).
pub fn connect(
    server: &str,
    target: &Target,
    config: &mamori_server::ServerConfig,
) -> Result<(tokio::runtime::Runtime, mamori_link::api::Api)> {
    let token = target
        .token
        .as_deref()
        .context("--server needs an API token: --token or MAMORI_TOKEN")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ca_pem = match &target.ca_fingerprint {
        Some(fp) => rt.block_on(mamori_link::pinned_ca(server, fp))?,
        None => {
            let local = config.data_dir.join("pki/ca.pem");
            std::fs::read_to_string(&local).with_context(|| {
                format!(
                    "{}: no local CA; pass the server's --ca-fingerprint",
                    local.display()
                )
            })?
        }
    };
    let api = mamori_link::api::Api::new(server, &ca_pem, token)?;
    Ok((rt, api))
}

/// A text table from the API's JSON result.
fn text_table(v: &serde_json::Value) -> String {
    let cols: Vec<String> = v["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    let cell = |x: &serde_json::Value| -> String {
        let s = match x {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        s.chars().take(80).collect()
    };
    let rows: Vec<Vec<String>> = v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| cols.iter().map(|c| cell(&r[c])).collect())
        .collect();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([c.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: &[String]| {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    let mut out = line(&cols) + "\n";
    out += &widths
        .iter()
        .map(|w| "-".repeat(*w))
        .collect::<Vec<_>>()
        .join("-+-");
    out.push('\n');
    for r in &rows {
        out += &line(r);
        out.push('\n');
    }
    let more = if v["truncated"] == true {
        " (more rows matched: cut at the limit)"
    } else {
        ""
    };
    out + &format!("{} rows{more}\n", rows.len())
}
