use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};

use super::dedup::{Index, RowRef, COMPACT_MIN_ROWS};
use super::int_keys::radix_sort_by_key;
use super::*;
use crate::error::BadInputKind;
use crate::generation::Anchor;
use crate::types::UTC;
use arrow::array::{Int64Array, TimestampMicrosecondArray};

#[test]
fn a_file_without_change_seqs_sits_between_the_changes_before_and_after_its_name() {
    let mut row = String::new();
    Sequence::file_for(&mut row, "202405281100000000", 2, true);
    assert_eq!(row, "1S2024052811000000:00:000000000002");
    let mut before = String::new();
    Sequence::change_seq(&mut before, "20240528110000009999999999999999999").unwrap();
    let mut after = String::new();
    Sequence::change_seq(&mut after, "20240528110000010000000000000000001").unwrap();
    assert!(before < row && row < after, "{before} < {row} < {after}");
    // Below a reload anchored at the same instant.
    let anchor = Anchor::after(crate::generation::SeqKind::ChangeSeq, "202405281100000000").unwrap();
    assert!(row.as_str() < anchor.as_str());
    let mut plain = String::new();
    Sequence::file_for(&mut plain, "202405281100000000", 2, false);
    assert_eq!(plain, "1F202405281100000000:000000000002");
    assert_eq!(
        Sequence::file_prefix_for("202405281100000000", true),
        "1S2024052811000000:00:"
    );
}

