//! The agent's link to the server.
//!
//! * [`enroll`]: the agent is given the server address, an enrollment token and the CA
//!   fingerprint. It opens a TLS connection that is accepted only if the server's chain
//!   contains a CA certificate with exactly that fingerprint and the server certificate is
//!   signed by it ([`pinned_ca`]); from then on it trusts that CA alone. It makes its own key
//!   pair, sends a certificate request with the token, and keeps the signed certificate
//!   ([`Identity`], saved with the key readable by root only).
//! * [`ship`]: streams the spool to the server over mutual TLS, from the first record not yet
//!   acknowledged, and acknowledges (deletes) records in the spool only when the server says
//!   they are durable. After any failure it reconnects with backoff and resends from the
//!   acknowledgement: delivery is at-least-once, and the server's per-agent watermark makes
//!   it exactly-once in the store.
//! * [`control`]: the response command channel: signed commands in, outcomes out.
//! * [`api`]: a small client for the server's REST API (the CLI and tools use it).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mamori_spool::Spool;
use mamori_wire::enrollment::enrollment_client::EnrollmentClient;
use mamori_wire::ingest::ingest_client::IngestClient;
use mamori_wire::{Batch, EnrollRequest};
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

/// Why the link failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The server's CA is not the pinned one (or the server could not prove it holds a
    /// certificate from it).
    #[error("the server's CA does not match the pinned fingerprint {0}")]
    PinMismatch(String),
    /// The server refused.
    #[error("the server refused: {0}")]
    Refused(String),
    /// Connecting or talking failed.
    #[error("{0}")]
    Transport(String),
    /// Local files.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
}

/// The agent's identity and where its server is.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    /// The server URL (`https://host:port`).
    pub server: String,
    /// Agent id assigned by the server.
    pub agent_id: String,
    /// Tenant.
    pub tenant: String,
    /// The pinned CA (PEM).
    pub ca_pem: String,
    /// The agent's certificate (PEM).
    pub cert_pem: String,
    /// The agent's private key (PEM). Never logged.
    #[serde(skip)]
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("server", &self.server)
            .field("agent_id", &self.agent_id)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> LinkError {
    LinkError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Identity {
    /// Saves the identity in `dir` (`identity.json` and `agent.key`, mode 0600).
    pub fn save(&self, dir: &Path) -> Result<(), LinkError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let key = dir.join("agent.key");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key)
            .map_err(|e| io_err(&key, e))?;
        f.write_all(self.key_pem.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| io_err(&key, e))?;
        let id = dir.join("identity.json");
        let body = serde_json::to_vec_pretty(self).map_err(|e| io_err(&id, e))?;
        std::fs::write(&id, body).map_err(|e| io_err(&id, e))
    }

    /// Loads the identity saved in `dir`; `Ok(None)` if the agent is not enrolled.
    pub fn load(dir: &Path) -> Result<Option<Identity>, LinkError> {
        let id = dir.join("identity.json");
        let body = match std::fs::read(&id) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&id, e)),
        };
        let mut ident: Identity = serde_json::from_slice(&body).map_err(|e| io_err(&id, e))?;
        let key = dir.join("agent.key");
        ident.key_pem = std::fs::read_to_string(&key).map_err(|e| io_err(&key, e))?;
        Ok(Some(ident))
    }
}

pub mod api;
pub mod control;

/// `host:port` and host name of a server URL (`https://host:port`).
fn host_port(server: &str) -> Result<(String, String), LinkError> {
    let rest = server.strip_prefix("https://").ok_or_else(|| {
        LinkError::Invalid(format!("server {server:?}: expected https://host:port"))
    })?;
    let rest = rest.trim_end_matches('/');
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("").to_string()
    } else {
        rest.rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(rest)
            .to_string()
    };
    let addr = if rest.contains(':') && !rest.ends_with(']') {
        rest.to_string()
    } else {
        format!("{rest}:7443")
    };
    Ok((addr, host))
}

