//! [`DigestIndex`] in the table `ferry_object_digests`: the SHA-256 of each object an
//! object-store home committed, by key and ETag, shared by every node, so `sha256` and
//! downloads through any node need not read the object again.

use sha2::{Digest, Sha256};

use super::Db;
use crate::domain::BoxFuture;
use crate::state::StateError;
use crate::state::digests::DigestIndex;

/// Committed objects' digests in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgDigests {
    db: Db,
}

impl PgDigests {
    pub(crate) fn new(db: Db) -> PgDigests {
        PgDigests { db }
    }

    /// Runs `op` within the operation timeout: an error rather than a wait without end.
    async fn within<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        let limit = self.db.config().operation_timeout();
        tokio::time::timeout(limit, op).await.unwrap_or_else(|_| {
            Err(StateError::Unavailable(format!(
                "database unavailable: no answer within {limit:?}"
            )))
        })
    }
}

fn key_digest(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

impl DigestIndex for PgDigests {
    fn put(
        &self,
        key: &str,
        etag: &str,
        sha256: [u8; 32],
    ) -> BoxFuture<'_, Result<(), StateError>> {
        let (key, etag) = (key.to_string(), etag.to_string());
        Box::pin(self.within(async move {
            let c = self.db.conn().await?;
            c.execute(
                &c.prepare_cached(
                    "INSERT INTO ferry_object_digests (key_digest, object_key, etag, sha256)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key_digest, etag)
                 DO UPDATE SET sha256 = EXCLUDED.sha256, recorded_at = now()",
                )
                .await?,
                &[&key_digest(&key), &key, &etag, &sha256.as_slice()],
            )
            .await?;
            Ok(())
        }))
    }

    fn get(&self, key: &str, etag: &str) -> BoxFuture<'_, Result<Option<[u8; 32]>, StateError>> {
        let (key, etag) = (key.to_string(), etag.to_string());
        Box::pin(self.within(async move {
            let c = self.db.conn().await?;
            let row = c
                .query_opt(
                    &c.prepare_cached(
                        "SELECT sha256 FROM ferry_object_digests
                     WHERE key_digest = $1 AND etag = $2 AND object_key = $3",
                    )
                    .await?,
                    &[&key_digest(&key), &etag, &key],
                )
                .await?;
            Ok(row.and_then(|r| {
                let bytes: Vec<u8> = r.get(0);
                <[u8; 32]>::try_from(bytes.as_slice()).ok()
            }))
        }))
    }

    fn forget(&self, key: &str) -> BoxFuture<'_, Result<(), StateError>> {
        let key = key.to_string();
        Box::pin(self.within(async move {
            let c = self.db.conn().await?;
            c.execute(
                &c.prepare_cached("DELETE FROM ferry_object_digests WHERE key_digest = $1")
                    .await?,
                &[&key_digest(&key)],
            )
            .await?;
            Ok(())
        }))
    }
}
