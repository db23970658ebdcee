//! `mamori agent`: the Linux sensor.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use mamori_model::{Event, Shape};
use mamori_sensor::bpf::{self, BpfOptions, SensorEvent, SyscallHooks};
use mamori_sensor::ecs::{self, HostInfo};
use mamori_sensor::process::ProcessTable;
use mamori_sigma::CompileOptions;
use serde_json::json;

use crate::data;

/// Arguments of `mamori agent`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    action: Option<AgentAction>,
    /// Print events as JSON lines on standard output instead of spooling them.
    #[arg(long)]
    stdout: bool,
    /// Also run these rules on the agent and print detections next to the events
    /// (with --stdout).
    #[arg(long, short)]
    rules: Vec<PathBuf>,
    /// Wake the reader when this many bytes of events are queued in the kernel (0: every
    /// event). Latency is bounded by the 100 ms poll either way.
    #[arg(long, default_value_t = 64 * 1024)]
    wake_bytes: u64,
    /// Stop after this many seconds (for tests and benchmarks).
    #[arg(long)]
    duration: Option<u64>,
    /// Event sources to turn off: `file` (file changes come from syscall tracepoints, which
    /// every syscall pays for), `network` (connections and DNS) or `login`. Process events
    /// are always collected.
    #[arg(long, value_delimiter = ',')]
    without: Vec<String>,
    /// Do not report file changes under this path prefix (repeatable; filtered in the
    /// kernel). `/proc/`, `/sys/` and `/dev/` are excluded by default.
    #[arg(long, value_name = "PREFIX")]
    file_exclude: Vec<String>,
    /// Report file changes under this prefix even inside an excluded one (repeatable; the
    /// longest matching prefix wins).
    #[arg(long, value_name = "PREFIX")]
    file_include: Vec<String>,
    /// How file, privilege and module syscalls are hooked: `auto` (per-syscall tracepoints
    /// when tracefs can be used, else the raw hooks), `tracepoints`, or `raw` (the raw
    /// sys_enter/sys_exit hooks: a BPF program runs on every syscall).
    #[arg(long, value_enum, default_value_t = Hooks::Auto)]
    file_hooks: Hooks,
    /// Never turn kernel audit on. Logins come from the audit stream, which the kernel only
    /// fills while audit is enabled; by default the agent enables it if it is off (and turns
    /// it off again when it stops). With this flag, logins are reported only if something
    /// else (auditd) enabled audit.
    #[arg(long)]
    keep_audit_off: bool,
    /// Where process events come from: `auto` (eBPF, else the netlink process connector),
    /// `bpf`, or `proc-connector` (the fallback, forced).
    #[arg(long, value_enum, default_value_t = Collector::Auto)]
    collector: Collector,
    /// Print a health report (JSON, on standard error) every this many seconds; 0: never.
    #[arg(long, default_value_t = 60)]
    health_interval: u64,
}

/// Syscall hooking (see `mamori_sensor::bpf::SyscallHooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Hooks {
    /// Per-syscall tracepoints if tracefs is usable, else raw hooks.
    Auto,
    /// Per-syscall tracepoints.
    Tracepoints,
    /// Raw sys_enter/sys_exit hooks.
    Raw,
}

/// Process event sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Collector {
    /// eBPF when it loads, the process connector otherwise.
    Auto,
    /// eBPF only.
    Bpf,
    /// The netlink process connector only (fallback mode).
    ProcConnector,
}

/// `mamori agent enroll` and `mamori agent ship`.
#[derive(Debug, clap::Subcommand)]
pub enum AgentAction {
    /// Join a server: trust only the CA with this fingerprint, trade the token for a
    /// certificate for a key made here. Afterwards `mamori agent` ships its spool there.
    Enroll {
        /// The server, `https://host:port`.
        #[arg(long)]
        server: String,
        /// Enrollment token (from `mamori server token`).
        #[arg(long)]
        token: String,
        /// The server CA's fingerprint (`sha256:…`, printed by the server).
        #[arg(long)]
        ca_fingerprint: String,
    },
    /// Ship the spool to the server without collecting (drains what is queued).
    Ship {
        /// Stop after this many seconds; without it, stop once the spool is empty.
        #[arg(long)]
        duration: Option<u64>,
    },
}

