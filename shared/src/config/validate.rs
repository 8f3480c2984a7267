//! Parsing the document and checking everything that can be checked without touching storage.

use std::collections::{BTreeSet, HashMap};

use super::schema::{dms_column, RuleAction};
use super::{cfg_err, CompactConfig, Config, ServerSideEncryption, Validated, MIN_VACUUM_RETENTION_HOURS};
use crate::error::Result;
use crate::storage::Location;
use crate::types::ColumnType;

/// A configured name that cannot be one segment of a storage path.
#[derive(Debug, thiserror::Error)]
enum BadName {
    #[error("`{0}` is not a usable name")]
    Unusable(String),
    #[error("`{0}` must be at most 255 characters without `/`, `\\` or control characters")]
    NotASegment(String),
}

/// A configured folder prefix that cannot be used as given.
#[derive(Debug, thiserror::Error)]
enum BadPrefix {
    #[error("an empty prefix; omit the field instead")]
    Empty,
    /// One of its folders is not a usable name; the message is that folder's.
    #[error("{0}")]
    Folder(#[from] BadName),
}

/// A `dms_task_arn` that is not a replication task's ARN: only tasks have table statistics.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{0}` is not a DMS replication task ARN (`arn:aws:dms:<region>:<account>:task:<id>`, as `aws dms describe-replication-tasks` shows it; DMS Serverless replication configs are not supported)"
)]
struct NotATaskArn(String);

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

/// A DMS replication task ARN: `arn:<partition>:dms:<region>:<12-digit account>:task:<id>`.
/// Only tasks have table statistics (DMS Serverless replications use another API).
fn check_task_arn(arn: &str) -> std::result::Result<(), NotATaskArn> {
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
        Err(NotATaskArn(arn.to_string()))
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
        if c.max_staged_bytes == 0 {
            return Err(cfg_err("commit.max_staged_bytes", "must be at least 1"));
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
fn check_name(name: &str) -> std::result::Result<(), BadName> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(BadName::Unusable(name.to_string()));
    }
    if name.len() > 255 || name.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
        return Err(BadName::NotASegment(name.to_string()));
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> std::result::Result<(), BadPrefix> {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        return Err(BadPrefix::Empty);
    }
    for seg in p.split('/') {
        check_name(seg)?;
    }
    Ok(())
}

/// Whether `name` holds `%` followed by two hex digits (a percent-escape).
fn has_percent_escape(name: &str) -> bool {
    name.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

impl Validated {
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
}
