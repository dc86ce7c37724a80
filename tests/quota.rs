//! Quotas and a full disk: limits from the users file, enforced up front and as data arrives,
//! with uploads in flight and kept partials counted, and usage that survives a restart.

use ferry::client::ClientError;
use ferry::protocol::{ClientMessage, ErrorCode, ServerMessage};

use crate::util::{Raw, TestServer, no_progress, quota_walk, random_file, sha256_hex};

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
    until_an_upload_has_begun(&home, "first upload").await;
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

async fn used(conn: &mut ferry::client::Connection) -> (u64, u64) {
    let u = conn.usage().await.unwrap();
    (u.used_bytes.unwrap(), u.used_files.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_file_onto_itself_frees_no_quota() {
    let server = TestServer::start().await;
    // Two names of one file, made by the admin before the login (each name counts).
    let home = server.home("carol");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("x"), vec![1u8; 1000]).unwrap();
    std::fs::hard_link(home.join("x"), home.join("y")).unwrap();
    let mut conn = carol(&server).await;
    assert_eq!(used(&mut conn).await, (2000, 2));
    // Onto the other name of the same file: rename(2) leaves both in place.
    conn.rename("/x", "/y", true).await.unwrap();
    assert!(home.join("x").exists() && home.join("y").exists());
    assert_eq!(used(&mut conn).await, (2000, 2));
    assert_eq!(quota_walk(&home), (2000, 2));

    // The exploit: upload, `mv -f f f`, upload again... 1 MiB must stay 1 MiB.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    random_file(&f, 400_000, 3);
    let mut stored = 0;
    for name in ["/p", "/q", "/r"] {
        match conn.put(&f, name, false, &mut no_progress()).await {
            Ok(_) => stored += 1,
            Err(e) => assert_eq!(code(&e), Some(ErrorCode::QuotaExceeded), "{e}"),
        }
        conn.rename(name, name, true).await.ok();
        // A directory onto itself, too.
        conn.mkdir("/d").await.ok();
        conn.rename("/d", "/d", true).await.unwrap();
    }
    assert_eq!(stored, 2, "a third 400,000-byte file does not fit in 1 MiB");
    assert_eq!(used(&mut conn).await, quota_walk(&home));
    // A copy onto itself replaces the file by itself: no change either.
    conn.copy("/p", "/p", true).await.unwrap();
    assert_eq!(used(&mut conn).await, quota_walk(&home));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_count_toward_the_file_quota() {
    let server = TestServer::start().await;
    let mut conn = carol(&server).await;
    // carol may have 5 files: directories are files too.
    for d in ["/d1", "/d2", "/d3", "/d4", "/d1/e"] {
        conn.mkdir(d).await.unwrap();
    }
    assert_eq!(used(&mut conn).await, (0, 5));
    let err = conn.mkdir("/d5").await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::QuotaExceeded), "{err}");
    assert!(err.to_string().contains("file quota"), "{err}");
    assert!(!server.home("carol").join("d5").exists());
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny");
    std::fs::write(&tiny, b"x").unwrap();
    let err = conn
        .put(&tiny, "/t", false, &mut no_progress())
        .await
        .unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::QuotaExceeded), "{err}");
    // rmdir gives the file back.
    conn.rmdir("/d4").await.unwrap();
    conn.put(&tiny, "/t", false, &mut no_progress())
        .await
        .unwrap();
    // A directory renamed over an empty one replaces it: one file fewer.
    conn.rename("/d1/e", "/d3", true).await.unwrap();
    assert_eq!(used(&mut conn).await, (1, 4));
    assert_eq!(quota_walk(&server.home("carol")), (1, 4));
    drop(conn);
    // The login's count agrees.
    let server = server.restart(crate::util::test_limits()).await;
    let mut conn = carol(&server).await;
    assert_eq!(used(&mut conn).await, (1, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_that_would_nest_deeper_than_the_path_limit_is_refused() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    // /a holds a chain of 200 directories; /b a chain of 57.
    let chain = |name: &str, n: usize| vec![name; n].join("/");
    std::fs::create_dir_all(home.join(chain("a", 200))).unwrap();
    std::fs::create_dir_all(home.join(chain("b", 57))).unwrap();
    let mut conn = server.alice().await;
    // Under /b/.../b (57 levels) the chain would reach 57 + 200 = 257 levels.
    let deep = format!("/{}/a", chain("b", 57));
    let err = conn.rename("/a", &deep, false).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::InvalidPath), "{err}");
    assert!(err.to_string().contains("too deep"), "{err}");
    assert!(home.join("a").is_dir());
    // 56 levels down it fits exactly (256).
    let fits = format!("/{}/a", chain("b", 56));
    conn.rename("/a", &fits, false).await.unwrap();
    let deepest = format!("/{}/{}", chain("b", 56), chain("a", 200));
    assert_eq!(conn.stat(&deepest).await.unwrap().name, "a");
    // A directory into itself is refused by the kernel; onto itself changes nothing.
    conn.mkdir("/c").await.unwrap();
    conn.mkdir("/c/c").await.unwrap();
    let err = conn.rename("/c", "/c/c/x", false).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::BadRequest), "{err}");
    conn.rename("/b", "/b", true).await.unwrap();
    // /b now reaches 256 levels: even two levels down is too deep.
    let err = conn.rename("/b", "/c/c/x", false).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::InvalidPath), "{err}");
}

