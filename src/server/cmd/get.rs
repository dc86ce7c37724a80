//! `get`: stream a file to the client. The server announces the size, sends exactly the bytes
//! from `offset` to that size, and ends with the SHA-256 of the whole file.
//!
//! A resume (`offset` > 0) first hashes the server's first `offset` bytes and refuses if they
//! differ from the client's `prefix_sha256`: appending to a prefix that does not match would
//! build a corrupt file. The client may `cancel` a running download.
//!
//! The final digest comes from the file's stored digest when that still describes the file
//! (see [`crate::stored_digest`]): the bytes after a resume's prefix, or all of them, are then
//! sent without hashing. The client hashes what it receives either way, so a file changed on
//! disk since its commit shows up there as a mismatch.

use std::io::Read;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::super::session::{End, Session};
use super::{Next, blocking, next_or_cancel, reply_storage};
use crate::jail::{RemotePath, StorageError};
use crate::protocol::{DATA_CHUNK_LEN, Entry, ErrorCode, ServerMessage, hex_digest};
use crate::stored_digest;
use crate::transfer::{
    CHANNEL_DEPTH, ReadChunk, hash_prefix, is_hex_digest, read_and_hash_from, read_known,
};

/// Files of at most this many bytes, fetched whole, are opened, read and hashed in one
/// blocking call and sent at once: a reader thread feeding the session chunk by chunk costs
/// more hand-overs than such a file is worth.
const SMALL_MAX: u64 = 256 * 1024;

/// What the blocking open found.
enum Opened {
    /// A small file, read whole (`size` bytes as of the open), and its SHA-256.
    Small {
        entry: Entry,
        data: Vec<u8>,
        sha256: String,
    },
    /// A small file that shrank between the open and the read.
    Shrunk,
    /// Anything else, to be streamed; `known` is its stored digest if that still matches.
    Large {
        file: std::fs::File,
        entry: Entry,
        known: Option<String>,
    },
}

