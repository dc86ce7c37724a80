//! Stored digests: every commit records the file's SHA-256 in `user.ferry.sha256`, and a
//! download or `sha256` of a file whose record still describes it answers from the record.
//! The records are read here with rustix and decoded by hand, field by field, so the format
//! is checked independently of the server's own decoder.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use ferry::client::{ClientError, EXIT_INTEGRITY};
use tokio_util::sync::CancellationToken;

use crate::oneshot::oneshot;
use crate::util::{TestServer, no_progress, random_file, sha256_hex};

const XATTR: &str = "user.ferry.sha256";
const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Fails loudly where the test world's file system cannot hold user extended attributes:
/// stored digests cannot exist there, and these tests would prove nothing.
fn require_xattrs(dir: &Path) {
    let probe = dir.join("xattr-probe");
    std::fs::write(&probe, b"").unwrap();
    if let Err(e) = rustix::fs::setxattr(
        &probe,
        "user.ferry.probe",
        b"1",
        rustix::fs::XattrFlags::empty(),
    ) {
        panic!(
            "{} does not support user extended attributes ({e}): stored digests cannot be \
             tested here; run the tests with TMPDIR on ext4, xfs, btrfs or tmpfs (Linux >= 6.6)",
            dir.display()
        );
    }
    std::fs::remove_file(&probe).unwrap();
}

async fn started() -> TestServer {
    let server = TestServer::start().await;
    require_xattrs(server.dir());
    server
}

/// The raw record of `path`, `None` if it has none.
fn raw_record(path: &Path) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    match rustix::fs::getxattr(path, XATTR, &mut buf[..]) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(rustix::io::Errno::NODATA) => None,
        Err(e) => panic!("getxattr {}: {e}", path.display()),
    }
}

/// Asserts that `path` holds `data` and a version-1 record of exactly that: its size,
/// modification time (to the nanosecond), inode and SHA-256.
fn assert_recorded(path: &Path, data: &[u8]) {
    assert_eq!(std::fs::read(path).unwrap(), data, "{}", path.display());
    let rec = raw_record(path).unwrap_or_else(|| panic!("{} has no record", path.display()));
    assert_eq!(rec.len(), 61, "record length");
    assert_eq!(rec[0], 1, "record version");
    let meta = std::fs::metadata(path).unwrap();
    let u64_at = |at: usize| u64::from_le_bytes(rec[at..at + 8].try_into().unwrap());
    assert_eq!(u64_at(1), data.len() as u64, "recorded size");
    assert_eq!(u64_at(1), meta.len(), "recorded size");
    assert_eq!(u64_at(9) as i64, meta.mtime(), "recorded mtime (s)");
    let nsec = u32::from_le_bytes(rec[17..21].try_into().unwrap());
    assert_eq!(i64::from(nsec), meta.mtime_nsec(), "recorded mtime (ns)");
    assert_eq!(u64_at(21), meta.ino(), "recorded inode");
    assert_eq!(hex(&rec[29..61]), sha256_hex(data), "recorded digest");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Flips one byte of `path` in place and puts its modification time back: size, mtime and
/// inode are as recorded, only the bytes differ (bit rot, or an edit that hides itself).
fn corrupt_keeping_mtime(path: &Path, at: u64) {
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let file = File::options().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x5a], at).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    assert_eq!(std::fs::metadata(path).unwrap().modified().unwrap(), mtime);
}

