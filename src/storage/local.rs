//! [`Storage`] on the local file system, on top of [`Jail`] and [`TempFile`], which keep every
//! safety property: paths resolved by the kernel beneath the home (RESOLVE_BENEATH), uploads in
//! an exclusive temp beside the target, data and directory fsynced before a commit returns,
//! `RENAME_NOREPLACE` for no-replace, fsync errors that stick. Everything that touches the
//! file system runs on the blocking pool; a streamed upload or download has its own thread
//! that writes (or reads) and hashes while the caller does the network side.
//!
//! Batched durability is today's group commit: a small staged upload is written but neither
//! fsynced nor renamed; [`LocalStorage::flush_durability`] runs one `syncfs` for all of them,
//! renames each into place and fsyncs each directory once. A large one (over
//! [`GROUP_COMMIT_SMALL`]) is fsynced and renamed at its commit; only its directory fsync
//! joins the batch.
//!
//! A rename here is atomic (`renameat2`); no-replace holds even under a race, by the kernel.
//!
//! Each commit records the file's digest in the file itself ([`crate::stored_digest`]). A
//! read ([`Storage::open_read`], [`Storage::get_small`]) looks it up on the file it opened (one
//! `fgetxattr`) and, while it still describes the file, sends the bytes after any prefix
//! unhashed and ends with it; [`Storage::stat`] does not look (a listing or stat should not
//! pay a system call per name for it), so its [`Stat::sha256`] is always `None`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{
    Admit, BoxFuture, Commit, Committed, Copied, CopyOptions, Download, Durability, Fetched,
    LIST_PAGE_MAX, Landed, ListPage, ListToken, PartialKey, ReadEvent, ReadOptions, Resume,
    SMALL_MAX, Sha256Digest, SmallOptions, SmallPut, Space, Staged, Stat, Storage, Upload,
    UploadOptions,
};
use crate::direct::DirectLimit;
use crate::domain::{Entry, EntryKind, Footprint};
use crate::jail::{Jail, RemotePath, Stop, StorageError, TempFile, UnsyncedDir};
use crate::transfer::{CHANNEL_DEPTH, PROGRESS_INTERVAL, Receiving, hash_prefix};

/// Uploads up to this size skip their own fsync when their commit is batched: the flush's
/// `syncfs` covers them. A larger one is fsynced by its writer as it ends.
pub const GROUP_COMMIT_SMALL: u64 = 1024 * 1024;

/// Bytes per read of a download or copy: the size of a ferry/1 data frame, so a chunk goes
/// out whole, and large enough that a read costs little per byte.
const READ_CHUNK_LEN: usize = 256 * 1024;

/// Chunks between the caller and an upload's writer thread.
const WRITER_DEPTH: usize = 4;

/// A home on the local file system.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    jail: Arc<Jail>,
    /// Counts the uploads written around the page cache (one limit per server, shared by
    /// the homes it opens).
    direct: Arc<DirectLimit>,
}

impl LocalStorage {
    /// Wraps an opened home (shared with whatever else still uses the jail directly), with a
    /// direct-I/O limit of its own.
    pub fn new(jail: Arc<Jail>) -> LocalStorage {
        LocalStorage::with_direct_limit(jail, Arc::new(DirectLimit::new()))
    }

    /// Like [`LocalStorage::new`], counting direct-I/O uploads in `direct` (the server's).
    pub fn with_direct_limit(jail: Arc<Jail>, direct: Arc<DirectLimit>) -> LocalStorage {
        LocalStorage { jail, direct }
    }

    /// Opens the home at `home` (creating it, mode 0700, with `create`).
    pub fn open(home: &std::path::Path, create: bool) -> Result<LocalStorage, StorageError> {
        Ok(LocalStorage::new(Arc::new(Jail::open(home, create)?)))
    }

    /// The jail underneath, for the parts of the server not yet moved onto the trait.
    pub fn jail(&self) -> &Arc<Jail> {
        &self.jail
    }

    /// Runs `f` with the jail on the blocking pool.
    fn run<T, F>(&self, f: F) -> BoxFuture<'static, Result<T, StorageError>>
    where
        T: Send + 'static,
        F: FnOnce(&Jail) -> Result<T, StorageError> + Send + 'static,
    {
        let jail = Arc::clone(&self.jail);
        Box::pin(blocking(move || f(&jail)))
    }
}

/// Runs blocking file system work on the blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(join) => Err(StorageError::Io(std::io::Error::other(join.to_string()))),
    }
}

fn stat_of(entry: Entry) -> Stat {
    Stat {
        entry,
        sha256: None,
    }
}

