//! Reprocess: find what the event-driven pipeline missed and finish it. S3 events can be lost,
//! a commit's notification can be dropped, and a quarantined file can become decodable once the
//! configuration is fixed. Reprocess compares the DMS files under every source with what the
//! lake recorded and:
//!
//! - re-sends every file no commit applied and nothing staged or quarantined (a lost event) to
//!   decode, through a [`Requeue`] (the decode queue on AWS, in-process locally);
//! - decodes each quarantined file again, in-process: when it now succeeds its report is removed,
//!   otherwise the report stays;
//! - commits every table with staged change sets waiting (a lost commit notification).
//!
//! Idempotent: files already applied, staged or still bad are left alone, and decoding a file
//! twice changes nothing (the commit's sequence guard). Safe while the pipeline runs.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use serde::Serialize;

use crate::config::{TableSpec, Validated};
use crate::dms::LoadProgress;
use crate::error::{Error, Result};
use crate::failpoint::Failpoints;
use crate::model::TableId;
use crate::operations::commit::{applied_change_sets, CommitChangesBuilder};
use crate::operations::decode::{DecodeBuilder, DecodeOutcome};
use crate::quarantine::list_reports;
use crate::route::{route, Route};
use crate::stage::{change_set_id, parse_change_set_path};
use crate::storage::Stores;

/// One DMS object to decode again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceObject {
    pub bucket: String,
    pub key: String,
    pub etag: Option<String>,
    pub size: Option<u64>,
}

impl SourceObject {
    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// How a file missed by the pipeline is decoded again.
#[async_trait]
pub trait Requeue: Send + Sync {
    /// Hands the file to decode. `Ok(true)` when it was decoded now (so its tables may need a
    /// commit), `Ok(false)` when it was queued for the decode function.
    async fn requeue(&self, object: &SourceObject) -> Result<bool>;
}

/// Decodes in this process (local runs, and on AWS when no decode queue is configured): what
/// the builder uses when it is given no other [`Requeue`].
#[derive(Debug, Clone)]
pub struct InProcess<'a> {
    pub config: Arc<Validated>,
    pub stores: &'a Stores,
}

#[async_trait]
impl Requeue for InProcess<'_> {
    async fn requeue(&self, o: &SourceObject) -> Result<bool> {
        DecodeBuilder::new(self.config.clone(), self.stores)
            .with_object(o.bucket.clone(), o.key.clone())
            .with_etag(o.etag.clone())
            .await?;
        Ok(true)
    }
}

/// What reprocess found and did: the stage's report, declared with its metric names in
/// [`crate::metrics`].
pub use crate::metrics::ReprocessReport as ReprocessMetrics;

/// Reconciles the lake with the DMS files; see the module documentation.
pub struct ReprocessBuilder<'a> {
    config: Arc<Validated>,
    stores: &'a Stores,
    requeue: Option<&'a dyn Requeue>,
    table: Option<String>,
    since: Option<DateTime<Utc>>,
    dry_run: bool,
    max_files: usize,
    retry_quarantined: bool,
    commit_pending: bool,
    load_progress: Option<Arc<dyn LoadProgress>>,
}

impl<'a> ReprocessBuilder<'a> {
    pub fn new(config: Arc<Validated>, stores: &'a Stores) -> Self {
        ReprocessBuilder {
            config,
            stores,
            requeue: None,
            table: None,
            since: None,
            dry_run: false,
            max_files: 10_000,
            retry_quarantined: true,
            commit_pending: true,
            load_progress: None,
        }
    }

    /// DMS's table statistics, for the commits of waiting tables (see [`crate::dms`]).
    pub fn with_load_progress(mut self, progress: Option<Arc<dyn LoadProgress>>) -> Self {
        self.load_progress = progress;
        self
    }

    /// Where missing files go (default: decoded in this process).
    pub fn with_requeue(mut self, requeue: &'a dyn Requeue) -> Self {
        self.requeue = Some(requeue);
        self
    }

    /// Only this table (`namespace.schema.table`).
    pub fn with_table(mut self, table: Option<String>) -> Self {
        self.table = table;
        self
    }

