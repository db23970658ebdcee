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
//!   stored numbers are acknowledged without being stored twice.
//!
//! Messages are defined here with `prost` derives; `build.rs` generates the service stubs.

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
    /// The events (ECS JSON documents).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub events: Vec<Vec<u8>>,
}

/// What the server has made durable for this agent.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ack {
    /// Every sequence number up to and including this one is stored.
    #[prost(uint64, tag = "1")]
    pub durable_through: u64,
}

/// Largest gRPC message either side accepts (a batch is at most this big).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

pub mod enrollment {
    //! The `Enrollment` service.
    include!(concat!(env!("OUT_DIR"), "/mamori.v1.Enrollment.rs"));
}

pub mod ingest {
    //! The `Ingest` service.
    include!(concat!(env!("OUT_DIR"), "/mamori.v1.Ingest.rs"));
}
