//! Merge benchmark (the commit stage): a 10,000-change batch (60% updates, 20% inserts, 20%
//! deletes) applied to tables of 1,000,000 and 10,000,000 rows, by dms2delta's commit stage (one
//! sequence-guarded MERGE with tombstones), once copy-on-write (the default) and once merge-on-read
//! (`commit.deletion_vectors`), and, in the same run, by the straightforward Python
//! approach (`bench/python_merge.py`: DuckDB window-function dedup, a deltalake
//! `merge().when_matched_update_all().when_not_matched_insert_all()`, then a delete pass). Also the
//! sustained throughput of 200 small change sets (50 changes each) with 4 concurrent committers,
//! and the peak RSS of applying one 2,000,000-change set (a bulk UPDATE at the source), each in
//! both modes.
//!
//! Run with `cargo bench -p dms2delta --bench merge`.
//!
//! The base tables are dms2delta tables (the create commit is the one the commit stage writes:
//! data columns + `_dms_seq` + `_dms_commit_ts`) holding full-load rows `1..=N` in key order, as
//! DMS full loads leave them, written as data files of a fixed row count (see `FILE_ROWS`). Every
//! competitor starts from its own copy of the same table folder. Each measured apply runs in its
//! own process (this binary again, or Python), so its peak RSS is its own; wall time covers the
//! commit (dms2delta) or the script's work after its imports (Python). Each apply is repeated on a
//! fresh copy (`DMS2DELTA_BENCH_RUNS`); the best time is compared, every run is printed, and the
//! peak RSS is the highest of the runs. After every apply the
//! table is checked against the state the changes must leave (row count, sum of keys, sum of a
//! column, rows carrying the update marker, rows carrying a CDC sequence); a mismatch is printed
//! as FAILED instead of a speed.
//!
//! Environment knobs (the targets are for the defaults):
//! - `DMS2DELTA_BENCH_ROWS`: table sizes, comma-separated (default `1000000,10000000`);
//! - `DMS2DELTA_BENCH_FILE_ROWS`: rows per data file of the base tables (default 3,400,000, about
//!   128 MiB with these columns);
//! - `DMS2DELTA_BENCH_CHANGES`: changes in the batch (default 10,000);
//! - `DMS2DELTA_BENCH_RUNS`: runs of each apply and of the throughput case (default 3);
//! - `DMS2DELTA_BENCH_STREAM_ROWS`: table size for the throughput case (default 1,000,000; 0 skips);
//! - `DMS2DELTA_BENCH_STREAM_SETS`, `DMS2DELTA_BENCH_STREAM_SET_CHANGES`,
//!   `DMS2DELTA_BENCH_COMMITTERS`: 200, 50 and 4 by default;
//! - `DMS2DELTA_BENCH_BULK_ROWS`: rows (and updates) of the bulk case (default 2,000,000; 0 skips);
//! - `DMS2DELTA_PYTHON`: the Python with `deltalake`, `pyarrow` and `duckdb` (default: the first
//!   of `~/.cache/dms2delta-venv/bin/python`, `.venv/bin/python`, `python3` that has them);
//!   `DMS2DELTA_SKIP_PYTHON=1` skips the baseline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dms2delta::operations::commit::CommitChangesBuilder;

const ENV_ROWS: &str = "DMS2DELTA_BENCH_ROWS";
const ENV_FILE_ROWS: &str = "DMS2DELTA_BENCH_FILE_ROWS";
const ENV_CHANGES: &str = "DMS2DELTA_BENCH_CHANGES";
const ENV_RUNS: &str = "DMS2DELTA_BENCH_RUNS";
const ENV_STREAM_ROWS: &str = "DMS2DELTA_BENCH_STREAM_ROWS";
const ENV_STREAM_SETS: &str = "DMS2DELTA_BENCH_STREAM_SETS";
const ENV_STREAM_SET_CHANGES: &str = "DMS2DELTA_BENCH_STREAM_SET_CHANGES";
const ENV_COMMITTERS: &str = "DMS2DELTA_BENCH_COMMITTERS";
const ENV_BULK_ROWS: &str = "DMS2DELTA_BENCH_BULK_ROWS";
const ENV_SEED: &str = "DMS2DELTA_BENCH_SEED";
/// Set by the parent for the merge-on-read child.
const ENV_DV: &str = "DMS2DELTA_BENCH_DV";
const DV_CONFIG: &str = "commit:\n  deletion_vectors: true\n";

const DEFAULT_ROWS: [usize; 2] = [1_000_000, 10_000_000];
/// Rows per base-table data file. Chosen so a file is close to the compact stage's 128 MiB
/// target, the layout a full load leaves once compacted (the run prints the real sizes).
const DEFAULT_FILE_ROWS: usize = 3_400_000;
const DEFAULT_CHANGES: usize = 10_000;
const DEFAULT_RUNS: usize = 3;
const DEFAULT_STREAM_ROWS: usize = 1_000_000;
const DEFAULT_STREAM_SETS: usize = 200;
const DEFAULT_STREAM_SET_CHANGES: usize = 50;
const DEFAULT_COMMITTERS: usize = 4;
const DEFAULT_BULK_ROWS: usize = 2_000_000;

