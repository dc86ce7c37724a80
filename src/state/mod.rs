//! Shared state: what several ferry servers side by side must agree on, behind traits, so
//! that the in-process tables of one server and a database shared by many are two
//! implementations of one contract (issue 13; the PostgreSQL one is issue 15).
//!
//! - [`UsageLedger`]: each home's usage and the room reserved for changes in flight, so that
//!   uploads running at once, on one node or several, never together pass a quota.
//! - [`NameLocks`]: a name in a home held by one upload until its commit, so "never replace"
//!   holds even on stores that cannot refuse a replacing write themselves.
//! - [`PenaltyStore`]: the penalty of each source address, so a source guessing passwords is
//!   refused by every node.
//! - [`PartialIndex`]: uploads kept for resuming, findable from any node.
//! - [`tokens::ApiTokens`]: API tokens for curl and scripts, kept as hashes, and their
//!   [`tokens::check`].
//! - [`links::LinkStore`]: drop links, kept as hashes, with uses counted under leases
//!   ([`links::LinkUse`]) so no race of uploads passes a link's limits.
//! - [`digests::DigestIndex`]: committed objects' SHA-256 by key and ETag, for stores that
//!   cannot keep it with the object (the `s3` storage).
//! - [`uploads::UploadSessions`]: resumable HTTP uploads (tus), each a leased record of its
//!   owner, target, size, declared digest and kept partial.
//!
//! Everything held on behalf of a request is a lease with a time to live: a node that dies
//! holding room or a name cannot hold it forever, because the lease expires unless its
//! holder renews it. The values [`Reservation`] and [`NameLock`] renew when their holder
//! reports progress ([`Reservation::renew_if_due`]) and at the last check before a commit,
//! and give back what they hold when released ([`Reservation::release`], confirmed) or
//! dropped (queued: a remote backend may apply it a moment later; the expiry is the
//! backstop). Nothing here blocks in `Drop`.
//!
//! Cancellation: a backend may do its work when a method is called rather than when the
//! returned future is polled (the in-memory one does). A caller that drops such a future
//! unpolled must assume the work may have happened: a dropped `reserve` may hold room until
//! its lease expires.
//!
//! [`memory`] holds the implementations one server uses on its own.

pub mod digests;
pub mod links;
pub mod memory;
pub mod sessions;
pub mod table;
pub mod tokens;
pub mod uploads;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::domain::{BoxFuture, Footprint, Quota, Refused};

/// A reservation of room in a home (a lease of the [`UsageLedger`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReservationId(pub u64);

/// The right to count a home (a lease of the [`UsageLedger`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CountClaim(pub u64);

/// A name held in a home (a lease of the [`NameLocks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NameLockId(pub u64);

/// How long a lease lives unless renewed, when its holder gives no other figure. Holders
/// renew after a third of it, so one slow moment never loses a lease.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// What a state backend can answer instead of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The change does not fit the account's limits.
    Refused(Refused),
    /// The lease named has expired (or never existed): what it held is free again.
    LeaseGone,
    /// The home's usage is not known yet: count it first ([`UsageLedger::claim_count`]).
    NotCounted,
    /// The backend cannot be reached or failed; the text says why (for logs, not peers).
    Unavailable(String),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Refused(Refused::TooLarge(max)) => {
                write!(f, "larger than the maximum file size of {max} bytes")
            }
            StateError::Refused(Refused::Quota(which)) => write!(f, "over the {which}"),
            StateError::LeaseGone => f.write_str("the lease has expired"),
            StateError::NotCounted => f.write_str("the home's usage has not been counted"),
            StateError::Unavailable(why) => write!(f, "shared state unavailable: {why}"),
        }
    }
}

impl std::error::Error for StateError {}

/// A home's counters as the ledger knows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// What the home holds.
    pub used: Footprint,
    /// Room held by live reservations.
    pub reserved: Footprint,
}

/// The answer of [`UsageLedger::claim_count`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// The home is counted: here are its counters.
    Known(Usage),
    /// Nobody has counted it: this caller counts it now and records the result with
    /// [`UsageLedger::set_counted`] before the claim expires.
    Yours(CountClaim),
    /// Another holder is counting it: ask again shortly.
    Busy,
}

/// Each home's usage and the room reserved in it. Homes are named by an opaque key (a
/// storage namespace); the ledger knows nothing of paths.
///
/// A home is counted once (one holder walks it while the others wait), so that no count can
/// overwrite changes made while another count was running. Changes to a home that is not
/// counted are not recorded: its count will see them.
pub trait UsageLedger: Send + Sync {
    /// The counters of `home`, or `None` if it is not counted.
    fn usage(&self, home: &str) -> BoxFuture<'_, Result<Option<Usage>, StateError>>;

