//! One test per promise of docs/replication-contract.md that the convergence test does not pin
//! down on its own: each fails if its promise breaks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use arrow::array::AsArray;
use dms2delta::failpoint::Failpoints;
use dms2delta::faults::{Call, FaultyStore};
use dms2delta::operations::commit::applied_files;
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::operations::truncate::RemovalOutcome;
use dms2delta::sim::rows_of;
use support::reload::{put_written, Written, C1, C2, GEN0, GEN1, RELOADED};
use support::{parquet, Mini};

/// Headerless CSV with Op and an explicit sequence column, so tests choose the order.
const SEQ_SOURCE: &str = r#"
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
          - { name: n, type: INT4 }
          - { name: AR_H_CHANGE_SEQ, type: STRING }
"#;

const T: &str = "my.app.t";

/// Added to the `commit:` settings: merge-on-read.
const DELETION_VECTORS: &str = "  deletion_vectors: true\n";

/// Each merge promise is checked with copy-on-write commits and again with merge-on-read
/// (deletion vectors), which applies the same changes by another route.
macro_rules! both_modes {
    ($($name:ident => $dv:ident),* $(,)?) => {
        mod merge_modes {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name("").await;
                }

                #[tokio::test]
                async fn $dv() {
                    super::$name(super::DELETION_VECTORS).await;
                }
            )*
        }
    };
}

both_modes! {
    a_late_older_change_never_overwrites_a_newer_one => a_late_older_change_never_overwrites_a_newer_one_dv,
    a_late_change_after_a_delete_does_not_bring_the_row_back => a_late_change_after_a_delete_does_not_bring_the_row_back_dv,
    full_load_rows_sort_before_every_cdc_change => full_load_rows_sort_before_every_cdc_change_dv,
    soft_delete_keeps_the_row_flagged_and_still_refuses_late_changes => soft_delete_keeps_the_row_flagged_and_still_refuses_late_changes_dv,
    a_soft_deleted_row_holds_its_full_delete_image_in_any_order => a_soft_deleted_row_holds_its_full_delete_image_in_any_order_dv,
    a_column_added_at_the_source_is_added_to_the_table => a_column_added_at_the_source_is_added_to_the_table_dv,
    a_column_the_source_did_not_log_keeps_its_value => a_column_the_source_did_not_log_keeps_its_value_dv,
    an_update_that_did_not_log_a_large_value_keeps_it => an_update_that_did_not_log_a_large_value_keeps_it_dv,
    a_partitioned_table_follows_its_rows_across_partitions => a_partitioned_table_follows_its_rows_across_partitions_dv,
    no_partial_commit_when_the_log_write_fails => no_partial_commit_when_the_log_write_fails_dv,
    versions_and_source_files_trace_each_other => versions_and_source_files_trace_each_other_dv,
}

async fn a_partitioned_table_follows_its_rows_across_partitions(extra: &str) {
    let m = Mini::new(
        &SEQ_SOURCE
            .replace("keys: [id]", "keys: [id]\n        partition_by: [n]")
            .replace(
                "    sequence_column:",
                "    csv: { no_sup_value: \"#NOSUP#\" }\n    sequence_column:",
            ),
        extra,
    );
    m.apply(&cdc(1), b"I,1,a,1,1\nI,2,b,2,2\nI,3,c,2,3\n").await;
    // An update in place, one that moves its row to another partition, and a delete.
    m.apply(&cdc(2), b"U,1,a2,1,4\nU,2,b2,3,5\nD,3,,,6\n").await;
    assert_eq!(
        m.rows(T, &["id", "name", "n"]).await,
        vec![vec!["1", "a2", "1"], vec!["2", "b2", "3"]]
    );
    // A partition value the change did not log is kept from the stored row.
    m.apply(&cdc(3), b"U,2,b3,#NOSUP#,7\n").await;
    assert_eq!(
        m.rows(T, &["id", "name", "n"]).await,
        vec![vec!["1", "a2", "1"], vec!["2", "b3", "3"]]
    );
    let (table, _) = dms2delta::lake::open(&m.pipeline.stores, &m.location(T)).await.unwrap();
    let parts = table.snapshot().unwrap().metadata().partition_columns().to_vec();
    assert_eq!(parts, vec!["n".to_string()]);
}

async fn a_column_the_source_did_not_log_keeps_its_value(extra: &str) {
    let m = Mini::new(
        &SEQ_SOURCE.replace(
            "    sequence_column:",
            "    csv: { no_sup_value: \"#NOSUP#\" }\n    sequence_column:",
        ),
        extra,
    );
    m.apply(&cdc(1), b"I,1,a,1,1\nI,2,b,1,2\n").await;
    // DMS leaves out a column it did not log (a LOB, an unchanged TOAST value): the stored one stays.
    let u = m.apply(&cdc(2), b"U,1,#NOSUP#,5,3\nU,2,c,#NOSUP#,4\n").await;
    assert_eq!(u.rows_updated, 2, "{u:?}");
    assert_eq!(
        m.rows(T, &["id", "name", "n"]).await,
        vec![vec!["1", "a", "5"], vec!["2", "c", "1"]]
    );
    // A stale change with the sentinel changes nothing.
    let stale = m.apply(&cdc(3), b"U,1,#NOSUP#,9,2\n").await;
    assert_eq!(stale.rows_stale, 1, "{stale:?}");
    assert_eq!(
        m.rows(T, &["id", "name", "n"]).await,
        vec![vec!["1", "a", "5"], vec!["2", "c", "1"]]
    );
}

fn cdc(i: u32) -> String {
    format!("app/t/20240528-1951413{i:02}.csv")
}

