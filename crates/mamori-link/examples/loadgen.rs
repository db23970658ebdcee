//! Load generator: many simulated agents over real mutual TLS against a running server.
//!
//! Each simulated agent has its own key and certificate (enrolled with one multi-use token,
//! cached in `--cache` so reruns skip enrollment), its own ingest stream, and sends one
//! batch of synthetic sensor events every `--interval-ms`. Among the events, `--markers`
//! per second are a base64-to-shell command line with a unique process: each becomes an
//! alert, and a poller reading `GET /api/v1/alerts` measures the time from the event's
//! creation to the alert being visible in the API (every `--poll-ms`, 50 by default). Each
//! event is created at a moment spread over the interval before its batch is sent, as a
//! real agent's events wait for their batch (its linger), so that wait is part of every
//! latency measured. Like real agents, each also sends a heartbeat (its health report)
//! every `--heartbeat-s` seconds (60; 0: never), spread over the interval. `--network P`
//! makes P% of the other events connections to an external address (0 by default), which
//! detection also keeps as facts about the process tree; `--files P` makes the next P% file
//! writes (creations and changes under the worker's directories, as the sensor reports
//! them), so that a mix like a real host's can be offered.
//!
//! ```sh
//! loadgen --server https://127.0.0.1:7443 --fingerprint sha256:… --token ENROLL \
//!         --api-token API --agents 1000 --rate 100000 --seconds 30 --server-pid PID
//! ```
//!
//! `scripts/bench-load.sh` starts a server and runs this at several agent counts.
//!
//! `loadgen --dump 20000 --agents 1000 --rate 50000 > load.ecs.jsonl` prints the events it
//! would send instead (markers in the same proportion), one per line, for `scanbench` and
//! `jsonbench`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mamori_link::{HostFacts, Identity};
use mamori_wire::Batch;
use mamori_wire::ingest::ingest_client::IngestClient;

struct Args {
    server: String,
    fingerprint: String,
    token: String,
    api_token: String,
    agents: usize,
    rate: u64,
    seconds: u64,
    markers: u64,
    network: u64,
    files: u64,
    heartbeat_s: u64,
    interval_ms: u64,
    poll_ms: u64,
    cache: PathBuf,
    server_pid: Option<u32>,
    dump: Option<u64>,
}

