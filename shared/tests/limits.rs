//! The documented limits hold: a 500-column table, a field of several megabytes (with the limit
//! raised), and a configuration of thousands of tables, each replicated or resolved as usual.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::fmt::Write;
use std::time::Instant;

use dms2delta::config::Config;
use dms2delta::route::{route, Route};
use support::Mini;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_500_columns_replicates() {
    let cols = 500;
    let source = "  - name: wide\n    bucket: dms\n    csv: { header: true }\n    tables:\n      - { schema: s, table: w, keys: [c0] }\n";
    let m = Mini::new(source, "");
    let mut csv = String::from("Op");
    for c in 0..cols {
        write!(csv, ",c{c}").unwrap();
    }
    csv.push('\n');
    for r in 0..50 {
        csv.push('I');
        for c in 0..cols {
            write!(csv, ",{}", r * 1000 + c).unwrap();
        }
        csv.push('\n');
    }
    let metrics = m.apply("s/w/20240601-000000001.csv", csv.as_bytes()).await;
    assert_eq!(metrics.rows_inserted, 50);
    let batches = m.batches("wide.s.w").await;
    let data_cols = batches[0]
        .schema()
        .fields()
        .iter()
        .filter(|f| !f.name().starts_with("_dms_"))
        .count();
    assert_eq!(data_cols, cols);
    let last = format!("c{}", cols - 1);
    let rows = m.rows("wide.s.w", &["c0", &last]).await;
    let row = rows.iter().find(|r| r[0] == "49000").unwrap();
    assert_eq!(row[1], format!("{}", 49000 + cols - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_of_several_megabytes_replicates_when_the_limit_allows_it() {
    let source = "  - name: big\n    bucket: dms\n    tables:\n      - schema: s\n        table: t\n        keys: [id]\n        columns:\n          - { name: id, type: INT4 }\n          - { name: doc, type: STRING }\n";
    let m = Mini::new(source, "limits:\n  max_field_bytes: 16777216\n");
    let doc = "0123456789abcdef".repeat(512 * 1024); // 8 MiB
    let file = format!("I,1,{doc}\nI,2,small\n");
    m.apply("s/t/20240601-000000001.csv", file.as_bytes()).await;
    let rows = m.rows("big.s.t", &["id", "doc"]).await;
    assert_eq!(rows[0][1].len(), doc.len());
    assert_eq!(rows[0][1], doc);
    assert_eq!(rows[1], vec!["2", "small"]);
}

#[test]
fn a_configuration_of_3000_tables_loads_and_routes_quickly() {
    let mut text = String::from("lake: /l\nstaging: /s\nquarantine: /q\nsources:\n");
    for s in 0..3 {
        writeln!(
            text,
            "  - name: src{s}\n    bucket: dms\n    bucket_folder: src{s}\n    tables:"
        )
        .unwrap();
        for t in 0..1000 {
            writeln!(text, "      - {{ schema: app, table: t{t}, keys: [id] }}").unwrap();
        }
    }
    let started = Instant::now();
    let config = Config::from_text(&text).unwrap();
    let loaded = started.elapsed();
    match route(&config, "dms", "src2/app/t999/20240601-000000001.csv").unwrap() {
        Route::File(r) => {
            assert_eq!((r.source, r.table.as_deref()), (2, Some("t999")));
            let spec = config.table(r.source, "app", "t999").unwrap().unwrap();
            assert_eq!(spec.qualified_name(), "src2.app.t999");
        }
        other => panic!("{other:?}"),
    }
    // Not a timing assertion (machines vary); printed so a regression is visible in the log.
    println!("3000 tables: configuration validated in {loaded:?}");
}

/// Set in the child process [`decode_memory_stays_within_the_limits_on_bombs`] starts: the file
/// to decode and its object key, separated by a newline.
const BOMB_ENV: &str = "DMS2DELTA_DECODE_BOMB";

const FIELD_LIMIT: usize = 1 << 20;
const RECORD_LIMIT: usize = 4 << 20;
const INFLATED_LIMIT: u64 = 8 << 20;

fn bomb_config() -> dms2delta::config::Validated {
    Config::from_text(&format!(
        "lake: /l\nstaging: /s\nquarantine: /q\nsources:\n  - name: b\n    bucket: dms\n    tables:\n      - schema: s\n        table: t\n        keys: [id]\n        columns:\n          - {{ name: id, type: INT4 }}\n          - {{ name: doc, type: STRING }}\n      - {{ schema: s, table: p, keys: [id] }}\nlimits:\n  max_field_bytes: {FIELD_LIMIT}\n  max_record_bytes: {RECORD_LIMIT}\n  max_inflated_bytes: {INFLATED_LIMIT}\n"
    ))
    .unwrap()
}

/// The process's peak resident memory so far, in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The child's side: decodes one file and prints its memory before and after.
fn decode_bomb(spec: &str) {
    use dms2delta::decode::{decode_file, FileContext};
    let (path, key) = spec.split_once('\n').unwrap();
    let cfg = bomb_config();
    let Route::File(routed) = route(&cfg, "dms", key).unwrap() else {
        panic!("{key} is not routed")
    };
    let spec = cfg
        .table(
            routed.source,
            routed.schema.as_deref().unwrap(),
            routed.table.as_deref().unwrap(),
        )
        .unwrap();
    let file = std::fs::File::open(path).unwrap();
    let before = peak_rss_kib();
    let ctx = FileContext {
        config: &cfg,
        routed: &routed,
        source_file: key,
        table: spec.as_ref(),
        max_field_bytes: cfg.config.limits.max_field_bytes,
    };
    let outcome = match decode_file(file, &ctx) {
        Ok(t) => format!("decoded {} tables", t.len()),
        Err(p) => format!("{}: {}", p.kind, p.reason),
    };
    println!("bomb-baseline-kib={before}");
    println!("bomb-peak-kib={}", peak_rss_kib());
    println!("bomb-outcome={outcome}");
}

fn gzip_of(write: impl FnOnce(&mut dyn std::io::Write)) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    write(&mut gz);
    gz.finish().unwrap()
}

fn zstd_parquet(batch: &arrow::array::RecordBatch, one_page: bool) -> Vec<u8> {
    use parquet::file::properties::WriterProperties;
    let mut props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .set_dictionary_enabled(false);
    if one_page {
        props = props
            .set_data_page_size_limit(usize::MAX)
            .set_data_page_row_count_limit(usize::MAX)
            .set_max_row_group_row_count(None)
            .set_write_batch_size(usize::MAX);
    }
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), Some(props.build())).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    buf
}

