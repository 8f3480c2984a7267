//! Turns an alarm, a schedule or a request by hand into one reprocess run: dead letters back to
//! their queues, missed files to decode, quarantined files tried again, waiting change sets
//! committed. Reports what it did and emits it as metrics.

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use dms2delta::config::Validated;
use dms2delta::dms::{LoadProgress, TaskEventKind, TaskStateChange};
use dms2delta::metrics::Unit;
use dms2delta::operations::reprocess::{commit_sources, ReprocessBuilder};
use dms2delta::storage::Stores;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::queues::{redrive, Queues, ToDecodeQueue};
use dms2delta::events::parse_body;
use dms2delta::quarantine::list_reports;
use std::collections::{BTreeSet, HashSet};

/// The environment variables [`Settings::from_env`] reads, beside the common ones.
pub const ENVIRONMENT: &[&str] = &[
    "DECODE_QUEUE_URL",
    "REDRIVE",
    "RECONCILE_HOURS",
    "MAX_FILES",
    "MAX_REDRIVE",
];

/// Settings from the function's environment (see template.yaml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `DECODE_QUEUE_URL`: where missed files are sent. Without it they are decoded in this
    /// invocation.
    pub decode_queue_url: Option<String>,
    /// `REDRIVE`: `dead-letter-url=source-url` pairs, comma separated.
    pub redrive: Vec<(String, String)>,
    /// `RECONCILE_HOURS`: how far back alarm and schedule runs look (default 48).
    pub reconcile_hours: u64,
    /// `MAX_FILES`: files decoded or requeued per run (default 5000; the rest next run).
    pub max_files: usize,
    /// `MAX_REDRIVE`: dead letters moved per queue per run (default 10000).
    pub max_redrive: usize,
}

impl Default for Settings {
    /// What an environment without any of the variables gives.
    fn default() -> Self {
        Settings {
            decode_queue_url: None,
            redrive: Vec::new(),
            reconcile_hours: 48,
            max_files: 5000,
            max_redrive: 10_000,
        }
    }
}

/// An environment variable of the function's that cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
pub enum BadSetting {
    #[error("{name}={value}: expected a positive whole number")]
    NotPositive {
        name: &'static str,
        value: String,
        #[source]
        source: Option<std::num::ParseIntError>,
    },
    #[error("REDRIVE: `{pair}` is not `dead-letter-queue-url=source-queue-url`")]
    RedrivePair { pair: String },
}

impl Settings {
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Settings, BadSetting> {
        let d = Settings::default();
        let number = |name: &'static str, default: u64| -> Result<u64, BadSetting> {
            let Some(value) = get(name) else {
                return Ok(default);
            };
            match value.trim().parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                Ok(_) => Err(BadSetting::NotPositive {
                    name,
                    value,
                    source: None,
                }),
                Err(e) => Err(BadSetting::NotPositive {
                    name,
                    value,
                    source: Some(e),
                }),
            }
        };
        let mut redrive = Vec::new();
        for pair in get("REDRIVE")
            .unwrap_or_default()
            .split(',')
            .filter(|p| !p.trim().is_empty())
        {
            let (dlq, source) = pair
                .split_once('=')
                .ok_or_else(|| BadSetting::RedrivePair { pair: pair.to_string() })?;
            redrive.push((dlq.trim().to_string(), source.trim().to_string()));
        }
        Ok(Settings {
            decode_queue_url: get("DECODE_QUEUE_URL").filter(|u| !u.trim().is_empty()),
            redrive,
            reconcile_hours: number("RECONCILE_HOURS", d.reconcile_hours)?,
            max_files: number("MAX_FILES", d.max_files as u64)? as usize,
            max_redrive: number("MAX_REDRIVE", d.max_redrive as u64)? as usize,
        })
    }
}

/// What lives for the whole execution environment.
pub struct State {
    pub config: Arc<Validated>,
    pub stores: Stores,
    pub queues: Arc<dyn Queues>,
    pub settings: Settings,
    /// DMS's table statistics, when a source names its replication task (`dms_task_arn`).
    pub load_progress: Option<Arc<dyn LoadProgress>>,
}

impl State {
    pub fn new(config: Arc<Validated>, queues: Arc<dyn Queues>, settings: Settings) -> State {
        let stores = Stores::new(config.config.storage.clone());
        State {
            config,
            stores,
            queues,
            settings,
            load_progress: None,
        }
    }

