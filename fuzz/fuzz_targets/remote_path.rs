//! `RemotePath::parse` against the rules of `src/jail.rs`, and `Jail` with an oracle: whatever a
//! client names, nothing outside the home is read, created, changed or removed.
//!
//! Input: `A`, `A\0` or `A\0B` or `A\0B\0` (bytes that are not UTF-8 are converted lossily).
//! `A` goes through parse, stat, lstat, list, open_read, mkdir (+ rmdir) and create_temp (+ a
//! commit and remove when the input's length is even, a discard when odd). `A\0` also removes `A` (remove_file, then remove_dir); `A\0B`
//! renames `A` to `B` (with `\0` after `B`, overwriting).
//!
//! The world, made once per process on tmpfs where there is one (commits fsync):
//!
//! ```text
//! <root>/outside/{marker.txt, sub/}        must never change
//! <root>/home/                             the jail
//!   file.txt  d/{f.txt, e/, back -> ../file.txt, deep -> ../../outside/sub}
//!   out -> ../outside   abs -> <root>/outside   outfile -> ../outside/marker.txt
//!   up -> ../home/d     dotdot -> ..   slash -> /   loop -> loop   fifo
//!   .ferry-tmp.planted -> ../outside/marker.txt
//! ```
//!
//! After every input: `<root>` and `outside` hold what they held and the marker is intact. Every
//! operation that succeeds must have worked on something whose path, resolved by the kernel
//! outside the jail (`canonicalize`, `/proc/self/fd`), lies inside the home; an operation on a
//! path that resolves outside must fail. The home is planted again after any input that changed
//! it (and every 1000 inputs), so each input starts from the same world.
#![no_main]

use std::cell::RefCell;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use ferry::jail::{Jail, PathError, RESERVED_PREFIX, RemotePath};
use ferry::protocol::{EntryKind, MAX_NAME_LEN, MAX_PATH_DEPTH, MAX_PATH_LEN};
use libfuzzer_sys::fuzz_target;
use rustix::fs::{FileType, Mode};

const MARKER: &[u8] = b"secret";
const WORLD_PREFIX: &str = "ferry-fuzz-remote-path-";
const RESET_EVERY: u64 = 1000;

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    WORLD.with(|w| {
        let mut w = w.borrow_mut();
        let world = w.get_or_insert_with(World::new);
        world.run(data);
    });
});

struct World {
    /// Canonical paths.
    root: PathBuf,
    home: PathBuf,
    outside: PathBuf,
    jail: Jail,
    runs: u64,
    /// The home differs from the planted one.
    dirty: bool,
}

