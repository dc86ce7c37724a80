//! Who a request acts for. Account routes take a Bearer API token (`ferry token add`): looked
//! up by id and checked by a constant-time compare of its secret's SHA-256, so each request
//! stays cheap and needs no argon2. A refused token counts as a failed login (the source is
//! penalised the same), and the answer never says why.
//!
//! A user's home is opened once, as a ferry/1 login opens it (created on first use, counted
//! for the quota, its session slot taken), and kept for all of that user's requests until it
//! has been unused for the idle timeout. Each request still looks the user up: a deleted
//! user's token stops working at once, and a changed account (home, limits, read-only) opens
//! afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};

use super::Conn;
use super::router::{Body, error};
use crate::server::login::{self, Refusal, UserSession};
use crate::server::penalty::Offence;
use crate::state::links::{Link, LinkStore, MemoryLinks, ResumeAllowances};
use crate::state::sessions::{MemorySessions, SessionKey, WebSessions};
use crate::state::tokens::{ApiTokens, MemoryTokens, TokenId};

/// The session cookie's name. `__Host-` makes browsers keep it only if it was set `Secure`,
/// with `Path=/` and no `Domain`: no other host or path can set or shadow it.
pub const COOKIE: &str = "__Host-ferry";
/// The header every change made with a session cookie must carry: the session's CSRF token.
pub const CSRF_HEADER: &str = "x-ferry-csrf";
/// A session ends after this long unused...
pub const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// ...and this long after login, whatever its use.
pub const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);

/// The session cookie of a request, if it has one that could be ours.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    // h2 may split Cookie into several fields.
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| super::parse::cookie_value(v, COOKIE))
}

/// What a session remembers of the password it was opened with.
pub fn password_stamp(password_hash: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(password_hash.as_bytes()).into()
}

/// A session's key: the SHA-256 of its cookie.
pub fn session_key(cookie: &str) -> SessionKey {
    use sha2::Digest;
    sha2::Sha256::digest(cookie.as_bytes()).into()
}

/// Whether a request comes from a page of this origin: `Sec-Fetch-Site`, when the browser
/// sends it, says `same-origin` (or `none`: typed by the user), and `Origin`, when sent, names
/// the host the request was made to. A cross-site form or fetch fails one or the other; it
/// also cannot set the CSRF header without a preflight we never grant.
pub fn same_origin<B>(req: &hyper::Request<B>) -> bool {
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return false;
    }
    let Some(origin) = h.get(header::ORIGIN) else {
        return true;
    };
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            h.get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        });
    match (origin.to_str().ok(), authority) {
        (Some(o), Some(a)) => o.strip_prefix("https://") == Some(a.as_str()),
        _ => false,
    }
}

/// Whom a request acts for: the user (a link's owner), how it proved it, and the home
/// through the core (already narrowed: a token's scope, a link's folder and upload-only
/// scope).
#[derive(Clone)]
pub struct Account {
    pub user: String,
    pub via: Via,
    /// The drop link's id, when the request came through one.
    pub link: Option<String>,
    pub home: crate::service::Home,
}

/// What proved a request, for audit lines.
#[derive(Debug, Clone)]
pub enum Via {
    Token(TokenId),
    Link(String),
    /// A web session, by the first 8 hex digits of its key.
    Session(String),
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Via::Token(id) => write!(f, "token:{id}"),
            Via::Link(id) => write!(f, "link:{id}"),
            Via::Session(id) => write!(f, "session:{id}"),
        }
    }
}

impl Account {
    /// A path as this account's peer should see it: the whole path for an account holder, the
    /// name alone through a link (whose folder the sender is never told).
    pub fn shown(&self, path: &crate::storage::RemotePath) -> String {
        match &self.link {
            Some(_) => path.file_name().unwrap_or_default().to_owned(),
            None => path.to_string(),
        }
    }

    /// Whom an upload's receipt names.
    pub fn recipient(&self) -> crate::receipt::Recipient {
        match &self.link {
            Some(id) => crate::receipt::Recipient::Link(id.clone()),
            None => crate::receipt::Recipient::User(self.user.clone()),
        }
    }
}

