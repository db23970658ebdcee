//! Workloads for the sensor benchmark (`scripts/bench-agent.sh`): `storm KIND N THREADS`
//! does N operations from THREADS threads and prints the rate.
//!
//! * `exec`: N short processes (`/bin/true`): fork, exec and exit events each.
//! * `files`: N files created, written, renamed and deleted in a scratch directory under
//!   /tmp: create, rename and delete events each.
//! * `connect`: N TCP connections over loopback to a local listener, accepted and closed:
//!   connect and accept events each.
//! * `udp`: N UDP sockets connected to a loopback port (no packet is sent): one connect
//!   event each, the cheapest way to drive the network hooks hard.

use std::time::Instant;

fn exec(n: usize) {
    for _ in 0..n {
        let status = std::process::Command::new("/bin/true")
            .status()
            .expect("spawn /bin/true");
        assert!(status.success());
    }
}

fn files(n: usize, thread: usize) {
    let dir = std::env::temp_dir().join(format!("mamori-storm-{}-{thread}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    for i in 0..n {
        let a = dir.join(format!("f{i}"));
        let b = dir.join(format!("g{i}"));
        std::fs::write(&a, b"payload").expect("write");
        std::fs::rename(&a, &b).expect("rename");
        std::fs::remove_file(&b).expect("delete");
    }
    let _ = std::fs::remove_dir(&dir);
}

fn connect(n: usize, port: u16) {
    for _ in 0..n {
        // The client closes first and keeps the TIME_WAIT, which loopback reuses at once
        // (net.ipv4.tcp_tw_reuse = 2, the default).
        drop(std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    }
}

fn udp(n: usize) {
    for _ in 0..n {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp socket");
        s.connect("127.0.0.1:9").expect("udp connect");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = args.get(1).map(String::as_str).unwrap_or("exec");
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let threads: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(2);
    // std listens with a backlog of 128, which overflows at these rates (a dropped SYN costs
    // a one-second retransmit): listen through socket2 with a deep backlog.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    sock.listen(4096).expect("listen");
    let listener: std::net::TcpListener = sock.into();
    let port = listener.local_addr().expect("address").port();
    if kind == "connect" {
        std::thread::spawn(move || {
            for s in listener.incoming() {
                drop(s);
            }
        });
    }
    let per = n / threads;
    let t = Instant::now();
    std::thread::scope(|s| {
        for thread in 0..threads {
            s.spawn(move || match kind {
                "exec" => exec(per),
                "files" => files(per, thread),
                "connect" => connect(per, port),
                "udp" => udp(per),
                other => panic!("unknown storm {other:?}: exec, files, connect or udp"),
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} {kind} in {secs:.2}s = {:.0}/s",
        per * threads,
        (per * threads) as f64 / secs
    );
}
