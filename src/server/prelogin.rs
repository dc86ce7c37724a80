//! The pre-login phase under pressure, after OpenSSH's `MaxStartups` and `LoginGraceTime`.
//!
//! A connection is *pre-login* from accept (or from its PROXY header) until its login succeeds.
//! Pre-login connections cost the server little, but each holds one of the connection slots;
//! without a cap of their own, a few addresses that open connections, say hello and then stay
//! silent until just before the login timeout can hold every slot (issue 12, item 3: 26
//! addresses x 20 connections filled all 512).
//!
//! # The rules
//! - **A separate, smaller cap.** At most [`Startups::full`] connections are pre-login at once
//!   (128 by default, a quarter of the 512 connection slots), so the rest of the slots are
//!   reserved for logged-in sessions.
//! - **Random early drop.** From [`Startups::start`] pre-login connections on (32), a new one is
//!   refused at random with a probability rising linearly from [`Startups::rate`] percent (30)
//!   to 100 % at `full` (sshd's `start:rate:full`). But a source that holds no pre-login
//!   connection is never dropped: a fresh address always gets its first try, however many
//!   connections others hold.
//! - **Eviction at the cap.** When `full` are pre-login, a newcomer takes the place of the
//!   oldest pre-login connection of the source that holds the most, provided that source holds
//!   at least two more than the newcomer's source would. Addresses that hold many slots make
//!   room for one that holds none; a client that has one connection never loses it to one
//!   that has one too.
//! - **A shorter login window under pressure.** While `start` or more are pre-login, every
//!   pre-login connection (old and new) must log in within [`Startups::pressure_login_timeout`]
//!   (10 s) of its start, instead of the normal login timeout (30 s).
//! - **A larger penalty under pressure.** A connection that ends without trying to log in
//!   costs its source `noauth_under_pressure` (5 s) instead of `noauth` (1 s) while under
//!   pressure, and an evicted one costs the same (see `server::penalty`).
//!
//! Without pressure nothing changes: an idle connection (a browser's preconnect, a client that
//! is slow to type) has the whole login window, and closing it unused costs 1 s.
//!
//! Every operation takes the table's mutex for work bounded by `full` (a scan to pick an
//! eviction victim happens only at the cap), never across an await.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::RngExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The pre-login limits (sshd's `MaxStartups start:rate:full`, plus the login window under
/// pressure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Startups {
    /// Pre-login connections from which random early drop begins (and the pressure rules).
    pub start: usize,
    /// Drop probability at `start`, in percent; it rises linearly to 100 at `full`.
    pub rate: u8,
    /// Pre-login connections at most; past it a newcomer evicts or is refused.
    pub full: usize,
    /// The login window while under pressure (counted from each connection's start).
    pub pressure_login_timeout: Duration,
}

impl Default for Startups {
    fn default() -> Self {
        Startups {
            start: 32,
            rate: 30,
            full: 128,
            pressure_login_timeout: Duration::from_secs(10),
        }
    }
}

impl std::str::FromStr for Startups {
    type Err = String;

    /// `START:RATE:FULL` (as sshd's `MaxStartups`) or a bare `FULL` (drop nothing early).
    fn from_str(s: &str) -> Result<Startups, String> {
        let err = || format!("'{s}' is not START:RATE:FULL (e.g. 32:30:128) or FULL");
        let num = |t: &str| t.parse::<usize>().map_err(|_| err());
        let parts: Vec<&str> = s.split(':').collect();
        let (start, rate, full) = match parts.as_slice() {
            [full] => (num(full)?, 100, num(full)?),
            [start, rate, full] => (
                num(start)?,
                rate.parse::<u8>().map_err(|_| err())?,
                num(full)?,
            ),
            _ => return Err(err()),
        };
        if full == 0 || start > full || rate > 100 {
            return Err(format!(
                "'{s}': need 0 < FULL, START <= FULL and RATE <= 100"
            ));
        }
        Ok(Startups {
            start,
            rate,
            full,
            ..Startups::default()
        })
    }
}

/// Why a connection was not admitted to the pre-login phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Random early drop between `start` and `full`.
    EarlyDrop,
    /// `full` reached and nobody holds enough to be evicted.
    Full,
}

/// How a pre-login connection was ended by these rules (its session ends it otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Another source's newcomer took its place.
    Evicted,
    /// It outlived the login window under pressure.
    Expired,
}

#[derive(Debug)]
struct Entry {
    source: IpAddr,
    started: Instant,
    evict: CancellationToken,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<u64, Entry>,
    per_source: HashMap<IpAddr, usize>,
    next_id: u64,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&entry.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        Some(entry)
    }
}

