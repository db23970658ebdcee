//! Server configuration: a TOML file (optional), then `MAMORI_*` environment variables, then
//! command-line flags, each overriding the one before. Defaults are safe: listen on
//! localhost only, TLS always (there is no plain-text mode).
//!
//! ```toml
//! listen = "127.0.0.1:7443"      # MAMORI_LISTEN
//! data_dir = "/var/lib/mamori"   # MAMORI_DATA_DIR
//! names = ["edr.example.com"]    # extra names in the server certificate (MAMORI_NAMES, comma-separated)
//! store_quota_gib = 100         # events kept at most (oldest deleted first)
//! retention_days = 45           # events kept at least this long (if the quota allows)
//! flush_seconds = 2             # how soon stored events are searchable with SQL
//! isolation_allow = ["10.0.0.53:53", "10.0.9.0/24:22"]   # reachable by every isolated host
//!                                # besides the server (MAMORI_ISOLATION_ALLOW, comma-separated)
//! soc_policy = "/etc/mamori/soc-policy.toml"   # severity and automatic containment
//!                                # (default: config/soc-policy.toml, compiled in)
//! detection_threads = 4          # threads live detection scans with (MAMORI_DETECTION_THREADS;
//!                                # default: one per core, at most 8)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ServerError;

/// The server's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Address and port of the TLS listener.
    pub listen: SocketAddr,
    /// Where the server keeps its state, keys and events.
    pub data_dir: PathBuf,
    /// Extra DNS names or addresses for the server certificate (the listen address,
    /// `localhost` and `127.0.0.1` are always included).
    pub names: Vec<String>,
    /// Size the event store may reach (the oldest files are deleted first).
    pub store_quota_bytes: u64,
    /// Days events are kept.
    pub retention_days: u32,
    /// Seconds between moves from the ingest log into the columnar store.
    pub flush_seconds: u64,
    /// What every isolated host may still reach besides the server (DNS servers, jump hosts),
    /// added to each isolate command's own allowlist.
    pub isolation_allow: Vec<mamori_wire::command::Allow>,
    /// The SOC policy file (severity, containment); the built-in default when unset.
    pub soc_policy: Option<PathBuf>,
    /// Threads live detection scans with; one per core (at most 8) when unset.
    pub detection_threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    names: Option<Vec<String>>,
    store_quota_gib: Option<u64>,
    retention_days: Option<u32>,
    flush_seconds: Option<u64>,
    isolation_allow: Option<Vec<String>>,
    soc_policy: Option<PathBuf>,
    detection_threads: Option<u64>,
}

/// The default port.
pub const DEFAULT_PORT: u16 = 7443;

fn parse_listen(v: &str, from: &str) -> Result<SocketAddr, ServerError> {
    v.parse()
        .map_err(|_| ServerError::Invalid(format!("{from}: {v:?} is not an address:port")))
}

/// The most threads detection may be given.
const DETECTION_THREADS_MAX: u64 = 256;

fn threads(n: u64, from: &str) -> Result<usize, ServerError> {
    if !(1..=DETECTION_THREADS_MAX).contains(&n) {
        return Err(ServerError::Invalid(format!(
            "{from}: detection_threads must be 1 to {DETECTION_THREADS_MAX}, not {n}"
        )));
    }
    Ok(n as usize)
}

fn parse_allow<'a>(
    entries: impl Iterator<Item = &'a str>,
    from: &str,
) -> Result<Vec<mamori_wire::command::Allow>, ServerError> {
    entries
        .map(|e| {
            e.parse()
                .map_err(|why| ServerError::Invalid(format!("{from}: isolation_allow: {why}")))
        })
        .collect()
}

