//! DMS Parquet -> change batches. A file is read twice, a record batch at a time: first the key,
//! Op and sequence columns of every row, to find each key's surviving row, then every column of
//! only those rows.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray};
use arrow::compute::kernels::cast::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::arrow::ProjectionMask;

use super::values::ColumnBuilder;
use super::{FileContext, Sink, BATCH_ROWS};
use crate::changes::{meta_fields, source_file_column, Deduper, LastRowPerKey, Sequence, NOSUP, OP, SEQ};
use crate::config::{Limits, TableSpec};
use crate::error::{BadInputKind, InputProblem};
use crate::route::{digits_to_micros, FileKind};
use crate::types::{delta_type, to_delta, widening, ColumnType, Widening, UTC};

pub(super) fn decode(
    file: std::fs::File,
    ctx: &FileContext<'_>,
    spec: &TableSpec,
    sink: &mut Sink,
) -> Result<(), InputProblem> {
    let reopen = |f: &std::fs::File| {
        f.try_clone()
            .map_err(|e| InputProblem::new(BadInputKind::CorruptFile, format!("cannot re-read the file: {e}")))
    };
    let metadata = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(corrupt)?;
    let limits = &ctx.config.config.limits;
    check_declared_sizes(metadata.metadata(), limits)?;
    let file_schema = metadata.schema().clone();
    let plan = Plan::new(&file_schema, spec)?;
    // The first pass reads a text Op column as the dictionary it is stored as: three values
    // to check instead of a string per row.
    let first_pass = match plan.op.filter(|&i| file_schema.field(i).data_type() == &DataType::Utf8) {
        Some(i) => {
            let mut fields: Vec<Field> = file_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields[i] = fields[i].clone().with_data_type(DataType::Dictionary(
                Box::new(DataType::Int32),
                Box::new(DataType::Utf8),
            ));
            let hinted = ArrowReaderOptions::new().with_schema(Arc::new(Schema::new(fields)));
            ArrowReaderMetadata::try_new(metadata.metadata().clone(), hinted).map_err(corrupt)?
        }
        None => metadata.clone(),
    };
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(reopen(&file)?, first_pass);
    let Winners {
        rows: winners,
        rows_in,
        unlogged,
    } = winners(builder, &plan, spec, ctx)?;
    sink.count(spec, rows_in);
    if winners.is_empty() {
        return Ok(());
    }
    // Second pass: only the surviving rows are decoded and converted.
    let ranges = consecutive_ranges(&winners);
    let total = usize::try_from(rows_in).unwrap_or(usize::MAX);
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata)
        .with_row_selection(RowSelection::from_consecutive_ranges(ranges.into_iter(), total))
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(corrupt)?;
    let name_micros = ctx.routed.time_digits.as_deref().and_then(digits_to_micros);
    let mut done = 0usize;
    let mut decoded = Decoded::new(limits);
    for batch in reader {
        let batch = batch
            .map_err(|e| InputProblem::new(BadInputKind::CorruptFile, format!("a row group cannot be read: {e}")))?;
        decoded.add(&batch)?;
        let n = batch.num_rows();
        let rows = winners.get(done..done + n).ok_or_else(|| {
            InputProblem::new(
                BadInputKind::CorruptFile,
                "the file returned more rows on a second read",
            )
        })?;
        done += n;
        let mut cols = data_columns(&batch, &plan, Rows::Picked(rows), ctx.max_field_bytes)?;
        let ops: ArrayRef = match plan.op {
            // Checked on every row in the first pass.
            Some(i) => op_text(batch.column(i))?,
            None => Arc::new(StringArray::from_iter_values(std::iter::repeat_n("I", n))),
        };
        let seqs = sequences(&batch, &plan, ctx, Rows::Picked(rows))?;
        let ts: ArrayRef = match plan.ts {
            Some(i) => commit_times(batch.column(i), name_micros, Rows::Picked(rows))?,
            None => Arc::new(TimestampMicrosecondArray::from(vec![name_micros; n]).with_timezone(UTC)),
        };
        cols.push(ops);
        cols.push(Arc::new(seqs));
        cols.push(ts);
        cols.push(
            source_file_column(ctx.source_file, n)
                .map_err(|e| InputProblem::new(BadInputKind::BadValue, e.to_string()))?,
        );
        match &unlogged {
            // The first pass's values for the unlogged-when-null columns, and its marks.
            Some(first) => {
                let part = first.slice(done - n, n);
                for &u in &plan.unlogged {
                    let name = plan.schema.field(u).name();
                    if let Some(c) = part.column_by_name(name) {
                        cols[u] = c.clone();
                    }
                }
                let marks = part
                    .column_by_name(NOSUP)
                    .cloned()
                    .unwrap_or_else(|| arrow::array::new_null_array(&DataType::Utf8, n));
                cols.push(marks);
            }
            None => cols.push(arrow::array::new_null_array(&DataType::Utf8, n)),
        }
        let out = RecordBatch::try_new(plan.schema.clone(), cols)
            .map_err(|e| InputProblem::new(BadInputKind::BadValue, e.to_string()))?;
        sink.push_deduplicated(spec, out)?;
    }
    if done != winners.len() {
        return Err(InputProblem::new(
            BadInputKind::CorruptFile,
            "the file returned fewer rows on a second read",
        ));
    }
    Ok(())
}

