//! Metrics as CloudWatch Embedded Metric Format: one JSON line on stdout per record, which
//! CloudWatch Logs turns into metrics without any API call from the function.
//!
//! Each stage's metrics are declared once, in a report struct ([`CommitReport`],
//! [`CompactReport`], [`DecodeReport`]): a field's name is its key in the log line and in the
//! function's JSON answer, and the CloudWatch name beside it is its EMF metric. The log line
//! ([`CommitReport::log`]), the EMF record ([`CommitReport::emf`]) and the JSON (`Serialize`)
//! are all rendered from the struct, so the three cannot drift apart.

use std::fmt::Debug;

use serde::Serialize;
use serde_json::{json, Map, Value};

/// A CloudWatch unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    Seconds,
    Bytes,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Seconds => "Seconds",
            Unit::Bytes => "Bytes",
        }
    }
}

/// One EMF record: a set of metrics sharing the dimensions `Function` and (optionally) `Table`.
#[derive(Debug, Clone)]
pub struct Emf {
    namespace: String,
    function: String,
    table: Option<String>,
    metrics: Vec<(String, Unit, f64)>,
}

impl Emf {
    pub fn new(namespace: &str, function: &str) -> Emf {
        Emf {
            namespace: namespace.to_string(),
            function: function.to_string(),
            table: None,
            metrics: Vec::new(),
        }
    }

    pub fn with_table(mut self, table: impl Into<String>) -> Emf {
        self.table = Some(table.into());
        self
    }

    pub fn metric(mut self, name: &str, unit: Unit, value: f64) -> Emf {
        self.metrics.push((name.to_string(), unit, value));
        self
    }

    pub fn to_value(&self, timestamp_ms: i64) -> Value {
        // Per table, and per function across tables: alarms need one series per function
        // (a CloudWatch alarm cannot search over every table's series).
        let dims: Vec<Vec<&str>> = if self.table.is_some() {
            vec![vec!["Function", "Table"], vec!["Function"]]
        } else {
            vec![vec!["Function"]]
        };
        let defs: Vec<Value> = self
            .metrics
            .iter()
            .map(|(n, u, _)| json!({"Name": n, "Unit": u.as_str()}))
            .collect();
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{"Namespace": self.namespace, "Dimensions": dims, "Metrics": defs}]
            }),
        );
        root.insert("Function".into(), json!(self.function));
        if let Some(t) = &self.table {
            root.insert("Table".into(), json!(t));
        }
        for (n, _, v) in &self.metrics {
            root.insert(n.clone(), json!(v));
        }
        Value::Object(root)
    }

    /// The EMF line (no trailing newline).
    pub fn line(&self) -> String {
        self.to_value(chrono::Utc::now().timestamp_millis()).to_string()
    }

    /// Writes the line to stdout, where the Lambda runtime hands it to CloudWatch Logs.
    pub fn emit(&self) {
        println!("{}", self.line());
    }
}

/// A value a stage report carries: how a log line records it, and its value as a metric
/// (`None`: no data point this time).
pub trait Field {
    type Log<'a>: tracing::Value
    where
        Self: 'a;
    fn log(&self) -> Self::Log<'_>;
    fn metric(&self) -> Option<f64>;
}

impl Field for u64 {
    type Log<'a> = u64;
    fn log(&self) -> u64 {
        *self
    }
    fn metric(&self) -> Option<f64> {
        Some(*self as f64)
    }
}

impl Field for usize {
    type Log<'a> = u64;
    fn log(&self) -> u64 {
        *self as u64
    }
    fn metric(&self) -> Option<f64> {
        Some(*self as f64)
    }
}

/// A flag counts 1 when set (e.g. one checkpoint written).
impl Field for bool {
    type Log<'a> = bool;
    fn log(&self) -> bool {
        *self
    }
    fn metric(&self) -> Option<f64> {
        Some(f64::from(u8::from(*self)))
    }
}

impl Field for Option<u64> {
    type Log<'a> = Option<u64>;
    fn log(&self) -> Option<u64> {
        *self
    }
    fn metric(&self) -> Option<f64> {
        self.map(|v| v as f64)
    }
}

impl Field for Option<f64> {
    type Log<'a> = Option<f64>;
    fn log(&self) -> Option<f64> {
        *self
    }
    fn metric(&self) -> Option<f64> {
        *self
    }
}

impl Field for String {
    type Log<'a> = &'a str;
    fn log(&self) -> &str {
        self
    }
    fn metric(&self) -> Option<f64> {
        None
    }
}

impl Field for Option<String> {
    type Log<'a> = &'a str;
    fn log(&self) -> &str {
        self.as_deref().unwrap_or("")
    }
    fn metric(&self) -> Option<f64> {
        None
    }
}

/// A list is logged as a whole and counts its items as a metric.
impl<T: Debug> Field for Vec<T> {
    type Log<'a>
        = tracing::field::DebugValue<&'a Vec<T>>
    where
        T: 'a;
    fn log(&self) -> Self::Log<'_> {
        tracing::field::debug(self)
    }
    fn metric(&self) -> Option<f64> {
        Some(self.len() as f64)
    }
}

