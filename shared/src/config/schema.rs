//! The document's shape: what serde reads, with its defaults.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Column, CompactConfig, DeleteMode, StorageConfig};
use crate::types::{ColumnType, TypeError};

/// The whole document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the Delta tables live: `s3://bucket/prefix`, `file:///dir` or a local path.
    pub lake: String,
    /// Where decoded change sets are staged for the commit stage.
    pub staging: String,
    /// Where error reports for quarantined files are written.
    pub quarantine: String,
    /// How to reach S3 (endpoint, region) and, for local runs, which folder stands for a bucket.
    #[serde(default)]
    pub storage: StorageConfig,
    /// One entry per DMS task (or S3 target endpoint).
    pub sources: Vec<SourceConfig>,
    /// Commit stage settings.
    #[serde(default)]
    pub commit: CommitConfig,
    /// Compaction defaults (per-table `compact` entries override them).
    #[serde(default)]
    pub compact: CompactConfig,
    /// Limits that protect the functions from oversized input.
    #[serde(default)]
    pub limits: Limits,
    /// CloudWatch metrics settings.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// SCD type 2 history tables, for every table (tables may override it).
    #[serde(default)]
    pub history: HistorySettings,
}

/// Whether a table keeps a history table beside its current-state table: one row per version
/// of each key, with its validity interval (see `operations::history`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySettings {
    #[serde(default)]
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The CloudWatch namespace of the Embedded Metric Format lines.
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            namespace: default_namespace(),
        }
    }
}

fn default_namespace() -> String {
    "dms2delta".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest single CSV field in bytes.
    #[serde(default = "default_max_field_bytes")]
    pub max_field_bytes: usize,
    /// Largest DMS object in bytes that decode accepts.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Largest CSV record (one row as written, all its fields) in bytes; unset: four times
    /// `max_field_bytes`. Bounds the memory one row takes while it is read.
    #[serde(default)]
    pub max_record_bytes: Option<usize>,
    /// Most data one file may hold once decompressed: CSV text after gzip inflation, or the
    /// uncompressed size of a Parquet file's column chunks. Bounds decode memory whatever the
    /// compression ratio.
    #[serde(default = "default_max_inflated_bytes")]
    pub max_inflated_bytes: u64,
}

impl Limits {
    /// The record limit in effect.
    pub fn record_bytes(&self) -> usize {
        self.max_record_bytes
            .unwrap_or_else(|| self.max_field_bytes.saturating_mul(4))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_field_bytes: default_max_field_bytes(),
            max_file_bytes: default_max_file_bytes(),
            max_record_bytes: None,
            max_inflated_bytes: default_max_inflated_bytes(),
        }
    }
}

fn default_max_field_bytes() -> usize {
    64 * 1024 * 1024
}

fn default_max_file_bytes() -> u64 {
    8 * 1024 * 1024 * 1024
}

fn default_max_inflated_bytes() -> u64 {
    8 * 1024 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitConfig {
    /// Most change sets one commit gathers for a table.
    #[serde(default = "default_max_change_sets")]
    pub max_change_sets: usize,
    /// Most bytes of staged change sets (their stored size) one commit gathers for a table; the
    /// oldest change set is taken whatever its size. Bounds a commit's memory by the batch
    /// rather than by what is waiting (a one-pass `run` over a whole full load).
    #[serde(default = "default_max_staged_bytes")]
    pub max_staged_bytes: u64,
    /// Attempts at a commit that conflicts with concurrent writers before giving up to the queue.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First backoff in milliseconds (full jitter, doubling).
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// Longest backoff in milliseconds.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// How long deleted keys are remembered, so a late older change cannot bring a row back.
    #[serde(default = "default_tombstone_retention_hours")]
    pub tombstone_retention_hours: u64,
    /// Merge-on-read: changed and deleted rows are marked in deletion vectors and new versions
    /// go to a new file, instead of rewriting every data file that holds a changed key. Raises
    /// the table's protocol to reader 3 / writer 7 (readers must support deletion vectors).
    /// Tables may override it.
    #[serde(default)]
    pub deletion_vectors: bool,
    /// Delta Change Data Feed: every commit that changes rows also writes the change, row by
    /// row (`delta.enableChangeDataFeed`). Tables may override it.
    #[serde(default)]
    pub change_data_feed: bool,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            max_change_sets: default_max_change_sets(),
            max_staged_bytes: default_max_staged_bytes(),
            max_attempts: default_max_attempts(),
            backoff_base_ms: default_backoff_base_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            tombstone_retention_hours: default_tombstone_retention_hours(),
            deletion_vectors: false,
            change_data_feed: false,
        }
    }
}

