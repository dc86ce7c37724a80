//! The server: a listener that admits connections under limits, one task per session, and one
//! file per command under `cmd/`.
//!
//! A connection goes through named phases, each under its own timeout: the PROXY header (only
//! from trusted balancers, `proxy`), TLS handshake (with the `ferry/1` ALPN checked
//! afterwards), hello and login, then requests until the client leaves, idles too long, or the
//! server shuts down. Caps apply at accept (in total, per source, `penalty`) and until login
//! (`prelogin`: connections not logged in yet have a smaller cap of their own).

pub mod admin;
mod cmd;
mod error;
pub(crate) mod login;
mod memory;
pub mod penalty;
pub mod prelogin;
pub mod proxy;
/// Quotas are the core's; handlers still reach them here until they call the core.
pub use crate::service::quota;
mod session;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounts::AccountStore;
use crate::accounts::toml::TomlAccounts;
use crate::state::{PenaltyStore, UsageLedger};
use crate::users::UserDb;

/// The ALPN ids this server offers, in its order of preference: one per front-end, and
/// `handle_connection` dispatches on the one a connection negotiated. `ferry/1` comes first, so
/// a client that offers it and HTTP gets `ferry/1`. Pass this to [`crate::tls::server_config`].
pub const ALPN_OFFERED: &[&[u8]] = &[crate::protocol::ALPN, b"h2", b"http/1.1"];

/// What a server with the web front-end turned off (`ferry serve --no-web`) offers.
pub const ALPN_FERRY_ONLY: &[&[u8]] = &[crate::protocol::ALPN];

/// The ALPN ids to offer, with or without the HTTPS front-end.
pub fn alpn_offered(web: bool) -> &'static [&'static [u8]] {
    if web { ALPN_OFFERED } else { ALPN_FERRY_ONLY }
}

/// Timeouts and caps of a server. The defaults are what `ferry serve` uses.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From TCP accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// From the end of the handshake to a successful login (hello included).
    pub login_timeout: Duration,
    /// Longest wait for the next request of a logged-in session.
    pub idle_timeout: Duration,
    /// Longest wait for progress inside a transfer.
    pub stall_timeout: Duration,
    /// Longest wait for a TLS close to complete.
    pub close_timeout: Duration,
    /// Connections served at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Connections at once from one source (an IPv4 address or an IPv6 /64).
    pub max_connections_per_source: usize,
    /// Connections not logged in yet: cap, random early drop, login window under pressure
    /// (see [`prelogin`]).
    pub startups: prelogin::Startups,
    /// Logged-in sessions at once per user.
    pub max_sessions_per_user: usize,
    /// Failed logins allowed on one connection before it is closed.
    pub max_auth_attempts: u32,
    /// argon2 verifications running at once (each holds ~19 MiB).
    pub auth_concurrency: usize,
    /// How long a login may wait for an argon2 slot.
    pub auth_queue_timeout: Duration,
    /// How long sessions get to finish transfers after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Kept partial uploads untouched for this long are removed.
    pub partial_ttl: Duration,
    /// Penalties per source address (failed logins, protocol errors, timeouts); `None`
    /// disables them.
    pub penalties: Option<penalty::PenaltyConfig>,
    /// Expect a PROXY protocol (v1 or v2) header before TLS and use the address it names.
    /// Only connections from [`Limits::proxy_from`] are served then.
    pub proxy_protocol: bool,
    /// The balancers trusted to send PROXY headers. With `proxy_protocol` on, a connection
    /// from anywhere else is refused at once and penalised as a protocol error; balancers
    /// themselves are never penalised or capped as a source (the clients they name are).
    pub proxy_from: Vec<penalty::IpNet>,
    /// Longest wait for a trusted balancer's PROXY header (also bounded by the handshake
    /// timeout, which runs from accept).
    pub proxy_header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Limits {
            handshake_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
            max_connections: 512,
            max_connections_per_source: 20,
            startups: prelogin::Startups::default(),
            max_sessions_per_user: 16,
            max_auth_attempts: 3,
            auth_concurrency: cores,
            auth_queue_timeout: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(30),
            partial_ttl: Duration::from_secs(24 * 3600),
            penalties: Some(penalty::PenaltyConfig::default()),
            proxy_protocol: false,
            proxy_from: Vec::new(),
            proxy_header_timeout: Duration::from_secs(5),
        }
    }
}

