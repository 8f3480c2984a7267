//! dms2delta against what teams run today, on the same generated DMS output (issue #9).
//!
//! ```sh
//! bash bench/run.sh            # sets up the Python peers' venv, then runs this bench
//! ```
//!
//! For each workload (a history from the project's DMS simulator, written as DMS writes Parquet
//! with `AR_H_CHANGE_SEQ` and the timestamp column: a full load, then CDC files in order) four
//! pipelines run in turn, each in its own process so that its peak RSS is its own, and each
//! handling one file at a time as a function per S3 event would:
//!
//! - `dms2delta`: decode + commit in process (the library the Lambda functions wrap), one
//!   commit per file;
//! - `dms2delta_group`: the same with one commit per 10 files, as the commit queue's batches
//!   (BatchSize 10) group them under load;
//! - `dms2delta_dv`: `dms2delta` with `commit.deletion_vectors` on (merge-on-read: replaced
//!   rows are marked in deletion vectors instead of their files being rewritten);
//! - `python`: `bench/python_pipeline.py`, pyarrow + DuckDB window dedup + the `deltalake`
//!   package's merge and a delete pass (the Python Lambda recipe);
//! - `dms2delta_decode`: the decode stage alone;
//! - `dms2delta_phases`: the `dms2delta` run again with every request the Delta engine makes
//!   timestamped (a pass-through [`FaultyStore`]), to show where a per-file commit spends its
//!   time; kept apart so that the throughput lines carry no recording;
//! - `spark_decode`: `bench/spark_decode.py`, the Glue/PySpark window dedup in local mode, for
//!   the decode stage.
//!
//! Correctness first: both tables must equal the simulator's final source state, and the two
//! decode stages must produce the same deduplicated rows; a pipeline that does not is reported
//! as FAILED, whatever its speed. Results go to `bench/results/pipelines.json`; `bench/report.py`
//! then prints the table, the cost model, and draws `bench/results/pipelines.png`.
//!
//! Knobs: `DMS2DELTA_BENCH_WORKLOADS` (`keys:changes:max_file_changes,...`),
//! `DMS2DELTA_BENCH_PYTHON` (the venv's python), `DMS2DELTA_BENCH_SKIP_SPARK=1`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dms2delta::config::Config;
use dms2delta::failpoint::Failpoints;
use dms2delta::faults::{Call, FaultyStore};
use dms2delta::operations::commit::CommitMetrics;
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::pipeline::Pipeline;
use dms2delta::sim::{diff, rows_of, simulate, Format, SimOptions, Simulation, Value};
use dms2delta::storage::{Location, Stores};
use object_store::ObjectStore;
use serde_json::{json, Value as Json};

const ENV_CASE: &str = "DMS2DELTA_BENCH_CASE";
const ENV_ROOT: &str = "DMS2DELTA_BENCH_DIR";
const TABLE: &str = "oracle.app.t0";
const DATA_COLUMNS: [&str; 5] = ["id", "name", "amount", "active", "updated"];

struct Workload {
    name: String,
    opts: SimOptions,
}

fn workloads() -> Vec<Workload> {
    let spec = std::env::var("DMS2DELTA_BENCH_WORKLOADS")
        // File sizes averaging ~700, ~7,000 and ~70,000 changes: DMS writing one file a minute
        // at 1M, 10M and 100M changes a day (the volumes bench/report.py prices).
        .unwrap_or_else(|_| "10000:14000:1400,100000:140000:14000,500000:700000:140000".into());
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .enumerate()
        .map(|(i, w)| {
            let n: Vec<usize> = w
                .split(':')
                .map(|x| {
                    x.trim()
                        .replace('_', "")
                        .parse()
                        .unwrap_or_else(|_| panic!("bad workload {w}"))
                })
                .collect();
            assert_eq!(n.len(), 3, "a workload is keys:changes:max_file_changes, not {w}");
            Workload {
                name: ["small", "medium", "large", "xlarge"]
                    .get(i)
                    .map_or_else(|| format!("w{i}"), |s| s.to_string()),
                opts: SimOptions {
                    seed: 9 + i as u64,
                    tables: 1,
                    keys: n[0] as u32,
                    changes: n[1],
                    max_file_changes: n[2],
                    formats: vec![Format::Parquet],
                    ..SimOptions::default()
                },
            }
        })
        .collect()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    std::env::var_os("DMS2DELTA_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/dms2delta-bench-venv/bin/python")
        })
}

