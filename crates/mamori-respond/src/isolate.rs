//! Network isolation with nftables.
//!
//! Isolation is one table of its own, `inet mamori_isolation`, loaded in one nftables
//! transaction: base chains on the input, output and forward hooks with policy `drop`, which
//! accept only loopback, the Mamori server (its address and port), the administrator's
//! allowlist, and IPv6 neighbour discovery. A drop in any table is final, so no other table
//! can let traffic around it; established connections to anything else (a reverse shell)
//! are cut as well, because nothing accepts them by state. Nothing else on the host is
//! touched, so release (deleting the table) restores exactly what was there before.
//!
//! The state is kept in a file, so the agent loads the table again when it starts (after a
//! reboot or a restart); the ruleset itself is kept next to it (`isolation.nft`) for a boot
//! unit that loads it before the network comes up. [`Isolation::check`] compares the kernel's table with what was
//! loaded; the agent calls it every second, reloads the table when it was changed or deleted
//! (only root can), and reports the tampering.

use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use mamori_wire::command::Allow;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::RespondError;

/// The table isolation owns.
pub const TABLE: &str = "mamori_isolation";

/// What an isolation lets through, and who asked for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsolationState {
    /// The server's addresses (resolved before isolating; DNS may be cut afterwards).
    pub server: Vec<SocketAddr>,
    /// The allowlist.
    pub allow: Vec<Allow>,
    /// Unix milliseconds.
    pub since_ms: i64,
    /// Who asked.
    pub by: String,
    /// Why.
    pub reason: String,
    /// The command that isolated.
    pub command: String,
}

/// The host's isolation: the state file and the table in the kernel.
#[derive(Debug)]
pub struct Isolation {
    state_path: PathBuf,
    state: Option<IsolationState>,
    /// `nft list table` right after loading, to notice changes.
    loaded: Option<String>,
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, RespondError> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            RespondError::Unavailable(format!(
                "running nft: {e} (isolation needs nftables: apt-get install nftables)"
            ))
        })?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes())
            .map_err(|e| RespondError::Failed(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| RespondError::Failed(format!("running nft: {e}")))?;
    if !out.status.success() {
        return Err(RespondError::Failed(format!(
            "nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// nftables address match for `net` on `side` (`saddr`/`daddr`), rebuilt from the parsed
/// address so that nothing from the command reaches the script verbatim.
fn addr_match(net: &str, side: &str) -> Result<String, RespondError> {
    let bad = || RespondError::Refused(format!("allowlist entry {net:?} is not an address"));
    let (ip, prefix) = match net.split_once('/') {
        Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| bad())?)),
        None => (net, None),
    };
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let (family, max) = if ip.is_ipv4() {
        ("ip", 32)
    } else {
        ("ip6", 128)
    };
    Ok(match prefix {
        Some(p) if p > max => return Err(bad()),
        Some(p) => format!("{family} {side} {ip}/{p}"),
        None => format!("{family} {side} {ip}"),
    })
}

/// The nftables script that (re)creates the isolation table in one transaction.
pub fn ruleset(server: &[SocketAddr], allow: &[Allow]) -> Result<String, RespondError> {
    let mut input = vec!["iif \"lo\" accept".to_string()];
    let mut output = vec!["oif \"lo\" accept".to_string()];
    for s in server {
        let ip = s.ip().to_string();
        input.push(format!(
            "{} tcp sport {} accept",
            addr_match(&ip, "saddr")?,
            s.port()
        ));
        output.push(format!(
            "{} tcp dport {} accept",
            addr_match(&ip, "daddr")?,
            s.port()
        ));
    }
    for a in allow {
        let (src, dst) = (addr_match(&a.net, "saddr")?, addr_match(&a.net, "daddr")?);
        match a.port {
            Some(p) => {
                for proto in ["tcp", "udp"] {
                    input.push(format!("{src} {proto} sport {p} accept"));
                    output.push(format!("{dst} {proto} dport {p} accept"));
                }
            }
            None => {
                input.push(format!("{src} accept"));
                output.push(format!("{dst} accept"));
            }
        }
    }
    // IPv6 needs neighbour discovery to reach even the allowed addresses.
    let nd = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, \
              nd-router-advert } accept";
    input.push(nd.into());
    output.push(nd.into());
    let chain = |name: &str, hook: &str, rules: &[String]| {
        let mut c =
            format!("  chain {name} {{\n    type filter hook {hook} priority -100; policy drop;\n");
        for r in rules {
            c.push_str("    ");
            c.push_str(r);
            c.push('\n');
        }
        c.push_str("  }\n");
        c
    };
    Ok(format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n{}{}{}}}\n",
        chain("input", "input", &input),
        chain("output", "output", &output),
        chain("forward", "forward", &[]),
    ))
}

