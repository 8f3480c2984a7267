//! Each operation's metrics as its stage's report ([`crate::metrics`]), the one form logs, EMF
//! and the functions' answers render.

use crate::metrics::DecodeReport;
#[cfg(feature = "delta")]
use crate::metrics::{CommitReport, CompactReport};
#[cfg(feature = "delta")]
use crate::operations::commit::CommitMetrics;
#[cfg(feature = "delta")]
use crate::operations::compact::CompactMetrics;
use crate::operations::decode::{DecodeMetrics, TableDecodeMetrics};

impl DecodeReport {
    /// One table of a decoded file.
    pub fn of(file: &DecodeMetrics, table: &TableDecodeMetrics) -> DecodeReport {
        DecodeReport {
            file: file.file.clone(),
            table: table.table.clone(),
            files: 1,
            rows_in: table.rows_in,
            rows_out: table.rows_out,
            staged: table.staged.clone(),
            bytes_read: file.bytes_read,
            duration_ms: file.duration_ms,
        }
    }
}

#[cfg(feature = "delta")]
impl From<&CommitMetrics> for CommitReport {
    fn from(m: &CommitMetrics) -> CommitReport {
        CommitReport {
            table: m.table.clone(),
            version: m.version,
            change_sets: m.change_sets as u64,
            inserted: m.rows_inserted,
            updated: m.rows_updated,
            deleted: m.rows_deleted,
            stale: m.rows_stale,
            copied: m.rows_copied,
            dv_files: m.dv_files,
            dv_rows: m.dv_rows,
            attempts: u64::from(m.attempts),
            retries: u64::from(m.attempts.saturating_sub(1)),
            conflicts: u64::from(m.conflicts),
            quarantined: m.quarantined.clone(),
            swept: m.rows_swept,
            floor: m.floor.clone(),
            duration_ms: m.duration_ms,
            lag_seconds: m.lag_seconds,
            history_versions: m
                .history
                .as_ref()
                .map(|h| h.versions_inserted + h.versions_updated + h.versions_removed),
            history_ms: m.history.as_ref().map(|h| h.duration_ms),
        }
    }
}

#[cfg(feature = "delta")]
impl From<&CompactMetrics> for CompactReport {
    fn from(m: &CompactMetrics) -> CompactReport {
        CompactReport {
            table: m.table.clone(),
            due: m.due.clone(),
            files_in: m.files_in,
            files_out: m.files_out,
            bytes_rewritten: m.bytes_rewritten,
            files_purged: m.files_purged,
            rows_purged: m.rows_purged,
            checkpoint: m.checkpoint_written,
            vacuumed: m.files_vacuumed,
            tombstones_dropped: m.tombstones_dropped,
            yielded: m.yielded,
            duration_ms: m.duration_ms,
        }
    }
}
