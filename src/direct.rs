//! Large received files written around the page cache (`O_DIRECT`).
//!
//! A receiver that writes through the page cache pays for every byte twice: a copy into
//! freshly allocated cache pages, then write-back of those pages before the fsync can return.
//! On the 2-core VMs this project is measured on, 1 GiB written that way and fsynced cost
//! 1.2-2.8 s of system time; the same bytes written directly in 1 MiB blocks cost 0.2-0.6 s
//! and reached the disk faster (0.73 s against 1.8-3.2 s with `dd`). That CPU is what the
//! network, TLS and SHA-256 of a transfer compete for.
//!
//! [`DirectWriter`] copies what it is given into page-aligned 1 MiB blocks and hands each full
//! block to a thread of its own, which writes it at its offset while the next one fills, so
//! the disk works in parallel with the receiver. The last, partial block is written with the
//! flag cleared again (direct I/O needs aligned lengths), and the caller fsyncs as before: the
//! fsync still makes the size and the device's cache durable. Where the file system refuses
//! direct I/O, at the start or on the first write, the writer falls back to ordinary writes
//! and nothing else changes; on a system without direct I/O ([`crate::platform::DIRECT_IO`])
//! no writer starts and the receiver writes through the page cache.
//!
//! Direct I/O only pays while the disk keeps up. On another VM of this project (stop 25),
//! direct writes reached 230-340 MB/s where the cache and an fsync reached 430-475 MB/s (`dd`,
//! 512 MiB, alternating), and a 1 GiB download took 4.65-5.77 s written directly against
//! 3.75-4.33 s through the cache. So a writer watches how long its receiver waits for a free
//! block: once that is more than a tenth of its time ([`DirectWriter::disk_is_behind`], after
//! the first [`WARMUP_BLOCKS`]), the receiver finishes it and writes the rest through the
//! cache, where the kernel's write-back can go faster. A disk that keeps up is never waited
//! for, and its files stay direct to the end.
//!
//! How many writers run at once is capped per owner ([`DirectLimit`]: the server's, or a
//! client connection's), not per process.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use crate::mapping::Mapping;
use crate::platform;

/// Size of one direct write, and of each of the writer's buffers.
const BLOCK: usize = 1024 * 1024;

/// Buffers per writer: one filling, one being written, one spare for jitter.
const BUFFERS: usize = 3;

/// Blocks written before a writer judges whether the disk keeps up: the first ones fill the
/// buffers without waiting, and a single slow write early on says little.
const WARMUP_BLOCKS: u64 = 16;

/// File offsets and lengths of direct writes are multiples of this (the largest logical
/// block size in common use; smaller ones divide it).
const ALIGN: u64 = 4096;

/// Files at least this large are received with a [`DirectWriter`]. Smaller ones are cheap
/// to write through the cache and are often committed as a group with one `syncfs`.
pub const MIN_SIZE: u64 = 4 * 1024 * 1024;

/// At most this many direct writers at once per [`DirectLimit`] (each holds `BUFFERS` MiB);
/// further receivers write through the page cache.
const MAX_ACTIVE: usize = 16;

/// The direct writers running at once for one owner, capped at 16 (`MAX_ACTIVE`). The server
/// owns one for all its sessions, a client connection one for its downloads; pass it to
/// [`DirectWriter::start`] as an `Arc`.
#[derive(Debug, Default)]
pub struct DirectLimit {
    active: AtomicUsize,
}

impl DirectLimit {
    pub fn new() -> DirectLimit {
        DirectLimit::default()
    }

    /// Direct writers running now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    fn take(self: &Arc<Self>) -> Option<DirectPermit> {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_ACTIVE).then_some(n + 1)
            })
            .ok()
            .map(|_| DirectPermit(Arc::clone(self)))
    }
}

/// One of a [`DirectLimit`]'s [`MAX_ACTIVE`] places, given back on drop.
struct DirectPermit(Arc<DirectLimit>);