/// Whether a UDP datagram to `target` is refused by the local firewall (`EPERM` from the
/// output hook): proof that isolation is in force on the path the server uses.
fn probe(target: SocketAddr) -> (&'static str, String) {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return ("inconclusive", format!("socket: {e}")),
    };
    match sock.send_to(b"mamori isolation probe", target) {
        Err(e) if e.raw_os_error() == Some(1) => ("blocked", format!("{target}: {e}")),
        Err(e) => ("inconclusive", format!("{target}: {e}")),
        Ok(_) => ("sent", format!("a datagram to {target} left the host")),
    }
}

fn reachable(server: &[SocketAddr]) -> Result<SocketAddr, String> {
    let mut why = Vec::new();
    for s in server {
        match TcpStream::connect_timeout(s, Duration::from_secs(2)) {
            Ok(_) => return Ok(*s),
            Err(e) => why.push(format!("{s}: {e}")),
        }
    }
    Err(why.join("; "))
}

impl Isolation {
    /// The isolation whose state is kept in `dir` (`isolation.json`).
    pub fn open(dir: &Path) -> Result<Isolation, RespondError> {
        let state_path = dir.join("isolation.json");
        let state = match std::fs::read(&state_path) {
            Ok(b) => Some(
                serde_json::from_slice(&b)
                    .map_err(|e| RespondError::Failed(format!("{}: {e}", state_path.display())))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(RespondError::Failed(format!(
                    "{}: {e}",
                    state_path.display()
                )));
            }
        };
        Ok(Isolation {
            state_path,
            state,
            loaded: None,
        })
    }

    /// The current isolation, if the host is isolated.
    pub fn state(&self) -> Option<&IsolationState> {
        self.state.as_ref()
    }

    fn load(&mut self, st: &IsolationState) -> Result<(), RespondError> {
        nft(&["-f", "-"], Some(&ruleset(&st.server, &st.allow)?))?;
        self.loaded = Some(nft(&["list", "table", "inet", TABLE], None)?);
        Ok(())
    }

    /// Where the ruleset is kept for loading at boot, before the network is up
    /// (`packaging/systemd/mamori-isolation.service` runs `nft -f` on it).
    pub fn boot_ruleset_path(&self) -> PathBuf {
        self.state_path.with_file_name("isolation.nft")
    }

