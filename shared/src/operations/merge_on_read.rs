//! Merge-on-read commits: the same sequence-guarded MERGE as the copy-on-write path, applied by
//! marking replaced rows in deletion vectors and writing only the new row versions.
//!
//! A copy-on-write MERGE rewrites every data file that holds a changed key: a 10,000-change
//! batch spread over a 10M-row table rewrites all of it. Here the cost follows the changes: the
//! key columns of the files that may hold a changed key are read, then the stored sequence (and,
//! when a change keeps old values, the old row) of only the matched rows; the matched rows go
//! into each file's deletion vector and the new versions into one new file, all in one commit.
//!
//! The semantics are those of `commit::merge`, row for row: a change applies only when its
//! sequence is higher than the stored one; `D` deletes (hard) or flags the row (soft); a column
//! listed in `_dms_nosup` keeps the stored value; a key the table lacks is inserted unless the
//! change is a delete (soft mode inserts a deleted marker row for it). A column with its own
//! sequence (`_dms_seq_of_<column>`) takes a change's value only when the change logged it and
//! the value is newer than the stored one, and an older change still sets it where the stored
//! value is even older (a new row version with the stored sequence). The caller falls back to
//! copy-on-write for commits that add columns.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::{cast, concat_batches, interleave};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use bytes::Bytes;
use deltalake::kernel::transaction::CommitBuilder as DeltaCommitBuilder;
use deltalake::kernel::{Action, Add, DeletionVectorDescriptor, Remove};
use deltalake::operations::merge::MergeMetrics;
use deltalake::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelection};
use deltalake::parquet::arrow::async_reader::AsyncFileReader;
use deltalake::parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use deltalake::parquet::errors::ParquetError;
use deltalake::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaResult, DeltaTable, DeltaTableError};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use roaring::RoaringTreemap;
use serde_json::Value;

use crate::config::{DeleteMode, TableSpec};
use crate::deletion_vector::{self, DvError, DvFileWriter};
use crate::model::columns::{column_of_seq, column_seq_name, COMMIT_TS, DELETED, DELETED_AT, NOSUP, OP, SEQ};
use crate::operations::change_feed::{self, MergeOnReadChanges};
use crate::types::UTC;

/// Files read at once: enough to keep both cores of a small Lambda busy and S3 latency hidden.
const CONCURRENT_FILES: usize = 4;

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
        other => DeltaTableError::Generic(other.to_string()),
    }
}

/// The changes' keys, for probing data files.
enum KeyIndex {
    /// One integer key: no row encoding.
    Int(HashMap<i64, u32, foldhash::fast::RandomState>, Vec<i64>),
    /// Anything else, through Arrow's row format.
    Rows(RowConverter, HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>),
}

/// Integer types that cast to `i64` without loss (unlike `changes::int_key`, which also takes
/// `UInt64` and temporal keys as `u64`): the key's stats bounds are then plain JSON integers.
fn is_small_int(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
    )
}

impl KeyIndex {
    fn build(keys: &[ArrayRef]) -> Result<Self, ArrowError> {
        if let [k] = keys {
            if is_small_int(k.data_type()) {
                let k = cast(k, &DataType::Int64)?;
                let k = k.as_primitive::<Int64Type>();
                let mut map = HashMap::with_capacity_and_hasher(k.len(), Default::default());
                for (i, v) in k.iter().enumerate() {
                    if let Some(v) = v {
                        map.insert(v, i as u32);
                    }
                }
                let mut sorted: Vec<i64> = map.keys().copied().collect();
                sorted.sort_unstable();
                return Ok(KeyIndex::Int(map, sorted));
            }
        }
        let converter = RowConverter::new(keys.iter().map(|k| SortField::new(k.data_type().clone())).collect())?;
        let rows = converter.convert_columns(keys)?;
        let mut map = HashMap::with_capacity_and_hasher(rows.num_rows(), Default::default());
        for (i, r) in rows.iter().enumerate() {
            map.insert(r.as_ref().into(), i as u32);
        }
        Ok(KeyIndex::Rows(converter, map))
    }

