//! Delta log events -> maintenance of the tables they belong to.

use std::sync::Arc;

use dms2delta::config::Validated;
use dms2delta::deadline::Deadline;
use dms2delta::events::ObjectEventKind;
use dms2delta::metrics::{Emf, Unit};
use dms2delta::operations::compact::{table_of_log_key, CompactBuilder, CompactMetrics};
use dms2delta::storage::{Location, Stores};
use dms2delta_lambda::{ByTable, Invocation, Table};
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

/// Each table named by the batch is looked at once, with the newest version seen as the hint.
/// Compaction failures fail their messages (the queue retries); they never touch ingestion.
pub async fn handle(state: &State, input: impl Into<Invocation>) -> Result<Value, dms2delta_lambda::Error> {
    handle_until(state, input.into(), Deadline::NONE).await
}

/// [`handle`] with the invocation's deadline. Maintenance is not gated by it: a table's
/// compaction is bounded by its own settings, and one cut off by Lambda is taken up again from
/// the next log event (its lease expires).
pub async fn handle_until(
    state: &State,
    input: Invocation,
    deadline: Deadline,
) -> Result<Value, dms2delta_lambda::Error> {
    let (bucket, prefix) = match &state.config.lake {
        Location::S3 { bucket, prefix } => (bucket.as_str(), prefix.as_str()),
        _ => return Err("the compact function needs an s3:// lake".into()),
    };
    let work = ByTable::group("compact", input.payload()?, |o| {
        if o.kind != ObjectEventKind::Created || o.bucket != bucket {
            return None;
        }
        let (ns, s, t, version) = table_of_log_key(prefix, &o.key)?;
        Some((Table::new(ns, s, t), version))
    });
    work.run(deadline, None, |table, hints| compact(state, table, hints))
        .await
        .respond("compaction", |m| {
            json!({"table": m.table, "due": m.due, "files_in": m.files_in, "files_out": m.files_out,
                "files_purged": m.files_purged, "checkpoint": m.checkpoint_written, "vacuumed": m.files_vacuumed, "tombstones_dropped": m.tombstones_dropped})
        })
}

/// One table's maintenance, given the log versions the events named.
async fn compact(state: &State, table: Table, hints: Vec<u64>) -> Result<CompactMetrics, String> {
    let namespace = &state.config.config.metrics.namespace;
    let res = CompactBuilder::new(state.config.clone(), &state.stores)
        .with_table(&table.namespace, &table.schema, &table.table)
        .with_version_hints(hints)
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
            tracing::error!(stage = "compact", table = %table, error = %e, "compaction failed");
            Emf::new(namespace, "compact")
                .with_table(table.to_string())
                .metric("Errors", Unit::Count, 1.0)
                .emit();
        }
    }
    res.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
