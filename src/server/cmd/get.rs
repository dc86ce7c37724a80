//! `get`: stream a file to the client. The server announces the size, sends exactly the bytes
//! from `offset` to that size, and ends with the SHA-256 of the whole file.
//!
//! A resume (`offset` > 0) first hashes the server's first `offset` bytes and refuses if they
//! differ from the client's `prefix_sha256`: appending to a prefix that does not match would
//! build a corrupt file. The client may `cancel` a running download.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::super::session::{End, Session};
use super::{Next, blocking, next_or_cancel, parse_path, reply_storage};
use crate::jail::StorageError;
use crate::protocol::{ErrorCode, ServerMessage, hex_digest};
use crate::transfer::{CHANNEL_DEPTH, ReadChunk, hash_prefix, is_hex_digest, read_and_hash_from};

pub(super) async fn run(
    sess: &mut Session,
    id: u64,
    path: String,
    offset: u64,
    prefix_sha256: Option<String>,
) -> Result<(), End> {
    let Some(path) = parse_path(sess, id, &path).await? else {
        return Ok(());
    };
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
    let (file, entry) = match blocking(move || jail.open_read(&path)).await {
        Ok(f) => f,
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
        read_and_hash_from(file, size - offset, hasher, &tx);
    });

    let stall = sess.server.limits.stall_timeout;
    loop {
        let chunk = match next_or_cancel(sess, id, &mut rx).await? {
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
            ReadChunk::Shrunk => {
                tracing::warn!(peer = %sess.peer, user = %sess.user, path = %shown, "file shrank during download");
                let msg = ServerMessage::error(
                    Some(id),
                    ErrorCode::SizeMismatch,
                    "file changed on the server during the download",
                );
                return sess.send(&msg).await;
            }
        }
    }
}
