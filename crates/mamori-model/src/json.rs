//! A small pull reader for JSON text, for the three passes every event takes on the server.
//!
//! Each event is read three times: checked when it arrives (a batch with a broken event is
//! refused before it is acknowledged), walked by detection ([`crate::walk`]), and read into
//! columns by the compactor. Through serde each pass paid for visitor calls, a UTF-8 check
//! per string and an owned key per field. [`Reader`] checks the text's UTF-8 once, finds
//! string ends eight bytes at a time, and hands out strings as slices of the input
//! ([`Text`]), decoding escapes only where the caller asks.
//!
//! It accepts exactly the JSON that `serde_json` parses into a `Value` (RFC 8259: no
//! trailing commas, no comments, no lone surrogates, no number outside `f64`, nesting at
//! most [`MAX_DEPTH`] deep), which the tests check against `serde_json` on mutated text.

use std::borrow::Cow;
use std::fmt;

/// The deepest nesting of arrays and objects accepted (`serde_json`'s limit).
pub const MAX_DEPTH: usize = 127;

/// Why the text is not JSON, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What was wrong.
    pub what: &'static str,
    /// The byte offset where it was found.
    pub at: usize,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for Error {}

/// Why a key that serde_json reads specially is refused ([`Error::what`]).
pub const RESERVED_KEY: &str = "a key serde_json reserves ($serde_json::private::…)";

/// serde_json reads an object whose first key is `$serde_json::private::RawValue` as the JSON
/// text in its value (the `raw_value` feature, which axum turns on), and a `…::Number` one
/// as a number (`arbitrary_precision`): the tree would hold something else than the text.
/// No event has such a key; one that does is refused, so that what ingest accepts reads
/// the same to the store, the walk and the tree.
#[inline(always)]
fn reserved(key: &Text<'_>) -> bool {
    // Every spelling of the prefix starts with `$` or with an escape (`\u0024`): other keys
    // (nearly all) are told apart by their first byte.
    matches!(key.raw.as_bytes().first(), Some(b'$' | b'\\')) && reserved_prefix(key)
}

#[cold]
#[inline(never)]
fn reserved_prefix(key: &Text<'_>) -> bool {
    const PREFIX: &str = "$serde_json::private::";
    match key.plain() {
        Some(k) => k.starts_with(PREFIX),
        None => key.decoded().starts_with(PREFIX),
    }
}

/// Checks that `raw` is one JSON value, with nothing but whitespace around it.
pub fn validate(raw: &[u8]) -> Result<(), Error> {
    let mut r = Reader::new(raw)?;
    r.skip_value()?;
    r.end()
}

/// A string as it stands between its quotes, escapes not yet decoded (but checked).
#[derive(Debug, Clone, Copy)]
pub struct Text<'a> {
    raw: &'a str,
    escaped: bool,
}

impl<'a> Text<'a> {
    /// The string itself, when it has no escapes.
    pub fn plain(&self) -> Option<&'a str> {
        (!self.escaped).then_some(self.raw)
    }

    /// The string, decoded: borrowed from the input unless it has escapes.
    pub fn decoded(&self) -> Cow<'a, str> {
        if self.escaped {
            let mut s = String::with_capacity(self.raw.len());
            self.decode_into(&mut s);
            Cow::Owned(s)
        } else {
            Cow::Borrowed(self.raw)
        }
    }

    /// Appends the decoded string to `out`.
    pub fn decode_into(&self, out: &mut String) {
        if !self.escaped {
            out.push_str(self.raw);
            return;
        }
        let mut rest = self.raw;
        while let Some(i) = rest.find('\\') {
            out.push_str(&rest[..i]);
            let b = rest.as_bytes();
            let (c, used) = match b.get(i + 1) {
                Some(b'u') => {
                    let hi = hex4(&b[i + 2..]).unwrap_or(0xFFFD);
                    if (0xD800..0xDC00).contains(&hi) {
                        // The reader checked that a low surrogate follows.
                        let lo = hex4(b.get(i + 8..).unwrap_or_default()).unwrap_or(0xDC00);
                        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF);
                        (char::from_u32(c), 12)
                    } else {
                        (char::from_u32(hi), 6)
                    }
                }
                Some(&e) => (Some(unescape(e)), 2),
                None => (None, 1),
            };
            out.push(c.unwrap_or('\u{FFFD}'));
            rest = rest.get(i + used..).unwrap_or_default();
        }
        out.push_str(rest);
    }
}

fn unescape(e: u8) -> char {
    match e {
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        other => other as char,
    }
}

