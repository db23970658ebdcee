//! Renders a [`Doc`] as PDF (A4), with no font files and no external tools.
//!
//! Text uses the standard Japanese font `HeiseiKakuGo-W5` with the `UniJIS-UCS2-H` encoding
//! (every PDF viewer maps it to an installed Japanese font), so Japanese and English share one
//! font and the PDF stays small; a `ToUnicode` map keeps all text searchable and copyable.
//! Widths are declared (Latin half width, everything else full width), so the layout here and
//! the viewer's agree. Characters outside the Basic Multilingual Plane become `?`.

use std::fmt::Write as _;
use std::io::Write as _;

use crate::doc::{Block, Doc, Tone};

const W: f64 = 595.0;
const H: f64 = 842.0;
const LEFT: f64 = 50.0;
const RIGHT: f64 = 545.0;
const TOP: f64 = 790.0;
const BOTTOM: f64 = 60.0;
const BODY: f64 = 9.5;

/// Width of `c` in ems.
fn em(c: char) -> f64 {
    if (' '..='~').contains(&c) || ('\u{ff61}'..='\u{ff9f}').contains(&c) {
        0.5
    } else {
        1.0
    }
}

fn width(s: &str, size: f64) -> f64 {
    s.chars().map(em).sum::<f64>() * size
}

/// Breaks `s` into lines no wider than `max` points (at spaces when it can, anywhere in
/// words longer than a line and in Japanese).
pub(crate) fn wrap(s: &str, size: f64, max: f64) -> Vec<String> {
    let mut lines = Vec::new();
    for para in s.split('\n') {
        let mut line = String::new();
        let mut w = 0.0;
        let mut last_space: Option<usize> = None;
        for c in para.chars() {
            let cw = em(c) * size;
            if w + cw > max && !line.is_empty() {
                match last_space {
                    Some(i) if i > 0 => {
                        let rest = line.split_off(i + 1);
                        lines.push(line.trim_end().to_string());
                        line = rest;
                    }
                    _ => lines.push(std::mem::take(&mut line)),
                }
                w = width(&line, size);
                last_space = None;
            }
            if c == ' ' {
                last_space = Some(line.len());
            }
            line.push(c);
            w += cw;
        }
        lines.push(line);
    }
    lines
}

fn hex(s: &str) -> String {
    let mut o = String::with_capacity(s.len() * 4 + 2);
    o.push('<');
    for c in s.chars() {
        let u = c as u32;
        let u = if u > 0xffff || (0xd800..0xe000).contains(&u) || u < 0x20 {
            0x3f
        } else {
            u
        };
        let _ = write!(o, "{u:04X}");
    }
    o.push('>');
    o
}

struct Layout {
    pages: Vec<String>,
    y: f64,
}

impl Layout {
    fn page(&mut self) -> &mut String {
        self.pages.last_mut().expect("a page")
    }

    fn new_page(&mut self) {
        self.pages.push(String::new());
        self.y = TOP;
    }

    fn ensure(&mut self, h: f64) {
        if self.y - h < BOTTOM {
            self.new_page();
        }
    }

    fn text(&mut self, x: f64, y: f64, size: f64, s: &str) {
        let t = hex(s);
        let _ = writeln!(
            self.page(),
            "BT /F1 {size:.1} Tf 1 0 0 1 {x:.1} {y:.1} Tm {t} Tj ET"
        );
    }

    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: (f64, f64, f64)) {
        let _ = writeln!(
            self.page(),
            "{:.2} {:.2} {:.2} rg {x:.1} {y:.1} {w:.1} {h:.1} re f 0 0 0 rg",
            fill.0,
            fill.1,
            fill.2
        );
    }

    fn frame(&mut self, x: f64, y: f64, w: f64, h: f64) {
        let _ = writeln!(
            self.page(),
            "0.75 0.77 0.82 RG 0.5 w {x:.1} {y:.1} {w:.1} {h:.1} re S"
        );
    }

    /// Lines of text at `x`, each `lh` high; breaks pages between lines.
    fn lines(&mut self, x: f64, size: f64, lines: &[String]) {
        let lh = size * 1.5;
        for l in lines {
            self.ensure(lh);
            self.y -= lh;
            self.text(x, self.y + size * 0.3, size, l);
        }
    }

    fn para(&mut self, s: &str, size: f64, indent: f64) {
        let lines = wrap(s, size, RIGHT - LEFT - indent);
        self.lines(LEFT + indent, size, &lines);
    }
}