/// The state a server shares with the other nodes of a cluster (issue 15). A server on its
/// own keeps it in memory ([`SharedState::default`]).
#[derive(Clone)]
pub struct SharedState {
    /// Usage counters and reservations of homes with quotas.
    pub ledger: Arc<dyn UsageLedger>,
    /// Whether other nodes use `ledger` too: a home's count is then kept when this node's
    /// last session of it ends (see [`quota::Accounts::shared`]).
    pub shared_ledger: bool,
    /// Penalties shared by the nodes. Each node still keeps its own table and refuses from
    /// it at accept: offences are also added here, and the sources refused here are pulled
    /// into the node's table every [`PENALTY_SYNC_EVERY`], so accept never waits for the
    /// store and a store that is down leaves each node with its own table.
    pub penalties: Option<Arc<dyn PenaltyStore>>,
    /// Where homes live when not under the data root (an object store shared by the
    /// nodes); `None`: under the data root on this node's file system.
    pub homes: Option<Arc<dyn crate::storage::HomeStore>>,
    /// The node's metrics, when the backends above were built timing their calls into them
    /// (`None`: the server makes its own).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Default for SharedState {
    fn default() -> SharedState {
        SharedState {
            ledger: crate::state::memory::MemoryLedger::new(),
            shared_ledger: false,
            penalties: None,
            homes: None,
            metrics: None,
        }
    }
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("penalties", &self.penalties.is_some())
            .field("homes", &self.homes)
            .finish_non_exhaustive()
    }
}

/// How often a node pulls the sources refused through other nodes into its own table.
pub const PENALTY_SYNC_EVERY: Duration = Duration::from_secs(1);

/// Most sources pulled from the shared penalty store at a time (the node's table has its
/// own bound too).
const PENALTY_SYNC_MAX: usize = 10_000;

/// Offences on their way to the shared penalty store at once; more are counted only in the
/// node's own table (a flood must not queue unbounded work for the store).
const PENALTY_ADDS_IN_FLIGHT: usize = 64;

/// Small puts running beside their sessions at once, over all sessions (see
/// [`crate::storage::Storage::small_puts_in_flight`]): each holds its data (at most 256 KiB)
/// and a share of the database pool until done. Past this, a session's small puts run one
/// at a time, as on a store that gains nothing from running them side by side.
pub(crate) const SMALL_PUTS_RUNNING_MAX: usize = 64;

/// Longest wait for the shared penalty store.
const PENALTY_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a running server needs; shared by all sessions.
pub struct Server {
    /// Swapped whole when certificates are reloaded; handshakes in progress keep theirs.
    tls: RwLock<TlsAcceptor>,
    /// Where the users live; looked up at each login, so a change is in force at the next one.
    users: Arc<dyn AccountStore>,
    /// The users of a server built by [`Server::new`], which [`Server::replace_users`] swaps.
    fixed_users: Option<TomlAccounts>,
    root: PathBuf,
    limits: Limits,
    /// Bounds concurrent argon2 verifications: memory and CPU for logins stay capped no
    /// matter how many clients try at once.
    auth_permits: Semaphore,
    /// One permit per live connection.
    conn_permits: Arc<Semaphore>,
    /// Usage of the homes of users with quotas, shared by their sessions.
    accounts: quota::Accounts,
    /// Live connections per source.
    per_source: Counter<IpAddr>,
    /// Logged-in sessions per user.
    per_user: Counter<String>,
    /// Penalties per source, when enabled.
    penalties: Option<penalty::Penalties>,
    /// The penalties shared with other nodes, when there are any (see [`SharedState`]).
    shared_penalties: Option<Arc<dyn PenaltyStore>>,
    /// Bounds the offences on their way to `shared_penalties`.
    penalty_adds: Arc<Semaphore>,
    /// Bounds the small puts running beside their sessions ([`SMALL_PUTS_RUNNING_MAX`]).
    pub(crate) small_puts: Arc<Semaphore>,
    /// Where homes live when not under `root` (see [`SharedState::homes`]).
    pub(crate) homes: Option<Arc<dyn crate::storage::HomeStore>>,
    /// Connections not logged in yet.
    prelogin: prelogin::Prelogin,
    /// Warm login memory, the cap on direct-I/O uploads, and the timers that give memory
    /// back (see [`Server::trim_when_idle`] and [`Server::forget_login_memory`]).
    pub(crate) memory: memory::Memory,
    /// Cancelled when the shutdown grace period is over: transfers still running stop the way
    /// a client disconnect stops them (an upload is kept for `reput`, the audit line says
    /// `interrupted`) instead of being dropped mid-way.
    pub(crate) grace_over: CancellationToken,
    /// What the HTTPS front-end keeps across connections: where API tokens live, and the
    /// homes its users have open.
    pub(crate) web: crate::frontend::http::auth::WebState,
    /// This server's own counts, for the admin port (`admin`).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Whether account lookups go to a database, and are timed into the metrics.
    timed_lookups: bool,
}

