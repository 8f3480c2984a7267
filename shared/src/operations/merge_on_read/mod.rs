//! The sequence-guarded MERGE without a query plan, retiring the rows it replaces either in
//! deletion vectors (merge-on-read) or by writing their files again without them
//! (copy-on-write, [`Retire`]).
//!
//! A copy-on-write MERGE rewrites every data file that holds a changed key: a 10,000-change
//! batch spread over a 10M-row table rewrites all of it. With deletion vectors the cost follows
//! the changes: the key columns of the files that may hold a changed key are read, then the
//! stored sequence (and, when a change keeps old values, the old row) of only the matched rows;
//! the matched rows go into each file's deletion vector and the new versions into one new file,
//! all in one commit. Without them the files holding matched rows are copied without those rows
//! into the same new file; that costs what delta-rs's MERGE costs in bytes, but not its query
//! plan, a fixed 20-25 ms a commit that dominated small per-file commits (issue #18).
//!
//! The semantics are those of `commit::merge`, row for row: a change applies only when its
//! sequence is higher than the stored one; `D` deletes (hard) or flags the row (soft); a column
//! listed in `_dms_nosup` keeps the stored value; a key the table lacks is inserted unless the
//! change is a delete (soft mode inserts a deleted marker row for it). A column with its own
//! sequence (`_dms_seq_of_<column>`) takes a change's value only when the change logged it and
//! the value is newer than the stored one, and an older change still sets it where the stored
//! value is even older (a new row version with the stored sequence). The caller runs delta-rs's
//! MERGE instead for commits that add columns (it evolves the schema).

mod assembly;
mod data_file;
mod first_load;
mod key_index;
mod marking;
mod parquet_file;
mod purge;
mod rewrite;
mod scan;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, SchemaRef};
use deltalake::kernel::transaction::CommitBuilder as DeltaCommitBuilder;
use deltalake::kernel::Action;
use deltalake::operations::merge::MergeMetrics;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaResult, DeltaTable, DeltaTableError};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

pub use first_load::{first_load_range, FirstLoad};
pub use purge::{purge_deleted_rows, Purged};

use crate::config::{DeleteMode, TableSpec};
use crate::deletion_vector::{DvError, DvFileWriter};
use crate::model::columns::{column_of_seq, column_seq_name, COMMIT_TS, NOSUP, OP, SEQ};
use crate::operations::change_feed;
use assembly::{full_images, new_rows_batch};
use data_file::{data_file, DataFile};
use first_load::may_meet_first_load;
use key_index::KeyIndex;
use marking::{decide, ColumnSeqs, Marks};
use rewrite::copy_without;
use scan::{scan_file, Hits, ScanInput, CONCURRENT_FILES, KEEP_WHOLE_BYTES};

/// How a commit retires the stored rows its changes replace or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// Marked in their files' deletion vectors (the table must have the feature).
    DeletionVectors,
    /// Their files written again without them, in the same commit (copy-on-write).
    Rewrite,
}

/// What a merge-on-read commit did, beyond what `MergeMetrics` says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DvCounts {
    /// Data files that got a new deletion vector.
    pub files_marked: u64,
    /// Rows those new vectors add.
    pub rows_marked: u64,
}

fn dv_err(e: DvError) -> DeltaTableError {
    match e {
        DvError::Storage { source, .. } => DeltaTableError::ObjectStore { source },
        other => DeltaTableError::GenericError {
            source: Box::new(other),
        },
    }
}

