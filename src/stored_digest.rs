//! Stored digests: the SHA-256 of a committed file, kept with the file.
//!
//! Every commit on the server knows the digest of the bytes it wrote, so it records it in the
//! extended attribute [`XATTR_NAME`] of the temp file before the file is made durable and
//! renamed into place. A whole-file download (and `sha256`) of a file whose record still
//! belongs to it sends the recorded digest instead of hashing the file again: a quarter of the
//! CPU a download costs. The client hashes what it receives all the same, so a file that rots
//! on disk, or is edited behind the server's back, shows up there as a mismatch.
//!
//! A record belongs to the file it describes only while the file's size, modification time
//! (nanoseconds) and inode are the ones recorded. Any write through the file system changes
//! the modification time; a copy or a restore lands on another inode. The change time is not
//! recorded: setting the attribute and the rename of the commit both change it. A record
//! that does not parse, or describes another state of the file, is ignored and the file is
//! hashed as before. So is a missing one (a file placed by hand, a file system without user
//! extended attributes): recording is best effort and never fails a commit.
//!
//! The record, [`RECORD_LEN`] bytes, integers little-endian:
//!
//! | bytes | field                                        |
//! |-------|----------------------------------------------|
//! | 0     | format version, [`VERSION`]                  |
//! | 1-8   | size in bytes (u64)                          |
//! | 9-16  | modification time, seconds since 1970 (i64)  |
//! | 17-20 | modification time, nanoseconds (u32, < 10^9) |
//! | 21-28 | inode number (u64)                           |
//! | 29-60 | SHA-256 of the file's bytes                  |
//!
//! Everything here blocks; the server calls it on the blocking pool.

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::XattrFlags;
use rustix::io::Errno;

use crate::domain::hex_digest;

/// The extended attribute that holds a file's record (the `user.` namespace: the file's
/// owner may set it, no privilege needed).
pub const XATTR_NAME: &str = "user.ferry.sha256";

/// The record format written today. A record of any other version is ignored.
pub const VERSION: u8 = 1;

/// Length of a version-1 record.
pub const RECORD_LEN: usize = 61;

/// What a record checks of a file: size, modification time and inode, as one `fstat` of the
/// open file shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileState {
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub ino: u64,
}

impl FileState {
    /// The state in a `stat` result; `None` for values no regular file has (negative size,
    /// nanoseconds out of range).
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)] // field types differ by target
    pub fn of(st: &rustix::fs::Stat) -> Option<FileState> {
        Some(FileState {
            size: u64::try_from(st.st_size).ok()?,
            mtime_sec: i64::try_from(st.st_mtime).ok()?,
            mtime_nsec: u32::try_from(st.st_mtime_nsec).ok()?,
            ino: st.st_ino as u64,
        })
    }
}

/// A record: the digest and the state of the file it was taken of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub state: FileState,
    pub sha256: [u8; 32],
}

impl Record {
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut out = [0u8; RECORD_LEN];
        let s = &self.state;
        out[0] = VERSION;
        out[1..9].copy_from_slice(&s.size.to_le_bytes());
        out[9..17].copy_from_slice(&s.mtime_sec.to_le_bytes());
        out[17..21].copy_from_slice(&s.mtime_nsec.to_le_bytes());
        out[21..29].copy_from_slice(&s.ino.to_le_bytes());
        out[29..61].copy_from_slice(&self.sha256);
        out
    }

    /// Parses a record; anything but a well-formed version-1 record is `None`.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() != RECORD_LEN || bytes[0] != VERSION {
            return None;
        }
        let u64_at = |at: usize| bytes[at..at + 8].try_into().ok().map(u64::from_le_bytes);
        let mtime_nsec = u32::from_le_bytes(bytes[17..21].try_into().ok()?);
        if mtime_nsec >= 1_000_000_000 {
            return None;
        }
        Some(Record {
            state: FileState {
                size: u64_at(1)?,
                mtime_sec: i64::from_le_bytes(bytes[9..17].try_into().ok()?),
                mtime_nsec,
                ino: u64_at(21)?,
            },
            sha256: bytes[29..61].try_into().ok()?,
        })
    }
}

/// Set once a file system refused the attribute, so the log says so once, not per file.
static UNSUPPORTED_LOGGED: AtomicBool = AtomicBool::new(false);

/// Records `sha256` (64 hex digits) as the digest of what `file` holds now. Call it after the
/// last write and before the fsync or `syncfs` that makes the file durable, so the record is
/// durable with it. Best effort: a file system without user extended attributes, or any other
/// failure, leaves the file without a record, and it is hashed when it is read.
pub fn record(file: &File, sha256: &str) {
    let Some(digest) = parse_hex(sha256) else {
        return;
    };
    // The state after the last write: a later write changes mtime or size and so retires it.
    let Ok(st) = rustix::fs::fstat(file) else {
        return;
    };
    let Some(state) = FileState::of(&st) else {
        return;
    };
    let rec = Record {
        state,
        sha256: digest,
    };
    match rustix::fs::fsetxattr(file, XATTR_NAME, &rec.encode(), XattrFlags::empty()) {
        Ok(()) => {}
        Err(e) if e == Errno::NOTSUP || e == Errno::OPNOTSUPP || e == Errno::PERM => {
            if !UNSUPPORTED_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::debug!(error = %e, "no stored digests: the file system refuses user extended attributes");
            }
        }
        Err(e) => tracing::debug!(error = %e, "could not store a file's digest"),
    }
}

