//! Per-user quotas: bytes, files and the largest single file.
//!
//! Usage is computed by walking the home when the first session of a user logs in (after the
//! stale partials are swept), and then kept in the usage ledger ([`crate::state::UsageLedger`]:
//! in this process's memory by default, shared by every node when several run side by side),
//! and updated as files are committed, replaced, removed, or kept as partials, and as
//! directories are made and removed (a directory counts as a file, as inode quotas count
//! them). When the home's last session on this node ends the ledger forgets the numbers, so
//! the next login recounts: files an admin changed by hand are seen then. Only one walk of a
//! home runs at a time (the ledger's count claim): a second login of the same home waits for
//! the first one's count; a walk gives up when its login does, and gives its claim back.
//! Reservations are the ledger's leases, renewed as an upload's data arrives.
//!
//! The counters must always agree with a fresh walk. So every change of the home that the
//! counters follow measures what it replaced or removed itself, on the directory handle it
//! changes and while holding the account's change lock ([`Account::changing`]), instead of
//! trusting a look taken earlier: a look from before a long upload, or from before another
//! session changed the same name, can be stale, and renaming a file onto itself replaces
//! nothing at all.
//!
//! An upload reserves its declared size before the first byte is written, so uploads in
//! flight count: two concurrent uploads cannot together overshoot a quota. Kept partial
//! uploads are files in the home and count like any other.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::domain::Quota;
use crate::domain::UsageReport as Usage;
use crate::jail::{Footprint, Jail, Stop, StorageError};
use crate::state::{self, Counting as Count, StateError, UsageLedger};
use crate::users::User;

/// Why a reservation was refused.
pub use crate::domain::Refused;

/// How long a reservation lives unless renewed. An upload renews it as its data arrives
/// ([`Reservation::renew_if_due`], after a third of this), so it must be well above the
/// longest pause a transfer may take (the stall timeout, 60 s by default); it bounds how long
/// a node that died keeps the room it held.
pub const RESERVATION_LEASE: Duration = Duration::from_secs(300);

/// How long one login's claim to count a home lives: a count that takes longer (a huge home
/// on a slow disk) loses it, and its result is dropped.
const COUNT_LEASE: Duration = Duration::from_secs(600);

/// The limits of `user`.
pub fn limits_of(user: &User) -> Quota {
    Quota {
        bytes: user.quota_bytes,
        files: user.quota_files,
        max_file_size: user.max_file_size,
    }
}

/// Runs a ledger call to its end from blocking code (a store's call-back). The in-memory
/// ledger is done at the first poll; a remote one is waited for on the runtime. The local
/// store calls back on the blocking pool; an object store calls back from an async worker,
/// which then steps aside (`block_in_place`) while the ledger answers, so the runtime's
/// other tasks go on. The server's runtime is multi-threaded; on a current-thread runtime
/// only the blocking pool may call this with a ledger that waits.
fn wait<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    if let Poll::Ready(v) = f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return v;
    }
    let handle = tokio::runtime::Handle::current();
    match handle.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => handle.block_on(f),
        _ => tokio::task::block_in_place(|| handle.block_on(f)),
    }
}

/// Logs a ledger call that failed where nothing can be refused any more (the change was made):
/// the counters may be off until the home is counted again.
fn log_lost(what: &str, result: Result<(), StateError>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, what, "usage ledger update failed; usage may be off until the next count");
    }
}

/// The usage of one home, shared by every session using it on this node: its counters live
/// in the [`UsageLedger`] (shared by every node), the change lock here.
pub struct Account {
    ledger: Arc<dyn UsageLedger>,
    /// The home's key in the ledger.
    key: String,
    /// How long a reservation lives unless renewed ([`RESERVATION_LEASE`]).
    lease: Duration,
    /// Held (on the blocking pool) while a session measures what a change of the home will
    /// replace or remove and makes that change, so that no other session of the home changes
    /// the same names in between and the measured difference is the real one.
    changes: tokio::sync::Mutex<()>,
    /// Whether the ledger forgets the counters when this, the home's last session on this
    /// node, ends. Not with a ledger shared by several nodes: another node's sessions may
    /// still use the count (see [`Accounts::shared`]).
    forget_when_done: bool,
    /// Whether this node [`UsageLedger::join`]ed the home for this account, and leaves it
    /// when the account (the home's last session on this node) is gone.
    joined: bool,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Default for Account {
    /// An account of an empty home, in a ledger of its own (for tests).
    fn default() -> Account {
        Account::standalone(Footprint::NONE)
    }
}

impl Account {
    /// An account of a home that holds `used`, in a ledger of its own (for tests).
    pub fn standalone(used: Footprint) -> Account {
        Account::standalone_with_lease(used, RESERVATION_LEASE)
    }

