//! The `dms2delta` binary against a real S3 API (moto's server on 127.0.0.1, started here):
//! `run --source s3://…` replicates, a second run applies nothing, and `status`, `query` and
//! `reprocess --dry-run` read the lake on S3.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../shared/tests/support/s3.rs"]
mod s3;

use std::process::{Command, Output};

use dms2delta::config::Config;
use dms2delta::sim::{simulate, SimOptions};
use dms2delta::storage::Stores;
use object_store::ObjectStoreExt;

fn dms2delta(args: &[&str], endpoint: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dms2delta"))
        .args(args)
        .env_remove("RUST_LOG")
        // The way users point every AWS client at an S3-compatible endpoint.
        .env("AWS_ENDPOINT_URL", endpoint)
        .output()
        .expect("run dms2delta")
}

fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{out}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_status_query_and_reprocess_on_s3() {
    let moto = s3::moto();
    let sim = simulate(&SimOptions::default());
    let (dms, lake) = (moto.bucket("dms").await, moto.bucket("lake").await);
    // No endpoint in the file: it comes from AWS_ENDPOINT_URL.
    let storage = "storage:\n  region: us-east-1\n  allow_http: true\n  path_style: true\n";
    let text = sim.config_on(
        &format!("s3://{lake}/lake"),
        &format!("s3://{lake}/lake/_dms2delta/staged"),
        &format!("s3://{lake}/lake/_dms2delta/quarantine"),
        &dms,
        storage,
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.yaml");
    std::fs::write(&cfg, &text).unwrap();
    let upload = Stores::new(
        Config::from_text(&moto_config(&sim, &dms, &moto.url))
            .unwrap()
            .config
            .storage
            .clone(),
    );
    let store = upload.bucket(&dms).unwrap();
    for f in &sim.files {
        store
            .put(&object_store::path::Path::from(f.key.as_str()), f.bytes.clone().into())
            .await
            .unwrap();
    }
    let cfg = cfg.display().to_string();
    let source = format!("s3://{dms}/dms");

    let first = ok(&dms2delta(&["run", "--config", &cfg, "--source", &source], &moto.url));
    assert!(
        first.contains(&format!(
            "{} files under {source}: {} decoded",
            sim.files.len(),
            sim.files.len()
        )),
        "{first}"
    );
    let second = ok(&dms2delta(&["run", "--config", &cfg, "--source", &source], &moto.url));
    assert!(second.contains("Nothing new to apply"), "{second}");

    let status = ok(&dms2delta(&["status", "--config", &cfg], &moto.url));
    for name in sim.expected.keys() {
        assert!(status.contains(name.as_str()), "{name} missing from\n{status}");
    }
    for (name, rows) in &sim.expected {
        let q = ok(&dms2delta(
            &["query", "--config", &cfg, &format!("SELECT count(*) AS n FROM {name}")],
            &moto.url,
        ));
        assert!(q.contains(&format!("| {} |", rows.len())), "{name}: {q}");
    }
    let dry = ok(&dms2delta(&["reprocess", "--config", &cfg, "--dry-run"], &moto.url));
    assert!(
        dry.contains(&format!(
            "{0} DMS files: {0} applied, 0 staged, 0 missing",
            sim.files.len()
        )),
        "{dry}"
    );
}

/// The same buckets, reached directly (for uploading the DMS files).
fn moto_config(sim: &dms2delta::sim::Simulation, bucket: &str, url: &str) -> String {
    sim.config_on("/l", "/s", "/q", bucket, &s3::storage_yaml(url))
}
