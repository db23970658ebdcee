//! The spool: a bounded, durable on-disk queue between the sensor and the server.
//!
//! Events enter with [`Spool::append`], get a sequence number, and leave only when the server
//! acknowledges them ([`Spool::ack`]). Nothing acknowledged is ever delivered again; nothing
//! unacknowledged is lost silently: a crash, a torn write, a corrupted byte or the quota is
//! each counted and reported.
//!
//! # On-disk format (version 1)
//!
//! A directory of segment files `<first seq, 20 digits>.seg`, an `ack` file (everything up to
//! it is acknowledged) and a `reserved` file (sequence numbers handed out up to it).
//!
//! ```text
//! record  := magic u32 LE (0x314C_504D, "MPL1") | len u32 LE | seq u64 LE | crc u32 LE | payload[len]
//! crc     := CRC-32 (IEEE) of seq bytes ‖ payload
//! ack, reserved := "MACK" | seq u64 LE | crc u32 LE of those 8 bytes
//! ```
//!
//! # Invariants
//!
//! * Sequence numbers start at 1, increase by one per record, and are never reused, even
//!   after a crash that lost the end of a segment: numbers are reserved durably in blocks of
//!   [`SEQ_BLOCK`] (`reserved` file) and a restart continues after the reservation, so a
//!   number that may already have reached the server is never given to another record. A
//!   restart can therefore leave a gap in the numbering; a gap is not a loss.
//! * A segment is deleted only when every record in it is acknowledged, or when the quota
//!   forces eviction of the oldest segment; then its unacknowledged records are counted in
//!   [`SpoolStats::evicted_records`].
//! * The ack file is replaced atomically (write, fsync, rename, fsync the directory).
//! * On open, a partial record at the end of the newest segment (a write cut by a crash) is
//!   truncated away and counted; a damaged record elsewhere is skipped by searching for the
//!   next valid record and counted as corrupt.
//! * [`Spool::append`] buffers; [`Spool::sync`] makes everything appended so far durable
//!   (flush + fsync). A process killed after `sync` loses nothing; one killed before may lose
//!   only what was appended since, never anything earlier.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0x314C_504D;
const HEADER: usize = 20;
const ACK_MAGIC: &[u8; 4] = b"MACK";
/// Sequence numbers reserved per durable reservation.
pub const SEQ_BLOCK: u64 = 4096;
/// Largest payload accepted.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

/// Spool limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolConfig {
    /// A segment is closed and a new one started beyond this size.
    pub segment_bytes: u64,
    /// Total size of all segments; beyond it the oldest segments are evicted.
    pub quota_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            segment_bytes: 16 << 20,
            quota_bytes: 1 << 30,
        }
    }
}

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// The file system failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A payload larger than [`MAX_RECORD_BYTES`].
    #[error("record of {0} bytes is larger than the {MAX_RECORD_BYTES} byte limit")]
    TooLarge(usize),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What opening the spool found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segments found.
    pub segments: usize,
    /// Valid records found (acknowledged or not).
    pub records: u64,
    /// Damaged regions skipped (each is at least one lost record).
    pub corrupted_records: u64,
    /// Bytes skipped inside damaged regions.
    pub corrupted_bytes: u64,
    /// Bytes of a partial record cut off the end of the newest segment.
    pub truncated_tail_bytes: u64,
    /// The acknowledgement watermark read back.
    pub acked: u64,
}

/// Counters since the spool was opened, plus its current depth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records appended.
    pub appended: u64,
    /// Unacknowledged records dropped to stay under the quota.
    pub evicted_records: u64,
    /// Bytes of segments dropped to stay under the quota.
    pub evicted_bytes: u64,
    /// Damaged records met while reading (after open).
    pub corrupted_records: u64,
    /// Records waiting for acknowledgement.
    pub depth_records: u64,
    /// Bytes on disk.
    pub depth_bytes: u64,
    /// Highest acknowledged sequence number.
    pub acked: u64,
    /// Next sequence number to be assigned.
    pub next_seq: u64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Last valid sequence number in it (the number before its first record when empty).
    last: u64,
    bytes: u64,
    /// Offsets of damaged stretches already counted by reads: each is counted once.
    damaged: std::collections::BTreeSet<u64>,
}