    /// [`Account::standalone`] whose reservations live `lease` unless renewed (for tests of
    /// the renewal).
    pub fn standalone_with_lease(used: Footprint, lease: Duration) -> Account {
        let ledger: Arc<dyn UsageLedger> = state::memory::MemoryLedger::new();
        let key = "home".to_string();
        if let Ok(Count::Yours(claim)) = wait(ledger.claim_count(&key, COUNT_LEASE)) {
            let _ = wait(ledger.set_counted(claim, used));
        }
        Account {
            ledger,
            key,
            lease,
            changes: tokio::sync::Mutex::new(()),
            forget_when_done: true,
            joined: false,
        }
    }

    /// The change lock: hold it across "measure what goes away, change the home". Blocking:
    /// take it on the blocking pool (it panics on an async worker, where it would stall
    /// every task of that thread).
    pub fn changing(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.changes.blocking_lock()
    }

    /// The change lock, for a change made through the async storage seam: held across its
    /// awaits, and in the same order as [`Account::changing`]'s takers.
    pub async fn changing_async(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.changes.lock().await
    }

    /// Reserves `bytes` more room (and a file slot if `new_file`) for a file that will be
    /// `file_size` bytes, or says why it does not fit. An upload that replaces a file
    /// reserves only what it adds. The reservation is released when dropped.
    pub async fn reserve(
        self: &Arc<Self>,
        limits: &Quota,
        file_size: u64,
        bytes: u64,
        new_file: bool,
    ) -> Result<Reservation, Refusal> {
        let need = Footprint {
            bytes,
            files: u64::from(new_file),
        };
        let inner = state::Reservation::take_for(
            &self.ledger,
            &self.key,
            *limits,
            file_size,
            need,
            self.lease,
        )
        .await
        .map_err(Refusal::from)?;
        Ok(Reservation { inner })
    }

    /// [`Account::reserve`] from blocking code (see [`wait`]).
    pub fn reserve_blocking(
        self: &Arc<Self>,
        limits: &Quota,
        file_size: u64,
        bytes: u64,
        new_file: bool,
    ) -> Result<Reservation, Refusal> {
        wait(self.reserve(limits, file_size, bytes, new_file))
    }

    /// Something appeared outside a reservation (e.g. a kept partial), and something went
    /// away (removed, replaced, swept).
    pub async fn adjust(&self, added: Footprint, removed: Footprint) {
        log_lost(
            "adjust",
            self.ledger.adjust(&self.key, added, removed).await,
        );
    }

    /// [`Account::adjust`] from blocking code (see [`wait`]).
    pub fn adjust_blocking(&self, added: Footprint, removed: Footprint) {
        wait(self.adjust(added, removed));
    }

    /// [`Account::adjust`] without waiting, for `Drop`: done at once by the in-memory
    /// ledger, else sent off on the runtime.
    pub fn adjust_soon(self: &Arc<Self>, added: Footprint, removed: Footprint) {
        let account = Arc::clone(self);
        soon(async move { account.adjust(added, removed).await });
    }

