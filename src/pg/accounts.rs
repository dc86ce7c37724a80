//! Accounts in PostgreSQL: the table `ferry_users`, an [`AccountStore`] that every node
//! shares.
//!
//! Reads go to the database each time (a changed password is in force at the next login,
//! on every node). Every write notifies the channel `ferry_accounts` in its transaction; each
//! store keeps one connection of its own listening there (reconnecting by itself), so
//! [`AccountStore::changes`] moves on every node as soon as the write commits. After a
//! reconnection it moves too: notices sent meanwhile were lost.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio_postgres::{AsyncMessage, Row};

use super::{Db, PgError, col, db_message};
use crate::accounts::{AccountError, AccountStore, BoxFuture, User, UserChange};
use crate::users::{self, UsersError};

/// The channel every write notifies.
const CHANNEL: &str = "ferry_accounts";

/// Longest pause between two attempts of the listener to reconnect.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);

/// The columns of a user, in the order [`user_of`] reads them.
const COLUMNS: &str =
    "name, password_hash, home, read_only, quota_bytes, quota_files, max_file_size";

/// Accounts kept in the database.
pub struct PgAccounts {
    db: Db,
    shared: Arc<Shared>,
    /// Stops the listener when the store goes.
    listener: tokio::task::AbortHandle,
}

struct Shared {
    /// Moves on every write of this store and every notice of another one.
    generation: watch::Sender<u64>,
    /// The dummy hash, the parameters it was made with, and the generation at which the
    /// users' most common parameters were last looked up.
    dummy: Mutex<Dummy>,
}

struct Dummy {
    generation: Option<u64>,
    params: (u32, u32, u32),
    hash: String,
}

impl std::fmt::Debug for PgAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAccounts")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl Drop for PgAccounts {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl From<PgError> for AccountError {
    fn from(e: PgError) -> AccountError {
        AccountError::backend(format!("accounts: {e}"))
    }
}

impl PgAccounts {
    /// A store on `db` (migrated already), listening for changes: returns once the listener
    /// listens, so every write that commits after it is noticed.
    pub(crate) async fn start(db: Db) -> Result<PgAccounts, PgError> {
        let params = users::DEFAULT_PARAMS;
        let hash = tokio::task::spawn_blocking(move || users::make_dummy_hash(params))
            .await
            .map_err(|e| PgError::Query(format!("dummy hash: {e}")))?;
        let shared = Arc::new(Shared {
            generation: watch::Sender::new(0),
            dummy: Mutex::new(Dummy {
                generation: None,
                params,
                hash,
            }),
        });
        let (ready, listening) = oneshot::channel();
        let task = tokio::spawn(listen(db.clone(), Arc::downgrade(&shared), ready));
        let store = PgAccounts {
            db: db.clone(),
            shared,
            listener: task.abort_handle(),
        };
        match tokio::time::timeout(db.config().operation_timeout(), listening).await {
            Ok(Ok(())) => Ok(store),
            _ => Err(PgError::Unavailable(
                "the change listener could not connect".into(),
            )),
        }
    }

