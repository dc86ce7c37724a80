//! Shared state in PostgreSQL: the [`UsageLedger`], [`NameLocks`], [`PenaltyStore`] and
//! [`PartialIndex`] of every node on one database, with the semantics of the in-memory
//! tables (`state::memory`, `server::penalty`).
//!
//! - A reservation is one transaction that locks its home's usage row (`SELECT ... FOR
//!   UPDATE`), sums the live reservations and inserts its own: reservations of one home take
//!   turns on every node, so together they never pass the quota. It runs in the database
//!   (the function `ferry_reserve`), so it costs one round trip.
//! - Reservations, count claims and name locks are leases: rows with an expiry on the
//!   database's clock. Every read ignores expired rows, so a node that died holds nothing
//!   past its lease; [`sweep`] deletes them for good.
//! - What `Drop` gives back (`release_soon`, `unlock_soon`, `abandon_count`) is sent at once
//!   without waiting for the answer. A name or count found held is looked at again for up
//!   to [`HELD_GRACE`], so a release queued by its holder's `Drop` an instant earlier is not
//!   mistaken for a live hold.
//! - A penalty is one row per source, changed by single statements, so offences spread over
//!   nodes add up.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Db, PenaltySettings, PgError, col};
use crate::domain::{BoxFuture, Footprint, Quota, Refused};
use crate::state::{
    CountClaim, Counting, NameLockId, NameLocks, PartialIndex, PartialRecord, PenaltyStore,
    ReservationId, StateError, Usage, UsageLedger,
};

/// How long a name lock or count claim found held is looked at again before it is
/// reported held (see the module's notes).
pub const HELD_GRACE: Duration = Duration::from_millis(150);

/// The longest lease or penalty handled; longer ones are as good as forever.
const MAX_SPAN: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The room reserved in the home `$1` by live reservations, as two bigints.
const RESERVED: &str = "SELECT LEAST(COALESCE(sum(held_bytes), 0), 9223372036854775807)::bigint,
                               LEAST(COALESCE(sum(held_files), 0), 9223372036854775807)::bigint
                        FROM ferry_reservations WHERE home = $1 AND expires > now()";

impl From<PgError> for StateError {
    fn from(e: PgError) -> StateError {
        StateError::Unavailable(e.to_string())
    }
}

impl From<tokio_postgres::Error> for StateError {
    fn from(e: tokio_postgres::Error) -> StateError {
        PgError::from(e).into()
    }
}

/// The SHA-256 of `parts`, each length-prefixed (so no two lists of parts share a digest):
/// the key of rows whose natural key may be longer than a B-tree entry holds.
fn digest(parts: &[&str]) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().to_vec()
}

/// `n` as the database keeps it: bigint, saturating.
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A bigint read back (never negative by the tables' checks; 0 if it were).
fn small(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A span in microseconds, at most [`MAX_SPAN`].
fn micros(d: Duration) -> i64 {
    big(u64::try_from(d.min(MAX_SPAN).as_micros()).unwrap_or(u64::MAX))
}

/// Runs `op` within the operation timeout: an error rather than a wait without end.
async fn within<T>(
    db: &Db,
    op: impl Future<Output = Result<T, StateError>>,
) -> Result<T, StateError> {
    let limit = db.config().operation_timeout();
    match tokio::time::timeout(limit, op).await {
        Ok(r) => r,
        Err(_) => Err(StateError::Unavailable(format!(
            "database unavailable: no answer within {limit:?}"
        ))),
    }
}

/// Sends `sql` with the id `id` and does not wait for the answer (for `Drop`). The future
/// is polled once here, so the statement is queued on a connection before the caller goes
/// on; the rest runs as a task. Without a runtime nothing is sent: the lease's expiry is the
/// backstop.
fn soon(db: &Db, sql: &'static str, id: i64) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let db = db.clone();
    let mut fut: BoxFuture<'static, ()> = Box::pin(async move {
        let done = within(&db, async {
            let c = db.conn().await?;
            c.execute(&c.prepare_cached(sql).await?, &[&id]).await?;
            Ok(())
        })
        .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "shared state: a release was not applied; its lease will expire");
        }
    });
    if fut
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_pending()
    {
        rt.spawn(fut);
    }
}

/// The second looks at a name or count found held (see [`HELD_GRACE`]).
struct Grace {
    deadline: tokio::time::Instant,
    pause: Duration,
}

impl Grace {
    fn new() -> Grace {
        Grace {
            deadline: tokio::time::Instant::now() + HELD_GRACE,
            pause: Duration::from_millis(5),
        }
    }

    /// Waits before the next look; false when the grace is over.
    async fn wait(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.pause.min(self.deadline - now)).await;
        self.pause *= 2;
        true
    }
}

/// Whether `more` fits `quota` beside `used` and `reserved` (as `state::memory` decides).
fn fits(
    used: Footprint,
    reserved: Footprint,
    quota: (Option<u64>, Option<u64>),
    more: Footprint,
) -> Result<(), StateError> {
    let over = |used: u64, reserved: u64, more: u64, q: Option<u64>| {
        q.is_some_and(|q| more > 0 && used.saturating_add(reserved).saturating_add(more) > q)
    };
    if over(used.bytes, reserved.bytes, more.bytes, quota.0) {
        return Err(StateError::Refused(Refused::Quota("byte quota")));
    }
    if over(used.files, reserved.files, more.files, quota.1) {
        return Err(StateError::Refused(Refused::Quota("file quota")));
    }
    Ok(())
}

