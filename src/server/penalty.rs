//! Penalties per source address, after OpenSSH 9.8's `PerSourcePenalties`.
//!
//! Password guessers, scanners and clients that hold a connection without logging in each
//! earn their source some penalty time. A source whose penalty has built up past a threshold
//! is refused at accept, before TLS and before any argon2 work, until the penalty runs out.
//!
//! # How penalty time works
//! - Each source has a deadline, `expires_at`. An offence moves it to
//!   `max(now, expires_at) + amount`: penalty time adds up, and it drains away as real time
//!   passes. The remaining penalty, `expires_at - now`, never exceeds [`PenaltyConfig::max`].
//! - A source is banned once its remaining penalty **exceeds** [`PenaltyConfig::min_before_ban`]
//!   Strictly, as in sshd: with the defaults, three quick failed logins (3 x 5 s = 15 s) are
//!   still forgiven and a fourth is not. A single typo never bans.
//! - Once banned, a source stays banned until its deadline passes, even while the remaining
//!   time drains below the threshold (sshd does the same). Otherwise a ban would last only
//!   for the part of the penalty above the threshold.
//! - When the deadline passes, the source starts from nothing again.
//! - Connections refused at accept earn nothing: refusing costs the server almost nothing,
//!   and the ban then simply runs out.
//! - Sources are addresses grouped by prefix: IPv4 per address (`/32`) and IPv6 per `/64`
//!   by default, since one IPv6 host usually controls a whole `/64`. IPv4-mapped IPv6
//!   addresses (`::ffff:a.b.c.d`, as a dual-stack socket reports IPv4 peers) count as the
//!   IPv4 address. Addresses in [`PenaltyConfig::exempt`] are never penalised.
//! - The table is bounded by [`PenaltyConfig::max_sources`]. A new source that finds it full
//!   displaces the entry that expires soonest (expired entries first), but only if that
//!   entry expires before the newcomer's would; otherwise the newcomer is not tracked. A
//!   flood of fresh addresses therefore cannot push out long bans with short penalties.
//!
//! # Offences (what the server should record)
//! - [`Offence::AuthFail`]: a failed login attempt. Recording each attempt (rather than once
//!   per connection, as sshd does) makes a fourth wrong password in quick succession a ban,
//!   whether or not the guesser reconnects in between.
//! - [`Offence::NoAuth`]: a connection that ended without any login attempt.
//! - [`Offence::NoAuthUnderPressure`]: the same while the pre-login phase is under pressure
//!   (`server::prelogin`), or a pre-login connection evicted to make room for another
//!   source's; 5 s instead of 1 s, since holding a slot silently is then the attack.
//! - [`Offence::GraceExceeded`]: a TLS handshake or login that ran out of time.
//! - [`Offence::ProtocolError`]: anything that is not a well-behaved ferry client: no TLS, a
//!   failed handshake, the wrong ALPN, a malformed or oversized frame, a request out of order.
//!   Defaults to 5 s, like a failed password: it is a scanner or a broken client, and neither
//!   deserves more tries than a guesser; one mistake still never bans.
//!
//! Behind a load balancer (`--proxy-protocol`), check and record the address the PROXY header
//! names, and do not penalise a missing or bad PROXY header: the socket peer is then the
//! balancer itself, and banning it would lock everyone out.
//!
//! Every operation takes the table's mutex for O(log n) work (a hash lookup plus a B-tree
//! update, and at most a handful of expired entries swept), so it never blocks for long.
//! Callers pass `now` so that tests need no sleeps.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Expired entries swept per call: enough to keep up with insertions (each call adds at most
/// one), small enough that no single call stalls.
const PURGE_BATCH: usize = 8;
/// Upper bound on every configured duration, so deadlines cannot overflow `Instant`.
const MAX_CONFIG_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What each offence costs and how the table is bounded. The defaults follow sshd.
#[derive(Debug, Clone)]
pub struct PenaltyConfig {
    /// Per failed login attempt (sshd: `authfail`, 5 s).
    pub authfail: Duration,
    /// Per connection that ended without a login attempt (sshd: `noauth`, 1 s).
    pub noauth: Duration,
    /// The same while the pre-login phase is under pressure, and per pre-login connection
    /// evicted to make room (ferry's own; 5 s, like a failed password).
    pub noauth_under_pressure: Duration,
    /// Per handshake or login that timed out (sshd: `grace-exceeded`, 10 s).
    pub grace_exceeded: Duration,
    /// Per protocol violation (ferry's own; 5 s).
    pub protocol_error: Duration,
    /// A ban starts once the remaining penalty exceeds this (sshd: `min`, 15 s).
    pub min_before_ban: Duration,
    /// The most penalty a source can hold, so the longest ban (sshd: `max`, 600 s).
    pub max: Duration,
    /// Most sources tracked at once (sshd: `max-sources4/6`, 65536). An entry costs about
    /// 200 bytes across the two indexes, so the default caps the table near 13 MiB.
    pub max_sources: usize,
    /// IPv4 addresses sharing this many leading bits are one source (0..=32; default 32).
    pub ipv4_prefix: u8,
    /// IPv6 addresses sharing this many leading bits are one source (0..=128; default 64).
    pub ipv6_prefix: u8,
    /// Networks never penalised (e.g. a monitoring host). Empty by default.
    pub exempt: Vec<IpNet>,
}

