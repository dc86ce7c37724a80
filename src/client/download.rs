//! Downloads: one file (`get`), a resumed one (`get_resume`), and many pipelined
//! (`get_many`). Data goes to a hidden partial beside the target, written and hashed on the
//! blocking pool, and is renamed into place only after the server's digest matched.

use std::collections::VecDeque;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::ClientError;
use super::connection::{Connection, Progress, Transferred, read_frame_from, timed, unexpected};
use super::local::Partial;
use crate::direct::DirectLimit;
use crate::platform::{self, GroupSync};
use crate::protocol::{
    ClientMessage, ErrorCode, Frame, ServerMessage, WireError, decode_server_message, hex_digest,
};
use crate::transfer::{hash_prefix, is_hex_digest};

/// Downloads up to this size wait for a group commit in `get_many`.
use crate::domain::GROUP_COMMIT_SMALL;

/// Downloads requested ahead by `get_many`.
const PIPELINE_DEPTH: usize = 32;

enum ToWriter {
    Data(Bytes),
    Finish,
}

/// How the local writer thread ended.
enum Written {
    /// Everything written; the digest of the whole file (prefix included).
    Finished(Partial, String),
    /// Stopped before `Finish`: kept or dropped by the caller.
    Interrupted(Partial),
    /// Writing failed (the partial is removed).
    Failed(std::io::Error),
}

/// A verified download waiting for the group commit: not yet renamed into place.
struct Deferred {
    partial: Partial,
    local: PathBuf,
    overwrite: bool,
}

/// A download prepared on the local side: its partial, opened and locked.
struct Target {
    local: PathBuf,
    partial: Partial,
    offset: u64,
    hasher: Sha256,
}

impl Connection {
    /// Downloads `remote` to `local` (a file path; the caller resolves directories). Never
    /// replaces an existing `local` unless `overwrite`.
    pub async fn get(
        &mut self,
        remote: &str,
        local: &Path,
        overwrite: bool,
        progress: Progress<'_>,
    ) -> Result<Transferred, ClientError> {
        let started = Instant::now();
        let target = prepare(local, overwrite, false).await?;
        let id = self.id();
        self.send(&get_request(id, remote, &target)).await?;
        self.receive(id, target, overwrite, false, progress, started)
            .await
    }

    /// Resumes an interrupted download: the hidden partial beside `local` is kept, the server
    /// checks the SHA-256 of that prefix against its file (and refuses on a difference), only
    /// the rest is sent, and the whole file is verified at the end.
    pub async fn get_resume(
        &mut self,
        remote: &str,
        local: &Path,
        overwrite: bool,
        progress: Progress<'_>,
    ) -> Result<Transferred, ClientError> {
        let started = Instant::now();
        let target = prepare(local, overwrite, true).await?;
        progress(target.offset);
        let id = self.id();
        self.send(&get_request(id, remote, &target)).await?;
        // The server hashes that prefix first, reporting `progress` up to its size.
        self.reader.expect_progress(target.offset);
        self.receive(id, target, overwrite, false, progress, started)
            .await
    }

