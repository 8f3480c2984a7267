//! The changes' keys, indexed for probing data files and for skipping files whose key
//! bounds hold none of them.

use std::collections::HashMap;

use arrow::array::{ArrayRef, AsArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use serde_json::Value;

use crate::changes::casts_to_i64;

/// The changes' keys, for probing data files.
pub(super) enum KeyIndex {
    /// One integer key: no row encoding.
    Int(HashMap<i64, u32, foldhash::fast::RandomState>, Vec<i64>),
    /// Anything else, through Arrow's row format.
    Rows(RowConverter, HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>),
}

impl KeyIndex {
    pub(super) fn build(keys: &[ArrayRef]) -> Result<Self, ArrowError> {
        if let [k] = keys {
            if casts_to_i64(k.data_type()) {
                let k = cast(k, &DataType::Int64)?;
                let k = k.as_primitive::<Int64Type>();
                let mut map = HashMap::with_capacity_and_hasher(k.len(), Default::default());
                for (i, v) in k.iter().enumerate() {
                    if let Some(v) = v {
                        map.insert(v, i as u32);
                    }
                }
                let mut sorted: Vec<i64> = map.keys().copied().collect();
                sorted.sort_unstable();
                return Ok(KeyIndex::Int(map, sorted));
            }
        }
        let converter = RowConverter::new(keys.iter().map(|k| SortField::new(k.data_type().clone())).collect())?;
        let rows = converter.convert_columns(keys)?;
        let mut map = HashMap::with_capacity_and_hasher(rows.num_rows(), Default::default());
        for (i, r) in rows.iter().enumerate() {
            map.insert(r.as_ref().into(), i as u32);
        }
        Ok(KeyIndex::Rows(converter, map))
    }

    /// Calls `hit(row, change)` for each row of `cols` whose key has a change.
    pub(super) fn probe(&self, cols: &[ArrayRef], mut hit: impl FnMut(usize, u32)) -> Result<(), ArrowError> {
        match self {
            KeyIndex::Int(map, _) => {
                let k = cast(&cols[0], &DataType::Int64)?;
                let k = k.as_primitive::<Int64Type>();
                for (i, v) in k.iter().enumerate() {
                    if let Some(src) = v.and_then(|v| map.get(&v)) {
                        hit(i, *src);
                    }
                }
            }
            KeyIndex::Rows(converter, map) => {
                let rows = converter.convert_columns(cols)?;
                for (i, r) in rows.iter().enumerate() {
                    if let Some(src) = map.get(r.as_ref()) {
                        hit(i, *src);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a file whose key stats say `[min, max]` may hold a changed key.
    pub(super) fn may_hold(&self, stats: Option<&str>, key: &str) -> bool {
        let KeyIndex::Int(_, sorted) = self else {
            return true;
        };
        let Some(stats) = stats.and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
            return true;
        };
        let bound = |which: &str| stats.get(which).and_then(|m| m.get(key)).and_then(Value::as_i64);
        let (Some(min), Some(max)) = (bound("minValues"), bound("maxValues")) else {
            return true;
        };
        let at = sorted.partition_point(|v| *v < min);
        sorted.get(at).is_some_and(|v| *v <= max)
    }
}
