//! Per-user quotas: bytes, files and the largest single file.
//!
//! Usage is computed by walking the home when the first session of a user logs in (after the
//! stale partials are swept), and then kept in memory, shared by all of that user's sessions,
//! and updated as files are committed, replaced, removed, or kept as partials. When the last
//! session ends the numbers are dropped, so the next login recounts: files an admin changed by
//! hand are seen then, and nothing needs to be persisted or can go stale across restarts.
//!
//! An upload reserves its declared size before the first byte is written, so uploads in
//! flight count: two concurrent uploads cannot together overshoot a quota. Kept partial
//! uploads are files in the home and count like any other.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::jail::{Jail, StorageError};
use crate::protocol::Usage;
use crate::users::User;

/// The limits of one user, copied from the users file at login.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes (`None`: unlimited).
    pub bytes: Option<u64>,
    /// Most files (`None`: unlimited).
    pub files: Option<u64>,
    /// Largest single file (`None`: unlimited).
    pub max_file_size: Option<u64>,
}

impl Limits {
    /// The limits of `user`.
    pub fn of(user: &User) -> Limits {
        Limits {
            bytes: user.quota_bytes,
            files: user.quota_files,
            max_file_size: user.max_file_size,
        }
    }
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The file is larger than `max_file_size`.
    TooLarge(u64),
    /// Bytes or files would go over the quota.
    Quota(&'static str),
}

#[derive(Debug, Default)]
struct Counts {
    used_bytes: u64,
    used_files: u64,
    reserved_bytes: u64,
    reserved_files: u64,
}

/// The usage of one home, shared by every session using it.
#[derive(Debug)]
pub struct Account {
    counts: Mutex<Counts>,
}

impl Account {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Counters stay consistent under a panic elsewhere: every update is one statement.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `bytes` more room (and a file slot if `new_file`) for a file that will be
    /// `file_size` bytes, or says why it does not fit. An upload that replaces a file
    /// reserves only what it adds. The reservation is released when dropped.
    pub fn reserve(
        self: &Arc<Self>,
        limits: &Limits,
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
        if let Some(q) = limits.bytes
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
            bytes,
            files,
        })
    }

    /// A file of `bytes` appeared outside a reservation (e.g. a kept partial).
    pub fn add(&self, bytes: u64, files: u64) {
        let mut c = self.lock();
        c.used_bytes = c.used_bytes.saturating_add(bytes);
        c.used_files = c.used_files.saturating_add(files);
    }

    /// Files of `bytes` in all went away (removed, replaced, swept).
    pub fn remove(&self, bytes: u64, files: u64) {
        let mut c = self.lock();
        c.used_bytes = c.used_bytes.saturating_sub(bytes);
        c.used_files = c.used_files.saturating_sub(files);
    }

    /// The numbers for `usage`, with reservations counted as used.
    pub fn usage(&self, limits: &Limits) -> Usage {
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

/// Room held for an upload or copy in flight. Dropped: released. Committed: becomes usage.
#[derive(Debug)]
pub struct Reservation {
    account: Arc<Account>,
    bytes: u64,
    files: u64,
}

impl Reservation {
    /// The file was committed: `added` bytes are new (the reserved file slot, if any, is now
    /// a file), and `removed_bytes`/`removed_files` of older files went away (a replaced
    /// target, a consumed partial).
    pub fn commit(self, added: u64, removed_bytes: u64, removed_files: u64) {
        let mut c = self.account.lock();
        c.used_bytes = c
            .used_bytes
            .saturating_add(added)
            .saturating_sub(removed_bytes);
        c.used_files = (c.used_files + self.files).saturating_sub(removed_files);
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

/// The live accounts, by home directory: users sharing a home share its usage.
#[derive(Debug, Default)]
pub struct Accounts {
    live: Mutex<HashMap<PathBuf, Weak<Account>>>,
}

impl Accounts {
    /// The account of `home`, counting its files if no live session holds it. Blocking (it
    /// may walk the home): call it on the blocking pool.
    pub fn open(&self, home: PathBuf, jail: &Jail) -> Result<Arc<Account>, StorageError> {
        if let Some(a) = self.lock().get(&home).and_then(Weak::upgrade) {
            return Ok(a);
        }
        let (bytes, files) = jail.usage_walk()?;
        let mut live = self.lock();
        // Another login may have counted meanwhile; keep the first so all share one.
        if let Some(a) = live.get(&home).and_then(Weak::upgrade) {
            return Ok(a);
        }
        live.retain(|_, w| w.strong_count() > 0);
        let account = Arc::new(Account {
            counts: Mutex::new(Counts {
                used_bytes: bytes,
                used_files: files,
                ..Counts::default()
            }),
        });
        live.insert(home, Arc::downgrade(&account));
        Ok(account)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PathBuf, Weak<Account>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(bytes: u64, files: u64) -> Arc<Account> {
        Arc::new(Account {
            counts: Mutex::new(Counts {
                used_bytes: bytes,
                used_files: files,
                ..Counts::default()
            }),
        })
    }

    const LIMITS: Limits = Limits {
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
        second.commit(500, 0, 0);
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
            .commit(100, 300, 0);
        let u = a.usage(&LIMITS);
        assert_eq!((u.used_bytes, u.used_files), (Some(100), Some(1)));
    }

    #[test]
    fn unlimited_users_are_never_refused() {
        let a = account(u64::MAX - 1, u64::MAX - 1);
        a.reserve(&Limits::default(), u64::MAX, u64::MAX, true)
            .unwrap();
    }
}
