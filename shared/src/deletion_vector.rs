//! Delta deletion vectors on storage: which rows of a data file are gone, without rewriting it.
//!
//! The format is the Delta protocol's "Deletion Vector Format": a file starts with a version
//! byte (1), then holds one or more vectors, each as a big-endian 4-byte size, the 4-byte
//! little-endian magic 1681511377, a 64-bit roaring bitmap in its portable serialization, and a
//! big-endian CRC-32 of magic and bitmap. A descriptor in the log points at one vector: storage
//! type `u` (a file next to the data, named from a UUID written in Z85), `i` (inline, Z85) or
//! `p` (an absolute path, not written here and only read when it lies under the table root).
//!
//! Written here rather than through the Delta kernel because delta-rs 1.1 reads vectors but has
//! no public way to write them.

use bytes::Bytes;
use deltalake::kernel::{DeletionVectorDescriptor, StorageType};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use roaring::RoaringTreemap;

const MAGIC: u32 = 1_681_511_377;
const VERSION: u8 = 1;

/// Why a deletion vector could not be read or written. None of these is helped by a retry
/// except a storage failure.
#[derive(Debug, thiserror::Error)]
pub enum DvError {
    #[error("deletion vector {what}: storage: {source}")]
    Storage {
        what: String,
        #[source]
        source: object_store::Error,
    },
    #[error("deletion vector {what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("deletion vector {what}: {reason}")]
    Unsupported { what: String, reason: String },
}

impl DvError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, DvError::Storage { .. })
    }
}

fn corrupt(what: &str, reason: impl Into<String>) -> DvError {
    DvError::Corrupt {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// The bytes of one vector as the format frames it: magic then bitmap (the `sizeInBytes` span).
fn framed(rows: &RoaringTreemap) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + rows.serialized_size());
    body.extend_from_slice(&MAGIC.to_le_bytes());
    // Writing into a Vec cannot fail.
    let _ = rows.serialize_into(&mut body);
    body
}

fn parse_framed(what: &str, body: &[u8]) -> Result<RoaringTreemap, DvError> {
    if body.len() < 4 || u32::from_le_bytes([body[0], body[1], body[2], body[3]]) != MAGIC {
        return Err(corrupt(what, "bad magic number (not a 64-bit roaring bitmap array)"));
    }
    RoaringTreemap::deserialize_from(&body[4..]).map_err(|e| corrupt(what, format!("bitmap: {e}")))
}

/// A deletion-vector file being assembled: several vectors, one per data file, in one object.
#[derive(Debug)]
pub struct DvFileWriter {
    bytes: Vec<u8>,
    uuid: uuid::Uuid,
}

impl Default for DvFileWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl DvFileWriter {
    pub fn new() -> Self {
        DvFileWriter {
            bytes: vec![VERSION],
            uuid: uuid::Uuid::new_v4(),
        }
    }

    /// Appends one vector and returns the descriptor that points at it.
    pub fn add(&mut self, rows: &RoaringTreemap) -> Result<DeletionVectorDescriptor, DvError> {
        let body = framed(rows);
        let too_big = || corrupt(&self.file_name(), "larger than 2 GiB");
        let size = i32::try_from(body.len()).map_err(|_| too_big())?;
        let offset = i32::try_from(self.bytes.len()).map_err(|_| too_big())?;
        self.bytes.extend_from_slice(&(size as u32).to_be_bytes());
        self.bytes.extend_from_slice(&body);
        self.bytes.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        Ok(DeletionVectorDescriptor {
            storage_type: StorageType::UuidRelativePath,
            path_or_inline_dv: z85::encode(self.uuid.as_bytes()),
            offset: Some(offset),
            size_in_bytes: size,
            cardinality: rows.len() as i64,
        })
    }

    /// The object's name, relative to the table root.
    pub fn file_name(&self) -> String {
        format!("deletion_vector_{}.bin", self.uuid)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.len() == 1
    }

    /// Writes the file below `root` of a store rooted at the table.
    pub async fn finish(self, store: &dyn ObjectStore) -> Result<Path, DvError> {
        let path = Path::from(self.file_name());
        store
            .put(&path, Bytes::from(self.bytes).into())
            .await
            .map_err(|source| DvError::Storage {
                what: path.to_string(),
                source,
            })?;
        Ok(path)
    }
}

/// Where a `u` descriptor's file is, relative to the table root.
fn relative_path(dv: &DeletionVectorDescriptor) -> Result<Path, DvError> {
    let text = &dv.path_or_inline_dv;
    let what = || format!("`{text}`");
    if text.len() < 20 {
        return Err(corrupt(&what(), "a UUID-relative path needs at least 20 characters"));
    }
    let (prefix, encoded) = text.split_at(text.len() - 20);
    let raw = z85::decode(encoded).map_err(|e| corrupt(&what(), format!("Z85: {e}")))?;
    let uuid = uuid::Uuid::from_slice(&raw).map_err(|e| corrupt(&what(), format!("UUID: {e}")))?;
    let name = format!("deletion_vector_{uuid}.bin");
    Ok(if prefix.is_empty() {
        Path::from(name)
    } else {
        Path::from(format!("{prefix}/{name}"))
    })
}