/// The socket addresses of a server URL (`https://host:port`), resolved now.
pub fn server_addrs(server: &str) -> Result<Vec<std::net::SocketAddr>, LinkError> {
    use std::net::ToSocketAddrs;
    let (addr, _) = host_port(server)?;
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|e| LinkError::Transport(format!("resolving {addr}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(LinkError::Transport(format!("{addr} has no address")));
    }
    Ok(addrs)
}

mod pin {
    //! A certificate verifier that trusts exactly one CA, found in the server's own chain by
    //! its fingerprint.
    use std::sync::{Arc, Mutex};

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, Error, SignatureScheme};

    #[derive(Debug)]
    pub struct Pinned {
        pub fingerprint: String,
        pub found: Mutex<Option<Vec<u8>>>,
        pub provider: Arc<rustls::crypto::CryptoProvider>,
    }

    impl ServerCertVerifier for Pinned {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            server_name: &ServerName<'_>,
            ocsp: &[u8],
            now: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            let ca = intermediates
                .iter()
                .find(|c| mamori_pki::fingerprint(c.as_ref()) == self.fingerprint)
                .ok_or(Error::General(
                    "no certificate with the pinned fingerprint".into(),
                ))?;
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(ca.clone().into_owned())
                .map_err(|e| Error::General(e.to_string()))?;
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                self.provider.clone(),
            )
            .build()
            .map_err(|e| Error::General(e.to_string()))?;
            inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)?;
            if let Ok(mut f) = self.found.lock() {
                *f = Some(ca.as_ref().to_vec());
            }
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}

