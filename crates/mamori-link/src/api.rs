//! A small client for the server's REST API: HTTP/1.1 over TLS trusting only the server's
//! CA, one request per connection, or many over one kept open ([`Session`]). Enough for the
//! CLI and tools; not a general HTTP client (no redirects, no chunked request bodies).

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;
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

    /// Sends one request on a connection of its own; `body` is sent as JSON.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, LinkError> {
        let mut tls = self.connect().await?;
        let body = body.unwrap_or_default();
        let io = |e: std::io::Error| LinkError::Transport(format!("{}: {e}", self.addr));
        tls.write_all(self.head(method, path, body.len(), false).as_bytes())
            .await
            .map_err(io)?;
        tls.write_all(body).await.map_err(io)?;
        let mut buf = Vec::new();
        (&mut tls)
            .take(MAX_RESPONSE as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(io)?;
        parse(&buf)
    }

    /// A connection kept open for many requests (see [`Session`]).
    pub fn session(&self) -> Session {
        Session {
            api: self.clone(),
            conn: None,
            buf: Vec::new(),
            connects: 0,
        }
    }

    async fn connect(&self) -> Result<TlsStream<tokio::net::TcpStream>, LinkError> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| LinkError::Transport(format!("connecting to {}: {e}", self.addr)))?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| LinkError::Invalid(format!("server name {:?}: {e}", self.host)))?;
        self.tls
            .connect(name, tcp)
            .await
            .map_err(|e| LinkError::Transport(format!("TLS with {}: {e}", self.addr)))
    }

    fn head(&self, method: &str, path: &str, len: usize, keep: bool) -> String {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: {}\r\n\r\n",
            self.addr,
            self.token,
            if keep { "keep-alive" } else { "close" }
        )
    }
}

/// Requests over one connection kept open (HTTP/1.1 keep-alive), for a caller that asks
/// often, such as a poller: each request after the first costs no TCP or TLS handshake,
/// which costs the server more than a small request itself. A `GET` on a connection the
/// server has closed meanwhile is sent again once on a new connection; other methods are
/// never sent twice.
pub struct Session {
    api: Api,
    conn: Option<TlsStream<tokio::net::TcpStream>>,
    /// Bytes read past the last response.
    buf: Vec<u8>,
    connects: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("api", &self.api)
            .field("connects", &self.connects)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Sends one request; `body` is sent as JSON.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, LinkError> {
        let reused = self.conn.is_some();
        match self.exchange(method, path, body).await {
            Err(_) if reused && method == "GET" => self.exchange(method, path, body).await,
            r => r,
        }
    }