fn default_max_change_sets() -> usize {
    64
}
fn default_max_staged_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_max_attempts() -> u32 {
    12
}
fn default_backoff_base_ms() -> u64 {
    50
}
fn default_backoff_max_ms() -> u64 {
    5_000
}
fn default_tombstone_retention_hours() -> u64 {
    7 * 24
}

/// One DMS task writing to one prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// A short unique name, used in logs and metrics.
    pub name: String,
    /// The bucket DMS writes to.
    pub bucket: String,
    /// DMS `BucketFolder`: the prefix in front of `schema/table/`.
    #[serde(default)]
    pub bucket_folder: Option<String>,
    /// The first path segment of this source's Delta tables; defaults to `name`. Keeps two
    /// sources' `public.accounts` apart.
    #[serde(default)]
    pub namespace: Option<String>,
    /// DMS CSV settings.
    #[serde(default)]
    pub csv: CsvSettings,
    /// DMS `DatePartitionEnabled` / `DatePartitionSequence` / `DatePartitionDelimiter`.
    #[serde(default)]
    pub date_partitioning: DatePartitioning,
    /// DMS `CdcPath` when `PreserveTransactions` is on (CDC_TXN files).
    #[serde(default)]
    pub cdc_path: Option<String>,
    /// DMS `TimestampColumnName`, for every table of this source.
    #[serde(default)]
    pub timestamp_column: Option<String>,
    /// The column added with `$AR_H_CHANGE_SEQ`, for every table of this source.
    #[serde(default)]
    pub sequence_column: Option<String>,
    /// Table reloads (a new full load while CDC goes on): how they are recognised and when the
    /// rows a new snapshot lacks are removed.
    #[serde(default)]
    pub reloads: ReloadSettings,
    /// The ARN of the DMS replication task writing this source
    /// (`arn:aws:dms:<region>:<account>:task:<id>`). When set, a reload's end is also taken
    /// from DMS's own table statistics (the table's load completed after the reload began), so
    /// the rows its snapshot lacks go as soon as DMS says the load is over.
    #[serde(default)]
    pub dms_task_arn: Option<String>,
    /// Source truncates and drops, which DMS replicates by removing the table's files: whether
    /// removal events may empty a table. Off by default; tables can override it.
    #[serde(default)]
    pub truncates: TruncateSettings,
    /// Table selection and renames, DMS table-mapping style. No rules: every table is selected.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// DMS external table definition (the `TableCount` / `Tables` / `TableColumns` JSON).
    #[serde(default)]
    pub table_definitions: Option<DmsTableDefinitions>,
    /// Per-table settings.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSettings {
    /// DMS `CsvDelimiter`.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// DMS `CsvNullValue`; unset means an empty unquoted field is NULL.
    #[serde(default)]
    pub null_value: Option<String>,
    /// DMS `CsvNoSupValue`: a value that means "the source did not log this column".
    #[serde(default)]
    pub no_sup_value: Option<String>,
    /// DMS `AddColumnName`: the first line of each file names the columns.
    #[serde(default)]
    pub header: bool,
}

impl Default for CsvSettings {
    fn default() -> Self {
        CsvSettings {
            delimiter: default_delimiter(),
            null_value: None,
            no_sup_value: None,
            header: false,
        }
    }
}

fn default_delimiter() -> String {
    ",".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadSettings {
    /// Recognise a LOAD file written after a CDC file of its table as a reload (a new load
    /// generation) rather than a late part of the first load.
    #[serde(default = "yes")]
    pub detect: bool,
    /// A reload's load is over once a change written after it is committed, once DMS reports
    /// it completed (with `dms_task_arn`, see [`crate::dms`]), or this long after its first
    /// LOAD file was decoded (for a table without changes after the reload); then rows the new
    /// snapshot lacks are removed.
    #[serde(default = "default_settle_seconds")]
    pub settle_after_seconds: u64,
    /// A CDC object tells when DMS wrote it only if its upload time (LastModified) lies within
    /// this many seconds after the time in its name (DMS's `CdcMaxBatchInterval` plus upload
    /// time); objects copied into the bucket later are no evidence of a reload.
    #[serde(default = "default_settle_seconds")]
    pub max_name_skew_seconds: u64,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        ReloadSettings {
            detect: true,
            settle_after_seconds: default_settle_seconds(),
            max_name_skew_seconds: default_settle_seconds(),
        }
    }
}

