//! The fallbacks behind [`crate::platform`], made of the standard library alone: what every
//! system other than Linux gets. Compiled on Linux too, so the tests below exercise each
//! fallback where the suite runs. Each function is documented in [`crate::platform`].

use std::alloc::Layout;
use std::fs::{DirBuilder, File, Metadata, OpenOptions};
use std::io;
use std::path::Path;
use std::ptr::NonNull;

use super::PAGE_ALIGN;

/// An fsync of one file says nothing about the others.
pub const SYNCFS_COVERS_FILE_SYSTEM: bool = false;

pub const DIRECT_IO: bool = false;

pub fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Only `file` itself is made durable (fsync): a group commit on this fallback fsyncs each
/// of its files ([`super::GroupSync::PerFile`]).
pub fn sync_filesystem(file: &File) -> io::Result<()> {
    file.sync_all()
}

pub fn set_direct(_file: &File, on: bool) -> io::Result<()> {
    if on {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "direct I/O is not available here",
        ));
    }
    Ok(())
}

pub fn is_direct(_file: &File) -> io::Result<bool> {
    Ok(false)
}

/// Direct I/O is never on here, so no write is refused for it.
pub fn direct_write_refused(_e: &io::Error) -> bool {
    false
}

pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        // Windows has no write_all_at; seek_write moves the file position, which no caller
        // relies on (the writer of a file at offsets owns its descriptor).
        let (mut buf, mut offset) = (buf, offset);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_write(file, buf, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    buf = &buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    #[cfg(not(any(unix, windows)))]
    {
        let _ = (file, buf, offset);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// A hard link fails if `to` exists, atomically; then `from` is unlinked.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
}

pub fn device_id(file: &File) -> io::Result<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Ok(file.metadata()?.dev())
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        Err(io::ErrorKind::Unsupported.into())
    }
}

fn layout(len: usize) -> io::Result<Layout> {
    Layout::from_size_align(len.max(1), PAGE_ALIGN).map_err(|_| io::ErrorKind::OutOfMemory.into())
}

pub fn map_zeroed(len: usize) -> io::Result<NonNull<u8>> {
    let layout = layout(len)?;
    // SAFETY: the layout's size is at least one byte.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    NonNull::new(ptr).ok_or_else(|| io::ErrorKind::OutOfMemory.into())
}

/// # Safety
/// As [`crate::platform::unmap`].
pub unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    // `map_zeroed` succeeded with this length, so the layout is valid again.
    if let Ok(layout) = layout(len) {
        // SAFETY: allocated by `map_zeroed` with this very layout (the caller's contract).
        unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) }
    }
}

pub fn advise_huge_pages(_ptr: NonNull<u8>, _len: usize) {}

pub fn limit_arenas() {}

pub fn trim_allocator() {}

/// Nothing to set at creation: the system's defaults apply (on Windows, the parent's ACL).
pub fn create_mode(opts: &mut OpenOptions, _mode: u32) -> &mut OpenOptions {
    opts
}

/// Nothing: on a system without `O_NOFOLLOW` an open follows a symlink.
pub fn no_follow(opts: &mut OpenOptions) -> &mut OpenOptions {
    opts
}

pub fn dir_mode(builder: &mut DirBuilder, _mode: u32) -> &mut DirBuilder {
    builder
}

/// Only what every system knows: a mode without any write bit makes the file read-only.
/// Otherwise the permissions are left as they are (never widened).
pub fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    let mut perms = file.metadata()?.permissions();
    if mode & 0o222 == 0 && !perms.readonly() {
        perms.set_readonly(true);
        file.set_permissions(perms)?;
    }
    Ok(())
}

/// As [`set_mode`], by path.
pub fn set_path_mode(path: &Path, mode: u32) -> io::Result<()> {
    let mut perms = std::fs::metadata(path)?.permissions();
    if mode & 0o222 == 0 && !perms.readonly() {
        perms.set_readonly(true);
        std::fs::set_permissions(path, perms)?;
    }
    Ok(())
}

