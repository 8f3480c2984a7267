//! Deletion vectors across engines and under concurrency: vectors other Delta writers produced
//! are read by dms2delta's merge-on-read code as they mean (the Delta project's own test
//! tables, `tests/data/deletion_vectors`), and compaction purging vectors while merge-on-read
//! commits add more leaves exactly the source's rows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arrow::util::display::array_value_to_string;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use dms2delta::failpoint::Failpoints;
use dms2delta::operations::compact::CompactBuilder;
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::operations::merge_on_read::purge_deleted_rows;
use dms2delta::sim::SimOptions;
use support::Lab;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A scratch copy of one of the foreign tables (the purge rewrites it).
async fn foreign_table(name: &str) -> (tempfile::TempDir, DeltaTable) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/deletion_vectors")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join(name);
    copy_dir(&src, &root);
    let url = url::Url::from_directory_path(&root).unwrap();
    (dir, deltalake::open_table(url).await.unwrap())
}

/// The table's rows as text, sorted, read by deltalake's own query engine.
async fn rows(table: &DeltaTable, cols: &[&str]) -> Vec<Vec<String>> {
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state()).unwrap();
    ctx.register_table("t", table.table_provider().await.unwrap()).unwrap();
    let mut out = Vec::new();
    for b in ctx.table("t").await.unwrap().collect().await.unwrap() {
        for r in 0..b.num_rows() {
            out.push(
                cols.iter()
                    .map(|c| array_value_to_string(b.column_by_name(c).unwrap(), r).unwrap())
                    .collect::<Vec<_>>(),
            );
        }
    }
    out.sort();
    out
}

fn ints(values: impl Iterator<Item = i64>) -> Vec<Vec<String>> {
    let mut v: Vec<Vec<String>> = values.map(|i| vec![i.to_string()]).collect();
    v.sort();
    v
}

/// Each table with its columns and the rows the Delta project's tests say it holds.
fn foreign_tables() -> Vec<(&'static str, Vec<&'static str>, Vec<Vec<String>>)> {
    let mut partitioned: Vec<Vec<String>> = (0..50)
        .filter(|x| !(x % 2 == 0 && *x < 30))
        .map(|x| vec![(x % 10).to_string(), x.to_string(), format!("foo{}", x % 5)])
        .collect();
    partitioned.sort();
    vec![
        ("table-with-dv-small", vec!["value"], ints(1..=8)),
        ("basic-dv-no-checkpoint", vec!["id"], ints(2..=9)),
        (
            "dv-partitioned-with-checkpoint",
            vec!["part", "col1", "col2"],
            partitioned,
        ),
    ]
}

/// The purge reads every vector (through the same reader as a merge-on-read commit's scan) and
/// rewrites each marked file without its deleted rows: what is left must be the rows the other
/// engine left, now in files without vectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vectors_other_engines_wrote_are_purged_to_the_rows_they_left() {
    for (name, cols, expected) in foreign_tables() {
        let (_dir, table) = foreign_table(name).await;
        // The copy is what the table's README says (deltalake applies the vectors itself).
        assert_eq!(rows(&table, &cols).await, expected, "{name} as deltalake reads it");
        let (mut marked_files, mut marked_rows) = (0u64, 0u64);
        for f in table.snapshot().unwrap().log_data().iter() {
            if let Some(dv) = f.deletion_vector_descriptor() {
                marked_files += 1;
                marked_rows += dv.cardinality as u64;
            }
        }
        assert!(marked_files > 0, "{name} has no deletion vector");

        let (table, purged) = purge_deleted_rows(table, 0).await.unwrap();
        assert_eq!(purged.files_in, marked_files, "{name}: {purged:?}");
        assert_eq!(purged.rows_dropped, marked_rows, "{name}: {purged:?}");
        let left = table
            .snapshot()
            .unwrap()
            .log_data()
            .iter()
            .filter(|f| f.deletion_vector_descriptor().is_some())
            .count();
        assert_eq!(left, 0, "{name}: files still marked after the purge");
        assert_eq!(rows(&table, &cols).await, expected, "{name} after the purge");
    }
}