fn footprint(row: &tokio_postgres::Row, at: usize) -> Result<Footprint, StateError> {
    Ok(Footprint {
        bytes: small(col(row, at)?),
        files: small(col(row, at + 1)?),
    })
}

/// The room reserved in `home` now.
async fn reserved_in(
    c: &impl deadpool_postgres::GenericClient,
    home: &str,
) -> Result<Footprint, StateError> {
    let row = c
        .query_one(&c.prepare_cached(RESERVED).await?, &[&home])
        .await?;
    footprint(&row, 0)
}

/// How long a node's word that it has sessions of a home lives unless renewed (every third
/// of it while the node has them). A recount of a home waits this long at most after another
/// node's last session of it ended, or after that node died.
pub const LIVE_HOME_LEASE: Duration = Duration::from_secs(90);

/// Records that `node` has sessions of `homes`, for [`LIVE_HOME_LEASE`] from now.
async fn mark_live(db: &Db, node: &str, homes: &[String]) -> Result<(), StateError> {
    within(db, async {
        let c = db.conn().await?;
        c.execute(
            &c.prepare_cached(
                "INSERT INTO ferry_live_homes (home, node, expires)
                 SELECT h, $2, now() + $3::bigint * interval '1 microsecond'
                 FROM unnest($1::text[]) AS h
                 ON CONFLICT (home, node) DO UPDATE SET expires = EXCLUDED.expires",
            )
            .await?,
            &[&homes, &node, &micros(LIVE_HOME_LEASE)],
        )
        .await?;
        Ok(())
    })
    .await
}

/// [`UsageLedger`] in the tables `ferry_usage` and `ferry_reservations`, and this node's live
/// homes in `ferry_live_homes` (see [`UsageLedger::join`]).
#[derive(Debug, Clone)]
pub struct PgLedger {
    db: Db,
    /// This node, as `ferry_live_homes` names it: random, new at each start.
    node: String,
    /// The homes this node has sessions of, and how many joins each has not left yet; the
    /// renewer keeps their leases alive.
    live: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    renewer: Arc<std::sync::OnceLock<tokio_util::task::AbortOnDropHandle<()>>>,
}

impl PgLedger {
    pub(crate) fn new(db: Db) -> PgLedger {
        PgLedger {
            db,
            node: crate::state::uploads::new_id(),
            live: Arc::default(),
            renewer: Arc::default(),
        }
    }

    fn live_homes(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
        // A poisoned lock still holds whole entries: every update is one insert or remove.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Renews the leases of this node's live homes every third of [`LIVE_HOME_LEASE`], in a
    /// task that lives as long as the last clone of this ledger.
    fn start_renewer(&self) {
        if self.renewer.get().is_some() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let (db, node) = (self.db.clone(), self.node.clone());
        let live = Arc::downgrade(&self.live);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(LIVE_HOME_LEASE / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(live) = live.upgrade() else { return };
                let homes: Vec<String> = live
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .keys()
                    .cloned()
                    .collect();
                drop(live);
                if homes.is_empty() {
                    continue;
                }
                if let Err(e) = mark_live(&db, &node, &homes).await {
                    tracing::warn!(error = %e, "shared state: live homes not renewed; a recount may run early");
                }
            }
        });
        let _ = self
            .renewer
            .set(tokio_util::task::AbortOnDropHandle::new(task));
    }

    async fn claim_once(&self, home: &str, ttl: Duration) -> Result<Counting, StateError> {
        let ttl = micros(ttl);
        within(&self.db, async {
            let c = &mut self.db.conn().await?;
            let tx = c.transaction().await?;
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO ferry_usage (home) VALUES ($1) ON CONFLICT (home) DO NOTHING",
                )
                .await?,
                &[&home],
            )
            .await?;
            let row = tx
                .query_one(
                    &tx.prepare_cached(
                        "SELECT counted, used_bytes, used_files,
                            claim IS NOT NULL AND claim_expires > now()
                     FROM ferry_usage WHERE home = $1 FOR UPDATE",
                    )
                    .await?,
                    &[&home],
                )
                .await?;
            let answer = if col::<bool>(&row, 0)? {
                let reserved = reserved_in(&tx, home).await?;
                Counting::Known(Usage {
                    used: footprint(&row, 1)?,
                    reserved,
                })
            } else if col::<bool>(&row, 3)? {
                Counting::Busy
            } else {
                let row = tx
                    .query_one(
                        &tx.prepare_cached(
                            "UPDATE ferry_usage SET claim = nextval('ferry_lease_ids'),
                                claim_expires = now() + $2::bigint * interval '1 microsecond'
                         WHERE home = $1 RETURNING claim",
                        )
                        .await?,
                        &[&home, &ttl],
                    )
                    .await?;
                Counting::Yours(CountClaim(small(col(&row, 0)?)))
            };
            tx.commit().await?;
            Ok(answer)
        })
        .await
    }

    /// Adds `added` and takes `removed` from a counted home's usage, saturating.
    const APPLY: &'static str = "UPDATE ferry_usage SET
            used_bytes = LEAST(GREATEST(used_bytes::numeric + ($2::bigint)::numeric - ($3::bigint)::numeric, 0), 9223372036854775807)::bigint,
            used_files = LEAST(GREATEST(used_files::numeric + ($4::bigint)::numeric - ($5::bigint)::numeric, 0), 9223372036854775807)::bigint
         WHERE home = $1 AND counted";
}