    /// Calls `hit(row, change)` for each row of `cols` whose key has a change.
    fn probe(&self, cols: &[ArrayRef], mut hit: impl FnMut(usize, u32)) -> Result<(), ArrowError> {
        match self {
            KeyIndex::Int(map, _) => {
                let k = cast(&cols[0], &DataType::Int64)?;
                let k = k.as_primitive::<Int64Type>();
                for (i, v) in k.iter().enumerate() {
                    if let Some(src) = v.and_then(|v| map.get(&v)) {
                        hit(i, *src);
                    }
                }
            }
            KeyIndex::Rows(converter, map) => {
                let rows = converter.convert_columns(cols)?;
                for (i, r) in rows.iter().enumerate() {
                    if let Some(src) = map.get(r.as_ref()) {
                        hit(i, *src);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a file whose key stats say `[min, max]` may hold a changed key.
    fn may_hold(&self, stats: Option<&str>, key: &str) -> bool {
        let KeyIndex::Int(_, sorted) = self else {
            return true;
        };
        let Some(stats) = stats.and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
            return true;
        };
        let bound = |which: &str| stats.get(which).and_then(|m| m.get(key)).and_then(Value::as_i64);
        let (Some(min), Some(max)) = (bound("minValues"), bound("maxValues")) else {
            return true;
        };
        let at = sorted.partition_point(|v| *v < min);
        sorted.get(at).is_some_and(|v| *v <= max)
    }
}

/// One active data file, as the snapshot lists it.
struct DataFile {
    log_path: String,
    store_path: Path,
    size: i64,
    modification_time: i64,
    stats: Option<String>,
    partition_values: HashMap<String, Option<String>>,
    dv: Option<DeletionVectorDescriptor>,
}

impl DataFile {
    /// The log entry that retires this file as it is now (with its current vector, if any).
    fn remove(&self, data_change: bool, now_ms: i64) -> Action {
        Action::Remove(Remove {
            path: self.log_path.clone(),
            data_change,
            deletion_timestamp: Some(now_ms),
            extended_file_metadata: Some(true),
            partition_values: Some(self.partition_values.clone()),
            size: Some(self.size),
            tags: None,
            deletion_vector: self.dv.clone(),
            base_row_id: None,
            default_row_commit_version: None,
        })
    }
}

/// A data file read through the table's store (ranged reads; nothing is downloaded whole).
#[derive(Clone)]
struct StoreFile {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreFile {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, deltalake::parquet::errors::Result<Bytes>> {
        async move { self.store.get_range(&self.path, range).await.map_err(external) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, deltalake::parquet::errors::Result<Vec<Bytes>>> {
        async move { self.store.get_ranges(&self.path, &ranges).await.map_err(external) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, deltalake::parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let mut reader = ParquetMetaDataReader::new().with_prefetch_hint(Some(64 * 1024));
            if let Some(o) = options {
                reader = reader
                    .with_column_index_policy(o.column_index_policy())
                    .with_offset_index_policy(o.offset_index_policy());
            }
            let size = self.size;
            Ok(Arc::new(reader.load_and_finish(self, size).await?))
        }
        .boxed()
    }
}

/// The rows of one file whose key has a change: positions (ascending), the change each
/// matches, and the `columns` read for them, in the same order.
struct Hits {
    file: usize,
    rows: Vec<u64>,
    changes: Vec<u32>,
    old: RecordBatch,
    deleted_before: RoaringTreemap,
}

struct ScanInput {
    store: Arc<dyn ObjectStore>,
    table_root: url::Url,
    keys: Arc<KeyIndex>,
    key_names: Arc<Vec<String>>,
    /// The keys' types in the table.
    key_types: Vec<DataType>,
    /// The table columns to read for matched rows.
    columns: SchemaRef,
}

async fn scan_file(input: Arc<ScanInput>, index: usize, file: Arc<DataFile>) -> DeltaResult<Option<Hits>> {
    let deleted_before = match &file.dv {
        Some(dv) => deletion_vector::read(input.store.as_ref(), &input.table_root, dv)
            .await
            .map_err(dv_err)?,
        None => RoaringTreemap::new(),
    };
    let size = u64::try_from(file.size).unwrap_or(0);
    let mut reader = StoreFile {
        store: input.store.clone(),
        path: file.store_path.clone(),
        size,
    };
    // The offset index lets the second read skip pages that hold no matched row.
    let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
    let meta = ArrowReaderMetadata::load_async(&mut reader, options).await?;
    let file_schema = meta.schema().clone();
    let roots = |names: &mut dyn Iterator<Item = &str>| -> Vec<usize> {
        names.filter_map(|n| file_schema.index_of(n).ok()).collect()
    };
    let key_roots = roots(&mut input.key_names.iter().map(String::as_str));
    if key_roots.len() != input.key_names.len() {
        return Err(DeltaTableError::Generic(format!(
            "data file {} lacks a key column ({})",
            file.log_path,
            input.key_names.join(", ")
        )));
    }
    let mask = ProjectionMask::roots(meta.parquet_schema(), key_roots);
    let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader.clone(), meta.clone())
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()?;
    let (mut rows, mut changes) = (Vec::new(), Vec::new());
    let mut at = 0u64;
    while let Some(b) = stream.try_next().await? {
        let cols = input
            .key_names
            .iter()
            .zip(&input.key_types)
            .map(|(k, t)| {
                let c = b
                    .column_by_name(k)
                    .ok_or_else(|| ArrowError::SchemaError(format!("no column {k}")))?;
                cast(c, t)
            })
            .collect::<Result<Vec<_>, _>>()?;
        input.keys.probe(&cols, |i, src| {
            let row = at + i as u64;
            if !deleted_before.contains(row) {
                rows.push(row);
                changes.push(src);
            }
        })?;
        at += b.num_rows() as u64;
    }
    if rows.is_empty() {
        return Ok(None);
    }
    // Only the matched rows of the wanted columns are decoded (pages without one are skipped).
    let wanted = roots(&mut input.columns.fields().iter().map(|f| f.name().as_str()));
    let selection =
        RowSelection::from_consecutive_ranges(rows.iter().map(|r| *r as usize..*r as usize + 1), at as usize);
    let batches: Vec<RecordBatch> = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta.clone())
        .with_projection(ProjectionMask::roots(meta.parquet_schema(), wanted))
        .with_row_selection(selection)
        .with_batch_size(8 * 1024)
        .build()?
        .try_collect()
        .await?;
    let Some(first) = batches.first() else {
        return Err(DeltaTableError::Generic(format!(
            "data file {}: no rows where {} matched",
            file.log_path,
            rows.len()
        )));
    };
    let read = concat_batches(&first.schema(), &batches)?;
    let n = rows.len();
    if read.num_rows() != n {
        return Err(DeltaTableError::Generic(format!(
            "data file {}: read {} matched rows, expected {n}",
            file.log_path,
            read.num_rows()
        )));
    }
    let old = fit(&read, &input.columns, &file.partition_values)?;
    Ok(Some(Hits {
        file: index,
        rows,
        changes,
        old,
        deleted_before,
    }))
}

/// `batch` (columns read from a data file) in `schema`: columns by name, cast to the table's
/// types; partition columns, which live in the log rather than in the file, from the file's
/// partition values; anything else null.
fn fit(
    batch: &RecordBatch,
    schema: &SchemaRef,
    partition_values: &HashMap<String, Option<String>>,
) -> DeltaResult<RecordBatch> {
    let n = batch.num_rows();
    let mut cols = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let col = match batch.column_by_name(f.name()) {
            Some(c) => cast(c, f.data_type())?,
            None => match partition_values.get(f.name()) {
                Some(v) => cast(
                    &(Arc::new(StringArray::from(vec![v.clone(); n])) as ArrayRef),
                    f.data_type(),
                )?,
                None => new_null_array(f.data_type(), n),
            },
        };
        cols.push(col);
    }
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        cols,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
    )?)
}

fn data_file(v: &deltalake::kernel::LogicalFileView) -> DataFile {
    DataFile {
        log_path: v.path().to_string(),
        store_path: v.object_store_path(),
        size: v.size(),
        modification_time: v.modification_time(),
        stats: v.stats(),
        partition_values: v.partition_values_map(),
        dv: v.deletion_vector_descriptor(),
    }
}

/// What a purge did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub files_in: u64,
    pub files_out: u64,
    pub bytes_in: u64,
    pub rows_dropped: u64,
}

/// Rewrites the data files whose deletion vectors mark at least `percent` of their rows,
/// leaving those rows out, in one commit that changes no data (as OPTIMIZE does). Without it a
/// large file would carry its vector forever: bin-packing only picks small files.
pub async fn purge_deleted_rows(table: DeltaTable, percent: u32) -> DeltaResult<(DeltaTable, Purged)> {
    let mut done = Purged::default();
    let snapshot = table.snapshot()?.clone();
    let views: Vec<_> = table.get_active_add_actions_by_predicate(None).try_collect().await?;
    let due: Vec<DataFile> = views
        .iter()
        .filter(|v| {
            let (Some(dv), Some(n)) = (v.deletion_vector_descriptor(), v.num_records()) else {
                return false;
            };
            n > 0 && dv.cardinality.max(0) as u128 * 100 >= n as u128 * percent as u128
        })
        .map(data_file)
        .collect();
    if due.is_empty() {
        return Ok((table, done));
    }
    let store = table.object_store();
    let root = table.table_url().clone();
    let mut writer = RecordBatchWriter::for_table(&table)?;
    let schema = writer.arrow_schema();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut actions = Vec::new();
    for f in &due {
        let deleted = match &f.dv {
            Some(dv) => deletion_vector::read(store.as_ref(), &root, dv).await.map_err(dv_err)?,
            None => RoaringTreemap::new(),
        };
        let reader = StoreFile {
            store: store.clone(),
            path: f.store_path.clone(),
            size: u64::try_from(f.size).unwrap_or(0),
        };
        let mut stream = ParquetRecordBatchStreamBuilder::new(reader)
            .await?
            .with_batch_size(64 * 1024)
            .build()?;
        let mut at = 0u64;
        while let Some(b) = stream.try_next().await? {
            let keep: BooleanArray = (0..b.num_rows() as u64)
                .map(|i| Some(!deleted.contains(at + i)))
                .collect();
            at += b.num_rows() as u64;
            let b = arrow::compute::filter_record_batch(&b, &keep)?;
            if b.num_rows() > 0 {
                writer.write(fit(&b, &schema, &f.partition_values)?).await?;
            }
        }
        // One file's rows at a time in memory: the writer buffers until it flushes.
        let adds = writer.flush().await?;
        done.files_out += adds.len() as u64;
        actions.extend(adds.into_iter().map(|a| {
            Action::Add(Add {
                data_change: false,
                ..a
            })
        }));
        done.files_in += 1;
        done.bytes_in += u64::try_from(f.size).unwrap_or(0);
        done.rows_dropped += deleted.len();
        actions.push(f.remove(false, now_ms));
    }
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: 0,
    };
    let table = commit(table, &snapshot, actions, HashMap::new(), operation).await?;
    Ok((table, done))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The change's values (old ones where the change did not log a column).
    Upsert,
    /// Flagged deleted (soft delete of a stored key): the delete's values where its image is
    /// full, else the stored row's (see [`full_images`]).
    SoftDelete,
    /// The delete's image, flagged deleted (soft delete of a key the table never held).
    Marker,
    /// The stored row with the columns an older change still sets (see [`ColumnSeqs::fills`]).
    Fill,
}

