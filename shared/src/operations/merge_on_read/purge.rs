//! Purging: data files whose deletion vectors mark enough of their rows are rewritten without
//! them, in a commit that changes no data.

use std::collections::HashMap;

use arrow::array::BooleanArray;
use deltalake::kernel::{Action, Add};
use deltalake::parquet::arrow::ParquetRecordBatchStreamBuilder;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaResult, DeltaTable};
use futures::TryStreamExt;
use roaring::RoaringTreemap;

use super::data_file::{data_file, DataFile};
use super::parquet_file::{fit, StoreFile};
use super::{commit, dv_err};
use crate::deletion_vector;

/// What a purge did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub files_in: u64,
    pub files_out: u64,
    pub bytes_in: u64,
    pub rows_dropped: u64,
}

/// Rewrites the data files whose deletion vectors mark at least `percent` of their rows,
/// leaving those rows out, in one commit that changes no data (as OPTIMIZE does). Without it a
/// large file would carry its vector forever: bin-packing only picks small files.
pub async fn purge_deleted_rows(table: DeltaTable, percent: u32) -> DeltaResult<(DeltaTable, Purged)> {
    let mut done = Purged::default();
    let snapshot = table.snapshot()?.clone();
    let views: Vec<_> = table.get_active_add_actions_by_predicate(None).try_collect().await?;
    let due: Vec<DataFile> = views
        .iter()
        .filter(|v| {
            let (Some(dv), Some(n)) = (v.deletion_vector_descriptor(), v.num_records()) else {
                return false;
            };
            n > 0 && dv.cardinality.max(0) as u128 * 100 >= n as u128 * percent as u128
        })
        .map(data_file)
        .collect();
    if due.is_empty() {
        return Ok((table, done));
    }
    let store = table.object_store();
    let root = table.table_url().clone();
    let mut writer = RecordBatchWriter::for_table(&table)?;
    let schema = writer.arrow_schema();
    let mut actions = Vec::new();
    for f in &due {
        let deleted = match &f.dv {
            Some(dv) => deletion_vector::read(store.as_ref(), &root, dv).await.map_err(dv_err)?,
            None => RoaringTreemap::new(),
        };
        let reader = StoreFile {
            store: store.clone(),
            path: f.store_path.clone(),
            size: u64::try_from(f.size).unwrap_or(0),
        };
        let mut stream = ParquetRecordBatchStreamBuilder::new(reader)
            .await?
            .with_batch_size(64 * 1024)
            .build()?;
        let mut at = 0u64;
        while let Some(b) = stream.try_next().await? {
            let keep: BooleanArray = (0..b.num_rows() as u64)
                .map(|i| Some(!deleted.contains(at + i)))
                .collect();
            at += b.num_rows() as u64;
            let b = arrow::compute::filter_record_batch(&b, &keep)?;
            if b.num_rows() > 0 {
                writer.write(fit(&b, &schema, &f.partition_values)?).await?;
            }
        }
        // One file's rows at a time in memory: the writer buffers until it flushes.
        let adds = writer.flush().await?;
        done.files_out += adds.len() as u64;
        actions.extend(adds.into_iter().map(|a| {
            Action::Add(Add {
                data_change: false,
                ..a
            })
        }));
        done.files_in += 1;
        done.bytes_in += u64::try_from(f.size).unwrap_or(0);
        done.rows_dropped += deleted.len();
        actions.push(f.remove(false));
    }
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: 0,
    };
    let table = commit(table, &snapshot, actions, HashMap::new(), operation).await?;
    Ok((table, done))
}
