//! The reprocess handler on the sample events, over the sample DMS files on local folders.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dms2delta::config::Config;
use dms2delta::events::{parse, Payload};
use serde_json::{json, Value};

use super::*;
use crate::queues::memory::Memory;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn event(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("events").join(name)).unwrap()).unwrap()
}

fn config(out: &Path) -> Arc<Validated> {
    let text = std::fs::read_to_string(repo().join("events/config.yaml"))
        .unwrap()
        .replace(".local/", &format!("{}/", out.display()))
        .replace("events/data/", &format!("{}/events/data/", repo().display()));
    Arc::new(Config::from_text(&text).unwrap())
}

fn state(out: &Path, queues: Arc<Memory>, settings: Settings) -> State {
    State::new(config(out), queues, settings)
}

/// The sample DMS files under events/data.
const SAMPLE_FILES: usize = 4;

#[test]
fn every_sample_event_is_understood() {
    assert_eq!(
        trigger(&event("reprocess-alarm.json")).unwrap(),
        Trigger::Alarm {
            name: "dms2delta-DecodeDeadLetters".into(),
            state: "ALARM".into()
        }
    );
    assert!(matches!(
        trigger(&event("reprocess-alarm-ok.json")).unwrap(),
        Trigger::Alarm { state, .. } if state == "OK"
    ));
    assert_eq!(trigger(&event("reprocess-schedule.json")).unwrap(), Trigger::Schedule);
    assert_eq!(
        trigger(&event("reprocess-manual.json")).unwrap(),
        Trigger::Manual(Request {
            table: Some("mysql.shop.customers".into()),
            since: Some("2024-05-28T00:00:00Z".into()),
            dry_run: true,
            redrive: None,
        })
    );
}

#[test]
fn other_payloads_are_refused_with_the_reason() {
    for (payload, words) in [
        (json!({"table": "a.b.c", "dryrun": true}), "dryrun"),
        (event("sqs-batch.json"), "not SNS"),
        (
            json!({"Records": [{"EventSource": "aws:sns", "Sns": {"Message": "hello"}}]}),
            "not a CloudWatch alarm",
        ),
    ] {
        let e = trigger(&payload).unwrap_err().to_string();
        assert!(e.contains(words), "{e}");
    }
}