const TARGET_SPEEDUP: f64 = 3.0;
const TARGET_SPEEDUP_ROWS: usize = 10_000_000;
const TARGET_REWRITE: f64 = 1.5;
const LAMBDA_MIB: f64 = 3072.0;
/// template.yaml's default CommitMemorySize (MB).
const COMMIT_LAMBDA_MB: f64 = 2048.0;

fn main() {
    // `cargo bench` passes `--bench`; this harness-less bench ignores its arguments.
    match std::env::var(ENV_CASE).as_deref() {
        Ok("apply") => child_apply(&dir_arg()),
        Ok("stream") => child_stream(&dir_arg()),
        Ok(other) => panic!("unknown case `{other}`"),
        Err(_) => parent(),
    }
}

fn dir_arg() -> PathBuf {
    PathBuf::from(std::env::var(ENV_DIR).expect("the parent passes the folder"))
}

fn seed() -> u64 {
    env_usize(ENV_SEED, 0x5eed) as u64
}

// ---------------------------------------------------------------------------------------------
// Children.

/// One commit of whatever is staged under `dir`.
fn child_apply(dir: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dv = std::env::var(ENV_DV).is_ok_and(|v| v == "1");
    let cfg = config(dir, if dv { DV_CONFIG } else { "" });
    let st = stores(&cfg);
    let started = Instant::now();
    let m = rt
        .block_on(async {
            CommitChangesBuilder::new(cfg.clone(), &st)
                .with_table(SOURCE, SCHEMA, TABLE)
                .await
        })
        .unwrap_or_else(|e| panic!("commit failed: {e}"));
    let secs = started.elapsed().as_secs_f64();
    println!(
        "RESULT secs={secs:.6} vmhwm_kib={} version={} change_sets={} rows_source={} inserted={} updated={} deleted={} stale={} tombstones={} files_added={} files_removed={} attempts={} conflicts={} rows_copied={} merge_scan_ms={} merge_rewrite_ms={} dv_files={} dv_rows={} duration_ms={}",
        peak_rss_kib().unwrap_or(0),
        m.version.map(|v| v as i64).unwrap_or(-1),
        m.change_sets,
        m.rows_source,
        m.rows_inserted,
        m.rows_updated,
        m.rows_deleted,
        m.rows_stale,
        m.tombstones_written,
        m.files_added,
        m.files_removed,
        m.attempts,
        m.conflicts,
        m.rows_copied,
        m.merge_scan_ms,
        m.merge_rewrite_ms,
        m.dv_files,
        m.dv_rows,
        m.duration_ms
    );
}

#[derive(Debug, Default, Clone, Copy)]
struct StreamStats {
    commits: u64,
    change_sets: u64,
    retries: u64,
    conflicts: u64,
    gave_up: u64,
    stale: u64,
}

/// The change sets of the throughput case: deterministic, so the parent knows what they leave.
fn stream_changes(rows: i64) -> (Vec<Vec<Change>>, Model) {
    let sets = env_usize(ENV_STREAM_SETS, DEFAULT_STREAM_SETS);
    let per = env_usize(ENV_STREAM_SET_CHANGES, DEFAULT_STREAM_SET_CHANGES);
    let mut g = ChangeGen::new(seed() ^ 0x57, rows);
    let out = (0..sets).map(|_| g.batch(per)).collect();
    (out, g.model)
}