/// Bits in the shape of a Unix mode from what every system knows: a directory is 0755, a
/// file 0644, without the write bits when read-only.
pub fn mode_bits(meta: &Metadata) -> u32 {
    let mode = if meta.is_dir() { 0o755 } else { 0o644 };
    if meta.permissions().readonly() {
        mode & !0o222
    } else {
        mode
    }
}

/// Whole seconds since the Unix epoch, rounded down as `st_mtime` is (0 if the system cannot
/// tell).
pub fn mtime_secs(meta: &Metadata) -> i64 {
    let Ok(modified) = meta.modified() else {
        return 0;
    };
    match modified.duration_since(std::time::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let before = e.duration();
            let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            // 1.5 s before the epoch is second -2, as st_mtime has it.
            -secs - i64::from(before.subsec_nanos() > 0)
        }
    }
}

/// Nothing to restore: [`echo_off`] never turns echo off here.
#[derive(Debug)]
pub struct EchoOff;

/// Key echo stays on: a `^C` may be left beside a progress bar, nothing worse.
pub fn echo_off() -> Option<EchoOff> {
    None
}

/// Nothing: there is no SIGHUP to hold.
pub fn hold_hangup(_hold: bool) {}

/// Nothing to put back: [`terminal_modes`] never reads any here.
pub struct TerminalModes;

pub fn terminal_modes(_tty: &File) -> Option<TerminalModes> {
    None
}

impl TerminalModes {
    pub fn restore(&self, _tty: &File) {}
}

/// Ctrl-C as tokio sees it on every system it supports: each [`Interrupts::recv`] waits for
/// the next one. (The handler is in place from the first wait on.)
pub struct Interrupts(());

pub fn interrupts() -> io::Result<Interrupts> {
    Ok(Interrupts(()))
}

impl Interrupts {
    pub async fn recv(&mut self) -> Option<()> {
        tokio::signal::ctrl_c().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};

    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn sync_filesystem_is_an_fsync_of_the_file_not_a_syncfs() {
        // A pipe cannot be fsynced (EINVAL), while syncfs through it succeeds (see the Linux
        // test): the fallback really calls the file's own fsync.
        let (reader, _writer) = std::io::pipe().unwrap();
        let pipe = File::from(std::os::fd::OwnedFd::from(reader));
        let err = sync_filesystem(&pipe).expect_err("a pipe cannot be fsynced");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    }

