//! The HTTPS front-end: `h2` and `http/1.1` on the ferry port, chosen by ALPN
//! (docs/design/web.md; the routes are in docs/HTTP.md).
//!
//! The listener in [`crate::server`] does everything before the protocol is known: the caps at
//! accept, PROXY headers, penalties, the pre-login slot and the TLS handshake. It hands a
//! connection that negotiated `h2` or `http/1.1` to [`serve`], which runs hyper on it with the
//! limits below and ends it on shutdown, on an idle or stalled socket, or when the pre-login
//! rules cut it.
//!
//! - [`parse`]: the header and path grammar that is ours (percent-decoded path segments,
//!   digests, ranges, cookies, tus headers): pure functions, fuzzed.
//! - [`headers`]: the security headers every response carries, and the JSON error body.
//! - [`router`]: method and path to a handler.
//! - [`auth`]: who a request acts for (API tokens), and the homes kept open for them.
//! - [`files`]: `GET`/`HEAD`/`PUT /f/<path>` with digests, ranges and entity tags.
//! - [`assets`]: the web app's files, embedded; `/assets/<name>`.
//! - [`api`]: `/api/…`: list, stat, usage, sha256, mkdir, rename, remove, rmdir as JSON.
//! - [`drop`]: drop links, `/d/<token>`: uploads into one folder, nothing else.
//! - [`status`]: the core's errors as HTTP answers, in one place.
//! - [`tus`]: resumable uploads (tus 1.0), `/tus/` and `/d/<token>/tus/`.
//! - `watch`: the socket's byte counters and its idle and write-stall watchdog.
//!
//! # Penalties, by HTTP's own definitions
//! A browser opens sockets it may never use (preconnects) and keeps idle ones, so neither costs
//! anything here, unlike a ferry/1 connection that leaves without a login. What does cost: a
//! malformed request or an oversized head (`ProtocolError`), a request head that started and
//! then stalled past the head timeout (slowloris: `GraceExceeded`), an h2 connection the peer
//! made us end for abuse (rapid reset, `ENHANCE_YOUR_CALM`: `ProtocolError`), and failed
//! logins or unknown tokens and links (`AuthFail`, counted where they are checked).

pub mod api;
pub mod assets;
pub mod auth;
pub mod drop;
pub mod files;
pub mod headers;
pub mod links_api;
pub mod parse;
pub mod router;
pub mod status;
pub mod tus;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::server::Server;
use crate::server::penalty::Offence;
use crate::server::prelogin;

pub use watch::Watch;

/// The HTTP version a connection negotiated through ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// `http/1.1`.
    H1,
    /// `h2`.
    H2,
}

impl Proto {
    /// Its ALPN id.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Proto::H1 => b"http/1.1",
            Proto::H2 => b"h2",
        }
    }
}

/// The ALPN ids of this front-end, in the server's order of preference (after `ferry/1`).
pub const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Limits of the HTTP wire. Timeouts come from [`crate::server::Limits`]; these are the sizes.
pub mod limits {
    /// The largest request head HTTP/1.1 buffers (request line and headers); over it the
    /// client gets 431 and the connection closes. hyper's floor is 8 KiB.
    pub const H1_MAX_HEAD: usize = 64 * 1024;
    /// Header fields in one HTTP/1.1 request.
    pub const H1_MAX_HEADERS: usize = 64;
    /// Streams one h2 connection may have open at once.
    pub const H2_MAX_STREAMS: u32 = 32;
    /// The decoded size of one h2 header list.
    pub const H2_MAX_HEADER_LIST: u32 = 32 * 1024;
    /// Streams a client may reset before we accept them (rapid reset, CVE-2023-44487); past it
    /// the connection ends with GOAWAY `ENHANCE_YOUR_CALM`. Equal to h2's default, set so a
    /// changed default cannot loosen it.
    pub const H2_MAX_PENDING_RESETS: usize = 20;
    /// Streams we may reset for the client's errors before the connection ends
    /// (RUSTSEC-2024-0003).
    pub const H2_MAX_LOCAL_RESETS: usize = 100;
    /// The flow-control windows: a stream's and the connection's. The connection's bounds what
    /// one client can make us buffer.
    pub const H2_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
    pub const H2_CONN_WINDOW: u32 = 8 * 1024 * 1024;
}

/// One HTTP connection as its requests see it.
#[derive(Debug)]
pub struct Conn {
    pub(crate) server: Arc<Server>,
    /// The client (the address a trusted balancer named, if any).
    pub peer: SocketAddr,
    pub proto: Proto,
    pub(crate) watch: Arc<Watch>,
    /// A request proved a session, token or link: the connection leaves the pre-login phase.
    authenticated: AtomicBool,
    authenticated_now: Notify,
    /// Set by a handler that saw the peer misbehave in a way hyper cannot see (a malformed
    /// header of ours): the connection is penalised once when it ends.
    misbehaved: AtomicBool,
    /// Credentials refused on this connection (tokens, link tokens and passwords, logins).
    failures: std::sync::atomic::AtomicU32,
    /// Raised when the connection must end after its answers in flight.
    close_now: Notify,
    /// Its place in `ferry_sessions` from its first authenticated request until it closes.
    live: std::sync::OnceLock<crate::metrics::Live>,
}

