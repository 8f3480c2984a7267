//! Decode stage: one DMS object -> staged, deduplicated change sets (one per table), or a
//! quarantine report when the object can never be decoded.

use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use tokio::io::AsyncWriteExt;

use crate::config::TableSpec;
use crate::config::Validated;
use crate::decode::{decode_file, FileContext, TableChanges};
use crate::error::{BadInputKind, Error, InputProblem, Result, Stage};
use crate::failpoint::Failpoints;
use crate::generation::{newest_before, reload_anchor, Anchor, FloorKind, ListedCdc, SeqKind};
use crate::quarantine::{write_report, QuarantineReport};
use crate::route::{route, Route, Routed};
use crate::stage::{change_set_id, change_set_path, table_dir, write_change_set, ChangeSetMeta};
use crate::storage::{object_path, Stores};

/// Decodes one DMS object. Build with [`DecodeBuilder::new`], set the object, `.await` it.
#[derive(Debug)]
pub struct DecodeBuilder<'a> {
    config: Arc<Validated>,
    stores: &'a Stores,
    bucket: String,
    key: String,
    etag: Option<String>,
    size: Option<u64>,
    spool_dir: Option<PathBuf>,
    failpoints: Failpoints,
}

/// What happened to one object.
#[derive(Debug)]
pub enum DecodeOutcome {
    /// Change sets were staged (possibly none, for a file without rows).
    Staged(DecodeMetrics),
    /// Nothing to do, and that is fine (a folder marker, an unselected table, …).
    Skipped { reason: String },
    /// The object can never be decoded as it is; a report was written.
    Quarantined {
        report: Box<QuarantineReport>,
        report_location: String,
    },
}

/// Counts for one decoded object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeMetrics {
    /// `s3://bucket/key`.
    pub file: String,
    pub bytes_read: u64,
    pub tables: Vec<TableDecodeMetrics>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDecodeMetrics {
    /// `namespace.schema.table`.
    pub table: String,
    /// Rows in the file for this table.
    pub rows_in: u64,
    /// Rows left after deduplication (what was staged).
    pub rows_out: u64,
    /// Where the change set was staged.
    pub staged: Option<String>,
    pub staged_bytes: u64,
}

impl<'a> DecodeBuilder<'a> {
    pub fn new(config: Arc<Validated>, stores: &'a Stores) -> Self {
        DecodeBuilder {
            config,
            stores,
            bucket: String::new(),
            key: String::new(),
            etag: None,
            size: None,
            spool_dir: None,
            failpoints: Failpoints::default(),
        }
    }

    /// The object to decode (key already URL-decoded).
    pub fn with_object(mut self, bucket: impl Into<String>, key: impl Into<String>) -> Self {
        self.bucket = bucket.into();
        self.key = key.into();
        self
    }

    /// The ETag from the event: part of the staged change set's name.
    pub fn with_etag(mut self, etag: Option<String>) -> Self {
        self.etag = etag;
        self
    }

    /// The size from the event, so empty objects are skipped without a request.
    pub fn with_size(mut self, size: Option<u64>) -> Self {
        self.size = size;
        self
    }