/// A producer stages the change sets one after another (as decode invocations would) while
/// `committers` tasks each run the commit stage in a loop until nothing is left.
fn child_stream(dir: &Path) {
    let rows = env_usize(ENV_STREAM_ROWS, DEFAULT_STREAM_ROWS) as i64;
    let committers = env_usize(ENV_COMMITTERS, DEFAULT_COMMITTERS).max(1);
    let (sets, _) = stream_changes(rows);
    let batches: Vec<_> = sets.iter().map(|s| change_batch(s)).collect();
    let dv = std::env::var(ENV_DV).is_ok_and(|v| v == "1");
    let cfg = config(dir, if dv { DV_CONFIG } else { "" });
    let st = Arc::new(stores(&cfg));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (secs, stats, staged_secs) = rt.block_on(async move {
        let done = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let producer = {
            let (cfg, st, done) = (cfg.clone(), st.clone(), done.clone());
            tokio::spawn(async move {
                for (i, b) in batches.iter().enumerate() {
                    stage(&cfg, &st, b, &format!("20240601-12{i:07}.parquet")).await;
                }
                done.store(true, Ordering::SeqCst);
                started.elapsed().as_secs_f64()
            })
        };
        let mut handles = Vec::new();
        for _ in 0..committers {
            let (cfg, st, done) = (cfg.clone(), st.clone(), done.clone());
            handles.push(tokio::spawn(async move {
                let mut s = StreamStats::default();
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    let r = CommitChangesBuilder::new(cfg.clone(), &st)
                        .with_table(SOURCE, SCHEMA, TABLE)
                        .await;
                    match r {
                        Ok(m) if m.change_sets > 0 => {
                            s.commits += 1;
                            s.change_sets += m.change_sets as u64;
                            s.retries += u64::from(m.attempts.saturating_sub(1));
                            s.conflicts += u64::from(m.conflicts);
                            s.stale += m.rows_stale;
                        }
                        // Nothing pending, and nothing more will come.
                        Ok(_) if finished => return s,
                        Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                        // Out of attempts: the queue would redeliver; here the loop goes on.
                        Err(e) if e.is_retryable() => s.gave_up += 1,
                        Err(e) => panic!("commit failed: {e}"),
                    }
                }
            }));
        }
        let staged_secs = producer.await.unwrap();
        let mut total = StreamStats::default();
        for h in handles {
            let s = h.await.unwrap();
            total.commits += s.commits;
            total.change_sets += s.change_sets;
            total.retries += s.retries;
            total.conflicts += s.conflicts;
            total.gave_up += s.gave_up;
            total.stale += s.stale;
        }
        (started.elapsed().as_secs_f64(), total, staged_secs)
    });
    println!(
        "RESULT secs={secs:.6} staged_secs={staged_secs:.6} vmhwm_kib={} commits={} change_sets={} retries={} conflicts={} gave_up={} stale={}",
        peak_rss_kib().unwrap_or(0),
        stats.commits,
        stats.change_sets,
        stats.retries,
        stats.conflicts,
        stats.gave_up,
        stats.stale
    );
}

// ---------------------------------------------------------------------------------------------
// Parent.

struct Base {
    dir: PathBuf,
    version: u64,
    files: Vec<FileInfo>,
}

struct Bases {
    root: PathBuf,
    file_rows: usize,
    built: HashMap<usize, Base>,
}

impl Bases {
    fn get(&mut self, rt: &tokio::runtime::Runtime, rows: usize) -> &Base {
        if !self.built.contains_key(&rows) {
            let dir = self.root.join(format!("base-{rows}"));
            let secs = rt.block_on(build_base(&dir, rows as i64, self.file_rows as i64));
            let t = rt.block_on(open(&dir));
            let files = files(&t);
            let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
            let total: u64 = sizes.iter().sum();
            println!(
                "base table {} rows: {} data files, {:.1} MiB ({:.1}..{:.1} MiB per file, {} rows per file, key order), built in {:.1}s",
                group(rows as u64),
                files.len(),
                mib(total),
                mib(sizes.iter().copied().min().unwrap_or(0)),
                mib(sizes.iter().copied().max().unwrap_or(0)),
                group(self.file_rows.min(rows) as u64),
                secs
            );
            self.built.insert(
                rows,
                Base {
                    dir,
                    version: t.version().unwrap_or(0),
                    files,
                },
            );
        }
        &self.built[&rows]
    }
}

/// One competitor's apply.
#[derive(Debug, Clone)]
struct Applied {
    /// The best run's.
    secs: f64,
    all_secs: Vec<f64>,
    /// The highest of the runs.
    rss_kib: Option<u64>,
    log: LogDelta,
    ok: Result<(), String>,
    extra: String,
}

impl Default for Applied {
    fn default() -> Self {
        Applied {
            secs: f64::NAN,
            all_secs: Vec::new(),
            rss_kib: None,
            log: LogDelta::default(),
            ok: Err("not run".into()),
            extra: String::new(),
        }
    }
}

/// Runs of one apply as one result: FAILED if any failed, else the best time and the highest RSS.
fn combine(runs: Vec<Applied>) -> Applied {
    if let Some(failed) = runs.iter().find(|a| a.ok.is_err()) {
        return failed.clone();
    }
    let all_secs: Vec<f64> = runs.iter().map(|a| a.secs).collect();
    let rss_kib = runs.iter().filter_map(|a| a.rss_kib).max();
    let best = runs
        .into_iter()
        .min_by(|a, b| a.secs.total_cmp(&b.secs))
        .unwrap_or_default();
    Applied {
        all_secs,
        rss_kib,
        ..best
    }
}

fn runs_text(secs: &[f64]) -> String {
    secs.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join("/")
}

struct SizeResult {
    rows: usize,
    files: usize,
    touched_files: usize,
    touched_bytes: u64,
    d2d: Applied,
    /// The same commit, merge-on-read (deletion vectors).
    d2d_dv: Applied,
    py: Option<Applied>,
}