impl Conn {
    /// A request on this connection authenticated: it no longer holds a pre-login place.
    pub fn authenticated(&self) {
        if !self.authenticated.swap(true, Ordering::AcqRel) {
            let _ = self
                .live
                .set(self.server.metrics.session(crate::metrics::Protocol::Http));
            self.authenticated_now.notify_one();
        }
    }

    /// The peer sent something malformed that only our code could tell: one
    /// `ProtocolError` when the connection ends.
    pub fn misbehaved(&self) {
        self.misbehaved.store(true, Ordering::Relaxed);
    }

    /// A credential was refused (each is also penalised where it is checked). Past the
    /// server's `max_auth_attempts` the connection ends after its answers in flight, as a
    /// ferry/1 session ends after that many failed logins: one connection cannot go on
    /// guessing however long it stays open.
    pub fn auth_failed(&self) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.server.limits().max_auth_attempts {
            self.close_now.notify_one();
        }
    }

    /// Whether this connection has used up its credential attempts: no more are checked on
    /// it (the answer is [`router::too_many_attempts`]) while it closes.
    pub fn auth_blocked(&self) -> bool {
        self.failures.load(Ordering::Acquire) >= self.server.limits().max_auth_attempts
    }

    /// The server this connection belongs to.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }
}

/// Serves one TLS connection that negotiated `proto`, until the client leaves, the server
/// shuts down, or a limit ends it. Penalises what the module's doc lists.
pub(crate) async fn serve<S>(
    server: Arc<Server>,
    tls: S,
    peer: SocketAddr,
    token: CancellationToken,
    prelogin: prelogin::Guard,
    proto: Proto,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let watch = Arc::new(Watch::new());
    let conn = Arc::new(Conn {
        server: Arc::clone(&server),
        peer,
        proto,
        watch: Arc::clone(&watch),
        authenticated: AtomicBool::new(false),
        authenticated_now: Notify::new(),
        misbehaved: AtomicBool::new(false),
        failures: std::sync::atomic::AtomicU32::new(0),
        close_now: Notify::new(),
        live: std::sync::OnceLock::new(),
    });
    let io = TokioIo::new(watch::IoWatch::new(tls, Arc::clone(&watch)));
    let svc = {
        let conn = Arc::clone(&conn);
        service_fn(move |req| router::handle(Arc::clone(&conn), req))
    };
    let limits = server.limits();
    let end = match proto {
        Proto::H1 => {
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(limits.handshake_timeout)
                .max_buf_size(limits::H1_MAX_HEAD)
                .max_headers(limits::H1_MAX_HEADERS)
                .keep_alive(true)
                .half_close(false);
            drive(b.serve_connection(io, svc), &conn, &token, prelogin).await
        }
        Proto::H2 => {
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(limits::H2_MAX_STREAMS)
                .max_header_list_size(limits::H2_MAX_HEADER_LIST)
                .max_pending_accept_reset_streams(limits::H2_MAX_PENDING_RESETS)
                .max_local_error_reset_streams(limits::H2_MAX_LOCAL_RESETS)
                .initial_stream_window_size(limits::H2_STREAM_WINDOW)
                .initial_connection_window_size(limits::H2_CONN_WINDOW)
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10));
            drive(b.serve_connection(io, svc), &conn, &token, prelogin).await
        }
    };
    let offence = match &end {
        // Each refusal was penalised when it happened.
        End::Done | End::Shutdown | End::Idle | End::AuthFailed => None,
        End::Cut(prelogin::Cut::Evicted) => None, // penalised when it happened
        // Cut for the login window under pressure: a browser's idle or preconnected socket
        // earns nothing; one caught half-way through a request head is a slowloris.
        End::Cut(prelogin::Cut::Expired) => {
            watch.partial_request().then_some(Offence::GraceExceeded)
        }
        End::Stalled => Some(Offence::GraceExceeded),
        End::Error(e) => classify(e, &watch),
    }
    .or_else(|| {
        conn.misbehaved
            .load(Ordering::Relaxed)
            .then_some(Offence::ProtocolError)
    });
    let (read, written) = watch.totals();
    tracing::info!(
        %peer,
        proto = ?proto,
        end = %end,
        requests = watch.requests(),
        read,
        written,
        "http connection closed"
    );
    if let Some(o) = offence {
        server.penalise(peer, o);
    }
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// The client closed it, or hyper finished it cleanly.
    Done,
    /// Ended for the server's shutdown.
    Shutdown,
    /// Idle past its limit with no request in flight.
    Idle,
    /// Too many credentials refused on it.
    AuthFailed,
    /// A response stopped moving for the stall timeout.
    Stalled,
    /// The pre-login rules cut it.
    Cut(prelogin::Cut),
    /// hyper ended it with an error.
    Error(hyper::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Done => f.write_str("done"),
            End::Shutdown => f.write_str("shutdown"),
            End::Idle => f.write_str("idle"),
            End::AuthFailed => f.write_str("too many refused credentials"),
            End::Stalled => f.write_str("stalled"),
            End::Cut(c) => write!(f, "cut ({c:?})"),
            End::Error(e) => write!(f, "error ({e})"),
        }
    }
}