    /// Downloads many files with up to [`PIPELINE_DEPTH`] requests in flight. `on_done` is
    /// called for every item, in order. An `Err` from this call means the connection broke
    /// (or the batch was cancelled); items not reported were not committed.
    pub async fn get_many(
        &mut self,
        items: &[(String, PathBuf)],
        overwrite: bool,
        progress: Progress<'_>,
        on_done: &mut (dyn FnMut(usize, Result<Transferred, ClientError>) + Send),
    ) -> Result<(), ClientError> {
        let mut next = 0;
        let mut in_flight: VecDeque<(usize, u64, Target, Instant)> = VecDeque::new();
        let mut done_bytes = 0u64;
        // Files renamed into place whose directory fsync (and report) is due: one fsync per
        // directory for a whole batch, as the server does for uploads.
        let mut unsynced: Vec<(usize, Transferred, Deferred)> = Vec::new();
        loop {
            while in_flight.len() < PIPELINE_DEPTH
                && next < items.len()
                && !self.cancel.is_cancelled()
            {
                let index = next;
                next += 1;
                let (remote, local) = &items[index];
                let started = Instant::now();
                match prepare(local, overwrite, false).await {
                    Ok(target) => {
                        let id = self.id();
                        self.writer
                            .queue_message(&get_request(id, remote, &target))?;
                        in_flight.push_back((index, id, target, started));
                    }
                    Err(e) => {
                        if in_flight.is_empty() {
                            sync_and_report(&mut unsynced, on_done).await;
                            on_done(index, Err(e));
                        } else {
                            // Report in order: after the ones already in flight.
                            next = index;
                            break;
                        }
                    }
                }
            }
            timed(self.writer.flush()).await??;
            let Some((index, id, target, started)) = in_flight.pop_front() else {
                break;
            };
            let base = done_bytes;
            let mut file_progress = |n: u64| progress(base + n);
            let cancelled = self.cancel.is_cancelled();
            let received = self
                .receive_deferred(
                    id,
                    target,
                    overwrite,
                    cancelled,
                    true,
                    &mut file_progress,
                    started,
                )
                .await;
            match received {
                Ok((t, deferred)) => {
                    done_bytes += t.size;
                    match deferred {
                        Some(d) => unsynced.push((index, t, d)),
                        None => on_done(index, Ok(t)),
                    }
                    if unsynced.len() >= PIPELINE_DEPTH {
                        sync_and_report(&mut unsynced, on_done).await;
                    }
                }
                Err(ClientError::Cancelled) => {
                    if in_flight.is_empty() {
                        sync_and_report(&mut unsynced, on_done).await;
                        return Err(ClientError::Cancelled);
                    }
                }
                Err(e) if e.is_fatal() => {
                    sync_and_report(&mut unsynced, on_done).await;
                    return Err(e);
                }
                Err(e) => {
                    sync_and_report(&mut unsynced, on_done).await;
                    on_done(index, Err(e));
                }
            }
        }
        sync_and_report(&mut unsynced, on_done).await;
        if self.cancel.is_cancelled() {
            return Err(ClientError::Cancelled);
        }
        Ok(())
    }

    /// Receives one download (after its request went out) into `target`, then verifies and
    /// commits it. With `cancel_now`, or when the cancel switch flips, the server is asked to
    /// stop and the result is `Cancelled`.
    async fn receive(
        &mut self,
        id: u64,
        target: Target,
        overwrite: bool,
        cancel_now: bool,
        progress: Progress<'_>,
        started: Instant,
    ) -> Result<Transferred, ClientError> {
        let (t, dir) = self
            .receive_deferred(id, target, overwrite, cancel_now, false, progress, started)
            .await?;
        debug_assert!(dir.is_none());
        Ok(t)
    }