fn corrupt(e: parquet::errors::ParquetError) -> InputProblem {
    InputProblem::new(BadInputKind::CorruptFile, format!("not a readable Parquet file: {e}"))
}

/// First pass: reads only the key, Op and sequence columns, checks them on every row, and
/// returns the (0-based, ascending) positions of the rows that survive deduplication, and the
/// number of rows in the file. Reading the other columns only for the survivors is what makes
/// decode cost little more than one read of the file, and keeps superseded rows out of memory.
fn winners(
    builder: ParquetRecordBatchReaderBuilder<std::fs::File>,
    plan: &Plan,
    spec: &TableSpec,
    ctx: &FileContext<'_>,
) -> Result<Winners, InputProblem> {
    let mut roots: Vec<usize> = plan.keys.iter().map(|&k| plan.data[k].0).collect();
    roots.extend(plan.unlogged.iter().map(|&u| plan.data[u].0));
    roots.extend(plan.op);
    roots.extend(plan.seq);
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
    let file_rows = usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(corrupt)?;
    let mut fields: Vec<Field> = plan.keys.iter().map(|&k| plan.schema.field(k).clone()).collect();
    fields.push(Field::new(ROW, DataType::UInt64, false));
    fields.extend(plan.unlogged.iter().map(|&u| plan.schema.field(u).clone()));
    fields.extend(
        meta_fields()
            .into_iter()
            .filter(|f| matches!(f.name().as_str(), OP | SEQ | NOSUP)),
    );
    let narrow = Arc::new(Schema::new(fields));
    // Later rows win and one integer key: positions alone decide. Otherwise the general deduper
    // over narrow batches (key, position and metadata columns).
    // A table with a history keeps every row: the first pass only checks them and works out
    // what each change did not log.
    let keep_all = spec.history;
    let mut kept: Vec<RecordBatch> = Vec::new();
    let mut last = match plan.keys.as_slice() {
        [k] if !keep_all
            && plan.seq.is_none()
            && plan.unlogged.is_empty()
            && LastRowPerKey::supports(plan.schema.field(*k).data_type()) =>
        {
            Some(LastRowPerKey::with_capacity(file_rows))
        }
        _ => None,
    };
    let mut dedup = match last {
        Some(_) => None,
        None if keep_all => None,
        None => Some(Deduper::new(narrow.clone(), &spec.keys)?.with_rows_in_sequence_order(plan.seq.is_none())),
    };
    let mut row: u64 = 0;
    let mut decoded = Decoded::new(&ctx.config.config.limits);
    for batch in reader {
        let batch = batch
            .map_err(|e| InputProblem::new(BadInputKind::CorruptFile, format!("a row group cannot be read: {e}")))?;
        decoded.add(&batch)?;
        let n = batch.num_rows();
        let rows = Rows::From(row);
        let column = |i: usize| {
            batch
                .column_by_name(file_name(plan, i))
                .cloned()
                .ok_or_else(|| InputProblem::new(BadInputKind::CorruptFile, "a projected column is missing"))
        };
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(narrow.fields().len());
        for (k, &ki) in plan.keys.iter().enumerate() {
            let (i, how) = &plan.data[ki];
            let col = convert(&column(*i)?, how, &spec.keys[k], rows, ctx.max_field_bytes)?;
            if col.null_count() > 0 {
                let at = rows.number((0..n).find(|&r| col.is_null(r)).unwrap_or(0));
                return Err(InputProblem::new(
                    BadInputKind::MissingKey,
                    format!("row {at}: key column `{}` is null", spec.keys[k]),
                ));
            }
            cols.push(col);
        }
        if let Some(i) = plan.op {
            check_ops(&column(i)?, rows)?;
        }
        if dedup.is_none() && !keep_all {
            if let (Some(last), Some(keys)) = (last.as_mut(), cols.first()) {
                last.push(keys, row)?;
            }
            row += n as u64;
            continue;
        }
        cols.push(Arc::new(arrow::array::UInt64Array::from_iter_values(
            row..row + n as u64,
        )));
        let mut unlogged = Vec::with_capacity(plan.unlogged.len());
        for &u in &plan.unlogged {
            let (i, how) = &plan.data[u];
            let col = convert(&column(*i)?, how, file_name(plan, *i), rows, ctx.max_field_bytes)?;
            cols.push(col.clone());
            unlogged.push((plan.schema.field(u).name().as_str(), col));
        }
        let ops = match plan.op {
            Some(i) => op_text(&column(i)?)?,
            None => Arc::new(StringArray::from_iter_values(std::iter::repeat_n("I", n))),
        };
        let nosup = unlogged_marks(&ops, &unlogged);
        cols.push(ops);
        cols.push(match plan.seq {
            Some(_) => Arc::new(sequences(&batch, plan, ctx, rows)?),
            // Rows in sequence order: the deduper compares positions, not sequences.
            None => Arc::new(StringArray::from_iter_values(std::iter::repeat_n("", n))),
        });
        cols.push(nosup);
        let narrow_batch = RecordBatch::try_new(narrow.clone(), cols)
            .map_err(|e| InputProblem::new(BadInputKind::BadValue, e.to_string()))?;
        match dedup.as_mut() {
            Some(d) => d.push(narrow_batch)?,
            None => kept.push(narrow_batch),
        }
        row += n as u64;
    }
    if keep_all {
        let unlogged = match (plan.unlogged.is_empty(), kept.is_empty()) {
            (false, false) => Some(arrow::compute::concat_batches(&narrow, &kept).map_err(bad_batch)?),
            _ => None,
        };
        return Ok(Winners {
            rows: (0..usize::try_from(row).unwrap_or(usize::MAX)).collect(),
            rows_in: row,
            unlogged,
        });
    }
    let Some(dedup) = dedup else {
        let last = last.unwrap_or_default();
        let rows_in = last.rows_in();
        let pos = last.finish().into_iter().map(|p| p as usize).collect();
        return Ok(Winners {
            rows: pos,
            rows_in,
            unlogged: None,
        });
    };
    let rows_in = dedup.rows_in();
    let Some(survivors) = dedup.finish()? else {
        return Ok(Winners {
            rows: Vec::new(),
            rows_in,
            unlogged: None,
        });
    };
    let row_col = survivors
        .column_by_name(ROW)
        .cloned()
        .ok_or_else(|| InputProblem::new(BadInputKind::CorruptFile, "the first pass lost its positions"))?;
    // The deduper returns survivors in arrival order, which is file order; sorting is cheap
    // insurance for the row selection, which needs it (and keeps the unlogged values aligned).
    let order = arrow::compute::sort_to_indices(&row_col, None, None).map_err(bad_batch)?;
    let survivors = arrow::compute::take_record_batch(&survivors, &order).map_err(bad_batch)?;
    let pos = survivors
        .column_by_name(ROW)
        .map(|c| c.as_primitive::<arrow::datatypes::UInt64Type>().values().to_vec())
        .unwrap_or_default();
    let pos: Vec<usize> = pos.into_iter().map(|p| p as usize).collect();
    Ok(Winners {
        rows: pos,
        rows_in,
        unlogged: (!plan.unlogged.is_empty()).then_some(survivors),
    })
}

