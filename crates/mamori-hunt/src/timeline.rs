//! The timeline of a hunt: detections sorted by time, held in memory up to a budget and
//! spilled to a temporary file beyond it, so memory stays flat however many detections a
//! large hunt produces. Sorting only needs a 28-byte key per detection.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use mamori_model::Level;

use crate::Detection;

/// Bytes of detections each worker keeps in memory before spilling to disk.
pub const MEMORY_BUDGET: usize = 4 << 20;

/// Order of the timeline: time, then where the event came from, then rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct SortKey {
    pub time_ms: i64,
    pub file: u32,
    pub record: u64,
    pub rule: u32,
}

impl SortKey {
    pub(crate) fn new(ts: Option<DateTime<Utc>>, file: u32, record: u64, rule: usize) -> Self {
        SortKey {
            time_ms: ts.map_or(i64::MIN, |t| t.timestamp_millis()),
            file,
            record,
            rule: rule as u32,
        }
    }
}

#[derive(Debug)]
enum Loc {
    Mem(Box<Detection>),
    Disk { spill: u32, offset: u64, len: u32 },
}

#[derive(Debug)]
struct Entry {
    key: SortKey,
    loc: Loc,
}

/// A temporary file, removed when dropped.
#[derive(Debug)]
struct SpillFile {
    file: File,
    path: PathBuf,
}

/// A spill file being written.
#[derive(Debug)]
struct SpillWriter {
    out: std::io::BufWriter<File>,
    path: PathBuf,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

static SPILL_COUNTER: AtomicU64 = AtomicU64::new(0);

/// One worker's share of the timeline while the hunt runs.
#[derive(Debug)]
pub(crate) struct Collector {
    budget: usize,
    entries: Vec<Entry>,
    spill: Option<SpillWriter>,
    offset: u64,
    in_memory: usize,
    /// Why spilling failed, if it did (the detection is then kept in memory).
    pub spill_error: Option<String>,
}

impl Default for Collector {
    fn default() -> Self {
        Collector::with_budget(MEMORY_BUDGET)
    }
}

impl Collector {
    pub(crate) fn with_budget(budget: usize) -> Self {
        Collector {
            budget,
            entries: Vec::new(),
            spill: None,
            offset: 0,
            in_memory: 0,
            spill_error: None,
        }
    }

    pub(crate) fn push(&mut self, key: SortKey, d: Detection) {
        let size = d.approx_size();
        if self.in_memory + size <= self.budget || self.spill_error.is_some() {
            self.in_memory += size;
            self.entries.push(Entry {
                key,
                loc: Loc::Mem(Box::new(d)),
            });
            return;
        }
        match self.write(&d) {
            Ok((offset, len)) => self.entries.push(Entry {
                key,
                loc: Loc::Disk {
                    spill: 0,
                    offset,
                    len,
                },
            }),
            Err(e) => {
                self.spill_error = Some(e.to_string());
                self.in_memory += size;
                self.entries.push(Entry {
                    key,
                    loc: Loc::Mem(Box::new(d)),
                });
            }
        }
    }