/// Applies `source` (deduplicated changes, tombstones already applied) to `table` in one commit.
/// Returns the table as committed (unchanged when every change was stale) and the metrics.
/// A first full load's change set reads only the files it may meet (see [`first_load_range`]).
pub async fn apply(
    table: DeltaTable,
    spec: &TableSpec,
    source: RecordBatch,
    info: HashMap<String, Value>,
    retire: Retire,
) -> DeltaResult<(DeltaTable, MergeMetrics, DvCounts)> {
    let started = Instant::now();
    let snapshot = table.snapshot()?.clone();
    let table_schema = snapshot.snapshot().arrow_schema();
    let src_schema = source.schema();
    let col = |name: &str| -> DeltaResult<&ArrayRef> { Ok(source.column(src_schema.index_of(name)?)) };
    let op = col(OP)?.as_string::<i32>().clone();
    let seq = cast(col(SEQ)?, &DataType::Utf8)?;
    let seq = seq.as_string::<i32>().clone();
    let commit_ts = cast(
        col(COMMIT_TS)?,
        &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
    )?;
    let commit_ts = commit_ts
        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
        .clone();
    let nosup = match src_schema.index_of(NOSUP) {
        Ok(i) if source.column(i).null_count() < source.num_rows() => {
            Some(cast(source.column(i), &DataType::Utf8)?.as_string::<i32>().clone())
        }
        _ => None,
    };
    let soft = spec.delete_mode == DeleteMode::Soft;
    let any_delete = op.iter().any(|o| o == Some("D"));
    let tracked: Vec<String> = table_schema
        .fields()
        .iter()
        .filter_map(|f| column_of_seq(f.name()))
        .filter(|c| table_schema.index_of(c).is_ok() && src_schema.index_of(&column_seq_name(c)).is_ok())
        .map(str::to_string)
        .collect();
    // The change feed records every retired row as it was.
    let feed = change_feed::is_enabled(&table);
    // The stored row is needed only when a change keeps some of its values.
    let need_old = nosup.is_some() || (soft && any_delete) || !tracked.is_empty() || feed;
    let columns: SchemaRef = if need_old {
        table_schema.clone()
    } else {
        Arc::new(table_schema.project(&[table_schema.index_of(SEQ)?])?)
    };

    let key_cols: Vec<ArrayRef> = spec
        .keys
        .iter()
        .map(|k| {
            let target = table_schema.field_with_name(k)?.data_type().clone();
            Ok(cast(col(k)?, &target)?)
        })
        .collect::<DeltaResult<_>>()?;
    let keys = Arc::new(KeyIndex::build(&key_cols)?);

    let views: Vec<_> = table.get_active_add_actions_by_predicate(None).try_collect().await?;
    let files: Vec<Arc<DataFile>> = views.iter().map(|v| Arc::new(data_file(v))).collect();
    let load = first_load_range(&seq);
    let candidates: Vec<usize> = (0..files.len())
        .filter(|i| keys.may_hold(files[*i].stats.as_deref(), &spec.keys[0]))
        .filter(|i| {
            load.as_ref()
                .is_none_or(|l| may_meet_first_load(files[*i].stats.as_deref(), l))
        })
        .collect();
    let input = Arc::new(ScanInput {
        store: table.object_store(),
        table_root: table.table_url().clone(),
        keys,
        key_names: Arc::new(spec.keys.clone()),
        key_types: key_cols.iter().map(|k| k.data_type().clone()).collect(),
        columns,
        keep_whole: AtomicU64::new(if retire == Retire::Rewrite { KEEP_WHOLE_BYTES } else { 0 }),
    });
    let mut hits: Vec<Hits> = futures::stream::iter(candidates.iter().copied())
        .map(|i| {
            let (input, file) = (input.clone(), files[i].clone());
            async move {
                tokio::spawn(scan_file(input, i, file))
                    .await
                    .map_err(|e| DeltaTableError::Generic(format!("file scan task: {e}")))?
            }
        })
        .buffer_unordered(CONCURRENT_FILES)
        .try_filter_map(|h| async move { Ok(h) })
        .try_collect()
        .await?;
    hits.sort_by_key(|h| h.file);
    let scan_ms = started.elapsed().as_millis() as u64;

    // Decide each change against the rows it matched.
    let n = source.num_rows();
    let stored_seq: Vec<StringArray> = hits
        .iter()
        .map(|h| -> DeltaResult<StringArray> {
            Ok(cast(h.old.column(h.old.schema().index_of(SEQ)?), &DataType::Utf8)?
                .as_string::<i32>()
                .clone())
        })
        .collect::<DeltaResult<_>>()?;
    let column_seqs = ColumnSeqs {
        source: tracked
            .iter()
            .map(|c| {
                Ok(cast(col(&column_seq_name(c))?, &DataType::Utf8)?
                    .as_string::<i32>()
                    .clone())
            })
            .collect::<DeltaResult<_>>()?,
        stored: hits
            .iter()
            .map(|h| {
                tracked
                    .iter()
                    .map(|c| {
                        let a = h.old.column(h.old.schema().index_of(&column_seq_name(c))?);
                        Ok(cast(a, &DataType::Utf8)?.as_string::<i32>().clone())
                    })
                    .collect::<DeltaResult<Vec<_>>>()
            })
            .collect::<DeltaResult<_>>()?,
        stored_seq,
        seq: seq.clone(),
        nosup: nosup.clone(),
        columns: tracked,
    };
    let mut metrics = MergeMetrics {
        num_source_rows: n,
        num_target_files_scanned: candidates.len(),
        num_target_files_skipped_during_scan: files.len() - candidates.len(),
        ..Default::default()
    };
    let Marks {
        marks,
        new_rows,
        changes,
    } = decide(&hits, &op, &seq, &column_seqs, (soft, feed), &mut metrics);
    metrics.num_output_rows = new_rows.len();

    let write_started = Instant::now();
    let mut actions: Vec<Action> = Vec::new();
    let mut counts = DvCounts::default();
    let mut writer = RecordBatchWriter::for_table(&table)?;
    let dv_file = match retire {
        Retire::DeletionVectors => {
            let mut dv_file = DvFileWriter::new();
            let mut marked: Vec<&DataFile> = Vec::new();
            for (h, rows) in marks.iter().enumerate() {
                if rows.is_empty() {
                    continue;
                }
                let hit = &hits[h];
                let mut deleted = hit.deleted_before.clone();
                let before = deleted.len();
                deleted.extend(rows.iter().copied());
                counts.files_marked += 1;
                counts.rows_marked += deleted.len() - before;
                dv_file.add(&deleted);
                marked.push(&files[hit.file]);
            }
            if dv_file.is_empty() {
                None
            } else {
                let (dv_file, descriptors) = dv_file.finish(&input.table_root).map_err(dv_err)?;
                for (file, descriptor) in marked.into_iter().zip(descriptors) {
                    actions.push(file.remove(true));
                    actions.push(file.with_deletion_vector(descriptor));
                }
                Some(dv_file)
            }
        }
        Retire::Rewrite => {
            for (h, rows) in marks.iter().enumerate() {
                if rows.is_empty() {
                    continue;
                }
                let hit = &hits[h];
                let mut dropped = hit.deleted_before.clone();
                dropped.extend(rows.iter().copied());
                let file = &files[hit.file];
                let kept = copy_without(&mut writer, input.store.clone(), file, &dropped, hit.whole.clone()).await?;
                metrics.num_target_rows_copied += kept as usize;
                metrics.num_target_files_removed += 1;
                actions.push(file.remove(true));
            }
            None
        }
    };
    let mut written: Option<RecordBatch> = None;
    if !new_rows.is_empty() {
        let full = full_images(&source, &spec.keys);
        let chosen = column_seqs.choose(&new_rows, &full);
        let batch = new_rows_batch(
            &writer.arrow_schema(),
            &spec.keys,
            &source,
            &hits,
            &new_rows,
            nosup.as_ref(),
            &commit_ts,
            &full,
            (&column_seqs.columns, &chosen),
        )?;
        if feed {
            written = Some(batch.clone());
        }
        writer.write(batch).await?;
    }
    // The copied rows and the new versions go out together: one new file per partition.
    let adds = writer.flush().await?;
    metrics.num_target_files_added = adds.len();
    actions.extend(adds.into_iter().map(Action::Add));
    if actions.is_empty() {
        metrics.execution_time_ms = started.elapsed().as_millis() as u64;
        metrics.scan_time_ms = scan_ms;
        return Ok((table, metrics, counts));
    }
    if let Some(dv_file) = dv_file {
        dv_file.put(input.store.as_ref()).await.map_err(dv_err)?;
    }
    if feed {
        let old: Vec<&RecordBatch> = hits.iter().map(|h| &h.old).collect();
        let replaces: Vec<bool> = new_rows.iter().map(|r| r.old.is_some()).collect();
        let rows = changes.rows(&table_schema, &old, written.as_ref(), &replaces)?;
        actions.extend(change_feed::write(&table, rows).await?);
    }
    // Read as a MERGE over the whole table: any concurrent data change conflicts and the
    // commit stage retries from a fresh snapshot, as with the copy-on-write MERGE.
    let operation = DeltaOperation::Merge {
        predicate: None,
        merge_predicate: Some(
            spec.keys
                .iter()
                .map(|k| format!("target.{k} = source.{k}"))
                .collect::<Vec<_>>()
                .join(" AND "),
        ),
        matched_predicates: vec![],
        not_matched_predicates: vec![],
        not_matched_by_source_predicates: vec![],
    };
    let table = commit(table, &snapshot, actions, info, operation).await?;
    metrics.rewrite_time_ms = write_started.elapsed().as_millis() as u64;
    metrics.scan_time_ms = scan_ms;
    metrics.execution_time_ms = started.elapsed().as_millis() as u64;
    Ok((table, metrics, counts))
}

/// Commits `actions` on top of `snapshot` (delta-rs checks concurrent commits against it) and
/// returns the table at the new version.
async fn commit(
    table: DeltaTable,
    snapshot: &deltalake::table::state::DeltaTableState,
    actions: Vec<Action>,
    info: HashMap<String, Value>,
    operation: DeltaOperation,
) -> DeltaResult<DeltaTable> {
    let done = DeltaCommitBuilder::default()
        .with_actions(actions)
        .with_app_metadata(info)
        .build(Some(snapshot), table.log_store(), operation)
        .await?;
    // The commit's post-commit step already brought the snapshot to the new version: reading
    // the log again would cost two more requests.
    let mut table = table;
    table.state = Some(done.snapshot());
    Ok(table)
}
