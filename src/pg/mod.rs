//! The `postgres` backend: accounts ([`accounts::PgAccounts`]) and shared state
//! ([`state`]: usage reservations, name locks, penalties, kept partials; [`links`]: drop
//! links and their counters; [`tokens`]: API tokens) in one PostgreSQL database that several
//! ferry nodes share (issue 15).
//!
//! - [`PgConfig`]: where the database is (`postgres://user@host:port/db`), its password
//!   (from `PGPASSWORD` or a password file; in the URL for tests only) and the pool's size
//!   and timeouts.
//! - [`connect`]: a pool (deadpool over tokio-postgres), the embedded migrations applied
//!   under an advisory lock, and a [`PgBackend`] that hands out each trait object.
//!
//! Every query is parameterised. Every operation is bounded in time by the configured
//! timeouts (waiting for a connection, connecting, the statement itself, and a client-side
//! bound over all three), so a database that is down or hung gives a clean error, never a
//! hang; connections that broke are dropped by the pool when next handed out, so the
//! backend recovers by itself when the database is back.
//!
//! Leases (reservations, count claims, name locks) expire on the database's clock
//! (`now()`), so nodes whose clocks differ still agree on them.

pub mod accounts;
pub mod digests;
pub mod links;
pub mod sessions;
pub mod state;
mod tls;
pub mod tokens;
pub mod uploads;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::accounts::AccountStore;
use crate::state::{NameLocks, PartialIndex, PenaltyStore, UsageLedger};

/// Connections a node keeps to the database at most, unless configured.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// Longest a new connection may take to be made (TCP, startup, authentication).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest one statement may run on the server (`statement_timeout`, and `lock_timeout`).
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest an operation waits for a free connection of the pool (each operation holds one
/// for about a millisecond on a near database).
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(2);

/// The advisory lock key that serialises migrations across nodes ("ferry" in ASCII).
const MIGRATION_LOCK: i64 = 0x0066_6572_7279;

/// The schema, in order: (version, SQL). Applied once each, in one transaction each start.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_accounts_and_state.sql")),
    (2, include_str!("migrations/0002_object_digests.sql")),
    (3, include_str!("migrations/0003_links_and_tokens.sql")),
    (4, include_str!("migrations/0004_sessions_and_uploads.sql")),
    (5, include_str!("migrations/0005_commit_in_one_call.sql")),
    (6, include_str!("migrations/0006_recount.sql")),
];

/// What went wrong in the `postgres` backend. Messages never contain the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The URL or an option is not usable.
    #[error("database configuration: {0}")]
    Config(String),
    /// The database could not be reached, or refused the connection.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A statement failed.
    #[error("database error: {0}")]
    Query(String),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migration(String),
}

/// Where the database is and how this node talks to it.
///
/// Parsed from `postgres://USER@HOST:PORT/DB` ([`PgConfig::from_url`]). The password comes
/// from, in order: the URL (for tests only: a URL ends up in process lists and shell
/// histories), the file named by the `password_file=PATH` option (its first line), or the
/// `PGPASSWORD` environment variable. Options in the URL's query (`?a=1&b=2`), besides
/// those tokio-postgres knows (`host=/socket/dir`, `application_name`, ...):
/// `password_file`, `pool_size`, `connect_timeout`, `statement_timeout` and `wait_timeout`
/// (seconds; fractions allowed), `sslmode` and `sslrootcert`.
///
/// TLS (`sslmode`): `verify-full` (or `require`, which means the same here) encrypts and
/// verifies the server's certificate, chain and host name, against `sslrootcert=PATH` (PEM)
/// or the system's roots; `disable` sends everything in clear. A database on loopback or a
/// Unix socket needs no TLS and gets none unless asked; a database elsewhere must be given
/// `sslmode=verify-full` (or, on a network the admin trusts, `sslmode=disable` said
/// explicitly): anything else is refused at start, since a password and every account
/// would cross the network in clear. `prefer` is refused for such a host (anyone on the path
/// can turn it into clear text).
#[derive(Clone)]
pub struct PgConfig {
    target: tokio_postgres::Config,
    /// How connections are encrypted: `None` is clear text.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Connections kept at most ([`DEFAULT_POOL_SIZE`]).
    pub pool_size: usize,
    /// Longest a new connection may take ([`DEFAULT_CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// Longest a statement may run, or wait for a lock ([`DEFAULT_STATEMENT_TIMEOUT`]).
    pub statement_timeout: Duration,
    /// Longest an operation waits for a free connection ([`DEFAULT_WAIT_TIMEOUT`]).
    pub wait_timeout: Duration,
    /// The password came in the URL.
    url_password: bool,
}

