//! The Mamori server.
//!
//! * [`config`]: TOML file, then environment, then flags; safe defaults (localhost, TLS).
//! * [`state`]: the state database (SQLite): API tokens (role, tenant) and enrollment
//!   tokens (hashes only), agents, alerts, custom and disabled rules, the audit log.
//! * [`store`]: the ingest log, durable before acknowledgement, replay-proof per agent.
//! * [`compact`]: moves the log into the columnar store (`mamori-columnar`: Parquet files
//!   searched with SQL), then releases it; retention by age and size.
//! * [`service`]: enrollment (gRPC) and the agent check every stream starts with.
//! * [`ingest`]: the ingest stream over mutual TLS, its gRPC framing read by hand (each
//!   batch in an allocation of its exact size, nothing kept between batches).
//! * [`api`]: the REST API under `/api/v1` (bearer tokens with roles, scoped per tenant), on
//!   the same port.
//! * [`tuning`]: suppressions with preview and expiry; the noisiest-rules report.
//! * [`tls`]: the listener (rustls; ALPN h2 and http/1.1; optional client certificates).
//! * [`detect`]: live detection on every durable event; alerts folded per rule and process.
//! * [`incidents`]: alerts grouped into incidents; an incident assembled with its evidence.
//! * [`notify`]: notifications (email, webhooks, Slack, Teams) and their clocks.
//! * [`rules`]: the running rule set; custom rules validated by compiling, enable/disable.
//! * [`Admin`]: the state database alone, for local administration beside a running server.
//! * [`Server`]: first-start initialisation (CA, server certificate, admin token) and the
//!   listener.
//!
//! One port, TLS always: agents without a certificate may only fetch the CA and enroll;
//! everything else needs a client certificate signed by the server's CA for an enrolled,
//! unrevoked agent.

// The OpenAPI document is one large `json!` literal.
#![recursion_limit = "256"]

pub mod actions;
pub mod api;
pub mod compact;
pub mod config;
pub mod detect;
pub mod incidents;
pub mod ingest;
pub mod notify;
pub mod rules;
pub mod service;
pub mod state;
pub mod store;
pub mod tls;
pub mod tuning;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mamori_wire::control::control_server::ControlServer;
use mamori_wire::enrollment::enrollment_server::EnrollmentServer;

pub use config::ServerConfig;

/// Why the server could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The state database failed.
    #[error("state database: {0}")]
    State(String),
    /// The state database cannot take the request now (locked past the busy timeout, disk
    /// full, an I/O error): the same request may succeed later.
    #[error("state database unavailable: {0}")]
    StateUnavailable(String),
    /// The event store failed.
    #[error("event store: {0}")]
    Store(String),
    /// Trust material could not be made or read.
    #[error("trust material: {0}")]
    Pki(#[from] mamori_pki::PkiError),
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Bad configuration or request.
    #[error("{0}")]
    Invalid(String),
    /// The listener failed.
    #[error("listener: {0}")]
    Transport(String),
}

impl ServerError {
    /// Whether the same request may succeed later ([`ServerError::StateUnavailable`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, ServerError::StateUnavailable(_))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &Path, body: &str) -> Result<(), ServerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(body.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// What first start created (the admin token is shown once, then only its hash exists).
#[derive(Debug, Clone)]
pub struct Initialised {
    /// The admin API token, on first start only.
    pub admin_token: Option<String>,
    /// The CA fingerprint agents pin.
    pub ca_fingerprint: String,
    /// What loading the detection rules produced (none without detection).
    pub rules: Option<rules::LoadReport>,
    /// Threads live detection scans with.
    pub detection_threads: usize,
}

/// The state database and CA, for local administration while a server may be running
/// (the event log and store belong to the running server and are not opened).
pub struct Admin {
    state: state::State,
    /// The CA fingerprint agents pin.
    pub ca_fingerprint: String,
}

impl Admin {
    /// Opens the state of the server in `config.data_dir` (created on first use).
    pub fn open(config: &ServerConfig) -> Result<Admin, ServerError> {
        let ca = load_or_create_ca(&config.data_dir.join("pki"))?;
        std::fs::create_dir_all(&config.data_dir).map_err(io(&config.data_dir))?;
        let state = state::State::open(&config.data_dir.join("state.db"))?;
        Ok(Admin {
            state,
            ca_fingerprint: ca.fingerprint(),
        })
    }

    /// The state database.
    pub fn state(&self) -> &state::State {
        &self.state
    }
}

/// The columnar store's directory.
pub fn columnar_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("columnar")
}

