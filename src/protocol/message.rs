//! JSON messages: what a client asks and what a server answers.

use serde::{Deserialize, Serialize};

use crate::domain::{Entry, UsageReport as Usage};

/// A message from client to server. The `op` field names the variant.
///
/// Every variant but `hello` carries an `id` chosen by the client; the server echoes it in
/// every reply to that request. Unknown fields are ignored so that later versions can add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First message of a session: the protocol versions the client speaks.
    Hello {
        /// Versions the client can speak, any order.
        versions: Vec<u32>,
        /// Free-form client software name, for the server's log.
        #[serde(default)]
        software: String,
    },
    /// Authenticate with a user name and password.
    Login {
        /// Request id.
        id: u64,
        /// User name.
        user: String,
        /// Password, in the clear inside TLS.
        password: String,
    },
    /// Metadata of one path (following a final symlink, within the home).
    Stat {
        /// Request id.
        id: u64,
        /// Remote path.
        path: String,
    },
    /// List a directory (or describe a single file) in pages.
    List {
        /// Request id.
        id: u64,
        /// Remote path.
        path: String,
    },
    /// Download a file: the server answers `file`, then data frames, then `ok` with the digest.
    Get {
        /// Request id.
        id: u64,
        /// Remote path.
        path: String,
        /// Resume: start sending at this byte; the client already holds the bytes before it.
        #[serde(default, skip_serializing_if = "is_zero")]
        offset: u64,
        /// With `offset`: SHA-256 of the client's first `offset` bytes. The server compares it
        /// with its own file's prefix and refuses the resume if they differ.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix_sha256: Option<String>,
    },
    /// Upload a file: the client follows with exactly `size` bytes of data frames and an `end`.
    Put {
        /// Request id.
        id: u64,
        /// Remote path of the final file.
        path: String,
        /// Exact number of bytes that follow.
        size: u64,
        /// Replace an existing file of that name.
        #[serde(default)]
        overwrite: bool,
        /// Resume: the server's kept partial upload already holds the first `offset` bytes;
        /// data frames carry bytes `offset..size`.
        #[serde(default, skip_serializing_if = "is_zero")]
        offset: u64,
        /// With `offset`: SHA-256 of the client's first `offset` bytes, compared with the
        /// partial's before anything is appended.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix_sha256: Option<String>,
    },
    /// Size of the partial upload the server kept for `path` (after an interrupted `put`).
    Partial {
        /// Request id.
        id: u64,
        /// Remote path of the final file.
        path: String,
    },
    /// The server's SHA-256 of a whole file, without downloading it.
    Sha256 {
        /// Request id.
        id: u64,
        /// Remote path.
        path: String,
    },
    /// Copy a file on the server (verified like an upload).
    Copy {
        /// Request id.
        id: u64,
        /// Existing remote file.
        from: String,
        /// New remote path.
        to: String,
        /// Replace an existing file at `to`.
        #[serde(default)]
        overwrite: bool,
    },
    /// Space used and available: the user's usage and quotas, and the disk.
    Usage {
        /// Request id.
        id: u64,
    },
    /// Stops the running `get`, `sha256` or `copy` with this id; it ends with `cancelled`.
    /// A cancel for any other id is ignored. It has no reply of its own.
    Cancel {
        /// Id of the request to stop.
        id: u64,
    },
    /// Ends the data of an upload, with the SHA-256 of exactly the bytes sent.
    End {
        /// Request id of the `put`.
        id: u64,
        /// 64 lowercase hex digits.
        sha256: String,
    },
    /// Abandons an upload: the server discards what it received.
    Abort {
        /// Request id of the `put`.
        id: u64,
    },
    /// Create one directory.
    Mkdir {
        /// Request id.
        id: u64,
        /// Remote path.
        path: String,
    },
    /// Remove one empty directory.
    Rmdir {
        /// Request id.
        id: u64,
        /// Remote path.
        path: String,
    },
    /// Remove one file or symlink.
    Remove {
        /// Request id.
        id: u64,
        /// Remote path.
        path: String,
    },
    /// Rename a file or directory.
    Rename {
        /// Request id.
        id: u64,
        /// Existing remote path.
        from: String,
        /// New remote path.
        to: String,
        /// Replace an existing file at `to`.
        #[serde(default)]
        overwrite: bool,
    },
}

