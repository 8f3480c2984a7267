//! Decode stage, removal events: a source `TRUNCATE` or `DROP TABLE` (DMS's default DDL
//! handling) reaches the bucket only as the removal of the table's files and folder, with no row
//! saying so. Where a table follows removals (`truncates.follow_removals`), a removal event of
//! one of its DMS files is taken for a truncate once a listing of the table folder shows that
//! every DMS file of the table written before the removal is gone; a truncate marker is then
//! staged in the table's staging folder, and the commit stage raises the table's floor to it
//! (see [`crate::generation`]): every row sequenced before the removal leaves the table, and any
//! change from before it that is still on its way is refused as stale.
//!
//! A removal alone is never enough: people clean up old files, and lifecycle rules expire them
//! (lifecycle expirations are told apart by the event parser and never reach this module). A
//! removal while an older file of the table is still there is such a cleanup, not a truncate.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use crate::config::{TableSpec, Validated};
use crate::error::{Error, Result};
use crate::generation::{Anchor, FloorKind, SeqKind};
use crate::route::{route, FileKind, Route, Routed};
use crate::stage::table_dir;
use crate::storage::{object_path, Stores};

/// What the removal of one DMS object meant. Build with [`RemovalBuilder::new`], set the object
/// and the event's time, `.await` it.
#[derive(Debug)]
pub struct RemovalBuilder<'a> {
    config: Arc<Validated>,
    stores: &'a Stores,
    bucket: String,
    key: String,
    time: Option<DateTime<Utc>>,
}

/// The outcome of one removal event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemovalOutcome {
    /// The table was truncated (or dropped) at the source: a truncate marker was staged.
    Truncate {
        /// `namespace.schema.table`.
        table: String,
        /// The floor the table will get.
        anchor: String,
        /// Where the marker was written.
        marker: String,
    },
    /// Nothing to do: not a DMS file of a table that follows removals, or not a truncate.
    Ignored { reason: String },
}

impl<'a> RemovalBuilder<'a> {
    pub fn new(config: Arc<Validated>, stores: &'a Stores) -> Self {
        RemovalBuilder {
            config,
            stores,
            bucket: String::new(),
            key: String::new(),
            time: None,
        }
    }

    /// The removed object (key already URL-decoded).
    pub fn with_object(mut self, bucket: impl Into<String>, key: impl Into<String>) -> Self {
        self.bucket = bucket.into();
        self.key = key.into();
        self
    }

    /// When S3 removed it (the event's time).
    pub fn with_event_time(mut self, time: Option<DateTime<Utc>>) -> Self {
        self.time = time;
        self
    }

    async fn run(self) -> Result<RemovalOutcome> {
        let ignored = |reason: &str| {
            Ok(RemovalOutcome::Ignored {
                reason: reason.to_string(),
            })
        };
        // A key that does not route is nobody's table: its removal says nothing.
        let routed = match route(&self.config, &self.bucket, &self.key) {
            Ok(Route::File(f)) => f,
            Ok(Route::Ignore(why)) => return ignored(why),
            Err(_) => return ignored("not a DMS file"),
        };
        let (Some(schema), Some(table)) = (routed.schema.as_deref(), routed.table.as_deref()) else {
            // A CDC_TXN file holds the changes of many tables: its removal is no table's truncate.
            return ignored("a transaction file names no single table");
        };
        let spec = match self.config.table(routed.source, schema, table) {
            Ok(Some(spec)) => spec,
            Ok(None) => return ignored("table not selected by the source's rules"),
            Err(_) => return ignored("table not usable (no key configured)"),
        };
        if !spec.follow_removals {
            return ignored("removal not followed (truncates.follow_removals is off for the table)");
        }
        let Some(time) = self.time else {
            return ignored("removal event without a time");
        };
        let store = self.stores.bucket(&self.bucket)?;
        let folder = table_folder(&self.config, &routed, &self.key)?;
        // Files written after the removal are the new history (CDC after a truncate) and do not
        // count; anything of the table written before it that is still there means that this
        // removal was a cleanup (or DMS is still deleting), not the whole folder going. The
        // listing stops at the first such file: every removal of a large truncate lists.
        let mut listing = store.list(Some(&folder));
        let mut older = None;
        while let Some(m) = listing
            .try_next()
            .await
            .map_err(Error::storage("list the table folder after a removal", &folder))?
        {
            let of_table = matches!(
                route(&self.config, &self.bucket, m.location.as_ref()),
                Ok(Route::File(f)) if f.schema == routed.schema && f.table == routed.table
            );
            if of_table && m.last_modified < time {
                older = Some(m);
                break;
            }
        }
        if let Some(m) = older {
            tracing::info!(stage = "decode", file = %format!("s3://{}/{}", self.bucket, self.key), table = %spec.qualified_name(), remaining = %m.location, "removal while an older file of the table remains: not a truncate");
            return ignored("an older file of the table remains: not a truncate");
        }
        let anchor = truncate_anchor(&self.config, &spec, &routed, time);
        let (staging, root) = self.stores.resolve(&self.config.staging)?;
        let marker = table_dir(&root, &spec)?.join(anchor.marker_name(FloorKind::Truncate).as_str());
        let body = serde_json::json!({
            "kind": "truncate",
            "anchor": anchor.as_str(),
            "removed": format!("s3://{}/{}", self.bucket, self.key),
            "event_time": time.to_rfc3339(),
        });
        staging
            .put(&marker, body.to_string().into_bytes().into())
            .await
            .map_err(Error::storage("write truncate marker", &marker))?;
        tracing::info!(stage = "decode", file = %format!("s3://{}/{}", self.bucket, self.key), table = %spec.qualified_name(), anchor = %anchor.as_str(), marker = %marker, "table folder emptied at the source: truncate");
        Ok(RemovalOutcome::Truncate {
            table: spec.qualified_name(),
            anchor: anchor.as_str().to_string(),
            marker: marker.to_string(),
        })
    }
}