impl Drop for DirectPermit {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A page-aligned buffer of [`BLOCK`] bytes (mapped from the kernel, so its memory goes back
/// to the system when the transfer ends, not to the heap), and how much of it is filled.
struct Block {
    map: Mapping,
    len: usize,
}

impl Block {
    fn new() -> io::Result<Block> {
        Ok(Block {
            map: Mapping::new(BLOCK)?,
            len: 0,
        })
    }

    fn filled(&self) -> &[u8] {
        &self.map.bytes()[..self.len]
    }

    /// Copies as much of `data` as fits; returns how much that was.
    fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(BLOCK - self.len);
        self.map.bytes_mut()[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    fn is_full(&self) -> bool {
        self.len == BLOCK
    }
}

/// Writes a file sequentially from a starting offset with direct I/O, on a thread of its own.
///
/// Call [`DirectWriter::finish`] to write what is still buffered and learn whether every
/// write succeeded; dropping the writer instead waits for the writes in progress and discards
/// the rest (for a file about to be removed anyway).
pub struct DirectWriter {
    file: File,
    /// The block being filled and the file offset of its first byte.
    current: Option<Block>,
    offset: u64,
    spare: Vec<Block>,
    to_io: Option<mpsc::SyncSender<(Block, u64)>>,
    free: mpsc::Receiver<Block>,
    io: Option<JoinHandle<io::Result<()>>>,
    _permit: DirectPermit,
    /// When the writer started, how long its receiver has waited for free blocks since, and
    /// how many blocks it has sent to be written.
    started: std::time::Instant,
    waited: std::time::Duration,
    blocks: u64,
}

impl DirectWriter {
    /// A direct writer for `file` whose next byte goes at `offset`, counted in `limit`, or
    /// `None` where direct I/O is not worth trying or not possible: an unaligned offset (a
    /// resumed transfer), too many writers at once, a system without direct I/O or a file
    /// system that refuses it, no memory, no thread.
    pub fn start(file: &File, offset: u64, limit: &Arc<DirectLimit>) -> Option<DirectWriter> {
        if !platform::DIRECT_IO || !offset.is_multiple_of(ALIGN) {
            return None;
        }
        let permit = limit.take()?;
        // The writer thread gets its own descriptor of the same open file; the flag belongs
        // to the open file, so both see it.
        let file = file.try_clone().ok()?;
        platform::set_direct(&file, true).ok()?;
        let started = Self::spawn(&file).and_then(|(io, to_io, free)| {
            let spare = (0..BUFFERS - 1)
                .map(|_| Block::new())
                .collect::<io::Result<Vec<_>>>()?;
            Ok((io, to_io, free, spare, Block::new()?))
        });
        let (io, to_io, free, spare, current) = match started {
            Ok(s) => s,
            Err(_) => {
                let _ = platform::set_direct(&file, false);
                return None;
            }
        };
        Some(DirectWriter {
            file,
            current: Some(current),
            offset,
            spare,
            to_io: Some(to_io),
            free,
            io: Some(io),
            _permit: permit,
            started: std::time::Instant::now(),
            waited: std::time::Duration::ZERO,
            blocks: 0,
        })
    }

    #[allow(clippy::type_complexity)]
    fn spawn(
        file: &File,
    ) -> io::Result<(
        JoinHandle<io::Result<()>>,
        mpsc::SyncSender<(Block, u64)>,
        mpsc::Receiver<Block>,
    )> {
        let (to_io, jobs) = mpsc::sync_channel::<(Block, u64)>(BUFFERS);
        let (give_back, free) = mpsc::sync_channel::<Block>(BUFFERS);
        let file = file.try_clone()?;
        let io = std::thread::Builder::new()
            .name("ferry-direct".into())
            .spawn(move || write_blocks(&file, &jobs, &give_back))?;
        Ok((io, to_io, free))
    }

    /// Buffers `data`, writing each block as it fills. An error is the first write that
    /// failed; the writer is of no further use after one.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let block = match self.current.as_mut() {
                Some(b) => b,
                None => return Err(io::Error::other("direct writer already failed")),
            };
            let n = block.fill(data);
            data = &data[n..];
            if block.is_full() {
                self.submit()?;
                let next = match self.spare.pop() {
                    Some(b) => b,
                    // Waits for the writer thread to finish a block; if it stopped on an
                    // error, the channel is closed and the error comes from joining it.
                    None => {
                        let waiting = std::time::Instant::now();
                        let free = self.free.recv();
                        self.waited += waiting.elapsed();
                        match free {
                            Ok(b) => b,
                            Err(_) => return Err(self.stop()),
                        }
                    }
                };
                self.current = Some(next);
            }
        }
        Ok(())
    }