impl ClientMessage {
    /// The request id, if the message has one.
    pub fn id(&self) -> Option<u64> {
        Some(match self {
            ClientMessage::Hello { .. } => return None,
            ClientMessage::Login { id, .. }
            | ClientMessage::Stat { id, .. }
            | ClientMessage::List { id, .. }
            | ClientMessage::Get { id, .. }
            | ClientMessage::Put { id, .. }
            | ClientMessage::End { id, .. }
            | ClientMessage::Abort { id }
            | ClientMessage::Mkdir { id, .. }
            | ClientMessage::Rmdir { id, .. }
            | ClientMessage::Remove { id, .. }
            | ClientMessage::Rename { id, .. }
            | ClientMessage::Partial { id, .. }
            | ClientMessage::Sha256 { id, .. }
            | ClientMessage::Copy { id, .. }
            | ClientMessage::Usage { id }
            | ClientMessage::Cancel { id } => *id,
        })
    }

    /// The paths a request names, as sent: one for most requests, `from` and `to` for copy
    /// and rename, none for the rest.
    pub fn paths(&self) -> [Option<&str>; 2] {
        match self {
            ClientMessage::Stat { path, .. }
            | ClientMessage::List { path, .. }
            | ClientMessage::Get { path, .. }
            | ClientMessage::Put { path, .. }
            | ClientMessage::Partial { path, .. }
            | ClientMessage::Sha256 { path, .. }
            | ClientMessage::Mkdir { path, .. }
            | ClientMessage::Rmdir { path, .. }
            | ClientMessage::Remove { path, .. } => [Some(path), None],
            ClientMessage::Copy { from, to, .. } | ClientMessage::Rename { from, to, .. } => {
                [Some(from), Some(to)]
            }
            _ => [None, None],
        }
    }

    /// The `op` name, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            ClientMessage::Hello { .. } => "hello",
            ClientMessage::Login { .. } => "login",
            ClientMessage::Stat { .. } => "stat",
            ClientMessage::List { .. } => "list",
            ClientMessage::Get { .. } => "get",
            ClientMessage::Put { .. } => "put",
            ClientMessage::End { .. } => "end",
            ClientMessage::Abort { .. } => "abort",
            ClientMessage::Mkdir { .. } => "mkdir",
            ClientMessage::Rmdir { .. } => "rmdir",
            ClientMessage::Remove { .. } => "remove",
            ClientMessage::Rename { .. } => "rename",
            ClientMessage::Partial { .. } => "partial",
            ClientMessage::Sha256 { .. } => "sha256",
            ClientMessage::Copy { .. } => "copy",
            ClientMessage::Usage { .. } => "usage",
            ClientMessage::Cancel { .. } => "cancel",
        }
    }
}

/// A message from server to client. The `type` field names the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to the client's hello: the version chosen.
    Hello {
        /// Chosen protocol version.
        version: u32,
        /// Free-form server software name.
        #[serde(default)]
        software: String,
    },
    /// Final success reply to request `id`; which fields are present depends on the request.
    Ok {
        /// Request id.
        id: u64,
        /// Bytes transferred (`get`, `put`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        /// SHA-256 of the bytes transferred, hex (`get`, `put`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        /// Metadata (`stat`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entry: Option<Entry>,
        /// Number of entries sent (`list`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u64>,
        /// Name of the authenticated user (`login`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// Whether the user may change anything (`login`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        read_only: Option<bool>,
        /// Space used and available (`usage`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Box<Usage>>,
    },
    /// Final failure reply to request `id` (or to the session, when `id` is absent).
    Error {
        /// Request id, absent for errors that concern the whole session.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// Stable machine-readable code.
        code: ErrorCode,
        /// Short human-readable text; never server paths or OS error text.
        message: String,
    },
    /// One page of a listing (not final; more pages or the final `ok` follow).
    Entries {
        /// Request id.
        id: u64,
        /// The entries of this page.
        entries: Vec<Entry>,
    },
    /// Start of a download (not final): data frames of exactly `size - offset` bytes follow.
    File {
        /// Request id.
        id: u64,
        /// Size of the whole file.
        size: u64,
        /// Modification time, seconds since the Unix epoch.
        mtime: i64,
        /// First byte sent (non-zero only when resuming).
        #[serde(default, skip_serializing_if = "is_zero")]
        offset: u64,
    },
    /// Progress of a long request (not final): sent every few seconds while the server hashes
    /// or copies without sending data, so the client knows it is alive.
    Progress {
        /// Request id.
        id: u64,
        /// Bytes processed so far.
        bytes: u64,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ServerMessage {
    /// A bare success reply.
    pub fn ok(id: u64) -> Self {
        ServerMessage::Ok {
            id,
            size: None,
            sha256: None,
            entry: None,
            count: None,
            user: None,
            read_only: None,
            usage: None,
        }
    }

    /// A success reply carrying one entry (`stat`).
    pub fn ok_entry(id: u64, entry: Entry) -> Self {
        let mut msg = Self::ok(id);
        if let ServerMessage::Ok { entry: e, .. } = &mut msg {
            *e = Some(entry);
        }
        msg
    }

    /// A success reply of a transfer: bytes and their SHA-256 (`get`, `put`).
    pub fn ok_transfer(id: u64, size: u64, sha256: String) -> Self {
        let mut msg = Self::ok(id);
        if let ServerMessage::Ok {
            size: s, sha256: d, ..
        } = &mut msg
        {
            *s = Some(size);
            *d = Some(sha256);
        }
        msg
    }

    /// A success reply of a listing: how many entries were sent.
    pub fn ok_count(id: u64, count: u64) -> Self {
        let mut msg = Self::ok(id);
        if let ServerMessage::Ok { count: c, .. } = &mut msg {
            *c = Some(count);
        }
        msg
    }

    /// A success reply of `usage`.
    pub fn ok_usage(id: u64, usage: Usage) -> Self {
        let mut msg = Self::ok(id);
        if let ServerMessage::Ok { usage: u, .. } = &mut msg {
            *u = Some(Box::new(usage));
        }
        msg
    }

    /// A failure reply.
    pub fn error(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            id,
            code,
            message: message.into(),
        }
    }
}