/// Reads the rows one descriptor deletes. `store` is rooted at the table; `table_root` is the
/// table's URL, for descriptors that carry an absolute path.
pub async fn read(
    store: &dyn ObjectStore,
    table_root: &url::Url,
    dv: &DeletionVectorDescriptor,
) -> Result<RoaringTreemap, DvError> {
    let path = match dv.storage_type {
        StorageType::Inline => {
            let what = "inline";
            let raw = z85::decode(&dv.path_or_inline_dv).map_err(|e| corrupt(what, format!("Z85: {e}")))?;
            let size = usize::try_from(dv.size_in_bytes).map_err(|_| corrupt(what, "negative size"))?;
            let body = raw.get(..size).ok_or_else(|| corrupt(what, "shorter than its size"))?;
            return check_cardinality(what, parse_framed(what, body)?, dv);
        }
        StorageType::UuidRelativePath => relative_path(dv)?,
        StorageType::AbsolutePath => {
            let text = &dv.path_or_inline_dv;
            let relative = text
                .strip_prefix(table_root.as_str())
                .ok_or_else(|| DvError::Unsupported {
                    what: format!("`{text}`"),
                    reason: "an absolute path outside the table's folder".into(),
                })?;
            Path::from_url_path(relative).map_err(|e| corrupt(text, e.to_string()))?
        }
    };
    let what = path.to_string();
    let offset = u64::try_from(dv.offset.unwrap_or(1)).map_err(|_| corrupt(&what, "negative offset"))?;
    let size = u64::try_from(dv.size_in_bytes).map_err(|_| corrupt(&what, "negative size"))?;
    let bytes = store
        .get_range(&path, offset..offset + 4 + size + 4)
        .await
        .map_err(|source| DvError::Storage {
            what: what.clone(),
            source,
        })?;
    if bytes.len() as u64 != 8 + size {
        return Err(corrupt(&what, "shorter than its descriptor says"));
    }
    let stored = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as u64;
    if stored != size {
        return Err(corrupt(&what, format!("size {stored} where the log says {size}")));
    }
    let body = &bytes[4..4 + size as usize];
    let tail = &bytes[4 + size as usize..];
    let crc = u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if crc != crc32fast::hash(body) {
        return Err(corrupt(&what, "checksum mismatch"));
    }
    check_cardinality(&what, parse_framed(&what, body)?, dv)
}

fn check_cardinality(
    what: &str,
    rows: RoaringTreemap,
    dv: &DeletionVectorDescriptor,
) -> Result<RoaringTreemap, DvError> {
    if rows.len() as i64 != dv.cardinality {
        return Err(corrupt(
            what,
            format!("{} rows where the log says {}", rows.len(), dv.cardinality),
        ));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn bitmap(rows: &[u64]) -> RoaringTreemap {
        rows.iter().copied().collect()
    }

    fn root() -> url::Url {
        url::Url::parse("memory:///table/").unwrap()
    }

    #[tokio::test]
    async fn vectors_read_back_from_one_file() {
        let store = InMemory::new();
        let a = bitmap(&[0, 5, 10, 1 << 33]);
        let b: RoaringTreemap = (100..200_000).collect();
        let mut w = DvFileWriter::new();
        let da = w.add(&a).unwrap();
        let db = w.add(&b).unwrap();
        assert_eq!(da.offset, Some(1), "the first vector follows the version byte");
        assert_eq!(db.cardinality, 199_900);
        assert_eq!(da.path_or_inline_dv.len(), 20);
        w.finish(&store).await.unwrap();
        assert_eq!(read(&store, &root(), &da).await.unwrap(), a);
        assert_eq!(read(&store, &root(), &db).await.unwrap(), b);
    }

    #[tokio::test]
    async fn a_damaged_vector_is_refused() {
        let store = InMemory::new();
        let mut w = DvFileWriter::new();
        let d = w.add(&bitmap(&[1, 2, 3])).unwrap();
        let path = w.finish(&store).await.unwrap();
        let mut bytes = store.get(&path).await.unwrap().bytes().await.unwrap().to_vec();
        let last = bytes.len() - 6;
        bytes[last] ^= 0xff;
        store.put(&path, Bytes::from(bytes).into()).await.unwrap();
        let err = read(&store, &root(), &d).await.unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(!err.is_retryable());

        let mut wrong = d.clone();
        wrong.cardinality = 4;
        let store = InMemory::new();
        let mut w = DvFileWriter::new();
        let d2 = w.add(&bitmap(&[1, 2, 3])).unwrap();
        w.finish(&store).await.unwrap();
        wrong.path_or_inline_dv = d2.path_or_inline_dv;
        let err = read(&store, &root(), &wrong).await.unwrap_err();
        assert!(err.to_string().contains("3 rows where the log says 4"), "{err}");
    }

    #[tokio::test]
    async fn inline_and_prefixed_vectors_are_read() {
        let rows = bitmap(&[7, 8, 9]);
        let body = framed(&rows);
        let mut padded = body.clone();
        while !padded.len().is_multiple_of(4) {
            padded.push(0);
        }
        let inline = DeletionVectorDescriptor {
            storage_type: StorageType::Inline,
            path_or_inline_dv: z85::encode(&padded),
            offset: None,
            size_in_bytes: body.len() as i32,
            cardinality: 3,
        };
        let store = InMemory::new();
        assert_eq!(read(&store, &root(), &inline).await.unwrap(), rows);

        // A writer may put vectors below a random prefix folder.
        let mut w = DvFileWriter::new();
        let d = w.add(&rows).unwrap();
        let name = w.file_name();
        let bytes = Bytes::from(w.bytes);
        store
            .put(&Path::from(format!("ab/{name}")), bytes.into())
            .await
            .unwrap();
        let prefixed = DeletionVectorDescriptor {
            path_or_inline_dv: format!("ab{}", d.path_or_inline_dv),
            ..d
        };
        assert_eq!(read(&store, &root(), &prefixed).await.unwrap(), rows);
    }
}