/// Counts of live things by key; a [`Slot`] holds one and gives it back when dropped.
#[derive(Debug)]
pub(crate) struct Counter<K: std::hash::Hash + Eq + Clone> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: std::hash::Hash + Eq + Clone> Default for Counter<K> {
    fn default() -> Self {
        Counter {
            counts: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Counter<K> {
    /// Takes a slot for `key` unless `max` are taken already.
    pub(crate) fn take(&self, key: K, max: usize) -> Option<Slot<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: Arc::clone(&self.counts),
            key,
        })
    }
}

/// One counted connection or session; dropping it gives the count back.
#[derive(Debug)]
pub(crate) struct Slot<K: std::hash::Hash + Eq + Clone> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl Server {
    /// The unit connection caps and the pre-login cap apply to, grouped as penalties group
    /// sources: an IPv4 address and an IPv6 /64 by default, or the configured prefixes.
    fn source_of(&self, ip: IpAddr) -> IpAddr {
        let (v4, v6) = self.limits.penalties.as_ref().map_or((32, 64), |c| {
            (c.ipv4_prefix.min(32), c.ipv6_prefix.min(128))
        });
        penalty::source_net(ip, v4, v6).map_or(ip, |net| net.addr())
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("root", &self.root)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Builds a server from a TLS configuration, a fixed set of users (changed only by
    /// [`Server::replace_users`]) and the data root.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        users: UserDb,
        root: PathBuf,
        limits: Limits,
    ) -> Arc<Server> {
        let fixed = TomlAccounts::in_memory(users);
        Self::build(
            tls,
            Arc::new(fixed.clone()),
            Some(fixed),
            SharedState::default(),
            root,
            limits,
        )
    }

    /// Builds a server from a TLS configuration, the store its users live in (see
    /// [`crate::accounts`]) and the data root.
    pub fn with_accounts(
        tls: Arc<rustls::ServerConfig>,
        users: Arc<dyn AccountStore>,
        root: PathBuf,
        limits: Limits,
    ) -> Arc<Server> {
        Self::build(tls, users, None, SharedState::default(), root, limits)
    }

    /// Builds a server of a cluster: its users from `users`, its usage counters and shared
    /// penalties from `state`, which the other nodes share too.
    pub fn with_state(
        tls: Arc<rustls::ServerConfig>,
        users: Arc<dyn AccountStore>,
        state: SharedState,
        root: PathBuf,
        limits: Limits,
    ) -> Arc<Server> {
        Self::build(tls, users, None, state, root, limits)
    }

    fn build(
        tls: Arc<rustls::ServerConfig>,
        users: Arc<dyn AccountStore>,
        fixed_users: Option<TomlAccounts>,
        state: SharedState,
        root: PathBuf,
        limits: Limits,
    ) -> Arc<Server> {
        let metrics = state.metrics.clone().unwrap_or_default();
        Arc::new(Server {
            tls: RwLock::new(TlsAcceptor::from(tls)),
            users,
            fixed_users,
            root,
            auth_permits: Semaphore::new(limits.auth_concurrency.max(1)),
            conn_permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            accounts: if state.shared_ledger {
                quota::Accounts::shared(metrics.timed_ledger(state.ledger))
            } else {
                quota::Accounts::new(state.ledger)
            },
            per_source: Counter::default(),
            per_user: Counter::default(),
            penalties: limits.penalties.clone().map(penalty::Penalties::new),
            shared_penalties: state.penalties,
            homes: state.homes,
            penalty_adds: Arc::new(Semaphore::new(PENALTY_ADDS_IN_FLIGHT)),
            small_puts: Arc::new(Semaphore::new(SMALL_PUTS_RUNNING_MAX)),
            prelogin: prelogin::Prelogin::new(limits.startups),
            memory: memory::Memory::default(),
            grace_over: CancellationToken::new(),
            web: Default::default(),
            timed_lookups: state.shared_ledger,
            metrics,
            limits,
        })
    }

    /// Whether no connection is open.
    fn idle(&self) -> bool {
        self.conn_permits.available_permits() >= self.limits.max_connections.max(1)
    }

    /// When the last connection closes, gives the allocator's free memory back to the kernel
    /// a second later, if no connection is open then. Sessions allocate their transfer
    /// buffers on many threads, and glibc keeps what they freed in per-thread arenas, so
    /// without this a server that served a burst of clients would stay tens of MiB above its
    /// idle size for good.
    fn trim_when_idle(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if !self.idle() || self.memory.trim_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let server = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            server.memory.trim_pending.store(false, Ordering::Release);
            if server.idle() {
                let _ = tokio::task::spawn_blocking(crate::platform::trim_allocator).await;
            }
        });
    }

    /// After a password check: gives argon2's warm memory back to the kernel once no check
    /// has used it for a second (see [`users::login_memory`]). One timer at a time.
    pub(crate) fn forget_login_memory(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        const WARM_FOR: Duration = Duration::from_secs(1);
        let memory = &self.memory;
        if !memory.login.held() || memory.warm_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let server = Arc::clone(self);
        tokio::spawn(async move {
            let mut wait = WARM_FOR;
            loop {
                tokio::time::sleep(wait).await;
                let warm = Arc::clone(&server.memory.login);
                let release = move || warm.release_unused_for(WARM_FOR);
                // Used again meanwhile: wait until it has been unused for the full time.
                if let Ok(Some(left)) = tokio::task::spawn_blocking(release).await {
                    wait = left;
                    continue;
                }
                wait = WARM_FOR;
                let memory = &server.memory;
                memory.warm_pending.store(false, Ordering::Release);
                // A check that gave memory back between the release and the store saw a
                // timer pending and started none: take over for it.
                if !memory.login.held() || memory.warm_pending.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }

    /// Replaces the users of a server built by [`Server::new`]; sessions already logged in
    /// keep going. A server built [`with_accounts`](Server::with_accounts) takes its users
    /// from its store, and ignores this (with a warning in the log).
    pub fn replace_users(&self, users: UserDb) {
        match &self.fixed_users {
            Some(fixed) => fixed.replace(users),
            None => tracing::warn!("replace_users ignored: the users come from an account store"),
        }
    }

    /// Where API tokens (`ferry token add`) are looked up; an empty in-memory store until
    /// set. `ferry serve` sets `tokens.toml` beside the users file.
    pub fn set_tokens(&self, store: Arc<dyn crate::state::tokens::ApiTokens>) {
        self.web.set_tokens(store);
    }

    /// Where drop links (`ferry link add`) are looked up; an empty in-memory store until set.
    /// `ferry serve` sets `links.toml` beside the users file.
    pub fn set_links(&self, store: Arc<dyn crate::state::links::LinkStore>) {
        self.web.set_links(store);
    }

    /// Where the web app's sessions live; this server's memory until set. Nodes behind one
    /// balancer set the same shared store (`PgBackend::web_sessions`).
    pub fn set_web_sessions(&self, store: Arc<dyn crate::state::sessions::WebSessions>) {
        self.web.set_sessions(store);
    }

    /// Where resumable uploads' records live; until set, a directory under the data root
    /// (`.ferry-tus`). Nodes behind one balancer set the same shared store
    /// (`PgBackend::upload_sessions`). Call it before serving: once a tus request has used
    /// the records they stay, and this returns `false`.
    pub fn set_upload_sessions(
        &self,
        store: Arc<dyn crate::state::uploads::UploadSessions>,
    ) -> bool {
        self.web.tus.set_records(store)
    }

    /// Signs the receipts of HTTP uploads with `key`, naming this server `name` in them
    /// (`host:port` as senders reach it). Without a key, uploads get no receipt.
    pub fn set_receipt_key(&self, key: Arc<crate::receipt::ReceiptKey>, name: String) {
        self.web.set_receipts(key, name);
    }

    /// Where the users live.
    pub fn accounts(&self) -> &Arc<dyn AccountStore> {
        &self.users
    }

    /// Replaces the TLS configuration (reloaded certificates); new handshakes use it.
    pub fn replace_tls(&self, tls: Arc<rustls::ServerConfig>) {
        let mut guard = self.tls.write().unwrap_or_else(|p| p.into_inner());
        *guard = TlsAcceptor::from(tls);
    }

    fn acceptor(&self) -> TlsAcceptor {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Records an offence of the source of `peer` (no-op when penalties are off).
    pub(crate) fn penalise(&self, peer: SocketAddr, what: penalty::Offence) {
        let Some(p) = &self.penalties else { return };
        self.metrics.penalty(what.as_str());
        if p.record(peer.ip(), what, std::time::Instant::now()) {
            let source = p.source(peer.ip());
            tracing::warn!(
                %peer,
                %source,
                reason = %what,
                "source penalised: its connections are refused until the penalty expires"
            );
        }
        self.share_offence(peer, p.config().amount(what), what);
    }

    /// Adds an offence to the penalties shared with other nodes, without waiting for it.
    /// Exempt sources and zero amounts are not sent; nor is anything past
    /// [`PENALTY_ADDS_IN_FLIGHT`] offences in flight (the node's own table has them).
    fn share_offence(&self, peer: SocketAddr, amount: Duration, what: penalty::Offence) {
        let Some(shared) = &self.shared_penalties else {
            return;
        };
        let exempt = self.limits.penalties.as_ref().is_some_and(|c| {
            c.exempt
                .iter()
                .any(|n| n.contains(peer.ip().to_canonical()))
        });
        if amount.is_zero() || exempt {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Ok(permit) = Arc::clone(&self.penalty_adds).try_acquire_owned() else {
            tracing::debug!(%peer, "shared penalty store busy: offence kept on this node only");
            return;
        };
        let shared = Arc::clone(shared);
        handle.spawn(async move {
            let added = tokio::time::timeout(PENALTY_STORE_TIMEOUT, shared.add(peer.ip(), amount));
            match added.await {
                Ok(Ok(true)) => tracing::warn!(
                    %peer,
                    reason = %what,
                    "source penalised by the shared store: every node refuses it until the \
                     penalty expires"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "shared penalty store: offence not added")
                }
                Err(_) => tracing::debug!(%peer, "shared penalty store: offence timed out"),
            }
            drop(permit);
        });
    }

    /// What a connection that ended without a login attempt costs: more while the pre-login
    /// phase is under pressure.
    pub(crate) fn noauth_offence(&self) -> penalty::Offence {
        if self.prelogin.under_pressure() {
            penalty::Offence::NoAuthUnderPressure
        } else {
            penalty::Offence::NoAuth
        }
    }

    /// Whether `ip` is a balancer trusted to send PROXY headers (`--proxy-from`).
    fn trusts_balancer(&self, ip: IpAddr) -> bool {
        self.limits.proxy_from.iter().any(|net| net.contains(ip))
    }

    /// Connections not logged in yet, right now (for tests that must wait for the server to
    /// see closed ones go).
    pub fn not_logged_in(&self) -> usize {
        self.prelogin.len()
    }

    /// The penalty the source of `ip` owes now, banned or not yet (for tests; `None` when
    /// penalties are off or the source owes nothing).
    pub fn penalty_owed(&self, ip: IpAddr) -> Option<Duration> {
        self.penalties.as_ref()?.owed(ip, std::time::Instant::now())
    }

    /// How long the source of `ip` is still refused at accept (`None`: it is not), as this
    /// node's own table says (for tests).
    pub fn refuses(&self, ip: IpAddr) -> Option<Duration> {
        self.penalties
            .as_ref()?
            .check(ip, std::time::Instant::now())
    }

    /// Takes every place for small puts running beside their sessions, as a server busy
    /// with other sessions' puts would have them (for tests); given back when dropped.
    pub fn hold_small_put_places(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        Arc::clone(&self.small_puts)
            .try_acquire_many_owned(SMALL_PUTS_RUNNING_MAX as u32)
            .ok()
    }

    /// Looks `name` up in the account store, timed into `ferry_database_seconds` when the
    /// store is a database.
    pub(crate) async fn lookup_user(
        &self,
        name: &str,
    ) -> Result<Option<crate::accounts::User>, crate::accounts::AccountError> {
        let started = std::time::Instant::now();
        let found = self.users.get(name).await;
        if self.timed_lookups {
            self.metrics.database("login_lookup", started.elapsed());
        }
        found
    }

    /// The data root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// Accepts connections until `shutdown` completes, then gives sessions in flight the grace
/// period to finish and returns.
pub async fn run(
    server: Arc<Server>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    // `token`: stop between requests (shutdown begun). `server.grace_over`: transfers stop
    // now, keeping what they have (grace period over). `hard`: whatever is left is dropped.
    let token = CancellationToken::new();
    let hard = CancellationToken::new();
    let tracker = TaskTracker::new();
    let sweeper = tokio::spawn(sweep_partials_periodically(Arc::clone(&server)));
    let web_sweeper = tokio::spawn(sweep_web_homes(Arc::clone(&server)));
    let penalty_sync = tokio::spawn(sync_penalties(Arc::clone(&server)));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&server.conn_permits).try_acquire_owned() else {
            tracing::warn!(%peer, "connection refused: too many connections");
            server.metrics.refused(crate::metrics::Refusal::Capacity);
            drop(stream);
            continue;
        };
        if server.limits.proxy_protocol {
            // Only a trusted balancer may speak for others. Anyone else is refused at once
            // and earns a penalty on its real address (unless already banned: refusing that
            // costs nothing, and the ban then runs out). A balancer is never checked against
            // the penalty table: a client it named may share its address, and banning the
            // balancer would lock out everyone behind it.
            if !server.trusts_balancer(peer.ip()) {
                if !refused(&server, peer) {
                    tracing::info!(%peer, "connection refused: not a trusted balancer (--proxy-from)");
                    server
                        .metrics
                        .refused(crate::metrics::Refusal::UntrustedProxy);
                    server.penalise(peer, penalty::Offence::ProtocolError);
                }
                drop(stream);
                continue;
            }
        } else if refused(&server, peer) {
            // Refused before any work: no task, no TLS.
            drop(stream);
            continue;
        }
        let server = Arc::clone(&server);
        let (token, hard) = (token.clone(), hard.clone());
        tracker.spawn(async move {
            // Dropping a session mid-transfer drops its temp file, which removes it: what
            // was not committed never appears.
            tokio::select! {
                () = handle_connection(Arc::clone(&server), stream, peer, token) => {}
                () = hard.cancelled() => {}
            }
            drop(permit);
            server.trim_when_idle();
        });
    }
    // New connections are refused from now on, not left waiting in the backlog.
    drop(listener);
    sweeper.abort();
    web_sweeper.abort();
    penalty_sync.abort();
    tracing::info!("shutting down: no new connections; waiting for sessions");
    tracker.close();
    // Idle sessions end at once; transfers in flight get the grace period.
    token.cancel();
    if tokio::time::timeout(server.limits.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; interrupting the remaining transfers");
        server.grace_over.cancel();
        // Interrupted uploads are kept as partials (a rename and a directory fsync each);
        // a session that cannot even do that in the close timeout is dropped.
        if tokio::time::timeout(server.limits.close_timeout, tracker.wait())
            .await
            .is_err()
        {
            hard.cancel();
            if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
                .await
                .is_err()
            {
                tracing::error!("sessions did not stop");
            }
        }
    }
    // Resumable uploads parked between requests are kept, so a restart resumes them.
    crate::frontend::http::tus::keep_parked(&server).await;
    Ok(())
}

/// Sets the C allocator up for a long-running server; call it before any thread starts.
///
/// glibc gives every thread that allocates an arena of its own, and `malloc_trim` cannot
/// shrink the top of those: a server that had moved a few files on several threads kept
/// 15-18 MiB it no longer used (measured: 331 KiB in use of 22.8 MiB held) until it exited.
/// One arena for all threads lets the idle trim give all of it back; transfers measured no
/// slower (1 GiB up and down, three runs each way).
pub fn tune_allocator() {
    crate::platform::limit_arenas();
}

/// Sweeps stale partial uploads of every user once an hour (logins sweep their own too), so
/// the partials of users who never come back do not stay forever.
async fn sweep_partials_periodically(server: Arc<Server>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let users = match server.users.list().await {
            Ok(users) => users,
            Err(e) => {
                tracing::warn!(error = %e, "sweeping partial uploads: the users cannot be listed");
                continue;
            }
        };
        if let Some(homes) = &server.homes {
            sweep_stored_partials(&server, homes, users).await;
            continue;
        }
        let s = Arc::clone(&server);
        let _ = tokio::task::spawn_blocking(move || {
            for user in users {
                let home = user.home_dir(&s.root);
                let Ok(jail) = crate::jail::Jail::open(&home, false) else {
                    continue;
                };
                match s.accounts.sweep(&home, &jail, s.limits.partial_ttl) {
                    Ok(f) if f.files == 0 => {}
                    Ok(f) => tracing::info!(user = %user.name, removed = f.files, "stale partial uploads removed"),
                    Err(e) => tracing::warn!(user = %user.name, error = %e, "sweeping partial uploads failed"),
                }
            }
        })
        .await;
    }
}

/// [`sweep_partials_periodically`] for homes in a home store: each user's home, one at a
/// time, on the blocking pool (the usage account's change lock is a blocking one).
async fn sweep_stored_partials(
    server: &Arc<Server>,
    homes: &Arc<dyn crate::storage::HomeStore>,
    users: Vec<crate::users::User>,
) {
    for user in users {
        let home = user.home_dir(&server.root);
        let Some(key) = login::home_key(&server.root, &home) else {
            continue;
        };
        let storage = match homes.open(&key).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(user = %user.name, error = %e, "sweeping partial uploads: the home cannot be opened");
                continue;
            }
        };
        let s = Arc::clone(server);
        let ledger_key = PathBuf::from(homes.key(&key));
        let swept = tokio::task::spawn_blocking(move || {
            let stored = quota::StoredHome {
                storage,
                runtime: tokio::runtime::Handle::current(),
            };
            s.accounts.sweep(&ledger_key, &stored, s.limits.partial_ttl)
        })
        .await;
        match swept {
            Ok(Ok(f)) if f.files == 0 => {}
            Ok(Ok(f)) => {
                tracing::info!(user = %user.name, removed = f.files, "stale partial uploads removed")
            }
            Ok(Err(e)) => {
                tracing::warn!(user = %user.name, error = %e, "sweeping partial uploads failed")
            }
            Err(_) => {}
        }
    }
}

