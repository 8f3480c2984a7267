//! The scan: which stored rows the changes' keys meet, file by file, skipping rows earlier
//! deletion vectors already deleted; only the matched rows' values are decoded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use bytes::Bytes;
use deltalake::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelection};
use deltalake::parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use deltalake::parquet::file::metadata::PageIndexPolicy;
use deltalake::{DeltaResult, DeltaTableError};
use futures::TryStreamExt;
use object_store::ObjectStore;
use roaring::RoaringTreemap;

use super::data_file::DataFile;
use super::dv_err;
use super::key_index::KeyIndex;
use super::parquet_file::{fit, StoreFile};
use crate::deletion_vector;

/// Files read at once: enough to keep both cores of a small Lambda busy and S3 latency hidden.
pub(super) const CONCURRENT_FILES: usize = 4;

/// The rows of one file whose key has a change: positions (ascending), the change each
/// matches, and the `columns` read for them, in the same order.
pub(super) struct Hits {
    pub(super) file: usize,
    pub(super) rows: Vec<u64>,
    pub(super) changes: Vec<u32>,
    pub(super) old: RecordBatch,
    pub(super) deleted_before: RoaringTreemap,
    /// The file's bytes, when it was fetched whole and the commit rewrites files (so the copy
    /// reads them again from memory).
    pub(super) whole: Option<Bytes>,
}

pub(super) struct ScanInput {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) table_root: url::Url,
    pub(super) keys: Arc<KeyIndex>,
    pub(super) key_names: Arc<Vec<String>>,
    /// The keys' types in the table.
    pub(super) key_types: Vec<DataType>,
    /// The table columns to read for matched rows.
    pub(super) columns: SchemaRef,
    /// Bytes of small matched files still to be kept for the copy that follows (copy-on-write;
    /// zero otherwise): beyond it, the copy fetches the file again.
    pub(super) keep_whole: AtomicU64,
}

/// Most bytes of small files a copy-on-write commit keeps between its scan and its copy.
pub(super) const KEEP_WHOLE_BYTES: u64 = 256 * 1024 * 1024;

