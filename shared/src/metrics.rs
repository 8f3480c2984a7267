//! Metrics as CloudWatch Embedded Metric Format: one JSON line on stdout per record, which
//! CloudWatch Logs turns into metrics without any API call from the function.

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

#[cfg(test)]
mod tests {
    use super::*;

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