/// Opens a file for reading with its stored digest, looked up before any byte is read: what
/// is sent is then checked (by the reader's peer) against the file as it was committed.
fn open_with_digest(jail: &Jail, path: &RemotePath) -> Result<(std::fs::File, Stat), StorageError> {
    let (file, entry, state) = jail.open_read_state(path)?;
    let sha256 = crate::stored_digest::lookup_digest(&file, &state);
    Ok((file, Stat { entry, sha256 }))
}

fn digest_of(hex_text: &str) -> Result<Sha256Digest, StorageError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out)
        .map_err(|_| StorageError::Io(std::io::Error::other("bad digest from the writer")))?;
    Ok(out)
}

/// Fail-fast checks of an upload's target, as the commit will find it: a directory is
/// `IsADirectory`, an existing name with `no_replace` `AlreadyExists`. Returns what it takes.
fn check_target(
    jail: &Jail,
    target: &RemotePath,
    no_replace: bool,
) -> Result<Footprint, StorageError> {
    if target.is_root() {
        return Err(StorageError::IsADirectory);
    }
    Ok(match jail.lstat(target) {
        Ok(e) if e.kind == EntryKind::Dir => return Err(StorageError::IsADirectory),
        Ok(_) if no_replace => return Err(StorageError::AlreadyExists),
        Ok(e) if e.kind == EntryKind::File => Footprint {
            bytes: e.size,
            files: 1,
        },
        Ok(_) | Err(StorageError::NotFound) => Footprint::NONE,
        Err(e) => return Err(e),
    })
}

/// A staged commit of this store.
enum LocalStaged {
    /// Written, not fsynced, not in place: the flush's `syncfs` covers the data, then it is
    /// renamed and its directory fsynced.
    Written {
        jail: Arc<Jail>,
        temp: TempFile,
        no_replace: bool,
        admit: Option<Admit>,
    },
    /// Fsynced and in place; its directory still needs an fsync.
    Renamed {
        jail: Arc<Jail>,
        dir: UnsyncedDir,
        replaced: Footprint,
    },
}

impl LocalStaged {
    fn jail(&self) -> &Arc<Jail> {
        match self {
            LocalStaged::Written { jail, .. } | LocalStaged::Renamed { jail, .. } => jail,
        }
    }
}

/// Commits a temp whose digest is `actual`, in the blocking pool's thread.
fn land(
    jail: &Arc<Jail>,
    temp: TempFile,
    actual: Sha256Digest,
    commit: Commit,
    fsynced: bool,
) -> Result<Landed, StorageError> {
    if actual != commit.sha256 {
        temp.discard();
        return Ok(Landed::Mismatch { actual });
    }
    let mut temp = temp;
    if !fsynced {
        // Recorded now, before the fsync or the group commit's syncfs that makes it durable
        // with the data (a writer that fsynced recorded it before its fsync).
        temp.record_sha256(&crate::domain::hex_digest(&actual));
    }
    let overwrite = !commit.no_replace;
    let admit = commit.admit;
    let admit = move |replaced| admit.map_or(Ok(()), |a| a(replaced));
    match commit.durability {
        Durability::Now => {
            // Fsyncs the data first unless the writer did.
            let (dir, replaced) = temp.rename_into_place_if(overwrite, admit)?;
            dir.sync()?;
            Ok(Landed::Committed(Committed { replaced }))
        }
        Durability::Batched if fsynced => {
            let (dir, replaced) = temp.rename_into_place_if(overwrite, admit)?;
            Ok(Landed::Staged(Staged::new(LocalStaged::Renamed {
                jail: Arc::clone(jail),
                dir,
                replaced,
            })))
        }
        Durability::Batched => Ok(Landed::Staged(Staged::new(LocalStaged::Written {
            jail: Arc::clone(jail),
            temp,
            no_replace: !overwrite,
            admit: Some(Box::new(admit)),
        }))),
    }
}

