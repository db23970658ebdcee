//! One pass over a JSON document's fields, without building a tree.
//!
//! Nearly every event the server handles is one of the sensor's ECS documents, and most of
//! them match nothing. Parsing each into a `serde_json::Value` allocates every key, string
//! and object only to be read once and freed. [`walk`] reads the text once and hands each
//! field to a callback under the dotted name [`Event::for_each_field`](crate::Event) gives
//! it (`process.parent.executable`), strings borrowed from the input where they have no
//! escapes.
//!
//! It reads exactly what the tree would hold, or gives up: a key with a dot in it (the tree
//! finds `a.b` both as a key and as a path), a key repeated in one object (the tree keeps
//! the last), an array holding arrays or objects (the tree prints those as JSON), text that
//! is not one JSON object. The caller then parses the tree as before.

use std::borrow::Cow;
use std::fmt;

use serde_json::Number;

use crate::json::{self, Kind, Reader};

/// A field's value as [`walk`] hands it over.
#[derive(Debug, Clone)]
pub enum Leaf<'a> {
    /// An object starts here; its fields follow under longer names.
    Object,
    /// A scalar.
    One(Item<'a>),
    /// An array of scalars.
    List(&'a [Item<'a>]),
}

/// A scalar: a field's value or an element of an array.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    /// A string, unescaped.
    Str(Cow<'a, str>),
    /// A number.
    Num(Number),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
}

impl Item<'_> {
    /// The string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Item::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Why [`walk`] gave up: the document must be read as a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp(pub String);

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not walked: {}", self.0)
    }
}

impl std::error::Error for GaveUp {}

/// What the callback says after each field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Go on.
    Go,
    /// Stop: [`walk`] returns [`GaveUp`].
    Stop,
}

/// Scratch space [`walk`] reuses between documents (names, sibling keys), so that a walk
/// allocates nothing once it has seen a document or two.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The dotted name of the field being read.
    name: String,
    /// The keys of the objects being read, for spotting repeats (objects are small, a look
    /// along the list is cheaper than hashing): ranges of the document, or of `key_text`
    /// for the rare key with escapes, which is decoded there.
    keys: Vec<KeyAt>,
    key_text: String,
    /// A string value with escapes, decoded.
    value: String,
}

/// Where a key read earlier in an object is.
#[derive(Debug, Clone, Copy)]
struct KeyAt {
    /// Byte offsets (documents are far under 4 GiB: `walk` gives up on larger ones).
    start: u32,
    end: u32,
    /// In `Scratch::key_text` (decoded), not in the document.
    decoded: bool,
}