/// Declares a stage's report: each field once, with its CloudWatch name and unit when it is an
/// EMF metric. Generates the `Serialize` struct, `METRICS` (every CloudWatch name, for the
/// template's alarms and dashboard), `emf` and `log`.
macro_rules! stage_report {
    (
        $(#[$meta:meta])*
        pub struct $name:ident ($stage:literal $(, dimension $dim:ident)?) {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty $(=> $emf:literal $unit:ident)?, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $name {
            /// The function the report belongs to (the EMF `Function` dimension, the log's `stage`).
            pub const STAGE: &'static str = $stage;

            /// Every CloudWatch metric name the report can emit.
            pub const METRICS: &'static [&'static str] = &[$($($emf,)?)*];

            /// The EMF metrics with a value this time, by CloudWatch name.
            pub fn metrics(&self) -> Vec<(&'static str, Unit, f64)> {
                let mut out = Vec::new();
                $($(
                    if let Some(v) = Field::metric(&self.$field) {
                        out.push(($emf, Unit::$unit, v));
                    }
                )?)*
                out
            }

            /// The EMF record (per table when the report names one).
            pub fn emf(&self, namespace: &str) -> Emf {
                #[allow(unused_mut)]
                let mut e = Emf::new(namespace, $stage);
                $( e = e.with_table(self.$dim.clone()); )?
                for (name, unit, value) in self.metrics() {
                    e = e.metric(name, unit, value);
                }
                e
            }

            /// The log line: every field, at info level, with `message`.
            pub fn log(&self, message: &str) {
                tracing::info!(stage = $stage, $( $field = Field::log(&self.$field), )* "{message}");
            }
        }
    };
}

stage_report! {
    /// What one table's commit reports.
    pub struct CommitReport ("commit", dimension table) {
        /// `namespace.schema.table`.
        table: String,
        /// The table version holding the changes; `None` when nothing was pending.
        version: Option<u64>,
        change_sets: u64 => "ChangeSets" Count,
        inserted: u64 => "RowsInserted" Count,
        updated: u64 => "RowsUpdated" Count,
        deleted: u64 => "RowsDeleted" Count,
        /// Changes refused because the table (or a tombstone) had a newer sequence.
        stale: u64 => "RowsStale" Count,
        /// Unchanged rows written again (the copy-on-write cost).
        copied: u64 => "RowsCopied" Count,
        dv_files: u64 => "DeletionVectorFiles" Count,
        dv_rows: u64 => "DeletionVectorRows" Count,
        attempts: u64,
        /// Attempts after the first.
        retries: u64 => "Retries" Count,
        conflicts: u64 => "Conflicts" Count,
        /// Change sets set aside with a report.
        quarantined: Vec<String> => "Quarantined" Count,
        /// Rows removed (or marked deleted) when the table's floor rose after a reload's load
        /// or a truncate, and the floor it rose to.
        swept: u64 => "RowsSwept" Count,
        floor: Option<String>,
        duration_ms: u64 => "CommitLatencyMs" Milliseconds,
        /// Now minus the newest source commit time applied (none when nothing was).
        lag_seconds: Option<f64> => "ReplicationLagSeconds" Seconds,
        /// Tables with `history.enabled` only (no data point otherwise): history versions
        /// written (new, rewritten or removed), and the history's part of the commit's time.
        history_versions: Option<u64> => "HistoryVersionsWritten" Count,
        history_ms: Option<u64> => "HistoryLatencyMs" Milliseconds,
    }
}

stage_report! {
    /// What one table's maintenance reports.
    pub struct CompactReport ("compact", dimension table) {
        table: String,
        /// Why work was due (empty: nothing to do).
        due: Vec<&'static str>,
        files_in: u64 => "FilesIn" Count,
        files_out: u64 => "FilesOut" Count,
        bytes_rewritten: u64 => "BytesRewritten" Bytes,
        files_purged: u64 => "FilesPurged" Count,
        rows_purged: u64 => "RowsPurged" Count,
        checkpoint: bool => "CheckpointsWritten" Count,
        vacuumed: u64 => "FilesVacuumed" Count,
        tombstones_dropped: u64 => "TombstonesDropped" Count,
        /// Gave way to a concurrent maintenance run.
        yielded: bool,
        duration_ms: u64 => "DurationMs" Milliseconds,
    }
}

stage_report! {
    /// What decode did with one table of one file.
    pub struct DecodeReport ("decode", dimension table) {
        /// `s3://bucket/key`.
        file: String,
        /// `namespace.schema.table`.
        table: String,
        /// 1 for every table a file held: summed, the files decoded.
        files: u64 => "Files" Count,
        /// Rows in the file for this table.
        rows_in: u64 => "RowsIn" Count,
        /// Rows left after deduplication (what was staged).
        rows_out: u64 => "RowsOut" Count,
        /// Where the change set was staged.
        staged: Option<String>,
        /// The whole file's bytes.
        bytes_read: u64 => "BytesRead" Bytes,
        duration_ms: u64 => "DurationMs" Milliseconds,
    }
}

stage_report! {
    /// What reprocess found and did.
    pub struct ReprocessReport ("reprocess") {
        dry_run: bool,
        /// DMS objects under the sources (after the table and time filters).
        files_listed: usize,
        /// Applied by a commit of their table.
        files_applied: usize,
        /// Staged, waiting for a commit.
        files_staged: usize,
        /// Neither applied, staged nor quarantined: their events were lost.
        files_missing: usize => "FilesMissing" Count,
        /// Missing files handed to decode (none in a dry run).
        files_requeued: usize => "FilesRequeued" Count,
        /// Quarantine reports looked at.
        quarantined: usize,
        /// Quarantined files that decode now; their reports were removed.
        quarantine_recovered: usize => "QuarantineRecovered" Count,
        /// Quarantined files still bad; their reports stay (rewritten).
        quarantine_still_bad: usize => "QuarantineStillBad" Count,
        /// Tables committed because change sets were waiting.
        tables_committed: Vec<String> => "TablesCommitted" Count,
        /// Tables whose commit failed (`table: why`); every other table was still committed.
        tables_failed: Vec<String> => "TablesFailed" Count,
        /// Rows inserted, updated or deleted by those commits.
        rows_changed: u64,
        /// Work left for the next run because of `max_files`.
        remaining: usize => "Remaining" Count,
        /// The files found missing (first 100), for the report.
        missing: Vec<String>,
        /// The quarantined files recovered (first 100).
        recovered: Vec<String>,
        duration_ms: u64 => "DurationMs" Milliseconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_renders_its_json_and_emf_from_one_definition() {
        let r = CommitReport {
            table: "mysql.hr.emp".into(),
            version: Some(3),
            inserted: 4,
            attempts: 2,
            retries: 1,
            quarantined: vec!["a.parquet".into()],
            duration_ms: 12,
            ..CommitReport::default()
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["inserted"], 4);
        assert_eq!(json["version"], 3);
        assert_eq!(json["quarantined"], json!(["a.parquet"]));
        let emf = r.emf("ns").to_value(0);
        assert_eq!(emf["Table"], "mysql.hr.emp");
        assert_eq!(emf["Function"], "commit");
        assert_eq!(emf["RowsInserted"], 4.0);
        assert_eq!(emf["Retries"], 1.0);
        assert_eq!(emf["Quarantined"], 1.0);
        assert_eq!(emf["CommitLatencyMs"], 12.0);
        // No lag without an applied change: no data point rather than a zero.
        assert!(emf.get("ReplicationLagSeconds").is_none());
        let defs = emf["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().unwrap();
        // Nor without a history: the lag and the two history metrics have no data point.
        assert_eq!(defs.len(), CommitReport::METRICS.len() - 3);
        assert!(emf.get("HistoryVersionsWritten").is_none());
        assert!(defs.contains(&json!({"Name": "CommitLatencyMs", "Unit": "Milliseconds"})));
        // Only the fields given a CloudWatch name are metrics: the version and attempts are not.
        assert!(emf.get("version").is_none() && emf.get("Attempts").is_none());
        let with_lag = CommitReport {
            lag_seconds: Some(2.5),
            ..r
        };
        assert_eq!(with_lag.emf("ns").to_value(0)["ReplicationLagSeconds"], 2.5);
        // A flag counts once; a report without a table has only the function dimension.
        let c = CompactReport {
            checkpoint: true,
            ..CompactReport::default()
        };
        assert_eq!(c.emf("ns").to_value(0)["CheckpointsWritten"], 1.0);
        let rp = ReprocessReport {
            tables_committed: vec!["a".into(), "b".into()],
            ..ReprocessReport::default()
        };
        let v = rp.emf("ns").to_value(0);
        assert_eq!(v["TablesCommitted"], 2.0);
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Dimensions"], json!([["Function"]]));
        assert_eq!(
            serde_json::to_value(&rp).unwrap()["tables_committed"],
            json!(["a", "b"])
        );
    }

    #[test]
    fn emf_shape() {
        let v = Emf::new("dms2delta", "decode")
            .with_table("mysql.hr.emp")
            .metric("RowsIn", Unit::Count, 10.0)
            .metric("DurationMs", Unit::Milliseconds, 3.5)
            .to_value(1_700_000_000_000);
        let cw = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "dms2delta");
        assert_eq!(cw["Dimensions"], json!([["Function", "Table"], ["Function"]]));
        assert_eq!(cw["Metrics"][0], json!({"Name": "RowsIn", "Unit": "Count"}));
        assert_eq!(v["_aws"]["Timestamp"], 1_700_000_000_000i64);
        assert_eq!(v["RowsIn"], 10.0);
        assert_eq!(v["Table"], "mysql.hr.emp");
        // Every metric named in the directive has a value at the top level, as EMF requires.
        for m in cw["Metrics"].as_array().unwrap() {
            assert!(v.get(m["Name"].as_str().unwrap()).is_some());
        }
        let untabled = Emf::new("ns", "reprocess")
            .metric("FilesMissing", Unit::Count, 1.0)
            .to_value(0);
        assert_eq!(
            untabled["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([["Function"]])
        );
    }
}
