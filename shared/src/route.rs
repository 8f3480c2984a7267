//! Object key -> which source, table and kind of DMS file it is. Every layout quirk of DMS's S3
//! output is handled here, and only here.

use crate::config::{DatePartitionDelimiter, DatePartitionSequence, Validated};
use crate::error::{BadInputKind, InputProblem};

/// What kind of DMS file a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `LOAD00000001…`: full-load rows, inserts.
    Load,
    /// `YYYYMMDD-HHMMSSmmm[m]`: one table's changes.
    Cdc,
    /// `CDC_TXN-YYYYMMDDHHMMSSmmm`: every table's changes in commit order.
    CdcTxn,
}

/// A routed DMS file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// Index of the source in the configuration.
    pub source: usize,
    /// Schema and table from the folder names (`None` for CDC_TXN files).
    pub schema: Option<String>,
    pub table: Option<String>,
    pub kind: FileKind,
    /// The file name without folders and extensions, e.g. `LOAD0000000A`, `SEGMENT2_LOAD00000001`
    /// or `20240528-195141380`.
    pub stem: String,
    /// For a full-load file below a sub-folder of its table folder (a parallel-load partition or
    /// segment folder, or date folders): that folder path, e.g. `p2024_q1`. Every partition of a
    /// parallel load starts its own `LOAD00000001`, so the folder is part of the file's identity
    /// wherever the name alone would be (its rows' sequences).
    pub load_folder: Option<String>,
    /// For CDC and CDC_TXN files: the UTC time of the name as 18 digits `YYYYMMDDHHMMSSmmmm`.
    pub time_digits: Option<String>,
    /// For a full-load file of a reload: its generation's anchor (set by decode from a listing
    /// of the table folder, see [`crate::generation`]); `None` for the first load.
    pub load_anchor: Option<crate::generation::Anchor>,
}

/// The result of routing a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    File(Routed),
    /// Not something decode should look at (folder markers, keys outside every source).
    Ignore(&'static str),
}

const EXTENSIONS: [&str; 4] = [".csv.gz", ".parquet", ".csv", ".gz"];

/// Routes `bucket/key`. A key under a source's folder that does not fit DMS's layout is an error;
/// a key outside every source is ignored.
pub fn route(config: &Validated, bucket: &str, key: &str) -> Result<Route, InputProblem> {
    if key.ends_with('/') {
        return Ok(Route::Ignore("folder marker"));
    }
    // Sources whose folder holds the key, most specific first. Folders may nest (`raw` and
    // `raw/pg`): the key belongs to the most specific source whose DMS layout it fits, so a
    // table folder of the outer source that happens to share the inner folder's name is still
    // the outer source's.
    let mut candidates: Vec<(usize, &str)> = Vec::new();
    for (i, s) in config.sources().iter().enumerate() {
        if s.bucket != bucket {
            continue;
        }
        let rest = match &s.bucket_folder {
            Some(folder) => {
                let folder = folder.trim_matches('/');
                match key.strip_prefix(folder).and_then(|r| r.strip_prefix('/')) {
                    Some(rest) => rest,
                    None => continue,
                }
            }
            None => key,
        };
        candidates.push((i, rest));
    }
    candidates.sort_by_key(|(i, rest)| (rest.len(), *i));
    let mut first_problem = None;
    for (source, rest) in candidates {
        match route_in(config, source, rest, key) {
            Ok(r) => return Ok(r),
            Err(p) => {
                first_problem.get_or_insert(p);
            }
        }
    }
    match first_problem {
        Some(p) => Err(p),
        None => Ok(Route::Ignore("not under any configured source")),
    }
}

