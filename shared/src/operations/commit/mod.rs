//! Commit stage: a table's pending change sets -> one Delta commit.
//!
//! Group commit: the invocation gathers every pending change set of the table (up to a bound),
//! deduplicates across them by sequence and applies them with one MERGE whose clauses carry the
//! sequence guard, so re-applying a change set, or applying an older one late, changes nothing.
//! Hard deletes leave a tombstone (key + sequence) in a side table that is consulted before every
//! MERGE, so a late older change cannot bring a deleted row back.
//!
//! Here are the builder and its retry loop. Everything that reads the table's current version and
//! may conflict with another writer is in `attempt`, so a retry repeats it whole; `merge` (with
//! `column_seqs` and `exprs`) and `create` are what it writes with. `floors` and `set_aside` run
//! outside the loop, and `commit_info` is what every commit records for the readers after it.

mod attempt;
mod column_seqs;
mod commit_info;
mod create;
mod exprs;
mod floors;
mod merge;
mod set_aside;

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use deltalake::operations::merge::MergeMetrics;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::config::{DeleteMode, Validated};
use crate::error::{BadInputKind, Error, Result};
use crate::failpoint::{self, Failpoints};
use crate::model::TableId;
use crate::operations::merge_on_read::DvCounts;
use crate::operations::retry::backoff;
use crate::operations::tombstones;
use crate::stage::{floor_markers, read_change_set, table_dir, ChangeSetMeta};
use crate::storage::Stores;

pub use crate::model::columns::{COMMIT_INFO_KEY, DELETED, DELETED_AT};
pub use commit_info::{applied_change_sets, applied_files};
pub use create::has_deletion_vectors;

/// Applies a table's pending change sets. Build, set the table, `.await`.
#[derive(Debug)]
pub struct CommitChangesBuilder<'a> {
    config: Arc<Validated>,
    stores: &'a Stores,
    table: TableId,
    max_change_sets: Option<usize>,
    failpoints: Failpoints,
    load_progress: Option<Arc<dyn crate::dms::LoadProgress>>,
}

/// What one commit did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommitMetrics {
    /// `namespace.schema.table`.
    pub table: String,
    /// The table version holding the changes; `None` when nothing was pending.
    pub version: Option<u64>,
    /// Change sets applied (and then removed from staging).
    pub change_sets: usize,
    /// The DMS files those change sets came from.
    pub source_files: Vec<String>,
    /// Changes after deduplication across change sets.
    pub rows_source: u64,
    pub rows_inserted: u64,
    pub rows_updated: u64,
    pub rows_deleted: u64,
    /// Changes refused because the table (or a tombstone) already had a newer sequence.
    pub rows_stale: u64,
    pub tombstones_written: u64,
    pub files_added: u64,
    pub files_removed: u64,
    /// Unchanged rows written again because their data file held a changed one: the
    /// copy-on-write cost, which dominates a commit into a large table.
    pub rows_copied: u64,
    /// Of the MERGE's time: scanning the table, and writing the new files (delta-rs's own
    /// measures; they overlap, both streaming).
    pub merge_scan_ms: u64,
    pub merge_rewrite_ms: u64,
    /// Data files the commit had to read to find the rows its changes meet: a first full
    /// load's files read only those holding later changes or the same file's rows.
    pub files_scanned: u64,
    /// Merge-on-read (`deletion_vectors`): data files given a new deletion vector, and the
    /// rows those vectors newly mark as replaced or deleted.
    pub dv_files: u64,
    pub dv_rows: u64,
    /// Attempts made (1 when there was no conflict).
    pub attempts: u32,
    /// Conflicts with concurrent writers that were retried.
    pub conflicts: u32,
    /// Change sets set aside with a report.
    pub quarantined: Vec<String>,
    /// Change sets moved from a legacy percent-encoded staging folder to their table's folder
    /// (they are committed by the table's next commit).
    pub moved: Vec<String>,
    /// Whether this commit created the table.
    pub created_table: bool,
    /// The table's schema and partition columns after this commit (`None` when nothing was
    /// committed), so a catalog can follow without reading the log again.
    pub table_schema: Option<arrow::datatypes::SchemaRef>,
    pub partition_columns: Vec<String>,
    /// Rows removed (or marked deleted) because the table's floor was raised after a reload's
    /// load or a truncate, and the floor raised to.
    pub rows_swept: u64,
    pub floor: Option<String>,
    /// Now minus the newest source commit time applied.
    pub lag_seconds: Option<f64>,
    /// What the table's history (`history.enabled`) took from this commit.
    pub history: Option<crate::operations::history::HistoryMetrics>,
    pub duration_ms: u64,
}

struct Pending {
    path: Path,
    meta: ChangeSetMeta,
    batches: Vec<RecordBatch>,
}

enum Attempt {
    Done(AttemptResult),
    Conflict(deltalake::DeltaTableError),
    Reject(Vec<(usize, String)>),
}

