//! The files: `<root>/tenant=<tenant>/day=<YYYY-MM-DD>/<from>-<to>.parquet`.
//!
//! `day` is the day the server stored the events (UTC), so that retention by age keeps
//! what arrived recently even when its own timestamps are old (an EVTX file from last
//! year uploaded today). `<from>-<to>` are the positions in the ingest log of the first
//! and last event the file holds: the writer uses them to never store an event twice, even
//! when it crashed half-way through a flush, and a merge names its result with the range of
//! its inputs, so a crash between writing the merged file and deleting its inputs is
//! repaired on the next open (files inside another file's range are removed).
//!
//! Every file is written as `.tmp`, synced, renamed, and its directory synced.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use datafusion::parquet::arrow::arrow_writer::{
    ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves,
};
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::column::writer::ColumnCloseResult;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::parquet::file::properties::{
    EnabledStatistics, WriterProperties, WriterPropertiesBuilder,
};
use datafusion::parquet::file::writer::SerializedFileWriter;
use datafusion::parquet::schema::types::ColumnPath;

use crate::StoreError;

/// One stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    /// Its path.
    pub path: PathBuf,
    /// Tenant (decoded).
    pub tenant: String,
    /// Day stored, `YYYY-MM-DD`.
    pub day: String,
    /// First log position it holds.
    pub from: u64,
    /// Last log position it holds.
    pub to: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// Encodes a tenant for a directory name: letters, digits, `-`, `_` and `.` stay, anything
