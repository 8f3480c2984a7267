//! template.yaml against the code: every function points at a crate that builds a binary of that
//! name, and every environment variable a function reads is set for it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
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
    assert!(events.contains("AlarmTopic"), "{events}");
    // The schedule is an EventBridge Scheduler schedule of its own (see
    // `reprocess_runs_one_at_a_time_and_keeps_its_failures`), not a SAM `Schedule` event.
    assert!(!events.contains("Schedule"), "{events}");
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
    // The stages' reports, and the counts the handlers emit on their own (errors, deferrals).
    let mut out: BTreeSet<String> = [
        dms2delta::metrics::CommitReport::METRICS,
        dms2delta::metrics::CompactReport::METRICS,
        dms2delta::metrics::DecodeReport::METRICS,
        dms2delta::metrics::ReprocessReport::METRICS,
    ]
    .concat()
    .into_iter()
    .map(str::to_string)
    .collect();
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
    let mut watched = 0;
    for (name, r) in resources {
        if r["Type"].as_str() != Some("AWS::CloudWatch::Alarm") {
            continue;
        }
        let p = &r["Properties"];
        // A single metric, or the metrics of a metric math alarm.
        let mut metrics = vec![(&p["Namespace"], &p["MetricName"])];
        for m in p["Metrics"].as_sequence().into_iter().flatten() {
            let stat = &m["MetricStat"]["Metric"];
            metrics.push((&stat["Namespace"], &stat["MetricName"]));
        }
        for (namespace, metric) in metrics {
            if format!("{namespace:?}").contains("MetricsNamespace") {
                let metric = metric.as_str().unwrap();
                assert!(
                    emitted.contains(metric),
                    "{name:?} watches {metric}, which no function emits"
                );
                watched += 1;
            }
        }
    }
    assert!(watched >= 6, "{watched}");
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

// ---------------------------------------------------------------------------------------------
// Deployability on a real account: what a template reader can check without one.
// ---------------------------------------------------------------------------------------------

/// The value under a YAML tag (`!Ref X`, `!GetAtt X.Arn`, `!If [...]`), if `v` carries `tag`.
fn under<'a>(v: &'a Value, tag: &str) -> Option<&'a Value> {
    match v {
        Value::Tagged(t) if t.tag == tag => Some(&t.value),
        _ => None,
    }
}

/// `!GetAtt <resource>.<attribute>` as text, or "" when `v` is something else.
fn get_att(v: &Value) -> &str {
    under(v, "GetAtt").and_then(Value::as_str).unwrap_or("")
}

/// `!Ref <name>` as text, or "" when `v` is something else.
fn ref_to(v: &Value) -> &str {
    under(v, "Ref").and_then(Value::as_str).unwrap_or("")
}

fn resource<'a>(t: &'a Value, name: &str) -> &'a Value {
    let r = &t["Resources"][name];
    assert!(!r.is_null(), "template.yaml has no resource {name}");
    r
}

/// The statements of a policy document, with `!If [cond, statement, NoValue]` entries opened
/// (the test looks at what the statement grants when its condition holds).
fn statements(document: &Value) -> Vec<&Value> {
    document["Statement"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| match under(s, "If") {
            Some(branches) => &branches[1],
            None => s,
        })
        .collect()
}

fn statement<'a>(document: &'a Value, sid: &str) -> &'a Value {
    statements(document)
        .into_iter()
        .find(|s| s["Sid"].as_str() == Some(sid))
        .unwrap_or_else(|| panic!("no statement {sid} in {document:?}"))
}

fn actions(s: &Value) -> BTreeSet<String> {
    match &s["Action"] {
        Value::String(a) => [a.clone()].into(),
        Value::Sequence(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
        other => panic!("{other:?}"),
    }
}

fn role_policy(t: &Value, role: &str) -> Value {
    resource(t, role)["Properties"]["Policies"][0]["PolicyDocument"].clone()
}

/// Parameter values and condition outcomes a deployment would have, to evaluate the template's
/// intrinsic functions with.
struct Deployment<'a> {
    template: &'a Value,
    params: BTreeMap<&'a str, &'a str>,
    conditions: BTreeMap<&'a str, bool>,
}

impl Deployment<'_> {
    fn param(&self, name: &str) -> String {
        if let Some(v) = self.params.get(name) {
            return v.to_string();
        }
        match &self.template["Parameters"][name]["Default"] {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => panic!("parameter {name} has no value here and no default: {other:?}"),
        }
    }

    fn sub(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let end = rest[i..].find('}').unwrap();
            out.push_str(&self.param(&rest[i + 2..i + end]));
            rest = &rest[i + end + 1..];
        }
        out + rest
    }

    /// `v` with `!Ref`, `!Sub` and `!If` evaluated, as JSON.
    fn resolve(&self, v: &Value) -> serde_json::Value {
        let yaml = self.resolve_yaml(v);
        serde_json::to_value(&yaml).unwrap()
    }

    fn resolve_yaml(&self, v: &Value) -> Value {
        match v {
            Value::Tagged(t) if t.tag == "Ref" => Value::String(self.param(t.value.as_str().unwrap())),
            Value::Tagged(t) if t.tag == "Sub" => Value::String(self.sub(t.value.as_str().unwrap())),
            Value::Tagged(t) if t.tag == "If" => {
                let c = t.value[0].as_str().unwrap();
                let holds = *self
                    .conditions
                    .get(c)
                    .unwrap_or_else(|| panic!("condition {c} not given"));
                self.resolve_yaml(&t.value[if holds { 1 } else { 2 }])
            }
            Value::Tagged(t) => panic!("cannot evaluate {t:?} here"),
            Value::Sequence(s) => Value::Sequence(s.iter().map(|x| self.resolve_yaml(x)).collect()),
            Value::Mapping(m) => Value::Mapping(m.iter().map(|(k, x)| (k.clone(), self.resolve_yaml(x))).collect()),
            other => other.clone(),
        }
    }
}

