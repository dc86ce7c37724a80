//! The state of one server on its own: tables in memory, guarded by a mutex held only for a
//! lookup and an update (never across an await), with leases that expire as the contract
//! says (an expired lease is reclaimed by the next call that needs its room or its name).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::{
    CountClaim, Counting, NameLockId, NameLocks, PartialIndex, PartialRecord, ReservationId,
    StateError, Usage, UsageLedger,
};
use crate::domain::{BoxFuture, Footprint, Quota, Refused};

/// API tokens in memory live beside their trait.
pub use super::tokens::MemoryTokens;

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
    /// Counted homes and what they hold.
    used: HashMap<String, Footprint>,
    /// Room held by live reservations, by home (kept when a home is forgotten).
    reserved: HashMap<String, Footprint>,
    /// Homes being counted: the claim and its deadline.
    counting: HashMap<String, (u64, Instant)>,
    leases: HashMap<u64, Held>,
    next: u64,
}

impl Ledger {
    fn next_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Gives back the room of every expired reservation and drops expired count claims.
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
        self.counting.retain(|_, (_, expires)| *expires > now);
    }

    fn drop_lease(&mut self, id: u64) -> Option<Held> {
        let held = self.leases.remove(&id)?;
        if let Some(r) = self.reserved.get_mut(&held.home) {
            *r = minus(*r, held.held);
            if *r == Footprint::NONE {
                self.reserved.remove(&held.home);
            }
        }
        Some(held)
    }

    fn usage(&self, home: &str) -> Option<Usage> {
        let used = *self.used.get(home)?;
        let reserved = self.reserved.get(home).copied().unwrap_or_default();
        Some(Usage { used, reserved })
    }

    /// Whether `more` fits `quota` in `home` beside everything used and reserved.
    fn fits(&self, home: &str, quota: &Quota, more: Footprint) -> Result<(), StateError> {
        let u = self.usage(home).ok_or(StateError::NotCounted)?;
        let over = |used: u64, reserved: u64, more: u64, q: Option<u64>| {
            q.is_some_and(|q| more > 0 && used.saturating_add(reserved).saturating_add(more) > q)
        };
        if over(u.used.bytes, u.reserved.bytes, more.bytes, quota.bytes) {
            return Err(StateError::Refused(Refused::Quota("byte quota")));
        }
        if over(u.used.files, u.reserved.files, more.files, quota.files) {
            return Err(StateError::Refused(Refused::Quota("file quota")));
        }
        Ok(())
    }

    /// The live reservation `id` (an expired one is reclaimed and reported gone).
    fn live(&mut self, id: u64, now: Instant) -> Result<&mut Held, StateError> {
        if self.leases.get(&id).is_some_and(|h| h.expires <= now) {
            self.drop_lease(id);
        }
        self.leases.get_mut(&id).ok_or(StateError::LeaseGone)
    }

    /// Applies a measured change to a counted home (an uncounted one will be counted).
    fn apply(&mut self, home: &str, added: Footprint, removed: Footprint) {
        if let Some(u) = self.used.get_mut(home) {
            *u = minus(u.plus(added), removed);
        }
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

    /// Reservations alive or not yet reclaimed (for tests and debugging).
    pub fn leases(&self) -> usize {
        lock(&self.inner).leases.len()
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Ledger, Instant) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let mut l = lock(&self.inner);
        let now = Instant::now();
        l.reclaim(now);
        f(&mut l, now)
    }
}

/// A future already done: the in-memory tables do their work when called.
fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

