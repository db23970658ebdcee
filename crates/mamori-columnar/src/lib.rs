//! Mamori's columnar event store: every event the server keeps, as Parquet files, searched
//! with SQL.
//!
//! * [`schema`]: the `events` table: typed columns for what hunters filter on (time, host,
//!   process, user, file, network, DNS; Linux and Windows names mapped to the same columns)
//!   and the whole event as JSON in `raw`.
//! * [`files`]: file layout (`tenant=…/day=…/<from>-<to>.parquet`), atomic writes, merges,
//!   crash repair.
//! * [`query`]: read-only SQL (DataFusion) scoped to a tenant, bounded in rows, memory and
//!   time; results as text, JSON or CSV.
//! * [`udf`]: `json_get(raw, 'dotted.path')` for fields without a column.
//!
//! [`EventStore`] is what the server needs from an event store; [`ParquetStore`] is the
//! embedded implementation (files on local disk). A store on object storage or PostgreSQL
//! implements the same trait.
//!
//! The writer is fed from the server's ingest log: rows carry their log position, a flush
//! writes one file per tenant, then records the position it reached. Positions make writes
//! idempotent: after a crash the writer re-reads the log from the recorded position and
//! skips, per tenant, what a file already holds. Nothing is lost and nothing is stored
//! twice.

mod fast;
pub mod files;
pub mod query;
pub mod schema;
pub mod udf;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use datafusion::arrow::array::RecordBatch;

pub use files::DataFile;
pub use query::{Engine, Limits, Scope, Table};
pub use schema::{Fields, Origin, RowBuilder};

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing files.
    #[error("event store: {0}")]
    Io(String),
    /// The query was refused or failed (the message says why, for the user).
    #[error("{0}")]
    Query(String),
    /// A caller's mistake.
    #[error("{0}")]
    Invalid(String),
}

/// How long and how much the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Days kept (by the day the server stored the events).
    pub max_age_days: u32,
    /// Bytes kept at most: the oldest files go first.
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age_days: 45,
            max_bytes: 100 << 30,
        }
    }
}

/// One event to store.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// Its position in the ingest log.
    pub log_seq: u64,
    /// Where it comes from.
    pub origin: Origin<'a>,
    /// The event (JSON).
    pub event: &'a [u8],
}

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Rows stored.
    pub rows: u64,
    /// Rows skipped because a file already held them (a flush repeated after a crash).
    pub skipped: u64,
    /// Files written.
    pub files: u64,
}

/// What maintenance did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Files deleted because they were older than the retention age.
    pub expired_files: u64,
    /// Files deleted to stay within the size limit.
    pub evicted_files: u64,
    /// Bytes deleted.
    pub deleted_bytes: u64,
    /// Merges done.
    pub merges: u64,
}

/// The store's size.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreStats {
    /// Files.
    pub files: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// The oldest day held (`YYYY-MM-DD`).
    pub oldest_day: Option<String>,
    /// The ingest log position stored through.
    pub position: u64,
}