/// else (and a leading `.`) becomes `%XX`.
pub fn encode_tenant(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    for (i, b) in t.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode_tenant(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The directory of a tenant.
pub fn tenant_dir(root: &Path, tenant: &str) -> PathBuf {
    root.join(format!("tenant={}", encode_tenant(tenant)))
}

fn day_dir(root: &Path, tenant: &str, day: &str) -> PathBuf {
    tenant_dir(root, tenant).join(format!("day={day}"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(format!("{}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".parquet")?;
    let (a, b) = stem.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Lists the stored files, oldest day first; removes leftovers of interrupted writes and
/// merges (`.tmp` files, files whose range another file of the same day covers).
pub fn scan(root: &Path) -> Result<Vec<DataFile>, StoreError> {
    let mut out = Vec::new();
    let Ok(tenants) = std::fs::read_dir(root) else {
        return Ok(out);
    };
    for t in tenants.flatten() {
        let tname = t.file_name().to_string_lossy().to_string();
        let Some(tenant) = tname.strip_prefix("tenant=").and_then(decode_tenant) else {
            continue;
        };
        let Ok(days) = std::fs::read_dir(t.path()) else {
            continue;
        };
        for d in days.flatten() {
            let dname = d.file_name().to_string_lossy().to_string();
            let Some(day) = dname.strip_prefix("day=") else {
                continue;
            };
            let mut files: Vec<DataFile> = Vec::new();
            for f in std::fs::read_dir(d.path())
                .map_err(io(&d.path()))?
                .flatten()
            {
                let name = f.file_name().to_string_lossy().to_string();
                if name.ends_with(".tmp") {
                    let _ = std::fs::remove_file(f.path());
                    continue;
                }
                let Some((from, to)) = parse_name(&name) else {
                    continue;
                };
                let bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
                files.push(DataFile {
                    path: f.path(),
                    tenant: tenant.clone(),
                    day: day.to_string(),
                    from,
                    to,
                    bytes,
                });
            }
            // A merge that stopped before deleting its inputs: the inputs lie inside the
            // merged file's range.
            files.sort_by_key(|f| (f.from, std::cmp::Reverse(f.to)));
            let mut kept: Vec<DataFile> = Vec::with_capacity(files.len());
            for f in files {
                if let Some(last) = kept.last()
                    && f.from >= last.from
                    && f.to <= last.to
                {
                    tracing::info!(file = %f.path.display(), "removing a merged file's input");
                    let _ = std::fs::remove_file(&f.path);
                    continue;
                }
                kept.push(f);
            }
            out.extend(kept);
        }
    }
    out.sort_by(|a, b| (&a.day, a.from).cmp(&(&b.day, b.from)));
    Ok(out)
}

fn properties() -> WriterProperties {
    properties_builder().build()
}

fn properties_builder() -> WriterPropertiesBuilder {
    // `raw` (the whole event) is unique per row: a dictionary or min/max statistics of it
    // would be work for every row and never serve a query.
    let raw = ColumnPath::from("raw");
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(128 * 1024))
        .set_column_dictionary_enabled(raw.clone(), false)
        .set_column_statistics_enabled(raw, EnabledStatistics::None);
    // Unique per row too: a dictionary would hash every value only to be given up.
    for unique in ["time", "seq", "process_entity_id"] {
        b = b.set_column_dictionary_enabled(ColumnPath::from(unique), false);
    }
    b
}

/// Writes the file for log positions `from..=to` of `tenant` on `day` from the batches
/// `fill` hands to its writer one at a time (none is kept after it is written).
pub fn write(
    root: &Path,
    tenant: &str,
    day: &str,
    range: (u64, u64),
    schema: SchemaRef,
    fill: impl FnOnce(&mut dyn FnMut(&RecordBatch) -> Result<(), StoreError>) -> Result<(), StoreError>,
) -> Result<DataFile, StoreError> {
    publish(root, tenant, day, range, |f, tmp| {
        let parquet = |e: ParquetError| StoreError::Io(format!("{}: {e}", tmp.display()));
        let mut w = ArrowWriter::try_new(f, schema, Some(properties())).map_err(parquet)?;
        let mut rows = 0;
        fill(&mut |b| {
            rows += b.num_rows();
            w.write(b).map_err(parquet)
        })?;
        if rows == 0 {
            return Err(StoreError::Invalid("nothing to write".into()));
        }
        w.into_inner().map_err(parquet)
    })
}

/// Makes the file for log positions `from..=to` of `tenant` on `day` durable under its
/// name: `body` writes it through the `.tmp` file it is given (and returns it), which is
/// then synced, renamed and its directory synced; on an error the `.tmp` is removed.
fn publish(
    root: &Path,
    tenant: &str,
    day: &str,
    (from, to): (u64, u64),
    body: impl FnOnce(File, &Path) -> Result<File, StoreError>,
) -> Result<DataFile, StoreError> {
    let dir = day_dir(root, tenant, day);
    let new_dir = !dir.exists();
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    if new_dir {
        sync_dir(dir.parent().unwrap_or(root))?;
    }
    let path = dir.join(format!("{from:020}-{to:020}.parquet"));
    let tmp = path.with_extension("tmp");
    let written = File::create(&tmp)
        .map_err(io(&tmp))
        .and_then(|f| body(f, &tmp))
        .and_then(|f| f.sync_all().map_err(io(&tmp)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(&dir)?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    Ok(DataFile {
        path,
        tenant: tenant.to_string(),
        day: day.to_string(),
        from,
        to,
        bytes,
    })
}

/// Rows per batch read back from a file: a merge holds one such batch at a time (a whole
/// file of 100,000 sensor events is ~80 MB once decoded).
const READ_BATCH_ROWS: usize = 8192;

/// Row groups of at least this many rows are copied into a merged file as they are, still
/// encoded and compressed; smaller ones are decoded and written again together, so that the
/// files of a quiet tenant do not become one file of thousands of tiny row groups.
pub const COPY_ROWS: i64 = 16_384;

/// Rows a merge gathers into one row group from small ones (as `properties` writes them).
const GATHER_ROWS: usize = 128 * 1024;

/// Merges the files of one tenant and day into one (inputs deleted after the merged file
/// is durable). Returns the merged file.
///
/// At the rates where merging costs anything, every input holds row groups of thousands of
/// rows: those are copied byte for byte ([`COPY_ROWS`]), with no decoding, encoding or
/// compression (a merge used to cost as much CPU as writing its events in the first place).
/// Small row groups are decoded and gathered into row groups of up to 128 Ki rows, streamed:
/// memory stays at one read batch and the row group being encoded, whatever the inputs'
/// size. Row order is kept.
pub fn merge(root: &Path, inputs: &[DataFile]) -> Result<DataFile, StoreError> {
    let (Some(first), Some(last)) = (inputs.first(), inputs.last()) else {
        return Err(StoreError::Invalid("nothing to merge".into()));
    };
    let from = inputs.iter().map(|f| f.from).min().unwrap_or(first.from);
    let to = inputs.iter().map(|f| f.to).max().unwrap_or(last.to);
    let merged = publish(root, &first.tenant, &first.day, (from, to), |out, tmp| {
        let (first_file, first_meta) = open_meta(&first.path)?;
        let meta = first_meta.metadata();
        // The first input's key-value metadata holds the Arrow schema ArrowWriter recorded:
        // the merged file is read back with exactly the same column types.
        let props = Arc::new(
            properties_builder()
                .set_key_value_metadata(meta.file_metadata().key_value_metadata().cloned())
                .build(),
        );
        let descr = meta.file_metadata().schema_descr_ptr();
        let parquet = |e: ParquetError| StoreError::Io(format!("{}: {e}", tmp.display()));
        let mut w =
            SerializedFileWriter::new(out, descr.root_schema_ptr(), props).map_err(parquet)?;
        let schema = first_meta.schema().clone();
        let mut gather = Gather {
            factory: ArrowRowGroupWriterFactory::new(&w, schema.clone()),
            schema,
            writers: None,
            rows: 0,
        };
        let mut opened = Some((first_file, first_meta.clone()));
        for f in inputs {
            let (file, arrow_meta) = match opened.take() {
                Some(o) => o,
                None => open_meta(&f.path)?,
            };
            let bad = |e: ParquetError| StoreError::Io(format!("{}: {e}", f.path.display()));
            let meta = arrow_meta.metadata();
            if meta.file_metadata().schema_descr().root_schema() != descr.root_schema() {
                return Err(StoreError::Invalid(format!(
                    "{}: another schema than {}",
                    f.path.display(),
                    first.path.display()
                )));
            }
            for (i, rg) in meta.row_groups().iter().enumerate() {
                if rg.num_rows() >= COPY_ROWS {
                    gather.close(&mut w).map_err(parquet)?;
                    copy_row_group(&mut w, &file, meta, i).map_err(bad)?;
                    continue;
                }
                let file = file.try_clone().map_err(io(&f.path))?;
                let batches =
                    ParquetRecordBatchReaderBuilder::new_with_metadata(file, arrow_meta.clone())
                        .with_row_groups(vec![i])
                        .with_batch_size(READ_BATCH_ROWS)
                        .build()
                        .map_err(bad)?;
                for b in batches {
                    let b = b.map_err(|e| StoreError::Io(format!("{}: {e}", f.path.display())))?;
                    gather.write(&b, &mut w).map_err(parquet)?;
                }
            }
        }
        gather.close(&mut w).map_err(parquet)?;
        w.into_inner().map_err(parquet)
    })?;
    for f in inputs {
        if f.path != merged.path {
            std::fs::remove_file(&f.path).map_err(io(&f.path))?;
        }
    }
    Ok(merged)
}

/// A file and its metadata (with page indexes, which a copied row group keeps).
fn open_meta(path: &Path) -> Result<(File, ArrowReaderMetadata), StoreError> {
    let file = File::open(path).map_err(io(path))?;
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let meta = ArrowReaderMetadata::load(&file, options)
        .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
    Ok((file, meta))
}

/// Copies row group `i` of `file` into a new row group of `w`, as encoded.
fn copy_row_group(
    w: &mut SerializedFileWriter<File>,
    file: &File,
    meta: &ParquetMetaData,
    i: usize,
) -> Result<(), ParquetError> {
    let rg = meta.row_group(i);
    let column_index = meta.column_index().and_then(|c| c.get(i));
    let offset_index = meta.offset_index().and_then(|o| o.get(i));
    let mut out = w.next_row_group()?;
    for (c, column) in rg.columns().iter().enumerate() {
        out.append_column(
            file,
            ColumnCloseResult {
                bytes_written: column.compressed_size() as u64,
                rows_written: rg.num_rows() as u64,
                metadata: column.clone(),
                bloom_filter: None, // none are written
                column_index: column_index.and_then(|r| r.get(c)).cloned(),
                offset_index: offset_index.and_then(|r| r.get(c)).cloned(),
            },
        )?;
    }
    out.close()?;
    Ok(())
}

/// Small row groups' rows, encoded into one row group as they are read.
struct Gather {
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    writers: Option<Vec<ArrowColumnWriter>>,
    rows: usize,
}

impl Gather {
    fn write(
        &mut self,
        b: &RecordBatch,
        w: &mut SerializedFileWriter<File>,
    ) -> Result<(), ParquetError> {
        let writers = match &mut self.writers {
            Some(ws) => ws,
            None => self.writers.insert(
                self.factory
                    .create_column_writers(w.flushed_row_groups().len())?,
            ),
        };
        let mut next = writers.iter_mut();
        for (field, array) in self.schema.fields().iter().zip(b.columns()) {
            for leaf in compute_leaves(field, array)? {
                next.next()
                    .ok_or_else(|| ParquetError::General("more leaves than columns".into()))?
                    .write(&leaf)?;
            }
        }
        self.rows += b.num_rows();
        if self.rows >= GATHER_ROWS {
            self.close(w)?;
        }
        Ok(())
    }

    /// Ends the row group being gathered, if any.
    fn close(&mut self, w: &mut SerializedFileWriter<File>) -> Result<(), ParquetError> {
        let Some(writers) = self.writers.take() else {
            return Ok(());
        };
        self.rows = 0;
        let mut out = w.next_row_group()?;
        for col in writers {
            col.close()?.append_to_row_group(&mut out)?;
        }
        out.close()?;
        Ok(())
    }
}

/// Per tenant, the highest log position stored (what a restarted writer must skip: a
/// flush writes one file per tenant, and may have stopped after some of them).
pub fn high_water(files: &[DataFile]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for f in files {
        let e = m.entry(f.tenant.clone()).or_insert(0);
        *e = (*e).max(f.to);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_columns_are_written_without_a_dictionary() {
        let p = properties();
        for c in ["raw", "time", "seq", "process_entity_id"] {
            assert!(!p.dictionary_enabled(&ColumnPath::from(c)), "{c}");
        }
        // Columns whose values repeat keep theirs.
        for c in ["event_category", "process_executable", "host_name"] {
            assert!(p.dictionary_enabled(&ColumnPath::from(c)), "{c}");
        }
    }

    #[test]
    fn tenant_names_are_safe_directory_names_and_come_back() {
        for t in [
            "default",
            "acme-corp_1.jp",
            "../../etc",
            ".hidden",
            "テナント",
            "a/b",
        ] {
            let e = encode_tenant(t);
            assert!(!e.contains('/') && !e.starts_with('.'), "{t} -> {e}");
            assert_eq!(decode_tenant(&e).as_deref(), Some(t));
        }
    }
}
