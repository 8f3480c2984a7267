//! Change sets: plain Arrow data plus metadata columns, and the deduplication that keeps only the
//! highest-sequence change per key. They know nothing about Delta tables.

use std::collections::hash_map::{self, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch, StringArray};
use arrow::compute::{concat, interleave, FilterBuilder, FilterPredicate};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Date64Type, Field, Int16Type, Int32Type, Int64Type, Int8Type, Schema,
    SchemaRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};

use crate::error::{BadInputKind, InputProblem};
use crate::generation::Anchor;
use crate::types::UTC;

pub use crate::model::columns::{
    column_of_seq, column_seq_name, is_meta, COLUMN_SEQ_PREFIX, COMMIT_TS, DELETED, DELETED_AT, NOSUP, OP, SEQ,
    SOURCE_FILE,
};

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
        Field::new(SOURCE_FILE, source_file_type(), false),
        Field::new(NOSUP, DataType::Utf8, true),
    ]
}

/// `_dms_source_file` holds one value per change set: a dictionary of that one value, not the
/// URI copied into every row (which cost more than the deduplication itself).
pub fn source_file_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// `_dms_source_file` for `rows` rows of one file.
pub fn source_file_column(uri: &str, rows: usize) -> Result<ArrayRef, ArrowError> {
    let keys = arrow::array::Int32Array::from(vec![0; rows]);
    let values: ArrayRef = Arc::new(StringArray::from(vec![uri]));
    Ok(Arc::new(arrow::array::DictionaryArray::<Int32Type>::try_new(
        keys, values,
    )?))
}

/// A value that cannot be DMS's `$AR_H_CHANGE_SEQ`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an AR_H_CHANGE_SEQ (up to 35 digits)")]
pub struct NotAChangeSeq(pub String);

/// Builds sequence strings. Text order equals change order:
/// - full-load rows: `0L<file stem>:<row>`, or `0L<folder>/<file stem>:<row>` for a file in a
///   sub-folder of its table folder (a parallel-load partition), below every CDC change; a
///   reload's rows: `<anchor>L<folder/stem>:<row>` (see [`crate::generation`]);
/// - CDC rows with `$AR_H_CHANGE_SEQ`: `1S<35 digits>`;
/// - other CDC rows: `1F<18 digits of the file name's UTC time>:<row>`.
///
/// Row numbers are 12 digits, so text order is numeric order.
#[derive(Debug, Clone)]
pub struct Sequence;

impl Sequence {
    pub fn load(out: &mut String, stem: &str, row: u64) {
        Sequence::load_in(out, None, None, stem, row);
    }

    /// A full-load row of file `stem` in `folder` below its table folder. Parallel-load
    /// partitions each write their own `LOAD00000001`: with the folder in it, no two files'
    /// rows share a sequence. A folder never holds `/` at its ends and a stem never holds one,
    /// so `folder/stem` names one file; the `0L` start keeps every one below CDC changes.
    /// A reload's rows start with their generation's anchor instead (see [`crate::generation`]).
    pub fn load_in(out: &mut String, anchor: Option<&Anchor>, folder: Option<&str>, stem: &str, row: u64) {
        out.clear();
        match anchor {
            Some(a) => {
                out.push_str(a.as_str());
                out.push('L');
            }
            None => out.push_str("0L"),
        }
        if let Some(f) = folder {
            out.push_str(f);
            out.push('/');
        }
        out.push_str(stem);
        out.push(':');
        push_row(out, row);
    }

    /// A CDC row without a sequence value of its own (`file`'s form), or, in a table that
    /// orders its changes by `AR_H_CHANGE_SEQ` (`by_change_seq`), the same place in that order:
    /// see [`Sequence::in_change_seq_order`].
    pub fn file_for(out: &mut String, time_digits: &str, row: u64, by_change_seq: bool) {
        if by_change_seq {
            out.clear();
            out.push_str(&Sequence::in_change_seq_order(time_digits));
            push_row(out, row);
        } else {
            Sequence::file(out, time_digits, row);
        }
    }

    /// [`Sequence::file_for`]'s text before the row number.
    pub fn file_prefix_for(time_digits: &str, by_change_seq: bool) -> String {
        if by_change_seq {
            Sequence::in_change_seq_order(time_digits)
        } else {
            Sequence::file_prefix(time_digits)
        }
    }

