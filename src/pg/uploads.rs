//! [`UploadSessions`] in the table `ferry_uploads`: resumable uploads' records shared by every
//! node, so an upload created through one node is resumed (HEAD, PATCH) through any.
//!
//! Every change is one statement on one row (PostgreSQL's row lock orders racing changes);
//! a creation takes a transaction-scoped advisory lock on its owner, so racing creations for
//! an owner's last place cannot all win, whichever nodes they come through.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Db, PgError, col};
use crate::domain::BoxFuture;
use crate::state::uploads::{
    MAX_UPLOADS, MAX_UPLOADS_PER_OWNER, UploadOwner, UploadRecord, UploadSessions, UploadsError,
    valid_id,
};

/// Upload records in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgUploads {
    db: Db,
}

impl From<PgError> for UploadsError {
    fn from(e: PgError) -> UploadsError {
        UploadsError::Unavailable(e.to_string())
    }
}

impl From<tokio_postgres::Error> for UploadsError {
    fn from(e: tokio_postgres::Error) -> UploadsError {
        UploadsError::Unavailable(PgError::from(e).to_string())
    }
}

/// A time as nanoseconds since 1970, clamped to what an `i64` holds (until 2262).
fn nanos(t: SystemTime) -> i64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn time(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0))
}

fn owner_columns(o: &UploadOwner) -> (&'static str, &str) {
    match o {
        UploadOwner::User(n) => ("user", n),
        UploadOwner::Link(n) => ("link", n),
    }
}

fn size_col(n: u64) -> Result<i64, UploadsError> {
    i64::try_from(n).map_err(|_| UploadsError::Unavailable("size past 2^63".into()))
}

const COLUMNS: &str = "id, owner_kind, owner_name, target, size, expected, kept_len, kept_sha256, expires_ns, receipt";

fn digest(v: Option<Vec<u8>>) -> Result<Option<[u8; 32]>, PgError> {
    v.map(|b| {
        <[u8; 32]>::try_from(b.as_slice())
            .map_err(|_| PgError::Query("a digest is not 32 bytes".into()))
    })
    .transpose()
}

/// A row of [`COLUMNS`] as (id, record).
fn row_record(r: &tokio_postgres::Row) -> Result<(String, UploadRecord), PgError> {
    let kind: String = col(r, 1)?;
    let name: String = col(r, 2)?;
    let owner = match kind.as_str() {
        "user" => UploadOwner::User(name),
        "link" => UploadOwner::Link(name),
        other => return Err(PgError::Query(format!("unknown owner kind {other:?}"))),
    };
    let unsigned =
        |v: i64| u64::try_from(v).map_err(|_| PgError::Query("a negative size or offset".into()));
    let kept_len: Option<i64> = col(r, 6)?;
    let kept = match (kept_len, digest(col(r, 7)?)?) {
        (Some(n), Some(d)) => Some((unsigned(n)?, d)),
        _ => None,
    };
    Ok((
        col(r, 0)?,
        UploadRecord {
            owner,
            target: col(r, 3)?,
            size: unsigned(col(r, 4)?)?,
            expected: digest(col(r, 5)?)?,
            kept,
            expires: time(col(r, 8)?),
            receipt: col(r, 9)?,
        },
    ))
}

impl PgUploads {
    pub(crate) fn new(db: Db) -> PgUploads {
        PgUploads { db }
    }

    /// Runs `op` within the operation timeout: an error rather than a wait without end.
    async fn within<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, UploadsError>>,
    ) -> Result<T, UploadsError> {
        let limit = self.db.config().operation_timeout();
        tokio::time::timeout(limit, op).await.unwrap_or_else(|_| {
            Err(UploadsError::Unavailable(format!(
                "database unavailable: no answer within {limit:?}"
            )))
        })
    }

    /// Runs one `UPDATE ... WHERE id = $1` with `params` after the id; `NotFound` when no
    /// row changed.
    async fn update(
        &self,
        id: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(), UploadsError> {
        if !valid_id(id) {
            return Err(UploadsError::NotFound);
        }
        let c = self.db.conn().await?;
        let mut all: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&id];
        all.extend_from_slice(params);
        match c.execute(&c.prepare_cached(sql).await?, &all).await? {
            0 => Err(UploadsError::NotFound),
            _ => Ok(()),
        }
    }
}

