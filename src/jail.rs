//! A user's home directory as a capability.
//!
//! Every path a client names is first validated as a [`RemotePath`] (no `..`, no control or
//! bidi characters, bounded lengths, no reserved names), and then resolved by the kernel
//! beneath the home: [`Jail`] holds the home as a [`cap_std::fs::Dir`], and cap-std resolves
//! through `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` on Linux. A symlink that leads
//! outside, even one planted after the session started, fails with [`StorageError::Escape`].
//! Operations on a final component (mkdir, unlink, rename, lstat) open the parent directory
//! beneath the home and then act on a single name relative to that descriptor, never on a
//! path string.
//!
//! Uploads go through a [`TempFile`]: an exclusive `.ferry-tmp.<random>` file beside the
//! target, renamed into place only on [`TempFile::commit`]. Names starting with `.ferry-` are
//! reserved for these files: clients can neither name nor list them.
//!
//! Everything here blocks; the server calls it from `spawn_blocking`.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, Metadata, MetadataExt, OpenOptions, OpenOptionsExt};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

pub use crate::domain::Footprint;
use crate::domain::{Entry, EntryKind, MAX_NAME_LEN, MAX_PATH_DEPTH, MAX_PATH_LEN};

/// Names starting with this prefix (ASCII case-insensitively) belong to the server.
pub const RESERVED_PREFIX: &str = ".ferry-";

/// Prefix of the temp files that receive uploads.
const TEMP_NAME_PREFIX: &str = ".ferry-tmp.";

/// How many random temp names to try before giving up (a collision of 128 random bits
/// means something else is going on).
const TEMP_NAME_ATTEMPTS: usize = 4;

/// Permission bits of a home created by [`Jail::open`].
const HOME_MODE: u32 = 0o700;

/// Permission bits of a directory created by [`Jail::mkdir`], before the umask.
const DIR_MODE: u32 = 0o755;

/// Permission bits of a temp file (and so of a committed upload).
const TEMP_MODE: u32 = 0o600;

/// Directory (at the home's top, hidden by the reserved prefix) where interrupted uploads are
/// kept for resume, one file per key. One place per home makes quotas and the stale sweep
/// cheap: no walk of the whole tree.
const PARTIALS_DIR: &str = ".ferry-partials";

/// How often (in levels) a walk of the home keeps a directory handle open: deeper directories
/// are opened by a relative path of at most this many names from the nearest open one (at
/// most 8 × 256 bytes, well under the kernel's `PATH_MAX`).
const WALK_ANCHOR_EVERY: usize = 8;

/// Most directories a rename that moves a directory deeper may look at to check that nothing
/// in it ends up deeper than [`MAX_PATH_DEPTH`]: the check costs at most this many opens.
const RENAME_DEPTH_CHECK_MAX_DIRS: u64 = 100_000;

/// How long the depth check of a rename may take at most.
const RENAME_DEPTH_CHECK_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a remote path was refused. Messages are short and never repeat the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The whole path is longer than [`MAX_PATH_LEN`] bytes.
    #[error("path too long")]
    TooLong,
    /// One component is longer than [`MAX_NAME_LEN`] bytes.
    #[error("file name too long")]
    NameTooLong,
    /// A `..` component.
    #[error("'..' is not allowed")]
    ParentDir,
    /// A NUL byte.
    #[error("NUL byte in path")]
    Nul,
    /// A backslash (refused so that no client can mistake it for a separator).
    #[error("backslash in path")]
    Backslash,
    /// A control character (C0, DEL or C1).
    #[error("control character in path")]
    ControlChar,
    /// A bidirectional override or isolate character (U+202A-202E, U+2066-2069).
    #[error("bidi control character in path")]
    BidiControl,
    /// A component starting with `.ferry-`, reserved for the server's temp files.
    #[error("names starting with '.ferry-' are reserved")]
    Reserved,
    /// [`RemotePath::join`] was given something other than one file name.
    #[error("not a single file name")]
    NotAName,
    /// More than [`MAX_PATH_DEPTH`] components.
    #[error("path too deep")]
    TooDeep,
}

/// A validated remote path: '/'-separated, relative to the home. `"/"` and `""` are the home.
///
/// A leading `/` means the home root; `.` and empty components (`a//b`, a trailing `/`) are
/// dropped. Refused: `..`, NUL, backslash, control characters (C0, DEL, C1), bidi override and
/// isolate characters, a component over [`MAX_NAME_LEN`] bytes, a path over [`MAX_PATH_LEN`]
/// bytes, and components starting with `.ferry-` (compared ASCII case-insensitively, so that a
/// case-folding file system cannot alias a server temp file).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct RemotePath {
    components: Vec<String>,
}

impl RemotePath {
    /// Validates and normalises a path received from a client.
    pub fn parse(s: &str) -> Result<RemotePath, PathError> {
        if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        s.chars().try_for_each(check_char)?;
        let components = s
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(|c| check_component(c).map(|()| c.to_owned()))
            .collect::<Result<Vec<_>, _>>()?;
        if components.len() > MAX_PATH_DEPTH {
            return Err(PathError::TooDeep);
        }
        let path = RemotePath { components };
        // The limit holds for the normal form too (`a/b` is shown as `/a/b`), so every
        // accepted path can be sent back and parsed again.
        if path.display_len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        Ok(path)
    }

    /// The home directory itself.
    pub fn root() -> RemotePath {
        RemotePath::default()
    }

    /// True for the home directory itself.
    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The containing directory, or `None` for the root.
    pub fn parent(&self) -> Option<RemotePath> {
        let (_, parent) = self.components.split_last()?;
        Some(RemotePath {
            components: parent.to_vec(),
        })
    }

    /// The last component, or `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        self.components.last().map(String::as_str)
    }

    /// The validated components, outermost first.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// Appends one file name, validated like a component of [`RemotePath::parse`]. Empty names,
    /// `.` and names containing `/` are refused with [`PathError::NotAName`].
    pub fn join(&self, name: &str) -> Result<RemotePath, PathError> {
        if name.is_empty() || name == "." || name.contains('/') {
            return Err(PathError::NotAName);
        }
        name.chars().try_for_each(check_char)?;
        check_component(name)?;
        if self.display_len() + 1 + name.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if self.components.len() >= MAX_PATH_DEPTH {
            return Err(PathError::TooDeep);
        }
        let mut components = self.components.clone();
        components.push(name.to_owned());
        Ok(RemotePath { components })
    }

    /// The path relative to the home, as cap-std wants it: `a/b`, or `.` for the root.
    pub fn as_relative(&self) -> PathBuf {
        if self.is_root() {
            PathBuf::from(".")
        } else {
            PathBuf::from(self.components.join("/"))
        }
    }

    /// Length in bytes of the `Display` form.
    fn display_len(&self) -> usize {
        self.components
            .iter()
            .map(|c| c.len() + 1)
            .sum::<usize>()
            .max(1)
    }
}

impl fmt::Display for RemotePath {
    /// `/a/b`, or `/` for the root.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            return f.write_str("/");
        }
        for c in &self.components {
            write!(f, "/{c}")?;
        }
        Ok(())
    }
}

fn check_char(c: char) -> Result<(), PathError> {
    match c {
        '\0' => Err(PathError::Nul),
        '\\' => Err(PathError::Backslash),
        // `is_control` is exactly Cc: C0, DEL and C1 (0x80-0x9f).
        c if c.is_control() => Err(PathError::ControlChar),
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' => Err(PathError::BidiControl),
        _ => Ok(()),
    }
}

/// Checks one non-empty component whose characters were already checked.
fn check_component(c: &str) -> Result<(), PathError> {
    if c == ".." {
        return Err(PathError::ParentDir);
    }
    if c.len() > MAX_NAME_LEN {
        return Err(PathError::NameTooLong);
    }
    if is_reserved(c.as_bytes()) {
        return Err(PathError::Reserved);
    }
    Ok(())
}

fn is_reserved(name: &[u8]) -> bool {
    name.get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes()))
}

/// What went wrong with a storage operation. `Display` is short and never contains a path.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No such file or directory.
    #[error("no such file or directory")]
    NotFound,
    /// The target exists and the operation does not replace it.
    #[error("already exists")]
    AlreadyExists,
    /// The file system refused (EACCES, EPERM, EROFS), or the operation is never allowed.
    #[error("permission denied")]
    PermissionDenied,
    /// A component that must be a directory is not.
    #[error("not a directory")]
    NotADirectory,
    /// The operation needs a non-directory and found a directory.
    #[error("is a directory")]
    IsADirectory,
    /// The directory to remove is not empty.
    #[error("directory not empty")]
    DirectoryNotEmpty,
    /// A path resolved outside the home (a symlink leading out, an absolute symlink, a symlink
    /// loop). Worth a line in the server's log.
    #[error("path leads outside the home")]
    Escape,
    /// The path was refused before touching the file system.
    #[error("invalid path: {0}")]
    InvalidPath(PathError),
    /// The disk is full.
    #[error("no space left on device")]
    NoSpace,
    /// The user's disk quota is exhausted.
    #[error("disk quota exceeded")]
    QuotaExceeded,
    /// The operation makes no sense here (renaming the root, moving a directory into itself,
    /// reading something that is not a regular file).
    #[error("invalid argument")]
    InvalidArgument,
    /// Any other I/O error. Its text is the OS's, without paths; keep it in the server log.
    #[error("i/o error: {0}")]
    Io(io::Error),
}

impl StorageError {
    /// Maps an I/O error by errno, or by kind when there is none.
    ///
    /// cap-std reports a path that would leave the directory as a custom `PermissionDenied`
    /// error without an errno ("a path led outside of the filesystem", see
    /// `cap-primitives/src/fs/errors.rs`); it turns `openat2`'s `EXDEV` into that error. So a
    /// `PermissionDenied` without errno is an escape; a real EACCES/EPERM always carries one.
    pub fn from_io(e: io::Error) -> StorageError {
        if let Some(code) = e.raw_os_error() {
            return match Errno::from_raw_os_error(code) {
                Errno::NOENT => StorageError::NotFound,
                Errno::EXIST => StorageError::AlreadyExists,
                Errno::ACCESS | Errno::PERM | Errno::ROFS => StorageError::PermissionDenied,
                Errno::NOTDIR => StorageError::NotADirectory,
                Errno::ISDIR => StorageError::IsADirectory,
                Errno::NOTEMPTY => StorageError::DirectoryNotEmpty,
                Errno::NOSPC => StorageError::NoSpace,
                Errno::DQUOT => StorageError::QuotaExceeded,
                // RESOLVE_BENEATH answers EXDEV for an escape; ELOOP is a symlink loop or a
                // refused magic link. Neither happens to an honest client.
                Errno::XDEV | Errno::LOOP => StorageError::Escape,
                Errno::INVAL | Errno::NAMETOOLONG => StorageError::InvalidArgument,
                _ => StorageError::Io(e),
            };
        }
        match e.kind() {
            io::ErrorKind::PermissionDenied => StorageError::Escape,
            io::ErrorKind::NotFound => StorageError::NotFound,
            io::ErrorKind::AlreadyExists => StorageError::AlreadyExists,
            io::ErrorKind::NotADirectory => StorageError::NotADirectory,
            io::ErrorKind::IsADirectory => StorageError::IsADirectory,
            io::ErrorKind::DirectoryNotEmpty => StorageError::DirectoryNotEmpty,
            io::ErrorKind::StorageFull => StorageError::NoSpace,
            io::ErrorKind::QuotaExceeded => StorageError::QuotaExceeded,
            io::ErrorKind::InvalidInput => StorageError::InvalidArgument,
            _ => StorageError::Io(e),
        }
    }
}

