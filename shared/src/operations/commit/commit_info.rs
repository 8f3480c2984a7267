//! What each commit records in its `commitInfo` (the change sets, their source files and each
//! file's oldest change) and the readers of it: the log is the one place that survives the
//! staged change sets being removed.

use std::collections::HashMap;

use arrow::array::{AsArray, RecordBatch};
use deltalake::kernel::transaction::CommitBuilder as DeltaCommitBuilder;
use deltalake::kernel::{Action, CommitInfo, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::DeltaTable;
use futures::TryStreamExt;
use serde_json::{json, Value};

use crate::error::{Result, Stage};
use crate::lake::{self, delta_err};
use crate::model::columns::{COMMIT_INFO_KEY, SEQ};
use crate::storage::{Location, Stores};

use super::Pending;

const APP_ID: &str = "dms2delta";

pub(super) fn commit_info(pending: &[Pending], rows: usize) -> HashMap<String, Value> {
    let mut m = HashMap::new();
    // Each file's oldest change: a truncate's floor is placed below those DMS wrote after it.
    let first_seqs: serde_json::Map<String, Value> = pending
        .iter()
        .filter_map(|p| Some((p.meta.source_file.clone(), Value::from(oldest_seq(&p.batches)?))))
        .collect();
    m.insert(
        COMMIT_INFO_KEY.to_string(),
        json!({
            "change_sets": pending.iter().map(|p| p.path.to_string()).collect::<Vec<_>>(),
            "source_files": pending.iter().map(|p| p.meta.source_file.clone()).collect::<Vec<_>>(),
            "first_seqs": first_seqs,
            "changes": rows,
            "version": env!("CARGO_PKG_VERSION"),
        }),
    );
    m
}

/// A commit that changes no data but records which change sets were applied.
pub(super) async fn trace_only_commit(table: &DeltaTable, info: HashMap<String, Value>) -> deltalake::DeltaResult<u64> {
    let snapshot = table.snapshot()?;
    let current = snapshot
        .transaction_version(table.log_store().as_ref(), APP_ID)
        .await?
        .unwrap_or(0);
    let actions = vec![Action::Txn(Transaction::new(APP_ID, current + 1))];
    let op = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    let done = DeltaCommitBuilder::default()
        .with_actions(actions)
        .with_app_metadata(info)
        .build(Some(snapshot), table.log_store(), op)
        .await?;
    Ok(done.version())
}

/// The lowest sequence of a change set's changes.
fn oldest_seq(batches: &[RecordBatch]) -> Option<String> {
    batches
        .iter()
        .filter_map(|b| b.column_by_name(SEQ)?.as_string_opt::<i32>().cloned())
        .filter_map(|seqs| seqs.iter().flatten().min().map(str::to_string))
        .min()
}

/// The oldest change of the files `newer` picks, among the change sets being applied and the
/// table's commits since `since` (16 digits of UTC time; files written after it cannot have
/// been committed before it, and a few minutes are allowed for the writers' clocks).
pub(super) async fn first_change_of_files(
    table: &DeltaTable,
    newer: &(dyn Fn(&str) -> bool + Sync),
    since: &str,
    applied: &[Pending],
) -> deltalake::DeltaResult<Option<String>> {
    let mut first = applied
        .iter()
        .filter(|p| newer(&p.meta.source_file))
        .filter_map(|p| oldest_seq(&p.batches))
        .min();
    let since_ms = crate::route::digits_to_micros(&format!("{since}00")).map_or(i64::MIN, |us| us / 1000 - 600_000);
    let mut history = table.history(None);
    while let Some(ci) = history.try_next().await? {
        if ci.timestamp.is_some_and(|t| t < since_ms) {
            break;
        }
        let Some(seqs) = ci
            .info
            .get(COMMIT_INFO_KEY)
            .and_then(|i| i.get("first_seqs")?.as_object())
        else {
            continue;
        };
        for (file, seq) in seqs {
            if let Some(seq) = seq.as_str().filter(|_| newer(file)) {
                if first.as_deref().is_none_or(|f| seq < f) {
                    first = Some(seq.to_string());
                }
            }
        }
    }
    Ok(first)
}

/// Which source files each version applied, newest first (from the commits' `commitInfo`).
pub async fn applied_files(stores: &Stores, loc: &Location, limit: Option<usize>) -> Result<Vec<(u64, Vec<String>)>> {
    let Some((table, infos)) = commit_infos(stores, loc, limit).await? else {
        return Ok(Vec::new());
    };
    // History comes newest first, one commitInfo per version (delta-rs writes one in every
    // commit), so the position tells the version.
    let latest = table.version().unwrap_or(0);
    Ok(infos
        .into_iter()
        .enumerate()
        .filter_map(|(i, ci)| {
            let files = ci.info.get(COMMIT_INFO_KEY)?.get("source_files")?.as_array()?;
            let version = latest.checked_sub(i as u64)?;
            Some((
                version,
                files.iter().filter_map(|f| f.as_str().map(str::to_string)).collect(),
            ))
        })
        .collect())
}

/// The ids of the change sets the table's commits recorded (see [`crate::stage::change_set_id`]):
/// a DMS object version is applied when its id is here. Empty when there is no table yet.
pub async fn applied_change_sets(stores: &Stores, loc: &Location) -> Result<Vec<String>> {
    if let Location::Local { dir } = stores.physical(loc) {
        // Opening a folder-backed table creates its folder; a table never written has none.
        if !dir.join("_delta_log").exists() {
            return Ok(Vec::new());
        }
    }
    let Some((_, infos)) = commit_infos(stores, loc, None).await? else {
        return Ok(Vec::new());
    };
    Ok(infos
        .iter()
        .filter_map(|ci| ci.info.get(COMMIT_INFO_KEY)?.get("change_sets")?.as_array())
        .flatten()
        .filter_map(|p| p.as_str())
        .filter_map(|p| p.rsplit('/').next()?.strip_suffix(".parquet"))
        .map(str::to_string)
        .collect())
}

/// The table's `commitInfo`s, newest first (the latest `limit`), with the table they were read
/// from; `None` when there is no table yet.
async fn commit_infos(
    stores: &Stores,
    loc: &Location,
    limit: Option<usize>,
) -> Result<Option<(DeltaTable, Vec<CommitInfo>)>> {
    let (table, exists) = lake::open(stores, loc).await?;
    if !exists {
        return Ok(None);
    }
    let infos = table
        .history(limit)
        .try_collect()
        .await
        .map_err(|e| delta_err(Stage::Commit, loc, e))?;
    Ok(Some((table, infos)))
}
