//! DMS file -> deduplicated change batches, one per table. Streams the file in record batches;
//! memory is bounded by the deduplicated change set, not the file.

mod csv;
mod parquet;
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
}

/// One table's share of a decoded file.
#[derive(Debug)]
pub struct TableChanges {
    pub spec: TableSpec,
    /// Deduplicated changes; `None` when the file held no rows for the table.
    pub batch: Option<RecordBatch>,
    pub rows_in: u64,
}

/// Accumulates deduplicated changes per table.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    tables: BTreeMap<String, (TableSpec, Option<Deduper>, u64)>,
}

impl Sink {
    pub(crate) fn ensure(&mut self, spec: &TableSpec) {
        self.tables
            .entry(spec.qualified_name())
            .or_insert_with(|| (spec.clone(), None, 0));
    }

    pub(crate) fn push(&mut self, spec: &TableSpec, batch: RecordBatch) -> Result<(), InputProblem> {
        let entry = self
            .tables
            .entry(spec.qualified_name())
            .or_insert_with(|| (spec.clone(), None, 0));
        entry.2 += batch.num_rows() as u64;
        let dedup = match &mut entry.1 {
            Some(d) if d.schema().fields() == batch.schema().fields() => d,
            Some(_) => {
                return Err(InputProblem::new(
                    BadInputKind::IncompatibleSchema,
                    format!("rows of table {} change shape within one file", spec.qualified_name()),
                ))
            }
            slot @ None => slot.insert(Deduper::new(batch.schema(), &spec.keys)?),
        };
        dedup.push(batch)
    }

    pub(crate) fn finish(self) -> Result<Vec<TableChanges>, InputProblem> {
        self.tables
            .into_values()
            .map(|(spec, d, rows_in)| {
                let batch = match d {
                    Some(d) => d.finish()?,
                    None => None,
                };
                Ok(TableChanges { spec, batch, rows_in })
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
            csv::decode(gz, ctx, &mut sink, true)?;
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