impl World {
    fn new() -> World {
        let base = ["/dev/shm"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_dir() && tempdir_works(p))
            .unwrap_or_else(std::env::temp_dir);
        remove_stale_worlds(&base);
        let root = base.join(format!("{WORLD_PREFIX}{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir(&root).unwrap();
        let root = fs::canonicalize(root).unwrap();
        let (home, outside) = (root.join("home"), root.join("outside"));
        fs::create_dir(&home).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("marker.txt"), MARKER).unwrap();
        fs::create_dir(outside.join("sub")).unwrap();
        let jail = Jail::open(&home, false).unwrap();
        let world = World {
            root,
            home,
            outside,
            jail,
            runs: 0,
            dirty: false,
        };
        world.plant();
        world
    }

    fn plant(&self) {
        let (h, o) = (&self.home, &self.outside);
        for entry in fs::read_dir(h).unwrap() {
            let path = entry.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                fs::remove_dir_all(&path).unwrap();
            } else {
                fs::remove_file(&path).unwrap();
            }
        }
        fs::write(h.join("file.txt"), b"file").unwrap();
        fs::create_dir_all(h.join("d/e")).unwrap();
        fs::write(h.join("d/f.txt"), b"inside").unwrap();
        symlink("../file.txt", h.join("d/back")).unwrap();
        symlink("../../outside/sub", h.join("d/deep")).unwrap();
        symlink("../outside", h.join("out")).unwrap();
        symlink(o, h.join("abs")).unwrap();
        symlink("../outside/marker.txt", h.join("outfile")).unwrap();
        symlink("../home/d", h.join("up")).unwrap();
        symlink("..", h.join("dotdot")).unwrap();
        symlink("/", h.join("slash")).unwrap();
        symlink("loop", h.join("loop")).unwrap();
        symlink("../outside/marker.txt", h.join(".ferry-tmp.planted")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            h.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    fn run(&mut self, data: &[u8]) {
        self.runs += 1;
        if self.dirty || self.runs.is_multiple_of(RESET_EVERY) {
            self.plant();
            self.dirty = false;
        }
        let mut parts = data.splitn(3, |&b| b == 0);
        let a = String::from_utf8_lossy(parts.next().unwrap_or_default());
        let b = parts.next().map(String::from_utf8_lossy);
        let overwrite = parts.next().is_some();

        let pa = check_parse(&a);
        let pb = b.as_deref().map(check_parse);
        if let Some(p) = &pa {
            self.read_ops(p);
            self.create_ops(p, data.len().is_multiple_of(2));
        }
        match (&pa, b.as_deref(), &pb) {
            (Some(p), Some(""), _) => self.remove_ops(p),
            (Some(from), Some(_), Some(Some(to))) => self.rename(from, to, overwrite),
            _ => {}
        }
        self.check_outside();
    }

    /// The canonical form of `rel` beneath the home, resolved outside the jail.
    fn resolve(&self, p: &RemotePath) -> Option<PathBuf> {
        fs::canonicalize(self.home.join(p.as_relative())).ok()
    }

    /// Whether `p`, following every symlink, names something inside the home. `None`: it does
    /// not resolve at all.
    fn inside(&self, p: &RemotePath) -> Option<bool> {
        self.resolve(p).map(|c| c.starts_with(&self.home))
    }

    /// Whether the directory holding `p`'s last component is inside the home.
    fn parent_inside(&self, p: &RemotePath) -> Option<bool> {
        self.inside(&p.parent().unwrap_or_default())
    }

    fn fd_inside(&self, file: &fs::File) -> bool {
        let link = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        link.starts_with(&self.home)
    }

    fn read_ops(&self, p: &RemotePath) {
        let inside = self.inside(p);
        let stat = self.jail.stat(p);
        if let Ok(entry) = &stat {
            assert_eq!(inside, Some(true), "stat {p} succeeded outside the home");
            let meta = fs::metadata(self.home.join(p.as_relative())).unwrap();
            let kind = match meta.file_type() {
                t if t.is_dir() => EntryKind::Dir,
                t if t.is_file() => EntryKind::File,
                _ => EntryKind::Other,
            };
            assert_eq!((entry.kind, entry.size), (kind, meta.len()), "stat {p}");
        }
        if inside == Some(false) {
            assert!(stat.is_err(), "stat {p} reached outside");
        }

        if self.jail.lstat(p).is_ok() {
            assert_eq!(
                self.parent_inside(p),
                Some(true),
                "lstat {p} succeeded outside"
            );
        }

        // No check of refusals: the jail may refuse a path that only passes outside on its way
        // back in (`up/f.txt`), and that is fine.
        if let Ok((mut file, entry)) = self.jail.open_read(p) {
            assert_eq!(
                inside,
                Some(true),
                "open_read {p} succeeded outside the home"
            );
            assert!(self.fd_inside(&file), "open_read {p} opened a file outside");
            assert_eq!(entry.kind, EntryKind::File);
            let mut buf = [0; 64];
            let _ = file.read(&mut buf).unwrap();
        }

        if let Ok(entries) = self.jail.list(p) {
            assert_eq!(inside, Some(true), "list {p} succeeded outside the home");
            for entry in entries.take(32) {
                let Ok(entry) = entry else { continue };
                let lower = entry.name.to_ascii_lowercase();
                assert!(
                    !lower.starts_with(RESERVED_PREFIX),
                    "list {p} showed {}",
                    entry.name
                );
            }
        }
    }

    fn create_ops(&mut self, p: &RemotePath, commit: bool) {
        let parent_inside = self.parent_inside(p);
        if self.jail.mkdir(p).is_ok() {
            assert_eq!(
                parent_inside,
                Some(true),
                "mkdir {p} succeeded outside the home"
            );
            assert_eq!(
                self.inside(p),
                Some(true),
                "mkdir {p} made a directory outside"
            );
            if self.jail.remove_dir(p).is_err() {
                self.dirty = true;
            }
        }

        let Ok(mut temp) = self.jail.create_temp(p) else {
            return;
        };
        assert_eq!(
            parent_inside,
            Some(true),
            "create_temp {p} succeeded outside the home"
        );
        assert!(
            self.fd_inside(temp.file()),
            "create_temp {p} made a file outside"
        );
        temp.file().write_all(b"upload").unwrap();
        let temp_dir = self.home.join(p.parent().unwrap_or_default().as_relative());
        if commit {
            if temp.commit(false).is_ok() {
                assert_eq!(self.inside(p), Some(true), "commit {p} put a file outside");
                assert_eq!(
                    fs::read(self.home.join(p.as_relative())).unwrap(),
                    b"upload"
                );
                if self.jail.remove_file(p).is_err() {
                    self.dirty = true;
                }
            }
        } else {
            temp.discard();
        }
        // No temp is left behind, whatever happened.
        for entry in fs::read_dir(&temp_dir).unwrap() {
            let name = entry.unwrap().file_name();
            let name = name.to_string_lossy();
            assert!(
                !name.starts_with(".ferry-tmp.") || name == ".ferry-tmp.planted",
                "temp {name} left behind in {}",
                temp_dir.display()
            );
        }
    }

    fn remove_ops(&mut self, p: &RemotePath) {
        let parent_inside = self.parent_inside(p);
        if self.jail.remove_file(p).is_ok() {
            assert_eq!(
                parent_inside,
                Some(true),
                "remove_file {p} succeeded outside"
            );
            self.dirty = true;
        }
        if self.jail.remove_dir(p).is_ok() {
            assert_eq!(
                parent_inside,
                Some(true),
                "remove_dir {p} succeeded outside"
            );
            self.dirty = true;
        }
    }

    fn rename(&mut self, from: &RemotePath, to: &RemotePath, overwrite: bool) {
        let (from_inside, to_inside) = (self.parent_inside(from), self.parent_inside(to));
        if self.jail.rename(from, to, overwrite).is_ok() {
            assert_eq!(
                from_inside,
                Some(true),
                "rename from {from} outside the home"
            );
            assert_eq!(to_inside, Some(true), "rename to {to} outside the home");
            assert_eq!(
                self.parent_inside(to),
                Some(true),
                "rename {from} -> {to} left"
            );
            self.dirty = true;
        }
    }

    fn check_outside(&self) {
        let count = |dir: &Path| fs::read_dir(dir).unwrap().count();
        assert_eq!(count(&self.root), 2, "something appeared beside the home");
        assert_eq!(count(&self.outside), 2, "outside changed");
        assert_eq!(count(&self.outside.join("sub")), 0, "outside/sub changed");
        assert_eq!(fs::read(self.outside.join("marker.txt")).unwrap(), MARKER);
    }
}

/// Parses `s` and checks the result against the rules, written down again here.
fn check_parse(s: &str) -> Option<RemotePath> {
    let parsed = RemotePath::parse(s);
    let wanted: Vec<&str> = s
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    // The normal form is "/" + the components joined by "/".
    let normal_len = wanted.iter().map(|c| c.len() + 1).sum::<usize>().max(1);
    let acceptable = s.len() <= MAX_PATH_LEN
        && normal_len <= MAX_PATH_LEN
        && wanted.len() <= MAX_PATH_DEPTH
        && !s.chars().any(bad_char)
        && wanted
            .iter()
            .all(|c| *c != ".." && c.len() <= MAX_NAME_LEN && !reserved(c));
    assert_eq!(parsed.is_ok(), acceptable, "{s:?}: {parsed:?}");
    if let Err(e) = parsed {
        assert_ne!(e, PathError::NotAName);
        return None;
    }
    let p = parsed.unwrap();
    assert_eq!(p.components(), wanted);
    assert_eq!(p.is_root(), wanted.is_empty());
    let rel = p.as_relative();
    if p.is_root() {
        assert_eq!(rel, Path::new("."));
    } else {
        let n = rel
            .components()
            .inspect(|c| assert!(matches!(c, Component::Normal(_))))
            .count();
        assert_eq!(n, wanted.len(), "{rel:?}");
    }
    // The display form parses back to the same path, and parent + name joins back to it
    // (the length limit applies to the display form, so it always fits).
    let shown = p.to_string();
    assert!(shown.len() <= MAX_PATH_LEN, "{shown:?}");
    assert_eq!(RemotePath::parse(&shown).as_ref(), Ok(&p));
    if let (Some(parent), Some(name)) = (p.parent(), p.file_name()) {
        assert_eq!(parent.join(name).as_ref(), Ok(&p));
    }
    Some(p)
}

fn bad_char(c: char) -> bool {
    matches!(c, '\0' | '\\' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') || c.is_control()
}

fn reserved(c: &str) -> bool {
    c.len() >= RESERVED_PREFIX.len()
        && c.as_bytes()[..RESERVED_PREFIX.len()].eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes())
}

fn tempdir_works(dir: &Path) -> bool {
    let probe = dir.join(format!("{WORLD_PREFIX}probe-{}", std::process::id()));
    let ok = fs::create_dir(&probe).is_ok();
    let _ = fs::remove_dir(&probe);
    ok
}

/// Worlds of fuzzer processes that are gone (libFuzzer exits without running destructors).
fn remove_stale_worlds(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(WORLD_PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
