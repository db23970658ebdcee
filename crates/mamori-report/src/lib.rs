//! Reports a non-expert can act on, in Japanese and English, as HTML and PDF.
//!
//! * [`model`]: what reports are made from (an [`model::Incident`] with its evidence, a
//!   [`model::Monthly`] summary); the server fills them.
//! * [`text`]: the builders that turn them into sentences, steps and tables in either
//!   language ([`text::incident`], [`text::monthly`]).
//! * [`doc`]: the small document model both renderers draw.
//! * [`html`]: one self-contained page (inline CSS and SVG charts).
//! * [`pdf`]: A4 PDF without font files or external tools.

pub mod doc;
pub mod html;
pub mod model;
pub mod pdf;
pub mod text;

pub use text::Lang;

/// `s` cut to `max` characters with an ellipsis.
pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut o: String = s.chars().take(max.saturating_sub(1)).collect();
        o.push('…');
        o
    }
}

/// `s` with secrets that command lines tend to carry replaced by `[redacted]`: bearer
/// tokens, Mamori tokens, and the values of `password=`, `token=`, `secret=`, `--password`.
pub fn redact(s: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut hide_next = false;
    for word in s.split(' ') {
        let lower = word.to_ascii_lowercase();
        if hide_next && !word.is_empty() {
            out.push("[redacted]".into());
            hide_next = false;
            continue;
        }
        if lower.trim_start_matches(['"', '\'']).starts_with("mamori_") && word.len() > 30 {
            out.push("[redacted]".into());
            continue;
        }
        if let Some(i) = [
            "password=",
            "passwd=",
            "token=",
            "secret=",
            "apikey=",
            "api_key=",
        ]
        .iter()
        .find_map(|k| lower.find(k).map(|i| i + k.len()))
        {
            out.push(format!("{}[redacted]", &word[..i]));
            continue;
        }
        hide_next =
            lower.ends_with("bearer") || ["--password", "--token", "-p"].contains(&lower.as_str());
        out.push(word.to_string());
    }
    out.join(" ")
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn fmt_time(secs: i64) -> String {
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        None => format!("{secs} (out of range)"),
    }
}

/// An RFC 3339 time as the reports show it (`2026-11-26 10:00:00 UTC`).
pub fn fmt_rfc3339(t: &str) -> String {
    let t = t.trim();
    match (t.get(..10), t.get(10..11), t.get(11..19)) {
        (Some(date), Some("T"), Some(time)) => {
            let utc = t.ends_with('Z') || t.ends_with("+00:00");
            format!("{date} {time}{}", if utc { " UTC" } else { "" })
        }
        _ => t.to_string(),
    }
}

/// A report in one of its formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// HTML page.
    Html,
    /// PDF.
    Pdf,
}

impl Format {
    /// Parses `html` or `pdf`.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "html" => Some(Format::Html),
            "pdf" => Some(Format::Pdf),
            _ => None,
        }
    }

    /// The MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            Format::Html => "text/html; charset=utf-8",
            Format::Pdf => "application/pdf",
        }
    }

    /// Renders a document.
    pub fn render(self, d: &doc::Doc) -> Vec<u8> {
        match self {
            Format::Html => html::render(d).into_bytes(),
            Format::Pdf => pdf::render(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_formatted() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(fmt_time(1_795_722_300), "2026-11-26 19:45:00 UTC");
        assert_eq!(fmt_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(
            fmt_rfc3339("2026-11-26T10:00:00.123Z"),
            "2026-11-26 10:00:00 UTC"
        );
        assert_eq!(fmt_rfc3339("yesterday"), "yesterday");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("ab", 4), "ab");
        assert_eq!(
            redact("curl -H Authorization: Bearer abc123 https://x"),
            "curl -H Authorization: Bearer [redacted] https://x"
        );
        assert_eq!(
            redact("mysql --password hunter2 -u root db?token=zz"),
            "mysql --password [redacted] -u root db?token=[redacted]"
        );
        assert_eq!(
            redact("x mamori_admin_0123456789abcdef0123456789abcdef y"),
            "x [redacted] y"
        );
        assert_eq!(redact("ls -la /tmp"), "ls -la /tmp");
    }
}
