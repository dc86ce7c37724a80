//! Uploads through the core: the verified commit, the quota and kept partials, whatever the
//! front-end.
//!
//! An upload reserves its room before its first byte (so uploads in flight count), is written
//! and hashed by the store, and is committed only if the store's digest is the one the client
//! declared; the commit's rename is measured and counted inside the store's change gate (see
//! [`crate::storage::ChangeGate`]). An interrupted upload is kept as a partial for its user
//! and target; a resume takes it up again once its prefix's digest matches.
//!
//! The counters follow one rule so that no sequence of requests makes them lie: they grow
//! before a change and shrink after it. A count that is late therefore only ever overstates
//! the usage for a moment (refusing early), never lets a reservation pass on room that is
//! gone. Each step that changes the store and then its counters runs to its end in a task of
//! its own (see `to_the_end`), so a caller that goes away cannot split them.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::quota::{Account, Refusal, Reservation};
use super::{CoreError, Home, partial_key, to_the_end};
use crate::domain::{EntryKind, Footprint, Op, Refused};
use crate::storage::{
    self, Commit, Durability, Landed, Landing, PartialKey, RemotePath, Resume, Sha256Digest,
    SmallOptions, StorageError, UploadOptions,
};

/// What a put asks for.
#[derive(Debug, Clone, Copy)]
pub struct PutRequest {
    /// The whole file's size.
    pub size: u64,
    /// Replace an existing file at the target (else `AlreadyExists`).
    pub replace: bool,
    /// Continue the kept partial at this offset, whose first bytes have this digest.
    pub resume: Option<(u64, Sha256Digest)>,
}

/// What a finished upload's content must hash to before it may land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The sender's SHA-256: any other content is a mismatch, and nothing lands.
    Sha256(Sha256Digest),
    /// The sender named no digest (curl without `Content-Digest`, a stock tus client): the
    /// content lands, and the digest the server computed is what it reports; a receipt says
    /// the server alone verified it.
    ServerComputed,
    /// The sender sent something that is not a digest: it can only mismatch.
    Unreadable,
}

impl From<Sha256Digest> for Expect {
    fn from(d: Sha256Digest) -> Expect {
        Expect::Sha256(d)
    }
}

/// ferry/1's meaning: a digest the client sent, or `None` when what it sent was not one.
impl From<Option<Sha256Digest>> for Expect {
    fn from(d: Option<Sha256Digest>) -> Expect {
        d.map_or(Expect::Unreadable, Expect::Sha256)
    }
}

impl Expect {
    fn accepts(self, actual: &Sha256Digest) -> bool {
        match self {
            Expect::Sha256(d) => d == *actual,
            Expect::ServerComputed => true,
            Expect::Unreadable => false,
        }
    }
}

/// A partial upload as it was kept ([`Upload::keep_as_partial`]): resume it with
/// `PutRequest::resume = Some((len, sha256))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptPartial {
    pub len: u64,
    pub sha256: Sha256Digest,
}

/// Why a resume cannot go on (the partial, if any, is kept as it was).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeRefused {
    /// No partial upload of this target by this user.
    NoPartial,
    /// The partial holds fewer bytes than the resume offset.
    Short { kept: u64, offset: u64 },
    /// The partial's first `offset` bytes have another digest.
    Mismatch { offset: u64, actual: Sha256Digest },
}

/// Where a finished put got to.
#[derive(Debug)]
pub enum Put {
    /// Durable and in place; `name` is set when it landed under another name than asked
    /// for (a drop link's upload beside a file of the same name: `report (1).pdf`).
    Committed {
        sha256: Sha256Digest,
        name: Option<String>,
    },
    /// Verified and (for a large file) in place, durable once [`Home::flush`] has covered it;
    /// acknowledge it only then.
    Staged(StagedPut),
    /// The content's digest is not the declared one: nothing was committed.
    Mismatch { actual: Sha256Digest },
}

/// A verified put waiting for [`Home::flush`].
#[derive(Debug)]
pub struct StagedPut {
    staged: storage::Staged,
    /// The file's SHA-256.
    pub sha256: Sha256Digest,
}

/// An upload in progress, from [`Home::begin_upload`]: bytes go in with [`Upload::write`];
/// then [`Upload::finish`] (verify and commit), [`Upload::keep_partial`] or
/// [`Upload::abort`]. Dropped, it is aborted: nothing appears and its room is given back.
pub struct Upload {
    inner: Option<Box<dyn storage::Upload>>,
    account: Option<Arc<Account>>,
    key: PartialKey,
    size: u64,
    /// Where the data starts (a resumed prefix's length).
    offset: u64,
    /// Whether it took up a kept partial, which is counted as a file already (even at
    /// offset 0): it lands or is kept again as that file, not as a new one.
    resumed: bool,
    replace: bool,
    /// Where it lands if its name is taken (a drop link's: beside it, numbered).
    landing: Landing,
    reservation: Option<Reservation>,
    /// A resumed partial's count, still in the usage until the upload lands or is kept again.
    debt: PartialDebt,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("size", &self.size)
            .field("offset", &self.offset)
            .field("written", &self.written())
            .finish_non_exhaustive()
    }
}

