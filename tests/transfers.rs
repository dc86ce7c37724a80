//! Verified round trips through the library client against a real server.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ferry::client::{ClientError, Connection};
use ferry::protocol::{EntryKind, ErrorCode, WireError};

use crate::util::{TestServer, names_in, no_progress, random_file, sha256_hex};

/// The wire code of a remote refusal; anything else is a test failure.
fn remote_code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Remote(WireError { code, .. })) => code,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

/// Names in `dir` that look like temp files of either side (`.ferry-tmp.*` on the server,
/// `.<name>.<tag>.ferry-part` on the client).
fn temp_names(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| n.starts_with(".ferry-") || n.ends_with(".ferry-part"))
        .collect()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_sizes_around_the_chunk_boundary() {
    let server = TestServer::start().await;
    let mut conn = server.alice().await;
    let local = tempfile::tempdir().unwrap();
    let chunk = ferry::protocol::DATA_CHUNK_LEN;
    // From `direct` on, both ends write around the page cache in 1 MiB blocks, the last one
    // short and unaligned unless the size is a multiple of 4 KiB.
    let direct = ferry::direct::MIN_SIZE as usize;
    for (i, len) in [
        0,
        1,
        chunk - 1,
        chunk,
        chunk + 1,
        direct - 1,
        direct,
        direct + 4097,
        10 * 1024 * 1024,
    ]
    .into_iter()
    .enumerate()
    {
        let src = local.path().join(format!("src{i}"));
        let data = random_file(&src, len, i as u64);
        let up = conn
            .put(&src, &format!("/f{i}"), false, &mut no_progress())
            .await
            .unwrap();
        assert_eq!(up.size, len as u64);
        assert_eq!(up.sha256, sha256_hex(&data));
        assert_eq!(
            std::fs::read(server.home("alice").join(format!("f{i}"))).unwrap(),
            data
        );
        let dst = local.path().join(format!("dst{i}"));
        let down = conn
            .get(&format!("/f{i}"), &dst, false, &mut no_progress())
            .await
            .unwrap();
        assert_eq!(down.sha256, up.sha256);
        assert_eq!(std::fs::read(&dst).unwrap(), data);
    }
    conn.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_onto_existing_name_needs_overwrite() {
    let server = TestServer::start().await;
    let mut conn = server.alice().await;
    let home = server.home("alice");
    std::fs::write(home.join("x"), b"old content").unwrap();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("new");
    // Several chunks, so the refusal arrives while the client is still sending.
    let data = random_file(&src, 3 * ferry::protocol::DATA_CHUNK_LEN + 5, 7);

    let err = conn.put(&src, "/x", false, &mut no_progress()).await;
    assert_eq!(remote_code(err), ErrorCode::AlreadyExists);
    assert_eq!(std::fs::read(home.join("x")).unwrap(), b"old content");
    assert_eq!(names_in(&home), ["x"], "no temp file may be left behind");

    // The refused upload was discarded; the session goes on and overwrite replaces.
    let up = conn
        .put(&src, "/x", true, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(up.sha256, sha256_hex(&data));
    assert_eq!(std::fs::read(home.join("x")).unwrap(), data);
    assert_eq!(names_in(&home), ["x"]);
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_onto_existing_local_file_needs_overwrite() {
    let server = TestServer::start().await;
    let mut conn = server.alice().await;
    let remote = random_file(&server.home("alice").join("r.bin"), 300_000, 11);
    let local = tempfile::tempdir().unwrap();
    let dst = local.path().join("dst");
    std::fs::write(&dst, b"local content").unwrap();

    match conn.get("/r.bin", &dst, false, &mut no_progress()).await {
        Err(ClientError::LocalExists(p)) => assert_eq!(p, dst),
        other => panic!("expected LocalExists, got {other:?}"),
    }
    assert_eq!(std::fs::read(&dst).unwrap(), b"local content");
    assert_eq!(names_in(local.path()), ["dst"], "no .ferry-part temp left");

    let down = conn
        .get("/r.bin", &dst, true, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(down.size, remote.len() as u64);
    assert_eq!(down.sha256, sha256_hex(&remote));
    assert_eq!(std::fs::read(&dst).unwrap(), remote);
    assert_eq!(names_in(local.path()), ["dst"]);
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_overwrite_replaces_a_symlink_not_its_target() {
    let server = TestServer::start().await;
    let mut conn = server.alice().await;
    let home = server.home("alice");
    std::fs::write(home.join("target.txt"), b"target content").unwrap();
    std::os::unix::fs::symlink("target.txt", home.join("link")).unwrap();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    let data = random_file(&src, 1000, 3);

    // Without overwrite the link counts as an existing name.
    let err = conn.put(&src, "/link", false, &mut no_progress()).await;
    assert_eq!(remote_code(err), ErrorCode::AlreadyExists);
    assert!(
        std::fs::symlink_metadata(home.join("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    conn.put(&src, "/link", true, &mut no_progress())
        .await
        .unwrap();
    let meta = std::fs::symlink_metadata(home.join("link")).unwrap();
    assert!(meta.file_type().is_file(), "the link itself was replaced");
    assert_eq!(std::fs::read(home.join("link")).unwrap(), data);
    assert_eq!(
        std::fs::read(home.join("target.txt")).unwrap(),
        b"target content"
    );
    assert_eq!(names_in(&home), ["link", "target.txt"]);
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_put_and_get_at_once() {
    const CLIENTS: usize = 16;
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let tls = server.client_tls();
        let port = server.addr.port();
        let dir = local.path().to_path_buf();
        let (user, password) = if i % 2 == 0 {
            ("alice", "alice-pw")
        } else {
            ("bob", "bob-pw")
        };
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::connect("127.0.0.1", port, tls).await.unwrap();
            conn.login(user, &ferry::users::Password::new(password.into()))
                .await
                .unwrap();
            let src = dir.join(format!("src{i}"));
            let data = random_file(&src, 1024 * 1024 + i * 997, 100 + i as u64);
            let remote = format!("/c{i}.bin");
            let up = conn
                .put(&src, &remote, false, &mut no_progress())
                .await
                .unwrap();
            assert_eq!(up.sha256, sha256_hex(&data));
            let dst = dir.join(format!("dst{i}"));
            let down = conn
                .get(&remote, &dst, false, &mut no_progress())
                .await
                .unwrap();
            assert_eq!(down.sha256, up.sha256);
            assert_eq!(std::fs::read(&dst).unwrap(), data);
            conn.close().await.unwrap();
            (user, i, data)
        }));
    }
    for t in tasks {
        let (user, i, data) = t.await.unwrap();
        let on_disk = std::fs::read(server.home(user).join(format!("c{i}.bin"))).unwrap();
        assert!(on_disk == data, "c{i}.bin of {user} differs on disk");
    }
    assert_eq!(names_in(&server.home("alice")).len(), CLIENTS / 2);
    assert_eq!(names_in(&server.home("bob")).len(), CLIENTS / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_of_100_000_entries_hides_reserved_names() {
    const N: usize = 100_000;
    let server = TestServer::start().await;
    let big = server.home("alice").join("big");
    std::fs::create_dir_all(&big).unwrap();
    let expected: Vec<String> = (0..N).map(|i| format!("f{i:06}")).collect();
    // Hard links are the quickest entries to make (still about 2 s for all of them on ext4,
    // which allows at most 65,000 links per inode).
    for batch in expected.chunks(50_000) {
        let first = big.join(&batch[0]);
        std::fs::write(&first, b"abc").unwrap();
        for name in &batch[1..] {
            std::fs::hard_link(&first, big.join(name)).unwrap();
        }
    }
    // Server temp names, in any case, are never listed.
    std::fs::write(big.join(".ferry-tmp.0123456789abcdef"), b"x").unwrap();
    std::fs::write(big.join(".FERRY-other"), b"x").unwrap();

    let mut conn = server.alice().await;
    let entries = conn.list("/big").await.unwrap();
    assert_eq!(entries.len(), N);
    let mut names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    names.sort();
    assert!(names == expected, "listing names differ from the directory");
    assert!(
        entries
            .iter()
            .all(|e| e.kind == EntryKind::File && e.size == 3)
    );
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mkdir_rmdir_and_remove_report_the_right_codes() {
    let server = TestServer::start().await;
    let mut conn = server.alice().await;
    let home = server.home("alice");
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    random_file(&src, 10, 1);

    conn.mkdir("/d").await.unwrap();
    assert!(home.join("d").is_dir());
    assert_eq!(
        remote_code(conn.mkdir("/d").await),
        ErrorCode::AlreadyExists
    );
    assert_eq!(remote_code(conn.mkdir("/").await), ErrorCode::AlreadyExists);
    assert_eq!(
        remote_code(conn.mkdir("/missing/d").await),
        ErrorCode::NotFound
    );
    assert!(!home.join("missing").exists());

    conn.put(&src, "/d/f", false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(
        remote_code(conn.rmdir("/d").await),
        ErrorCode::DirectoryNotEmpty
    );
    assert!(home.join("d/f").is_file());
    assert_eq!(
        remote_code(conn.rmdir("/d/f").await),
        ErrorCode::NotADirectory
    );
    assert_eq!(remote_code(conn.rmdir("/nope").await), ErrorCode::NotFound);
    assert_eq!(
        remote_code(conn.rmdir("/").await),
        ErrorCode::PermissionDenied
    );

    assert_eq!(
        remote_code(conn.remove("/d").await),
        ErrorCode::IsADirectory
    );
    assert_eq!(remote_code(conn.remove("/nope").await), ErrorCode::NotFound);
    conn.remove("/d/f").await.unwrap();
    assert!(!home.join("d/f").exists());
    conn.rmdir("/d").await.unwrap();
    assert!(!home.join("d").exists());
    assert_eq!(remote_code(conn.stat("/d").await), ErrorCode::NotFound);
    assert!(names_in(&home).is_empty());
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_put_of_a_directory_are_is_a_directory() {
    let server = TestServer::start().await;
    let mut conn = server.alice().await;
    let home = server.home("alice");
    conn.mkdir("/d").await.unwrap();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    random_file(&src, 100, 2);

    let dst = local.path().join("dst");
    assert_eq!(
        remote_code(conn.get("/d", &dst, false, &mut no_progress()).await),
        ErrorCode::IsADirectory
    );
    assert_eq!(
        remote_code(conn.get("/", &dst, false, &mut no_progress()).await),
        ErrorCode::IsADirectory
    );
    assert_eq!(names_in(local.path()), ["src"], "no download temp left");

    for overwrite in [false, true] {
        assert_eq!(
            remote_code(conn.put(&src, "/d", overwrite, &mut no_progress()).await),
            ErrorCode::IsADirectory
        );
    }
    assert_eq!(
        remote_code(conn.put(&src, "/", true, &mut no_progress()).await),
        ErrorCode::IsADirectory
    );
    assert!(home.join("d").is_dir());
    assert_eq!(names_in(&home), ["d"]);
    assert!(names_in(&home.join("d")).is_empty());
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_refuses_an_existing_target_unless_overwrite() {
    let server = TestServer::start().await;
    let mut conn = server.alice().await;
    let home = server.home("alice");
    std::fs::write(home.join("a"), b"AAA").unwrap();
    std::fs::write(home.join("b"), b"BBB").unwrap();

    assert_eq!(
        remote_code(conn.rename("/a", "/b", false).await),
        ErrorCode::AlreadyExists
    );
    assert_eq!(std::fs::read(home.join("a")).unwrap(), b"AAA");
    assert_eq!(std::fs::read(home.join("b")).unwrap(), b"BBB");

    assert_eq!(
        remote_code(conn.rename("/nope", "/c", false).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        remote_code(conn.rename("/a", "/missing/a", false).await),
        ErrorCode::NotFound
    );
    conn.mkdir("/d").await.unwrap();
    assert_eq!(
        remote_code(conn.rename("/a", "/d", true).await),
        ErrorCode::IsADirectory
    );
    assert_eq!(names_in(&home), ["a", "b", "d"]);

    conn.rename("/a", "/b", true).await.unwrap();
    assert!(!home.join("a").exists());
    assert_eq!(std::fs::read(home.join("b")).unwrap(), b"AAA");

    conn.rename("/b", "/d/moved", false).await.unwrap();
    assert_eq!(std::fs::read(home.join("d/moved")).unwrap(), b"AAA");
    assert_eq!(names_in(&home), ["d"]);
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_reports_kind_size_and_mtime() {
    let server = TestServer::start().await;
    let mut conn = server.alice().await;
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    random_file(&src, 1234, 4);
    conn.put(&src, "/f", false, &mut no_progress())
        .await
        .unwrap();
    conn.mkdir("/d").await.unwrap();
    let now = now_secs();

    let f = conn.stat("/f").await.unwrap();
    assert_eq!(f.name, "f");
    assert_eq!(f.kind, EntryKind::File);
    assert_eq!(f.size, 1234);
    assert!(
        (f.mtime - now).abs() <= 10,
        "mtime {} vs now {now}",
        f.mtime
    );
    assert_eq!(f.mode, 0o600, "uploads get the temp file's mode");

    let d = conn.stat("/d").await.unwrap();
    assert_eq!((d.name.as_str(), d.kind), ("d", EntryKind::Dir));
    assert!((d.mtime - now).abs() <= 10);

    let root = conn.stat("/").await.unwrap();
    assert_eq!((root.name.as_str(), root.kind), ("/", EntryKind::Dir));

    // A symlink inside the home is followed.
    std::os::unix::fs::symlink("f", server.home("alice").join("l")).unwrap();
    let l = conn.stat("/l").await.unwrap();
    assert_eq!(
        (l.name.as_str(), l.kind, l.size),
        ("l", EntryKind::File, 1234)
    );

    assert_eq!(remote_code(conn.stat("/nope").await), ErrorCode::NotFound);
    assert_eq!(
        remote_code(conn.stat("/f/x").await),
        ErrorCode::NotADirectory
    );
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_of_a_file_in_a_subdirectory() {
    let server = TestServer::start().await;
    let mut conn = server.alice().await;
    conn.mkdir("/sub").await.unwrap();
    conn.mkdir("/sub/deeper").await.unwrap();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    let data = random_file(&src, 70_000, 5);
    conn.put(&src, "/sub/deeper/f.bin", false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(server.home("alice").join("sub/deeper/f.bin")).unwrap(),
        data
    );
    // Also through a path that needs normalising.
    for (i, remote) in ["/sub/deeper/f.bin", "sub//./deeper/f.bin"]
        .into_iter()
        .enumerate()
    {
        let dst = local.path().join(format!("dst{i}"));
        let down = conn
            .get(remote, &dst, false, &mut no_progress())
            .await
            .unwrap();
        assert_eq!(down.sha256, sha256_hex(&data));
        assert_eq!(std::fs::read(&dst).unwrap(), data);
    }
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_into_a_missing_directory_is_not_found() {
    let server = TestServer::start().await;
    let mut conn = server.alice().await;
    let home = server.home("alice");
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    random_file(&src, 500_000, 6);
    assert_eq!(
        remote_code(
            conn.put(&src, "/missing/f", false, &mut no_progress())
                .await
        ),
        ErrorCode::NotFound
    );
    assert!(names_in(&home).is_empty());
    // The session is still usable afterwards.
    conn.mkdir("/missing").await.unwrap();
    conn.put(&src, "/missing/f", false, &mut no_progress())
        .await
        .unwrap();
    assert!(temp_names(&home.join("missing")).is_empty());
    assert_eq!(names_in(&home.join("missing")), ["f"]);
    conn.close().await.unwrap();
}
