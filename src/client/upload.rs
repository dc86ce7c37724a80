//! Uploads: one file (`put`), a resumed one (`put_resume`), and many pipelined (`put_many`).
//!
//! The data follows the `put` request at once, without waiting for a go-ahead, and the reply
//! is read concurrently: the server may refuse early (exists, no space), and the client then
//! stops and sends `abort`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::io::WriteHalf;
use tokio::sync::{mpsc, oneshot};

use super::ClientError;
use super::connection::{
    Connection, Progress, Stream, Transferred, final_reply_from, timed, unexpected,
};
use crate::protocol::{ClientMessage, FrameWriter, ServerMessage, hex_digest};
use crate::transfer::{CHANNEL_DEPTH, ReadChunk, hash_prefix, read_and_hash_from};

/// Uploads kept in flight by `put_many`: enough to hide the round trip, few enough that a
/// refusal does not waste much.
const PIPELINE_DEPTH: usize = 32;

/// Sentinel: no request refused.
const NONE: u64 = u64::MAX;

/// One prepared upload: the opened local file and where it starts.
struct Source {
    file: std::fs::File,
    size: u64,
    offset: u64,
    hasher: Sha256,
}

impl Connection {
    /// Uploads `local` to `remote`. Returns once the server has committed the file and both
    /// digests agree.
    pub async fn put(
        &mut self,
        local: &Path,
        remote: &str,
        overwrite: bool,
        progress: Progress<'_>,
    ) -> Result<Transferred, ClientError> {
        let started = Instant::now();
        let source = open_source(local)?;
        self.upload(local, remote, overwrite, source, None, progress, started)
            .await
    }