/// Calls `f` with every field of the JSON object `raw`, in document order, named by dotted
/// path. See the module documentation for when it gives up; `f` may have seen some fields
/// by then.
pub fn walk(
    raw: &[u8],
    scratch: &mut Scratch,
    f: &mut dyn FnMut(&str, Leaf<'_>) -> Next,
) -> Result<(), GaveUp> {
    scratch.name.clear();
    scratch.keys.clear();
    scratch.key_text.clear();
    let r = Reader::new(raw).map_err(|e| GaveUp(e.to_string()))?;
    if u32::try_from(raw.len()).is_err() {
        return Err(GaveUp("a document over 4 GiB".into()));
    }
    let mut w = Walker {
        text: r.text(),
        r,
        scratch,
        f,
    };
    let walked = match w.r.kind() {
        Ok(Kind::Object) => w.object().and_then(|()| Ok(w.r.end()?)),
        Ok(_) => Err(Why::Not("not a JSON object")),
        Err(e) => Err(e.into()),
    };
    walked.map_err(|why| {
        GaveUp(match why {
            Why::Json(e) => e.to_string(),
            Why::Not(what) => what.to_string(),
        })
    })
}

/// Why a walk stopped.
enum Why {
    /// The text is not JSON.
    Json(json::Error),
    /// JSON, but not what a walk reads exactly (or the callback said stop).
    Not(&'static str),
}

impl From<json::Error> for Why {
    fn from(e: json::Error) -> Why {
        Why::Json(e)
    }
}

struct Walker<'a, 'w> {
    r: Reader<'a>,
    /// The document.
    text: &'a str,
    scratch: &'w mut Scratch,
    f: &'w mut dyn FnMut(&str, Leaf<'_>) -> Next,
}

fn call(f: &mut dyn FnMut(&str, Leaf<'_>) -> Next, name: &str, leaf: Leaf<'_>) -> Result<(), Why> {
    match f(name, leaf) {
        Next::Go => Ok(()),
        Next::Stop => Err(Why::Not("stopped")),
    }
}

fn number(text: &str) -> Result<Number, Why> {
    json::number(text).ok_or(Why::Not("a number JSON cannot hold"))
}

impl<'a> Walker<'a, '_> {
    /// Reads an object's fields (the reader is at its `{`).
    fn object(&mut self) -> Result<(), Why> {
        let (first_key, text_len) = (self.scratch.keys.len(), self.scratch.key_text.len());
        if self.r.object_start()? {
            loop {
                let key = self.r.key()?;
                let Scratch {
                    name,
                    keys,
                    key_text,
                    ..
                } = &mut *self.scratch;
                // A key without escapes (nearly all) is read where it stands.
                let (at, key) = match key.plain() {
                    Some(k) => {
                        let start = k.as_ptr() as usize - self.text.as_ptr() as usize;
                        let at = KeyAt {
                            start: start as u32,
                            end: (start + k.len()) as u32,
                            decoded: false,
                        };
                        (at, k)
                    }
                    None => {
                        let start = key_text.len();
                        key.decode_into(key_text);
                        let at = KeyAt {
                            start: start as u32,
                            end: key_text.len() as u32,
                            decoded: true,
                        };
                        (at, &key_text[start..])
                    }
                };
                if key.contains('.') {
                    return Err(Why::Not("a key with a dot"));
                }
                let text = self.text;
                let seen = |k: &KeyAt| {
                    let range = k.start as usize..k.end as usize;
                    if k.decoded {
                        &key_text[range]
                    } else {
                        &text[range]
                    }
                };
                if keys[first_key..]
                    .iter()
                    .any(|k| (k.end - k.start) as usize == key.len() && seen(k) == key)
                {
                    return Err(Why::Not("a repeated key"));
                }
                let len = name.len();
                if len > 0 {
                    name.push('.');
                }
                name.push_str(key);
                keys.push(at);
                self.field()?;
                self.scratch.name.truncate(len);
                if !self.r.object_next()? {
                    break;
                }
            }
        }
        self.scratch.keys.truncate(first_key);
        self.scratch.key_text.truncate(text_len);
        Ok(())
    }

    /// Reads a field's value under the name the scratch holds.
    fn field(&mut self) -> Result<(), Why> {
        let Scratch { name, value, .. } = &mut *self.scratch;
        let leaf = match self.r.kind()? {
            Kind::Object => {
                call(self.f, name, Leaf::Object)?;
                return self.object();
            }
            Kind::Array => return self.array(),
            Kind::String => {
                let text = self.r.string()?;
                let s = match text.plain() {
                    Some(s) => s,
                    None => {
                        value.clear();
                        text.decode_into(value);
                        value
                    }
                };
                Item::Str(Cow::Borrowed(s))
            }
            Kind::Number => Item::Num(number(self.r.number()?)?),
            Kind::Bool => Item::Bool(self.r.bool()?),
            Kind::Null => {
                self.r.null()?;
                Item::Null
            }
        };
        call(self.f, name, Leaf::One(leaf))
    }

    /// Reads an array of scalars.
    fn array(&mut self) -> Result<(), Why> {
        // Arrays in events are short (categories, types): held on the stack, unless long.
        let mut small: [Item<'a>; 8] = std::array::from_fn(|_| Item::Null);
        let (mut n, mut long) = (0, Vec::new());
        if self.r.array_start()? {
            loop {
                let item = match self.r.kind()? {
                    Kind::Object => return Err(Why::Not("an object in an array")),
                    Kind::Array => return Err(Why::Not("an array in an array")),
                    Kind::String => Item::Str(self.r.string()?.decoded()),
                    Kind::Number => Item::Num(number(self.r.number()?)?),
                    Kind::Bool => Item::Bool(self.r.bool()?),
                    Kind::Null => {
                        self.r.null()?;
                        Item::Null
                    }
                };
                if n < small.len() {
                    small[n] = item;
                    n += 1;
                } else {
                    if long.is_empty() {
                        long.extend(small.iter_mut().map(|i| std::mem::replace(i, Item::Null)));
                    }
                    long.push(item);
                }
                if !self.r.array_next()? {
                    break;
                }
            }
        }
        let items = if long.is_empty() { &small[..n] } else { &long };
        call(self.f, &self.scratch.name, Leaf::List(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Event, Shape};
    use serde_json::Value;

    /// The fields of `raw` as `walk` gives them, in the tree's terms.
    fn walked(raw: &str) -> Result<Vec<(String, Value)>, GaveUp> {
        let mut out = Vec::new();
        walk(
            raw.as_bytes(),
            &mut Scratch::default(),
            &mut |name, leaf| {
                let value = |i: &Item<'_>| match i {
                    Item::Str(s) => Value::String(s.to_string()),
                    Item::Num(n) => Value::Number(n.clone()),
                    Item::Bool(b) => Value::Bool(*b),
                    Item::Null => Value::Null,
                };
                let v = match leaf {
                    Leaf::Object => return Next::Go,
                    Leaf::One(i) => value(&i),
                    Leaf::List(items) => Value::Array(items.iter().map(value).collect()),
                };
                out.push((name.to_string(), v));
                Next::Go
            },
        )?;
        Ok(out)
    }

    fn flattened(raw: &str) -> Vec<(String, Value)> {
        let e = Event::with_shape(serde_json::from_str(raw).unwrap(), Shape::Ecs);
        let mut out = Vec::new();
        e.for_each_field(&mut |k, v| out.push((k.to_string(), v.clone())));
        out
    }

    #[test]
    fn fields_come_as_the_tree_flattens_them() {
        let doc = r#"{"@timestamp":"2026-11-26T10:00:00Z","event":{"category":["process"],
            "module":"mamori"},"process":{"pid":42,"args":["sh","-c","echo \"hi\"",1.5,null,true],
            "parent":{"pid":-1,"executable":"/bin/ba\u0073h"},"empty":{}},"n":18446744073709551615,
            "f":1e300,"b":false,"z":null,"s":"caf\u00e9","long":[1,2,3,4,5,6,7,8,"9","10",11]}"#;
        assert_eq!(walked(doc).unwrap(), flattened(doc));
    }

    #[test]
    fn gives_up_where_the_tree_reads_differently() {
        for (doc, why) in [
            (r#"{"a.b":1}"#, "dot"),
            (r#"{"a":{"b":1,"b":2}}"#, "repeated"),
            // A key with escapes is compared as it reads, either way round.
            (r#"{"ab":1,"a\u0062":2}"#, "repeated"),
            (r#"{"x":{"\u0061b":1,"ab":2}}"#, "repeated"),
            (r#"{"a\u002eb":1}"#, "dot"),
            (r#"{"a":[[1]]}"#, "array in an array"),
            (r#"{"a":[{"b":1}]}"#, "object in an array"),
            (r#"[1,2]"#, "not a JSON object"),
            (r#"{"a":1} x"#, "trailing"),
            (r#"{"a":"#, "EOF"),
            ("{\"a\":\"\\ud800\"}", "lone surrogate"),
            (r#"{"a":1e999}"#, "out of range"),
        ] {
            let e = walked(doc).unwrap_err();
            assert!(e.0.contains(why), "{doc}: {e}");
        }
        // The same key in different objects is no repeat, nor are keys of one length.
        assert!(walked(r#"{"a":{"n":1},"b":{"n":2},"n":3}"#).is_ok());
        let fields = walked(r#"{"ab":{"a\u0063":1,"ab":2},"cd":3,"a\u0062c":4}"#).unwrap();
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ab.ac", "ab.ab", "cd", "abc"]);
    }

    #[test]
    fn the_callback_can_stop_the_walk() {
        let mut seen = 0;
        let r = walk(br#"{"a":1,"b":2}"#, &mut Scratch::default(), &mut |_, _| {
            seen += 1;
            Next::Stop
        });
        assert!(r.is_err());
        assert_eq!(seen, 1);
    }

    /// Mutated documents (bytes flipped, cut, spliced): the walk never panics, fails where
    /// the text is not JSON, and where it succeeds gives what the tree gives.
    #[test]
    fn mutated_documents_walk_as_the_tree_reads_them_or_not_at_all() {
        let seed = br#"{"@timestamp":"2026-11-26T10:00:00Z","event":{"category":["process"],"module":"mamori"},"process":{"pid":42,"args":["sh","-c","a\"b"],"parent":{"pid":1,"executable":"/bin/bash"}},"user":{"name":"root","id":"0"},"n":-1.5e3}"#;
        let mut rng = fastrand::Rng::with_seed(0x77616c6b);
        let (mut walked, mut refused) = (0, 0);
        for _ in 0..5000 {
            let v = crate::testing::mutate(&mut rng, seed, 20);
            let text = String::from_utf8_lossy(&v);
            match walked_bytes(&v) {
                Ok(fields) => {
                    walked += 1;
                    let tree: Value = serde_json::from_slice(&v).expect("walked, so it is JSON");
                    let e = Event::with_shape(tree, Shape::Ecs);
                    let mut want = Vec::new();
                    e.for_each_field(&mut |k, v| want.push((k.to_string(), v.clone())));
                    assert_eq!(fields, want, "{text}");
                }
                Err(_) => refused += 1,
            }
        }
        assert!(
            walked > 100 && refused > 100,
            "{walked} walked, {refused} refused"
        );
    }

    fn walked_bytes(raw: &[u8]) -> Result<Vec<(String, Value)>, GaveUp> {
        walked(std::str::from_utf8(raw).map_err(|e| GaveUp(e.to_string()))?)
    }
}
