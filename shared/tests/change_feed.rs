//! The Change Data Feed option (`change_data_feed`): every commit that changes rows records the
//! change, in both merge modes and both delete modes, for inserts, updates, deletes, a widening
//! rewrite and a reload's sweep, and never for a change the sequence guard refused. Each test
//! reads the feed back with delta-rs and with the Python `deltalake` package and replays it:
//! the replay must rebuild the table exactly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray};
use arrow::datatypes::DataType;
use dms2delta::operations::compact::CompactBuilder;
use dms2delta::sim::Value;
use support::feed::{self, Feed};
use support::reload::{put_written, C1, C2, GEN0, GEN1, RELOADED};
use support::{parquet, Mini};

/// Added to the `commit:` settings.
const FEED: &str = "  change_data_feed: true\n";
const FEED_DV: &str = "  change_data_feed: true\n  deletion_vectors: true\n";

/// DMS Parquet without a sequence column: the file's name orders the changes, so a file named
/// earlier that arrives late carries older changes.
const PQ_SOURCE: &str = r#"
  - name: ora
    bucket: dms
    tables:
      - schema: app
        table: t
        keys: [id]
"#;
const T: &str = "ora.app.t";

fn pq(i: u32) -> String {
    format!("app/t/20240528-1951413{i:02}.parquet")
}