    fn write(&mut self, d: &Detection) -> std::io::Result<(u64, u32)> {
        if self.spill.is_none() {
            let path = std::env::temp_dir().join(format!(
                "mamori-timeline-{}-{}.bin",
                std::process::id(),
                SPILL_COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let file = File::options()
                .create_new(true)
                .read(true)
                .write(true)
                .open(&path)?;
            self.spill = Some(SpillWriter {
                out: std::io::BufWriter::with_capacity(1 << 16, file),
                path,
            });
        }
        let line = to_line(d);
        let spill = self
            .spill
            .as_mut()
            .map(|s| &mut s.out)
            .ok_or_else(|| std::io::Error::other("no spill file"))?;
        spill.write_all(&line)?;
        let at = self.offset;
        self.offset += line.len() as u64;
        Ok((at, line.len() as u32))
    }
}

/// Detections of a hunt, sorted by time.
#[derive(Debug, Default)]
pub struct Timeline {
    entries: Vec<Entry>,
    /// Spill files, flushed and ready for reading.
    spills: Vec<SpillFile>,
    /// Why a spill file could not be written (detections were then kept in memory).
    pub spill_error: Option<String>,
}

impl Timeline {
    pub(crate) fn merge(collectors: Vec<Collector>) -> Timeline {
        let mut t = Timeline::default();
        for c in collectors {
            let spill_id = t.spills.len() as u32;
            let mut error = c.spill_error;
            if let Some(w) = c.spill {
                let path = w.path.clone();
                match w.out.into_inner() {
                    Ok(file) => t.spills.push(SpillFile { file, path }),
                    Err(e) => {
                        // Keep the path so the file is removed; reads will report the loss.
                        let _ = std::fs::remove_file(&path);
                        error = error.or(Some(format!(
                            "flushing the timeline spill file: {}",
                            e.error()
                        )));
                    }
                }
            }
            t.spill_error = t.spill_error.or(error);
            t.entries.extend(c.entries.into_iter().map(|mut e| {
                if let Loc::Disk { spill, .. } = &mut e.loc {
                    *spill = spill_id;
                }
                e
            }));
        }
        t
    }

    pub(crate) fn push(&mut self, key: SortKey, d: Detection) {
        self.entries.push(Entry {
            key,
            loc: Loc::Mem(Box::new(d)),
        });
    }

    pub(crate) fn sort(&mut self) {
        self.entries.sort_by_key(|e| e.key);
    }

    /// Number of detections.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many detections live in spill files.
    pub fn spilled(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| matches!(e.loc, Loc::Disk { .. }))
            .count()
    }

    /// The detections in time order. A detection whose spill record cannot be read back
    /// (the temporary file was removed under us) comes back as an error.
    pub fn iter(&self) -> impl Iterator<Item = Result<Detection, String>> + '_ {
        self.entries.iter().map(|e| match &e.loc {
            Loc::Mem(d) => Ok((**d).clone()),
            Loc::Disk { spill, offset, len } => {
                let file = &self
                    .spills
                    .get(*spill as usize)
                    .ok_or("missing spill file")?
                    .file;
                let mut buf = vec![0; *len as usize];
                file.read_exact_at(&mut buf, *offset)
                    .map_err(|e| format!("reading the timeline spill file: {e}"))?;
                from_line(&buf).ok_or_else(|| "corrupt timeline spill record".to_string())
            }
        })
    }
}

// Spill records: length-prefixed fields, no escaping (the event is already JSON text).

fn put(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn to_line(d: &Detection) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.approx_size());
    out.extend_from_slice(
        &d.timestamp
            .map_or(i64::MIN, |t| t.timestamp_micros())
            .to_le_bytes(),
    );
    out.extend_from_slice(&(d.rule as u64).to_le_bytes());
    out.push(Level::ALL.iter().position(|l| *l == d.level).unwrap_or(0) as u8);
    for s in [&d.host, &d.rule_id, &d.rule_title, &d.source] {
        put(&mut out, s);
    }
    out.extend_from_slice(&(d.tags.len() as u32).to_le_bytes());
    for t in &d.tags {
        put(&mut out, t);
    }
    out.extend_from_slice(&(d.fields.len() as u32).to_le_bytes());
    for (k, v) in &d.fields {
        put(&mut out, k);
        put(&mut out, v);
    }
    put(&mut out, &d.event);
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

fn from_line(bytes: &[u8]) -> Option<Detection> {
    let mut r = Reader(bytes);
    let micros = r.u64()? as i64;
    let rule = r.u64()? as usize;
    let level = *Level::ALL.get(*r.take(1)?.first()? as usize)?;
    let (host, rule_id, rule_title, source) = (r.string()?, r.string()?, r.string()?, r.string()?);
    let tags = (0..r.u32()?)
        .map(|_| r.string())
        .collect::<Option<Vec<_>>>()?;
    let fields = (0..r.u32()?)
        .map(|_| Some((r.string()?, r.string()?)))
        .collect::<Option<Vec<_>>>()?;
    let event = Arc::from(r.string()?);
    Some(Detection {
        timestamp: (micros != i64::MIN)
            .then(|| DateTime::from_timestamp_micros(micros))
            .flatten(),
        host,
        rule,
        rule_id,
        rule_title,
        level,
        tags,
        source,
        fields,
        event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(i: usize) -> Detection {
        Detection {
            timestamp: DateTime::from_timestamp(1_700_000_000 - i as i64, 0),
            host: format!("host{i}"),
            rule: i,
            rule_id: format!("id-{i}"),
            rule_title: "Title with \"quotes\" and ünïcode".into(),
            level: Level::High,
            tags: vec!["attack.t1059".into()],
            source: format!("f.evtx#{i}"),
            fields: vec![("CommandLine".into(), format!("cmd /c {i}\n"))],
            event: Arc::from(format!("{{\"n\": {i}}}")),
        }
    }

    #[test]
    fn spills_beyond_budget_and_reads_back_in_order() {
        let mut a = Collector::with_budget(2_000);
        let mut b = Collector::with_budget(2_000);
        for i in 0..50 {
            let d = det(i);
            let key = SortKey::new(d.timestamp, (i % 2) as u32, i as u64, i);
            if i % 2 == 0 {
                a.push(key, d)
            } else {
                b.push(key, d)
            }
        }
        let mut t = Timeline::merge(vec![a, b]);
        t.sort();
        assert_eq!(t.len(), 50);
        assert!(t.spilled() > 30, "{} spilled", t.spilled());
        let back: Vec<Detection> = t.iter().map(Result::unwrap).collect();
        // Newest event id has the oldest time: sorted by time means descending i.
        let ids: Vec<usize> = back.iter().map(|d| d.rule).collect();
        assert_eq!(ids, (0..50).rev().collect::<Vec<_>>());
        let d = &back[10];
        let orig = det(d.rule);
        assert_eq!(
            (d.host.as_str(), d.rule_title.as_str(), &d.fields, &*d.event),
            (
                orig.host.as_str(),
                orig.rule_title.as_str(),
                &orig.fields,
                &*orig.event
            )
        );
        assert_eq!(d.timestamp, orig.timestamp);
        let paths: Vec<PathBuf> = t.spills.iter().map(|s| s.path.clone()).collect();
        assert!(paths.iter().all(|p| p.exists()));
        drop(t);
        assert!(paths.iter().all(|p| !p.exists()), "spill files removed");
    }
}