/// What the HTTP front-end keeps across connections.
pub struct WebState {
    /// Streamed transfers in flight, by user (a link's owner): each holds a blocking thread
    /// that waits on its client, so no one user, and not all of them together, may take the
    /// pool ([`WebState::transfer_slot`]).
    transfers: Arc<Mutex<HashMap<String, usize>>>,
    tokens: RwLock<Arc<dyn ApiTokens>>,
    sessions: RwLock<Arc<dyn WebSessions>>,
    links: RwLock<Arc<dyn LinkStore>>,
    /// Drop links' folders, opened as stores of their own, by link id.
    link_homes: Mutex<HashMap<String, Arc<CachedLink>>>,
    /// What download links let a client fetch again without counting (a resume).
    resume_allowances: Arc<Mutex<ResumeAllowances>>,
    /// One opening at a time per key (a user and scope, a link), so requests that arrive
    /// together open a home once and take one session slot.
    opening: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The key that signs upload receipts, and the server's name in them (`host:port` as
    /// senders reach it).
    receipts: RwLock<Option<(Arc<crate::receipt::ReceiptKey>, String)>>,
    homes: Mutex<HashMap<(String, ScopeKey), Arc<Cached>>>,
    /// Resumable uploads: their records and this node's parked uploads.
    pub(crate) tus: super::tus::TusState,
}

impl std::fmt::Debug for WebState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebState").finish_non_exhaustive()
    }
}

impl Default for WebState {
    fn default() -> Self {
        WebState {
            transfers: Arc::new(Mutex::new(HashMap::new())),
            tokens: RwLock::new(Arc::new(MemoryTokens::new())),
            sessions: RwLock::new(Arc::new(MemorySessions::new())),
            links: RwLock::new(Arc::new(MemoryLinks::new())),
            link_homes: Mutex::new(HashMap::new()),
            resume_allowances: Arc::new(Mutex::new(ResumeAllowances::new())),
            opening: Mutex::new(HashMap::new()),
            receipts: RwLock::new(None),
            homes: Mutex::new(HashMap::new()),
            tus: super::tus::TusState::default(),
        }
    }
}

/// Streamed transfers one user may have in flight over HTTP at once.
pub const MAX_TRANSFERS_PER_USER: usize = 8;
/// Streamed transfers in flight over HTTP at once, all users together: well under the
/// blocking pool (512 threads), which logins, token checks and ferry/1 also need.
pub const MAX_TRANSFERS: usize = 192;

/// One transfer's place (see [`WebState::transfer_slot`]); given back when dropped.
#[derive(Debug)]
pub struct TransferSlot {
    table: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Drop for TransferSlot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.user);
            }
        }
    }
}

/// A scope as a map key (the core's `Scope` may carry a path later).
type ScopeKey = String;

/// One user's opened home, shared by their requests.
struct Cached {
    session: UserSession,
    /// What the account looked like when it was opened: a change opens it again.
    account: AccountShape,
    last_used: Mutex<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct AccountShape {
    home: std::path::PathBuf,
    /// The home directory itself (device, inode): one moved away and made again under the
    /// same path is another home.
    dir: Option<(u64, u64)>,
    read_only: bool,
    limits: crate::domain::Quota,
    /// The password as it is: a changed one opens afresh too.
    password: [u8; 32],
}

impl WebState {
    /// Where API tokens are looked up (the server's default is an empty in-memory store;
    /// `ferry serve` sets `tokens.toml` beside the users file).
    pub fn set_tokens(&self, store: Arc<dyn ApiTokens>) {
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = store;
    }

    /// Signs receipts with `key`, naming the server `name` (`host:port`).
    pub fn set_receipts(&self, key: Arc<crate::receipt::ReceiptKey>, name: String) {
        *self.receipts.write().unwrap_or_else(|p| p.into_inner()) = Some((key, name));
    }

