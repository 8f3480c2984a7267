//! The bad-input corpus (tests/bad-input, written by its generate.py): every broken file,
//! hostile key, malformed event and mistaken configuration ends with the right error, a
//! quarantine report that says what to do, no change set, and the good files beside it applied.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use dms2delta::config::Config;
use dms2delta::error::Error;
use dms2delta::events::{parse, Payload};
use dms2delta::failpoint::Failpoints;
use dms2delta::operations::decode::DecodeOutcome;
use serde_json::Value;
use support::{repo, Mini};

const SOURCES: &str = "  - name: shop
    bucket: dms
    bucket_folder: dms
    tables:
      - schema: s
        table: t
        keys: [id]
        columns:
          - { name: id, type: INT4 }
          - { name: name, type: STRING }
          - { name: n, type: INT4 }
      - { schema: s, table: p, keys: [id] }
      - { schema: s, table: nocols, keys: [id] }
      - schema: s
        table: nokey
        columns:
          - { name: id, type: INT4 }
          - { name: name, type: STRING }
          - { name: n, type: INT4 }
";

fn corpus() -> Value {
    let text = std::fs::read_to_string(repo().join("tests/bad-input/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn bytes(rel: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/bad-input").join(rel)).unwrap()
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_file_is_quarantined_with_the_right_kind_and_the_rest_is_applied() {
    let m = Mini::new(SOURCES, "limits:\n  max_field_bytes: 1024\n");
    let cases = corpus()["files"].as_array().unwrap().clone();
    assert!(cases.len() >= 25, "{}", cases.len());
    let mut wrong = Vec::new();
    for c in &cases {
        let (name, key, expected) = (
            c["name"].as_str().unwrap(),
            c["key"].as_str().unwrap(),
            c["expected"].as_str().unwrap(),
        );
        m.put(key, &bytes(c["file"].as_str().unwrap()));
        let out = m.pipeline.decode("dms", key, None, Failpoints::default()).await;
        let got = match &out {
            Ok(DecodeOutcome::Quarantined {
                report,
                report_location,
            }) => {
                assert_eq!(report.file, format!("s3://dms/{key}"), "{name}");
                assert!(
                    !report.fix.is_empty() && !report.reason.is_empty(),
                    "{name}: {report:?}"
                );
                assert!(report_location.ends_with(".error.json"), "{name}: {report_location}");
                serde_json::to_value(report.kind).unwrap().as_str().unwrap().to_string()
            }
            Ok(DecodeOutcome::Skipped { .. }) => "skipped".to_string(),
            Ok(DecodeOutcome::Staged(s)) if s.tables.iter().all(|t| t.rows_out == 0) => "nothing".to_string(),
            other => format!("{other:?}"),
        };
        if got != expected {
            wrong.push(format!("{name}: expected {expected}, got {got}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    // No bad file left a change set behind.
    assert!(m.pipeline.pending().await.unwrap().is_empty());
    let reports = files_under(&m.dir.path().join("quarantine"));
    let expected_reports = cases
        .iter()
        .filter(|c| !matches!(c["expected"].as_str(), Some("skipped" | "nothing")))
        .count();
    assert_eq!(reports.len(), expected_reports, "{reports:?}");

    // Good files beside them are applied as usual.
    m.apply("dms/s/t/20240602-000000001.csv", b"I,1,a,2\nI,2,b,3\n").await;
    assert_eq!(m.rows("shop.s.t", &["id"]).await, vec![vec!["1"], vec!["2"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_keys_never_reach_outside_the_storage_root() {
    let m = Mini::new(SOURCES, "");
    // A file outside the bucket's folder that a key escaping the root could reach.
    let outside = m.dir.path().join("outside/20240601-000000001.csv");
    std::fs::create_dir_all(outside.parent().unwrap()).unwrap();
    std::fs::write(&outside, b"I,1,a,2\n").unwrap();
    let before = files_under(m.dir.path());
    for c in corpus()["keys"].as_array().unwrap() {
        let (name, key) = (c["name"].as_str().unwrap(), c["key"].as_str().unwrap());
        let out = m.pipeline.decode("dms", key, None, Failpoints::default()).await;
        match &out {
            Ok(DecodeOutcome::Staged(_)) => panic!("{name}: a hostile key was decoded: {out:?}"),
            Ok(DecodeOutcome::Quarantined { report_location, .. }) => {
                // The report itself stays inside the quarantine root.
                assert!(!report_location.contains(".."), "{name}: {report_location}");
            }
            Ok(DecodeOutcome::Skipped { .. }) | Err(_) => {}
        }
    }
    // Nothing was written outside the lake's own folders.
    let after: Vec<String> = files_under(m.dir.path())
        .into_iter()
        .filter(|p| !p.contains("/quarantine/"))
        .collect();
    assert_eq!(after, before);
    assert!(m.pipeline.pending().await.unwrap().is_empty());
}

#[test]
fn malformed_and_oversized_events_are_refused() {
    let mut cases: Vec<(String, String, String)> = corpus()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                String::from_utf8(bytes(c["file"].as_str().unwrap())).unwrap(),
                c["expected"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Over Lambda's 6 MB payload limit, built here rather than stored in the corpus.
    let big_body = "x".repeat(7 * 1024 * 1024);
    cases.push((
        "sqs-body-too-large".into(),
        serde_json::json!({"Records": [{"eventSource": "aws:sqs", "messageId": "m1", "body": big_body}]}).to_string(),
        "failed_message".into(),
    ));
    assert!(cases.len() >= 6);
    for (name, text, expected) in cases {
        let got = match serde_json::from_str::<Value>(&text) {
            Err(_) => "event_error".to_string(),
            Ok(v) => match parse(&v) {
                Err(e) => {
                    assert!(matches!(e, Error::Event { .. }), "{name}: {e:?}");
                    "event_error".to_string()
                }
                Ok(Payload::Direct(d)) => match d.objects {
                    Err(_) => "event_error".to_string(),
                    Ok(o) => format!("accepted {o:?}"),
                },
                Ok(Payload::Sqs(ds)) => {
                    if ds.iter().all(|d| d.objects.is_err() && d.message_id.is_some()) {
                        "failed_message".to_string()
                    } else {
                        format!("accepted {ds:?}")
                    }
                }
            },
        };
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn every_configuration_mistake_names_its_place() {
    for c in corpus()["configs"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let text = String::from_utf8(bytes(c["file"].as_str().unwrap())).unwrap();
        match Config::from_text(&text) {
            Err(Error::Config { path, reason }) => {
                let want = c["path"].as_str().unwrap();
                assert!(
                    path.starts_with(want),
                    "{name}: error at `{path}`, expected `{want}`: {reason}"
                );
                assert!(!reason.is_empty(), "{name}");
            }
            other => panic!("{name}: expected a configuration error, got {other:?}"),
        }
    }
}
