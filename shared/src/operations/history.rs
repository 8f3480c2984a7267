//! SCD type 2 history: beside a table's current state, one row per version of each key, with
//! the interval in which that version was the source's row (`history.enabled`).
//!
//! A version is identified by its key and its sequence (`_dms_seq`, whose text order is the
//! change order). Applying changes inserts their versions and recomputes, for the keys they
//! touch only, everything that depends on a version's neighbours: its values of columns the
//! change did not log (the previous version's), its `_valid_from` (never before the previous
//! version's), its `_valid_to` (the next version's `_valid_from`) and `_is_current`. The key's
//! whole history is read back and recomputed from the versions alone, so the result does not
//! depend on the order changes arrive in: a late, older change splits the interval it falls
//! into, a change applied twice changes nothing, and a retried run writes the same rows.
//! Rows are written back with one MERGE on (key, sequence), and only rows that changed.
//!
//! The history table is written copy-on-write whatever the table's own merge mode.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::ops::Not;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array,
};
use arrow::compute::kernels::cast::cast;
use arrow::compute::{concat_batches, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType};
use arrow::row::{RowConverter, SortField};
use deltalake::datafusion::common::{Column, JoinType, ScalarValue};
use deltalake::datafusion::prelude::{lit, Expr, SessionContext};
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructField, StructType};
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use serde_json::json;

use crate::changes::{nosup_columns, COMMIT_TS, NOSUP, OP, SEQ, SOURCE_FILE};
use crate::config::{TableSpec, Validated};
use crate::error::{Error, Result, Stage};
use crate::generation::Anchor;
use crate::lake::{self, delta_err, is_conflict};
use crate::operations::floor;
use crate::operations::truncate::written_after;
use crate::storage::Stores;
use crate::types::UTC;
use crate::unify::align_all;

pub use crate::model::columns::history::{IS_CURRENT, OP_COLUMN, UNLOGGED, VALID_FROM, VALID_TO};

/// `_dms_source_file` of a version that closes every open version at a reload or truncate.
pub const FLOOR_SOURCE: &str = "dms2delta:floor";

/// Maintains a table's history. Build, give it change sets or a floor, `.await`.
#[derive(Debug)]
pub struct HistoryBuilder<'a> {
    config: Arc<Validated>,
    stores: &'a Stores,
    spec: TableSpec,
    sets: Vec<Vec<RecordBatch>>,
    close_at: Option<Anchor>,
}

/// What one history run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryMetrics {
    /// Changes given (every change of the change sets, none deduplicated away).
    pub changes: u64,
    /// Keys whose history was recomputed.
    pub keys: u64,
    /// History rows read back for those keys.
    pub rows_read: u64,
    /// Versions new to the history (including those closing versions at a floor).
    pub versions_inserted: u64,
    /// Existing versions rewritten (their interval, current flag or carried values changed).
    pub versions_updated: u64,
    /// Closing versions removed: a reload's snapshot row showed the key was not deleted.
    pub versions_removed: u64,
    /// The history table's version after the run; `None` when nothing had to be written.
    pub version: Option<u64>,
    pub attempts: u32,
    pub conflicts: u32,
    pub duration_ms: u64,
}

impl HistoryMetrics {
    /// Adds a later run of the same commit (the closing run after a floor rose).
    pub fn absorb(&mut self, later: HistoryMetrics) {
        self.changes += later.changes;
        self.keys += later.keys;
        self.rows_read += later.rows_read;
        self.versions_inserted += later.versions_inserted;
        self.versions_updated += later.versions_updated;
        self.versions_removed += later.versions_removed;
        self.version = later.version.or(self.version);
        self.attempts += later.attempts;
        self.conflicts += later.conflicts;
        self.duration_ms += later.duration_ms;
    }
}

impl<'a> HistoryBuilder<'a> {
    pub fn new(config: Arc<Validated>, stores: &'a Stores, spec: TableSpec) -> Self {
        HistoryBuilder {
            config,
            stores,
            spec,
            sets: Vec::new(),
            close_at: None,
        }
    }

    /// The change sets the table's commit applied (as staged: every change of each file).
    pub fn with_change_sets(mut self, sets: Vec<Vec<RecordBatch>>) -> Self {
        self.sets = sets;
        self
    }

    /// The table's floor was raised to `anchor` (a reload's load is over, or a truncate): every
    /// version still open there is closed by a delete version at the anchor.
    pub fn with_closing_floor(mut self, anchor: Anchor) -> Self {
        self.close_at = Some(anchor);
        self
    }

