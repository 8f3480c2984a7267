//! Parquet data files read through the table's store (small ones fetched whole, large ones by
//! ranged reads), and the columns read made to fit the table's schema.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use deltalake::parquet::arrow::arrow_reader::ArrowReaderOptions;
use deltalake::parquet::arrow::async_reader::AsyncFileReader;
use deltalake::parquet::errors::ParquetError;
use deltalake::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use deltalake::DeltaResult;
use futures::future::BoxFuture;
use futures::FutureExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// Files up to this size are fetched whole, once: on S3 each ranged read (footer, key columns,
/// matched rows, then the whole file for a rewrite) is a round trip of its own, and a small
/// file costs less to download than two of them.
pub(super) const WHOLE_FILE_MAX: u64 = 2 * 1024 * 1024;

/// A data file read through the table's store: fetched whole when small (see
/// [`WHOLE_FILE_MAX`]), else by ranged reads.
#[derive(Clone)]
pub(super) struct StoreFile {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) path: Path,
    pub(super) size: u64,
    /// The file's bytes, when fetched whole.
    pub(super) whole: Option<Bytes>,
}

impl StoreFile {
    /// Opens `path` (of `size` bytes), fetching it whole if it is small.
    pub(super) async fn open(store: Arc<dyn ObjectStore>, path: Path, size: u64) -> object_store::Result<StoreFile> {
        let whole = if size <= WHOLE_FILE_MAX {
            Some(store.get(&path).await?.bytes().await?)
        } else {
            None
        };
        Ok(StoreFile {
            store,
            path,
            size,
            whole,
        })
    }

    fn slice(&self, range: &std::ops::Range<u64>) -> Option<deltalake::parquet::errors::Result<Bytes>> {
        let whole = self.whole.as_ref()?;
        let (start, end) = (usize::try_from(range.start).ok()?, usize::try_from(range.end).ok()?);
        Some(if start <= end && end <= whole.len() {
            Ok(whole.slice(start..end))
        } else {
            Err(ParquetError::EOF(format!(
                "{}: range {start}..{end} beyond its {} bytes",
                self.path,
                whole.len()
            )))
        })
    }
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreFile {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, deltalake::parquet::errors::Result<Bytes>> {
        async move {
            match self.slice(&range) {
                Some(bytes) => bytes,
                None => self.store.get_range(&self.path, range).await.map_err(external),
            }
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, deltalake::parquet::errors::Result<Vec<Bytes>>> {
        async move {
            if self.whole.is_some() {
                return ranges
                    .iter()
                    .map(|r| self.slice(r).unwrap_or_else(|| Ok(Bytes::new())))
                    .collect();
            }
            self.store.get_ranges(&self.path, &ranges).await.map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, deltalake::parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let mut reader = ParquetMetaDataReader::new().with_prefetch_hint(Some(64 * 1024));
            if let Some(o) = options {
                reader = reader
                    .with_column_index_policy(o.column_index_policy())
                    .with_offset_index_policy(o.offset_index_policy());
            }
            let size = self.size;
            Ok(Arc::new(reader.load_and_finish(self, size).await?))
        }
        .boxed()
    }
}

/// `batch` (columns read from a data file) in `schema`: columns by name, cast to the table's
/// types; partition columns, which live in the log rather than in the file, from the file's
/// partition values; anything else null.
pub(super) fn fit(
    batch: &RecordBatch,
    schema: &SchemaRef,
    partition_values: &HashMap<String, Option<String>>,
) -> DeltaResult<RecordBatch> {
    let n = batch.num_rows();
    let mut cols = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let col = match batch.column_by_name(f.name()) {
            Some(c) => cast(c, f.data_type())?,
            None => match partition_values.get(f.name()) {
                Some(v) => cast(
                    &(Arc::new(StringArray::from(vec![v.clone(); n])) as ArrayRef),
                    f.data_type(),
                )?,
                None => new_null_array(f.data_type(), n),
            },
        };
        cols.push(col);
    }
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        cols,
        &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)),
    )?)
}