fn parent() {
    let sizes = env_list(ENV_ROWS, &DEFAULT_ROWS);
    let file_rows = env_usize(ENV_FILE_ROWS, DEFAULT_FILE_ROWS).max(1);
    let n_changes = env_usize(ENV_CHANGES, DEFAULT_CHANGES);
    let runs = env_usize(ENV_RUNS, DEFAULT_RUNS).max(1);
    let stream_rows = env_usize(ENV_STREAM_ROWS, DEFAULT_STREAM_ROWS);
    let bulk_rows = env_usize(ENV_BULK_ROWS, DEFAULT_BULK_ROWS);
    let python = find_python();
    let tmp = tempfile::Builder::new()
        .prefix("dms2delta-merge-bench-")
        .tempdir()
        .expect("a temporary folder");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run_started = Instant::now();

    println!("dms2delta merge bench (commit stage) on {}", machine());
    println!(
        "batch: {} changes = {} updates of random existing keys, {} inserts of new keys, {} deletes of random existing keys (a key may change more than once); 8 data columns (int64 key, 3 strings, decimal(12,2), int32, timestamp, bool)",
        group(n_changes as u64),
        group((n_changes * 6 / 10) as u64),
        group((n_changes * 2 / 10) as u64),
        group((n_changes - n_changes * 6 / 10 - n_changes * 2 / 10) as u64)
    );
    match &python {
        Ok((p, v)) => println!("python baseline: {} ({v}), bench/python_merge.py", p.display()),
        Err(why) => println!("python baseline: SKIPPED ({why})"),
    }
    println!(
        "each apply: {runs} runs, each on a fresh copy of the base table, in its own process; best time compared, peak RSS = highest of the runs"
    );
    println!();

    let mut bases = Bases {
        root: tmp.path().to_path_buf(),
        file_rows,
        built: HashMap::new(),
    };
    let mut results = Vec::new();
    for &rows in &sizes {
        results.push(merge_case(
            &rt,
            &mut bases,
            tmp.path(),
            rows,
            n_changes,
            runs,
            python.as_ref().ok(),
        ));
        println!();
    }

    print_merge_table(&results);

    let mut streams = Vec::new();
    let mut bulks = Vec::new();
    for dv in [false, true] {
        if stream_rows > 0 {
            println!();
            streams.push(stream_case(&rt, &mut bases, tmp.path(), stream_rows, runs, dv));
        }
    }
    for dv in [false, true] {
        if bulk_rows > 0 {
            println!();
            bulks.push((dv, bulk_case(&rt, &mut bases, tmp.path(), bulk_rows, dv)));
        }
    }

    println!();
    println!("targets:");
    match results
        .iter()
        .find(|r| r.rows == TARGET_SPEEDUP_ROWS)
        .or_else(|| results.iter().max_by_key(|r| r.rows))
    {
        Some(r) => {
            let note = if r.rows == TARGET_SPEEDUP_ROWS {
                String::new()
            } else {
                format!(
                    " (measured on {} rows; the target is for {})",
                    group(r.rows as u64),
                    group(TARGET_SPEEDUP_ROWS as u64)
                )
            };
            for (mode, a) in [("copy-on-write", &r.d2d), ("deletion vectors", &r.d2d_dv)] {
                match (&a.ok, r.py.as_ref()) {
                    (Ok(()), Some(py)) if py.ok.is_ok() => {
                        let x = py.secs / a.secs;
                        println!(
                            "target: dms2delta ({mode}) >= {TARGET_SPEEDUP:.0}x faster than the Python approach on {} rows: {x:.2}x {}{note}",
                            group(r.rows as u64),
                            verdict(x >= TARGET_SPEEDUP)
                        );
                    }
                    (Err(e), _) => println!("target: speed-up vs Python ({mode}): not measured, dms2delta FAILED: {e}"),
                    (_, Some(py)) => println!(
                        "target: speed-up vs Python: not measured, Python FAILED: {}",
                        py.ok.as_ref().err().cloned().unwrap_or_default()
                    ),
                    (_, None) => println!("target: speed-up vs Python: not measured (Python baseline skipped)"),
                }
            }
        }
        None => println!("target: speed-up vs Python: no table size measured"),
    }
    for r in &results {
        for (mode, a) in [("copy-on-write", &r.d2d), ("deletion vectors", &r.d2d_dv)] {
            if a.ok.is_ok() {
                let x = a.log.bytes_removed as f64 / r.touched_bytes.max(1) as f64;
                println!(
                    "target: bytes rewritten <= {TARGET_REWRITE:.1}x the data files holding a touched key ({} rows, {mode}): {:.1} MiB / {:.1} MiB = {x:.2}x {}",
                    group(r.rows as u64),
                    mib(a.log.bytes_removed),
                    mib(r.touched_bytes),
                    verdict(x <= TARGET_REWRITE)
                );
            }
        }
    }
    for (dv, bulk) in &bulks {
        let Some((rows, a)) = bulk else { continue };
        match (&a.ok, a.rss_kib) {
            (Ok(()), Some(k)) => {
                let m = k as f64 / 1024.0;
                println!(
                    "target: peak RSS of one {}-change set fits a 3 GiB Lambda ({LAMBDA_MIB:.0} MiB), {}: {m:.0} MiB {}",
                    group(*rows as u64),
                    mode_name(*dv),
                    verdict(m < LAMBDA_MIB)
                );
                println!(
                    "check (not an issue target): it also fits the commit function's default memory (template.yaml CommitMemorySize {COMMIT_LAMBDA_MB:.0} MB): {m:.0} MiB = {:.0} MB {}",
                    m * 1.048_576,
                    verdict(m * 1.048_576 < COMMIT_LAMBDA_MB)
                );
            }
            (Err(e), _) => println!("target: {}-change set peak RSS: FAILED: {e}", group(*rows as u64)),
            (_, None) => println!("target: peak RSS: not measurable here (no /proc)"),
        }
    }
    for line in streams.iter().flatten() {
        println!("{line}");
    }
    if sizes != DEFAULT_ROWS {
        println!(
            "note: {ENV_ROWS}={}; the issue's table sizes are 1,000,000 and 10,000,000",
            sizes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")
        );
    }
    println!("whole run: {:.0}s", run_started.elapsed().as_secs_f64());
}

