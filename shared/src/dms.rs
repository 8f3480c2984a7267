//! What DMS itself says about a source: a table's load progress (its table statistics) and its
//! replication task's state changes (EventBridge).
//!
//! A reload's end is otherwise inferred (see [`crate::generation`]): a change written after the
//! load has been committed, or `reloads.settle_after_seconds` have passed. DMS knows when a
//! table's load completed: `DescribeTableStatistics` gives, per schema and table, `TableState`
//! (`Table completed` once the load is over), `FullLoadStartTime` and `FullLoadEndTime` of the
//! table's latest load, and `FullLoadReloaded`. With a source's `dms_task_arn` configured, a
//! reload's marker settles as soon as DMS reports a load of its table that *began after* the
//! reload's anchor and completed: the table's earlier loads all began before the anchor (the
//! anchor is the newest change written after the previous load), so only the reload itself, or
//! a later one, can be that evidence. Anything else (another state, a load that began before
//! the anchor, no answer, an error, throttling) leaves the marker to the other rules: DMS can
//! only make a floor rise sooner, never on weaker evidence.
//!
//! The API sits behind [`LoadProgress`] (the AWS implementation is in the Lambda support crate,
//! which alone links the DMS SDK, and only with its `dms` feature).

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;

use crate::config::{TableSpec, Validated};
use crate::generation::{Anchor, FloorKind};

/// `TableState` of a table whose load is over (the API reference's "Valid states: Table does
/// not exist | Before load | Full load | Table completed | Table cancelled | Table error | …").
pub const TABLE_COMPLETED: &str = "Table completed";

/// One table's load, as DMS's table statistics report it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableLoad {
    /// `TableState`.
    pub state: String,
    /// `FullLoadStartTime` of the table's latest load.
    pub full_load_start: Option<DateTime<Utc>>,
    /// `FullLoadEndTime` of the table's latest load.
    pub full_load_end: Option<DateTime<Utc>>,
    /// `FullLoadReloaded`: the table was reloaded rather than loaded by a (re)started task.
    pub reloaded: Option<bool>,
}

/// A call to DMS that gave no usable answer.
#[derive(Debug, thiserror::Error)]
#[error("DMS {operation} for {task}: {reason}")]
pub struct DmsError {
    pub operation: &'static str,
    pub task: String,
    pub reason: String,
    /// DMS asked us to slow down.
    pub throttled: bool,
}

/// DMS's table statistics, per replication task.
#[async_trait]
pub trait LoadProgress: Send + Sync + fmt::Debug {
    /// The statistics of `schema.table` (source names, as DMS reports them) in the task
    /// `task_arn`; `None` when DMS lists no such table.
    async fn table_load(&self, task_arn: &str, schema: &str, table: &str) -> Result<Option<TableLoad>, DmsError>;
}

/// How long a warm function reuses DMS's answer about one table. While a reload waits, every
/// commit of the table asks; a busy table commits every few seconds, and DMS's API is rate
/// limited per account. A load's completion is then seen up to this much later, which is small
/// next to `reloads.settle_after_seconds`; a completed answer stays true for its anchor.
pub const REMEMBER_ANSWERS_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// Each table's (task, schema, table) last answer and when it came.
type Answers = HashMap<(String, String, String), (std::time::Instant, Option<TableLoad>)>;

/// A [`LoadProgress`] that remembers each table's answer for a while (errors are not
/// remembered: the next question asks again).
#[derive(Debug)]
pub struct Remembered<P> {
    inner: P,
    ttl: std::time::Duration,
    answers: std::sync::Mutex<Answers>,
}

