//! Notifications with clocks: email (SMTP, with STARTTLS or implicit TLS), generic webhooks
//! (JSON signed with HMAC-SHA256) and Slack / Teams incoming webhooks.
//!
//! A thread looks at open incidents every second. An incident whose severity reached a
//! channel's `min_severity` gets a first notice at once (short: what, where, why, first
//! steps). Once it has been quiet for `report_quiet_seconds` (or its report clock is about to
//! run out) the detailed report follows: by email as HTML with the PDF attached, by webhook
//! as JSON with the report's address. A higher severity later sends both again. Every attempt
//! is recorded with the incident; delivered ones stop its clocks; a failed one is tried
//! again a minute later (until it is delivered or the incident is closed). Webhook
//! addresses, passwords and keys are never logged.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine;
use mamori_report::Lang;
use mamori_soc::{Channel, Severity, Smtp};
use serde_json::json;

use crate::incidents::{self, IncidentRow};
use crate::service::Shared;
use crate::state::now;

const TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the notifier until the server goes away.
pub fn run(shared: Weak<Shared>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = tick(&shared) {
            tracing::error!("notifications: {e}");
        }
    }
}

fn lang(c: &Channel, tenant_lang: mamori_soc::Language) -> Lang {
    match c.language.as_deref().and_then(Lang::parse) {
        Some(l) => l,
        None => Lang::parse(tenant_lang.as_str()).unwrap_or(Lang::En),
    }
}

/// A failed delivery is tried again after this long.
const RETRY_S: i64 = 60;

fn tick(shared: &Arc<Shared>) -> Result<(), crate::ServerError> {
    let policy = shared.policy.clone();
    for row in shared.state.incidents(None, Some("open"), 200)? {
        let rank = incidents::rank(&row);
        // Channels by position: two webhooks are two channels.
        let channels: Vec<(String, &Channel)> = policy
            .channels(&row.tenant)
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                Severity::parse(&c.min_severity)
                    .is_some_and(|m| Severity::parse(&row.severity).is_some_and(|s| s >= m))
            })
            .map(|(i, c)| (format!("{}#{}", c.kind, i + 1), c))
            .collect();
        if channels.is_empty() {
            continue;
        }
        let notice_due = rank > row.notified_rank;
        let report_due = rank > row.reported_rank && report_time(shared, &row);
        if !notice_due && !report_due {
            continue;
        }
        let mut inc = None;
        let tenant_lang = policy.language(&row.tenant);
        let (mut notices_done, mut reports_done) = (true, true);
        for (name, c) in &channels {
            for (kind, due, done) in [
                ("notice", notice_due, &mut notices_done),
                ("report", report_due, &mut reports_done),
            ] {
                if !due {
                    continue;
                }
                let (delivered, failed_at) =
                    shared
                        .state
                        .notification_state(row.id, kind, name, &row.severity)?;
                if delivered {
                    continue;
                }
                if failed_at.is_some_and(|f| now() - f < RETRY_S) {
                    *done = false; // waiting to try again
                    continue;
                }
                if inc.is_none() {
                    inc = incidents::build(shared, &policy, row.id)?;
                }
                let Some(i) = &inc else { continue };
                let r = send(shared, c, lang(c, tenant_lang), i, kind == "report");
                *done &= r.is_ok();
                record(shared, row.id, kind, name, &row.severity, r);
            }
        }
        shared.state.mark_notified(
            row.id,
            if notice_due && notices_done {
                rank
            } else {
                row.notified_rank
            },
            if report_due && reports_done {
                rank
            } else {
                row.reported_rank
            },
        )?;
    }
    Ok(())
}

/// The report goes out when the incident has been quiet for a moment, or when its clock is
/// about to run out.
fn report_time(shared: &Shared, row: &IncidentRow) -> bool {
    let policy = &shared.policy;
    let quiet = i64::from(policy.incidents(&row.tenant).report_quiet_seconds);
    let t = now();
    let due = Severity::parse(&row.severity)
        .and_then(|s| policy.clock(&row.tenant, s))
        .map(|c| row.opened_at + i64::from(c.report_minutes) * 60);
    t - row.updated_at >= quiet || due.is_some_and(|d| t >= d - 60)
}

fn record(
    shared: &Shared,
    incident: i64,
    kind: &str,
    channel: &str,
    severity: &str,
    r: Result<(), String>,
) {
    let (ok, error) = match r {
        Ok(()) => (true, String::new()),
        Err(e) => {
            tracing::warn!(incident, %channel, "notification not delivered (tried again in a minute): {e}");
            (false, e)
        }
    };
    if let Err(e) = shared
        .state
        .record_notification(incident, kind, channel, severity, ok, &error)
    {
        tracing::error!("recording a notification: {e}");
    }
}

