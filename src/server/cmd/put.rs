//! `put`: receive a file. Data goes to a temp file created exclusively beside the target and
//! is hashed as it is written; after the client's `end` the file is fsynced, the digests are
//! compared, and only a match is renamed into place (then the directory is fsynced) before the
//! reply. Anything else leaves no file under the final name.
//!
//! The client sends the data right after the request, without waiting (no round trip per
//! file). When the server refuses early, it replies at once and then discards the rest of
//! that upload up to its `end` or `abort`.
//!
//! An upload that is interrupted (the client vanished, stalled, or sent `abort`) is kept,
//! hidden, as a partial for this user and target; `put` with an `offset` resumes it once the
//! SHA-256 of the partial's first `offset` bytes matches the client's.

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::super::session::{End, Session};
use super::{blocking, parse_path, partial_key, refuse_read_only, reply_storage};
use crate::jail::{Jail, RemotePath, StorageError, TempFile};
use crate::protocol::{
    ClientMessage, EntryKind, ErrorCode, Frame, ServerMessage, decode_client_message, hex_digest,
};
use crate::transfer::{hash_prefix, is_hex_digest};

enum ToWriter {
    Data(Bytes),
    /// All data arrived: fsync and hand the temp file back.
    Finish,
}

/// How the writer thread ended.
enum Written {
    /// Synced; the digest of the whole file.
    Finished(TempFile, String),
    /// The data stopped without `Finish`: the caller keeps or drops the temp.
    Interrupted(TempFile),
    /// Writing or syncing failed; the temp is already removed.
    Failed(StorageError),
}

/// Why an upload was refused before any data was written.
enum Refusal {
    Storage(StorageError),
    /// A resume that cannot proceed, with the code and message for the client.
    Resume(ErrorCode, String),
}