/// Where a tracked column's value comes from in a new row version.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Take {
    Source,
    Stored,
}

/// The columns with their own sequence, as the changes and the matched rows hold them.
struct ColumnSeqs {
    /// Tracked column names.
    columns: Vec<String>,
    /// Per tracked column: the changes' `_dms_seq_of_` values.
    source: Vec<StringArray>,
    /// Per hit, per tracked column: the stored `_dms_seq_of_` values.
    stored: Vec<Vec<StringArray>>,
    /// Per hit: the stored `_dms_seq`.
    stored_seq: Vec<StringArray>,
    seq: StringArray,
    nosup: Option<StringArray>,
}

impl ColumnSeqs {
    fn unlogged(&self, change: usize, c: usize) -> bool {
        self.nosup
            .as_ref()
            .is_some_and(|n| !n.is_null(change) && n.value(change).contains(&format!("|{}|", self.columns[c])))
    }

    fn source_own(&self, change: usize, c: usize) -> Option<&str> {
        let a = &self.source[c];
        (!a.is_null(change)).then(|| a.value(change))
    }

    /// The sequence of the change that set the change's value of column `c`.
    fn source_seq(&self, change: usize, c: usize) -> &str {
        self.source_own(change, c).unwrap_or_else(|| self.seq.value(change))
    }