    /// The counters of `home` if known, else the claim to count it (for `ttl`), else
    /// `Busy` while another holder counts it.
    fn claim_count(&self, home: &str, ttl: Duration)
    -> BoxFuture<'_, Result<Counting, StateError>>;

    /// Records the count made under `claim`. `LeaseGone` if the claim expired (another
    /// holder may be counting by now; this count is dropped).
    fn set_counted(
        &self,
        claim: CountClaim,
        used: Footprint,
    ) -> BoxFuture<'_, Result<(), StateError>>;

    /// Gives a claim back without a count (the walk failed or was stopped), so the next
    /// caller claims the home at once instead of waiting for the claim to expire. Does not
    /// wait, like [`UsageLedger::release_soon`].
    fn abandon_count(&self, claim: CountClaim);

    /// Drops what is known of `home`, so its next user counts it again (when the last
    /// session of a home ends, a change made by hand is seen at the next login). Live
    /// reservations of the home are kept.
    fn forget(&self, home: &str) -> BoxFuture<'_, Result<(), StateError>>;

    /// This node has a session of `home` from now on (until [`UsageLedger::leave`]): a
    /// shared ledger tells the other nodes, so none of them recounts the home under it. A
    /// ledger of one node needs nothing.
    fn join(&self, home: &str) -> BoxFuture<'_, Result<(), StateError>> {
        let _ = home;
        Box::pin(async { Ok(()) })
    }

    /// This node's session of `home` that [`UsageLedger::join`]ed is over. Does not wait.
    fn leave(&self, home: &str) {
        let _ = home;
    }

    /// True if `user` asked for a recount (`ferry user recount`) and no other node has a
    /// session of `home` or a change in flight in it: the count is then dropped, and the
    /// caller (which has [`UsageLedger::join`]ed and has no session of the home yet) counts
    /// it again now. A ledger of one node forgets each home's count when its last session
    /// ends anyway, and has nothing to take.
    fn take_recount(&self, user: &str, home: &str) -> BoxFuture<'_, Result<bool, StateError>> {
        let _ = (user, home);
        Box::pin(async { Ok(false) })
    }

    /// Reserves `need` in `home` for a file that will be `file_size` bytes, checked against
    /// `quota` together with everything used and reserved, atomically with respect to every
    /// other reservation of the home (on every node). The lease expires after `ttl` unless
    /// renewed. Adding nothing never needs room, even over a lowered quota. `NotCounted` if
    /// the home is not counted.
    fn reserve(
        &self,
        home: &str,
        quota: Quota,
        file_size: u64,
        need: Footprint,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<ReservationId, StateError>>;

    /// Reserves `more` under a live reservation, against the quota it was taken under.
    fn grow(&self, id: ReservationId, more: Footprint) -> BoxFuture<'_, Result<(), StateError>>;

    /// Keeps the reservation alive for `ttl` more. `LeaseGone` if it had expired.
    fn renew(&self, id: ReservationId, ttl: Duration) -> BoxFuture<'_, Result<(), StateError>>;

    /// The change was made in `home`: `added` is new and `removed` went away (both
    /// measured). Recorded whether or not the reservation is still alive (a change that
    /// happened is counted, once); the reservation's room is given back.
    fn commit(
        &self,
        home: &str,
        id: ReservationId,
        added: Footprint,
        removed: Footprint,
    ) -> BoxFuture<'_, Result<(), StateError>>;

    /// Gives the reservation's room back; done when the future is.
    fn release(&self, id: ReservationId) -> BoxFuture<'_, Result<(), StateError>>;

    /// Gives the reservation's room back without waiting (for `Drop`): a remote backend
    /// may queue it; the lease's expiry is the backstop.
    fn release_soon(&self, id: ReservationId);

    /// A change made outside any reservation (a kept partial, a removal, a sweep).
    fn adjust(
        &self,
        home: &str,
        added: Footprint,
        removed: Footprint,
    ) -> BoxFuture<'_, Result<(), StateError>>;
}

/// Room held for one change in flight. Released: given back. Committed: becomes usage.
pub struct Reservation {
    ledger: Arc<dyn UsageLedger>,
    home: String,
    id: Option<ReservationId>,
    held: Footprint,
    ttl: Duration,
    renewed: Instant,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("home", &self.home)
            .field("id", &self.id)
            .field("held", &self.held)
            .finish()
    }
}

