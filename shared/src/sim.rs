//! A DMS output simulator: a random history of inserts, updates, deletes and re-inserts over
//! several tables, rendered as the files DMS would write for it (LOAD then CDC; headerless CSV,
//! CSV with header, gzip, Parquet; with and without `AR_H_CHANGE_SEQ` and the timestamp column;
//! full and key-only delete images), together with the source tables' final state. Tables can
//! also live through a DMS task's lifecycle events (see [`Variant`]): reloads, truncates with
//! their removal events, local-time names across a daylight-saving fall-back, the sequence
//! column rule toggled, table and column renames, values updates did not log.
//!
//! Used by the convergence tests, the demo and the benchmarks.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use crate::changes::Sequence;
use crate::generation::{Anchor, SeqKind};
use crate::types::UTC;

/// A value in the simulator's tables, comparable across readers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Null,
    Int(i64),
    Str(String),
    /// Scaled by 100 (NUMERIC(12,2)).
    Dec(i128),
    Bool(bool),
    /// Microseconds since the epoch.
    Ts(i64),
}

impl Value {
    /// A canonical text form, the same one the Python reader prints.
    pub fn canonical(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Int(i) => i.to_string(),
            Value::Str(s) => s.clone(),
            Value::Dec(d) => {
                let sign = if *d < 0 { "-" } else { "" };
                format!("{sign}{}.{:02}", d.abs() / 100, d.abs() % 100)
            }
            Value::Bool(b) => b.to_string(),
            Value::Ts(t) => t.to_string(),
        }
    }
}

/// How one source's DMS task writes its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Headerless CSV, `TimestampColumnName`, an `AR_H_CHANGE_SEQ` column last, full delete
    /// images (MySQL), some files gzip-compressed.
    CsvSeq,
    /// CSV with a header line, no sequence column, key-only deletes (PostgreSQL), composite key.
    CsvHeader,
    /// Parquet with the timestamp and sequence columns, full delete images.
    Parquet,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::CsvSeq, Format::CsvHeader, Format::Parquet];

    fn source(self) -> &'static str {
        match self {
            Format::CsvSeq => "mysql",
            Format::CsvHeader => "pg",
            Format::Parquet => "oracle",
        }
    }
}

/// Knobs of a simulation.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    /// Tables per source.
    pub tables: usize,
    /// Distinct keys per table.
    pub keys: u32,
    /// CDC changes per table after the full load.
    pub changes: usize,
    /// Most changes in one CDC file.
    pub max_file_changes: usize,
    pub formats: Vec<Format>,
    /// Tables that depart from the plain case, each drawn at random: soft delete, partitioned
    /// by a column that changes (and may be NULL), a column added at the source mid-stream
    /// (CSV with header and Parquet), a full load taken while CDC was already running; and
    /// NULL in every non-key column, empty strings and keys, changes with equal commit times.
    /// Off by default so that the demo and the benchmarks stay as they are.
    pub variety: bool,
    /// With `variety`: some hard-delete tables are reloaded part way through (see
    /// [`Variant::reload`]). Needs files whose LastModified can be set
    /// ([`Simulation::write_files`]); an S3 endpoint stamps its own upload time.
    pub reloads: bool,
    /// With `variety`: some hard-delete tables are truncated at the source part way (see
    /// [`Variant::truncate`] and [`Simulation::removals`]). Needs settable LastModified: a
    /// removal is a truncate only once every file written before it is gone.
    pub truncates: bool,
    /// With `variety`: some sources name their CDC files and date folders in local time
    /// (`Europe/Berlin`), their histories crossing the autumn fall-back (see
    /// [`Variant::fall_back`]). Needs settable LastModified, which picks the instant inside the
    /// repeated hour.
    pub local_time: bool,
    /// With `variety`: some tables have a large text column `body` that updates do not always
    /// log (see [`Variant::unlogged`]).
    pub unlogged: bool,
    /// With `variety`: some tables are renamed at the source part way, some columns too (see
    /// [`Variant::renamed_table`], [`Variant::renamed_column`]).
    pub renames: bool,
    /// With `variety`: some Parquet tables lose the `AR_H_CHANGE_SEQ` column for a stretch of
    /// files (see [`Variant::seq_toggled`]).
    pub seq_toggles: bool,
    /// Some tables keep an SCD type 2 history (`history: { enabled: true }`, see
    /// [`Variant::history`]), to be compared with [`Simulation::history`].
    pub history: bool,
    /// Some tables write the Change Data Feed (`change_data_feed: true`, see
    /// [`Variant::change_feed`]).
    pub change_feed: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            seed: 1,
            tables: 1,
            keys: 20,
            changes: 60,
            max_file_changes: 12,
            formats: Format::ALL.to_vec(),
            variety: false,
            reloads: false,
            truncates: false,
            local_time: false,
            unlogged: false,
            renames: false,
            seq_toggles: false,
            history: false,
            change_feed: false,
        }
    }
}

/// One object DMS wrote.
#[derive(Debug, Clone)]
pub struct SimFile {
    pub key: String,
    pub bytes: Vec<u8>,
    /// When DMS wrote it (its LastModified), in microseconds since the epoch: a little after the
    /// time in a CDC file's name; before every CDC file for the first load; between the changes
    /// before and after a reload for a reload's LOAD files.
    pub written_micros: i64,
    /// 0 for the first half of a table's history (its full load and early CDC files), 1 for
    /// the rest: a test may deliver the halves apart, with maintenance in between.
    pub epoch: u8,
}

/// How a table of a simulation departs from the plain case.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Variant {
    /// `delete_mode: soft`: deleted rows stay, flagged.
    pub soft: bool,
    /// `partition_by: [active]`.
    pub partitioned: bool,
    /// The source gained a text column `note` part way through CDC; later files carry it.
    pub added_column: bool,
    /// The full load was read after this many CDC changes had been captured (0: before any).
    pub load_after: usize,
    /// A parallel full load: each key range in a partition folder of its own, every folder's
    /// series starting at `LOAD00000001`.
    pub parallel_load: bool,
    /// A table reload: DMS stopped capturing for one CDC file's worth of changes, then wrote
    /// a new snapshot as LOAD files again (same names, a later LastModified), then CDC went on.
    pub reload: bool,
    /// A source `TRUNCATE` part way: DMS removed every file of the table (the removal events are
    /// in [`Simulation::removals`]), then CDC went on with the rows inserted after it. The
    /// table follows removals (`truncates.follow_removals`).
    pub truncate: bool,
    /// The source names CDC files in local time and this table's names cross the autumn
    /// fall-back out of order: a file written later has a name that sorts before an older one's.
    pub fall_back: bool,
    /// The `AR_H_CHANGE_SEQ` add-column rule was removed for a stretch of CDC files, then added
    /// again (Parquet, whose files show the missing column).
    pub seq_toggled: bool,
    /// The source renamed the table part way (DMS Rename Table): later files are in the new
    /// name's folder, configured with `renamed_from`.
    pub renamed_table: bool,
    /// The source renamed the column `name` to `label` part way (DMS Rename Column; header CSV
    /// and Parquet, which name their columns), configured with `renamed_columns`.
    pub renamed_column: bool,
    /// The table has a large text column `body` that some updates do not log: `@NOSUP@`
    /// (`csv.no_sup_value`) in CSV, NULL in Parquet (`unlogged_when_null`). The source value
    /// did not change, so the table must keep the newest logged one.
    pub unlogged: bool,
    /// The table keeps an SCD type 2 history.
    pub history: bool,
    /// The table writes the Change Data Feed.
    pub change_feed: bool,
}

