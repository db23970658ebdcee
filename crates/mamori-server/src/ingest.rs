//! The ingest stream (`mamori.v1.Ingest/Stream`, mutual TLS): batches in, acknowledgements
//! of durable sequence numbers out.
//!
//! Agents use the generated gRPC client, but the server reads the stream's gRPC framing
//! (a flag byte, a four-byte length, the message) off the HTTP/2 body itself instead of
//! through tonic's stream decoder. tonic copies a stream's body into one buffer that grows
//! to the largest message and keeps it, and doubles it whenever the last message's events
//! still share it: ~65 KiB per agent at 10,000 agents, and a fresh allocation (page faults)
//! for most batches. Here each message gets an allocation of exactly its size
//! ([`mamori_wire::framing::Framing`]), which the events then slice and which is freed with
//! them; between messages a stream holds at most the four bytes of a header it has not
//! finished reading.
//!
//! Acknowledgements are coalesced for agents that say how many batches they keep in flight
//! (the `mamori-window` request header, [`mamori_wire::WINDOW_HEADER`]): one acknowledgement
//! covers up to `window - 1` batches, or those that came within [`ACK_DELAY`] of the oldest
//! unacknowledged one, whichever comes first, so an agent never waits on a full window (a
//! batch that came [`ACK_DELAY`] or more after the one before is acknowledged at once:
//! nothing is likely to join it). An ack is a TLS record, an HTTP/2 frame and a `writev` (on
//! loopback, also the peer's receive path): at a few events per batch, acknowledging every
//! batch was a quarter of the gRPC workers' time, and one per two batches (a one-second
//! delay at agents' 500 ms linger) a tenth. Durability is unchanged: nothing is acknowledged
//! before it is synced, and what was synced but not yet acknowledged when a connection drops
//! is sent again and recognised as a replay. Clients without the header get an
//! acknowledgement per batch.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame};
use mamori_wire::framing::{FrameError, Framing, frame};
use mamori_wire::{Ack, Batch};
use prost::Message;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::{Code, Status};

use crate::service::{Limits, Shared, authorise_agent, internal};
use crate::store::{Append, Progress};

/// The one method this service has.
const PATH: &str = "/mamori.v1.Ingest/Stream";

/// How long a batch may wait for others to share its acknowledgement: four of an agent's
/// batches at its 500 ms linger. The agent's spool keeps what is not acknowledged, so the
/// delay costs nothing but spool space for two seconds.
pub const ACK_DELAY: Duration = Duration::from_secs(2);

/// Batches one acknowledgement may cover, at most (whatever window an agent announces).
const MAX_COALESCED: u32 = 16;

/// HTTP/2 flow-control window of each stream: how many bytes an agent may send that its
/// stream has not read yet. While a stream waits for its batches to be durable (or for the
/// log writer's queue), what the agent sends meanwhile waits in the server's memory, up to
/// this much; beyond it the agent's sends wait instead (its spool keeps the events). The
/// HTTP/2 default of 64 KiB: hyper's 1 MiB let 10,000 agents that send ahead of their
/// acknowledgements hold up to 10 GiB of a server that had fallen behind. An agent's
/// batches at its linger are a few KiB; a full one (up to 2 MiB when a spool drains) takes
/// a window update per 64 KiB read, which costs nothing on a LAN.
pub const STREAM_WINDOW: u32 = 64 << 10;

/// HTTP/2 flow-control window of each connection (all its streams): the ingest stream's
/// window and room for the control stream's replies beside it.
pub const CONNECTION_WINDOW: u32 = 2 * STREAM_WINDOW;

/// The ingest service, routed by its gRPC name.
#[derive(Clone)]
pub struct IngestService(pub Arc<Shared>);

impl NamedService for IngestService {
    const NAME: &'static str = "mamori.v1.Ingest";
}

impl tonic::codegen::Service<http::Request<Body>> for IngestService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.open(req).await.unwrap_or_else(Status::into_http)) })
    }
}