    /// Resumes an interrupted upload: asks how much the server kept, compares the SHA-256 of
    /// that prefix (the server checks it against its copy and refuses on a difference), sends
    /// only the rest, and verifies the whole file at the end. With nothing kept it is a
    /// plain `put`.
    pub async fn put_resume(
        &mut self,
        local: &Path,
        remote: &str,
        overwrite: bool,
        progress: Progress<'_>,
    ) -> Result<Transferred, ClientError> {
        let started = Instant::now();
        let kept = self.partial(remote).await?;
        let mut source = open_source(local)?;
        if kept == 0 {
            return self
                .upload(local, remote, overwrite, source, None, progress, started)
                .await;
        }
        if kept > source.size {
            return Err(ClientError::Usage(format!(
                "cannot resume: the server kept {kept} bytes but {} has only {}; \
                 upload it again without resuming",
                // Escaped once, with the whole message, where it is printed.
                local.display(),
                source.size
            )));
        }
        let (file, hasher) = {
            let Source { file, .. } = source;
            let path = local.to_path_buf();
            tokio::task::spawn_blocking(move || {
                let mut file = file;
                let mut hasher = Sha256::new();
                hash_prefix(&mut file, kept, &mut hasher, |_| {})
                    .map(|()| (file, hasher))
                    .map_err(|e| ClientError::local(&path, e))
            })
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))??
        };
        let prefix = hex_digest(&hasher.clone().finalize());
        source = Source {
            file,
            size: source.size,
            offset: kept,
            hasher,
        };
        progress(kept);
        self.upload(
            local,
            remote,
            overwrite,
            source,
            Some(prefix),
            progress,
            started,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &mut self,
        local: &Path,
        remote: &str,
        overwrite: bool,
        source: Source,
        prefix_sha256: Option<String>,
        progress: Progress<'_>,
        started: Instant,
    ) -> Result<Transferred, ClientError> {
        let (size, offset) = (source.size, source.offset);
        let id = self.id();
        self.writer.queue_message(&ClientMessage::Put {
            id,
            path: remote.to_string(),
            size,
            overwrite,
            offset,
            prefix_sha256,
        })?;
        let refused = AtomicU64::new(NONE);
        let cancel = self.cancel.clone();
        let writer = &mut self.writer;
        let reader = &mut self.reader;
        let send = async {
            let stop = || refused.load(Ordering::Relaxed) == id || cancel.is_cancelled();
            send_data(writer, id, local, source, &stop, progress, true).await
        };
        let receive = async {
            let reply = final_reply_from(reader, id).await;
            if reply.is_err() {
                refused.store(id, Ordering::Relaxed);
            }
            reply
        };
        let (sent, reply) = tokio::join!(send, receive);
        let local_sha = match sent {
            Ok(Sent::Done(sha)) => sha,
            // Our own read failed; the server answered the abort with `cancelled`.
            Ok(Sent::LocalFailed(e)) => return Err(e),
            Ok(Sent::Stopped) if cancel_reply(&reply) && self.cancel.is_cancelled() => {
                return Err(ClientError::Cancelled);
            }
            Ok(Sent::Stopped) => return Err(reply.err().unwrap_or(ClientError::Cancelled)),
            // The server's own reason (e.g. it refused and closed) explains more than the
            // failed write that followed it.
            Err(e) => return Err(reply.err().unwrap_or(e)),
        };
        check_reply(reply?, size, local_sha, offset, started)
    }

    /// Uploads many files with up to [`PIPELINE_DEPTH`] requests in flight, so small files do
    /// not cost a round trip each. `on_done(index, result)` is called for every item, in
    /// order. An `Err` from this call means the connection broke (or the batch was
    /// cancelled); items not yet reported were not committed.
    pub async fn put_many(
        &mut self,
        items: &[(PathBuf, String)],
        overwrite: bool,
        progress: Progress<'_>,
        on_done: &mut (dyn FnMut(usize, Result<Transferred, ClientError>) + Send),
    ) -> Result<(), ClientError> {
        let refused = AtomicU64::new(NONE);
        let cancel = self.cancel.clone();
        let first_id = self.next_id_block(items.len() as u64);
        let (tx, rx) = mpsc::channel::<InFlight>(PIPELINE_DEPTH);
        let writer = &mut self.writer;
        let reader = &mut self.reader;
        let total = Arc::new(AtomicU64::new(0));

        let send = async {
            let mut outcome = Ok(());
            for (index, (local, remote)) in items.iter().enumerate() {
                if cancel.is_cancelled() {
                    break;
                }
                let id = first_id + index as u64;
                let started = Instant::now();
                let (sha_tx, sha_rx) = oneshot::channel();
                let source = match open_source(local) {
                    Ok(s) => s,
                    Err(e) => {
                        if tx.capacity() == 0
                            && let Err(e) = timed(writer.flush()).await.and_then(|r| Ok(r?))
                        {
                            outcome = Err(e);
                            break;
                        }
                        if tx.send(InFlight::Failed { index, error: e }).await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                let size = source.size;
                let item = InFlight::Sent {
                    index,
                    id,
                    size,
                    started,
                    sha: sha_rx,
                };
                if tx.capacity() == 0 {
                    // About to wait for the receiver, which may be waiting for a reply to
                    // uploads still in our buffer: send them first. (Only whole uploads are
                    // ever in the buffer here, never a request without its data.)
                    if let Err(e) = timed(writer.flush()).await.and_then(|r| Ok(r?)) {
                        outcome = Err(e);
                        break;
                    }
                }
                if tx.send(item).await.is_err() {
                    break;
                }
                if let Err(e) = writer.queue_message(&ClientMessage::Put {
                    id,
                    path: remote.clone(),
                    size,
                    overwrite,
                    offset: 0,
                    prefix_sha256: None,
                }) {
                    outcome = Err(e.into());
                    break;
                }
                let stop = || refused.load(Ordering::Relaxed) == id || cancel.is_cancelled();
                let base = total.load(Ordering::Relaxed);
                let mut file_progress = |n: u64| progress(base + n);
                match send_data(writer, id, local, source, &stop, &mut file_progress, false).await {
                    Ok(Sent::Done(sha)) => {
                        total.fetch_add(size, Ordering::Relaxed);
                        let _ = sha_tx.send(Ok(sha));
                    }
                    Ok(Sent::LocalFailed(e)) => {
                        let _ = sha_tx.send(Err(e));
                    }
                    Ok(Sent::Stopped) => {
                        let _ = sha_tx.send(Err(ClientError::Cancelled));
                    }
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            drop(tx);
            if outcome.is_ok() {
                outcome = timed(writer.flush()).await.and_then(|r| Ok(r?));
            }
            outcome
        };
        let receive = async {
            // Owned here: if this side stops early, the channel closes and the sender stops.
            let mut rx = rx;
            while let Some(item) = rx.recv().await {
                match item {
                    InFlight::Failed { index, error } => on_done(index, Err(error)),
                    InFlight::Sent {
                        index,
                        id,
                        size,
                        started,
                        sha,
                    } => {
                        let reply = final_reply_from(reader, id).await;
                        if reply.is_err() {
                            refused.store(id, Ordering::Relaxed);
                        }
                        let local = sha.await.unwrap_or(Err(ClientError::ConnectionLost));
                        match (reply, local) {
                            (Err(e), _) if e.is_fatal() => return Err(e),
                            (_, Err(ClientError::Cancelled)) if cancel.is_cancelled() => {
                                return Err(ClientError::Cancelled);
                            }
                            (Err(e), _) | (Ok(_), Err(e)) => on_done(index, Err(e)),
                            (Ok(msg), Ok(sha)) => {
                                on_done(index, check_reply(msg, size, sha, 0, started))
                            }
                        }
                    }
                }
            }
            if cancel.is_cancelled() {
                return Err(ClientError::Cancelled);
            }
            Ok(())
        };
        let (sent, received) = tokio::join!(send, receive);
        received?;
        sent
    }

    /// Reserves `n` consecutive request ids and returns the first.
    fn next_id_block(&mut self, n: u64) -> u64 {
        let first = self.id();
        for _ in 1..n {
            self.id();
        }
        first
    }
}

/// An upload the receiving side waits for, in order.
enum InFlight {
    /// Never sent: the local file could not be opened.
    Failed { index: usize, error: ClientError },
    /// Sent; its local digest arrives when the data is through.
    Sent {
        index: usize,
        id: u64,
        size: u64,
        started: Instant,
        sha: oneshot::Receiver<Result<String, ClientError>>,
    },
}

/// How sending one upload's data ended (the connection itself is fine in all three).
enum Sent {
    /// All data and `end` queued; the local SHA-256 of the whole file.
    Done(String),
    /// Stopped on request (refused, or cancelled); `abort` queued.
    Stopped,
    /// Reading the local file failed; `abort` queued.
    LocalFailed(ClientError),
}

fn open_source(local: &Path) -> Result<Source, ClientError> {
    let file = std::fs::File::open(local).map_err(|e| ClientError::local(local, e))?;
    let meta = file.metadata().map_err(|e| ClientError::local(local, e))?;
    if meta.is_dir() {
        return Err(ClientError::local(
            local,
            std::io::Error::from(std::io::ErrorKind::IsADirectory),
        ));
    }
    Ok(Source {
        file,
        size: meta.len(),
        offset: 0,
        hasher: Sha256::new(),
    })
}

/// Streams one upload's data (read and hashed on the blocking pool), then `end` — or
/// `abort` when `stop()` says so or the local read fails.
async fn send_data(
    writer: &mut FrameWriter<WriteHalf<Stream>>,
    id: u64,
    local: &Path,
    source: Source,
    stop: &(dyn Fn() -> bool + Sync),
    progress: &mut (dyn FnMut(u64) + Send),
    flush: bool,
) -> Result<Sent, ClientError> {
    let Source {
        file,
        size,
        offset,
        hasher,
    } = source;
    let (tx, mut rx) = mpsc::channel::<ReadChunk>(CHANNEL_DEPTH);
    tokio::task::spawn_blocking(move || {
        read_and_hash_from(
            file,
            size - offset,
            crate::protocol::DATA_CHUNK_LEN,
            hasher,
            &tx,
        )
    });
    let mut sent = offset;
    let result = loop {
        if stop() {
            writer.queue_message(&ClientMessage::Abort { id })?;
            break Sent::Stopped;
        }
        match rx.recv().await {
            Some(ReadChunk::Data(bytes)) => {
                if bytes.len() >= crate::protocol::DATA_CHUNK_LEN / 4 {
                    // Large chunks go out at once, without a copy into the queue.
                    timed(writer.write_data(&bytes)).await??;
                } else {
                    // Small files' data stays queued so that several share one write.
                    writer.queue_data(&bytes)?;
                    timed(writer.write_if_large()).await??;
                }
                sent += bytes.len() as u64;
                progress(sent);
            }
            Some(ReadChunk::Done(sha)) => {
                writer.queue_message(&ClientMessage::End {
                    id,
                    sha256: sha.clone(),
                })?;
                break Sent::Done(sha);
            }
            Some(ReadChunk::Failed(e)) => {
                writer.queue_message(&ClientMessage::Abort { id })?;
                break Sent::LocalFailed(ClientError::local(local, e));
            }
            Some(ReadChunk::Shrunk) | None => {
                writer.queue_message(&ClientMessage::Abort { id })?;
                break Sent::LocalFailed(ClientError::local(
                    local,
                    std::io::Error::other("file shrank while it was being sent"),
                ));
            }
        }
    };
    // In a pipeline, small uploads stay queued so that several share one write (the caller
    // flushes before it waits); a single upload goes out now.
    if flush || !matches!(result, Sent::Done(_)) {
        timed(writer.flush()).await??;
    } else {
        timed(writer.write_if_large()).await??;
    }
    Ok(result)
}

fn cancel_reply(reply: &Result<ServerMessage, ClientError>) -> bool {
    matches!(
        reply,
        Err(ClientError::Remote(w)) if w.code == crate::protocol::ErrorCode::Cancelled
    )
}

/// Checks the server's final reply against what was sent.
fn check_reply(
    reply: ServerMessage,
    size: u64,
    local_sha: String,
    resumed_from: u64,
    started: Instant,
) -> Result<Transferred, ClientError> {
    match reply {
        ServerMessage::Ok {
            size: Some(n),
            sha256: Some(remote_sha),
            ..
        } => {
            if n != size || remote_sha != local_sha {
                return Err(ClientError::Integrity {
                    local: local_sha,
                    remote: remote_sha,
                    download: false,
                });
            }
            Ok(Transferred {
                size,
                sha256: local_sha,
                elapsed: started.elapsed(),
                resumed_from,
            })
        }
        other => Err(unexpected(&other)),
    }
}