fn text(v: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

/// A DMS Parquet file: Op, id, name, n (INT4, or INT8 once the source widened it).
fn changes(ops: &[&str], ids: &[i64], names: &[Option<&str>], n: &[Option<i64>], wide: bool) -> Vec<u8> {
    let n: ArrayRef = if wide {
        Arc::new(Int64Array::from(n.to_vec()))
    } else {
        Arc::new(Int32Array::from(
            n.iter().map(|v| v.map(|v| v as i32)).collect::<Vec<_>>(),
        ))
    };
    parquet(vec![
        (
            "Op",
            DataType::Utf8,
            text(&ops.iter().map(|o| Some(*o)).collect::<Vec<_>>()),
        ),
        ("id", DataType::Int64, Arc::new(Int64Array::from(ids.to_vec()))),
        ("name", DataType::Utf8, text(names)),
        ("n", if wide { DataType::Int64 } else { DataType::Int32 }, n),
    ])
}

/// Reads the feed both ways, checks they agree, replays it against the table; returns it.
async fn check_feed(m: &Mini, table: &str, columns: &[&str], keys: &[&str]) -> Feed {
    let loc = m.location(table);
    let feed = feed::read(&m.pipeline.stores, &loc, columns).await;
    let mut replayed: Vec<Vec<String>> = feed
        .replay(keys)
        .unwrap_or_else(|e| panic!("replaying the feed: {e}\nfeed:\n{}", feed.lines().join("\n")))
        .into_iter()
        .map(|r| r.iter().map(Value::canonical).collect())
        .collect();
    replayed.sort();
    assert_eq!(
        replayed,
        m.rows(table, columns).await,
        "the feed replayed from version 0 is not the table; feed:\n{}",
        feed.lines().join("\n")
    );
    if !support::skip_python() {
        let dir = m.dir.path().join("lake").join(table.replace('.', "/"));
        let py = feed::read_with_python(&dir.display().to_string(), None, &feed.columns).unwrap();
        assert_eq!(py, feed.lines(), "the Python reader's feed differs from delta-rs's");
    }
    feed
}

/// Inserts, updates, a hard or soft delete, two refused stale changes, a widening rewrite and
/// changes after it, in one table; `commit` holds the merge mode.
async fn every_kind_of_change_is_in_the_feed(commit: &str, soft: bool) {
    let source = if soft {
        PQ_SOURCE.replace("keys: [id]", "keys: [id]\n        delete_mode: soft")
    } else {
        PQ_SOURCE.to_string()
    };
    let m = Mini::new(&source, commit);
    let mut cols = vec!["id", "name", "n", "_dms_seq", "_dms_commit_ts"];
    if soft {
        cols.extend(["_dms_deleted", "_dms_deleted_at"]);
    }
    m.apply(
        &pq(2),
        &changes(
            &["I", "I", "I"],
            &[1, 2, 3],
            &[Some("a"), Some("b"), Some("c")],
            &[Some(10), Some(20), Some(30)],
            false,
        ),
    )
    .await;
    let c = m
        .apply(
            &pq(3),
            &changes(
                &["U", "D", "I"],
                &[1, 2, 4],
                &[Some("a2"), None, Some("d")],
                &[Some(11), None, Some(40)],
                false,
            ),
        )
        .await;
    assert_eq!((c.rows_inserted, c.rows_updated + c.rows_deleted), (1, 2), "{c:?}");
    m.apply(&pq(5), &changes(&["U"], &[3], &[Some("c2")], &[Some(31)], false))
        .await;
    // Late and older than what the table holds: an update of 3, and an insert of 2 from
    // before its delete. Both refused, so neither may reach the feed.
    let stale = m
        .apply(&pq(4), &changes(&["U"], &[3], &[Some("stale")], &[Some(99)], false))
        .await;
    assert_eq!(stale.rows_stale, 1, "{stale:?}");
    let stale = m
        .apply(&pq(1), &changes(&["I"], &[2], &[Some("stale")], &[Some(99)], false))
        .await;
    assert_eq!(stale.rows_stale, 1, "{stale:?}");
    // INT4 widened to INT8 at the source: the table is rewritten at the wider type.
    m.apply(&pq(6), &changes(&["U"], &[4], &[Some("d2")], &[Some(1 << 40)], true))
        .await;
    m.apply(
        &pq(7),
        &changes(&["D", "I"], &[1, 5], &[None, Some("e")], &[None, Some(50)], true),
    )
    .await;

    let feed = check_feed(&m, T, &cols, &["id"]).await;
    let ctx = feed.lines().join("\n");
    assert!(
        !feed.holds("name", &Value::Str("stale".into())),
        "a refused change is in the feed:\n{ctx}"
    );
    assert!(
        !feed.holds("n", &Value::Int(99)),
        "a refused change is in the feed:\n{ctx}"
    );
    assert!(feed.count("insert") >= 5, "{ctx}");
    assert!(feed.count("update_preimage") >= 3, "{ctx}");
    assert_eq!(feed.count("update_preimage"), feed.count("update_postimage"), "{ctx}");
    // The widening rewrite shows every row leaving and coming back; hard deletes are deletes.
    assert!(feed.count("delete") >= if soft { 3 } else { 5 }, "{ctx}");
    if soft {
        // A soft delete is an update that flags the row.
        assert!(
            feed.rows
                .iter()
                .any(|r| r[5] == Value::Bool(true) && r[cols.len()] == Value::Str("update_postimage".into())),
            "{ctx}"
        );
    }

    // The updates came from change files (readers would otherwise derive only inserts and
    // deletes from the commit's data files).
    let changes_dir = m.dir.path().join("lake/ora/app/t/_change_data");
    let change_files = std::fs::read_dir(&changes_dir).map(|d| d.count()).unwrap_or(0);
    assert!(change_files > 0, "no change files in {}", changes_dir.display());

    // Compaction (data unchanged) and vacuum inside the retention keep the feed whole.
    let before = feed.lines();
    let r = CompactBuilder::new(m.pipeline.config.clone(), &m.pipeline.stores)
        .with_table("ora", "app", "t")
        .with_force(true)
        .await
        .unwrap();
    assert!(r.checkpoint_written, "{r:?}");
    let after = check_feed(&m, T, &cols, &["id"]).await;
    assert_eq!(after.lines(), before, "compaction changed the feed");
    // Past the retention vacuum deletes replaced data files and the change files as old.
    let later = chrono::Utc::now().timestamp_millis() + 8 * 24 * 3_600_000;
    let r = CompactBuilder::new(m.pipeline.config.clone(), &m.pipeline.stores)
        .with_table("ora", "app", "t")
        .with_force(true)
        .with_now_millis(later)
        .await
        .unwrap();
    assert!(r.files_vacuumed as usize > change_files, "{r:?}");
    let now_files = std::fs::read_dir(&changes_dir).map(|d| d.count()).unwrap_or(0);
    assert_eq!(now_files, 0, "change files past the retention are still there");
    // The feed from here on is whole.
    let from = r.version.unwrap() + 1;
    m.apply(&pq(8), &changes(&["U"], &[5], &[Some("e2")], &[Some(51)], true))
        .await;
    let (t, _) = dms2delta::lake::open(&m.pipeline.stores, &m.location(T)).await.unwrap();
    let batches = dms2delta::operations::change_feed::read(&t, from, None).await.unwrap();
    let rows = dms2delta::sim::rows_of(&batches, &["name".to_string(), "_change_type".to_string()]).unwrap();
    let kinds: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(Value::canonical).collect()).collect();
    assert_eq!(
        kinds,
        vec![vec!["e", "update_preimage"], vec!["e2", "update_postimage"]]
    );
}

