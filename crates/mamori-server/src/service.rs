//! The gRPC services: enrollment (open) and ingest (mutual TLS, agent identity checked
//! against the state database on every stream).

use std::sync::{Arc, Mutex};

use mamori_wire::enrollment::enrollment_server::Enrollment;
use mamori_wire::ingest::ingest_server::Ingest;
use mamori_wire::{Ack, Batch, EnrollReply, EnrollRequest, GetCaReply, GetCaRequest};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::state::State;
use crate::store::{Append, EventLog, Writer};

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
    /// The columnar store the compactor fills from the log; queries read it.
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
}

fn internal(e: impl std::fmt::Display) -> Status {
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

/// The ingest service.
pub struct IngestService(pub Arc<Shared>);

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

type AckStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<Ack, Status>> + Send + 'static>>;

/// One agent's ingest stream as the acknowledgements answer it.
struct Flow {
    inbound: Streaming<Batch>,
    shared: Arc<Shared>,
    agent: String,
    tenant: String,
    ended: bool,
}

impl Flow {
    /// Reads the next batch and makes it durable: its acknowledgement, or the refusal that
    /// ends the stream. `None` when the agent has closed its side.
    async fn next(&mut self) -> Option<Result<Ack, Status>> {
        if self.ended {
            return None;
        }
        let batch = match self.inbound.next().await? {
            Ok(b) => b,
            Err(status) => {
                tracing::debug!(agent = %self.agent, "stream ended: {status}");
                return None;
            }
        };
        if let Err(why) = check(&batch, &self.shared.limits) {
            tracing::warn!(agent = %self.agent, "malformed batch refused: {why}");
            self.ended = true;
            return Some(Err(Status::invalid_argument(why)));
        }
        let appended = self
            .shared
            .writer
            .append(Append {
                tenant: self.tenant.clone(),
                agent: self.agent.clone(),
                first_seq: Some(batch.first_seq),
                events: batch.events,
            })
            .await;
        Some(match appended {
            Ok(a) => {
                if a.gap > 0 {
                    // Agents skip reserved numbers after a restart; real losses are counted
                    // by the agent (spool eviction) and reported in its health.
                    tracing::debug!(agent = %self.agent, skipped = a.gap, "sequence jump");
                }
                Ok(Ack {
                    durable_through: a.durable_through,
                })
            }
            Err(e) => {
                self.ended = true;
                Err(internal(e))
            }
        })
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = AckStream;

    /// The acknowledgements are the response stream itself: the next batch is read when the
    /// last acknowledgement has been handed to the connection, so one is in flight at most
    /// and the agent cannot run ahead of the disk (no task or channel of its own per stream).
    async fn stream(
        &self,
        r: Request<Streaming<Batch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let (agent, tenant) = authorise_agent(&self.0, &r)?;
        let _ = self.0.state.touch(&agent);
        let flow = Flow {
            inbound: r.into_inner(),
            shared: self.0.clone(),
            agent,
            tenant,
            ended: false,
        };
        let acks = futures_util::stream::unfold(flow, |mut flow| async move {
            let ack = flow.next().await?;
            Some((ack, flow))
        });
        Ok(Response::new(Box::pin(acks)))
    }
}

/// Checks a batch before anything is stored. Events are validated without building a tree
/// (detection parses them once, later).
fn check(b: &Batch, limits: &Limits) -> Result<(), String> {
    if b.first_seq == 0 {
        return Err("first_seq must be at least 1".into());
    }
    if b.events.is_empty() {
        return Err("empty batch".into());
    }
    if b.events.len() > limits.max_batch_events {
        return Err(format!(
            "{} events in one batch (at most {})",
            b.events.len(),
            limits.max_batch_events
        ));
    }
    if b.first_seq.checked_add(b.events.len() as u64).is_none() {
        return Err("sequence numbers overflow".into());
    }
    for (i, e) in b.events.iter().enumerate() {
        if e.len() > limits.max_event_bytes {
            return Err(format!(
                "event {i}: {} bytes (at most {})",
                e.len(),
                limits.max_event_bytes
            ));
        }
        if e.iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'{') {
            return Err(format!("event {i}: not a JSON object"));
        }
        if let Err(err) = mamori_model::json::validate(e) {
            return Err(format!("event {i}: not JSON: {err}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_batches_are_refused_with_a_reason() {
        let l = Limits::default();
        let ok = Batch {
            first_seq: 1,
            events: vec![b"{\"a\":1}".to_vec().into()],
        };
        assert!(check(&ok, &l).is_ok());
        let bad = |first_seq: u64, events: Vec<Vec<u8>>| {
            let events = events.into_iter().map(Into::into).collect();
            check(&Batch { first_seq, events }, &l)
        };
        assert!(
            bad(0, vec![b"{}".to_vec()])
                .unwrap_err()
                .contains("first_seq")
        );
        assert!(bad(1, vec![]).unwrap_err().contains("empty"));
        assert!(
            bad(1, vec![b"[1]".to_vec()])
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(
            bad(1, vec![b"{".to_vec()])
                .unwrap_err()
                .contains("not JSON")
        );
        // Text the stores could not read back as a string is refused here, not found later.
        assert!(
            bad(1, vec![b"{}".to_vec(), b"{\"a\":\"\xff\"}".to_vec()])
                .unwrap_err()
                .contains("event 1: not JSON: not UTF-8 at byte 6")
        );
        assert!(
            bad(1, vec![br#"{"a":"\ud800"}"#.to_vec()])
                .unwrap_err()
                .contains("lone surrogate")
        );
        assert!(
            bad(u64::MAX, vec![b"{}".to_vec()])
                .unwrap_err()
                .contains("overflow")
        );
        assert!(
            bad(1, vec![vec![b' '; (1 << 20) + 1]])
                .unwrap_err()
                .contains("bytes")
        );
    }
}
