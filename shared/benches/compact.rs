//! Compaction benchmark (the compact stage): a table of 1,000 small data files (about 1 MiB
//! each, one append commit per file, as a stream of small commits leaves it) compacted by
//! `CompactBuilder` (forced; `compact.target_file_mb: 128`, `min_small_files: 16`, bin-packing).
//! Prints the rate, files in and out, the compaction's peak RSS, and the time of a full-table
//! scan (every column read) before and after, as a ratio, all in the same run.
//!
//! Run with `cargo bench -p dms2delta --bench compact`.
//!
//! The table is a dms2delta table (its create commit is the one the commit stage writes) of the
//! same 8 data columns as the merge bench plus `_dms_seq` and `_dms_commit_ts`; rows carry CDC
//! sequences and keys in arrival order. The first append calibrates the rows per file so that
//! files come out at the requested size. The compaction and each scan run in their own process
//! (this binary again), so the compaction's peak RSS is its own. A scan is
//! `SELECT count(*), sum(..), sum(length(..)), max(..) ...` over all columns through DataFusion,
//! best of a few runs on an already opened table; opening the table (reading its log) is timed
//! separately. The scan's aggregates must be identical before and after.
//!
//! Environment knobs (the numbers are the defaults):
//! - `DMS2DELTA_BENCH_FILES`: small files (default 1,000);
//! - `DMS2DELTA_BENCH_FILE_KIB`: size of each small file in KiB (default 1,024);
//! - `DMS2DELTA_BENCH_RUNS`: timed runs per scan (default 5).
//!
//! The issue sets no numeric target for compaction; the `check:` lines at the end are this
//! bench's own sanity checks (every small file compacted, memory within the compact function's
//! default, scan time after vs before), not targets from the issue.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use common::*;
use dms2delta::operations::compact::CompactBuilder;

const ENV_FILES: &str = "DMS2DELTA_BENCH_FILES";
const ENV_FILE_KIB: &str = "DMS2DELTA_BENCH_FILE_KIB";
const ENV_RUNS: &str = "DMS2DELTA_BENCH_RUNS";

const DEFAULT_FILES: usize = 1_000;
const DEFAULT_FILE_KIB: usize = 1_024;
const DEFAULT_RUNS: usize = 5;
/// Rows of the first append, which calibrates the rest.
const PROBE_ROWS: usize = 20_000;
const COMPACT_YAML: &str = "compact:\n  target_file_mb: 128\n  min_small_files: 16\n";
/// template.yaml's default CompactMemorySize.
const COMPACT_LAMBDA_MB: f64 = 3008.0;

/// Reads every column.
const SCAN_SQL: &str = "SELECT count(*), sum(id), sum(CAST(quantity AS BIGINT)), \
     sum(CAST(price * 100 AS BIGINT)), sum(length(customer)), sum(length(status)), \
     sum(length(note)), sum(CASE WHEN gift THEN 1 ELSE 0 END), \
     max(CAST(updated_at AS BIGINT)), sum(length(_dms_seq)), max(CAST(_dms_commit_ts AS BIGINT)) FROM t";

fn main() {
    // `cargo bench` passes `--bench`; this harness-less bench ignores its arguments.
    match std::env::var(ENV_CASE).as_deref() {
        Ok("scan") => child_scan(&dir_arg()),
        Ok("compact") => child_compact(&dir_arg()),
        Ok(other) => panic!("unknown case `{other}`"),
        Err(_) => parent(),
    }
}

fn dir_arg() -> PathBuf {
    PathBuf::from(std::env::var(ENV_DIR).expect("the parent passes the folder"))
}

// ---------------------------------------------------------------------------------------------
// Children.

fn child_scan(root: &Path) {
    let runs = env_usize(ENV_RUNS, DEFAULT_RUNS).max(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let table = rt.block_on(open(&table_dir(root)));
    let open_secs = started.elapsed().as_secs_f64();
    let mut secs = Vec::new();
    let mut sums = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        sums = rt.block_on(query_ints_on(&table, SCAN_SQL));
        secs.push(started.elapsed().as_secs_f64());
    }
    let secs: Vec<String> = secs.iter().map(|s| format!("{s:.6}")).collect();
    let sums: Vec<String> = sums.iter().map(|v| v.to_string()).collect();
    println!(
        "RESULT open_secs={open_secs:.6} secs={} sums={} files={} vmhwm_kib={}",
        secs.join(","),
        sums.join(","),
        table.snapshot().unwrap().log_data().num_files(),
        peak_rss_kib().unwrap_or(0)
    );
}

