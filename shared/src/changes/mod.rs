//! Change sets: plain Arrow data plus metadata columns, and the deduplication that keeps only the
//! highest-sequence change per key. They know nothing about Delta tables.

mod columns;
mod dedup;
mod int_keys;
pub use int_keys::casts_to_i64;
mod last_row;
mod sequence;

pub use crate::model::columns::{
    column_of_seq, column_seq_name, is_meta, COLUMN_SEQ_PREFIX, COMMIT_TS, DELETED, DELETED_AT, NOSUP, OP, SEQ,
    SOURCE_FILE,
};
pub use columns::{meta_fields, nosup_columns, source_file_column, source_file_type};
pub use dedup::Deduper;
pub use last_row::LastRowPerKey;
pub use sequence::{NotAChangeSeq, Sequence};

#[cfg(test)]
pub(crate) mod tests;