/// One version of a key in the source's history, as the files show it: what an SCD type 2
/// history of the table must hold (see [`Simulation::history`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SimVersion {
    /// The `_dms_seq` the decoders give the change; for a version closing the key at a floor,
    /// the floor's anchor. `None` for the closing version of a truncate, whose anchor is the
    /// removal event's time as dms2delta reads it (and rises with each removal it commits).
    pub seq: Option<String>,
    /// `I`, `U` or `D` (full-load and reload rows are `I`).
    pub op: char,
    /// The version's own time: its commit time as delivered (the timestamp column, else the CDC
    /// file's name time), else the time its sequence encodes (a header CSV reload's anchor);
    /// `None` for a first full-load row without a timestamp column, and for closing versions.
    pub micros: Option<i64>,
    /// The values as the file has them, in [`Simulation::columns`] order (without the soft-delete
    /// flag). Values at `unlogged` positions are not the version's.
    pub row: Vec<Value>,
    /// Positions of the columns the change did not log: the unlogged large value, the added
    /// column in a file written without it, every non-key column of a key-only delete image and
    /// of a closing version. Their values are the previous
    /// version's (NULL before the key's first).
    pub unlogged: Vec<usize>,
    /// The DMS object the change is in; `None` for a closing version.
    pub file: Option<String>,
    /// A version closing the key at a reload's or truncate's floor.
    pub floor: bool,
}

/// DMS removing one object of a truncated table.
#[derive(Debug, Clone)]
pub struct Removal {
    /// `namespace.schema.table`.
    pub table: String,
    /// The object removed.
    pub key: String,
    /// When S3 removed it (the removal event's time), in microseconds since the epoch: after
    /// every file of the table written before the truncate, before every one written after it.
    pub micros: i64,
    /// The half of the history the truncate falls in (see [`SimFile::epoch`]).
    pub epoch: u8,
}

/// A rendered history.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// The bucket every file is in.
    pub bucket: String,
    /// Files in the order DMS wrote them.
    pub files: Vec<SimFile>,
    /// The configuration for these sources; `{LAKE}`, `{STAGING}`, `{QUARANTINE}`, `{STORAGE}`
    /// and `{BUCKET}` are to be replaced (see [`Simulation::config`] and [`Simulation::config_on`]).
    pub config_template: String,
    /// `namespace.schema.table` -> the source table's final rows, sorted. A soft-delete table
    /// also holds its deleted keys, its last column being `_dms_deleted`.
    pub expected: BTreeMap<String, Vec<Vec<Value>>>,
    /// `namespace.schema.table` -> the columns `expected` holds, in order.
    pub columns: BTreeMap<String, Vec<String>>,
    /// `namespace.schema.table` -> how many of its leading columns form the key.
    pub key_columns: BTreeMap<String, usize>,
    /// `namespace.schema.table` -> key -> the `_dms_seq` the table must store for the key's
    /// surviving row: the sequence of its newest change, derived from the file and row that
    /// carry it (not read back from anything dms2delta wrote).
    pub expected_seq: BTreeMap<String, BTreeMap<Vec<Value>, String>>,
    /// `namespace.schema.table` -> how it departs from the plain case.
    pub variants: BTreeMap<String, Variant>,
    /// Soft-delete tables whose delete images carry only the key (PostgreSQL's default replica
    /// identity): the contract fixes their deleted rows' key, flag and sequence, not the other
    /// values (see the replication contract), so `expected` holds NULL there and a comparison
    /// must blank them first ([`Simulation::comparable`]).
    pub key_only_soft: std::collections::BTreeSet<String>,
    /// Objects DMS removed for source truncates, in the order it removed them. They are among
    /// `files` (written before the truncate): a test deletes them from the bucket before it
    /// delivers their removal events.
    pub removals: Vec<Removal>,
    /// `namespace.schema.table` -> key -> every version of the key in sequence order: each
    /// change DMS wrote to a file (full load, reload and CDC rows, several of a key in one file;
    /// not the changes a reload's gap never captured), and a closing version wherever a floor
    /// (reload or truncate) found the key live and a reload's snapshot did not hold it.
    pub history: BTreeMap<String, BTreeMap<Vec<Value>, Vec<SimVersion>>>,
}

/// The soft-delete flag column, as the tables name it.
pub const DELETED_FLAG: &str = "_dms_deleted";

impl Simulation {
    /// The configuration with its placeholders filled in, the bucket mapped to the local folder `data`.
    pub fn config(&self, lake: &str, staging: &str, quarantine: &str, data: &str) -> String {
        let storage = format!("storage:\n  buckets:\n    {}: {data}\n", self.bucket);
        self.config_on(lake, staging, quarantine, &self.bucket, &storage)
    }

    /// The configuration for files uploaded to `bucket`, with `storage` (a YAML `storage:` block,
    /// or nothing) saying how to reach it: the form tests against an S3 endpoint use.
    pub fn config_on(&self, lake: &str, staging: &str, quarantine: &str, bucket: &str, storage: &str) -> String {
        self.config_template
            .replace("{LAKE}", lake)
            .replace("{STAGING}", staging)
            .replace("{QUARANTINE}", quarantine)
            .replace("{STORAGE}", storage)
            .replace("{BUCKET}", bucket)
    }

    /// Writes every file below `dir` (standing for the bucket), in the order DMS wrote them,
    /// each with its LastModified.
    pub fn write_files(&self, dir: &std::path::Path) -> std::io::Result<()> {
        for f in &self.files {
            let p = dir.join(&f.key);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&p, &f.bytes)?;
            let written = std::time::UNIX_EPOCH + std::time::Duration::from_micros(f.written_micros.max(0) as u64);
            std::fs::File::options().write(true).open(&p)?.set_modified(written)?;
        }
        Ok(())
    }

    /// `rows` (read back from `table`, in `columns` order) with what the contract leaves open
    /// blanked: the non-key values of soft-deleted rows of key-only-image tables.
    pub fn comparable(&self, table: &str, mut rows: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
        if self.key_only_soft.contains(table) {
            let k = self.key_columns[table];
            for row in &mut rows {
                if row.last() == Some(&Value::Bool(true)) {
                    let n = row.len();
                    for v in &mut row[k..n - 1] {
                        *v = Value::Null;
                    }
                }
            }
            rows.sort();
        }
        rows
    }
}

#[derive(Debug, Clone)]
struct Change {
    op: char,
    row: Vec<Value>,
    micros: i64,
    seq: u64,
    /// An update that did not log the table's `body` column.
    unlogged: bool,
}

struct Shape {
    columns: Vec<(&'static str, &'static str)>,
    keys: usize,
}

fn shape(format: Format) -> Shape {
    let mut columns = vec![("id", "INT8")];
    let mut keys = 1;
    if format == Format::CsvHeader {
        columns.push(("region", "STRING"));
        keys = 2;
    }
    columns.extend([
        ("name", "STRING"),
        ("amount", "NUMERIC"),
        ("active", "BOOLEAN"),
        ("updated", "DATETIME"),
    ]);
    Shape { columns, keys }
}

const BASE_MICROS: i64 = 1_716_900_000_000_000; // 2024-05-28 12:40:00 UTC
const NAMES: [&str; 8] = [
    "Ann",
    "Bo, \"B\"",
    "Zoë",
    "multi\nline",
    "",
    "tab\there",
    "O'Neil",
    "日本",
];

/// The column a table gains part way through its history.
const ADDED: (&str, &str) = ("note", "STRING");

/// The large text column of a table whose updates do not always log it.
const BODY: (&str, &str) = ("body", "STRING");

/// What DMS writes for a value it did not log (`CsvNoSupValue`), as the simulated sources set it.
const NO_SUP: &str = "@NOSUP@";

/// The column renamed at the source, and its new name.
const RENAMED_COLUMN: (&str, &str) = ("name", "label");

/// The zone sources with local-time names use, and its 2024 autumn fall-back: at 01:00 UTC on
/// 27 October, 03:00 CEST became 02:00 CET, so local names 02:00-02:59 happened twice.
const LOCAL_ZONE: chrono_tz::Tz = chrono_tz::Europe::Berlin;
const FALL_BACK_MICROS: i64 = 1_729_990_800_000_000;