    /// The numbers for `usage`, with reservations counted as used.
    pub async fn usage(&self, limits: &Quota) -> Result<Usage, StateError> {
        let u = self
            .ledger
            .usage(&self.key)
            .await?
            .ok_or(StateError::NotCounted)?;
        Ok(Usage {
            used_bytes: Some(u.used.bytes.saturating_add(u.reserved.bytes)),
            used_files: Some(u.used.files.saturating_add(u.reserved.files)),
            quota_bytes: limits.bytes,
            quota_files: limits.files,
            max_file_size: limits.max_file_size,
            ..Usage::default()
        })
    }
}

impl Drop for Account {
    /// The home's last session on this node is gone: the ledger forgets its counters, so the
    /// next login counts it again (and sees what an admin changed by hand meanwhile).
    fn drop(&mut self) {
        if self.joined {
            self.ledger.leave(&self.key);
        }
        if !self.forget_when_done {
            return;
        }
        let (ledger, key) = (Arc::clone(&self.ledger), std::mem::take(&mut self.key));
        soon(async move { log_lost("forget", ledger.forget(&key).await) });
    }
}

/// Runs a ledger call without waiting for it (from `Drop`): done at the first poll by the
/// in-memory ledger, else sent off on the runtime.
fn soon(f: impl Future<Output = ()> + Send + 'static) {
    let mut f = Box::pin(f);
    if f.as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
        .is_pending()
        && let Ok(rt) = tokio::runtime::Handle::try_current()
    {
        rt.spawn(f);
    }
}

/// A store's reserve call-back (see [`crate::storage::Reserve`]) for a file of `size` bytes:
/// reserves what it adds over what the target takes, into `held`; a refusal is kept in
/// `refused` for the caller, and the store hears `QuotaExceeded`.
pub(crate) fn reserve_in_store(
    account: &Arc<Account>,
    limits: &Quota,
    size: u64,
    replaces: Footprint,
    held: &Mutex<Option<Reservation>>,
    refused: &Mutex<Option<Refusal>>,
) -> Result<(), StorageError> {
    let new_bytes = size.saturating_sub(replaces.bytes);
    match account.reserve_blocking(limits, size, new_bytes, replaces.files == 0) {
        Ok(r) => {
            *held.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            Ok(())
        }
        Err(why) => {
            *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            Err(StorageError::QuotaExceeded)
        }
    }
}

/// The account's change lock, entered by a store around each step that measures what a
/// change replaces or removes and makes it (see [`crate::storage::ChangeGate`]).
impl crate::storage::ChangeGate for Account {
    fn enter(&self) -> Box<dyn Send + '_> {
        Box::new(self.changing())
    }
}

/// Why room could not be reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Over a limit.
    Refused(Refused),
    /// The reservation's lease expired (no renewal for [`RESERVATION_LEASE`]): its room may
    /// be someone else's by now.
    LeaseGone,
    /// The ledger failed or cannot be reached (the text is for the log).
    Unavailable(String),
}

impl From<StateError> for Refusal {
    fn from(e: StateError) -> Refusal {
        match e {
            StateError::Refused(r) => Refusal::Refused(r),
            StateError::LeaseGone => Refusal::LeaseGone,
            other => Refusal::Unavailable(other.to_string()),
        }
    }
}

/// Room held for an upload or copy in flight, a lease of the ledger. Dropped: released.
/// Committed: becomes usage.
#[derive(Debug)]
pub struct Reservation {
    inner: state::Reservation,
}

impl Reservation {
    /// Right before the change is made, under the change lock: `added` is about to come and
    /// `replaced` (measured now) to go. The reservation was sized from an earlier look at the
    /// target, which another session may have removed or shrunk since; whatever the change
    /// now needs beyond what is reserved is reserved too, or the change is refused. Without
    /// this, overwriting a file that another session removes meanwhile (and fills its room)
    /// would store the whole upload on top of a full quota. A lease that expired is refused
    /// too: its room may be someone else's by now.
    pub async fn cover(&mut self, added: Footprint, replaced: Footprint) -> Result<(), Refusal> {
        self.inner
            .cover(added, replaced)
            .await
            .map_err(Refusal::from)
    }

    /// [`Reservation::cover`] from blocking code (a store's `admit`).
    pub fn cover_blocking(&mut self, added: Footprint, replaced: Footprint) -> Result<(), Refusal> {
        wait(self.cover(added, replaced))
    }

    /// Keeps the room alive while a transfer makes progress (a clock read when nothing is
    /// due).
    pub async fn renew_if_due(&mut self) -> Result<(), Refusal> {
        self.inner.renew_if_due().await.map_err(Refusal::from)
    }

    /// [`Reservation::renew_if_due`] from blocking code (a long copy's progress).
    pub fn renew_if_due_blocking(&mut self) -> Result<(), Refusal> {
        wait(self.renew_if_due())
    }

    /// The change was made: `added` is new in the home (measured, not the estimate that was
    /// reserved) and `removed` went away (a replaced target, as measured when it was
    /// replaced).
    pub async fn commit(self, added: Footprint, removed: Footprint) {
        log_lost("commit", self.inner.commit(added, removed).await);
    }

    /// [`Reservation::commit`] from blocking code (a store's `placed`).
    pub fn commit_blocking(self, added: Footprint, removed: Footprint) {
        wait(self.commit(added, removed));
    }
}

/// What the live-accounts map holds for a home.
#[derive(Debug)]
enum LiveHome {
    /// A login is walking the home; other logins of it wait for its count.
    Counting,
    /// Counted; alive while a session holds it.
    Ready(Weak<Account>),
}

