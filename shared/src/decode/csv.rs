//! DMS CSV (plain or gzip, with or without header, Op or not, CDC_TXN) -> change batches.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder, TimestampMicrosecondBuilder};
use arrow::datatypes::{Field, Schema, SchemaRef};

use super::records::{ReadLimits, Record, RecordReader};
use super::values::ColumnBuilder;
use super::{FileContext, Sink, BATCH_ROWS};
use crate::changes::{meta_fields, source_file_column, Sequence};
use crate::config::{Column, CsvSettings, TableSpec};
use crate::error::{BadInputKind, InputProblem};
use crate::route::{digits_to_micros, FileKind};
use crate::types::{ColumnType, UTC};

pub(super) fn decode<R: BufRead>(
    reader: R,
    ctx: &FileContext<'_>,
    sink: &mut Sink,
    gzip: bool,
) -> Result<(), InputProblem> {
    let settings = &ctx.source_settings().csv;
    let delimiter = settings.delimiter.as_bytes().first().copied().unwrap_or(b',');
    let limits = &ctx.config.config.limits;
    let mut rdr = RecordReader::new(
        reader,
        delimiter,
        ReadLimits {
            field: ctx.max_field_bytes,
            record: limits.record_bytes().max(ctx.max_field_bytes),
            text: limits.max_inflated_bytes,
        },
        gzip,
    );
    let txn = ctx.routed.kind == FileKind::CdcTxn;
    let mut record = Record::default();
    let mut header: Option<Vec<String>> = None;
    let mut decoders: HashMap<(String, String), Option<TableDecoder>> = HashMap::new();
    let mut single: Option<TableDecoder> = None;
    let mut row: u64 = 0;
    loop {
        let more = rdr.read(&mut record)?;
        if !more {
            break;
        }
        let line = record.line();
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

/// Why a headerless file's first row does not fit the configured columns: what the row holds,
/// what the configuration expects, in DMS's terms.
fn headerless_mismatch(
    spec: &TableSpec,
    first: usize,
    first_field: Option<&str>,
    cols: &[Column],
    ts_extra: Option<&str>,
) -> String {
    let values = cols.len() + usize::from(ts_extra.is_some());
    let found = match first_field {
        Some("I" | "U" | "D") if first > 0 => format!(
            "{first} fields: Op + {} value{}",
            first - 1,
            if first == 2 { "" } else { "s" }
        ),
        _ => format!("{first} fields and no Op column"),
    };
    let mut expected = format!(
        "{} configured column{}",
        cols.len(),
        if cols.len() == 1 { "" } else { "s" }
    );
    if let Some(ts) = ts_extra {
        expected.push_str(&format!(" plus the timestamp column `{ts}`"));
    }
    if let Some(seq) = spec.sequence_column.as_deref() {
        if cols.iter().any(|c| c.name == seq) {
            expected.push_str(&format!(" (including the `{seq}` sequence column)"));
        }
    }
    let mut msg = format!(
        "the first row has {found}, but table {}.{} has {expected}, so a row needs {values} fields (full load) or Op + {values} = {} (CDC, or IncludeOpForFullLoad)",
        spec.schema,
        spec.table,
        values + 1
    );
    msg.push_str("; a value with an unbalanced quote also runs on over the lines after it");
    msg.push_str("; the table's `columns` must list the source table's current columns, in the source's order");
    msg
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
    /// In `unlogged_when_null`: NULL in an update means not logged.
    unlogged_when_null: bool,
}

struct TableDecoder {
    spec: TableSpec,
    /// What fixed the field count, for reports.
    shape: &'static str,
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
        let shape;
        match layout {
            Layout::Header(names) => {
                fields = names.len();
                shape = "header line";
                for (i, n) in names.iter().enumerate() {
                    if i == 0 && n.eq_ignore_ascii_case("Op") {
                        op_pos = Some(0);
                    } else if ts_name.as_deref() == Some(n.as_str()) {
                        ts_pos = Some(i);
                    } else {
                        let n = spec.column_name(n);
                        let ty = configured
                            .as_ref()
                            .and_then(|c| c.iter().find(|c| c.name == n))
                            .map(|c| c.ty)
                            .unwrap_or(ColumnType::Utf8);
                        positions.push((
                            i,
                            Column {
                                name: n.to_string(),
                                ty,
                            },
                        ));
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
                        headerless_mismatch(
                            &spec,
                            first,
                            first_field,
                            &cols,
                            ts_extra.then_some(ts_name.as_deref()).flatten(),
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
                shape = "first row and the configured columns";
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
                shape = "configured columns after CDC_TXN's Op, table and schema";
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
                unlogged_when_null: spec.unlogged_when_null.contains(&c.name),
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
            shape,
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
        record: &Record,
        line: u64,
        row: u64,
        ctx: &FileContext<'_>,
        settings: &CsvSettings,
    ) -> Result<(), InputProblem> {
        if record.len() != self.fields {
            return Err(InputProblem::new(
                BadInputKind::FieldCount,
                format!(
                    "line {line}: the row has {} fields, but the rows of table {}.{} in this file have {}{} (set by the {}); a value with an unbalanced quote joins lines, and a column added or dropped mid-file changes the count",
                    record.len(),
                    self.spec.schema,
                    self.spec.table,
                    self.fields,
                    if self.op_pos.is_some() { ", Op included" } else { "" },
                    self.shape
                ),
            ));
        }
        // Field and record sizes were checked as the record was read.
        let text = |i: usize| -> Result<&str, InputProblem> {
            let f = record.get(i).unwrap_or_default();
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
                std::str::from_utf8(f).map_err(|_| {
                    InputProblem::new(
                        BadInputKind::InvalidUtf8,
                        format!("line {line}: column `{}` is not UTF-8", d.name),
                    )
                })?
            };
            let is_key = self.keys.contains(&ci);
            let is_null = match &settings.null_value {
                // With a sentinel, an empty field is an empty string where a string can be one.
                Some(nv) => v == nv || (v.is_empty() && !d.builder.takes_empty()),
                // DMS writes NULL as nothing between the delimiters. `""` is an empty string,
                // and so is an empty key field: a key is never NULL in the source.
                None => v.is_empty() && !(d.builder.takes_empty() && (is_key || record.is_quoted_empty(d.pos))),
            };
            if settings.no_sup_value.as_deref() == Some(v) || (is_null && op == "U" && d.unlogged_when_null) {
                d.builder.append_null();
                if self.nosup_buf.is_empty() {
                    self.nosup_buf.push('|');
                }
                self.nosup_buf.push_str(&d.name);
                self.nosup_buf.push('|');
                continue;
            }
            if is_null {
                if is_key {
                    return Err(InputProblem::new(
                        BadInputKind::MissingKey,
                        match &settings.null_value {
                            Some(nv) if v == nv => format!(
                                "line {line}: key column `{}` is NULL (csv.null_value `{nv}`), but a key identifies its row and cannot be NULL",
                                d.name
                            ),
                            _ => format!(
                                "line {line}: key column `{}` ({:?}) is empty, which is NULL for a column of this type, but a key identifies its row and cannot be NULL",
                                d.name, d.ty
                            ),
                        },
                    ));
                }
                d.builder.append_null();
            } else if let Err(why) = d.builder.append_text(v) {
                // Deletes may carry only the key (PostgreSQL's default replica identity): other
                // columns are never read for them, so a garbled one does not matter.
                if op == "D" && !is_key {
                    d.builder.append_null();
                } else {
                    return Err(InputProblem::new(
                        BadInputKind::BadValue,
                        format!("line {line}: the value of column `{}` ({:?}) {why}", d.name, d.ty),
                    ));
                }
            }
        }
        match self.seq_pos.map(text).transpose()?.filter(|s| !s.is_empty()) {
            Some(s) => Sequence::change_seq(&mut self.seq_buf, s)
                .map_err(|r| InputProblem::new(BadInputKind::BadValue, format!("line {line}: {r}")))?,
            None => match (ctx.routed.kind, ctx.routed.time_digits.as_deref()) {
                (FileKind::Load, _) | (_, None) => Sequence::load_in(
                    &mut self.seq_buf,
                    ctx.routed.load_anchor.as_ref(),
                    ctx.routed.load_folder.as_deref(),
                    &ctx.routed.stem,
                    row,
                ),
                (_, Some(d)) => Sequence::file_for(&mut self.seq_buf, d, row, ctx.orders_by_change_seq()),
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