fn send(
    shared: &Shared,
    c: &Channel,
    l: Lang,
    inc: &mamori_report::model::Incident,
    report: bool,
) -> Result<(), String> {
    let (subject, body) = mamori_report::text::notice(inc, l, now());
    let report_path = format!(
        "/api/v1/incidents/{}/report?lang={}&format=html",
        inc.id,
        l.code()
    );
    match c.kind.as_str() {
        "email" => {
            let smtp = shared
                .policy
                .smtp()
                .ok_or("no [smtp] server in the SOC policy")?;
            let mut attachments = Vec::new();
            let html = if report {
                let doc = mamori_report::text::incident(inc, l, now());
                attachments.push((
                    format!("mamori-incident-{}-{}.pdf", inc.id, l.code()),
                    mamori_report::pdf::render(&doc),
                ));
                Some(mamori_report::html::render(&doc))
            } else {
                None
            };
            let subject = if report {
                format!(
                    "{subject} — {}",
                    if l == Lang::Ja {
                        "詳細報告"
                    } else {
                        "report"
                    }
                )
            } else {
                subject
            };
            email(smtp, &c.to, &subject, &body, html.as_deref(), &attachments)
        }
        "webhook" => {
            // Command lines leave the server here: secrets in them are redacted.
            let mut inc = inc.clone();
            for a in &mut inc.alerts {
                a.command_line = mamori_report::redact(&a.command_line);
            }
            for p in &mut inc.process_tree {
                p.command_line = mamori_report::redact(&p.command_line);
            }
            for e in &mut inc.timeline {
                e.text = mamori_report::redact(&e.text);
            }
            let payload = json!({
                "kind": if report { "report" } else { "notice" },
                "subject": subject,
                "text": body,
                "report": report_path,
                "incident": inc,
            });
            let body = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
            let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
            if let Some(var) = &c.secret_env {
                let key = std::env::var(var)
                    .map_err(|_| format!("the webhook key variable {var} is not set"))?;
                let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
                let tag = ring::hmac::sign(&k, &body);
                let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
                headers.push(("X-Mamori-Signature".into(), format!("sha256={hex}")));
            }
            post(&c.url, &headers, &body)
        }
        "slack" | "teams" => {
            let text = format!("*{subject}*\n{body}\n{report_path}");
            let payload = if c.kind == "slack" {
                json!({"text": text})
            } else {
                json!({
                    "@type": "MessageCard",
                    "@context": "https://schema.org/extensions",
                    "summary": subject,
                    "themeColor": if inc.severity == "critical" { "C81E1E" } else { "D97706" },
                    "title": subject,
                    "text": body.replace('\n', "<br>"),
                })
            };
            let body = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
            post(
                &c.url,
                &[("Content-Type".into(), "application/json".into())],
                &body,
            )
        }
        other => Err(format!("unknown channel {other}")),
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for c in found.certs {
        let _ = roots.add(c);
    }
    if let Some(f) = ca_file {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(f)
            .map_err(|e| format!("{}: {e}", f.display()))?;
        for c in certs {
            roots
                .add(c.map_err(|e| format!("{}: {e}", f.display()))?)
                .map_err(|e| format!("{}: {e}", f.display()))?;
        }
    }
    if roots.is_empty() {
        return Err("no trusted CA certificates on this machine (install ca-certificates)".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// Connects to the first address of `host` that answers.
fn connect(host: &str, port: u16) -> Result<TcpStream, String> {
    let mut last = format!("{host}:{port}: no address");
    for addr in (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}:{port}: {e}"))?
    {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(s) => {
                let _ = s.set_read_timeout(Some(TIMEOUT));
                let _ = s.set_write_timeout(Some(TIMEOUT));
                return Ok(s);
            }
            Err(e) => last = format!("{host}:{port}: {e}"),
        }
    }
    Err(last)
}

fn tls(
    host: &str,
    tcp: TcpStream,
    ca_file: Option<&std::path::Path>,
) -> Result<Box<dyn Stream>, String> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: {e}"))?;
    let conn =
        rustls::ClientConnection::new(tls_config(ca_file)?, name).map_err(|e| e.to_string())?;
    Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
}

/// `http(s)://host[:port]/path` → (tls, host, port, path).
fn parse_url(url: &str) -> Result<(bool, String, u16, String), String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("the webhook address must start with http:// or https://".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse().map_err(|_| "bad port in the webhook address")?,
        ),
        _ => (authority.to_string(), if tls { 443 } else { 80 }),
    };
    if host.is_empty() || path.contains(['\r', '\n', ' ']) {
        return Err("bad webhook address".into());
    }
    Ok((tls, host, port, path.to_string()))
}

