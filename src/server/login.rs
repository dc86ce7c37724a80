//! Logging in, whatever the front-end: the user and password checked (argon2 on a bounded
//! pool, an unknown user against a dummy hash so both failures cost the same), the failure
//! penalised and audited, the user's session slot taken, the home opened and its usage
//! counted. No frame or message type appears here: a front-end reads the credentials its
//! own way, calls [`login`], and maps a [`Refusal`] to its wire.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::time::Instant;

use super::{Server, quota};
use crate::domain::{MAX_PASSWORD_LEN, MAX_USER_LEN, Quota, Scope};
use crate::jail::{Jail, Stop, StorageError};
use crate::users::{self, Password};

/// A logged-in user, before a front-end wraps it: who, what they may do, their home as the
/// core sees it, limits and usage account, and the session slot that counts them (given back
/// when dropped).
pub(crate) struct UserSession {
    pub user: String,
    pub scope: Scope,
    /// The home through the core (its store, usage account and limits): what a front-end
    /// works on.
    pub home: crate::service::Home,
    pub slot: super::Slot<String>,
}

/// Why a login attempt did not log in. Each was logged (and a `Denied` penalised and
/// audited) before it is returned; the front-end only tells its peer.
pub(crate) enum Refusal {
    /// Wrong user name or password; deliberately never which.
    Denied,
    /// No password check became free in time; nothing was checked. The server's own load,
    /// not the client's doing: no penalty.
    Busy,
    /// The account store failed or did not answer in time: the server's trouble, not the
    /// client's, so no penalty.
    StoreUnavailable,
    /// The user has this many sessions already.
    TooManySessions(usize),
    /// The home could not be opened or counted; the text is for the peer.
    HomeUnavailable(&'static str),
    /// The server is shutting down.
    ShuttingDown,
}

/// One login attempt, the `attempt`th of its connection (for the audit line).
pub(super) async fn login(
    server: &Arc<Server>,
    name: String,
    password: Password,
    peer: SocketAddr,
    deadline: Instant,
    attempt: u32,
) -> Result<UserSession, Refusal> {
    match authenticate(server, &name, password, deadline).await? {
        Verdict::Busy => {
            tracing::warn!(%peer, "login refused: all password checks busy");
            Err(Refusal::Busy)
        }
        Verdict::StoreUnavailable => {
            tracing::warn!(%peer, "login refused: the account store is unavailable");
            Err(Refusal::StoreUnavailable)
        }
        Verdict::Denied => {
            server.penalise(peer, super::penalty::Offence::AuthFail);
            tracing::warn!(
                target: "ferry::audit",
                event = "login",
                %peer,
                user = %crate::sanitize::for_log(&name),
                attempt,
                result = "auth_failed"
            );
            Err(Refusal::Denied)
        }
        Verdict::Allowed {
            read_only,
            home,
            limits,
        } => admit(server, name, read_only, home, limits, peer, deadline).await,
    }
}

/// The device and inode of the directory at `path` (following symlinks), or `None` if there
/// is none: what a front-end that keeps a home open compares, so a home moved away and made
/// again under the same name is opened afresh rather than served from the old directory.
pub(crate) fn dir_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    m.is_dir().then(|| (m.dev(), m.ino()))
}

/// Checks a user name and password for a front-end that keeps its own sessions (the web
/// app's login): the same argon2 pool, dummy hash for unknown users, penalty and audit line as
/// a ferry/1 login, but no session slot and no home opened (the front-end opens the home when
/// a request needs it). `Ok` means the password is right.
pub(crate) async fn verify_login(
    server: &Arc<Server>,
    name: &str,
    password: Password,
    peer: SocketAddr,
    deadline: Instant,
    front_end: &'static str,
) -> Result<(), Refusal> {
    match authenticate(server, name, password, deadline).await? {
        Verdict::Busy => {
            tracing::warn!(%peer, "login refused: all password checks busy");
            Err(Refusal::Busy)
        }
        Verdict::StoreUnavailable => {
            tracing::warn!(%peer, "login refused: the account store is unavailable");
            Err(Refusal::StoreUnavailable)
        }
        Verdict::Denied => {
            server.penalise(peer, super::penalty::Offence::AuthFail);
            tracing::warn!(target: "ferry::audit", event = "login", %peer,
                user = %crate::sanitize::for_log(name), via = front_end, result = "auth_failed");
            Err(Refusal::Denied)
        }
        Verdict::Allowed { .. } => {
            tracing::info!(target: "ferry::audit", event = "login", %peer, user = %name,
                via = front_end, result = "ok");
            Ok(())
        }
    }
}

