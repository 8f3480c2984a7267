//! Delta log events -> maintenance of the tables they belong to.

use std::sync::Arc;

use dms2delta::config::Validated;
use dms2delta::deadline::Deadline;
use dms2delta::events::ObjectEventKind;
use dms2delta::metrics::{CompactReport, Emf, Unit};
use dms2delta::operations::compact::{table_of_log_key, CompactBuilder};
use dms2delta::storage::{Location, Stores};
use dms2delta_lambda::{ByTable, Invocation, Table};
use serde_json::Value;

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
        .respond("compaction")
}

/// One table's maintenance, given the log versions the events named.
async fn compact(state: &State, table: Table, hints: Vec<u64>) -> Result<CompactReport, dms2delta::Error> {
    let namespace = &state.config.config.metrics.namespace;
    let res = CompactBuilder::new(state.config.clone(), &state.stores)
        .with_table(&table.namespace, &table.schema, &table.table)
        .with_version_hints(hints)
        .await;
    match res {
        Ok(m) => {
            let report = CompactReport::from(&m);
            // A table with nothing due is neither logged nor counted: most log events are.
            if !report.due.is_empty() {
                report.log("table maintained");
                report.emf(namespace).emit();
            }
            Ok(report)
        }
        Err(e) => {
            tracing::error!(stage = "compact", table = %table, error = %e, "compaction failed");
            Emf::new(namespace, "compact")
                .with_table(table.to_string())
                .metric("Errors", Unit::Count, 1.0)
                .emit();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests;