/// The spool. See the module documentation for guarantees and format.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    cfg: SpoolConfig,
    segments: VecDeque<Segment>,
    writer: Option<BufWriter<File>>,
    next_seq: u64,
    /// Highest sequence number durably reserved.
    reserved: u64,
    acked: u64,
    /// Unacknowledged sequence numbers present, as runs of consecutive numbers (numbers
    /// jump after a reopen: reserved blocks are never reused).
    runs: VecDeque<(u64, u64)>,
    stats: SpoolStats,
    /// Where the last read stopped (segment, byte offset, next sequence number): a reader
    /// going forward continues there instead of scanning the segment from its start.
    cursor: Option<(PathBuf, u64, u64)>,
}

/// Removes the numbers up to `seq` from the runs; returns how many there were.
fn drop_runs_through(runs: &mut VecDeque<(u64, u64)>, seq: u64) -> u64 {
    let mut n = 0;
    while let Some(r) = runs.front_mut() {
        if r.1 <= seq {
            n += r.1 - r.0 + 1;
            runs.pop_front();
        } else {
            if r.0 <= seq {
                n += seq - r.0 + 1;
                r.0 = seq + 1;
            }
            break;
        }
    }
    n
}

fn push_seq(runs: &mut VecDeque<(u64, u64)>, seq: u64) {
    match runs.back_mut() {
        Some((_, last)) if *last + 1 == seq => *last = seq,
        _ => runs.push_back((seq, seq)),
    }
}

/// CRC-32 (IEEE 802.3) of the concatenated parts (crc32fast: SIMD where available).
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// A record's header: magic, length, sequence number, CRC-32 of sequence number and payload.
fn header(seq: u64, payload: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..20].copy_from_slice(&crc32(&[&seq.to_le_bytes(), payload]).to_le_bytes());
    h
}

/// Parses the record at `buf[at..]`: `Some((seq, payload range, total length))` when valid.
fn decode(buf: &[u8], at: usize) -> Option<(u64, std::ops::Range<usize>, usize)> {
    let h = buf.get(at..at + HEADER)?;
    if u32::from_le_bytes(h[0..4].try_into().ok()?) != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(h[4..8].try_into().ok()?) as usize;
    if len > MAX_RECORD_BYTES {
        return None;
    }
    let seq = u64::from_le_bytes(h[8..16].try_into().ok()?);
    let crc = u32::from_le_bytes(h[16..20].try_into().ok()?);
    let payload = buf.get(at + HEADER..at + HEADER + len)?;
    (crc32(&[&seq.to_le_bytes(), payload]) == crc).then_some((
        seq,
        at + HEADER..at + HEADER + len,
        HEADER + len,
    ))
}

/// Result of scanning one segment's bytes.
struct Scan {
    records: Vec<(u64, std::ops::Range<usize>)>,
    /// Where each damaged stretch starts.
    corrupt_at: Vec<usize>,
    corrupted_bytes: u64,
    /// Offset where a partial record starts at the end (nothing valid after it).
    tail: Option<usize>,
}

/// First piece of a segment that [`Spool::read`] reads (it doubles while more is needed).
const READ_PIECE: u64 = 1 << 20;
const MAX_READ_PIECE: u64 = 16 << 20;

fn scan(buf: &[u8]) -> Scan {
    scan_from(buf, 0, |_| false)
}

