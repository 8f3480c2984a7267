//! Assembly: the new row versions, each column taken from the change, the stored row or NULL.

use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::{cast, interleave};
use arrow::datatypes::{DataType, SchemaRef};
use deltalake::DeltaResult;

use super::marking::{Kind, NewRow, Take};
use super::scan::Hits;
use crate::model::columns::{column_of_seq, COMMIT_TS, DELETED, DELETED_AT, SEQ};
use crate::types::UTC;

/// Per change: whether it carries values beyond its key. A soft-deleted row takes a full delete
/// image's values, which are the row as it was deleted whatever order the changes arrived in; a
/// key-only image (PostgreSQL's default replica identity) has none, so the row keeps its own.
/// The copy-on-write MERGE applies the same rule as an expression.
pub(super) fn full_images(source: &RecordBatch, keys: &[String]) -> Vec<bool> {
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
pub(super) fn new_rows_batch(
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
