//! Log readers: Windows EVTX files, JSON lines (Sysmon, Winlogbeat, ECS, plain EventData),
//! single or concatenated JSON documents and JSON arrays, each optionally gzip-compressed.
//!
//! Readers push [`Record`]s to a callback and return [`FileStats`]. They never panic and
//! never give up on a file because of one bad record: corrupt chunks, truncated records,
//! invalid JSON lines and invalid UTF-8 are counted (with the first error kept for the
//! report) and reading goes on with the next record. Files are streamed — an EVTX file is
//! read chunk by chunk, JSON line by line — so memory does not grow with file size (gzip'd
//! EVTX is the exception: it is inflated to a temporary file, because EVTX needs seeking).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mamori_model::{Event, Shape};
use serde_json::Value;

/// Longest JSON line accepted; longer lines are counted as errors and skipped.
pub const MAX_LINE_BYTES: usize = 16 << 20;
/// Largest JSON document read as a whole (arrays, pretty-printed objects).
pub const MAX_DOCUMENT_BYTES: u64 = 256 << 20;

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    /// The file.
    pub file: Arc<Path>,
    /// The EVTX record id, or the 1-based line (JSON lines) or document number.
    pub record: u64,
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.file.display(), self.record)
    }
}

/// One event read from a file.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    /// The event.
    pub event: Event,
    /// Where it came from.
    pub source: SourceRef,
    /// The record's compact JSON text, when the reader had it anyway (EVTX renders through
    /// JSON text; JSON lines are read as text): saves re-serialising matched events.
    pub text: Option<&'a str>,
}

/// What reading one file produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Records delivered.
    pub records: u64,
    /// Records (or chunks, or lines) that could not be read.
    pub errors: u64,
    /// The first error, for the report.
    pub first_error: Option<String>,
    /// Bytes of input read (compressed size for gzip).
    pub bytes: u64,
}

impl FileStats {
    fn error(&mut self, msg: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(msg());
        }
    }
}