/// A progress callback that cancels `token` once `at` bytes have moved.
fn cancel_at(token: CancellationToken, at: u64) -> impl FnMut(u64) + Send {
    move |n| {
        if n >= at {
            token.cancel();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_records_the_digest_on_every_commit_path() {
    let server = started().await;
    let dir = tempfile::tempdir().unwrap();
    let mut conn = server.alice().await;
    // 4 KiB and 200 KiB: read whole, one blocking call, group commit. 512 KiB: the writer
    // thread, group commit. 2 MiB: the writer thread, its own fsync. 8 MiB: O_DIRECT.
    for (i, size) in [0, 4 * KIB, 200 * KIB, 512 * KIB, 2 * MIB, 8 * MIB]
        .into_iter()
        .enumerate()
    {
        let src = dir.path().join(format!("f{i}"));
        let data = random_file(&src, size, i as u64);
        let done = conn
            .put(&src, &format!("/f{i}"), false, &mut no_progress())
            .await
            .unwrap();
        assert_eq!(done.sha256, sha256_hex(&data));
        assert_recorded(&server.home_file("alice", &format!("f{i}")), &data);
    }
    // An overwrite records the new content.
    let src = dir.path().join("f1");
    let data = random_file(&src, 4 * KIB, 99);
    conn.put(&src, "/f1", true, &mut no_progress())
        .await
        .unwrap();
    assert_recorded(&server.home_file("alice", "f1"), &data);
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_put_records_the_digest_of_the_whole_file() {
    let server = started().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let data = random_file(&src, 8 * MIB, 5);
    let mut conn = server.alice().await;
    let token = CancellationToken::new();
    conn.set_cancel(token.clone());
    let err = conn
        .put(
            &src,
            "/big.bin",
            false,
            &mut cancel_at(token, 2 * MIB as u64),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Cancelled), "{err:?}");
    conn.set_cancel(CancellationToken::new());
    let done = conn
        .put_resume(&src, "/big.bin", false, &mut no_progress())
        .await
        .unwrap();
    assert!(done.resumed_from > 0, "not resumed");
    assert_recorded(&server.home_file("alice", "big.bin"), &data);

    // A small upload cut off and resumed: the rest is small, written in memory.
    let src = dir.path().join("small.bin");
    let data = random_file(&src, 600 * KIB, 6);
    let token = CancellationToken::new();
    conn.set_cancel(token.clone());
    let _ = conn
        .put(
            &src,
            "/small.bin",
            false,
            &mut cancel_at(token, 400 * KIB as u64),
        )
        .await;
    conn.set_cancel(CancellationToken::new());
    conn.put_resume(&src, "/small.bin", false, &mut no_progress())
        .await
        .unwrap();
    assert_recorded(&server.home_file("alice", "small.bin"), &data);
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_records_the_digest_of_the_copy() {
    let server = started().await;
    // The source was placed by hand: no record; the copy gets one of its own.
    let data = random_file(&server.home_file("alice", "src.bin"), 3 * MIB, 8);
    let mut conn = server.alice().await;
    let done = conn.copy("/src.bin", "/copy.bin", false).await.unwrap();
    assert_eq!(done.sha256, sha256_hex(&data));
    assert_recorded(&server.home_file("alice", "copy.bin"), &data);
    assert!(raw_record(&server.home_file("alice", "src.bin")).is_none());
    let small = random_file(&server.home_file("alice", "s.txt"), 10, 9);
    conn.copy("/s.txt", "/copy.bin", true).await.unwrap();
    assert_recorded(&server.home_file("alice", "copy.bin"), &small);
    conn.close().await.unwrap();
}

/// The proof that the server answers from the record: a byte flipped on disk with size and
/// mtime kept is not noticed by the server, so the client's own hash disagrees with the
/// recorded digest and it says the stored file may be corrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_corrupted_at_rest_is_reported_by_the_client() {
    let server = started().await;
    let dir = tempfile::tempdir().unwrap();
    let mut conn = server.alice().await;
    // Small (sent whole) and large (streamed) downloads.
    for (name, size) in [("small.bin", 100 * KIB), ("large.bin", 6 * MIB)] {
        let src = dir.path().join(name);
        let data = random_file(&src, size, 21);
        conn.put(&src, &format!("/{name}"), false, &mut no_progress())
            .await
            .unwrap();
        let stored = server.home_file("alice", name);
        corrupt_keeping_mtime(&stored, size as u64 / 2);
        let (_, sha) = conn.sha256(&format!("/{name}")).await.unwrap();
        assert_eq!(sha, sha256_hex(&data), "sha256 answers from the record");
        let dst = dir.path().join(format!("got-{name}"));
        let err = conn
            .get(&format!("/{name}"), &dst, false, &mut no_progress())
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Integrity { .. }), "{err:?}");
        assert_eq!(err.exit_code(), EXIT_INTEGRITY);
        let text = err.to_string();
        assert!(
            text.starts_with("integrity check failed: local sha256 "),
            "{text}"
        );
        assert!(text.contains("corrupted at rest"), "{text}");
        assert!(text.contains("behind the server's back"), "{text}");
        assert!(!dst.exists(), "a corrupt download must not be committed");
    }
    conn.close().await.unwrap();
}

/// A rename keeps the file's inode and mtime, so its record still holds: after `mv` the
/// server still answers from it (shown, again, by a byte flipped with the mtime kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_survives_a_rename() {
    let server = started().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("a.bin");
    let data = random_file(&src, 40 * KIB, 81);
    let mut conn = server.alice().await;
    conn.put(&src, "/a.bin", false, &mut no_progress())
        .await
        .unwrap();
    conn.mkdir("/d").await.unwrap();
    conn.rename("/a.bin", "/d/b.bin", false).await.unwrap();
    let moved = server.home("alice").join("d").join("b.bin");
    assert_recorded(&moved, &data);
    corrupt_keeping_mtime(&moved, 7);
    let (_, sha) = conn.sha256("/d/b.bin").await.unwrap();
    assert_eq!(sha, sha256_hex(&data));
    let err = conn
        .get(
            "/d/b.bin",
            &dir.path().join("got"),
            false,
            &mut no_progress(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("corrupted at rest"), "{err}");
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_record_serves_a_resumed_download() {
    let server = started().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("d.bin");
    let data = random_file(&src, 16 * MIB, 31);
    let mut conn = server.alice().await;
    conn.put(&src, "/d.bin", false, &mut no_progress())
        .await
        .unwrap();
    let dst = dir.path().join("got.bin");
    let token = CancellationToken::new();
    conn.set_cancel(token.clone());
    let err = conn
        .get("/d.bin", &dst, false, &mut cancel_at(token, 4 * MIB as u64))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Cancelled), "{err:?}");
    conn.set_cancel(CancellationToken::new());
    // Flip a byte past the kept prefix: the prefix still matches, the rest comes unhashed
    // and the recorded digest exposes the change.
    corrupt_keeping_mtime(&server.home_file("alice", "d.bin"), 15 * MIB as u64);
    let err = conn
        .get_resume("/d.bin", &dst, false, &mut no_progress())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("corrupted at rest"), "{err}");
    // Put the byte back (mtime kept again): the resume verifies.
    corrupt_keeping_mtime(&server.home_file("alice", "d.bin"), 15 * MIB as u64);
    let token = CancellationToken::new();
    conn.set_cancel(token.clone());
    let _ = conn
        .get("/d.bin", &dst, false, &mut cancel_at(token, 4 * MIB as u64))
        .await;
    conn.set_cancel(CancellationToken::new());
    let done = conn
        .get_resume("/d.bin", &dst, false, &mut no_progress())
        .await
        .unwrap();
    assert!(done.resumed_from > 0);
    assert_eq!(done.sha256, sha256_hex(&data));
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    conn.close().await.unwrap();
}

