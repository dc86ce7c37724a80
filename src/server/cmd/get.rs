//! `get`: stream a file to the client. The server announces the size, sends exactly that many
//! bytes, and ends with the SHA-256 of exactly the bytes it sent.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::super::session::{End, Session};
use super::{blocking, parse_path, reply_storage};
use crate::jail::StorageError;
use crate::protocol::{ErrorCode, ServerMessage};
use crate::transfer::{CHANNEL_DEPTH, ReadChunk, read_and_hash};

pub(super) async fn run(sess: &mut Session, id: u64, path: String) -> Result<(), End> {
    let Some(path) = parse_path(sess, id, &path).await? else {
        return Ok(());
    };
    let shown = path.to_string();
    let jail = Arc::clone(&sess.jail);
    let (file, entry) = match blocking(move || jail.open_read(&path)).await {
        Ok(f) => f,
        Err(e) => return reply_storage(sess, id, "get", &e).await,
    };
    let started = Instant::now();
    let size = entry.size;
    sess.send(&ServerMessage::File {
        id,
        size,
        mtime: entry.mtime,
    })
    .await?;

    // The reader hashes on the blocking pool while the session encrypts and sends: disk,
    // SHA-256 and TLS overlap instead of running in series.
    let (tx, mut rx) = mpsc::channel::<ReadChunk>(CHANNEL_DEPTH);
    tokio::task::spawn_blocking(move || read_and_hash(file, size, &tx));

    let stall = sess.server.limits.stall_timeout;
    while let Some(chunk) = rx.recv().await {
        match chunk {
            ReadChunk::Data(bytes) => {
                sess.writer.queue_data(&bytes)?;
                match tokio::time::timeout(stall, sess.writer.write_if_large()).await {
                    Ok(r) => r?,
                    Err(_) => return Err(End::Timeout("client stopped reading")),
                }
            }
            ReadChunk::Done(sha256) => {
                tracing::info!(
                    peer = %sess.peer,
                    user = %sess.user,
                    op = "get",
                    path = %shown,
                    bytes = size,
                    sha256 = %sha256,
                    ms = started.elapsed().as_millis() as u64,
                    "transfer ok"
                );
                return sess
                    .send(&ServerMessage::ok_transfer(id, size, sha256))
                    .await;
            }
            ReadChunk::Failed(e) => {
                return reply_storage(sess, id, "get", &StorageError::from_io(e)).await;
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
    Err(End::Internal("file reader ended without a result".into()))
}
