//! The storage seam: what the server needs from the place files live, as one dyn-compatible
//! trait, so that a home can sit on the local file system ([`local::LocalStorage`]) or in an
//! object store (issue 15) without the rules above knowing which.
//!
//! One [`Storage`] value is one home (a user's directory, or a key prefix in a bucket); every
//! path is a validated [`RemotePath`] relative to it. No signature carries a file handle, a
//! descriptor or a `std::path`, so an object store can implement every call:
//!
//! | call                      | local file system                      | object store (S3)        |
//! |---------------------------|----------------------------------------|--------------------------|
//! | [`Storage::stat`]         | `fstatat` beneath the home             | `HeadObject`             |
//! | [`Storage::list_page`]    | readdir from a `seekdir` position      | `ListObjectsV2` + token  |
//! | [`Storage::mkdir`]        | `mkdirat`                              | marker object            |
//! | [`Storage::remove_file`]  | `unlinkat`                             | `DeleteObject`           |
//! | [`Storage::remove_dir`]   | `unlinkat(AT_REMOVEDIR)`               | delete the marker        |
//! | [`Storage::rename`]       | `renameat2(RENAME_NOREPLACE)`          | copy + delete            |
//! | [`Storage::copy`]         | read + hash + temp + commit            | `CopyObject`             |
//! | [`Storage::open_read`]    | a reader thread over an open file      | ranged `GetObject`       |
//! | [`Storage::begin_upload`] | exclusive temp beside the target       | `CreateMultipartUpload`  |
//! | [`Upload::commit`]        | fsync, rename, fsync the directory     | `CompleteMultipartUpload`|
//! | [`Upload::keep_partial`]  | move the temp under a key              | record the upload's id   |
//! | [`Upload::rewind`]        | truncate the temp, restore the hash    | drop the parts since     |
//! | [`Storage::put_small`]    | one blocking call: temp, write, commit | `PutObject`              |
//! | [`Storage::flush_durability`] | one `syncfs` for many staged files | nothing left to do       |
//! | [`Storage::usage`]        | a bounded walk of the home             | list + sum, or counters  |
//! | [`Storage::sweep_partials`] | unlink old partials                  | abort old multiparts     |
//!
//! What the contract (tests/storage/contract.rs) promises and every backend keeps: nothing is
//! visible under a final name before its commit returns (or, for a staged commit, before the
//! flush that covers it), an aborted or dropped upload leaves nothing visible, a kept partial
//! resumes at its kept length, listings page through every name once (in an order of the
//! store's, stable while the directory is unchanged; a name present for the whole listing
//! appears exactly once even while others come and go), and no-replace holds when nothing
//! else races for the name. Not in the contract: atomicity of a
//! rename (copy + delete on an object store) and no-replace under a race (a name reservation
//! in shared state provides that above the store).

pub mod local;
pub mod s3;
pub mod s3_homes;

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::domain::Entry;
pub use crate::domain::{BoxFuture, Footprint};
pub use crate::jail::{PathError, RemotePath, StorageError};

/// Files up to this size may go through [`Storage::put_small`] and [`Storage::get_small`]: for
/// them one blocking call costs less than the hand-overs of a streamed transfer.
pub const SMALL_MAX: u64 = 256 * 1024;

/// Uploads up to this size may share one flush of the store ([`Durability::Batched`]) without
/// a sync of their own; a larger one is synced as its data ends, and only what remains (the
/// local store: its directory's fsync) joins the batch.
pub use crate::domain::GROUP_COMMIT_SMALL;

/// Most entries one [`Storage::list`] call returns, whatever the caller asks.
pub const LIST_PAGE_MAX: usize = 1000;

/// A SHA-256 digest.
pub type Sha256Digest = [u8; 32];

/// What a store knows about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub entry: Entry,
    /// The SHA-256 the store recorded for the file at its commit, if it has one that still
    /// matches the content; `None` means "hash it yourself". A store may leave it out of
    /// [`Storage::stat`] where looking it up costs (the local store does: an extended
    /// attribute per name) and give it with a read ([`Download::stat`], [`Fetched::Whole`]).
    pub sha256: Option<Sha256Digest>,
}

