//! The cost of `change_data_feed` per commit (issue #20, item 4): the same commits into four
//! lakes, copy-on-write and deletion vectors each with and without the change feed, taking turns.
//!
//! ```sh
//! export CARGO_TARGET_DIR=$HOME/.cache/dms2delta-release-target
//! cargo bench -p dms2delta --bench change_feed
//! ```
//!
//! A table of `keys` rows (one full-load file, headerless CSV with the commit time and
//! `AR_H_CHANGE_SEQ`), then `commits` CDC files of `changes` changes each: updates of random
//! existing keys, a twentieth of them deletes and as many inserts of new keys. Every file is
//! decoded into the four lakes; only the commit is timed. Reported per commit: each lake's
//! commit wall time, and per merge mode the ratio of the feed's time to the time without it,
//! measured in the same run. Knobs: `DMS2DELTA_BENCH_CDF` = `keys:changes:commits` (default
//! `100000:1000:10`), `DMS2DELTA_BENCH_SEED`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use dms2delta::config::Config;
use dms2delta::failpoint::Failpoints;
use dms2delta::pipeline::Pipeline;
use dms2delta::storage::Stores;

const SOURCE: &str = r#"
sources:
  - name: my
    bucket: dms
    timestamp_column: ts
    sequence_column: AR_H_CHANGE_SEQ
    tables:
      - schema: app
        table: t
        keys: [id]
        columns:
          - { name: id, type: INT8 }
          - { name: name, type: STRING }
          - { name: amount, type: NUMERIC, precision: 12, scale: 2 }
          - { name: n, type: INT4 }
          - { name: AR_H_CHANGE_SEQ, type: STRING }
"#;

/// One lake: its merge mode and whether it keeps the change feed.
struct Lake {
    dv: bool,
    feed: bool,
    pipeline: Pipeline,
    times: Vec<f64>,
    change_files: usize,
}

fn pipeline(dir: &std::path::Path, dv: bool, feed: bool) -> Pipeline {
    let d = dir.display();
    let text = format!(
        "lake: {d}/lake\nstaging: {d}/staged\nquarantine: {d}/quarantine\nstorage:\n  buckets:\n    dms: {d}/../bucket\ncommit:\n  deletion_vectors: {dv}\n  change_data_feed: {feed}\n{SOURCE}"
    );
    let config = Arc::new(Config::from_text(&text).unwrap());
    let stores = Stores::new(config.config.storage.clone());
    Pipeline::new(config, Arc::new(stores))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.filter_map(Result::ok).count())
}

fn main() {
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    let knobs = std::env::var("DMS2DELTA_BENCH_CDF").unwrap_or_else(|_| "100000:1000:10".into());
    let k: Vec<usize> = knobs.split(':').map(|x| x.parse().unwrap()).collect();
    let (keys, changes, commits) = (k[0], k[1], k[2]);
    let seed: u64 = std::env::var("DMS2DELTA_BENCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut rng = fastrand::Rng::with_seed(seed);
    let root = tempfile::tempdir().unwrap();
    let bucket = root.path().join("bucket");
    let folder = bucket.join("app/t");
    std::fs::create_dir_all(&folder).unwrap();
    let mut lakes = Vec::new();
    for (dv, feed) in [(false, false), (false, true), (true, false), (true, true)] {
        let dir = root.path().join(format!("dv{dv}-feed{feed}"));
        std::fs::create_dir_all(&dir).unwrap();
        lakes.push(Lake {
            dv,
            feed,
            pipeline: pipeline(&dir, dv, feed),
            times: Vec::new(),
            change_files: 0,
        });
    }
    println!(
        "dms2delta change feed bench: {keys} keys, {commits} commits of {changes} changes (updates, a twentieth deletes, a twentieth inserts), seed {seed}"
    );

    let mut load = String::new();
    for id in 0..keys {
        let _ = writeln!(
            load,
            "2024-05-28 10:00:00.000000,{id},name{id},{}.{:02},{},",
            id % 9999,
            id % 100,
            id % 1000
        );
    }
    std::fs::write(folder.join("LOAD00000001.csv"), load).unwrap();
    let started = Instant::now();
    for l in &lakes {
        l.pipeline
            .decode("dms", "app/t/LOAD00000001.csv", Some("e".into()), Failpoints::default())
            .await
            .unwrap();
        l.pipeline.commit_all().await.unwrap();
    }
    println!(
        "full load committed into the four lakes in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let mut live: Vec<bool> = vec![true; keys];
    let mut next_key = keys;
    let mut counter = 0u64;
    println!("commit   cow ms   cow+feed ms   dv ms   dv+feed ms");
    for c in 0..commits {
        let mut body = String::new();
        let second = 10 + c;
        for i in 0..changes {
            counter += 1;
            let micros = i * 10;
            let ts = format!("2024-05-28 11:{:02}:{:02}.{micros:06}", second / 60, second % 60);
            let seq = format!(
                "2024052811{:02}{:02}{:02}{counter:019}",
                second / 60,
                second % 60,
                micros / 10_000
            );
            let draw = rng.u8(0..20);
            let (op, id) = if draw == 0 {
                live.push(true);
                next_key += 1;
                ('I', next_key - 1)
            } else {
                let mut id = rng.usize(0..live.len());
                while !live[id] {
                    id = rng.usize(0..live.len());
                }
                if draw == 1 {
                    live[id] = false;
                    ('D', id)
                } else {
                    ('U', id)
                }
            };
            let _ = writeln!(
                body,
                "{op},{ts},{id},v{counter},{}.00,{},{seq}",
                rng.u32(0..10000),
                rng.u32(0..1000)
            );
        }
        let key = format!("app/t/20240528-11{:02}{:02}000.csv", second / 60, second % 60);
        std::fs::write(bucket.join(&key), body).unwrap();
        // Take turns starting, so a slow spell of the machine falls on every lake.
        let n = lakes.len();
        for j in 0..n {
            let l = &mut lakes[(j + c) % n];
            l.pipeline
                .decode("dms", &key, Some("e".into()), Failpoints::default())
                .await
                .unwrap();
            let t = Instant::now();
            let m = l.pipeline.commit_all().await.unwrap();
            l.times.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(m.len(), 1, "{m:?}");
        }
        let cells: Vec<String> = lakes
            .iter()
            .map(|l| format!("{:.0}", l.times.last().copied().unwrap_or(0.0)))
            .collect();
        println!(
            "{c:>6} {:>8} {:>13} {:>7} {:>12}",
            cells[0], cells[1], cells[2], cells[3]
        );
    }
    for l in &mut lakes {
        l.change_files = count_files(
            &root
                .path()
                .join(format!("dv{}-feed{}/lake/my/app/t/_change_data", l.dv, l.feed)),
        );
    }
    for (off, on) in [(0, 1), (2, 3)] {
        let (a, b) = (&lakes[off], &lakes[on]);
        assert!(!a.feed && b.feed && a.dv == b.dv);
        assert_eq!(a.change_files, 0, "a lake without the feed wrote change files");
        let mode = if a.dv { "deletion vectors" } else { "copy-on-write" };
        let (m_off, m_on) = (median(&a.times), median(&b.times));
        println!(
            "{mode}: median commit {m_off:.0} ms without, {m_on:.0} ms with the change feed ({:.2}x); {} change files written",
            m_on / m_off,
            b.change_files
        );
    }
}
