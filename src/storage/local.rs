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
//! A listing page starts where the last ended, at the file system's readdir position (see
//! [`crate::jail::DirReader`]), so listing a directory of n names costs O(n) in all and a
//! page O(page); the order is readdir's, not byte order.
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
    Admit, BoxFuture, ChangeGate, Commit, Committed, Copied, CopyOptions, Download, Durability,
    Fetched, LIST_PAGE_MAX, Landed, ListLimit, ListPage, ListToken, PartialKey, ReadEvent,
    ReadOptions, Resume, SMALL_MAX, Sha256Digest, SmallOptions, SmallPut, Space, Staged, Stat,
    Storage, Upload, UploadOptions,
};
use crate::direct::DirectLimit;
use crate::domain::{Entry, EntryKind, Footprint};
use crate::jail::{DirId, Jail, Listing, RemotePath, Stop, StorageError, TempFile, UnsyncedDir};
use crate::transfer::{CHANNEL_DEPTH, PROGRESS_INTERVAL, Receiving, hash_prefix};

pub use super::GROUP_COMMIT_SMALL;

/// Bytes per read of a download or copy: the size of a ferry/1 data frame, so a chunk goes
/// out whole, and large enough that a read costs little per byte.
const READ_CHUNK_LEN: usize = 256 * 1024;

/// Chunks between the caller and an upload's writer thread.
const WRITER_DEPTH: usize = 4;

/// A home on the local file system.
#[derive(Clone)]
pub struct LocalStorage {
    jail: Arc<Jail>,
    /// Counts the uploads written around the page cache (one limit per server, shared by
    /// the homes it opens).
    direct: Arc<DirectLimit>,
    /// Entered around every "measure, then change" step (see [`ChangeGate`]).
    gate: Gate,
}

impl std::fmt::Debug for LocalStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStorage")
            .field("jail", &self.jail)
            .field("gated", &self.gate.0.is_some())
            .finish_non_exhaustive()
    }
}

/// A store's change gate, if it was given one.
#[derive(Clone, Default)]
struct Gate(Option<Arc<dyn ChangeGate>>);

impl Gate {
    /// Enters the gate (blocking: call it on the blocking pool).
    fn enter(&self) -> Option<Box<dyn Send + '_>> {
        self.0.as_ref().map(|g| g.enter())
    }
}

impl LocalStorage {
    /// Wraps an opened home (shared with whatever else still uses the jail directly), with a
    /// direct-I/O limit of its own.
    pub fn new(jail: Arc<Jail>) -> LocalStorage {
        LocalStorage::with_direct_limit(jail, Arc::new(DirectLimit::new()))
    }

    /// Like [`LocalStorage::new`], counting direct-I/O uploads in `direct` (the server's).
    pub fn with_direct_limit(jail: Arc<Jail>, direct: Arc<DirectLimit>) -> LocalStorage {
        LocalStorage {
            jail,
            direct,
            gate: Gate::default(),
        }
    }

    /// The same store, entering `gate` around each step that measures what a change replaces
    /// or removes and makes it.
    pub fn gated(mut self, gate: Arc<dyn ChangeGate>) -> LocalStorage {
        self.gate = Gate(Some(gate));
        self
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

    /// Runs `f` like [`LocalStorage::run`], inside the change gate.
    fn run_gated<T, F>(&self, f: F) -> BoxFuture<'static, Result<T, StorageError>>
    where
        T: Send + 'static,
        F: FnOnce(&Jail) -> Result<T, StorageError> + Send + 'static,
    {
        let gate = self.gate.clone();
        self.run(move |jail| {
            let _entered = gate.enter();
            f(jail)
        })
    }
}

/// A local listing token: where a page ended in a directory (the file system's readdir
/// position), and a tag naming that directory (its path, device, inode and birth time,
/// hashed), so a token is refused anywhere else, a directory made again under the name of a
/// removed one included. Written as 32 lowercase hex digits: tag, then position. Not
/// secret and not signed: a client can forge a position, and a forged one reads its own
/// directory from a point the kernel accepts, which is no more than it may list anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ListAt {
    tag: [u8; 8],
    position: u64,
}

impl ListAt {
    fn tag(path: &RemotePath, dir: DirId) -> [u8; 8] {
        let mut h = Sha256::new();
        h.update(b"ferry list token v1\0");
        h.update(path.to_string().as_bytes());
        h.update([0]);
        h.update(dir.dev.to_be_bytes());
        h.update(dir.ino.to_be_bytes());
        match dir.born {
            Some((secs, nanos)) => {
                h.update([1]);
                h.update(secs.to_be_bytes());
                h.update(nanos.to_be_bytes());
            }
            None => h.update([0]),
        }
        let digest = h.finalize();
        let mut tag = [0; 8];
        tag.copy_from_slice(&digest[..8]);
        tag
    }

