//! Sigma for Mamori: parse, validate, compile and match Sigma rules (specification v2),
//! including correlation rules and Sigma filters.
//!
//! The pipeline follows YARA-X's split between compiler and scanner:
//!
//! ```text
//! YAML text ──parse──▶ Document ──Compiler──▶ RuleSet (immutable, Send + Sync)
//!                                                │
//!                                  Scanner (per thread) ◀── Event
//!                                                │
//!                                  matches ──▶ Correlator (time-ordered) ──▶ correlations
//! ```
//!
//! * [`parse`] turns YAML into [`ast`] documents and rejects malformed ones with a precise
//!   [`SigmaError`];
//! * [`Compiler`] resolves fields to slots, routes logsources, compiles values under their
//!   modifiers and builds the Aho-Corasick prefilter;
//! * [`Scanner`] matches events; [`Correlator`] evaluates correlation rules;
//! * [`load`] reads rule directories and reports, per file and document, what loaded.
//!
//! Regular expressions run on the `regex` crate (linear time); every rule that cannot be
//! supported is reported with its reason and skipped, never a panic.
//!
//! ```
//! use mamori_sigma::{Compiler, parse::parse_documents};
//! use mamori_model::Event;
//!
//! let mut compiler = Compiler::default();
//! for doc in parse_documents(r#"
//! title: Whoami
//! logsource: {product: windows, category: process_creation}
//! detection:
//!     sel: {Image|endswith: '\whoami.exe'}
//!     condition: sel
//! "#) {
//!     compiler.add(doc.unwrap());
//! }
//! let (rules, rejected) = compiler.compile();
//! assert!(rejected.is_empty());
//! let event = Event::new(serde_json::json!({"Event": {
//!     "System": {"Channel": "Microsoft-Windows-Sysmon/Operational", "EventID": 1},
//!     "EventData": {"Image": "C:\\Windows\\System32\\WHOAMI.EXE"}}}));
//! let mut hits = Vec::new();
//! rules.scanner().scan(&event, &mut hits);
//! assert_eq!(hits, vec![0]);
//! ```

pub mod ast;
pub mod compile;
mod condition;
pub mod correlation;
mod error;
pub mod load;
mod logsource;
mod matcher;
pub mod parse;
mod scan;

pub use compile::{CompileOptions, Compiler, Rejected, RuleInfo, RuleKind, RuleSet};
pub use correlation::{CorrelationInput, CorrelationMatch, Correlator};
pub use error::SigmaError;
pub use scan::{ScanStats, Scanner};