fn child_compact(root: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cfg = config(root, COMPACT_YAML);
    let st = stores(&cfg);
    let started = Instant::now();
    let m = rt
        .block_on(async {
            CompactBuilder::new(cfg.clone(), &st)
                .with_table(SOURCE, SCHEMA, TABLE)
                .with_force(true)
                .await
        })
        .unwrap_or_else(|e| panic!("compaction failed: {e}"));
    let secs = started.elapsed().as_secs_f64();
    println!(
        "RESULT secs={secs:.6} vmhwm_kib={} files_in={} files_out={} bytes_rewritten={} checkpoint={} yielded={} due={}",
        peak_rss_kib().unwrap_or(0),
        m.files_in,
        m.files_out,
        m.bytes_rewritten,
        m.checkpoint_written,
        m.yielded,
        m.due.join("+").replace(' ', "_")
    );
}

// ---------------------------------------------------------------------------------------------
// Parent.

/// Rows `first..first+n` as inserts that arrived by CDC.
fn cdc_batches(schema: &SchemaRef, first: i64, n: usize) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut seq = String::new();
    let mut id = first;
    let end = first + n as i64;
    while id < end {
        let stop = (id + 65_536).min(end);
        let mut b = Builders::new((stop - id) as usize);
        for k in id..stop {
            cdc_seq(&mut seq, k as u64);
            let r = change_row("I", k, k as u64);
            b.push(k, Some(&r), "I", &seq, Some(CDC_US + k * 1_000));
        }
        out.push(b.finish(schema));
        id = stop;
    }
    out
}

struct Scan {
    open_secs: f64,
    best: f64,
    all: Vec<f64>,
    sums: String,
    files: u64,
}

fn scan(root: &Path) -> Result<Scan, String> {
    let r = run_child("scan", root, &[])?;
    let all: Vec<f64> = r["secs"].split(',').filter_map(|s| s.parse().ok()).collect();
    Ok(Scan {
        open_secs: get(&r, "open_secs").unwrap_or(f64::NAN),
        best: all.iter().copied().fold(f64::INFINITY, f64::min),
        all,
        sums: r["sums"].clone(),
        files: get(&r, "files").unwrap_or(0),
    })
}

