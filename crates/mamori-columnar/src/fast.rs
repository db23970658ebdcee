//! The columns of an ECS event read in one pass, without building a JSON tree.
//!
//! Nearly every stored event is one of the sensor's ECS documents. Parsing each into a
//! `serde_json::Value` allocates every key and every string, only to read two dozen of
//! them; here serde walks the document once, borrows the strings the columns need (escaped
//! ones are the only copies) and skips everything else. Anything this reader is not sure to
//! read exactly as the general path would (Windows shapes, dotted top-level names, repeated
//! keys, a document that is not ECS) makes it give up, and the caller takes the general
//! path: the result is the same row either way (tested against the general path).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// A leaf value as the columns see it.
#[derive(Debug)]
pub(crate) enum Scalar<'a> {
    Str(Cow<'a, str>),
    Num(Number),
    Bool(bool),
    List(Vec<Scalar<'a>>),
    /// `null` or an object: no text, no number.
    Other,
}

impl Scalar<'_> {
    /// The column text, as the general path's `text` makes it from a `Value`.
    pub(crate) fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Scalar::Str(s) => Some(Cow::Borrowed(s)),
            Scalar::Num(n) => Some(Cow::Owned(n.to_string())),
            Scalar::Bool(b) => Some(Cow::Owned(b.to_string())),
            Scalar::List(a) => {
                let parts: Vec<Cow<'_, str>> = a.iter().filter_map(Scalar::text).collect();
                (!parts.is_empty()).then(|| Cow::Owned(parts.join(",")))
            }
            Scalar::Other => None,
        }
    }

    /// The column number, as the general path's `int` makes it from a `Value`.
    pub(crate) fn int(&self) -> Option<i64> {
        match self {
            Scalar::Num(n) => n.as_i64(),
            Scalar::Str(s) => crate::schema::parse_int(s),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One name in the tree of wanted paths: a leaf has a slot, an inner name has children.
struct Node {
    name: &'static str,
    slot: Option<usize>,
    children: Vec<Node>,
}

fn insert(nodes: &mut Vec<Node>, path: &'static str, slot: usize) {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let i = match nodes.iter().position(|n| n.name == head) {
        Some(i) => i,
        None => {
            nodes.push(Node {
                name: head,
                slot: None,
                children: Vec::new(),
            });
            nodes.len() - 1
        }
    };
    match rest {
        Some(r) => insert(&mut nodes[i].children, r, slot),
        None => nodes[i].slot = Some(slot),
    }
}

/// Top-level names that mean another shape than ECS (see `mamori_model::event::detect_shape`).
const OTHER_SHAPES: &[&str] = &["winlog", "Event", "System", "EventData", "UserData"];

/// Top-level names whose being objects makes an event ECS (with `@timestamp`).
const ECS_OBJECTS: &[&str] = &["event", "process", "host"];

/// What one event gave: the value of each wanted path (by slot), and which of
/// [`ECS_OBJECTS`] were objects.
pub(crate) struct Found<'a> {
    pub slots: Vec<Option<Scalar<'a>>>,
    ecs_objects: bool,
    timestamp: bool,
}

/// The wanted dotted paths as a tree, built once; slots are the paths' indexes.
pub(crate) struct Paths {
    root: Vec<Node>,
    slots: usize,
}

impl Paths {
    pub(crate) fn new(paths: &[&'static str]) -> Paths {
        let mut root = Vec::new();
        for (slot, p) in paths.iter().enumerate() {
            insert(&mut root, p, slot);
        }
        Paths {
            root,
            slots: paths.len(),
        }
    }

    /// Reads `event` when it is an ECS document this reader handles exactly.
    pub(crate) fn read<'a>(&self, event: &'a [u8]) -> Option<Found<'a>> {
        let mut found = Found {
            slots: (0..self.slots).map(|_| None).collect(),
            ecs_objects: false,
            timestamp: false,
        };
        let mut de = serde_json::Deserializer::from_slice(event);
        Level {
            nodes: &self.root,
            top: true,
            found: &mut found,
        }
        .deserialize(&mut de)
        .ok()?;
        de.end().ok()?;
        (found.timestamp && found.ecs_objects).then_some(found)
    }
}

/// Reads one object level: wanted leaves into their slots, wanted objects descended into,
/// everything else skipped.
struct Level<'n, 'f, 'a> {
    nodes: &'n [Node],
    top: bool,
    found: &'f mut Found<'a>,
}

impl<'de, 'n, 'f> DeserializeSeed<'de> for Level<'n, 'f, 'de> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, 'n, 'f> Visitor<'de> for Level<'n, 'f, 'de> {
    /// Whether the value was an object.
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut seen = 0u64;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let key: &str = &key;
            if self.top {
                if key.contains('.') || OTHER_SHAPES.contains(&key) {
                    return Err(de::Error::custom("not a plain ECS document"));
                }
                if key == "@timestamp" {
                    self.found.timestamp = true;
                }
            }
            let Some(i) = self.nodes.iter().position(|n| n.name == key) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            // The general path keeps the last of repeated keys; this one gives up.
            if seen & (1 << i) != 0 {
                return Err(de::Error::custom("repeated key"));
            }
            seen |= 1 << i;
            let node = &self.nodes[i];
            if let Some(slot) = node.slot {
                self.found.slots[slot] = Some(map.next_value::<Scalar<'de>>()?);
            } else {
                let object = map.next_value_seed(Level {
                    nodes: &node.children,
                    top: false,
                    found: &mut *self.found,
                })?;
                if self.top && object && ECS_OBJECTS.contains(&key) {
                    self.found.ecs_objects = true;
                }
            }
        }
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

impl<'de> de::Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Num(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Num(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Scalar<'de>, E> {
        Ok(Number::from_f64(n).map_or(Scalar::Other, Scalar::Num))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(s.to_string())))
    }
    fn visit_string<E>(self, s: String) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(s)))
    }
    fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(s) = seq.next_element::<Scalar<'de>>()? {
            items.push(s);
        }
        Ok(Scalar::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}
