//! One telemetry record, whatever its origin, and the uniform way to read its fields.
//!
//! Events stay in the JSON tree their reader produced (no copy into another structure): the
//! [`Shape`] says how that tree is laid out, and [`Event::for_each_field`] walks it, handing
//! out `(name, value)` pairs named the way Sigma rules address them:
//!
//! | shape | where fields come from | names |
//! |---|---|---|
//! | [`Shape::Evtx`] | `Event.System`, `Event.EventData`, `Event.UserData.*` | `EventID`, `Channel`, `Computer`, `Provider_Name`, EventData names as-is |
//! | [`Shape::Winlogbeat`] | `winlog.*`, `winlog.event_data`, everything else dotted | as Evtx, plus dotted ECS names |
//! | [`Shape::Ecs`] / [`Shape::Flat`] | every leaf | dotted path (`process.command_line`, `Image`) |
//!
//! XML attributes appear as `<element>_<attribute>` (`Provider_Name`,
//! `TimeCreated_SystemTime`), whether the reader separated them (`Provider_attributes`) or
//! nested them (`Provider.#attributes`).

use std::borrow::Cow;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};

/// How an event's JSON tree is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// A Windows event as rendered from EVTX/XML: `{"Event": {"System": …, "EventData": …}}`
    /// (the `Event` wrapper is optional).
    Evtx,
    /// A Winlogbeat document: `{"winlog": {"event_id": …, "event_data": …}, "@timestamp": …}`.
    Winlogbeat,
    /// An Elastic Common Schema document (Mamori's own sensor events): nested objects.
    Ecs,
    /// Anything else: a flat or nested JSON object read as dotted paths (plain EventData).
    Flat,
}

/// The operating system or product an event comes from (Sigma's `logsource.product`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Product {
    /// Microsoft Windows.
    Windows,
    /// Linux.
    Linux,
    /// macOS.
    MacOs,
    /// Another product, lowercased (`aws`, `okta`, …).
    Other(String),
    /// Not known.
    Unknown,
}

/// What kind of event this is: the facts Sigma logsource routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventKind<'a> {
    /// Product the event comes from.
    pub product: Product,
    /// Windows channel (`Security`, `Microsoft-Windows-Sysmon/Operational`).
    pub channel: Option<&'a str>,
    /// Windows provider name (`Microsoft-Windows-Security-Auditing`).
    pub provider: Option<&'a str>,
    /// Windows event id.
    pub event_id: Option<u32>,
    /// ECS `event.category` values (`process`, `network`, `file`, …).
    pub ecs_category: Vec<&'a str>,
    /// ECS `event.type` values (`start`, `end`, `creation`, …).
    pub ecs_type: Vec<&'a str>,
    /// Service hint for non-Windows logs (ECS `event.module`/`event.dataset`, or
    /// `cloudtrail` when the record is an AWS CloudTrail record).
    pub service: Option<Cow<'a, str>>,
}

/// One telemetry record.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The record as a JSON tree.
    pub data: Value,
    /// How `data` is laid out.
    pub shape: Shape,
}

impl Event {
    /// Wraps a JSON tree, detecting its shape.
    pub fn new(data: Value) -> Self {
        let shape = detect_shape(&data);
        Event { data, shape }
    }

    /// Wraps a JSON tree whose shape is already known.
    pub fn with_shape(data: Value, shape: Shape) -> Self {
        Event { data, shape }
    }

    /// The object that holds `System`/`EventData` for an EVTX-shaped event.
    fn evtx_root(&self) -> Option<&Map<String, Value>> {
        let obj = self.data.as_object()?;
        match find(obj, "Event").and_then(Value::as_object) {
            Some(inner) => Some(inner),
            None => Some(obj),
        }
    }

    fn system(&self) -> Option<&Map<String, Value>> {
        find(self.evtx_root()?, "System")?.as_object()
    }

    /// Looks a value up by a dotted path in the raw tree (`winlog.event_data.Image`).
    pub fn get_path(&self, path: &str) -> Option<&Value> {
        let mut cur = &self.data;
        if let Some(v) = cur.as_object().and_then(|o| o.get(path)) {
            return Some(v);
        }
        for part in path.split('.') {
            cur = cur.as_object()?.get(part)?;
        }
        Some(cur)
    }

    /// Calls `f` with every field of the event, named as Sigma rules address it (see the
    /// module documentation). Values may be strings, numbers, booleans, null or arrays.
    pub fn for_each_field(&self, f: &mut dyn FnMut(&str, &Value)) {
        self.for_each_field_with(&mut String::new(), f);
    }