/// Where a listing continues: opaque to callers, who hand it back as they got it (it may
/// travel through a client and come back; a store validates it like any input). A store
/// binds it to the directory it came from: a token of another directory, or one no store
/// made, is `InvalidArgument`; a forged one that passes for this directory's gives at worst
/// another page of this directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListToken(String);

impl ListToken {
    /// A token as received back from a caller.
    pub fn from_string(s: String) -> ListToken {
        ListToken(s)
    }

    /// The token's text, to send to a caller.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How much one page of a listing may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListLimit {
    /// Most entries (a store gives at most [`LIST_PAGE_MAX`], and at least one while any
    /// remain).
    pub entries: usize,
    /// The page ends after the entry that brings the sum of each entry's cost to this many
    /// bytes, where an entry costs its name's length (in UTF-8 bytes) plus `per_entry`: a
    /// front-end bounds its encoded page (names escaped up to k times, and the other fields)
    /// by dividing its budget by k.
    pub bytes: usize,
    pub per_entry: usize,
}

impl ListLimit {
    /// A page of at most `entries` entries, whatever their names.
    pub const fn entries(entries: usize) -> ListLimit {
        ListLimit {
            entries,
            bytes: usize::MAX,
            per_entry: 0,
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub entries: Vec<Entry>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<ListToken>,
}

/// The key of a kept partial upload: 1 to 128 ASCII letters and digits (the server derives it
/// from the user and the target, e.g. a hex digest).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartialKey(String);

impl PartialKey {
    /// Validates a key; anything but 1 to 128 ASCII alphanumerics is `InvalidArgument`.
    pub fn new(key: impl Into<String>) -> Result<PartialKey, StorageError> {
        let key = key.into();
        if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(StorageError::InvalidArgument);
        }
        Ok(PartialKey(key))
    }

    /// The key made of a SHA-256 digest's first 16 bytes in hex (32 digits): always valid.
    pub fn of_digest(digest: &[u8; 32]) -> PartialKey {
        PartialKey(crate::domain::hex_digest(&digest[..16]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How soon a commit must be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Durable (data and name) before the commit returns.
    Now,
    /// The caller collects the [`Staged`] commit and makes many durable at once with
    /// [`Storage::flush_durability`]; it acknowledges none of them before that returns. The
    /// object may be invisible until then.
    Batched,
}

/// Called by the store right before a commit makes the object visible, with what the target
/// takes at that moment (nothing if it does not exist); an error refuses the commit (the
/// upload is dropped, the target left as it is). The quota uses it: what an overwrite
/// replaces may have changed since the room was reserved. Serialising it with the user's
/// other changes is the caller's business.
pub type Admit = Box<dyn FnOnce(Footprint) -> Result<(), StorageError> + Send>;

/// Called by the store once, right after a commit made the object visible under its name (and
/// before anything that may still fail, such as a directory's fsync), with what it replaced.
/// The quota settles here: whatever the commit then reports, the object is in place.
pub type Placed = Box<dyn FnOnce(Footprint) + Send>;

/// Serialises a store's "measure what a change replaces or removes, then make it" steps with
/// the same steps of other callers, so that the measured difference is the real one (two
/// sessions replacing one name must not both count the old file as gone). A store given a gate
/// ([`local::LocalStorage::gated`]) enters it around every such step: removals, renames, the
/// rename of a commit, keeping or taking up a partial; never around data transfer or a flush.
/// The quota's account is one ([`crate::service::quota::Account`]). `enter` may block: a
/// store calls it where blocking is allowed (the local store: on the blocking pool).
pub trait ChangeGate: Send + Sync {
    /// Waits until the caller may change; the change ends when the guard is dropped.
    fn enter(&self) -> Box<dyn Send + '_>;
}

/// Where a commit that may not replace lands when its name is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Landing {
    /// Under the name asked for, or not at all.
    #[default]
    Exact,
    /// Under the first free numbered name (`report (1).pdf`, `report (2).pdf`, ...), tried
    /// atomically at the commit: it never replaces, and never fails or tells because the name
    /// exists (a drop link's uploads). Needs `no_replace`; [`Committed::name`] says where it
    /// landed.
    NextFreeName,
}

/// How to commit an upload.
pub struct Commit {
    /// Refuse (`AlreadyExists`) if the target exists. Without it, a file or symlink at the
    /// target is replaced; a directory is `IsADirectory`.
    pub no_replace: bool,
    /// With `no_replace`: what a taken name does.
    pub landing: Landing,
    /// The verified SHA-256 of the content. The store checks it against its own and may
    /// record it with the object (see [`Stat::sha256`]).
    pub sha256: Sha256Digest,
    pub durability: Durability,
    pub admit: Option<Admit>,
    pub placed: Option<Placed>,
}

impl Commit {
    /// A durable commit of content with digest `sha256`.
    pub fn new(sha256: Sha256Digest, no_replace: bool) -> Commit {
        Commit {
            no_replace,
            landing: Landing::Exact,
            sha256,
            durability: Durability::Now,
            admit: None,
            placed: None,
        }
    }

    /// The same commit, landing at the next free name when its name is taken.
    pub fn at_next_free_name(mut self) -> Commit {
        self.no_replace = true;
        self.landing = Landing::NextFreeName;
        self
    }

    /// The same commit, staged for [`Storage::flush_durability`].
    pub fn batched(mut self) -> Commit {
        self.durability = Durability::Batched;
        self
    }

    /// The same commit, with an admission check.
    pub fn admit(mut self, admit: Admit) -> Commit {
        self.admit = Some(admit);
        self
    }

    /// The same commit, telling `placed` when the object is in place.
    pub fn placed(mut self, placed: Placed) -> Commit {
        self.placed = Some(placed);
        self
    }
}

impl fmt::Debug for Commit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Commit")
            .field("no_replace", &self.no_replace)
            .field("sha256", &crate::domain::hex_digest(&self.sha256))
            .field("durability", &self.durability)
            .field("admit", &self.admit.is_some())
            .field("placed", &self.placed.is_some())
            .finish()
    }
}

/// A finished commit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Committed {
    /// What the replaced target took (nothing with `no_replace`).
    pub replaced: Footprint,
    /// The name the object landed under, when the store chose another than asked for
    /// ([`Landing::NextFreeName`]).
    pub name: Option<String>,
}