/// POSTs `body`; any 2xx answer is delivery. (The address is not in the error: it is a
/// secret for Slack and Teams.)
pub fn post(url: &str, headers: &[(String, String)], body: &[u8]) -> Result<(), String> {
    let (is_tls, host, port, path) = parse_url(url)?;
    let tcp =
        connect(&host, port).map_err(|_| format!("cannot connect to the webhook's host {host}"))?;
    let mut s: Box<dyn Stream> = if is_tls {
        tls(&host, tcp, None)?
    } else {
        Box::new(tcp)
    };
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mamori/{}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .and_then(|_| s.write_all(body))
        .and_then(|_| s.flush())
        .map_err(|e| format!("sending to the webhook: {e}"))?;
    let mut status = String::new();
    BufReader::new(s.take(4096))
        .read_line(&mut status)
        .map_err(|e| format!("reading the webhook's answer: {e}"))?;
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("the webhook answered {:?}", status.trim()))?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("the webhook answered HTTP {code}"))
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Base64 in lines of 76.
fn b64_lines(b: &[u8]) -> String {
    let s = b64(b);
    s.as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// An SMTP conversation. Replies are read byte by byte: nothing is buffered past a reply, so
/// the connection can be handed to TLS after STARTTLS.
struct Session {
    s: Box<dyn Stream>,
}

impl Session {
    fn line(&mut self) -> Result<String, String> {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.len() < 4096 {
            match self.s.read(&mut b) {
                Ok(0) => return Err("SMTP: the server closed the connection".into()),
                Ok(_) => {
                    line.push(b[0]);
                    if b[0] == b'\n' {
                        break;
                    }
                }
                Err(e) => return Err(format!("SMTP: {e}")),
            }
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    /// Reads a reply; fails unless its code is `want`.
    fn reply(&mut self, want: u16) -> Result<(), String> {
        loop {
            let line = self.line()?;
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                if code != want {
                    return Err(format!("SMTP: expected {want}, got {:?}", line.trim()));
                }
                return Ok(());
            }
        }
    }

    fn cmd(&mut self, c: &str, want: u16) -> Result<(), String> {
        self.s
            .write_all(c.as_bytes())
            .and_then(|_| self.s.write_all(b"\r\n"))
            .and_then(|_| self.s.flush())
            .map_err(|e| format!("SMTP: {e}"))?;
        self.reply(want)
    }
}

/// Sends one message through the policy's mail server.
pub fn email(
    smtp: &Smtp,
    to: &[String],
    subject: &str,
    text: &str,
    html: Option<&str>,
    attachments: &[(String, Vec<u8>)],
) -> Result<(), String> {
    let (host, port) = smtp
        .server
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or("smtp.server must be host:port")?;
    let tcp = connect(&host, port)?;
    let ca = smtp.ca_file.as_deref();
    let mut s = if smtp.tls == "tls" {
        Session {
            s: tls(&host, tcp, ca)?,
        }
    } else {
        let plain = tcp.try_clone().map_err(|e| format!("SMTP: {e}"))?;
        let mut s = Session { s: Box::new(plain) };
        s.reply(220)?;
        s.cmd("EHLO mamori", 250)?;
        if smtp.tls == "starttls" {
            s.cmd("STARTTLS", 220)?;
            Session {
                s: tls(&host, tcp, ca)?,
            }
        } else {
            s
        }
    };
    if smtp.tls == "tls" {
        s.reply(220)?;
    }
    if smtp.tls != "none" {
        s.cmd("EHLO mamori", 250)?;
    }
    if let Some(user) = &smtp.username {
        let pass = smtp
            .password_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok())
            .ok_or("smtp.password_env is not set or names an unset variable")?;
        let token = b64(format!("\0{user}\0{pass}").as_bytes());
        s.cmd(&format!("AUTH PLAIN {token}"), 235)
            .map_err(|_| "SMTP: authentication failed".to_string())?;
    }
    s.cmd(&format!("MAIL FROM:<{}>", smtp.from), 250)?;
    for r in to {
        if !mamori_soc::valid_address(r) {
            return Err(format!("not a mail address: {r:?}"));
        }
        s.cmd(&format!("RCPT TO:<{r}>"), 250)?;
    }
    s.cmd("DATA", 354)?;
    let msg = message(&smtp.from, to, subject, text, html, attachments);
    s.cmd(&format!("{msg}\r\n."), 250)?;
    let _ = s.cmd("QUIT", 221);
    Ok(())
}

/// The MIME message, dot-stuffed, CRLF line ends.
pub fn message(
    from: &str,
    to: &[String],
    subject: &str,
    text: &str,
    html: Option<&str>,
    attachments: &[(String, Vec<u8>)],
) -> String {
    let boundary = format!("mamori-{:016x}", rand::random::<u64>());
    let mut m = format!(
        "From: Mamori <{from}>\r\nTo: {}\r\nSubject: =?UTF-8?B?{}?=\r\nDate: {}\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n",
        to.join(", "),
        b64(subject.as_bytes()),
        chrono::Utc::now().to_rfc2822()
    );
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
        b64_lines(text.as_bytes())
    ));
    if let Some(h) = html {
        m.push_str(&format!(
            "--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            b64_lines(h.as_bytes())
        ));
    }
    for (name, data) in attachments {
        m.push_str(&format!(
            "--{boundary}\r\nContent-Type: application/pdf; name=\"{name}\"\r\n\
             Content-Disposition: attachment; filename=\"{name}\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
            b64_lines(data)
        ));
    }
    m.push_str(&format!("--{boundary}--"));
    // Base64 bodies never start a line with '.', the headers are ours: nothing to stuff,
    // but a line of one '.' must never appear.
    m.replace("\r\n.", "\r\n..")
}
