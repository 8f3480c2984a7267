//! Staged change set events -> one commit per table named in them.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse};
use dms2delta::catalog::CatalogSync;
use dms2delta::config::Validated;
use dms2delta::deadline::{Deadline, COMMIT_RESERVE};
use dms2delta::events::{parse, ObjectEvent, ObjectEventKind, Payload};
use dms2delta::metrics::{Emf, Unit};
use dms2delta::operations::commit::{CommitChangesBuilder, CommitMetrics};
use dms2delta::stage::parse_change_set_path;
use dms2delta::storage::{object_path, Location, Stores};
use serde_json::{json, Value};

/// What lives for the whole execution environment.
#[derive(Debug)]
pub struct State {
    pub config: Arc<Validated>,
    pub stores: Stores,
    /// Where tables are registered for Athena, when a catalog database is configured.
    pub catalog: Option<CatalogSync>,
}

impl State {
    pub fn new(config: Arc<Validated>) -> State {
        let stores = Stores::new(config.config.storage.clone());
        State {
            config,
            stores,
            catalog: None,
        }
    }

    pub fn with_catalog(mut self, catalog: CatalogSync) -> State {
        self.catalog = Some(catalog);
        self
    }
}

type TableId = (String, String, String);

/// The table a staged object belongs to, or `None` for anything else.
fn table_of(state: &State, o: &ObjectEvent) -> Option<TableId> {
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
    let (ns, schema, table, _) = parse_change_set_path(&object_store::path::Path::parse(root).ok()?, &path)?;
    Some((ns, schema, table))
}

/// Handles one invocation: every table named by the events is committed once, whatever the
/// number of its change sets in the batch (group commit). An SQS message fails when the commit
/// of its table failed, so the queue retries it; nothing is dropped.
pub async fn handle(state: &State, payload: Value) -> Result<Value, lambda_runtime::Error> {
    handle_until(state, payload, Deadline::NONE).await
}

/// [`handle`] within the invocation's `deadline`: after the first table, a table whose commit
/// may not finish in the time left ([`COMMIT_RESERVE`]) is not started, and the messages that need it are returned as
/// batch item failures for the queue to deliver again; the tables committed so far stand.
pub async fn handle_until(state: &State, payload: Value, deadline: Deadline) -> Result<Value, lambda_runtime::Error> {
    let parsed = parse(&payload)?;
    let deliveries = match &parsed {
        Payload::Sqs(d) => d.iter().collect::<Vec<_>>(),
        Payload::Direct(d) => vec![d],
    };
    // Which tables each delivery needs, and every table once.
    let mut needs: Vec<(Option<String>, Result<Vec<TableId>, String>)> = Vec::new();
    let mut tables: BTreeMap<TableId, Option<Result<CommitMetrics, String>>> = BTreeMap::new();
    for d in &deliveries {
        let ids = match &d.objects {
            Ok(objects) => {
                let ids: Vec<TableId> = objects.iter().filter_map(|o| table_of(state, o)).collect();
                for id in &ids {
                    tables.insert(id.clone(), None);
                }
                Ok(ids)
            }
            Err(e) => {
                tracing::error!(stage = "commit", error = %e, "unreadable event");
                Err(e.to_string())
            }
        };
        needs.push((d.message_id.clone(), ids));
    }
    let namespace = &state.config.config.metrics.namespace;
    // The first table is always started, so an invocation always makes progress whatever the
    // function's timeout; the deadline decides about the others.
    let mut started = false;
    for (id, slot) in tables.iter_mut() {
        if started && !deadline.allows(COMMIT_RESERVE) {
            tracing::warn!(stage = "commit", table = %format!("{}.{}.{}", id.0, id.1, id.2), left_ms = deadline.remaining().unwrap_or_default().as_millis() as u64, "too close to the deadline; left for the queue to deliver again");
            Emf::new(namespace, "commit")
                .with_table(format!("{}.{}.{}", id.0, id.1, id.2))
                .metric("Deferred", Unit::Count, 1.0)
                .emit();
            *slot = Some(Err("not started: too close to the invocation's deadline".into()));
            continue;
        }
        started = true;
        let res = CommitChangesBuilder::new(state.config.clone(), &state.stores)
            .with_table(&id.0, &id.1, &id.2)
            .await;
        match &res {
            Ok(m) => {
                tracing::info!(
                    stage = "commit",
                    table = %m.table,
                    version = m.version,
                    change_sets = m.change_sets,
                    inserted = m.rows_inserted,
                    updated = m.rows_updated,
                    deleted = m.rows_deleted,
                    stale = m.rows_stale,
                    copied = m.rows_copied,
                    dv_files = m.dv_files,
                    dv_rows = m.dv_rows,
                    attempts = m.attempts,
                    duration_ms = m.duration_ms,
                    "committed"
                );
                emit(namespace, m);
            }
            Err(e) => {
                tracing::error!(stage = "commit", table = %format!("{}.{}.{}", id.0, id.1, id.2), retryable = e.is_retryable(), error = %e, "commit failed");
                Emf::new(namespace, "commit")
                    .with_table(format!("{}.{}.{}", id.0, id.1, id.2))
                    .metric("Errors", Unit::Count, 1.0)
                    .emit();
            }
        }
        let mut res = res.map_err(|e| e.to_string());
        if let (Ok(m), Some(catalog)) = (&res, &state.catalog) {
            if let Err(e) = follow_in_catalog(state, catalog, id, m).await {
                res = Err(e);
            }
        }
        *slot = Some(res);
    }
    let failed = |ids: &Result<Vec<TableId>, String>| match ids {
        Err(_) => true,
        Ok(ids) => ids.iter().any(|id| matches!(tables.get(id), Some(Some(Err(_))))),
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
                .map(|(id, r)| match r {
                    Some(Ok(m)) => json!({"table": m.table, "version": m.version, "change_sets": m.change_sets,
                        "inserted": m.rows_inserted, "updated": m.rows_updated, "deleted": m.rows_deleted, "stale": m.rows_stale,
                        "quarantined": m.quarantined}),
                    Some(Err(e)) => json!({"table": format!("{}.{}.{}", id.0, id.1, id.2), "error": e}),
                    None => json!({}),
                })
                .collect();
            if needs.iter().any(|(_, ids)| failed(ids)) {
                Err(format!("commit failed: {}", Value::Array(summary)).into())
            } else {
                Ok(json!({ "tables": summary }))
            }
        }
    }
}

