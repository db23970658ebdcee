//! The `events` table: one row per stored event, the fields hunters filter on as typed
//! columns, and the whole event as JSON in `raw`.
//!
//! Column names are ECS names with `_` for `.` (`process.command_line` →
//! `process_command_line`), so SQL needs no quoting. Windows events (EVTX, Winlogbeat,
//! Sysmon JSON) fill the same columns from their own field names (`CommandLine`, `Image`,
//! `ParentImage`, `TargetFilename`, …): one query finds a command line on Linux and Windows
//! hosts alike.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder, UInt64Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use mamori_model::event::parse_time;
use mamori_model::walk::{Item, Leaf};
use mamori_model::{Event, Shape};

use crate::fast::{self, Paths, Scalar};
use serde_json::Value;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    Int,
}

/// A column filled from the event: its name, type, the ECS path (Mamori's own sensor
/// events, ECS and Winlogbeat documents) and other names the field has in Windows events.
struct Col {
    name: &'static str,
    ty: Ty,
    ecs: &'static str,
    other: &'static [&'static str],
}

const fn col(name: &'static str, ty: Ty, ecs: &'static str, other: &'static [&'static str]) -> Col {
    Col {
        name,
        ty,
        ecs,
        other,
    }
}

use Ty::{Int, Str};

/// The columns taken from the event, in table order (after the fixed ones).
const COLS: &[Col] = &[
    col("event_category", Str, "event.category", &[]),
    col("event_type", Str, "event.type", &[]),
    col("event_action", Str, "event.action", &[]),
    col("event_outcome", Str, "event.outcome", &[]),
    col(
        "event_code",
        Str,
        "event.code",
        &["EventID", "winlog.event_id"],
    ),
    col("process_pid", Int, "process.pid", &["ProcessId"]),
    col(
        "process_entity_id",
        Str,
        "process.entity_id",
        &["ProcessGuid"],
    ),
    col("process_name", Str, "process.name", &[]),
    col(
        "process_executable",
        Str,
        "process.executable",
        &["Image", "NewProcessName"],
    ),
    col(
        "process_command_line",
        Str,
        "process.command_line",
        &["CommandLine"],
    ),
    col(
        "process_working_directory",
        Str,
        "process.working_directory",
        &["CurrentDirectory"],
    ),
    col(
        "process_parent_pid",
        Int,
        "process.parent.pid",
        &["ParentProcessId"],
    ),
    col(
        "process_parent_executable",
        Str,
        "process.parent.executable",
        &["ParentImage", "ParentProcessName"],
    ),
    col(
        "process_parent_command_line",
        Str,
        "process.parent.command_line",
        &["ParentCommandLine"],
    ),
    col(
        "process_hash_sha256",
        Str,
        "process.hash.sha256",
        &["Hashes"],
    ),
    col(
        "user_name",
        Str,
        "user.name",
        &["User", "TargetUserName", "SubjectUserName"],
    ),
    col(
        "user_id",
        Str,
        "user.id",
        &["TargetUserSid", "SubjectUserSid"],
    ),
    col(
        "file_path",
        Str,
        "file.path",
        &["TargetFilename", "ObjectName"],
    ),
    col("source_ip", Str, "source.ip", &["SourceIp", "IpAddress"]),
    col("source_port", Int, "source.port", &["SourcePort", "IpPort"]),
    col("destination_ip", Str, "destination.ip", &["DestinationIp"]),
    col(
        "destination_port",
        Int,
        "destination.port",
        &["DestinationPort"],
    ),
    col("network_transport", Str, "network.transport", &["Protocol"]),
    col(
        "dns_question_name",
        Str,
        "dns.question.name",
        &["QueryName"],
    ),
];

/// Columns before [`COLS`]: where the row comes from.
const FIXED: usize = 5;

/// Index of `process_executable` in [`COLS`].
const PROCESS_EXECUTABLE: usize = 8;

