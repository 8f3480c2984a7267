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
        assert_eq!(
            r["Properties"]["CodeUri"].as_str(),
            Some("."),
            "{name}: cargo-lambda builds from the workspace root"
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
