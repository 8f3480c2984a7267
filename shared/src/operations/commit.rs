//! Commit stage: a table's pending change sets -> one Delta commit.
//!
//! Group commit: the invocation gathers every pending change set of the table (up to a bound),
//! deduplicates across them by sequence and applies them with one MERGE whose clauses carry the
//! sequence guard, so re-applying a change set, or applying an older one late, changes nothing.
//! Hard deletes leave a tombstone (key + sequence) in a side table that is consulted before every
//! MERGE, so a late older change cannot bring a deleted row back.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::ops::Not;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::datafusion::common::Column;
use deltalake::datafusion::functions::core::expr_fn::coalesce;
use deltalake::datafusion::functions::string::expr_fn::contains;
use deltalake::datafusion::prelude::{lit, when, Expr, SessionContext};
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::{CommitBuilder as DeltaCommitBuilder, CommitProperties};
use deltalake::kernel::{Action, StructField, StructType, Transaction};
use deltalake::operations::merge::{InsertBuilder, MergeMetrics, UpdateBuilder};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, TableProperty};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde_json::{json, Value};

use crate::config::{DeleteMode, TableSpec, Validated};
use crate::error::{BadInputKind, Error, InputProblem, Result, Stage};
use crate::failpoint::{self, Failpoints};
use crate::generation::{Anchor, FloorKind};
use crate::lake::{self, delta_err, is_conflict};
use crate::model::columns::{column_of_seq, column_seq_name, COMMIT_TS, NOSUP, OP, SEQ};
use crate::model::TableId;
use crate::operations::merge_on_read::{self, DvCounts};
use crate::operations::retry::backoff;
use crate::operations::truncate::written_after;
use crate::operations::widen::{before_full_rewrite, widen_table};
use crate::operations::{change_feed, floor, tombstones};
use crate::quarantine::{write_report, QuarantineReport};
use crate::stage::{floor_markers, names_dir, read_change_set, table_dir, ChangeSetMeta};
use crate::storage::{Location, Stores};
use crate::types::UTC;
use crate::unify::unify;