/// How a source `TRUNCATE` or `DROP TABLE` reaches the Delta table. DMS (default DDL handling)
/// replicates both by deleting the table's files and folder from the bucket, with no row saying
/// so; people and lifecycle rules delete DMS files too, so following removals is opt-in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruncateSettings {
    /// Treat the removal of a table's DMS files as a truncate once a listing shows that every
    /// DMS file of the table written before the removal is gone: every row sequenced before the
    /// removal leaves the table (or is marked deleted, `delete_mode: soft`). Lifecycle
    /// expirations never count.
    #[serde(default)]
    pub follow_removals: bool,
}

fn yes() -> bool {
    true
}

fn default_settle_seconds() -> u64 {
    3600
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatePartitioning {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub sequence: DatePartitionSequence,
    #[serde(default)]
    pub delimiter: DatePartitionDelimiter,
    /// DMS `DatePartitionTimezone`: the IANA zone DMS names date folders and CDC files in
    /// (UTC when unset). Checked at load.
    #[serde(default)]
    pub timezone: Option<String>,
}

impl DatePartitioning {
    /// The zone CDC file names are in, when it is not UTC.
    pub fn zone(&self) -> Option<chrono_tz::Tz> {
        self.timezone.as_deref().and_then(|z| z.parse().ok())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum DatePartitionSequence {
    #[default]
    #[serde(rename = "YYYYMMDD")]
    YyyyMmDd,
    #[serde(rename = "YYYYMMDDHH")]
    YyyyMmDdHh,
    #[serde(rename = "YYYYMM")]
    YyyyMm,
    #[serde(rename = "MMYYYYDD")]
    MmYyyyDd,
    #[serde(rename = "DDMMYYYY")]
    DdMmYyyy,
}

impl DatePartitionSequence {
    /// Widths of the date parts, in order.
    pub fn parts(self) -> &'static [usize] {
        match self {
            DatePartitionSequence::YyyyMmDd => &[4, 2, 2],
            DatePartitionSequence::YyyyMmDdHh => &[4, 2, 2, 2],
            DatePartitionSequence::YyyyMm => &[4, 2],
            DatePartitionSequence::MmYyyyDd => &[2, 4, 2],
            DatePartitionSequence::DdMmYyyy => &[2, 2, 4],
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DatePartitionDelimiter {
    #[default]
    Slash,
    Dash,
    Underscore,
    None,
}

/// A DMS table-mapping style rule. `%` matches any run of characters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub action: RuleAction,
    pub schema: String,
    pub table: String,
    /// For `rename`: the new schema name in the lake.
    #[serde(default)]
    pub to_schema: Option<String>,
    /// For `rename`: the new table name in the lake.
    #[serde(default)]
    pub to_table: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    Include,
    Exclude,
    Rename,
}

/// Per-table settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub schema: String,
    pub table: String,
    /// Primary key columns; otherwise the `ColumnIsPk` columns of `table_definitions`.
    #[serde(default)]
    pub keys: Vec<String>,
    /// The table's columns in file order (required for headerless CSV, optional types otherwise).
    #[serde(default)]
    pub columns: Option<Vec<ColumnConfig>>,
    /// Overrides the source's `sequence_column`.
    #[serde(default)]
    pub sequence_column: Option<String>,
    /// Overrides the source's `timestamp_column`.
    #[serde(default)]
    pub timestamp_column: Option<String>,
    /// `hard` (default): deleted rows leave the table. `soft`: they stay, flagged.
    #[serde(default)]
    pub delete_mode: DeleteMode,
    /// Delta partition columns.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Overrides `commit.deletion_vectors` for this table.
    #[serde(default)]
    pub deletion_vectors: Option<bool>,
    /// Overrides `commit.change_data_feed` for this table.
    #[serde(default)]
    pub change_data_feed: Option<bool>,
    /// Overrides the top-level `compact` settings for this table.
    #[serde(default)]
    pub compact: Option<CompactConfig>,
    /// The source renamed this table from `renamed_from` (DMS Rename Table): its rows go on in
    /// the Delta table the old name lands at, so late files of the old name and new files of
    /// this one meet in one table. Without it the new name starts a new Delta table.
    #[serde(default)]
    pub renamed_from: Option<TableName>,
    /// Source column renames (DMS Rename Column), new name -> the name the Delta table keeps.
    #[serde(default)]
    pub renamed_columns: BTreeMap<String, String>,
    /// Columns whose NULL in an update means "not logged" (unchanged PostgreSQL TOAST values,
    /// LOBs DMS did not look up; DMS Parquet has no marker for them): the table keeps the value.
    #[serde(default)]
    pub unlogged_when_null: Vec<String>,
    /// Overrides the source's `truncates` settings for this table.
    #[serde(default)]
    pub truncates: Option<TruncateSettings>,
    /// Overrides the top-level `history` settings for this table.
    #[serde(default)]
    pub history: Option<HistorySettings>,
}

/// A source table's schema and name, as DMS names its folders.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableName {
    pub schema: String,
    pub table: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnConfig {
    pub name: String,
    /// A DMS type name (`INT4`, `NUMERIC`, `STRING`, `DATETIME`, …) or `DECIMAL(p,s)`.
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default)]
    pub precision: Option<u8>,
    #[serde(default)]
    pub scale: Option<i8>,
}

/// DMS's external table definition document, as users already have it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmsTableDefinitions {
    #[serde(rename = "TableCount", default)]
    pub table_count: Option<Loose>,
    #[serde(rename = "Tables")]
    pub tables: Vec<DmsTable>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmsTable {
    #[serde(rename = "TableName")]
    pub table_name: String,
    #[serde(rename = "TablePath", default)]
    pub table_path: Option<String>,
    #[serde(rename = "TableOwner")]
    pub table_owner: String,
    #[serde(rename = "TableColumns")]
    pub table_columns: Vec<DmsColumn>,
    #[serde(rename = "TableColumnsTotal", default)]
    pub table_columns_total: Option<Loose>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmsColumn {
    #[serde(rename = "ColumnName")]
    pub column_name: String,
    #[serde(rename = "ColumnType")]
    pub column_type: String,
    #[serde(rename = "ColumnNullable", default)]
    pub column_nullable: Option<Loose>,
    #[serde(rename = "ColumnIsPk", default)]
    pub column_is_pk: Option<Loose>,
    #[serde(rename = "ColumnLength", default)]
    pub column_length: Option<Loose>,
    #[serde(rename = "ColumnPrecision", default)]
    pub column_precision: Option<Loose>,
    #[serde(rename = "ColumnScale", default)]
    pub column_scale: Option<Loose>,
    #[serde(rename = "ColumnDateFormat", default)]
    pub column_date_format: Option<Loose>,
}

/// DMS writes numbers and booleans in its JSON as strings ("true", "10"); accept either.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Loose {
    Bool(bool),
    Int(i64),
    Text(String),
}

impl Loose {
    pub(super) fn as_bool(&self) -> Option<bool> {
        match self {
            Loose::Bool(b) => Some(*b),
            Loose::Int(i) => Some(*i != 0),
            Loose::Text(t) => match t.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Some(true),
                "false" | "no" | "0" => Some(false),
                _ => None,
            },
        }
    }
    pub(super) fn as_int(&self) -> Option<i64> {
        match self {
            Loose::Bool(_) => None,
            Loose::Int(i) => Some(*i),
            Loose::Text(t) => t.trim().parse().ok(),
        }
    }
}

