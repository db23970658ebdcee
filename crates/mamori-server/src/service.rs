//! The enrollment service (open) and what every agent stream shares: the server's state,
//! limits, and the check of an agent's certificate against the state database
//! ([`authorise_agent`]). The ingest stream is in `crate::ingest`.

use std::sync::{Arc, Mutex};

use mamori_wire::enrollment::enrollment_server::Enrollment;
use mamori_wire::{EnrollReply, EnrollRequest, GetCaReply, GetCaRequest};
use tonic::{Request, Response, Status};

use crate::state::State;
use crate::store::{EventLog, Writer};

/// Limits on what an agent may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Events in one batch.
    pub max_batch_events: usize,
    /// Bytes of one event.
    pub max_event_bytes: usize,
    /// Validity of agent certificates, days.
    pub cert_days: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_events: 10_000,
            max_event_bytes: 1 << 20,
            cert_days: 365,
        }
    }
}

/// What the services share.
pub struct Shared {
    /// State database.
    pub state: Arc<State>,
    /// The detection queue (none when the server runs without rules).
    pub detect: Option<std::sync::mpsc::SyncSender<crate::detect::Msg>>,
    /// The rules detection runs (none without detection).
    pub rules: Option<Arc<crate::rules::Rules>>,
    /// The CA.
    pub ca: mamori_pki::Ca,
    /// The ingest log (the compactor reads it; only `writer` appends to it).
    pub log: Arc<Mutex<EventLog>>,
    /// Appends batches to the log, durable before they are acknowledged.
    pub writer: Writer,
    /// The columnar store the compactor fills (from detection's rows, or from the log);
    /// queries read it.
    pub events: Arc<dyn mamori_columnar::EventStore>,
    /// Limits.
    pub limits: Limits,
    /// Wakes agents' control streams when commands are queued.
    pub dispatch: crate::actions::Dispatch,
    /// Where files collected from hosts are kept.
    pub collected_dir: std::path::PathBuf,
    /// Reachable by every isolated host besides the server (configuration).
    pub isolation_allow: Vec<mamori_wire::command::Allow>,
    /// Agents whose control stream comes from this machine (loopback): the server's own
    /// host, never isolated automatically (it would cut every agent off the server).
    pub local_agents: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The SOC policy (severity, incidents, clocks, notifications).
    pub policy: Arc<mamori_soc::Policy>,
    /// How far detection has gone through the log (none without detection): the log keeps
    /// what it has not passed.
    pub detected: Option<crate::detect::Progress>,
    /// Rows detection built for the store (none without detection).
    pub feed: Option<Arc<crate::compact::Feed>>,
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!("internal error: {e}");
    Status::internal("internal server error")
}

/// The enrollment service.
pub struct EnrollmentService(pub Arc<Shared>);

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn get_ca(&self, _r: Request<GetCaRequest>) -> Result<Response<GetCaReply>, Status> {
        Ok(Response::new(GetCaReply {
            ca_pem: self.0.ca.cert_pem().to_string(),
        }))
    }

    async fn enroll(&self, r: Request<EnrollRequest>) -> Result<Response<EnrollReply>, Status> {
        let peer = r
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "unknown".into());
        let req = r.into_inner();
        let field = |name: &str, v: &str, max: usize| {
            if v.len() > max || v.chars().any(char::is_control) {
                Err(Status::invalid_argument(format!(
                    "{name}: at most {max} printable characters"
                )))
            } else {
                Ok(())
            }
        };
        field("hostname", &req.hostname, 255)?;
        field("os", &req.os, 255)?;
        field("kernel", &req.kernel, 255)?;
        field("agent_version", &req.agent_version, 64)?;
        if req.csr_pem.len() > 16 << 10 {
            return Err(Status::invalid_argument("csr_pem: too large"));
        }
        let shared = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let (token_id, tenant) = match shared
                .state
                .spend_enroll_token(&req.token)
                .map_err(internal)?
            {
                Ok(t) => t,
                Err(why) => {
                    tracing::warn!(%peer, host = %req.hostname, "enrollment refused: {why}");
                    let _ = shared.state.audit(
                        &format!("peer:{peer}"),
                        "agent.enroll.refused",
                        &format!("host:{}", req.hostname),
                        &why.to_string(),
                    );
                    return Err(Status::permission_denied(format!(
                        "enrollment refused: {why}"
                    )));
                }
            };
            let agent_id = format!("agt-{}", hex16());
            let (cert_pem, serial) = shared
                .ca
                .sign_agent(&req.csr_pem, &agent_id, &tenant, shared.limits.cert_days)
                .map_err(|e| Status::invalid_argument(format!("certificate request: {e}")))?;
            shared
                .state
                .add_agent(
                    &agent_id,
                    &tenant,
                    &req.hostname,
                    &req.os,
                    &req.kernel,
                    &req.agent_version,
                    &serial,
                    token_id,
                )
                .map_err(internal)?;
            tracing::info!(%agent_id, %tenant, host = %req.hostname, "agent enrolled");
            Ok(Response::new(EnrollReply {
                agent_id,
                tenant,
                cert_pem,
            }))
        })
        .await
        .map_err(internal)?
    }
}

fn hex16() -> String {
    let b: [u8; 8] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The identity in a client certificate: (common name, serial hex).
fn identity(der: &[u8]) -> Option<(String, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let serial = cert
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    Some((cn, serial))
}

/// The agent behind a request: its certificate must name an enrolled, unrevoked agent and
/// be that agent's current certificate. Returns (agent, tenant).
pub fn authorise_agent<T>(shared: &Shared, r: &Request<T>) -> Result<(String, String), Status> {
    let certs = r
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let (id, serial) = identity(leaf.as_ref())
        .ok_or_else(|| Status::unauthenticated("unreadable client certificate"))?;
    let agent = shared.state.agent(&id).map_err(internal)?.ok_or_else(|| {
        tracing::warn!(%id, "unknown agent refused");
        Status::unauthenticated(format!("unknown agent {id}"))
    })?;
    if agent.revoked_at.is_some() {
        tracing::warn!(%id, "revoked agent refused");
        return Err(Status::permission_denied(format!("agent {id} is revoked")));
    }
    // DER drops leading zero bytes of a serial: compare without them.
    let norm = |s: &str| s.trim_start_matches("00").to_ascii_lowercase();
    if norm(&agent.serial) != norm(&serial) {
        return Err(Status::permission_denied(format!(
            "agent {id}: this certificate has been replaced"
        )));
    }
    Ok((id, agent.tenant))
}
