//! An object store wrapper that fails chosen calls, to prove that every stage survives storage
//! errors and crashes at any point (tests and soak runs only).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// The kind of call a fault decision is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Put,
    Get,
    List,
    Delete,
    Copy,
}

/// What happens to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call goes through.
    Pass,
    /// The call fails before it reaches storage: nothing changed.
    FailBefore,
    /// The call is carried out, then its answer is lost: the caller sees an error although the
    /// write landed (a connection dropped after the server acted). Only writes can be told
    /// apart this way; for reads and lists it acts as [`Fault::FailBefore`].
    FailAfter,
}

type Decide = Arc<dyn Fn(Call, &Path) -> Fault + Send + Sync>;

/// Fails a call with an S3-like transient error whenever `decide(call, path)` says so.
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    decide: Decide,
}

impl FaultyStore {
    /// Fails a call before it reaches storage whenever `decide` returns true.
    pub fn new(
        inner: Arc<dyn ObjectStore>,
        decide: impl Fn(Call, &Path) -> bool + Send + Sync + 'static,
    ) -> FaultyStore {
        FaultyStore::with_faults(inner, move |call, path| {
            if decide(call, path) {
                Fault::FailBefore
            } else {
                Fault::Pass
            }
        })
    }

    /// Lets `decide` also choose a lost answer ([`Fault::FailAfter`]).
    pub fn with_faults(
        inner: Arc<dyn ObjectStore>,
        decide: impl Fn(Call, &Path) -> Fault + Send + Sync + 'static,
    ) -> FaultyStore {
        FaultyStore {
            inner,
            decide: Arc::new(decide),
        }
    }

    fn injected(call: Call, path: &Path, when: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "FaultyStore",
            source: format!("injected fault: 503 SlowDown on {call:?} {path} ({when})").into(),
        }
    }

    /// For calls that cannot lose an answer after acting: any fault fails them up front.
    fn check(&self, call: Call, path: &Path) -> Result<()> {
        match (self.decide)(call, path) {
            Fault::Pass => Ok(()),
            Fault::FailBefore | Fault::FailAfter => Err(Self::injected(call, path, "before the call")),
        }
    }

    /// Runs a write, failing it before or after it acted as `decide` says.
    async fn write<T>(&self, call: Call, path: &Path, run: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match (self.decide)(call, path) {
            Fault::Pass => run.await,
            Fault::FailBefore => Err(Self::injected(call, path, "before the call")),
            Fault::FailAfter => {
                run.await?;
                Err(Self::injected(call, path, "after the call acted"))
            }
        }
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.write(Call::Put, location, self.inner.put_opts(location, payload, opts))
            .await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.check(Call::Put, location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.check(Call::Get, location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.check(Call::Get, location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        if let Some(p) = prefix {
            self.check(Call::List, p)?;
        }
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.write(Call::Copy, to, self.inner.copy_opts(from, to, options))
            .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.write(Call::Copy, to, self.inner.rename_opts(from, to, options))
            .await
    }
}