/// The usage a taken-up partial still holds: settled when the upload lands or is kept, else
/// given back when dropped (its bytes are gone with the upload).
struct PartialDebt {
    account: Option<Arc<Account>>,
    bytes: u64,
}

impl PartialDebt {
    fn none() -> PartialDebt {
        PartialDebt {
            account: None,
            bytes: 0,
        }
    }

    fn settle(&mut self) {
        self.account = None;
    }
}

impl Drop for PartialDebt {
    fn drop(&mut self) {
        if let Some(a) = self.account.take() {
            a.adjust_soon(
                Footprint::NONE,
                Footprint {
                    bytes: self.bytes,
                    files: 1,
                },
            );
        }
    }
}

impl Home {
    /// Where this home's uploads land when their name is taken: a drop link's
    /// ([`Scope::UploadOnly`](crate::domain::Scope::UploadOnly)) beside it under the next free
    /// name, since it may neither replace a file nor learn that one exists; everyone else's
    /// exactly there (or refused).
    fn landing(&self) -> Landing {
        if self.scope == crate::domain::Scope::UploadOnly {
            Landing::NextFreeName
        } else {
            Landing::Exact
        }
    }

    /// Starts an upload to `path`: checks the target (a directory is `IsADirectory`, an
    /// existing name without `replace` `AlreadyExists`), reserves the room, and either starts
    /// afresh (a partial an earlier attempt left is superseded) or takes the partial up at
    /// the resume offset once its prefix's digest matches.
    pub async fn begin_upload(
        &self,
        path: &RemotePath,
        request: PutRequest,
    ) -> Result<Upload, CoreError> {
        let key = partial_key(&self.user, path);
        self.begin_keyed(path, request, key).await
    }

    /// [`Home::begin_upload`] for one of several uploads of a target, told apart by `slot`
    /// (a resumable HTTP upload's id): its partial is its own, so uploads of one name (by
    /// strangers through one drop link) never supersede or take up each other's. A resume
    /// names the same slot.
    pub async fn begin_upload_in_slot(
        &self,
        path: &RemotePath,
        request: PutRequest,
        slot: &str,
    ) -> Result<Upload, CoreError> {
        let key = slot_key(&self.user, path, slot);
        self.begin_keyed(path, request, key).await
    }

    /// Removes the kept partial of the upload in `slot` to `path` (a resumable upload
    /// cancelled, or found expired), giving back what it took. Nothing kept: nothing done.
    pub async fn discard_slot_partial(
        &self,
        path: &RemotePath,
        slot: &str,
    ) -> Result<(), CoreError> {
        let key = slot_key(&self.user, path, slot);
        let (storage, account) = (Arc::clone(&self.storage), self.account.clone());
        to_the_end(async move {
            if let (Some(len), Some(a)) = (storage.remove_partial(&key).await?, &account) {
                let gone = Footprint {
                    bytes: len,
                    files: 1,
                };
                a.adjust(Footprint::NONE, gone).await;
            }
            Ok(())
        })
        .await
    }

    async fn begin_keyed(
        &self,
        path: &RemotePath,
        request: PutRequest,
        key: PartialKey,
    ) -> Result<Upload, CoreError> {
        self.allow(Op::Put, request.replace)?;
        if path.is_root() {
            return Err(StorageError::IsADirectory.into());
        }
        let (home, path) = (self.clone(), path.clone());
        to_the_end(async move {
            match request.resume {
                None => home.begin_fresh(&path, request, key).await,
                Some((offset, prefix)) => {
                    home.begin_resumed(&path, request, offset, prefix, key)
                        .await
                }
            }
        })
        .await
    }

    async fn begin_fresh(
        &self,
        path: &RemotePath,
        request: PutRequest,
        key: PartialKey,
    ) -> Result<Upload, CoreError> {
        let options = UploadOptions {
            size_hint: Some(request.size),
            no_replace: !request.replace,
            landing: self.landing(),
            supersede: Some(key.clone()),
        };
        let inner = match self.storage.begin_upload(path, options).await {
            Ok(inner) => inner,
            // A target whose directory does not exist: the limits answer first, as they do for
            // a small put (the store checks the room before it creates the temp).
            Err(StorageError::NotFound) => {
                drop(self.reserve(request.size, request.size, true).await?);
                return Err(StorageError::NotFound.into());
            }
            Err(e) => return Err(e.into()),
        };
        if let (Some(old), Some(a)) = (inner.superseded(), &self.account) {
            let old = Footprint {
                bytes: old,
                files: 1,
            };
            a.adjust(Footprint::NONE, old).await;
        }
        let replaces = inner.replaces();
        let new_bytes = request.size.saturating_sub(replaces.bytes);
        let reserved = self
            .reserve(request.size, new_bytes, replaces.files == 0)
            .await;
        let reservation = match reserved {
            Ok(r) => r,
            Err(e) => {
                inner.abort().await;
                return Err(e);
            }
        };
        Ok(Upload {
            inner: Some(inner),
            account: self.account.clone(),
            key,
            size: request.size,
            offset: 0,
            resumed: false,
            replace: request.replace,
            landing: self.landing(),
            reservation,
            debt: PartialDebt::none(),
        })
    }

