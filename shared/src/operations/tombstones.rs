//! Tombstones of hard deletes: a side table of (key, sequence) per deleted key, consulted before
//! every commit so a late, older change cannot bring a deleted row back.
//!
//! The side table is only ever appended to between compactions: a commit adds its deletes as a
//! new file (no MERGE, nothing read), and a key may then hold several rows; the lookup takes the
//! newest sequence per key, so duplicates are harmless, and the tombstone retention drops the
//! older ones with the rest. A warm function keeps what it read of the table in
//! [`TombstoneCache`] and brings it up to date by reading only the files added since, so a warm
//! commit reads no tombstone file it already knows. A version that removes a file (compaction,
//! retention) makes it read the table again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::row::{RowConverter, SortField};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::CommitBuilder as DeltaCommitBuilder;
use deltalake::kernel::{Action, StructType};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaResult, DeltaTable, DeltaTableError};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

use crate::changes::{COMMIT_TS, OP, SEQ};
use crate::error::{Error, Result, Stage};
use crate::lake::{self, delta_err, is_conflict};
use crate::storage::{Location, Stores};
pub use crate::tombstone_cache::TOMBSTONE_CACHE_BYTES;
use crate::tombstone_cache::{Known, TombstoneCache};
use crate::types::UTC;

pub use crate::changes::DELETED_AT;

/// The tombstone side table of a target table.
pub fn location(lake: &Location, lake_path: &str) -> Location {
    lake.join(&format!("_dms2delta/tombstones/{lake_path}"))
}

/// What [`guard`] did to a change set.
pub(crate) enum Guarded {
    Done {
        /// The changes the tombstones do not refuse.
        source: RecordBatch,
        /// Changes refused because their key was deleted by a newer change.
        stale: u64,
        /// Deletes recorded as tombstones by this commit.
        written: u64,
    },
    /// Another writer created the tombstone table first: read again and retry.
    Conflict(DeltaTableError),
}

/// Drops the changes a newer tombstone refuses, then records the remaining deletes as
/// tombstones, before the table's commit: a crash between the two leaves the tombstone, and
/// the retry, whose delete carries the tombstone's own sequence, still deletes the row (an
/// equal sequence is the same delete delivered again and is kept).
///
/// Called after the table was read: whatever that snapshot lacks is either in the tombstones
/// read here or makes the table's commit conflict.
pub(crate) async fn guard(
    stores: &Stores,
    loc: &Location,
    source: RecordBatch,
    keys: &[String],
    context: &str,
) -> Result<Guarded> {
    let derr = |e| delta_err(Stage::Commit, context, e);
    let (tomb, exists) = lake::open(stores, loc).await?;
    let url = lake::table_url(stores, loc)?;
    let cache = stores.tombstones();
    let before = source.num_rows();
    let (source, mut known) = if !exists {
        (source, None)
    } else {
        match newest_per_key(&tomb, cache, &url, keys).await.map_err(derr)? {
            Some(known) => (drop_known(&known, source, keys).map_err(derr)?, Some(known)),
            None => (drop_tombstoned(&tomb, source, keys).await.map_err(derr)?, None),
        }
    };
    let stale = before.saturating_sub(source.num_rows()) as u64;
    let mut deletes = delete_rows(&source)?;
    if let Some(k) = &known {
        // Deletes already recorded (a delivery again, or a retry after a crash between the
        // tombstone commit and the table's) add nothing to the newest sequence per key.
        deletes = drop_recorded(k, deletes, keys).map_err(derr)?;
    }
    let mut written = 0;
    if deletes.num_rows() > 0 {
        match record_tombstones(tomb, exists, &deletes, keys).await {
            Ok((tomb, added)) => {
                lake::remember(stores, loc, &tomb);
                written = deletes.num_rows() as u64;
                known = match (known, tomb.version()) {
                    // Nobody else committed in between: the new version is the held one plus
                    // this file, whose rows are at hand.
                    (Some(mut k), Some(v)) if v == k.version + 1 => {
                        k.version = v;
                        k.files.extend(added);
                        add_rows(&mut k, &deletes, keys).map_err(derr)?;
                        Some(k)
                    }
                    _ => None,
                };
            }
            Err(e) if is_conflict(&e) => {
                if let Some(k) = known {
                    cache.put(&url, k);
                }
                return Ok(Guarded::Conflict(e));
            }
            Err(e) => return Err(derr(e)),
        }
    }
    if let Some(k) = known {
        cache.put(&url, k);
    }
    Ok(Guarded::Done { source, stale, written })
}