/// Generates a history and renders it.
pub fn simulate(opts: &SimOptions) -> Simulation {
    let mut rng = fastrand::Rng::with_seed(opts.seed);
    let bucket = "dms-sim".to_string();
    let mut files = Vec::new();
    let mut expected = BTreeMap::new();
    let mut columns = BTreeMap::new();
    let mut key_columns = BTreeMap::new();
    let mut expected_seq = BTreeMap::new();
    let mut variants = BTreeMap::new();
    let mut key_only_soft = std::collections::BTreeSet::new();
    let mut removals = Vec::new();
    let mut history = BTreeMap::new();
    let mut config = String::from("lake: {LAKE}\nstaging: {STAGING}\nquarantine: {QUARANTINE}\n{STORAGE}sources:\n");
    let mut seq_counter: u64 = 0;
    for format in &opts.formats {
        let source = format.source();
        let format_no = Format::ALL.iter().position(|f| f == format).unwrap_or(0) as u64;
        // From a stream of its own, so every other choice of a seed stays as it was.
        let zoned =
            opts.variety && opts.local_time && fastrand::Rng::with_seed(opts.seed ^ 0x7a0e ^ (format_no << 4)).bool();
        // CSV marks values DMS did not log; Parquet cannot (`unlogged_when_null` per table).
        let no_sup = opts.variety && opts.unlogged && *format != Format::Parquet;
        let _ = writeln!(
            config,
            "  - name: {source}\n    bucket: {{BUCKET}}\n    bucket_folder: dms/{source}"
        );
        if zoned {
            let _ = writeln!(
                config,
                "    date_partitioning: {{ enabled: true, timezone: {} }}",
                LOCAL_ZONE.name()
            );
        }
        match format {
            Format::CsvSeq => {
                let _ = writeln!(
                    config,
                    "    timestamp_column: dms_ts\n    sequence_column: AR_H_CHANGE_SEQ"
                );
                if no_sup {
                    let _ = writeln!(config, "    csv: {{ no_sup_value: \"{NO_SUP}\" }}");
                }
            }
            Format::CsvHeader if no_sup => {
                let _ = writeln!(config, "    csv: {{ header: true, no_sup_value: \"{NO_SUP}\" }}");
            }
            Format::CsvHeader => {
                let _ = writeln!(config, "    csv: {{ header: true }}");
            }
            Format::Parquet => {
                let _ = writeln!(
                    config,
                    "    timestamp_column: dms_ts\n    sequence_column: AR_H_CHANGE_SEQ"
                );
            }
        }
        let _ = writeln!(config, "    tables:");
        for t in 0..opts.tables {
            let mut sh = shape(*format);
            let table = format!("t{t}");
            let qualified = format!("{source}.app.{table}");
            let variant = if opts.variety {
                Variant {
                    soft: rng.u8(0..3) == 0,
                    partitioned: rng.u8(0..3) == 0,
                    added_column: *format != Format::CsvSeq && rng.u8(0..3) == 0,
                    load_after: if rng.u8(0..3) == 0 {
                        rng.usize(1..=opts.changes.max(1))
                    } else {
                        0
                    },
                    parallel_load: rng.u8(0..3) == 0,
                    ..Variant::default()
                }
            } else {
                Variant::default()
            };
            let mut variant = variant;
            // From a stream of its own, so every other choice of a seed stays as it was.
            variant.reload = opts.variety
                && opts.reloads
                && !variant.soft
                && variant.load_after == 0
                && fastrand::Rng::with_seed(opts.seed ^ 0x4e10ad ^ ((t as u64) << 8) ^ format.source().len() as u64)
                    .u8(0..3)
                    == 0;
            // The lifecycle events, from the table's own stream too; where each falls is drawn
            // once the history's files are cut.
            let mut life = fastrand::Rng::with_seed(opts.seed ^ 0x11fe ^ ((t as u64) << 8) ^ (format_no << 4));
            let draws = [
                life.u8(0..3),
                life.u8(0..2),
                life.u8(0..4),
                life.u8(0..4),
                life.u8(0..2),
            ];
            let plain_history = !variant.reload && variant.load_after == 0;
            variant.truncate = opts.variety && opts.truncates && !variant.soft && plain_history && draws[0] == 0;
            variant.seq_toggled =
                opts.variety && opts.seq_toggles && *format == Format::Parquet && !variant.reload && draws[1] == 0;
            variant.renamed_table = opts.variety && opts.renames && plain_history && !variant.truncate && draws[2] == 0;
            variant.renamed_column = opts.variety && opts.renames && *format != Format::CsvSeq && draws[3] == 0;
            variant.unlogged = opts.variety && opts.unlogged && draws[4] == 0;
            // The downstream options, from a stream of their own too.
            let mut downstream = fastrand::Rng::with_seed(opts.seed ^ 0xcdf5cd2 ^ ((t as u64) << 8) ^ (format_no << 4));
            variant.history = opts.history && downstream.bool();
            variant.change_feed = opts.change_feed && downstream.bool();
            let body_at = variant.unlogged.then_some(sh.columns.len());
            if variant.unlogged {
                sh.columns.push(BODY);
            }
            let keys: Vec<&str> = sh.columns[..sh.keys].iter().map(|c| c.0).collect();
            // The table's settings, written once the history says which lifecycle events it has.
            let mut entry = format!("        keys: [{}]\n", keys.join(", "));
            if variant.soft {
                entry.push_str("        delete_mode: soft\n");
            }
            if variant.partitioned {
                entry.push_str("        partition_by: [active]\n");
            }
            if variant.unlogged && *format == Format::Parquet {
                let _ = writeln!(entry, "        unlogged_when_null: [{}]", BODY.0);
            }
            if variant.history {
                entry.push_str("        history: { enabled: true }\n");
            }
            if variant.change_feed {
                entry.push_str("        change_data_feed: true\n");
            }
            entry.push_str("        columns:\n");
            for (n, ty) in &sh.columns {
                if *ty == "NUMERIC" {
                    let _ = writeln!(
                        entry,
                        "          - {{ name: {n}, type: NUMERIC, precision: 12, scale: 2 }}"
                    );
                } else {
                    let _ = writeln!(entry, "          - {{ name: {n}, type: {ty} }}");
                }
            }
            if *format == Format::CsvSeq {
                let _ = writeln!(entry, "          - {{ name: AR_H_CHANGE_SEQ, type: STRING }}");
            }
            // The added column is not configured: the files that carry it name it.
            let base_width = sh.columns.len();
            if variant.added_column {
                sh.columns.push(ADDED);
            }
            let width = sh.columns.len();
            let mut table_columns: Vec<String> = sh.columns.iter().map(|c| c.0.to_string()).collect();
            if variant.soft {
                table_columns.push(DELETED_FLAG.to_string());
            }
            columns.insert(qualified.clone(), table_columns);
            key_columns.insert(qualified.clone(), sh.keys);
            variants.insert(qualified.clone(), variant);
            if variant.soft && *format == Format::CsvHeader {
                key_only_soft.insert(qualified.clone());
            }

            // History: an initial state, then CDC changes; the full load is a snapshot taken
            // after `load_after` of them (DMS captures changes while it reads the table).
            let variety = opts.variety;
            let random_row = |rng: &mut fastrand::Rng, key: &[Value], micros: i64, noted: bool| -> Vec<Value> {
                let mut row = key.to_vec();
                let null = |rng: &mut fastrand::Rng| rng.u8(0..10) == 0;
                row.push(if null(rng) {
                    Value::Null
                } else if variety && rng.u8(0..8) == 0 {
                    Value::Str(String::new())
                } else {
                    Value::Str(format!("{}{}", NAMES[rng.usize(0..NAMES.len())], rng.u32(0..100)))
                });
                let nullable = |rng: &mut fastrand::Rng, v: Value| if variety && null(rng) { Value::Null } else { v };
                let amount = Value::Dec(rng.i128(-1_000_000..10_000_000));
                row.push(nullable(rng, amount));
                let active = Value::Bool(rng.bool());
                row.push(nullable(rng, active));
                let updated = Value::Ts(micros - rng.i64(0..1_000_000_000));
                row.push(nullable(rng, updated));
                if body_at.is_some() {
                    // Large, like the TOAST or LOB values a source leaves out of its log.
                    let words = "lorem ipsum dolor ".repeat(rng.usize(8..80));
                    row.push(Value::Str(format!("{words}{}", rng.u32(0..100_000))));
                }
                // A full delete image whose values are all NULL would look key-only.
                if row[key.len()..].iter().all(|v| *v == Value::Null) {
                    row[key.len() + 1] = Value::Dec(0);
                }
                if noted {
                    row.push(if rng.u8(0..4) == 0 {
                        Value::Null
                    } else {
                        Value::Str(format!("n{}", rng.u32(0..1000)))
                    });
                } else if width > base_width {
                    row.push(Value::Null);
                }
                row
            };
            let key_of = |k: u32| -> Vec<Value> {
                let mut key = vec![Value::Int(k as i64)];
                if sh.keys == 2 {
                    let regions: &[&str] = if variety {
                        &["eu", "us", ""]
                    } else {
                        &["eu", "us", "ap"]
                    };
                    key.push(Value::Str(regions[k as usize % 3].to_string()));
                }
                key
            };
            let mut state: BTreeMap<Vec<Value>, Vec<Value>> = BTreeMap::new();
            let start = rng.i64(0..1_000_000);
            // A zoned source's history starts shortly before the fall-back, so its CDC files'
            // local names cross it.
            let mut micros = if zoned {
                FALL_BACK_MICROS - 50_000 - start % 600_000
            } else {
                BASE_MICROS + start
            };
            for k in 0..opts.keys {
                if rng.bool() {
                    let key = key_of(k);
                    let row = random_row(&mut rng, &key, micros, false);
                    state.insert(key, row);
                }
            }
            let load_micros = micros;
            // The CDC files are cut first, so the column can appear at a file boundary.
            let mut cuts = Vec::new();
            let mut i = 0;
            while i < opts.changes {
                let n = rng.usize(1..=opts.max_file_changes.max(1)).min(opts.changes - i);
                cuts.push(i..i + n);
                i += n;
            }
            let noted_from = if variant.added_column && !cuts.is_empty() {
                cuts[rng.usize(0..cuts.len())].start
            } else {
                usize::MAX
            };
            // A reload: the changes of one CDC file in the middle were never captured (DMS was
            // stopped), then DMS read the table again; later changes come a minute after.
            let gap = (variant.reload && cuts.len() >= 3)
                .then(|| fastrand::Rng::with_seed(opts.seed ^ 0x9a9 ^ t as u64).usize(1..cuts.len() - 1));
            variant.reload = gap.is_some();
            // A truncate before file `trunc`: the files before it are removed, later ones stay.
            let trunc = (variant.truncate && cuts.len() >= 2).then(|| life.usize(1..cuts.len()));
            variant.truncate = trunc.is_some();
            // Files `a..b` lack the sequence column, with sequenced files before and after.
            let toggled = (variant.seq_toggled && cuts.len() >= 3).then(|| {
                let a = life.usize(1..cuts.len() - 1);
                (a, life.usize(a + 1..cuts.len()))
            });
            variant.seq_toggled = toggled.is_some();
            // The new table name from file `renamed_at` on, the new column name from file
            // `label_from` on (after the full load was read: the load carries the old names).
            let renamed_at = (variant.renamed_table && cuts.len() >= 2).then(|| life.usize(1..cuts.len()));
            variant.renamed_table = renamed_at.is_some();
            let after_load = cuts
                .iter()
                .position(|c| c.start >= variant.load_after)
                .unwrap_or(cuts.len())
                .max(1);
            let label_from =
                (variant.renamed_column && after_load < cuts.len()).then(|| life.usize(after_load..cuts.len()));
            variant.renamed_column = label_from.is_some();
            let cut_starting = |n: usize| cuts.iter().position(|c| c.start == n);
            let mut reload_snapshot: Option<BTreeMap<Vec<Value>, Vec<Value>>> = None;
            let mut reload_micros = 0;
            let mut snapshot = (variant.load_after == 0).then(|| state.clone());
            let mut deleted: BTreeMap<Vec<Value>, Vec<Value>> = BTreeMap::new();
            let mut cdc = Vec::new();
            for n in 0..opts.changes {
                if gap.is_some_and(|g| n == cuts[g + 1].start) {
                    micros += 60_000_000;
                }
                let starts = cut_starting(n);
                if trunc.is_some() && starts == trunc {
                    // TRUNCATE: the table is empty; DMS removes its files within seconds of the
                    // last one and captures the next changes a minute later.
                    micros += 60_000_000;
                    state.clear();
                    deleted.clear();
                }
                if let (Some((a, b)), Some(j)) = (toggled, starts) {
                    // A file without the sequence column holds the place of its name's
                    // hundredth of a second: the next file's changes come in a later one.
                    if j > a && j <= b {
                        micros += 50_000;
                    }
                }
                // Several changes of one transaction share its commit time.
                if !(variety && rng.u8(0..5) == 0) {
                    micros += 1_000 + rng.i64(0..50_000);
                }
                seq_counter += 1;
                let noted = n >= noted_from;
                let mut k = rng.u32(0..opts.keys.max(1));
                // After a truncate, changes touch only the lower half of the keys: the rows of
                // the upper half that the table held before it must go, whatever comes after.
                if trunc.is_some_and(|c| n >= cuts[c].start) {
                    k /= 2;
                }
                let key = key_of(k);
                let change = match state.get(&key) {
                    Some(_) if rng.u8(0..10) < 3 => {
                        let old = state.remove(&key).unwrap_or_default();
                        let row = if *format == Format::CsvHeader {
                            // PostgreSQL's default replica identity: only the key is logged.
                            let mut r = key.clone();
                            r.resize(width, Value::Null);
                            r
                        } else {
                            let mut r = old;
                            // The image of a delete after the column appeared has the column.
                            if !noted && width > base_width {
                                r[base_width] = Value::Null;
                            }
                            r
                        };
                        deleted.insert(key.clone(), row.clone());
                        Change {
                            op: 'D',
                            row,
                            micros,
                            seq: seq_counter,
                            unlogged: false,
                        }
                    }
                    found => {
                        let op = if found.is_some() { 'U' } else { 'I' };
                        let old_body = body_at.zip(found).map(|(b, old)| old[b].clone());
                        let mut row = random_row(&mut rng, &key, micros, noted);
                        // An update that left the large value alone need not log it: the
                        // source's value is still the one the row had.
                        let unlogged = match (body_at, old_body) {
                            (Some(b), Some(old)) if life.bool() => {
                                row[b] = old;
                                true
                            }
                            _ => false,
                        };
                        state.insert(key.clone(), row.clone());
                        deleted.remove(&key);
                        Change {
                            op,
                            row,
                            micros,
                            seq: seq_counter,
                            unlogged,
                        }
                    }
                };
                cdc.push(change);
                if n + 1 == variant.load_after {
                    snapshot = Some(state.clone());
                }
                if gap.is_some_and(|g| n + 1 == cuts[g].end) {
                    reload_snapshot = Some(state.clone());
                    reload_micros = micros + 30_000_000;
                }
            }
            let snapshot = snapshot.unwrap_or_else(|| state.clone());
            let as_load = |snapshot: BTreeMap<Vec<Value>, Vec<Value>>, micros: i64| -> Vec<Change> {
                snapshot
                    .into_values()
                    .map(|row| Change {
                        op: 'I',
                        row,
                        micros,
                        seq: 0,
                        unlogged: false,
                    })
                    .collect()
            };
            let load = as_load(snapshot, load_micros);
            let reload = reload_snapshot.map(|s| as_load(s, reload_micros));
            let mut rows: Vec<Vec<Value>> = state.into_values().collect();
            if variant.soft {
                for r in &mut rows {
                    r.push(Value::Bool(false));
                }
                for (_, mut image) in deleted {
                    if *format == Format::CsvHeader {
                        image.iter_mut().skip(sh.keys).for_each(|v| *v = Value::Null);
                    }
                    image.push(Value::Bool(true));
                    rows.push(image);
                }
            }
            rows.sort();
            expected.insert(qualified.clone(), rows);

            // Rendering.
            let folder = format!("dms/{source}/app/{table}");
            let parts_of = |load: &[Change], rng: &mut fastrand::Rng| -> Vec<std::ops::Range<usize>> {
                let mut parts: Vec<std::ops::Range<usize>> = if variant.parallel_load {
                    // Key ranges (the snapshot is in key order), as partitions-auto splits a table.
                    let n = load.len().div_ceil(3).max(1);
                    (0..load.len()).step_by(n).map(|a| a..(a + n).min(load.len())).collect()
                } else {
                    let split = if load.len() > 3 && rng.bool() {
                        load.len() / 2
                    } else {
                        load.len()
                    };
                    vec![0..split, split..load.len()]
                };
                // An empty source table gets no full-load file (an empty headerless CSV would
                // be a zero-byte object, which decode rightly skips).
                parts.retain(|p| !p.is_empty());
                parts
            };
            let load_parts = parts_of(&load, &mut rng);
            // Files in the order DMS writes them, so the last change seen per key is its newest.
            let mut seqs: BTreeMap<Vec<Value>, String> = BTreeMap::new();
            let mut versions: BTreeMap<Vec<Value>, Vec<SimVersion>> = BTreeMap::new();
            let soft = variant.soft;
            let n_keys = sh.keys;
            // `time`: the version time of the file's rows where the format has no timestamp
            // column (header CSV: a CDC file's name time, a reload's anchor time).
            let note = |seqs: &mut BTreeMap<Vec<Value>, String>,
                        versions: &mut BTreeMap<Vec<Value>, Vec<SimVersion>>,
                        stem: &str,
                        changes: &[Change],
                        cdc: bool,
                        anchor: Option<&Anchor>,
                        sequenced: bool,
                        time: Option<i64>,
                        lacks_added: bool| {
                for (i, c) in changes.iter().enumerate() {
                    let key = c.row[..sh.keys].to_vec();
                    let seq = stored_seq(*format, stem, i as u64 + 1, c, cdc, anchor, sequenced);
                    let unlogged: Vec<usize> = if c.op == 'D' && c.row[n_keys..].iter().all(|v| *v == Value::Null) {
                        (n_keys..c.row.len()).collect()
                    } else {
                        // A file without the added column says nothing about it: the contract
                        // treats it as not logged (the previous version's value in sequence
                        // order, which during a full load's overlap is the newer load row's).
                        let added = (lacks_added && width > base_width).then_some(base_width);
                        body_at.filter(|_| c.unlogged).into_iter().chain(added).collect()
                    };
                    versions.entry(key.clone()).or_default().push(SimVersion {
                        seq: Some(seq.clone()),
                        op: c.op,
                        micros: if *format == Format::CsvHeader {
                            time
                        } else {
                            Some(c.micros)
                        },
                        row: c.row.clone(),
                        unlogged,
                        file: None,
                        floor: false,
                    });
                    if c.op == 'D' && !soft {
                        seqs.remove(&key);
                    } else {
                        seqs.insert(key, seq);
                    }
                }
            };
            // The versions a floor closes: those of the keys live below it.
            let close =
                |versions: &mut BTreeMap<Vec<Value>, Vec<SimVersion>>, live: Vec<Vec<Value>>, seq: Option<String>| {
                    for key in live {
                        let mut row = key.clone();
                        row.resize(width, Value::Null);
                        versions.entry(key).or_default().push(SimVersion {
                            seq: seq.clone(),
                            op: 'D',
                            micros: None,
                            row,
                            unlogged: (n_keys..width).collect(),
                            file: None,
                            floor: true,
                        });
                    }
                };
            // Names the object of the versions noted last (its extension is known once rendered).
            // A reload's LOAD file may replace an object of the first load (same name): the
            // first load's rows in it are never read, so they are in no history.
            let named = |versions: &mut BTreeMap<Vec<Value>, Vec<SimVersion>>, key: &str| {
                for vs in versions.values_mut() {
                    vs.retain(|v| v.file.as_deref() != Some(key));
                    for v in vs.iter_mut() {
                        if v.file.is_none() && !v.floor {
                            v.file = Some(key.to_string());
                        }
                    }
                }
            };
            let load_files = |seqs: &mut BTreeMap<Vec<Value>, String>,
                              versions: &mut BTreeMap<Vec<Value>, Vec<SimVersion>>,
                              time: Option<i64>,
                              load: &[Change],
                              parts: &[std::ops::Range<usize>],
                              with_note_column: bool,
                              anchor: Option<&Anchor>,
                              written_micros: i64,
                              epoch: u8,
                              rng: &mut fastrand::Rng|
             -> Vec<SimFile> {
                let mut out = Vec::new();
                for (i, range) in parts.iter().enumerate() {
                    let part = &load[range.clone()];
                    let (file_folder, name, series) = if variant.parallel_load {
                        let p = format!("part{i}");
                        (
                            format!("{folder}/{p}"),
                            "LOAD00000001".to_string(),
                            format!("{p}/LOAD00000001"),
                        )
                    } else {
                        let name = format!("LOAD{:08X}", i + 1);
                        (folder.clone(), name.clone(), name)
                    };
                    note(
                        seqs,
                        versions,
                        &series,
                        part,
                        false,
                        anchor,
                        true,
                        time,
                        !with_note_column,
                    );
                    let w = if with_note_column { width } else { base_width };
                    let file = render(
                        *format,
                        &format!("{file_folder}/{name}"),
                        &sh.columns[..w],
                        part,
                        false,
                        true,
                        rng,
                    );
                    named(versions, &file.key);
                    out.push(SimFile {
                        epoch,
                        written_micros,
                        ..file
                    });
                }
                out
            };
            // The load carries the added column if the column existed when DMS read the table.
            // It is written before DMS names any CDC file of the table.
            let table_files = files.len();
            files.extend(load_files(
                &mut seqs,
                &mut versions,
                None,
                &load,
                &load_parts,
                noted_from < variant.load_after,
                None,
                load_micros - 1_000_000,
                0,
                &mut rng,
            ));
            let mut last_stem = 0;
            let mut last_rendered: Option<String> = None;
            // The name time of that file.
            let mut last_stem_micros: Option<i64> = None;
            // The newest AR_H_CHANGE_SEQ of that file, where the format writes one.
            let mut last_rendered_seq: Option<String> = None;
            let mut last_local_name: Option<String> = None;
            let renamed_folder = format!("dms/{source}/app/{table}_v2");
            for (n, cut) in cuts.iter().enumerate() {
                let chunk = &cdc[cut.clone()];
                let last = chunk.last().map(|c| c.micros).unwrap_or(micros);
                // DMS names a file by when it wrote it: never two files with one name.
                let at = (last + 1_000).max(last_stem + 1_000);
                last_stem = at;
                let stem = file_time(at);
                let epoch = u8::from(n >= cuts.len().div_ceil(2));
                if trunc == Some(n) {
                    // DMS removes every file of the table, a few seconds after writing the
                    // last, in the order it wrote them; what the table held is gone.
                    let written = &files[table_files..];
                    let last_written = written.iter().map(|f| f.written_micros).max().unwrap_or(at);
                    for (i, f) in written.iter().enumerate() {
                        removals.push(Removal {
                            table: qualified.clone(),
                            key: f.key.clone(),
                            micros: last_written + 5_000_000 + i as i64 * 37_000,
                            epoch,
                        });
                    }
                    close(&mut versions, seqs.keys().cloned().collect(), None);
                    seqs.clear();
                }
                if gap == Some(n) {
                    // Never captured: no file. Then the reload's snapshot, anchored just after
                    // the newest CDC file written before it.
                    let (Some(reload), Some(before)) = (&reload, &last_rendered) else {
                        continue;
                    };
                    let digits: String = before.chars().filter(char::is_ascii_digit).chain(['0']).collect();
                    let kind = if *format == Format::CsvHeader {
                        SeqKind::FileName
                    } else {
                        SeqKind::ChangeSeq
                    };
                    // Ordered by AR_H_CHANGE_SEQ, a reload is anchored just after the newest
                    // change of that file (what decode reads from it).
                    let exact = match kind {
                        SeqKind::ChangeSeq => last_rendered_seq.as_deref(),
                        SeqKind::FileName => None,
                    };
                    let Some(anchor) = Anchor::after(kind, exact.unwrap_or(&digits)) else {
                        continue;
                    };
                    let snap: std::collections::BTreeSet<Vec<Value>> =
                        reload.iter().map(|c| c.row[..sh.keys].to_vec()).collect();
                    // What the snapshot lacks is gone once the reload's load is over.
                    let gone: Vec<Vec<Value>> = seqs.keys().filter(|k| !snap.contains(*k)).cloned().collect();
                    close(&mut versions, gone, Some(anchor.as_str().to_string()));
                    seqs.retain(|k, _| snap.contains(k));
                    let parts = parts_of(reload, &mut rng);
                    // Header CSV has no timestamp column: the rows' time is the anchor's.
                    let anchor_time = last_stem_micros.map(|m| m - m.rem_euclid(1_000));
                    files.extend(load_files(
                        &mut seqs,
                        &mut versions,
                        anchor_time,
                        reload,
                        &parts,
                        noted_from < cut.end,
                        Some(&anchor),
                        reload_micros,
                        epoch,
                        &mut rng,
                    ));
                    continue;
                }
                let sequenced = !toggled.is_some_and(|(a, b)| (a..b).contains(&n));
                // A file's name time, to the millisecond.
                let name_time = Some(at - at.rem_euclid(1_000));
                let w = if cut.start >= noted_from { width } else { base_width };
                note(
                    &mut seqs,
                    &mut versions,
                    &stem,
                    chunk,
                    true,
                    None,
                    sequenced,
                    name_time,
                    w < width,
                );
                let mut file_columns = sh.columns[..w].to_vec();
                if label_from.is_some_and(|r| n >= r) {
                    for c in &mut file_columns {
                        if c.0 == RENAMED_COLUMN.0 {
                            c.0 = RENAMED_COLUMN.1;
                        }
                    }
                }
                let table_folder = if renamed_at.is_some_and(|r| n >= r) {
                    &renamed_folder
                } else {
                    &folder
                };
                // DatePartitionEnabled with a zone: date folders and names in local time.
                let (file_folder, name) = if zoned {
                    let local = chrono::DateTime::from_timestamp_micros(at)
                        .unwrap_or_default()
                        .with_timezone(&LOCAL_ZONE)
                        .naive_local();
                    let name = local.format("%Y%m%d-%H%M%S%3f").to_string();
                    if last_local_name.as_ref().is_some_and(|before| name < *before) {
                        variant.fall_back = true;
                    }
                    last_local_name = Some(name.clone());
                    (format!("{table_folder}/{}", local.format("%Y/%m/%d")), name)
                } else {
                    (table_folder.clone(), stem.clone())
                };
                // What DMS writes where the update did not log the large value.
                let shown: Vec<Change> = chunk
                    .iter()
                    .map(|c| {
                        let mut c = c.clone();
                        if let (true, Some(b)) = (c.unlogged, body_at) {
                            c.row[b] = match format {
                                Format::Parquet => Value::Null,
                                Format::CsvSeq | Format::CsvHeader => Value::Str(NO_SUP.into()),
                            };
                        }
                        c
                    })
                    .collect();
                let file = render(
                    *format,
                    &format!("{file_folder}/{name}"),
                    &file_columns,
                    &shown,
                    true,
                    sequenced,
                    &mut rng,
                );
                named(&mut versions, &file.key);
                // Uploaded a moment after DMS named it.
                files.push(SimFile {
                    epoch,
                    written_micros: at + 200_000,
                    ..file
                });
                last_rendered = Some(stem);
                last_stem_micros = Some(at);
                last_rendered_seq = chunk.iter().map(change_seq).max();
            }
            expected_seq.insert(qualified.clone(), seqs);
            // A floor closes only a key it finds live: not one whose versions were all in an
            // object a reload replaced.
            for vs in versions.values_mut() {
                let mut live = false;
                vs.retain(|v| {
                    let keep = !v.floor || live;
                    live = keep && v.op != 'D';
                    keep
                });
            }
            versions.retain(|_, vs| !vs.is_empty());
            history.insert(qualified.clone(), versions);
            variants.insert(qualified.clone(), variant);
            if variant.truncate {
                entry.push_str("        truncates: { follow_removals: true }\n");
            }
            if variant.renamed_column {
                let _ = writeln!(
                    entry,
                    "        renamed_columns: {{ {}: {} }}",
                    RENAMED_COLUMN.1, RENAMED_COLUMN.0
                );
            }
            let _ = write!(config, "      - schema: app\n        table: {table}\n{entry}");
            if variant.renamed_table {
                let _ = write!(
                    config,
                    "      - schema: app\n        table: {table}_v2\n        renamed_from: {{ schema: app, table: {table} }}\n{entry}"
                );
            }
        }
    }
    Simulation {
        bucket,
        files,
        config_template: config,
        expected,
        columns,
        key_columns,
        expected_seq,
        variants,
        key_only_soft,
        removals,
        history,
    }
}