/// The arguments of a plain `mamori agent` (spool mode) without these collectors.
pub fn default_args(without: &[String]) -> AgentArgs {
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        args: AgentArgs,
    }
    let mut args = <Wrap as clap::Parser>::parse_from(["agent"]).args;
    args.without = without.to_vec();
    args
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix_is_root().unwrap_or(false)
}

/// Where the agent keeps its identity: `<data>/agent`.
pub fn identity_dir() -> std::path::PathBuf {
    data::data_dir().join("agent")
}

/// What the agent tells the server about this host at enrollment.
pub fn host_facts() -> mamori_link::HostFacts {
    let host = HostInfo::current();
    mamori_link::HostFacts {
        hostname: host.name.clone(),
        os: "linux".into(),
        kernel: host.kernel.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    }
}

fn enroll(server: &str, token: &str, fingerprint: &str) -> Result<ExitCode> {
    let facts = host_facts();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let ident = rt
        .block_on(mamori_link::enroll(server, token, fingerprint, &facts))
        .with_context(|| format!("enrolling with {server}"))?;
    let dir = identity_dir();
    ident.save(&dir)?;
    eprintln!(
        "mamori agent: enrolled with {server} as {} (tenant {}); identity in {}",
        ident.agent_id,
        ident.tenant,
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn open_spool() -> Result<mamori_spool::Spool> {
    let dir = data::data_dir().join("spool");
    let (spool, recovery) = mamori_spool::Spool::open(&dir, mamori_spool::SpoolConfig::default())
        .with_context(|| format!("opening the spool in {}", dir.display()))?;
    eprintln!(
        "mamori agent: spool {} ({} records waiting, {} corrupt, {} bytes of torn tail cut)",
        dir.display(),
        recovery.records,
        recovery.corrupted_records,
        recovery.truncated_tail_bytes
    );
    Ok(spool)
}

/// The shipper thread: streams the spool to the server until `stop`.
struct Shipper {
    stop: Arc<std::sync::atomic::AtomicBool>,
    stats: Arc<mamori_link::ShipStats>,
    thread: Option<std::thread::JoinHandle<Result<(), mamori_link::LinkError>>>,
}

impl Shipper {
    fn start(
        ident: mamori_link::Identity,
        spool: Arc<Mutex<mamori_spool::Spool>>,
        opts: mamori_link::ShipOptions,
    ) -> Shipper {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stats = Arc::new(mamori_link::ShipStats::default());
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| mamori_link::LinkError::Transport(e.to_string()))?;
            let r = rt.block_on(mamori_link::ship(&ident, spool, stop2, opts, stats2));
            if let Err(e) = &r {
                eprintln!("mamori agent: shipping stopped: {e}");
            }
            r
        });
        Shipper {
            stop,
            stats,
            thread: Some(thread),
        }
    }

    fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    fn stop(&mut self) -> Result<(), mamori_link::LinkError> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(mamori_link::LinkError::Transport(
                "the shipper panicked".into(),
            )),
            None => Ok(()),
        }
    }
}

