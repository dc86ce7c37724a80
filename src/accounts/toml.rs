//! The users file as an [`AccountStore`]: today's TOML format, edited with comments kept and
//! replaced atomically ([`crate::users`] does both), read into memory and reloaded when it
//! changes.
//!
//! Before each [`get`](AccountStore::get) or [`list`](AccountStore::list) the store compares
//! the file's [`FileStamp`] (one `stat`) with the one it last loaded, and reloads on a
//! difference, with the same validation as at start and on SIGHUP ([`TomlAccounts::reload`]):
//! a file that does not load is logged once and the previous users stay in force. So
//! `ferry user add/passwd/set/del`, run by another process, takes effect at the next login,
//! without a signal.
//!
//! Why a check at login rather than inotify: the login is the only moment the users matter,
//! so a check there can never miss a change or see it late (inotify reports asynchronously, so
//! a login right after `ferry user passwd` could still race it), it needs no watcher thread or
//! crate, and it works where inotify does not (a file replaced through a symlink, network
//! file systems, a directory that is itself renamed). Its cost is one `stat` per login, next
//! to an argon2 run of tens of milliseconds.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::{AccountError, AccountStore, BoxFuture, User, UserChange};
use crate::users::{self, FileStamp, UserDb, UsersError};

/// Longest a read waits for a reload of the users file before it answers from the users in
/// force.
const RELOAD_WAIT: Duration = Duration::from_secs(2);

/// Accounts kept in a users file (or, for a server built from users in memory, in memory
/// only). Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct TomlAccounts {
    inner: Arc<Inner>,
}

struct Inner {
    /// The users file; `None` for a fixed set of users in memory, which is never reloaded and
    /// refuses writes.
    path: Option<PathBuf>,
    /// The users in force, swapped whole on a reload; a reader keeps the version it took.
    db: RwLock<Arc<UserDb>>,
    /// The stamp last acted on: loaded, or refused and logged. `None`: it could not be read,
    /// or this store wrote the file since (so the next read reloads whatever the stamp says).
    /// Held by the one reload running; reads wait here for it, at most [`RELOAD_WAIT`].
    seen: Arc<tokio::sync::Mutex<Option<FileStamp>>>,
    /// Moves on every write of this store and every reload.
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for TomlAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TomlAccounts")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl From<UsersError> for AccountError {
    fn from(e: UsersError) -> AccountError {
        let reason = e.to_string();
        match e {
            UsersError::NotFound(name) => AccountError::NotFound(name),
            UsersError::AlreadyExists(name) => AccountError::AlreadyExists(name),
            UsersError::InvalidName { .. }
            | UsersError::InvalidHash(_)
            | UsersError::InvalidHome { .. }
            | UsersError::LimitTooLarge { .. }
            | UsersError::EmptyPassword
            | UsersError::PasswordTooLong { .. }
            | UsersError::PasswordNotUtf8
            | UsersError::PasswordMismatch
            | UsersError::PasswordTooShort { .. } => AccountError::Invalid { reason },
            UsersError::Io { .. }
            | UsersError::Parse { .. }
            | UsersError::Hash(_)
            | UsersError::ReadPassword(_) => AccountError::Backend { reason },
        }
    }
}

impl TomlAccounts {
    /// Reads and validates the users file at `path` now (see [`UserDb::load`]); an error if it
    /// cannot be read or is not valid. From then on a read reloads it when it changed.
    ///
    /// Blocking: reads the file and makes the dummy hash (one argon2 run).
    pub fn load(path: &Path) -> Result<TomlAccounts, AccountError> {
        // The stamp before the read: a change during the read is seen at the next one.
        let stamp = FileStamp::of(path).ok();
        let db = UserDb::load(path)?;
        Ok(TomlAccounts::with(Some(path.to_path_buf()), db, stamp))
    }

