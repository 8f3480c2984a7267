//! Named points where a test can make an operation stop as if the process had died there.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// The points operations check. Production code never sets a decider, so they cost one branch.
#[derive(Clone, Default)]
pub struct Failpoints(Option<Arc<dyn Fn(&str) -> bool + Send + Sync>>);

impl fmt::Debug for Failpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Failpoints(set)"
        } else {
            "Failpoints(none)"
        })
    }
}

impl Failpoints {
    /// `decide(name)` returns true when the point should fire.
    pub fn new(decide: impl Fn(&str) -> bool + Send + Sync + 'static) -> Failpoints {
        Failpoints(Some(Arc::new(decide)))
    }

    pub fn check(&self, name: &str) -> Result<()> {
        match &self.0 {
            Some(d) if d(name) => Err(Error::Failpoint(name.to_string())),
            _ => Ok(()),
        }
    }
}

/// After decode has staged its change sets, before the invocation reports success.
pub const DECODE_AFTER_STAGE: &str = "decode.after_stage";
/// Commit: after tombstones are recorded, before the table's MERGE.
pub const COMMIT_AFTER_TOMBSTONES: &str = "commit.after_tombstones";
/// Commit: after the table's new version is in the log, before staged change sets are removed.
pub const COMMIT_BEFORE_CLEANUP: &str = "commit.before_cleanup";
