//! The compact handler on the sample events, after the sample data went through decode and commit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dms2delta::config::Config;
use dms2delta::failpoint::Failpoints;
use dms2delta::pipeline::Pipeline;
use dms2delta::storage::Stores;
use serde_json::Value;

use super::{handle, State};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn event(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("events").join(name)).unwrap()).unwrap()
}

async fn replicated(out: &Path, extra: &str) -> Arc<dms2delta::config::Validated> {
    let text = std::fs::read_to_string(repo().join("events/config.yaml"))
        .unwrap()
        .replace(".local/", &format!("{}/", out.display()))
        .replace("events/data/", &format!("{}/events/data/", repo().display()));
    let cfg = Arc::new(Config::from_text(&format!("{text}{extra}")).unwrap());
    let p = Pipeline::new(cfg.clone(), Arc::new(Stores::new(cfg.config.storage.clone())));
    for key in [
        "dms/mysql/shop/customers/LOAD00000001.csv",
        "dms/mysql/shop/customers/20240528-195141380.csv",
        "dms/mysql/shop/customers/20240528-195143000.csv.gz",
    ] {
        p.decode("dms-bucket", key, None, Failpoints::default()).await.unwrap();
        p.commit_all().await.unwrap();
    }
    cfg
}

#[tokio::test]
async fn a_log_event_compacts_its_table_when_due() {
    let out = tempfile::tempdir().unwrap();
    let cfg = replicated(
        out.path(),
        "compact:\n  min_small_files: 2\n  checkpoint_interval: 2\n  check_every_commits: 2\n",
    )
    .await;
    let r = handle(&State::new(cfg), event("compact-s3-put.json")).await.unwrap();
    let t = &r["tables"][0];
    assert_eq!(t["table"], "mysql.shop.customers", "{r}");
    assert_eq!(t["checkpoint"], true, "{r}");
    // Copy-on-write MERGE left a single data file: nothing to bin-pack (tests in shared/ cover that).
    assert_eq!(t["due"], serde_json::json!(["checkpoint"]), "{r}");
    assert!(out
        .path()
        .join("lake-bucket/lake/mysql/shop/customers/_delta_log/_last_checkpoint")
        .exists());
}

#[tokio::test]
async fn a_log_event_that_is_not_due_returns_without_work() {
    let out = tempfile::tempdir().unwrap();
    let cfg = replicated(out.path(), "").await;
    let r = handle(&State::new(cfg), event("compact-s3-put.json")).await.unwrap();
    assert_eq!(r["tables"][0]["due"], serde_json::json!([]), "{r}");
}

#[tokio::test]
async fn tombstone_table_events_are_left_to_their_table() {
    let out = tempfile::tempdir().unwrap();
    let cfg = replicated(out.path(), "").await;
    let r = handle(&State::new(cfg), event("compact-tombstones-s3-put.json"))
        .await
        .unwrap();
    assert_eq!(r["tables"], serde_json::json!([]), "{r}");
}
