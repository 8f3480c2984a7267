//! Athena's path into the lake: the commit function registers each table in the Glue Data
//! Catalog when it is created and follows its schema when the source adds a column. Run against
//! the local endpoint's Glue API (moto), through the commit handler as Lambda calls it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../shared/tests/support/mod.rs"]
mod support;

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use aws_sdk_glue::types::DatabaseInput;
use commit::glue::Glue;
use dms2delta::catalog::{catalog_name, CatalogSync};
use dms2delta::operations::decode::DecodeOutcome;
use dms2delta::sim::{Format, SimOptions};
use dms2delta::storage::Location;
use futures::TryStreamExt;
use object_store::ObjectStore;
use serde_json::{json, Value};
use support::Lab;

async fn glue_client() -> aws_sdk_glue::Client {
    let moto = support::s3::moto();
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&moto.url)
        .region(aws_config::Region::new("us-east-1"))
        .load()
        .await;
    aws_sdk_glue::Client::new(&aws)
}

/// Decodes every file not yet decoded and hands the commit handler a direct S3 event for one
/// staged change set, as the staging bucket's notification would.
async fn replicate(lab: &Lab, state: &commit::handler::State, keys: &[String]) -> Result<Value, String> {
    for key in keys {
        let out = lab
            .pipeline
            .decode(&lab.bucket, key, None, dms2delta::failpoint::Failpoints::default())
            .await
            .unwrap();
        assert!(matches!(out, DecodeOutcome::Staged(_)), "{key}: {out:?}");
    }
    let config = lab.config();
    let Location::S3 { bucket, prefix } = config.staging.clone() else {
        panic!("staging not on S3")
    };
    let store = lab.pipeline.stores.bucket(&bucket).unwrap();
    let staged: Vec<_> = store
        .list(Some(&object_store::path::Path::from(prefix)))
        .try_collect()
        .await
        .unwrap();
    let key = staged.first().expect("a staged change set").location.to_string();
    let event = json!({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2024-05-28T12:00:00.000Z", "eventName": "ObjectCreated:Put",
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
               "object": {"key": key, "size": 100, "eTag": "e"}}
    }]});
    commit::handler::handle(state, event).await.map_err(|e| e.to_string())
}

/// A CDC file of the simulated Oracle table in Parquet, with a column the table does not have.
fn file_with_new_column() -> Vec<u8> {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let fields = vec![
        Field::new("Op", DataType::Utf8, true),
        Field::new("dms_ts", DataType::Utf8, true),
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(12, 2), true),
        Field::new("active", DataType::Boolean, true),
        Field::new("updated", ts, true),
        Field::new("email", DataType::Utf8, true),
        Field::new("AR_H_CHANGE_SEQ", DataType::Utf8, true),
    ];
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["I"])),
        Arc::new(StringArray::from(vec!["2030-01-01 00:00:00.000000"])),
        Arc::new(Int64Array::from(vec![1_000_000])),
        Arc::new(StringArray::from(vec!["new"])),
        Arc::new(
            Decimal128Array::from(vec![1234])
                .with_precision_and_scale(12, 2)
                .unwrap(),
        ),
        Arc::new(BooleanArray::from(vec![true])),
        Arc::new(TimestampMicrosecondArray::from(vec![1_900_000_000_000_000]).with_timezone("UTC")),
        Arc::new(StringArray::from(vec!["a@example.com"])),
        Arc::new(StringArray::from(vec!["20300101000000009999999999999999999"])),
    ];
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    buf
}

fn columns(t: &aws_sdk_glue::types::Table) -> Vec<(String, String)> {
    t.storage_descriptor()
        .unwrap()
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.r#type().unwrap_or_default().to_string()))
        .collect()
}