/// EventBridge's (and SNS payload filtering's) matching, for the operators the template uses:
/// exact strings, `prefix`, `wildcard` (`*` only) and `exists`; an array in the event matches
/// when one of its elements does.
fn matches(pattern: &serde_json::Value, event: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    pattern.as_object().unwrap().iter().all(|(k, p)| {
        let e = event.get(k);
        match p {
            J::Object(_) => e.is_some_and(|e| matches(p, e)),
            J::Array(alternatives) => {
                let values: Vec<&J> = match e {
                    Some(J::Array(a)) => a.iter().collect(),
                    Some(v) => vec![v],
                    None => vec![],
                };
                alternatives.iter().any(|a| match a {
                    J::String(s) => values.iter().any(|v| v.as_str() == Some(s.as_str())),
                    J::Object(o) => match o.iter().next().unwrap() {
                        (op, J::Bool(b)) if op == "exists" => e.is_some() == *b,
                        (op, J::String(x)) if op == "prefix" => values
                            .iter()
                            .any(|v| v.as_str().is_some_and(|v| v.starts_with(x.as_str()))),
                        (op, J::String(x)) if op == "wildcard" => {
                            values.iter().any(|v| v.as_str().is_some_and(|v| wildcard(x, v)))
                        }
                        other => panic!("matcher not supported here: {other:?}"),
                    },
                    other => panic!("matcher not supported here: {other}"),
                })
            }
            other => panic!("a pattern value is an array or an object, not {other}"),
        }
    })
}

/// `*` matches any run of characters (slashes included), everything else itself.
fn wildcard(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if s.len() < first.len() + last.len() || !s.starts_with(first) || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn sample(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("events").join(name)).unwrap()).unwrap()
}

fn s3_event(bucket: &str, key: &str) -> serde_json::Value {
    serde_json::json!({"source": "aws.s3", "detail-type": "Object Created",
        "detail": {"bucket": {"name": bucket}, "object": {"key": key}}})
}

#[test]
fn wildcard_matches_like_eventbridge() {
    assert!(wildcard("lake/*.json", "lake/a/b/_delta_log/1.json"));
    assert!(wildcard("lake/*/_delta_log/*.json", "lake/a/_delta_log/1.json"));
    assert!(!wildcard("lake/*/_delta_log/*.json", "lake/_delta_log/1.json"));
    assert!(!wildcard("lake/*.json", "lake/x.parquet"));
    assert!(!wildcard("ab*ba", "aba"));
    assert!(wildcard("a", "a") && !wildcard("a", "ab"));
}

#[test]
fn alarm_topic_key_lets_cloudwatch_and_eventbridge_publish() {
    let t = template();
    // Not the AWS managed key: its policy cannot grant CloudWatch, so no alarm would be delivered.
    let topic = &resource(&t, "AlarmTopic")["Properties"];
    let key_id = under(&topic["KmsMasterKeyId"], "If").expect("KmsMasterKeyId: !If [MakeAlarmTopicKey, …]");
    assert_eq!(key_id[0].as_str(), Some("MakeAlarmTopicKey"));
    assert_eq!(get_att(&key_id[1]), "AlarmTopicKey.Arn");
    assert_eq!(ref_to(&key_id[2]), "AlarmTopicKmsKeyArn");
    assert!(!format!("{topic:?}").contains("alias/aws/sns"));

    let key = resource(&t, "AlarmTopicKey");
    assert_eq!(key["Condition"].as_str(), Some("MakeAlarmTopicKey"));
    assert_eq!(key["Properties"]["EnableKeyRotation"].as_bool(), Some(true));
    let policy = &key["Properties"]["KeyPolicy"];
    let by_service = |service: &str| {
        statements(policy)
            .into_iter()
            .filter(|s| s["Principal"]["Service"].as_str() == Some(service))
            .collect::<Vec<_>>()
    };
    for service in ["cloudwatch.amazonaws.com", "events.amazonaws.com"] {
        let granted: BTreeSet<String> = by_service(service)
            .iter()
            .filter(|s| s["Effect"].as_str() == Some("Allow"))
            .flat_map(|s| actions(s))
            .collect();
        assert!(
            granted.contains("kms:Decrypt") && granted.contains("kms:GenerateDataKey*"),
            "{service} may use the key only with {granted:?}"
        );
        assert!(!granted.contains("kms:*"), "{service}: {granted:?}");
    }
    // CloudWatch's use is limited to this account's alarms.
    let cw = by_service("cloudwatch.amazonaws.com")[0];
    assert_eq!(
        ref_to(&cw["Condition"]["StringEquals"]["aws:SourceAccount"]),
        "AWS::AccountId"
    );
    // The account keeps control of its key.
    let admin = statements(policy)
        .into_iter()
        .find(|s| actions(s).contains("kms:*"))
        .expect("an administering statement");
    let root = under(&admin["Principal"]["AWS"], "Sub")
        .and_then(Value::as_str)
        .unwrap();
    assert!(root.ends_with(":root"), "{root}");
    // Only the stack's own DMS rule may publish through EventBridge.
    let topic_policy = &resource(&t, "AlarmTopicPolicy")["Properties"]["PolicyDocument"];
    let eb = statement(topic_policy, "DmsTaskStateEvents");
    assert_eq!(eb["Principal"]["Service"].as_str(), Some("events.amazonaws.com"));
    assert_eq!(
        get_att(&eb["Condition"]["ArnEquals"]["aws:SourceArn"]),
        "DmsTaskStateRule.Arn"
    );
}

