//! Delta log events -> maintenance of the tables they belong to.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse};
use dms2delta::config::Validated;
use dms2delta::events::{parse, ObjectEventKind, Payload};
use dms2delta::metrics::{Emf, Unit};
use dms2delta::operations::compact::{table_of_log_key, CompactBuilder, CompactMetrics};
use dms2delta::storage::{Location, Stores};
use serde_json::{json, Value};

/// What lives for the whole execution environment.
#[derive(Debug)]
pub struct State {
    pub config: Arc<Validated>,
    pub stores: Stores,
}

impl State {
    pub fn new(config: Arc<Validated>) -> State {
        let stores = Stores::new(config.config.storage.clone());
        State { config, stores }
    }
}

type TableId = (String, String, String);

/// Each table named by the batch is looked at once, with the newest version seen as the hint.
/// Compaction failures fail their messages (the queue retries); they never touch ingestion.
pub async fn handle(state: &State, payload: Value) -> Result<Value, lambda_runtime::Error> {
    let (bucket, prefix) = match &state.config.lake {
        Location::S3 { bucket, prefix } => (bucket.clone(), prefix.clone()),
        _ => return Err("the compact function needs an s3:// lake".into()),
    };
    let parsed = parse(&payload)?;
    let deliveries = match &parsed {
        Payload::Sqs(d) => d.iter().collect::<Vec<_>>(),
        Payload::Direct(d) => vec![d],
    };
    let mut tables: BTreeMap<TableId, (Vec<u64>, Option<Result<CompactMetrics, String>>)> = BTreeMap::new();
    let mut needs: Vec<(Option<String>, Result<Vec<TableId>, String>)> = Vec::new();
    for d in &deliveries {
        let ids = d.objects.as_ref().map_err(|e| e.to_string()).map(|objects| {
            objects
                .iter()
                .filter(|o| o.kind == ObjectEventKind::Created && o.bucket == bucket)
                .filter_map(|o| table_of_log_key(&prefix, &o.key))
                .map(|(ns, s, t, v)| {
                    let e = tables
                        .entry((ns.clone(), s.clone(), t.clone()))
                        .or_insert((Vec::new(), None));
                    e.0.push(v);
                    (ns, s, t)
                })
                .collect()
        });
        needs.push((d.message_id.clone(), ids));
    }
    let namespace = &state.config.config.metrics.namespace;
    for ((ns, s, t), (hints, slot)) in tables.iter_mut() {
        let res = CompactBuilder::new(state.config.clone(), &state.stores)
            .with_table(ns, s, t)
            .with_version_hints(hints.iter().copied())
            .await;
        match &res {
            Ok(m) if !m.due.is_empty() => {
                tracing::info!(stage = "compact", table = %m.table, due = ?m.due, files_in = m.files_in, files_out = m.files_out,
                    files_purged = m.files_purged, rows_purged = m.rows_purged, checkpoint = m.checkpoint_written, vacuumed = m.files_vacuumed, tombstones_dropped = m.tombstones_dropped,
                    yielded = m.yielded, duration_ms = m.duration_ms, "table maintained");
                Emf::new(namespace, "compact")
                    .with_table(&m.table)
                    .metric("FilesIn", Unit::Count, m.files_in as f64)
                    .metric("FilesOut", Unit::Count, m.files_out as f64)
                    .metric("BytesRewritten", Unit::Bytes, m.bytes_rewritten as f64)
                    .metric("FilesPurged", Unit::Count, m.files_purged as f64)
                    .metric("RowsPurged", Unit::Count, m.rows_purged as f64)
                    .metric("CheckpointsWritten", Unit::Count, u8::from(m.checkpoint_written) as f64)
                    .metric("FilesVacuumed", Unit::Count, m.files_vacuumed as f64)
                    .metric("TombstonesDropped", Unit::Count, m.tombstones_dropped as f64)
                    .metric("DurationMs", Unit::Milliseconds, m.duration_ms as f64)
                    .emit();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(stage = "compact", table = %format!("{ns}.{s}.{t}"), error = %e, "compaction failed");
                Emf::new(namespace, "compact")
                    .with_table(format!("{ns}.{s}.{t}"))
                    .metric("Errors", Unit::Count, 1.0)
                    .emit();
            }
        }
        *slot = Some(res.map_err(|e| e.to_string()));
    }
    let failed = |ids: &Result<Vec<TableId>, String>| match ids {
        Err(_) => true,
        Ok(ids) => ids.iter().any(|id| matches!(tables.get(id), Some((_, Some(Err(_)))))),
    };
    match parsed {
        Payload::Sqs(_) => {
            let mut response = SqsBatchResponse::default();
            for (mid, ids) in &needs {
                if failed(ids) {
                    let mut f = BatchItemFailure::default();
                    f.item_identifier = mid.clone().unwrap_or_default();
                    response.batch_item_failures.push(f);
                }
            }
            Ok(serde_json::to_value(response)?)
        }
        Payload::Direct(_) => {
            let summary: Vec<Value> = tables
                .iter()
                .map(|((ns, s, t), (_, r))| match r {
                    Some(Ok(m)) => json!({"table": m.table, "due": m.due, "files_in": m.files_in, "files_out": m.files_out,
                        "files_purged": m.files_purged, "checkpoint": m.checkpoint_written, "vacuumed": m.files_vacuumed, "tombstones_dropped": m.tombstones_dropped}),
                    Some(Err(e)) => json!({"table": format!("{ns}.{s}.{t}"), "error": e}),
                    None => json!({}),
                })
                .collect();
            if needs.iter().any(|(_, ids)| failed(ids)) {
                Err(format!("compaction failed: {}", Value::Array(summary)).into())
            } else {
                Ok(json!({ "tables": summary }))
            }
        }
    }
}

#[cfg(test)]
mod tests;
