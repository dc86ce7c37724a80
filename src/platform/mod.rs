//! Calls that exist only on Linux (or only on Unix), and allocator tuning, behind one portable
//! signature each.
//!
//! [`linux`] holds the Linux implementations; [`portable`] holds fallbacks made of the
//! standard library alone, which is what every other system gets. `portable` is compiled on
//! every target, Linux included, so its unit tests run wherever the suite runs; only the
//! choice of which one the functions below call depends on `target_os`. Nothing outside this
//! module needs a `cfg` for these calls, and code built on them must be correct under either
//! implementation: where a fallback is weaker (a file system flush that only covers one
//! file), a constant says so and the caller branches on it.
//!
//! [`unix`] holds what every Unix has and other systems lack (permission bits, `O_NOFOLLOW`,
//! terminal settings, holding SIGHUP); its fallbacks are in [`portable`] too.
//!
//! Server-only code may still call the system directly (`jail`'s `*at` calls and
//! `RENAME_NOREPLACE` through rustix, the users file's lock and owner, `serve`'s open-files
//! limit and SIGHUP handler): the server is built for Linux only.

#[cfg(target_os = "linux")]
pub mod linux;
pub mod portable;

#[cfg(unix)]
pub mod unix;

#[cfg(target_os = "linux")]
use linux as imp;
#[cfg(not(target_os = "linux"))]
use portable as imp;
#[cfg(not(unix))]
use portable as unix_imp;
#[cfg(unix)]
use unix as unix_imp;

use std::fs::{DirBuilder, File, Metadata, OpenOptions};
use std::io;
use std::path::Path;
use std::ptr::NonNull;

/// Whether [`sync_filesystem`] makes every file written on the file system durable (Linux's
/// `syncfs`). Where it does not (the fallback fsyncs only the file given), a group commit must
/// flush each of its files itself: see [`group_sync`].
pub const SYNCFS_COVERS_FILE_SYSTEM: bool = imp::SYNCFS_COVERS_FILE_SYSTEM;

/// Whether [`set_direct`] can turn direct I/O (`O_DIRECT`) on at all. Where it cannot, large
/// files are written through the page cache like all others.
pub const DIRECT_IO: bool = imp::DIRECT_IO;

/// Asks the system to start writing `len` bytes at `offset` of `file` to disk, without
/// waiting (Linux: `sync_file_range` with `SYNC_FILE_RANGE_WRITE`; elsewhere nothing). A hint
/// for speed only: the fsync before a commit is what makes data durable.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    imp::start_writeback(file, offset, len)
}

/// Flushes the file system `file` lives on (Linux: `syncfs`, which reports any write-back
/// error on it since `file` was opened). Elsewhere only `file` itself is fsynced, so whether
/// other files became durable too is [`SYNCFS_COVERS_FILE_SYSTEM`].
pub fn sync_filesystem(file: &File) -> io::Result<()> {
    imp::sync_filesystem(file)
}

/// How a group commit makes a batch of files durable here: one [`sync_filesystem`] per file
/// system, or (the fallback) one fsync per file.
pub fn group_sync() -> GroupSync {
    if SYNCFS_COVERS_FILE_SYSTEM {
        GroupSync::PerFileSystem(sync_filesystem)
    } else {
        GroupSync::PerFile(portable::sync_filesystem)
    }
}

/// See [`group_sync`]. Each variant carries the flush to call.
#[derive(Clone, Copy)]
pub enum GroupSync {
    /// One call through any file of a file system covers every file on it.
    PerFileSystem(fn(&File) -> io::Result<()>),
    /// Each file needs a call of its own.
    PerFile(fn(&File) -> io::Result<()>),
}

/// Turns direct I/O (bypassing the page cache) on or off for the open file behind `file`.
/// Turning it off always works where it could not be on; turning it on fails with
/// `Unsupported` where [`DIRECT_IO`] is false, and with the system's error where the file
/// system refuses it.
pub fn set_direct(file: &File, on: bool) -> io::Result<()> {
    imp::set_direct(file, on)
}

/// Whether direct I/O is on for the open file behind `file`.
pub fn is_direct(file: &File) -> io::Result<bool> {
    imp::is_direct(file)
}

/// Whether a failed write with direct I/O on means the file system took the flag but not this
/// write (Linux: `EINVAL`, an alignment it needs is larger): nothing was written, and the same
/// write without direct I/O will do.
pub fn direct_write_refused(e: &io::Error) -> bool {
    imp::direct_write_refused(e)
}

/// Writes all of `buf` at `offset` of `file`, leaving the file position alone where the
/// system allows it.
pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    imp::write_all_at(file, buf, offset)
}

/// Renames `from` to `to`, failing with `AlreadyExists` if `to` exists, atomically (Linux:
/// `renameat2` with `RENAME_NOREPLACE`; elsewhere, or on a file system without it, a hard
/// link then an unlink, which is atomic too but needs hard links).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    imp::rename_noreplace(from, to)
}

/// An identifier of the file system `file` lives on (`st_dev`), to tell which files one
/// [`sync_filesystem`] covers. `Unsupported` where the system has none to give.
pub fn device_id(file: &File) -> io::Result<u64> {
    imp::device_id(file)
}