/// A `ferry serve` child started through a wrapper command (prlimit, setpriv); killed when
/// dropped.
struct Wrapped {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Wrapped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A world for `ferry serve` in `dir`: certificates, `data/`, and a users file with alice
/// (no limits) and quinn (limits, many files allowed).
fn world(dir: &std::path::Path) -> std::sync::Arc<rustls::ClientConfig> {
    ferry::certs::generate(&dir.join("certs"), &[], false).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut text = String::new();
    for (name, limits) in [
        ("alice", ""),
        ("quinn", "quota_bytes = \"1 GiB\"\nquota_files = 100000\n"),
    ] {
        let hash = crate::util::cheap_hash(&format!("{name}-pw"));
        text.push_str(&format!(
            "[users.{name}]\npassword = \"{hash}\"\n{limits}\n"
        ));
    }
    std::fs::write(dir.join("users.toml"), text).unwrap();
    let certs = ferry::certs::CertPaths::in_dir(&dir.join("certs"));
    ferry::tls::client_config(Some(&certs.ca_cert), ferry::protocol::ALPN).unwrap()
}

/// Runs `WRAPPER... ferry serve --listen 127.0.0.1:0` in `dir` and waits for its address.
fn serve_wrapped(dir: &std::path::Path, wrapper: &[&str]) -> Wrapped {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(env!("CARGO_BIN_EXE_ferry"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_ferry")),
    };
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env_remove("FERRY_LOG")
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start ferry serve");
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let pipe = child.stderr.take().unwrap();
    let buf = std::sync::Arc::clone(&stderr);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            buf.lock().unwrap().push_str(&line);
            buf.lock().unwrap().push('\n');
        }
    });
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(a) = line.strip_prefix("ferry listening on ") {
                    break a.trim().parse().unwrap();
                }
            }
            _ => panic!(
                "ferry serve under {wrapper:?} did not start: {}",
                stderr.lock().unwrap()
            ),
        }
    };
    // Keep reading stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Wrapped {
        child,
        addr,
        stderr,
    }
}

async fn login(
    w: &Wrapped,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    user: &str,
) -> Result<ferry::client::Connection, ClientError> {
    let mut c = ferry::client::Connection::connect("127.0.0.1", w.addr.port(), tls.clone())
        .await
        .unwrap();
    c.login(user, &ferry::users::Password::new(format!("{user}-pw")))
        .await?;
    Ok(c)
}

