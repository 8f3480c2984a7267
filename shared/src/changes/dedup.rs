//! Deduplication by sequence: the highest-sequence change per key, no-sup columns filled from earlier changes.

use std::collections::hash_map::{self, HashMap};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, RecordBatch, StringArray};
use arrow::compute::{concat, interleave, FilterBuilder, FilterPredicate};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};

use crate::error::{BadInputKind, InputProblem};

use super::columns::nosup_columns;
use super::int_keys::{int_key, push_int_keys, radix_sort_by_key};
use super::{column_of_seq, NOSUP, OP, SEQ};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct RowRef {
    pub(super) batch: u32,
    pub(super) row: u32,
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
pub(super) enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

pub(super) const INLINE_KEY: usize = 22;

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
pub(super) struct Entry {
    at: RowRef,
    /// Only for winners with no-sup columns: where each such column's value comes from.
    fills: Option<Box<[Fill]>>,
}

/// How rows are grouped by key.
#[derive(Debug)]
pub(super) enum Index {
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
    pub(super) index: Index,
    batches: Vec<RecordBatch>,
    /// Per retained batch: whether any of its rows lists no-sup columns.
    nosup_in: Vec<bool>,
    /// (data column, its `_dms_seq_of_` column) pairs of the schema.
    col_seqs: Vec<(usize, usize)>,
    pub(super) retained: usize,
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

pub(super) const COMPACT_MIN_ROWS: usize = 256 * 1024;

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
