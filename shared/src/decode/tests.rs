//! Decoder cases, one per shape on the DMS format page, with small synthetic fixtures.

use std::io::Write;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray, Time64MicrosecondArray,
    TimestampMillisecondArray, UInt32Array, UInt64Array, UInt8Array,
};
use arrow::datatypes::{
    DataType, Decimal128Type, Field, Float64Type, Int16Type, Int64Type, Schema, TimeUnit, TimestampMicrosecondType,
};

use super::*;
use crate::changes::{COMMIT_TS, NOSUP, OP, SEQ};
use crate::config::Config;
use crate::route::{route, Route};

const CONFIG: &str = r#"
lake: /l
staging: /s
quarantine: /q
sources:
  - name: src
    bucket: dms
    bucket_folder: raw
    cdc_path: txn
    tables:
      - schema: hr
        table: emp
        keys: [id]
        columns:
          - { name: id, type: INT4 }
          - { name: name, type: STRING }
          - { name: salary, type: NUMERIC, precision: 10, scale: 2 }
          - { name: hired, type: DATETIME }
          - { name: active, type: BOOLEAN }
          - { name: score, type: REAL8 }
      - schema: hr
        table: dept
        keys: [code]
        columns:
          - { name: code, type: STRING }
          - { name: title, type: STRING }
      - schema: hr
        table: nocols
        keys: [id]
      - schema: hr
        table: pq
        keys: [id]
"#;

fn config_with(extra_source: &str) -> Validated {
    Config::from_text(&format!("{CONFIG}{extra_source}")).unwrap()
}

fn run(cfg: &Validated, key: &str, bytes: &[u8]) -> Result<Vec<TableChanges>, InputProblem> {
    let Route::File(routed) = route(cfg, "dms", key).unwrap() else {
        panic!("not routed: {key}")
    };
    let spec = match (&routed.schema, &routed.table) {
        (Some(s), Some(t)) => cfg.table(routed.source, s, t)?,
        _ => None,
    };
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let ctx = FileContext {
        config: cfg,
        routed: &routed,
        source_file: &format!("s3://dms/{key}"),
        table: spec.as_ref(),
        max_field_bytes: 1024,
    };
    decode_file(f, &ctx)
}

fn one(cfg: &Validated, key: &str, bytes: &[u8]) -> RecordBatch {
    let t = run(cfg, key, bytes).unwrap();
    assert_eq!(t.len(), 1);
    joined(&t[0]).unwrap()
}

/// A table's change set as one batch, or `None` when it has no rows.
fn joined(t: &TableChanges) -> Option<RecordBatch> {
    let first = t.batches.first()?;
    Some(arrow::compute::concat_batches(&first.schema(), &t.batches).unwrap())
}

fn err(cfg: &Validated, key: &str, bytes: &[u8]) -> InputProblem {
    run(cfg, key, bytes).unwrap_err()
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> &'a ArrayRef {
    b.column(b.schema().index_of(name).unwrap())
}

fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let a = arrow::compute::cast(col(b, name), &DataType::Utf8).unwrap();
    a.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect()
}

