//! The state of one server on its own: tables in memory, guarded by a mutex held only for a
//! lookup and an update (never across an await), with leases that expire as the contract
//! says (an expired lease is reclaimed by the next call that needs its room or its name).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::{LeaseId, NameLocks, PartialIndex, PartialRecord, StateError, Usage, UsageLedger};
use crate::domain::{BoxFuture, Footprint, Quota, Refused};

/// Locks a table; a poisoned lock still holds consistent data (every update is whole).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The deadline `ttl` from now, saturating (a ten-year lease is as good as forever).
fn deadline(ttl: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(ttl)
        .or_else(|| now.checked_add(Duration::from_secs(10 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

/// Both parts of `a` less those of `b`, saturating.
fn minus(a: Footprint, b: Footprint) -> Footprint {
    Footprint {
        bytes: a.bytes.saturating_sub(b.bytes),
        files: a.files.saturating_sub(b.files),
    }
}

#[derive(Debug)]
struct Held {
    home: String,
    quota: Quota,
    held: Footprint,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Ledger {
    homes: HashMap<String, Usage>,
    leases: HashMap<u64, Held>,
    next: u64,
}

impl Ledger {
    /// Gives back the room of every expired lease.
    fn reclaim(&mut self, now: Instant) {
        let gone: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, h)| h.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: u64) -> Option<Held> {
        let held = self.leases.remove(&id)?;
        if let Some(u) = self.homes.get_mut(&held.home) {
            u.reserved = minus(u.reserved, held.held);
        }
        Some(held)
    }

    /// Whether `more` fits `quota` in `home` beside everything used and reserved.
    fn fits(&self, home: &str, quota: &Quota, more: Footprint) -> Result<(), Refused> {
        let u = self.homes.get(home).copied().unwrap_or_default();
        if let Some(q) = quota.bytes
            && more.bytes > 0
            && u.used
                .bytes
                .saturating_add(u.reserved.bytes)
                .saturating_add(more.bytes)
                > q
        {
            return Err(Refused::Quota("byte quota"));
        }
        if let Some(q) = quota.files
            && more.files > 0
            && u.used
                .files
                .saturating_add(u.reserved.files)
                .saturating_add(more.files)
                > q
        {
            return Err(Refused::Quota("file quota"));
        }
        Ok(())
    }

    /// The live lease `id` (an expired one is reclaimed and reported gone).
    fn live(&mut self, id: u64, now: Instant) -> Result<&mut Held, StateError> {
        if self.leases.get(&id).is_some_and(|h| h.expires <= now) {
            self.drop_lease(id);
        }
        self.leases.get_mut(&id).ok_or(StateError::LeaseGone)
    }
}

/// [`UsageLedger`] in memory.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    inner: Mutex<Ledger>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Arc<MemoryLedger> {
        Arc::new(MemoryLedger::default())
    }

    /// Leases alive or not yet reclaimed (for tests and debugging).
    pub fn leases(&self) -> usize {
        lock(&self.inner).leases.len()
    }
}

impl UsageLedger for MemoryLedger {
    fn usage(&self, home: &str) -> BoxFuture<'_, Result<Option<Usage>, StateError>> {
        let mut l = lock(&self.inner);
        l.reclaim(Instant::now());
        let u = l.homes.get(home).copied();
        Box::pin(async move { Ok(u) })
    }

    fn set_counted(&self, home: &str, used: Footprint) -> BoxFuture<'_, Result<(), StateError>> {
        lock(&self.inner)
            .homes
            .entry(home.to_string())
            .or_default()
            .used = used;
        Box::pin(async { Ok(()) })
    }

    fn reserve(
        &self,
        home: &str,
        quota: Quota,
        file_size: u64,
        need: Footprint,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<LeaseId, StateError>> {
        let result = (|| {
            if let Some(max) = quota.max_file_size
                && file_size > max
            {
                return Err(StateError::Refused(Refused::TooLarge(max)));
            }
            let mut l = lock(&self.inner);
            l.reclaim(Instant::now());
            l.fits(home, &quota, need).map_err(StateError::Refused)?;
            let u = l.homes.entry(home.to_string()).or_default();
            u.reserved = u.reserved.plus(need);
            l.next += 1;
            let id = l.next;
            l.leases.insert(
                id,
                Held {
                    home: home.to_string(),
                    quota,
                    held: need,
                    expires: deadline(ttl),
                },
            );
            Ok(LeaseId(id))
        })();
        Box::pin(async move { result })
    }

    fn grow(&self, lease: LeaseId, more: Footprint) -> BoxFuture<'_, Result<(), StateError>> {
        let result = (|| {
            let mut l = lock(&self.inner);
            let now = Instant::now();
            l.reclaim(now);
            let (home, quota) = {
                let h = l.live(lease.0, now)?;
                (h.home.clone(), h.quota)
            };
            l.fits(&home, &quota, more).map_err(StateError::Refused)?;
            let h = l.live(lease.0, now)?;
            h.held = h.held.plus(more);
            let u = l.homes.entry(home).or_default();
            u.reserved = u.reserved.plus(more);
            Ok(())
        })();
        Box::pin(async move { result })
    }

    fn commit(
        &self,
        lease: LeaseId,
        added: Footprint,
        removed: Footprint,
    ) -> BoxFuture<'_, Result<(), StateError>> {
        let result = (|| {
            let mut l = lock(&self.inner);
            let now = Instant::now();
            l.live(lease.0, now)?;
            let held = l.drop_lease(lease.0).ok_or(StateError::LeaseGone)?;
            let u = l.homes.entry(held.home).or_default();
            u.used = minus(u.used.plus(added), removed);
            Ok(())
        })();
        Box::pin(async move { result })
    }

    fn renew(&self, lease: LeaseId, ttl: Duration) -> BoxFuture<'_, Result<(), StateError>> {
        let result = (|| {
            let mut l = lock(&self.inner);
            l.live(lease.0, Instant::now())?.expires = deadline(ttl);
            Ok(())
        })();
        Box::pin(async move { result })
    }

    fn release(&self, lease: LeaseId) {
        lock(&self.inner).drop_lease(lease.0);
    }

    fn adjust(
        &self,
        home: &str,
        added: Footprint,
        removed: Footprint,
    ) -> BoxFuture<'_, Result<(), StateError>> {
        let mut l = lock(&self.inner);
        let u = l.homes.entry(home.to_string()).or_default();
        u.used = minus(u.used.plus(added), removed);
        Box::pin(async { Ok(()) })
    }
}

