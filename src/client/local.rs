//! The client's side of "nothing partial ever appears": a download is written to a hidden
//! partial file beside its target and renamed into place only after the digest matched.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::platform;

/// Suffix of the hidden file a download goes to: `.<name>.ferry-part`.
pub const PARTIAL_SUFFIX: &str = ".ferry-part";

/// The hidden file a download is written to before it is verified and renamed. Removed when
/// dropped, unless it was committed or marked to keep (an interrupted download, for `reget`).
#[derive(Debug)]
pub struct Partial {
    path: PathBuf,
    target: PathBuf,
    file: File,
    keep: bool,
    done: bool,
}

impl Partial {
    /// Where the partial of `target` lives.
    pub fn path_for(target: &Path) -> std::io::Result<PathBuf> {
        let name = target
            .file_name()
            .ok_or_else(|| std::io::Error::other("the local target has no file name"))?;
        let mut partial = std::ffi::OsString::from(".");
        partial.push(name);
        partial.push(PARTIAL_SUFFIX);
        Ok(parent_of(target).join(partial))
    }

    /// Opens the partial of `target` (created with mode 0600; never through a symlink), locked
    /// against another ferry writing the same file. With `resume`, existing bytes are kept and
    /// their count returned, positioned at the end; otherwise the file starts empty.
    pub fn open(target: &Path, resume: bool) -> std::io::Result<(Partial, u64)> {
        let path = Self::path_for(target)?;
        let mut opts = OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        platform::create_mode(&mut opts, 0o600);
        let file = platform::no_follow(&mut opts).open(&path)?;
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::other(format!(
                    "another transfer is writing {}",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let mut partial = Partial {
            path,
            target: target.to_path_buf(),
            file,
            keep: false,
            done: false,
        };
        let have = if resume {
            partial.file.seek(SeekFrom::End(0))?
        } else {
            partial.file.set_len(0)?;
            0
        };
        Ok((partial, have))
    }

    /// The open file (for reading the prefix and appending).
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Appends bytes.
    pub fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)
    }

    /// Leaves the partial on disk when dropped (for a later resume).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Undoes [`Partial::keep`]: the partial is removed when dropped (its bytes are bad).
    pub fn discard_on_drop(&mut self) {
        self.keep = false;
    }

    /// fsyncs, renames into place (refusing an existing target unless `overwrite`, without a
    /// check-then-act race), and fsyncs the directory.
    pub fn commit(self, overwrite: bool) -> std::io::Result<()> {
        let dir = self.commit_without_dir_sync(overwrite)?;
        // The rename is durable only once the directory is; the file is already in place, so
        // an error here is reported but leaves nothing to clean up.
        sync_dir(&dir)
    }

    /// [`Partial::commit`] up to the rename; returns the directory that still needs an fsync
    /// (batched by the caller for many files: one fsync per directory).
    pub fn commit_without_dir_sync(mut self, overwrite: bool) -> std::io::Result<PathBuf> {
        platform::set_mode(&self.file, new_file_mode())?;
        self.file.sync_all()?;
        if overwrite {
            std::fs::rename(&self.path, &self.target)?;
        } else {
            platform::rename_noreplace(&self.path, &self.target)?;
        }
        self.done = true;
        Ok(parent_of(&self.target))
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done && !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Partial {
    /// Renames a verified partial into place without an fsync of its own, for a group commit
    /// that already made its data durable ([`Partial::flush`]) after the last write. Returns
    /// the directory that still needs an fsync for the rename to be durable.
    pub fn commit_after_flush(mut self, overwrite: bool) -> std::io::Result<PathBuf> {
        platform::set_mode(&self.file, new_file_mode())?;
        if overwrite {
            std::fs::rename(&self.path, &self.target)?;
        } else {
            platform::rename_noreplace(&self.path, &self.target)?;
        }
        self.done = true;
        Ok(parent_of(&self.target))
    }

    /// The file system the partial lives on.
    pub fn device(&self) -> std::io::Result<u64> {
        platform::device_id(&self.file)
    }

    /// Makes the partial's data durable with `sync`, a group commit's flush (see
    /// [`platform::group_sync`]): through this descriptor, opened before any byte was
    /// written, the kernel reports any write-back error since then.
    pub fn flush(&self, sync: fn(&File) -> std::io::Result<()>) -> std::io::Result<()> {
        sync(&self.file)
    }
}

/// The mode a downloaded file gets: what `open(2)` with 0666 would give under this process's
/// umask, as `cp` and `sftp` give a new file; never wider. (The partial is 0600 while it is
/// written, so nobody reads unverified bytes.)
pub fn new_file_mode() -> u32 {
    0o666 & !umask()
}

/// The process umask, read once from /proc/self/status (Linux 4.7 and later). Reading it any
/// other way means setting it, which races with other threads; without /proc the answer is
/// the restrictive 077, so a file comes out narrower, never wider.
fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let from_proc = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            });
        from_proc.unwrap_or(0o077)
    }) & 0o777
}

/// Fsyncs a directory, making renames into it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parent_of(target: &Path) -> PathBuf {
    match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_partial_is_removed_and_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.bin");
        std::fs::write(&target, b"old").unwrap();
        {
            let (mut t, _) = Partial::open(&target, false).unwrap();
            t.write_all(b"new").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
    }

    #[test]
    fn kept_partial_resumes_at_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.bin");
        {
            let (mut t, have) = Partial::open(&target, true).unwrap();
            assert_eq!(have, 0);
            t.write_all(b"abc").unwrap();
            t.keep();
        }
        let (mut t, have) = Partial::open(&target, true).unwrap();
        assert_eq!(have, 3);
        t.write_all(b"def").unwrap();
        t.commit(false).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"abcdef");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_second_writer_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.bin");
        let (_first, _) = Partial::open(&target, false).unwrap();
        assert!(Partial::open(&target, false).is_err());
    }

    #[test]
    fn a_symlink_at_the_partial_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.bin");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, Partial::path_for(&target).unwrap()).unwrap();
        assert!(Partial::open(&target, false).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }

    #[test]
    fn commit_refuses_existing_unless_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.bin");
        std::fs::write(&target, b"old").unwrap();
        let (mut t, _) = Partial::open(&target, false).unwrap();
        t.write_all(b"new").unwrap();
        let err = t.commit(false).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let (mut t, _) = Partial::open(&target, false).unwrap();
        t.write_all(b"new").unwrap();
        t.commit(true).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
