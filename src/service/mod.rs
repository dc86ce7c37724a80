//! The core: ferry's rules for a logged-in user, whatever the front-end. It knows no frame,
//! message or HTTP type: a front-end decodes a request, checks its session's scope against
//! the operation table (`domain::Op`), calls the core, and maps a [`CoreError`] to its wire
//! in one function (ferry/1: `server/cmd/mod.rs`, `reply_core`).
//!
//! The core works on the seams: the files through [`Storage`], usage through
//! [`quota::Account`] (to become `state::UsageLedger`). The store measures what each change
//! replaces or removes and makes it inside the account's change lock (the store's
//! [`crate::storage::ChangeGate`]), so the counters always agree with a fresh count of the
//! home. Counters grow before a change and shrink after it: a late count can only refuse
//! early, never admit on room that is gone.
//!
//! Every operation runs in the core: stat, list, mkdir, remove, rmdir, rename, usage, uploads
//! ([`Home::begin_upload`], [`Home::put_small`], [`Home::flush`]) and, in `read`, the
//! download, sha256 and copy (issue 13).

mod list;
pub mod quota;
mod read;
mod upload;

pub use read::{Opened, Progress};
pub use upload::{
    Expect, KeptPartial, Put, PutRequest, ResumeRefused, Sealed, Sealing, StagedPut, Upload,
};

use std::fmt;
use std::sync::Arc;

use crate::domain::{Entry, Footprint, Op, Quota, Refused, Scope, UsageReport};
use crate::storage::{PartialKey, RemotePath, Storage, StorageError};

/// What a core operation answers instead of a result.
#[derive(Debug)]
pub enum CoreError {
    /// The store refused or failed.
    Storage(StorageError),
    /// The session's scope does not allow the operation (the text says why: a read-only
    /// user, an upload-only link).
    Denied(&'static str),
    /// The change does not fit the account's limits; `size` is the file's (0 for a
    /// directory).
    Refused { refused: Refused, size: u64 },
    /// A resumed upload cannot go on.
    ResumeRefused(ResumeRefused),
    /// The shared state (the usage ledger) failed or cannot be reached; the text is for the
    /// log. Nothing was changed.
    Unavailable(String),
    /// An upload ended with another length than it declared (`received` counts a resumed
    /// prefix).
    SizeMismatch { declared: u64, received: u64 },
}

impl From<StorageError> for CoreError {
    fn from(e: StorageError) -> Self {
        CoreError::Storage(e)
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Storage(e) => write!(f, "{e}"),
            CoreError::Refused {
                refused: Refused::TooLarge(max),
                size,
            } => write!(
                f,
                "a file of {size} bytes exceeds the maximum of {max} bytes"
            ),
            CoreError::Refused {
                refused: Refused::Quota(which),
                ..
            } => write!(f, "over the {which}"),
            CoreError::ResumeRefused(ResumeRefused::NoPartial) => {
                f.write_str("no partial upload to resume")
            }
            CoreError::ResumeRefused(ResumeRefused::Short { kept, offset }) => write!(
                f,
                "the partial upload holds {kept} bytes; cannot resume at {offset}"
            ),
            CoreError::ResumeRefused(ResumeRefused::Mismatch { offset, .. }) => {
                write!(f, "the first {offset} bytes of the partial upload differ")
            }
            CoreError::Unavailable(why) => write!(f, "shared state unavailable: {why}"),
            CoreError::Denied(why) => f.write_str(why),
            CoreError::SizeMismatch { declared, received } => {
                write!(f, "declared {declared} bytes, received {received}")
            }
        }
    }
}

impl std::error::Error for CoreError {}

impl CoreError {
    /// A reservation that could not be made, for a file of `size` bytes.
    pub(crate) fn refused(refusal: quota::Refusal, size: u64) -> CoreError {
        match refusal {
            quota::Refusal::Refused(refused) => CoreError::Refused { refused, size },
            quota::Refusal::LeaseGone => {
                CoreError::Unavailable("the reservation's lease expired".into())
            }
            quota::Refusal::Unavailable(why) => CoreError::Unavailable(why),
        }
    }
}

/// What a directory takes toward the quota.
const ONE_DIR: Footprint = Footprint { bytes: 0, files: 1 };

/// The key of `user`'s partial upload to `path`: partials are per user and per target (users
/// who share a home never resume each other's uploads), 32 hex digits of a SHA-256.
pub fn partial_key(user: &str, path: &RemotePath) -> PartialKey {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(user.as_bytes());
    h.update([0]);
    h.update(path.to_string().as_bytes());
    PartialKey::of_digest(&h.finalize().into())
}

/// A logged-in user's home as the core sees it: whose view it is, the storage, the usage
/// account shared by the user's sessions (when the user has limits) and those limits.
/// Cloning is cheap (shared).
#[derive(Clone)]
pub struct Home {
    user: Arc<str>,
    storage: Arc<dyn Storage>,
    account: Option<Arc<quota::Account>>,
    limits: Quota,
    /// What this view of the home may do, checked by every operation against the table
    /// (`domain::Op`).
    scope: Scope,
}