/// What the first pass decided.
struct Winners {
    /// Positions of the surviving rows, ascending.
    rows: Vec<usize>,
    rows_in: u64,
    /// With `unlogged_when_null` columns: the survivors as the first pass built them, in
    /// position order, holding those columns' values (taken from earlier changes of the key
    /// where an update did not log them) and what is still not logged (`_dms_nosup`).
    unlogged: Option<RecordBatch>,
}

fn bad_batch(e: arrow::error::ArrowError) -> InputProblem {
    InputProblem::new(BadInputKind::BadValue, e.to_string())
}

/// `_dms_nosup` for changes whose unlogged-when-null columns are NULL in an update.
fn unlogged_marks(ops: &ArrayRef, unlogged: &[(&str, ArrayRef)]) -> ArrayRef {
    if unlogged.is_empty() {
        return arrow::array::new_null_array(&DataType::Utf8, ops.len());
    }
    let ops = ops.as_string::<i32>();
    let marks: StringArray = (0..ops.len())
        .map(|r| {
            if ops.value(r) != "U" {
                return None;
            }
            let names: Vec<&str> = unlogged.iter().filter(|(_, c)| c.is_null(r)).map(|(n, _)| *n).collect();
            (!names.is_empty()).then(|| format!("|{}|", names.join("|")))
        })
        .collect();
    Arc::new(marks)
}