impl UsageLedger for PgLedger {
    fn usage(&self, home: &str) -> BoxFuture<'_, Result<Option<Usage>, StateError>> {
        let home = home.to_owned();
        Box::pin(async move {
            within(&self.db, async {
                let c = &mut self.db.conn().await?;
                let row = c
                    .query_opt(
                        &c.prepare_cached(
                            "SELECT used_bytes, used_files FROM ferry_usage
                         WHERE home = $1 AND counted",
                        )
                        .await?,
                        &[&home],
                    )
                    .await?;
                let Some(row) = row else { return Ok(None) };
                Ok(Some(Usage {
                    used: footprint(&row, 0)?,
                    reserved: reserved_in(&*c, &home).await?,
                }))
            })
            .await
        })
    }

    fn claim_count(
        &self,
        home: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Counting, StateError>> {
        let home = home.to_owned();
        Box::pin(async move {
            let mut grace = Grace::new();
            loop {
                let got = self.claim_once(&home, ttl).await?;
                if got != Counting::Busy || !grace.wait().await {
                    return Ok(got);
                }
            }
        })
    }

    fn set_counted(
        &self,
        claim: CountClaim,
        used: Footprint,
    ) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            let n = within(&self.db, async {
                let c = &mut self.db.conn().await?;
                Ok(c.execute(
                    &c.prepare_cached(
                        "UPDATE ferry_usage SET counted = true, used_bytes = $2, used_files = $3,
                            claim = NULL, claim_expires = NULL
                     WHERE claim = $1 AND claim_expires > now() AND NOT counted",
                    )
                    .await?,
                    &[&big(claim.0), &big(used.bytes), &big(used.files)],
                )
                .await?)
            })
            .await?;
            if n == 0 {
                return Err(StateError::LeaseGone);
            }
            Ok(())
        })
    }

    fn abandon_count(&self, claim: CountClaim) {
        soon(
            &self.db,
            "UPDATE ferry_usage SET claim = NULL, claim_expires = NULL WHERE claim = $1",
            big(claim.0),
        );
    }

    fn join(&self, home: &str) -> BoxFuture<'_, Result<(), StateError>> {
        let home = home.to_owned();
        Box::pin(async move {
            *self.live_homes().entry(home.clone()).or_default() += 1;
            self.start_renewer();
            mark_live(&self.db, &self.node, &[home]).await
        })
    }

    fn leave(&self, home: &str) {
        // The row is left to expire: removing it here could race a later join of the same
        // home on this node (two pooled connections keep no order), and a recount that waits
        // a lease more is harmless.
        let mut live = self.live_homes();
        if let Some(n) = live.get_mut(home) {
            *n -= 1;
            if *n == 0 {
                live.remove(home);
            }
        }
    }

    fn take_recount(&self, user: &str, home: &str) -> BoxFuture<'_, Result<bool, StateError>> {
        let (user, home) = (user.to_owned(), home.to_owned());
        Box::pin(async move {
            within(&self.db, async {
                let c = &mut self.db.conn().await?;
                let tx = c.transaction().await?;
                // The usage row first, as a count claim takes it: a node that joins the home
                // after the check below finds the count dropped when its claim gets the row.
                let counted = tx
                    .query_opt(
                        &tx.prepare_cached(
                            "SELECT counted FROM ferry_usage WHERE home = $1 FOR UPDATE",
                        )
                        .await?,
                        &[&home],
                    )
                    .await?;
                let idle = tx
                    .query_one(
                        &tx.prepare_cached(
                            "SELECT EXISTS (SELECT 1 FROM ferry_recount_requests
                                            WHERE user_name = $1),
                                    NOT EXISTS (SELECT 1 FROM ferry_live_homes
                                                WHERE home = $2 AND node <> $3
                                                  AND expires > now())
                                    AND NOT EXISTS (SELECT 1 FROM ferry_reservations
                                                    WHERE home = $2 AND expires > now())",
                        )
                        .await?,
                        &[&user, &home, &self.node],
                    )
                    .await?;
                let (asked, idle) = (col::<bool>(&idle, 0)?, col::<bool>(&idle, 1)?);
                if !asked || !idle {
                    // Not asked, or asked while another node may change the home: a later
                    // login, when the home is idle everywhere else, takes it.
                    tx.commit().await?;
                    return Ok(false);
                }
                tx.execute(
                    &tx.prepare_cached("DELETE FROM ferry_recount_requests WHERE user_name = $1")
                        .await?,
                    &[&user],
                )
                .await?;
                let dropped = matches!(counted, Some(ref row) if col::<bool>(row, 0)?);
                if dropped {
                    tx.execute(
                        &tx.prepare_cached(
                            "UPDATE ferry_usage SET counted = false, used_bytes = 0,
                                used_files = 0, claim = NULL, claim_expires = NULL
                             WHERE home = $1",
                        )
                        .await?,
                        &[&home],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(dropped)
            })
            .await
        })
    }

    fn forget(&self, home: &str) -> BoxFuture<'_, Result<(), StateError>> {
        let home = home.to_owned();
        Box::pin(async move {
            within(&self.db, async {
                let c = &mut self.db.conn().await?;
                c.execute(
                    &c.prepare_cached(
                        "UPDATE ferry_usage SET counted = false, used_bytes = 0, used_files = 0
                     WHERE home = $1",
                    )
                    .await?,
                    &[&home],
                )
                .await?;
                Ok(())
            })
            .await
        })
    }

    fn reserve(
        &self,
        home: &str,
        quota: Quota,
        file_size: u64,
        need: Footprint,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<ReservationId, StateError>> {
        let home = home.to_owned();
        Box::pin(async move {
            if let Some(max) = quota.max_file_size
                && file_size > max
            {
                return Err(StateError::Refused(Refused::TooLarge(max)));
            }
            let ttl = micros(ttl);
            // One round trip: the function `ferry_reserve` (migration 1) locks the home's
            // usage row, sums the live reservations, checks and inserts, in this statement's
            // transaction.
            let code: i64 = within(&self.db, async {
                let c = self.db.conn().await?;
                let row = c
                    .query_one(
                        &c.prepare_cached("SELECT ferry_reserve($1, $2, $3, $4, $5, $6)")
                            .await?,
                        &[
                            &home,
                            &quota.bytes.map(big),
                            &quota.files.map(big),
                            &big(need.bytes),
                            &big(need.files),
                            &ttl,
                        ],
                    )
                    .await?;
                Ok(col(&row, 0)?)
            })
            .await?;
            match code {
                -1 => Err(StateError::NotCounted),
                -2 => Err(StateError::Refused(Refused::Quota("byte quota"))),
                -3 => Err(StateError::Refused(Refused::Quota("file quota"))),
                id if id > 0 => Ok(ReservationId(small(id))),
                other => Err(StateError::Unavailable(format!(
                    "ferry_reserve answered {other}"
                ))),
            }
        })
    }

    fn grow(&self, id: ReservationId, more: Footprint) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            let id = big(id.0);
            within(&self.db, async {
                let c = &mut self.db.conn().await?;
                let tx = c.transaction().await?;
                let Some(lease) = tx
                    .query_opt(
                        &tx.prepare_cached("SELECT home, quota_bytes, quota_files FROM ferry_reservations
                         WHERE id = $1 AND expires > now()").await?,
                        &[&id],
                    )
                    .await?
                else {
                    return Err(StateError::LeaseGone);
                };
                let home: String = col(&lease, 0)?;
                let quota = (
                    col::<Option<i64>>(&lease, 1)?.map(small),
                    col::<Option<i64>>(&lease, 2)?.map(small),
                );
                let Some(row) = tx
                    .query_opt(
                        &tx.prepare_cached("SELECT used_bytes, used_files FROM ferry_usage
                         WHERE home = $1 AND counted FOR UPDATE").await?,
                        &[&home],
                    )
                    .await?
                else {
                    return Err(StateError::NotCounted);
                };
                let reserved = reserved_in(&tx, &home).await?;
                fits(footprint(&row, 0)?, reserved, quota, more)?;
                let n = tx
                    .execute(
                        &tx.prepare_cached("UPDATE ferry_reservations SET
                             held_bytes = LEAST(held_bytes::numeric + ($2::bigint)::numeric, 9223372036854775807)::bigint,
                             held_files = LEAST(held_files::numeric + ($3::bigint)::numeric, 9223372036854775807)::bigint
                         WHERE id = $1 AND expires > now()").await?,
                        &[&id, &big(more.bytes), &big(more.files)],
                    )
                    .await?;
                if n == 0 {
                    return Err(StateError::LeaseGone);
                }
                tx.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn renew(&self, id: ReservationId, ttl: Duration) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            let n = within(&self.db, async {
                let c = &mut self.db.conn().await?;
                Ok(c.execute(
                    &c.prepare_cached("UPDATE ferry_reservations SET expires = now() + $2::bigint * interval '1 microsecond'
                     WHERE id = $1 AND expires > now()").await?,
                    &[&big(id.0), &micros(ttl)],
                )
                .await?)
            })
            .await?;
            if n == 0 {
                return Err(StateError::LeaseGone);
            }
            Ok(())
        })
    }

    fn commit(
        &self,
        home: &str,
        id: ReservationId,
        added: Footprint,
        removed: Footprint,
    ) -> BoxFuture<'_, Result<(), StateError>> {
        let home = home.to_owned();
        Box::pin(async move {
            within(&self.db, async {
                let c = self.db.conn().await?;
                // The change happened: it is counted whether the lease lived or not. One
                // call (migration 5): the usage row is locked, the reservation goes, the
                // change is applied, all in the statement's transaction.
                c.execute(
                    &c.prepare_cached("SELECT ferry_commit($1, $2, $3, $4, $5, $6)")
                        .await?,
                    &[
                        &home,
                        &big(id.0),
                        &big(added.bytes),
                        &big(removed.bytes),
                        &big(added.files),
                        &big(removed.files),
                    ],
                )
                .await?;
                Ok(())
            })
            .await
        })
    }

    fn release(&self, id: ReservationId) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            within(&self.db, async {
                let c = &mut self.db.conn().await?;
                c.execute(
                    &c.prepare_cached("DELETE FROM ferry_reservations WHERE id = $1")
                        .await?,
                    &[&big(id.0)],
                )
                .await?;
                Ok(())
            })
            .await
        })
    }

    fn release_soon(&self, id: ReservationId) {
        soon(
            &self.db,
            "DELETE FROM ferry_reservations WHERE id = $1",
            big(id.0),
        );
    }

    fn adjust(
        &self,
        home: &str,
        added: Footprint,
        removed: Footprint,
    ) -> BoxFuture<'_, Result<(), StateError>> {
        let home = home.to_owned();
        Box::pin(async move {
            within(&self.db, async {
                let c = &mut self.db.conn().await?;
                c.execute(
                    &c.prepare_cached(Self::APPLY).await?,
                    &[
                        &home,
                        &big(added.bytes),
                        &big(removed.bytes),
                        &big(added.files),
                        &big(removed.files),
                    ],
                )
                .await?;
                Ok(())
            })
            .await
        })
    }
}