impl<P: LoadProgress> Remembered<P> {
    pub fn new(inner: P, ttl: std::time::Duration) -> Remembered<P> {
        Remembered {
            inner,
            ttl,
            answers: Default::default(),
        }
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, Answers> {
        // A panic elsewhere while holding the lock leaves a map that is still valid.
        self.answers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl<P: LoadProgress> LoadProgress for Remembered<P> {
    async fn table_load(&self, task_arn: &str, schema: &str, table: &str) -> Result<Option<TableLoad>, DmsError> {
        let key = (task_arn.to_string(), schema.to_string(), table.to_string());
        if let Some((at, answer)) = self.answers().get(&key) {
            if at.elapsed() < self.ttl {
                return Ok(answer.clone());
            }
        }
        let answer = self.inner.table_load(task_arn, schema, table).await?;
        self.answers().insert(key, (std::time::Instant::now(), answer.clone()));
        Ok(answer)
    }
}

/// The end of the instant an anchor stands for (its digits name a tick of 1/100 s or finer:
/// every change at or before the anchor was made before this).
pub fn anchor_time(anchor: &Anchor) -> Option<DateTime<Utc>> {
    let digits = anchor.as_str().get(2..)?.trim_end_matches(';');
    if digits.len() < 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let civil = NaiveDateTime::parse_from_str(&digits[..14], "%Y%m%d%H%M%S").ok()?;
    // `1S` anchors carry 35 digits of AR_H_CHANGE_SEQ, whose time part is the first 16
    // (hundredths); `1F` anchors carry 18 digits of a file name's time (1/10000 s).
    let frac = if anchor.as_str().starts_with("1S") {
        &digits[14..16]
    } else {
        &digits[14..digits.len().min(18)]
    };
    let unit = 10i64.pow(6 - frac.len() as u32);
    let micros = frac.parse::<i64>().ok()? * unit;
    Some(Utc.from_utc_datetime(&civil) + Duration::microseconds(micros + unit))
}

/// Whether `load` shows that the load of the generation anchored at `anchor` is over: DMS
/// reports the table completed, by a load that began after the anchor.
pub fn completes(load: &TableLoad, anchor: &Anchor) -> bool {
    let (Some(after), Some(start), Some(end)) = (anchor_time(anchor), load.full_load_start, load.full_load_end) else {
        return false;
    };
    load.state.eq_ignore_ascii_case(TABLE_COMPLETED) && start > after && end >= start
}

/// The source's replication task, if configured.
pub fn task_of<'a>(config: &'a Validated, spec: &TableSpec) -> Option<&'a str> {
    config
        .sources()
        .iter()
        .find(|s| s.name == spec.source)
        .and_then(|s| s.dms_task_arn.as_deref())
}

/// The highest reload anchor among `markers` (above `settled`, which other rules already
/// reached) whose load DMS reports completed, asking DMS once. Errors are logged and answer
/// `None`: the other rules still apply.
pub async fn settled_reload(
    progress: &dyn LoadProgress,
    config: &Validated,
    spec: &TableSpec,
    markers: &[(FloorKind, Anchor, object_store::ObjectMeta)],
    settled: Option<&Anchor>,
) -> Option<Anchor> {
    let task = task_of(config, spec)?;
    let open: Vec<&Anchor> = markers
        .iter()
        .filter(|(k, a, _)| *k == FloorKind::Reload && settled.is_none_or(|s| a > s))
        .map(|(_, a, _)| a)
        .collect();
    if open.is_empty() {
        return None;
    }
    let name = spec.qualified_name();
    let load = match progress.table_load(task, &spec.schema, &spec.table).await {
        Ok(Some(load)) => load,
        Ok(None) => {
            tracing::warn!(stage = "commit", table = %name, task = %task, source_table = %format!("{}.{}", spec.schema, spec.table), "DMS lists no statistics for this table in the configured task: check sources[].dms_task_arn; the reload settles by the other rules");
            return None;
        }
        Err(e) => {
            tracing::warn!(stage = "commit", table = %name, throttled = e.throttled, error = %e, "DMS table statistics unavailable; the reload settles by the other rules");
            return None;
        }
    };
    let done = open.into_iter().filter(|a| completes(&load, a)).max().cloned();
    match &done {
        Some(a) => {
            tracing::info!(stage = "commit", table = %name, anchor = %a.as_str(), state = %load.state, full_load_start = ?load.full_load_start, full_load_end = ?load.full_load_end, reloaded = ?load.reloaded, "DMS reports the reload's load completed")
        }
        None => {
            tracing::info!(stage = "commit", table = %name, state = %load.state, full_load_start = ?load.full_load_start, full_load_end = ?load.full_load_end, "DMS does not (yet) report the reload's load completed")
        }
    }
    done
}

/// `detail-type` of DMS's replication task events.
pub const TASK_STATE_CHANGE: &str = "DMS Replication Task State Change";

/// A `DMS Replication Task State Change` event (EventBridge, source `aws.dms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStateChange {
    /// The task's ARN (the event's `resources`).
    pub task_arn: Option<String>,
    /// `detail.eventType`, e.g. `REPLICATION_TASK_STOPPED`.
    pub event_type: String,
    /// `detail.eventId`, e.g. `DMS-EVENT-0079`.
    pub event_id: Option<String>,
    /// `detail.detailMessage`.
    pub message: Option<String>,
    /// The stop reason named in the message (`Stop Reason FULL_LOAD_ONLY_FINISHED`), if any.
    /// Only logged: the message's wording is not a documented interface.
    pub stop_reason: Option<String>,
    pub time: Option<String>,
}

