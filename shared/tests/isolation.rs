//! Inputs nobody planned for, end to end: table and schema names in any script and with any
//! character DMS can write as a folder name, on folders and on the S3 endpoint, read back by the
//! Python reader; and a pass in which some tables cannot be committed (no longer configured, an
//! unsafe type change, an unreadable change set) while every healthy table still commits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::datatypes::DataType;
use dms2delta::catalog::catalog_name;
use dms2delta::config::{Config, Validated};
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::operations::reprocess::ReprocessBuilder;
use dms2delta::pipeline::Pipeline;
use dms2delta::quarantine::list_reports;
use dms2delta::sim::rows_of;
use dms2delta::storage::{Location, Stores};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use support::parquet;
use support::s3::{moto, python, repo};

/// Schema and table names as real databases have them: German, Nordic, Japanese and Chinese
/// letters, `%`, `#`, `+`, spaces, dots, mixed case, S3-unfriendly punctuation, and a long one.
fn awkward() -> Vec<(String, String)> {
    let long = format!("Tabelle_{}", "ß".repeat(40) + &"x".repeat(60));
    [
        ("Åland", "Bestellungen_ÄÖÜ"),
        ("日本", "注文"),
        ("中国", "订单"),
        ("50%off", "t#1"),
        ("a+b", "with space"),
        ("dotted.name", "MixedCase"),
        ("br{ac}es", "[sq]~^|"),
        ("50%", "100%_done"),
    ]
    .iter()
    .map(|(s, t)| (s.to_string(), t.to_string()))
    .chain([("lang".to_string(), long)])
    .collect()
}

