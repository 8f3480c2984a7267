//! The metadata columns a change set ends with, and the values they hold.

use std::sync::Arc;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, TimeUnit};
use arrow::error::ArrowError;

use crate::types::UTC;

use super::{COMMIT_TS, NOSUP, OP, SEQ, SOURCE_FILE};

/// The metadata columns every change set ends with, in this order.
pub fn meta_fields() -> Vec<Field> {
    vec![
        Field::new(OP, DataType::Utf8, false),
        Field::new(SEQ, DataType::Utf8, false),
        Field::new(
            COMMIT_TS,
            DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            true,
        ),
        Field::new(SOURCE_FILE, source_file_type(), false),
        Field::new(NOSUP, DataType::Utf8, true),
    ]
}

/// `_dms_source_file` holds one value per change set: a dictionary of that one value, not the
/// URI copied into every row (which cost more than the deduplication itself).
pub fn source_file_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// `_dms_source_file` for `rows` rows of one file.
pub fn source_file_column(uri: &str, rows: usize) -> Result<ArrayRef, ArrowError> {
    let keys = arrow::array::Int32Array::from(vec![0; rows]);
    let values: ArrayRef = Arc::new(StringArray::from(vec![uri]));
    Ok(Arc::new(arrow::array::DictionaryArray::<Int32Type>::try_new(
        keys, values,
    )?))
}

/// Parses a `|a|b|` no-sup list.
pub fn nosup_columns(v: &str) -> impl Iterator<Item = &str> {
    v.split('|').filter(|s| !s.is_empty())
}
