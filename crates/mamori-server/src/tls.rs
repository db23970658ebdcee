//! The TLS listener: one port for gRPC (agents, HTTP/2) and the REST API (HTTP/1.1, or
//! HTTP/2 for a client that offers nothing else, chosen by ALPN, so that any HTTP client can
//! use the API).
//!
//! Client certificates are asked for but optional at the TLS layer: enrollment has none
//! yet; ingest checks for one signed by the server's CA itself (see `crate::service`).
//! A handshake that does not finish within ten seconds is dropped, and handshakes run
//! concurrently, so a slow or silent client holds up no one.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use crate::ServerError;

/// Time allowed for a TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The server's TLS settings: its certificate chain and key (PEM) and the CA whose client
/// certificates it accepts.
pub fn config(
    chain_pem: &[u8],
    key_pem: &[u8],
    ca_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, ServerError> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| ServerError::Transport(format!("{what}: {e}"));
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("server certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| bad("server key", &e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(c.map_err(|e| bad("CA certificate", &e))?)
            .map_err(|e| bad("CA certificate", &e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad("client verifier", &e))?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad("server certificate", &e))?;
    // HTTP/1.1 first: rustls picks the first of these the client offers, so a client that
    // speaks both (curl, browsers, log shippers posting to the REST API) gets HTTP/1.1,
    // paced by TCP alone, rather than HTTP/2 with the small flow-control windows that
    // bound what agents send ahead (`ingest::STREAM_WINDOW`: 64 KiB per round trip made a
    // 3 MiB upload over a 50 ms link 2.8 s instead of 0.4 s). gRPC clients offer only h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts connections on `listener` and hands out those whose handshake succeeded.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> (
    tokio_stream::wrappers::ReceiverStream<Result<TlsStream<ReadAhead>, std::io::Error>>,
    tokio::task::JoinHandle<()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, go on.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE, acceptor.accept(ReadAhead::new(tcp))).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), task)
}

/// Bytes read from the socket at once, at most.
const READ_AHEAD: usize = 64 << 10;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(READ_AHEAD));
}

/// A TCP connection read ahead through a buffer that exists only while it holds data.
///
/// rustls asks for at most 4 KiB per read (resizing its own buffer around each), so a batch
/// of 30 KiB cost eight `recvfrom` calls. Here one call takes whatever the socket holds, up
/// to 64 KiB (through a scratch buffer per thread), and rustls's reads are served from
/// memory. The connection's buffer is exactly what was read and is freed once drained: an
/// idle connection (most of 10,000 agents, most of the time) holds none.
pub struct ReadAhead {
    tcp: TcpStream,
    buf: Vec<u8>,
    at: usize,
}

impl ReadAhead {
    fn new(tcp: TcpStream) -> ReadAhead {
        ReadAhead {
            tcp,
            buf: Vec::new(),
            at: 0,
        }
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.at < this.buf.len() {
                let n = (this.buf.len() - this.at).min(out.remaining());
                out.put_slice(&this.buf[this.at..this.at + n]);
                this.at += n;
                if this.at == this.buf.len() {
                    (this.buf, this.at) = (Vec::new(), 0);
                }
                return Poll::Ready(Ok(()));
            }
            // Read into the thread's scratch space, keep an exact copy: a connection holds
            // only what it was sent (a 64 KiB buffer per handshake left the heap fragmented).
            // Through `poll_read`, which takes a short read to mean the socket is drained
            // (edge-triggered readiness): the next read waits for the next wake-up instead of
            // asking the kernel once more only to hear EAGAIN (a system call per batch).
            // What fits in the caller's buffer (a batch of a few events, most of the time)
            // goes there at once, with no copy of its own.
            let read = SCRATCH.with_borrow_mut(|scratch| {
                scratch.clear();
                let mut into = ReadBuf::uninit(scratch.spare_capacity_mut());
                ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut into))?;
                let n = into.filled().len();
                if n <= out.remaining() {
                    out.put_slice(into.filled());
                } else {
                    this.buf.extend_from_slice(into.filled());
                }
                Poll::Ready(Ok::<_, io::Error>(n))
            });
            match ready!(read)? {
                // End of stream: nothing read.
                0 => return Poll::Ready(Ok(())),
                _ if this.buf.is_empty() => return Poll::Ready(Ok(())),
                _ => this.at = 0,
            }
        }
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for ReadAhead {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tcp.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Everything written arrives, in order, through reads of any size (rustls's are 4 KiB);
    /// the buffer is gone whenever it has been drained; writes pass straight through.
    #[tokio::test]
    async fn read_ahead_delivers_every_byte_and_holds_nothing_when_drained() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let to_send = sent.clone();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            // Uneven pieces with pauses, so that reads find partial data.
            for (i, piece) in to_send.chunks(9_973).enumerate() {
                c.write_all(piece).await.unwrap();
                if i % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            let mut echo = [0u8; 5];
            c.read_exact(&mut echo).await.unwrap();
            echo
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut r = ReadAhead::new(tcp);
        let mut got = Vec::new();
        let mut piece = vec![0u8; 4096];
        while got.len() < sent.len() {
            let n = r.read(&mut piece).await.unwrap();
            assert!(n > 0, "early end after {} bytes", got.len());
            got.extend_from_slice(&piece[..n]);
            assert!(
                r.at < r.buf.len() || r.buf.capacity() == 0,
                "drained but held"
            );
        }
        assert_eq!(got, sent);
        assert_eq!(r.buf.capacity(), 0);
        r.write_all(b"done!").await.unwrap();
        assert_eq!(&client.await.unwrap(), b"done!");
        // The peer closed: end of stream.
        assert_eq!(r.read(&mut piece).await.unwrap(), 0);
    }
}
