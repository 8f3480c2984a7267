//! template.yaml against the code: every function points at a crate that builds a binary of that
//! name, and every environment variable a function reads is set for it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_yaml_ng::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn template() -> Value {
    serde_yaml_ng::from_str(&std::fs::read_to_string(repo().join("template.yaml")).unwrap()).unwrap()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_mapping()
        .map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// What each function binary reads from its environment.
fn environment_of(binary: &str) -> Vec<&'static str> {
    let mut vars = dms2delta::bootstrap::ENVIRONMENT.to_vec();
    if binary == "reprocess" {
        vars.extend(reprocess::handler::ENVIRONMENT);
    }
    vars
}

#[test]
fn every_function_has_its_crate_and_its_environment() {
    let t = template();
    let globals = keys(&t["Globals"]["Function"]["Environment"]["Variables"]);
    let resources = t["Resources"].as_mapping().unwrap();
    let mut binaries = Vec::new();
    for (name, r) in resources {
        if r["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let name = name.as_str().unwrap();
        assert_eq!(
            r["Metadata"]["BuildMethod"].as_str(),
            Some("rust-cargolambda"),
            "{name}"
        );
        let binary = r["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap();
        let krate = repo().join("functions").join(binary);
        assert!(
            krate.join("src/main.rs").is_file(),
            "{name}: no crate at {}",
            krate.display()
        );
        let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("name = \"{binary}\"")),
            "{name}: crate is not `{binary}`"
        );
        // From its own crate, cargo resolves features for that function alone; from the
        // workspace root, decode would carry the Delta engine.
        let code_uri = format!("functions/{binary}");
        assert_eq!(
            r["Properties"]["CodeUri"].as_str(),
            Some(code_uri.as_str()),
            "{name}: cargo-lambda must build from the function's crate"
        );
        let mut set = globals.clone();
        set.extend(keys(&r["Properties"]["Environment"]["Variables"]));
        for var in environment_of(binary) {
            assert!(
                set.contains(var),
                "{name} reads {var}, which template.yaml does not set"
            );
        }
        binaries.push(binary.to_string());
    }
    binaries.sort();
    assert_eq!(binaries, ["commit", "compact", "decode", "reprocess"]);
    // And every function crate in the workspace is deployed.
    let members = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    for b in &binaries {
        assert!(
            members.contains(&format!("\"functions/{b}\"")),
            "{b} is not a workspace member"
        );
    }
}

#[test]
fn every_alarm_reaches_the_topic_reprocess_listens_to() {
    let t = template();
    let resources = t["Resources"].as_mapping().unwrap();
    let mut alarms = 0;
    for (name, r) in resources {
        if r["Type"].as_str() != Some("AWS::CloudWatch::Alarm") {
            continue;
        }
        alarms += 1;
        let actions = format!("{:?}", r["Properties"]["AlarmActions"]);
        assert!(actions.contains("AlarmTopic"), "{name:?}: {actions}");
    }
    assert!(alarms >= 6);
    let events = format!("{:?}", t["Resources"]["ReprocessFunction"]["Properties"]["Events"]);
    assert!(events.contains("AlarmTopic") && events.contains("Schedule"), "{events}");
}

/// The value of a `!Sub [text, vars]` or `!Sub text` as YAML gives it back.
fn sub_text(v: &Value) -> String {
    match v {
        Value::Tagged(t) => match &t.value {
            Value::String(s) => s.clone(),
            Value::Sequence(seq) => seq[0].as_str().unwrap().to_string(),
            other => panic!("{other:?}"),
        },
        Value::String(s) => s.clone(),
        other => panic!("{other:?}"),
    }
}

/// Every `.metric("Name", …)` the functions emit.
fn emitted_metrics() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for f in ["decode", "commit", "compact", "reprocess"] {
        let src = std::fs::read_to_string(repo().join(format!("functions/{f}/src/handler.rs"))).unwrap();
        for piece in src.split(".metric(\"").skip(1) {
            out.insert(piece.split('"').next().unwrap().to_string());
        }
    }
    out
}

#[test]
fn alarms_and_the_dashboard_read_metrics_the_functions_emit() {
    let t = template();
    let emitted = emitted_metrics();
    assert!(
        emitted.contains("ReplicationLagSeconds") && emitted.contains("RowsInserted"),
        "{emitted:?}"
    );
    let resources = t["Resources"].as_mapping().unwrap();
    for (name, r) in resources {
        let p = &r["Properties"];
        if r["Type"].as_str() == Some("AWS::CloudWatch::Alarm")
            && format!("{:?}", p["Namespace"]).contains("MetricsNamespace")
        {
            let metric = p["MetricName"].as_str().unwrap();
            assert!(
                emitted.contains(metric),
                "{name:?} watches {metric}, which no function emits"
            );
        }
    }
    // The dashboard body is JSON once substituted, and names only emitted metrics.
    let body = sub_text(&t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]);
    let mut text = String::new();
    let mut rest = body.as_str();
    while let Some(i) = rest.find("${") {
        text.push_str(&rest[..i]);
        let end = rest[i..].find('}').unwrap();
        text.push_str(if rest[i + 2..i + end].contains("Threshold") {
            "900"
        } else {
            "x"
        });
        rest = &rest[i + end + 1..];
    }
    text.push_str(rest);
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let widgets = dashboard["widgets"].as_array().unwrap();
    assert!(widgets.len() >= 5);
    for piece in text.split("MetricName=\\\"").skip(1) {
        let metric = piece.split('\\').next().unwrap();
        assert!(
            emitted.contains(metric),
            "the dashboard searches {metric}, which no function emits"
        );
    }
}

#[test]
fn every_alarm_has_a_runbook_section() {
    let runbook = std::fs::read_to_string(repo().join("docs/runbook.md")).unwrap();
    let t = template();
    for (name, r) in t["Resources"].as_mapping().unwrap() {
        if r["Type"].as_str() == Some("AWS::CloudWatch::Alarm") {
            let name = name.as_str().unwrap();
            assert!(
                runbook.contains(&format!("\n## {name}\n")),
                "docs/runbook.md has no section for {name}"
            );
        }
    }
}
