//! Opening Delta tables where the configuration says the lake is, and telling the Delta engine's
//! errors apart: conflicts are retried, everything else is reported.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Once};

use deltalake::errors::DeltaTableError;
use deltalake::kernel::transaction::TransactionError;
use deltalake::{DeltaTable, DeltaTableBuilder};
use object_store::local::LocalFileSystem;
use url::Url;

use crate::error::{Error, Result, Stage};
use crate::storage::{Location, Stores};

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

/// How many tables' snapshots one process keeps. A commit function serves the tables whose
/// change sets its queue delivers; beyond this many the oldest entry goes (and is read afresh
/// when it comes back), so memory stays bounded whatever the number of tables.
pub const SNAPSHOT_CACHE_TABLES: usize = 64;

/// The Delta snapshots this process already holds, by table URL.
///
/// A warm Lambda that read a table's log in one invocation knows every version up to the one it
/// read (or wrote). Reading the log afresh costs a `_last_checkpoint` GET, a LIST and one GET per
/// commit since the last checkpoint (up to the checkpoint interval), plus the checkpoint itself;
/// bringing a held snapshot up to date costs one LIST and a GET per commit made since. The result
/// is the same latest snapshot: a log is only ever appended to, and the engine lists every commit
/// after the held snapshot's checkpoint, so it also sees a checkpoint written meanwhile.
///
/// A table whose log is deleted and written again from version 0 is a new table under the same
/// URL: the engine refuses to update a snapshot past a log that is now shorter, and the entry is
/// dropped, but a recreated log already longer than the held one would be read as if it went on
/// from it. Whatever deletes a table's log must call [`SnapshotCache::forget`] on every process
/// holding it, or the process must not keep snapshots ([`SnapshotCache::disabled`]).
pub struct SnapshotCache {
    enabled: bool,
    tables: Mutex<(HashMap<String, DeltaTable>, VecDeque<String>)>,
}

impl std::fmt::Debug for SnapshotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.tables.lock().map(|t| t.0.len()).unwrap_or_default();
        f.debug_struct("SnapshotCache")
            .field("enabled", &self.enabled)
            .field("held", &held)
            .finish()
    }
}

impl Default for SnapshotCache {
    fn default() -> Self {
        SnapshotCache {
            enabled: true,
            tables: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }
}

impl SnapshotCache {
    /// A cache that keeps nothing: every open reads the log afresh.
    pub fn disabled() -> Self {
        SnapshotCache {
            enabled: false,
            ..SnapshotCache::default()
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    fn get(&self, url: &Url) -> Option<DeltaTable> {
        if !self.enabled {
            return None;
        }
        self.tables.lock().ok()?.0.get(url.as_str()).cloned()
    }

    fn put(&self, url: &Url, table: &DeltaTable) {
        if !self.enabled || table.version().is_none() {
            return;
        }
        let Ok(mut guard) = self.tables.lock() else { return };
        let (tables, order) = &mut *guard;
        let key = url.as_str().to_string();
        // Never step back: a slower caller must not replace a newer snapshot with its older one.
        if let (Some(held), Some(new)) = (tables.get(&key).and_then(|t| t.version()), table.version()) {
            if held > new {
                return;
            }
        }
        if tables.insert(key.clone(), table.clone()).is_none() {
            order.push_back(key);
            while tables.len() > SNAPSHOT_CACHE_TABLES {
                match order.pop_front() {
                    Some(old) => {
                        tables.remove(&old);
                    }
                    None => break,
                }
            }
        }
    }

    /// Drops what is held for the table at `url` (its log was deleted, or cannot be followed).
    pub fn forget(&self, url: &Url) {
        if let Ok(mut guard) = self.tables.lock() {
            let (tables, order) = &mut *guard;
            tables.remove(url.as_str());
            order.retain(|k| k != url.as_str());
        }
    }
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
