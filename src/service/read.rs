//! The reads and the copy of the core: a download (whole small files in one call, others
//! streamed, a resume checked against the client's digest of its prefix), a file's digest,
//! and a server-side copy held to the account's limits. The bytes are read, and hashed, by
//! the storage (one read-hash loop, the store's); the core decides what is asked and counts
//! what a copy adds.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::{CoreError, Home, to_the_end};
use crate::domain::{EntryKind, Footprint};
use crate::storage::{
    Copied, CopyOptions, Download, Fetched, ReadEvent, ReadOptions, RemotePath, SMALL_MAX,
    Sha256Digest, StorageError,
};
use crate::transfer::PROGRESS_INTERVAL;

/// Told the bytes done so far, now and then, during long work.
pub type Progress = Box<dyn Fn(u64) + Send + Sync>;

/// What [`Home::open_download`] opened.
pub enum Opened {
    Download(Box<dyn Download>),
    /// The resume offset is past the end of the file, which has `size` bytes.
    BeyondEnd {
        size: u64,
    },
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Opened::Download(d) => write!(f, "Download({} bytes)", d.stat().entry.size),
            Opened::BeyondEnd { size } => write!(f, "BeyondEnd {{ size: {size} }}"),
        }
    }
}

/// Where a copy stands, for the race between its commit and a cancel: whichever comes first
/// under the lock decides, so a cancelled copy never lands and a landed one is always
/// counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Copying,
    Committing,
    Cancelled,
}

impl Home {
    /// A whole file of at most [`SMALL_MAX`] bytes, read and hashed in one call; a larger one
    /// comes back open for a download from its start ([`Fetched::Larger`]).
    pub async fn get_small(&self, path: &RemotePath) -> Result<Fetched, CoreError> {
        Ok(self.storage.get_small(path, SMALL_MAX).await?)
    }