/// The PDF file.
pub fn render(doc: &Doc) -> Vec<u8> {
    let mut l = Layout {
        pages: Vec::new(),
        y: TOP,
    };
    l.new_page();
    let title = wrap(&doc.title, 17.0, RIGHT - LEFT);
    l.lines(LEFT, 17.0, &title);
    l.y -= 4.0;
    let y = l.y;
    l.rect(LEFT, y, RIGHT - LEFT, 1.5, (0.1, 0.12, 0.14));
    l.y -= 8.0;
    for b in &doc.blocks {
        match b {
            Block::Heading(t) => {
                l.ensure(40.0);
                l.y -= 10.0;
                l.para(t, 12.5, 0.0);
                let y = l.y - 2.0;
                l.rect(LEFT, y, RIGHT - LEFT, 0.6, (0.6, 0.62, 0.7));
                l.y -= 6.0;
            }
            Block::Para(t) => {
                l.para(t, BODY, 0.0);
                l.y -= 4.0;
            }
            Block::Callout(tone, t) => {
                let fill = match tone {
                    Tone::Danger => (0.99, 0.91, 0.91),
                    Tone::Warning => (1.0, 0.96, 0.88),
                    Tone::Info => (0.93, 0.95, 0.98),
                };
                let bar = match tone {
                    Tone::Danger => (0.78, 0.12, 0.12),
                    Tone::Warning => (0.85, 0.47, 0.02),
                    Tone::Info => (0.23, 0.44, 0.71),
                };
                let lines = wrap(t, BODY + 0.5, RIGHT - LEFT - 20.0);
                let h = lines.len() as f64 * (BODY + 0.5) * 1.5 + 10.0;
                l.ensure(h.min(TOP - BOTTOM));
                let top = l.y;
                l.rect(LEFT, top - h, RIGHT - LEFT, h, fill);
                l.rect(LEFT, top - h, 4.0, h, bar);
                l.y -= 5.0;
                l.lines(LEFT + 12.0, BODY + 0.5, &lines);
                l.y -= 9.0;
            }
            Block::Bullets(items) | Block::Steps(items) => {
                for (i, item) in items.iter().enumerate() {
                    let mark = if matches!(b, Block::Steps(_)) {
                        format!("{}.", i + 1)
                    } else {
                        "•".to_string()
                    };
                    let lines = wrap(item, BODY, RIGHT - LEFT - 18.0);
                    l.ensure(BODY * 1.5);
                    let y = l.y - BODY * 1.5 + BODY * 0.3;
                    l.text(LEFT + 2.0, y, BODY, &mark);
                    l.lines(LEFT + 18.0, BODY, &lines);
                }
                l.y -= 4.0;
            }
            Block::Fields(kv) => {
                let label_w = kv
                    .iter()
                    .map(|(k, _)| width(k, BODY))
                    .fold(0.0, f64::max)
                    .min(160.0)
                    + 12.0;
                for (k, v) in kv {
                    let lines = wrap(v, BODY, RIGHT - LEFT - label_w);
                    l.ensure(BODY * 1.5);
                    let y = l.y - BODY * 1.5 + BODY * 0.3;
                    l.text(LEFT, y, BODY, k);
                    l.lines(LEFT + label_w, BODY, &lines);
                }
                l.y -= 4.0;
            }
            Block::Table(head, rows) => table(&mut l, head, rows),
            Block::Bars(title, items) => {
                l.ensure(30.0);
                l.para(title, BODY + 1.0, 0.0);
                let max = items.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
                for (label, v) in items {
                    l.ensure(16.0);
                    l.y -= 15.0;
                    let y = l.y;
                    l.text(LEFT, y + 3.0, BODY - 0.5, &crate::shorten(label, 30));
                    let w = (*v as f64 / max as f64 * 220.0).max(1.0);
                    l.rect(LEFT + 200.0, y + 1.0, w, 10.0, (0.23, 0.44, 0.71));
                    l.text(LEFT + 206.0 + w, y + 3.0, BODY - 0.5, &v.to_string());
                }
                l.y -= 8.0;
            }
        }
    }
    let n = l.pages.len();
    for (i, p) in l.pages.iter_mut().enumerate() {
        let footer = format!("{} / {n}", i + 1);
        let _ = writeln!(
            p,
            "0.4 0.4 0.4 rg BT /F1 8 Tf 1 0 0 1 {LEFT:.1} 30 Tm {} Tj ET \
             BT /F1 8 Tf 1 0 0 1 {:.1} 30 Tm {} Tj ET 0 0 0 rg",
            hex(&crate::shorten(&doc.title, 80)),
            RIGHT - width(&footer, 8.0),
            hex(&footer)
        );
    }
    assemble(&doc.title, &l.pages)
}