/// The newest sequence per key of `tomb` (open at its latest version), from what this process
/// holds plus the files added since; `None` when it is not to be held (cache off, a table too
/// large for the budget, deletion vectors), and the caller scans the table instead.
async fn newest_per_key(
    tomb: &DeltaTable,
    cache: &TombstoneCache,
    url: &Url,
    keys: &[String],
) -> DeltaResult<Option<Known>> {
    if !cache.is_enabled() {
        return Ok(None);
    }
    let Some(version) = tomb.version() else {
        return Ok(None);
    };
    let snapshot = tomb.snapshot()?;
    let mut files: Vec<(String, Path, u64)> = Vec::new();
    let mut total = 0u64;
    for f in snapshot.log_data().iter() {
        if f.deletion_vector_descriptor().is_some() {
            // Rows a vector marks would need the vector read too; dms2delta never writes one
            // into a tombstone table, so this is somebody else's table layout: scan it.
            cache.forget(url);
            return Ok(None);
        }
        let size = u64::try_from(f.size()).unwrap_or(0);
        total += size;
        files.push((f.path().to_string(), f.object_store_path(), size));
    }
    // Compressed Parquet of keys and sequences takes several times its size in memory.
    if total.saturating_mul(4) > cache.budget() as u64 {
        cache.forget(url);
        return Ok(None);
    }
    let schema = snapshot.snapshot().arrow_schema();
    let mut key_types = Vec::with_capacity(keys.len());
    for k in keys {
        match schema.field_with_name(k) {
            Ok(f) => key_types.push(f.data_type().clone()),
            Err(_) => return Ok(None),
        }
    }
    let current: HashSet<&str> = files.iter().map(|(p, _, _)| p.as_str()).collect();
    let mut known = match cache.take(url) {
        // Between compactions the table only gains files; a version that removed one of the
        // held files (compaction, retention, a rewrite) is read afresh.
        Some(k)
            if k.version <= version
                && k.key_types == key_types
                && k.files.iter().all(|f| current.contains(f.as_str())) =>
        {
            k
        }
        _ => Known {
            version,
            key_types,
            files: HashSet::new(),
            seqs: HashMap::new(),
            bytes: 0,
        },
    };
    let store = tomb.object_store();
    let new: Vec<&(String, Path, u64)> = files.iter().filter(|(p, _, _)| !known.files.contains(p)).collect();
    // The files are independent: read them together (a cold function may hold many).
    let tasks: Vec<_> = new
        .iter()
        .map(|(_, path, _)| read_file(store.clone(), path.clone()))
        .collect();
    let mut reads = futures::stream::iter(tasks).buffer_unordered(8);
    while let Some(batches) = reads.next().await {
        for b in batches? {
            add_rows(&mut known, &b, keys)?;
        }
    }
    drop(reads);
    known.files.extend(new.into_iter().map(|(p, _, _)| p.clone()));
    known.version = version;
    // Over the budget it still serves this lookup; `put` does not keep it.
    Ok(Some(known))
}

/// A whole tombstone file (they are small: one GET), its keys and sequences.
async fn read_file(store: Arc<dyn ObjectStore>, path: Path) -> DeltaResult<Vec<RecordBatch>> {
    let bytes = store.get(&path).await?.bytes().await?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    // Every column but the two times: keys and the sequence.
    let roots: Vec<usize> = builder
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name() != COMMIT_TS && f.name() != DELETED_AT)
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder.with_projection(mask).with_batch_size(64 * 1024).build()?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

fn converter(types: &[DataType]) -> DeltaResult<RowConverter> {
    Ok(RowConverter::new(
        types.iter().map(|t| SortField::new(t.clone())).collect(),
    )?)
}

