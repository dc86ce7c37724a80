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

use crate::users::{FileStamp, UserDb};

/// The users file and the version of it in force.
#[derive(Debug)]
pub(crate) struct UsersFile {
    path: PathBuf,
    /// The stamp last acted on: loaded, or refused and logged. `None`: it could not be read.
    /// Logins wait here while one of them reloads.
    seen: tokio::sync::Mutex<Option<FileStamp>>,
}

impl UsersFile {
    /// Watches `path`, whose version `loaded` is the one in force.
    pub(crate) fn new(path: PathBuf, loaded: Option<FileStamp>) -> UsersFile {
        UsersFile {
            path,
            seen: tokio::sync::Mutex::new(loaded),
        }
    }

    /// Reloads the file into `server` if it changed since it was last looked at.
    pub(crate) async fn refresh(&self, server: &super::Server) {
        let mut seen = self.seen.lock().await;
        // A stat of a local file; cheap enough to run on the async thread.
        let now = FileStamp::of(&self.path);
        let stamp = match now {
            Ok(stamp) if Some(stamp) == *seen => return,
            Ok(stamp) => stamp,
            Err(e) => {
                if seen.take().is_some() {
                    tracing::error!(
                        users = %self.path.display(),
                        error = %e,
                        "users file not reloaded; the previous one stays in force"
                    );
                }
                return;
            }
        };
        // The stamp from before the read: a change during the read is seen at the next login.
        *seen = Some(stamp);
        let path = self.path.clone();
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
}
