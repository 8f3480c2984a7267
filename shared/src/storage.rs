//! Where things are stored. Every stage reads and writes through `Arc<dyn ObjectStore>`, so the
//! same code runs on S3, on a local folder and in memory.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;
use serde::Deserialize;

use crate::error::{Error, Result};

/// How to reach storage: the configuration's `storage` section, which storage owns so that it
/// needs nothing from `config`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// An S3-compatible endpoint (otherwise `AWS_ENDPOINT_URL`, otherwise AWS).
    pub endpoint: Option<String>,
    /// The AWS region (otherwise `AWS_REGION` / `AWS_DEFAULT_REGION`).
    pub region: Option<String>,
    /// Allow plain HTTP to the endpoint (local test servers only).
    #[serde(default)]
    pub allow_http: bool,
    /// Path-style requests (`endpoint/bucket/key`), which S3-compatible endpoints need (and
    /// `endpoint` requires); otherwise virtual-hosted style (`bucket.s3.region.amazonaws.com`).
    #[serde(default)]
    pub path_style: bool,
    /// Server-side encryption to request on every write: `AES256` (SSE-S3) or `aws:kms`
    /// (SSE-KMS). Needed when a bucket policy refuses writes without it; buckets with default
    /// encryption need nothing here.
    pub server_side_encryption: Option<ServerSideEncryption>,
    /// The KMS key for `aws:kms` (otherwise the bucket's or the account's default key).
    pub kms_key_id: Option<String>,
    /// Bucket name -> local folder, so that S3 events naming that bucket resolve to files on disk.
    #[serde(default)]
    pub buckets: BTreeMap<String, String>,
}

/// The `x-amz-server-side-encryption` value writes carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ServerSideEncryption {
    #[serde(rename = "AES256")]
    S3,
    #[serde(rename = "aws:kms")]
    Kms,
}

impl ServerSideEncryption {
    /// The header value (also object_store's and delta-rs's option value).
    pub fn as_str(self) -> &'static str {
        match self {
            ServerSideEncryption::S3 => "AES256",
            ServerSideEncryption::Kms => "aws:kms",
        }
    }
}

/// A place: a bucket and prefix on S3, a local folder, or a named in-memory store (tests).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    S3 { bucket: String, prefix: String },
    Local { dir: PathBuf },
    Memory { name: String, prefix: String },
}

/// Why a location, a prefix, an object key or a path segment was refused.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("an empty location")]
    EmptyLocation,
    #[error("`{0}` has no bucket")]
    NoBucket(String),
    #[error("`{0}`: only s3://, file:// and local paths are supported")]
    UnsupportedScheme(String),
    #[error("`{0}`: `.` and `..` are not allowed in a prefix")]
    DotInPrefix(String),
    #[error("`{0}`: an empty folder name (`//`) in the prefix")]
    EmptyFolderInPrefix(String),
    #[error("`{0}`: control characters in the prefix")]
    ControlInPrefix(String),
    #[error("`{0}` cannot be a path segment (empty, `.`, `..`, a `/` or a control character)")]
    BadSegment(String),
    #[error("object key `{0}` is empty or absolute")]
    EmptyOrAbsoluteKey(String),
    #[error("object key `{0}` has an empty, `.`, `..` or backslash segment")]
    BadKeySegment(String),
    #[error("object key `{key}`: {source}")]
    BadKey {
        key: String,
        #[source]
        source: object_store::path::Error,
    },
    #[error("`{path}`: {source}")]
    BadPath {
        path: String,
        #[source]
        source: object_store::path::Error,
    },
    #[error("{dir}: {source}")]
    Folder {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a usable folder")]
    UnusableFolder(String),
    #[error("`{base}`: {source}")]
    Url {
        base: String,
        #[source]
        source: url::ParseError,
    },
    #[error("`{0}` cannot hold a path")]
    NotABase(String),
}

