//! Compact stage: keeps a table fast to read and cheap to store without blocking ingestion.
//! Bin-packs small files (optionally z-ordered by the keys), writes checkpoints and expires old
//! log entries, vacuums unreferenced files past the retention, and drops tombstones past the
//! tombstone retention.
//!
//! Deciding is cheap: most invocations read `_delta_log/_last_checkpoint` and return. Work is
//! bounded: optimize commits its progress every minute, so a timeout loses little and the next
//! invocation carries on. A conflict with an ingestion commit makes compaction yield, never the
//! ingestion commit fail (the commit stage re-reads and retries).

use std::future::{Future, IntoFuture};
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::datafusion::common::{Column, ScalarValue};
use deltalake::datafusion::prelude::{lit, Expr};
use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::Clock;
use deltalake::DeltaTable;
use object_store::path::Path;
use object_store::ObjectStoreExt;

use crate::config::{DeleteMode, TableSpec, Validated};
use crate::error::{Error, Result, Stage};
use crate::lake::{self, delta_err, is_conflict};
use crate::lease::Lease;
use crate::model::columns::DELETED_AT;
use crate::model::TableId;
use crate::operations::change_feed;
use crate::operations::merge_on_read::purge_deleted_rows;
use crate::storage::{path_below, Location, Stores};
use crate::types::UTC;

/// Maintains one table. Build, set the table, `.await`.
#[derive(Debug)]
pub struct CompactBuilder<'a> {
    config: Arc<Validated>,
    stores: &'a Stores,
    table: TableId,
    version_hints: Vec<u64>,
    force: bool,
    now_millis: Option<i64>,
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompactMetrics {
    pub table: String,
    /// Why work was due (empty: nothing to do).
    pub due: Vec<&'static str>,
    /// Small files rewritten, and the files written for them.
    pub files_in: u64,
    pub files_out: u64,
    pub bytes_rewritten: u64,
    /// Data files rewritten without the rows their deletion vectors mark, and those rows.
    pub files_purged: u64,
    pub rows_purged: u64,
    pub checkpoint_written: bool,
    pub log_files_cleaned: u64,
    /// Data files vacuum deleted, and change files (`_change_data`) past the same retention.
    pub files_vacuumed: u64,
    pub tombstones_dropped: u64,
    /// History table (`history.enabled`): small files rewritten, and unreferenced files
    /// vacuumed.
    pub history_files_in: u64,
    pub history_files_vacuumed: u64,
    /// Compaction gave way to a concurrent commit.
    pub yielded: bool,
    pub version: Option<u64>,
    pub duration_ms: u64,
}

#[derive(Debug)]
struct FixedClock(i64);

impl Clock for FixedClock {
    fn current_timestamp_millis(&self) -> i64 {
        self.0
    }
}

impl<'a> CompactBuilder<'a> {
    pub fn new(config: Arc<Validated>, stores: &'a Stores) -> Self {
        CompactBuilder {
            config,
            stores,
            table: TableId::default(),
            version_hints: Vec::new(),
            force: false,
            now_millis: None,
        }
    }

    /// The lake table (namespace, schema and table after renames).
    pub fn with_table(
        mut self,
        namespace: impl Into<String>,
        schema: impl Into<String>,
        table: impl Into<String>,
    ) -> Self {
        self.table = TableId::new(namespace, schema, table);
        self
    }

    /// The versions of the commits that triggered this run (from the events' keys): let most
    /// runs decide without reading the table.
    pub fn with_version_hints(mut self, versions: impl IntoIterator<Item = u64>) -> Self {
        self.version_hints = versions.into_iter().collect();
        self
    }

    /// Check everything now, whatever the commit counters say (manual runs, the CLI).
    pub fn with_force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// The time vacuum and tombstone expiry measure retention from (tests move it forward).
    pub fn with_now_millis(mut self, now: i64) -> Self {
        self.now_millis = Some(now);
        self
    }

