//! What the merge and compaction benchmarks share: a configuration on local folders, a
//! deterministic table of ~8 columns as dms2delta creates it, change batches with a model of the
//! state they must leave, staging, Delta log accounting, a checksum query, and the child-process
//! plumbing for per-case peak RSS.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array as _, ArrayRef, BooleanBuilder, Decimal128Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::delta_datafusion::DeltaSessionContext;
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;
use dms2delta::changes::{meta_fields, Sequence, COMMIT_TS, NOSUP, OP, SEQ, SOURCE_FILE};
use dms2delta::config::{Config, Validated};
use dms2delta::lake;
use dms2delta::operations::commit::CommitChangesBuilder;
use dms2delta::stage::{change_set_id, change_set_path, write_change_set, ChangeSetMeta};
use dms2delta::storage::{Location, Stores};
use dms2delta::types::UTC;

#[path = "../util/mod.rs"]
mod util;
#[allow(unused_imports)] // each bench uses a different part
pub use util::{env_usize, group, mib, peak_rss_kib};

pub const ENV_CASE: &str = "DMS2DELTA_BENCH_CASE";
pub const ENV_DIR: &str = "DMS2DELTA_BENCH_DIR";

pub const BUCKET: &str = "dms-bench";
pub const SOURCE: &str = "shop";
pub const SCHEMA: &str = "sales";
pub const TABLE: &str = "orders";
pub const KEY: &str = "id";

/// Rows per record batch handed to the Delta writer.
const BATCH_ROWS: usize = 65_536;

// ---------------------------------------------------------------------------------------------
// Small helpers.

/// A comma-separated list of numbers (`100000,1_000_000`).
pub fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .replace('_', "")
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v} is not a list of numbers"))
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "NOT MET"
    }
}

pub fn rss_text(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.0}", k as f64 / 1024.0))
        .unwrap_or_else(|| "n/a".into())
}

/// `RESULT k=v k=v` from a child's output.
pub fn parse_result(stdout: &str) -> Option<HashMap<String, String>> {
    let line = stdout.lines().rev().find(|l| l.starts_with("RESULT "))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

pub fn get<T: std::str::FromStr>(r: &HashMap<String, String>, k: &str) -> Option<T> {
    r.get(k).and_then(|v| v.parse().ok())
}

/// Runs this bench binary again as a child for one case; returns its `RESULT` line, or the
/// reason it failed.
pub fn run_child(case: &str, dir: &Path, envs: &[(&str, String)]) -> Result<HashMap<String, String>, String> {
    let exe = std::env::current_exe().expect("the bench binary's path");
    let mut cmd = std::process::Command::new(exe);
    cmd.env(ENV_CASE, case).env(ENV_DIR, dir);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|e| format!("cannot start the child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "child `{case}` failed ({}): {}{}",
            out.status,
            stdout.trim(),
            tail(&String::from_utf8_lossy(&out.stderr), 2000)
        ));
    }
    parse_result(&stdout).ok_or_else(|| format!("child `{case}` printed no RESULT line: {stdout}"))
}

