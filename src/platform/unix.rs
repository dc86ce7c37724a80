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

pub fn hold_hangup(hold: bool) {
    let how = if hold {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: `set` is a local, initialised by sigemptyset before use; pthread_sigmask only
    // changes the calling thread's signal mask. Failure (EINVAL) is impossible for these
    // arguments, and would leave the mask as it was.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// A terminal's settings, to put back.
pub struct TerminalModes(rustix::termios::Termios);

pub fn terminal_modes(tty: &File) -> Option<TerminalModes> {
    rustix::termios::tcgetattr(tty).ok().map(TerminalModes)
}

impl TerminalModes {
    pub fn restore(&self, tty: &File) {
        let _ = rustix::termios::tcsetattr(tty, rustix::termios::OptionalActions::Now, &self.0);
    }
}

/// SIGINT, caught.
pub struct Interrupts(tokio::signal::unix::Signal);

pub fn interrupts() -> io::Result<Interrupts> {
    let sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    Ok(Interrupts(sig))
}

impl Interrupts {
    pub async fn recv(&mut self) -> Option<()> {
        self.0.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hangup_is_held_and_let_through_in_the_calling_thread() {
        fn held() -> bool {
            // SAFETY: queries the calling thread's mask into a local sigset.
            unsafe {
                let mut now: libc::sigset_t = std::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut now);
                libc::sigismember(&now, libc::SIGHUP) == 1
            }
        }
        // A thread of its own: the test harness's threads keep their masks.
        std::thread::spawn(|| {
            hold_hangup(false);
            assert!(!held());
            hold_hangup(true);
            assert!(held());
            hold_hangup(false);
            assert!(!held());
        })
        .join()
        .unwrap();
    }

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
