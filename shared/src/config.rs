//! The configuration document: typed, validated once at cold start, unknown fields rejected.
//!
//! Every field is documented in README.md's configuration table; keep the two in step.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Deserialize;

use crate::error::{BadInputKind, Error, InputProblem, Result};
pub use crate::model::{Column, CompactConfig, DeleteMode, TableSpec, MIN_VACUUM_RETENTION_HOURS};
use crate::storage::Location;
pub use crate::storage::{ServerSideEncryption, StorageConfig};
use crate::types::ColumnType;

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
            max_attempts: default_max_attempts(),
            backoff_base_ms: default_backoff_base_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            tombstone_retention_hours: default_tombstone_retention_hours(),
            deletion_vectors: false,
            change_data_feed: false,
        }
    }
}

/// A table's compaction settings, checked where the configuration names them (`path`).
fn check_compact(c: &CompactConfig, path: &str) -> Result<()> {
    if c.target_file_mb == 0 || c.target_file_mb > 4096 {
        return Err(cfg_err(format!("{path}.target_file_mb"), "must be between 1 and 4096"));
    }
    if c.purge_deleted_percent == 0 || c.purge_deleted_percent > 100 {
        return Err(cfg_err(
            format!("{path}.purge_deleted_percent"),
            "must be between 1 and 100",
        ));
    }
    if c.min_small_files < 2 {
        return Err(cfg_err(format!("{path}.min_small_files"), "must be at least 2"));
    }
    if c.checkpoint_interval == 0 || c.check_every_commits == 0 {
        return Err(cfg_err(
            format!("{path}.checkpoint_interval"),
            "intervals must be at least 1",
        ));
    }
    if c.vacuum_retention_hours < MIN_VACUUM_RETENTION_HOURS {
        return Err(cfg_err(
                format!("{path}.vacuum_retention_hours"),
                format!(
                    "{} is below the safe minimum of {MIN_VACUUM_RETENTION_HOURS} hours: a reader or a concurrent writer may still need files removed more recently",
                    c.vacuum_retention_hours
                ),
            ));
    }
    Ok(())
}

