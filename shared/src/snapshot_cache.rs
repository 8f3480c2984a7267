//! The Delta snapshots a process already read, kept so that a warm function brings a table up to
//! date instead of reading its log again. Below `storage` (whose `Stores` holds one) and `lake`
//! (which fills and reads it).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use deltalake::DeltaTable;
use url::Url;

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

    pub(crate) fn get(&self, url: &Url) -> Option<DeltaTable> {
        if !self.enabled {
            return None;
        }
        self.tables.lock().ok()?.0.get(url.as_str()).cloned()
    }

    pub(crate) fn put(&self, url: &Url, table: &DeltaTable) {
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
