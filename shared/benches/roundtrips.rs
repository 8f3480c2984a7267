//! S3 round trips and freshness of the event-driven pipeline (issue #18, goals 1 and 3).
//!
//! ```sh
//! export CARGO_TARGET_DIR=$HOME/.cache/dms2delta-release-target
//! DMS2DELTA_PYTHON=$HOME/.cache/dms2delta-venv/bin/python cargo bench -p dms2delta --bench roundtrips
//! ```
//!
//! Part 1, on the local S3 endpoint (moto) behind the tests' S3 proxy, which counts every
//! request by the kind S3 bills (GET, LIST, PUT, COPY, HEAD, DELETE, POST) and can hold each one
//! back for a seeded, jittered latency. Each DMS file of a simulated history (one table, Parquet,
//! small CDC files) is PUT into the DMS bucket, then run through the stages as the functions run
//! them on their S3 events: decode (the file's event), commit (the staged change set's event),
//! compact (the new log version's event, with the version as the hint). "file→visible" runs from
//! the start of the DMS PUT to the end of the commit that makes the file's changes a Delta
//! version. It leaves out what AWS adds between the stages: event delivery, the queues' batching
//! windows and Lambda start-up. Four runs, each on fresh buckets: no injected latency and then
//! the injected latency, each with the snapshot cache off (every open reads the log afresh and
//! every commit scans every tombstone file: a cold function each time) and on (a warm function
//! updates the snapshot and the tombstones it holds).
//!
//! Part 2, on local folders: the same per-file path (decode then commit, one file at a time)
//! against `bench/python_pipeline.py` (the Python `deltalake` recipe of the pipelines bench) on
//! the same files, in the same run; and, from the zero-latency S3 runs, where a per-file commit
//! spends its time, split at the requests that open each phase (timestamps taken by the proxy).
//!
//! Knobs: `DMS2DELTA_BENCH_S3` (`keys:changes:max_file_changes` of the S3 history, default
//! `2000:400:12`), `DMS2DELTA_BENCH_FOLDERS` (of the folder history, default `10000:14000:1400`,
//! the pipelines bench's small workload), `DMS2DELTA_BENCH_LATENCY_MS` (`lo:hi`, default
//! `15:30`), `DMS2DELTA_BENCH_SEED`, `DMS2DELTA_BENCH_PYTHON` (else `DMS2DELTA_PYTHON`; a Python
//! with deltalake, pyarrow and duckdb), `DMS2DELTA_SKIP_PYTHON=1`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../tests/support/proxy.rs"]
mod proxy;
#[path = "../tests/support/s3.rs"]
mod s3;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use dms2delta::config::Config;
use dms2delta::failpoint::Failpoints;
use dms2delta::operations::compact::CompactBuilder;
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::pipeline::Pipeline;
use dms2delta::sim::{simulate, Format, SimOptions, Simulation};
use dms2delta::storage::Stores;
use object_store::ObjectStoreExt;
use proxy::{FaultProxy, ProxyOptions, RequestCounts};

/// S3 standard request prices (us-east-1, per 1,000 requests) used for the cost lines.
const PUT_PRICE: f64 = 0.005;
const GET_PRICE: f64 = 0.0004;
/// The seed's load: 50 tables, each a DMS file a minute.
const TABLES: f64 = 50.0;
const FILES_PER_MONTH: f64 = 60.0 * 24.0 * 30.0;

fn opts(var: &str, default: &str, seed: u64) -> SimOptions {
    let spec = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let n: Vec<usize> = spec.split(':').map(|x| x.trim().parse().expect(var)).collect();
    assert_eq!(n.len(), 3, "{var} is keys:changes:max_file_changes");
    SimOptions {
        seed,
        tables: 1,
        keys: n[0] as u32,
        changes: n[1],
        max_file_changes: n[2],
        formats: vec![Format::Parquet],
        ..SimOptions::default()
    }
}

fn is_load(key: &str) -> bool {
    key.rsplit('/').next().is_some_and(|f| f.starts_with("LOAD"))
}

/// The table's `namespace.schema.table` split for the commit stage.
fn split3(name: &str) -> (String, String, String) {
    let mut p = name.splitn(3, '.');
    let mut n = || p.next().unwrap().to_string();
    (n(), n(), n())
}

