//! Quotas and a full disk: limits from the users file, enforced up front and as data arrives,
//! with uploads in flight and kept partials counted, and usage that survives a restart.

use ferry::client::ClientError;
use ferry::protocol::{ClientMessage, ErrorCode, ServerMessage};

use crate::util::{Raw, TestServer, no_progress, random_file, sha256_hex};

fn code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Remote(w) => Some(w.code),
        _ => None,
    }
}

async fn carol(server: &TestServer) -> ferry::client::Connection {
    server.connect("carol", "carol-pw").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_file_size_bytes_and_files_are_enforced_and_reported() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut conn = carol(&server).await;

    let big = dir.path().join("big");
    random_file(&big, 600_001, 1);
    let err = conn
        .put(&big, "/big", false, &mut no_progress())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::TooLarge), "{err}");
    assert!(err.to_string().contains("600000"), "{err}");

    let f = dir.path().join("f");
    random_file(&f, 400_000, 2);
    conn.put(&f, "/a", false, &mut no_progress()).await.unwrap();
    conn.put(&f, "/b", false, &mut no_progress()).await.unwrap();
    // 800,000 of 1,048,576 bytes used: another 400,000 does not fit.
    let err = conn
        .put(&f, "/c", false, &mut no_progress())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::QuotaExceeded), "{err}");
    assert!(!server.home("carol").join("c").exists());
    let usage = conn.usage().await.unwrap();
    assert_eq!(usage.used_bytes, Some(800_000));
    assert_eq!(usage.used_files, Some(2));
    assert_eq!(usage.quota_bytes, Some(1 << 20));
    assert_eq!(usage.quota_files, Some(5));
    assert_eq!(usage.max_file_size, Some(600_000));

    // Removing frees room; replacing a file counts only the difference.
    conn.remove("/a").await.unwrap();
    conn.put(&f, "/c", false, &mut no_progress()).await.unwrap();
    conn.put(&f, "/c", true, &mut no_progress()).await.unwrap();
    assert_eq!(conn.usage().await.unwrap().used_bytes, Some(800_000));

    // The file count: small files until five exist.
    let tiny = dir.path().join("tiny");
    std::fs::write(&tiny, b"x").unwrap();
    for name in ["/t1", "/t2", "/t3"] {
        conn.put(&tiny, name, false, &mut no_progress())
            .await
            .unwrap();
    }
    let err = conn
        .put(&tiny, "/t4", false, &mut no_progress())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::QuotaExceeded), "{err}");
    assert!(err.to_string().contains("file quota"), "{err}");
    // A server-side copy is held to the same limits.
    let err = conn.copy("/t1", "/t5", false).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::QuotaExceeded), "{err}");

    // Users without limits are not held to anyone's.
    let mut alice = server.alice().await;
    alice
        .put(&big, "/big", false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(alice.usage().await.unwrap().quota_bytes, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_uploads_in_flight_cannot_together_overshoot() {
    let server = TestServer::start().await;
    let mut first = server.raw().await;
    first.login("carol", "carol-pw").await;
    let mut second = server.raw().await;
    second.login("carol", "carol-pw").await;
    let put = |id, path: &str| ClientMessage::Put {
        id,
        path: path.into(),
        size: 600_000,
        overwrite: false,
        offset: 0,
        prefix_sha256: None,
    };
    // The first upload is declared and in flight (no data yet): its size is reserved.
    first.send(&put(2, "/one")).await;
    let data = vec![7u8; 600_000];
    first.send_data(&data[..1000]).await;
    // Wait until the server has taken the first upload in (its temp file exists).
    let home = server.home("carol");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !crate::util::names_in(&home)
        .iter()
        .any(|n| n.starts_with(".ferry-tmp."))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "first upload never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    second.send(&put(2, "/two")).await;
    match second.recv().await {
        ServerMessage::Error {
            id: Some(2), code, ..
        } => assert_eq!(code, ErrorCode::QuotaExceeded),
        other => panic!("{other:?}"),
    }
    second.send(&ClientMessage::Abort { id: 2 }).await;
    first.send_data(&data[1000..]).await;
    first
        .send(&ClientMessage::End {
            id: 2,
            sha256: sha256_hex(&data),
        })
        .await;
    assert!(matches!(
        first.recv().await,
        ServerMessage::Ok { id: 2, .. }
    ));
    assert_eq!(
        std::fs::read(server.home("carol").join("one")).unwrap(),
        data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_survives_a_restart_and_counts_kept_partials() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    random_file(&f, 500_000, 3);
    let mut conn = carol(&server).await;
    conn.put(&f, "/kept", false, &mut no_progress())
        .await
        .unwrap();
    // An upload interrupted after 300,000 bytes leaves a partial that counts.
    let mut raw = server.raw().await;
    raw.login("carol", "carol-pw").await;
    raw.send(&ClientMessage::Put {
        id: 2,
        path: "/half".into(),
        size: 500_000,
        overwrite: false,
        offset: 0,
        prefix_sha256: None,
    })
    .await;
    raw.send_data(&vec![1u8; 300_000]).await;
    raw.send(&ClientMessage::Abort { id: 2 }).await;
    assert!(matches!(
        raw.recv().await,
        ServerMessage::Error {
            code: ErrorCode::Cancelled,
            ..
        }
    ));
    assert_eq!(conn.usage().await.unwrap().used_bytes, Some(800_000));
    drop((conn, raw));

    let server = server.restart(crate::util::test_limits()).await;
    let mut conn = carol(&server).await;
    let usage = conn.usage().await.unwrap();
    assert_eq!(
        usage.used_bytes,
        Some(800_000),
        "recounted at login after the restart"
    );
    assert_eq!(usage.used_files, Some(2));
    let err = conn
        .put(&f, "/more", false, &mut no_progress())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::QuotaExceeded));
    // Resuming the partial needs only the missing 200,000 bytes, which fit.
    let g = dir.path().join("g");
    std::fs::write(&g, [vec![1u8; 300_000], vec![2u8; 200_000]].concat()).unwrap();
    let done = conn
        .put_resume(&g, "/half", false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(done.resumed_from, 300_000);
    assert_eq!(conn.usage().await.unwrap().used_bytes, Some(1_000_000));
}

/// Mounts a small tmpfs over `dir`. Fails the test, saying why, where that is not permitted:
/// the tests that need it are `needs_mount_*`, ignored by `cargo test` and run by `.ci/run`
/// (as root) with `cargo test -- --ignored needs_`.
fn mount_tmpfs(dir: &std::path::Path, size: &str) -> Mounted {
    std::fs::create_dir_all(dir).unwrap();
    let out = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
        ])
        .arg(dir)
        .output();
    match out {
        Ok(o) if o.status.success() => Mounted(dir.to_path_buf()),
        Ok(o) => panic!(
            "this test needs permission to mount a tmpfs (root, or CAP_SYS_ADMIN), and mount \
             said: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("this test needs util-linux's mount to mount a tmpfs: {e}"),
    }
}

struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs permission to mount a tmpfs; .ci/run runs it as root"]
async fn needs_mount_a_full_disk_fails_the_upload_cleanly_and_the_server_goes_on() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    let _mount = mount_tmpfs(&home, "2m");
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    random_file(&big, 4 << 20, 4);
    let mut conn = server.alice().await;
    let err = conn
        .put(&big, "/big", false, &mut no_progress())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::NoSpace), "{err}");
    let left: Vec<_> = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "temp removed, nothing committed: {left:?}");
    // The same session goes on, and so does everyone else.
    let small = dir.path().join("small");
    let data = random_file(&small, 1000, 5);
    conn.put(&small, "/small", false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(std::fs::read(home.join("small")).unwrap(), data);
    let mut bob = server.connect("bob", "bob-pw").await;
    bob.put(&big, "/big", false, &mut no_progress())
        .await
        .unwrap();
    drop(conn);
}

