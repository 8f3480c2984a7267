//! Opening Delta tables where the configuration says the lake is, and telling the Delta engine's
//! errors apart: conflicts are retried, everything else is reported.

use std::sync::{Arc, Once};

use deltalake::errors::DeltaTableError;
use deltalake::kernel::transaction::TransactionError;
use deltalake::{DeltaTable, DeltaTableBuilder};
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
    physical.engine_url().map_err(|reason| Error::Config {
        path: "lake".into(),
        reason,
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

/// Whether an engine error means another writer got there first (re-read and retry).
pub fn is_conflict(e: &DeltaTableError) -> bool {
    match e {
        DeltaTableError::VersionAlreadyExists(_) => true,
        DeltaTableError::Transaction { source } => matches!(
            source,
            TransactionError::CommitConflict(_)
                | TransactionError::MaxCommitAttempts(_)
                | TransactionError::VersionAlreadyExists(_)
        ),
        // A concurrent creator won the race to version 0.
        DeltaTableError::Generic(_) | DeltaTableError::GenericError { .. } => e.to_string().contains("already exists"),
        _ => false,
    }
}

/// Maps an engine error, keeping whether a retry may help.
pub fn delta_err(stage: Stage, context: impl std::fmt::Display, e: DeltaTableError) -> Error {
    let retryable = matches!(e, DeltaTableError::ObjectStore { .. } | DeltaTableError::Io { .. }) || is_conflict(&e);
    Error::Internal {
        stage,
        context: context.to_string(),
        reason: e.to_string(),
        retryable,
    }
}