/// The group commit (blocking): one `syncfs` if any file still needs its data flushed, then
/// each such file renamed into place, then each directory fsynced once. One result per input.
fn flush(jail: &Arc<Jail>, staged: Vec<Staged>) -> Vec<Result<Committed, StorageError>> {
    let records: Vec<Result<LocalStaged, StorageError>> = staged
        .into_iter()
        .map(|s| match s.downcast::<LocalStaged>() {
            Ok(r) if Arc::ptr_eq(r.jail(), jail) => Ok(r),
            _ => Err(StorageError::InvalidArgument),
        })
        .collect();
    let needs_sync = records
        .iter()
        .any(|r| matches!(r, Ok(LocalStaged::Written { .. })));
    let flushed = if needs_sync {
        jail.sync_filesystem().map_err(|e| e.to_string())
    } else {
        Ok(())
    };
    let placed: Vec<Result<(UnsyncedDir, Footprint), StorageError>> = records
        .into_iter()
        .map(|r| match r? {
            LocalStaged::Renamed { dir, replaced, .. } => Ok((dir, replaced)),
            LocalStaged::Written {
                mut temp,
                no_replace,
                admit,
                ..
            } => match &flushed {
                Ok(()) => {
                    temp.mark_synced();
                    temp.rename_into_place_if(!no_replace, |replaced| {
                        admit.map_or(Ok(()), |a| a(replaced))
                    })
                }
                // The data may be lost: drop the file (removes the temp).
                Err(e) => Err(StorageError::Io(std::io::Error::other(e.clone()))),
            },
        })
        .collect();
    let dirs: Vec<&UnsyncedDir> = placed
        .iter()
        .filter_map(|p| p.as_ref().ok().map(|(d, _)| d))
        .collect();
    let mut synced = UnsyncedDir::sync_all(&dirs).into_iter();
    placed
        .into_iter()
        .map(|p| {
            let (_, replaced) = p?;
            synced.next().unwrap_or(Ok(()))?;
            Ok(Committed { replaced })
        })
        .collect()
}

impl Storage for LocalStorage {
    fn stat<'a>(&'a self, path: &'a RemotePath) -> BoxFuture<'a, Result<Stat, StorageError>> {
        let path = path.clone();
        self.run(move |jail| jail.stat(&path).map(stat_of))
    }

