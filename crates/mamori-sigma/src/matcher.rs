//! Value matchers: one compiled Sigma value (`'\cmd.exe'` with `|endswith`, a regex, a CIDR
//! block, a number comparison) and the modifier pipeline that produces them.
//!
//! Strings follow the specification's wildcard rules: `*` is any run of characters, `?` one
//! character, `\` escapes `*`, `?` and `\` (a backslash before anything else is literal).
//! Matching is case-insensitive unless the `cased` modifier is given; it runs on a
//! lowercased copy of the event value that the scanner makes once per event.
//! Regular expressions use the `regex` crate: linear time, bounded size.

use std::net::IpAddr;

use base64::Engine as _;
use regex::Regex;

use crate::ast::{CmpOp, Scalar};

/// Maximum compiled size of one regular expression (bytes).
const REGEX_SIZE_LIMIT: usize = 8 << 20;
/// Maximum number of string variants one value may expand to (windash, base64offset, expand).
const MAX_VARIANTS: usize = 4096;

/// One piece of a Sigma string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Lit(String),
    /// `*`
    Star,
    /// `?`
    One,
}

/// Splits a Sigma string into literal text and wildcards.
pub(crate) fn parse_sigma_string(s: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(&n @ ('*' | '?' | '\\')) => {
                    lit.push(n);
                    chars.next();
                }
                _ => lit.push('\\'),
            },
            '*' | '?' => {
                if !lit.is_empty() {
                    out.push(Piece::Lit(std::mem::take(&mut lit)));
                }
                out.push(if c == '*' { Piece::Star } else { Piece::One });
            }
            _ => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push(Piece::Lit(lit));
    }
    out
}

/// Lowercases character by character (no context rules), so that a substring of `s` always
/// lowercases to a substring of `lower(s)`: the prefilter relies on it.
pub fn lower(s: &str, out: &mut String) {
    if s.is_ascii() {
        let start = out.len();
        out.push_str(s);
        out[start..].make_ascii_lowercase();
    } else {
        for c in s.chars() {
            out.extend(c.to_lowercase());
        }
    }
}

fn lowered(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    lower(s, &mut o);
    o
}

/// How a compiled string is compared.
#[derive(Debug, Clone)]
pub(crate) enum StrMatch {
    Eq(String),
    Prefix(String),
    Suffix(String),
    /// Substring, with the index of its rarest byte (searched first).
    Contains(String, usize),
    /// Wildcards in the middle: pieces, and the longest literal for the prefilter.
    Glob(Vec<Piece>, String),
    /// `*`: any value, including empty.
    Any,
}

/// A compiled value.
#[derive(Debug, Clone)]
pub(crate) enum ValueMatcher {
    /// A string comparison, on the lowercased value unless `cased`.
    Str { m: StrMatch, cased: bool },
    /// `re`: on the value as it is.
    Regex(Regex),
    /// `cidr`.
    Cidr(IpAddr, u8),
    /// `lt`/`lte`/`gt`/`gte`.
    Num(CmpOp, f64),
    /// `null`: the field is missing, null or empty.
    Null,
    /// Matches nothing (an `expand` placeholder configured with no values).
    Never,
}

impl ValueMatcher {
    /// Does `raw` (and its lowercased form `low`) match?
    #[inline]
    pub(crate) fn matches(&self, raw: &str, low: &str) -> bool {
        match self {
            ValueMatcher::Str { m, cased } => {
                let h = if *cased { raw } else { low };
                match m {
                    StrMatch::Eq(s) => h == s,
                    StrMatch::Prefix(s) => h.starts_with(s.as_str()),
                    StrMatch::Suffix(s) => h.ends_with(s.as_str()),
                    StrMatch::Contains(n, rare) => contains(h.as_bytes(), n.as_bytes(), *rare),
                    StrMatch::Glob(p, _) => glob_match(p, h),
                    StrMatch::Any => true,
                }
            }
            ValueMatcher::Regex(re) => re.is_match(raw),
            ValueMatcher::Cidr(net, bits) => match raw.trim().parse::<IpAddr>() {
                Ok(ip) => cidr_contains(*net, *bits, ip),
                Err(_) => false,
            },
            ValueMatcher::Num(op, n) => match raw.trim().parse::<f64>() {
                Ok(v) => op.holds(v, *n),
                Err(_) => false,
            },
            ValueMatcher::Null => raw.is_empty(),
            ValueMatcher::Never => false,
        }
    }

