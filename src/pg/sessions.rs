//! [`WebSessions`] in the table `ferry_web_sessions`, shared by every node: a cookie made
//! through one node works through all, and a logout through one ends the session everywhere.
//!
//! Rows are keyed by the [`SessionKey`] (the SHA-256 of the cookie, made by the front-end):
//! the cookie itself is never stored, so a copy of the table opens no session. The idle lease
//! and the absolute end are on the database's clock (`now()`), so nodes whose clocks differ
//! agree on them. The trait has no error: a database that fails refuses a new session, finds
//! no session (the browser is asked to log in again) and is logged.

use std::time::{Duration, Instant};

use super::{Db, PgError, col};
use crate::domain::BoxFuture;
use crate::state::sessions::{
    MAX_SESSIONS, MAX_SESSIONS_PER_USER, SessionKey, WebSession, WebSessions,
};

/// Web sessions in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgSessions {
    db: Db,
}

/// A duration as seconds for `make_interval(secs => ...)`, bounded to a century.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64().min(100.0 * 365.0 * 86_400.0)
}

impl PgSessions {
    pub(crate) fn new(db: Db) -> PgSessions {
        PgSessions { db }
    }

    /// Runs `op` within the operation timeout; a failure is logged and becomes `fallback`.
    async fn within<T>(
        &self,
        what: &str,
        fallback: T,
        op: impl std::future::Future<Output = Result<T, PgError>>,
    ) -> T {
        let limit = self.db.config().operation_timeout();
        let e = match tokio::time::timeout(limit, op).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) => e,
            Err(_) => PgError::Unavailable(format!("no answer within {limit:?}")),
        };
        tracing::warn!(error = %e, "web sessions: {what} failed");
        fallback
    }
}

impl WebSessions for PgSessions {
    fn create(&self, key: SessionKey, session: WebSession, idle: Duration) -> BoxFuture<'_, bool> {
        Box::pin(self.within("create", false, async move {
            let ends = secs(session.ends.saturating_duration_since(Instant::now()));
            let mut c = self.db.conn().await?;
            let tx = c.transaction().await?;
            // One user's creations take turns, whichever node they come through, so the
            // cap holds.
            tx.execute(
                &tx.prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .await?,
                &[&format!("ferry-web-sessions:{}", session.user)],
            )
            .await?;
            tx.execute(
                &tx.prepare_cached(
                    "DELETE FROM ferry_web_sessions
                 WHERE user_name = $1 AND LEAST(idle_until, ends_at) <= now()",
                )
                .await?,
                &[&session.user],
            )
            .await?;
            let live: i64 = col(
                &tx.query_one(
                    &tx.prepare_cached(
                        "SELECT count(*) FROM ferry_web_sessions
                     WHERE LEAST(idle_until, ends_at) > now()",
                    )
                    .await?,
                    &[],
                )
                .await?,
                0,
            )?;
            if live >= MAX_SESSIONS as i64 {
                return Ok(false);
            }
            // Past the cap, the user's oldest sessions end.
            tx.execute(
                &tx.prepare_cached(
                    "DELETE FROM ferry_web_sessions WHERE key_hash IN (
                     SELECT key_hash FROM ferry_web_sessions WHERE user_name = $1
                     ORDER BY created_at DESC OFFSET $2)",
                )
                .await?,
                &[&session.user, &(MAX_SESSIONS_PER_USER as i64 - 1)],
            )
            .await?;
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO ferry_web_sessions
                     (key_hash, user_name, csrf, password_stamp, idle_until, ends_at)
                 VALUES ($1, $2, $3, $4,
                         now() + make_interval(secs => $5), now() + make_interval(secs => $6))
                 ON CONFLICT (key_hash) DO UPDATE SET
                     user_name = EXCLUDED.user_name, csrf = EXCLUDED.csrf,
                     password_stamp = EXCLUDED.password_stamp,
                     created_at = clock_timestamp(),
                     idle_until = EXCLUDED.idle_until, ends_at = EXCLUDED.ends_at",
                )
                .await?,
                &[
                    &key.as_slice(),
                    &session.user,
                    &session.csrf,
                    &session.password_stamp.as_slice(),
                    &secs(idle),
                    &ends,
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        }))
    }

    fn touch(&self, key: SessionKey, idle: Duration) -> BoxFuture<'_, Option<WebSession>> {
        Box::pin(self.within("touch", None, async move {
            let c = self.db.conn().await?;
            // Renewed only while live; the end comes back as what is left of it.
            let row = c
                .query_opt(
                    &c.prepare_cached(
                        "UPDATE ferry_web_sessions
                     SET idle_until = LEAST(ends_at, now() + make_interval(secs => $2))
                     WHERE key_hash = $1 AND idle_until > now() AND ends_at > now()
                     RETURNING user_name, csrf, password_stamp,
                               extract(epoch FROM ends_at - now())::float8",
                    )
                    .await?,
                    &[&key.as_slice(), &secs(idle)],
                )
                .await?;
            let Some(r) = row else {
                // Expired or none: an expired row goes now.
                c.execute(
                    &c.prepare_cached(
                        "DELETE FROM ferry_web_sessions
                     WHERE key_hash = $1 AND LEAST(idle_until, ends_at) <= now()",
                    )
                    .await?,
                    &[&key.as_slice()],
                )
                .await?;
                return Ok(None);
            };
            let stamp: Vec<u8> = col(&r, 2)?;
            let left: f64 = col(&r, 3)?;
            let left = Duration::try_from_secs_f64(left.max(0.0)).unwrap_or(Duration::ZERO);
            Ok(Some(WebSession {
                user: col(&r, 0)?,
                csrf: col(&r, 1)?,
                ends: Instant::now() + left,
                password_stamp: <[u8; 32]>::try_from(stamp.as_slice())
                    .map_err(|_| PgError::Query("a password stamp is not 32 bytes".into()))?,
            }))
        }))
    }

    fn delete(&self, key: SessionKey) -> BoxFuture<'_, ()> {
        Box::pin(self.within("delete", (), async move {
            let c = self.db.conn().await?;
            c.execute(
                &c.prepare_cached("DELETE FROM ferry_web_sessions WHERE key_hash = $1")
                    .await?,
                &[&key.as_slice()],
            )
            .await?;
            Ok(())
        }))
    }

    fn delete_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(self.within("delete_user", 0, async move {
            let c = self.db.conn().await?;
            let n = c
                .execute(
                    &c.prepare_cached("DELETE FROM ferry_web_sessions WHERE user_name = $1")
                        .await?,
                    &[&user],
                )
                .await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        }))
    }
}

/// Deletes expired sessions and upload records; part of the backend's sweep.
pub(crate) async fn sweep(db: &Db) -> Result<u64, PgError> {
    db.bounded(async {
        let c = db.conn().await?;
        let n = c
            .execute(
                &c.prepare_cached(
                    "DELETE FROM ferry_web_sessions WHERE LEAST(idle_until, ends_at) <= now()",
                )
                .await?,
                &[],
            )
            .await?;
        Ok(n)
    })
    .await
}
