//! The copy-on-write MERGE: its sequence-guarded clauses for hard and soft deletes.

use std::collections::HashMap;
use std::ops::Not;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::datafusion::prelude::{lit, when, Expr, SessionContext};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::merge::{InsertBuilder, MergeMetrics, UpdateBuilder};
use deltalake::DeltaTable;
use serde_json::Value;

use crate::config::{DeleteMode, TableSpec};
use crate::model::columns::{COMMIT_TS, DELETED, DELETED_AT, NOSUP, OP, SEQ};
use crate::types::UTC;

use super::column_seqs::Tracked;
use super::create::ts_type;
use super::exprs::{s, t, target_col, unlogged};

pub(super) async fn merge(
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
    let soft = spec.delete_mode == DeleteMode::Soft;
    // The row a change writes: its values, its sequences and, in soft mode, its delete flag.
    let updated = |mut u: UpdateBuilder| {
        for c in &data_cols {
            u = u.update(target_col(c), value(c));
        }
        u = tracked.newer_seqs(u, lit(true));
        u = u
            .update(target_col(SEQ), s(SEQ))
            .update(target_col(COMMIT_TS), s(COMMIT_TS));
        if soft {
            u = u
                .update(target_col(DELETED), s(DELETED))
                .update(target_col(DELETED_AT), s(DELETED_AT));
        }
        u
    };
    let inserted = |mut i: InsertBuilder, row: bool| {
        for c in &data_cols {
            i = i.set(target_col(c), s(c));
        }
        i = tracked.insert_seqs(i, row);
        i = i.set(target_col(SEQ), s(SEQ)).set(target_col(COMMIT_TS), s(COMMIT_TS));
        if soft {
            i = i
                .set(target_col(DELETED), s(DELETED))
                .set(target_col(DELETED_AT), s(DELETED_AT));
        }
        i
    };
    if soft {
        // A full delete image is the row as it was deleted, whatever order the changes came
        // in; a key-only image (PostgreSQL's default replica identity) carries no values, so
        // the row keeps the ones it has. See merge_on_read's `full_image`.
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
    } else {
        m = m.when_matched_delete(|d| d.predicate(newer.clone().and(is_delete.clone())))?;
    }
    m = m.when_matched_update(|u| updated(u.predicate(newer.clone())))?;
    if let Some(older) = tracked.older_predicate() {
        m = m.when_matched_update(|u| tracked.older_update(u.predicate(older.and(is_delete.clone().not()))))?;
    }
    m = m.when_not_matched_insert(|i| inserted(i.predicate(s(OP).not_eq(lit("D"))), true))?;
    if soft {
        // A delete for a key never seen leaves a deleted marker row: it is also the tombstone
        // that keeps a late insert from bringing the key back.
        m = m.when_not_matched_insert(|i| inserted(i.predicate(is_delete.clone()), false))?;
    }
    let (table, metrics) = m.await?;
    Ok((table, Some(metrics)))
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