    /// The lowercased literals one of which every matching value contains, for the
    /// prefilter.
    pub(crate) fn literals(&self) -> Option<Vec<String>> {
        match self {
            ValueMatcher::Regex(re) => regex_literals(re.as_str()),
            _ => self.literal().map(|l| vec![l]),
        }
    }

    /// Whether this matcher runs a regular expression.
    pub(crate) fn is_regex(&self) -> bool {
        matches!(self, ValueMatcher::Regex(_))
    }

    /// The value as an event id, when this matcher is an exact number.
    pub(crate) fn exact_u32(&self) -> Option<u32> {
        match self {
            ValueMatcher::Str {
                m: StrMatch::Eq(s), ..
            } => s.parse().ok(),
            _ => None,
        }
    }

    /// The lowercased literal every matching value contains, for the prefilter.
    pub(crate) fn literal(&self) -> Option<String> {
        match self {
            ValueMatcher::Str { m, cased } => {
                let s = match m {
                    StrMatch::Eq(s) | StrMatch::Prefix(s) | StrMatch::Suffix(s) => s.clone(),
                    StrMatch::Contains(n, _) => n.clone(),
                    StrMatch::Glob(_, longest) => longest.clone(),
                    StrMatch::Any => return None,
                };
                let s = if *cased { lowered(&s) } else { s };
                (!s.is_empty()).then_some(s)
            }
            _ => None,
        }
    }
}

/// Matches `s` against wildcard pieces (`*`, `?`, literals) without a regex: the classic
/// two-pointer algorithm that backtracks only to the last `*`, in O(len(s) × pieces) at
/// worst.
fn glob_match(p: &[Piece], s: &str) -> bool {
    let next_char = |i: usize| s[i..].chars().next().map_or(1, char::len_utf8);
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if let Some(piece) = p.get(pi) {
            match piece {
                Piece::Star => {
                    pi += 1;
                    // Jump straight to the next occurrence of the literal that follows.
                    if let Some(Piece::Lit(l)) = p.get(pi) {
                        match s[si..].find(l.as_str()) {
                            Some(off) => si += off,
                            None => return false,
                        }
                    }
                    star = Some((pi, si));
                    continue;
                }
                Piece::One if si < s.len() => {
                    si += next_char(si);
                    pi += 1;
                    continue;
                }
                Piece::Lit(l) if s[si..].starts_with(l.as_str()) => {
                    si += l.len();
                    pi += 1;
                    continue;
                }
                _ => {}
            }
        } else if si == s.len() {
            return true;
        }
        match star {
            Some((sp, ss)) if ss < s.len() => {
                let mut ns = ss + next_char(ss);
                if let Some(Piece::Lit(l)) = p.get(sp) {
                    match s[ns..].find(l.as_str()) {
                        Some(off) => ns += off,
                        None => return false,
                    }
                }
                star = Some((sp, ns));
                pi = sp;
                si = ns;
            }
            _ => return false,
        }
    }
}

/// Literals one of which occurs in every match of `pattern` (its possible prefixes), when
/// they are few and long enough to be worth prefiltering on.
fn regex_literals(pattern: &str) -> Option<Vec<String>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .ok()?;
    let mut best: Option<Vec<String>> = None;
    for kind in [ExtractKind::Prefix, ExtractKind::Suffix] {
        let mut ex = Extractor::new();
        ex.kind(kind).limit_total(64);
        let seq = ex.extract(&hir);
        let lits = seq.literals()?;
        if lits.is_empty() {
            continue;
        }
        let mut out = Vec::with_capacity(lits.len());
        for l in lits {
            let text = std::str::from_utf8(l.as_bytes()).ok()?;
            if text.chars().count() < 3 {
                out.clear();
                break;
            }
            out.push(lowered(text));
        }
        if out.is_empty() {
            continue;
        }
        out.sort();
        out.dedup();
        let min = out.iter().map(String::len).min().unwrap_or(0);
        if best
            .as_ref()
            .is_none_or(|b| min > b.iter().map(String::len).min().unwrap_or(0))
        {
            best = Some(out);
        }
    }
    best
}