    /// The users file at `path`, read at the first [`get`](AccountStore::get) or
    /// [`list`](AccountStore::list); a missing file has no users, and
    /// [`add`](AccountStore::add) creates it (mode 0600).
    pub fn new(path: PathBuf) -> TomlAccounts {
        TomlAccounts::with(Some(path), UserDb::empty(), None)
    }

    /// A fixed set of users in memory: never reloaded (only [`TomlAccounts::replace`] changes
    /// it), and every write fails. What a server built from a [`UserDb`] uses.
    pub fn in_memory(db: UserDb) -> TomlAccounts {
        TomlAccounts::with(None, db, None)
    }

    fn with(path: Option<PathBuf>, db: UserDb, seen: Option<FileStamp>) -> TomlAccounts {
        TomlAccounts {
            inner: Arc::new(Inner {
                path,
                db: RwLock::new(Arc::new(db)),
                seen: Arc::new(tokio::sync::Mutex::new(seen)),
                generation: watch::Sender::new(0),
            }),
        }
    }

    /// The users file, if the users live in one.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Reads the users file again now, whether it changed or not (SIGHUP), with the same
    /// validation as [`TomlAccounts::load`]; the users are replaced only if it loads. Returns
    /// how many there are now. A store in memory has nothing to read and keeps its users.
    ///
    /// Blocking: run it on the blocking pool.
    pub fn reload(&self) -> Result<usize, AccountError> {
        let Some(path) = &self.inner.path else {
            return Ok(self.inner.snapshot().len());
        };
        let db = UserDb::load(path)?;
        let n = db.len();
        self.inner.replace(db);
        Ok(n)
    }

    /// Puts `db` in force in place of the users this store holds; sessions already logged in
    /// keep going. A store on a file reloads the file again when it next changes.
    pub fn replace(&self, db: UserDb) {
        self.inner.replace(db);
    }

    /// The users in force, after a reload if the file changed.
    async fn current(&self) -> Arc<UserDb> {
        if let Some(path) = &self.inner.path {
            refresh(&self.inner, path).await;
        }
        self.inner.snapshot()
    }

    /// Runs `edit` on the users file on the blocking pool; afterwards the next read reloads
    /// it and [`AccountStore::changes`] moves.
    async fn write(
        &self,
        edit: impl FnOnce(&Path) -> Result<(), UsersError> + Send + 'static,
    ) -> Result<(), AccountError> {
        let Some(path) = self.inner.path.clone() else {
            return Err(AccountError::backend(
                "the users are held in memory only: there is no users file to change",
            ));
        };
        let done = tokio::task::spawn_blocking(move || edit(&path)).await;
        let done = done.map_err(|e| AccountError::backend(format!("users file edit: {e}")))?;
        // Read the file again at the next read, whatever its stamp says (a failed edit too: it
        // may have lost a race with another writer). A reload running now took its stamp
        // before our rename or after it; either way the next read sees our version, so it
        // need not be waited for.
        if let Ok(mut seen) = self.inner.seen.try_lock() {
            *seen = None;
        }
        done?;
        self.inner
            .generation
            .send_modify(|g| *g = g.wrapping_add(1));
        Ok(())
    }
}