impl fmt::Debug for PgConfig {
    // tokio-postgres's Debug already redacts the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("target", &self.target)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("wait_timeout", &self.wait_timeout)
            .finish()
    }
}

impl PgConfig {
    /// Parses `url`, taking a missing password from `password_file` or `PGPASSWORD`.
    pub fn from_url(url: &str) -> Result<PgConfig, PgError> {
        PgConfig::from_url_and(url, std::env::var("PGPASSWORD").ok())
    }

    /// Like [`PgConfig::from_url`] with `pgpassword` standing for `PGPASSWORD`.
    pub fn from_url_and(url: &str, pgpassword: Option<String>) -> Result<PgConfig, PgError> {
        let bad = |what: String| PgError::Config(what);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(bad("expected a postgres://user@host:port/db URL".into()));
        }
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let mut passed = Vec::new();
        let mut password_file = None;
        let mut sslmode = None;
        let mut sslrootcert = None;
        let mut cfg = PgConfig {
            target: tokio_postgres::Config::new(),
            tls: None,
            pool_size: DEFAULT_POOL_SIZE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            url_password: false,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let secs = || {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| bad(format!("{key}: expected seconds, 0 < s <= 86400")))
            };
            match key {
                "password_file" => password_file = Some(PathBuf::from(value)),
                "pool_size" => {
                    cfg.pool_size = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=1024).contains(n))
                        .ok_or_else(|| bad("pool_size: expected 1 to 1024".into()))?
                }
                "connect_timeout" => cfg.connect_timeout = secs()?,
                "statement_timeout" => cfg.statement_timeout = secs()?,
                "wait_timeout" => cfg.wait_timeout = secs()?,
                "sslmode" => sslmode = Some(value),
                "sslrootcert" => sslrootcert = Some(PathBuf::from(value)),
                _ => passed.push(pair),
            }
        }
        let rest = if passed.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", passed.join("&"))
        };
        // tokio-postgres's own errors quote no password; still, say only what kind of
        // mistake it was.
        cfg.target = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| bad(format!("invalid URL: {e}")))?;
        if cfg.target.get_user().is_none() {
            return Err(bad("the URL names no user (postgres://USER@host/db)".into()));
        }
        if cfg.target.get_dbname().is_none() {
            return Err(bad(
                "the URL names no database (postgres://user@host/DB)".into()
            ));
        }
        cfg.tls = tls_for(&cfg.target, sslmode, sslrootcert.as_deref())?;
        if cfg.tls.is_none() {
            cfg.target
                .ssl_mode(tokio_postgres::config::SslMode::Disable);
        } else {
            cfg.target
                .ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        cfg.url_password = cfg.target.get_password().is_some();
        if !cfg.url_password {
            if let Some(path) = password_file {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| bad(format!("password file {}: {e}", path.display())))?;
                let line = text.lines().next().unwrap_or("");
                cfg.target.password(line);
            } else if let Some(pw) = pgpassword {
                cfg.target.password(pw);
            }
        }
        Ok(cfg)
    }

    /// Whether connections to the database are encrypted (and the server verified).
    pub fn encrypted(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens one connection outside the pool (the accounts' change listener), encrypted as
    /// the pool's are; its driver runs on a task of its own until the connection ends,
    /// sending what the server says unprompted (notifications) to `messages`.
    pub(crate) async fn connect_one(
        &self,
        messages: tokio::sync::mpsc::UnboundedSender<
            Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>,
        >,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), PgError> {
        let target = self.target();
        let connected = match &self.tls {
            None => tokio::time::timeout(self.connect_timeout, target.connect(NoTls))
                .await
                .map(|r| r.map(|(client, conn)| (client, tokio::spawn(drive(conn, messages))))),
            Some(tls) => {
                let tls = tls::MakeRustls(Arc::clone(tls));
                tokio::time::timeout(self.connect_timeout, target.connect(tls))
                    .await
                    .map(|r| r.map(|(client, conn)| (client, tokio::spawn(drive(conn, messages)))))
            }
        };
        match connected {
            Ok(Ok(pair)) => Ok(pair),
            Ok(Err(e)) => Err(PgError::Unavailable(db_message(&e))),
            Err(_) => Err(PgError::Unavailable("connect timed out".into())),
        }
    }

    /// Whether the URL itself carried the password (fine for tests; a command line or a
    /// config file others can read should not).
    pub fn url_has_password(&self) -> bool {
        self.url_password
    }

    /// The longest one operation may take from the caller's side: waiting for a
    /// connection, making one, and two statements' worth of the statement timeout (15 s with
    /// the defaults). A bound for a network that swallows packets, where the server-side
    /// timeout never answers.
    pub fn operation_timeout(&self) -> Duration {
        self.wait_timeout + self.connect_timeout + self.statement_timeout * 2
    }

    /// The connection settings tokio-postgres gets: ours, with the timeouts applied.
    fn target(&self) -> tokio_postgres::Config {
        let mut t = self.target.clone();
        let ms = self.statement_timeout.as_millis().max(1);
        let ours = format!("-c statement_timeout={ms} -c lock_timeout={ms}");
        let options = match t.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {ours}"),
            _ => ours,
        };
        t.options(options)
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        if t.get_application_name().is_none() {
            t.application_name("ferry");
        }
        t
    }
}