    /// Opens `path` for a download of the bytes from `offset` to its end. The download ends
    /// with the SHA-256 of the whole file (the stored digest when the store has one that
    /// still describes the file). A resume (`offset` > 0) must name the digest of the first
    /// `offset` bytes as the client has them: the store hashes its own, reporting
    /// [`ReadEvent::Progress`], and ends in [`ReadEvent::PrefixMismatch`] if they differ.
    pub async fn open_download(
        &self,
        path: &RemotePath,
        offset: u64,
        prefix: Option<Sha256Digest>,
    ) -> Result<Opened, CoreError> {
        let options = ReadOptions {
            offset,
            len: None,
            hash: true,
            expect_prefix: prefix,
        };
        match self.storage.open_read(path, options).await {
            Ok(d) => Ok(Opened::Download(d)),
            // The store refuses an offset past the end without saying why; the size tells.
            Err(StorageError::InvalidArgument) if offset > 0 => match self.storage.stat(path).await
            {
                Ok(s) if s.entry.kind == EntryKind::File && s.entry.size < offset => {
                    Ok(Opened::BeyondEnd { size: s.entry.size })
                }
                _ => Err(StorageError::InvalidArgument.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// The size and SHA-256 of the file at `path`: the stored digest at once when the store
    /// has one that still describes the file, otherwise the file hashed, with `progress`
    /// told the bytes done every [`PROGRESS_INTERVAL`]. Dropping the future stops the work.
    /// A file that shrinks meanwhile is an error of kind `UnexpectedEof`.
    pub async fn sha256(
        &self,
        path: &RemotePath,
        progress: impl Fn(u64) + Send,
    ) -> Result<(u64, Sha256Digest), CoreError> {
        let options = ReadOptions {
            hash: true,
            ..ReadOptions::default()
        };
        let mut download = self.storage.open_read(path, options).await?;
        let size = download.stat().entry.size;
        if let Some(known) = download.stat().sha256 {
            return Ok((size, known));
        }
        let mut done = 0u64;
        let mut last = std::time::Instant::now();
        loop {
            match download.next().await? {
                ReadEvent::Data(bytes) => {
                    done += bytes.len() as u64;
                    if last.elapsed() >= PROGRESS_INTERVAL {
                        progress(done);
                        last = std::time::Instant::now();
                    }
                }
                ReadEvent::Progress(_) => {}
                ReadEvent::End { sha256: Some(d) } => return Ok((size, d)),
                ReadEvent::End { sha256: None } | ReadEvent::PrefixMismatch { .. } => {
                    return Err(StorageError::Io(std::io::Error::other(
                        "the store ended a hashed read without a digest",
                    ))
                    .into());
                }
            }
        }
    }

    /// Copies the file `from` to `to` within the home, replacing an existing file at `to`
    /// only if `replace`, committed like an upload. The copy is held to the account's limits
    /// as an upload is: room is reserved before a byte is copied, from a look at the source
    /// and the target; at the commit, under the change lock, what the target really takes
    /// then is measured and any room still missing reserved, or the copy is refused.
    ///
    /// `cancel` stops the copy unless its commit has begun: then `Ok(None)`, and nothing
    /// landed. A copy whose commit began runs to its end (and is counted) whatever happens
    /// to its caller; dropping the future cancels like `cancel`.
    pub async fn copy(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        replace: bool,
        progress: Option<Progress>,
        cancel: CancellationToken,
    ) -> Result<Option<Copied>, CoreError> {
        let (home, from, to) = (self.clone(), from.clone(), to.clone());
        let _cancel_on_drop = cancel.clone().drop_guard();
        to_the_end(async move { home.copy_now(&from, &to, replace, progress, cancel).await }).await
    }

    async fn copy_now(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        replace: bool,
        progress: Option<Progress>,
        cancel: CancellationToken,
    ) -> Result<Option<Copied>, CoreError> {
        // Fail fast, in the order the store would: the source, then the target.
        let source = self.storage.stat(from).await?.entry;
        match source.kind {
            EntryKind::File => {}
            EntryKind::Dir => return Err(StorageError::IsADirectory.into()),
            _ => return Err(StorageError::InvalidArgument.into()),
        }
        if to.is_root() {
            return Err(StorageError::IsADirectory.into());
        }
        let _changing = self.changing().await;
        let size = source.size;
        // An estimate for the reservation (a symlink at the target counts as nothing here);
        // the store decides what the target really is, and the commit measures it.
        // A file there (or a symlink to one) is refused without `replace`, by the store too.
        let replaces = match self.storage.stat(to).await {
            Ok(s) if s.entry.kind == EntryKind::File => {
                if !replace {
                    return Err(StorageError::AlreadyExists.into());
                }
                Footprint {
                    bytes: s.entry.size,
                    files: 1,
                }
            }
            _ => Footprint::NONE,
        };
        let reservation = match &self.account {
            Some(a) => Some(
                a.reserve(
                    &self.limits,
                    size,
                    size.saturating_sub(replaces.bytes),
                    replaces.files == 0,
                )
                .map_err(|refused| CoreError::Refused { refused, size })?,
            ),
            None => None,
        };
        let reservation = Arc::new(Mutex::new(reservation));
        let phase = Arc::new(Mutex::new(Phase::Copying));
        let admit = {
            let (reservation, phase) = (Arc::clone(&reservation), Arc::clone(&phase));
            Box::new(move |replaced: Footprint| {
                let mut phase = phase.lock().unwrap_or_else(|p| p.into_inner());
                if *phase == Phase::Cancelled {
                    return Err(StorageError::Io(std::io::Error::new(
                        std::io::ErrorKind::Interrupted,
                        "copy cancelled",
                    )));
                }
                *phase = Phase::Committing;
                let mut reservation = reservation.lock().unwrap_or_else(|p| p.into_inner());
                match reservation.as_mut() {
                    // The room was reserved from an earlier look at the target.
                    Some(r) => r
                        .cover(
                            Footprint {
                                bytes: size,
                                files: 1,
                            },
                            replaced,
                        )
                        .map_err(|_| StorageError::QuotaExceeded),
                    None => Ok(()),
                }
            })
        };
        let options = CopyOptions {
            no_replace: !replace,
            admit: Some(admit),
            progress,
        };
        let copying = self.storage.copy(from, to, options);
        tokio::pin!(copying);
        let copied = tokio::select! {
            copied = &mut copying => copied,
            () = cancel.cancelled() => {
                let stopped = {
                    let mut phase = phase.lock().unwrap_or_else(|p| p.into_inner());
                    if *phase == Phase::Copying {
                        *phase = Phase::Cancelled;
                    }
                    *phase == Phase::Cancelled
                };
                if stopped {
                    // Dropping the copy stops it; its temp goes, the reservation with it.
                    return Ok(None);
                }
                // The commit has begun: it lands (or fails) and is counted.
                copying.await
            }
        }?;
        let taken = reservation.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(r) = taken {
            r.commit(
                Footprint {
                    bytes: copied.size,
                    files: 1,
                },
                copied.replaced,
            );
        }
        Ok(Some(copied))
    }
}