fn civil(micros: i64) -> chrono::NaiveDateTime {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .naive_utc()
}

/// `YYYYMMDD-HHMMSSmmm` of a UTC time.
fn file_time(micros: i64) -> String {
    civil(micros).format("%Y%m%d-%H%M%S%3f").to_string()
}

fn ts_text(micros: i64) -> String {
    civil(micros).format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

fn change_seq(c: &Change) -> String {
    let t = civil(c.micros).format("%Y%m%d%H%M%S").to_string();
    let hundredths = (c.micros.rem_euclid(1_000_000)) / 10_000;
    format!("{t}{hundredths:02}{:019}", c.seq)
}

/// The `_dms_seq` the decoders give row `row` (counted from 1, a CSV header not counted) of the
/// file named `stem` (its UTC name, whatever zone DMS named it in): the `AR_H_CHANGE_SEQ` value
/// where the file has one for CDC rows (`sequenced`), else the full-load file's name, or the CDC
/// file's name time, and the row.
fn stored_seq(
    format: Format,
    stem: &str,
    row: u64,
    c: &Change,
    cdc: bool,
    anchor: Option<&Anchor>,
    sequenced: bool,
) -> String {
    let mut out = String::new();
    // `YYYYMMDD-HHMMSSmmm`: its 17 digits, padded to 18.
    let digits = || -> String { stem.chars().filter(char::is_ascii_digit).chain(['0']).collect() };
    match (format, cdc) {
        (Format::CsvSeq | Format::Parquet, true) if sequenced => {
            // `change_seq` renders 35 digits, always a valid sequence.
            let _ = Sequence::change_seq(&mut out, &change_seq(c));
        }
        // A file without the column, in a table ordered by it: its name's place in that order.
        (Format::CsvSeq | Format::Parquet, true) => Sequence::file_for(&mut out, &digits(), row, true),
        (Format::CsvHeader, true) => Sequence::file(&mut out, &digits(), row),
        // A reload's rows: just above its anchor.
        (_, false) => Sequence::load_in(&mut out, anchor, None, stem, row),
    }
    out
}

/// One file of `changes`, with the first `columns.len()` values of each row, at `path` (its
/// key without the extension).
fn render(
    format: Format,
    path: &str,
    columns: &[(&str, &str)],
    changes: &[Change],
    cdc: bool,
    sequenced: bool,
    rng: &mut fastrand::Rng,
) -> SimFile {
    match format {
        Format::Parquet => SimFile {
            key: format!("{path}.parquet"),
            bytes: parquet_file(columns, changes, cdc, sequenced),
            epoch: 0,
            written_micros: 0,
        },
        Format::CsvSeq | Format::CsvHeader => {
            let mut out = String::new();
            if format == Format::CsvHeader {
                let mut h: Vec<&str> = Vec::new();
                if cdc {
                    h.push("Op");
                }
                h.extend(columns.iter().map(|c| c.0));
                out.push_str(&h.join(","));
                out.push('\n');
            }
            for c in changes {
                let mut fields: Vec<String> = Vec::new();
                if cdc {
                    fields.push(c.op.to_string());
                }
                if format == Format::CsvSeq {
                    fields.push(ts_text(c.micros));
                }
                for v in &c.row[..columns.len()] {
                    fields.push(csv_text(v, format == Format::CsvHeader));
                }
                if format == Format::CsvSeq {
                    fields.push(if cdc { change_seq(c) } else { String::new() });
                }
                out.push_str(&fields.join(","));
                out.push('\n');
            }
            if format == Format::CsvSeq && rng.bool() {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                let _ = gz.write_all(out.as_bytes());
                SimFile {
                    key: format!("{path}.csv.gz"),
                    bytes: gz.finish().unwrap_or_default(),
                    epoch: 0,
                    written_micros: 0,
                }
            } else {
                SimFile {
                    key: format!("{path}.csv"),
                    bytes: out.into_bytes(),
                    epoch: 0,
                    written_micros: 0,
                }
            }
        }
    }
}

fn csv_text(v: &Value, pg_bools: bool) -> String {
    let raw = match v {
        Value::Null => return String::new(),
        Value::Str(s) if s.is_empty() => return "\"\"".into(),
        Value::Bool(b) if pg_bools => (if *b { "t" } else { "f" }).to_string(),
        Value::Ts(t) => ts_text(*t),
        other => other.canonical(),
    };
    if raw.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", raw.replace('"', "\"\""))
    } else {
        raw
    }
}