async fn versions(glue: &aws_sdk_glue::Client, db: &str, name: &str) -> usize {
    glue.get_table_versions()
        .database_name(db)
        .table_name(name)
        .send()
        .await
        .unwrap()
        .table_versions()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_registered_for_athena_and_follow_a_new_column() {
    let opts = SimOptions {
        seed: 41,
        keys: 12,
        changes: 20,
        max_file_changes: 6,
        formats: vec![Format::Parquet],
        ..SimOptions::default()
    };
    let lab = Lab::on_s3_with(&opts, None, None, "").await;
    lab.upload_all().await;
    let glue = glue_client().await;
    let db = format!("lakehouse_{}", lab.bucket.replace('-', "_"));
    glue.create_database()
        .database_input(DatabaseInput::builder().name(&db).build().unwrap())
        .send()
        .await
        .unwrap();
    let state = commit::handler::State::new(lab.config())
        .with_catalog(CatalogSync::new(Arc::new(Glue::new(glue.clone())), &db));

    // First commit: the table is created in the lake and in the catalog.
    let keys: Vec<String> = lab.sim.files.iter().map(|f| f.key.clone()).collect();
    let answer = replicate(&lab, &state, &keys).await.unwrap();
    assert!(answer["tables"][0]["version"].is_number(), "{answer}");
    lab.check().await.unwrap();

    let name = catalog_name("oracle", "app", "t0");
    let t = glue.get_table().database_name(&db).name(&name).send().await.unwrap();
    let t = t.table().unwrap();
    let params = t.parameters().unwrap();
    assert_eq!(params.get("table_type").map(String::as_str), Some("DELTA"));
    assert_eq!(
        params.get("spark.sql.sources.provider").map(String::as_str),
        Some("delta")
    );
    assert_eq!(params.get("dms2delta.table").map(String::as_str), Some("oracle.app.t0"));
    assert_eq!(t.table_type(), Some("EXTERNAL_TABLE"));
    let Location::S3 { bucket, prefix } = lab.config().lake.clone() else {
        panic!()
    };
    let location = format!("s3://{bucket}/{prefix}/oracle/app/t0");
    assert_eq!(t.storage_descriptor().unwrap().location(), Some(location.as_str()));
    let cols = columns(t);
    for want in [
        ("id", "bigint"),
        ("name", "string"),
        ("amount", "decimal(12,2)"),
        ("active", "boolean"),
        ("updated", "timestamp"),
    ] {
        assert!(
            cols.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} missing from {cols:?}"
        );
    }
    assert!(!cols.iter().any(|c| c.0 == "email"));
    let before = versions(&glue, &db, &name).await;

    // A commit that changes no schema leaves the entry alone, in this environment and in a
    // fresh one (which reads the catalog once and finds it current).
    let fresh = commit::handler::State::new(lab.config())
        .with_catalog(CatalogSync::new(Arc::new(Glue::new(glue.clone())), &db));
    let again = lab.sim.files.last().unwrap();
    lab.upload("dms/oracle/app/t0/20300101-000000000.parquet", again.bytes.clone())
        .await;
    replicate(&lab, &fresh, &["dms/oracle/app/t0/20300101-000000000.parquet".into()])
        .await
        .unwrap();
    assert_eq!(
        versions(&glue, &db, &name).await,
        before,
        "an unchanged schema was rewritten"
    );

    // The source adds a column: the table and then its catalog entry gain it.
    let key = "dms/oracle/app/t0/20300101-000000001.parquet".to_string();
    lab.upload(&key, file_with_new_column()).await;
    let answer = replicate(&lab, &state, std::slice::from_ref(&key)).await.unwrap();
    assert_eq!(answer["tables"][0]["inserted"], 1, "{answer}");
    let t = glue.get_table().database_name(&db).name(&name).send().await.unwrap();
    let cols = columns(t.table().unwrap());
    assert!(cols.contains(&("email".to_string(), "string".to_string())), "{cols:?}");
    let version: u64 = t.table().unwrap().parameters().unwrap()["dms2delta.delta_version"]
        .parse()
        .unwrap();
    assert_eq!(Some(version), answer["tables"][0]["version"].as_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_mistake_is_reported_and_does_not_hold_up_replication() {
    let opts = SimOptions {
        seed: 42,
        keys: 6,
        changes: 8,
        formats: vec![Format::Parquet],
        ..SimOptions::default()
    };
    let lab = Lab::on_s3_with(&opts, None, None, "").await;
    lab.upload_all().await;
    // The database was never created: no retry can fix that, so the commit still counts.
    let glue = glue_client().await;
    let state = commit::handler::State::new(lab.config())
        .with_catalog(CatalogSync::new(Arc::new(Glue::new(glue)), "no_such_database"));
    let keys: Vec<String> = lab.sim.files.iter().map(|f| f.key.clone()).collect();
    let answer = replicate(&lab, &state, &keys).await.unwrap();
    assert!(answer["tables"][0]["version"].is_number(), "{answer}");
    lab.check().await.unwrap();

    // The error names the table, the stage and a fix.
    let sync = CatalogSync::new(Arc::new(Glue::new(glue_client().await)), "no_such_database");
    let want = dms2delta::catalog::definition(
        "no_such_database",
        &dms2delta::model::TableId::new("oracle", "app", "t0"),
        &lab.config().lake.join("oracle/app/t0"),
        &Schema::new(vec![Field::new("id", DataType::Int64, true)]),
        &[],
        Some(0),
    )
    .unwrap();
    let e = sync.sync(&want).await.unwrap_err();
    let text = e.to_string();
    assert!(!e.is_retryable(), "{text}");
    assert!(
        text.contains("stage commit") && text.contains("oracle_app_t0") && text.contains("fix:"),
        "{text}"
    );
}