/// The table folder a routed key sits in: the source's `bucket_folder`, then the schema and
/// table folders (below them: partition, segment and date folders, which all go with a truncate).
fn table_folder(config: &Validated, routed: &Routed, key: &str) -> Result<object_store::path::Path> {
    let path = object_path(key).map_err(|e| Error::Event { reason: e.to_string() })?;
    let depth = config.sources()[routed.source]
        .bucket_folder
        .as_deref()
        .map_or(0, |f| f.split('/').filter(|s| !s.is_empty()).count())
        + 2;
    Ok(object_store::path::Path::from_iter(path.parts().take(depth)))
}

/// The floor a truncate confirmed by a removal at `time` raises the table to.
///
/// It is the removal's instant, so every change of a file written before it sorts below and
/// every change of a file DMS writes after the truncate sorts above: a CDC file after the
/// truncate keeps its rows whether it is delivered before or after the removal events. When the
/// removed file is a CDC file, the anchor is also at least just after its name's time: the file
/// was gone by then, so all its changes are older, and EventBridge's event time, whole seconds,
/// can otherwise fall below a file written in the same second.
///
/// Every removal event of one truncate that finds the folder empty stages its own marker, named
/// after its own anchor: a redelivered event rewrites the same marker, and the markers of one
/// truncate differ only by the spread of its removal times (DMS deletes a table's files within
/// moments). The commit raises the floor once to the highest due marker and deletes all of
/// them, and a floor only rises, so a marker settled late changes nothing. The time is not
/// rounded to merge them: rounding down would leave rows of a file written just before the
/// removal above the floor, rounding up would cut a file written just after it.
///
/// With `AR_H_CHANGE_SEQ` a change's sequence is its commit time at the source, not when DMS
/// wrote it: a change committed after the truncate but before DMS removed the files (DMS's
/// replication lag) sorts below the removal. DMS writes it in a file named after the removal,
/// though, and the floor keeps the changes of such files ([`written_after`]).
fn truncate_anchor(config: &Validated, spec: &TableSpec, routed: &Routed, time: DateTime<Utc>) -> Anchor {
    let kind = if spec.sequence_column.is_some() {
        SeqKind::ChangeSeq
    } else {
        SeqKind::FileName
    };
    let at = Anchor::at(kind, time);
    if routed.kind != FileKind::Cdc {
        return at;
    }
    let zone = config.sources()[routed.source].date_partitioning.zone();
    let name = routed.time_digits.as_deref().and_then(|d| match zone {
        // Without the object's LastModified a repeated local hour reads as its earlier
        // instant: the lower bound, which is what this is.
        Some(z) => crate::name_time::to_utc_digits(d, z, None).ok(),
        None => Some(d.to_string()),
    });
    match name.and_then(|d| Anchor::after(kind, &d)) {
        Some(after_name) if after_name > at => after_name,
        _ => at,
    }
}

/// Whether the DMS file a change came from (`_dms_source_file`, `s3://bucket/key`) is a CDC file
/// DMS named after the UTC time `after` (16 digits `YYYYMMDDHHMMSShh`): for a truncate of a
/// table ordered by `AR_H_CHANGE_SEQ`, its changes are the table's new history whatever their
/// commit time (see [`crate::operations::floor::FILES_AFTER_PROPERTY`]). Full-load files, and
/// names that do not route, are not: their rows are placed by their sequence alone.
///
/// A name in the repeated hour of a local-time zone reads as its earlier instant (the object's
/// upload time, which decides it at decode, is not kept with the rows): such a file written
/// within moments after a truncate in that hour may be taken for one from before it.
pub fn written_after(config: &Validated, source_file: &str, after: &str) -> bool {
    let Some((bucket, key)) = source_file.strip_prefix("s3://").and_then(|r| r.split_once('/')) else {
        return false;
    };
    let Ok(Route::File(routed)) = route(config, bucket, key) else {
        return false;
    };
    if !matches!(routed.kind, FileKind::Cdc | FileKind::CdcTxn) {
        return false;
    }
    let Some(digits) = routed.time_digits.as_deref() else {
        return false;
    };
    let utc = match config.sources()[routed.source].date_partitioning.zone() {
        Some(z) => match crate::name_time::to_utc_digits(digits, z, None) {
            Ok(d) => d,
            Err(_) => return false,
        },
        None => digits.to_string(),
    };
    utc.get(..16).is_some_and(|named| named > after)
}

impl<'a> IntoFuture for RemovalBuilder<'a> {
    type Output = Result<RemovalOutcome>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.run())
    }
}