impl Default for PenaltyConfig {
    fn default() -> Self {
        PenaltyConfig {
            authfail: Duration::from_secs(5),
            noauth: Duration::from_secs(1),
            noauth_under_pressure: Duration::from_secs(5),
            grace_exceeded: Duration::from_secs(10),
            protocol_error: Duration::from_secs(5),
            min_before_ban: Duration::from_secs(15),
            max: Duration::from_secs(600),
            max_sources: 65536,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            exempt: Vec::new(),
        }
    }
}

impl PenaltyConfig {
    /// The penalty time an offence adds.
    pub fn amount(&self, what: Offence) -> Duration {
        match what {
            Offence::AuthFail => self.authfail,
            Offence::NoAuth => self.noauth,
            Offence::NoAuthUnderPressure => self.noauth_under_pressure,
            Offence::GraceExceeded => self.grace_exceeded,
            Offence::ProtocolError => self.protocol_error,
        }
    }
}

/// Something a source did that earns penalty time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offence {
    /// A failed login attempt.
    AuthFail,
    /// A connection that ended without a login attempt.
    NoAuth,
    /// The same while too many connections were not logged in, or a pre-login connection
    /// evicted to make room for another source's.
    NoAuthUnderPressure,
    /// A handshake or login that ran out of time.
    GraceExceeded,
    /// A protocol violation (no TLS, wrong ALPN, malformed frames, ...).
    ProtocolError,
}

impl Offence {
    /// A short name for logs, in sshd's spelling where it has one.
    pub fn as_str(self) -> &'static str {
        match self {
            Offence::AuthFail => "authfail",
            Offence::NoAuth => "noauth",
            Offence::NoAuthUnderPressure => "noauth-pressure",
            Offence::GraceExceeded => "grace-exceeded",
            Offence::ProtocolError => "protocol-error",
        }
    }
}

impl fmt::Display for Offence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP network: an address and a prefix length, with the host bits cleared. The `ipnet`
/// crate does the arithmetic; this type adds what ferry needs on top: a bare address parses
/// as a single host, and an IPv4-mapped IPv6 address is matched as the IPv4 address it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet(ipnet::IpNet);

impl IpNet {
    /// The network of `prefix` leading bits around `addr`, or `None` if the prefix is longer
    /// than the address (32 for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Option<IpNet> {
        ipnet::IpNet::new(addr, prefix)
            .ok()
            .map(|net| IpNet(net.trunc()))
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.0.network()
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether `addr` lies in this network. An IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(&addr.to_canonical())
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix())
    }
}

/// `addr` as a network of one host.
fn host(addr: IpAddr) -> IpNet {
    let prefix = if addr.is_ipv4() { 32 } else { 128 };
    // A full-length prefix always fits its own family.
    IpNet(ipnet::IpNet::new(addr, prefix).unwrap_or_default())
}

/// The source network of `addr`: IPv4-mapped IPv6 counts as IPv4, then the leading
/// `ipv4_prefix` or `ipv6_prefix` bits. Connection caps, the pre-login cap and penalties all
/// group addresses this way. `None` if a prefix is longer than its family's addresses.
pub fn source_net(addr: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> Option<IpNet> {
    let addr = addr.to_canonical();
    let prefix = match addr {
        IpAddr::V4(_) => ipv4_prefix,
        IpAddr::V6(_) => ipv6_prefix,
    };
    IpNet::new(addr, prefix)
}

/// The error of parsing an [`IpNet`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid network {0:?}: expected an address or address/prefix")]
pub struct IpNetParseError(String);

impl FromStr for IpNet {
    type Err = IpNetParseError;

    /// `192.0.2.0/24`, `2001:db8::/32`, or a bare address (a single host).
    fn from_str(s: &str) -> Result<IpNet, IpNetParseError> {
        let err = || IpNetParseError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let prefix = match prefix {
            // Digits only: `u8::from_str` would also take a leading '+'.
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| err())?
            }
            Some(_) => return Err(err()),
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        IpNet::new(addr, prefix).ok_or_else(err)
    }
}

/// A source as the table keys it: the address masked to its configured prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum SourceKey {
    V4(u32),
    V6(u128),
}