/// What the one-pass reader looks for: the ECS path of each of [`COLS`] (same slots), then
/// the event's time and the names its host may have (in the order `Event::host` tries them).
static FAST: LazyLock<Paths> = LazyLock::new(|| Paths::new(&fast_paths()));

fn fast_paths() -> Vec<&'static str> {
    let mut paths: Vec<&'static str> = COLS.iter().map(|c| c.ecs).collect();
    paths.extend([
        "@timestamp",
        "host.name",
        "host.hostname",
        "Computer",
        "hostname",
    ]);
    paths
}
const TIME_SLOT: usize = COLS.len();
const HOST_SLOTS: [usize; 4] = [
    COLS.len() + 1,
    COLS.len() + 2,
    COLS.len() + 3,
    COLS.len() + 4,
];

/// The wanted paths of [`fast_paths`] by length, with their slots: a field name is
/// compared with the one or two paths of its length, not looked up by hash.
static SLOTS_BY_LEN: LazyLock<Vec<Vec<(&'static str, usize)>>> = LazyLock::new(|| {
    let paths = fast_paths();
    let mut by_len = vec![Vec::new(); paths.iter().map(|p| p.len()).max().unwrap_or(0) + 1];
    for (slot, p) in paths.into_iter().enumerate() {
        by_len[p.len()].push((p, slot));
    }
    by_len
});

/// One column's value as [`Fields`] noted it.
#[derive(Debug, Default)]
struct Noted {
    /// The column text (what `text` makes of the value) when `has_text`, unless the value
    /// is a number (`num`): written out only if a text column asks.
    text: String,
    has_text: bool,
    num: Option<serde_json::Number>,
    /// Whether the value is a string (the event's time, host and image are read only from
    /// strings; a number column reads a string's number only if it asks).
    is_str: bool,
}

/// The columns of one event, noted field by field while something else walks it
/// ([`mamori_model::walk::walk`]: detection does, and hands the row on instead of the
/// compactor reading the event again). [`RowBuilder::push_fields`] takes them when the walk
/// read the whole event and it is a plain ECS document (as the one-pass reader would take
/// it); otherwise it reads the event itself. The row is the same either way (tested).
#[derive(Debug)]
pub struct Fields {
    slots: Vec<Noted>,
    timestamp: bool,
    ecs_objects: bool,
    other_shape: bool,
    walked: bool,
}

impl Default for Fields {
    fn default() -> Self {
        Fields {
            slots: (0..fast_paths().len()).map(|_| Noted::default()).collect(),
            timestamp: false,
            ecs_objects: false,
            other_shape: false,
            walked: false,
        }
    }
}

impl Fields {
    /// Forgets the last event's fields: call before its walk.
    pub fn clear(&mut self) {
        for n in &mut self.slots {
            n.has_text = false;
            n.num = None;
            n.is_str = false;
        }
        (self.timestamp, self.ecs_objects, self.other_shape) = (false, false, false);
        self.walked = false;
    }

    /// Notes one field as the walk hands it over.
    pub fn note(&mut self, name: &str, leaf: &Leaf<'_>) {
        if !name.contains('.') {
            // A top-level name: what decides the document's shape.
            match (name, leaf) {
                ("@timestamp", _) => self.timestamp = true,
                (_, Leaf::Object) if fast::ECS_OBJECTS.contains(&name) => self.ecs_objects = true,
                _ if fast::OTHER_SHAPES.contains(&name) => self.other_shape = true,
                _ => {}
            }
        }
        let Some(&(_, slot)) = SLOTS_BY_LEN
            .get(name.len())
            // The last byte first: names of one length mostly differ there (`.name`,
            // `.pid`, `.ip`), and most fields are none of the columns'.
            .and_then(|c| {
                let last = name.as_bytes().last();
                c.iter()
                    .find(|(p, _)| p.as_bytes().last() == last && *p == name)
            })
        else {
            return;
        };
        let n = &mut self.slots[slot];
        n.text.clear();
        n.num = None;
        n.is_str = false;
        n.has_text = match leaf {
            Leaf::Object => false,
            Leaf::One(Item::Num(x)) => {
                n.num = Some(x.clone());
                false
            }
            Leaf::One(item) => {
                n.is_str = matches!(item, Item::Str(_));
                item_text(item, &mut n.text)
            }
            Leaf::List(items) => {
                let mut any = false;
                for item in items.iter() {
                    let at = n.text.len();
                    if any {
                        n.text.push(',');
                    }
                    if item_text(item, &mut n.text) {
                        any = true;
                    } else {
                        n.text.truncate(at);
                    }
                }
                any
            }
        };
    }

