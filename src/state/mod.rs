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
//!
//! Everything held on behalf of a request is a lease with a time to live: a node that dies
//! holding room or a name cannot hold it forever, because the lease expires unless its
//! holder renews it. In one process the values [`Reservation`] and [`NameLock`] give back
//! what they hold when dropped, exactly as today's in-memory counters do; the expiry is the
//! backstop a cluster needs. Releases never block (a remote backend queues them), so they
//! can run in `Drop`.
//!
//! [`memory`] holds the implementations one server uses on its own.

pub mod memory;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::domain::{BoxFuture, Footprint, Quota, Refused};

/// One lease, opaque to its holder: a reservation of room or a locked name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub u64);

/// How long a lease lives unless renewed, when its holder gives no other figure: long
/// enough that a holder renewing every third of it never loses one to a slow moment.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// What a state backend can answer instead of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The change does not fit the account's limits.
    Refused(Refused),
    /// The lease named has expired (or never existed): what it held is free again.
    LeaseGone,
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

/// Each home's usage and the room reserved in it. Homes are named by an opaque key (a
/// storage namespace); the ledger knows nothing of paths.
pub trait UsageLedger: Send + Sync {
    /// The counters of `home`, or `None` if it was never counted here (then the caller
    /// counts it, e.g. by walking the home, and records that with [`Self::set_counted`]).
    fn usage(&self, home: &str) -> BoxFuture<'_, Result<Option<Usage>, StateError>>;

    /// Records a fresh count of `home`, replacing what was known of its usage (reservations
    /// stay).
    fn set_counted(&self, home: &str, used: Footprint) -> BoxFuture<'_, Result<(), StateError>>;

    /// Reserves `need` in `home` for a file that will be `file_size` bytes, checked against
    /// `quota` together with everything used and reserved, atomically with respect to every
    /// other reservation of the home (on every node). The lease expires after `ttl` unless
    /// renewed. Adding nothing never needs room, even over a lowered quota.
    fn reserve(
        &self,
        home: &str,
        quota: Quota,
        file_size: u64,
        need: Footprint,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<LeaseId, StateError>>;

    /// Reserves `more` under an existing lease, against the quota it was taken under.
    fn grow(&self, lease: LeaseId, more: Footprint) -> BoxFuture<'_, Result<(), StateError>>;

    /// The change was made: `added` is new in the home and `removed` went away (both
    /// measured), and the lease's room is given back, in one step.
    fn commit(
        &self,
        lease: LeaseId,
        added: Footprint,
        removed: Footprint,
    ) -> BoxFuture<'_, Result<(), StateError>>;

    /// Keeps the lease alive for `ttl` more. `LeaseGone` if it had already expired.
    fn renew(&self, lease: LeaseId, ttl: Duration) -> BoxFuture<'_, Result<(), StateError>>;

    /// Gives the lease's room back. Never blocks; a remote backend may queue it (its expiry
    /// is the backstop).
    fn release(&self, lease: LeaseId);

    /// A change made outside any reservation (a kept partial, a removal, a sweep).
    fn adjust(
        &self,
        home: &str,
        added: Footprint,
        removed: Footprint,
    ) -> BoxFuture<'_, Result<(), StateError>>;
}

/// Room held for one change in flight. Dropped: released. Committed: becomes usage.
pub struct Reservation {
    ledger: Arc<dyn UsageLedger>,
    lease: Option<LeaseId>,
    held: Footprint,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation")
            .field("lease", &self.lease)
            .field("held", &self.held)
            .finish()
    }
}

impl Reservation {
    /// Reserves `need` in `home` (see [`UsageLedger::reserve`]), for [`DEFAULT_LEASE`]
    /// unless renewed.
    pub async fn take(
        ledger: &Arc<dyn UsageLedger>,
        home: &str,
        quota: Quota,
        file_size: u64,
        need: Footprint,
    ) -> Result<Reservation, StateError> {
        let lease = ledger
            .reserve(home, quota, file_size, need, DEFAULT_LEASE)
            .await?;
        Ok(Reservation {
            ledger: Arc::clone(ledger),
            lease: Some(lease),
            held: need,
        })
    }

