//! The Linux implementations behind [`crate::platform`]; each function is documented there.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::ptr::NonNull;

use rustix::fs::OFlags;

pub const SYNCFS_COVERS_FILE_SYSTEM: bool = true;

pub const DIRECT_IO: bool = true;

pub fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open for
    // as long as `file` is borrowed, and SYNC_FILE_RANGE_WRITE does not wait or touch memory.
    // Errors are ignored: this is a hint, and the fsync before the commit reports what counts.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

pub fn sync_filesystem(file: &File) -> io::Result<()> {
    rustix::fs::syncfs(file)?;
    Ok(())
}

pub fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file)?;
    if on {
        rustix::fs::fcntl_setfl(file, flags | OFlags::DIRECT)?;
    } else if flags.contains(OFlags::DIRECT) {
        rustix::fs::fcntl_setfl(file, flags - OFlags::DIRECT)?;
    }
    Ok(())
}

pub fn is_direct(file: &File) -> io::Result<bool> {
    Ok(rustix::fs::fcntl_getfl(file)?.contains(OFlags::DIRECT))
}

pub fn direct_write_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    file.write_all_at(buf, offset)
}

pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        // A file system without RENAME_NOREPLACE (or a kernel before 3.15).
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            super::portable::rename_noreplace(from, to)
        }
        Err(e) => Err(e.into()),
    }
}

pub fn device_id(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(file.metadata()?.dev())
}

pub fn map_zeroed(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh private anonymous mapping aliases nothing; the kernel zero-fills it and
    // aligns it to a page.
    let ptr = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len.max(1),
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE,
        )?
    };
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::ErrorKind::OutOfMemory.into())
}

/// # Safety
/// As [`crate::platform::unmap`].
pub unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: unmaps exactly one mapping made by `map_zeroed` (the caller's contract).
    unsafe {
        let _ = rustix::mm::munmap(ptr.as_ptr().cast(), len.max(1));
    }
}

pub fn advise_huge_pages(ptr: NonNull<u8>, len: usize) {
    // SAFETY: MADV_HUGEPAGE changes how pages are backed, never their contents; on a range
    // that is not a mapping the kernel refuses it (ENOMEM), which is ignored.
    unsafe {
        let _ = rustix::mm::madvise(ptr.as_ptr().cast(), len, rustix::mm::Advice::LinuxHugepage);
    }
}

pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a glibc tunable; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

pub fn trim_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and shrinks the allocator's own free lists; it is
    // thread-safe and touches no memory that is in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncfs_flushes_through_any_descriptor_even_a_pipe() {
        // syncfs flushes the file system behind any descriptor; fsync of a pipe is EINVAL.
        // The same pipe tells the portable fallback (an fsync) apart from this.
        let (reader, _writer) = std::io::pipe().unwrap();
        let pipe = File::from(std::os::fd::OwnedFd::from(reader));
        sync_filesystem(&pipe).unwrap();
        let file = tempfile::tempfile().unwrap();
        sync_filesystem(&file).unwrap();
    }

    #[test]
    fn direct_io_goes_on_and_off() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create_new(dir.path().join("f")).unwrap();
        assert!(!is_direct(&file).unwrap());
        if let Err(e) = set_direct(&file, true) {
            panic!("this file system refused O_DIRECT ({e}); run the tests on one that takes it");
        }
        assert!(is_direct(&file).unwrap());
        set_direct(&file, false).unwrap();
        assert!(!is_direct(&file).unwrap());
        // Off when already off is fine.
        set_direct(&file, false).unwrap();
    }
}