    /// Only DMS objects written at or after this time are checked for lost events (bounds the
    /// listing work); quarantined files are tried again whatever their age.
    pub fn with_since(mut self, since: Option<DateTime<Utc>>) -> Self {
        self.since = since;
        self
    }

    /// Report what would be done, change nothing.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// At most this many files decoded or requeued per run; the rest is counted in `remaining`.
    pub fn with_max_files(mut self, n: usize) -> Self {
        self.max_files = n.max(1);
        self
    }

    /// Whether quarantined files are tried again (default true).
    pub fn with_retry_quarantined(mut self, yes: bool) -> Self {
        self.retry_quarantined = yes;
        self
    }

    /// Whether tables with waiting change sets are committed (default true).
    pub fn with_commit_pending(mut self, yes: bool) -> Self {
        self.commit_pending = yes;
        self
    }

    fn selected(&self, table: &str) -> bool {
        self.table.as_deref().is_none_or(|t| t == table)
    }

    fn recent(&self, t: Option<DateTime<Utc>>) -> bool {
        match (self.since, t) {
            (Some(since), Some(t)) => t >= since,
            _ => true,
        }
    }

    async fn run(self) -> Result<ReprocessMetrics> {
        let started = Instant::now();
        let config = self.config.clone();
        let mut m = ReprocessMetrics {
            dry_run: self.dry_run,
            ..ReprocessMetrics::default()
        };
        if let Some(t) = &self.table {
            if t.split('.').count() != 3 || t.split('.').any(str::is_empty) {
                return Err(Error::Config {
                    path: "table".into(),
                    reason: format!("`{t}` is not a `namespace.schema.table` name"),
                });
            }
        }

        // What the lake knows: staged change sets, quarantined files (applied ones below).
        let (sstore, sroot) = self.stores.resolve(&config.staging)?;
        let staged_paths = list(sstore.as_ref(), &sroot).await?;
        let mut staged: HashSet<String> = HashSet::new();
        let mut waiting: BTreeSet<TableId> = BTreeSet::new();
        for meta in &staged_paths {
            if let Some((table, id)) = parse_change_set_path(&sroot, &meta.location) {
                if self.selected(&table.qualified_name()) {
                    staged.insert(id);
                    waiting.insert(table);
                }
            }
        }
        let (qstore, qroot) = self.stores.resolve(&config.quarantine)?;
        let reports: Vec<_> = list_reports(qstore.as_ref(), &qroot)
            .await?
            .into_iter()
            // Every report, however old: a fix can come at any time, and reports are few.
            .filter(|(_, r)| r.table.as_deref().is_none_or(|t| self.selected(t)))
            .collect();
        let quarantined: HashSet<(String, String)> =
            reports.iter().map(|(_, r)| (r.bucket.clone(), r.key.clone())).collect();

        // What DMS wrote.
        struct Listed {
            bucket: String,
            meta: ObjectMeta,
            spec: Option<TableSpec>,
        }
        let mut listed: Vec<Listed> = Vec::new();
        let mut buckets: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for s in config.sources() {
            let prefix = s.bucket_folder.clone().unwrap_or_default();
            buckets.entry(s.bucket.as_str()).or_default().insert(prefix);
        }
        for (bucket, prefixes) in buckets {
            let store = self.stores.bucket(bucket)?;
            for prefix in prefixes {
                let metas = if prefix.is_empty() {
                    list_all(store.as_ref()).await?
                } else {
                    // As configured (validated at load), not percent-encoded.
                    let folder = Path::parse(prefix.trim_matches('/')).map_err(|e| Error::Config {
                        path: "sources[].bucket_folder".into(),
                        reason: format!("`{prefix}`: {e}"),
                    })?;
                    list(store.as_ref(), &folder).await?
                };
                for meta in metas {
                    let key = meta.location.to_string();
                    let spec = match route(&config, bucket, &key) {
                        Ok(Route::File(r)) => match (&r.schema, &r.table) {
                            (Some(schema), Some(table)) => match config.table(r.source, schema, table) {
                                Ok(Some(spec)) => Some(spec),
                                Ok(None) => continue,
                                Err(_) => None,
                            },
                            // A transaction-ordered file holds several tables.
                            _ => None,
                        },
                        Ok(Route::Ignore(_)) => continue,
                        // Not in DMS's layout: decode will write the report.
                        Err(_) => None,
                    };
                    if let (Some(_), Some(spec)) = (&self.table, &spec) {
                        if !self.selected(&spec.qualified_name()) {
                            continue;
                        }
                    }
                    if self.recent(Some(meta.last_modified)) {
                        listed.push(Listed {
                            bucket: bucket.to_string(),
                            meta,
                            spec,
                        });
                    }
                }
            }
        }

        // The change sets each of those tables' commits recorded.
        let mut applied: HashSet<String> = HashSet::new();
        let mut seen: HashSet<String> = HashSet::new();
        for spec in listed.iter().filter_map(|l| l.spec.as_ref()) {
            if seen.insert(spec.qualified_name()) {
                applied.extend(applied_change_sets(self.stores, &config.lake.join(&spec.lake_path())).await?);
            }
        }

        let mut missing = Vec::new();
        for l in listed {
            m.files_listed += 1;
            let key = l.meta.location.to_string();
            let id = change_set_id(&l.bucket, &key, l.meta.e_tag.as_deref());
            if applied.contains(&id) {
                m.files_applied += 1;
            } else if staged.contains(&id) {
                m.files_staged += 1;
            } else if quarantined.contains(&(l.bucket.clone(), key.clone())) {
                // Counted with the reports.
            } else {
                m.files_missing += 1;
                missing.push(SourceObject {
                    bucket: l.bucket,
                    key,
                    etag: l.meta.e_tag.clone(),
                    size: Some(l.meta.size),
                });
            }
        }
        missing.sort_by(|a, b| (load_rank(&a.key), &a.key).cmp(&(load_rank(&b.key), &b.key)));
        m.missing = missing.iter().take(100).map(SourceObject::uri).collect();
        m.quarantined = reports.len();

        let mut budget = self.max_files;
        let here = InProcess {
            config: config.clone(),
            stores: self.stores,
        };
        let requeue: &dyn Requeue = self.requeue.unwrap_or(&here);
        if !self.dry_run {
            for o in &missing {
                if budget == 0 {
                    m.remaining += 1;
                    continue;
                }
                budget -= 1;
                let decoded_now = requeue.requeue(o).await?;
                m.files_requeued += 1;
                if decoded_now {
                    tracing::info!(stage = "reprocess", file = %o.uri(), "missing file decoded");
                } else {
                    tracing::info!(stage = "reprocess", file = %o.uri(), "missing file queued for decode");
                }
            }
            if self.retry_quarantined {
                for (path, r) in &reports {
                    if budget == 0 {
                        m.remaining += 1;
                        continue;
                    }
                    budget -= 1;
                    let o = SourceObject {
                        bucket: r.bucket.clone(),
                        key: r.key.clone(),
                        etag: r.etag.clone(),
                        size: None,
                    };
                    let outcome = DecodeBuilder::new(config.clone(), self.stores)
                        .with_object(o.bucket.clone(), o.key.clone())
                        .with_etag(o.etag.clone())
                        .await;
                    match outcome {
                        Ok(DecodeOutcome::Quarantined { .. }) => m.quarantine_still_bad += 1,
                        // Decoded now, or skipped (the object is gone, or its table is no longer
                        // selected): either way the report describes nothing left to fix.
                        Ok(_) => {
                            qstore
                                .delete(path)
                                .await
                                .or_else(|e| match e {
                                    object_store::Error::NotFound { .. } => Ok(()),
                                    e => Err(e),
                                })
                                .map_err(|e| Error::Storage {
                                    op: "delete quarantine report",
                                    location: path.to_string(),
                                    source: e,
                                })?;
                            m.quarantine_recovered += 1;
                            if m.recovered.len() < 100 {
                                m.recovered.push(o.uri());
                            }
                            tracing::info!(stage = "reprocess", file = %o.uri(), "quarantined file decoded after all");
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            if self.commit_pending {
                // Everything staged now, including what was just decoded here.
                let selected = |t: &TableId| self.selected(&t.qualified_name());
                commit_waiting_tables(&config, self.stores, &selected, self.load_progress.clone(), &mut m).await?;
            }
        } else {
            m.remaining = missing.len() + reports.len();
            m.tables_committed = waiting.iter().map(TableId::qualified_name).collect();
        }
        m.duration_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            stage = "reprocess",
            dry_run = m.dry_run,
            files_listed = m.files_listed,
            files_applied = m.files_applied,
            files_staged = m.files_staged,
            files_missing = m.files_missing,
            files_requeued = m.files_requeued,
            quarantined = m.quarantined,
            quarantine_recovered = m.quarantine_recovered,
            quarantine_still_bad = m.quarantine_still_bad,
            tables_committed = m.tables_committed.len(),
            remaining = m.remaining,
            duration_ms = m.duration_ms,
            "reprocess done"
        );
        Ok(m)
    }
}

impl<'a> IntoFuture for ReprocessBuilder<'a> {
    type Output = Result<ReprocessMetrics>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}

/// Commits every table with staged work (change sets or floor markers) that `selected`
/// accepts, one at a time; one table's failure is recorded and the others go on.
async fn commit_waiting_tables(
    config: &Arc<Validated>,
    stores: &Stores,
    selected: &(dyn Fn(&TableId) -> bool + Sync),
    load_progress: Option<Arc<dyn LoadProgress>>,
    m: &mut ReprocessMetrics,
) -> Result<()> {
    let (sstore, sroot) = stores.resolve(&config.staging)?;
    let staged_now = list(sstore.as_ref(), &sroot).await?;
    let mut tables: BTreeSet<TableId> = BTreeSet::new();
    for meta in &staged_now {
        if let Some((table, _)) = parse_change_set_path(&sroot, &meta.location) {
            if selected(&table) {
                tables.insert(table);
            }
        }
    }
    for table in tables {
        match CommitChangesBuilder::new(config.clone(), stores)
            .with_table(&table.namespace, &table.schema, &table.table)
            .with_failpoints(Failpoints::default())
            .with_load_progress(load_progress.clone())
            .await
        {
            Ok(cm) => {
                m.rows_changed += cm.rows_inserted + cm.rows_updated + cm.rows_deleted;
                if cm.change_sets > 0 {
                    m.tables_committed.push(cm.table.clone());
                }
            }
            Err(e) => {
                tracing::warn!(stage = "reprocess", table = %table, error = %e, "commit failed; other tables go on");
                m.tables_failed.push(format!("{table}: {e}"));
            }
        }
    }
    Ok(())
}

/// After a DMS replication task stopped (a `DMS Replication Task State Change` event): commits
/// the waiting tables of the sources it writes (`namespaces`), so that a reload whose load DMS
/// now reports completed settles without waiting for the next scheduled run. No listing of the
/// DMS files, no quarantine retries: the scheduled runs do those.
pub async fn commit_sources(
    config: Arc<Validated>,
    stores: &Stores,
    namespaces: &BTreeSet<String>,
    load_progress: Option<Arc<dyn LoadProgress>>,
) -> Result<ReprocessMetrics> {
    let started = Instant::now();
    let mut m = ReprocessMetrics::default();
    let selected = |t: &TableId| namespaces.contains(&t.namespace);
    commit_waiting_tables(&config, stores, &selected, load_progress, &mut m).await?;
    m.duration_ms = started.elapsed().as_millis() as u64;
    Ok(m)
}

/// Full-load files first, so a table's history is rebuilt in DMS's order.
fn load_rank(key: &str) -> u8 {
    u8::from(!crate::route::is_load_file(key))
}

async fn list(store: &dyn ObjectStore, root: &Path) -> Result<Vec<ObjectMeta>> {
    store
        .list(Some(root))
        .try_collect()
        .await
        .map_err(Error::storage("list", root))
}

async fn list_all(store: &dyn ObjectStore) -> Result<Vec<ObjectMeta>> {
    store
        .list(None)
        .try_collect()
        .await
        .map_err(Error::storage("list", "/"))
}