/// A commit waiting for [`Storage::flush_durability`]. Opaque: only the store that made it can
/// finish it; dropping it abandons the upload (nothing appears).
pub struct Staged(Box<dyn Any + Send>);

impl Staged {
    /// Wraps a store's own record of a staged commit.
    pub fn new<T: Any + Send>(inner: T) -> Staged {
        Staged(Box::new(inner))
    }

    /// The store's record back, or the `Staged` itself if another store made it.
    pub fn downcast<T: Any + Send>(self) -> Result<T, Staged> {
        self.0.downcast::<T>().map(|b| *b).map_err(Staged)
    }
}

impl fmt::Debug for Staged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Staged(..)")
    }
}

/// Where a commit got to.
#[derive(Debug)]
pub enum Landed {
    /// Durable and visible.
    Committed(Committed),
    /// Waiting for [`Storage::flush_durability`] (asked for with [`Durability::Batched`]).
    Staged(Staged),
    /// The content's digest is not the one the commit named: nothing was committed and the
    /// upload is gone. Carries the digest of what the store holds.
    Mismatch { actual: Sha256Digest },
}

/// What a new upload is for.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    /// The size the caller expects (lets the store choose how to write: in memory, through
    /// the page cache, direct I/O, part sizes).
    pub size_hint: Option<u64>,
    /// Refuse at once (`AlreadyExists`) if the target exists; the commit checks again.
    pub no_replace: bool,
    /// With [`Landing::NextFreeName`] an existing target is no refusal and replaces nothing:
    /// the commit will land beside it (it must say so too).
    pub landing: Landing,
    /// A kept partial this upload supersedes: removed once the upload has begun (an upload
    /// that cannot begin leaves it), before any byte is written; its length is reported by
    /// [`Upload::superseded`] / [`SmallPut::superseded`].
    pub supersede: Option<PartialKey>,
}

/// What [`Storage::resume_upload`] found.
pub enum Resume {
    /// The partial, cut to the resume point, ready for the rest; its hash covers the prefix.
    Ready(Box<dyn Upload>),
    /// No partial under the key.
    NoPartial,
    /// The store cannot resume at that offset: the partial holds fewer bytes, or the store
    /// can cut it only at `kept` (an object store at a part boundary). The partial is kept as
    /// it was; a resume at `kept` can work.
    Short { kept: u64 },
    /// The partial's prefix has another digest; it is kept as it was. If another upload kept
    /// a partial under the key meanwhile, that one was replaced: `replaced` is what it took.
    Mismatch {
        actual: Sha256Digest,
        replaced: Footprint,
    },
}