/// The position column of the first pass (not a change-set column).
const ROW: &str = "_dms_row";

/// The file column name of a plan's column index.
fn file_name(plan: &Plan, file_index: usize) -> &str {
    plan.file.field(file_index).name()
}

fn consecutive_ranges(rows: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for &r in rows {
        match out.last_mut() {
            Some(last) if last.end == r => last.end = r + 1,
            _ => out.push(r..r + 1),
        }
    }
    out
}

/// The data columns of a second-pass batch, converted to the types Delta stores.
fn data_columns(
    batch: &RecordBatch,
    plan: &Plan,
    rows: Rows<'_>,
    max_field_bytes: usize,
) -> Result<Vec<ArrayRef>, InputProblem> {
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(plan.schema.fields().len());
    for (i, how) in &plan.data {
        cols.push(convert(
            batch.column(*i),
            how,
            file_name(plan, *i),
            rows,
            max_field_bytes,
        )?);
    }
    Ok(cols)
}

/// How a file column becomes the column Delta stores.
#[derive(Debug, Clone)]
enum Convert {
    /// A cast that cannot lose information (or fails).
    Cast(DataType),
    /// Text parsed value by value as the configured type, as CSV text is.
    Parse(ColumnType),
}

impl Convert {
    fn target(&self) -> DataType {
        match self {
            Convert::Cast(t) => t.clone(),
            Convert::Parse(t) => t.arrow(),
        }
    }

    /// The conversion of a file column of type `file` to the configured type `ty`: the
    /// configuration wins when no value can be lost on the way (same type, a widening,
    /// anything to text, text parsed value by value); any other pair is refused.
    fn configured(name: &str, file: &DataType, natural: DataType, ty: ColumnType) -> Result<Convert, InputProblem> {
        let want = ty.arrow();
        if natural == want || want == DataType::Utf8 || widening(&natural, &want) == Widening::Widen {
            Ok(Convert::Cast(want))
        } else if natural == DataType::Utf8 {
            Ok(Convert::Parse(ty))
        } else {
            Err(InputProblem::new(
                BadInputKind::IncompatibleSchema,
                format!(
                    "column `{name}` is {file} in the file (stored as {natural}), but its configured type is {ty:?} ({want}), and converting {natural} to {want} can lose values; set the column's `type` in the configuration to the source column's type"
                ),
            ))
        }
    }
}

