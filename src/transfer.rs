//! Streaming with SHA-256: the client's upload reads and hashes a file on the blocking pool
//! and hands chunks to the network side through a small bounded channel, so disk, hashing
//! and TLS overlap and memory stays bounded (the server's reads are `storage::local`'s);
//! both ends' receiving ([`Receiving`]) and prefix hashing ([`hash_prefix`]).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::direct::{DirectLimit, DirectWriter};
use crate::domain::hex_digest;
use crate::platform;

/// Chunks in flight between the reader thread and the network: enough to keep both busy.
pub const CHANNEL_DEPTH: usize = 4;

/// What the reader thread produces.
#[derive(Debug)]
pub enum ReadChunk {
    /// The next bytes of the file.
    Data(Bytes),
    /// All `size` bytes were read; the SHA-256 of exactly those bytes.
    Done(String),
    /// Reading failed.
    Failed(std::io::Error),
    /// The file ended before `size` bytes (it shrank while being sent).
    Shrunk,
}

/// The read size of [`hash_prefix`]: large enough that system calls do not dominate, small
/// enough to stay in cache while it is hashed.
pub const HASH_READ_LEN: usize = 256 * 1024;

/// How often long work without data reports `Progress`.
pub const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Hashes the next `len` bytes of `file` into `hasher`, calling `progress` with the bytes done
/// about every [`PROGRESS_INTERVAL`]. A file shorter than `len` is `UnexpectedEof`.
pub fn hash_prefix(
    file: &mut impl Read,
    len: u64,
    hasher: &mut Sha256,
    mut progress: impl FnMut(u64),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; HASH_READ_LEN];
    let mut done = 0u64;
    let mut last = std::time::Instant::now();
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        done += n as u64;
        if last.elapsed() >= PROGRESS_INTERVAL {
            progress(done);
            last = std::time::Instant::now();
        }
    }
    Ok(())
}

/// Reads exactly `len` bytes from `file` (a file that grew is cut there; one that shrank
/// yields `Shrunk`), continuing a hash that already covers earlier bytes (a resume: the final
/// digest is of those bytes and the `len` read here), and sends them in chunks of at most
/// `chunk` bytes (the caller's wire decides: a ferry/1 data frame's payload). Stops quietly
/// if the receiver is gone. Blocking: run it on the blocking pool.
pub fn read_and_hash_from(
    file: impl Read,
    len: u64,
    chunk: usize,
    mut hasher: Sha256,
    tx: &mpsc::Sender<ReadChunk>,
) {
    let send = |bytes| tx.blocking_send(ReadChunk::Data(bytes)).is_ok();
    match read_chunks(file, len, chunk, Some(&mut hasher), send) {
        Ok(true) => {
            let _ = tx.blocking_send(ReadChunk::Done(hex_digest(&hasher.finalize())));
        }
        // The receiver is gone.
        Ok(false) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            let _ = tx.blocking_send(ReadChunk::Shrunk);
        }
        Err(e) => {
            let _ = tx.blocking_send(ReadChunk::Failed(e));
        }
    }
}