    #[test]
    fn sync_filesystem_writes_the_file_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create_new(&path).unwrap();
        let data = vec![0x5Au8; 1024 * 1024];
        file.write_all(&data).unwrap();
        #[cfg(target_os = "linux")]
        {
            let (dirty, _) = super::super::unwritten_pages(&file);
            assert!(
                dirty > 0,
                "nothing dirty right after a write: this test cannot tell"
            );
        }
        sync_filesystem(&file).unwrap();
        // Every page of the file is on the device: none dirty, none still being written.
        #[cfg(target_os = "linux")]
        assert_eq!(super::super::unwritten_pages(&file), (0, 0));
        assert!(std::fs::read(&path).unwrap() == data);
    }

    #[test]
    fn direct_io_is_refused_and_off_is_fine() {
        let file = tempfile::tempfile().unwrap();
        let err = set_direct(&file, true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        set_direct(&file, false).unwrap();
        assert!(!is_direct(&file).unwrap());
        assert!(!direct_write_refused(&io::Error::from(
            io::ErrorKind::InvalidInput
        )));
    }

    #[test]
    fn write_all_at_writes_at_the_offset_and_keeps_the_position() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"0123456789").unwrap();
        write_all_at(&file, b"abc", 3).unwrap();
        write_all_at(&file, b"XY", 12).unwrap();
        assert_eq!(file.stream_position().unwrap(), 10);
        file.rewind().unwrap();
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"012abc6789\0\0XY");
    }

    #[test]
    fn rename_noreplace_refuses_an_existing_target() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"new").unwrap();
        std::fs::write(&b, b"old").unwrap();
        let err = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&b).unwrap(), b"old");
        assert_eq!(std::fs::read(&a).unwrap(), b"new");
        std::fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), b"new");
        assert!(!a.exists(), "the source is gone after the rename");
    }

    #[test]
    fn mapped_memory_is_page_aligned_zeroed_and_writable() {
        for len in [0, 1, 4096, 1024 * 1024 + 3] {
            let ptr = map_zeroed(len).unwrap();
            assert_eq!(ptr.as_ptr() as usize % PAGE_ALIGN, 0, "len {len}");
            let n = len.max(1);
            // SAFETY: `n` bytes from map_zeroed, owned here until unmapped below.
            let bytes = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), n) };
            assert!(bytes.iter().all(|&b| b == 0), "len {len}");
            bytes.fill(0xA5);
            assert!(bytes.iter().all(|&b| b == 0xA5));
            advise_huge_pages(ptr, n);
            // SAFETY: exactly what map_zeroed returned, given back once.
            unsafe { unmap(ptr, len) };
        }
    }

    #[test]
    fn set_mode_makes_read_only_and_never_widens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create_new(&path).unwrap();
        let before = file.metadata().unwrap().permissions();
        set_mode(&file, 0o644).unwrap();
        assert_eq!(
            file.metadata().unwrap().permissions(),
            before,
            "nothing to change"
        );
        set_mode(&file, 0o444).unwrap();
        assert!(file.metadata().unwrap().permissions().readonly());
        set_mode(&file, 0o666).unwrap();
        assert!(
            file.metadata().unwrap().permissions().readonly(),
            "never widened"
        );
        let other = dir.path().join("g");
        std::fs::write(&other, b"").unwrap();
        set_path_mode(&other, 0o400).unwrap();
        assert!(std::fs::metadata(&other).unwrap().permissions().readonly());
    }

    #[test]
    fn mode_bits_come_from_kind_and_read_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(mode_bits(&std::fs::metadata(dir.path()).unwrap()), 0o755);
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        assert_eq!(mode_bits(&std::fs::metadata(&path).unwrap()), 0o644);
        set_path_mode(&path, 0o444).unwrap();
        assert_eq!(mode_bits(&std::fs::metadata(&path).unwrap()), 0o444);
    }

    #[test]
    fn the_mode_setters_at_creation_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let plain = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&a)
            .unwrap();
        let set = create_mode(OpenOptions::new().write(true).create_new(true), 0o600)
            .open(&b)
            .unwrap();
        assert_eq!(
            plain.metadata().unwrap().permissions(),
            set.metadata().unwrap().permissions()
        );
        assert!(echo_off().is_none());
    }

    #[cfg(unix)]
    #[test]
    fn mtime_secs_agrees_with_st_mtime() {
        use std::os::unix::fs::MetadataExt;
        use std::time::{Duration, UNIX_EPOCH};
        let file = tempfile::tempfile().unwrap();
        for when in [
            UNIX_EPOCH + Duration::new(1_700_000_000, 999_999_999),
            UNIX_EPOCH + Duration::from_secs(5),
            UNIX_EPOCH,
            UNIX_EPOCH - Duration::new(1, 500_000_000),
            UNIX_EPOCH - Duration::from_secs(86_400),
        ] {
            file.set_modified(when).unwrap();
            let meta = file.metadata().unwrap();
            assert_eq!(mtime_secs(&meta), meta.mtime(), "{when:?}");
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn interrupts_come_from_ctrl_c() {
        // A SIGINT listener of the process first, so that no SIGINT below can end the test
        // binary even before the fallback's handler is in place.
        let _safety = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .expect("SIGINT handler");
        let mut interrupts = interrupts().unwrap();
        let waiting = tokio::spawn(async move { interrupts.recv().await });
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !waiting.is_finished() {
            assert!(tokio::time::Instant::now() < deadline, "no Ctrl-C seen");
            // SAFETY: sends SIGINT to this process, whose handler is installed above.
            unsafe { libc::kill(libc::getpid(), libc::SIGINT) };
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(waiting.await.unwrap(), Some(()));
    }
}
