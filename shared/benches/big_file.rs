//! Streaming bound: a 2 GB headerless CDC CSV file from a bulk UPDATE (a few hundred thousand
//! rows changed again and again) decodes with about the same peak memory as a 100 MB file of
//! the same keys: memory follows the deduplicated change set, not the file.
//!
//! Run with `cargo bench -p dms2delta --no-default-features --bench big_file`.
//! `DMS2DELTA_BIG_FILE_MB` sets the big file's size (default 2048). Each file is decoded in its
//! own child process so each peak RSS (`VmHWM`) is its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod util;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use dms2delta::config::Config;
use dms2delta::decode::{decode_file, FileContext};
use dms2delta::route::{route, Route};

const KEYS: u64 = 300_000;
const KEY: &str = "dms/app/t/20240528-195141380.csv";
const CONFIG: &str = "lake: /l\nstaging: /s\nquarantine: /q\nsources:\n  - name: big\n    bucket: b\n    bucket_folder: dms\n    tables:\n      - schema: app\n        table: t\n        keys: [id]\n        columns:\n          - { name: id, type: INT8 }\n          - { name: name, type: STRING }\n          - { name: n, type: INT8 }\n";

fn write_file(path: &Path, mb: u64) -> u64 {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let (mut bytes, mut rows) = (0u64, 0u64);
    let target = mb * 1024 * 1024;
    while bytes < target {
        let key = (rows * 7919) % KEYS;
        let line = format!("U,{key},customer name {key} updated,{rows}\n");
        w.write_all(line.as_bytes()).unwrap();
        bytes += line.len() as u64;
        rows += 1;
    }
    w.flush().unwrap();
    rows
}

fn child(path: &Path) {
    let config = Config::from_text(CONFIG).unwrap();
    let Route::File(routed) = route(&config, "b", KEY).unwrap() else {
        panic!("not routed")
    };
    let spec = config.table(routed.source, "app", "t").unwrap().unwrap();
    let source_file = format!("s3://b/{KEY}");
    let ctx = FileContext {
        config: &config,
        routed: &routed,
        source_file: &source_file,
        table: Some(&spec),
        max_field_bytes: config.config.limits.max_field_bytes,
    };
    let started = Instant::now();
    let tables = decode_file(File::open(path).unwrap(), &ctx).unwrap();
    let secs = started.elapsed().as_secs_f64();
    let rows_in: u64 = tables.iter().map(|t| t.rows_in).sum();
    let rows_out: u64 = tables.iter().map(|t| t.rows_out()).sum();
    println!(
        "RESULT {rows_in} {rows_out} {secs:.2} {:.1}",
        util::peak_rss_kib().unwrap() as f64 / 1024.0
    );
}

fn main() {
    if let Ok(p) = std::env::var("DMS2DELTA_BIG_FILE_CHILD") {
        child(Path::new(&p));
        return;
    }
    let big_mb: u64 = std::env::var("DMS2DELTA_BIG_FILE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let dir = tempfile::tempdir().unwrap();
    println!(
        "big-file bench: headerless CDC CSV, {KEYS} distinct keys updated over and over; load average {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or("n/a")
    );
    let mut results = Vec::new();
    for mb in [100, big_mb] {
        let path = dir.path().join(format!("{mb}.csv"));
        let started = Instant::now();
        let rows = write_file(&path, mb);
        let written = started.elapsed().as_secs_f64();
        let out = Command::new(std::env::current_exe().unwrap())
            .env("DMS2DELTA_BIG_FILE_CHILD", &path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text.lines().find(|l| l.starts_with("RESULT")).unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        let (rows_in, rows_out, secs, rss): (u64, u64, f64, f64) = (
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            f[4].parse().unwrap(),
        );
        assert_eq!(rows_in, rows);
        assert_eq!(rows_out, KEYS.min(rows));
        println!(
            "{mb:>6} MB file: {rows_in:>10} rows in, {rows_out} out, written in {written:.1}s, decoded in {secs:.1}s ({:.0} MB/s), peak RSS {rss:.0} MiB",
            mb as f64 / secs
        );
        results.push(rss);
        std::fs::remove_file(&path).unwrap();
    }
    let ratio = results[1] / results[0];
    println!(
        "peak RSS, {big_mb} MB file vs 100 MB file: {ratio:.2}x -> memory bounded by the change set: {}",
        if ratio <= 1.5 { "MET" } else { "MISSED" }
    );
}
