//! Turns a Lambda payload into decode operations and reports per-message outcomes.

use std::path::PathBuf;
use std::sync::Arc;

use dms2delta::config::Validated;
use dms2delta::deadline::Deadline;
use dms2delta::events::{Delivery, ObjectEvent, ObjectEventKind, Payload};
use dms2delta::metrics::{DecodeReport, Emf, Unit};
use dms2delta::operations::decode::{DecodeBuilder, DecodeOutcome};
use dms2delta::operations::truncate::{RemovalBuilder, RemovalOutcome};
use dms2delta::storage::Stores;
use dms2delta_lambda::{batch_response, Invocation};
use serde_json::{json, Value};

/// What lives for the whole execution environment.
#[derive(Debug)]
pub struct State {
    pub config: Arc<Validated>,
    pub stores: Stores,
    pub spool_dir: Option<PathBuf>,
}

impl State {
    pub fn new(config: Arc<Validated>) -> State {
        let stores = Stores::new(config.config.storage.clone());
        State {
            config,
            stores,
            spool_dir: None,
        }
    }
}

/// Outcome counts of one delivery.
#[derive(Debug, Default)]
struct Tally {
    staged: Vec<Value>,
    /// Removals taken for a source truncate (a truncate marker staged).
    truncated: Vec<Value>,
    skipped: Vec<Value>,
    quarantined: Vec<Value>,
    failed: Vec<Value>,
}

/// Handles one invocation. SQS batches answer with partial batch failures so one bad message
/// does not fail the others; a direct invocation fails as a whole if any object failed, so
/// Lambda's retry and on-failure destination take over. A quarantined file fails its message
/// too, so that it ends in the dead-letter queue and its alarm calls for a person; reprocess
/// leaves such messages there until the file decodes (after a fix), then removes them.
pub async fn handle(state: &State, input: impl Into<Invocation>) -> Result<Value, dms2delta_lambda::Error> {
    handle_until(state, input.into(), Deadline::NONE).await
}

/// [`handle`] within the invocation's `deadline`: after the first message, a message whose
/// files are not expected to decode in the time left ([`Deadline::decode_time`]) is not started
/// and is returned as a batch item failure, so the queue delivers it again instead of Lambda
/// cutting the whole batch off.
pub async fn handle_until(
    state: &State,
    input: Invocation,
    deadline: Deadline,
) -> Result<Value, dms2delta_lambda::Error> {
    match input.payload()? {
        Payload::Sqs(deliveries) => {
            let mut failed = Vec::new();
            // The first message is always started, so a batch always makes progress whatever
            // the function's timeout; the deadline decides about the others.
            let mut started = false;
            for d in deliveries {
                let id = d.message_id.clone().unwrap_or_default();
                let bytes: u64 = d
                    .objects
                    .as_ref()
                    .map(|o| o.iter().filter_map(|o| o.size).sum())
                    .unwrap_or(0);
                let needed = Deadline::decode_time(bytes);
                if started && !deadline.allows(needed) {
                    tracing::warn!(stage = "decode", message_id = %id, bytes, needed_ms = needed.as_millis() as u64, left_ms = deadline.remaining().unwrap_or_default().as_millis() as u64, "too close to the deadline; left for the queue to deliver again");
                    Emf::new(&state.config.config.metrics.namespace, "decode")
                        .metric("Deferred", Unit::Count, 1.0)
                        .emit();
                    failed.push(id);
                    continue;
                }
                started = true;
                let tally = process(state, d).await;
                if !tally.failed.is_empty() || !tally.quarantined.is_empty() {
                    failed.push(id);
                }
            }
            Ok(serde_json::to_value(batch_response(failed))?)
        }
        Payload::Direct(d) => {
            let tally = process(state, d).await;
            let summary = json!({
                "staged": tally.staged,
                "truncated": tally.truncated,
                "skipped": tally.skipped,
                "quarantined": tally.quarantined,
                "failed": tally.failed,
            });
            if tally.failed.is_empty() && tally.quarantined.is_empty() {
                Ok(summary)
            } else {
                Err(format!("decode failed for some objects: {summary}").into())
            }
        }
    }
}