    async fn run(self) -> Result<CompactMetrics> {
        let started = Instant::now();
        let spec = self
            .config
            .require_table_by_target(&self.table.namespace, &self.table.schema, &self.table.table)?;
        let c = spec.compact.clone();
        let mut m = CompactMetrics {
            table: spec.qualified_name(),
            ..Default::default()
        };
        let loc = self.config.lake.join(&spec.lake_path());

        // The cheap decision: one small GET.
        let last_cp = last_checkpoint(self.stores, &loc).await?;
        let checkpoint_due = |v: u64| v.saturating_sub(last_cp.unwrap_or(0)) >= c.checkpoint_interval;
        if !self.force && !self.version_hints.is_empty() {
            let check_files = self
                .version_hints
                .iter()
                .any(|v| *v > 0 && v % c.check_every_commits == 0);
            let newest = self.version_hints.iter().copied().max().unwrap_or(0);
            if !checkpoint_due(newest) && !check_files {
                m.duration_ms = started.elapsed().as_millis() as u64;
                return Ok(m);
            }
        }

        // One maintenance run per table at a time (see `lease`): another holder means the work
        // is being done; this run gives way.
        let (lake_store, lake_root) = self.stores.resolve(&self.config.lake)?;
        let lease_path = path_below(
            &lake_root,
            &[
                "_dms2delta",
                "leases",
                &spec.namespace,
                &spec.target_schema,
                &spec.target_table,
                "compact",
            ],
        )
        .map_err(Error::library(Stage::Compact, &m.table, false))?;
        let now = self.now_millis.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
        let Some(lease) = Lease::acquire(lake_store.as_ref(), &lease_path, now).await? else {
            tracing::info!(stage = "compact", table = %m.table, "another compaction of this table is running; giving way");
            m.yielded = true;
            m.duration_ms = started.elapsed().as_millis() as u64;
            return Ok(m);
        };
        // The table is read under the lease, never before it: a snapshot read earlier could
        // predate the commit of a run that held the lease meanwhile, and optimizing from it
        // would rewrite the files that run already rewrote (every row twice; delta-rs does not
        // see two such OPTIMIZE commits as conflicting).
        let result = match lake::open(self.stores, &loc).await {
            Ok((table, true)) => self.maintain(table, &spec, last_cp, now, m, started).await,
            Ok((_, false)) => Ok(m),
            Err(e) => Err(e),
        };
        // Released on failure too, so the next run need not wait for the expiry.
        let released = lease.release(lake_store.as_ref()).await;
        let m = result?;
        released?;
        Ok(m)
    }

    /// The work done under the table's lease: bin-packing, purging, checkpoint, vacuum,
    /// tombstone upkeep.
    async fn maintain(
        &self,
        table: DeltaTable,
        spec: &TableSpec,
        last_cp: Option<u64>,
        now: i64,
        mut m: CompactMetrics,
        started: Instant,
    ) -> Result<CompactMetrics> {
        let c = &spec.compact;
        let loc = self.config.lake.join(&spec.lake_path());
        let checkpoint_due = |v: u64| v.saturating_sub(last_cp.unwrap_or(0)) >= c.checkpoint_interval;
        let derr = |e| delta_err(Stage::Compact, &m.table, e);
        let target = c.target_file_mb * 1024 * 1024;
        let small = {
            let snapshot = table.snapshot().map_err(derr)?;
            snapshot
                .log_data()
                .iter()
                .filter(|f| (f.size() as u64) < target / 2)
                .count()
        };
        let version = table.version().unwrap_or(0);
        let mut table = table;
        if small >= c.min_small_files {
            m.due.push("small files");
            match optimize(table, spec, target).await {
                Ok((t, stats)) => {
                    table = t;
                    m.files_in = stats.0;
                    m.files_out = stats.1;
                    m.bytes_rewritten = stats.2;
                }
                Err(e) if is_conflict(&e) => {
                    // An ingestion commit won; it must never be the one to fail. Next time.
                    tracing::info!(stage = "compact", table = %m.table, "optimize conflicted with a commit; yielding");
                    m.yielded = true;
                    table = lake::open(self.stores, &loc).await?.0;
                }
                Err(e) => return Err(derr(e)),
            }
        }
        // Cheap when no file has a deletion vector: the snapshot's file list is in memory.
        if !m.yielded {
            match purge_deleted_rows(table.clone(), c.purge_deleted_percent).await {
                Ok((t, p)) => {
                    if p.files_in > 0 {
                        m.due.push("deleted rows");
                        m.files_purged = p.files_in;
                        m.rows_purged = p.rows_dropped;
                        m.files_out += p.files_out;
                        m.bytes_rewritten += p.bytes_in;
                    }
                    table = t;
                }
                Err(e) if is_conflict(&e) => {
                    tracing::info!(stage = "compact", table = %m.table, "purge conflicted with a commit; yielding");
                    m.yielded = true;
                    table = lake::open(self.stores, &loc).await?.0;
                }
                Err(e) => return Err(derr(e)),
            }
        }
        let version_now = table.version().unwrap_or(version);
        if self.force || checkpoint_due(version_now) {
            m.due.push("checkpoint");
            deltalake::checkpoints::create_checkpoint(&table, None)
                .await
                .map_err(derr)?;
            m.checkpoint_written = true;
            m.log_files_cleaned = deltalake::checkpoints::cleanup_metadata(&table, None)
                .await
                .map_err(derr)? as u64;
            // Vacuum and tombstone expiry ride on the checkpoint cadence: often enough, cheap.
            match table
                .clone()
                .vacuum()
                .with_retention_period(chrono::Duration::hours(c.vacuum_retention_hours as i64))
                .with_enforce_retention_duration(true)
                .with_clock(Arc::new(FixedClock(now)))
                .await
            {
                Ok((_, v)) => m.files_vacuumed = v.files_deleted.len() as u64,
                Err(e) if is_conflict(&e) => m.yielded = true,
                Err(e) => return Err(derr(e)),
            }
            let cutoff = now - (c.vacuum_retention_hours as i64).saturating_mul(3_600_000);
            m.files_vacuumed += change_feed::expire(&table, cutoff).await.map_err(derr)?;
            if spec.delete_mode == DeleteMode::Hard {
                m.tombstones_dropped = self.maintain_tombstones(spec, now, target).await?;
            }
            if spec.history {
                (m.history_files_in, m.history_files_vacuumed) = self.maintain_history(spec, now, target).await?;
            }
        }
        m.version = table.version();
        m.duration_ms = started.elapsed().as_millis() as u64;
        Ok(m)
    }

