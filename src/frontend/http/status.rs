//! The one place that turns the core's errors into HTTP answers: a status and a JSON body
//! with a stable code (ferry/1's code names, so scripts see one vocabulary) and a short fixed
//! text. Paths and operating-system text go to the log only.

use std::net::SocketAddr;

use hyper::{Response, StatusCode};

use super::router::{Body, error};
use crate::domain::Refused;
use crate::service::{CoreError, ResumeRefused};
use crate::storage::StorageError;

/// The answer for a core error of operation `op` by `user`.
pub fn core_error(err: &CoreError, peer: SocketAddr, user: &str, op: &str) -> Response<Body> {
    match err {
        CoreError::Storage(e) => storage_error(e, peer, user, op),
        CoreError::Denied(why) => error(StatusCode::FORBIDDEN, "permission_denied", why),
        CoreError::Refused {
            refused: Refused::TooLarge(max),
            size,
        } => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("a file of {size} bytes exceeds the maximum of {max} bytes"),
        ),
        CoreError::Refused {
            refused: Refused::Quota(which),
            ..
        } => error(
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
            &format!("over the {which}"),
        ),
        CoreError::ResumeRefused(ResumeRefused::NoPartial) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no partial upload to resume",
        ),
        CoreError::ResumeRefused(ResumeRefused::Short { kept, offset }) => error(
            StatusCode::CONFLICT,
            "resume_refused",
            &format!("the partial upload holds {kept} bytes; cannot resume at {offset}"),
        ),
        CoreError::ResumeRefused(ResumeRefused::Mismatch { offset, .. }) => error(
            StatusCode::CONFLICT,
            "integrity_mismatch",
            &format!("the first {offset} bytes of the partial upload differ; start again"),
        ),
        CoreError::Unavailable(why) => {
            tracing::error!(%peer, user, op, error = %why, "shared state unavailable");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the server cannot check your usage right now; try again later",
            )
        }
        CoreError::SizeMismatch { declared, received } => error(
            StatusCode::BAD_REQUEST,
            "size_mismatch",
            &format!("declared {declared} bytes, received {received}"),
        ),
    }
}

/// The answer for a storage error.
pub fn storage_error(err: &StorageError, peer: SocketAddr, user: &str, op: &str) -> Response<Body> {
    let (status, code, message) = match err {
        StorageError::NotFound => (
            StatusCode::NOT_FOUND,
            "not_found",
            "no such file or directory",
        ),
        StorageError::AlreadyExists => (StatusCode::CONFLICT, "already_exists", "already exists"),
        StorageError::PermissionDenied => (
            StatusCode::FORBIDDEN,
            "permission_denied",
            "permission denied",
        ),
        StorageError::NotADirectory => (StatusCode::CONFLICT, "not_a_directory", "not a directory"),
        StorageError::IsADirectory => (StatusCode::CONFLICT, "is_a_directory", "is a directory"),
        StorageError::DirectoryNotEmpty => (
            StatusCode::CONFLICT,
            "directory_not_empty",
            "directory not empty",
        ),
        StorageError::InvalidPath(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                &format!("invalid path: {e}"),
            );
        }
        StorageError::Escape => {
            tracing::warn!(%peer, user, op, "path resolved outside the home; refused");
            (
                StatusCode::FORBIDDEN,
                "permission_denied",
                "path leads outside your home",
            )
        }
        StorageError::NoSpace => {
            tracing::error!(%peer, user, op, "no space left on device");
            (
                StatusCode::INSUFFICIENT_STORAGE,
                "no_space",
                "no space left on the server",
            )
        }
        StorageError::QuotaExceeded => (
            StatusCode::INSUFFICIENT_STORAGE,
            "quota_exceeded",
            "quota exceeded",
        ),
        StorageError::InvalidArgument => {
            (StatusCode::BAD_REQUEST, "bad_request", "invalid operation")
        }
        StorageError::Io(e) => {
            tracing::error!(%peer, user, op, error = %e, "i/o error");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "server i/o error",
            )
        }
    };
    error(status, code, message)
}