impl Reservation {
    /// Reserves `need` in `home` (see [`UsageLedger::reserve`]) for [`DEFAULT_LEASE`],
    /// renewed by [`Reservation::renew_if_due`].
    pub async fn take(
        ledger: &Arc<dyn UsageLedger>,
        home: &str,
        quota: Quota,
        file_size: u64,
        need: Footprint,
    ) -> Result<Reservation, StateError> {
        Reservation::take_for(ledger, home, quota, file_size, need, DEFAULT_LEASE).await
    }

    /// Like [`Reservation::take`], with a lease of `ttl`.
    pub async fn take_for(
        ledger: &Arc<dyn UsageLedger>,
        home: &str,
        quota: Quota,
        file_size: u64,
        need: Footprint,
        ttl: Duration,
    ) -> Result<Reservation, StateError> {
        let id = ledger.reserve(home, quota, file_size, need, ttl).await?;
        Ok(Reservation {
            ledger: Arc::clone(ledger),
            home: home.to_string(),
            id: Some(id),
            held: need,
            ttl,
            renewed: Instant::now(),
        })
    }

    /// What this reservation holds now.
    pub fn held(&self) -> Footprint {
        self.held
    }

    fn id(&self) -> Result<ReservationId, StateError> {
        self.id.ok_or(StateError::LeaseGone)
    }

    /// Right before the change is made: `added` is about to come and `replaced` (measured
    /// now) to go. The reservation was sized from an earlier look, which another session may
    /// have made stale; whatever the change needs beyond what is held is reserved too, or
    /// the change is refused. Either way this confirms the lease is alive (a lease that
    /// expired has had its room given to others: the change is refused with `LeaseGone`):
    /// a lease taken or renewed less than a third of its length ago has two thirds left, as
    /// after any renewal, so only an older one is renewed here (a small file's reservation,
    /// taken a moment before, costs no second round trip to a shared ledger).
    pub async fn cover(&mut self, added: Footprint, replaced: Footprint) -> Result<(), StateError> {
        let more = Footprint {
            bytes: added
                .bytes
                .saturating_sub(replaced.bytes)
                .saturating_sub(self.held.bytes),
            files: added
                .files
                .saturating_sub(replaced.files)
                .saturating_sub(self.held.files),
        };
        let id = self.id()?;
        if more == Footprint::NONE {
            return self.renew_if_due().await;
        }
        self.ledger.grow(id, more).await?;
        self.held = self.held.plus(more);
        Ok(())
    }

    /// Keeps the room for its lease's length more.
    pub async fn renew(&mut self) -> Result<(), StateError> {
        let id = self.id()?;
        self.ledger.renew(id, self.ttl).await?;
        self.renewed = Instant::now();
        Ok(())
    }

    /// Renews if a third of the lease has passed since the last renewal: a long transfer
    /// calls this as it makes progress (a clock read when nothing is due).
    pub async fn renew_if_due(&mut self) -> Result<(), StateError> {
        if self.renewed.elapsed() < self.ttl / 3 {
            return Ok(());
        }
        self.renew().await
    }

    /// The change was made: see [`UsageLedger::commit`].
    pub async fn commit(mut self, added: Footprint, removed: Footprint) -> Result<(), StateError> {
        let id = self.id.take().ok_or(StateError::LeaseGone)?;
        self.ledger.commit(&self.home, id, added, removed).await
    }

    /// Gives the room back and waits until it is.
    pub async fn release(mut self) -> Result<(), StateError> {
        match self.id.take() {
            Some(id) => self.ledger.release(id).await,
            None => Ok(()),
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.ledger.release_soon(id);
        }
    }
}

/// Names held by uploads in flight, per home.
///
/// A lock is a lease: a holder must confirm it ([`NameLock::confirm`]) right before its
/// commit and finish the commit well within the lease, since a lock that expired may have
/// been taken by another node (there is no fencing token an object store could check).
pub trait NameLocks: Send + Sync {
    /// Takes `name` (a path in the home, as the storage names it) for `ttl`. `None` if a live
    /// lock holds it already. Atomic across every node sharing the backend.
    fn try_lock(
        &self,
        home: &str,
        name: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<NameLockId>, StateError>>;

    /// Keeps the lock alive for `ttl` more. `LeaseGone` if it had expired.
    fn renew(&self, id: NameLockId, ttl: Duration) -> BoxFuture<'_, Result<(), StateError>>;

    /// Frees the name; done when the future is.
    fn unlock(&self, id: NameLockId) -> BoxFuture<'_, Result<(), StateError>>;

    /// Frees the name without waiting (for `Drop`; see [`UsageLedger::release_soon`]).
    fn unlock_soon(&self, id: NameLockId);
}

/// A name held until released or dropped.
pub struct NameLock {
    locks: Arc<dyn NameLocks>,
    id: Option<NameLockId>,
    renewed: Instant,
}

impl fmt::Debug for NameLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameLock").field("id", &self.id).finish()
    }
}

