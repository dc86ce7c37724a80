//! `get`: stream a file to the client. The server announces the size, sends exactly the bytes
//! from `offset` to that size, and ends with the SHA-256 of the whole file.
//!
//! A resume (`offset` > 0) first has the core hash the server's first `offset` bytes and
//! refuses if they differ from the client's `prefix_sha256`: appending to a prefix that does
//! not match would build a corrupt file. The client may `cancel` a running download.
//!
//! The final digest comes from the file's stored digest when that still describes the file
//! (see [`crate::stored_digest`]): the bytes after a resume's prefix, or all of them, are then
//! sent without hashing. The client hashes what it receives either way, so a file changed on
//! disk since its commit shows up there as a mismatch.

use super::super::session::{End, Session};
use super::{Next, reply_core};
use crate::protocol::{Entry, ErrorCode, ServerMessage, hex_digest};
use crate::service::{CoreError, Opened};
use crate::storage::{Download, Fetched, ReadEvent, Sha256Digest};
use crate::storage::{RemotePath, StorageError};
use crate::transfer::is_hex_digest;

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
    let download = match prefix {
        None => match sess.home.get_small(&path).await {
            Ok(Fetched::Whole { stat, data, sha256 }) => {
                return send_small(sess, id, stat.entry, &data, hex_digest(&sha256)).await;
            }
            Ok(Fetched::Larger(download)) => download,
            Ok(Fetched::Changed) => return reply_shrunk(sess, id, &shown).await,
            Err(e) => return reply_core(sess, id, "get", &e).await,
        },
        Some(expected) => {
            let mut digest: Sha256Digest = [0; 32];
            // Checked above: 64 hex digits.
            if hex::decode_to_slice(&expected, &mut digest).is_err() {
                return Err(End::Internal("a checked digest did not decode".into()));
            }
            match sess.home.open_download(&path, offset, Some(digest)).await {
                Ok(Opened::Download(download)) => {
                    return stream(sess, id, &shown, download, offset, &expected).await;
                }
                Ok(Opened::BeyondEnd { size }) => {
                    let msg = ServerMessage::error(
                        Some(id),
                        ErrorCode::BadRequest,
                        format!(
                            "resume offset {offset} is beyond the end of the file ({size} bytes)"
                        ),
                    );
                    return sess.send(&msg).await;
                }
                Err(e) => return reply_core(sess, id, "get", &e).await,
            }
        }
    };
    stream(sess, id, &shown, download, 0, "").await
}

/// Announces the file and sends what the download yields; the store reads (and hashes, or
/// checks a resume's prefix) on its own thread while the session encrypts and sends: disk,
/// SHA-256 and TLS overlap instead of running in series.
async fn stream(
    sess: &mut Session,
    id: u64,
    shown: &str,
    mut download: Box<dyn Download>,
    offset: u64,
    expected: &str,
) -> Result<(), End> {
    let entry = &download.stat().entry;
    let (size, mtime) = (entry.size, entry.mtime);
    sess.send(&ServerMessage::File {
        id,
        size,
        mtime,
        offset,
    })
    .await?;
    let stall = sess.server.limits.stall_timeout;
    let grace_over = sess.server.grace_over.clone();
    loop {
        let next = tokio::select! {
            n = next_or_cancel(sess, id, download.as_mut()) => n?,
            () = grace_over.cancelled() => {
                drop(download);
                let msg = ServerMessage::error(
                    Some(id),
                    ErrorCode::Busy,
                    "server shutting down: the download was interrupted; reget resumes it",
                );
                let _ = sess.send(&msg).await;
                return Err(End::Shutdown);
            }
        };
        let event = match next {
            Next::Cancelled => {
                drop(download);
                tracing::info!(peer = %sess.peer, user = %sess.user, path = %shown, "download cancelled");
                let msg =
                    ServerMessage::error(Some(id), ErrorCode::Cancelled, "download cancelled");
                return sess.send(&msg).await;
            }
            Next::Work(event) => event,
        };
        match event {
            Ok(ReadEvent::Data(bytes)) => {
                match tokio::time::timeout(stall, sess.writer.write_data(&bytes)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(End::Timeout("client stopped reading")),
                }
            }
            Ok(ReadEvent::Progress(bytes)) => {
                sess.send(&ServerMessage::Progress { id, bytes }).await?;
            }
            Ok(ReadEvent::End { sha256: Some(d) }) => {
                return sess
                    .send(&ServerMessage::ok_transfer(id, size, hex_digest(&d)))
                    .await;
            }
            Ok(ReadEvent::End { sha256: None }) => {
                return Err(End::Internal("file reader ended without a digest".into()));
            }
            Ok(ReadEvent::PrefixMismatch { actual }) => {
                let actual = hex_digest(&actual);
                let msg = ServerMessage::error(
                    Some(id),
                    ErrorCode::IntegrityMismatch,
                    format!(
                        "resume refused: the first {offset} bytes differ (local sha256 \
                         {expected}, server sha256 {actual}); download the whole file again"
                    ),
                );
                return sess.send(&msg).await;
            }
            Err(StorageError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return reply_shrunk(sess, id, shown).await;
            }
            Err(e) => return reply_core(sess, id, "get", &CoreError::Storage(e)).await,
        }
    }
}

/// The download's next event, or the client's cancel of this request; other frames that
/// arrive meanwhile are kept for later requests (as in [`super::step_or_cancel`]).
async fn next_or_cancel(
    sess: &mut Session,
    id: u64,
    download: &mut dyn Download,
) -> Result<Next<Result<ReadEvent, StorageError>>, End> {
    loop {
        // A download's `next` may be dropped and called again: nothing is lost.
        let frame = tokio::select! {
            event = download.next() => return Ok(Next::Work(event)),
            frame = sess.reader.read_frame(), if sess.can_read_ahead() => frame,
        };
        match frame {
            Ok(Some(f)) => {
                if sess.absorb(f, id) {
                    return Ok(Next::Cancelled);
                }
            }
            Ok(None) => return Err(End::ClientGone),
            Err(e) => return Err(e.into()),
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
