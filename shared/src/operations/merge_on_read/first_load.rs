//! First full loads: which files a change set holding only rows of a table's first full load
//! may meet (issue #18).

use arrow::array::{Array, StringArray};
use serde_json::Value;

use crate::changes::SEQ;

/// A change set holding only rows of one series of its table's first full load (every
/// sequence `0L…`): the series and the lowest and highest sequence; `None` for any other.
///
/// DMS reads a table (or one partition or segment of a parallel load) with one query, which
/// lists each key once, so such rows can meet a stored row only through a change committed
/// before them (a CDC change or delete, `1…`), a second delivery of their own LOAD file (their
/// own sequences), or another series of a parallel load (a row that moved between partitions
/// while DMS read them). Files holding only other LOAD files' rows of the same series need not
/// be read, which keeps a full load in any key order at the cost of its rows rather than of
/// the table (issue #18).
pub fn first_load_range(seq: &StringArray) -> Option<FirstLoad> {
    if seq.null_count() > 0 || seq.is_empty() {
        return None;
    }
    let mut lo: Option<&str> = None;
    let mut hi: Option<&str> = None;
    let mut series: Option<&str> = None;
    for s in seq.iter().flatten() {
        let this = load_series(s)?;
        if series.is_some_and(|x| x != this) {
            return None;
        }
        series = Some(this);
        lo = Some(lo.map_or(s, |l| l.min(s)));
        hi = Some(hi.map_or(s, |h| h.max(s)));
    }
    Some(FirstLoad {
        series: series?.to_string(),
        lo: lo?.to_string(),
        hi: hi?.to_string(),
    })
}

/// See [`first_load_range`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstLoad {
    /// The prefix every sequence of the series starts with: `0LLOAD` (the table folder's own
    /// series), `0L<folder>/` (a partition folder) or `0LSEGMENT<n>_` (a segment).
    series: String,
    lo: String,
    hi: String,
}

/// The series prefix of a first full load's sequence (`0L<name>:<row>`), if it is one.
fn load_series(seq: &str) -> Option<&str> {
    let name = seq.strip_prefix("0L")?;
    let end = if let Some(slash) = name.rfind('/') {
        slash + 1
    } else if name.starts_with("SEGMENT") {
        name.find('_')? + 1
    } else if name.starts_with("LOAD") {
        "LOAD".len()
    } else {
        return None;
    };
    Some(&seq[..2 + end])
}

/// Whether a file may hold a row a first full load's change set meets: it holds a change from
/// after the load began, rows of another series, or rows of the same LOAD file. Without
/// sequence stats, it may.
pub(super) fn may_meet_first_load(stats: Option<&str>, load: &FirstLoad) -> bool {
    let Some(stats) = stats.and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
        return true;
    };
    let bound = |which: &str| stats.get(which).and_then(|m| m.get(SEQ)).and_then(Value::as_str);
    let (Some(min), Some(max)) = (bound("minValues"), bound("maxValues")) else {
        return true;
    };
    // Every text between two that share a prefix shares it, so the file's rows are all of the
    // series. Bounds cut short (a shorter min, a raised max) fail this test: still safe.
    let same_series = min.starts_with(&load.series) && max.starts_with(&load.series);
    !same_series || !(max < load.lo.as_str() || min > load.hi.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(min: &str, max: &str) -> String {
        serde_json::json!({"numRecords": 2, "minValues": {SEQ: min}, "maxValues": {SEQ: max}}).to_string()
    }

    #[test]
    fn a_first_load_reads_only_files_it_may_meet() {
        let seqs = StringArray::from(vec!["0LLOAD00000003:000000000001", "0LLOAD00000003:000000000009"]);
        let load = first_load_range(&seqs).unwrap();
        assert_eq!(load.series, "0LLOAD");
        // Another LOAD file of the same series: skipped.
        let other = stats("0LLOAD00000001:000000000001", "0LLOAD00000002:000000000500");
        assert!(!may_meet_first_load(Some(&other), &load));
        // Its own rows (a second delivery), a CDC change, another series, no stats: read.
        let own = stats("0LLOAD00000002:000000000001", "0LLOAD00000004:000000000001");
        assert!(may_meet_first_load(Some(&own), &load));
        let cdc = stats("0LLOAD00000001:000000000001", "1S20240528100000000000000000000000001");
        assert!(may_meet_first_load(Some(&cdc), &load));
        let series = stats(
            "0Lp_north/LOAD00000001:000000000001",
            "0Lp_north/LOAD00000001:000000000009",
        );
        assert!(may_meet_first_load(Some(&series), &load));
        assert!(may_meet_first_load(None, &load));
        // A min cut short no longer shows the series: read.
        let cut = stats("0LLO", "0LLOAD00000001:000000000009");
        assert!(may_meet_first_load(Some(&cut), &load));

        // Partition folders and segments are series of their own.
        let part = first_load_range(&StringArray::from(vec!["0Lp_north/LOAD00000002:000000000001"])).unwrap();
        assert_eq!(part.series, "0Lp_north/");
        assert!(!may_meet_first_load(Some(&series), &part));
        let seg = first_load_range(&StringArray::from(vec!["0LSEGMENT2_LOAD00000001:000000000001"])).unwrap();
        assert_eq!(seg.series, "0LSEGMENT2_");
        // Not a first load's change set: CDC, a reload, two series at once.
        for not in [
            vec!["1S20240528100000000000000000000000001"],
            vec!["1F202405281000000000LLOAD00000001:000000000001"],
            vec!["0LLOAD00000001:000000000001", "0Lp_north/LOAD00000001:000000000001"],
        ] {
            assert_eq!(first_load_range(&StringArray::from(not.clone())), None, "{not:?}");
        }
    }
}