/// Stable error codes. Clients must treat an unknown code as a generic failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message was malformed or not allowed at this point.
    BadRequest,
    /// No common protocol version.
    UnsupportedVersion,
    /// Wrong user name or password (deliberately not saying which).
    AuthFailed,
    /// The request needs a logged-in session.
    AuthRequired,
    /// No such file or directory.
    NotFound,
    /// The target exists and the request did not ask to replace it.
    AlreadyExists,
    /// The user may not do this (read-only user, or the file system said no).
    PermissionDenied,
    /// A path component that should be a directory is not.
    NotADirectory,
    /// The operation needs a file and found a directory.
    IsADirectory,
    /// The directory is not empty.
    DirectoryNotEmpty,
    /// The path is not acceptable (bad characters, too long, leaves the home).
    InvalidPath,
    /// The SHA-256 of the bytes received differs from the one declared.
    IntegrityMismatch,
    /// The bytes sent differ in number from the size declared.
    SizeMismatch,
    /// Too large for a limit of the server.
    TooLarge,
    /// The user's quota would be exceeded.
    QuotaExceeded,
    /// The server's disk is full.
    NoSpace,
    /// The server is at a limit; try later.
    Busy,
    /// A phase took too long.
    Timeout,
    /// The transfer was abandoned by the client.
    Cancelled,
    /// Something failed inside the server; details are in its log.
    Internal,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::AuthRequired => "auth_required",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::DirectoryNotEmpty => "directory_not_empty",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::IntegrityMismatch => "integrity_mismatch",
            ErrorCode::SizeMismatch => "size_mismatch",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error reply as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct WireError {
    /// Stable code.
    pub code: ErrorCode,
    /// Server's message.
    pub message: String,
}

/// Parses a client message from a frame payload.
pub fn decode_client_message(payload: &[u8]) -> Result<ClientMessage, serde_json::Error> {
    serde_json::from_slice(payload)
}

/// Parses a server message from a frame payload.
pub fn decode_server_message(payload: &[u8]) -> Result<ServerMessage, serde_json::Error> {
    serde_json::from_slice(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_match_the_documented_form() {
        let put = ClientMessage::Put {
            id: 7,
            path: "/a b/ç.txt".into(),
            size: 3,
            overwrite: false,
            offset: 0,
            prefix_sha256: None,
        };
        let json = serde_json::to_string(&put).unwrap();
        assert_eq!(
            json,
            r#"{"op":"put","id":7,"path":"/a b/ç.txt","size":3,"overwrite":false}"#
        );
        assert_eq!(decode_client_message(json.as_bytes()).unwrap(), put);
        // `overwrite` may be left out.
        let short = r#"{"op":"put","id":7,"path":"/x","size":3}"#;
        assert!(matches!(
            decode_client_message(short.as_bytes()).unwrap(),
            ClientMessage::Put {
                overwrite: false,
                ..
            }
        ));
    }

    #[test]
    fn replies_omit_absent_fields_and_unknown_codes_parse() {
        let ok = ServerMessage::ok(3);
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"type":"ok","id":3}"#
        );
        let err = r#"{"type":"error","id":4,"code":"brand_new_code","message":"m"}"#;
        assert!(matches!(
            decode_server_message(err.as_bytes()).unwrap(),
            ServerMessage::Error {
                code: ErrorCode::Unknown,
                ..
            }
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"op\":\"nope\"}",
            b"\xff\xfe",
            b"{\"op\":\"get\"}",
        ] {
            assert!(decode_client_message(bad).is_err());
        }
    }
}
