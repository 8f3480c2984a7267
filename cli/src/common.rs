//! What every command needs: the error type, loading the configuration, finding tables in the
//! lake, reading a table's vital signs, and formatting numbers, times and tables for people.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMicrosecondType};
use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use deltalake::datafusion::prelude::SessionContext;
use dms2delta::config::{Config, TableSpec, Validated};
use dms2delta::lake;
use dms2delta::pipeline::Pipeline;
use dms2delta::storage::{path_below, Location, Stores};
use object_store::path::Path;

/// A command's failure: the message for stderr and the process exit code.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    /// 1: the work failed. 2: the command line is incomplete or contradictory. 3 (`run`):
    /// everything else was applied, but files wait in the quarantine.
    pub code: u8,
    /// Whether trying again later may succeed (watch mode keeps going after these).
    pub retryable: bool,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            code: 1,
            retryable: false,
        }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            ..Failure::new(message)
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<dms2delta::Error> for Failure {
    fn from(e: dms2delta::Error) -> Failure {
        Failure {
            retryable: e.is_retryable(),
            ..Failure::new(e.to_string())
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::new(format!("cannot write the output: {e}"))
    }
}

impl From<deltalake::datafusion::error::DataFusionError> for Failure {
    fn from(e: deltalake::datafusion::error::DataFusionError) -> Failure {
        Failure::new(e.to_string())
    }
}

pub type CliResult<T> = Result<T, Failure>;

/// The message for a missing `--config`.
pub fn config_required(command: &str) -> Failure {
    Failure::usage(format!(
        "`{command}` needs a configuration: pass --config FILE, the YAML document that describes \
         your DMS sources and tables (`dms2delta demo` writes a working example)"
    ))
}

/// Reads and validates the configuration at `uri` (a local path or `s3://bucket/key`), with the
/// lake replaced by `lake` when given. The document is returned unvalidated (it was checked once)
/// so that callers can change more before [`pipeline`] validates it again.
pub async fn load_config(uri: &str, lake: Option<&str>) -> CliResult<Config> {
    if let Ok(Location::Local { dir }) = Location::parse(uri) {
        if !dir.is_file() {
            return Err(Failure::new(format!(
                "the configuration file {} does not exist",
                dir.display()
            )));
        }
    }
    let mut config = dms2delta::bootstrap::load_config(uri).await?.config;
    if let Some(lake) = lake {
        config.lake = lake.to_string();
    }
    Ok(config)
}

/// A pipeline over a validated configuration.
pub fn pipeline(config: Config) -> CliResult<Pipeline> {
    let validated = config.validate()?;
    let stores = Stores::new(validated.config.storage.clone());
    Ok(Pipeline::new(Arc::new(validated), Arc::new(stores)))
}

/// Refuses a local folder that does not exist (the stores would quietly create it).
pub fn require_existing(loc: &Location, what: &str) -> CliResult<()> {
    if let Location::Local { dir } = loc {
        if !dir.is_dir() {
            return Err(Failure::new(format!(
                "the {what} folder {} does not exist",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Every table the configuration names (in `tables` or `table_definitions`) and selects.
pub fn configured_tables(config: &Validated) -> Vec<TableSpec> {
    let mut out: Vec<TableSpec> = Vec::new();
    for (i, s) in config.sources().iter().enumerate() {
        let configured = s.tables.iter().map(|t| (t.schema.as_str(), t.table.as_str()));
        let defined = s
            .table_definitions
            .iter()
            .flat_map(|d| d.tables.iter().map(|t| (t.table_owner.as_str(), t.table_name.as_str())));
        for (schema, table) in configured.chain(defined) {
            if let Ok(Some(spec)) = config.table(i, schema, table) {
                if !out.iter().any(|o| o.qualified_name() == spec.qualified_name()) {
                    out.push(spec);
                }
            }
        }
    }
    out.sort_by_key(|s| s.qualified_name());
    out
}

/// A table in the lake.
pub use dms2delta::model::TableId as LakeTable;

/// Where `table` is in the lake rooted at `lake`.
pub fn table_location(table: &LakeTable, lake: &Location) -> Location {
    lake.join(&table.lake_path())
}

/// The Delta tables below the lake root, found by their `_delta_log` folders at
/// `namespace/schema/table/`. dms2delta's own tables (under `_dms2delta/`) are left out.
pub async fn discover_tables(stores: &Stores, lake: &Location) -> CliResult<Vec<LakeTable>> {
    let (store, root) = stores.resolve(lake)?;
    let children = |p: Path| {
        let store = store.clone();
        async move {
            let listed = store
                .list_with_delimiter(Some(&p))
                .await
                .map_err(|e| Failure::new(format!("cannot list {p} in the lake {lake}: {e}")))?;
            let names: Vec<String> = listed
                .common_prefixes
                .iter()
                .filter_map(|c| c.filename().map(str::to_string))
                .filter(|n| !n.starts_with('_') && !n.starts_with('.'))
                .collect();
            let has_log = listed
                .common_prefixes
                .iter()
                .any(|c| c.filename() == Some("_delta_log"));
            Ok::<_, Failure>((names, has_log))
        }
    };
    let mut out = Vec::new();
    // Listed names are spelled as stored; `Path::join` would percent-encode them again.
    let below = |p: &Path, name: &str| path_below(p, &[name]).map_err(|e| Failure::new(e.to_string()));
    for ns in children(root.clone()).await?.0 {
        let ns_path = below(&root, &ns)?;
        for schema in children(ns_path.clone()).await?.0 {
            let schema_path = below(&ns_path, &schema)?;
            for table in children(schema_path.clone()).await?.0 {
                if children(below(&schema_path, &table)?).await?.1 {
                    out.push(LakeTable {
                        namespace: ns.clone(),
                        schema: schema.clone(),
                        table,
                    });
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The configured tables and the tables found in the lake, once each, sorted by name.
pub async fn known_tables(pipeline: &Pipeline) -> CliResult<Vec<(LakeTable, Option<TableSpec>)>> {
    let mut out: Vec<(LakeTable, Option<TableSpec>)> = configured_tables(&pipeline.config)
        .into_iter()
        .map(|s| {
            (
                LakeTable {
                    namespace: s.namespace.clone(),
                    schema: s.target_schema.clone(),
                    table: s.target_table.clone(),
                },
                Some(s),
            )
        })
        .collect();
    let seen: BTreeSet<LakeTable> = out.iter().map(|(t, _)| t.clone()).collect();
    for t in discover_tables(&pipeline.stores, &pipeline.config.lake).await? {
        if !seen.contains(&t) {
            out.push((t, None));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A table's vital signs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableInfo {
    /// `None`: there is no table yet.
    pub version: Option<u64>,
    /// Rows (soft-deleted rows are not counted).
    pub rows: Option<u64>,
    /// The newest source commit time in the table (`_dms_commit_ts`), microseconds.
    pub newest_change: Option<i64>,
}

impl TableInfo {
    /// Now minus the newest source commit time.
    pub fn lag_seconds(&self) -> Option<f64> {
        self.newest_change
            .map(|ts| (chrono::Utc::now().timestamp_micros() - ts) as f64 / 1e6)
    }
}

/// Whether a Delta table may be at `loc`. Opening a local table creates its folder, so read-only
/// commands look for the log first.
pub fn may_exist(stores: &Stores, loc: &Location) -> bool {
    match stores.physical(loc) {
        Location::Local { dir } => dir.join("_delta_log").is_dir(),
        _ => true,
    }
}

/// Version, row count and newest source commit time of the table at `loc`.
pub async fn table_info(stores: &Stores, loc: &Location) -> CliResult<TableInfo> {
    if !may_exist(stores, loc) {
        return Ok(TableInfo::default());
    }
    let (table, exists) = lake::open(stores, loc).await?;
    if !exists {
        return Ok(TableInfo::default());
    }
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| Failure::new(format!("cannot read the table at {loc}: {e}")))?;
    let provider = table.table_provider().await?;
    let fields: Vec<String> = provider.schema().fields().iter().map(|f| f.name().clone()).collect();
    ctx.register_table("t", provider)?;
    let has = |c: &str| fields.iter().any(|f| f == c);
    let rows = if has(dms2delta::operations::commit::DELETED) {
        format!(
            "count(*) FILTER (WHERE \"{}\" IS NOT TRUE)",
            dms2delta::operations::commit::DELETED
        )
    } else {
        "count(*)".to_string()
    };
    let newest = if has(dms2delta::changes::COMMIT_TS) {
        format!("max(\"{}\")", dms2delta::changes::COMMIT_TS)
    } else {
        "CAST(NULL AS TIMESTAMP)".to_string()
    };
    let batches = ctx
        .sql(&format!("SELECT {rows} AS n, {newest} AS newest FROM t"))
        .await?
        .collect()
        .await?;
    Ok(TableInfo {
        version: table.version(),
        rows: first_i64(&batches, 0).map(|n| n.max(0) as u64),
        newest_change: first_ts(&batches, 1),
    })
}

fn first_i64(batches: &[RecordBatch], col: usize) -> Option<i64> {
    let b = batches.iter().find(|b| b.num_rows() > 0)?;
    let a = b.column(col);
    (a.data_type() == &DataType::Int64 && !a.is_null(0)).then(|| a.as_primitive::<Int64Type>().value(0))
}

fn first_ts(batches: &[RecordBatch], col: usize) -> Option<i64> {
    let b = batches.iter().find(|b| b.num_rows() > 0)?;
    let a = b.column(col);
    match a.data_type() {
        DataType::Timestamp(TimeUnit::Microsecond, _) if !a.is_null(0) => {
            Some(a.as_primitive::<TimestampMicrosecondType>().value(0))
        }
        _ => None,
    }
}

/// `12s`, `4m 05s`, `3h 12m`, `2d 04h`.
pub fn human_duration(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "-".into();
    }
    if seconds < 0.0 {
        return "0s".into();
    }
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3_599 => format!("{}m {:02}s", s / 60, s % 60),
        3_600..=86_399 => format!("{}h {:02}m", s / 3_600, (s % 3_600) / 60),
        _ => format!("{}d {:02}h", s / 86_400, (s % 86_400) / 3_600),
    }
}

/// A UTC time for people: `2024-05-28 12:40:03 UTC`.
pub fn human_time(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `Some(3)` -> `3`, `None` -> `-`.
pub fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// A table for the terminal; columns after the first are right-aligned (numbers).
pub fn text_table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().copied());
    for (i, col) in t.column_iter_mut().enumerate() {
        if i > 0 {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// Where a quarantine report written at `path` (as `write_report` returns it) is, for people.
pub fn report_location(stores: &Stores, quarantine: &Location, path: &str) -> String {
    match quarantine {
        Location::S3 { bucket, .. } => match stores.physical(&Location::S3 {
            bucket: bucket.clone(),
            prefix: String::new(),
        }) {
            Location::Local { dir } => shown(&Location::Local { dir: dir.join(path) }),
            _ => format!("s3://{bucket}/{path}"),
        },
        Location::Local { dir } => shown(&Location::Local { dir: dir.join(path) }),
        Location::Memory { name, .. } => format!("memory://{name}/{path}"),
    }
}

/// Where a local location is, for printing; other locations as URLs.
pub fn shown(loc: &Location) -> String {
    match loc {
        Location::Local { dir } => std::path::absolute(dir)
            .unwrap_or_else(|_| dir.clone())
            .display()
            .to_string(),
        other => other.url(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(0.4), "0s");
        assert_eq!(human_duration(59.0), "59s");
        assert_eq!(human_duration(65.0), "1m 05s");
        assert_eq!(human_duration(3_600.0 * 3.0 + 720.0), "3h 12m");
        assert_eq!(human_duration(86_400.0 * 2.0 + 4.0 * 3_600.0), "2d 04h");
        assert_eq!(human_duration(-3.0), "0s");
        assert_eq!(human_duration(f64::NAN), "-");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(human_time(1_716_900_000_000_000), "2024-05-28 12:40:00 UTC");
    }

    #[test]
    fn failures_keep_the_library_message_and_retryability() {
        let e = dms2delta::Error::Config {
            path: "lake".into(),
            reason: "bad".into(),
        };
        let f = Failure::from(e);
        assert_eq!(f.message, "configuration error at `lake`: bad");
        assert_eq!(f.code, 1);
        assert!(!f.retryable);
        assert_eq!(config_required("run").code, 2);
        assert!(config_required("run").message.contains("--config FILE"));
    }

    #[tokio::test]
    async fn missing_configuration_file_is_named() {
        let err = load_config("/nonexistent/dms2delta.yaml", None).await.unwrap_err();
        assert_eq!(
            err.message,
            "the configuration file /nonexistent/dms2delta.yaml does not exist"
        );
    }

    #[tokio::test]
    async fn tables_are_discovered_by_their_logs() {
        let dir = tempfile::tempdir().unwrap();
        for p in [
            "a/s/t1/_delta_log",
            "a/s/t2/_delta_log",
            "a/s/notatable/data",
            "_dms2delta/tombstones/a/s/t1/_delta_log",
        ] {
            std::fs::create_dir_all(dir.path().join(p)).unwrap();
            std::fs::write(dir.path().join(p).join("00000000000000000000.json"), b"{}").unwrap();
        }
        let stores = Stores::new(Default::default());
        let lake = Location::Local {
            dir: dir.path().to_path_buf(),
        };
        let found = discover_tables(&stores, &lake).await.unwrap();
        let names: Vec<String> = found.iter().map(LakeTable::qualified_name).collect();
        assert_eq!(names, vec!["a.s.t1", "a.s.t2"]);
    }

    #[test]
    fn configured_tables_come_from_tables_and_definitions() {
        let text = r#"
lake: /l
staging: /s
quarantine: /q
sources:
  - name: one
    bucket: b
    tables:
      - { schema: hr, table: emp, keys: [id] }
      - { schema: hr, table: nokey }
    table_definitions:
      Tables:
        - TableName: accounts
          TableOwner: public
          TableColumns:
            - { ColumnName: id, ColumnType: INT8, ColumnIsPk: "true" }
"#;
        let v = Config::from_text(text).unwrap();
        let names: Vec<String> = configured_tables(&v).iter().map(|s| s.qualified_name()).collect();
        assert_eq!(names, vec!["one.hr.emp", "one.public.accounts"]);
    }
}