impl Inner {
    fn snapshot(&self) -> Arc<UserDb> {
        Arc::clone(&self.db.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn replace(&self, db: UserDb) {
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(db);
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }
}

impl AccountStore for TomlAccounts {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<User>, AccountError>> {
        Box::pin(async move { Ok(self.current().await.get(name).cloned()) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<User>, AccountError>> {
        Box::pin(async move { Ok(self.current().await.users().cloned().collect()) })
    }

    fn add<'a>(&'a self, user: &'a User) -> BoxFuture<'a, Result<(), AccountError>> {
        let (name, hash, settings) = (
            user.name.clone(),
            user.password_hash.clone(),
            user.settings(),
        );
        Box::pin(self.write(move |path| users::add_user_with(path, &name, &hash, &settings)))
    }

    fn set<'a>(
        &'a self,
        name: &'a str,
        change: &'a UserChange,
    ) -> BoxFuture<'a, Result<(), AccountError>> {
        let (name, change) = (name.to_owned(), change.clone());
        Box::pin(self.write(move |path| users::update_user(path, &name, &change)))
    }

    fn passwd<'a>(
        &'a self,
        name: &'a str,
        password_hash: &'a str,
    ) -> BoxFuture<'a, Result<(), AccountError>> {
        let (name, hash) = (name.to_owned(), password_hash.to_owned());
        Box::pin(self.write(move |path| users::set_password(path, &name, &hash)))
    }

    fn del<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), AccountError>> {
        let name = name.to_owned();
        Box::pin(self.write(move |path| users::remove_user(path, &name)))
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    fn dummy_hash(&self) -> String {
        self.inner.snapshot().dummy_hash().to_owned()
    }
}

/// Reloads the file into `inner` if it changed since it was last looked at, waiting for that
/// at most [`RELOAD_WAIT`]. The check and the reload run on a task of their own, one at a
/// time: a users file that hangs (on a stuck network mount, or replaced by a FIFO) holds that
/// one task, never the logins, which go on with the users in force after the wait, nor more
/// threads (a read that finds a reload running waits for it instead of starting one).
async fn refresh(inner: &Arc<Inner>, path: &Path) {
    let deadline = tokio::time::Instant::now() + RELOAD_WAIT;
    // A read that finds a reload running waits for it, then checks again itself: the file
    // may have changed while it was read.
    let seen = match Arc::clone(&inner.seen).try_lock_owned() {
        Ok(seen) => Some(seen),
        Err(_) => tokio::time::timeout_at(deadline, Arc::clone(&inner.seen).lock_owned())
            .await
            .ok(),
    };
    let finished = match seen {
        Some(seen) => {
            let reload = check_and_reload(seen, path.to_path_buf(), Arc::clone(inner));
            tokio::time::timeout_at(deadline, tokio::spawn(reload))
                .await
                .is_ok()
        }
        None => false,
    };
    if !finished {
        tracing::warn!(
            users = %path.display(),
            "users file: a reload has not finished in {RELOAD_WAIT:?}; this login goes on with \
             the users in force"
        );
    }
}

/// Compares the file's stamp with the one `seen` holds and reloads it into `inner` when they
/// differ. The stamp is taken before the read: a change during the read is seen at the next
/// login.
async fn check_and_reload(
    mut seen: tokio::sync::OwnedMutexGuard<Option<FileStamp>>,
    path: PathBuf,
    inner: Arc<Inner>,
) {
    let at = path.clone();
    let stamp = match tokio::task::spawn_blocking(move || FileStamp::of(&at)).await {
        Ok(Ok(stamp)) if Some(stamp) == *seen => return,
        Ok(Ok(stamp)) => stamp,
        Ok(Err(e)) => {
            if seen.take().is_some() {
                tracing::error!(
                    users = %path.display(),
                    error = %e,
                    "users file not reloaded; the previous one stays in force"
                );
            }
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "users file not checked");
            return;
        }
    };
    *seen = Some(stamp);
    match tokio::task::spawn_blocking(move || UserDb::load(&path)).await {
        Ok(Ok(db)) => {
            let n = db.len();
            inner.replace(db);
            tracing::info!(users = n, "users file changed: reloaded");
        }
        Ok(Err(e)) => tracing::error!(
            error = %e,
            "users file not reloaded; the previous one stays in force"
        ),
        Err(e) => tracing::error!(error = %e, "users file not reloaded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::users::Password;

    /// Cheap argon2 parameters for fixtures: the production code path, a fraction of the cost.
    fn cheap_hash(pw: &str) -> String {
        users::hash_password_with(&Password::new(pw.into()), 64, 1, 1).unwrap()
    }

    fn file_with(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn errors_keep_the_users_files_words() {
        let cases = [
            UsersError::NotFound("al`ice".into()),
            UsersError::AlreadyExists("alice\n".into()),
            UsersError::InvalidName {
                name: "a/b".into(),
                reason: "contains a path separator",
            },
            UsersError::InvalidHash("not a PHC string"),
            UsersError::Parse {
                path: "/etc/ferry/users.toml".into(),
                msg: "line 3: user `bob`: `password` is missing".into(),
            },
            UsersError::Io {
                path: "/etc/ferry/users.toml".into(),
                error: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            },
        ];
        for e in cases {
            let words = e.to_string();
            let mapped = AccountError::from(e);
            assert_eq!(mapped.to_string(), words);
            assert!(std::error::Error::source(&mapped).is_none(), "{mapped:?}");
        }
        assert!(matches!(
            AccountError::from(UsersError::NotFound("x".into())),
            AccountError::NotFound(n) if n == "x"
        ));
        assert!(matches!(
            AccountError::from(UsersError::InvalidHash("x")),
            AccountError::Invalid { .. }
        ));
        assert!(matches!(
            AccountError::from(UsersError::Parse {
                path: "f".into(),
                msg: "m".into()
            }),
            AccountError::Backend { .. }
        ));
    }

    #[test]
    fn load_refuses_a_broken_or_missing_file_in_its_own_words() {
        let (dir, path) = file_with("[users.alice\npassword = ");
        let e = TomlAccounts::load(&path).unwrap_err();
        assert!(matches!(e, AccountError::Backend { .. }), "{e:?}");
        assert_eq!(e.to_string(), UserDb::load(&path).unwrap_err().to_string());
        let missing = dir.path().join("none.toml");
        let e = TomlAccounts::load(&missing).unwrap_err();
        assert_eq!(
            e.to_string(),
            UserDb::load(&missing).unwrap_err().to_string()
        );
    }

    #[tokio::test]
    async fn in_memory_users_refuse_writes_and_are_replaced_whole() {
        let text = format!("[users.alice]\npassword = \"{}\"\n", cheap_hash("a"));
        let store = TomlAccounts::in_memory(UserDb::parse(&text).unwrap());
        assert_eq!(store.path(), None);
        let mut rx = store.changes();
        rx.borrow_and_update();
        let alice = store.get("alice").await.unwrap().unwrap();
        for e in [
            store.add(&User::new("bob", cheap_hash("b"))).await,
            store.passwd("alice", &cheap_hash("c")).await,
            store.del("alice").await,
        ] {
            assert!(matches!(e, Err(AccountError::Backend { .. })), "{e:?}");
        }
        assert_eq!(store.list().await.unwrap(), vec![alice]);
        assert!(!rx.has_changed().unwrap(), "a refused write is no change");
        assert_eq!(store.reload().unwrap(), 1, "nothing to read: kept");

        store.replace(UserDb::empty());
        assert!(rx.has_changed().unwrap());
        assert_eq!(store.get("alice").await.unwrap(), None);
    }

    #[tokio::test]
    async fn reload_reads_now_and_keeps_the_users_if_the_file_is_broken() {
        let alice = format!("[users.alice]\npassword = \"{}\"\n", cheap_hash("a"));
        let (_dir, path) = file_with(&alice);
        let store = TomlAccounts::load(&path).unwrap();
        let mut rx = store.changes();
        rx.borrow_and_update();
        let bob = format!("[users.bob]\npassword = \"{}\"\n", cheap_hash("b"));
        std::fs::write(&path, format!("{alice}\n{bob}")).unwrap();
        assert_eq!(store.reload().unwrap(), 2);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();

        std::fs::write(&path, "[users.alice\n").unwrap();
        let e = store.reload().unwrap_err();
        assert!(e.to_string().contains("users.toml: line 1"), "{e}");
        assert!(!rx.has_changed().unwrap());
        // A read goes on with the users in force, also after it has seen the broken file.
        let names: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.name)
            .collect();
        assert_eq!(names, ["alice", "bob"]);
        assert!(store.get("bob").await.unwrap().is_some());
    }
}