/// Rows as text, sorted by the first column, for compact assertions.
fn sorted_rows(b: &RecordBatch, cols: &[&str]) -> Vec<Vec<Option<String>>> {
    let c: Vec<Vec<Option<String>>> = cols.iter().map(|n| strings(b, n)).collect();
    let mut rows: Vec<Vec<Option<String>>> = (0..b.num_rows())
        .map(|r| c.iter().map(|col| col[r].clone()).collect())
        .collect();
    rows.sort();
    rows
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

const EMP_LOAD: &str = "1,Ann,24000.00,2024-05-28 19:51:41,true,+5.0656000000000000e+05\n\
2,\"Smith, \"\"Bo\"\"\",100.5,2024-05-28 19:51:41.123456789,f,-1.1118453000000000e-01\n\
3,\"multi\nline\",0,2024-05-28 00:00:00.1,1,0\n\
4,Zoë 😀,,,,\n";

#[test]
fn full_load_headerless_csv_without_op() {
    let cfg = config_with("");
    let b = one(&cfg, "raw/hr/emp/LOAD00000001.csv", EMP_LOAD.as_bytes());
    assert_eq!(b.num_rows(), 4);
    let rows = sorted_rows(&b, &["id", "name", "salary", "active", OP]);
    assert_eq!(rows[0], vec![s("1"), s("Ann"), s("24000.00"), s("true"), s("I")]);
    assert_eq!(rows[1][1], s("Smith, \"Bo\""));
    assert_eq!(rows[2][1], s("multi\nline"));
    assert_eq!(rows[3], vec![s("4"), s("Zoë 😀"), None, None, s("I")]);
    // Types: decimal keeps scale, floats in scientific notation, timestamps truncated to micros.
    assert_eq!(col(&b, "salary").data_type(), &DataType::Decimal128(10, 2));
    let score = col(&b, "score").as_primitive::<Float64Type>();
    let ids = col(&b, "id").as_primitive::<arrow::datatypes::Int32Type>();
    let r1 = (0..4).find(|&i| ids.value(i) == 1).unwrap();
    assert_eq!(score.value(r1), 506560.0);
    let hired = col(&b, "hired").as_primitive::<TimestampMicrosecondType>();
    let r2 = (0..4).find(|&i| ids.value(i) == 2).unwrap();
    assert_eq!(hired.value(r2) % 1_000_000, 123_456);
    // Full-load rows sort below CDC and carry no commit time.
    assert!(strings(&b, SEQ)
        .iter()
        .all(|s| s.as_ref().unwrap().starts_with("0LLOAD00000001:")));
    assert_eq!(col(&b, COMMIT_TS).null_count(), 4);
}

#[test]
fn cdc_with_op_dedups_to_the_last_change_per_key() {
    let cfg = config_with("");
    let text = "I,497,a,1.00,,,\nU,497,b,2.00,,,\nI,5,x,1,,,\nD,497,,,,,\nI,497,c,3.00,,,\nU,5,y,1,,,\n";
    let b = one(&cfg, "raw/hr/emp/20240528-195141380.csv", text.as_bytes());
    assert_eq!(
        sorted_rows(&b, &["id", "name", OP]),
        vec![vec![s("497"), s("c"), s("I")], vec![s("5"), s("y"), s("U")]]
    );
    // The commit time comes from the file name when there is no timestamp column.
    let ts = col(&b, COMMIT_TS).as_primitive::<TimestampMicrosecondType>();
    assert_eq!(ts.value(0), 1_716_925_901_380_000);
    let seqs = strings(&b, SEQ);
    assert!(seqs.contains(&s("1F202405281951413800:000000000005")));
}

#[test]
fn key_only_delete_rows_and_garbage_in_non_key_columns_of_deletes() {
    let cfg = config_with("");
    let text = "D,7,,,,,\nD,8,,notanumber,,,\n";
    let b = one(&cfg, "raw/hr/emp/20240528-195141380.csv", text.as_bytes());
    assert_eq!(
        sorted_rows(&b, &["id", OP, "salary"]),
        vec![vec![s("7"), s("D"), None], vec![s("8"), s("D"), None]]
    );
}

#[test]
fn timestamp_column_after_op_and_change_seq_last() {
    let cfg = config_with(
        r#"
  - name: ts
    bucket: dms
    bucket_folder: tsraw
    timestamp_column: ts
    sequence_column: AR_H_CHANGE_SEQ
    tables:
      - schema: hr
        table: t
        keys: [id]
        columns:
          - { name: id, type: INT8 }
          - { name: v, type: STRING }
          - { name: AR_H_CHANGE_SEQ, type: STRING }
"#,
    );
    // The file order is deliberately not the sequence order: the sequence column decides.
    let text = "U,2024-05-28 19:51:41.380000,1,new,20240528195141380000000000000000062\n\
U,2024-05-28 19:51:41.370000,1,old,20240528195141370000000000000000061\n\
I,2024-05-28 19:51:41.390000,2,x,\n";
    let b = one(&cfg, "tsraw/hr/t/20240528-195141380.csv", text.as_bytes());
    let rows = sorted_rows(&b, &["id", "v", SEQ]);
    assert_eq!(rows[0][1], s("new"));
    assert_eq!(rows[0][2], s("1S20240528195141380000000000000000062"));
    // An empty sequence falls back to the file's name time, in the change-sequence order.
    assert_eq!(rows[1][2], s("1S2024052819514138:00:000000000003"));
    // Neither the timestamp nor the sequence column is a data column.
    assert!(b.schema().index_of("ts").is_err());
    assert!(b.schema().index_of("AR_H_CHANGE_SEQ").is_err());
    let ts = col(&b, COMMIT_TS).as_primitive::<TimestampMicrosecondType>();
    assert!(ts.iter().flatten().any(|v| v == 1_716_925_901_380_000));
}

#[test]
fn header_csv_null_and_nosup_sentinels_and_delimiter() {
    let cfg = config_with(
        r##"
  - name: hdr
    bucket: dms
    bucket_folder: hdr
    csv: { header: true, delimiter: ";", null_value: "NULL", no_sup_value: "#NOSUP#" }
    tables:
      - schema: s
        table: t
        keys: [id]
        columns:
          - { name: id, type: INT4 }
          - { name: n, type: INT4 }
"##,
    );
    let text = "Op;id;n;lob\nI;1;5;\nU;2;NULL;#NOSUP#\nI;3;;text\n";
    let b = one(&cfg, "hdr/s/t/20240528-195141380.csv", text.as_bytes());
    // A column only in the header (added at the source) arrives as text.
    assert_eq!(col(&b, "lob").data_type(), &DataType::Utf8);
    assert_eq!(
        sorted_rows(&b, &["id", "n", "lob", NOSUP]),
        vec![
            vec![s("1"), s("5"), s(""), None],
            vec![s("2"), None, None, s("|lob|")],
            vec![s("3"), None, s("text"), None],
        ]
    );
}

#[test]
fn gzip_csv_and_truncated_gzip() {
    let cfg = config_with("");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(EMP_LOAD.as_bytes()).unwrap();
    let bytes = gz.finish().unwrap();
    let b = one(&cfg, "raw/hr/emp/LOAD00000002.csv.gz", &bytes);
    assert_eq!(b.num_rows(), 4);
    // Format is told by magic bytes, not the name.
    assert_eq!(one(&cfg, "raw/hr/emp/LOAD00000003.csv", &bytes).num_rows(), 4);
    let e = err(&cfg, "raw/hr/emp/LOAD00000004.csv.gz", &bytes[..bytes.len() / 2]);
    assert_eq!(e.kind, BadInputKind::CorruptFile, "{}", e.reason);
    assert!(e.reason.contains("gzip"));
}

#[test]
fn cdc_txn_files_are_split_by_table() {
    let cfg = config_with("");
    let text = "I,emp,hr,1,Ann,1,,,\nI,dept,hr,D1,Sales\nU,emp,hr,1,Ann B,2,,,\nI,other,hr,9,ignored\nD,dept,hr,D1,\n";
    let cfg2 = Config::from_text(&format!(
        "{CONFIG}    rules:\n      - {{ action: include, schema: hr, table: emp }}\n      - {{ action: include, schema: hr, table: dept }}\n"
    ))
    .unwrap();
    // `other` has no configuration: with no rules it is selected but has no key.
    let e = err(&cfg, "raw/txn/CDC_TXN-20240528195141380.csv", text.as_bytes());
    assert_eq!(e.kind, BadInputKind::NoKey);
    let mut t = run(&cfg2, "raw/txn/CDC_TXN-20240528195141380.csv", text.as_bytes()).unwrap();
    t.sort_by(|a, b| a.spec.table.cmp(&b.spec.table));
    assert_eq!(t.len(), 2);
    let dept = &joined(&t[0]).unwrap();
    assert_eq!(sorted_rows(dept, &["code", OP]), vec![vec![s("D1"), s("D")]]);
    let emp = &joined(&t[1]).unwrap();
    assert_eq!(
        sorted_rows(emp, &["id", "name", OP]),
        vec![vec![s("1"), s("Ann B"), s("U")]]
    );
    assert_eq!(t[1].rows_in, 2);
}

fn parquet_bytes(batch: &RecordBatch) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = ::parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
    buf
}