impl Location {
    /// `s3://bucket/prefix`, `file:///dir`, `memory://name/prefix`, or a plain local path.
    pub fn parse(text: &str) -> std::result::Result<Location, PathError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(PathError::EmptyLocation);
        }
        if let Some(rest) = text.strip_prefix("s3://").or_else(|| text.strip_prefix("s3a://")) {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(PathError::NoBucket(text.to_string()));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: clean_prefix(prefix)?,
            });
        }
        if let Some(rest) = text.strip_prefix("memory://") {
            let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            return Ok(Location::Memory {
                name: name.to_string(),
                prefix: clean_prefix(prefix)?,
            });
        }
        if let Some(rest) = text.strip_prefix("file://") {
            return Ok(Location::Local {
                dir: PathBuf::from(rest),
            });
        }
        if text.contains("://") {
            return Err(PathError::UnsupportedScheme(text.to_string()));
        }
        Ok(Location::Local {
            dir: PathBuf::from(text),
        })
    }

    /// The location `sub` below this one.
    pub fn join(&self, sub: &str) -> Location {
        let sub = sub.trim_matches('/');
        match self {
            Location::S3 { bucket, prefix } => Location::S3 {
                bucket: bucket.clone(),
                prefix: join_prefix(prefix, sub),
            },
            Location::Memory { name, prefix } => Location::Memory {
                name: name.clone(),
                prefix: join_prefix(prefix, sub),
            },
            Location::Local { dir } => Location::Local { dir: dir.join(sub) },
        }
    }

    /// The location written as a URL for people, logs and catalogs: names as they are spelled
    /// (`s3://lake/ns/Åland/Orders`). Give the Delta engine [`Location::engine_url`] instead.
    pub fn url(&self) -> String {
        match self {
            Location::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            Location::Memory { name, prefix } => format!("memory://{name}/{prefix}"),
            Location::Local { dir } => {
                let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
                format!("file://{}", abs.display())
            }
        }
    }
}

impl Location {
    /// The location as a parsed URL whose path segments are percent-encoded, so that a name
    /// holding `#`, `?`, `%`, spaces or non-ASCII letters stays one path segment (the engine
    /// decodes it back to the key as spelled). Local folders become `file://` directory URLs.
    pub fn engine_url(&self) -> std::result::Result<url::Url, PathError> {
        let (base, prefix) = match self {
            Location::S3 { bucket, prefix } => (format!("s3://{bucket}/"), prefix),
            Location::Memory { name, prefix } => (format!("memory://{name}/"), prefix),
            Location::Local { dir } => {
                let abs = std::path::absolute(dir).map_err(|source| PathError::Folder {
                    dir: dir.display().to_string(),
                    source,
                })?;
                return url::Url::from_directory_path(&abs)
                    .map_err(|_| PathError::UnusableFolder(abs.display().to_string()));
            }
        };
        let mut url = url::Url::parse(&base).map_err(|source| PathError::Url {
            base: base.clone(),
            source,
        })?;
        {
            let mut segments = url.path_segments_mut().map_err(|_| PathError::NotABase(base.clone()))?;
            segments.pop_if_empty();
            segments.extend(prefix.split('/').filter(|s| !s.is_empty()));
            // A directory URL: the engine resolves files below it.
            segments.push("");
        }
        Ok(url)
    }
}

/// The store path of `segments` below `base`, each segment kept exactly as spelled.
///
/// object_store's `Path::from` and `Path::child` percent-encode `%`, `#` and every non-ASCII
/// letter, so a table folder named `Åland` would be stored as `%C3%85land` and a listing could no
/// longer be mapped back to the table. Every path dms2delta builds from identifiers or object
/// keys goes through here instead.
pub fn path_below<S: AsRef<str>>(base: &Path, segments: &[S]) -> std::result::Result<Path, PathError> {
    let mut text = base.as_ref().to_string();
    for s in segments {
        let s = s.as_ref();
        if s.is_empty() || s == "." || s == ".." || s.contains('/') || s.chars().any(|c| c.is_control()) {
            return Err(PathError::BadSegment(s.to_string()));
        }
        if !text.is_empty() {
            text.push('/');
        }
        text.push_str(s);
    }
    Path::parse(&text).map_err(|source| PathError::BadPath {
        path: text.clone(),
        source,
    })
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local { dir } => write!(f, "{}", dir.display()),
            other => f.write_str(&other.url()),
        }
    }
}

fn clean_prefix(prefix: &str) -> std::result::Result<String, PathError> {
    let p = prefix.trim_matches('/');
    if p.split('/').any(|s| s == ".." || s == ".") {
        return Err(PathError::DotInPrefix(prefix.to_string()));
    }
    if !p.is_empty() && p.split('/').any(str::is_empty) {
        return Err(PathError::EmptyFolderInPrefix(prefix.to_string()));
    }
    if p.chars().any(char::is_control) {
        return Err(PathError::ControlInPrefix(prefix.to_string()));
    }
    Ok(p.to_string())
}

fn join_prefix(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

/// Parses an object key from an event into a store path. Keys that could climb out of a local
/// storage root (`..`, `.`, empty segments, absolute paths, backslashes) are refused.
pub fn object_path(key: &str) -> std::result::Result<Path, PathError> {
    if key.is_empty() || key.starts_with('/') {
        return Err(PathError::EmptyOrAbsoluteKey(key.to_string()));
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == ".." || s.contains('\\'))
    {
        return Err(PathError::BadKeySegment(key.to_string()));
    }
    Path::parse(key).map_err(|source| PathError::BadKey {
        key: key.to_string(),
        source,
    })
}

/// Wraps the store the Delta engine uses (fault injection in tests).
pub type StoreWrapper = Arc<dyn Fn(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> + Send + Sync>;

/// Builds and caches one store per bucket or folder.
pub struct Stores {
    config: StorageConfig,
    cache: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
    delta_wrapper: Option<StoreWrapper>,
    /// Delta snapshots already read, so a warm function does not read a log again.
    #[cfg(feature = "delta")]
    snapshots: crate::snapshot_cache::SnapshotCache,
    /// Tombstones already read, so a warm commit reads only the tombstone files added since.
    #[cfg(feature = "delta")]
    tombstones: crate::tombstone_cache::TombstoneCache,
}

impl fmt::Debug for Stores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stores")
            .field("config", &self.config)
            .field("delta_wrapper", &self.delta_wrapper.is_some())
            .finish_non_exhaustive()
    }
}

