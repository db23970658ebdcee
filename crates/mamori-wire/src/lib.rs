//! The agent–server protocol, gRPC over TLS (`mamori.v1`).
//!
//! Two services on one port:
//!
//! * `Enrollment` (no client certificate): `GetCa` returns the CA certificate, which the agent
//!   accepts only if its SHA-256 matches the fingerprint it was given; `Enroll` trades an
//!   enrollment token and a certificate request for a client certificate.
//! * `Ingest` (client certificate required): `Stream` carries [`Batch`]es of events with
//!   consecutive sequence numbers from the agent's spool and returns [`Ack`]s: everything up
//!   to `durable_through` is stored and may be deleted from the spool. Replays of already
//!   stored numbers are acknowledged without being stored twice. An agent that announces
//!   its window ([`WINDOW_HEADER`]) may get one acknowledgement for several batches.
//! * `Control` (client certificate required): `Channel` is the response command channel.
//!   The server sends [`SignedCommand`]s (a JSON [`command::Command`] and the CA's signature
//!   of exactly those bytes); the agent answers with [`Report`]s: `received`, then `done`
//!   with the outcome. Commands queued while the agent was away are sent when it connects.
//!
//! Messages are defined here with `prost` derives; `build.rs` generates the service stubs.
//! The server reads the ingest stream's gRPC framing itself ([`framing`]), so that a stream
//! holds no buffer between batches.

#![allow(missing_docs)] // generated stubs

/// `GetCa` request (empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetCaRequest {}

/// The CA certificate (PEM).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetCaReply {
    #[prost(string, tag = "1")]
    pub ca_pem: String,
}

/// An agent asking to join.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EnrollRequest {
    /// The enrollment token (secret).
    #[prost(string, tag = "1")]
    pub token: String,
    /// PKCS#10 certificate request for the agent's own key (PEM).
    #[prost(string, tag = "2")]
    pub csr_pem: String,
    /// Host facts for the inventory.
    #[prost(string, tag = "3")]
    pub hostname: String,
    #[prost(string, tag = "4")]
    pub os: String,
    #[prost(string, tag = "5")]
    pub kernel: String,
    #[prost(string, tag = "6")]
    pub agent_version: String,
}

/// The agent's identity.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EnrollReply {
    #[prost(string, tag = "1")]
    pub agent_id: String,
    #[prost(string, tag = "2")]
    pub tenant: String,
    /// The client certificate (PEM), signed by the CA.
    #[prost(string, tag = "3")]
    pub cert_pem: String,
}

/// Consecutive events from the agent's spool.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Batch {
    /// Spool sequence number of the first event; the others follow without gaps.
    #[prost(uint64, tag = "1")]
    pub first_seq: u64,
    /// The events (ECS JSON documents). Decoded as slices of the received message, not
    /// copies.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub events: Vec<bytes::Bytes>,
}

/// What the server has made durable for this agent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    /// Every sequence number up to and including this one is stored.
    #[prost(uint64, tag = "1")]
    pub durable_through: u64,
}

/// A response command: `body` is a JSON [`command::Command`], `signature` the server CA's
/// ECDSA signature of exactly those bytes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SignedCommand {
    #[prost(bytes = "vec", tag = "1")]
    pub body: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub signature: Vec<u8>,
}

/// What an agent says on the control channel.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Report {
    /// `hello` (first message), `received` (a command arrived and was accepted for
    /// execution), `done` (finished: see `ok`), `event` (something the server must know
    /// outside a command, e.g. isolation was tampered with; `output_json` says what).
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(string, tag = "2")]
    pub command_id: String,
    #[prost(bool, tag = "3")]
    pub ok: bool,
    /// The outcome (JSON object), or why it failed.
    #[prost(string, tag = "4")]
    pub output_json: String,
    #[prost(string, tag = "5")]
    pub error: String,
}

/// Largest control message (a collected file travels in one report).
pub const MAX_CONTROL_BYTES: usize = 32 << 20;

/// Largest gRPC message either side accepts (a batch is at most this big).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// Request header of an ingest stream: how many batches the agent keeps in flight before it
/// waits for an acknowledgement. With it, the server may acknowledge up to `window - 1`
/// batches at once (each acknowledgement covers everything durable so far) instead of every
/// batch; without it, every batch is acknowledged.
pub const WINDOW_HEADER: &str = "mamori-window";

pub mod enrollment {
    //! The `Enrollment` service.
    include!(concat!(env!("OUT_DIR"), "/mamori.v1.Enrollment.rs"));
}

pub mod ingest {
    //! The `Ingest` service.
    include!(concat!(env!("OUT_DIR"), "/mamori.v1.Ingest.rs"));
}

pub mod control {
    //! The `Control` service.
    include!(concat!(env!("OUT_DIR"), "/mamori.v1.Control.rs"));
}

pub mod command;
pub mod framing;

/// The byte-buffer type of [`Batch::events`].
pub use bytes::Bytes;
