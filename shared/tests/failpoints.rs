//! Each crash point, and a failed Delta log write, hit once with no retry afterwards (the
//! redelivery was lost too): reprocess finds what was left behind and the tables converge.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dms2delta::failpoint::{Failpoints, COMMIT_AFTER_TOMBSTONES, COMMIT_BEFORE_CLEANUP, DECODE_AFTER_STAGE};
use dms2delta::faults::{Call, FaultyStore};
use dms2delta::operations::reprocess::ReprocessBuilder;
use dms2delta::sim::SimOptions;
use dms2delta::storage::StoreWrapper;
use support::Lab;

/// Fires at `point` the first time only.
fn once(point: &'static str) -> (Failpoints, Arc<AtomicBool>) {
    let fired = Arc::new(AtomicBool::new(false));
    let f = fired.clone();
    (
        Failpoints::new(move |name| name == point && !f.swap(true, Ordering::SeqCst)),
        fired,
    )
}

async fn crash_once_then_reprocess(point: Option<&'static str>, fail_log_write: bool) {
    let log_failed = Arc::new(AtomicBool::new(false));
    let wrapper: Option<StoreWrapper> = fail_log_write.then(|| {
        let lf = log_failed.clone();
        let w: StoreWrapper = Arc::new(move |inner| {
            let lf = lf.clone();
            Arc::new(FaultyStore::new(inner, move |call, path| {
                call == Call::Put
                    && path.as_ref().contains("_delta_log/")
                    && path.as_ref().ends_with(".json")
                    && !path.as_ref().ends_with("00000000000000000000.json")
                    && !lf.swap(true, Ordering::SeqCst)
            }))
        });
        w
    });
    let lab = Lab::new(&SimOptions::default(), wrapper);
    let (fail, fired) = match point {
        Some(p) => once(p),
        None => (Failpoints::default(), Arc::new(AtomicBool::new(true))),
    };
    // Every file decoded, every pending table committed once: the crash (or the failed log
    // write) happens somewhere in there, and nothing is retried.
    for f in &lab.sim.files {
        let _ = lab.pipeline.decode(&lab.bucket, &f.key, None, fail.clone()).await;
    }
    for t in lab.pipeline.pending().await.unwrap() {
        let _ = lab
            .pipeline
            .commit(&t.namespace, &t.schema, &t.table, fail.clone())
            .await;
    }
    assert!(fired.load(Ordering::SeqCst), "{point:?} never fired");
    if fail_log_write {
        assert!(log_failed.load(Ordering::SeqCst), "no log write failed");
    }
    let orphaned = !lab.pipeline.pending().await.unwrap().is_empty();
    if point != Some(DECODE_AFTER_STAGE) {
        // A crashed commit leaves its change sets staged, and nothing else will commit them.
        assert!(orphaned, "{point:?}: nothing was left behind");
        assert!(lab.check().await.is_err() || point == Some(COMMIT_BEFORE_CLEANUP));
    }
    // Reprocess picks up whatever the crash left: nothing pending, the source's state.
    let m = ReprocessBuilder::new(lab.pipeline.config.clone(), &lab.pipeline.stores)
        .await
        .unwrap();
    assert!(lab.pipeline.pending().await.unwrap().is_empty(), "{point:?}: {m:?}");
    if orphaned {
        assert!(!m.tables_committed.is_empty(), "{point:?}: {m:?}");
    }
    lab.check().await.unwrap_or_else(|e| panic!("{point:?}: {e}\n{m:?}"));
    lab.check_log().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_staging_is_recovered() {
    crash_once_then_reprocess(Some(DECODE_AFTER_STAGE), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_tombstones_before_the_merge_is_recovered() {
    crash_once_then_reprocess(Some(COMMIT_AFTER_TOMBSTONES), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_commit_before_clean_up_is_recovered() {
    crash_once_then_reprocess(Some(COMMIT_BEFORE_CLEANUP), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_write_after_the_data_files_is_recovered() {
    crash_once_then_reprocess(None, true).await;
}