pub fn tail(s: &str, n: usize) -> String {
    let s = s.trim();
    if s.len() <= n {
        return s.to_string();
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                dir_bytes(&e.path())
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|k| format!("{:.1} GiB RAM", k as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores, {cpu}, {mem}")
}

// ---------------------------------------------------------------------------------------------
// Configuration and stores on local folders.

/// `<root>/lake`, `<root>/staged`, `<root>/quarantine`; one source `shop` with the table
/// `sales.orders` keyed by `id` (lake path `shop/sales/orders`). `extra` is YAML added at the top
/// level (`commit:`, `compact:`).
pub fn config(root: &Path, extra: &str) -> Arc<Validated> {
    let r = root.display();
    let yaml = format!(
        "lake: {r}/lake\nstaging: {r}/staged\nquarantine: {r}/quarantine\nstorage:\n  buckets:\n    {BUCKET}: {r}/bucket\n{extra}sources:\n  - name: {SOURCE}\n    bucket: {BUCKET}\n    tables:\n      - schema: {SCHEMA}\n        table: {TABLE}\n        keys: [{KEY}]\n"
    );
    Arc::new(Config::from_text(&yaml).unwrap_or_else(|e| panic!("bench config: {e}")))
}

pub fn stores(config: &Validated) -> Stores {
    Stores::new(config.config.storage.clone())
}

/// Where the table lives below a config root.
pub fn table_dir(root: &Path) -> PathBuf {
    root.join("lake").join(SOURCE).join(SCHEMA).join(TABLE)
}

pub fn local(dir: &Path) -> Location {
    Location::Local { dir: dir.to_path_buf() }
}

pub async fn open(dir: &Path) -> DeltaTable {
    let stores = Stores::new(Default::default());
    let (t, exists) = lake::open(&stores, &local(dir)).await.unwrap();
    assert!(exists, "no Delta table at {}", dir.display());
    t
}

// ---------------------------------------------------------------------------------------------
// Rows.

/// The data columns (8): what a DMS task would deliver for an `orders` table.
pub fn data_fields() -> Vec<Field> {
    vec![
        Field::new("id", DataType::Int64, true),
        Field::new("customer", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("note", DataType::Utf8, true),
        Field::new("price", DataType::Decimal128(12, 2), true),
        Field::new("quantity", DataType::Int32, true),
        Field::new(
            "updated_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            true,
        ),
        Field::new("gift", DataType::Boolean, true),
    ]
}

/// A staged change set's columns: the data columns, then dms2delta's metadata columns.
pub fn change_schema() -> SchemaRef {
    let mut f = data_fields();
    f.extend(meta_fields());
    Arc::new(Schema::new(f))
}

pub const STATUSES: [&str; 4] = ["new", "paid", "shipped", "cancelled"];
/// The status every update sets (base rows never have it): counted by the checksum.
pub const UPDATED: &str = "updated";
const WORDS: [&str; 16] = [
    "fragile",
    "leave at door",
    "gift wrap",
    "call first",
    "back entrance",
    "no signature",
    "urgent",
    "weekend",
    "second floor",
    "ring twice",
    "box, not bag",
    "invoice inside",
    "keep upright",
    "reused packaging",
    "ask for Ana",
    "deliver after 5pm",
];

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Deterministic pseudo-random numbers.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix(self.0.wrapping_mul(0x2545_f491_4f6c_dd1d))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One row's data values, a pure function of (key, version): version 0 is the full load.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub customer: u32,
    pub status: &'static str,
    pub note: u64,
    pub price_cents: i128,
    pub quantity: i32,
    pub updated_at: i64,
    pub gift: bool,
}

/// 2024-05-01 00:00:00 UTC.
const LOAD_US: i64 = 1_714_521_600_000_000;
/// 2024-06-01 12:00:00 UTC: CDC changes happen after it.
pub const CDC_US: i64 = 1_717_243_200_000_000;

pub fn row(id: i64, version: u64) -> Row {
    let h = splitmix((id as u64).wrapping_mul(0x1000_0000_01b3) ^ splitmix(version));
    let h2 = splitmix(h);
    Row {
        customer: (h % 200_000) as u32,
        status: STATUSES[((h >> 20) % 4) as usize],
        note: h2,
        price_cents: ((h >> 24) % 5_000_000) as i128,
        quantity: ((h >> 44) % 500) as i32 + 1,
        updated_at: if version == 0 {
            LOAD_US - ((h2 >> 8) % 86_400_000_000_000) as i64
        } else {
            CDC_US + version as i64 * 1_000
        },
        gift: (h2 >> 60) & 3 == 0,
    }
}

fn note_text(out: &mut String, bits: u64) {
    out.clear();
    let words = 1 + (bits % 4) as usize;
    for w in 0..words {
        if w > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[((bits >> (4 + 4 * w)) & 15) as usize]);
    }
}

/// Column builders for table rows and change rows alike.
pub struct Builders {
    id: Int64Builder,
    customer: StringBuilder,
    status: StringBuilder,
    note: StringBuilder,
    price: Decimal128Builder,
    quantity: Int32Builder,
    updated_at: TimestampMicrosecondBuilder,
    gift: BooleanBuilder,
    op: StringBuilder,
    seq: StringBuilder,
    commit_ts: TimestampMicrosecondBuilder,
    source_file: StringBuilder,
    nosup: StringBuilder,
    buf: String,
    rows: usize,
}

impl Builders {
    pub fn new(n: usize) -> Builders {
        Builders {
            id: Int64Builder::with_capacity(n),
            customer: StringBuilder::with_capacity(n, n * 16),
            status: StringBuilder::with_capacity(n, n * 8),
            note: StringBuilder::with_capacity(n, n * 32),
            price: Decimal128Builder::with_capacity(n),
            quantity: Int32Builder::with_capacity(n),
            updated_at: TimestampMicrosecondBuilder::with_capacity(n),
            gift: BooleanBuilder::with_capacity(n),
            op: StringBuilder::with_capacity(n, n),
            seq: StringBuilder::with_capacity(n, n * 37),
            commit_ts: TimestampMicrosecondBuilder::with_capacity(n),
            source_file: StringBuilder::with_capacity(n, 0),
            nosup: StringBuilder::with_capacity(n, 0),
            buf: String::new(),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    /// One row: `data` is `None` for a key-only delete.
    pub fn push(&mut self, id: i64, data: Option<&Row>, op: &str, seq: &str, commit_ts: Option<i64>) {
        self.rows += 1;
        self.id.append_value(id);
        match data {
            Some(r) => {
                use std::fmt::Write;
                self.buf.clear();
                let _ = write!(self.buf, "customer-{:06}", r.customer);
                self.customer.append_value(&self.buf);
                self.status.append_value(r.status);
                note_text(&mut self.buf, r.note);
                self.note.append_value(&self.buf);
                self.price.append_value(r.price_cents);
                self.quantity.append_value(r.quantity);
                self.updated_at.append_value(r.updated_at);
                self.gift.append_value(r.gift);
            }
            None => {
                self.customer.append_null();
                self.status.append_null();
                self.note.append_null();
                self.price.append_null();
                self.quantity.append_null();
                self.updated_at.append_null();
                self.gift.append_null();
            }
        }
        self.op.append_value(op);
        self.seq.append_value(seq);
        self.commit_ts.append_option(commit_ts);
        self.source_file
            .append_value("s3://dms-bench/shop/sales/orders/20240601-120000000.parquet");
        self.nosup.append_null();
    }

    /// The columns `schema` names, in its order (cast where the table's types are spelled
    /// differently).
    pub fn finish(mut self, schema: &SchemaRef) -> RecordBatch {
        let cols: HashMap<&str, ArrayRef> = HashMap::from([
            ("id", Arc::new(self.id.finish()) as ArrayRef),
            ("customer", Arc::new(self.customer.finish())),
            ("status", Arc::new(self.status.finish())),
            ("note", Arc::new(self.note.finish())),
            (
                "price",
                Arc::new(self.price.finish().with_precision_and_scale(12, 2).unwrap()),
            ),
            ("quantity", Arc::new(self.quantity.finish())),
            ("updated_at", Arc::new(self.updated_at.finish().with_timezone(UTC))),
            ("gift", Arc::new(self.gift.finish())),
            (OP, Arc::new(self.op.finish())),
            (SEQ, Arc::new(self.seq.finish())),
            (COMMIT_TS, Arc::new(self.commit_ts.finish().with_timezone(UTC))),
            (
                SOURCE_FILE,
                arrow::compute::cast(&self.source_file.finish(), &dms2delta::changes::source_file_type()).unwrap(),
            ),
            (NOSUP, Arc::new(self.nosup.finish())),
        ]);
        let arrays: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| {
                let a = cols
                    .get(f.name().as_str())
                    .unwrap_or_else(|| panic!("no column {}", f.name()));
                if a.data_type() == f.data_type() {
                    a.clone()
                } else {
                    arrow::compute::cast(a, f.data_type()).unwrap()
                }
            })
            .collect();
        RecordBatch::try_new(schema.clone(), arrays).unwrap()
    }
}

/// The sequence text of the n-th CDC change (`1S` + 35 digits, as for `$AR_H_CHANGE_SEQ`).
pub fn cdc_seq(out: &mut String, n: u64) {
    Sequence::change_seq(out, &format!("2024060112{n:025}")).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The table.

/// Creates an empty table at `dir` with exactly the create commit dms2delta writes: a scratch
/// table is created by the commit stage from a one-row change set of this schema, and its
/// version 0 (protocol, metadata, schema: data columns + `_dms_seq` + `_dms_commit_ts`) becomes
/// version 0 of the new table.
pub async fn create_dms2delta_table(dir: &Path) {
    let scratch = tempfile::Builder::new()
        .prefix("dms2delta-bench-scratch-")
        .tempdir()
        .unwrap();
    let cfg = config(scratch.path(), "");
    let st = stores(&cfg);
    let mut b = Builders::new(1);
    let mut seq = String::new();
    Sequence::load(&mut seq, "LOAD00000001", 0);
    b.push(0, Some(&row(0, 0)), "I", &seq, None);
    stage(&cfg, &st, &b.finish(&change_schema()), "LOAD00000001.parquet").await;
    let m = CommitChangesBuilder::new(cfg.clone(), &st)
        .with_table(SOURCE, SCHEMA, TABLE)
        .await
        .unwrap();
    assert!(m.created_table, "{m:?}");
    let log = dir.join("_delta_log");
    std::fs::create_dir_all(&log).unwrap();
    let v0 = "00000000000000000000.json";
    std::fs::copy(table_dir(scratch.path()).join("_delta_log").join(v0), log.join(v0)).unwrap();
}

/// The table's Arrow schema.
pub fn table_schema(t: &DeltaTable) -> SchemaRef {
    t.snapshot().unwrap().snapshot().arrow_schema()
}

/// The full-load row of `id` as the table stores it.
pub fn push_base_row(b: &mut Builders, id: i64, seq: &mut String) {
    Sequence::load(seq, "LOAD00000001", (id - 1) as u64);
    b.push(id, Some(&row(id, 0)), "I", seq, None);
}

/// Appends one data file holding `rows` (one commit, one file, rows in the order given).
pub async fn append_file(table: DeltaTable, batches: Vec<RecordBatch>) -> DeltaTable {
    // One partition, so one writer and one file in the input's order.
    let overrides = HashMap::from([("datafusion.execution.target_partitions".to_string(), "1".to_string())]);
    let ctx = DeltaSessionContext::new_with_session_overrides(&overrides).unwrap();
    table
        .write(batches)
        .with_save_mode(SaveMode::Append)
        .with_target_file_size(NonZeroU64::new(1 << 40))
        .with_session_state(Arc::new(ctx.state()))
        .await
        .unwrap()
}

/// Full-load rows `first..=last` as record batches of the table's schema.
pub fn base_batches(schema: &SchemaRef, first: i64, last: i64) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut seq = String::new();
    let mut id = first;
    while id <= last {
        let end = (id + BATCH_ROWS as i64 - 1).min(last);
        let mut b = Builders::new((end - id + 1) as usize);
        for k in id..=end {
            push_base_row(&mut b, k, &mut seq);
        }
        out.push(b.finish(schema));
        id = end + 1;
    }
    out
}

/// A data file of the current version.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub path: String,
    pub size: u64,
    pub min_id: Option<i64>,
    pub max_id: Option<i64>,
    pub rows: Option<u64>,
}

pub fn files(t: &DeltaTable) -> Vec<FileInfo> {
    t.snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| {
            let stats: Option<serde_json::Value> = f.stats().and_then(|s| serde_json::from_str(&s).ok());
            let stat = |k: &str| {
                stats
                    .as_ref()
                    .and_then(|s| s.get(k))
                    .and_then(|m| m.get(KEY))
                    .and_then(|v| v.as_i64())
            };
            FileInfo {
                path: f.path().to_string(),
                size: f.size() as u64,
                min_id: stat("minValues"),
                max_id: stat("maxValues"),
                rows: stats
                    .as_ref()
                    .and_then(|s| s.get("numRecords"))
                    .and_then(|v| v.as_u64()),
            }
        })
        .collect()
}