/// A file rewritten outside the server keeps its old record, which no longer matches its
/// mtime (or size, or inode): the server hashes it and the download verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_record_is_ignored() {
    let server = started().await;
    let dir = tempfile::tempdir().unwrap();
    let mut conn = server.alice().await;
    for (name, size) in [("small.bin", 8 * KIB), ("large.bin", 5 * MIB)] {
        let src = dir.path().join(name);
        random_file(&src, size, 41);
        conn.put(&src, &format!("/{name}"), false, &mut no_progress())
            .await
            .unwrap();
        let stored = server.home_file("alice", name);
        let before = std::fs::metadata(&stored).unwrap();
        let old = raw_record(&stored).expect("record");
        // Same size, new bytes, written in place behind the server's back.
        std::thread::sleep(Duration::from_millis(20));
        let changed = random_file(&dir.path().join("changed"), size, 42);
        File::options()
            .write(true)
            .open(&stored)
            .unwrap()
            .write_all(&changed)
            .unwrap();
        let after = std::fs::metadata(&stored).unwrap();
        assert_eq!(after.len(), before.len());
        assert_eq!(after.ino(), before.ino());
        assert!(
            after.modified().unwrap() != before.modified().unwrap(),
            "mtime unchanged"
        );
        assert_eq!(
            raw_record(&stored),
            Some(old),
            "the old record stays on the file"
        );
        let (_, sha) = conn.sha256(&format!("/{name}")).await.unwrap();
        assert_eq!(sha, sha256_hex(&changed));
        let dst = dir.path().join(format!("got-{name}"));
        let done = conn
            .get(&format!("/{name}"), &dst, false, &mut no_progress())
            .await
            .unwrap();
        assert_eq!(done.sha256, sha256_hex(&changed));
        assert_eq!(std::fs::read(&dst).unwrap(), changed);
    }

    // A record carried to another file (as `rsync -X` or a restore would), with size and
    // mtime made equal: the inode differs, so it is not trusted.
    let src = dir.path().join("orig.bin");
    random_file(&src, 64 * KIB, 43);
    conn.put(&src, "/orig.bin", false, &mut no_progress())
        .await
        .unwrap();
    let orig = server.home_file("alice", "orig.bin");
    let other = server.home_file("alice", "other.bin");
    let other_data = random_file(&other, 64 * KIB, 44);
    let rec = raw_record(&orig).unwrap();
    let f = File::options().write(true).open(&other).unwrap();
    f.set_modified(std::fs::metadata(&orig).unwrap().modified().unwrap())
        .unwrap();
    rustix::fs::fsetxattr(&f, XATTR, &rec, rustix::fs::XattrFlags::empty()).unwrap();
    drop(f);
    let (_, sha) = conn.sha256("/other.bin").await.unwrap();
    assert_eq!(sha, sha256_hex(&other_data));
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_placed_by_hand_is_hashed() {
    let server = started().await;
    let dir = tempfile::tempdir().unwrap();
    let mut conn = server.alice().await;
    for (name, size) in [("small.bin", 3 * KIB), ("large.bin", 5 * MIB)] {
        let data = random_file(&server.home_file("alice", name), size, 51);
        assert!(raw_record(&server.home_file("alice", name)).is_none());
        let (_, sha) = conn.sha256(&format!("/{name}")).await.unwrap();
        assert_eq!(sha, sha256_hex(&data));
        let dst = dir.path().join(name);
        let done = conn
            .get(&format!("/{name}"), &dst, false, &mut no_progress())
            .await
            .unwrap();
        assert_eq!(done.sha256, sha256_hex(&data));
        // Reading does not add a record: only commits write them.
        assert!(raw_record(&server.home_file("alice", name)).is_none());
    }
    conn.close().await.unwrap();
}