fn load_or_create_ca(pki: &Path) -> Result<mamori_pki::Ca, ServerError> {
    std::fs::create_dir_all(pki).map_err(io(pki))?;
    let ca_cert = pki.join("ca.pem");
    let ca_key = pki.join("ca.key");
    if ca_cert.exists() {
        let c = std::fs::read_to_string(&ca_cert).map_err(io(&ca_cert))?;
        let k = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
        Ok(mamori_pki::Ca::load(&c, &k)?)
    } else {
        let ca = mamori_pki::Ca::generate("Mamori CA")?;
        write_private(&ca_key, ca.key_pem())?;
        std::fs::write(&ca_cert, ca.cert_pem()).map_err(io(&ca_cert))?;
        tracing::info!(fingerprint = %ca.fingerprint(), "created the server's CA");
        Ok(ca)
    }
}

/// A server ready to listen.
pub struct Server {
    shared: Arc<service::Shared>,
    config: ServerConfig,
    /// Server certificate chain and key (PEM).
    identity: (Vec<u8>, Vec<u8>),
}

impl Server {
    /// Opens the server's data directory, creating the CA, the server certificate and the
    /// first admin token when they do not exist yet.
    pub fn open(
        config: ServerConfig,
        rules: Option<rules::RuleSource>,
    ) -> Result<(Server, Initialised), ServerError> {
        let dir = &config.data_dir;
        let pki = dir.join("pki");
        let ca = load_or_create_ca(&pki)?;
        // The server certificate names what agents dial; reissued when the names change.
        let names = config.certificate_names();
        let srv_cert = pki.join("server.pem");
        let srv_key = pki.join("server.key");
        let srv_names = pki.join("server.names");
        let wanted = names.join(",");
        if std::fs::read_to_string(&srv_names).ok().as_deref() != Some(wanted.as_str()) {
            let issued = ca.issue_server(&names)?;
            let _ = std::fs::remove_file(&srv_key);
            write_private(&srv_key, &issued.key_pem)?;
            // The chain includes the CA, so agents can check it against their pin.
            std::fs::write(&srv_cert, format!("{}{}", issued.cert_pem, ca.cert_pem()))
                .map_err(io(&srv_cert))?;
            std::fs::write(&srv_names, &wanted).map_err(io(&srv_names))?;
        }
        let identity = (
            std::fs::read(&srv_cert).map_err(io(&srv_cert))?,
            std::fs::read(&srv_key).map_err(io(&srv_key))?,
        );
        let state = Arc::new(state::State::open(&dir.join("state.db"))?);
        state.track_alerts()?;
        let admin_token = state.first_admin_token()?;
        let log = store::EventLog::open(&dir.join("events"), config.store_quota_bytes)?;
        let events = mamori_columnar::ParquetStore::open(
            &columnar_dir(dir),
            mamori_columnar::Retention {
                max_age_days: config.retention_days,
                max_bytes: config.store_quota_bytes,
            },
        )
        .map_err(|e| ServerError::Store(e.to_string()))?;
        let (rules, report) = match rules {
            Some(source) => {
                let (r, report) = rules::Rules::load(source, &state)?;
                (Some(Arc::new(r)), Some(report))
            }
            None => (None, None),
        };
        let detection_threads = config
            .detection_threads
            .unwrap_or_else(detect::scan_threads);
        let init = Initialised {
            admin_token,
            ca_fingerprint: ca.fingerprint(),
            rules: report,
            detection_threads,
        };
        let policy = match &config.soc_policy {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(io(path))?;
                mamori_soc::Policy::parse(&text)
                    .map_err(|e| ServerError::Invalid(format!("{}: {e}", path.display())))?
            }
            None => mamori_soc::Policy::default(),
        };
        let (contain_tx, contain_rx) = std::sync::mpsc::channel::<detect::Contain>();
        let policy = Arc::new(policy);
        // Detection has a connection of its own: it commits a round's alerts as one batch,
        // which must not take in the API's writes.
        let detect_state = match &rules {
            Some(_) => Some(Arc::new(state.reopen()?)),
            None => None,
        };
        // Recorded even without rules: a later start with rules detects what the log still
        // holds from then on.
        let progress = detect::Progress::load(&state, &log)?;
        let feed = detect_state
            .is_some()
            .then(|| Arc::new(compact::Feed::default()));
        let detect = rules.as_ref().zip(detect_state).map(|(r, detect_state)| {
            detect::spawn(
                r.current(),
                r.disabled(),
                detect_state,
                detect::Soc {
                    policy: policy.clone(),
                    contain: contain_tx.clone(),
                },
                progress.clone(),
                feed.clone(),
                detection_threads,
            )
        });
        let behind = log.synced().saturating_sub(progress.through());
        let log = Arc::new(Mutex::new(log));
        if let Some(q) = &detect
            && behind > 0
        {
            // Before the writer starts, so that detection sees the log in order; said first,
            // since a long backlog delays listening.
            tracing::warn!(
                from = progress.through() + 1,
                "detection had not recorded every event stored before the server stopped: \
                 reading the rest again before listening"
            );
            let n = detect::replay(&log, &progress, q)?;
            tracing::warn!(
                events = n,
                "detected again the events stored after detection's last recorded position"
            );
        }
        let writer = store::Writer::spawn(log.clone(), detect.clone())?;
        let detected = detect.is_some().then_some(progress);
        let shared = Arc::new(service::Shared {
            state,
            detect,
            rules,
            ca,
            log,
            writer,
            events: Arc::new(events),
            limits: service::Limits::default(),
            dispatch: actions::Dispatch::default(),
            collected_dir: dir.join("collected"),
            isolation_allow: config.isolation_allow.clone(),
            local_agents: Default::default(),
            policy,
            detected,
            feed,
        });
        // Automatic containment: isolation commands must be signed, so a thread with the
        // server's shared state serves the detection thread's requests (a weak reference: it
        // must not keep the server alive).
        let weak = Arc::downgrade(&shared);
        drop(contain_tx);
        std::thread::Builder::new()
            .name("mamori-contain".into())
            .spawn(move || {
                for req in contain_rx {
                    let Some(shared) = weak.upgrade() else { break };
                    match actions::contain(&shared, &req) {
                        Ok(Some(cmd)) => tracing::warn!(
                            agent = %req.agent, alert = req.alert, command = %cmd.id,
                            "critical alert: host isolated automatically"
                        ),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(agent = %req.agent, "automatic containment failed: {e}")
                        }
                    }
                }
            })
            .map_err(|e| ServerError::Transport(format!("starting the containment thread: {e}")))?;
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("mamori-notify".into())
            .spawn(move || notify::run(weak))
            .map_err(|e| ServerError::Transport(format!("starting the notifier: {e}")))?;
        Ok((
            Server {
                shared,
                config,
                identity,
            },
            init,
        ))
    }

    /// The state database (for local administration commands).
    pub fn state(&self) -> &state::State {
        &self.shared.state
    }

    /// Opens the listening socket. Once this returns, connections are accepted (into the
    /// backlog until [`Bound::serve`] runs): say "listening" only after it, never before.
    pub async fn bind(self) -> Result<Bound, ServerError> {
        let listen = self.config.listen;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| ServerError::Transport(format!("{listen}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| ServerError::Transport(format!("{listen}: {e}")))?;
        Ok(Bound {
            server: self,
            listener,
            local,
        })
    }
}

/// A server whose port is open ([`Server::bind`]).
pub struct Bound {
    server: Server,
    listener: tokio::net::TcpListener,
    local: std::net::SocketAddr,
}

impl Bound {
    /// The address it listens on (the port the system chose, for port 0).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let Bound {
            server: this,
            listener,
            local: listen,
        } = self;
        let tls = tls::config(
            &this.identity.0,
            &this.identity.1,
            this.shared.ca.cert_pem().as_bytes(),
        )?;
        let (incoming, acceptor) = tls::incoming(listener, tls);
        // Silent sensors: checked every two seconds.
        let state = this.shared.state.clone();
        let policy = this.shared.policy.clone();
        let watcher = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
            loop {
                tick.tick().await;
                let st = state.clone();
                let policy = policy.clone();
                let _ =
                    tokio::task::spawn_blocking(move || detect::silent_hosts(&st, &policy)).await;
            }
        });
        // Events into the columnar store.
        let (stop_compactor, stop) = std::sync::mpsc::channel();
        if let Some(feed) = &this.shared.feed {
            feed.wake_with(stop_compactor.clone());
        }
        let compactor = {
            let shared = this.shared.clone();
            let every = std::time::Duration::from_secs(this.config.flush_seconds);
            std::thread::Builder::new()
                .name("mamori-compact".into())
                .spawn(move || compact::run(shared, every, stop))
                .map_err(|e| ServerError::Transport(format!("starting the compactor: {e}")))?
        };
        let routes = tonic::service::Routes::from(api::router(this.shared.clone()))
            .add_service(
                EnrollmentServer::new(service::EnrollmentService(this.shared.clone()))
                    .max_decoding_message_size(64 << 10),
            )
            .add_service(ingest::IngestService(this.shared.clone()))
            .add_service(
                ControlServer::new(actions::ControlService(this.shared.clone()))
                    .max_decoding_message_size(mamori_wire::MAX_CONTROL_BYTES),
            );
        let result = tonic::transport::Server::builder()
            // The REST API speaks HTTP/1.1 as well; gRPC needs HTTP/2.
            .accept_http1(true)
            .concurrency_limit_per_connection(16)
            // What an agent may send ahead of what its streams read: bounded per connection.
            .initial_stream_window_size(ingest::STREAM_WINDOW)
            .initial_connection_window_size(ingest::CONNECTION_WINDOW)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| ServerError::Transport(format!("{listen}: {e}")));
        acceptor.abort();
        watcher.abort();
        let _ = stop_compactor.send(compact::Signal::Stop);
        let _ = compactor.join();
        if let Ok(mut log) = this.shared.log.lock() {
            log.close()?;
        }
        result
    }
}
