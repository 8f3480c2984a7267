//! Change sets: plain Arrow data plus metadata columns, and the deduplication that keeps only the
//! highest-sequence change per key. They know nothing about Delta tables.

use std::collections::hash_map::{self, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch, StringArray};
use arrow::compute::{concat, interleave, FilterBuilder, FilterPredicate};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};

use crate::error::{BadInputKind, InputProblem};
use crate::types::UTC;

/// `I`, `U` or `D`.
pub const OP: &str = "_dms_op";
/// The change's sequence: a string whose text order is the change order (see [`Sequence`]).
pub const SEQ: &str = "_dms_seq";
/// The source commit time, when known.
pub const COMMIT_TS: &str = "_dms_commit_ts";
/// The DMS object the change came from.
pub const SOURCE_FILE: &str = "_dms_source_file";
/// Columns the source did not log (DMS's no-sup value), as `|a|b|`: keep the table's old value.
pub const NOSUP: &str = "_dms_nosup";

/// The metadata columns every change set ends with, in this order.
pub fn meta_fields() -> Vec<Field> {
    vec![
        Field::new(OP, DataType::Utf8, false),
        Field::new(SEQ, DataType::Utf8, false),
        Field::new(
            COMMIT_TS,
            DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            true,
        ),
        Field::new(SOURCE_FILE, DataType::Utf8, false),
        Field::new(NOSUP, DataType::Utf8, true),
    ]
}

pub fn is_meta(name: &str) -> bool {
    matches!(name, OP | SEQ | COMMIT_TS | SOURCE_FILE | NOSUP)
}

/// Builds sequence strings. Text order equals change order:
/// - full-load rows: `0L<file stem>:<row>`, below every CDC change;
/// - CDC rows with `$AR_H_CHANGE_SEQ`: `1S<35 digits>`;
/// - other CDC rows: `1F<18 digits of the file name's UTC time>:<row>`.
///
/// Row numbers are 12 digits, so text order is numeric order.
#[derive(Debug, Clone)]
pub struct Sequence;

impl Sequence {
    pub fn load(out: &mut String, stem: &str, row: u64) {
        out.clear();
        out.push_str("0L");
        out.push_str(stem);
        out.push(':');
        push_row(out, row);
    }

    pub fn file(out: &mut String, time_digits: &str, row: u64) {
        out.clear();
        out.push_str("1F");
        out.push_str(time_digits);
        out.push(':');
        push_row(out, row);
    }