fn merge_case(
    rt: &tokio::runtime::Runtime,
    bases: &mut Bases,
    tmp: &Path,
    rows: usize,
    n_changes: usize,
    runs: usize,
    python: Option<&(PathBuf, String)>,
) -> SizeResult {
    let base = bases.get(rt, rows);
    let (base_dir, base_version, base_files) = (base.dir.clone(), base.version, base.files.clone());
    let mut g = ChangeGen::new(seed() ^ rows as u64, rows as i64);
    let changes = g.batch(n_changes);
    let expected = g.model.expected(rows as i64);
    let batch = change_batch(&changes);

    // Which data files hold a key the batch updates or deletes (keys are contiguous, so a
    // file's id range from its stats is exactly the keys it holds).
    let mut touched: Vec<i64> = g
        .model
        .finals
        .keys()
        .copied()
        .filter(|k| (1..=rows as i64).contains(k))
        .collect();
    touched.sort_unstable();
    let holds = |f: &FileInfo| match (f.min_id, f.max_id) {
        (Some(lo), Some(hi)) => {
            let i = touched.partition_point(|k| *k < lo);
            i < touched.len() && touched[i] <= hi
        }
        _ => true,
    };
    let touched_files: Vec<&FileInfo> = base_files.iter().filter(|f| holds(f)).collect();
    let touched_bytes: u64 = touched_files.iter().map(|f| f.size).sum();
    println!(
        "{} rows: the batch touches {} existing keys, held by {} of {} data files ({:.1} MiB of {:.1} MiB)",
        group(rows as u64),
        group(touched.len() as u64),
        touched_files.len(),
        base_files.len(),
        mib(touched_bytes),
        mib(base_files.iter().map(|f| f.size).sum())
    );

    // The change set file the Python script reads: the very object decode would stage.
    let changes_file = tmp.join(format!("changes-{rows}.parquet"));
    {
        let scratch = tmp.join(format!("changes-{rows}"));
        let cfg = config(&scratch, "");
        let staged = rt.block_on(stage(&cfg, &stores(&cfg), &batch, "20240601-120000000.parquet"));
        std::fs::copy(&staged, &changes_file).unwrap();
        let _ = std::fs::remove_dir_all(&scratch);
    }
    let mut d2d_runs = Vec::new();
    let mut dv_runs = Vec::new();
    let mut py_runs = Vec::new();
    for _ in 0..runs {
        for (dv, out) in [(false, &mut d2d_runs), (true, &mut dv_runs)] {
            out.push(apply_dms2delta(
                rt,
                &base_dir,
                base_version,
                &batch,
                &expected,
                tmp,
                rows,
                dv,
            ));
        }
        if let Some((exe, _)) = python {
            py_runs.push(apply_python(
                rt,
                exe,
                &base_dir,
                base_version,
                &changes_file,
                &expected,
                tmp,
                rows,
            ));
        }
    }
    let d2d = combine(d2d_runs);
    let d2d_dv = combine(dv_runs);
    let py = python.map(|_| combine(py_runs));

    println!("  dms2delta: {}", d2d.extra);
    println!("  dms2delta, deletion vectors: {}", d2d_dv.extra);
    if let Some(p) = &py {
        println!("  python:    {}", p.extra);
    }
    println!("  expected:  {expected}");
    SizeResult {
        rows,
        files: base_files.len(),
        touched_files: touched_files.len(),
        touched_bytes,
        d2d,
        d2d_dv,
        py,
    }
}

