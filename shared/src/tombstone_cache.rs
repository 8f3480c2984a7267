//! The tombstones a process already read, kept so that a warm commit reads only the tombstone
//! files added since (see [`crate::operations::tombstones`], which fills and reads it). Below
//! `storage`, whose `Stores` holds one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use arrow::datatypes::DataType;
use deltalake::kernel::Version;
use url::Url;

/// Memory one process gives to held tombstones, all tables together (estimated: key bytes,
/// sequence bytes and a fixed overhead per key). A table whose tombstones alone would exceed it
/// is looked up by scanning its files on every commit, as a cold function does; otherwise the
/// tables used longest ago are dropped to make room.
pub const TOMBSTONE_CACHE_BYTES: usize = 128 << 20;

/// Per held key: the hash map's entry, the boxed key and the sequence string's headers.
const ENTRY_OVERHEAD: usize = 80;

/// What a process knows of one tombstone table: its newest sequence per key, exactly as of
/// `version` (every row of every file in `files`).
pub(crate) struct Known {
    pub(crate) version: Version,
    /// The key columns' types in the tombstone table (lookups cast the changes' keys to them).
    pub(crate) key_types: Vec<DataType>,
    /// The data files of `version`, as the log names them.
    pub(crate) files: HashSet<String>,
    /// Key (arrow row format of the key columns) -> newest tombstone sequence.
    pub(crate) seqs: HashMap<Box<[u8]>, String>,
    pub(crate) bytes: usize,
}

impl Known {
    pub(crate) fn add(&mut self, key: &[u8], seq: &str) {
        match self.seqs.get_mut(key) {
            Some(held) => {
                if seq > held.as_str() {
                    self.bytes = (self.bytes + seq.len()).saturating_sub(held.len());
                    *held = seq.to_string();
                }
            }
            None => {
                self.bytes += key.len() + seq.len() + ENTRY_OVERHEAD;
                self.seqs.insert(key.into(), seq.to_string());
            }
        }
    }
}

/// The tombstone tables this process already read, by table URL (see [`crate::operations::tombstones`]).
///
/// Exact by construction: an entry is brought to the version the commit just opened (the one
/// its table commit is checked against) before each lookup, and is dropped whenever that cannot
/// be done from the files added since. An entry is taken out while in use, so two lookups of the
/// same table in one process never share one (the second reads the table itself).
pub struct TombstoneCache {
    enabled: bool,
    budget: usize,
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    tables: HashMap<String, Known>,
    /// Least recently used first.
    order: VecDeque<String>,
    bytes: usize,
}

impl std::fmt::Debug for TombstoneCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (tables, bytes) = self.held.lock().map(|h| (h.tables.len(), h.bytes)).unwrap_or_default();
        f.debug_struct("TombstoneCache")
            .field("enabled", &self.enabled)
            .field("tables", &tables)
            .field("bytes", &bytes)
            .finish()
    }
}

impl Default for TombstoneCache {
    fn default() -> Self {
        TombstoneCache::with_budget(TOMBSTONE_CACHE_BYTES)
    }
}

impl TombstoneCache {
    /// A cache that keeps nothing: every lookup scans the tombstone table.
    pub fn disabled() -> Self {
        TombstoneCache {
            enabled: false,
            ..TombstoneCache::default()
        }
    }

    /// A cache holding at most about `bytes` of tombstones.
    pub fn with_budget(bytes: usize) -> Self {
        TombstoneCache {
            enabled: true,
            budget: bytes,
            held: Mutex::new(Held::default()),
        }
    }

    /// The memory the cache may hold, estimated as for its entries.
    pub fn budget(&self) -> usize {
        self.budget
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub(crate) fn take(&self, url: &Url) -> Option<Known> {
        let mut held = self.held.lock().ok()?;
        let known = held.tables.remove(url.as_str())?;
        held.order.retain(|k| k != url.as_str());
        held.bytes = held.bytes.saturating_sub(known.bytes);
        Some(known)
    }

    pub(crate) fn put(&self, url: &Url, known: Known) {
        if !self.enabled || known.bytes > self.budget {
            return;
        }
        let Ok(mut held) = self.held.lock() else { return };
        let key = url.as_str().to_string();
        // Never step back: a slower lookup must not replace a newer entry with its older one.
        if let Some(newer) = held.tables.get(&key) {
            if newer.version >= known.version {
                return;
            }
            let old = newer.bytes;
            held.bytes = held.bytes.saturating_sub(old);
            held.order.retain(|k| *k != key);
        }
        held.bytes += known.bytes;
        held.tables.insert(key.clone(), known);
        held.order.push_back(key);
        while held.bytes > self.budget {
            let Some(old) = held.order.pop_front() else { break };
            if let Some(k) = held.tables.remove(&old) {
                held.bytes = held.bytes.saturating_sub(k.bytes);
            }
        }
    }

    /// Drops what is held for the tombstone table at `url`.
    pub fn forget(&self, url: &Url) {
        let _ = self.take(url);
    }

    /// (tables held, estimated bytes held), for tests and logs.
    pub fn held(&self) -> (usize, usize) {
        self.held.lock().map(|h| (h.tables.len(), h.bytes)).unwrap_or_default()
    }
}