/// What counting a home and sweeping its stale partials needs from where the home lives:
/// the local jail, or any [`Storage`](crate::storage::Storage) ([`StoredHome`]). Blocking:
/// called on the blocking pool.
pub trait CountableHome {
    /// Removes kept partials untouched for `ttl`; returns what they took.
    fn sweep_partials(&self, ttl: Duration) -> Result<Footprint, StorageError>;
    /// What the home holds, never an undercount; gives up with an error at `stop`.
    fn usage_walk(&self, stop: &Stop) -> Result<Footprint, StorageError>;
}

impl CountableHome for Jail {
    fn sweep_partials(&self, ttl: Duration) -> Result<Footprint, StorageError> {
        Jail::sweep_partials(self, ttl)
    }

    fn usage_walk(&self, stop: &Stop) -> Result<Footprint, StorageError> {
        Jail::usage_walk(self, stop)
    }
}

/// A home in a storage backend other than the local jail, counted through the
/// [`Storage`](crate::storage::Storage) trait from the blocking pool.
pub struct StoredHome {
    /// The home.
    pub storage: Arc<dyn crate::storage::Storage>,
    /// The runtime its futures run on.
    pub runtime: tokio::runtime::Handle,
}

impl CountableHome for StoredHome {
    fn sweep_partials(&self, ttl: Duration) -> Result<Footprint, StorageError> {
        self.runtime.block_on(self.storage.sweep_partials(ttl))
    }

    fn usage_walk(&self, stop: &Stop) -> Result<Footprint, StorageError> {
        if stop.fired() {
            return Err(StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "counting the home stopped before it began",
            )));
        }
        self.runtime.block_on(self.storage.usage(stop.left()))
    }
}

/// The live accounts, by home directory: users sharing a home share its usage (kept in the
/// ledger) and its change lock.
pub struct Accounts {
    ledger: Arc<dyn UsageLedger>,
    live: Mutex<HashMap<PathBuf, LiveHome>>,
    /// Signalled when a walk ends, for the logins waiting for it.
    counted: Condvar,
    /// Walks started so far (for tests and debugging).
    walks: std::sync::atomic::AtomicU64,
    /// The ledger is shared with other nodes: counts are kept when this node's last session
    /// of a home ends (see [`Accounts::shared`]).
    shared: bool,
}

/// How often a login waiting for another login's walk looks at its own [`Stop`].
const COUNT_WAIT_POLL: Duration = Duration::from_millis(50);

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").finish_non_exhaustive()
    }
}

impl Default for Accounts {
    /// Accounts counted in a ledger of this process's own.
    fn default() -> Accounts {
        Accounts::new(state::memory::MemoryLedger::new())
    }
}

impl Accounts {
    /// Accounts whose counters live in `ledger`.
    pub fn new(ledger: Arc<dyn UsageLedger>) -> Accounts {
        Accounts {
            ledger,
            live: Mutex::default(),
            counted: Condvar::default(),
            walks: std::sync::atomic::AtomicU64::default(),
            shared: false,
        }
    }

    /// Accounts whose counters live in `ledger`, shared with other nodes. A home's count
    /// then outlives this node's sessions of it: another node's sessions may be using it,
    /// and forgetting it under them would refuse their changes until the next count. The
    /// count is made once, by the first login on any node, and kept up to date by every
    /// change made through ferry.
    pub fn shared(ledger: Arc<dyn UsageLedger>) -> Accounts {
        Accounts {
            shared: true,
            ..Accounts::new(ledger)
        }
    }