/// Pulls the sources the shared penalty store refuses into this node's table, every
/// [`PENALTY_SYNC_EVERY`], so a source refused through any node is refused here at accept.
/// While the store cannot be reached the node goes on with its own table, and says so once.
async fn sync_penalties(server: Arc<Server>) {
    let (Some(shared), Some(local)) = (&server.shared_penalties, &server.penalties) else {
        return;
    };
    let mut tick = tokio::time::interval(PENALTY_SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reachable = true;
    loop {
        tick.tick().await;
        let pulled = tokio::time::timeout(
            PENALTY_STORE_TIMEOUT,
            shared.refused_sources(PENALTY_SYNC_MAX),
        )
        .await;
        match pulled {
            Ok(Ok(refused)) => {
                if !reachable {
                    tracing::info!("shared penalty store reachable again");
                    reachable = true;
                }
                let now = std::time::Instant::now();
                for (addr, left) in refused {
                    local.impose(addr, left, now);
                }
            }
            Ok(Err(e)) if reachable => {
                tracing::warn!(error = %e, "shared penalty store unreachable: refusing from this node's own table meanwhile");
                reachable = false;
            }
            Err(_) if reachable => {
                tracing::warn!(
                    "shared penalty store timed out: refusing from this node's own table meanwhile"
                );
                reachable = false;
            }
            _ => {}
        }
    }
}

/// Lets go of the homes the HTTPS front-end keeps open once they have been unused for the
/// idle timeout, every second, whether or not requests come: their session slots go back.
async fn sweep_web_homes(server: Arc<Server>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        server.web.sweep(server.limits.idle_timeout);
    }
}

