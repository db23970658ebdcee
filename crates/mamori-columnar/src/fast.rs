//! The columns of an ECS event read in one pass, without building a JSON tree.
//!
//! Nearly every stored event is one of the sensor's ECS documents. Parsing each into a
//! `serde_json::Value` allocates every key and every string, only to read two dozen of
//! them; here [`mamori_model::json::Reader`] reads the document once, borrows the strings
//! the columns need (escaped ones are the only copies) and skips everything else. Anything this reader is not sure to
//! read exactly as the general path would (Windows shapes, dotted top-level names, repeated
//! keys, a document that is not ECS) makes it give up, and the caller takes the general
//! path: the result is the same row either way (tested against the general path).

use std::borrow::Cow;

use mamori_model::json::{self, Kind, Reader};
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
pub(crate) const OTHER_SHAPES: &[&str] = &["winlog", "Event", "System", "EventData", "UserData"];

/// Top-level names whose being objects makes an event ECS (with `@timestamp`).
pub(crate) const ECS_OBJECTS: &[&str] = &["event", "process", "host"];

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
    pub(crate) fn read<'a>(&self, event: &'a str) -> Option<Found<'a>> {
        let mut found = Found {
            slots: (0..self.slots).map(|_| None).collect(),
            ecs_objects: false,
            timestamp: false,
        };
        let mut r = Reader::of_text(event);
        if r.kind().ok()? != Kind::Object {
            return None;
        }
        level(&mut r, &self.root, true, &mut found).ok()?;
        r.end().ok()?;
        (found.timestamp && found.ecs_objects).then_some(found)
    }
}

/// Gives up on the document (not an error in the text: the general path reads it).
fn give_up<T>(what: &'static str) -> Result<T, json::Error> {
    Err(json::Error { what, at: 0 })
}

/// Reads one object (the reader is at its `{`): wanted leaves into their slots, wanted
/// objects descended into, everything else skipped.
fn level<'a>(
    r: &mut Reader<'a>,
    nodes: &[Node],
    top: bool,
    found: &mut Found<'a>,
) -> Result<(), json::Error> {
    if !r.object_start()? {
        return Ok(());
    }
    let mut seen = 0u64;
    loop {
        let text = r.key()?;
        let decoded;
        let key: &str = match text.plain() {
            Some(k) => k,
            None => {
                decoded = text.decoded();
                &decoded
            }
        };
        if top {
            if key.contains('.') || OTHER_SHAPES.contains(&key) {
                return give_up("not a plain ECS document");
            }
            if key == "@timestamp" {
                found.timestamp = true;
            }
        }
        match nodes.iter().position(|n| n.name == key) {
            None => r.skip_value()?,
            Some(i) => {
                // The general path keeps the last of repeated keys; this one gives up.
                if seen & (1 << i) != 0 {
                    return give_up("repeated key");
                }
                seen |= 1 << i;
                let node = &nodes[i];
                if let Some(slot) = node.slot {
                    found.slots[slot] = Some(scalar(r)?);
                } else if r.kind()? == Kind::Object {
                    level(r, &node.children, false, found)?;
                    if top && ECS_OBJECTS.contains(&key) {
                        found.ecs_objects = true;
                    }
                } else {
                    r.skip_value()?;
                }
            }
        }
        if !r.object_next()? {
            return Ok(());
        }
    }
}

/// Reads a leaf value.
fn scalar<'a>(r: &mut Reader<'a>) -> Result<Scalar<'a>, json::Error> {
    Ok(match r.kind()? {
        Kind::String => Scalar::Str(r.string()?.decoded()),
        Kind::Number => json::number(r.number()?).map_or(Scalar::Other, Scalar::Num),
        Kind::Bool => Scalar::Bool(r.bool()?),
        Kind::Null => {
            r.null()?;
            Scalar::Other
        }
        Kind::Array => {
            let mut items = Vec::new();
            if r.array_start()? {
                loop {
                    items.push(scalar(r)?);
                    if !r.array_next()? {
                        break;
                    }
                }
            }
            Scalar::List(items)
        }
        Kind::Object => {
            r.skip_value()?;
            Scalar::Other
        }
    })
}
