//! One attempt at a table's commit: everything that reads the table's current version and may
//! conflict with another writer, so the builder can retry it as a whole.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Field;
use deltalake::kernel::StructField;

use crate::config::{DeleteMode, TableSpec};
use crate::error::{Error, Result, Stage};
use crate::failpoint;
use crate::lake::{self, delta_err, is_conflict};
use crate::model::columns::{column_of_seq, COMMIT_TS};
use crate::operations::merge_on_read::{self, DvCounts, Retire};
use crate::operations::truncate::written_after;
use crate::operations::widen::{before_full_rewrite, widen_table};
use crate::operations::{change_feed, floor, tombstones};
use crate::storage::Location;
use crate::unify::unify;

use super::commit_info::{commit_info, trace_only_commit};
use super::create::{create_table, enable_deletion_vectors};
use super::merge::merge;
use super::{Attempt, AttemptResult, CommitChangesBuilder, Pending};

impl CommitChangesBuilder<'_> {
    pub(super) async fn attempt(
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
        // Without a query plan unless the commit adds columns (delta-rs's MERGE evolves the
        // schema): replaced rows go into deletion vectors where the table uses them, else their
        // files are written again in the same commit.
        let applied = if source.num_rows() == 0 {
            Ok((table, None, DvCounts::default()))
        } else if !new_columns.is_empty() {
            merge(table, spec, source, &new_columns, info.clone())
                .await
                .map(|(t, m)| (t, m, DvCounts::default()))
        } else {
            async {
                let (table, retire) = if spec.deletion_vectors {
                    (enable_deletion_vectors(table).await?, Retire::DeletionVectors)
                } else {
                    (table, Retire::Rewrite)
                };
                let (table, m, dv) = merge_on_read::apply(table, spec, source, info.clone(), retire).await?;
                Ok::<_, deltalake::DeltaTableError>((table, Some(m), dv))
            }
            .await
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

fn newest_commit_ts(b: &RecordBatch) -> Option<i64> {
    let i = b.schema().index_of(COMMIT_TS).ok()?;
    let a = b.column(i).as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    arrow::compute::max(a)
}

fn internal(reason: String) -> Error {
    Error::internal(Stage::Commit, "change set", reason)
}