    pub fn with_load_progress(mut self, progress: Arc<dyn LoadProgress>) -> State {
        self.load_progress = Some(progress);
        self
    }
}

/// A run requested by hand: `{"table": …, "since": …, "dry_run": …}`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Only this table (`namespace.schema.table`).
    pub table: Option<String>,
    /// Look for lost events only among files written at or after this time (RFC 3339).
    /// Default: every file. Quarantined files are tried whatever their age.
    pub since: Option<String>,
    /// Report only.
    #[serde(default)]
    pub dry_run: bool,
    /// Move dead letters back (default true).
    pub redrive: Option<bool>,
}

/// Why the function runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A CloudWatch alarm's state change, through SNS.
    Alarm {
        name: String,
        state: String,
    },
    /// The periodic reconcile (EventBridge schedule).
    Schedule,
    Manual(Request),
    /// A DMS replication task changed state (`DMS Replication Task State Change`).
    DmsTask(TaskStateChange),
}

fn bad_event(reason: impl Into<String>) -> dms2delta_lambda::Error {
    dms2delta::error::Error::Event { reason: reason.into() }.into()
}

pub fn trigger(payload: &Value) -> Result<Trigger, dms2delta_lambda::Error> {
    if let Some(records) = payload.get("Records").and_then(Value::as_array) {
        let sns = records
            .iter()
            .find(|r| r.get("EventSource").and_then(Value::as_str) == Some("aws:sns"))
            .ok_or_else(|| bad_event("records that are not SNS notifications: reprocess takes alarms through SNS"))?;
        let message = sns["Sns"]["Message"]
            .as_str()
            .ok_or_else(|| bad_event("an SNS record without a message"))?;
        let alarm: Value = serde_json::from_str(message)
            .map_err(|e| bad_event(format!("the SNS message is not a CloudWatch alarm: {e}")))?;
        let name = alarm["AlarmName"]
            .as_str()
            .ok_or_else(|| bad_event("the SNS message is not a CloudWatch alarm (no AlarmName)"))?;
        return Ok(Trigger::Alarm {
            name: name.to_string(),
            state: alarm["NewStateValue"].as_str().unwrap_or("").to_string(),
        });
    }
    if let Some(event) = TaskStateChange::from_event(payload) {
        return event.map(Trigger::DmsTask).map_err(|e| bad_event(e.to_string()));
    }
    if payload.get("source").and_then(Value::as_str) == Some("aws.events")
        || payload.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
    {
        return Ok(Trigger::Schedule);
    }
    let request: Request = serde_json::from_value(payload.clone()).map_err(|e| {
        bad_event(format!(
            "not an alarm, a schedule or a request `{{\"table\", \"since\", \"dry_run\", \"redrive\"}}`: {e}"
        ))
    })?;
    Ok(Trigger::Manual(request))
}