pub use crate::model::columns::{COMMIT_INFO_KEY, DELETED, DELETED_AT};
const APP_ID: &str = "dms2delta";

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
        listed.truncate(
            self.max_change_sets
                .unwrap_or(self.config.config.commit.max_change_sets),
        );

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
        let c = &self.config.config.commit;
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

    /// Raises the table's floor for the reloads and truncates its staging folder records (see
    /// [`crate::generation`]) once each is due: a truncate at once; a reload when a change
    /// written after its load has been committed (here, in `applied`, or since: any change
    /// above the anchor that is not one of the reload's own rows), or when its marker is older
    /// than `reloads.settle_after_seconds`. Markers at or below the floor are removed.
    async fn settle_floors(
        &self,
        spec: &TableSpec,
        table_loc: &Location,
        markers: &[(FloorKind, Anchor, ObjectMeta)],
        applied: &[Pending],
        stage_store: &Arc<dyn ObjectStore>,
        metrics: &mut CommitMetrics,
    ) -> Result<()> {
        let name = spec.qualified_name();
        let derr = |e| delta_err(Stage::Commit, &name, e);
        let settle = self
            .config
            .sources()
            .iter()
            .find(|s| s.name == spec.source)
            .map_or(3600, |s| s.reloads.settle_after_seconds);
        let now = chrono::Utc::now();
        let due = |kind: FloorKind, anchor: &Anchor, written: chrono::DateTime<chrono::Utc>| {
            kind == FloorKind::Truncate
                || (now - written).num_seconds() >= i64::try_from(settle).unwrap_or(i64::MAX)
                || applied
                    .iter()
                    .any(|p| p.batches.iter().any(|b| has_later_change(b, anchor)))
        };
        let mut target = markers
            .iter()
            .filter(|(k, a, m)| due(*k, a, m.last_modified))
            .map(|(_, a, _)| a)
            .max()
            .cloned();
        if let Some(progress) = &self.load_progress {
            let dms = crate::dms::settled_reload(progress.as_ref(), &self.config, spec, markers, target.as_ref()).await;
            target = target.max(dms);
        }
        if target.is_none() {
            // The change that ends the load may have been committed before the reload's first
            // LOAD file was decoded: look for it in the table (newest marker first).
            let (table, exists) = lake::open(self.stores, table_loc).await?;
            if exists {
                for (_, a, _) in markers.iter().rev() {
                    if floor::holds_later_change(&table, a).await.map_err(derr)? {
                        target = Some(a.clone());
                        break;
                    }
                }
            }
        }
        let Some(target) = target else {
            return Ok(());
        };
        // A truncate of a table ordered by `AR_H_CHANGE_SEQ` keeps the changes of files DMS
        // wrote after it, whatever their commit time (see `floor::FILES_AFTER_PROPERTY`).
        let truncated = markers
            .iter()
            .any(|(k, a, _)| *k == FloorKind::Truncate && *a == target);
        let files_after = (truncated && spec.sequence_column.is_some()).then(|| target.time_digits().to_string());
        let c = &self.config.config.commit;
        let mut attempts = 0;
        let floor_at;
        loop {
            attempts += 1;
            let (table, exists) = lake::open(self.stores, table_loc).await?;
            if !exists {
                // Nothing to remove yet; the marker waits for the table.
                return Ok(());
            }
            // The removal's time is above the changes DMS wrote after the truncate and
            // committed at the source within its lag: the floor goes just below the oldest
            // of them already applied, which is still above every change before the truncate.
            let at = match files_after.as_deref() {
                Some(after) => {
                    let newer = |file: &str| written_after(&self.config, file, after);
                    match first_change_of_files(&table, &newer, target.time_digits(), applied).await {
                        Ok(first) => first
                            .and_then(|s| floor::just_below(&s))
                            .map_or(target.clone(), |b| b.min(target.clone())),
                        Err(e) => return Err(derr(e)),
                    }
                }
                None => target.clone(),
            };
            // Even with the floor already at the target the sweep runs again: a run cut short
            // between raising the floor and removing the rows below it left its marker behind.
            match floor::raise(table, spec, &at, files_after.as_deref()).await {
                Ok((t, swept)) => {
                    metrics.rows_swept += swept;
                    metrics.version = t.version().or(metrics.version);
                    tracing::info!(stage = "commit", table = %name, floor = %at.as_str(), rows_swept = swept, "table floor raised after a reload or truncate");
                    // The history closes at the table's floor, not this run's: when the removal
                    // events of one truncate are committed in several steps and a later step's
                    // floor rose first, an earlier step closing at its own lower anchor would add
                    // a second closing version below the first.
                    floor_at = floor::table_floor(&t).filter(|f| *f > at).unwrap_or(at);
                    break;
                }
                Err(e) if is_conflict(&e) && attempts < c.max_attempts => {
                    metrics.conflicts += 1;
                    tokio::time::sleep(backoff(attempts, c.backoff_base_ms, c.backoff_max_ms)).await;
                }
                Err(e) if is_conflict(&e) => {
                    return Err(Error::Conflict {
                        table: name.clone(),
                        attempts,
                        source: Box::new(e),
                    })
                }
                Err(e) => return Err(derr(e)),
            }
        }
        if spec.history {
            // Before the markers go, so a run that dies here closes the history next time.
            let h = crate::operations::history::HistoryBuilder::new(self.config.clone(), self.stores, spec.clone())
                .with_closing_floor(floor_at.clone())
                .await?;
            match &mut metrics.history {
                Some(m) => m.absorb(h),
                None => metrics.history = Some(h),
            }
        }
        metrics.floor = Some(floor_at.as_str().to_string());
        for (_, a, m) in markers {
            if *a <= target {
                match stage_store.delete(&m.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(Error::storage("delete a settled floor marker", &m.location)(e)),
                }
            }
        }
        Ok(())
    }

    /// The change sets staged under a lake name no configured table lands at (the table was
    /// excluded, renamed or removed after its file was decoded). Each gets a quarantine report
    /// naming its DMS file, so reprocess decodes that file again under the current configuration.
    ///
    /// Change sets staged by earlier versions under percent-encoded folder names (`%C3%85`
    /// for `Å`) are moved to the folder their table uses now instead.
    async fn set_aside_unconfigured(
        &self,
        stage_store: &Arc<dyn ObjectStore>,
        stage_root: &Path,
    ) -> Result<CommitMetrics> {
        let name = self.table.qualified_name();
        let mut metrics = CommitMetrics {
            table: name.clone(),
            ..Default::default()
        };
        let dir = names_dir(stage_root, &self.table)?;
        let listed: Vec<ObjectMeta> = stage_store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(Error::storage("list staged change sets", &dir))?;
        if let Some(spec) = self.legacy_encoded_table() {
            let to = table_dir(stage_root, &spec)?;
            for m in &listed {
                let Some(file) = m.location.filename() else { continue };
                let target = to.clone().join(file);
                match stage_store.copy(&m.location, &target).await {
                    Ok(()) => {}
                    Err(object_store::Error::NotFound { .. }) => continue,
                    Err(e) => return Err(Error::storage("move change set", &m.location)(e)),
                }
                match stage_store.delete(&m.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(Error::storage("move change set", &m.location)(e)),
                }
                metrics.moved.push(target.to_string());
            }
            tracing::info!(stage = "commit", from = %name, to = %spec.qualified_name(), moved = metrics.moved.len(), "change sets staged under an encoded name moved to their table");
            return Ok(metrics);
        }
        for m in listed {
            if !m.location.as_ref().ends_with(".parquet") {
                continue;
            }
            let reason = format!(
                "no configured table lands at {name} any more: the table was excluded, renamed or \
                 removed from the configuration after this file was decoded"
            );
            let meta = match read_change_set(stage_store.clone(), &m.location).await {
                Ok((meta, _)) => meta,
                Err(Error::Gone { .. }) => continue,
                Err(e) if !e.is_retryable() => ChangeSetMeta {
                    source_file: String::new(),
                    etag: None,
                    table: name.clone(),
                    rows_in: 0,
                },
                Err(e) => return Err(e),
            };
            let q = self
                .quarantine(
                    stage_store,
                    &m.location,
                    &meta,
                    BadInputKind::TableNotConfigured,
                    &reason,
                )
                .await?;
            metrics.quarantined.push(q);
        }
        Ok(metrics)
    }

    /// The configured table whose names this builder's names are a percent-encoding of.
    fn legacy_encoded_table(&self) -> Option<TableSpec> {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|d| d.into_owned())
        };
        let (ns, schema, table) = (
            decode(&self.table.namespace)?,
            decode(&self.table.schema)?,
            decode(&self.table.table)?,
        );
        if (ns.as_str(), schema.as_str(), table.as_str())
            == (
                self.table.namespace.as_str(),
                self.table.schema.as_str(),
                self.table.table.as_str(),
            )
        {
            return None;
        }
        self.config.table_by_target(&ns, &schema, &table)
    }

    async fn quarantine(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &Path,
        meta: &ChangeSetMeta,
        kind: BadInputKind,
        reason: &str,
    ) -> Result<String> {
        let file = if meta.source_file.is_empty() {
            path.to_string()
        } else {
            meta.source_file.clone()
        };
        let err = InputProblem::new(kind, format!("change set {path}: {reason}")).into_error(
            Stage::Commit,
            &file,
            Some(&meta.table),
        );
        let (bucket, key) = file
            .strip_prefix("s3://")
            .and_then(|r| r.split_once('/'))
            .map(|(b, k)| (b.to_string(), k.to_string()))
            .unwrap_or_else(|| ("staging".to_string(), path.to_string()));
        let Some(report) = QuarantineReport::from_error(&err, &bucket, &key, meta.etag.as_deref()) else {
            return Err(err);
        };
        let (qstore, qroot) = self.stores.resolve(&self.config.quarantine)?;
        let at = write_report(qstore.as_ref(), &qroot, &report).await?;
        tracing::warn!(stage = "commit", table = %meta.table, file = %file, reason = %reason, report = %at, "change set quarantined");
        // The change set is our own intermediate: once reported, the source file can be
        // reprocessed; leaving it would block nothing but would be retried forever.
        match store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::storage("delete quarantined change set", path)(e)),
        }
        Ok(at.to_string())
    }

    async fn attempt(
        &self,
        spec: &TableSpec,
        pending: &[Pending],
        table_loc: &Location,
        tomb_loc: &Location,
    ) -> Result<Attempt> {
        let ctx_name = spec.qualified_name();
        let derr = |e| delta_err(Stage::Commit, &ctx_name, e);
        // Read the table first and the tombstones second: a delete records its tombstone before
        // its table commit, so whatever this snapshot lacks is either visible in the tombstones
        // or makes our commit conflict.
        let (mut table, exists) = lake::open(self.stores, table_loc).await?;
        let table_fields: Option<Vec<Field>> = if exists {
            let schema = table.snapshot().map_err(derr)?.snapshot().arrow_schema();
            Some(
                schema
                    .fields()
                    .iter()
                    .filter(|f| !f.name().starts_with("_dms_") || column_of_seq(f.name()).is_some())
                    .map(|f| f.as_ref().clone())
                    .collect(),
            )
        } else {
            None
        };
        let sets: Vec<Vec<RecordBatch>> = pending.iter().map(|p| p.batches.clone()).collect();
        let unified = unify(table_fields.as_deref(), &sets, &spec.keys)
            .map_err(|p| p.into_error(Stage::Commit, &ctx_name, Some(&ctx_name)))?;
        if !unified.rejected.is_empty() {
            return Ok(Attempt::Reject(unified.rejected));
        }
        let Some(source) = unified.batch else {
            return Ok(Attempt::Done(AttemptResult::default()));
        };
        let mut result = AttemptResult {
            rows_source: source.num_rows() as u64,
            newest_commit_ts: newest_commit_ts(&source),
            ..Default::default()
        };
        // Changes from before the table's last reload or truncate are stale, whatever the key.
        let source = match floor::table_floor(&table) {
            Some(f) if exists => {
                let files_after = floor::table_files_after(&table);
                let newer = |file: &str| {
                    files_after
                        .as_deref()
                        .is_some_and(|t| written_after(&self.config, file, t))
                };
                let newer: floor::NewerFile = files_after.is_some().then_some(&newer);
                floor::drop_below(source, &f, newer).map_err(|e| internal(format!("floor filter: {e}")))?
            }
            _ => source,
        };

        if exists && !unified.widen.is_empty() {
            match before_full_rewrite(table).await {
                Ok(t) => table = t,
                Err(e) if is_conflict(&e) => return Ok(Attempt::Conflict(e)),
                Err(e) => return Err(derr(e)),
            }
            match widen_table(table, &unified.widen).await {
                Ok(t) => table = t,
                Err(e) if is_conflict(&e) => return Ok(Attempt::Conflict(e)),
                Err(e) => return Err(derr(e)),
            }
        }
        // A column's own sequence is added before the MERGE, which has to read the table's
        // value of it (a column the MERGE adds through schema evolution takes the source's).
        let (column_seqs, new_columns): (Vec<String>, Vec<String>) = unified
            .new_columns
            .iter()
            .cloned()
            .partition(|c| column_of_seq(c).is_some());
        if exists && !column_seqs.is_empty() {
            let fields = column_seqs
                .iter()
                .map(|c| StructField::new(c.clone(), deltalake::kernel::DataType::STRING, true));
            match table.add_columns().with_fields(fields).await {
                Ok(t) => table = t,
                Err(e) if is_conflict(&e) => return Ok(Attempt::Conflict(e)),
                Err(e) => return Err(derr(e)),
            }
        }
        if !exists {
            match lake::settle_create(&table, create_table(&table, spec, &source).await).await {
                Ok(t) => {
                    table = t;
                    result.created_table = true;
                }
                Err(e) if is_conflict(&e) => return Ok(Attempt::Conflict(e)),
                Err(e) => return Err(derr(e)),
            }
        }

        let mut source = source;
        if spec.delete_mode == DeleteMode::Hard {
            match tombstones::guard(self.stores, tomb_loc, source, &spec.keys, &ctx_name).await? {
                tombstones::Guarded::Done {
                    source: s,
                    stale,
                    written,
                } => {
                    source = s;
                    result.tombstone_stale = stale;
                    result.tombstones_written = written;
                }
                tombstones::Guarded::Conflict(reason) => return Ok(Attempt::Conflict(reason)),
            }
        }
        self.failpoints.check(failpoint::COMMIT_AFTER_TOMBSTONES)?;

        // The feed follows the configuration from the next data commit on (its own commit).
        let table = match change_feed::apply_setting(table, spec.change_data_feed).await {
            Ok(t) => t,
            Err(e) if is_conflict(&e) => return Ok(Attempt::Conflict(e)),
            Err(e) => return Err(derr(e)),
        };
        let before = table.version();
        let info = commit_info(pending, source.num_rows());
        // Merge-on-read unless the commit adds columns (copy-on-write evolves the schema). A
        // first full load's rows only add to a table without deletion vectors too, unless they
        // meet a row they replace (see `merge_on_read::first_load_range`).
        let on_read = spec.deletion_vectors && new_columns.is_empty();
        let appends = !spec.deletion_vectors && new_columns.is_empty() && merge_on_read::is_first_load(&source);
        let applied = if source.num_rows() == 0 {
            Ok((table, None, DvCounts::default()))
        } else if on_read {
            async {
                let table = enable_deletion_vectors(table).await?;
                let applied = merge_on_read::apply(table, spec, source, info.clone(), false).await?;
                let (table, m, dv) = applied.ok_or_else(|| {
                    deltalake::DeltaTableError::Generic("merge-on-read declined a table with deletion vectors".into())
                })?;
                Ok::<_, deltalake::DeltaTableError>((table, Some(m), dv))
            }
            .await
        } else if appends {
            async {
                match merge_on_read::apply(table.clone(), spec, source.clone(), info.clone(), true).await? {
                    Some((table, m, dv)) => Ok((table, Some(m), dv)),
                    None => merge(table, spec, source, &new_columns, info.clone())
                        .await
                        .map(|(t, m)| (t, m, DvCounts::default())),
                }
            }
            .await
        } else {
            merge(table, spec, source, &new_columns, info.clone())
                .await
                .map(|(t, m)| (t, m, DvCounts::default()))
        };
        let (table, merge_metrics, dv) = match applied {
            Ok(v) => v,
            Err(e) if is_conflict(&e) => return Ok(Attempt::Conflict(e)),
            Err(e) => return Err(derr(e)),
        };
        result.merge = merge_metrics;
        result.dv = dv;
        result.version = table.version();
        if let Ok(snapshot) = table.snapshot() {
            result.table_schema = Some(snapshot.snapshot().arrow_schema());
            result.partition_columns = snapshot.metadata().partition_columns().to_vec();
        }
        if table.version() == before {
            // Nothing changed (every change was stale). Record the change sets anyway, so each
            // applied file can be traced to a version.
            match trace_only_commit(&table, info).await {
                Ok(v) => result.version = Some(v),
                Err(e) if is_conflict(&e) => return Ok(Attempt::Conflict(e)),
                Err(e) => return Err(derr(e)),
            }
        }
        // The version just written is known here; the next commit of this table in a warm
        // function only needs the commits made since (see `lake::SnapshotCache`).
        lake::remember(self.stores, table_loc, &table);
        Ok(Attempt::Done(result))
    }
}