    fn list<'a>(
        &'a self,
        path: &'a RemotePath,
        after: Option<&'a ListToken>,
        max: usize,
    ) -> BoxFuture<'a, Result<ListPage, StorageError>> {
        let path = path.clone();
        // The token is the hex of the last name given: opaque, and harmless whatever comes back.
        let after = match after.map(|t| hex::decode(t.as_str()).map(String::from_utf8)) {
            None => None,
            Some(Ok(Ok(name))) => Some(name),
            Some(_) => return Box::pin(async { Err(StorageError::InvalidArgument) }),
        };
        let max = max.clamp(1, LIST_PAGE_MAX);
        self.run(move |jail| {
            let (entries, next) = jail.list_page(&path, after.as_deref(), max)?;
            Ok(ListPage {
                entries,
                next: next.map(|n| ListToken::from_string(hex::encode(n))),
            })
        })
    }

    fn mkdir<'a>(&'a self, path: &'a RemotePath) -> BoxFuture<'a, Result<(), StorageError>> {
        let path = path.clone();
        self.run(move |jail| jail.mkdir(&path))
    }

    fn remove_file<'a>(
        &'a self,
        path: &'a RemotePath,
    ) -> BoxFuture<'a, Result<Footprint, StorageError>> {
        let path = path.clone();
        self.run(move |jail| jail.remove_file(&path))
    }

    fn remove_dir<'a>(
        &'a self,
        path: &'a RemotePath,
    ) -> BoxFuture<'a, Result<Footprint, StorageError>> {
        let path = path.clone();
        self.run(move |jail| jail.remove_dir(&path))
    }

    fn rename<'a>(
        &'a self,
        from: &'a RemotePath,
        to: &'a RemotePath,
        no_replace: bool,
    ) -> BoxFuture<'a, Result<Footprint, StorageError>> {
        let (from, to) = (from.clone(), to.clone());
        self.run(move |jail| jail.rename(&from, &to, !no_replace))
    }

    fn copy<'a>(
        &'a self,
        from: &'a RemotePath,
        to: &'a RemotePath,
        options: CopyOptions,
    ) -> BoxFuture<'a, Result<Copied, StorageError>> {
        let (from, to) = (from.clone(), to.clone());
        let cancel = CancelOnDrop::default();
        let stop = Arc::clone(&cancel.0);
        let work = self.run(move |jail| copy_file(jail, &from, &to, options, &stop));
        Box::pin(async move {
            let _cancel = cancel;
            work.await
        })
    }

    fn open_read<'a>(
        &'a self,
        path: &'a RemotePath,
        options: ReadOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Download>, StorageError>> {
        let path = path.clone();
        // The reader starts at the first `next`: the download is made where the file opens.
        self.run(move |jail| {
            let (file, stat) = open_with_digest(jail, &path)?;
            LocalDownload::start(file, stat, options).map(|d| Box::new(d) as Box<dyn Download>)
        })
    }

    fn get_small<'a>(
        &'a self,
        path: &'a RemotePath,
        max: u64,
    ) -> BoxFuture<'a, Result<Fetched, StorageError>> {
        let path = path.clone();
        let max = max.min(SMALL_MAX);
        // One blocking call, whatever it finds (the reader of a larger file starts later).
        self.run(move |jail| {
            let (file, stat) = open_with_digest(jail, &path)?;
            let size = stat.entry.size;
            if size > max {
                let options = ReadOptions {
                    hash: true,
                    ..ReadOptions::default()
                };
                let download = LocalDownload::start(file, stat, options)?;
                return Ok(Fetched::Larger(Box::new(download)));
            }
            // Bounded by `max`; more than `size` is not read even if the file grew.
            let mut data = Vec::with_capacity(size as usize);
            (&file).take(size).read_to_end(&mut data)?;
            if (data.len() as u64) < size {
                return Ok(Fetched::Changed);
            }
            let sha256 = stat.sha256.unwrap_or_else(|| Sha256::digest(&data).into());
            Ok(Fetched::Whole {
                stat,
                data: Bytes::from(data),
                sha256,
            })
        })
    }

    fn begin_upload<'a>(
        &'a self,
        path: &'a RemotePath,
        options: UploadOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Upload>, StorageError>> {
        let path = path.clone();
        let jail = Arc::clone(&self.jail);
        let limit = Arc::clone(&self.direct);
        let size_hint = options.size_hint;
        let prepared = self.run(move |jail| {
            let replaces = check_target(jail, &path, options.no_replace)?;
            let superseded = match &options.supersede {
                Some(key) => jail.remove_superseded_partial(key.as_str())?,
                None => None,
            };
            Ok((jail.create_temp(&path)?, replaces, superseded))
        });
        Box::pin(async move {
            let (temp, replaces, superseded) = prepared.await?;
            let upload =
                LocalUpload::start(jail, temp, Sha256::new(), 0, size_hint, replaces, &limit);
            Ok(Box::new(LocalUpload {
                superseded,
                ..upload
            }) as Box<dyn Upload>)
        })
    }

    fn resume_upload<'a>(
        &'a self,
        key: &'a PartialKey,
        path: &'a RemotePath,
        offset: u64,
        prefix: Sha256Digest,
        size_hint: Option<u64>,
    ) -> BoxFuture<'a, Result<Resume, StorageError>> {
        let (key, path) = (key.clone(), path.clone());
        let jail = Arc::clone(&self.jail);
        let limit = Arc::clone(&self.direct);
        let taken = self.run(move |jail| {
            let replaces = check_target(jail, &path, false)?;
            let Some(kept) = jail.partial_size(key.as_str())? else {
                return Ok(Err(Resume::NoPartial));
            };
            if kept < offset {
                return Ok(Err(Resume::Short { kept }));
            }
            let mut temp = match jail.take_partial(key.as_str(), &path) {
                Ok(t) => t,
                Err(StorageError::NotFound) => return Ok(Err(Resume::NoPartial)),
                Err(e) => return Err(e),
            };
            let mut hasher = Sha256::new();
            let file = temp.file();
            file.seek(SeekFrom::Start(0))?;
            hash_prefix(file, offset, &mut hasher, |_| {})?;
            let actual: Sha256Digest = hasher.clone().finalize().into();
            if actual != prefix {
                // Back as it was, for a later try (or a fresh upload that supersedes it).
                temp.keep_as_partial(jail, key.as_str())?;
                return Ok(Err(Resume::Mismatch { actual }));
            }
            let file = temp.file();
            file.set_len(offset)?;
            file.seek(SeekFrom::Start(offset))?;
            Ok(Ok((temp, hasher, replaces)))
        });
        Box::pin(async move {
            Ok(match taken.await? {
                Err(resume) => resume,
                Ok((temp, hasher, replaces)) => Resume::Ready(Box::new(LocalUpload::start(
                    jail, temp, hasher, offset, size_hint, replaces, &limit,
                ))),
            })
        })
    }

    fn partial_len<'a>(
        &'a self,
        key: &'a PartialKey,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        let key = key.clone();
        self.run(move |jail| jail.partial_size(key.as_str()))
    }

    fn remove_partial<'a>(
        &'a self,
        key: &'a PartialKey,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        let key = key.clone();
        self.run(move |jail| jail.remove_partial(key.as_str()))
    }

    fn put_small<'a>(
        &'a self,
        path: &'a RemotePath,
        data: Bytes,
        options: SmallOptions,
        commit: Commit,
    ) -> BoxFuture<'a, Result<SmallPut, StorageError>> {
        if data.len() as u64 > SMALL_MAX {
            return Box::pin(async { Err(StorageError::InvalidArgument) });
        }
        let path = path.clone();
        let jail = Arc::clone(&self.jail);
        self.run(move |_| {
            let replaces = check_target(&jail, &path, commit.no_replace)?;
            let superseded = match &options.supersede {
                Some(key) => jail.remove_superseded_partial(key.as_str())?,
                None => None,
            };
            if let Some(reserve) = options.reserve {
                reserve(replaces, superseded)?;
            }
            let actual: Sha256Digest = Sha256::digest(&data).into();
            if actual != commit.sha256 {
                return Ok(SmallPut {
                    landed: Landed::Mismatch { actual },
                    superseded,
                    replaces,
                });
            }
            let mut temp = jail.create_temp(&path)?;
            temp.file().write_all(&data)?;
            let landed = land(&jail, temp, actual, commit, false)?;
            Ok(SmallPut {
                landed,
                superseded,
                replaces,
            })
        })
    }

    fn sweep_partials(
        &self,
        max_age: std::time::Duration,
    ) -> BoxFuture<'_, Result<Footprint, StorageError>> {
        self.run(move |jail| jail.sweep_partials(max_age))
    }

    fn usage(&self, limit: std::time::Duration) -> BoxFuture<'_, Result<Footprint, StorageError>> {
        let stop = Stop::after(limit);
        // Dropping the future stops the walk.
        let raise = RaiseOnDrop(stop.clone());
        let walk = self.run(move |jail| jail.usage_walk(&stop));
        Box::pin(async move {
            let _raise = raise;
            walk.await
        })
    }

    fn space(&self) -> BoxFuture<'_, Result<Option<Space>, StorageError>> {
        self.run(|jail| {
            let (free, total) = jail.disk_space()?;
            Ok(Some(Space { free, total }))
        })
    }

    fn flush_durability(
        &self,
        staged: Vec<Staged>,
    ) -> BoxFuture<'_, Vec<Result<Committed, StorageError>>> {
        let jail = Arc::clone(&self.jail);
        let n = staged.len();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || flush(&jail, staged)).await {
                Ok(results) => results,
                Err(e) => (0..n)
                    .map(|_| Err(StorageError::Io(std::io::Error::other(e.to_string()))))
                    .collect(),
            }
        })
    }
}

