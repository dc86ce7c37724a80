//! `copy`: a server-side copy, committed like an upload: a temp file beside the target,
//! hashed while written, fsynced, renamed without overwrite unless asked, directory fsynced.
//! Long copies report `progress`; the client may `cancel` (nothing appears then).

use std::io::{Read, Write};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::super::session::{End, Session};
use super::{Next, blocking, next_or_cancel, quota_reply, reply_storage};
use crate::jail::{Footprint, RemotePath, StorageError, TempFile};
use crate::protocol::{DATA_CHUNK_LEN, EntryKind, ErrorCode, ServerMessage, hex_digest};
use crate::transfer::PROGRESS_INTERVAL;

enum Copied {
    Progress(u64),
    Done(TempFile, String),
    Failed(StorageError),
    Shrunk,
}

pub(super) async fn run(
    sess: &mut Session,
    id: u64,
    from: RemotePath,
    to: RemotePath,
    overwrite: bool,
) -> Result<(), End> {
    let jail = Arc::clone(&sess.jail);
    let opened = blocking(move || {
        let (file, entry) = jail.open_read(&from)?;
        if to.is_root() {
            return Err(StorageError::IsADirectory);
        }
        let replaced = match jail.lstat(&to) {
            Ok(e) if e.kind == EntryKind::Dir => return Err(StorageError::IsADirectory),
            Ok(_) if !overwrite => return Err(StorageError::AlreadyExists),
            // An estimate for the reservation; the commit measures what it really replaces.
            Ok(e) if e.kind == EntryKind::File => Some(e.size),
            Ok(_) => None,
            Err(StorageError::NotFound) => None,
            Err(e) => return Err(e),
        };
        Ok((file, entry.size, replaced, jail.create_temp(&to)?))
    })
    .await;
    let (file, size, replaced, temp) = match opened {
        Ok(o) => o,
        Err(e) => return reply_storage(sess, id, "copy", &e).await,
    };
    let reservation = match &sess.account {
        Some(a) => match a.reserve(
            &sess.limits,
            size,
            size.saturating_sub(replaced.unwrap_or(0)),
            replaced.is_none(),
        ) {
            Ok(r) => Some(r),
            Err(refused) => return sess.send(&quota_reply(id, &refused, size)).await,
        },
        None => None,
    };
    let (tx, mut rx) = mpsc::channel::<Copied>(4);
    tokio::task::spawn_blocking(move || copy_file(file, size, temp, &tx));
    loop {
        match next_or_cancel(sess, id, &mut rx).await? {
            Next::Cancelled => {
                // The worker sees the closed channel and drops (removes) its temp.
                drop(rx);
                let msg = ServerMessage::error(Some(id), ErrorCode::Cancelled, "copy cancelled");
                return sess.send(&msg).await;
            }
            Next::Work(Some(Copied::Progress(bytes))) => {
                sess.send(&ServerMessage::Progress { id, bytes }).await?;
            }
            Next::Work(Some(Copied::Done(temp, sha))) => {
                // What the copy replaces is measured at the rename, under the change lock:
                // the target may have changed since the copy began (or be the source).
                let account = sess.account.clone();
                let mut reservation = reservation;
                let placed = blocking(move || {
                    let added = Footprint {
                        bytes: size,
                        files: 1,
                    };
                    let (dir, replaced) = {
                        let _changing = account.as_ref().map(|a| a.changing());
                        // The room was reserved from an earlier look at the target.
                        temp.rename_into_place_if(overwrite, |replaced| match &mut reservation {
                            Some(r) => r
                                .cover(added, replaced)
                                .map_err(|_| StorageError::QuotaExceeded),
                            None => Ok(()),
                        })?
                    };
                    if let Some(r) = reservation {
                        r.commit(added, replaced);
                    }
                    dir.sync()
                });
                return match placed.await {
                    Ok(()) => sess.send(&ServerMessage::ok_transfer(id, size, sha)).await,
                    Err(e) => reply_storage(sess, id, "copy", &e).await,
                };
            }
            Next::Work(Some(Copied::Failed(e))) => {
                return reply_storage(sess, id, "copy", &e).await;
            }
            Next::Work(Some(Copied::Shrunk)) => {
                let msg = ServerMessage::error(
                    Some(id),
                    ErrorCode::SizeMismatch,
                    "source changed on the server during the copy",
                );
                return sess.send(&msg).await;
            }
            Next::Work(None) => return Err(End::Internal("copier ended without a result".into())),
        }
    }
}

/// Copies exactly `size` bytes into `temp`, hashing them, then fsyncs.
fn copy_file(mut file: std::fs::File, size: u64, mut temp: TempFile, tx: &mpsc::Sender<Copied>) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; DATA_CHUNK_LEN];
    let mut done = 0u64;
    let mut last = std::time::Instant::now();
    while done < size {
        if tx.is_closed() {
            return; // cancelled or the session is gone: dropping `temp` removes it
        }
        let want = (size - done).min(buf.len() as u64) as usize;
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                let _ = tx.blocking_send(Copied::Shrunk);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.blocking_send(Copied::Failed(StorageError::from_io(e)));
                return;
            }
        };
        if let Err(e) = temp.file().write_all(&buf[..n]) {
            let _ = tx.blocking_send(Copied::Failed(StorageError::from_io(e)));
            return;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        if last.elapsed() >= PROGRESS_INTERVAL {
            let _ = tx.blocking_send(Copied::Progress(done));
            last = std::time::Instant::now();
        }
    }
    let digest = hex_digest(&hasher.finalize());
    // Recorded before the fsync, so it is durable with the copy.
    temp.record_sha256(&digest);
    let msg = match temp.sync() {
        Ok(()) => Copied::Done(temp, digest),
        Err(e) => Copied::Failed(e),
    };
    let _ = tx.blocking_send(msg);
}
