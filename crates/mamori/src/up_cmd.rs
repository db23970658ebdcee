//! `mamori up`: the whole thing on one machine. Starts the server (embedded defaults), enrolls
//! this machine's sensor with it on first use, runs the sensor, and says where everything is.
//! Without root only the server runs (the sensor loads eBPF programs).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::{agent_cmd, server_cmd};

/// Runs server and sensor until SIGTERM/SIGINT.
pub fn run(rules: &[std::path::PathBuf], without: &[String]) -> Result<ExitCode> {
    let config = mamori_server::ServerConfig::load(None, server_cmd::server_dir(), |k| {
        std::env::var(k).ok()
    })?;
    let url = format!("https://{}", config.listen);
    let (server, init) =
        mamori_server::Server::open(config.clone(), Some(server_cmd::server_rules(rules)))?;
    server_cmd::print_rules_report(&init);
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
        rt.block_on(async move {
            let bound = server.bind().await?;
            bound.serve(server_cmd::shutdown_signal()).await
        })?;
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
    let dir = config.data_dir.display();
    let mut lines = vec![
        format!(
            "server      {url}  (TLS; CA {dir}/pki/ca.pem, fingerprint {})",
            init.ca_fingerprint
        ),
        format!(
            "data        {dir}  (events: columnar/, state: state.db; kept {} days)",
            config.retention_days
        ),
        format!("API         {url}/api/v1  (description: {url}/api/v1/openapi.json)"),
    ];
    match &init.admin_token {
        Some(t) => lines.push(format!(
            "admin token {t}  (shown once, stored only as a hash; more: mamori server api-token)"
        )),
        None => lines.push(
            "admin token shown on first start only; make another with `mamori server api-token --role admin --name NAME`".into(),
        ),
    }
    lines.extend([
        "try         mamori demo attack                      (in another terminal)".to_string(),
        "alerts      mamori server alerts [--json]           (API: GET /api/v1/alerts)".to_string(),
        "hosts       mamori server agents                    (API: GET /api/v1/hosts)".to_string(),
        "search      mamori query \"SELECT time, host_name, process_command_line FROM events ORDER BY time DESC LIMIT 20\"".to_string(),
        "respond     MAMORI_TOKEN=<admin token> mamori respond triage <host> --reason \"look\"  (isolate, kill, quarantine, block, …)".to_string(),
        "audit log   mamori server audit".to_string(),
    ]);
    eprintln!("mamori up: ready");
    for l in lines {
        eprintln!("  {l}");
    }
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
