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

type Totals = Vec<(Function, BatchResult, usize)>;

/// The stack as deployed, on the local endpoint: buckets, queues with dead-letter queues, the
/// notifications of docs/deploy.md, and the functions' state.
struct Deployment {
    lab: Lab,
    sqs: Sqs,
    queues: Vec<(Function, Queue, Queue)>,
    functions: Functions,
    lake_bucket: String,
    lake_prefix: String,
}

impl Deployment {
    async fn new(opts: &SimOptions, extra: &str) -> Deployment {
        let moto = support::s3::moto();
        let lab = Lab::on_s3_with(opts, None, None, extra).await;
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
        let functions = Functions::new(config);
        Deployment {
            lab,
            sqs,
            queues,
            functions,
            lake_bucket,
            lake_prefix,
        }
    }

    fn queue(&self, f: Function) -> (&Queue, &Queue) {
        let (_, q, dlq) = self.queues.iter().find(|(g, ..)| *g == f).unwrap();
        (q, dlq)
    }

    /// Feeds every queue to its function until all are empty, losing about `lost_answers` of
    /// the answers (the function did its work, Lambda never heard: every message comes back).
    async fn drain(&self, rng: &mut fastrand::Rng, lost_answers: f64) -> Totals {
        let mut totals: Totals = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let mut worked = false;
            for (f, q, _) in &self.queues {
                // Two commit invocations at once, as the commit queue's maximum concurrency allows.
                let instances = if *f == Function::Commit { 2 } else { 1 };
                let mut batches: Vec<Vec<Message>> = Vec::new();
                for _ in 0..instances {
                    let b = self.sqs.receive(q, 10).await.unwrap();
                    if !b.is_empty() {
                        batches.push(b);
                    }
                }
                if batches.is_empty() {
                    continue;
                }
                worked = true;
                let outcomes =
                    futures::future::join_all(batches.iter().map(|b| self.functions.invoke(*f, lambda_event(q, b))))
                        .await;
                for (batch, outcome) in batches.iter().zip(outcomes) {
                    let outcome = if rng.f64() < lost_answers {
                        Err("response lost".to_string())
                    } else {
                        outcome
                    };
                    let r = settle(&self.sqs, q, batch, outcome).await.unwrap();
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
                for (_, q, _) in &self.queues {
                    depth += self.sqs.depth(q).await.unwrap();
                }
                if depth == 0 {
                    return totals;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            assert!(Instant::now() < deadline, "queues did not drain: {totals:?}");
        }
    }

    async fn dead_letters(&self) -> Vec<(Function, Vec<Message>)> {
        let mut out = Vec::new();
        for (f, _, dlq) in &self.queues {
            out.push((*f, self.sqs.receive(dlq, 10).await.unwrap()));
        }
        out
    }

    async fn quarantine_report(&self, key: &str) -> Option<Value> {
        let store = self.lab.pipeline.stores.bucket(&self.lake_bucket).unwrap();
        let path = Path::from(format!(
            "{}/_dms2delta/quarantine/{}/{key}.error.json",
            self.lake_prefix, self.lab.bucket
        ));
        let bytes = store.get(&path).await.ok()?.bytes().await.unwrap();
        Some(serde_json::from_slice(&bytes).unwrap())
    }
}

impl Functions {
    fn new(config: std::sync::Arc<dms2delta::config::Validated>) -> Functions {
        Functions {
            decode: decode::handler::State::new(config.clone()),
            commit: commit::handler::State::new(config.clone()),
            compact: compact::handler::State::new(config),
        }
    }
}

fn sim_options(seed: u64) -> SimOptions {
    SimOptions {
        seed,
        keys: 15,
        changes: 40,
        max_file_changes: 8,
        formats: Format::ALL.to_vec(),
        ..SimOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_notifications_through_sqs_replicate_every_table() {
    // Compaction thresholds low enough that the compact function has work to do here.
    let extra = "compact:\n  min_small_files: 3\n  check_every_commits: 1\n  checkpoint_interval: 2\n";
    let d = Deployment::new(&sim_options(11), extra).await;
    let lab = &d.lab;

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

    let mut rng = fastrand::Rng::with_seed(5);
    let totals = d.drain(&mut rng, 0.25).await;
    println!("{totals:?}");

    lab.check().await.unwrap();
    lab.check_log().await.unwrap();
    if !support::skip_python() {
        lab.check_with_python().unwrap();
    }

    // Only the broken file's message ended in a dead-letter queue (after its retries), with its
    // quarantine report beside it.
    for (f, msgs) in d.dead_letters().await {
        if f == Function::Decode {
            assert_eq!(msgs.len(), 1, "{msgs:?}");
            assert!(
                msgs[0].body.contains(&broken_key.replace('/', "%2F")),
                "{}",
                msgs[0].body
            );
        } else {
            assert!(msgs.is_empty(), "{f:?} dead letters: {msgs:?}");
        }
    }
    let report = d.quarantine_report(&broken_key).await.expect("no quarantine report");
    assert_eq!(report["stage"], "decode");
    assert!(report["fix"].as_str().is_some_and(|f| !f.is_empty()), "{report}");
    let decode_failures = totals
        .iter()
        .find(|(f, ..)| *f == Function::Decode)
        .map(|(_, t, _)| t.failed);
    assert!(
        decode_failures >= Some(3),
        "the broken file was not retried: {totals:?}"
    );

    // Compact acted on the log entries it was sent: some table got a checkpoint.
    let lake_store = lab.pipeline.stores.bucket(&d.lake_bucket).unwrap();
    let mut checkpoints = 0;
    for name in lab.sim.expected.keys() {
        let p = format!(
            "{}/{}/_delta_log/_last_checkpoint",
            d.lake_prefix,
            name.replace('.', "/")
        );
        checkpoints += usize::from(lake_store.head(&Path::from(p)).await.is_ok());
    }
    assert!(checkpoints > 0, "no table was checkpointed by the compact function");
    assert!(
        totals.iter().any(|(_, _, lost)| *lost > 0),
        "no answer was lost: {totals:?}"
    );
    for (f, t, _) in &totals {
        assert!(t.deleted > 0, "{f:?}: {t:?}");
    }
}

/// What the alarm-driven reprocess function recovers, on the deployed shape: an event that never
/// arrived, a message that ended in a dead-letter queue, and files quarantined by a wrong setting
/// that was fixed since. The SNS alarm sample (events/reprocess-alarm.json) triggers it; the
/// function talks to the endpoint's SQS through the AWS SDK, as on AWS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reprocess_function_recovers_lost_events_dead_letters_and_quarantined_files() {
    let moto = support::s3::moto();
    let mut d = Deployment::new(&sim_options(21), "").await;
    // The functions first run with a limit that quarantines the bigger files.
    let strict = support::pipeline(&format!("{}limits:\n  max_file_bytes: 700\n", d.lab.config_text), None);
    d.functions = Functions::new(strict.config.clone());
    d.lab.upload_all().await;

    // One file's event is lost, another's message is dead-lettered.
    let cdc: Vec<&str> = d
        .lab
        .sim
        .files
        .iter()
        .filter(|f| !f.key.contains("LOAD"))
        .map(|f| f.key.as_str())
        .collect();
    let (lost_key, dead_key) = (cdc[cdc.len() / 3], cdc[2 * cdc.len() / 3]);
    let (decode_q, decode_dlq) = {
        let (q, dlq) = d.queue(Function::Decode);
        (q.clone(), dlq.clone())
    };
    let (mut lost, mut dead) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(lost && dead) {
        assert!(Instant::now() < deadline, "the two events never showed up");
        for m in d.sqs.receive(&decode_q, 10).await.unwrap() {
            let encoded = |k: &str| k.replace('/', "%2F");
            if m.body.contains(&encoded(lost_key)) {
                d.sqs.delete(&decode_q, &m).await.unwrap();
                lost = true;
            } else if m.body.contains(&encoded(dead_key)) {
                d.sqs.send(&decode_dlq, &m.body).await.unwrap();
                d.sqs.delete(&decode_q, &m).await.unwrap();
                dead = true;
            }
        }
    }
    let mut rng = fastrand::Rng::with_seed(9);
    d.drain(&mut rng, 0.0).await;
    assert!(d.lab.check().await.is_err(), "the lake should be behind the source");
    let quarantined: Vec<&str> = {
        let mut v = Vec::new();
        for f in &d.lab.sim.files {
            if d.quarantine_report(&f.key).await.is_some() {
                v.push(f.key.as_str());
            }
        }
        v
    };
    assert!(!quarantined.is_empty(), "the limit quarantined nothing");

    // The setting is fixed and redeployed; the dead-letter alarm fires.
    let fixed = d.lab.config();
    d.functions = Functions::new(fixed.clone());
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&moto.url)
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    let queues = std::sync::Arc::new(reprocess::queues::Sqs::new(aws_sdk_sqs::Client::new(&aws)));
    let settings = reprocess::handler::Settings {
        decode_queue_url: Some(decode_q.url.clone()),
        redrive: d
            .queues
            .iter()
            .map(|(_, q, dlq)| (dlq.url.clone(), q.url.clone()))
            .collect(),
        ..reprocess::handler::Settings::default()
    };
    let state = reprocess::handler::State::new(fixed, queues, settings);
    let alarm: Value =
        serde_json::from_str(&std::fs::read_to_string(support::repo().join("events/reprocess-alarm.json")).unwrap())
            .unwrap();
    let r = reprocess::handler::handle(&state, alarm).await.unwrap();
    println!("{r}");
    let redriven: u64 = r["redriven"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["messages"].as_u64())
        .sum();
    // The dead-lettered message, and those of the files quarantined before the fix (decoded
    // now, so nothing holds their dead letters back).
    assert!(redriven > quarantined.len() as u64, "{r}");
    let kept: u64 = r["redriven"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["kept"].as_u64())
        .sum();
    assert_eq!(kept, 0, "{r}");
    let missing: Vec<&str> = r["reprocess"]["missing"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(missing.iter().any(|m| m.ends_with(lost_key)), "{r}");
    assert_eq!(r["reprocess"]["quarantine_recovered"], quarantined.len(), "{r}");
    for key in &quarantined {
        assert!(d.quarantine_report(key).await.is_none(), "{key} still has a report");
    }

    // The queues carry the rest through the pipeline.
    d.drain(&mut rng, 0.0).await;
    d.lab.check().await.unwrap();
    d.lab.check_log().await.unwrap();
    if !support::skip_python() {
        d.lab.check_with_python().unwrap();
    }
    for (f, msgs) in d.dead_letters().await {
        assert!(msgs.is_empty(), "{f:?} dead letters: {msgs:?}");
    }
    // Running it again finds nothing to do.
    let again = reprocess::handler::handle(&state, serde_json::json!({})).await.unwrap();
    assert_eq!(again["reprocess"]["files_missing"], 0, "{again}");
    assert_eq!(again["reprocess"]["quarantined"], 0, "{again}");
    assert_eq!(again["reprocess"]["rows_changed"], 0, "{again}");
}