impl fmt::Debug for Resume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resume::Ready(u) => write!(f, "Ready(written {})", u.written()),
            Resume::NoPartial => f.write_str("NoPartial"),
            Resume::Short { kept } => write!(f, "Short {{ kept: {kept} }}"),
            Resume::Mismatch { .. } => f.write_str("Mismatch"),
        }
    }
}

/// An upload in progress: bytes go in with [`Upload::write`], [`Upload::finish`] ends them and
/// gives the digest, then exactly one of commit, keep_partial or abort. Nothing is visible
/// under the target before the commit. Dropping it is an abort (best effort: a crash between
/// write and commit must leave nothing visible either).
pub trait Upload: Send {
    /// Bytes the upload holds so far (a resumed prefix included).
    fn written(&self) -> u64;

    /// What the target took when the upload began: an estimate for a reservation (the commit
    /// measures again and tells [`Commit::admit`]).
    fn replaces(&self) -> Footprint;

    /// What the quota's counters held for the partial that [`UploadOptions::supersede`]
    /// removed, or that [`Storage::resume_upload`] took up (before it was cut to the resume
    /// point): one file of that many bytes, or `None` for nothing (no partial, or a record
    /// of progress the counters never held, left by a node that died mid-upload). A kept
    /// partial is counted as one file of its length.
    fn superseded(&self) -> Option<u64>;

    /// Appends bytes. The store may write them later; an error shows here or at `finish`.
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Ends the data: everything is written, and the SHA-256 of the whole content (a resumed
    /// prefix included) comes back for the caller to compare before it commits.
    fn finish(&mut self) -> BoxFuture<'_, Result<Sha256Digest, StorageError>>;

    /// Makes the finished upload the target (see [`Commit`]). `InvalidArgument` if `finish`
    /// has not succeeded. On any error the upload is gone and the target unchanged.
    fn commit(self: Box<Self>, commit: Commit) -> BoxFuture<'static, Result<Landed, StorageError>>;

    /// Keeps what was written, durably, as the partial `key` (replacing an older one), for
    /// [`Storage::resume_upload`]. A store may keep only the longest prefix it can resume
    /// from (an object store: whole parts); [`Storage::partial_len`] says how much. Returns
    /// what the older partial took.
    fn keep_partial(
        self: Box<Self>,
        key: PartialKey,
    ) -> BoxFuture<'static, Result<Footprint, StorageError>> {
        let kept = self.keep(key);
        Box::pin(async move { kept.await.map(|k| k.replaced) })
    }

    /// [`Upload::keep_partial`], also saying what was kept: its length and the SHA-256 of
    /// those bytes, which a later [`Storage::resume_upload`] at that length must find again
    /// (so a partial damaged while it waited is refused, not continued).
    fn keep(self: Box<Self>, key: PartialKey) -> BoxFuture<'static, Result<Kept, StorageError>>;

    /// Where the upload stands now: its length and running hash, for [`Upload::rewind`].
    /// Cheap (no data is read).
    fn mark(&mut self) -> BoxFuture<'_, Result<Mark, StorageError>>;

    /// Goes back to `mark` (taken from this upload, at or before where it stands): the bytes
    /// written since are dropped and the hash is as it was then. A mark of another upload or
    /// past the end is `InvalidArgument`; after `finish` too. An error ends the upload.
    fn rewind(&mut self, mark: Mark) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Drops the upload and everything written.
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// What [`Upload::keep`] kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// What the older partial under the key took.
    pub replaced: Footprint,
    /// The kept partial's length...
    pub len: u64,
    /// ...and the SHA-256 of those bytes.
    pub sha256: Sha256Digest,
}

/// A point an upload can go back to ([`Upload::mark`], [`Upload::rewind`]): its length and
/// the store's own record of its running hash. Opaque, like [`Staged`].
pub struct Mark {
    written: u64,
    state: Box<dyn Any + Send>,
}

impl Mark {
    /// A mark at `written` bytes, with the store's record of the hash there.
    pub fn new<T: Any + Send>(written: u64, state: T) -> Mark {
        Mark {
            written,
            state: Box::new(state),
        }
    }

