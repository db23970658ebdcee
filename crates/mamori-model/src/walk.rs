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

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

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
    /// The keys of the objects being read (ranges of `key_text`), for spotting repeats:
    /// objects are small, a look along the list is cheaper than hashing.
    keys: Vec<(usize, usize)>,
    key_text: String,
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
    let mut de = serde_json::Deserializer::from_slice(raw);
    let mut walker = Walker { scratch, f };
    let top = Object(&mut walker)
        .deserialize(&mut de)
        .map_err(|e| GaveUp(e.to_string()))?;
    if !top {
        return Err(GaveUp("not a JSON object".into()));
    }
    de.end().map_err(|e| GaveUp(e.to_string()))
}

struct Walker<'w> {
    scratch: &'w mut Scratch,
    f: &'w mut dyn FnMut(&str, Leaf<'_>) -> Next,
}

impl Walker<'_> {
    fn call<E: de::Error>(&mut self, leaf: Leaf<'_>) -> Result<(), E> {
        match (self.f)(&self.scratch.name, leaf) {
            Next::Go => Ok(()),
            Next::Stop => Err(E::custom("stopped")),
        }
    }
}

/// Reads an object key onto the end of a string (no allocation of its own).
struct KeyInto<'a>(&'a mut String);

impl<'de> DeserializeSeed<'de> for KeyInto<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyInto<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, s: &str) -> Result<(), E> {
        self.0.push_str(s);
        Ok(())
    }
}

/// Reads a value that may be an object (descended into) or not (`false`, nothing read).
struct Object<'a, 'w>(&'a mut Walker<'w>);

/// Reads a field's value under the name the walker holds.
struct Field<'a, 'w>(&'a mut Walker<'w>);

impl<'de> DeserializeSeed<'de> for Object<'_, '_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Object<'_, '_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let w = self.0;
        let (first_key, text_len) = (w.scratch.keys.len(), w.scratch.key_text.len());
        loop {
            let start = w.scratch.key_text.len();
            if map
                .next_key_seed(KeyInto(&mut w.scratch.key_text))?
                .is_none()
            {
                break;
            }
            let Scratch {
                name,
                keys,
                key_text,
            } = &mut *w.scratch;
            let key = &key_text[start..];
            if key.contains('.') {
                return Err(de::Error::custom("a key with a dot"));
            }
            if keys[first_key..]
                .iter()
                .any(|&(a, b)| key_text[a..b] == *key)
            {
                return Err(de::Error::custom("a repeated key"));
            }
            keys.push((start, key_text.len()));
            let len = name.len();
            if len > 0 {
                name.push('.');
            }
            name.push_str(key);
            map.next_value_seed(Field(&mut *w))?;
            w.scratch.name.truncate(len);
        }
        w.scratch.keys.truncate(first_key);
        w.scratch.key_text.truncate(text_len);
        Ok(true)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
}

impl<'de> DeserializeSeed<'de> for Field<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Field<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.0.call(Leaf::Object)?;
        Object(self.0).visit_map(map).map(|_| ())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Arrays in events are short (categories, types): held on the stack, unless long.
        let mut small: [Item<'de>; 8] = std::array::from_fn(|_| Item::Null);
        let (mut n, mut long) = (0, Vec::new());
        while let Some(ItemOf(item)) = seq.next_element()? {
            if n < small.len() {
                small[n] = item;
                n += 1;
            } else {
                if long.is_empty() {
                    long.extend(small.iter_mut().map(|i| std::mem::replace(i, Item::Null)));
                }
                long.push(item);
            }
        }
        self.0.call(Leaf::List(if long.is_empty() {
            &small[..n]
        } else {
            &long
        }))
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.0.call(Leaf::One(Item::Bool(b)))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        self.0.call(Leaf::One(Item::Num(n.into())))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        self.0.call(Leaf::One(Item::Num(n.into())))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        match Number::from_f64(n) {
            Some(n) => self.0.call(Leaf::One(Item::Num(n))),
            None => Err(E::custom("a number JSON cannot hold")),
        }
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.0.call(Leaf::One(Item::Str(Cow::Borrowed(s))))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.call(Leaf::One(Item::Null))
    }
}

/// An array element: a scalar, or the walk gives up.
struct ItemOf<'a>(Item<'a>);

impl<'de> de::Deserialize<'de> for ItemOf<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemVisitor)
    }
}

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = ItemOf<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a scalar")
    }
    fn visit_bool<E>(self, b: bool) -> Result<ItemOf<'de>, E> {
        Ok(ItemOf(Item::Bool(b)))
    }
    fn visit_i64<E>(self, n: i64) -> Result<ItemOf<'de>, E> {
        Ok(ItemOf(Item::Num(n.into())))
    }
    fn visit_u64<E>(self, n: u64) -> Result<ItemOf<'de>, E> {
        Ok(ItemOf(Item::Num(n.into())))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<ItemOf<'de>, E> {
        Number::from_f64(n)
            .map(|n| ItemOf(Item::Num(n)))
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<ItemOf<'de>, E> {
        Ok(ItemOf(Item::Str(Cow::Borrowed(s))))
    }
    fn visit_str<E>(self, s: &str) -> Result<ItemOf<'de>, E> {
        Ok(ItemOf(Item::Str(Cow::Owned(s.to_string()))))
    }
    fn visit_unit<E>(self) -> Result<ItemOf<'de>, E> {
        Ok(ItemOf(Item::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<ItemOf<'de>, A::Error> {
        Err(de::Error::custom("an array in an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<ItemOf<'de>, A::Error> {
        Err(de::Error::custom("an object in an array"))
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
            (r#"{"a":[[1]]}"#, "array in an array"),
            (r#"{"a":[{"b":1}]}"#, "object in an array"),
            (r#"[1,2]"#, "not a JSON object"),
            (r#"{"a":1} x"#, "trailing"),
            (r#"{"a":"#, "EOF"),
        ] {
            let e = walked(doc).unwrap_err();
            assert!(e.0.contains(why), "{doc}: {e}");
        }
        // The same key in different objects is no repeat.
        assert!(walked(r#"{"a":{"n":1},"b":{"n":2},"n":3}"#).is_ok());
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