#[test]
fn parquet_types_are_widened_for_delta() {
    let cfg = config_with("");
    let schema = Arc::new(Schema::new(vec![
        Field::new("Op", DataType::Utf8, true),
        Field::new("id", DataType::UInt32, true),
        Field::new("small", DataType::UInt8, true),
        Field::new("big", DataType::UInt64, true),
        Field::new("at", DataType::Time64(TimeUnit::Microsecond), true),
        Field::new(
            "ms",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new("flag", DataType::Boolean, true),
    ]));
    let b = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["I", "U", "I"])) as ArrayRef,
            Arc::new(UInt32Array::from(vec![4_000_000_000, 4_000_000_000, 1])),
            Arc::new(UInt8Array::from(vec![Some(250), Some(255), None])),
            Arc::new(UInt64Array::from(vec![u64::MAX, 1, 2])),
            Arc::new(Time64MicrosecondArray::from(vec![3_723_000_001, 0, 1])),
            Arc::new(TimestampMillisecondArray::from(vec![1_000, 2_000, 3_000]).with_timezone("UTC")),
            Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
        ],
    )
    .unwrap();
    let out = one(&cfg, "raw/hr/pq/20240528-195141380.parquet", &parquet_bytes(&b));
    assert_eq!(out.num_rows(), 2);
    assert_eq!(col(&out, "id").data_type(), &DataType::Int64);
    assert_eq!(col(&out, "small").data_type(), &DataType::Int16);
    assert_eq!(col(&out, "big").data_type(), &DataType::Decimal128(20, 0));
    assert_eq!(col(&out, "at").data_type(), &DataType::Utf8);
    assert!(matches!(
        col(&out, "ms").data_type(),
        DataType::Timestamp(TimeUnit::Microsecond, Some(_))
    ));
    let ids = col(&out, "id").as_primitive::<Int64Type>();
    let r = (0..2).find(|&i| ids.value(i) == 4_000_000_000).unwrap();
    assert_eq!(col(&out, "small").as_primitive::<Int16Type>().value(r), 255);
    assert_eq!(col(&out, "big").as_primitive::<Decimal128Type>().value(r), 1);
    assert_eq!(col(&out, "at").as_string::<i32>().value(r), "00:00:00");
    assert_eq!(col(&out, OP).as_string::<i32>().value(r), "U");
    assert!(out.schema().index_of("Op").is_err());
}