fn config_text(sim: &Simulation, root: &Path) -> String {
    let r = root.display();
    let data = root.parent().unwrap_or(root).join("data");
    sim.config(
        &format!("{r}/lake"),
        &format!("{r}/staged"),
        &format!("{r}/quarantine"),
        &data.display().to_string(),
    )
}

fn files(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join("../keys.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Children: one pipeline each, printing `RESULT {json}`.

fn child(case: &str, root: &Path) {
    let text = std::fs::read_to_string(root.join("config.yaml")).unwrap();
    let config = Arc::new(Config::from_text(&text).unwrap());
    let timeline: Timeline = Arc::default();
    let mut stores = Stores::new(config.config.storage.clone());
    if case == "dms2delta_phases" {
        let t = timeline.clone();
        stores = stores.with_delta_wrapper(Arc::new(move |inner| {
            let t = t.clone();
            Arc::new(FaultyStore::new(inner, move |call, path| {
                if let Ok(mut v) = t.lock() {
                    v.push((Instant::now(), call, path.to_string()));
                }
                false
            })) as Arc<dyn ObjectStore>
        }));
    }
    let pipeline = Pipeline::new(config.clone(), Arc::new(stores));
    let mut phases = PhaseTotals::default();
    let bucket = config.config.sources[0].bucket.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let keys = files(root);
    let mut latencies = Vec::new();
    let mut rows_in = 0u64;
    let mut rows_out = 0u64;
    // `dms2delta_group`: the deployed shape under load, where the commit queue's event source
    // hands one commit invocation up to GROUP change sets (BatchSize 10 in template.yaml); a
    // file's latency then runs from its decode to the commit that applied it.
    const GROUP: usize = 10;
    let mut wall = 0.0;
    rt.block_on(async {
        let mut waiting: Vec<Instant> = Vec::new();
        let run_started = Instant::now();
        for (i, key) in keys.iter().enumerate() {
            let started = Instant::now();
            let decode_ms = match pipeline
                .decode(&bucket, key, None, Failpoints::default())
                .await
                .unwrap()
            {
                DecodeOutcome::Staged(m) => {
                    rows_in += m.tables.iter().map(|t| t.rows_in).sum::<u64>();
                    rows_out += m.tables.iter().map(|t| t.rows_out).sum::<u64>();
                    m.duration_ms
                }
                other => panic!("{key}: {other:?}"),
            };
            match case {
                "dms2delta" | "dms2delta_dv" => {
                    pipeline.commit_all().await.unwrap();
                    latencies.push(started.elapsed().as_secs_f64());
                }
                "dms2delta_phases" => {
                    timeline.lock().unwrap().clear();
                    let commit_started = Instant::now();
                    let metrics = pipeline.commit_all().await.unwrap();
                    let commit_ended = Instant::now();
                    latencies.push(started.elapsed().as_secs_f64());
                    // The full load's file is not the per-file path being measured.
                    if !key.contains("LOAD") {
                        let requests = std::mem::take(&mut *timeline.lock().unwrap());
                        phases.add(decode_ms, &metrics, commit_started, commit_ended, &requests);
                    }
                }
                "dms2delta_group" => {
                    waiting.push(started);
                    if waiting.len() == GROUP || i + 1 == keys.len() {
                        pipeline.commit_all().await.unwrap();
                        latencies.extend(waiting.drain(..).map(|t| t.elapsed().as_secs_f64()));
                    }
                }
                _ => latencies.push(started.elapsed().as_secs_f64()),
            }
        }
        wall = run_started.elapsed().as_secs_f64();
    });
    // Latencies overlap when commits are grouped: the time spent is the run's.
    let secs: f64 = if case == "dms2delta_group" {
        wall
    } else {
        latencies.iter().sum()
    };
    // Deployed, a file is one decode invocation, plus one commit invocation per file or group.
    let invocations = match case {
        "dms2delta" | "dms2delta_dv" => 2 * keys.len(),
        "dms2delta_group" => keys.len() + keys.len().div_ceil(GROUP),
        _ => keys.len(),
    };
    let r = json!({"files": keys.len(), "changes": rows_in, "rows_out": rows_out, "secs": secs,
        "latencies": latencies, "invocations": invocations, "maxrss_kib": common::peak_rss_kib(),
        "phases": phases.to_json()});
    println!("RESULT {r}");
}

// ---------------------------------------------------------------------------------------------
// Where a per-file commit spends its time (`dms2delta_phases`).

/// Every request the Delta engine made during one commit: when, what kind, which object.
type Timeline = Arc<Mutex<Vec<(Instant, Call, String)>>>;

/// The phase of a commit a request belongs to, by the object it names and what came before it
/// in the same commit (`merged`: a data file was touched; `committed`: the table's log entry
/// was written).
fn phase_of(call: Call, path: &str, merged: bool, committed: bool) -> &'static str {
    if path.contains("_dms2delta/tombstones") {
        return "tombstones";
    }
    if path.contains("_delta_log") {
        return match call {
            Call::Put | Call::Copy => "commit write",
            _ if committed => "post-commit read-back",
            // delta-rs lists the log for a conflict check before it writes its entry.
            _ if merged => "commit write",
            _ => "log read",
        };
    }
    // Only the MERGE's data file writes are seen here: DataFusion reads the data files through
    // a store of its own session, not the wrapped one.
    MERGE
}

const MERGE: &str = "MERGE plan + execute";

/// The order phases are printed in: a commit runs them in this order.
const PHASES: [&str; 7] = [
    "staging read + dedup",
    "log read",
    "tombstones",
    MERGE,
    "commit write",
    "post-commit read-back",
    "staging clean-up",
];

#[derive(Default)]
struct PhaseTotals {
    files: u64,
    decode_ms: f64,
    commit_ms: f64,
    merge_scan_ms: f64,
    merge_rewrite_ms: f64,
    tombstones_written: u64,
    /// Per phase: milliseconds and requests, summed over files.
    spans: BTreeMap<&'static str, (f64, u64)>,
}

impl PhaseTotals {
    /// One commit, split at the requests that open each phase: a phase runs from its first
    /// request until the next phase's first request. What runs before the first Delta request
    /// is reading the staged change sets and deduplicating them; what runs after the last is
    /// deleting the applied change sets. The MERGE makes no request this store sees until it
    /// writes its data file, so it starts at the last request before that (the tombstones'
    /// last): its span holds the tombstone filter, planning, the scan and the write.
    fn add(
        &mut self,
        decode_ms: u64,
        metrics: &[CommitMetrics],
        start: Instant,
        end: Instant,
        requests: &[(Instant, Call, String)],
    ) {
        self.files += 1;
        self.decode_ms += decode_ms as f64;
        for m in metrics {
            self.commit_ms += m.duration_ms as f64;
            self.merge_scan_ms += m.merge_scan_ms as f64;
            self.merge_rewrite_ms += m.merge_rewrite_ms as f64;
            self.tombstones_written += m.tombstones_written;
        }
        let mut marks: Vec<(Instant, &'static str)> = vec![(start, PHASES[0])];
        let (mut merged, mut committed) = (false, false);
        let mut last_request = start;
        for (t, call, path) in requests {
            let p = phase_of(*call, path, merged, committed);
            if p == MERGE && !merged {
                marks.push((last_request, MERGE));
                merged = true;
            }
            if p == "commit write" && matches!(call, Call::Put | Call::Copy) {
                committed = true;
            }
            if marks.last().map(|m| m.1) != Some(p) {
                marks.push((*t, p));
            }
            self.spans.entry(p).or_default().1 += 1;
            last_request = *t;
        }
        marks.push((last_request, "staging clean-up"));
        marks.push((end, "end"));
        for w in marks.windows(2) {
            let ms = w[1].0.saturating_duration_since(w[0].0).as_secs_f64() * 1e3;
            self.spans.entry(w[0].1).or_default().0 += ms;
        }
    }

    fn to_json(&self) -> Json {
        if self.files == 0 {
            return Json::Null;
        }
        let n = self.files as f64;
        let spans: serde_json::Map<String, Json> = PHASES
            .iter()
            .map(|p| {
                let (ms, reqs) = self.spans.get(p).copied().unwrap_or_default();
                (p.to_string(), json!({"ms": ms / n, "requests": reqs as f64 / n}))
            })
            .collect();
        json!({"files": self.files, "decode_ms": self.decode_ms / n, "commit_ms": self.commit_ms / n,
            "merge_scan_ms": self.merge_scan_ms / n, "merge_rewrite_ms": self.merge_rewrite_ms / n,
            "tombstones_written": self.tombstones_written as f64 / n, "spans": spans})
    }
}

fn print_phases(p: &Json) {
    if p.is_null() {
        return;
    }
    println!(
        "  per-file commit, where the time goes (dms2delta_phases, mean over {} CDC files): decode {:.1} ms (DecodeMetrics), commit {:.1} ms (CommitMetrics) of which MERGE execution {:.1} ms (delta-rs's own measures: scan {:.1}, write {:.1}); tombstones written per file {:.0}",
        p["files"],
        p["decode_ms"].as_f64().unwrap_or(0.0),
        p["commit_ms"].as_f64().unwrap_or(0.0),
        p["merge_scan_ms"].as_f64().unwrap_or(0.0) + p["merge_rewrite_ms"].as_f64().unwrap_or(0.0),
        p["merge_scan_ms"].as_f64().unwrap_or(0.0),
        p["merge_rewrite_ms"].as_f64().unwrap_or(0.0),
        p["tombstones_written"].as_f64().unwrap_or(0.0),
    );
    let line: Vec<String> = PHASES
        .iter()
        .map(|name| {
            let s = &p["spans"][*name];
            format!(
                "{name} {:.1} ms/{:.1} req",
                s["ms"].as_f64().unwrap_or(0.0),
                s["requests"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    println!(
        "  commit phases, split at the Delta engine's requests: {}",
        line.join(" | ")
    );
}

// ---------------------------------------------------------------------------------------------
// The parent.

fn run(cmd: &mut Command, what: &str) -> Result<Json, String> {
    let out = cmd.output().map_err(|e| format!("{what}: cannot start: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err
            .chars()
            .rev()
            .take(1500)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(format!("{what} failed ({}): {tail}", out.status));
    }
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("{what} printed no RESULT line"))?;
    serde_json::from_str(line).map_err(|e| format!("{what}: bad RESULT: {e}"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Adds the derived figures the report shows.
fn summarize(mut r: Json) -> Json {
    let mut lat: Vec<f64> = r["latencies"]
        .as_array()
        .map(|a| a.iter().filter_map(Json::as_f64).collect())
        .unwrap_or_default();
    lat.sort_by(f64::total_cmp);
    let secs = r["secs"].as_f64().unwrap_or(0.0);
    let changes = r["changes"].as_f64().unwrap_or(0.0);
    r["p50_ms"] = json!(percentile(&lat, 50.0) * 1e3);
    r["p99_ms"] = json!(percentile(&lat, 99.0) * 1e3);
    r["changes_per_s"] = json!(if secs > 0.0 { changes / secs } else { 0.0 });
    r
}

/// Reads a Delta table back (any writer's) with the engine dms2delta reads with; `config` is
/// only what a pipeline needs to exist.
async fn read_delta(config: &Path, dir: &Path) -> Result<Vec<Vec<Value>>, String> {
    let text = std::fs::read_to_string(config).map_err(|e| e.to_string())?;
    let config = Config::from_text(&text).map_err(|e| e.to_string())?;
    let pipeline = Pipeline::new(Arc::new(config), Arc::new(Stores::new(Default::default())));
    let batches = pipeline
        .read_table(&Location::Local { dir: dir.to_path_buf() })
        .await
        .map_err(|e| e.to_string())?;
    rows_of(&batches, &DATA_COLUMNS.map(String::from)).map_err(|e| format!("{}: {e}", dir.display()))
}

fn read_parquet_tree(dir: &Path, op_column: &str) -> Result<Vec<Vec<Value>>, String> {
    let mut batches = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let p = e.map_err(|e| e.to_string())?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                let f = std::fs::File::open(&p).map_err(|e| e.to_string())?;
                let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
                    .and_then(|b| b.build())
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                for b in reader {
                    batches.push(b.map_err(|e| e.to_string())?);
                }
            }
        }
    }
    let mut cols: Vec<String> = DATA_COLUMNS.map(String::from).to_vec();
    cols.push(op_column.to_string());
    rows_of(&batches, &cols)
}

fn verdict(expected: &[Vec<Value>], actual: Result<Vec<Vec<Value>>, String>) -> Result<(), String> {
    let actual = actual?;
    let d = diff(expected, &actual);
    if d.is_empty() {
        Ok(())
    } else {
        let head: String = d.lines().take(5).collect::<Vec<_>>().join("; ");
        Err(format!(
            "WRONG RESULT ({} rows expected, {} found): {head}",
            expected.len(),
            actual.len()
        ))
    }
}

fn main() {
    if let Ok(case) = std::env::var(ENV_CASE) {
        let root = PathBuf::from(std::env::var(ENV_ROOT).unwrap());
        child(&case, &root);
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is taken.
    let python = python();
    let have_python = python.exists();
    let skip_spark = std::env::var("DMS2DELTA_BENCH_SKIP_SPARK").is_ok_and(|v| v == "1");
    let exe = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(repo())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let machine = common::machine();
    println!("machine: {machine}; source: {commit}; python: {}", python.display());
    if !have_python {
        println!(
            "(no {}: the Python peers are skipped; run `bash bench/run.sh`)",
            python.display()
        );
    }

    let mut results = Vec::new();
    let mut failures = 0;
    for w in workloads() {
        let tmp = tempfile::tempdir().unwrap();
        let sim = simulate(&w.opts);
        let data = tmp.path().join("data");
        sim.write_files(&data).unwrap();
        let keys: Vec<String> = sim.files.iter().map(|f| f.key.clone()).collect();
        std::fs::write(tmp.path().join("keys.txt"), keys.join("\n")).unwrap();
        let paths: Vec<String> = keys.iter().map(|k| data.join(k).display().to_string()).collect();
        std::fs::write(tmp.path().join("files.txt"), paths.join("\n")).unwrap();
        let expected = sim.expected.get(TABLE).cloned().unwrap_or_default();
        let changes: usize = w.opts.changes;
        println!(
            "\n== {}: {} files, {} keys, {} CDC changes (up to {} per file) + full load",
            w.name,
            keys.len(),
            w.opts.keys,
            changes,
            w.opts.max_file_changes
        );

        // Not a pipeline of its own: the per-file run again, recorded request by request.
        let phase_root = tmp.path().join("dms2delta_phases");
        std::fs::create_dir_all(&phase_root).unwrap();
        std::fs::write(phase_root.join("config.yaml"), config_text(&sim, &phase_root)).unwrap();
        let phases = match run(
            Command::new(&exe)
                .env(ENV_CASE, "dms2delta_phases")
                .env(ENV_ROOT, &phase_root),
            "dms2delta_phases",
        ) {
            Ok(r) => match verdict(
                &expected,
                rt.block_on(read_delta(
                    &phase_root.join("config.yaml"),
                    &phase_root.join("lake/oracle/app/t0"),
                )),
            ) {
                Ok(()) => r["phases"].clone(),
                Err(e) => {
                    failures += 1;
                    println!("  dms2delta_phases  FAILED: {e}");
                    Json::Null
                }
            },
            Err(e) => {
                failures += 1;
                println!("  dms2delta_phases  FAILED: {e}");
                Json::Null
            }
        };

        let mut pipelines = BTreeMap::new();
        let mut record = |name: &str, r: Result<Json, String>, check: Result<(), String>| {
            let entry = match (r, check) {
                (Ok(r), Ok(())) => summarize(r),
                (Ok(r), Err(e)) => {
                    failures += 1;
                    let mut r = summarize(r);
                    r["error"] = json!(e);
                    r
                }
                (Err(e), _) => {
                    failures += 1;
                    json!({ "error": e })
                }
            };
            print_line(name, &entry);
            pipelines.insert(name.to_string(), entry);
        };

        for case in ["dms2delta", "dms2delta_dv", "dms2delta_group", "dms2delta_decode"] {
            let root = tmp.path().join(case);
            std::fs::create_dir_all(&root).unwrap();
            let mut config = config_text(&sim, &root);
            if case == "dms2delta_dv" {
                config.push_str("commit:\n  deletion_vectors: true\n");
            }
            std::fs::write(root.join("config.yaml"), config).unwrap();
            let r = run(Command::new(&exe).env(ENV_CASE, case).env(ENV_ROOT, &root), case);
            let check = if r.is_err() {
                Ok(())
            } else if case != "dms2delta_decode" {
                verdict(
                    &expected,
                    rt.block_on(read_delta(&root.join("config.yaml"), &root.join("lake/oracle/app/t0"))),
                )
            } else {
                Ok(())
            };
            record(case, r, check);
        }

        if have_python {
            let table = tmp.path().join("python-table");
            let r = run(
                Command::new(&python)
                    .arg(repo().join("bench/python_pipeline.py"))
                    .arg(tmp.path().join("files.txt"))
                    .arg(&table),
                "python",
            );
            let check = if r.is_ok() {
                let config = tmp.path().join("dms2delta/config.yaml");
                verdict(&expected, rt.block_on(read_delta(&config, &table)))
            } else {
                Ok(())
            };
            record("python", r, check);

            if !skip_spark {
                let out = tmp.path().join("spark-out");
                let r = run(
                    Command::new(&python)
                        .arg(repo().join("bench/spark_decode.py"))
                        .arg(tmp.path().join("files.txt"))
                        .arg(&out),
                    "spark_decode",
                );
                // The two decode stages must agree row for row (data columns and operation).
                let check = if r.is_ok() {
                    match read_parquet_tree(&tmp.path().join("dms2delta_decode/staged"), "_dms_op") {
                        Ok(ours) => verdict(&ours, read_parquet_tree(&out, "Op")),
                        Err(e) => Err(format!("reading dms2delta's change sets: {e}")),
                    }
                } else {
                    Ok(())
                };
                record("spark_decode", r, check);
            }
        }
        let files = keys.len();
        let total: u64 = pipelines
            .get("dms2delta")
            .and_then(|p| p["changes"].as_u64())
            .unwrap_or(0);
        results.push(json!({"name": w.name, "files": files, "changes": total,
            "changes_per_file": total as f64 / files.max(1) as f64, "pipelines": pipelines,
            "phases": phases}));
        ratios(results.last().unwrap());
        print_phases(&results.last().unwrap()["phases"]);
    }

    let out_dir = repo().join("bench/results");
    std::fs::create_dir_all(&out_dir).unwrap();
    let json_path = out_dir.join("pipelines.json");
    let doc = json!({"machine": machine, "commit": commit, "workloads": results});
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("\nresults: {}", json_path.display());
    if have_python {
        let status = Command::new(&python)
            .arg(repo().join("bench/report.py"))
            .arg(&json_path)
            .arg(out_dir.join("pipelines.png"))
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            println!("bench/report.py failed: {status:?}");
        }
    }
    if failures > 0 {
        println!("\n{failures} pipeline run(s) FAILED (wrong result or error): see above");
        std::process::exit(1);
    }
}

fn print_line(name: &str, r: &Json) {
    if let Some(e) = r["error"].as_str() {
        println!("  {name:<17} FAILED: {e}");
        return;
    }
    println!(
        "  {name:<17} {:>7} changes in {:>8.2} s = {:>10} changes/s   per file p50 {:>8.1} ms  p99 {:>8.1} ms   peak RSS {:>6.0} MiB",
        r["changes"].as_u64().unwrap_or(0),
        r["secs"].as_f64().unwrap_or(0.0),
        common::group(r["changes_per_s"].as_f64().unwrap_or(0.0) as u64),
        r["p50_ms"].as_f64().unwrap_or(0.0),
        r["p99_ms"].as_f64().unwrap_or(0.0),
        r["maxrss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
    );
}

fn ratios(w: &Json) {
    let p = &w["pipelines"];
    for (ours, peer) in [
        ("dms2delta", "python"),
        ("dms2delta_dv", "python"),
        ("dms2delta_group", "python"),
        ("dms2delta_decode", "spark_decode"),
    ] {
        let (a, b) = (&p[ours], &p[peer]);
        if a["error"].is_null() && b["error"].is_null() {
            if let (Some(x), Some(y)) = (a["changes_per_s"].as_f64(), b["changes_per_s"].as_f64()) {
                println!("  {ours} vs {peer}: {:.1}x the throughput", x / y);
            }
        }
    }
}