async fn a_late_older_change_never_overwrites_a_newer_one(extra: &str) {
    let m = Mini::new(SEQ_SOURCE, extra);
    m.apply(&cdc(1), b"I,1,new,2,6\n").await;
    let stale = m.apply(&cdc(2), b"U,1,old,1,4\n").await;
    assert_eq!(stale.rows_stale, 1, "{stale:?}");
    assert_eq!(stale.rows_updated, 0);
    assert_eq!(m.rows(T, &["id", "name", "n"]).await, vec![vec!["1", "new", "2"]]);
    // The stored sequence is the newest one applied.
    let b = m.batches(T).await;
    let seq = arrow::compute::cast(
        b[0].column(b[0].schema().index_of("_dms_seq").unwrap()),
        &arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    let seq = seq.as_string::<i32>();
    assert_eq!(seq.value(0), format!("1S{:035}", 6));
}

async fn a_late_change_after_a_delete_does_not_bring_the_row_back(extra: &str) {
    let m = Mini::new(SEQ_SOURCE, extra);
    m.apply(&cdc(1), b"I,1,a,1,1\nI,2,b,1,2\n").await;
    let del = m.apply(&cdc(2), b"D,1,,,5\n").await;
    assert_eq!((del.rows_deleted, del.tombstones_written), (1, 1));
    assert_eq!(m.rows(T, &["id"]).await, vec![vec!["2"]]);
    // An update and an insert older than the delete arrive late: both refused.
    m.apply(&cdc(3), b"U,1,late,9,3\n").await;
    m.apply(&cdc(4), b"I,1,late,9,4\n").await;
    assert_eq!(m.rows(T, &["id"]).await, vec![vec!["2"]]);
    // A delete that arrives before the insert it follows: the insert never shows up.
    m.apply(&cdc(5), b"D,3,,,9\n").await;
    m.apply(&cdc(6), b"I,3,early,1,8\n").await;
    assert_eq!(m.rows(T, &["id"]).await, vec![vec!["2"]]);
    // A re-insert newer than the delete is applied.
    m.apply(&cdc(7), b"I,1,back,7,10\n").await;
    assert_eq!(
        m.rows(T, &["id", "name"]).await,
        vec![vec!["1", "back"], vec!["2", "b"]]
    );
}

async fn full_load_rows_sort_before_every_cdc_change(extra: &str) {
    let m = Mini::new(SEQ_SOURCE, extra);
    m.apply(&cdc(1), b"U,1,cdc,2,100\n").await;
    // The full load of the same table is processed afterwards (events are unordered).
    m.apply("app/t/LOAD00000001.csv", b"1,load,1,\n2,load,1,\n").await;
    assert_eq!(
        m.rows(T, &["id", "name"]).await,
        vec![vec!["1", "cdc"], vec!["2", "load"]]
    );
}

async fn soft_delete_keeps_the_row_flagged_and_still_refuses_late_changes(extra: &str) {
    let m = Mini::new(
        &SEQ_SOURCE.replace("keys: [id]", "keys: [id]\n        delete_mode: soft"),
        extra,
    );
    m.apply(&cdc(1), b"I,1,a,1,1\n").await;
    m.apply(&cdc(2), b"D,1,,,5\n").await;
    let rows = m.rows(T, &["id", "name", "_dms_deleted"]).await;
    assert_eq!(rows, vec![vec!["1", "a", "true"]]);
    let b = m.batches(T).await;
    let at = b[0].column(b[0].schema().index_of("_dms_deleted_at").unwrap());
    assert_eq!(arrow::array::Array::null_count(at.as_ref()), 0);
    m.apply(&cdc(3), b"U,1,late,1,3\n").await;
    assert_eq!(
        m.rows(T, &["id", "name", "_dms_deleted"]).await,
        vec![vec!["1", "a", "true"]]
    );
    m.apply(&cdc(4), b"I,1,again,1,7\n").await;
    assert_eq!(
        m.rows(T, &["id", "name", "_dms_deleted"]).await,
        vec![vec!["1", "again", "false"]]
    );
    // A delete of a key the table never held leaves a deleted marker, which refuses a late insert.
    m.apply(&cdc(5), b"D,9,,,20\n").await;
    m.apply(&cdc(6), b"I,9,late,1,15\n").await;
    assert_eq!(
        m.rows(T, &["id", "name", "_dms_deleted"]).await,
        vec![vec!["1", "again", "false"], vec!["9", "null", "true"]]
    );
}

/// A full delete image (MySQL, Oracle with supplemental logging, PostgreSQL with REPLICA
/// IDENTITY FULL) is the row as it was deleted: the soft-deleted row holds it whether the older
/// changes came before the delete, after it, or not at all.
async fn a_soft_deleted_row_holds_its_full_delete_image_in_any_order(extra: &str) {
    let soft = SEQ_SOURCE.replace("keys: [id]", "keys: [id]\n        delete_mode: soft");
    let files: [(String, &[u8]); 3] = [
        (cdc(1), b"I,1,a,1,1\n"),
        (cdc(2), b"U,1,b,2,3\n"),
        (cdc(3), b"D,1,b,2,5\n"),
    ];
    // The delete alone: its sequence is what every order must store.
    let alone = Mini::new(&soft, extra);
    alone.apply(&files[2].0, files[2].1).await;
    let want = alone.rows(T, &["id", "name", "n", "_dms_deleted", "_dms_seq"]).await;
    assert_eq!(want[0][..4], ["1", "b", "2", "true"]);
    for order in [[0, 1, 2], [2, 0, 1], [1, 2, 0], [0, 2, 1]] {
        let m = Mini::new(&soft, extra);
        for i in order {
            m.apply(&files[i].0, files[i].1).await;
        }
        assert_eq!(
            m.rows(T, &["id", "name", "n", "_dms_deleted", "_dms_seq"]).await,
            want,
            "order {order:?}"
        );
    }
    // A key-only image after a full row keeps the row's values.
    let m = Mini::new(&soft, extra);
    m.apply(&cdc(1), b"I,2,c,3,1\n").await;
    m.apply(&cdc(2), b"D,2,,,4\n").await;
    assert_eq!(
        m.rows(T, &["id", "name", "n", "_dms_deleted"]).await,
        vec![vec!["2", "c", "3", "true"]]
    );
}

const HEADER_SOURCE: &str = r#"
  - name: pg
    bucket: dms
    csv: { header: true }
    tables:
      - schema: app
        table: t
        keys: [id]
        columns:
          - { name: id, type: INT8 }
          - { name: name, type: STRING }
          - { name: extra, type: INT4 }
"#;

/// Without deletion vectors a commit retires the rows it replaces by writing their data files
/// again without them, in its own commit, and only the files statistics say may hold a changed
/// key: a file of other keys is neither read nor rewritten, and the copied rows are counted.
#[tokio::test]
async fn a_copy_on_write_commit_rewrites_only_the_files_holding_a_changed_key() {
    let m = Mini::new(HEADER_SOURCE, "");
    m.apply("app/t/20240528-195141301.csv", b"Op,id,name\nI,1,a\nI,2,b\n")
        .await;
    let m1 = m
        .apply("app/t/20240528-195141302.csv", b"Op,id,name\nI,10,j\nI,11,k\n")
        .await;
    assert_eq!(
        (m1.files_scanned, m1.files_removed, m1.files_added),
        (0, 0, 1),
        "{m1:?}"
    );
    let m2 = m
        .apply("app/t/20240528-195141303.csv", b"Op,id,name\nU,2,b2\nD,1,\n")
        .await;
    // Keys 10 and 11's file is outside the changes' key range: not read, not rewritten.
    assert_eq!(m2.files_scanned, 1, "{m2:?}");
    assert_eq!((m2.files_removed, m2.files_added), (1, 1), "{m2:?}");
    assert_eq!((m2.rows_updated, m2.rows_deleted, m2.rows_copied), (1, 1, 0), "{m2:?}");
    assert_eq!((m2.dv_files, m2.dv_rows), (0, 0), "{m2:?}");
    let m3 = m.apply("app/t/20240528-195141304.csv", b"Op,id,name\nU,11,k2\n").await;
    // Key 10 shares the file: copied unchanged.
    assert_eq!(
        (m3.files_scanned, m3.files_removed, m3.rows_copied),
        (1, 1, 1),
        "{m3:?}"
    );
    assert_eq!(
        m.rows("pg.app.t", &["id", "name"]).await,
        vec![vec!["2", "b2"], vec!["10", "j"], vec!["11", "k2"]]
    );
    // No deletion vector: any reader of plain Delta tables reads it.
    let loc = m.location("pg.app.t");
    let dms2delta::storage::Location::Local { dir } = loc else {
        panic!("{loc:?}")
    };
    let table = deltalake::open_table(url::Url::from_directory_path(&dir).unwrap())
        .await
        .unwrap();
    assert!(!dms2delta::operations::commit::has_deletion_vectors(&table));
}

async fn a_column_added_at_the_source_is_added_to_the_table(extra: &str) {
    let m = Mini::new(HEADER_SOURCE, extra);
    m.apply("app/t/20240528-195141301.csv", b"Op,id,name\nI,1,a\nI,2,b\n")
        .await;
    let m2 = m
        .apply("app/t/20240528-195141302.csv", b"Op,id,name,extra\nU,2,b,7\nI,3,c,8\n")
        .await;
    assert_eq!((m2.rows_updated, m2.rows_inserted), (1, 1));
    // Row 1 shares the data file that held row 2, so the MERGE wrote it again unchanged.
    assert_eq!(m2.rows_copied, 1);
    assert_eq!(
        m.rows("pg.app.t", &["id", "name", "extra"]).await,
        vec![vec!["1", "a", "null"], vec!["2", "b", "7"], vec!["3", "c", "8"]]
    );
    // A late file in the old shape updates what it has and keeps the new column's value.
    m.apply("app/t/20240528-195141303.csv", b"Op,id,name\nU,3,c2\n").await;
    assert_eq!(
        m.rows("pg.app.t", &["id", "name", "extra"]).await[2],
        vec!["3", "c2", "8"]
    );
}

const PQ_SOURCE: &str = r#"
  - name: ora
    bucket: dms
    tables:
      - schema: app
        table: t
        keys: [id]
"#;

#[tokio::test]
async fn safe_type_widening_is_applied_and_an_unsafe_change_is_quarantined() {
    use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::DataType;
    let m = Mini::new(PQ_SOURCE, "");
    let op = |v: &[&str]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
    m.apply(
        "app/t/20240528-195141301.parquet",
        &parquet(vec![
            ("Op", DataType::Utf8, op(&["I", "I"])),
            ("id", DataType::Int64, Arc::new(Int64Array::from(vec![1, 2]))),
            ("n", DataType::Int32, Arc::new(Int32Array::from(vec![10, 20]))),
        ]),
    )
    .await;
    // INT widened to BIGINT at the source.
    m.apply(
        "app/t/20240528-195141302.parquet",
        &parquet(vec![
            ("Op", DataType::Utf8, op(&["U"])),
            ("id", DataType::Int64, Arc::new(Int64Array::from(vec![2]))),
            ("n", DataType::Int64, Arc::new(Int64Array::from(vec![1i64 << 40]))),
        ]),
    )
    .await;
    assert_eq!(
        m.rows("ora.app.t", &["id", "n"]).await,
        vec![
            vec!["1".to_string(), "10".into()],
            vec!["2".into(), (1i64 << 40).to_string()]
        ]
    );
    let b = m.batches("ora.app.t").await;
    assert_eq!(
        b[0].schema().field_with_name("n").unwrap().data_type(),
        &DataType::Int64
    );

    // BIGINT to text is not safe: the change set is quarantined, the table untouched.
    let loc = m.location("ora.app.t");
    let before = applied_files(&m.pipeline.stores, &loc, None).await.unwrap().len();
    m.put(
        "app/t/20240528-195141303.parquet",
        &parquet(vec![
            ("Op", DataType::Utf8, op(&["U"])),
            ("id", DataType::Int64, Arc::new(Int64Array::from(vec![1]))),
            ("n", DataType::Utf8, op(&["abc"])),
        ]),
    );
    m.decode("app/t/20240528-195141303.parquet").await;
    let res = m.pipeline.commit_all().await.unwrap();
    assert_eq!(res[0].quarantined.len(), 1, "{res:?}");
    assert_eq!(res[0].change_sets, 0);
    assert_eq!(
        applied_files(&m.pipeline.stores, &loc, None).await.unwrap().len(),
        before
    );
    let report_path = m.dir.path().join("quarantine").join(&res[0].quarantined[0]);
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(report_path).unwrap()).unwrap();
    assert_eq!(report["stage"], "commit");
    assert_eq!(report["kind"], "incompatible_schema");
    assert!(report["reason"].as_str().unwrap().contains("column `n`"), "{report}");
    assert!(report["file"].as_str().unwrap().ends_with("20240528-195141303.parquet"));
    assert_eq!(m.rows("ora.app.t", &["id", "n"]).await[0], vec!["1", "10"]);
}