    /// The upload's length at the mark.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The store's record back, or `None` if another store made it.
    pub fn into_state<T: Any + Send>(self) -> Option<T> {
        self.state.downcast::<T>().ok().map(|b| *b)
    }
}

impl fmt::Debug for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mark({})", self.written)
    }
}

/// Which bytes to read, and what to hash on the way.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    pub offset: u64,
    /// How many bytes; `None` for up to the size at the open.
    pub len: Option<u64>,
    /// Hash from the start of the object (the prefix before `offset` is read but not
    /// yielded); [`ReadEvent::End`] then carries the digest of `[0, offset + len)`.
    pub hash: bool,
    /// Refuse with [`ReadEvent::PrefixMismatch`] unless the first `offset` bytes have this
    /// digest (a resumed download). Implies hashing.
    pub expect_prefix: Option<Sha256Digest>,
}

/// What a [`Download`] yields, in order: maybe `Progress` (while hashing a prefix), `Data`
/// chunks, then `End` (or `PrefixMismatch`, after which nothing more comes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEvent {
    Data(Bytes),
    /// Still working without data to show: bytes of the prefix hashed so far.
    Progress(u64),
    PrefixMismatch {
        actual: Sha256Digest,
    },
    /// All requested bytes were yielded; their digest (from offset 0) if hashing was asked.
    End {
        sha256: Option<Sha256Digest>,
    },
}

/// A read of one object's range. An object that shrinks under it ends in an error of kind
/// `UnexpectedEof`, never in a short `End`.
pub trait Download: Send {
    /// The object as opened (its size is the size the read is measured against).
    fn stat(&self) -> &Stat;

    /// The next event; after `End` or `PrefixMismatch`, `End` again.
    fn next(&mut self) -> BoxFuture<'_, Result<ReadEvent, StorageError>>;
}

/// What [`Storage::get_small`] found.
pub enum Fetched {
    /// The whole object, read in one call, with its SHA-256.
    Whole {
        stat: Stat,
        data: Bytes,
        sha256: Sha256Digest,
    },
    /// Larger than the limit: a download of the whole object from offset 0, already open.
    Larger(Box<dyn Download>),
    /// It shrank between the look at its size and the read.
    Changed,
}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fetched::Whole { stat, data, .. } => {
                write!(f, "Whole({:?}, {} bytes)", stat.entry.name, data.len())
            }
            Fetched::Larger(d) => write!(f, "Larger({} bytes)", d.stat().entry.size),
            Fetched::Changed => f.write_str("Changed"),
        }
    }
}

/// Called by [`Storage::put_small`] once it has checked the target and removed a superseded
/// partial, before it writes anything, with what the target takes now and the length of the
/// partial it removed. An error ends the put with nothing written. The quota reserves room
/// here, so that a small put stays one call.
pub type Reserve = Box<dyn FnOnce(Footprint, Option<u64>) -> Result<(), StorageError> + Send>;

/// What goes with a [`Storage::put_small`] besides its commit.
#[derive(Default)]
pub struct SmallOptions {
    /// A kept partial the put supersedes: removed first.
    pub supersede: Option<PartialKey>,
    pub reserve: Option<Reserve>,
}

impl fmt::Debug for SmallOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmallOptions")
            .field("supersede", &self.supersede)
            .field("reserve", &self.reserve.is_some())
            .finish()
    }
}

/// What [`Storage::put_small`] did.
#[derive(Debug)]
pub struct SmallPut {
    pub landed: Landed,
    /// The length of the superseded partial it removed, if there was one.
    pub superseded: Option<u64>,
    /// What the target took when the put began (an estimate, like [`Upload::replaces`]).
    pub replaces: Footprint,
}

/// Room where a home lives, as its user may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub free: u64,
    pub total: u64,
}

/// A server-side copy.
#[derive(Default)]
pub struct CopyOptions {
    pub no_replace: bool,
    pub admit: Option<Admit>,
    /// Called once the source is open, the target checked and the copy's temp made, before
    /// a byte is copied, with what the target takes now (see [`Reserve`]; the second
    /// argument is always `None`). An error ends the copy with nothing written: the quota
    /// reserves its room here, so a target that cannot be made is refused as such first.
    pub reserve: Option<Reserve>,
    /// Told once, inside the change gate, when the copy is in place (see [`Placed`]).
    pub placed: Option<Placed>,
    /// Refuse (an error of kind `UnexpectedEof`, nothing copied) unless the source holds
    /// exactly this many bytes when the store opens it: the caller sized its reservation from
    /// an earlier look, which another session may have changed since.
    pub expect_size: Option<u64>,
    /// Told the bytes copied so far, now and then, on a long copy.
    pub progress: Option<Box<dyn Fn(u64) + Send + Sync>>,
}

