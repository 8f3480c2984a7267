//! Decode benchmark: a generated 1,000,000-row DMS CDC file (10 data columns, 30% of rows repeat
//! an earlier key), decoded and deduplicated from Parquet and from gzip CSV, against a bare arrow
//! read of the same Parquet file that does nothing else.
//!
//! Run with `cargo bench -p dms2delta --bench decode`.
//!
//! The parent process writes both files once into a temporary folder laid out like DMS's S3
//! output (`<bucket_folder>/<schema>/<table>/20240528-195141380.{parquet,csv.gz}`), then runs each
//! case in a child process (this same binary, told the case by an environment variable) so that
//! each case's peak RSS (`VmHWM`) is its own. A child times its case a few times; the cases take
//! turns over several rounds, and each reports its best run.
//!
//! Environment knobs (for quick runs; the issue's targets are for the defaults):
//! - `DMS2DELTA_BENCH_ROWS`: rows in the file (default 1,000,000);
//! - `DMS2DELTA_BENCH_RUNS`: timed runs per child process (default 3);
//! - `DMS2DELTA_BENCH_ROUNDS`: child processes per case, the cases taking turns (default 3);
//! - `DMS2DELTA_BENCH_KEEP`: keep the generated files (the path is printed) to profile a case.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod util;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Decimal128Builder, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use dms2delta::config::{Config, Validated};
use dms2delta::decode::{decode_file, FileContext, BATCH_ROWS};
use dms2delta::route::{route, Route};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::{WriterProperties, WriterVersion};
use util::{env_usize, group, mib, peak_rss_kib};

const ENV_CASE: &str = "DMS2DELTA_BENCH_CASE";
const ENV_DIR: &str = "DMS2DELTA_BENCH_DIR";
const ENV_ROWS: &str = "DMS2DELTA_BENCH_ROWS";
const ENV_RUNS: &str = "DMS2DELTA_BENCH_RUNS";
const ENV_KEEP: &str = "DMS2DELTA_BENCH_KEEP";
const ENV_ROUNDS: &str = "DMS2DELTA_BENCH_ROUNDS";

const DEFAULT_ROWS: usize = 1_000_000;
const DEFAULT_RUNS: usize = 3;
const DEFAULT_ROUNDS: usize = 3;
/// Share of rows that repeat an earlier key.
const REPEAT_SHARE: f64 = 0.30;
/// Share of repeated-key rows that are deletes (the rest are updates).
const DELETE_SHARE: f64 = 0.10;
/// Share of NULLs in every non-key column.
const NULL_SHARE: f64 = 0.05;
/// DMS's default `RowGroupLength`.
const ROW_GROUP_ROWS: usize = 10_000;

const BUCKET: &str = "dms-bench";
const BUCKET_FOLDER: &str = "raw/shop";
const SCHEMA: &str = "sales";
const TABLE: &str = "orders";
const STEM: &str = "20240528-195141380";

const TARGET_RATIO: f64 = 2.0;
const TARGET_RSS_MIB: f64 = 512.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    BareParquet,
    Parquet,
    GzipCsv,
}

impl Case {
    const ALL: [Case; 3] = [Case::BareParquet, Case::Parquet, Case::GzipCsv];

    fn id(self) -> &'static str {
        match self {
            Case::BareParquet => "bare-parquet",
            Case::Parquet => "parquet",
            Case::GzipCsv => "gzip-csv",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Case::BareParquet => "parquet bare arrow read",
            Case::Parquet => "parquet decode+dedup",
            Case::GzipCsv => "gzip csv decode+dedup",
        }
    }

    fn from_id(s: &str) -> Option<Case> {
        Case::ALL.into_iter().find(|c| c.id() == s)
    }
}

fn main() {
    // `cargo bench` passes `--bench` (and any filter); this harness-less bench ignores them.
    match std::env::var(ENV_CASE) {
        Ok(case) => {
            let case = Case::from_id(&case).unwrap_or_else(|| panic!("unknown case `{case}`"));
            let dir = PathBuf::from(std::env::var(ENV_DIR).expect("the parent passes the data folder"));
            child(case, &dir);
        }
        Err(_) => parent(),
    }
}

// ---------------------------------------------------------------------------------------------
// Parent: generate, spawn, report.

