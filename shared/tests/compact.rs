//! The compact stage: fewer files, same rows; never a lost change while commits run; vacuum
//! never deletes what the current version or a version inside the retention references.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use dms2delta::failpoint::Failpoints;
use dms2delta::lake;
use dms2delta::operations::compact::{CompactBuilder, CompactMetrics};
use dms2delta::sim::SimOptions;
use support::{Lab, Mini};

const SOURCE: &str = r#"
  - name: my
    bucket: dms
    sequence_column: AR_H_CHANGE_SEQ
    tables:
      - schema: app
        table: t
        keys: [id]
        columns:
          - { name: id, type: INT8 }
          - { name: name, type: STRING }
          - { name: AR_H_CHANGE_SEQ, type: STRING }
"#;

const COMPACT: &str = "compact:\n  min_small_files: 4\n  checkpoint_interval: 5\n  check_every_commits: 2\n";

async fn compact(m: &dms2delta::pipeline::Pipeline, force: bool, now: Option<i64>) -> CompactMetrics {
    let mut b = CompactBuilder::new(m.config.clone(), &m.stores)
        .with_table("my", "app", "t")
        .with_force(force);
    if let Some(n) = now {
        b = b.with_now_millis(n);
    }
    b.await.unwrap()
}

async fn file_count(m: &Mini) -> usize {
    let (t, _) = lake::open(&m.pipeline.stores, &m.location("my.app.t")).await.unwrap();
    t.snapshot().unwrap().log_data().num_files()
}

fn data_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect()
}

#[tokio::test]
async fn many_small_commits_are_compacted_and_the_rows_stay_the_same() {
    let m = Mini::new(SOURCE, COMPACT);
    for i in 0..12u32 {
        m.apply(
            &format!("app/t/20240528-1951413{i:02}.csv"),
            format!("I,{i},n{i},{}\n", i + 1).as_bytes(),
        )
        .await;
    }
    let before_rows = m.rows("my.app.t", &["id", "name"]).await;
    let before_files = file_count(&m).await;
    assert!(before_files >= 12, "{before_files}");
    let r = compact(&m.pipeline, true, None).await;
    assert!(r.due.contains(&"small files"), "{r:?}");
    assert_eq!(r.files_in as usize, before_files);
    assert_eq!(r.files_out, 1);
    assert!(r.checkpoint_written);
    assert_eq!(file_count(&m).await, 1);
    assert_eq!(m.rows("my.app.t", &["id", "name"]).await, before_rows);
    // Nothing left to do: the next run compacts nothing.
    let again = compact(&m.pipeline, false, None).await;
    assert_eq!(again.files_in, 0, "{again:?}");
}

#[tokio::test]
async fn most_invocations_decide_from_the_commit_counter_alone() {
    let m = Mini::new(SOURCE, COMPACT);
    m.apply("app/t/20240528-195141301.csv", b"I,1,a,1\n").await;
    let r = CompactBuilder::new(m.pipeline.config.clone(), &m.pipeline.stores)
        .with_table("my", "app", "t")
        .with_version_hints([1])
        .await
        .unwrap();
    assert!(r.due.is_empty() && r.version.is_none(), "{r:?}");
}

#[tokio::test]
async fn vacuum_keeps_every_file_a_version_inside_the_retention_needs() {
    let m = Mini::new(SOURCE, COMPACT);
    for i in 0..6u32 {
        m.apply(
            &format!("app/t/20240528-1951413{i:02}.csv"),
            format!("I,{i},n{i},{}\n", i + 1).as_bytes(),
        )
        .await;
    }
    let table_dir = m.dir.path().join("lake/my/app/t");
    let before = data_files(&table_dir);
    let r = compact(&m.pipeline, true, None).await;
    assert_eq!(
        r.files_vacuumed, 0,
        "files removed by this compaction are still inside the retention"
    );
    for f in &before {
        assert!(f.exists(), "vacuum deleted {} too early", f.display());
    }
    // The version before compaction can still be read (time travel inside the retention).
    let (mut old, _) = lake::open(&m.pipeline.stores, &m.location("my.app.t")).await.unwrap();
    let v = old.version().unwrap();
    old.load_version(v - 3).await.unwrap();
    assert!(old.snapshot().unwrap().log_data().num_files() > 1);

    // Eight days later the replaced files go; the current version still reads completely.
    let later = chrono::Utc::now().timestamp_millis() + 8 * 24 * 3_600_000;
    let r = compact(&m.pipeline, true, Some(later)).await;
    assert!(r.files_vacuumed >= before.len() as u64, "{r:?}");
    assert_eq!(m.rows("my.app.t", &["id"]).await.len(), 6);
    let (t, _) = lake::open(&m.pipeline.stores, &m.location("my.app.t")).await.unwrap();
    for f in t.snapshot().unwrap().log_data().iter() {
        assert!(
            table_dir.join(f.path().as_ref()).exists(),
            "referenced file {} was deleted",
            f.path()
        );
    }
}

