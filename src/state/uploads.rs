//! Resumable HTTP uploads (tus 1.0): one record per upload, keyed by its id, saying whose it
//! is, where it goes, how large it is, what its content must hash to, and what of it is kept
//! on disk for a resume. The record is protocol-neutral: tus routes use it today, and routes
//! of the IETF resumable-upload draft could use it too.
//!
//! Every record is a lease: it expires ([`UploadRecord::expires`], 24 h renewed by each
//! request that sends data) without anyone's help, and an expired one is gone for every
//! reader. The table is bounded per owner ([`MAX_UPLOADS_PER_OWNER`]) and in all
//! ([`MAX_UPLOADS`]), so no holder of an account or a drop link can grow it without end.
//!
//! [`MemoryUploads`] is one server's table. [`MemoryUploads::persisted`] also writes each
//! record that matters for a resume (created, kept, completed) as a small JSON file in a
//! directory of the server's own, and reads them back when it starts, so an upload survives
//! a restart; renewals of the lease stay in memory (a restart loses at most the renewals since
//! the last write, and a kept record is written with its lease).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::domain::BoxFuture;

/// How long an upload lives after its last data (tus `Upload-Expires`).
pub const UPLOAD_TTL: Duration = Duration::from_secs(24 * 3600);

/// How long a new upload lives before its first data: an upload never written to does not
/// hold one of its owner's places for a day.
pub const CREATED_TTL: Duration = Duration::from_secs(3600);

/// Unfinished uploads one owner (a user, or a drop link) may have at once.
pub const MAX_UPLOADS_PER_OWNER: usize = 32;

/// Records at once in all. Finished ones (kept for their receipts) give way to new uploads,
/// the soonest to expire first.
pub const MAX_UPLOADS: usize = 10_000;

/// Whose an upload is: every request on it must authenticate as this owner; its id alone
/// grants nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadOwner {
    /// An account holder, by name.
    User(String),
    /// A drop link, by its id.
    Link(String),
}

/// One resumable upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub owner: UploadOwner,
    /// The path it lands at, in the owner's home (a link's: in the link's folder), in
    /// `RemotePath`'s display form.
    pub target: String,
    /// The whole file's size (`Upload-Length`).
    pub size: u64,
    /// The SHA-256 the sender declared at creation, if any.
    pub expected: Option<[u8; 32]>,
    /// What is kept on disk for a resume: its length and digest.
    pub kept: Option<(u64, [u8; 32])>,
    /// When the record expires.
    pub expires: SystemTime,
    /// Once committed: the receipt's JSON, served until the record expires.
    pub receipt: Option<String>,
}

/// Why a record was not made or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UploadsError {
    /// The owner has [`MAX_UPLOADS_PER_OWNER`], or the table [`MAX_UPLOADS`].
    #[error("too many resumable uploads")]
    Full,
    /// The id is taken.
    #[error("upload id taken")]
    Taken,
    /// No live record with this id.
    #[error("no such upload")]
    NotFound,
    /// The backend failed; the text is for the log.
    #[error("upload records unavailable: {0}")]
    Unavailable(String),
}

/// Where upload records live. Dyn-compatible, async at the boundary; `now` is passed in so
/// that expiry is testable.
pub trait UploadSessions: Send + Sync + fmt::Debug {
    /// Adds a record under `id` (see [`valid_id`]); expired records are dropped first.
    fn create<'a>(
        &'a self,
        id: &'a str,
        record: UploadRecord,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<(), UploadsError>>;

    /// The live record of `id`; `None` when there is none or it expired.
    fn get<'a>(
        &'a self,
        id: &'a str,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<Option<UploadRecord>, UploadsError>>;