/// Without `sequenced`, the file lacks the `AR_H_CHANGE_SEQ` column (the rule removed).
fn parquet_file(columns: &[(&str, &str)], changes: &[Change], cdc: bool, sequenced: bool) -> Vec<u8> {
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    if cdc {
        fields.push(Field::new("Op", DataType::Utf8, true));
        cols.push(Arc::new(StringArray::from_iter_values(
            changes.iter().map(|c| c.op.to_string()),
        )));
    }
    fields.push(Field::new("dms_ts", DataType::Utf8, true));
    cols.push(Arc::new(StringArray::from_iter_values(
        changes.iter().map(|c| ts_text(c.micros)),
    )));
    for (i, (name, ty)) in columns.iter().enumerate() {
        let vals = changes.iter().map(|c| &c.row[i]);
        let (dt, arr): (DataType, ArrayRef) = match *ty {
            "INT8" => (DataType::Int64, Arc::new(vals.map(as_int).collect::<Int64Array>())),
            "NUMERIC" => (
                DataType::Decimal128(12, 2),
                Arc::new(
                    vals.map(|v| match v {
                        Value::Dec(d) => Some(*d),
                        _ => None,
                    })
                    .collect::<Decimal128Array>()
                    .with_precision_and_scale(12, 2)
                    .unwrap_or_else(|_| Decimal128Array::from(Vec::<i128>::new())),
                ),
            ),
            "BOOLEAN" => (
                DataType::Boolean,
                Arc::new(
                    vals.map(|v| match v {
                        Value::Bool(b) => Some(*b),
                        _ => None,
                    })
                    .collect::<BooleanArray>(),
                ),
            ),
            // A MySQL DATETIME as DMS stores it: milliseconds would lose our micros, so micros.
            "DATETIME" => (
                DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
                Arc::new(
                    vals.map(|v| match v {
                        Value::Ts(t) => Some(*t),
                        _ => None,
                    })
                    .collect::<TimestampMicrosecondArray>()
                    .with_timezone(UTC),
                ),
            ),
            _ => (
                DataType::Utf8,
                Arc::new(
                    vals.map(|v| match v {
                        Value::Str(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect::<StringArray>(),
                ),
            ),
        };
        fields.push(Field::new(*name, dt, true));
        cols.push(arr);
    }
    if sequenced {
        fields.push(Field::new("AR_H_CHANGE_SEQ", DataType::Utf8, true));
        cols.push(Arc::new(StringArray::from_iter_values(changes.iter().map(|c| {
            if cdc {
                change_seq(c)
            } else {
                String::new()
            }
        }))));
    }
    let schema = Arc::new(Schema::new(fields));
    let mut buf = Vec::new();
    if let Ok(batch) = RecordBatch::try_new(schema.clone(), cols) {
        if let Ok(mut w) = parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None) {
            let _ = w.write(&batch);
            let _ = w.close();
        }
    }
    buf
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

/// Reads rows of `columns` out of record batches (a Delta table read back), sorted.
pub fn rows_of(batches: &[RecordBatch], columns: &[String]) -> Result<Vec<Vec<Value>>, String> {
    let mut out = Vec::new();
    for b in batches {
        let idx: Vec<usize> = columns
            .iter()
            .map(|c| b.schema().index_of(c).map_err(|_| format!("column `{c}` missing")))
            .collect::<Result<_, _>>()?;
        for r in 0..b.num_rows() {
            let mut row = Vec::with_capacity(idx.len());
            for &i in &idx {
                let a = b.column(i);
                row.push(if a.is_null(r) {
                    Value::Null
                } else {
                    match a.data_type() {
                        DataType::Int64 => Value::Int(a.as_primitive::<arrow::datatypes::Int64Type>().value(r)),
                        DataType::Int32 => Value::Int(a.as_primitive::<arrow::datatypes::Int32Type>().value(r) as i64),
                        DataType::Utf8 => Value::Str(a.as_string::<i32>().value(r).to_string()),
                        DataType::Utf8View => Value::Str(a.as_string_view().value(r).to_string()),
                        DataType::LargeUtf8 => Value::Str(a.as_string::<i64>().value(r).to_string()),
                        DataType::Decimal128(_, _) => {
                            Value::Dec(a.as_primitive::<arrow::datatypes::Decimal128Type>().value(r))
                        }
                        DataType::Boolean => Value::Bool(a.as_boolean().value(r)),
                        DataType::Timestamp(TimeUnit::Microsecond, _) => {
                            Value::Ts(a.as_primitive::<arrow::datatypes::TimestampMicrosecondType>().value(r))
                        }
                        other => return Err(format!("unexpected type {other}")),
                    }
                });
            }
            out.push(row);
        }
    }
    out.sort();
    Ok(out)
}

/// Line-by-line differences, for readable test failures.
pub fn diff(expected: &[Vec<Value>], actual: &[Vec<Value>]) -> String {
    let e: HashMap<&Vec<Value>, usize> = expected.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r).or_default() += 1;
        m
    });
    let a: HashMap<&Vec<Value>, usize> = actual.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r).or_default() += 1;
        m
    });
    let mut out = String::new();
    for (r, n) in &e {
        if a.get(r) != Some(n) {
            let _ = writeln!(out, "missing: {r:?} (x{n}, have {})", a.get(r).copied().unwrap_or(0));
        }
    }
    for (r, n) in &a {
        if !e.contains_key(r) {
            let _ = writeln!(out, "extra:   {r:?} (x{n})");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn simulation_is_deterministic_and_configures_cleanly() {
        let a = simulate(&SimOptions::default());
        let b = simulate(&SimOptions::default());
        assert_eq!(a.files.len(), b.files.len());
        assert_eq!(a.expected, b.expected);
        let cfg = a.config("/l", "/s", "/q", "/d");
        Config::from_text(&cfg).unwrap();
        assert!(a.files.iter().any(|f| f.key.ends_with(".parquet")));
        assert!(a.files.iter().any(|f| f.key.contains("/LOAD00000001")));
        assert!(a.files.iter().any(|f| f.key.ends_with(".csv")));
    }

    #[test]
    fn every_surviving_row_has_its_expected_sequence() {
        for format in Format::ALL {
            let sim = simulate(&SimOptions {
                tables: 2,
                formats: vec![format],
                ..SimOptions::default()
            });
            for (name, rows) in &sim.expected {
                let seqs = &sim.expected_seq[name];
                let k = sim.key_columns[name];
                let keys: Vec<Vec<Value>> = rows.iter().map(|r| r[..k].to_vec()).collect();
                assert_eq!(keys, seqs.keys().cloned().collect::<Vec<_>>(), "{name}");
                let (load, cdc) = (seqs.values().filter(|s| s.starts_with("0L")).count(), seqs.len());
                assert!(load < cdc, "{name}: some keys end with a CDC change: {seqs:?}");
                let marker = if format == Format::CsvHeader { "1F" } else { "1S" };
                assert!(seqs.values().any(|s| s.starts_with(marker)), "{name}: {seqs:?}");
            }
        }
    }

    #[test]
    fn variety_makes_every_kind_of_table_and_configures_cleanly() {
        let mut seen = Variant::default();
        let (mut soft_deleted, mut noted_files, mut halves) = (0, 0, [0, 0]);
        for seed in 0..20 {
            let sim = simulate(&SimOptions {
                seed,
                tables: 2,
                variety: true,
                ..SimOptions::default()
            });
            Config::from_text(&sim.config("/l", "/s", "/q", "/d")).unwrap();
            for (name, v) in &sim.variants {
                seen.soft |= v.soft;
                seen.partitioned |= v.partitioned;
                seen.added_column |= v.added_column;
                seen.load_after = seen.load_after.max(v.load_after);
                seen.parallel_load |= v.parallel_load;
                let cols = &sim.columns[name];
                assert_eq!(v.soft, cols.last().map(String::as_str) == Some(DELETED_FLAG), "{name}");
                assert_eq!(v.added_column, cols.iter().any(|c| c == ADDED.0), "{name}");
                if v.soft {
                    soft_deleted += sim.expected[name]
                        .iter()
                        .filter(|r| r.last() == Some(&Value::Bool(true)))
                        .count();
                }
            }
            noted_files += sim
                .files
                .iter()
                .filter(|f| {
                    f.key.ends_with(".csv")
                        && String::from_utf8_lossy(&f.bytes).starts_with("Op,id,region,name,amount,active,updated,note")
                })
                .count();
            for f in &sim.files {
                halves[f.epoch as usize] += 1;
            }
        }
        assert!(
            seen.soft && seen.partitioned && seen.added_column && seen.load_after > 0 && seen.parallel_load,
            "{seen:?}"
        );
        let parallel = |sim: &Simulation| {
            sim.files
                .iter()
                .filter(|f| f.key.contains("/part1/LOAD00000001"))
                .count()
        };
        assert!(
            (0..20).any(|seed| parallel(&simulate(&SimOptions {
                seed,
                tables: 2,
                variety: true,
                ..SimOptions::default()
            })) > 0),
            "some table loads in partition folders"
        );
        assert!(soft_deleted > 0 && noted_files > 0, "{soft_deleted} {noted_files}");
        assert!(halves[0] > 0 && halves[1] > 0, "{halves:?}");
    }

    /// The lifecycle events: each kind happens over a few seeds, the configuration loads, and
    /// what the files say agrees with what the product reads from them (local names back to
    /// their UTC instant with the object's LastModified; removals between the files before the
    /// truncate and those after it).
    #[test]
    fn lifecycle_events_happen_and_are_consistent() {
        let mut seen = Variant::default();
        let (mut local_names, mut no_seq_files, mut labelled, mut nosup) = (0, 0, 0, 0);
        for seed in 0..30 {
            let sim = simulate(&SimOptions {
                seed,
                tables: 2,
                changes: 30,
                max_file_changes: 6,
                variety: true,
                reloads: true,
                truncates: true,
                local_time: true,
                unlogged: true,
                renames: true,
                seq_toggles: true,
                ..SimOptions::default()
            });
            let config = Config::from_text(&sim.config("/l", "/s", "/q", "/d")).unwrap();
            for v in sim.variants.values() {
                seen.truncate |= v.truncate;
                seen.fall_back |= v.fall_back;
                seen.seq_toggled |= v.seq_toggled;
                seen.renamed_table |= v.renamed_table;
                seen.renamed_column |= v.renamed_column;
                seen.unlogged |= v.unlogged;
                assert!(!(v.truncate && (v.reload || v.soft)), "{v:?}");
            }
            for f in &sim.files {
                let routed = match crate::route::route(&config, &sim.bucket, &f.key) {
                    Ok(crate::route::Route::File(r)) => r,
                    other => panic!("{}: {other:?}", f.key),
                };
                let zone = config.sources()[routed.source].date_partitioning.zone();
                if let (Some(zone), Some(digits)) = (zone, routed.time_digits.as_deref()) {
                    local_names += 1;
                    let written = chrono::DateTime::from_timestamp_micros(f.written_micros);
                    let utc = crate::name_time::to_utc_digits(digits, zone, written).unwrap();
                    // Named 200 ms before it was written, to the millisecond.
                    let named = (f.written_micros - 200_000) / 1_000;
                    assert_eq!(&utc[..17], file_time(named * 1_000).replace('-', ""), "{}", f.key);
                }
                if f.key.ends_with(".parquet") && !f.key.contains("/LOAD") {
                    let r =
                        parquet::file::reader::SerializedFileReader::new(bytes::Bytes::from(f.bytes.clone())).unwrap();
                    use parquet::file::reader::FileReader;
                    let schema = r.metadata().file_metadata().schema_descr_ptr();
                    let names: Vec<&str> = schema.columns().iter().map(|c| c.name()).collect();
                    no_seq_files += usize::from(!names.contains(&"AR_H_CHANGE_SEQ"));
                    labelled += usize::from(names.contains(&RENAMED_COLUMN.1));
                }
                let text = String::from_utf8_lossy(&f.bytes);
                labelled +=
                    usize::from(text.starts_with("Op,") && text.lines().next().unwrap_or("").contains(",label"));
                nosup += usize::from(text.contains(NO_SUP));
            }
            for r in &sim.removals {
                let (source, table) = (r.table.split('.').next().unwrap(), r.table.rsplit('.').next().unwrap());
                let folder = format!("dms/{source}/app/{table}/");
                assert!(r.key.starts_with(&folder), "{r:?}");
                for f in sim.files.iter().filter(|f| f.key.starts_with(&folder)) {
                    let removed = sim.removals.iter().any(|x| x.key == f.key);
                    assert_eq!(f.written_micros < r.micros, removed, "{} vs {r:?}", f.key);
                }
            }
        }
        assert!(
            seen.truncate
                && seen.fall_back
                && seen.seq_toggled
                && seen.renamed_table
                && seen.renamed_column
                && seen.unlogged,
            "{seen:?}"
        );
        assert!(
            local_names > 0 && no_seq_files > 0 && labelled > 0 && nosup > 0,
            "{local_names} {no_seq_files} {labelled} {nosup}"
        );
    }

    /// The per-key history the simulator exposes: versions in sequence order, the newest the
    /// one the table stores, closing versions only after a live version, and some of each
    /// kind a history test needs over a few seeds.
    #[test]
    fn every_key_history_is_in_sequence_order_and_ends_at_the_stored_row() {
        let (mut closes, mut unlogged, mut tables) = (0, 0, 0);
        for seed in 0..20 {
            let sim = simulate(&SimOptions {
                seed,
                tables: 2,
                changes: 30,
                max_file_changes: 6,
                variety: true,
                reloads: true,
                truncates: true,
                unlogged: true,
                history: true,
                change_feed: true,
                ..SimOptions::default()
            });
            for (name, keys) in &sim.history {
                tables += usize::from(sim.variants[name].history);
                for (key, versions) in keys {
                    let seqs: Vec<&String> = versions.iter().filter_map(|v| v.seq.as_ref()).collect();
                    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{name} {key:?}: {seqs:?}");
                    for w in versions.windows(2).filter(|w| w[1].floor) {
                        assert!(!w[0].floor && w[0].op != 'D', "{name} {key:?}: {versions:?}");
                    }
                    assert!(!versions[0].floor, "{name} {key:?}: {versions:?}");
                    closes += versions.iter().filter(|v| v.floor).count();
                    unlogged += versions.iter().filter(|v| !v.unlogged.is_empty()).count();
                    let last = versions.last().unwrap();
                    if let Some(stored) = sim.expected_seq[name].get(key) {
                        assert_eq!(last.seq.as_ref(), Some(stored), "{name} {key:?}");
                    } else if !sim.variants[name].soft {
                        assert_eq!(last.op, 'D', "{name} {key:?}: {versions:?}");
                    }
                }
            }
        }
        assert!(closes > 0 && unlogged > 0 && tables > 0, "{closes} {unlogged} {tables}");
    }

    #[test]
    fn change_seq_is_35_digits_and_ordered() {
        let c1 = Change {
            op: 'I',
            row: vec![],
            micros: BASE_MICROS,
            seq: 9,
            unlogged: false,
        };
        let c2 = Change {
            op: 'I',
            row: vec![],
            micros: BASE_MICROS + 10_000,
            seq: 10,
            unlogged: false,
        };
        assert_eq!(change_seq(&c1).len(), 35);
        assert!(change_seq(&c1) < change_seq(&c2));
    }
}
