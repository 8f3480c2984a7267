//! Staged change set events -> one commit per table named in them.

use std::sync::Arc;

use dms2delta::catalog::{CatalogError, CatalogSync};
use dms2delta::config::Validated;
use dms2delta::deadline::{Deadline, COMMIT_RESERVE};
use dms2delta::dms::LoadProgress;
use dms2delta::events::{ObjectEvent, ObjectEventKind};
use dms2delta::metrics::{CommitReport, Emf, Unit};
use dms2delta::operations::commit::{CommitChangesBuilder, CommitMetrics};
use dms2delta::stage::parse_change_set_path;
use dms2delta::storage::{object_path, Location, Stores};
use dms2delta_lambda::{ByTable, Invocation, Table};
use serde_json::Value;

/// What lives for the whole execution environment.
#[derive(Debug)]
pub struct State {
    pub config: Arc<Validated>,
    pub stores: Stores,
    /// Where tables are registered for Athena, when a catalog database is configured.
    pub catalog: Option<CatalogSync>,
    /// DMS's table statistics, when a source names its replication task (`dms_task_arn`).
    pub load_progress: Option<Arc<dyn LoadProgress>>,
}

impl State {
    pub fn new(config: Arc<Validated>) -> State {
        let stores = Stores::new(config.config.storage.clone());
        State {
            config,
            stores,
            catalog: None,
            load_progress: None,
        }
    }

    pub fn with_load_progress(mut self, progress: Arc<dyn LoadProgress>) -> State {
        self.load_progress = Some(progress);
        self
    }

    pub fn with_catalog(mut self, catalog: CatalogSync) -> State {
        self.catalog = Some(catalog);
        self
    }
}

/// The table a staged object belongs to, or `None` for anything else.
fn table_of(state: &State, o: &ObjectEvent) -> Option<Table> {
    if o.kind != ObjectEventKind::Created {
        return None;
    }
    let (bucket, root) = match &state.config.staging {
        Location::S3 { bucket, prefix } => (bucket.as_str(), prefix.as_str()),
        _ => return None,
    };
    if o.bucket != bucket {
        return None;
    }
    let path = object_path(&o.key).ok()?;
    let (table, _) = parse_change_set_path(&object_store::path::Path::parse(root).ok()?, &path)?;
    Some(table)
}

/// Handles one invocation: every table named by the events is committed once, whatever the
/// number of its change sets in the batch (group commit). An SQS message fails when the commit
/// of its table failed, so the queue retries it; nothing is dropped.
pub async fn handle(state: &State, input: impl Into<Invocation>) -> Result<Value, dms2delta_lambda::Error> {
    handle_until(state, input.into(), Deadline::NONE).await
}

/// [`handle`] within the invocation's `deadline`: after the first table, a table whose commit
/// may not finish in the time left ([`COMMIT_RESERVE`]) is not started, and the messages that
/// need it are returned as batch item failures for the queue to deliver again; the tables
/// committed so far stand.
pub async fn handle_until(
    state: &State,
    input: Invocation,
    deadline: Deadline,
) -> Result<Value, dms2delta_lambda::Error> {
    let work = ByTable::group("commit", input.payload()?, |o| table_of(state, o).map(|t| (t, ())));
    let ran = work
        .run(deadline, Some(COMMIT_RESERVE), |table, _| commit(state, table))
        .await;
    let namespace = &state.config.config.metrics.namespace;
    for table in ran.deferred() {
        tracing::warn!(stage = "commit", table = %table, left_ms = deadline.remaining().unwrap_or_default().as_millis() as u64, "too close to the deadline; left for the queue to deliver again");
        Emf::new(namespace, "commit")
            .with_table(table.to_string())
            .metric("Deferred", Unit::Count, 1.0)
            .emit();
    }
    ran.respond("commit")
}

/// Why a table's messages are failed back to the queue.
#[derive(Debug, thiserror::Error)]
enum TableFailed {
    #[error("{0}")]
    Commit(#[source] dms2delta::Error),
    /// The commit landed; registering it in the catalog failed in a way a retry may fix.
    #[error("{0}")]
    Catalog(#[source] CatalogError),
}

/// One table's commit, then its catalog entry.
async fn commit(state: &State, table: Table) -> Result<CommitReport, TableFailed> {
    let namespace = &state.config.config.metrics.namespace;
    let res = CommitChangesBuilder::new(state.config.clone(), &state.stores)
        .with_table(&table.namespace, &table.schema, &table.table)
        .with_load_progress(state.load_progress.clone())
        .await;
    let m = match res {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(stage = "commit", table = %table, retryable = e.is_retryable(), error = %e, "commit failed");
            Emf::new(namespace, "commit")
                .with_table(table.to_string())
                .metric("Errors", Unit::Count, 1.0)
                .emit();
            return Err(TableFailed::Commit(e));
        }
    };
    let report = CommitReport::from(&m);
    report.log("committed");
    report.emf(namespace).emit();
    if let Some(catalog) = &state.catalog {
        follow_in_catalog(state, catalog, &table, &m)
            .await
            .map_err(TableFailed::Catalog)?;
    }
    Ok(report)
}

/// Registers the table or its new schema. The commit has landed whatever happens here; a
/// failure a retry can fix fails the table's messages so the queue brings them back (the next
/// commit, even an empty one, syncs again), and one it cannot fix is logged and counted
/// (`CatalogErrors`, alarmed) without holding up replication.
async fn follow_in_catalog(
    state: &State,
    catalog: &CatalogSync,
    table: &Table,
    m: &CommitMetrics,
) -> Result<(), CatalogError> {
    let namespace = &state.config.config.metrics.namespace;
    match catalog.follow(&state.config, table, m).await {
        Ok(Some(change)) => {
            tracing::info!(stage = "commit", table = %m.table, database = catalog.database(), change = %change, "catalog in step");
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            tracing::error!(stage = "commit", table = %m.table, database = catalog.database(), retryable = e.is_retryable(), error = %e, "catalog registration failed");
            Emf::new(namespace, "commit")
                .with_table(&m.table)
                .metric("CatalogErrors", Unit::Count, 1.0)
                .emit();
            if e.is_retryable() {
                Err(e)
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests;