/// A change batch with columns id, v and the metadata columns.
pub fn batch(rows: &[(i64, Option<&str>, &str, &str, Option<&str>)]) -> RecordBatch {
    let mut fields = vec![
        Field::new("id", DataType::Int64, true),
        Field::new("v", DataType::Utf8, true),
    ];
    fields.extend(meta_fields());
    let schema = Arc::new(Schema::new(fields));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
        Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
        Arc::new(StringArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
        Arc::new(StringArray::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
        Arc::new(TimestampMicrosecondArray::from(vec![None; rows.len()]).with_timezone(UTC)),
        source_file_column("f", rows.len()).unwrap(),
        Arc::new(StringArray::from(rows.iter().map(|r| r.4).collect::<Vec<_>>())),
    ];
    RecordBatch::try_new(schema, cols).unwrap()
}

fn rows(b: &RecordBatch) -> Vec<(i64, Option<String>, String, Option<String>)> {
    // Text keys (see `text_keys`) are read back as the integers they were made from.
    let id = arrow::compute::cast(b.column(0), &DataType::Int64).unwrap();
    let id = id.as_primitive::<arrow::datatypes::Int64Type>();
    let v = b.column(1).as_string::<i32>();
    let op = b.column(2).as_string::<i32>();
    let ns = b.column(6).as_string::<i32>();
    let mut out: Vec<_> = (0..b.num_rows())
        .map(|i| {
            (
                id.value(i),
                (!v.is_null(i)).then(|| v.value(i).to_string()),
                op.value(i).to_string(),
                (!ns.is_null(i)).then(|| ns.value(i).to_string()),
            )
        })
        .collect();
    out.sort();
    out
}

fn dedup(batches: Vec<RecordBatch>) -> Vec<(i64, Option<String>, String, Option<String>)> {
    let mut d = Deduper::new(batches[0].schema(), &["id".to_string()]).unwrap();
    for b in batches {
        d.push(b).unwrap();
    }
    rows(&d.finish().unwrap().unwrap())
}

#[test]
fn highest_sequence_per_key_survives() {
    // I, U, D, I on one key in one file ends as the final I.
    let b = batch(&[
        (497, Some("a"), "I", "1F1:01", None),
        (497, Some("b"), "U", "1F1:02", None),
        (1, Some("x"), "I", "1F1:03", None),
        (497, None, "D", "1F1:04", None),
        (497, Some("c"), "I", "1F1:05", None),
    ]);
    assert_eq!(
        dedup(vec![b]),
        vec![
            (1, Some("x".into()), "I".into(), None),
            (497, Some("c".into()), "I".into(), None)
        ]
    );
}

/// `b` with its key column as text, so the deduper takes its hash-map index.
fn text_keys(b: &RecordBatch) -> RecordBatch {
    let mut fields: Vec<Field> = b.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[0] = Field::new("id", DataType::Utf8, true);
    let mut cols = b.columns().to_vec();
    cols[0] = arrow::compute::cast(&cols[0], &DataType::Utf8).unwrap();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
}

#[test]
fn equal_sequences_break_by_position_in_both_indexes() {
    // One transaction's changes to one key share an AR_H_CHANGE_SEQ: the last row wins,
    // within a batch and across batches, with integer and text keys.
    let first = batch(&[
        (7, Some("a"), "I", "1S5", None),
        (7, Some("b"), "U", "1S5", None),
        (8, Some("x"), "U", "1S5", None),
    ]);
    let second = batch(&[(7, Some("c"), "U", "1S5", None), (8, Some("y"), "U", "1S4", None)]);
    let want = vec![
        (7, Some("c".into()), "U".into(), None),
        (8, Some("x".into()), "U".into(), None),
    ];
    assert_eq!(dedup(vec![first.clone(), second.clone()]), want);
    assert_eq!(dedup(vec![text_keys(&first), text_keys(&second)]), want);
    assert_eq!(dedup(vec![first.clone()])[0].1.as_deref(), Some("b"));
    assert_eq!(dedup(vec![text_keys(&first)])[0].1.as_deref(), Some("b"));
    // A no-sup winner takes the column from the latest older row of its sequence.
    let fills = batch(&[
        (1, Some("old"), "U", "1S5", None),
        (1, Some("newer"), "U", "1S5", None),
        (1, None, "U", "1S5", Some("|v|")),
    ]);
    assert_eq!(dedup(vec![fills.clone()])[0].1.as_deref(), Some("newer"));
    assert_eq!(dedup(vec![text_keys(&fills)])[0].1.as_deref(), Some("newer"));
}

#[test]
fn equal_sequences_break_by_position_across_compactions() {
    // Enough rows that the deduper compacts (renumbering its rows) several times.
    for text in [false, true] {
        let mut d: Option<Deduper> = None;
        for round in 0..6 {
            let values: Vec<String> = (0..100_000).map(|i| format!("{round}:{i}")).collect();
            let data: Vec<(i64, Option<&str>, &str, &str, Option<&str>)> = (0..100_000)
                .map(|i| ((i % 1000) as i64, Some(values[i].as_str()), "U", "1S1", None))
                .collect();
            let b = if text { text_keys(&batch(&data)) } else { batch(&data) };
            d.get_or_insert_with(|| Deduper::new(b.schema(), &["id".to_string()]).unwrap())
                .push(b)
                .unwrap();
        }
        let out = rows(&d.unwrap().finish().unwrap().unwrap());
        assert_eq!(out.len(), 1000);
        for (id, v, ..) in out {
            assert_eq!(v, Some(format!("5:{}", 99_000 + id)), "text keys: {text}");
        }
    }
}

#[test]
fn order_of_arrival_does_not_matter() {
    let a = batch(&[(1, Some("new"), "U", "1S2", None), (2, None, "D", "1S5", None)]);
    let b = batch(&[(1, Some("old"), "I", "1S1", None), (2, Some("z"), "I", "1S4", None)]);
    let fwd = dedup(vec![a.clone(), b.clone()]);
    let back = dedup(vec![b, a]);
    assert_eq!(fwd, back);
    assert_eq!(
        fwd,
        vec![(1, Some("new".into()), "U".into(), None), (2, None, "D".into(), None)]
    );
}

#[test]
fn nosup_columns_keep_the_older_value_within_the_set() {
    // The newest change did not log `v`: its value comes from the newest older change.
    let b = batch(&[
        (1, Some("first"), "I", "1F1:01", None),
        (1, Some("second"), "U", "1F1:02", None),
        (1, None, "U", "1F1:03", Some("|v|")),
        (2, None, "U", "1F1:04", Some("|v|")),
    ]);
    assert_eq!(
        dedup(vec![b.clone()]),
        vec![
            (1, Some("second".into()), "U".into(), None),
            (2, None, "U".into(), Some("|v|".into()))
        ]
    );
    // The same when the older changes arrive after the winner.
    let newest = batch(&[(1, None, "U", "1F1:03", Some("|v|"))]);
    let older = batch(&[
        (1, Some("second"), "U", "1F1:02", None),
        (1, Some("first"), "I", "1F1:01", None),
    ]);
    assert_eq!(
        dedup(vec![newest, older]),
        vec![(1, Some("second".into()), "U".into(), None)]
    );
}

#[test]
fn compaction_keeps_results_and_bounds_memory() {
    let mut d = Deduper::new(batch(&[(0, None, "I", "0", None)]).schema(), &["id".to_string()]).unwrap();
    let mut n = 0u64;
    for round in 0..40 {
        let seqs: Vec<String> = (0..10_000).map(|i| format!("1F{round:04}:{i:012}")).collect();
        let data: Vec<(i64, Option<&str>, &str, &str, Option<&str>)> = (0..10_000)
            .map(|i| ((i % 1000) as i64, Some("v"), "U", seqs[i].as_str(), None))
            .collect();
        d.push(batch(&data)).unwrap();
        n += 10_000;
        assert!(d.retained <= COMPACT_MIN_ROWS + 10_000, "retained {}", d.retained);
    }
    assert_eq!(d.rows_in(), n);
    let out = d.finish().unwrap().unwrap();
    assert_eq!(out.num_rows(), 1000);
    let seq = out.column(3).as_string::<i32>();
    assert!(seq.iter().all(|s| s.unwrap().starts_with("1F0039:")));
}

#[test]
fn null_keys_are_refused() {
    let mut fields = vec![
        Field::new("id", DataType::Int64, true),
        Field::new("v", DataType::Utf8, true),
    ];
    fields.extend(meta_fields());
    let b = batch(&[(1, None, "I", "1", None)]);
    let mut cols = b.columns().to_vec();
    cols[0] = Arc::new(Int64Array::from(vec![None::<i64>]));
    let b = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    let mut d = Deduper::new(b.schema(), &["id".to_string()]).unwrap();
    assert_eq!(d.push(b).unwrap_err().kind, BadInputKind::MissingKey);
}

#[test]
fn row_numbers_are_padded_like_format() {
    for row in [0, 1, 9, 10, 12_345, 999_999_999_999, 1_000_000_000_000, u64::MAX] {
        let mut out = String::new();
        Sequence::file(&mut out, "202405281951413800", row);
        assert_eq!(out, format!("1F202405281951413800:{row:012}"));
        Sequence::load(&mut out, "LOAD0000000A", row);
        assert_eq!(out, format!("0LLOAD0000000A:{row:012}"));
    }
}

#[test]
fn positional_sequences_equal_the_row_by_row_ones() {
    let rows = [1u64, 2, 99, 1_000_000_000_000, 7];
    let mut one = String::new();
    let a = Sequence::positional(&Sequence::file_prefix("202405281951413800"), rows.iter().copied()).unwrap();
    let b = Sequence::positional(&Sequence::load_prefix("LOAD00000001"), rows.iter().copied()).unwrap();
    for (i, &row) in rows.iter().enumerate() {
        Sequence::file(&mut one, "202405281951413800", row);
        assert_eq!(a.value(i), one);
        Sequence::load(&mut one, "LOAD00000001", row);
        assert_eq!(b.value(i), one);
    }
    let c = Sequence::positional(
        &Sequence::load_prefix_in(None, Some("p_2024"), "LOAD00000001"),
        rows.iter().copied(),
    )
    .unwrap();
    for (i, &row) in rows.iter().enumerate() {
        Sequence::load_in(&mut one, None, Some("p_2024"), "LOAD00000001", row);
        assert_eq!(c.value(i), one);
    }
}

#[test]
fn parallel_load_partitions_never_share_sequences_and_stay_below_cdc() {
    let mut cdc = String::new();
    Sequence::file(&mut cdc, "000101010000000000", 1);
    let mut lowest_change_seq = String::new();
    Sequence::change_seq(&mut lowest_change_seq, "0").unwrap();
    let mut seen = std::collections::HashSet::new();
    // Partition names as a source may spell them, including ones that sort high as text.
    for folder in [
        None,
        Some("p1"),
        Some("p2"),
        Some("zzz"),
        Some("~~"),
        Some("2024/05/28"),
    ] {
        for stem in ["LOAD00000001", "LOAD00000002", "SEGMENT1_LOAD00000001"] {
            for row in [1, 2] {
                let mut s = String::new();
                Sequence::load_in(&mut s, None, folder, stem, row);
                assert!(s < cdc && s < lowest_change_seq, "{s}");
                assert!(seen.insert(s.clone()), "{s} twice");
            }
        }
    }
    // A file in the table folder keeps the sequences it always had.
    let (mut plain, mut none) = (String::new(), String::new());
    Sequence::load(&mut plain, "LOAD00000001", 3);
    Sequence::load_in(&mut none, None, None, "LOAD00000001", 3);
    assert_eq!(plain, none);
}

#[test]
fn last_row_per_key_keeps_each_keys_last_position_in_order() {
    // Dense keys (slots), keys of both signs and sparse keys (sorted), over enough rows to
    // squash several times on the way.
    let kinds: [fn(&mut fastrand::Rng) -> i64; 3] = [
        |r| r.i64(1..100_000),
        |r| r.i64(-50_000..50_000),
        |r| r.i64(..) / 1_000_000 * 1_000_000 + r.i64(0..3),
    ];
    for (kind, gen) in kinds.iter().enumerate() {
        let mut rng = fastrand::Rng::with_seed(kind as u64);
        let mut last = LastRowPerKey::default();
        let mut want = std::collections::HashMap::new();
        let mut pos = 0u64;
        for _ in 0..20 {
            let keys: Vec<i64> = (0..60_000).map(|_| gen(&mut rng)).collect();
            for (i, k) in keys.iter().enumerate() {
                want.insert(*k, pos + i as u64);
            }
            let col: ArrayRef = Arc::new(Int64Array::from(keys));
            last.push(&col, pos).unwrap();
            pos += 60_000;
        }
        assert_eq!(last.rows_in(), pos);
        let got = last.finish();
        let mut expected: Vec<u64> = want.into_values().collect();
        expected.sort_unstable();
        assert_eq!(got, expected, "keys of kind {kind}");
    }
}

#[test]
fn long_and_short_keys_dedup_alike() {
    // A key longer than INLINE_KEY bytes in the row format is stored on the heap.
    let long = "k".repeat(100);
    let schema = Arc::new(Schema::new(
        [Field::new("id", DataType::Utf8, true)]
            .into_iter()
            .chain(meta_fields())
            .collect::<Vec<_>>(),
    ));
    let b = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![long.as_str(), "a", long.as_str(), "a"])),
            Arc::new(StringArray::from(vec!["I", "I", "U", "D"])),
            Arc::new(StringArray::from(vec!["1F1:01", "1F1:02", "1F1:03", "1F1:04"])),
            Arc::new(TimestampMicrosecondArray::from(vec![None; 4]).with_timezone(UTC)),
            source_file_column("f", 4).unwrap(),
            Arc::new(StringArray::from(vec![None::<&str>; 4])),
        ],
    )
    .unwrap();
    let mut d = Deduper::new(schema, &["id".to_string()]).unwrap();
    d.push(b).unwrap();
    let out = d.finish().unwrap().unwrap();
    let ids: Vec<&str> = out.column(0).as_string::<i32>().iter().map(|v| v.unwrap()).collect();
    let ops: Vec<&str> = out.column(1).as_string::<i32>().iter().map(|v| v.unwrap()).collect();
    assert_eq!((ids, ops), (vec![long.as_str(), "a"], vec!["U", "D"]));
}

