//! [`ApiTokens`] in the table `ferry_api_tokens`, shared by every node: a token added through
//! one node is accepted by every node at its next request, and one revoked is refused by every
//! node at once (each lookup is a query; nothing is cached).
//!
//! As `tokens.toml` keeps them: only the SHA-256 of each secret, checked by
//! [`crate::state::tokens::check`] with one lookup by id and a constant-time comparison (no
//! argon2: the secret has 256 random bits). An `add` runs in one transaction that holds an
//! advisory lock, so the caps per user and in all hold with nodes adding at once, and drops
//! the tokens already expired at the new one's creation first, as the other stores do.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::Row;

use super::{AddRefused, Db, PgError, check_add, col};
use crate::domain::BoxFuture;
use crate::state::tokens::{
    ApiToken, ApiTokens, MAX_TOKENS, MAX_TOKENS_PER_USER, TokenError, TokenId, TokenScope,
    validate_token,
};
use crate::users;

/// The advisory lock that serialises adds of tokens across nodes ("ftok" in ASCII).
const ADD_LOCK: i64 = 0x6674_6f6b;

/// The columns read, in the order [`token_of`] takes them.
const COLUMNS: &str = "id, user_name, name, scope, sha256, created, expires";

/// API tokens in PostgreSQL. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgTokens {
    db: Db,
}

impl From<PgError> for TokenError {
    fn from(e: PgError) -> TokenError {
        TokenError::backend(format!("tokens: {e}"))
    }
}

impl PgTokens {
    pub(crate) fn new(db: Db) -> PgTokens {
        PgTokens { db }
    }
}

/// Seconds since the epoch, as the table keeps times (whole seconds; before the epoch is 0).
pub(crate) fn secs(t: SystemTime) -> i64 {
    let s = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    i64::try_from(s).unwrap_or(i64::MAX)
}

/// A time read back.
pub(crate) fn time(s: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

fn token_of(row: &Row) -> Result<ApiToken, TokenError> {
    let bad = |what: &str| TokenError::backend(format!("tokens: {what}"));
    let id: i64 = col(row, 0)?;
    let scope: String = col(row, 3)?;
    let sha256: Vec<u8> = col(row, 4)?;
    let expires: Option<i64> = col(row, 6)?;
    Ok(ApiToken {
        id: TokenId(u32::try_from(id).map_err(|_| bad("an id out of range"))?),
        user: col(row, 1)?,
        name: col(row, 2)?,
        scope: scope.parse()?,
        sha256: <[u8; 32]>::try_from(sha256.as_slice()).map_err(|_| bad("a broken hash"))?,
        created: time(col(row, 5)?),
        expires: expires.map(time),
    })
}

impl PgTokens {
    /// Adds `t` only if its user is an account in this database (`ferry token add
    /// --accounts`): the account's row is locked (`FOR SHARE`) until the token is in, so a
    /// `ferry user del` that runs at the same moment either deletes the account first (and
    /// this add is refused) or waits, and then its revocation of the user's tokens sees this
    /// one. A token never outlives its user's deletion.
    pub async fn add_for_existing_user(&self, t: &ApiToken) -> Result<(), TokenError> {
        self.insert(t, true).await
    }

    async fn insert(&self, t: &ApiToken, require_user: bool) -> Result<(), TokenError> {
        users::validate_name(&t.user).map_err(|e| TokenError::invalid(e.to_string()))?;
        validate_token(t)?;
        let scope = match t.scope {
            TokenScope::Full => "full",
            TokenScope::ReadOnly => "read-only",
        };
        let created = secs(t.created);
        let expires = t.expires.map(secs);
        let id = i64::from(t.id.0);
        let outcome = self
            .db
            .bounded(async {
                let mut conn = self.db.conn().await?;
                let tx = conn.transaction().await?;
                let refused = check_add(
                    &tx,
                    ADD_LOCK,
                    ("ferry_api_tokens", "user_name"),
                    id,
                    &t.user,
                    created,
                    require_user,
                    (MAX_TOKENS_PER_USER, MAX_TOKENS),
                )
                .await?;
                if let Some(why) = refused {
                    return Ok(Some(match why {
                        AddRefused::NoUser => TokenError::invalid(format!(
                            "no user `{}` in the accounts database",
                            t.user.escape_debug()
                        )),
                        AddRefused::Taken => TokenError::AlreadyExists(t.id),
                        AddRefused::OwnerFull => TokenError::Full {
                            reason: format!(
                                "user `{}` has {MAX_TOKENS_PER_USER} tokens already, the most; \
                                 delete one first",
                                t.user.escape_debug()
                            ),
                        },
                        AddRefused::StoreFull => TokenError::Full {
                            reason: format!(
                                "the store holds {MAX_TOKENS} tokens already, the most"
                            ),
                        },
                    }));
                }
                tx.execute(
                    &format!("INSERT INTO ferry_api_tokens ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
                    &[&id, &t.user, &t.name, &scope, &t.sha256.as_slice(), &created, &expires],
                )
                .await?;
                tx.commit().await?;
                Ok(None)
            })
            .await?;
        match outcome {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn select(
        &self,
        filter: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<ApiToken>, TokenError> {
        let rows = self
            .db
            .bounded(async {
                let conn = self.db.conn().await?;
                Ok(conn
                    .query(
                        &format!(
                            "SELECT {COLUMNS} FROM ferry_api_tokens {filter}
                             ORDER BY user_name, created, id"
                        ),
                        params,
                    )
                    .await?)
            })
            .await?;
        rows.iter().map(token_of).collect()
    }

    async fn delete(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, TokenError> {
        Ok(self
            .db
            .bounded(async {
                let conn = self.db.conn().await?;
                Ok(conn
                    .execute(&conn.prepare_cached(sql).await?, params)
                    .await?)
            })
            .await?)
    }
}

impl ApiTokens for PgTokens {
    fn add<'a>(&'a self, token: &'a ApiToken) -> BoxFuture<'a, Result<(), TokenError>> {
        Box::pin(self.insert(token, false))
    }

    fn get(&self, id: TokenId) -> BoxFuture<'_, Result<Option<ApiToken>, TokenError>> {
        Box::pin(async move {
            let id = i64::from(id.0);
            Ok(self
                .select("WHERE id = $1", &[&id])
                .await?
                .into_iter()
                .next())
        })
    }

    fn list<'a>(
        &'a self,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<ApiToken>, TokenError>> {
        Box::pin(async move {
            match user {
                Some(u) => self.select("WHERE user_name = $1", &[&u]).await,
                None => self.select("", &[]).await,
            }
        })
    }

    fn revoke(&self, id: TokenId) -> BoxFuture<'_, Result<(), TokenError>> {
        Box::pin(async move {
            let n = self
                .delete(
                    "DELETE FROM ferry_api_tokens WHERE id = $1",
                    &[&i64::from(id.0)],
                )
                .await?;
            if n == 0 {
                return Err(TokenError::NotFound(id));
            }
            Ok(())
        })
    }

    fn revoke_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<usize, TokenError>> {
        Box::pin(async move {
            let n = self
                .delete(
                    "DELETE FROM ferry_api_tokens WHERE user_name = $1",
                    &[&user],
                )
                .await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }
}

/// Opens a store on its own pool (another node, as far as the database can tell), the schema
/// brought up to date. For `ferry token ...` and tests; a server takes its store from
/// [`super::PgBackend::tokens`].
pub async fn open(cfg: &super::PgConfig) -> Result<PgTokens, PgError> {
    let db = Db::new(cfg)?;
    super::migrate(&db).await?;
    Ok(PgTokens::new(db))
}