#[derive(Default, Clone)]
struct FileRun {
    key: String,
    load: bool,
    decode: RequestCounts,
    commit: RequestCounts,
    compact: RequestCounts,
    visible_s: f64,
    decode_s: f64,
    commit_s: f64,
    /// The commit's requests with their times (zero-latency runs only).
    commit_log: Vec<(Instant, String)>,
    decode_log: Vec<(Instant, String)>,
    commit_started: Option<Instant>,
    commit_ended: Option<Instant>,
    decode_started: Option<Instant>,
}

async fn s3_run(sim: &Simulation, latency: Option<(u64, u64)>, cache: bool, seed: u64) -> Vec<FileRun> {
    let moto = s3::moto();
    let proxy = FaultProxy::start_with(
        &moto.url,
        ProxyOptions {
            fault_rate: 0.0,
            seed,
            latency_ms: latency,
        },
    )
    .await;
    let bucket = moto.bucket("dms").await;
    let lake = moto.bucket("lake").await;
    let text = sim.config_on(
        &format!("s3://{lake}/lake"),
        &format!("s3://{lake}/lake/_dms2delta/staged"),
        &format!("s3://{lake}/lake/_dms2delta/quarantine"),
        &bucket,
        &s3::storage_yaml(&proxy.url),
    );
    let config = Arc::new(Config::from_text(&text).unwrap());
    let mut stores = Stores::new(config.config.storage.clone());
    if !cache {
        stores = stores.without_snapshot_cache();
    }
    let pipeline = Pipeline::new(config.clone(), Arc::new(stores));
    let req = proxy.requests.clone();
    let mut runs = Vec::new();
    for f in &sim.files {
        let mut r = FileRun {
            key: f.key.clone(),
            load: is_load(&f.key),
            ..Default::default()
        };
        let started = Instant::now();
        let put = pipeline
            .stores
            .bucket(&bucket)
            .unwrap()
            .put(&object_store::path::Path::from(f.key.as_str()), f.bytes.clone().into())
            .await
            .unwrap();
        req.take_lines(latency.is_none());
        let c0 = req.counts();
        r.decode_started = Some(Instant::now());
        let out = pipeline
            .decode(&bucket, &f.key, put.e_tag.clone(), Failpoints::default())
            .await
            .unwrap();
        r.decode_s = r.decode_started.unwrap().elapsed().as_secs_f64();
        let c1 = req.counts();
        r.decode = c1.minus(&c0);
        r.decode_log = req.take_lines(latency.is_none());
        let DecodeOutcome::Staged(m) = out else {
            panic!("{}: {out:?}", f.key)
        };
        let mut versions = BTreeMap::new();
        let commit_started = Instant::now();
        r.commit_started = Some(commit_started);
        for t in &m.tables {
            let (ns, schema, table) = split3(&t.table);
            let cm = pipeline
                .commit(&ns, &schema, &table, Failpoints::default())
                .await
                .unwrap();
            assert!(cm.version.is_some(), "{}: nothing committed: {cm:?}", f.key);
            versions.insert((ns, schema, table), cm.version.unwrap_or(0));
        }
        r.commit_ended = Some(Instant::now());
        r.commit_s = commit_started.elapsed().as_secs_f64();
        r.visible_s = started.elapsed().as_secs_f64();
        let c2 = req.counts();
        r.commit = c2.minus(&c1);
        r.commit_log = req.take_lines(false);
        for ((ns, schema, table), v) in versions {
            CompactBuilder::new(config.clone(), &pipeline.stores)
                .with_table(ns, schema, table)
                .with_version_hints([v])
                .await
                .unwrap();
        }
        r.compact = req.counts().minus(&c2);
        runs.push(r);
    }
    runs
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mean_counts(runs: &[&FileRun], pick: impl Fn(&FileRun) -> RequestCounts) -> [f64; 7] {
    let n = runs.len().max(1) as f64;
    let mut s = [0f64; 7];
    for r in runs {
        let c = pick(r);
        for (i, v) in [c.get, c.list, c.put, c.copy, c.head, c.delete, c.post]
            .into_iter()
            .enumerate()
        {
            s[i] += v as f64;
        }
    }
    s.map(|v| v / n)
}

fn fmt_counts(c: &[f64; 7]) -> String {
    format!(
        "{:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>7.2}",
        c[0],
        c[1],
        c[2],
        c[3],
        c[4],
        c[5],
        c[6],
        c.iter().sum::<f64>()
    )
}

/// Dollars a month for `c` requests per file at 50 tables × a file a minute.
fn dollars(c: &[f64; 7]) -> f64 {
    // PUT, COPY, POST and LIST at the PUT price; GET and HEAD at the GET price; DELETE is free.
    let put_class = c[2] + c[3] + c[6] + c[1];
    let get_class = c[0] + c[4];
    (put_class * PUT_PRICE + get_class * GET_PRICE) / 1000.0 * TABLES * FILES_PER_MONTH
}

/// Which phase of a commit a request opens, by the object it names.
fn phase_of(line: &str) -> &'static str {
    let line = line.replace("%2F", "/");
    let (method, target) = line.split_once(' ').unwrap_or((&line, ""));
    if target.contains("_dms2delta/staged") {
        return if method == "DELETE" {
            "staging cleanup"
        } else {
            "staging list+get"
        };
    }
    if target.contains("_dms2delta/tombstones") {
        return "tombstones";
    }
    match (method, target.contains("_delta_log")) {
        ("PUT", true) => "commit write",
        (_, true) => "log read",
        ("PUT", false) => "MERGE write",
        _ => "MERGE read",
    }
}