/// Routes `key`, whose part below source `source`'s folder is `rest`, in that source's layout.
fn route_in(config: &Validated, source: usize, rest: &str, key: &str) -> Result<Route, InputProblem> {
    let unroutable = |why: &str| InputProblem::new(BadInputKind::UnroutableKey, format!("key `{key}`: {why}"));
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err(unroutable("empty, `.` or `..` path segment"));
    }
    let Some((file, folders)) = segments.split_last() else {
        return Err(unroutable("no file name"));
    };
    let stem = strip_extension(file);
    let src = &config.sources()[source];

    if let Some(txn_time) = stem.strip_prefix("CDC_TXN-") {
        let cdc_path = src.cdc_path.as_deref().map(|p| p.trim_matches('/'));
        let folder = folders.join("/");
        if cdc_path.is_none_or(|p| p != folder) {
            return Err(unroutable(
                "a CDC_TXN file outside the source's `cdc_path` (set `cdc_path` to DMS's CdcPath)",
            ));
        }
        let digits =
            cdc_digits(txn_time, 17).ok_or_else(|| unroutable("CDC_TXN name is not CDC_TXN-YYYYMMDDHHMMSSmmm"))?;
        return Ok(Route::File(Routed {
            source,
            schema: None,
            table: None,
            kind: FileKind::CdcTxn,
            stem: stem.to_string(),
            time_digits: Some(digits),
            load_folder: None,
            load_anchor: None,
        }));
    }

    if folders.len() < 2 {
        return Err(unroutable(
            "expected schema/table/file below the source's bucket_folder",
        ));
    }
    let (schema, table) = (folders[0], folders[1]);
    let below = &folders[2..];
    let dp = &src.date_partitioning;

    let (kind, time_digits, load_folder) = if is_load_stem(stem) {
        // A full-load file in a sub-folder is one series of a parallel load (partitions-auto,
        // partitions-list, ranges with segment-names: one folder named after the partition or
        // segment), or sits in date folders. Either way the folder path tells its series apart
        // from the other folders' series of the same names, so the two need no telling apart.
        let folder = match below {
            [] => None,
            [one] => Some((*one).to_string()),
            _ if dp.enabled && check_date_folders(below, dp).is_ok() => Some(below.join("/")),
            _ => {
                return Err(unroutable(&format!(
                    "a full-load file {} folders below the table folder (`{}`): DMS parallel load \
                     writes one partition or segment folder (schema/table/<partition>/LOAD…), and \
                     several folders are only read as date folders matching `date_partitioning`; \
                     check the source's `bucket_folder` and `date_partitioning`",
                    below.len(),
                    below.join("/")
                )))
            }
        };
        (FileKind::Load, None, folder)
    } else if let Some(d) = cdc_name_digits(stem) {
        if !below.is_empty() {
            if !dp.enabled {
                return Err(unroutable(&format!(
                    "a CDC file in folders `{}` below the table folder: DMS writes CDC files in the \
                     table folder, or in date folders when DatePartitionEnabled is on (then set the \
                     source's `date_partitioning` to match); only full-load (LOAD…) files sit in \
                     parallel-load partition folders",
                    below.join("/")
                )));
            }
            check_date_folders(below, dp).map_err(|w| {
                unroutable(&format!(
                    "a CDC file in {w}: DMS writes CDC files in the table folder or its date \
                     folders; only full-load (LOAD…) files sit in parallel-load partition folders"
                ))
            })?;
        }
        (FileKind::Cdc, Some(d), None)
    } else {
        return Err(unroutable(
            "the file name is neither a full-load name (LOAD…, SEGMENTn_LOAD…) nor a CDC name \
             YYYYMMDD-HHMMSSmmm",
        ));
    };
    Ok(Route::File(Routed {
        source,
        schema: Some(schema.to_string()),
        table: Some(table.to_string()),
        kind,
        stem: stem.to_string(),
        time_digits,
        load_folder,
        load_anchor: None,
    }))
}

