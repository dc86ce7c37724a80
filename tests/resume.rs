//! Resume, cancel, server-side copy and digest, usage, and pipelined batches through the
//! library client.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ferry::client::ClientError;
use ferry::protocol::ErrorCode;
use tokio_util::sync::CancellationToken;

use ferry::server::Limits;

use crate::util::{TestServer, no_progress, random_file, sha256_hex, test_limits};

const MIB: usize = 1024 * 1024;

/// A progress callback that cancels `token` once `at` bytes have moved.
fn cancel_at(token: CancellationToken, at: u64) -> impl FnMut(u64) + Send {
    move |n| {
        if n >= at {
            token.cancel();
        }
    }
}

fn remote_code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Remote(w) => Some(w.code),
        _ => None,
    }
}

fn partials_in(home: &Path) -> Vec<u64> {
    let dir = home.join(".ferry-partials");
    std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().metadata().unwrap().len()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_64_mib_upload_resumes_with_far_fewer_bytes() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    let data = random_file(&src, 64 * MIB, 7);
    let mut conn = server.alice().await;
    let token = CancellationToken::new();
    conn.set_cancel(token.clone());
    let err = conn
        .put(
            &src,
            "/big.bin",
            false,
            &mut cancel_at(token, 24 * MIB as u64),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Cancelled), "{err:?}");
    assert!(!server.home("alice").join("big.bin").exists());
    let kept = partials_in(&server.home("alice"));
    assert_eq!(kept.len(), 1, "one partial kept");
    assert!(kept[0] >= 16 * MIB as u64, "kept {kept:?}");

    // The same connection goes on; the resume sends only the rest.
    conn.set_cancel(CancellationToken::new());
    assert_eq!(conn.partial("/big.bin").await.unwrap(), kept[0]);
    let sent = Arc::new(AtomicU64::new(0));
    let first_progress = Arc::clone(&sent);
    let mut progress = move |n: u64| {
        let _ = first_progress.compare_exchange(0, n.max(1), Ordering::Relaxed, Ordering::Relaxed);
    };
    let done = conn
        .put_resume(&src, "/big.bin", false, &mut progress)
        .await
        .unwrap();
    assert_eq!(done.resumed_from, kept[0]);
    let on_wire = done.size - done.resumed_from;
    assert!(
        on_wire <= 48 * MIB as u64,
        "sent {on_wire} bytes the second time"
    );
    assert_eq!(done.sha256, sha256_hex(&data));
    assert_eq!(
        std::fs::read(server.home("alice").join("big.bin")).unwrap(),
        data
    );
    assert!(
        partials_in(&server.home("alice")).is_empty(),
        "partial consumed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_resumes_after_the_client_vanished() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("v.bin");
    let data = random_file(&src, 8 * MIB, 8);
    let conn = server.alice().await;
    let (moved_tx, moved_rx) = tokio::sync::oneshot::channel::<()>();
    let src2 = src.clone();
    let task = tokio::spawn(async move {
        let mut conn = conn;
        let mut moved_tx = Some(moved_tx);
        let mut progress = move |n: u64| {
            if n >= 2 * MIB as u64
                && let Some(t) = moved_tx.take()
            {
                let _ = t.send(());
            }
        };
        let _ = conn.put(&src2, "/v.bin", false, &mut progress).await;
    });
    moved_rx.await.unwrap();
    task.abort(); // the connection is dropped mid-upload, as if the client died
    let _ = task.await;
    let home = server.home("alice");
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while partials_in(&home).is_empty() {
        assert!(Instant::now() < deadline, "the server kept no partial");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut conn = server.alice().await;
    let done = conn
        .put_resume(&src, "/v.bin", false, &mut no_progress())
        .await
        .unwrap();
    assert!(done.resumed_from > 0);
    assert_eq!(std::fs::read(home.join("v.bin")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_partials_are_swept_at_the_next_login_and_fresh_ones_kept() {
    let ttl = std::time::Duration::from_millis(1500);
    let server = TestServer::start_with(Limits {
        partial_ttl: ttl,
        ..test_limits()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("s.bin");
    let data = random_file(&src, 8 * MIB, 9);
    let home = server.home("alice");
    let keep_one = |remote: &'static str| {
        let src = src.clone();
        let server = &server;
        async move {
            let mut conn = server.alice().await;
            let token = CancellationToken::new();
            conn.set_cancel(token.clone());
            let err = conn
                .put(&src, remote, false, &mut cancel_at(token, 2 * MIB as u64))
                .await
                .unwrap_err();
            assert!(matches!(err, ClientError::Cancelled), "{err:?}");
            conn.close().await.unwrap();
        }
    };
    keep_one("/old.bin").await;
    assert_eq!(partials_in(&home).len(), 1);
    // A login within the time keeps it...
    server.alice().await.close().await.unwrap();
    assert_eq!(partials_in(&home).len(), 1, "a fresh partial was swept");
    tokio::time::sleep(ttl + std::time::Duration::from_millis(300)).await;
    // ...one after it (which keeps a fresh one of its own first) removes only the stale one.
    keep_one("/new.bin").await;
    let kept = partials_in(&home);
    assert_eq!(kept.len(), 1, "{kept:?}");
    let mut conn = server.alice().await;
    assert_eq!(
        conn.partial("/old.bin").await.unwrap(),
        0,
        "the stale partial is gone"
    );
    assert!(
        conn.partial("/new.bin").await.unwrap() > 0,
        "the fresh one stays"
    );
    // Resuming the swept upload sends it whole, and it still verifies.
    let done = conn
        .put_resume(&src, "/old.bin", false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(done.resumed_from, 0);
    assert_eq!(std::fs::read(home.join("old.bin")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_a_different_prefix_is_refused_and_nothing_appears() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.bin");
    random_file(&src, 4 * MIB, 9);
    let mut conn = server.alice().await;
    let token = CancellationToken::new();
    conn.set_cancel(token.clone());
    let _ = conn
        .put(&src, "/m.bin", false, &mut cancel_at(token, MIB as u64))
        .await
        .unwrap_err();
    conn.set_cancel(CancellationToken::new());
    // The local file changes before the resume: its first bytes no longer match.
    let changed = random_file(&src, 4 * MIB, 10);
    let err = conn
        .put_resume(&src, "/m.bin", false, &mut no_progress())
        .await
        .unwrap_err();
    assert_eq!(
        remote_code(&err),
        Some(ErrorCode::IntegrityMismatch),
        "{err:?}"
    );
    assert!(err.to_string().contains("resume refused"), "{err}");
    assert_eq!(err.exit_code(), ferry::client::EXIT_INTEGRITY);
    assert!(!server.home("alice").join("m.bin").exists());
    // A whole new upload still works and supersedes the partial.
    conn.put(&src, "/m.bin", false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(server.home("alice").join("m.bin")).unwrap(),
        changed
    );
    assert!(partials_in(&server.home("alice")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_download_resumes_and_verifies() {
    let server = TestServer::start().await;
    let data = random_file(&server.home_file("alice", "d.bin"), 32 * MIB, 11);
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("d.bin");
    let mut conn = server.alice().await;
    let token = CancellationToken::new();
    conn.set_cancel(token.clone());
    let err = conn
        .get("/d.bin", &dst, false, &mut cancel_at(token, 8 * MIB as u64))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Cancelled), "{err:?}");
    assert!(!dst.exists(), "nothing under the final name");
    let partial = dir.path().join(".d.bin.ferry-part");
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(
        kept >= 8 * MIB as u64 && kept < 32 * MIB as u64,
        "kept {kept}"
    );

    // The connection is still usable after the cancel.
    conn.set_cancel(CancellationToken::new());
    assert_eq!(conn.stat("/d.bin").await.unwrap().size, 32 * MIB as u64);
    let done = conn
        .get_resume("/d.bin", &dst, false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(done.resumed_from, kept);
    assert_eq!(done.sha256, sha256_hex(&data));
    assert_eq!(std::fs::read(&dst).unwrap(), data);
    assert!(!partial.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_resume_refuses_a_corrupt_local_prefix() {
    let server = TestServer::start().await;
    random_file(&server.home_file("alice", "c.bin"), 2 * MIB, 12);
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("c.bin");
    std::fs::write(dir.path().join(".c.bin.ferry-part"), vec![0u8; MIB]).unwrap();
    let mut conn = server.alice().await;
    let err = conn
        .get_resume("/c.bin", &dst, false, &mut no_progress())
        .await
        .unwrap_err();
    assert_eq!(
        remote_code(&err),
        Some(ErrorCode::IntegrityMismatch),
        "{err:?}"
    );
    assert!(!dst.exists());
    // The session goes on.
    conn.stat("/c.bin").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_copy_and_digest() {
    let server = TestServer::start().await;
    let data = random_file(&server.home_file("alice", "a.bin"), 3 * MIB + 5, 13);
    let mut conn = server.alice().await;
    let (size, sha) = conn.sha256("/a.bin").await.unwrap();
    assert_eq!(
        (size, sha.as_str()),
        (data.len() as u64, sha256_hex(&data).as_str())
    );
    let copied = conn.copy("/a.bin", "/b.bin", false).await.unwrap();
    assert_eq!(copied.sha256, sha);
    assert_eq!(
        std::fs::read(server.home("alice").join("b.bin")).unwrap(),
        data
    );
    let err = conn.copy("/a.bin", "/b.bin", false).await.unwrap_err();
    assert_eq!(remote_code(&err), Some(ErrorCode::AlreadyExists));
    conn.copy("/a.bin", "/b.bin", true).await.unwrap();
    let err = conn.copy("/missing", "/c.bin", false).await.unwrap_err();
    assert_eq!(remote_code(&err), Some(ErrorCode::NotFound));
    let err = conn.sha256("/").await.unwrap_err();
    assert_eq!(remote_code(&err), Some(ErrorCode::IsADirectory));
    let usage = conn.usage().await.unwrap();
    assert!(usage.disk_total_bytes.unwrap() > 0);
    assert!(usage.disk_free_bytes.is_some());

    let mut reader = server.connect("reader", "reader-pw").await;
    let err = reader.copy("/x", "/y", false).await.unwrap_err();
    assert_eq!(remote_code(&err), Some(ErrorCode::PermissionDenied));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_small_files_pipelined_both_ways() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up");
    std::fs::create_dir(&up).unwrap();
    let mut items = Vec::new();
    let mut originals = Vec::new();
    for i in 0..1000 {
        let p = up.join(format!("f{i:04}"));
        originals.push(random_file(&p, 4096, 100 + i));
        items.push((p, format!("/f{i:04}")));
    }
    // One item that cannot be read locally, in the middle: reported in order, others go on.
    items.insert(500, (up.join("missing"), "/missing".to_string()));
    let mut conn = server.alice().await;
    let started = Instant::now();
    let mut results = Vec::new();
    conn.put_many(&items, false, &mut no_progress(), &mut |i, r| {
        results.push((i, r))
    })
    .await
    .unwrap();
    let put_rate = 1000.0 / started.elapsed().as_secs_f64();
    assert_eq!(results.len(), 1001);
    for (n, (i, r)) in results.iter().enumerate() {
        assert_eq!(*i, n, "in order");
        if n == 500 {
            assert!(matches!(r, Err(ClientError::Local { .. })), "{r:?}");
        } else {
            assert!(r.is_ok(), "{n}: {r:?}");
        }
    }
    let down = dir.path().join("down");
    std::fs::create_dir(&down).unwrap();
    let gets: Vec<(String, std::path::PathBuf)> = (0..1000)
        .map(|i| (format!("/f{i:04}"), down.join(format!("f{i:04}"))))
        .collect();
    let started = Instant::now();
    let mut ok = 0;
    conn.get_many(&gets, false, &mut no_progress(), &mut |_, r| {
        r.unwrap();
        ok += 1;
    })
    .await
    .unwrap();
    let get_rate = 1000.0 / started.elapsed().as_secs_f64();
    assert_eq!(ok, 1000);
    for (i, data) in originals.iter().enumerate() {
        assert_eq!(&std::fs::read(down.join(format!("f{i:04}"))).unwrap(), data);
    }
    eprintln!(
        "1,000 x 4 KiB (debug build): put_many {put_rate:.0} files/s, get_many {get_rate:.0} files/s"
    );
    // Existing files are refused one by one, and the batch goes on.
    let mut refused = 0;
    conn.put_many(&items[..10], false, &mut no_progress(), &mut |_, r| {
        if let Err(e) = r
            && remote_code(&e) == Some(ErrorCode::AlreadyExists)
        {
            refused += 1;
        }
    })
    .await
    .unwrap();
    assert_eq!(refused, 10);
}

/// Regression (review of the move of `put` onto the core): a resume looks at its target as a
/// name (as a fresh put does, and as the server always did), not at what a symlink there leads
/// to. The core's look followed the link: a link to a directory answered `is_a_directory`
/// instead of `already_exists` (and refused an overwrite that replaces the link), and a
/// dangling link passed the look, so the partial was taken up, filled, and lost at the commit
/// (`already_exists` after all the data instead of before it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_a_resume_onto_a_symlink_is_judged_by_the_name_not_the_link_target() {
    use ferry::protocol::{ClientMessage, ServerMessage};
    let server = TestServer::start().await;
    let home = server.home("alice");
    let mut raw = server.raw().await;
    raw.login("alice", "alice-pw").await;
    let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    let mut id = 1;
    std::fs::create_dir(home.join("dir")).unwrap();
    for (name, link_to, overwrite, want) in [
        ("/l1", "dir", false, Some(ErrorCode::AlreadyExists)),
        ("/l2", "missing", false, Some(ErrorCode::AlreadyExists)),
        ("/l3", "dir", true, None),
    ] {
        id += 1;
        keep_half(&mut raw, id, name, &data[..500]).await;
        std::os::unix::fs::symlink(link_to, home.join(&name[1..])).unwrap();
        id += 1;
        raw.send(&ClientMessage::Put {
            id,
            path: name.into(),
            size: 1000,
            overwrite,
            offset: 500,
            prefix_sha256: Some(sha256_hex(&data[..500])),
        })
        .await;
        match want {
            Some(code) => {
                // Refused before its data, the partial left as it was.
                let reply = tokio::time::timeout(std::time::Duration::from_secs(5), raw.recv());
                match reply.await.expect("no refusal before the data") {
                    ServerMessage::Error {
                        id: Some(i),
                        code: c,
                        message,
                    } => {
                        assert_eq!(i, id);
                        assert_eq!(c, code, "{name} -> {link_to}: {message}");
                    }
                    other => panic!("{name}: {other:?}"),
                }
                raw.send(&ClientMessage::Abort { id }).await;
                assert_eq!(partials_in(&home).len(), 1, "{name}: the partial was lost");
                assert!(
                    std::fs::symlink_metadata(home.join(&name[1..]))
                        .unwrap()
                        .is_symlink()
                );
            }
            None => {
                raw.send_data(&data[500..]).await;
                raw.send(&ClientMessage::End {
                    id,
                    sha256: sha256_hex(&data),
                })
                .await;
                match raw.recv().await {
                    ServerMessage::Ok { id: i, .. } => assert_eq!(i, id),
                    other => panic!("{name}: {other:?}"),
                }
                assert_eq!(std::fs::read(home.join(&name[1..])).unwrap(), data);
            }
        }
        // The next case counts its own partial only.
        let _ = std::fs::remove_dir_all(home.join(".ferry-partials"));
    }
}

/// Sends the first bytes of a 1000-byte upload to `name` and aborts it: they are kept.
async fn keep_half(raw: &mut crate::util::Raw, id: u64, name: &str, half: &[u8]) {
    use ferry::protocol::{ClientMessage, ServerMessage};
    raw.send(&ClientMessage::Put {
        id,
        path: name.into(),
        size: 1000,
        overwrite: false,
        offset: 0,
        prefix_sha256: None,
    })
    .await;
    raw.send_data(half).await;
    raw.send(&ClientMessage::Abort { id }).await;
    assert!(matches!(
        raw.recv().await,
        ServerMessage::Error {
            code: ErrorCode::Cancelled,
            ..
        }
    ));
}

/// Descriptors of this process (the server runs in it) open on `path`.
fn open_on(path: &Path) -> usize {
    let path = std::fs::canonicalize(path).unwrap();
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd: this test needs Linux's /proc")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| *target == path)
        .count()
}

/// A resumed `get` hashes the server's first `offset` bytes before it sends any; a client
/// that cancels it, or goes away, during that check must stop that work too. Otherwise each
/// `get` with a large offset and a wrong prefix, cancelled at once, leaves a thread of the
/// blocking pool reading and hashing up to the whole file for nobody: a few requests a second
/// keep the disk and every core busy long after their sessions ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_a_cancelled_or_abandoned_resume_stops_hashing_its_prefix() {
    use ferry::protocol::{ClientMessage, ServerMessage};
    let server = TestServer::start().await;
    // Sparse: 16 GiB that take no disk, but a long while to read and hash (over 10 s here).
    let big = server.home_file("alice", "big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(16 << 30)
        .unwrap();
    let get = |id| ClientMessage::Get {
        id,
        path: "/big.bin".into(),
        offset: (16 << 30) - 1,
        prefix_sha256: Some("00".repeat(32)),
    };

    // Cancelled during the prefix check: the reply comes at once...
    let mut raw = server.raw().await;
    raw.login("alice", "alice-pw").await;
    raw.send(&get(2)).await;
    assert!(
        matches!(raw.recv().await, ServerMessage::File { id: 2, .. }),
        "the file message comes before the prefix check"
    );
    raw.send(&ClientMessage::Cancel { id: 2 }).await;
    match raw.recv().await {
        ServerMessage::Error {
            id: Some(2), code, ..
        } => assert_eq!(code, ErrorCode::Cancelled),
        other => panic!("{other:?}"),
    }
    // ...and the reader lets go of the file soon after.
    let stopped = async {
        while open_on(&big) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(3), stopped)
        .await
        .expect("the cancelled resume still reads the file 3 s after its reply");

    // A client that vanishes during the check: the same.
    let mut raw = server.raw().await;
    raw.login("alice", "alice-pw").await;
    raw.send(&get(2)).await;
    assert!(matches!(
        raw.recv().await,
        ServerMessage::File { id: 2, .. }
    ));
    drop(raw);
    let stopped = async {
        while open_on(&big) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(3), stopped)
        .await
        .expect("the abandoned resume still reads the file 3 s after its client left");

    // The server still serves.
    let mut conn = server.alice().await;
    assert_eq!(conn.stat("/big.bin").await.unwrap().size, 16 << 30);
}

/// The final reply of request `id`, past its `progress` messages.
async fn final_reply(raw: &mut crate::util::Raw, id: u64) -> ferry::protocol::ServerMessage {
    use ferry::protocol::ServerMessage;
    loop {
        match raw.recv().await {
            ServerMessage::Progress { id: p, .. } if p == id => continue,
            other => return other,
        }
    }
}

/// Waits (3 s at most) until the server holds no descriptor of `path`.
async fn lets_go_of(path: &Path, what: &str) {
    let stopped = async {
        while open_on(path) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(3), stopped)
        .await
        .unwrap_or_else(|_| panic!("{what}: the file is still open 3 s after the reply"));
}

/// A `sha256` or `copy` cancelled while it reads ends with its one `cancelled` reply, byte
/// for byte as before the core, and its reader lets go of the file: no work goes on for a
/// request that is over. A cancelled copy leaves nothing, not even its temp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_sha256_and_copy_stop_their_work_and_leave_nothing() {
    use ferry::protocol::{ClientMessage, ServerMessage};
    let server = TestServer::start().await;
    // Sparse and without a stored digest: hashing it takes a long while.
    let big = server.home_file("alice", "big.bin");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(16 << 30)
        .unwrap();
    let src = server.home_file("alice", "src.bin");
    std::fs::File::create(&src)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let mut raw = server.raw().await;
    raw.login("alice", "alice-pw").await;

    raw.send(&ClientMessage::Sha256 {
        id: 2,
        path: "/big.bin".into(),
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    raw.send(&ClientMessage::Cancel { id: 2 }).await;
    let reply = final_reply(&mut raw, 2).await;
    assert!(
        matches!(&reply, ServerMessage::Error { id: Some(2), code: ErrorCode::Cancelled, message }
            if message == "sha256 cancelled"),
        "{reply:?}"
    );
    lets_go_of(&big, "a cancelled sha256").await;

    raw.send(&ClientMessage::Copy {
        id: 3,
        from: "/src.bin".into(),
        to: "/dst.bin".into(),
        overwrite: false,
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    raw.send(&ClientMessage::Cancel { id: 3 }).await;
    let reply = final_reply(&mut raw, 3).await;
    assert!(
        matches!(&reply, ServerMessage::Error { id: Some(3), code: ErrorCode::Cancelled, message }
            if message == "copy cancelled"),
        "{reply:?}"
    );
    lets_go_of(&src, "a cancelled copy").await;
    let home = server.home("alice");
    let mut left: Vec<String> = std::fs::read_dir(&home)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["big.bin", "src.bin"],
        "a cancelled copy left something"
    );

    // The session goes on.
    raw.send(&ClientMessage::Stat {
        id: 4,
        path: "/src.bin".into(),
    })
    .await;
    assert!(matches!(raw.recv().await, ServerMessage::Ok { id: 4, .. }));
}