impl NameLock {
    /// Takes `name` in `home` for [`DEFAULT_LEASE`]; `None` if it is held.
    pub async fn try_take(
        locks: &Arc<dyn NameLocks>,
        home: &str,
        name: &str,
    ) -> Result<Option<NameLock>, StateError> {
        Ok(locks
            .try_lock(home, name, DEFAULT_LEASE)
            .await?
            .map(|id| NameLock {
                locks: Arc::clone(locks),
                id: Some(id),
                renewed: Instant::now(),
            }))
    }

    /// Renews now: right before a commit, this is the check that the name is still ours.
    pub async fn confirm(&mut self) -> Result<(), StateError> {
        let id = self.id.ok_or(StateError::LeaseGone)?;
        self.locks.renew(id, DEFAULT_LEASE).await?;
        self.renewed = Instant::now();
        Ok(())
    }

    /// Renews if a third of the lease has passed (see [`Reservation::renew_if_due`]).
    pub async fn renew_if_due(&mut self) -> Result<(), StateError> {
        if self.renewed.elapsed() < DEFAULT_LEASE / 3 {
            return Ok(());
        }
        self.confirm().await
    }

    /// Frees the name and waits until it is.
    pub async fn release(mut self) -> Result<(), StateError> {
        match self.id.take() {
            Some(id) => self.locks.unlock(id).await,
            None => Ok(()),
        }
    }
}

impl Drop for NameLock {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.locks.unlock_soon(id);
        }
    }
}
/// The penalty of each source address (an address grouped by prefix, as the backend is
/// configured). Penalties add up, decay with time, and past a threshold refuse the source.
pub trait PenaltyStore: Send + Sync {
    /// Adds `amount` to the penalty of `addr`'s source. True if this put the source over the
    /// threshold (so the caller logs the ban once).
    fn add(&self, addr: IpAddr, amount: Duration) -> BoxFuture<'_, Result<bool, StateError>>;

    /// `Some(time left)` if `addr`'s source is refused now.
    fn refused_for(&self, addr: IpAddr) -> BoxFuture<'_, Result<Option<Duration>, StateError>>;

    /// The sources refused now, each with its time left, the longest-refused first, at most
    /// `max` of them: what a node pulls into its own table, so a source refused through one
    /// node is refused at accept by every node without asking the store per connection.
    fn refused_sources(
        &self,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<(IpAddr, Duration)>, StateError>>;
}

/// An upload kept for resuming: where it is and how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialRecord {
    /// The home it belongs to.
    pub home: String,
    /// The path it will be committed to.
    pub path: String,
    /// Bytes kept (a verified prefix).
    pub len: u64,
    /// The storage's own handle to the kept bytes (a temp name, an upload id).
    pub handle: String,
    /// When it was kept (stale ones are swept).
    pub kept_at: SystemTime,
}

/// Kept partial uploads by key (per user and target), findable from any node.
pub trait PartialIndex: Send + Sync {
    /// Records the partial under `key`, returning the record it replaced (whose stored
    /// bytes the caller now removes, or they are orphaned until the storage's own sweep).
    fn put(
        &self,
        key: &str,
        record: PartialRecord,
    ) -> BoxFuture<'_, Result<Option<PartialRecord>, StateError>>;

    /// The partial under `key`, if any.
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<PartialRecord>, StateError>>;

    /// Takes the partial under `key` out of the index: a resume claims it (exactly one of
    /// several racing takers gets it), a sweep drops it. A taker that dies before it keeps
    /// the bytes again leaves them to the storage's own sweep of stale partials.
    fn take(&self, key: &str) -> BoxFuture<'_, Result<Option<PartialRecord>, StateError>>;

    /// The partials of `home` kept before `before`, for the sweep.
    fn kept_before(
        &self,
        home: &str,
        before: SystemTime,
    ) -> BoxFuture<'_, Result<Vec<(String, PartialRecord)>, StateError>>;
}