struct Measured {
    case: Case,
    rows_in: u64,
    rows_out: u64,
    best_secs: f64,
    all_secs: Vec<f64>,
    peak_rss_kib: Option<u64>,
}

fn parent() {
    let rows = env_usize(ENV_ROWS, DEFAULT_ROWS);
    let runs = env_usize(ENV_RUNS, DEFAULT_RUNS).max(1);
    let rounds = env_usize(ENV_ROUNDS, DEFAULT_ROUNDS).max(1);
    let tmp = tempfile::Builder::new()
        .prefix("dms2delta-bench-")
        .tempdir()
        .expect("a temporary folder");
    let dir = tmp.path();
    if std::env::var_os(ENV_KEEP).is_some() {
        // For profiling one case by hand: DMS2DELTA_BENCH_CASE=parquet DMS2DELTA_BENCH_DIR=<dir>.
        println!("keeping the generated files in {}", dir.display());
    }

    let started = Instant::now();
    let summary = generate(dir, rows);
    let parquet_bytes = std::fs::metadata(data_path(dir, "parquet"))
        .map(|m| m.len())
        .unwrap_or(0);
    let csv_bytes = std::fs::metadata(data_path(dir, "csv.gz"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "dms2delta decode bench: {} rows, 10 data columns + Op, {:.1}% of rows repeat an earlier key ({} distinct keys, {} deletes)",
        group(rows as u64),
        100.0 * summary.repeats as f64 / rows.max(1) as f64,
        group(summary.distinct),
        group(summary.deletes),
    );
    println!(
        "files: {}/{}/{}/{STEM}.parquet {:.1} MiB ({} row groups of {}, uncompressed, dictionary), {STEM}.csv.gz {:.1} MiB (headerless); generated in {:.1}s",
        BUCKET_FOLDER,
        SCHEMA,
        TABLE,
        mib(parquet_bytes),
        rows.div_ceil(ROW_GROUP_ROWS),
        group(ROW_GROUP_ROWS as u64),
        mib(csv_bytes),
        started.elapsed().as_secs_f64()
    );
    println!(
        "each case runs in its own processes, {rounds} rounds of {runs} runs taking turns with the other cases, best run reported; batch size {BATCH_ROWS}; peak RSS is VmHWM over all runs; {} CPUs, load average {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| "n/a".into())
    );
    println!();

    let exe = std::env::current_exe().expect("the bench binary's path");
    // The cases take turns, round after round, so a slow spell of a shared machine falls on
    // all of them rather than on one.
    let mut results: Vec<Measured> = Vec::new();
    for case in (0..rounds).flat_map(|_| Case::ALL) {
        let out = Command::new(&exe)
            .env(ENV_CASE, case.id())
            .env(ENV_DIR, dir)
            .env(ENV_RUNS, runs.to_string())
            .output()
            .expect("the child process starts");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            panic!(
                "case {} failed ({}):\n{}\n{}",
                case.label(),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let m = parse_result(case, &stdout)
            .unwrap_or_else(|| panic!("case {} printed no result line:\n{stdout}", case.label()));
        // The work must be the work: every row read, and dedup keeping one row per key.
        assert_eq!(m.rows_in, rows as u64, "{}: rows read", case.label());
        if case != Case::BareParquet {
            assert_eq!(m.rows_out, summary.distinct, "{}: rows after dedup", case.label());
        }
        match results.iter_mut().find(|r| r.case == case) {
            Some(r) => {
                r.best_secs = r.best_secs.min(m.best_secs);
                r.all_secs.extend(m.all_secs);
                r.peak_rss_kib = r.peak_rss_kib.max(m.peak_rss_kib);
            }
            None => results.push(m),
        }
    }

    let bare = results
        .iter()
        .find(|m| m.case == Case::BareParquet)
        .map(|m| m.best_secs)
        .unwrap_or(f64::NAN);
    println!(
        "{:<26} {:>10} {:>10} {:>9} {:>12} {:>9} {:>13} {:>10}",
        "case", "rows in", "rows out", "best s", "rows/s", "runs s", "peak RSS MiB", "vs bare"
    );
    for m in &results {
        let runs_s: Vec<String> = m.all_secs.iter().map(|s| format!("{s:.2}")).collect();
        println!(
            "{:<26} {:>10} {:>10} {:>9.3} {:>12} {:>9} {:>13} {:>9.2}x",
            m.case.label(),
            m.rows_in,
            m.rows_out,
            m.best_secs,
            group((m.rows_in as f64 / m.best_secs) as u64),
            runs_s.join("/"),
            m.peak_rss_kib
                .map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or_else(|| "n/a".into()),
            m.best_secs / bare
        );
    }
    println!();

    if let Some(p) = results.iter().find(|m| m.case == Case::Parquet) {
        let ratio = p.best_secs / bare;
        println!(
            "target parquet decode+dedup <= {TARGET_RATIO:.1}x bare read: {ratio:.2}x {}",
            verdict(ratio <= TARGET_RATIO)
        );
    }
    for m in results.iter().filter(|m| m.case != Case::BareParquet) {
        match m.peak_rss_kib {
            Some(k) => {
                let mib = k as f64 / 1024.0;
                println!(
                    "target peak RSS < {TARGET_RSS_MIB:.0} MiB for {}: {mib:.1} MiB {}",
                    m.case.label(),
                    verdict(mib < TARGET_RSS_MIB)
                );
            }
            None => println!(
                "target peak RSS < {TARGET_RSS_MIB:.0} MiB for {}: not measurable here (no /proc)",
                m.case.label()
            ),
        }
    }
    if rows != DEFAULT_ROWS {
        println!(
            "note: {ENV_ROWS}={rows}; the targets are meant for {} rows",
            group(DEFAULT_ROWS as u64)
        );
    }
    if std::env::var_os(ENV_KEEP).is_some() {
        let _ = tmp.keep();
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "MET"
    } else {
        "MISSED"
    }
}

fn parse_result(case: Case, stdout: &str) -> Option<Measured> {
    let line = stdout.lines().find(|l| l.starts_with("RESULT "))?;
    let mut m = Measured {
        case,
        rows_in: 0,
        rows_out: 0,
        best_secs: f64::NAN,
        all_secs: Vec::new(),
        peak_rss_kib: None,
    };
    for kv in line.split_whitespace().skip(1) {
        let (k, v) = kv.split_once('=')?;
        match k {
            "rows_in" => m.rows_in = v.parse().ok()?,
            "rows_out" => m.rows_out = v.parse().ok()?,
            "secs" => m.all_secs = v.split(',').map(|s| s.parse().ok()).collect::<Option<Vec<f64>>>()?,
            "vmhwm_kib" => m.peak_rss_kib = v.parse().ok(),
            _ => {}
        }
    }
    m.best_secs = m.all_secs.iter().copied().fold(f64::INFINITY, f64::min);
    Some(m)
}

// ---------------------------------------------------------------------------------------------
// Child: run one case a few times, print one RESULT line.

fn child(case: Case, dir: &Path) {
    let runs = env_usize(ENV_RUNS, DEFAULT_RUNS).max(1);
    let config = bench_config(dir);
    let mut secs = Vec::with_capacity(runs);
    let (mut rows_in, mut rows_out) = (0, 0);
    for _ in 0..runs {
        let started = Instant::now();
        (rows_in, rows_out) = match case {
            Case::BareParquet => bare_read(&data_path(dir, "parquet")),
            Case::Parquet => decode(&config, "parquet", dir),
            Case::GzipCsv => decode(&config, "csv.gz", dir),
        };
        secs.push(started.elapsed().as_secs_f64());
    }
    let secs: Vec<String> = secs.iter().map(|s| format!("{s:.6}")).collect();
    let hwm = peak_rss_kib().map(|k| k.to_string()).unwrap_or_else(|| "none".into());
    println!(
        "RESULT case={} rows_in={rows_in} rows_out={rows_out} secs={} vmhwm_kib={hwm}",
        case.id(),
        secs.join(",")
    );
}

/// The baseline: the same reader settings decode uses, and nothing else.
fn bare_read(path: &Path) -> (u64, u64) {
    let file = File::open(path).expect("the Parquet file");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .expect("a Parquet file")
        .with_batch_size(BATCH_ROWS)
        .build()
        .expect("a reader");
    let mut rows = 0u64;
    for batch in reader {
        rows += batch.expect("a readable batch").num_rows() as u64;
    }
    (rows, rows)
}

fn decode(config: &Validated, ext: &str, dir: &Path) -> (u64, u64) {
    let key = format!("{BUCKET_FOLDER}/{SCHEMA}/{TABLE}/{STEM}.{ext}");
    let routed = match route(config, BUCKET, &key).expect("the key routes") {
        Route::File(f) => f,
        Route::Ignore(why) => panic!("the key `{key}` is ignored: {why}"),
    };
    let spec = config
        .table(routed.source, SCHEMA, TABLE)
        .expect("the table is usable")
        .expect("the table is selected");
    let source_file = format!("s3://{BUCKET}/{key}");
    let ctx = FileContext {
        config,
        routed: &routed,
        source_file: &source_file,
        table: Some(&spec),
        max_field_bytes: config.config.limits.max_field_bytes,
    };
    let file = File::open(data_path(dir, ext)).expect("the data file");
    let tables = decode_file(file, &ctx).unwrap_or_else(|p| panic!("decode failed: {p:?}"));
    let rows_in = tables.iter().map(|t| t.rows_in).sum();
    let rows_out = tables.iter().map(|t| t.rows_out()).sum();
    (rows_in, rows_out)
}

fn bench_config(dir: &Path) -> Validated {
    let root = dir.display();
    let yaml = format!(
        r#"
lake: {root}/lake
staging: {root}/staging
quarantine: {root}/quarantine
storage:
  buckets:
    {BUCKET}: {root}
sources:
  - name: shop
    bucket: {BUCKET}
    bucket_folder: {BUCKET_FOLDER}
    tables:
      - schema: {SCHEMA}
        table: {TABLE}
        keys: [id]
        columns:
          - {{ name: id, type: INT8 }}
          - {{ name: quantity, type: INT4 }}
          - {{ name: price, type: NUMERIC, precision: 12, scale: 2 }}
          - {{ name: weight, type: REAL8 }}
          - {{ name: customer, type: STRING }}
          - {{ name: status, type: STRING }}
          - {{ name: updated_at, type: DATETIME }}
          - {{ name: gift, type: BOOLEAN }}
          - {{ name: ship_date, type: DATE }}
          - {{ name: note, type: STRING }}
"#
    );
    Config::from_text(&yaml).unwrap_or_else(|e| panic!("bench config: {e}"))
}

fn data_path(dir: &Path, ext: &str) -> PathBuf {
    dir.join(BUCKET_FOLDER)
        .join(SCHEMA)
        .join(TABLE)
        .join(format!("{STEM}.{ext}"))
}

// ---------------------------------------------------------------------------------------------
// Data generation: the same rows as DMS Parquet and as DMS headerless gzip CSV.

/// splitmix64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

const STATUSES: [&str; 5] = ["new", "paid", "shipped", "cancelled", "returned"];
const WORDS: [&str; 16] = [
    "fragile",
    "leave at door",
    "gift wrap",
    "call first",
    "back entrance",
    "no \"signature\"",
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

/// One generated row; `None` is NULL.
struct Row {
    op: &'static str,
    id: i64,
    quantity: Option<i32>,
    price_cents: Option<i128>,
    weight: Option<f64>,
    customer: Option<String>,
    status: Option<&'static str>,
    updated_at: Option<i64>,
    gift: Option<bool>,
    ship_date: Option<i32>,
    note: Option<String>,
}

struct Summary {
    distinct: u64,
    repeats: u64,
    deletes: u64,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("Op", DataType::Utf8, true),
        Field::new("id", DataType::Int64, true),
        Field::new("quantity", DataType::Int32, true),
        Field::new("price", DataType::Decimal128(12, 2), true),
        Field::new("weight", DataType::Float64, true),
        Field::new("customer", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("updated_at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        Field::new("gift", DataType::Boolean, true),
        Field::new("ship_date", DataType::Date32, true),
        Field::new("note", DataType::Utf8, true),
    ]))
}

fn generate(dir: &Path, rows: usize) -> Summary {
    let table_dir = dir.join(BUCKET_FOLDER).join(SCHEMA).join(TABLE);
    std::fs::create_dir_all(&table_dir).expect("the table folder");

    let schema = schema();
    // Like DMS's Parquet defaults: parquet-1-0, dictionary encoding, 10,000-row row groups, no
    // compression, and no embedded Arrow schema (types come from the Parquet logical types).
    let props = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(true)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_data_page_size_limit(1024 * 1024)
        .set_dictionary_page_size_limit(1024 * 1024)
        .build();
    let options = ArrowWriterOptions::new()
        .with_properties(props)
        .with_skip_arrow_metadata(true);
    let pq_file = File::create(data_path(dir, "parquet")).expect("create the Parquet file");
    let mut pq = ArrowWriter::try_new_with_options(BufWriter::new(pq_file), schema.clone(), options).expect("a writer");
    let csv_file = File::create(data_path(dir, "csv.gz")).expect("create the CSV file");
    let mut gz = flate2::write::GzEncoder::new(BufWriter::new(csv_file), flate2::Compression::default());

    let mut rng = Rng(0x00d5_2de1_7a00_0001);
    let mut ids: Vec<i64> = Vec::with_capacity(rows);
    let mut summary = Summary {
        distinct: 0,
        repeats: 0,
        deletes: 0,
    };
    // 2024-05-28 19:51:41.380 UTC, DMS's file time; changes happened in the minutes before.
    let base_micros: i64 = 1_716_925_901_380_000;
    let mut line = String::with_capacity(256);
    let mut text = String::with_capacity(ROW_GROUP_ROWS * 160);
    let mut start = 0;
    while start < rows {
        let n = ROW_GROUP_ROWS.min(rows - start);
        let mut b = Builders::new(n);
        text.clear();
        for i in start..start + n {
            let repeat = !ids.is_empty() && rng.chance(REPEAT_SHARE);
            let (op, id) = if repeat {
                summary.repeats += 1;
                let id = ids[rng.below(ids.len() as u64) as usize];
                if rng.chance(DELETE_SHARE) {
                    summary.deletes += 1;
                    ("D", id)
                } else {
                    ("U", id)
                }
            } else {
                // Keys in scattered order, as a real table's updates arrive.
                let id = (ids.len() as i64).wrapping_mul(2_654_435_761) % 4_294_967_311 + 1;
                ids.push(id);
                ("I", id)
            };
            let row = random_row(&mut rng, op, id, base_micros - (rows - i) as i64 * 250);
            b.append(&row);
            csv_line(&mut line, &row);
            text.push_str(&line);
        }
        pq.write(&b.finish(&schema)).expect("write a row group");
        gz.write_all(text.as_bytes()).expect("write CSV");
        start += n;
    }
    pq.close().expect("finish the Parquet file");
    gz.finish()
        .expect("finish the gzip stream")
        .flush()
        .expect("flush the CSV file");
    summary.distinct = ids.len() as u64;
    summary
}

fn random_row(rng: &mut Rng, op: &'static str, id: i64, changed_at: i64) -> Row {
    let null = |rng: &mut Rng| rng.chance(NULL_SHARE);
    Row {
        op,
        id,
        quantity: (!null(rng)).then(|| rng.below(500) as i32 + 1),
        price_cents: (!null(rng)).then(|| {
            let cents = rng.below(5_000_000) as i128;
            if rng.chance(0.02) {
                -cents
            } else {
                cents
            }
        }),
        weight: (!null(rng)).then(|| {
            let w = (rng.unit() * 1.0e6).round() / 1.0e3;
            if rng.chance(0.1) {
                w * 1.0e-4
            } else {
                w
            }
        }),
        customer: (!null(rng)).then(|| format!("customer-{:06}-{}", rng.below(200_000), STATUSES[(id % 5) as usize])),
        status: (!null(rng)).then(|| STATUSES[rng.below(STATUSES.len() as u64) as usize]),
        updated_at: (!null(rng)).then(|| changed_at - rng.below(86_400_000_000) as i64),
        gift: (!null(rng)).then(|| rng.chance(0.2)),
        // 2020-01-01 .. 2026-06-30
        ship_date: (!null(rng)).then(|| 18_262 + rng.below(2_372) as i32),
        note: (!null(rng)).then(|| {
            let words = 1 + rng.below(5) as usize;
            let mut s = String::new();
            for w in 0..words {
                if w > 0 {
                    s.push(' ');
                }
                s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
            }
            s
        }),
    }
}

struct Builders {
    op: StringBuilder,
    id: Int64Builder,
    quantity: Int32Builder,
    price: Decimal128Builder,
    weight: Float64Builder,
    customer: StringBuilder,
    status: StringBuilder,
    updated_at: TimestampMicrosecondBuilder,
    gift: BooleanBuilder,
    ship_date: Date32Builder,
    note: StringBuilder,
}

impl Builders {
    fn new(n: usize) -> Builders {
        Builders {
            op: StringBuilder::with_capacity(n, n),
            id: Int64Builder::with_capacity(n),
            quantity: Int32Builder::with_capacity(n),
            price: Decimal128Builder::with_capacity(n),
            weight: Float64Builder::with_capacity(n),
            customer: StringBuilder::with_capacity(n, n * 24),
            status: StringBuilder::with_capacity(n, n * 8),
            updated_at: TimestampMicrosecondBuilder::with_capacity(n),
            gift: BooleanBuilder::with_capacity(n),
            ship_date: Date32Builder::with_capacity(n),
            note: StringBuilder::with_capacity(n, n * 40),
        }
    }

    fn append(&mut self, r: &Row) {
        self.op.append_value(r.op);
        self.id.append_value(r.id);
        self.quantity.append_option(r.quantity);
        self.price.append_option(r.price_cents);
        self.weight.append_option(r.weight);
        self.customer.append_option(r.customer.as_deref());
        self.status.append_option(r.status);
        self.updated_at.append_option(r.updated_at);
        self.gift.append_option(r.gift);
        self.ship_date.append_option(r.ship_date);
        self.note.append_option(r.note.as_deref());
    }

    fn finish(mut self, schema: &SchemaRef) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.op.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.quantity.finish()),
            Arc::new(
                self.price
                    .finish()
                    .with_precision_and_scale(12, 2)
                    .expect("decimal(12,2)"),
            ),
            Arc::new(self.weight.finish()),
            Arc::new(self.customer.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.updated_at.finish()),
            Arc::new(self.gift.finish()),
            Arc::new(self.ship_date.finish()),
            Arc::new(self.note.finish()),
        ];
        RecordBatch::try_new(schema.clone(), cols).expect("a generated batch")
    }
}