/// The recorded SHA-256 (64 lowercase hex digits) of what `file` holds, if it has a record
/// that parses and describes `state`: the file's state from an `fstat` of this open file
/// (the one its opener made, so a lookup costs one system call, `fgetxattr`), whose size is
/// what the caller announces and sends.
pub fn lookup(file: &File, state: &FileState) -> Option<String> {
    lookup_digest(file, state).map(|d| hex_digest(&d))
}

/// [`lookup`], the digest as bytes.
pub fn lookup_digest(file: &File, state: &FileState) -> Option<[u8; 32]> {
    let mut buf = [0u8; RECORD_LEN];
    let n = rustix::fs::fgetxattr(file, XATTR_NAME, &mut buf[..]).ok()?;
    let rec = Record::decode(&buf[..n])?;
    (rec.state == *state).then_some(rec.sha256)
}

/// The state of an open file, from one `fstat`.
pub fn state_of(file: &File) -> Option<FileState> {
    FileState::of(&rustix::fs::fstat(file).ok()?)
}

/// 64 hex digits (either case) as 32 bytes.
fn parse_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use sha2::{Digest, Sha256};

    use super::*;

    fn sample() -> Record {
        Record {
            state: FileState {
                size: 12345,
                mtime_sec: 1_700_000_000,
                mtime_nsec: 999_999_999,
                ino: 77,
            },
            sha256: [0xab; 32],
        }
    }

    #[test]
    fn encode_and_decode_round_trip() {
        let r = sample();
        let bytes = r.encode();
        assert_eq!(bytes[0], VERSION);
        assert_eq!(Record::decode(&bytes), Some(r));
    }

    #[test]
    fn malformed_records_are_none() {
        let good = sample().encode();
        assert_eq!(Record::decode(&good[..RECORD_LEN - 1]), None);
        let mut longer = good.to_vec();
        longer.push(0);
        assert_eq!(Record::decode(&longer), None);
        let mut other_version = good;
        other_version[0] = 2;
        assert_eq!(Record::decode(&other_version), None);
        let mut bad_nsec = good;
        bad_nsec[17..21].copy_from_slice(&1_000_000_000u32.to_le_bytes());
        assert_eq!(Record::decode(&bad_nsec), None);
        assert_eq!(Record::decode(b""), None);
    }

    #[test]
    fn hex_parses_both_cases_and_refuses_the_rest() {
        let d = Sha256::digest(b"x");
        let hex = hex_digest(&d);
        assert_eq!(parse_hex(&hex).unwrap()[..], d[..]);
        assert_eq!(parse_hex(&hex.to_uppercase()).unwrap()[..], d[..]);
        assert_eq!(parse_hex(&hex[..62]), None);
        assert_eq!(parse_hex(&format!("{}zz", &hex[..62])), None);
    }

    /// Needs user extended attributes where temp files go; says so loudly if there are none.
    fn xattr_file() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("f"))
            .unwrap();
        if let Err(e) = rustix::fs::fsetxattr(&file, "user.ferry.probe", b"1", XattrFlags::empty())
        {
            panic!(
                "the temp dir {} does not support user extended attributes ({e}); \
                 stored digests cannot be tested here",
                dir.path().display()
            );
        }
        (dir, file)
    }

    #[test]
    fn a_record_matches_until_the_file_changes() {
        let (_dir, mut file) = xattr_file();
        file.write_all(b"hello").unwrap();
        let sha = hex_digest(&Sha256::digest(b"hello"));
        let now = |f: &File| state_of(f).unwrap();
        assert_eq!(lookup(&file, &now(&file)), None, "no record yet");
        record(&file, &sha);
        let recorded = now(&file);
        assert_eq!(lookup(&file, &recorded), Some(sha.clone()));
        // Any other state (here: another size) gets nothing.
        let other = FileState {
            size: 4,
            ..recorded
        };
        assert_eq!(lookup(&file, &other), None);
        // Any write changes the size or the modification time: the record is stale.
        std::thread::sleep(std::time::Duration::from_millis(20));
        file.write_all(b"!").unwrap();
        assert_eq!(lookup(&file, &now(&file)), None);
    }

    #[test]
    fn garbage_in_the_attribute_is_no_record() {
        let (_dir, file) = xattr_file();
        rustix::fs::fsetxattr(&file, XATTR_NAME, b"garbage", XattrFlags::empty()).unwrap();
        assert_eq!(lookup(&file, &state_of(&file).unwrap()), None);
        // A record longer than the format's is refused, not cut to size.
        let long = [1u8; RECORD_LEN + 10];
        rustix::fs::fsetxattr(&file, XATTR_NAME, &long, XattrFlags::empty()).unwrap();
        assert_eq!(lookup(&file, &state_of(&file).unwrap()), None);
    }
}