#[test]
fn parquet_full_load_without_op_and_zero_rows() {
    let cfg = config_with("");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("v", DataType::Int32, true),
    ]));
    let b = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
            Arc::new(Int32Array::from(vec![10, 20])),
        ],
    )
    .unwrap();
    let out = one(&cfg, "raw/hr/pq/LOAD00000001.parquet", &parquet_bytes(&b));
    assert_eq!(strings(&out, OP), vec![s("I"), s("I")]);
    let empty = RecordBatch::new_empty(schema);
    let t = run(&cfg, "raw/hr/pq/LOAD00000002.parquet", &parquet_bytes(&empty)).unwrap();
    assert_eq!(t.len(), 1);
    assert!(t[0].batches.is_empty());
    assert_eq!(t[0].rows_in, 0);
}

#[test]
fn parquet_errors() {
    let cfg = config_with("");
    let schema = Arc::new(Schema::new(vec![
        Field::new("Op", DataType::Utf8, true),
        Field::new("id", DataType::Int64, true),
    ]));
    let mk = |ops: Vec<Option<&str>>, ids: Vec<Option<i64>>| {
        parquet_bytes(
            &RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(ops)) as ArrayRef,
                    Arc::new(Int64Array::from(ids)),
                ],
            )
            .unwrap(),
        )
    };
    let key = "raw/hr/pq/20240528-195141380.parquet";
    assert_eq!(
        err(&cfg, key, &mk(vec![Some("I"), Some("X")], vec![Some(1), Some(2)])).kind,
        BadInputKind::UnknownOp
    );
    let e = err(&cfg, key, &mk(vec![Some("I"), Some("I")], vec![Some(1), None]));
    assert_eq!(e.kind, BadInputKind::MissingKey);
    assert!(e.reason.contains("row 2"), "{}", e.reason);
    let good = mk(vec![Some("I")], vec![Some(1)]);
    assert_eq!(err(&cfg, key, &good[..good.len() - 10]).kind, BadInputKind::CorruptFile);
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[4..mid].iter_mut().for_each(|b| *b = 0xAB);
    assert_eq!(err(&cfg, key, &flipped).kind, BadInputKind::CorruptFile);
    // The key column is absent from the file.
    let other = Arc::new(Schema::new(vec![Field::new("other", DataType::Int64, true)]));
    let b = RecordBatch::try_new(other, vec![Arc::new(Int64Array::from(vec![1])) as ArrayRef]).unwrap();
    assert_eq!(err(&cfg, key, &parquet_bytes(&b)).kind, BadInputKind::MissingKey);
}

#[test]
fn csv_errors_name_the_line_and_the_problem() {
    let cfg = config_with("");
    let key = "raw/hr/emp/20240528-195141380.csv";
    let cases: Vec<(&[u8], BadInputKind, &str)> = vec![
        (b"I,1,a,1,,,\nI,2,b,1,,\n", BadInputKind::FieldCount, "line 2"),
        (b"I,1,a,1,,\n", BadInputKind::FieldCount, "first row has 6 fields"),
        (b"I,1,a,1,,,,,\n", BadInputKind::FieldCount, "first row"),
        (b"I,1,\"open,1,,,\nI,2,b,1,,,\n", BadInputKind::FieldCount, "quote"),
        (b"X,1,a,1,,,\n", BadInputKind::UnknownOp, "Op `X`"),
        (b"I,,a,1,,,\n", BadInputKind::MissingKey, "key column `id`"),
        (b"I,abc,a,1,,,\n", BadInputKind::BadValue, "column `id`"),
        (b"I,1,a,1,maybe,,\n", BadInputKind::BadValue, "column `hired`"),
        (b"I,1,\xff\xfe,1,,,\n", BadInputKind::InvalidUtf8, "column `name`"),
    ];
    for (bytes, kind, needle) in cases {
        let e = err(&cfg, key, bytes);
        assert_eq!(e.kind, kind, "{}: {}", String::from_utf8_lossy(bytes), e.reason);
        assert!(e.reason.contains(needle), "{} lacks {needle}", e.reason);
    }
    let huge = format!("I,1,{},1,,,\n", "x".repeat(2000));
    assert_eq!(err(&cfg, key, huge.as_bytes()).kind, BadInputKind::TooLarge);
    // Headerless CSV for a table without configured columns.
    assert_eq!(
        err(&cfg, "raw/hr/nocols/LOAD00000001.csv", b"1,a\n").kind,
        BadInputKind::NoColumns
    );
}

#[test]
fn empty_csv_gives_no_changes() {
    let cfg = config_with("");
    let t = run(&cfg, "raw/hr/emp/20240528-195141380.csv", b"").unwrap();
    assert_eq!(t.len(), 1);
    assert!(t[0].batches.is_empty());
}

#[test]
fn format_sniffing() {
    assert_eq!(Format::sniff(b"PAR1xxxx"), Format::Parquet);
    assert_eq!(Format::sniff(&[0x1f, 0x8b, 8, 0]), Format::GzipCsv);
    assert_eq!(Format::sniff(b"I,1"), Format::Csv);
    assert_eq!(Format::sniff(b""), Format::Csv);
}

