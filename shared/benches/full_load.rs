//! A first full load in random key order, one commit per LOAD file as the deployed functions
//! make them (issue #18, goal 2): does the last LOAD file cost what the first did, and how does
//! the whole load compare with the Python recipe's plain append of the same files, measured in
//! the same run?
//!
//! ```sh
//! cargo bench -p dms2delta --features delta --bench full_load
//! DMS2DELTA_BENCH_FULL_LOAD=5000000:20 cargo bench -p dms2delta --features delta --bench full_load
//! ```
//!
//! Then the memory of one pass over the same files (the CLI's `run`: every file decoded, then
//! the pending change sets committed): peak RSS of a child process over half the files and over
//! all of them, once with a commit's byte budget (`commit.max_staged_bytes`, set small here so
//! that it binds) and once without one (the budget set beyond what is staged, as before it
//! existed). Bounded by the batch means the two peaks with the budget match. The children run
//! with `MALLOC_ARENA_MAX=2`, as `template.yaml` deploys the functions, and once with glibc's
//! default for comparison.
//!
//! Knobs: `DMS2DELTA_BENCH_FULL_LOAD` (`rows:files`, default `2000000:10`),
//! `DMS2DELTA_BENCH_PYTHON` (a python with `deltalake` and `pyarrow`; default the bench venv
//! that `bench/run.sh` sets up). Keys are a random permutation spread over the files, as
//! PostgreSQL's heap order or a parallel load leaves them. After the load, the table must hold
//! every key once (checked by counting distinct keys).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "util/mod.rs"]
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::parquet::arrow::ArrowWriter;
use dms2delta::config::Config;
use dms2delta::failpoint::Failpoints;
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::pipeline::Pipeline;
use dms2delta::storage::Stores;

fn python() -> PathBuf {
    std::env::var_os("DMS2DELTA_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/dms2delta-bench-venv/bin/python")
        })
}

/// Writes `files` LOAD files holding the keys `1..=rows` in random order.
fn write_load_files(dir: &Path, rows: usize, files: usize) -> Vec<String> {
    let mut keys: Vec<i64> = (1..=rows as i64).collect();
    fastrand::Rng::with_seed(18).shuffle(&mut keys);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Int64, true),
        Field::new("note", DataType::Utf8, true),
    ]));
    let per = rows.div_ceil(files);
    let folder = dir.join("bucket/app/t");
    std::fs::create_dir_all(&folder).unwrap();
    let mut names = Vec::new();
    for (i, chunk) in keys.chunks(per).enumerate() {
        let name = format!("app/t/LOAD{:08}.parquet", i + 1);
        let ids = Int64Array::from(chunk.to_vec());
        let names_col = StringArray::from_iter_values(chunk.iter().map(|k| format!("customer-{k}")));
        let amount = Int64Array::from_iter_values(chunk.iter().map(|k| k * 7 % 100_000));
        let note = StringArray::from_iter_values(chunk.iter().map(|k| format!("n{}", k % 1000)));
        let cols: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(names_col), Arc::new(amount), Arc::new(note)];
        let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
        let f = std::fs::File::create(dir.join("bucket").join(&name)).unwrap();
        let mut w = ArrowWriter::try_new(f, schema.clone(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        names.push(name);
    }
    names
}

fn pipeline(dir: &Path, dv: bool) -> Pipeline {
    pipeline_with(dir, if dv { "commit:\n  deletion_vectors: true\n" } else { "" })
}

/// `commit`: a YAML `commit:` block, or nothing.
fn pipeline_with(dir: &Path, commit: &str) -> Pipeline {
    let d = dir.display();
    let text = format!(
        "lake: {d}/lake\nstaging: {d}/staged\nquarantine: {d}/quarantine\nstorage:\n  buckets:\n    dms: {d}/bucket\n{commit}sources:\n  - name: pg\n    bucket: dms\n    tables:\n      - schema: app\n        table: t\n        keys: [id]\n"
    );
    let config = Arc::new(Config::from_text(&text).unwrap());
    let stores = Stores::new(config.config.storage.clone());
    Pipeline::new(config, Arc::new(stores))
}

struct Run {
    decode_s: Vec<f64>,
    commit_s: Vec<f64>,
    total_s: f64,
}

