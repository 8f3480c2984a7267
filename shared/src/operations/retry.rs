//! How long an operation waits before it tries again after losing a commit race.

use std::time::Duration;

/// Full-jitter exponential backoff.
pub(crate) fn backoff(attempt: u32, base_ms: u64, max_ms: u64) -> Duration {
    let cap = base_ms.saturating_mul(1u64 << attempt.min(20)).min(max_ms);
    Duration::from_millis(fastrand::u64(0..=cap))
}
