//! Users' homes in one bucket of an S3-compatible store, one key prefix each: the
//! [`HomeStore`] a server of a cluster opens homes from (`ferry serve --storage s3
//! --s3-config FILE`).
//!
//! The configuration file (TOML):
//!
//! ```toml
//! endpoint = "https://s3.example.org"   # plain http:// only to a loopback address
//! region = "garage"
//! bucket = "ferry"
//! prefix = "ferry"                       # optional: every key beneath it
//! credentials_file = "/etc/ferry/s3-credentials"   # optional, else AWS_ACCESS_KEY_ID/…
//! part_size = "8 MiB"                    # optional, 5 MiB to 512 MiB
//! ```
//!
//! The credentials file is in the AWS shared-credentials format (`[default]`,
//! `aws_access_key_id`, `aws_secret_access_key`); the keys never come from the command line.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::s3::{S3Bucket, S3Config, S3Credentials, S3State, S3Storage};
use super::{HomeStore, Storage, StorageError};
use crate::domain::BoxFuture;

/// The configuration file's fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    endpoint: String,
    region: String,
    bucket: String,
    prefix: Option<String>,
    credentials_file: Option<std::path::PathBuf>,
    part_size: Option<String>,
}

/// Reads an S3 configuration file (see the module's documentation).
pub fn load_config(path: &Path) -> Result<S3Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let f: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut config = S3Config::new(&f.endpoint, &f.region, &f.bucket);
    config.prefix = f.prefix.filter(|p| !p.trim_matches('/').is_empty());
    if let Some(c) = f.credentials_file {
        // Relative to the configuration file, as an admin reading it expects.
        let c = match path.parent() {
            Some(dir) if c.is_relative() => dir.join(c),
            _ => c,
        };
        config.credentials = S3Credentials::File(c);
    }
    if let Some(size) = f.part_size {
        let n = crate::users::parse_size(&size)
            .ok_or_else(|| format!("{}: part_size {size:?}: expected a size", path.display()))?;
        config.part_size =
            usize::try_from(n).map_err(|_| format!("{}: part_size too large", path.display()))?;
    }
    Ok(config)
}

/// Every home a key prefix in one bucket, with the state the nodes share.
pub struct S3Homes {
    bucket: Arc<S3Bucket>,
    state: S3State,
}

impl std::fmt::Debug for S3Homes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Homes")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl S3Homes {
    /// Opens the bucket `config` names; homes get `state` (name reservations, digests, kept
    /// partials), shared by the nodes.
    pub fn open(config: &S3Config, state: S3State) -> Result<S3Homes, String> {
        let bucket = S3Bucket::open(config).map_err(|e| e.to_string())?;
        Ok(S3Homes { bucket, state })
    }

    /// Times the store's requests into `metrics` (`ferry_object_store_seconds`).
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        self.bucket.set_metrics(metrics);
    }
}

impl S3Homes {
    /// Asks the store about a key no home has: `Ok` when the store answers and the key may
    /// read the bucket (the answer is "not found"), else why not, for a clear error at start.
    pub async fn check(&self) -> Result<(), String> {
        use object_store::ObjectStoreExt;
        let probe = object_store::path::Path::from(".ferry-probe");
        match self.bucket.object_store().head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl HomeStore for S3Homes {
    fn key(&self, home: &str) -> String {
        match self.bucket.home_prefix(home) {
            Ok(prefix) => format!("s3:{prefix}"),
            // Never opened (see `open`): a key no valid home has.
            Err(_) => format!("s3-invalid:{home}"),
        }
    }

    fn open<'a>(&'a self, home: &'a str) -> BoxFuture<'a, Result<Arc<dyn Storage>, StorageError>> {
        Box::pin(async move {
            let storage = S3Storage::open(&self.bucket, home, self.state.clone()).map_err(|e| {
                StorageError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    e.to_string(),
                ))
            })?;
            Ok(Arc::new(storage) as Arc<dyn Storage>)
        })
    }
}