impl UploadSessions for PgUploads {
    fn create<'a>(
        &'a self,
        id: &'a str,
        record: UploadRecord,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<(), UploadsError>> {
        Box::pin(self.within(async move {
            if !valid_id(id) {
                return Err(UploadsError::NotFound);
            }
            let now = nanos(now);
            let (kind, name) = owner_columns(&record.owner);
            let mut c = self.db.conn().await?;
            let tx = c.transaction().await?;
            // Creations for one owner take turns, whichever node they come through.
            tx.execute(
                &tx.prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .await?,
                &[&format!("ferry-upload-owner:{kind}:{name}")],
            )
            .await?;
            tx.execute(
                &tx.prepare_cached("DELETE FROM ferry_uploads WHERE expires_ns <= $1")
                    .await?,
                &[&now],
            )
            .await?;
            let taken = tx
                .query_opt(
                    &tx.prepare_cached("SELECT 1 FROM ferry_uploads WHERE id = $1")
                        .await?,
                    &[&id],
                )
                .await?;
            if taken.is_some() {
                return Err(UploadsError::Taken);
            }
            let mine: i64 = col(
                &tx.query_one(
                    &tx.prepare_cached(
                        "SELECT count(*) FROM ferry_uploads
                     WHERE owner_kind = $1 AND owner_name = $2 AND receipt IS NULL",
                    )
                    .await?,
                    &[&kind, &name],
                )
                .await?,
                0,
            )?;
            if mine >= MAX_UPLOADS_PER_OWNER as i64 {
                return Err(UploadsError::Full);
            }
            let all: i64 = col(
                &tx.query_one(
                    &tx.prepare_cached("SELECT count(*) FROM ferry_uploads")
                        .await?,
                    &[],
                )
                .await?,
                0,
            )?;
            if all >= MAX_UPLOADS as i64 {
                // A finished upload's receipt was sent with its last answer: the first to go.
                let freed = tx
                    .execute(
                        &tx.prepare_cached(
                            "DELETE FROM ferry_uploads WHERE id = (
                             SELECT id FROM ferry_uploads WHERE receipt IS NOT NULL
                             ORDER BY expires_ns LIMIT 1 FOR UPDATE SKIP LOCKED)",
                        )
                        .await?,
                        &[],
                    )
                    .await?;
                if freed == 0 {
                    return Err(UploadsError::Full);
                }
            }
            let kept_len = record.kept.map(|k| size_col(k.0)).transpose()?;
            let kept_sha = record.kept.map(|k| k.1.to_vec());
            let inserted = tx
                .execute(
                    &tx.prepare_cached(
                        "INSERT INTO ferry_uploads
                         (id, owner_kind, owner_name, target, size, expected, kept_len,
                          kept_sha256, expires_ns, receipt)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                     ON CONFLICT (id) DO NOTHING",
                    )
                    .await?,
                    &[
                        &id,
                        &kind,
                        &name,
                        &record.target,
                        &size_col(record.size)?,
                        &record.expected.map(|d| d.to_vec()),
                        &kept_len,
                        &kept_sha,
                        &nanos(record.expires),
                        &record.receipt,
                    ],
                )
                .await?;
            if inserted == 0 {
                return Err(UploadsError::Taken);
            }
            tx.commit().await?;
            Ok(())
        }))
    }

    fn get<'a>(
        &'a self,
        id: &'a str,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<Option<UploadRecord>, UploadsError>> {
        Box::pin(self.within(async move {
            if !valid_id(id) {
                return Ok(None);
            }
            let c = self.db.conn().await?;
            let row = c
                .query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM ferry_uploads WHERE id = $1 AND expires_ns > $2"
                    ),
                    &[&id, &nanos(now)],
                )
                .await?;
            Ok(row.map(|r| row_record(&r)).transpose()?.map(|(_, r)| r))
        }))
    }

    fn renew<'a>(
        &'a self,
        id: &'a str,
        expires: SystemTime,
    ) -> BoxFuture<'a, Result<(), UploadsError>> {
        Box::pin(self.within(async move {
            self.update(
                id,
                "UPDATE ferry_uploads SET expires_ns = GREATEST(expires_ns, $2) WHERE id = $1",
                &[&nanos(expires)],
            )
            .await
        }))
    }

    fn set_kept<'a>(
        &'a self,
        id: &'a str,
        kept: Option<(u64, [u8; 32])>,
    ) -> BoxFuture<'a, Result<(), UploadsError>> {
        Box::pin(self.within(async move {
            let len = kept.map(|k| size_col(k.0)).transpose()?;
            let sha = kept.map(|k| k.1.to_vec());
            self.update(
                id,
                "UPDATE ferry_uploads SET kept_len = $2, kept_sha256 = $3 WHERE id = $1",
                &[&len, &sha],
            )
            .await
        }))
    }

    fn complete<'a>(
        &'a self,
        id: &'a str,
        receipt: String,
    ) -> BoxFuture<'a, Result<(), UploadsError>> {
        Box::pin(self.within(async move {
            self.update(
                id,
                "UPDATE ferry_uploads SET kept_len = NULL, kept_sha256 = NULL, receipt = $2
                 WHERE id = $1",
                &[&receipt],
            )
            .await
        }))
    }

    fn remove<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<UploadRecord>, UploadsError>> {
        Box::pin(self.within(async move {
            if !valid_id(id) {
                return Ok(None);
            }
            let c = self.db.conn().await?;
            let row = c
                .query_opt(
                    &format!("DELETE FROM ferry_uploads WHERE id = $1 RETURNING {COLUMNS}"),
                    &[&id],
                )
                .await?;
            Ok(row.map(|r| row_record(&r)).transpose()?.map(|(_, r)| r))
        }))
    }

    fn hold<'a>(
        &'a self,
        id: &'a str,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, UploadsError>> {
        Box::pin(self.within(async move {
            if !valid_id(id) {
                return Err(UploadsError::NotFound);
            }
            let c = self.db.conn().await?;
            // One statement on the row: of racing holders exactly one finds it free.
            let n = c
                .execute(
                    &c.prepare_cached(
                        "UPDATE ferry_uploads
                     SET holder = $2, held_until = clock_timestamp() + make_interval(secs => $3)
                     WHERE id = $1
                       AND (holder IS NULL OR holder = $2 OR held_until <= clock_timestamp())",
                    )
                    .await?,
                    &[&id, &holder, &lease.as_secs_f64().min(86_400.0)],
                )
                .await?;
            if n > 0 {
                return Ok(true);
            }
            match c
                .query_opt(
                    &c.prepare_cached("SELECT 1 FROM ferry_uploads WHERE id = $1")
                        .await?,
                    &[&id],
                )
                .await?
            {
                Some(_) => Ok(false),
                None => Err(UploadsError::NotFound),
            }
        }))
    }

    fn release<'a>(
        &'a self,
        id: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), UploadsError>> {
        Box::pin(self.within(async move {
            let c = self.db.conn().await?;
            c.execute(
                &c.prepare_cached(
                    "UPDATE ferry_uploads SET holder = NULL, held_until = NULL
                 WHERE id = $1 AND holder = $2",
                )
                .await?,
                &[&id, &holder],
            )
            .await?;
            Ok(())
        }))
    }

    fn take_expired(
        &self,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Vec<(String, UploadRecord)>, UploadsError>> {
        Box::pin(self.within(async move {
            let c = self.db.conn().await?;
            // Each expired row is returned by exactly one caller: the DELETE that removed it.
            let rows = c
                .query(
                    &format!(
                        "DELETE FROM ferry_uploads WHERE id IN (
                             SELECT id FROM ferry_uploads WHERE expires_ns <= $1
                             LIMIT {MAX_UPLOADS} FOR UPDATE SKIP LOCKED)
                         RETURNING {COLUMNS}"
                    ),
                    &[&nanos(now)],
                )
                .await?;
            Ok(rows.iter().map(row_record).collect::<Result<Vec<_>, _>>()?)
        }))
    }
}