/// The one read loop of both ends: reads exactly `len` bytes from `file` in chunks of at
/// most `chunk` bytes, hashing them into `hasher` (if any) and handing each to `send`.
/// `Ok(true)` once all are sent; `Ok(false)` as soon as `send` says its receiver is gone; a
/// file that ends early (it shrank) is `UnexpectedEof`. A file that grew is cut at `len`.
/// Blocking: run it on the blocking pool.
pub fn read_chunks(
    mut file: impl Read,
    len: u64,
    chunk: usize,
    mut hasher: Option<&mut Sha256>,
    mut send: impl FnMut(Bytes) -> bool,
) -> std::io::Result<bool> {
    let mut remaining = len;
    while remaining > 0 {
        let want = remaining.min(chunk.max(1) as u64);
        // read_to_end fills the spare capacity without zeroing it first.
        let mut buf = Vec::with_capacity(want as usize);
        let n = (&mut file).take(want).read_to_end(&mut buf)?;
        if (n as u64) < want {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&buf[..]);
        }
        remaining -= want;
        if !send(Bytes::from(buf)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// How a receiver puts a transfer's bytes into its file, on either end: around the page cache
/// for a large fresh file (see [`crate::direct`]), otherwise through it with write-back started
/// as it goes; and the SHA-256 of every byte.
pub struct Receiving {
    direct: Option<DirectWriter>,
    writeback: Writeback,
    hasher: Sha256,
}

impl Receiving {
    /// Starts receiving into `file` at its current position; `hasher` already covers what the
    /// file holds before it (a resumed transfer). `direct` asks for direct I/O, counted in
    /// that limit, which is used where [`DirectWriter::start`] allows it.
    pub fn start(file: &mut File, hasher: Sha256, direct: Option<&Arc<DirectLimit>>) -> Receiving {
        let start = file.stream_position().unwrap_or(0);
        Receiving {
            direct: direct.and_then(|limit| DirectWriter::start(file, start, limit)),
            writeback: Writeback::at(start),
            hasher,
        }
    }

    /// Writes and hashes the next bytes.
    pub fn write(&mut self, file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
        match self.direct.as_mut() {
            Some(d) => {
                d.write(bytes)?;
                if d.disk_is_behind() {
                    self.leave_direct(file)?;
                }
            }
            None => {
                file.write_all(bytes)?;
                self.writeback.wrote(file, bytes.len());
            }
        }
        self.hasher.update(bytes);
        Ok(())
    }

    /// Writes the rest through the page cache: the direct writer's blocks are written out,
    /// and the next byte goes after them (see [`DirectWriter::disk_is_behind`]).
    fn leave_direct(&mut self, file: &mut File) -> std::io::Result<()> {
        let Some(d) = self.direct.take() else {
            return Ok(());
        };
        let end = d.end();
        d.finish()?;
        file.seek(std::io::SeekFrom::Start(end))?;
        self.writeback = Writeback::at(end);
        tracing::debug!(
            at = end,
            "the disk fell behind direct writes: on through the page cache"
        );
        Ok(())
    }

    /// Ends the data: everything given is in the file afterwards (ready for fsync, or to be
    /// kept as a partial). With `complete`, write-back of the rest is started too. Returns the
    /// SHA-256 of all the file's bytes.
    pub fn finish(mut self, file: &File, complete: bool) -> std::io::Result<String> {
        if let Some(d) = self.direct.take() {
            d.finish()?;
        }
        if complete {
            self.writeback.written_all(file);
        }
        Ok(hex_digest(&self.hasher.finalize()))
    }

    /// The running hash of every byte the file holds so far (a prefix's and all written).
    pub fn hasher(&self) -> &Sha256 {
        &self.hasher
    }

    /// Goes back to `len` bytes, whose running hash is `hasher` (taken with
    /// [`Receiving::hasher`] when the file held `len` bytes): what a direct writer still
    /// buffers is written out first, then the file is cut and the next byte goes at `len`.
    /// A direct writer starts again where `len` is aligned; elsewhere the rest goes through
    /// the page cache (direct I/O cannot append at an unaligned offset).
    pub fn rewind(
        &mut self,
        file: &mut File,
        len: u64,
        hasher: Sha256,
        direct: Option<&Arc<DirectLimit>>,
    ) -> std::io::Result<()> {
        if let Some(d) = self.direct.take() {
            d.finish()?;
        }
        file.set_len(len)?;
        file.seek(std::io::SeekFrom::Start(len))?;
        *self = Receiving::start(file, hasher, direct);
        Ok(())
    }
}

/// How much a receiver writes before it asks the kernel to start writing it back.
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

/// Below this, the rest of a finished file is left to the fsync or group commit: small
/// files are cheaper to flush together than one by one.
const WRITEBACK_TAIL_MIN: u64 = 128 * 1024;

/// Tracks what a receiver wrote and starts write-back every [`WRITEBACK_STEP`] bytes, so the
/// fsync before the commit finds little left to do instead of a whole file's worth: the disk
/// works while the network still delivers.
#[derive(Debug, Default)]
struct Writeback {
    written: u64,
    started: u64,
}

impl Writeback {
    /// Tracking for a file whose next write lands at `offset` (non-zero when resuming).
    fn at(offset: u64) -> Writeback {
        Writeback {
            written: offset,
            started: offset,
        }
    }

    /// Records `n` more bytes written to `file` (at the end of what was written before).
    fn wrote(&mut self, file: &std::fs::File, n: usize) {
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_STEP {
            platform::start_writeback(file, self.started, self.written - self.started);
            self.started = self.written;
        }
    }

    /// The file is complete: starts write-back of what is not on its way yet, if it is
    /// enough to matter. For a file whose fsync is left to a group commit, the disk then
    /// works while the next files arrive instead of all at once at the commit.
    fn written_all(&mut self, file: &std::fs::File) {
        if self.written - self.started >= WRITEBACK_TAIL_MIN {
            platform::start_writeback(file, self.started, self.written - self.started);
            self.started = self.written;
        }
    }
}

/// True if `s` looks like a SHA-256 digest as the wire carries it: 64 lowercase hex digits.
pub fn is_hex_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk length that is not a divisor of the test data, so the last chunk is short.
    const CHUNK: usize = 64 * 1024;

    async fn collect(data: Vec<u8>, size: u64) -> (Vec<u8>, ReadChunk) {
        let (tx, mut rx) = mpsc::channel(CHANNEL_DEPTH);
        tokio::task::spawn_blocking(move || {
            read_and_hash_from(&data[..], size, CHUNK, Sha256::new(), &tx)
        });
        let mut out = Vec::new();
        loop {
            match rx.recv().await.unwrap() {
                ReadChunk::Data(b) => out.extend_from_slice(&b),
                other => return (out, other),
            }
        }
    }

    #[tokio::test]
    async fn hashes_exactly_the_bytes_sent() {
        let data: Vec<u8> = (0..CHUNK * 2 + 3).map(|i| i as u8).collect();
        let (out, end) = collect(data.clone(), data.len() as u64).await;
        assert_eq!(out, data);
        let ReadChunk::Done(d) = end else {
            panic!("{end:?}")
        };
        assert_eq!(d, hex_digest(&Sha256::digest(&data)));
        // A file that grew is cut at the announced size, and the digest covers what was sent.
        let (out, end) = collect(data.clone(), 10).await;
        assert_eq!(out, &data[..10]);
        let ReadChunk::Done(d) = end else { panic!() };
        assert_eq!(d, hex_digest(&Sha256::digest(&data[..10])));
    }

    #[tokio::test]
    async fn a_shrunk_file_is_reported() {
        let (_, end) = collect(vec![1, 2, 3], 4).await;
        assert!(matches!(end, ReadChunk::Shrunk));
    }

    #[test]
    fn digest_shape() {
        assert!(is_hex_digest(&"a".repeat(64)));
        assert!(!is_hex_digest(&"A".repeat(64)));
        assert!(!is_hex_digest(&"a".repeat(63)));
    }

    /// Receives `data` after `prefix` through a [`Receiving`] and returns the file's bytes
    /// and the digest it reported.
    fn received(
        prefix: &[u8],
        data: &[u8],
        direct: Option<&Arc<DirectLimit>>,
    ) -> (Vec<u8>, String, bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create_new(&path).unwrap();
        file.write_all(prefix).unwrap();
        let mut hasher = Sha256::new();
        hasher.update(prefix);
        let mut r = Receiving::start(&mut file, hasher, direct);
        let was_direct = r.direct.is_some();
        for chunk in data.chunks(CHUNK - 7) {
            r.write(&mut file, chunk).unwrap();
        }
        let digest = r.finish(&file, true).unwrap();
        file.sync_all().unwrap();
        (std::fs::read(&path).unwrap(), digest, was_direct)
    }

    #[test]
    fn receiving_through_the_page_cache_writes_and_hashes_every_byte() {
        // What a system without direct I/O does for every file (and Linux for small ones).
        let data: Vec<u8> = (0..5 * 1024 * 1024 + 11).map(|i| (i % 251) as u8).collect();
        let (got, digest, was_direct) = received(b"resumed prefix", &data, None);
        assert!(!was_direct);
        let mut whole = b"resumed prefix".to_vec();
        whole.extend_from_slice(&data);
        assert!(got == whole, "content differs");
        assert_eq!(digest, hex_digest(&Sha256::digest(&whole)));
    }

    #[test]
    fn receiving_a_large_fresh_file_goes_direct_where_the_system_has_it() {
        let data: Vec<u8> = (0..5 * 1024 * 1024 + 11).map(|i| (i % 253) as u8).collect();
        let limit = Arc::new(DirectLimit::new());
        let (got, digest, was_direct) = received(b"", &data, Some(&limit));
        assert_eq!(was_direct, platform::DIRECT_IO);
        assert!(got == data, "content differs");
        assert_eq!(digest, hex_digest(&Sha256::digest(&data)));
        assert_eq!(limit.active(), 0);
    }

    #[test]
    fn a_receiver_that_leaves_direct_writes_midway_keeps_every_byte_in_place() {
        // What happens when the disk falls behind: the direct writer's blocks (a partly
        // filled one among them) are written out, and the rest goes through the page cache
        // after them.
        let data: Vec<u8> = (0..6 * 1024 * 1024 + 11).map(|i| (i % 249) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create(&path).unwrap();
        let limit = Arc::new(DirectLimit::new());
        let mut r = Receiving::start(&mut file, Sha256::new(), Some(&limit));
        assert_eq!(r.direct.is_some(), platform::DIRECT_IO);
        let (before, after) = data.split_at(3 * 1024 * 1024 + 4099);
        for chunk in before.chunks(CHUNK - 7) {
            r.write(&mut file, chunk).unwrap();
        }
        r.leave_direct(&mut file).unwrap();
        assert!(r.direct.is_none());
        assert_eq!(limit.active(), 0);
        for chunk in after.chunks(CHUNK - 7) {
            r.write(&mut file, chunk).unwrap();
        }
        let digest = r.finish(&file, true).unwrap();
        file.sync_all().unwrap();
        assert!(std::fs::read(&path).unwrap() == data, "content differs");
        assert_eq!(digest, hex_digest(&Sha256::digest(&data)));
    }
}