    fn stored_own(&self, (h, pos): (usize, usize), c: usize) -> Option<&str> {
        let a = &self.stored[h][c];
        (!a.is_null(pos)).then(|| a.value(pos))
    }

    fn stored_seq(&self, at: (usize, usize), c: usize) -> &str {
        self.stored_own(at, c)
            .unwrap_or_else(|| self.stored_seq[at.0].value(at.1))
    }

    /// Whether an older change sets column `c` of the stored row: the stored value came from
    /// an even older change.
    fn fills(&self, change: usize, at: (usize, usize), c: usize) -> bool {
        !self.unlogged(change, c) && self.stored_own(at, c).is_some_and(|t| self.source_seq(change, c) > t)
    }

    /// Per tracked column, for each new row: where the value comes from and the column's own
    /// sequence (NULL: the row's).
    fn choose(&self, rows: &[NewRow], full: &[bool]) -> Vec<(Vec<Take>, StringArray)> {
        (0..self.columns.len())
            .map(|c| {
                let mut takes = Vec::with_capacity(rows.len());
                let seqs: StringArray = rows
                    .iter()
                    .map(|r| {
                        let ch = r.change as usize;
                        let (take, seq) = match (r.kind, r.old) {
                            (Kind::Fill, Some(at)) if self.fills(ch, at, c) => {
                                (Take::Source, Some(self.source_seq(ch, c)))
                            }
                            (Kind::Fill, Some(at)) => (Take::Stored, self.stored_own(at, c)),
                            (Kind::Marker, _) | (Kind::Fill, None) => (Take::Source, self.source_own(ch, c)),
                            // A row created by a change that did not log the column: any
                            // change that logged it may fill it in.
                            (_, None) if self.unlogged(ch, c) => (Take::Source, Some("")),
                            (_, None) => (Take::Source, self.source_own(ch, c)),
                            (kind, Some(at)) => {
                                let applies = kind == Kind::Upsert || full[ch];
                                if applies && !self.unlogged(ch, c) && self.source_seq(ch, c) > self.stored_seq(at, c) {
                                    (Take::Source, self.source_own(ch, c))
                                } else {
                                    (Take::Stored, Some(self.stored_seq(at, c)))
                                }
                            }
                        };
                        takes.push(take);
                        seq.map(str::to_string)
                    })
                    .collect();
                (takes, seqs)
            })
            .collect()
    }
}