    /// [`Event::for_each_field`] with a caller-provided buffer for composed field names, so
    /// that a scanner reading many events allocates nothing.
    pub fn for_each_field_with(&self, name: &mut String, f: &mut dyn FnMut(&str, &Value)) {
        name.clear();
        match self.shape {
            Shape::Evtx => {
                if let Some(root) = self.evtx_root() {
                    evtx_fields(root, name, f);
                }
            }
            Shape::Winlogbeat => {
                if let Some(obj) = self.data.as_object() {
                    if let Some(w) = obj.get("winlog").and_then(Value::as_object) {
                        winlog_fields(w, name, f);
                    }
                    flatten(obj, name, f);
                }
            }
            Shape::Ecs | Shape::Flat => {
                if let Some(obj) = self.data.as_object() {
                    flatten(obj, name, f);
                }
            }
        }
    }

    /// The event's time, if it carries one that parses.
    pub fn timestamp(&self) -> Option<DateTime<Utc>> {
        let v = match self.shape {
            Shape::Evtx => {
                let sys = self.system()?;
                sys.get("TimeCreated_attributes")
                    .and_then(|a| a.get("SystemTime"))
                    .or_else(|| {
                        sys.get("TimeCreated")?
                            .get("#attributes")?
                            .get("SystemTime")
                    })
            }
            _ => [
                "@timestamp",
                "timestamp",
                "TimeCreated",
                "UtcTime",
                "time",
                "eventTime",
            ]
            .iter()
            .find_map(|k| self.get_path(k)),
        }?;
        parse_time(v.as_str()?)
    }

    /// The host the event comes from (`Computer` for Windows events, `host.name` for ECS).
    pub fn host(&self) -> Option<&str> {
        match self.shape {
            Shape::Evtx => self.system()?.get("Computer")?.as_str(),
            _ => [
                "winlog.computer_name",
                "host.name",
                "host.hostname",
                "Computer",
                "hostname",
            ]
            .iter()
            .find_map(|k| self.get_path(k).and_then(Value::as_str)),
        }
    }

    /// The facts logsource routing needs.
    pub fn kind(&self) -> EventKind<'_> {
        let mut kind = EventKind {
            product: Product::Unknown,
            channel: None,
            provider: None,
            event_id: None,
            ecs_category: Vec::new(),
            ecs_type: Vec::new(),
            service: None,
        };
        match self.shape {
            Shape::Evtx => {
                kind.product = Product::Windows;
                if let Some(sys) = self.system() {
                    // One pass over the dozen System elements beats a hashed lookup each.
                    for (k, v) in sys {
                        match k.as_str() {
                            "Channel" => kind.channel = v.as_str(),
                            "EventID" => kind.event_id = as_u32(v),
                            "Provider_attributes" => {
                                kind.provider = v
                                    .as_object()
                                    .and_then(|a| find(a, "Name"))
                                    .and_then(Value::as_str)
                            }
                            "Provider" => {
                                kind.provider = v
                                    .as_object()
                                    .and_then(|p| find(p, "#attributes"))
                                    .and_then(Value::as_object)
                                    .and_then(|a| find(a, "Name"))
                                    .and_then(Value::as_str)
                            }
                            _ => {}
                        }
                    }
                }
            }
            Shape::Winlogbeat => {
                kind.product = Product::Windows;
                kind.channel = self.get_path("winlog.channel").and_then(Value::as_str);
                kind.provider = self
                    .get_path("winlog.provider_name")
                    .and_then(Value::as_str);
                kind.event_id = self
                    .get_path("winlog.event_id")
                    .or_else(|| self.get_path("event.code"))
                    .and_then(as_u32);
            }
            Shape::Ecs | Shape::Flat => {
                if let Some(os) = ["host.os.type", "host.os.platform", "host.os.family"]
                    .iter()
                    .find_map(|k| self.get_path(k).and_then(Value::as_str))
                {
                    kind.product = Product::from_os(os);
                }
                kind.ecs_category = str_list(self.get_path("event.category"));
                kind.ecs_type = str_list(self.get_path("event.type"));
                kind.service = ["event.dataset", "event.module"]
                    .iter()
                    .find_map(|k| self.get_path(k).and_then(Value::as_str))
                    .map(Cow::Borrowed);
                // Plain EventData exports of Windows events.
                if let Some(id) = self.get_path("EventID").and_then(as_u32) {
                    kind.event_id = Some(id);
                    kind.channel = self.get_path("Channel").and_then(Value::as_str);
                    kind.provider = self.get_path("Provider_Name").and_then(Value::as_str);
                    if kind.product == Product::Unknown {
                        kind.product = Product::Windows;
                    }
                }
                if kind.product == Product::Unknown
                    && self.get_path("eventSource").is_some()
                    && self.get_path("awsRegion").is_some()
                {
                    kind.product = Product::Other("aws".into());
                    kind.service = Some(Cow::Borrowed("cloudtrail"));
                }
            }
        }
        kind
    }
}

