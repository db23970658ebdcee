//! `mamori demo attack`: a harmless, scripted imitation of an intrusion on this machine, so
//! that a new user sees the sensor, the server and detection work end to end. Every step is
//! printed before it runs; nothing leaves the machine, nothing outside a scratch directory is
//! changed, and nothing persists.

use std::io::{Read, Write};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{Context, Result};

fn step(what: &str, program: &str, args: &[&str]) -> Result<()> {
    eprintln!("  {what}: {program} {}", args.join(" "));
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {program}"))?;
    Ok(())
}

/// Runs the imitation; with `c2`, the beacon goes there instead of to a loopback listener.
pub fn attack(c2: Option<std::net::SocketAddr>) -> Result<ExitCode> {
    eprintln!(
        "mamori demo attack: a harmless imitation of an intrusion (watch `mamori server alerts`)"
    );
    eprintln!("1. discovery");
    step("who am I", "whoami", &[])?;
    step("ids and groups", "id", &[])?;
    step("kernel and machine", "uname", &["-a"])?;
    step("local accounts", "cat", &["/etc/passwd"])?;
    eprintln!("2. an encoded command (prints a harmless message)");
    step(
        "decode and run",
        "sh",
        &["-c", "echo ZWNobyBtYW1vcmktZGVtbwo= | base64 -d | sh"],
    )?;
    eprintln!("3. a persistence attempt, in a scratch directory");
    let scratch = std::env::temp_dir().join(format!("mamori-demo-{}", std::process::id()));
    let cron = scratch.join("etc/cron.d");
    std::fs::create_dir_all(&cron).context("creating the scratch directory")?;
    let job = cron.join("mamori-demo");
    eprintln!("  cron job: {}", job.display());
    step(
        "write a cron job",
        "sh",
        &[
            "-c",
            &format!(
                "echo '* * * * * root /tmp/.mamori-demo-beacon' > '{}'",
                job.display()
            ),
        ],
    )?;
    let (addr, server) = match c2 {
        Some(addr) => {
            eprintln!("4. a connection to the \"C2\" at {addr}");
            (addr, None)
        }
        None => {
            eprintln!("4. a connection to a \"C2\" on loopback");
            let c2 =
                std::net::TcpListener::bind("127.0.0.1:0").context("opening the loopback C2")?;
            let addr = c2.local_addr()?;
            let server = std::thread::spawn(move || {
                if let Ok((mut s, _)) = c2.accept() {
                    let mut buf = [0u8; 64];
                    let _ = s.read(&mut buf);
                    let _ = s.write_all(b"ok\n");
                }
            });
            (addr, Some(server))
        }
    };
    step(
        "beacon over /dev/tcp",
        "bash",
        &[
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{}/{}; echo beacon >&3; timeout 3 head -c 3 <&3",
                addr.ip(),
                addr.port()
            ),
        ],
    )?;
    if let Some(server) = server {
        let _ = server.join();
    }
    let _ = std::fs::remove_dir_all(&scratch);
    eprintln!(
        "done: alerts should appear within a second or two: mamori server alerts \
         (scratch directory removed)"
    );
    Ok(ExitCode::SUCCESS)
}
