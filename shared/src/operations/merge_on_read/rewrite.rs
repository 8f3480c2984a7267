//! Copy-on-write without a query plan: a data file written again without some of its rows.
//!
//! Used by the commit's rewrite mode (the replaced rows of a table without deletion vectors)
//! and by purging (rows deletion vectors already mark). The kept rows stream from the old file
//! into the caller's writer a batch at a time; the caller flushes and commits.

use arrow::array::BooleanArray;
use bytes::Bytes;
use deltalake::parquet::arrow::ParquetRecordBatchStreamBuilder;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaResult;
use futures::TryStreamExt;
use object_store::ObjectStore;
use roaring::RoaringTreemap;
use std::sync::Arc;

use super::data_file::DataFile;
use super::parquet_file::{fit, StoreFile};

/// Writes the rows of `file` whose positions `dropped` lacks into `writer`, in the writer's
/// schema (partition columns from the file's partition values). `whole`: the file's bytes, if
/// the scan already fetched them. Returns the rows kept.
pub(super) async fn copy_without(
    writer: &mut RecordBatchWriter,
    store: Arc<dyn ObjectStore>,
    file: &DataFile,
    dropped: &RoaringTreemap,
    whole: Option<Bytes>,
) -> DeltaResult<u64> {
    let schema = writer.arrow_schema();
    let (path, size) = (file.store_path.clone(), u64::try_from(file.size).unwrap_or(0));
    let reader = match whole {
        Some(whole) => StoreFile {
            store,
            path,
            size,
            whole: Some(whole),
        },
        None => StoreFile::open(store, path, size).await?,
    };
    let mut stream = ParquetRecordBatchStreamBuilder::new(reader)
        .await?
        .with_batch_size(64 * 1024)
        .build()?;
    let (mut at, mut kept) = (0u64, 0u64);
    while let Some(b) = stream.try_next().await? {
        let keep: BooleanArray = (0..b.num_rows() as u64)
            .map(|i| Some(!dropped.contains(at + i)))
            .collect();
        at += b.num_rows() as u64;
        let b = arrow::compute::filter_record_batch(&b, &keep)?;
        if b.num_rows() > 0 {
            kept += b.num_rows() as u64;
            writer.write(fit(&b, &schema, &file.partition_values)?).await?;
        }
    }
    Ok(kept)
}