/// Finds a key in a small JSON object by walking it: for the handful of keys an event
/// element has, comparing strings is cheaper than hashing one.
#[inline]
fn find<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if obj.len() > 16 {
        return obj.get(key);
    }
    obj.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
}

impl Product {
    /// The product an ECS `host.os.type` (or platform, or family) names.
    pub fn from_os(os: &str) -> Product {
        match os.to_ascii_lowercase().as_str() {
            "windows" => Product::Windows,
            "linux" => Product::Linux,
            "macos" | "darwin" => Product::MacOs,
            other => Product::Other(other.to_string()),
        }
    }
}

fn str_list(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Reads an event id that may be a number, a numeric string or `{"#text": n}`.
pub fn as_u32(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        Value::Object(o) => o.get("#text").and_then(as_u32),
        _ => None,
    }
}

/// Detects the layout of a JSON tree.
pub fn detect_shape(v: &Value) -> Shape {
    let Some(obj) = v.as_object() else {
        return Shape::Flat;
    };
    if let Some(inner) = obj.get("Event").and_then(Value::as_object)
        && inner.contains_key("System")
    {
        return Shape::Evtx;
    }
    if obj.contains_key("System") && (obj.contains_key("EventData") || obj.contains_key("UserData"))
    {
        return Shape::Evtx;
    }
    if obj.get("winlog").is_some_and(Value::is_object) {
        return Shape::Winlogbeat;
    }
    if obj.contains_key("@timestamp")
        && (obj.get("event").is_some_and(Value::is_object)
            || obj.get("process").is_some_and(Value::is_object)
            || obj.get("host").is_some_and(Value::is_object))
    {
        return Shape::Ecs;
    }
    Shape::Flat
}

/// Parses the timestamp formats seen in Windows, Sysmon and ECS records.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.fZ",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f %z") {
        return Some(t.with_timezone(&Utc));
    }
    None
}

fn with_name<'n>(buf: &'n mut String, parts: &[&str]) -> &'n str {
    buf.clear();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            buf.push('_');
        }
        buf.push_str(p);
    }
    buf
}

/// Emits an element that may carry `#text` and `#attributes`.
fn element(key: &str, v: &Value, name: &mut String, f: &mut dyn FnMut(&str, &Value)) {
    match v {
        Value::Object(o) if o.contains_key("#text") || o.contains_key("#attributes") => {
            if let Some(t) = o.get("#text") {
                f(key, t);
            }
            if let Some(attrs) = o.get("#attributes").and_then(Value::as_object) {
                for (a, av) in attrs {
                    f(with_name(name, &[key, a]), av);
                }
            }
        }
        _ => f(key, v),
    }
}

fn evtx_fields(root: &Map<String, Value>, name: &mut String, f: &mut dyn FnMut(&str, &Value)) {
    if let Some(sys) = find(root, "System").and_then(Value::as_object) {
        for (k, v) in sys {
            if let Some(base) = k.strip_suffix("_attributes")
                && let Some(attrs) = v.as_object()
            {
                for (a, av) in attrs {
                    f(with_name(name, &[base, a]), av);
                }
                continue;
            }
            element(k, v, name, f);
        }
    }
    match find(root, "EventData") {
        Some(Value::Object(data)) => data_fields(data, name, f),
        Some(v @ (Value::String(_) | Value::Array(_))) => f("Data", v),
        _ => {}
    }
    if let Some(Value::Object(user)) = find(root, "UserData") {
        for (k, v) in user {
            match v {
                Value::Object(inner) if !k.ends_with("_attributes") && k != "#attributes" => {
                    data_fields(inner, name, f)
                }
                _ => {}
            }
        }
    }
}

fn data_fields(data: &Map<String, Value>, name: &mut String, f: &mut dyn FnMut(&str, &Value)) {
    for (k, v) in data {
        if k == "#attributes" || k.ends_with("_attributes") {
            continue;
        }
        if k == "Data"
            && let Value::Object(o) = v
            && let Some(t) = o.get("#text")
        {
            f("Data", t);
            continue;
        }
        element(k, v, name, f);
        // Defender and other providers name fields with spaces ("Threat Name"); Sigma rules
        // write them without ("ThreatName").
        if k.contains(' ') {
            let squeezed: String = k.chars().filter(|c| *c != ' ').collect();
            element(&squeezed, v, name, f);
        }
    }
}

