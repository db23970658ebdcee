//! The Parquet store end to end: writes, SQL, tenant scoping, crash repair, merges,
//! retention, and refusals.

use std::path::PathBuf;

use mamori_columnar::{EventStore, Limits, Origin, ParquetStore, Retention, Row, Scope};

fn tempdir(tag: &str) -> PathBuf {
    mamori_model::testing::scratch_dir("mamori-col", tag)
}

const DAY_US: i64 = 86_400 * 1_000_000;
/// 2026-11-26T12:00:00Z.
const NOW: i64 = 1_795_694_400_000_000;

fn event(i: u64) -> String {
    format!(
        r#"{{"@timestamp":"2026-11-26T10:00:{:02}Z","event":{{"category":["process"],"action":"exec"}},"host":{{"name":"h{}"}},"process":{{"pid":{i},"name":"{}","command_line":"cmd {i}","args":["a{i}","b"]}}}}"#,
        i % 60,
        i % 3,
        if i.is_multiple_of(10) { "curl" } else { "ls" }
    )
}

/// Rows for log positions `from..from+n`, alternating tenants `a` and `b`.
fn rows(events: &[String], from: u64) -> Vec<Row<'_>> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| Row {
            log_seq: from + i as u64,
            origin: Origin {
                tenant: if i.is_multiple_of(2) { "a" } else { "b" },
                host_id: "agt-1",
                seq: from + i as u64,
                received_us: NOW,
            },
            event: e.as_bytes(),
        })
        .collect()
}

fn count(store: &ParquetStore, scope: &Scope, filter: &str) -> i64 {
    let t = store
        .query(
            scope,
            &format!("SELECT count(*) AS n FROM events {filter}"),
            Limits::default(),
        )
        .unwrap();
    t.to_json()["rows"][0]["n"].as_i64().unwrap()
}

