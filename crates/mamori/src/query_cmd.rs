//! `mamori query "SELECT …"`: SQL over the events the local server has stored.

use std::process::ExitCode;

use anyhow::{Result, bail};
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

/// Runs `sql` over the local server's columnar store (read-only; safe while the server runs).
pub fn run(sql: &str, format: Format, limit: usize, tenant: Option<String>) -> Result<ExitCode> {
    let config = mamori_server::ServerConfig::load(None, crate::server_cmd::server_dir(), |k| {
        std::env::var(k).ok()
    })?;
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
        Format::Table => print!("{}", table.to_text()),
        Format::Json => println!("{}", table.to_json()),
        Format::Csv => print!("{}", table.to_csv()),
    }
    Ok(ExitCode::SUCCESS)
}