fn default_max_change_sets() -> usize {
    64
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

/// A DMS replication task ARN: `arn:<partition>:dms:<region>:<12-digit account>:task:<id>`.
/// Only tasks have table statistics (DMS Serverless replications use another API).
fn check_task_arn(arn: &str) -> std::result::Result<(), String> {
    let parts: Vec<&str> = arn.split(':').collect();
    let ok = match parts.as_slice() {
        ["arn", partition, "dms", region, account, "task", id] => {
            partition.starts_with("aws")
                && !region.is_empty()
                && region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{arn}` is not a DMS replication task ARN (`arn:aws:dms:<region>:<account>:task:<id>`, as `aws dms describe-replication-tasks` shows it; DMS Serverless replication configs are not supported)"
        ))
    }
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
    fn as_bool(&self) -> Option<bool> {
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
    fn as_int(&self) -> Option<i64> {
        match self {
            Loose::Bool(_) => None,
            Loose::Int(i) => Some(*i),
            Loose::Text(t) => t.trim().parse().ok(),
        }
    }
}

/// A validated configuration with its lookups prepared.
#[derive(Debug, Clone)]
pub struct Validated {
    pub config: Config,
    pub lake: Location,
    pub staging: Location,
    pub quarantine: Location,
    tables: Vec<HashMap<(String, String), usize>>,
    definitions: Vec<HashMap<(String, String), usize>>,
}

fn cfg_err(path: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Config {
        path: path.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Parses a JSON or YAML document. Unknown fields are errors naming the field's path.
    pub fn parse(text: &str) -> Result<Config> {
        let trimmed = text.trim_start();
        if trimmed.starts_with('{') {
            let de = &mut serde_json::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                cfg_err(path, e.into_inner().to_string())
            })
        } else {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                cfg_err(path, e.into_inner().to_string())
            })
        }
    }

    /// Parses and validates in one step.
    pub fn from_text(text: &str) -> Result<Validated> {
        Config::parse(text)?.validate()
    }

    /// Checks everything that can be checked without touching storage, once.
    pub fn validate(self) -> Result<Validated> {
        let lake = Location::parse(&self.lake).map_err(|r| cfg_err("lake", r.to_string()))?;
        let staging = Location::parse(&self.staging).map_err(|r| cfg_err("staging", r.to_string()))?;
        let quarantine = Location::parse(&self.quarantine).map_err(|r| cfg_err("quarantine", r.to_string()))?;
        if self.sources.is_empty() {
            return Err(cfg_err("sources", "at least one source is required"));
        }
        for (bucket, dir) in &self.storage.buckets {
            if bucket.is_empty() || bucket.contains('/') {
                return Err(cfg_err(format!("storage.buckets.{bucket}"), "not a bucket name"));
            }
            Location::parse(dir).map_err(|r| cfg_err(format!("storage.buckets.{bucket}"), r.to_string()))?;
        }
        if let Some(ep) = &self.storage.endpoint {
            let url = url::Url::parse(ep).map_err(|e| cfg_err("storage.endpoint", format!("not a URL: {e}")))?;
            if url.scheme() == "http" && !self.storage.allow_http {
                return Err(cfg_err(
                    "storage.endpoint",
                    "plain http endpoint needs `allow_http: true` (only for local test servers)",
                ));
            }
            if url.scheme() != "http" && url.scheme() != "https" {
                return Err(cfg_err("storage.endpoint", "must be an http(s) URL"));
            }
            if !self.storage.path_style {
                return Err(cfg_err(
                    "storage.endpoint",
                    "an S3-compatible endpoint serves many buckets under one host name: add `path_style: true`",
                ));
            }
        }
        if self.storage.kms_key_id.is_some() && self.storage.server_side_encryption != Some(ServerSideEncryption::Kms) {
            return Err(cfg_err(
                "storage.kms_key_id",
                "only used with `server_side_encryption: aws:kms`; set that too or remove the key",
            ));
        }
        let c = &self.commit;
        if c.max_change_sets == 0 {
            return Err(cfg_err("commit.max_change_sets", "must be at least 1"));
        }
        if c.max_attempts == 0 || c.max_attempts > 100 {
            return Err(cfg_err("commit.max_attempts", "must be between 1 and 100"));
        }
        if c.backoff_base_ms == 0 || c.backoff_base_ms > c.backoff_max_ms {
            return Err(cfg_err(
                "commit.backoff_base_ms",
                "must be at least 1 and not above commit.backoff_max_ms",
            ));
        }
        if c.tombstone_retention_hours == 0 {
            return Err(cfg_err("commit.tombstone_retention_hours", "must be at least 1"));
        }
        check_compact(&self.compact, "compact")?;
        if self.limits.max_field_bytes == 0 {
            return Err(cfg_err("limits.max_field_bytes", "must be at least 1"));
        }
        if self
            .limits
            .max_record_bytes
            .is_some_and(|r| r < self.limits.max_field_bytes)
        {
            return Err(cfg_err(
                "limits.max_record_bytes",
                "must be at least limits.max_field_bytes (a field is part of a record)",
            ));
        }
        if self.limits.max_inflated_bytes == 0 {
            return Err(cfg_err("limits.max_inflated_bytes", "must be at least 1"));
        }
        if self.metrics.namespace.trim().is_empty() || self.metrics.namespace.len() > 255 {
            return Err(cfg_err("metrics.namespace", "must be 1 to 255 characters"));
        }

        let mut names = BTreeSet::new();
        let mut namespaces = BTreeSet::new();
        let mut tables = Vec::new();
        let mut definitions = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            let p = format!("sources[{i}]");
            check_name(&s.name).map_err(|r| cfg_err(format!("{p}.name"), r))?;
            if !names.insert(s.name.clone()) {
                return Err(cfg_err(
                    format!("{p}.name"),
                    format!("duplicate source name `{}`", s.name),
                ));
            }
            let ns = s.namespace.clone().unwrap_or_else(|| s.name.clone());
            check_name(&ns).map_err(|r| cfg_err(format!("{p}.namespace"), r))?;
            if ns.starts_with('_') {
                return Err(cfg_err(
                    format!("{p}.namespace"),
                    "must not start with `_` (the lake keeps dms2delta's own tables under `_dms2delta/`)",
                ));
            }
            if !namespaces.insert(ns.clone()) {
                return Err(cfg_err(
                    format!("{p}.namespace"),
                    format!("namespace `{ns}` is used by two sources; their tables would collide"),
                ));
            }
            if s.bucket.is_empty() || s.bucket.contains('/') {
                return Err(cfg_err(format!("{p}.bucket"), "a bucket name without `s3://` or `/`"));
            }
            for (field, v) in [("bucket_folder", &s.bucket_folder), ("cdc_path", &s.cdc_path)] {
                if let Some(v) = v {
                    check_prefix(v).map_err(|r| cfg_err(format!("{p}.{field}"), r))?;
                }
            }
            if let Some(arn) = &s.dms_task_arn {
                check_task_arn(arn).map_err(|r| cfg_err(format!("{p}.dms_task_arn"), r))?;
            }
            if let Some(z) = &s.date_partitioning.timezone {
                if z.parse::<chrono_tz::Tz>().is_err() {
                    return Err(cfg_err(
                        format!("{p}.date_partitioning.timezone"),
                        format!("`{z}` is not an IANA time zone name (e.g. `Europe/Berlin`, `America/New_York`); use the DatePartitionTimezone value of the DMS endpoint"),
                    ));
                }
                if !s.date_partitioning.enabled {
                    return Err(cfg_err(
                        format!("{p}.date_partitioning.timezone"),
                        "DMS applies DatePartitionTimezone only with DatePartitionEnabled: set date_partitioning.enabled too, or remove the zone",
                    ));
                }
            }
            let d = &s.csv.delimiter;
            if d.chars().count() != 1 || !d.is_ascii() || d == "\"" || d == "\n" || d == "\r" {
                return Err(cfg_err(
                    format!("{p}.csv.delimiter"),
                    "must be one ASCII character other than a quote or a line break",
                ));
            }
            if let (Some(n), Some(ns)) = (&s.csv.null_value, &s.csv.no_sup_value) {
                if n == ns {
                    return Err(cfg_err(
                        format!("{p}.csv.no_sup_value"),
                        "must differ from csv.null_value",
                    ));
                }
            }
            for (j, r) in s.rules.iter().enumerate() {
                let rp = format!("{p}.rules[{j}]");
                if r.schema.is_empty() || r.table.is_empty() {
                    return Err(cfg_err(rp, "schema and table patterns must not be empty (use `%`)"));
                }
                match r.action {
                    RuleAction::Rename => {
                        if r.to_schema.is_none() && r.to_table.is_none() {
                            return Err(cfg_err(rp, "a rename needs `to_schema` or `to_table`"));
                        }
                        for v in [&r.to_schema, &r.to_table].into_iter().flatten() {
                            check_name(v).map_err(|e| cfg_err(rp.clone(), e))?;
                        }
                    }
                    _ => {
                        if r.to_schema.is_some() || r.to_table.is_some() {
                            return Err(cfg_err(rp, "`to_schema`/`to_table` belong to rename rules only"));
                        }
                    }
                }
            }
            let mut defs = HashMap::new();
            if let Some(td) = &s.table_definitions {
                for (j, t) in td.tables.iter().enumerate() {
                    let tp = format!("{p}.table_definitions.Tables[{j}]");
                    for (k, c) in t.table_columns.iter().enumerate() {
                        dms_column(c).map_err(|r| cfg_err(format!("{tp}.TableColumns[{k}]"), r))?;
                    }
                    if defs.insert((t.table_owner.clone(), t.table_name.clone()), j).is_some() {
                        return Err(cfg_err(tp, "table defined twice"));
                    }
                }
            }
            // Renames must end at a first name: no table renamed from itself, no cycle.
            let firsts: HashMap<(&str, &str), (&str, &str)> = s
                .tables
                .iter()
                .filter_map(|t| {
                    t.renamed_from.as_ref().map(|f| {
                        (
                            (t.schema.as_str(), t.table.as_str()),
                            (f.schema.as_str(), f.table.as_str()),
                        )
                    })
                })
                .collect();
            for (j, t) in s.tables.iter().enumerate() {
                let mut at = (t.schema.as_str(), t.table.as_str());
                for _ in 0..=s.tables.len() {
                    match firsts.get(&at) {
                        Some(prev) if *prev == (t.schema.as_str(), t.table.as_str()) => {
                            return Err(cfg_err(
                                format!("{p}.tables[{j}].renamed_from"),
                                format!(
                                    "the renames of {}.{} lead back to it: name the table's earlier name, which must not itself be renamed from this one",
                                    t.schema, t.table
                                ),
                            ))
                        }
                        Some(prev) => at = *prev,
                        None => break,
                    }
                }
            }
            let mut by_name = HashMap::new();
            for (j, t) in s.tables.iter().enumerate() {
                let tp = format!("{p}.tables[{j}]");
                check_name(&t.schema).map_err(|r| cfg_err(format!("{tp}.schema"), r))?;
                check_name(&t.table).map_err(|r| cfg_err(format!("{tp}.table"), r))?;
                if by_name.insert((t.schema.clone(), t.table.clone()), j).is_some() {
                    return Err(cfg_err(tp, format!("table {}.{} configured twice", t.schema, t.table)));
                }
                let mut seen = BTreeSet::new();
                if let Some(cols) = &t.columns {
                    if cols.is_empty() {
                        return Err(cfg_err(
                            format!("{tp}.columns"),
                            "an empty column list; omit it instead",
                        ));
                    }
                    for (k, c) in cols.iter().enumerate() {
                        ColumnType::from_config(&c.type_name, c.precision, c.scale)
                            .map_err(|r| cfg_err(format!("{tp}.columns[{k}].type"), r.to_string()))?;
                        if c.name.is_empty() || !seen.insert(c.name.clone()) {
                            return Err(cfg_err(
                                format!("{tp}.columns[{k}].name"),
                                "empty or duplicate column name",
                            ));
                        }
                    }
                }
                if let Some(c) = &t.compact {
                    check_compact(c, &format!("{tp}.compact"))?;
                }
                let mut kept = BTreeSet::new();
                for (new, old) in &t.renamed_columns {
                    if new == old || new.is_empty() || old.is_empty() || !kept.insert(old) {
                        return Err(cfg_err(
                            format!("{tp}.renamed_columns.{new}"),
                            "each renamed column maps its new name to a different, non-empty old name, and no two new names to one old name",
                        ));
                    }
                }
                let mut key_seen = BTreeSet::new();
                for (k, key) in t.keys.iter().enumerate() {
                    if !key_seen.insert(key) {
                        return Err(cfg_err(format!("{tp}.keys[{k}]"), format!("key `{key}` listed twice")));
                    }
                    if t.columns.is_some() && !seen.contains(key) {
                        return Err(cfg_err(
                            format!("{tp}.keys[{k}]"),
                            format!("key `{key}` is not one of the table's columns"),
                        ));
                    }
                }
                for (k, col) in t.unlogged_when_null.iter().enumerate() {
                    let wrong = if t.keys.contains(col) {
                        Some("is a key column, which every change logs")
                    } else if t.columns.is_some() && !seen.contains(col) {
                        Some("is not one of the table's columns")
                    } else {
                        None
                    };
                    if let Some(why) = wrong {
                        return Err(cfg_err(
                            format!("{tp}.unlogged_when_null[{k}]"),
                            format!("`{col}` {why}"),
                        ));
                    }
                }
                for (k, col) in t.partition_by.iter().enumerate() {
                    if t.columns.is_some() && !seen.contains(col) {
                        return Err(cfg_err(
                            format!("{tp}.partition_by[{k}]"),
                            format!("`{col}` is not one of the table's columns"),
                        ));
                    }
                }
            }
            tables.push(by_name);
            definitions.push(defs);
        }
        let validated = Validated {
            config: self,
            lake,
            staging,
            quarantine,
            tables,
            definitions,
        };
        validated.check_targets()?;
        Ok(validated)
    }
}

