//! Delta deletion vectors on storage: which rows of a data file are gone, without rewriting it.
//!
//! The file format (a version byte, then vectors framed by size, magic and CRC-32, each a 64-bit
//! roaring bitmap), the descriptors' validation and the UUID paths they name are the Delta
//! kernel's (`delta_kernel::actions::deletion_vector` and `deletion_vector_writer`), the code
//! deltalake itself reads vectors with. What is ours: where a vector's file lies on the table's
//! store, fetching only the vector's own bytes, and checking that a vector deletes as many rows
//! as the log says.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use delta_kernel::actions::deletion_vector::{
    DeletionVectorDescriptor as KernelDescriptor, DeletionVectorStorageType as KernelStorage,
};
use delta_kernel::actions::deletion_vector_writer::{KernelDeletionVector, StreamingDeletionVectorWriter};
use delta_kernel::{DeltaResult as KernelResult, FileMeta, FileSlice, StorageHandler};
use deltalake::kernel::{DeletionVectorDescriptor, StorageType};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use roaring::RoaringTreemap;
use url::Url;

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
    /// The kernel refused the descriptor or the bytes (checksum, size, magic, bitmap).
    #[error("deletion vector {what}: {source}")]
    Format {
        what: String,
        #[source]
        source: delta_kernel::Error,
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

fn format_err(what: &str) -> impl FnOnce(delta_kernel::Error) -> DvError + '_ {
    move |source| DvError::Format {
        what: what.to_string(),
        source,
    }
}

/// The log's descriptor as the kernel's (validated: sizes, offsets, the UUID's encoding).
fn to_kernel(dv: &DeletionVectorDescriptor) -> Result<KernelDescriptor, DvError> {
    KernelDescriptor::try_from(dv.clone()).map_err(format_err(&dv.path_or_inline_dv))
}

/// The kernel's descriptor as the log's action types hold it.
fn to_log(dv: KernelDescriptor) -> DeletionVectorDescriptor {
    DeletionVectorDescriptor {
        storage_type: match dv.storage_type {
            KernelStorage::PersistedRelative => StorageType::UuidRelativePath,
            KernelStorage::Inline => StorageType::Inline,
            KernelStorage::PersistedAbsolute => StorageType::AbsolutePath,
        },
        path_or_inline_dv: dv.path_or_inline_dv,
        offset: dv.offset,
        size_in_bytes: dv.size_in_bytes,
        cardinality: dv.cardinality,
    }
}

/// The table root as a prefix of the URLs below it.
fn root_prefix(table_root: &Url) -> String {
    let root = table_root.as_str();
    if root.ends_with('/') {
        root.to_string()
    } else {
        format!("{root}/")
    }
}

/// Where `url` lies on a store rooted at the table. Vectors outside the table's folder (an
/// absolute path elsewhere) are not read: the store reaches only the table.
fn below_root(url: &Url, table_root: &Url) -> Result<Path, DvError> {
    let prefix = root_prefix(table_root);
    let relative = url.as_str().strip_prefix(&prefix).ok_or_else(|| DvError::Unsupported {
        what: format!("`{url}`"),
        reason: "a file outside the table's folder".into(),
    })?;
    Path::from_url_path(relative).map_err(|e| corrupt(url.as_str(), e.to_string()))
}

/// One vector per data file, written as one object of the table.
#[derive(Debug, Default)]
pub struct DvFileWriter {
    vectors: Vec<KernelDeletionVector>,
}

/// An encoded deletion-vector file and where it goes.
#[derive(Debug)]
pub struct DvFile {
    path: Path,
    bytes: Bytes,
}