/// Why a record owned by a user (a drop link, an API token) may not be added.
pub(crate) enum AddRefused {
    /// The owner is not in the accounts database.
    NoUser,
    /// A record with the id exists.
    Taken,
    /// The owner holds the most live records already.
    OwnerFull,
    /// The table holds the most live records already.
    StoreFull,
}

/// The checks before a record `id` of `owner` goes into `table` (`owner_col` names its
/// owner), in `tx` under the advisory lock `lock`, so racing adds are counted one after
/// another: the owner exists (when `require_user`), the id is free, and the live records (not
/// expired at `now`, seconds) stay under `per_owner` and `total`. Then the expired ones are
/// removed. `table` and `owner_col` are the callers' constants, never input.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn check_add(
    tx: &tokio_postgres::Transaction<'_>,
    lock: i64,
    (table, owner_col): (&str, &str),
    id: i64,
    owner: &str,
    now: i64,
    require_user: bool,
    (per_owner, total): (usize, usize),
) -> Result<Option<AddRefused>, PgError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await?;
    if require_user
        && tx
            .query_opt(
                "SELECT 1 FROM ferry_users WHERE name = $1 FOR SHARE",
                &[&owner],
            )
            .await?
            .is_none()
    {
        return Ok(Some(AddRefused::NoUser));
    }
    if tx
        .query_opt(&format!("SELECT 1 FROM {table} WHERE id = $1"), &[&id])
        .await?
        .is_some()
    {
        return Ok(Some(AddRefused::Taken));
    }
    let counts = tx
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE {owner_col} = $1), count(*)
                 FROM {table} WHERE expires IS NULL OR expires > $2"
            ),
            &[&owner, &now],
        )
        .await?;
    let (of_owner, all): (i64, i64) = (col(&counts, 0)?, col(&counts, 1)?);
    if of_owner >= per_owner as i64 {
        return Ok(Some(AddRefused::OwnerFull));
    }
    if all >= total as i64 {
        return Ok(Some(AddRefused::StoreFull));
    }
    tx.execute(&format!("DELETE FROM {table} WHERE expires <= $1"), &[&now])
        .await?;
    Ok(None)
}

/// Forwards what a connection's server says unprompted until the connection ends or nobody
/// listens.
async fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    messages: tokio::sync::mpsc::UnboundedSender<
        Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>,
    >,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(m) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
        let failed = m.is_err();
        if messages.send(m).is_err() || failed {
            return;
        }
    }
}