impl ServerConfig {
    /// Defaults for a data directory.
    pub fn with_data_dir(data_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            data_dir,
            names: Vec::new(),
            store_quota_bytes: 100 << 30,
            retention_days: 45,
            flush_seconds: 2,
            isolation_allow: Vec::new(),
            soc_policy: None,
            detection_threads: None,
        }
    }

    /// Applies a TOML file, then the environment. Unknown keys in the file are errors.
    pub fn load(
        file: Option<&Path>,
        default_data_dir: PathBuf,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ServerConfig, ServerError> {
        let mut c = ServerConfig::with_data_dir(default_data_dir);
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ServerError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let f: File = toml::from_str(&text)
                .map_err(|e| ServerError::Invalid(format!("{}: {e}", path.display())))?;
            if let Some(v) = f.listen {
                c.listen = parse_listen(&v, &path.display().to_string())?;
            }
            if let Some(v) = f.data_dir {
                c.data_dir = v;
            }
            if let Some(v) = f.names {
                c.names = v;
            }
            if let Some(v) = f.store_quota_gib {
                c.store_quota_bytes = v << 30;
            }
            if let Some(v) = f.retention_days {
                if v == 0 {
                    return Err(ServerError::Invalid(format!(
                        "{}: retention_days must be at least 1",
                        path.display()
                    )));
                }
                c.retention_days = v;
            }
            if let Some(v) = f.flush_seconds {
                c.flush_seconds = v.clamp(1, 3600);
            }
            if let Some(v) = f.soc_policy {
                c.soc_policy = Some(v);
            }
            if let Some(v) = f.detection_threads {
                c.detection_threads = Some(threads(v, &path.display().to_string())?);
            }
            if let Some(v) = f.isolation_allow {
                c.isolation_allow =
                    parse_allow(v.iter().map(String::as_str), &path.display().to_string())?;
            }
        }
        if let Some(v) = env("MAMORI_LISTEN") {
            c.listen = parse_listen(&v, "MAMORI_LISTEN")?;
        }
        if let Some(v) = env("MAMORI_ISOLATION_ALLOW") {
            c.isolation_allow = parse_allow(
                v.split(',').map(str::trim).filter(|s| !s.is_empty()),
                "MAMORI_ISOLATION_ALLOW",
            )?;
        }
        if let Some(v) = env("MAMORI_DETECTION_THREADS") {
            let n = v.trim().parse().map_err(|_| {
                ServerError::Invalid(format!("MAMORI_DETECTION_THREADS: {v:?} is not a number"))
            })?;
            c.detection_threads = Some(threads(n, "MAMORI_DETECTION_THREADS")?);
        }
        if let Some(v) = env("MAMORI_NAMES") {
            c.names = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        Ok(c)
    }

    /// Names the server certificate carries.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut n = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let ip = self.listen.ip();
        if !ip.is_unspecified() {
            n.push(ip.to_string());
        }
        n.extend(self.names.iter().cloned());
        n.sort();
        n.dedup();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment_with_safe_defaults() {
        let none = |_: &str| None;
        let c = ServerConfig::load(None, "/d".into(), none).unwrap();
        assert_eq!(
            c.listen.to_string(),
            "127.0.0.1:7443",
            "localhost by default"
        );
        let dir = std::env::temp_dir().join(format!("mamori-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("server.toml");
        std::fs::write(&f, "listen = \"0.0.0.0:9000\"\nnames = [\"edr.example\"]\n").unwrap();
        let c = ServerConfig::load(Some(&f), "/d".into(), none).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert!(c.certificate_names().contains(&"edr.example".to_string()));
        let env = |k: &str| (k == "MAMORI_LISTEN").then(|| "127.0.0.1:9100".to_string());
        assert_eq!(
            ServerConfig::load(Some(&f), "/d".into(), env)
                .unwrap()
                .listen
                .port(),
            9100
        );
        std::fs::write(&f, "lsten = \"x\"\n").unwrap();
        let e = ServerConfig::load(Some(&f), "/d".into(), none).unwrap_err();
        assert!(e.to_string().contains("lsten"), "{e}");
        let bad = |k: &str| (k == "MAMORI_LISTEN").then(|| "nowhere".to_string());
        assert!(ServerConfig::load(None, "/d".into(), bad).is_err());
        // The isolation allowlist: from the file, checked, overridden by the environment.
        std::fs::write(
            &f,
            "isolation_allow = [\"10.0.0.53:53\", \"10.9.0.0/16\"]\n",
        )
        .unwrap();
        let c = ServerConfig::load(Some(&f), "/d".into(), none).unwrap();
        let shown: Vec<String> = c.isolation_allow.iter().map(|a| a.to_string()).collect();
        assert_eq!(shown, ["10.0.0.53:53", "10.9.0.0/16"]);
        std::fs::write(&f, "isolation_allow = [\"dns.example:53\"]\n").unwrap();
        let e = ServerConfig::load(Some(&f), "/d".into(), none).unwrap_err();
        assert!(e.to_string().contains("isolation_allow"), "{e}");
        let env = |k: &str| {
            (k == "MAMORI_ISOLATION_ALLOW").then(|| "[fd00::53]:53, 10.1.1.1".to_string())
        };
        let c = ServerConfig::load(None, "/d".into(), env).unwrap();
        assert_eq!(c.isolation_allow.len(), 2);
        // Detection's threads: one per core unless set, in range, the environment last.
        assert_eq!(c.detection_threads, None);
        std::fs::write(&f, "detection_threads = 3\n").unwrap();
        let c = ServerConfig::load(Some(&f), "/d".into(), none).unwrap();
        assert_eq!(c.detection_threads, Some(3));
        let env = |k: &str| (k == "MAMORI_DETECTION_THREADS").then(|| "2".to_string());
        let c = ServerConfig::load(Some(&f), "/d".into(), env).unwrap();
        assert_eq!(c.detection_threads, Some(2));
        for bad in ["detection_threads = 0\n", "detection_threads = 100000\n"] {
            std::fs::write(&f, bad).unwrap();
            let e = ServerConfig::load(Some(&f), "/d".into(), none).unwrap_err();
            assert!(e.to_string().contains("detection_threads must be"), "{e}");
        }
        let env = |k: &str| (k == "MAMORI_DETECTION_THREADS").then(|| "many".to_string());
        let e = ServerConfig::load(None, "/d".into(), env).unwrap_err();
        assert!(e.to_string().contains("MAMORI_DETECTION_THREADS"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
