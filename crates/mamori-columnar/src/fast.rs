//! The columns of an ECS event read in one pass, without building a JSON tree.
//!
//! Nearly every stored event is one of the sensor's ECS documents. Parsing each into a
//! `serde_json::Value` allocates every key and every string, only to read two dozen of
//! them; here [`mamori_model::walk`] reads the document once and the wanted fields' text is
//! copied into one reused buffer. Whatever the walk gives up on, or a document that is not
//! ECS (Windows shapes, no `@timestamp`), is left to the general path: the result is the
//! same row either way (tested against the general path).

use std::fmt::Write as _;

use mamori_model::walk::{Item, Leaf, Next, walk};

/// Top-level names that mean another shape than ECS (see `mamori_model::event::detect_shape`).
const OTHER_SHAPES: &[&str] = &["winlog", "Event", "System", "EventData", "UserData"];

/// Top-level names whose being objects makes an event ECS (with `@timestamp`).
const ECS_OBJECTS: &[&str] = &["event", "process", "host"];

/// One wanted field of the event last read.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    /// Its text in [`Cells::text`], as the general path's `text` makes it from a `Value`.
    text: Option<(usize, usize)>,
    /// Whether it was a string.
    string: bool,
    /// Its number, as the general path's `int` makes it from a `Value`.
    int: Option<i64>,
}

/// The wanted fields of one event (reused from event to event).
#[derive(Debug, Default)]
pub(crate) struct Cells {
    cells: Vec<Cell>,
    text: String,
}

impl Cells {
    /// Reads `event` when it is an ECS document the walk reads exactly; `paths` are the
    /// dotted paths wanted, in slot order. Returns whether it did.
    pub(crate) fn read(&mut self, paths: &[&str], event: &[u8], name: &mut String) -> bool {
        self.cells.clear();
        self.cells.resize(paths.len(), Cell::default());
        self.text.clear();
        let (mut timestamp, mut ecs_objects) = (false, false);
        let walked = walk(event, name, &mut |name, leaf| {
            let top = name.split('.').next().unwrap_or(name);
            if OTHER_SHAPES.contains(&top) {
                return Next::Stop;
            }
            timestamp |= name == "@timestamp";
            if matches!(leaf, Leaf::Object) {
                ecs_objects |= ECS_OBJECTS.contains(&name);
                return Next::Go;
            }
            if let Some(slot) = paths.iter().position(|p| *p == name) {
                self.cells[slot] = self.cell(&leaf);
            }
            Next::Go
        });
        walked.is_ok() && timestamp && ecs_objects
    }

    fn cell(&mut self, leaf: &Leaf<'_>) -> Cell {
        let start = self.text.len();
        let mut cell = Cell::default();
        let written = match leaf {
            Leaf::One(item) => {
                cell.string = matches!(item, Item::Str(_));
                cell.int = match item {
                    Item::Num(n) => n.as_i64(),
                    Item::Str(s) => crate::schema::parse_int(s),
                    _ => None,
                };
                self.push(item)
            }
            Leaf::List(items) => {
                let mut any = false;
                for item in items.iter() {
                    let at = self.text.len();
                    if any {
                        self.text.push(',');
                    }
                    if self.push(item) {
                        any = true;
                    } else {
                        self.text.truncate(at);
                    }
                }
                any
            }
            Leaf::Object => false,
        };
        cell.text = written.then_some((start, self.text.len()));
        cell
    }

    /// Appends a scalar's text; `false` (nothing appended) for `null`.
    fn push(&mut self, item: &Item<'_>) -> bool {
        match item {
            Item::Str(s) => self.text.push_str(s),
            Item::Num(n) => {
                let _ = write!(self.text, "{n}");
            }
            Item::Bool(b) => {
                let _ = write!(self.text, "{b}");
            }
            Item::Null => return false,
        }
        true
    }

    /// The text of slot `i`.
    pub(crate) fn text(&self, i: usize) -> Option<&str> {
        self.cells[i].text.map(|(a, b)| &self.text[a..b])
    }

    /// The string in slot `i`, if it held one.
    pub(crate) fn str(&self, i: usize) -> Option<&str> {
        self.text(i).filter(|_| self.cells[i].string)
    }

    /// The number of slot `i`.
    pub(crate) fn int(&self, i: usize) -> Option<i64> {
        self.cells[i].int
    }
}
