//! A table's change data feed, read back with delta-rs and with the Python `deltalake` package,
//! and replayed: applying the feed from the first version in commit order must rebuild the
//! table exactly, and each key's written sequence may never go down.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use dms2delta::operations::change_feed;
use dms2delta::sim::{rows_of, Value};
use dms2delta::storage::{Location, Stores};

/// The feed's rows (`columns`: the table's, then `_change_type`, `_commit_version`).
pub struct Feed {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Feed {
    fn at(&self, name: &str) -> usize {
        self.columns.iter().position(|c| c == name).unwrap()
    }

    /// How many rows of the feed have this change type.
    pub fn count(&self, change_type: &str) -> usize {
        let i = self.at(change_type_col());
        self.rows
            .iter()
            .filter(|r| r[i] == Value::Str(change_type.into()))
            .count()
    }

    /// Whether any row of the feed holds `v` in `column`.
    pub fn holds(&self, column: &str, v: &Value) -> bool {
        let i = self.at(column);
        self.rows.iter().any(|r| &r[i] == v)
    }

    /// The rows as canonical text lines, escaped and sorted as the Python reader prints them.
    pub fn lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|v| {
                        v.canonical()
                            .replace('\\', "\\\\")
                            .replace('\t', "\\t")
                            .replace('\n', "\\n")
                    })
                    .collect::<Vec<_>>()
                    .join("\t")
            })
            .collect();
        v.sort();
        v
    }

    /// Replays the feed in commit order (within a commit, what leaves before what comes in).
    /// Every preimage and delete must be the row the replay holds for its key, every insert and
    /// postimage must find its key free, and a key's written `_dms_seq` never goes down.
    /// Returns the rows the replay ends with, in the table's columns, sorted.
    pub fn replay(&self, keys: &[&str]) -> Result<Vec<Vec<Value>>, String> {
        let mut replay = Replay::default();
        self.replay_onto(keys, &mut replay)?;
        Ok(replay.state.into_values().collect())
    }

    /// [`Feed::replay`] continued from `replay` (the rows the table held before the feed's first
    /// version, and each key's newest written sequence so far), which it leaves at the feed's end.
    pub fn replay_onto(&self, keys: &[&str], replay: &mut Replay) -> Result<(), String> {
        let (ct, ver, seq) = (
            self.at(change_type_col()),
            self.at("_commit_version"),
            self.at("_dms_seq"),
        );
        let data: Vec<usize> = (0..self.columns.len()).filter(|i| *i != ct && *i != ver).collect();
        let key_at: Vec<usize> = keys.iter().map(|k| self.at(k)).collect();
        let leaves = |r: &Vec<Value>| match &r[ct] {
            Value::Str(s) if s == "delete" || s == "update_preimage" => Ok(true),
            Value::Str(s) if s == "insert" || s == "update_postimage" => Ok(false),
            other => Err(format!("unknown change type {other:?}")),
        };
        let mut ordered: Vec<(&Value, bool, &Vec<Value>)> = Vec::new();
        for r in &self.rows {
            ordered.push((&r[ver], !leaves(r)?, r));
        }
        ordered.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let Replay { state, newest } = replay;
        for (_, comes_in, r) in ordered {
            let key: Vec<Value> = key_at.iter().map(|i| r[*i].clone()).collect();
            let row: Vec<Value> = data.iter().map(|i| r[*i].clone()).collect();
            if comes_in {
                if let Some(held) = state.insert(key.clone(), row) {
                    return Err(format!("{r:?} comes in while the replay holds {held:?}"));
                }
                if let Some(prev) = newest.get(&key) {
                    if r[seq] < *prev {
                        return Err(format!("{r:?}: the key's sequence goes down from {prev:?}"));
                    }
                }
                newest.insert(key, r[seq].clone());
            } else {
                match state.remove(&key) {
                    Some(held) if held == row => {}
                    held => return Err(format!("{r:?} leaves but the replay holds {held:?}")),
                }
            }
        }
        Ok(())
    }

    /// The table's columns (the feed's, without its own two).
    pub fn table_columns(&self) -> Vec<String> {
        self.columns
            .iter()
            .filter(|c| *c != change_type_col() && *c != "_commit_version")
            .cloned()
            .collect()
    }
}

/// Where a replay stands: the rows it holds by key, and each key's newest written `_dms_seq`.
#[derive(Debug, Default, Clone)]
pub struct Replay {
    pub state: BTreeMap<Vec<Value>, Vec<Value>>,
    pub newest: BTreeMap<Vec<Value>, Value>,
}

fn change_type_col() -> &'static str {
    change_feed::CHANGE_TYPE
}

/// The table's feed from version 0, read with delta-rs; `columns` are the table's (the feed's
/// change type and version are added).
pub async fn read(stores: &Stores, loc: &Location, columns: &[&str]) -> Feed {
    read_range(stores, loc, columns, 0, None).await.unwrap()
}

/// The table's feed from version `from` to `to` (inclusive; the latest when `None`), as [`read`].
pub async fn read_range(
    stores: &Stores,
    loc: &Location,
    columns: &[&str],
    from: u64,
    to: Option<u64>,
) -> Result<Feed, String> {
    let (table, exists) = dms2delta::lake::open(stores, loc).await.map_err(|e| e.to_string())?;
    if !exists {
        return Err(format!("no table at {loc}"));
    }
    let batches = change_feed::read(&table, from, to)
        .await
        .map_err(|e| format!("reading the feed of {loc} from version {from} to {to:?}: {e}"))?;
    let mut cols: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    cols.push(change_type_col().into());
    cols.push("_commit_version".into());
    // The version is unsigned; the canonical rows know signed integers.
    let batches: Vec<RecordBatch> = batches
        .iter()
        .map(|b| {
            let fields: Vec<Field> = cols
                .iter()
                .map(|c| {
                    let f = b
                        .schema()
                        .field_with_name(c)
                        .map_err(|e| format!("the feed of {loc}: {e}"))?
                        .clone();
                    Ok(if c == "_commit_version" {
                        f.with_data_type(DataType::Int64)
                    } else {
                        f
                    })
                })
                .collect::<Result<_, String>>()?;
            let arrays = cols
                .iter()
                .zip(&fields)
                .map(|(c, f)| {
                    arrow::compute::cast(b.column_by_name(c).unwrap(), f.data_type()).map_err(|e| e.to_string())
                })
                .collect::<Result<_, String>>()?;
            RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), arrays).map_err(|e| e.to_string())
        })
        .collect::<Result<_, String>>()?;
    Ok(Feed {
        rows: rows_of(&batches, &cols)?,
        columns: cols,
    })
}

/// The same feed read by the Python `deltalake` package (`load_cdf`), as sorted canonical lines:
/// `table` is a folder, or an `s3://` URL on the local `endpoint`.
pub fn read_with_python(table: &str, endpoint: Option<&str>, columns: &[String]) -> Result<Vec<String>, String> {
    let columns = columns.join(",");
    let mut lines = super::run_python("read_cdf.py", [table, columns.as_str(), "0"], endpoint)?;
    lines.sort();
    Ok(lines)
}