impl fmt::Debug for CopyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CopyOptions")
            .field("no_replace", &self.no_replace)
            .finish_non_exhaustive()
    }
}

/// A finished copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub size: u64,
    /// The copy's SHA-256, if the store knows it without reading the object again (it hashed
    /// while copying, or had it recorded).
    pub sha256: Option<Sha256Digest>,
    pub replaced: Footprint,
}

/// Where users' homes live when not under the server's data root: a backend that opens a
/// [`Storage`] per home (an object store's bucket, a home per key prefix).
pub trait HomeStore: Send + Sync + fmt::Debug {
    /// The name the home `home` (a relative path of `/`-separated names, the user's home
    /// setting or name) is known by on every node sharing the store: the usage ledger's key.
    fn key(&self, home: &str) -> String;

    /// Opens the home `home`, making it if it does not exist.
    fn open<'a>(&'a self, home: &'a str) -> BoxFuture<'a, Result<Arc<dyn Storage>, StorageError>>;
}

/// One home's files. All calls are safe to run concurrently; dropping a returned future
/// cancels what has not happened yet (a half-made copy or upload leaves nothing visible).
pub trait Storage: Send + Sync + fmt::Debug {
    /// Describes a name, following a final symlink that stays in the home (an object store
    /// has none). The root is a directory named `/`.
    fn stat<'a>(&'a self, path: &'a RemotePath) -> BoxFuture<'a, Result<Stat, StorageError>>;

    /// Describes a name itself: a final symlink is not followed (kind `Symlink`). What an
    /// upload's checks look at, as the commit will find the name. A store without symlinks
    /// answers as [`Storage::stat`].
    fn lstat<'a>(&'a self, path: &'a RemotePath) -> BoxFuture<'a, Result<Stat, StorageError>> {
        self.stat(path)
    }