impl<'a> IntoFuture for CommitChangesBuilder<'a> {
    type Output = Result<CommitMetrics>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// Whether `b` holds a change written after the load of the generation anchored at `anchor`.
fn has_later_change(b: &RecordBatch, anchor: &Anchor) -> bool {
    let Ok(i) = b.schema().index_of(SEQ) else { return false };
    let seqs = b.column(i).as_string::<i32>();
    (0..seqs.len()).any(|r| !seqs.is_null(r) && anchor.is_later_change(seqs.value(r)))
}

fn newest_commit_ts(b: &RecordBatch) -> Option<i64> {
    let i = b.schema().index_of(COMMIT_TS).ok()?;
    let a = b.column(i).as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    arrow::compute::max(a)
}

fn commit_info(pending: &[Pending], rows: usize) -> HashMap<String, Value> {
    let mut m = HashMap::new();
    // Each file's oldest change: a truncate's floor is placed below those DMS wrote after it.
    let first_seqs: serde_json::Map<String, Value> = pending
        .iter()
        .filter_map(|p| Some((p.meta.source_file.clone(), Value::from(oldest_seq(&p.batches)?))))
        .collect();
    m.insert(
        COMMIT_INFO_KEY.to_string(),
        json!({
            "change_sets": pending.iter().map(|p| p.path.to_string()).collect::<Vec<_>>(),
            "source_files": pending.iter().map(|p| p.meta.source_file.clone()).collect::<Vec<_>>(),
            "first_seqs": first_seqs,
            "changes": rows,
            "version": env!("CARGO_PKG_VERSION"),
        }),
    );
    m
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

/// The table's columns: the data columns and column sequences, then the sequence and commit
/// time (and the soft-delete flag and time).
fn table_schema(spec: &TableSpec, source: &RecordBatch) -> Schema {
    let mut fields: Vec<Field> = source
        .schema()
        .fields()
        .iter()
        .filter(|f| !f.name().starts_with("_dms_") || column_of_seq(f.name()).is_some())
        .map(|f| Field::new(f.name(), f.data_type().clone(), true))
        .collect();
    fields.push(Field::new(SEQ, DataType::Utf8, true));
    fields.push(Field::new(COMMIT_TS, ts_type(), true));
    if spec.delete_mode == DeleteMode::Soft {
        fields.push(Field::new(DELETED, DataType::Boolean, true));
        fields.push(Field::new(DELETED_AT, ts_type(), true));
    }
    Schema::new(fields)
}

async fn create_table(
    handle: &DeltaTable,
    spec: &TableSpec,
    source: &RecordBatch,
) -> deltalake::DeltaResult<DeltaTable> {
    let schema = table_schema(spec, source);
    let st = StructType::try_from_arrow(&schema)?;
    let mut b = handle
        .create()
        .with_columns(st.fields().cloned())
        .with_save_mode(SaveMode::ErrorIfExists)
        .with_table_name(&spec.target_table)
        .with_comment(format!(
            "Replicated by dms2delta from {} {}.{}",
            spec.source, spec.schema, spec.table
        ));
    if !spec.partition_by.is_empty() {
        b = b.with_partition_columns(spec.partition_by.clone());
    }
    if spec.deletion_vectors {
        b = b.with_configuration_property(TableProperty::EnableDeletionVectors, Some("true"));
    }
    if spec.change_data_feed {
        b = b.with_configuration_property(TableProperty::EnableChangeDataFeed, Some("true"));
    }
    b.await
}

/// Whether the table accepts deletion vectors (the property set and the protocol raised).
pub fn has_deletion_vectors(table: &DeltaTable) -> bool {
    table.snapshot().is_ok_and(|s| {
        s.protocol().min_reader_version() >= 3
            && s.metadata()
                .configuration()
                .get(TableProperty::EnableDeletionVectors.as_ref())
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    })
}

/// Turns deletion vectors on for a table created without them (its own commit: the protocol
/// goes to reader 3 / writer 7).
async fn enable_deletion_vectors(table: DeltaTable) -> deltalake::DeltaResult<DeltaTable> {
    if has_deletion_vectors(&table) {
        return Ok(table);
    }
    tracing::info!(stage = "commit", table = %table.table_url(), "enabling deletion vectors (protocol reader 3 / writer 7)");
    table
        .set_tbl_properties()
        .with_properties(HashMap::from([(
            TableProperty::EnableDeletionVectors.as_ref().to_string(),
            "true".to_string(),
        )]))
        .await
}

fn s(name: &str) -> Expr {
    Expr::Column(Column::new(Some("source"), name))
}

fn t(name: &str) -> Expr {
    Expr::Column(Column::new(Some("target"), name))
}

fn target_col(name: &str) -> Column {
    Column::new_unqualified(name)
}

async fn merge(
    table: DeltaTable,
    spec: &TableSpec,
    source: RecordBatch,
    new_columns: &[String],
    info: HashMap<String, Value>,
) -> deltalake::DeltaResult<(DeltaTable, Option<MergeMetrics>)> {
    let data_cols: Vec<String> = source
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| !n.starts_with("_dms_"))
        .collect();
    let nosup_idx = source.schema().index_of(NOSUP).ok();
    let any_nosup = nosup_idx.is_some_and(|i| source.column(i).null_count() < source.num_rows());
    let in_table: Vec<String> = table
        .snapshot()?
        .snapshot()
        .arrow_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let tracked = Tracked::new(&source, &in_table);
    // MERGE with schema evolution wants every assigned column in the source, so the soft
    // delete columns are computed here rather than as expressions.
    let source = if spec.delete_mode == DeleteMode::Soft {
        with_soft_delete_columns(source)?
    } else {
        source
    };
    let ctx = SessionContext::new();
    let df = ctx.read_batch(source)?;
    let on = spec
        .keys
        .iter()
        .map(|k| t(k).eq(s(k)))
        .reduce(Expr::and)
        .ok_or_else(|| deltalake::DeltaTableError::Generic("a table without keys".into()))?;
    let newer = s(SEQ).gt(t(SEQ));
    let is_delete = s(OP).eq(lit("D"));
    // A column the source did not log keeps the table's value.
    let value = |c: &str| -> Expr {
        if tracked.has(c) {
            tracked.newer_value(c, lit(true))
        } else if any_nosup && !new_columns.iter().any(|n| n == c) {
            when(unlogged(c), t(c)).otherwise(s(c)).unwrap_or_else(|_| s(c))
        } else {
            s(c)
        }
    };
    let props = CommitProperties::default().with_metadata(info);
    let mut m = table
        .merge(df, on)
        .with_source_alias("source")
        .with_target_alias("target")
        .with_merge_schema(!new_columns.is_empty())
        .with_commit_properties(props);
    match spec.delete_mode {
        DeleteMode::Hard => {
            m = m.when_matched_delete(|d| d.predicate(newer.clone().and(is_delete.clone())))?;
            m = m.when_matched_update(|u| {
                let mut u = u.predicate(newer.clone());
                for c in &data_cols {
                    u = u.update(target_col(c), value(c));
                }
                u = tracked.newer_seqs(u, lit(true));
                u.update(target_col(SEQ), s(SEQ))
                    .update(target_col(COMMIT_TS), s(COMMIT_TS))
            })?;
            if let Some(older) = tracked.older_predicate() {
                m = m.when_matched_update(|u| tracked.older_update(u.predicate(older.and(is_delete.clone().not()))))?;
            }
            m = m.when_not_matched_insert(|i| {
                let mut i = i.predicate(s(OP).not_eq(lit("D")));
                for c in &data_cols {
                    i = i.set(target_col(c), s(c));
                }
                i = tracked.insert_seqs(i, true);
                i.set(target_col(SEQ), s(SEQ)).set(target_col(COMMIT_TS), s(COMMIT_TS))
            })?;
        }
        DeleteMode::Soft => {
            // A full delete image is the row as it was deleted, whatever order the changes
            // came in; a key-only image (PostgreSQL's default replica identity) carries no
            // values, so the row keeps the ones it has. See merge_on_read's `full_image`.
            let full_image = data_cols
                .iter()
                .filter(|c| !spec.keys.contains(c))
                .map(|c| s(c).is_not_null())
                .reduce(Expr::or)
                .unwrap_or_else(|| lit(false));
            m = m.when_matched_update(|u| {
                let mut u = u.predicate(newer.clone().and(is_delete.clone()));
                for c in data_cols.iter().filter(|c| !spec.keys.contains(c)) {
                    let image = if tracked.has(c) {
                        tracked.newer_value(c, full_image.clone())
                    } else {
                        when(full_image.clone(), value(c))
                            .otherwise(t(c))
                            .unwrap_or_else(|_| t(c))
                    };
                    u = u.update(target_col(c), image);
                }
                u = tracked.newer_seqs(u, full_image.clone());
                u.update(target_col(DELETED), s(DELETED))
                    .update(target_col(DELETED_AT), s(DELETED_AT))
                    .update(target_col(SEQ), s(SEQ))
                    .update(target_col(COMMIT_TS), s(COMMIT_TS))
            })?;
            m = m.when_matched_update(|u| {
                let mut u = u.predicate(newer.clone());
                for c in &data_cols {
                    u = u.update(target_col(c), value(c));
                }
                u = tracked.newer_seqs(u, lit(true));
                u.update(target_col(SEQ), s(SEQ))
                    .update(target_col(COMMIT_TS), s(COMMIT_TS))
                    .update(target_col(DELETED), s(DELETED))
                    .update(target_col(DELETED_AT), s(DELETED_AT))
            })?;
            if let Some(older) = tracked.older_predicate() {
                m = m.when_matched_update(|u| tracked.older_update(u.predicate(older.and(is_delete.clone().not()))))?;
            }
            m = m.when_not_matched_insert(|i| {
                let mut i = i.predicate(s(OP).not_eq(lit("D")));
                for c in &data_cols {
                    i = i.set(target_col(c), s(c));
                }
                i = tracked.insert_seqs(i, true);
                i.set(target_col(SEQ), s(SEQ))
                    .set(target_col(COMMIT_TS), s(COMMIT_TS))
                    .set(target_col(DELETED), s(DELETED))
                    .set(target_col(DELETED_AT), s(DELETED_AT))
            })?;
            // A delete for a key never seen leaves a deleted marker row: it is also the
            // tombstone that keeps a late insert from bringing the key back.
            m = m.when_not_matched_insert(|i| {
                let mut i = i.predicate(is_delete.clone());
                for c in &data_cols {
                    i = i.set(target_col(c), s(c));
                }
                i = tracked.insert_seqs(i, false);
                i.set(target_col(SEQ), s(SEQ))
                    .set(target_col(COMMIT_TS), s(COMMIT_TS))
                    .set(target_col(DELETED), s(DELETED))
                    .set(target_col(DELETED_AT), s(DELETED_AT))
            })?;
        }
    }
    let (table, metrics) = m.await?;
    Ok((table, Some(metrics)))
}

/// Whether the change did not log `c` (never NULL, unlike `contains` on a NULL list).
fn unlogged(c: &str) -> Expr {
    contains(coalesce(vec![s(NOSUP), lit("")]), lit(format!("|{c}|")))
}

/// The columns with their own sequence (`_dms_seq_of_<column>`) in a MERGE: a column takes a
/// change's value only if the change logged it and its value is newer than the table's, so a
/// late, older change still sets a column a newer change did not log.
struct Tracked {
    /// (column, whether the table has the column, whether it has its sequence column).
    columns: Vec<(String, bool, bool)>,
}

impl Tracked {
    fn new(source: &RecordBatch, in_table: &[String]) -> Tracked {
        let has = |n: &str| in_table.iter().any(|t| t == n);
        let columns = source
            .schema()
            .fields()
            .iter()
            .filter_map(|f| column_of_seq(f.name()))
            .map(|c| (c.to_string(), has(c), has(&column_seq_name(c))))
            .collect();
        Tracked { columns }
    }

