//! Widening a table's column types: a full rewrite in one commit, readied first for tables with a
//! change feed (a rewrite writes no change files). Used by the commit and history operations.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::datafusion::prelude::SessionContext;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaResult, DeltaTable};

use crate::operations::change_feed;
use crate::operations::merge_on_read::purge_deleted_rows;

/// Readies the table for a rewrite that writes no change files (a widening overwrite): readers
/// take such a commit's removed files as deleted rows, and delta-rs and the Python package read
/// a removed file whole, deletion vector notwithstanding, so rows replaced long ago would show
/// up as deleted again. The rows the vectors mark are first dropped from their files, in a
/// commit that changes no data (as compaction's purge does).
pub async fn before_full_rewrite(table: DeltaTable) -> DeltaResult<DeltaTable> {
    if !change_feed::is_enabled(&table) {
        return Ok(table);
    }
    let (table, _) = purge_deleted_rows(table, 0).await?;
    Ok(table)
}

/// Rewrites the table with wider column types, in one commit.
pub(crate) async fn widen_table(table: DeltaTable, widen: &[(String, DataType, DataType)]) -> DeltaResult<DeltaTable> {
    use deltalake::operations::write::SchemaMode;
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    let schema = table.snapshot()?.snapshot().arrow_schema();
    ctx.register_table("t", table.table_provider().await?)?;
    let batches = ctx.table("t").await?.collect().await?;
    let mut fields: Vec<Field> = Vec::new();
    for f in schema.fields() {
        let dt = widen
            .iter()
            .find(|w| &w.0 == f.name())
            .map(|w| w.2.clone())
            .unwrap_or_else(|| f.data_type().clone());
        fields.push(Field::new(f.name(), dt, true));
    }
    let target = Arc::new(Schema::new(fields));
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        let mut cols = Vec::new();
        for f in target.fields() {
            let c = b.column(b.schema().index_of(f.name())?);
            cols.push(arrow::compute::kernels::cast::cast(c, f.data_type())?);
        }
        out.push(RecordBatch::try_new(target.clone(), cols)?);
    }
    if out.is_empty() {
        out.push(RecordBatch::new_empty(target.clone()));
    }
    table
        .write(out)
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .await
}