    /// [`Connection::receive`], optionally leaving the directory fsync to the caller: then
    /// the file is renamed into place and the directory that still needs an fsync returned.
    #[allow(clippy::too_many_arguments)]
    async fn receive_deferred(
        &mut self,
        id: u64,
        target: Target,
        overwrite: bool,
        cancel_now: bool,
        defer_dir_sync: bool,
        progress: Progress<'_>,
        started: Instant,
    ) -> Result<(Transferred, Option<Deferred>), ClientError> {
        let Target {
            local,
            partial,
            offset,
            hasher,
        } = target;
        let size = match self.read_message().await? {
            ServerMessage::File {
                id: rid,
                size,
                offset: o,
                ..
            } if rid == id => {
                if o != offset || o > size {
                    return Err(ClientError::Protocol(format!(
                        "asked to resume at {offset}, server starts at {o}"
                    )));
                }
                size
            }
            ServerMessage::Error {
                id: rid,
                code,
                message,
            } if rid == Some(id) || rid.is_none() => {
                return Err(ClientError::Remote(WireError { code, message }));
            }
            other => return Err(unexpected(&other)),
        };

        let (tx, rx) = mpsc::channel::<ToWriter>(4);
        let direct = (size - offset >= crate::direct::MIN_SIZE).then(|| Arc::clone(&self.direct));
        let writer =
            tokio::task::spawn_blocking(move || write_and_hash(partial, hasher, rx, direct));
        let cancel = self.cancel.clone();
        let mut cancel_sent = false;
        if cancel_now {
            self.send(&ClientMessage::Cancel { id }).await?;
            cancel_sent = true;
        }
        let mut received = offset;
        let outcome: Result<String, ClientError> = loop {
            let frame = tokio::select! {
                f = read_frame_from(&mut self.reader) => f,
                () = cancel.cancelled(), if !cancel_sent => {
                    cancel_sent = true;
                    if let Err(e) = self.send(&ClientMessage::Cancel { id }).await {
                        break Err(e);
                    }
                    continue;
                }
            };
            let frame = match frame {
                Ok(f) => f,
                Err(e) => break Err(e),
            };
            match frame {
                Frame::Data(bytes) => {
                    received += bytes.len() as u64;
                    if received > size {
                        break Err(ClientError::Protocol(
                            "server sent more data than it announced".into(),
                        ));
                    }
                    if tx.send(ToWriter::Data(bytes)).await.is_err() {
                        // The writer failed; its error is reported below. Stop the server.
                        break Err(ClientError::Cancelled);
                    }
                    progress(received);
                }
                Frame::Message(m) => match decode_server_message(&m) {
                    Ok(ServerMessage::Progress { .. }) => {}
                    Ok(ServerMessage::Ok {
                        id: rid,
                        sha256: Some(remote_sha),
                        ..
                    }) if rid == id => {
                        if received != size || !is_hex_digest(&remote_sha) {
                            break Err(ClientError::Protocol(format!(
                                "server announced {size} bytes and sent {received}"
                            )));
                        }
                        break Ok(remote_sha);
                    }
                    Ok(ServerMessage::Error {
                        id: rid,
                        code,
                        message,
                    }) if rid == Some(id) || rid.is_none() => {
                        break Err(if code == ErrorCode::Cancelled && cancel_sent {
                            ClientError::Cancelled
                        } else {
                            ClientError::Remote(WireError { code, message })
                        });
                    }
                    Ok(other) => break Err(unexpected(&other)),
                    Err(_) => break Err(ClientError::Protocol("malformed message".into())),
                },
            }
        };

        let remote_sha = match outcome {
            Ok(sha) => {
                let finished = tx.send(ToWriter::Finish).await.is_ok();
                drop(tx);
                match writer.await {
                    Ok(Written::Finished(partial, local_sha)) if finished => {
                        if local_sha != sha {
                            drop(partial); // removes it: it is not the server's file
                            return Err(ClientError::Integrity {
                                local: local_sha,
                                remote: sha,
                                download: true,
                            });
                        }
                        let done = Transferred {
                            size,
                            sha256: sha,
                            elapsed: started.elapsed(),
                            resumed_from: offset,
                        };
                        if defer_dir_sync && size <= GROUP_COMMIT_SMALL {
                            // Verified; the group commit flushes and renames it. (A large
                            // file commits, and fsyncs, on its own.)
                            let deferred = Deferred {
                                partial,
                                local: local.clone(),
                                overwrite,
                            };
                            return Ok((done, Some(deferred)));
                        }
                        commit(partial, &local, overwrite).await?;
                        return Ok((done, None));
                    }
                    Ok(Written::Failed(e)) => return Err(ClientError::local(&local, e)),
                    _ => {
                        return Err(ClientError::local(
                            &local,
                            std::io::Error::other("writer ended"),
                        ));
                    }
                }
            }
            Err(e) => e,
        };
        // Not verified: keep what arrived for a resume if the transfer was merely
        // interrupted; anything else (a refusal, a protocol error) starts over next time.
        drop(tx);
        let written = writer.await;
        let interrupted = remote_sha.interrupted();
        match written {
            // What arrived (and a resumed prefix) is still good: keep it for the next try.
            Ok(Written::Interrupted(mut partial)) if interrupted && received > 0 => partial.keep(),
            Ok(Written::Interrupted(partial)) if interrupted => drop(partial),
            // Refused or broken: these bytes must not seed a resume.
            Ok(Written::Interrupted(mut partial)) => partial.discard_on_drop(),
            Ok(Written::Failed(e)) => return Err(ClientError::local(&local, e)),
            _ => {}
        }
        Err(remote_sha)
    }
}