    async fn run(self) -> Result<HistoryMetrics> {
        let started = Instant::now();
        let name = self.spec.qualified_name();
        let derr = |e| delta_err(Stage::Commit, &name, e);
        let mut metrics = HistoryMetrics::default();
        let table_loc = self.config.lake.join(&self.spec.lake_path());
        let (table, exists) = lake::open(self.stores, &table_loc).await?;
        if !exists {
            // Nothing committed yet, so nothing to keep a history of; the change sets stay
            // staged and are given again with the table's first commit.
            return Ok(metrics);
        }
        let data: Vec<Field> = table
            .snapshot()
            .map_err(derr)?
            .snapshot()
            .arrow_schema()
            .fields()
            .iter()
            .filter(|f| !f.name().starts_with("_dms_"))
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        if let Some(f) = data.iter().find(|f| is_version_column(f.name())) {
            return Err(internal(
                &name,
                format!(
                    "the source column `{}` has the name of a history column; rename it (`renamed_columns`) or turn `history` off for this table",
                    f.name()
                ),
            ));
        }
        let floor = match &self.close_at {
            Some(a) => Some(a.clone()),
            None => floor::table_floor(&table),
        };
        // After a truncate of a table ordered by `AR_H_CHANGE_SEQ`, changes of files DMS wrote
        // after it follow the truncate whatever their sequence (`floor::FILES_AFTER_PROPERTY`).
        let files_after = floor::table_files_after(&table);
        let aligned = align_all(&data, &self.sets).map_err(|p| p.into_error(Stage::Commit, &name, Some(&name)))?;
        let schema = history_schema(&data);
        let incoming = incoming_versions(&schema, &aligned, &self.spec.keys).map_err(|e| internal(&name, e))?;
        metrics.changes = incoming.num_rows() as u64;
        if incoming.num_rows() == 0 && self.close_at.is_none() {
            metrics.duration_ms = started.elapsed().as_millis() as u64;
            return Ok(metrics);
        }
        let loc = self.config.lake.join(&self.spec.history_path());
        let c = &self.config.config.commit;
        loop {
            metrics.attempts += 1;
            let (handle, exists) = lake::open(self.stores, &loc).await?;
            let outcome = self
                .attempt(
                    handle,
                    exists,
                    &loc,
                    &schema,
                    &incoming,
                    floor.as_ref(),
                    files_after.as_deref(),
                    &mut metrics,
                )
                .await;
            match outcome {
                Ok(()) => break,
                Err(e) if is_conflict(&e) && metrics.attempts < c.max_attempts => {
                    metrics.conflicts += 1;
                    let delay =
                        crate::operations::retry::backoff(metrics.attempts, c.backoff_base_ms, c.backoff_max_ms);
                    tracing::info!(stage = "commit", table = %name, attempt = metrics.attempts, delay_ms = delay.as_millis() as u64, reason = %e, "history commit conflict; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) if is_conflict(&e) => {
                    return Err(Error::Conflict {
                        table: format!("{name} (history)"),
                        attempts: metrics.attempts,
                        source: Box::new(e),
                    })
                }
                Err(e) => return Err(derr(e)),
            }
        }
        metrics.duration_ms = started.elapsed().as_millis() as u64;
        Ok(metrics)
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        handle: DeltaTable,
        exists: bool,
        loc: &crate::storage::Location,
        wanted: &SchemaRef,
        incoming: &RecordBatch,
        floor: Option<&Anchor>,
        files_after: Option<&str>,
        metrics: &mut HistoryMetrics,
    ) -> deltalake::DeltaResult<()> {
        let keys = &self.spec.keys;
        let mut table = handle;
        if !exists {
            table = lake::settle_create(&table, create(&table, &self.spec, wanted).await).await?;
        }
        table = evolve(table, wanted).await?;
        let schema = table.snapshot()?.snapshot().arrow_schema();
        let schema: SchemaRef = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let incoming = reshape(incoming, &schema)?;
        // At a floor, the keys to close are every key with a version below it, not only the
        // keys the change sets touch.
        let touched = match (&self.close_at, floor) {
            (Some(_), Some(f)) => {
                let below = read(&table, &schema, None, keys, Some(f.as_str())).await?;
                concat_batches(&schema, &[incoming.clone(), below])?
            }
            _ => incoming.clone(),
        };
        if touched.num_rows() == 0 {
            return Ok(());
        }
        let existing = read(&table, &schema, Some(&touched), keys, None).await?;
        metrics.keys = distinct_keys(&touched, keys)?.num_rows() as u64;
        metrics.rows_read = existing.num_rows() as u64;
        let n_existing = existing.num_rows();
        let combined = concat_batches(&schema, &[existing, incoming])?;
        let newer = |file: &str| files_after.is_some_and(|t| written_after(&self.config, file, t));
        let newer: Option<&dyn Fn(&str) -> bool> = files_after.is_some().then_some(&newer);
        let r = recompute(&combined, n_existing, keys, floor.map(Anchor::as_str), newer)?;
        let (writes, inserted) = changed_rows(&combined, &r.rows, &r.matches)?;
        let removed = take_rows(&combined, &r.removed.iter().map(|&i| i as u32).collect::<Vec<_>>())?;
        if writes.num_rows() == 0 && removed.num_rows() == 0 {
            return Ok(());
        }
        let writes = flagged(&writes, false)?;
        let writes = concat_batches(&writes.schema(), &[writes.clone(), flagged(&removed, true)?])?;
        let info = HashMap::from([(
            crate::model::columns::COMMIT_INFO_KEY.to_string(),
            json!({ "history_of": self.spec.qualified_name(), "versions": writes.num_rows() }),
        )]);
        let table = merge(table, keys, writes.clone(), info).await?;
        metrics.versions_inserted = inserted;
        metrics.versions_updated = (writes.num_rows() - r.removed.len()) as u64 - inserted;
        metrics.versions_removed = r.removed.len() as u64;
        metrics.version = table.version();
        lake::remember(self.stores, loc, &table);
        Ok(())
    }
}

impl<'a> IntoFuture for HistoryBuilder<'a> {
    type Output = Result<HistoryMetrics>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

fn internal(name: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(Stage::Commit, format!("{name} (history)"), e)
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

/// The history's columns: the table's data columns, then the version's own.
pub fn history_schema(data: &[Field]) -> SchemaRef {
    let mut fields: Vec<Field> = data.to_vec();
    fields.extend([
        Field::new(SEQ, DataType::Utf8, true),
        Field::new(OP_COLUMN, DataType::Utf8, true),
        Field::new(COMMIT_TS, ts_type(), true),
        Field::new(VALID_FROM, ts_type(), true),
        Field::new(VALID_TO, ts_type(), true),
        Field::new(IS_CURRENT, DataType::Boolean, true),
        Field::new(UNLOGGED, DataType::Utf8, true),
        Field::new(SOURCE_FILE, DataType::Utf8, true),
    ]);
    Arc::new(Schema::new(fields))
}

fn is_version_column(name: &str) -> bool {
    matches!(
        name,
        SEQ | OP_COLUMN | COMMIT_TS | VALID_FROM | VALID_TO | IS_CURRENT | UNLOGGED | SOURCE_FILE
    )
}

/// The aligned changes as history rows (interval and current flag still to compute), one per
/// (key, sequence): of changes sharing both, the later one (the later file, the later row)
/// stands, as in the table.
fn incoming_versions(
    schema: &SchemaRef,
    aligned: &[RecordBatch],
    keys: &[String],
) -> std::result::Result<RecordBatch, DeltaTableError> {
    let mut out = Vec::with_capacity(aligned.len());
    for b in aligned {
        let n = b.num_rows();
        let col = |name: &str| -> std::result::Result<ArrayRef, DeltaTableError> {
            Ok(b.column(b.schema().index_of(name)?).clone())
        };
        let ops = col(OP)?;
        let nosup = col(NOSUP)?;
        let data: Vec<&Arc<Field>> = schema
            .fields()
            .iter()
            .filter(|f| !is_version_column(f.name()))
            .collect();
        let non_key: Vec<&str> = data
            .iter()
            .map(|f| f.name().as_str())
            .filter(|c| !keys.iter().any(|k| k == c))
            .collect();
        // A delete image with every non-key value NULL carries only the key (PostgreSQL's
        // default replica identity): the delete version shows the values it closes.
        let mut key_only = vec![true; n];
        for c in &non_key {
            let a = col(c)?;
            for (r, k) in key_only.iter_mut().enumerate() {
                *k &= a.is_null(r);
            }
        }
        let all_non_key = format!("|{}|", non_key.join("|"));
        let ops_s = ops.as_string::<i32>();
        let nosup_s = nosup.as_string::<i32>();
        let unlogged: StringArray = (0..n)
            .map(|r| {
                if ops_s.value(r) == "D" && key_only[r] && !non_key.is_empty() {
                    Some(all_non_key.clone())
                } else {
                    (!nosup_s.is_null(r)).then(|| nosup_s.value(r).to_string())
                }
            })
            .collect();
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for f in schema.fields() {
            let c: ArrayRef = match f.name().as_str() {
                OP_COLUMN => ops.clone(),
                VALID_FROM | VALID_TO => new_null_array(&ts_type(), n),
                IS_CURRENT => new_null_array(&DataType::Boolean, n),
                UNLOGGED => Arc::new(unlogged.clone()),
                SOURCE_FILE => cast(&col(SOURCE_FILE)?, &DataType::Utf8)?,
                other => col(other)?,
            };
            cols.push(cast(&c, f.data_type())?);
        }
        out.push(RecordBatch::try_new(schema.clone(), cols)?);
    }
    let all = concat_batches(schema, &out)?;
    // Later rows win: keep the last of each (key, sequence).
    let mut id_cols: Vec<String> = keys.to_vec();
    id_cols.push(SEQ.to_string());
    let ids = row_ids(&all, &id_cols)?;
    let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        last.insert(id.as_slice(), i);
    }
    let mut keep: Vec<u32> = last.into_values().map(|i| i as u32).collect();
    keep.sort_unstable();
    take_rows(&all, &keep)
}

/// `b` in `schema`'s shape (columns by name; missing ones NULL).
fn reshape(b: &RecordBatch, schema: &SchemaRef) -> std::result::Result<RecordBatch, DeltaTableError> {
    let n = b.num_rows();
    let mut cols = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        cols.push(match b.schema().index_of(f.name()) {
            Ok(i) => cast(b.column(i), f.data_type())?,
            Err(_) => new_null_array(f.data_type(), n),
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

fn take_rows(b: &RecordBatch, rows: &[u32]) -> std::result::Result<RecordBatch, DeltaTableError> {
    Ok(arrow::compute::take_record_batch(b, &UInt32Array::from(rows.to_vec()))?)
}

/// Each row's `columns`, encoded so equal values give equal bytes.
fn row_ids(b: &RecordBatch, columns: &[String]) -> std::result::Result<Vec<Vec<u8>>, DeltaTableError> {
    let mut arrays = Vec::with_capacity(columns.len());
    let mut fields = Vec::with_capacity(columns.len());
    for c in columns {
        let a = b.column(b.schema().index_of(c)?).clone();
        fields.push(SortField::new(a.data_type().clone()));
        arrays.push(a);
    }
    let conv = RowConverter::new(fields)?;
    let rows = conv.convert_columns(&arrays)?;
    Ok((0..b.num_rows()).map(|i| rows.row(i).as_ref().to_vec()).collect())
}

fn distinct_keys(b: &RecordBatch, keys: &[String]) -> std::result::Result<RecordBatch, DeltaTableError> {
    let ids = row_ids(b, keys)?;
    let mut seen: HashMap<&[u8], ()> = HashMap::new();
    let mut rows = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if seen.insert(id.as_slice(), ()).is_none() {
            rows.push(i as u32);
        }
    }
    let projected = b.project(
        &keys
            .iter()
            .map(|k| b.schema().index_of(k))
            .collect::<std::result::Result<Vec<_>, _>>()?,
    )?;
    take_rows(&projected, &rows)
}

fn col(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// The history rows of the keys in `of` (all keys when `None`), optionally only versions below
/// `below`, in `schema`'s shape.
async fn read(
    table: &DeltaTable,
    schema: &SchemaRef,
    of: Option<&RecordBatch>,
    keys: &[String],
    below: Option<&str>,
) -> deltalake::DeltaResult<RecordBatch> {
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    let mut df = ctx.read_table(table.table_provider().await?)?;
    if let Some(b) = below {
        df = df.filter(col(SEQ).lt(lit(b)))?;
    }
    if let Some(of) = of {
        let wanted = distinct_keys(of, keys)?;
        // The range of the first key column lets the scan skip files by their statistics;
        // the join then keeps exactly the keys asked for.
        let first = wanted.column(0);
        let order = arrow::compute::sort_to_indices(first, None, None)?;
        if let (Some(lo), Some(hi)) = (order.values().first(), order.values().last()) {
            let lo = ScalarValue::try_from_array(first, *lo as usize)?;
            let hi = ScalarValue::try_from_array(first, *hi as usize)?;
            df = df.filter(col(&keys[0]).between(lit(lo), lit(hi)))?;
        }
        let renamed: Vec<String> = (0..keys.len()).map(|i| format!("__dms2delta_key_{i}")).collect();
        let fields: Vec<Field> = wanted
            .schema()
            .fields()
            .iter()
            .zip(&renamed)
            .map(|(f, n)| Field::new(n, f.data_type().clone(), true))
            .collect();
        let wanted = RecordBatch::try_new(Arc::new(Schema::new(fields)), wanted.columns().to_vec())?;
        let on: Vec<Expr> = keys.iter().zip(&renamed).map(|(k, r)| col(k).eq(col(r))).collect();
        df = df.join_on(ctx.read_batch(wanted)?, JoinType::LeftSemi, on)?;
    }
    let batches = df.collect().await?;
    let shaped: Vec<RecordBatch> = batches
        .iter()
        .map(|b| reshape(b, schema))
        .collect::<std::result::Result<_, _>>()?;
    Ok(concat_batches(schema, &shaped)?)
}

/// The time a sequence encodes, for versions without a source commit time: a CDC file's name
/// time (`1F`), the time digits of an `AR_H_CHANGE_SEQ` (`1S`, to the hundredth of a second),
/// and the same for a reload's anchor. Full-load rows (`0L`) have none.
pub fn sequence_time(seq: &str) -> Option<i64> {
    let digits = |s: &str, n: usize| {
        s.get(..n)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_string)
    };
    if let Some(rest) = seq.strip_prefix("1F") {
        crate::route::digits_to_micros(&digits(rest, 18)?)
    } else if let Some(rest) = seq.strip_prefix("1S") {
        crate::route::digits_to_micros(&format!("{}00", digits(rest, 16)?))
    } else {
        None
    }
}

/// Every version of the keys in `combined` (its first `n_existing` rows read from the history,
/// the rest new), recomputed: one row per (key, sequence), in key then sequence order, and
/// for each the existing row it replaces, if any. With a `floor`, a key whose newest version
/// below it is not a delete gets a delete version at the floor. `newer_file` picks the changes
/// DMS wrote after a truncate (see [`floor::FILES_AFTER_PROPERTY`]): below the floor by their
/// sequence, they follow its closing version.
/// A column as plain text, whatever string type the batch holds it in.
fn text_column(b: &RecordBatch, name: &str) -> std::result::Result<StringArray, DeltaTableError> {
    Ok(cast(b.column(b.schema().index_of(name)?), &DataType::Utf8)?
        .as_string::<i32>()
        .clone())
}

pub fn recompute(
    combined: &RecordBatch,
    n_existing: usize,
    keys: &[String],
    floor: Option<&str>,
    newer_file: Option<&dyn Fn(&str) -> bool>,
) -> std::result::Result<Recomputed, DeltaTableError> {
    let schema = combined.schema();
    let text = |name: &str| text_column(combined, name);
    let seqs = text(SEQ)?;
    let ops = text(OP_COLUMN)?;
    let files = text(SOURCE_FILE)?;
    let key_ids = row_ids(combined, keys)?;
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: HashMap<&[u8], usize> = HashMap::new();
    for (i, id) in key_ids.iter().enumerate() {
        let g = *group_of.entry(id.as_slice()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let seq = |i: usize| if seqs.is_null(i) { "" } else { seqs.value(i) };
    let file = |i: usize| if files.is_null(i) { "" } else { files.value(i) };
    // A version's place around the floor: before the truncate or reload, its closing version,
    // after the truncate though sequenced below it, or after.
    let place = |i: usize| -> (u8, &str) {
        match floor {
            Some(f) if seq(i) < f => match newer_file {
                Some(newer) if newer(file(i)) => (2, seq(i)),
                _ => (0, seq(i)),
            },
            Some(f) if seq(i) == f => (1, seq(i)),
            Some(_) => (3, seq(i)),
            None => (0, seq(i)),
        }
    };
    // Per key: one row per sequence, and the existing row of that sequence.
    let mut versions: Vec<Vec<(usize, Option<usize>)>> = Vec::with_capacity(groups.len());
    for g in &groups {
        let mut by_seq: HashMap<&str, (usize, Option<usize>)> = HashMap::new();
        for &i in g {
            let existing = i < n_existing;
            match by_seq.get_mut(seq(i)) {
                None => {
                    by_seq.insert(seq(i), (i, existing.then_some(i)));
                }
                Some(slot) => {
                    if existing {
                        // A second stored row of one version (never written so): keep one.
                        slot.1.get_or_insert(i);
                        continue;
                    }
                    // The later file's change stands, as in the table; within the new
                    // changes, the later one (they come in file order).
                    let chosen_existing = slot.0 < n_existing;
                    if !chosen_existing || file(i) > file(slot.0) {
                        slot.0 = i;
                    }
                }
            }
        }
        let mut v: Vec<(usize, Option<usize>)> = by_seq.into_values().collect();
        v.sort_by(|a, b| place(a.0).cmp(&place(b.0)));
        versions.push(v);
    }
    // Closing versions at the floor. A key the reload's snapshot holds (a version sequenced
    // `<anchor>L…`) was not deleted there: it has no closing version, and one written before
    // its snapshot row arrived goes.
    let mut closing: Vec<u32> = Vec::new();
    let mut removed: Vec<usize> = Vec::new();
    if let Some(f) = floor {
        let reload_prefix = format!("{f}L");
        for v in &mut versions {
            if v.iter().any(|(i, _)| seq(*i).starts_with(&reload_prefix)) {
                v.retain(|(i, e)| {
                    let synthetic = seq(*i) == f && file(*i) == FLOOR_SOURCE;
                    if synthetic {
                        removed.extend(*e);
                    }
                    !synthetic
                });
                continue;
            }
            let below = v.iter().rev().find(|(i, _)| place(*i).0 == 0);
            let at = v.iter().any(|(i, _)| seq(*i) == f);
            if let Some((i, _)) = below {
                if !at && ops.value(*i) != "D" {
                    closing.push(*i as u32);
                    // Placed by index past `combined`; filled in below.
                    let pos = v.iter().position(|(j, _)| place(*j).0 > 1).unwrap_or(v.len());
                    v.insert(pos, (combined.num_rows() + closing.len() - 1, None));
                }
            }
        }
    }
    let combined = if closing.is_empty() {
        combined.clone()
    } else {
        let templ = take_rows(combined, &closing)?;
        let n = templ.num_rows();
        let non_key: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|c| !is_version_column(c) && !keys.contains(c))
            .collect();
        let all_non_key = format!("|{}|", non_key.join("|"));
        let mut cols = Vec::with_capacity(schema.fields().len());
        for (f, c) in schema.fields().iter().zip(templ.columns()) {
            let name = f.name().as_str();
            cols.push(if keys.iter().any(|k| k == name) {
                c.clone()
            } else {
                match name {
                    SEQ => cast(
                        &(Arc::new(StringArray::from(vec![floor.unwrap_or(""); n])) as ArrayRef),
                        f.data_type(),
                    )?,
                    OP_COLUMN => cast(&(Arc::new(StringArray::from(vec!["D"; n])) as ArrayRef), f.data_type())?,
                    UNLOGGED => cast(
                        &(Arc::new(StringArray::from(vec![all_non_key.as_str(); n])) as ArrayRef),
                        f.data_type(),
                    )?,
                    SOURCE_FILE => cast(
                        &(Arc::new(StringArray::from(vec![FLOOR_SOURCE; n])) as ArrayRef),
                        f.data_type(),
                    )?,
                    _ => new_null_array(f.data_type(), n),
                }
            });
        }
        let closing_rows = RecordBatch::try_new(schema.clone(), cols)?;
        concat_batches(&schema, &[combined.clone(), closing_rows])?
    };
    let text = |name: &str| text_column(&combined, name);
    let seqs = text(SEQ)?;
    let ops = text(OP_COLUMN)?;
    let unlogged = text(UNLOGGED)?;
    let closing_files = text(SOURCE_FILE)?;
    let commit_ts = combined
        .column(schema.index_of(COMMIT_TS)?)
        .as_primitive::<TimestampMicrosecondType>()
        .clone();

    let order: Vec<usize> = versions.iter().flat_map(|v| v.iter().map(|(i, _)| *i)).collect();
    let matches: Vec<Option<usize>> = versions.iter().flat_map(|v| v.iter().map(|(_, e)| *e)).collect();
    let n = order.len();
    // Where each column's value comes from: the version itself, or for a column its change
    // did not log, the previous version's source (NULL before the key's first version).
    let data_cols: Vec<(usize, String)> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !is_version_column(f.name()))
        .map(|(i, f)| (i, f.name().clone()))
        .collect();
    let mut sources: Vec<Vec<Option<u32>>> = vec![Vec::with_capacity(n); data_cols.len()];
    let mut valid_from: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut valid_to: Vec<Option<i64>> = vec![None; n];
    let mut current: Vec<Option<bool>> = Vec::with_capacity(n);
    let mut at = 0usize;
    for v in &versions {
        let start = at;
        for (j, (i, _)) in v.iter().enumerate() {
            let i = *i;
            let marks: Vec<&str> = if unlogged.is_null(i) {
                Vec::new()
            } else {
                nosup_columns(unlogged.value(i)).collect()
            };
            for (c, (_, name)) in data_cols.iter().enumerate() {
                let own = !marks.iter().any(|m| m == name) || keys.iter().any(|k| k == name);
                let src = if own {
                    Some(i as u32)
                } else if j == 0 {
                    None
                } else {
                    sources[c][at - 1]
                };
                sources[c].push(src);
            }
            let time_of = |i: usize| {
                (!commit_ts.is_null(i))
                    .then(|| commit_ts.value(i))
                    .or_else(|| sequence_time(seqs.value(i)))
            };
            let mut own_time = time_of(i);
            // A closing version is at its floor's time, or at the key's next change if that is
            // earlier: a change DMS wrote after a truncate, committed within DMS's lag.
            if !closing_files.is_null(i) && closing_files.value(i) == FLOOR_SOURCE {
                if let Some(next) = v.get(j + 1).and_then(|(n, _)| time_of(*n)) {
                    own_time = Some(own_time.map_or(next, |t| t.min(next)));
                }
            }
            let prev = if j == 0 { None } else { valid_from[at - 1] };
            valid_from.push(match (own_time, prev) {
                (Some(t), Some(p)) => Some(t.max(p)),
                (t, p) => t.or(p),
            });
            if j > 0 {
                valid_to[at - 1] = valid_from[at];
            }
            current.push(Some(j + 1 == v.len() && ops.value(i) != "D"));
            at += 1;
        }
        debug_assert_eq!(at - start, v.len());
    }
    let order_idx = UInt32Array::from(order.iter().map(|&i| i as u32).collect::<Vec<_>>());
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    let mut data_pos = 0usize;
    for (i, f) in schema.fields().iter().enumerate() {
        let c: ArrayRef = match f.name().as_str() {
            VALID_FROM => Arc::new(TimestampMicrosecondArray::from(valid_from.clone()).with_timezone(UTC)),
            VALID_TO => Arc::new(TimestampMicrosecondArray::from(valid_to.clone()).with_timezone(UTC)),
            IS_CURRENT => Arc::new(BooleanArray::from(current.clone())),
            name if !is_version_column(name) => {
                let idx = UInt32Array::from(sources[data_pos].clone());
                data_pos += 1;
                take(combined.column(i), &idx, None)?
            }
            _ => take(combined.column(i), &order_idx, None)?,
        };
        cols.push(cast(&c, f.data_type())?);
    }
    Ok(Recomputed {
        rows: RecordBatch::try_new(schema.clone(), cols)?,
        matches,
        removed,
    })
}

/// What [`recompute`] makes of a set of keys' versions.
#[derive(Debug)]
pub struct Recomputed {
    /// One row per version, in key then sequence order.
    pub rows: RecordBatch,
    /// For each row, the existing row (of the input) it replaces.
    pub matches: Vec<Option<usize>>,
    /// Existing rows (of the input) that are no version any more: closing versions at a
    /// reload's anchor for keys its snapshot turned out to hold.
    pub removed: Vec<usize>,
}

/// The MERGE's flag of a source row that removes its version.
const REMOVE: &str = "__dms2delta_remove";

fn flagged(b: &RecordBatch, remove: bool) -> std::result::Result<RecordBatch, DeltaTableError> {
    let mut fields: Vec<Field> = b.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(REMOVE, DataType::Boolean, false));
    let mut cols = b.columns().to_vec();
    cols.push(Arc::new(BooleanArray::from(vec![remove; b.num_rows()])));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// The rows of `out` that are new or differ from the existing row they replace, and how many
/// are new.
fn changed_rows(
    combined: &RecordBatch,
    out: &RecordBatch,
    matches: &[Option<usize>],
) -> std::result::Result<(RecordBatch, u64), DeltaTableError> {
    let fields: Vec<SortField> = out
        .schema()
        .fields()
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    let conv = RowConverter::new(fields)?;
    let new_rows = conv.convert_columns(out.columns())?;
    let old_rows = conv.convert_columns(combined.columns())?;
    let keep: Vec<u32> = matches
        .iter()
        .enumerate()
        .filter(|(i, m)| match m {
            None => true,
            Some(e) => new_rows.row(*i) != old_rows.row(*e),
        })
        .map(|(i, _)| i as u32)
        .collect();
    let inserted = keep.iter().filter(|&&i| matches[i as usize].is_none()).count() as u64;
    Ok((take_rows(out, &keep)?, inserted))
}

async fn create(handle: &DeltaTable, spec: &TableSpec, schema: &SchemaRef) -> deltalake::DeltaResult<DeltaTable> {
    let st = StructType::try_from_arrow(schema.as_ref())?;
    handle
        .create()
        .with_columns(st.fields().cloned())
        .with_save_mode(SaveMode::ErrorIfExists)
        .with_table_name(format!("{}_history", spec.target_table))
        .with_comment(format!(
            "SCD type 2 history kept by dms2delta of {} {}.{}",
            spec.source, spec.schema, spec.table
        ))
        .await
}

/// Adds the data columns the history lacks and widens those the table widened.
async fn evolve(table: DeltaTable, wanted: &SchemaRef) -> deltalake::DeltaResult<DeltaTable> {
    let have = table.snapshot()?.snapshot().arrow_schema();
    let mut widen = Vec::new();
    let mut add = Vec::new();
    for f in wanted.fields() {
        match have.field_with_name(f.name()) {
            Ok(h) if h.data_type() != f.data_type() => {
                widen.push((f.name().clone(), h.data_type().clone(), f.data_type().clone()));
            }
            Ok(_) => {}
            Err(_) => add.push(f.as_ref().clone()),
        }
    }
    let mut table = table;
    if !widen.is_empty() {
        table = crate::operations::widen::widen_table(table, &widen).await?;
    }
    if !add.is_empty() {
        let fields = add
            .iter()
            .map(|f| {
                let dt = deltalake::kernel::DataType::try_from_arrow(f.data_type())?;
                Ok(StructField::new(f.name().clone(), dt, true))
            })
            .collect::<deltalake::DeltaResult<Vec<_>>>()?;
        table = table.add_columns().with_fields(fields).await?;
    }
    Ok(table)
}

async fn merge(
    table: DeltaTable,
    keys: &[String],
    writes: RecordBatch,
    info: HashMap<String, serde_json::Value>,
) -> deltalake::DeltaResult<DeltaTable> {
    let s = |n: &str| Expr::Column(Column::new(Some("source"), n));
    let t = |n: &str| Expr::Column(Column::new(Some("target"), n));
    let names: Vec<String> = writes
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| n != REMOVE)
        .collect();
    let on = keys
        .iter()
        .map(|k| t(k).eq(s(k)))
        .chain(std::iter::once(t(SEQ).eq(s(SEQ))))
        .reduce(Expr::and)
        .ok_or_else(|| DeltaTableError::Generic("a table without keys".into()))?;
    let ctx = SessionContext::new();
    let df = ctx.read_batch(writes)?;
    let (table, _) = table
        .merge(df, on)
        .with_source_alias("source")
        .with_target_alias("target")
        .with_commit_properties(CommitProperties::default().with_metadata(info))
        .when_matched_delete(|d| d.predicate(s(REMOVE)))?
        .when_matched_update(|mut u| {
            u = u.predicate(s(REMOVE).not());
            for n in names.iter().filter(|n| !keys.contains(n) && n.as_str() != SEQ) {
                u = u.update(Column::new_unqualified(n), s(n));
            }
            u
        })?
        .when_not_matched_insert(|mut i| {
            i = i.predicate(s(REMOVE).not());
            for n in &names {
                i = i.set(Column::new_unqualified(n), s(n));
            }
            i
        })?
        .await?;
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;

    fn schema() -> SchemaRef {
        history_schema(&[
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Utf8, true),
            Field::new("w", DataType::Utf8, true),
        ])
    }

    type V<'a> = (
        i64,
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
        &'a str,
        Option<i64>,
        Option<&'a str>,
    );