    /// Drops expired tombstones, then compacts and checkpoints the tombstone table itself (one
    /// small file per delete batch would pile up otherwise).
    async fn maintain_tombstones(&self, spec: &TableSpec, now_millis: i64, target: u64) -> Result<u64> {
        let loc = self
            .config
            .lake
            .join(&format!("_dms2delta/tombstones/{}", spec.lake_path()));
        let (tomb, exists) = lake::open(self.stores, &loc).await?;
        if !exists {
            return Ok(0);
        }
        let derr = |e| delta_err(Stage::Compact, &loc, e);
        let retention = self.config.config.commit.tombstone_retention_hours as i64 * 3_600_000;
        let cutoff = (now_millis - retention) * 1000;
        let older = Expr::Column(Column::new_unqualified(DELETED_AT))
            .lt(lit(ScalarValue::TimestampMicrosecond(Some(cutoff), Some(UTC.into()))));
        let (tomb, dropped) = match tomb.clone().delete().with_predicate(older).await {
            Ok((t, metrics)) => (t, metrics.num_deleted_rows.unwrap_or(0) as u64),
            Err(e) if is_conflict(&e) => (tomb, 0),
            Err(e) => return Err(derr(e)),
        };
        let (tomb, _) = pack_side_table(tomb, spec, target).await.map_err(derr)?;
        checkpoint_and_clean(&tomb).await.map_err(derr)?;
        Ok(dropped)
    }
}

impl CompactBuilder<'_> {
    /// Bin-packs, checkpoints and vacuums the table's history table (every history commit
    /// adds a file, and rewrites the files holding the versions it closes), under the table's
    /// lease, with the table's settings. Returns (small files rewritten, files vacuumed).
    async fn maintain_history(&self, spec: &TableSpec, now_millis: i64, target: u64) -> Result<(u64, u64)> {
        let loc = self.config.lake.join(&spec.history_path());
        let (history, exists) = lake::open(self.stores, &loc).await?;
        if !exists {
            return Ok((0, 0));
        }
        let derr = |e| delta_err(Stage::Compact, &loc, e);
        let (history, files_in) = pack_side_table(history, spec, target).await.map_err(derr)?;
        checkpoint_and_clean(&history).await.map_err(derr)?;
        let vacuumed = match history
            .vacuum()
            .with_retention_period(chrono::Duration::hours(spec.compact.vacuum_retention_hours as i64))
            .with_enforce_retention_duration(true)
            .with_clock(Arc::new(FixedClock(now_millis)))
            .await
        {
            Ok((_, v)) => v.files_deleted.len() as u64,
            Err(e) if is_conflict(&e) => 0,
            Err(e) => return Err(derr(e)),
        };
        Ok((files_in, vacuumed))
    }
}