    /// Whether the disk holds the receiver back: after [`WARMUP_BLOCKS`], the receiver has
    /// spent more than a tenth of the writer's life waiting for a block to come back. The
    /// caller then [`finish`](DirectWriter::finish)es the writer and goes on through the
    /// page cache from [`DirectWriter::end`].
    pub fn disk_is_behind(&self) -> bool {
        self.blocks >= WARMUP_BLOCKS && self.waited * 10 > self.started.elapsed()
    }

    /// The file offset after the last byte given.
    pub fn end(&self) -> u64 {
        self.offset + self.current.as_ref().map_or(0, |b| b.len as u64)
    }

    /// Sends the current block to the writer thread.
    fn submit(&mut self) -> io::Result<()> {
        let Some(block) = self.current.take() else {
            return Ok(());
        };
        let len = block.len as u64;
        if len == 0 {
            return Ok(());
        }
        let sent = match &self.to_io {
            Some(tx) => tx.send((block, self.offset)).is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.stop());
        }
        self.offset += len;
        self.blocks += 1;
        Ok(())
    }

    /// Closes the queue, waits for the writer thread and returns its error (or a generic one
    /// if it ended without one).
    fn stop(&mut self) -> io::Error {
        match self.join() {
            Err(e) => e,
            Ok(()) => io::Error::other("direct writer stopped"),
        }
    }

    fn join(&mut self) -> io::Result<()> {
        self.to_io = None;
        let result = match self.io.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("direct writer thread panicked"))),
            None => Ok(()),
        };
        // Whatever happened, later use of the file (fsync, appending on resume) is ordinary.
        let cleared = platform::set_direct(&self.file, false);
        result.and(cleared)
    }

    /// Writes what is buffered, waits for every write, and clears the direct flag: the file
    /// then holds every byte given, ready for the caller's fsync.
    pub fn finish(mut self) -> io::Result<()> {
        self.submit()?;
        self.join()
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

/// The writer thread: writes each block at its offset and gives the buffer back. Stops at the
/// first error (closing both channels, which the other side notices).
fn write_blocks(
    file: &File,
    jobs: &mpsc::Receiver<(Block, u64)>,
    give_back: &mpsc::SyncSender<Block>,
) -> io::Result<()> {
    let mut direct = true;
    while let Ok((mut block, offset)) = jobs.recv() {
        let data = block.filled();
        // Only the last block can be short; its unaligned tail is written through the cache.
        let aligned = if direct {
            data.len() - data.len() % ALIGN as usize
        } else {
            0
        };
        if aligned > 0 {
            match platform::write_all_at(file, &data[..aligned], offset) {
                Ok(()) => {}
                // The file system took the flag but not the write (alignment it needs is
                // larger, or no direct I/O after all): nothing was written, carry on without.
                Err(e) if platform::direct_write_refused(&e) => {
                    platform::set_direct(file, false)?;
                    direct = false;
                    platform::write_all_at(file, &data[..aligned], offset)?;
                }
                Err(e) => return Err(e),
            }
        }
        if aligned < data.len() {
            if direct {
                platform::set_direct(file, false)?;
                direct = false;
            }
            platform::write_all_at(file, &data[aligned..], offset + aligned as u64)?;
        }
        block.len = 0;
        if give_back.send(block).is_err() {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn written_through(sizes: &[usize], offset: u64) -> (Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create_new(&path).unwrap();
        let prefix = pattern(offset as usize, 7);
        platform::write_all_at(&file, &prefix, 0).unwrap();
        let mut expected = prefix;
        let limit = Arc::new(DirectLimit::new());
        let mut w = DirectWriter::start(&file, offset, &limit).expect("direct writer");
        assert_eq!(limit.active(), 1);
        for (i, &n) in sizes.iter().enumerate() {
            let chunk = pattern(n, i as u8);
            w.write(&chunk).unwrap();
            expected.extend_from_slice(&chunk);
        }
        w.finish().unwrap();
        assert_eq!(limit.active(), 0, "the place is given back");
        // The flag is off again: an unaligned buffered write works.
        assert!(!platform::is_direct(&file).unwrap());
        file.sync_all().unwrap();
        let mut got = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut got).unwrap();
        (got, expected)
    }

    #[test]
    fn writes_every_byte_in_order_whatever_the_chunking() {
        for sizes in [
            vec![],
            vec![1],
            vec![BLOCK],
            vec![BLOCK - 1, 2],
            vec![BLOCK + 1],
            vec![3 * BLOCK + 4095],
            vec![65_536; 100],
            vec![1_000_003, 17, 4096, 5 * BLOCK, 12_345],
        ] {
            let (got, expected) = written_through(&sizes, 0);
            assert_eq!(got.len(), expected.len(), "sizes {sizes:?}");
            assert!(got == expected, "content differs for sizes {sizes:?}");
        }
    }

    #[test]
    fn starts_at_an_aligned_offset_and_refuses_an_unaligned_one() {
        let (got, expected) = written_through(&[2 * BLOCK + 10], 8192);
        assert!(got == expected);
        let file = tempfile::tempfile().unwrap();
        let limit = Arc::new(DirectLimit::new());
        assert!(DirectWriter::start(&file, 100, &limit).is_none());
        assert_eq!(limit.active(), 0);
    }

    #[test]
    fn a_failed_write_is_reported() {
        // A file opened read-only: the writer thread's first write fails with EBADF.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro");
        std::fs::write(&path, b"").unwrap();
        let file = File::open(&path).unwrap();
        let Some(mut w) = DirectWriter::start(&file, 0, &Arc::new(DirectLimit::new())) else {
            return; // the file system refused the flag: nothing to test here
        };
        let data = vec![1u8; 4 * BLOCK];
        let result = match w.write(&data) {
            Ok(()) => w.finish(),
            Err(e) => Err(e),
        };
        assert!(result.is_err());
    }

    #[test]
    fn at_most_max_active_writers_per_limit() {
        let dir = tempfile::tempdir().unwrap();
        let limit = Arc::new(DirectLimit::new());
        let files: Vec<File> = (0..=MAX_ACTIVE)
            .map(|i| File::create_new(dir.path().join(format!("f{i}"))).unwrap())
            .collect();
        let mut writers: Vec<DirectWriter> = files[..MAX_ACTIVE]
            .iter()
            .map(|f| DirectWriter::start(f, 0, &limit).expect("direct writer"))
            .collect();
        assert_eq!(limit.active(), MAX_ACTIVE);
        assert!(
            DirectWriter::start(&files[MAX_ACTIVE], 0, &limit).is_none(),
            "one more than the cap writes through the page cache"
        );
        // Another owner's limit is its own.
        let other = Arc::new(DirectLimit::new());
        let w = DirectWriter::start(&files[MAX_ACTIVE], 0, &other).expect("direct writer");
        drop(w);
        assert_eq!(other.active(), 0);
        // A writer that ends (finished or dropped) makes room.
        writers.pop().unwrap().finish().unwrap();
        drop(writers.pop());
        assert_eq!(limit.active(), MAX_ACTIVE - 2);
        assert!(DirectWriter::start(&files[MAX_ACTIVE], 0, &limit).is_some());
    }
}