/// (rule, queue, condition, bucket parameter) of each stage fed from a bucket.
const STAGE_RULES: [(&str, &str, &str, &str); 3] = [
    ("DecodeEventRule", "Decode", "DmsEventsViaEventBridge", "DmsBucketName"),
    (
        "CommitEventRule",
        "Commit",
        "LakeEventsViaEventBridge",
        "LakeBucketName",
    ),
    (
        "CompactEventRule",
        "Compact",
        "LakeEventsViaEventBridge",
        "LakeBucketName",
    ),
];

#[test]
fn existing_buckets_reach_each_stage_through_its_own_eventbridge_rule() {
    let t = template();
    // EventBridge for buckets the stack does not create, by default; S3 notifications for the
    // ones it does.
    assert_eq!(
        t["Parameters"]["ExistingBucketEvents"]["Default"].as_str(),
        Some("EventBridge")
    );
    let conditions = format!("{:?}", t["Conditions"]);
    for (rule, stage, condition, bucket) in STAGE_RULES {
        let r = resource(&t, rule);
        assert_eq!(r["Type"].as_str(), Some("AWS::Events::Rule"));
        assert_eq!(r["Condition"].as_str(), Some(condition), "{rule}");
        let created = if bucket == "DmsBucketName" {
            "MakeDmsBucket"
        } else {
            "MakeLakeBucket"
        };
        let c = format!("{:?}", t["Conditions"][condition]);
        assert!(c.contains(created) && c.contains("UseEventBridge"), "{condition}: {c}");
        assert!(conditions.contains("ExistingBucketEvents"));

        let p = &r["Properties"];
        let targets = p["Targets"].as_sequence().unwrap();
        assert_eq!(targets.len(), 1, "{rule}");
        assert_eq!(get_att(&targets[0]["Arn"]), format!("{stage}Queue.Arn"), "{rule}");
        // Undeliverable events land in the stage's dead-letter queue, which reprocess redrives.
        assert_eq!(
            get_att(&targets[0]["DeadLetterConfig"]["Arn"]),
            format!("{stage}DeadLetterQueue.Arn"),
            "{rule}"
        );
        // The queue and its dead-letter queue accept this rule, and only it.
        for queue in [format!("{stage}QueuePolicy"), format!("{stage}DeadLetterQueuePolicy")] {
            let doc = &resource(&t, &queue)["Properties"]["PolicyDocument"];
            let from_rule: Vec<&Value> = statements(doc)
                .into_iter()
                .filter(|s| s["Principal"]["Service"].as_str() == Some("events.amazonaws.com"))
                .collect();
            assert_eq!(from_rule.len(), 1, "{queue}");
            assert_eq!(actions(from_rule[0]), BTreeSet::from(["sqs:SendMessage".to_string()]));
            assert_eq!(
                get_att(&from_rule[0]["Condition"]["ArnEquals"]["aws:SourceArn"]),
                format!("{rule}.Arn"),
                "{queue}"
            );
        }
    }
    // Stack-created buckets keep their direct notifications.
    assert!(format!(
        "{:?}",
        resource(&t, "DmsBucket")["Properties"]["NotificationConfiguration"]
    )
    .contains("DecodeQueue"));
    let lake = format!(
        "{:?}",
        resource(&t, "LakeBucket")["Properties"]["NotificationConfiguration"]
    );
    assert!(lake.contains("CommitQueue") && lake.contains("CompactQueue"));
    // Removals reach decode (source truncates), lifecycle expirations do not; floor markers
    // reach commit.
    let dms = resource(&t, "DmsBucket")["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["Event"].as_str().unwrap().to_string())
        .collect::<Vec<_>>();
    assert_eq!(dms, vec!["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]);
    assert!(lake.contains(".floor"), "{lake}");
}

#[test]
fn the_rules_select_what_each_stage_takes() {
    let t = template();
    let pattern = |rule: &str, d: &Deployment| d.resolve(&resource(&t, rule)["Properties"]["EventPattern"]);
    let mut d = Deployment {
        template: &t,
        params: [("DmsBucketName", "dms-bucket"), ("LakeBucketName", "my-lake")].into(),
        conditions: [("HasDmsPrefix", true)].into(),
    };

    // Decode: what DecodeQueue receives by default, the sample, is selected and parses.
    let decode = pattern("DecodeEventRule", &d);
    let delivered = sample("sqs-eventbridge.json");
    let body: serde_json::Value = serde_json::from_str(delivered["Records"][0]["body"].as_str().unwrap()).unwrap();
    assert!(matches(&decode, &body), "{decode}\n{body}");
    let dms2delta::events::Payload::Sqs(deliveries) = dms2delta::events::parse(&delivered).unwrap() else {
        panic!("an SQS batch")
    };
    let objects = deliveries[0].objects.as_ref().unwrap();
    assert_eq!(objects[0].bucket, "dms-bucket");
    assert_eq!(objects[0].key, body["detail"]["object"]["key"].as_str().unwrap());
    assert_eq!(objects[0].kind, dms2delta::events::ObjectEventKind::Created);
    assert!(!matches(&decode, &s3_event("dms-bucket", "other/x.csv")));
    assert!(!matches(
        &decode,
        &s3_event("another-bucket", "dms/mysql/shop/customers/LOAD00000001.csv")
    ));
    // Removals too (a source truncate or drop, see truncates.follow_removals); decode tells a
    // lifecycle expiration by its reason and never takes it for a truncate.
    for (name, kind) in [
        (
            "eventbridge-object-deleted.json",
            dms2delta::events::ObjectEventKind::Removed,
        ),
        (
            "eventbridge-lifecycle-expiration.json",
            dms2delta::events::ObjectEventKind::Expired,
        ),
    ] {
        let deleted = sample(name);
        assert!(matches(&decode, &deleted), "{name}");
        let dms2delta::events::Payload::Direct(d) = dms2delta::events::parse(&deleted).unwrap() else {
            panic!("{name}: one event")
        };
        assert_eq!(d.objects.unwrap()[0].kind, kind, "{name}");
    }
    let mut other = body.clone();
    other["detail-type"] = "Object Restore Completed".into();
    assert!(!matches(&decode, &other));
    // An empty DmsPrefix drops the key filter rather than sending an empty prefix.
    d.params.insert("DmsPrefix", "");
    d.conditions.insert("HasDmsPrefix", false);
    assert!(matches(
        &pattern("DecodeEventRule", &d),
        &s3_event("dms-bucket", "anything.csv")
    ));

    // Commit: staged change sets only, never the tables' own data files.
    let commit = pattern("CommitEventRule", &d);
    assert!(matches(
        &commit,
        &s3_event("my-lake", "lake/_dms2delta/staged/mysql/shop/customers/0a1b.parquet")
    ));
    assert!(!matches(
        &commit,
        &s3_event("my-lake", "lake/mysql/shop/customers/part-00000.parquet")
    ));
    assert!(!matches(
        &commit,
        &s3_event("my-lake", "lake/_dms2delta/staged/mysql/shop/customers/0a1b.tmp")
    ));
    // A table's floor marker: a truncate is staged as a marker alone.
    assert!(matches(
        &commit,
        &s3_event(
            "my-lake",
            "lake/_dms2delta/staged/mysql/shop/customers/truncate-F202405290815274400.floor"
        )
    ));
    assert!(!matches(
        &commit,
        &s3_event("dms-bucket", "lake/_dms2delta/staged/mysql/shop/customers/0a1b.parquet")
    ));

    // Compact: Delta log entries (which compact maps to their table), nothing else that ends
    // in .json. Tombstone tables' entries come too, as with the S3 notification; compact
    // acknowledges them (it maintains a tombstone table with its table).
    let compact = pattern("CompactEventRule", &d);
    let entry = "lake/mysql/shop/customers/_delta_log/00000000000000000001.json";
    assert!(matches(&compact, &s3_event("my-lake", entry)));
    assert!(dms2delta::operations::compact::table_of_log_key("lake/", entry).is_some());
    let tombstones = "lake/_dms2delta/tombstones/mysql/shop/customers/_delta_log/00000000000000000004.json";
    assert!(matches(&compact, &s3_event("my-lake", tombstones)));
    for key in [
        "lake/_dms2delta/quarantine/dms-bucket/dms/mysql/shop/customers/x.csv.error.json",
        "lake/mysql/shop/customers/_delta_log/_last_checkpoint",
        "lake/mysql/shop/customers/_delta_log/00000000000000000010.checkpoint.parquet",
        "lake/mysql/shop/customers/part-00000.parquet",
        "elsewhere/mysql/shop/customers/_delta_log/00000000000000000001.json",
    ] {
        assert!(!matches(&compact, &s3_event("my-lake", key)), "{key}");
    }
}

#[test]
fn dms_task_failures_and_stops_reach_the_alarm_topic_but_not_reprocess() {
    let t = template();
    let rule = resource(&t, "DmsTaskStateRule");
    let targets = rule["Properties"]["Targets"].as_sequence().unwrap();
    assert_eq!(ref_to(&targets[0]["Arn"]), "AlarmTopic");
    let failed = sample("dms-task-failed.json");
    let task = failed["resources"][0].as_str().unwrap().to_string();
    for (filter, conditions) in [("", false), (task.as_str(), true)] {
        let d = Deployment {
            template: &t,
            params: [("DmsReplicationTaskArns", filter)].into(),
            conditions: [("HasDmsTaskFilter", conditions)].into(),
        };
        let pattern = d.resolve(&rule["Properties"]["EventPattern"]);
        let pattern = if conditions {
            // A CommaDelimitedList reference is a list: one task here.
            let mut p = pattern;
            p["resources"] = serde_json::json!([filter]);
            p
        } else {
            pattern
        };
        assert!(matches(&pattern, &failed), "{pattern}");
        let mut stopped = failed.clone();
        stopped["detail"]["eventType"] = "REPLICATION_TASK_STOPPED".into();
        assert!(matches(&pattern, &stopped));
        let mut started = failed.clone();
        started["detail"]["eventType"] = "REPLICATION_TASK_STARTED".into();
        assert!(!matches(&pattern, &started));
        let mut other_task = failed.clone();
        other_task["resources"] = serde_json::json!(["arn:aws:dms:us-east-1:123456789012:task:OTHER"]);
        assert_eq!(matches(&pattern, &other_task), !conditions);
    }
    // Reprocess's subscription takes CloudWatch alarms only: a DMS event on the topic would make
    // it fail.
    let sub = &resource(&t, "ReprocessFunction")["Properties"]["Events"]["Alarms"]["Properties"];
    assert_eq!(sub["FilterPolicyScope"].as_str(), Some("MessageBody"));
    let filter = serde_json::to_value(&sub["FilterPolicy"]).unwrap();
    let alarm: serde_json::Value = serde_json::from_str(
        sample("reprocess-alarm.json")["Records"][0]["Sns"]["Message"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(matches(&filter, &alarm));
    assert!(!matches(&filter, &failed));
    assert!(
        reprocess::handler::trigger(&serde_json::json!({"Records": [{"EventSource": "aws:sns",
        "Sns": {"Message": failed.to_string()}}]}))
        .is_err()
    );
}

#[test]
fn listed_dms_task_stops_run_reprocess_and_only_their_statistics_are_readable() {
    let t = template();
    let rule = resource(&t, "DmsTaskStoppedRule");
    assert_eq!(rule["Condition"].as_str(), Some("HasDmsTaskFilter"));
    let targets = rule["Properties"]["Targets"].as_sequence().unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(ref_to(&targets[0]["Arn"]), "ReprocessFunction.Alias");
    let allow = resource(&t, "DmsTaskStoppedPermission");
    assert_eq!(allow["Condition"].as_str(), Some("HasDmsTaskFilter"));
    assert_eq!(ref_to(&allow["Properties"]["FunctionName"]), "ReprocessFunction.Alias");
    assert_eq!(allow["Properties"]["Principal"].as_str(), Some("events.amazonaws.com"));
    assert_eq!(get_att(&allow["Properties"]["SourceArn"]), "DmsTaskStoppedRule.Arn");

    let stopped = sample("dms-task-stopped.json");
    let task = stopped["resources"][0].as_str().unwrap().to_string();
    let d = Deployment {
        template: &t,
        params: [("DmsReplicationTaskArns", task.as_str())].into(),
        conditions: [("HasDmsTaskFilter", true)].into(),
    };
    let mut pattern = d.resolve(&rule["Properties"]["EventPattern"]);
    // A CommaDelimitedList reference is a list: one task here.
    pattern["resources"] = serde_json::json!([task]);
    assert!(matches(&pattern, &stopped), "{pattern}");
    for other in ["dms-task-failed.json", "dms-task-started.json"] {
        assert!(!matches(&pattern, &sample(other)), "{other}");
    }
    let mut other_task = stopped.clone();
    other_task["resources"] = serde_json::json!(["arn:aws:dms:us-east-1:123456789012:task:OTHER"]);
    assert!(!matches(&pattern, &other_task));
    // What the rule delivers, reprocess takes (as it is, no input transformer).
    assert!(rule["Properties"]["Targets"][0]["InputTransformer"].is_null());
    assert!(matches!(
        reprocess::handler::trigger(&stopped).unwrap(),
        reprocess::handler::Trigger::DmsTask(e) if e.task_arn.as_deref() == Some(task.as_str())
    ));

    // dms:DescribeTableStatistics, for commit and reprocess alone, on the listed tasks alone,
    // and only when tasks are listed.
    let mut granted = BTreeSet::new();
    for (name, r) in t["Resources"].as_mapping().unwrap() {
        if r["Type"].as_str() != Some("AWS::IAM::Role") {
            continue;
        }
        for policy in r["Properties"]["Policies"].as_sequence().unwrap() {
            for s in policy["PolicyDocument"]["Statement"].as_sequence().unwrap() {
                let (condition, s) = match under(s, "If") {
                    Some(b) => (b[0].as_str(), &b[1]),
                    None => (None, s),
                };
                if !actions(s).iter().any(|a| a.starts_with("dms:")) {
                    continue;
                }
                let role = name.as_str().unwrap().to_string();
                assert_eq!(
                    actions(s),
                    BTreeSet::from(["dms:DescribeTableStatistics".to_string()]),
                    "{role}"
                );
                assert_eq!(condition, Some("HasDmsTaskFilter"), "{role}");
                assert_eq!(ref_to(&s["Resource"]), "DmsReplicationTaskArns", "{role}");
                granted.insert(role);
            }
        }
    }
    assert_eq!(
        granted,
        BTreeSet::from(["CommitFunctionRole".to_string(), "ReprocessFunctionRole".to_string()])
    );
}

#[test]
fn reprocess_runs_one_at_a_time_and_keeps_its_failures() {
    let t = template();
    let f = &resource(&t, "ReprocessFunction")["Properties"];
    assert_eq!(f["ReservedConcurrentExecutions"].as_u64(), Some(1));
    let invoke = &f["EventInvokeConfig"];
    assert!(invoke["MaximumRetryAttempts"].as_u64().unwrap() <= 1);
    let on_failure = &invoke["DestinationConfig"]["OnFailure"];
    assert_eq!(on_failure["Type"].as_str(), Some("SQS"));
    assert_eq!(get_att(&on_failure["Destination"]), "ReprocessDeadLetterQueue.Arn");
    let role = role_policy(&t, "ReprocessFunctionRole");
    let send = statement(&role, "OnFailureDestination");
    assert_eq!(get_att(&send["Resource"]), "ReprocessDeadLetterQueue.Arn");

    // The schedule: EventBridge Scheduler, retrying, with a dead-letter queue, on the alias.
    let s = resource(&t, "ReprocessSchedule");
    assert_eq!(s["Type"].as_str(), Some("AWS::Scheduler::Schedule"));
    let target = &s["Properties"]["Target"];
    assert_eq!(ref_to(&target["Arn"]), "ReprocessFunction.Alias");
    assert!(target["RetryPolicy"]["MaximumRetryAttempts"].as_u64().unwrap() > 0);
    assert_eq!(
        get_att(&target["DeadLetterConfig"]["Arn"]),
        "ReprocessDeadLetterQueue.Arn"
    );
    assert_eq!(get_att(&target["RoleArn"]), "ReprocessSchedulerRole.Arn");
    let trust = &resource(&t, "ReprocessSchedulerRole")["Properties"]["AssumeRolePolicyDocument"];
    assert_eq!(
        trust["Statement"][0]["Principal"]["Service"].as_str(),
        Some("scheduler.amazonaws.com")
    );
    let sched = role_policy(&t, "ReprocessSchedulerRole");
    assert_eq!(
        ref_to(&statement(&sched, "InvokeReprocess")["Resource"]),
        "ReprocessFunction.Alias"
    );
    assert_eq!(
        get_att(&statement(&sched, "DeadLetters")["Resource"]),
        "ReprocessDeadLetterQueue.Arn"
    );

    // What the scheduler delivers is a schedule run to reprocess (an empty input would be a
    // run by hand over every file), and the sample is that input filled in.
    let input = target["Input"].as_str().unwrap();
    let delivered = sample("reprocess-scheduler.json");
    let filled = input
        .replace("<aws.scheduler.execution-id>", delivered["id"].as_str().unwrap())
        .replace("<aws.scheduler.scheduled-time>", delivered["time"].as_str().unwrap())
        .replace(
            "<aws.scheduler.schedule-arn>",
            delivered["resources"][0].as_str().unwrap(),
        );
    assert!(!filled.contains("<aws."), "{filled}");
    let filled: serde_json::Value = serde_json::from_str(&filled).unwrap();
    assert_eq!(filled, delivered);
    assert_eq!(
        reprocess::handler::trigger(&filled).unwrap(),
        reprocess::handler::Trigger::Schedule
    );
}

#[test]
fn every_queue_fed_function_has_bounded_concurrency() {
    let t = template();
    for (function, event, parameter) in [
        ("DecodeFunction", "DmsObjects", "DecodeMaxConcurrency"),
        ("CommitFunction", "StagedChangeSets", "CommitMaxConcurrency"),
        ("CompactFunction", "DeltaLogEntries", "CompactMaxConcurrency"),
    ] {
        let e = &resource(&t, function)["Properties"]["Events"][event]["Properties"];
        assert_eq!(
            ref_to(&e["ScalingConfig"]["MaximumConcurrency"]),
            parameter,
            "{function}"
        );
        let p = &t["Parameters"][parameter];
        // Lambda's accepted range for an SQS event source.
        assert_eq!(
            (p["MinValue"].as_u64(), p["MaxValue"].as_u64()),
            (Some(2), Some(1000)),
            "{parameter}"
        );
    }
    // Every function publishes `live`, which the event sources then invoke.
    assert_eq!(t["Globals"]["Function"]["AutoPublishAlias"].as_str(), Some("live"));
}

#[test]
fn backlog_alarms_wait_out_a_retry() {
    let t = template();
    let mapping = t["Mappings"]["VisibilityTimeoutFor"].as_mapping().unwrap();
    for (timeout, row) in mapping {
        let (visibility, backlog) = (row["Seconds"].as_u64().unwrap(), row["BacklogAlarm"].as_u64().unwrap());
        let timeout: u64 = timeout.as_str().unwrap().parse().unwrap();
        assert_eq!(visibility, 6 * timeout);
        assert!(backlog > visibility, "{timeout}: {backlog} <= {visibility}");
    }
    for stage in ["Decode", "Commit", "Compact"] {
        let timeout = format!("{stage}Timeout");
        let vt = under(
            &resource(&t, &format!("{stage}Queue"))["Properties"]["VisibilityTimeout"],
            "FindInMap",
        )
        .unwrap();
        assert_eq!(
            (ref_to(&vt[1]), vt[2].as_str()),
            (timeout.as_str(), Some("Seconds")),
            "{stage}"
        );
        let alarm = &resource(&t, &format!("{stage}BacklogAlarm"))["Properties"];
        assert_eq!(alarm["MetricName"].as_str(), Some("ApproximateAgeOfOldestMessage"));
        let th = under(&alarm["Threshold"], "FindInMap").unwrap_or_else(|| panic!("{stage}: a fixed threshold"));
        assert_eq!(
            (ref_to(&th[1]), th[2].as_str()),
            (timeout.as_str(), Some("BacklogAlarm")),
            "{stage}"
        );
        // Every timeout the parameter allows has a row.
        for allowed in t["Parameters"][timeout.as_str()]["AllowedValues"]
            .as_sequence()
            .unwrap()
        {
            let key = serde_yaml_ng::to_string(allowed).unwrap();
            assert!(mapping.contains_key(key.trim()), "{timeout} {key}");
        }
    }
}

#[test]
fn alarms_cover_commit_quarantines_and_silence() {
    let t = template();
    let q = &resource(&t, "CommitQuarantineAlarm")["Properties"];
    assert_eq!(q["MetricName"].as_str(), Some("Quarantined"));
    assert_eq!(q["Dimensions"][0]["Value"].as_str(), Some("commit"));
    assert!(emitted_metrics().contains("Quarantined"));

    let s = &resource(&t, "SilenceAlarm")["Properties"];
    // No data is the signal: decode emits `Files` only when it decodes one.
    assert_eq!(s["TreatMissingData"].as_str(), Some("breaching"));
    let metrics = s["Metrics"].as_sequence().unwrap();
    let expression = metrics.iter().find_map(|m| m["Expression"].as_str()).unwrap();
    assert!(expression.starts_with("FILL("), "{expression}");
    let stat = metrics.iter().find(|m| !m["MetricStat"].is_null()).unwrap()["MetricStat"].clone();
    assert_eq!(stat["Metric"]["MetricName"].as_str(), Some("Files"));
    assert_eq!(stat["Metric"]["Dimensions"][0]["Value"].as_str(), Some("decode"));
    let period = stat["Period"].as_u64().unwrap();
    assert_eq!(period, 3600);
    assert_eq!(ref_to(&s["EvaluationPeriods"]), "SilenceHours");
    assert_eq!(s["ComparisonOperator"].as_str(), Some("LessThanThreshold"));
    // CloudWatch evaluates at most a day.
    let most = t["Parameters"]["SilenceHours"]["MaxValue"].as_u64().unwrap();
    assert!(most * period <= 86_400);
}

#[test]
fn the_dashboard_shows_every_queue_and_every_stage() {
    let t = template();
    let dashboard = under(&resource(&t, "Dashboard")["Properties"]["DashboardBody"], "Sub").unwrap();
    let body = dashboard[0].as_str().unwrap();
    let vars = dashboard[1].as_mapping().unwrap();
    let mut queues = 0;
    for (name, r) in t["Resources"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        match r["Type"].as_str() {
            Some("AWS::SQS::Queue") => {
                queues += 1;
                let var = vars
                    .iter()
                    .find(|(_, v)| get_att(v) == format!("{name}.QueueName"))
                    .unwrap_or_else(|| panic!("the dashboard does not name {name}"))
                    .0
                    .as_str()
                    .unwrap();
                for metric in ["ApproximateNumberOfMessagesVisible", "ApproximateAgeOfOldestMessage"] {
                    assert!(
                        body.contains(&format!("\"{metric}\", \"QueueName\", \"${{{var}}}\"")),
                        "{name}: no {metric}"
                    );
                }
            }
            Some("AWS::Serverless::Function") => {
                for metric in ["Errors", "Duration"] {
                    assert!(
                        body.contains(&format!("\"{metric}\", \"FunctionName\", \"${{{name}}}\"")),
                        "{name}: no {metric}"
                    );
                }
            }
            _ => {}
        }
    }
    assert_eq!(queues, 7);
    // Freshness per table.
    assert!(body.contains("ReplicationLagSeconds") && body.contains("{${Ns},Function,Table}"));
}

#[test]
fn every_dead_letter_queue_arn_is_an_output() {
    let t = template();
    let outputs: Vec<String> = t["Outputs"]
        .as_mapping()
        .unwrap()
        .values()
        .map(|o| get_att(&o["Value"]).to_string())
        .collect();
    let mut dlqs = 0;
    for (name, r) in t["Resources"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        if r["Type"].as_str() == Some("AWS::SQS::Queue") && name.contains("DeadLetter") {
            dlqs += 1;
            assert!(outputs.contains(&format!("{name}.Arn")), "no output gives {name}'s ARN");
        }
    }
    assert_eq!(dlqs, 4);
}

#[test]
fn roles_reach_only_what_their_function_uses() {
    let t = template();
    // Decode lists the DMS folders only.
    let decode = role_policy(&t, "DecodeFunctionRole");
    let list = statement(&decode, "TellDeletedFromForbidden");
    let prefix = &list["Condition"]["StringLike"]["s3:prefix"][0];
    assert_eq!(under(prefix, "Sub").and_then(Value::as_str), Some("${DmsPrefix}*"));

    // Compact may not write or delete where decode and commit keep their working files.
    let compact = role_policy(&t, "CompactFunctionRole");
    let deny = statement(&compact, "NotTheWorkingAreas");
    assert_eq!(deny["Effect"].as_str(), Some("Deny"));
    for a in ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"] {
        assert!(actions(deny).contains(a), "{a}");
    }
    let denied: Vec<&str> = deny["Resource"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| under(r, "Sub").and_then(Value::as_str).unwrap())
        .collect();
    assert!(
        denied.iter().any(|r| r.ends_with("${LakePrefix}${StagingPrefix}*")),
        "{denied:?}"
    );
    assert!(
        denied.iter().any(|r| r.ends_with("${LakePrefix}${QuarantinePrefix}*")),
        "{denied:?}"
    );

    // KMS: only the keys given, only when given, only through S3; reading needs Decrypt,
    // writing GenerateDataKey.
    let grants = |role: &str| -> Vec<(String, String, BTreeSet<String>)> {
        let doc = role_policy(&t, role);
        doc["Statement"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|s| {
                let b = under(s, "If")?;
                let s = &b[1];
                actions(s).iter().any(|a| a.starts_with("kms:")).then(|| {
                    assert_eq!(
                        s["Condition"]["StringEquals"]["kms:ViaService"]
                            .as_str()
                            .map(str::to_string)
                            .or_else(|| under(&s["Condition"]["StringEquals"]["kms:ViaService"], "Sub")
                                .and_then(Value::as_str)
                                .map(str::to_string)),
                        Some("s3.${AWS::Region}.amazonaws.com".to_string()),
                        "{role}"
                    );
                    (
                        b[0].as_str().unwrap().to_string(),
                        ref_to(&s["Resource"]).to_string(),
                        actions(s),
                    )
                })
            })
            .collect()
    };
    let dms_read = (
        "HasDmsKmsKey".to_string(),
        "DmsBucketKmsKeyArn".to_string(),
        BTreeSet::from(["kms:Decrypt".to_string()]),
    );
    let lake_rw = |role: &str| {
        let g = grants(role);
        g.iter()
            .find(|(c, _, _)| c == "HasLakeKmsKey")
            .unwrap_or_else(|| panic!("{role}: no lake key grant"))
            .clone()
    };
    for role in [
        "DecodeFunctionRole",
        "CommitFunctionRole",
        "CompactFunctionRole",
        "ReprocessFunctionRole",
    ] {
        let (_, key, acts) = lake_rw(role);
        assert_eq!(key, "LakeBucketKmsKeyArn", "{role}");
        assert!(
            acts.contains("kms:Decrypt") && acts.contains("kms:GenerateDataKey"),
            "{role}: {acts:?}"
        );
    }
    assert!(grants("DecodeFunctionRole").contains(&dms_read));
    assert!(grants("ReprocessFunctionRole").contains(&dms_read));
    for role in ["CommitFunctionRole", "CompactFunctionRole"] {
        assert!(
            grants(role).iter().all(|(c, _, _)| c != "HasDmsKmsKey"),
            "{role} reads no DMS file"
        );
    }
    // No role uses KMS on `*`.
    let mut kms_statements = 0;
    for (name, r) in t["Resources"].as_mapping().unwrap() {
        if r["Type"].as_str() != Some("AWS::IAM::Role") {
            continue;
        }
        for policy in r["Properties"]["Policies"].as_sequence().unwrap() {
            for s in statements(&policy["PolicyDocument"]) {
                if actions(s).iter().any(|a| a.starts_with("kms:")) {
                    kms_statements += 1;
                    assert_ne!(s["Resource"].as_str(), Some("*"), "{name:?}");
                }
            }
        }
    }
    assert_eq!(kms_statements, 6);
}

/// The features of `dms2delta` cargo resolves for `package` built on its own, as cargo-lambda
/// builds each function (dev-dependencies left out).
fn shared_features_of(package: &str) -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO"))
        .current_dir(repo())
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            package,
            "-e",
            "features,no-dev",
            "-i",
            "dms2delta",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_once("dms2delta feature \"")?
                .1
                .split_once('"')
                .map(|(f, _)| f.to_string())
        })
        .collect()
}

#[test]
fn the_functions_carry_no_test_scaffolding_and_decode_no_delta_engine() {
    for function in ["decode", "commit", "compact", "reprocess"] {
        let features = shared_features_of(function);
        assert!(!features.contains("testing"), "{function}: {features:?}");
        assert_eq!(
            features.contains("delta"),
            function != "decode",
            "{function}: {features:?}"
        );
    }
    // The CLI's demo runs the simulator: the check above would catch a parse that finds nothing.
    assert!(shared_features_of("dms2delta-cli").contains("testing"));
    // The DMS SDK (table statistics) only where a reload is settled: commit and reprocess.
    for function in ["decode", "commit", "compact", "reprocess"] {
        let out = std::process::Command::new(env!("CARGO"))
            .current_dir(repo())
            .args([
                "tree",
                "--offline",
                "--locked",
                "-p",
                function,
                "-e",
                "no-dev",
                "-i",
                "aws-sdk-databasemigration",
            ])
            .output()
            .unwrap();
        let linked =
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("aws-sdk-databasemigration v");
        assert_eq!(
            linked,
            function == "commit" || function == "reprocess",
            "{function}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
