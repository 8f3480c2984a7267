//! The configuration document: typed, validated once at cold start, unknown fields rejected.
//!
//! Every field is documented in README.md's configuration table; keep the two in step.

mod rules;
mod schema;
mod validate;

use std::collections::HashMap;

use crate::error::Error;
pub use crate::model::{Column, CompactConfig, DeleteMode, TableSpec, MIN_VACUUM_RETENTION_HOURS};
use crate::storage::Location;
pub use crate::storage::{ServerSideEncryption, StorageConfig};
pub use rules::wildcard_match;
pub use schema::{
    ColumnConfig, CommitConfig, Config, CsvSettings, DatePartitionDelimiter, DatePartitionSequence, DatePartitioning,
    DmsColumn, DmsTable, DmsTableDefinitions, HistorySettings, Limits, Loose, MetricsConfig, ReloadSettings, Rule,
    RuleAction, SourceConfig, TableConfig, TableName, TruncateSettings,
};

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

fn cfg_err(path: impl Into<String>, reason: impl std::fmt::Display) -> Error {
    Error::Config {
        path: path.into(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests;