    async fn begin_resumed(
        &self,
        path: &RemotePath,
        request: PutRequest,
        offset: u64,
        prefix: Sha256Digest,
        key: PartialKey,
    ) -> Result<Upload, CoreError> {
        if offset > request.size {
            return Err(StorageError::InvalidArgument.into());
        }
        // The target's checks and the room come before the partial is touched, so that a
        // refusal leaves it exactly as it was (the store cuts it at the resume point). The
        // look is at the name itself, not what a link there leads to, as a fresh upload's
        // and the commit's are: a link is replaced (with `replace`) like a file.
        let replaces = match self.storage.lstat(path).await {
            Ok(st) if st.entry.kind == EntryKind::Dir => {
                return Err(StorageError::IsADirectory.into());
            }
            // A drop link's upload lands beside a taken name: nothing is replaced.
            Ok(_) if !request.replace && self.landing() == Landing::NextFreeName => Footprint::NONE,
            Ok(_) if !request.replace => return Err(StorageError::AlreadyExists.into()),
            Ok(st) if st.entry.kind == EntryKind::File => Footprint {
                bytes: st.entry.size,
                files: 1,
            },
            Ok(_) | Err(StorageError::NotFound) => Footprint::NONE,
            Err(e) => return Err(e.into()),
        };
        // The partial's bytes are counted already (as a file): reserve only the rest.
        let more = (request.size - offset).saturating_sub(replaces.bytes);
        let reservation = self.reserve(request.size, more, false).await?;
        let resumed = self
            .storage
            .resume_upload(&key, path, offset, prefix, Some(request.size))
            .await?;
        let inner = match resumed {
            Resume::Ready(inner) => inner,
            Resume::NoPartial => return Err(CoreError::ResumeRefused(ResumeRefused::NoPartial)),
            Resume::Short { kept } => {
                return Err(CoreError::ResumeRefused(ResumeRefused::Short {
                    kept,
                    offset,
                }));
            }
            Resume::Mismatch { actual, replaced } => {
                // A partial kept under the key meanwhile (another session's) was replaced.
                if let Some(a) = &self.account {
                    a.adjust(Footprint::NONE, replaced).await;
                }
                return Err(CoreError::ResumeRefused(ResumeRefused::Mismatch {
                    offset,
                    actual,
                }));
            }
        };
        // The partial is this upload's now, cut to the resume point, and counted from here as
        // one file of `offset` bytes. The store says what the counters held for it: a kept
        // partial, one file of its length; a record of progress left by a node that died
        // mid-upload, nothing (a fresh upload's: its reservation lapsed with the node) or the
        // prefix that upload had resumed from.
        let debt = match &self.account {
            Some(a) => {
                let held = match inner.superseded() {
                    Some(bytes) => Footprint { bytes, files: 1 },
                    None => Footprint::NONE,
                };
                let now = Footprint {
                    bytes: offset,
                    files: 1,
                };
                if held != now {
                    a.adjust(now, held).await;
                }
                PartialDebt {
                    account: Some(Arc::clone(a)),
                    bytes: offset,
                }
            }
            None => PartialDebt::none(),
        };
        Ok(Upload {
            inner: Some(inner),
            account: self.account.clone(),
            key,
            size: request.size,
            offset,
            resumed: true,
            replace: request.replace,
            landing: self.landing(),
            reservation,
            debt,
        })
    }

    /// Reserves `bytes` more room (and a file slot if `new_file`) for a file of `size` bytes,
    /// for a user with limits.
    async fn reserve(
        &self,
        size: u64,
        bytes: u64,
        new_file: bool,
    ) -> Result<Option<Reservation>, CoreError> {
        let Some(a) = &self.account else {
            return Ok(None);
        };
        a.reserve(&self.limits, size, bytes, new_file)
            .await
            .map(Some)
            .map_err(|r| CoreError::refused(r, size))
    }