/// Time per phase of one commit: each phase runs from its first request until the next
/// phase's first request; what comes before the first request is "start".
fn phases(r: &FileRun, into: &mut BTreeMap<&'static str, f64>) {
    let (Some(start), Some(end)) = (r.commit_started, r.commit_ended) else {
        return;
    };
    let mut marks: Vec<(Instant, &'static str)> = Vec::new();
    for (t, line) in &r.commit_log {
        let p = phase_of(line);
        if marks.last().map(|m| m.1) != Some(p) {
            marks.push((*t, p));
        }
    }
    let mut prev = (start, "start");
    for (t, p) in marks.into_iter().chain(std::iter::once((end, "end"))) {
        *into.entry(prev.1).or_default() += t.saturating_duration_since(prev.0).as_secs_f64();
        prev = (t, p);
    }
}

fn report_s3(label: &str, runs: &[FileRun]) -> (f64, f64, [f64; 7], [f64; 7], [f64; 7]) {
    let cdc: Vec<&FileRun> = runs.iter().filter(|r| !r.load).collect();
    let mut vis: Vec<f64> = cdc.iter().map(|r| r.visible_s).collect();
    vis.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&vis, 50.0), percentile(&vis, 99.0));
    let d = mean_counts(&cdc, |r| r.decode);
    let c = mean_counts(&cdc, |r| r.commit);
    let k = mean_counts(&cdc, |r| r.compact);
    let mean_dec: f64 = cdc.iter().map(|r| r.decode_s).sum::<f64>() / cdc.len().max(1) as f64;
    let mean_com: f64 = cdc.iter().map(|r| r.commit_s).sum::<f64>() / cdc.len().max(1) as f64;
    println!(
        "{label:<34} {:>4} CDC files  file→visible p50 {:>6.3} s  p99 {:>6.3} s  max {:>6.3} s  (decode {:.3} s + commit {:.3} s mean)",
        cdc.len(),
        p50,
        p99,
        vis.last().copied().unwrap_or(f64::NAN),
        mean_dec,
        mean_com
    );
    (p50, p99, d, c, k)
}

fn python() -> Option<PathBuf> {
    if std::env::var("DMS2DELTA_SKIP_PYTHON").is_ok_and(|v| v == "1") {
        return None;
    }
    std::env::var_os("DMS2DELTA_BENCH_PYTHON")
        .or_else(|| std::env::var_os("DMS2DELTA_PYTHON"))
        .map(PathBuf::from)
}