impl SourceKey {
    /// The source's network address (the prefix's first address).
    fn addr(self) -> IpAddr {
        match self {
            SourceKey::V4(a) => IpAddr::V4(std::net::Ipv4Addr::from_bits(a)),
            SourceKey::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from_bits(a)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    expires_at: Instant,
    /// Set once the penalty exceeded the threshold; stays set until the entry expires.
    active: bool,
}

/// The table proper; always changed as a whole under the mutex.
#[derive(Debug, Default)]
struct Table {
    by_source: HashMap<SourceKey, Entry>,
    /// The same entries ordered by deadline: expired and soonest-expiring entries are at the
    /// front, which makes both sweeping and eviction O(log n).
    by_expiry: BTreeSet<(Instant, SourceKey)>,
}

impl Table {
    fn remove(&mut self, key: SourceKey) {
        if let Some(e) = self.by_source.remove(&key) {
            self.by_expiry.remove(&(e.expires_at, key));
        }
    }

    fn insert(&mut self, key: SourceKey, entry: Entry) {
        if let Some(old) = self.by_source.insert(key, entry) {
            self.by_expiry.remove(&(old.expires_at, key));
        }
        self.by_expiry.insert((entry.expires_at, key));
    }

    /// Drops up to `limit` expired entries.
    fn purge(&mut self, now: Instant, limit: usize) {
        for _ in 0..limit {
            match self.by_expiry.first() {
                Some(&(expires_at, key)) if expires_at <= now => self.remove(key),
                _ => break,
            }
        }
    }
}

/// The penalty table of a server, shared by all connections.
#[derive(Debug)]
pub struct Penalties {
    cfg: PenaltyConfig,
    /// Held only for a lookup and a B-tree update; never across an await.
    table: Mutex<Table>,
}

impl Penalties {
    /// An empty table. Prefixes beyond the address length are clamped (to 32 and 128), and
    /// durations to ten years.
    pub fn new(mut cfg: PenaltyConfig) -> Self {
        cfg.ipv4_prefix = cfg.ipv4_prefix.min(32);
        cfg.ipv6_prefix = cfg.ipv6_prefix.min(128);
        for d in [
            &mut cfg.authfail,
            &mut cfg.noauth,
            &mut cfg.noauth_under_pressure,
            &mut cfg.grace_exceeded,
            &mut cfg.protocol_error,
            &mut cfg.min_before_ban,
            &mut cfg.max,
        ] {
            *d = (*d).min(MAX_CONFIG_DURATION);
        }
        Penalties {
            cfg,
            table: Mutex::new(Table::default()),
        }
    }

    /// The configuration in force (after clamping).
    pub fn config(&self) -> &PenaltyConfig {
        &self.cfg
    }

    /// The source `addr` counts as, for logs: e.g. `2001:db8:1:2::/64` or `192.0.2.7/32`.
    pub fn source(&self, addr: IpAddr) -> IpNet {
        let addr = addr.to_canonical();
        // The prefixes were clamped in `new`, so `net_of` succeeds; the fallback (the whole
        // address) only keeps this total.
        self.net_of(addr).unwrap_or_else(|| host(addr))
    }

    /// The network of `addr` (already canonical) at the configured prefix of its family.
    fn net_of(&self, addr: IpAddr) -> Option<IpNet> {
        source_net(addr, self.cfg.ipv4_prefix, self.cfg.ipv6_prefix)
    }

    /// Records an offence for the address's source (IPv6 masked to its prefix, /64 by
    /// default; IPv4-mapped IPv6 treated as IPv4). Returns true if this put the source over
    /// the ban threshold, so the caller can log the ban once.
    pub fn record(&self, addr: IpAddr, what: Offence, now: Instant) -> bool {
        self.add_amount(addr, self.cfg.amount(what), now)
    }

    /// Adds `amount` to the penalty of the address's source (see [`Penalties::record`]).
    pub fn add_amount(&self, addr: IpAddr, amount: Duration, now: Instant) -> bool {
        let Some(key) = self.key(addr) else {
            return false;
        };
        let amount = amount.min(self.cfg.max);
        if amount.is_zero() {
            return false;
        }
        let mut table = self.lock();
        table.purge(now, PURGE_BATCH);
        let remaining = match table.by_source.get(&key) {
            Some(e) if e.expires_at > now => Some((e.expires_at - now, e.active)),
            Some(_) => {
                // Expired but not swept yet: it starts over like a new source.
                table.remove(key);
                None
            }
            None => None,
        };
        let (penalty, was_active) = match remaining {
            Some((left, active)) => (left.saturating_add(amount).min(self.cfg.max), active),
            None => (amount, false),
        };
        let Some(expires_at) = now.checked_add(penalty) else {
            // Unreachable: durations are clamped to ten years in `new`. Not tracking the
            // source is the answer that cannot panic.
            return false;
        };
        if remaining.is_none() && table.by_source.len() >= self.cfg.max_sources {
            match table.by_expiry.first() {
                Some(&(soonest, victim)) if soonest < expires_at => table.remove(victim),
                // Everything tracked outlasts the newcomer (or the table holds nothing).
                _ => return false,
            }
        }
        let active = was_active || penalty > self.cfg.min_before_ban;
        table.insert(key, Entry { expires_at, active });
        active && !was_active
    }

    /// `Some(remaining)` if the address's source is banned now and must be refused at accept.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let key = self.key(addr)?;
        let mut table = self.lock();
        table.purge(now, PURGE_BATCH);
        let entry = table.by_source.get(&key)?;
        if entry.active && entry.expires_at > now {
            Some(entry.expires_at - now)
        } else {
            None
        }
    }

    /// What the address's source owes now, banned or not yet (`None`: nothing).
    pub fn owed(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let key = self.key(addr)?;
        let table = self.lock();
        let entry = table.by_source.get(&key)?;
        (entry.expires_at > now).then(|| entry.expires_at - now)
    }

    /// Refuses the source of `addr` for `left` from `now` on, as another node decided
    /// (pulled from the shared store): a source already refused for longer keeps its own
    /// deadline. Exempt addresses are left alone. The table's bound applies as in
    /// [`Penalties::add_amount`].
    pub fn impose(&self, addr: IpAddr, left: Duration, now: Instant) {
        let Some(key) = self.key(addr) else { return };
        let left = left.min(self.cfg.max);
        let Some(expires_at) = now.checked_add(left) else {
            return;
        };
        if left.is_zero() {
            return;
        }
        let mut table = self.lock();
        table.purge(now, PURGE_BATCH);
        match table.by_source.get(&key) {
            Some(e) if e.expires_at > now && e.active && e.expires_at >= expires_at => return,
            Some(e) if e.expires_at > now => {
                let expires_at = expires_at.max(e.expires_at);
                table.remove(key);
                table.insert(
                    key,
                    Entry {
                        expires_at,
                        active: true,
                    },
                );
                return;
            }
            Some(_) => table.remove(key),
            None => {}
        }
        if table.by_source.len() >= self.cfg.max_sources {
            match table.by_expiry.first() {
                Some(&(soonest, victim)) if soonest < expires_at => table.remove(victim),
                _ => return,
            }
        }
        table.insert(
            key,
            Entry {
                expires_at,
                active: true,
            },
        );
    }

    /// The sources refused now with their time left, longest first, at most `max`.
    pub fn refused(&self, now: Instant, max: usize) -> Vec<(IpAddr, Duration)> {
        let table = self.lock();
        // `by_expiry` is ordered by deadline, so this is longest first.
        table
            .by_expiry
            .iter()
            .rev()
            .filter_map(|&(expires_at, key)| {
                let e = table.by_source.get(&key)?;
                (e.active && expires_at > now).then(|| (key.addr(), expires_at - now))
            })
            .take(max)
            .collect()
    }

    /// Number of sources tracked, including expired ones not swept yet.
    pub fn len(&self) -> usize {
        self.lock().by_source.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table key of `addr`, or `None` if it is exempt.
    fn key(&self, addr: IpAddr) -> Option<SourceKey> {
        let addr = addr.to_canonical();
        if self.cfg.exempt.iter().any(|n| n.contains(addr)) {
            return None;
        }
        // `new` clamped the prefixes, so the network exists; `?` keeps this total regardless.
        Some(match self.net_of(addr)?.addr() {
            IpAddr::V4(a) => SourceKey::V4(a.to_bits()),
            IpAddr::V6(a) => SourceKey::V6(a.to_bits()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table unsafe to use (at worst an
        // entry is missing from one index), so keep serving rather than propagate the panic.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Today's table is the [`PenaltyStore`] of a server on its own.
impl crate::state::PenaltyStore for Penalties {
    fn add(
        &self,
        addr: IpAddr,
        amount: Duration,
    ) -> crate::domain::BoxFuture<'_, Result<bool, crate::state::StateError>> {
        let banned = self.add_amount(addr, amount, Instant::now());
        Box::pin(async move { Ok(banned) })
    }

    fn refused_for(
        &self,
        addr: IpAddr,
    ) -> crate::domain::BoxFuture<'_, Result<Option<Duration>, crate::state::StateError>> {
        let left = self.check(addr, Instant::now());
        Box::pin(async move { Ok(left) })
    }

    fn refused_sources(
        &self,
        max: usize,
    ) -> crate::domain::BoxFuture<'_, Result<Vec<(IpAddr, Duration)>, crate::state::StateError>>
    {
        let refused = self.refused(Instant::now(), max);
        Box::pin(async move { Ok(refused) })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_ban_imposed_from_elsewhere_refuses_and_keeps_the_longer_deadline() {
        let p = Penalties::new(PenaltyConfig {
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
            ..PenaltyConfig::default()
        });
        let now = Instant::now();
        // Below the threshold here, banned elsewhere: refused for the other node's time.
        p.record(ip("192.0.2.1"), Offence::AuthFail, now);
        assert_eq!(p.check(ip("192.0.2.1"), now), None);
        p.impose(ip("192.0.2.1"), secs(30), now);
        assert_eq!(p.check(ip("192.0.2.1"), now), Some(secs(30)));
        // A shorter one does not shorten it; a longer one extends it.
        p.impose(ip("192.0.2.1"), secs(10), now);
        assert_eq!(p.check(ip("192.0.2.1"), now), Some(secs(30)));
        p.impose(ip("192.0.2.1"), secs(40), now);
        assert_eq!(p.check(ip("192.0.2.1"), now), Some(secs(40)));
        // Imposed again every second with the time left, it ends when it ends.
        p.impose(ip("192.0.2.1"), secs(39), now + secs(1));
        assert_eq!(p.check(ip("192.0.2.1"), now + secs(40)), None);
        // Exempt stays exempt; capped at the configured maximum.
        p.impose(ip("10.1.2.3"), secs(30), now);
        assert_eq!(p.check(ip("10.1.2.3"), now), None);
        p.impose(ip("192.0.2.2"), secs(1_000_000), now);
        assert_eq!(p.check(ip("192.0.2.2"), now), Some(p.config().max));
    }

    #[test]
    fn refused_lists_only_bans_longest_first() {
        let p = Penalties::new(PenaltyConfig::default());
        let now = Instant::now();
        p.record(ip("192.0.2.1"), Offence::AuthFail, now);
        p.impose(ip("192.0.2.2"), secs(20), now);
        p.impose(ip("2001:db8::1"), secs(50), now);
        p.impose(ip("192.0.2.3"), secs(5), now);
        assert_eq!(
            p.refused(now, 10),
            vec![
                (ip("2001:db8::"), secs(50)),
                (ip("192.0.2.2"), secs(20)),
                (ip("192.0.2.3"), secs(5)),
            ]
        );
        assert_eq!(p.refused(now, 1).len(), 1);
        assert!(p.refused(now + secs(60), 10).is_empty());
    }

    fn defaults() -> Penalties {
        Penalties::new(PenaltyConfig::default())
    }

    /// The two indexes agree and the bound holds.
    fn assert_consistent(p: &Penalties) {
        let t = p.lock();
        assert_eq!(t.by_source.len(), t.by_expiry.len());
        for (k, e) in &t.by_source {
            assert!(t.by_expiry.contains(&(e.expires_at, *k)));
        }
        assert!(t.by_source.len() <= p.cfg.max_sources);
    }

    #[test]
    fn three_failed_logins_do_not_ban() {
        let p = defaults();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(!p.record(a, Offence::AuthFail, t0));
        }
        assert_eq!(p.check(a, t0), None);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_fourth_failure_bans_for_the_whole_penalty() {
        let p = defaults();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(!p.record(a, Offence::AuthFail, t0));
        }
        assert!(
            p.record(a, Offence::AuthFail, t0),
            "the fourth crosses 15 s"
        );
        assert!(
            !p.record(a, Offence::AuthFail, t0),
            "reported once, not again"
        );
        // 25 s accumulated. The ban lasts until the deadline, also below the 15 s threshold.
        assert_eq!(p.check(a, t0), Some(secs(25)));
        assert_eq!(p.check(a, t0 + secs(20)), Some(secs(5)));
        assert_eq!(
            p.check(a, t0 + secs(25) - Duration::from_millis(1)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(p.check(a, t0 + secs(25)), None);
    }

    #[test]
    fn penalty_decays_with_time() {
        let p = defaults();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        // One failure every 2 s: the backlog grows by 3 s per failure. 5, 8, 11, 14, 17.
        for i in 0..4 {
            assert!(!p.record(a, Offence::AuthFail, t0 + secs(2 * i)));
            assert_eq!(p.check(a, t0 + secs(2 * i)), None);
        }
        assert!(p.record(a, Offence::AuthFail, t0 + secs(8)));
        assert_eq!(p.check(a, t0 + secs(8)), Some(secs(17)));
        // A slow guesser (one failure every 5 s) never builds up.
        let b = ip("192.0.2.2");
        for i in 0..100 {
            assert!(!p.record(b, Offence::AuthFail, t0 + secs(5 * i)));
        }
        assert_eq!(p.check(b, t0 + secs(500)), None);
    }

    #[test]
    fn an_expired_source_starts_over() {
        let p = defaults();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..4 {
            p.record(a, Offence::AuthFail, t0);
        }
        assert!(p.check(a, t0).is_some());
        let later = t0 + secs(20);
        assert_eq!(p.check(a, later), None);
        // No leftover ban flag: three more failures are forgiven again.
        for _ in 0..3 {
            assert!(!p.record(a, Offence::AuthFail, later));
        }
        assert_eq!(p.check(a, later), None);
        assert!(p.record(a, Offence::AuthFail, later));
    }

    #[test]
    fn penalty_is_capped_at_max() {
        let p = defaults();
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..1000 {
            p.record(a, Offence::GraceExceeded, t0);
        }
        assert_eq!(p.check(a, t0), Some(secs(600)));
        // Offences while banned add to what is left (500 s + 5 s)...
        p.record(a, Offence::AuthFail, t0 + secs(100));
        assert_eq!(p.check(a, t0 + secs(100)), Some(secs(505)));
        // ...up to the cap, measured from now.
        for _ in 0..100 {
            p.record(a, Offence::AuthFail, t0 + secs(100));
        }
        assert_eq!(p.check(a, t0 + secs(100)), Some(secs(600)));
        assert_eq!(
            p.check(a, t0 + secs(700) - Duration::from_millis(1)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(p.check(a, t0 + secs(700)), None);
    }

    #[test]
    fn each_offence_has_its_amount() {
        let t0 = Instant::now();
        let cfg = PenaltyConfig {
            min_before_ban: Duration::ZERO,
            ..PenaltyConfig::default()
        };
        let p = Penalties::new(cfg);
        for (i, (what, amount)) in [
            (Offence::AuthFail, 5),
            (Offence::NoAuth, 1),
            (Offence::GraceExceeded, 10),
            (Offence::ProtocolError, 5),
        ]
        .into_iter()
        .enumerate()
        {
            let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8));
            assert!(p.record(a, what, t0));
            assert_eq!(p.check(a, t0), Some(secs(amount)), "{what}");
        }
        // Sixteen connections without a login attempt ban, fifteen do not.
        let p = defaults();
        let a = ip("192.0.2.9");
        for _ in 0..15 {
            assert!(!p.record(a, Offence::NoAuth, t0));
        }
        assert!(p.record(a, Offence::NoAuth, t0));
    }

    #[test]
    fn ipv6_is_grouped_per_64() {
        let p = defaults();
        let t0 = Instant::now();
        for _ in 0..2 {
            p.record(ip("2001:db8:1:2::1"), Offence::AuthFail, t0);
            p.record(
                ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"),
                Offence::AuthFail,
                t0,
            );
        }
        assert_eq!(p.len(), 1);
        assert_eq!(p.check(ip("2001:db8:1:2:ffff::9"), t0), Some(secs(20)));
        assert_eq!(p.check(ip("2001:db8:1:3::1"), t0), None);
        assert_eq!(p.check(ip("2001:db8:1::1"), t0), None);
        assert_eq!(
            p.source(ip("2001:db8:1:2:aaaa::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(p.source(ip("192.0.2.7")).to_string(), "192.0.2.7/32");
    }

    #[test]
    fn ipv4_mapped_counts_as_ipv4() {
        let p = defaults();
        let t0 = Instant::now();
        for _ in 0..2 {
            p.record(ip("::ffff:192.0.2.1"), Offence::AuthFail, t0);
            p.record(ip("192.0.2.1"), Offence::AuthFail, t0);
        }
        assert_eq!(p.len(), 1);
        assert_eq!(p.check(ip("192.0.2.1"), t0), Some(secs(20)));
        assert_eq!(p.check(ip("::ffff:192.0.2.1"), t0), Some(secs(20)));
        // A mapped address is not swallowed into the IPv6 /64 of ::ffff:0:0/96 neighbours.
        assert_eq!(p.check(ip("::ffff:192.0.2.2"), t0), None);
        assert_eq!(p.source(ip("::ffff:192.0.2.1")).to_string(), "192.0.2.1/32");
    }

    #[test]
    fn other_addresses_are_unaffected() {
        let p = defaults();
        let t0 = Instant::now();
        for _ in 0..200 {
            p.record(ip("127.0.0.2"), Offence::AuthFail, t0);
        }
        assert_eq!(p.check(ip("127.0.0.2"), t0), Some(secs(600)));
        assert_eq!(p.check(ip("127.0.0.3"), t0), None);
        assert_eq!(p.check(ip("127.0.0.1"), t0), None);
        assert_eq!(p.check(ip("::1"), t0), None);
        assert_eq!(p.check(ip("::ffff:127.0.0.3"), t0), None);
    }

    #[test]
    fn ipv4_prefix_groups_when_configured() {
        let p = Penalties::new(PenaltyConfig {
            ipv4_prefix: 24,
            ipv6_prefix: 200, // clamped to 128
            ..PenaltyConfig::default()
        });
        let t0 = Instant::now();
        for i in 1..=4 {
            p.record(
                IpAddr::V4(Ipv4Addr::new(198, 51, 100, i)),
                Offence::AuthFail,
                t0,
            );
        }
        assert_eq!(p.check(ip("198.51.100.200"), t0), Some(secs(20)));
        assert_eq!(p.check(ip("198.51.101.1"), t0), None);
        for _ in 0..4 {
            p.record(ip("2001:db8::1"), Offence::AuthFail, t0);
        }
        assert_eq!(p.check(ip("2001:db8::2"), t0), None);
        assert_eq!(p.config().ipv6_prefix, 128);
    }

    #[test]
    fn exempt_networks_are_never_penalised() {
        let p = Penalties::new(PenaltyConfig {
            exempt: vec![
                "10.1.0.0/16".parse().unwrap(),
                "2001:db8::7".parse().unwrap(),
            ],
            ..PenaltyConfig::default()
        });
        let t0 = Instant::now();
        for a in ["10.1.2.3", "::ffff:10.1.9.9", "2001:db8::7"] {
            for _ in 0..10 {
                assert!(!p.record(ip(a), Offence::AuthFail, t0));
            }
            assert_eq!(p.check(ip(a), t0), None);
        }
        assert!(p.is_empty());
        for _ in 0..4 {
            p.record(ip("10.2.0.1"), Offence::AuthFail, t0);
        }
        assert!(p.check(ip("10.2.0.1"), t0).is_some());
    }

    #[test]
    fn ipnet_parsing() {
        let n: IpNet = "192.0.2.77/24".parse().unwrap();
        assert_eq!(n.to_string(), "192.0.2.0/24");
        assert!(n.contains(ip("192.0.2.1")) && !n.contains(ip("192.0.3.1")));
        assert!(n.contains(ip("::ffff:192.0.2.200")));
        assert_eq!("::1".parse::<IpNet>().unwrap().to_string(), "::1/128");
        assert_eq!("0.0.0.0/0".parse::<IpNet>().unwrap().prefix(), 0);
        assert!(
            "0.0.0.0/0"
                .parse::<IpNet>()
                .unwrap()
                .contains(ip("203.0.113.9"))
        );
        assert!(
            !"0.0.0.0/0"
                .parse::<IpNet>()
                .unwrap()
                .contains(ip("2001:db8::1"))
        );
        for bad in [
            "",
            "/8",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10/8",
            "x/8",
            "10.0.0.0/8/8",
            "10.0.0.0/0008",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_sources_or_zero_amounts_track_nothing() {
        let t0 = Instant::now();
        let p = Penalties::new(PenaltyConfig {
            max_sources: 0,
            ..PenaltyConfig::default()
        });
        for _ in 0..10 {
            assert!(!p.record(ip("192.0.2.1"), Offence::GraceExceeded, t0));
        }
        assert!(p.is_empty());
        let p = Penalties::new(PenaltyConfig {
            noauth: Duration::ZERO,
            ..PenaltyConfig::default()
        });
        assert!(!p.record(ip("192.0.2.1"), Offence::NoAuth, t0));
        assert!(p.is_empty());
    }

    #[test]
    fn huge_durations_are_clamped_not_panicking() {
        let t0 = Instant::now();
        let p = Penalties::new(PenaltyConfig {
            authfail: Duration::MAX,
            max: Duration::MAX,
            ..PenaltyConfig::default()
        });
        assert!(p.record(ip("192.0.2.1"), Offence::AuthFail, t0));
        assert!(!p.record(ip("192.0.2.1"), Offence::AuthFail, t0));
        assert_eq!(p.check(ip("192.0.2.1"), t0), Some(MAX_CONFIG_DURATION));
    }

    #[test]
    fn full_table_evicts_expired_then_soonest() {
        let t0 = Instant::now();
        let p = Penalties::new(PenaltyConfig {
            max_sources: 3,
            ..PenaltyConfig::default()
        });
        let a = ip("192.0.2.1");
        let b = ip("192.0.2.2");
        let c = ip("192.0.2.3");
        p.record(a, Offence::NoAuth, t0); // expires t0+1
        p.record(b, Offence::AuthFail, t0); // expires t0+5
        for _ in 0..4 {
            p.record(c, Offence::AuthFail, t0); // banned until t0+20
        }
        assert_eq!(p.len(), 3);
        // At t0+2, `a` has expired: the newcomer takes its place.
        let d = ip("192.0.2.4");
        p.record(d, Offence::GraceExceeded, t0 + secs(2)); // expires t0+12
        assert_eq!(p.len(), 3);
        assert_consistent(&p);
        // Full of live entries: the one expiring soonest (`b`, t0+5) goes.
        let e = ip("192.0.2.5");
        p.record(e, Offence::GraceExceeded, t0 + secs(3)); // expires t0+13
        assert_eq!(p.len(), 3);
        let t = p.lock();
        let keys: Vec<_> = t.by_source.keys().copied().collect();
        drop(t);
        for gone in [a, b] {
            assert!(
                !keys.contains(&p.key(gone).unwrap()),
                "{gone} should be evicted"
            );
        }
        // A newcomer that would expire before everyone tracked is not admitted.
        p.record(ip("192.0.2.6"), Offence::NoAuth, t0 + secs(3));
        assert_eq!(p.len(), 3);
        assert_eq!(p.check(c, t0 + secs(3)), Some(secs(17)));
        assert_consistent(&p);
    }

    /// A million distinct sources, with time moving so that the table must evict on every
    /// insertion, keep the table within its bound and each call cheap.
    #[test]
    fn table_stays_bounded_and_fast_under_a_million_sources() {
        let max_sources = 65536;
        let p = Penalties::new(PenaltyConfig {
            max_sources,
            ..PenaltyConfig::default()
        });
        let t0 = Instant::now();
        // Long bans that a flood of short penalties must not push out.
        let banned: Vec<IpAddr> = (0..100)
            .map(|i| IpAddr::V4(Ipv4Addr::new(203, 0, 113, i)))
            .collect();
        for &a in &banned {
            for _ in 0..200 {
                p.record(a, Offence::AuthFail, t0);
            }
        }
        let started = Instant::now();
        let n: u32 = 1_000_000;
        for i in 0..n {
            // Distinct IPv4 sources and distinct IPv6 /64s, one microsecond apart.
            let now = t0 + Duration::from_micros(u64::from(i));
            let addr = if i % 2 == 0 {
                IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i))
            } else {
                IpAddr::V6(Ipv6Addr::from(
                    0x2001_0db8_u128 << 96 | u128::from(i) << 64 | 1,
                ))
            };
            let what = if i % 3 == 0 {
                Offence::NoAuth
            } else {
                Offence::AuthFail
            };
            p.record(addr, what, now);
            if i % 4096 == 0 {
                assert!(p.len() <= max_sources);
            }
        }
        let elapsed = started.elapsed();
        let end = t0 + Duration::from_micros(u64::from(n));
        assert_eq!(p.len(), max_sources);
        assert_consistent(&p);
        for &a in &banned {
            assert_eq!(
                p.check(a, end),
                Some(secs(600) - Duration::from_micros(u64::from(n)))
            );
        }
        eprintln!(
            "1,000,000 records into a {max_sources}-entry table: {elapsed:?} ({:?} per record)",
            elapsed / n
        );
        // Generous for a debug build on a shared 2-core machine; a linear scan per insert
        // would take minutes.
        assert!(elapsed < secs(60), "{elapsed:?}");
        // Once everything has expired, the table drains as it is used.
        let much_later = end + secs(601);
        for _ in 0..(max_sources / PURGE_BATCH + 1) {
            p.check(ip("192.0.2.1"), much_later);
        }
        assert!(p.is_empty());
    }

    #[test]
    fn concurrent_recording() {
        let p = Arc::new(Penalties::new(PenaltyConfig {
            max_sources: 1000,
            ..PenaltyConfig::default()
        }));
        let t0 = Instant::now();
        let shared = ip("192.0.2.1");
        let bans = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for thread in 0..4u32 {
                let p = Arc::clone(&p);
                let bans = &bans;
                s.spawn(move || {
                    for i in 0..20_000u32 {
                        let now = t0 + Duration::from_micros(u64::from(i));
                        if p.record(shared, Offence::AuthFail, now) {
                            bans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        let own = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | thread << 20 | i));
                        p.record(own, Offence::NoAuth, now);
                        let _ = p.check(own, now);
                    }
                });
            }
        });
        assert_eq!(bans.into_inner(), 1, "the ban is reported exactly once");
        assert!(p.len() <= 1000);
        assert_consistent(&p);
        let left = p.check(shared, t0 + Duration::from_micros(20_000)).unwrap();
        assert!(left > secs(599) && left <= secs(600), "{left:?}");
    }

    #[test]
    fn source_net_groups_as_configured_and_maps_ipv4_in_ipv6() {
        let net = |a: &str, v4, v6| source_net(a.parse().unwrap(), v4, v6).unwrap().to_string();
        assert_eq!(net("2001:db8:1:2:3:4:5:6", 32, 64), "2001:db8:1:2::/64");
        assert_eq!(net("2001:db8:1:2:3:4:5:6", 32, 48), "2001:db8:1::/48");
        assert_eq!(net("::ffff:192.0.2.7", 32, 64), "192.0.2.7/32");
        assert_eq!(net("192.0.2.7", 24, 64), "192.0.2.0/24");
        assert!(source_net("192.0.2.7".parse().unwrap(), 33, 64).is_none());
    }
}