fn args() -> Args {
    let mut a = Args {
        server: String::new(),
        fingerprint: String::new(),
        token: String::new(),
        api_token: String::new(),
        agents: 100,
        rate: 10_000,
        seconds: 20,
        markers: 10,
        network: 0,
        files: 0,
        heartbeat_s: 60,
        interval_ms: 1000,
        poll_ms: 50,
        cache: PathBuf::from("/tmp/mamori-loadgen"),
        server_pid: None,
        dump: None,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let (k, val) = (pair[0].as_str(), pair.get(1).cloned().unwrap_or_default());
        match k {
            "--server" => a.server = val,
            "--fingerprint" => a.fingerprint = val,
            "--token" => a.token = val,
            "--api-token" => a.api_token = val,
            "--agents" => a.agents = val.parse().expect("--agents N"),
            "--rate" => a.rate = val.parse().expect("--rate events/s"),
            "--seconds" => a.seconds = val.parse().expect("--seconds S"),
            "--markers" => a.markers = val.parse().expect("--markers per second"),
            "--network" => a.network = val.parse().expect("--network PERCENT"),
            "--heartbeat-s" => a.heartbeat_s = val.parse().expect("--heartbeat-s SECONDS"),
            "--files" => a.files = val.parse().expect("--files PERCENT"),
            "--interval-ms" => a.interval_ms = val.parse().expect("--interval-ms MS"),
            "--poll-ms" => a.poll_ms = val.parse().expect("--poll-ms MS"),
            "--cache" => a.cache = PathBuf::from(val),
            "--server-pid" => a.server_pid = Some(val.parse().expect("--server-pid PID")),
            "--dump" => a.dump = Some(val.parse().expect("--dump EVENTS")),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        a.dump.is_some() || (!a.server.is_empty() && !a.fingerprint.is_empty()),
        "--server and --fingerprint"
    );
    a
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// How long before its batch is sent event `n` was created, as an agent's events wait for
/// their batch: spread evenly (and deterministically) over the `interval_ns` since the last.
fn waited_ns(n: u64, interval_ns: u64) -> u64 {
    // splitmix64: consecutive events get unrelated shares of the interval.
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) % interval_ns.max(1)
}

/// Which kinds of events are offered, in percent of the non-marker events.
#[derive(Debug, Clone, Copy)]
struct Mix {
    network: u64,
    files: u64,
}

/// A process start created at `ns`; a marker is an encoded command piped to a shell, with a
/// process entity that carries its creation time. `mix` turns some of the others into
/// connections and file writes.
fn event(agent: usize, n: u64, marker: bool, mix: Mix, ns: u128) -> Vec<u8> {
    if !marker && n % 100 < mix.network {
        return connection(agent, n, ns);
    }
    if !marker && n % 100 < mix.network + mix.files {
        return file(agent, n, ns);
    }
    let (exe, cmd, entity) = if marker {
        (
            "/usr/bin/sh",
            "sh -c echo bG9hZGdlbgo= | base64 -d | sh".to_string(),
            format!("loadgen:{ns}:{agent}:{n}"),
        )
    } else {
        (
            "/usr/bin/python3",
            format!("python3 /opt/app/worker.py --queue default --job {n}"),
            format!("boot:{agent}:{n}"),
        )
    };
    format!(
        r#"{{"@timestamp":"{}","event":{{"kind":"event","category":["process"],"type":["start"],"action":"exec","module":"mamori","dataset":"mamori.process"}},"host":{{"name":"sim-{agent:05}","os":{{"type":"linux","kernel":"6.18.0"}}}},"process":{{"pid":{},"entity_id":"{entity}","executable":"{exe}","name":"{}","command_line":"{cmd}","parent":{{"pid":1,"executable":"/usr/bin/bash","name":"bash","command_line":"bash"}}}},"user":{{"id":"1000","name":"app"}}}}"#,
        rfc3339(ns),
        1000 + n % 60_000,
        exe.rsplit('/').next().unwrap_or(exe),
    )
    .into_bytes()
}

/// A TCP connection from a worker process to an address outside every internal network
/// (TEST-NET-3, 203.0.113.0/24), as the sensor reports it.
fn connection(agent: usize, n: u64, ns: u128) -> Vec<u8> {
    format!(
        r#"{{"@timestamp":"{}","event":{{"kind":"event","category":["network"],"type":["start","connection"],"action":"connect","module":"mamori","dataset":"mamori.network"}},"host":{{"name":"sim-{agent:05}","os":{{"type":"linux","kernel":"6.18.0"}}}},"process":{{"pid":{},"entity_id":"boot:{agent}:{n}","executable":"/usr/bin/python3","name":"python3","parent":{{"pid":1,"entity_id":"boot:{agent}:1"}}}},"source":{{"ip":"10.0.0.5","port":{}}},"destination":{{"ip":"203.0.113.{}","port":443}},"network":{{"transport":"tcp","type":"ipv4","direction":"egress"}},"user":{{"id":"1000","name":"app"}}}}"#,
        rfc3339(ns),
        1000 + n % 60_000,
        32768 + n % 28_000,
        n % 250 + 1,
    )
    .into_bytes()
}

/// A file the worker process writes (a new log or cache file, or a change to one), as the
/// sensor reports it.
fn file(agent: usize, n: u64, ns: u128) -> Vec<u8> {
    let (action, kind, dir) = match n % 3 {
        0 => ("create", "creation", "/var/lib/app/cache"),
        _ => ("write", "change", "/var/log/app"),
    };
    format!(
        r#"{{"@timestamp":"{}","event":{{"kind":"event","category":["file"],"type":["{kind}"],"action":"{action}","module":"mamori","dataset":"mamori.file"}},"host":{{"name":"sim-{agent:05}","os":{{"type":"linux","kernel":"6.18.0"}}}},"process":{{"pid":{},"entity_id":"boot:{agent}:{n}","executable":"/usr/bin/python3","name":"python3","command_line":"python3 /opt/app/worker.py --queue default","parent":{{"pid":1,"executable":"/usr/bin/bash","name":"bash","command_line":"bash"}}}},"file":{{"path":"{dir}/job-{}.json","name":"job-{}.json","directory":"{dir}"}},"user":{{"id":"1000","name":"app"}},"group":{{"id":"1000","name":"app"}}}}"#,
        rfc3339(ns),
        1000 + n % 60_000,
        n % 10_000,
        n % 10_000,
    )
    .into_bytes()
}

/// Prints `n` events as the agents would send them, one per line.
fn dump(a: &Args, n: u64) {
    use std::io::Write;
    let every = (a.rate / a.markers.max(1)).max(1);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for i in 0..n {
        let e = event(
            i as usize % a.agents.max(1),
            i,
            a.markers > 0 && i % every == 0,
            Mix {
                network: a.network,
                files: a.files,
            },
            now_ns(),
        );
        out.write_all(&e)
            .and_then(|()| out.write_all(b"\n"))
            .expect("writing to stdout");
    }
}

/// A heartbeat as the agent sends it (`mamori agent`'s health report).
fn heartbeat(agent: usize, interval_s: u64, events: u64) -> Vec<u8> {
    format!(
        r#"{{"@timestamp":"{}","event":{{"kind":"metric","category":["host"],"type":["info"],"action":"heartbeat","module":"mamori","dataset":"mamori.health"}},"host":{{"name":"sim-{agent:05}","os":{{"type":"linux","kernel":"6.18.0"}},"ip":["10.0.{}.{}"]}},"agent":{{"version":"0.1.0"}},"mamori":{{"health":{{"uptime_s":60,"collectors":{{"process":"bpf","network":"bpf","dns":"bpf","login":"audit","file":"bpf","privilege":"bpf","ptrace":"bpf","module":"bpf"}},"missing":[],"events":{events},"dropped":{{"ring_buffer_full":0}},"spool":{{"depth_records":0,"depth_bytes":0,"evicted_records":0,"corrupted_records":0}},"cpu_seconds":1.5,"rss_kib":40000}},"heartbeat_interval_s":{interval_s}}}}}"#,
        rfc3339(now_ns()),
        agent / 250 % 256,
        agent % 250 + 1,
    )
    .into_bytes()
}

/// RFC 3339 UTC with microseconds.
fn rfc3339(ns: u128) -> String {
    chrono::DateTime::from_timestamp_micros((ns / 1000) as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn proc_stat(pid: u32) -> Option<(u64, u64, u64)> {
    // (utime + stime ticks, RSS kB, peak RSS kB)
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some((ticks, kb("VmRSS:"), kb("VmHWM:")))
}

async fn identities(a: &Args, ca_pem: &str) -> Vec<Identity> {
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..a.agents {
        let dir = a.cache.join(format!("{i:05}"));
        let (server, token, fp, sem) = (
            a.server.clone(),
            a.token.clone(),
            a.fingerprint.clone(),
            sem.clone(),
        );
        let ca = ca_pem.to_string();
        set.spawn(async move {
            if let Ok(Some(id)) = Identity::load(&dir)
                && id.server == server
                && id.ca_pem == ca
            {
                return (i, id);
            }
            let _permit = sem.acquire().await.expect("semaphore");
            let facts = HostFacts {
                hostname: format!("sim-{i:05}"),
                os: "linux".into(),
                kernel: "6.18.0".into(),
                agent_version: "loadgen".into(),
            };
            let id = mamori_link::enroll(&server, &token, &fp, &facts)
                .await
                .expect("enrolling a simulated agent");
            id.save(&dir).expect("caching the identity");
            (i, id)
        });
    }
    let mut out: Vec<Option<Identity>> = vec![None; a.agents];
    while let Some(r) = set.join_next().await {
        let (i, id) = r.expect("enrollment task");
        out[i] = Some(id);
    }
    out.into_iter().map(|i| i.expect("every agent")).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    if let Some(n) = a.dump {
        dump(&a, n);
        return;
    }
    let ca_pem = mamori_link::pinned_ca(&a.server, &a.fingerprint)
        .await
        .expect("the server's CA");
    let started = Instant::now();
    let ids = identities(&a, &ca_pem).await;
    println!(
        "{} agents enrolled or loaded in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    let base = a.server_pid.and_then(proc_stat);

    // Connect every agent: a channel and an ingest stream each.
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let acked = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for (i, id) in ids.into_iter().enumerate() {
        let (sem, acked) = (sem.clone(), acked.clone());
        set.spawn(async move {
            let _permit = sem.acquire().await.expect("semaphore");
            let ch =
                mamori_link::channel(&id.server, &id.ca_pem, Some((&id.cert_pem, &id.key_pem)))
                    .await
                    .expect("connecting a simulated agent");
            let mut client = IngestClient::new(ch);
            // The real agent's default window, announced as it does.
            let window = mamori_link::ShipOptions::default().window;
            let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(window);
            let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            request
                .metadata_mut()
                .insert(mamori_wire::WINDOW_HEADER, window.into());
            let mut acks = client
                .stream(request)
                .await
                .expect("opening an ingest stream")
                .into_inner();
            tokio::spawn(async move {
                let mut last = 0;
                while let Ok(Some(ack)) = acks.message().await {
                    acked.fetch_add(ack.durable_through.saturating_sub(last), Ordering::Relaxed);
                    last = ack.durable_through;
                }
            });
            (i, tx, client)
        });
    }
    let mut senders = Vec::with_capacity(a.agents);
    while let Some(r) = set.join_next().await {
        senders.push(r.expect("connection task"));
    }
    senders.sort_by_key(|s| s.0);
    println!(
        "{} agents connected over mutual TLS in {:.1} s",
        senders.len(),
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let connected = a.server_pid.and_then(proc_stat);

    // Load.
    let per_batch = ((a.rate * a.interval_ms) / 1000 / a.agents as u64).max(1);
    let marker_every = a.rate.checked_div(a.markers).map_or(u64::MAX, |e| e.max(1));
    let counter = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let markers_sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let agents = a.agents;
    let heartbeat_every = Duration::from_secs(a.heartbeat_s);
    let mix = Mix {
        network: a.network,
        files: a.files,
    };
    for (i, tx, client) in senders {
        let (counter, sent, stop, markers_sent) = (
            counter.clone(),
            sent.clone(),
            stop.clone(),
            markers_sent.clone(),
        );
        let interval = Duration::from_millis(a.interval_ms);
        let interval_ns = a.interval_ms * 1_000_000;
        tasks.push(tokio::spawn(async move {
            let _keep_open = client;
            // Spread the agents over the interval.
            tokio::time::sleep(interval * (i as u32 % 1000) / 1000).await;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 1u64;
            // Heartbeats spread over their interval too.
            let mut next_heartbeat = (!heartbeat_every.is_zero())
                .then(|| Instant::now() + heartbeat_every * (i % agents) as u32 / agents as u32);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let sent_at = now_ns();
                let mut markers = 0;
                let mut events: Vec<mamori_wire::Bytes> = (0..per_batch)
                    .map(|_| {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let marker = n % marker_every == marker_every - 1;
                        markers += u64::from(marker);
                        let created = sent_at - u128::from(waited_ns(n, interval_ns));
                        event(i, n, marker, mix, created).into()
                    })
                    .collect();
                if let Some(at) = next_heartbeat.as_mut()
                    && Instant::now() >= *at
                {
                    *at += heartbeat_every;
                    events.push(heartbeat(i, heartbeat_every.as_secs(), seq).into());
                }
                let k = events.len() as u64;
                if tx
                    .send(Batch {
                        first_seq: seq,
                        events,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                seq += k;
                sent.fetch_add(k, Ordering::Relaxed);
                // Counted once handed to the stream: a batch cut short at the end is not.
                markers_sent.fetch_add(markers, Ordering::Relaxed);
            }
        }));
    }

    // The poller: alerts of markers, as the API shows them. Like a console, it keeps its
    // connection open and asks only for the alerts after the last one it has.
    let api = mamori_link::api::Api::new(&a.server, &ca_pem, &a.api_token).expect("API client");
    let mut session = api.session();
    let mut last_id = 0i64;
    let mut seen: HashSet<String> = HashSet::new();
    let mut latencies: Vec<f64> = Vec::new();
    let t0 = Instant::now();
    let load_start = a.server_pid.and_then(proc_stat);
    let acked_start = acked.load(Ordering::Relaxed);
    const PAGE: usize = 1000;
    // One poll: the new alerts' markers timed; whether the page was full (more are waiting).
    let mut poll = async |seen: &mut HashSet<String>, lat: &mut Vec<f64>| -> bool {
        let path = format!("/api/v1/alerts?after={last_id}&limit={PAGE}");
        let Some(body) = session
            .request("GET", &path, None)
            .await
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.body)
        else {
            return false;
        };
        let now = now_ns();
        let Ok(serde_json::Value::Array(page)) = serde_json::from_str(&body) else {
            return false;
        };
        for al in &page {
            last_id = last_id.max(al["id"].as_i64().unwrap_or(0));
            let ent = al["process_entity"].as_str().unwrap_or("");
            if let Some(rest) = ent.strip_prefix("loadgen:")
                && seen.insert(ent.to_string())
                && let Some(ns) = rest.split(':').next().and_then(|x| x.parse::<u128>().ok())
            {
                lat.push((now.saturating_sub(ns)) as f64 / 1e6);
            }
        }
        page.len() == PAGE
    };
    while t0.elapsed() < Duration::from_secs(a.seconds) {
        if !poll(&mut seen, &mut latencies).await {
            tokio::time::sleep(Duration::from_millis(a.poll_ms)).await;
        }
    }
    let seen_during_load = latencies.len();
    let load_secs = t0.elapsed().as_secs_f64();
    let acked_load = acked.load(Ordering::Relaxed) - acked_start;
    let load_end = a.server_pid.and_then(proc_stat);
    stop.store(true, Ordering::Relaxed);
    // Last alerts, polled at once: the agent tasks sleep until their next tick (up to an
    // interval: 5 s at 10,000 agents), and waiting for them first added that wait to the
    // latency of the markers sent last. The sweep lasts longer than the server may hold
    // an acknowledgement back (see below).
    let sweep = Instant::now();
    while sweep.elapsed() < Duration::from_secs(5) {
        if !poll(&mut seen, &mut latencies).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for t in tasks {
        t.abort();
    }
    // The server may hold an acknowledgement back for up to two seconds (it coalesces them,
    // `mamori_server::ingest::ACK_DELAY`): the events of the load are counted once the
    // last acknowledgements had the 5 s of the sweep above to come.
    let sent_load = sent.load(Ordering::Relaxed);
    let acked_all = acked.load(Ordering::Relaxed) - acked_start;
    latencies.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "sent {sent_load} events, acknowledged {acked_load} during {:.1} s of load and \
         {acked_all} in all: {:.0} events/s durable ({per_batch} per batch, one batch per \
         agent every {} ms)",
        load_secs,
        acked_all as f64 / load_secs,
        a.interval_ms
    );
    println!(
        "event to alert visible in the API: {} of {} markers seen ({} during the load); p50 \
         {:.0} ms, p99 {:.0} ms, max {:.0} ms (poll every {} ms)",
        latencies.len(),
        markers_sent.load(Ordering::Relaxed),
        seen_during_load,
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        a.poll_ms
    );
    if let (Some(b), Some(c), Some(s), Some(e)) = (base, connected, load_start, load_end) {
        let hz = 100.0;
        let cpu = (e.0 - s.0) as f64 / hz;
        println!(
            "server: RSS {} MiB before, {} MiB with {} agents connected ({:.1} KiB per agent), \
             peak {} MiB; CPU {:.1} s over {:.1} s = {:.0} events per CPU-second",
            b.1 / 1024,
            c.1 / 1024,
            a.agents,
            (c.1.saturating_sub(b.1)) as f64 / a.agents as f64,
            e.2 / 1024,
            cpu,
            load_secs,
            acked_all as f64 / cpu.max(0.01)
        );
    }
}