struct NewRow {
    change: u32,
    /// (index into the hits list, position in it) of the stored row replaced.
    old: Option<(usize, usize)>,
    kind: Kind,
}

/// Applies `source` (deduplicated changes, tombstones already applied) to `table` in one commit.
/// Returns the table as committed (unchanged when every change was stale) and the metrics.
///
/// `appends_only`: the table has no deletion vectors, so the commit may only add rows; if some
/// stored row would have to be replaced, nothing is written and `None` comes back (the caller
/// then runs the copy-on-write MERGE). Used for first full loads (see [`first_load_range`]).
pub async fn apply(
    table: DeltaTable,
    spec: &TableSpec,
    source: RecordBatch,
    info: HashMap<String, Value>,
    appends_only: bool,
) -> DeltaResult<Option<(DeltaTable, MergeMetrics, DvCounts)>> {
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
    let mut matched: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    for (h, hit) in hits.iter().enumerate() {
        for (pos, change) in hit.changes.iter().enumerate() {
            matched[*change as usize].push((h, pos));
        }
    }
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
        stored_seq: stored_seq.clone(),
        seq: seq.clone(),
        nosup: nosup.clone(),
        columns: tracked,
    };
    let mut marks: Vec<Vec<u64>> = vec![Vec::new(); hits.len()];
    let mut new_rows: Vec<NewRow> = Vec::new();
    let mut changes = MergeOnReadChanges::default();
    let mut metrics = MergeMetrics {
        num_source_rows: n,
        num_target_files_scanned: candidates.len(),
        num_target_files_skipped_during_scan: files.len() - candidates.len(),
        ..Default::default()
    };
    for (change, here) in matched.iter().enumerate() {
        let is_delete = op.value(change) == "D";
        let newer: Vec<(usize, usize)> = here
            .iter()
            .copied()
            .filter(|(h, pos)| {
                let stored = &stored_seq[*h];
                !seq.is_null(change) && !stored.is_null(*pos) && seq.value(change) > stored.value(*pos)
            })
            .collect();
        // As the copy-on-write MERGE's clauses: matched and newer updates or deletes, matched
        // and not newer is stale, unmatched inserts (or leaves a soft-delete marker).
        let kind = match (here.is_empty(), is_delete, soft) {
            (false, false, _) if newer.is_empty() => {
                // Stale as a row; it may still carry a column value newer than the stored one.
                let Some(&at) = here.first() else { continue };
                if !(0..column_seqs.columns.len()).any(|c| column_seqs.fills(change, at, c)) {
                    continue;
                }
                metrics.num_target_rows_updated += 1;
                marks[at.0].push(hits[at.0].rows[at.1]);
                if feed {
                    changes.retire(at.0, at.1, false);
                }
                new_rows.push(NewRow {
                    change: change as u32,
                    old: Some(at),
                    kind: Kind::Fill,
                });
                continue;
            }
            (false, ..) if newer.is_empty() => continue,
            (false, true, false) => {
                metrics.num_target_rows_deleted += 1;
                None
            }
            (false, true, true) => {
                metrics.num_target_rows_updated += 1;
                Some(Kind::SoftDelete)
            }
            (false, false, _) => {
                metrics.num_target_rows_updated += 1;
                Some(Kind::Upsert)
            }
            (true, false, _) => {
                metrics.num_target_rows_inserted += 1;
                Some(Kind::Upsert)
            }
            (true, true, true) => {
                metrics.num_target_rows_inserted += 1;
                Some(Kind::Marker)
            }
            (true, true, false) => None,
        };
        for (h, pos) in &newer {
            marks[*h].push(hits[*h].rows[*pos]);
            if feed {
                changes.retire(*h, *pos, is_delete && !soft);
            }
        }
        if let Some(kind) = kind {
            new_rows.push(NewRow {
                change: change as u32,
                old: newer.first().copied(),
                kind,
            });
        }
    }
    metrics.num_output_rows = new_rows.len();

    if appends_only && marks.iter().any(|m| !m.is_empty()) {
        return Ok(None);
    }
    let write_started = Instant::now();
    let mut actions: Vec<Action> = Vec::new();
    let mut counts = DvCounts::default();
    let mut dv_file = DvFileWriter::new();
    let now_ms = chrono::Utc::now().timestamp_millis();
    for (h, rows) in marks.iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let hit = &hits[h];
        let file = &files[hit.file];
        let mut deleted = hit.deleted_before.clone();
        let before = deleted.len();
        deleted.extend(rows.iter().copied());
        counts.files_marked += 1;
        counts.rows_marked += deleted.len() - before;
        let descriptor = dv_file.add(&deleted).map_err(dv_err)?;
        actions.push(file.remove(true, now_ms));
        actions.push(Action::Add(Add {
            path: file.log_path.clone(),
            partition_values: file.partition_values.clone(),
            size: file.size,
            modification_time: file.modification_time,
            data_change: true,
            stats: file.stats.as_deref().map(loose_bounds),
            tags: None,
            deletion_vector: Some(descriptor),
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        }));
    }
    let mut written: Option<RecordBatch> = None;
    if !new_rows.is_empty() {
        let mut writer = RecordBatchWriter::for_table(&table)?;
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
        let adds = writer.flush().await?;
        metrics.num_target_files_added = adds.len();
        actions.extend(adds.into_iter().map(Action::Add));
    }
    if actions.is_empty() {
        metrics.execution_time_ms = started.elapsed().as_millis() as u64;
        metrics.scan_time_ms = scan_ms;
        return Ok(Some((table, metrics, counts)));
    }
    if !dv_file.is_empty() {
        dv_file.finish(input.store.as_ref()).await.map_err(dv_err)?;
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
    Ok(Some((table, metrics, counts)))
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
    let mut table = table;
    table.update_incremental(Some(done.version())).await?;
    Ok(table)
}