fn parquet_of(ids: Vec<i64>, values: arrow::array::StringArray, one_page: bool) -> Vec<u8> {
    use arrow::array::{ArrayRef, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("v", DataType::Utf8, true),
    ]));
    let cols: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(ids)), Arc::new(values)];
    zstd_parquet(&RecordBatch::try_new(schema, cols).unwrap(), one_page)
}

/// Decode memory is bounded by the limits whatever a small file inflates to: each bomb, 128 MiB
/// of data in a file under 1 MiB, is decoded in a child process (so its peak resident
/// memory is its own) under limits of 1 MiB per field, 4 MiB per record and 8 MiB per file, and
/// must be refused naming the limit it hit, with peak memory under a bound derived from them.
#[test]
fn decode_memory_stays_within_the_limits_on_bombs() {
    if let Ok(spec) = std::env::var(BOMB_ENV) {
        decode_bomb(&spec);
        return;
    }
    const MIB: usize = 1 << 20;
    const BOMB_MIB: usize = 128;
    let dir = tempfile::tempdir().unwrap();
    let cdc = "20240601-000000001";
    let bombs: Vec<(&str, String, Vec<u8>, &str)> = vec![
        (
            "gzip CSV, one 128 MiB field",
            format!("s/t/{cdc}.csv.gz"),
            gzip_of(|w| {
                w.write_all(b"I,1,").unwrap();
                let chunk = vec![b'x'; MIB];
                for _ in 0..BOMB_MIB {
                    w.write_all(&chunk).unwrap();
                }
                w.write_all(b"\n").unwrap();
            }),
            "limits.max_field_bytes",
        ),
        (
            "gzip CSV, one 128 MiB record of 100-byte fields",
            format!("s/t/{cdc}.csv.gz"),
            gzip_of(|w| {
                w.write_all(b"I,1").unwrap();
                let field = format!(",{}", "y".repeat(99)).repeat(MIB / 100);
                for _ in 0..BOMB_MIB {
                    w.write_all(field.as_bytes()).unwrap();
                }
                w.write_all(b"\n").unwrap();
            }),
            "limits.max_record_bytes",
        ),
        (
            "gzip CSV, 128 MiB of rows with distinct keys",
            format!("s/t/{cdc}.csv.gz"),
            gzip_of(|w| {
                let doc = "z".repeat(1000);
                let mut block = String::with_capacity(MIB + 200);
                let mut id = 0u64;
                for _ in 0..BOMB_MIB {
                    block.clear();
                    while block.len() < MIB {
                        id += 1;
                        block.push_str(&format!("I,{id},{doc}\n"));
                    }
                    w.write_all(block.as_bytes()).unwrap();
                }
            }),
            "limits.max_inflated_bytes",
        ),
        (
            "Parquet, one 128 MiB string",
            format!("s/p/{cdc}.parquet"),
            parquet_of(
                vec![1, 2],
                arrow::array::StringArray::from(vec!["x".repeat(BOMB_MIB * MIB), "small".to_string()]),
                false,
            ),
            "limits.max_inflated_bytes",
        ),
        (
            "Parquet, one 128 MiB page of 2 Mi short strings",
            format!("s/p/{cdc}.parquet"),
            parquet_of(
                vec![1; BOMB_MIB * MIB / 64],
                arrow::array::StringArray::from_iter_values(std::iter::repeat_n("w".repeat(60), BOMB_MIB * MIB / 64)),
                true,
            ),
            "limits.max_inflated_bytes",
        ),
    ];
    // Peak memory a refused bomb may add: a few records' worth of buffers and a few times the
    // file's data (decoded rows, their index, the gzip window), nowhere near the 128 MiB inflated.
    let bound_kib = ((3 * RECORD_LIMIT) as u64 + 6 * INFLATED_LIMIT) / 1024;
    let exe = std::env::current_exe().unwrap();
    let mut failures = Vec::new();
    for (i, (what, key, bytes, limit)) in bombs.into_iter().enumerate() {
        assert!(bytes.len() < MIB, "{what}: the bomb itself is {} bytes", bytes.len());
        let path = dir.path().join(format!("bomb{i}"));
        std::fs::write(&path, &bytes).unwrap();
        let out = std::process::Command::new(&exe)
            .args([
                "decode_memory_stays_within_the_limits_on_bombs",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(BOMB_ENV, format!("{}\n{key}", path.display()))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{what}: child failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let value = |name: &str| -> String {
            stdout
                .lines()
                .find_map(|l| l.split_once(&format!("bomb-{name}=")).map(|(_, v)| v))
                .unwrap_or_else(|| panic!("{what}: no {name} in {stdout}"))
                .to_string()
        };
        let (baseline, peak) = (value("baseline-kib"), value("peak-kib"));
        let grown = peak.parse::<u64>().unwrap().saturating_sub(baseline.parse().unwrap());
        let outcome = value("outcome");
        println!(
            "{what}: {} KiB file, peak {peak} KiB ({grown} KiB over the baseline, bound {bound_kib} KiB): {outcome}",
            bytes.len() / 1024
        );
        if !outcome.starts_with("too_large:") || !outcome.contains(limit) {
            failures.push(format!("{what}: {outcome} is not a too_large naming {limit}"));
        }
        if grown > bound_kib {
            failures.push(format!(
                "{what}: decode grew by {grown} KiB, over the bound of {bound_kib} KiB"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