fn parent() {
    let n_files = env_usize(ENV_FILES, DEFAULT_FILES).max(1);
    let file_kib = env_usize(ENV_FILE_KIB, DEFAULT_FILE_KIB).max(1);
    let runs = env_usize(ENV_RUNS, DEFAULT_RUNS).max(1);
    let tmp = tempfile::Builder::new()
        .prefix("dms2delta-compact-bench-")
        .tempdir()
        .expect("a temporary folder");
    let root = tmp.path();
    let dir = table_dir(root);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run_started = Instant::now();

    println!("dms2delta compaction bench (compact stage) on {}", machine());

    // Build: one append (one commit, one file) per small file.
    let started = Instant::now();
    let rows_per_file = rt.block_on(async {
        create_dms2delta_table(&dir).await;
        let mut table = open(&dir).await;
        let schema = table_schema(&table);
        table = append_file(table, cdc_batches(&schema, 1, PROBE_ROWS)).await;
        let probe = files(&table)[0].size;
        let rows = ((PROBE_ROWS as f64) * (file_kib as f64 * 1024.0) / probe as f64).round() as usize;
        let rows = rows.max(1);
        let mut next = 1 + PROBE_ROWS as i64;
        for _ in 1..n_files {
            table = append_file(table, cdc_batches(&schema, next, rows)).await;
            next += rows as i64;
        }
        rows
    });
    let build_secs = started.elapsed().as_secs_f64();
    let before_files = rt.block_on(async { files(&open(&dir).await) });
    let sizes: Vec<u64> = before_files.iter().map(|f| f.size).collect();
    let total_before: u64 = sizes.iter().sum();
    let total_rows = PROBE_ROWS + rows_per_file * (n_files - 1);
    println!(
        "table: {} appends (one commit and one data file each), {} rows ({} per file after a {}-row calibration append), {} files, {:.1} MiB, {:.0}..{:.0} KiB per file; built in {:.1}s",
        group(n_files as u64),
        group(total_rows as u64),
        group(rows_per_file as u64),
        group(PROBE_ROWS as u64),
        before_files.len(),
        mib(total_before),
        sizes.iter().copied().min().unwrap_or(0) as f64 / 1024.0,
        sizes.iter().copied().max().unwrap_or(0) as f64 / 1024.0,
        build_secs
    );
    println!(
        "compaction: CompactBuilder with_force(true), compact.target_file_mb 128, min_small_files 16, bin-packing (no z-order); forced runs also checkpoint and vacuum (7-day retention: nothing to delete)"
    );
    println!(
        "scans: every column aggregated through DataFusion, best of {runs} runs each, table opened once per process"
    );
    println!();

    let before = scan(root);
    let compacted = run_child("compact", root, &[]);
    let after = scan(root);
    let after_files = rt.block_on(async { files(&open(&dir).await) });
    let out_sizes: Vec<u64> = after_files.iter().map(|f| f.size).collect();

    match &compacted {
        Ok(r) => {
            let secs: f64 = get(r, "secs").unwrap_or(f64::NAN);
            let bytes: u64 = get(r, "bytes_rewritten").unwrap_or(0);
            println!(
                "{:<24} {:>10} {:>10} {:>11} {:>11} {:>9} {:>10} {:>13}",
                "compaction", "files in", "files out", "MiB in", "MiB out", "wall s", "MiB/s", "peak RSS MiB"
            );
            println!(
                "{:<24} {:>10} {:>10} {:>11.1} {:>11.1} {:>9.2} {:>10.1} {:>13}",
                "CompactBuilder (forced)",
                r["files_in"],
                r["files_out"],
                mib(bytes),
                mib(out_sizes.iter().sum()),
                secs,
                mib(bytes) / secs,
                rss_text(get(r, "vmhwm_kib"))
            );
            println!(
                "  output files: {} of {:.1}..{:.1} MiB; checkpoint written: {}; yielded to a commit: {}",
                after_files.len(),
                mib(out_sizes.iter().copied().min().unwrap_or(0)),
                mib(out_sizes.iter().copied().max().unwrap_or(0)),
                r["checkpoint"],
                r["yielded"]
            );
        }
        Err(e) => println!("compaction: FAILED: {e}"),
    }
    println!();

    let mut scan_ratio = None;
    match (&before, &after) {
        (Ok(b), Ok(a)) => {
            let same = b.sums == a.sums;
            println!(
                "{:<24} {:>8} {:>10} {:>12} {:>20}",
                "full-table scan", "files", "open s", "scan s", "runs s"
            );
            for (label, s) in [("before compaction", b), ("after compaction", a)] {
                println!(
                    "{:<24} {:>8} {:>10.3} {:>12.3} {:>20}",
                    label,
                    s.files,
                    s.open_secs,
                    s.best,
                    s.all.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join("/")
                );
            }
            let ratio = b.best / a.best;
            scan_ratio = Some(ratio);
            println!(
                "scan time before / after: {ratio:.2}x ({})",
                if ratio >= 1.0 { "faster after" } else { "slower after" }
            );
            println!("open time before / after: {:.2}x", b.open_secs / a.open_secs);
            println!(
                "same aggregates before and after: {}",
                if same {
                    "OK".to_string()
                } else {
                    format!("FAILED (before {}, after {})", b.sums, a.sums)
                }
            );
        }
        (Err(e), _) | (_, Err(e)) => println!("scan: FAILED: {e}"),
    }

    println!();
    println!("checks (the issue sets no target for compaction; these are the bench's own):");
    if let Ok(r) = &compacted {
        let files_in: u64 = get(r, "files_in").unwrap_or(0);
        println!(
            "check: every small file compacted ({} files in): {} {}",
            before_files.len(),
            files_in,
            verdict(files_in as usize == before_files.len())
        );
        if let Some(k) = get::<u64>(r, "vmhwm_kib") {
            let m = k as f64 / 1024.0;
            println!(
                "check: compaction peak RSS within the compact function's default memory ({COMPACT_LAMBDA_MB:.0} MB, template.yaml): {m:.0} MiB {}",
                verdict(m * 1.048_576 < COMPACT_LAMBDA_MB)
            );
        }
    }
    if let Some(x) = scan_ratio {
        println!(
            "check: a full scan (local disk, warm page cache) is faster after compaction: {x:.2}x {}",
            verdict(x > 1.0)
        );
    }
    if n_files != DEFAULT_FILES || file_kib != DEFAULT_FILE_KIB {
        println!(
            "note: {ENV_FILES}={n_files}, {ENV_FILE_KIB}={file_kib}; the issue's case is 1,000 files of about 1 MiB"
        );
    }
    println!("whole run: {:.0}s", run_started.elapsed().as_secs_f64());
}
