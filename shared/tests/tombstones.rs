//! Tombstones held by a warm function (`tombstone_cache::TombstoneCache`) stay exactly
//! the tombstone table: another process's deletes, a compaction of the tombstone table and the
//! expiry of tombstones are all seen, so a late, older change is refused or let in exactly as a
//! cold function scanning the table would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use dms2delta::failpoint::Failpoints;
use dms2delta::lake;
use dms2delta::operations::commit::CommitMetrics;
use dms2delta::operations::compact::{CompactBuilder, CompactMetrics};
use dms2delta::operations::tombstones;
use dms2delta::pipeline::Pipeline;
use dms2delta::storage::Stores;
use dms2delta::tombstone_cache::TombstoneCache;
use support::Mini;

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

/// Another process on the same lake and staging: its own stores, so nothing held is shared.
fn other(m: &Mini, cache: TombstoneCache) -> Pipeline {
    let stores = Stores::new(m.pipeline.config.config.storage.clone()).with_tombstone_cache(cache);
    Pipeline::new(m.pipeline.config.clone(), Arc::new(stores))
}

/// Puts a DMS file, decodes and commits it with `p`.
async fn apply(m: &Mini, p: &Pipeline, key: &str, bytes: &[u8]) -> CommitMetrics {
    m.put(key, bytes);
    p.decode("dms", key, Some("etag".into()), Failpoints::default())
        .await
        .unwrap();
    let mut c = p.commit_all().await.unwrap();
    assert_eq!(c.len(), 1, "{c:?}");
    c.remove(0)
}

async fn compact(p: &Pipeline, now: i64) -> CompactMetrics {
    CompactBuilder::new(p.config.clone(), &p.stores)
        .with_table("my", "app", "t")
        .with_force(true)
        .with_now_millis(now)
        .await
        .unwrap()
}

async fn tombstone_files(m: &Mini) -> usize {
    let spec = m.pipeline.config.table_by_target("my", "app", "t").unwrap();
    let loc = tombstones::location(&m.pipeline.config.lake, &spec.lake_path());
    let (t, _) = lake::open(&m.pipeline.stores, &loc).await.unwrap();
    t.snapshot().unwrap().log_data().num_files()
}

fn file(n: u32) -> String {
    format!("app/t/20240528-1951413{n:02}.csv")
}

/// Process A holds the tombstones; process B deletes, compacts the tombstone table and expires
/// its tombstones. Each late, older change A then commits is refused while a tombstone of its key
/// exists (a held table that missed B's tombstone would let it in and the row would come back),
/// and let in once the tombstone expired (a held table that kept it would refuse it). The same
/// history with A holding nothing (cache off, or a budget too small for one key) ends the same.
#[tokio::test]
async fn held_tombstones_follow_other_writers_compaction_and_expiry() {
    for (name, cache) in [
        ("held", TombstoneCache::default()),
        ("over budget", TombstoneCache::with_budget(0)),
        ("off", TombstoneCache::disabled()),
    ] {
        let holds = cache.is_enabled() && name == "held";
        let m = Mini::new(SOURCE, "compact:\n  min_small_files: 2\n");
        let a = other(&m, cache);
        let b = other(&m, TombstoneCache::default());
        let rows = || m.rows("my.app.t", &["id", "name"]);
        apply(&m, &a, &file(1), b"I,1,a,01\nI,2,b,02\nI,3,c,03\nI,4,d,04\nI,5,e,05\n").await;
        let c = apply(&m, &a, &file(2), b"D,1,a,10\n").await;
        assert_eq!(c.tombstones_written, 1, "{name}: {c:?}");
        apply(&m, &a, &file(3), b"I,6,f,11\n").await;
        assert_eq!(a.stores.tombstones().held().0, usize::from(holds), "{name}");

        // B's delete adds a tombstone file A has not read.
        let c = apply(&m, &b, &file(4), b"D,2,b,12\n").await;
        assert_eq!(c.tombstones_written, 1, "{name}: {c:?}");
        let c = apply(&m, &a, &file(5), b"U,2,late,06\n").await;
        assert_eq!(c.rows_stale, 1, "{name}: {c:?}");
        assert_eq!(
            rows().await,
            vec![vec!["3", "c"], vec!["4", "d"], vec!["5", "e"], vec!["6", "f"]],
            "{name}: the late update of deleted key 2 came back"
        );

        // B compacts the tombstone table (its files are replaced by one) and deletes again.
        let now = chrono::Utc::now().timestamp_millis();
        let r = compact(&b, now).await;
        assert_eq!(r.tombstones_dropped, 0, "{name}: {r:?}");
        assert_eq!(
            tombstone_files(&m).await,
            1,
            "{name}: the tombstone table was not compacted"
        );
        apply(&m, &b, &file(6), b"D,3,c,13\n").await;
        let c = apply(&m, &a, &file(7), b"I,3,late,07\nU,1,late,08\n").await;
        assert_eq!(c.rows_stale, 2, "{name}: {c:?}");
        assert_eq!(
            rows().await,
            vec![vec!["4", "d"], vec!["5", "e"], vec!["6", "f"]],
            "{name}: a late change of a deleted key came back after the compaction"
        );
        assert_eq!(a.stores.tombstones().held().0, usize::from(holds), "{name}");

        // Past the retention every tombstone goes: a late insert is let in again.
        let r = compact(&b, now + 8 * 24 * 3_600_000).await;
        assert_eq!(r.tombstones_dropped, 3, "{name}: {r:?}");
        // A new tombstone file, so the table A reads is not simply empty.
        apply(&m, &b, &file(8), b"D,5,e,14\n").await;
        apply(&m, &a, &file(9), b"I,1,back,09\n").await;
        assert_eq!(
            rows().await,
            vec![vec!["1", "back"], vec!["4", "d"], vec!["6", "f"]],
            "{name}: an expired tombstone still refused a change"
        );
    }
}

/// A delete delivered again, after its tombstone and its table commit, adds no tombstone row
/// (it is already the key's newest), whether the tombstones are held or scanned: only a newer
/// delete of the key does.
#[tokio::test]
async fn a_delete_delivered_again_records_no_second_tombstone() {
    let m = Mini::new(SOURCE, "");
    let p = &m.pipeline;
    apply(&m, p, &file(1), b"I,1,a,01\nI,2,b,02\n").await;
    let c = apply(&m, p, &file(2), b"D,1,a,05\n").await;
    assert_eq!((c.rows_deleted, c.tombstones_written), (1, 1), "{c:?}");
    let files = tombstone_files(&m).await;
    // The same delete again (held tombstones now), then a re-insert and a newer delete.
    let c = apply(&m, p, &file(3), b"D,1,a,05\n").await;
    assert_eq!(c.tombstones_written, 0, "{c:?}");
    assert_eq!(tombstone_files(&m).await, files);
    apply(&m, p, &file(4), b"I,1,again,06\n").await;
    let c = apply(&m, p, &file(5), b"D,1,again,07\n").await;
    assert_eq!((c.rows_deleted, c.tombstones_written), (1, 1), "{c:?}");
    // The older tombstone row stays next to the newer one: the newer refuses what is older.
    let c = apply(&m, p, &file(6), b"U,1,late,06\n").await;
    assert_eq!(c.rows_stale, 1, "{c:?}");
    assert_eq!(m.rows("my.app.t", &["id", "name"]).await, vec![vec!["2", "b"]]);
}