/// Small uploads, which the server reads whole before it checks the limits and creates the
/// temp file, are counted like streamed ones: one cut off by `abort` leaves a counted partial,
/// one refused after its data changes nothing, and a complete one supersedes the partial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_uploads_are_counted_like_streamed_ones() {
    let server = TestServer::start().await;
    let mut conn = carol(&server).await;
    let mut raw = server.raw().await;
    raw.login("carol", "carol-pw").await;
    let put = |id, path: &str, size| ClientMessage::Put {
        id,
        path: path.into(),
        size,
        overwrite: false,
        offset: 0,
        prefix_sha256: None,
    };
    // A whole upload (request, data, end); its final reply.
    let upload = async |raw: &mut Raw, id: u64, path: &str, data: &[u8]| {
        raw.send(&put(id, path, data.len() as u64)).await;
        raw.send_data(data).await;
        raw.send(&ClientMessage::End {
            id,
            sha256: sha256_hex(data),
        })
        .await;
        raw.recv().await
    };
    let usage = async |conn: &mut ferry::client::Connection| {
        let u = conn.usage().await.unwrap();
        (u.used_bytes.unwrap(), u.used_files.unwrap())
    };

    raw.send(&put(2, "/s", 100_000)).await;
    raw.send_data(&[1u8; 60_000]).await;
    raw.send(&ClientMessage::Abort { id: 2 }).await;
    match raw.recv().await {
        ServerMessage::Error {
            id: Some(2), code, ..
        } => assert_eq!(code, ErrorCode::Cancelled),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        usage(&mut conn).await,
        (60_000, 1),
        "the kept partial counts"
    );

    // Four more files reach the file quota (5, the partial included).
    let data = vec![2u8; 200_000];
    for (id, name) in [(3, "/a"), (4, "/b"), (5, "/c"), (6, "/d")] {
        let reply = upload(&mut raw, id, name, &data).await;
        assert!(
            matches!(reply, ServerMessage::Ok { id: i, .. } if i == id),
            "{reply:?}"
        );
    }
    assert_eq!(usage(&mut conn).await, (860_000, 5));

    // A sixth file is refused, after its data arrived, and leaves nothing behind.
    match upload(&mut raw, 7, "/e", &data).await {
        ServerMessage::Error {
            id: Some(7), code, ..
        } => assert_eq!(code, ErrorCode::QuotaExceeded),
        other => panic!("{other:?}"),
    }
    assert_eq!(usage(&mut conn).await, (860_000, 5));
    assert!(!server.home("carol").join("e").exists());

    // The same name uploaded whole replaces the partial in the count.
    let whole = vec![3u8; 100_000];
    let reply = upload(&mut raw, 8, "/s", &whole).await;
    assert!(
        matches!(reply, ServerMessage::Ok { id: 8, .. }),
        "{reply:?}"
    );
    assert_eq!(usage(&mut conn).await, (900_000, 5));
    assert_eq!(
        std::fs::read(server.home("carol").join("s")).unwrap(),
        whole
    );
}
