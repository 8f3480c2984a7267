//! Cold-start helpers shared by the functions and the CLI: logging and loading the
//! configuration named by the environment.

use object_store::ObjectStoreExt;

use crate::config::{Config, StorageConfig, Validated};
use crate::error::{Error, Result};
use crate::storage::{object_path, Location, Stores};

/// The environment variable naming the configuration document (a path or an `s3://` URI).
pub const CONFIG_ENV: &str = "DMS2DELTA_CONFIG";

/// Every environment variable each function reads at cold start (the template test checks that
/// template.yaml sets them all).
pub const ENVIRONMENT: &[&str] = &[CONFIG_ENV, "RUST_LOG"];

/// JSON log lines on stderr, filtered by `RUST_LOG` (default `info`). delta-rs logs every commit
/// conflict and a harmless "No files in log segment" at ERROR; those are lowered so that alarms
/// on ERROR lines mean something.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,deltalake_core::kernel::transaction=warn,deltalake_core::logstore=warn")
    });
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .without_time()
        .try_init();
}

/// Reads and validates the configuration named by `DMS2DELTA_CONFIG`.
pub async fn load_config_from_env() -> Result<Validated> {
    let uri = std::env::var(CONFIG_ENV).map_err(|_| Error::Config {
        path: CONFIG_ENV.into(),
        reason: "not set: point it at the configuration document (a local path or s3://bucket/key)".into(),
    })?;
    load_config(&uri).await
}

/// Reads and validates a configuration document from a local path or an `s3://` URI.
pub async fn load_config(uri: &str) -> Result<Validated> {
    let text = match Location::parse(uri).map_err(|e| Error::Config {
        path: CONFIG_ENV.into(),
        reason: e.to_string(),
    })? {
        Location::S3 { bucket, prefix } => {
            let stores = Stores::new(StorageConfig::default());
            let store = stores.bucket(&bucket)?;
            let path = object_path(&prefix).map_err(|e| Error::Config {
                path: CONFIG_ENV.into(),
                reason: e.to_string(),
            })?;
            let bytes = store
                .get(&path)
                .await
                .map_err(Error::storage("get configuration", uri))?
                .bytes()
                .await
                .map_err(Error::storage("read configuration", uri))?;
            String::from_utf8(bytes.to_vec()).map_err(|_| Error::Config {
                path: uri.into(),
                reason: "the configuration is not UTF-8".into(),
            })?
        }
        Location::Local { dir } => std::fs::read_to_string(&dir).map_err(|e| Error::Config {
            path: uri.into(),
            reason: format!("cannot read {}: {e}", dir.display()),
        })?,
        Location::Memory { .. } => {
            return Err(Error::Config {
                path: CONFIG_ENV.into(),
                reason: "memory:// is for tests only".into(),
            })
        }
    };
    Config::from_text(&text)
}
