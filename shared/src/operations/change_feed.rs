//! Delta Change Data Feed (`change_data_feed`): every commit that changes rows also records
//! the change, row by row, so downstream readers (`load_cdf` in delta-rs and the Python
//! `deltalake` package, Spark's `table_changes`) can read only what changed between versions.
//!
//! What writes the feed, by commit path:
//! - the copy-on-write MERGE, the floors' DELETE / UPDATE (reload sweeps, truncates): delta-rs
//!   writes `_change_data` files itself once the table property is set;
//! - merge-on-read commits, which assemble their own actions: [`write`] here, fed with the stored
//!   rows each commit retires and the row versions it writes ([`MergeOnReadChanges`]);
//! - a widening rewrite (a full overwrite) writes no change files: readers take its removed
//!   files as deletes and its added files as inserts, so the feed shows every row deleted and
//!   inserted again at the wider type (see [`super::widen::before_full_rewrite`] for deletion vectors).
//!
//! A change the sequence guard refuses changes no row, so it never reaches the feed; nor do
//! commits that change no data (compaction, purges, trace-only commits).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch, StringArray};
use arrow::compute::{cast, concat_batches, interleave};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::kernel::{Action, AddCDCFile};
use deltalake::operations::write::writer::{DeltaWriter, WriterConfig};
use deltalake::table::config::TablePropertiesExt;
use deltalake::{DeltaResult, DeltaTable, TableProperty};
use object_store::prefix::PrefixStore;

/// The column that says what a row of the feed is.
pub const CHANGE_TYPE: &str = "_change_type";
/// The folder of a table's change files, as the protocol names it.
pub const CHANGE_DATA_DIR: &str = "_change_data";

pub const INSERT: &str = "insert";
pub const DELETE: &str = "delete";
pub const PREIMAGE: &str = "update_preimage";
pub const POSTIMAGE: &str = "update_postimage";

/// Whether commits to `table` must write change data: the property is on and, at writer
/// version 7, the protocol lists the feature. The same test delta-rs applies before its own
/// DML writes change files, so both commit paths agree on every table.
pub fn is_enabled(table: &DeltaTable) -> bool {
    let Ok(snapshot) = table.snapshot() else {
        return false;
    };
    let protocol = snapshot.protocol();
    if protocol.min_writer_version() >= 7 {
        let listed = protocol
            .writer_features()
            .is_some_and(|fs| fs.iter().any(|f| f.to_string() == "changeDataFeed"));
        if !listed {
            return false;
        }
    }
    snapshot.table_config().enable_change_data_feed()
}

/// Whether the table's metadata says the feed is on (whatever the protocol lists).
fn property_on(table: &DeltaTable) -> Option<bool> {
    let snapshot = table.snapshot().ok()?;
    let v = snapshot
        .metadata()
        .configuration()
        .get(TableProperty::EnableChangeDataFeed.as_ref())?;
    Some(v.eq_ignore_ascii_case("true"))
}

/// Brings the table's property in line with the configuration (its own commit, only when it
/// differs). Turning the option off sets the property to `false`, so no engine expects change
/// files from the commits that follow; the feed then ends at that version.
pub async fn apply_setting(table: DeltaTable, want: bool) -> DeltaResult<DeltaTable> {
    let differs = if want {
        !is_enabled(&table)
    } else {
        property_on(&table) == Some(true)
    };
    if !differs {
        return Ok(table);
    }
    tracing::info!(stage = "commit", table = %table.table_url(), enable = want, "setting delta.enableChangeDataFeed");
    table
        .set_tbl_properties()
        .with_properties(HashMap::from([(
            TableProperty::EnableChangeDataFeed.as_ref().to_string(),
            want.to_string(),
        )]))
        .await
}

/// Writes `changes` (the table's columns plus [`CHANGE_TYPE`]) as change files of `table` and
/// returns their actions, for the caller's commit. Partitioned tables get one file per
/// partition, the partition values in the action as for data files.
pub async fn write(table: &DeltaTable, changes: RecordBatch) -> DeltaResult<Vec<Action>> {
    if changes.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let snapshot = table.snapshot()?;
    let partition_columns = snapshot.metadata().partition_columns().to_vec();
    let schema = feed_schema(&snapshot.snapshot().arrow_schema());
    let batch = conform(&changes, &schema)?;
    let config = WriterConfig::new(
        schema,
        partition_columns,
        None,
        None,
        None,
        snapshot.table_config().num_indexed_cols(),
        None,
    );
    let store = Arc::new(PrefixStore::new(table.object_store(), CHANGE_DATA_DIR));
    let mut writer = DeltaWriter::new(store, config);
    writer.write(&batch).await?;
    let adds = writer.close().await?;
    Ok(adds
        .into_iter()
        .map(|a| {
            Action::Cdc(AddCDCFile {
                path: format!("{CHANGE_DATA_DIR}/{}", a.path),
                size: a.size,
                partition_values: a.partition_values,
                // Change files never change the table's data.
                data_change: false,
                tags: None,
            })
        })
        .collect())
}