/// Raises its flag when dropped: the blocking half of a cancelled future sees it and stops.
#[derive(Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Stops a walk when dropped.
struct RaiseOnDrop(Stop);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.raise();
    }
}

/// A server-side copy, committed like an upload: exactly the source's size at the open,
/// hashed, into a temp beside the target, fsynced, renamed, directory fsynced.
fn copy_file(
    jail: &Jail,
    from: &RemotePath,
    to: &RemotePath,
    options: CopyOptions,
    stop: &AtomicBool,
) -> Result<Copied, StorageError> {
    let (mut file, entry) = jail.open_read(from)?;
    check_target(jail, to, options.no_replace)?;
    let mut temp = jail.create_temp(to)?;
    let size = entry.size;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; READ_CHUNK_LEN];
    let mut done = 0u64;
    let mut last = std::time::Instant::now();
    while done < size {
        if stop.load(Ordering::Relaxed) {
            // Dropping the temp removes it.
            return Err(StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "copy cancelled",
            )));
        }
        let want = (size - done).min(buf.len() as u64) as usize;
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        temp.file().write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        done += n as u64;
        if let Some(progress) = &options.progress
            && last.elapsed() >= PROGRESS_INTERVAL
        {
            progress(done);
            last = std::time::Instant::now();
        }
    }
    let sha256: Sha256Digest = hasher.finalize().into();
    // Recorded before the fsync, so it is durable with the copy.
    temp.record_sha256(&crate::domain::hex_digest(&sha256));
    temp.sync()?;
    let admit = options.admit;
    let (dir, replaced) =
        temp.rename_into_place_if(!options.no_replace, |r| admit.map_or(Ok(()), |a| a(r)))?;
    dir.sync()?;
    Ok(Copied {
        size,
        sha256: Some(sha256),
        replaced,
    })
}

/// What the writer thread is told.
enum ToWriter {
    Data(Bytes),
    /// All data arrived: write it out, fsync if asked, hand the temp back with the digest.
    Finish,
}

/// How the writer thread ended.
enum Written {
    Finished(TempFile, Sha256Digest),
    /// The data stopped without `Finish`: the temp holds everything received.
    Interrupted(TempFile),
    /// Writing or syncing failed; the temp is already removed.
    Failed(StorageError),
}

/// Where an upload stands.
enum State {
    /// A small upload's bytes, collected for one write at `finish`.
    Memory {
        temp: TempFile,
        hasher: Sha256,
        data: Vec<u8>,
    },
    /// A writer on the blocking pool: writing and hashing overlap with the caller's reads.
    Thread {
        tx: mpsc::Sender<ToWriter>,
        writer: tokio::task::JoinHandle<Written>,
    },
    /// All data written; fsynced already if `fsynced`.
    Finished {
        temp: TempFile,
        digest: Sha256Digest,
        fsynced: bool,
    },
    /// Failed or handed on; nothing left.
    Gone,
}