#[test]
fn writes_are_searchable_per_tenant_and_never_duplicated_after_a_crash() {
    let d = tempdir("write");
    let store = ParquetStore::open(&d, Retention::default()).unwrap();
    let evs: Vec<String> = (0..1000).map(event).collect();
    let w = store.write(&rows(&evs, 1), 1000, NOW).unwrap();
    assert_eq!((w.rows, w.files, w.skipped), (1000, 2, 0));
    assert_eq!(store.position(), 1000);
    assert_eq!(count(&store, &Scope::All, ""), 1000);
    assert_eq!(count(&store, &Scope::Tenant("a".into()), ""), 500);
    assert_eq!(
        count(&store, &Scope::Tenant("b".into()), "WHERE tenant = 'a'"),
        0,
        "a tenant's table holds nothing else"
    );
    assert_eq!(count(&store, &Scope::Tenant("nobody".into()), ""), 0);
    assert_eq!(
        count(&store, &Scope::All, "WHERE process_name = 'curl'"),
        100
    );

    // A flush that stopped after tenant a's file: simulated by writing a's part of the
    // next batch alone, without moving the recorded position.
    let more: Vec<String> = (1000..1100).map(event).collect();
    let batch = rows(&more, 1001);
    let only_a: Vec<Row<'_>> = batch
        .iter()
        .copied()
        .filter(|r| r.origin.tenant == "a")
        .collect();
    store.write(&only_a, 0, NOW).unwrap();
    assert_eq!(store.position(), 1000, "the position did not move");
    drop(store);
    // Restart: the writer repeats the whole batch.
    let store = ParquetStore::open(&d, Retention::default()).unwrap();
    let w = store.write(&batch, 1100, NOW).unwrap();
    assert_eq!(
        (w.rows, w.skipped),
        (50, 50),
        "a's rows are not stored twice"
    );
    assert_eq!(count(&store, &Scope::All, ""), 1100);
    let distinct = store
        .query(
            &Scope::All,
            "SELECT count(DISTINCT seq) AS n FROM events",
            Limits::default(),
        )
        .unwrap();
    assert_eq!(distinct.to_json()["rows"][0]["n"], 1100);
    // A replay of old positions is skipped entirely.
    let w = store.write(&rows(&evs, 1), 1000, NOW).unwrap();
    assert_eq!((w.rows, w.skipped), (0, 1000));
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn sql_results_as_json_csv_and_text_with_fields_beyond_the_columns() {
    let d = tempdir("sql");
    let store = ParquetStore::open(&d, Retention::default()).unwrap();
    let evs: Vec<String> = (0..30).map(event).collect();
    store.write(&rows(&evs, 1), 30, NOW).unwrap();
    let t = store
        .query(
            &Scope::All,
            "SELECT process_pid, process_command_line, json_get(raw, 'process.args.0') AS arg0, \
             json_get(raw, 'process.args') AS args, json_get(raw, 'no.such') AS missing \
             FROM events WHERE process_name = 'curl' ORDER BY process_pid",
            Limits::default(),
        )
        .unwrap();
    let j = t.to_json();
    assert_eq!(j["columns"][0], "process_pid");
    assert_eq!(j["rows"].as_array().unwrap().len(), 3);
    assert_eq!(j["rows"][1]["process_pid"], 10, "numbers stay numbers");
    assert_eq!(j["rows"][1]["process_command_line"], "cmd 10");
    assert_eq!(j["rows"][1]["arg0"], "a10");
    assert_eq!(j["rows"][1]["args"], r#"["a10","b"]"#);
    assert!(j["rows"][1]["missing"].is_null());
    assert_eq!(
        t.to_csv().lines().take(2).collect::<Vec<_>>(),
        vec![
            "process_pid,process_command_line,arg0,args,missing",
            r#"0,cmd 0,a0,"[""a0"",""b""]","#
        ]
    );
    let text = t.to_text();
    assert!(
        text.contains("| cmd 20 ") && text.ends_with("3 rows\n"),
        "{text}"
    );
    // Limits cut and say so.
    let t = store
        .query(
            &Scope::All,
            "SELECT seq FROM events",
            Limits {
                rows: 7,
                ..Limits::default()
            },
        )
        .unwrap();
    assert_eq!((t.rows(), t.truncated), (7, true));
    // Time filters work on the event's own time.
    assert_eq!(
        count(
            &store,
            &Scope::All,
            "WHERE time >= TIMESTAMP '2026-11-26T10:00:20Z'"
        ),
        10
    );
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn only_reading_is_allowed_and_bad_sql_gets_a_reason() {
    let d = tempdir("refuse");
    let store = ParquetStore::open(&d, Retention::default()).unwrap();
    let evs: Vec<String> = (0..3).map(event).collect();
    store.write(&rows(&evs, 1), 3, NOW).unwrap();
    for (sql, why) in [
        (
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "DDL",
        ),
        ("INSERT INTO events SELECT * FROM events", "DML"),
        ("COPY events TO '/tmp/x.parquet'", "DML"),
        ("SET datafusion.execution.batch_size = 1", "Statement"),
        ("SELEC 1", "Expected"),
        ("SELECT nope FROM events", "nope"),
        ("SELECT * FROM other_table", "other_table"),
    ] {
        let e = store
            .query(&Scope::All, sql, Limits::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{sql}: {e}");
    }
    assert_eq!(count(&store, &Scope::All, ""), 3, "nothing changed");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn small_files_are_merged_and_an_interrupted_merge_is_repaired() {
    let d = tempdir("merge");
    let store = ParquetStore::open(&d, Retention::default()).unwrap();
    let evs: Vec<String> = (0..60).map(event).collect();
    // 30 flushes of one event each for tenant a.
    for i in 0..30u64 {
        let r = Row {
            log_seq: i + 1,
            origin: Origin {
                tenant: "a",
                host_id: "agt-1",
                seq: i + 1,
                received_us: NOW,
            },
            event: evs[i as usize].as_bytes(),
        };
        store.write(&[r], i + 1, NOW).unwrap();
    }
    assert_eq!(store.stats().files, 30);
    let input = std::fs::read_dir(d.join("tenant=a/day=2026-11-26"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .min()
        .unwrap();
    let saved = std::fs::read(&input).unwrap();
    let m = store.maintain(NOW).unwrap();
    assert_eq!(m.merges, 1);
    assert_eq!(store.stats().files, 1);
    assert_eq!(count(&store, &Scope::All, ""), 30);
    // A crash after the merged file was written but before an input was deleted.
    std::fs::write(&input, saved).unwrap();
    drop(store);
    let store = ParquetStore::open(&d, Retention::default()).unwrap();
    assert_eq!(store.stats().files, 1, "the leftover input was removed");
    assert_eq!(count(&store, &Scope::All, ""), 30);
    let _ = std::fs::remove_dir_all(d);
}

/// A flush of more rows than the columns are built for at a time (8,192) is still one file
/// and one row group per tenant, with every row's own columns in log order.
#[test]
fn a_big_flush_is_one_file_per_tenant_with_every_row_in_order() {
    let d = tempdir("big-flush");
    let store = ParquetStore::open(&d, Retention::default()).unwrap();
    let evs: Vec<String> = (0..40_001).map(event).collect();
    let w = store.write(&rows(&evs, 1), 40_001, NOW).unwrap();
    assert_eq!((w.rows, w.files, w.skipped), (40_001, 2, 0));
    for (tenant, n, first_pid) in [("a", 20_001, 0), ("b", 20_000, 1)] {
        let dir = d.join(format!("tenant={tenant}"));
        assert_eq!(row_groups(&dir), vec![n], "tenant {tenant}");
        let t = store
            .query(
                &Scope::Tenant(tenant.into()),
                "SELECT seq, process_pid, raw FROM events ORDER BY seq",
                Limits {
                    rows: 100_000,
                    ..Limits::default()
                },
            )
            .unwrap()
            .to_json();
        let got = t["rows"].as_array().unwrap();
        assert_eq!(got.len(), n as usize, "tenant {tenant}");
        for (k, row) in got.iter().enumerate() {
            let pid = first_pid + 2 * k as i64;
            assert_eq!(row["seq"], pid + 1, "tenant {tenant} row {k}");
            assert_eq!(row["process_pid"], pid, "tenant {tenant} row {k}");
            assert_eq!(row["raw"], evs[pid as usize], "tenant {tenant} row {k}");
        }
    }
    let _ = std::fs::remove_dir_all(d);
}

/// Writes one file per size in `sizes` for tenant `a`, with consecutive log positions
/// from `from` (the event at position `n` is `evs[n - 1]`, with pid `n - 1`).
fn write_files(store: &ParquetStore, evs: &[String], mut from: u64, sizes: &[usize]) {
    for &n in sizes {
        let chunk = &evs[(from - 1) as usize..(from - 1) as usize + n];
        let rows: Vec<Row<'_>> = chunk
            .iter()
            .enumerate()
            .map(|(j, e)| Row {
                log_seq: from + j as u64,
                origin: Origin {
                    tenant: "a",
                    host_id: "agt-1",
                    seq: from + j as u64,
                    received_us: NOW,
                },
                event: e.as_bytes(),
            })
            .collect();
        store.write(&rows, from + n as u64 - 1, NOW).unwrap();
        from += n as u64;
    }
}

/// After a merge: one file holding every event once, each with its own columns.
fn merged_holds_each_event_once(store: &ParquetStore, total: i64) {
    assert_eq!(store.stats().files, 1);
    let t = store
        .query(
            &Scope::All,
            "SELECT count(*) AS n, count(DISTINCT seq) AS d, min(seq) AS lo, max(seq) AS hi, \
             sum(process_pid) AS pids FROM events",
            Limits::default(),
        )
        .unwrap()
        .to_json();
    let row = &t["rows"][0];
    assert_eq!(row["n"], total);
    assert_eq!(row["d"], total);
    assert_eq!(row["lo"], 1);
    assert_eq!(row["hi"], total);
    assert_eq!(
        row["pids"],
        (0..total).sum::<i64>(),
        "every event's own columns"
    );
}

/// The row counts of the row groups of the one Parquet file under `d`.
fn row_groups(d: &std::path::Path) -> Vec<i64> {
    fn find(d: &std::path::Path) -> Option<PathBuf> {
        std::fs::read_dir(d).unwrap().flatten().find_map(|e| {
            let p = e.path();
            if p.is_dir() {
                find(&p)
            } else {
                p.extension().is_some_and(|x| x == "parquet").then_some(p)
            }
        })
    }
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let f = std::fs::File::open(find(d).expect("a Parquet file")).unwrap();
    let r = SerializedFileReader::new(f).unwrap();
    r.metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .collect()
}

#[test]
fn a_merge_streams_many_rows_and_keeps_each_once() {
    let d = tempdir("merge-rows");
    let store = ParquetStore::open(&d, Retention::default()).unwrap();
    // 26 flushes of 500 events: more rows than the merge reads at a time.
    let evs: Vec<String> = (0..13_000).map(event).collect();
    write_files(&store, &evs, 1, &[500; 26]);
    assert_eq!(store.stats().files, 26);
    assert_eq!(store.maintain(NOW).unwrap().merges, 1);
    merged_holds_each_event_once(&store, 13_000);
    // Small row groups are gathered into one.
    assert_eq!(row_groups(&d), vec![13_000]);
    let _ = std::fs::remove_dir_all(d);
}

/// Big row groups are copied into the merged file as they are (what a busy server's files
/// hold: a merge no longer encodes and compresses every event a second time); the small ones
/// around them are gathered, in order. The copies read back exactly: the same rows, their
/// statistics still prune, and a merge of merged files copies them again.
#[test]
fn a_merge_copies_big_row_groups_and_gathers_small_ones_around_them() {
    let d = tempdir("merge-copy");
    let store = ParquetStore::open(&d, Retention::default()).unwrap();
    let big = mamori_columnar::files::COPY_ROWS as usize;
    let mut sizes = vec![100; 10];
    sizes.push(big);
    sizes.extend([100; 10]);
    sizes.push(big + 1);
    sizes.extend([100; 3]);
    let total = sizes.iter().sum::<usize>();
    let evs: Vec<String> = (0..total as u64).map(event).collect();
    write_files(&store, &evs, 1, &sizes);
    assert_eq!(store.stats().files, 25);
    assert_eq!(store.maintain(NOW).unwrap().merges, 1);
    merged_holds_each_event_once(&store, total as i64);
    let b = big as i64;
    assert_eq!(row_groups(&d), vec![1000, b, 1000, b + 1, 300]);
    // Rows of a copied row group, found through a filter, and text columns read back.
    let t = store
        .query(
            &Scope::All,
            "SELECT count(*) AS n, min(process_command_line) AS c FROM events \
             WHERE process_pid BETWEEN 1500 AND 1599",
            Limits::default(),
        )
        .unwrap()
        .to_json();
    assert_eq!(t["rows"][0]["n"], 100);
    assert_eq!(t["rows"][0]["c"], "cmd 1500");
    // 24 more small files: the merged file is merged again with them, its big row groups
    // copied once more.
    drop(store);
    let store = ParquetStore::open(&d, Retention::default()).unwrap();
    let more: Vec<String> = (0..total as u64 + 2_400).map(event).collect();
    write_files(&store, &more, total as u64 + 1, &[100; 24]);
    assert_eq!(store.maintain(NOW).unwrap().merges, 1);
    merged_holds_each_event_once(&store, total as i64 + 2_400);
    assert_eq!(row_groups(&d), vec![1000, b, 1000, b + 1, 2_700]);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn retention_by_age_and_by_size() {
    let d = tempdir("retention");
    let retention = Retention {
        max_age_days: 45,
        max_bytes: 1 << 40,
    };
    let store = ParquetStore::open(&d, retention).unwrap();
    let evs: Vec<String> = (0..40).map(event).collect();
    let r = rows(&evs, 1);
    // Stored 50, 44 and 0 days ago.
    store.write(&r[0..10], 10, NOW - 50 * DAY_US).unwrap();
    store.write(&r[10..20], 20, NOW - 44 * DAY_US).unwrap();
    store.write(&r[20..40], 40, NOW).unwrap();
    let m = store.maintain(NOW).unwrap();
    assert_eq!(m.expired_files, 2, "both tenants' files of 50 days ago");
    assert_eq!(count(&store, &Scope::All, ""), 30, "44 days old is kept");
    drop(store);
    // Over the size limit: the oldest files go first.
    let size: u64 = walk(&d);
    let store = ParquetStore::open(
        &d,
        Retention {
            max_age_days: 45,
            max_bytes: size / 2,
        },
    )
    .unwrap();
    let m = store.maintain(NOW).unwrap();
    assert!(m.evicted_files >= 1, "{m:?}");
    assert_eq!(m.expired_files, 0);
    assert!(store.stats().bytes <= size / 2);
    let left = count(&store, &Scope::All, "");
    assert_eq!(
        left,
        count(&store, &Scope::All, "WHERE seq > 20"),
        "what is left is the newest: {left}"
    );
    let _ = std::fs::remove_dir_all(d);
}

fn walk(d: &std::path::Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            n += walk(&p);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            n += e.metadata().unwrap().len();
        }
    }
    n
}

#[test]
fn files_written_after_a_query_are_seen_by_the_next_one() {
    // DataFusion caches directory listings forever by default; the store must not, or a
    // search made before a flush would never see the events that flush stored.
    let d = tempdir("fresh");
    let store = ParquetStore::open(&d, Retention::default()).unwrap();
    assert_eq!(count(&store, &Scope::All, ""), 0);
    let first: Vec<String> = (0..2).map(event).collect();
    store.write(&rows(&first, 1), 2, NOW).unwrap();
    assert_eq!(count(&store, &Scope::All, ""), 2);
    assert_eq!(count(&store, &Scope::Tenant("a".into()), ""), 1);
    let more: Vec<String> = (2..6).map(event).collect();
    store.write(&rows(&more, 3), 6, NOW).unwrap();
    assert_eq!(count(&store, &Scope::All, ""), 6, "the second file is seen");
    assert_eq!(count(&store, &Scope::Tenant("a".into()), ""), 3);
    let _ = std::fs::remove_dir_all(&d);
}

/// Rows of `events` (log positions from `from`, tenants alternating as in [`rows`]) built
/// the way detection builds them, one [`Built`] per tenant.
fn built(events: &[String], from: u64) -> Vec<mamori_columnar::Built> {
    let mut by_tenant: Vec<(String, mamori_columnar::RowBuilder, Vec<u64>)> = Vec::new();
    for r in rows(events, from) {
        let i = match by_tenant.iter().position(|(t, _, _)| t == r.origin.tenant) {
            Some(i) => i,
            None => {
                by_tenant.push((r.origin.tenant.into(), Default::default(), Vec::new()));
                by_tenant.len() - 1
            }
        };
        let (_, b, seqs) = &mut by_tenant[i];
        b.push(r.origin, r.event);
        seqs.push(r.log_seq);
    }
    by_tenant
        .into_iter()
        .map(|(tenant, mut b, log_seqs)| mamori_columnar::Built {
            tenant,
            log_seqs,
            batch: b.finish(),
        })
        .collect()
}

#[test]
fn rows_built_elsewhere_are_stored_once_beside_rows_read_from_the_log() {
    let d = tempdir("built");
    let store = ParquetStore::open(&d, Retention::default()).unwrap();
    let evs: Vec<String> = (0..300).map(event).collect();
    // Positions 1..=100 read from the log, 1..=200 built by detection (half of them stored
    // already), then 201..=300 read from the log again.
    store.write(&rows(&evs[..100], 1), 100, NOW).unwrap();
    let w = store.write_built(&built(&evs[..200], 1), 200, NOW).unwrap();
    assert_eq!((w.rows, w.skipped, w.files), (100, 100, 2));
    assert_eq!(store.position(), 200);
    let w = store.write(&rows(&evs[200..], 201), 300, NOW).unwrap();
    assert_eq!((w.rows, w.skipped), (100, 0));
    // Built again after a restart: nothing new.
    let store = ParquetStore::open(&d, Retention::default()).unwrap();
    let w = store.write_built(&built(&evs, 1), 300, NOW).unwrap();
    assert_eq!((w.rows, w.skipped, w.files), (0, 300, 0));
    assert_eq!(count(&store, &Scope::All, ""), 300);
    let distinct = store
        .query(
            &Scope::All,
            "SELECT count(DISTINCT seq) AS n, min(seq) AS lo, max(seq) AS hi FROM events",
            Limits::default(),
        )
        .unwrap()
        .to_json();
    assert_eq!(
        (
            &distinct["rows"][0]["n"],
            &distinct["rows"][0]["lo"],
            &distinct["rows"][0]["hi"]
        ),
        (&300.into(), &1.into(), &300.into())
    );
    assert_eq!(
        count(
            &store,
            &Scope::Tenant("b".into()),
            "WHERE process_name = 'curl'"
        ),
        0,
        "curl runs at even positions, tenant a's"
    );
    // A batch whose positions do not match its rows is refused, not stored.
    let mut bad = built(&evs[..10], 301);
    bad[0].log_seqs.pop();
    let e = store.write_built(&bad, 310, NOW).unwrap_err();
    assert!(e.to_string().contains("positions"), "{e}");
    assert_eq!(store.position(), 300);
    let _ = std::fs::remove_dir_all(d);
}
