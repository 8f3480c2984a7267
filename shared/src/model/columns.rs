//! The names dms2delta gives the columns and commit entries it adds to tables: one place, so
//! that decoding, staging, merging and compaction cannot disagree on a spelling.

/// `I`, `U` or `D`.
pub const OP: &str = "_dms_op";
/// The change's sequence: a string whose text order is the change order (see
/// [`crate::changes::Sequence`]).
pub const SEQ: &str = "_dms_seq";
/// The source commit time, when known.
pub const COMMIT_TS: &str = "_dms_commit_ts";
/// The DMS object the change came from.
pub const SOURCE_FILE: &str = "_dms_source_file";
/// Columns the source did not log (DMS's no-sup value), as `|a|b|`: keep the table's old value.
pub const NOSUP: &str = "_dms_nosup";
/// Soft-delete flag column of a Delta table.
pub const DELETED: &str = "_dms_deleted";
/// When a soft-deleted row (or a tombstone) was deleted.
pub const DELETED_AT: &str = "_dms_deleted_at";
/// Prefix of a column's own sequence, `_dms_seq_of_<column>`: the sequence of the change that
/// set the column's value, where that is older than the row's `_dms_seq` (NULL: the row's).
/// Only columns some change did not log have one; it lets a late, older change that logged the
/// column still land there (see [`column_seq_name`]).
pub const COLUMN_SEQ_PREFIX: &str = "_dms_seq_of_";

/// The key of dms2delta's entry in a Delta commit's `commitInfo` (change sets and source files
/// the commit applied).
pub const COMMIT_INFO_KEY: &str = "dms2delta";

/// The history table's columns (an SCD type 2 table, see [`crate::operations::history`]).
pub mod history {
    /// `I`, `U` or `D`: the change that made the version. A delete is a version of its own, never
    /// current, whose interval runs until the key is inserted again.
    pub const OP_COLUMN: &str = "_op";
    /// When the version became the source's row (see the replication contract for the fallback).
    pub const VALID_FROM: &str = "_valid_from";
    /// When the next version replaced it; NULL for a key's newest version.
    pub const VALID_TO: &str = "_valid_to";
    /// The key's newest version, and not a delete: the row the current-state table holds.
    pub const IS_CURRENT: &str = "_is_current";
    /// The columns the version's change did not log, as `|a|b|`: their values are the previous
    /// version's, and are taken again whenever an older version arrives late.
    pub const UNLOGGED: &str = "_dms_unlogged";
}

/// The name of `column`'s own sequence column.
pub fn column_seq_name(column: &str) -> String {
    format!("{COLUMN_SEQ_PREFIX}{column}")
}

/// The column whose own sequence `name` holds, if `name` is such a column.
pub fn column_of_seq(name: &str) -> Option<&str> {
    name.strip_prefix(COLUMN_SEQ_PREFIX)
}

/// Whether `name` is one of the metadata columns every change set ends with.
pub fn is_meta(name: &str) -> bool {
    matches!(name, OP | SEQ | COMMIT_TS | SOURCE_FILE | NOSUP)
}