/// Substring search without per-call setup: memchr to the candidates for the needle's
/// first byte, then compare. Event values are short, so this beats building a searcher.
#[inline]
fn contains(hay: &[u8], needle: &[u8], rare: usize) -> bool {
    if needle.is_empty() {
        return true;
    }
    if hay.len() < needle.len() {
        return false;
    }
    let byte = needle[rare];
    // The rare byte can only sit where the whole needle still fits around it.
    let (lo, hi) = (rare, hay.len() - (needle.len() - rare));
    let mut i = lo;
    while i <= hi {
        match memchr::memchr(byte, &hay[i..=hi]) {
            Some(off) => {
                let start = i + off - rare;
                if &hay[start..start + needle.len()] == needle {
                    return true;
                }
                i += off + 1;
            }
            None => return false,
        }
    }
    false
}

/// Index of the needle byte least likely to occur in event text (a fixed ranking of bytes
/// common in paths, command lines and English), so that memchr stops rarely.
fn rarest_byte(needle: &[u8]) -> usize {
    const COMMON: &[u8] = b" \\etaoinsrlcmdhpu.:/-_\"0123456789xwgfbyvk,=;'()";
    let rank = |b: u8| {
        COMMON
            .iter()
            .position(|&c| c == b)
            .map_or(0, |p| COMMON.len() - p)
    };
    needle
        .iter()
        .enumerate()
        .min_by_key(|&(_, &b)| rank(b))
        .map_or(0, |(i, _)| i)
}

fn cidr_contains(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            (u32::from(n) & mask) == (u32::from(i) & mask)
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits))
            };
            (u128::from(n) & mask) == (u128::from(i) & mask)
        }
        _ => false,
    }
}

fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IP network (like 10.0.0.0/8 or fe80::/10)"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        Some(b) => b
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|b| *b <= max)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        None => max,
    };
    Ok((ip, bits))
}

/// The modifiers of one field entry, sorted by role.
#[derive(Debug, Default)]
pub(crate) struct Modifiers {
    pub contains: bool,
    pub startswith: bool,
    pub endswith: bool,
    pub all: bool,
    pub cased: bool,
    pub exists: bool,
    pub fieldref: bool,
    pub re: bool,
    pub re_flags: (bool, bool, bool),
    pub cidr: bool,
    pub cmp: Option<CmpOp>,
    /// Transformations, in order.
    pub transforms: Vec<Transform>,
}

/// A value transformation modifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transform {
    Base64,
    Base64Offset,
    Utf16Le,
    Utf16Be,
    Utf16Bom,
    Windash,
    Expand,
}