/// The seed of the race test: `DMS2DELTA_DV_RACE_SEED`, else a fresh one.
fn race_seed() -> u64 {
    std::env::var("DMS2DELTA_DV_RACE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| 1_000_000 + fastrand::u64(0..1 << 40))
}

/// Compaction purges deletion vectors while merge-on-read commits of three tables run beside it
/// (a task per table, a compaction task over all three). A purge that lands between a commit's
/// read and its log write makes the commit retry (it marked rows in a file the purge retired);
/// a commit that lands first makes the purge yield. Each table's committer is alone on its
/// table, so every such conflict is one a purge caused. The tables must end equal to the
/// source, read by dms2delta and by the Python reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purges_racing_merge_on_read_commits_leave_the_source_rows() {
    let seed = race_seed();
    // Shown when the test fails; the interleaving is the scheduler's, the history the seed's.
    println!("deletion vector race: DMS2DELTA_DV_RACE_SEED={seed}");
    let lab = Lab::new_configured(
        &SimOptions {
            seed,
            // One table per simulated source (MySQL, Oracle, PostgreSQL): three.
            tables: 1,
            keys: 40,
            changes: 240,
            max_file_changes: 6,
            ..Default::default()
        },
        None,
        true,
        // Purges only (bin-packing would need more small files than there are), of any file
        // with a marked row.
        "compact:\n  min_small_files: 1000000\n  purge_deleted_percent: 1\n",
    );
    // The simulator's files by table folder, in the order DMS wrote them.
    let mut by_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &lab.sim.files {
        let folder = f.key.rsplit_once('/').map(|(d, _)| d).unwrap_or_default();
        by_table.entry(folder.to_string()).or_default().push(f.key.clone());
    }
    assert_eq!(
        by_table.len(),
        lab.sim.expected.len(),
        "seed {seed}: {:?}",
        by_table.keys()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (purges, purged_files, yields) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let tables: Vec<(String, String, String)> = lab
        .sim
        .expected
        .keys()
        .map(|k| {
            let mut p = k.splitn(3, '.');
            let mut next = || p.next().unwrap().to_string();
            (next(), next(), next())
        })
        .collect();
    let compactor = {
        let (pipeline, stop) = (lab.pipeline.clone(), stop.clone());
        let (purges, purged_files, yields) = (purges.clone(), purged_files.clone(), yields.clone());
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed ^ 0xc0);
            while !stop.load(Ordering::Relaxed) {
                for (ns, s, t) in &tables {
                    let r = CompactBuilder::new(pipeline.config.clone(), &pipeline.stores)
                        .with_table(ns, s, t)
                        .with_force(true)
                        .await;
                    match r {
                        Ok(m) if m.yielded => {
                            yields.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(m) if m.files_purged > 0 => {
                            purges.fetch_add(1, Ordering::Relaxed);
                            purged_files.fetch_add(m.files_purged, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) if e.is_retryable() => {}
                        Err(e) => panic!("seed {seed}: compact {ns}.{s}.{t}: {e}"),
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(rng.u64(0..5))).await;
            }
        })
    };
    let mut committers = Vec::new();
    for (folder, keys) in by_table {
        let (pipeline, bucket) = (lab.pipeline.clone(), lab.bucket.clone());
        committers.push(tokio::spawn(async move {
            let (mut conflicts, mut commits) = (0u64, 0u64);
            for key in keys {
                let staged = loop {
                    match pipeline
                        .decode(&bucket, &key, Some("e".into()), Failpoints::default())
                        .await
                    {
                        Ok(DecodeOutcome::Staged(m)) => break m,
                        Ok(other) => panic!("seed {seed}: decode {key}: {other:?}"),
                        Err(e) if e.is_retryable() => {}
                        Err(e) => panic!("seed {seed}: decode {key}: {e}"),
                    }
                };
                for t in staged.tables {
                    let mut p = t.table.splitn(3, '.');
                    let (a, b, c) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
                    loop {
                        match pipeline.commit(a, b, c, Failpoints::default()).await {
                            Ok(m) => {
                                conflicts += u64::from(m.conflicts);
                                commits += 1;
                                break;
                            }
                            // Past its bound of attempts: the queue would deliver it again.
                            Err(dms2delta::Error::Conflict { attempts, .. }) => conflicts += u64::from(attempts),
                            Err(e) => panic!("seed {seed}: commit {} ({folder}): {e}", t.table),
                        }
                    }
                }
            }
            (conflicts, commits)
        }));
    }
    let (mut conflicts, mut commits) = (0, 0);
    for c in committers {
        let (n, m) = c.await.unwrap();
        conflicts += n;
        commits += m;
    }
    stop.store(true, Ordering::Relaxed);
    compactor.await.unwrap();
    let (purges, purged_files, yields) = (
        purges.load(Ordering::Relaxed),
        purged_files.load(Ordering::Relaxed),
        yields.load(Ordering::Relaxed),
    );
    let summary = format!(
        "seed {seed}: {commits} commits, {conflicts} commit conflicts, {purges} purging compactions \
         ({purged_files} files), {yields} compactions yielded"
    );
    println!("{summary}");
    lab.check().await.map_err(|e| format!("{summary}\n{e}")).unwrap();
    assert!(purges > 0, "no purge ran between commits: {summary}");
    assert!(conflicts + yields > 0, "the purges never met a commit: {summary}");
    // What the race left, vectors included, is what the Python reader reads too.
    lab.check_log().await.map_err(|e| format!("{summary}\n{e}")).unwrap();
    if !support::skip_python() {
        lab.check_with_python().map_err(|e| format!("{summary}\n{e}")).unwrap();
    }
}