impl From<io::Error> for StorageError {
    fn from(e: io::Error) -> Self {
        StorageError::from_io(e)
    }
}

impl From<Errno> for StorageError {
    fn from(e: Errno) -> Self {
        StorageError::from_io(e.into())
    }
}

impl From<PathError> for StorageError {
    fn from(e: PathError) -> Self {
        StorageError::InvalidPath(e)
    }
}

/// Maps an error of `rename`/`link` between two directories of the home. There `EXDEV` means
/// "another mount point" (both parents were already opened beneath the home), not an escape.
fn rename_error(e: Errno) -> StorageError {
    match e {
        Errno::XDEV => StorageError::InvalidArgument,
        e => e.into(),
    }
}

/// A user's home directory, opened once; every operation resolves beneath it.
#[derive(Debug)]
pub struct Jail {
    /// An `O_PATH` descriptor of the home. Shared by all sessions of the user: cap-std never
    /// changes its position or flags, so concurrent use is fine.
    home: Dir,
    /// A readable descriptor of the home, opened with the jail, for `syncfs`: the kernel
    /// reports a write-back error to it if one happened anywhere on the file system since it
    /// was opened (or since the last report), so no error can slip by unseen.
    sync_fd: File,
    /// Whether `.ferry-partials` may exist: looked up when the jail opens, set when this jail
    /// creates it. While false, a fresh upload skips looking for a partial to supersede (see
    /// [`Jail::remove_superseded_partial`]).
    partials_may_exist: AtomicBool,
}

/// A directory descriptor that is either the home itself or a subdirectory opened beneath it.
enum DirRef<'a> {
    Home(&'a Dir),
    Sub(Dir),
}

impl std::ops::Deref for DirRef<'_> {
    type Target = Dir;

    fn deref(&self) -> &Dir {
        match self {
            DirRef::Home(d) => d,
            DirRef::Sub(d) => d,
        }
    }
}

/// What [`Jail::open_listing`] found.
#[derive(Debug)]
pub enum Listing {
    Dir(DirReader),
    /// Not a directory: its own entry is the whole listing.
    Other(Entry),
}

/// Which directory a listing reads: its device, inode and birth time, so a position taken in
/// one is never used in another that later took its name. The inode alone does not tell: ext4
/// gives a directory made right after another was removed the removed one's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirId {
    pub dev: u64,
    pub ino: u64,
    /// Seconds and nanoseconds since 1970, where the file system records a birth time (ext4,
    /// XFS, btrfs, tmpfs); `None` elsewhere, where only device and inode tell. Stamped by the
    /// kernel's clock for new inodes, so a directory removed and made again within one tick of
    /// it (a few milliseconds) is still not told apart.
    pub born: Option<(u64, u32)>,
}

/// A directory read in readdir order from a position the file system gave
/// (`getdents64`'s `d_off`, as `telldir`/`seekdir` use it): a page costs what it reads, and
/// a position stays valid across opens, so a listing in pages reads each entry once. File
/// systems an NFS server can export keep a position meaning the same place while other names
/// come and go (ext4 and XFS: hash or block offsets; btrfs, and tmpfs since Linux 6.6: index
/// numbers). Where a position is an ordinal (an overlayfs directory merged from layers), a
/// change between pages can skip or repeat a name; an unchanged directory still lists each
/// name once. Skips `.`, `..` and `.ferry-*`; entries describe symlinks themselves; names
/// that are not UTF-8 are converted lossily; entries that vanish while listing are skipped.
pub struct DirReader {
    id: DirId,
    dir: rustix::fs::Dir,
    /// The position after the last entry consumed: where the next page starts.
    at: u64,
}

impl fmt::Debug for DirReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirReader")
            .field("id", &self.id)
            .field("at", &self.at)
            .finish()
    }
}

impl DirReader {
    /// The directory being read.
    pub fn id(&self) -> DirId {
        self.id
    }

    /// Moves to a position an earlier page returned. Any value is safe: the kernel either
    /// refuses it (`InvalidArgument`) or reads on from wherever it points in this directory.
    pub fn seek(&mut self, at: u64) -> Result<(), StorageError> {
        let Ok(offset) = i64::try_from(at) else {
            return Err(StorageError::InvalidArgument);
        };
        self.dir.seek(offset).map_err(|e| match e {
            Errno::INVAL => StorageError::InvalidArgument,
            e => e.into(),
        })?;
        self.at = at;
        Ok(())
    }

    /// Up to `max` entries (at least one if any remain) from the current position; the page
    /// also ends after the entry that brings the sum of `name length + per_entry` to
    /// `bytes`. Returns the position to continue from, or `None` if nothing follows.
    pub fn page(
        &mut self,
        max: usize,
        bytes: usize,
        per_entry: usize,
    ) -> Result<(Vec<Entry>, Option<u64>), StorageError> {
        let mut page = Vec::new();
        let mut cost = 0usize;
        loop {
            let dirent = match self.dir.read() {
                None => return Ok((page, None)),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(d)) => d,
            };
            let name = dirent.file_name().to_bytes();
            if name == b"." || name == b".." || is_reserved(name) {
                self.at = dirent.offset() as u64;
                continue;
            }
            if !page.is_empty() && (page.len() >= max || cost >= bytes) {
                // Another entry follows a full page: the next page starts at it.
                return Ok((page, Some(self.at)));
            }
            // One name from the kernel (no `/`, not `.` or `..`), relative to a directory
            // beneath the home, not followed: it cannot lead anywhere else.
            match rustix::fs::statat(
                self.dir.fd()?,
                dirent.file_name(),
                AtFlags::SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => {
                    let shown = String::from_utf8_lossy(name).into_owned();
                    cost = cost.saturating_add(shown.len().saturating_add(per_entry));
                    page.push(entry_of_stat(shown, &st));
                }
                // Gone since the name was read.
                Err(Errno::NOENT) => {}
                Err(e) => return Err(e.into()),
            }
            self.at = dirent.offset() as u64;
        }
    }
}

impl Jail {
    /// Opens the home; with `create`, first creates it (and only it: the parent must exist)
    /// with mode 0700. The home path comes from the admin and is trusted as given.
    pub fn open(home: &Path, create: bool) -> Result<Jail, StorageError> {
        if create {
            match std::fs::DirBuilder::new().mode(HOME_MODE).create(home) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
        }
        Jail::of_dir(Dir::open_ambient_dir(home, ambient_authority())?)
    }

    /// A directory beneath this home as a jail of its own (a drop link's folder). It is
    /// opened through the home's descriptor, so no component on the way (a symlink, `..`)
    /// can lead out of the home; what is beneath it is confined to it from then on.
    pub fn open_beneath(&self, p: &RemotePath) -> Result<Jail, StorageError> {
        let dir = if p.is_root() {
            self.home.try_clone()?
        } else {
            self.home.open_dir(p.as_relative())?
        };
        Jail::of_dir(dir)
    }

