//! Staged change sets: the hand-over from decode to commit. One Parquet object per source file
//! and table, named from the source object's key and ETag so a retried decode rewrites the same
//! object instead of adding a second one.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::ObjectStore;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use crate::config::TableSpec;
use crate::error::{Error, Result, Stage};
use crate::generation::{Anchor, FloorKind};
use crate::model::TableId;
use crate::storage::path_below;

/// What a staged change set says about itself (Parquet key-value metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSetMeta {
    /// `s3://bucket/key` of the DMS file.
    pub source_file: String,
    pub etag: Option<String>,
    /// `namespace.schema.table`.
    pub table: String,
    /// Rows in the DMS file for this table, before deduplication.
    pub rows_in: u64,
}

const KEY_SOURCE: &str = "dms2delta.source_file";
const KEY_ETAG: &str = "dms2delta.etag";
const KEY_TABLE: &str = "dms2delta.table";
const KEY_ROWS_IN: &str = "dms2delta.rows_in";

/// A stable id for a source object version.
pub fn change_set_id(bucket: &str, key: &str, etag: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(bucket.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    h.update([0]);
    h.update(etag.unwrap_or("").trim_matches('"').as_bytes());
    hex::encode(&h.finalize()[..16])
}

/// The folder holding the pending change sets of the lake table `table`, named as spelled (see
/// [`path_below`]): a listing maps back to the same names.
pub fn names_dir(root: &Path, table: &TableId) -> Result<Path> {
    path_below(root, &[&table.namespace, &table.schema, &table.table]).map_err(Error::library(
        Stage::Stage,
        table,
        false,
    ))
}

/// The folder holding a table's pending change sets.
pub fn table_dir(root: &Path, spec: &TableSpec) -> Result<Path> {
    names_dir(root, &spec.id())
}

pub fn change_set_path(root: &Path, spec: &TableSpec, id: &str) -> Result<Path> {
    Ok(table_dir(root, spec)?.join(format!("{id}.parquet").as_str()))
}

/// Where a staged object belongs: its table and id, or `None` for anything else.
/// A table's floor markers (see [`crate::generation`]) are staged work too: their id is their
/// file name, which no change set id can equal.
pub fn parse_change_set_path(root: &Path, path: &Path) -> Option<(TableId, String)> {
    let rest: Vec<String> = path.prefix_match(root)?.map(|p| p.as_ref().to_string()).collect();
    match rest.as_slice() {
        [ns, schema, table, file] => {
            let id = match file.strip_suffix(".parquet") {
                Some(id) => id,
                None => Anchor::from_marker_name(file).map(|_| file.as_str())?,
            };
            Some((TableId::new(ns, schema, table), id.to_string()))
        }
        _ => None,
    }
}

/// The floor markers among a table folder's staged objects, with when each was written.
pub fn floor_markers(listed: &[object_store::ObjectMeta]) -> Vec<(FloorKind, Anchor, object_store::ObjectMeta)> {
    let mut out: Vec<_> = listed
        .iter()
        .filter_map(|m| {
            let (kind, anchor) = Anchor::from_marker_name(m.location.filename()?)?;
            Some((kind, anchor, m.clone()))
        })
        .collect();
    out.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
    out
}

/// Every table with staged change sets.
pub async fn pending_tables(store: &dyn ObjectStore, root: &Path) -> Result<Vec<TableId>> {
    use futures::TryStreamExt;
    let metas: Vec<_> = store
        .list(Some(root))
        .try_collect()
        .await
        .map_err(Error::storage("list staged change sets", root))?;
    let mut out: Vec<TableId> = metas
        .iter()
        .filter_map(|m| parse_change_set_path(root, &m.location).map(|(t, _)| t))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Writes one change set (batches of one schema), streaming (multipart on S3). Returns the
/// bytes written.
pub async fn write_change_set(
    store: Arc<dyn ObjectStore>,
    path: &Path,
    batches: &[RecordBatch],
    meta: &ChangeSetMeta,
) -> Result<u64> {
    let Some(first) = batches.first() else {
        return Err(Error::Internal {
            stage: Stage::Stage,
            context: path.to_string(),
            reason: "a change set without rows".into(),
            retryable: false,
        });
    };
    let mut kv = vec![
        KeyValue::new(KEY_SOURCE.into(), meta.source_file.clone()),
        KeyValue::new(KEY_TABLE.into(), meta.table.clone()),
        KeyValue::new(KEY_ROWS_IN.into(), meta.rows_in.to_string()),
    ];
    if let Some(e) = &meta.etag {
        kv.push(KeyValue::new(KEY_ETAG.into(), e.clone()));
    }
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_key_value_metadata(Some(kv))
        .build();
    let internal = |e: parquet::errors::ParquetError| Error::library(Stage::Stage, path, true)(e);
    let writer = BufWriter::new(store, path.clone());
    let mut w = AsyncArrowWriter::try_new(writer, first.schema(), Some(props)).map_err(internal)?;
    for batch in batches {
        w.write(batch).await.map_err(internal)?;
    }
    let bytes = w.bytes_written() as u64;
    w.close().await.map_err(internal)?;
    Ok(bytes)
}

/// Reads a staged change set back.
pub async fn read_change_set(store: Arc<dyn ObjectStore>, path: &Path) -> Result<(ChangeSetMeta, Vec<RecordBatch>)> {
    let bytes = store
        .get(path)
        .await
        .map_err(Error::storage("get change set", path))?
        .bytes()
        .await
        .map_err(Error::storage("read change set", path))?;
    let unreadable = |e: parquet::errors::ParquetError| Error::Internal {
        stage: Stage::Commit,
        context: path.to_string(),
        reason: format!("staged change set is unreadable: {e}"),
        retryable: false,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(unreadable)?;
    let kv: HashMap<String, String> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter_map(|k| k.value.clone().map(|v| (k.key.clone(), v)))
                .collect()
        })
        .unwrap_or_default();
    let meta = ChangeSetMeta {
        source_file: kv.get(KEY_SOURCE).cloned().unwrap_or_default(),
        etag: kv.get(KEY_ETAG).cloned(),
        table: kv.get(KEY_TABLE).cloned().unwrap_or_default(),
        rows_in: kv.get(KEY_ROWS_IN).and_then(|v| v.parse().ok()).unwrap_or(0),
    };
    let batches = builder
        .build()
        .map_err(unreadable)?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(Error::library(Stage::Commit, path, false))?;
    Ok((meta, batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[test]
    fn ids_depend_on_key_and_etag_only() {
        let a = change_set_id("b", "k", Some("\"e1\""));
        assert_eq!(a, change_set_id("b", "k", Some("e1")));
        assert_ne!(a, change_set_id("b", "k", Some("e2")));
        assert_ne!(a, change_set_id("b", "k2", Some("e1")));
        assert_eq!(a.len(), 32);
    }

    #[tokio::test]
    async fn round_trip_and_paths() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let batch = crate::changes::tests::batch(&[(1, Some("a"), "I", "1", None)]);
        let spec = TableSpec {
            source: "s".into(),
            namespace: "ns".into(),
            schema: "hr".into(),
            table: "emp".into(),
            target_schema: "hr".into(),
            target_table: "employees".into(),
            keys: vec!["id".into()],
            columns: None,
            sequence_column: None,
            timestamp_column: None,
            delete_mode: Default::default(),
            partition_by: vec![],
            deletion_vectors: false,
            change_data_feed: false,
            compact: Default::default(),
            renamed_columns: Default::default(),
            unlogged_when_null: Default::default(),
            follow_removals: false,
            history: false,
        };
        let root = Path::from("staged");
        let p = change_set_path(&root, &spec, "abc").unwrap();
        assert_eq!(p.as_ref(), "staged/ns/hr/employees/abc.parquet");
        assert_eq!(
            parse_change_set_path(&root, &p),
            Some((TableId::new("ns", "hr", "employees"), "abc".into()))
        );
        assert_eq!(
            parse_change_set_path(&root, &Path::from("other/ns/hr/e/abc.parquet")),
            None
        );
        let meta = ChangeSetMeta {
            source_file: "s3://b/k".into(),
            etag: Some("e".into()),
            table: "ns.hr.employees".into(),
            rows_in: 7,
        };
        write_change_set(store.clone(), &p, std::slice::from_ref(&batch), &meta)
            .await
            .unwrap();
        let (m, b) = read_change_set(store, &p).await.unwrap();
        assert_eq!(m, meta);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0], batch);
    }
}