/// Four hex digits as a number.
fn hex4(b: &[u8]) -> Option<u32> {
    let d = b.get(..4)?;
    let mut n = 0;
    for &c in d {
        n = n * 16 + (c as char).to_digit(16)?;
    }
    Some(n)
}

/// What kind of value comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `{`
    Object,
    /// `[`
    Array,
    /// `"`
    String,
    /// A digit or `-`.
    Number,
    /// `true` or `false`.
    Bool,
    /// `null`.
    Null,
}

/// A cursor over one JSON text. Objects are read as
/// `if r.object_start()? { loop { r.key()?; <the value>; if !r.object_next()? { break } } }`,
/// arrays likewise with `array_start` and `array_next`.
#[derive(Debug)]
pub struct Reader<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `x` that is `"`, `\` or a control character; the lowest
/// set bit marks the first such byte exactly.
#[inline]
fn specials(x: u64) -> u64 {
    let quote = x ^ (ONES * b'"' as u64);
    let backslash = x ^ (ONES * b'\\' as u64);
    ((quote.wrapping_sub(ONES) & !quote)
        | (backslash.wrapping_sub(ONES) & !backslash)
        | (x.wrapping_sub(ONES * 0x20) & !x))
        & HIGHS
}

impl<'a> Reader<'a> {
    /// A reader at the start of `raw`, which must be UTF-8.
    pub fn new(raw: &'a [u8]) -> Result<Reader<'a>, Error> {
        let text = std::str::from_utf8(raw).map_err(|e| Error {
            what: "not UTF-8",
            at: e.valid_up_to(),
        })?;
        Ok(Reader::of_text(text))
    }

    /// A reader at the start of `text` (already known to be UTF-8).
    pub fn of_text(text: &'a str) -> Reader<'a> {
        Reader {
            text,
            pos: 0,
            depth: 0,
        }
    }

    /// The whole text being read.
    pub fn text(&self) -> &'a str {
        self.text
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn err<T>(&self, what: &'static str) -> Result<T, Error> {
        Err(Error { what, at: self.pos })
    }

    /// The next byte after whitespace, not consumed.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        let b = self.bytes();
        while let Some(&c) = b.get(self.pos) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(c);
            }
            self.pos += 1;
        }
        None
    }

    /// The kind of the next value.
    pub fn kind(&mut self) -> Result<Kind, Error> {
        Ok(match self.peek() {
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b'"') => Kind::String,
            Some(b'-' | b'0'..=b'9') => Kind::Number,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'n') => Kind::Null,
            Some(_) => return self.err("expected a value"),
            None => return self.err("EOF while parsing a value"),
        })
    }

    /// Nothing but whitespace is left.
    pub fn end(&mut self) -> Result<(), Error> {
        match self.peek() {
            None => Ok(()),
            Some(_) => self.err("trailing characters"),
        }
    }

    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), Error> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            self.err(what)
        }
    }

    fn enter(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.err("nested too deeply");
        }
        Ok(())
    }

    /// Reads `{`; whether the object has fields (if not, its `}` is read too).
    pub fn object_start(&mut self) -> Result<bool, Error> {
        self.open(b'{', b'}', "expected an object")
    }

    /// Reads a key and its `:`.
    #[inline]
    pub fn key(&mut self) -> Result<Text<'a>, Error> {
        match self.peek() {
            Some(b'"') => {}
            Some(_) => return self.err("expected a key"),
            None => return self.err("EOF while parsing an object"),
        }
        let at = self.pos;
        let k = self.string()?;
        if reserved(&k) {
            self.pos = at;
            return self.err(RESERVED_KEY);
        }
        self.expect(b':', "expected ':'")?;
        Ok(k)
    }

    /// After a field's value: `,` (another field follows: `true`) or `}` (`false`).
    pub fn object_next(&mut self) -> Result<bool, Error> {
        self.next_or_close(b'}', "expected ',' or '}'", "EOF while parsing an object")
    }

    /// Reads `[`; whether the array has elements (if not, its `]` is read too).
    pub fn array_start(&mut self) -> Result<bool, Error> {
        self.open(b'[', b']', "expected an array")
    }

    /// After an element: `,` (another follows: `true`) or `]` (`false`).
    pub fn array_next(&mut self) -> Result<bool, Error> {
        self.next_or_close(b']', "expected ',' or ']'", "EOF while parsing an array")
    }

    /// Reads `open`, one level deeper; whether something follows before `close` (if
    /// nothing does, `close` is read too).
    fn open(&mut self, open: u8, close: u8, what: &'static str) -> Result<bool, Error> {
        self.expect(open, what)?;
        self.enter()?;
        if self.peek() == Some(close) {
            self.pos += 1;
            self.depth -= 1;
            return Ok(false);
        }
        Ok(true)
    }

    /// `,` (`true`: more follows) or `close` (`false`: one level up).
    fn next_or_close(
        &mut self,
        close: u8,
        what: &'static str,
        eof: &'static str,
    ) -> Result<bool, Error> {
        match self.peek() {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(c) if c == close => {
                self.pos += 1;
                self.depth -= 1;
                Ok(false)
            }
            Some(_) => self.err(what),
            None => self.err(eof),
        }
    }

    /// Reads a string.
    #[inline(always)]
    pub fn string(&mut self) -> Result<Text<'a>, Error> {
        self.expect(b'"', "expected a string")?;
        let b = self.bytes();
        let start = self.pos;
        let mut i = start;
        let mut escaped = false;
        loop {
            while let Some(chunk) = b.get(i..i + 8) {
                let m = specials(u64::from_le_bytes(chunk.try_into().unwrap_or_default()));
                if m != 0 {
                    i += (m.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            match b.get(i) {
                Some(b'"') => {
                    self.pos = i + 1;
                    return Ok(Text {
                        raw: &self.text[start..i],
                        escaped,
                    });
                }
                Some(b'\\') => {
                    escaped = true;
                    i = self.escape(i)?;
                }
                Some(&c) if c < 0x20 => {
                    self.pos = i;
                    return self.err("control character in a string");
                }
                Some(_) => i += 1,
                None => {
                    self.pos = i;
                    return self.err("EOF while parsing a string");
                }
            }
        }
    }

    /// Checks the escape whose `\` is at `i`; where the string goes on.
    #[cold]
    #[inline(never)]
    fn escape(&mut self, i: usize) -> Result<usize, Error> {
        let b = self.bytes();
        let fail = |this: &mut Self, at: usize, what| {
            this.pos = at;
            this.err(what)
        };
        match b.get(i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
            Some(b'u') => {
                let Some(hi) = hex4(&b[i + 2..]) else {
                    return fail(self, i, "invalid \\u escape");
                };
                match hi {
                    0xDC00..=0xDFFF => fail(self, i, "lone surrogate in a \\u escape"),
                    0xD800..=0xDBFF => {
                        let low = (b.get(i + 6..i + 8) == Some(b"\\u"))
                            .then(|| hex4(&b[i + 8..]))
                            .flatten();
                        match low {
                            Some(0xDC00..=0xDFFF) => Ok(i + 12),
                            _ => fail(self, i, "lone surrogate in a \\u escape"),
                        }
                    }
                    _ => Ok(i + 6),
                }
            }
            Some(_) => fail(self, i, "invalid escape"),
            None => fail(self, i, "EOF while parsing a string"),
        }
    }

    /// Reads a number; its text.
    pub fn number(&mut self) -> Result<&'a str, Error> {
        self.peek();
        let b = self.bytes();
        let start = self.pos;
        let mut i = start;
        let digits = |i: &mut usize| {
            let s = *i;
            while b.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i - s
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let int = i;
        match digits(&mut i) {
            0 => return self.fail_at(i, "invalid number"),
            n if n > 1 && b[int] == b'0' => return self.fail_at(int + 1, "invalid number"),
            _ => {}
        }
        let mut float = i - int > 18;
        if b.get(i) == Some(&b'.') {
            i += 1;
            if digits(&mut i) == 0 {
                return self.fail_at(i, "invalid number");
            }
            float = true;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            if digits(&mut i) == 0 {
                return self.fail_at(i, "invalid number");
            }
            float = true;
        }
        let text = &self.text[start..i];
        if float && !text.parse::<f64>().is_ok_and(f64::is_finite) {
            return self.fail_at(start, "number out of range");
        }
        self.pos = i;
        Ok(text)
    }

    fn fail_at<T>(&mut self, at: usize, what: &'static str) -> Result<T, Error> {
        self.pos = at;
        self.err(what)
    }

    /// Reads `true` or `false`.
    pub fn bool(&mut self) -> Result<bool, Error> {
        self.peek();
        let rest = &self.bytes()[self.pos..];
        if rest.starts_with(b"true") {
            self.pos += 4;
            Ok(true)
        } else if rest.starts_with(b"false") {
            self.pos += 5;
            Ok(false)
        } else {
            self.err("expected true or false")
        }
    }

    /// Reads `null`.
    pub fn null(&mut self) -> Result<(), Error> {
        self.peek();
        if self.bytes()[self.pos..].starts_with(b"null") {
            self.pos += 4;
            Ok(())
        } else {
            self.err("expected null")
        }
    }

    /// Reads the next value, whatever it is, checking it.
    pub fn skip_value(&mut self) -> Result<(), Error> {
        match self.kind()? {
            Kind::Object => {
                if self.object_start()? {
                    loop {
                        self.key()?;
                        self.skip_value()?;
                        if !self.object_next()? {
                            break;
                        }
                    }
                }
            }
            Kind::Array => {
                if self.array_start()? {
                    loop {
                        self.skip_value()?;
                        if !self.array_next()? {
                            break;
                        }
                    }
                }
            }
            Kind::String => {
                self.string()?;
            }
            Kind::Number => {
                self.number()?;
            }
            Kind::Bool => {
                self.bool()?;
            }
            Kind::Null => self.null()?,
        }
        Ok(())
    }
}

/// A number's text as `serde_json` holds it.
pub fn number(text: &str) -> Option<serde_json::Number> {
    // Plain non-negative integers, the common case, without serde_json's parser.
    if text.len() <= 19 && text.bytes().all(|c| c.is_ascii_digit()) {
        return text.parse::<u64>().ok().map(Into::into);
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// What the reader makes of a value, as a tree, to compare with serde_json's.
    fn tree(r: &mut Reader<'_>) -> Result<Value, Error> {
        Ok(match r.kind()? {
            Kind::Object => {
                let mut m = serde_json::Map::new();
                if r.object_start()? {
                    loop {
                        let k = r.key()?.decoded().into_owned();
                        let v = tree(r)?;
                        m.insert(k, v);
                        if !r.object_next()? {
                            break;
                        }
                    }
                }
                Value::Object(m)
            }
            Kind::Array => {
                let mut a = Vec::new();
                if r.array_start()? {
                    loop {
                        a.push(tree(r)?);
                        if !r.array_next()? {
                            break;
                        }
                    }
                }
                Value::Array(a)
            }
            Kind::String => Value::String(r.string()?.decoded().into_owned()),
            Kind::Number => {
                let t = r.number()?;
                Value::Number(number(t).expect("a checked number converts"))
            }
            Kind::Bool => Value::Bool(r.bool()?),
            Kind::Null => {
                r.null()?;
                Value::Null
            }
        })
    }

    fn read(raw: &[u8]) -> Result<Value, Error> {
        let mut r = Reader::new(raw)?;
        let v = tree(&mut r)?;
        r.end()?;
        Ok(v)
    }

    #[test]
    fn reads_what_serde_json_reads() {
        for doc in [
            r#"{"a":"x","b":[1,-2,3.5,1e3,-0,0.0,true,false,null],"c":{"d":{}},"e":[]}"#,
            r#" { "s" : "tab\tq\"b\\s\/u\u00e9\ud83d\ude00\b\f\n\r" } "#,
            r#""just a string""#,
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "1e-400",
            "1.7976931348623157e308",
            r#"{"a":1,"a":2}"#,
            "0",
            "-0.0e-0",
            "\"caf\u{e9} \u{1F600} long enough to take several eight-byte steps\"",
        ] {
            let want: Value = serde_json::from_str(doc).unwrap();
            assert_eq!(read(doc.as_bytes()).unwrap(), want, "{doc}");
            assert!(validate(doc.as_bytes()).is_ok(), "{doc}");
        }
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for (doc, why) in [
            ("", "EOF"),
            ("{", "EOF"),
            (r#"{"a":1,}"#, "expected a key"),
            (r#"{"a" 1}"#, "':'"),
            ("[1,]", "expected a value"),
            ("[1 2]", "','"),
            ("01", "invalid number"),
            ("1.", "invalid number"),
            (".5", "expected a value"),
            ("-", "invalid number"),
            ("1e", "invalid number"),
            ("1e400", "out of range"),
            ("+1", "expected a value"),
            ("tru", "expected true"),
            ("nul", "expected null"),
            ("\"a", "EOF while parsing a string"),
            ("\"a\u{1}\"", "control character"),
            (r#""\x""#, "invalid escape"),
            (r#""\u12""#, "invalid \\u"),
            (r#""\ud800""#, "lone surrogate"),
            (r#""\ud800\u0041""#, "lone surrogate"),
            (r#""\udc00""#, "lone surrogate"),
            ("{} {}", "trailing"),
            ("[1]]", "trailing"),
            ("{/*c*/}", "expected a key"),
        ] {
            let e = validate(doc.as_bytes()).unwrap_err();
            assert!(e.what.contains(why), "{doc}: {e}");
            assert!(
                serde_json::from_str::<Value>(doc).is_err(),
                "serde_json takes {doc}"
            );
        }
        let e = validate(b"{\"a\":\"\xff\"}").unwrap_err();
        assert_eq!((e.what, e.at), ("not UTF-8", 6));
    }

    /// The fuzz target found this: serde_json reads `{"$serde_json::private::RawValue": T}`
    /// as the JSON text T, or refuses the document when T is not JSON, so the tree and the
    /// text disagree. Such keys are refused, however spelled and wherever they stand.
    #[test]
    fn keys_serde_json_reads_specially_are_refused() {
        let differs = r#"{"$serde_json::private::RawValue":"{\"a\":1}"}"#;
        let tree = serde_json::from_str::<Value>(differs).unwrap();
        assert_eq!(
            tree,
            serde_json::json!({"a": 1}),
            "serde_json reads another tree"
        );
        let fails = r#"{"$serde_json::private::RawValue":"not JSON"}"#;
        assert!(serde_json::from_str::<Value>(fails).is_err());
        for doc in [
            differs,
            fails,
            r#"{"a":{"$serde_json::private::Number":"1"}}"#,
            r#"{"a":1,"$serde_json::private::RawValue":2}"#,
            r#"[{"\u0024serde_json::private::RawValue":"1"}]"#,
            r#"{"$serde_json\u003a:private::RawValue":"1"}"#,
        ] {
            let e = validate(doc.as_bytes()).unwrap_err();
            assert_eq!(e.what, RESERVED_KEY, "{doc}");
        }
        // The same text as a value, or a key that only resembles it, is an ordinary string.
        for doc in [
            r#"{"a":"$serde_json::private::RawValue"}"#,
            r#"{"$serde_json::privat":1,"x$serde_json::private::":2}"#,
        ] {
            assert!(validate(doc.as_bytes()).is_ok(), "{doc}");
        }
    }

    #[test]
    fn nesting_stops_where_serde_json_stops() {
        for depth in [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 10_000] {
            let doc = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let ours = validate(doc.as_bytes()).is_ok();
            let theirs = serde_json::from_str::<Value>(&doc).is_ok();
            assert_eq!(ours, theirs, "depth {depth}");
            assert_eq!(ours, depth <= MAX_DEPTH, "depth {depth}");
        }
    }

    /// Mutated documents (bytes flipped, cut, spliced): the reader never panics, and takes
    /// exactly the text serde_json takes, reading the same tree from it.
    #[test]
    fn mutated_text_is_read_as_serde_json_reads_it() {
        let seeds: [&[u8]; 3] = [
            br#"{"@timestamp":"2026-11-26T10:00:00Z","event":{"category":["process"]},"process":{"pid":42,"args":["sh","-c","a\"b\u00e9\ud83d\ude00"],"n":-1.5e3,"z":null,"t":true,"f":false}}"#,
            br#"[0,-0,12345678901234567890,1.0e+2,"\\\/\b\f\n\r\t",[],{},[[{"a":[1]}]]]"#,
            "{\"k\u{e9}y\":\"\u{3042}\u{3044}\u{3046} and so on, a longer string\"}".as_bytes(),
        ];
        let mut rng = fastrand::Rng::with_seed(0x6a736f6e);
        let (mut read_ok, mut refused) = (0, 0);
        for round in 0..20_000 {
            let seed = seeds[round % seeds.len()];
            let v = crate::testing::mutate(&mut rng, seed, 24);
            let ours = read(&v);
            let theirs = serde_json::from_slice::<Value>(&v);
            assert_eq!(
                validate(&v).is_ok(),
                ours.is_ok(),
                "{}",
                String::from_utf8_lossy(&v)
            );
            match (ours, theirs) {
                (Ok(a), Ok(b)) => {
                    read_ok += 1;
                    assert_eq!(a, b, "{}", String::from_utf8_lossy(&v));
                }
                (Err(_), Err(_)) => refused += 1,
                (a, b) => panic!(
                    "{}: ours {a:?}, serde_json {b:?}",
                    String::from_utf8_lossy(&v)
                ),
            }
        }
        assert!(
            read_ok > 1000 && refused > 1000,
            "{read_ok} read, {refused} refused"
        );
    }
}