/// A change set holding only rows of one series of its table's first full load (every
/// sequence `0L…`): the series and the lowest and highest sequence; `None` for any other.
///
/// DMS reads a table (or one partition or segment of a parallel load) with one query, which
/// lists each key once, so such rows can meet a stored row only through a change committed
/// before them (a CDC change or delete, `1…`), a second delivery of their own LOAD file (their
/// own sequences), or another series of a parallel load (a row that moved between partitions
/// while DMS read them). Files holding only other LOAD files' rows of the same series need not
/// be read, which keeps a full load in any key order at the cost of its rows rather than of
/// the table (issue #18).
pub fn first_load_range(seq: &StringArray) -> Option<FirstLoad> {
    if seq.null_count() > 0 || seq.is_empty() {
        return None;
    }
    let mut lo: Option<&str> = None;
    let mut hi: Option<&str> = None;
    let mut series: Option<&str> = None;
    for s in seq.iter().flatten() {
        let this = load_series(s)?;
        if series.is_some_and(|x| x != this) {
            return None;
        }
        series = Some(this);
        lo = Some(lo.map_or(s, |l| l.min(s)));
        hi = Some(hi.map_or(s, |h| h.max(s)));
    }
    Some(FirstLoad {
        series: series?.to_string(),
        lo: lo?.to_string(),
        hi: hi?.to_string(),
    })
}

/// Whether every change of `source` is a row of one series of its table's first full load.
pub fn is_first_load(source: &RecordBatch) -> bool {
    source
        .column_by_name(SEQ)
        .and_then(|c| cast(c, &DataType::Utf8).ok())
        .is_some_and(|c| first_load_range(c.as_string::<i32>()).is_some())
}

/// See [`first_load_range`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstLoad {
    /// The prefix every sequence of the series starts with: `0LLOAD` (the table folder's own
    /// series), `0L<folder>/` (a partition folder) or `0LSEGMENT<n>_` (a segment).
    series: String,
    lo: String,
    hi: String,
}

/// The series prefix of a first full load's sequence (`0L<name>:<row>`), if it is one.
fn load_series(seq: &str) -> Option<&str> {
    let name = seq.strip_prefix("0L")?;
    let end = if let Some(slash) = name.rfind('/') {
        slash + 1
    } else if name.starts_with("SEGMENT") {
        name.find('_')? + 1
    } else if name.starts_with("LOAD") {
        "LOAD".len()
    } else {
        return None;
    };
    Some(&seq[..2 + end])
}