    fn bump(&self) {
        self.shared
            .generation
            .send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Runs `write` (which returns how many rows it changed) and notifies every store in the
    /// same transaction. `Ok(false)` when it changed nothing.
    async fn write(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<bool, AccountError> {
        let changed = self
            .db
            .bounded(async {
                let mut conn = self.db.conn().await?;
                let tx = conn.transaction().await?;
                let n = tx.execute(&tx.prepare_cached(sql).await?, params).await?;
                if n > 0 {
                    tx.execute(
                        &tx.prepare_cached("SELECT pg_notify($1, '')").await?,
                        &[&CHANNEL],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(n > 0)
            })
            .await?;
        if changed {
            self.bump();
        }
        Ok(changed)
    }

    /// Looks up the users' most common hash parameters again if the accounts changed since,
    /// and makes a new dummy hash if they differ from the current one's.
    async fn refresh_dummy(&self) -> Result<(), AccountError> {
        let generation = *self.shared.generation.borrow();
        if self.dummy().generation == Some(generation) {
            return Ok(());
        }
        let rows = self
            .db
            .bounded(async {
                let conn = self.db.conn().await?;
                Ok(conn
                    .query(
                        &conn.prepare_cached("SELECT substring(password_hash FROM '^\\$argon2id\\$v=[0-9]+\\$(m=[0-9]+,t=[0-9]+,p=[0-9]+)\\$'),
                                count(*)
                         FROM ferry_users GROUP BY 1").await?,
                        &[],
                    )
                    .await?)
            })
            .await?;
        let mut counts = Vec::new();
        for r in &rows {
            let params: Option<String> = col(r, 0)?;
            let n: i64 = col(r, 1)?;
            if let Some(params) = params.as_deref().and_then(parse_params) {
                counts.push((params, usize::try_from(n).unwrap_or(0)));
            }
        }
        let params = users::most_used_params(counts);
        if params != self.dummy().params {
            let hash = tokio::task::spawn_blocking(move || users::make_dummy_hash(params))
                .await
                .map_err(|e| AccountError::backend(format!("dummy hash: {e}")))?;
            let mut d = self.dummy();
            d.params = params;
            d.hash = hash;
        }
        self.dummy().generation = Some(generation);
        Ok(())
    }

    fn dummy(&self) -> std::sync::MutexGuard<'_, Dummy> {
        self.shared
            .dummy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// `m=19456,t=2,p=1` as `(19456, 2, 1)`.
fn parse_params(s: &str) -> Option<(u32, u32, u32)> {
    let mut it = s.split(',');
    let mut next = |key: &str| it.next()?.strip_prefix(key)?.parse().ok();
    Some((next("m=")?, next("t=")?, next("p=")?))
}

/// Keeps one connection listening on [`CHANNEL`], bumping the generation on each notice and
/// after each reconnection; ends when the store is gone.
async fn listen(db: Db, shared: std::sync::Weak<Shared>, ready: oneshot::Sender<()>) {
    let mut ready = Some(ready);
    let mut pause = Duration::from_millis(100);
    loop {
        let mut listened = false;
        match listen_once(&db, &shared, &mut ready, &mut listened).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "accounts: change listener lost the database"),
        }
        if listened {
            // It was up: try again soon, then back off while the database stays away.
            pause = Duration::from_millis(100);
        }
        if shared.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
    }
}

/// One connection's life: connect, LISTEN, forward notices until it breaks. `Ok` when the
/// store is gone.
async fn listen_once(
    db: &Db,
    shared: &std::sync::Weak<Shared>,
    ready: &mut Option<oneshot::Sender<()>>,
    listened: &mut bool,
) -> Result<(), PgError> {
    let (messages, mut said) = tokio::sync::mpsc::unbounded_channel();
    let (client, driver) = db.config().connect_one(messages).await?;
    // Only notifications matter here; an error of the connection ends the listening.
    let (notices, mut noticed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let forward = tokio::spawn(async move {
        while let Some(m) = said.recv().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => {
                    if notices.send(()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %db_message(&e), "accounts: change listener");
                    return;
                }
            }
        }
    });
    let _stop_forward = AbortOnDrop(forward.abort_handle());
    let _stop_driver = AbortOnDrop(driver.abort_handle());
    tokio::time::timeout(
        db.config().statement_timeout,
        client.batch_execute(&format!("LISTEN {CHANNEL}")),
    )
    .await
    .map_err(|_| PgError::Unavailable("LISTEN timed out".into()))??;
    // Notices sent while no connection listened are lost: whatever caches accounts must
    // look again.
    match shared.upgrade() {
        Some(s) => s.generation.send_modify(|g| *g = g.wrapping_add(1)),
        None => return Ok(()),
    }
    *listened = true;
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    while noticed.recv().await.is_some() {
        match shared.upgrade() {
            Some(s) => s.generation.send_modify(|g| *g = g.wrapping_add(1)),
            None => return Ok(()),
        }
    }
    Err(PgError::Unavailable(
        "the listening connection closed".into(),
    ))
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A limit as the database keeps it (the users file's integers stop at `i64::MAX` too).
fn limit(name: &str, field: &'static str, n: Option<u64>) -> Result<Option<i64>, AccountError> {
    n.map(|n| {
        i64::try_from(n).map_err(|_| UsersError::LimitTooLarge {
            name: name.to_owned(),
            field,
            max: i64::MAX,
        })
    })
    .transpose()
    .map_err(AccountError::from)
}

/// A home as the database keeps it: UTF-8, not empty, no NUL.
fn home(name: &str, home: Option<&Path>) -> Result<Option<String>, AccountError> {
    let Some(home) = home else { return Ok(None) };
    let bad = |reason| {
        AccountError::from(UsersError::InvalidHome {
            name: name.to_owned(),
            reason,
        })
    };
    let s = home.to_str().ok_or_else(|| bad("not valid utf-8"))?;
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.contains('\0') {
        return Err(bad("contains NUL"));
    }
    Ok(Some(s.to_owned()))
}

fn user_of(row: &Row) -> Result<User, AccountError> {
    let count = |i: usize| -> Result<Option<u64>, AccountError> {
        let n: Option<i64> = col(row, i)?;
        n.map(|n| u64::try_from(n).map_err(|_| AccountError::backend("accounts: a negative limit")))
            .transpose()
    };
    let home: Option<String> = col(row, 2)?;
    Ok(User {
        name: col(row, 0)?,
        password_hash: col(row, 1)?,
        home: home.map(PathBuf::from),
        read_only: col(row, 3)?,
        quota_bytes: count(4)?,
        quota_files: count(5)?,
        max_file_size: count(6)?,
    })
}

impl AccountStore for PgAccounts {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<User>, AccountError>> {
        Box::pin(async move {
            // No account can have such a name (and a NUL cannot even be sent).
            if users::validate_name(name).is_err() {
                return Ok(None);
            }
            self.refresh_dummy().await?;
            let row = self
                .db
                .bounded(async {
                    let conn = self.db.conn().await?;
                    Ok(conn
                        .query_opt(
                            &conn
                                .prepare_cached(&format!(
                                    "SELECT {COLUMNS} FROM ferry_users WHERE name = $1"
                                ))
                                .await?,
                            &[&name],
                        )
                        .await?)
                })
                .await?;
            row.as_ref().map(user_of).transpose()
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<User>, AccountError>> {
        Box::pin(async move {
            self.refresh_dummy().await?;
            let rows = self
                .db
                .bounded(async {
                    let conn = self.db.conn().await?;
                    Ok(conn
                        .query(
                            &conn
                                .prepare_cached(&format!(
                                    "SELECT {COLUMNS} FROM ferry_users ORDER BY name"
                                ))
                                .await?,
                            &[],
                        )
                        .await?)
                })
                .await?;
            rows.iter().map(user_of).collect()
        })
    }

    fn add<'a>(&'a self, user: &'a User) -> BoxFuture<'a, Result<(), AccountError>> {
        Box::pin(async move {
            let name = user.name.as_str();
            users::validate_name(name)?;
            users::check_hash(&user.password_hash)?;
            let home = home(name, user.home.as_deref())?;
            let qb = limit(name, "quota_bytes", user.quota_bytes)?;
            let qf = limit(name, "quota_files", user.quota_files)?;
            let mf = limit(name, "max_file_size", user.max_file_size)?;
            let added = self
                .write(
                    &format!(
                        "INSERT INTO ferry_users ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT (name) DO NOTHING"
                    ),
                    &[
                        &name,
                        &user.password_hash,
                        &home,
                        &user.read_only,
                        &qb,
                        &qf,
                        &mf,
                    ],
                )
                .await?;
            if !added {
                return Err(AccountError::AlreadyExists(name.to_owned()));
            }
            Ok(())
        })
    }

    fn set<'a>(
        &'a self,
        name: &'a str,
        change: &'a UserChange,
    ) -> BoxFuture<'a, Result<(), AccountError>> {
        Box::pin(async move {
            if users::validate_name(name).is_err() {
                return Err(AccountError::NotFound(name.to_owned()));
            }
            let new_home = match &change.home {
                Some(h) => Some(home(name, h.as_deref())?),
                None => None,
            };
            let lim =
                |field, v: Option<Option<u64>>| -> Result<(bool, Option<i64>), AccountError> {
                    Ok(match v {
                        Some(n) => (true, limit(name, field, n)?),
                        None => (false, None),
                    })
                };
            let (set_qb, qb) = lim("quota_bytes", change.quota_bytes)?;
            let (set_qf, qf) = lim("quota_files", change.quota_files)?;
            let (set_mf, mf) = lim("max_file_size", change.max_file_size)?;
            let (set_home, home) = (new_home.is_some(), new_home.flatten());
            let (set_ro, ro) = (
                change.read_only.is_some(),
                change.read_only.unwrap_or(false),
            );
            // Every field is written; the flags keep the ones the change does not name. An
            // empty change still checks that the user is there.
            let found = self
                .write(
                    "UPDATE ferry_users SET
                         home = CASE WHEN $2 THEN $3 ELSE home END,
                         read_only = CASE WHEN $4 THEN $5 ELSE read_only END,
                         quota_bytes = CASE WHEN $6 THEN $7 ELSE quota_bytes END,
                         quota_files = CASE WHEN $8 THEN $9 ELSE quota_files END,
                         max_file_size = CASE WHEN $10 THEN $11 ELSE max_file_size END
                     WHERE name = $1",
                    &[
                        &name, &set_home, &home, &set_ro, &ro, &set_qb, &qb, &set_qf, &qf, &set_mf,
                        &mf,
                    ],
                )
                .await?;
            if !found {
                return Err(AccountError::NotFound(name.to_owned()));
            }
            Ok(())
        })
    }

    fn passwd<'a>(
        &'a self,
        name: &'a str,
        password_hash: &'a str,
    ) -> BoxFuture<'a, Result<(), AccountError>> {
        Box::pin(async move {
            users::check_hash(password_hash)?;
            if users::validate_name(name).is_err() {
                return Err(AccountError::NotFound(name.to_owned()));
            }
            let found = self
                .write(
                    "UPDATE ferry_users SET password_hash = $2 WHERE name = $1",
                    &[&name, &password_hash],
                )
                .await?;
            if !found {
                return Err(AccountError::NotFound(name.to_owned()));
            }
            Ok(())
        })
    }

    fn del<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), AccountError>> {
        Box::pin(async move {
            if users::validate_name(name).is_err() {
                return Err(AccountError::NotFound(name.to_owned()));
            }
            let found = self
                .write("DELETE FROM ferry_users WHERE name = $1", &[&name])
                .await?;
            if !found {
                return Err(AccountError::NotFound(name.to_owned()));
            }
            Ok(())
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    fn dummy_hash(&self) -> String {
        self.dummy().hash.clone()
    }
}

/// Opens a store on its own pool (another node, as far as the database can tell). For
/// `ferry user ...` and tests; a server takes its store from [`super::PgBackend`].
pub async fn open(cfg: &super::PgConfig) -> Result<PgAccounts, PgError> {
    let db = Db::new(cfg)?;
    super::migrate(&db).await?;
    PgAccounts::start(db).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_parameters_are_read_back() {
        assert_eq!(parse_params("m=19456,t=2,p=1"), Some((19456, 2, 1)));
        assert_eq!(parse_params("m=1,t=2"), None);
        assert_eq!(parse_params("t=1,m=2,p=3"), None);
    }
}