    /// Where the object is spooled while it is decoded (default: the system temp folder, which
    /// is Lambda's `/tmp`).
    pub fn with_spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool_dir = Some(dir.into());
        self
    }

    /// Crash points for tests.
    pub fn with_failpoints(mut self, failpoints: Failpoints) -> Self {
        self.failpoints = failpoints;
        self
    }

    async fn run(self) -> Result<DecodeOutcome> {
        let started = Instant::now();
        let file_uri = format!("s3://{}/{}", self.bucket, self.key);
        match self.decode(&file_uri, started).await {
            Err(e) if e.is_quarantine() => {
                let Some(report) = QuarantineReport::from_error(&e, &self.bucket, &self.key, self.etag.as_deref())
                else {
                    return Err(e);
                };
                let (store, root) = self.stores.resolve(&self.config.quarantine)?;
                let path = write_report(store.as_ref(), &root, &report).await?;
                tracing::warn!(
                    stage = %report.stage,
                    file = %file_uri,
                    table = report.table.as_deref().unwrap_or(""),
                    kind = %report.kind,
                    reason = %report.reason,
                    report = %path,
                    "file quarantined"
                );
                Ok(DecodeOutcome::Quarantined {
                    report: Box::new(report),
                    report_location: path.to_string(),
                })
            }
            other => other,
        }
    }

    async fn decode(&self, file_uri: &str, started: Instant) -> Result<DecodeOutcome> {
        let bad = |p: InputProblem, table: Option<&str>| p.into_error(Stage::Decode, file_uri, table);
        // A key outside DMS's layout is named as a routing problem, not a decoding one: the fix
        // is in the source's folder settings, not in the file.
        let unroutable = |p: InputProblem| p.into_error(Stage::Route, file_uri, None);
        let mut routed = match route(&self.config, &self.bucket, &self.key).map_err(unroutable)? {
            Route::Ignore(why) => return Ok(skip(why)),
            Route::File(f) => f,
        };
        let path = object_path(&self.key)
            .map_err(|r| unroutable(InputProblem::new(BadInputKind::UnroutableKey, r.to_string())))?;
        let spec = match (&routed.schema, &routed.table) {
            (Some(schema), Some(table)) => {
                let name = format!("{}.{schema}.{table}", self.config.sources()[routed.source].name);
                match self.config.table(routed.source, schema, table) {
                    Ok(Some(spec)) => Some(spec),
                    Ok(None) => return Ok(skip("table not selected by the source's rules")),
                    Err(p) => return Err(bad(p, Some(&name))),
                }
            }
            _ => None,
        };
        let table_name = spec.as_ref().map(|s| s.qualified_name());
        // An event's size of 0 is not trusted to skip a file (moto reports 0 for every object,
        // and losing a file is worse than downloading an empty one): the download decides.
        let limits = &self.config.config.limits;
        if self.size.is_some_and(|s| s > limits.max_file_bytes) {
            return Err(bad(
                InputProblem::new(
                    BadInputKind::TooLarge,
                    format!("{} bytes is over limits.max_file_bytes", self.size.unwrap_or(0)),
                ),
                table_name.as_deref(),
            ));
        }

        let store = self.stores.bucket(&self.bucket)?;
        let spool = match &self.spool_dir {
            Some(d) => tempfile::NamedTempFile::new_in(d),
            None => tempfile::NamedTempFile::new(),
        }
        .map_err(Error::io("create spool file"))?;
        let (bytes_read, object_etag, last_modified) = match self
            .download(store.as_ref(), &path, spool.path(), limits.max_file_bytes)
            .await
        {
            Ok(got) => got,
            Err(Error::Gone { .. }) => {
                tracing::warn!(stage = "decode", file = %file_uri, "object no longer exists (deleted after the event, e.g. by a table truncate)");
                return Ok(skip("object no longer exists"));
            }
            Err(e) => return Err(e),
        };
        if bytes_read == 0 {
            return Ok(skip("zero-byte object"));
        }
        let zone = self.config.sources()[routed.source].date_partitioning.zone();
        if let (Some(zone), Some(digits)) = (zone, routed.time_digits.as_deref()) {
            let utc = crate::name_time::to_utc_digits(digits, zone, last_modified).map_err(|r| {
                bad(
                    InputProblem::new(BadInputKind::UnroutableKey, r.to_string()),
                    table_name.as_deref(),
                )
            })?;
            routed.time_digits = Some(utc);
        }
        if routed.kind == crate::route::FileKind::Load {
            if let (Some(spec), Some(written)) = (spec.as_ref(), last_modified) {
                routed.load_anchor = self
                    .reload_anchor(store.as_ref(), &routed, &path, spec, written)
                    .await?;
            }
        }
        if bytes_read > limits.max_file_bytes {
            return Err(bad(
                InputProblem::new(
                    BadInputKind::TooLarge,
                    format!("over limits.max_file_bytes ({})", limits.max_file_bytes),
                ),
                table_name.as_deref(),
            ));
        }

        let file = spool.reopen().map_err(Error::io("reopen spool file"))?;
        let config = self.config.clone();
        let uri = file_uri.to_string();
        let max_field_bytes = limits.max_field_bytes;
        let routed_c = routed.clone();
        let spec_c = spec.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            let ctx = FileContext {
                config: &config,
                routed: &routed_c,
                source_file: &uri,
                table: spec_c.as_ref(),
                max_field_bytes,
            };
            decode_file(file, &ctx)
        });
        let decoded = decoded.await.map_err(|e| Error::Internal {
            stage: Stage::Decode,
            context: file_uri.to_string(),
            reason: format!("decoder task failed: {e}"),
            retryable: true,
        })?;
        drop(spool);
        let tables: Vec<TableChanges> = decoded.map_err(|p| bad(p, table_name.as_deref()))?;

        let (staging, root) = self.stores.resolve(&self.config.staging)?;
        if let (Some(anchor), Some(spec)) = (&routed.load_anchor, &spec) {
            // Recorded before the rows, so no commit can apply them without knowing that a
            // reload's load is under way.
            let marker = table_dir(&root, spec)?.join(anchor.marker_name(FloorKind::Reload).as_str());
            let body = serde_json::json!({ "kind": "reload", "anchor": anchor.as_str(), "source_file": file_uri });
            staging
                .put(&marker, body.to_string().into_bytes().into())
                .await
                .map_err(Error::storage("write reload marker", &marker))?;
            tracing::info!(stage = "decode", file = %file_uri, table = %spec.qualified_name(), anchor = %anchor.as_str(), "full-load file of a table reload");
        }
        // The change set is named after the object version decoded: the ETag the GET returned
        // (the event's when the store has none), so it matches what a listing shows on every
        // store (reprocess compares the two) and follows an object overwritten since its event.
        let etag = object_etag.or_else(|| self.etag.clone());
        let id = change_set_id(&self.bucket, &self.key, etag.as_deref());
        let mut metrics = DecodeMetrics {
            file: file_uri.to_string(),
            bytes_read,
            tables: Vec::new(),
            duration_ms: 0,
        };
        for t in tables {
            let name = t.spec.qualified_name();
            let mut tm = TableDecodeMetrics {
                table: name.clone(),
                rows_in: t.rows_in,
                ..Default::default()
            };
            if !t.batches.is_empty() {
                let p = change_set_path(&root, &t.spec, &id)?;
                let meta = ChangeSetMeta {
                    source_file: file_uri.to_string(),
                    etag: etag.clone(),
                    table: name,
                    rows_in: t.rows_in,
                };
                tm.staged_bytes = write_change_set(staging.clone(), &p, &t.batches, &meta).await?;
                tm.rows_out = t.rows_out();
                tm.staged = Some(p.to_string());
            }
            metrics.tables.push(tm);
        }
        self.failpoints.check(crate::failpoint::DECODE_AFTER_STAGE)?;
        metrics.duration_ms = started.elapsed().as_millis() as u64;
        Ok(DecodeOutcome::Staged(metrics))
    }

    /// The anchor of the load generation a LOAD object written at `written` belongs to, from a
    /// listing of its table's folder (see [`crate::generation`]): `None` for the first load, or
    /// when the source does not detect reloads.
    async fn reload_anchor(
        &self,
        store: &dyn object_store::ObjectStore,
        routed: &Routed,
        path: &object_store::path::Path,
        spec: &TableSpec,
        written: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Anchor>> {
        let source = &self.config.sources()[routed.source];
        if !source.reloads.detect {
            return Ok(None);
        }
        // The table folder: the key without its file name and without the partition or date
        // folders the file sits in below the table folder.
        let mut parts: Vec<&str> = path.as_ref().split('/').collect();
        parts.pop();
        let below = routed.load_folder.as_deref().map_or(0, |f| f.split('/').count());
        parts.truncate(parts.len().saturating_sub(below));
        // Parsed, not built part by part: building would percent-encode the names (`ß` as
        // `%C3%9F`), which lists nothing on S3 and too long a name on a filesystem.
        let folder = object_store::path::Path::parse(parts.join("/")).map_err(|e| Error::Internal {
            stage: Stage::Decode,
            context: path.to_string(),
            reason: format!("the table folder of a LOAD file is not a valid path: {e}"),
            retryable: false,
        })?;
        let listed: Vec<object_store::ObjectMeta> = store
            .list(Some(&folder))
            .try_collect()
            .await
            .map_err(Error::storage("list the table folder for earlier changes", &folder))?;
        let zone = source.date_partitioning.zone();
        let mut cdc = Vec::new();
        for m in listed {
            let Ok(Route::File(f)) = route(&self.config, &self.bucket, m.location.as_ref()) else {
                continue;
            };
            if f.kind != crate::route::FileKind::Cdc || f.schema != routed.schema || f.table != routed.table {
                continue;
            }
            let Some(digits) = f.time_digits else { continue };
            let name_utc = match zone {
                Some(z) => match crate::name_time::to_utc_digits(&digits, z, Some(m.last_modified)) {
                    Ok(d) => d,
                    Err(_) => continue,
                },
                None => digits,
            };
            cdc.push(ListedCdc {
                key: m.location.to_string(),
                name_utc,
                last_modified: m.last_modified,
            });
        }
        let kind = if spec.sequence_column.is_some() {
            SeqKind::ChangeSeq
        } else {
            SeqKind::FileName
        };
        let skew = chrono::Duration::seconds(
            i64::try_from(source.reloads.max_name_skew_seconds).unwrap_or(i64::MAX / 2_000_000),
        );
        if kind == SeqKind::ChangeSeq {
            if let Some(prev) = newest_before(written, &cdc, skew) {
                if let Some(seq) = self.newest_change_seq(store, &prev.key, spec).await? {
                    return Ok(Anchor::after(kind, &seq));
                }
            }
        }
        Ok(reload_anchor(kind, written, &cdc, skew))
    }

    /// The 35 digits of the newest `AR_H_CHANGE_SEQ` in the CDC object `key` of `spec`'s table,
    /// or `None` when it has none (or cannot be read as a DMS file: then the file's name stands
    /// in, as for tables without the column). A failed download fails the decode, so the event
    /// is retried.
    async fn newest_change_seq(
        &self,
        store: &dyn object_store::ObjectStore,
        key: &str,
        spec: &TableSpec,
    ) -> Result<Option<String>> {
        let Ok(Route::File(mut routed)) = route(&self.config, &self.bucket, key) else {
            return Ok(None);
        };
        let path = object_path(key).map_err(Error::library(Stage::Decode, key, false))?;
        let spool = match &self.spool_dir {
            Some(d) => tempfile::NamedTempFile::new_in(d),
            None => tempfile::NamedTempFile::new(),
        }
        .map_err(Error::io("create spool file"))?;
        let max = self.config.config.limits.max_file_bytes;
        let got = store.get(&path).await.map_err(Error::storage("get", key))?;
        let last_modified = got.meta.last_modified;
        let mut stream = got.into_stream();
        let mut out = tokio::fs::File::create(spool.path())
            .await
            .map_err(Error::io("write spool file"))?;
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Error::storage("read", key))?;
            n += chunk.len() as u64;
            if n > max {
                return Ok(None);
            }
            out.write_all(&chunk).await.map_err(Error::io("write spool file"))?;
        }
        out.flush().await.map_err(Error::io("write spool file"))?;
        let zone = self.config.sources()[routed.source].date_partitioning.zone();
        if let (Some(zone), Some(digits)) = (zone, routed.time_digits.as_deref()) {
            match crate::name_time::to_utc_digits(digits, zone, Some(last_modified)) {
                Ok(utc) => routed.time_digits = Some(utc),
                Err(_) => return Ok(None),
            }
        }
        let file = spool.reopen().map_err(Error::io("reopen spool file"))?;
        let config = self.config.clone();
        let spec = spec.clone();
        let uri = format!("s3://{}/{key}", self.bucket);
        let max_field_bytes = self.config.config.limits.max_field_bytes;
        let newest = tokio::task::spawn_blocking(move || {
            let ctx = FileContext {
                config: &config,
                routed: &routed,
                source_file: &uri,
                table: Some(&spec),
                max_field_bytes,
            };
            let tables = decode_file(file, &ctx).ok()?;
            tables
                .iter()
                .flat_map(|t| t.batches.iter())
                .filter_map(|b| {
                    let seqs = b.column(b.schema().index_of(crate::changes::SEQ).ok()?).clone();
                    let seqs = seqs.as_any().downcast_ref::<arrow::array::StringArray>()?.clone();
                    seqs.iter()
                        .flatten()
                        .filter_map(|s| s.strip_prefix("1S"))
                        .filter(|d| d.len() == 35 && d.bytes().all(|b| b.is_ascii_digit()))
                        .max()
                        .map(str::to_string)
                })
                .max()
        })
        .await
        .map_err(|e| Error::Internal {
            stage: Stage::Decode,
            context: key.to_string(),
            reason: format!("decoder task failed: {e}"),
            retryable: true,
        })?;
        drop(spool);
        Ok(newest)
    }

    async fn download(
        &self,
        store: &dyn object_store::ObjectStore,
        path: &object_store::path::Path,
        to: &std::path::Path,
        max: u64,
    ) -> Result<(u64, Option<String>, Option<chrono::DateTime<chrono::Utc>>)> {
        let loc = format!("s3://{}/{}", self.bucket, self.key);
        let got = store.get(path).await.map_err(Error::storage("get", &loc))?;
        let etag = got.meta.e_tag.clone();
        let last_modified = Some(got.meta.last_modified);
        let mut stream = got.into_stream();
        let mut out = tokio::fs::File::create(to)
            .await
            .map_err(Error::io("write spool file"))?;
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Error::storage("read", &loc))?;
            n += chunk.len() as u64;
            if n > max {
                break;
            }
            out.write_all(&chunk).await.map_err(Error::io("write spool file"))?;
        }
        out.flush().await.map_err(Error::io("write spool file"))?;
        Ok((n, etag, last_modified))
    }
}

fn skip(reason: &str) -> DecodeOutcome {
    DecodeOutcome::Skipped {
        reason: reason.to_string(),
    }
}

impl<'a> IntoFuture for DecodeBuilder<'a> {
    type Output = Result<DecodeOutcome>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