/// What the commits after `after` did to the data files, from their `_delta_log` JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogDelta {
    pub versions: u64,
    pub files_added: u64,
    pub bytes_added: u64,
    pub files_removed: u64,
    pub bytes_removed: u64,
    /// Files removed and added again in the same version: given a deletion vector, not
    /// rewritten (counted in none of the above).
    pub files_marked: u64,
}

pub fn log_delta(table_dir: &Path, after: u64) -> LogDelta {
    let mut d = LogDelta::default();
    let mut v = after + 1;
    loop {
        let p = table_dir.join("_delta_log").join(format!("{v:020}.json"));
        let Ok(text) = std::fs::read_to_string(&p) else { break };
        d.versions += 1;
        let actions: Vec<serde_json::Value> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let path = |a: &serde_json::Value| a.get("path").and_then(|p| p.as_str()).unwrap_or("").to_string();
        let added: std::collections::HashSet<String> = actions.iter().filter_map(|a| a.get("add")).map(path).collect();
        let removed: std::collections::HashSet<String> =
            actions.iter().filter_map(|a| a.get("remove")).map(path).collect();
        for a in &actions {
            if let Some(add) = a.get("add") {
                if removed.contains(&path(add)) {
                    continue;
                }
                d.files_added += 1;
                d.bytes_added += add.get("size").and_then(|s| s.as_u64()).unwrap_or(0);
            }
            if let Some(rm) = a.get("remove") {
                if added.contains(&path(rm)) {
                    d.files_marked += 1;
                    continue;
                }
                d.files_removed += 1;
                d.bytes_removed += rm.get("size").and_then(|s| s.as_u64()).unwrap_or(0);
            }
        }
        v += 1;
    }
    d
}

