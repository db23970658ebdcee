//! Renders a [`Doc`] as one self-contained HTML page (inline CSS, charts as inline SVG, no
//! scripts, nothing fetched): it can be mailed, archived and opened offline.

use std::fmt::Write;

use crate::doc::{Block, Doc, Tone};

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const CSS: &str = "body{font-family:system-ui,'Hiragino Sans','Noto Sans CJK JP','Yu Gothic',sans-serif;\
max-width:960px;margin:2em auto;padding:0 1em;color:#1b1f24;line-height:1.6}\
h1{font-size:1.6em;border-bottom:3px solid #1b1f24;padding-bottom:.3em}\
h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccd}\
.callout{padding:.8em 1em;border-radius:6px;margin:1em 0}\
.danger{background:#fde8e8;border-left:6px solid #c81e1e}\
.warning{background:#fff4e0;border-left:6px solid #d97706}\
.info{background:#eef3fb;border-left:6px solid #3b6fb6}\
table{border-collapse:collapse;width:100%;font-size:.9em}\
th,td{border:1px solid #ccd;padding:.3em .5em;text-align:left;vertical-align:top;word-break:break-all}\
th{background:#f2f4f8}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}\
dt{font-weight:600}dd{margin:0;word-break:break-all}svg text{font-size:12px}";

/// The page.
pub fn render(doc: &Doc) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"{}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{}</title>\
         <style>{CSS}</style></head><body>\n<h1>{}</h1>\n",
        escape(&doc.lang),
        escape(&doc.title),
        escape(&doc.title)
    );
    for b in &doc.blocks {
        match b {
            Block::Heading(t) => {
                let _ = writeln!(h, "<h2>{}</h2>", escape(t));
            }
            Block::Para(t) => {
                let _ = writeln!(h, "<p>{}</p>", escape(t));
            }
            Block::Callout(tone, t) => {
                let class = match tone {
                    Tone::Danger => "danger",
                    Tone::Warning => "warning",
                    Tone::Info => "info",
                };
                let _ = writeln!(h, "<div class=\"callout {class}\">{}</div>", escape(t));
            }
            Block::Bullets(items) | Block::Steps(items) => {
                let tag = if matches!(b, Block::Steps(_)) {
                    "ol"
                } else {
                    "ul"
                };
                let _ = write!(h, "<{tag}>");
                for i in items {
                    let _ = write!(h, "<li>{}</li>", escape(i));
                }
                let _ = writeln!(h, "</{tag}>");
            }
            Block::Fields(kv) => {
                h.push_str("<dl>");
                for (k, v) in kv {
                    let _ = write!(h, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(v));
                }
                h.push_str("</dl>\n");
            }
            Block::Table(head, rows) => {
                h.push_str("<table><thead><tr>");
                for c in head {
                    let _ = write!(h, "<th>{}</th>", escape(c));
                }
                h.push_str("</tr></thead><tbody>");
                for r in rows {
                    h.push_str("<tr>");
                    for c in r {
                        let _ = write!(h, "<td>{}</td>", escape(c));
                    }
                    h.push_str("</tr>");
                }
                h.push_str("</tbody></table>\n");
            }
            Block::Bars(title, items) => bars(&mut h, title, items),
        }
    }
    h.push_str("</body></html>\n");
    h
}

fn bars(h: &mut String, title: &str, items: &[(String, u64)]) {
    let max = items.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let row = 22;
    let height = 28 + row * items.len();
    let _ = write!(
        h,
        "<figure><figcaption>{}</figcaption><svg role=\"img\" width=\"720\" height=\"{height}\" \
         viewBox=\"0 0 720 {height}\" xmlns=\"http://www.w3.org/2000/svg\">",
        escape(title)
    );
    for (i, (label, v)) in items.iter().enumerate() {
        let y = 10 + i * row;
        let w = (*v as f64 / max as f64 * 400.0).round().max(1.0);
        let _ = write!(
            h,
            "<text x=\"0\" y=\"{}\">{}</text><rect x=\"240\" y=\"{y}\" width=\"{w}\" \
             height=\"16\" fill=\"#3b6fb6\"/><text x=\"{}\" y=\"{}\">{v}</text>",
            y + 13,
            escape(&crate::shorten(label, 34)),
            248.0 + w,
            y + 13
        );
    }
    h.push_str("</svg></figure>\n");
}
