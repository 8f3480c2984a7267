//! The deployed shape, end to end on the local S3 endpoint: bucket notifications configured as
//! docs/deploy.md says, delivered by the endpoint into SQS queues (`s3:TestEvent` first, keys
//! URL-encoded), and each queue drained into its function's handler the way Lambda's SQS event
//! source mapping does it: batches, partial batch failures, redelivery after the visibility
//! timeout, dead-letter queues. The tables must end equal to the source.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../shared/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use dms2delta::sim::{Format, SimOptions};
use dms2delta::storage::Location;
use dms2delta_e2e::{lambda_event, settle, BatchResult, Message, Queue, Sqs};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde_json::Value;
use support::Lab;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Function {
    Decode,
    Commit,
    Compact,
}

struct Functions {
    decode: decode::handler::State,
    commit: commit::handler::State,
    compact: compact::handler::State,
}

impl Functions {
    async fn invoke(&self, f: Function, event: Value) -> Result<Value, String> {
        let r = match f {
            Function::Decode => decode::handler::handle(&self.decode, event).await,
            Function::Commit => commit::handler::handle(&self.commit, event).await,
            Function::Compact => compact::handler::handle(&self.compact, event).await,
        };
        r.map_err(|e| e.to_string())
    }
}

fn queue_entry(id: &str, arn: &str, prefix: &str, suffix: Option<&str>) -> String {
    let suffix = suffix
        .map(|s| format!("<FilterRule><Name>suffix</Name><Value>{s}</Value></FilterRule>"))
        .unwrap_or_default();
    format!(
        "<QueueConfiguration><Id>{id}</Id><Queue>{arn}</Queue><Event>s3:ObjectCreated:*</Event>\
         <Filter><S3Key><FilterRule><Name>prefix</Name><Value>{prefix}</Value></FilterRule>{suffix}</S3Key></Filter>\
         </QueueConfiguration>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_notifications_through_sqs_replicate_every_table() {
    let moto = support::s3::moto();
    let opts = SimOptions {
        seed: 11,
        keys: 15,
        changes: 40,
        max_file_changes: 8,
        formats: Format::ALL.to_vec(),
        ..SimOptions::default()
    };
    // Compaction thresholds low enough that the compact function has work to do here.
    let extra = "compact:\n  min_small_files: 3\n  check_every_commits: 1\n  checkpoint_interval: 2\n";
    let lab = Lab::on_s3_with(&opts, None, None, extra).await;
    let config = lab.config();
    let Location::S3 {
        bucket: lake_bucket,
        prefix: lake_prefix,
    } = config.lake.clone()
    else {
        panic!("lake not on S3")
    };

    // Queues as template.yaml declares them: one per stage, each with a dead-letter queue.
    let sqs = Sqs::new(&moto.url);
    let mut queues = Vec::new();
    for (f, name) in [
        (Function::Decode, "decode"),
        (Function::Commit, "commit"),
        (Function::Compact, "compact"),
    ] {
        let unique = format!("{name}-{}", lab.bucket);
        let dlq = sqs.create_queue(&format!("{unique}-dlq"), 30, None).await.unwrap();
        let q = sqs.create_queue(&unique, 2, Some((&dlq, 3))).await.unwrap();
        queues.push((f, q, dlq));
    }
    let arn = |f: Function| queues.iter().find(|(g, ..)| *g == f).unwrap().1.arn.clone();

    // Notifications exactly as docs/deploy.md sets them up.
    moto.s3_put_xml(
        &format!("{}?notification", lab.bucket),
        format!(
            "<NotificationConfiguration>{}</NotificationConfiguration>",
            queue_entry("dms2delta-decode", &arn(Function::Decode), "dms/", None)
        ),
    )
    .await;
    let staging = format!("{lake_prefix}/_dms2delta/staged/");
    moto.s3_put_xml(
        &format!("{lake_bucket}?notification"),
        format!(
            "<NotificationConfiguration>{}{}</NotificationConfiguration>",
            queue_entry("dms2delta-commit", &arn(Function::Commit), &staging, Some(".parquet")),
            queue_entry(
                "dms2delta-compact",
                &arn(Function::Compact),
                &format!("{lake_prefix}/"),
                Some(".json")
            ),
        ),
    )
    .await;

    // DMS writes its files; one is delivered twice, and one is broken (an unknown Op in a
    // headerless CSV table).
    lab.upload_all().await;
    let again = &lab.sim.files[lab.sim.files.len() / 2];
    lab.upload(&again.key, again.bytes.clone()).await;
    let csv = lab
        .sim
        .files
        .iter()
        .find(|f| f.key.starts_with("dms/mysql/") && !f.key.contains("LOAD"))
        .expect("a CDC file of the headerless CSV source");
    let broken_key = format!("{}/20991231-235959999.csv", csv.key.rsplit_once('/').unwrap().0);
    lab.upload(&broken_key, b"Z,1,oops\n".to_vec()).await;

    let functions = Functions {
        decode: decode::handler::State::new(config.clone()),
        commit: commit::handler::State::new(config.clone()),
        compact: compact::handler::State::new(config.clone()),
    };
    let mut rng = fastrand::Rng::with_seed(5);
    let mut totals: Vec<(Function, BatchResult, usize)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut worked = false;
        for (f, q, _) in &queues {
            // Two commit invocations at once, as the commit queue's maximum concurrency allows.
            let instances = if *f == Function::Commit { 2 } else { 1 };
            let mut batches: Vec<Vec<Message>> = Vec::new();
            for _ in 0..instances {
                let b = sqs.receive(q, 10).await.unwrap();
                if !b.is_empty() {
                    batches.push(b);
                }
            }
            if batches.is_empty() {
                continue;
            }
            worked = true;
            let outcomes =
                futures::future::join_all(batches.iter().map(|b| functions.invoke(*f, lambda_event(q, b)))).await;
            for (batch, outcome) in batches.iter().zip(outcomes) {
                // Now and then the function does its work but its answer is lost (a timeout):
                // every message comes back, and applying it again must change nothing.
                let outcome = if rng.f64() < 0.25 {
                    Err("response lost".to_string())
                } else {
                    outcome
                };
                let r = settle(&sqs, q, batch, outcome).await.unwrap();
                let lost = usize::from(r.invocation_failed);
                match totals.iter_mut().find(|(g, ..)| g == f) {
                    Some((_, t, l)) => {
                        t.received += r.received;
                        t.deleted += r.deleted;
                        t.failed += r.failed;
                        *l += lost;
                    }
                    None => totals.push((*f, r, lost)),
                }
            }
        }
        if !worked {
            let mut depth = 0;
            for (_, q, _) in &queues {
                depth += sqs.depth(q).await.unwrap();
            }
            if depth == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(Instant::now() < deadline, "queues did not drain: {totals:?}");
    }
    println!("{totals:?}");

    lab.check().await.unwrap();
    lab.check_log().await.unwrap();
    if !support::skip_python() {
        lab.check_with_python().unwrap();
    }

    // Only the broken file's message ended in a dead-letter queue, with its report written.
    let dead = |q: &Queue| {
        let (sqs, q) = (sqs.clone(), q.clone());
        async move { sqs.receive(&q, 10).await.unwrap() }
    };
    for (f, _, dlq) in &queues {
        let msgs = dead(dlq).await;
        if *f == Function::Decode {
            assert_eq!(msgs.len(), 1, "{msgs:?}");
            let encoded = broken_key.replace('/', "%2F");
            assert!(msgs[0].body.contains(&encoded), "{}", msgs[0].body);
        } else {
            assert!(msgs.is_empty(), "{f:?} dead letters: {msgs:?}");
        }
    }
    let lake_store = lab.pipeline.stores.bucket(&lake_bucket).unwrap();
    let report = lake_store
        .get(&Path::from(format!(
            "{lake_prefix}/_dms2delta/quarantine/{}/{broken_key}.error.json",
            lab.bucket
        )))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let report: Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(report["stage"], "decode");
    assert!(report["fix"].as_str().is_some_and(|f| !f.is_empty()), "{report}");

    // Compact acted on the log entries it was sent: some table got a checkpoint.
    let mut checkpoints = 0;
    for name in lab.sim.expected.keys() {
        let p = format!("{lake_prefix}/{}/_delta_log/_last_checkpoint", name.replace('.', "/"));
        checkpoints += usize::from(lake_store.head(&Path::from(p)).await.is_ok());
    }
    assert!(checkpoints > 0, "no table was checkpointed by the compact function");
    assert!(
        totals.iter().any(|(_, _, lost)| *lost > 0),
        "no answer was lost: {totals:?}"
    );
    for (f, t, lost) in &totals {
        assert!(t.deleted > 0, "{f:?}: {t:?}");
        if *f == Function::Decode {
            assert!(
                t.failed >= 3,
                "the broken file was not retried: {t:?} ({lost} lost answers)"
            );
        }
    }
}