/// [`NameLocks`] in the table `ferry_name_locks`.
#[derive(Debug, Clone)]
pub struct PgNameLocks {
    db: Db,
}

impl PgNameLocks {
    pub(crate) fn new(db: Db) -> PgNameLocks {
        PgNameLocks { db }
    }
}

impl NameLocks for PgNameLocks {
    fn try_lock(
        &self,
        home: &str,
        name: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<NameLockId>, StateError>> {
        let (home, name) = (home.to_owned(), name.to_owned());
        Box::pin(async move {
            let ttl = micros(ttl);
            let lock_key = digest(&[&home, &name]);
            let mut grace = Grace::new();
            loop {
                let got = within(&self.db, async {
                    let c = &mut self.db.conn().await?;
                    // One statement: a new name is inserted, an expired lock taken over, a
                    // live one left alone (ON CONFLICT locks the row, so racers take turns).
                    let row = c
                        .query_opt(
                            &c.prepare_cached(
                                "INSERT INTO ferry_name_locks (lock_key, home, name, id, expires)
                             VALUES ($4, $1, $2, nextval('ferry_lease_ids'),
                                     now() + $3::bigint * interval '1 microsecond')
                             ON CONFLICT (lock_key) DO UPDATE
                                 SET id = EXCLUDED.id, expires = EXCLUDED.expires
                                 WHERE ferry_name_locks.expires <= now()
                             RETURNING id",
                            )
                            .await?,
                            &[&home, &name, &ttl, &lock_key],
                        )
                        .await?;
                    Ok(match row {
                        Some(r) => Some(NameLockId(small(col(&r, 0)?))),
                        None => None,
                    })
                })
                .await?;
                if got.is_some() || !grace.wait().await {
                    return Ok(got);
                }
            }
        })
    }

    fn renew(&self, id: NameLockId, ttl: Duration) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            let n = within(&self.db, async {
                let c = &mut self.db.conn().await?;
                Ok(c.execute(
                    &c.prepare_cached("UPDATE ferry_name_locks SET expires = now() + $2::bigint * interval '1 microsecond'
                     WHERE id = $1 AND expires > now()").await?,
                    &[&big(id.0), &micros(ttl)],
                )
                .await?)
            })
            .await?;
            if n == 0 {
                return Err(StateError::LeaseGone);
            }
            Ok(())
        })
    }

    fn unlock(&self, id: NameLockId) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            within(&self.db, async {
                let c = &mut self.db.conn().await?;
                c.execute(
                    &c.prepare_cached("DELETE FROM ferry_name_locks WHERE id = $1")
                        .await?,
                    &[&big(id.0)],
                )
                .await?;
                Ok(())
            })
            .await
        })
    }

    fn unlock_soon(&self, id: NameLockId) {
        soon(
            &self.db,
            "DELETE FROM ferry_name_locks WHERE id = $1",
            big(id.0),
        );
    }
}