/// The same changes with the key as text (row-format keys in a hash map) and as an integer
/// (sorted keys), over several batches, with no-sup columns, out-of-order arrival and
/// deletes: the two indexes must agree row for row, and declaring rows in sequence order
/// must change nothing when they are.
#[test]
fn integer_and_text_keys_dedup_alike() {
    for case in 0..60u64 {
        let mut rng = fastrand::Rng::with_seed(case);
        let in_order = case % 2 == 0;
        let keys = 1 + rng.u64(1..200) as i64;
        let mut next_seq = 0u64;
        let mut batches = Vec::new();
        for _ in 0..rng.usize(1..6) {
            let n = rng.usize(1..300);
            let seqs: Vec<String> = (0..n)
                .map(|_| {
                    next_seq += 1;
                    let s = if in_order { next_seq } else { rng.u64(0..1_000_000) };
                    format!("1F9:{s:012}")
                })
                .collect();
            let vals: Vec<String> = (0..n).map(|i| format!("v{case}-{i}-{}", rng.u32(..))).collect();
            let rows: Vec<(i64, Option<&str>, &str, &str, Option<&str>)> = (0..n)
                .map(|i| {
                    let op = ["I", "U", "U", "D"][rng.usize(0..4)];
                    let nosup = (op == "U" && rng.u8(0..4) == 0).then_some("|v|");
                    let v = (nosup.is_none() && op != "D").then_some(vals[i].as_str());
                    (rng.i64(-keys..keys), v, op, seqs[i].as_str(), nosup)
                })
                .collect();
            batches.push(batch(&rows));
        }
        let as_text: Vec<RecordBatch> = batches
            .iter()
            .map(|b| {
                let mut fields: Vec<Field> = b.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
                fields[0] = Field::new("id", DataType::Utf8, true);
                let mut cols = b.columns().to_vec();
                cols[0] = arrow::compute::cast(&cols[0], &DataType::Utf8).unwrap();
                RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
            })
            .collect();
        let run = |bs: &[RecordBatch], ordered: bool| {
            let mut d = Deduper::new(bs[0].schema(), &["id".to_string()])
                .unwrap()
                .with_rows_in_sequence_order(ordered);
            assert_eq!(
                matches!(d.index, Index::Int { .. }),
                bs[0].schema().field(0).data_type() == &DataType::Int64
            );
            for b in bs {
                d.push(b.clone()).unwrap();
            }
            let out = d.finish().unwrap().unwrap();
            let mut cols = out.columns().to_vec();
            cols[0] = arrow::compute::cast(&cols[0], &DataType::Utf8).unwrap();
            let v = |c: usize, r: usize| {
                let a = cols[c].as_string::<i32>();
                (!a.is_null(r)).then(|| a.value(r).to_string())
            };
            let mut rows: Vec<_> = (0..out.num_rows())
                .map(|r| (v(0, r), v(1, r), v(2, r), v(3, r), v(6, r)))
                .collect();
            rows.sort();
            rows
        };
        let text = run(&as_text, false);
        assert_eq!(run(&batches, false), text, "case {case}");
        if in_order {
            assert_eq!(run(&batches, true), text, "case {case}, in order");
        }
    }
}