    /// Renews the lease to `expires` (never shortens it).
    fn renew<'a>(
        &'a self,
        id: &'a str,
        expires: SystemTime,
    ) -> BoxFuture<'a, Result<(), UploadsError>>;

    /// Records what is kept on disk (`None`: nothing, the upload is live or gone).
    fn set_kept<'a>(
        &'a self,
        id: &'a str,
        kept: Option<(u64, [u8; 32])>,
    ) -> BoxFuture<'a, Result<(), UploadsError>>;

    /// Marks the upload committed, keeping `receipt` until the record expires.
    fn complete<'a>(
        &'a self,
        id: &'a str,
        receipt: String,
    ) -> BoxFuture<'a, Result<(), UploadsError>>;

    /// Removes the record; returns it if it was there.
    fn remove<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<UploadRecord>, UploadsError>>;

    /// Removes and returns every record expired at `now`.
    fn take_expired(
        &self,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Vec<(String, UploadRecord)>, UploadsError>>;

    /// Holds the upload for `holder` (a node) for `lease`, so that one node at a time works
    /// on it when several share the records: `Ok(true)` when held (a holder's own hold is
    /// renewed), `Ok(false)` while another holder's hold is live. A table of one server
    /// needs none (its requests on an upload already take turns): the default always holds.
    fn hold<'a>(
        &'a self,
        id: &'a str,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, UploadsError>> {
        let _ = (id, holder, lease);
        Box::pin(std::future::ready(Ok(true)))
    }

    /// Gives up `holder`'s hold on the upload (it was kept as a partial: any node resumes it).
    fn release<'a>(
        &'a self,
        id: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), UploadsError>> {
        let _ = (id, holder);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// An upload id as we make them: 22 base64url characters (128 random bits). Anything else is
/// no id of ours, refused before a lookup (and never a file name in the records directory).
pub fn valid_id(id: &str) -> bool {
    id.len() == 22
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A new upload id: 128 random bits, base64url without padding.
pub fn new_id() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// One server's upload records, in memory, optionally written through to a directory.
pub struct MemoryUploads {
    table: Mutex<HashMap<String, UploadRecord>>,
    dir: Option<PathBuf>,
}

impl fmt::Debug for MemoryUploads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryUploads")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryUploads {
    fn default() -> Self {
        MemoryUploads::new()
    }
}

impl MemoryUploads {
    /// Records that end with the process.
    pub fn new() -> MemoryUploads {
        MemoryUploads {
            table: Mutex::new(HashMap::new()),
            dir: None,
        }
    }

    /// Records written through to `dir` (made if missing, mode 0700), and the live ones
    /// found there read back (at most [`MAX_UPLOADS`]; expired or unreadable files are
    /// removed). Blocking.
    pub fn persisted(dir: &Path, now: SystemTime) -> std::io::Result<MemoryUploads> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut table = HashMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if !valid_id(id) {
                continue;
            }
            let record = std::fs::read(entry.path())
                .ok()
                .filter(|b| b.len() <= MAX_RECORD_FILE)
                .and_then(|b| serde_json::from_slice::<UploadRecord>(&b).ok());
            match record {
                Some(r) if r.expires > now && table.len() < MAX_UPLOADS => {
                    table.insert(id.to_string(), r);
                }
                _ => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(MemoryUploads {
            table: Mutex::new(table),
            dir: Some(dir.to_path_buf()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, UploadRecord>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes (or with `None` removes) the file of `id`, when persisted.
    async fn write_through(
        &self,
        id: &str,
        record: Option<UploadRecord>,
    ) -> Result<(), UploadsError> {
        let Some(dir) = self.dir.clone() else {
            return Ok(());
        };
        let id = id.to_string();
        let done = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let path = dir.join(format!("{id}.json"));
            match record {
                None => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                },
                Some(r) => {
                    let text = serde_json::to_vec(&r).map_err(std::io::Error::other)?;
                    // Whole or not at all: a crash mid-write leaves the older file.
                    let tmp = dir.join(format!(".{id}.tmp"));
                    std::fs::write(&tmp, text)?;
                    std::fs::rename(&tmp, &path)
                }
            }
        })
        .await;
        match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(UploadsError::Unavailable(e.to_string())),
            Err(e) => Err(UploadsError::Unavailable(e.to_string())),
        }
    }

    /// Changes the live record of `id` with `f`; returns the record after the change.
    fn change(
        &self,
        id: &str,
        f: impl FnOnce(&mut UploadRecord),
    ) -> Result<UploadRecord, UploadsError> {
        let mut t = self.lock();
        let r = t.get_mut(id).ok_or(UploadsError::NotFound)?;
        f(r);
        Ok(r.clone())
    }
}

/// The largest record file read back (a record is a few hundred bytes; a receipt a few KiB).
const MAX_RECORD_FILE: usize = 64 * 1024;

impl UploadSessions for MemoryUploads {
    fn create<'a>(
        &'a self,
        id: &'a str,
        record: UploadRecord,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<(), UploadsError>> {
        Box::pin(async move {
            if !valid_id(id) {
                return Err(UploadsError::NotFound);
            }
            let expired: Vec<String> = {
                let mut t = self.lock();
                let expired: Vec<String> = t
                    .iter()
                    .filter(|(_, r)| r.expires <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &expired {
                    t.remove(k);
                }
                if t.contains_key(id) {
                    return Err(UploadsError::Taken);
                }
                let mine = t
                    .values()
                    .filter(|r| r.owner == record.owner && r.receipt.is_none())
                    .count();
                if mine >= MAX_UPLOADS_PER_OWNER {
                    return Err(UploadsError::Full);
                }
                let mut expired = expired;
                if t.len() >= MAX_UPLOADS {
                    // A finished upload's receipt was sent with its last answer: the first to go.
                    let oldest = t
                        .iter()
                        .filter(|(_, r)| r.receipt.is_some())
                        .min_by_key(|(_, r)| r.expires)
                        .map(|(k, _)| k.clone());
                    match oldest {
                        Some(k) => {
                            t.remove(&k);
                            expired.push(k);
                        }
                        None => return Err(UploadsError::Full),
                    }
                }
                t.insert(id.to_string(), record.clone());
                expired
            };
            for k in expired {
                let _ = self.write_through(&k, None).await;
            }
            if let Err(e) = self.write_through(id, Some(record)).await {
                self.lock().remove(id);
                return Err(e);
            }
            Ok(())
        })
    }

    fn get<'a>(
        &'a self,
        id: &'a str,
        now: SystemTime,
    ) -> BoxFuture<'a, Result<Option<UploadRecord>, UploadsError>> {
        Box::pin(async move { Ok(self.lock().get(id).filter(|r| r.expires > now).cloned()) })
    }

    fn renew<'a>(
        &'a self,
        id: &'a str,
        expires: SystemTime,
    ) -> BoxFuture<'a, Result<(), UploadsError>> {
        Box::pin(async move {
            self.change(id, |r| r.expires = r.expires.max(expires))
                .map(|_| ())
        })
    }

    fn set_kept<'a>(
        &'a self,
        id: &'a str,
        kept: Option<(u64, [u8; 32])>,
    ) -> BoxFuture<'a, Result<(), UploadsError>> {
        Box::pin(async move {
            let r = self.change(id, |r| r.kept = kept)?;
            self.write_through(id, Some(r)).await
        })
    }

    fn complete<'a>(
        &'a self,
        id: &'a str,
        receipt: String,
    ) -> BoxFuture<'a, Result<(), UploadsError>> {
        Box::pin(async move {
            let r = self.change(id, |r| {
                r.kept = None;
                r.receipt = Some(receipt);
            })?;
            self.write_through(id, Some(r)).await
        })
    }

    fn remove<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<UploadRecord>, UploadsError>> {
        Box::pin(async move {
            let gone = self.lock().remove(id);
            if gone.is_some() {
                self.write_through(id, None).await?;
            }
            Ok(gone)
        })
    }

    fn take_expired(
        &self,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Vec<(String, UploadRecord)>, UploadsError>> {
        Box::pin(async move {
            let gone: Vec<(String, UploadRecord)> = {
                let mut t = self.lock();
                let ids: Vec<String> = t
                    .iter()
                    .filter(|(_, r)| r.expires <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                ids.into_iter()
                    .filter_map(|k| t.remove(&k).map(|r| (k, r)))
                    .collect()
            };
            for (k, _) in &gone {
                let _ = self.write_through(k, None).await;
            }
            Ok(gone)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(owner: UploadOwner, now: SystemTime) -> UploadRecord {
        UploadRecord {
            owner,
            target: "/f".into(),
            size: 10,
            expected: None,
            kept: None,
            expires: now + UPLOAD_TTL,
            receipt: None,
        }
    }

    #[tokio::test]
    async fn bounded_per_owner_and_expired_ones_go() {
        let t = MemoryUploads::new();
        let now = SystemTime::now();
        let alice = UploadOwner::User("alice".into());
        // Finished ones hold no place.
        let done = new_id();
        t.create(&done, record(alice.clone(), now), now)
            .await
            .unwrap();
        t.complete(&done, "{}".into()).await.unwrap();
        for _ in 0..MAX_UPLOADS_PER_OWNER {
            t.create(&new_id(), record(alice.clone(), now), now)
                .await
                .unwrap();
        }
        assert_eq!(
            t.create(&new_id(), record(alice.clone(), now), now).await,
            Err(UploadsError::Full)
        );
        // Another owner is not held back by alice's.
        let link = UploadOwner::Link("0123abcd".into());
        let id = new_id();
        t.create(&id, record(link.clone(), now), now).await.unwrap();
        assert_eq!(
            t.create(&id, record(link, now), now).await,
            Err(UploadsError::Taken)
        );
        // A day later alice's have expired: gone for readers, and room again.
        let later = now + UPLOAD_TTL + Duration::from_secs(1);
        assert_eq!(t.get(&id, later).await.unwrap(), None);
        t.create(&new_id(), record(alice, later), later)
            .await
            .unwrap();
        assert!(!valid_id("../../etc/passwd"));
        assert!(
            t.create("short", record(UploadOwner::User("x".into()), now), now)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn persisted_records_come_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let (a, b) = (new_id(), new_id());
        {
            let t = MemoryUploads::persisted(dir.path(), now).unwrap();
            t.create(&a, record(UploadOwner::User("alice".into()), now), now)
                .await
                .unwrap();
            t.create(&b, record(UploadOwner::User("alice".into()), now), now)
                .await
                .unwrap();
            t.set_kept(&a, Some((5, [7; 32]))).await.unwrap();
            t.remove(&b).await.unwrap();
        }
        std::fs::write(dir.path().join("junk.json"), b"{").unwrap();
        let t = MemoryUploads::persisted(dir.path(), now).unwrap();
        assert_eq!(
            t.get(&a, now).await.unwrap().unwrap().kept,
            Some((5, [7; 32]))
        );
        assert_eq!(t.get(&b, now).await.unwrap(), None);
        // Expired at the next start: removed from the directory too.
        let later = now + UPLOAD_TTL + Duration::from_secs(1);
        drop(MemoryUploads::persisted(dir.path(), later).unwrap());
        assert!(!dir.path().join(format!("{a}.json")).exists());
    }
}
