//! A new table's schema and properties, and deletion vectors turned on for an older one.

use std::collections::HashMap;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::kernel::StructType;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, TableProperty};

use crate::config::{DeleteMode, TableSpec};
use crate::model::columns::{column_of_seq, COMMIT_TS, DELETED, DELETED_AT, SEQ};
use crate::types::UTC;

pub(super) fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()))
}

/// The table's columns: the data columns and column sequences, then the sequence and commit
/// time (and the soft-delete flag and time).
fn table_schema(spec: &TableSpec, source: &RecordBatch) -> Schema {
    let mut fields: Vec<Field> = source
        .schema()
        .fields()
        .iter()
        .filter(|f| !f.name().starts_with("_dms_") || column_of_seq(f.name()).is_some())
        .map(|f| Field::new(f.name(), f.data_type().clone(), true))
        .collect();
    fields.push(Field::new(SEQ, DataType::Utf8, true));
    fields.push(Field::new(COMMIT_TS, ts_type(), true));
    if spec.delete_mode == DeleteMode::Soft {
        fields.push(Field::new(DELETED, DataType::Boolean, true));
        fields.push(Field::new(DELETED_AT, ts_type(), true));
    }
    Schema::new(fields)
}

pub(super) async fn create_table(
    handle: &DeltaTable,
    spec: &TableSpec,
    source: &RecordBatch,
) -> deltalake::DeltaResult<DeltaTable> {
    let schema = table_schema(spec, source);
    let st = StructType::try_from_arrow(&schema)?;
    let mut b = handle
        .create()
        .with_columns(st.fields().cloned())
        .with_save_mode(SaveMode::ErrorIfExists)
        .with_table_name(&spec.target_table)
        .with_comment(format!(
            "Replicated by dms2delta from {} {}.{}",
            spec.source, spec.schema, spec.table
        ));
    if !spec.partition_by.is_empty() {
        b = b.with_partition_columns(spec.partition_by.clone());
    }
    if spec.deletion_vectors {
        b = b.with_configuration_property(TableProperty::EnableDeletionVectors, Some("true"));
    }
    if spec.change_data_feed {
        b = b.with_configuration_property(TableProperty::EnableChangeDataFeed, Some("true"));
    }
    b.await
}

/// Whether the table accepts deletion vectors (the property set and the protocol raised).
pub fn has_deletion_vectors(table: &DeltaTable) -> bool {
    table.snapshot().is_ok_and(|s| {
        s.protocol().min_reader_version() >= 3
            && s.metadata()
                .configuration()
                .get(TableProperty::EnableDeletionVectors.as_ref())
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    })
}

/// Turns deletion vectors on for a table created without them (its own commit: the protocol
/// goes to reader 3 / writer 7).
pub(super) async fn enable_deletion_vectors(table: DeltaTable) -> deltalake::DeltaResult<DeltaTable> {
    if has_deletion_vectors(&table) {
        return Ok(table);
    }
    tracing::info!(stage = "commit", table = %table.table_url(), "enabling deletion vectors (protocol reader 3 / writer 7)");
    table
        .set_tbl_properties()
        .with_properties(HashMap::from([(
            TableProperty::EnableDeletionVectors.as_ref().to_string(),
            "true".to_string(),
        )]))
        .await
}