const SEQ_SOURCE: &str = r#"
  - name: seqsrc
    bucket: dms
    bucket_folder: seqraw
    sequence_column: seq
    timestamp_column: ts
    tables:
      - { schema: hr, table: pq, keys: [id] }
"#;

/// Parquet is deduplicated in two passes (key, Op and sequence columns first, then only the
/// surviving rows): over several row groups and batches, with and without a sequence column,
/// the result must equal a straightforward reference.
#[test]
fn parquet_dedup_over_row_groups_matches_a_reference() {
    let cfg = config_with(SEQ_SOURCE);
    for with_seq in [false, true] {
        let mut rng = fastrand::Rng::with_seed(u64::from(with_seq) + 11);
        let n = 30_000usize;
        let ids: Vec<i64> = (0..n).map(|_| rng.i64(0..4000)).collect();
        let ops: Vec<&str> = (0..n).map(|_| ["I", "U", "D"][rng.usize(0..3)]).collect();
        let seqs: Vec<u64> = (0..n).map(|_| rng.u64(1..200_000)).collect();
        let mut fields = vec![
            Field::new("Op", DataType::Utf8, true),
            Field::new("id", DataType::Int64, true),
            Field::new("v", DataType::Int32, true),
        ];
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ops.clone())),
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Int32Array::from_iter_values(0..n as i32)),
        ];
        if with_seq {
            fields.push(Field::new("seq", DataType::Utf8, true));
            cols.push(Arc::new(StringArray::from_iter_values(
                seqs.iter().map(|s| s.to_string()),
            )));
        }
        let b = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
        let props = ::parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(7_000))
            .build();
        let mut bytes = Vec::new();
        let mut w = ::parquet::arrow::ArrowWriter::try_new(&mut bytes, b.schema(), Some(props)).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();

        // The reference: per key, the row with the highest sequence (the first of equals).
        let mut want: std::collections::BTreeMap<i64, usize> = std::collections::BTreeMap::new();
        for i in 0..n {
            let better = |j: usize| if with_seq { seqs[i] > seqs[j] } else { i > j };
            want.entry(ids[i])
                .and_modify(|j| {
                    if better(*j) {
                        *j = i
                    }
                })
                .or_insert(i);
        }
        let folder = if with_seq { "seqraw" } else { "raw" };
        let t = run(&cfg, &format!("{folder}/hr/pq/20240528-195141380.parquet"), &bytes).unwrap();
        assert_eq!(t[0].rows_in, n as u64);
        let out = &joined(&t[0]).unwrap();
        let got_ids = col(out, "id").as_primitive::<Int64Type>();
        let got_v = col(out, "v").as_primitive::<arrow::datatypes::Int32Type>();
        let got_op = col(out, OP).as_string::<i32>();
        let got_seq = col(out, SEQ).as_string::<i32>();
        let mut got = std::collections::BTreeMap::new();
        for r in 0..out.num_rows() {
            let i = got_v.value(r) as usize;
            let seq = if with_seq {
                format!("1S{:035}", seqs[i])
            } else {
                format!("1F202405281951413800:{:012}", i + 1)
            };
            assert_eq!((got_op.value(r), got_seq.value(r)), (ops[i], seq.as_str()), "row {r}");
            assert!(
                got.insert(got_ids.value(r), i).is_none(),
                "key {} twice",
                got_ids.value(r)
            );
        }
        assert_eq!(got, want, "with_seq {with_seq}");
        // Survivors come in file order.
        assert!((1..out.num_rows()).all(|r| got_v.value(r - 1) < got_v.value(r)));
    }
}

/// Op and key are checked on every row, superseded or not; a value of a surviving row that
/// cannot be read names that row.
#[test]
fn parquet_errors_name_rows_in_either_pass() {
    let cfg = config_with(SEQ_SOURCE);
    let key = "seqraw/hr/pq/20240528-195141380.parquet";
    let schema = Arc::new(Schema::new(vec![
        Field::new("Op", DataType::Utf8, true),
        Field::new("id", DataType::Int64, true),
        Field::new("seq", DataType::Utf8, true),
        Field::new("ts", DataType::Utf8, true),
    ]));
    let mk = |ops: Vec<&str>, seqs: Vec<&str>, ts: Vec<&str>| {
        parquet_bytes(
            &RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(ops)) as ArrayRef,
                    Arc::new(Int64Array::from(vec![1, 1, 2])),
                    Arc::new(StringArray::from(seqs)),
                    Arc::new(StringArray::from(ts)),
                ],
            )
            .unwrap(),
        )
    };
    let ok_ts = "2024-05-28 19:51:41.380000";
    // Row 1 is superseded by row 2, and its Op is still refused.
    let e = err(&cfg, key, &mk(vec!["X", "U", "I"], vec!["1", "2", "3"], vec![ok_ts; 3]));
    assert_eq!(e.kind, BadInputKind::UnknownOp);
    assert!(e.reason.contains("row 1"), "{}", e.reason);
    // A sequence that is not a number, in a superseded row.
    let e = err(
        &cfg,
        key,
        &mk(vec!["I", "U", "I"], vec!["x1", "2", "3"], vec![ok_ts; 3]),
    );
    assert_eq!(e.kind, BadInputKind::BadValue);
    assert!(e.reason.contains("row 1"), "{}", e.reason);
    // A bad commit time in a surviving row names its row in the file.
    let e = err(
        &cfg,
        key,
        &mk(vec!["I", "U", "I"], vec!["1", "2", "3"], vec![ok_ts, ok_ts, "noon"]),
    );
    assert_eq!(e.kind, BadInputKind::BadValue);
    assert!(e.reason.contains("row 3"), "{}", e.reason);
    let good = one(&cfg, key, &mk(vec!["I", "U", "I"], vec!["1", "2", "3"], vec![ok_ts; 3]));
    assert_eq!(good.num_rows(), 2);
}