fn table(l: &mut Layout, head: &[String], rows: &[Vec<String>]) {
    let size = BODY - 1.0;
    let cols = head.len().max(1);
    // Columns share the width by the length of their content (bounded).
    let want: Vec<f64> = (0..cols)
        .map(|c| {
            let longest = std::iter::once(head.get(c))
                .chain(rows.iter().map(|r| r.get(c)))
                .flatten()
                .map(|s| width(s, size))
                .fold(0.0, f64::max);
            longest.clamp(40.0, 260.0)
        })
        .collect();
    let total: f64 = want.iter().sum();
    let widths: Vec<f64> = want.iter().map(|w| w / total * (RIGHT - LEFT)).collect();
    let lh = size * 1.4;
    let draw = |l: &mut Layout, cells: &[String], shade: bool| {
        let wrapped: Vec<Vec<String>> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| wrap(&crate::shorten(c, 400), size, w - 6.0))
            .collect();
        let n = wrapped.iter().map(Vec::len).max().unwrap_or(1);
        let h = n as f64 * lh + 5.0;
        l.ensure(h.min(TOP - BOTTOM));
        let top = l.y;
        let mut x = LEFT;
        for (lines, w) in wrapped.iter().zip(&widths) {
            if shade {
                l.rect(x, top - h, *w, h, (0.95, 0.96, 0.97));
            }
            l.frame(x, top - h, *w, h);
            for (i, line) in lines.iter().enumerate() {
                l.text(
                    x + 3.0,
                    top - 3.0 - (i as f64 + 1.0) * lh + size * 0.35,
                    size,
                    line,
                );
            }
            x += w;
        }
        l.y = top - h;
    };
    l.ensure(3.0 * lh);
    draw(l, head, true);
    for r in rows {
        let pages = l.pages.len();
        draw(l, r, false);
        if l.pages.len() != pages {
            // A row moved to a new page: the header again above it is not worth the
            // complexity; rows stay readable on their own.
        }
    }
    l.y -= 8.0;
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

fn to_unicode() -> String {
    let mut s = String::from(
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n\
         /CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n\
         /CMapName /Mamori-UCS2 def\n/CMapType 2 def\n\
         1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n",
    );
    let ranges: Vec<u32> = (0u32..256).filter(|h| !(0xd8..0xe0).contains(h)).collect();
    for chunk in ranges.chunks(100) {
        let _ = writeln!(s, "{} beginbfrange", chunk.len());
        for h in chunk {
            let _ = writeln!(s, "<{h:02X}00> <{h:02X}FF> <{h:02X}00>");
        }
        s.push_str("endbfrange\n");
    }
    s.push_str("endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n");
    s
}