    fn rows(vs: &[V]) -> RecordBatch {
        let n = vs.len();
        let s = schema();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vs.iter().map(|v| v.0).collect::<Vec<_>>())),
            Arc::new(StringArray::from(vs.iter().map(|v| v.1).collect::<Vec<_>>())),
            Arc::new(StringArray::from(vs.iter().map(|v| v.2).collect::<Vec<_>>())),
            Arc::new(StringArray::from(vs.iter().map(|v| v.3).collect::<Vec<_>>())),
            Arc::new(StringArray::from(vs.iter().map(|v| v.4).collect::<Vec<_>>())),
            Arc::new(TimestampMicrosecondArray::from(vs.iter().map(|v| v.5).collect::<Vec<_>>()).with_timezone(UTC)),
            new_null_array(&ts_type(), n),
            new_null_array(&ts_type(), n),
            new_null_array(&DataType::Boolean, n),
            Arc::new(StringArray::from(vs.iter().map(|v| v.6).collect::<Vec<_>>())),
            Arc::new(StringArray::from(vec!["f"; n])),
        ];
        RecordBatch::try_new(s, cols).unwrap()
    }

    fn text(b: &RecordBatch, c: &str) -> Vec<Option<String>> {
        let a = cast(b.column(b.schema().index_of(c).unwrap()), &DataType::Utf8).unwrap();
        a.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect()
    }

    #[test]
    fn a_late_older_version_splits_the_interval_and_takes_unlogged_values_from_its_place() {
        let keys = vec!["id".to_string()];
        // Stored: versions at 10 and 30; the version at 30 did not log `w`.
        let stored = rows(&[
            (1, Some("a"), Some("w1"), "1S10", "I", Some(10), None),
            (1, Some("c"), None, "1S30", "U", Some(30), Some("|w|")),
        ]);
        let first = recompute(&stored, 0, &keys, None, None).unwrap().rows;
        assert_eq!(text(&first, "w"), vec![Some("w1".into()), Some("w1".into())]);
        // The version at 20 arrives late: it splits [10, 30) and its `w` reaches the one at 30.
        let late = rows(&[(1, Some("b"), Some("w2"), "1S20", "U", Some(20), None)]);
        let combined = concat_batches(&schema(), &[first.clone(), late]).unwrap();
        let r = recompute(&combined, 2, &keys, None, None).unwrap();
        let (out, matches) = (r.rows, r.matches);
        assert_eq!(
            text(&out, SEQ),
            vec![Some("1S10".into()), Some("1S20".into()), Some("1S30".into())]
        );
        assert_eq!(
            text(&out, "w"),
            vec![Some("w1".into()), Some("w2".into()), Some("w2".into())]
        );
        assert_eq!(matches, vec![Some(0), None, Some(1)]);
        let to = out
            .column(out.schema().index_of(VALID_TO).unwrap())
            .as_primitive::<TimestampMicrosecondType>();
        assert_eq!((to.value(0), to.value(1), to.is_null(2)), (20, 30, true));
        let cur = out.column(out.schema().index_of(IS_CURRENT).unwrap()).as_boolean();
        assert_eq!((cur.value(0), cur.value(1), cur.value(2)), (false, false, true));
        // Applied again, nothing differs.
        let again = concat_batches(
            &schema(),
            &[
                out.clone(),
                rows(&[(1, Some("b"), Some("w2"), "1S20", "U", Some(20), None)]),
            ],
        )
        .unwrap();
        let r2 = recompute(&again, 3, &keys, None, None).unwrap();
        assert_eq!(changed_rows(&again, &r2.rows, &r2.matches).unwrap().0.num_rows(), 0);
    }

    /// A truncate of a table ordered by `AR_H_CHANGE_SEQ` whose floor is the removal's time: a
    /// change DMS wrote after it, committed at the source before the removal (DMS's lag), follows
    /// the closing version, which is placed at that change's time, not after it.
    #[test]
    fn a_change_written_after_a_truncate_follows_its_closing_version_whatever_its_sequence() {
        let keys = vec!["id".to_string()];
        let mut b = rows(&[
            (
                1,
                Some("a"),
                Some("x"),
                "1S20240528100455000000000000000000001",
                "I",
                Some(100),
                None,
            ),
            (
                2,
                Some("b"),
                Some("y"),
                "1S20240528100456000000000000000000002",
                "I",
                Some(200),
                None,
            ),
            (
                1,
                Some("new"),
                Some("x2"),
                "1S20240528102959800000000000000000003",
                "I",
                Some(300),
                None,
            ),
        ]);
        let files: ArrayRef = Arc::new(StringArray::from(vec![
            "s3://dms/app/t/20240528-100500000.csv",
            "s3://dms/app/t/20240528-100500000.csv",
            "s3://dms/app/t/20240528-103100000.csv",
        ]));
        let mut cols = b.columns().to_vec();
        let i = b.schema().index_of(SOURCE_FILE).unwrap();
        cols[i] = files;
        b = RecordBatch::try_new(b.schema(), cols).unwrap();
        let floor = "1S2024052810300050;";
        let newer = |f: &str| f.ends_with("103100000.csv");
        let r = recompute(&b, 0, &keys, Some(floor), Some(&newer)).unwrap();
        let out = r.rows;
        let seqs = text(&out, SEQ);
        let ops = text(&out, OP_COLUMN);
        let got: Vec<(String, String)> = seqs.into_iter().flatten().zip(ops.into_iter().flatten()).collect();
        assert_eq!(
            got,
            vec![
                ("1S20240528100455000000000000000000001".to_string(), "I".to_string()),
                (floor.to_string(), "D".to_string()),
                ("1S20240528102959800000000000000000003".to_string(), "I".to_string()),
                ("1S20240528100456000000000000000000002".to_string(), "I".to_string()),
                (floor.to_string(), "D".to_string()),
            ]
        );
        let cur = out.column(out.schema().index_of(IS_CURRENT).unwrap()).as_boolean();
        assert!(cur.value(2), "the change after the truncate is current");
        let from = out
            .column(out.schema().index_of(VALID_FROM).unwrap())
            .as_primitive::<TimestampMicrosecondType>();
        // Key 1 closes at its next change's time; key 2 at the floor's.
        assert_eq!((from.value(1), from.value(2)), (300, 300));
        assert_eq!(Some(from.value(4)), sequence_time(floor));
        // Without knowing the file, the change would be closed at the floor.
        let blind = recompute(&b, 0, &keys, Some(floor), None).unwrap();
        let cur = blind
            .rows
            .column(blind.rows.schema().index_of(IS_CURRENT).unwrap())
            .as_boolean();
        assert!((0..blind.rows.num_rows()).all(|r| !cur.value(r)));
    }

    #[test]
    fn a_floor_closes_the_open_version_once() {
        let keys = vec!["id".to_string()];
        let stored = rows(&[
            (
                1,
                Some("a"),
                Some("x"),
                "1F20240528195141000000:000000000001",
                "I",
                None,
                None,
            ),
            (
                2,
                Some("b"),
                Some("y"),
                "1F20240528195141000000:000000000002",
                "I",
                None,
                None,
            ),
            (2, None, None, "1F20240528195142000000:000000000001", "D", None, None),
        ]);
        let floor = "1F20240528195143000000;";
        let r = recompute(&stored, 3, &keys, Some(floor), None).unwrap();
        let out = r.rows;
        assert_eq!(out.num_rows(), 4, "key 1 closed, key 2 already deleted");
        assert_eq!(r.matches.iter().filter(|m| m.is_none()).count(), 1);
        let again = recompute(&out, 4, &keys, Some(floor), None).unwrap();
        assert_eq!(changed_rows(&out, &again.rows, &again.matches).unwrap().0.num_rows(), 0);
        assert!(again.removed.is_empty());
        // The reload's snapshot row for key 1 arrives after the floor rose: key 1 was not
        // deleted at the anchor, so its closing version goes.
        let snapshot = rows(&[(
            1,
            Some("a2"),
            Some("x2"),
            "1F20240528195143000000;LLOAD00000001:000000000001",
            "I",
            None,
            None,
        )]);
        let with = concat_batches(&schema(), &[out.clone(), snapshot]).unwrap();
        let r = recompute(&with, 4, &keys, Some(floor), None).unwrap();
        assert_eq!(r.removed.len(), 1);
        assert_eq!(
            text(&r.rows, SEQ)
                .iter()
                .filter(|s| s.as_deref() == Some(floor))
                .count(),
            0
        );
        assert_eq!(r.rows.num_rows(), 4);
        assert_eq!(
            sequence_time(floor),
            crate::route::digits_to_micros("202405281951430000")
        );
    }
}