    fn has(&self, c: &str) -> bool {
        self.columns.iter().any(|(n, ..)| n == c)
    }

    fn entry(&self, c: &str) -> (bool, bool) {
        self.columns
            .iter()
            .find(|(n, ..)| n == c)
            .map_or((false, false), |&(_, col, seq)| (col, seq))
    }

    /// The sequence of the change that set the source's value of `c`.
    fn source_seq(c: &str) -> Expr {
        coalesce(vec![s(&column_seq_name(c)), s(SEQ)])
    }

    /// The sequence of the change that set the table's value of `c`.
    fn target_seq(&self, c: &str) -> Expr {
        match self.entry(c) {
            (_, true) => coalesce(vec![t(&column_seq_name(c)), t(SEQ)]),
            _ => t(SEQ),
        }
    }

    /// Whether a newer change (`applies`: it carries values at all) sets `c`.
    fn takes(&self, c: &str, applies: Expr) -> Expr {
        let newer_value = Tracked::source_seq(c).gt(self.target_seq(c));
        applies.and(unlogged(c).not()).and(newer_value)
    }

    fn newer_value(&self, c: &str, applies: Expr) -> Expr {
        if !self.entry(c).0 {
            // The table gains the column now: it has no value to keep.
            return s(c);
        }
        when(self.takes(c, applies), s(c))
            .otherwise(t(c))
            .unwrap_or_else(|_| s(c))
    }