impl<'a> IntoFuture for CompactBuilder<'a> {
    type Output = Result<CompactMetrics>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// Bin-packs (or z-orders) the table; returns (files in, files out, bytes rewritten).
async fn optimize(
    table: DeltaTable,
    spec: &TableSpec,
    target: u64,
) -> deltalake::DeltaResult<(DeltaTable, (u64, u64, u64))> {
    let kind = if spec.compact.zorder_by_keys {
        OptimizeType::ZOrder(spec.keys.clone())
    } else {
        OptimizeType::Compact
    };
    let (table, metrics) = table
        .optimize()
        .with_type(kind)
        .with_target_size(NonZeroU64::new(target).unwrap_or(NonZeroU64::MIN))
        .with_min_commit_interval(Duration::from_secs(60))
        .await?;
    Ok((
        table,
        (
            metrics.num_files_removed,
            metrics.num_files_added,
            metrics.files_removed.total_size.max(0) as u64,
        ),
    ))
}

/// The version of the newest checkpoint, from `_delta_log/_last_checkpoint`.
async fn last_checkpoint(stores: &Stores, loc: &Location) -> Result<Option<u64>> {
    let physical = stores.physical(loc);
    let (store, root) = stores.resolve(&physical)?;
    let root = if let Location::Local { .. } = physical {
        Path::default()
    } else {
        root
    };
    let path =
        path_below(&root, &["_delta_log", "_last_checkpoint"]).map_err(Error::library(Stage::Compact, loc, false))?;
    match store.get(&path).await {
        Ok(r) => {
            let bytes = r
                .bytes()
                .await
                .map_err(Error::storage("read _last_checkpoint", &path))?;
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            Ok(v.get("version").and_then(|v| v.as_u64()))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(Error::storage("get _last_checkpoint", &path)(e)),
    }
}

/// The table a `_delta_log/<version>.json` key belongs to: `(namespace, schema, table, version)`.
/// Tombstone tables are maintained with their table, so their keys (and anything else) give `None`.
pub fn table_of_log_key(lake_prefix: &str, key: &str) -> Option<(String, String, String, u64)> {
    let rest = if lake_prefix.is_empty() {
        key
    } else {
        key.strip_prefix(lake_prefix.trim_end_matches('/'))?.strip_prefix('/')?
    };
    if rest.starts_with("_dms2delta/") {
        return None;
    }
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [ns, schema, table, "_delta_log", file] => {
            let version = file.strip_suffix(".json")?.parse().ok()?;
            Some((ns.to_string(), schema.to_string(), table.to_string(), version))
        }
        _ => None,
    }
}

/// A side table's checkpoint at its latest version, and its log entries past retention gone:
/// readers then open it from the checkpoint instead of replaying every commit.
/// Bin-packs a side table (tombstones, history) once it has `min_small_files` small files,
/// with the table's settings but never z-ordered; a concurrent writer winning leaves it for
/// the next run. Returns the table and the files rewritten.
async fn pack_side_table(
    table: DeltaTable,
    spec: &TableSpec,
    target: u64,
) -> deltalake::DeltaResult<(DeltaTable, u64)> {
    let small = table
        .snapshot()?
        .log_data()
        .iter()
        .filter(|f| (f.size() as u64) < target / 2)
        .count();
    if small < spec.compact.min_small_files {
        return Ok((table, 0));
    }
    let mut plain = spec.clone();
    plain.compact.zorder_by_keys = false;
    match optimize(table.clone(), &plain, target).await {
        Ok((t, stats)) => Ok((t, stats.0)),
        Err(e) if is_conflict(&e) => Ok((table, 0)),
        Err(e) => Err(e),
    }
}

async fn checkpoint_and_clean(table: &DeltaTable) -> deltalake::DeltaResult<()> {
    deltalake::checkpoints::create_checkpoint(table, None).await?;
    deltalake::checkpoints::cleanup_metadata(table, None).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_name_their_table() {
        assert_eq!(
            table_of_log_key("lake", "lake/mysql/shop/orders/_delta_log/00000000000000000012.json"),
            Some(("mysql".into(), "shop".into(), "orders".into(), 12))
        );
        assert_eq!(
            table_of_log_key(
                "",
                "_dms2delta/tombstones/mysql/shop/orders/_delta_log/00000000000000000003.json"
            ),
            None
        );
        // A history table is maintained with its table.
        assert_eq!(
            table_of_log_key(
                "lake",
                "lake/_dms2delta/history/mysql/shop/orders/_delta_log/00000000000000000003.json"
            ),
            None
        );
        assert_eq!(
            table_of_log_key("lake", "lake/mysql/shop/orders/part-0001.parquet"),
            None
        );
        assert_eq!(
            table_of_log_key("lake", "lake/mysql/shop/orders/_delta_log/_last_checkpoint"),
            None
        );
        assert_eq!(
            table_of_log_key("lake", "other/mysql/shop/orders/_delta_log/1.json"),
            None
        );
    }
}
