//! The SHA-256 of committed objects, for stores that cannot keep it with the object itself.
//!
//! An object store fixes an object's metadata when a multipart upload is created, before the
//! digest is known, so the `s3` storage records each committed object's verified SHA-256 here,
//! keyed by the object's key and the ETag the store gave it. A lookup with the ETag of the
//! object as it is now finds the record only while the object is the one that was committed:
//! an object replaced since has another ETag (unless someone who writes to the bucket behind
//! ferry's back crafts an MD5 collision; ferry itself records anew at every commit).
//!
//! In PostgreSQL (issue 15) this is one table:
//!
//! ```sql
//! CREATE TABLE object_digests (
//!     object_key  text  NOT NULL,   -- bucket/key
//!     etag        text  NOT NULL,
//!     sha256      bytea NOT NULL CHECK (length(sha256) = 32),
//!     recorded_at timestamptz NOT NULL DEFAULT now(),
//!     PRIMARY KEY (object_key, etag)
//! );
//! -- put: INSERT ... ON CONFLICT (object_key, etag) DO UPDATE SET sha256 = EXCLUDED.sha256
//! -- get: SELECT sha256 WHERE object_key = $1 AND etag = $2
//! -- forget: DELETE WHERE object_key = $1
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::StateError;
use crate::domain::BoxFuture;

/// Committed objects' SHA-256 by (key, ETag).
pub trait DigestIndex: Send + Sync {
    /// Records that the object `key` with ETag `etag` has the SHA-256 `sha256`.
    fn put(&self, key: &str, etag: &str, sha256: [u8; 32])
    -> BoxFuture<'_, Result<(), StateError>>;

    /// The SHA-256 recorded for `key` at `etag`, if any.
    fn get(&self, key: &str, etag: &str) -> BoxFuture<'_, Result<Option<[u8; 32]>, StateError>>;

    /// Drops every record of `key` (the object was removed or moved away).
    fn forget(&self, key: &str) -> BoxFuture<'_, Result<(), StateError>>;
}

/// [`DigestIndex`] in memory.
#[derive(Debug, Default)]
pub struct MemoryDigests {
    inner: Mutex<HashMap<String, HashMap<String, [u8; 32]>>>,
}

impl MemoryDigests {
    /// No digest recorded.
    pub fn new() -> Arc<MemoryDigests> {
        Arc::new(MemoryDigests::default())
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, [u8; 32]>>> {
        // A poisoned lock still holds whole entries: every update is one insert or remove.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DigestIndex for MemoryDigests {
    fn put(
        &self,
        key: &str,
        etag: &str,
        sha256: [u8; 32],
    ) -> BoxFuture<'_, Result<(), StateError>> {
        self.table()
            .entry(key.to_string())
            .or_default()
            .insert(etag.to_string(), sha256);
        Box::pin(std::future::ready(Ok(())))
    }

    fn get(&self, key: &str, etag: &str) -> BoxFuture<'_, Result<Option<[u8; 32]>, StateError>> {
        let found = self.table().get(key).and_then(|m| m.get(etag)).copied();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn forget(&self, key: &str) -> BoxFuture<'_, Result<(), StateError>> {
        self.table().remove(key);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_by_key_and_etag() {
        let d = MemoryDigests::new();
        d.put("b/k", "e1", [1; 32]).await.unwrap();
        d.put("b/k", "e2", [2; 32]).await.unwrap();
        assert_eq!(d.get("b/k", "e1").await.unwrap(), Some([1; 32]));
        assert_eq!(d.get("b/k", "e2").await.unwrap(), Some([2; 32]));
        assert_eq!(d.get("b/k", "e3").await.unwrap(), None);
        assert_eq!(d.get("b/other", "e1").await.unwrap(), None);
        d.forget("b/k").await.unwrap();
        assert_eq!(d.get("b/k", "e1").await.unwrap(), None);
    }
}
