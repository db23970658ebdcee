//! SQL over the `events` table (DataFusion): read-only, scoped to a tenant when asked,
//! bounded in rows, memory and time; results as a text table, JSON or CSV.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use serde_json::{Map, Value};

use crate::StoreError;

/// Whose events a query sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant (administrators).
    All,
    /// One tenant only: the table holds nothing else.
    Tenant(String),
}

/// Bounds on one query.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Rows returned at most (more are cut and `truncated` is set).
    pub rows: usize,
    /// Time allowed.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rows: 10_000,
            timeout: Duration::from_secs(60),
        }
    }
}

/// A query's result.
#[derive(Debug, Clone)]
pub struct Table {
    /// Column names and types.
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
    /// More rows matched than [`Limits::rows`].
    pub truncated: bool,
}

/// The query engine: a DataFusion runtime with a memory limit and no spilling to disk, on
/// its own threads (callers block; queries never run on a caller's async runtime).
pub struct Engine {
    runtime: Arc<RuntimeEnv>,
    threads: Option<tokio::runtime::Runtime>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Without waiting: the engine may be dropped on an async thread.
        if let Some(t) = self.threads.take() {
            t.shutdown_background();
        }
    }
}

/// Memory one query may use.
const MEMORY_LIMIT: usize = 1 << 30;

impl Engine {
    /// Starts the engine.
    pub fn new() -> Result<Engine, StoreError> {
        // No listing cache: DataFusion keeps directory listings forever by default, and a
        // search would then never see the files written after the first one.
        let runtime = RuntimeEnvBuilder::new()
            .with_cache_manager(CacheManagerConfig::default().with_list_files_cache_limit(0))
            .with_memory_limit(MEMORY_LIMIT, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .build_arc()
            .map_err(|e| StoreError::Query(e.to_string()))?;
        let threads = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mamori-query")
            .enable_time()
            .build()
            .map_err(|e| StoreError::Io(format!("query threads: {e}")))?;
        Ok(Engine {
            runtime,
            threads: Some(threads),
        })
    }

    /// Runs `sql` over the files under `root` that `scope` allows.
    pub fn run(
        &self,
        root: &Path,
        scope: &Scope,
        sql: &str,
        limits: Limits,
    ) -> Result<Table, StoreError> {
        let dir = match scope {
            Scope::All => root.to_path_buf(),
            Scope::Tenant(t) => crate::files::tenant_dir(root, t),
        };
        let runtime = self.runtime.clone();
        let sql = sql.to_string();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let Some(threads) = &self.threads else {
            return Err(StoreError::Query("the query engine has stopped".into()));
        };
        threads.spawn(async move {
            let r = tokio::time::timeout(limits.timeout, run(runtime, &dir, &sql, limits.rows))
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Query(format!(
                        "the query ran longer than {} s and was stopped",
                        limits.timeout.as_secs()
                    )))
                });
            let _ = tx.send(r);
        });
        rx.recv()
            .map_err(|_| StoreError::Query("the query stopped unexpectedly".into()))?
    }
}

async fn run(
    runtime: Arc<RuntimeEnv>,
    dir: &Path,
    sql: &str,
    rows: usize,
) -> Result<Table, StoreError> {
    let q = |e: datafusion::error::DataFusionError| StoreError::Query(clean(&e.to_string()));
    let mut config = SessionConfig::new()
        .with_target_partitions(2)
        .with_information_schema(true);
    let opts = config.options_mut();
    opts.execution.parquet.pushdown_filters = true;
    opts.execution.parquet.reorder_filters = true;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    let schema = crate::schema::schema();
    if dir.is_dir() {
        let url = ListingTableUrl::parse(format!("{}/", dir.display())).map_err(q)?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let table = ListingTable::try_new(
            ListingTableConfig::new(url)
                .with_listing_options(options)
                .with_schema(schema),
        )
        .map_err(q)?;
        ctx.register_table("events", Arc::new(table)).map_err(q)?;
    } else {
        let empty = MemTable::try_new(schema, vec![vec![]]).map_err(q)?;
        ctx.register_table("events", Arc::new(empty)).map_err(q)?;
    }
    crate::udf::register(&ctx);
    // Read-only: no CREATE EXTERNAL TABLE (it would read any file), no INSERT/COPY, no SET.
    let read_only = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let df = ctx.sql_with_options(sql, read_only).await.map_err(q)?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df
        .limit(0, Some(rows + 1))
        .map_err(q)?
        .collect()
        .await
        .map_err(q)?;
    let mut kept = Vec::new();
    let mut n = 0;
    let mut truncated = false;
    for b in batches {
        if n + b.num_rows() > rows {
            kept.push(b.slice(0, rows - n));
            truncated = true;
            break;
        }
        n += b.num_rows();
        kept.push(b);
    }
    Ok(Table {
        schema,
        batches: kept,
        truncated,
    })
}