    /// Connections opened so far.
    pub fn connects(&self) -> u64 {
        self.connects
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Reply, LinkError> {
        if self.conn.is_none() {
            self.conn = Some(self.api.connect().await?);
            self.connects += 1;
            self.buf.clear();
        }
        let result = self.exchange_on(method, path, body).await;
        if !matches!(result, Ok((_, true))) {
            // Failed, or the server closes it: the next request opens another.
            self.conn = None;
        }
        result.map(|(reply, _)| reply)
    }

    /// One request and its response on the open connection; whether it stays open.
    async fn exchange_on(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(Reply, bool), LinkError> {
        let Session { api, conn, buf, .. } = self;
        let Some(tls) = conn.as_mut() else {
            return Err(LinkError::Transport("not connected".into()));
        };
        let io = |e: std::io::Error| LinkError::Transport(format!("{}: {e}", api.addr));
        let body = body.unwrap_or_default();
        tls.write_all(api.head(method, path, body.len(), true).as_bytes())
            .await
            .map_err(io)?;
        tls.write_all(body).await.map_err(io)?;
        tls.flush().await.map_err(io)?;
        let mut piece = [0u8; 16 << 10];
        loop {
            if let Some((len, keep)) = complete(buf)? {
                let reply = parse(&buf[..len]);
                buf.drain(..len);
                return reply.map(|r| (r, keep));
            }
            let n = tls.read(&mut piece).await.map_err(io)?;
            if n == 0 {
                // Closed: a response without a length ends here.
                if buf.is_empty() {
                    return Err(LinkError::Transport(format!(
                        "{}: connection closed before a response",
                        api.addr
                    )));
                }
                let reply = parse(buf);
                buf.clear();
                return reply.map(|r| (r, false));
            }
            if buf.len() + n > MAX_RESPONSE {
                return Err(LinkError::Transport(format!(
                    "{}: response larger than {MAX_RESPONSE} bytes",
                    api.addr
                )));
            }
            buf.extend_from_slice(&piece[..n]);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `buf` starts with a whole response: its length, and whether the connection stays
/// open after it. `None` while more is needed (a response without a length or chunks ends
/// when the connection does).
fn complete(buf: &[u8]) -> Result<Option<(usize, bool)>, LinkError> {
    let bad = |why: &str| LinkError::Transport(format!("unreadable API response: {why}"));
    let Some(split) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > 64 << 10 {
            Err(bad("header larger than 64 KiB"))
        } else {
            Ok(None)
        };
    };
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let (mut length, mut chunked, mut keep) = (None, false, true);
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim() {
            "content-length" => {
                length = Some(value.trim().parse::<usize>().map_err(|_| bad("length"))?);
            }
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => keep = !value.contains("close"),
            _ => {}
        }
    }
    let start = split + 4;
    if chunked {
        let mut at = start;
        loop {
            let Some(end) = find(&buf[at..], b"\r\n") else {
                return Ok(None);
            };
            let text = String::from_utf8_lossy(&buf[at..at + end]);
            let size = usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("chunk size"))?;
            at += end + 2;
            if size == 0 {
                // Trailers, if any, end with an empty line.
                return Ok(find(&buf[at - 2..], b"\r\n\r\n").map(|e| (at - 2 + e + 4, keep)));
            }
            match size.checked_add(2).and_then(|s| at.checked_add(s)) {
                Some(next) if next <= buf.len() => at = next,
                Some(_) => return Ok(None),
                None => return Err(bad("chunk size")),
            }
        }
    }
    match length {
        Some(n) if n > MAX_RESPONSE => Err(bad("too large")),
        Some(n) => Ok((buf.len() >= start + n).then_some((start + n, keep))),
        None if head.starts_with("http/1.1 204") || head.starts_with("http/1.1 304") => {
            Ok(Some((start, keep)))
        }
        None => Ok(None),
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

    /// A kept-open connection reads exactly one response at a time: by length, by chunks
    /// (trailers too), or up to the end when it has neither; `Connection: close` ends it.
    #[test]
    fn a_response_is_complete_at_its_own_end() {
        let ok = |b: &[u8]| complete(b).unwrap();
        let one = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(ok(one), Some((one.len(), true)));
        let mut two = one.to_vec();
        two.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(ok(&two), Some((one.len(), true)), "the next one is left");
        for cut in 0..one.len() {
            assert_eq!(ok(&one[..cut]), None, "{cut} bytes are not a response");
        }
        let chunks = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(ok(chunks), Some((chunks.len(), true)));
        for cut in 0..chunks.len() {
            assert_eq!(ok(&chunks[..cut]), None, "{cut} bytes");
        }
        let trailer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx: y\r\n\r\n";
        assert_eq!(ok(trailer), Some((trailer.len(), true)));
        let close = b"HTTP/1.1 401 Unauthorized\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(ok(close), Some((close.len(), false)));
        assert_eq!(ok(b"HTTP/1.1 200 OK\r\n\r\nto the end"), None);
        assert!(complete(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(complete(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").is_err());
        let huge = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", usize::MAX);
        assert!(complete(huge.as_bytes()).is_err());
        let chunk_huge = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n",
            usize::MAX - 1
        );
        assert!(complete(chunk_huge.as_bytes()).is_err());
        assert!(complete(&vec![b'a'; 70 << 10]).is_err(), "endless header");
    }
}