    /// The receipt key and the server's name, once set.
    pub fn receipts(&self) -> Option<(Arc<crate::receipt::ReceiptKey>, String)> {
        self.receipts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A place for one streamed transfer (a download's body, an upload over the small-file
    /// size) of `user`, or `None` when the user has [`MAX_TRANSFERS_PER_USER`] in flight or
    /// the server [`MAX_TRANSFERS`]: the caller answers 429 at once rather than wait.
    pub fn transfer_slot(&self, user: &str) -> Option<TransferSlot> {
        let mut t = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = t.values().sum();
        let mine = t.get(user).copied().unwrap_or(0);
        if total >= MAX_TRANSFERS || mine >= MAX_TRANSFERS_PER_USER {
            return None;
        }
        *t.entry(user.to_string()).or_default() += 1;
        Some(TransferSlot {
            table: Arc::clone(&self.transfers),
            user: user.to_string(),
        })
    }

    /// The web app's sessions.
    pub fn sessions(&self) -> Arc<dyn WebSessions> {
        Arc::clone(&self.sessions.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Where the web app's sessions live (the default is this server's memory; nodes that
    /// share a database share them, so a cookie works through every node).
    pub fn set_sessions(&self, store: Arc<dyn WebSessions>) {
        *self.sessions.write().unwrap_or_else(|p| p.into_inner()) = store;
    }

    /// Where drop links are looked up (`links.toml` beside the users file for `ferry serve`).
    pub fn set_links(&self, store: Arc<dyn LinkStore>) {
        *self.links.write().unwrap_or_else(|p| p.into_inner()) = store;
    }

    /// Download links' resume allowances (see [`ResumeAllowances`]).
    pub fn resume_allowances(&self) -> &Arc<Mutex<ResumeAllowances>> {
        &self.resume_allowances
    }

    /// The drop links.
    pub fn links(&self) -> Arc<dyn LinkStore> {
        Arc::clone(&self.links.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn tokens(&self) -> Arc<dyn ApiTokens> {
        Arc::clone(&self.tokens.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The lock under which `key`'s home is opened.
    fn opening(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut o = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        // Locks nobody holds or waits for are dropped as they go out of use.
        o.retain(|_, l| Arc::strong_count(l) > 1);
        Arc::clone(o.entry(key.to_string()).or_default())
    }

    /// Drops homes unused for `idle` (their session slots go back). The server calls it
    /// every second, whether or not requests come.
    pub(crate) fn sweep(&self, idle: Duration) {
        self.link_homes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, c| {
                c.last_used
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .elapsed()
                    < idle
            });
        let mut homes = self.homes.lock().unwrap_or_else(|p| p.into_inner());
        homes.retain(|_, c| {
            c.last_used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
                < idle
        });
    }
}

/// The `Authorization: Bearer` token of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// The 401 every refused credential gets, byte for byte the same whatever the reason.
pub fn unauthorized() -> Response<Body> {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "auth_failed",
        "authentication failed",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"ferry\""),
    );
    r
}

/// The account a request acts for, or the answer to send instead.
pub async fn account<B>(conn: &Conn, req: &hyper::Request<B>) -> Result<Account, Response<Body>> {
    let server = &conn.server;
    let headers = req.headers();
    if conn.auth_blocked() {
        return Err(super::router::too_many_attempts());
    }
    let (name, scope, via) = if let Some(presented) = bearer(headers) {
        let store = server.web.tokens();
        match crate::state::tokens::check(store.as_ref(), presented, SystemTime::now()).await {
            Ok(g) => (g.user, g.scope, Via::Token(g.id)),
            Err(refused) => {
                tracing::warn!(
                    target: "ferry::audit",
                    event = "token",
                    peer = %conn.peer,
                    result = "refused",
                    reason = refused.reason()
                );
                server.penalise(conn.peer, Offence::AuthFail);
                conn.auth_failed();
                return Err(unauthorized());
            }
        }
    } else if let Some(cookie) = session_cookie(headers) {
        // A cookie that ended (logout, idle, restart) is an ordinary event: no penalty.
        let key = session_key(cookie);
        let Some(session) = server.web.sessions().touch(key, SESSION_IDLE).await else {
            return Err(unauthorized());
        };
        if !matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD) {
            let sent = headers
                .get(CSRF_HEADER)
                .map(|v| v.as_bytes())
                .unwrap_or(b"");
            let ok_token = bool::from(subtle::ConstantTimeEq::ct_eq(sent, session.csrf.as_bytes()));
            if !ok_token || !same_origin(req) {
                tracing::warn!(target: "ferry::audit", event = "csrf", peer = %conn.peer,
                    user = %session.user, result = "refused");
                return Err(error(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "this request did not come from ferry's own page",
                ));
            }
        }
        let id = hex::encode(&key[..4]);
        // A password changed since the login ends the session (a deleted user fails below).
        if let Ok(Some(u)) = server.accounts().get(&session.user).await
            && password_stamp(&u.password_hash) != session.password_stamp
        {
            server.web.sessions().delete(key).await;
            return Err(unauthorized());
        }
        (session.user, crate::domain::Scope::Full, Via::Session(id))
    } else {
        return Err(unauthorized());
    };
    let grant_user = name;
    // The account as it is now: a user deleted since the token was made is refused, and a
    // changed one is opened afresh.
    let user = match server.accounts().get(&grant_user).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            tracing::warn!(target: "ferry::audit", event = "auth", peer = %conn.peer,
                via = %via, result = "refused", reason = "the user no longer exists");
            server.penalise(conn.peer, Offence::AuthFail);
            conn.auth_failed();
            return Err(unauthorized());
        }
        Err(e) => {
            tracing::error!(error = %e, "the account store failed");
            return Err(busy());
        }
    };
    let home_dir = user.home_dir(server.root());
    let shape = AccountShape {
        dir: login::dir_identity(&home_dir),
        home: home_dir,
        read_only: user.read_only,
        limits: crate::service::quota::limits_of(&user),
        password: password_stamp(&user.password_hash),
    };
    let limits = server.limits();
    let key = (grant_user.clone(), format!("{scope:?}"));
    let lookup = |shape: &AccountShape| {
        let homes = server.web.homes.lock().unwrap_or_else(|p| p.into_inner());
        homes.get(&key).filter(|c| c.account == *shape).cloned()
    };
    let cached = match lookup(&shape) {
        Some(c) => c,
        None => {
            let lock = server
                .web
                .opening(&format!("user:{}:{scope:?}", grant_user));
            let _opening = lock.lock().await;
            // The request that held the lock may have made the home: look at it again.
            let mut shape = shape;
            shape.dir = login::dir_identity(&shape.home);
            match lookup(&shape) {
                // Another request opened it meanwhile.
                Some(c) => c,
                None => {
                    // A stale entry gives its session slot back before the home is opened
                    // again.
                    let stale = server
                        .web
                        .homes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                    drop(stale);
                    let deadline = tokio::time::Instant::now() + limits.login_timeout;
                    let session =
                        login::open_for(server, &grant_user, scope.clone(), conn.peer, deadline)
                            .await
                            .map_err(refusal)?;
                    // The home exists now (the first use creates it).
                    shape.dir = login::dir_identity(&shape.home);
                    let c = Arc::new(Cached {
                        session,
                        account: shape,
                        last_used: Mutex::new(Instant::now()),
                    });
                    server
                        .web
                        .homes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key, Arc::clone(&c));
                    c
                }
            }
        }
    };
    *cached.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    conn.authenticated();
    Ok(Account {
        user: grant_user,
        via,
        link: None,
        home: cached.session.home.clone(),
    })
}

fn busy() -> Response<Body> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "the server cannot check accounts right now; try again later",
    )
}