/// A user a front-end proved by its own means (an API token, a web session, a link's
/// owner): their home opened and counted as a login opens it, with no password check. A
/// user no longer in the store is `Denied`. `scope` narrows the user's own (a read-only
/// token of a full user is read-only; never the reverse).
pub(crate) async fn open_for(
    server: &Arc<Server>,
    name: &str,
    scope: Scope,
    peer: SocketAddr,
    deadline: Instant,
) -> Result<UserSession, Refusal> {
    let user = match tokio::time::timeout_at(deadline, server.lookup_user(name)).await {
        Ok(Ok(Some(u))) => u,
        Ok(Ok(None)) => return Err(Refusal::Denied),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the account store failed");
            return Err(Refusal::StoreUnavailable);
        }
        Err(_) => return Err(Refusal::StoreUnavailable),
    };
    let read_only = user.read_only || scope != Scope::Full;
    let home = user.home_dir(&server.root);
    let limits = quota::limits_of(&user);
    let mut session = admit(
        server,
        name.to_string(),
        read_only,
        home,
        limits,
        peer,
        deadline,
    )
    .await?;
    if scope != Scope::Full && session.scope != scope {
        session.home = session.home.scoped(scope.clone());
        session.scope = scope;
    }
    Ok(session)
}

/// The home of a link: `folder` of `owner`'s home as a store of its own (nothing outside it
/// can be named), counted in the owner's usage account and held to the owner's limits, with
/// `scope`: upload-only for a drop link (it only takes new files), read-only for a download
/// link. `link` names it in
/// logs and keys its partial uploads apart from the owner's. No session slot is taken:
/// the caller bounds link requests itself.
pub(crate) async fn open_link_home(
    server: &Arc<Server>,
    owner: &str,
    folder: &crate::storage::RemotePath,
    link: &str,
    scope: Scope,
    peer: SocketAddr,
    deadline: Instant,
) -> Result<crate::service::Home, Refusal> {
    let user = match tokio::time::timeout_at(deadline, server.lookup_user(owner)).await {
        Ok(Ok(Some(u))) => u,
        Ok(Ok(None)) => return Err(Refusal::Denied),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the account store failed");
            return Err(Refusal::StoreUnavailable);
        }
        Err(_) => return Err(Refusal::StoreUnavailable),
    };
    if user.read_only && matches!(scope, Scope::Full | Scope::UploadOnly) {
        // A read-only account takes no uploads, through a link or otherwise.
        return Err(Refusal::Denied);
    }
    let limits = quota::limits_of(&user);
    let home = user.home_dir(&server.root);
    let opened = open_home(server, home, limits, peer, owner, deadline).await;
    let (opened, account) = match opened {
        Ok(j) => j,
        Err(HomeError { reason, error }) => {
            tracing::error!(%peer, user = %owner, link, error = %error, reason, "cannot open home");
            return Err(Refusal::HomeUnavailable(reason));
        }
    };
    let name = format!("link:{link}");
    let jail = match opened {
        Opened::Local(jail) => jail,
        Opened::Stored { key, .. } => {
            // The folder as a home of its own in the store: nothing outside it can be named.
            let (Some(homes), Some(folder_key)) = (&server.homes, join_key(&key, folder)) else {
                return Err(Refusal::HomeUnavailable("home directory unavailable"));
            };
            let storage = match tokio::time::timeout_at(deadline, homes.open(&folder_key)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, user = %owner, link, error = %e, "the link's folder cannot be opened");
                    return Err(Refusal::HomeUnavailable("this link's folder is gone"));
                }
                Err(_) => return Err(Refusal::HomeUnavailable("home directory unavailable")),
            };
            let storage = server.metrics.timed_storage(storage);
            return Ok(crate::service::Home::new(&name, storage, account, limits).scoped(scope));
        }
    };
    let beneath = {
        let (jail, folder) = (Arc::clone(&jail), folder.clone());
        tokio::task::spawn_blocking(move || jail.open_beneath(&folder)).await
    };
    let folder_jail = match beneath {
        Ok(Ok(j)) => Arc::new(j),
        Ok(Err(e)) => {
            tracing::warn!(%peer, user = %owner, link, error = %e, "the link's folder cannot be opened");
            return Err(Refusal::HomeUnavailable("this link's folder is gone"));
        }
        Err(_) => return Err(Refusal::HomeUnavailable("home directory unavailable")),
    };
    Ok(core_home(server, &name, &folder_jail, account.as_ref(), limits).scoped(scope))
}