/// What the server needs from an event store.
pub trait EventStore: Send + Sync {
    /// Stores `rows` (ascending log positions) and records that the log was consumed
    /// through `through`. `now_us` (microseconds since the epoch) dates the files.
    fn write(&self, rows: &[Row<'_>], through: u64, now_us: i64) -> Result<Written, StoreError>;
    /// Stores rows another part built already (see [`Built`]), as [`EventStore::write`]
    /// stores events: rows whose log positions are stored already are skipped.
    fn write_built(
        &self,
        built: &[Built],
        through: u64,
        now_us: i64,
    ) -> Result<Written, StoreError>;
    /// The log position stored through: the writer resumes after it.
    fn position(&self) -> u64;
    /// Runs a read-only SQL query over the `events` table.
    fn query(&self, scope: &Scope, sql: &str, limits: Limits) -> Result<Table, StoreError>;
    /// Applies retention and merges small files.
    fn maintain(&self, now_us: i64) -> Result<Maintenance, StoreError>;
    /// Size and extent.
    fn stats(&self) -> StoreStats;
}

/// Rows of one tenant built by a part that read the events anyway (detection walks every
/// event; [`RowBuilder::push_fields`]), so that the store does not read them again.
#[derive(Debug)]
pub struct Built {
    /// The rows' tenant.
    pub tenant: String,
    /// Each row's position in the ingest log, ascending.
    pub log_seqs: Vec<u64>,
    /// The rows, in the [`schema::schema`].
    pub batch: RecordBatch,
}

struct Inner {
    files: Vec<DataFile>,
    position: u64,
    high_water: BTreeMap<String, u64>,
}

/// The embedded store: Parquet files under one directory.
pub struct ParquetStore {
    root: PathBuf,
    retention: Retention,
    inner: Mutex<Inner>,
    engine: Engine,
}

/// Files of one tenant and day beyond which small ones are merged.
const MERGE_AT: usize = 24;
/// Files at least this big are not merged again.
const MERGED_BYTES: u64 = 64 << 20;

/// Rows per batch of columns handed to a file's writer (its row groups are larger).
const BATCH_ROWS: usize = 8192;

fn day_of(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

impl ParquetStore {
    /// Opens (or creates) the store in `root`, repairing interrupted writes and merges.
    pub fn open(root: &Path, retention: Retention) -> Result<ParquetStore, StoreError> {
        std::fs::create_dir_all(root)
            .map_err(|e| StoreError::Io(format!("{}: {e}", root.display())))?;
        let files = files::scan(root)?;
        let high_water = files::high_water(&files);
        let recorded = match std::fs::read_to_string(root.join("position")) {
            Ok(s) => s.trim().parse::<u64>().map_err(|_| {
                StoreError::Io(format!("{}: not a number", root.join("position").display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(StoreError::Io(format!("{}: {e}", root.display()))),
        };
        Ok(ParquetStore {
            root: root.to_path_buf(),
            retention,
            inner: Mutex::new(Inner {
                files,
                position: recorded,
                high_water,
            }),
            engine: Engine::new()?,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the file of one tenant's rows at log positions `from..=to` (`rows` of them,
    /// which `fill` hands to the file's writer) and counts it.
    fn write_file(
        &self,
        inner: &mut Inner,
        out: &mut Written,
        day: &str,
        (tenant, (from, to), rows): (&str, (u64, u64), usize),
        fill: impl FnOnce(
            &mut dyn FnMut(&RecordBatch) -> Result<(), StoreError>,
        ) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let f = files::write(&self.root, tenant, day, (from, to), schema::schema(), fill)?;
        inner.high_water.insert(tenant.to_string(), to);
        inner.files.push(f);
        out.files += 1;
        out.rows += rows as u64;
        Ok(())
    }

    /// Records that the log was consumed through `through` (if that is further than before).
    fn advance(&self, inner: &mut Inner, through: u64) -> Result<(), StoreError> {
        if through <= inner.position {
            return Ok(());
        }
        let path = self.root.join("position");
        let tmp = self.root.join("position.tmp");
        let e = |e: std::io::Error| StoreError::Io(format!("{}: {e}", path.display()));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(e)?;
            f.write_all(through.to_string().as_bytes()).map_err(e)?;
            f.sync_all().map_err(e)?;
        }
        std::fs::rename(&tmp, &path).map_err(e)?;
        inner.position = through;
        Ok(())
    }
}

impl EventStore for ParquetStore {
    fn write(&self, rows: &[Row<'_>], through: u64, now_us: i64) -> Result<Written, StoreError> {
        let mut inner = self.lock();
        let day = day_of(now_us);
        let mut out = Written::default();
        // One file per tenant, of the rows not stored yet (after a crash, a flush repeats).
        let mut by_tenant: BTreeMap<&str, Vec<&Row<'_>>> = BTreeMap::new();
        for r in rows {
            let hw = inner.high_water.get(r.origin.tenant).copied().unwrap_or(0);
            if r.log_seq <= hw || r.log_seq <= inner.position {
                out.skipped += 1;
                continue;
            }
            by_tenant.entry(r.origin.tenant).or_default().push(r);
        }
        for (tenant, rows) in by_tenant {
            let (from, to) = match (rows.first(), rows.last()) {
                (Some(a), Some(b)) => (a.log_seq, b.log_seq),
                _ => continue,
            };
            // Columns built a batch at a time: a flush's worth of raw events in one buffer
            // was a new allocation for every flush, its pages faulted in one by one.
            let fill = |write: &mut dyn FnMut(&RecordBatch) -> Result<(), StoreError>| {
                for chunk in rows.chunks(BATCH_ROWS) {
                    let bytes = chunk.iter().map(|r| r.event.len()).sum();
                    let mut b = RowBuilder::with_capacity(chunk.len(), bytes);
                    for r in chunk {
                        b.push(r.origin, r.event);
                    }
                    write(&b.finish())?;
                }
                Ok(())
            };
            let file = (tenant, (from, to), rows.len());
            self.write_file(&mut inner, &mut out, &day, file, fill)?;
        }
        self.advance(&mut inner, through)?;
        Ok(out)
    }

    fn write_built(
        &self,
        built: &[Built],
        through: u64,
        now_us: i64,
    ) -> Result<Written, StoreError> {
        let mut inner = self.lock();
        let day = day_of(now_us);
        let mut out = Written::default();
        // One file per tenant, of the rows not stored yet (after a crash, or where the log
        // was read instead, some are).
        let mut by_tenant: BTreeMap<&str, Vec<(RecordBatch, u64, u64)>> = BTreeMap::new();
        for b in built {
            let n = b.log_seqs.len();
            if n != b.batch.num_rows() || b.batch.schema() != schema::schema() {
                return Err(StoreError::Invalid(format!(
                    "built rows of {}: {} positions for {} rows, or another schema",
                    b.tenant,
                    n,
                    b.batch.num_rows()
                )));
            }
            let hw = inner.high_water.get(&b.tenant).copied().unwrap_or(0);
            let floor = hw.max(inner.position);
            let skip = b.log_seqs.partition_point(|&s| s <= floor);
            out.skipped += skip as u64;
            if skip == n {
                continue;
            }
            by_tenant.entry(&b.tenant).or_default().push((
                b.batch.slice(skip, n - skip),
                b.log_seqs[skip],
                b.log_seqs[n - 1],
            ));
        }
        for (tenant, batches) in by_tenant {
            let (from, to) = match (batches.first(), batches.last()) {
                (Some(a), Some(b)) => (a.1, b.2),
                _ => continue,
            };
            let rows = batches.iter().map(|(b, _, _)| b.num_rows()).sum();
            self.write_file(
                &mut inner,
                &mut out,
                &day,
                (tenant, (from, to), rows),
                |write| batches.iter().try_for_each(|(b, _, _)| write(b)),
            )?;
        }
        self.advance(&mut inner, through)?;
        Ok(out)
    }

    fn position(&self) -> u64 {
        self.lock().position
    }

    fn query(&self, scope: &Scope, sql: &str, limits: Limits) -> Result<Table, StoreError> {
        match self.engine.run(&self.root, scope, sql, limits) {
            // A merge or retention may have removed a file between listing and reading it.
            Err(StoreError::Query(m)) if m.contains("No such file") => {
                self.engine.run(&self.root, scope, sql, limits)
            }
            r => r,
        }
    }

    fn maintain(&self, now_us: i64) -> Result<Maintenance, StoreError> {
        let mut inner = self.lock();
        let mut out = Maintenance::default();
        let oldest_kept =
            day_of(now_us - i64::from(self.retention.max_age_days) * 86_400 * 1_000_000);
        let mut total: u64 = inner.files.iter().map(|f| f.bytes).sum();
        let mut kept = Vec::with_capacity(inner.files.len());
        // Files are ordered oldest day first.
        inner
            .files
            .sort_by(|a, b| (&a.day, a.from).cmp(&(&b.day, b.from)));
        for f in std::mem::take(&mut inner.files) {
            let expired = f.day < oldest_kept;
            let over = total > self.retention.max_bytes;
            if expired || over {
                std::fs::remove_file(&f.path)
                    .map_err(|e| StoreError::Io(format!("{}: {e}", f.path.display())))?;
                total -= f.bytes;
                out.deleted_bytes += f.bytes;
                if expired {
                    out.expired_files += 1;
                } else {
                    out.evicted_files += 1;
                }
                if let Some(dir) = f.path.parent() {
                    // Removed only when empty.
                    let _ = std::fs::remove_dir(dir);
                }
                continue;
            }
            kept.push(f);
        }
        // Merge small files per tenant and day.
        let mut groups: BTreeMap<(String, String), Vec<DataFile>> = BTreeMap::new();
        for f in kept {
            groups
                .entry((f.tenant.clone(), f.day.clone()))
                .or_default()
                .push(f);
        }
        let mut files = Vec::new();
        for (_, group) in groups {
            let (small, mut big): (Vec<_>, Vec<_>) =
                group.into_iter().partition(|f| f.bytes < MERGED_BYTES);
            if small.len() > MERGE_AT {
                // Contiguous runs only: a merged file's range must not cover a big file's.
                let merged = merge_runs(&self.root, small, &big)?;
                out.merges += merged.1;
                big.extend(merged.0);
            } else {
                big.extend(small);
            }
            files.extend(big);
        }
        files.sort_by(|a, b| (&a.day, a.from).cmp(&(&b.day, b.from)));
        inner.files = files;
        Ok(out)
    }

    fn stats(&self) -> StoreStats {
        let inner = self.lock();
        StoreStats {
            files: inner.files.len() as u64,
            bytes: inner.files.iter().map(|f| f.bytes).sum(),
            oldest_day: inner.files.iter().map(|f| f.day.clone()).min(),
            position: inner.position,
        }
    }
}

/// Merges runs of small files that no big file interrupts; returns the resulting files and
/// the number of merges.
fn merge_runs(
    root: &Path,
    mut small: Vec<DataFile>,
    big: &[DataFile],
) -> Result<(Vec<DataFile>, u64), StoreError> {
    small.sort_by_key(|f| f.from);
    let mut out = Vec::new();
    let mut merges = 0;
    let mut run: Vec<DataFile> = Vec::new();
    let flush = |run: &mut Vec<DataFile>, out: &mut Vec<DataFile>, merges: &mut u64| {
        if run.len() > 1 {
            let m = files::merge(root, run)?;
            *merges += 1;
            out.push(m);
        } else {
            out.append(run);
        }
        run.clear();
        Ok::<_, StoreError>(())
    };
    for f in small {
        let interrupted = run
            .last()
            .is_some_and(|last: &DataFile| big.iter().any(|b| b.from > last.to && b.to < f.from));
        if interrupted {
            flush(&mut run, &mut out, &mut merges)?;
        }
        run.push(f);
    }
    flush(&mut run, &mut out, &mut merges)?;
    Ok((out, merges))
}
