//! The agent's response side: loads isolation again at start (before anything connects),
//! runs the control channel (signed commands in, outcomes out), and checks every second that
//! isolation is still in force, repairing and reporting any tampering.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use mamori_link::Identity;
use mamori_link::control::{Executor, Outcomes};
use mamori_respond::Responder;
use mamori_respond::block::Prevented;
use mamori_wire::command::{Action, Command};
use serde_json::json;

use crate::agent_cmd::identity_dir;
use crate::data;

struct Exec {
    responder: Arc<Mutex<Responder>>,
    server: String,
}

impl Executor for Exec {
    fn execute(&mut self, cmd: &Command) -> Result<serde_json::Value, String> {
        let mut r = self
            .responder
            .lock()
            .map_err(|_| "the responder is unavailable".to_string())?;
        if matches!(cmd.action, Action::Isolate { .. }) {
            // The server's address as it resolves now is what isolation keeps open.
            let addrs = mamori_link::server_addrs(&self.server).map_err(|e| {
                format!("refused: the server's address is unknown ({e}): isolating would cut the agent off")
            })?;
            r.set_server(addrs);
        }
        r.execute(cmd).map_err(|e| e.to_string())
    }
}

/// A prevented execution as an ECS event (`event.action: exec-prevented`).
fn prevention_event(host: &mamori_sensor::ecs::HostInfo, p: &Prevented) -> String {
    let name = p.path.rsplit('/').next().unwrap_or_default();
    json!({
        "@timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "event": {"kind": "alert", "category": ["process", "intrusion_detection"],
                  "type": ["denied"], "action": "exec-prevented", "outcome": "failure",
                  "module": "mamori", "dataset": "mamori.prevention"},
        "host": {"name": host.name, "os": {"type": "linux", "kernel": host.kernel}},
        "process": {"pid": p.pid, "executable": p.path, "name": name,
                    "hash": {"sha256": p.sha256},
                    "parent": {"pid": p.pid, "executable": p.caller,
                               "command_line": p.caller_command_line}},
        "file": {"path": p.path, "name": name, "hash": {"sha256": p.sha256}},
        "user": {"id": p.uid.to_string()},
        "rule": {"name": "Mamori execution blocklist"},
    })
    .to_string()
}

/// The running response side.
pub struct Responding {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Responding {
    /// Opens the response state, resumes isolation, and starts the control channel and the
    /// isolation watch.
    pub fn start(
        ident: Identity,
        spool: Arc<Mutex<mamori_spool::Spool>>,
        host: mamori_sensor::ecs::HostInfo,
    ) -> Result<Responding> {
        let dir = identity_dir();
        let server = mamori_link::server_addrs(&ident.server).unwrap_or_else(|e| {
            eprintln!("mamori agent: {e}; will resolve the server again when isolating");
            Vec::new()
        });
        // Prevented executions go to the spool like any event: the server raises the alert,
        // also for those that happened while it was unreachable.
        let prevented: Arc<dyn Fn(Prevented) + Send + Sync> = Arc::new(move |p: Prevented| {
            eprintln!(
                "mamori agent: PREVENTED execution of {} ({}) by pid {}",
                p.path, p.sha256, p.pid
            );
            let doc = prevention_event(&host, &p);
            if let Ok(mut sp) = spool.lock()
                && let Err(e) = sp.append(doc.as_bytes()).and_then(|_| sp.sync())
            {
                eprintln!("mamori agent: spooling a prevention failed: {e}");
            }
        });
        let mut responder = Responder::open(&dir, server, vec![data::data_dir()], prevented)
            .context("opening the response state")?;
        let lists = responder.blocklist();
        if !lists.block.is_empty() {
            eprintln!(
                "mamori agent: blocking execution of {} hashes (blocklist version {})",
                lists.block.len(),
                lists.version
            );
        }
        match responder.resume() {
            Ok(true) => eprintln!("mamori agent: this host is ISOLATED; isolation loaded again"),
            Ok(false) => {}
            Err(e) => eprintln!("mamori agent: loading isolation again FAILED: {e}"),
        }
        let responder = Arc::new(Mutex::new(responder));
        let events = Arc::new(Mutex::new(VecDeque::new()));
        let outcomes = Arc::new(Mutex::new(Outcomes::open(&dir)));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (responder, events, stop) = (responder.clone(), events.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("mamori-isolation-watch".into())
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_secs(1));
                            let found = responder.lock().ok().and_then(|mut r| r.check());
                            if let Some(what) = found {
                                eprintln!("mamori agent: TAMPERING: {what}");
                                if let Ok(mut q) = events.lock() {
                                    q.push_back(
                                        json!({"event": "isolation_tampered", "detail": what}),
                                    );
                                }
                            }
                        }
                    })
                    .context("starting the isolation watch")?,
            );
        }
        {
            let stop = stop.clone();
            let exec: Arc<Mutex<dyn Executor>> = Arc::new(Mutex::new(Exec {
                responder,
                server: ident.server.clone(),
            }));
            threads.push(
                std::thread::Builder::new()
                    .name("mamori-control".into())
                    .spawn(move || {
                        let rt = match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => rt,
                            Err(e) => {
                                eprintln!("mamori agent: control channel: {e}");
                                return;
                            }
                        };
                        if let Err(e) = rt.block_on(mamori_link::control::control(
                            &ident, exec, events, outcomes, stop,
                        )) {
                            eprintln!("mamori agent: control channel stopped: {e}");
                        }
                    })
                    .context("starting the control channel")?,
            );
        }
        Ok(Responding { stop, threads })
    }

    /// Stops the control channel and the watch (isolation stays in force).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}