/// DataFusion's messages carry internal prefixes and, for some errors, file paths: keep
/// what the user needs.
fn clean(msg: &str) -> String {
    let m = msg
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("SQL error: ");
    m.lines().next().unwrap_or(m).to_string()
}

impl Table {
    /// Rows in the result.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// Column names.
    pub fn columns(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// A text table for terminals.
    pub fn to_text(&self) -> String {
        if self.rows() == 0 {
            return format!("({} columns, no rows)\n", self.schema.fields().len());
        }
        let t = datafusion::arrow::util::pretty::pretty_format_batches(&self.batches)
            .map(|t| t.to_string())
            .unwrap_or_else(|e| format!("cannot format the result: {e}"));
        let more = if self.truncated {
            " (more rows matched: cut at the limit)"
        } else {
            ""
        };
        format!("{t}\n{} rows{more}\n", self.rows())
    }

    fn for_each_row(&self, f: &mut dyn FnMut(Vec<Value>)) {
        let opts = FormatOptions::default().with_display_error(true);
        for b in &self.batches {
            let formatters: Vec<Option<ArrayFormatter>> = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).ok())
                .collect();
            for row in 0..b.num_rows() {
                let vals = b
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, fmt)| {
                        if c.is_null(row) {
                            return Value::Null;
                        }
                        let s = fmt
                            .as_ref()
                            .map(|f| f.value(row).to_string())
                            .unwrap_or_default();
                        let numeric = matches!(
                            c.data_type(),
                            DataType::Int8
                                | DataType::Int16
                                | DataType::Int32
                                | DataType::Int64
                                | DataType::UInt8
                                | DataType::UInt16
                                | DataType::UInt32
                                | DataType::UInt64
                                | DataType::Float32
                                | DataType::Float64
                        );
                        if numeric && let Ok(n) = serde_json::from_str::<Value>(&s) {
                            return n;
                        }
                        if c.data_type() == &DataType::Boolean {
                            return Value::Bool(s == "true");
                        }
                        Value::String(s)
                    })
                    .collect();
                f(vals);
            }
        }
    }

    /// `{"columns": [...], "rows": [{column: value}], "truncated": bool}`.
    pub fn to_json(&self) -> Value {
        let cols = self.columns();
        let mut rows = Vec::with_capacity(self.rows());
        self.for_each_row(&mut |vals| {
            let mut m = Map::new();
            for (c, v) in cols.iter().zip(vals) {
                m.insert(c.clone(), v);
            }
            rows.push(Value::Object(m));
        });
        serde_json::json!({"columns": cols, "rows": rows, "truncated": self.truncated})
    }

    /// RFC 4180 CSV with a header line.
    pub fn to_csv(&self) -> String {
        fn cell(out: &mut String, s: &str) {
            if s.contains([',', '"', '\n', '\r']) {
                out.push('"');
                out.push_str(&s.replace('"', "\"\""));
                out.push('"');
            } else {
                out.push_str(s);
            }
        }
        let mut out = String::new();
        for (i, c) in self.columns().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            cell(&mut out, c);
        }
        out.push_str("\r\n");
        self.for_each_row(&mut |vals| {
            for (i, v) in vals.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match v {
                    Value::Null => {}
                    Value::String(s) => cell(&mut out, s),
                    other => cell(&mut out, &other.to_string()),
                }
            }
            out.push_str("\r\n");
        });
        out
    }
}