/// [`PenaltyStore`] in the table `ferry_penalties`: one row per source, so every node adds
/// to and checks the same penalty.
#[derive(Debug, Clone)]
pub struct PgPenalties {
    db: Db,
    settings: PenaltySettings,
}

/// The penalty a source holds after an offence of `$2` µs, given its row: what is left
/// (nothing if expired) plus the offence, at most `$4` µs.
const PENALTY_AFTER: &str =
    "LEAST(GREATEST((EXTRACT(EPOCH FROM (expires - now())) * 1000000)::bigint, 0) + $2, $4)";

impl PgPenalties {
    pub(crate) fn new(db: Db, mut settings: PenaltySettings) -> PgPenalties {
        settings.ipv4_prefix = settings.ipv4_prefix.min(32);
        settings.ipv6_prefix = settings.ipv6_prefix.min(128);
        settings.max = settings.max.min(MAX_SPAN);
        settings.min_before_ban = settings.min_before_ban.min(MAX_SPAN);
        PgPenalties { db, settings }
    }

    /// The source `addr` counts as (`192.0.2.7/32`, `2001:db8:1:2::/64`), or `None` if it is
    /// exempt. IPv4-mapped IPv6 counts as IPv4.
    pub fn source(&self, addr: IpAddr) -> Option<String> {
        let addr = addr.to_canonical();
        if self.settings.exempt.iter().any(|n| n.contains(&addr)) {
            return None;
        }
        let prefix = match addr {
            IpAddr::V4(_) => self.settings.ipv4_prefix,
            IpAddr::V6(_) => self.settings.ipv6_prefix,
        };
        ipnet::IpNet::new(addr, prefix)
            .ok()
            .map(|n| n.trunc().to_string())
    }

