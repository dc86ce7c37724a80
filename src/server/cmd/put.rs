//! `put`: receive a file. Data goes to a temp file created exclusively beside the target and
//! is hashed as it is written; after the client's `end` the file is fsynced, the digests are
//! compared, and only a match is renamed into place (then the directory is fsynced) before the
//! reply. Anything else leaves no file under the final name and no temp file behind.
//!
//! The client sends the data right after the request, without waiting (no round trip per
//! file). When the server refuses early, it replies at once and then discards the rest of
//! that upload up to its `end` or `abort`.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::super::session::{End, Session};
use super::{blocking, parse_path, refuse_read_only, reply_storage};
use crate::jail::{StorageError, TempFile};
use crate::protocol::{
    ClientMessage, ErrorCode, Frame, ServerMessage, decode_client_message, hex_digest,
};

enum ToWriter {
    Data(Bytes),
    /// All data arrived: fsync and hand the temp file back.
    Finish,
}

/// The writer's result: the synced temp file and the digest of what was written.
type Written = Result<(TempFile, String), StorageError>;

/// How the client ended the data of an upload.
enum Ending {
    End(String),
    Abort,
}

pub(super) async fn run(
    sess: &mut Session,
    id: u64,
    path: String,
    size: u64,
    overwrite: bool,
) -> Result<(), End> {
    let Some(target) = parse_path(sess, id, &path).await? else {
        return discard(sess, id, size).await;
    };
    if refuse_read_only(sess, id).await? {
        return discard(sess, id, size).await;
    }
    let started = Instant::now();
    let jail = Arc::clone(&sess.jail);
    let t = target.clone();
    let temp = blocking(move || {
        if t.is_root() {
            return Err(StorageError::IsADirectory);
        }
        // Fail fast on the common refusals; the commit re-checks atomically.
        match jail.lstat(&t) {
            Ok(e) if e.kind == crate::protocol::EntryKind::Dir => {
                return Err(StorageError::IsADirectory);
            }
            Ok(_) if !overwrite => return Err(StorageError::AlreadyExists),
            Ok(_) | Err(StorageError::NotFound) => {}
            Err(e) => return Err(e),
        }
        jail.create_temp(&t)
    })
    .await;
    let temp = match temp {
        Ok(t) => t,
        Err(e) => {
            reply_storage(sess, id, "put", &e).await?;
            return discard(sess, id, size).await;
        }
    };

    // Writing and hashing run on the blocking pool, overlapped with reading from TLS.
    let (tx, rx) = mpsc::channel::<ToWriter>(4);
    let writer = tokio::task::spawn_blocking(move || write_and_hash(temp, rx));

    let mut received: u64 = 0;
    let ending = loop {
        match sess.read_transfer_frame().await? {
            Frame::Data(bytes) => {
                received += bytes.len() as u64;
                if received > size {
                    // The writer sees the channel close without Finish and removes the temp.
                    drop(tx);
                    let _ = writer.await;
                    let msg = ServerMessage::error(
                        Some(id),
                        ErrorCode::SizeMismatch,
                        "more data than the declared size",
                    );
                    let _ = sess.send(&msg).await;
                    return Err(End::Protocol("upload longer than declared".into()));
                }
                if tx.send(ToWriter::Data(bytes)).await.is_err() {
                    // The writer stopped on an error (disk full, i/o): say so now so the
                    // client can stop sending, then drain the rest of the upload.
                    drop(tx);
                    let err = match writer.await {
                        Ok(Err(e)) => e,
                        _ => StorageError::Io(std::io::Error::other("writer ended")),
                    };
                    reply_storage(sess, id, "put", &err).await?;
                    return discard(sess, id, size - received).await;
                }
            }
            Frame::Message(m) => match decode_client_message(&m) {
                Ok(ClientMessage::End { id: eid, sha256 }) if eid == id => {
                    break Ending::End(sha256);
                }
                Ok(ClientMessage::Abort { id: aid }) if aid == id => break Ending::Abort,
                _ => {
                    drop(tx);
                    let _ = writer.await;
                    return Err(sess
                        .protocol_error("expected data, end or abort during an upload")
                        .await);
                }
            },
        }
    };

    let declared = match ending {
        Ending::Abort => {
            drop(tx);
            let _ = writer.await;
            let msg = ServerMessage::error(Some(id), ErrorCode::Cancelled, "upload cancelled");
            return sess.send(&msg).await;
        }
        Ending::End(sha) => sha,
    };
    if received != size {
        drop(tx);
        let _ = writer.await;
        let msg = ServerMessage::error(
            Some(id),
            ErrorCode::SizeMismatch,
            format!("declared {size} bytes, received {received}"),
        );
        return sess.send(&msg).await;
    }
    // An upload that ends exactly here: the writer fsyncs and returns the digest.
    let written: Written = if tx.send(ToWriter::Finish).await.is_ok() {
        drop(tx);
        writer
            .await
            .unwrap_or_else(|e| Err(StorageError::Io(std::io::Error::other(e.to_string()))))
    } else {
        drop(tx);
        match writer.await {
            Ok(Err(e)) => Err(e),
            _ => Err(StorageError::Io(std::io::Error::other("writer ended"))),
        }
    };
    let (temp, actual) = match written {
        Ok(w) => w,
        Err(e) => return reply_storage(sess, id, "put", &e).await,
    };
    if !declared.eq_ignore_ascii_case(&actual) {
        blocking(move || {
            temp.discard();
            Ok(())
        })
        .await
        .ok();
        tracing::warn!(
            peer = %sess.peer, user = %sess.user, op = "put", path = %target,
            declared = %crate::sanitize::for_log(&declared), actual = %actual,
            "integrity mismatch; upload refused"
        );
        let msg = ServerMessage::error(
            Some(id),
            ErrorCode::IntegrityMismatch,
            format!(
                "sha256 mismatch: client sent {}, server received {actual}",
                crate::sanitize::for_log(&declared)
            ),
        );
        return sess.send(&msg).await;
    }
    match blocking(move || temp.commit(overwrite)).await {
        Ok(()) => {
            tracing::info!(
                peer = %sess.peer,
                user = %sess.user,
                op = "put",
                path = %target,
                bytes = size,
                sha256 = %actual,
                ms = started.elapsed().as_millis() as u64,
                "transfer ok"
            );
            sess.send(&ServerMessage::ok_transfer(id, size, actual))
                .await
        }
        Err(e) => reply_storage(sess, id, "put", &e).await,
    }
}

