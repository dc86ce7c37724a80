//! The users file, reloaded when it changes: `ferry user add/passwd/set/del` take effect at the
//! next login, without a signal.
//!
//! Before each login the server compares the file's [`FileStamp`] (one `stat`) with the one
//! it last loaded, and reloads on a difference, with the same validation as at start and on
//! SIGHUP: a file that does not load is logged once and the previous users stay in force.
//!
//! Why a check at login rather than inotify: the login is the only moment the users matter,
//! so a check there can never miss a change or see it late (inotify reports asynchronously, so
//! a login right after `ferry user passwd` could still race it), it needs no watcher thread or
//! crate, and it works where inotify does not (a file replaced through a symlink, network
//! file systems, a directory that is itself renamed). Its cost is one `stat` per login, next
//! to an argon2 run of tens of milliseconds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::users::{FileStamp, UserDb};

/// The users file and the version of it in force.
#[derive(Debug)]
pub(crate) struct UsersFile {
    path: PathBuf,
    /// The stamp last acted on: loaded, or refused and logged. `None`: it could not be read.
    /// Held by the one reload running; logins wait here for it, at most a few seconds.
    seen: Arc<tokio::sync::Mutex<Option<FileStamp>>>,
}

impl UsersFile {
    /// Watches `path`, whose version `loaded` is the one in force.
    pub(crate) fn new(path: PathBuf, loaded: Option<FileStamp>) -> UsersFile {
        UsersFile {
            path,
            seen: Arc::new(tokio::sync::Mutex::new(loaded)),
        }
    }

    /// Reloads the file into `server` if it changed since it was last looked at, waiting for
    /// that at most `wait`. The check and the reload run on a task of their own, one at a
    /// time: a users file that hangs (on a stuck network mount, or replaced by a FIFO) holds
    /// that one task, never the logins, which go on with the users in force after `wait`, nor
    /// more threads (a login that finds a reload running waits for it instead of starting one).
    pub(crate) async fn refresh(&self, server: &Arc<super::Server>, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        // A login that finds a reload running waits for it, then checks again itself: the
        // file may have changed while it was read.
        let seen = match Arc::clone(&self.seen).try_lock_owned() {
            Ok(seen) => Some(seen),
            Err(_) => tokio::time::timeout_at(deadline, Arc::clone(&self.seen).lock_owned())
                .await
                .ok(),
        };
        let finished = match seen {
            Some(seen) => {
                let reload = check_and_reload(seen, self.path.clone(), Arc::clone(server));
                tokio::time::timeout_at(deadline, tokio::spawn(reload))
                    .await
                    .is_ok()
            }
            None => false,
        };
        if !finished {
            tracing::warn!(
                users = %self.path.display(),
                "users file: a reload has not finished in {wait:?}; this login goes on with the \
                 users in force"
            );
        }
    }
}

/// Compares the file's stamp with the one `seen` holds and reloads it into `server` when
/// they differ. The stamp is taken before the read: a change during the read is seen at the
/// next login.
async fn check_and_reload(
    mut seen: tokio::sync::OwnedMutexGuard<Option<FileStamp>>,
    path: PathBuf,
    server: Arc<super::Server>,
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
            server.replace_users(db);
            tracing::info!(users = n, "users file changed: reloaded");
        }
        Ok(Err(e)) => tracing::error!(
            error = %e,
            "users file not reloaded; the previous one stays in force"
        ),
        Err(e) => tracing::error!(error = %e, "users file not reloaded"),
    }
}