    /// A CDC file without `AR_H_CHANGE_SEQ` values in a table that orders by them (the
    /// add-column rule removed while the task ran, or added later): `1S<16 time digits>:<rest>:`.
    /// A file holds changes committed up to the time in its name, so its rows go after every
    /// change committed in that hundredth of a second (`:` sorts above digits) and before every
    /// later one, and below a reload anchored there (`;` sorts above `:`). Rows keep their file
    /// order.
    pub fn in_change_seq_order(time_digits: &str) -> String {
        let split = time_digits.len().min(16);
        format!("1S{}:{}:", &time_digits[..split], &time_digits[split..])
    }

    pub fn file(out: &mut String, time_digits: &str, row: u64) {
        out.clear();
        out.push_str("1F");
        out.push_str(time_digits);
        out.push(':');
        push_row(out, row);
    }

    /// `$AR_H_CHANGE_SEQ`: 35 digits, left-padded when a shorter number arrives.
    pub fn change_seq(out: &mut String, value: &str) -> Result<(), NotAChangeSeq> {
        let v = value.trim();
        if v.is_empty() || v.len() > 35 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NotAChangeSeq(value.to_string()));
        }
        out.clear();
        out.push_str("1S");
        for _ in v.len()..35 {
            out.push('0');
        }
        out.push_str(v);
        Ok(())
    }

    /// The sequences of rows that carry none of their own: `prefix` ([`Sequence::load_prefix`]
    /// or [`Sequence::file_prefix`]) and the row number, built straight into one buffer.
    pub fn positional(prefix: &str, rows: impl ExactSizeIterator<Item = u64>) -> Result<StringArray, ArrowError> {
        let n = rows.len();
        let mut values: Vec<u8> = Vec::with_capacity(n * (prefix.len() + 12));
        let mut offsets: Vec<i32> = Vec::with_capacity(n + 1);
        offsets.push(0);
        for row in rows {
            values.extend_from_slice(prefix.as_bytes());
            values.extend_from_slice(row_digits(row).as_slice());
            let end = i32::try_from(values.len())
                .map_err(|_| ArrowError::ComputeError("sequences over 2 GiB in one batch".into()))?;
            offsets.push(end);
        }
        StringArray::try_new(arrow::buffer::OffsetBuffer::new(offsets.into()), values.into(), None)
    }

    pub fn load_prefix(stem: &str) -> String {
        Sequence::load_prefix_in(None, None, stem)
    }

    /// [`Sequence::load_in`]'s text before the row number.
    pub fn load_prefix_in(anchor: Option<&Anchor>, folder: Option<&str>, stem: &str) -> String {
        if let Some(a) = anchor {
            return a.load_prefix(folder, stem);
        }
        match folder {
            Some(f) => format!("0L{f}/{stem}:"),
            None => format!("0L{stem}:"),
        }
    }

    pub fn file_prefix(time_digits: &str) -> String {
        format!("1F{time_digits}:")
    }
}

/// Appends `row` zero-padded to 12 digits, as `{row:012}` would (called once per decoded row, so
/// without the formatting machinery).
fn push_row(out: &mut String, row: u64) {
    // Only ASCII digits, so the conversion cannot fail.
    out.push_str(std::str::from_utf8(row_digits(row).as_slice()).unwrap_or_default());
}

/// `00` to `99`.
const TWO_DIGITS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// `row` as at least 12 decimal digits (two at a time: this runs for every row decoded).
fn row_digits(row: u64) -> RowDigits {
    let mut digits = [b'0'; 20];
    let mut v = row;
    let mut i = digits.len();
    while v >= 10 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        digits[i] = TWO_DIGITS[d];
        digits[i + 1] = TWO_DIGITS[d + 1];
    }
    if v > 0 {
        i -= 1;
        digits[i] = b'0' + v as u8;
    }
    RowDigits {
        digits,
        from: i.min(digits.len() - 12),
    }
}

struct RowDigits {
    digits: [u8; 20],
    from: usize,
}

impl RowDigits {
    fn as_slice(&self) -> &[u8] {
        &self.digits[self.from..]
    }
}