/// The per-file path on local folders: decode then commit, file by file; seconds per file.
async fn folders_run(sim: &Simulation, data: &std::path::Path, cache: bool) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).display().to_string();
    let text = sim.config(&p("lake"), &p("staged"), &p("quarantine"), &data.display().to_string());
    let config = Arc::new(Config::from_text(&text).unwrap());
    let mut stores = Stores::new(config.config.storage.clone());
    if !cache {
        stores = stores.without_snapshot_cache();
    }
    let pipeline = Pipeline::new(config, Arc::new(stores));
    let mut secs = Vec::new();
    for f in &sim.files {
        let started = Instant::now();
        let out = pipeline
            .decode(&sim.bucket, &f.key, Some("etag".into()), Failpoints::default())
            .await
            .unwrap();
        let DecodeOutcome::Staged(m) = out else {
            panic!("{}: {out:?}", f.key)
        };
        for t in &m.tables {
            let (ns, schema, table) = split3(&t.table);
            pipeline
                .commit(&ns, &schema, &table, Failpoints::default())
                .await
                .unwrap();
        }
        secs.push(started.elapsed().as_secs_f64());
    }
    secs
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let seed: u64 = std::env::var("DMS2DELTA_BENCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(18);
    let latency: (u64, u64) = std::env::var("DMS2DELTA_BENCH_LATENCY_MS")
        .ok()
        .and_then(|s| {
            let (a, b) = s.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or((15, 30));
    let whole = Instant::now();
    println!(
        "dms2delta round-trips bench on {} cores, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );

    // Part 1: S3.
    let sim = simulate(&opts("DMS2DELTA_BENCH_S3", "2000:400:12", seed));
    println!(
        "S3 history: {} files ({} LOAD), seed {seed}; injected latency {}..{} ms per request (uniform, seeded)",
        sim.files.len(),
        sim.files.iter().filter(|f| is_load(&f.key)).count(),
        latency.0,
        latency.1
    );
    let mut results = Vec::new();
    for (label, lat, cache) in [
        ("no latency, snapshot cache off", None, false),
        ("no latency, snapshot cache on", None, true),
        ("latency, snapshot cache off", Some(latency), false),
        ("latency, snapshot cache on", Some(latency), true),
    ] {
        let runs = s3_run(&sim, lat, cache, seed).await;
        results.push((label, runs));
    }
    println!();
    println!("file→visible (DMS PUT start to the end of the commit holding the file; CDC files only; AWS event delivery, batching windows and cold starts not included):");
    let mut summary = Vec::new();
    for (label, runs) in &results {
        summary.push((*label, report_s3(label, runs)));
    }
    println!();
    println!("S3 requests per CDC file, by stage (mean over the run)");
    println!(
        "{:<34} {:<8} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>7} {:>10}",
        "run", "stage", "GET", "LIST", "PUT", "COPY", "HEAD", "DELETE", "POST", "total", "$/month*"
    );
    for (label, (_, _, d, c, k)) in &summary {
        for (stage, counts) in [("decode", d), ("commit", c), ("compact", k)] {
            println!(
                "{label:<34} {stage:<8} {} {:>10.2}",
                fmt_counts(counts),
                dollars(counts)
            );
        }
        let all: [f64; 7] = std::array::from_fn(|i| d[i] + c[i] + k[i]);
        println!("{label:<34} {:<8} {} {:>10.2}", "all", fmt_counts(&all), dollars(&all));
    }
    println!(
        "* S3 standard request prices: PUT/COPY/POST/LIST ${PUT_PRICE} and GET/HEAD ${GET_PRICE} per 1,000, DELETE free; at {TABLES} tables × a file a minute ({} files a month); the DMS PUT itself is not counted",
        TABLES * FILES_PER_MONTH
    );

    // One CDC file's requests, in order, from the zero-latency runs: why each is made.
    for (label, runs) in results
        .iter()
        .filter(|(_, r)| r.iter().any(|f| !f.commit_log.is_empty()))
    {
        let cdc: Vec<&FileRun> = runs.iter().filter(|r| !r.load).collect();
        if let Some(r) = cdc.get(10.min(cdc.len().saturating_sub(1))) {
            println!();
            println!("requests of one CDC file ({}), {label}:", r.key);
            let t0 = r.decode_started.unwrap();
            for (t, line) in r.decode_log.iter() {
                println!(
                    "  decode  +{:>7.1} ms  {}",
                    t.duration_since(t0).as_secs_f64() * 1e3,
                    short(line)
                );
            }
            for (t, line) in r.commit_log.iter() {
                println!(
                    "  commit  +{:>7.1} ms  {:<17} {}",
                    t.duration_since(t0).as_secs_f64() * 1e3,
                    phase_of(line),
                    short(line)
                );
            }
        }
    }

    // Where a commit spends its time, from the zero-latency runs.
    println!();
    println!("commit phases on S3 without injected latency, mean ms per CDC file (split at the first request of each phase; 'start' is before the first request):");
    for (label, runs) in results.iter().take(2) {
        let mut acc = BTreeMap::new();
        let cdc: Vec<&FileRun> = runs.iter().filter(|r| !r.load).collect();
        for r in &cdc {
            phases(r, &mut acc);
        }
        let n = cdc.len().max(1) as f64;
        let mean_decode = cdc.iter().map(|r| r.decode_s).sum::<f64>() / n;
        let parts: Vec<String> = acc.iter().map(|(k, v)| format!("{k} {:.1}", v / n * 1e3)).collect();
        println!(
            "  {label}: decode {:.1} | commit: {}",
            mean_decode * 1e3,
            parts.join(", ")
        );
    }

    // Part 2: local folders against the Python recipe.
    let fsim = simulate(&opts("DMS2DELTA_BENCH_FOLDERS", "10000:14000:1400", seed + 1));
    let data = tempfile::tempdir().unwrap();
    fsim.write_files(data.path()).unwrap();
    println!();
    println!(
        "local folders, one file at a time (each line a fresh table): {} files ({} LOAD)",
        fsim.files.len(),
        fsim.files.iter().filter(|f| is_load(&f.key)).count(),
    );
    let mut lines = Vec::new();
    for (label, cache) in [
        ("dms2delta, snapshot cache off", false),
        ("dms2delta, snapshot cache on", true),
    ] {
        let secs = folders_run(&fsim, data.path(), cache).await;
        lines.push((label.to_string(), secs));
    }
    if let Some(py) = python() {
        let list = data.path().join("files.txt");
        let paths: Vec<String> = fsim
            .files
            .iter()
            .map(|f| data.path().join(&f.key).display().to_string())
            .collect();
        std::fs::write(&list, paths.join("\n")).unwrap();
        let table = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(&py)
            .arg(s3::repo().join("bench/python_pipeline.py"))
            .arg(&list)
            .arg(table.path().join("t"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) {
            Some(r) => {
                let v: serde_json::Value = serde_json::from_str(r).unwrap();
                let secs: Vec<f64> = v["latencies"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|x| x.as_f64())
                    .collect();
                lines.push(("python deltalake recipe".to_string(), secs));
            }
            None => println!(
                "python recipe failed: {}",
                String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
            ),
        }
    } else {
        println!("python recipe skipped (set DMS2DELTA_BENCH_PYTHON or DMS2DELTA_PYTHON)");
    }
    let py_cdc: Option<f64> = lines
        .iter()
        .find(|(l, _)| l.starts_with("python"))
        .map(|(_, s)| cdc_mean(&fsim, s));
    println!(
        "{:<32} {:>12} {:>14} {:>12} {:>16}",
        "pipeline", "LOAD s/file", "CDC s/file", "total s", "CDC vs python"
    );
    for (label, secs) in &lines {
        let load: Vec<f64> = fsim
            .files
            .iter()
            .zip(secs)
            .filter(|(f, _)| is_load(&f.key))
            .map(|(_, s)| *s)
            .collect();
        let cdc = cdc_mean(&fsim, secs);
        println!(
            "{label:<32} {:>12.3} {:>14.4} {:>12.2} {:>16}",
            load.iter().sum::<f64>() / load.len().max(1) as f64,
            cdc,
            secs.iter().sum::<f64>(),
            py_cdc.map_or("-".into(), |p| format!("{:.2}x", p / cdc))
        );
    }
    println!("(CDC vs python: the Python recipe's mean seconds per CDC file over this line's; above 1 is faster than Python)");
    println!("whole run: {:.0}s", whole.elapsed().as_secs_f64());
}

fn cdc_mean(sim: &Simulation, secs: &[f64]) -> f64 {
    let cdc: Vec<f64> = sim
        .files
        .iter()
        .zip(secs)
        .filter(|(f, _)| !is_load(&f.key))
        .map(|(_, s)| *s)
        .collect();
    cdc.iter().sum::<f64>() / cdc.len().max(1) as f64
}

/// A request line without the bucket-unique parts that make it long.
fn short(line: &str) -> String {
    let s = line.replace("%2F", "/");
    if s.len() > 150 {
        format!("{}…", &s[..s.char_indices().nth(150).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}