impl Stores {
    pub fn new(config: StorageConfig) -> Stores {
        Stores {
            config,
            cache: Mutex::new(HashMap::new()),
            delta_wrapper: None,
            #[cfg(feature = "delta")]
            snapshots: crate::snapshot_cache::SnapshotCache::default(),
            #[cfg(feature = "delta")]
            tombstones: crate::tombstone_cache::TombstoneCache::default(),
        }
    }

    /// Reads every Delta log afresh on every open instead of updating a held snapshot, and
    /// scans every tombstone file on every commit: what a cold function does each time (kept
    /// for comparison and for tools that recreate tables under the same location).
    #[cfg(feature = "delta")]
    pub fn without_snapshot_cache(mut self) -> Stores {
        self.snapshots = crate::snapshot_cache::SnapshotCache::disabled();
        self.tombstones = crate::tombstone_cache::TombstoneCache::disabled();
        self
    }

    /// Holds tombstones within `cache` (tests give it a small budget, or none).
    #[cfg(feature = "delta")]
    pub fn with_tombstone_cache(mut self, cache: crate::tombstone_cache::TombstoneCache) -> Stores {
        self.tombstones = cache;
        self
    }

    #[cfg(feature = "delta")]
    pub fn tombstones(&self) -> &crate::tombstone_cache::TombstoneCache {
        &self.tombstones
    }

    #[cfg(feature = "delta")]
    pub fn snapshots(&self) -> &crate::snapshot_cache::SnapshotCache {
        &self.snapshots
    }

    /// Puts `wrap` between the Delta engine and local folders (tests inject faults with it).
    pub fn with_delta_wrapper(mut self, wrap: StoreWrapper) -> Stores {
        self.delta_wrapper = Some(wrap);
        self
    }