/// Garbage in the attribute is no record: the file is hashed, even where a record that
/// parsed would have matched nothing and a wrong one would have been caught by the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_record_is_ignored() {
    let server = started().await;
    let dir = tempfile::tempdir().unwrap();
    let mut conn = server.alice().await;
    let src = dir.path().join("g.bin");
    random_file(&src, 300 * KIB, 61);
    conn.put(&src, "/g.bin", false, &mut no_progress())
        .await
        .unwrap();
    let stored = server.home_file("alice", "g.bin");
    let good = raw_record(&stored).unwrap();
    let mut other_version = good.clone();
    other_version[0] = 2;
    let mut longer = good.clone();
    longer.push(0);
    let garbage: [&[u8]; 5] = [b"", b"garbage", &good[..60], &other_version, &longer];
    for (i, value) in garbage.into_iter().enumerate() {
        // New bytes with the record's size and mtime kept: only a trusted record could make
        // the server report the old digest.
        corrupt_keeping_mtime(&stored, i as u64);
        let f = File::open(&stored).unwrap();
        rustix::fs::fsetxattr(&f, XATTR, value, rustix::fs::XattrFlags::empty()).unwrap();
        drop(f);
        let now = std::fs::read(&stored).unwrap();
        let (_, sha) = conn.sha256("/g.bin").await.unwrap();
        assert_eq!(sha, sha256_hex(&now), "value {i}");
        let dst = dir.path().join(format!("g{i}"));
        let done = conn
            .get("/g.bin", &dst, false, &mut no_progress())
            .await
            .unwrap();
        assert_eq!(done.sha256, sha256_hex(&now), "value {i}");
    }
    conn.close().await.unwrap();
}

