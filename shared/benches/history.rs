//! The cost of `history.enabled` per commit (issue #20, item 4): the same commits into two lakes,
//! one keeping an SCD type 2 history and one not, taking turns.
//!
//! ```sh
//! export CARGO_TARGET_DIR=$HOME/.cache/dms2delta-release-target
//! cargo bench -p dms2delta --bench history
//! ```
//!
//! A table of `keys` rows (one full-load file, headerless CSV with the commit time and
//! `AR_H_CHANGE_SEQ`, as MySQL sources write it), then `commits` CDC files of `changes` changes
//! each: updates of random existing keys, a tenth of them changing their key again in the same
//! file. Every file is decoded into both lakes; only the commit is timed. Reported per commit:
//! the commit's wall time without and with the history, the history's own share (its
//! `duration_ms`), the history rows it read back and the versions it wrote. Knobs:
//! `DMS2DELTA_BENCH_HISTORY` = `keys:changes:commits` (default `100000:1000:10`),
//! `DMS2DELTA_BENCH_SEED`.

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

fn pipeline(dir: &std::path::Path, history: bool) -> Pipeline {
    let d = dir.display();
    let mut text = format!(
        "lake: {d}/lake\nstaging: {d}/staged\nquarantine: {d}/quarantine\nstorage:\n  buckets:\n    dms: {d}/../bucket\n"
    );
    if history {
        text.push_str("history:\n  enabled: true\n");
    }
    text.push_str(SOURCE);
    let config = Arc::new(Config::from_text(&text).unwrap());
    let stores = Stores::new(config.config.storage.clone());
    Pipeline::new(config, Arc::new(stores))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}

async fn run() {
    let knobs = std::env::var("DMS2DELTA_BENCH_HISTORY").unwrap_or_else(|_| "100000:1000:10".into());
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
    std::fs::create_dir_all(root.path().join("off")).unwrap();
    std::fs::create_dir_all(root.path().join("on")).unwrap();
    let off = pipeline(&root.path().join("off"), false);
    let on = pipeline(&root.path().join("on"), true);
    println!(
        "dms2delta history bench: {keys} keys, {commits} commits of {changes} changes (a tenth change their key twice in one file), seed {seed}"
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
    for p in [&off, &on] {
        p.decode("dms", "app/t/LOAD00000001.csv", Some("e".into()), Failpoints::default())
            .await
            .unwrap();
        p.commit_all().await.unwrap();
    }
    println!(
        "full load committed into both lakes in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let mut counter = 0u64;
    let (mut t_off, mut t_on, mut t_hist) = (Vec::new(), Vec::new(), Vec::new());
    println!("commit   without ms   with ms   history ms   history rows read   versions inserted/updated");
    for c in 0..commits {
        let mut body = String::new();
        let second = 10 + c;
        let mut i = 0;
        while i < changes {
            let id = rng.usize(0..keys);
            let times = if rng.u8(0..10) == 0 { 2 } else { 1 };
            for _ in 0..times {
                counter += 1;
                let micros = i * 10;
                let seq = format!(
                    "2024052811{:02}{:02}{:02}{counter:019}",
                    second / 60,
                    second % 60,
                    micros / 10_000
                );
                let _ = writeln!(
                    body,
                    "U,2024-05-28 11:{:02}:{:02}.{micros:06},{id},v{counter},{}.00,{},{seq}",
                    second / 60,
                    second % 60,
                    rng.u32(0..10000),
                    rng.u32(0..1000)
                );
                i += 1;
            }
        }
        let key = format!("app/t/20240528-11{:02}{:02}000.csv", second / 60, second % 60);
        std::fs::write(bucket.join(&key), body).unwrap();
        let mut row = format!("{c:>6}");
        // Take turns starting, so a slow spell of the machine falls on both.
        let order: [(&Pipeline, bool); 2] = if c % 2 == 0 {
            [(&off, false), (&on, true)]
        } else {
            [(&on, true), (&off, false)]
        };
        let mut cells = [String::new(), String::new()];
        for (p, history) in order {
            p.decode("dms", &key, Some("e".into()), Failpoints::default())
                .await
                .unwrap();
            let t = Instant::now();
            let m = p.commit_all().await.unwrap();
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            if history {
                let h = m[0].history.clone().expect("history metrics");
                t_on.push(ms);
                t_hist.push(h.duration_ms as f64);
                cells[1] = format!(
                    "{ms:>9.0}   {:>10}   {:>17}   {}/{}",
                    h.duration_ms, h.rows_read, h.versions_inserted, h.versions_updated
                );
            } else {
                t_off.push(ms);
                cells[0] = format!("{ms:>13.0}");
            }
        }
        let _ = write!(row, "{}{}", cells[0], cells[1]);
        println!("{row}");
    }
    let spec = on.config.table_by_target("my", "app", "t").unwrap();
    let history = on.read_table(&on.history_location(&spec)).await.unwrap();
    let versions: usize = history.iter().map(|b| b.num_rows()).sum();
    let (m_off, m_on, m_hist) = (median(&mut t_off), median(&mut t_on), median(&mut t_hist));
    println!(
        "median commit: {m_off:.0} ms without, {m_on:.0} ms with the history ({:.2}x; the history's own part {m_hist:.0} ms); history table {versions} versions",
        m_on / m_off
    );
}