    /// Says whether the walk read the whole event (it may give up part way).
    pub fn walked(&mut self, whole: bool) {
        self.walked = whole;
    }

    /// Whether the noted fields are the event's row: walked whole, a plain ECS document.
    fn complete(&self) -> bool {
        self.walked && self.timestamp && self.ecs_objects && !self.other_shape
    }

    fn text(&self, slot: usize) -> Option<Cow<'_, str>> {
        let n = &self.slots[slot];
        match &n.num {
            Some(x) => Some(Cow::Owned(x.to_string())),
            None => n.has_text.then_some(Cow::Borrowed(n.text.as_str())),
        }
    }

    fn int(&self, slot: usize) -> Option<i64> {
        let n = &self.slots[slot];
        match &n.num {
            Some(x) => x.as_i64(),
            None if n.is_str => parse_int(&n.text),
            None => None,
        }
    }

    fn str(&self, slot: usize) -> Option<&str> {
        let n = &self.slots[slot];
        n.is_str.then_some(n.text.as_str())
    }
}

/// Appends the column text of a scalar (as `text` makes it); whether it has one.
fn item_text(item: &Item<'_>, out: &mut String) -> bool {
    use std::fmt::Write;
    match item {
        Item::Str(s) => out.push_str(s),
        Item::Num(x) => {
            let _ = write!(out, "{x}");
        }
        Item::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Item::Null => return false,
    }
    true
}

/// The table's schema (built once: every round's row builder and every file asks for it).
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(build_schema);
    SCHEMA.clone()
}

fn build_schema() -> SchemaRef {
    let mut fields = vec![
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("tenant", DataType::Utf8, false),
        Field::new("host_id", DataType::Utf8, false),
        Field::new("host_name", DataType::Utf8, true),
        Field::new("seq", DataType::UInt64, false),
    ];
    debug_assert_eq!(fields.len(), FIXED);
    for c in COLS {
        let ty = match c.ty {
            Str => DataType::Utf8,
            Int => DataType::Int64,
        };
        fields.push(Field::new(c.name, ty, true));
    }
    fields.push(Field::new("raw", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// Where a row comes from, besides the event itself.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The tenant.
    pub tenant: &'a str,
    /// The host's id (agent id, or `win:<host>` for uploaded Windows logs).
    pub host_id: &'a str,
    /// The event's sequence number at its source.
    pub seq: u64,
    /// When the server received it (used when the event has no time of its own),
    /// microseconds since the epoch.
    pub received_us: i64,
}

enum Builder {
    Str(StringBuilder),
    Int(Int64Builder),
}

/// Turns events into Arrow record batches of the [`schema`].
pub struct RowBuilder {
    schema: SchemaRef,
    time: TimestampMicrosecondBuilder,
    tenant: StringBuilder,
    host_id: StringBuilder,
    host_name: StringBuilder,
    seq: UInt64Builder,
    cols: Vec<Builder>,
    raw: StringBuilder,
    rows: usize,
    name_buf: String,
}

impl Default for RowBuilder {
    fn default() -> Self {
        RowBuilder::new()
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().filter_map(text).collect();
            (!parts.is_empty()).then(|| parts.join(","))
        }
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => parse_int(s),
        _ => None,
    }
}

/// A number written as text: decimal, or hexadecimal after `0x` (Windows process ids).
pub(crate) fn parse_int(s: &str) -> Option<i64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => i64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// `SHA256=…` out of Sysmon's `Hashes` (`SHA1=…,MD5=…,SHA256=…,IMPHASH=…`), or the value
/// itself when it is one bare SHA-256.
pub fn sha256_of(v: &str) -> Option<String> {
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(v.to_ascii_lowercase());
    }
    v.split(',').find_map(|p| {
        let (k, h) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("sha256")
            .then(|| h.trim().to_ascii_lowercase())
    })
}