/// Checks `password` against an argon2id PHC string that is not an account's (a drop link's
/// password), on the same bounded pool as logins: `Ok(false)` when it does not match,
/// `Busy` when no check became free before `deadline`.
pub(crate) async fn verify_secret(
    server: &Arc<Server>,
    phc: &str,
    password: Password,
    deadline: Instant,
) -> Result<bool, Refusal> {
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return Ok(false);
    }
    let wait = server.limits.auth_queue_timeout;
    let permit = match tokio::time::timeout_at(deadline.min(Instant::now() + wait), async {
        server.auth_permits.acquire().await
    })
    .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return Err(Refusal::ShuttingDown),
        Err(_) => return Err(Refusal::Busy),
    };
    let (phc, warm) = (phc.to_string(), Arc::clone(&server.memory.login));
    let verified = tokio::task::spawn_blocking(move || {
        users::verify_password_in(&phc, &password, Some(&warm))
    })
    .await
    .unwrap_or(false);
    drop(permit);
    server.forget_login_memory();
    Ok(verified)
}

/// A user allowed in: their session slot taken, their home opened (and counted).
async fn admit(
    server: &Arc<Server>,
    name: String,
    read_only: bool,
    home: PathBuf,
    limits: Quota,
    peer: SocketAddr,
    deadline: Instant,
) -> Result<UserSession, Refusal> {
    let max = server.limits.max_sessions_per_user;
    let Some(slot) = server.per_user.take(name.clone(), max) else {
        tracing::warn!(%peer, user = %name, "login refused: too many sessions");
        return Err(Refusal::TooManySessions(max));
    };
    let opened = open_home(server, home, limits, peer, &name, deadline).await;
    let (opened, account) = match opened {
        Ok(j) => j,
        Err(HomeError { reason, error }) => {
            tracing::error!(%peer, user = %name, error = %error, reason, "cannot open home");
            return Err(Refusal::HomeUnavailable(reason));
        }
    };
    tracing::info!(target: "ferry::audit", event = "login", %peer, user = %name, result = "ok");
    let scope = if read_only {
        Scope::ReadOnly
    } else {
        Scope::Full
    };
    let home = match opened {
        Opened::Local(jail) => core_home(server, &name, &jail, account.as_ref(), limits),
        Opened::Stored { storage, .. } => {
            let storage = server.metrics.timed_storage(storage);
            crate::service::Home::new(&name, storage, account, limits)
        }
    }
    .scoped(scope.clone());
    Ok(UserSession {
        home,
        user: name,
        scope,
        slot,
    })
}

/// The core's view of a home opened as `jail`: the local store (its direct-I/O uploads
/// counted in the server's limit), gated by the usage account's change lock when the user has
/// limits, so the store measures and makes each change inside it.
fn core_home(
    server: &Server,
    user: &str,
    jail: &Arc<Jail>,
    account: Option<&Arc<quota::Account>>,
    limits: Quota,
) -> crate::service::Home {
    let mut storage = crate::storage::local::LocalStorage::with_direct_limit(
        Arc::clone(jail),
        Arc::clone(&server.memory.direct),
    );
    if let Some(a) = account {
        storage = storage.gated(Arc::clone(a) as Arc<dyn crate::storage::ChangeGate>);
    }
    let storage = server.metrics.timed_storage(Arc::new(storage));
    crate::service::Home::new(user, storage, account.cloned(), limits)
}

/// The outcome of one login attempt.
enum Verdict {
    Allowed {
        read_only: bool,
        home: PathBuf,
        limits: Quota,
    },
    Denied,
    /// No argon2 slot became free in time; nothing was checked.
    Busy,
    /// The account store failed or did not answer.
    StoreUnavailable,
}