    /// What this reservation holds now.
    pub fn held(&self) -> Footprint {
        self.held
    }

    /// Right before the change is made: `added` is about to come and `replaced` (measured
    /// now) to go. The reservation was sized from an earlier look, which another session may
    /// have made stale; whatever the change needs beyond what is held is reserved too, or
    /// the change is refused.
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
        if more == Footprint::NONE {
            return Ok(());
        }
        let lease = self.lease.ok_or(StateError::LeaseGone)?;
        self.ledger.grow(lease, more).await?;
        self.held = self.held.plus(more);
        Ok(())
    }

    /// Keeps the room for [`DEFAULT_LEASE`] more (a long upload calls this now and then).
    pub async fn renew(&self) -> Result<(), StateError> {
        let lease = self.lease.ok_or(StateError::LeaseGone)?;
        self.ledger.renew(lease, DEFAULT_LEASE).await
    }

    /// The change was made: see [`UsageLedger::commit`].
    pub async fn commit(mut self, added: Footprint, removed: Footprint) -> Result<(), StateError> {
        let lease = self.lease.take().ok_or(StateError::LeaseGone)?;
        self.ledger.commit(lease, added, removed).await
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.ledger.release(lease);
        }
    }
}

/// Names held by uploads in flight, per home.
pub trait NameLocks: Send + Sync {
    /// Takes `name` (a path in the home, as the storage names it) for `ttl`. `None` if a live
    /// lease holds it already. Atomic across every node sharing the backend.
    fn try_lock(
        &self,
        home: &str,
        name: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<LeaseId>, StateError>>;

    /// Keeps the lock alive for `ttl` more. `LeaseGone` if it had expired.
    fn renew(&self, lease: LeaseId, ttl: Duration) -> BoxFuture<'_, Result<(), StateError>>;

    /// Frees the name. Never blocks (see [`UsageLedger::release`]).
    fn unlock(&self, lease: LeaseId);
}

/// A name held until dropped.
pub struct NameLock {
    locks: Arc<dyn NameLocks>,
    lease: LeaseId,
}

impl fmt::Debug for NameLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameLock")
            .field("lease", &self.lease)
            .finish()
    }
}

impl NameLock {
    /// Takes `name` in `home` for [`DEFAULT_LEASE`] unless renewed; `None` if it is held.
    pub async fn try_take(
        locks: &Arc<dyn NameLocks>,
        home: &str,
        name: &str,
    ) -> Result<Option<NameLock>, StateError> {
        Ok(locks
            .try_lock(home, name, DEFAULT_LEASE)
            .await?
            .map(|lease| NameLock {
                locks: Arc::clone(locks),
                lease,
            }))
    }

    /// Keeps the name for [`DEFAULT_LEASE`] more.
    pub async fn renew(&self) -> Result<(), StateError> {
        self.locks.renew(self.lease, DEFAULT_LEASE).await
    }
}

impl Drop for NameLock {
    fn drop(&mut self) {
        self.locks.unlock(self.lease);
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
    /// Records (or replaces) the partial under `key`.
    fn put(&self, key: &str, record: PartialRecord) -> BoxFuture<'_, Result<(), StateError>>;

    /// The partial under `key`, if any.
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<PartialRecord>, StateError>>;

    /// Takes the partial under `key` out of the index (a resume claims it; a sweep drops it).
    fn take(&self, key: &str) -> BoxFuture<'_, Result<Option<PartialRecord>, StateError>>;

    /// The partials of `home` kept before `before`, for the sweep.
    fn kept_before(
        &self,
        home: &str,
        before: SystemTime,
    ) -> BoxFuture<'_, Result<Vec<(String, PartialRecord)>, StateError>>;
}
