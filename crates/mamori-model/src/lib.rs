//! Mamori's shared vocabulary: the types every other crate speaks.
//!
//! * [`Event`] — one telemetry record (a Windows event, a Sysmon record, an ECS document
//!   from Mamori's own sensor) as a JSON tree plus the [`Shape`] that says how to read it.
//!   [`Event::for_each_field`] flattens any shape into `(name, value)` pairs with the names
//!   Sigma rules use, so the detection engine never needs to know where an event came from.
//! * [`fields`] — the documented mapping layer between Sigma's Sysmon-style field names
//!   (`Image`, `CommandLine`, …) and ECS names (`process.executable`, …).
//! * [`json`] — a pull reader for JSON text that checks it as serde_json would, for the
//!   server's hot paths (checking events on arrival, detection, the compactor).
//! * [`walk`] — the fields of a JSON document in one pass, without building a tree (the
//!   fast path for the sensor's events).
//! * [`Level`] and [`attack`] — rule severity and MITRE ATT&CK tag parsing.
//!
//! This crate does no I/O.

pub mod attack;
pub mod event;
pub mod fields;
pub mod json;
mod level;
pub mod walk;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use event::{Event, EventKind, Product, Shape};
pub use level::{Level, ParseLevelError};