async fn no_partial_commit_when_the_log_write_fails(extra: &str) {
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = fail.clone();
    let m = Mini::new(SEQ_SOURCE, extra);
    let stores = dms2delta::storage::Stores::new(m.pipeline.config.config.storage.clone()).with_delta_wrapper(
        Arc::new(move |inner| {
            let f = f.clone();
            Arc::new(FaultyStore::new(inner, move |call, path| {
                call == Call::Put
                    && path.as_ref().contains("_delta_log/")
                    && f.load(std::sync::atomic::Ordering::SeqCst)
            }))
        }),
    );
    let p = dms2delta::pipeline::Pipeline::new(m.pipeline.config.clone(), Arc::new(stores));
    m.apply(&cdc(1), b"I,1,a,1,1\n").await;
    let loc = m.location(T);
    let versions = applied_files(&p.stores, &loc, None).await.unwrap().len();
    m.put(&cdc(2), b"U,1,b,2,2\nI,2,c,3,3\n");
    m.decode(&cdc(2)).await;
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = p.commit("my", "app", "t", Failpoints::default()).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    // Data files may have been written, but no version references them.
    assert_eq!(applied_files(&p.stores, &loc, None).await.unwrap().len(), versions);
    assert_eq!(m.rows(T, &["id", "name"]).await, vec![vec!["1", "a"]]);
    assert_eq!(
        p.pending().await.unwrap().len(),
        1,
        "the change set must still be staged"
    );
    fail.store(false, std::sync::atomic::Ordering::SeqCst);
    p.commit("my", "app", "t", Failpoints::default()).await.unwrap();
    assert_eq!(m.rows(T, &["id", "name"]).await, vec![vec!["1", "b"], vec!["2", "c"]]);
}

