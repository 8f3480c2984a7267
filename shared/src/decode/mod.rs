//! DMS file -> deduplicated change batches, one per table. Streams the file in record batches;
//! memory is bounded by the deduplicated change set, not the file.

mod csv;
mod parquet;
mod records;
pub mod values;

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Seek, SeekFrom};

use arrow::array::RecordBatch;

use crate::changes::Deduper;
use crate::config::{TableSpec, Validated};
use crate::error::{BadInputKind, InputProblem};
use crate::route::{FileKind, Routed};

/// Rows per decoded batch.
pub const BATCH_ROWS: usize = 8192;

/// The file format, told by its first bytes rather than its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Parquet,
    GzipCsv,
    Csv,
}

impl Format {
    pub fn sniff(head: &[u8]) -> Format {
        if head.starts_with(b"PAR1") {
            Format::Parquet
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Format::GzipCsv
        } else {
            Format::Csv
        }
    }
}

/// What decode knows about the file beyond its bytes.
#[derive(Debug, Clone)]
pub struct FileContext<'a> {
    pub config: &'a Validated,
    pub routed: &'a Routed,
    /// `s3://bucket/key`: recorded in every change for traceability.
    pub source_file: &'a str,
    /// For LOAD and CDC files: the table's resolved settings.
    pub table: Option<&'a TableSpec>,
    pub max_field_bytes: usize,
}

impl FileContext<'_> {
    fn source_settings(&self) -> &crate::config::SourceConfig {
        &self.config.sources()[self.routed.source]
    }

    /// Whether the table orders its changes by `AR_H_CHANGE_SEQ`: then a CDC row without a
    /// value takes its file's place in that order.
    fn orders_by_change_seq(&self) -> bool {
        self.table.is_some_and(|t| t.sequence_column.is_some())
    }
}

/// One table's share of a decoded file.
#[derive(Debug)]
pub struct TableChanges {
    pub spec: TableSpec,
    /// Deduplicated changes (no key twice across the batches), or every change in file order
    /// for a table that keeps a history; empty when the file held no rows for the table. Several batches rather than one, so no copy is made to join them.
    pub batches: Vec<RecordBatch>,
    pub rows_in: u64,
}

impl TableChanges {
    /// Changes after deduplication.
    pub fn rows_out(&self) -> u64 {
        self.batches.iter().map(|b| b.num_rows() as u64).sum()
    }
}

/// Accumulates deduplicated changes per table.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    tables: BTreeMap<String, TableSink>,
}

#[derive(Debug)]
struct TableSink {
    spec: TableSpec,
    /// Changes still to deduplicate.
    dedup: Option<Deduper>,
    /// Changes a decoder already deduplicated itself.
    done: Vec<RecordBatch>,
    rows_in: u64,
}

impl Sink {
    fn table(&mut self, spec: &TableSpec) -> &mut TableSink {
        self.tables.entry(spec.qualified_name()).or_insert_with(|| TableSink {
            spec: spec.clone(),
            dedup: None,
            done: Vec::new(),
            rows_in: 0,
        })
    }

    pub(crate) fn ensure(&mut self, spec: &TableSpec) {
        self.table(spec);
    }

    /// `in_order`: the table's rows carry no sequence column, so their sequences are their row
    /// numbers and rise with every batch.
    pub(crate) fn push(&mut self, spec: &TableSpec, batch: RecordBatch, in_order: bool) -> Result<(), InputProblem> {
        if spec.history {
            // A history needs every version of a key, not only the newest of the file; the
            // commit deduplicates for the current-state table anyway (see `unify`).
            self.count(spec, batch.num_rows() as u64);
            return self.push_deduplicated(spec, batch);
        }
        let t = self.table(spec);
        t.rows_in += batch.num_rows() as u64;
        let dedup = match &mut t.dedup {
            Some(d) if d.schema().fields() == batch.schema().fields() => d,
            Some(_) => {
                return Err(InputProblem::new(
                    BadInputKind::IncompatibleSchema,
                    format!("rows of table {} change shape within one file", spec.qualified_name()),
                ))
            }
            slot @ None => slot.insert(Deduper::new(batch.schema(), &spec.keys)?.with_rows_in_sequence_order(in_order)),
        };
        dedup.push(batch)
    }

    /// Counts rows read for a table whose decoder deduplicates them itself.
    pub(crate) fn count(&mut self, spec: &TableSpec, rows: u64) {
        self.table(spec).rows_in += rows;
    }

    /// Adds changes that are already deduplicated (one key at most once across all of them), or
    /// that are kept whole (a table with a history).
    pub(crate) fn push_deduplicated(&mut self, spec: &TableSpec, batch: RecordBatch) -> Result<(), InputProblem> {
        let t = self.table(spec);
        if t.done
            .first()
            .is_some_and(|b| b.schema().fields() != batch.schema().fields())
        {
            return Err(InputProblem::new(
                BadInputKind::IncompatibleSchema,
                format!("rows of table {} change shape within one file", spec.qualified_name()),
            ));
        }
        t.done.push(batch);
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<Vec<TableChanges>, InputProblem> {
        self.tables
            .into_values()
            .map(|t| {
                let batches = match (t.dedup, t.done) {
                    (Some(_), done) if !done.is_empty() => {
                        return Err(InputProblem::new(
                            BadInputKind::IncompatibleSchema,
                            format!(
                                "table {} was decoded in two ways from one file",
                                t.spec.qualified_name()
                            ),
                        ))
                    }
                    (Some(d), _) => d.finish()?.into_iter().collect(),
                    (None, done) => done,
                };
                Ok(TableChanges {
                    spec: t.spec,
                    batches,
                    rows_in: t.rows_in,
                })
            })
            .collect()
    }
}

/// Decodes a DMS file that has been spooled to local disk (seekable, so Parquet can be read by
/// row group and gzip streamed).
pub fn decode_file(file: std::fs::File, ctx: &FileContext<'_>) -> Result<Vec<TableChanges>, InputProblem> {
    let mut file = file;
    let mut head = [0u8; 4];
    let n = read_head(&mut file, &mut head)?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| InputProblem::new(BadInputKind::CorruptFile, format!("cannot re-read the file: {e}")))?;
    let format = Format::sniff(&head[..n]);
    if ctx.routed.kind == FileKind::CdcTxn && format == Format::Parquet {
        return Err(InputProblem::new(
            BadInputKind::CorruptFile,
            "CDC_TXN files are always CSV, but this one is Parquet",
        ));
    }
    let mut sink = Sink::default();
    if let Some(spec) = ctx.table {
        sink.ensure(spec);
    }
    match format {
        Format::Parquet => {
            let spec = ctx
                .table
                .ok_or_else(|| InputProblem::new(BadInputKind::UnknownTable, "no table"))?;
            parquet::decode(file, ctx, spec, &mut sink)?;
        }
        Format::GzipCsv => {
            let gz = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(1 << 16, file));
            csv::decode(BufReader::with_capacity(1 << 16, gz), ctx, &mut sink, true)?;
        }
        Format::Csv => csv::decode(BufReader::with_capacity(1 << 16, file), ctx, &mut sink, false)?,
    }
    sink.finish()
}

fn read_head(file: &mut std::fs::File, head: &mut [u8]) -> Result<usize, InputProblem> {
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => {
                return Err(InputProblem::new(
                    BadInputKind::CorruptFile,
                    format!("cannot read: {e}"),
                ))
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests;