/// Handles one invocation.
pub async fn handle(state: &State, payload: Value) -> Result<Value, dms2delta_lambda::Error> {
    let trigger = trigger(&payload)?;
    let lookback = Utc::now() - Duration::hours(state.settings.reconcile_hours as i64);
    let (request, since) = match &trigger {
        Trigger::Alarm { name, state: s } if s != "ALARM" => {
            tracing::info!(stage = "reprocess", alarm = %name, state = %s, "alarm left the ALARM state: nothing to do");
            return Ok(json!({"trigger": "alarm", "alarm": name, "state": s, "skipped": true}));
        }
        Trigger::DmsTask(event) => return dms_task_changed(state, event).await,
        Trigger::Alarm { .. } | Trigger::Schedule => (Request::default(), Some(lookback)),
        Trigger::Manual(r) => {
            let since = match &r.since {
                Some(t) => Some(
                    DateTime::parse_from_rfc3339(t)
                        .map_err(|e| bad_event(format!("since `{t}`: not an RFC 3339 time ({e})")))?
                        .with_timezone(&Utc),
                ),
                None => None,
            };
            (r.clone(), since)
        }
    };

    // Quarantined files first: those that decode now lose their report, so their dead letters
    // are redriven below; those still bad keep theirs, and their dead letters stay.
    let to_queue = state.settings.decode_queue_url.as_deref().map(|url| ToDecodeQueue {
        queues: state.queues.as_ref(),
        url,
    });
    let mut builder = ReprocessBuilder::new(state.config.clone(), &state.stores)
        .with_table(request.table.clone())
        .with_since(since)
        .with_dry_run(request.dry_run)
        .with_max_files(state.settings.max_files)
        .with_load_progress(state.load_progress.clone());
    if let Some(q) = &to_queue {
        builder = builder.with_requeue(q);
    }
    let m = builder.await?;

    let mut redriven = Vec::new();
    if request.redrive.unwrap_or(true) && !request.dry_run {
        let still_bad = still_quarantined(state).await?;
        let keep = |body: &str| {
            parse_body(body).is_ok_and(|objects| {
                objects
                    .iter()
                    .any(|o| still_bad.contains(&(o.bucket.clone(), o.key.clone())))
            })
        };
        for (dlq, source) in &state.settings.redrive {
            let r = redrive(state.queues.as_ref(), dlq, source, state.settings.max_redrive, &keep).await?;
            if r.kept > 0 {
                tracing::warn!(stage = "reprocess", queue = %dlq, kept = r.kept, "dead letters left for files still quarantined: fix the cause their reports name");
            }
            redriven.push(json!({"from": dlq, "to": source, "messages": r.moved, "kept": r.kept}));
        }
    }
    let moved: u64 = redriven.iter().filter_map(|r| r["messages"].as_u64()).sum();
    m.log("reprocessed");
    m.emf(&state.config.config.metrics.namespace)
        .metric("DeadLettersRedriven", Unit::Count, moved as f64)
        .emit();
    Ok(json!({
        "trigger": match &trigger {
            Trigger::Alarm { .. } => "alarm",
            Trigger::Schedule => "schedule",
            Trigger::Manual(_) => "manual",
            Trigger::DmsTask(_) => "dms",
        },
        "redriven": redriven,
        "reprocess": m,
    }))
}

/// A DMS task stopped: its sources' waiting tables are committed now, so a reload whose load
/// DMS reports completed settles at once (a full-load task stops when its loads are over).
/// Other state changes need nothing here: failures and stops reach a person through
/// AlarmTopic.
async fn dms_task_changed(state: &State, event: &TaskStateChange) -> Result<Value, dms2delta_lambda::Error> {
    let sources = event.sources(&state.config);
    let base = json!({
        "trigger": "dms",
        "event_type": event.event_type,
        "task": event.task_arn,
        "stop_reason": event.stop_reason,
        "sources": sources,
    });
    if event.kind() != TaskEventKind::Stopped || sources.is_empty() {
        let why = if sources.is_empty() {
            "no configured source names this task in dms_task_arn"
        } else {
            "only a stop calls for a commit"
        };
        tracing::info!(stage = "reprocess", event_type = %event.event_type, task = ?event.task_arn, reason = why, "DMS task event: nothing to do");
        let mut out = base;
        out["skipped"] = json!(why);
        return Ok(out);
    }
    let namespaces: BTreeSet<String> = state
        .config
        .sources()
        .iter()
        .filter(|s| sources.contains(&s.name.as_str()))
        .map(|s| s.namespace.clone().unwrap_or_else(|| s.name.clone()))
        .collect();
    tracing::info!(stage = "reprocess", task = ?event.task_arn, stop_reason = ?event.stop_reason, sources = ?sources, "DMS task stopped: committing its sources' waiting tables");
    let m = commit_sources(
        state.config.clone(),
        &state.stores,
        &namespaces,
        state.load_progress.clone(),
    )
    .await?;
    m.log("reprocessed");
    m.emf(&state.config.config.metrics.namespace).emit();
    let mut out = base;
    out["reprocess"] = serde_json::to_value(&m).unwrap_or(Value::Null);
    Ok(out)
}

/// `(bucket, key)` of every file with a quarantine report.
async fn still_quarantined(state: &State) -> Result<HashSet<(String, String)>, dms2delta_lambda::Error> {
    let (store, root) = state.stores.resolve(&state.config.quarantine)?;
    Ok(list_reports(store.as_ref(), &root)
        .await?
        .into_iter()
        .map(|(_, r)| (r.bucket, r.key))
        .collect())
}

#[cfg(test)]
mod tests;