/// The table's schema with the change type after it.
fn feed_schema(table: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = table.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(CHANGE_TYPE, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// `batch` in `schema`: columns by name, cast; a column the batch lacks is null.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> DeltaResult<RecordBatch> {
    let n = batch.num_rows();
    let cols = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => cast(c, f.data_type()),
            None => Ok(new_null_array(f.data_type(), n)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

/// What a merge-on-read commit changed, gathered as it decides each change: the stored rows
/// it retires and the row versions it writes.
#[derive(Debug, Default)]
pub struct MergeOnReadChanges {
    /// (index into the commit's matched-row batches, position in it, whether the row leaves
    /// the table): a retired row is a preimage, or a delete when nothing replaces it.
    retired: Vec<(usize, usize, bool)>,
}

impl MergeOnReadChanges {
    /// A stored row the commit marks in a deletion vector; `deleted` when the change is a
    /// hard delete (no new version of the row is written).
    pub fn retire(&mut self, batch: usize, pos: usize, deleted: bool) {
        self.retired.push((batch, pos, deleted));
    }

    /// The feed rows: the retired rows (read from `old`, the matched rows of each data file, in
    /// the table's schema) as `delete` or `update_preimage`, then the `written` rows as
    /// `update_postimage` where `replaces[i]`, else `insert`.
    pub fn rows(
        &self,
        schema: &SchemaRef,
        old: &[&RecordBatch],
        written: Option<&RecordBatch>,
        replaces: &[bool],
    ) -> DeltaResult<RecordBatch> {
        let feed = feed_schema(schema);
        let mut parts = Vec::new();
        if !self.retired.is_empty() {
            let olds: Vec<RecordBatch> = old.iter().map(|b| conform(b, &feed)).collect::<DeltaResult<_>>()?;
            let indices: Vec<(usize, usize)> = self.retired.iter().map(|(b, p, _)| (*b, *p)).collect();
            let mut cols: Vec<ArrayRef> = Vec::with_capacity(feed.fields().len());
            for (i, f) in feed.fields().iter().enumerate() {
                if f.name() == CHANGE_TYPE {
                    let kinds: StringArray = self
                        .retired
                        .iter()
                        .map(|(_, _, deleted)| Some(if *deleted { DELETE } else { PREIMAGE }))
                        .collect();
                    cols.push(Arc::new(kinds));
                } else {
                    let arrays: Vec<&dyn arrow::array::Array> = olds.iter().map(|b| b.column(i).as_ref()).collect();
                    cols.push(interleave(&arrays, &indices)?);
                }
            }
            parts.push(RecordBatch::try_new(feed.clone(), cols)?);
        }
        if let Some(w) = written.filter(|w| w.num_rows() > 0) {
            let mut b = conform(w, &feed)?;
            let kinds: StringArray = (0..b.num_rows())
                .map(|r| {
                    Some(if replaces.get(r).copied().unwrap_or(false) {
                        POSTIMAGE
                    } else {
                        INSERT
                    })
                })
                .collect();
            let at = feed.index_of(CHANGE_TYPE)?;
            let mut cols = b.columns().to_vec();
            cols[at] = Arc::new(kinds);
            b = RecordBatch::try_new(feed.clone(), cols)?;
            parts.push(b);
        }
        Ok(concat_batches(&feed, &parts)?)
    }
}

/// Deletes the table's change files written before `cutoff_ms` (milliseconds since the epoch):
/// vacuum's counterpart for `_change_data`, which delta-rs's vacuum never lists. A change file
/// is written moments before its commit, so one older than the vacuum retention belongs to a
/// commit older than it, whose replaced data files vacuum deletes too; change files of
/// attempts that never committed go the same way. Returns how many were deleted.
pub async fn expire(table: &DeltaTable, cutoff_ms: i64) -> DeltaResult<u64> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let store = table.object_store();
    let prefix = object_store::path::Path::from(CHANGE_DATA_DIR);
    let old: Vec<object_store::path::Path> = store
        .list(Some(&prefix))
        .try_filter(|m| futures::future::ready(m.last_modified.timestamp_millis() < cutoff_ms))
        .map_ok(|m| m.location)
        .try_collect()
        .await?;
    for p in &old {
        match store.delete(p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(old.len() as u64)
}

/// The table's change feed from version `from` to `to` (inclusive; the latest when `None`) as a
/// DataFusion table: the table's columns, then `_change_type`, `_commit_version` and
/// `_commit_timestamp`. `session` gets the table's store registered.
pub fn provider(
    table: &DeltaTable,
    session: &deltalake::datafusion::prelude::SessionContext,
    from: u64,
    to: Option<u64>,
) -> DeltaResult<deltalake::delta_datafusion::DeltaCdfTableProvider> {
    table.update_datafusion_session(&session.state())?;
    let mut builder = table.clone().scan_cdf().with_starting_version(from);
    if let Some(to) = to {
        builder = builder.with_ending_version(to);
    }
    deltalake::delta_datafusion::DeltaCdfTableProvider::try_new(builder)
}

/// Every row of the table's change feed from version `from` to `to` (see [`provider`]).
pub async fn read(table: &DeltaTable, from: u64, to: Option<u64>) -> DeltaResult<Vec<RecordBatch>> {
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    let p = provider(table, &ctx, from, to)?;
    Ok(ctx.read_table(Arc::new(p))?.collect().await?)
}
