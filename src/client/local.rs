//! The client's side of "nothing partial ever appears": downloads go to a temp file beside
//! the target and are renamed into place only after the digest matched.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngExt;

/// A temp file that is removed unless committed.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    target: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Creates `.<name>.<random>.ferry-part` (exclusively, mode 0600) in `target`'s directory.
    pub fn beside(target: &Path) -> std::io::Result<TempFile> {
        let name = target
            .file_name()
            .ok_or_else(|| std::io::Error::other("target has no file name"))?;
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        for _ in 0..16 {
            let tag: u64 = rand::rng().random();
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".{tag:016x}.ferry-part"));
            let path = dir.join(&temp_name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(TempFile {
                        path,
                        target: target.to_path_buf(),
                        file: Some(file),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("could not create a unique temp file"))
    }

    /// Appends bytes.
    pub fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.write_all(bytes),
            None => Err(std::io::Error::other("temp file already closed")),
        }
    }

    /// fsyncs, renames into place (refusing an existing target unless `overwrite`, without a
    /// check-then-act race), and fsyncs the directory.
    pub fn commit(mut self, overwrite: bool) -> std::io::Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("temp file already closed"))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.sync_all()?;
        drop(file);
        if overwrite {
            std::fs::rename(&self.path, &self.target)?;
        } else {
            rename_noreplace(&self.path, &self.target)?;
        }
        let dir = match self.target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        // The rename is durable only once the directory is; the file is already in place, so
        // an error here is reported but leaves nothing to clean up.
        let committed = std::mem::take(&mut self.path);
        drop(committed);
        File::open(dir)?.sync_all()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Renames `from` to `to`, failing with `AlreadyExists` if `to` exists (atomically, with
/// renameat2's RENAME_NOREPLACE; file systems without it get link + unlink, also atomic).
pub fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_temp_is_removed_and_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.bin");
        std::fs::write(&target, b"old").unwrap();
        {
            let mut t = TempFile::beside(&target).unwrap();
            t.write_all(b"new").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
    }

    #[test]
    fn commit_refuses_existing_unless_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("t.bin");
        std::fs::write(&target, b"old").unwrap();
        let mut t = TempFile::beside(&target).unwrap();
        t.write_all(b"new").unwrap();
        let err = t.commit(false).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let mut t = TempFile::beside(&target).unwrap();
        t.write_all(b"new").unwrap();
        t.commit(true).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