#[derive(Default)]
struct AttemptResult {
    version: Option<u64>,
    merge: Option<MergeMetrics>,
    dv: DvCounts,
    rows_source: u64,
    tombstone_stale: u64,
    tombstones_written: u64,
    created_table: bool,
    table_schema: Option<arrow::datatypes::SchemaRef>,
    partition_columns: Vec<String>,
    newest_commit_ts: Option<i64>,
}

impl<'a> IntoFuture for CommitChangesBuilder<'a> {
    type Output = Result<CommitMetrics>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

impl<'a> CommitChangesBuilder<'a> {
    pub fn new(config: Arc<Validated>, stores: &'a Stores) -> Self {
        CommitChangesBuilder {
            config,
            stores,
            table: TableId::default(),
            max_change_sets: None,
            failpoints: Failpoints::default(),
            load_progress: None,
        }
    }

    /// DMS's table statistics, consulted for a reload whose end is not yet known otherwise
    /// (sources with `dms_task_arn`; see [`crate::dms`]).
    pub fn with_load_progress(mut self, progress: Option<Arc<dyn crate::dms::LoadProgress>>) -> Self {
        self.load_progress = progress;
        self
    }

    /// The lake table (namespace, schema and table after renames).
    pub fn with_table(
        mut self,
        namespace: impl Into<String>,
        schema: impl Into<String>,
        table: impl Into<String>,
    ) -> Self {
        self.table = TableId::new(namespace, schema, table);
        self
    }

    /// Overrides `commit.max_change_sets`.
    pub fn with_max_change_sets(mut self, n: usize) -> Self {
        self.max_change_sets = Some(n.max(1));
        self
    }

    /// Crash points for tests.
    pub fn with_failpoints(mut self, failpoints: Failpoints) -> Self {
        self.failpoints = failpoints;
        self
    }