    /// The next page of the directory `path`, from the start or where `after` (a token a
    /// page of the same directory gave) left off, within `limit`. Across the pages of one
    /// listing every name appears once, in an order the store keeps while the directory is
    /// unchanged (an object store's is byte order; the local store's is readdir order); a
    /// name present for the whole listing appears exactly once even if others are added or
    /// removed meanwhile. A page costs the store about what it holds, not the directory's
    /// size. Listing a file gives a page with only its entry (and a token for it is
    /// `InvalidArgument`). Names reserved by the server never appear.
    fn list_page<'a>(
        &'a self,
        path: &'a RemotePath,
        after: Option<&'a ListToken>,
        limit: ListLimit,
    ) -> BoxFuture<'a, Result<ListPage, StorageError>>;

    /// [`Storage::list_page`] of up to `max` entries.
    fn list<'a>(
        &'a self,
        path: &'a RemotePath,
        after: Option<&'a ListToken>,
        max: usize,
    ) -> BoxFuture<'a, Result<ListPage, StorageError>> {
        self.list_page(path, after, ListLimit::entries(max))
    }

    /// Creates one directory; the parent must exist (`NotFound`), the name must not
    /// (`AlreadyExists`).
    fn mkdir<'a>(&'a self, path: &'a RemotePath) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Removes a file (or symlink); a directory is `IsADirectory`. Returns what it took.
    fn remove_file<'a>(
        &'a self,
        path: &'a RemotePath,
    ) -> BoxFuture<'a, Result<Footprint, StorageError>>;

    /// Removes an empty directory: `DirectoryNotEmpty`, `NotADirectory`, and
    /// `PermissionDenied` for the root. Returns what it took.
    fn remove_dir<'a>(
        &'a self,
        path: &'a RemotePath,
    ) -> BoxFuture<'a, Result<Footprint, StorageError>>;

    /// Renames a file or directory. With `no_replace` an existing target is `AlreadyExists`.
    /// Returns what a replaced target took. Atomicity is the backend's to document.
    fn rename<'a>(
        &'a self,
        from: &'a RemotePath,
        to: &'a RemotePath,
        no_replace: bool,
    ) -> BoxFuture<'a, Result<Footprint, StorageError>>;

    /// Copies a file within the home, committed like an upload (durable before it returns).
    fn copy<'a>(
        &'a self,
        from: &'a RemotePath,
        to: &'a RemotePath,
        options: CopyOptions,
    ) -> BoxFuture<'a, Result<Copied, StorageError>>;

    /// Opens a file for reading a range. A directory is `IsADirectory`; an offset beyond the
    /// end, or anything but a regular file, `InvalidArgument`.
    fn open_read<'a>(
        &'a self,
        path: &'a RemotePath,
        options: ReadOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Download>, StorageError>>;

    /// Reads a whole file of at most `max` (≤ [`SMALL_MAX`]) bytes, and its SHA-256, in one
    /// call; a larger one comes back open for streaming.
    fn get_small<'a>(
        &'a self,
        path: &'a RemotePath,
        max: u64,
    ) -> BoxFuture<'a, Result<Fetched, StorageError>>;

    /// Starts an upload to `path`. The root or a directory at the target is `IsADirectory`;
    /// a missing parent `NotFound`.
    fn begin_upload<'a>(
        &'a self,
        path: &'a RemotePath,
        options: UploadOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Upload>, StorageError>>;

    /// Takes the partial `key` up again as an upload to `path` that continues at `offset`:
    /// it must hold at least `offset` bytes whose SHA-256 is `prefix`; bytes past `offset`
    /// are cut off (or, where the store cannot cut there, [`Resume::Short`]). A resume at
    /// [`Storage::partial_len`] always can. `size_hint` is the whole file's expected size.
    fn resume_upload<'a>(
        &'a self,
        key: &'a PartialKey,
        path: &'a RemotePath,
        offset: u64,
        prefix: Sha256Digest,
        size_hint: Option<u64>,
    ) -> BoxFuture<'a, Result<Resume, StorageError>>;

    /// Length of the partial `key`, if there is one.
    fn partial_len<'a>(
        &'a self,
        key: &'a PartialKey,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>>;

    /// Removes the partial `key`; returns its length, `None` if there was none.
    fn remove_partial<'a>(
        &'a self,
        key: &'a PartialKey,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>>;

    /// Writes a whole small file (≤ [`SMALL_MAX`] bytes) in one call: checks the target as
    /// [`Storage::begin_upload`] does, removes a superseded partial, asks `options.reserve`,
    /// hashes `data`, and commits it only if the digest is `commit.sha256` (else
    /// [`Landed::Mismatch`] and nothing is left).
    fn put_small<'a>(
        &'a self,
        path: &'a RemotePath,
        data: Bytes,
        options: SmallOptions,
        commit: Commit,
    ) -> BoxFuture<'a, Result<SmallPut, StorageError>>;

    /// Removes kept partials not written to for `max_age`; returns what they took.
    fn sweep_partials(
        &self,
        max_age: std::time::Duration,
    ) -> BoxFuture<'_, Result<Footprint, StorageError>>;

    /// What the home holds, for the quota: the bytes of every file and one file per file and
    /// per directory (the home itself not counted), kept partials and uploads in progress
    /// included. Gives up with an error after `limit` (or when the future is dropped), never
    /// with an undercount.
    fn usage(&self, limit: std::time::Duration) -> BoxFuture<'_, Result<Footprint, StorageError>>;

    /// Free and total bytes where the home lives, if the store can tell.
    fn space(&self) -> BoxFuture<'_, Result<Option<Space>, StorageError>>;

    /// Makes staged commits durable and visible, as few flushes as the store can, and
    /// returns one result per commit in order. A staged commit of another store is
    /// `InvalidArgument`.
    fn flush_durability(
        &self,
        staged: Vec<Staged>,
    ) -> BoxFuture<'_, Vec<Result<Committed, StorageError>>>;

    /// How many small puts of one session are worth running at once. A store whose every
    /// write is a few network round trips (an object store and a shared database) answers
    /// more than one, so a session runs that many `put_small` calls side by side and answers
    /// them in order; a store whose small puts are local writes staged for one group flush
    /// keeps the default of one.
    fn small_puts_in_flight(&self) -> usize {
        1
    }
}