/// The group commit of downloads: their data is made durable together (one flush per file
/// system where the platform has one, see [`platform::group_sync`]), each is renamed into
/// place, each directory that got a file is fsynced once, and then they are reported in
/// order. Any failure fails the files it concerns.
async fn sync_and_report(
    unsynced: &mut Vec<(usize, Transferred, Deferred)>,
    on_done: &mut (dyn FnMut(usize, Result<Transferred, ClientError>) + Send),
) {
    if unsynced.is_empty() {
        return;
    }
    let batch = std::mem::take(unsynced);
    let done = tokio::task::spawn_blocking(move || commit_group(batch, platform::group_sync()))
        .await
        .unwrap_or_default();
    for (index, result) in done {
        on_done(index, result);
    }
}

/// The blocking work of [`sync_and_report`], flushing with `sync`.
fn commit_group(
    batch: Vec<(usize, Transferred, Deferred)>,
    sync: GroupSync,
) -> Vec<(usize, Result<Transferred, ClientError>)> {
    // 1. Every file's data made durable.
    let partials: Vec<&Partial> = batch.iter().map(|(_, _, d)| &d.partial).collect();
    let flushed = flush_all(&partials, sync);
    // 2. Rename each into place.
    let placed: Vec<(usize, Transferred, PathBuf, Result<PathBuf, ClientError>)> = batch
        .into_iter()
        .zip(flushed)
        .map(|((index, t, d), flush)| {
            let result = match flush {
                Ok(()) => d
                    .partial
                    .commit_after_flush(d.overwrite)
                    .map_err(|e| commit_error(&d.local, e)),
                Err(kind) => Err(ClientError::local(&d.local, std::io::Error::from(kind))),
            };
            (index, t, d.local, result)
        })
        .collect();
    // 3. One fsync per directory.
    let mut synced: Vec<(PathBuf, Result<(), std::io::ErrorKind>)> = Vec::new();
    placed
        .into_iter()
        .map(|(index, t, local, result)| {
            let result = result.and_then(|dir| {
                let r = match synced.iter().find(|(p, _)| *p == dir) {
                    Some((_, r)) => *r,
                    None => {
                        let r = super::local::sync_dir(&dir).map_err(|e| e.kind());
                        synced.push((dir, r));
                        r
                    }
                };
                r.map_err(|kind| ClientError::local(&local, std::io::Error::from(kind)))
            });
            (index, result.map(|()| t))
        })
        .collect()
}