/// The real binary under a low open-files limit (the in-process server would share the test
/// runner's): a home of thousands of sibling directories and a 200-deep chain, each holding a
/// file. The login's walk once held a descriptor for every directory still to visit, so it
/// ran out (EMFILE), skipped what it could not open (too low a count, more than the quota
/// accepted) and made other users' requests fail meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_walk_of_thousands_of_directories_fits_a_low_open_files_limit() {
    let dir = tempfile::tempdir().unwrap();
    let tls = world(dir.path());
    let home = dir.path().join("data/quinn");
    for i in 0..3000 {
        let d = home.join(format!("d{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("f"), b"0123456789").unwrap();
    }
    let mut deep = home.clone();
    for _ in 0..200 {
        deep.push("n");
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("f"), b"bottom").unwrap();
    let truth = quota_walk(&home);
    assert_eq!(truth, (30_006, 6201));

    let server = serve_wrapped(dir.path(), &["prlimit", "--nofile=256:256", "--"]);
    // The server says what limit it runs with (stderr may trail stdout a little).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let log = loop {
        let log = server.stderr.lock().unwrap().clone();
        if log.contains("open files limit") || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(log.contains("open files limit"), "{log}");
    assert!(log.contains("soft=256"), "{log}");

    // alice works all along, while quinn logs in twice at once (one walk for both).
    let mut alice = login(&server, &tls, "alice").await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let working = {
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                alice.mkdir(&format!("/w{n}")).await.unwrap();
                alice.stat(&format!("/w{n}")).await.unwrap();
                n += 1;
            }
            n
        })
    };
    let (q1, q2) = tokio::join!(login(&server, &tls, "quinn"), login(&server, &tls, "quinn"));
    let (mut q1, mut q2) = (q1.unwrap(), q2.unwrap());
    assert_eq!(used(&mut q1).await, truth);
    assert_eq!(used(&mut q2).await, truth);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = working.await.unwrap();
    assert!(n > 0);
    // And new connections are still accepted.
    login(&server, &tls, "alice").await.unwrap();
}