impl RowBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        RowBuilder::with_capacity(1024, 1024)
    }

    /// An empty builder with room for `rows` events of `bytes` bytes of JSON together, so
    /// that its buffers do not grow (and copy) while they are added: Arrow's buffers are
    /// aligned beyond what the allocator's `realloc` keeps, so each growth is a new
    /// allocation, a copy and fresh pages.
    pub fn with_capacity(rows: usize, bytes: usize) -> Self {
        debug_assert_eq!(COLS[PROCESS_EXECUTABLE].name, "process_executable");
        RowBuilder {
            schema: schema(),
            time: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            tenant: StringBuilder::with_capacity(rows, rows * 8),
            host_id: StringBuilder::with_capacity(rows, rows * 36),
            host_name: StringBuilder::with_capacity(rows, rows * 16),
            seq: UInt64Builder::with_capacity(rows),
            cols: COLS
                .iter()
                .map(|c| match c.ty {
                    Str => Builder::Str(StringBuilder::with_capacity(rows, rows * 8)),
                    Int => Builder::Int(Int64Builder::with_capacity(rows)),
                })
                .collect(),
            raw: StringBuilder::with_capacity(rows, bytes),
            rows: 0,
            name_buf: String::new(),
        }
    }

    /// Rows added since the last [`RowBuilder::finish`].
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Adds one event. An event that is not valid JSON is stored with only its origin and
    /// raw text (nothing is dropped).
    pub fn push(&mut self, origin: Origin<'_>, event: &[u8]) {
        // Valid UTF-8 is checked faster than `from_utf8_lossy` walks it, and once: the
        // one-pass reader takes the checked text (the tree refuses anything else).
        let valid = std::str::from_utf8(event).ok();
        let raw = valid.map_or_else(|| String::from_utf8_lossy(event), Cow::Borrowed);
        if let Some(f) = valid.and_then(|text| FAST.read(text)) {
            // The sensor's ECS documents: read in one pass, no tree (see `fast`).
            let slot = |i: usize| f.slots[i].as_ref();
            let time = slot(TIME_SLOT)
                .and_then(Scalar::as_str)
                .and_then(parse_time)
                .map(|t| t.timestamp_micros());
            let host = HOST_SLOTS
                .into_iter()
                .find_map(|i| slot(i).and_then(Scalar::as_str));
            self.append_origin(origin, time, host);
            self.append_columns(
                |i| slot(i).and_then(Scalar::text),
                |i| slot(i).and_then(Scalar::int),
                slot(PROCESS_EXECUTABLE).and_then(Scalar::as_str),
            );
        } else {
            self.push_general(origin, event);
        }
        self.raw.append_value(&raw);
        self.rows += 1;
    }

    /// Adds one event whose fields were noted in `fields` while it was walked: the same row
    /// as [`RowBuilder::push`], without reading the event again when they are complete.
    pub fn push_fields(&mut self, origin: Origin<'_>, fields: &Fields, event: &[u8]) {
        let raw = match std::str::from_utf8(event) {
            Ok(raw) if fields.complete() => raw,
            _ => return self.push(origin, event),
        };
        let time = fields
            .str(TIME_SLOT)
            .and_then(parse_time)
            .map(|t| t.timestamp_micros());
        let host = HOST_SLOTS.into_iter().find_map(|i| fields.str(i));
        self.append_origin(origin, time, host);
        self.append_columns(
            |i| fields.text(i),
            |i| fields.int(i),
            fields.str(PROCESS_EXECUTABLE),
        );
        self.raw.append_value(raw);
        self.rows += 1;
    }

    /// Any event: parsed into a tree, columns found by ECS path or, for Windows shapes, by
    /// their other names.
    fn push_general(&mut self, origin: Origin<'_>, event: &[u8]) {
        let parsed = serde_json::from_slice::<Value>(event).ok().map(Event::new);
        // Borrowed from the tree where read by path; copied where found by the walk.
        let mut found: Vec<Option<Cow<'_, Value>>> = vec![None; COLS.len()];
        let mut time = None;
        let mut host = None;
        if let Some(ev) = &parsed {
            time = ev.timestamp().map(|t| t.timestamp_micros());
            host = ev.host();
            if ev.shape == Shape::Ecs {
                for (i, c) in COLS.iter().enumerate() {
                    found[i] = ev.get_path(c.ecs).map(Cow::Borrowed);
                }
            }
            // Other names (Windows shapes): one walk over the fields. ECS events were read by
            // path above; walking them again found nothing new (and cost ~8% of a write).
            if ev.shape != Shape::Ecs && found.iter().any(Option::is_none) {
                ev.for_each_field_with(&mut self.name_buf, &mut |name, v| {
                    for (i, c) in COLS.iter().enumerate() {
                        if found[i].is_none() && (name == c.ecs || c.other.contains(&name)) {
                            found[i] = Some(Cow::Owned(v.clone()));
                        }
                    }
                });
            }
        }
        self.append_origin(origin, time, host);
        self.append_columns(
            |i| found[i].as_deref().and_then(text).map(Cow::Owned),
            |i| found[i].as_deref().and_then(int),
            found[PROCESS_EXECUTABLE].as_deref().and_then(Value::as_str),
        );
    }

    fn append_origin(&mut self, origin: Origin<'_>, time: Option<i64>, host: Option<&str>) {
        self.time.append_value(time.unwrap_or(origin.received_us));
        self.tenant.append_value(origin.tenant);
        self.host_id.append_value(origin.host_id);
        self.host_name.append_option(host);
        self.seq.append_value(origin.seq);
    }

    /// Appends the [`COLS`] of one row: `text(i)` and `int(i)` read column `i`'s value,
    /// `executable` is the process image when it is a string.
    fn append_columns<'v>(
        &mut self,
        text: impl Fn(usize) -> Option<Cow<'v, str>>,
        int: impl Fn(usize) -> Option<i64>,
        executable: Option<&str>,
    ) {
        for (i, (c, b)) in COLS.iter().zip(self.cols.iter_mut()).enumerate() {
            match b {
                Builder::Str(b) => {
                    let mut s = text(i);
                    if c.name == "process_hash_sha256" {
                        s = s.as_deref().and_then(sha256_of).map(Cow::Owned);
                    } else if c.name == "process_name" && s.is_none() {
                        // Windows events name the image only: its file name, as ECS does.
                        s = executable
                            .and_then(|p| p.rsplit(['\\', '/']).next())
                            .filter(|n| !n.is_empty())
                            .map(|n| Cow::Owned(n.to_string()));
                    }
                    b.append_option(s)
                }
                Builder::Int(b) => b.append_option(int(i)),
            }
        }
    }

    /// The rows added so far as one batch; the builder is empty afterwards.
    pub fn finish(&mut self) -> RecordBatch {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(self.time.finish()),
            Arc::new(self.tenant.finish()),
            Arc::new(self.host_id.finish()),
            Arc::new(self.host_name.finish()),
            Arc::new(self.seq.finish()),
        ];
        for b in &mut self.cols {
            cols.push(match b {
                Builder::Str(b) => Arc::new(b.finish()),
                Builder::Int(b) => Arc::new(b.finish()),
            });
        }
        cols.push(Arc::new(self.raw.finish()));
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), cols)
            .expect("builders follow the schema by construction")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Int64Type;

    fn column<'a>(b: &'a RecordBatch, name: &str) -> &'a ArrayRef {
        b.column(b.schema().index_of(name).unwrap())
    }

    #[test]
    fn linux_and_windows_events_fill_the_same_columns() {
        let mut rb = RowBuilder::new();
        let o = Origin {
            tenant: "t1",
            host_id: "agt-1",
            seq: 7,
            received_us: 1,
        };
        rb.push(
            o,
            br#"{"@timestamp":"2026-11-26T10:00:00Z","event":{"category":["process"],"action":"exec"},
                "host":{"name":"web1"},"process":{"pid":42,"name":"curl","executable":"/usr/bin/curl",
                "command_line":"curl -s http://x","parent":{"pid":1,"executable":"/bin/bash"},
                "hash":{"sha256":"AB"}},"user":{"name":"root"}}"#,
        );
        rb.push(
            Origin {
                host_id: "win:pc1",
                seq: 8,
                ..o
            },
            br##"{"Event":{"System":{"EventID":1,"Computer":"pc1.corp",
                "TimeCreated":{"#attributes":{"SystemTime":"2026-11-26T11:00:00.5Z"}}},
                "EventData":{"Image":"C:\\Windows\\System32\\cmd.exe","CommandLine":"cmd /c whoami",
                "ProcessId":"0x1a4","ParentImage":"C:\\Windows\\explorer.exe","User":"CORP\\bob",
                "Hashes":"SHA1=00,SHA256=ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789"}}}"##,
        );
        rb.push(Origin { seq: 9, ..o }, b"{not json");
        let b = rb.finish();
        assert_eq!(b.num_rows(), 3);
        assert_eq!(rb.rows(), 0);
        let s = |name: &str, row: usize| {
            let a = column(&b, name).as_string::<i32>();
            (!a.is_null(row)).then(|| a.value(row).to_string())
        };
        let i = |name: &str, row: usize| {
            let a = column(&b, name).as_primitive::<Int64Type>();
            (!a.is_null(row)).then(|| a.value(row))
        };
        assert_eq!(s("host_name", 0).as_deref(), Some("web1"));
        assert_eq!(s("event_category", 0).as_deref(), Some("process"));
        assert_eq!(
            s("process_command_line", 0).as_deref(),
            Some("curl -s http://x")
        );
        assert_eq!(
            s("process_parent_executable", 0).as_deref(),
            Some("/bin/bash")
        );
        assert_eq!(i("process_pid", 0), Some(42));
        assert_eq!(s("process_hash_sha256", 0), None, "not a SHA-256");
        assert_eq!(s("host_name", 1).as_deref(), Some("pc1.corp"));
        assert_eq!(
            s("process_command_line", 1).as_deref(),
            Some("cmd /c whoami")
        );
        assert_eq!(s("event_code", 1).as_deref(), Some("1"));
        assert_eq!(i("process_pid", 1), Some(0x1a4));
        assert_eq!(s("user_name", 1).as_deref(), Some("CORP\\bob"));
        assert_eq!(
            s("process_hash_sha256", 1).as_deref(),
            Some("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
        );
        // Not JSON: kept with its origin, raw text and the time it was received.
        assert_eq!(s("raw", 2).as_deref(), Some("{not json"));
        assert_eq!(s("process_command_line", 2), None);
        let t = column(&b, "time")
            .as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
        assert_eq!(t.value(2), 1);
        assert_eq!(t.value(1), 1_795_690_800_500_000);
        assert_eq!(
            s("process_name", 1).as_deref(),
            Some("cmd.exe"),
            "from the image"
        );
    }

    /// The rows of `events` through `push` (one-pass reader where it applies) and through
    /// the general path only.
    fn both(events: &[Vec<u8>]) -> (RecordBatch, RecordBatch, usize) {
        let (mut a, mut b) = (RowBuilder::new(), RowBuilder::new());
        let mut fast = 0;
        for (i, e) in events.iter().enumerate() {
            let o = Origin {
                tenant: "t",
                host_id: "h",
                seq: i as u64,
                received_us: 5,
            };
            fast += usize::from(std::str::from_utf8(e).is_ok_and(|t| FAST.read(t).is_some()));
            a.push(o, e);
            b.push_general(o, e);
            b.raw.append_value(String::from_utf8_lossy(e));
            b.rows += 1;
        }
        (a.finish(), b.finish(), fast)
    }

    /// The rows of `events` through a walk that notes their fields and `push_fields`, and
    /// how many rows came from the noted fields.
    fn walked(events: &[Vec<u8>]) -> (RecordBatch, usize) {
        let mut b = RowBuilder::new();
        let mut fields = Fields::default();
        let mut scratch = mamori_model::walk::Scratch::default();
        let mut taken = 0;
        for (i, e) in events.iter().enumerate() {
            fields.clear();
            let whole = mamori_model::walk::walk(e, &mut scratch, &mut |name, leaf| {
                fields.note(name, &leaf);
                mamori_model::walk::Next::Go
            })
            .is_ok();
            fields.walked(whole);
            taken += usize::from(fields.complete());
            let o = Origin {
                tenant: "t",
                host_id: "h",
                seq: i as u64,
                received_us: 5,
            };
            b.push_fields(o, &fields, e);
        }
        (b.finish(), taken)
    }

    fn sensor_event(pid: u64, cmd: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "@timestamp": "2026-11-26T10:00:00.123456Z",
            "event": {"kind": "event", "category": ["process"], "type": ["start"],
                      "action": "exec", "module": "mamori", "dataset": "mamori.process"},
            "host": {"name": "web1", "os": {"kernel": "6.18"}},
            "process": {"pid": pid, "entity_id": format!("e{pid}"), "name": "sh",
                        "executable": "/bin/sh", "command_line": cmd, "args": ["sh", "-c", cmd],
                        "working_directory": "/tmp",
                        "parent": {"pid": 1, "executable": "/sbin/init", "command_line": "init"},
                        "hash": {"sha256": "ab".repeat(32)}},
            "user": {"name": "root", "id": "0"},
        }))
        .unwrap()
    }

    #[test]
    fn sensor_events_take_the_one_pass_reader_and_give_the_same_rows() {
        let events: Vec<Vec<u8>> = (0..50)
            .map(|i| sensor_event(i, &format!("echo \"quoted\\\\ {i}\" | base64 -d")))
            .collect();
        let (a, b, fast) = both(&events);
        assert_eq!(fast, events.len(), "every sensor event is read in one pass");
        assert_eq!(a, b);
        let (c, taken) = walked(&events);
        assert_eq!(
            taken,
            events.len(),
            "every sensor event's walk makes its row"
        );
        assert_eq!(c, b);
        let cmd = column(&a, "process_command_line").as_string::<i32>();
        assert_eq!(cmd.value(3), "echo \"quoted\\\\ 3\" | base64 -d");
    }

    /// Random documents around the ECS layout (types, escapes, repeats, dotted and Windows
    /// names, missing parts): wherever the one-pass reader accepts one, its row is the
    /// general path's.
    #[test]
    fn one_pass_reader_agrees_with_the_general_path_on_odd_documents() {
        let mut rng = fastrand::Rng::with_seed(0x6d61_6d6f_7269);
        fn leaf(rng: &mut fastrand::Rng, depth: u32) -> String {
            match rng.u32(0..12) {
                0 => "null".into(),
                1 => "true".into(),
                2 => format!("{}", rng.i64(..)),
                3 => format!("{}", rng.u64(..)),
                4 => format!("{}.5e{}", rng.i32(-99..99), rng.i32(-5..5)),
                5 => "\"0x1A4\"".into(),
                6 => "\"  42 \"".into(),
                7 => "\"C:\\\\Windows\\\\cmd.exe\"".into(),
                8 => "\"caf\\u00e9 \\\"q\\\" \\n\"".into(),
                9 if depth < 3 => format!("[{}, {}]", leaf(rng, depth + 1), leaf(rng, depth + 1)),
                10 if depth < 3 => format!("{{\"name\": {}}}", leaf(rng, depth + 1)),
                _ => format!("\"v{}\"", rng.u32(0..100)),
            }
        }
        const KEYS: &[&str] = &[
            "\"@timestamp\": \"2026-11-26T10:00:00Z\"",
            "\"@timestamp\": \"yesterday\"",
            "\"process\": {\"pid\": %, \"name\": %, \"executable\": %, \"parent\": {\"pid\": %}}",
            "\"process\": %",
            "\"process\": {\"hash\": {\"sha256\": %}, \"command_line\": %}",
            "\"event\": {\"category\": %, \"code\": %, \"action\": %}",
            "\"event\": %",
            "\"host\": {\"name\": %, \"hostname\": %}",
            "\"host\": {\"hostname\": %}",
            "\"host\": %",
            "\"Computer\": %",
            "\"hostname\": %",
            "\"user\": {\"name\": %, \"id\": %}",
            "\"source\": {\"ip\": %, \"port\": %}",
            "\"destination\": {\"port\": %}",
            "\"dns\": {\"question\": {\"name\": %}}",
            "\"process.name\": %",
            "\"winlog\": {\"computer_name\": %}",
            "\"Image\": %",
            "\"EventData\": {}",
            "\"other\": {\"process\": {\"pid\": %}}",
        ];
        let mut events = Vec::new();
        for _ in 0..3000 {
            let n = rng.usize(1..8);
            let mut parts: Vec<String> = (0..n)
                .map(|_| {
                    let k = KEYS[rng.usize(..KEYS.len())];
                    let mut out = String::new();
                    for (j, piece) in k.split('%').enumerate() {
                        if j > 0 {
                            out.push_str(&leaf(&mut rng, 0));
                        }
                        out.push_str(piece);
                    }
                    out
                })
                .collect();
            if rng.u32(0..5) > 0 {
                parts.insert(0, KEYS[0].to_string());
            }
            events.push(format!("{{{}}}", parts.join(", ")).into_bytes());
        }
        let (a, b, fast) = both(&events);
        assert!(fast > 200, "the reader took only {fast} of 3000 documents");
        assert!(fast < 3000, "the reader gave up on none");
        assert_same(&a, &b, &events);
        let (c, taken) = walked(&events);
        assert!(
            taken > 200,
            "the walk's fields made only {taken} of 3000 rows"
        );
        assert!(taken < 3000, "the walk's fields made every row");
        assert_same(&c, &b, &events);
    }

    /// Fails naming the first column and event where `a` and `b` differ.
    fn assert_same(a: &RecordBatch, b: &RecordBatch, events: &[Vec<u8>]) {
        for (i, (x, y)) in a.columns().iter().zip(b.columns()).enumerate() {
            if x != y {
                let name = a.schema().field(i).name().clone();
                let row = (0..a.num_rows())
                    .find(|&r| x.slice(r, 1) != y.slice(r, 1))
                    .unwrap();
                panic!(
                    "column {name} differs at {}: {:?} vs {:?}",
                    String::from_utf8_lossy(&events[row]),
                    x.slice(row, 1),
                    y.slice(row, 1)
                );
            }
        }
    }

    /// Mutated sensor events (bytes changed, cut, spliced): same rows both ways, no panic.
    #[test]
    fn mutated_sensor_events_give_the_same_rows_both_ways() {
        let seed = sensor_event(7, "echo hi | base64 -d");
        let mut rng = fastrand::Rng::with_seed(0x636f_6c73);
        let events: Vec<Vec<u8>> = (0..3000)
            .map(|_| mamori_model::testing::mutate(&mut rng, &seed, 24))
            .collect();
        let (a, b, fast) = both(&events);
        assert!(
            fast > 100,
            "only {fast} mutated events took the one-pass reader"
        );
        assert_same(&a, &b, &events);
        let (c, taken) = walked(&events);
        assert!(
            taken > 100,
            "only {taken} mutated events' walks made their rows"
        );
        assert_same(&c, &b, &events);
    }
}