/// `len` bytes (at least one) of page-aligned, zero-filled memory, readable and writable, for
/// large working buffers (Linux: an anonymous mapping, given back to the system by [`unmap`];
/// elsewhere the global allocator). Pass it to [`unmap`] with the same `len` exactly once.
pub fn map_zeroed(len: usize) -> io::Result<NonNull<u8>> {
    imp::map_zeroed(len)
}

/// Gives back memory from [`map_zeroed`].
///
/// # Safety
/// `ptr` and `len` are exactly what one call of [`map_zeroed`] returned and was given, it is
/// given back once, and nothing uses the memory afterwards.
pub unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: the caller's contract is the implementation's.
    unsafe { imp::unmap(ptr, len) }
}

/// Asks for transparent huge pages for memory from [`map_zeroed`] (Linux: `madvise`
/// `MADV_HUGEPAGE`; elsewhere nothing). A hint: it changes no contents, and failure changes
/// nothing.
pub fn advise_huge_pages(ptr: NonNull<u8>, len: usize) {
    imp::advise_huge_pages(ptr, len)
}

/// Sets the C allocator up for a long-running server; call it before any thread starts (glibc:
/// one arena for all threads, so an idle trim can give everything back; elsewhere nothing).
pub fn limit_arenas() {
    imp::limit_arenas()
}

/// Gives the C allocator's free memory back to the system (glibc: `malloc_trim`; elsewhere
/// nothing).
pub fn trim_allocator() {
    imp::trim_allocator()
}

/// Creates a new file with permission bits `mode` (Unix: `open`'s mode, under the umask;
/// elsewhere the system's defaults).
pub fn create_mode(opts: &mut OpenOptions, mode: u32) -> &mut OpenOptions {
    unix_imp::create_mode(opts, mode)
}

/// Makes the open fail if the path's last component is a symlink (Unix: `O_NOFOLLOW`;
/// elsewhere nothing, and the open follows it).
pub fn no_follow(opts: &mut OpenOptions) -> &mut OpenOptions {
    unix_imp::no_follow(opts)
}

/// Creates directories with permission bits `mode` (Unix; elsewhere the system's defaults).
pub fn dir_mode(builder: &mut DirBuilder, mode: u32) -> &mut DirBuilder {
    unix_imp::dir_mode(builder, mode)
}

/// Sets `file`'s permission bits to `mode` (Unix; elsewhere only read-only, for a mode
/// without write bits).
pub fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    unix_imp::set_mode(file, mode)
}

/// [`set_mode`] by path.
pub fn set_path_mode(path: &Path, mode: u32) -> io::Result<()> {
    unix_imp::set_path_mode(path, mode)
}

/// The permission bits of `meta` (Unix: `st_mode & 07777`; elsewhere 0755 for a directory and
/// 0644 for anything else, without the write bits when read-only).
pub fn mode_bits(meta: &Metadata) -> u32 {
    unix_imp::mode_bits(meta)
}

/// When `meta`'s file was last modified, in whole seconds since the Unix epoch (`st_mtime`).
pub fn mtime_secs(meta: &Metadata) -> i64 {
    unix_imp::mtime_secs(meta)
}

/// While the returned value lives, keys typed on the terminal are not echoed (Unix: `ECHO`
/// and `ECHOCTL` off on stdin; `None` if stdin is no terminal, and always elsewhere).
pub fn echo_off() -> Option<EchoOff> {
    unix_imp::echo_off()
}

/// See [`echo_off`]; restores the terminal when dropped.
pub use unix_imp::EchoOff;

/// Holds (blocks) SIGHUP in the calling thread and every thread it starts later, or lets it
/// through again, delivering one that came meanwhile (Unix; elsewhere there is no SIGHUP).
pub fn hold_hangup(hold: bool) {
    unix_imp::hold_hangup(hold)
}

/// The settings of the terminal `tty` (Unix: `tcgetattr`), to put back with
/// [`TerminalModes::restore`]; `None` if it is no terminal, and always elsewhere.
pub fn terminal_modes(tty: &File) -> Option<TerminalModes> {
    unix_imp::terminal_modes(tty)
}

/// See [`terminal_modes`].
pub use unix_imp::TerminalModes;

/// Ctrl-C notifications for the process from now on (Unix: SIGINT, whose default action of
/// ending the process is replaced at once; elsewhere tokio's console Ctrl-C). Call it inside
/// a tokio runtime.
pub fn interrupts() -> io::Result<Interrupts> {
    unix_imp::interrupts()
}

/// See [`interrupts`]; [`Interrupts::recv`] waits for the next one (`None`: no more).
pub use unix_imp::Interrupts;

/// The page alignment [`map_zeroed`] guarantees (direct I/O needs it for its buffers).
pub const PAGE_ALIGN: usize = 4096;

/// The file's page-cache pages that are dirty and under write-back (Linux's `cachestat`,
/// 6.5 and later).
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn unwritten_pages(file: &File) -> (u64, u64) {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    #[allow(dead_code)] // the kernel fills every field; two are read
    struct Stat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451; // the same number on every architecture
    let range = Range { off: 0, len: 0 }; // to the end of the file
    let mut stat = Stat::default();
    // SAFETY: both structs match the kernel's layout and outlive the call; it writes
    // only `stat`.
    let r = unsafe { libc::syscall(SYS_CACHESTAT, file.as_raw_fd(), &range, &mut stat, 0u32) };
    if r != 0 {
        panic!(
            "cachestat(2) is needed for this test: {}",
            io::Error::last_os_error()
        );
    }
    (stat.dirty, stat.writeback)
}