pub(super) async fn scan_file(input: Arc<ScanInput>, index: usize, file: Arc<DataFile>) -> DeltaResult<Option<Hits>> {
    let deleted_before = match &file.dv {
        Some(dv) => deletion_vector::read(input.store.as_ref(), &input.table_root, dv)
            .await
            .map_err(dv_err)?,
        None => RoaringTreemap::new(),
    };
    let size = u64::try_from(file.size).unwrap_or(0);
    let mut reader = StoreFile::open(input.store.clone(), file.store_path.clone(), size).await?;
    // The offset index lets the second read skip pages that hold no matched row.
    let options = ArrowReaderOptions::new().with_offset_index_policy(PageIndexPolicy::Optional);
    let meta = ArrowReaderMetadata::load_async(&mut reader, options).await?;
    let file_schema = meta.schema().clone();
    let roots = |names: &mut dyn Iterator<Item = &str>| -> Vec<usize> {
        names.filter_map(|n| file_schema.index_of(n).ok()).collect()
    };
    let key_roots = roots(&mut input.key_names.iter().map(String::as_str));
    if key_roots.len() != input.key_names.len() {
        return Err(DeltaTableError::Generic(format!(
            "data file {} lacks a key column ({})",
            file.log_path,
            input.key_names.join(", ")
        )));
    }
    let mask = ProjectionMask::roots(meta.parquet_schema(), key_roots);
    let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader.clone(), meta.clone())
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()?;
    let (mut rows, mut changes) = (Vec::new(), Vec::new());
    let mut at = 0u64;
    while let Some(b) = stream.try_next().await? {
        let cols = input
            .key_names
            .iter()
            .zip(&input.key_types)
            .map(|(k, t)| {
                let c = b
                    .column_by_name(k)
                    .ok_or_else(|| ArrowError::SchemaError(format!("no column {k}")))?;
                cast(c, t)
            })
            .collect::<Result<Vec<_>, _>>()?;
        input.keys.probe(&cols, |i, src| {
            let row = at + i as u64;
            if !deleted_before.contains(row) {
                rows.push(row);
                changes.push(src);
            }
        })?;
        at += b.num_rows() as u64;
    }
    if rows.is_empty() {
        return Ok(None);
    }
    // Only the matched rows of the wanted columns are decoded (pages without one are skipped).
    let wanted = roots(&mut input.columns.fields().iter().map(|f| f.name().as_str()));
    let selection =
        RowSelection::from_consecutive_ranges(rows.iter().map(|r| *r as usize..*r as usize + 1), at as usize);
    let whole = reader.whole.clone().filter(|w| {
        let n = w.len() as u64;
        input
            .keep_whole
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(n))
            .is_ok()
    });
    let batches: Vec<RecordBatch> = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta.clone())
        .with_projection(ProjectionMask::roots(meta.parquet_schema(), wanted))
        .with_row_selection(selection)
        .with_batch_size(8 * 1024)
        .build()?
        .try_collect()
        .await?;
    let Some(first) = batches.first() else {
        return Err(DeltaTableError::Generic(format!(
            "data file {}: no rows where {} matched",
            file.log_path,
            rows.len()
        )));
    };
    let read = concat_batches(&first.schema(), &batches)?;
    let n = rows.len();
    if read.num_rows() != n {
        return Err(DeltaTableError::Generic(format!(
            "data file {}: read {} matched rows, expected {n}",
            file.log_path,
            read.num_rows()
        )));
    }
    let old = fit(&read, &input.columns, &file.partition_values)?;
    Ok(Some(Hits {
        file: index,
        rows,
        changes,
        old,
        deleted_before,
        whole,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operations::merge_on_read::data_file::data_file;
    use arrow::array::{ArrayRef, Int64Array};
    use arrow::util::display::array_value_to_string;

    /// Tables other engines wrote (`tests/data/deletion_vectors`, see its README), probed with
    /// every key they ever held: the scan meets each live row once and no deleted one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_scan_skips_the_rows_other_engines_deleted() {
        let mut partitioned: Vec<Vec<String>> = (0..50)
            .filter(|x| !(x % 2 == 0 && *x < 30))
            .map(|x| vec![(x % 10).to_string(), x.to_string(), format!("foo{}", x % 5)])
            .collect();
        partitioned.sort();
        let ints = |r: std::ops::RangeInclusive<i64>| r.map(|i| vec![i.to_string()]).collect::<Vec<_>>();
        let cases = [
            ("table-with-dv-small", vec!["value"], ints(1..=8)),
            ("basic-dv-no-checkpoint", vec!["id"], ints(2..=9)),
            (
                "dv-partitioned-with-checkpoint",
                vec!["part", "col1", "col2"],
                partitioned,
            ),
        ];
        for (name, cols, expected) in cases {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/deletion_vectors")
                .join(name);
            let table = deltalake::open_table(url::Url::from_directory_path(&dir).unwrap())
                .await
                .unwrap();
            let schema = table.snapshot().unwrap().snapshot().arrow_schema();
            let key = if cols.len() == 1 { cols[0] } else { cols[1] };
            let key_type = schema.field_with_name(key).unwrap().data_type().clone();
            let every: ArrayRef = Arc::new(Int64Array::from((0..2000).collect::<Vec<i64>>()));
            let every = cast(&every, &key_type).unwrap();
            let input = Arc::new(ScanInput {
                store: table.object_store(),
                table_root: table.table_url().clone(),
                keys: Arc::new(KeyIndex::build(&[every]).unwrap()),
                key_names: Arc::new(vec![key.to_string()]),
                key_types: vec![key_type],
                columns: schema.clone(),
                keep_whole: AtomicU64::new(0),
            });
            let views: Vec<_> = table
                .get_active_add_actions_by_predicate(None)
                .try_collect()
                .await
                .unwrap();
            let (mut met, mut skipped, mut marked) = (Vec::new(), 0, 0);
            for (i, v) in views.iter().enumerate() {
                marked += v.deletion_vector_descriptor().map_or(0, |d| d.cardinality as u64);
                let Some(hits) = scan_file(input.clone(), i, Arc::new(data_file(v))).await.unwrap() else {
                    continue;
                };
                skipped += hits.deleted_before.len();
                assert_eq!(hits.rows.len(), hits.old.num_rows(), "{name}");
                for r in 0..hits.old.num_rows() {
                    met.push(
                        cols.iter()
                            .map(|c| array_value_to_string(hits.old.column_by_name(c).unwrap(), r).unwrap())
                            .collect::<Vec<_>>(),
                    );
                }
            }
            met.sort();
            assert_eq!(met, expected, "{name}: the live rows the scan met");
            assert!(marked > 0, "{name} has no deletion vector");
            assert_eq!(skipped, marked, "{name}: rows the vectors deleted, as read");
        }
    }
}