/// One headerless DMS CSV line: Op, then the columns in DMS's text formats; NULL is an empty
/// unquoted field.
fn csv_line(out: &mut String, r: &Row) {
    out.clear();
    out.push_str(r.op);
    let _ = write!(out, ",{}", r.id);
    out.push(',');
    if let Some(q) = r.quantity {
        let _ = write!(out, "{q}");
    }
    out.push(',');
    if let Some(c) = r.price_cents {
        // NUMERIC(12,2): `24000.00`
        let sign = if c < 0 { "-" } else { "" };
        let a = c.unsigned_abs();
        let _ = write!(out, "{sign}{}.{:02}", a / 100, a % 100);
    }
    out.push(',');
    if let Some(w) = r.weight {
        dms_real8(out, w);
    }
    out.push(',');
    if let Some(s) = &r.customer {
        quoted(out, s);
    }
    out.push(',');
    if let Some(s) = r.status {
        quoted(out, s);
    }
    out.push(',');
    if let Some(us) = r.updated_at {
        // DATETIME: `2024-05-28 19:51:41.380000`
        let t = chrono::DateTime::from_timestamp_micros(us).expect("a timestamp in range");
        let _ = write!(out, "{}", t.format("%Y-%m-%d %H:%M:%S%.6f"));
    }
    out.push(',');
    if let Some(g) = r.gift {
        out.push_str(if g { "true" } else { "false" });
    }
    out.push(',');
    if let Some(d) = r.ship_date {
        let t = chrono::DateTime::from_timestamp(i64::from(d) * 86_400, 0).expect("a date in range");
        let _ = write!(out, "{}", t.format("%Y-%m-%d"));
    }
    out.push(',');
    if let Some(s) = &r.note {
        quoted(out, s);
    }
    out.push('\n');
}

/// REAL8 as DMS writes it: `+5.0656000000000000e+05`, 17 significant digits (exact round trip).
fn dms_real8(out: &mut String, v: f64) {
    let s = format!("{v:+.16e}");
    let (mantissa, exp) = s.split_once('e').expect("exponent notation");
    let exp: i32 = exp.parse().expect("an exponent");
    let _ = write!(out, "{mantissa}e{exp:+03}");
}

/// Text, quoted only when it must be (delimiter, quote or line break inside).
fn quoted(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}
