//! `sha256`: the server's digest of a whole file, without sending it. A file whose stored
//! digest still describes it (see [`crate::stored_digest`]) is answered from that at once;
//! others are hashed, and long ones report `progress` every few seconds; the client may
//! `cancel`.

use std::io::Read;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::super::session::{End, Session};
use super::{Next, blocking, next_or_cancel, reply_storage};
use crate::jail::{RemotePath, StorageError};
use crate::protocol::{DATA_CHUNK_LEN, ErrorCode, ServerMessage, hex_digest};
use crate::stored_digest;
use crate::transfer::{PROGRESS_INTERVAL, ReadChunk};

pub(super) async fn run(sess: &mut Session, id: u64, path: RemotePath) -> Result<(), End> {
    let jail = Arc::clone(&sess.jail);
    let opened = blocking(move || {
        let (file, entry, state) = jail.open_read_state(&path)?;
        let known = stored_digest::lookup(&file, &state);
        Ok((file, entry, known))
    });
    let (file, entry) = match opened.await {
        Ok((_, entry, Some(sha))) => {
            return sess
                .send(&ServerMessage::ok_transfer(id, entry.size, sha))
                .await;
        }
        Ok((file, entry, None)) => (file, entry),
        Err(e) => return reply_storage(sess, id, "sha256", &e).await,
    };
    let (tx, mut rx) = mpsc::channel::<ReadChunk>(4);
    tokio::task::spawn_blocking(move || hash_file(file, entry.size, &tx));
    loop {
        match next_or_cancel(sess, id, &mut rx).await? {
            Next::Cancelled => {
                drop(rx);
                let msg = ServerMessage::error(Some(id), ErrorCode::Cancelled, "sha256 cancelled");
                return sess.send(&msg).await;
            }
            Next::Work(Some(ReadChunk::Progress(bytes))) => {
                sess.send(&ServerMessage::Progress { id, bytes }).await?;
            }
            Next::Work(Some(ReadChunk::Done(sha))) => {
                return sess
                    .send(&ServerMessage::ok_transfer(id, entry.size, sha))
                    .await;
            }
            Next::Work(Some(ReadChunk::Failed(e))) => {
                return reply_storage(sess, id, "sha256", &StorageError::from_io(e)).await;
            }
            Next::Work(Some(ReadChunk::Shrunk)) => {
                let msg = ServerMessage::error(
                    Some(id),
                    ErrorCode::SizeMismatch,
                    "file changed on the server while it was being hashed",
                );
                return sess.send(&msg).await;
            }
            Next::Work(_) => return Err(End::Internal("hasher ended without a result".into())),
        }
    }
}

/// Hashes exactly `size` bytes; stops early if the session no longer listens.
fn hash_file(mut file: std::fs::File, size: u64, tx: &mpsc::Sender<ReadChunk>) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; DATA_CHUNK_LEN];
    let mut done = 0u64;
    let mut last = std::time::Instant::now();
    while done < size {
        if tx.is_closed() {
            return;
        }
        let want = (size - done).min(buf.len() as u64) as usize;
        match file.read(&mut buf[..want]) {
            Ok(0) => {
                let _ = tx.blocking_send(ReadChunk::Shrunk);
                return;
            }
            Ok(n) => {
                hasher.update(&buf[..n]);
                done += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.blocking_send(ReadChunk::Failed(e));
                return;
            }
        }
        if last.elapsed() >= PROGRESS_INTERVAL {
            let _ = tx.blocking_send(ReadChunk::Progress(done));
            last = std::time::Instant::now();
        }
    }
    let _ = tx.blocking_send(ReadChunk::Done(hex_digest(&hasher.finalize())));
}
