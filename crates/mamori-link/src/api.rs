//! A small client for the server's REST API: HTTP/1.1 over TLS trusting only the server's
//! CA, one request per connection. Enough for the CLI and tools; not a general HTTP client
//! (no redirects, no chunked request bodies).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::{LinkError, host_port};

/// Largest response read.
const MAX_RESPONSE: usize = 256 << 20;

/// An API endpoint: server, CA and bearer token.
#[derive(Clone)]
pub struct Api {
    addr: String,
    host: String,
    token: String,
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body (UTF-8, lossy).
    pub body: String,
    /// Body as sent.
    pub bytes: Vec<u8>,
}

impl Api {
    /// An endpoint for `server` (`https://host:port`) trusting only `ca_pem`.
    pub fn new(server: &str, ca_pem: &str, token: &str) -> Result<Api, LinkError> {
        let (addr, host) = host_port(server)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let c = c.map_err(|e| LinkError::Invalid(format!("CA certificate: {e}")))?;
            roots
                .add(c)
                .map_err(|e| LinkError::Invalid(format!("CA certificate: {e}")))?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError::Transport(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Api {
            addr,
            host,
            token: token.to_string(),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Sends one request; `body` is sent as JSON.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, LinkError> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| LinkError::Transport(format!("connecting to {}: {e}", self.addr)))?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| LinkError::Invalid(format!("server name {:?}: {e}", self.host)))?;
        let mut tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| LinkError::Transport(format!("TLS with {}: {e}", self.addr)))?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            self.token,
            body.len()
        );
        let io = |e: std::io::Error| LinkError::Transport(format!("{}: {e}", self.addr));
        tls.write_all(head.as_bytes()).await.map_err(io)?;
        tls.write_all(body).await.map_err(io)?;
        let mut buf = Vec::new();
        (&mut tls)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(io)?;
        parse(&buf)
    }
}

/// Parses an HTTP/1.1 response with a `Content-Length` or chunked body.
fn parse(buf: &[u8]) -> Result<Reply, LinkError> {
    let bad = |why: &str| LinkError::Transport(format!("unreadable API response: {why}"));
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status line"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut rest = &buf[split + 4..];
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("chunk size"))?;
            let size_text = String::from_utf8_lossy(&rest[..end]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("chunk size"))?;
            rest = &rest[end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size).ok_or_else(|| bad("short chunk"))?);
            rest = rest.get(size + 2..).ok_or_else(|| bad("short chunk"))?;
        }
        out
    } else {
        rest.to_vec()
    };
    Ok(Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        bytes: body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_length_or_chunks() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "{}"));
        let r = parse(
            b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (401, "abcde"));
        assert!(parse(b"garbage").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err());
    }
}