/// An upload into a temp file of a [`LocalStorage`].
struct LocalUpload {
    jail: Arc<Jail>,
    state: State,
    written: u64,
    /// Whether the writer fsyncs as the data ends (files too large for a group commit).
    fsync_in_writer: bool,
    /// Direct I/O for a large fresh upload, counted in this limit (see [`crate::direct`]).
    direct: Option<Arc<DirectLimit>>,
    replaces: Footprint,
    superseded: Option<u64>,
}

impl LocalUpload {
    /// An upload into `temp`, which already holds `offset` bytes covered by `hasher`.
    fn start(
        jail: Arc<Jail>,
        temp: TempFile,
        hasher: Sha256,
        offset: u64,
        size_hint: Option<u64>,
        replaces: Footprint,
        limit: &Arc<DirectLimit>,
    ) -> LocalUpload {
        let rest = size_hint.map(|s| s.saturating_sub(offset));
        let fsync_in_writer = size_hint.is_none_or(|s| s > GROUP_COMMIT_SMALL);
        let direct = (offset == 0 && size_hint.is_some_and(|s| s >= crate::direct::MIN_SIZE))
            .then(|| Arc::clone(limit));
        let mut upload = LocalUpload {
            jail,
            state: State::Gone,
            written: offset,
            fsync_in_writer,
            direct,
            replaces,
            superseded: None,
        };
        upload.state = match rest {
            Some(rest) if rest <= SMALL_MAX && !fsync_in_writer => State::Memory {
                temp,
                hasher,
                data: Vec::with_capacity(rest as usize),
            },
            _ => upload.spawn_writer(temp, hasher, None),
        };
        upload
    }

    fn spawn_writer(&self, temp: TempFile, hasher: Sha256, first: Option<Vec<u8>>) -> State {
        let (tx, rx) = mpsc::channel::<ToWriter>(WRITER_DEPTH);
        let (fsync, direct) = (self.fsync_in_writer, self.direct.clone());
        let writer = tokio::task::spawn_blocking(move || {
            write_and_hash(temp, hasher, first, rx, fsync, direct)
        });
        State::Thread { tx, writer }
    }

    /// Ends the data; with `finish`, everything is written and hashed (`Finished`), without,
    /// the temp comes back holding every byte received (`Interrupted`).
    async fn end(&mut self, finish: bool) -> Written {
        match std::mem::replace(&mut self.state, State::Gone) {
            State::Thread { tx, writer } => {
                let finished = finish && tx.send(ToWriter::Finish).await.is_ok();
                drop(tx);
                match writer.await {
                    Ok(w @ Written::Finished(..)) if finished => w,
                    Ok(Written::Finished(..)) => Written::Failed(writer_gone()),
                    Ok(w) => w,
                    Err(e) => {
                        Written::Failed(StorageError::Io(std::io::Error::other(e.to_string())))
                    }
                }
            }
            State::Memory {
                mut temp,
                mut hasher,
                data,
            } => {
                let done = tokio::task::spawn_blocking(move || {
                    if let Err(e) = temp.file().write_all(&data) {
                        temp.discard();
                        return Written::Failed(e.into());
                    }
                    if !finish {
                        return Written::Interrupted(temp);
                    }
                    hasher.update(&data);
                    Written::Finished(temp, hasher.finalize().into())
                })
                .await;
                done.unwrap_or_else(|e| {
                    Written::Failed(StorageError::Io(std::io::Error::other(e.to_string())))
                })
            }
            State::Finished { temp, .. } if !finish => Written::Interrupted(temp),
            State::Finished {
                temp,
                digest,
                fsynced,
            } => {
                self.state = State::Finished {
                    temp,
                    digest,
                    fsynced,
                };
                Written::Failed(StorageError::InvalidArgument)
            }
            State::Gone => Written::Failed(writer_gone()),
        }
    }
}

fn writer_gone() -> StorageError {
    StorageError::Io(std::io::Error::other("upload writer ended early"))
}

impl Upload for LocalUpload {
    fn written(&self) -> u64 {
        self.written
    }

    fn replaces(&self) -> Footprint {
        self.replaces
    }