/// Whether a file may hold a row a first full load's change set meets: it holds a change from
/// after the load began, rows of another series, or rows of the same LOAD file. Without
/// sequence stats, it may.
fn may_meet_first_load(stats: Option<&str>, load: &FirstLoad) -> bool {
    let Some(stats) = stats.and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
        return true;
    };
    let bound = |which: &str| stats.get(which).and_then(|m| m.get(SEQ)).and_then(Value::as_str);
    let (Some(min), Some(max)) = (bound("minValues"), bound("maxValues")) else {
        return true;
    };
    // Every text between two that share a prefix shares it, so the file's rows are all of the
    // series. Bounds cut short (a shorter min, a raised max) fail this test: still safe.
    let same_series = min.starts_with(&load.series) && max.starts_with(&load.series);
    !same_series || !(max < load.lo.as_str() || min > load.hi.as_str())
}

/// A file's stats once some of its rows are deleted: counts stay physical and bounds may be
/// wider than the live rows (the protocol's `tightBounds: false`).
fn loose_bounds(stats: &str) -> String {
    match serde_json::from_str::<Value>(stats) {
        Ok(Value::Object(mut m)) => {
            m.insert("tightBounds".into(), Value::Bool(false));
            Value::Object(m).to_string()
        }
        _ => stats.to_string(),
    }
}

/// Per change: whether it carries values beyond its key. A soft-deleted row takes a full delete
/// image's values, which are the row as it was deleted whatever order the changes arrived in; a
/// key-only image (PostgreSQL's default replica identity) has none, so the row keeps its own.
/// The copy-on-write MERGE applies the same rule as an expression.
fn full_images(source: &RecordBatch, keys: &[String]) -> Vec<bool> {
    let schema = source.schema();
    let values: Vec<&ArrayRef> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.name().starts_with("_dms_") && !keys.contains(f.name()))
        .map(|(i, _)| source.column(i))
        .collect();
    (0..source.num_rows())
        .map(|r| values.iter().any(|c| !c.is_null(r)))
        .collect()
}