#[tokio::test]
async fn tombstones_expire_after_their_retention() {
    let m = Mini::new(SOURCE, COMPACT);
    m.apply("app/t/20240528-195141301.csv", b"I,1,a,1\nI,2,b,2\n").await;
    m.apply("app/t/20240528-195141302.csv", b"D,1,,5\n").await;
    let now = chrono::Utc::now().timestamp_millis();
    assert_eq!(compact(&m.pipeline, true, Some(now)).await.tombstones_dropped, 0);
    let r = compact(&m.pipeline, true, Some(now + 8 * 24 * 3_600_000)).await;
    assert_eq!(r.tombstones_dropped, 1, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_running_alongside_commits_loses_no_change() {
    let lab = Lab::new(
        &SimOptions {
            seed: 77,
            keys: 30,
            changes: 60,
            max_file_changes: 5,
            ..Default::default()
        },
        None,
    );
    // Compact as often as possible, forced, while every file is committed.
    let pipeline = lab.pipeline.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let tables: Vec<(String, String, String)> = lab
        .sim
        .expected
        .keys()
        .map(|k| {
            let mut p = k.splitn(3, '.');
            (
                p.next().unwrap().into(),
                p.next().unwrap().into(),
                p.next().unwrap().into(),
            )
        })
        .collect();
    let compactor = tokio::spawn(async move {
        let mut runs = 0u32;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            for (ns, s, t) in &tables {
                let r = CompactBuilder::new(pipeline.config.clone(), &pipeline.stores)
                    .with_table(ns, s, t)
                    .with_force(true)
                    .await;
                if r.is_ok() {
                    runs += 1;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        runs
    });
    for f in &lab.sim.files {
        lab.pipeline
            .decode(&lab.bucket, &f.key, None, Failpoints::default())
            .await
            .unwrap();
        // Ingestion commits must never fail because of compaction.
        lab.pipeline.commit_all().await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = compactor.await.unwrap();
    assert!(runs > 0);
    lab.check().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_marked_by_deletion_vectors_are_purged_and_the_table_stays_the_same() {
    let lab = Lab::new_with(&SimOptions::default(), None, true);
    let commits = lab.one_commit_per_file().await;
    assert!(commits.iter().any(|m| m.dv_files > 0), "{commits:?}");
    let percent = lab.config().config.compact.purge_deleted_percent as u128;
    for name in lab.sim.expected.keys() {
        let mut p = name.splitn(3, '.');
        let (ns, s, t) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        let r = CompactBuilder::new(lab.config(), &lab.pipeline.stores)
            .with_table(ns, s, t)
            .with_force(true)
            .await
            .unwrap();
        assert!(r.due.contains(&"deleted rows"), "{name}: {r:?}");
        assert!(r.files_purged > 0 && r.rows_purged > 0, "{name}: {r:?}");
        assert!(r.checkpoint_written, "{name}: {r:?}");
        // What is left marked is below the threshold.
        let spec = lab.pipeline.config.table_by_target(ns, s, t).unwrap();
        let (table, _) = lake::open(&lab.pipeline.stores, &lab.pipeline.table_location(&spec))
            .await
            .unwrap();
        for f in table.snapshot().unwrap().log_data().iter() {
            if let (Some(dv), Some(n)) = (f.deletion_vector_descriptor(), f.num_records()) {
                assert!(
                    (dv.cardinality as u128) * 100 < n as u128 * percent,
                    "{name}: {dv:?} of {n}"
                );
            }
        }
        // Nothing left to purge.
        let again = CompactBuilder::new(lab.config(), &lab.pipeline.stores)
            .with_table(ns, s, t)
            .with_force(true)
            .await
            .unwrap();
        assert_eq!(again.files_purged, 0, "{name}: {again:?}");
    }
    // The same rows, read by dms2delta and by the Python reader, from a checkpointed log.
    lab.check().await.unwrap();
    lab.check_log().await.unwrap();
    if !support::skip_python() {
        lab.check_with_python().unwrap();
    }
}

/// Compaction commits between an ingestion commit's read of the table and its own commit: the
/// ingestion commit replaces (copy-on-write) or marks (merge-on-read) rows in a file compaction
/// just rewrote. It must notice and retry; committing anyway would leave the old row in the
/// compacted file next to the new one.
async fn an_ingestion_commit_racing_a_compaction_keeps_one_row_per_key(extra: &str) {
    let m = Mini::new(SOURCE, &format!("{extra}compact:\n  min_small_files: 2\n"));
    m.apply("app/t/20240528-195141301.csv", b"I,1,a,1\n").await;
    m.apply("app/t/20240528-195141302.csv", b"I,2,b,2\n").await;
    assert!(file_count(&m).await >= 2);
    m.put("app/t/20240528-195141303.csv", b"U,1,a2,3\n");
    m.decode("app/t/20240528-195141303.csv").await;
    let compacted = Arc::new(std::sync::Mutex::new(None));
    let (c, config, stores) = (compacted.clone(), m.pipeline.config.clone(), m.pipeline.stores.clone());
    // The pause point: the commit has read the table; compaction runs to completion (on a
    // thread of its own, so the commit's runtime is not needed) before the commit goes on.
    let pause = Failpoints::new(move |name| {
        if name == dms2delta::failpoint::COMMIT_AFTER_TOMBSTONES && c.lock().unwrap().is_none() {
            let (config, stores) = (config.clone(), stores.clone());
            let r = std::thread::spawn(move || {
                tokio::runtime::Runtime::new().unwrap().block_on(async {
                    CompactBuilder::new(config, &stores)
                        .with_table("my", "app", "t")
                        .with_force(true)
                        .await
                })
            })
            .join()
            .unwrap()
            .unwrap();
            *c.lock().unwrap() = Some(r);
        }
        false
    });
    let done = m.pipeline.commit("my", "app", "t", pause).await.unwrap();
    let compacted = compacted.lock().unwrap().clone().unwrap();
    assert!(compacted.files_in >= 2, "compaction had nothing to do: {compacted:?}");
    assert_eq!(
        m.rows("my.app.t", &["id", "name"]).await,
        vec![vec!["1", "a2"], vec!["2", "b"]],
        "commit {done:?} after compaction {compacted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingestion_commit_racing_a_compaction_keeps_one_row_per_key_copy_on_write() {
    an_ingestion_commit_racing_a_compaction_keeps_one_row_per_key("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingestion_commit_racing_a_compaction_keeps_one_row_per_key_merge_on_read() {
    an_ingestion_commit_racing_a_compaction_keeps_one_row_per_key("  deletion_vectors: true\n").await;
}

/// Two compaction runs of one table at once (the compact function runs with a concurrency of 2
/// or more, and the CLI may run beside it) would both read the same small files, and delta-rs
/// lets both OPTIMIZE commits land: a second compacted copy of every row. Found by the
/// convergence cases, which run compaction between commits; the table's maintenance lease now
/// makes the second run give way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_compactions_racing_on_one_table_keep_one_row_per_key() {
    use std::sync::mpsc;
    let m = Mini::new(SOURCE, "compact:\n  min_small_files: 2\n");
    for i in 1..=3u32 {
        m.apply(
            &format!("app/t/20240528-1951413{i:02}.csv"),
            format!("I,{i},n{i},{i}\n").as_bytes(),
        )
        .await;
    }
    let before = m.rows("my.app.t", &["id", "name"]).await;
    // The first run to write its log entry stops there until the second run has finished.
    let (reached_tx, reached_rx) = mpsc::channel::<()>();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let gate = Arc::new(std::sync::Mutex::new(Some((reached_tx, go_rx))));
    let g = gate.clone();
    let stores = dms2delta::storage::Stores::new(m.pipeline.config.config.storage.clone()).with_delta_wrapper(
        Arc::new(move |inner| {
            let g = g.clone();
            Arc::new(dms2delta::faults::FaultyStore::new(inner, move |call, path| {
                if call == dms2delta::faults::Call::Put && path.as_ref().contains("_delta_log/0") {
                    let first = g.lock().unwrap().take();
                    if let Some((reached, go)) = first {
                        reached.send(()).unwrap();
                        go.recv().unwrap();
                    }
                }
                false
            }))
        }),
    );
    let p = dms2delta::pipeline::Pipeline::new(m.pipeline.config.clone(), Arc::new(stores));
    // Each run on a thread and runtime of its own: the first blocks its thread while it waits.
    let run = |p: dms2delta::pipeline::Pipeline| {
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                CompactBuilder::new(p.config.clone(), &p.stores)
                    .with_table("my", "app", "t")
                    .await
            })
        })
    };
    let first = run(p.clone());
    reached_rx.recv().unwrap();
    let second = run(p.clone()).join().unwrap();
    go_tx.send(()).unwrap();
    let first = first.join().unwrap();
    let after = m.rows("my.app.t", &["id", "name"]).await;
    assert_eq!(
        after, before,
        "first run {first:?}, second run {second:?}: a row per key or one per compacted copy?"
    );
    // The race happened: the second run came while the first held the table (stopped at its
    // log write), and gave way instead of compacting the same files again; the first compacted.
    let second = second.unwrap();
    assert!(second.yielded && second.files_in == 0, "{second:?}");
    let first = first.unwrap();
    assert!(first.files_in >= 3, "the first run compacted nothing: {first:?}");
    // The lease is gone with the first run: the next compaction is free to run.
    let next = CompactBuilder::new(m.pipeline.config.clone(), &m.pipeline.stores)
        .with_table("my", "app", "t")
        .await
        .unwrap();
    assert!(!next.yielded, "{next:?}");
}

/// The tombstone table holding two rows for one key (what two racing compactions of it leave,
/// see above, and what a delete, a re-insert and a second delete of one key leave): a later
/// commit touching that key must still apply each change once (the tombstone lookup once
/// returned the change once per tombstone row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_two_tombstone_rows_still_gets_each_change_once() {
    let m = Mini::new(SOURCE, "");
    m.apply("app/t/20240528-195141301.csv", b"I,1,a,1\nI,2,b,2\n").await;
    m.apply("app/t/20240528-195141302.csv", b"D,1,a,3\n").await;
    let spec = m.pipeline.config.table_by_target("my", "app", "t").unwrap();
    let tomb_loc = m
        .pipeline
        .config
        .lake
        .join(&format!("_dms2delta/tombstones/{}", spec.lake_path()));
    let rows = m.pipeline.read_table(&tomb_loc).await.unwrap();
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let (tomb, _) = lake::open(&m.pipeline.stores, &tomb_loc).await.unwrap();
    tomb.write(rows).await.unwrap();
    // A late, older change and a newer re-insert of the deleted key.
    m.put("app/t/20240528-195141303.csv", b"U,1,late,2\n");
    m.decode("app/t/20240528-195141303.csv").await;
    m.put("app/t/20240528-195141304.csv", b"I,1,again,4\n");
    m.decode("app/t/20240528-195141304.csv").await;
    let commits = m.pipeline.commit_all().await.unwrap();
    assert_eq!(
        m.rows("my.app.t", &["id", "name"]).await,
        vec![vec!["1", "again"], vec!["2", "b"]],
        "{commits:?}"
    );
}

/// Compaction reads the table only once it holds the table's lease. Run B reads the log while
/// run A takes the lease, compacts and lets go (forced here: A runs inside B's first log read).
/// Had B read the table before taking the lease, B would optimize the files A already rewrote
/// and every row would be in the table twice (found by the convergence cases, seed 2005).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_never_works_from_a_read_older_than_its_lease() {
    use dms2delta::faults::{Call, FaultyStore};
    use dms2delta::storage::{StoreWrapper, Stores};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    let m = Mini::new(SOURCE, COMPACT);
    for i in 0..6u32 {
        m.apply(
            &format!("app/t/20240528-1951413{i:02}.csv"),
            format!("I,{i},n{i},{}\n", i + 1).as_bytes(),
        )
        .await;
    }
    let before = m.rows("my.app.t", &["id", "name"]).await;
    let armed = Arc::new(AtomicBool::new(true));
    let inner_run: Arc<Mutex<Vec<CompactMetrics>>> = Arc::default();
    let (a, armed_w, inner_w) = (m.pipeline.clone(), armed.clone(), inner_run.clone());
    let handle = tokio::runtime::Handle::current();
    let wrapper: StoreWrapper = Arc::new(move |store| {
        let (a, armed, inner, handle) = (a.clone(), armed_w.clone(), inner_w.clone(), handle.clone());
        Arc::new(FaultyStore::new(store, move |call, path| {
            let log_read = call == Call::Get && path.as_ref().contains("_delta_log/");
            if log_read && armed.swap(false, Ordering::SeqCst) {
                let run = tokio::task::block_in_place(|| handle.block_on(compact(&a, true, None)));
                inner.lock().unwrap().push(run);
            }
            false
        }))
    });
    let stores = Stores::new(m.pipeline.config.config.storage.clone()).with_delta_wrapper(wrapper);
    let b = dms2delta::pipeline::Pipeline::new(m.pipeline.config.clone(), Arc::new(stores));
    let outer = compact(&b, true, None).await;
    let inner = inner_run.lock().unwrap().clone();
    assert_eq!(inner.len(), 1, "run A must have run inside run B's log read: {outer:?}");
    // A found the lease taken (B holds it while it reads), so only B rewrote files.
    assert!(inner[0].yielded, "A: {:?}; B: {outer:?}", inner[0]);
    assert!(outer.files_in >= 4, "{outer:?}");
    assert_eq!(
        m.rows("my.app.t", &["id", "name"]).await,
        before,
        "A: {inner:?}; B: {outer:?}"
    );
    assert_eq!(file_count(&m).await, 1);
}