/// The key columns of `b` in the tombstone table's types, and which rows have a NULL key (a
/// NULL never equals anything, as in the scan's join).
fn key_columns(b: &RecordBatch, keys: &[String], types: &[DataType]) -> DeltaResult<(Vec<ArrayRef>, Vec<bool>)> {
    let mut cols = Vec::with_capacity(keys.len());
    let mut null = vec![false; b.num_rows()];
    for (k, t) in keys.iter().zip(types) {
        let c = b
            .column_by_name(k)
            .ok_or_else(|| DeltaTableError::Generic(format!("tombstones: no key column {k}")))?;
        let c = cast(c, t)?;
        if c.null_count() > 0 {
            for (i, n) in null.iter_mut().enumerate() {
                *n |= c.is_null(i);
            }
        }
        cols.push(c);
    }
    Ok((cols, null))
}

fn seq_column(b: &RecordBatch) -> DeltaResult<ArrayRef> {
    let c = b
        .column_by_name(SEQ)
        .ok_or_else(|| DeltaTableError::Generic(format!("tombstones: no {SEQ} column")))?;
    Ok(cast(c, &DataType::Utf8)?)
}

/// Adds the rows of `b` (tombstone rows: keys and sequence) to `known`.
fn add_rows(known: &mut Known, b: &RecordBatch, keys: &[String]) -> DeltaResult<()> {
    if b.num_rows() == 0 {
        return Ok(());
    }
    let (cols, null) = key_columns(b, keys, &known.key_types)?;
    let rows = converter(&known.key_types)?.convert_columns(&cols)?;
    let seq = seq_column(b)?;
    let seq = seq.as_string::<i32>();
    for (i, key_null) in null.iter().enumerate() {
        if !key_null && !seq.is_null(i) {
            known.add(rows.row(i).as_ref(), seq.value(i));
        }
    }
    Ok(())
}

/// Per row of `b`: the newest tombstone sequence of its key, if any.
fn lookup<'k>(known: &'k Known, b: &RecordBatch, keys: &[String]) -> DeltaResult<Vec<Option<&'k str>>> {
    let (cols, null) = key_columns(b, keys, &known.key_types)?;
    let rows = converter(&known.key_types)?.convert_columns(&cols)?;
    Ok(null
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if *n {
                None
            } else {
                known.seqs.get(rows.row(i).as_ref()).map(String::as_str)
            }
        })
        .collect())
}

/// Keeps the rows whose key has no tombstone newer than the row's sequence (`keep_equal`) or no
/// tombstone at or above it (`!keep_equal`).
fn filter(known: &Known, b: RecordBatch, keys: &[String], keep_equal: bool) -> DeltaResult<RecordBatch> {
    if b.num_rows() == 0 || known.seqs.is_empty() {
        return Ok(b);
    }
    let found = lookup(known, &b, keys)?;
    let seq = seq_column(&b)?;
    let seq = seq.as_string::<i32>();
    let keep: BooleanArray = found
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Some(match t {
                None => true,
                // A change without a sequence never meets a tombstone (as in the scan's join).
                Some(_) if seq.is_null(i) => true,
                Some(t) if keep_equal => seq.value(i) >= *t,
                Some(t) => seq.value(i) > *t,
            })
        })
        .collect();
    Ok(filter_record_batch(&b, &keep)?)
}

/// [`drop_tombstoned`] from held tombstones.
fn drop_known(known: &Known, source: RecordBatch, keys: &[String]) -> DeltaResult<RecordBatch> {
    filter(known, source, keys, true)
}

/// The deletes whose tombstone is not recorded yet (none at or above their sequence).
fn drop_recorded(known: &Known, deletes: RecordBatch, keys: &[String]) -> DeltaResult<RecordBatch> {
    filter(known, deletes, keys, false)
}