    fn of_dir(home: Dir) -> Result<Jail, StorageError> {
        let sync_fd = rustix::fs::openat(
            &home,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // Anything but a clear "not there" counts as there: the flag only ever saves a lookup.
        let partials = !matches!(
            rustix::fs::statat(&home, PARTIALS_DIR, AtFlags::SYMLINK_NOFOLLOW),
            Err(Errno::NOENT)
        );
        Ok(Jail {
            home,
            sync_fd: File::from(sync_fd),
            partials_may_exist: AtomicBool::new(partials),
        })
    }

    /// Describes `p`, following a final symlink (beneath the home). The root's name is `/`.
    pub fn stat(&self, p: &RemotePath) -> Result<Entry, StorageError> {
        let meta = if p.is_root() {
            self.home.dir_metadata()?
        } else {
            self.home.metadata(p.as_relative())?
        };
        Ok(entry(entry_name(p), &meta))
    }

    /// Describes `p` without following a final symlink. The root's name is `/`.
    pub fn lstat(&self, p: &RemotePath) -> Result<Entry, StorageError> {
        let meta = if p.is_root() {
            self.home.dir_metadata()?
        } else {
            self.home.symlink_metadata(p.as_relative())?
        };
        Ok(entry(entry_name(p), &meta))
    }

    /// Streams a directory in readdir order (bounded memory, no sorting), skipping `.ferry-*`
    /// names. Entries describe symlinks themselves (kind `Symlink`). Listing a non-directory
    /// yields just its own entry. Names that are not UTF-8 are converted lossily (such files
    /// cannot be named by a client anyway); entries that vanish while listing are skipped.
    pub fn list(
        &self,
        p: &RemotePath,
    ) -> Result<Box<dyn Iterator<Item = Result<Entry, StorageError>> + Send>, StorageError> {
        let entries = if p.is_root() {
            self.home.entries()?
        } else {
            match self.home.open_dir(p.as_relative()) {
                Ok(dir) => dir.entries()?,
                Err(e) if e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) => {
                    // Either `p` is not a directory (list it alone) or a parent is not one
                    // (stat reports that).
                    let entry = self.stat(p)?;
                    return Ok(Box::new(std::iter::once(Ok(entry))));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Box::new(entries.filter_map(|dirent| {
            let dirent = match dirent {
                Ok(d) => d,
                Err(e) => return Some(Err(e.into())),
            };
            let name = dirent.file_name();
            if is_reserved(name.as_bytes()) {
                return None;
            }
            match dirent.metadata() {
                Ok(meta) => Some(Ok(entry(name.to_string_lossy().into_owned(), &meta))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => Some(Err(e.into())),
            }
        })))
    }

    /// Opens `p` for a listing in pages: a directory comes back as a [`DirReader`] positioned
    /// at its start, anything else as its own entry (like [`Jail::list`]).
    pub fn open_listing(&self, p: &RemotePath) -> Result<Listing, StorageError> {
        let dir = if p.is_root() {
            DirRef::Home(&self.home)
        } else {
            match self.home.open_dir(p.as_relative()) {
                Ok(dir) => DirRef::Sub(dir),
                Err(e) if e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) => {
                    // Either `p` is not a directory (list it alone) or a parent is not one
                    // (stat reports that).
                    return Ok(Listing::Other(self.stat(p)?));
                }
                Err(e) => return Err(e.into()),
            }
        };
        // A descriptor of its own, opened by "." from one already beneath the home (no name
        // is resolved), so its position is this listing's alone.
        let fd = rustix::fs::openat(
            &*dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        // std asks for the birth time too (`statx` on Linux).
        let file = File::from(fd);
        let meta = file.metadata()?;
        let born = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| (d.as_secs(), d.subsec_nanos()));
        Ok(Listing::Dir(DirReader {
            id: DirId {
                dev: std::os::unix::fs::MetadataExt::dev(&meta),
                ino: std::os::unix::fs::MetadataExt::ino(&meta),
                born,
            },
            dir: rustix::fs::Dir::new(rustix::fd::OwnedFd::from(file))?,
            at: 0,
        }))
    }

    /// Opens a regular file for reading. A final symlink is followed but must stay beneath the
    /// home. A directory is `IsADirectory`; a fifo, socket or device is `InvalidArgument`
    /// (opened non-blocking, so a planted fifo cannot hang the server).
    pub fn open_read(&self, p: &RemotePath) -> Result<(File, Entry), StorageError> {
        let (file, entry, _) = self.open_read_state(p)?;
        Ok((file, entry))
    }

    /// [`Jail::open_read`], also returning the file's state as its stored digest checks it
    /// (see [`crate::stored_digest`]), taken from the same `fstat`.
    pub fn open_read_state(
        &self,
        p: &RemotePath,
    ) -> Result<(File, Entry, crate::stored_digest::FileState), StorageError> {
        if p.is_root() {
            return Err(StorageError::IsADirectory);
        }
        let mut options = OpenOptions::new();
        options
            .read(true)
            .custom_flags((OFlags::NONBLOCK | OFlags::NOCTTY).bits() as i32);
        let file = self.home.open_with(p.as_relative(), &options)?.into_std();
        let meta = Metadata::from_file(&file)?;
        if meta.is_dir() {
            return Err(StorageError::IsADirectory);
        }
        if !meta.is_file() {
            return Err(StorageError::InvalidArgument);
        }
        let flags = rustix::fs::fcntl_getfl(&file)?;
        rustix::fs::fcntl_setfl(&file, flags - OFlags::NONBLOCK)?;
        let state = crate::stored_digest::FileState {
            size: meta.len(),
            mtime_sec: meta.mtime(),
            // Below 10^9 for any file (a value out of range only makes a record not match).
            mtime_nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(u32::MAX),
            ino: meta.ino(),
        };
        Ok((file, entry(entry_name(p), &meta), state))
    }

    /// Creates an exclusive temp file (`O_CREAT|O_EXCL`, mode 0600, name
    /// `.ferry-tmp.<128 random bits in hex>`) in the parent directory of `target`.
    /// The root as target is `IsADirectory`; the parent must exist and be a directory.
    /// Whether the target exists is not checked here: [`TempFile::commit`] decides.
    pub fn create_temp(&self, target: &RemotePath) -> Result<TempFile, StorageError> {
        let parent = self.open_parent_owned(target)?;
        for _ in 0..TEMP_NAME_ATTEMPTS {
            let temp_name = format!("{TEMP_NAME_PREFIX}{:032x}", rand::random::<u128>());
            match TempFile::create(&parent, &temp_name) {
                Err(StorageError::AlreadyExists) => continue,
                Err(e) => return Err(e),
                Ok(file) => return Ok(TempFile::new(parent, temp_name, target, file)),
            }
        }
        Err(StorageError::AlreadyExists)
    }

    /// Size of the kept partial upload `key`, if there is one.
    pub fn partial_size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        check_partial_key(key)?;
        let Some(dir) = self.partials_dir(false)? else {
            return Ok(None);
        };
        match dir.symlink_metadata(key) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Err(StorageError::InvalidArgument),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes the kept partial upload `key` out of the partials directory and makes it the temp
    /// file of an upload to `target` (opened for reading and writing, so the caller can check
    /// its prefix before appending). `NotFound` if there is none.
    pub fn take_partial(&self, key: &str, target: &RemotePath) -> Result<TempFile, StorageError> {
        check_partial_key(key)?;
        let Some(partials) = self.partials_dir(false)? else {
            return Err(StorageError::NotFound);
        };
        let parent = self.open_parent_owned(target)?;
        for _ in 0..TEMP_NAME_ATTEMPTS {
            let temp_name = format!("{TEMP_NAME_PREFIX}{:032x}", rand::random::<u128>());
            match rename_noreplace(&partials, key, &parent, &temp_name) {
                Err(StorageError::AlreadyExists) => continue,
                Err(StorageError::InvalidArgument) => {
                    // The target directory is on another file system: resume is not possible.
                    return Err(StorageError::InvalidArgument);
                }
                Err(e) => return Err(e),
                Ok(()) => {
                    let mut options = OpenOptions::new();
                    options.read(true).write(true);
                    let file = match parent.open_with(&temp_name, &options) {
                        Ok(f) => f.into_std(),
                        Err(e) => {
                            let _ = rustix::fs::unlinkat(&parent, &temp_name, AtFlags::empty());
                            return Err(e.into());
                        }
                    };
                    return Ok(TempFile::new(parent, temp_name, target, file));
                }
            }
        }
        Err(StorageError::AlreadyExists)
    }

    /// Removes the kept partial upload `key`; returns its size, `None` if there was none.
    pub fn remove_partial(&self, key: &str) -> Result<Option<u64>, StorageError> {
        check_partial_key(key)?;
        let Some(dir) = self.partials_dir(false)? else {
            return Ok(None);
        };
        let size = match dir.symlink_metadata(key) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match rustix::fs::unlinkat(&dir, key, AtFlags::empty()) {
            Ok(()) => Ok(Some(size)),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Jail::remove_partial`] for a fresh upload superseding what an earlier attempt kept,
    /// without the lookup while this jail has seen no partials directory: in a home that never
    /// kept a partial, that saves one system call per upload. A partial that another session
    /// of the same home keeps after this jail opened is then not superseded by this session's
    /// fresh upload; it stays, counted, until it is resumed or swept, as it would if it had
    /// been kept a moment after this upload began.
    pub fn remove_superseded_partial(&self, key: &str) -> Result<Option<u64>, StorageError> {
        if !self.partials_may_exist.load(Ordering::Acquire) {
            check_partial_key(key)?;
            return Ok(None);
        }
        self.remove_partial(key)
    }

    /// Removes kept partial uploads not modified for `max_age`. Returns how many went.
    /// Returns what they took.
    pub fn sweep_partials(&self, max_age: std::time::Duration) -> Result<Footprint, StorageError> {
        let Some(dir) = self.partials_dir(false)? else {
            return Ok(Footprint::NONE);
        };
        let now = std::time::SystemTime::now();
        let mut removed = Footprint::NONE;
        for item in dir.entries()? {
            let item = item?;
            let Ok(meta) = item.metadata() else { continue };
            let modified = meta
                .modified()
                .map(|t| t.into_std())
                .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
            let age = now.duration_since(modified).unwrap_or_default();
            if age >= max_age {
                let name = item.file_name();
                let took =
                    match rustix::fs::statat(&dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(st) => footprint_of(&st, name.as_bytes()),
                        Err(_) => continue,
                    };
                if rustix::fs::unlinkat(&dir, name.as_os_str(), AtFlags::empty()).is_ok() {
                    removed = removed.plus(took);
                }
            }
        }
        Ok(removed)
    }

    /// The partials directory, created (0700) on demand.
    fn partials_dir(&self, create: bool) -> Result<Option<Dir>, StorageError> {
        match self.home.open_dir(PARTIALS_DIR) {
            Ok(d) => return Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        self.partials_may_exist.store(true, Ordering::Release);
        match rustix::fs::mkdirat(&self.home, PARTIALS_DIR, Mode::from_raw_mode(HOME_MODE)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Some(self.home.open_dir(PARTIALS_DIR)?))
    }

    /// What the home holds, for the quota: bytes and regular files, and directories (which
    /// count as files, as inode quotas count them). Temp files and kept partials are
    /// included; the home itself and the server's own directories (`.ferry-*`) are not;
    /// symlinks are not followed and count nothing. Each name of a hard-linked file counts.
    ///
    /// The walk is depth first and keeps an open handle only on every
    /// [`WALK_ANCHOR_EVERY`]th level of the current branch (deeper directories are opened by
    /// a short relative path from the nearest such anchor), so it holds at most
    /// `MAX_PATH_DEPTH / WALK_ANCHOR_EVERY + 3` descriptors however wide or deep the tree.
    /// A directory it cannot open or read fails the walk (never a silent undercount), as does
    /// anything deeper than [`MAX_PATH_DEPTH`] or a `stop` that fires.
    pub fn usage_walk(&self, stop: &Stop) -> Result<Footprint, StorageError> {
        let mut total = Footprint::default();
        walk(&self.home, MAX_PATH_DEPTH, stop, |seen| {
            total = total.plus(seen.footprint);
            Ok(())
        })?;
        Ok(total)
    }

    /// Flushes the whole file system that holds the home (`syncfs`): one flush makes the data
    /// of every file written so far durable, where an fsync per file would wait for the disk
    /// once per file. Group commit of many small uploads uses it. Needs Linux 5.8 or later,
    /// where `syncfs` reports write-back errors; elsewhere only the home directory itself is
    /// flushed (see [`crate::platform::SYNCFS_COVERS_FILE_SYSTEM`]).
    pub fn sync_filesystem(&self) -> Result<(), StorageError> {
        crate::platform::sync_filesystem(&self.sync_fd)?;
        Ok(())
    }

    /// Free and total bytes of the file system holding the home, as an unprivileged user
    /// sees them.
    pub fn disk_space(&self) -> Result<(u64, u64), StorageError> {
        let st = rustix::fs::fstatvfs(&self.home)?;
        let unit = st.f_frsize.max(1);
        Ok((
            st.f_bavail.saturating_mul(unit),
            st.f_blocks.saturating_mul(unit),
        ))
    }

    /// Creates one directory (mode 0755 before the umask). An existing name, whatever it is,
    /// is `AlreadyExists`; a missing parent is `NotFound`.
    pub fn mkdir(&self, p: &RemotePath) -> Result<(), StorageError> {
        if p.is_root() {
            return Err(StorageError::AlreadyExists);
        }
        let (dir, name) = self.open_parent(p)?;
        rustix::fs::mkdirat(&*dir, name, Mode::from_raw_mode(DIR_MODE))?;
        Ok(())
    }

    /// Removes a file or a symlink (never the link's target). A directory is `IsADirectory`.
    /// Returns what the removed name took (measured just before, on the same directory
    /// handle; exact when the caller keeps other changes of the home out meanwhile).
    pub fn remove_file(&self, p: &RemotePath) -> Result<Footprint, StorageError> {
        if p.is_root() {
            return Err(StorageError::IsADirectory);
        }
        let (dir, name) = self.open_parent(p)?;
        let gone = footprint_at(&dir, name)?;
        // On Linux, unlink(2) of a directory fails with EISDIR.
        rustix::fs::unlinkat(&*dir, name, AtFlags::empty())?;
        Ok(gone)
    }

    /// Removes an empty directory; a non-empty one is `DirectoryNotEmpty`, a non-directory
    /// (including a symlink to a directory) `NotADirectory`, the root `PermissionDenied`.
    /// Returns what the directory took (one file).
    pub fn remove_dir(&self, p: &RemotePath) -> Result<Footprint, StorageError> {
        if p.is_root() {
            return Err(StorageError::PermissionDenied);
        }
        let (dir, name) = self.open_parent(p)?;
        let gone = footprint_at(&dir, name)?;
        match rustix::fs::unlinkat(&*dir, name, AtFlags::REMOVEDIR) {
            Ok(()) => Ok(gone),
            // POSIX allows EEXIST for a non-empty directory.
            Err(Errno::EXIST | Errno::NOTEMPTY) => Err(StorageError::DirectoryNotEmpty),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames within the home. Without `overwrite` an existing target is `AlreadyExists`,
    /// decided atomically by the kernel (`RENAME_NOREPLACE`; on a file system without it,
    /// non-directories fall back to link + unlink). With `overwrite` it is a plain rename(2).
    /// The root on either side is `InvalidArgument`, as is moving a directory into itself and
    /// moving across mount points. A directory moved deeper is refused (`TooDeep`) if anything
    /// in it would end up deeper than [`MAX_PATH_DEPTH`]; that check looks at no more than
    /// [`RENAME_DEPTH_CHECK_MAX_DIRS`] directories (a bigger tree is `InvalidArgument`).
    ///
    /// Returns what the replaced target took: nothing without `overwrite`, and nothing when
    /// both names are the same file (rename(2) then leaves both in place).
    pub fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        overwrite: bool,
    ) -> Result<Footprint, StorageError> {
        if from.is_root() || to.is_root() {
            return Err(StorageError::InvalidArgument);
        }
        let (from_dir, from_name) = self.open_parent(from)?;
        let (to_dir, to_name) = self.open_parent(to)?;
        let Some(src) = lstat_at(&from_dir, from_name)? else {
            return Err(StorageError::NotFound);
        };
        if FileType::from_raw_mode(src.st_mode) == FileType::Directory
            && to.components().len() > from.components().len()
        {
            let room = MAX_PATH_DEPTH.saturating_sub(to.components().len());
            check_depth(&from_dir.open_dir(from_name)?, room)?;
        }
        if !overwrite {
            rename_noreplace(&from_dir, from_name, &to_dir, to_name)?;
            return Ok(Footprint::NONE);
        }
        let replaced = match lstat_at(&to_dir, to_name)? {
            Some(dst) if (dst.st_dev, dst.st_ino) == (src.st_dev, src.st_ino) => Footprint::NONE,
            Some(dst) => footprint_of(&dst, to_name.as_bytes()),
            None => Footprint::NONE,
        };
        rustix::fs::renameat(&*from_dir, from_name, &*to_dir, to_name).map_err(rename_error)?;
        Ok(replaced)
    }

    /// Opens the parent of a non-root path beneath the home and returns it with the last name.
    fn open_parent<'p>(&self, p: &'p RemotePath) -> Result<(DirRef<'_>, &'p str), StorageError> {
        let Some((name, parent)) = p.components.split_last() else {
            return Err(StorageError::InvalidArgument);
        };
        let dir = if parent.is_empty() {
            DirRef::Home(&self.home)
        } else {
            DirRef::Sub(self.home.open_dir(parent.join("/"))?)
        };
        Ok((dir, name))
    }

    /// Like `open_parent`, but always an owned descriptor; the root is `IsADirectory`.
    fn open_parent_owned(&self, p: &RemotePath) -> Result<Dir, StorageError> {
        Ok(match self.open_parent(p) {
            Err(StorageError::InvalidArgument) if p.is_root() => {
                return Err(StorageError::IsADirectory);
            }
            Err(e) => return Err(e),
            Ok((DirRef::Home(home), _)) => home.try_clone()?,
            Ok((DirRef::Sub(dir), _)) => dir,
        })
    }
}

/// `renameat2(RENAME_NOREPLACE)`, with a link + unlink fallback for non-directories on file
/// systems that answer `EINVAL` to the flag. `linkat` refuses an existing target just as
/// atomically; the cost is a moment where both names exist.
/// How many numbered names a commit at the next free name tries before it gives up
/// (`AlreadyExists`).
pub const MAX_FREE_NAME_TRIES: u32 = 1000;

/// `name` itself for `n` = 0, else `stem (n).ext`: the number goes before the last extension
/// (`report (1).pdf`, `archive.tar (1).gz`), or at the end of a name without one or of a
/// dot-file (`.profile (1)`). The result stays within the name length limit: the stem is cut
/// at a character boundary if needed.
pub fn numbered_name(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    let suffix = format!(" ({n})");
    let (stem, ext) = match name.rfind('.') {
        // An extension that leaves no room for the number is part of the stem.
        Some(i) if i > 0 && name.len() - i + suffix.len() < MAX_NAME_LEN => name.split_at(i),
        _ => (name, ""),
    };
    let room = MAX_NAME_LEN.saturating_sub(suffix.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}{ext}", &stem[..cut])
}

fn rename_noreplace(
    from_dir: &Dir,
    from: &str,
    to_dir: &Dir,
    to: &str,
) -> Result<(), StorageError> {
    match rustix::fs::renameat_with(from_dir, from, to_dir, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::INVAL) => {
            let st = rustix::fs::statat(from_dir, from, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                // Either a directory into itself, or no NOREPLACE for directories here.
                return Err(StorageError::InvalidArgument);
            }
            rustix::fs::linkat(from_dir, from, to_dir, to, AtFlags::empty())
                .map_err(rename_error)?;
            rustix::fs::unlinkat(from_dir, from, AtFlags::empty())?;
            Ok(())
        }
        Err(e) => Err(rename_error(e)),
    }
}

/// What the entry `name` described by `st` takes: a regular file its size and one file, a
/// directory one file (unless it is one of the server's own), anything else nothing.
fn footprint_of(st: &rustix::fs::Stat, name: &[u8]) -> Footprint {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Footprint {
            bytes: u64::try_from(st.st_size).unwrap_or(0),
            files: 1,
        },
        FileType::Directory if !is_reserved(name) => Footprint { bytes: 0, files: 1 },
        _ => Footprint::NONE,
    }
}

/// When a long walk of a home gives up: at a deadline, or once its flag is raised (the login
/// that started it went away). Clones share the flag.
#[derive(Debug, Clone)]
pub struct Stop {
    deadline: std::time::Instant,
    flag: Arc<AtomicBool>,
}

impl Stop {
    /// Stops at `deadline`, or earlier when [`Stop::raise`] is called.
    pub fn at(deadline: std::time::Instant) -> Stop {
        Stop {
            deadline,
            flag: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Stops after `limit`.
    pub fn after(limit: std::time::Duration) -> Stop {
        let now = std::time::Instant::now();
        Stop::at(now.checked_add(limit).unwrap_or(now))
    }

    /// Makes every clone stop now.
    pub fn raise(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }

    /// Time left before the deadline (zero once raised or past it).
    pub fn left(&self) -> std::time::Duration {
        if self.flag.load(Ordering::Relaxed) {
            return std::time::Duration::ZERO;
        }
        self.deadline
            .saturating_duration_since(std::time::Instant::now())
    }

    /// Whether it is time to stop.
    pub fn fired(&self) -> bool {
        self.flag.load(Ordering::Relaxed) || std::time::Instant::now() >= self.deadline
    }

    fn error() -> StorageError {
        StorageError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "walk of the home stopped before it ended",
        ))
    }
}

/// One entry a [`walk`] saw.
struct Seen {
    footprint: Footprint,
    is_dir: bool,
}

/// Visits every entry below `start`, depth first, never following symlinks. Entries of
/// `start` are at depth 1; one deeper than `max_depth` fails the walk with `TooDeep`, as does
/// a directory that cannot be opened or read (one that vanished meanwhile is skipped) and a
/// `stop` that fires. A handle stays open only on every [`WALK_ANCHOR_EVERY`]th level of the
/// current branch, so at most `max_depth / WALK_ANCHOR_EVERY + 3` descriptors are in use
/// however wide or deep the tree is; the names still to visit are the only memory it grows.
fn walk(
    start: &Dir,
    max_depth: usize,
    stop: &Stop,
    mut visit: impl FnMut(&Seen) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    struct Level {
        /// An open handle on this directory, on anchor levels only.
        anchor: Option<Dir>,
        /// Its name in the level above.
        name: std::ffi::OsString,
        /// Subdirectories not visited yet.
        subdirs: Vec<std::ffi::OsString>,
    }
    let subdirs = read_level(start, 1, max_depth, stop, &mut visit)?;
    let mut stack = vec![Level {
        anchor: Some(start.try_clone()?),
        name: std::ffi::OsString::new(),
        subdirs,
    }];
    loop {
        let Some(top) = stack.last_mut() else {
            return Ok(());
        };
        let Some(child) = top.subdirs.pop() else {
            stack.pop();
            continue;
        };
        if stop.fired() {
            return Err(Stop::error());
        }
        // The nearest open ancestor (level 0 always is one) and the names below it.
        let Some((at, anchor)) = stack
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, l)| l.anchor.as_ref().map(|a| (i, a)))
        else {
            return Err(StorageError::InvalidArgument);
        };
        let mut rel = PathBuf::new();
        for level in &stack[at + 1..] {
            rel.push(&level.name);
        }
        rel.push(&child);
        let depth = stack.len();
        let dir = match anchor.open_dir(&rel) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        let subdirs = read_level(&dir, depth + 1, max_depth, stop, &mut visit)?;
        stack.push(Level {
            anchor: (depth % WALK_ANCHOR_EVERY == 0).then_some(dir),
            name: child,
            subdirs,
        });
    }
}

/// Visits the entries of one directory (at `depth`) and returns the names of its
/// subdirectories.
fn read_level(
    dir: &Dir,
    depth: usize,
    max_depth: usize,
    stop: &Stop,
    visit: &mut impl FnMut(&Seen) -> Result<(), StorageError>,
) -> Result<Vec<std::ffi::OsString>, StorageError> {
    let mut subdirs = Vec::new();
    for (n, item) in dir.entries()?.enumerate() {
        if n % 4096 == 4095 && stop.fired() {
            return Err(Stop::error());
        }
        let item = item?;
        if depth > max_depth {
            return Err(StorageError::InvalidPath(PathError::TooDeep));
        }
        let name = item.file_name();
        let st = match rustix::fs::statat(dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        visit(&Seen {
            footprint: footprint_of(&st, name.as_bytes()),
            is_dir,
        })?;
        if is_dir {
            subdirs.push(name);
        }
    }
    Ok(subdirs)
}

/// `lstat` of one name in `dir`; `None` if there is nothing by that name.
fn lstat_at(dir: &Dir, name: &str) -> Result<Option<rustix::fs::Stat>, StorageError> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What the entry `name` of `dir` takes (nothing if there is none).
fn footprint_at(dir: &Dir, name: &str) -> Result<Footprint, StorageError> {
    Ok(lstat_at(dir, name)?
        .map(|st| footprint_of(&st, name.as_bytes()))
        .unwrap_or(Footprint::NONE))
}

/// Fails with `TooDeep` if anything in `dir` lies more than `room` levels below it, and with
/// `InvalidArgument` if finding out would take more than [`RENAME_DEPTH_CHECK_MAX_DIRS`]
/// directories or [`RENAME_DEPTH_CHECK_TIME`].
fn check_depth(dir: &Dir, room: usize) -> Result<(), StorageError> {
    let mut dirs = 0u64;
    let stop = Stop::after(RENAME_DEPTH_CHECK_TIME);
    walk(dir, room, &stop, |seen| {
        dirs += u64::from(seen.is_dir);
        if dirs > RENAME_DEPTH_CHECK_MAX_DIRS {
            return Err(StorageError::InvalidArgument);
        }
        Ok(())
    })
    .map_err(|e| match e {
        StorageError::Io(io) if io.kind() == io::ErrorKind::TimedOut => {
            StorageError::InvalidArgument
        }
        e => e,
    })
}

/// Partial keys are made by the server (hex digests), never by clients; check anyway.
fn check_partial_key(key: &str) -> Result<(), StorageError> {
    if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(StorageError::InvalidArgument);
    }
    Ok(())
}

/// A directory that holds a renamed-in file and still needs an fsync for the rename to be
/// durable.
#[derive(Debug)]
pub struct UnsyncedDir {
    dir: Dir,
    /// The name the file landed under, when it is not the one asked for (see
    /// [`TempFile::land_at_next_free_name`]).
    landed_as: Option<String>,
}

impl UnsyncedDir {
    /// The name the file landed under, if another than asked for.
    pub fn landed_as(&self) -> Option<&str> {
        self.landed_as.as_deref()
    }

    /// Fsyncs the directory.
    pub fn sync(&self) -> Result<(), StorageError> {
        sync_dir(&self.dir)
    }

    /// Fsyncs each distinct directory of `dirs` once (many files committed into one directory
    /// cost one fsync: group commit). Returns one result per input, in order: a directory's
    /// result is shared by every entry that names it.
    pub fn sync_all(dirs: &[&UnsyncedDir]) -> Vec<Result<(), StorageError>> {
        let mut done: Vec<((u64, u64), Result<(), i32>)> = Vec::new();
        dirs.iter()
            .map(|d| {
                let key = match rustix::fs::fstat(&d.dir) {
                    Ok(st) => (st.st_dev, st.st_ino),
                    Err(e) => return Err(e.into()),
                };
                let result = match done.iter().find(|(k, _)| *k == key) {
                    Some((_, r)) => *r,
                    None => {
                        let r = sync_dir(&d.dir).map_err(|e| match e {
                            StorageError::Io(io) => io.raw_os_error().unwrap_or(libc_eio()),
                            _ => libc_eio(),
                        });
                        done.push((key, r));
                        r
                    }
                };
                result.map_err(|code| StorageError::from_io(io::Error::from_raw_os_error(code)))
            })
            .collect()
    }
}

fn libc_eio() -> i32 {
    Errno::IO.raw_os_error()
}

/// Fsyncs a directory. The `Dir` descriptors are `O_PATH`, which fsync refuses, so open the
/// directory itself for reading (".": a single name that cannot leave it).
fn sync_dir(dir: &Dir) -> Result<(), StorageError> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::fs::fsync(&fd)?;
    Ok(())
}

fn entry_name(p: &RemotePath) -> String {
    p.file_name().unwrap_or("/").to_owned()
}

fn entry(name: String, meta: &Metadata) -> Entry {
    let file_type = meta.file_type();
    let kind = if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_file() {
        EntryKind::File
    } else if file_type.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    };
    Entry {
        name,
        kind,
        size: meta.len(),
        mtime: meta.mtime(),
        mode: meta.mode() & 0o7777,
    }
}

// The fields' types vary by platform (`st_mode` is 16 bits on some, `st_mtime` 32 on others).
#[allow(clippy::unnecessary_cast)]
fn entry_of_stat(name: String, st: &rustix::fs::Stat) -> Entry {
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::Directory => EntryKind::Dir,
        FileType::RegularFile => EntryKind::File,
        FileType::Symlink => EntryKind::Symlink,
        _ => EntryKind::Other,
    };
    Entry {
        name,
        kind,
        size: st.st_size as u64,
        mtime: st.st_mtime as i64,
        mode: st.st_mode as u32 & 0o7777,
    }
}

/// A temp file beside its target. Dropping it without [`TempFile::commit`] removes it
/// (best effort, never panics).
#[derive(Debug)]
pub struct TempFile {
    /// The directory holding the temp, opened when it was created. Commit renames relative to
    /// this descriptor, so swapping the directory path afterwards cannot redirect the commit.
    parent: Dir,
    temp_name: String,
    target_name: String,
    file: File,
    /// Set once the temp name is gone (renamed into place), so `Drop` leaves it alone.
    committed: bool,
    /// Land under the next free name (`name (1).ext`, ...) when the target exists, instead of
    /// refusing: a drop link's uploads, which may neither replace nor learn what exists.
    next_free_name: bool,
    /// True after a successful fsync, false again once `file()` hands out the file.
    synced: bool,
    /// errno of a failed fsync. After one, the kernel may have dropped the dirty pages and a
    /// second fsync would succeed on lost data, so the failure sticks.
    sync_error: Option<i32>,
}

impl TempFile {
    fn create(parent: &Dir, temp_name: &str) -> Result<File, StorageError> {
        let mut options = OpenOptions::new();
        // create_new is O_CREAT|O_EXCL: never follows or reuses anything already there.
        options
            .read(true)
            .write(true)
            .create_new(true)
            .mode(TEMP_MODE);
        Ok(parent.open_with(temp_name, &options)?.into_std())
    }

    fn new(parent: Dir, temp_name: String, target: &RemotePath, file: File) -> TempFile {
        TempFile {
            parent,
            temp_name,
            target_name: target.file_name().unwrap_or_default().to_owned(),
            file,
            committed: false,
            next_free_name: false,
            synced: false,
            sync_error: None,
        }
    }

    /// Without `overwrite`, an existing target no longer refuses the commit: the file lands
    /// under the first free name of `stem (1).ext`, `stem (2).ext`, ... (at most
    /// [`MAX_FREE_NAME_TRIES`]), each tried atomically, so two uploads of one name at once
    /// both land, under two names. The name used is [`UnsyncedDir::landed_as`].
    pub fn land_at_next_free_name(&mut self) {
        self.next_free_name = true;
    }

    /// The open temp file, for `write_all`.
    pub fn file(&mut self) -> &mut File {
        self.synced = false;
        &mut self.file
    }

    /// Records `sha256` (64 hex digits) as the digest of what the temp holds now, in the
    /// file's own metadata (see [`crate::stored_digest`]), so a later download of the
    /// unchanged file need not hash it. Call it after the last write; the fsync or `syncfs`
    /// that follows makes the record durable with the data (it counts as a change: an earlier
    /// fsync no longer covers the file). Best effort: it never fails.
    pub fn record_sha256(&mut self, sha256: &str) {
        crate::stored_digest::record(&self.file, sha256);
        self.synced = false;
    }

    /// Fsyncs the file data (`sync_all`). A failure is final: later calls and
    /// [`TempFile::commit`] fail with the same error, never retrying.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if let Some(code) = self.sync_error {
            return Err(io::Error::from_raw_os_error(code).into());
        }
        match self.file.sync_all() {
            Ok(()) => {
                self.synced = true;
                Ok(())
            }
            Err(e) => {
                self.sync_error = Some(e.raw_os_error().unwrap_or(Errno::IO.raw_os_error()));
                Err(e.into())
            }
        }
    }

    /// Fsyncs the file if that has not been done since the last write, renames it into place
    /// and fsyncs the directory. Without `overwrite` an existing target is refused atomically
    /// (`AlreadyExists`). With `overwrite` it is a plain rename: a symlink at the target is
    /// replaced (its target untouched), a directory is `IsADirectory`. On an error before the
    /// rename the temp is removed; an error from the final directory fsync means the file is
    /// already in place but may not survive a crash.
    ///
    /// Returns what the replaced target took (see [`TempFile::rename_into_place`]).
    pub fn commit(self, overwrite: bool) -> Result<Footprint, StorageError> {
        let (dir, replaced) = self.rename_into_place(overwrite)?;
        dir.sync()?;
        Ok(replaced)
    }

    /// The first half of [`TempFile::commit`]: fsync (if needed) and rename into place, but
    /// leave the directory fsync to the caller, who may batch it with other files of the same
    /// directory ([`UnsyncedDir::sync_all`]). The commit is durable, and may be acknowledged,
    /// only once the returned directory is synced.
    ///
    /// Also returns what the replaced target took, measured just before the rename on the
    /// same directory handle (nothing without `overwrite`).
    pub fn rename_into_place(
        self,
        overwrite: bool,
    ) -> Result<(UnsyncedDir, Footprint), StorageError> {
        self.rename_into_place_if(overwrite, |_| Ok(()))
    }

    /// [`TempFile::rename_into_place`], but `admit` is shown what the target takes right
    /// before the rename and may refuse it (the quota: what the file replaces may have
    /// changed since its room was reserved); on a refusal the temp is removed and the target
    /// left as it is.
    pub fn rename_into_place_if(
        mut self,
        overwrite: bool,
        admit: impl FnOnce(Footprint) -> Result<(), StorageError>,
    ) -> Result<(UnsyncedDir, Footprint), StorageError> {
        if !self.synced {
            self.sync()?;
        }
        // Before the rename: once the file is in place, nothing may fail any more.
        let mut unsynced = UnsyncedDir {
            dir: self.parent.try_clone()?,
            landed_as: None,
        };
        let (dir, temp, target) = (&self.parent, &self.temp_name, &self.target_name);
        let replaced = if overwrite {
            let replaced = footprint_at(dir, target)?;
            admit(replaced)?;
            rustix::fs::renameat(dir, temp, dir, target).map_err(rename_error)?;
            replaced
        } else if self.next_free_name {
            admit(Footprint::NONE)?;
            let mut tried = 0;
            loop {
                let name = numbered_name(target, tried);
                match rename_noreplace(dir, temp, dir, &name) {
                    Ok(()) => {
                        unsynced.landed_as = (tried > 0).then_some(name);
                        break;
                    }
                    Err(StorageError::AlreadyExists) if tried < MAX_FREE_NAME_TRIES => tried += 1,
                    Err(e) => return Err(e),
                }
            }
            Footprint::NONE
        } else {
            admit(Footprint::NONE)?;
            rename_noreplace(dir, temp, dir, target)?;
            Footprint::NONE
        };
        self.committed = true;
        Ok((unsynced, replaced))
    }

    /// Records that the file's data is durable by other means (a successful
    /// [`Jail::sync_filesystem`] after the last write), so that committing it does not fsync
    /// it again.
    pub fn mark_synced(&mut self) {
        if self.sync_error.is_none() {
            self.synced = true;
        }
    }

    /// Keeps the temp file as the partial upload `key` (replacing an older one), for a later
    /// resume. The data is fsynced first so that a resume never builds on lost bytes.
    /// Returns what the older partial took (nothing if there was none).
    pub fn keep_as_partial(mut self, jail: &Jail, key: &str) -> Result<Footprint, StorageError> {
        check_partial_key(key)?;
        if !self.synced {
            self.sync()?;
        }
        let Some(partials) = jail.partials_dir(true)? else {
            return Err(StorageError::NotFound);
        };
        let replaced = footprint_at(&partials, key)?;
        rustix::fs::renameat(&self.parent, &self.temp_name, &partials, key)
            .map_err(rename_error)?;
        self.committed = true;
        Ok(replaced)
    }

    /// Current length of the temp file.
    pub fn size(&self) -> Result<u64, StorageError> {
        Ok(self.file.metadata()?.len())
    }

    /// Removes the temp file now.
    pub fn discard(self) {
        drop(self);
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: nothing useful to do if it fails (the name is reserved, so the
            // client can never see it; an admin may clean `.ferry-tmp.*` up).
            let _ = rustix::fs::unlinkat(&self.parent, &self.temp_name, AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::time::Instant;

    use super::*;

    fn p(s: &str) -> RemotePath {
        RemotePath::parse(s).unwrap()
    }

    #[test]
    fn a_fresh_upload_looks_for_a_partial_to_supersede_only_once_one_may_exist() {
        let dir = tempfile::tempdir().unwrap();
        let keep = |jail: &Jail, key: &str| {
            let mut t = jail.create_temp(&p("f")).unwrap();
            t.file().write_all(b"abc").unwrap();
            t.keep_as_partial(jail, key).unwrap();
        };
        let early = Jail::open(dir.path(), true).unwrap();
        assert!(!early.partials_may_exist.load(Ordering::Acquire));
        let other = Jail::open(dir.path(), false).unwrap();
        keep(&other, "k1");
        // This jail keeps and supersedes its own partials as before.
        assert_eq!(other.remove_superseded_partial("k1").unwrap(), Some(3));
        keep(&other, "k1");
        // One opened before any partial existed skips the lookup (the partial stays, counted,
        // until resumed or swept); resumes still find it.
        assert_eq!(early.remove_superseded_partial("k1").unwrap(), None);
        assert_eq!(early.partial_size("k1").unwrap(), Some(3));
        // One opened later looks, and supersedes it.
        let late = Jail::open(dir.path(), false).unwrap();
        assert_eq!(late.remove_superseded_partial("k1").unwrap(), Some(3));
        assert_eq!(late.partial_size("k1").unwrap(), None);
        // A bad key is refused either way.
        assert!(early.remove_superseded_partial("../x").is_err());
    }

    // ---- RemotePath ----

    #[test]
    fn parse_accepts_and_normalises() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("/", &[]),
            (".", &[]),
            ("//./", &[]),
            ("a", &["a"]),
            ("/a", &["a"]),
            ("a/", &["a"]),
            ("/a//b/./", &["a", "b"]),
            ("./a/./b/.", &["a", "b"]),
            ("...", &["..."]),
            ("..a/b..", &["..a", "b.."]),
            (".hidden", &[".hidden"]),
            (".ferry", &[".ferry"]),
            ("ferry-x/x.ferry-", &["ferry-x", "x.ferry-"]),
            ("a b/ c ", &["a b", " c "]),
            ("ünïcødé/日本", &["ünïcødé", "日本"]),
            ("\u{200F}", &["\u{200F}"]),
        ];
        for (input, want) in cases {
            let got = RemotePath::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(got.components(), *want, "{input:?}");
        }
        assert_eq!(p("/a//b/./"), p("a/b"));
        assert!(p("").is_root());
        assert_eq!(p("/"), RemotePath::root());
    }

    #[test]
    fn parse_refuses() {
        let long_name = "x".repeat(256);
        let long_path = "/a".repeat(2049);
        let cases: &[(&str, PathError)] = &[
            ("a\0b", PathError::Nul),
            ("a\\b", PathError::Backslash),
            ("\\", PathError::Backslash),
            ("a\nb", PathError::ControlChar),
            ("\t", PathError::ControlChar),
            ("\x1b[31m", PathError::ControlChar),
            ("a\x7f", PathError::ControlChar),
            ("a\u{80}", PathError::ControlChar),
            ("a\u{85}", PathError::ControlChar),
            ("a\u{9f}", PathError::ControlChar),
            ("a\u{202A}", PathError::BidiControl),
            ("evil\u{202E}txt.exe", PathError::BidiControl),
            ("\u{2066}", PathError::BidiControl),
            ("\u{2069}", PathError::BidiControl),
            (&long_name, PathError::NameTooLong),
            (&long_path, PathError::TooLong),
            (".ferry-tmp.1234", PathError::Reserved),
            ("a/.ferry-", PathError::Reserved),
            ("a/.FERRY-x/b", PathError::Reserved),
        ];
        for (input, want) in cases {
            assert_eq!(RemotePath::parse(input), Err(*want), "{input:?}");
        }
    }

    #[test]
    fn parse_refuses_dotdot_in_every_position() {
        for input in [
            "..",
            "/..",
            "../",
            "/../",
            "../a",
            "/../a",
            "a/..",
            "a/../",
            "/a/..",
            "a/../b",
            "a/b/../..",
            "./..",
            "a//..//b",
            "a/./../b",
            "../../../../etc/passwd",
        ] {
            assert_eq!(
                RemotePath::parse(input),
                Err(PathError::ParentDir),
                "{input:?}"
            );
        }
    }

    #[test]
    fn length_limits_are_inclusive() {
        let name = "n".repeat(MAX_NAME_LEN);
        assert_eq!(p(&name).components(), std::slice::from_ref(&name));
        // 16 × "/<255 bytes>" = 4096 bytes exactly.
        let path = format!("/{name}").repeat(16);
        assert_eq!(path.len(), MAX_PATH_LEN);
        let parsed = p(&path);
        assert_eq!(parsed.to_string(), path);
        assert!(parsed.parent().unwrap().join("x").is_ok());
        assert_eq!(parsed.join("x"), Err(PathError::TooLong));
        // A multi-byte name is measured in bytes: 128 × 2 bytes = 256.
        assert_eq!(
            RemotePath::parse(&"é".repeat(128)),
            Err(PathError::NameTooLong)
        );
    }

    #[test]
    fn accessors() {
        let ab = p("/a/b");
        assert_eq!(ab.to_string(), "/a/b");
        assert_eq!(RemotePath::root().to_string(), "/");
        assert_eq!(ab.as_relative(), PathBuf::from("a/b"));
        assert_eq!(RemotePath::root().as_relative(), PathBuf::from("."));
        assert_eq!(ab.file_name(), Some("b"));
        assert_eq!(RemotePath::root().file_name(), None);
        assert_eq!(ab.parent(), Some(p("a")));
        assert_eq!(p("a").parent(), Some(RemotePath::root()));
        assert_eq!(RemotePath::root().parent(), None);
        assert_eq!(p("a").join("b"), Ok(ab));
        for bad in ["", ".", "a/b", "/", "b/"] {
            assert_eq!(p("a").join(bad), Err(PathError::NotAName), "{bad:?}");
        }
        assert_eq!(p("a").join(".."), Err(PathError::ParentDir));
        assert_eq!(p("a").join(".ferry-x"), Err(PathError::Reserved));
        assert_eq!(p("a").join("x\u{1}"), Err(PathError::ControlChar));
        assert_eq!(p("a").join(&"x".repeat(256)), Err(PathError::NameTooLong));
    }

    // ---- Jail fixtures ----

    /// tmp/home (the jail), tmp/outside/{secret.txt, sub/}, tmp/bob/bob.txt (a sibling home).
    struct World {
        tmp: tempfile::TempDir,
        jail: Jail,
    }

    impl World {
        fn new() -> World {
            let tmp = tempfile::tempdir().unwrap();
            let outside = tmp.path().join("outside");
            std::fs::create_dir(&outside).unwrap();
            std::fs::write(outside.join("secret.txt"), b"secret").unwrap();
            std::fs::create_dir(outside.join("sub")).unwrap();
            std::fs::create_dir(tmp.path().join("bob")).unwrap();
            std::fs::write(tmp.path().join("bob/bob.txt"), b"bob").unwrap();
            let jail = Jail::open(&tmp.path().join("home"), true).unwrap();
            World { tmp, jail }
        }

        fn home(&self) -> PathBuf {
            self.tmp.path().join("home")
        }

        fn outside(&self) -> PathBuf {
            self.tmp.path().join("outside")
        }

        fn write(&self, rel: &str, data: &[u8]) {
            std::fs::write(self.home().join(rel), data).unwrap();
        }

        fn read(&self, rel: &str) -> Vec<u8> {
            std::fs::read(self.home().join(rel)).unwrap()
        }

        /// Names in a home directory, as the OS sees them (temp files included).
        fn names(&self, rel: &str) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(self.home().join(rel))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        }

        fn temps(&self, rel: &str) -> Vec<String> {
            self.names(rel)
                .into_iter()
                .filter(|n| n.starts_with(TEMP_NAME_PREFIX))
                .collect()
        }

        /// Everything observable about the outside world: names, contents, mtimes.
        fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>, i64, i64)> {
            use std::os::unix::fs::MetadataExt as _;
            let mut out = Vec::new();
            for dir in [
                self.outside(),
                self.outside().join("sub"),
                self.tmp.path().join("bob"),
            ] {
                let m = std::fs::symlink_metadata(&dir).unwrap();
                out.push((dir.clone(), Vec::new(), m.mtime(), m.mtime_nsec()));
                for e in std::fs::read_dir(&dir).unwrap() {
                    let path = e.unwrap().path();
                    let m = std::fs::symlink_metadata(&path).unwrap();
                    let data = if m.is_file() {
                        std::fs::read(&path).unwrap()
                    } else {
                        Vec::new()
                    };
                    out.push((path, data, m.mtime(), m.mtime_nsec()));
                }
            }
            out.sort();
            out
        }
    }

    fn assert_escape<T: fmt::Debug>(what: &str, r: Result<T, StorageError>) {
        match r {
            Err(StorageError::Escape) => {}
            other => panic!("{what}: expected Escape, got {other:?}"),
        }
    }

    #[test]
    fn jail_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        fn check_send<T: Send>() {}
        check::<Jail>();
        check_send::<TempFile>();
    }

    #[test]
    fn open_creates_home_0700_and_only_it() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("alice");
        assert!(matches!(
            Jail::open(&home, false),
            Err(StorageError::NotFound)
        ));
        Jail::open(&home, true).unwrap();
        let mode = std::fs::metadata(&home).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Idempotent.
        Jail::open(&home, true).unwrap();
        // Only the last component is created.
        assert!(matches!(
            Jail::open(&tmp.path().join("x/y"), true),
            Err(StorageError::NotFound)
        ));
        std::fs::write(tmp.path().join("file"), b"").unwrap();
        assert!(matches!(
            Jail::open(&tmp.path().join("file"), true),
            Err(StorageError::NotADirectory)
        ));
    }

    #[test]
    fn stat_lstat_and_basic_ops() {
        let w = World::new();
        w.write("f.txt", b"hello");
        std::fs::create_dir(w.home().join("d")).unwrap();
        symlink("f.txt", w.home().join("lnk")).unwrap();

        let root = w.jail.stat(&RemotePath::root()).unwrap();
        assert_eq!((root.name.as_str(), root.kind), ("/", EntryKind::Dir));
        let f = w.jail.stat(&p("f.txt")).unwrap();
        assert_eq!(
            (f.name.as_str(), f.kind, f.size),
            ("f.txt", EntryKind::File, 5)
        );
        assert!(f.mtime > 1_600_000_000);
        let l = w.jail.stat(&p("lnk")).unwrap();
        assert_eq!(
            (l.name.as_str(), l.kind, l.size),
            ("lnk", EntryKind::File, 5)
        );
        let l = w.jail.lstat(&p("lnk")).unwrap();
        assert_eq!(l.kind, EntryKind::Symlink);
        assert!(matches!(
            w.jail.stat(&p("nope")),
            Err(StorageError::NotFound)
        ));
        assert!(matches!(
            w.jail.stat(&p("f.txt/x")),
            Err(StorageError::NotADirectory)
        ));

        w.jail.mkdir(&p("d/e")).unwrap();
        assert!(w.home().join("d/e").is_dir());
        assert!(matches!(
            w.jail.mkdir(&p("d/e")),
            Err(StorageError::AlreadyExists)
        ));
        assert!(matches!(
            w.jail.mkdir(&p("f.txt")),
            Err(StorageError::AlreadyExists)
        ));
        assert!(matches!(
            w.jail.mkdir(&RemotePath::root()),
            Err(StorageError::AlreadyExists)
        ));
        assert!(matches!(
            w.jail.mkdir(&p("x/y")),
            Err(StorageError::NotFound)
        ));

        assert!(matches!(
            w.jail.remove_file(&p("d")),
            Err(StorageError::IsADirectory)
        ));
        assert!(matches!(
            w.jail.remove_file(&RemotePath::root()),
            Err(StorageError::IsADirectory)
        ));
        assert!(matches!(
            w.jail.remove_dir(&p("d")),
            Err(StorageError::DirectoryNotEmpty)
        ));
        assert!(matches!(
            w.jail.remove_dir(&p("f.txt")),
            Err(StorageError::NotADirectory)
        ));
        assert!(matches!(
            w.jail.remove_dir(&RemotePath::root()),
            Err(StorageError::PermissionDenied)
        ));
        w.jail.remove_dir(&p("d/e")).unwrap();
        w.jail.remove_dir(&p("d")).unwrap();
        w.jail.remove_file(&p("lnk")).unwrap();
        assert_eq!(w.read("f.txt"), b"hello");
        w.jail.remove_file(&p("f.txt")).unwrap();
        assert!(w.names("").is_empty());
        assert!(matches!(
            w.jail.remove_file(&p("f.txt")),
            Err(StorageError::NotFound)
        ));
    }

    #[test]
    fn open_read_files_only() {
        let w = World::new();
        w.write("f.txt", b"hello");
        std::fs::create_dir(w.home().join("d")).unwrap();
        let (mut file, e) = w.jail.open_read(&p("f.txt")).unwrap();
        let mut s = String::new();
        file.read_to_string(&mut s).unwrap();
        assert_eq!((s.as_str(), e.size, e.kind), ("hello", 5, EntryKind::File));
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(!flags.contains(OFlags::NONBLOCK));

        assert!(matches!(
            w.jail.open_read(&p("d")),
            Err(StorageError::IsADirectory)
        ));
        assert!(matches!(
            w.jail.open_read(&RemotePath::root()),
            Err(StorageError::IsADirectory)
        ));
        assert!(matches!(
            w.jail.open_read(&p("nope")),
            Err(StorageError::NotFound)
        ));
        // A planted fifo must not hang the server.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            w.home().join("fifo").as_path(),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(matches!(
            w.jail.open_read(&p("fifo")),
            Err(StorageError::InvalidArgument)
        ));
        assert_eq!(w.jail.lstat(&p("fifo")).unwrap().kind, EntryKind::Other);
    }

    #[test]
    fn symlinks_out_of_the_home_are_escapes() {
        let w = World::new();
        let home = w.home();
        std::fs::create_dir(home.join("in")).unwrap();
        w.write("in/mine.txt", b"mine");
        symlink(w.outside(), home.join("out")).unwrap();
        symlink("../outside", home.join("outrel")).unwrap();
        symlink("../../outside", home.join("in/deep")).unwrap();
        symlink(w.outside().join("secret.txt"), home.join("secretlink")).unwrap();
        symlink("/etc", home.join("etc")).unwrap();
        symlink("../bob", home.join("bob")).unwrap();
        symlink("loop", home.join("loop")).unwrap();
        let before = w.snapshot();

        for link in ["out", "outrel", "in/deep", "etc", "bob", "secretlink"] {
            assert_escape(link, w.jail.stat(&p(link)));
            assert_escape(link, w.jail.list(&p(link)).map(|_| ()));
            assert_escape(link, w.jail.open_read(&p(link)));
            assert_eq!(w.jail.lstat(&p(link)).unwrap().kind, EntryKind::Symlink);
        }
        for target in [
            "out/secret.txt",
            "outrel/secret.txt",
            "in/deep/secret.txt",
            "etc/passwd",
            "bob/bob.txt",
        ] {
            let t = p(target);
            assert_escape(target, w.jail.stat(&t));
            assert_escape(target, w.jail.lstat(&t));
            assert_escape(target, w.jail.list(&t).map(|_| ()));
            assert_escape(target, w.jail.open_read(&t));
            assert_escape(target, w.jail.create_temp(&t));
            assert_escape(target, w.jail.remove_file(&t));
            assert_escape(
                target,
                w.jail.remove_dir(&t.parent().unwrap().join("sub").unwrap()),
            );
            assert_escape(
                target,
                w.jail.mkdir(&t.parent().unwrap().join("new").unwrap()),
            );
            assert_escape(target, w.jail.rename(&t, &p("stolen"), true));
            assert_escape(target, w.jail.rename(&p("in/mine.txt"), &t, true));
            assert_escape(target, w.jail.rename(&p("in"), &t, false));
        }
        // A symlink loop is refused like an escape.
        assert_escape("loop", w.jail.stat(&p("loop")));
        assert_escape("loop", w.jail.open_read(&p("loop/x")));

        // The listing shows the links themselves.
        let mut listed: Vec<(String, EntryKind)> = w
            .jail
            .list(&RemotePath::root())
            .unwrap()
            .map(|e| e.map(|e| (e.name, e.kind)).unwrap())
            .collect();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(
            listed
                .iter()
                .all(|(n, k)| n == "in" || *k == EntryKind::Symlink)
        );
        assert_eq!(listed.len(), 7);

        // Committing a temp at a link that leads out replaces the link, never the target.
        let mut t = w.jail.create_temp(&p("secretlink")).unwrap();
        t.file().write_all(b"new").unwrap();
        assert!(matches!(t.commit(false), Err(StorageError::AlreadyExists)));
        let mut t = w.jail.create_temp(&p("secretlink")).unwrap();
        t.file().write_all(b"new").unwrap();
        t.commit(true).unwrap();
        assert_eq!(w.read("secretlink"), b"new");
        assert!(
            !std::fs::symlink_metadata(home.join("secretlink"))
                .unwrap()
                .is_symlink()
        );

        // Removing a link removes the link only.
        w.jail.remove_file(&p("out")).unwrap();
        w.jail.remove_file(&p("etc")).unwrap();
        assert!(w.temps("").is_empty());
        assert_eq!(w.snapshot(), before);
        assert_eq!(
            std::fs::read(w.outside().join("secret.txt")).unwrap(),
            b"secret"
        );
    }

    #[test]
    fn absolute_symlink_into_the_home_is_refused_too() {
        // RESOLVE_BENEATH refuses every absolute symlink, even one pointing back inside.
        let w = World::new();
        std::fs::create_dir(w.home().join("in")).unwrap();
        symlink(w.home().join("in"), w.home().join("abs")).unwrap();
        assert_escape("abs", w.jail.stat(&p("abs")));
    }

    #[test]
    fn symlinks_inside_the_home_work() {
        let w = World::new();
        std::fs::create_dir_all(w.home().join("a/b")).unwrap();
        w.write("a/b/f.txt", b"inside");
        symlink("a/b", w.home().join("ab")).unwrap();
        symlink("../a/b", w.home().join("a/up")).unwrap();
        symlink("b/f.txt", w.home().join("a/flink")).unwrap();

        assert_eq!(w.jail.stat(&p("ab")).unwrap().kind, EntryKind::Dir);
        assert_eq!(w.jail.stat(&p("a/up/f.txt")).unwrap().size, 6);
        let (mut f, e) = w.jail.open_read(&p("a/flink")).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!((s.as_str(), e.name.as_str()), ("inside", "flink"));
        let names: Vec<String> = w
            .jail
            .list(&p("ab"))
            .unwrap()
            .map(|e| e.unwrap().name)
            .collect();
        assert_eq!(names, ["f.txt"]);
        // Listing a file (through a link) yields its one entry, named as asked.
        let one: Vec<Entry> = w
            .jail
            .list(&p("a/flink"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(one.len(), 1);
        assert_eq!(
            (one[0].name.as_str(), one[0].kind),
            ("flink", EntryKind::File)
        );
        w.jail.mkdir(&p("ab/c")).unwrap();
        assert!(w.home().join("a/b/c").is_dir());
        let mut t = w.jail.create_temp(&p("a/up/new.txt")).unwrap();
        t.file().write_all(b"n").unwrap();
        t.commit(false).unwrap();
        assert_eq!(w.read("a/b/new.txt"), b"n");
    }

    #[test]
    fn hardlink_to_outside_file_is_the_same_inode() {
        // A hard link planted by someone with shell access is indistinguishable from a file:
        // reading it reads the outside file. Writes go temp + rename, so they replace the name
        // and never modify the shared inode; removing unlinks the name only.
        let w = World::new();
        let secret = w.outside().join("secret.txt");
        if let Err(e) = std::fs::hard_link(&secret, w.home().join("hl")) {
            eprintln!("skipping: cannot hard link here: {e}");
            return;
        }
        let (mut f, e) = w.jail.open_read(&p("hl")).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!((s.as_str(), e.kind), ("secret", EntryKind::File));

        let mut t = w.jail.create_temp(&p("hl")).unwrap();
        t.file().write_all(b"overwritten").unwrap();
        assert!(matches!(t.commit(false), Err(StorageError::AlreadyExists)));
        let mut t = w.jail.create_temp(&p("hl")).unwrap();
        t.file().write_all(b"overwritten").unwrap();
        t.commit(true).unwrap();
        assert_eq!(w.read("hl"), b"overwritten");
        assert_eq!(std::fs::read(&secret).unwrap(), b"secret");

        std::fs::hard_link(&secret, w.home().join("hl2")).unwrap();
        w.jail.remove_file(&p("hl2")).unwrap();
        assert_eq!(std::fs::read(&secret).unwrap(), b"secret");
    }

    #[test]
    fn temp_file_is_private_exclusive_and_beside_its_target() {
        let w = World::new();
        std::fs::create_dir(w.home().join("d")).unwrap();
        let t1 = w.jail.create_temp(&p("d/x")).unwrap();
        let t2 = w.jail.create_temp(&p("d/x")).unwrap();
        let temps = w.temps("d");
        assert_eq!(temps.len(), 2);
        for name in &temps {
            assert_eq!(name.len(), TEMP_NAME_PREFIX.len() + 32);
            let mode = std::fs::metadata(w.home().join("d").join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Invisible to listings.
        assert_eq!(w.jail.list(&p("d")).unwrap().count(), 0);
        drop(t1);
        t2.discard();
        assert!(w.names("d").is_empty());

        // O_EXCL: a planted symlink at the temp name is neither followed nor reused.
        symlink(
            w.outside().join("secret.txt"),
            w.home().join(".ferry-tmp.planted"),
        )
        .unwrap();
        let before = w.snapshot();
        let home = Dir::open_ambient_dir(w.home(), ambient_authority()).unwrap();
        assert!(matches!(
            TempFile::create(&home, ".ferry-tmp.planted"),
            Err(StorageError::AlreadyExists)
        ));
        assert_eq!(w.snapshot(), before);

        assert!(matches!(
            w.jail.create_temp(&RemotePath::root()),
            Err(StorageError::IsADirectory)
        ));
        assert!(matches!(
            w.jail.create_temp(&p("nope/x")),
            Err(StorageError::NotFound)
        ));
        w.write("f", b"");
        assert!(matches!(
            w.jail.create_temp(&p("f/x")),
            Err(StorageError::NotADirectory)
        ));
    }

    #[test]
    fn commit_new_and_noreplace() {
        let w = World::new();
        let mut t = w.jail.create_temp(&p("new.txt")).unwrap();
        t.file().write_all(b"data").unwrap();
        t.sync().unwrap();
        t.commit(false).unwrap();
        assert_eq!(w.read("new.txt"), b"data");
        assert_eq!(w.names(""), ["new.txt"]);

        w.write("exists.txt", b"old");
        let mut t = w.jail.create_temp(&p("exists.txt")).unwrap();
        t.file().write_all(b"new").unwrap();
        assert!(matches!(t.commit(false), Err(StorageError::AlreadyExists)));
        assert_eq!(w.read("exists.txt"), b"old");
        assert_eq!(w.read("new.txt"), b"data");
        assert!(w.temps("").is_empty());

        let mut t = w.jail.create_temp(&p("exists.txt")).unwrap();
        t.file().write_all(b"new").unwrap();
        t.commit(true).unwrap();
        assert_eq!(w.read("exists.txt"), b"new");
        assert!(w.temps("").is_empty());
    }

    #[test]
    fn commit_overwrite_replaces_symlink_not_its_target() {
        let w = World::new();
        w.write("target.txt", b"target");
        symlink("target.txt", w.home().join("link")).unwrap();
        let mut t = w.jail.create_temp(&p("link")).unwrap();
        t.file().write_all(b"replacement").unwrap();
        t.commit(true).unwrap();
        assert!(
            std::fs::symlink_metadata(w.home().join("link"))
                .unwrap()
                .is_file()
        );
        assert_eq!(w.read("link"), b"replacement");
        assert_eq!(w.read("target.txt"), b"target");

        std::fs::create_dir(w.home().join("dir")).unwrap();
        let t = w.jail.create_temp(&p("dir")).unwrap();
        assert!(matches!(t.commit(true), Err(StorageError::IsADirectory)));
        let t = w.jail.create_temp(&p("dir")).unwrap();
        assert!(matches!(t.commit(false), Err(StorageError::AlreadyExists)));
        assert!(w.temps("").is_empty());
    }

    #[test]
    fn sync_failure_sticks() {
        let w = World::new();
        let mut t = w.jail.create_temp(&p("x")).unwrap();
        t.sync_error = Some(Errno::IO.raw_os_error());
        assert!(matches!(t.sync(), Err(StorageError::Io(_))));
        assert!(matches!(t.commit(false), Err(StorageError::Io(_))));
        assert!(w.names("").is_empty());
    }

    #[test]
    fn list_skips_reserved_names_and_streams_100k() {
        let w = World::new();
        let dir = w.home().join("many");
        std::fs::create_dir(&dir).unwrap();
        w.write("many/.ferry-tmp.abc", b"");
        w.write("many/.Ferry-other", b"");
        w.write("many/.ferryx", b"");
        let start = Instant::now();
        // Hard links: allocating 100,000 inodes takes seconds on ext4, adding names does not.
        // ext4 caps links per inode at 65,000, so spread them over a few source files.
        const N: usize = 100_000;
        const LINKS_PER_SOURCE: usize = 50_000;
        let dirfd =
            rustix::fs::open(&dir, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
        let tmpfd = rustix::fs::open(
            w.tmp.path(),
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap();
        for i in 0..N {
            let source = format!("source{}", i / LINKS_PER_SOURCE);
            if i % LINKS_PER_SOURCE == 0 {
                std::fs::write(w.tmp.path().join(&source), b"").unwrap();
            }
            rustix::fs::linkat(&tmpfd, &source, &dirfd, format!("f{i}"), AtFlags::empty()).unwrap();
        }
        let created = start.elapsed();
        let start = Instant::now();
        let mut count = 0;
        let mut saw_ferryx = false;
        for e in w.jail.list(&p("many")).unwrap() {
            let e = e.unwrap();
            assert!(
                !e.name.to_ascii_lowercase().starts_with(RESERVED_PREFIX),
                "{}",
                e.name
            );
            saw_ferryx |= e.name == ".ferryx";
            count += 1;
        }
        eprintln!(
            "created {N} in {created:?}, listed in {:?}",
            start.elapsed()
        );
        assert_eq!(count, N + 1);
        assert!(saw_ferryx);
    }

    #[test]
    fn rename_rules() {
        let w = World::new();
        w.write("a", b"a");
        w.write("b", b"b");
        std::fs::create_dir_all(w.home().join("d/e")).unwrap();

        assert!(matches!(
            w.jail.rename(&p("a"), &p("b"), false),
            Err(StorageError::AlreadyExists)
        ));
        assert_eq!((w.read("a"), w.read("b")), (b"a".to_vec(), b"b".to_vec()));
        w.jail.rename(&p("a"), &p("d/a2"), false).unwrap();
        assert_eq!(w.read("d/a2"), b"a");
        w.jail.rename(&p("d/a2"), &p("b"), true).unwrap();
        assert_eq!(w.read("b"), b"a");
        assert!(matches!(
            w.jail.rename(&p("nope"), &p("x"), false),
            Err(StorageError::NotFound)
        ));
        assert!(matches!(
            w.jail.rename(&p("d"), &p("d/e/d"), false),
            Err(StorageError::InvalidArgument)
        ));
        assert!(matches!(
            w.jail.rename(&p("d"), &p("d/e/d"), true),
            Err(StorageError::InvalidArgument)
        ));
        assert!(matches!(
            w.jail.rename(&RemotePath::root(), &p("x"), true),
            Err(StorageError::InvalidArgument)
        ));
        assert!(matches!(
            w.jail.rename(&p("b"), &RemotePath::root(), true),
            Err(StorageError::InvalidArgument)
        ));
        assert!(matches!(
            w.jail.rename(&p("b"), &p("d"), true),
            Err(StorageError::IsADirectory)
        ));
        w.jail.rename(&p("d"), &p("d2"), false).unwrap();
        assert!(w.home().join("d2/e").is_dir());
    }

    #[test]
    fn from_io_mapping() {
        use io::ErrorKind as K;
        let cases = [
            (
                io::Error::from_raw_os_error(Errno::NOENT.raw_os_error()),
                "NotFound",
            ),
            (
                io::Error::from_raw_os_error(Errno::EXIST.raw_os_error()),
                "AlreadyExists",
            ),
            (
                io::Error::from_raw_os_error(Errno::ACCESS.raw_os_error()),
                "PermissionDenied",
            ),
            (
                io::Error::from_raw_os_error(Errno::PERM.raw_os_error()),
                "PermissionDenied",
            ),
            (
                io::Error::from_raw_os_error(Errno::NOTDIR.raw_os_error()),
                "NotADirectory",
            ),
            (
                io::Error::from_raw_os_error(Errno::ISDIR.raw_os_error()),
                "IsADirectory",
            ),
            (
                io::Error::from_raw_os_error(Errno::NOTEMPTY.raw_os_error()),
                "DirectoryNotEmpty",
            ),
            (
                io::Error::from_raw_os_error(Errno::NOSPC.raw_os_error()),
                "NoSpace",
            ),
            (
                io::Error::from_raw_os_error(Errno::DQUOT.raw_os_error()),
                "QuotaExceeded",
            ),
            (
                io::Error::from_raw_os_error(Errno::XDEV.raw_os_error()),
                "Escape",
            ),
            (
                io::Error::from_raw_os_error(Errno::LOOP.raw_os_error()),
                "Escape",
            ),
            (
                io::Error::from_raw_os_error(Errno::INVAL.raw_os_error()),
                "InvalidArgument",
            ),
            (io::Error::from_raw_os_error(Errno::IO.raw_os_error()), "Io"),
            // What cap-std returns for an escape.
            (
                io::Error::new(K::PermissionDenied, "a path led outside of the filesystem"),
                "Escape",
            ),
            (io::Error::from(K::NotFound), "NotFound"),
            (io::Error::other("x"), "Io"),
        ];
        for (e, want) in cases {
            let got = format!("{:?}", StorageError::from_io(e));
            assert!(got.starts_with(want), "{got} vs {want}");
        }
    }

    #[test]
    fn error_messages_do_not_leak_paths() {
        let w = World::new();
        w.write("f", b"");
        symlink(w.outside(), w.home().join("out")).unwrap();
        let tmp = w.tmp.path().to_string_lossy().into_owned();
        let errors = [
            w.jail.stat(&p("nope")).unwrap_err(),
            w.jail.stat(&p("out/secret.txt")).unwrap_err(),
            w.jail.open_read(&p("out/secret.txt")).unwrap_err(),
            w.jail.create_temp(&p("nope/x")).unwrap_err(),
            w.jail.mkdir(&p("f")).unwrap_err(),
            w.jail.remove_dir(&p("f")).unwrap_err(),
            w.jail.rename(&p("nope"), &p("x"), false).unwrap_err(),
            Jail::open(&w.tmp.path().join("missing/home"), true).unwrap_err(),
            StorageError::from(RemotePath::parse("a/../b").unwrap_err()),
        ];
        for e in errors {
            let shown = format!("{e} / {e:?}");
            assert!(!shown.contains(&tmp), "{shown}");
        }
    }

    #[test]
    fn depth_is_capped() {
        let deep = vec!["d"; MAX_PATH_DEPTH].join("/");
        assert_eq!(
            RemotePath::parse(&deep).unwrap().components().len(),
            MAX_PATH_DEPTH
        );
        assert_eq!(
            RemotePath::parse(&format!("{deep}/x")).unwrap_err(),
            PathError::TooDeep
        );
        assert_eq!(
            RemotePath::parse(&deep).unwrap().join("x").unwrap_err(),
            PathError::TooDeep
        );
    }

    #[test]
    fn r_path_display_round_trips_at_the_limit() {
        // Found by the remote_path fuzz target: 4096 raw bytes whose normal form is 4097.
        let name = "n".repeat(240);
        let raw = vec![name.as_str(); 17].join("/");
        assert_eq!(raw.len(), MAX_PATH_LEN);
        assert_eq!(RemotePath::parse(&raw), Err(PathError::TooLong));
        let ok = format!("/{}", &raw[1..]);
        assert_eq!(ok.len(), MAX_PATH_LEN);
        let p = RemotePath::parse(&ok).unwrap();
        assert_eq!(RemotePath::parse(&p.to_string()), Ok(p));
    }
}

#[cfg(test)]
mod free_name_tests {
    use super::*;

    #[test]
    fn numbered_names_keep_the_extension_and_the_length_limit() {
        assert_eq!(numbered_name("report.pdf", 0), "report.pdf");
        assert_eq!(numbered_name("report.pdf", 1), "report (1).pdf");
        assert_eq!(numbered_name("archive.tar.gz", 2), "archive.tar (2).gz");
        assert_eq!(numbered_name("README", 3), "README (3)");
        assert_eq!(numbered_name(".profile", 1), ".profile (1)");
        let long = format!("{}.txt", "é".repeat(125));
        let n = numbered_name(&long, 999);
        assert!(n.len() <= MAX_NAME_LEN, "{}", n.len());
        assert!(n.ends_with(" (999).txt"));
        let ext = format!("a.{}", "x".repeat(MAX_NAME_LEN - 2));
        assert!(numbered_name(&ext, 1).len() <= MAX_NAME_LEN);
    }

    #[test]
    fn a_folder_opened_beneath_the_home_cannot_lead_out() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join("drop")).unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::os::unix::fs::symlink("../outside", home.join("out")).unwrap();
        std::os::unix::fs::symlink("/tmp", home.join("abs")).unwrap();
        let jail = Jail::open(&home, false).unwrap();
        let drop = jail
            .open_beneath(&RemotePath::parse("drop").unwrap())
            .unwrap();
        let t = drop.create_temp(&RemotePath::parse("f").unwrap()).unwrap();
        t.commit(false).unwrap();
        assert!(home.join("drop/f").exists());
        for bad in ["out", "abs", "missing"] {
            assert!(
                jail.open_beneath(&RemotePath::parse(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_commit_at_the_next_free_name_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let jail = Jail::open(dir.path(), false).unwrap();
        let target = RemotePath::parse("r.pdf").unwrap();
        std::fs::write(dir.path().join("r.pdf"), "first").unwrap();
        std::fs::write(dir.path().join("r (1).pdf"), "second").unwrap();
        for (content, expect) in [("third", Some("r (2).pdf")), ("fourth", Some("r (3).pdf"))] {
            let mut t = jail.create_temp(&target).unwrap();
            std::io::Write::write_all(t.file(), content.as_bytes()).unwrap();
            t.land_at_next_free_name();
            let (d, replaced) = t.rename_into_place(false).unwrap();
            assert_eq!(replaced, Footprint::NONE);
            assert_eq!(d.landed_as(), expect);
            assert_eq!(
                std::fs::read_to_string(dir.path().join(expect.unwrap())).unwrap(),
                content
            );
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join("r.pdf")).unwrap(),
            "first"
        );
        // A free name lands as asked.
        let mut t = jail
            .create_temp(&RemotePath::parse("new").unwrap())
            .unwrap();
        t.land_at_next_free_name();
        let (d, _) = t.rename_into_place(false).unwrap();
        assert_eq!(d.landed_as(), None);
    }
}