/// Whether `peer` is refused at accept: its source is penalised, or already has its share of
/// connections. Logs why.
fn refused(server: &Server, peer: SocketAddr) -> bool {
    if let Some(p) = &server.penalties
        && let Some(left) = p.check(peer.ip(), std::time::Instant::now())
    {
        tracing::info!(%peer, remaining_s = left.as_secs(), "connection refused: source penalised");
        server.metrics.refused(crate::metrics::Refusal::Penalised);
        return true;
    }
    false
}

async fn handle_connection(
    server: Arc<Server>,
    mut stream: TcpStream,
    mut peer: SocketAddr,
    token: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let started = tokio::time::Instant::now();
    if server.limits.proxy_protocol {
        // Behind a load balancer the socket peer is the balancer (checked at accept): the
        // header names the real client, which is what limits, penalties and logs must see.
        // Nothing here is penalised: the only address known is the balancer's, and
        // punishing it would punish everyone behind it.
        let balancer = peer;
        let wait = server
            .limits
            .proxy_header_timeout
            .min(server.limits.handshake_timeout);
        match proxy::read_header(&mut stream, wait).await {
            Ok(h) if h.local => {
                // PROXY v2 LOCAL or v1 UNKNOWN: the balancer checking that ferry is up.
                tracing::debug!(peer = %balancer, "balancer health check");
                return;
            }
            Ok(proxy::Header {
                source: Some(real), ..
            }) => peer = real,
            Ok(_) => {
                tracing::warn!(
                    peer = %balancer,
                    "dropped: the PROXY header names no TCP client (UNSPEC or UNIX)"
                );
                return;
            }
            Err(proxy::ProxyError::Empty) => {
                // Connect and close (or reset) without a byte: a connect-only health check.
                tracing::debug!(peer = %balancer, "balancer health check (connect only)");
                return;
            }
            Err(e) => {
                tracing::warn!(peer = %balancer, error = %e, "dropped: bad PROXY header from a trusted balancer");
                return;
            }
        }
        if refused(&server, peer) {
            return;
        }
    }
    let Some(_slot) = server.per_source.take(
        server.source_of(peer.ip()),
        server.limits.max_connections_per_source,
    ) else {
        tracing::warn!(%peer, "connection refused: too many connections from this source");
        server.metrics.refused(crate::metrics::Refusal::PerSource);
        return;
    };
    let (admitted, evicted) = server.prelogin.admit(server.source_of(peer.ip()));
    if let Some(victim) = evicted {
        // Its connection is closed by its own task, which sees the cut.
        tracing::info!(source = %victim, for_peer = %peer, "pre-login connection evicted: its source holds the most");
        server.penalise(
            SocketAddr::new(victim, 0),
            penalty::Offence::NoAuthUnderPressure,
        );
    }
    let mut prelogin = match admitted {
        Ok(g) => g,
        Err(why) => {
            // The server's load, not necessarily this client's doing: no penalty.
            tracing::info!(%peer, reason = ?why, "connection refused: too many connections not logged in");
            server.metrics.refused(crate::metrics::Refusal::Prelogin);
            return;
        }
    };
    tracing::info!(%peer, "connected");
    let handshake = server.acceptor().accept(stream);
    let remaining = server
        .limits
        .handshake_timeout
        .saturating_sub(started.elapsed());
    let shaken = tokio::select! {
        r = tokio::time::timeout(remaining, handshake) => r,
        cut = prelogin.cut() => {
            tracing::info!(%peer, ?cut, "closed during the handshake: too many connections not logged in");
            if cut == prelogin::Cut::Expired {
                server.penalise(peer, penalty::Offence::GraceExceeded);
            }
            return;
        }
    };
    let tls = match shaken {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "tls handshake failed");
            server.penalise(peer, penalty::Offence::ProtocolError);
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "tls handshake timed out");
            server.penalise(peer, penalty::Offence::GraceExceeded);
            return;
        }
    };
    // Dispatch on the negotiated ALPN id to its front-end. A client that offered no ALPN (or
    // one no front-end speaks) is refused: keeping it would invite cross-protocol attacks.
    use crate::frontend::http;
    match crate::tls::negotiated_alpn(tls.get_ref().1) {
        Some(crate::protocol::ALPN) => session::run(server, tls, peer, token, prelogin).await,
        Some(b"h2") => http::serve(server, tls, peer, token, prelogin, http::Proto::H2).await,
        Some(b"http/1.1") => {
            http::serve(server, tls, peer, token, prelogin, http::Proto::H1).await;
        }
        _ => {
            tracing::info!(%peer, "dropped: no protocol this server speaks was negotiated");
            server.penalise(peer, penalty::Offence::ProtocolError);
        }
    }
}