impl IngestService {
    /// Checks the agent and answers with its acknowledgement stream.
    ///
    /// The acknowledgements are the response body itself (no task or channel of its own per
    /// stream). A stream hands at most as many batches to the log writer as one
    /// acknowledgement may cover (one for clients that announce no window) and then waits
    /// until they are durable and acknowledged, so the agent cannot run ahead of the disk;
    /// the writer's queue is bounded besides.
    async fn open(&self, req: http::Request<Body>) -> Result<http::Response<Body>, Status> {
        if req.uri().path() != PATH {
            return Err(Status::unimplemented(format!(
                "no method {} in mamori.v1.Ingest",
                req.uri().path()
            )));
        }
        let (parts, body) = req.into_parts();
        let coalesce = coalesce(&parts.headers);
        let request = tonic::Request::from_http(http::Request::from_parts(parts, ()));
        let (agent, tenant) = state_call(&self.0, move |shared| {
            let who = authorise_agent(shared, &request)?;
            let _ = shared.state.touch(&who.0);
            Ok(who)
        })
        .await?;
        let flow = Flow {
            coalesce,
            body,
            framing: Framing::new(mamori_wire::MAX_MESSAGE_BYTES),
            pending: Bytes::new(),
            shared: self.0.clone(),
            agent: agent.into(),
            tenant: tenant.into(),
            submitted: 0,
            progress: Arc::default(),
            unacked: None,
            ending: None,
            last_batch: None,
        };
        let frames = futures_util::stream::unfold(Some(flow), |flow| async move {
            let mut flow = flow?;
            let (frame, flow) = match flow.next().await {
                Ok(ack) => (Frame::data(frame(&ack)), Some(flow)),
                Err(status) => (Frame::trailers(trailers(&status)), None),
            };
            Some((Ok::<_, Status>(frame), flow))
        });
        let mut response = http::Response::new(Body::new(http_body_util::StreamBody::new(frames)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        Ok(response)
    }
}

/// Runs `f` on the blocking pool: the state database's calls block (a write such as
/// `touch` waits, up to the busy timeout, while detection's own connection holds the
/// database's write lock for a round that records alerts), and the runtime's few workers
/// serve every agent's stream, so none of them waits on it.
pub(crate) async fn state_call<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || f(&shared))
        .await
        .map_err(|e| Status::internal(format!("checking the agent: {e}")))?
}

/// Batches one acknowledgement may cover for a client that keeps `mamori-window` batches
/// in flight: one less than its window (it can always send), at least one.
fn coalesce(headers: &http::HeaderMap) -> u32 {
    headers
        .get(mamori_wire::WINDOW_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
        .map_or(1, |w| w.saturating_sub(1).clamp(1, MAX_COALESCED))
}

/// A status as gRPC trailers.
fn trailers(status: &Status) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        map.insert(
            Status::GRPC_STATUS,
            http::HeaderValue::from(status.code() as i32),
        );
    }
    map
}

/// The status a framing error ends the stream with.
fn refusal(e: FrameError) -> Status {
    match e {
        FrameError::TooLarge { .. } => Status::out_of_range(e.to_string()),
        FrameError::Compressed(_) | FrameError::Truncated => {
            Status::invalid_argument(e.to_string())
        }
    }
}

/// One agent's ingest stream as the acknowledgements answer it.
struct Flow {
    body: Body,
    framing: Framing,
    /// What is left of the last data frame after the last message.
    pending: Bytes,
    shared: Arc<Shared>,
    agent: Arc<str>,
    tenant: Arc<str>,
    /// Batches acknowledged together, at most.
    coalesce: u32,
    /// Batches handed to the log writer so far.
    submitted: u64,
    /// How far they are durable.
    progress: Arc<Progress>,
    /// Batches not acknowledged yet.
    unacked: Option<Unacked>,
    /// How the stream ends, once the last acknowledgement has gone.
    ending: Option<Status>,
    /// When the last batch came.
    last_batch: Option<tokio::time::Instant>,
}

/// Whether a batch that came at `now` is acknowledged at once: when the one before came
/// [`ACK_DELAY`] or more earlier, the next is not expected within the delay either, and
/// waiting would cost a timer and a wake-up and save nothing. The first batch of a stream
/// waits (what the spool holds at connection comes in a burst).
fn sparse(last: Option<tokio::time::Instant>, now: tokio::time::Instant) -> bool {
    last.is_some_and(|t| now.saturating_duration_since(t) >= ACK_DELAY)
}

/// Batches handed to the log writer and not acknowledged yet.
struct Unacked {
    batches: u32,
    /// When the first of them came.
    since: tokio::time::Instant,
}

