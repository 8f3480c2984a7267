//! DMS's table statistics ending a reload, through the real DMS SDK client against a stub of
//! the DMS API on 127.0.0.1 (moto does not implement `DescribeTableStatistics`). The stub speaks
//! DMS's JSON protocol (`application/x-amz-json-1.1`, `X-Amz-Target:
//! AmazonDMSv20160101.DescribeTableStatistics`, timestamps in epoch seconds) and answers what
//! each case scripts; the commit stage and reprocess's DMS stop path consult it through
//! `dms2delta_lambda::dms::DmsApi`, as the deployed functions do.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../shared/tests/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use dms2delta::dms::LoadProgress;
use dms2delta::operations::commit::{CommitChangesBuilder, CommitMetrics};
use dms2delta::operations::reprocess::commit_sources;
use dms2delta_lambda::dms::{sdk, DmsApi};
use serde_json::{json, Value};
use support::reload::{put_written, C1, GEN0, GEN1};
use support::Mini;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TASK: &str = "arn:aws:dms:us-east-1:123456789012:task:F8TBR5IJGVM78ZQYCR60BO87AF";

/// A request the stub received: its `X-Amz-Target`, `Content-Type` and JSON body.
#[derive(Debug, Clone)]
struct Seen {
    target: String,
    content_type: String,
    body: Value,
}

