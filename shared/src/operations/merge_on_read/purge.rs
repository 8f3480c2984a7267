//! Purging: data files whose deletion vectors mark enough of their rows are rewritten without
//! them, in a commit that changes no data.

use std::collections::HashMap;

use deltalake::kernel::{Action, Add};
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaResult, DeltaTable};
use futures::TryStreamExt;
use roaring::RoaringTreemap;

use super::data_file::{data_file, DataFile};
use super::rewrite::copy_without;
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
    let mut actions = Vec::new();
    for f in &due {
        let deleted = match &f.dv {
            Some(dv) => deletion_vector::read(store.as_ref(), &root, dv).await.map_err(dv_err)?,
            None => RoaringTreemap::new(),
        };
        copy_without(&mut writer, store.clone(), f, &deleted, None).await?;
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
