//! `LocalStorage` against the contract, on a fresh temp dir per test, and the local-only
//! extras: symlinks planted in the backing directory, and what is left on disk.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ferry::storage::local::LocalStorage;
use ferry::storage::{
    Commit, CopyOptions, ReadOptions, RemotePath, SmallOptions, Storage, StorageError,
    UploadOptions,
};
use sha2::Digest;

use super::contract::{Home, storage_contract};

async fn make() -> Home {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStorage::open(&dir.path().join("home"), true).unwrap();
    Home::new(Arc::new(store), dir)
}

storage_contract!(make);

fn p(s: &str) -> RemotePath {
    RemotePath::parse(s).unwrap()
}

/// Names in a directory of the backing file system, sorted.
fn on_disk(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_symlinks_out_of_the_home_are_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    let s = LocalStorage::open(&home, true).unwrap();
    // Planted after the store was opened, as an attacker with another way in would.
    symlink(&outside, home.join("out")).unwrap();
    symlink(outside.join("secret"), home.join("secret")).unwrap();
    symlink("../outside/secret", home.join("relative")).unwrap();
    let escape = |e: &StorageError| matches!(e, StorageError::Escape);
    for path in ["out/secret", "secret", "relative"] {
        let r = s.stat(&p(path)).await;
        assert!(r.as_ref().is_err_and(escape), "stat {path}: {r:?}");
        let r = s.open_read(&p(path), ReadOptions::default()).await;
        assert!(r.as_ref().is_err_and(escape), "read {path}");
        let r = s.get_small(&p(path), 1024).await;
        assert!(r.as_ref().is_err_and(escape), "get_small {path}");
        let options = CopyOptions {
            no_replace: true,
            ..CopyOptions::default()
        };
        let r = s.copy(&p(path), &p("copied"), options).await;
        assert!(r.as_ref().is_err_and(escape), "copy {path}");
    }
    let r = s.list(&p("out"), None, 10).await;
    assert!(r.as_ref().is_err_and(escape), "list out: {r:?}");
    let r = s.mkdir(&p("out/made")).await;
    assert!(r.as_ref().is_err_and(escape), "mkdir out/made");
    let r = s
        .begin_upload(&p("out/new"), UploadOptions::default())
        .await;
    assert!(r.as_ref().is_err(), "upload into out/");
    let r = s
        .put_small(
            &p("out/new"),
            Bytes::from_static(b"x"),
            SmallOptions::default(),
            Commit::new(sha2::Sha256::digest(b"x").into(), true),
        )
        .await;
    assert!(r.as_ref().is_err_and(escape), "put_small into out/");
    let r = s.remove_file(&p("out/secret")).await;
    assert!(r.as_ref().is_err_and(escape), "remove out/secret");
    let r = s.rename(&p("out/secret"), &p("stolen"), true).await;
    assert!(r.as_ref().is_err_and(escape), "rename out of out/");
    s.put_small(
        &p("mine"),
        Bytes::from_static(b"mine"),
        SmallOptions::default(),
        Commit::new(sha2::Sha256::digest(b"mine").into(), true),
    )
    .await
    .unwrap();
    let r = s.rename(&p("mine"), &p("out/mine"), true).await;
    assert!(r.as_ref().is_err_and(escape), "rename into out/");
    // The links themselves are names in the home: removing one removes the link only.
    s.remove_file(&p("secret")).await.unwrap();
    assert_eq!(on_disk(&outside), ["secret"]);
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
    assert_eq!(on_disk(&home), ["mine", "out", "relative"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_left_on_disk_by_aborted_or_dropped_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let s = LocalStorage::open(&home, true).unwrap();
    for size in [100u64, 5_000_000] {
        let options = UploadOptions {
            size_hint: Some(size),
            ..UploadOptions::default()
        };
        let mut up = s.begin_upload(&p("a"), options.clone()).await.unwrap();
        up.write(Bytes::from(vec![1u8; 50])).await.unwrap();
        up.abort().await;
        let mut up = s.begin_upload(&p("b"), options.clone()).await.unwrap();
        up.write(Bytes::from(vec![2u8; 50])).await.unwrap();
        drop(up);
        let mut up = s.begin_upload(&p("c"), options).await.unwrap();
        up.write(Bytes::from(vec![2u8; 50])).await.unwrap();
        up.finish().await.unwrap();
        up.commit(Commit::new([0; 32], true)).await.unwrap();
    }
    // A dropped upload's writer removes its temp on the blocking pool: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !on_disk(&home).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(on_disk(&home).is_empty(), "left: {:?}", on_disk(&home));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partials_live_hidden_in_the_home() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let s = LocalStorage::open(&home, true).unwrap();
    let mut up = s
        .begin_upload(&p("f"), UploadOptions::default())
        .await
        .unwrap();
    up.write(Bytes::from_static(b"part")).await.unwrap();
    up.keep_partial(ferry::storage::PartialKey::new("k1").unwrap())
        .await
        .unwrap();
    assert_eq!(on_disk(&home), [".ferry-partials"]);
    assert_eq!(on_disk(&home.join(".ferry-partials")), ["k1"]);
    let page = s.list(&RemotePath::root(), None, 10).await.unwrap();
    assert!(page.entries.is_empty(), "{:?}", page.entries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_shrinks_under_a_download_is_an_error_not_a_short_end() {
    use ferry::storage::ReadEvent;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let s = LocalStorage::open(&home, true).unwrap();
    std::fs::write(home.join("f"), vec![5u8; 16 << 20]).unwrap();
    let mut d = s.open_read(&p("f"), ReadOptions::default()).await.unwrap();
    assert!(matches!(d.next().await.unwrap(), ReadEvent::Data(_)));
    std::fs::OpenOptions::new()
        .write(true)
        .open(home.join("f"))
        .unwrap()
        .set_len(100)
        .unwrap();
    let mut got = 0usize;
    let end = loop {
        match d.next().await {
            Ok(ReadEvent::Data(b)) => got += b.len(),
            Ok(other) => break Ok(other),
            Err(e) => break Err(e),
        }
    };
    match end {
        Err(StorageError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}")
        }
        other => panic!("after {got} more bytes: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_partial_holds_every_byte_written() {
    // The contract lets a store keep only a resumable prefix; the local one keeps it all.
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStorage::open(&dir.path().join("home"), true).unwrap();
    for (i, len) in [1usize, 6, 300_000, 6_000_001].into_iter().enumerate() {
        let key = ferry::storage::PartialKey::new(format!("k{i}")).unwrap();
        let options = UploadOptions {
            size_hint: Some(len as u64 * 2),
            ..UploadOptions::default()
        };
        let mut up = s.begin_upload(&p("f"), options).await.unwrap();
        for chunk in vec![9u8; len].chunks(256 * 1024) {
            up.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        up.keep_partial(key.clone()).await.unwrap();
        assert_eq!(s.partial_len(&key).await.unwrap(), Some(len as u64));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_no_replace_commits_have_exactly_one_winner() {
    // Not in the contract (an object store needs a name reservation above it for this), but
    // the local store gets it from the kernel: RENAME_NOREPLACE.
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(LocalStorage::open(&dir.path().join("home"), true).unwrap());
    let mut finished = Vec::new();
    for i in 0..8u8 {
        let options = UploadOptions {
            no_replace: true,
            ..UploadOptions::default()
        };
        let mut up = s.begin_upload(&p("same"), options).await.unwrap();
        up.write(Bytes::from(vec![i; 1000])).await.unwrap();
        let digest = up.finish().await.unwrap();
        finished.push((i, up, digest));
    }
    let commits: Vec<_> = finished
        .into_iter()
        .map(|(i, up, digest)| {
            tokio::spawn(async move { (i, up.commit(Commit::new(digest, true)).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for c in commits {
        match c.await.unwrap() {
            (i, Ok(ferry::storage::Landed::Committed(_))) => winners.push(i),
            (_, Err(StorageError::AlreadyExists)) => {}
            (i, other) => panic!("{i}: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let content = std::fs::read(dir.path().join("home/same")).unwrap();
    assert_eq!(content, vec![winners[0]; 1000]);
    assert_eq!(on_disk(&dir.path().join("home")), ["same"]);
}

/// The local store records each committed file's SHA-256 beside it (`user.ferry.sha256`, see
/// `stored_digest`): the small whole-file path, a streamed file committed as a group, and a
/// large one fsynced by its writer. Read back with rustix, field by field: the last 32 bytes
/// of the 61-byte record are the digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commit_records_the_digest_beside_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let s = LocalStorage::open(&home, true).unwrap();
    let record = |name: &str| -> Vec<u8> {
        let f = std::fs::File::open(home.join(name)).unwrap();
        let mut buf = vec![0u8; 128];
        match rustix::fs::fgetxattr(&f, "user.ferry.sha256", &mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(e) => panic!("{name}: no record ({e}); does this file system keep user xattrs?"),
        }
    };
    // Small, one call.
    let data = vec![7u8; 4096];
    let sha: [u8; 32] = sha2::Sha256::digest(&data).into();
    let put = s
        .put_small(
            &p("small"),
            Bytes::from(data),
            SmallOptions::default(),
            Commit::new(sha, true),
        )
        .await
        .unwrap();
    assert!(matches!(put.landed, ferry::storage::Landed::Committed(_)));
    let r = record("small");
    assert_eq!((r.len(), r[0]), (61, 1));
    assert_eq!(&r[29..], &sha);
    // Streamed: 512 KiB (staged, one flush) and 3 MiB (fsynced by the writer).
    for (name, len, batched) in [("mid", 512 * 1024, true), ("big", 3 << 20, false)] {
        let data = vec![3u8; len];
        let sha: [u8; 32] = sha2::Sha256::digest(&data).into();
        let options = UploadOptions {
            size_hint: Some(len as u64),
            ..UploadOptions::default()
        };
        let mut up = s.begin_upload(&p(name), options).await.unwrap();
        for chunk in data.chunks(256 * 1024) {
            up.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        assert_eq!(up.finish().await.unwrap(), sha);
        let mut commit = Commit::new(sha, true);
        if batched {
            commit.durability = ferry::storage::Durability::Batched;
        }
        match up.commit(commit).await.unwrap() {
            ferry::storage::Landed::Committed(_) => {}
            ferry::storage::Landed::Staged(staged) => {
                for r in s.flush_durability(vec![staged]).await {
                    r.unwrap();
                }
            }
            other => panic!("{name}: {other:?}"),
        }
        let r = record(name);
        assert_eq!(r.len(), 61, "{name}");
        assert_eq!(&r[29..], &sha, "{name}");
        assert_eq!(
            u64::from_le_bytes(r[1..9].try_into().unwrap()),
            len as u64,
            "{name}: the size the record belongs to"
        );
    }
}

/// A change gate the test can hold shut, counting how often the store entered it.
#[derive(Default)]
struct TestGate {
    lock: tokio::sync::Mutex<()>,
    entered: std::sync::atomic::AtomicU64,
}

impl ferry::storage::ChangeGate for TestGate {
    fn enter(&self) -> Box<dyn Send + '_> {
        let guard = self.lock.blocking_lock();
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::new(guard)
    }
}

/// The quota's counters rely on it: every step that measures what a change replaces or
/// removes runs inside the store's gate, and waits while another caller holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_store_measures_and_changes_inside_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(TestGate::default());
    let store = LocalStorage::open(&dir.path().join("home"), true)
        .unwrap()
        .gated(Arc::clone(&gate) as Arc<dyn ferry::storage::ChangeGate>);
    let store: Arc<dyn Storage> = Arc::new(store);
    let put = |name: &'static str, body: &'static [u8]| {
        let store = Arc::clone(&store);
        async move {
            let digest: [u8; 32] = sha2::Sha256::digest(body).into();
            store
                .put_small(
                    &p(name),
                    Bytes::from_static(body),
                    SmallOptions::default(),
                    Commit::new(digest, false),
                )
                .await
                .unwrap();
        }
    };
    put("a", b"one").await;
    put("b", b"two").await;
    let before = gate.entered.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        before >= 2,
        "each commit's rename enters the gate ({before})"
    );

    // Held shut: a removal, a rename and a commit all wait for it.
    let held = gate.lock.lock().await;
    let (s1, s2) = (Arc::clone(&store), Arc::clone(&store));
    let remove = tokio::spawn(async move { s1.remove_file(&p("a")).await });
    let rename = tokio::spawn(async move { s2.rename(&p("b"), &p("c"), true).await });
    let commit = tokio::spawn(put("d", b"four"));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!remove.is_finished() && !rename.is_finished() && !commit.is_finished());
    assert!(
        dir.path().join("home/a").exists(),
        "removed while the gate was shut"
    );
    drop(held);
    assert_eq!(remove.await.unwrap().unwrap().bytes, 3);
    rename.await.unwrap().unwrap();
    commit.await.unwrap();
    assert_eq!(on_disk(&dir.path().join("home")), ["c", "d"]);
    assert!(gate.entered.load(std::sync::atomic::Ordering::SeqCst) >= before + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_list_position_reads_only_its_own_directory() {
    use ferry::storage::ListToken;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let s = LocalStorage::open(&home, true).unwrap();
    std::fs::create_dir(home.join("d")).unwrap();
    for i in 0..60 {
        std::fs::write(home.join("d").join(format!("n{i:02}")), b"").unwrap();
    }
    std::fs::create_dir(home.join("other")).unwrap();
    std::fs::write(home.join("other").join("secret"), b"").unwrap();
    std::fs::write(home.join("d").join(".ferry-tmp.x"), b"").unwrap();
    let page = s.list(&p("d"), None, 5).await.unwrap();
    let token = page.next.unwrap();
    let t = token.as_str();
    assert_eq!(t.len(), 32, "{t}");
    let tag = &t[..16];
    let mut positions = vec![
        0,
        1,
        2,
        3,
        12345,
        1 << 31,
        (1 << 32) - 1,
        1 << 32,
        i64::MAX as u64 - 1,
        i64::MAX as u64,
        1 << 63,
        u64::MAX,
    ];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        positions.push(x);
        positions.push(x >> 1);
        positions.push(x >> 33);
    }
    for pos in positions {
        let forged = ListToken::from_string(format!("{tag}{pos:016x}"));
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            s.list(&p("d"), Some(&forged), 100),
        )
        .await
        .expect("a forged position hangs");
        match r {
            Ok(page) => {
                for e in &page.entries {
                    assert!(
                        e.name.len() == 3 && e.name.starts_with('n'),
                        "position {pos:#x} gave {:?}",
                        e.name
                    );
                }
            }
            Err(StorageError::InvalidArgument) => {}
            Err(e) => panic!("position {pos:#x}: {e:?}"),
        }
    }
}

/// A read answers with the file's stored digest while it describes the file (one lookup on
/// the opened file), and sends the bytes unhashed; a stat does not look it up. A record
/// planted with a digest that is not the content's shows which digest was used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_answer_from_the_stored_digest_and_stat_does_not_look() {
    use ferry::storage::{Fetched, ReadEvent};

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let s = LocalStorage::open(&home, true).unwrap();
    let small = b"small content".to_vec();
    let large = vec![9u8; 700_000];
    for (name, data) in [("small", &small), ("large", &large)] {
        std::fs::write(home.join(name), data).unwrap();
        let file = std::fs::File::open(home.join(name)).unwrap();
        ferry::stored_digest::record(&file, &"ab".repeat(32));
        let mut buf = [0u8; 128];
        if let Err(e) = rustix::fs::fgetxattr(&file, ferry::stored_digest::XATTR_NAME, &mut buf) {
            panic!(
                "{} does not keep user extended attributes ({e}): stored digests cannot be \
                 tested here; run the tests with TMPDIR on ext4, xfs, btrfs or tmpfs",
                home.display()
            );
        }
    }
    let planted = [0xab; 32];
    assert_eq!(s.stat(&p("small")).await.unwrap().sha256, None);
    assert_eq!(s.stat(&p("large")).await.unwrap().sha256, None);
    match s.get_small(&p("small"), 1024).await.unwrap() {
        Fetched::Whole { stat, data, sha256 } => {
            assert_eq!(&data[..], &small[..]);
            assert_eq!((stat.sha256, sha256), (Some(planted), planted));
        }
        other => panic!("{other:?}"),
    }
    let whole = ReadOptions {
        hash: true,
        ..ReadOptions::default()
    };
    let mut d = s.open_read(&p("large"), whole).await.unwrap();
    assert_eq!(d.stat().sha256, Some(planted));
    let mut got = Vec::new();
    let end = loop {
        match d.next().await.unwrap() {
            ReadEvent::Data(b) => got.extend_from_slice(&b),
            ReadEvent::Progress(_) => {}
            other => break other,
        }
    };
    assert_eq!(got, large);
    assert_eq!(
        end,
        ReadEvent::End {
            sha256: Some(planted)
        }
    );
    // A range that is not the whole rest of the file is hashed: the record covers the whole.
    let part = ReadOptions {
        offset: 0,
        len: Some(1000),
        hash: true,
        expect_prefix: None,
    };
    let mut d = s.open_read(&p("large"), part).await.unwrap();
    let end = loop {
        match d.next().await.unwrap() {
            ReadEvent::Data(_) | ReadEvent::Progress(_) => {}
            other => break other,
        }
    };
    let want: [u8; 32] = sha2::Sha256::digest(&large[..1000]).into();
    assert_eq!(end, ReadEvent::End { sha256: Some(want) });
    // A change behind the store's back retires the record: hashed again. (Another size: a
    // rewrite within one clock tick may keep the modification time.)
    std::fs::write(home.join("small"), b"other, longer content").unwrap();
    match s.get_small(&p("small"), 1024).await.unwrap() {
        Fetched::Whole { stat, sha256, .. } => {
            assert_eq!(stat.sha256, None);
            assert_eq!(
                sha256,
                <[u8; 32]>::from(sha2::Sha256::digest(b"other, longer content"))
            );
        }
        other => panic!("{other:?}"),
    }
}

/// A listing token names its directory by path, device and inode; ext4 gives a directory
/// made right after another was removed the removed one's inode number, so those alone let
/// a token of the removed directory read on in the new one from the old position: a ferry/1
/// listing then ends `ok` with names of two directories, the new one's before that position
/// never shown. The new directory is another: its token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_a_token_of_a_directory_removed_and_made_again_is_refused() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let s = LocalStorage::open(&home, true).unwrap();
    // Neighbouring tests free and take inodes too, and one of them may keep the removed
    // directory's inode: then the whole scene is played again with a directory of its own.
    for scene in 0..10 {
        let name = format!("d{scene}");
        let d = home.join(&name);
        std::fs::create_dir(&d).unwrap();
        for i in 0..50 {
            std::fs::write(d.join(format!("old{i:02}")), b"").unwrap();
        }
        let ino = std::fs::metadata(&d).unwrap().ino();
        let token = s.list(&p(&name), None, 5).await.unwrap().next.unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        // Past the granularity of the clock that stamps a new inode (a jiffy, at most 10 ms).
        std::thread::sleep(std::time::Duration::from_millis(20));
        // The lowest free inode of the group is taken first: set aside any other that comes
        // until the removed one comes back.
        let mut reused = false;
        for tries in 0..200 {
            std::fs::create_dir(&d).unwrap();
            if std::fs::metadata(&d).unwrap().ino() == ino {
                reused = true;
                break;
            }
            std::fs::rename(&d, home.join(format!("aside{scene}-{tries}"))).unwrap();
        }
        if !reused {
            continue;
        }
        for i in 0..50 {
            std::fs::write(d.join(format!("new{i:02}")), b"").unwrap();
        }
        match s.list(&p(&name), Some(&token), 100).await {
            Err(StorageError::InvalidArgument) => return,
            Ok(page) => panic!(
                "the token read on in the new directory: {} of its 50 names",
                page.entries.len()
            ),
            Err(e) => panic!("{e:?}"),
        }
    }
    panic!(
        "the file system under {} does not give a removed directory's inode to the next one \
         made (10 scenes of 200 tries): this test cannot tell here (it needs one that does, \
         like ext4)",
        dir.path().display()
    );
}
