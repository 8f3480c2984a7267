//! Which source a run reads: a folder or an S3 prefix, attached to the configuration.

use std::path::PathBuf;

use dms2delta::config::Config;
use dms2delta::storage::Location;
use object_store::path::Path;

use crate::common::{CliResult, Failure};

/// The files to replicate.
#[derive(Debug, Clone)]
pub struct Source {
    /// The buckets whose sources may own a file, tried in order; the first is listed.
    pub buckets: Vec<String>,
    /// Only keys below this prefix are listed.
    pub prefix: Option<Path>,
    /// The local folder, when the source is one.
    pub dir: Option<PathBuf>,
    /// For messages.
    pub shown: String,
}

impl Source {
    /// A file of this source, for people: its local path, or its `s3://` URI.
    pub fn file(&self, bucket: &str, key: &str) -> String {
        match &self.dir {
            Some(d) => d.join(key).display().to_string(),
            None => format!("s3://{bucket}/{key}"),
        }
    }
}

/// Points the configuration's source buckets at `--source`.
///
/// A local folder stands for every bucket the sources name (DMS object keys are paths below
/// it). An `s3://` source must be one of those buckets; any local mapping of it is dropped.
pub fn attach_source(config: &mut Config, source: &str) -> CliResult<Source> {
    let mut buckets: Vec<String> = Vec::new();
    for s in &config.sources {
        if !buckets.contains(&s.bucket) {
            buckets.push(s.bucket.clone());
        }
    }
    let loc = Location::parse(source).map_err(|r| Failure::usage(format!("--source {source}: {r}")))?;
    match loc {
        Location::Local { dir } => {
            if !dir.is_dir() {
                return Err(Failure::new(format!(
                    "the source folder {} does not exist",
                    dir.display()
                )));
            }
            let abs = std::path::absolute(&dir)
                .map_err(|e| Failure::new(format!("cannot resolve {}: {e}", dir.display())))?;
            for b in &buckets {
                config.storage.buckets.insert(b.clone(), abs.display().to_string());
            }
            Ok(Source {
                buckets,
                prefix: None,
                shown: abs.display().to_string(),
                dir: Some(abs),
            })
        }
        Location::S3 { bucket, prefix } => {
            if !buckets.contains(&bucket) {
                return Err(Failure::new(format!(
                    "no source in the configuration reads bucket `{bucket}` (they read: {}); point \
                     --source at one of those buckets or add a source for it",
                    buckets.join(", ")
                )));
            }
            config.storage.buckets.remove(&bucket);
            Ok(Source {
                shown: source.trim().to_string(),
                buckets: vec![bucket],
                prefix: if prefix.is_empty() {
                    None
                } else {
                    // Folder names as spelled (`dms/Åland`), not percent-encoded.
                    Some(Path::parse(&prefix).map_err(|e| Failure::usage(format!("--source {source}: {e}")))?)
                },
                dir: None,
            })
        }
        Location::Memory { .. } => Err(Failure::usage("--source: memory:// is for tests only")),
    }
}