    /// Writes a whole small file (at most [`storage::SMALL_MAX`] bytes, fresh, not resumed)
    /// in one call to the store: target checks, the superseded partial, the room, the digest
    /// check and the write together. `expected` is what the content must hash to (see
    /// [`Expect`]).
    pub async fn put_small(
        &self,
        path: &RemotePath,
        data: Bytes,
        replace: bool,
        expected: impl Into<Expect>,
        durability: Durability,
    ) -> Result<Put, CoreError> {
        self.allow(Op::Put, replace)?;
        let size = data.len() as u64;
        let expected = match expected.into() {
            Expect::Sha256(d) => d,
            // At most SMALL_MAX bytes in memory: hashed here, then checked by the store
            // like any sender's digest.
            Expect::ServerComputed => {
                use sha2::Digest;
                sha2::Sha256::digest(&data).into()
            }
            Expect::Unreadable => {
                // Not a digest: hashed through the streamed path to say what the store got.
                let request = PutRequest {
                    size,
                    replace,
                    resume: None,
                };
                let mut upload = self.begin_upload(path, request).await?;
                upload.write(data).await?;
                return upload.finish(Expect::Unreadable, durability).await;
            }
        };
        if path.is_root() {
            return Err(StorageError::IsADirectory.into());
        }
        let key = partial_key(&self.user, path);
        if self.account.is_none() {
            // No limits, no counters: nothing to reserve or settle (the common case, kept
            // free of the call-backs' allocations).
            let commit = plain_commit(expected, replace, self.landing(), durability);
            let options = SmallOptions {
                supersede: Some(key),
                reserve: None,
            };
            let put = self.storage.put_small(path, data, options, commit).await?;
            return Ok(landed(put.landed, expected));
        }
        // Filled by the store's call-back, inside its blocking call.
        let held: Arc<Mutex<Option<Reservation>>> = Arc::new(Mutex::new(None));
        let refused: Arc<Mutex<Option<Refusal>>> = Arc::new(Mutex::new(None));
        let reserve: storage::Reserve = {
            let (account, limits) = (self.account.clone(), self.limits);
            let (held, refused) = (Arc::clone(&held), Arc::clone(&refused));
            Box::new(move |replaces, superseded| {
                let Some(a) = account else {
                    return Ok(());
                };
                if let Some(old) = superseded {
                    let old = Footprint {
                        bytes: old,
                        files: 1,
                    };
                    a.adjust_blocking(Footprint::NONE, old);
                }
                super::quota::reserve_in_store(&a, &limits, size, replaces, &held, &refused)
            })
        };
        let added = Footprint {
            bytes: size,
            files: 1,
        };
        let commit = settled_commit(
            expected,
            replace,
            self.landing(),
            durability,
            &held,
            added,
            PartialDebt::none(),
        );
        let options = SmallOptions {
            supersede: Some(key),
            reserve: Some(reserve),
        };
        match self.storage.put_small(path, data, options, commit).await {
            Ok(put) => Ok(landed(put.landed, expected)),
            Err(StorageError::QuotaExceeded) if lock(&refused).is_some() => {
                let refusal = lock(&refused)
                    .take()
                    .unwrap_or(Refusal::Refused(Refused::Quota("byte quota")));
                Err(CoreError::refused(refusal, size))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Makes staged puts durable (one flush of the store for all of them) and returns one
    /// result per put, in order.
    pub async fn flush(&self, staged: Vec<StagedPut>) -> Vec<Result<(), CoreError>> {
        let staged = staged.into_iter().map(|s| s.staged).collect();
        self.storage
            .flush_durability(staged)
            .await
            .into_iter()
            .map(|r| r.map(|_| ()).map_err(CoreError::from))
            .collect()
    }
}

impl Upload {
    /// The whole file's declared size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes the upload holds so far, a resumed prefix included.
    pub fn written(&self) -> u64 {
        self.inner.as_ref().map_or(self.offset, |u| u.written())
    }

    /// Appends bytes. An error ends the upload (nothing is kept; its room is given back).
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), CoreError> {
        let Some(inner) = self.inner.as_mut() else {
            return Err(StorageError::InvalidArgument.into());
        };
        let written = inner.write(chunk).await.map_err(CoreError::from);
        // A long upload keeps its room alive as its data arrives.
        let renewed = match (&written, self.reservation.as_mut()) {
            (Ok(()), Some(r)) => r
                .renew_if_due()
                .await
                .map_err(|e| CoreError::refused(e, self.size)),
            _ => Ok(()),
        };
        if let Err(e) = written.and(renewed) {
            if let Some(inner) = self.inner.take() {
                inner.abort().await;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Ends the data and commits it if it is the declared size and its digest is what
    /// `expected` accepts (see [`Expect`]). A mismatch or an error leaves nothing under the
    /// target. [`Upload::seal`] and [`Sealed::commit`] are the same in two steps.
    pub async fn finish(
        self,
        expected: impl Into<Expect>,
        durability: Durability,
    ) -> Result<Put, CoreError> {
        match self.seal(expected).await? {
            Sealing::Sealed(sealed) => sealed.commit(durability).await,
            Sealing::Mismatch { actual } => Ok(Put::Mismatch { actual }),
        }
    }

    /// Ends the data and checks it: the declared size, and a digest `expected` accepts. A
    /// mismatch or an error leaves nothing (the upload is gone); otherwise the upload waits,
    /// verified, for [`Sealed::commit`] (dropped, it is aborted). Lets a caller do what must
    /// happen between the check and the commit (a drop link counts a file only once it is
    /// known good, and before it lands).
    pub async fn seal(mut self, expected: impl Into<Expect>) -> Result<Sealing, CoreError> {
        let expected = expected.into();
        let Some(mut inner) = self.inner.take() else {
            return Err(StorageError::InvalidArgument.into());
        };
        let received = inner.written();
        if received != self.size {
            inner.abort().await;
            return Err(CoreError::SizeMismatch {
                declared: self.size,
                received,
            });
        }
        let actual = match inner.finish().await {
            Ok(d) => d,
            Err(e) => {
                inner.abort().await;
                return Err(e.into());
            }
        };
        if !expected.accepts(&actual) {
            inner.abort().await;
            return Ok(Sealing::Mismatch { actual });
        }
        self.inner = Some(inner);
        Ok(Sealing::Sealed(Sealed {
            upload: self,
            actual,
        }))
    }
}

/// What [`Upload::seal`] found.
#[derive(Debug)]
pub enum Sealing {
    /// Whole and verified: commit it.
    Sealed(Sealed),
    /// The content's digest is not the one expected: nothing was kept.
    Mismatch { actual: Sha256Digest },
}

/// A whole, verified upload waiting for its commit.
#[derive(Debug)]
pub struct Sealed {
    upload: Upload,
    actual: Sha256Digest,
}

impl Sealed {
    /// The content's SHA-256.
    pub fn sha256(&self) -> Sha256Digest {
        self.actual
    }

    /// Drops it: nothing lands and its room is given back.
    pub async fn abort(self) {
        self.upload.abort().await;
    }

    /// Commits it (the same durable, counted commit as [`Upload::finish`]).
    pub async fn commit(self, durability: Durability) -> Result<Put, CoreError> {
        let Sealed { mut upload, actual } = self;
        let Some(inner) = upload.inner.take() else {
            return Err(StorageError::InvalidArgument.into());
        };
        upload.commit_verified(inner, actual, durability).await
    }
}

impl Upload {
    async fn commit_verified(
        mut self,
        inner: Box<dyn storage::Upload>,
        actual: Sha256Digest,
        durability: Durability,
    ) -> Result<Put, CoreError> {
        // A resumed partial was counted (as a file of `offset` bytes) and becomes the target:
        // only the rest of its bytes are new.
        let added = Footprint {
            bytes: self.size - self.offset,
            files: u64::from(!self.resumed),
        };
        let commit = if self.account.is_none() {
            plain_commit(actual, self.replace, self.landing, durability)
        } else {
            let held = Arc::new(Mutex::new(self.reservation.take()));
            let debt = std::mem::replace(&mut self.debt, PartialDebt::none());
            settled_commit(
                actual,
                self.replace,
                self.landing,
                durability,
                &held,
                added,
                debt,
            )
        };
        // The store runs the commit to its end even if this future is dropped.
        Ok(landed(inner.commit(commit).await?, actual))
    }

    /// Keeps what was received as the partial for this user and target, for a later resume;
    /// true if it was kept. Nothing received: nothing kept.
    pub async fn keep_partial(self) -> bool {
        self.keep_as_partial().await.is_some()
    }

    /// Where the upload stands: go back there with [`Upload::rewind`] (a resumable HTTP
    /// upload's request whose chunk turns out wrong or cut). An error ends the upload.
    pub async fn mark(&mut self) -> Result<storage::Mark, CoreError> {
        let Some(inner) = self.inner.as_mut() else {
            return Err(StorageError::InvalidArgument.into());
        };
        match inner.mark().await {
            Ok(m) => Ok(m),
            Err(e) => {
                if let Some(inner) = self.inner.take() {
                    inner.abort().await;
                }
                Err(e.into())
            }
        }
    }

    /// Drops what was written since `mark` (of this upload); the hash is as it was there. The
    /// room stays reserved (it covers the whole size). An error ends the upload.
    pub async fn rewind(&mut self, mark: storage::Mark) -> Result<(), CoreError> {
        if mark.written() < self.offset {
            return Err(StorageError::InvalidArgument.into());
        }
        let Some(inner) = self.inner.as_mut() else {
            return Err(StorageError::InvalidArgument.into());
        };
        match inner.rewind(mark).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Some(inner) = self.inner.take() {
                    inner.abort().await;
                }
                Err(e.into())
            }
        }
    }

    /// [`Upload::keep_partial`], saying what was kept: its length and digest, which a resume
    /// names (`PutRequest::resume`) and the store checks again, so the resume continues only
    /// the server's own bytes. `None`: nothing was kept (nothing received, or it failed).
    pub async fn keep_as_partial(mut self) -> Option<KeptPartial> {
        let inner = self.inner.take()?;
        if inner.written() == 0 {
            inner.abort().await;
            return None;
        }
        let (account, key, offset) = (self.account.clone(), self.key.clone(), self.offset);
        let resumed = self.resumed;
        let mut reservation = self.reservation.take();
        let mut debt = std::mem::replace(&mut self.debt, PartialDebt::none());
        to_the_end(async move {
            // Counted before it appears (the reservation still holds its room meanwhile);
            // the older partial it replaces comes off after.
            let new = Footprint {
                bytes: inner.written() - offset,
                files: u64::from(!resumed),
            };
            // The room was reserved for the file replacing its target, less what the target
            // takes; a partial is kept beside the target and replaces nothing, so it must fit
            // on its own, or it is not kept.
            if let Some(r) = reservation.as_mut()
                && r.cover(new, Footprint::NONE).await.is_err()
            {
                inner.abort().await;
                return Ok(None);
            }
            if let Some(a) = &account {
                a.adjust(new, Footprint::NONE).await;
            }
            let written = inner.written();
            let kept = inner.keep(key).await;
            match (&account, &kept) {
                (Some(a), Ok(k)) => {
                    // A store may keep less than was written (an object store keeps whole
                    // parts): the counters follow what it kept.
                    let dropped = Footprint {
                        bytes: written.saturating_sub(k.len),
                        files: 0,
                    };
                    a.adjust(Footprint::NONE, k.replaced.plus(dropped)).await
                }
                (Some(a), Err(_)) => a.adjust(Footprint::NONE, new).await,
                (None, _) => {}
            }
            if kept.is_ok() {
                debt.settle();
            }
            drop((reservation, debt));
            Ok(kept.ok().map(|k| KeptPartial {
                len: k.len,
                sha256: k.sha256,
            }))
        })
        .await
        .unwrap_or(None)
    }

    /// Drops the upload and everything written; its room is given back.
    pub async fn abort(mut self) {
        if let Some(inner) = self.inner.take() {
            inner.abort().await;
        }
    }
}

/// The partial key of `user`'s upload in `slot` to `path`. A user name holds no control
/// character, so no slot's key is another user's plain key.
fn slot_key(user: &str, path: &RemotePath, slot: &str) -> PartialKey {
    partial_key(&format!("{user}\u{1}{slot}"), path)
}

/// A commit that checks the room right before its rename (what the target takes then may
/// differ from the estimate the room was reserved for) and settles the counters once the
/// file is in place, inside the store's change gate. If it never gets there, the reservation
/// and the debt are dropped with the call-backs: the room goes back, and a resumed partial's
/// count with it.
fn settled_commit(
    sha256: Sha256Digest,
    replace: bool,
    landing: Landing,
    durability: Durability,
    held: &Arc<Mutex<Option<Reservation>>>,
    added: Footprint,
    debt: PartialDebt,
) -> Commit {
    let cover_held = Arc::clone(held);
    let admit: storage::Admit = Box::new(move |replaced| match lock(&cover_held).as_mut() {
        Some(r) => r
            .cover_blocking(added, replaced)
            .map_err(refusal_to_storage),
        None => Ok(()),
    });
    let placed_held = Arc::clone(held);
    let placed: storage::Placed = Box::new(move |replaced| {
        let mut debt = debt;
        debt.settle();
        let taken = lock(&placed_held).take();
        if let Some(r) = taken {
            r.commit_blocking(added, replaced);
        }
    });
    let commit = plain_commit(sha256, replace, landing, durability);
    commit.admit(admit).placed(placed)
}

/// A commit with no counters to keep.
fn plain_commit(
    sha256: Sha256Digest,
    replace: bool,
    landing: Landing,
    durability: Durability,
) -> Commit {
    let commit = match landing {
        Landing::NextFreeName if !replace => Commit::new(sha256, true).at_next_free_name(),
        _ => Commit::new(sha256, !replace),
    };
    match durability {
        Durability::Now => commit,
        Durability::Batched => commit.batched(),
    }
}

fn landed(landed: Landed, sha256: Sha256Digest) -> Put {
    match landed {
        Landed::Committed(c) => Put::Committed {
            sha256,
            name: c.name,
        },
        Landed::Staged(staged) => Put::Staged(StagedPut { staged, sha256 }),
        Landed::Mismatch { actual } => Put::Mismatch { actual },
    }
}

/// A refusal at a commit, as the store's error: over a limit (or a lease gone) is
/// `QuotaExceeded`, a ledger that failed an i/o error.
pub(super) fn refusal_to_storage(refusal: Refusal) -> StorageError {
    match refusal {
        Refusal::Refused(_) | Refusal::LeaseGone => StorageError::QuotaExceeded,
        Refusal::Unavailable(why) => StorageError::Io(std::io::Error::other(why)),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sha2::Digest;

    use super::*;
    use crate::domain::Quota;
    use crate::storage::Storage;
    use crate::storage::local::LocalStorage;

    /// A long upload keeps its room: the reservation's lease is renewed as data arrives, so a
    /// transfer that outlasts one lease still commits and is counted once. (Without the
    /// renewal the commit's check finds the lease gone and refuses it.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_longer_than_its_lease_renews_it_and_lands() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(LocalStorage::open(&dir.path().join("home"), true).unwrap());
        let lease = Duration::from_millis(300);
        let account = Arc::new(Account::standalone_with_lease(Footprint::NONE, lease));
        let limits = Quota {
            bytes: Some(10_000_000),
            files: Some(10),
            max_file_size: None,
        };
        let home = Home::new("alice", storage, Some(Arc::clone(&account)), limits);
        let path = RemotePath::parse("/slow").unwrap();
        let chunk = vec![7u8; 100_000];
        let request = PutRequest {
            size: 20 * chunk.len() as u64,
            replace: false,
            resume: None,
        };
        let mut upload = home.begin_upload(&path, request).await.unwrap();
        let mut hasher = sha2::Sha256::new();
        // Twenty chunks over about a second: three lease lengths, renewed as it goes.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(55)).await;
            upload.write(Bytes::from(chunk.clone())).await.unwrap();
            hasher.update(&chunk);
        }
        let put = upload
            .finish(Some(hasher.finalize().into()), Durability::Now)
            .await
            .unwrap();
        assert!(matches!(put, Put::Committed { .. }), "{put:?}");
        let usage = account.usage(&limits).await.unwrap();
        assert_eq!(
            (usage.used_bytes, usage.used_files),
            (Some(2_000_000), Some(1)),
            "counted once, and no room left reserved"
        );
    }

    /// The scope holds in the core, so a front-end that forgot to ask the table still cannot
    /// write as a read-only user or read through an upload-only link.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_core_enforces_the_scope_whatever_the_front_end() {
        use crate::domain::Scope;
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(LocalStorage::open(&dir.path().join("home"), true).unwrap());
        let full = Home::new("alice", storage, None, Quota::default());
        let p = |s: &str| RemotePath::parse(s).unwrap();
        let data = Bytes::from_static(b"hello");
        let digest: Sha256Digest = sha2::Sha256::digest(&data).into();
        let put = |home: Home, name: &'static str, replace: bool| {
            let data = data.clone();
            async move {
                home.put_small(&p(name), data, replace, Some(digest), Durability::Now)
                    .await
            }
        };
        put(full.clone(), "/f", false).await.unwrap();
        let denied = |r: Result<(), CoreError>, what: &str| match r {
            Err(CoreError::Denied(_)) => {}
            other => panic!("{what}: {other:?}"),
        };

        let read_only = full.clone().scoped(Scope::ReadOnly);
        assert_eq!(read_only.stat(&p("/f")).await.unwrap().size, 5);
        read_only.sha256(&p("/f"), |_| {}).await.unwrap();
        denied(read_only.mkdir(&p("/d")).await, "mkdir");
        denied(read_only.remove(&p("/f")).await, "remove");
        denied(read_only.rename(&p("/f"), &p("/g"), false).await, "rename");
        denied(put(read_only.clone(), "/g", false).await.map(|_| ()), "put");
        let request = PutRequest {
            size: 5,
            replace: false,
            resume: None,
        };
        denied(
            read_only.begin_upload(&p("/g"), request).await.map(|_| ()),
            "begin_upload",
        );

        let link = full.clone().scoped(Scope::UploadOnly);
        put(link.clone(), "/new", false).await.unwrap();
        denied(put(link.clone(), "/f", true).await.map(|_| ()), "replace");
        denied(link.stat(&p("/f")).await.map(|_| ()), "stat");
        denied(link.get_small(&p("/f")).await.map(|_| ()), "get");
        denied(link.sha256(&p("/f"), |_| {}).await.map(|_| ()), "sha256");
        denied(link.usage().await.map(|_| ()), "usage");
        denied(link.partial_len(&p("/f")).await.map(|_| ()), "partial");
        assert_eq!(
            full.stat(&p("/f")).await.unwrap().size,
            5,
            "nothing changed"
        );
    }

