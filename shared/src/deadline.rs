//! How long an invocation may still run, and whether a piece of work still fits.
//!
//! Lambda ends an invocation at its deadline whatever it is doing; an SQS batch cut off that way
//! fails as a whole, healthy messages included. Handlers instead stop taking new work while
//! enough time is left for what they started, and return what they did not start as batch item
//! failures, which the queue delivers again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The end of an invocation (none in local runs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Option<SystemTime>);

/// What a decode needs besides reading the file: the S3 round trips, staging, the report.
pub const DECODE_OVERHEAD: Duration = Duration::from_secs(10);

/// The slowest decode rate measured (gzip CSV with many columns, BENCHMARKS.md: about 10x a
/// bare read), rounded down so a file that fits by this estimate fits in practice.
pub const DECODE_BYTES_PER_SECOND: u64 = 20 * 1024 * 1024;

/// What one table's commit may take: a copy-on-write MERGE into a 10M-row table measured 5 s,
/// with conflict retries and backoff on top.
pub const COMMIT_RESERVE: Duration = Duration::from_secs(30);

impl Deadline {
    /// No deadline: every piece of work fits.
    pub const NONE: Deadline = Deadline(None);

    /// From the Lambda context's deadline, milliseconds since the Unix epoch.
    pub fn from_epoch_millis(ms: u64) -> Deadline {
        Deadline(Some(UNIX_EPOCH + Duration::from_millis(ms)))
    }

    /// The time left, `None` without a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.0
            .map(|end| end.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
    }

    /// Whether work expected to take `needed` can still finish in time.
    pub fn allows(&self, needed: Duration) -> bool {
        self.remaining().is_none_or(|left| left > needed)
    }

    /// What decoding `bytes` of DMS files is expected to take at worst.
    pub fn decode_time(bytes: u64) -> Duration {
        DECODE_OVERHEAD + Duration::from_millis(bytes.saturating_mul(1000) / DECODE_BYTES_PER_SECOND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_fits_only_while_enough_time_is_left() {
        assert!(Deadline::NONE.allows(Duration::from_secs(1_000_000)));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let soon = Deadline::from_epoch_millis(now + 60_000);
        assert!(soon.allows(Duration::from_secs(30)));
        assert!(!soon.allows(Duration::from_secs(90)));
        let past = Deadline::from_epoch_millis(now - 1_000);
        assert_eq!(past.remaining(), Some(Duration::ZERO));
        assert!(!past.allows(Duration::ZERO));
        // A 1 GB file needs about a minute by the conservative estimate.
        let t = Deadline::decode_time(1 << 30);
        assert!(t > Duration::from_secs(55) && t < Duration::from_secs(70), "{t:?}");
    }
}