    async fn add_once(&self, source: &str, amount: i64) -> Result<Option<bool>, StateError> {
        let (min, max) = (
            micros(self.settings.min_before_ban),
            micros(self.settings.max),
        );
        let cap = i64::try_from(self.settings.max_sources).unwrap_or(i64::MAX);
        within(&self.db, async {
                let c = &mut self.db.conn().await?;
            // A source already there (live or expired, not swept yet): one statement. In SET
            // the row's columns are the old values, so `just_banned` is the transition.
            let updated = c
                .query_opt(
                    &c.prepare_cached(&format!(
                        "UPDATE ferry_penalties SET
                             expires = now() + {PENALTY_AFTER} * interval '1 microsecond',
                             just_banned = NOT (expires > now() AND active) AND {PENALTY_AFTER} > $3,
                             active = (expires > now() AND active) OR {PENALTY_AFTER} > $3
                         WHERE source = $1
                         RETURNING just_banned"
                    )).await?,
                    &[&source, &amount, &min, &max],
                )
                .await?;
            if let Some(row) = updated {
                return Ok(Some(col(&row, 0)?));
            }
            // A new source, while the table has room for it.
            let inserted = c
                .query_opt(
                    &c.prepare_cached("INSERT INTO ferry_penalties (source, expires, active, just_banned)
                     SELECT $1, now() + $2::bigint * interval '1 microsecond', $2 > $3, $2 > $3
                     WHERE (SELECT count(*) FROM ferry_penalties WHERE expires > now()) < $4
                     ON CONFLICT (source) DO NOTHING
                     RETURNING just_banned").await?,
                    &[&source, &amount, &min, &cap],
                )
                .await?;
            if let Some(row) = inserted {
                return Ok(Some(col(&row, 0)?));
            }
            // Full (or another node inserted it just now: the caller tries again). Make room
            // by dropping the entry that expires soonest, if it expires before this one would:
            // a flood of fresh sources cannot push out long bans with short penalties.
            c.execute(
                &c.prepare_cached("DELETE FROM ferry_penalties WHERE source = (
                     SELECT source FROM ferry_penalties
                     WHERE expires < now() + $1::bigint * interval '1 microsecond'
                     ORDER BY expires LIMIT 1)").await?,
                &[&amount],
            )
            .await?;
            Ok(None)
        })
        .await
    }
}

impl PenaltyStore for PgPenalties {
    fn add(&self, addr: IpAddr, amount: Duration) -> BoxFuture<'_, Result<bool, StateError>> {
        let source = self.source(addr);
        let amount = micros(amount.min(self.settings.max));
        Box::pin(async move {
            let Some(source) = source else {
                return Ok(false);
            };
            if amount == 0 {
                return Ok(false);
            }
            for _ in 0..3 {
                if let Some(banned) = self.add_once(&source, amount).await? {
                    return Ok(banned);
                }
            }
            // Still no room: like the in-memory table, the newcomer is not tracked.
            Ok(false)
        })
    }

    fn refused_for(&self, addr: IpAddr) -> BoxFuture<'_, Result<Option<Duration>, StateError>> {
        let source = self.source(addr);
        Box::pin(async move {
            let Some(source) = source else {
                return Ok(None);
            };
            let row = within(&self.db, async {
                let c = &mut self.db.conn().await?;
                Ok(c.query_opt(
                    &c.prepare_cached(
                        "SELECT (EXTRACT(EPOCH FROM (expires - now())) * 1000000)::bigint
                     FROM ferry_penalties WHERE source = $1 AND active AND expires > now()",
                    )
                    .await?,
                    &[&source],
                )
                .await?)
            })
            .await?;
            Ok(match row {
                Some(r) => Some(Duration::from_micros(small(col(&r, 0)?))),
                None => None,
            })
        })
    }

    fn refused_sources(
        &self,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<(IpAddr, Duration)>, StateError>> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        Box::pin(async move {
            let rows = within(&self.db, async {
                let c = &mut self.db.conn().await?;
                Ok(c.query(
                    &c.prepare_cached(
                        "SELECT source, (EXTRACT(EPOCH FROM (expires - now())) * 1000000)::bigint
                     FROM ferry_penalties WHERE active AND expires > now()
                     ORDER BY expires DESC LIMIT $1",
                    )
                    .await?,
                    &[&limit],
                )
                .await?)
            })
            .await?;
            // Each source was written by `source` as a network; its first address stands
            // for it. A row that does not parse (written by hand) is skipped.
            Ok(rows
                .iter()
                .filter_map(|r| {
                    let source: &str = r.try_get(0).ok()?;
                    let net: ipnet::IpNet = source.parse().ok()?;
                    let left: i64 = r.try_get(1).ok()?;
                    Some((net.network(), Duration::from_micros(small(left))))
                })
                .collect())
        })
    }
}

