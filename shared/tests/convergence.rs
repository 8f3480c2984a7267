//! The replication contract, checked end to end on local folders: whatever the delivery order,
//! duplicates, crashes and concurrency, the Delta tables end equal to the source tables.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use dms2delta::sim::SimOptions;
use support::converge::run_case;
use support::{Lab, On};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_order_delivery_converges_and_an_independent_reader_agrees() {
    Lab::new(&SimOptions::default(), None).in_order_twice().await;
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