#[test]
fn settings_come_from_the_environment_and_mistakes_are_named() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    };
    let s = Settings::from_env(env(&[
        ("DECODE_QUEUE_URL", "https://sqs/decode"),
        (
            "REDRIVE",
            "https://sqs/decode-dlq=https://sqs/decode, https://sqs/commit-dlq=https://sqs/commit",
        ),
        ("RECONCILE_HOURS", "6"),
    ]))
    .unwrap();
    assert_eq!(s.decode_queue_url.as_deref(), Some("https://sqs/decode"));
    assert_eq!(s.redrive.len(), 2);
    assert_eq!(
        s.redrive[1],
        ("https://sqs/commit-dlq".into(), "https://sqs/commit".into())
    );
    assert_eq!((s.reconcile_hours, s.max_files, s.max_redrive), (6, 5000, 10_000));
    let e = Settings::from_env(env(&[("REDRIVE", "https://sqs/only-one")])).unwrap_err();
    assert!(
        matches!(&e, BadSetting::RedrivePair { pair } if pair == "https://sqs/only-one"),
        "{e}"
    );
    assert!(e.to_string().contains("REDRIVE"), "{e}");
    // Zero parses but is refused; a word has the parse error as its cause.
    for (setting, parsed) in [(&[("MAX_FILES", "0")], true), (&[("RECONCILE_HOURS", "six")], false)] {
        let (name, value) = setting[0];
        let e = Settings::from_env(env(setting)).unwrap_err();
        match &e {
            BadSetting::NotPositive { name: n, source, .. } => {
                assert_eq!((*n, source.is_none()), (name, parsed), "{e}")
            }
            other => panic!("{name}={value}: {other:?}"),
        }
        assert!(e.to_string().starts_with(&format!("{name}={value}:")), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_redrives_dead_letters_and_sends_missed_files_to_decode() {
    let out = tempfile::tempdir().unwrap();
    let queues = Arc::new(Memory::default());
    queues
        .waiting
        .lock()
        .unwrap()
        .push(("dlq".into(), r#"{"Records":[]}"#.into()));
    let settings = Settings {
        decode_queue_url: Some("decode".into()),
        redrive: vec![("dlq".into(), "decode".into())],
        // The sample files are years old: look back far enough to see them.
        reconcile_hours: 24 * 365 * 20,
        max_files: 100,
        max_redrive: 100,
    };
    let s = state(out.path(), queues.clone(), settings);
    let r = handle(&s, event("reprocess-alarm.json")).await.unwrap();
    assert_eq!(r["trigger"], "alarm");
    assert_eq!(r["redriven"][0]["messages"], 1);
    assert_eq!(r["reprocess"]["files_missing"], SAMPLE_FILES, "{r}");
    let sent = queues.sent.lock().unwrap().clone();
    // One notification per missed file, each naming a real sample object, then the dead letter.
    assert_eq!(sent.len(), SAMPLE_FILES + 1);
    assert!(sent.iter().all(|(url, _)| url == "decode"));
    assert_eq!(sent[SAMPLE_FILES].1, r#"{"Records":[]}"#);
    for (_, body) in &sent[..SAMPLE_FILES] {
        let Payload::Direct(d) = parse(&serde_json::from_str(body).unwrap()).unwrap() else {
            panic!("{body}")
        };
        let o = &d.objects.unwrap()[0];
        assert_eq!(o.bucket, "dms-bucket");
        assert!(
            repo().join("events/data/dms-bucket").join(&o.key).is_file(),
            "{}",
            o.key
        );
    }
    assert!(queues.waiting.lock().unwrap().is_empty());

    // The alarm going back to OK does nothing.
    let ok = handle(&s, event("reprocess-alarm-ok.json")).await.unwrap();
    assert_eq!(ok["skipped"], true);
    assert_eq!(queues.sent.lock().unwrap().len(), SAMPLE_FILES + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_decode_queue_missed_files_are_applied_here_and_a_rerun_finds_nothing() {
    let out = tempfile::tempdir().unwrap();
    let queues = Arc::new(Memory::default());
    let s = state(out.path(), queues.clone(), Settings::default());
    // A dry run by hand first: nothing is written.
    let dry = handle(&s, json!({"dry_run": true})).await.unwrap();
    assert_eq!(dry["reprocess"]["files_missing"], SAMPLE_FILES, "{dry}");
    assert!(!out.path().join("lake-bucket/lake").exists());

    let r = handle(&s, json!({})).await.unwrap();
    assert_eq!(r["trigger"], "manual");
    assert_eq!(r["reprocess"]["files_requeued"], SAMPLE_FILES, "{r}");
    let committed: Vec<&str> = r["reprocess"]["tables_committed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(committed, vec!["mysql.shop.customers", "mysql.shop.order items"]);
    assert!(out
        .path()
        .join("lake-bucket/lake/mysql/shop/customers/_delta_log")
        .is_dir());
    assert!(queues.sent.lock().unwrap().is_empty());

    // Everything is applied now.
    let again = handle(&s, json!({"table": "mysql.shop.customers"})).await.unwrap();
    assert_eq!(again["reprocess"]["rows_changed"], 0, "{again}");
    assert!(
        again["reprocess"]["tables_committed"].as_array().unwrap().is_empty(),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_files_still_quarantined_stay_and_the_others_go_back() {
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("data");
    let table = data.join("dms-bucket/dms/mysql/shop/customers");
    std::fs::create_dir_all(&table).unwrap();
    std::fs::write(
        table.join("20240601-000000000.csv"),
        "I,1,a,b,1.00,2024-01-01 00:00:00\n",
    )
    .unwrap();
    std::fs::write(
        table.join("20240601-000000001.csv"),
        "X,1,a,b,1.00,2024-01-01 00:00:00\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(repo().join("events/config.yaml"))
        .unwrap()
        .replace(".local/", &format!("{}/", out.path().display()))
        .replace("events/data/", &format!("{}/", data.display()));
    let config = Arc::new(Config::from_text(&text).unwrap());
    let queues = Arc::new(Memory::default());
    let body = |name: &str| {
        json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "dms-bucket"}, "object": {"key": format!("dms/mysql/shop/customers/{name}")}}}]})
        .to_string()
    };
    for name in ["20240601-000000000.csv", "20240601-000000001.csv"] {
        queues.waiting.lock().unwrap().push(("dlq".into(), body(name)));
    }
    let settings = Settings {
        redrive: vec![("dlq".into(), "decode".into())],
        ..Settings::default()
    };
    let s = State::new(config, queues.clone(), settings);
    let r = handle(&s, json!({})).await.unwrap();
    // The bad file was decoded here (its event looked lost) and quarantined: its dead letter stays.
    assert_eq!(r["reprocess"]["files_requeued"], 2, "{r}");
    assert_eq!(r["redriven"][0]["messages"], 1, "{r}");
    assert_eq!(r["redriven"][0]["kept"], 1, "{r}");
    let waiting = queues.waiting.lock().unwrap().clone();
    assert_eq!(waiting.len(), 1);
    assert!(waiting[0].1.contains("20240601-000000001.csv"));
    let sent = queues.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].1.contains("20240601-000000000.csv"));
    assert!(out
        .path()
        .join("lake-bucket/_dms2delta/quarantine/dms-bucket/dms/mysql/shop/customers/20240601-000000001.csv.error.json")
        .is_file());
}

const SAMPLE_TASK: &str = "arn:aws:dms:us-east-1:123456789012:task:F8TBR5IJGVM78ZQYCR60BO87AF";

/// Counts the questions and answers nothing: no table of the samples is reloaded.
#[derive(Debug, Default)]
struct Asked(std::sync::atomic::AtomicUsize);

#[async_trait::async_trait]
impl LoadProgress for Asked {
    async fn table_load(
        &self,
        _: &str,
        _: &str,
        _: &str,
    ) -> Result<Option<dms2delta::dms::TableLoad>, dms2delta::dms::DmsError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(None)
    }
}

#[test]
fn dms_task_events_are_understood_and_a_malformed_one_is_refused() {
    let Trigger::DmsTask(stopped) = trigger(&event("dms-task-stopped.json")).unwrap() else {
        panic!("not a DMS task event")
    };
    assert_eq!(stopped.kind(), TaskEventKind::Stopped);
    assert_eq!(stopped.task_arn.as_deref(), Some(SAMPLE_TASK));
    assert!(matches!(
        trigger(&event("dms-task-failed.json")).unwrap(),
        Trigger::DmsTask(e) if e.kind() == TaskEventKind::Failed
    ));
    let mut broken = event("dms-task-stopped.json");
    broken["detail"] = json!({"category": "StateChange"});
    let e = trigger(&broken).unwrap_err().to_string();
    assert!(e.contains("DMS task state change"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dms_task_stop_commits_the_waiting_tables_of_the_sources_it_writes() {
    let out = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("events/config.yaml"))
        .unwrap()
        .replace(".local/", &format!("{}/", out.path().display()))
        .replace("events/data/", &format!("{}/events/data/", repo().display()))
        .replace(
            "    bucket_folder: dms/mysql\n",
            &format!("    bucket_folder: dms/mysql\n    dms_task_arn: {SAMPLE_TASK}\n"),
        );
    let config = Arc::new(Config::from_text(&text).unwrap());
    let asked = Arc::new(Asked::default());
    let s =
        State::new(config.clone(), Arc::new(Memory::default()), Settings::default()).with_load_progress(asked.clone());
    // The sample files decoded, their change sets waiting (their commit notifications lost).
    let staged = ReprocessBuilder::new(config.clone(), &s.stores)
        .with_commit_pending(false)
        .await
        .unwrap();
    assert_eq!(staged.files_requeued, SAMPLE_FILES);
    let lake = out.path().join("lake-bucket/lake/mysql/shop/customers/_delta_log");
    assert!(!lake.exists());

    // A start, a failure, and a stop of a task no source names change nothing.
    let mut other = event("dms-task-stopped.json");
    other["resources"] = json!(["arn:aws:dms:us-east-1:123456789012:task:SOMEONEELSE"]);
    for (payload, why) in [
        (event("dms-task-started.json"), "only a stop"),
        (event("dms-task-failed.json"), "only a stop"),
        (other, "no configured source"),
    ] {
        let r = handle(&s, payload).await.unwrap();
        assert_eq!(r["trigger"], "dms", "{r}");
        assert!(r["skipped"].as_str().unwrap().contains(why), "{r}");
    }
    assert!(!lake.exists());

    let r = handle(&s, event("dms-task-stopped.json")).await.unwrap();
    assert_eq!(r["sources"], json!(["mysql"]), "{r}");
    assert_eq!(r["stop_reason"], "FULL_LOAD_ONLY_FINISHED", "{r}");
    let committed: Vec<&str> = r["reprocess"]["tables_committed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(committed, vec!["mysql.shop.customers", "mysql.shop.order items"], "{r}");
    assert!(lake.is_dir());
    // No reload is waiting, so DMS was not asked.
    assert_eq!(asked.0.load(std::sync::atomic::Ordering::SeqCst), 0);
}