/// Source rows whose key has a tombstone with a higher sequence are dropped. An equal sequence
/// is the same delete delivered again: it is kept, so a crash between recording the tombstone
/// and the table commit still deletes the row on retry. Reads every tombstone file: what a
/// lookup costs without held tombstones.
async fn drop_tombstoned(
    tomb: &DeltaTable,
    source: RecordBatch,
    keys: &[String],
) -> deltalake::DeltaResult<RecordBatch> {
    let ctx = SessionContext::new();
    tomb.update_datafusion_session(&ctx.state())?;
    ctx.register_table("t", tomb.table_provider().await?)?;
    let schema = source.schema();
    ctx.register_batch("s", source)?;
    let q = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
    let on = keys
        .iter()
        .map(|k| format!("s.{} = t.{}", q(k), q(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let cols = schema
        .fields()
        .iter()
        .map(|f| format!("s.{}", q(f.name())))
        .collect::<Vec<_>>()
        .join(", ");
    // One row per key, its newest tombstone: a key has several rows (a delete, a re-insert and
    // a later delete; a delete delivered again; two compactions of the tombstone table that
    // raced), and a plain join would return the change once per tombstone.
    let key_cols = keys.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT {cols} FROM s LEFT JOIN (SELECT {key_cols}, MAX({seq}) AS {seq} FROM t GROUP BY {key_cols}) t \
         ON {on} WHERE t.{seq} IS NULL OR s.{seq} >= t.{seq}",
        seq = q(SEQ)
    );
    let batches = ctx.sql(&sql).await?.collect().await?;
    Ok(concat_batches(&schema, &batches)?)
}

/// The delete rows of a change set, as tombstones: keys, sequence, commit time, deletion time.
pub(crate) fn delete_rows(source: &RecordBatch) -> Result<RecordBatch> {
    let op = source
        .column(source.schema().index_of(OP).map_err(|e| internal(e.to_string()))?)
        .as_string::<i32>();
    let mask: BooleanArray = op.iter().map(|o| Some(o == Some("D"))).collect();
    filter_record_batch(source, &mask).map_err(|e| internal(e.to_string()))
}

fn internal(reason: String) -> Error {
    Error::internal(Stage::Commit, "change set", reason)
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

/// Appends `deletes` to the tombstone table (created on the first delete) as one new file, in
/// a commit that reads no data file: concurrent appends never conflict, and the lookup's newest
/// sequence per key makes a second row for a key harmless. Returns the table at the new version
/// and the log paths of the files added.
async fn record_tombstones(
    tomb: DeltaTable,
    exists: bool,
    deletes: &RecordBatch,
    keys: &[String],
) -> DeltaResult<(DeltaTable, Vec<String>)> {
    let schema = deletes.schema();
    let mut fields: Vec<Field> = Vec::new();
    let mut cols = Vec::new();
    for k in keys.iter().map(String::as_str).chain([SEQ, COMMIT_TS]) {
        let i = schema.index_of(k)?;
        fields.push(Field::new(k, schema.field(i).data_type().clone(), true));
        cols.push(deletes.column(i).clone());
    }
    fields.push(Field::new(DELETED_AT, ts_type(), true));
    let now = chrono::Utc::now().timestamp_micros();
    cols.push(Arc::new(
        arrow::array::TimestampMicrosecondArray::from(vec![now; deletes.num_rows()]).with_timezone(UTC),
    ));
    let tomb_schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(tomb_schema.clone(), cols)?;
    let tomb = if exists {
        tomb
    } else {
        let st = StructType::try_from_arrow(tomb_schema.as_ref())?;
        let handle = tomb.clone();
        let created = tomb
            .create()
            .with_columns(st.fields().cloned())
            .with_save_mode(SaveMode::ErrorIfExists)
            .with_comment("dms2delta tombstones: keys deleted at the source, kept for the tombstone retention")
            .await;
        // Only a create can meet a creator that got there first.
        lake::settle_create(&handle, created).await?
    };
    let snapshot = tomb.snapshot()?.clone();
    let mut writer = RecordBatchWriter::for_table(&tomb)?;
    writer.write(fit(&batch, &writer.arrow_schema())?).await?;
    let adds = writer.flush().await?;
    let paths = adds.iter().map(|a| a.path.clone()).collect();
    let op = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    let done = DeltaCommitBuilder::default()
        .with_actions(adds.into_iter().map(Action::Add).collect())
        .build(Some(&snapshot), tomb.log_store(), op)
        .await?;
    let mut tomb = tomb;
    tomb.state = Some(done.snapshot());
    Ok((tomb, paths))
}

/// `b`'s columns in the table's order and types (a key's type in the table was fixed by the
/// first delete; later changes may carry a wider one, which must still fit).
fn fit(b: &RecordBatch, schema: &SchemaRef) -> DeltaResult<RecordBatch> {
    let opts = arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let cols = schema
        .fields()
        .iter()
        .map(|f| match b.column_by_name(f.name()) {
            Some(c) => Ok(arrow::compute::cast_with_options(c, f.data_type(), &opts)?),
            None => Ok(arrow::array::new_null_array(f.data_type(), b.num_rows())),
        })
        .collect::<DeltaResult<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}