/// The database's penalties with the node's own table behind them (the server's
/// in-memory one): every offence is recorded in both; a check asks the database for at most
/// `check_timeout` and refuses a source if either table refuses it. So a database that is
/// down or slow never holds up an accept (the local table answers), and a guesser this node
/// saw stays refused meanwhile. After the database failed or was slow, it is left alone for
/// [`FALLBACK_PAUSE`], so an outage costs each accept nothing. Never fails.
pub struct PenaltiesWithFallback {
    db: Arc<dyn PenaltyStore>,
    local: Arc<dyn PenaltyStore>,
    check_timeout: Duration,
    /// Until when the database is not asked (it failed or was slow just now).
    skip_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// How long [`PenaltiesWithFallback`] leaves a database that failed alone.
pub const FALLBACK_PAUSE: Duration = Duration::from_secs(5);

impl PenaltiesWithFallback {
    /// `db` first, `local` behind it, the database asked for at most `check_timeout`.
    pub fn new(
        db: Arc<dyn PenaltyStore>,
        local: Arc<dyn PenaltyStore>,
        check_timeout: Duration,
    ) -> PenaltiesWithFallback {
        PenaltiesWithFallback {
            db,
            local,
            check_timeout,
            skip_until: std::sync::Mutex::new(None),
        }
    }

    fn skip(&self) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
        self.skip_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the database is worth asking now.
    fn db_up(&self) -> bool {
        self.skip()
            .is_none_or(|until| tokio::time::Instant::now() >= until)
    }

    fn db_failed(&self, what: &str) {
        tracing::warn!(
            "penalties: the database {what}; this node's own table answers for {FALLBACK_PAUSE:?}"
        );
        *self.skip() = Some(tokio::time::Instant::now() + FALLBACK_PAUSE);
    }
}

impl PenaltyStore for PenaltiesWithFallback {
    fn add(&self, addr: IpAddr, amount: Duration) -> BoxFuture<'_, Result<bool, StateError>> {
        Box::pin(async move {
            let local = self.local.add(addr, amount).await.unwrap_or(false);
            if !self.db_up() {
                return Ok(local);
            }
            match tokio::time::timeout(self.check_timeout, self.db.add(addr, amount)).await {
                Ok(Ok(banned)) => Ok(banned),
                Ok(Err(_)) => {
                    self.db_failed("failed");
                    Ok(local)
                }
                Err(_) => {
                    self.db_failed("is slow");
                    Ok(local)
                }
            }
        })
    }

    fn refused_for(&self, addr: IpAddr) -> BoxFuture<'_, Result<Option<Duration>, StateError>> {
        Box::pin(async move {
            let local = self.local.refused_for(addr).await.unwrap_or(None);
            if !self.db_up() {
                return Ok(local);
            }
            let db = match tokio::time::timeout(self.check_timeout, self.db.refused_for(addr)).await
            {
                Ok(Ok(left)) => left,
                Ok(Err(_)) => {
                    self.db_failed("failed");
                    None
                }
                Err(_) => {
                    self.db_failed("is slow");
                    None
                }
            };
            Ok(db.max(local))
        })
    }

    fn refused_sources(
        &self,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<(IpAddr, Duration)>, StateError>> {
        Box::pin(async move {
            if self.db_up() {
                match tokio::time::timeout(self.check_timeout, self.db.refused_sources(max)).await {
                    Ok(Ok(refused)) => return Ok(refused),
                    Ok(Err(_)) => self.db_failed("failed"),
                    Err(_) => self.db_failed("is slow"),
                }
            }
            self.local.refused_sources(max).await
        })
    }
}

/// [`PartialIndex`] in the table `ferry_partials`.
#[derive(Debug, Clone)]
pub struct PgPartials {
    db: Db,
}

impl PgPartials {
    pub(crate) fn new(db: Db) -> PgPartials {
        PgPartials { db }
    }
}

/// `t` as (seconds, nanoseconds) since the epoch; times before it count as the epoch.
fn stamp(t: SystemTime) -> (i64, i32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (
        big(d.as_secs()),
        i32::try_from(d.subsec_nanos()).unwrap_or(0),
    )
}

fn record_of(row: &tokio_postgres::Row) -> Result<PartialRecord, StateError> {
    let secs: i64 = col(row, 4)?;
    let nanos: i32 = col(row, 5)?;
    Ok(PartialRecord {
        home: col(row, 0)?,
        path: col(row, 1)?,
        len: small(col(row, 2)?),
        handle: col(row, 3)?,
        kept_at: UNIX_EPOCH + Duration::new(small(secs), u32::try_from(nanos).unwrap_or(0)),
    })
}

const PARTIAL: &str = "home, path, len, handle, kept_secs, kept_nanos";