fn ship_only(duration: Option<u64>) -> Result<ExitCode> {
    let ident = mamori_link::Identity::load(&identity_dir())?
        .context("this agent is not enrolled: run mamori agent enroll first")?;
    let spool = Arc::new(Mutex::new(open_spool()?));
    let deadline = duration.map(|d| Instant::now() + Duration::from_secs(d));
    // Without a deadline, drain: the last acknowledgement comes as soon as the last batch
    // is durable (not after the server's wait for more batches).
    let opts = mamori_link::ShipOptions {
        drain: deadline.is_none(),
        ..Default::default()
    };
    let mut shipper = Shipper::start(ident, spool.clone(), opts);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let st = spool.lock().map(|s| s.stats()).ok();
        let empty = st.is_some_and(|s| s.depth_records == 0);
        if shipper.finished()
            || deadline.is_some_and(|d| Instant::now() >= d)
            || (deadline.is_none() && empty)
        {
            break;
        }
    }
    let r = shipper.stop();
    let st = spool.lock().map(|s| s.stats()).ok();
    eprintln!(
        "mamori agent: shipped through {}; {} records still queued; {} connections",
        shipper
            .stats
            .acked
            .load(std::sync::atomic::Ordering::Relaxed),
        st.map(|s| s.depth_records).unwrap_or(0),
        shipper
            .stats
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    r?;
    let left = st.map(|s| s.depth_records).unwrap_or(0);
    if left > 0 {
        bail!("{left} records were not delivered (the server is unreachable or refused them)");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: AgentArgs) -> Result<ExitCode> {
    match &args.action {
        Some(AgentAction::Enroll {
            server,
            token,
            ca_fingerprint,
        }) => return enroll(server, token, ca_fingerprint),
        Some(AgentAction::Ship { duration }) => return ship_only(*duration),
        None => {}
    }
    if nix_is_root().is_some_and(|root| !root) {
        bail!("mamori agent needs root (it loads eBPF programs): run it with sudo");
    }
    let rules = if args.rules.is_empty() {
        None
    } else {
        Some(data::load_rules(&args.rules, CompileOptions::default())?.rules)
    };
    let mut scanner = rules.as_ref().map(|r| r.scanner());
    let host = HostInfo::current();
    let table = std::cell::RefCell::new(ProcessTable::from_proc());
    // Work done in other threads (logins; large-file hashes; files in fallback mode) comes
    // back here as events, stamped with their arrival.
    let (side_tx, side_rx) = std::sync::mpsc::channel::<(Instant, SensorEvent)>();
    let mut hasher = {
        let tx = side_tx.clone();
        mamori_sensor::hash::Hasher::with_background(move |h| {
            tx.send((Instant::now(), SensorEvent::Hashed(h))).is_ok()
        })
    };
    let spool = if args.stdout {
        None
    } else {
        Some(Arc::new(Mutex::new(open_spool()?)))
    };
    // Enrolled: ship the spool to the server as it fills, and answer its commands.
    let mut responding = None;
    let mut shipper = match (&spool, mamori_link::Identity::load(&identity_dir())?) {
        (Some(sp), Some(ident)) => {
            responding = Some(crate::agent_respond::Responding::start(
                ident.clone(),
                sp.clone(),
                host.clone(),
            )?);
            eprintln!(
                "mamori agent: shipping to {} as {}",
                ident.server, ident.agent_id
            );
            Some(Shipper::start(
                ident,
                sp.clone(),
                mamori_link::ShipOptions::default(),
            ))
        }
        (Some(_), None) => {
            eprintln!(
                "mamori agent: not enrolled: events stay in the spool until `mamori agent enroll`"
            );
            None
        }
        _ => None,
    };
    let out = std::cell::RefCell::new(std::io::BufWriter::new(std::io::stdout().lock()));
    let started = Instant::now();
    let deadline = args.duration.map(|s| started + Duration::from_secs(s));
    let events = std::cell::Cell::new(0u64);
    // The first report goes out at once: the server's inventory fills on connection.
    let mut next_health = Instant::now();
    let mut last_drops = 0u64;
    let failure: Option<anyhow::Error> = None;
    let mut hits = Vec::new();
    for w in &args.without {
        if !["file", "network", "login"].contains(&w.as_str()) {
            bail!("--without takes `file`, `network` and/or `login`, not {w:?}");
        }
    }
    let mut logins = if args.without.iter().any(|w| w == "login") {
        Logins::Off
    } else {
        start_logins(!args.keep_audit_off, side_tx.clone())
    };
    let mut paths = mamori_sensor::bpf::PathRules::default();
    for p in &args.file_exclude {
        paths.exclude(p)?;
    }
    for p in &args.file_include {
        paths.include(p)?;
    }
    let opts = BpfOptions {
        paths: paths.clone(),
        syscall_hooks: match args.file_hooks {
            Hooks::Auto => SyscallHooks::Auto,
            Hooks::Tracepoints => SyscallHooks::Tracepoints,
            Hooks::Raw => SyscallHooks::Raw,
        },
        wake_bytes: args.wake_bytes,
        files: !args.without.iter().any(|w| w == "file"),
        network: !args.without.iter().any(|w| w == "network"),
        ..BpfOptions::default()
    };
    let (files_on, network_on) = (opts.files, opts.network);
    let file_hooks = std::cell::Cell::new("off");
    let known = table.borrow().len();
    let failure = std::cell::RefCell::new(failure);
    let fallback = std::cell::Cell::new(false);
    let fallback_files = std::cell::Cell::new(false);
    let attached = std::cell::Cell::new(false);
    let on_event = std::cell::RefCell::new(|raw: SensorEvent| {
        let mut table = table.borrow_mut();
        let Some(doc) = ecs::render_any(&raw, &mut table, &host, &mut hasher, &paths) else {
            return;
        };
        events.set(events.get() + 1);
        if let Some(sc) = scanner.as_mut() {
            let value: serde_json::Value = serde_json::from_str(&doc).unwrap_or_default();
            let entity = value["process"]["entity_id"].clone();
            let value_pid = value["process"]["pid"].clone();
            let ev = Event::with_shape(value, Shape::Ecs);
            hits.clear();
            sc.scan(&ev, &mut hits);
            for &h in &hits {
                let info = &sc.rule_set().rules()[h];
                let det = json!({"detection": {
                    "rule_id": info.meta.id, "rule_title": info.meta.title,
                    "level": info.meta.level.as_str(), "tags": info.meta.tags,
                    "process": {"pid": value_pid, "entity_id": entity},
                }});
                let _ = writeln!(out.borrow_mut(), "{det}");
            }
        }
        if let Some(sp) = &spool {
            if let Err(e) = sp
                .lock()
                .map_err(|_| anyhow::anyhow!("spool lock poisoned"))
                .and_then(|mut s| Ok(s.append(doc.as_bytes())?))
            {
                failure.borrow_mut().get_or_insert(e);
            }
        } else if let Err(e) = writeln!(out.borrow_mut(), "{doc}") {
            failure.borrow_mut().get_or_insert(e.into());
        }
    });
    let login_state = logins.describe();
    // SIGTERM/SIGINT stop the agent cleanly: queued events are written, the spool synced,
    // audit restored.
    let stop_signal = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop_signal.clone())
            .context("installing the signal handler")?;
    }
    // A login record can reach the agent before the exec event of the process that wrote it
    // (the ring buffer is read in batches): records wait until a batch read after their
    // arrival has been applied, so the process is known when they are rendered.
    let mut held: std::collections::VecDeque<(Instant, SensorEvent)> =
        std::collections::VecDeque::new();
    let mut last_tick = Instant::now();
    let mut tick = |drops: u64| -> bool {
        held.extend(side_rx.try_iter());
        while held.front().is_some_and(|(at, _)| *at < last_tick) {
            if let Some((_, e)) = held.pop_front() {
                (on_event.borrow_mut())(e);
            }
        }
        last_tick = Instant::now();
        let _ = out.borrow_mut().flush();
        if let Some(sp) = &spool
            && let Ok(mut sp) = sp.lock()
            && let Err(e) = sp.sync()
        {
            eprintln!("mamori agent: spool sync failed: {e}");
        }
        if drops > last_drops {
            eprintln!(
                "mamori agent: {} events dropped in the kernel (ring buffer full)",
                drops - last_drops
            );
            last_drops = drops;
        }
        if args.health_interval > 0 && Instant::now() >= next_health {
            next_health = Instant::now() + Duration::from_secs(args.health_interval);
            let depth = spool
                .as_ref()
                .and_then(|s| s.lock().ok().map(|s| s.stats()));
            let report = health(
                &started,
                events.get(),
                drops,
                depth,
                &Collecting {
                    file_hooks: match (fallback.get(), fallback_files.get()) {
                        (false, _) => file_hooks.get(),
                        (true, true) => "fanotify (writes only)",
                        (true, false) => "off",
                    },
                    files: files_on && !fallback.get(),
                    network: network_on && !fallback.get(),
                    fallback: fallback.get(),
                    logins: &login_state,
                },
            );
            eprintln!("{report}");
            // Enrolled or not, the heartbeat goes to the spool: the server learns what is
            // collected and notices when reports stop.
            if let Some(sp) = &spool
                && let Ok(mut sp) = sp.lock()
                && let Err(e) = sp
                    .append(heartbeat(&host, &report, args.health_interval, "heartbeat").as_bytes())
            {
                eprintln!("mamori agent: spooling the heartbeat failed: {e}");
            }
        }
        failure.borrow().is_none()
            && deadline.is_none_or(|d| Instant::now() < d)
            && !stop_signal.load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut result = Ok(());
    if args.collector != Collector::ProcConnector {
        let r = bpf::run(
            opts,
            &mut |what| {
                attached.set(true);
                table
                    .borrow_mut()
                    .follow_chdir(what.syscall_hooks.is_some());
                file_hooks.set(match what.syscall_hooks {
                    Some(SyscallHooks::Tracepoints) => "bpf (per-syscall tracepoints)",
                    Some(_) => "bpf (raw syscall hooks)",
                    None => "off",
                });
                eprintln!("mamori agent: logins: {login_state}");
                eprintln!(
                    "mamori agent: collecting process exec/fork/exit{}{} (eBPF); {known} processes known",
                    if network_on {
                        ", network connect/accept/listen/bind, DNS"
                    } else {
                        ""
                    },
                    if files_on {
                        format!(", file changes via {}", file_hooks.get())
                    } else {
                        String::new()
                    }
                );
            },
            &mut |e| (on_event.borrow_mut())(e),
            &mut tick,
        );
        match r {
            Err(e) if !attached.get() && args.collector == Collector::Auto => {
                eprintln!(
                    "mamori agent: eBPF collectors unavailable ({e}); falling back to the netlink process connector"
                );
                fallback.set(true);
            }
            other => result = other,
        }
    } else {
        fallback.set(true);
    }
    if fallback.get() {
        let files = if files_on {
            start_file_watcher(side_tx.clone())
        } else {
            Err("turned off".into())
        };
        if let Ok(marked) = &files {
            fallback_files.set(true);
            eprintln!("mamori agent: file writes via fanotify on {marked} filesystems");
        }
        result = mamori_sensor::proc_connector::run(
            &mut || {
                eprintln!("mamori agent: logins: {login_state}");
                eprintln!(
                    "mamori agent: collecting process exec/fork/exit (netlink process connector fallback){}; \
                     missing: network, DNS, {}privilege, ptrace, module events; arguments of very \
                     short-lived processes; {known} processes known",
                    if files.is_ok() {
                        ", file writes (fanotify)"
                    } else {
                        ""
                    },
                    match &files {
                        Ok(_) => "file delete/rename/chmod/chown, ".to_string(),
                        Err(why) => format!("file ({why}), "),
                    },
                )
            },
            &mut |raw| (on_event.borrow_mut())(SensorEvent::Process(raw)),
            &mut |overruns| tick(overruns),
        );
    }
    logins.stop();
    for e in held
        .into_iter()
        .map(|(_, e)| e)
        .chain(side_rx.try_iter().map(|(_, e)| e))
    {
        (on_event.borrow_mut())(e);
    }
    let _ = out.borrow_mut().flush();
    if let Some(sp) = &spool
        && let Ok(mut sp) = sp.lock()
    {
        // A sensor that stops says so: the server raises it rather than waiting for silence.
        let last =
            json!({"health": {"uptime_s": started.elapsed().as_secs(), "events": events.get()}});
        sp.append(heartbeat(&host, &last, args.health_interval, "agent-stopped").as_bytes())
            .context("spooling the stop notice")?;
        sp.sync().context("syncing the spool")?;
    }
    if let Some(s) = shipper.as_mut()
        && let Err(e) = s.stop()
    {
        eprintln!("mamori agent: the server link ended with: {e}");
    }
    if let Some(r) = responding.take() {
        r.stop();
    }
    if let Some(e) = failure.into_inner() {
        return Err(e.context("writing events"));
    }
    result.context("the process collector failed")?;
    eprintln!(
        "mamori agent: {} events in {:.1}s, {last_drops} dropped in the kernel",
        events.get(),
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// The agent's health: what is collected, what was lost, how much it costs.
/// A heartbeat (or stop notice) as an event for the server.
fn heartbeat(host: &HostInfo, report: &serde_json::Value, interval_s: u64, action: &str) -> String {
    json!({
        "@timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "event": {"kind": "metric", "category": ["host"], "type": ["info"], "action": action,
                  "module": "mamori", "dataset": "mamori.health"},
        "host": {"name": host.name, "os": {"type": "linux", "kernel": host.kernel},
                 "ip": HostInfo::addresses()},
        "agent": {"version": env!("CARGO_PKG_VERSION")},
        "mamori": {"health": report.get("health"), "heartbeat_interval_s": interval_s},
    })
    .to_string()
}

/// What the agent collects, for its health report.
struct Collecting<'a> {
    file_hooks: &'a str,
    files: bool,
    network: bool,
    fallback: bool,
    logins: &'a str,
}