fn assemble(title: &str, pages: &[String]) -> Vec<u8> {
    let mut objs: Vec<Vec<u8>> = Vec::new();
    let stream = |dict: &str, data: &[u8]| -> Vec<u8> {
        let z = deflate(data);
        let mut o = format!(
            "<< {dict} /Filter /FlateDecode /Length {} >>\nstream\n",
            z.len()
        )
        .into_bytes();
        o.extend_from_slice(&z);
        o.extend_from_slice(b"\nendstream");
        o
    };
    // 1 catalog, 2 pages, 3 font, 4 CID font, 5 descriptor, 6 ToUnicode, 7 info, then
    // (page, content) pairs.
    let first_page = 8;
    let kids: Vec<String> = (0..pages.len())
        .map(|i| format!("{} 0 R", first_page + 2 * i))
        .collect();
    objs.push(b"<< /Type /Catalog /Pages 2 0 R >>".to_vec());
    objs.push(
        format!(
            "<< /Type /Pages /Kids [{}] /Count {} >>",
            kids.join(" "),
            pages.len()
        )
        .into_bytes(),
    );
    objs.push(
        b"<< /Type /Font /Subtype /Type0 /BaseFont /HeiseiKakuGo-W5 /Encoding /UniJIS-UCS2-H \
          /DescendantFonts [4 0 R] /ToUnicode 6 0 R >>"
            .to_vec(),
    );
    objs.push(
        b"<< /Type /Font /Subtype /CIDFontType0 /BaseFont /HeiseiKakuGo-W5 \
          /CIDSystemInfo << /Registry (Adobe) /Ordering (Japan1) /Supplement 2 >> \
          /FontDescriptor 5 0 R /DW 1000 /W [1 95 500 231 631 500] >>"
            .to_vec(),
    );
    objs.push(
        b"<< /Type /FontDescriptor /FontName /HeiseiKakuGo-W5 /Flags 4 \
          /FontBBox [-92 -250 1010 922] /ItalicAngle 0 /Ascent 752 /Descent -221 \
          /CapHeight 737 /StemV 114 >>"
            .to_vec(),
    );
    objs.push(stream("", to_unicode().as_bytes()));
    let mut t = String::from("<FEFF");
    for u in title.encode_utf16() {
        let _ = write!(t, "{u:04X}");
    }
    t.push('>');
    objs.push(format!("<< /Title {t} /Producer (Mamori) >>").into_bytes());
    for (i, p) in pages.iter().enumerate() {
        objs.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {W} {H}] \
                 /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
                first_page + 2 * i + 1
            )
            .into_bytes(),
        );
        objs.push(stream("", p.as_bytes()));
    }
    let mut out = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::with_capacity(objs.len());
    for (i, o) in objs.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(o);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    let mut x = format!("xref\n0 {}\n0000000000 65535 f \n", objs.len() + 1);
    for o in offsets {
        let _ = writeln!(x, "{o:010} 00000 n ");
    }
    let _ = write!(
        x,
        "trailer\n<< /Size {} /Root 1 0 R /Info 7 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        objs.len() + 1
    );
    out.extend_from_slice(x.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_keeps_every_character_and_respects_the_width() {
        let s = "The host web-01 ran an encoded command, then connected to 203.0.113.7:443. \
                 ホスト web-01 でエンコードされたコマンドが実行されました。";
        let lines = wrap(s, 10.0, 120.0);
        assert!(lines.len() > 3, "{lines:?}");
        for l in &lines {
            assert!(width(l, 10.0) <= 120.0, "{l:?}");
        }
        let joined: String = lines.concat();
        assert_eq!(
            joined.replace(' ', ""),
            s.replace(' ', ""),
            "no character lost"
        );
        assert_eq!(wrap("", 10.0, 100.0), vec![String::new()]);
        let long = "x".repeat(500);
        assert!(wrap(&long, 10.0, 100.0).iter().all(|l| l.len() == 20));
    }

    #[test]
    fn text_is_encoded_as_ucs2() {
        assert_eq!(hex("Aあ"), "<00413042>");
        assert_eq!(
            hex("😀\u{1}"),
            "<003F003F>",
            "outside the BMP and controls: ?"
        );
    }
}