/// What a script sees: the real binary's one-shot `get` of a file corrupted at rest exits with
/// the integrity status (5), says the stored file may be corrupted, and leaves nothing behind.
#[test]
fn the_one_shot_get_of_a_file_corrupted_at_rest_exits_5_and_says_so() {
    let w = crate::cli::World::start();
    require_xattrs(&w.local);
    random_file(&w.local.join("r.bin"), 70_000, 71);
    oneshot(&w, &["put", "r.bin", "alice@127.0.0.1:"]).expect_ok();
    let stored = w.root.join("alice").join("r.bin");
    assert!(raw_record(&stored).is_some(), "the upload left no record");
    corrupt_keeping_mtime(&stored, 100);
    std::fs::remove_file(w.local.join("r.bin")).unwrap();
    let out = oneshot(&w, &["get", "--json", "alice@127.0.0.1:r.bin"]);
    out.expect_code(i32::from(EXIT_INTEGRITY));
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:#?}"));
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["exit_code"], 5, "{v}");
    assert!(v.to_string().contains("corrupted at rest"), "{v}");
    assert!(!w.local.join("r.bin").exists());
    // Without --json the words reach the terminal.
    let out = oneshot(&w, &["get", "alice@127.0.0.1:r.bin"]);
    out.expect_code(i32::from(EXIT_INTEGRITY));
    assert!(out.stderr.contains("integrity check failed"), "{out:#?}");
    assert!(out.stderr.contains("corrupted at rest"), "{out:#?}");
}

/// Reads request `id`'s frames to its final reply: the data bytes' count and SHA-256, and the
/// reply.
async fn drain_get(
    raw: &mut crate::util::Raw,
    id: u64,
) -> (u64, String, ferry::protocol::ServerMessage) {
    use ferry::protocol::{Frame, ServerMessage, decode_server_message};
    use sha2::Digest;
    let (mut n, mut h) = (0u64, sha2::Sha256::new());
    loop {
        match raw.frame().await {
            Some(Frame::Data(d)) => {
                n += d.len() as u64;
                h.update(&d);
            }
            Some(Frame::Message(m)) => match decode_server_message(&m).unwrap() {
                ServerMessage::Progress { id: p, .. } if p == id => {}
                reply => return (n, hex(&h.finalize()), reply),
            },
            None => panic!("the server closed the session"),
        }
    }
}

/// A file that shrinks under a `get` ends in `size_mismatch`, never in `ok` after fewer bytes
/// than announced, whether its digest comes from a record that matched at the open (its bytes
/// then go out unhashed) or from hashing; one that grows is sent up to the size announced,
/// not a byte more, and the digest is of exactly those bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_changes_size_under_a_get_never_ends_ok_with_other_bytes() {
    use ferry::protocol::{ClientMessage, ErrorCode, ServerMessage};
    let server = started().await;
    const SIZE: u64 = 256 << 20;
    let get = |id, path: &str| ClientMessage::Get {
        id,
        path: path.into(),
        offset: 0,
        prefix_sha256: None,
    };
    let mut raw = server.raw().await;
    raw.login("alice", "alice-pw").await;
    for (id, recorded) in [(2, true), (3, false)] {
        // Sparse: the server reads a few MiB ahead of a client that does not read, no more.
        let path = server.home_file("alice", &format!("shrinks{id}"));
        let file = File::create(&path).unwrap();
        file.set_len(SIZE).unwrap();
        if recorded {
            ferry::stored_digest::record(&file, &"ab".repeat(32));
            assert!(raw_record(&path).is_some(), "no record planted");
        }
        raw.send(&get(id, &format!("/shrinks{id}"))).await;
        match raw.recv().await {
            ServerMessage::File { id: f, size, .. } => assert_eq!((f, size), (id, SIZE)),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        file.set_len(MIB as u64).unwrap();
        let (n, _, reply) = drain_get(&mut raw, id).await;
        assert!(n < SIZE, "recorded {recorded}: {n} bytes");
        match reply {
            ServerMessage::Error {
                id: Some(e),
                code: ErrorCode::SizeMismatch,
                message,
            } => {
                assert_eq!(e, id);
                assert_eq!(message, "file changed on the server during the download");
            }
            other => panic!("recorded {recorded}: a shrunk file ended with {other:?}"),
        }
    }

    let path = server.home_file("alice", "grows");
    let file = File::create(&path).unwrap();
    file.set_len(SIZE).unwrap();
    raw.send(&get(4, "/grows")).await;
    assert!(matches!(
        raw.recv().await,
        ServerMessage::File {
            id: 4,
            size: SIZE,
            ..
        }
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    file.write_all_at(&[7u8; MIB], SIZE).unwrap();
    let (n, sha, reply) = drain_get(&mut raw, 4).await;
    assert_eq!(n, SIZE, "bytes sent of a file that grew");
    match reply {
        ServerMessage::Ok {
            id: 4,
            size: Some(SIZE),
            sha256: Some(d),
            ..
        } => assert_eq!(d, sha, "the digest is not of the bytes sent"),
        other => panic!("{other:?}"),
    }
}