macro_rules! modes {
    ($($name:ident => ($commit:expr, $soft:expr)),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                every_kind_of_change_is_in_the_feed($commit, $soft).await;
            }
        )*
    };
}

modes! {
    feed_copy_on_write_hard_deletes => (FEED, false),
    feed_copy_on_write_soft_deletes => (FEED, true),
    feed_merge_on_read_hard_deletes => (FEED_DV, false),
    feed_merge_on_read_soft_deletes => (FEED_DV, true),
}

/// The reload's sweep (the floor raised after the new snapshot) removes row 2, or flags it in
/// soft mode: the feed records that too.
async fn a_reload_sweep_is_in_the_feed(commit: &str, soft: bool) {
    let source = if soft {
        RELOADED.replace("keys: [id]", "keys: [id]\n        delete_mode: soft")
    } else {
        RELOADED.to_string()
    };
    let m = Mini::new(&source, commit);
    let mut swept = 0;
    for f in [GEN0, C1, GEN1, C2] {
        put_written(&m, f);
        m.decode(f.0).await;
        for c in m.pipeline.commit_all().await.unwrap() {
            swept += c.rows_swept;
        }
    }
    assert!(swept > 0, "the reload swept nothing");
    let mut cols = vec!["id", "name", "_dms_seq", "_dms_commit_ts"];
    if soft {
        cols.extend(["_dms_deleted", "_dms_deleted_at"]);
    }
    let feed = check_feed(&m, "pg.app.t", &cols, &["id"]).await;
    let two = Value::Str("two".into());
    let i = feed.columns.iter().position(|c| c == "name").unwrap();
    let ct = feed.columns.iter().position(|c| c == "_change_type").unwrap();
    let sweep_kind = if soft { "update_postimage" } else { "delete" };
    assert!(
        feed.rows
            .iter()
            .any(|r| r[i] == two && r[ct] == Value::Str(sweep_kind.into())),
        "the sweep of row 2 is not in the feed:\n{}",
        feed.lines().join("\n")
    );
}

macro_rules! reload_modes {
    ($($name:ident => ($commit:expr, $soft:expr)),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $name() {
                a_reload_sweep_is_in_the_feed($commit, $soft).await;
            }
        )*
    };
}

reload_modes! {
    reload_sweep_copy_on_write_hard => (FEED, false),
    reload_sweep_copy_on_write_soft => (FEED, true),
    reload_sweep_merge_on_read_hard => (FEED_DV, false),
    reload_sweep_merge_on_read_soft => (FEED_DV, true),
}