/// Converts one column, refusing values over `max_field_bytes` and naming the row of a value
/// that cannot be converted.
fn convert(
    col: &ArrayRef,
    how: &Convert,
    name: &str,
    rows: Rows<'_>,
    max_field_bytes: usize,
) -> Result<ArrayRef, InputProblem> {
    let out = match how {
        Convert::Cast(target) => to_delta(col, target).map_err(|e| {
            InputProblem::new(
                BadInputKind::BadValue,
                format!(
                    "column `{name}` ({}) cannot be stored as {target}: {e}",
                    col.data_type()
                ),
            )
        })?,
        Convert::Parse(ty) => {
            let text = to_delta(col, &DataType::Utf8)
                .map_err(|e| InputProblem::new(BadInputKind::BadValue, format!("column `{name}` is not text: {e}")))?;
            let text = text.as_string::<i32>();
            let mut b = ColumnBuilder::new(*ty, text.len());
            for r in 0..text.len() {
                if text.is_null(r) || text.value(r).is_empty() {
                    b.append_null();
                } else if let Err(why) = b.append_text(text.value(r)) {
                    return Err(InputProblem::new(
                        BadInputKind::BadValue,
                        format!(
                            "row {}: the value of column `{name}` (text in the file, configured {ty:?}) {why}",
                            rows.number(r)
                        ),
                    ));
                }
            }
            b.finish()
        }
    };
    if let Some((r, len)) = longest_value(&out).filter(|&(_, len)| len > max_field_bytes) {
        return Err(InputProblem::new(
            BadInputKind::TooLarge,
            format!(
                "row {}: the value of column `{name}` is {len} bytes, over {max_field_bytes}, the limits.max_field_bytes setting",
                rows.number(r)
            ),
        ));
    }
    Ok(out)
}

/// The row and length of a text or binary column's longest value.
fn longest_value(col: &ArrayRef) -> Option<(usize, usize)> {
    let offsets = match col.data_type() {
        DataType::Utf8 => col.as_string::<i32>().offsets().clone(),
        DataType::Binary => col.as_binary::<i32>().offsets().clone(),
        _ => return None,
    };
    offsets
        .windows(2)
        .enumerate()
        .map(|(r, w)| (r, usize::try_from(w[1] - w[0]).unwrap_or(0)))
        .max_by_key(|&(_, len)| len)
}

/// Refuses a file whose footer declares more uncompressed column data than
/// `limits.max_inflated_bytes`, before any page is read: a small file can declare pages that
/// decompress to gigabytes.
fn check_declared_sizes(meta: &parquet::file::metadata::ParquetMetaData, limits: &Limits) -> Result<(), InputProblem> {
    let mut total: u64 = 0;
    let mut largest: Option<(u64, usize, String)> = None;
    for (g, rg) in meta.row_groups().iter().enumerate() {
        for c in rg.columns() {
            let size = u64::try_from(c.uncompressed_size()).unwrap_or(u64::MAX);
            total = total.saturating_add(size);
            if largest.as_ref().is_none_or(|(l, ..)| size > *l) {
                largest = Some((size, g, c.column_path().string()));
            }
        }
    }
    if total > limits.max_inflated_bytes {
        let at = largest
            .map(|(size, g, col)| format!(" (the largest part: column `{col}` of row group {g}, {size} bytes)"))
            .unwrap_or_default();
        return Err(InputProblem::new(
            BadInputKind::TooLarge,
            format!(
                "the file's footer declares {total} bytes of uncompressed column data{at}, over {}, the limits.max_inflated_bytes setting",
                limits.max_inflated_bytes
            ),
        ));
    }
    Ok(())
}

/// Counts the bytes a pass decodes, so a file whose footer understates its data (or whose
/// encoding expands far beyond it) is stopped at the limit too.
struct Decoded {
    bytes: u64,
    limit: u64,
}

impl Decoded {
    fn new(limits: &Limits) -> Decoded {
        Decoded {
            bytes: 0,
            limit: limits.max_inflated_bytes,
        }
    }

    fn add(&mut self, batch: &RecordBatch) -> Result<(), InputProblem> {
        self.bytes = self.bytes.saturating_add(batch.get_array_memory_size() as u64);
        if self.bytes > self.limit {
            return Err(InputProblem::new(
                BadInputKind::TooLarge,
                format!(
                    "the file decodes to more than {} bytes of column data, the limits.max_inflated_bytes setting",
                    self.limit
                ),
            ));
        }
        Ok(())
    }
}

/// The Op column as text.
fn op_text(col: &ArrayRef) -> Result<ArrayRef, InputProblem> {
    cast(col, &DataType::Utf8)
        .map_err(|e| InputProblem::new(BadInputKind::UnknownOp, format!("the Op column is not text: {e}")))
}

