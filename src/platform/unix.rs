//! Permission bits, symlink refusal and terminal echo on every Unix (Linux included) behind
//! [`crate::platform`]; each function is documented there. Other systems get the fallbacks in
//! [`super::portable`].

use std::fs::{DirBuilder, File, Metadata, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub fn create_mode(opts: &mut OpenOptions, mode: u32) -> &mut OpenOptions {
    opts.mode(mode)
}

pub fn no_follow(opts: &mut OpenOptions) -> &mut OpenOptions {
    opts.custom_flags(libc::O_NOFOLLOW)
}

pub fn dir_mode(builder: &mut DirBuilder, mode: u32) -> &mut DirBuilder {
    builder.mode(mode)
}

pub fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    file.set_permissions(Permissions::from_mode(mode))
}

pub fn set_path_mode(path: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(path, Permissions::from_mode(mode))
}

pub fn mode_bits(meta: &Metadata) -> u32 {
    meta.mode() & 0o7777
}

pub fn mtime_secs(meta: &Metadata) -> i64 {
    meta.mtime()
}

/// The terminal settings to restore.
pub struct EchoOff {
    saved: rustix::termios::Termios,
}

pub fn echo_off() -> Option<EchoOff> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    if !std::io::IsTerminal::is_terminal(&stdin) {
        return None;
    }
    let saved = tcgetattr(&stdin).ok()?;
    let mut quiet = saved.clone();
    quiet
        .local_modes
        .remove(LocalModes::ECHO | LocalModes::ECHOCTL);
    tcsetattr(&stdin, OptionalActions::Now, &quiet).ok()?;
    Some(EchoOff { saved })
}

impl std::fmt::Debug for EchoOff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EchoOff")
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_set_exactly_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = create_mode(OpenOptions::new().write(true).create_new(true), 0o600)
            .open(&path)
            .unwrap();
        assert_eq!(mode_bits(&file.metadata().unwrap()) & 0o777, 0o600);
        set_mode(&file, 0o640).unwrap();
        assert_eq!(mode_bits(&file.metadata().unwrap()), 0o640);
        set_path_mode(&path, 0o604).unwrap();
        assert_eq!(mode_bits(&std::fs::metadata(&path).unwrap()), 0o604);
        let sub = dir.path().join("d");
        dir_mode(&mut DirBuilder::new(), 0o700)
            .create(&sub)
            .unwrap();
        assert_eq!(mode_bits(&std::fs::metadata(&sub).unwrap()) & 0o777, 0o700);
    }

    #[test]
    fn no_follow_refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let (victim, link) = (dir.path().join("victim"), dir.path().join("link"));
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(
            no_follow(OpenOptions::new().write(true))
                .open(&link)
                .is_err()
        );
        assert!(
            no_follow(OpenOptions::new().write(true))
                .open(&victim)
                .is_ok()
        );
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    }
}