fn health(
    started: &Instant,
    events: u64,
    drops: u64,
    spool: Option<mamori_spool::SpoolStats>,
    c: &Collecting<'_>,
) -> serde_json::Value {
    let Collecting {
        file_hooks,
        files,
        network,
        fallback,
        logins,
    } = *c;
    let mut missing = Vec::new();
    if !files {
        if file_hooks.starts_with("fanotify") {
            missing.extend(["file-delete", "file-rename", "file-chmod", "file-chown"]);
        } else {
            missing.push("file");
        }
        missing.extend(["privilege", "ptrace", "module"]);
    }
    if !network {
        missing.extend(["network", "dns"]);
    }
    if !logins.starts_with("audit") {
        missing.push("login");
    }
    let on = |b: bool| if b { "bpf" } else { "off" };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu_ticks: u64 = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 2..)?.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    json!({"health": {
        "uptime_s": started.elapsed().as_secs(),
        "collectors": {"process": if fallback { "proc-connector" } else { "bpf" }, "network": on(network),
            "dns": on(network), "login": logins, "file": file_hooks,
            "privilege": on(files), "ptrace": on(files), "module": on(files)},
        "missing": missing,
        "events": events,
        "dropped": {"ring_buffer_full": drops},
        "spool": spool.map(|s| json!({"depth_records": s.depth_records, "depth_bytes": s.depth_bytes,
            "evicted_records": s.evicted_records, "corrupted_records": s.corrupted_records})),
        "cpu_seconds": cpu_ticks as f64 / 100.0,
        "rss_kib": kib("VmRSS:"),
    }})
}