/// Connects once to `server` and returns the CA certificate (PEM) from its chain, if and
/// only if it has the pinned fingerprint and signed the server's certificate.
pub async fn pinned_ca(server: &str, fingerprint: &str) -> Result<String, LinkError> {
    let (addr, host) = host_port(server)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(pin::Pinned {
        fingerprint: fingerprint.to_ascii_lowercase(),
        found: Mutex::new(None),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError::Transport(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| LinkError::Invalid(format!("server name {host:?}: {e}")))?;
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .map_err(|e| LinkError::Transport(format!("connecting to {addr}: {e}")))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    match tls.connect(name, tcp).await {
        Ok(_) => {}
        Err(e) if e.to_string().contains("pinned") || e.to_string().contains("certificate") => {
            return Err(LinkError::PinMismatch(fingerprint.to_string()));
        }
        Err(e) => return Err(LinkError::Transport(format!("TLS with {addr}: {e}"))),
    }
    let der = verifier
        .found
        .lock()
        .ok()
        .and_then(|f| f.clone())
        .ok_or_else(|| LinkError::PinMismatch(fingerprint.to_string()))?;
    Ok(mamori_pki::der_to_pem(&der))
}

/// A gRPC channel to `server` trusting only `ca_pem`, with the agent's certificate and key
/// when given (ingest needs them; enrollment does not).
pub async fn channel(
    server: &str,
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> Result<Channel, LinkError> {
    let (_, host) = host_port(server)?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(host);
    if let Some((cert, key)) = client {
        tls = tls.identity(TlsIdentity::from_pem(cert, key));
    }
    Endpoint::from_shared(server.to_string())
        .map_err(|e| LinkError::Invalid(format!("server {server:?}: {e}")))?
        .tls_config(tls)
        .map_err(|e| LinkError::Transport(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| LinkError::Transport(format!("connecting to {server}: {e}")))
}

/// Host facts sent at enrollment.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// Host name.
    pub hostname: String,
    /// Operating system.
    pub os: String,
    /// Kernel release.
    pub kernel: String,
    /// Agent version.
    pub agent_version: String,
}

/// Enrolls with `server` using `token`, trusting only the CA with `fingerprint`.
pub async fn enroll(
    server: &str,
    token: &str,
    fingerprint: &str,
    facts: &HostFacts,
) -> Result<Identity, LinkError> {
    let ca_pem = pinned_ca(server, fingerprint).await?;
    let (key_pem, csr_pem) = mamori_pki::agent_key_and_csr(&facts.hostname)
        .map_err(|e| LinkError::Invalid(e.to_string()))?;
    let mut client = EnrollmentClient::new(channel(server, &ca_pem, None).await?);
    let reply = client
        .enroll(EnrollRequest {
            token: token.to_string(),
            csr_pem,
            hostname: facts.hostname.clone(),
            os: facts.os.clone(),
            kernel: facts.kernel.clone(),
            agent_version: facts.agent_version.clone(),
        })
        .await
        .map_err(|s| LinkError::Refused(s.message().to_string()))?
        .into_inner();
    Ok(Identity {
        server: server.to_string(),
        agent_id: reply.agent_id,
        tenant: reply.tenant,
        ca_pem,
        cert_pem: reply.cert_pem,
        key_pem,
    })
}

/// How the shipper behaves.
#[derive(Debug, Clone, Copy)]
pub struct ShipOptions {
    /// Events per batch at most.
    pub batch_events: usize,
    /// Bytes per batch at most (kept under the server's message limit).
    pub batch_bytes: usize,
    /// Batches sent ahead of their acknowledgement (announced to the server, which may then
    /// acknowledge up to `window - 1` at once, or what came within
    /// `mamori_server::ingest::ACK_DELAY`: four batches at the default linger, so the
    /// default window of 8 never makes the agent wait).
    pub window: usize,
    /// How long events may wait for more to join their batch. A batch that is not full is
    /// sent only this long after the last one: an agent that records a few events a second
    /// sends a batch every `linger` instead of one per event (the server's cost per batch
    /// is many times its cost per event), at the price of up to `linger` before the server
    /// sees an event.
    pub linger: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Drain the spool and return (`mamori agent ship`): what it holds goes at once, without
    /// lingering; once everything is sent the agent closes its side of the stream, so the
    /// server acknowledges at once instead of holding the acknowledgement back for more
    /// batches, and shipping ends when everything sent is acknowledged.
    pub drain: bool,
}

impl Default for ShipOptions {
    fn default() -> Self {
        ShipOptions {
            batch_events: 2000,
            batch_bytes: mamori_wire::MAX_MESSAGE_BYTES / 2,
            window: 8,
            linger: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
            drain: false,
        }
    }
}

/// What the shipper reports.
#[derive(Debug, Default)]
pub struct ShipStats {
    /// Highest sequence number acknowledged by the server.
    pub acked: std::sync::atomic::AtomicU64,
    /// Connections made.
    pub connects: std::sync::atomic::AtomicU64,
    /// Batches sent.
    pub batches: std::sync::atomic::AtomicU64,
}

/// Ships the spool until `stop` is set. Refusals of the agent's identity (revoked, unknown)
/// end shipping with an error; transport failures are retried.
pub async fn ship(
    ident: &Identity,
    spool: Arc<Mutex<Spool>>,
    stop: Arc<AtomicBool>,
    opts: ShipOptions,
    stats: Arc<ShipStats>,
) -> Result<(), LinkError> {
    reconnecting("link", &ident.server, &stop, opts.max_backoff, async || {
        ship_once(ident, &spool, &stop, opts, &stats).await
    })
    .await
}

/// Runs `attempt` until it ends well or `stop` is set; refusals of the agent's identity end
/// it with the error, anything else is retried with exponential backoff (up to `max`).
pub(crate) async fn reconnecting(
    what: &str,
    server: &str,
    stop: &AtomicBool,
    max: Duration,
    mut attempt: impl AsyncFnMut() -> Result<(), LinkError>,
) -> Result<(), LinkError> {
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Ordering::Relaxed) {
        match attempt().await {
            Ok(()) => return Ok(()),
            Err(LinkError::Refused(why)) => return Err(LinkError::Refused(why)),
            Err(e) => {
                tracing::warn!("{what} to {server} lost: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max);
            }
        }
    }
    Ok(())
}

/// The next batch from `from`, and whether it is full (by events or bytes).
fn next_batch(
    spool: &Mutex<Spool>,
    from: u64,
    opts: ShipOptions,
) -> Result<Option<(Batch, bool)>, LinkError> {
    let mut sp = spool
        .lock()
        .map_err(|_| LinkError::Transport("spool lock poisoned".into()))?;
    let recs = sp
        .read(from, opts.batch_events)
        .map_err(|e| LinkError::Transport(format!("reading the spool: {e}")))?;
    let Some(&(first, _)) = recs.first() else {
        return Ok(None);
    };
    let mut events = Vec::new();
    let mut bytes = 0;
    let mut full = recs.len() >= opts.batch_events;
    for (expect, (seq, r)) in (first..).zip(recs) {
        // A batch is consecutive numbers; it ends before a gap or the byte limit.
        if seq != expect {
            full = true; // what follows the gap goes at once, in the next batch
            break;
        }
        if bytes + r.len() > opts.batch_bytes && !events.is_empty() {
            full = true;
            break;
        }
        bytes += r.len();
        events.push(r.into());
    }
    Ok(Some((
        Batch {
            first_seq: first,
            events,
        },
        full,
    )))
}

async fn ship_once(
    ident: &Identity,
    spool: &Arc<Mutex<Spool>>,
    stop: &Arc<AtomicBool>,
    opts: ShipOptions,
    stats: &Arc<ShipStats>,
) -> Result<(), LinkError> {
    let ch = channel(
        &ident.server,
        &ident.ca_pem,
        Some((&ident.cert_pem, &ident.key_pem)),
    )
    .await?;
    let mut client = IngestClient::new(ch).max_decoding_message_size(1 << 20);
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(opts.window);
    // Dropped once a drain has sent everything: that closes the agent's side of the stream.
    let mut tx = Some(tx);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert(mamori_wire::WINDOW_HEADER, opts.window.into());
    let response = client.stream(request).await.map_err(status_error)?;
    let mut acks = response.into_inner();
    stats.connects.fetch_add(1, Ordering::Relaxed);
    let acked_at_start = spool
        .lock()
        .map(|s| s.stats().acked)
        .map_err(|_| LinkError::Transport("spool lock poisoned".into()))?;
    let mut next = acked_at_start + 1;
    let mut in_flight: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    // What is in the spool at connection goes at once.
    let mut last_sent = std::time::Instant::now() - opts.linger;
    loop {
        if stop.load(Ordering::Relaxed) && in_flight.is_empty() {
            return Ok(());
        }
        // Fill the window: full batches at once, the rest once the linger is over.
        let mut lingering = None;
        while let Some(sender) = &tx
            && in_flight.len() < opts.window
            && !stop.load(Ordering::Relaxed)
        {
            let spool2 = spool.clone();
            let batch = tokio::task::spawn_blocking(move || next_batch(&spool2, next, opts))
                .await
                .map_err(|e| LinkError::Transport(e.to_string()))??;
            let Some((batch, full)) = batch else {
                if opts.drain {
                    if in_flight.is_empty() {
                        return Ok(()); // drained: everything sent is acknowledged
                    }
                    tx = None;
                }
                break;
            };
            let waited = last_sent.elapsed();
            if !full && !opts.drain && waited < opts.linger {
                lingering = Some(opts.linger - waited);
                break;
            }
            let last = batch.first_seq + batch.events.len() as u64 - 1;
            next = last + 1;
            in_flight.push_back(last);
            last_sent = std::time::Instant::now();
            stats.batches.fetch_add(1, Ordering::Relaxed);
            sender
                .send(batch)
                .await
                .map_err(|_| LinkError::Transport("the stream closed".into()))?;
        }
        // Idle or lingering, the spool is looked at again every 200 ms at least (a full
        // batch goes at once); an acknowledgement may come first.
        let look = Duration::from_millis(200);
        let wait = match lingering {
            Some(l) => l.min(look),
            None if in_flight.is_empty() => look,
            None => Duration::from_secs(30),
        };
        match tokio::time::timeout(wait, acks.message()).await {
            Err(_) if in_flight.is_empty() || lingering.is_some() => continue,
            Err(_) => {
                return Err(LinkError::Transport(
                    "no acknowledgement within 30 s".into(),
                ));
            }
            Ok(Err(status)) => return Err(status_error(status)),
            // After a drain closed its side, the server ends the stream once it has
            // acknowledged everything.
            Ok(Ok(None)) if tx.is_none() && in_flight.is_empty() => return Ok(()),
            Ok(Ok(None)) => {
                return Err(LinkError::Transport("the server closed the stream".into()));
            }
            Ok(Ok(Some(ack))) => {
                while in_flight.front().is_some_and(|&l| l <= ack.durable_through) {
                    in_flight.pop_front();
                }
                let mut sp = spool
                    .lock()
                    .map_err(|_| LinkError::Transport("spool lock poisoned".into()))?;
                if ack.durable_through > sp.stats().acked {
                    sp.ack(ack.durable_through).map_err(|e| {
                        LinkError::Transport(format!("acknowledging in the spool: {e}"))
                    })?;
                }
                stats.acked.store(ack.durable_through, Ordering::Relaxed);
            }
        }
    }
}

fn status_error(s: tonic::Status) -> LinkError {
    match s.code() {
        tonic::Code::PermissionDenied
        | tonic::Code::Unauthenticated
        | tonic::Code::InvalidArgument => LinkError::Refused(s.message().to_string()),
        _ => LinkError::Transport(format!("{}: {}", s.code(), s.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            host_port("https://127.0.0.1:7443").unwrap(),
            ("127.0.0.1:7443".into(), "127.0.0.1".into())
        );
        assert_eq!(
            host_port("https://edr.example").unwrap(),
            ("edr.example:7443".into(), "edr.example".into())
        );
        assert_eq!(host_port("https://[::1]:9").unwrap().1, "::1");
        assert!(host_port("http://x:1").is_err(), "TLS only");
    }
}
