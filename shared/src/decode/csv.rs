//! DMS CSV (plain or gzip, with or without header, Op or not, CDC_TXN) -> change batches.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{Field, Schema, SchemaRef};

use super::values::ColumnBuilder;
use super::{FileContext, Sink, BATCH_ROWS};
use crate::changes::{meta_fields, source_file_column, Sequence};
use crate::config::{Column, CsvSettings, TableSpec};
use crate::error::{BadInputKind, InputProblem};
use crate::route::{digits_to_micros, FileKind};
use crate::types::{ColumnType, UTC};

pub(super) fn decode<R: Read>(
    reader: R,
    ctx: &FileContext<'_>,
    sink: &mut Sink,
    gzip: bool,
) -> Result<(), InputProblem> {
    let settings = &ctx.source_settings().csv;
    let delimiter = settings.delimiter.as_bytes().first().copied().unwrap_or(b',');
    let mut rdr = ::csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .double_quote(true)
        .buffer_capacity(1 << 16)
        .from_reader(reader);
    let txn = ctx.routed.kind == FileKind::CdcTxn;
    let mut record = ::csv::ByteRecord::new();
    let mut header: Option<Vec<String>> = None;
    let mut decoders: HashMap<(String, String), Option<TableDecoder>> = HashMap::new();
    let mut single: Option<TableDecoder> = None;
    let mut row: u64 = 0;
    loop {
        let more = rdr.read_byte_record(&mut record).map_err(|e| read_error(e, gzip))?;
        if !more {
            break;
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if settings.header && !txn && header.is_none() {
            let names = record
                .iter()
                .map(|f| std::str::from_utf8(f).map(|s| s.trim().to_string()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| InputProblem::new(BadInputKind::InvalidUtf8, "the header line is not UTF-8"))?;
            header = Some(names);
            continue;
        }
        row += 1;
        if txn {
            let field = |i: usize| -> Result<String, InputProblem> {
                let f = record.get(i).ok_or_else(|| {
                    InputProblem::new(
                        BadInputKind::FieldCount,
                        format!("line {line}: a CDC_TXN row needs op,table,schema before the columns"),
                    )
                })?;
                std::str::from_utf8(f)
                    .map(str::to_string)
                    .map_err(|_| InputProblem::new(BadInputKind::InvalidUtf8, format!("line {line}: not UTF-8")))
            };
            let (table, schema) = (field(1)?, field(2)?);
            let slot = match decoders.get_mut(&(schema.clone(), table.clone())) {
                Some(slot) => slot,
                None => {
                    let spec = ctx
                        .config
                        .table(ctx.routed.source, &schema, &table)
                        .map_err(|p| InputProblem::new(p.kind, format!("line {line}: {}", p.reason)))?;
                    let dec = match spec {
                        Some(spec) => {
                            sink.ensure(&spec);
                            Some(TableDecoder::new(spec, settings, Layout::Txn, ctx)?)
                        }
                        None => None,
                    };
                    decoders.entry((schema, table)).or_insert(dec)
                }
            };
            if let Some(dec) = slot {
                dec.push(&record, line, row, ctx, settings)?;
                if dec.rows >= BATCH_ROWS {
                    dec.flush(sink)?;
                }
            }
        } else {
            let dec = match &mut single {
                Some(d) => d,
                None => {
                    let spec = ctx
                        .table
                        .ok_or_else(|| InputProblem::new(BadInputKind::UnknownTable, "no table for this file"))?;
                    let layout = match &header {
                        Some(h) => Layout::Header(h.clone()),
                        None => Layout::Headerless {
                            fields: record.len(),
                            first_field: record
                                .get(0)
                                .and_then(|f| std::str::from_utf8(f).ok())
                                .map(str::to_string),
                        },
                    };
                    let decoder = TableDecoder::new(spec.clone(), settings, layout, ctx).map_err(|e| {
                        // Binary junk has no meaningful field count: call it what it is.
                        if e.kind == BadInputKind::FieldCount && std::str::from_utf8(record.as_slice()).is_err() {
                            InputProblem::new(
                                BadInputKind::InvalidUtf8,
                                format!("line {line}: not UTF-8 text (a binary file, or gzip that lost its header?)"),
                            )
                        } else {
                            e
                        }
                    })?;
                    single.insert(decoder)
                }
            };
            dec.push(&record, line, row, ctx, settings)?;
            if dec.rows >= BATCH_ROWS {
                dec.flush(sink)?;
            }
        }
    }
    if let Some(mut d) = single {
        d.flush(sink)?;
    }
    for d in decoders.into_values().flatten() {
        let mut d = d;
        d.flush(sink)?;
    }
    Ok(())
}

fn read_error(e: ::csv::Error, gzip: bool) -> InputProblem {
    match e.kind() {
        ::csv::ErrorKind::Io(io) if gzip => InputProblem::new(
            BadInputKind::CorruptFile,
            format!("the gzip stream is truncated or damaged: {io}"),
        ),
        ::csv::ErrorKind::Io(io) => InputProblem::new(BadInputKind::CorruptFile, format!("cannot read the file: {io}")),
        _ => InputProblem::new(BadInputKind::CorruptFile, format!("not readable as CSV: {e}")),
    }
}

/// How the fields of a row map to columns.
enum Layout {
    /// No header: the configured columns, after an optional Op and timestamp. The first row's
    /// field count tells whether Op is there.
    Headerless { fields: usize, first_field: Option<String> },
    /// AddColumnName: the header names every field.
    Header(Vec<String>),
    /// CDC_TXN: op,table,schema,<configured columns>.
    Txn,
}

struct DataColumn {
    pos: usize,
    name: String,
    ty: ColumnType,
    builder: ColumnBuilder,
}

struct TableDecoder {
    spec: TableSpec,
    schema: SchemaRef,
    op_pos: Option<usize>,
    ts_pos: Option<usize>,
    seq_pos: Option<usize>,
    fields: usize,
    data: Vec<DataColumn>,
    keys: Vec<usize>,
    op: StringBuilder,
    seq: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    /// `s3://bucket/key` of the file, for `_dms_source_file`.
    file: String,
    nosup: StringBuilder,
    rows: usize,
    seq_buf: String,
    nosup_buf: String,
    name_micros: Option<i64>,
}

impl TableDecoder {
    fn new(
        spec: TableSpec,
        settings: &CsvSettings,
        layout: Layout,
        ctx: &FileContext<'_>,
    ) -> Result<TableDecoder, InputProblem> {
        let _ = settings;
        let configured = spec.columns.clone();
        let ts_name = spec.timestamp_column.clone();
        let seq_name = spec.sequence_column.clone();
        let mut op_pos = None;
        let mut ts_pos = None;
        let mut positions: Vec<(usize, Column)> = Vec::new();
        let fields;
        match layout {
            Layout::Header(names) => {
                fields = names.len();
                for (i, n) in names.iter().enumerate() {
                    if i == 0 && n.eq_ignore_ascii_case("Op") {
                        op_pos = Some(0);
                    } else if ts_name.as_deref() == Some(n.as_str()) {
                        ts_pos = Some(i);
                    } else {
                        let ty = configured
                            .as_ref()
                            .and_then(|c| c.iter().find(|c| &c.name == n))
                            .map(|c| c.ty)
                            .unwrap_or(ColumnType::Utf8);
                        positions.push((i, Column { name: n.clone(), ty }));
                    }
                }
            }
            Layout::Headerless {
                fields: first,
                first_field,
            } => {
                let first_field = first_field.as_deref();
                let cols = configured.ok_or_else(|| {
                    InputProblem::new(
                        BadInputKind::NoColumns,
                        format!(
                            "headerless CSV for table {}.{} but no columns are configured",
                            spec.schema, spec.table
                        ),
                    )
                })?;
                let ts_extra = ts_name.as_ref().is_some_and(|t| !cols.iter().any(|c| &c.name == t));
                // The `$AR_H_CHANGE_SEQ` add-column rule appends its column last unless the
                // configured columns place it.
                let mut cols = cols;
                if let Some(sn) = seq_name.as_ref().filter(|sn| !cols.iter().any(|c| &c.name == *sn)) {
                    cols.push(Column {
                        name: sn.clone(),
                        ty: ColumnType::Utf8,
                    });
                }
                let base = cols.len() + usize::from(ts_extra);
                // A CDC row one field short looks like a row without Op; the Op letter in a
                // non-text first column gives it away.
                let looks_short = ctx.routed.kind != FileKind::Load
                    && first == base
                    && first_field.is_some_and(|f| matches!(f, "I" | "U" | "D"))
                    && cols.first().is_some_and(|c| c.ty != ColumnType::Utf8);
                let start = if first == base + 1 {
                    op_pos = Some(0);
                    1
                } else if first == base && !looks_short {
                    0
                } else {
                    return Err(InputProblem::new(
                        BadInputKind::FieldCount,
                        format!(
                            "the first row has {first} fields, but the {} configured columns{} need {base} (or {} with Op); a quote left open also swallows lines",
                            cols.len(),
                            if ts_extra { " plus the timestamp column" } else { "" },
                            base + 1
                        ),
                    ));
                };
                let mut next = start;
                if ts_extra {
                    ts_pos = Some(next);
                    next += 1;
                }
                for c in cols {
                    if ts_name.as_deref() == Some(c.name.as_str()) {
                        ts_pos = Some(next);
                    } else {
                        positions.push((next, c));
                    }
                    next += 1;
                }
                fields = first;
            }
            Layout::Txn => {
                let cols = configured.ok_or_else(|| {
                    InputProblem::new(
                        BadInputKind::NoColumns,
                        format!(
                            "CDC_TXN rows for table {}.{} but no columns are configured",
                            spec.schema, spec.table
                        ),
                    )
                })?;
                op_pos = Some(0);
                fields = 3 + cols.len();
                positions = cols.into_iter().enumerate().map(|(i, c)| (3 + i, c)).collect();
            }
        }
        let mut seq_pos = None;
        if let Some(sn) = &seq_name {
            if let Some(i) = positions.iter().position(|(_, c)| &c.name == sn) {
                seq_pos = Some(positions.remove(i).0);
            }
        }
        let data: Vec<DataColumn> = positions
            .into_iter()
            .map(|(pos, c)| DataColumn {
                pos,
                builder: ColumnBuilder::for_column(&c, BATCH_ROWS),
                name: c.name,
                ty: c.ty,
            })
            .collect();
        let keys = spec
            .keys
            .iter()
            .map(|k| {
                data.iter().position(|d| &d.name == k).ok_or_else(|| {
                    InputProblem::new(
                        BadInputKind::MissingKey,
                        format!(
                            "key column `{k}` of table {}.{} is not in the file",
                            spec.schema, spec.table
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut schema_fields: Vec<Field> = data.iter().map(|d| Field::new(&d.name, d.ty.arrow(), true)).collect();
        schema_fields.extend(meta_fields());
        Ok(TableDecoder {
            spec,
            schema: Arc::new(Schema::new(schema_fields)),
            op_pos,
            ts_pos,
            seq_pos,
            fields,
            data,
            keys,
            op: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS),
            seq: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 40),
            ts: TimestampMicrosecondBuilder::with_capacity(BATCH_ROWS),
            file: ctx.source_file.to_string(),
            nosup: StringBuilder::new(),
            rows: 0,
            seq_buf: String::with_capacity(64),
            nosup_buf: String::new(),
            name_micros: ctx.routed.time_digits.as_deref().and_then(digits_to_micros),
        })
    }

    fn push(
        &mut self,
        record: &::csv::ByteRecord,
        line: u64,
        row: u64,
        ctx: &FileContext<'_>,
        settings: &CsvSettings,
    ) -> Result<(), InputProblem> {
        if record.len() != self.fields {
            return Err(InputProblem::new(
                BadInputKind::FieldCount,
                format!(
                    "line {line}: {} fields where the table {}.{} has {} (a quote left open also swallows lines)",
                    record.len(),
                    self.spec.schema,
                    self.spec.table,
                    self.fields
                ),
            ));
        }
        let text = |i: usize| -> Result<&str, InputProblem> {
            let f = record.get(i).unwrap_or_default();
            if f.len() > ctx.max_field_bytes {
                return Err(InputProblem::new(
                    BadInputKind::TooLarge,
                    format!(
                        "line {line}: a field of {} bytes exceeds limits.max_field_bytes",
                        f.len()
                    ),
                ));
            }
            std::str::from_utf8(f).map_err(|_| {
                InputProblem::new(
                    BadInputKind::InvalidUtf8,
                    format!("line {line}: field {} is not UTF-8", i + 1),
                )
            })
        };
        let op = match self.op_pos {
            Some(p) => match text(p)? {
                o @ ("I" | "U" | "D") => o,
                other => {
                    // A wrong layout puts row data here: name a letter, never echo the value.
                    let shown = if other.chars().count() <= 2 {
                        format!("`{other}`")
                    } else {
                        format!("a field of {} characters", other.chars().count())
                    };
                    return Err(InputProblem::new(
                        BadInputKind::UnknownOp,
                        format!("line {line}: Op {shown} is not I, U or D"),
                    ));
                }
            },
            None => "I",
        };
        self.nosup_buf.clear();
        for (ci, d) in self.data.iter_mut().enumerate() {
            let v = {
                let f = record.get(d.pos).unwrap_or_default();
                if f.len() > ctx.max_field_bytes {
                    return Err(InputProblem::new(
                        BadInputKind::TooLarge,
                        format!(
                            "line {line}: column `{}` holds {} bytes, over limits.max_field_bytes",
                            d.name,
                            f.len()
                        ),
                    ));
                }
                std::str::from_utf8(f).map_err(|_| {
                    InputProblem::new(
                        BadInputKind::InvalidUtf8,
                        format!("line {line}: column `{}` is not UTF-8", d.name),
                    )
                })?
            };
            if settings.no_sup_value.as_deref() == Some(v) {
                d.builder.append_null();
                if self.nosup_buf.is_empty() {
                    self.nosup_buf.push('|');
                }
                self.nosup_buf.push_str(&d.name);
                self.nosup_buf.push('|');
                continue;
            }
            let is_null = match &settings.null_value {
                Some(nv) => v == nv || (v.is_empty() && !d.builder.takes_empty()),
                None => v.is_empty(),
            };
            if is_null {
                if self.keys.contains(&ci) {
                    return Err(InputProblem::new(
                        BadInputKind::MissingKey,
                        format!("line {line}: key column `{}` is empty", d.name),
                    ));
                }
                d.builder.append_null();
            } else if let Err(what) = d.builder.append_text(v) {
                // Deletes may carry only the key (PostgreSQL's default replica identity): other
                // columns are never read for them, so a garbled one does not matter.
                if op == "D" && !self.keys.contains(&ci) {
                    d.builder.append_null();
                } else {
                    return Err(InputProblem::new(
                        BadInputKind::BadValue,
                        format!("line {line}: column `{}` ({:?}) is not {what}", d.name, d.ty),
                    ));
                }
            }
        }
        match self.seq_pos.map(text).transpose()?.filter(|s| !s.is_empty()) {
            Some(s) => Sequence::change_seq(&mut self.seq_buf, s)
                .map_err(|r| InputProblem::new(BadInputKind::BadValue, format!("line {line}: {r}")))?,
            None => match (ctx.routed.kind, ctx.routed.time_digits.as_deref()) {
                (FileKind::Load, _) | (_, None) => Sequence::load(&mut self.seq_buf, &ctx.routed.stem, row),
                (_, Some(d)) => Sequence::file(&mut self.seq_buf, d, row),
            },
        }
        let ts = match self.ts_pos.map(text).transpose()?.filter(|s| !s.is_empty()) {
            Some(s) => Some(super::values::parse_timestamp_micros(s).ok_or_else(|| {
                InputProblem::new(
                    BadInputKind::BadValue,
                    format!("line {line}: the timestamp column is not yyyy-MM-dd HH:mm:ss[.f]"),
                )
            })?),
            None => self.name_micros,
        };
        self.op.append_value(op);
        self.seq.append_value(&self.seq_buf);
        self.ts.append_option(ts);
        if self.nosup_buf.is_empty() {
            self.nosup.append_null();
        } else {
            self.nosup.append_value(&self.nosup_buf);
        }
        self.rows += 1;
        Ok(())
    }

    fn flush(&mut self, sink: &mut Sink) -> Result<(), InputProblem> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut cols: Vec<ArrayRef> = self.data.iter_mut().map(|d| d.builder.finish()).collect();
        let n = self.rows;
        cols.push(Arc::new(self.op.finish()));
        cols.push(Arc::new(self.seq.finish()));
        cols.push(Arc::new(self.ts.finish().with_timezone(UTC)));
        cols.push(
            source_file_column(&self.file, n).map_err(|e| InputProblem::new(BadInputKind::BadValue, e.to_string()))?,
        );
        cols.push(Arc::new(self.nosup.finish()));
        self.rows = 0;
        let batch = RecordBatch::try_new(self.schema.clone(), cols)
            .map_err(|e| InputProblem::new(BadInputKind::BadValue, e.to_string()))?;
        sink.push(&self.spec, batch, self.seq_pos.is_none())
    }
}