impl Flow {
    /// The next message, `None` when the agent has closed its side.
    async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if !self.pending.is_empty() {
                let msg = self.framing.feed(&mut self.pending).map_err(refusal)?;
                if msg.is_some() {
                    return Ok(msg);
                }
            }
            match std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    // Trailers (none are expected from a client) are ignored.
                    if let Ok(data) = frame.into_data() {
                        self.pending = data;
                    }
                }
                // The agent reset the stream or the connection went: nothing to answer.
                Some(Err(status)) => {
                    tracing::debug!(agent = %self.agent, "stream ended: {status}");
                    return Ok(None);
                }
                None => {
                    self.framing.finish().map_err(refusal)?;
                    return Ok(None);
                }
            }
        }
    }

    /// Reads batches and hands them to the log writer until an acknowledgement is due: the
    /// acknowledgement (once what it covers is durable), or the status that ends the stream
    /// (`Ok` when the agent closed its side) once everything durable has been acknowledged.
    async fn next(&mut self) -> Result<Ack, Status> {
        loop {
            if let Some(status) = self.ending.take() {
                return Err(status);
            }
            let msg = match &self.unacked {
                Some(u) if u.batches >= self.coalesce => return self.ack().await,
                Some(u) => {
                    match tokio::time::timeout_at(u.since + ACK_DELAY, self.message()).await {
                        Ok(msg) => msg,
                        Err(_) => return self.ack().await,
                    }
                }
                None => self.message().await,
            };
            let status = match msg {
                Ok(Some(msg)) => {
                    let now = tokio::time::Instant::now();
                    let sparse = sparse(self.last_batch.replace(now), now);
                    match self.submit(msg).await {
                        Ok(()) => {
                            let u = self.unacked.get_or_insert(Unacked {
                                batches: 0,
                                since: now,
                            });
                            u.batches += 1;
                            if sparse {
                                return self.ack().await;
                            }
                            continue;
                        }
                        Err(status) => status,
                    }
                }
                Ok(None) => Status::new(Code::Ok, ""),
                Err(status) => {
                    tracing::warn!(agent = %self.agent, "ingest stream refused: {}", status.message());
                    status
                }
            };
            // What is durable is acknowledged before the stream ends, even with a refusal.
            if self.unacked.is_some() {
                self.ending = Some(status);
                return self.ack().await;
            }
            return Err(status);
        }
    }

    /// The acknowledgement of every batch handed over so far, once they are durable.
    async fn ack(&mut self) -> Result<Ack, Status> {
        self.unacked = None;
        let through = self
            .progress
            .durable(self.submitted)
            .await
            .map_err(internal)?;
        Ok(Ack {
            durable_through: through,
        })
    }

    /// Checks a batch and hands it to the log writer (without waiting for it to be durable:
    /// [`Flow::ack`] does), or the refusal that ends the stream.
    async fn submit(&mut self, msg: Bytes) -> Result<(), Status> {
        let refuse = |agent: &str, why: String| {
            tracing::warn!(%agent, "malformed batch refused: {why}");
            Status::invalid_argument(why)
        };
        let batch =
            Batch::decode(msg).map_err(|e| refuse(&self.agent, format!("not a batch: {e}")))?;
        check(&batch, &self.shared.limits).map_err(|why| refuse(&self.agent, why))?;
        self.shared
            .writer
            .submit(
                Append {
                    tenant: self.tenant.clone(),
                    agent: self.agent.clone(),
                    first_seq: Some(batch.first_seq),
                    events: batch.events,
                },
                &self.progress,
            )
            .await
            .map_err(internal)?;
        self.submitted += 1;
        Ok(())
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
        match mamori_model::json::validate(e) {
            Ok(()) => {}
            Err(err) if err.what == mamori_model::json::RESERVED_KEY => {
                return Err(format!("event {i}: {err}"));
            }
            Err(err) => return Err(format!("event {i}: not JSON: {err}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_long_after_the_last_is_acknowledged_at_once() {
        let t = tokio::time::Instant::now();
        assert!(!sparse(None, t), "the first batch of a stream waits");
        assert!(
            !sparse(Some(t), t + ACK_DELAY / 2),
            "an agent's linger apart"
        );
        assert!(sparse(Some(t), t + ACK_DELAY));
        assert!(sparse(Some(t), t + ACK_DELAY * 3));
    }

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
        // JSON the tree would read as something else (a fuzz finding: see mamori_model::json).
        let reserved = bad(
            1,
            vec![br#"{"$serde_json::private::RawValue":"{}"}"#.to_vec()],
        );
        assert_eq!(
            reserved.unwrap_err(),
            format!("event 0: {} at byte 1", mamori_model::json::RESERVED_KEY)
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