/// dms2delta: its own copy of the table, the batch staged as decode stages it, one commit.
/// With `dv`, merge-on-read: the copy has deletion vectors enabled first (once per table in
/// production, so not timed).
#[allow(clippy::too_many_arguments)]
fn apply_dms2delta(
    rt: &tokio::runtime::Runtime,
    base_dir: &Path,
    base_version: u64,
    batch: &arrow::array::RecordBatch,
    expected: &Checksum,
    tmp: &Path,
    rows: usize,
    dv: bool,
) -> Applied {
    let root = tmp.join(format!("run-{rows}-dms2delta"));
    let table = table_dir(&root);
    copy_dir(base_dir, &table);
    let base_version = if dv { enable_dv(rt, &table) } else { base_version };
    let cfg = config(&root, if dv { DV_CONFIG } else { "" });
    rt.block_on(stage(&cfg, &stores(&cfg), batch, "20240601-120000000.parquet"));
    let envs = [(ENV_DV, if dv { "1" } else { "0" }.to_string())];
    let a = match run_child("apply", &root, &envs) {
        Ok(r) => {
            let got = rt.block_on(checksum(&table));
            Applied {
                secs: get(&r, "secs").unwrap_or(f64::NAN),
                rss_kib: get(&r, "vmhwm_kib"),
                log: log_delta(&table, base_version),
                ok: check(&got, expected),
                extra: format!(
                    "rows_source={} inserted={} updated={} deleted={} stale={} tombstones={} attempts={} tombstone table {:.2} MiB; rows copied {}, files given a deletion vector {} ({} rows), commit {} ms of which MERGE scan {} ms, rewrite {} ms",
                    r["rows_source"],
                    r["inserted"],
                    r["updated"],
                    r["deleted"],
                    r["stale"],
                    r["tombstones"],
                    r["attempts"],
                    mib(dir_bytes(&root.join("lake/_dms2delta"))),
                    r["rows_copied"],
                    r["dv_files"],
                    r["dv_rows"],
                    r["duration_ms"],
                    r["merge_scan_ms"],
                    r["merge_rewrite_ms"]
                ),
                ..Default::default()
            }
        }
        Err(e) => Applied {
            ok: Err(e),
            ..Default::default()
        },
    };
    let _ = std::fs::remove_dir_all(&root);
    a
}

/// Turns deletion vectors on for a table copy (once per table in production, so never timed);
/// returns the version that did it.
fn enable_dv(rt: &tokio::runtime::Runtime, table: &Path) -> u64 {
    rt.block_on(async {
        let t = open(table)
            .await
            .set_tbl_properties()
            .with_properties(HashMap::from([(
                "delta.enableDeletionVectors".to_string(),
                "true".to_string(),
            )]))
            .await
            .unwrap();
        t.version().unwrap() as u64
    })
}

fn mode_name(dv: bool) -> &'static str {
    if dv {
        "deletion vectors"
    } else {
        "copy-on-write"
    }
}

/// Python: its own copy, the same change set file.
#[allow(clippy::too_many_arguments)]
fn apply_python(
    rt: &tokio::runtime::Runtime,
    exe: &Path,
    base_dir: &Path,
    base_version: u64,
    changes_file: &Path,
    expected: &Checksum,
    tmp: &Path,
    rows: usize,
) -> Applied {
    let table = tmp.join(format!("run-{rows}-python"));
    copy_dir(base_dir, &table);
    let a = match run_python(exe, &table, changes_file) {
        Ok((secs, rss, wall, extra)) => {
            let got = rt.block_on(checksum(&table));
            Applied {
                secs,
                rss_kib: rss,
                log: log_delta(&table, base_version),
                ok: check(&got, expected),
                extra: format!("{extra}; process wall time {wall:.2}s"),
                ..Default::default()
            }
        }
        Err(e) => Applied {
            ok: Err(e),
            ..Default::default()
        },
    };
    let _ = std::fs::remove_dir_all(&table);
    a
}

fn check(got: &Checksum, want: &Checksum) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("table holds {got}, expected {want}"))
    }
}

fn print_merge_table(results: &[SizeResult]) {
    println!(
        "{:<30} {:>11} {:>9} {:>16} {:>13} {:>8} {:>11} {:>12} {:>10} {:>16} {:>10}",
        "apply the batch",
        "table rows",
        "best s",
        "runs s",
        "peak RSS MiB",
        "commits",
        "files -/+/dv",
        "MiB removed",
        "MiB added",
        "removed/touched",
        "vs python"
    );
    for r in results {
        let mut lines: Vec<(&str, &Applied, bool)> = vec![
            ("dms2delta commit (1 MERGE)", &r.d2d, false),
            ("dms2delta deletion vectors", &r.d2d_dv, false),
        ];
        if let Some(p) = &r.py {
            lines.push(("python deltalake (2 merges)", p, true));
        }
        for (label, a, is_python) in lines {
            match &a.ok {
                Ok(()) => {
                    let vs = match &r.py {
                        _ if is_python => "baseline".into(),
                        Some(p) if p.ok.is_ok() => format!("{:.2}x", p.secs / a.secs),
                        _ => "-".into(),
                    };
                    println!(
                        "{:<30} {:>11} {:>9.2} {:>16} {:>13} {:>8} {:>11} {:>12.1} {:>10.1} {:>15.2}x {:>10}",
                        label,
                        group(r.rows as u64),
                        a.secs,
                        runs_text(&a.all_secs),
                        rss_text(a.rss_kib),
                        a.log.versions,
                        format!("{}/{}/{}", a.log.files_removed, a.log.files_added, a.log.files_marked),
                        mib(a.log.bytes_removed),
                        mib(a.log.bytes_added),
                        a.log.bytes_removed as f64 / r.touched_bytes.max(1) as f64,
                        vs
                    );
                }
                Err(e) => println!("{:<30} {:>11} FAILED: {e}", label, group(r.rows as u64)),
            }
        }
        println!(
            "{:<30} {:>11} data files holding a touched key: {} of {}, {:.1} MiB",
            "",
            "",
            r.touched_files,
            r.files,
            mib(r.touched_bytes)
        );
    }
    println!("(vs python: the Python approach's best wall time divided by this line's; removed/touched: bytes of data files the apply removed, i.e. rewrote, over the bytes of the files that hold a touched key; files -/+/dv: data files removed, added, and given a deletion vector (kept, not rewritten); commits, files and MiB are the best run's)");
}