    fn encode(self) -> ListToken {
        let mut raw = [0; 16];
        raw[..8].copy_from_slice(&self.tag);
        raw[8..].copy_from_slice(&self.position.to_be_bytes());
        ListToken::from_string(hex::encode(raw))
    }

    /// `None` for anything but a token [`ListAt::encode`] could have written.
    fn decode(token: &ListToken) -> Option<ListAt> {
        let s = token.as_str();
        if s.len() != 32 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut raw = [0u8; 16];
        hex::decode_to_slice(s, &mut raw).ok()?;
        let mut tag = [0; 8];
        tag.copy_from_slice(&raw[..8]);
        let mut position = [0; 8];
        position.copy_from_slice(&raw[8..]);
        Some(ListAt {
            tag,
            position: u64::from_be_bytes(position),
        })
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
    check_landing(jail, target, no_replace, super::Landing::Exact)
}

/// [`check_target`] for a commit that lands as `landing` says: at the next free name, a taken
/// name is neither refused nor replaced.
fn check_landing(
    jail: &Jail,
    target: &RemotePath,
    no_replace: bool,
    landing: super::Landing,
) -> Result<Footprint, StorageError> {
    if target.is_root() {
        return Err(StorageError::IsADirectory);
    }
    if no_replace && landing == super::Landing::NextFreeName {
        return Ok(Footprint::NONE);
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
        gate: Gate,
        temp: TempFile,
        no_replace: bool,
        admit: Option<Admit>,
        placed: Option<super::Placed>,
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

/// Commits a temp whose digest is `actual`, in the blocking pool's thread. Only the rename
/// runs inside the change gate; the data's fsync comes before it, the directory's after.
fn land(
    jail: &Arc<Jail>,
    gate: &Gate,
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
    if commit.landing == super::Landing::NextFreeName {
        temp.land_at_next_free_name();
    }
    let (admit, placed) = (commit.admit, commit.placed);
    match commit.durability {
        Durability::Now => {
            if !fsynced {
                temp.sync()?;
            }
            let (dir, replaced) = place(gate, temp, overwrite, admit, placed)?;
            dir.sync()?;
            let name = dir.landed_as().map(str::to_owned);
            Ok(Landed::Committed(Committed { replaced, name }))
        }
        Durability::Batched if fsynced => {
            let (dir, replaced) = place(gate, temp, overwrite, admit, placed)?;
            Ok(Landed::Staged(Staged::new(LocalStaged::Renamed {
                jail: Arc::clone(jail),
                dir,
                replaced,
            })))
        }
        Durability::Batched => Ok(Landed::Staged(Staged::new(LocalStaged::Written {
            jail: Arc::clone(jail),
            gate: gate.clone(),
            temp,
            no_replace: !overwrite,
            admit,
            placed,
        }))),
    }
}

/// Renames a synced temp into place inside the change gate: measures what it replaces, asks
/// `admit`, renames, tells `placed`.
fn place(
    gate: &Gate,
    temp: TempFile,
    overwrite: bool,
    admit: Option<Admit>,
    placed: Option<super::Placed>,
) -> Result<(UnsyncedDir, Footprint), StorageError> {
    let _entered = gate.enter();
    let (dir, replaced) =
        temp.rename_into_place_if(overwrite, |replaced| admit.map_or(Ok(()), |a| a(replaced)))?;
    if let Some(placed) = placed {
        placed(replaced);
    }
    Ok((dir, replaced))
}

/// The group commit (blocking): one `syncfs` if any file still needs its data flushed, then
/// each such file renamed into place, then each directory fsynced once. One result per input.
/// Where the platform has no flush of a whole file system
/// ([`crate::platform::SYNCFS_COVERS_FILE_SYSTEM`]), each file is fsynced before its rename.
fn flush(jail: &Arc<Jail>, staged: Vec<Staged>) -> Vec<Result<Committed, StorageError>> {
    flush_with(jail, staged, crate::platform::SYNCFS_COVERS_FILE_SYSTEM)
}

/// [`flush`], with one flush of the file system (`one_flush`) or an fsync per file.
fn flush_with(
    jail: &Arc<Jail>,
    staged: Vec<Staged>,
    one_flush: bool,
) -> Vec<Result<Committed, StorageError>> {
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
    let flushed = if needs_sync && one_flush {
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
                gate,
                no_replace,
                admit,
                placed,
                ..
            } => match &flushed {
                Ok(()) => {
                    if one_flush {
                        temp.mark_synced();
                    } else {
                        // No flush covered it: its own fsync, outside the gate.
                        temp.sync()?;
                    }
                    place(&gate, temp, !no_replace, admit, placed)
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
            let (dir, replaced) = p?;
            synced.next().unwrap_or(Ok(()))?;
            let name = dir.landed_as().map(str::to_owned);
            Ok(Committed { replaced, name })
        })
        .collect()
}

impl Storage for LocalStorage {
    fn stat<'a>(&'a self, path: &'a RemotePath) -> BoxFuture<'a, Result<Stat, StorageError>> {
        let path = path.clone();
        self.run(move |jail| jail.stat(&path).map(stat_of))
    }

    fn lstat<'a>(&'a self, path: &'a RemotePath) -> BoxFuture<'a, Result<Stat, StorageError>> {
        let path = path.clone();
        self.run(move |jail| jail.lstat(&path).map(stat_of))
    }

    fn list_page<'a>(
        &'a self,
        path: &'a RemotePath,
        after: Option<&'a ListToken>,
        limit: ListLimit,
    ) -> BoxFuture<'a, Result<ListPage, StorageError>> {
        let path = path.clone();
        let after = match after.map(ListAt::decode) {
            None => None,
            Some(Some(at)) => Some(at),
            Some(None) => return Box::pin(async { Err(StorageError::InvalidArgument) }),
        };
        let max = limit.entries.clamp(1, LIST_PAGE_MAX);
        self.run(move |jail| {
            let mut reader = match jail.open_listing(&path)? {
                Listing::Dir(reader) => reader,
                // No page of a file gives a token.
                Listing::Other(_) if after.is_some() => return Err(StorageError::InvalidArgument),
                Listing::Other(entry) => {
                    return Ok(ListPage {
                        entries: vec![entry],
                        next: None,
                    });
                }
            };
            let tag = ListAt::tag(&path, reader.id());
            if let Some(at) = after {
                if at.tag != tag {
                    return Err(StorageError::InvalidArgument);
                }
                reader.seek(at.position)?;
            }
            let (entries, next) = reader.page(max, limit.bytes, limit.per_entry)?;
            // A position that does not move (more names under one readdir position than a
            // page holds, which no file system ferry knows gives) would have a caller that
            // follows tokens ask for the same page forever: an error ends it instead.
            if next.is_some() && next == after.map(|at| at.position) {
                return Err(StorageError::Io(std::io::Error::other(
                    "the directory's read position does not advance",
                )));
            }
            Ok(ListPage {
                entries,
                next: next.map(|position| ListAt { tag, position }.encode()),
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
        self.run_gated(move |jail| jail.remove_file(&path))
    }

    fn remove_dir<'a>(
        &'a self,
        path: &'a RemotePath,
    ) -> BoxFuture<'a, Result<Footprint, StorageError>> {
        let path = path.clone();
        self.run_gated(move |jail| jail.remove_dir(&path))
    }

    fn rename<'a>(
        &'a self,
        from: &'a RemotePath,
        to: &'a RemotePath,
        no_replace: bool,
    ) -> BoxFuture<'a, Result<Footprint, StorageError>> {
        let (from, to) = (from.clone(), to.clone());
        self.run_gated(move |jail| jail.rename(&from, &to, !no_replace))
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
        let gate = self.gate.clone();
        let work = self.run(move |jail| copy_file(jail, &gate, &from, &to, options, &stop));
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
        let gate = self.gate.clone();
        let gate_kept = self.gate.clone();
        let prepared = self.run(move |jail| {
            let replaces = check_landing(jail, &path, options.no_replace, options.landing)?;
            // The temp first: an upload that cannot begin (a missing parent) supersedes
            // nothing, so no partial goes without its caller hearing of it.
            let temp = jail.create_temp(&path)?;
            let superseded = match &options.supersede {
                Some(key) => {
                    let _entered = gate.enter();
                    jail.remove_superseded_partial(key.as_str())?
                }
                None => None,
            };
            Ok((temp, replaces, superseded))
        });
        Box::pin(async move {
            let (temp, replaces, superseded) = prepared.await?;
            let upload =
                LocalUpload::start(jail, temp, Sha256::new(), 0, size_hint, replaces, &limit);
            Ok(Box::new(LocalUpload {
                superseded,
                gate: gate_kept,
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
        let gate = self.gate.clone();
        let gate_kept = self.gate.clone();
        let taken = self.run(move |jail| {
            let replaces = check_target(jail, &path, false)?;
            let (kept, mut temp) = {
                // Measured and taken in one step: what the partial held is what leaves it.
                let _entered = gate.enter();
                let Some(kept) = jail.partial_size(key.as_str())? else {
                    return Ok(Err(Resume::NoPartial));
                };
                if kept < offset {
                    return Ok(Err(Resume::Short { kept }));
                }
                match jail.take_partial(key.as_str(), &path) {
                    Ok(t) => (kept, t),
                    Err(StorageError::NotFound) => return Ok(Err(Resume::NoPartial)),
                    Err(e) => return Err(e),
                }
            };
            let mut hasher = Sha256::new();
            let hashed = (|| -> Result<Sha256Digest, StorageError> {
                let file = temp.file();
                file.seek(SeekFrom::Start(0))?;
                hash_prefix(file, offset, &mut hasher, |_| {})?;
                Ok(hasher.clone().finalize().into())
            })();
            let actual = match hashed {
                Ok(d) => d,
                Err(e) => {
                    // Put back as it was rather than lose it (its count stays with it); if
                    // even that fails it is gone, counted until the next recount.
                    let _entered = gate.enter();
                    let _ = temp.keep_as_partial(jail, key.as_str());
                    return Err(e);
                }
            };
            if actual != prefix {
                // Back as it was, for a later try (or a fresh upload that supersedes it). If
                // another upload kept a partial under the key meanwhile, this one replaces it.
                let _entered = gate.enter();
                let replaced = temp.keep_as_partial(jail, key.as_str())?;
                return Ok(Err(Resume::Mismatch { actual, replaced }));
            }
            let file = temp.file();
            file.set_len(offset)?;
            file.seek(SeekFrom::Start(offset))?;
            Ok(Ok((temp, hasher, replaces, kept)))
        });
        Box::pin(async move {
            Ok(match taken.await? {
                Err(resume) => resume,
                Ok((temp, hasher, replaces, kept)) => {
                    let upload =
                        LocalUpload::start(jail, temp, hasher, offset, size_hint, replaces, &limit);
                    Resume::Ready(Box::new(LocalUpload {
                        superseded: Some(kept),
                        gate: gate_kept,
                        ..upload
                    }))
                }
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
        let gate = self.gate.clone();
        self.run(move |_| {
            let replaces = check_landing(&jail, &path, commit.no_replace, commit.landing)?;
            let superseded = {
                let _entered = options.supersede.as_ref().and_then(|_| gate.enter());
                let superseded = match &options.supersede {
                    Some(key) => jail.remove_superseded_partial(key.as_str())?,
                    None => None,
                };
                if let Some(reserve) = options.reserve {
                    reserve(replaces, superseded)?;
                }
                superseded
            };
            // Created before the digest is compared: a target that cannot be created (a
            // missing parent) is refused as such, whatever the data.
            let mut temp = jail.create_temp(&path)?;
            let actual: Sha256Digest = Sha256::digest(&data).into();
            if actual != commit.sha256 {
                temp.discard();
                return Ok(SmallPut {
                    landed: Landed::Mismatch { actual },
                    superseded,
                    replaces,
                });
            }
            temp.file().write_all(&data)?;
            let landed = land(&jail, &gate, temp, actual, commit, false)?;
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
    gate: &Gate,
    from: &RemotePath,
    to: &RemotePath,
    options: CopyOptions,
    stop: &AtomicBool,
) -> Result<Copied, StorageError> {
    let (mut file, entry) = jail.open_read(from)?;
    if options.expect_size.is_some_and(|want| want != entry.size) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the source changed before the copy began",
        )
        .into());
    }
    let replaces = check_target(jail, to, options.no_replace)?;
    let mut temp = jail.create_temp(to)?;
    if let Some(reserve) = options.reserve {
        reserve(replaces, None)?;
    }
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
    let (dir, replaced) = place(
        gate,
        temp,
        !options.no_replace,
        options.admit,
        options.placed,
    )?;
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
    /// Send back the running hash of everything received so far.
    Mark(tokio::sync::oneshot::Sender<Sha256>),
    /// Go back to `len` bytes, whose running hash is `hasher`; say how it went.
    Rewind {
        len: u64,
        hasher: Sha256,
        done: tokio::sync::oneshot::Sender<Result<(), StorageError>>,
    },
}

/// How the writer thread ended.
enum Written {
    Finished(TempFile, Sha256Digest),
    /// The data stopped without `Finish`: the temp holds everything received, whose SHA-256
    /// this is.
    Interrupted(TempFile, Sha256Digest),
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
    /// The store's change gate, for the commit's rename and for keeping a partial.
    gate: Gate,
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
            gate: Gate::default(),
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
                    hasher.update(&data);
                    let digest: Sha256Digest = hasher.finalize().into();
                    if !finish {
                        return Written::Interrupted(temp, digest);
                    }
                    Written::Finished(temp, digest)
                })
                .await;
                done.unwrap_or_else(|e| {
                    Written::Failed(StorageError::Io(std::io::Error::other(e.to_string())))
                })
            }
            State::Finished { temp, digest, .. } if !finish => Written::Interrupted(temp, digest),
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
                Written::Interrupted(..) => Err(writer_gone()),
            }
        })
    }

    fn commit(self: Box<Self>, commit: Commit) -> BoxFuture<'static, Result<Landed, StorageError>> {
        let LocalUpload {
            jail, state, gate, ..
        } = *self;
        Box::pin(async move {
            let State::Finished {
                temp,
                digest,
                fsynced,
            } = state
            else {
                return Err(StorageError::InvalidArgument);
            };
            blocking(move || land(&jail, &gate, temp, digest, commit, fsynced)).await
        })
    }

    fn keep(
        mut self: Box<Self>,
        key: PartialKey,
    ) -> BoxFuture<'static, Result<super::Kept, StorageError>> {
        Box::pin(async move {
            let (temp, sha256) = match self.end(false).await {
                Written::Interrupted(temp, sha256) => (temp, sha256),
                Written::Failed(e) => return Err(e),
                Written::Finished(..) => return Err(writer_gone()),
            };
            let (jail, gate, len) = (Arc::clone(&self.jail), self.gate.clone(), self.written);
            let replaced = blocking(move || {
                // Synced first, outside the gate; then the older partial is measured and
                // replaced in one step.
                let mut temp = temp;
                temp.sync()?;
                let _entered = gate.enter();
                temp.keep_as_partial(&jail, key.as_str())
            })
            .await?;
            Ok(super::Kept {
                replaced,
                len,
                sha256,
            })
        })
    }

    fn mark(&mut self) -> BoxFuture<'_, Result<super::Mark, StorageError>> {
        Box::pin(async move {
            let written = self.written;
            let hasher = match &self.state {
                // The hasher there covers what came before the bytes held in memory.
                State::Memory { hasher, data, .. } => {
                    let mut h = hasher.clone();
                    h.update(data);
                    h
                }
                State::Thread { tx, .. } => {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    let asked = tx.send(ToWriter::Mark(reply)).await.is_ok();
                    match answer.await {
                        Ok(h) if asked => h,
                        _ => {
                            return Err(match self.end(false).await {
                                Written::Failed(e) => e,
                                _ => writer_gone(),
                            });
                        }
                    }
                }
                State::Finished { .. } => return Err(StorageError::InvalidArgument),
                State::Gone => return Err(writer_gone()),
            };
            Ok(super::Mark::new(written, hasher))
        })
    }