    /// A drop link's upload of a taken name lands beside it, numbered, whether small or
    /// streamed, never replacing and never refused for it; the counters count each new file,
    /// and uploads of one name at once all land, under distinct names.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_only_home_lands_beside_a_taken_name() {
        use crate::domain::Scope;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        let storage: Arc<dyn Storage> = Arc::new(LocalStorage::open(&root, true).unwrap());
        let account = Arc::new(Account::default());
        let limits = Quota {
            bytes: Some(100_000_000),
            files: Some(1000),
            max_file_size: None,
        };
        let full = Home::new("alice", storage, Some(Arc::clone(&account)), limits);
        let link = full.clone().scoped(Scope::UploadOnly);
        let p = |s: &str| RemotePath::parse(s).unwrap();
        std::fs::write(root.join("r.pdf"), "original").unwrap();
        let small = Bytes::from_static(b"small one");
        let put = link
            .put_small(
                &p("/r.pdf"),
                small.clone(),
                false,
                Expect::ServerComputed,
                Durability::Now,
            )
            .await
            .unwrap();
        assert!(
            matches!(&put, Put::Committed { name: Some(n), .. } if n == "r (1).pdf"),
            "{put:?}"
        );
        let big = vec![7u8; 3 * 1024 * 1024];
        let request = PutRequest {
            size: big.len() as u64,
            replace: false,
            resume: None,
        };
        let mut up = link.begin_upload(&p("/r.pdf"), request).await.unwrap();
        up.write(Bytes::from(big.clone())).await.unwrap();
        let put = up
            .finish(Expect::ServerComputed, Durability::Now)
            .await
            .unwrap();
        assert!(
            matches!(&put, Put::Committed { name: Some(n), .. } if n == "r (2).pdf"),
            "{put:?}"
        );
        assert_eq!(std::fs::read(root.join("r.pdf")).unwrap(), b"original");
        assert_eq!(std::fs::read(root.join("r (1).pdf")).unwrap(), &small[..]);
        assert_eq!(std::fs::read(root.join("r (2).pdf")).unwrap(), big);
        // Ten at once, one name: ten files.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..10u8 {
            let link = link.clone();
            set.spawn(async move {
                link.put_small(
                    &p("/race"),
                    Bytes::from(vec![i; 10]),
                    false,
                    Expect::ServerComputed,
                    Durability::Now,
                )
                .await
            });
        }
        while let Some(r) = set.join_next().await {
            assert!(matches!(r.unwrap().unwrap(), Put::Committed { .. }));
        }
        let names = std::fs::read_dir(&root)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("race")
            })
            .count();
        assert_eq!(names, 10);
        // The account started empty (this test never walked the home): it holds exactly
        // what the link added.
        let usage = full.usage().await.unwrap();
        assert_eq!(usage.used_files, Some(12), "{usage:?}");
        assert_eq!(
            usage.used_bytes,
            Some(small.len() as u64 + big.len() as u64 + 100),
            "{usage:?}"
        );
    }

    /// No-replace under a race, through the core: many uploads of one new name at once, each
    /// without `replace`, and exactly one lands; every other is refused as existing, and
    /// the counters hold exactly the one file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_uploads_of_one_name_without_replace_have_one_winner() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(LocalStorage::open(&dir.path().join("home"), true).unwrap());
        let account = Arc::new(Account::default());
        let limits = Quota {
            bytes: Some(100_000_000),
            files: Some(1000),
            max_file_size: None,
        };
        let home = Home::new("alice", storage, Some(Arc::clone(&account)), limits);
        for round in 0..20 {
            let name = format!("/race{round}");
            let racers: Vec<_> = (0..8u8)
                .map(|i| {
                    let (home, name) = (home.clone(), name.clone());
                    tokio::spawn(async move {
                        let path = RemotePath::parse(&name).unwrap();
                        // Half streamed (over 256 KiB), half small: both commit paths race.
                        let len = if i % 2 == 0 { 300_000 } else { 1000 };
                        let data = vec![i; len];
                        let digest: Sha256Digest = sha2::Sha256::digest(&data).into();
                        if len > storage::SMALL_MAX as usize {
                            let request = PutRequest {
                                size: len as u64,
                                replace: false,
                                resume: None,
                            };
                            let mut up = home.begin_upload(&path, request).await?;
                            up.write(Bytes::from(data)).await?;
                            up.finish(Some(digest), Durability::Now).await
                        } else {
                            let data = Bytes::from(data);
                            home.put_small(&path, data, false, Some(digest), Durability::Now)
                                .await
                        }
                    })
                })
                .collect();
            let mut won = 0;
            for r in racers {
                match r.await.unwrap() {
                    Ok(Put::Committed { .. }) => won += 1,
                    Err(CoreError::Storage(StorageError::AlreadyExists)) => {}
                    other => panic!("round {round}: {other:?}"),
                }
            }
            assert_eq!(won, 1, "round {round}: exactly one upload lands");
        }
        let usage = account.usage(&limits).await.unwrap();
        let fresh = home.storage().usage(Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (usage.used_bytes, usage.used_files),
            (Some(fresh.bytes), Some(fresh.files)),
            "the counters agree with a fresh count"
        );
        assert_eq!(fresh.files, 20);
    }
}
