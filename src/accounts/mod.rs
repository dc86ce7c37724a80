//! Accounts behind one seam: the [`AccountStore`] trait, the [`User`] record it keeps, the
//! [`UserChange`] that `set` applies, and the one [`AccountError`] of every store.
//!
//! The server looks users up through the trait at each login and `ferry user ...` edits them
//! through it, so neither knows where accounts live. [`toml::TomlAccounts`] keeps them in the
//! users file (today's format, rewritten atomically, reloaded when it changes); a PostgreSQL
//! store is next. Each store must pass the same contract suite (`tests/account_contract.rs`),
//! unchanged.
//!
//! A store keeps password hashes; it never verifies a password. Hashing, verification and
//! argon2's memory stay in [`crate::users`], so a login costs the same whatever the store.

pub mod links;
pub mod table_file;
pub mod tokens;
pub mod toml;

use std::fmt;
use std::path::{Path, PathBuf};

use tokio::sync::watch;

pub use crate::domain::BoxFuture;

/// Where accounts live: get, list, add, set, passwd, del, and a notice of changes.
///
/// Async at the boundary (a database answers over the network), object safe so a server holds
/// an `Arc<dyn AccountStore>`, and shared by every session. What every store must do, and what
/// the contract suite checks:
///
/// - [`get`](AccountStore::get) sees every write made before it began, by this store or by
///   another one on the same backing (another process editing the same users file, another
///   node on the same database): a changed password is in force at the next login.
/// - [`list`](AccountStore::list) is sorted by name, byte by byte.
/// - [`add`](AccountStore::add) of a name that is taken fails with
///   [`AccountError::AlreadyExists`]; of several concurrent adds of one name, exactly one wins.
/// - [`set`](AccountStore::set), [`passwd`](AccountStore::passwd) and
///   [`del`](AccountStore::del) of a name that is not there (including a name no account can
///   have) fail with [`AccountError::NotFound`]; `get` of such a name is `None`.
/// - A name that breaks [`crate::users::validate_name`], a hash that is not a usable argon2id
///   PHC string, an empty home or a limit over `i64::MAX` fail with [`AccountError::Invalid`].
/// - [`changes`](AccountStore::changes) moves after every write of this store, and once this
///   store has seen a write of another one.
pub trait AccountStore: Send + Sync + fmt::Debug {
    /// The user called `name`, or `None`.
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<User>, AccountError>>;

    /// Every user, sorted by name (by its bytes, as Rust sorts strings).
    fn list(&self) -> BoxFuture<'_, Result<Vec<User>, AccountError>>;

    /// Adds `user` (its name, hash, home, access and limits).
    fn add<'a>(&'a self, user: &'a User) -> BoxFuture<'a, Result<(), AccountError>>;

    /// Changes what `change` names of the user `name`, and nothing else.
    fn set<'a>(
        &'a self,
        name: &'a str,
        change: &'a UserChange,
    ) -> BoxFuture<'a, Result<(), AccountError>>;

    /// Replaces the password hash of the user `name`.
    fn passwd<'a>(
        &'a self,
        name: &'a str,
        password_hash: &'a str,
    ) -> BoxFuture<'a, Result<(), AccountError>>;

    /// Removes the user `name` (their files are not the store's business).
    fn del<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), AccountError>>;

    /// A generation number that moves whenever the accounts may have changed. A server that
    /// caches anything about accounts drops it when this moves.
    fn changes(&self) -> watch::Receiver<u64>;

    /// A valid argon2id hash of a secret nobody knows, with the parameters most users have, so
    /// that checking an unknown user costs what a wrong password costs. Cheap: no I/O, made
    /// ahead of time.
    fn dummy_hash(&self) -> String;
}

/// What went wrong in an [`AccountStore`]. Messages are short and lowercase; they never
/// contain a password or a hash.
///
/// `Invalid` and `Backend` carry their whole message, so a store's own wording (the users
/// file names the file and line) reaches the admin unchanged. None has a `source()`: a
/// reporter that prints the chain (`ferry: {e:#}`) would show it twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// No user has this name.
    #[error("no user `{}`", .0.escape_debug())]
    NotFound(String),
    /// A user has this name already.
    #[error("user `{}` already exists", .0.escape_debug())]
    AlreadyExists(String),
    /// The input is refused: a bad name, hash, home or limit.
    #[error("{reason}")]
    Invalid {
        /// What is wrong, naming the user and field.
        reason: String,
    },
    /// The store failed: the file or database could not be read or written, or what it holds
    /// is broken.
    #[error("{reason}")]
    Backend {
        /// What failed, and where.
        reason: String,
    },
}