/// Makes the data of every partial durable; one result for each. With a flush that covers a
/// whole file system, one call per file system, through its earliest-opened partial (write-back
/// errors since that descriptor was opened are reported to it); otherwise one per file.
fn flush_all(partials: &[&Partial], sync: GroupSync) -> Vec<Result<(), std::io::ErrorKind>> {
    let flush = match sync {
        GroupSync::PerFile(flush) => {
            return partials
                .iter()
                .map(|p| p.flush(flush).map_err(|e| e.kind()))
                .collect();
        }
        GroupSync::PerFileSystem(flush) => flush,
    };
    let mut flushed: Vec<(u64, Result<(), std::io::ErrorKind>)> = Vec::new();
    let devices: Vec<std::io::Result<u64>> = partials.iter().map(|p| p.device()).collect();
    for (p, dev) in partials.iter().zip(&devices) {
        if let Ok(dev) = dev
            && !flushed.iter().any(|(k, _)| k == dev)
        {
            flushed.push((*dev, p.flush(flush).map_err(|e| e.kind())));
        }
    }
    devices
        .into_iter()
        .map(|dev| match dev {
            Ok(dev) => flushed
                .iter()
                .find(|(k, _)| *k == dev)
                .map_or(Err(std::io::ErrorKind::Other), |(_, r)| *r),
            Err(e) => Err(e.kind()),
        })
        .collect()
}

fn get_request(id: u64, remote: &str, target: &Target) -> ClientMessage {
    ClientMessage::Get {
        id,
        path: remote.to_string(),
        offset: target.offset,
        prefix_sha256: (target.offset > 0).then(|| hex_digest(&target.hasher.clone().finalize())),
    }
}

/// Checks the local side and opens the partial; with `resume`, hashes what it holds.
async fn prepare(local: &Path, overwrite: bool, resume: bool) -> Result<Target, ClientError> {
    if !overwrite && std::fs::symlink_metadata(local).is_ok() {
        return Err(ClientError::LocalExists(local.to_path_buf()));
    }
    let path = local.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let (mut partial, offset) =
            Partial::open(&path, resume).map_err(|e| ClientError::local(&path, e))?;
        let mut hasher = Sha256::new();
        if offset > 0 {
            let file = partial.file();
            file.seek(SeekFrom::Start(0))
                .and_then(|_| hash_prefix(file, offset, &mut hasher, |_| {}))
                .and_then(|()| file.seek(SeekFrom::Start(offset)).map(|_| ()))
                .map_err(|e| ClientError::local(&path, e))?;
            // Kept on failure from here on: the bytes are still good for the next try.
            partial.keep();
        }
        Ok(Target {
            local: path,
            partial,
            offset,
            hasher,
        })
    })
    .await
    .map_err(|e| ClientError::Protocol(e.to_string()))?
}

/// Commits a verified partial: fsync, rename into place, fsync the directory.
async fn commit(partial: Partial, local: &Path, overwrite: bool) -> Result<(), ClientError> {
    let path = local.to_path_buf();
    tokio::task::spawn_blocking(move || {
        partial
            .commit(overwrite)
            .map_err(|e| commit_error(&path, e))
    })
    .await
    .map_err(|e| ClientError::Protocol(e.to_string()))?
}

fn commit_error(path: &Path, e: std::io::Error) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::AlreadyExists => ClientError::LocalExists(path.to_path_buf()),
        _ => ClientError::local(path, e),
    }
}

