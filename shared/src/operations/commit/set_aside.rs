//! Change sets that cannot be committed: quarantined with a report so the DMS file can be
//! reprocessed, or moved when only their folder's name is from an older version.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::config::TableSpec;
use crate::error::{BadInputKind, Error, InputProblem, Result, Stage};
use crate::quarantine::{write_report, QuarantineReport};
use crate::stage::{names_dir, read_change_set, table_dir, ChangeSetMeta};

use super::{CommitChangesBuilder, CommitMetrics};

impl CommitChangesBuilder<'_> {
    /// The change sets staged under a lake name no configured table lands at (the table was
    /// excluded, renamed or removed after its file was decoded). Each gets a quarantine report
    /// naming its DMS file, so reprocess decodes that file again under the current configuration.
    ///
    /// Change sets staged by earlier versions under percent-encoded folder names (`%C3%85`
    /// for `Å`) are moved to the folder their table uses now instead.
    pub(super) async fn set_aside_unconfigured(
        &self,
        stage_store: &Arc<dyn ObjectStore>,
        stage_root: &Path,
    ) -> Result<CommitMetrics> {
        let name = self.table.qualified_name();
        let mut metrics = CommitMetrics {
            table: name.clone(),
            ..Default::default()
        };
        let dir = names_dir(stage_root, &self.table)?;
        let listed: Vec<ObjectMeta> = stage_store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(Error::storage("list staged change sets", &dir))?;
        if let Some(spec) = self.legacy_encoded_table() {
            let to = table_dir(stage_root, &spec)?;
            for m in &listed {
                let Some(file) = m.location.filename() else { continue };
                let target = to.clone().join(file);
                match stage_store.copy(&m.location, &target).await {
                    Ok(()) => {}
                    Err(object_store::Error::NotFound { .. }) => continue,
                    Err(e) => return Err(Error::storage("move change set", &m.location)(e)),
                }
                match stage_store.delete(&m.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(Error::storage("move change set", &m.location)(e)),
                }
                metrics.moved.push(target.to_string());
            }
            tracing::info!(stage = "commit", from = %name, to = %spec.qualified_name(), moved = metrics.moved.len(), "change sets staged under an encoded name moved to their table");
            return Ok(metrics);
        }
        for m in listed {
            if !m.location.as_ref().ends_with(".parquet") {
                continue;
            }
            let reason = format!(
                "no configured table lands at {name} any more: the table was excluded, renamed or \
                 removed from the configuration after this file was decoded"
            );
            let meta = match read_change_set(stage_store.clone(), &m.location).await {
                Ok((meta, _)) => meta,
                Err(Error::Gone { .. }) => continue,
                Err(e) if !e.is_retryable() => ChangeSetMeta {
                    source_file: String::new(),
                    etag: None,
                    table: name.clone(),
                    rows_in: 0,
                },
                Err(e) => return Err(e),
            };
            let q = self
                .quarantine(
                    stage_store,
                    &m.location,
                    &meta,
                    BadInputKind::TableNotConfigured,
                    &reason,
                )
                .await?;
            metrics.quarantined.push(q);
        }
        Ok(metrics)
    }

    /// The configured table whose names this builder's names are a percent-encoding of.
    fn legacy_encoded_table(&self) -> Option<TableSpec> {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .ok()
                .map(|d| d.into_owned())
        };
        let (ns, schema, table) = (
            decode(&self.table.namespace)?,
            decode(&self.table.schema)?,
            decode(&self.table.table)?,
        );
        if (ns.as_str(), schema.as_str(), table.as_str())
            == (
                self.table.namespace.as_str(),
                self.table.schema.as_str(),
                self.table.table.as_str(),
            )
        {
            return None;
        }
        self.config.table_by_target(&ns, &schema, &table)
    }

    pub(super) async fn quarantine(
        &self,
        store: &Arc<dyn ObjectStore>,
        path: &Path,
        meta: &ChangeSetMeta,
        kind: BadInputKind,
        reason: &str,
    ) -> Result<String> {
        let file = if meta.source_file.is_empty() {
            path.to_string()
        } else {
            meta.source_file.clone()
        };
        let err = InputProblem::new(kind, format!("change set {path}: {reason}")).into_error(
            Stage::Commit,
            &file,
            Some(&meta.table),
        );
        let (bucket, key) = file
            .strip_prefix("s3://")
            .and_then(|r| r.split_once('/'))
            .map(|(b, k)| (b.to_string(), k.to_string()))
            .unwrap_or_else(|| ("staging".to_string(), path.to_string()));
        let Some(report) = QuarantineReport::from_error(&err, &bucket, &key, meta.etag.as_deref()) else {
            return Err(err);
        };
        let (qstore, qroot) = self.stores.resolve(&self.config.quarantine)?;
        let at = write_report(qstore.as_ref(), &qroot, &report).await?;
        tracing::warn!(stage = "commit", table = %meta.table, file = %file, reason = %reason, report = %at, "change set quarantined");
        // The change set is our own intermediate: once reported, the source file can be
        // reprocessed; leaving it would block nothing but would be retried forever.
        match store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::storage("delete quarantined change set", path)(e)),
        }
        Ok(at.to_string())
    }
}