// ---------------------------------------------------------------------------------------------
// Checksums: what a table holds, and what it must hold.

/// Aggregates over a table that pin down its content well enough to catch a lost, duplicated,
/// resurrected or unapplied change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum {
    pub rows: i64,
    pub sum_id: i64,
    pub sum_quantity: i64,
    /// Rows with `status = 'updated'`.
    pub updated: i64,
    /// Rows carrying a CDC sequence (`_dms_seq` starting with `1`).
    pub cdc_rows: i64,
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rows={} sum(id)={} sum(quantity)={} updated={} cdc={}",
            self.rows, self.sum_id, self.sum_quantity, self.updated, self.cdc_rows
        )
    }
}

pub const CHECKSUM_SQL: &str = "SELECT count(*) AS n, coalesce(sum(id), 0) AS sum_id, \
     coalesce(sum(CAST(quantity AS BIGINT)), 0) AS sum_q, \
     coalesce(sum(CASE WHEN status = 'updated' THEN 1 ELSE 0 END), 0) AS updated, \
     coalesce(sum(CASE WHEN _dms_seq >= '1' THEN 1 ELSE 0 END), 0) AS cdc FROM t";

/// Runs one query returning one row of integers over the table at `dir` (registered as `t`).
pub async fn query_ints(dir: &Path, sql: &str) -> Vec<i64> {
    let table = open(dir).await;
    query_ints_on(&table, sql).await
}