    pub fn delta_wrapper(&self) -> Option<&StoreWrapper> {
        self.delta_wrapper.as_ref()
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// Registers a store for a bucket name (tests use in-memory stores, fault injectors wrap).
    pub fn insert_bucket(&self, bucket: &str, store: Arc<dyn ObjectStore>) {
        if let Ok(mut c) = self.cache.lock() {
            c.insert(format!("s3://{bucket}"), store);
        }
    }

    /// The store holding `bucket`, honouring the local folder mapping.
    pub fn bucket(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        let (store, _) = self.resolve(&Location::S3 {
            bucket: bucket.to_string(),
            prefix: String::new(),
        })?;
        Ok(store)
    }

    /// The store and the root path below it for a location.
    pub fn resolve(&self, loc: &Location) -> Result<(Arc<dyn ObjectStore>, Path)> {
        let (cache_key, prefix) = match loc {
            Location::S3 { bucket, prefix } => (format!("s3://{bucket}"), prefix.clone()),
            Location::Memory { name, prefix } => (format!("memory://{name}"), prefix.clone()),
            Location::Local { dir } => (format!("file://{}", dir.display()), String::new()),
        };
        let mut cache = self.cache.lock().map_err(|_| Error::Internal {
            stage: crate::error::Stage::Config,
            context: "store cache".into(),
            reason: "a thread panicked while holding the store cache".into(),
            retryable: true,
        })?;
        // The prefix is spelled as configured (and as table names are): parsed, not encoded.
        let root = Path::parse(&prefix).map_err(|e| Error::Config {
            path: "storage".into(),
            reason: format!("{loc} is not a usable location: {e}"),
        })?;
        if let Some(s) = cache.get(&cache_key) {
            return Ok((s.clone(), root));
        }
        let store: Arc<dyn ObjectStore> = match loc {
            Location::S3 { bucket, .. } => match self.config.buckets.get(bucket) {
                Some(mapped) => {
                    let mapped = Location::parse(mapped).map_err(|e| Error::Config {
                        path: format!("storage.buckets.{bucket}"),
                        reason: e.to_string(),
                    })?;
                    match mapped {
                        Location::Local { dir } => local(&dir)?,
                        _ => {
                            return Err(Error::Config {
                                path: format!("storage.buckets.{bucket}"),
                                reason: "a bucket can only be mapped to a local folder".into(),
                            })
                        }
                    }
                }
                None => self.s3(bucket)?,
            },
            Location::Memory { .. } => Arc::new(InMemory::new()),
            Location::Local { dir } => local(dir)?,
        };
        cache.insert(cache_key, store.clone());
        Ok((store, root))
    }

    fn s3(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(region) = &self.config.region {
            b = b.with_region(region);
        }
        let endpoint = self
            .config
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(ep) = endpoint {
            if !self.config.path_style {
                // Virtual-hosted style puts the bucket in the host name, which a custom endpoint
                // for many buckets cannot do.
                return Err(Error::Config {
                    path: "storage.path_style".into(),
                    reason: format!(
                        "endpoint {ep} (from storage.endpoint or AWS_ENDPOINT_URL) needs `path_style: true`"
                    ),
                });
            }
            b = b.with_endpoint(ep);
        }
        for (key, value) in self.s3_options() {
            let key = key.parse::<AmazonS3ConfigKey>().map_err(|e| Error::Config {
                path: "storage".into(),
                reason: format!("{key}: {e}"),
            })?;
            b = b.with_config(key, value);
        }
        let store = b.build().map_err(|e| Error::Config {
            path: "storage".into(),
            reason: format!("cannot reach bucket `{bucket}`: {e}"),
        })?;
        Ok(Arc::new(store))
    }

    /// The storage options the Delta engine needs for S3 locations.
    pub fn delta_options(&self) -> HashMap<String, String> {
        let mut o = HashMap::new();
        if let Some(region) = &self.config.region {
            o.insert("aws_region".into(), region.clone());
        }
        if let Some(ep) = self
            .config
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        {
            o.insert("aws_endpoint".into(), ep);
        }
        o.extend(self.s3_options());
        o
    }

    /// The settings both our own S3 clients and the Delta engine's take, by object_store key.
    fn s3_options(&self) -> Vec<(String, String)> {
        let c = &self.config;
        let mut o = Vec::new();
        // Only what the configuration asks for: plain HTTP and path style stay off otherwise.
        if c.allow_http {
            o.push(("aws_allow_http".into(), "true".into()));
        }
        o.push(("aws_virtual_hosted_style_request".into(), (!c.path_style).to_string()));
        if let Some(sse) = c.server_side_encryption {
            o.push(("aws_server_side_encryption".into(), sse.as_str().into()));
        }
        if let Some(key) = &c.kms_key_id {
            o.push(("aws_sse_kms_key_id".into(), key.clone()));
        }
        o
    }

    /// The location a Delta table really lives at (mapped buckets become local folders).
    pub fn physical(&self, loc: &Location) -> Location {
        match loc {
            Location::S3 { bucket, prefix } => {
                match self.config.buckets.get(bucket).and_then(|m| Location::parse(m).ok()) {
                    Some(Location::Local { dir }) => Location::Local {
                        dir: if prefix.is_empty() { dir } else { dir.join(prefix) },
                    },
                    _ => loc.clone(),
                }
            }
            other => other.clone(),
        }
    }
}

fn local(dir: &std::path::Path) -> Result<Arc<dyn ObjectStore>> {
    std::fs::create_dir_all(dir).map_err(Error::io("create local storage folder"))?;
    let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| Error::Config {
        path: "storage".into(),
        reason: format!("cannot use folder {}: {e}", dir.display()),
    })?;
    Ok(Arc::new(fs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::{ObjectStoreExt, PutPayload};

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("s3://b/a/b/").unwrap(),
            Location::S3 {
                bucket: "b".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("/tmp/x").unwrap(),
            Location::Local { dir: "/tmp/x".into() }
        );
        assert!(Location::parse("s3://b/../x").is_err());
        assert!(Location::parse("gs://b/x").is_err());
        assert_eq!(Location::parse("s3://b").unwrap().join("ns/t").url(), "s3://b/ns/t");
    }

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "a/./b",
            "a\\..\\b/c",
            "",
        ] {
            assert!(object_path(bad).is_err(), "{bad}");
        }
        assert_eq!(
            object_path("hr/emp/LOAD00000001.csv").unwrap().as_ref(),
            "hr/emp/LOAD00000001.csv"
        );
    }

    #[tokio::test]
    async fn mapped_bucket_is_a_local_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StorageConfig::default();
        cfg.buckets.insert("dms".into(), dir.path().display().to_string());
        let stores = Stores::new(cfg);
        let s = stores.bucket("dms").unwrap();
        s.put(&Path::from("hr/emp/x.csv"), PutPayload::from_static(b"a"))
            .await
            .unwrap();
        assert!(dir.path().join("hr/emp/x.csv").exists());
        // Cached: the same store comes back.
        assert!(Arc::ptr_eq(&s, &stores.bucket("dms").unwrap()));
    }
}
