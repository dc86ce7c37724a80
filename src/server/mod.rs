//! The server: a listener that admits connections under limits, one task per session, and one
//! file per command under `cmd/`.
//!
//! A connection goes through named phases, each under its own timeout: TLS handshake (with the
//! `ferry/1` ALPN checked afterwards), hello and login, then requests until the client leaves,
//! idles too long, or the server shuts down.

mod cmd;
mod error;
mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::users::UserDb;

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
            max_auth_attempts: 3,
            auth_concurrency: cores,
            auth_queue_timeout: Duration::from_secs(20),
            shutdown_grace: Duration::from_secs(30),
            partial_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Everything a running server needs; shared by all sessions.
pub struct Server {
    tls: TlsAcceptor,
    /// Swapped whole on reload; sessions take a snapshot at login.
    users: RwLock<Arc<UserDb>>,
    root: PathBuf,
    limits: Limits,
    /// Bounds concurrent argon2 verifications: memory and CPU for logins stay capped no
    /// matter how many clients try at once.
    auth_permits: Semaphore,
    /// One permit per live connection.
    conn_permits: Arc<Semaphore>,
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
    /// Builds a server from a TLS configuration, a user database and the data root.
    pub fn new(
        tls: Arc<rustls::ServerConfig>,
        users: UserDb,
        root: PathBuf,
        limits: Limits,
    ) -> Arc<Server> {
        Arc::new(Server {
            tls: TlsAcceptor::from(tls),
            users: RwLock::new(Arc::new(users)),
            root,
            auth_permits: Semaphore::new(limits.auth_concurrency.max(1)),
            conn_permits: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
        })
    }

    /// Replaces the user database; sessions already logged in keep going.
    pub fn replace_users(&self, users: UserDb) {
        let mut guard = match self.users.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(users);
    }

    fn users(&self) -> Arc<UserDb> {
        match self.users.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
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
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
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
            drop(stream);
            continue;
        };
        let server = Arc::clone(&server);
        let token = token.clone();
        tracker.spawn(async move {
            handle_connection(server, stream, peer, token).await;
            drop(permit);
        });
    }
    tracing::info!("shutting down: no new connections; waiting for sessions");
    tracker.close();
    // Idle sessions end at once; transfers in flight get the grace period.
    token.cancel();
    if tokio::time::timeout(server.limits.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining sessions");
    }
    Ok(())
}

async fn handle_connection(
    server: Arc<Server>,
    stream: TcpStream,
    peer: SocketAddr,
    token: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    tracing::info!(%peer, "connected");
    let handshake = server.tls.accept(stream);
    let tls = match tokio::time::timeout(server.limits.handshake_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "tls handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "tls handshake timed out");
            return;
        }
    };
    if !crate::tls::alpn_ok(tls.get_ref().1) {
        // A client that offered no ALPN (or another one) is not speaking ferry; keeping it
        // would invite cross-protocol attacks.
        tracing::info!(%peer, "dropped: ferry/1 ALPN not negotiated");
        return;
    }
    session::run(server, tls, peer, token).await;
}
