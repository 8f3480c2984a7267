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