/// A source whose tables declare column types that Parquet files may contradict.
const TYPED: &str = r#"
  - name: typed
    bucket: dms
    bucket_folder: typed
    sequence_column: AR_H_CHANGE_SEQ
    tables:
      - schema: s
        table: t
        keys: [id]
        columns:
          - { name: id, type: INT4 }
          - { name: amount, type: NUMERIC, precision: 38, scale: 10 }
          - { name: n, type: INT8 }
          - { name: AR_H_CHANGE_SEQ, type: STRING }
      - schema: s
        table: u
        keys: [id]
"#;

fn typed_parquet(columns: Vec<(&str, ArrayRef)>) -> Vec<u8> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    // Compressed as DMS does, so a file can be far smaller than the data it declares.
    let props = ::parquet::file::properties::WriterProperties::builder()
        .set_compression(::parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    let mut buf = Vec::new();
    let mut w = ::parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    buf
}

#[test]
fn equal_change_seqs_end_as_the_last_row_in_csv_and_parquet() {
    let cfg = config_with(TYPED);
    // Three changes of key 1 in one transaction share one AR_H_CHANGE_SEQ; key 2 shows the
    // sequence still decides when it differs.
    let seq = "20240528195141380000000000000000061";
    let text = format!(
        "I,1,1.5,10,{seq}\nU,1,2.5,20,{seq}\nU,2,9,1,20240528195141380000000000000000070\nU,1,3.5,30,{seq}\nU,2,8,1,20240528195141380000000000000000069\n"
    );
    let b = one(&cfg, "typed/s/t/20240528-195141380.csv", text.as_bytes());
    assert_eq!(
        sorted_rows(&b, &["id", "n"]),
        vec![vec![s("1"), s("30")], vec![s("2"), s("1")]]
    );
    // Parquet: both dedup passes (integer and text keys take different indexes).
    let seqs = StringArray::from(vec![seq, seq, "20240528195141380000000000000000070", seq]);
    for text_key in [false, true] {
        let ids: ArrayRef = if text_key {
            Arc::new(StringArray::from(vec!["1", "1", "2", "1"]))
        } else {
            Arc::new(Int32Array::from(vec![1, 1, 2, 1]))
        };
        let bytes = typed_parquet(vec![
            ("Op", Arc::new(StringArray::from(vec!["I", "U", "U", "U"]))),
            ("id", ids),
            ("n", Arc::new(Int64Array::from(vec![10, 20, 1, 30]))),
            ("AR_H_CHANGE_SEQ", Arc::new(seqs.clone())),
        ]);
        // Table u has no configured columns: its text key stays text.
        let table = if text_key { "u" } else { "t" };
        let b = one(&cfg, &format!("typed/s/{table}/20240528-195141380.parquet"), &bytes);
        assert_eq!(
            sorted_rows(&b, &["id", "n"]),
            vec![vec![s("1"), s("30")], vec![s("2"), s("1")]],
            "text key: {text_key}"
        );
    }
}

#[test]
fn digits_beyond_the_configured_scale_are_refused_not_cut() {
    let cfg = config_with(TYPED);
    let e = err(
        &cfg,
        "typed/s/t/20240528-195141380.csv",
        b"I,1,0.0000000001,1,\nI,2,0.00000000019,1,\n",
    );
    assert_eq!(e.kind, BadInputKind::BadValue, "{}", e.reason);
    for needle in ["line 2", "`amount`", "11 digits", "scale is 10", "`scale`"] {
        assert!(e.reason.contains(needle), "{} lacks {needle}", e.reason);
    }
    // Trailing zeros beyond the scale lose nothing.
    let b = one(&cfg, "typed/s/t/20240528-195141380.csv", b"I,1,0.100000000000000,1,\n");
    assert_eq!(
        col(&b, "amount").as_primitive::<Decimal128Type>().value(0),
        1_000_000_000
    );
    // Text in a Parquet file is parsed by the same rule.
    let bytes = typed_parquet(vec![
        ("id", Arc::new(Int32Array::from(vec![1, 2]))),
        ("amount", Arc::new(StringArray::from(vec!["1.25", "0.00000000019"]))),
    ]);
    let e = err(&cfg, "typed/s/t/20240528-195141380.parquet", &bytes);
    assert_eq!(e.kind, BadInputKind::BadValue, "{}", e.reason);
    assert!(
        e.reason.contains("row 2") && e.reason.contains("11 digits"),
        "{}",
        e.reason
    );
}