/// A DMS task state change event that lacks the fields every such event has.
#[derive(Debug, thiserror::Error)]
#[error("a DMS task state change event without the usual fields: {source}")]
pub struct BadTaskEvent {
    #[source]
    source: serde_json::Error,
}

/// What DMS's task events mean here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEventKind {
    Started,
    Stopped,
    Failed,
    Other,
}

impl TaskStateChange {
    /// The event, if `payload` is one; `Err` for a DMS task event without the fields every
    /// such event has.
    pub fn from_event(payload: &Value) -> Option<Result<TaskStateChange, BadTaskEvent>> {
        if payload.get("source").and_then(Value::as_str) != Some("aws.dms")
            || payload.get("detail-type").and_then(Value::as_str) != Some(TASK_STATE_CHANGE)
        {
            return None;
        }
        #[derive(Deserialize)]
        struct Event {
            #[serde(default)]
            resources: Vec<String>,
            #[serde(default)]
            time: Option<String>,
            detail: Detail,
        }
        #[derive(Deserialize)]
        struct Detail {
            #[serde(rename = "eventType")]
            event_type: String,
            #[serde(rename = "eventId", default)]
            event_id: Option<String>,
            #[serde(rename = "detailMessage", default)]
            detail_message: Option<String>,
        }
        Some(
            serde_json::from_value::<Event>(payload.clone())
                .map_err(|source| BadTaskEvent { source })
                .map(|e| {
                    let stop_reason = e.detail.detail_message.as_deref().and_then(|m| {
                        let (_, rest) = m.split_once("Stop Reason")?;
                        let reason: String = rest
                            .trim_start_matches([' ', ':'])
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        (!reason.is_empty()).then_some(reason)
                    });
                    TaskStateChange {
                        task_arn: e.resources.into_iter().find(|r| r.contains(":dms:")),
                        event_type: e.detail.event_type,
                        event_id: e.detail.event_id,
                        message: e.detail.detail_message,
                        stop_reason,
                        time: e.time,
                    }
                }),
        )
    }

    pub fn kind(&self) -> TaskEventKind {
        match self.event_type.as_str() {
            "REPLICATION_TASK_STARTED" => TaskEventKind::Started,
            "REPLICATION_TASK_STOPPED" => TaskEventKind::Stopped,
            "REPLICATION_TASK_FAILED" => TaskEventKind::Failed,
            _ => TaskEventKind::Other,
        }
    }

