//! The replication contract, checked end to end on local folders: whatever the delivery order,
//! duplicates, crashes and concurrency, the Delta tables end equal to the source tables.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dms2delta::failpoint::Failpoints;
use dms2delta::faults::{Call, FaultyStore};
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::sim::SimOptions;
use dms2delta::storage::StoreWrapper;
use support::Lab;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_order_delivery_converges_and_an_independent_reader_agrees() {
    let lab = Lab::new(&SimOptions::default(), None);
    for f in &lab.sim.files {
        let out = lab
            .pipeline
            .decode(&lab.sim.bucket, &f.key, Some("e".into()), Failpoints::default())
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
            .decode(&lab.sim.bucket, &f.key, Some("e2".into()), Failpoints::default())
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

#[derive(Debug, Clone)]
enum Task {
    Decode(String),
    Commit(String, String, String),
}

/// One randomized run: shuffled delivery with duplicates, crashes at every stage boundary and
/// inside the commit (a failed log write after data files were written), 1 to 8 workers.
async fn run_case(seed: u64) -> Result<(), String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let opts = SimOptions {
        seed,
        tables: 1,
        keys: rng.u32(3..15),
        changes: rng.usize(5..40),
        max_file_changes: rng.usize(1..10),
        // A random non-empty subset of the formats keeps each case short; the seeds cover all.
        formats: {
            let mut f: Vec<_> = dms2delta::sim::Format::ALL
                .iter()
                .copied()
                .filter(|_| rng.bool())
                .collect();
            if f.is_empty() {
                f.push(dms2delta::sim::Format::ALL[rng.usize(0..3)]);
            }
            f
        },
    };
    let fault_rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed ^ 0x5eed)));
    let log_fault = rng.f64() * 0.3;
    let fr = fault_rng.clone();
    let wrapper: StoreWrapper = Arc::new(move |inner| {
        let fr = fr.clone();
        Arc::new(FaultyStore::new(inner, move |call, path| {
            call == Call::Put
                && path.as_ref().contains("_delta_log/")
                && path.as_ref().ends_with(".json")
                && fr.lock().unwrap().f64() < log_fault
        }))
    });
    let lab = Lab::new(&opts, Some(wrapper));
    let mut deliveries: Vec<Task> = lab.sim.files.iter().map(|f| Task::Decode(f.key.clone())).collect();
    for _ in 0..rng.usize(0..=deliveries.len()) {
        let d = deliveries[rng.usize(0..deliveries.len())].clone();
        deliveries.push(d);
    }
    rng.shuffle(&mut deliveries);
    let queue = Arc::new(Mutex::new(VecDeque::from(deliveries)));
    let crash = rng.f64() * 0.3;
    let workers = rng.usize(1..=8);
    let done = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for w in 0..workers {
        let queue = queue.clone();
        let pipeline = lab.pipeline.clone();
        let bucket = lab.sim.bucket.clone();
        let fr = fault_rng.clone();
        let done = done.clone();
        handles.push(tokio::spawn(async move {
            let fail = Failpoints::new(move |_| fr.lock().unwrap().f64() < crash);
            let mut budget = 10_000;
            loop {
                let task = queue.lock().unwrap().pop_front();
                let Some(task) = task else { break };
                budget -= 1;
                if budget == 0 {
                    return Err(format!("worker {w} did not finish"));
                }
                match &task {
                    Task::Decode(key) => match pipeline.decode(&bucket, key, Some("etag".into()), fail.clone()).await {
                        Ok(DecodeOutcome::Staged(m)) => {
                            for t in m.tables {
                                let mut p = t.table.splitn(3, '.');
                                let (a, b, c) = (
                                    p.next().unwrap_or_default(),
                                    p.next().unwrap_or_default(),
                                    p.next().unwrap_or_default(),
                                );
                                queue
                                    .lock()
                                    .unwrap()
                                    .push_back(Task::Commit(a.into(), b.into(), c.into()));
                            }
                        }
                        Ok(other) => return Err(format!("{key}: unexpected {other:?}")),
                        Err(e) if e.is_retryable() => queue.lock().unwrap().push_back(task.clone()),
                        Err(e) => return Err(format!("{key}: {e}")),
                    },
                    Task::Commit(a, b, c) => match pipeline.commit(a, b, c, fail.clone()).await {
                        Ok(_) => {}
                        Err(e) if e.is_retryable() => queue.lock().unwrap().push_back(task.clone()),
                        Err(e) => return Err(format!("commit {a}.{b}.{c}: {e}")),
                    },
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for h in handles {
        h.await.map_err(|e| e.to_string())??;
    }
    // Whatever crashed last is picked up by the next invocation (here: one sweep, no faults).
    loop {
        match lab.pipeline.commit_all().await {
            Ok(_) => break,
            Err(e) if e.is_retryable() => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    lab.check()
        .await
        .map_err(|e| format!("seed {seed} ({workers} workers, crash {crash:.2}, log fault {log_fault:.2}): {e}"))
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
        if let Err(e) = run_case(seed).await {
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
