//! `mamori up`: the whole thing on one machine. Starts the server (embedded defaults), enrolls
//! this machine's sensor with it on first use, runs the sensor, and says where everything is.
//! Without root only the server runs (the sensor loads eBPF programs).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{agent_cmd, data, server_cmd};

/// Runs server and sensor until SIGTERM/SIGINT.
pub fn run(rules: &[std::path::PathBuf], without: &[String]) -> Result<ExitCode> {
    let config = mamori_server::ServerConfig::load(None, server_cmd::server_dir(), |k| {
        std::env::var(k).ok()
    })?;
    let url = format!("https://{}", config.listen);
    let rule_set = server_cmd::load_server_rules(rules)?;
    let (server, init) = mamori_server::Server::open(config.clone(), Some(rule_set))?;
    let ident_dir = agent_cmd::identity_dir();
    let enrolled = mamori_link::Identity::load(&ident_dir)?.is_some_and(|i| i.server == url);
    let root = agent_cmd::is_root();
    let token = if !enrolled && root {
        Some(
            server
                .state()
                .create_enroll_token("mamori-up", "default", 600, 1)?
                .token,
        )
    } else {
        None
    };
    let listen = config.listen;
    let server_thread = std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
        rt.block_on(server.serve(server_cmd::shutdown_signal()))?;
        Ok(())
    });
    // Wait until the listener accepts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(listen).is_err() {
        if Instant::now() > deadline || server_thread.is_finished() {
            return match server_thread.join() {
                Ok(Err(e)) => Err(e),
                _ => anyhow::bail!("the server did not start listening on {listen}"),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "mamori up: server on {url} (data in {})",
        config.data_dir.display()
    );
    if let Some(t) = &init.admin_token {
        eprintln!("mamori up: admin API token (shown once, stored only as a hash): {t}");
    }
    eprintln!("mamori up: CA fingerprint {}", init.ca_fingerprint);
    if let Some(token) = token {
        let facts = agent_cmd::host_facts();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let ident = rt
            .block_on(mamori_link::enroll(
                &url,
                &token,
                &init.ca_fingerprint,
                &facts,
            ))
            .context("enrolling this machine's sensor")?;
        ident.save(&ident_dir)?;
        eprintln!(
            "mamori up: this machine's sensor enrolled as {}",
            ident.agent_id
        );
    }
    eprintln!(
        "mamori up: alerts: `mamori server alerts`; agents: `mamori server agents`; \
         audit log: `mamori server audit`; try `mamori demo attack` in another terminal"
    );
    eprintln!("mamori up: data directory {}", data::data_dir().display());
    if !root {
        eprintln!(
            "mamori up: not root: the server runs, the sensor does not (it loads eBPF \
             programs): run `sudo mamori up` to have both"
        );
        return match server_thread.join() {
            Ok(r) => r.map(|_| ExitCode::SUCCESS),
            Err(_) => anyhow::bail!("the server thread panicked"),
        };
    }
    let agent = agent_cmd::run(agent_cmd::default_args(without));
    // The agent stopped (SIGTERM/SIGINT): the server got the same signal.
    let served = server_thread.join();
    let code = agent?;
    match served {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("the server thread panicked"),
    }
    Ok(code)
}