pub(super) async fn run(
    sess: &mut Session,
    id: u64,
    path: RemotePath,
    offset: u64,
    prefix_sha256: Option<String>,
) -> Result<(), End> {
    let prefix = match (offset, prefix_sha256) {
        (0, _) => None,
        (_, Some(p)) if is_hex_digest(&p.to_ascii_lowercase()) => Some(p.to_ascii_lowercase()),
        _ => {
            let msg = ServerMessage::error(
                Some(id),
                ErrorCode::BadRequest,
                "a resumed get needs prefix_sha256 (64 hex digits)",
            );
            return sess.send(&msg).await;
        }
    };
    let shown = path.to_string();
    let jail = Arc::clone(&sess.jail);
    let opened = blocking(move || {
        let (file, entry, state) = jail.open_read_state(&path)?;
        // Looked up before any byte is read: what is sent is then checked against the digest
        // of the file as it was committed, not as it is read.
        let known = stored_digest::lookup(&file, &state);
        if offset > 0 || entry.size > SMALL_MAX {
            return Ok(Opened::Large { file, entry, known });
        }
        // Bounded by SMALL_MAX; more than `size` is not read even if the file grew.
        let mut data = Vec::with_capacity(entry.size as usize);
        file.take(entry.size)
            .read_to_end(&mut data)
            .map_err(StorageError::from_io)?;
        if (data.len() as u64) < entry.size {
            return Ok(Opened::Shrunk);
        }
        let sha256 = known.unwrap_or_else(|| hex_digest(&Sha256::digest(&data)));
        Ok(Opened::Small {
            entry,
            data,
            sha256,
        })
    })
    .await;
    let (file, entry, known) = match opened {
        Ok(Opened::Large { file, entry, known }) => (file, entry, known),
        Ok(Opened::Small {
            entry,
            data,
            sha256,
        }) => return send_small(sess, id, entry, &data, sha256).await,
        Ok(Opened::Shrunk) => return reply_shrunk(sess, id, &shown).await,
        Err(e) => return reply_storage(sess, id, "get", &e).await,
    };
    let size = entry.size;
    if offset > size {
        let msg = ServerMessage::error(
            Some(id),
            ErrorCode::BadRequest,
            format!("resume offset {offset} is beyond the end of the file ({size} bytes)"),
        );
        return sess.send(&msg).await;
    }
    sess.send(&ServerMessage::File {
        id,
        size,
        mtime: entry.mtime,
        offset,
    })
    .await?;

    // The reader hashes on the blocking pool while the session encrypts and sends: disk,
    // SHA-256 and TLS overlap instead of running in series.
    let (tx, mut rx) = mpsc::channel::<ReadChunk>(CHANNEL_DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        let mut hasher = Sha256::new();
        if let Some(expected) = prefix {
            let progress = |n| {
                let _ = tx.blocking_send(ReadChunk::Progress(n));
            };
            match hash_prefix(&mut file, offset, &mut hasher, progress) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    let _ = tx.blocking_send(ReadChunk::Shrunk);
                    return;
                }
                Err(e) => {
                    let _ = tx.blocking_send(ReadChunk::Failed(e));
                    return;
                }
            }
            let actual = hex_digest(&hasher.clone().finalize());
            if actual != expected {
                let _ = tx.blocking_send(ReadChunk::Refused(format!(
                    "resume refused: the first {offset} bytes differ (local sha256 {expected}, \
                     server sha256 {actual}); download the whole file again"
                )));
                return;
            }
        }
        match known {
            Some(sha256) => read_known(file, size - offset, DATA_CHUNK_LEN, sha256, &tx),
            None => read_and_hash_from(file, size - offset, DATA_CHUNK_LEN, hasher, &tx),
        }
    });

    let stall = sess.server.limits.stall_timeout;
    let grace_over = sess.server.grace_over.clone();
    loop {
        let next = tokio::select! {
            n = next_or_cancel(sess, id, &mut rx) => n?,
            () = grace_over.cancelled() => {
                drop(rx);
                let msg = ServerMessage::error(
                    Some(id),
                    ErrorCode::Busy,
                    "server shutting down: the download was interrupted; reget resumes it",
                );
                let _ = sess.send(&msg).await;
                return Err(End::Shutdown);
            }
        };
        let chunk = match next {
            Next::Cancelled => {
                drop(rx);
                tracing::info!(peer = %sess.peer, user = %sess.user, path = %shown, "download cancelled");
                let msg =
                    ServerMessage::error(Some(id), ErrorCode::Cancelled, "download cancelled");
                return sess.send(&msg).await;
            }
            Next::Work(None) => {
                return Err(End::Internal("file reader ended without a result".into()));
            }
            Next::Work(Some(chunk)) => chunk,
        };
        match chunk {
            ReadChunk::Data(bytes) => {
                match tokio::time::timeout(stall, sess.writer.write_data(&bytes)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(End::Timeout("client stopped reading")),
                }
            }
            ReadChunk::Progress(bytes) => sess.send(&ServerMessage::Progress { id, bytes }).await?,
            ReadChunk::Done(sha256) => {
                return sess
                    .send(&ServerMessage::ok_transfer(id, size, sha256))
                    .await;
            }
            ReadChunk::Failed(e) => {
                return reply_storage(sess, id, "get", &StorageError::from_io(e)).await;
            }
            ReadChunk::Refused(message) => {
                let msg = ServerMessage::error(Some(id), ErrorCode::IntegrityMismatch, message);
                return sess.send(&msg).await;
            }
            ReadChunk::Shrunk => return reply_shrunk(sess, id, &shown).await,
        }
    }
}

/// Sends a small file read whole: the `file` message and the data go out in one write, then
/// the `ok`.
async fn send_small(
    sess: &mut Session,
    id: u64,
    entry: Entry,
    data: &[u8],
    sha256: String,
) -> Result<(), End> {
    let size = entry.size;
    sess.writer.queue_message(&ServerMessage::File {
        id,
        size,
        mtime: entry.mtime,
        offset: 0,
    })?;
    if !data.is_empty() {
        let stall = sess.server.limits.stall_timeout;
        match tokio::time::timeout(stall, sess.writer.write_data(data)).await {
            Ok(r) => r?,
            Err(_) => return Err(End::Timeout("client stopped reading")),
        }
    }
    sess.send(&ServerMessage::ok_transfer(id, size, sha256))
        .await
}

async fn reply_shrunk(sess: &mut Session, id: u64, shown: &str) -> Result<(), End> {
    tracing::warn!(peer = %sess.peer, user = %sess.user, path = %shown, "file shrank during download");
    let msg = ServerMessage::error(
        Some(id),
        ErrorCode::SizeMismatch,
        "file changed on the server during the download",
    );
    sess.send(&msg).await
}