/// Reads and drops the rest of a refused upload, up to its `end` or `abort`. More data than
/// the declared size is a protocol error.
async fn discard(sess: &mut Session, id: u64, mut allowed: u64) -> Result<(), End> {
    loop {
        match sess.read_transfer_frame().await? {
            Frame::Data(bytes) => {
                let n = bytes.len() as u64;
                if n > allowed {
                    // The upload already had its final reply; this is a session error.
                    return Err(sess.protocol_error("upload longer than declared").await);
                }
                allowed -= n;
            }
            Frame::Message(m) => match decode_client_message(&m) {
                Ok(ClientMessage::End { id: eid, .. } | ClientMessage::Abort { id: eid })
                    if eid == id =>
                {
                    return Ok(());
                }
                _ => {
                    return Err(sess
                        .protocol_error("expected data, end or abort during an upload")
                        .await);
                }
            },
        }
    }
}

/// Writes and hashes until `Finish`, then fsyncs. If the channel closes without `Finish`
/// (client gone, upload refused), the temp file is dropped, which removes it.
fn write_and_hash(mut temp: TempFile, mut rx: mpsc::Receiver<ToWriter>) -> Written {
    let mut hasher = Sha256::new();
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            ToWriter::Data(bytes) => {
                if let Err(e) = temp.file().write_all(&bytes) {
                    temp.discard();
                    return Err(StorageError::from_io(e));
                }
                hasher.update(&bytes);
            }
            ToWriter::Finish => {
                // An fsync error is final: the kernel reports it once, so retrying could
                // "succeed" on data that never reached the disk.
                temp.sync()?;
                return Ok((temp, hex_digest(&hasher.finalize())));
            }
        }
    }
    temp.discard();
    Err(StorageError::Io(std::io::Error::other(
        "upload ended early",
    )))
}
