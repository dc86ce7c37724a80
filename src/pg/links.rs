//! [`LinkStore`] in the tables `ferry_links` and `ferry_link_uses`, shared by every node: a
//! link made through one node opens at once through every other, a revoked one is refused by
//! every node at its next request, and a link's counters are counted once across nodes.
//!
//! How each counter stays exact with uploads and downloads racing through several nodes:
//!
//! - Files and bytes: a reservation ([`LinkStore::reserve_use`]) is one transaction that
//!   locks the link's row (`SELECT ... FOR UPDATE`), sums the live reservations of that link
//!   (rows of `ferry_link_uses` with the link's id and token hash whose lease has not ended
//!   on the database's clock) and inserts its own only if committed plus reserved plus this
//!   one stay within `max_files` and `max_bytes`. Reservations of one link take turns on
//!   every node, and each statement after the lock sees every reservation committed before
//!   it, so two nodes never both take the last slot. A commit locks the reservation and the
//!   link, and counts with one `UPDATE` whose `WHERE` checks the limits again, in the same
//!   transaction that ends the reservation: a reservation is counted once, and the counters
//!   can never pass their limits even if a reservation was lost.
//! - Downloads: one `UPDATE ... SET used_downloads = used_downloads + 1 WHERE ... AND
//!   used_downloads < max_downloads RETURNING`: the row lock makes racing counts take turns,
//!   and the check is in the statement that counts.
//! - The tables' `CHECK`s refuse any counter above its limit, a last line should a statement
//!   ever be wrong.
//!
//! Expiry of links and leases is judged on the database's clock, so nodes whose clocks
//! differ agree. Only the SHA-256 of a link's token is kept, as `links.toml` keeps it;
//! [`LinkStore::by_token`] (the trait's own) compares it in constant time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::{Row, Transaction};

use super::tokens::{secs, time};
use super::{AddRefused, Db, PgError, check_add, col};
use crate::domain::BoxFuture;
use crate::state::links::{
    Link, LinkError, LinkId, LinkKind, LinkRefused, LinkStore, LinkUseId, MAX_LINKS,
    MAX_LINKS_PER_OWNER, MAX_USES_IN_FLIGHT, MAX_USES_PER_LINK, validate_link,
};
use crate::users;

/// The advisory lock that serialises adds of links across nodes ("flnk" in ASCII).
const ADD_LOCK: i64 = 0x666c_6e6b;

/// The longest lease handled; longer ones are as good as forever.
const MAX_LEASE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The columns read, in the order [`link_of`] takes them.
const COLUMNS: &str = "id, token_sha256, owner, folder, kind, created, expires, max_files, \
                       max_bytes, max_downloads, used_files, used_bytes, used_downloads, \
                       password, note";

/// The database's clock, as seconds since the epoch with a fraction.
const NOW: &str = "extract(epoch FROM now())::float8";

/// Links in PostgreSQL. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PgLinks {
    db: Db,
}

impl From<PgError> for LinkError {
    fn from(e: PgError) -> LinkError {
        LinkError::backend(format!("links: {e}"))
    }
}

impl From<PgError> for LinkRefused {
    fn from(e: PgError) -> LinkRefused {
        LinkRefused::Unavailable(format!("links: {e}"))
    }
}

/// `n` as the database keeps it: bigint, saturating.
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A lease in microseconds, at most [`MAX_LEASE`].
fn micros(d: Duration) -> i64 {
    big(u64::try_from(d.min(MAX_LEASE).as_micros()).unwrap_or(u64::MAX))
}

/// The database's clock as a time.
fn db_time(epoch: f64) -> SystemTime {
    if epoch.is_finite() && epoch > 0.0 {
        UNIX_EPOCH + Duration::from_secs_f64(epoch.min(1e12))
    } else {
        UNIX_EPOCH
    }
}

fn link_of(row: &Row) -> Result<Link, LinkError> {
    let bad = |what: &str| LinkError::backend(format!("links: {what}"));
    let count = |i: usize| -> Result<Option<u64>, LinkError> {
        let n: Option<i64> = col(row, i)?;
        n.map(|n| u64::try_from(n).map_err(|_| bad("a negative number")))
            .transpose()
    };
    let used = |i: usize| -> Result<u64, LinkError> { Ok(count(i)?.unwrap_or(0)) };
    let id: i64 = col(row, 0)?;
    let hash: Vec<u8> = col(row, 1)?;
    let kind: String = col(row, 4)?;
    let expires: Option<i64> = col(row, 6)?;
    Ok(Link {
        id: LinkId(u32::try_from(id).map_err(|_| bad("an id out of range"))?),
        token_sha256: <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| bad("a broken hash"))?,
        owner: col(row, 2)?,
        folder: col(row, 3)?,
        kind: kind.parse()?,
        created: time(col(row, 5)?),
        expires: expires.map(time),
        max_files: count(7)?,
        max_bytes: count(8)?,
        max_downloads: count(9)?,
        used_files: used(10)?,
        used_bytes: used(11)?,
        used_downloads: used(12)?,
        password: col(row, 13)?,
        note: col(row, 14)?,
    })
}