/// Whether every host `target` names is this machine (a loopback address, `localhost`, or a
/// Unix socket's directory).
fn local_only(target: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    let hosts_local = target.get_hosts().iter().all(|h| match h {
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Host::Unix(_) => true,
    });
    let addrs_local = target.get_hostaddrs().iter().all(|ip| ip.is_loopback());
    // No host at all: tokio-postgres refuses to connect, so nothing crosses a network.
    hosts_local && addrs_local
}

/// The TLS a URL asks for (see [`PgConfig`]): `None` for clear text.
fn tls_for(
    target: &tokio_postgres::Config,
    sslmode: Option<&str>,
    sslrootcert: Option<&std::path::Path>,
) -> Result<Option<Arc<rustls::ClientConfig>>, PgError> {
    let bad = |what: String| PgError::Config(what);
    let local = local_only(target);
    let verify = match sslmode {
        None if local => false,
        None => {
            return Err(bad(
                "the database is not on this machine: add sslmode=verify-full (and \
                 sslrootcert=CA.pem unless its certificate is from a CA the system trusts), \
                 or sslmode=disable to send passwords and accounts in clear on a network \
                 you trust"
                    .into(),
            ));
        }
        Some("disable") => false,
        Some("prefer") if local => false,
        Some("prefer") => {
            return Err(bad(
                "sslmode=prefer falls back to clear text for anyone on the path who asks: \
                 say sslmode=verify-full, or sslmode=disable"
                    .into(),
            ));
        }
        Some("require" | "verify-full") => true,
        Some("verify-ca") => {
            return Err(bad(
                "sslmode=verify-ca is not offered: ferry checks the host name too \
                 (sslmode=verify-full)"
                    .into(),
            ));
        }
        Some(other) => {
            return Err(bad(format!(
                "sslmode={other}: expected verify-full, require (the same here) or disable"
            )));
        }
    };
    if !verify {
        if sslrootcert.is_some() {
            return Err(bad("sslrootcert without sslmode=verify-full".into()));
        }
        return Ok(None);
    }
    tls::client_config(sslrootcert).map(Some).map_err(bad)
}

/// The pool, and what every store of one node shares.
#[derive(Clone)]
pub(crate) struct Db {
    pool: Pool,
    cfg: Arc<PgConfig>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db").field("cfg", &self.cfg).finish()
    }
}

impl Db {
    /// A pool on `cfg`. Makes no connection yet.
    fn new(cfg: &PgConfig) -> Result<Db, PgError> {
        let manager_config = || ManagerConfig {
            // A connection whose socket closed (the server restarted) is dropped when it
            // is next handed out, without a round trip for the ones that are fine.
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = match &cfg.tls {
            None => Manager::from_config(cfg.target(), NoTls, manager_config()),
            Some(tls) => Manager::from_config(
                cfg.target(),
                tls::MakeRustls(Arc::clone(tls)),
                manager_config(),
            ),
        };
        let pool = Pool::builder(mgr)
            .max_size(cfg.pool_size)
            .wait_timeout(Some(cfg.wait_timeout))
            .create_timeout(Some(cfg.connect_timeout))
            .recycle_timeout(Some(cfg.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| PgError::Config(format!("pool: {e}")))?;
        Ok(Db {
            pool,
            cfg: Arc::new(cfg.clone()),
        })
    }

    /// A connection of the pool.
    pub(crate) async fn conn(&self) -> Result<deadpool_postgres::Object, PgError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => PgError::Unavailable(db_message(&e)),
            deadpool_postgres::PoolError::Timeout(t) => {
                PgError::Unavailable(format!("no connection within the timeout ({t:?})"))
            }
            other => PgError::Unavailable(other.to_string()),
        })
    }

    /// Runs `op` within the operation timeout: an error rather than a wait without end.
    pub(crate) async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, PgError>>,
    ) -> Result<T, PgError> {
        match tokio::time::timeout(self.cfg.operation_timeout(), op).await {
            Ok(r) => r,
            Err(_) => Err(PgError::Unavailable(format!(
                "no answer within {:?}",
                self.cfg.operation_timeout()
            ))),
        }
    }

    /// The configuration this pool was made from.
    pub(crate) fn config(&self) -> &PgConfig {
        &self.cfg
    }
}