    fn superseded(&self) -> Option<u64> {
        self.superseded
    }

    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            let n = chunk.len() as u64;
            match &mut self.state {
                State::Memory { data, .. } if data.len() as u64 + n <= SMALL_MAX => {
                    data.extend_from_slice(&chunk);
                }
                State::Memory { .. } => {
                    // Larger than announced: go on through a writer thread.
                    let State::Memory { temp, hasher, data } =
                        std::mem::replace(&mut self.state, State::Gone)
                    else {
                        return Err(writer_gone());
                    };
                    let mut hasher = hasher;
                    hasher.update(&data);
                    self.state = self.spawn_writer(temp, hasher, Some(data));
                    return self.write(chunk).await;
                }
                State::Thread { tx, .. } => {
                    if tx.send(ToWriter::Data(chunk)).await.is_err() {
                        // The writer stopped on an error: that error is the answer.
                        return Err(match self.end(false).await {
                            Written::Failed(e) => e,
                            _ => writer_gone(),
                        });
                    }
                }
                State::Finished { .. } => return Err(StorageError::InvalidArgument),
                State::Gone => return Err(writer_gone()),
            }
            self.written += n;
            Ok(())
        })
    }

    fn finish(&mut self) -> BoxFuture<'_, Result<Sha256Digest, StorageError>> {
        Box::pin(async move {
            let fsynced = self.fsync_in_writer && matches!(self.state, State::Thread { .. });
            match self.end(true).await {
                Written::Finished(temp, digest) => {
                    self.state = State::Finished {
                        temp,
                        digest,
                        fsynced,
                    };
                    Ok(digest)
                }
                Written::Failed(e) => Err(e),
                Written::Interrupted(_) => Err(writer_gone()),
            }
        })
    }

    fn commit(self: Box<Self>, commit: Commit) -> BoxFuture<'static, Result<Landed, StorageError>> {
        let LocalUpload { jail, state, .. } = *self;
        Box::pin(async move {
            let State::Finished {
                temp,
                digest,
                fsynced,
            } = state
            else {
                return Err(StorageError::InvalidArgument);
            };
            blocking(move || land(&jail, temp, digest, commit, fsynced)).await
        })
    }

    fn keep_partial(
        mut self: Box<Self>,
        key: PartialKey,
    ) -> BoxFuture<'static, Result<Footprint, StorageError>> {
        Box::pin(async move {
            let temp = match self.end(false).await {
                Written::Interrupted(temp) => temp,
                Written::Failed(e) => return Err(e),
                Written::Finished(..) => return Err(writer_gone()),
            };
            let jail = Arc::clone(&self.jail);
            blocking(move || temp.keep_as_partial(&jail, key.as_str())).await
        })
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let state = std::mem::replace(&mut self.state, State::Gone);
            let _ = blocking(move || {
                // Dropping the temp (or the writer's channel) removes the file.
                drop(state);
                Ok(())
            })
            .await;
        })
    }
}

/// Writes and hashes until `Finish`, then fsyncs if asked. If the channel closes without
/// `Finish`, the temp goes back to the caller, holding everything received.
fn write_and_hash(
    mut temp: TempFile,
    hasher: Sha256,
    first: Option<Vec<u8>>,
    mut rx: mpsc::Receiver<ToWriter>,
    fsync: bool,
    direct: Option<Arc<DirectLimit>>,
) -> Written {
    // `first` (bytes collected in memory before the writer started) is already in `hasher`:
    // it goes in before the receiving starts, which continues the hash from there.
    if let Some(first) = first
        && let Err(e) = temp.file().write_all(&first)
    {
        temp.discard();
        return Written::Failed(e.into());
    }
    let mut receiving = Receiving::start(temp.file(), hasher, direct.as_ref());
    let finished = loop {
        match rx.blocking_recv() {
            Some(ToWriter::Data(bytes)) => {
                if let Err(e) = receiving.write(temp.file(), &bytes) {
                    drop(receiving);
                    temp.discard();
                    return Written::Failed(e.into());
                }
            }
            Some(ToWriter::Finish) => break true,
            None => break false,
        }
    };
    // Everything received is in the file before it is fsynced, committed or kept.
    let digest = match receiving.finish(temp.file(), finished) {
        Ok(hex_text) => digest_of(&hex_text),
        Err(e) => Err(e.into()),
    };
    let digest = match digest {
        Ok(d) => d,
        Err(e) => {
            temp.discard();
            return Written::Failed(e);
        }
    };
    if !finished {
        return Written::Interrupted(temp);
    }
    // The stored digest of what was written, before the fsync that makes it durable with the
    // data (a mismatch at the commit discards the file, record and all).
    if fsync {
        temp.record_sha256(&crate::domain::hex_digest(&digest));
    }
    // An fsync error is final (TempFile keeps it): the kernel reports it once.
    if fsync && let Err(e) = temp.sync() {
        return Written::Failed(e);
    }
    Written::Finished(temp, digest)
}

/// A range of a local file, read (and hashed) by a thread on the blocking pool. The thread
/// starts at the first [`Download::next`]: a caller that only wanted the stat (a stored
/// digest) reads nothing, and one that announces the transfer first does so before the disk
/// is busy.
struct LocalDownload {
    stat: Stat,
    /// The file and what to read of it, until the reader starts.
    pending: Option<(std::fs::File, Reading)>,
    rx: Option<mpsc::Receiver<Result<ReadEvent, StorageError>>>,
    done: bool,
}