pub(super) fn dms_column(c: &DmsColumn) -> std::result::Result<Column, BadDmsColumn> {
    let precision = c
        .column_precision
        .as_ref()
        .and_then(Loose::as_int)
        .map(|p| u8::try_from(p).map_err(|source| BadDmsColumn::Precision { value: p, source }))
        .transpose()?;
    let scale = c
        .column_scale
        .as_ref()
        .and_then(Loose::as_int)
        .map(|s| i8::try_from(s).map_err(|source| BadDmsColumn::Scale { value: s, source }))
        .transpose()?;
    let ty = ColumnType::from_config(&c.column_type, precision, scale)?;
    if c.column_name.is_empty() {
        return Err(BadDmsColumn::NoName);
    }
    Ok(Column {
        name: c.column_name.clone(),
        ty,
    })
}

/// A column of a DMS table definition that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum BadDmsColumn {
    #[error("ColumnPrecision {value} out of range")]
    Precision {
        value: i64,
        #[source]
        source: std::num::TryFromIntError,
    },
    #[error("ColumnScale {value} out of range")]
    Scale {
        value: i64,
        #[source]
        source: std::num::TryFromIntError,
    },
    #[error("{0}")]
    Type(#[from] TypeError),
    #[error("empty ColumnName")]
    NoName,
}