async fn versions_and_source_files_trace_each_other(extra: &str) {
    let m = Mini::new(SEQ_SOURCE, extra);
    let a = m.apply(&cdc(1), b"I,1,a,1,1\n").await;
    let b = m.apply(&cdc(2), b"U,1,b,1,2\n").await;
    // Even a commit whose changes were all stale is recorded.
    let c = m.apply(&cdc(3), b"U,1,old,1,1\n").await;
    assert_eq!(c.rows_stale, 1);
    let trace = applied_files(&m.pipeline.stores, &m.location(T), None).await.unwrap();
    let find = |file: &str| {
        trace
            .iter()
            .find(|(_, fs)| fs.iter().any(|f| f.ends_with(file)))
            .map(|(v, _)| *v)
    };
    assert_eq!(find(&cdc(1)), a.version);
    assert_eq!(find(&cdc(2)), b.version);
    assert_eq!(find(&cdc(3)), c.version);
    assert!(a.version < b.version && b.version < c.version);
    assert_eq!(a.source_files, vec![format!("s3://dms/{}", cdc(1))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_past_the_bound_go_back_to_the_queue_and_nothing_is_lost() {
    let m = Mini::new(SEQ_SOURCE, "");
    m.apply(&cdc(1), b"I,0,seed,0,1\n").await;
    let d = m.dir.path().display();
    let strict = format!(
        "lake: {d}/lake\nstaging: {d}/staged\nquarantine: {d}/quarantine\nstorage:\n  buckets:\n    dms: {d}/bucket\ncommit:\n  max_attempts: 1\nsources:\n{SEQ_SOURCE}"
    );
    let p = dms2delta::pipeline::Pipeline::new(
        Arc::new(dms2delta::config::Config::from_text(&strict).unwrap()),
        m.pipeline.stores.clone(),
    );
    // Eight files, then eight committers at once with no retries allowed.
    for i in 0..8u32 {
        let key = cdc(10 + i);
        m.put(&key, format!("I,{},x,{i},{}\n", i + 1, 100 + i).as_bytes());
        assert!(matches!(m.decode(&key).await, DecodeOutcome::Staged(_)));
    }
    let mut handles = Vec::new();
    for _ in 0..8 {
        let p = p.clone();
        handles.push(tokio::spawn(async move {
            p.commit("my", "app", "t", Failpoints::default()).await
        }));
    }
    let mut conflicts = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => {}
            Err(e @ dms2delta::Error::Conflict { .. }) => {
                assert!(e.is_retryable());
                conflicts += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The queue retries the failed ones: here, one more sweep.
    m.pipeline.commit_all().await.unwrap();
    assert_eq!(m.rows(T, &["id"]).await.len(), 9, "conflicts seen: {conflicts}");
}

/// A Delta log write lands but its answer is lost (for the table's log and for the tombstone
/// table's log) while another committer races on the same table: the tables end exact and every
/// version names the files it applied. Copy-on-write and merge-on-read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_neither_lost_nor_doubled() {
    use support::ambiguous::{ambiguous_commits, require_lost, Lost};
    let mut total = Lost::default();
    for (seed, dv) in [(31, false), (32, true)] {
        match ambiguous_commits(seed, support::On::Folders, dv).await {
            Ok(lost) => total += lost,
            Err(e) => panic!("{e}"),
        }
    }
    support::converge::shown(&format!("ambiguous commits on folders: {total:?}"));
    require_lost(&total).unwrap();
}

/// Headerless CSV without a sequence column: full-load rows are sequenced by their file and row,
/// CDC rows by their file's name time and row.
const PLAIN_SOURCE: &str = r#"
  - name: my
    bucket: dms
    tables:
      - schema: app
        table: t
        keys: [id]
        columns:
          - { name: id, type: INT8 }
          - { name: name, type: STRING }
          - { name: n, type: INT4 }
      - schema: app
        table: docs
        keys: [id]
        columns:
          - { name: id, type: INT8 }
          - { name: name, type: STRING }
          - { name: n, type: INT4 }
"#;

/// A parallel full load as DMS writes it (one partition folder per partition with its own
/// `LOAD00000001…` for partitions-auto / partitions-list / ranges with segment-names, and
/// `SEGMENTn_LOAD…` names for MongoDB/DocumentDB segmentation), then CDC, per table: (key, bytes).
fn parallel_load_files(table: &str) -> Vec<(String, &'static [u8])> {
    let loads: [(&str, &[u8]); 4] = if table == "t" {
        [
            ("p_north/LOAD00000001.csv", b"1,a,1\n2,b,1\n"),
            ("p_north/LOAD00000002.csv", b"3,c,1\n"),
            ("p_south/LOAD00000001.csv", b"4,d,2\n5,e,2\n"),
            ("p_west/LOAD00000001.csv", b"6,f,3\n7,g,3\n"),
        ]
    } else {
        [
            ("SEGMENT1_LOAD00000001.csv", b"1,a,1\n2,b,1\n"),
            ("SEGMENT1_LOAD00000002.csv", b"3,c,1\n"),
            ("SEGMENT2_LOAD00000001.csv", b"4,d,2\n5,e,2\n"),
            ("SEGMENT3_LOAD00000001.csv", b"6,f,3\n7,g,3\n"),
        ]
    };
    let cdc: [(&str, &[u8]); 3] = [
        // Updates, a delete, an insert of a new key, then that key deleted, a deleted key
        // inserted again, and a row moving to another partition's range.
        ("20240528-195141301.csv", b"U,1,a2,1\nD,4,,\nI,8,h,3\n"),
        ("20240528-195141302.csv", b"U,6,f2,3\nU,1,a3,1\nD,8,,\n"),
        ("20240528-195141303.csv", b"I,4,d2,2\nU,2,b2,2\n"),
    ];
    loads
        .into_iter()
        .chain(cdc)
        .map(|(f, b)| (format!("app/{table}/{f}"), b))
        .collect()
}

const PARALLEL_LOAD_END: [[&str; 3]; 7] = [
    ["1", "a3", "1"],
    ["2", "b2", "2"],
    ["3", "c", "1"],
    ["4", "d2", "2"],
    ["5", "e", "2"],
    ["6", "f2", "3"],
    ["7", "g", "3"],
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_full_load_in_several_series_and_its_cdc_end_exact_in_any_order() {
    let want: Vec<Vec<String>> = PARALLEL_LOAD_END
        .iter()
        .map(|r| r.iter().map(|v| v.to_string()).collect())
        .collect();
    let (mut cdc_before_load, mut duplicates) = (0, 0);
    for seed in 0..6u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let m = Mini::new(PLAIN_SOURCE, "");
        let mut files: Vec<(String, &[u8])> = parallel_load_files("t");
        files.extend(parallel_load_files("docs"));
        rng.shuffle(&mut files);
        // At-least-once delivery: some files come twice, anywhere.
        for _ in 0..2 {
            let again = files[rng.usize(..files.len())].clone();
            files.insert(rng.usize(..=files.len()), again);
            duplicates += 1;
        }
        let first_cdc = files.iter().position(|(k, _)| k.contains("/2024")).unwrap();
        let last_load = files.iter().rposition(|(k, _)| k.contains("LOAD")).unwrap();
        cdc_before_load += usize::from(first_cdc < last_load);
        // Seed 0 stages every file before one commit; the others commit at random points.
        let mut written = std::collections::HashSet::new();
        for (key, bytes) in &files {
            // A redelivered event names the object DMS wrote once.
            if written.insert(key.clone()) {
                m.put(key, bytes);
            }
            let out = m.decode(key).await;
            assert!(matches!(out, DecodeOutcome::Staged(_)), "seed {seed}, {key}: {out:?}");
            if seed > 0 && rng.bool() {
                m.pipeline.commit_all().await.unwrap();
            }
        }
        if seed == 0 {
            // Every file has its own change set: the same name in three partition folders
            // does not collide in staging.
            let staged = walk(&m.dir.path().join("staged/my/app/t"));
            assert_eq!(staged.len(), 7, "seed {seed}: {staged:?}");
        }
        m.pipeline.commit_all().await.unwrap();
        for table in ["my.app.t", "my.app.docs"] {
            assert_eq!(m.rows(table, &["id", "name", "n"]).await, want, "seed {seed}, {table}");
        }
        // Each file is traceable on its own, the partition folder included.
        let trace = applied_files(&m.pipeline.stores, &m.location("my.app.t"), None)
            .await
            .unwrap();
        let mut applied: Vec<String> = trace.into_iter().flat_map(|(_, fs)| fs).collect();
        applied.sort();
        applied.dedup();
        let mut expected: Vec<String> = parallel_load_files("t")
            .into_iter()
            .map(|(k, _)| format!("s3://dms/{k}"))
            .collect();
        expected.sort();
        assert_eq!(applied, expected, "seed {seed}");
        // Rows untouched since the full load keep a sequence naming their partition's file.
        let b = m.batches("my.app.t").await;
        let mut seqs: Vec<(i64, String)> = Vec::new();
        for batch in &b {
            let ids = arrow::compute::cast(
                batch.column(batch.schema().index_of("id").unwrap()),
                &arrow::datatypes::DataType::Int64,
            )
            .unwrap();
            let seq = arrow::compute::cast(
                batch.column(batch.schema().index_of("_dms_seq").unwrap()),
                &arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let (ids, seq) = (
                ids.as_primitive::<arrow::datatypes::Int64Type>(),
                seq.as_string::<i32>(),
            );
            seqs.extend((0..batch.num_rows()).map(|i| (ids.value(i), seq.value(i).to_string())));
        }
        seqs.sort();
        let seq_of = |id: i64| seqs.iter().find(|(i, _)| *i == id).map(|(_, s)| s.clone()).unwrap();
        assert_eq!(seq_of(3), format!("0Lp_north/LOAD00000002:{:012}", 1), "seed {seed}");
        assert_eq!(seq_of(5), format!("0Lp_south/LOAD00000001:{:012}", 2), "seed {seed}");
        assert_eq!(seq_of(7), format!("0Lp_west/LOAD00000001:{:012}", 2), "seed {seed}");
    }
    // The point of the shuffles: CDC reached the table before the full load finished.
    assert!(cdc_before_load > 0 && duplicates > 0, "{cdc_before_load} {duplicates}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misplaced_file_beside_a_parallel_load_is_quarantined_with_a_clear_report() {
    let m = Mini::new(PLAIN_SOURCE, "");
    let cases = [
        // CDC files never sit in partition folders.
        (
            "app/t/p_north/20240528-195141304.csv",
            &b"U,1,x,1\n"[..],
            "only full-load (LOAD…) files sit in parallel-load partition folders",
        ),
        // Parallel load writes one partition folder, not two.
        (
            "app/t/p_north/sub/LOAD00000001.csv",
            &b"9,x,1\n"[..],
            "one partition or segment folder",
        ),
    ];
    for (key, bytes, says) in cases {
        m.put(key, bytes);
        match m.decode(key).await {
            DecodeOutcome::Quarantined {
                report,
                report_location,
            } => {
                assert_eq!(report.file, format!("s3://dms/{key}"));
                assert_eq!(report.stage, dms2delta::error::Stage::Route, "{report:?}");
                assert_eq!(report.kind, dms2delta::error::BadInputKind::UnroutableKey);
                assert!(report.reason.contains(key), "{report:?}");
                assert!(report.reason.contains(says), "{report:?}");
                assert!(report.fix.contains("partition folder"), "{report:?}");
                let written = m.dir.path().join("quarantine").join(&report_location);
                let on_disk = std::fs::read_to_string(&written)
                    .or_else(|_| std::fs::read_to_string(&report_location))
                    .unwrap();
                assert!(
                    on_disk.contains("\"stage\": \"route\"") || on_disk.contains("\"stage\":\"route\""),
                    "{on_disk}"
                );
            }
            other => panic!("{key}: {other:?}"),
        }
    }
    assert!(m.pipeline.pending().await.unwrap().is_empty());
}

/// DMS names CDC files in `DatePartitionTimezone`. In the hour repeated when the clocks go back,
/// an older file's local name can sort after a newer one's; ordered by the true UTC instant
/// (LastModified tells the two candidates apart), the newer change wins in either delivery order.
#[tokio::test]
async fn cdc_file_names_in_local_time_order_by_their_utc_instant_across_the_fall_back_hour() {
    const ZONED: &str = r#"
  - name: pg
    bucket: dms
    csv: { header: true }
    date_partitioning: { enabled: true, timezone: America/New_York }
    tables:
      - schema: app
        table: t
        keys: [id]
"#;
    let at = |rfc3339: &str| -> std::time::SystemTime { chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().into() };
    // 01:50 EDT (05:50 UTC), then 01:10 EST (06:10 UTC): the second file is the newer one.
    let older = (
        "app/t/2024/11/03/20241103-015000000.csv",
        b"Op,id,name\nU,1,older\n",
        at("2024-11-03T05:50:41Z"),
    );
    let newer = (
        "app/t/2024/11/03/20241103-011000000.csv",
        b"Op,id,name\nU,1,newer\n",
        at("2024-11-03T06:10:37Z"),
    );
    for order in [[&older, &newer], [&newer, &older]] {
        let m = Mini::new(ZONED, "");
        for (key, bytes, modified) in order {
            m.put(key, *bytes);
            let p = m.dir.path().join("bucket").join(key);
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(*modified)
                .unwrap();
            m.decode(key).await;
            m.pipeline.commit_all().await.unwrap();
        }
        assert_eq!(
            m.rows("pg.app.t", &["id", "name"]).await,
            vec![vec!["1", "newer"]],
            "{order:?}"
        );
    }
    // A zone that does not fit DMS's names is refused at load with the field's path.
    let e = dms2delta::config::Config::from_text(&format!(
        "lake: /l\nstaging: /s\nquarantine: /q\nsources:\n{}",
        ZONED.replace("America/New_York", "Mars/Olympus")
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("sources[0].date_partitioning.timezone"), "{e}");
}

const RENAMED: &str = r#"
  - name: pg
    bucket: dms
    csv: { header: true }
    tables:
      - schema: app
        table: customers
        keys: [id]
      - schema: app
        table: clients
        keys: [id]
        renamed_from: { schema: app, table: customers }
        renamed_columns: { full_name: name }
"#;

/// DMS Rename Table and Rename Column: with `renamed_from` and `renamed_columns`, files of the
/// new name go on in the old name's Delta table and column, in any order with late files of
/// the old name; without them the new name is a new table.
#[tokio::test]
async fn a_table_and_a_column_renamed_at_the_source_stay_one_delta_table() {
    let files: [(&str, &[u8]); 3] = [
        ("app/customers/20240528-195141300.csv", b"Op,id,name\nI,1,ann\nI,2,bo\n"),
        ("app/customers/20240528-195141310.csv", b"Op,id,name\nU,1,ann-old\n"),
        (
            "app/clients/20240528-195141320.csv",
            b"Op,id,full_name\nU,1,Ann New\nI,3,cy\n",
        ),
    ];
    for order in [[0, 1, 2], [0, 2, 1], [2, 1, 0]] {
        let m = Mini::new(RENAMED, "");
        for i in order {
            m.apply(files[i].0, files[i].1).await;
        }
        assert_eq!(
            m.rows("pg.app.customers", &["id", "name"]).await,
            vec![vec!["1", "Ann New"], vec!["2", "bo"], vec!["3", "cy"]],
            "order {order:?}"
        );
        let columns: Vec<String> = m.batches("pg.app.customers").await[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert!(!columns.contains(&"full_name".to_string()), "{columns:?}");
        assert!(!m.dir.path().join("lake/pg/app/clients").exists());
    }
    // Without the declarations, the new name is a table of its own.
    let plain = RENAMED
        .replace("        renamed_from: { schema: app, table: customers }\n", "")
        .replace("        renamed_columns: { full_name: name }\n", "");
    let m = Mini::new(&plain, "");
    m.apply(files[0].0, files[0].1).await;
    m.apply(files[2].0, files[2].1).await;
    assert_eq!(
        m.rows("pg.app.clients", &["id", "full_name"]).await,
        vec![vec!["1", "Ann New"], vec!["3", "cy"]]
    );
}

#[test]
fn renames_that_would_mix_tables_are_refused_at_load() {
    let load = |sources: &str| {
        dms2delta::config::Config::from_text(&format!("lake: /l\nstaging: /s\nquarantine: /q\nsources:\n{sources}"))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let cycle = RENAMED.replace(
        "        table: customers\n        keys: [id]\n",
        "        table: customers\n        keys: [id]\n        renamed_from: { schema: app, table: clients }\n",
    );
    let e = load(&cycle);
    assert!(
        e.contains("sources[0].tables[0].renamed_from") && e.contains("lead back"),
        "{e}"
    );
    let keys = RENAMED.replace(
        "        table: clients\n        keys: [id]\n",
        "        table: clients\n        keys: [id, region]\n",
    );
    let e = load(&keys);
    assert!(e.contains("keys differ"), "{e}");
    let twice = RENAMED.replace("{ full_name: name }", "{ full_name: name, nick: name }");
    let e = load(&twice);
    assert!(e.contains("renamed_columns"), "{e}");
}

/// A column dropped at the source: files without it insert rows with NULL there, and updates
/// keep the value the row had (the file says nothing about it).
#[tokio::test]
async fn a_column_dropped_at_the_source_is_null_in_new_rows_and_kept_in_updated_ones() {
    let m = Mini::new(HEADER_SOURCE, "");
    m.apply("app/t/20240528-195141301.csv", b"Op,id,name,extra\nI,1,a,7\n")
        .await;
    m.apply("app/t/20240528-195141302.csv", b"Op,id,name\nU,1,a2\nI,2,b\n")
        .await;
    assert_eq!(
        m.rows("pg.app.t", &["id", "name", "extra"]).await,
        vec![vec!["1", "a2", "7"], vec!["2", "b", "null"]]
    );
}

/// PostgreSQL's default replica identity does not log an unchanged TOAST value, and DMS Parquet
/// writes it as NULL. With `unlogged_when_null`, such a NULL in an update keeps the table's
/// value, or takes it from an earlier change of the key in the same file; a NULL in an insert is
/// a NULL. In CSV and in Parquet, copy-on-write and merge-on-read.
async fn an_update_that_did_not_log_a_large_value_keeps_it(extra: &str) {
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::DataType;
    let big = "x".repeat(5000);
    let csv_source = HEADER_SOURCE.replace("keys: [id]", "keys: [id]\n        unlogged_when_null: [name]");
    let m = Mini::new(&csv_source, extra);
    // Within one file: the insert carries the value, the update does not log it.
    m.apply(
        "app/t/20240528-195141301.csv",
        format!("Op,id,name,extra\nI,1,{big},1\nU,1,,2\nI,2,,3\n").as_bytes(),
    )
    .await;
    // A later file: another update without the value.
    m.apply("app/t/20240528-195141302.csv", b"Op,id,name,extra\nU,1,,4\n")
        .await;
    let rows = m.rows("pg.app.t", &["id", "name", "extra"]).await;
    assert_eq!(rows[0], vec!["1".to_string(), big.clone(), "4".into()]);
    assert_eq!(rows[1], vec!["2", "null", "3"], "a NULL in an insert is a NULL");

    let pq_source = PQ_SOURCE.replace("keys: [id]", "keys: [id]\n        unlogged_when_null: [body]");
    let m = Mini::new(&pq_source, extra);
    let text = |v: &[Option<&str>]| Arc::new(StringArray::from(v.to_vec())) as ArrayRef;
    let ids = |v: &[i64]| Arc::new(Int64Array::from(v.to_vec())) as ArrayRef;
    m.apply(
        "app/t/20240528-195141301.parquet",
        &parquet(vec![
            (
                "Op",
                DataType::Utf8,
                text(&[Some("I"), Some("U"), Some("I"), Some("U")]),
            ),
            ("id", DataType::Int64, ids(&[1, 1, 2, 2])),
            (
                "body",
                DataType::Utf8,
                text(&[Some(&big), None, Some("b2"), Some("b2-new")]),
            ),
            ("n", DataType::Int64, ids(&[1, 2, 3, 4])),
        ]),
    )
    .await;
    m.apply(
        "app/t/20240528-195141302.parquet",
        &parquet(vec![
            ("Op", DataType::Utf8, text(&[Some("U"), Some("I")])),
            ("id", DataType::Int64, ids(&[1, 3])),
            ("body", DataType::Utf8, text(&[None, None])),
            ("n", DataType::Int64, ids(&[5, 6])),
        ]),
    )
    .await;
    let rows = m.rows("ora.app.t", &["id", "body", "n"]).await;
    assert_eq!(rows[0], vec!["1".to_string(), big, "5".into()]);
    assert_eq!(rows[1], vec!["2", "b2-new", "4"]);
    assert_eq!(rows[2], vec!["3", "null", "6"]);
    // Without the setting, DMS Parquet's NULL is a NULL: the value is wiped (the trap).
    let m = Mini::new(PQ_SOURCE, extra);
    m.apply(
        "app/t/20240528-195141301.parquet",
        &parquet(vec![
            ("Op", DataType::Utf8, text(&[Some("I"), Some("U")])),
            ("id", DataType::Int64, ids(&[1, 1])),
            ("body", DataType::Utf8, text(&[Some("kept?"), None])),
        ]),
    )
    .await;
    assert_eq!(m.rows("ora.app.t", &["id", "body"]).await, vec![vec!["1", "null"]]);
}

#[test]
fn unlogged_when_null_refuses_a_key_column() {
    let e = dms2delta::config::Config::from_text(&format!(
        "lake: /l\nstaging: /s\nquarantine: /q\nsources:\n{}",
        PQ_SOURCE.replace("keys: [id]", "keys: [id]\n        unlogged_when_null: [id]")
    ))
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(e.contains("sources[0].tables[0].unlogged_when_null[0]"), "{e}");
}

/// The staged change set files of the table, by file name.
fn staged(m: &Mini) -> Vec<std::path::PathBuf> {
    let dir = m.dir.path().join("staged/pg/app/t");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// DMS "Reload table": the new snapshot, written as LOAD files again under the same names,
/// replaces what the table held before it, rows deleted at the source while nothing was
/// captured disappear, a key with an earlier delete comes back, and changes written after the
/// reload apply on top, in any delivery order, with the first load's change set committed at
/// any point (even last), and in every merge and delete mode.
#[tokio::test]
async fn a_reloaded_table_equals_the_new_snapshot_plus_the_changes_after_it() {
    let want = vec![
        vec!["1", "one-v2"],
        vec!["3", "three-again"],
        vec!["4", "four-v2"],
        vec!["5", "five-v2"],
        vec!["6", "six"],
    ];
    let modes = [
        ("hard", RELOADED.to_string(), ""),
        ("hard+dv", RELOADED.to_string(), DELETION_VECTORS),
        (
            "soft",
            RELOADED.replace("keys: [id]", "keys: [id]\n        delete_mode: soft"),
            "",
        ),
    ];
    let orders: [[usize; 3]; 6] = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    let mut swept_runs = 0;
    for (mode, sources, commit) in &modes {
        for order in orders {
            // Commit after every decode, or once at the end; the first load's change set
            // committed first, or held back and committed after everything else.
            for (commit_each, gen0_last) in [(true, false), (false, false), (true, true)] {
                let m = Mini::new(sources, commit);
                put_written(&m, GEN0);
                m.decode(GEN0.0).await;
                let held = std::env::temp_dir().join(format!("gen0-{}", std::process::id()));
                let gen0_set = staged(&m).pop().unwrap();
                if gen0_last {
                    std::fs::rename(&gen0_set, &held).unwrap();
                }
                for f in [C1, GEN1, C2] {
                    put_written(&m, f);
                }
                let files = [C1, GEN1, C2];
                let mut swept = 0;
                for i in order {
                    m.decode(files[i].0).await;
                    if commit_each {
                        for c in m.pipeline.commit_all().await.unwrap() {
                            swept += c.rows_swept;
                        }
                    }
                }
                if gen0_last {
                    std::fs::rename(&held, &gen0_set).unwrap();
                }
                for c in m.pipeline.commit_all().await.unwrap() {
                    swept += c.rows_swept;
                }
                let ctx =
                    format!("mode {mode}, order {order:?}, commit each {commit_each}, first load last {gen0_last}");
                let live = if *mode == "soft" {
                    m.rows(T_RELOADED, &["id", "name", "_dms_deleted"])
                        .await
                        .into_iter()
                        .filter(|r| r[2] != "true")
                        .map(|r| r[..2].to_vec())
                        .collect()
                } else {
                    m.rows(T_RELOADED, &["id", "name"]).await
                };
                assert_eq!(live, want, "{ctx}");
                assert!(
                    staged(&m).is_empty(),
                    "{ctx}: nothing may stay staged, not even the reload's marker: {:?}",
                    staged(&m)
                );
                if swept > 0 {
                    swept_runs += 1;
                }
            }
        }
    }
    // Row 2 (deleted while nothing was captured) is only ever removed by the sweep; the
    // sweep must have happened in the runs where the table held it.
    assert!(swept_runs > 0, "no run raised the floor");
}

const T_RELOADED: &str = "pg.app.t";

/// A reload with no change after it: the rows the new snapshot lacks go once
/// `reloads.settle_after_seconds` has passed since its LOAD file was decoded; before that, the
/// table keeps them (the load may still be running).
#[tokio::test]
async fn a_reload_without_later_changes_settles_after_the_configured_time() {
    for (settle, want_rows) in [("3600", 5), ("0", 4)] {
        let sources = RELOADED.replace(
            "csv: { header: true }",
            &format!("csv: {{ header: true }}\n    reloads: {{ settle_after_seconds: {settle} }}"),
        );
        let m = Mini::new(&sources, "");
        put_written(&m, GEN0);
        m.decode(GEN0.0).await;
        for f in [C1, GEN1] {
            put_written(&m, f);
            m.decode(f.0).await;
        }
        m.pipeline.commit_all().await.unwrap();
        // Gen 0 + C1 hold 1, 2, 4; the reload adds 3 and 5, and removes 2 once settled.
        let rows = m.rows(T_RELOADED, &["id"]).await;
        assert_eq!(rows.len(), want_rows, "settle {settle}: {rows:?}");
        if settle == "0" {
            assert!(!rows.contains(&vec!["2".to_string()]), "{rows:?}");
        }
    }
    // Detection can be switched off: the reload's rows are then a late part of the first
    // load, refused where CDC changed the row (today's behaviour, for sources that never
    // reload).
    let sources = RELOADED.replace(
        "csv: { header: true }",
        "csv: { header: true }\n    reloads: { detect: false }",
    );
    let m = Mini::new(&sources, "");
    put_written(&m, GEN0);
    m.decode(GEN0.0).await;
    for f in [C1, GEN1, C2] {
        put_written(&m, f);
        m.decode(f.0).await;
    }
    m.pipeline.commit_all().await.unwrap();
    let rows = m.rows(T_RELOADED, &["id", "name"]).await;
    assert!(rows.contains(&vec!["2".to_string(), "two".to_string()]), "{rows:?}");
}

// Truncates and drops (docs/replication-contract.md, "Truncates and drops").

const TRUNCATED: &str = r#"
  - name: pg
    bucket: dms
    csv: { header: true }
    truncates: { follow_removals: true }
    tables:
      - schema: app
        table: t
        keys: [id]
"#;

/// One history, sequenced by file name or by `AR_H_CHANGE_SEQ`: the first load (1-3), a CDC
/// file (1 updated, 4 inserted), then a source TRUNCATE, which DMS replicates by removing both
/// files (two removal events); then a CDC file after the truncate inserting 1 again and 7.
struct History {
    l0: Written,
    c1: Written,
    c2: Written,
}

const BY_NAME: History = History {
    l0: (
        "app/t/LOAD00000001.csv",
        b"id,name\n1,one\n2,two\n3,three\n",
        "2024-05-28T10:00:00Z",
    ),
    c1: (
        "app/t/20240528-100500000.csv",
        b"Op,id,name\nU,1,one-v2\nI,4,four\n",
        "2024-05-28T10:05:30Z",
    ),
    c2: (
        "app/t/20240528-103100000.csv",
        b"Op,id,name\nI,1,one-new\nI,7,seven\n",
        "2024-05-28T10:31:10Z",
    ),
};

const BY_CHANGE_SEQ: History = History {
    l0: (
        "app/t/LOAD00000001.csv",
        b"id,name,AR_H_CHANGE_SEQ\n1,one,\n2,two,\n3,three,\n",
        "2024-05-28T10:00:00Z",
    ),
    c1: (
        "app/t/20240528-100500000.csv",
        b"Op,id,name,AR_H_CHANGE_SEQ\nU,1,one-v2,20240528100455000000000000000000001\nI,4,four,20240528100456000000000000000000002\n",
        "2024-05-28T10:05:30Z",
    ),
    c2: (
        "app/t/20240528-103100000.csv",
        b"Op,id,name,AR_H_CHANGE_SEQ\nI,1,one-new,20240528103055000000000000000000003\nI,7,seven,20240528103056000000000000000000004\n",
        "2024-05-28T10:31:10Z",
    ),
};

/// As [`BY_CHANGE_SEQ`], with DMS lagging behind the source: the TRUNCATE is committed at
/// 10:29:59.5, both changes of the file after it within the second before DMS removes the files
/// (10:30:00.5), so their sequences are below the removal's time; DMS writes them at 10:31.
const BY_CHANGE_SEQ_LAGGED: History = History {
    c2: (
        "app/t/20240528-103100000.csv",
        b"Op,id,name,AR_H_CHANGE_SEQ\nI,1,one-new,20240528102959800000000000000000003\nI,7,seven,20240528103000100000000000000000004\n",
        "2024-05-28T10:31:10Z",
    ),
    ..BY_CHANGE_SEQ
};

/// When DMS removed each file (S3's event times).
const REMOVED_L0: &str = "2024-05-28T10:30:00.500Z";
const REMOVED_C1: &str = "2024-05-28T10:30:00.620Z";

/// What happens, in order, in one run of the truncate test.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// DMS writes (or had written) the history's file.
    Put(usize),
    /// Its object-created event is decoded.
    Decode(usize),
    /// DMS removes the file from the bucket (the truncate).
    Delete(usize),
    /// Its removal event is handled.
    Removed(usize),
    /// Every pending table is committed.
    Commit,
    /// The change set staged last is held back, then put back: a commit delayed past others.
    Hold,
    Restore,
}

use Step::*;

/// File indices of a [`History`].
const TL0: usize = 0;
const TC1: usize = 1;
const TC2: usize = 2;

fn removal_time(i: usize) -> chrono::DateTime<chrono::Utc> {
    let t = if i == TL0 { REMOVED_L0 } else { REMOVED_C1 };
    chrono::DateTime::parse_from_rfc3339(t).unwrap().into()
}

/// Truncate scenarios, each a delivery order the contract promises to converge from.
fn truncate_scenarios() -> Vec<(&'static str, Vec<Step>)> {
    vec![
        (
            "the CDC file after the truncate arrives before the removal events",
            vec![
                Put(TL0),
                Put(TC1),
                Decode(TL0),
                Decode(TC1),
                Commit,
                Delete(TL0),
                Delete(TC1),
                Put(TC2),
                Decode(TC2),
                Commit,
                Removed(TL0),
                Removed(TC1),
                Commit,
            ],
        ),
        (
            "removal events first, the table's new history after them",
            vec![
                Put(TL0),
                Put(TC1),
                Decode(TL0),
                Decode(TC1),
                Commit,
                Delete(TL0),
                Delete(TC1),
                Removed(TC1),
                Removed(TL0),
                Commit,
                Put(TC2),
                Decode(TC2),
                Commit,
            ],
        ),
        (
            "files staged before the truncate, everything committed once at the end",
            vec![
                Put(TL0),
                Put(TC1),
                Decode(TL0),
                Decode(TC1),
                Delete(TL0),
                Delete(TC1),
                Put(TC2),
                Removed(TL0),
                Decode(TC2),
                Removed(TC1),
                Commit,
            ],
        ),
        (
            "a removal handled while DMS is still deleting is not a truncate; the last one is",
            vec![
                Put(TL0),
                Put(TC1),
                Decode(TL0),
                Decode(TC1),
                Commit,
                Delete(TL0),
                Removed(TL0),
                Delete(TC1),
                Put(TC2),
                Decode(TC2),
                Removed(TC1),
                Commit,
            ],
        ),
        (
            "events of files already removed arrive late: nothing to decode",
            vec![
                Put(TL0),
                Put(TC1),
                Decode(TL0),
                Commit,
                Delete(TL0),
                Delete(TC1),
                Put(TC2),
                Decode(TC1),
                Removed(TL0),
                Removed(TC1),
                Decode(TC2),
                Commit,
            ],
        ),
        (
            "a change set from before the truncate committed after the floor rose is refused",
            vec![
                Put(TL0),
                Put(TC1),
                Decode(TL0),
                Commit,
                Decode(TC1),
                Hold,
                Delete(TL0),
                Delete(TC1),
                Removed(TL0),
                Removed(TC1),
                Commit,
                Put(TC2),
                Decode(TC2),
                Commit,
                Restore,
                Commit,
            ],
        ),
        (
            "a drop: the table's files go and nothing follows",
            vec![
                Put(TL0),
                Put(TC1),
                Decode(TL0),
                Decode(TC1),
                Commit,
                Delete(TL0),
                Delete(TC1),
                Removed(TL0),
                Removed(TC1),
                Commit,
            ],
        ),
    ]
}

/// Runs `steps` of `h` on `m`; returns (rows swept by floors, truncates staged, stale rows).
async fn run_truncate(m: &Mini, h: &History, steps: &[Step]) -> (u64, usize, u64) {
    let files = [h.l0, h.c1, h.c2];
    let (mut swept, mut truncates, mut stale) = (0, 0, 0);
    let held = tempfile::tempdir().unwrap();
    let mut held_sets: Vec<(std::path::PathBuf, std::path::PathBuf)> = Vec::new();
    for s in steps {
        match *s {
            Put(i) => put_written(m, files[i]),
            Decode(i) => {
                m.decode(files[i].0).await;
            }
            Delete(i) => std::fs::remove_file(m.dir.path().join("bucket").join(files[i].0)).unwrap(),
            Removed(i) => {
                let out = m.pipeline.removed("dms", files[i].0, removal_time(i)).await.unwrap();
                if matches!(out, RemovalOutcome::Truncate { .. }) {
                    truncates += 1;
                }
            }
            Commit => {
                for c in m.pipeline.commit_all().await.unwrap() {
                    swept += c.rows_swept;
                    stale += c.rows_stale;
                }
            }
            Hold => {
                // The newest change set staged: the one just decoded.
                let newest = staged(m)
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
                    .max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap())
                    .unwrap();
                let to = held.path().join(newest.file_name().unwrap());
                std::fs::rename(&newest, &to).unwrap();
                held_sets.push((newest, to));
            }
            Restore => {
                let (back, from) = held_sets.pop().unwrap();
                std::fs::rename(from, back).unwrap();
            }
        }
    }
    (swept, truncates, stale)
}

/// A source TRUNCATE (or DROP), which DMS replicates by removing the table's files: with
/// `truncates.follow_removals`, the table loses every row from before it and keeps every
/// change after it, in every delivery order of the removal events and the files around them,
/// sequenced by file name or by `AR_H_CHANGE_SEQ`, hard or soft deletes, copy-on-write or
/// merge-on-read; nothing stays staged.
#[tokio::test]
async fn a_truncate_at_the_source_empties_the_table_before_the_changes_after_it() {
    let by_seq = TRUNCATED.replace(
        "csv: { header: true }",
        "csv: { header: true }\n    sequence_column: AR_H_CHANGE_SEQ",
    );
    let soft = |s: &str| s.replace("keys: [id]", "keys: [id]\n        delete_mode: soft");
    let modes: Vec<(&str, String, &str, &History)> = vec![
        ("by name, hard", TRUNCATED.to_string(), "", &BY_NAME),
        (
            "by name, hard, merge-on-read",
            TRUNCATED.to_string(),
            DELETION_VECTORS,
            &BY_NAME,
        ),
        ("by name, soft", soft(TRUNCATED), "", &BY_NAME),
        ("by change seq, hard", by_seq.clone(), "", &BY_CHANGE_SEQ),
        (
            "by change seq, soft, merge-on-read",
            soft(&by_seq),
            DELETION_VECTORS,
            &BY_CHANGE_SEQ,
        ),
        (
            "by change seq, changes after the truncate committed before the removal, hard, with history",
            by_seq.clone(),
            "history:\n  enabled: true\n",
            &BY_CHANGE_SEQ_LAGGED,
        ),
        (
            "by change seq, changes after the truncate committed before the removal, soft, merge-on-read",
            soft(&by_seq),
            DELETION_VECTORS,
            &BY_CHANGE_SEQ_LAGGED,
        ),
    ];
    let (mut swept_runs, mut refused_runs, mut histories) = (0, 0, 0);
    for (mode, sources, extra, h) in &modes {
        for (name, steps) in truncate_scenarios() {
            let m = Mini::new(sources, extra);
            let (swept, truncates, stale) = run_truncate(&m, h, &steps).await;
            let ctx = format!("{mode}: {name}");
            assert!(truncates >= 1, "{ctx}: no removal was taken for the truncate");
            let is_drop = !steps.iter().any(|s| matches!(s, Put(TC2)));
            let want: Vec<Vec<&str>> = if is_drop {
                vec![]
            } else {
                vec![vec!["1", "one-new"], vec!["7", "seven"]]
            };
            let live: Vec<Vec<String>> = if mode.contains("soft") {
                let all = m.rows(T_RELOADED, &["id", "name", "_dms_deleted"]).await;
                // Rows from before the truncate stay, flagged.
                assert!(
                    all.iter().any(|r| r[2] == "true"),
                    "{ctx}: soft delete keeps the truncated rows flagged: {all:?}"
                );
                all.into_iter()
                    .filter(|r| r[2] != "true")
                    .map(|r| r[..2].to_vec())
                    .collect()
            } else {
                m.rows(T_RELOADED, &["id", "name"]).await
            };
            assert_eq!(live, want, "{ctx}");
            if extra.contains("history") {
                // The history's current versions are the table's rows, its closed ones closed.
                let spec = m.pipeline.config.table_by_target("pg", "app", "t").unwrap();
                let batches = m
                    .pipeline
                    .read_table(&m.pipeline.history_location(&spec))
                    .await
                    .unwrap();
                let cols: Vec<String> = ["id", "name", "_is_current"].map(String::from).to_vec();
                let mut current: Vec<Vec<String>> = rows_of(&batches, &cols)
                    .unwrap()
                    .into_iter()
                    .map(|r| r.iter().map(|v| v.canonical()).collect::<Vec<String>>())
                    .filter(|r| r[2] == "true")
                    .map(|r| r[..2].to_vec())
                    .collect();
                current.sort();
                assert_eq!(current, want, "{ctx}: the history's current versions");
                histories += 1;
            }
            assert!(staged(&m).is_empty(), "{ctx}: left staged: {:?}", staged(&m));
            if swept > 0 {
                swept_runs += 1;
            }
            if name.contains("refused") {
                assert!(stale > 0, "{ctx}: the late change set was not refused");
                refused_runs += 1;
            }
        }
    }
    assert!(
        swept_runs > 0 && refused_runs == modes.len() && histories > 0,
        "swept {swept_runs}, refused {refused_runs}, histories checked {histories}"
    );
}

/// Removals that are not a followed truncate never take a row away: the setting off (the
/// default), switched off for the table, or a file removed while an older one of the table is
/// still there (a person's cleanup). The per-table setting also switches it on.
#[tokio::test]
async fn removals_empty_a_table_only_where_followed_and_the_folder_is_empty() {
    let steps = [
        Put(TL0),
        Put(TC1),
        Decode(TL0),
        Decode(TC1),
        Commit,
        Delete(TL0),
        Delete(TC1),
        Removed(TL0),
        Removed(TC1),
        Commit,
        Put(TC2),
        Decode(TC2),
        Commit,
    ];
    let everything = vec![
        vec!["1", "one-new"],
        vec!["2", "two"],
        vec!["3", "three"],
        vec!["4", "four"],
        vec!["7", "seven"],
    ];
    let off = TRUNCATED.replace("    truncates: { follow_removals: true }\n", "");
    let table_off = TRUNCATED.replace(
        "keys: [id]",
        "keys: [id]\n        truncates: { follow_removals: false }",
    );
    let table_on = off.replace("keys: [id]", "keys: [id]\n        truncates: { follow_removals: true }");
    for (name, sources, want_truncate) in [
        ("default", &off, false),
        ("off for the table", &table_off, false),
        ("on for the table only", &table_on, true),
    ] {
        let m = Mini::new(sources, "");
        let (_, truncates, _) = run_truncate(&m, &BY_NAME, &steps).await;
        let rows = m.rows(T_RELOADED, &["id", "name"]).await;
        if want_truncate {
            assert_eq!(truncates, 2, "{name}");
            assert_eq!(rows, vec![vec!["1", "one-new"], vec!["7", "seven"]], "{name}");
        } else {
            assert_eq!(truncates, 0, "{name}");
            assert_eq!(rows, everything, "{name}");
        }
        assert!(staged(&m).is_empty(), "{name}: {:?}", staged(&m));
    }
    let m = Mini::new(&off, "");
    put_written(&m, BY_NAME.l0);
    let out = m
        .pipeline
        .removed("dms", BY_NAME.l0.0, removal_time(TL0))
        .await
        .unwrap();
    assert!(
        matches!(&out, RemovalOutcome::Ignored { reason } if reason.contains("follow_removals")),
        "{out:?}"
    );

    // A person removes the CDC file while the first load's file (older) is still there.
    let m = Mini::new(TRUNCATED, "");
    let (_, truncates, _) = run_truncate(
        &m,
        &BY_NAME,
        &[
            Put(TL0),
            Put(TC1),
            Decode(TL0),
            Decode(TC1),
            Commit,
            Delete(TC1),
            Removed(TC1),
            Commit,
        ],
    )
    .await;
    assert_eq!(truncates, 0);
    assert_eq!(
        m.rows(T_RELOADED, &["id", "name"]).await,
        vec![
            vec!["1", "one-v2"],
            vec!["2", "two"],
            vec!["3", "three"],
            vec!["4", "four"]
        ]
    );
    assert!(staged(&m).is_empty(), "{:?}", staged(&m));

    // The setting is checked at load: a misspelt field is refused, naming where.
    let e = dms2delta::config::Config::from_text(&format!(
        "lake: /l\nstaging: /s\nquarantine: /q\nsources:\n{}",
        TRUNCATED.replace("follow_removals", "follow_removal")
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("sources[0].truncates") && e.contains("follow_removal"),
        "{e}"
    );
}

/// The `AR_H_CHANGE_SEQ` add-column rule removed while the task runs, then added again: files
/// without the column take their name's place in the change-sequence order, so their changes
/// win over older sequenced ones and lose to newer ones, in any delivery order.
#[tokio::test]
async fn changes_order_across_the_sequence_rule_being_removed_and_added_again() {
    const TOGGLED: &str = r#"
  - name: my
    bucket: dms
    csv: { header: true }
    sequence_column: AR_H_CHANGE_SEQ
    tables:
      - schema: app
        table: t
        keys: [id]
"#;
    let files: [(&str, &[u8]); 3] = [
        (
            "app/t/20240528-100000000.csv",
            b"Op,id,name,AR_H_CHANGE_SEQ\nI,1,a,20240528095959000000000000000000001\nI,2,b,20240528095959000000000000000000002\n",
        ),
        // The rule removed: no sequence column.
        ("app/t/20240528-110000000.csv", b"Op,id,name\nU,1,a2\nD,2,\n"),
        // The rule added again.
        (
            "app/t/20240528-120000000.csv",
            b"Op,id,name,AR_H_CHANGE_SEQ\nI,3,c,20240528115959000000000000000000003\n",
        ),
    ];
    let orders: [[usize; 3]; 6] = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    for commit in ["", DELETION_VECTORS] {
        for order in orders {
            let m = Mini::new(TOGGLED, commit);
            for i in order {
                m.apply(files[i].0, files[i].1).await;
            }
            assert_eq!(
                m.rows("my.app.t", &["id", "name"]).await,
                vec![vec!["1", "a2"], vec!["3", "c"]],
                "order {order:?}, deletion vectors {}",
                !commit.is_empty()
            );
        }
    }
}

/// Ordered by `AR_H_CHANGE_SEQ`, a reload is anchored just after the newest change of the
/// table's last CDC file before it, not at the time in that file's name: a change committed
/// after the name's time (DMS names a file when it opens it) is still older than the reload's
/// snapshot, which holds a newer value of the row written while nothing was captured.
#[tokio::test]
async fn a_reload_of_a_change_sequenced_table_is_anchored_at_the_newest_change_before_it() {
    let sources = r#"
  - name: pg
    bucket: dms
    csv: { header: true }
    sequence_column: AR_H_CHANGE_SEQ
    tables:
      - schema: app
        table: t
        keys: [id]
"#;
    let gen0: Written = (
        "app/t/LOAD00000001.csv",
        b"id,name,AR_H_CHANGE_SEQ\n1,one,\n2,two,\n",
        "2024-05-28T10:00:00Z",
    );
    // Named 10:05:00, holding a change committed at 10:05:30.
    let c1: Written = (
        "app/t/20240528-100500000.csv",
        b"Op,id,name,AR_H_CHANGE_SEQ\nU,1,one-v2,20240528100530000000000000000000001\n",
        "2024-05-28T10:05:40Z",
    );
    // While nothing was captured, 1 became one-v3 and 2 was deleted.
    let gen1: Written = (
        "app/t/LOAD00000001.csv",
        b"id,name,AR_H_CHANGE_SEQ\n1,one-v3,\n",
        "2024-05-28T11:00:00Z",
    );
    let c2: Written = (
        "app/t/20240528-111000000.csv",
        b"Op,id,name,AR_H_CHANGE_SEQ\nI,3,three,20240528111000000000000000000000002\n",
        "2024-05-28T11:10:05Z",
    );
    for order in [[0, 1, 2], [1, 0, 2], [2, 1, 0]] {
        let m = Mini::new(sources, "");
        put_written(&m, gen0);
        m.decode(gen0.0).await;
        for f in [c1, gen1, c2] {
            put_written(&m, f);
        }
        let files = [c1, gen1, c2];
        for i in order {
            m.decode(files[i].0).await;
            m.pipeline.commit_all().await.unwrap();
        }
        assert_eq!(
            m.rows(T_RELOADED, &["id", "name"]).await,
            vec![vec!["1", "one-v3"], vec!["3", "three"]],
            "order {order:?}"
        );
    }
}

/// Changes to one table, as `AR_H_CHANGE_SEQ`-sequenced CDC files: key 1's text is last logged
/// by the update at 3, and two later updates do not log it; key 2 is deleted and inserted again
/// between updates that do not log its text; key 3's insert and an update that did not log the
/// text share a file.
const UNLOGGED_FILES: [&[u8]; 5] = [
    b"I,1,a,1,1\nI,2,x,1,2\n",
    b"U,1,b,2,3\nU,2,#NOSUP#,2,4\n",
    b"U,1,#NOSUP#,3,5\nD,2,,,6\n",
    b"U,1,#NOSUP#,4,7\nI,2,y,4,8\n",
    b"U,2,#NOSUP#,5,10\nI,3,z,1,11\nU,3,#NOSUP#,2,12\n",
];

/// An update that did not log a column never erases the value an older change carries, in any
/// delivery order: a late, older change still sets the column where the table's value is even
/// older (issue #16 item 3), with copy-on-write and merge-on-read commits, hard and soft
/// deletes, one commit per file or several files in one commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlogged_value_is_exact_per_column_in_any_delivery_order() {
    let source = SEQ_SOURCE.replace(
        "    sequence_column:",
        "    csv: { no_sup_value: \"#NOSUP#\" }\n    sequence_column:",
    );
    let want = vec![vec!["1", "b", "4"], vec!["2", "y", "5"], vec!["3", "z", "2"]];
    let mut orders: Vec<Vec<usize>> = vec![vec![0, 1, 2, 3, 4], vec![4, 3, 2, 1, 0]];
    let seed = 16_003u64;
    let mut rng = fastrand::Rng::with_seed(seed);
    while orders.len() < 8 {
        let mut o: Vec<usize> = (0..UNLOGGED_FILES.len()).collect();
        rng.shuffle(&mut o);
        orders.push(o);
    }
    let mut late_fills = 0;
    for (mode, extra) in [
        ("copy-on-write", ""),
        ("merge-on-read", DELETION_VECTORS),
        ("soft", ""),
        ("soft merge-on-read", DELETION_VECTORS),
    ] {
        let sources = if mode.starts_with("soft") {
            source.replace("keys: [id]", "keys: [id]\n        delete_mode: soft")
        } else {
            source.clone()
        };
        for (o, order) in orders.iter().enumerate() {
            // Every other order stages two files before committing them together.
            let together = o % 2 == 1;
            let m = Mini::new(&sources, extra);
            for (step, &f) in order.iter().enumerate() {
                m.put(&cdc(f as u32 + 1), UNLOGGED_FILES[f]);
                let out = m.decode(&cdc(f as u32 + 1)).await;
                assert!(
                    matches!(out, DecodeOutcome::Staged(_)),
                    "{mode}, order {order:?}: {out:?}"
                );
                if together && step % 2 == 0 && step + 1 < order.len() {
                    continue;
                }
                let done = m.pipeline.commit_all().await.unwrap();
                // A change older than the row that still set a column it logged.
                let newest_seen = order[..step].iter().any(|&g| g > f);
                if newest_seen && done.iter().any(|c| c.rows_updated > 0) {
                    late_fills += 1;
                }
            }
            let got = m.rows(T, &["id", "name", "n"]).await;
            assert_eq!(got, want, "{mode}, order {order:?} (seed {seed})");
        }
    }
    assert!(late_fills > 0, "no late change set a column");
}

/// A first full load in any key order costs its rows, not the table: a LOAD file's change set
/// reads no data file holding only other LOAD files' rows (one snapshot lists each key once),
/// only files holding later changes or its own rows. Still exact: a key changed by CDC before
/// its late LOAD file keeps the change, and a LOAD file delivered twice adds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_full_load_reads_only_files_holding_later_changes_or_its_own_rows() {
    let seed = 18_002u64;
    for extra in ["", DELETION_VECTORS] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut keys: Vec<u32> = (1..=60).collect();
        rng.shuffle(&mut keys);
        let file = |i: usize| -> (String, Vec<u8>) {
            let rows: String = keys[i * 10..(i + 1) * 10]
                .iter()
                .map(|k| format!("{k},load{k},{k}\n"))
                .collect();
            (format!("app/t/LOAD{:08}.csv", i + 1), rows.into_bytes())
        };
        let m = Mini::new(PLAIN_SOURCE, extra);
        let mut scanned_by_loads = 0;
        for i in 0..4 {
            let (key, bytes) = file(i);
            let c = m.apply(&key, &bytes).await;
            assert_eq!(c.rows_inserted, 10, "{c:?}");
            scanned_by_loads += c.files_scanned;
        }
        assert_eq!(scanned_by_loads, 0, "seed {seed}: LOAD files read each other's rows");
        // CDC before the load has ended: it changes a key of the fifth LOAD file (not yet
        // committed) and one already loaded.
        let (late, early) = (keys[40], keys[0]);
        m.apply(
            "app/t/20240528-100000000.csv",
            format!("U,{late},cdc{late},1\nU,{early},cdc{early},2\n").as_bytes(),
        )
        .await;
        let (table, _) = dms2delta::lake::open(&m.pipeline.stores, &m.location("my.app.t"))
            .await
            .unwrap();
        let files_before = table.get_file_uris().unwrap().count();
        for i in 4..6 {
            let (key, bytes) = file(i);
            let c = m.apply(&key, &bytes).await;
            // At most the files the CDC commit wrote can hold one of its keys; the fifth LOAD
            // file holds the key CDC changed, so it must read one.
            let dv = !extra.is_empty();
            assert!(
                c.files_scanned <= 2 && c.files_scanned < files_before as u64,
                "seed {seed}, dv {dv}: {c:?}"
            );
            if i == 4 {
                assert!(c.files_scanned >= 1, "seed {seed}, dv {dv}: {c:?}");
                assert_eq!((c.rows_inserted, c.rows_stale), (9, 1), "seed {seed}, dv {dv}: {c:?}");
            }
        }
        // The second LOAD file again: all its rows are there already.
        let (key, bytes) = file(1);
        let again = m.apply(&key, &bytes).await;
        assert_eq!((again.rows_inserted, again.rows_stale), (0, 10), "{again:?}");
        let rows = m.rows("my.app.t", &["id", "name"]).await;
        assert_eq!(rows.len(), 60, "seed {seed}");
        for r in &rows {
            let k: u32 = r[0].parse().unwrap();
            let want = if k == late || k == early {
                format!("cdc{k}")
            } else {
                format!("load{k}")
            };
            assert_eq!(
                r[1],
                want,
                "seed {seed}, key {k}, deletion vectors {}",
                !extra.is_empty()
            );
        }
    }
}

/// Found by the convergence test (seed 1001, four workers): the updates that did not log a
/// column are committed, then delivered again together with the older change that carries the
/// value. Deduplication fills the redelivered update's column from the older change, so its row
/// sequence equals the stored one while its column is newer: the column must still be set.
#[tokio::test]
async fn a_redelivered_update_filled_from_an_older_change_sets_the_column() {
    let source = SEQ_SOURCE.replace(
        "    sequence_column:",
        "    csv: { no_sup_value: \"#NOSUP#\" }\n    sequence_column:",
    );
    let carries: &[u8] = b"I,9,full,1,1\n";
    let unlogged: &[u8] = b"U,9,#NOSUP#,2,5\n";
    for extra in ["", DELETION_VECTORS] {
        let m = Mini::new(&source, extra);
        m.apply(&cdc(2), unlogged).await;
        assert_eq!(m.rows(T, &["id", "name", "n"]).await, vec![vec!["9", "null", "2"]]);
        // The update again (at-least-once delivery) and the older insert, in one commit.
        for (key, bytes) in [(cdc(2), unlogged), (cdc(1), carries)] {
            m.put(&key, bytes);
            let out = m.decode(&key).await;
            assert!(matches!(out, DecodeOutcome::Staged(_)), "{out:?}");
        }
        let done = m.pipeline.commit_all().await.unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(
            m.rows(T, &["id", "name", "n"]).await,
            vec![vec!["9", "full", "2"]],
            "deletion vectors {}",
            !extra.is_empty()
        );
    }
}
