//! Raising a table's floor once a reload or truncate its staging folder records is due.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::config::TableSpec;
use crate::error::{Error, Result, Stage};
use crate::generation::{Anchor, FloorKind};
use crate::lake::{self, delta_err, is_conflict};
use crate::model::columns::SEQ;
use crate::operations::floor;
use crate::operations::retry::backoff;
use crate::operations::truncate::written_after;
use crate::storage::Location;

use super::commit_info::first_change_of_files;
use super::{CommitChangesBuilder, CommitMetrics, Pending};

impl CommitChangesBuilder<'_> {
    /// Raises the table's floor for the reloads and truncates its staging folder records (see
    /// [`crate::generation`]) once each is due: a truncate at once; a reload when a change
    /// written after its load has been committed (here, in `applied`, or since: any change
    /// above the anchor that is not one of the reload's own rows), or when its marker is older
    /// than `reloads.settle_after_seconds`. Markers at or below the floor are removed.
    pub(super) async fn settle_floors(
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
}

/// Whether `b` holds a change written after the load of the generation anchored at `anchor`.
fn has_later_change(b: &RecordBatch, anchor: &Anchor) -> bool {
    let Ok(i) = b.schema().index_of(SEQ) else { return false };
    let seqs = b.column(i).as_string::<i32>();
    (0..seqs.len()).any(|r| !seqs.is_null(r) && anchor.is_later_change(seqs.value(r)))
}
