//! The randomized convergence case, shared by the local-folder and the S3 test binaries.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dms2delta::failpoint::Failpoints;
use dms2delta::faults::{Call, FaultyStore};
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::sim::SimOptions;
use dms2delta::storage::StoreWrapper;

use super::{Lab, On};

#[derive(Debug, Clone)]
enum Task {
    Decode(String),
    Commit(String, String, String),
}

/// One randomized run, on local folders or on the S3 endpoint: shuffled delivery with duplicates, crashes at every stage boundary and
/// inside the commit (a failed log write after data files were written), 1 to 8 workers.
pub async fn run_case(seed: u64, on: On) -> Result<(), String> {
    run_case_via(seed, on, None, || {}).await
}

/// [`run_case`] with the pipeline reaching S3 through `endpoint` (a fault-injecting proxy);
/// `before_check` runs once every worker is done, before the tables are read back.
pub async fn run_case_via(
    seed: u64,
    on: On,
    endpoint: Option<&str>,
    before_check: impl FnOnce(),
) -> Result<(), String> {
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
    // Half the cases commit merge-on-read (deletion vectors), from a stream of their own so
    // the other choices of a seed stay as they were.
    let dv = fastrand::Rng::with_seed(seed ^ 0xd1f).bool();
    let lab = match (on, endpoint) {
        (On::S3, Some(ep)) => Lab::on_s3_via_with(&opts, Some(wrapper), Some(ep), dv).await,
        _ => Lab::on_with(on, &opts, Some(wrapper), dv).await,
    };
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
        let bucket = lab.bucket.clone();
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
    let mut sweeps = 0;
    loop {
        match lab.pipeline.commit_all().await {
            Ok(_) => break,
            Err(e) if e.is_retryable() && sweeps < 100 => sweeps += 1,
            Err(e) => return Err(e.to_string()),
        }
    }
    before_check();
    lab.check_log().await?;
    lab.check().await.map_err(|e| {
        format!(
            "seed {seed} ({workers} workers, crash {crash:.2}, log fault {log_fault:.2}, deletion vectors {dv}): {e}"
        )
    })
}