/// Column `i` of `row`, or an error if the table is not what this version of ferry made
/// (never a panic, whatever the database holds).
pub(crate) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
) -> Result<T, PgError> {
    row.try_get(i)
        .map_err(|e| PgError::Query(format!("unexpected value in column {i}: {e}")))
}

/// A database error as a short message: the server's own text and code where there is one.
pub(crate) fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None if e.is_closed() => "the connection was closed".to_string(),
        None => {
            // The chain holds the cause (connection refused, timed out); never a password.
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> PgError {
        if e.as_db_error().is_some() {
            PgError::Query(db_message(&e))
        } else {
            PgError::Unavailable(db_message(&e))
        }
    }
}

/// Applies the migrations not applied yet, each in the one transaction that holds
/// `pg_advisory_xact_lock`: nodes that start together take turns, and each migration is
/// applied exactly once (the table `ferry_migrations` records them).
pub(crate) async fn migrate(db: &Db) -> Result<(), PgError> {
    db.bounded(async {
        let mut conn = db.conn().await?;
        let tx = conn.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS ferry_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        let done = tx
            .query("SELECT version FROM ferry_migrations", &[])
            .await?
            .iter()
            .map(|r| col::<i32>(r, 0))
            .collect::<Result<Vec<_>, _>>()?;
        for (version, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tx.batch_execute(sql)
                .await
                .map_err(|e| PgError::Migration(format!("{version}: {}", db_message(&e))))?;
            tx.execute(
                "INSERT INTO ferry_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    })
    .await
}

/// Penalty settings of the database's [`state::PgPenalties`], as `server::penalty`'s
/// `PenaltyConfig` has them (the server maps its own onto these).
#[derive(Debug, Clone)]
pub struct PenaltySettings {
    /// A source is banned once its remaining penalty exceeds this.
    pub min_before_ban: Duration,
    /// The most penalty a source can hold.
    pub max: Duration,
    /// Most sources tracked at once (a flood of fresh sources cannot grow the table past it).
    pub max_sources: usize,
    /// IPv4 addresses sharing this many leading bits are one source (default 32).
    pub ipv4_prefix: u8,
    /// IPv6 addresses sharing this many leading bits are one source (default 64).
    pub ipv6_prefix: u8,
    /// Networks never penalised.
    pub exempt: Vec<ipnet::IpNet>,
}

impl Default for PenaltySettings {
    /// sshd's defaults, as the server's own table has them.
    fn default() -> PenaltySettings {
        PenaltySettings {
            min_before_ban: Duration::from_secs(15),
            max: Duration::from_secs(600),
            max_sources: 65_536,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            exempt: Vec::new(),
        }
    }
}

/// One node's handles onto the database: accounts and each kind of shared state, on one
/// pool. Cheap to clone.
#[derive(Clone)]
pub struct PgBackend {
    db: Db,
    accounts: Arc<accounts::PgAccounts>,
}

impl fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgBackend").field("db", &self.db).finish()
    }
}

/// Connects to the database `cfg` names: builds the pool, brings the schema up to date and
/// starts listening for account changes. An error (within the timeouts) if the database
/// cannot be reached.
/// Asks for a recount of `user`'s home (`ferry user recount`): the next login of the user
/// on a node, at a moment when no other node has a session of the home, drops the home's
/// count and walks it again (see [`crate::state::UsageLedger::take_recount`]). False if there
/// is no such user.
pub async fn request_recount(cfg: &PgConfig, user: &str) -> Result<bool, PgError> {
    let db = Db::new(cfg)?;
    migrate(&db).await?;
    state::request_recount(&db, user).await
}

pub async fn connect(cfg: &PgConfig) -> Result<PgBackend, PgError> {
    let db = Db::new(cfg)?;
    migrate(&db).await?;
    let accounts = Arc::new(accounts::PgAccounts::start(db.clone()).await?);
    Ok(PgBackend { db, accounts })
}

impl PgBackend {
    /// The accounts.
    pub fn accounts(&self) -> Arc<dyn AccountStore> {
        self.accounts.clone()
    }

    /// The usage ledger.
    pub fn ledger(&self) -> Arc<dyn UsageLedger> {
        Arc::new(state::PgLedger::new(self.db.clone()))
    }

    /// The name locks.
    pub fn name_locks(&self) -> Arc<dyn NameLocks> {
        Arc::new(state::PgNameLocks::new(self.db.clone()))
    }

    /// The penalties, with `settings`.
    pub fn penalties(&self, settings: PenaltySettings) -> Arc<dyn PenaltyStore> {
        Arc::new(state::PgPenalties::new(self.db.clone(), settings))
    }

    /// The digests of objects committed to an object store.
    pub fn digests(&self) -> Arc<dyn crate::state::digests::DigestIndex> {
        Arc::new(digests::PgDigests::new(self.db.clone()))
    }

    /// The penalties with `local` (the node's own table) behind them: see
    /// [`state::PenaltiesWithFallback`]. What a server checks at accept.
    pub fn penalties_with_fallback(
        &self,
        settings: PenaltySettings,
        local: Arc<dyn PenaltyStore>,
        check_timeout: Duration,
    ) -> Arc<dyn PenaltyStore> {
        Arc::new(state::PenaltiesWithFallback::new(
            self.penalties(settings),
            local,
            check_timeout,
        ))
    }

    /// The drop links, shared by every node.
    pub fn links(&self) -> Arc<dyn crate::state::links::LinkStore> {
        Arc::new(links::PgLinks::new(self.db.clone()))
    }

    /// The API tokens, shared by every node.
    pub fn tokens(&self) -> Arc<dyn crate::state::tokens::ApiTokens> {
        Arc::new(tokens::PgTokens::new(self.db.clone()))
    }

    /// The index of kept partials.
    pub fn partials(&self) -> Arc<dyn PartialIndex> {
        Arc::new(state::PgPartials::new(self.db.clone()))
    }

    /// The web app's sessions, shared by every node.
    pub fn web_sessions(&self) -> Arc<dyn crate::state::sessions::WebSessions> {
        Arc::new(sessions::PgSessions::new(self.db.clone()))
    }

    /// The records of resumable (tus) uploads, shared by every node.
    pub fn upload_sessions(&self) -> Arc<dyn crate::state::uploads::UploadSessions> {
        Arc::new(uploads::PgUploads::new(self.db.clone()))
    }

    /// See [`request_recount`].
    pub async fn request_recount(&self, user: &str) -> Result<bool, PgError> {
        state::request_recount(&self.db, user).await
    }

    /// Deletes what expired (leases, count claims, name locks, penalties, web sessions, live
    /// homes): reads ignore it already; this keeps the tables small. A server runs it every
    /// minute or so. (Expired upload records are taken by the tus keeper, which ends their
    /// uploads.)
    pub async fn sweep(&self) -> Result<u64, PgError> {
        Ok(state::sweep(&self.db).await? + sessions::sweep(&self.db).await?)
    }

    /// Runs [`PgBackend::sweep`] every `every` until the returned task is aborted; a sweep
    /// that fails (the database is down) is logged and tried again next time.
    pub fn spawn_sweeper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let backend = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = backend.sweep().await {
                    tracing::warn!(error = %e, "shared state: sweep of expired rows failed");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_gives_host_port_user_and_database() {
        let cfg = PgConfig::from_url_and("postgres://ferry@127.0.0.1:15432/drop", None).unwrap();
        let t = cfg.target();
        assert_eq!(t.get_user(), Some("ferry"));
        assert_eq!(t.get_dbname(), Some("drop"));
        assert_eq!(t.get_ports(), &[15432]);
        assert_eq!(t.get_password(), None);
        assert_eq!(cfg.pool_size, DEFAULT_POOL_SIZE);
        assert_eq!(t.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        assert!(t.get_options().unwrap().contains("statement_timeout=5000"));
    }

    #[test]
    fn the_password_comes_from_the_url_then_the_file_then_pgpassword() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\nignored\n").unwrap();
        let env = Some("from-env".to_string());
        let with = |url: &str| {
            PgConfig::from_url_and(url, env.clone())
                .unwrap()
                .target
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned())
        };
        assert_eq!(
            with("postgres://u:from-url@localhost/db").as_deref(),
            Some("from-url")
        );
        let by_file = format!("postgres://u@localhost/db?password_file={}", file.display());
        assert_eq!(with(&by_file).as_deref(), Some("from-file"));
        assert_eq!(
            with("postgres://u@localhost/db").as_deref(),
            Some("from-env")
        );
        // Never in the Debug form.
        let cfg = PgConfig::from_url_and("postgres://u:s3cret@localhost/db", None).unwrap();
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn options_are_ours_or_passed_on_and_bad_ones_are_refused() {
        let cfg = PgConfig::from_url_and(
            "postgres://u@localhost/db?pool_size=3&wait_timeout=0.5&statement_timeout=2&application_name=x",
            None,
        )
        .unwrap();
        assert_eq!(cfg.pool_size, 3);
        assert_eq!(cfg.wait_timeout, Duration::from_millis(500));
        assert_eq!(cfg.statement_timeout, Duration::from_secs(2));
        assert_eq!(cfg.target().get_application_name(), Some("x"));
        for bad in [
            "mysql://u@localhost/db",
            "postgres://localhost/db",
            "postgres://u@localhost",
            "postgres://u@localhost/db?pool_size=0",
            "postgres://u@localhost/db?wait_timeout=-1",
            "postgres://u@localhost/db?no_such_option=1",
            "postgres://u@localhost/db?password_file=/nonexistent/pw",
        ] {
            assert!(
                matches!(PgConfig::from_url_and(bad, None), Err(PgError::Config(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_database_off_this_machine_needs_tls_said_or_refused() {
        let cfg = |url: &str| PgConfig::from_url_and(url, None);
        // Loopback and Unix sockets: clear unless asked.
        for local in [
            "postgres://u@127.0.0.1:5432/db",
            "postgres://u@localhost/db",
            "postgres://u@[::1]:5432/db",
            "postgres://u@localhost/db?host=/run/postgresql",
            "postgres://u@localhost/db?sslmode=prefer",
        ] {
            assert!(!cfg(local).unwrap().encrypted(), "{local}");
        }
        // Elsewhere: refused without a word on TLS, or with the downgradable `prefer`.
        for remote in [
            "postgres://u@db.example.org/db",
            "postgres://u@10.0.0.5:5432/db",
            "postgres://u@db.example.org/db?sslmode=prefer",
            "postgres://u@localhost/db?hostaddr=10.0.0.5",
        ] {
            match cfg(remote) {
                Err(PgError::Config(why)) => assert!(why.contains("sslmode"), "{remote}: {why}"),
                other => panic!("{remote}: {other:?}"),
            }
        }
        // Said: clear on purpose, or verified against the system's roots (or a named CA).
        let clear = cfg("postgres://u@db.example.org/db?sslmode=disable").unwrap();
        assert!(!clear.encrypted());
        assert_eq!(
            clear.target().get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        let dir = tempfile::tempdir().unwrap();
        crate::certs::generate(dir.path(), &[], false).unwrap();
        let ca = dir.path().join("ca.pem");
        for mode in ["verify-full", "require"] {
            let url = format!(
                "postgres://u@db.example.org/db?sslmode={mode}&sslrootcert={}",
                ca.display()
            );
            let tls = cfg(&url).unwrap();
            assert!(tls.encrypted(), "{url}");
            assert_eq!(
                tls.target().get_ssl_mode(),
                tokio_postgres::config::SslMode::Require
            );
        }
        // Mistakes are named.
        for (bad, says) in [
            (
                "postgres://u@db.example.org/db?sslmode=verify-ca",
                "verify-full",
            ),
            (
                "postgres://u@db.example.org/db?sslmode=allow",
                "sslmode=allow",
            ),
            (
                "postgres://u@db.example.org/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                "sslrootcert",
            ),
            (
                "postgres://u@localhost/db?sslrootcert=/etc/ca.pem",
                "sslrootcert without",
            ),
        ] {
            match cfg(bad) {
                Err(PgError::Config(why)) => assert!(why.contains(says), "{bad}: {why}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let url = format!(
            "postgres://u@db.example.org/db?sslmode=verify-full&sslrootcert={}",
            empty.display()
        );
        assert!(matches!(cfg(&url), Err(PgError::Config(why)) if why.contains("no certificate")));
    }
}
