//! Per-user quotas: bytes, files and the largest single file.
//!
//! Usage is computed by walking the home when the first session of a user logs in (after the
//! stale partials are swept), and then kept in memory, shared by all of that user's sessions,
//! and updated as files are committed, replaced, removed, or kept as partials, and as
//! directories are made and removed (a directory counts as a file, as inode quotas count
//! them). When the last session ends the numbers are dropped, so the next login recounts:
//! files an admin changed by hand are seen then, and nothing needs to be persisted or can go
//! stale across restarts. Only one walk of a home runs at a time: a second login of the same
//! home waits for the first one's count; a walk gives up when its login does.
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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::domain::Quota;
use crate::domain::UsageReport as Usage;
use crate::jail::{Footprint, Jail, Stop, StorageError};
use crate::users::User;

/// Why a reservation was refused.
pub use crate::domain::Refused;

/// The limits of `user`.
pub fn limits_of(user: &User) -> Quota {
    Quota {
        bytes: user.quota_bytes,
        files: user.quota_files,
        max_file_size: user.max_file_size,
    }
}

#[derive(Debug, Default)]
struct Counts {
    used_bytes: u64,
    used_files: u64,
    reserved_bytes: u64,
    reserved_files: u64,
}

/// The usage of one home, shared by every session using it.
#[derive(Debug, Default)]
pub struct Account {
    counts: Mutex<Counts>,
    /// Held (on the blocking pool) while a session measures what a change of the home will
    /// replace or remove and makes that change, so that no other session of the home changes
    /// the same names in between and the measured difference is the real one.
    changes: tokio::sync::Mutex<()>,
}