pub async fn query_ints_on(table: &DeltaTable, sql: &str) -> Vec<i64> {
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap()).unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let b = batches.iter().find(|b| b.num_rows() > 0).expect("one row");
    b.columns()
        .iter()
        .map(|c| {
            let c = arrow::compute::cast(c, &DataType::Int64).unwrap();
            let a = c.as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
            if a.is_null(0) {
                0
            } else {
                a.value(0)
            }
        })
        .collect()
}

pub async fn checksum(dir: &Path) -> Checksum {
    let v = query_ints(dir, CHECKSUM_SQL).await;
    Checksum {
        rows: v[0],
        sum_id: v[1],
        sum_quantity: v[2],
        updated: v[3],
        cdc_rows: v[4],
    }
}

/// The final state of every key a batch touched: `None` = deleted, else (quantity, updated).
#[derive(Debug, Default, Clone)]
pub struct Model {
    pub finals: HashMap<i64, Option<(i32, bool)>>,
}

impl Model {
    /// What a table of full-load rows `1..=base_rows` must hold once the changes are applied.
    pub fn expected(&self, base_rows: i64) -> Checksum {
        let mut c = Checksum {
            rows: base_rows,
            sum_id: base_rows * (base_rows + 1) / 2,
            sum_quantity: (1..=base_rows).map(|id| row(id, 0).quantity as i64).sum(),
            updated: 0,
            cdc_rows: 0,
        };
        for (&id, fin) in &self.finals {
            if (1..=base_rows).contains(&id) {
                c.rows -= 1;
                c.sum_id -= id;
                c.sum_quantity -= row(id, 0).quantity as i64;
            }
            if let Some((q, updated)) = fin {
                c.rows += 1;
                c.sum_id += id;
                c.sum_quantity += *q as i64;
                c.updated += *updated as i64;
                c.cdc_rows += 1;
            }
        }
        c
    }
}

/// One change: its operation, key and position in the change stream (also its row version).
#[derive(Debug, Clone, Copy)]
pub struct Change {
    pub op: &'static str,
    pub id: i64,
    pub n: u64,
}

/// CDC over a table of full-load rows `1..=base_rows`: updates and deletes of random live keys
/// (spread over the whole key space, as real changes are), inserts of new keys above the load.
pub struct ChangeGen {
    rng: Rng,
    base_rows: i64,
    next_new: i64,
    next_n: u64,
    deleted: HashSet<i64>,
    pub model: Model,
}