/// Checks a user name and password. Unknown users are verified against a dummy hash with the
/// same parameters, so both failures take the same path and time. Any error denies.
async fn authenticate(
    server: &Arc<Server>,
    name: &str,
    password: Password,
    deadline: Instant,
) -> Result<Verdict, Refusal> {
    if name.is_empty()
        || name.len() > MAX_USER_LEN
        || password.is_empty()
        || password.len() > MAX_PASSWORD_LEN
    {
        // Refused without hashing: lengths are not secret, and hashing a huge password is
        // exactly the work an attacker would like the server to do.
        return Ok(Verdict::Denied);
    }
    // A name that can never be an account is not looked up (a store may choke on it): it
    // takes the unknown user's path. The lookup ends with the login's deadline.
    let looked_up = if users::validate_name(name).is_ok() {
        tokio::time::timeout_at(deadline, server.lookup_user(name)).await
    } else {
        Ok(Ok(None))
    };
    let (user, store_failed) = match looked_up {
        Ok(Ok(user)) => (user, false),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "login: the account store failed");
            (None, true)
        }
        Err(_) => {
            tracing::error!("login: the account store did not answer before the login deadline");
            (None, true)
        }
    };
    let known_hash = user.as_ref().map(|u| u.password_hash.clone());
    let wait = server.limits.auth_queue_timeout;
    let permit = match tokio::time::timeout_at(deadline.min(Instant::now() + wait), async {
        server.auth_permits.acquire().await
    })
    .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return Err(Refusal::ShuttingDown),
        Err(_) => return Ok(Verdict::Busy),
    };
    // The dummy hash is fetched on the blocking pool under the permit too: a store that makes
    // it lazily runs argon2 for it, which must not happen on an async worker.
    let store = Arc::clone(&server.users);
    let warm = Arc::clone(&server.memory.login);
    let verified = tokio::task::spawn_blocking(move || {
        let hash = known_hash.unwrap_or_else(|| store.dummy_hash());
        users::verify_password_in(&hash, &password, Some(&warm))
    })
    .await
    .unwrap_or(false);
    drop(permit);
    server.forget_login_memory();
    Ok(match user {
        // The same work was done as for any failure (timing tells nothing), but a store that
        // is down is the server's trouble: the client hears "busy" and earns no penalty.
        _ if store_failed => Verdict::StoreUnavailable,
        Some(u) if verified => Verdict::Allowed {
            read_only: u.read_only,
            home: u.home_dir(&server.root),
            limits: quota::limits_of(&u),
        },
        _ => Verdict::Denied,
    })
}

/// Why a login could not open its home: what the client is told, and the error for the log.
struct HomeError {
    reason: &'static str,
    error: StorageError,
}

/// A home opened by a login: a directory under the data root, or a home in the server's
/// [`HomeStore`](crate::storage::HomeStore).
enum Opened {
    Local(Arc<Jail>),
    Stored {
        storage: Arc<dyn crate::storage::Storage>,
        /// The home's key in the store.
        key: String,
    },
}

/// The key of `folder` beneath the home `key` (`None` for a name the store cannot hold).
fn join_key(key: &str, folder: &crate::storage::RemotePath) -> Option<String> {
    if folder.is_root() {
        return Some(key.to_string());
    }
    let rel = folder.as_relative();
    Some(format!("{key}/{}", rel.to_str()?))
}