impl UsageLedger for MemoryLedger {
    fn usage(&self, home: &str) -> BoxFuture<'_, Result<Option<Usage>, StateError>> {
        ready(self.with(|l, _| Ok(l.usage(home))))
    }

    fn claim_count(
        &self,
        home: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Counting, StateError>> {
        ready(self.with(|l, _| {
            if let Some(u) = l.usage(home) {
                return Ok(Counting::Known(u));
            }
            if l.counting.contains_key(home) {
                return Ok(Counting::Busy);
            }
            let id = l.next_id();
            l.counting.insert(home.to_string(), (id, deadline(ttl)));
            Ok(Counting::Yours(CountClaim(id)))
        }))
    }

    fn set_counted(
        &self,
        claim: CountClaim,
        used: Footprint,
    ) -> BoxFuture<'_, Result<(), StateError>> {
        ready(self.with(|l, _| {
            let home = l
                .counting
                .iter()
                .find(|(_, (id, _))| *id == claim.0)
                .map(|(home, _)| home.clone())
                .ok_or(StateError::LeaseGone)?;
            l.counting.remove(&home);
            l.used.insert(home, used);
            Ok(())
        }))
    }

    fn abandon_count(&self, claim: CountClaim) {
        lock(&self.inner)
            .counting
            .retain(|_, (id, _)| *id != claim.0);
    }

    fn forget(&self, home: &str) -> BoxFuture<'_, Result<(), StateError>> {
        ready(self.with(|l, _| {
            l.used.remove(home);
            Ok(())
        }))
    }

    fn reserve(
        &self,
        home: &str,
        quota: Quota,
        file_size: u64,
        need: Footprint,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<ReservationId, StateError>> {
        ready(self.with(|l, _| {
            if let Some(max) = quota.max_file_size
                && file_size > max
            {
                return Err(StateError::Refused(Refused::TooLarge(max)));
            }
            l.fits(home, &quota, need)?;
            let r = l.reserved.entry(home.to_string()).or_default();
            *r = r.plus(need);
            let id = l.next_id();
            l.leases.insert(
                id,
                Held {
                    home: home.to_string(),
                    quota,
                    held: need,
                    expires: deadline(ttl),
                },
            );
            Ok(ReservationId(id))
        }))
    }

    fn grow(&self, id: ReservationId, more: Footprint) -> BoxFuture<'_, Result<(), StateError>> {
        ready(self.with(|l, now| {
            let (home, quota) = {
                let h = l.live(id.0, now)?;
                (h.home.clone(), h.quota)
            };
            l.fits(&home, &quota, more)?;
            let h = l.live(id.0, now)?;
            h.held = h.held.plus(more);
            let r = l.reserved.entry(home).or_default();
            *r = r.plus(more);
            Ok(())
        }))
    }

    fn renew(&self, id: ReservationId, ttl: Duration) -> BoxFuture<'_, Result<(), StateError>> {
        ready(self.with(|l, now| {
            l.live(id.0, now)?.expires = deadline(ttl);
            Ok(())
        }))
    }

    fn commit(
        &self,
        home: &str,
        id: ReservationId,
        added: Footprint,
        removed: Footprint,
    ) -> BoxFuture<'_, Result<(), StateError>> {
        ready(self.with(|l, _| {
            l.drop_lease(id.0);
            l.apply(home, added, removed);
            Ok(())
        }))
    }

    fn release(&self, id: ReservationId) -> BoxFuture<'_, Result<(), StateError>> {
        self.release_soon(id);
        ready(Ok(()))
    }

    fn release_soon(&self, id: ReservationId) {
        lock(&self.inner).drop_lease(id.0);
    }

    fn adjust(
        &self,
        home: &str,
        added: Footprint,
        removed: Footprint,
    ) -> BoxFuture<'_, Result<(), StateError>> {
        ready(self.with(|l, _| {
            l.apply(home, added, removed);
            Ok(())
        }))
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

impl MemoryNameLocks {
    fn drop_lock(&self, id: NameLockId) {
        let mut n = lock(&self.inner);
        if let Some(key) = n.by_lease.remove(&id.0)
            && n.by_name.get(&key).is_some_and(|(held, _)| *held == id.0)
        {
            n.by_name.remove(&key);
        }
    }
}

impl NameLocks for MemoryNameLocks {
    fn try_lock(
        &self,
        home: &str,
        name: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<NameLockId>, StateError>> {
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
                Some(NameLockId(id))
            }
        };
        ready(Ok(taken))
    }

    fn renew(&self, id: NameLockId, ttl: Duration) -> BoxFuture<'_, Result<(), StateError>> {
        let mut n = lock(&self.inner);
        let now = Instant::now();
        let result = match n.by_lease.get(&id.0).cloned() {
            Some(key) => match n.by_name.get_mut(&key) {
                Some((held, expires)) if *held == id.0 && *expires > now => {
                    *expires = deadline(ttl);
                    Ok(())
                }
                _ => Err(StateError::LeaseGone),
            },
            None => Err(StateError::LeaseGone),
        };
        ready(result)
    }

    fn unlock(&self, id: NameLockId) -> BoxFuture<'_, Result<(), StateError>> {
        self.drop_lock(id);
        ready(Ok(()))
    }

    fn unlock_soon(&self, id: NameLockId) {
        self.drop_lock(id);
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
    fn put(
        &self,
        key: &str,
        record: PartialRecord,
    ) -> BoxFuture<'_, Result<Option<PartialRecord>, StateError>> {
        ready(Ok(lock(&self.inner).insert(key.to_string(), record)))
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
