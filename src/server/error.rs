//! The one place that turns internal errors into what the peer sees.
//!
//! The wire gets a stable code and a short fixed message; the details (OS error text, paths
//! on the server) go to the log only.

use std::net::SocketAddr;

use crate::protocol::{ErrorCode, ServerMessage};
use crate::storage::{PathError, StorageError};

/// Maps a storage error to its wire code and message, logging what the client must not see.
pub(super) fn storage_reply(
    id: u64,
    err: &StorageError,
    peer: SocketAddr,
    user: &str,
    op: &str,
) -> ServerMessage {
    let (code, message) = match err {
        StorageError::NotFound => (ErrorCode::NotFound, "no such file or directory"),
        StorageError::AlreadyExists => (ErrorCode::AlreadyExists, "already exists"),
        StorageError::PermissionDenied => (ErrorCode::PermissionDenied, "permission denied"),
        StorageError::NotADirectory => (ErrorCode::NotADirectory, "not a directory"),
        StorageError::IsADirectory => (ErrorCode::IsADirectory, "is a directory"),
        StorageError::DirectoryNotEmpty => (ErrorCode::DirectoryNotEmpty, "directory not empty"),
        // The reason is about the path's shape (e.g. a rename that would nest too deep).
        StorageError::InvalidPath(e) => return path_reply(id, e),
        StorageError::Escape => {
            tracing::warn!(%peer, user, op, "path resolved outside the home; refused");
            (ErrorCode::PermissionDenied, "path leads outside your home")
        }
        StorageError::NoSpace => {
            tracing::error!(%peer, user, op, "no space left on device");
            (ErrorCode::NoSpace, "no space left on the server")
        }
        StorageError::QuotaExceeded => (ErrorCode::QuotaExceeded, "quota exceeded"),
        StorageError::InvalidArgument => (ErrorCode::BadRequest, "invalid operation"),
        StorageError::Io(e) => {
            tracing::error!(%peer, user, op, error = %e, "i/o error");
            (ErrorCode::Internal, "server i/o error")
        }
    };
    ServerMessage::error(Some(id), code, message)
}

/// The reply for a path that failed validation. The reason is fixed text about the path's
/// shape (never the path itself), so it is safe to send.
pub(super) fn path_reply(id: u64, err: &PathError) -> ServerMessage {
    ServerMessage::error(
        Some(id),
        ErrorCode::InvalidPath,
        format!("invalid path: {err}"),
    )
}