impl PartialIndex for PgPartials {
    fn put(
        &self,
        key: &str,
        record: PartialRecord,
    ) -> BoxFuture<'_, Result<Option<PartialRecord>, StateError>> {
        let key = key.to_owned();
        Box::pin(async move {
            let (secs, nanos) = stamp(record.kept_at);
            let key_digest = digest(&[&key]);
            within(&self.db, async {
                let c = &mut self.db.conn().await?;
                // The old record is locked, then replaced; where there was none, an insert
                // that finds one after all (another node's, just now) looks again.
                for _ in 0..3 {
                    let tx = c.transaction().await?;
                    let old = tx
                        .query_opt(
                            &tx.prepare_cached(&format!(
                                "SELECT {PARTIAL} FROM ferry_partials WHERE key_digest = $1 \
                                 FOR UPDATE"
                            ))
                            .await?,
                            &[&key_digest],
                        )
                        .await?;
                    let n = tx
                        .execute(
                            &tx.prepare_cached(&format!(
                                "INSERT INTO ferry_partials (key, {PARTIAL}, key_digest)
                                 VALUES ($1, $2, $3, $4, $5, $6, $7, $9)
                                 ON CONFLICT (key_digest) DO UPDATE SET
                                     home = EXCLUDED.home, path = EXCLUDED.path,
                                     len = EXCLUDED.len, handle = EXCLUDED.handle,
                                     kept_secs = EXCLUDED.kept_secs,
                                     kept_nanos = EXCLUDED.kept_nanos
                                 WHERE $8"
                            ))
                            .await?,
                            &[
                                &key,
                                &record.home,
                                &record.path,
                                &big(record.len),
                                &record.handle,
                                &secs,
                                &nanos,
                                &old.is_some(),
                                &key_digest,
                            ],
                        )
                        .await?;
                    if n == 1 {
                        tx.commit().await?;
                        return old.as_ref().map(record_of).transpose();
                    }
                    tx.rollback().await?;
                }
                Err(StateError::Unavailable(
                    "partials: the key kept changing under this put".into(),
                ))
            })
            .await
        })
    }

    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<PartialRecord>, StateError>> {
        let key = key.to_owned();
        Box::pin(async move {
            within(&self.db, async {
                let c = &mut self.db.conn().await?;
                let row = c
                    .query_opt(
                        &c.prepare_cached(&format!(
                            "SELECT {PARTIAL} FROM ferry_partials WHERE key_digest = $1"
                        ))
                        .await?,
                        &[&digest(&[&key])],
                    )
                    .await?;
                row.as_ref().map(record_of).transpose()
            })
            .await
        })
    }

    fn take(&self, key: &str) -> BoxFuture<'_, Result<Option<PartialRecord>, StateError>> {
        let key = key.to_owned();
        Box::pin(async move {
            within(&self.db, async {
                let c = &mut self.db.conn().await?;
                // DELETE ... RETURNING: of racing takers, exactly one gets the row.
                let row = c
                    .query_opt(
                        &c.prepare_cached(&format!(
                            "DELETE FROM ferry_partials WHERE key_digest = $1 RETURNING {PARTIAL}"
                        ))
                        .await?,
                        &[&digest(&[&key])],
                    )
                    .await?;
                row.as_ref().map(record_of).transpose()
            })
            .await
        })
    }

    fn kept_before(
        &self,
        home: &str,
        before: SystemTime,
    ) -> BoxFuture<'_, Result<Vec<(String, PartialRecord)>, StateError>> {
        let home = home.to_owned();
        Box::pin(async move {
            let (secs, nanos) = stamp(before);
            within(&self.db, async {
                let c = &mut self.db.conn().await?;
                let rows = c
                    .query(
                        &c.prepare_cached(&format!(
                            "SELECT {PARTIAL}, key FROM ferry_partials
                             WHERE home = $1 AND (kept_secs, kept_nanos) < ($2, $3)
                             ORDER BY key"
                        ))
                        .await?,
                        &[&home, &secs, &nanos],
                    )
                    .await?;
                rows.iter()
                    .map(|r| Ok((col::<String>(r, 6)?, record_of(r)?)))
                    .collect()
            })
            .await
        })
    }
}

/// Deletes every expired lease, claim and penalty; returns how many rows went.
/// Records that `user`'s home is to be counted again (see [`UsageLedger::take_recount`]);
/// false if there is no such user.
pub(crate) async fn request_recount(db: &Db, user: &str) -> Result<bool, PgError> {
    db.bounded(async {
        let c = db.conn().await?;
        let n = c
            .execute(
                &c.prepare_cached(
                    "INSERT INTO ferry_recount_requests (user_name)
                     SELECT name FROM ferry_users WHERE name = $1
                     ON CONFLICT (user_name) DO UPDATE SET requested_at = now()",
                )
                .await?,
                &[&user],
            )
            .await?;
        Ok(n == 1)
    })
    .await
}

pub(crate) async fn sweep(db: &Db) -> Result<u64, PgError> {
    db.bounded(async {
        let conn = db.conn().await?;
        let mut n = 0;
        for sql in [
            "DELETE FROM ferry_reservations WHERE expires <= now()",
            "DELETE FROM ferry_name_locks WHERE expires <= now()",
            "DELETE FROM ferry_penalties WHERE expires <= now()",
            "UPDATE ferry_usage SET claim = NULL, claim_expires = NULL WHERE claim_expires <= now()",
            "DELETE FROM ferry_live_homes WHERE expires <= now()",
        ] {
            n += conn.execute(&conn.prepare_cached(sql).await?, &[]).await?;
        }
        Ok(n)
    })
    .await
}