/// Throughput: returns the line for the summary.
fn stream_case(
    rt: &tokio::runtime::Runtime,
    bases: &mut Bases,
    tmp: &Path,
    rows: usize,
    runs: usize,
    dv: bool,
) -> Option<String> {
    let base = bases.get(rt, rows);
    let base_dir = base.dir.clone();
    let committers = env_usize(ENV_COMMITTERS, DEFAULT_COMMITTERS).max(1);
    let (sets, model) = stream_changes(rows as i64);
    let total: usize = sets.iter().map(|s| s.len()).sum();
    let expected = model.expected(rows as i64);
    println!(
        "throughput ({}): {} change sets of {} changes (60/20/20 updates/inserts/deletes, random keys) staged one after another while {committers} committers run the commit stage in a loop on one {}-row table (default commit settings: up to 64 change sets per commit, 12 attempts, 50..5000 ms jittered backoff); {runs} runs, each from a fresh copy",
        mode_name(dv),
        sets.len(),
        sets.first().map(|s| s.len()).unwrap_or(0),
        group(rows as u64)
    );
    println!(
        "{:<5} {:>9} {:>10} {:>8} {:>15} {:>8} {:>10} {:>9} {:>12} {:>13} {:>9}",
        "run",
        "wall s",
        "changes/s",
        "commits",
        "sets per commit",
        "retries",
        "conflicts",
        "gave up",
        "stale rows",
        "peak RSS MiB",
        "check"
    );
    let envs = [
        (ENV_STREAM_ROWS, rows.to_string()),
        (ENV_DV, if dv { "1" } else { "0" }.to_string()),
    ];
    let mut rates = Vec::new();
    let mut summary: Option<String> = None;
    for run in 1..=runs {
        let root = tmp.join("stream");
        copy_dir(&base_dir, &table_dir(&root));
        if dv {
            enable_dv(rt, &table_dir(&root));
        }
        match run_child("stream", &root, &envs) {
            Ok(r) => {
                let got = rt.block_on(checksum(&table_dir(&root)));
                let secs: f64 = get(&r, "secs").unwrap_or(f64::NAN);
                let ok = check(&got, &expected);
                println!(
                    "{:<5} {:>9.2} {:>10.0} {:>8} {:>15.1} {:>8} {:>10} {:>9} {:>12} {:>13} {:>9}",
                    run,
                    secs,
                    total as f64 / secs,
                    r["commits"],
                    get::<f64>(&r, "change_sets").unwrap_or(0.0) / get::<f64>(&r, "commits").unwrap_or(1.0).max(1.0),
                    r["retries"],
                    r["conflicts"],
                    r["gave_up"],
                    r["stale"],
                    rss_text(get(&r, "vmhwm_kib")),
                    if ok.is_ok() { "OK" } else { "FAILED" }
                );
                match ok {
                    Ok(()) => rates.push((total as f64 / secs, r["retries"].clone())),
                    Err(e) => summary = Some(format!("throughput: table check FAILED in run {run}: {e}")),
                }
            }
            Err(e) => {
                println!("{run:<5} FAILED: {e}");
                summary = Some(format!("throughput: run {run} FAILED: {e}"));
            }
        }
        let _ = std::fs::remove_dir_all(&root);
    }
    println!(
        "(retries: attempts beyond the first, summed over all commits; conflicts: commit conflicts retried; gave up: commits out of attempts, which the queue would redeliver; stale rows: changes a retrying commit found already applied)"
    );
    if summary.is_none() {
        let best = rates.iter().map(|r| r.0).fold(f64::NAN, f64::max);
        summary = Some(format!(
            "throughput, {} ({} changes in {} change sets of {}, {committers} concurrent committers, {}-row table): best {best:.0} changes/s (runs: {}); commit retries per run: {}; final table checked OK in every run",
            mode_name(dv),
            group(total as u64),
            sets.len(),
            sets.first().map(|s| s.len()).unwrap_or(0),
            group(rows as u64),
            rates.iter().map(|r| format!("{:.0}", r.0)).collect::<Vec<_>>().join("/"),
            rates.iter().map(|r| r.1.clone()).collect::<Vec<_>>().join("/")
        ));
    }
    summary
}