impl From<StorageError> for Refusal {
    fn from(e: StorageError) -> Self {
        Refusal::Storage(e)
    }
}

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
    offset: u64,
    prefix_sha256: Option<String>,
) -> Result<(), End> {
    let expected = size.saturating_sub(offset);
    let Some(target) = parse_path(sess, id, &path).await? else {
        return discard(sess, id, expected).await;
    };
    if refuse_read_only(sess, id).await? {
        return discard(sess, id, expected).await;
    }
    let prefix = match (offset, prefix_sha256) {
        (0, _) => None,
        (o, Some(p)) if o <= size && is_hex_digest(&p.to_ascii_lowercase()) => {
            Some(p.to_ascii_lowercase())
        }
        _ => {
            let msg = ServerMessage::error(
                Some(id),
                ErrorCode::BadRequest,
                "a resumed put needs offset <= size and prefix_sha256 (64 hex digits)",
            );
            sess.send(&msg).await?;
            return discard(sess, id, expected).await;
        }
    };
    let started = Instant::now();
    let key = partial_key(&sess.user, &target);
    let jail = Arc::clone(&sess.jail);
    let (t, k) = (target.clone(), key.clone());
    let setup =
        tokio::task::spawn_blocking(move || prepare(&jail, &t, &k, overwrite, offset, prefix))
            .await
            .unwrap_or_else(|e| {
                Err(Refusal::Storage(StorageError::Io(std::io::Error::other(
                    e.to_string(),
                ))))
            });
    let (temp, hasher) = match setup {
        Ok(s) => s,
        Err(Refusal::Storage(e)) => {
            reply_storage(sess, id, "put", &e).await?;
            return discard(sess, id, expected).await;
        }
        Err(Refusal::Resume(code, message)) => {
            sess.send(&ServerMessage::error(Some(id), code, message))
                .await?;
            return discard(sess, id, expected).await;
        }
    };

    // Writing and hashing run on the blocking pool, overlapped with reading from TLS.
    let (tx, rx) = mpsc::channel::<ToWriter>(4);
    let writer = tokio::task::spawn_blocking(move || write_and_hash(temp, hasher, rx));
    let jail = Arc::clone(&sess.jail);
    let keep = |written: Result<Written, tokio::task::JoinError>, kept_bytes: u64| {
        let (jail, key) = (Arc::clone(&jail), key.clone());
        async move {
            if let Ok(Written::Interrupted(temp)) = written
                && kept_bytes > 0
            {
                let _ = blocking(move || temp.keep_as_partial(&jail, &key)).await;
            }
        }
    };

    let mut received: u64 = 0;
    let ending = loop {
        let frame = match sess.read_transfer_frame().await {
            Ok(f) => f,
            Err(end) => {
                drop(tx);
                let written = writer.await;
                if matches!(end, End::ClientGone | End::Timeout(_)) {
                    keep(written, offset + received).await;
                }
                return Err(end);
            }
        };
        match frame {
            Frame::Data(bytes) => {
                received += bytes.len() as u64;
                if received > expected {
                    // The writer sees the channel close; dropping its temp removes it.
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
                        Ok(Written::Failed(e)) => e,
                        _ => StorageError::Io(std::io::Error::other("writer ended")),
                    };
                    reply_storage(sess, id, "put", &err).await?;
                    return discard(sess, id, expected - received).await;
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
            keep(writer.await, offset + received).await;
            let msg = ServerMessage::error(Some(id), ErrorCode::Cancelled, "upload cancelled");
            return sess.send(&msg).await;
        }
        Ending::End(sha) => sha,
    };
    if received != expected {
        drop(tx);
        let _ = writer.await;
        let msg = ServerMessage::error(
            Some(id),
            ErrorCode::SizeMismatch,
            format!("declared {size} bytes, received {}", offset + received),
        );
        return sess.send(&msg).await;
    }
    let finished = tx.send(ToWriter::Finish).await.is_ok();
    drop(tx);
    let written = writer.await.unwrap_or_else(|e| {
        Written::Failed(StorageError::Io(std::io::Error::other(e.to_string())))
    });
    let (temp, actual) = match written {
        Written::Finished(temp, actual) if finished => (temp, actual),
        Written::Failed(e) => return reply_storage(sess, id, "put", &e).await,
        _ => {
            let e = StorageError::Io(std::io::Error::other("writer ended early"));
            return reply_storage(sess, id, "put", &e).await;
        }
    };
    if !declared.eq_ignore_ascii_case(&actual) {
        let _ = blocking(move || {
            temp.discard();
            Ok(())
        })
        .await;
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
                bytes = received,
                offset,
                size,
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

/// Checks the target and opens the temp file: a fresh one, or the kept partial after its
/// prefix matched. Returns the temp (positioned for appending) and the hash so far.
fn prepare(
    jail: &Jail,
    target: &RemotePath,
    key: &str,
    overwrite: bool,
    offset: u64,
    prefix: Option<String>,
) -> Result<(TempFile, Sha256), Refusal> {
    if target.is_root() {
        return Err(StorageError::IsADirectory.into());
    }
    // Fail fast on the common refusals; the commit re-checks atomically.
    match jail.lstat(target) {
        Ok(e) if e.kind == EntryKind::Dir => return Err(StorageError::IsADirectory.into()),
        Ok(_) if !overwrite => return Err(StorageError::AlreadyExists.into()),
        Ok(_) | Err(StorageError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    let Some(expected) = prefix else {
        // A fresh upload supersedes whatever partial an earlier attempt left.
        let _ = jail.remove_partial(key);
        return Ok((jail.create_temp(target)?, Sha256::new()));
    };
    let mut temp = match jail.take_partial(key, target) {
        Ok(t) => t,
        Err(StorageError::NotFound) => {
            return Err(Refusal::Resume(
                ErrorCode::NotFound,
                "no partial upload of this file to resume".into(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let have = temp.size()?;
    if have < offset {
        let _ = temp.keep_as_partial(jail, key);
        return Err(Refusal::Resume(
            ErrorCode::BadRequest,
            format!("the partial upload holds {have} bytes; cannot resume at {offset}"),
        ));
    }
    let mut hasher = Sha256::new();
    let file = temp.file();
    file.seek(SeekFrom::Start(0))
        .map_err(StorageError::from_io)?;
    hash_prefix(file, offset, &mut hasher, |_| {}).map_err(StorageError::from_io)?;
    let actual = hex_digest(&hasher.clone().finalize());
    if actual != expected {
        let _ = temp.keep_as_partial(jail, key);
        return Err(Refusal::Resume(
            ErrorCode::IntegrityMismatch,
            format!(
                "resume refused: the first {offset} bytes differ (local sha256 {expected}, \
                 server sha256 {actual}); upload the whole file again"
            ),
        ));
    }
    let file = temp.file();
    file.set_len(offset).map_err(StorageError::from_io)?;
    file.seek(SeekFrom::Start(offset))
        .map_err(StorageError::from_io)?;
    Ok((temp, hasher))
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

/// Writes and hashes until `Finish`, then fsyncs. If the channel closes without `Finish`, the
/// temp goes back to the caller, which keeps it for resume or drops (removes) it.
fn write_and_hash(
    mut temp: TempFile,
    mut hasher: Sha256,
    mut rx: mpsc::Receiver<ToWriter>,
) -> Written {
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            ToWriter::Data(bytes) => {
                if let Err(e) = temp.file().write_all(&bytes) {
                    temp.discard();
                    return Written::Failed(StorageError::from_io(e));
                }
                hasher.update(&bytes);
            }
            ToWriter::Finish => {
                // An fsync error is final: the kernel reports it once, so retrying could
                // "succeed" on data that never reached the disk.
                return match temp.sync() {
                    Ok(()) => Written::Finished(temp, hex_digest(&hasher.finalize())),
                    Err(e) => Written::Failed(e),
                };
            }
        }
    }
    Written::Interrupted(temp)
}