/// Turning the option on for a table that exists starts the feed at that version; turning it
/// off sets the property to false, so no engine expects change files any more.
#[tokio::test]
async fn the_option_switches_the_table_property_both_ways() {
    let m = Mini::new(PQ_SOURCE, "");
    m.apply(
        &pq(2),
        &changes(
            &["I", "I"],
            &[1, 2],
            &[Some("a"), Some("b")],
            &[Some(1), Some(2)],
            false,
        ),
    )
    .await;
    let open = || async {
        dms2delta::lake::open(&m.pipeline.stores, &m.location(T))
            .await
            .unwrap()
            .0
    };
    let property = |t: &deltalake::DeltaTable| {
        t.snapshot()
            .unwrap()
            .metadata()
            .configuration()
            .get("delta.enableChangeDataFeed")
            .cloned()
    };
    assert_eq!(property(&open().await), None);
    // The same lake, now with the option.
    let d = m.dir.path().display();
    let config = |feed: bool| {
        format!(
            "lake: {d}/lake\nstaging: {d}/staged\nquarantine: {d}/quarantine\nstorage:\n  buckets:\n    dms: {d}/bucket\ncommit:\n  change_data_feed: {feed}\nsources:\n{PQ_SOURCE}"
        )
    };
    let run = |feed: bool, i: u32, bytes: Vec<u8>| {
        let text = config(feed);
        let m = &m;
        async move {
            let p = support::pipeline(&text, None);
            m.put(&pq(i), &bytes);
            p.decode("dms", &pq(i), Some("etag".into()), Default::default())
                .await
                .unwrap();
            p.commit_all().await.unwrap()
        }
    };
    let before = open().await.version().unwrap();
    let c = run(true, 3, changes(&["U"], &[1], &[Some("a2")], &[Some(1)], false)).await;
    assert_eq!(c[0].rows_updated, 1, "{c:?}");
    let t = open().await;
    assert_eq!(property(&t).as_deref(), Some("true"));
    // The property went on in its own commit, before the update: the feed starts there.
    let batches = dms2delta::operations::change_feed::read(&t, before + 1, None)
        .await
        .unwrap();
    let kinds: Vec<String> = dms2delta::sim::rows_of(&batches, &["_change_type".to_string()])
        .unwrap()
        .into_iter()
        .map(|r| r[0].canonical())
        .collect();
    assert_eq!(kinds, vec!["update_postimage", "update_preimage"]);
    run(false, 4, changes(&["U"], &[2], &[Some("b2")], &[Some(2)], false)).await;
    assert_eq!(property(&open().await).as_deref(), Some("false"));
}

/// Headerless CSV with an explicit sequence column, partitioned by `n`.
const PARTITIONED: &str = r#"
  - name: my
    bucket: dms
    sequence_column: AR_H_CHANGE_SEQ
    tables:
      - schema: app
        table: t
        keys: [id]
        partition_by: [n]
        columns:
          - { name: id, type: INT8 }
          - { name: name, type: STRING }
          - { name: n, type: INT4 }
          - { name: AR_H_CHANGE_SEQ, type: STRING }
"#;

/// Change files of a partitioned table carry their partition values as data files do: an
/// update in place, one that moves its row to another partition, and a delete.
async fn a_partitioned_table_has_its_changes_in_the_feed(commit: &str) {
    let m = Mini::new(PARTITIONED, commit);
    let csv = |i: u32| format!("app/t/20240528-1951413{i:02}.csv");
    m.apply(&csv(1), b"I,1,a,1,1\nI,2,b,2,2\nI,3,c,2,3\n").await;
    m.apply(&csv(2), b"U,1,a2,1,4\nU,2,b2,3,5\nD,3,,,6\n").await;
    m.apply(&csv(3), b"U,2,late,9,4\n").await;
    let cols = ["id", "name", "n", "_dms_seq"];
    let feed = check_feed(&m, "my.app.t", &cols, &["id"]).await;
    let ctx = feed.lines().join("\n");
    assert_eq!(
        (
            feed.count("insert"),
            feed.count("update_preimage"),
            feed.count("delete")
        ),
        (3, 2, 1),
        "{ctx}"
    );
    assert!(!feed.holds("name", &Value::Str("late".into())), "{ctx}");
}

#[tokio::test]
async fn partitioned_copy_on_write() {
    a_partitioned_table_has_its_changes_in_the_feed(FEED).await;
}

#[tokio::test]
async fn partitioned_merge_on_read() {
    a_partitioned_table_has_its_changes_in_the_feed(FEED_DV).await;
}