/// What a reservation or commit decided: a refusal to answer after the transaction ended
/// (committed or not, as the step says), or the value.
type Decided<T> = Result<T, LinkRefused>;

impl PgLinks {
    pub(crate) fn new(db: Db) -> PgLinks {
        PgLinks { db }
    }

    /// Adds `l` only if its owner is an account in this database (`ferry link add
    /// --accounts`): the account's row is locked (`FOR SHARE`) until the link is in, so a
    /// `ferry user del` that runs at the same moment either deletes the account first (and
    /// this add is refused) or waits, and then its revocation of the user's links sees this
    /// one. A link never outlives its user's deletion.
    pub async fn add_for_existing_user(&self, l: &Link) -> Result<(), LinkError> {
        self.insert(l, true).await
    }

    async fn insert(&self, l: &Link, require_user: bool) -> Result<(), LinkError> {
        users::validate_name(&l.owner)
            .map_err(|e| LinkError::invalid(format!("link {}: {e}", l.id)))?;
        if let Some(p) = &l.password {
            users::check_hash(p)
                .map_err(|e| LinkError::invalid(format!("link {}: password: {e}", l.id)))?;
        }
        validate_link(l)?;
        let id = i64::from(l.id.0);
        let created = secs(l.created);
        let expires = l.expires.map(secs);
        let opt = |n: Option<u64>| n.map(big);
        let outcome = self
            .db
            .bounded(async {
                let mut conn = self.db.conn().await?;
                let tx = conn.transaction().await?;
                let refused = check_add(
                    &tx,
                    ADD_LOCK,
                    ("ferry_links", "owner"),
                    id,
                    &l.owner,
                    created,
                    require_user,
                    (MAX_LINKS_PER_OWNER, MAX_LINKS),
                )
                .await?;
                if let Some(why) = refused {
                    return Ok(Some(match why {
                        AddRefused::NoUser => LinkError::invalid(format!(
                            "no user `{}` in the accounts database",
                            l.owner.escape_debug()
                        )),
                        AddRefused::Taken => LinkError::AlreadyExists(l.id),
                        AddRefused::OwnerFull => LinkError::Full {
                            reason: format!(
                                "user `{}` has {MAX_LINKS_PER_OWNER} links already, the most; \
                                 delete one first",
                                l.owner.escape_debug()
                            ),
                        },
                        AddRefused::StoreFull => LinkError::Full {
                            reason: format!("the store holds {MAX_LINKS} links already, the most"),
                        },
                    }));
                }
                let inserted = tx
                    .execute(
                        &tx.prepare_cached(&format!(
                            "INSERT INTO ferry_links ({COLUMNS}) VALUES
                             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
                        ))
                        .await?,
                        &[
                            &id,
                            &l.token_sha256.as_slice(),
                            &l.owner,
                            &l.folder,
                            &l.kind.as_str(),
                            &created,
                            &expires,
                            &opt(l.max_files),
                            &opt(l.max_bytes),
                            &opt(l.max_downloads),
                            &big(l.used_files),
                            &big(l.used_bytes),
                            &big(l.used_downloads),
                            &l.password,
                            &l.note,
                        ],
                    )
                    .await;
                match inserted {
                    Ok(_) => {}
                    // A counter above its limit: refused like any other bad record.
                    Err(e)
                        if e.code() == Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION) =>
                    {
                        return Ok(Some(LinkError::invalid(format!(
                            "link {}: a counter is above its limit",
                            l.id
                        ))));
                    }
                    Err(e) => return Err(e.into()),
                }
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
    ) -> Result<Vec<Link>, LinkError> {
        let rows = self
            .db
            .bounded(async {
                let conn = self.db.conn().await?;
                Ok(conn
                    .query(
                        &conn
                            .prepare_cached(&format!(
                                "SELECT {COLUMNS} FROM ferry_links {filter}
                             ORDER BY owner, created, id"
                            ))
                            .await?,
                        params,
                    )
                    .await?)
            })
            .await?;
        rows.iter().map(link_of).collect()
    }

    /// The link `id` locked for the rest of `tx`, and the database's clock.
    async fn locked(
        tx: &Transaction<'_>,
        id: LinkId,
    ) -> Result<(Option<Link>, SystemTime), PgError> {
        let row = tx
            .query_opt(
                &format!("SELECT {COLUMNS}, {NOW} FROM ferry_links WHERE id = $1 FOR UPDATE"),
                &[&i64::from(id.0)],
            )
            .await?;
        let now = match &row {
            Some(r) => db_time(col(r, 15)?),
            None => db_time(col(&tx.query_one(&format!("SELECT {NOW}"), &[]).await?, 0)?),
        };
        let link = match row {
            Some(r) => Some(link_of(&r).map_err(|e| PgError::Query(e.to_string()))?),
            None => None,
        };
        Ok((link, now))
    }

    async fn reserve(&self, id: LinkId, bytes: u64, ttl: Duration) -> Decided<LinkUseId> {
        self.db
            .bounded(async {
                let mut conn = self.db.conn().await?;
                let tx = conn.transaction().await?;
                let (link, now) = Self::locked(&tx, id).await?;
                let Some(link) = link else {
                    return Ok(Err(LinkRefused::Gone));
                };
                if let Some(why) = link.refusal(LinkKind::Upload, now) {
                    return Ok(Err(why));
                }
                let all = tx
                    .query_one(
                        &tx.prepare_cached("SELECT count(*) FROM ferry_link_uses WHERE expires > now()").await?,
                        &[],
                    )
                    .await?;
                if col::<i64>(&all, 0)? >= MAX_USES_IN_FLIGHT as i64 {
                    return Ok(Err(LinkRefused::Busy));
                }
                let mine = tx
                    .query_one(
                        &tx.prepare_cached("SELECT count(*),
                                LEAST(COALESCE(sum(bytes), 0), 9223372036854775807)::bigint
                         FROM ferry_link_uses
                         WHERE link_id = $1 AND token_sha256 = $2 AND expires > now()").await?,
                        &[&i64::from(id.0), &link.token_sha256.as_slice()],
                    )
                    .await?;
                let files: i64 = col(&mine, 0)?;
                let reserved: i64 = col(&mine, 1)?;
                let (files, reserved) = (files.max(0) as u64, reserved.max(0) as u64);
                if files >= MAX_USES_PER_LINK as u64 {
                    return Ok(Err(LinkRefused::Busy));
                }
                let files_after = link.used_files.saturating_add(files).saturating_add(1);
                if link.max_files.is_some_and(|m| files_after > m) {
                    return Ok(Err(LinkRefused::Files));
                }
                let bytes_after = link
                    .used_bytes
                    .saturating_add(reserved)
                    .saturating_add(bytes);
                if link.max_bytes.is_some_and(|m| bytes_after > m) {
                    return Ok(Err(LinkRefused::Bytes));
                }
                let row = tx
                    .query_one(
                        &tx.prepare_cached("INSERT INTO ferry_link_uses (id, link_id, token_sha256, bytes, expires)
                         VALUES (nextval('ferry_lease_ids'), $1, $2, $3,
                                 now() + $4::bigint * interval '1 microsecond')
                         RETURNING id").await?,
                        &[
                            &i64::from(id.0),
                            &link.token_sha256.as_slice(),
                            &big(bytes),
                            &micros(ttl),
                        ],
                    )
                    .await?;
                // Leases that ended (of any link, revoked ones too) are swept by each
                // reservation, a bounded batch at a time. Rows a commit holds are skipped: a
                // commit locks its use and then the link, which this transaction holds, so
                // waiting for one could deadlock.
                tx.execute(
                    &tx.prepare_cached("DELETE FROM ferry_link_uses WHERE id IN
                         (SELECT id FROM ferry_link_uses WHERE expires <= now()
                          LIMIT 256 FOR UPDATE SKIP LOCKED)").await?,
                    &[],
                )
                .await?;
                let use_id: i64 = col(&row, 0)?;
                tx.commit().await?;
                Ok(Ok(LinkUseId(use_id.max(0) as u64)))
            })
            .await?
    }

    async fn commit(&self, use_id: LinkUseId, bytes: u64) -> Decided<()> {
        let Ok(uid) = i64::try_from(use_id.0) else {
            return Err(LinkRefused::LeaseGone);
        };
        self.db
            .bounded(async {
                let mut conn = self.db.conn().await?;
                let tx = conn.transaction().await?;
                let Some(held) = tx
                    .query_opt(
                        &tx.prepare_cached(
                            "SELECT link_id, token_sha256, bytes FROM ferry_link_uses
                         WHERE id = $1 AND expires > now() FOR UPDATE",
                        )
                        .await?,
                        &[&uid],
                    )
                    .await?
                else {
                    return Ok(Err(LinkRefused::LeaseGone));
                };
                let link_id: i64 = col(&held, 0)?;
                let hash: Vec<u8> = col(&held, 1)?;
                let held_bytes: i64 = col(&held, 2)?;
                if bytes > held_bytes.max(0) as u64 {
                    // The reservation is kept: the honest commit may still land.
                    return Ok(Err(LinkRefused::OverReserved));
                }
                let id = LinkId(u32::try_from(link_id).unwrap_or(0));
                let (link, now) = Self::locked(&tx, id).await?;
                // From here on the reservation ends whatever is decided.
                tx.execute(
                    &tx.prepare_cached("DELETE FROM ferry_link_uses WHERE id = $1")
                        .await?,
                    &[&uid],
                )
                .await?;
                let decided = match link {
                    Some(l)
                        if subtle::ConstantTimeEq::ct_eq(&l.token_sha256[..], &hash[..]).into() =>
                    {
                        match l.refusal(LinkKind::Upload, now) {
                            Some(why) => Err(why),
                            None => {
                                // The limits checked again in the statement that counts.
                                let counted = tx
                                    .execute(
                                        &tx.prepare_cached(
                                            "UPDATE ferry_links
                                         SET used_files = LEAST(used_files::numeric + 1,
                                                                9223372036854775807)::bigint,
                                             used_bytes = LEAST(used_bytes::numeric + $2::bigint,
                                                                9223372036854775807)::bigint
                                         WHERE id = $1 AND kind = 'upload'
                                           AND (max_files IS NULL OR used_files < max_files)
                                           AND (max_bytes IS NULL
                                                OR used_bytes::numeric + $2::bigint <= max_bytes)",
                                        )
                                        .await?,
                                        &[&link_id, &big(bytes)],
                                    )
                                    .await?;
                                if counted == 1 {
                                    Ok(())
                                } else if l.max_files.is_some_and(|m| l.used_files >= m) {
                                    Err(LinkRefused::Files)
                                } else {
                                    Err(LinkRefused::Bytes)
                                }
                            }
                        }
                    }
                    _ => Err(LinkRefused::Gone),
                };
                tx.commit().await?;
                Ok(decided)
            })
            .await?
    }

    async fn count(&self, id: LinkId) -> Result<bool, LinkError> {
        let id64 = i64::from(id.0);
        let (counted, kind) = self
            .db
            .bounded(async {
                let conn = self.db.conn().await?;
                let n = conn
                    .execute(
                        &conn
                            .prepare_cached(&format!(
                                "UPDATE ferry_links
                             SET used_downloads = LEAST(used_downloads::numeric + 1,
                                                        9223372036854775807)::bigint
                             WHERE id = $1 AND kind IN ('download', 'download-folder')
                               AND (expires IS NULL OR expires > {NOW})
                               AND (max_downloads IS NULL OR used_downloads < max_downloads)"
                            ))
                            .await?,
                        &[&id64],
                    )
                    .await?;
                if n == 1 {
                    return Ok((true, None));
                }
                let kind = conn
                    .query_opt(
                        &conn
                            .prepare_cached("SELECT kind FROM ferry_links WHERE id = $1")
                            .await?,
                        &[&id64],
                    )
                    .await?
                    .map(|r| col::<String>(&r, 0))
                    .transpose()?;
                Ok((false, Some(kind)))
            })
            .await?;
        match kind {
            None => Ok(counted),
            Some(None) => Err(LinkError::NotFound(id)),
            Some(Some(k)) => {
                let kind: LinkKind = k.parse()?;
                if kind.is_download() {
                    Ok(false)
                } else {
                    Err(LinkError::invalid(format!(
                        "link {id} is not a download link"
                    )))
                }
            }
        }
    }

    /// Deletes the links `filter` picks; how many went. Their uses stay until they end (a
    /// commit answers [`LinkRefused::Gone`]); a link made again under the id never counts
    /// them, as they name the old token's hash.
    async fn delete(
        &self,
        filter: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, PgError> {
        self.db
            .bounded(async {
                let conn = self.db.conn().await?;
                let row = conn
                    .query_one(
                        &conn
                            .prepare_cached(&format!(
                                "WITH gone AS (DELETE FROM ferry_links WHERE {filter} RETURNING id)
                             SELECT count(*) FROM gone"
                            ))
                            .await?,
                        params,
                    )
                    .await?;
                Ok(col::<i64>(&row, 0)?.max(0) as u64)
            })
            .await
    }

    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, PgError> {
        self.db
            .bounded(async {
                let conn = self.db.conn().await?;
                Ok(conn
                    .execute(&conn.prepare_cached(sql).await?, params)
                    .await?)
            })
            .await
    }
}

impl LinkStore for PgLinks {
    fn add<'a>(&'a self, link: &'a Link) -> BoxFuture<'a, Result<(), LinkError>> {
        Box::pin(self.insert(link, false))
    }

    fn get(&self, id: LinkId) -> BoxFuture<'_, Result<Option<Link>, LinkError>> {
        Box::pin(async move {
            let id = i64::from(id.0);
            Ok(self
                .select("WHERE id = $1", &[&id])
                .await?
                .into_iter()
                .next())
        })
    }

    fn list<'a>(&'a self, owner: Option<&'a str>) -> BoxFuture<'a, Result<Vec<Link>, LinkError>> {
        Box::pin(async move {
            match owner {
                Some(o) => self.select("WHERE owner = $1", &[&o]).await,
                None => self.select("", &[]).await,
            }
        })
    }

    fn revoke(&self, id: LinkId) -> BoxFuture<'_, Result<(), LinkError>> {
        Box::pin(async move {
            let n = self.delete("id = $1", &[&i64::from(id.0)]).await?;
            if n == 0 {
                return Err(LinkError::NotFound(id));
            }
            Ok(())
        })
    }

    fn revoke_user<'a>(&'a self, owner: &'a str) -> BoxFuture<'a, Result<usize, LinkError>> {
        Box::pin(async move {
            let n = self.delete("owner = $1", &[&owner]).await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
    }

    fn reserve_use(
        &self,
        id: LinkId,
        bytes: u64,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<LinkUseId, LinkRefused>> {
        Box::pin(self.reserve(id, bytes, ttl))
    }

    fn renew_use(
        &self,
        use_id: LinkUseId,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), LinkRefused>> {
        Box::pin(async move {
            let Ok(uid) = i64::try_from(use_id.0) else {
                return Err(LinkRefused::LeaseGone);
            };
            let n = self
                .execute(
                    "UPDATE ferry_link_uses SET expires = now() + $2::bigint * interval '1 microsecond'
                     WHERE id = $1 AND expires > now()",
                    &[&uid, &micros(ttl)],
                )
                .await?;
            if n == 0 {
                return Err(LinkRefused::LeaseGone);
            }
            Ok(())
        })
    }

    fn commit_use(&self, use_id: LinkUseId, bytes: u64) -> BoxFuture<'_, Result<(), LinkRefused>> {
        Box::pin(self.commit(use_id, bytes))
    }

    fn release_use(&self, use_id: LinkUseId) -> BoxFuture<'_, Result<(), LinkError>> {
        Box::pin(async move {
            let Ok(uid) = i64::try_from(use_id.0) else {
                return Ok(());
            };
            self.execute("DELETE FROM ferry_link_uses WHERE id = $1", &[&uid])
                .await?;
            Ok(())
        })
    }

    fn release_use_soon(&self, use_id: LinkUseId) {
        // Sent from a task of its own; with no runtime the lease's expiry gives it back.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let this = self.clone();
            drop(rt.spawn(async move {
                if let Err(e) = this.release_use(use_id).await {
                    tracing::warn!(error = %e, "links: a use not released; its lease will end");
                }
            }));
        }
    }

    fn count_download(&self, id: LinkId) -> BoxFuture<'_, Result<bool, LinkError>> {
        Box::pin(self.count(id))
    }
}

/// Opens a store on its own pool (another node, as far as the database can tell), the schema
/// brought up to date. For `ferry link ...` and tests; a server takes its store from
/// [`super::PgBackend::links`].
pub async fn open(cfg: &super::PgConfig) -> Result<PgLinks, PgError> {
    let db = Db::new(cfg)?;
    super::migrate(&db).await?;
    Ok(PgLinks::new(db))
}