/// What a connection error of hyper's says about the peer.
fn classify(e: &hyper::Error, watch: &Watch) -> Option<Offence> {
    if e.is_parse() || e.is_parse_too_large() || e.is_parse_version_h2() {
        return Some(Offence::ProtocolError);
    }
    if e.is_timeout() {
        // The head timeout. With no byte of a new request it is an idle keep-alive socket or a
        // preconnect: free. With part of a head it is someone sending slowly: slowloris.
        return watch.partial_request().then_some(Offence::GraceExceeded);
    }
    // h2 connection errors: the peer broke the protocol, or made us send GOAWAY for abuse
    // (rapid reset: ENHANCE_YOUR_CALM). A plain disconnect is no error of the peer's.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<h2::Error>() {
            return match h.reason() {
                Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL) | None => None,
                Some(_) if h.is_io() => None,
                Some(_) => Some(Offence::ProtocolError),
            };
        }
        source = s.source();
    }
    None
}

/// A hyper connection either protocol gives: a future that can be asked to finish gracefully.
trait Graceful: std::future::Future<Output = Result<(), hyper::Error>> {
    fn graceful(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> Graceful for http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs a connection under the watchdog, the pre-login rules and the shutdown signal.
async fn drive<C: Graceful>(
    connection: C,
    conn: &Conn,
    token: &CancellationToken,
    prelogin: prelogin::Guard,
) -> End {
    let limits = conn.server.limits().clone();
    tokio::pin!(connection);
    let mut prelogin = Some(prelogin);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // After a graceful shutdown was asked for: how long the connection still gets.
    let mut closing: Option<(tokio::time::Instant, End)> = None;
    loop {
        let holds_place = prelogin.is_some();
        let cut = async {
            match prelogin.as_mut() {
                Some(g) => g.cut().await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            r = connection.as_mut() => Event::Ended(r),
            () = conn.authenticated_now.notified(), if holds_place => Event::Authenticated,
            () = conn.close_now.notified(), if closing.is_none() => Event::TooManyFailures,
            cut = cut, if closing.is_none() => Event::Cut(cut),
            () = token.cancelled(), if closing.is_none() => Event::Shutdown,
            _ = tick.tick() => Event::Tick,
        };
        match event {
            Event::Ended(r) => {
                return match (r, closing) {
                    (_, Some((_, why))) => why,
                    (Ok(()), None) => End::Done,
                    (Err(e), None) => End::Error(e),
                };
            }
            Event::Authenticated => {
                if let Some(g) = prelogin.take() {
                    g.logged_in();
                }
            }
            Event::TooManyFailures => {
                connection.as_mut().graceful();
                let until = tokio::time::Instant::now() + limits.close_timeout;
                closing = Some((until, End::AuthFailed));
            }
            // Not logged in and the pre-login rules want the place: requests in flight are
            // public ones (pages, assets), so end it now.
            Event::Cut(cut) => return End::Cut(cut),
            Event::Shutdown => {
                connection.as_mut().graceful();
                // In-flight requests finish under the server's grace period, which ends them
                // through `grace_over`; this bound is only the backstop.
                let until =
                    tokio::time::Instant::now() + limits.shutdown_grace + limits.close_timeout;
                closing = Some((until, End::Shutdown));
            }
            Event::Tick => {
                if let Some((until, _)) = &closing {
                    if tokio::time::Instant::now() >= *until {
                        return closing.map_or(End::Shutdown, |(_, why)| why);
                    }
                    continue;
                }
                if conn.watch.write_stalled(limits.stall_timeout) {
                    return End::Stalled;
                }
                let authenticated = conn.authenticated.load(Ordering::Acquire);
                let idle_limit = if authenticated {
                    limits.idle_timeout
                } else {
                    limits.login_timeout
                };
                // The login window runs from the connection's start, as for ferry/1: public
                // pages fetched now and then do not hold a pre-login place for good.
                let window_over = !authenticated && conn.watch.age() >= limits.login_timeout;
                if conn.watch.idle_for(idle_limit) || window_over {
                    connection.as_mut().graceful();
                    closing = Some((
                        tokio::time::Instant::now() + limits.close_timeout,
                        End::Idle,
                    ));
                }
            }
        }
    }
}

/// What woke [`drive`].
enum Event {
    Ended(Result<(), hyper::Error>),
    Authenticated,
    TooManyFailures,
    Cut(prelogin::Cut),
    Shutdown,
    Tick,
}