    fn save(&self) -> Result<(), RespondError> {
        let boot = self.boot_ruleset_path();
        let err =
            |p: &Path, e: std::io::Error| RespondError::Failed(format!("{}: {e}", p.display()));
        match &self.state {
            Some(st) => {
                let write = |path: &Path, body: &[u8]| {
                    let tmp = path.with_extension("tmp");
                    std::fs::write(&tmp, body)
                        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
                        .and_then(|_| std::fs::rename(&tmp, path))
                        .map_err(|e| err(path, e))
                };
                write(&boot, ruleset(&st.server, &st.allow)?.as_bytes())?;
                let body = serde_json::to_vec_pretty(st)
                    .map_err(|e| RespondError::Failed(e.to_string()))?;
                write(&self.state_path, &body)
            }
            None => {
                for p in [&self.state_path, &boot] {
                    match std::fs::remove_file(p) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(err(p, e));
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
        }
    }

    /// Loads the table again if the host was isolated when the agent stopped.
    pub fn resume(&mut self) -> Result<bool, RespondError> {
        let Some(st) = self.state.clone() else {
            return Ok(false);
        };
        self.load(&st)?;
        Ok(true)
    }

    /// Isolates the host. Refused when the server is not reachable now; rolled back when it
    /// is not reachable once the table is loaded. Returns what was verified.
    pub fn isolate(&mut self, st: IsolationState) -> Result<serde_json::Value, RespondError> {
        if st.server.is_empty() {
            return Err(RespondError::Refused(
                "the server's address is unknown: isolating would cut the agent off".into(),
            ));
        }
        // Check the allowlist before touching anything.
        ruleset(&st.server, &st.allow)?;
        let before = reachable(&st.server).map_err(|why| {
            RespondError::Refused(format!(
                "the server is not reachable now ({why}): isolating would cut the agent off"
            ))
        })?;
        let previous = self.state.replace(st.clone());
        if let Err(e) = self.load(&st) {
            self.state = previous;
            return Err(e);
        }
        if let Err(why) = reachable(&st.server) {
            // Never leave the host cut off from the server.
            let _ = nft(&["delete", "table", "inet", TABLE], None);
            self.loaded = None;
            self.state = previous;
            if let Some(p) = self.state.clone() {
                let _ = self.load(&p);
            }
            return Err(RespondError::Failed(format!(
                "the server was not reachable through isolation ({why}); rolled back"
            )));
        }
        self.save()?;
        // A blocked probe: a datagram to a port nothing allows, on the server's own path
        // (or a documentation address when the server is on this host).
        let target = st
            .server
            .iter()
            .find(|s| !s.ip().is_loopback())
            .map(|s| SocketAddr::new(s.ip(), 9))
            .unwrap_or_else(|| "192.0.2.1:9".parse().expect("literal"));
        let (probe, detail) = probe(target);
        if probe == "sent" {
            return Err(RespondError::Failed(format!(
                "isolation is loaded but did not hold: {detail}"
            )));
        }
        Ok(json!({
            "isolated": true,
            "server_reachable": before.to_string(),
            "table": format!("inet {TABLE}"),
            "probe": {"result": probe, "detail": detail},
            "allow": st.allow.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        }))
    }

    /// Ends isolation: deletes the table (nothing else was changed) and checks it is gone.
    pub fn release(&mut self) -> Result<serde_json::Value, RespondError> {
        let was = self.state.take();
        match nft(&["delete", "table", "inet", TABLE], None) {
            Ok(_) => {}
            Err(e) if e.to_string().contains("No such file") => {}
            Err(e) => {
                self.state = was;
                return Err(e);
            }
        }
        self.loaded = None;
        self.save()?;
        let still = nft(&["list", "tables"], None)?
            .lines()
            .any(|l| l.trim() == format!("table inet {TABLE}"));
        if still {
            return Err(RespondError::Failed(
                "the isolation table is still loaded".into(),
            ));
        }
        Ok(json!({
            "isolated": false,
            "was_isolated": was.is_some(),
            "since_ms": was.as_ref().map(|w| w.since_ms),
        }))
    }

    /// While isolated: whether the kernel's table is still the one loaded. When it is not
    /// (changed or deleted), loads it again and returns what was found.
    pub fn check(&mut self) -> Option<String> {
        let st = self.state.clone()?;
        let now = nft(&["list", "table", "inet", TABLE], None).ok();
        if now.is_some() && now == self.loaded {
            return None;
        }
        let found = match now {
            None => "the isolation table was deleted".to_string(),
            Some(_) => "the isolation table was changed".to_string(),
        };
        let outcome = match self.load(&st) {
            Ok(()) => "reloaded".to_string(),
            Err(e) => format!("reloading failed: {e}"),
        };
        Some(format!("{found}; {outcome}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_allows_only_loopback_server_and_allowlist() {
        let server = [
            "10.77.1.1:7443".parse().unwrap(),
            "[fd00::1]:7443".parse().unwrap(),
        ];
        let allow: Vec<Allow> = ["10.77.3.0/24", "10.77.4.4:53"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let r = ruleset(&server, &allow).unwrap();
        assert!(r.starts_with("table inet mamori_isolation\ndelete table inet mamori_isolation\n"));
        assert_eq!(r.matches("policy drop;").count(), 3, "{r}");
        for line in [
            "ip saddr 10.77.1.1 tcp sport 7443 accept",
            "ip daddr 10.77.1.1 tcp dport 7443 accept",
            "ip6 daddr fd00::1 tcp dport 7443 accept",
            "ip daddr 10.77.3.0/24 accept",
            "ip daddr 10.77.4.4 udp dport 53 accept",
            "ip saddr 10.77.4.4 tcp sport 53 accept",
        ] {
            assert!(r.contains(line), "missing {line:?} in\n{r}");
        }
        assert!(
            !r.contains("ct state"),
            "no generic accept of established flows"
        );
        let bad = [Allow {
            net: "evil; flush ruleset".into(),
            port: None,
        }];
        assert!(
            ruleset(&server, &bad).is_err(),
            "no injection into the script"
        );
        let bad = [Allow {
            net: "10.0.0.0/24 accept; flush ruleset".into(),
            port: None,
        }];
        assert!(
            ruleset(&server, &bad).is_err(),
            "no injection after the prefix"
        );
    }
}