    async fn run(self) -> Result<CommitMetrics> {
        let started = Instant::now();
        let (stage_store, stage_root) = self.stores.resolve(&self.config.staging)?;
        let Some(spec) = self
            .config
            .table_by_target(&self.table.namespace, &self.table.schema, &self.table.table)
        else {
            // Staged for a table the configuration no longer has: set aside, never block.
            let mut metrics = self.set_aside_unconfigured(&stage_store, &stage_root).await?;
            metrics.duration_ms = started.elapsed().as_millis() as u64;
            return Ok(metrics);
        };
        let name = spec.qualified_name();
        let mut metrics = CommitMetrics {
            table: name.clone(),
            ..Default::default()
        };
        let dir = table_dir(&stage_root, &spec)?;
        let mut listed: Vec<ObjectMeta> = stage_store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(Error::storage("list staged change sets", &dir))?;
        let markers = floor_markers(&listed);
        listed.retain(|m| m.location.as_ref().ends_with(".parquet"));
        listed.sort_by(|a, b| (a.last_modified, &a.location).cmp(&(b.last_modified, &b.location)));
        let c = &self.config.config.commit;
        let most = self.max_change_sets.unwrap_or(c.max_change_sets);
        listed.truncate(gathered(&listed, most, c.max_staged_bytes));

        let mut pending = Vec::new();
        for m in listed {
            match read_change_set(stage_store.clone(), &m.location).await {
                Ok((meta, batches)) => pending.push(Pending {
                    path: m.location,
                    meta,
                    batches,
                }),
                // Another invocation applied it and cleaned up after its commit.
                Err(Error::Gone { .. }) => continue,
                Err(e) if !e.is_retryable() => {
                    let reason = e.to_string();
                    let meta = ChangeSetMeta {
                        source_file: String::new(),
                        etag: None,
                        table: name.clone(),
                        rows_in: 0,
                    };
                    let q = self
                        .quarantine(&stage_store, &m.location, &meta, BadInputKind::CorruptFile, &reason)
                        .await?;
                    metrics.quarantined.push(q);
                }
                Err(e) => return Err(e),
            }
        }
        let table_loc = self.config.lake.join(&spec.lake_path());
        if pending.is_empty() {
            if !markers.is_empty() {
                self.settle_floors(&spec, &table_loc, &markers, &[], &stage_store, &mut metrics)
                    .await?;
            }
            metrics.duration_ms = started.elapsed().as_millis() as u64;
            return Ok(metrics);
        }

        let tomb_loc = tombstones::location(&self.config.lake, &spec.lake_path());
        let result = loop {
            metrics.attempts += 1;
            match self.attempt(&spec, &pending, &table_loc, &tomb_loc).await? {
                Attempt::Done(r) => break r,
                Attempt::Reject(rejected) => {
                    // Set the incompatible change sets aside and go on with the rest.
                    let mut keep = Vec::new();
                    for (i, p) in pending.into_iter().enumerate() {
                        match rejected.iter().find(|(r, _)| *r == i) {
                            Some((_, reason)) => {
                                let q = self
                                    .quarantine(
                                        &stage_store,
                                        &p.path,
                                        &p.meta,
                                        BadInputKind::IncompatibleSchema,
                                        reason,
                                    )
                                    .await?;
                                metrics.quarantined.push(q);
                            }
                            None => keep.push(p),
                        }
                    }
                    pending = keep;
                    metrics.attempts -= 1;
                    if pending.is_empty() {
                        metrics.duration_ms = started.elapsed().as_millis() as u64;
                        return Ok(metrics);
                    }
                }
                Attempt::Conflict(source) => {
                    metrics.conflicts += 1;
                    if metrics.attempts >= c.max_attempts {
                        return Err(Error::Conflict {
                            table: name,
                            attempts: metrics.attempts,
                            source: Box::new(source),
                        });
                    }
                    let delay = backoff(metrics.attempts, c.backoff_base_ms, c.backoff_max_ms);
                    tracing::info!(stage = "commit", table = %name, attempt = metrics.attempts, delay_ms = delay.as_millis() as u64, reason = %source, "commit conflict; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        };

        self.failpoints.check(failpoint::COMMIT_BEFORE_HISTORY)?;
        if spec.history {
            // After the table's commit and before the change sets go: a run that dies in
            // between leaves them staged, and the next one (stale for the table) gives the
            // history the same versions again, which it takes once.
            let sets = pending.iter().map(|p| p.batches.clone()).collect();
            let h = crate::operations::history::HistoryBuilder::new(self.config.clone(), self.stores, spec.clone())
                .with_change_sets(sets)
                .await?;
            metrics.history = Some(h);
        }
        self.failpoints.check(failpoint::COMMIT_BEFORE_CLEANUP)?;
        for p in &pending {
            match stage_store.delete(&p.path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::storage("delete applied change set", &p.path)(e)),
            }
        }
        metrics.version = result.version;
        metrics.change_sets = pending.len();
        metrics.source_files = pending.iter().map(|p| p.meta.source_file.clone()).collect();
        metrics.rows_source = result.rows_source;
        metrics.tombstones_written = result.tombstones_written;
        metrics.created_table = result.created_table;
        metrics.table_schema = result.table_schema;
        metrics.partition_columns = result.partition_columns;
        if let Some(m) = &result.merge {
            metrics.rows_inserted = m.num_target_rows_inserted as u64;
            metrics.rows_updated = m.num_target_rows_updated as u64;
            metrics.rows_deleted = m.num_target_rows_deleted as u64;
            metrics.files_added = m.num_target_files_added as u64;
            metrics.files_removed = m.num_target_files_removed as u64;
            metrics.rows_copied = m.num_target_rows_copied as u64;
            metrics.merge_scan_ms = m.scan_time_ms;
            metrics.files_scanned = m.num_target_files_scanned as u64;
            metrics.merge_rewrite_ms = m.rewrite_time_ms;
        }
        metrics.dv_files = result.dv.files_marked;
        metrics.dv_rows = result.dv.rows_marked;
        let changed = metrics.rows_inserted + metrics.rows_updated + metrics.rows_deleted;
        metrics.rows_stale = result.rows_source.saturating_sub(changed);
        if spec.delete_mode == DeleteMode::Hard {
            // Deletes of keys the table never held still record a tombstone: not stale.
            metrics.rows_stale = metrics
                .rows_stale
                .saturating_sub(result.tombstones_written.min(metrics.rows_stale));
        }
        let _ = result.tombstone_stale;
        if !markers.is_empty() {
            self.settle_floors(&spec, &table_loc, &markers, &pending, &stage_store, &mut metrics)
                .await?;
        }
        metrics.lag_seconds = result
            .newest_commit_ts
            .map(|ts| (chrono::Utc::now().timestamp_micros() - ts) as f64 / 1e6);
        metrics.duration_ms = started.elapsed().as_millis() as u64;
        Ok(metrics)
    }
}

/// How many of the staged change sets `listed` (oldest first) one commit takes: at most `most`,
/// and no more than `budget` bytes together, but always the oldest.
fn gathered(listed: &[ObjectMeta], most: usize, budget: u64) -> usize {
    let mut bytes = 0u64;
    let within = listed
        .iter()
        .take_while(|m| {
            bytes = bytes.saturating_add(m.size);
            bytes <= budget
        })
        .count();
    within.max(1).min(most).min(listed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_gathers_change_sets_within_its_count_and_byte_budget() {
        let sets: Vec<ObjectMeta> = [40u64, 30, 50, 10]
            .iter()
            .enumerate()
            .map(|(i, size)| ObjectMeta {
                location: Path::from(format!("t/{i}.parquet")),
                last_modified: chrono::Utc::now(),
                size: *size,
                e_tag: None,
                version: None,
            })
            .collect();
        assert_eq!(gathered(&sets, 64, 1000), 4, "everything fits");
        assert_eq!(gathered(&sets, 2, 1000), 2, "the count bounds");
        assert_eq!(gathered(&sets, 64, 70), 2, "40 + 30 fit, 50 more does not");
        assert_eq!(gathered(&sets, 64, 119), 2, "stops at the first that does not fit");
        assert_eq!(gathered(&sets, 64, 10), 1, "the oldest is taken whatever its size");
        assert_eq!(gathered(&[], 64, 10), 0);
    }
}