    fn rewind(&mut self, mark: super::Mark) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            let len = mark.written();
            let Some(hasher) = mark.into_state::<Sha256>() else {
                return Err(StorageError::InvalidArgument);
            };
            if len > self.written {
                return Err(StorageError::InvalidArgument);
            }
            match &mut self.state {
                State::Memory { data, .. } => {
                    // Only what is still in memory can go; the prefix before it stays.
                    let base = self.written - data.len() as u64;
                    if len < base {
                        return Err(StorageError::InvalidArgument);
                    }
                    data.truncate((len - base) as usize);
                }
                State::Thread { tx, .. } => {
                    let (done, answer) = tokio::sync::oneshot::channel();
                    let asked = tx
                        .send(ToWriter::Rewind { len, hasher, done })
                        .await
                        .is_ok();
                    match answer.await {
                        Ok(Ok(())) if asked => {}
                        Ok(Err(e)) => {
                            self.end(false).await;
                            return Err(e);
                        }
                        _ => {
                            return Err(match self.end(false).await {
                                Written::Failed(e) => e,
                                _ => writer_gone(),
                            });
                        }
                    }
                }
                State::Finished { .. } => return Err(StorageError::InvalidArgument),
                State::Gone => return Err(writer_gone()),
            }
            self.written = len;
            Ok(())
        })
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            // A writer thread is waited for, so that the temp is gone when this returns.
            let ended = match self.state {
                State::Thread { .. } => Some(self.end(false).await),
                _ => None,
            };
            let state = std::mem::replace(&mut self.state, State::Gone);
            let _ = blocking(move || {
                // Dropping the temp removes the file.
                drop((ended, state));
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
            Some(ToWriter::Mark(reply)) => {
                let _ = reply.send(receiving.hasher().clone());
            }
            Some(ToWriter::Rewind { len, hasher, done }) => {
                let rewound = receiving.rewind(temp.file(), len, hasher, direct.as_ref());
                if let Err(e) = rewound {
                    drop(receiving);
                    temp.discard();
                    let _ = done.send(Err(StorageError::Io(std::io::Error::new(
                        e.kind(),
                        e.to_string(),
                    ))));
                    return Written::Failed(e.into());
                }
                let _ = done.send(Ok(()));
            }
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
        return Written::Interrupted(temp, digest);
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
        let mut heard = WhileHeard {
            file: &mut file,
            tx,
        };
        hash_prefix(&mut heard, r.offset, &mut hasher, progress)?;
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

/// The file of a download, read only while its caller still listens: a prefix check whose
/// download was dropped (cancelled, its client gone) stops at its next read instead of
/// hashing the rest of the prefix, up to the whole file, for nobody.
struct WhileHeard<'a, T> {
    file: &'a mut std::fs::File,
    tx: &'a mpsc::Sender<T>,
}

impl<T> Read for WhileHeard<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.tx.is_closed() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the download was dropped",
            ));
        }
        self.file.read(buf)
    }
}