/// Parses a `|a|b|` no-sup list.
pub fn nosup_columns(v: &str) -> impl Iterator<Item = &str> {
    v.split('|').filter(|s| !s.is_empty())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
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

/// How rows are grouped by key.
#[derive(Debug)]
enum Index {
    /// A single integer, date or timestamp key column: keys are collected as they come and
    /// grouped by sorting, which reads memory in order. Probing a hash table of a million keys
    /// misses the cache on nearly every row, and that was most of decode's time.
    Int {
        /// Winners so far, sorted by key.
        winners: Vec<(u64, Entry)>,
        /// Rows pushed since the last grouping, in push order.
        fresh: Vec<(u64, RowRef)>,
    },
    /// Any other key: the row format in a hash map.
    Bytes {
        converter: RowConverter,
        map: HashMap<Key, Entry, foldhash::fast::RandomState>,
    },
}

/// Keeps the highest-sequence change per key over a stream of batches of one schema, with
/// memory bounded by the deduplicated set: superseded rows are dropped as batches are compacted.
#[derive(Debug)]
pub struct Deduper {
    schema: SchemaRef,
    key_idx: Vec<usize>,
    cols: MetaCols,
    index: Index,
    batches: Vec<RecordBatch>,
    /// Per retained batch: whether any of its rows lists no-sup columns.
    nosup_in: Vec<bool>,
    /// (data column, its `_dms_seq_of_` column) pairs of the schema.
    col_seqs: Vec<(usize, usize)>,
    retained: usize,
    rows_in: u64,
}

/// Where the metadata columns are, and whether rows come in sequence order.
#[derive(Debug, Clone, Copy)]
struct MetaCols {
    op: usize,
    seq: usize,
    nosup: usize,
    in_order: bool,
}

const COMPACT_MIN_ROWS: usize = 256 * 1024;

/// Pairs [`LastRowPerKey`] collects before it first squashes them: a file of a million rows is
/// squashed once.
const SQUASH_MIN_PAIRS: usize = 1 << 20;

impl Deduper {
    /// `keys` name the key columns of `schema`, which must end with the metadata columns.
    pub fn new(schema: SchemaRef, keys: &[String]) -> Result<Deduper, InputProblem> {
        let idx = |name: &str| {
            schema
                .index_of(name)
                .map_err(|_| InputProblem::new(BadInputKind::MissingKey, format!("column `{name}` is missing")))
        };
        let key_idx = keys.iter().map(|k| idx(k)).collect::<Result<Vec<_>, _>>()?;
        let index = match key_idx.as_slice() {
            [k] if int_key(schema.field(*k).data_type()) => Index::Int {
                winners: Vec::new(),
                fresh: Vec::new(),
            },
            _ => {
                let fields = key_idx
                    .iter()
                    .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                    .collect();
                let converter = RowConverter::new(fields).map_err(|e| {
                    InputProblem::new(BadInputKind::BadValue, format!("key columns cannot be compared: {e}"))
                })?;
                Index::Bytes {
                    converter,
                    map: HashMap::default(),
                }
            }
        };
        let col_seqs = schema
            .fields()
            .iter()
            .enumerate()
            .filter_map(|(i, f)| Some((schema.index_of(column_of_seq(f.name())?).ok()?, i)))
            .collect();
        Ok(Deduper {
            col_seqs,
            cols: MetaCols {
                op: idx(OP)?,
                seq: idx(SEQ)?,
                nosup: idx(NOSUP)?,
                in_order: false,
            },
            schema,
            key_idx,
            index,
            batches: Vec::new(),
            nosup_in: Vec::new(),
            retained: 0,
            rows_in: 0,
        })
    }

    /// Declares that every pushed row's sequence is above those of all rows pushed before it
    /// (a single DMS file without a sequence column: its sequences are its row numbers). Later
    /// rows then win without their sequences being compared.
    pub fn with_rows_in_sequence_order(mut self, in_order: bool) -> Deduper {
        self.cols.in_order = in_order;
        self
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Rows pushed so far.
    pub fn rows_in(&self) -> u64 {
        self.rows_in
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
        let b = u32::try_from(self.batches.len())
            .map_err(|_| InputProblem::new(BadInputKind::TooLarge, "too many batches"))?;
        let n = batch.num_rows();
        let nosup = batch.column(self.cols.nosup).null_count() < n;
        let keys: Vec<ArrayRef> = self.key_idx.iter().map(|&i| batch.column(i).clone()).collect();
        self.batches.push(batch);
        self.nosup_in.push(nosup);
        self.rows_in += n as u64;
        self.retained += n;
        let ctx = Ctx::new(&self.batches, &self.nosup_in, &self.col_seqs, &self.schema, self.cols);
        let at = |r: usize| RowRef {
            batch: b,
            row: r as u32,
        };
        // Whether the winners are known now, so compacting can be considered.
        let settled = match &mut self.index {
            Index::Int { fresh, .. } => {
                fresh.reserve(n);
                if let Some(k) = keys.first() {
                    push_int_keys(k, fresh, at)?;
                }
                // Group when the rows since the last grouping are as many as those retained
                // before it, so the total grouping work stays proportional to the rows.
                fresh.len() >= COMPACT_MIN_ROWS.max(self.retained - fresh.len())
            }
            Index::Bytes { converter, map } => {
                let rows = converter
                    .convert_columns(&keys)
                    .map_err(|e| InputProblem::new(BadInputKind::BadValue, e.to_string()))?;
                for r in 0..n {
                    // One hash and probe per row; only keys longer than INLINE_KEY allocate.
                    match map.entry(Key::new(rows.row(r).as_ref())) {
                        hash_map::Entry::Vacant(slot) => {
                            slot.insert(ctx.first(at(r)));
                        }
                        hash_map::Entry::Occupied(mut slot) => ctx.offer(slot.get_mut(), at(r)),
                    }
                }
                true
            }
        };
        if settled {
            self.group();
            if self.retained >= COMPACT_MIN_ROWS && self.retained >= 2 * self.winner_count() {
                self.compact()?;
            }
        }
        Ok(())
    }

    /// Folds the rows pushed since the last grouping into the winners (integer keys; the hash
    /// map is always up to date).
    fn group(&mut self) {
        let Index::Int { winners, fresh } = &mut self.index else {
            return;
        };
        if fresh.is_empty() {
            return;
        }
        let mut rows = std::mem::take(fresh);
        radix_sort_by_key(&mut rows);
        let old = std::mem::take(winners);
        let ctx = Ctx::new(&self.batches, &self.nosup_in, &self.col_seqs, &self.schema, self.cols);
        let mut merged: Vec<(u64, Entry)> = Vec::with_capacity(old.len() + rows.len());
        let mut old = old.into_iter().peekable();
        let mut new = rows.into_iter().peekable();
        loop {
            // The smaller key of the two sorted runs; a key's earlier winner comes before its
            // new rows, which are in push order (the sort is stable).
            let (key, mut entry) = match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(&(ko, _)), Some(&(kn, _))) if kn < ko => match new.next() {
                    Some((k, at)) => (k, ctx.first(at)),
                    None => break,
                },
                (Some(_), _) => match old.next() {
                    Some(kv) => kv,
                    None => break,
                },
                (None, Some(_)) => match new.next() {
                    Some((k, at)) => (k, ctx.first(at)),
                    None => break,
                },
            };
            while let Some(&(k, at)) = new.peek() {
                if k != key {
                    break;
                }
                ctx.offer(&mut entry, at);
                new.next();
            }
            merged.push((key, entry));
        }
        *winners = merged;
    }

    fn winner_count(&self) -> usize {
        match &self.index {
            Index::Int { winners, .. } => winners.len(),
            Index::Bytes { map, .. } => map.len(),
        }
    }

    fn entries(&self) -> Vec<&Entry> {
        match &self.index {
            Index::Int { winners, .. } => winners.iter().map(|(_, e)| e).collect(),
            Index::Bytes { map, .. } => map.values().collect(),
        }
    }

    fn entries_mut(&mut self) -> Vec<&mut Entry> {
        match &mut self.index {
            Index::Int { winners, .. } => winners.iter_mut().map(|(_, e)| e).collect(),
            Index::Bytes { map, .. } => map.values_mut().collect(),
        }
    }

    /// Rewrites the surviving rows into one batch and drops the rest.
    fn compact(&mut self) -> Result<(), InputProblem> {
        if self.winner_count() == 0 {
            return Ok(());
        }
        let batch = if self.any_fill() {
            self.build_with_fills()?
        } else {
            let survivors = self.survivors();
            gather(&self.schema, std::mem::take(&mut self.batches), &survivors)?
        };
        // The batch holds the survivors in (batch, row) order.
        let mut entries = self.entries_mut();
        entries.sort_unstable_by_key(|e| e.at);
        for (i, e) in entries.into_iter().enumerate() {
            e.at = RowRef {
                batch: 0,
                row: i as u32,
            };
            e.fills = None;
        }
        self.retained = batch.num_rows();
        self.nosup_in = vec![batch.column(self.cols.nosup).null_count() < batch.num_rows()];
        self.batches = vec![batch];
        Ok(())
    }

    /// Whether some winner takes a no-sup column's value from another row.
    fn any_fill(&self) -> bool {
        match &self.index {
            Index::Int { winners, .. } => winners.iter().any(|(_, e)| e.fills.is_some()),
            Index::Bytes { map, .. } => map.values().any(|e| e.fills.is_some()),
        }
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
        for e in self.entries() {
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
        let mut entries = self.entries();
        entries.sort_unstable_by_key(|e| e.at);
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for c in 0..self.schema.fields().len() {
            let arrays: Vec<&dyn Array> = self.batches.iter().map(|b| b.column(c).as_ref()).collect();
            let col = if c == self.cols.nosup {
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
                        None => nosup_value(&self.batches, self.cols.nosup, e.at).map(str::to_string),
                    })
                    .collect();
                Arc::new(values) as ArrayRef
            } else if let Some(&(data, _)) = self.col_seqs.iter().find(|(_, s)| *s == c) {
                // A value taken from another change carries that change's sequence.
                let ctx = Ctx::new(&self.batches, &self.nosup_in, &self.col_seqs, &self.schema, self.cols);
                let values: StringArray = entries
                    .iter()
                    .map(|e| {
                        let filled = e
                            .fills
                            .as_ref()
                            .and_then(|f| f.iter().find(|f| f.col == data))
                            .and_then(|f| f.from);
                        match filled {
                            Some(from) => Some(ctx.col_seq(from, data).to_string()),
                            None => own_column_seq(&self.batches, c, e.at).map(str::to_string),
                        }
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
        self.group();
        if self.winner_count() == 0 {
            return Ok(None);
        }
        if self.any_fill() {
            return self.build_with_fills().map(Some);
        }
        let survivors = self.survivors();
        // Only the positions matter from here on: free the keys before building the output.
        self.index = Index::Int {
            winners: Vec::new(),
            fresh: Vec::new(),
        };
        gather(&self.schema, std::mem::take(&mut self.batches), &survivors).map(Some)
    }
}

/// Key types whose values are integers of at most 64 bits, so a key is a `u64`.
fn int_key(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Date32
            | DataType::Date64
            | DataType::Timestamp(..)
    )
}

/// Appends the (non-null) key column's values as `u64`s, each with `at(row)`. Only equality
/// matters, so any one-to-one mapping will do: signed values keep their bits.
fn push_int_keys<T>(col: &ArrayRef, out: &mut Vec<(u64, T)>, at: impl Fn(usize) -> T) -> Result<(), InputProblem> {
    fn extend<P: ArrowPrimitiveType, T>(
        col: &ArrayRef,
        out: &mut Vec<(u64, T)>,
        at: impl Fn(usize) -> T,
        to_u64: impl Fn(P::Native) -> u64,
    ) {
        let values = col.as_primitive::<P>().values();
        out.extend(values.iter().enumerate().map(|(r, &v)| (to_u64(v), at(r))));
    }
    match col.data_type() {
        DataType::Int8 => extend::<Int8Type, T>(col, out, at, |v| v as i64 as u64),
        DataType::Int16 => extend::<Int16Type, T>(col, out, at, |v| v as i64 as u64),
        DataType::Int32 => extend::<Int32Type, T>(col, out, at, |v| v as i64 as u64),
        DataType::Int64 => extend::<Int64Type, T>(col, out, at, |v| v as u64),
        DataType::UInt8 => extend::<UInt8Type, T>(col, out, at, u64::from),
        DataType::UInt16 => extend::<UInt16Type, T>(col, out, at, u64::from),
        DataType::UInt32 => extend::<UInt32Type, T>(col, out, at, u64::from),
        DataType::UInt64 => extend::<UInt64Type, T>(col, out, at, |v| v),
        DataType::Date32 => extend::<Date32Type, T>(col, out, at, |v| v as i64 as u64),
        DataType::Date64 => extend::<Date64Type, T>(col, out, at, |v| v as u64),
        DataType::Timestamp(TimeUnit::Second, _) => extend::<TimestampSecondType, T>(col, out, at, |v| v as u64),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            extend::<TimestampMillisecondType, T>(col, out, at, |v| v as u64)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            extend::<TimestampMicrosecondType, T>(col, out, at, |v| v as u64)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            extend::<TimestampNanosecondType, T>(col, out, at, |v| v as u64)
        }
        other => {
            return Err(InputProblem::new(
                BadInputKind::IncompatibleSchema,
                format!("a key column of type {other} where an integer key was expected"),
            ))
        }
    }
    Ok(())
}

/// Deduplication when only positions matter and later rows always win: a file without a
/// sequence column, keyed by one integer column. Keeps `(key, position)` pairs and, whenever
/// they have doubled since the last time, squashes them to each key's last, so memory stays
/// within twice the surviving keys (and at least [`SQUASH_MIN_PAIRS`], 16 MiB).
#[derive(Debug, Default)]
pub struct LastRowPerKey {
    rows: Vec<(u64, u64)>,
    /// Scratch space for squashing, kept between squashes: fresh memory costs page faults.
    spare: Vec<(u64, u64)>,
    kept: usize,
    rows_in: u64,
}

impl LastRowPerKey {
    /// For a file of `rows` rows (when known), so the pairs are not moved as they grow.
    pub fn with_capacity(rows: usize) -> LastRowPerKey {
        LastRowPerKey {
            rows: Vec::with_capacity(rows.min(SQUASH_MIN_PAIRS)),
            ..LastRowPerKey::default()
        }
    }

    /// Whether a key column of this type can be deduplicated here.
    pub fn supports(key: &DataType) -> bool {
        int_key(key)
    }

    /// Adds a batch's (non-null) key column; its rows sit at `first_position..`.
    pub fn push(&mut self, keys: &ArrayRef, first_position: u64) -> Result<(), InputProblem> {
        if keys.null_count() > 0 {
            return Err(InputProblem::new(BadInputKind::MissingKey, "a key column is null"));
        }
        self.rows.reserve(keys.len());
        push_int_keys(keys, &mut self.rows, |r| first_position + r as u64)?;
        self.rows_in += keys.len() as u64;
        if self.rows.len() >= SQUASH_MIN_PAIRS.max(2 * self.kept) {
            self.squash();
        }
        Ok(())
    }

    fn squash(&mut self) {
        let Some((min, max)) = self
            .rows
            .iter()
            .fold(None, |acc: Option<(u64, u64)>, &(k, _)| match acc {
                None => Some((k, k)),
                Some((lo, hi)) => Some((lo.min(k), hi.max(k))),
            })
        else {
            return;
        };
        let span = max.wrapping_sub(min);
        if span < 4 * self.rows.len() as u64 {
            // Dense keys (the usual auto-increment ids): walk the pairs from the newest and keep
            // each key's first, marking keys seen in a bitmap of the key range (small enough
            // to stay in cache); no sort needed.
            let mut seen = vec![0u64; (span / 64) as usize + 1];
            self.spare.clear();
            for &(k, p) in self.rows.iter().rev() {
                let i = k.wrapping_sub(min);
                let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
                if seen[word] & bit == 0 {
                    seen[word] |= bit;
                    self.spare.push((k, p));
                }
            }
            std::mem::swap(&mut self.rows, &mut self.spare);
        } else {
            last_per_key_sparse(&mut self.rows, &mut self.spare);
        }
        self.kept = self.rows.len();
    }

    /// Rows pushed so far.
    pub fn rows_in(&self) -> u64 {
        self.rows_in
    }

    /// The surviving positions, ascending.
    pub fn finish(mut self) -> Vec<u64> {
        self.squash();
        // Positions are below `rows_in`: a bitmap puts them in order in one pass.
        let mut bits = vec![0u64; usize::try_from(self.rows_in.div_ceil(64)).unwrap_or(0)];
        for &(_, p) in &self.rows {
            if let Some(word) = bits.get_mut((p / 64) as usize) {
                *word |= 1 << (p % 64);
            }
        }
        let mut out = Vec::with_capacity(self.rows.len());
        drop(self.rows);
        drop(self.spare);
        for (w, &word) in bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                out.push(w as u64 * 64 + u64::from(word.trailing_zeros()));
                word &= word - 1;
            }
        }
        out
    }
}