/// Whether the effective user is root (`None` if unknown).
fn nix_is_root() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status.lines().find(|l| l.starts_with("Uid:"))?;
    let euid = uid.split_whitespace().nth(2)?;
    Some(euid == "0")
}

/// The login collector: a thread reading the audit stream into a channel.
enum Logins {
    /// Turned off with `--without login`.
    Off,
    /// The audit stream could not be opened (the reason).
    Unavailable(String),
    /// Running.
    On {
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
        state: mamori_sensor::audit::AuditState,
    },
}

/// Starts the fanotify file fallback in a thread; returns how many filesystems it watches.
fn start_file_watcher(
    tx: std::sync::mpsc::Sender<(Instant, SensorEvent)>,
) -> std::result::Result<usize, String> {
    let watcher = mamori_sensor::fanotify::FileWatcher::open().map_err(|e| e.to_string())?;
    let marked = watcher.marked.len();
    let me = std::process::id();
    // The read blocks; the thread ends with the process.
    std::thread::spawn(move || {
        loop {
            match watcher.next_batch(me) {
                Ok(batch) => {
                    for e in batch {
                        if tx.send((Instant::now(), SensorEvent::File(e))).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    eprintln!("mamori agent: file fallback stopped: {e}");
                    return;
                }
            }
        }
    });
    Ok(marked)
}

fn start_logins(enable: bool, tx: std::sync::mpsc::Sender<(Instant, SensorEvent)>) -> Logins {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut listener = match mamori_sensor::audit::AuditListener::open(enable) {
        Ok(l) => l,
        Err(e) => return Logins::Unavailable(e.to_string()),
    };
    let state = listener.state();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 << 10];
        while !stop2.load(Ordering::Relaxed) {
            match listener.next(&mut buf) {
                Ok(Some(e)) => {
                    if tx.send((Instant::now(), SensorEvent::Auth(e))).is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("mamori agent: login collector stopped: {e}");
                    break;
                }
            }
        }
        // Dropping the listener restores audit if the agent enabled it.
    });
    Logins::On {
        stop,
        thread: Some(thread),
        state,
    }
}

impl Logins {
    fn describe(&self) -> String {
        match self {
            Logins::Off => "off".into(),
            Logins::Unavailable(why) => format!("unavailable ({why})"),
            Logins::On { state, .. } if state.enabled_by_us => {
                "audit (kernel audit was off: enabled for the agent's lifetime)".into()
            }
            Logins::On { state, .. } if state.was_enabled => "audit".into(),
            Logins::On { .. } => {
                "waiting (kernel audit is off and --keep-audit-off was given: no login records until auditd enables it)"
                    .into()
            }
        }
    }

    /// Stops the thread (restoring audit) and returns the records it had still queued.
    fn stop(&mut self) {
        let Logins::On { stop, thread, .. } = self else {
            return;
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = thread.take() {
            let _ = t.join();
        }
    }
}
