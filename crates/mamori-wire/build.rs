//! Generates the gRPC client and server stubs from the Rust description below: no .proto
//! files, no protoc. The messages are `prost` structs in `src/lib.rs`.

use tonic_build::manual::{Builder, Method, Service};

fn method(
    name: &str,
    route: &str,
    input: &str,
    output: &str,
) -> tonic_build::manual::MethodBuilder {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(format!("crate::{input}"))
        .output_type(format!("crate::{output}"))
        .codec_path("tonic_prost::ProstCodec")
}

fn main() {
    let enrollment = Service::builder()
        .name("Enrollment")
        .package("mamori.v1")
        .comment("Open to agents without a certificate: fetch the CA to pin, enroll with a token.")
        .method(method("get_ca", "GetCa", "GetCaRequest", "GetCaReply").build())
        .method(method("enroll", "Enroll", "EnrollRequest", "EnrollReply").build())
        .build();
    let ingest = Service::builder()
        .name("Ingest")
        .package("mamori.v1")
        .comment(
            "Mutual TLS only: event batches in, acknowledgements of durable sequence numbers out.",
        )
        .method(
            method("stream", "Stream", "Batch", "Ack")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    let control = Service::builder()
        .name("Control")
        .package("mamori.v1")
        .comment("Mutual TLS only: signed response commands out, reports of their outcome in.")
        .method(
            method("channel", "Channel", "Report", "SignedCommand")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    Builder::new().compile(&[enrollment, ingest, control]);
}