/// The home `home` (under `root`) as a relative key of `/`-separated names, for a home
/// store; `None` when it is not beneath the root (an absolute home setting).
pub(crate) fn home_key(root: &std::path::Path, home: &std::path::Path) -> Option<String> {
    let rel = home.strip_prefix(root).ok()?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(n) => parts.push(n.to_str()?),
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Opens (creating on first login) the home, sweeps stale partial uploads, and for a user
/// with limits, opens the shared usage account (counting the home if it is the first session).
/// A count of the home stops when this login ends, however it ends.
async fn open_home(
    server: &Arc<Server>,
    home: PathBuf,
    limits: Quota,
    peer: SocketAddr,
    user: &str,
    deadline: Instant,
) -> Result<(Opened, Option<Arc<quota::Account>>), HomeError> {
    if let Some(homes) = &server.homes {
        let Some(key) = home_key(&server.root, &home) else {
            return Err(HomeError {
                reason: "home directory unavailable",
                error: StorageError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a home in a home store must be a relative path beneath the root",
                )),
            });
        };
        let storage = match tokio::time::timeout_at(deadline, homes.open(&key)).await {
            Ok(Ok(s)) => s,
            Ok(Err(error)) => {
                return Err(HomeError {
                    reason: "home directory unavailable",
                    error,
                });
            }
            Err(_) => {
                return Err(HomeError {
                    reason: "opening your home took too long; try again later",
                    error: StorageError::Io(std::io::Error::from(std::io::ErrorKind::TimedOut)),
                });
            }
        };
        let counted = quota::StoredHome {
            storage: Arc::clone(&storage),
            runtime: tokio::runtime::Handle::current(),
        };
        let ledger_key = PathBuf::from(homes.key(&key));
        let account = count_home(server, ledger_key, counted, limits, peer, user, deadline).await?;
        return Ok((Opened::Stored { storage, key }, account));
    }
    let server = Arc::clone(server);
    let user = user.to_string();
    let stop = Stop::at(deadline.into_std());
    // Raised when this future is dropped (timeout, disconnect, shutdown) or done.
    let _stop_walk = RaiseOnDrop(stop.clone());
    let open = tokio::task::spawn_blocking(move || {
        let unavailable = |error| HomeError {
            reason: "home directory unavailable",
            error,
        };
        let jail = Jail::open(&home, true).map_err(unavailable)?;
        let ttl = server.limits.partial_ttl;
        let (account, swept) = if limits == Quota::default() {
            (None, jail.sweep_partials(ttl))
        } else {
            let (account, swept) = server
                .accounts
                .open(&user, home, &jail, ttl, &stop)
                .map_err(|error| HomeError {
                    reason: "cannot count the usage of your home for the quota \
                             (a directory in it cannot be read, or it is too deep); \
                             ask the administrator",
                    error,
                })?;
            (Some(account), swept)
        };
        match swept {
            Ok(f) if f.files == 0 => {}
            Ok(f) => {
                tracing::info!(%peer, user, removed = f.files, "stale partial uploads removed");
            }
            Err(e) => tracing::warn!(%peer, user, error = %e, "sweeping partial uploads failed"),
        }
        Ok((Opened::Local(Arc::new(jail)), account))
    });
    match tokio::time::timeout_at(deadline, open).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(HomeError {
            reason: "home directory unavailable",
            error: StorageError::Io(std::io::Error::other(join)),
        }),
        Err(_) => Err(HomeError {
            reason: "opening your home took too long; try again later",
            error: StorageError::Io(std::io::Error::from(std::io::ErrorKind::TimedOut)),
        }),
    }
}

/// Sweeps the stale partials of a home in a home store and, for a user with limits, opens
/// its usage account (counting it if no node has), as [`open_home`] does for a local home.
async fn count_home(
    server: &Arc<Server>,
    key: PathBuf,
    home: quota::StoredHome,
    limits: Quota,
    peer: SocketAddr,
    user: &str,
    deadline: Instant,
) -> Result<Option<Arc<quota::Account>>, HomeError> {
    let server = Arc::clone(server);
    let user = user.to_string();
    let stop = Stop::at(deadline.into_std());
    let _stop_walk = RaiseOnDrop(stop.clone());
    let count = tokio::task::spawn_blocking(move || {
        use quota::CountableHome;
        let ttl = server.limits.partial_ttl;
        let (account, swept) = if limits == Quota::default() {
            (None, home.sweep_partials(ttl))
        } else {
            let (account, swept) = server
                .accounts
                .open(&user, key, &home, ttl, &stop)
                .map_err(|error| HomeError {
                    reason: "cannot count the usage of your home for the quota; \
                             ask the administrator",
                    error,
                })?;
            (Some(account), swept)
        };
        match swept {
            Ok(f) if f.files == 0 => {}
            Ok(f) => {
                tracing::info!(%peer, user, removed = f.files, "stale partial uploads removed");
            }
            Err(e) => tracing::warn!(%peer, user, error = %e, "sweeping partial uploads failed"),
        }
        Ok(account)
    });
    match tokio::time::timeout_at(deadline, count).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(HomeError {
            reason: "home directory unavailable",
            error: StorageError::Io(std::io::Error::other(join)),
        }),
        Err(_) => Err(HomeError {
            reason: "opening your home took too long; try again later",
            error: StorageError::Io(std::io::Error::from(std::io::ErrorKind::TimedOut)),
        }),
    }
}

/// Raises a [`Stop`] when dropped.
struct RaiseOnDrop(Stop);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.raise();
    }
}