/// One change set updating every row of a `rows`-row table.
fn bulk_case(
    rt: &tokio::runtime::Runtime,
    bases: &mut Bases,
    tmp: &Path,
    rows: usize,
    dv: bool,
) -> Option<(usize, Applied)> {
    let base = bases.get(rt, rows);
    let (base_dir, base_version) = (base.dir.clone(), base.version);
    let root = tmp.join("bulk");
    copy_dir(&base_dir, &table_dir(&root));
    let base_version = if dv {
        enable_dv(rt, &table_dir(&root))
    } else {
        base_version
    };
    let changes: Vec<Change> = (1..=rows as i64)
        .map(|id| Change {
            op: "U",
            id,
            n: id as u64,
        })
        .collect();
    let mut model = Model::default();
    for c in &changes {
        model
            .finals
            .insert(c.id, Some((change_row("U", c.id, c.n).quantity, true)));
    }
    let expected = model.expected(rows as i64);
    let cfg = config(&root, if dv { DV_CONFIG } else { "" });
    let staged = rt.block_on(stage(
        &cfg,
        &stores(&cfg),
        &change_batch(&changes),
        "20240601-130000000.parquet",
    ));
    drop(changes);
    let staged_bytes = std::fs::metadata(&staged).map(|m| m.len()).unwrap_or(0);
    let envs = [(ENV_DV, if dv { "1" } else { "0" }.to_string())];
    let a = match run_child("apply", &root, &envs) {
        Ok(r) => {
            let got = rt.block_on(checksum(&table_dir(&root)));
            Applied {
                secs: get(&r, "secs").unwrap_or(f64::NAN),
                rss_kib: get(&r, "vmhwm_kib"),
                log: log_delta(&table_dir(&root), base_version),
                ok: check(&got, &expected),
                ..Default::default()
            }
        }
        Err(e) => Applied {
            ok: Err(e),
            ..Default::default()
        },
    };
    match &a.ok {
        Ok(()) => println!(
            "bulk update ({}): one change set of {} updates ({:.1} MiB staged) applied to a {}-row table in {:.1}s, peak RSS {} MiB; rewrote {:.1} MiB; table check OK",
            mode_name(dv),
            group(rows as u64),
            mib(staged_bytes),
            group(rows as u64),
            a.secs,
            rss_text(a.rss_kib),
            mib(a.log.bytes_removed)
        ),
        Err(e) => println!("bulk update ({}) of {} rows: FAILED: {e}", mode_name(dv), group(rows as u64)),
    }
    let _ = std::fs::remove_dir_all(&root);
    Some((rows, a))
}

// ---------------------------------------------------------------------------------------------
// Python.

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python to run the baseline with, and its package versions.
fn find_python() -> Result<(PathBuf, String), String> {
    if std::env::var("DMS2DELTA_SKIP_PYTHON").is_ok_and(|v| v == "1") {
        return Err("DMS2DELTA_SKIP_PYTHON=1".into());
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("DMS2DELTA_PYTHON") {
        candidates.push(p.into());
    } else {
        if let Ok(home) = std::env::var("HOME") {
            candidates.push(Path::new(&home).join(".cache/dms2delta-venv/bin/python"));
        }
        candidates.push(repo().join(".venv/bin/python"));
        candidates.push("python3".into());
    }
    let probe = "import deltalake, duckdb, pyarrow; print(f'deltalake {deltalake.__version__}, duckdb {duckdb.__version__}, pyarrow {pyarrow.__version__}')";
    for c in &candidates {
        if let Ok(out) = Command::new(c).args(["-c", probe]).output() {
            if out.status.success() {
                return Ok((c.clone(), String::from_utf8_lossy(&out.stdout).trim().to_string()));
            }
        }
    }
    Err(format!(
        "no Python with deltalake, duckdb and pyarrow among {}; set DMS2DELTA_PYTHON",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// (apply seconds, peak RSS KiB, process wall seconds, what it reported).
fn run_python(exe: &Path, table: &Path, changes: &Path) -> Result<(f64, Option<u64>, f64, String), String> {
    let started = Instant::now();
    let out = Command::new(exe)
        .arg(repo().join("bench/python_merge.py"))
        .arg(table)
        .arg(changes)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let wall = started.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "python_merge.py failed ({}): {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 1500)
        ));
    }
    let r = parse_result(&stdout).ok_or_else(|| format!("python_merge.py printed no RESULT: {stdout}"))?;
    Ok((
        get(&r, "secs").unwrap_or(f64::NAN),
        get(&r, "maxrss_kib"),
        wall,
        format!("upserts={} deletes={}", r["upserts"], r["deletes"]),
    ))
}