async fn process(state: &State, delivery: Delivery) -> Tally {
    let mut tally = Tally::default();
    let objects = match delivery.objects {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(stage = "decode", message_id = delivery.message_id.as_deref().unwrap_or(""), error = %e, "unreadable event");
            tally.failed.push(json!({"error": e.to_string()}));
            return tally;
        }
    };
    let namespace = &state.config.config.metrics.namespace;
    for o in objects {
        match o.kind {
            ObjectEventKind::Created => {}
            ObjectEventKind::Removed => {
                removal(state, &o, &mut tally).await;
                continue;
            }
            ObjectEventKind::Expired => {
                // Lifecycle rules expire DMS files routinely: never a sign of a truncate.
                tracing::info!(stage = "decode", bucket = %o.bucket, key = %o.key, "lifecycle expiration; ignored");
                Emf::new(namespace, "decode")
                    .metric("RemovalsIgnored", Unit::Count, 1.0)
                    .emit();
                tally
                    .skipped
                    .push(json!({"key": o.key, "reason": "lifecycle expiration"}));
                continue;
            }
            ObjectEventKind::Other => {
                tracing::info!(stage = "decode", bucket = %o.bucket, key = %o.key, "not an object creation or removal; ignored");
                tally
                    .skipped
                    .push(json!({"key": o.key, "reason": "not an object creation or removal"}));
                continue;
            }
        }
        let mut op = DecodeBuilder::new(state.config.clone(), &state.stores)
            .with_object(&o.bucket, &o.key)
            .with_etag(o.etag.clone())
            .with_size(o.size);
        if let Some(dir) = &state.spool_dir {
            op = op.with_spool_dir(dir);
        }
        match op.await {
            Ok(DecodeOutcome::Staged(m)) => {
                let reports: Vec<DecodeReport> = m.tables.iter().map(|t| DecodeReport::of(&m, t)).collect();
                for r in &reports {
                    r.log("file decoded");
                    r.emf(namespace).emit();
                }
                tally.staged.push(json!({"file": m.file, "tables": reports}));
            }
            Ok(DecodeOutcome::Skipped { reason }) => {
                tracing::info!(stage = "decode", bucket = %o.bucket, key = %o.key, reason = %reason, "skipped");
                Emf::new(namespace, "decode").metric("Skipped", Unit::Count, 1.0).emit();
                tally.skipped.push(json!({"key": o.key, "reason": reason}));
            }
            Ok(DecodeOutcome::Quarantined {
                report,
                report_location,
            }) => {
                let mut emf = Emf::new(namespace, "decode");
                if let Some(t) = &report.table {
                    emf = emf.with_table(t);
                }
                emf.metric("Quarantined", Unit::Count, 1.0).emit();
                tally.quarantined.push(json!({"file": report.file, "kind": report.kind, "reason": report.reason, "report": report_location}));
            }
            Err(e) => {
                tracing::error!(stage = "decode", bucket = %o.bucket, key = %o.key, retryable = e.is_retryable(), error = %e, "decode failed");
                Emf::new(namespace, "decode").metric("Errors", Unit::Count, 1.0).emit();
                tally
                    .failed
                    .push(json!({"key": o.key, "error": e.to_string(), "retryable": e.is_retryable()}));
            }
        }
    }
    tally
}

/// A removal event: a truncate at the source where the table follows removals and its folder
/// is empty of older files; otherwise logged, counted and skipped. A failed listing or marker
/// write fails the message, so the queue delivers it again.
async fn removal(state: &State, o: &ObjectEvent, tally: &mut Tally) {
    let (bucket, key) = (o.bucket.as_str(), o.key.as_str());
    let namespace = &state.config.config.metrics.namespace;
    let op = RemovalBuilder::new(state.config.clone(), &state.stores)
        .with_object(bucket, key)
        .with_event_time(o.time);
    match op.await {
        Ok(RemovalOutcome::Truncate { table, anchor, marker }) => {
            Emf::new(namespace, "decode")
                .with_table(&table)
                .metric("Truncates", Unit::Count, 1.0)
                .emit();
            tally
                .truncated
                .push(json!({"key": key, "table": table, "anchor": anchor, "marker": marker}));
        }
        Ok(RemovalOutcome::Ignored { reason }) => {
            tracing::info!(stage = "decode", bucket = %bucket, key = %key, reason = %reason, "removal ignored");
            Emf::new(namespace, "decode")
                .metric("RemovalsIgnored", Unit::Count, 1.0)
                .emit();
            tally.skipped.push(json!({"key": key, "reason": reason}));
        }
        Err(e) => {
            tracing::error!(stage = "decode", bucket = %bucket, key = %key, retryable = e.is_retryable(), error = %e, "removal failed");
            Emf::new(namespace, "decode").metric("Errors", Unit::Count, 1.0).emit();
            tally
                .failed
                .push(json!({"key": key, "error": e.to_string(), "retryable": e.is_retryable()}));
        }
    }
}

#[cfg(test)]
mod tests;
