//! Named points where a test can make an operation stop as if the process had died there.
//!
//! Operations check them on their production paths. Only with the `testing` feature can a
//! decider be set; without it (every Lambda) [`Failpoints`] is an empty type and a check is a
//! constant `Ok(())` the compiler removes.

use crate::error::Result;

#[cfg(feature = "testing")]
mod active {
    use std::fmt;
    use std::sync::Arc;

    use crate::error::{Error, Result};

    /// The points operations check. Production code never sets a decider, so they cost one
    /// branch.
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

        pub(super) fn fires(&self, name: &str) -> Result<()> {
            match &self.0 {
                Some(d) if d(name) => Err(Error::Failpoint(name.to_string())),
                _ => Ok(()),
            }
        }
    }
}

#[cfg(feature = "testing")]
pub use active::Failpoints;

/// The points operations check; without the `testing` feature nothing can set them. (The private
/// field keeps the type's construction `Failpoints::default()`, as with the feature.)
#[cfg(not(feature = "testing"))]
#[derive(Debug, Clone, Copy, Default)]
pub struct Failpoints(());

impl Failpoints {
    /// `Err(Error::Failpoint)` when the test's decider fires at `name`.
    #[inline(always)]
    pub fn check(&self, name: &str) -> Result<()> {
        #[cfg(feature = "testing")]
        {
            self.fires(name)
        }
        #[cfg(not(feature = "testing"))]
        {
            let _ = name;
            Ok(())
        }
    }
}

/// After decode has staged its change sets, before the invocation reports success.
pub const DECODE_AFTER_STAGE: &str = "decode.after_stage";
/// Commit: after tombstones are recorded, before the table's MERGE.
pub const COMMIT_AFTER_TOMBSTONES: &str = "commit.after_tombstones";
/// Commit: after the table's new version is in the log, before its history (`history.enabled`)
/// takes the same change sets.
pub const COMMIT_BEFORE_HISTORY: &str = "commit.before_history";
/// Commit: after the table's new version is in the log, before staged change sets are removed.
pub const COMMIT_BEFORE_CLEANUP: &str = "commit.before_cleanup";