/// Whether a file name (folders and extension stripped) is a full-load file's: `LOAD…`, or
/// `SEGMENT<n>_LOAD…` as DMS names the series of a segmented parallel load (MongoDB and
/// DocumentDB segmentation, `ranges` without `segment-names`) in the table folder.
pub fn is_load_stem(stem: &str) -> bool {
    if stem.starts_with("LOAD") {
        return true;
    }
    stem.strip_prefix("SEGMENT")
        .and_then(|rest| rest.split_once("_LOAD"))
        .is_some_and(|(segment, _)| !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// [`is_load_stem`] of a key's last segment, extension included.
pub fn is_load_file(key: &str) -> bool {
    let file = key.rsplit('/').next().unwrap_or(key);
    is_load_stem(strip_extension(file))
}

fn strip_extension(file: &str) -> &str {
    for ext in EXTENSIONS {
        if let Some(s) = file.strip_suffix(ext) {
            return s;
        }
    }
    file
}

/// `YYYYMMDD-HHMMSSmmm` (9 digits after the dash in real files, 10 in the docs) -> 18 digits.
fn cdc_name_digits(stem: &str) -> Option<String> {
    let (date, time) = stem.split_once('-')?;
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !(9..=10).contains(&time.len()) || !time.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut d = format!("{date}{time}");
    while d.len() < 18 {
        d.push('0');
    }
    Some(d)
}

fn cdc_digits(s: &str, len: usize) -> Option<String> {
    if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut d = s.to_string();
    while d.len() < 18 {
        d.push('0');
    }
    Some(d)
}

/// Folders below a table folder that are not the date folders its source's `date_partitioning`
/// describes.
#[derive(Debug, thiserror::Error)]
#[error("folders `{folders}`, which do not match date_partitioning ({sequence:?}, {delimiter:?})")]
struct NotDateFolders {
    folders: String,
    sequence: DatePartitionSequence,
    delimiter: DatePartitionDelimiter,
}

/// Whether `folders` (not empty) are the date folders `dp` describes.
fn check_date_folders(folders: &[&str], dp: &crate::config::DatePartitioning) -> Result<(), NotDateFolders> {
    let widths = dp.sequence.parts();
    let digits = |s: &str, w: usize| s.len() == w && s.bytes().all(|b| b.is_ascii_digit());
    let ok = match dp.delimiter {
        DatePartitionDelimiter::Slash => {
            folders.len() == widths.len() && folders.iter().zip(widths).all(|(f, w)| digits(f, *w))
        }
        DatePartitionDelimiter::Dash | DatePartitionDelimiter::Underscore => {
            let sep = if dp.delimiter == DatePartitionDelimiter::Dash {
                '-'
            } else {
                '_'
            };
            folders.len() == 1 && {
                let parts: Vec<&str> = folders[0].split(sep).collect();
                parts.len() == widths.len() && parts.iter().zip(widths).all(|(p, w)| digits(p, *w))
            }
        }
        DatePartitionDelimiter::None => folders.len() == 1 && digits(folders[0], widths.iter().sum()),
    };
    if ok {
        Ok(())
    } else {
        Err(NotDateFolders {
            folders: folders.join("/"),
            sequence: dp.sequence,
            delimiter: dp.delimiter,
        })
    }
}

/// The UTC time that 18 name digits stand for, in microseconds since the epoch.
pub fn digits_to_micros(d: &str) -> Option<i64> {
    use chrono::NaiveDate;
    let n = |a: usize, b: usize| d.get(a..b)?.parse::<u32>().ok();
    let date = NaiveDate::from_ymd_opt(n(0, 4)? as i32, n(4, 6)?, n(6, 8)?)?;
    let t = date.and_hms_micro_opt(n(8, 10)?, n(10, 12)?, n(12, 14)?, n(14, 18)? * 100)?;
    Some(t.and_utc().timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg(extra: &str) -> Validated {
        Config::from_text(&format!(
            r#"
lake: /l
staging: /s
quarantine: /q
sources:
  - name: a
    bucket: dms
    bucket_folder: raw
    cdc_path: txn
{extra}
  - name: b
    bucket: dms
    bucket_folder: raw/pg
  - name: c
    bucket: other
"#
        ))
        .unwrap()
    }

    fn file(r: Result<Route, InputProblem>) -> Routed {
        match r {
            Ok(Route::File(f)) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn load_and_cdc_names() {
        let c = cfg("");
        let f = file(route(&c, "dms", "raw/hr/emp/LOAD0000000A.csv"));
        assert_eq!(
            (f.source, f.schema.as_deref(), f.table.as_deref(), f.kind),
            (0, Some("hr"), Some("emp"), FileKind::Load)
        );
        assert_eq!(f.stem, "LOAD0000000A");
        let f = file(route(&c, "dms", "raw/hr/emp/20240528-195141380.parquet"));
        assert_eq!(f.kind, FileKind::Cdc);
        assert_eq!(f.time_digits.as_deref(), Some("202405281951413800"));
        let f = file(route(&c, "dms", "raw/hr/emp/20240528-1951413801.csv.gz"));
        assert_eq!(f.time_digits.as_deref(), Some("202405281951413801"));
        // Most specific bucket folder wins.
        assert_eq!(file(route(&c, "dms", "raw/pg/public/acc/LOAD00000001.csv")).source, 1);
        // ... when the key fits its layout: a table folder `pg/orders` of the outer source is
        // not mistaken for the inner source's (it would be unroutable there).
        let f = file(route(&c, "dms", "raw/pg/orders/LOAD00000001.csv"));
        assert_eq!(
            (f.source, f.schema.as_deref(), f.table.as_deref()),
            (0, Some("pg"), Some("orders"))
        );
        let f = file(route(&c, "dms", "raw/pg/orders/20240528-195141380.csv"));
        assert_eq!((f.source, f.kind), (0, FileKind::Cdc));
        // No bucket folder: the bucket root.
        assert_eq!(file(route(&c, "other", "s/t/LOAD00000001.parquet")).source, 2);
    }

    #[test]
    fn cdc_txn_files() {
        let c = cfg("");
        let f = file(route(&c, "dms", "raw/txn/CDC_TXN-20240528195141380.csv"));
        assert_eq!(f.kind, FileKind::CdcTxn);
        assert_eq!(f.schema, None);
        assert_eq!(f.time_digits.as_deref(), Some("202405281951413800"));
        assert_eq!(
            route(&c, "dms", "raw/other/CDC_TXN-20240528195141380.csv")
                .unwrap_err()
                .kind,
            BadInputKind::UnroutableKey
        );
    }

    #[test]
    fn date_folders() {
        let c = cfg("    date_partitioning: { enabled: true, sequence: YYYYMMDD, delimiter: SLASH }");
        assert_eq!(
            file(route(&c, "dms", "raw/hr/emp/2024/05/28/20240528-195141380.csv"))
                .table
                .as_deref(),
            Some("emp")
        );
        assert_eq!(
            file(route(&c, "dms", "raw/hr/emp/LOAD00000001.csv")).kind,
            FileKind::Load
        );
        let e = route(&c, "dms", "raw/hr/emp/2024/05/20240528-195141380.csv").unwrap_err();
        assert_eq!(
            e.reason,
            "key `raw/hr/emp/2024/05/20240528-195141380.csv`: a CDC file in folders `2024/05`, which do not match date_partitioning (YyyyMmDd, Slash): \
             DMS writes CDC files in the table folder or its date folders; only full-load (LOAD…) \
             files sit in parallel-load partition folders"
        );
        let dp = &c.sources()[0].date_partitioning;
        let NotDateFolders {
            folders,
            sequence,
            delimiter,
        } = check_date_folders(&["2024", "05"], dp).unwrap_err();
        assert_eq!(
            (folders.as_str(), sequence, delimiter),
            (
                "2024/05",
                DatePartitionSequence::YyyyMmDd,
                DatePartitionDelimiter::Slash
            )
        );
        let c = cfg("    date_partitioning: { enabled: true, sequence: YYYYMMDDHH, delimiter: DASH }");
        assert!(route(&c, "dms", "raw/hr/emp/2024-05-28-13/20240528-195141380.csv").is_ok());
        let c = cfg("    date_partitioning: { enabled: true, sequence: DDMMYYYY, delimiter: NONE }");
        assert!(route(&c, "dms", "raw/hr/emp/28052024/20240528-195141380.csv").is_ok());
        // Not enabled: extra folders are a configuration mismatch, said plainly.
        let c = cfg("");
        let e = route(&c, "dms", "raw/hr/emp/2024/05/28/20240528-195141380.csv").unwrap_err();
        assert!(e.reason.contains("date_partitioning"), "{}", e.reason);
    }

    /// (kind, table, stem, load folder) of a key that must route.
    fn parts(c: &Validated, key: &str) -> (FileKind, String, String, Option<String>) {
        let f = file(route(c, "dms", key));
        (f.kind, f.table.unwrap_or_default(), f.stem, f.load_folder)
    }

    fn load(table: &str, stem: &str, folder: Option<&str>) -> (FileKind, String, String, Option<String>) {
        (FileKind::Load, table.into(), stem.into(), folder.map(str::to_string))
    }

    #[test]
    fn parallel_load_layouts() {
        for extra in [
            "",
            "    date_partitioning: { enabled: true, sequence: YYYYMMDD, delimiter: SLASH }",
            "    date_partitioning: { enabled: true, sequence: YYYYMMDD, delimiter: NONE }",
        ] {
            let c = cfg(extra);
            // partitions-auto, partitions-list, ranges with segment-names: one folder per
            // partition or segment, each with its own LOAD series from 00000001.
            for (key, want) in [
                (
                    "raw/hr/emp/p_2024_q1/LOAD00000001.csv",
                    load("emp", "LOAD00000001", Some("p_2024_q1")),
                ),
                (
                    "raw/hr/emp/p_2024_q2/LOAD00000001.csv",
                    load("emp", "LOAD00000001", Some("p_2024_q2")),
                ),
                (
                    "raw/hr/emp/custom_segment1/LOAD0000000A.parquet",
                    load("emp", "LOAD0000000A", Some("custom_segment1")),
                ),
                (
                    "raw/hr/emp/SYS_P1234/LOAD00000002.csv.gz",
                    load("emp", "LOAD00000002", Some("SYS_P1234")),
                ),
                // MongoDB/DocumentDB segmentation and ranges without segment-names.
                (
                    "raw/hr/emp/SEGMENT1_LOAD00000001.csv",
                    load("emp", "SEGMENT1_LOAD00000001", None),
                ),
                (
                    "raw/hr/emp/SEGMENT12_LOAD0000000A.csv.gz",
                    load("emp", "SEGMENT12_LOAD0000000A", None),
                ),
                (
                    "raw/hr/emp/seg/SEGMENT2_LOAD00000009.parquet",
                    load("emp", "SEGMENT2_LOAD00000009", Some("seg")),
                ),
                // The plain layout is unchanged.
                ("raw/hr/emp/LOAD00000001.csv", load("emp", "LOAD00000001", None)),
            ] {
                assert_eq!(parts(&c, key), want, "{key} with `{extra}`");
            }
            // The same name in two partitions is two files: their routes differ.
            assert_ne!(
                file(route(&c, "dms", "raw/hr/emp/a/LOAD00000001.csv")),
                file(route(&c, "dms", "raw/hr/emp/b/LOAD00000001.csv"))
            );
            // Whatever the date settings, a CDC file never sits in a partition folder.
            let e = route(&c, "dms", "raw/hr/emp/p_2024_q1/20240528-195141380.csv").unwrap_err();
            assert_eq!(e.kind, BadInputKind::UnroutableKey);
            assert!(
                e.reason.contains("raw/hr/emp/p_2024_q1/20240528-195141380.csv"),
                "{}",
                e.reason
            );
            assert!(e.reason.contains("date_partitioning"), "{}", e.reason);
        }
    }

    #[test]
    fn parallel_load_next_to_date_folders() {
        let c = cfg("    date_partitioning: { enabled: true, sequence: YYYYMMDD, delimiter: SLASH }");
        // CDC files in date folders are dated by their names, as before.
        let f = file(route(&c, "dms", "raw/hr/emp/2024/05/28/20240528-195141380.csv"));
        assert_eq!((f.kind, f.load_folder), (FileKind::Cdc, None));
        assert_eq!(f.time_digits.as_deref(), Some("202405281951413800"));
        // A LOAD file in date folders: those folders are its series.
        assert_eq!(
            parts(&c, "raw/hr/emp/2024/05/28/LOAD00000001.csv"),
            load("emp", "LOAD00000001", Some("2024/05/28"))
        );
        // Several folders that are not date folders: not a DMS layout.
        let e = route(&c, "dms", "raw/hr/emp/p1/sub/LOAD00000001.csv").unwrap_err();
        assert!(e.reason.contains("p1/sub"), "{}", e.reason);
        let c = cfg("    date_partitioning: { enabled: true, sequence: YYYYMMDD, delimiter: NONE }");
        let f = file(route(&c, "dms", "raw/hr/emp/20240528/20240528-195141380.csv"));
        assert_eq!((f.kind, f.load_folder), (FileKind::Cdc, None));
        let c = cfg("");
        let e = route(&c, "dms", "raw/hr/emp/p1/sub/LOAD00000001.csv").unwrap_err();
        assert!(e.reason.contains("one partition or segment folder"), "{}", e.reason);
    }

    #[test]
    fn load_names() {
        for yes in [
            "LOAD00000001",
            "LOAD0000000A",
            "SEGMENT1_LOAD00000001",
            "SEGMENTZ_LOAD00000001",
        ] {
            assert!(is_load_stem(yes), "{yes}");
        }
        for no in [
            "SEGMENT_LOAD00000001",
            "SEGMENT1-LOAD00000001",
            "SEGMENT1_L0AD1",
            "segment1_LOAD1",
            "20240528-195141380",
            "notes",
        ] {
            assert!(!is_load_stem(no), "{no}");
        }
        assert!(is_load_file("raw/hr/emp/p1/SEGMENT3_LOAD0000000A.csv.gz"));
        assert!(!is_load_file("raw/hr/emp/20240528-195141380.csv"));
        let c = cfg("");
        for bad in ["raw/hr/emp/SEGMENT_LOAD00000001.csv", "raw/hr/emp/p1/notes.txt"] {
            let e = route(&c, "dms", bad).unwrap_err();
            assert_eq!(e.kind, BadInputKind::UnroutableKey, "{bad}");
            assert!(e.reason.contains("SEGMENTn_LOAD"), "{}", e.reason);
        }
    }

    #[test]
    fn ignored_and_bad_keys() {
        let c = cfg("");
        assert_eq!(route(&c, "dms", "raw/hr/emp/").unwrap(), Route::Ignore("folder marker"));
        assert_eq!(
            route(&c, "nobody", "x/y/LOAD00000001.csv").unwrap(),
            Route::Ignore("not under any configured source")
        );
        assert_eq!(
            route(&c, "dms", "elsewhere/hr/emp/LOAD00000001.csv").unwrap(),
            Route::Ignore("not under any configured source")
        );
        for bad in [
            "raw/hr/emp/notes.txt",
            "raw/emp.csv",
            "raw/hr/../emp/LOAD00000001.csv",
            "raw/hr//emp/LOAD1.csv",
            "raw/hr/emp/2024-13-1.csv",
        ] {
            assert_eq!(
                route(&c, "dms", bad).unwrap_err().kind,
                BadInputKind::UnroutableKey,
                "{bad}"
            );
        }
    }

    #[test]
    fn name_time_to_micros() {
        let us = digits_to_micros("202405281951413801").unwrap();
        assert_eq!(us, 1_716_925_901_380_100);
        assert_eq!(digits_to_micros("202413281951413801"), None);
    }
}
