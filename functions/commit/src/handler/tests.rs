//! The commit handler on the sample events, after the decode function staged the sample data.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dms2delta::config::Config;
use dms2delta::failpoint::Failpoints;
use dms2delta::pipeline::Pipeline;
use dms2delta::storage::Stores;
use serde_json::{json, Value};

use super::{handle, handle_until, State};
use dms2delta::deadline::{Deadline, COMMIT_RESERVE};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn config(out: &Path) -> Arc<dms2delta::config::Validated> {
    let text = std::fs::read_to_string(repo().join("events/config.yaml"))
        .unwrap()
        .replace(".local/", &format!("{}/", out.display()))
        .replace("events/data/", &format!("{}/events/data/", repo().display()));
    Arc::new(Config::from_text(&text).unwrap())
}

fn event(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("events").join(name)).unwrap()).unwrap()
}

/// Stages the sample DMS files the way the decode function would.
async fn stage_samples(cfg: &Arc<dms2delta::config::Validated>) -> Pipeline {
    let p = Pipeline::new(cfg.clone(), Arc::new(Stores::new(cfg.config.storage.clone())));
    for key in [
        "dms/mysql/shop/customers/LOAD00000001.csv",
        "dms/mysql/shop/customers/20240528-195141380.csv",
        "dms/mysql/shop/customers/20240528-195143000.csv.gz",
        "dms/mysql/shop/order items/20240528-195142001.parquet",
    ] {
        p.decode("dms-bucket", key, Some("e".into()), Failpoints::default())
            .await
            .unwrap();
    }
    p
}

#[tokio::test]
async fn a_direct_event_commits_every_pending_change_set_of_its_table() {
    let out = tempfile::tempdir().unwrap();
    let cfg = config(out.path());
    let p = stage_samples(&cfg).await;
    let state = State::new(cfg.clone());
    let r = handle(&state, event("commit-s3-put.json")).await.unwrap();
    let t = &r["tables"][0];
    assert_eq!(t["table"], "mysql.shop.customers", "{r}");
    assert_eq!(t["change_sets"], 3);
    // LOAD: 1,2,3. CDC: 1 updated, 4 inserted then updated, 3 deleted. gz: 5 inserted, 2 updated.
    let spec = cfg.table_by_target("mysql", "shop", "customers").unwrap();
    let rows = dms2delta::sim::rows_of(
        &p.read_table(&p.table_location(&spec)).await.unwrap(),
        &["id".to_string(), "email".to_string(), "balance".to_string()],
    )
    .unwrap();
    let text: Vec<String> = rows
        .iter()
        .map(|r| r.iter().map(|v| v.canonical()).collect::<Vec<_>>().join("|"))
        .collect();
    assert_eq!(
        text,
        vec![
            "1|ann.lee@example.com|120.00",
            "2|bo@example.com|2600.50",
            "4|q@example.com|15.00",
            "5|eve@example.com|1.00",
        ]
    );
    // The order items table is still pending: its event has not come.
    assert_eq!(p.pending().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_sqs_batch_commits_each_table_once_and_reports_no_failures() {
    let out = tempfile::tempdir().unwrap();
    let cfg = config(out.path());
    let p = stage_samples(&cfg).await;
    let r = handle(&State::new(cfg.clone()), event("commit-sqs-batch.json"))
        .await
        .unwrap();
    assert_eq!(r, json!({"batchItemFailures": []}));
    assert!(p.pending().await.unwrap().is_empty());
    let spec = cfg.table_by_target("mysql", "shop", "order items").unwrap();
    let rows = dms2delta::sim::rows_of(
        &p.read_table(&p.table_location(&spec)).await.unwrap(),
        &["order_id".to_string(), "line".to_string(), "qty".to_string()],
    )
    .unwrap();
    // (100,1) inserted then updated to qty 2; (100,2) inserted; (101,1) deleted before it existed.
    assert_eq!(rows.len(), 2, "{rows:?}");
}

#[tokio::test]
async fn tables_that_cannot_commit_before_the_deadline_are_left_to_the_queue() {
    let out = tempfile::tempdir().unwrap();
    let cfg = config(out.path());
    let p = stage_samples(&cfg).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let short = Deadline::from_epoch_millis(now + COMMIT_RESERVE.as_millis() as u64 / 2);
    let batch = event("commit-sqs-batch.json");
    let r = handle_until(&State::new(cfg.clone()), batch.clone().into(), short)
        .await
        .unwrap();
    // The first table (customers) is always committed; the second is not started, and the
    // messages naming it go back to the queue.
    let failed = r["batchItemFailures"].as_array().unwrap().len();
    let naming_the_second = batch["Records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["body"].as_str().unwrap().contains("order+items"))
        .count();
    assert!(naming_the_second >= 1);
    assert_eq!(failed, naming_the_second, "{r}");
    let left = p.pending().await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].table, "order items");
    let r = handle_until(
        &State::new(cfg),
        batch.into(),
        Deadline::from_epoch_millis(now + 600_000),
    )
    .await
    .unwrap();
    assert_eq!(r, json!({"batchItemFailures": []}));
    assert!(p.pending().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_table_fails_only_the_messages_that_named_it() {
    let out = tempfile::tempdir().unwrap();
    let cfg = config(out.path());
    stage_samples(&cfg).await;
    // Make the customers table unwritable: a file where its folder should be.
    let lake = out.path().join("lake-bucket/lake/mysql/shop");
    std::fs::create_dir_all(&lake).unwrap();
    std::fs::write(lake.join("customers"), b"not a folder").unwrap();
    let r = handle(&State::new(cfg), event("commit-sqs-batch.json")).await.unwrap();
    let failed: Vec<&str> = r["batchItemFailures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["itemIdentifier"].as_str().unwrap())
        .collect();
    assert_eq!(failed, vec!["4f9b1c2e-0a7d-4e3b-9c6f-1d2e3f4a5b6c"], "{r}");
}

/// A truncate is staged as a floor marker alone (decode, on DMS removing the table's files):
/// its own created event commits the table, which loses every row from before the truncate,
/// and the marker is gone afterwards.
#[tokio::test]
async fn a_floor_marker_event_commits_its_table() {
    use dms2delta::generation::{Anchor, FloorKind, SeqKind};
    let out = tempfile::tempdir().unwrap();
    let cfg = config(out.path());
    let p = stage_samples(&cfg).await;
    let state = State::new(cfg.clone());
    handle(&state, event("commit-s3-put.json")).await.unwrap();
    let spec = cfg.table_by_target("mysql", "shop", "customers").unwrap();
    assert_eq!(
        p.read_table(&p.table_location(&spec))
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        4
    );

    // After every sample change (2024-05-28).
    let t = "2024-05-29T08:15:27.440Z".parse().unwrap();
    let name = Anchor::at(SeqKind::FileName, t).marker_name(FloorKind::Truncate);
    let dir = out.path().join("lake-bucket/_dms2delta/staged/mysql/shop/customers");
    std::fs::write(dir.join(&name), br#"{"kind":"truncate"}"#).unwrap();
    let key = format!("_dms2delta/staged/mysql/shop/customers/{name}");
    let ev = json!({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "lake-bucket"}, "object": {"key": key, "size": 19, "eTag": "e"}}}]});
    let r = handle(&state, ev).await.unwrap();
    assert_eq!(r["tables"][0]["table"], "mysql.shop.customers", "{r}");
    let rows: usize = p
        .read_table(&p.table_location(&spec))
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 0, "{r}");
    assert!(!dir.join(&name).exists());
}