async fn run_dms2delta(dir: &Path, files: &[String], dv: bool) -> Run {
    let p = pipeline(dir, dv);
    let (mut decode_s, mut commit_s) = (Vec::new(), Vec::new());
    let all = Instant::now();
    for f in files {
        let t = Instant::now();
        let out = p
            .decode("dms", f, Some("etag".into()), Failpoints::default())
            .await
            .unwrap();
        assert!(matches!(out, DecodeOutcome::Staged(_)), "{f}: {out:?}");
        decode_s.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let m = p.commit_all().await.unwrap();
        commit_s.push(t.elapsed().as_secs_f64());
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(m[0].rows_stale, 0, "{:?}", m[0]);
    }
    Run {
        decode_s,
        commit_s,
        total_s: all.elapsed().as_secs_f64(),
    }
}

/// The Python recipe's full load: each LOAD file appended as it comes (it cannot be wrong
/// about a first load's keys only because it never looks).
fn run_python(dir: &Path, files: &[String]) -> Option<(Vec<f64>, f64)> {
    let py = python();
    if !py.exists() {
        return None;
    }
    let script = r#"
import json, sys, time
import pyarrow.parquet as pq
from deltalake import write_deltalake
root, target = sys.argv[1], sys.argv[2]
times = []
start = time.perf_counter()
for name in sys.argv[3:]:
    t = time.perf_counter()
    write_deltalake(target, pq.read_table(f"{root}/{name}"), mode="append")
    times.append(time.perf_counter() - t)
print(json.dumps({"files": times, "total": time.perf_counter() - start}))
"#;
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .arg(dir.join("bucket"))
        .arg(dir.join("python-lake"))
        .args(files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    Some((files, v["total"].as_f64().unwrap()))
}

async fn distinct_keys(dir: &Path) -> usize {
    let p = pipeline(dir, false);
    let spec = p.config.table_by_target("pg", "app", "t").unwrap();
    let batches = p.read_table(&p.table_location(&spec)).await.unwrap();
    let mut ids: Vec<i64> = Vec::new();
    for b in &batches {
        let c = arrow::compute::cast(b.column(b.schema().index_of("id").unwrap()), &DataType::Int64).unwrap();
        ids.extend(
            c.as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .iter()
                .copied(),
        );
    }
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicate keys in the table");
    n
}

/// A commit's byte budget that binds on this bench's change sets, and one no pass reaches.
const SMALL_BUDGET: u64 = 8 * 1024 * 1024;
const NO_BUDGET: u64 = u64::MAX;
const ENV_ONE_PASS: &str = "DMS2DELTA_BENCH_ONE_PASS";

/// Child process: one pass (decode every file, then commit what is pending) over the first
/// `n` files linked from `data`, with `budget` as `commit.max_staged_bytes`. Prints
/// `ONE_PASS <commits> <peak RSS KiB>`.
fn one_pass_child(spec: &str) {
    let mut parts = spec.split(':');
    let mut next = || parts.next().unwrap().to_string();
    let (data, n, budget) = (PathBuf::from(next()), next().parse::<usize>().unwrap(), next());
    let names: Vec<String> = next().split(',').take(n).map(str::to_string).collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bucket")).unwrap();
    std::os::unix::fs::symlink(data.join("bucket/app"), dir.path().join("bucket/app")).unwrap();
    let p = pipeline_with(dir.path(), &format!("commit:\n  max_staged_bytes: {budget}\n"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let commits = rt.block_on(async {
        for f in &names {
            let out = p
                .decode("dms", f, Some("etag".into()), Failpoints::default())
                .await
                .unwrap();
            assert!(matches!(out, DecodeOutcome::Staged(_)), "{f}: {out:?}");
        }
        p.commit_all().await.unwrap().len()
    });
    println!("ONE_PASS {commits} {}", util::peak_rss_kib().unwrap_or(0));
}

/// Runs [`one_pass_child`] in a child process: (commits, peak RSS MiB). `arenas`: glibc's
/// `MALLOC_ARENA_MAX` for the child (`None`: glibc's default, 8 per core).
fn one_pass(data: &Path, names: &[String], n: usize, budget: u64, arenas: Option<&str>) -> (usize, f64) {
    let exe = std::env::current_exe().unwrap();
    let spec = format!("{}:{n}:{budget}:{}", data.display(), names.join(","));
    let mut cmd = Command::new(exe);
    cmd.env(ENV_ONE_PASS, spec).env_remove("MALLOC_ARENA_MAX");
    if let Some(a) = arenas {
        cmd.env("MALLOC_ARENA_MAX", a);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("ONE_PASS ")).unwrap();
    let (commits, kib) = line.split_once(' ').unwrap();
    (commits.parse().unwrap(), kib.parse::<f64>().unwrap() / 1024.0)
}

fn main() {
    if let Ok(spec) = std::env::var(ENV_ONE_PASS) {
        one_pass_child(&spec);
        return;
    }
    let spec = std::env::var("DMS2DELTA_BENCH_FULL_LOAD").unwrap_or_else(|_| "2000000:10".into());
    let (rows, files): (usize, usize) = match spec.split_once(':') {
        Some((r, f)) => (r.replace('_', "").parse().unwrap(), f.parse().unwrap()),
        None => panic!("DMS2DELTA_BENCH_FULL_LOAD is rows:files, not {spec}"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let names = write_load_files(data.path(), rows, files);
    println!(
        "== full load: {} rows in {files} LOAD files (Parquet), keys in random order, one commit per file",
        util::group(rows as u64)
    );
    let baseline = run_python(data.path(), &names);
    for dv in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bucket")).unwrap();
        // The same files, linked into this run's bucket.
        std::os::unix::fs::symlink(data.path().join("bucket/app"), dir.path().join("bucket/app")).unwrap();
        let r = rt.block_on(run_dms2delta(dir.path(), &names, dv));
        let n = rt.block_on(distinct_keys(dir.path()));
        assert_eq!(n, rows, "the table must hold every key once");
        let (first, last) = (r.commit_s[0], r.commit_s[r.commit_s.len() - 1]);
        // The first commit also creates the table: compare the last with the second too.
        let second = r.commit_s.get(1).copied().unwrap_or(first);
        println!(
            "dms2delta ({}): commit first {first:.3} s, second {second:.3} s, last {last:.3} s -> last/second {:.2}x; \
             decode {:.2} s in all; total {:.2} s",
            if dv { "merge-on-read" } else { "copy-on-write" },
            last / second,
            r.decode_s.iter().sum::<f64>(),
            r.total_s,
        );
        if let Some((py_files, py_total)) = &baseline {
            println!(
                "  python append: first {:.3} s, last {:.3} s, total {py_total:.2} s -> dms2delta total / python total {:.2}x",
                py_files[0],
                py_files[py_files.len() - 1],
                r.total_s / py_total
            );
        }
    }
    if baseline.is_none() {
        println!(
            "(no python baseline: {} not found; bash bench/run.sh sets it up)",
            python().display()
        );
    }
    println!("one pass over the LOAD files (decode all, then commit what is pending), each in its own process:");
    let half = (files / 2).max(1);
    let mut peaks = Vec::new();
    // template.yaml gives the functions MALLOC_ARENA_MAX=2: with glibc's default of 8 arenas
    // per core, freed memory spread over many arenas keeps the peak creeping up commit after
    // commit although no commit holds more than its batch.
    for (label, budget, arenas) in [
        ("budget 8 MiB, MALLOC_ARENA_MAX=2", SMALL_BUDGET, Some("2")),
        ("budget 8 MiB, glibc default arenas", SMALL_BUDGET, None),
        ("no budget, MALLOC_ARENA_MAX=2", NO_BUDGET, Some("2")),
    ] {
        let (c1, m1) = one_pass(data.path(), &names, half, budget, arenas);
        let (c2, m2) = one_pass(data.path(), &names, files, budget, arenas);
        println!(
            "  {label:<36} {half:>3} files: {c1:>3} commits, peak RSS {m1:>7.0} MiB | {files:>3} files: {c2:>3} commits, \
             peak RSS {m2:>7.0} MiB -> {:.2}x",
            m2 / m1
        );
        peaks.push(m2 / m1);
    }
    let verdict = if peaks[0] <= 1.2 { "MET" } else { "MISSED" };
    println!(
        "  target: one-pass peak RSS bounded by the batch (twice the files, at most 1.2x the peak, budget 8 MiB, \
         MALLOC_ARENA_MAX=2 as deployed): {:.2}x {verdict}",
        peaks[0]
    );
    if let Some(kib) = util::peak_rss_kib() {
        println!("peak RSS of this process: {:.0} MiB", kib as f64 / 1024.0);
    }
}