#[derive(Debug, Default)]
struct Names {
    by_name: HashMap<(String, String), (u64, Instant)>,
    by_lease: HashMap<u64, (String, String)>,
    next: u64,
}

/// [`NameLocks`] in memory.
#[derive(Debug, Default)]
pub struct MemoryNameLocks {
    inner: Mutex<Names>,
}

impl MemoryNameLocks {
    /// No name held.
    pub fn new() -> Arc<MemoryNameLocks> {
        Arc::new(MemoryNameLocks::default())
    }
}

impl NameLocks for MemoryNameLocks {
    fn try_lock(
        &self,
        home: &str,
        name: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<LeaseId>, StateError>> {
        let mut n = lock(&self.inner);
        let key = (home.to_string(), name.to_string());
        let now = Instant::now();
        let taken = match n.by_name.get(&key) {
            Some(&(_, expires)) if expires > now => None,
            stale => {
                if let Some(&(old, _)) = stale {
                    n.by_lease.remove(&old);
                }
                n.next += 1;
                let id = n.next;
                n.by_name.insert(key.clone(), (id, deadline(ttl)));
                n.by_lease.insert(id, key);
                Some(LeaseId(id))
            }
        };
        Box::pin(async move { Ok(taken) })
    }

    fn renew(&self, lease: LeaseId, ttl: Duration) -> BoxFuture<'_, Result<(), StateError>> {
        let mut n = lock(&self.inner);
        let now = Instant::now();
        let result = match n.by_lease.get(&lease.0).cloned() {
            Some(key) => match n.by_name.get_mut(&key) {
                Some((id, expires)) if *id == lease.0 && *expires > now => {
                    *expires = deadline(ttl);
                    Ok(())
                }
                _ => Err(StateError::LeaseGone),
            },
            None => Err(StateError::LeaseGone),
        };
        Box::pin(async move { result })
    }

    fn unlock(&self, lease: LeaseId) {
        let mut n = lock(&self.inner);
        if let Some(key) = n.by_lease.remove(&lease.0)
            && n.by_name.get(&key).is_some_and(|(id, _)| *id == lease.0)
        {
            n.by_name.remove(&key);
        }
    }
}

/// [`PartialIndex`] in memory.
#[derive(Debug, Default)]
pub struct MemoryPartials {
    inner: Mutex<HashMap<String, PartialRecord>>,
}

impl MemoryPartials {
    /// No partial kept.
    pub fn new() -> Arc<MemoryPartials> {
        Arc::new(MemoryPartials::default())
    }
}

impl PartialIndex for MemoryPartials {
    fn put(&self, key: &str, record: PartialRecord) -> BoxFuture<'_, Result<(), StateError>> {
        lock(&self.inner).insert(key.to_string(), record);
        Box::pin(async { Ok(()) })
    }

    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<PartialRecord>, StateError>> {
        let r = lock(&self.inner).get(key).cloned();
        Box::pin(async move { Ok(r) })
    }

    fn take(&self, key: &str) -> BoxFuture<'_, Result<Option<PartialRecord>, StateError>> {
        let r = lock(&self.inner).remove(key);
        Box::pin(async move { Ok(r) })
    }

    fn kept_before(
        &self,
        home: &str,
        before: SystemTime,
    ) -> BoxFuture<'_, Result<Vec<(String, PartialRecord)>, StateError>> {
        let mut found: Vec<(String, PartialRecord)> = lock(&self.inner)
            .iter()
            .filter(|(_, r)| r.home == home && r.kept_at < before)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Box::pin(async move { Ok(found) })
    }
}