    /// The column sequences after a newer change (`applies` as for [`Tracked::takes`]).
    fn newer_seqs(&self, mut u: UpdateBuilder, applies: Expr) -> UpdateBuilder {
        for (c, in_table, _) in &self.columns {
            let seq = if *in_table {
                when(self.takes(c, applies.clone()), s(&column_seq_name(c)))
                    .otherwise(self.target_seq(c))
                    .unwrap_or_else(|_| s(&column_seq_name(c)))
            } else {
                self.insert_seq(c)
            };
            u = u.update(target_col(&column_seq_name(c)), seq);
        }
        u
    }

    /// A row the change creates: a column it did not log has no value from any change yet, so
    /// the oldest sequence (`''`) lets any change that logged it fill it in.
    fn insert_seq(&self, c: &str) -> Expr {
        when(unlogged(c), lit(""))
            .otherwise(s(&column_seq_name(c)))
            .unwrap_or_else(|_| s(&column_seq_name(c)))
    }

    fn insert_seqs(&self, mut i: InsertBuilder, row: bool) -> InsertBuilder {
        for (c, ..) in &self.columns {
            let seq = if row {
                self.insert_seq(c)
            } else {
                s(&column_seq_name(c))
            };
            i = i.set(target_col(&column_seq_name(c)), seq);
        }
        i
    }