impl AccountError {
    /// An [`AccountError::Invalid`] with this reason.
    pub fn invalid(reason: impl Into<String>) -> AccountError {
        AccountError::Invalid {
            reason: reason.into(),
        }
    }

    /// An [`AccountError::Backend`] with this reason.
    pub fn backend(reason: impl Into<String>) -> AccountError {
        AccountError::Backend {
            reason: reason.into(),
        }
    }
}

/// One user: what a store keeps and a login needs.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// The login name; valid by [`crate::users::validate_name`].
    pub name: String,
    /// The argon2id PHC hash string; already checked to parse.
    pub password_hash: String,
    /// The home directory as written in the file; `None` means `<root>/<name>`. A relative path
    /// is relative to the server's root directory. See [`User::home_dir`].
    pub home: Option<PathBuf>,
    /// May list and get, never change anything.
    pub read_only: bool,
    /// Most bytes the user's files may take (kept partial uploads and uploads in flight
    /// included); `None` is unlimited.
    pub quota_bytes: Option<u64>,
    /// Most files and directories the user may have (as inode quotas count them; the home
    /// itself is not counted); `None` is unlimited.
    pub quota_files: Option<u64>,
    /// Largest single file the user may upload; `None` is unlimited.
    pub max_file_size: Option<u64>,
}

impl User {
    /// A read-write user with the default home and no limits.
    pub fn new(name: impl Into<String>, password_hash: impl Into<String>) -> User {
        User {
            name: name.into(),
            password_hash: password_hash.into(),
            home: None,
            read_only: false,
            quota_bytes: None,
            quota_files: None,
            max_file_size: None,
        }
    }

    /// Whether any quota or size limit applies to this user.
    pub fn has_limits(&self) -> bool {
        self.quota_bytes.is_some() || self.quota_files.is_some() || self.max_file_size.is_some()
    }

    /// The user's home directory, given the server's root directory.
    pub fn home_dir(&self, root: &Path) -> PathBuf {
        match &self.home {
            // `join` keeps an absolute `home` as it is.
            Some(home) => root.join(home),
            None => root.join(&self.name),
        }
    }

    /// Every setting of this user (all but the name and hash) as a change that sets each.
    pub fn settings(&self) -> UserChange {
        UserChange {
            home: Some(self.home.clone()),
            read_only: Some(self.read_only),
            quota_bytes: Some(self.quota_bytes),
            quota_files: Some(self.quota_files),
            max_file_size: Some(self.max_file_size),
        }
    }
}

impl fmt::Debug for User {
    // The hash is not the password, but it is what an offline attack starts from: keep it out
    // of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("password_hash", &"<argon2id>")
            .field("home", &self.home)
            .field("read_only", &self.read_only)
            .field("quota_bytes", &self.quota_bytes)
            .field("quota_files", &self.quota_files)
            .field("max_file_size", &self.max_file_size)
            .finish()
    }
}

/// Changes to a user's settings; `None` leaves a field as it is. For the optional fields,
/// `Some(None)` removes the field: the default home, no quota, no size limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserChange {
    /// The home directory; `Some(None)` is the default, `<root>/<name>`.
    pub home: Option<Option<PathBuf>>,
    /// May list and get, never change anything.
    pub read_only: Option<bool>,
    /// Most bytes; `Some(None)` is unlimited.
    pub quota_bytes: Option<Option<u64>>,
    /// Most files; `Some(None)` is unlimited.
    pub quota_files: Option<Option<u64>>,
    /// Largest single upload; `Some(None)` is unlimited.
    pub max_file_size: Option<Option<u64>>,
}

impl UserChange {
    /// Whether the change changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == UserChange::default()
    }

    /// `user` with this change applied.
    pub fn applied_to(&self, user: &User) -> User {
        let mut out = user.clone();
        if let Some(home) = &self.home {
            out.home = home.clone();
        }
        if let Some(read_only) = self.read_only {
            out.read_only = read_only;
        }
        if let Some(n) = self.quota_bytes {
            out.quota_bytes = n;
        }
        if let Some(n) = self.quota_files {
            out.quota_files = n;
        }
        if let Some(n) = self.max_file_size {
            out.max_file_size = n;
        }
        out
    }
}