/// The DMS API on a local port: answers every request with the scripted status and body.
struct Stub {
    url: String,
    answer: Arc<Mutex<(u16, Value)>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    async fn start() -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new((200, json!({"TableStatistics": []}))));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (answer.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let (a, s) = (a.clone(), s.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    // Requests on one connection, one after another (the client keeps it alive).
                    loop {
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            let n = conn.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                        let header = |name: &str| {
                            head.lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                                })
                                .unwrap_or_default()
                        };
                        let len: usize = header("content-length").parse().unwrap_or(0);
                        while buf.len() < head_end + len {
                            let mut chunk = [0u8; 4096];
                            let n = conn.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        let body: Value = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
                        buf.drain(..head_end + len);
                        s.lock().unwrap().push(Seen {
                            target: header("x-amz-target"),
                            content_type: header("content-type"),
                            body,
                        });
                        let (status, reply) = a.lock().unwrap().clone();
                        let text = reply.to_string();
                        let reason = if status == 200 { "OK" } else { "Bad Request" };
                        let response = format!(
                            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: 7b1c3f0e-1d2a-4c5b-9e8f-0a1b2c3d4e5f\r\nContent-Length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if conn.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Stub { url, answer, seen }
    }

    fn answer(&self, status: u16, body: Value) {
        *self.answer.lock().unwrap() = (status, body);
        self.seen.lock().unwrap().clear();
    }

    /// DMS's statistics of `app.t`: a load in `state` that ran from `start` to `end`.
    fn table(&self, state: &str, start: &str, end: Option<&str>) {
        let secs = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp() as f64;
        let mut entry = json!({
            "SchemaName": "app", "TableName": "t", "TableState": state,
            "Inserts": 0, "Deletes": 0, "Updates": 0, "Ddls": 0,
            "FullLoadRows": 4, "FullLoadCondtnlChkFailedRows": 0, "FullLoadErrorRows": 0,
            "FullLoadStartTime": secs(start), "FullLoadReloaded": true,
            "LastUpdateTime": secs(start),
            "ValidationPendingRecords": 0, "ValidationFailedRecords": 0, "ValidationSuspendedRecords": 0,
            "ValidationState": "Not enabled"
        });
        if let Some(end) = end {
            entry["FullLoadEndTime"] = json!(secs(end));
        }
        self.answer(200, json!({"ReplicationTaskArn": TASK, "TableStatistics": [entry]}));
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn dms_api(url: &str) -> Arc<dyn LoadProgress> {
    let conf = sdk::Config::builder()
        .behavior_version(sdk::config::BehaviorVersion::latest())
        .region(sdk::config::Region::new("us-east-1"))
        .credentials_provider(sdk::config::Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            None,
            None,
            "test",
        ))
        .endpoint_url(url)
        // One request per question, so the stub's count is exact.
        .retry_config(sdk::config::retry::RetryConfig::disabled())
        .build();
    Arc::new(DmsApi::new(sdk::Client::from_conf(conf)))
}

const SOURCES: &str = r#"
  - name: pg
    bucket: dms
    csv: { header: true }
    dms_task_arn: arn:aws:dms:us-east-1:123456789012:task:F8TBR5IJGVM78ZQYCR60BO87AF
    tables:
      - schema: app
        table: t
        keys: [id]
"#;

/// A table whose reload is decoded (the first load, a CDC file, the reload's snapshot: row 2 was
/// deleted at the source while nothing was captured, so once the reload is known to be over the
/// table must lose it), its marker staged and nothing committed yet.
async fn reloaded() -> Mini {
    let m = Mini::new(SOURCES, "");
    for f in [GEN0, C1, GEN1] {
        put_written(&m, f);
        m.decode(f.0).await;
    }
    assert!(
        markers(&m).len() == 1,
        "the reload's marker is staged: {:?}",
        markers(&m)
    );
    m
}

fn markers(m: &Mini) -> Vec<String> {
    std::fs::read_dir(m.dir.path().join("staged/pg/app/t"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .filter(|n| n.ends_with(".floor"))
                .collect()
        })
        .unwrap_or_default()
}

async fn commit(m: &Mini, progress: &Arc<dyn LoadProgress>) -> CommitMetrics {
    CommitChangesBuilder::new(m.pipeline.config.clone(), &m.pipeline.stores)
        .with_table("pg", "app", "t")
        .with_load_progress(Some(progress.clone()))
        .await
        .unwrap()
}

async fn ids(m: &Mini) -> Vec<String> {
    m.rows("pg.app.t", &["id"])
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_settles_when_dms_reports_its_load_completed_after_the_reload_began() {
    let stub = Stub::start().await;
    let dms = dms_api(&stub.url);

    // DMS: the table's load began at 10:59:10 (after the last change before the reload, named
    // 10:05) and completed. The floor rises in the same commit: row 2 is gone, the marker too.
    let m = reloaded().await;
    stub.table("Table completed", "2024-05-28T10:59:10Z", Some("2024-05-28T11:00:05Z"));
    let c = commit(&m, &dms).await;
    assert_eq!(ids(&m).await, vec!["1", "3", "4", "5"]);
    assert!(c.floor.is_some() && c.rows_swept == 1, "{c:?}");
    assert!(markers(&m).is_empty());
    let seen = stub.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, "AmazonDMSv20160101.DescribeTableStatistics");
    assert_eq!(seen[0].content_type, "application/x-amz-json-1.1");
    assert_eq!(seen[0].body["ReplicationTaskArn"], TASK);
    let filters: BTreeSet<(String, String)> = seen[0].body["Filters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["Name"].as_str().unwrap().to_string(),
                f["Values"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        filters,
        BTreeSet::from([("schema-name".into(), "app".into()), ("table-name".into(), "t".into())])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_from_dms_short_of_a_completion_after_the_reload_began_lets_the_floor_rise() {
    let stub = Stub::start().await;
    let dms = dms_api(&stub.url);
    type Script = Box<dyn Fn(&Stub)>;
    let cases: Vec<(&str, Script)> = vec![
        (
            // The completion DMS reports is the first load's (began before the reload's anchor).
            "completed before the reload",
            Box::new(|s: &Stub| s.table("Table completed", "2024-05-28T09:59:00Z", Some("2024-05-28T10:00:00Z"))),
        ),
        (
            "still loading",
            Box::new(|s: &Stub| s.table("Full load", "2024-05-28T10:59:10Z", None)),
        ),
        (
            "throttled",
            Box::new(|s: &Stub| {
                s.answer(
                    400,
                    json!({"__type": "ThrottlingException", "message": "Rate exceeded"}),
                )
            }),
        ),
        (
            "access denied",
            Box::new(|s: &Stub| {
                s.answer(
                    400,
                    json!({"__type": "AccessDeniedException", "message": "not authorized to perform: dms:DescribeTableStatistics"}),
                )
            }),
        ),
        (
            "table unknown to the task",
            Box::new(|s: &Stub| s.answer(200, json!({"ReplicationTaskArn": TASK, "TableStatistics": []}))),
        ),
    ];
    for (case, script) in &cases {
        let m = reloaded().await;
        script(&stub);
        let c = commit(&m, &dms).await;
        assert_eq!(ids(&m).await, vec!["1", "2", "3", "4", "5"], "{case}: row 2 must stay");
        assert!(c.floor.is_none() && c.rows_swept == 0, "{case}: {c:?}");
        assert_eq!(markers(&m).len(), 1, "{case}: the marker waits for the other rules");
        assert_eq!(stub.seen().len(), 1, "{case}: DMS asked once");
    }

    // Later DMS reports the reload's load completed; the stopped task's event makes reprocess
    // commit the source's waiting tables, and the floor rises there.
    let m = reloaded().await;
    stub.table("Full load", "2024-05-28T10:59:10Z", None);
    commit(&m, &dms).await;
    assert_eq!(ids(&m).await.len(), 5);
    stub.table("Table completed", "2024-05-28T10:59:10Z", Some("2024-05-28T11:00:05Z"));
    let r = commit_sources(
        m.pipeline.config.clone(),
        &m.pipeline.stores,
        &BTreeSet::from(["pg".to_string()]),
        Some(dms.clone()),
    )
    .await
    .unwrap();
    assert!(r.tables_failed.is_empty(), "{r:?}");
    assert_eq!(ids(&m).await, vec!["1", "3", "4", "5"]);
    assert!(markers(&m).is_empty());
    assert_eq!(stub.seen().len(), 1);
}