/// Refuses an Op other than I, U or D, naming the row (`rows` places the batch in the file). A
/// dictionary-encoded column is checked by its few values first.
fn check_ops(col: &ArrayRef, rows: Rows<'_>) -> Result<(), InputProblem> {
    let is_op = |v: &str| matches!(v, "I" | "U" | "D");
    if let Some(d) = col.as_any_dictionary_opt() {
        if let Ok(values) = cast(d.values(), &DataType::Utf8) {
            let v = values.as_string::<i32>();
            if col.null_count() == 0 && (0..v.len()).all(|i| v.is_valid(i) && is_op(v.value(i))) {
                return Ok(());
            }
        }
    }
    // Plain text, or something is wrong: find the row.
    let ops = op_text(col)?;
    let s = ops.as_string::<i32>();
    match (0..s.len()).find(|&r| s.is_null(r) || !is_op(s.value(r))) {
        None => Ok(()),
        Some(r) => {
            let shown: String = if s.is_null(r) {
                "null".into()
            } else {
                s.value(r).chars().take(8).collect()
            };
            Err(InputProblem::new(
                BadInputKind::UnknownOp,
                format!("row {}: Op `{shown}` is not I, U or D", rows.number(r)),
            ))
        }
    }
}

/// Where a batch's rows sit in the file: consecutive from a 0-based position (first pass), or
/// picked ones (second pass).
#[derive(Debug, Clone, Copy)]
enum Rows<'a> {
    From(u64),
    Picked(&'a [usize]),
}

impl Rows<'_> {
    /// The 1-based row number in the file of the batch's row `r`, for messages and sequences.
    fn number(self, r: usize) -> u64 {
        match self {
            Rows::From(first) => first + r as u64 + 1,
            Rows::Picked(p) => p.get(r).map_or(0, |&x| x as u64 + 1),
        }
    }
}

/// The sequences of a batch's rows: the sequence column's value, or else the file's name and
/// the row's position (see [`Sequence`]).
fn sequences(
    batch: &RecordBatch,
    plan: &Plan,
    ctx: &FileContext<'_>,
    rows: Rows<'_>,
) -> Result<StringArray, InputProblem> {
    let n = batch.num_rows();
    let seq_text = match plan.seq {
        Some(i) => {
            let col = batch
                .column_by_name(file_name(plan, i))
                .ok_or_else(|| InputProblem::new(BadInputKind::CorruptFile, "the sequence column is missing"))?;
            Some(cast(col, &DataType::Utf8).map_err(|e| {
                InputProblem::new(BadInputKind::BadValue, format!("the sequence column is not text: {e}"))
            })?)
        }
        None => {
            let prefix = match (ctx.routed.kind, ctx.routed.time_digits.as_deref()) {
                (FileKind::Load, _) | (_, None) => Sequence::load_prefix_in(
                    ctx.routed.load_anchor.as_ref(),
                    ctx.routed.load_folder.as_deref(),
                    &ctx.routed.stem,
                ),
                (_, Some(d)) => Sequence::file_prefix_for(d, ctx.orders_by_change_seq()),
            };
            return Sequence::positional(&prefix, (0..n).map(|r| rows.number(r)))
                .map_err(|e| InputProblem::new(BadInputKind::TooLarge, e.to_string()));
        }
    };
    let mut seqs = StringBuilder::with_capacity(n, n * 40);
    let mut seq_buf = String::with_capacity(64);
    for r in 0..n {
        let from_col = seq_text
            .as_ref()
            .map(|a| a.as_string::<i32>())
            .filter(|a| !a.is_null(r) && !a.value(r).is_empty())
            .map(|a| a.value(r));
        let this_row = rows.number(r);
        match from_col {
            Some(v) => Sequence::change_seq(&mut seq_buf, v)
                .map_err(|e| InputProblem::new(BadInputKind::BadValue, format!("row {this_row}: {e}")))?,
            None => match (ctx.routed.kind, ctx.routed.time_digits.as_deref()) {
                (FileKind::Load, _) | (_, None) => Sequence::load_in(
                    &mut seq_buf,
                    ctx.routed.load_anchor.as_ref(),
                    ctx.routed.load_folder.as_deref(),
                    &ctx.routed.stem,
                    this_row,
                ),
                (_, Some(d)) => Sequence::file_for(&mut seq_buf, d, this_row, ctx.orders_by_change_seq()),
            },
        }
        seqs.append_value(&seq_buf);
    }
    Ok(seqs.finish())
}

