//! `mamori`: the one binary of the Mamori EDR.
//!
//! This crate is only the command line: argument parsing and glue over the library crates
//! (`mamori-sigma`, `mamori-sources`, `mamori-hunt`). Exit codes: 0 = success with nothing
//! found, 1 = findings (detections, failed rules or tests), 2 = error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod agent_cmd;
mod agent_respond;
mod data;
mod demo_cmd;
mod hunt_cmd;
mod query_cmd;
mod respond_cmd;
mod rules_cmd;
mod server_cmd;
mod soc_cmd;
mod up_cmd;

/// Mamori: open EDR with an automated SOC layer.
#[derive(Debug, Parser)]
#[command(name = "mamori", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the detection rules over Windows EVTX and JSON logs and print a timeline.
    ///
    /// Exit code: 0 = no detections, 1 = detections, 2 = error.
    Hunt(hunt_cmd::HuntArgs),
    /// Check, test, install and measure Sigma rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Run the Linux sensor (root): process telemetry from eBPF, as ECS events.
    ///
    /// With --stdout, events are printed as JSON lines; otherwise they go to the spool in the
    /// data directory, for the server.
    Agent(agent_cmd::AgentArgs),
    /// The server: run it, create enrollment tokens, list and revoke agents, see alerts.
    #[command(subcommand)]
    Server(server_cmd::ServerCommand),
    /// Everything on this machine: the server, and this machine's sensor enrolled with it.
    Up {
        /// Detection rules (default: installed SigmaHQ and Mamori's own rules).
        #[arg(long, short)]
        rules: Vec<PathBuf>,
        /// Sensor collectors to turn off (as `mamori agent --without`).
        #[arg(long, value_delimiter = ',')]
        without: Vec<String>,
    },
    /// Search stored events with SQL: `mamori query "SELECT time, host_name,
    /// process_command_line FROM events WHERE process_name = 'curl'"`.
    ///
    /// The table is `events` (columns: `mamori query "DESCRIBE events"`); `json_get(raw,
    /// 'dotted.path')` reads any other field. Read-only.
    Query {
        /// The SQL query.
        sql: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: query_cmd::Format,
        /// Rows at most.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Only this tenant's events.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        target: query_cmd::Target,
    },
    /// Respond on a host through the server: isolate, release, kill, quarantine, restore,
    /// collect. Needs an analyst or admin API token (--token or MAMORI_TOKEN).
    Respond(respond_cmd::RespondArgs),
    /// The automated SOC through the server: incidents, reports (English / Japanese, HTML /
    /// PDF), the monthly report, suppressions with preview, the tuning report.
    Soc(soc_cmd::SocArgs),
    /// Demonstrations.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Print log records as JSON lines with the field names Sigma rules see (for rule
    /// writers: what can a rule match in these logs?).
    Dump {
        /// EVTX or JSON files, or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Only records with this event id.
        #[arg(long)]
        event_id: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum DemoCommand {
    /// A harmless imitation of an intrusion on this machine (discovery, an encoded command,
    /// a persistence attempt in a scratch directory, a connection to a loopback "C2").
    Attack {
        /// Beacon to this TCP `ADDR:PORT` (a listener you run, e.g. on a test machine)
        /// instead of a "C2" on loopback: then the connection is external communication.
        #[arg(long)]
        c2: Option<std::net::SocketAddr>,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Load every rule under DIR and report what does not load, with the reason.
    ///
    /// Ends with `N passed, N failed`. Exit code 1 if any rule failed.
    Check {
        /// Rule files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Values for `%placeholder%` names used with the `expand` modifier (YAML map).
        #[arg(long)]
        placeholders: Option<PathBuf>,
        /// List every document, not only failures.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Run SigmaHQ's regression samples: each must trigger exactly the rule its info.yml names.
    ///
    /// DIR is a SigmaHQ checkout (holding `regression_data/` and `rules*/`) or its
    /// `regression_data/` folder. Ends with `N passed, N failed`. Exit code 1 on any failure.
    Regress {
        /// The SigmaHQ folder or its regression_data folder.
        dir: PathBuf,
        /// Rule directories to load (default: the rules*/ folders next to regression_data).
        #[arg(long)]
        rules: Vec<PathBuf>,
    },
    /// Install the SigmaHQ corpus into Mamori's data directory, validated and pinned.
    Install {
        /// A SigmaHQ checkout or release folder (holding rules*/ folders).
        #[arg(long)]
        from: PathBuf,
        /// Version label to pin (default: read from SOURCE.txt or VERSION in the folder).
        #[arg(long)]
        version: Option<String>,
    },
    /// Report, per ATT&CK technique folder of a labelled EVTX corpus, which rules fire.
    Coverage {
        /// The corpus root (e.g. EVTX-to-MITRE-Attack).
        dir: PathBuf,
        /// Rule directories (default: as for `hunt`).
        #[arg(long)]
        rules: Vec<PathBuf>,
        /// Worker threads.
        #[arg(long, short)]
        jobs: Option<usize>,
    },
    /// Show where Mamori looks for rules and what is installed.
    Where,
}

/// Output formats of `hunt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A readable table.
    Table,
    /// Comma-separated values.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MAMORI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or the journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Hunt(args) => hunt_cmd::run(args),
        Command::Agent(args) => agent_cmd::run(args),
        Command::Server(cmd) => server_cmd::run(cmd),
        Command::Up { rules, without } => up_cmd::run(&rules, &without),
        Command::Demo(DemoCommand::Attack { c2 }) => demo_cmd::attack(c2),
        Command::Respond(args) => respond_cmd::run(args),
        Command::Soc(args) => soc_cmd::run(args),
        Command::Query {
            sql,
            format,
            limit,
            tenant,
            target,
        } => query_cmd::run(&sql, format, limit, tenant, target),
        Command::Rules(RulesCommand::Check {
            paths,
            placeholders,
            verbose,
        }) => rules_cmd::check(&paths, placeholders.as_deref(), verbose),
        Command::Rules(RulesCommand::Regress { dir, rules }) => rules_cmd::regress(&dir, &rules),
        Command::Rules(RulesCommand::Install { from, version }) => {
            rules_cmd::install(&from, version)
        }
        Command::Rules(RulesCommand::Coverage { dir, rules, jobs }) => {
            rules_cmd::coverage(&dir, &rules, jobs)
        }
        Command::Rules(RulesCommand::Where) => rules_cmd::show_where(),
        Command::Dump { paths, event_id } => rules_cmd::dump(&paths, event_id),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Writes `text` to standard output; a closed pipe (`mamori … | head`) ends the output
/// quietly instead of failing.
pub(crate) fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