impl Modifiers {
    pub(crate) fn parse(mods: &[String]) -> Result<Self, String> {
        let mut m = Modifiers::default();
        for name in mods {
            match name.as_str() {
                "contains" => m.contains = true,
                "startswith" => m.startswith = true,
                "endswith" => m.endswith = true,
                "all" => m.all = true,
                "cased" => m.cased = true,
                "exists" => m.exists = true,
                "fieldref" => m.fieldref = true,
                "re" => m.re = true,
                "i" | "ignorecase" if m.re => m.re_flags.0 = true,
                "m" | "multiline" if m.re => m.re_flags.1 = true,
                "s" | "dotall" if m.re => m.re_flags.2 = true,
                "cidr" => m.cidr = true,
                "lt" => m.cmp = Some(CmpOp::Lt),
                "lte" => m.cmp = Some(CmpOp::Lte),
                "gt" => m.cmp = Some(CmpOp::Gt),
                "gte" => m.cmp = Some(CmpOp::Gte),
                "base64" => m.transforms.push(Transform::Base64),
                "base64offset" => m.transforms.push(Transform::Base64Offset),
                "wide" | "utf16le" => m.transforms.push(Transform::Utf16Le),
                "utf16be" => m.transforms.push(Transform::Utf16Be),
                "utf16" => m.transforms.push(Transform::Utf16Bom),
                "windash" => m.transforms.push(Transform::Windash),
                "expand" => m.transforms.push(Transform::Expand),
                "i" | "m" | "s" => {
                    return Err(format!(
                        "modifier `{name}` is a regular expression flag and needs `re` before it"
                    ));
                }
                other => return Err(format!("unknown modifier `{other}`")),
            }
        }
        let kinds = [
            m.contains || m.startswith || m.endswith,
            m.re,
            m.cidr,
            m.cmp.is_some(),
            m.exists,
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if kinds > 1 || (m.contains as u8 + m.startswith as u8 + m.endswith as u8) > 1 {
            return Err(format!("modifiers `{}` cannot be combined", mods.join("|")));
        }
        if (m.re || m.cidr || m.cmp.is_some() || m.exists) && !m.transforms.is_empty() {
            return Err(format!(
                "value transformations cannot be combined with `{}`",
                mods.join("|")
            ));
        }
        Ok(m)
    }
}

/// A string on its way through the transformation modifiers.
enum Variant {
    Pieces(Vec<Piece>),
    Bytes(Vec<u8>),
}

fn literal_only(p: &[Piece], what: &str) -> Result<String, String> {
    let mut s = String::new();
    for piece in p {
        match piece {
            Piece::Lit(l) => s.push_str(l),
            _ => return Err(format!("`{what}` cannot encode a value with wildcards")),
        }
    }
    Ok(s)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Applies one transformation to every variant.
fn apply(
    t: Transform,
    vars: Vec<Variant>,
    placeholders: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<Vec<Variant>, String> {
    let mut out = Vec::new();
    for v in vars {
        match (t, v) {
            (Transform::Base64, Variant::Pieces(p)) => out.push(Variant::Pieces(vec![Piece::Lit(
                b64(literal_only(&p, "base64")?.as_bytes()),
            )])),
            (Transform::Base64, Variant::Bytes(b)) => {
                out.push(Variant::Pieces(vec![Piece::Lit(b64(&b))]))
            }
            (Transform::Base64Offset, v) => {
                let bytes = match v {
                    Variant::Pieces(p) => literal_only(&p, "base64offset")?.into_bytes(),
                    Variant::Bytes(b) => b,
                };
                const START: [usize; 3] = [0, 2, 3];
                const END_TRIM: [usize; 3] = [0, 3, 2];
                for (i, start) in START.iter().enumerate() {
                    let mut input = vec![b' '; i];
                    input.extend_from_slice(&bytes);
                    let enc = b64(&input);
                    let trim = END_TRIM[(bytes.len() + i) % 3];
                    let end = enc.len().saturating_sub(trim);
                    if *start < end {
                        out.push(Variant::Pieces(vec![Piece::Lit(
                            enc[*start..end].to_string(),
                        )]));
                    }
                }
            }
            (Transform::Utf16Le | Transform::Utf16Be | Transform::Utf16Bom, Variant::Pieces(p)) => {
                let s = literal_only(&p, "utf16")?;
                let mut b = Vec::with_capacity(s.len() * 2 + 2);
                if t == Transform::Utf16Bom {
                    b.extend_from_slice(&[0xFF, 0xFE]);
                }
                for u in s.encode_utf16() {
                    if t == Transform::Utf16Be {
                        b.extend_from_slice(&u.to_be_bytes());
                    } else {
                        b.extend_from_slice(&u.to_le_bytes());
                    }
                }
                out.push(Variant::Bytes(b));
            }
            (Transform::Windash, Variant::Pieces(p)) => windash(&p, &mut out)?,
            (Transform::Expand, Variant::Pieces(p)) => expand(&p, placeholders, &mut out)?,
            (t, Variant::Bytes(_)) => {
                return Err(format!(
                    "`{t:?}` cannot follow a utf16 modifier (use base64 or base64offset)"
                )
                .to_lowercase());
            }
        }
        if out.len() > MAX_VARIANTS {
            return Err(format!(
                "value expands to more than {MAX_VARIANTS} variants"
            ));
        }
    }
    Ok(out)
}

const DASHES: [char; 5] = ['-', '/', '\u{2013}', '\u{2014}', '\u{2015}'];

/// `windash`: a dash or slash that starts an option (`-enc`, `/enc`) may be any of the
/// characters Windows command lines accept there.
fn windash(p: &[Piece], out: &mut Vec<Variant>) -> Result<(), String> {
    let mut acc: Vec<Vec<Piece>> = vec![Vec::new()];
    let mut prev_word = false;
    for piece in p {
        match piece {
            Piece::Lit(l) => {
                // Split the literal at option dashes; each dash becomes a choice.
                let chars: Vec<char> = l.chars().collect();
                let mut seg = String::new();
                let mut segs: Vec<Result<String, ()>> = Vec::new();
                for (i, &c) in chars.iter().enumerate() {
                    let next_word = chars
                        .get(i + 1)
                        .is_some_and(|n| n.is_alphanumeric() || *n == '_');
                    if (c == '-' || c == '/') && !prev_word && next_word {
                        segs.push(Ok(std::mem::take(&mut seg)));
                        segs.push(Err(()));
                    } else {
                        seg.push(c);
                    }
                    prev_word = c.is_alphanumeric() || c == '_';
                }
                segs.push(Ok(seg));
                for s in segs {
                    match s {
                        Ok(text) if !text.is_empty() => {
                            for a in &mut acc {
                                push_lit(a, &text);
                            }
                        }
                        Ok(_) => {}
                        Err(()) => {
                            let mut next = Vec::with_capacity(acc.len() * DASHES.len());
                            for a in &acc {
                                for d in DASHES {
                                    let mut b = a.clone();
                                    push_lit(&mut b, &d.to_string());
                                    next.push(b);
                                }
                            }
                            acc = next;
                            if acc.len() > MAX_VARIANTS {
                                return Err(format!(
                                    "windash expands to more than {MAX_VARIANTS} variants"
                                ));
                            }
                        }
                    }
                }
            }
            other => {
                prev_word = false;
                for a in &mut acc {
                    a.push(other.clone());
                }
            }
        }
    }
    out.extend(acc.into_iter().map(Variant::Pieces));
    Ok(())
}

fn push_lit(v: &mut Vec<Piece>, s: &str) {
    if let Some(Piece::Lit(last)) = v.last_mut() {
        last.push_str(s);
    } else {
        v.push(Piece::Lit(s.to_string()));
    }
}

/// `expand`: replaces `%name%` placeholders by their configured values.
fn expand(
    p: &[Piece],
    placeholders: &dyn Fn(&str) -> Option<Vec<String>>,
    out: &mut Vec<Variant>,
) -> Result<(), String> {
    let mut acc: Vec<Vec<Piece>> = vec![Vec::new()];
    for piece in p {
        let Piece::Lit(l) = piece else {
            for a in &mut acc {
                a.push(piece.clone());
            }
            continue;
        };
        let mut rest = l.as_str();
        while let Some(start) = rest.find('%') {
            let Some(len) = rest[start + 1..].find('%') else {
                break;
            };
            let name = &rest[start + 1..start + 1 + len];
            let before = &rest[..start];
            if !before.is_empty() {
                for a in &mut acc {
                    push_lit(a, before);
                }
            }
            let values = placeholders(name).ok_or_else(|| {
                format!("placeholder %{name}% has no value (define it in a placeholders file)")
            })?;
            let mut next = Vec::new();
            for a in &acc {
                for v in &values {
                    let mut b = a.clone();
                    for vp in parse_sigma_string(v) {
                        match vp {
                            Piece::Lit(t) => push_lit(&mut b, &t),
                            other => b.push(other),
                        }
                    }
                    next.push(b);
                }
            }
            acc = next;
            if acc.len() > MAX_VARIANTS {
                return Err(format!("expand produces more than {MAX_VARIANTS} variants"));
            }
            rest = &rest[start + 2 + len..];
        }
        if !rest.is_empty() {
            for a in &mut acc {
                push_lit(a, rest);
            }
        }
    }
    out.extend(acc.into_iter().map(Variant::Pieces));
    Ok(())
}

/// Normalises pieces: merges adjacent literals, collapses runs of `*`.
fn normalise(p: Vec<Piece>) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::with_capacity(p.len());
    for piece in p {
        match (&piece, out.last_mut()) {
            (Piece::Lit(l), Some(Piece::Lit(prev))) => prev.push_str(l),
            (Piece::Lit(l), _) if l.is_empty() => {}
            (Piece::Star, Some(Piece::Star)) => {}
            _ => out.push(piece),
        }
    }
    out
}

fn string_matcher(pieces: Vec<Piece>, cased: bool) -> Result<ValueMatcher, String> {
    let p = normalise(pieces);
    let case = |s: &str| if cased { s.to_string() } else { lowered(s) };
    let m = match p.as_slice() {
        [] => StrMatch::Eq(String::new()),
        [Piece::Lit(l)] => StrMatch::Eq(case(l)),
        [Piece::Star] => StrMatch::Any,
        [Piece::Lit(l), Piece::Star] => StrMatch::Prefix(case(l)),
        [Piece::Star, Piece::Lit(l)] => StrMatch::Suffix(case(l)),
        [Piece::Star, Piece::Lit(l), Piece::Star] => {
            let n = case(l);
            let rare = rarest_byte(n.as_bytes());
            StrMatch::Contains(n, rare)
        }
        _ => {
            let mut longest = String::new();
            let pieces: Vec<Piece> = p
                .into_iter()
                .map(|piece| match piece {
                    Piece::Lit(l) => {
                        let l = case(&l);
                        if l.len() > longest.len() {
                            longest = l.clone();
                        }
                        Piece::Lit(l)
                    }
                    other => other,
                })
                .collect();
            StrMatch::Glob(pieces, if cased { lowered(&longest) } else { longest })
        }
    };
    Ok(ValueMatcher::Str { m, cased })
}

/// Compiles the values of one field entry under its modifiers.
pub(crate) fn compile_values(
    mods: &Modifiers,
    values: &[Scalar],
    placeholders: &dyn Fn(&str) -> Option<Vec<String>>,
) -> Result<Vec<ValueMatcher>, String> {
    let mut out = Vec::new();
    for v in values {
        if let Scalar::Null = v {
            if mods.transforms.is_empty() && !mods.re && !mods.cidr && mods.cmp.is_none() {
                out.push(ValueMatcher::Null);
                continue;
            }
            return Err("null cannot be used with these modifiers".into());
        }
        let text = match v {
            Scalar::Str(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.clone(),
            Scalar::Bool(b) => b.to_string(),
            Scalar::Null => unreachable!("handled above"),
        };
        if mods.re {
            let (i, m, s) = mods.re_flags;
            let re = regex::RegexBuilder::new(&text)
                .case_insensitive(i)
                .multi_line(m)
                .dot_matches_new_line(s)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| {
                    let msg = e.to_string();
                    if msg.contains("look-around") || msg.contains("backreference") {
                        format!("regular expression {text:?} uses look-around or backreferences, which cannot run in linear time")
                    } else {
                        format!("invalid regular expression {text:?}: {}", msg.lines().last().unwrap_or_default())
                    }
                })?;
            out.push(ValueMatcher::Regex(re));
            continue;
        }
        if mods.cidr {
            let (ip, bits) = parse_cidr(&text)?;
            out.push(ValueMatcher::Cidr(ip, bits));
            continue;
        }
        if let Some(op) = mods.cmp {
            let n: f64 = text
                .trim()
                .parse()
                .map_err(|_| format!("{text:?} is not a number"))?;
            out.push(ValueMatcher::Num(op, n));
            continue;
        }
        // Numbers and booleans are plain text: no wildcard parsing.
        let pieces = match v {
            Scalar::Str(s) => parse_sigma_string(s),
            _ => vec![Piece::Lit(text)],
        };
        let mut vars = vec![Variant::Pieces(pieces)];
        for t in &mods.transforms {
            vars = apply(*t, vars, placeholders)?;
        }
        for var in vars {
            let Variant::Pieces(mut p) = var else {
                return Err("utf16 modifiers must be followed by base64 or base64offset".into());
            };
            if (mods.contains || mods.endswith) && p.first() != Some(&Piece::Star) {
                p.insert(0, Piece::Star);
            }
            if (mods.contains || mods.startswith) && p.last() != Some(&Piece::Star) {
                p.push(Piece::Star);
            }
            out.push(string_matcher(p, mods.cased)?);
        }
    }
    if out.is_empty() {
        if mods.transforms.contains(&Transform::Expand) {
            // Every placeholder was configured with an empty list: nothing matches.
            out.push(ValueMatcher::Never);
        } else {
            return Err("no values".into());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(mods: &[&str], values: &[&str]) -> Result<Vec<ValueMatcher>, String> {
        let m = Modifiers::parse(&mods.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let v: Vec<Scalar> = values.iter().map(|s| Scalar::Str(s.to_string())).collect();
        compile_values(&m, &v, &|name| {
            (name == "admins").then(|| vec!["root".into(), "adm*".into()])
        })
    }

    fn any(ms: &[ValueMatcher], value: &str) -> bool {
        let low = lowered(value);
        ms.iter().any(|m| m.matches(value, &low))
    }

    #[test]
    fn wildcards_and_escapes() {
        assert_eq!(
            parse_sigma_string(r"C:\Windows\*.exe"),
            vec![Piece::Lit(r"C:\Windows*.exe".into())]
        );
        assert_eq!(
            parse_sigma_string(r"C:\Windows\\*.exe"),
            vec![
                Piece::Lit(r"C:\Windows\".into()),
                Piece::Star,
                Piece::Lit(".exe".into())
            ]
        );
        let m = compile(&[], &[r"C:\Windows\\*\cmd.?xe"]).unwrap();
        assert!(any(&m, r"c:\windows\system32\CMD.exe"));
        assert!(any(&m, r"c:\windows\a\cmd.exe\b\cmd.exe"));
        assert!(!any(&m, r"c:\windows\system32\cmd.exe.bak"));
        assert!(!any(&m, r"d:\windows\system32\cmd.exe"));
        let m = compile(&[], &["a?c*é?"]).unwrap();
        assert!(any(&m, "abcxxéé") && any(&m, "aécé€") && !any(&m, "abcé"));
    }

    #[test]
    fn globs_backtrack_and_respect_chars() {
        let m = compile(&[], &[r"C:\Windows\\*\cmd.?xe"]).unwrap();
        assert!(any(&m, r"c:\windows\a\cmd.exe\b\cmd.exe"));
        assert!(!any(&m, r"d:\windows\system32\cmd.exe"));
        let m = compile(&[], &["a?c*é?"]).unwrap();
        assert!(any(&m, "abcxxéé") && any(&m, "aécé€") && !any(&m, "abcé"));
        let m = compile(&[], &["*a*a*a*a*b"]).unwrap();
        assert!(!any(&m, &"a".repeat(2000)));
        assert!(any(&m, &format!("{}b", "a".repeat(2000))));
    }

    #[test]
    fn substring_search_by_rare_byte() {
        for (hay, needle, want) in [
            ("c:\\windows\\system32\\cmd.exe", "\\system32\\", true),
            ("abc", "abcd", false),
            ("xxabc", "abc", true),
            ("abcxx", "abc", true),
            ("ab", "", true),
            ("zzzzqzzzz", "q", true),
            ("aaaa", "aab", false),
        ] {
            let rare = rarest_byte(needle.as_bytes());
            assert_eq!(
                contains(hay.as_bytes(), needle.as_bytes(), rare),
                want,
                "{hay} / {needle}"
            );
        }
    }

    #[test]
    fn contains_startswith_endswith_case() {
        let m = compile(&["endswith"], &[r"\cmd.exe"]).unwrap();
        assert!(any(&m, r"C:\Windows\System32\CMD.EXE"));
        assert!(!any(&m, r"C:\cmd.exe.txt"));
        let m = compile(&["contains", "cased"], &["Invoke-"]).unwrap();
        assert!(any(&m, "x Invoke-Mimikatz"));
        assert!(!any(&m, "x invoke-mimikatz"));
        let m = compile(&["startswith"], &["ÉTÉ"]).unwrap();
        assert!(any(&m, "été 2024"));
    }

    #[test]
    fn base64_and_offsets() {
        let m = compile(&["base64"], &["http"]).unwrap();
        assert!(any(&m, "aHR0cA=="));
        // Every offset of "whoami" inside a base64 blob is found.
        let m = compile(&["base64offset", "contains"], &["whoami"]).unwrap();
        assert_eq!(m.len(), 3);
        for prefix in ["", "a", "ab", "abc"] {
            let enc = b64(format!("{prefix}whoami /all").as_bytes());
            assert!(any(&m, &enc), "{prefix}: {enc}");
        }
        let m = compile(&["wide", "base64offset", "contains"], &["ping"]).unwrap();
        let utf16: Vec<u8> = "x ping y"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        assert!(any(&m, &b64(&utf16)));
        assert!(compile(&["wide"], &["x"]).unwrap_err().contains("base64"));
        assert!(
            compile(&["base64"], &["a*"])
                .unwrap_err()
                .contains("wildcards")
        );
    }

    #[test]
    fn windash_variants() {
        let m = compile(&["contains", "windash"], &[" -enc "]).unwrap();
        assert_eq!(m.len(), 5);
        assert!(any(&m, "powershell /enc AAA"));
        assert!(any(&m, "powershell \u{2013}enc AAA"));
        assert!(!any(&m, "powershell enc AAA"));
        // A dash inside a word is not an option dash.
        let m = compile(&["contains", "windash"], &["x-ray"]).unwrap();
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn regex_cidr_numbers() {
        let m = compile(&["re"], &["^a.c$"]).unwrap();
        assert!(any(&m, "abc"));
        assert!(!any(&m, "ABC"));
        let m = compile(&["re", "i"], &["^a.c$"]).unwrap();
        assert!(any(&m, "ABC"));
        assert!(
            compile(&["re"], &["(?<=a)b"])
                .unwrap_err()
                .contains("linear time")
        );
        assert!(
            compile(&["re"], &["(a"])
                .unwrap_err()
                .contains("invalid regular expression")
        );
        let m = compile(&["cidr"], &["10.0.0.0/8", "fe80::/10"]).unwrap();
        assert!(any(&m, "10.1.2.3"));
        assert!(any(&m, "fe80::1"));
        assert!(!any(&m, "11.0.0.1"));
        assert!(!any(&m, "not an ip"));
        assert!(compile(&["cidr"], &["10.0.0.0/33"]).is_err());
        let m = compile(&["gte"], &["10"]).unwrap();
        assert!(any(&m, "10") && any(&m, "11.5") && !any(&m, "9") && !any(&m, "x"));
    }

    #[test]
    fn expand_placeholders() {
        let m = compile(&["expand"], &["%admins%"]).unwrap();
        assert!(any(&m, "root") && any(&m, "admin") && !any(&m, "bob"));
        assert!(
            compile(&["expand"], &["%nobody%"])
                .unwrap_err()
                .contains("no value")
        );
    }

    #[test]
    fn modifier_errors() {
        assert!(compile(&["contains", "startswith"], &["a"]).is_err());
        assert!(
            compile(&["bogus"], &["a"])
                .unwrap_err()
                .contains("unknown modifier")
        );
        assert!(compile(&["i"], &["a"]).unwrap_err().contains("needs `re`"));
        assert!(compile(&["re", "base64"], &["a"]).is_err());
    }

    #[test]
    fn literals_for_prefilter() {
        let m = compile(&["contains"], &["MiMi"]).unwrap();
        assert_eq!(m[0].literal().as_deref(), Some("mimi"));
        let m = compile(&[], &["a*longer*b"]).unwrap();
        assert_eq!(m[0].literal().as_deref(), Some("longer"));
        let m = compile(&["re"], &["x"]).unwrap();
        assert_eq!(m[0].literal(), None);
    }
}