impl ChangeGen {
    pub fn new(seed: u64, base_rows: i64) -> ChangeGen {
        ChangeGen {
            rng: Rng(seed),
            base_rows,
            next_new: base_rows + 1,
            next_n: 1,
            deleted: HashSet::new(),
            model: Model::default(),
        }
    }

    fn live_base_key(&mut self) -> i64 {
        loop {
            let k = 1 + self.rng.below(self.base_rows as u64) as i64;
            if !self.deleted.contains(&k) {
                return k;
            }
        }
    }

    /// `n` changes: 60% updates, 20% inserts, 20% deletes (exact counts, shuffled).
    pub fn batch(&mut self, n: usize) -> Vec<Change> {
        let (updates, inserts) = (n * 6 / 10, n * 2 / 10);
        let mut ops: Vec<&'static str> = (0..n)
            .map(|i| {
                if i < updates {
                    "U"
                } else if i < updates + inserts {
                    "I"
                } else {
                    "D"
                }
            })
            .collect();
        for i in (1..ops.len()).rev() {
            let j = self.rng.below(i as u64 + 1) as usize;
            ops.swap(i, j);
        }
        ops.into_iter().map(|op| self.change(op)).collect()
    }

    pub fn change(&mut self, op: &'static str) -> Change {
        let id = match op {
            "I" => {
                self.next_new += 1;
                self.next_new - 1
            }
            _ => self.live_base_key(),
        };
        let n = self.next_n;
        self.next_n += 1;
        match op {
            "D" => {
                self.deleted.insert(id);
                self.model.finals.insert(id, None);
            }
            _ => {
                let r = change_row(op, id, n);
                self.model.finals.insert(id, Some((r.quantity, op == "U")));
            }
        }
        Change { op, id, n }
    }
}

/// The values an insert or update carries.
pub fn change_row(op: &str, id: i64, n: u64) -> Row {
    let mut r = row(id, n);
    if op == "U" {
        r.status = UPDATED;
    }
    r
}

/// Changes as a staged change set's batch.
pub fn change_batch(changes: &[Change]) -> RecordBatch {
    let mut b = Builders::new(changes.len());
    let mut seq = String::new();
    for c in changes {
        cdc_seq(&mut seq, c.n);
        let ts = CDC_US + c.n as i64 * 1_000;
        if c.op == "D" {
            b.push(c.id, None, "D", &seq, Some(ts));
        } else {
            b.push(c.id, Some(&change_row(c.op, c.id, c.n)), c.op, &seq, Some(ts));
        }
    }
    b.finish(&change_schema())
}

/// Stages a change set as decode does; returns the staged object's local file.
pub async fn stage(config: &Validated, stores: &Stores, batch: &RecordBatch, name: &str) -> PathBuf {
    let spec = config
        .table_by_target(SOURCE, SCHEMA, TABLE)
        .expect("the bench table is configured");
    let (store, root) = stores.resolve(&config.staging).unwrap();
    let key = format!("{SCHEMA}/{TABLE}/{name}");
    let id = change_set_id(BUCKET, &key, Some("bench"));
    let path = change_set_path(&root, &spec, &id).unwrap();
    let meta = ChangeSetMeta {
        source_file: format!("s3://{BUCKET}/{key}"),
        etag: Some("bench".into()),
        table: spec.qualified_name(),
        rows_in: batch.num_rows() as u64,
    };
    write_change_set(store, &path, std::slice::from_ref(batch), &meta)
        .await
        .unwrap();
    match &config.staging {
        // A local staging folder is the store's root.
        Location::Local { dir } => dir.join(path.as_ref()),
        other => panic!("the bench stages to a local folder, not {other}"),
    }
}

/// Builds a table of full-load rows `1..=rows` at `dir`, sorted by key, `file_rows` rows per
/// data file (one append per file). Returns the seconds it took.
pub async fn build_base(dir: &Path, rows: i64, file_rows: i64) -> f64 {
    let started = Instant::now();
    create_dms2delta_table(dir).await;
    let mut table = open(dir).await;
    let schema = table_schema(&table);
    let mut first = 1;
    while first <= rows {
        let last = (first + file_rows - 1).min(rows);
        table = append_file(table, base_batches(&schema, first, last)).await;
        first = last + 1;
    }
    started.elapsed().as_secs_f64()
}
