//! Opening Delta tables where the configuration says the lake is, and telling the Delta engine's
//! errors apart: conflicts are retried, everything else is reported.

use std::sync::{Arc, Once};

use deltalake::errors::DeltaTableError;
use deltalake::kernel::transaction::TransactionError;
use deltalake::{DeltaResult, DeltaTable, DeltaTableBuilder};
use object_store::local::LocalFileSystem;
use url::Url;

use crate::error::{Error, Result, Stage};
use crate::storage::{Location, Stores};

pub use crate::snapshot_cache::{SnapshotCache, SNAPSHOT_CACHE_TABLES};

static REGISTER: Once = Once::new();

/// The URL of a location for the Delta engine (mapped buckets become folders).
pub fn table_url(stores: &Stores, loc: &Location) -> Result<Url> {
    let physical = stores.physical(loc);
    if let Location::Local { dir } = &physical {
        std::fs::create_dir_all(dir).map_err(Error::io("create table folder"))?;
        let abs = std::fs::canonicalize(dir).map_err(Error::io("resolve table folder"))?;
        return Url::from_directory_path(&abs).map_err(|_| Error::Config {
            path: "lake".into(),
            reason: format!("{} is not a usable folder", abs.display()),
        });
    }
    physical.engine_url().map_err(|e| Error::Config {
        path: "lake".into(),
        reason: e.to_string(),
    })
}

/// Keeps `table` (just written by this process) as the snapshot of `loc` for the next
/// [`open`]: the version a commit returns is one this process need not read again.
pub fn remember(stores: &Stores, loc: &Location, table: &DeltaTable) {
    if let Ok(url) = table_url(stores, loc) {
        stores.snapshots().put(&url, table);
    }
}

/// A table handle, loaded at its latest version when it exists. `Ok(None)` when there is no
/// table yet (its log is empty).
///
/// A snapshot this process already holds ([`SnapshotCache`]) is brought up to date instead of
/// read afresh; if that fails for any reason the log is read afresh.
pub async fn open(stores: &Stores, loc: &Location) -> Result<(DeltaTable, bool)> {
    REGISTER.call_once(|| deltalake::aws::register_handlers(None));
    let url = table_url(stores, loc)?;
    let cache = stores.snapshots();
    if let Some(mut table) = cache.get(&url) {
        match table.update_incremental(None).await {
            Ok(()) => {
                cache.put(&url, &table);
                return Ok((table, true));
            }
            Err(e) => {
                tracing::info!(table = %url, error = %e, "held snapshot could not be brought up to date; reading the log afresh");
                cache.forget(&url);
            }
        }
    }
    let mut builder = DeltaTableBuilder::from_url(url.clone()).map_err(|e| delta_err(Stage::Commit, &url, e))?;
    if let Some(wrap) = stores.delta_wrapper() {
        // Tests put a fault injector between the engine and storage, on folders and on S3 alike.
        let root: Arc<dyn object_store::ObjectStore> = match stores.physical(loc) {
            Location::S3 { bucket, .. } => stores.bucket(&bucket)?,
            _ => Arc::new(LocalFileSystem::new()),
        };
        builder = builder.with_storage_backend(wrap(root), url.clone());
    } else {
        builder = builder.with_storage_options(stores.delta_options());
    }
    let mut table = builder.build().map_err(|e| delta_err(Stage::Commit, &url, e))?;
    match table.load().await {
        Ok(()) => {
            cache.put(&url, &table);
            Ok((table, true))
        }
        Err(DeltaTableError::NotATable(_)) => Ok((table, false)),
        Err(e) => Err(delta_err(Stage::Commit, &url, e)),
    }
}

pub use crate::error::{delta_is_retryable, is_conflict};

/// The result `r` of creating the table at `handle`'s location, with a creator that got there
/// first made the typed conflict it is (version 0 exists). The engine reports that race in an
/// untyped error (its create error type is private), so the log is asked instead of the text.
pub async fn settle_create(handle: &DeltaTable, r: DeltaResult<DeltaTable>) -> DeltaResult<DeltaTable> {
    match r {
        Err(e @ (DeltaTableError::Generic(_) | DeltaTableError::GenericError { .. })) => {
            match handle.log_store().is_delta_table_location().await {
                Ok(true) => Err(DeltaTableError::Transaction {
                    source: TransactionError::VersionAlreadyExists(0),
                }),
                _ => Err(e),
            }
        }
        r => r,
    }
}

/// Wraps an engine error with where it happened, keeping it as the source (whether a retry may
/// help is read from it: [`delta_is_retryable`]).
pub fn delta_err(stage: Stage, context: impl std::fmt::Display, e: DeltaTableError) -> Error {
    Error::Delta {
        stage,
        context: context.to_string(),
        source: Box::new(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageConfig;
    use deltalake::kernel::{DataType, StructField};
    use deltalake::protocol::SaveMode;

    async fn create(handle: &DeltaTable) -> DeltaResult<DeltaTable> {
        handle
            .create()
            .with_columns([StructField::new("id", DataType::LONG, true)])
            .with_save_mode(SaveMode::ErrorIfExists)
            .await
    }

    #[tokio::test]
    async fn a_creator_that_got_there_first_is_a_typed_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let stores = Stores::new(StorageConfig::default());
        let loc = Location::Local {
            dir: dir.path().join("t"),
        };
        let (first, exists) = open(&stores, &loc).await.unwrap();
        let (second, _) = open(&stores, &loc).await.unwrap();
        assert!(!exists);
        settle_create(&first, create(&first).await).await.unwrap();
        let raw = create(&second).await.unwrap_err();
        assert!(!is_conflict(&raw), "the engine's own error is untyped: {raw}");
        let settled = settle_create(&second, Err(raw)).await.unwrap_err();
        assert!(is_conflict(&settled), "{settled}");
        // Any other failure of a create stays what it was.
        let empty = tempfile::tempdir().unwrap();
        let (third, _) = open(
            &stores,
            &Location::Local {
                dir: empty.path().join("t"),
            },
        )
        .await
        .unwrap();
        let other = settle_create(&third, Err(DeltaTableError::Generic("no".into())))
            .await
            .unwrap_err();
        assert!(!is_conflict(&other), "{other}");
    }
}