/// Scans `buf` from `at`; stops after a record for which `enough` says so (the tail is then
/// where the scan stopped).
fn scan_from(buf: &[u8], mut at: usize, mut enough: impl FnMut(u64) -> bool) -> Scan {
    let mut s = Scan {
        records: Vec::new(),
        corrupt_at: Vec::new(),
        corrupted_bytes: 0,
        tail: None,
    };
    while at < buf.len() {
        if let Some((seq, range, total)) = decode(buf, at) {
            s.records.push((seq, range));
            at += total;
            if enough(seq) {
                s.tail = (at < buf.len()).then_some(at);
                break;
            }
            continue;
        }
        // Not a valid record here: find the next one.
        let next = (at + 1..buf.len())
            .find(|&i| buf[i..].starts_with(&MAGIC.to_le_bytes()) && decode(buf, i).is_some());
        match next {
            Some(n) => {
                s.corrupt_at.push(at);
                s.corrupted_bytes += (n - at) as u64;
                at = n;
            }
            None => {
                s.tail = Some(at);
                break;
            }
        }
    }
    s
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering from whatever a crash left.
    pub fn open(
        dir: impl Into<PathBuf>,
        cfg: SpoolConfig,
    ) -> Result<(Spool, Recovery), SpoolError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut rec = Recovery::default();
        let acked = read_marker(&dir.join("ack"))?;
        let reserved = read_marker(&dir.join("reserved"))?;
        rec.acked = acked;
        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                let first = p
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".seg")?
                    .parse()
                    .ok()?;
                Some((first, p))
            })
            .collect();
        names.sort();
        let mut segments = VecDeque::new();
        let mut max_seq = acked;
        let mut runs = VecDeque::new();
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let mut buf = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut buf))
                .map_err(io(&path))?;
            let s = scan(&buf);
            for &(seq, _) in &s.records {
                if seq > acked {
                    push_seq(&mut runs, seq);
                }
            }
            rec.segments += 1;
            rec.records += s.records.len() as u64;
            rec.corrupted_records += s.corrupt_at.len() as u64;
            rec.corrupted_bytes += s.corrupted_bytes;
            let mut bytes = buf.len() as u64;
            if let Some(tail) = s.tail {
                let cut = (buf.len() - tail) as u64;
                if i + 1 == count {
                    // A write cut short by a crash: remove it so appends continue cleanly.
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io(&path))?;
                    f.set_len(tail as u64).map_err(io(&path))?;
                    f.sync_all().map_err(io(&path))?;
                    rec.truncated_tail_bytes += cut;
                    bytes = tail as u64;
                } else {
                    rec.corrupted_records += 1;
                    rec.corrupted_bytes += cut;
                }
            }
            let last = s
                .records
                .last()
                .map_or(first.saturating_sub(1), |(seq, _)| *seq);
            max_seq = max_seq.max(last);
            segments.push_back(Segment {
                path,
                last,
                bytes,
                damaged: s.corrupt_at.iter().map(|&a| a as u64).collect(),
            });
        }
        let mut spool = Spool {
            dir,
            cfg,
            segments,
            writer: None,
            next_seq: max_seq.max(reserved) + 1,
            reserved,
            acked,
            runs,
            cursor: None,
            stats: SpoolStats::default(),
        };
        spool.drop_acked_segments()?;
        Ok((spool, rec))
    }

    /// Appends one record and returns its sequence number. Buffered: see [`Spool::sync`].
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SpoolError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(SpoolError::TooLarge(payload.len()));
        }
        let need = (HEADER + payload.len()) as u64;
        let full = |s: &Segment| s.bytes > 0 && s.bytes + need > self.cfg.segment_bytes;
        if self.writer.is_none() {
            // First append since open: continue the newest segment if it has room.
            let new = self.segments.back().is_none_or(full);
            self.roll(new)?;
        } else if self.segments.back().is_some_and(full) {
            self.roll(true)?;
        }
        let seq = self.next_seq;
        if seq > self.reserved {
            self.reserved = seq + SEQ_BLOCK - 1;
            write_marker(&self.dir, "reserved", self.reserved)?;
        }
        let header = header(seq, payload);
        let written = match self.writer.as_mut() {
            Some(w) => w.write_all(&header).and_then(|()| w.write_all(payload)),
            None => Err(std::io::Error::other("no open segment")),
        };
        // The path is only named in an error (cloning it for every record cost a malloc).
        written.map_err(|e| io(&self.active_path())(e))?;
        if let Some(s) = self.segments.back_mut() {
            s.bytes += need;
            s.last = seq;
        }
        push_seq(&mut self.runs, seq);
        self.next_seq += 1;
        self.stats.appended += 1;
        self.enforce_quota()?;
        Ok(seq)
    }

    /// Starts a new segment (or reopens the newest for appending when `new` is false).
    fn roll(&mut self, new: bool) -> Result<(), SpoolError> {
        self.flush(false)?;
        self.writer = None;
        if new || self.segments.is_empty() {
            let path = self.dir.join(format!("{:020}.seg", self.next_seq));
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            self.segments.push_back(Segment {
                path,
                last: self.next_seq - 1,
                bytes: 0,
                damaged: Default::default(),
            });
            self.writer = Some(BufWriter::with_capacity(1 << 16, f));
        } else if let Some(s) = self.segments.back() {
            let f = OpenOptions::new()
                .append(true)
                .open(&s.path)
                .map_err(io(&s.path))?;
            self.writer = Some(BufWriter::with_capacity(1 << 16, f));
        }
        Ok(())
    }

    /// Makes every record appended so far durable (flush and fsync).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.flush(true)
    }

    /// The newest segment's file, for error messages.
    fn active_path(&self) -> PathBuf {
        self.segments
            .back()
            .map(|s| s.path.clone())
            .unwrap_or_default()
    }

    /// Writes out the append buffer, and with `durable` fsyncs the segment.
    fn flush(&mut self, durable: bool) -> Result<(), SpoolError> {
        let path = self.active_path();
        if let Some(w) = self.writer.as_mut() {
            w.flush().map_err(io(&path))?;
            if durable {
                w.get_ref().sync_data().map_err(io(&path))?;
            }
        }
        Ok(())
    }

    fn enforce_quota(&mut self) -> Result<(), SpoolError> {
        while self.segments.iter().map(|s| s.bytes).sum::<u64>() > self.cfg.quota_bytes
            && self.segments.len() > 1
        {
            let Some(old) = self.segments.pop_front() else {
                break;
            };
            self.stats.evicted_records += drop_runs_through(&mut self.runs, old.last);
            self.stats.evicted_bytes += old.bytes;
            fs::remove_file(&old.path).map_err(io(&old.path))?;
            // Evicted records will never be delivered: move the watermark past them so the
            // reader does not wait for them.
            self.acked = self.acked.max(old.last);
        }
        Ok(())
    }

    /// Acknowledges every record up to and including `seq`: they will not be read again and
    /// their segments are deleted once wholly acknowledged. Durable when it returns.
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        let seq = seq.min(self.next_seq - 1);
        if seq <= self.acked {
            return Ok(());
        }
        self.acked = seq;
        drop_runs_through(&mut self.runs, seq);
        write_marker(&self.dir, "ack", seq)?;
        self.drop_acked_segments()
    }

    fn drop_acked_segments(&mut self) -> Result<(), SpoolError> {
        // Keep the newest segment (it is being written); drop older ones wholly acknowledged.
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.last <= self.acked)
        {
            if let Some(s) = self.segments.pop_front() {
                fs::remove_file(&s.path).map_err(io(&s.path))?;
            }
        }
        Ok(())
    }

    /// Reads up to `max` unacknowledged records, oldest first, starting after the ack
    /// watermark (and at `from` or later). Records still in the write buffer are flushed
    /// first. Damaged records are skipped and counted.
    pub fn read(&mut self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        self.flush(false)?;
        let start = from.max(self.acked + 1);
        let mut out = Vec::new();
        let Spool {
            segments,
            stats,
            cursor,
            ..
        } = self;
        let mut next_cursor = None;
        for s in segments.iter_mut() {
            if s.last < start || out.len() >= max {
                continue;
            }
            let off = match cursor {
                Some((p, o, next)) if *p == s.path && *next <= start => *o,
                _ => 0,
            };
            // Read in growing pieces, and check only the records needed: a reader that asks
            // for a few thousand records does not read and check the whole segment.
            let mut f = File::open(&s.path).map_err(io(&s.path))?;
            f.seek(SeekFrom::Start(off)).map_err(io(&s.path))?;
            let (mut buf, mut at, mut piece) = (Vec::new(), 0, READ_PIECE);
            let len = f.metadata().map_err(io(&s.path))?.len();
            loop {
                // Room for what the piece will read first: one call, not growth from a probe.
                let left = len.saturating_sub(off + buf.len() as u64);
                buf.reserve(piece.min(left) as usize);
                let got = (&mut f)
                    .take(piece)
                    .read_to_end(&mut buf)
                    .map_err(io(&s.path))?;
                let eof = (got as u64) < piece;
                let mut wanted = out.len();
                let scanned = scan_from(&buf, at, |seq| {
                    wanted += usize::from(seq >= start);
                    wanted >= max
                });
                for &c in &scanned.corrupt_at {
                    if s.damaged.insert(off + c as u64) {
                        stats.corrupted_records += 1;
                    }
                }
                for (seq, range) in scanned.records {
                    at = range.end;
                    if seq >= start && out.len() < max {
                        next_cursor = Some((s.path.clone(), off + range.end as u64, seq + 1));
                        out.push((seq, buf[range].to_vec()));
                    }
                }
                // A record cut by the end of this piece is read whole with the next one.
                at = scanned.tail.unwrap_or(buf.len()).max(at);
                if eof || out.len() >= max {
                    break;
                }
                piece = (piece * 2).min(MAX_READ_PIECE);
            }
        }
        if next_cursor.is_some() {
            *cursor = next_cursor;
        }
        Ok(out)
    }

    /// Current counters and depth.
    pub fn stats(&self) -> SpoolStats {
        let depth_records = self.runs.iter().map(|(a, b)| b - a + 1).sum();
        SpoolStats {
            depth_records,
            depth_bytes: self.segments.iter().map(|s| s.bytes).sum(),
            acked: self.acked,
            next_seq: self.next_seq,
            ..self.stats
        }
    }

    /// The directory holding the spool.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn read_marker(path: &Path) -> Result<u64, SpoolError> {
    match fs::read(path) {
        Ok(b) if b.len() == 16 && &b[0..4] == ACK_MAGIC => {
            let seq: [u8; 8] = b[4..12].try_into().unwrap_or_default();
            let crc = u32::from_le_bytes(b[12..16].try_into().unwrap_or_default());
            // A damaged ack file means nothing is known to be acknowledged: resend
            // (at-least-once) rather than lose.
            Ok(if crc32(&[&seq]) == crc {
                u64::from_le_bytes(seq)
            } else {
                0
            })
        }
        Ok(_) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io(path)(e)),
    }
}

