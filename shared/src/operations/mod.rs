//! The stages as operations: builders with `with_*` setters that run as futures and return
//! metrics, in the manner of delta-rs's operations.

#[cfg(feature = "delta")]
pub mod change_feed;
#[cfg(feature = "delta")]
pub mod commit;
#[cfg(feature = "delta")]
pub mod compact;
pub mod decode;
#[cfg(feature = "delta")]
pub mod floor;
#[cfg(feature = "delta")]
pub mod history;
#[cfg(feature = "delta")]
pub mod merge_on_read;
pub mod reports;
#[cfg(feature = "delta")]
pub mod reprocess;
#[cfg(feature = "delta")]
pub mod retry;
#[cfg(feature = "delta")]
pub mod tombstones;
pub mod truncate;
#[cfg(feature = "delta")]
pub mod widen;