    /// The configured sources the task writes (by `dms_task_arn`).
    pub fn sources<'a>(&self, config: &'a Validated) -> Vec<&'a str> {
        let Some(arn) = &self.task_arn else {
            return Vec::new();
        };
        config
            .sources()
            .iter()
            .filter(|s| s.dms_task_arn.as_deref() == Some(arn.as_str()))
            .map(|s| s.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::SeqKind;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn load(state: &str, start: &str, end: Option<&str>) -> TableLoad {
        TableLoad {
            state: state.into(),
            full_load_start: Some(at(start)),
            full_load_end: end.map(at),
            reloaded: Some(true),
        }
    }

    #[test]
    fn an_anchor_stands_for_the_end_of_its_tick() {
        let f = Anchor::after(SeqKind::FileName, "202405281005000000").unwrap();
        assert_eq!(anchor_time(&f), Some(at("2024-05-28T10:05:00.0001Z")));
        let s = Anchor::after(SeqKind::ChangeSeq, "20240528100500120000000000000000061").unwrap();
        assert_eq!(anchor_time(&s), Some(at("2024-05-28T10:05:00.13Z")));
        let short = Anchor::after(SeqKind::ChangeSeq, "2024052810050012").unwrap();
        assert_eq!(anchor_time(&short), Some(at("2024-05-28T10:05:00.13Z")));
    }

    #[test]
    fn only_a_completed_load_that_began_after_the_anchor_settles_a_reload() {
        // The last CDC file before the reload was named at 10:05.
        let a = Anchor::after(SeqKind::FileName, "202405281005000000").unwrap();
        let done = load(TABLE_COMPLETED, "2024-05-28T10:59:00Z", Some("2024-05-28T11:00:30Z"));
        assert!(completes(&done, &a));
        // State names are matched without regard to case.
        assert!(completes(
            &TableLoad {
                state: "TABLE COMPLETED".into(),
                ..done.clone()
            },
            &a
        ));
        // The first load (began before the anchor) says nothing about the reload.
        assert!(!completes(
            &load(TABLE_COMPLETED, "2024-05-28T09:59:00Z", Some("2024-05-28T10:00:00Z")),
            &a
        ));
        // A load that began in the anchor's own tick is not after it.
        assert!(!completes(
            &load(
                TABLE_COMPLETED,
                "2024-05-28T10:05:00.0001Z",
                Some("2024-05-28T11:00:00Z")
            ),
            &a
        ));
        // Still loading, or not loaded successfully.
        for state in [
            "Full load",
            "Before load",
            "Table is being reloaded",
            "Table error",
            "Table cancelled",
        ] {
            assert!(!completes(
                &load(state, "2024-05-28T10:59:00Z", Some("2024-05-28T11:00:30Z")),
                &a
            ));
        }
        // Completed without an end time, or an end before the start: not evidence.
        assert!(!completes(&load(TABLE_COMPLETED, "2024-05-28T10:59:00Z", None), &a));
        assert!(!completes(
            &load(TABLE_COMPLETED, "2024-05-28T10:59:00Z", Some("2024-05-28T10:58:00Z")),
            &a
        ));
        assert!(!completes(
            &TableLoad {
                state: TABLE_COMPLETED.into(),
                ..Default::default()
            },
            &a
        ));
    }

    fn sample(name: &str) -> Value {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../events")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    #[test]
    fn task_state_change_events_parse_from_the_samples() {
        let failed = TaskStateChange::from_event(&sample("dms-task-failed.json"))
            .unwrap()
            .unwrap();
        assert_eq!(failed.kind(), TaskEventKind::Failed);
        assert_eq!(
            failed.task_arn.as_deref(),
            Some("arn:aws:dms:us-east-1:123456789012:task:F8TBR5IJGVM78ZQYCR60BO87AF")
        );
        assert_eq!(failed.stop_reason, None);

        let stopped = TaskStateChange::from_event(&sample("dms-task-stopped.json"))
            .unwrap()
            .unwrap();
        assert_eq!(stopped.kind(), TaskEventKind::Stopped);
        assert_eq!(stopped.event_id.as_deref(), Some("DMS-EVENT-0079"));
        assert_eq!(stopped.stop_reason.as_deref(), Some("FULL_LOAD_ONLY_FINISHED"));
        assert_eq!(stopped.task_arn, failed.task_arn);

        let started = TaskStateChange::from_event(&sample("dms-task-started.json"))
            .unwrap()
            .unwrap();
        assert_eq!(started.kind(), TaskEventKind::Started);

        // Not DMS task events.
        assert!(TaskStateChange::from_event(&sample("reprocess-schedule.json")).is_none());
        assert!(TaskStateChange::from_event(&sample("eventbridge-object-created.json")).is_none());
        let mut instance = sample("dms-task-stopped.json");
        instance["detail-type"] = "DMS Replication Instance State Change".into();
        assert!(TaskStateChange::from_event(&instance).is_none());
        // A task event without its detail is an error, not something else.
        let mut broken = sample("dms-task-stopped.json");
        broken["detail"] = serde_json::json!({});
        let e = TaskStateChange::from_event(&broken).unwrap().unwrap_err();
        assert!(
            std::error::Error::source(&e).is_some_and(|s| s.is::<serde_json::Error>()),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("a DMS task state change event without the usual fields: missing field"),
            "{e}"
        );
    }

    #[test]
    fn a_task_event_names_the_sources_configured_with_its_task() {
        let config = crate::config::Config::from_text(
            r#"
lake: /tmp/lake
staging: /tmp/staging
quarantine: /tmp/quarantine
sources:
  - name: shop
    bucket: dms
    dms_task_arn: arn:aws:dms:us-east-1:123456789012:task:F8TBR5IJGVM78ZQYCR60BO87AF
  - name: other
    bucket: dms2
    dms_task_arn: arn:aws:dms:us-east-1:123456789012:task:OTHERTASK
  - name: plain
    bucket: dms3
"#,
        )
        .unwrap();
        let stopped = TaskStateChange::from_event(&sample("dms-task-stopped.json"))
            .unwrap()
            .unwrap();
        assert_eq!(stopped.sources(&config), vec!["shop"]);
        let unknown = TaskStateChange {
            task_arn: Some("arn:aws:dms:us-east-1:123456789012:task:NOPE".into()),
            ..stopped.clone()
        };
        assert!(unknown.sources(&config).is_empty());
        let none = TaskStateChange {
            task_arn: None,
            ..stopped
        };
        assert!(none.sources(&config).is_empty());
    }

    /// Answers from a script, counting the questions.
    #[derive(Debug)]
    struct Scripted {
        answer: Result<Option<TableLoad>, &'static str>,
        asked: std::sync::Mutex<Vec<(String, String, String)>>,
    }

    #[async_trait]
    impl LoadProgress for Scripted {
        async fn table_load(&self, task: &str, schema: &str, table: &str) -> Result<Option<TableLoad>, DmsError> {
            self.asked
                .lock()
                .unwrap()
                .push((task.into(), schema.into(), table.into()));
            self.answer.clone().map_err(|r| DmsError {
                operation: "DescribeTableStatistics",
                task: task.into(),
                reason: r.into(),
                throttled: r.contains("Throttl"),
            })
        }
    }

    const TASK: &str = "arn:aws:dms:us-east-1:123456789012:task:F8TBR5IJGVM78ZQYCR60BO87AF";

    #[tokio::test]
    async fn a_warm_function_asks_dms_once_per_table_while_the_answer_is_fresh() {
        let waiting = Some(load("Full load", "2024-05-28T11:00:00Z", None));
        let remembered = Remembered::new(
            Scripted {
                answer: Ok(waiting.clone()),
                asked: Default::default(),
            },
            std::time::Duration::from_secs(3600),
        );
        for _ in 0..5 {
            assert_eq!(remembered.table_load(TASK, "app", "t").await.unwrap(), waiting);
        }
        assert_eq!(remembered.table_load(TASK, "app", "u").await.unwrap(), waiting);
        // One question per table, however many commits asked.
        let asked = remembered.inner.asked.lock().unwrap().clone();
        assert_eq!(asked.len(), 2, "{asked:?}");

        // Past its time an answer is asked again; errors are never remembered.
        let stale = Remembered::new(
            Scripted {
                answer: Ok(waiting.clone()),
                asked: Default::default(),
            },
            std::time::Duration::ZERO,
        );
        stale.table_load(TASK, "app", "t").await.unwrap();
        stale.table_load(TASK, "app", "t").await.unwrap();
        assert_eq!(stale.inner.asked.lock().unwrap().len(), 2);
        let failing = Remembered::new(
            Scripted {
                answer: Err("ThrottlingException: Rate exceeded"),
                asked: Default::default(),
            },
            std::time::Duration::from_secs(3600),
        );
        assert!(failing.table_load(TASK, "app", "t").await.is_err());
        assert!(failing.table_load(TASK, "app", "t").await.is_err());
        assert_eq!(failing.inner.asked.lock().unwrap().len(), 2);
    }

    fn settings(task: bool) -> (Validated, TableSpec) {
        let arn = if task {
            format!("    dms_task_arn: {TASK}\n")
        } else {
            String::new()
        };
        let config = crate::config::Config::from_text(&format!(
            "lake: /tmp/lake\nstaging: /tmp/staging\nquarantine: /tmp/quarantine\nsources:\n  - name: shop\n    bucket: dms\n{arn}    tables:\n      - {{ schema: app, table: t, keys: [id] }}\n"
        ))
        .unwrap();
        let spec = config.table(0, "app", "t").unwrap().unwrap();
        (config, spec)
    }

    fn marker(kind: FloorKind, digits: &str) -> (FloorKind, Anchor, object_store::ObjectMeta) {
        let a = Anchor::after(SeqKind::FileName, digits).unwrap();
        let meta = object_store::ObjectMeta {
            location: object_store::path::Path::from(a.marker_name(kind)),
            last_modified: Utc::now(),
            size: 2,
            e_tag: None,
            version: None,
        };
        (kind, a, meta)
    }

    #[tokio::test]
    async fn dms_settles_the_reloads_whose_load_it_reports_completed_and_nothing_else() {
        let (config, spec) = settings(true);
        // Two reloads: anchored at 10:05 and at 12:05. DMS reports a load that began at 11:00.
        let markers = vec![
            marker(FloorKind::Reload, "202405281005000000"),
            marker(FloorKind::Reload, "202405281205000000"),
            marker(FloorKind::Truncate, "202405281300000000"),
        ];
        let completed = |start: &str| Scripted {
            answer: Ok(Some(load(TABLE_COMPLETED, start, Some("2024-05-28T12:30:00Z")))),
            asked: Default::default(),
        };
        let p = completed("2024-05-28T11:00:00Z");
        let got = settled_reload(&p, &config, &spec, &markers, None).await;
        // The first reload only: the second began after the load DMS reports. The truncate
        // marker is never DMS's business.
        assert_eq!(got, Some(markers[0].1.clone()));
        assert_eq!(
            p.asked.lock().unwrap().clone(),
            vec![(TASK.to_string(), "app".to_string(), "t".to_string())]
        );
        // A load that began after both anchors settles both (the higher wins).
        let p = completed("2024-05-28T12:10:00Z");
        let got = settled_reload(&p, &config, &spec, &markers, None).await;
        assert_eq!(got, Some(markers[1].1.clone()));
        // Completion from before the reload's anchor (the first load) settles nothing.
        let p = completed("2024-05-28T09:00:00Z");
        assert_eq!(settled_reload(&p, &config, &spec, &markers, None).await, None);
        // Reloads already settled by the other rules are not asked about again.
        let p = completed("2024-05-28T12:10:00Z");
        assert_eq!(
            settled_reload(&p, &config, &spec, &markers, Some(&markers[1].1)).await,
            None
        );
        assert!(p.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn without_a_usable_answer_the_other_rules_decide() {
        let markers = vec![marker(FloorKind::Reload, "202405281005000000")];
        let (config, spec) = settings(true);
        for answer in [
            Err("ThrottlingException: Rate exceeded"),
            Err("AccessDeniedException: not authorized"),
            Ok(None),
            Ok(Some(load("Full load", "2024-05-28T11:00:00Z", None))),
        ] {
            let p = Scripted {
                answer,
                asked: Default::default(),
            };
            assert_eq!(settled_reload(&p, &config, &spec, &markers, None).await, None);
            assert_eq!(p.asked.lock().unwrap().len(), 1);
        }
        // A source without dms_task_arn never asks.
        let (config, spec) = settings(false);
        let p = Scripted {
            answer: Ok(Some(load(
                TABLE_COMPLETED,
                "2024-05-28T11:00:00Z",
                Some("2024-05-28T11:30:00Z"),
            ))),
            asked: Default::default(),
        };
        assert_eq!(settled_reload(&p, &config, &spec, &markers, None).await, None);
        assert!(p.asked.lock().unwrap().is_empty());
    }
}