/// The pre-login connections of a server.
#[derive(Debug)]
pub struct Prelogin {
    cfg: Startups,
    /// Held only for bounded bookkeeping; never across an await.
    table: Arc<Mutex<Table>>,
    /// Whether `start` or more are pre-login; waiters shorten their login window on it.
    pressure: watch::Sender<bool>,
}

impl Prelogin {
    /// An empty table. `full` is at least 1 and `start` at most `full`.
    pub fn new(mut cfg: Startups) -> Self {
        cfg.full = cfg.full.max(1);
        cfg.start = cfg.start.min(cfg.full);
        cfg.rate = cfg.rate.min(100);
        Prelogin {
            cfg,
            table: Arc::new(Mutex::new(Table::default())),
            pressure: watch::channel(false).0,
        }
    }

    /// Whether the pre-login phase is under pressure now.
    pub fn under_pressure(&self) -> bool {
        *self.pressure.borrow()
    }

    /// Pre-login connections now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no connection is pre-login.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits a connection from `source` (already grouped: an IPv4 address or IPv6 /64) to the
    /// pre-login phase, evicting another source's connection when at the cap. Returns the
    /// guard that holds its place, or why it was refused; an eviction is reported through the
    /// second value (the evicted source, for its penalty and the log).
    pub fn admit(&self, source: IpAddr) -> (Result<Guard, Refusal>, Option<IpAddr>) {
        let mut t = self.lock();
        let total = t.entries.len();
        let mine = t.per_source.get(&source).copied().unwrap_or(0);
        let mut evicted = None;
        if total >= self.cfg.full {
            // The source holding the most; ties go to the lowest address, for determinism.
            let victim = t
                .per_source
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(s, n)| (*s, *n));
            match victim {
                Some((victim, held)) if held > mine + 1 => {
                    let oldest = t
                        .entries
                        .iter()
                        .filter(|(_, e)| e.source == victim)
                        .min_by_key(|(id, e)| (e.started, **id))
                        .map(|(id, _)| *id);
                    if let Some(entry) = oldest.and_then(|id| t.remove(id)) {
                        entry.evict.cancel();
                        evicted = Some(victim);
                    }
                }
                _ => return (Err(Refusal::Full), None),
            }
        } else if total >= self.cfg.start && mine > 0 {
            let span = (self.cfg.full - self.cfg.start).max(1);
            let rate = u64::from(self.cfg.rate);
            let over = (total - self.cfg.start) as u64;
            // Percent, as sshd computes it: rate + (100 - rate) * (total - start) / span.
            let p = rate + (100 - rate) * over / span as u64;
            if rand::rng().random_range(0..100) < p {
                return (Err(Refusal::EarlyDrop), None);
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        let evict = CancellationToken::new();
        let started = Instant::now();
        t.entries.insert(
            id,
            Entry {
                source,
                started,
                evict: evict.clone(),
            },
        );
        *t.per_source.entry(source).or_insert(0) += 1;
        let n = t.entries.len();
        drop(t);
        self.set_pressure(n);
        let guard = Guard {
            id,
            started,
            evict,
            table: Arc::clone(&self.table),
            pressure: self.pressure.clone(),
            pressure_rx: self.pressure.subscribe(),
            start: self.cfg.start,
            window: self.cfg.pressure_login_timeout,
            released: false,
        };
        (Ok(guard), evicted)
    }

    fn set_pressure(&self, total: usize) {
        set_pressure(&self.pressure, total >= self.cfg.start);
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }
}

fn lock(table: &Mutex<Table>) -> MutexGuard<'_, Table> {
    // The table's two maps are updated together under the lock and nothing in it can panic
    // half-way; keep serving rather than propagate another thread's panic.
    table.lock().unwrap_or_else(PoisonError::into_inner)
}

fn set_pressure(tx: &watch::Sender<bool>, on: bool) {
    tx.send_if_modified(|p| {
        let changed = *p != on;
        *p = on;
        changed
    });
}

/// One connection's place in the pre-login phase; dropping it (or [`Guard::logged_in`]) gives
/// the place back.
#[derive(Debug)]
pub struct Guard {
    id: u64,
    started: Instant,
    evict: CancellationToken,
    table: Arc<Mutex<Table>>,
    pressure: watch::Sender<bool>,
    pressure_rx: watch::Receiver<bool>,
    start: usize,
    window: Duration,
    released: bool,
}