/// Replaces a marker file (`ack`, `reserved`) atomically and durably.
fn write_marker(dir: &Path, name: &str, seq: u64) -> Result<(), SpoolError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(ACK_MAGIC);
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&crc32(&[&seq.to_le_bytes()]).to_le_bytes());
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(&b).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    let dst = dir.join(name);
    fs::rename(&tmp, &dst).map_err(io(&dst))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_go_forward_from_where_they_stopped_and_count_damage_once() {
        let dir = std::env::temp_dir().join(format!("mamori-spool-cursor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut sp, _) = Spool::open(&dir, SpoolConfig::default()).unwrap();
        for i in 0..6u8 {
            sp.append(&[b'a' + i; 8]).unwrap();
        }
        sp.sync().unwrap();
        let got: Vec<u64> = sp.read(1, 2).unwrap().iter().map(|r| r.0).collect();
        assert_eq!(got, vec![1, 2]);
        let got: Vec<(u64, Vec<u8>)> = sp.read(3, 2).unwrap();
        assert_eq!(got, vec![(3, vec![b'c'; 8]), (4, vec![b'd'; 8])]);
        // Damage record 5 on disk after it was written: skipped, counted once however
        // often it is read, also when a reader rewinds.
        let seg = sp.segments.back().unwrap().path.clone();
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = bytes.len() - (HEADER + 8) * 2 + HEADER;
        bytes[at] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let got: Vec<u64> = sp.read(5, 10).unwrap().iter().map(|r| r.0).collect();
        assert_eq!(got, vec![6]);
        let got: Vec<u64> = sp.read(1, 10).unwrap().iter().map(|r| r.0).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 6]);
        assert_eq!(sp.stats().corrupted_records, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn depth_counts_records_across_the_jump_after_a_reopen() {
        let dir = std::env::temp_dir().join(format!("mamori-spool-depth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut sp, _) = Spool::open(&dir, SpoolConfig::default()).unwrap();
        for _ in 0..3 {
            sp.append(b"x").unwrap();
        }
        sp.sync().unwrap();
        drop(sp);
        let (mut sp, _) = Spool::open(&dir, SpoolConfig::default()).unwrap();
        assert_eq!(sp.stats().depth_records, 3);
        let next = sp.append(b"y").unwrap();
        assert!(
            next > 4,
            "numbers reserved before the reopen are not reused"
        );
        assert_eq!(sp.stats().depth_records, 4);
        sp.ack(2).unwrap();
        assert_eq!(sp.stats().depth_records, 2);
        sp.ack(next).unwrap();
        assert_eq!(sp.stats().depth_records, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    use super::*;

    fn encode(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&header(seq, payload));
        out.extend_from_slice(payload);
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
    }

    #[test]
    fn scan_resynchronises_after_damage() {
        let mut buf = Vec::new();
        for seq in 1..=5u64 {
            encode(seq, format!("payload {seq}").as_bytes(), &mut buf);
        }
        let rec_len = HEADER + "payload 1".len();
        buf[rec_len + 22] ^= 0xFF; // damage record 2's payload
        let s = scan(&buf);
        let seqs: Vec<u64> = s.records.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![1, 3, 4, 5]);
        assert_eq!(s.corrupt_at.len(), 1);
        assert_eq!(s.tail, None);
        let s = scan(&buf[..buf.len() - 3]);
        assert_eq!(s.records.len(), 3);
        assert!(s.tail.is_some());
    }
}
