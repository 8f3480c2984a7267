//! The replication contract, checked end to end on local folders: whatever the delivery order,
//! duplicates, crashes and concurrency, the Delta tables end equal to the source tables.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use dms2delta::failpoint::Failpoints;
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::sim::SimOptions;
use support::converge::run_case;
use support::{Lab, On};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_order_delivery_converges_and_an_independent_reader_agrees() {
    let lab = Lab::new(&SimOptions::default(), None);
    for f in &lab.sim.files {
        let out = lab
            .pipeline
            .decode(&lab.bucket, &f.key, Some("e".into()), Failpoints::default())
            .await
            .unwrap();
        assert!(matches!(out, DecodeOutcome::Staged(_)), "{}: {out:?}", f.key);
    }
    let commits = lab.pipeline.commit_all().await.unwrap();
    assert!(!commits.is_empty());
    lab.check().await.unwrap();
    if !support::skip_python() {
        lab.check_with_python().unwrap();
    }
    // Applying everything again changes nothing.
    for f in &lab.sim.files {
        lab.pipeline
            .decode(&lab.bucket, &f.key, Some("e2".into()), Failpoints::default())
            .await
            .unwrap();
    }
    let again = lab.pipeline.commit_all().await.unwrap();
    assert!(
        again
            .iter()
            .all(|m| m.rows_inserted + m.rows_updated + m.rows_deleted == 0),
        "{again:?}"
    );
    lab.check().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_order_duplicates_crashes_and_concurrency_converge() {
    let cases: u64 = std::env::var("DMS2DELTA_CONVERGENCE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let base: u64 = std::env::var("DMS2DELTA_CONVERGENCE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut failures = Vec::new();
    for seed in base..base + cases {
        if let Err(e) = run_case(seed, On::Folders).await {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