impl Guard {
    /// Completes when these rules end the connection: evicted, or past the login window while
    /// under pressure. Never completes otherwise (the normal login timeout is the session's).
    pub async fn cut(&mut self) -> Cut {
        loop {
            let pressure = *self.pressure_rx.borrow_and_update();
            if pressure {
                let deadline = self.started + self.window;
                tokio::select! {
                    () = self.evict.cancelled() => return Cut::Evicted,
                    () = tokio::time::sleep_until(deadline) => return Cut::Expired,
                    r = self.pressure_rx.changed() => if r.is_err() { std::future::pending::<()>().await },
                }
            } else {
                tokio::select! {
                    () = self.evict.cancelled() => return Cut::Evicted,
                    r = self.pressure_rx.changed() => if r.is_err() { std::future::pending::<()>().await },
                }
            }
        }
    }

    /// The login succeeded: the connection leaves the pre-login phase.
    pub fn logged_in(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        let mut t = lock(&self.table);
        t.remove(self.id);
        let n = t.entries.len();
        drop(t);
        set_pressure(&self.pressure, n >= self.start);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn cfg(start: usize, rate: u8, full: usize) -> Startups {
        Startups {
            start,
            rate,
            full,
            pressure_login_timeout: Duration::from_millis(200),
        }
    }

    #[test]
    fn parses_sshd_syntax() {
        let s: Startups = "10:30:100".parse().unwrap();
        assert_eq!((s.start, s.rate, s.full), (10, 30, 100));
        let s: Startups = "64".parse().unwrap();
        assert_eq!((s.start, s.rate, s.full), (64, 100, 64));
        for bad in [
            "",
            "0",
            "10:30",
            "10:101:100",
            "200:30:100",
            "a:b:c",
            "1:2:3:4",
        ] {
            assert!(bad.parse::<Startups>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_fresh_source_is_never_dropped_early_and_evicts_at_the_cap() {
        let p = Prelogin::new(cfg(2, 100, 4));
        // Source 1 takes two places; from `start` on, its further tries are dropped (rate
        // 100 %), but sources with nothing pre-login get in.
        let mut held = vec![p.admit(ip(1)).0.unwrap(), p.admit(ip(1)).0.unwrap()];
        assert!(p.under_pressure());
        assert_eq!(p.admit(ip(1)).0.unwrap_err(), Refusal::EarlyDrop);
        held.push(p.admit(ip(2)).0.unwrap());
        held.push(p.admit(ip(3)).0.unwrap());
        assert_eq!(p.len(), 4);
        // Full: source 4 (holds none) evicts the oldest of source 1 (holds two, 2 > 0 + 1).
        let (g, evicted) = p.admit(ip(4));
        held.push(g.unwrap());
        assert_eq!(evicted, Some(ip(1)));
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(1), held[0].cut())
                .await
                .unwrap(),
            Cut::Evicted
        );
        assert_eq!(p.len(), 4);
        // Now everyone holds one: nobody holds two more than a newcomer, so it is refused,
        // also a fresh one.
        assert_eq!(p.admit(ip(5)).0.unwrap_err(), Refusal::Full);
        // Places come back when guards go.
        held.truncate(2);
        assert_eq!(p.len(), 1);
        assert!(!p.under_pressure());
        let g = held.pop().unwrap();
        g.logged_in();
        assert!(p.is_empty());
    }

    #[tokio::test]
    async fn the_login_window_shrinks_under_pressure_also_for_older_connections() {
        let p = Prelogin::new(cfg(2, 0, 10));
        let mut first = p.admit(ip(1)).0.unwrap();
        // No pressure: no cut, however long.
        assert!(
            tokio::time::timeout(Duration::from_millis(400), first.cut())
                .await
                .is_err()
        );
        // A second connection makes it pressure: the first is past its 200 ms window already.
        let _second = p.admit(ip(2)).0.unwrap();
        assert_eq!(
            tokio::time::timeout(Duration::from_millis(100), first.cut())
                .await
                .unwrap(),
            Cut::Expired
        );
    }

    #[test]
    fn random_early_drop_rises_from_rate_to_all() {
        let p = Prelogin::new(cfg(10, 30, 110));
        let mut held: Vec<Guard> = (0..10).map(|i| p.admit(ip(i)).0.unwrap()).collect();
        // At `start`, a source already in is dropped about 30 % of the time.
        let mut dropped = 0;
        for _ in 0..1000 {
            match p.admit(ip(0)).0 {
                Ok(g) => drop(g),
                Err(_) => dropped += 1,
            }
        }
        assert!((200..400).contains(&dropped), "{dropped}");
        // Near `full`, nearly always.
        for i in 0..99u32 {
            let [.., a, b] = i.to_be_bytes();
            held.push(p.admit(IpAddr::from([10, 0, a, b])).0.unwrap());
        }
        let dropped = (0..200).filter(|_| p.admit(ip(0)).0.is_err()).count();
        assert!(dropped >= 190, "{dropped}");
    }
}
