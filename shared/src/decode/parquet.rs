//! DMS Parquet -> change batches, read one record batch at a time.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray};
use arrow::compute::kernels::cast::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{FileContext, Sink, BATCH_ROWS};
use crate::changes::{meta_fields, Sequence};
use crate::config::TableSpec;
use crate::error::{BadInputKind, InputProblem};
use crate::route::{digits_to_micros, FileKind};
use crate::types::{delta_type, to_delta, UTC};

pub(super) fn decode(
    file: std::fs::File,
    ctx: &FileContext<'_>,
    spec: &TableSpec,
    sink: &mut Sink,
) -> Result<(), InputProblem> {
    let corrupt = |e: parquet::errors::ParquetError| {
        InputProblem::new(BadInputKind::CorruptFile, format!("not a readable Parquet file: {e}"))
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(corrupt)?;
    let file_schema = builder.schema().clone();
    let plan = Plan::new(&file_schema, spec)?;
    let reader = builder.with_batch_size(BATCH_ROWS).build().map_err(corrupt)?;
    let name_micros = ctx.routed.time_digits.as_deref().and_then(digits_to_micros);
    let mut row: u64 = 0;
    let mut seq_buf = String::with_capacity(64);
    for batch in reader {
        let batch = batch
            .map_err(|e| InputProblem::new(BadInputKind::CorruptFile, format!("a row group cannot be read: {e}")))?;
        let n = batch.num_rows();
        let first_row = row + 1;
        row += n as u64;
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(plan.schema.fields().len());
        for (i, target) in &plan.data {
            let col = to_delta(batch.column(*i), target).map_err(|e| {
                InputProblem::new(
                    BadInputKind::BadValue,
                    format!(
                        "column `{}` cannot be stored as {target}: {e}",
                        file_schema.field(*i).name()
                    ),
                )
            })?;
            cols.push(col);
        }
        for (k, &ki) in plan.keys.iter().enumerate() {
            if cols[ki].null_count() > 0 {
                let at = (0..n).find(|&r| cols[ki].is_null(r)).unwrap_or(0) as u64 + first_row;
                return Err(InputProblem::new(
                    BadInputKind::MissingKey,
                    format!("row {at}: key column `{}` is null", spec.keys[k]),
                ));
            }
        }
        let ops: ArrayRef = match plan.op {
            Some(i) => {
                let ops = cast(batch.column(i), &DataType::Utf8).map_err(|e| {
                    InputProblem::new(BadInputKind::UnknownOp, format!("the Op column is not text: {e}"))
                })?;
                let s = ops.as_string::<i32>();
                for r in 0..n {
                    if s.is_null(r) || !matches!(s.value(r), "I" | "U" | "D") {
                        let shown: String = if s.is_null(r) {
                            "null".into()
                        } else {
                            s.value(r).chars().take(8).collect()
                        };
                        return Err(InputProblem::new(
                            BadInputKind::UnknownOp,
                            format!("row {}: Op `{shown}` is not I, U or D", first_row + r as u64),
                        ));
                    }
                }
                ops
            }
            None => Arc::new(StringArray::from_iter_values(std::iter::repeat_n("I", n))),
        };
        let seq_text = match plan.seq {
            Some(i) => Some(cast(batch.column(i), &DataType::Utf8).map_err(|e| {
                InputProblem::new(BadInputKind::BadValue, format!("the sequence column is not text: {e}"))
            })?),
            None => None,
        };
        let mut seqs = StringBuilder::with_capacity(n, n * 40);
        for r in 0..n {
            let from_col = seq_text
                .as_ref()
                .map(|a| a.as_string::<i32>())
                .filter(|a| !a.is_null(r) && !a.value(r).is_empty())
                .map(|a| a.value(r));
            let this_row = first_row + r as u64;
            match from_col {
                Some(v) => Sequence::change_seq(&mut seq_buf, v)
                    .map_err(|e| InputProblem::new(BadInputKind::BadValue, format!("row {this_row}: {e}")))?,
                None => match (ctx.routed.kind, ctx.routed.time_digits.as_deref()) {
                    (FileKind::Load, _) | (_, None) => Sequence::load(&mut seq_buf, &ctx.routed.stem, this_row),
                    (_, Some(d)) => Sequence::file(&mut seq_buf, d, this_row),
                },
            }
            seqs.append_value(&seq_buf);
        }
        let ts: ArrayRef = match plan.ts {
            Some(i) => commit_times(batch.column(i), name_micros, first_row)?,
            None => Arc::new(TimestampMicrosecondArray::from(vec![name_micros; n]).with_timezone(UTC)),
        };
        cols.push(ops);
        cols.push(Arc::new(seqs.finish()));
        cols.push(ts);
        cols.push(Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
            ctx.source_file,
            n,
        ))));
        cols.push(arrow::array::new_null_array(&DataType::Utf8, n));
        let out = RecordBatch::try_new(plan.schema.clone(), cols)
            .map_err(|e| InputProblem::new(BadInputKind::BadValue, e.to_string()))?;
        sink.push(spec, out)?;
    }
    Ok(())
}

/// Which file columns feed which change-set columns.
struct Plan {
    schema: SchemaRef,
    data: Vec<(usize, DataType)>,
    keys: Vec<usize>,
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
                let dt = delta_type(f.data_type()).ok_or_else(|| {
                    InputProblem::new(
                        BadInputKind::IncompatibleSchema,
                        format!("column `{name}` has type {} which Delta cannot store", f.data_type()),
                    )
                })?;
                fields.push(Field::new(name, dt.clone(), true));
                data.push((i, dt));
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
        fields.extend(meta_fields());
        Ok(Plan {
            schema: Arc::new(Schema::new(fields)),
            data,
            keys,
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
fn commit_times(col: &ArrayRef, fallback: Option<i64>, first_row: u64) -> Result<ArrayRef, InputProblem> {
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
                        first_row + r as u64
                    ),
                )
            })?;
            out.push(Some(v));
        }
    }
    Ok(Arc::new(TimestampMicrosecondArray::from(out).with_timezone(UTC)))
}
