//! The client: a connection with typed methods (the library API), and on top of it the
//! interactive shell, batch mode and one-shot commands.
//!
//! - `connection`: [`Connection`], one session with typed requests.
//! - `ops`: [`ops::Session`]: remote working directory, globs, recursive transfers, the
//!   check of server-sent names; shared by the shell and the one-shots.
//! - `shell`: the `ferry>` shell (interactive, batch), its commands and completion.
//! - `trust`: CA or pinned fingerprint (known_hosts), the certificate verifier.
//! - `config`: `config.toml` host aliases, XDG directories.
//! - `progress`, `format`: bars on stderr, result lines on stdout.
//! - `interrupt`: Ctrl-C cancels the running command.
//! - `glob`: `*`, `?`, `[...]` matching and local expansion.
//! - `local`, `paths`: local partial files, remote path arithmetic.

pub mod config;
pub mod connection;
mod download;
pub mod format;
pub mod glob;
pub mod interrupt;
pub mod local;
pub mod open;
pub mod ops;
pub mod paths;
pub mod progress;
pub mod shell;
pub mod trust;
mod upload;

use std::path::{Path, PathBuf};

pub use connection::{Connection, Transferred};

use crate::protocol::{FrameError, WireError};

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: a command failed (remote error, local file error, transfer refused).
pub const EXIT_FAILED: u8 = 1;
/// Exit status: the command line was wrong.
pub const EXIT_USAGE: u8 = 2;
/// Exit status: authentication failed.
pub const EXIT_AUTH: u8 = 3;
/// Exit status: could not connect, TLS failed, or the connection broke.
pub const EXIT_CONNECTION: u8 = 4;
/// Exit status: a digest did not match.
pub const EXIT_INTEGRITY: u8 = 5;
/// Exit status: interrupted (Ctrl-C); what was running was cancelled cleanly.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Appended to a download's integrity error: the server may have answered from the digest it
/// stored at commit time, so a difference also reveals a stored file that changed since.
const AT_REST: &str = "; the server's file may have been corrupted at rest since it was \
     stored (bit rot, or an edit behind the server's back)";

fn at_rest_hint(download: &bool) -> &'static str {
    if *download { AT_REST } else { "" }
}

/// What an exit status means, in the words of `--help` (for `--json` output).
pub fn exit_meaning(code: u8) -> &'static str {
    match code {
        EXIT_OK => "ok",
        EXIT_FAILED => "a command failed",
        EXIT_USAGE => "usage",
        EXIT_AUTH => "authentication failed",
        EXIT_CONNECTION => "connection or TLS",
        EXIT_INTEGRITY => "integrity",
        EXIT_INTERRUPTED => "interrupted",
        _ => "unknown",
    }
}

/// Everything that can go wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connection failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// host:port
        addr: String,
        /// Why.
        reason: String,
    },
    /// TLS failed (certificate not trusted, handshake error, wrong protocol).
    #[error("tls: {0}")]
    Tls(String),
    /// Wrong user or password.
    #[error("authentication failed")]
    Auth,
    /// Wrong user or password, and the server closed the connection after this many
    /// attempts (its limit).
    #[error(
        "authentication failed; the server closed the connection after {n} attempt{s}",
        n = .0,
        s = if *.0 == 1 { "" } else { "s" }
    )]
    AuthClosed(u32),
    /// The server refused a request.
    #[error("{0}")]
    Remote(WireError),
    /// Digests disagreed; nothing was committed.
    #[error(
        "integrity check failed: local sha256 {local}, server sha256 {remote}{}",
        at_rest_hint(.download)
    )]
    Integrity {
        /// Digest computed here.
        local: String,
        /// Digest the server reported.
        remote: String,
        /// The check of a download: the server may have sent the digest it stored when the
        /// file was committed, so a difference can also mean the file changed on its disk.
        download: bool,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Local {
        /// The local path, as given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A local file exists and overwriting was not asked for.
    #[error("{} already exists (use -f to overwrite)", .0.display())]
    LocalExists(PathBuf),
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection closed unexpectedly.
    #[error("connection lost")]
    ConnectionLost,
    /// The server stopped answering.
    #[error("timed out waiting for the server")]
    Timeout,
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The transfer was cancelled (Ctrl-C); nothing appeared under a final name.
    #[error("cancelled")]
    Cancelled,
}

impl ClientError {
    pub(crate) fn local(path: &Path, source: std::io::Error) -> ClientError {
        ClientError::Local {
            path: crate::sanitize::for_terminal(&path.display().to_string()).into_owned(),
            source,
        }
    }

    /// The documented exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Connect { .. }
            | ClientError::Tls(_)
            | ClientError::Protocol(_)
            | ClientError::ConnectionLost
            | ClientError::Timeout => EXIT_CONNECTION,
            // After login, `busy` is the server shutting down: the connection is ending.
            ClientError::Remote(w) if w.code == crate::protocol::ErrorCode::Busy => EXIT_CONNECTION,
            ClientError::Auth | ClientError::AuthClosed(_) => EXIT_AUTH,
            ClientError::Integrity { .. } => EXIT_INTEGRITY,
            ClientError::Remote(w) if w.code == crate::protocol::ErrorCode::IntegrityMismatch => {
                EXIT_INTEGRITY
            }
            ClientError::Usage(_) => EXIT_USAGE,
            ClientError::Cancelled => EXIT_INTERRUPTED,
            ClientError::Remote(_) | ClientError::Local { .. } | ClientError::LocalExists(_) => {
                EXIT_FAILED
            }
        }
    }

    /// Whether the session can go on after this error.
    pub fn is_fatal(&self) -> bool {
        self.exit_code() == EXIT_CONNECTION
    }

    /// Whether a transfer that failed with this error was merely cut off (the connection
    /// broke, Ctrl-C, or the server shut down), so that `reget`/`reput` can resume it.
    pub fn interrupted(&self) -> bool {
        match self {
            ClientError::Cancelled | ClientError::ConnectionLost | ClientError::Timeout => true,
            ClientError::Remote(w) => w.code == crate::protocol::ErrorCode::Busy,
            _ => false,
        }
    }
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(_) | FrameError::Truncated => ClientError::ConnectionLost,
            other => ClientError::Protocol(other.to_string()),
        }
    }
}