impl fmt::Debug for Home {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Home")
            .field("storage", &self.storage)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Home {
    /// `user`'s view of the home on `storage`, counted in `account` under `limits`.
    pub fn new(
        user: &str,
        storage: Arc<dyn Storage>,
        account: Option<Arc<quota::Account>>,
        limits: Quota,
    ) -> Home {
        Home {
            user: Arc::from(user),
            storage,
            account,
            limits,
            scope: Scope::Full,
        }
    }

    /// The same home, limited to `scope` (a read-only user, an upload-only link): every
    /// operation checks it first, whatever the front-end.
    pub fn scoped(mut self, scope: Scope) -> Home {
        self.scope = scope;
        self
    }

    /// Refuses `op` (asking to replace an existing file if `replace`) unless the scope
    /// allows it.
    fn allow(&self, op: Op, replace: bool) -> Result<(), CoreError> {
        self.scope
            .check(op, replace)
            .map_err(|denied| CoreError::Denied(denied.0))
    }

    /// Whether the scope allows `op` (a front-end asks before acting for the owner, as when
    /// making a link that will upload or download in the owner's name).
    pub fn allowed(&self, op: Op) -> Result<(), CoreError> {
        self.allow(op, false)
    }

    /// The storage underneath.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// [`Home::allow`], and then whether the scope reaches `path` (a download link's scope
    /// reaches only its file, or its folder and what is below).
    fn allow_at(&self, op: Op, path: &RemotePath) -> Result<(), CoreError> {
        self.allow(op, false)?;
        self.scope
            .check_path(op, &path.to_string())
            .map_err(|denied| CoreError::Denied(denied.0))
    }

    /// How many bytes of an interrupted upload to `path` this user's partial holds, if any:
    /// where a resume starts.
    pub async fn partial_len(&self, path: &RemotePath) -> Result<Option<u64>, CoreError> {
        self.allow(Op::Partial, false)?;
        let key = partial_key(&self.user, path);
        Ok(self.storage.partial_len(&key).await?)
    }

    /// Metadata of one path, following a final symlink that stays in the home.
    pub async fn stat(&self, path: &RemotePath) -> Result<Entry, CoreError> {
        self.allow_at(Op::Stat, path)?;
        Ok(self.storage.stat(path).await?.entry)
    }

    /// Makes one directory; it counts as a file toward the quota.
    pub async fn mkdir(&self, path: &RemotePath) -> Result<(), CoreError> {
        self.allow(Op::Mkdir, false)?;
        let (home, path) = (self.clone(), path.clone());
        to_the_end(async move { home.mkdir_now(&path).await }).await
    }

    /// Removes a file or link (never the home, which is a directory).
    pub async fn remove(&self, path: &RemotePath) -> Result<(), CoreError> {
        self.allow(Op::Remove, false)?;
        let (home, path) = (self.clone(), path.clone());
        to_the_end(async move { home.remove_now(&path).await }).await
    }

    /// Removes an empty directory (never the home); gives its file back to the quota.
    pub async fn rmdir(&self, path: &RemotePath) -> Result<(), CoreError> {
        self.allow(Op::Rmdir, false)?;
        let (home, path) = (self.clone(), path.clone());
        to_the_end(async move { home.rmdir_now(&path).await }).await
    }

    /// Renames or moves a file or directory, replacing an existing target only if `replace`.
    /// What a replaced target took is given back (a rename onto the same file replaces
    /// nothing: the store measures it).
    pub async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        replace: bool,
    ) -> Result<(), CoreError> {
        self.allow(Op::Rename, replace)?;
        let (home, from, to) = (self.clone(), from.clone(), to.clone());
        to_the_end(async move { home.rename_now(&from, &to, replace).await }).await
    }

    async fn mkdir_now(&self, path: &RemotePath) -> Result<(), CoreError> {
        let reservation = match &self.account {
            Some(a) => Some(
                a.reserve(&self.limits, 0, 0, true)
                    .await
                    .map_err(|r| CoreError::refused(r, 0))?,
            ),
            None => None,
        };
        self.storage.mkdir(path).await?;
        if let Some(r) = reservation {
            r.commit(ONE_DIR, Footprint::NONE).await;
        }
        Ok(())
    }

    async fn remove_now(&self, path: &RemotePath) -> Result<(), CoreError> {
        if path.is_root() {
            return Err(StorageError::IsADirectory.into());
        }
        let gone = self.storage.remove_file(path).await?;
        if let Some(a) = &self.account {
            a.adjust(Footprint::NONE, gone).await;
        }
        Ok(())
    }

    async fn rmdir_now(&self, path: &RemotePath) -> Result<(), CoreError> {
        if path.is_root() {
            return Err(StorageError::PermissionDenied.into());
        }
        let gone = self.storage.remove_dir(path).await?;
        if let Some(a) = &self.account {
            a.adjust(Footprint::NONE, gone).await;
        }
        Ok(())
    }

    async fn rename_now(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        replace: bool,
    ) -> Result<(), CoreError> {
        if from.is_root() || to.is_root() {
            return Err(StorageError::PermissionDenied.into());
        }
        let replaced = self.storage.rename(from, to, !replace).await?;
        if let Some(a) = &self.account {
            a.adjust(Footprint::NONE, replaced).await;
        }
        Ok(())
    }

    /// The account's usage and limits, and the space where the home lives if the store can
    /// tell.
    pub async fn usage(&self) -> Result<UsageReport, CoreError> {
        self.allow(Op::Usage, false)?;
        let space = self.storage.space().await?;
        let mut usage = match &self.account {
            Some(a) => a
                .usage(&self.limits)
                .await
                .map_err(|e| CoreError::Unavailable(e.to_string()))?,
            None => UsageReport::default(),
        };
        usage.disk_free_bytes = space.map(|s| s.free);
        usage.disk_total_bytes = space.map(|s| s.total);
        Ok(usage)
    }
}

/// Runs a change to its end even if its caller goes away (a client that disconnects, a
/// session cut at shutdown): a change the store made is always followed by its counters, so
/// dropping the caller between the two can never make them lie.
async fn to_the_end<T: Send + 'static>(
    change: impl Future<Output = Result<T, CoreError>> + Send + 'static,
) -> Result<T, CoreError> {
    match tokio::spawn(change).await {
        Ok(result) => result,
        Err(join) => Err(CoreError::Storage(StorageError::Io(std::io::Error::other(
            join.to_string(),
        )))),
    }
}