#[test]
fn parquet_columns_take_the_configured_type_or_are_refused() {
    let cfg = config_with(TYPED);
    let key = "typed/s/t/20240528-195141380.parquet";
    // Lossless: INT32 into INT8 (BIGINT), DECIMAL(10,2) into NUMERIC(38,10), text parsed.
    let bytes = typed_parquet(vec![
        ("id", Arc::new(Int32Array::from(vec![1, 2]))),
        (
            "amount",
            Arc::new(
                arrow::array::Decimal128Array::from(vec![125, -5])
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
        ),
        ("n", Arc::new(Int32Array::from(vec![7, 8]))),
    ]);
    let b = one(&cfg, key, &bytes);
    assert_eq!(col(&b, "n").data_type(), &DataType::Int64);
    assert_eq!(col(&b, "amount").data_type(), &DataType::Decimal128(38, 10));
    assert_eq!(
        sorted_rows(&b, &["id", "amount", "n"]),
        vec![
            vec![s("1"), s("1.2500000000"), s("7")],
            vec![s("2"), s("-0.0500000000"), s("8")]
        ]
    );
    let parsed = typed_parquet(vec![
        ("id", Arc::new(StringArray::from(vec!["1", "2"]))),
        ("n", Arc::new(StringArray::from(vec![Some("42"), None]))),
    ]);
    let b = one(&cfg, key, &parsed);
    assert_eq!(col(&b, "id").data_type(), &DataType::Int32);
    assert_eq!(
        sorted_rows(&b, &["id", "n"]),
        vec![vec![s("1"), s("42")], vec![s("2"), None]]
    );
    // Lossy: BIGINT into INT4, a wider scale into a narrower one, a float into BIGINT.
    let lossy: Vec<(&str, ArrayRef, &str)> = vec![
        ("id", Arc::new(Int64Array::from(vec![1])), "Int64"),
        (
            "amount",
            Arc::new(
                arrow::array::Decimal128Array::from(vec![19])
                    .with_precision_and_scale(38, 12)
                    .unwrap(),
            ),
            "Decimal128(38, 12)",
        ),
        ("n", Arc::new(arrow::array::Float64Array::from(vec![1.5])), "Float64"),
    ];
    for (name, array, found) in lossy {
        let mut cols: Vec<(&str, ArrayRef)> = vec![(name, array)];
        if name != "id" {
            cols.insert(0, ("id", Arc::new(Int32Array::from(vec![1]))));
        }
        let e = err(&cfg, key, &typed_parquet(cols));
        assert_eq!(e.kind, BadInputKind::IncompatibleSchema, "{}", e.reason);
        for needle in [
            format!("`{name}`"),
            found.to_string(),
            "configured type".into(),
            "`type`".into(),
        ] {
            assert!(e.reason.contains(&needle), "{} lacks {needle}", e.reason);
        }
    }
    // Text that does not parse names its row.
    let bad = typed_parquet(vec![
        ("id", Arc::new(Int32Array::from(vec![1, 2]))),
        ("n", Arc::new(StringArray::from(vec!["1", "many"]))),
    ]);
    let e = err(&cfg, key, &bad);
    assert_eq!(e.kind, BadInputKind::BadValue);
    assert!(e.reason.contains("row 2") && e.reason.contains("`n`"), "{}", e.reason);
}

#[test]
fn quoted_empty_strings_stay_strings_and_empty_text_keys_are_accepted() {
    let cfg = config_with("");
    // name: `""` is an empty string, nothing is NULL; salary (a number): `""` is NULL.
    let text = "I,1,\"\",\"\",,,\nI,2,,,,,\n";
    let b = one(&cfg, "raw/hr/emp/20240528-195141380.csv", text.as_bytes());
    assert_eq!(
        sorted_rows(&b, &["id", "name", "salary"]),
        vec![vec![s("1"), s(""), None], vec![s("2"), None, None]]
    );
    // A text key is never NULL at the source: empty, quoted or not, is the empty string.
    let b = one(
        &cfg,
        "raw/hr/dept/20240528-195141380.csv",
        b"I,,Sales\nU,\"\",Ops\nI,D1,\n",
    );
    assert_eq!(
        sorted_rows(&b, &["code", "title", OP]),
        vec![vec![s(""), s("Ops"), s("U")], vec![s("D1"), None, s("I")]]
    );
    // A number key cannot be empty; the report says why.
    let e = err(&cfg, "raw/hr/emp/20240528-195141380.csv", b"I,,a,1,,,\n");
    assert_eq!(e.kind, BadInputKind::MissingKey);
    assert!(e.reason.contains("cannot be NULL"), "{}", e.reason);
    // With a NULL sentinel, the sentinel in a key column is refused and empty text is a value.
    let cfg = config_with(
        r#"
  - name: nv
    bucket: dms
    bucket_folder: nv
    csv: { null_value: "NULL" }
    tables:
      - schema: s
        table: t
        keys: [k]
        columns:
          - { name: k, type: STRING }
          - { name: v, type: STRING }
"#,
    );
    let b = one(&cfg, "nv/s/t/20240528-195141380.csv", b"I,,NULL\nI,a,\"\"\n");
    assert_eq!(
        sorted_rows(&b, &["k", "v"]),
        vec![vec![s(""), None], vec![s("a"), s("")]]
    );
    let e = err(&cfg, "nv/s/t/20240528-195141380.csv", b"I,NULL,x\n");
    assert_eq!(e.kind, BadInputKind::MissingKey);
    assert!(e.reason.contains("csv.null_value"), "{}", e.reason);
}

#[test]
fn a_headerless_field_count_report_says_what_was_found_and_expected() {
    let cfg = config_with("");
    // Op + 5 values where the 6 configured columns need 6.
    let e = err(&cfg, "raw/hr/emp/20240528-195141380.csv", b"I,1,a,1,,\n");
    assert_eq!(e.kind, BadInputKind::FieldCount);
    for needle in [
        "the first row has 6 fields: Op + 5 values",
        "table hr.emp has 6 configured columns",
        "needs 6 fields (full load) or Op + 6 = 7",
        "must list the source table's current columns",
    ] {
        assert!(e.reason.contains(needle), "{} lacks {needle}", e.reason);
    }
    // A later row differs from the first.
    let e = err(&cfg, "raw/hr/emp/20240528-195141380.csv", b"I,1,a,1,,,\nI,2,b,1,,\n");
    for needle in ["line 2", "has 6 fields", "have 7, Op included", "first row"] {
        assert!(e.reason.contains(needle), "{} lacks {needle}", e.reason);
    }
}

#[test]
fn parquet_over_the_limits_is_refused_naming_the_setting() {
    let cfg = config_with("limits:\n  max_inflated_bytes: 100000\n");
    let big = "x".repeat(200_000);
    let bytes = typed_parquet(vec![
        ("id", Arc::new(Int64Array::from(vec![1, 2]))),
        ("v", Arc::new(StringArray::from(vec![big.as_str(), "small"]))),
    ]);
    // Compressed, the file is small; its footer declares what it inflates to.
    assert!(bytes.len() < 100_000, "{}", bytes.len());
    let e = err(&cfg, "raw/hr/pq/20240528-195141380.parquet", &bytes);
    assert_eq!(e.kind, BadInputKind::TooLarge);
    for needle in ["limits.max_inflated_bytes", "100000", "column `v`"] {
        assert!(e.reason.contains(needle), "{} lacks {needle}", e.reason);
    }
    // Within the file limit, a value over the field limit (1024 in these tests) is refused.
    let cfg = config_with("");
    let bytes = typed_parquet(vec![
        ("id", Arc::new(Int64Array::from(vec![1, 2]))),
        ("v", Arc::new(StringArray::from(vec!["small", &"y".repeat(2000)]))),
    ]);
    let e = err(&cfg, "raw/hr/pq/20240528-195141380.parquet", &bytes);
    assert_eq!(e.kind, BadInputKind::TooLarge);
    assert!(
        e.reason.contains("row 2") && e.reason.contains("limits.max_field_bytes"),
        "{}",
        e.reason
    );
}

#[test]
fn csv_over_the_limits_is_refused_naming_the_setting() {
    let cfg = config_with("limits:\n  max_inflated_bytes: 5000\n");
    let rows: String = (0..1000).map(|i| format!("I,{i},a,1,,,\n")).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(rows.as_bytes()).unwrap();
    let e = err(&cfg, "raw/hr/emp/20240528-195141380.csv.gz", &gz.finish().unwrap());
    assert_eq!(e.kind, BadInputKind::TooLarge);
    assert!(
        e.reason.contains("5000 bytes of CSV text once inflated"),
        "{}",
        e.reason
    );
    assert!(e.reason.contains("limits.max_inflated_bytes"), "{}", e.reason);
    // The record limit (4 x the field limit unless set) stops a row of many small fields.
    let cfg = config_with("limits:\n  max_record_bytes: 3000\n  max_field_bytes: 100\n");
    let wide = format!("I,1,{}\n", "ab,".repeat(2000));
    let e = err(&cfg, "raw/hr/emp/20240528-195141380.csv", wide.as_bytes());
    assert_eq!(e.kind, BadInputKind::TooLarge);
    assert!(e.reason.contains("limits.max_record_bytes"), "{}", e.reason);
}

#[test]
fn limits_that_contradict_each_other_are_refused_at_load() {
    let e = Config::from_text(&format!(
        "{CONFIG}limits:\n  max_field_bytes: 1000\n  max_record_bytes: 999\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("limits.max_record_bytes"), "{e}");
    let e = Config::from_text(&format!("{CONFIG}limits:\n  max_inflated_bytes: 0\n")).unwrap_err();
    assert!(e.to_string().contains("limits.max_inflated_bytes"), "{e}");
}