    /// An older change sets `c` where the table's value came from an even older change.
    fn fills(c: &str) -> Expr {
        let seq = t(&column_seq_name(c));
        seq.clone()
            .is_not_null()
            .and(unlogged(c).not())
            .and(Tracked::source_seq(c).gt(seq))
    }

    /// Matched rows an older change still has values for, if the table tracks any column. "Older"
    /// includes the same row sequence: a redelivered change whose not-logged column the
    /// deduplication filled from an older change of the same commit carries more than the row
    /// the table holds for it.
    fn older_predicate(&self) -> Option<Expr> {
        self.columns
            .iter()
            .filter(|(_, col, seq)| *col && *seq)
            .map(|(c, ..)| Tracked::fills(c))
            .reduce(Expr::or)
            .map(|any| s(SEQ).lt_eq(t(SEQ)).and(any))
    }

    fn older_update(&self, mut u: UpdateBuilder) -> UpdateBuilder {
        for (c, ..) in self.columns.iter().filter(|(_, col, seq)| *col && *seq) {
            let name = column_seq_name(c);
            u = u
                .update(
                    target_col(c),
                    when(Tracked::fills(c), s(c)).otherwise(t(c)).unwrap_or_else(|_| t(c)),
                )
                .update(
                    target_col(&name),
                    when(Tracked::fills(c), Tracked::source_seq(c))
                        .otherwise(t(&name))
                        .unwrap_or_else(|_| t(&name)),
                );
        }
        u
    }
}

/// Adds `_dms_deleted` (the change is a delete) and `_dms_deleted_at` (its source commit time,
/// or now when unknown) to a change set.
fn with_soft_delete_columns(source: RecordBatch) -> deltalake::DeltaResult<RecordBatch> {
    let schema = source.schema();
    let op = source.column(schema.index_of(OP)?).as_string::<i32>();
    let ts = source
        .column(schema.index_of(COMMIT_TS)?)
        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    let now = chrono::Utc::now().timestamp_micros();
    let deleted: arrow::array::BooleanArray = op.iter().map(|o| Some(o == Some("D"))).collect();
    let at: arrow::array::TimestampMicrosecondArray = (0..source.num_rows())
        .map(|r| (op.value(r) == "D").then(|| if ts.is_null(r) { now } else { ts.value(r) }))
        .collect();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(DELETED, DataType::Boolean, true));
    fields.push(Field::new(DELETED_AT, ts_type(), true));
    let mut cols = source.columns().to_vec();
    cols.push(Arc::new(deleted));
    cols.push(Arc::new(at.with_timezone(UTC)));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// A commit that changes no data but records which change sets were applied.
async fn trace_only_commit(table: &DeltaTable, info: HashMap<String, Value>) -> deltalake::DeltaResult<u64> {
    let snapshot = table.snapshot()?;
    let current = snapshot
        .transaction_version(table.log_store().as_ref(), APP_ID)
        .await?
        .unwrap_or(0);
    let actions = vec![Action::Txn(Transaction::new(APP_ID, current + 1))];
    let op = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    let done = DeltaCommitBuilder::default()
        .with_actions(actions)
        .with_app_metadata(info)
        .build(Some(snapshot), table.log_store(), op)
        .await?;
    Ok(done.version())
}

fn internal(reason: String) -> Error {
    Error::internal(Stage::Commit, "change set", reason)
}

/// The lowest sequence of a change set's changes.
fn oldest_seq(batches: &[RecordBatch]) -> Option<String> {
    batches
        .iter()
        .filter_map(|b| b.column_by_name(SEQ)?.as_string_opt::<i32>().cloned())
        .filter_map(|seqs| seqs.iter().flatten().min().map(str::to_string))
        .min()
}

/// The oldest change of the files `newer` picks, among the change sets being applied and the
/// table's commits since `since` (16 digits of UTC time; files written after it cannot have
/// been committed before it, and a few minutes are allowed for the writers' clocks).
async fn first_change_of_files(
    table: &DeltaTable,
    newer: &(dyn Fn(&str) -> bool + Sync),
    since: &str,
    applied: &[Pending],
) -> deltalake::DeltaResult<Option<String>> {
    let mut first = applied
        .iter()
        .filter(|p| newer(&p.meta.source_file))
        .filter_map(|p| oldest_seq(&p.batches))
        .min();
    let since_ms = crate::route::digits_to_micros(&format!("{since}00")).map_or(i64::MIN, |us| us / 1000 - 600_000);
    let mut history = table.history(None);
    while let Some(ci) = history.try_next().await? {
        if ci.timestamp.is_some_and(|t| t < since_ms) {
            break;
        }
        let Some(seqs) = ci
            .info
            .get(COMMIT_INFO_KEY)
            .and_then(|i| i.get("first_seqs")?.as_object())
        else {
            continue;
        };
        for (file, seq) in seqs {
            if let Some(seq) = seq.as_str().filter(|_| newer(file)) {
                if first.as_deref().is_none_or(|f| seq < f) {
                    first = Some(seq.to_string());
                }
            }
        }
    }
    Ok(first)
}

/// Which source files each version applied, newest first (from the commits' `commitInfo`).
pub async fn applied_files(stores: &Stores, loc: &Location, limit: Option<usize>) -> Result<Vec<(u64, Vec<String>)>> {
    let (table, exists) = lake::open(stores, loc).await?;
    if !exists {
        return Ok(Vec::new());
    }
    let infos: Vec<_> = table
        .history(limit)
        .try_collect()
        .await
        .map_err(|e| delta_err(Stage::Commit, loc, e))?;
    // History comes newest first, one commitInfo per version (delta-rs writes one in every
    // commit), so the position tells the version.
    let latest = table.version().unwrap_or(0);
    Ok(infos
        .into_iter()
        .enumerate()
        .filter_map(|(i, ci)| {
            let files = ci.info.get(COMMIT_INFO_KEY)?.get("source_files")?.as_array()?;
            let version = latest.checked_sub(i as u64)?;
            Some((
                version,
                files.iter().filter_map(|f| f.as_str().map(str::to_string)).collect(),
            ))
        })
        .collect())
}

/// The ids of the change sets the table's commits recorded (see [`crate::stage::change_set_id`]):
/// a DMS object version is applied when its id is here. Empty when there is no table yet.
pub async fn applied_change_sets(stores: &Stores, loc: &Location) -> Result<Vec<String>> {
    if let Location::Local { dir } = stores.physical(loc) {
        // Opening a folder-backed table creates its folder; a table never written has none.
        if !dir.join("_delta_log").exists() {
            return Ok(Vec::new());
        }
    }
    let (table, exists) = lake::open(stores, loc).await?;
    if !exists {
        return Ok(Vec::new());
    }
    let infos: Vec<_> = table
        .history(None)
        .try_collect()
        .await
        .map_err(|e| delta_err(Stage::Commit, loc, e))?;
    Ok(infos
        .iter()
        .filter_map(|ci| ci.info.get(COMMIT_INFO_KEY)?.get("change_sets")?.as_array())
        .flatten()
        .filter_map(|p| p.as_str())
        .filter_map(|p| p.rsplit('/').next()?.strip_suffix(".parquet"))
        .map(str::to_string)
        .collect())
}
