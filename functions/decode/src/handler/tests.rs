//! The handler, fed with every sample in events/ against the sample data shipped beside them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dms2delta::config::Config;
use serde_json::{json, Value};

use super::{handle, handle_until, State};
use dms2delta::deadline::Deadline;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The events/ configuration with its output folders moved into a temp dir.
fn state(out: &Path) -> State {
    let text = std::fs::read_to_string(repo().join("events/config.yaml")).unwrap();
    let text = text
        .replace(".local/", &format!("{}/", out.display()))
        .replace("events/data/", &format!("{}/events/data/", repo().display()));
    let config = Config::from_text(&text).unwrap();
    let mut s = State::new(Arc::new(config));
    s.spool_dir = Some(out.to_path_buf());
    s
}

fn event(name: &str) -> Value {
    let text = std::fs::read_to_string(repo().join("events").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn direct_put_of_a_full_load_file_stages_one_change_set() {
    let out = tempfile::tempdir().unwrap();
    let s = state(out.path());
    let r = handle(&s, event("s3-put.json")).await.unwrap();
    assert_eq!(r["staged"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["staged"][0]["tables"][0]["table"], "mysql.shop.customers");
    assert_eq!(r["staged"][0]["tables"][0]["rows_out"], 3);
    let staged = files_under(&out.path().join("lake-bucket/_dms2delta/staged"));
    assert_eq!(staged.len(), 1);
    assert!(staged[0].starts_with("mysql/shop/customers/") && staged[0].ends_with(".parquet"));
    // A redelivery rewrites the same object.
    handle(&s, event("s3-put.json")).await.unwrap();
    assert_eq!(files_under(&out.path().join("lake-bucket/_dms2delta/staged")), staged);
}

#[tokio::test]
async fn url_encoded_keys_are_decoded() {
    let out = tempfile::tempdir().unwrap();
    let s = state(out.path());
    let raw = event("s3-put-url-encoded.json");
    assert!(raw["Records"][0]["s3"]["object"]["key"]
        .as_str()
        .unwrap()
        .contains("order+items"));
    let r = handle(&s, raw).await.unwrap();
    assert_eq!(r["staged"][0]["tables"][0]["table"], "mysql.shop.order items", "{r}");
    // Four changes on three keys: (100,1) twice.
    assert_eq!(r["staged"][0]["tables"][0]["rows_in"], 4);
    assert_eq!(r["staged"][0]["tables"][0]["rows_out"], 3);
}

#[tokio::test]
async fn eventbridge_object_created() {
    let out = tempfile::tempdir().unwrap();
    let r = handle(&state(out.path()), event("eventbridge-object-created.json"))
        .await
        .unwrap();
    assert_eq!(r["staged"].as_array().unwrap().len(), 1, "{r}");
}

#[tokio::test]
async fn test_event_folder_marker_zero_byte_and_removal_are_ignored() {
    let out = tempfile::tempdir().unwrap();
    let s = state(out.path());
    let r = handle(&s, event("s3-test-event.json")).await.unwrap();
    assert_eq!(
        r,
        json!({"staged": [], "truncated": [], "skipped": [], "quarantined": [], "failed": []})
    );
    // Removals while the source does not follow them (the default), and lifecycle expirations.
    for name in [
        "s3-folder-marker.json",
        "s3-zero-byte.json",
        "s3-object-removed.json",
        "eventbridge-object-deleted.json",
        "s3-lifecycle-expiration.json",
        "eventbridge-lifecycle-expiration.json",
    ] {
        let r = handle(&s, event(name)).await.unwrap();
        assert_eq!(r["skipped"].as_array().unwrap().len(), 1, "{name}: {r}");
        assert!(r["staged"].as_array().unwrap().is_empty(), "{name}");
    }
    assert!(files_under(out.path()).iter().all(|f| !f.contains("staged")));
}

#[tokio::test]
async fn sqs_batches_report_no_failures_when_all_succeed() {
    let out = tempfile::tempdir().unwrap();
    let s = state(out.path());
    for name in ["sqs-batch.json", "sqs-sns-wrapped.json"] {
        let r = handle(&s, event(name)).await.unwrap();
        assert_eq!(r, json!({"batchItemFailures": []}), "{name}");
    }
    let staged = files_under(&out.path().join("lake-bucket/_dms2delta/staged"));
    assert!(staged.len() >= 2, "{staged:?}");
}

fn in_secs(secs: u64) -> Deadline {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    Deadline::from_epoch_millis(now + secs * 1000)
}

#[tokio::test]
async fn messages_that_cannot_finish_before_the_deadline_are_left_to_the_queue() {
    let out = tempfile::tempdir().unwrap();
    let s = state(out.path());
    let batch = event("sqs-batch.json");
    let ids: Vec<String> = batch["Records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["messageId"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.len() >= 2);
    // Less time left than any decode is given: only the first message is started (a batch
    // always makes progress), every other one goes back to the queue.
    let r = handle_until(&s, batch.clone().into(), in_secs(5)).await.unwrap();
    let failed: Vec<String> = r["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(failed, ids[1..], "{r}");
    let first = files_under(&out.path().join("lake-bucket/_dms2delta/staged"));
    assert_eq!(first.len(), 1, "{first:?}");
    // With time enough, the same batch decodes.
    let r = handle_until(&s, batch.into(), in_secs(600)).await.unwrap();
    assert_eq!(r, json!({"batchItemFailures": []}));
    assert!(files_under(&out.path().join("lake-bucket/_dms2delta/staged")).len() > first.len());
}

#[tokio::test]
async fn a_bad_file_in_an_sqs_batch_fails_only_its_message_and_is_quarantined() {
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("data");
    let table = data.join("dms/mysql/shop/customers");
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
        .replace("events/data/dms-bucket", &data.display().to_string());
    let s = State::new(Arc::new(Config::from_text(&text).unwrap()));
    let body = |key: &str| {
        json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": "dms-bucket"}, "object": {"key": key, "size": 40, "eTag": "e"}}}]})
        .to_string()
    };
    let batch = json!({"Records": [
        {"messageId": "good", "eventSource": "aws:sqs", "body": body("dms/mysql/shop/customers/20240601-000000000.csv")},
        {"messageId": "bad", "eventSource": "aws:sqs", "body": body("dms/mysql/shop/customers/20240601-000000001.csv")},
        {"messageId": "garbled", "eventSource": "aws:sqs", "body": "{not json"},
    ]});
    let r = handle(&s, batch).await.unwrap();
    let failed: Vec<&str> = r["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect();
    assert_eq!(failed, vec!["bad", "garbled"]);
    // The good file was staged; the bad one stays in place with a report beside the quarantine root.
    assert_eq!(files_under(&out.path().join("lake-bucket/_dms2delta/staged")).len(), 1);
    assert!(table.join("20240601-000000001.csv").exists());
    let report_path = out.path().join(
        "lake-bucket/_dms2delta/quarantine/dms-bucket/dms/mysql/shop/customers/20240601-000000001.csv.error.json",
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(report_path).unwrap()).unwrap();
    assert_eq!(report["stage"], "decode");
    assert_eq!(report["kind"], "unknown_op");
    assert_eq!(report["table"], "mysql.shop.customers");
    assert_eq!(
        report["file"],
        "s3://dms-bucket/dms/mysql/shop/customers/20240601-000000001.csv"
    );
    assert!(report["reason"].as_str().unwrap().contains("line 1"));
    assert!(!report["fix"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn a_direct_invocation_with_a_bad_file_fails() {
    let out = tempfile::tempdir().unwrap();
    let s = state(out.path());
    let ev = json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "dms-bucket"}, "object": {"key": "dms/mysql/shop/unknown_table/LOAD00000001.csv", "size": 10}}}]});
    let e = handle(&s, ev).await.unwrap_err();
    assert!(e.to_string().contains("no_key"), "{e}");
}

/// The events/ configuration following removals, its DMS bucket a copy of the sample data.
fn following(out: &Path) -> (State, PathBuf) {
    let data = out.join("data");
    let table = data.join("dms/mysql/shop/customers");
    std::fs::create_dir_all(&table).unwrap();
    std::fs::copy(
        repo().join("events/data/dms-bucket/dms/mysql/shop/customers/LOAD00000001.csv"),
        table.join("LOAD00000001.csv"),
    )
    .unwrap();
    let text = std::fs::read_to_string(repo().join("events/config.yaml"))
        .unwrap()
        .replace(".local/", &format!("{}/", out.display()))
        .replace("events/data/dms-bucket", &data.display().to_string())
        .replace(
            "    bucket_folder: dms/mysql\n",
            "    bucket_folder: dms/mysql\n    truncates: { follow_removals: true }\n",
        );
    assert!(text.contains("follow_removals"));
    (State::new(Arc::new(Config::from_text(&text).unwrap())), table)
}

fn markers(out: &Path) -> Vec<String> {
    files_under(&out.join("lake-bucket/_dms2delta/staged"))
        .into_iter()
        .filter(|f| f.ends_with(".floor"))
        .collect()
}

/// With truncates.follow_removals, DMS removing a table's files (direct S3 notification or
/// EventBridge) stages a truncate marker once the folder holds no older file; a lifecycle
/// expiration of the same file never does, and neither does a removal while the file is there.
#[tokio::test]
async fn removals_of_a_followed_table_stage_a_truncate_and_expirations_never_do() {
    for name in ["s3-object-removed.json", "eventbridge-object-deleted.json"] {
        let out = tempfile::tempdir().unwrap();
        // The sample's LOAD file is still there, but written now, after the removal's time:
        // files written after a removal are the table's new history and do not block it.
        let (s, _) = following(out.path());
        let r = handle(&s, event(name)).await.unwrap();
        assert_eq!(r["truncated"].as_array().unwrap().len(), 1, "{name}: {r}");
        assert_eq!(r["truncated"][0]["table"], "mysql.shop.customers", "{name}");
        let m = markers(out.path());
        assert_eq!(m.len(), 1, "{name}: {m:?}");
        assert!(
            m[0].starts_with("mysql/shop/customers/truncate-F20240529081527"),
            "{name}: {m:?}"
        );
        // A redelivery rewrites the same marker.
        handle(&s, event(name)).await.unwrap();
        assert_eq!(markers(out.path()), m, "{name}");
    }
    for name in ["s3-lifecycle-expiration.json", "eventbridge-lifecycle-expiration.json"] {
        let out = tempfile::tempdir().unwrap();
        let (s, table) = following(out.path());
        std::fs::remove_file(table.join("LOAD00000001.csv")).unwrap();
        let r = handle(&s, event(name)).await.unwrap();
        assert!(r["truncated"].as_array().unwrap().is_empty(), "{name}: {r}");
        assert_eq!(r["skipped"][0]["reason"], "lifecycle expiration", "{name}: {r}");
        assert!(markers(out.path()).is_empty(), "{name}");
    }
    // A file of the table written before the removal is still there: a cleanup, not a truncate.
    let out = tempfile::tempdir().unwrap();
    let (s, table) = following(out.path());
    // 2024-05-28T19:51:42Z, the day before the removal.
    let before = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_716_925_902);
    std::fs::File::options()
        .write(true)
        .open(table.join("LOAD00000001.csv"))
        .unwrap()
        .set_modified(before)
        .unwrap();
    let r = handle(&s, event("s3-object-removed.json")).await.unwrap();
    assert!(r["truncated"].as_array().unwrap().is_empty(), "{r}");
    assert!(
        r["skipped"][0]["reason"].as_str().unwrap().contains("older file"),
        "{r}"
    );
    assert!(markers(out.path()).is_empty());
}