/// Each key's last pair, for keys spread too thin for a bitmap: the pairs are split by key hash
/// into parts small enough for a cache-resident table (one pass, arrival order kept), then each
/// part goes through a small open-addressing table where a later pair overwrites an earlier one.
fn last_per_key_sparse(rows: &mut Vec<(u64, u64)>, split: &mut Vec<(u64, u64)>) {
    const EMPTY: u64 = u64::MAX;
    let mix = |k: u64| {
        let h = (k ^ (k >> 33)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^ (h >> 29)
    };
    let n = rows.len();
    let bits = (n / 2048).max(1).next_power_of_two().trailing_zeros().min(12);
    let parts = 1usize << bits;
    let part_of = |k: u64| if bits == 0 { 0 } else { (mix(k) >> (64 - bits)) as usize };
    let mut starts = vec![0usize; parts + 1];
    for &(k, _) in rows.iter() {
        starts[part_of(k) + 1] += 1;
    }
    for i in 0..parts {
        starts[i + 1] += starts[i];
    }
    let mut next = starts.clone();
    split.clear();
    split.resize(n, (0, 0));
    for &pair in rows.iter() {
        let p = part_of(pair.0);
        split[next[p]] = pair;
        next[p] += 1;
    }
    // The survivors go back into `rows`, whose memory is already in use.
    rows.clear();
    let mut table: Vec<(u64, u64)> = Vec::new();
    for part in 0..parts {
        let slice = &split[starts[part]..starts[part + 1]];
        let cap = (slice.len() * 2).next_power_of_two().max(16);
        table.clear();
        table.resize(cap, (0, EMPTY));
        let mask = cap - 1;
        for &(k, p) in slice {
            let mut i = mix(k) as usize & mask;
            loop {
                let slot = &mut table[i];
                if slot.1 == EMPTY {
                    *slot = (k, p);
                    break;
                }
                if slot.0 == k {
                    slot.1 = p;
                    break;
                }
                i = (i + 1) & mask;
            }
        }
        rows.extend(table.iter().filter(|s| s.1 != EMPTY));
    }
}

/// Stable LSD radix sort by key, 11 bits a pass, skipping the bits all keys share (keys from
/// one table usually span far fewer than 64 bits, so two or three passes are typical).
fn radix_sort_by_key<T: Copy + Default>(rows: &mut Vec<(u64, T)>) {
    const BITS: u32 = 11;
    const BUCKETS: usize = 1 << BITS;
    let Some(&(first, _)) = rows.first() else {
        return;
    };
    let differ = rows.iter().fold(0u64, |acc, &(k, _)| acc | (k ^ first));
    if differ == 0 {
        return;
    }
    let low = differ.trailing_zeros();
    let high = 64 - differ.leading_zeros();
    let mut buf: Vec<(u64, T)> = vec![(0, T::default()); rows.len()];
    let mut shift = low;
    while shift < high {
        let digit = |k: u64| ((k >> shift) as usize) & (BUCKETS - 1);
        let mut counts = vec![0usize; BUCKETS];
        for &(k, _) in rows.iter() {
            counts[digit(k)] += 1;
        }
        let mut total = 0;
        for c in counts.iter_mut() {
            let n = *c;
            *c = total;
            total += n;
        }
        for &item in rows.iter() {
            let d = digit(item.0);
            buf[counts[d]] = item;
            counts[d] += 1;
        }
        std::mem::swap(rows, &mut buf);
        shift += BITS;
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

/// The `_dms_seq_of_` value at `at`, if set.
fn own_column_seq(batches: &[RecordBatch], idx: usize, at: RowRef) -> Option<&str> {
    let a = batches[at.batch as usize].column(idx).as_string_opt::<i32>()?;
    (!a.is_null(at.row as usize)).then(|| a.value(at.row as usize))
}

fn nosup_value(batches: &[RecordBatch], idx: usize, at: RowRef) -> Option<&str> {
    let a = batches[at.batch as usize].column(idx).as_string::<i32>();
    (!a.is_null(at.row as usize)).then(|| a.value(at.row as usize))
}

/// Read access to the retained batches while the key index is borrowed for writing.
struct Ctx<'a> {
    batches: &'a [RecordBatch],
    nosup_in: &'a [bool],
    col_seqs: &'a [(usize, usize)],
    schema: &'a Schema,
    cols: MetaCols,
}

impl<'a> Ctx<'a> {
    fn new(
        batches: &'a [RecordBatch],
        nosup_in: &'a [bool],
        col_seqs: &'a [(usize, usize)],
        schema: &'a Schema,
        cols: MetaCols,
    ) -> Ctx<'a> {
        Ctx {
            batches,
            nosup_in,
            col_seqs,
            schema,
            cols,
        }
    }

    /// The sequence of the change that set `col`'s value in the row at `at`.
    fn col_seq(&self, at: RowRef, col: usize) -> &str {
        self.col_seqs
            .iter()
            .find(|(d, _)| *d == col)
            .and_then(|&(_, s)| own_column_seq(self.batches, s, at))
            .unwrap_or_else(|| self.seq(at))
    }

    /// Whether `a`'s value of `col` is newer than `b`'s.
    fn col_newer(&self, a: RowRef, b: RowRef, col: usize) -> bool {
        if self.cols.in_order || !self.col_seqs.iter().any(|(d, _)| *d == col) {
            return self.newer(a, b);
        }
        match self.col_seq(a, col).cmp(self.col_seq(b, col)) {
            std::cmp::Ordering::Equal => a > b,
            order => order.is_gt(),
        }
    }

    fn seq(&self, at: RowRef) -> &str {
        self.batches[at.batch as usize]
            .column(self.cols.seq)
            .as_string::<i32>()
            .value(at.row as usize)
    }

    /// Whether the change at `a` is newer than the one at `b`. Equal sequences (several changes
    /// of one transaction can share an `AR_H_CHANGE_SEQ`) break by position: DMS writes a file's
    /// rows in commit order, so the later row is the later change.
    fn newer(&self, a: RowRef, b: RowRef) -> bool {
        // Positions follow push order, compaction included.
        if self.cols.in_order {
            a > b
        } else {
            match self.seq(a).cmp(self.seq(b)) {
                std::cmp::Ordering::Equal => a > b,
                order => order.is_gt(),
            }
        }
    }

    fn is_delete(&self, at: RowRef) -> bool {
        self.batches[at.batch as usize]
            .column(self.cols.op)
            .as_string::<i32>()
            .value(at.row as usize)
            == "D"
    }

    /// The state of a key's first row.
    fn first(&self, at: RowRef) -> Entry {
        Entry {
            at,
            fills: self.initial_fills(at),
        }
    }

    /// Folds another row of the same key into its state.
    fn offer(&self, e: &mut Entry, at: RowRef) {
        if self.newer(at, e.at) {
            let fills = self.replacement_fills(e, at);
            e.at = at;
            e.fills = fills;
        } else if let Some(fills) = e.fills.as_mut() {
            self.offer_older(fills, at);
        }
    }

    fn nosup_cols(&self, at: RowRef) -> Vec<usize> {
        if !self.nosup_in[at.batch as usize] {
            return Vec::new();
        }
        match nosup_value(self.batches, self.cols.nosup, at) {
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
        for f in fills.iter_mut() {
            if missing.contains(&f.col) {
                continue;
            }
            if f.from.is_none_or(|cur| self.col_newer(older, cur, f.col)) {
                f.from = Some(older);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
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
}