    /// `$AR_H_CHANGE_SEQ`: 35 digits, left-padded when a shorter number arrives.
    pub fn change_seq(out: &mut String, value: &str) -> Result<(), String> {
        let v = value.trim();
        if v.is_empty() || v.len() > 35 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{value}` is not an AR_H_CHANGE_SEQ (up to 35 digits)"));
        }
        out.clear();
        out.push_str("1S");
        for _ in v.len()..35 {
            out.push('0');
        }
        out.push_str(v);
        Ok(())
    }
}

/// Appends `row` zero-padded to 12 digits, as `{row:012}` would (called once per decoded row, so
/// without the formatting machinery).
fn push_row(out: &mut String, row: u64) {
    let mut digits = [b'0'; 20];
    let mut v = row;
    let mut i = digits.len();
    while v > 0 {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    for &d in &digits[i.min(digits.len() - 12)..] {
        out.push(char::from(d));
    }
}

/// Parses a `|a|b|` no-sup list.
pub fn nosup_columns(v: &str) -> impl Iterator<Item = &str> {
    v.split('|').filter(|s| !s.is_empty())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RowRef {
    batch: u32,
    row: u32,
}

#[derive(Debug)]
struct Fill {
    col: usize,
    from: Option<RowRef>,
}

/// A key in the row format. Short keys (a single integer, date or timestamp key, or two of them)
/// are stored inline, so the key map needs no allocation per key and no pointer chase to compare
/// or rehash one.
#[derive(Debug)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

const INLINE_KEY: usize = 22;

impl Key {
    fn new(bytes: &[u8]) -> Key {
        if bytes.len() <= INLINE_KEY {
            let mut inline = [0u8; INLINE_KEY];
            inline[..bytes.len()].copy_from_slice(bytes);
            Key::Inline {
                len: bytes.len() as u8,
                bytes: inline,
            }
        } else {
            Key::Heap(bytes.into())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(b) => b,
        }
    }
}

// Equality and hash are those of the key bytes.
impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

#[derive(Debug)]
struct Entry {
    at: RowRef,
    /// Only for winners with no-sup columns: where each such column's value comes from.
    fills: Option<Box<[Fill]>>,
}

/// Keeps the highest-sequence change per key over a stream of batches of one schema, with
/// memory bounded by the deduplicated set: superseded rows are dropped as batches are compacted.
#[derive(Debug)]
pub struct Deduper {
    schema: SchemaRef,
    key_idx: Vec<usize>,
    op_idx: usize,
    seq_idx: usize,
    nosup_idx: usize,
    converter: RowConverter,
    batches: Vec<RecordBatch>,
    retained: usize,
    map: HashMap<Key, Entry, foldhash::fast::RandomState>,
    rows_in: u64,
}

const COMPACT_MIN_ROWS: usize = 256 * 1024;

impl Deduper {
    /// `keys` name the key columns of `schema`, which must end with the metadata columns.
    pub fn new(schema: SchemaRef, keys: &[String]) -> Result<Deduper, InputProblem> {
        let idx = |name: &str| {
            schema
                .index_of(name)
                .map_err(|_| InputProblem::new(BadInputKind::MissingKey, format!("column `{name}` is missing")))
        };
        let key_idx = keys.iter().map(|k| idx(k)).collect::<Result<Vec<_>, _>>()?;
        let fields = key_idx
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields)
            .map_err(|e| InputProblem::new(BadInputKind::BadValue, format!("key columns cannot be compared: {e}")))?;
        Ok(Deduper {
            op_idx: idx(OP)?,
            seq_idx: idx(SEQ)?,
            nosup_idx: idx(NOSUP)?,
            schema,
            key_idx,
            converter,
            batches: Vec::new(),
            retained: 0,
            map: HashMap::default(),
            rows_in: 0,
        })
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows pushed so far.
    pub fn rows_in(&self) -> u64 {
        self.rows_in
    }

    /// Distinct keys so far.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn push(&mut self, batch: RecordBatch) -> Result<(), InputProblem> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if batch.schema().fields() != self.schema.fields() {
            return Err(InputProblem::new(
                BadInputKind::IncompatibleSchema,
                "a batch's columns differ from the change set's",
            ));
        }
        for &k in &self.key_idx {
            if batch.column(k).null_count() > 0 {
                return Err(InputProblem::new(
                    BadInputKind::MissingKey,
                    format!("key column `{}` is null", self.schema.field(k).name()),
                ));
            }
        }
        let keys: Vec<ArrayRef> = self.key_idx.iter().map(|&i| batch.column(i).clone()).collect();
        let rows = self
            .converter
            .convert_columns(&keys)
            .map_err(|e| InputProblem::new(BadInputKind::BadValue, e.to_string()))?;
        let b = u32::try_from(self.batches.len())
            .map_err(|_| InputProblem::new(BadInputKind::TooLarge, "too many batches"))?;
        self.rows_in += batch.num_rows() as u64;
        self.retained += batch.num_rows();
        self.batches.push(batch);
        let n = self.batches[b as usize].num_rows();
        let ctx = Ctx {
            batches: &self.batches,
            schema: &self.schema,
            op: self.op_idx,
            seq: self.seq_idx,
            nosup: self.nosup_idx,
        };
        for r in 0..n {
            let at = RowRef {
                batch: b,
                row: r as u32,
            };
            // One hash and probe per row; only keys longer than INLINE_KEY allocate.
            match self.map.entry(Key::new(rows.row(r).as_ref())) {
                hash_map::Entry::Vacant(slot) => {
                    let fills = ctx.initial_fills(at);
                    slot.insert(Entry { at, fills });
                }
                hash_map::Entry::Occupied(mut slot) => {
                    let e = slot.get_mut();
                    if ctx.seq(at) > ctx.seq(e.at) {
                        let fills = ctx.replacement_fills(e, at);
                        e.at = at;
                        e.fills = fills;
                    } else if let Some(fills) = e.fills.as_mut() {
                        ctx.offer_older(fills, at);
                    }
                }
            }
        }
        if self.retained >= COMPACT_MIN_ROWS && self.retained >= 2 * self.map.len() {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the surviving rows into one batch and drops the rest.
    fn compact(&mut self) -> Result<(), InputProblem> {
        if self.map.is_empty() {
            return Ok(());
        }
        let batch = if self.any_fill() {
            self.build_with_fills()?
        } else {
            let survivors = self.survivors();
            gather(&self.schema, std::mem::take(&mut self.batches), &survivors)?
        };
        // The batch holds the survivors in (batch, row) order.
        let mut entries: Vec<&mut Entry> = self.map.values_mut().collect();
        entries.sort_by_key(|e| e.at);
        for (i, e) in entries.into_iter().enumerate() {
            e.at = RowRef {
                batch: 0,
                row: i as u32,
            };
            e.fills = None;
        }
        self.retained = batch.num_rows();
        self.batches = vec![batch];
        Ok(())
    }

    /// Whether some winner takes a no-sup column's value from another row.
    fn any_fill(&self) -> bool {
        self.map.values().any(|e| e.fills.is_some())
    }

    /// For each retained batch, which of its rows are winners.
    fn survivors(&self) -> Vec<BooleanArray> {
        let mut masks: Vec<BooleanBufferBuilder> = self
            .batches
            .iter()
            .map(|b| {
                let mut m = BooleanBufferBuilder::new(b.num_rows());
                m.append_n(b.num_rows(), false);
                m
            })
            .collect();
        for e in self.map.values() {
            masks[e.at.batch as usize].set_bit(e.at.row as usize, true);
        }
        masks
            .into_iter()
            .map(|mut m| BooleanArray::new(m.finish(), None))
            .collect()
    }

    /// The winners when some take no-sup columns from other rows: each column is gathered
    /// row by row from wherever its value comes from.
    fn build_with_fills(&self) -> Result<RecordBatch, InputProblem> {
        let mut entries: Vec<&Entry> = self.map.values().collect();
        entries.sort_by_key(|e| e.at);
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for c in 0..self.schema.fields().len() {
            let arrays: Vec<&dyn Array> = self.batches.iter().map(|b| b.column(c).as_ref()).collect();
            let col = if c == self.nosup_idx {
                let values: StringArray = entries
                    .iter()
                    .map(|e| match &e.fills {
                        Some(f) => {
                            let left: Vec<&str> = f
                                .iter()
                                .filter(|f| f.from.is_none())
                                .map(|f| self.schema.field(f.col).name().as_str())
                                .collect();
                            (!left.is_empty()).then(|| format!("|{}|", left.join("|")))
                        }
                        None => nosup_value(&self.batches, self.nosup_idx, e.at).map(str::to_string),
                    })
                    .collect();
                Arc::new(values) as ArrayRef
            } else {
                let idx: Vec<(usize, usize)> = entries
                    .iter()
                    .map(|e| {
                        let from = e
                            .fills
                            .as_ref()
                            .and_then(|f| f.iter().find(|f| f.col == c))
                            .and_then(|f| f.from)
                            .unwrap_or(e.at);
                        (from.batch as usize, from.row as usize)
                    })
                    .collect();
                interleave(&arrays, &idx).map_err(bad_value)?
            };
            columns.push(col);
        }
        RecordBatch::try_new(self.schema.clone(), columns).map_err(bad_value)
    }

    /// The deduplicated change set, in first-seen order of the surviving rows.
    pub fn finish(mut self) -> Result<Option<RecordBatch>, InputProblem> {
        if self.map.is_empty() {
            return Ok(None);
        }
        if self.any_fill() {
            return self.build_with_fills().map(Some);
        }
        let survivors = self.survivors();
        // Only the positions matter from here on: free the key map before building the output.
        self.map = HashMap::default();
        gather(&self.schema, std::mem::take(&mut self.batches), &survivors).map(Some)
    }
}

fn bad_value(e: ArrowError) -> InputProblem {
    InputProblem::new(BadInputKind::BadValue, e.to_string())
}

/// The rows of `batches` that `survivors` marks, in (batch, row) order: the order of sorting the
/// winners by position. Works column by column, releasing each input column once its output is
/// built.
fn gather(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    survivors: &[BooleanArray],
) -> Result<RecordBatch, InputProblem> {
    let predicates: Vec<FilterPredicate> = survivors
        .iter()
        .map(|m| FilterBuilder::new(m).optimize().build())
        .collect();
    let width = schema.fields().len();
    let mut inputs: Vec<Vec<ArrayRef>> = (0..width).map(|_| Vec::with_capacity(batches.len())).collect();
    for batch in batches {
        for (c, col) in batch.columns().iter().enumerate() {
            inputs[c].push(col.clone());
        }
    }
    let mut columns = Vec::with_capacity(width);
    for parts in &mut inputs {
        let parts = std::mem::take(parts);
        let kept = parts
            .iter()
            .zip(&predicates)
            .filter(|(_, p)| p.count() > 0)
            .map(|(a, p)| p.filter(a.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad_value)?;
        drop(parts);
        let kept: Vec<&dyn Array> = kept.iter().map(|a| a.as_ref()).collect();
        columns.push(concat(&kept).map_err(bad_value)?);
    }
    RecordBatch::try_new(schema.clone(), columns).map_err(bad_value)
}

fn nosup_value(batches: &[RecordBatch], idx: usize, at: RowRef) -> Option<&str> {
    let a = batches[at.batch as usize].column(idx).as_string::<i32>();
    (!a.is_null(at.row as usize)).then(|| a.value(at.row as usize))
}

/// Read access to the retained batches while the key map is borrowed for writing.
struct Ctx<'a> {
    batches: &'a [RecordBatch],
    schema: &'a Schema,
    op: usize,
    seq: usize,
    nosup: usize,
}

impl Ctx<'_> {
    fn seq(&self, at: RowRef) -> &str {
        self.batches[at.batch as usize]
            .column(self.seq)
            .as_string::<i32>()
            .value(at.row as usize)
    }

    fn is_delete(&self, at: RowRef) -> bool {
        self.batches[at.batch as usize]
            .column(self.op)
            .as_string::<i32>()
            .value(at.row as usize)
            == "D"
    }

    fn nosup_cols(&self, at: RowRef) -> Vec<usize> {
        match nosup_value(self.batches, self.nosup, at) {
            Some(v) => nosup_columns(v).filter_map(|n| self.schema.index_of(n).ok()).collect(),
            None => Vec::new(),
        }
    }

    fn initial_fills(&self, at: RowRef) -> Option<Box<[Fill]>> {
        let cols = self.nosup_cols(at);
        if cols.is_empty() {
            return None;
        }
        Some(cols.into_iter().map(|col| Fill { col, from: None }).collect())
    }

    /// The new winner's no-sup columns take their value from the old winner (the newest older
    /// change) or, where it lacked them too, from what the old winner's fills had found.
    fn replacement_fills(&self, old: &Entry, new: RowRef) -> Option<Box<[Fill]>> {
        let cols = self.nosup_cols(new);
        if cols.is_empty() {
            return None;
        }
        let old_is_row = !self.is_delete(old.at);
        let old_missing = self.nosup_cols(old.at);
        let fills: Box<[Fill]> = cols
            .into_iter()
            .map(|col| {
                let from = if !old_is_row {
                    None
                } else if !old_missing.contains(&col) {
                    Some(old.at)
                } else {
                    old.fills
                        .as_ref()
                        .and_then(|f| f.iter().find(|f| f.col == col))
                        .and_then(|f| f.from)
                };
                Fill { col, from }
            })
            .collect();
        Some(fills)
    }

    /// An older change can still supply a no-sup column of the winner, if it is newer than what
    /// supplied it so far.
    fn offer_older(&self, fills: &mut [Fill], older: RowRef) {
        if self.is_delete(older) {
            return;
        }
        let missing = self.nosup_cols(older);
        let older_seq = self.seq(older);
        for f in fills.iter_mut() {
            if missing.contains(&f.col) {
                continue;
            }
            if f.from.is_none_or(|cur| older_seq > self.seq(cur)) {
                f.from = Some(older);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use arrow::array::{Int64Array, TimestampMicrosecondArray};

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
            Arc::new(StringArray::from(vec!["f"; rows.len()])),
            Arc::new(StringArray::from(rows.iter().map(|r| r.4).collect::<Vec<_>>())),
        ];
        RecordBatch::try_new(schema, cols).unwrap()
    }

    fn rows(b: &RecordBatch) -> Vec<(i64, Option<String>, String, Option<String>)> {
        let id = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
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
                Arc::new(StringArray::from(vec!["f"; 4])),
                Arc::new(StringArray::from(vec![None::<&str>; 4])),
            ],
        )
        .unwrap();
        let mut d = Deduper::new(schema, &["id".to_string()]).unwrap();
        d.push(b).unwrap();
        assert_eq!(d.len(), 2);
        let out = d.finish().unwrap().unwrap();
        let ids: Vec<&str> = out.column(0).as_string::<i32>().iter().map(|v| v.unwrap()).collect();
        let ops: Vec<&str> = out.column(1).as_string::<i32>().iter().map(|v| v.unwrap()).collect();
        assert_eq!((ids, ops), (vec![long.as_str(), "a"], vec!["U", "D"]));
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
}