/// Which file columns feed which change-set columns.
struct Plan {
    file: SchemaRef,
    schema: SchemaRef,
    data: Vec<(usize, Convert)>,
    keys: Vec<usize>,
    /// Data columns (indexes into `data`) of `unlogged_when_null`: read in the first pass too,
    /// so that an update that did not log one takes it from an earlier change in the file.
    unlogged: Vec<usize>,
    op: Option<usize>,
    ts: Option<usize>,
    seq: Option<usize>,
}

impl Plan {
    fn new(file: &Schema, spec: &TableSpec) -> Result<Plan, InputProblem> {
        let mut op = None;
        let mut ts = None;
        let mut seq = None;
        let mut data = Vec::new();
        let mut fields = Vec::new();
        for (i, f) in file.fields().iter().enumerate() {
            let name = f.name();
            let table_name = spec.column_name(name);
            if i == 0 && name.eq_ignore_ascii_case("Op") {
                op = Some(i);
            } else if spec.timestamp_column.as_deref() == Some(name.as_str()) {
                ts = Some(i);
            } else if spec.sequence_column.as_deref() == Some(name.as_str()) {
                seq = Some(i);
            } else if crate::changes::is_meta(name) {
                return Err(InputProblem::new(
                    BadInputKind::IncompatibleSchema,
                    format!("column `{name}` clashes with a dms2delta metadata column"),
                ));
            } else {
                let natural = delta_type(f.data_type()).ok_or_else(|| {
                    InputProblem::new(
                        BadInputKind::IncompatibleSchema,
                        format!("column `{name}` has type {} which Delta cannot store", f.data_type()),
                    )
                })?;
                let configured = spec
                    .columns
                    .as_ref()
                    .and_then(|c| c.iter().find(|c| c.name == table_name));
                let how = match configured {
                    Some(c) => Convert::configured(table_name, f.data_type(), natural, c.ty)?,
                    None => Convert::Cast(natural),
                };
                fields.push(Field::new(table_name, how.target(), true));
                data.push((i, how));
            }
        }
        let keys = spec
            .keys
            .iter()
            .map(|k| {
                fields.iter().position(|f| f.name() == k).ok_or_else(|| {
                    InputProblem::new(
                        BadInputKind::MissingKey,
                        format!("key column `{k}` is not in the file (its columns: {})", names(file)),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let unlogged = fields
            .iter()
            .enumerate()
            .filter(|(_, f)| spec.unlogged_when_null.iter().any(|c| c == f.name()))
            .map(|(i, _)| i)
            .collect();
        fields.extend(meta_fields());
        Ok(Plan {
            file: Arc::new(file.clone()),
            schema: Arc::new(Schema::new(fields)),
            data,
            keys,
            unlogged,
            op,
            ts,
            seq,
        })
    }
}

fn names(s: &Schema) -> String {
    s.fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The DMS timestamp column: a string `yyyy-MM-dd HH:mm:ss.SSSSSS`, or a timestamp type.
fn commit_times(col: &ArrayRef, fallback: Option<i64>, rows: Rows<'_>) -> Result<ArrayRef, InputProblem> {
    if let DataType::Timestamp(..) = col.data_type() {
        let t = to_delta(col, &DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())))
            .map_err(|e| InputProblem::new(BadInputKind::BadValue, format!("the timestamp column: {e}")))?;
        return Ok(t);
    }
    let text = cast(col, &DataType::Utf8)
        .map_err(|e| InputProblem::new(BadInputKind::BadValue, format!("the timestamp column: {e}")))?;
    let s = text.as_string::<i32>();
    let mut out = Vec::with_capacity(s.len());
    for r in 0..s.len() {
        if s.is_null(r) || s.value(r).is_empty() {
            out.push(fallback);
        } else {
            let v = super::values::parse_timestamp_micros(s.value(r)).ok_or_else(|| {
                InputProblem::new(
                    BadInputKind::BadValue,
                    format!(
                        "row {}: the timestamp column is not yyyy-MM-dd HH:mm:ss[.f]",
                        rows.number(r)
                    ),
                )
            })?;
            out.push(Some(v));
        }
    }
    Ok(Arc::new(TimestampMicrosecondArray::from(out).with_timezone(UTC)))
}
