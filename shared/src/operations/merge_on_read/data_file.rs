//! An active data file as the snapshot lists it, and the log actions that retire it or put
//! it back with a new deletion vector.

use std::collections::HashMap;

use deltalake::kernel::{Action, Add, DeletionVectorDescriptor, LogicalFileView};
use object_store::path::Path;
use serde_json::Value;

/// One active data file, as the snapshot lists it.
pub(super) struct DataFile {
    /// The snapshot's entry, which builds the log actions that retire or replace the file.
    pub(super) view: LogicalFileView,
    pub(super) log_path: String,
    pub(super) store_path: Path,
    pub(super) size: i64,
    pub(super) stats: Option<String>,
    pub(super) partition_values: HashMap<String, Option<String>>,
    pub(super) dv: Option<DeletionVectorDescriptor>,
}

impl DataFile {
    /// The log entry that retires this file as it is now (with its current vector, if any).
    pub(super) fn remove(&self, data_change: bool) -> Action {
        Action::Remove(self.view.remove_action(data_change))
    }

    /// The log entry that puts this file back with `dv` as its deletion vector: the file as the
    /// log lists it (tags and row tracking fields included), its bounds no longer tight.
    pub(super) fn with_deletion_vector(&self, dv: DeletionVectorDescriptor) -> Action {
        // deltalake deprecates converting a snapshot entry to an `Add` in favour of its Arrow
        // form, but a commit through `CommitBuilder` takes `Add` actions and there is no other
        // public way to carry the entry over whole.
        #[allow(deprecated)]
        let add = self.view.add_action();
        Action::Add(Add {
            data_change: true,
            stats: add.stats.as_deref().map(loose_bounds),
            deletion_vector: Some(dv),
            ..add
        })
    }
}

pub(super) fn data_file(v: &LogicalFileView) -> DataFile {
    DataFile {
        view: v.clone(),
        log_path: v.path().to_string(),
        store_path: v.object_store_path(),
        size: v.size(),
        stats: v.stats(),
        partition_values: v.partition_values_map(),
        dv: v.deletion_vector_descriptor(),
    }
}

/// A file's stats once some of its rows are deleted: counts stay physical and bounds may be
/// wider than the live rows (the protocol's `tightBounds: false`).
pub(super) fn loose_bounds(stats: &str) -> String {
    match serde_json::from_str::<Value>(stats) {
        Ok(Value::Object(mut m)) => {
            m.insert("tightBounds".into(), Value::Bool(false));
            Value::Object(m).to_string()
        }
        _ => stats.to_string(),
    }
}