/// Why a file could not be read at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Opening or reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The content is neither EVTX nor JSON.
    #[error("{path}: not an EVTX or JSON file")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The EVTX header is unusable.
    #[error("{path}: {reason}")]
    Evtx {
        /// The file.
        path: PathBuf,
        /// The parser's reason.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReadError + '_ {
    move |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Lists the log files under `paths`: explicit files as given, directories searched
/// recursively for `*.evtx`, `*.json`, `*.jsonl`, `*.ndjson` (each possibly `.gz`).
/// Sorted, without duplicates.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ReadError> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(io_err(p))?;
        if meta.is_file() {
            out.push(p.clone());
            continue;
        }
        for entry in walkdir::WalkDir::new(p).follow_links(true) {
            let entry = entry.map_err(|e| ReadError::Io {
                path: e.path().map(Path::to_path_buf).unwrap_or_else(|| p.clone()),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("filesystem loop")),
            })?;
            if entry.file_type().is_file() && is_log_name(entry.path()) {
                out.push(entry.path().to_path_buf());
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn is_log_name(p: &Path) -> bool {
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    [".evtx", ".json", ".jsonl", ".ndjson"]
        .iter()
        .any(|e| name.ends_with(e))
}

/// Reads one file, detecting its format from its content, and calls `f` for each record.
pub fn read_file(path: &Path, f: &mut dyn FnMut(Record<'_>)) -> Result<FileStats, ReadError> {
    let file_ref: Arc<Path> = Arc::from(path);
    let mut file = File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut magic = [0u8; 8];
    let n = read_up_to(&mut file, &mut magic).map_err(io_err(path))?;
    file.rewind().map_err(io_err(path))?;
    let mut stats = if magic[..n].starts_with(&[0x1f, 0x8b]) {
        read_gzip(path, &file_ref, file, f)?
    } else if magic[..n].starts_with(b"ElfFile") {
        read_evtx(path, &file_ref, BufReader::with_capacity(1 << 16, file), f)?
    } else {
        read_json(path, &file_ref, BufReader::with_capacity(1 << 16, file), f)?
    };
    stats.bytes = size;
    Ok(stats)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes a temporary file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn read_gzip(
    path: &Path,
    file_ref: &Arc<Path>,
    file: File,
    f: &mut dyn FnMut(Record<'_>),
) -> Result<FileStats, ReadError> {
    let mut gz = BufReader::with_capacity(1 << 16, flate2::read::MultiGzDecoder::new(file));
    let head = gz.fill_buf().map_err(io_err(path))?;
    if head.starts_with(b"ElfFile") {
        let tmp = TempFile(std::env::temp_dir().join(format!(
            "mamori-{}-{}.evtx",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        )));
        let mut out = File::create(&tmp.0).map_err(io_err(&tmp.0))?;
        std::io::copy(&mut gz, &mut out).map_err(io_err(path))?;
        drop(out);
        let inner = File::open(&tmp.0).map_err(io_err(&tmp.0))?;
        return read_evtx(path, file_ref, BufReader::with_capacity(1 << 16, inner), f);
    }
    read_json(path, file_ref, gz, f)
}

fn read_evtx(
    path: &Path,
    file_ref: &Arc<Path>,
    input: impl Read + Seek,
    f: &mut dyn FnMut(Record<'_>),
) -> Result<FileStats, ReadError> {
    // The evtx crate is defensive, but a panic in a third-party parser must not take the
    // hunt down: it becomes an error for this file.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut stats = FileStats::default();
        let parser = evtx::EvtxParser::from_read_seek(input);
        let mut parser = match parser {
            Ok(p) => {
                p.with_configuration(evtx::ParserSettings::new().separate_json_attributes(true))
            }
            Err(e) => {
                return Err(ReadError::Evtx {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        };
        for r in parser.records_json() {
            match r.map_err(|e| e.to_string()).and_then(|rec| {
                let v: Value = serde_json::from_str(&rec.data).map_err(|e| e.to_string())?;
                Ok((rec, v))
            }) {
                Ok((rec, v)) => {
                    stats.records += 1;
                    f(Record {
                        event: Event::with_shape(v, Shape::Evtx),
                        source: SourceRef {
                            file: file_ref.clone(),
                            record: rec.event_record_id,
                        },
                        text: Some(&rec.data),
                    });
                }
                Err(e) => stats.error(|| e),
            }
        }
        Ok(stats)
    }));
    match result {
        Ok(r) => r,
        Err(_) => Err(ReadError::Evtx {
            path: path.to_path_buf(),
            reason: "the EVTX parser failed on this file (internal panic caught)".into(),
        }),
    }
}

fn read_json(
    path: &Path,
    file_ref: &Arc<Path>,
    mut r: impl BufRead,
    f: &mut dyn FnMut(Record<'_>),
) -> Result<FileStats, ReadError> {
    let mut stats = FileStats::default();
    let mut line = Vec::new();
    let mut line_no = 0u64;
    // Skip a UTF-8 byte order mark and leading blank lines, then decide the layout.
    let first = loop {
        line.clear();
        let n = read_line_limited(&mut r, &mut line).map_err(io_err(path))?;
        if n == 0 {
            return Ok(stats);
        }
        line_no += 1;
        if line.starts_with(&[0xEF, 0xBB, 0xBF]) {
            line.drain(..3);
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            break line.clone();
        }
    };
    let trimmed = first.trim_ascii();
    let first_char = trimmed.first().copied();
    if first_char == Some(b'{') && serde_json::from_slice::<Value>(trimmed).is_ok() {
        // JSON lines.
        deliver_line(trimmed, line_no, file_ref, &mut stats, f);
        loop {
            line.clear();
            let n = match read_line_limited(&mut r, &mut line) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    line_no += 1;
                    stats.error(|| format!("line {line_no}: {e}"));
                    continue;
                }
                Err(e) => return Err(io_err(path)(e)),
            };
            if n == 0 {
                break;
            }
            line_no += 1;
            let t = line.trim_ascii();
            if !t.is_empty() {
                deliver_line(t, line_no, file_ref, &mut stats, f);
            }
        }
        return Ok(stats);
    }
    if first_char != Some(b'{') && first_char != Some(b'[') {
        return Err(ReadError::UnknownFormat {
            path: path.to_path_buf(),
        });
    }
    // A pretty-printed document, concatenated documents or an array: read as a stream.
    let chained = std::io::Cursor::new(first)
        .chain(r)
        .take(MAX_DOCUMENT_BYTES);
    let mut doc_no = 0u64;
    let stream = serde_json::Deserializer::from_reader(chained).into_iter::<Value>();
    for v in stream {
        match v {
            Ok(Value::Array(items)) => {
                for item in items {
                    doc_no += 1;
                    deliver_value(item, doc_no, file_ref, &mut stats, f, None);
                }
            }
            Ok(v) => {
                doc_no += 1;
                deliver_value(v, doc_no, file_ref, &mut stats, f, None);
            }
            Err(e) => {
                stats.error(|| {
                    format!("invalid JSON after document {doc_no}: {e}; rest of file skipped")
                });
                break;
            }
        }
    }
    Ok(stats)
}

fn deliver_line(
    bytes: &[u8],
    line_no: u64,
    file_ref: &Arc<Path>,
    stats: &mut FileStats,
    f: &mut dyn FnMut(Record<'_>),
) {
    match serde_json::from_slice::<Value>(bytes) {
        // from_slice validated the bytes as UTF-8 JSON.
        Ok(v) => deliver_value(
            v,
            line_no,
            file_ref,
            stats,
            f,
            std::str::from_utf8(bytes).ok(),
        ),
        Err(e) => stats.error(|| format!("line {line_no}: invalid JSON: {e}")),
    }
}

fn deliver_value(
    v: Value,
    record: u64,
    file_ref: &Arc<Path>,
    stats: &mut FileStats,
    f: &mut dyn FnMut(Record<'_>),
    text: Option<&str>,
) {
    if !v.is_object() {
        stats.error(|| format!("record {record}: expected a JSON object"));
        return;
    }
    stats.records += 1;
    f(Record {
        event: Event::new(v),
        source: SourceRef {
            file: file_ref.clone(),
            record,
        },
        text,
    });
}

/// Reads one line (without limit on count, with a limit on length). A line longer than
/// [`MAX_LINE_BYTES`] is consumed and reported as `InvalidData`.
fn read_line_limited(r: &mut impl BufRead, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    let mut too_long = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let (chunk, done) = match buf.iter().position(|&c| c == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let len = chunk.len();
        if !too_long {
            if out.len() + len > MAX_LINE_BYTES {
                too_long = true;
                out.clear();
            } else {
                out.extend_from_slice(chunk);
            }
        }
        total += len;
        r.consume(len);
        if done {
            break;
        }
    }
    if too_long {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("line longer than {MAX_LINE_BYTES} bytes skipped"),
        ));
    }
    Ok(total)
}

/// Reads records from an in-memory buffer (fuzzing and tests) through the same readers as
/// files: EVTX when it starts with the EVTX magic, JSON otherwise.
pub fn read_bytes(data: &[u8], f: &mut dyn FnMut(Record<'_>)) -> FileStats {
    let memory = Path::new("<memory>");
    let file_ref: Arc<Path> = Arc::from(memory);
    let result = if data.starts_with(b"ElfFile") {
        read_evtx(memory, &file_ref, std::io::Cursor::new(data), f)
    } else {
        read_json(memory, &file_ref, data, f)
    };
    let mut stats = result.unwrap_or_else(|e| {
        let mut s = FileStats::default();
        s.error(|| e.to_string());
        s
    });
    stats.bytes = data.len() as u64;
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Owned {
        event: Event,
        source: SourceRef,
    }

    fn collect(data: &[u8]) -> (Vec<Owned>, FileStats) {
        let mut out = Vec::new();
        let stats = read_bytes(data, &mut |r| {
            if let Some(t) = r.text {
                assert_eq!(serde_json::from_str::<Value>(t).unwrap(), r.event.data);
            }
            out.push(Owned {
                event: r.event,
                source: r.source,
            })
        });
        (out, stats)
    }

    #[test]
    fn json_lines_with_bad_lines() {
        let (recs, stats) = collect(b"{\"a\":1}\n\nnot json\n{\"b\":2}\n[1]\n{\"c\":\n");
        assert_eq!(recs.len(), 2);
        assert_eq!(stats.errors, 3);
        assert_eq!(recs[1].source.record, 4);
        assert!(stats.first_error.unwrap().starts_with("line 3"));
    }

    #[test]
    fn pretty_and_arrays() {
        let (recs, stats) =
            collect(b"{\n  \"Event\": {\"System\": {\"EventID\": 1}}\n}\n{\"x\": 2}");
        assert_eq!((recs.len(), stats.errors), (2, 0));
        assert_eq!(recs[0].event.shape, Shape::Evtx);
        let (recs, _) = collect(b"[{\"a\":1},{\"b\":2},3]");
        assert_eq!(recs.len(), 2);
        let (recs, stats) = collect(b"{\n\"a\": [1, 2\n");
        assert_eq!((recs.len(), stats.errors), (0, 1));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let (recs, stats) = collect(b"\x00\x01garbage");
        assert!(recs.is_empty());
        assert_eq!(stats.errors, 1);
        let mut evtxish = b"ElfFile\0".to_vec();
        evtxish.extend(std::iter::repeat_n(0xAB, 70000));
        let (recs, _) = collect(&evtxish);
        assert!(recs.is_empty());
    }
}