/// Registers the table or its new schema. The commit has landed whatever happens here; a
/// failure a retry can fix fails the table's messages so the queue brings them back (the next
/// commit, even an empty one, syncs again), and one it cannot fix is logged and counted
/// (`CatalogErrors`, alarmed) without holding up replication.
async fn follow_in_catalog(
    state: &State,
    catalog: &CatalogSync,
    id: &TableId,
    m: &CommitMetrics,
) -> Result<(), String> {
    let namespace = &state.config.config.metrics.namespace;
    match catalog.follow(&state.config, (&id.0, &id.1, &id.2), m).await {
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
                Err(e.to_string())
            } else {
                Ok(())
            }
        }
    }
}

fn emit(namespace: &str, m: &CommitMetrics) {
    let mut e = Emf::new(namespace, "commit")
        .with_table(&m.table)
        .metric("ChangeSets", Unit::Count, m.change_sets as f64)
        .metric("RowsInserted", Unit::Count, m.rows_inserted as f64)
        .metric("RowsUpdated", Unit::Count, m.rows_updated as f64)
        .metric("RowsDeleted", Unit::Count, m.rows_deleted as f64)
        .metric("RowsStale", Unit::Count, m.rows_stale as f64)
        .metric("RowsCopied", Unit::Count, m.rows_copied as f64)
        .metric("DeletionVectorFiles", Unit::Count, m.dv_files as f64)
        .metric("DeletionVectorRows", Unit::Count, m.dv_rows as f64)
        .metric("Retries", Unit::Count, m.attempts.saturating_sub(1) as f64)
        .metric("Conflicts", Unit::Count, m.conflicts as f64)
        .metric("Quarantined", Unit::Count, m.quarantined.len() as f64)
        .metric("CommitLatencyMs", Unit::Milliseconds, m.duration_ms as f64);
    if let Some(lag) = m.lag_seconds {
        e = e.metric("ReplicationLagSeconds", Unit::Seconds, lag);
    }
    e.emit();
}

#[cfg(test)]
mod tests;