/// Sends `len` bytes of `file` from its position in chunks; the final event is the `End`
/// (or the error) for the caller to send. A file that ends early is `UnexpectedEof`.
fn read_range(
    mut file: std::fs::File,
    len: u64,
    mut hasher: Option<Sha256>,
    tx: &mpsc::Sender<Result<ReadEvent, StorageError>>,
) -> Result<ReadEvent, StorageError> {
    let send = |bytes| tx.blocking_send(Ok(ReadEvent::Data(bytes))).is_ok();
    if !crate::transfer::read_chunks(&mut file, len, READ_CHUNK_LEN, hasher.as_mut(), send)? {
        // The reader is gone; nobody hears the end.
        return Ok(ReadEvent::End { sha256: None });
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::platform;

    /// Small uploads written into `jail` and staged for the group commit.
    fn staged(jail: &Arc<Jail>, names: &[&str]) -> Vec<Staged> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut temp = jail.create_temp(&RemotePath::parse(name).unwrap()).unwrap();
                temp.file().write_all(&[i as u8; 64 * 1024]).unwrap();
                let (dirty, _) = platform::unwritten_pages(temp.file());
                assert!(
                    dirty > 0,
                    "nothing dirty right after a write: this test cannot tell"
                );
                Staged::new(LocalStaged::Written {
                    jail: Arc::clone(jail),
                    gate: Gate::default(),
                    temp,
                    no_replace: true,
                    admit: None,
                    placed: None,
                })
            })
            .collect()
    }

    fn group_commit_lands_every_file_written_back(one_flush: bool) {
        let home = tempfile::tempdir().unwrap();
        let jail = Arc::new(Jail::open(home.path(), false).unwrap());
        let names = ["/a", "/b", "/c"];
        let done = flush_with(&jail, staged(&jail, &names), one_flush);
        assert_eq!(done.len(), 3);
        for (i, result) in done.into_iter().enumerate() {
            result.unwrap();
            let path = home.path().join(&names[i][1..]);
            assert!(std::fs::read(&path).unwrap() == vec![i as u8; 64 * 1024]);
            // Durable before the reply: nothing of it is left in the cache to write.
            let file = std::fs::File::open(&path).unwrap();
            assert_eq!(platform::unwritten_pages(&file), (0, 0), "{}", names[i]);
        }
        // Only the three files: no temp left behind.
        assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 3);
    }

    #[test]
    fn group_commit_with_syncfs_makes_every_file_durable() {
        group_commit_lands_every_file_written_back(true);
    }

    #[test]
    fn group_commit_without_syncfs_fsyncs_each_file() {
        // What a system whose flush covers one file only does (the portable fallback).
        group_commit_lands_every_file_written_back(false);
    }
}