/// The new row versions, in the writer's schema.
#[allow(clippy::too_many_arguments)]
fn new_rows_batch(
    schema: &SchemaRef,
    keys: &[String],
    source: &RecordBatch,
    hits: &[Hits],
    rows: &[NewRow],
    nosup: Option<&StringArray>,
    commit_ts: &TimestampMicrosecondArray,
    full: &[bool],
    (tracked, chosen): (&[String], &[(Vec<Take>, StringArray)]),
) -> DeltaResult<RecordBatch> {
    let src_schema = source.schema();
    let take_src = |name: &str, t: &DataType| -> DeltaResult<ArrayRef> {
        let c = cast(source.column(src_schema.index_of(name)?), t)?;
        let idx = arrow::array::UInt32Array::from(rows.iter().map(|r| r.change).collect::<Vec<_>>());
        Ok(arrow::compute::take(&c, &idx, None)?)
    };
    let now = chrono::Utc::now().timestamp_micros();
    let deleted_at = |r: &NewRow| -> Option<i64> {
        let c = r.change as usize;
        (r.kind != Kind::Upsert).then(|| if commit_ts.is_null(c) { now } else { commit_ts.value(c) })
    };
    let null_at = hits.len() + 1;
    // `first` (a row per new row), the stored rows, then a NULL: what `interleave` picks from.
    let pick_from = |first: ArrayRef, name: &str, t: &DataType, idx: &[(usize, usize)]| -> DeltaResult<ArrayRef> {
        let olds: Vec<ArrayRef> = hits
            .iter()
            .map(|h| match h.old.schema().index_of(name) {
                Ok(i) => cast(h.old.column(i), t),
                Err(_) => Ok(new_null_array(t, h.old.num_rows().max(1))),
            })
            .collect::<Result<_, _>>()?;
        let null = new_null_array(t, 1);
        let mut all: Vec<&dyn Array> = Vec::with_capacity(hits.len() + 2);
        all.push(first.as_ref());
        all.extend(olds.iter().map(|a| a.as_ref()));
        all.push(null.as_ref());
        Ok(interleave(&all, idx)?)
    };
    // A `Fill` row is the stored row but for the columns the older change sets.
    let stored_for_fill = |i: usize, r: &NewRow| match (r.kind, r.old) {
        (Kind::Fill, Some((h, pos))) => (1 + h, pos),
        _ => (0, i),
    };
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let name = f.name().as_str();
        let t = f.data_type();
        let own = |i: usize| (0, i);
        let col: ArrayRef = match name {
            SEQ | COMMIT_TS => {
                let idx: Vec<_> = rows.iter().enumerate().map(|(i, r)| stored_for_fill(i, r)).collect();
                pick_from(take_src(name, t)?, name, t, &idx)?
            }
            DELETED => {
                let flags = BooleanArray::from(rows.iter().map(|r| Some(r.kind != Kind::Upsert)).collect::<Vec<_>>());
                let idx: Vec<_> = rows.iter().enumerate().map(|(i, r)| stored_for_fill(i, r)).collect();
                pick_from(Arc::new(flags), name, t, &idx)?
            }
            DELETED_AT => {
                let a =
                    TimestampMicrosecondArray::from(rows.iter().map(deleted_at).collect::<Vec<_>>()).with_timezone(UTC);
                let idx: Vec<_> = rows.iter().enumerate().map(|(i, r)| stored_for_fill(i, r)).collect();
                pick_from(cast(&a, t)?, name, t, &idx)?
            }
            _ if column_of_seq(name).is_some_and(|c| tracked.iter().any(|n| n == c)) => {
                let c = tracked
                    .iter()
                    .position(|n| Some(n.as_str()) == column_of_seq(name))
                    .unwrap_or_default();
                cast(&chosen[c].1, t)?
            }
            _ => {
                let is_key = keys.iter().any(|k| k == name);
                let src = match src_schema.index_of(name) {
                    Ok(i) => take_src(src_schema.field(i).name(), t)?,
                    Err(_) => new_null_array(t, rows.len()),
                };
                let column = tracked.iter().position(|n| n == name);
                let pick = |(i, r): (usize, &NewRow)| -> (usize, usize) {
                    let c = r.change as usize;
                    if let Some(column) = column {
                        return match (chosen[column].0[i], r.old) {
                            (Take::Stored, Some((h, pos))) => (1 + h, pos),
                            _ => own(i),
                        };
                    }
                    let unlogged = || nosup.is_some_and(|n| !n.is_null(c) && n.value(c).contains(&format!("|{name}|")));
                    let keep_old = match r.kind {
                        Kind::SoftDelete => !is_key && (!full[c] || unlogged()),
                        Kind::Marker => false,
                        Kind::Upsert => unlogged(),
                        Kind::Fill => true,
                    };
                    match (keep_old, r.old) {
                        (true, Some((h, pos))) => (1 + h, pos),
                        _ if src_schema.index_of(name).is_ok() => own(i),
                        _ => (null_at, 0),
                    }
                };
                let indices: Vec<(usize, usize)> = rows.iter().enumerate().map(pick).collect();
                pick_from(src, name, t, &indices)?
            }
        };
        cols.push(col);
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(min: &str, max: &str) -> String {
        serde_json::json!({"numRecords": 2, "minValues": {SEQ: min}, "maxValues": {SEQ: max}}).to_string()
    }

    #[test]
    fn a_first_load_reads_only_files_it_may_meet() {
        let seqs = StringArray::from(vec!["0LLOAD00000003:000000000001", "0LLOAD00000003:000000000009"]);
        let load = first_load_range(&seqs).unwrap();
        assert_eq!(load.series, "0LLOAD");
        // Another LOAD file of the same series: skipped.
        let other = stats("0LLOAD00000001:000000000001", "0LLOAD00000002:000000000500");
        assert!(!may_meet_first_load(Some(&other), &load));
        // Its own rows (a second delivery), a CDC change, another series, no stats: read.
        let own = stats("0LLOAD00000002:000000000001", "0LLOAD00000004:000000000001");
        assert!(may_meet_first_load(Some(&own), &load));
        let cdc = stats("0LLOAD00000001:000000000001", "1S20240528100000000000000000000000001");
        assert!(may_meet_first_load(Some(&cdc), &load));
        let series = stats(
            "0Lp_north/LOAD00000001:000000000001",
            "0Lp_north/LOAD00000001:000000000009",
        );
        assert!(may_meet_first_load(Some(&series), &load));
        assert!(may_meet_first_load(None, &load));
        // A min cut short no longer shows the series: read.
        let cut = stats("0LLO", "0LLOAD00000001:000000000009");
        assert!(may_meet_first_load(Some(&cut), &load));

        // Partition folders and segments are series of their own.
        let part = first_load_range(&StringArray::from(vec!["0Lp_north/LOAD00000002:000000000001"])).unwrap();
        assert_eq!(part.series, "0Lp_north/");
        assert!(!may_meet_first_load(Some(&series), &part));
        let seg = first_load_range(&StringArray::from(vec!["0LSEGMENT2_LOAD00000001:000000000001"])).unwrap();
        assert_eq!(seg.series, "0LSEGMENT2_");
        // Not a first load's change set: CDC, a reload, two series at once.
        for not in [
            vec!["1S20240528100000000000000000000000001"],
            vec!["1F202405281000000000LLOAD00000001:000000000001"],
            vec!["0LLOAD00000001:000000000001", "0Lp_north/LOAD00000001:000000000001"],
        ] {
            assert_eq!(first_load_range(&StringArray::from(not.clone())), None, "{not:?}");
        }
    }
}