/// Every table of a simulated history (types, renames, widening, soft deletes, unlogged
/// columns, reloads, as the simulator varies them): its feed, read both ways, replays into the
/// table.
async fn check_lab_feeds(lab: &support::Lab, context: &str) {
    for name in lab.sim.expected.keys() {
        let mut p = name.splitn(3, '.');
        let (ns, s, t) = (p.next().unwrap(), p.next().unwrap(), p.next().unwrap());
        let spec = lab.pipeline.config.table_by_target(ns, s, t).unwrap();
        let loc = lab.pipeline.table_location(&spec);
        let batches = lab.pipeline.read_table(&loc).await.unwrap();
        let columns: Vec<String> = batches[0].schema().fields().iter().map(|f| f.name().clone()).collect();
        let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
        let keys: Vec<&str> = lab.sim.columns[name][..lab.sim.key_columns[name]]
            .iter()
            .map(String::as_str)
            .collect();
        let feed = feed::read(&lab.pipeline.stores, &loc, &cols).await;
        let mut replayed = feed
            .replay(&keys)
            .unwrap_or_else(|e| panic!("{context}, table {name}: replaying the feed: {e}"));
        replayed.sort();
        let table = dms2delta::sim::rows_of(&batches, &columns).unwrap();
        assert_eq!(
            replayed, table,
            "{context}, table {name}: the feed replayed is not the table"
        );
        if !support::skip_python() {
            let (table, endpoint) = match lab.on {
                support::On::Folders => (lab.lake_dir().join(name.replace('.', "/")).display().to_string(), None),
                support::On::S3 => (loc.url(), Some(support::s3::moto().url.as_str())),
            };
            let py = feed::read_with_python(&table, endpoint, &feed.columns).unwrap();
            assert_eq!(
                py,
                feed.lines(),
                "{context}, table {name}: the Python reader's feed differs"
            );
        }
    }
}