/// What the reader thread does.
#[derive(Debug, Clone, Copy)]
struct Reading {
    offset: u64,
    len: u64,
    /// Hash from the start of the file.
    hash: bool,
    expect_prefix: Option<Sha256Digest>,
    /// The stored digest, when it covers what is to be hashed (the whole file): the bytes
    /// after the prefix need no hashing then.
    known: Option<Sha256Digest>,
}

impl LocalDownload {
    fn start(
        file: std::fs::File,
        stat: Stat,
        options: ReadOptions,
    ) -> Result<LocalDownload, StorageError> {
        let size = stat.entry.size;
        let offset = options.offset;
        let len = match options.len {
            None if offset <= size => size - offset,
            Some(len) if offset.checked_add(len).is_some_and(|end| end <= size) => len,
            _ => return Err(StorageError::InvalidArgument),
        };
        let hash = options.hash || options.expect_prefix.is_some();
        let known = stat.sha256.filter(|_| offset + len == size);
        let reading = Reading {
            offset,
            len,
            hash,
            expect_prefix: options.expect_prefix,
            known,
        };
        Ok(LocalDownload {
            stat,
            pending: Some((file, reading)),
            rx: None,
            done: false,
        })
    }
}

/// The reader thread: the prefix (hashed and checked if asked, with `Progress` now and then),
/// then the range in chunks, then the final event.
fn read_file(
    mut file: std::fs::File,
    r: Reading,
    tx: &mpsc::Sender<Result<ReadEvent, StorageError>>,
) -> Result<ReadEvent, StorageError> {
    // The prefix is hashed only to check it, or when there is no stored digest to end with.
    let hash_prefix_bytes = r.expect_prefix.is_some() || (r.hash && r.known.is_none());
    let mut hasher = Sha256::new();
    if hash_prefix_bytes {
        let progress = |n| {
            let _ = tx.blocking_send(Ok(ReadEvent::Progress(n)));
        };
        hash_prefix(&mut file, r.offset, &mut hasher, progress)?;
        if let Some(expected) = r.expect_prefix {
            let actual: Sha256Digest = hasher.clone().finalize().into();
            if actual != expected {
                return Ok(ReadEvent::PrefixMismatch { actual });
            }
        }
    } else {
        file.seek(SeekFrom::Start(r.offset))?;
    }
    let (hasher, known) = match (r.hash, r.known) {
        (false, _) => (None, None),
        (true, Some(known)) => (None, Some(known)),
        (true, None) => (Some(hasher), None),
    };
    Ok(match read_range(file, r.len, hasher, tx)? {
        ReadEvent::End { sha256: None } if known.is_some() => ReadEvent::End { sha256: known },
        event => event,
    })
}

/// Sends `len` bytes of `file` from its position in chunks; the final event is the `End`
/// (or the error) for the caller to send. A file that ends early is `UnexpectedEof`.
fn read_range(
    mut file: std::fs::File,
    len: u64,
    mut hasher: Option<Sha256>,
    tx: &mpsc::Sender<Result<ReadEvent, StorageError>>,
) -> Result<ReadEvent, StorageError> {
    let mut remaining = len;
    while remaining > 0 {
        let want = remaining.min(READ_CHUNK_LEN as u64);
        // read_to_end fills the spare capacity without zeroing it first.
        let mut buf = Vec::with_capacity(want as usize);
        let n = (&mut file).take(want).read_to_end(&mut buf)?;
        if (n as u64) < want {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&buf);
        }
        remaining -= want;
        if tx
            .blocking_send(Ok(ReadEvent::Data(Bytes::from(buf))))
            .is_err()
        {
            // The reader is gone; nobody hears the end.
            return Ok(ReadEvent::End { sha256: None });
        }
    }
    Ok(ReadEvent::End {
        sha256: hasher.map(|h| h.finalize().into()),
    })
}

impl Download for LocalDownload {
    fn stat(&self) -> &Stat {
        &self.stat
    }

    fn next(&mut self) -> BoxFuture<'_, Result<ReadEvent, StorageError>> {
        Box::pin(async move {
            if self.done {
                return Ok(ReadEvent::End { sha256: None });
            }
            if let Some((file, reading)) = self.pending.take() {
                let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
                tokio::task::spawn_blocking(move || {
                    let event = read_file(file, reading, &tx);
                    let _ = tx.blocking_send(event);
                });
                self.rx = Some(rx);
            }
            let received = match self.rx.as_mut() {
                Some(rx) => rx.recv().await,
                None => None,
            };
            let event = match received {
                Some(e) => e,
                None => Err(StorageError::Io(std::io::Error::other(
                    "file reader ended without a result",
                ))),
            };
            if !matches!(event, Ok(ReadEvent::Data(_) | ReadEvent::Progress(_))) {
                self.done = true;
            }
            event
        })
    }
}
