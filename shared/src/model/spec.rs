//! What the configuration resolved for one table: the source it comes from, its lake name, its
//! keys and columns, and the per-table settings every stage reads.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::TableId;
use crate::types::ColumnType;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeleteMode {
    #[default]
    Hard,
    Soft,
}

/// When and how the compact function maintains a table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactConfig {
    /// Size compaction aims for, in MiB.
    #[serde(default = "default_target_file_mb")]
    pub target_file_mb: u64,
    /// Compaction runs once this many files are under half the target size.
    #[serde(default = "default_min_small_files")]
    pub min_small_files: usize,
    /// A checkpoint is written every this many commits (and old log entries expire).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: u64,
    /// Small files are counted (which means reading the table's state) every this many commits;
    /// other invocations only read `_last_checkpoint` and return.
    #[serde(default = "default_check_every")]
    pub check_every_commits: u64,
    /// Unreferenced data files older than this are deleted. At least 168 (7 days), Delta's
    /// safe minimum: readers and writers may still use files removed more recently.
    #[serde(default = "default_vacuum_retention_hours")]
    pub vacuum_retention_hours: u64,
    /// Cluster compacted files by the key columns (z-order), so merges touch fewer files.
    #[serde(default)]
    pub zorder_by_keys: bool,
    /// With deletion vectors: a data file whose vector marks at least this percentage of its
    /// rows is rewritten without them (bin-packing alone never rewrites a large file).
    #[serde(default = "default_purge_deleted_percent")]
    pub purge_deleted_percent: u32,
}

impl Default for CompactConfig {
    fn default() -> Self {
        CompactConfig {
            target_file_mb: default_target_file_mb(),
            min_small_files: default_min_small_files(),
            checkpoint_interval: default_checkpoint_interval(),
            check_every_commits: default_check_every(),
            vacuum_retention_hours: default_vacuum_retention_hours(),
            zorder_by_keys: false,
            purge_deleted_percent: default_purge_deleted_percent(),
        }
    }
}

/// Delta's default `deletedFileRetentionDuration`.
pub const MIN_VACUUM_RETENTION_HOURS: u64 = 168;

fn default_target_file_mb() -> u64 {
    128
}
fn default_min_small_files() -> usize {
    16
}
fn default_checkpoint_interval() -> u64 {
    20
}
fn default_check_every() -> u64 {
    10
}
/// Spark's OPTIMIZE rewrites files with more than 5% of their rows deleted by default.
fn default_purge_deleted_percent() -> u32 {
    5
}
fn default_vacuum_retention_hours() -> u64 {
    MIN_VACUUM_RETENTION_HOURS
}

/// A column as the decoder uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
}

/// Everything known about one selected table, resolved from the source defaults, the table's
/// entry, the DMS table definitions and the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub source: String,
    pub namespace: String,
    /// Source schema and table, as DMS names them.
    pub schema: String,
    pub table: String,
    /// Schema and table in the lake, after renames.
    pub target_schema: String,
    pub target_table: String,
    pub keys: Vec<String>,
    pub columns: Option<Vec<Column>>,
    pub sequence_column: Option<String>,
    pub timestamp_column: Option<String>,
    pub delete_mode: DeleteMode,
    pub partition_by: Vec<String>,
    /// Commits mark replaced rows in deletion vectors instead of rewriting files.
    pub deletion_vectors: bool,
    /// Commits write the Delta Change Data Feed.
    pub change_data_feed: bool,
    pub compact: CompactConfig,
    /// Columns renamed at the source: the file's name -> the table's.
    pub renamed_columns: BTreeMap<String, String>,
    /// Columns whose NULL in an update means the source did not log them.
    pub unlogged_when_null: Vec<String>,
    /// The removal of the table's DMS files may truncate it (see [`crate::config::TruncateSettings`]).
    pub follow_removals: bool,
    /// The table keeps an SCD type 2 history table (see [`crate::config::HistorySettings`]): decode then stages
    /// every change of a file, not only the newest per key.
    pub history: bool,
}

impl TableSpec {
    /// The table's name for a column the file names `name` (see `renamed_columns`).
    pub fn column_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.renamed_columns.get(name).map_or(name, String::as_str)
    }

    /// The table in the lake (namespace, schema and table after renames).
    pub fn id(&self) -> TableId {
        TableId::new(&self.namespace, &self.target_schema, &self.target_table)
    }

    /// `namespace.schema.table` in the lake: the table's name in logs, metrics and queries.
    pub fn qualified_name(&self) -> String {
        self.id().qualified_name()
    }

    /// The table's path below the lake root.
    pub fn lake_path(&self) -> String {
        self.id().lake_path()
    }

    /// The history table's path below the lake root. Below `_dms2delta`, which no namespace can
    /// start with, so no source table's name (`t_history`, say) can ever land on it.
    pub fn history_path(&self) -> String {
        format!("_dms2delta/history/{}", self.lake_path())
    }
}