#[test]
fn radix_sort_is_stable_and_sorts_any_bits() {
    let mut rng = fastrand::Rng::with_seed(7);
    for spread in [0u64, 1, 255, 1 << 20, u64::MAX] {
        let mut rows: Vec<(u64, RowRef)> = (0..5000)
            .map(|i| {
                let k = if spread == 0 { 42 } else { rng.u64(0..=spread) } ^ (1 << 63);
                (k, RowRef { batch: 0, row: i })
            })
            .collect();
        let mut want = rows.clone();
        want.sort_by_key(|r| r.0);
        radix_sort_by_key(&mut rows);
        assert_eq!(rows, want, "spread {spread}");
    }
}

#[test]
fn sequences_order_as_text() {
    let (mut a, mut b, mut c, mut d) = (String::new(), String::new(), String::new(), String::new());
    Sequence::load(&mut a, "LOAD0000000A", 99);
    Sequence::file(&mut b, "202405281951413800", 1);
    Sequence::file(&mut c, "202405281951413800", 10);
    Sequence::change_seq(&mut d, "20240528195141380000000000000000061").unwrap();
    assert!(a < b && b < c);
    assert_eq!(d.len(), 37);
    let mut short = String::new();
    Sequence::change_seq(&mut short, "61").unwrap();
    assert!(short < d);
    assert!(Sequence::change_seq(&mut short, "12a").is_err());
}