/// Writes and hashes until `Finish`. With `direct`, a large download bypasses the page
/// cache (see [`crate::direct`]); everything received is in the file before it returns.
fn write_and_hash(
    mut partial: Partial,
    hasher: Sha256,
    mut rx: mpsc::Receiver<ToWriter>,
    direct: Option<Arc<DirectLimit>>,
) -> Written {
    let mut receiving = crate::transfer::Receiving::start(partial.file(), hasher, direct.as_ref());
    let finished = loop {
        match rx.blocking_recv() {
            Some(ToWriter::Data(bytes)) => {
                if let Err(e) = receiving.write(partial.file(), &bytes) {
                    return Written::Failed(e);
                }
            }
            Some(ToWriter::Finish) => break true,
            None => break false,
        }
    };
    match receiving.finish(partial.file(), finished) {
        Err(e) => Written::Failed(e),
        Ok(digest) if finished => Written::Finished(partial, digest),
        Ok(_) => Written::Interrupted(partial),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::fs::File;
    use std::time::Duration;

    use super::*;

    thread_local! {
        /// Flushes done on this thread by `counted_fsync` / `counted_syncfs`.
        static FLUSHES: Cell<usize> = const { Cell::new(0) };
    }

    fn counted_fsync(file: &File) -> std::io::Result<()> {
        FLUSHES.with(|n| n.set(n.get() + 1));
        platform::portable::sync_filesystem(file)
    }

    fn counted_syncfs(file: &File) -> std::io::Result<()> {
        FLUSHES.with(|n| n.set(n.get() + 1));
        platform::sync_filesystem(file)
    }

    /// A verified download of `bytes` to `local`, waiting for the group commit.
    fn waiting(index: usize, local: &Path, bytes: &[u8]) -> (usize, Transferred, Deferred) {
        let (mut partial, _) = Partial::open(local, false).unwrap();
        partial.write_all(bytes).unwrap();
        let t = Transferred {
            size: bytes.len() as u64,
            sha256: hex_digest(&Sha256::digest(bytes)),
            elapsed: Duration::ZERO,
            resumed_from: 0,
        };
        let d = Deferred {
            partial,
            local: local.to_path_buf(),
            overwrite: false,
        };
        (index, t, d)
    }

    /// Files in two directories of one file system, committed as a group with `sync`: each
    /// lands whole, in order, and the flush ran `flushes` times.
    fn group_commits_with(sync: GroupSync, flushes: usize) {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let targets = [dir.path().join("a"), sub.join("b"), dir.path().join("c")];
        let batch: Vec<_> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| waiting(i, t, format!("file {i}").as_bytes()))
            .collect();
        FLUSHES.with(|n| n.set(0));
        let done = commit_group(batch, sync);
        assert_eq!(FLUSHES.with(Cell::get), flushes);
        assert_eq!(done.len(), 3);
        for (i, (index, result)) in done.into_iter().enumerate() {
            assert_eq!(index, i);
            let t = result.unwrap();
            assert_eq!(t.size, 6);
            assert_eq!(
                std::fs::read(&targets[i]).unwrap(),
                format!("file {i}").as_bytes()
            );
        }
        // No partial is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
        assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 1);
    }

    #[test]
    fn group_commit_on_the_portable_flush_fsyncs_every_file() {
        // Where a flush covers only its own file, each file of the group gets one.
        group_commits_with(GroupSync::PerFile(counted_fsync), 3);
    }

    #[test]
    fn group_commit_with_syncfs_flushes_each_file_system_once() {
        group_commits_with(GroupSync::PerFileSystem(counted_syncfs), 1);
    }

    #[test]
    fn the_platform_picks_the_group_flush_its_sync_filesystem_can_carry() {
        let picked = match platform::group_sync() {
            GroupSync::PerFileSystem(_) => true,
            GroupSync::PerFile(_) => false,
        };
        assert_eq!(picked, platform::SYNCFS_COVERS_FILE_SYSTEM);
        assert_eq!(picked, cfg!(target_os = "linux"));
    }

    #[test]
    fn a_failed_flush_fails_only_its_own_file_on_the_portable_path() {
        fn refuse_short(file: &File) -> std::io::Result<()> {
            if file.metadata()?.len() < 5 {
                return Err(std::io::Error::other("write-back failed"));
            }
            platform::portable::sync_filesystem(file)
        }
        let dir = tempfile::tempdir().unwrap();
        let (good, bad) = (dir.path().join("good"), dir.path().join("bad"));
        let batch = vec![waiting(0, &good, b"long enough"), waiting(1, &bad, b"no")];
        let done = commit_group(batch, GroupSync::PerFile(refuse_short));
        assert!(done[0].1.is_ok());
        assert!(done[1].1.is_err());
        assert_eq!(std::fs::read(&good).unwrap(), b"long enough");
        assert!(!bad.exists(), "an unflushed file is not renamed into place");
        drop(done);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "its partial is removed"
        );
    }
}