impl Account {
    fn new(used: Footprint) -> Account {
        Account {
            counts: Mutex::new(Counts {
                used_bytes: used.bytes,
                used_files: used.files,
                ..Counts::default()
            }),
            changes: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Counters stay consistent under a panic elsewhere: every update is one statement.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
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
    pub fn reserve(
        self: &Arc<Self>,
        limits: &Quota,
        file_size: u64,
        bytes: u64,
        new_file: bool,
    ) -> Result<Reservation, Refused> {
        if let Some(max) = limits.max_file_size
            && file_size > max
        {
            return Err(Refused::TooLarge(max));
        }
        let files = u64::from(new_file);
        let mut c = self.lock();
        // Adding no bytes never needs byte room (replacing a file by a smaller one, a
        // directory), even over a lowered quota.
        if let Some(q) = limits.bytes
            && bytes > 0
            && c.used_bytes
                .saturating_add(c.reserved_bytes)
                .saturating_add(bytes)
                > q
        {
            return Err(Refused::Quota("byte quota"));
        }
        if let Some(q) = limits.files
            && files > 0
            && c.used_files + c.reserved_files + files > q
        {
            return Err(Refused::Quota("file quota"));
        }
        c.reserved_bytes += bytes;
        c.reserved_files += files;
        Ok(Reservation {
            account: Arc::clone(self),
            limits: *limits,
            bytes,
            files,
        })
    }

    /// Something appeared outside a reservation (e.g. a kept partial).
    pub fn add(&self, what: Footprint) {
        let mut c = self.lock();
        c.used_bytes = c.used_bytes.saturating_add(what.bytes);
        c.used_files = c.used_files.saturating_add(what.files);
    }

    /// Something went away (removed, replaced, swept).
    pub fn remove(&self, what: Footprint) {
        let mut c = self.lock();
        c.used_bytes = c.used_bytes.saturating_sub(what.bytes);
        c.used_files = c.used_files.saturating_sub(what.files);
    }

    /// The numbers for `usage`, with reservations counted as used.
    pub fn usage(&self, limits: &Quota) -> Usage {
        let c = self.lock();
        Usage {
            used_bytes: Some(c.used_bytes + c.reserved_bytes),
            used_files: Some(c.used_files + c.reserved_files),
            quota_bytes: limits.bytes,
            quota_files: limits.files,
            max_file_size: limits.max_file_size,
            ..Usage::default()
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

/// Room held for an upload or copy in flight. Dropped: released. Committed: becomes usage.
#[derive(Debug)]
pub struct Reservation {
    account: Arc<Account>,
    /// The limits it was reserved under, for [`Reservation::cover`].
    limits: Quota,
    bytes: u64,
    files: u64,
}

impl Reservation {
    /// Right before the change is made, under the change lock: `added` is about to come and
    /// `replaced` (measured now) to go. The reservation was sized from an earlier look at the
    /// target, which another session may have removed or shrunk since; whatever the change
    /// now needs beyond what is reserved is reserved too, or the change is refused. Without
    /// this, overwriting a file that another session removes meanwhile (and fills its room)
    /// would store the whole upload on top of a full quota.
    pub fn cover(&mut self, added: Footprint, replaced: Footprint) -> Result<(), Refused> {
        let more_bytes = added
            .bytes
            .saturating_sub(replaced.bytes)
            .saturating_sub(self.bytes);
        let more_files = added
            .files
            .saturating_sub(replaced.files)
            .saturating_sub(self.files);
        let mut c = self.account.lock();
        if let Some(q) = self.limits.bytes
            && more_bytes > 0
            && c.used_bytes
                .saturating_add(c.reserved_bytes)
                .saturating_add(more_bytes)
                > q
        {
            return Err(Refused::Quota("byte quota"));
        }
        if let Some(q) = self.limits.files
            && more_files > 0
            && c.used_files
                .saturating_add(c.reserved_files)
                .saturating_add(more_files)
                > q
        {
            return Err(Refused::Quota("file quota"));
        }
        c.reserved_bytes = c.reserved_bytes.saturating_add(more_bytes);
        c.reserved_files = c.reserved_files.saturating_add(more_files);
        self.bytes += more_bytes;
        self.files += more_files;
        Ok(())
    }

    /// The change was made: `added` is new in the home (measured, not the estimate that was
    /// reserved) and `removed` went away (a replaced target, as measured when it was
    /// replaced).
    pub fn commit(self, added: Footprint, removed: Footprint) {
        let mut c = self.account.lock();
        c.used_bytes = c
            .used_bytes
            .saturating_add(added.bytes)
            .saturating_sub(removed.bytes);
        c.used_files = c
            .used_files
            .saturating_add(added.files)
            .saturating_sub(removed.files);
        // Drop releases the reservation itself.
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut c = self.account.lock();
        c.reserved_bytes = c.reserved_bytes.saturating_sub(self.bytes);
        c.reserved_files = c.reserved_files.saturating_sub(self.files);
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

/// The live accounts, by home directory: users sharing a home share its usage.
#[derive(Debug, Default)]
pub struct Accounts {
    live: Mutex<HashMap<PathBuf, LiveHome>>,
    /// Signalled when a walk ends, for the logins waiting for it.
    counted: Condvar,
    /// Walks started so far (for tests and debugging).
    walks: std::sync::atomic::AtomicU64,
}

/// How often a login waiting for another login's walk looks at its own [`Stop`].
const COUNT_WAIT_POLL: Duration = Duration::from_millis(50);

impl Accounts {
    /// The account of `home`: the live one, or a new one counted by walking the home (the
    /// stale partials are swept first, `partial_ttl`). Only one walk of a home runs at a
    /// time; a second login waits for it (or for its own `stop`). Returns the account and
    /// what the sweep removed (already taken off the counts). Blocking: call it on the
    /// blocking pool.
    pub fn open(
        &self,
        home: PathBuf,
        jail: &Jail,
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
        let swept = jail.sweep_partials(partial_ttl);
        self.walks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let used = jail.usage_walk(stop)?;
        let account = Arc::new(Account::new(used));
        counting.account = Some(Arc::downgrade(&account));
        drop(counting);
        Ok((account, swept))
    }

    /// Sweeps the stale partials of `home` (for the periodic sweep), taking what goes off
    /// the live account's counts if there is one.
    pub fn sweep(
        &self,
        home: &Path,
        jail: &Jail,
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
fn sweep(account: &Account, jail: &Jail, ttl: Duration) -> Result<Footprint, StorageError> {
    let _changing = account.changing();
    let swept = jail.sweep_partials(ttl)?;
    account.remove(swept);
    Ok(swept)
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
        Arc::new(Account::new(Footprint { bytes, files }))
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
        let first = a.reserve(&LIMITS, 500, 500, true).unwrap();
        // A second upload that would fit alone does not fit next to the first.
        assert_eq!(
            a.reserve(&LIMITS, 500, 500, true).unwrap_err(),
            Refused::Quota("byte quota")
        );
        drop(first);
        let second = a.reserve(&LIMITS, 500, 500, true).unwrap();
        second.commit(fp(500, 1), Footprint::NONE);
        assert_eq!(a.usage(&LIMITS).used_bytes, Some(600));
        assert_eq!(a.usage(&LIMITS).used_files, Some(2));
    }

    #[test]
    fn max_file_size_and_file_count() {
        let a = account(0, 2);
        assert_eq!(
            a.reserve(&LIMITS, 601, 601, true).unwrap_err(),
            Refused::TooLarge(600)
        );
        let r = a.reserve(&LIMITS, 10, 10, true).unwrap();
        assert_eq!(
            a.reserve(&LIMITS, 10, 10, true).unwrap_err(),
            Refused::Quota("file quota")
        );
        // Replacing a file needs no new file slot.
        let over = a.reserve(&LIMITS, 10, 10, false).unwrap();
        drop((r, over));
    }

    #[test]
    fn overwrite_replaces_the_old_size() {
        let a = account(300, 1);
        a.reserve(&LIMITS, 100, 100, false)
            .unwrap()
            .commit(fp(100, 1), fp(300, 1));
        let u = a.usage(&LIMITS);
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
                        accounts.open(home.clone(), &jail, ttl, &stop).unwrap().0
                    })
                })
                .collect();
            logins.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(accounts.walks.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(opened.iter().all(|a| Arc::ptr_eq(a, &opened[0])));
        let u = opened[0].usage(&LIMITS);
        assert_eq!((u.used_bytes, u.used_files), (Some(1500), Some(1000)));
        // Once every session is gone, the next login counts again.
        drop(opened);
        let jail = Jail::open(&home, false).unwrap();
        let ttl = Duration::from_secs(3600);
        let (_again, _) = accounts.open(home.clone(), &jail, ttl, &stop).unwrap();
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
        assert!(accounts.open(home.clone(), &jail, ttl, &stop).is_err());
        let stop = Stop::after(Duration::from_secs(60));
        let (a, _) = accounts.open(home.clone(), &jail, ttl, &stop).unwrap();
        assert_eq!(a.usage(&LIMITS).used_files, Some(2));
    }

    #[test]
    fn unlimited_users_are_never_refused() {
        let a = account(u64::MAX - 1, u64::MAX - 1);
        a.reserve(&Quota::default(), u64::MAX, u64::MAX, true)
            .unwrap();
    }
}
