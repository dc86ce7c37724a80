//! What every layer of ferry shares and no wire owns: the limits on names, paths and
//! credentials, and how a digest is written. `protocol` re-exports these for the wire; the
//! layers below the front-ends (`jail`, `transfer`, `users`) take them from here, so none of
//! them imports the wire. First step of the core redesign (issue 13).
//!
//! [`Entry`] and [`EntryKind`] carry serde derives: their JSON form is what ferry/1 sends in
//! `list` and `stat` replies, so the field names here are part of the wire (PROTOCOL.md §6)
//! and must not change. A front-end with another representation maps from these.

use serde::{Deserialize, Serialize};

mod ops;

pub use ops::{Access, Denied, Op, Scope};

/// A future the traits between the layers return: boxed, so the traits stay dyn-compatible
/// (`Arc<dyn …>`) and a backend may be local or remote.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Longest accepted user name, in bytes.
pub const MAX_USER_LEN: usize = 64;

/// Longest accepted password, in bytes. Longer ones are refused before any hashing.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Longest accepted remote path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// Most components in a remote path (directory depth).
pub const MAX_PATH_DEPTH: usize = 256;

/// Longest accepted path component (one file or directory name), in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Files up to this size may share one flush of their file system (a group commit) instead of
/// an fsync each, on either end: their replies (server) or their renames (client) wait for
/// it. A larger file is fsynced as its data ends; only its directory's fsync joins the group.
pub const GROUP_COMMIT_SMALL: u64 = 1024 * 1024;

/// Renders a SHA-256 digest the way it travels and is printed: 64 lowercase hex digits.
pub fn hex_digest(digest: &[u8]) -> String {
    hex::encode(digest)
}

/// What kind of object an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (listings describe the link itself).
    Symlink,
    /// Anything else (socket, fifo, device), and kinds a newer peer may add.
    #[serde(other)]
    Other,
}

/// Metadata of one directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// File name (one component), as the server stores it.
    pub name: String,
    /// Object kind.
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Permission bits (e.g. 0o644).
    #[serde(default)]
    pub mode: u32,
}

/// Bytes and files (directories included) that something takes in a home, for the quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub bytes: u64,
    pub files: u64,
}

impl Footprint {
    /// Nothing at all.
    pub const NONE: Footprint = Footprint { bytes: 0, files: 0 };

    /// Both sums, saturating.
    pub fn plus(self, other: Footprint) -> Footprint {
        Footprint {
            bytes: self.bytes.saturating_add(other.bytes),
            files: self.files.saturating_add(other.files),
        }
    }
}

/// The limits of one account: bytes, files (directories count) and the largest single file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Most bytes (`None`: unlimited).
    pub bytes: Option<u64>,
    /// Most files (`None`: unlimited).
    pub files: Option<u64>,
    /// Largest single file (`None`: unlimited).
    pub max_file_size: Option<u64>,
}

/// Why room for a change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The file is larger than `max_file_size`.
    TooLarge(u64),
    /// Bytes or files would go over the quota (`"byte quota"` or `"file quota"`).
    Quota(&'static str),
}

/// Space used and available, as far as the server knows; absent fields are unknown or
/// unlimited. Its JSON form is ferry/1's `usage` object (PROTOCOL.md), so the field names are
/// part of the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Bytes the user's files take (including kept partial uploads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// Number of the user's files and directories (a directory counts as one file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_files: Option<u64>,
    /// The user's byte quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
    /// The user's file-count quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_files: Option<u64>,
    /// Largest file the user may upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_size: Option<u64>,
    /// Free bytes on the disk that holds the home (for unprivileged users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
    /// Size of that disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_total_bytes: Option<u64>,
}