    /// The account of `home`: the live one, or a new one counted by walking the home (the
    /// stale partials are swept first, `partial_ttl`). Only one walk of a home runs at a
    /// time; a second login waits for it (or for its own `stop`). Returns the account and
    /// what the sweep removed (already taken off the counts). Blocking: call it on the
    /// blocking pool.
    pub fn open(
        &self,
        user: &str,
        home: PathBuf,
        jail: &dyn CountableHome,
        partial_ttl: Duration,
        stop: &Stop,
    ) -> Result<(Arc<Account>, Result<Footprint, StorageError>), StorageError> {
        let mut live = self.lock();
        loop {
            match live.get(&home) {
                Some(LiveHome::Ready(weak)) => match weak.upgrade() {
                    Some(account) => {
                        drop(live);
                        let swept = sweep(&account, jail, partial_ttl);
                        return Ok((account, swept));
                    }
                    None => break,
                },
                Some(LiveHome::Counting) => {
                    if stop.fired() {
                        return Err(StorageError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "another login is still counting the home",
                        )));
                    }
                    live = match self.counted.wait_timeout(live, COUNT_WAIT_POLL) {
                        Ok((guard, _)) => guard,
                        Err(p) => p.into_inner().0,
                    };
                }
                None => break,
            }
        }
        live.retain(|_, slot| match slot {
            LiveHome::Counting => true,
            LiveHome::Ready(w) => w.strong_count() > 0,
        });
        live.insert(home.clone(), LiveHome::Counting);
        drop(live);
        // Whatever happens below (an error, a panic), the slot is released and waiters woken.
        let mut counting = Counting {
            accounts: self,
            home: &home,
            account: None,
        };
        let key = home.to_string_lossy().into_owned();
        let account = Arc::new(Account {
            ledger: Arc::clone(&self.ledger),
            key: key.clone(),
            lease: RESERVATION_LEASE,
            changes: tokio::sync::Mutex::new(()),
            forget_when_done: !self.shared,
            joined: self.shared,
        });
        if self.shared {
            // Told before the count is looked at: a recount another node takes from now on
            // sees this node (see `UsageLedger::take_recount`). A node that cannot say so
            // does not go on, lest a recount run under this session's changes.
            wait(self.ledger.join(&key)).map_err(state_error)?;
            if wait(self.ledger.take_recount(user, &key)).map_err(state_error)? {
                tracing::info!(user, "usage recounted, as asked with `ferry user recount`");
            }
        }
        // Counted once across every node sharing the ledger: whoever claims the home walks
        // it; the others wait for the count (or find it known).
        let swept = loop {
            match wait(self.ledger.claim_count(&key, COUNT_LEASE)) {
                Ok(Count::Known(_)) => break sweep(&account, jail, partial_ttl),
                Ok(Count::Yours(claim)) => {
                    let swept = jail.sweep_partials(partial_ttl);
                    self.walks
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let used = match jail.usage_walk(stop) {
                        Ok(used) => used,
                        Err(e) => {
                            // The next login counts again, at once.
                            self.ledger.abandon_count(claim);
                            return Err(e);
                        }
                    };
                    wait(self.ledger.set_counted(claim, used)).map_err(state_error)?;
                    break swept;
                }
                Ok(Count::Busy) => {
                    if stop.fired() {
                        return Err(StorageError::Io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "another node is still counting the home",
                        )));
                    }
                    std::thread::sleep(COUNT_WAIT_POLL);
                }
                Err(e) => return Err(state_error(e)),
            }
        };
        counting.account = Some(Arc::downgrade(&account));
        drop(counting);
        Ok((account, swept))
    }

    /// Sweeps the stale partials of `home` (for the periodic sweep), taking what goes off
    /// the live account's counts if there is one.
    pub fn sweep(
        &self,
        home: &Path,
        jail: &dyn CountableHome,
        partial_ttl: Duration,
    ) -> Result<Footprint, StorageError> {
        let account = match self.lock().get(home) {
            Some(LiveHome::Ready(w)) => w.upgrade(),
            // A walk in progress counts what it finds; the login sweeps before it.
            Some(LiveHome::Counting) => return Ok(Footprint::NONE),
            None => None,
        };
        match account {
            Some(a) => sweep(&a, jail, partial_ttl),
            None => jail.sweep_partials(partial_ttl),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PathBuf, LiveHome>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Sweeps stale partials under the account's change lock and takes them off its counts.
fn sweep(
    account: &Account,
    jail: &dyn CountableHome,
    ttl: Duration,
) -> Result<Footprint, StorageError> {
    let swept = {
        let _changing = account.changing();
        jail.sweep_partials(ttl)?
    };
    account.adjust_blocking(Footprint::NONE, swept);
    Ok(swept)
}

/// A ledger failure, as the store's error the login reports.
fn state_error(e: StateError) -> StorageError {
    StorageError::Io(std::io::Error::other(e.to_string()))
}

/// A walk in progress; dropped, it publishes the account (or clears the slot if the walk
/// failed) and wakes the logins waiting for it.
struct Counting<'a> {
    accounts: &'a Accounts,
    home: &'a Path,
    account: Option<Weak<Account>>,
}

impl Drop for Counting<'_> {
    fn drop(&mut self) {
        let mut live = self.accounts.lock();
        match self.account.take() {
            Some(w) => live.insert(self.home.to_path_buf(), LiveHome::Ready(w)),
            None => live.remove(self.home),
        };
        drop(live);
        self.accounts.counted.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(bytes: u64, files: u64) -> Arc<Account> {
        Arc::new(Account::standalone(Footprint { bytes, files }))
    }

    fn fp(bytes: u64, files: u64) -> Footprint {
        Footprint { bytes, files }
    }

    const LIMITS: Quota = Quota {
        bytes: Some(1000),
        files: Some(3),
        max_file_size: Some(600),
    };

    #[test]
    fn reservations_in_flight_count_against_the_quota() {
        let a = account(100, 1);
        let first = a.reserve_blocking(&LIMITS, 500, 500, true).unwrap();
        // A second upload that would fit alone does not fit next to the first.
        assert_eq!(
            a.reserve_blocking(&LIMITS, 500, 500, true).unwrap_err(),
            Refusal::Refused(Refused::Quota("byte quota"))
        );
        drop(first);
        let second = a.reserve_blocking(&LIMITS, 500, 500, true).unwrap();
        second.commit_blocking(fp(500, 1), Footprint::NONE);
        assert_eq!(wait(a.usage(&LIMITS)).unwrap().used_bytes, Some(600));
        assert_eq!(wait(a.usage(&LIMITS)).unwrap().used_files, Some(2));
    }

    #[test]
    fn max_file_size_and_file_count() {
        let a = account(0, 2);
        assert_eq!(
            a.reserve_blocking(&LIMITS, 601, 601, true).unwrap_err(),
            Refusal::Refused(Refused::TooLarge(600))
        );
        let r = a.reserve_blocking(&LIMITS, 10, 10, true).unwrap();
        assert_eq!(
            a.reserve_blocking(&LIMITS, 10, 10, true).unwrap_err(),
            Refusal::Refused(Refused::Quota("file quota"))
        );
        // Replacing a file needs no new file slot.
        let over = a.reserve_blocking(&LIMITS, 10, 10, false).unwrap();
        drop((r, over));
    }

    #[test]
    fn overwrite_replaces_the_old_size() {
        let a = account(300, 1);
        a.reserve_blocking(&LIMITS, 100, 100, false)
            .unwrap()
            .commit_blocking(fp(100, 1), fp(300, 1));
        let u = wait(a.usage(&LIMITS)).unwrap();
        assert_eq!((u.used_bytes, u.used_files), (Some(100), Some(1)));
    }

    #[test]
    fn logins_of_one_home_at_once_walk_it_once_and_share_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        for i in 0..500 {
            let d = home.join(format!("d{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("f"), b"abc").unwrap();
        }
        let accounts = Accounts::default();
        let stop = Stop::after(Duration::from_secs(60));
        let opened: Vec<Arc<Account>> = std::thread::scope(|s| {
            let logins: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let jail = Jail::open(&home, false).unwrap();
                        let ttl = Duration::from_secs(3600);
                        accounts
                            .open("u", home.clone(), &jail, ttl, &stop)
                            .unwrap()
                            .0
                    })
                })
                .collect();
            logins.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(accounts.walks.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(opened.iter().all(|a| Arc::ptr_eq(a, &opened[0])));
        let u = wait(opened[0].usage(&LIMITS)).unwrap();
        assert_eq!((u.used_bytes, u.used_files), (Some(1500), Some(1000)));
        // Once every session is gone, the next login counts again.
        drop(opened);
        let jail = Jail::open(&home, false).unwrap();
        let ttl = Duration::from_secs(3600);
        let (_again, _) = accounts.open("u", home.clone(), &jail, ttl, &stop).unwrap();
        assert_eq!(accounts.walks.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn a_stopped_walk_fails_and_leaves_no_count_behind() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join("a/b")).unwrap();
        let accounts = Accounts::default();
        let jail = Jail::open(&home, false).unwrap();
        let stop = Stop::after(Duration::from_secs(60));
        stop.raise();
        let ttl = Duration::from_secs(3600);
        assert!(accounts.open("u", home.clone(), &jail, ttl, &stop).is_err());
        let stop = Stop::after(Duration::from_secs(60));
        let (a, _) = accounts.open("u", home.clone(), &jail, ttl, &stop).unwrap();
        assert_eq!(wait(a.usage(&LIMITS)).unwrap().used_files, Some(2));
    }

    #[test]
    fn unlimited_users_are_never_refused() {
        let a = account(u64::MAX - 1, u64::MAX - 1);
        a.reserve_blocking(&Quota::default(), u64::MAX, u64::MAX, true)
            .unwrap();
    }
}