fn winlog_fields(w: &Map<String, Value>, name: &mut String, f: &mut dyn FnMut(&str, &Value)) {
    for (k, target) in [
        ("event_id", "EventID"),
        ("channel", "Channel"),
        ("provider_name", "Provider_Name"),
        ("computer_name", "Computer"),
        ("record_id", "EventRecordID"),
        ("task", "Task"),
        ("opcode", "Opcode"),
    ] {
        if let Some(v) = w.get(k) {
            f(target, v);
        }
    }
    for section in ["event_data", "user_data"] {
        if let Some(data) = w.get(section).and_then(Value::as_object) {
            data_fields(data, name, f);
        }
    }
}

fn flatten(obj: &Map<String, Value>, name: &mut String, f: &mut dyn FnMut(&str, &Value)) {
    for (k, v) in obj {
        let len = name.len();
        if len > 0 {
            name.push('.');
        }
        name.push_str(k);
        match v {
            Value::Object(inner) => flatten(inner, name, f),
            _ => f(name, v),
        }
        name.truncate(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(e: &Event) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        e.for_each_field(&mut |k, v| out.push((k.to_string(), v.clone())));
        out
    }

    #[test]
    fn evtx_with_nested_attributes() {
        let e = Event::new(json!({"Event": {"#attributes": {"xmlns": "x"}, "System": {
            "Provider": {"#attributes": {"Name": "Microsoft-Windows-Sysmon"}},
            "EventID": {"#attributes": {"Qualifiers": 0}, "#text": 1},
            "Channel": "Microsoft-Windows-Sysmon/Operational",
            "Computer": "pc1",
            "TimeCreated": {"#attributes": {"SystemTime": "2026-04-17T05:24:53.092051Z"}}},
            "EventData": {"Image": "C:\\x.exe", "ProcessId": 42}}}));
        assert_eq!(e.shape, Shape::Evtx);
        let f = fields(&e);
        assert!(f.contains(&("Provider_Name".into(), json!("Microsoft-Windows-Sysmon"))));
        assert!(f.contains(&("EventID".into(), json!(1))));
        assert!(f.contains(&("Image".into(), json!("C:\\x.exe"))));
        let k = e.kind();
        assert_eq!(k.event_id, Some(1));
        assert_eq!(k.provider, Some("Microsoft-Windows-Sysmon"));
        assert_eq!(e.host(), Some("pc1"));
        assert_eq!(
            e.timestamp().unwrap().to_rfc3339(),
            "2026-04-17T05:24:53.092051+00:00"
        );
    }

    #[test]
    fn evtx_with_separated_attributes_and_userdata() {
        let e = Event::new(json!({"Event": {"System": {
            "Provider_attributes": {"Name": "Microsoft-Windows-Eventlog"},
            "EventID": 1102, "Channel": "Security",
            "TimeCreated_attributes": {"SystemTime": "2020-01-01T00:00:00Z"}},
            "UserData": {"LogFileCleared": {"SubjectUserName": "bob"}}}}));
        let f = fields(&e);
        assert!(f.contains(&("Provider_Name".into(), json!("Microsoft-Windows-Eventlog"))));
        assert!(f.contains(&("SubjectUserName".into(), json!("bob"))));
        assert_eq!(e.kind().event_id, Some(1102));
        assert!(e.timestamp().is_some());
    }

    #[test]
    fn winlogbeat_and_ecs() {
        let w = Event::new(json!({"@timestamp": "2026-01-01T00:00:00Z", "winlog": {
            "event_id": "1", "channel": "Microsoft-Windows-Sysmon/Operational",
            "computer_name": "pc2", "event_data": {"CommandLine": "whoami"}}}));
        assert_eq!(w.shape, Shape::Winlogbeat);
        assert_eq!(w.kind().event_id, Some(1));
        assert_eq!(w.host(), Some("pc2"));
        assert!(fields(&w).contains(&("CommandLine".into(), json!("whoami"))));

        let e = Event::new(json!({"@timestamp": "2026-01-01T00:00:00Z",
            "event": {"category": ["process"], "type": ["start"]},
            "host": {"name": "web1", "os": {"type": "linux"}},
            "process": {"command_line": "id", "parent": {"executable": "/bin/sh"}}}));
        assert_eq!(e.shape, Shape::Ecs);
        let k = e.kind();
        assert_eq!(k.product, Product::Linux);
        assert_eq!(k.ecs_category, vec!["process"]);
        let f = fields(&e);
        assert!(f.contains(&("process.parent.executable".into(), json!("/bin/sh"))));
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        for v in [
            json!(null),
            json!([1, 2]),
            json!("x"),
            json!({"Event": 3}),
            json!({"Event": {"System": 5, "EventData": null}}),
        ] {
            let e = Event::new(v);
            let _ = fields(&e);
            let _ = e.kind();
            let _ = e.timestamp();
            let _ = e.host();
        }
    }
}
