//! What every layer of ferry shares and no wire owns: the limits on names, paths and
//! credentials, and how a digest is written. `protocol` re-exports these for the wire; the
//! layers below the front-ends (`jail`, `transfer`, `users`) take them from here, so none of
//! them imports the wire. First step of the core redesign (issue 13).

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

/// Renders a SHA-256 digest the way it travels and is printed: 64 lowercase hex digits.
pub fn hex_digest(digest: &[u8]) -> String {
    hex::encode(digest)
}

/// A boxed future that can cross threads: what the async traits (storage, accounts) return,
/// so they stay dyn-compatible without a macro crate.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
