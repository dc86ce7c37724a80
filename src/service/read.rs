//! The reads and the copy of the core: a download (whole small files in one call, others
//! streamed, a resume checked against the client's digest of its prefix), a file's digest,
//! and a server-side copy held to the account's limits. The bytes are read, and hashed, by
//! the storage (one read-hash loop, the store's); the core decides what is asked and counts
//! what a copy adds.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::quota::{Refusal, Reservation};
use super::{CoreError, Home, to_the_end};
use crate::domain::{EntryKind, Footprint, Op};
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
        self.allow_at(Op::Get, path)?;
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
        self.allow_at(Op::Get, path)?;
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

    /// Opens `len` bytes of `path` from `offset` (to its end with `None`), unhashed: for a
    /// reader that learns the whole file's digest another way (an HTTP range request gets the
    /// store's recorded digest, in [`Download::stat`], when there is one). Nothing is read
    /// until the first `next`, so a caller may open only to look at the stat.
    pub async fn open_range(
        &self,
        path: &RemotePath,
        offset: u64,
        len: Option<u64>,
    ) -> Result<Box<dyn Download>, CoreError> {
        self.allow_at(Op::Get, path)?;
        let options = ReadOptions {
            offset,
            len,
            hash: false,
            expect_prefix: None,
        };
        Ok(self.storage.open_read(path, options).await?)
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
        self.allow_at(Op::Sha256, path)?;
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
        self.allow(Op::Copy, replace)?;
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
        let size = source.size;
        // The room is reserved by the store's call-back, once it has opened the source,
        // checked the target (its name itself: a link there is replaced, not what it leads
        // to) and made the copy's temp: a target that cannot be made is refused as such
        // before the limits are asked (PROTOCOL.md 5.11), as the old handler did. The commit
        // measures the target again inside the change gate.
        let reservation: Arc<Mutex<Option<Reservation>>> = Arc::new(Mutex::new(None));
        let refused: Arc<Mutex<Option<Refusal>>> = Arc::new(Mutex::new(None));
        let reserve: Option<crate::storage::Reserve> = self.account.clone().map(|a| {
            let limits = self.limits;
            let (held, refused) = (Arc::clone(&reservation), Arc::clone(&refused));
            Box::new(move |replaces: Footprint, _: Option<u64>| {
                super::quota::reserve_in_store(&a, &limits, size, replaces, &held, &refused)
            }) as crate::storage::Reserve
        });
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
                        .cover_blocking(
                            Footprint {
                                bytes: size,
                                files: 1,
                            },
                            replaced,
                        )
                        .map_err(super::upload::refusal_to_storage),
                    None => Ok(()),
                }
            })
        };
        // Counted the moment the copy is in place, inside the gate: a later error (the
        // directory's fsync) cannot leave it uncounted.
        let placed: crate::storage::Placed = {
            let reservation = Arc::clone(&reservation);
            Box::new(move |replaced: Footprint| {
                let taken = reservation.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(r) = taken {
                    r.commit_blocking(
                        Footprint {
                            bytes: size,
                            files: 1,
                        },
                        replaced,
                    );
                }
            })
        };
        // A long copy keeps its room alive as it goes (the store reports progress every few
        // seconds), and passes the progress on.
        let progress: Progress = {
            let reservation = Arc::clone(&reservation);
            Box::new(move |done| {
                if let Some(r) = reservation
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                {
                    // A lease that could not be renewed shows at the commit's cover.
                    let _ = r.renew_if_due_blocking();
                }
                if let Some(p) = &progress {
                    p(done);
                }
            })
        };
        let options = CopyOptions {
            no_replace: !replace,
            reserve,
            admit: Some(admit),
            placed: Some(placed),
            // The room was sized from the look above: a source changed since is refused.
            expect_size: Some(size),
            progress: Some(progress),
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
        };
        match copied {
            Ok(copied) => Ok(Some(copied)),
            Err(StorageError::QuotaExceeded) => {
                let refusal = refused.lock().unwrap_or_else(|p| p.into_inner()).take();
                Err(match refusal {
                    // The reservation before the copy: over a limit, said as such.
                    Some(refusal) => CoreError::refused(refusal, size),
                    // The commit's check of what the target takes then.
                    None => StorageError::QuotaExceeded.into(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use sha2::Digest;

    use super::*;
    use crate::domain::{Quota, Refused};
    use crate::service::quota::Account;
    use crate::storage::local::LocalStorage;
    use crate::storage::{Commit, SmallOptions, Storage};

    fn p(s: &str) -> RemotePath {
        RemotePath::parse(s).unwrap()
    }

    /// A home on a fresh temp dir whose account starts from a fresh count of it.
    async fn home(limits: Quota) -> (Home, Arc<Account>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(LocalStorage::open(&dir.path().join("home"), true).unwrap());
        let account = Arc::new(Account::default());
        let home = Home::new("alice", storage, Some(Arc::clone(&account)), limits);
        (home, account, dir)
    }

    async fn put(home: &Home, name: &str, data: &[u8]) {
        let commit = Commit::new(sha2::Sha256::digest(data).into(), false);
        let data = Bytes::copy_from_slice(data);
        let path = p(name);
        let r = home
            .storage
            .put_small(&path, data, SmallOptions::default(), commit);
        r.await.unwrap();
    }

    /// The account's used bytes and files, reservations included.
    async fn counted(a: &Account, limits: &Quota) -> Footprint {
        let u = a.usage(limits).await.unwrap();
        Footprint {
            bytes: u.used_bytes.unwrap(),
            files: u.used_files.unwrap(),
        }
    }

    /// Waits (a bounded while) until a fresh count of the home matches the account: a
    /// cancelled copy's temp goes a moment after the answer.
    async fn settles(home: &Home, a: &Account, limits: &Quota) {
        let mut fresh = Footprint::NONE;
        for _ in 0..100 {
            fresh = home.storage.usage(Duration::from_secs(5)).await.unwrap();
            if fresh == counted(a, limits).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "counted {:?}, a fresh count {fresh:?}",
            counted(a, limits).await
        );
    }

    async fn copy(
        home: &Home,
        from: &str,
        to: &str,
        replace: bool,
    ) -> Result<Option<Copied>, CoreError> {
        let cancel = CancellationToken::new();
        home.copy(&p(from), &p(to), replace, None, cancel).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_copy_over_the_quota_is_refused_and_the_counts_stay_true() {
        let limits = Quota {
            bytes: Some(1000),
            files: Some(3),
            max_file_size: Some(700),
        };
        let (home, account, _dir) = home(limits).await;
        put(&home, "a", &[7u8; 600]).await;
        let used = home.storage.usage(Duration::from_secs(5)).await.unwrap();
        account.adjust(used, Footprint::NONE).await;
        settles(&home, &account, &limits).await;

        // 600 more bytes do not fit in 1000.
        match copy(&home, "a", "b", false).await {
            Err(CoreError::Refused {
                refused: Refused::Quota("byte quota"),
                size: 600,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(home.stat(&p("b")).await.is_err());
        settles(&home, &account, &limits).await;

        // Onto itself: it replaces what it adds, so it fits, and changes nothing.
        let copied = copy(&home, "a", "a", true).await.unwrap().unwrap();
        assert_eq!(copied.size, 600);
        assert_eq!(
            copied.replaced,
            Footprint {
                bytes: 600,
                files: 1
            }
        );
        settles(&home, &account, &limits).await;

        // A small one fits; replacing it by a larger one that does not fit is refused.
        put(&home, "s", b"small").await;
        account
            .adjust(Footprint { bytes: 5, files: 1 }, Footprint::NONE)
            .await;
        copy(&home, "s", "t", false).await.unwrap().unwrap();
        settles(&home, &account, &limits).await;
        assert!(matches!(
            copy(&home, "a", "t", true).await,
            Err(CoreError::Refused { .. })
        ));
        // Without `replace`, an existing target is refused before the quota is asked.
        assert!(matches!(
            copy(&home, "a", "t", false).await,
            Err(CoreError::Storage(StorageError::AlreadyExists))
        ));
        // A file too large for the user's maximum.
        put(&home, "big", &[1u8; 800]).await;
        account
            .adjust(
                Footprint {
                    bytes: 800,
                    files: 1,
                },
                Footprint::NONE,
            )
            .await;
        assert!(matches!(
            copy(&home, "big", "big2", false).await,
            Err(CoreError::Refused {
                refused: Refused::TooLarge(700),
                ..
            })
        ));
        settles(&home, &account, &limits).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_copy_leaves_nothing_and_gives_its_room_back() {
        let limits = Quota {
            bytes: Some(100_000_000),
            files: Some(10),
            max_file_size: None,
        };
        let (home, account, dir) = home(limits).await;
        let data = vec![5u8; 40 * 1024 * 1024];
        std::fs::write(dir.path().join("home/big"), &data).unwrap();
        let used = home.storage.usage(Duration::from_secs(5)).await.unwrap();
        account.adjust(used, Footprint::NONE).await;
        let cancel = CancellationToken::new();
        let (big, target) = (p("big"), p("copy"));
        let work = home.copy(&big, &target, false, None, cancel.clone());
        let stop = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            cancel.cancel();
        };
        let (copied, ()) = tokio::join!(work, stop);
        match copied.unwrap() {
            // Cancelled in time: nothing lands.
            None => assert!(home.stat(&p("copy")).await.is_err()),
            // The commit had begun: it landed whole, and is counted.
            Some(c) => assert_eq!(c.size, data.len() as u64),
        }
        settles(&home, &account, &limits).await;

        // Dropping the call cancels it too.
        let cancel = CancellationToken::new();
        let target = p("dropped");
        let work = home.copy(&big, &target, false, None, cancel);
        let _ = tokio::time::timeout(Duration::from_millis(5), work).await;
        settles(&home, &account, &limits).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sha256_hashes_a_file_without_a_record_and_trusts_one_that_matches() {
        let (home, _account, dir) = home(Quota::default()).await;
        let by_hand = vec![3u8; 300_000];
        std::fs::write(dir.path().join("home/hand"), &by_hand).unwrap();
        let (size, d) = home.sha256(&p("hand"), |_| {}).await.unwrap();
        assert_eq!((size, d), (300_000, sha2::Sha256::digest(&by_hand).into()));
        put(&home, "put", b"committed").await;
        let (size, d) = home.sha256(&p("put"), |_| {}).await.unwrap();
        assert_eq!((size, d), (9, sha2::Sha256::digest(b"committed").into()));
        assert!(matches!(
            home.sha256(&p("/"), |_| {}).await,
            Err(CoreError::Storage(StorageError::IsADirectory))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resume_past_the_end_says_how_long_the_file_is() {
        let (home, _account, _dir) = home(Quota::default()).await;
        put(&home, "f", b"0123456789").await;
        match home.open_download(&p("f"), 11, Some([0; 32])).await {
            Ok(Opened::BeyondEnd { size: 10 }) => {}
            other => panic!("{other:?}"),
        }
        // At the end exactly: nothing to send, the whole file's digest.
        let prefix: Sha256Digest = sha2::Sha256::digest(b"0123456789").into();
        let Ok(Opened::Download(mut d)) = home.open_download(&p("f"), 10, Some(prefix)).await
        else {
            panic!("no download");
        };
        assert_eq!(
            d.next().await.unwrap(),
            ReadEvent::End {
                sha256: Some(prefix)
            }
        );
        // A prefix that differs is refused with the server's digest of it.
        let Ok(Opened::Download(mut d)) = home.open_download(&p("f"), 4, Some([0; 32])).await
        else {
            panic!("no download");
        };
        let actual: Sha256Digest = sha2::Sha256::digest(b"0123").into();
        assert_eq!(
            d.next().await.unwrap(),
            ReadEvent::PrefixMismatch { actual }
        );
    }
}
