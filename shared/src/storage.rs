//! Where things are stored. Every stage reads and writes through `Arc<dyn ObjectStore>`, so the
//! same code runs on S3, on a local folder and in memory.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;

use crate::config::StorageConfig;
use crate::error::{Error, Result};

/// A place: a bucket and prefix on S3, a local folder, or a named in-memory store (tests).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Location {
    S3 { bucket: String, prefix: String },
    Local { dir: PathBuf },
    Memory { name: String, prefix: String },
}

impl Location {
    /// `s3://bucket/prefix`, `file:///dir`, `memory://name/prefix`, or a plain local path.
    pub fn parse(text: &str) -> std::result::Result<Location, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("an empty location".into());
        }
        if let Some(rest) = text.strip_prefix("s3://").or_else(|| text.strip_prefix("s3a://")) {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("`{text}` has no bucket"));
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
            return Err(format!("`{text}`: only s3://, file:// and local paths are supported"));
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
    pub fn engine_url(&self) -> std::result::Result<url::Url, String> {
        let (base, prefix) = match self {
            Location::S3 { bucket, prefix } => (format!("s3://{bucket}/"), prefix),
            Location::Memory { name, prefix } => (format!("memory://{name}/"), prefix),
            Location::Local { dir } => {
                let abs = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                return url::Url::from_directory_path(&abs)
                    .map_err(|_| format!("{} is not a usable folder", abs.display()));
            }
        };
        let mut url = url::Url::parse(&base).map_err(|e| format!("`{base}`: {e}"))?;
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|_| format!("`{base}` cannot hold a path"))?;
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
pub fn path_below<S: AsRef<str>>(base: &Path, segments: &[S]) -> std::result::Result<Path, String> {
    let mut text = base.as_ref().to_string();
    for s in segments {
        let s = s.as_ref();
        if s.is_empty() || s == "." || s == ".." || s.contains('/') || s.chars().any(|c| c.is_control()) {
            return Err(format!(
                "`{s}` cannot be a path segment (empty, `.`, `..`, a `/` or a control character)"
            ));
        }
        if !text.is_empty() {
            text.push('/');
        }
        text.push_str(s);
    }
    Path::parse(&text).map_err(|e| format!("`{text}`: {e}"))
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local { dir } => write!(f, "{}", dir.display()),
            other => f.write_str(&other.url()),
        }
    }
}

fn clean_prefix(prefix: &str) -> std::result::Result<String, String> {
    let p = prefix.trim_matches('/');
    if p.split('/').any(|s| s == ".." || s == ".") {
        return Err(format!("`{prefix}`: `.` and `..` are not allowed in a prefix"));
    }
    if !p.is_empty() && p.split('/').any(str::is_empty) {
        return Err(format!("`{prefix}`: an empty folder name (`//`) in the prefix"));
    }
    if p.chars().any(char::is_control) {
        return Err(format!("`{prefix}`: control characters in the prefix"));
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
pub fn object_path(key: &str) -> std::result::Result<Path, String> {
    if key.is_empty() || key.starts_with('/') {
        return Err(format!("object key `{key}` is empty or absolute"));
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == ".." || s.contains('\\'))
    {
        return Err(format!(
            "object key `{key}` has an empty, `.`, `..` or backslash segment"
        ));
    }
    Path::parse(key).map_err(|e| format!("object key `{key}`: {e}"))
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
    snapshots: crate::lake::SnapshotCache,
    /// Tombstones already read, so a warm commit reads only the tombstone files added since.
    #[cfg(feature = "delta")]
    tombstones: crate::operations::tombstones::TombstoneCache,
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
            snapshots: crate::lake::SnapshotCache::default(),
            #[cfg(feature = "delta")]
            tombstones: crate::operations::tombstones::TombstoneCache::default(),
        }
    }

    /// Reads every Delta log afresh on every open instead of updating a held snapshot, and
    /// scans every tombstone file on every commit: what a cold function does each time (kept
    /// for comparison and for tools that recreate tables under the same location).
    #[cfg(feature = "delta")]
    pub fn without_snapshot_cache(mut self) -> Stores {
        self.snapshots = crate::lake::SnapshotCache::disabled();
        self.tombstones = crate::operations::tombstones::TombstoneCache::disabled();
        self
    }

    /// Holds tombstones within `cache` (tests give it a small budget, or none).
    #[cfg(feature = "delta")]
    pub fn with_tombstone_cache(mut self, cache: crate::operations::tombstones::TombstoneCache) -> Stores {
        self.tombstones = cache;
        self
    }

    #[cfg(feature = "delta")]
    pub fn tombstones(&self) -> &crate::operations::tombstones::TombstoneCache {
        &self.tombstones
    }

    #[cfg(feature = "delta")]
    pub fn snapshots(&self) -> &crate::lake::SnapshotCache {
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
                    let mapped = Location::parse(mapped).map_err(|reason| Error::Config {
                        path: format!("storage.buckets.{bucket}"),
                        reason,
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