fn yaml(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn source_yaml(bucket: &str, tables: &[(String, String)]) -> String {
    let mut out = format!("  - name: erp\n    bucket: {bucket}\n    csv: {{ header: true }}\n    tables:\n");
    for (s, t) in tables {
        out.push_str(&format!(
            "      - {{ schema: {}, table: {}, keys: [id] }}\n",
            yaml(s),
            yaml(t)
        ));
    }
    out
}

/// A pipeline over `lake`, `staging` and `quarantine` with `sources`.
fn pipeline(lake: &str, staging: &str, quarantine: &str, storage: &str, sources: &str) -> Pipeline {
    let text = format!(
        "lake: {lake}\nstaging: {staging}\nquarantine: {quarantine}\n{storage}commit:\n  backoff_base_ms: 2\n  backoff_max_ms: 50\nsources:\n{sources}"
    );
    let config: Arc<Validated> = Arc::new(Config::from_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}")));
    let stores = Stores::new(config.config.storage.clone());
    Pipeline::new(config, Arc::new(stores))
}

async fn put(p: &Pipeline, bucket: &str, key: &str, body: &str) {
    p.stores
        .bucket(bucket)
        .unwrap()
        .put(&Path::parse(key).unwrap(), PutPayload::from(body.as_bytes().to_vec()))
        .await
        .unwrap();
}

async fn decode(p: &Pipeline, bucket: &str, key: &str) -> DecodeOutcome {
    p.decode(bucket, key, Some("etag".into()), Default::default())
        .await
        .unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// `(id, name)` rows of a lake table, sorted.
async fn rows(p: &Pipeline, schema: &str, table: &str) -> Vec<Vec<String>> {
    let spec = p.config.table_by_target("erp", schema, table).unwrap();
    let batches = p.read_table(&p.table_location(&spec)).await.unwrap();
    rows_of(&batches, &["id".to_string(), "name".to_string()])
        .unwrap()
        .into_iter()
        .map(|r| r.iter().map(|v| v.canonical()).collect())
        .collect()
}

/// The Python `deltalake` package's rows of the table at `path` (a folder or an S3 URL).
fn python_rows(path: &str, endpoint: Option<&str>) -> Vec<String> {
    let py = python().expect("the Python test tools: run `.ci/run` once or set DMS2DELTA_PYTHON");
    let mut cmd = std::process::Command::new(py);
    cmd.arg(repo().join("tests/read_delta.py")).arg(path).arg("id,name");
    if let Some(ep) = endpoint {
        cmd.env("AWS_ENDPOINT_URL", ep);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "python reader on {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

const LOAD: &str = "id,name\n1,a\n2,b\n";
const CDC: &str = "Op,id,name\nU,1,a2\nD,2,\nI,3,c\n";

/// Every awkward name goes decode -> stage -> commit -> Delta table -> independent reader and
/// back; `table_path` gives the path the Python reader opens.
async fn round_trip(p: &Pipeline, bucket: &str, endpoint: Option<&str>, table_path: impl Fn(&Location) -> String) {
    let names = awkward();
    for (s, t) in &names {
        for (file, body) in [("LOAD00000001.csv", LOAD), ("20240101-000000000.csv", CDC)] {
            let key = format!("{s}/{t}/{file}");
            put(p, bucket, &key, body).await;
            let out = decode(p, bucket, &key).await;
            assert!(matches!(out, DecodeOutcome::Staged(_)), "{key}: {out:?}");
        }
    }
    // Every staged change set maps back to its table.
    let mut pending = p.pending().await.unwrap();
    pending.sort();
    let mut want: Vec<dms2delta::model::TableId> = names
        .iter()
        .map(|(s, t)| dms2delta::model::TableId::new("erp", s, t))
        .collect();
    want.sort();
    assert_eq!(pending, want);

    let pass = p.commit_pending().await.unwrap();
    assert!(pass.failed.is_empty(), "{:?}", pass.failed);
    assert!(
        pass.committed.iter().all(|m| m.quarantined.is_empty()),
        "{:?}",
        pass.committed
    );
    assert!(p.pending().await.unwrap().is_empty(), "nothing left staged");
    let (q, qroot) = p.stores.resolve(&p.config.quarantine).unwrap();
    assert!(list_reports(q.as_ref(), &qroot).await.unwrap().is_empty());

    let mut catalog = std::collections::BTreeSet::new();
    for (s, t) in &names {
        let got = rows(p, s, t).await;
        assert_eq!(got, vec![vec!["1", "a2"], vec!["3", "c"]], "{s}.{t}");
        let spec = p.config.table_by_target("erp", s, t).unwrap();
        let loc = p.table_location(&spec);
        assert_eq!(python_rows(&table_path(&loc), endpoint), ["1\ta2", "3\tc"], "{s}.{t}");
        // Athena's name: only what it takes unquoted, and one per table.
        let name = catalog_name("erp", s, t);
        assert!(
            name.len() <= 255
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name}"
        );
        assert!(catalog.insert(name.clone()), "two tables share the catalog name {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_identifier_round_trips_on_folders() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let storage = format!("storage:\n  buckets:\n    dms: {d}/bucket\n");
    let p = pipeline(
        &format!("{d}/lake"),
        &format!("{d}/staged"),
        &format!("{d}/quarantine"),
        &storage,
        &source_yaml("dms", &awkward()),
    );
    round_trip(&p, "dms", None, |loc| match loc {
        Location::Local { dir } => dir.display().to_string(),
        other => panic!("{other:?}"),
    })
    .await;
    // The table folders are spelled as the source spells the names (not percent-encoded).
    assert!(dir.path().join("lake/erp/Åland/Bestellungen_ÄÖÜ/_delta_log").is_dir());
    assert!(dir.path().join("lake/erp/50%off/t#1/_delta_log").is_dir());
    assert!(dir.path().join("lake/erp/50%/100%_done/_delta_log").is_dir());

    // A change set an earlier version staged under a percent-encoded folder is moved to its
    // table's folder and committed, instead of blocking every run.
    let key = "Åland/Bestellungen_ÄÖÜ/20240101-000000001.csv";
    put(&p, "dms", key, "Op,id,name\nI,4,d\n").await;
    decode(&p, "dms", key).await;
    let (store, root) = p.stores.resolve(&p.config.staging).unwrap();
    let staged: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(store.list(Some(&root)))
        .await
        .unwrap();
    assert_eq!(staged.len(), 1);
    let legacy = Path::from_iter([
        "erp",
        "Åland",
        "Bestellungen_ÄÖÜ",
        staged[0].location.filename().unwrap(),
    ]);
    assert!(legacy.as_ref().contains("%C3%85land"), "{legacy}");
    store.copy(&staged[0].location, &legacy).await.unwrap();
    store.delete(&staged[0].location).await.unwrap();
    let pass = p.commit_pending().await.unwrap();
    assert!(pass.failed.is_empty(), "{:?}", pass.failed);
    assert_eq!(
        pass.committed.iter().map(|m| m.moved.len()).sum::<usize>(),
        1,
        "{:?}",
        pass.committed
    );
    assert_eq!(
        rows(&p, "Åland", "Bestellungen_ÄÖÜ").await,
        vec![vec!["1", "a2"], vec!["3", "c"], vec!["4", "d"]]
    );
    assert!(p.pending().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_identifier_round_trips_on_s3() {
    let moto = moto();
    let bucket = moto.bucket("names").await;
    let lake = moto.bucket("lake").await;
    let p = pipeline(
        &format!("s3://{lake}/lake"),
        &format!("s3://{lake}/staged"),
        &format!("s3://{lake}/quarantine"),
        &moto.storage_yaml(),
        &source_yaml(&bucket, &awkward()),
    );
    round_trip(&p, &bucket, Some(&moto.url), |loc| {
        loc.engine_url().unwrap().to_string()
    })
    .await;
    // The keys are spelled as the source spells the names.
    let store = p.stores.bucket(&lake).unwrap();
    let log = Path::parse("lake/erp/日本/注文/_delta_log/00000000000000000000.json").unwrap();
    store.head(&log).await.unwrap();
}

fn ops(v: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(v.to_vec()))
}

fn ids(v: &[i64]) -> ArrayRef {
    Arc::new(Int64Array::from(v.to_vec()))
}

/// One pass over a staging area holding, next to healthy tables' change sets: a table excluded
/// after its file was decoded, a table renamed after its file was decoded, an unsafe type change
/// and an unreadable change set. Every healthy table commits in that pass; each of the others is
/// set aside with a report naming the fix, and reprocess then leads each to the right end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tables_poison_leaves_every_other_table_committed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let storage = format!("storage:\n  buckets:\n    dms: {d}/bucket\n");
    let tables = |extra_rules: &str, renamed: &str| {
        format!(
            "  - name: erp\n    bucket: dms\n    rules:\n      - {{ action: include, schema: app, table: \"%\" }}\n{extra_rules}    tables:\n\
             {}",
            ["good_a", "good_b", "wide", "gone", "old", "日本"]
                .iter()
                .map(|t| format!("      - {{ schema: app, table: {}, keys: [id] }}\n", yaml(t)))
                .collect::<String>()
                + renamed
        )
    };
    let before = pipeline(
        &format!("{d}/lake"),
        &format!("{d}/staged"),
        &format!("{d}/quarantine"),
        &storage,
        &tables("", ""),
    );
    let file = |n: i64, name: &str| {
        parquet(vec![
            ("Op", DataType::Utf8, ops(&["I"])),
            ("id", DataType::Int64, ids(&[n])),
            ("name", DataType::Utf8, ops(&[name])),
        ])
    };
    let put_bytes = |p: &Pipeline, key: &str, bytes: Vec<u8>| {
        let store = p.stores.bucket("dms").unwrap();
        let key = Path::parse(key).unwrap();
        async move { store.put(&key, PutPayload::from(bytes)).await.unwrap() }
    };
    // `wide` has an integer column already.
    let wide_int = parquet(vec![
        ("Op", DataType::Utf8, ops(&["I"])),
        ("id", DataType::Int64, ids(&[1])),
        ("name", DataType::Int64, ids(&[10])),
    ]);
    put_bytes(&before, "app/wide/20240101-000000000.parquet", wide_int).await;
    decode(&before, "dms", "app/wide/20240101-000000000.parquet").await;
    before.commit_all().await.unwrap();

    for t in ["good_a", "good_b", "gone", "old", "日本"] {
        let key = format!("app/{t}/20240101-000000001.parquet");
        put_bytes(&before, &key, file(1, t)).await;
        decode(&before, "dms", &key).await;
    }
    // Text where the table has an integer: not a safe widening.
    let wide_text = parquet(vec![
        ("Op", DataType::Utf8, ops(&["U"])),
        ("id", DataType::Int64, ids(&[1])),
        ("name", DataType::Utf8, ops(&["ten"])),
    ]);
    put_bytes(&before, "app/wide/20240101-000000001.parquet", wide_text).await;
    decode(&before, "dms", "app/wide/20240101-000000001.parquet").await;
    // An unreadable change set in a healthy table's folder.
    let (stage, sroot) = before.stores.resolve(&before.config.staging).unwrap();
    let junk = Path::parse(format!("{sroot}/erp/app/good_b/0000junk.parquet")).unwrap();
    stage.put(&junk, PutPayload::from_static(b"not parquet")).await.unwrap();

    // The configuration changes under the staged work: `gone` excluded, `old` renamed to `new`.
    let after = pipeline(
        &format!("{d}/lake"),
        &format!("{d}/staged"),
        &format!("{d}/quarantine"),
        &storage,
        &tables(
            "      - { action: exclude, schema: app, table: gone }\n      - { action: rename, schema: app, table: old, to_table: new }\n",
            "",
        ),
    );
    let pass = after.commit_pending().await.unwrap();
    assert!(pass.failed.is_empty(), "{:?}", pass.failed);
    for t in ["good_a", "good_b", "日本"] {
        assert_eq!(
            rows(&after, "app", t).await,
            vec![vec!["1".to_string(), t.to_string()]],
            "{t}"
        );
    }
    assert!(
        after.pending().await.unwrap().is_empty(),
        "nothing blocks the next pass"
    );
    let (q, qroot) = after.stores.resolve(&after.config.quarantine).unwrap();
    let reports = list_reports(q.as_ref(), &qroot).await.unwrap();
    let kinds: std::collections::BTreeMap<String, String> = reports
        .iter()
        .map(|(_, r)| (r.key.clone(), r.kind.to_string()))
        .collect();
    let expected: std::collections::BTreeMap<String, String> = [
        ("app/gone/20240101-000000001.parquet", "table_not_configured"),
        ("app/old/20240101-000000001.parquet", "table_not_configured"),
        ("app/wide/20240101-000000001.parquet", "incompatible_schema"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(
        reports
            .iter()
            .filter(|(_, r)| r.kind.to_string() == "corrupt_file")
            .map(|(_, r)| (r.key.clone(), "corrupt_file".to_string())),
    )
    .collect();
    assert_eq!(kinds, expected, "{reports:#?}");
    assert!(
        reports
            .iter()
            .any(|(_, r)| r.kind.to_string() == "corrupt_file" && r.reason.contains("0000junk")),
        "{reports:#?}"
    );
    for (_, r) in &reports {
        assert_eq!(r.stage.to_string(), "commit");
        assert!(!r.fix.is_empty());
        if r.kind.to_string() == "table_not_configured" {
            assert!(r.file.starts_with("s3://dms/app/"), "names the DMS file: {r:?}");
            assert!(r.reason.contains("erp.app."), "names the lake table: {r:?}");
            assert!(r.fix.contains("reprocess"), "{r:?}");
        }
    }

    // Reprocess decodes each file again under the current configuration: the renamed table's
    // change reaches its new name, the excluded table's is dropped; the type change stays.
    let m = ReprocessBuilder::new(after.config.clone(), &after.stores)
        .await
        .unwrap();
    assert!(m.tables_failed.is_empty(), "{m:?}");
    assert_eq!(
        rows(&after, "app", "new").await,
        vec![vec!["1".to_string(), "old".to_string()]]
    );
    let left: Vec<String> = list_reports(q.as_ref(), &qroot)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r)| r.kind.to_string())
        .filter(|k| k != "corrupt_file")
        .collect();
    assert_eq!(left, ["incompatible_schema"]);
    assert!(after.pending().await.unwrap().is_empty());
}