impl DvFileWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues the vector of one data file; [`DvFileWriter::finish`] returns its descriptor at
    /// the same position.
    pub fn add(&mut self, rows: &RoaringTreemap) {
        let mut dv = KernelDeletionVector::new();
        dv.add_deleted_row_indexes(rows);
        self.vectors.push(dv);
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// Encodes the file for a table rooted at `table_root`: the file, and one descriptor per
    /// vector added, in order. Nothing is written yet ([`DvFile::put`]).
    pub fn finish(self, table_root: &Url) -> Result<(DvFile, Vec<DeletionVectorDescriptor>), DvError> {
        let uuid = uuid::Uuid::new_v4();
        let what = format!("file {uuid}");
        let mut bytes = Vec::new();
        let mut writer = StreamingDeletionVectorWriter::new(&mut bytes);
        let mut written = Vec::with_capacity(self.vectors.len());
        for dv in self.vectors {
            written.push(writer.write_deletion_vector(dv).map_err(format_err(&what))?);
        }
        writer.finalize().map_err(format_err(&what))?;
        // The kernel names a new file only through a kernel transaction (`BoundWriteContext::
        // new_deletion_vector_path`), which needs the kernel's snapshot of the table; deltalake
        // does not expose it. The name is the protocol's: the UUID in Z85, no prefix folder.
        let name = z85::encode(uuid.as_bytes());
        let descriptors = written
            .into_iter()
            .map(|w| {
                KernelDescriptor::try_new(
                    KernelStorage::PersistedRelative,
                    name.clone(),
                    Some(w.offset),
                    w.size_in_bytes,
                    w.cardinality,
                )
                .map_err(format_err(&what))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let path = match descriptors.first() {
            Some(d) => {
                let url = d
                    .absolute_path(table_root)
                    .map_err(format_err(&what))?
                    .ok_or_else(|| corrupt(&what, "a stored vector without a path"))?;
                below_root(&url, table_root)?
            }
            None => Path::from(format!("deletion_vector_{uuid}.bin")),
        };
        let file = DvFile {
            path,
            bytes: Bytes::from(bytes),
        };
        Ok((file, descriptors.into_iter().map(to_log).collect()))
    }
}

impl DvFile {
    /// The object's path, relative to the table root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the file through a store rooted at the table.
    pub async fn put(self, store: &dyn ObjectStore) -> Result<Path, DvError> {
        store
            .put(&self.path, self.bytes.into())
            .await
            .map_err(|source| DvError::Storage {
                what: self.path.to_string(),
                source,
            })?;
        Ok(self.path)
    }
}

/// The kernel reads a vector through a [`StorageHandler`]; this one serves the one file the
/// caller fetched (asynchronously, on the table's store) and nothing else.
struct Fetched {
    url: Url,
    bytes: Bytes,
}

fn not_here(what: &str) -> delta_kernel::Error {
    delta_kernel::Error::unsupported(format!("deletion vector reads do not {what}"))
}

impl StorageHandler for Fetched {
    fn list_from(&self, _: &Url) -> KernelResult<Box<dyn Iterator<Item = KernelResult<FileMeta>>>> {
        Err(not_here("list"))
    }

    fn read_files(&self, files: Vec<FileSlice>) -> KernelResult<Box<dyn Iterator<Item = KernelResult<Bytes>>>> {
        let out: Vec<KernelResult<Bytes>> = files
            .into_iter()
            .map(|(url, range)| {
                if url != self.url || range.is_some() {
                    return Err(delta_kernel::Error::file_not_found(url.as_str()));
                }
                Ok(self.bytes.clone())
            })
            .collect();
        Ok(Box::new(out.into_iter()))
    }

    fn copy_atomic(&self, _: &Url, _: &Url) -> KernelResult<()> {
        Err(not_here("copy"))
    }

    fn put(&self, _: &Url, _: Bytes, _: bool) -> KernelResult<()> {
        Err(not_here("write"))
    }

    fn head(&self, _: &Url) -> KernelResult<FileMeta> {
        Err(not_here("stat"))
    }

    fn delete(&self, _: &Url) -> KernelResult<()> {
        Err(not_here("delete"))
    }
}

/// Reads the rows one descriptor deletes. `store` is rooted at the table; `table_root` is the
/// table's URL.
pub async fn read(
    store: &dyn ObjectStore,
    table_root: &url::Url,
    dv: &DeletionVectorDescriptor,
) -> Result<RoaringTreemap, DvError> {
    let kernel = to_kernel(dv)?;
    let what = dv.path_or_inline_dv.clone();
    let rows = match kernel.absolute_path(table_root).map_err(format_err(&what))? {
        None => {
            // The kernel slices the first four decoded bytes unchecked: fewer than five Z85
            // characters would panic it.
            if dv.path_or_inline_dv.len() < 5 {
                return Err(corrupt("inline", "shorter than a bitmap's magic number"));
            }
            let nothing = Fetched {
                url: table_root.clone(),
                bytes: Bytes::new(),
            };
            kernel
                .read(Arc::new(nothing), table_root)
                .map_err(format_err("inline"))?
        }
        Some(url) => {
            let path = below_root(&url, table_root)?;
            let what = path.to_string();
            // A vector is its size (4 bytes), magic and bitmap (`sizeInBytes`), and CRC (4):
            // the kernel also slices those unchecked, so a size below the magic's is refused here.
            let size = u64::try_from(dv.size_in_bytes)
                .ok()
                .filter(|s| *s >= 4)
                .ok_or_else(|| corrupt(&what, format!("size {} is below 4 bytes", dv.size_in_bytes)))?;
            let offset = u64::try_from(dv.offset.unwrap_or(1)).map_err(|_| corrupt(&what, "negative offset"))?;
            // Only the vector's own bytes are fetched (a file may hold the vectors of many data
            // files). The kernel reads a whole file: it gets one holding the format's version
            // byte and this vector alone, and reads it at offset 1.
            let vector = store
                .get_range(&path, offset..offset + 4 + size + 4)
                .await
                .map_err(|source| DvError::Storage {
                    what: what.clone(),
                    source,
                })?;
            let mut file = BytesMut::with_capacity(1 + vector.len());
            file.put_u8(1);
            file.put_slice(&vector);
            let rebased = KernelDescriptor::try_new(
                kernel.storage_type,
                kernel.path_or_inline_dv.clone(),
                Some(1),
                kernel.size_in_bytes,
                kernel.cardinality,
            )
            .map_err(format_err(&what))?;
            let fetched = Fetched {
                url,
                bytes: file.freeze(),
            };
            rebased.read(Arc::new(fetched), table_root).map_err(format_err(&what))?
        }
    };
    if rows.len() as i64 != dv.cardinality {
        return Err(corrupt(
            &what,
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
        w.add(&a);
        w.add(&b);
        let (file, d) = w.finish(&root()).unwrap();
        let (da, db) = (&d[0], &d[1]);
        assert_eq!(da.offset, Some(1), "the first vector follows the version byte");
        assert_eq!(db.cardinality, 199_900);
        assert_eq!(da.path_or_inline_dv.len(), 20);
        assert_eq!(da.storage_type, StorageType::UuidRelativePath);
        let path = file.put(&store).await.unwrap();
        assert!(path.as_ref().starts_with("deletion_vector_"), "{path}");
        assert_eq!(read(&store, &root(), da).await.unwrap(), a);
        assert_eq!(read(&store, &root(), db).await.unwrap(), b);
    }

    #[tokio::test]
    async fn a_damaged_vector_is_refused() {
        let store = InMemory::new();
        let mut w = DvFileWriter::new();
        w.add(&bitmap(&[1, 2, 3]));
        let (file, d) = w.finish(&root()).unwrap();
        let d = d[0].clone();
        let path = file.put(&store).await.unwrap();
        let mut bytes = store.get(&path).await.unwrap().bytes().await.unwrap().to_vec();
        let last = bytes.len() - 6;
        bytes[last] ^= 0xff;
        store.put(&path, Bytes::from(bytes).into()).await.unwrap();
        let err = read(&store, &root(), &d).await.unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
        assert!(!err.is_retryable());

        let store = InMemory::new();
        let mut w = DvFileWriter::new();
        w.add(&bitmap(&[1, 2, 3]));
        let (file, d2) = w.finish(&root()).unwrap();
        file.put(&store).await.unwrap();
        let wrong = DeletionVectorDescriptor {
            cardinality: 4,
            ..d2[0].clone()
        };
        let err = read(&store, &root(), &wrong).await.unwrap_err();
        assert!(err.to_string().contains("3 rows where the log says 4"), "{err}");

        // Sizes the kernel would slice past, and a missing file (retryable: storage).
        let tiny = DeletionVectorDescriptor {
            size_in_bytes: 2,
            ..d2[0].clone()
        };
        let err = read(&store, &root(), &tiny).await.unwrap_err();
        assert!(err.to_string().contains("below 4 bytes"), "{err}");
        let err = read(&InMemory::new(), &root(), &d2[0]).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
    }

    #[tokio::test]
    async fn inline_and_prefixed_vectors_are_read() {
        let rows = bitmap(&[7, 8, 9]);
        // An inline vector is the magic and the bitmap, in Z85 (padded to four bytes).
        let mut body = 1_681_511_377u32.to_le_bytes().to_vec();
        rows.serialize_into(&mut body).unwrap();
        let size = body.len() as i32;
        while !body.len().is_multiple_of(4) {
            body.push(0);
        }
        let inline = DeletionVectorDescriptor {
            storage_type: StorageType::Inline,
            path_or_inline_dv: z85::encode(&body),
            offset: None,
            size_in_bytes: size,
            cardinality: 3,
        };
        let store = InMemory::new();
        assert_eq!(read(&store, &root(), &inline).await.unwrap(), rows);
        let short = DeletionVectorDescriptor {
            path_or_inline_dv: "abc".into(),
            ..inline
        };
        assert!(read(&store, &root(), &short).await.is_err());

        // A writer may put vectors below a random prefix folder.
        let mut w = DvFileWriter::new();
        w.add(&rows);
        let (file, d) = w.finish(&root()).unwrap();
        store
            .put(&Path::from(format!("ab/{}", file.path())), file.bytes.into())
            .await
            .unwrap();
        let prefixed = DeletionVectorDescriptor {
            path_or_inline_dv: format!("ab{}", d[0].path_or_inline_dv),
            ..d[0].clone()
        };
        assert_eq!(read(&store, &root(), &prefixed).await.unwrap(), rows);

        // An absolute path inside the table is read; one outside it is refused.
        let inside = DeletionVectorDescriptor {
            storage_type: StorageType::AbsolutePath,
            path_or_inline_dv: format!("{}ab/{}", root(), file_name(&d[0])),
            ..d[0].clone()
        };
        assert_eq!(read(&store, &root(), &inside).await.unwrap(), rows);
        let outside = DeletionVectorDescriptor {
            path_or_inline_dv: "memory:///elsewhere/x.bin".into(),
            ..inside
        };
        let err = read(&store, &root(), &outside).await.unwrap_err();
        assert!(matches!(err, DvError::Unsupported { .. }), "{err}");
    }

    /// The file a `u` descriptor without prefix names, by the kernel's reckoning.
    fn file_name(d: &DeletionVectorDescriptor) -> String {
        let url = to_kernel(d).unwrap().absolute_path(&root()).unwrap().unwrap();
        below_root(&url, &root()).unwrap().to_string()
    }
}