/// The answer for a home that could not be opened.
fn refusal(r: Refusal) -> Response<Body> {
    match r {
        Refusal::Denied => unauthorized(),
        Refusal::Busy | Refusal::StoreUnavailable => busy(),
        Refusal::TooManySessions(max) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_sessions",
            &format!("this user has {max} sessions already"),
        ),
        Refusal::HomeUnavailable(why) => {
            error(StatusCode::SERVICE_UNAVAILABLE, "home_unavailable", why)
        }
        Refusal::ShuttingDown => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        ),
    }
}

/// Owner, folder, token hash, home path, and the folder directory's identity.
type LinkShape = (
    String,
    String,
    [u8; 32],
    std::path::PathBuf,
    Option<(u64, u64)>,
);

/// A drop link's folder as a store, kept while the link is used.
struct CachedLink {
    home: crate::service::Home,
    /// The link and owner as they were when opened: another folder, owner, folder directory
    /// or a link made again under the id opens afresh.
    shape: LinkShape,
    last_used: Mutex<Instant>,
}

/// The account a drop link's request acts for: the link's owner, through the link's folder
/// as a store of its own, upload-only. The link was found by its token and checked by the
/// caller (kind, expiry, password).
pub async fn link_account(conn: &Conn, link: &Link) -> Result<Account, Response<Body>> {
    use crate::state::links::LinkKind;
    let server = &conn.server;
    let id = link.id.to_string();
    let user = match server.accounts().get(&link.owner).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            return Err(error(
                StatusCode::NOT_FOUND,
                "not_found",
                "this link does not exist",
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "the account store failed");
            return Err(busy());
        }
    };
    let home_dir = user.home_dir(server.root());
    // The folder the link serves, as a directory now: one moved away and made again under
    // the same name is another folder.
    let served = match link.kind {
        LinkKind::Upload | LinkKind::DownloadFolder => link.folder.clone(),
        LinkKind::Download => match link.folder.rsplit_once('/') {
            Some((parent, _)) => parent.to_string(),
            None => String::new(),
        },
    };
    let folder_dir = login::dir_identity(&home_dir.join(served.trim_start_matches('/')));
    let shape = (
        link.owner.clone(),
        link.folder.clone(),
        link.token_sha256,
        home_dir,
        folder_dir,
    );
    let limits = server.limits();
    let lookup = |shape: &LinkShape| {
        let homes = server
            .web
            .link_homes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        homes.get(&id).filter(|c| c.shape == *shape).cloned()
    };
    let lock = server.web.opening(&format!("link:{id}"));
    let _opening = match lookup(&shape) {
        Some(_) => None,
        None => Some(lock.lock().await),
    };
    let cached = match lookup(&shape) {
        Some(c) => c,
        None => {
            let gone = || {
                error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "this link's folder is gone",
                )
            };
            let path = crate::storage::RemotePath::parse(&link.folder).map_err(|_| gone())?;
            // A download link serves one file: its folder is the store, and the scope reaches
            // that one name. A folder link's folder is the store itself and the scope reaches
            // all of it: nothing above it can even be named. Both read-only, in the core.
            let (folder, scope) = match link.kind {
                LinkKind::Upload => (path, crate::domain::Scope::UploadOnly),
                LinkKind::DownloadFolder => {
                    (path, crate::domain::Scope::ReadOnlyOne("/".to_owned()))
                }
                LinkKind::Download => {
                    let name = path.file_name().ok_or_else(gone)?.to_owned();
                    (
                        path.parent().ok_or_else(gone)?,
                        crate::domain::Scope::ReadOnlyOne(format!("/{name}")),
                    )
                }
            };
            let deadline = tokio::time::Instant::now() + limits.login_timeout;
            let home = login::open_link_home(
                server,
                &link.owner,
                &folder,
                &id,
                scope,
                conn.peer,
                deadline,
            )
            .await
            .map_err(refusal)?;
            let c = Arc::new(CachedLink {
                home,
                shape,
                last_used: Mutex::new(Instant::now()),
            });
            server
                .web
                .link_homes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone(), Arc::clone(&c));
            c
        }
    };
    *cached.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    conn.authenticated();
    Ok(Account {
        user: link.owner.clone(),
        via: Via::Link(id.clone()),
        link: Some(id),
        home: cached.home.clone(),
    })
}