/// A name that is one safe path segment: never `.` or `..`, no separators or control characters.
fn check_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!("`{name}` is not a usable name"));
    }
    if name.len() > 255 || name.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        return Err(format!(
            "`{name}` must be at most 255 characters without `/`, `\\` or control characters"
        ));
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> std::result::Result<(), String> {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        return Err("an empty prefix; omit the field instead".into());
    }
    for seg in p.split('/') {
        check_name(seg)?;
    }
    Ok(())
}

fn dms_column(c: &DmsColumn) -> std::result::Result<Column, String> {
    let precision = c
        .column_precision
        .as_ref()
        .and_then(Loose::as_int)
        .map(|p| u8::try_from(p).map_err(|_| format!("ColumnPrecision {p} out of range")))
        .transpose()?;
    let scale = c
        .column_scale
        .as_ref()
        .and_then(Loose::as_int)
        .map(|s| i8::try_from(s).map_err(|_| format!("ColumnScale {s} out of range")))
        .transpose()?;
    let ty = ColumnType::from_config(&c.column_type, precision, scale).map_err(|e| e.to_string())?;
    if c.column_name.is_empty() {
        return Err("empty ColumnName".into());
    }
    Ok(Column {
        name: c.column_name.clone(),
        ty,
    })
}

/// Whether `name` holds `%` followed by two hex digits (a percent-escape).
fn has_percent_escape(name: &str) -> bool {
    name.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// `%` matches any run of characters; everything else matches itself.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('%').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    let Some((first, tail)) = parts.split_first() else {
        return false;
    };
    let Some(r) = rest.strip_prefix(first) else {
        return false;
    };
    rest = r;
    let Some((last, middle)) = tail.split_last() else {
        return false;
    };
    for m in middle {
        match rest.find(m) {
            Some(i) => rest = &rest[i + m.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl Validated {
    pub fn sources(&self) -> &[SourceConfig] {
        &self.config.sources
    }

    /// Whether the rules select `schema.table` of source `source`.
    pub fn is_selected(&self, source: usize, schema: &str, table: &str) -> bool {
        let s = &self.config.sources[source];
        let matches = |r: &&Rule| wildcard_match(&r.schema, schema) && wildcard_match(&r.table, table);
        let includes: Vec<&Rule> = s.rules.iter().filter(|r| r.action == RuleAction::Include).collect();
        let included = includes.is_empty() || includes.iter().any(&matches);
        let excluded = s
            .rules
            .iter()
            .filter(|r| r.action == RuleAction::Exclude)
            .any(|r| matches(&r));
        included && !excluded
    }

    /// The table's resolved settings. `Ok(None)`: not selected by the rules.
    /// `Err`: selected but unusable (no key), with the reason.
    pub fn table(
        &self,
        source: usize,
        schema: &str,
        table: &str,
    ) -> std::result::Result<Option<TableSpec>, InputProblem> {
        if !self.is_selected(source, schema, table) {
            return Ok(None);
        }
        let s = &self.config.sources[source];
        let key = (schema.to_string(), table.to_string());
        let entry = self.tables[source].get(&key).map(|&i| &s.tables[i]);
        let def = self.definitions[source]
            .get(&key)
            .and_then(|&i| s.table_definitions.as_ref().map(|d| &d.tables[i]));
        let columns = match (entry.and_then(|t| t.columns.as_ref()), def) {
            (Some(cols), _) => Some(
                cols.iter()
                    .map(|c| {
                        ColumnType::from_config(&c.type_name, c.precision, c.scale).map(|ty| Column {
                            name: c.name.clone(),
                            ty,
                        })
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|r| InputProblem::new(BadInputKind::NoColumns, r.to_string()))?,
            ),
            (None, Some(d)) => Some(
                d.table_columns
                    .iter()
                    .map(dms_column)
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|r| InputProblem::new(BadInputKind::NoColumns, r))?,
            ),
            (None, None) => None,
        };
        let mut keys = entry.map(|t| t.keys.clone()).unwrap_or_default();
        if keys.is_empty() {
            if let Some(d) = def {
                keys = d
                    .table_columns
                    .iter()
                    .filter(|c| c.column_is_pk.as_ref().and_then(Loose::as_bool) == Some(true))
                    .map(|c| c.column_name.clone())
                    .collect();
            }
        }
        if keys.is_empty() {
            return Err(InputProblem::new(
                BadInputKind::NoKey,
                format!(
                    "table {schema}.{table} of source `{}` has no key columns configured",
                    s.name
                ),
            ));
        }
        // A table renamed at the source lands where its first name does (followed back
        // through every rename; validation refuses cycles).
        let mut landing = (schema, table);
        for _ in 0..s.tables.len() {
            let from = self.tables[source]
                .get(&(landing.0.to_string(), landing.1.to_string()))
                .and_then(|&i| s.tables[i].renamed_from.as_ref());
            match from {
                Some(f) => landing = (f.schema.as_str(), f.table.as_str()),
                None => break,
            }
        }
        let (mut target_schema, mut target_table) = (landing.0.to_string(), landing.1.to_string());
        if let Some(r) = self.rename_rule(source, landing.0, landing.1).map(|j| &s.rules[j]) {
            if let Some(ts) = &r.to_schema {
                target_schema = ts.clone();
            }
            if let Some(tt) = &r.to_table {
                target_table = tt.clone();
            }
        }
        Ok(Some(TableSpec {
            source: s.name.clone(),
            namespace: s.namespace.clone().unwrap_or_else(|| s.name.clone()),
            schema: schema.to_string(),
            table: table.to_string(),
            target_schema,
            target_table,
            keys,
            columns,
            sequence_column: entry
                .and_then(|t| t.sequence_column.clone())
                .or_else(|| s.sequence_column.clone()),
            timestamp_column: entry
                .and_then(|t| t.timestamp_column.clone())
                .or_else(|| s.timestamp_column.clone()),
            delete_mode: entry.map(|t| t.delete_mode).unwrap_or_default(),
            partition_by: entry.map(|t| t.partition_by.clone()).unwrap_or_default(),
            deletion_vectors: entry
                .and_then(|t| t.deletion_vectors)
                .unwrap_or(self.config.commit.deletion_vectors),
            change_data_feed: entry
                .and_then(|t| t.change_data_feed)
                .unwrap_or(self.config.commit.change_data_feed),
            compact: entry
                .and_then(|t| t.compact.clone())
                .unwrap_or_else(|| self.config.compact.clone()),
            renamed_columns: entry.map(|t| t.renamed_columns.clone()).unwrap_or_default(),
            unlogged_when_null: entry.map(|t| t.unlogged_when_null.clone()).unwrap_or_default(),
            follow_removals: entry.and_then(|t| t.truncates).unwrap_or(s.truncates).follow_removals,
            history: entry.and_then(|t| t.history).unwrap_or(self.config.history).enabled,
        }))
    }

    /// The table that lands at `namespace/schema/table` in the lake (after renames), among
    /// the tables that have settings (only those can have staged change sets).
    pub fn table_by_target(&self, namespace: &str, schema: &str, table: &str) -> Option<TableSpec> {
        let source = self.source_by_namespace(namespace)?;
        let s = &self.config.sources[source];
        let configured = s.tables.iter().map(|t| (t.schema.as_str(), t.table.as_str()));
        let defined = s
            .table_definitions
            .iter()
            .flat_map(|d| d.tables.iter().map(|t| (t.table_owner.as_str(), t.table_name.as_str())));
        configured
            .chain(defined)
            .filter_map(|(sc, tb)| self.table(source, sc, tb).ok().flatten())
            .find(|spec| spec.target_schema == schema && spec.target_table == table)
    }

    /// Like [`Validated::table_by_target`], with a configuration error naming the table when
    /// nothing lands there (the configuration changed under staged work or a table's log).
    pub fn require_table_by_target(&self, namespace: &str, schema: &str, table: &str) -> Result<TableSpec> {
        self.table_by_target(namespace, schema, table).ok_or_else(|| {
            cfg_err(
                "sources",
                format!("no configured table lands at {namespace}.{schema}.{table} (was the configuration changed?)"),
            )
        })
    }

    /// Refuses two source tables that land at one lake table (a rename rule whose pattern
    /// matches both, or a rename onto a table that exists): their rows would overwrite each
    /// other's by key. Only tables with settings (`tables` or `table_definitions`) can ever be
    /// committed, so checking those is complete.
    fn check_targets(&self) -> Result<()> {
        for (i, s) in self.config.sources.iter().enumerate() {
            let mut landed: HashMap<(String, String), (String, String)> = HashMap::new();
            let configured = s.tables.iter().map(|t| (t.schema.as_str(), t.table.as_str()));
            let defined = s
                .table_definitions
                .iter()
                .flat_map(|d| d.tables.iter().map(|t| (t.table_owner.as_str(), t.table_name.as_str())));
            let mut names: Vec<(&str, &str)> = configured.chain(defined).collect();
            names.sort_unstable();
            names.dedup();
            for (schema, table) in names {
                let Ok(Some(spec)) = self.table(i, schema, table) else {
                    continue;
                };
                let target = (spec.target_schema.clone(), spec.target_table.clone());
                let this = (schema.to_string(), table.to_string());
                if let Some(name) = [&spec.namespace, &target.0, &target.1]
                    .into_iter()
                    .find(|n| has_percent_escape(n))
                {
                    let path = match self.rename_rule(i, schema, table) {
                        Some(j) => format!("sources[{i}].rules[{j}]"),
                        None => format!("sources[{i}].tables"),
                    };
                    return Err(cfg_err(
                        path,
                        format!(
                            "table {schema}.{table} would land at a folder named `{name}`: `%` followed by two \
                             hex digits in a table's location is decoded a second time by the Delta engine, \
                             which then looks for the table elsewhere. Give it a name without that sequence \
                             with a rename rule (`to_schema` / `to_table`)"
                        ),
                    ));
                }
                if let Some(other) = landed.insert(target.clone(), this.clone()) {
                    // One table under its old and new source names: meant, if the keys agree.
                    if self.renamed_chain(i, &this, &other) {
                        let other_keys = self.table(i, &other.0, &other.1).ok().flatten().map(|o| o.keys);
                        if other_keys.as_ref() != Some(&spec.keys) {
                            return Err(cfg_err(
                                format!("sources[{i}].tables"),
                                format!(
                                    "{}.{} is renamed from {}.{} (one Delta table) but their keys differ \
                                     ({:?} and {:?}): configure the same key columns for both names",
                                    this.0,
                                    this.1,
                                    other.0,
                                    other.1,
                                    spec.keys,
                                    other_keys.unwrap_or_default()
                                ),
                            ));
                        }
                        continue;
                    }
                    let path = match self.rename_rule(i, schema, table) {
                        Some(j) => format!("sources[{i}].rules[{j}]"),
                        None => match self.rename_rule(i, &other.0, &other.1) {
                            Some(j) => format!("sources[{i}].rules[{j}]"),
                            None => format!("sources[{i}].rules"),
                        },
                    };
                    return Err(cfg_err(
                        path,
                        format!(
                            "source tables {}.{} and {}.{} would both land at {}.{}.{}, and their rows \
                             would overwrite each other's: give each its own name (a rename rule per \
                             table, or a pattern that keeps the names apart)",
                            other.0, other.1, this.0, this.1, spec.namespace, target.0, target.1
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether `a` and `b` are names of one table renamed at the source (`renamed_from` links,
    /// either way, through any number of renames).
    fn renamed_chain(&self, source: usize, a: &(String, String), b: &(String, String)) -> bool {
        let s = &self.config.sources[source];
        let back = |from: &(String, String), to: &(String, String)| {
            let mut at = from.clone();
            for _ in 0..s.tables.len() {
                let prev = self.tables[source]
                    .get(&at)
                    .and_then(|&i| s.tables[i].renamed_from.as_ref());
                match prev {
                    Some(p) => at = (p.schema.clone(), p.table.clone()),
                    None => return false,
                }
                if &at == to {
                    return true;
                }
            }
            false
        };
        back(a, b) || back(b, a)
    }

    /// The index of the rename rule that applies to `schema.table` of source `source`.
    fn rename_rule(&self, source: usize, schema: &str, table: &str) -> Option<usize> {
        self.config.sources[source].rules.iter().position(|r| {
            r.action == RuleAction::Rename && wildcard_match(&r.schema, schema) && wildcard_match(&r.table, table)
        })
    }

    /// The source whose namespace is `namespace`.
    pub fn source_by_namespace(&self, namespace: &str) -> Option<usize> {
        self.config
            .sources
            .iter()
            .position(|s| s.namespace.as_deref().unwrap_or(&s.name) == namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
lake: /tmp/lake
staging: /tmp/staging
quarantine: /tmp/quarantine
sources:
  - name: mysql
    bucket: dms
    bucket_folder: raw/mysql
    sequence_column: AR_H_CHANGE_SEQ
    rules:
      - { action: include, schema: hr, table: "%" }
      - { action: exclude, schema: hr, table: "audit_%" }
      - { action: rename, schema: hr, table: emp, to_table: employees }
    tables:
      - schema: hr
        table: emp
        keys: [id]
        columns:
          - { name: id, type: INT4 }
          - { name: name, type: STRING }
          - { name: salary, type: NUMERIC, precision: 10, scale: 2 }
          - { name: AR_H_CHANGE_SEQ, type: STRING }
  - name: pg
    bucket: dms
    bucket_folder: raw/pg
    table_definitions:
      TableCount: "1"
      Tables:
        - TableName: accounts
          TablePath: public/accounts/
          TableOwner: public
          TableColumns:
            - { ColumnName: id, ColumnType: INT8, ColumnNullable: "false", ColumnIsPk: "true" }
            - { ColumnName: balance, ColumnType: NUMERIC, ColumnPrecision: "12", ColumnScale: "2" }
          TableColumnsTotal: "2"
"#;

    fn err_of(text: &str) -> (String, String) {
        match Config::from_text(text) {
            Err(Error::Config { path, reason }) => (path, reason),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn parses_yaml_and_resolves_tables() {
        let v = Config::from_text(BASE).unwrap();
        let t = v.table(0, "hr", "emp").unwrap().unwrap();
        assert_eq!(t.keys, vec!["id"]);
        assert_eq!(t.target_table, "employees");
        assert_eq!(t.qualified_name(), "mysql.hr.employees");
        assert_eq!(t.sequence_column.as_deref(), Some("AR_H_CHANGE_SEQ"));
        assert_eq!(t.columns.as_ref().unwrap().len(), 4);
        // Excluded by a rule, and not included by any rule.
        assert_eq!(v.table(0, "hr", "audit_log").unwrap(), None);
        assert_eq!(v.table(0, "sales", "orders").unwrap(), None);
        // Selected but no key configured.
        let e = v.table(0, "hr", "dept").unwrap_err();
        assert_eq!(e.kind, BadInputKind::NoKey);
    }

    #[test]
    fn dms_table_definitions_give_columns_and_keys() {
        let v = Config::from_text(BASE).unwrap();
        let t = v.table(1, "public", "accounts").unwrap().unwrap();
        assert_eq!(t.keys, vec!["id"]);
        assert_eq!(t.namespace, "pg");
        let cols = t.columns.unwrap();
        assert_eq!(cols[1].ty, ColumnType::Decimal(12, 2));
    }

    #[test]
    fn a_rename_that_lands_two_tables_on_one_is_refused_with_its_rule() {
        let two = |rules: &str| {
            format!(
                r#"
lake: /l
staging: /s
quarantine: /q
sources:
  - name: erp
    bucket: dms
    rules:
{rules}
    tables:
      - {{ schema: sales, table: t1, keys: [id] }}
      - {{ schema: sales, table: t2, keys: [id] }}
      - {{ schema: hr, table: t1, keys: [id] }}
"#
            )
        };
        // `t%` -> one name: t1 and t2 of sales would share sales.t.
        let (path, reason) = err_of(&two(
            r#"      - { action: rename, schema: sales, table: "t%", to_table: t }"#,
        ));
        assert_eq!(path, "sources[0].rules[0]");
        assert!(reason.contains("sales.t1") && reason.contains("sales.t2"), "{reason}");
        assert!(reason.contains("erp.sales.t"), "{reason}");
        // Every schema onto one: sales.t1 and hr.t1 collide.
        let (path, reason) = err_of(&two(
            r#"      - { action: rename, schema: "%", table: t1, to_schema: all }"#,
        ));
        assert_eq!(path, "sources[0].rules[0]");
        assert!(reason.contains("all.t1"), "{reason}");
        // Onto an existing table's name.
        let (path, _) = err_of(&two(r#"      - { action: include, schema: "%", table: "%" }
      - { action: rename, schema: sales, table: t2, to_table: t1 }"#));
        assert_eq!(path, "sources[0].rules[1]");
        // One-to-one renames and an excluded table out of the way are fine.
        Config::from_text(&two(
            r#"      - { action: rename, schema: sales, table: "%", to_schema: sales_v2 }"#,
        ))
        .unwrap();
        Config::from_text(&two(r#"      - { action: exclude, schema: sales, table: t2 }
      - { action: rename, schema: sales, table: "t%", to_table: t }"#))
        .unwrap();
    }

    #[test]
    fn a_name_the_delta_engine_would_decode_twice_is_refused_unless_renamed() {
        let text = |rules: &str| {
            format!(
                "lake: /l\nstaging: /s\nquarantine: /q\nsources:\n  - name: erp\n    bucket: dms\n    rules:\n{rules}    tables:\n      - {{ schema: \"50%off\", table: \"a%20b\", keys: [id] }}\n"
            )
        };
        let (path, reason) = err_of(&text("      - { action: include, schema: \"%\", table: \"%\" }\n"));
        assert_eq!(path, "sources[0].tables");
        assert!(reason.contains("`a%20b`") && reason.contains("rename"), "{reason}");
        // `50%off` holds no escape (`%of`), so only the table needs a new name.
        let v = Config::from_text(&text(
            "      - { action: rename, schema: \"50%off\", table: \"a%20b\", to_table: a_b }\n",
        ))
        .unwrap();
        assert_eq!(v.table(0, "50%off", "a%20b").unwrap().unwrap().target_table, "a_b");
    }

    #[test]
    fn json_documents_are_accepted() {
        let text = r#"{"lake":"/l","staging":"/s","quarantine":"/q","sources":[{"name":"a","bucket":"b"}]}"#;
        let v = Config::from_text(text).unwrap();
        assert_eq!(v.sources()[0].csv.delimiter, ",");
    }

    #[test]
    fn unknown_fields_name_their_path() {
        let (path, reason) = err_of(&BASE.replace("keys: [id]", "keys: [id]\n        colums: []"));
        assert_eq!(path, "sources[0].tables[0].colums");
        assert!(reason.contains("unknown field `colums`"), "{reason}");
        let (path, reason) = err_of(&BASE.replace("staging:", "stagign: x\nstaging:"));
        assert_eq!(path, "stagign");
        assert!(reason.contains("stagign"), "{reason}");
        let (path, _) = err_of(&BASE.replace("ColumnIsPk: \"true\"", "ColumnIsPk: \"true\", Bogus: 1"));
        assert!(
            path.starts_with("sources[1].table_definitions.Tables[0].TableColumns[0]"),
            "{path}"
        );
    }

    #[test]
    fn change_data_feed_is_off_by_default_set_globally_and_overridden_per_table() {
        let v = Config::from_text(BASE).unwrap();
        assert!(!v.table(0, "hr", "emp").unwrap().unwrap().change_data_feed);
        let on = format!("{BASE}commit:\n  change_data_feed: true\n");
        let v = Config::from_text(&on).unwrap();
        assert!(v.table(0, "hr", "emp").unwrap().unwrap().change_data_feed);
        assert!(v.table(1, "public", "accounts").unwrap().unwrap().change_data_feed);
        let off_here = on.replace("keys: [id]", "keys: [id]\n        change_data_feed: false");
        let v = Config::from_text(&off_here).unwrap();
        assert!(!v.table(0, "hr", "emp").unwrap().unwrap().change_data_feed);
        assert!(v.table(1, "public", "accounts").unwrap().unwrap().change_data_feed);
        let (path, _) = err_of(&format!("{BASE}commit:\n  change_data_feed: maybe\n"));
        assert!(path.starts_with("commit"), "{path}");
    }

    #[test]
    fn merge_on_read_is_off_by_default_set_globally_and_overridden_per_table() {
        let v = Config::from_text(BASE).unwrap();
        assert!(!v.table(0, "hr", "emp").unwrap().unwrap().deletion_vectors);
        assert_eq!(v.config.compact.purge_deleted_percent, 5);
        let on = format!("{BASE}commit:\n  deletion_vectors: true\n");
        let v = Config::from_text(&on).unwrap();
        assert!(v.table(0, "hr", "emp").unwrap().unwrap().deletion_vectors);
        assert!(v.table(1, "public", "accounts").unwrap().unwrap().deletion_vectors);
        let off_here = on.replace("keys: [id]", "keys: [id]\n        deletion_vectors: false");
        let v = Config::from_text(&off_here).unwrap();
        assert!(!v.table(0, "hr", "emp").unwrap().unwrap().deletion_vectors);
        assert!(v.table(1, "public", "accounts").unwrap().unwrap().deletion_vectors);
        for bad in ["0", "101"] {
            let (path, _) = err_of(&format!("{BASE}compact:\n  purge_deleted_percent: {bad}\n"));
            assert_eq!(path, "compact.purge_deleted_percent");
        }
    }

    #[test]
    fn history_is_off_by_default_set_globally_and_overridden_per_table() {
        let v = Config::from_text(BASE).unwrap();
        assert!(!v.table(0, "hr", "emp").unwrap().unwrap().history);
        let on = format!("{BASE}history:\n  enabled: true\n");
        let v = Config::from_text(&on).unwrap();
        let emp = v.table(0, "hr", "emp").unwrap().unwrap();
        assert!(emp.history);
        assert_eq!(emp.history_path(), "_dms2delta/history/mysql/hr/employees");
        assert!(v.table(1, "public", "accounts").unwrap().unwrap().history);
        let off_here = on.replace("keys: [id]", "keys: [id]\n        history: { enabled: false }");
        let v = Config::from_text(&off_here).unwrap();
        assert!(!v.table(0, "hr", "emp").unwrap().unwrap().history);
        assert!(v.table(1, "public", "accounts").unwrap().unwrap().history);
        let (path, _) = err_of(&format!("{BASE}history:\n  enabled: true\n  location: x\n"));
        assert_eq!(path, "history.location");
    }

    #[test]
    fn each_kind_of_mistake_is_reported_with_its_path() {
        let cases: Vec<(String, &str)> = vec![
            (
                BASE.replace("keys: [id]", "keys: [idx]"),
                "sources[0].tables[0].keys[0]",
            ),
            (
                BASE.replace("type: INT4", "type: INTEGER4"),
                "sources[0].tables[0].columns[0].type",
            ),
            (BASE.replace("name: pg", "name: mysql"), "sources[1].name"),
            (BASE.replace("lake: /tmp/lake", "lake: ftp://x/y"), "lake"),
            (
                BASE.replace("bucket_folder: raw/pg", "bucket_folder: raw/../pg"),
                "sources[1].bucket_folder",
            ),
            (
                BASE.replace("to_table: employees", "to_table: a/b"),
                "sources[0].rules[2]",
            ),
            (
                BASE.replace("ColumnType: INT8", "ColumnType: WEIRD"),
                "sources[1].table_definitions.Tables[0].TableColumns[0]",
            ),
            (format!("{BASE}commit:\n  max_attempts: 0\n"), "commit.max_attempts"),
            (
                format!("{BASE}compact:\n  vacuum_retention_hours: 24\n"),
                "compact.vacuum_retention_hours",
            ),
            (
                format!("{BASE}storage:\n  endpoint: http://127.0.0.1:5000\n  path_style: true\n"),
                "storage.endpoint",
            ),
            (
                format!("{BASE}storage:\n  endpoint: https://minio.example:9000\n"),
                "storage.endpoint",
            ),
            (
                format!("{BASE}storage:\n  server_side_encryption: AES256\n  kms_key_id: k\n"),
                "storage.kms_key_id",
            ),
            (
                format!("{BASE}storage:\n  server_side_encryption: aws:sse\n"),
                "storage.server_side_encryption",
            ),
            (
                BASE.replace(
                    "    bucket_folder: raw/mysql",
                    "    bucket_folder: raw/mysql\n    csv: {delimiter: \";;\"}",
                ),
                "sources[0].csv.delimiter",
            ),
            (
                BASE.replace(
                    "sources:\n  - name: mysql",
                    "sources:\n  - name: mysql\n    namespace: pg",
                ),
                "sources[1].namespace",
            ),
        ];
        for (text, want) in cases {
            let (path, reason) = err_of(&text);
            assert_eq!(path, want, "{reason}");
            assert!(!reason.is_empty());
        }
        let (path, _) = err_of("lake: /l\nstaging: /s\nquarantine: /q\nsources: []\n");
        assert_eq!(path, "sources");
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("%", "anything"));
        assert!(wildcard_match("audit_%", "audit_log"));
        assert!(!wildcard_match("audit_%", "xaudit_log"));
        assert!(wildcard_match("%_log", "audit_log"));
        assert!(wildcard_match("a%b%c", "aXXbYYc"));
        assert!(!wildcard_match("a%b%c", "aXXcYYb"));
        assert!(wildcard_match("emp", "emp"));
        assert!(!wildcard_match("emp", "emps"));
        assert!(!wildcard_match("ab%ba", "aba"));
    }

    #[test]
    fn a_dms_task_arn_must_name_a_replication_task() {
        let with = |arn: &str| {
            BASE.replace(
                "    bucket_folder: raw/mysql\n",
                &format!("    bucket_folder: raw/mysql\n    dms_task_arn: \"{arn}\"\n"),
            )
        };
        for ok in [
            "arn:aws:dms:us-east-1:123456789012:task:F8TBR5IJGVM78ZQYCR60BO87AF",
            "arn:aws-cn:dms:cn-north-1:123456789012:task:my-task-1",
            "arn:aws-us-gov:dms:us-gov-west-1:123456789012:task:ABC",
        ] {
            let v = Config::from_text(&with(ok)).unwrap();
            assert_eq!(v.sources()[0].dms_task_arn.as_deref(), Some(ok));
            assert_eq!(v.sources()[1].dms_task_arn, None);
        }
        for bad in [
            "F8TBR5IJGVM78ZQYCR60BO87AF",
            "arn:aws:dms:us-east-1:123456789012:rep:ABC",
            "arn:aws:dms:us-east-1:123456789012:replication-config:ABC",
            "arn:aws:dms:us-east-1:12345:task:ABC",
            "arn:aws:s3:us-east-1:123456789012:task:ABC",
            "arn:aws:dms:us-east-1:123456789012:task:",
            "arn:aws:dms:us-east-1:123456789012:task:a/b",
            "arn:aws:dms::123456789012:task:ABC",
        ] {
            let (path, reason) = err_of(&with(bad));
            assert_eq!(path, "sources[0].dms_task_arn", "{bad}");
            assert!(reason.contains("not a DMS replication task ARN"), "{bad}: {reason}");
        }
    }
}