async fn a_simulated_history_in_order_replays_from_its_feed(on: support::On) {
    // On the S3 endpoint, merge-on-read only: the change files dms2delta writes itself (the
    // copy-on-write ones are delta-rs's, checked on folders). CI time.
    let modes: &[bool] = if on == support::On::S3 { &[true] } else { &[false, true] };
    for &dv in modes {
        let opts = dms2delta::sim::SimOptions {
            seed: 7,
            tables: 2,
            variety: true,
            // An S3 endpoint stamps its own LastModified, which reload detection reads.
            reloads: on == support::On::Folders,
            ..Default::default()
        };
        let lab = support::Lab::configured(on, &opts, None, None, dv, FEED).await;
        // Not `one_commit_per_file`: its log check wants the protocol a table without the
        // feed has (writer 2); the feed raises it to writer 4.
        let mut swept = 0;
        for f in &lab.sim.files {
            lab.pipeline
                .decode(&lab.bucket, &f.key, Some("e".into()), Default::default())
                .await
                .unwrap();
            swept += lab
                .pipeline
                .commit_all()
                .await
                .unwrap()
                .iter()
                .map(|c| c.rows_swept)
                .sum::<u64>();
        }
        lab.check().await.unwrap();
        // Seed 7 reloads a table part way (on folders, where reloads are simulated): its sweep
        // must be in the feed too.
        if on == support::On::Folders {
            assert!(swept > 0, "deletion vectors {dv}: no reload swept a row");
        }
        check_lab_feeds(&lab, &format!("in order on {on:?}, deletion vectors {dv}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_history_in_order_replays_from_its_feed_on_folders() {
    a_simulated_history_in_order_replays_from_its_feed(support::On::Folders).await;
}

/// The same on the local S3 endpoint: change files go through the table's S3 store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_history_in_order_replays_from_its_feed_on_s3() {
    a_simulated_history_in_order_replays_from_its_feed(support::On::S3).await;
}

/// Files delivered in a shuffled order, committed at random points: late older changes are
/// refused and must not reach the feed, which still replays into the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_history_in_any_order_replays_from_its_feed() {
    let mut stale = 0;
    // One seed per merge mode (CI time; each seed's refusals are counted below).
    for seed in [21u64, 22] {
        let opts = dms2delta::sim::SimOptions {
            seed,
            tables: 2,
            keys: 10,
            changes: 40,
            max_file_changes: 6,
            variety: true,
            ..Default::default()
        };
        let dv = seed % 2 == 0;
        let lab = support::Lab::new_configured(&opts, None, dv, FEED);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut keys: Vec<String> = lab.sim.files.iter().map(|f| f.key.clone()).collect();
        rng.shuffle(&mut keys);
        let mut commits = Vec::new();
        for k in &keys {
            lab.pipeline
                .decode(&lab.bucket, k, Some("e".into()), Default::default())
                .await
                .unwrap();
            if rng.bool() {
                commits.extend(lab.pipeline.commit_all().await.unwrap());
            }
        }
        commits.extend(lab.pipeline.commit_all().await.unwrap());
        stale += commits.iter().map(|c| c.rows_stale).sum::<u64>();
        let context = format!("seed {seed}, deletion vectors {dv}");
        lab.check().await.unwrap_or_else(|e| panic!("{context}: {e}"));
        check_lab_feeds(&lab, &context).await;
    }
    // The shuffles must have made the guard refuse something, or the test proves little.
    assert!(stale > 0, "no change was refused as stale");
}

/// Headerless CSV with an explicit sequence and a not-logged marker.
const UNLOGGED: &str = r##"
  - name: my
    bucket: dms
    sequence_column: AR_H_CHANGE_SEQ
    csv: { no_sup_value: "#NOSUP#" }
    tables:
      - schema: app
        table: t
        keys: [id]
        columns:
          - { name: id, type: INT8 }
          - { name: name, type: STRING }
          - { name: n, type: INT4 }
          - { name: AR_H_CHANGE_SEQ, type: STRING }
"##;

/// Updates that did not log `name`, a delete and a re-insert between them (the files of the
/// contract's per-column test).
const UNLOGGED_FILES: [&[u8]; 5] = [
    b"I,1,a,1,1\nI,2,x,1,2\n",
    b"U,1,b,2,3\nU,2,#NOSUP#,2,4\n",
    b"U,1,#NOSUP#,3,5\nD,2,,,6\n",
    b"U,1,#NOSUP#,4,7\nI,2,y,4,8\n",
    b"U,2,#NOSUP#,5,10\nI,3,z,1,11\nU,3,#NOSUP#,2,12\n",
];

/// A late older change that still sets a column the newer ones did not log changes the row:
/// the feed has it as an update, with every column's own sequence, and still replays into the
/// table.
#[tokio::test]
async fn a_late_change_that_fills_an_unlogged_column_is_in_the_feed() {
    for (mode, commit, soft) in [
        ("copy-on-write", FEED, false),
        ("merge-on-read", FEED_DV, false),
        ("soft merge-on-read", FEED_DV, true),
    ] {
        let source = if soft {
            UNLOGGED.replace("keys: [id]", "keys: [id]\n        delete_mode: soft")
        } else {
            UNLOGGED.to_string()
        };
        let m = Mini::new(&source, commit);
        for f in [4usize, 3, 2, 1, 0] {
            m.apply(&format!("app/t/20240528-1951413{:02}.csv", f + 1), UNLOGGED_FILES[f])
                .await;
        }
        let columns: Vec<String> = m.batches("my.app.t").await[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert!(
            columns.iter().any(|c| c.starts_with("_dms_seq_of_")),
            "{mode}: no per-column sequence in {columns:?}"
        );
        let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
        let feed = check_feed(&m, "my.app.t", &cols, &["id"]).await;
        // Key 1's text comes from the oldest update but one, applied last but one.
        let b = Value::Str("b".into());
        let i = feed.columns.iter().position(|c| c == "name").unwrap();
        let ct = feed.columns.iter().position(|c| c == "_change_type").unwrap();
        assert!(
            feed.rows
                .iter()
                .any(|r| r[i] == b && r[ct] == Value::Str("update_postimage".into())),
            "{mode}: the fill is not in the feed:\n{}",
            feed.lines().join("\n")
        );
    }
}