/// A directory the walk cannot open fails the login with a reason, never an undercount. The
/// server runs without capabilities (as root it would read a mode-000 directory anyway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_the_login_walk_cannot_open_fails_the_login_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let tls = world(dir.path());
    let home = dir.path().join("data/quinn");
    let locked = home.join("sub/locked");
    std::fs::create_dir_all(&locked).unwrap();
    std::fs::write(locked.join("big"), vec![0u8; 100_000]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let wrapper: &[&str] = if root {
        &["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]
    } else {
        &[]
    };
    let server = serve_wrapped(dir.path(), wrapper);
    let err = match login(&server, &tls, "quinn").await {
        Ok(_) => panic!("quinn logged in with a home that cannot be counted"),
        Err(e) => e,
    };
    assert_eq!(code(&err), Some(ErrorCode::Internal), "{err}");
    assert!(err.to_string().contains("cannot count the usage"), "{err}");
    // Others are not affected.
    let mut alice = login(&server, &tls, "alice").await.unwrap();
    alice.mkdir("/fine").await.unwrap();
    drop(server);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// `ferry serve` raises its soft open-files limit to the hard one and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_raises_its_soft_open_files_limit_to_the_hard_one() {
    let dir = tempfile::tempdir().unwrap();
    let tls = world(dir.path());
    let server = serve_wrapped(dir.path(), &["prlimit", "--nofile=200:300", "--"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let log = loop {
        let log = server.stderr.lock().unwrap().clone();
        if log.contains("open files limit") || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(log.contains("soft=300 hard=300"), "{log}");
    // /proc shows the limit the process really has.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(
        line.split_whitespace().filter(|w| *w == "300").count() == 2,
        "{line}"
    );
    login(&server, &tls, "alice").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwrite_whose_target_another_session_removes_cannot_overshoot_the_quota() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut conn = carol(&server).await;
    let f = dir.path().join("f");
    random_file(&f, 600_000, 4);
    conn.put(&f, "/a", false, &mut no_progress()).await.unwrap();
    // An overwrite of /a is declared: it reserves no room, as /a already takes as much.
    let mut first = server.raw().await;
    first.login("carol", "carol-pw").await;
    let data = vec![9u8; 600_000];
    first
        .send(&ClientMessage::Put {
            id: 2,
            path: "/a".into(),
            size: 600_000,
            overwrite: true,
            offset: 0,
            prefix_sha256: None,
        })
        .await;
    first.send_data(&data[..1000]).await;
    let home = server.home("carol");
    until_an_upload_has_begun(&home, "overwrite").await;
    // Meanwhile another session of carol removes /a and fills the room that freed.
    conn.remove("/a").await.unwrap();
    conn.put(&f, "/b", false, &mut no_progress()).await.unwrap();
    // The overwrite now replaces nothing: it needs 600,000 more bytes, which do not fit.
    first.send_data(&data[1000..]).await;
    first
        .send(&ClientMessage::End {
            id: 2,
            sha256: sha256_hex(&data),
        })
        .await;
    match first.recv().await {
        ServerMessage::Error {
            id: Some(2), code, ..
        } => assert_eq!(code, ErrorCode::QuotaExceeded),
        other => panic!("the overwrite was stored over the quota: {other:?}"),
    }
    assert!(!home.join("a").exists());
    assert_eq!(used(&mut conn).await, quota_walk(&home));
    assert!(quota_walk(&home).0 <= 1 << 20, "{:?}", quota_walk(&home));
}

/// Waits (at most 10 s) until the server has taken an upload in: its temp file is in `home`.
async fn until_an_upload_has_begun(home: &std::path::Path, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !crate::util::names_in(home)
        .iter()
        .any(|n| n.starts_with(".ferry-tmp."))
    {
        assert!(std::time::Instant::now() < deadline, "{what} never started");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Regression (review of the move of `put` onto the core): a streamed put (over 256 KiB) into
/// a directory that does not exist answered `not_found` before its limits, where the server
/// always checked the limits first (as it still does for a small put): the refusal and its
/// order are part of the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_a_streamed_put_checks_its_limits_before_a_missing_directory() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    raw.login("carol", "carol-pw").await;
    let put = |id, size| ClientMessage::Put {
        id,
        path: "/nowhere/f".into(),
        size,
        overwrite: false,
        offset: 0,
        prefix_sha256: None,
    };
    // Over carol's largest file (600,000 bytes): refused as such, before any data.
    raw.send(&put(2, 600_001)).await;
    match raw.recv().await {
        ServerMessage::Error {
            id: Some(2),
            code,
            message,
        } => {
            assert_eq!(code, ErrorCode::TooLarge, "{message}");
            assert_eq!(
                message,
                "a file of 600001 bytes exceeds your maximum file size of 600000 bytes"
            );
        }
        other => panic!("{other:?}"),
    }
    raw.send(&ClientMessage::Abort { id: 2 }).await;
    // Over the byte quota: with 600,000 bytes stored, 500,000 more do not fit in 1 MiB.
    let mut conn = carol(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    random_file(&f, 600_000, 5);
    conn.put(&f, "/big", false, &mut no_progress())
        .await
        .unwrap();
    raw.send(&put(3, 500_000)).await;
    match raw.recv().await {
        ServerMessage::Error {
            id: Some(3),
            code,
            message,
        } => {
            assert_eq!(code, ErrorCode::QuotaExceeded, "{message}");
            assert_eq!(
                message,
                "a file of 500000 bytes would exceed your byte quota"
            );
        }
        other => panic!("{other:?}"),
    }
    raw.send(&ClientMessage::Abort { id: 3 }).await;
    // Nothing under the limits: the missing directory is the answer.
    raw.send(&put(4, 300_000)).await;
    match raw.recv().await {
        ServerMessage::Error {
            id: Some(4), code, ..
        } => assert_eq!(code, ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
    raw.send(&ClientMessage::Abort { id: 4 }).await;
    assert_eq!(used(&mut conn).await, quota_walk(&server.home("carol")));
}

/// Regression (review): a put that overwrites a file reserves only what it adds over that
/// file; interrupted, what it received was kept as a partial beside the file it was to
/// replace, counted but never checked against the quota. Overwriting a 600,000-byte file and
/// aborting at the end stored 1,200,000 bytes under a 1 MiB quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_an_interrupted_overwrite_cannot_keep_a_partial_over_the_quota() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut conn = carol(&server).await;
    let f = dir.path().join("f");
    random_file(&f, 600_000, 6);
    conn.put(&f, "/a", false, &mut no_progress()).await.unwrap();
    let mut raw = server.raw().await;
    raw.login("carol", "carol-pw").await;
    // Streamed (over 256 KiB) and small (the small path keeps through the same core call).
    for (id, size) in [(2u64, 600_000usize), (3, 200_000)] {
        raw.send(&ClientMessage::Put {
            id,
            path: "/a".into(),
            size: size as u64,
            overwrite: true,
            offset: 0,
            prefix_sha256: None,
        })
        .await;
        raw.send_data(&vec![8u8; size - 1]).await;
        raw.send(&ClientMessage::Abort { id }).await;
        match raw.recv().await {
            ServerMessage::Error {
                id: Some(i), code, ..
            } => {
                assert_eq!(i, id);
                assert_eq!(code, ErrorCode::Cancelled);
            }
            other => panic!("{other:?}"),
        }
        let home = server.home("carol");
        let walk = quota_walk(&home);
        assert_eq!(used(&mut conn).await, walk);
        assert!(
            walk.0 <= 1 << 20,
            "size {size}: {} bytes stored under a quota of {}",
            walk.0,
            1 << 20
        );
    }
}

/// Regression (review of the move of `put` onto the core): a resume whose prefix does not
/// match puts the partial it took up back under its key, replacing a partial that another
/// session of the user kept there meanwhile (while the prefix was being hashed). What that
/// newer partial took was never taken off the count: usage stayed above a walk of the home.
/// The old handler (`rekeep`) took it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_a_refused_resume_that_replaces_a_partial_kept_meanwhile_counts_it_gone() {
    let server = TestServer::start().await;
    // dora has limits (so a usage account), with room for a large partial.
    let hash = crate::util::cheap_hash("dora-pw");
    let mut text = std::fs::read_to_string(&server.users_file).unwrap();
    text.push_str(&format!(
        "\n[users.dora]\npassword = \"{hash}\"\nquota_files = 1000\n"
    ));
    std::fs::write(&server.users_file, text).unwrap();
    server
        .server
        .replace_users(ferry::users::UserDb::load(&server.users_file).unwrap());
    // A kept partial of /f, as an interrupted upload leaves it: large (sparse, so it costs no
    // disk) so that hashing its prefix takes long enough for another session to act.
    const KEPT: u64 = 512 << 20;
    let key = ferry::service::partial_key("dora", &ferry::jail::RemotePath::parse("/f").unwrap());
    let partials = server.home("dora").join(".ferry-partials");
    std::fs::create_dir_all(&partials).unwrap();
    let partial = partials.join(key.as_str());
    std::fs::File::create(&partial)
        .unwrap()
        .set_len(KEPT)
        .unwrap();
    let home = server.home("dora");

    let mut a = server.raw().await;
    a.login("dora", "dora-pw").await;
    let mut b = server.raw().await;
    b.login("dora", "dora-pw").await;
    // a resumes /f at its end with a prefix digest that cannot match.
    a.send(&ClientMessage::Put {
        id: 2,
        path: "/f".into(),
        size: KEPT,
        overwrite: true,
        offset: KEPT,
        prefix_sha256: Some("0".repeat(64)),
    })
    .await;
    a.send(&ClientMessage::End {
        id: 2,
        sha256: "0".repeat(64),
    })
    .await;
    // Once the server has taken the partial up (it left the partials directory), b starts
    // /f afresh and is interrupted: b's 5 bytes are kept as the partial of /f.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while partial.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the resume never took the partial up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    b.send(&ClientMessage::Put {
        id: 2,
        path: "/f".into(),
        size: 10,
        overwrite: true,
        offset: 0,
        prefix_sha256: None,
    })
    .await;
    b.send_data(b"12345").await;
    b.send(&ClientMessage::Abort { id: 2 }).await;
    match b.recv().await {
        ServerMessage::Error {
            id: Some(2),
            code: ErrorCode::Cancelled,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let kept = std::fs::metadata(&partial).map(|m| m.len());
    assert!(
        matches!(kept, Ok(5)),
        "this test could not set its race up: a's resume ended before b's partial was kept \
         (the partial holds {kept:?} bytes)"
    );
    // a's resume is refused; its partial goes back under the key, replacing b's.
    match a.recv().await {
        ServerMessage::Error {
            id: Some(2), code, ..
        } => assert_eq!(code, ErrorCode::IntegrityMismatch),
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), KEPT);
    let id = 3;
    b.send(&ClientMessage::Usage { id }).await;
    let usage = match b.recv().await {
        ServerMessage::Ok { usage: Some(u), .. } => (u.used_bytes.unwrap(), u.used_files.unwrap()),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        usage,
        quota_walk(&home),
        "usage differs from a walk of the home"
    );
}

/// Regression (review of the move of `put` onto the core), in the core itself (ferry/1 never
/// asks for it: a put at offset 0 is a fresh one): a resume at offset 0 takes the partial up as
/// a file already counted, then counted the upload as a new file as well, when it landed or
/// was kept again. Usage then held one file more than a walk of the home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_a_core_resume_at_offset_zero_counts_its_file_once() {
    use std::sync::Arc;

    use bytes::Bytes;
    use ferry::domain::Quota;
    use ferry::service::quota::Account;
    use ferry::service::{Home, Put, PutRequest};
    use ferry::storage::local::LocalStorage;
    use ferry::storage::{Durability, RemotePath};
    use sha2::Digest;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("home");
    let account = Arc::new(Account::default());
    let storage = LocalStorage::open(&root, true)
        .unwrap()
        .gated(Arc::clone(&account) as Arc<dyn ferry::storage::ChangeGate>);
    let limits = Quota {
        files: Some(100),
        ..Quota::default()
    };
    let home = Home::new("u", Arc::new(storage), Some(account), limits);
    let path = RemotePath::parse("/f").unwrap();
    let used = async || {
        let u = home.usage().await.unwrap();
        (u.used_bytes.unwrap(), u.used_files.unwrap())
    };
    let fresh = PutRequest {
        size: 10,
        replace: false,
        resume: None,
    };
    // A partial of 5 bytes.
    let mut upload = home.begin_upload(&path, fresh).await.unwrap();
    upload.write(Bytes::from_static(b"01234")).await.unwrap();
    assert!(upload.keep_partial().await);
    assert_eq!(used().await, quota_walk(&root));
    let empty: [u8; 32] = sha2::Sha256::digest(b"").into();
    for keep in [true, false] {
        let resumed = PutRequest {
            resume: Some((0, empty)),
            ..fresh
        };
        let mut upload = home.begin_upload(&path, resumed).await.unwrap();
        upload.write(Bytes::from_static(b"abcde")).await.unwrap();
        if keep {
            // Kept again: still one partial.
            assert!(upload.keep_partial().await);
        } else {
            upload.write(Bytes::from_static(b"fghij")).await.unwrap();
            let sha256: [u8; 32] = sha2::Sha256::digest(b"abcdefghij").into();
            let put = upload.finish(Some(sha256), Durability::Now).await.unwrap();
            assert!(matches!(put, Put::Committed { .. }), "{put:?}");
        }
        assert_eq!(used().await, quota_walk(&root), "kept again: {keep}");
    }
}

/// Review of the move of `put` onto the core: uploads on either side of the size limits where
/// the server changes how it writes (256 KiB: in memory or streamed; 1 MiB: group commit or an
/// fsync of its own; 4 MiB: around the page cache), interrupted and kept, then resumed and
/// committed, are counted as a walk of the home counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_at_the_write_path_limits_are_counted_when_kept_resumed_and_committed() {
    let server = TestServer::start().await;
    let hash = crate::util::cheap_hash("dora-pw");
    let mut text = std::fs::read_to_string(&server.users_file).unwrap();
    text.push_str(&format!(
        "\n[users.dora]\npassword = \"{hash}\"\nquota_files = 1000\n"
    ));
    std::fs::write(&server.users_file, text).unwrap();
    server
        .server
        .replace_users(ferry::users::UserDb::load(&server.users_file).unwrap());
    let home = server.home("dora");
    let mut raw = server.raw().await;
    raw.login("dora", "dora-pw").await;
    let mut id = 1;
    let usage = async |raw: &mut Raw, id: u64| {
        raw.send(&ClientMessage::Usage { id }).await;
        match raw.recv().await {
            ServerMessage::Ok { usage: Some(u), .. } => {
                (u.used_bytes.unwrap(), u.used_files.unwrap())
            }
            other => panic!("{other:?}"),
        }
    };
    const K: usize = 1024;
    for size in [
        256 * K - 1,
        256 * K,
        256 * K + 1,
        1024 * K - 1,
        1024 * K,
        1024 * K + 1,
        4096 * K - 1,
        4096 * K,
        4096 * K + 1,
    ] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        let name = format!("/f{size}");
        for keep_at in [size - 1, size / 2] {
            id += 1;
            raw.send(&ClientMessage::Put {
                id,
                path: name.clone(),
                size: size as u64,
                overwrite: true,
                offset: 0,
                prefix_sha256: None,
            })
            .await;
            send_chunks(&mut raw, &data[..keep_at]).await;
            raw.send(&ClientMessage::Abort { id }).await;
            assert!(matches!(
                raw.recv().await,
                ServerMessage::Error {
                    code: ErrorCode::Cancelled,
                    ..
                }
            ));
            id += 1;
            assert_eq!(
                usage(&mut raw, id).await,
                quota_walk(&home),
                "{size} kept at {keep_at}"
            );
        }
        // Resumed from the first bytes kept, to the end.
        let offset = size / 2;
        id += 1;
        raw.send(&ClientMessage::Put {
            id,
            path: name.clone(),
            size: size as u64,
            overwrite: true,
            offset: offset as u64,
            prefix_sha256: Some(sha256_hex(&data[..offset])),
        })
        .await;
        send_chunks(&mut raw, &data[offset..]).await;
        raw.send(&ClientMessage::End {
            id,
            sha256: sha256_hex(&data),
        })
        .await;
        match raw.recv().await {
            ServerMessage::Ok { id: i, .. } => assert_eq!(i, id),
            other => panic!("{size}: {other:?}"),
        }
        assert_eq!(std::fs::read(home.join(&name[1..])).unwrap(), data);
        id += 1;
        assert_eq!(
            usage(&mut raw, id).await,
            quota_walk(&home),
            "{size} resumed"
        );
    }
}

/// Sends `data` as data frames of at most the protocol's chunk length.
async fn send_chunks(raw: &mut Raw, data: &[u8]) {
    for chunk in data.chunks(ferry::protocol::DATA_CHUNK_LEN) {
        raw.send_data(chunk).await;
    }
}

/// docs/PROTOCOL.md §5.11: a copy checks its source, then its target (parent problems
/// included: `not_found`, `not_a_directory`), and only then the user's limits, as 84e211a
/// did. A copy whose target cannot be made is refused as such, not as over the limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_a_copy_to_a_target_that_cannot_be_made_says_so_before_the_limits() {
    let server = TestServer::start().await;
    // Placed by hand: larger than carol's maximum file size (600,000), and together over her
    // byte quota (1 MiB).
    let home = server.home("carol");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("big"), vec![1u8; 700_000]).unwrap();
    std::fs::write(home.join("mid"), vec![2u8; 400_000]).unwrap();
    std::fs::write(home.join("plain"), b"not a directory").unwrap();
    let mut conn = carol(&server).await;
    for (from, to, want) in [
        ("/big", "/nowhere/x", ErrorCode::NotFound),
        ("/big", "/plain/x", ErrorCode::NotADirectory),
        ("/mid", "/nowhere/x", ErrorCode::NotFound),
        ("/mid", "/plain/x", ErrorCode::NotADirectory),
    ] {
        let err = conn.copy(from, to, false).await.unwrap_err();
        assert_eq!(code(&err), Some(want), "copy {from} {to}: {err}");
    }
    // With a target that can be made, the limits answer.
    let err = conn.copy("/big", "/x", false).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::TooLarge), "{err}");
    let err = conn.copy("/mid", "/x", false).await.unwrap_err();
    assert_eq!(code(&err), Some(ErrorCode::QuotaExceeded), "{err}");
}

/// Copies onto a hard link of the source (planted by hand), onto the source itself, and from
/// the link onto the source: every name counts, so each replaces what it adds, and the
/// counters agree with a fresh walk after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_onto_a_hard_link_of_the_source_keep_the_counts_true() {
    let server = TestServer::start().await;
    let home = server.home("carol");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("a"), vec![3u8; 100_000]).unwrap();
    std::fs::hard_link(home.join("a"), home.join("b")).unwrap();
    let mut conn = carol(&server).await;
    for (from, to) in [("/a", "/b"), ("/a", "/a"), ("/b", "/a"), ("/a", "/c")] {
        conn.copy(from, to, true).await.unwrap();
        let usage = conn.usage().await.unwrap();
        let (bytes, files) = quota_walk(&home);
        assert_eq!(
            (usage.used_bytes, usage.used_files),
            (Some(bytes), Some(files)),
            "after copy {from} {to}"
        );
    }
    assert_eq!(quota_walk(&home), (300_000, 3));
}
