//! Security: authentication and confinement, attacked over real TLS with real files.
//!
//! Authentication: failures look the same whatever was wrong, attempts are capped, oversized
//! input is refused before any hashing, read-only users change nothing, and the TLS layer
//! insists on the `ferry/1` ALPN and a trusted certificate.
//!
//! Confinement: hostile path strings and symlinks planted in a home (before the session or
//! between requests) never read, create or change anything outside that home. Every attack is
//! made twice, through the library client (which sends paths as given) and through raw frames,
//! and after each one the outside world, bob's home and alice's home are compared with their
//! snapshots. Error messages are checked for the server's paths and OS error text.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::client::{ClientError, Connection};
use ferry::protocol::{
    ClientMessage, Entry, EntryKind, ErrorCode, Frame, ServerMessage, WireError,
    decode_server_message,
};
use ferry::users::{self, Password, UserDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::{Raw, TestServer, names_in, no_progress, sha256_hex};

/// How long a test waits for the server to do something it should do at once.
const DEADLINE: Duration = Duration::from_secs(10);

/// The content of the secret file outside every home.
const SECRET: &[u8] = b"TOP SECRET: outside every home";

/// The content of the file in bob's home.
const BOB_SECRET: &[u8] = b"bob's private notes";

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_are_byte_identical_whatever_was_wrong() {
    let server = TestServer::start().await;
    let baseline = failed_login_reply(&server, "alice", "wrong-password").await;
    match decode_server_message(&baseline).unwrap() {
        ServerMessage::Error {
            id: Some(7),
            code: ErrorCode::AuthFailed,
            message,
        } => assert_eq!(message, "authentication failed"),
        other => panic!("unexpected reply to a wrong password: {other:?}"),
    }
    let long_name = "x".repeat(65);
    let very_long_name = "y".repeat(1000);
    let max_unknown_name = "z".repeat(64);
    let long_password = "p".repeat(1025);
    let longer_password = format!("alice-pw{}", "q".repeat(8000));
    let cases: &[(&str, &str, &str)] = &[
        ("unknown user", "ghost", "whatever"),
        ("unknown user, a real password", "ghost", "alice-pw"),
        ("another user's password", "bob", "alice-pw"),
        ("case of the name", "ALICE", "alice-pw"),
        ("64-byte unknown name", &max_unknown_name, "alice-pw"),
        ("65-byte name", &long_name, "alice-pw"),
        ("1000-byte name", &very_long_name, "alice-pw"),
        ("empty name", "", "alice-pw"),
        ("name with a slash", "al/ice", "alice-pw"),
        ("name with a trailing slash", "alice/", "alice-pw"),
        ("name climbing out", "../alice", "alice-pw"),
        ("name with NUL", "alice\0", "alice-pw"),
        ("empty password", "alice", ""),
        ("1025-byte password", "alice", &long_password),
        (
            "8 KB password starting with the real one",
            "alice",
            &longer_password,
        ),
    ];
    for (what, user, password) in cases {
        let reply = failed_login_reply(&server, user, password).await;
        assert_eq!(
            String::from_utf8_lossy(&reply),
            String::from_utf8_lossy(&baseline),
            "{what}: the reply differs from the one to a wrong password"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_failed_logins_close_the_connection_but_not_the_door() {
    let server = TestServer::start().await;
    let attempts = crate::util::test_limits().max_auth_attempts;
    assert_eq!(attempts, 3, "the documented default");
    let mut raw = server.raw().await;
    raw.hello().await;
    for id in 1..=u64::from(attempts) {
        raw.send(&login(id, "alice", "wrong")).await;
        match raw.recv().await {
            ServerMessage::Error {
                id: Some(rid),
                code: ErrorCode::AuthFailed,
                ..
            } => assert_eq!(rid, id),
            other => panic!("attempt {id}: {other:?}"),
        }
    }
    assert_closed_silently(&mut raw, "after the last allowed failure").await;

    // Not a lockout of the account: a new connection with the right password works.
    let mut conn = server.alice().await;
    conn.mkdir("/still-works").await.unwrap();
    assert!(server.home("alice").join("still-works").is_dir());
    conn.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_password_is_refused_without_hashing() {
    let server = TestServer::start().await;
    // Give alice a hash that costs real time, so that hashing shows in the reply times. The
    // dummy hash for unknown users takes the same parameters (UserDb::load makes it).
    let (hash, cost) = costly_hash("alice-pw", Duration::from_millis(200));
    let file = server.dir().join("costly-users.toml");
    users::add_user(&file, "alice", &hash, None, false).unwrap();
    server.server.replace_users(UserDb::load(&file).unwrap());

    // Timing on a shared machine: a burst of load can stretch one reply. The replies must be
    // identical every time; the timing must hold in one of three rounds.
    let mut last = String::new();
    for round in 0..3 {
        let mut raw = server.raw().await;
        raw.hello().await;
        let long = "p".repeat(1025);
        let (wrong_reply, wrong) = timed_login(&mut raw, "alice", "wrong").await;
        let (long_reply, long_known) = timed_login(&mut raw, "alice", &long).await;
        let (ghost_long_reply, long_unknown) = timed_login(&mut raw, "ghost", &long).await;
        assert_closed_silently(&mut raw, "after three failures").await;
        assert_eq!(long_reply, wrong_reply);
        assert_eq!(ghost_long_reply, wrong_reply);

        let mut raw = server.raw().await;
        raw.hello().await;
        let (ghost_reply, ghost) = timed_login(&mut raw, "ghost", "wrong").await;
        assert_eq!(ghost_reply, wrong_reply);

        last = format!(
            "round {round}: argon2 cost {cost:?}; wrong password {wrong:?}, unknown user \
             {ghost:?}, 1025-byte password {long_known:?} / {long_unknown:?}"
        );
        eprintln!("{last}");
        // Controls: a normal failure does pay for argon2, for known and unknown users alike;
        // an out-of-bounds password is refused before hashing.
        if wrong >= cost / 4
            && ghost >= cost / 4
            && long_known < wrong / 2
            && long_unknown < wrong / 2
        {
            // The real password still works with the costly hash.
            let mut raw = server.raw().await;
            raw.login("alice", "alice-pw").await;
            server.stop().await;
            return;
        }
    }
    panic!("the timing never showed hashing skipped for overlong passwords: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_password_hits_the_pre_auth_frame_cap() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    raw.hello().await;
    let msg = login(1, "alice", &"p".repeat(1024 * 1024));
    // By hand: the server closes after reading the header, so the write may fail.
    let frame = message_frame(&msg);
    assert!(frame.len() > ferry::protocol::MAX_FRAME_LEN_PRE_AUTH);
    let _ = tokio::time::timeout(DEADLINE, async {
        let w = raw.writer.get_mut();
        let _ = w.write_all(&frame).await;
        let _ = w.flush().await;
    })
    .await;
    assert_closed_silently(&mut raw, "after a 1 MiB login frame").await;
    // The server is fine.
    let conn = server.alice().await;
    conn.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successful_login_reports_user_and_read_only() {
    let server = TestServer::start().await;
    for (user, password, read_only) in [("alice", "alice-pw", false), ("reader", "reader-pw", true)]
    {
        let mut raw = server.raw().await;
        raw.hello().await;
        raw.send(&login(1, user, password)).await;
        let bytes = raw.recv_bytes().await;
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["type"], "ok", "{v}");
        assert_eq!(v["id"], 1, "{v}");
        assert_eq!(v["user"], user, "{v}");
        assert_eq!(v["read_only"], read_only, "{v}");
    }
    let conn = server.connect("reader", "reader-pw").await;
    assert!(conn.read_only());
    let conn2 = server.alice().await;
    assert!(!conn2.read_only());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_login_is_bad_request_and_the_user_does_not_change() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    raw.login("alice", "alice-pw").await;
    raw.send(&login(2, "bob", "bob-pw")).await;
    match raw.recv().await {
        ServerMessage::Error {
            id: Some(2),
            code: ErrorCode::BadRequest,
            message,
        } => assert_eq!(message, "already logged in"),
        other => panic!("second login: {other:?}"),
    }
    let r = raw_request(
        &mut raw,
        &ClientMessage::Mkdir {
            id: 3,
            path: "/who".into(),
        },
    )
    .await;
    assert!(matches!(r.last, ServerMessage::Ok { id: 3, .. }), "{r:?}");
    assert!(server.home("alice").join("who").is_dir());
    assert!(!server.home("bob").join("who").exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_user_can_read_but_changes_nothing() {
    let server = TestServer::start().await;
    let mut conn = server.connect("reader", "reader-pw").await;
    assert!(conn.read_only());
    let home = server.home("reader");
    std::fs::write(home.join("f.txt"), b"readable").unwrap();
    std::fs::create_dir(home.join("d")).unwrap();
    std::fs::write(home.join("d/g.txt"), b"also readable").unwrap();
    std::fs::create_dir(home.join("empty")).unwrap();
    let before = snapshot(&home);
    let local = tempfile::tempdir().unwrap();
    let upload = local.path().join("up.txt");
    std::fs::write(&upload, b"new content").unwrap();

    // Reading works.
    let mut names: Vec<String> = conn
        .list("/")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, ["d", "empty", "f.txt"]);
    let entry = conn.stat("/d/g.txt").await.unwrap();
    assert_eq!((entry.kind, entry.size), (EntryKind::File, 13));
    let dl = local.path().join("f.txt");
    let got = conn
        .get("/f.txt", &dl, false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(got.sha256, sha256_hex(b"readable"));
    assert_eq!(std::fs::read(&dl).unwrap(), b"readable");

    // Changing does not, through the library client...
    let refusals = [
        conn.put(&upload, "/new.txt", false, &mut no_progress())
            .await
            .map(drop),
        conn.put(&upload, "/f.txt", true, &mut no_progress())
            .await
            .map(drop),
        conn.put(&upload, "/d/new.txt", false, &mut no_progress())
            .await
            .map(drop),
        conn.mkdir("/newdir").await,
        conn.mkdir("/d/newdir").await,
        conn.rmdir("/empty").await,
        conn.remove("/f.txt").await,
        conn.remove("/d/g.txt").await,
        conn.rename("/f.txt", "/g.txt", false).await,
        conn.rename("/d/g.txt", "/f.txt", true).await,
        conn.rename("/empty", "/d/empty", false).await,
    ];
    for (i, r) in refusals.into_iter().enumerate() {
        let e = wire_error(r);
        assert_eq!(e.code, ErrorCode::PermissionDenied, "refusal {i}: {e:?}");
        assert_eq!(e.message, "read-only user", "refusal {i}");
    }
    // ...and the session goes on.
    assert_eq!(conn.stat("/f.txt").await.unwrap().size, 8);

    // ...nor through raw frames, including an upload the server must discard.
    let mut raw = server.raw().await;
    raw.login("reader", "reader-pw").await;
    let big = vec![7u8; 600 * 1024];
    let r = raw_put(&mut raw, 2, "/big.bin", &big, false).await;
    assert_error(&r, ErrorCode::PermissionDenied);
    let r = raw_put(&mut raw, 3, "/f.txt", b"clobbered", true).await;
    assert_error(&r, ErrorCode::PermissionDenied);
    for (id, msg) in [
        (
            4,
            ClientMessage::Mkdir {
                id: 4,
                path: "/x".into(),
            },
        ),
        (
            5,
            ClientMessage::Rmdir {
                id: 5,
                path: "/empty".into(),
            },
        ),
        (
            6,
            ClientMessage::Remove {
                id: 6,
                path: "/f.txt".into(),
            },
        ),
        (
            7,
            ClientMessage::Rename {
                id: 7,
                from: "/f.txt".into(),
                to: "/h.txt".into(),
                overwrite: true,
            },
        ),
    ] {
        let r = raw_request(&mut raw, &msg).await;
        assert_error(&r, ErrorCode::PermissionDenied);
        assert!(matches!(r.last, ServerMessage::Error { id: Some(rid), .. } if rid == id));
    }
    let r = raw_request(
        &mut raw,
        &ClientMessage::Stat {
            id: 8,
            path: "/f.txt".into(),
        },
    )
    .await;
    assert!(matches!(r.last, ServerMessage::Ok { id: 8, .. }), "{r:?}");

    assert_eq!(snapshot(&home), before, "a read-only user changed the home");
    for dir in [home.clone(), home.join("d")] {
        assert!(
            names_in(&dir).iter().all(|n| !n.starts_with(".ferry-")),
            "temp left in {}: {:?}",
            dir.display(),
            names_in(&dir)
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_is_created_on_first_login_with_mode_0700() {
    let server = TestServer::start().await;
    for user in ["bob", "reader"] {
        let home = server.home(user);
        assert!(!home.exists(), "{user}'s home exists before any login");
        let conn = server.connect(user, &format!("{user}-pw")).await;
        let meta = std::fs::symlink_metadata(&home).unwrap();
        assert!(meta.is_dir(), "{user}");
        assert_eq!(meta.mode() & 0o7777, 0o700, "{user}'s home mode");
        conn.close().await.unwrap();
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_offering_no_alpn_is_dropped_without_a_frame() {
    let server = TestServer::start().await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = ferry::tls::server_name("127.0.0.1").unwrap();
    // TLS allows a client without ALPN, so the handshake itself completes.
    let mut tls = tokio_rustls::TlsConnector::from(tls_with_alpn(&server, vec![]))
        .connect(name, tcp)
        .await
        .expect("the handshake completes without ALPN");
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    // Speak ferry anyway: a server that forgot the check would answer this hello.
    let hello = message_frame(&ClientMessage::Hello {
        versions: vec![ferry::protocol::PROTOCOL_VERSION],
        software: "no-alpn".into(),
    });
    let _ = tls.write_all(&hello).await;
    let _ = tls.flush().await;
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(DEADLINE, tls.read(&mut buf)).await {
        Err(_) => panic!("the server kept a connection without ALPN open"),
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "the server sent {n} bytes to a client without ALPN: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_offering_no_known_protocol_fails_the_handshake() {
    // The server speaks ferry/1, h2 and http/1.1; a client offering none of them is refused
    // (http/1.1 alone is served since the web front-end: tests/http.rs).
    let server = TestServer::start().await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = ferry::tls::server_name("127.0.0.1").unwrap();
    let cfg = tls_with_alpn(&server, vec![b"spdy/3".to_vec(), b"imap".to_vec()]);
    let result = tokio::time::timeout(
        DEADLINE,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .expect("handshake hung");
    let Err(err) = result else {
        panic!("a handshake offering no known protocol succeeded");
    };
    // The server answers with the no_application_protocol alert.
    let alert = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(
        matches!(
            alert,
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::NoApplicationProtocol
            ))
        ),
        "unexpected handshake error: {err}"
    );
    // Control: the same configuration with ferry/1 works.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = ferry::tls::server_name("127.0.0.1").unwrap();
    let cfg = tls_with_alpn(&server, vec![b"spdy/3".to_vec(), b"ferry/1".to_vec()]);
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"ferry/1"[..]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_does_not_trust_the_ca_gets_a_tls_error() {
    let server = TestServer::start().await;
    let other = tempfile::tempdir().unwrap();
    let certs = ferry::certs::generate(&other.path().join("certs"), &[], false).unwrap();
    let untrusting =
        ferry::tls::client_config(Some(&certs.paths.ca_cert), ferry::protocol::ALPN).unwrap();
    let result = tokio::time::timeout(
        DEADLINE,
        Connection::connect("127.0.0.1", server.addr.port(), untrusting),
    )
    .await
    .expect("connect hung");
    match result {
        Err(ClientError::Tls(msg)) => eprintln!("untrusted: {msg}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    // The server's own CA works.
    let conn = server.alice().await;
    conn.close().await.unwrap();
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Confinement
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_path_strings_stay_inside_the_home() {
    let mut w = World::new().await;
    std::fs::write(w.alice.join("inside.txt"), b"inside").unwrap();
    std::fs::create_dir(w.alice.join("sub")).unwrap();
    std::fs::write(w.alice.join("sub/keep.txt"), b"keep").unwrap();
    w.record();

    use ErrorCode::{InvalidPath, NotFound};
    let long_name = "n".repeat(256);
    let long_name_in_dir = format!("sub/{}", "n".repeat(256));
    let long_path = format!("{}a", "a/".repeat(2048));
    assert_eq!(long_path.len(), 4097);
    let cases: Vec<(&str, ErrorCode)> = vec![
        ("..", InvalidPath),
        ("../", InvalidPath),
        ("/..", InvalidPath),
        ("./..", InvalidPath),
        ("sub/..", InvalidPath),
        ("../bob", InvalidPath),
        ("../bob/bob-secret.txt", InvalidPath),
        ("../../etc/passwd", InvalidPath),
        ("../../outside/secret.txt", InvalidPath),
        ("a/../../x", InvalidPath),
        // Trailing and inner `/.` never hide a `..`.
        ("../.", InvalidPath),
        ("/./..", InvalidPath),
        ("./../.", InvalidPath),
        ("sub/./../../x/.", InvalidPath),
        ("../bob/.", InvalidPath),
        ("sub/../../bob", InvalidPath),
        ("..\\..\\x", InvalidPath),
        ("sub\\..\\..\\x", InvalidPath),
        ("C:\\x", InvalidPath),
        ("inside.txt\0", InvalidPath),
        ("\0", InvalidPath),
        ("a\u{1}b", InvalidPath),
        ("\u{1b}[2Jx", InvalidPath),
        ("x\ny", InvalidPath),
        ("x\u{7f}", InvalidPath),
        ("x\u{85}", InvalidPath),
        ("\u{202E}txt.exe", InvalidPath),
        ("a\u{2066}b", InvalidPath),
        (&long_name, InvalidPath),
        (&long_name_in_dir, InvalidPath),
        (&long_path, InvalidPath),
        (".ferry-tmp.0123456789abcdef", InvalidPath),
        (".FERRY-x", InvalidPath),
        ("sub/.ferry-x", InvalidPath),
        // Absolute paths mean the home: these resolve to <home>/etc/passwd and so on.
        ("/etc/passwd", NotFound),
        ("//etc/passwd", NotFound),
        ("/etc/shadow", NotFound),
        ("/proc/self/root/etc/passwd", NotFound),
        ("~root/.ssh/authorized_keys", NotFound),
    ];
    for (path, code) in &cases {
        for op in Op::every_use_of(path) {
            w.expect_refused(op, &[*code]).await;
        }
    }
    // A trailing `/.` names the directory itself, inside the home.
    let names = |v: Vec<ferry::protocol::Entry>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
    assert_eq!(names(w.conn.list("sub/.").await.unwrap()), ["keep.txt"]);
    assert_eq!(names(w.conn.list("sub/./").await.unwrap()), ["keep.txt"]);
    assert!(names(w.conn.list("/.").await.unwrap()).contains(&"inside.txt".to_string()));
    // The home itself is intact and usable.
    assert_eq!(w.conn.stat("/inside.txt").await.unwrap().size, 6);
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_symlinks_do_not_lead_out() {
    let mut w = World::new().await;
    std::fs::write(w.alice.join("inside.txt"), b"inside").unwrap();
    let links: &[(&str, PathBuf)] = &[
        ("etc", PathBuf::from("/etc")),
        ("out", w.outside.clone()),
        ("rel-out", PathBuf::from("../../outside")),
        ("bob", PathBuf::from("../bob")),
        ("secret", w.outside.join("secret.txt")),
        ("rel-secret", PathBuf::from("../../outside/secret.txt")),
        ("up", PathBuf::from("..")),
        ("loop", PathBuf::from("loop")),
    ];
    for (name, target) in links {
        symlink(target, w.alice.join(name)).unwrap();
    }
    w.record();
    use ErrorCode::{AlreadyExists, NotADirectory, NotFound, PermissionDenied};
    let refused = &[PermissionDenied, NotFound];

    // Reading through a link that leads out: no metadata, no listing, no content.
    for path in [
        "etc",
        "etc/passwd",
        "etc/hostname",
        "out",
        "out/secret.txt",
        "out/sub",
        "out/sub2/nested.txt",
        "rel-out",
        "rel-out/secret.txt",
        "bob",
        "bob/bob-secret.txt",
        "/bob/bob-secret.txt",
        "secret",
        "rel-secret",
        "up",
        "up/bob/bob-secret.txt",
        "up/alice/inside.txt",
        "loop",
        "loop/x",
    ] {
        w.expect_refused(Op::Stat(path), refused).await;
        w.expect_refused(Op::List(path), refused).await;
        w.expect_refused(Op::Get(path), refused).await;
    }

    // Creating or changing anything through them.
    for path in [
        "out/new.txt",
        "rel-out/new.txt",
        "out/sub/new.txt",
        "bob/new.txt",
        "up/bob/new.txt",
        "etc/ferry-security-test",
        "loop/new.txt",
    ] {
        w.expect_refused(Op::Put(path, false), refused).await;
        w.expect_refused(Op::Put(path, true), refused).await;
        w.expect_refused(Op::Mkdir(path), refused).await;
    }
    for path in [
        "out/secret.txt",
        "rel-out/secret.txt",
        "bob/bob-secret.txt",
        "up/bob/bob-secret.txt",
    ] {
        w.expect_refused(Op::Put(path, true), refused).await;
        w.expect_refused(Op::Remove(path), refused).await;
        w.expect_refused(Op::Rename(path, "/stolen.txt", false), refused)
            .await;
        w.expect_refused(Op::Rename("/inside.txt", path, true), refused)
            .await;
    }
    for path in ["out/sub", "rel-out/sub", "etc/ferry-no-such-dir"] {
        w.expect_refused(Op::Rmdir(path), refused).await;
    }
    for to in [
        "out/planted.txt",
        "rel-out/sub/planted.txt",
        "bob/planted.txt",
        "up/bob/planted.txt",
        "etc/ferry-security-test",
    ] {
        w.expect_refused(Op::Rename("/inside.txt", to, false), refused)
            .await;
    }
    for from in ["out/sub", "out/sub2"] {
        // Moving an outside directory in through the link.
        w.expect_refused(Op::Rename(from, "/moved", false), refused)
            .await;
    }
    // The final component is the link itself: these act on the link, never on its target.
    w.expect_refused(Op::Mkdir("out"), &[AlreadyExists]).await;
    w.expect_refused(Op::Rmdir("out"), &[NotADirectory]).await;
    w.expect_refused(Op::Rmdir("bob"), &[NotADirectory]).await;
    w.expect_refused(Op::Put("secret", false), &[AlreadyExists])
        .await;

    // Replacing a link with an upload replaces the link in the home, not the outside file.
    let upload = w.local.path().join("replacement");
    std::fs::write(&upload, b"replacement").unwrap();
    w.conn
        .put(&upload, "/secret", true, &mut no_progress())
        .await
        .unwrap();
    let meta = std::fs::symlink_metadata(w.alice.join("secret")).unwrap();
    assert!(meta.is_file(), "the link was not replaced by a file");
    assert_eq!(
        std::fs::read(w.alice.join("secret")).unwrap(),
        b"replacement"
    );
    // Removing a link removes the link.
    w.conn.remove("/rel-secret").await.unwrap();
    assert!(std::fs::symlink_metadata(w.alice.join("rel-secret")).is_err());
    w.alice_changed();
    w.assert_unchanged("after replacing and removing links");

    for p in ["/etc/ferry-security-test", "/etc/ferry-no-such-dir"] {
        let leaked = Path::new(p).exists();
        let _ = std::fs::remove_file(p);
        assert!(!leaked, "{p} was created outside the home");
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_swapped_for_a_symlink_between_requests() {
    let mut w = World::new().await;
    std::fs::create_dir(w.alice.join("d")).unwrap();
    std::fs::write(w.alice.join("d/secret.txt"), b"alice's own").unwrap();
    std::fs::write(w.alice.join("d/bob-secret.txt"), b"alice's own too").unwrap();
    std::fs::write(w.alice.join("inside.txt"), b"inside").unwrap();

    // Before the swap, the session uses d normally.
    let dl = w.local.path().join("dl-before");
    w.conn
        .get("/d/secret.txt", &dl, false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dl).unwrap(), b"alice's own");
    assert_eq!(w.conn.list("/d").await.unwrap().len(), 2);
    let r = w.raw_op(Op::Stat("/d/secret.txt")).await;
    assert!(matches!(r.last, ServerMessage::Ok { .. }), "{r:?}");

    use ErrorCode::{NotFound, PermissionDenied};
    let refused = &[PermissionDenied, NotFound];
    let targets = [w.outside.clone(), PathBuf::from("../bob")];
    for (round, target) in targets.iter().enumerate() {
        // Swap d for a link while both sessions stay logged in.
        let aside = w.alice.join(format!("d.orig{round}"));
        if round == 0 {
            std::fs::rename(w.alice.join("d"), &aside).unwrap();
        } else {
            std::fs::remove_file(w.alice.join("d")).unwrap();
        }
        symlink(target, w.alice.join("d")).unwrap();
        w.record();
        for name in ["secret.txt", "bob-secret.txt", "sub"] {
            let path = format!("/d/{name}");
            w.expect_refused(Op::Stat(&path), refused).await;
            w.expect_refused(Op::Get(&path), refused).await;
            w.expect_refused(Op::List(&path), refused).await;
            w.expect_refused(Op::Put(&path, true), refused).await;
            w.expect_refused(Op::Remove(&path), refused).await;
            w.expect_refused(Op::Rename(&path, "/got", false), refused)
                .await;
            w.expect_refused(Op::Rename("/inside.txt", &path, true), refused)
                .await;
        }
        w.expect_refused(Op::List("/d"), refused).await;
        w.expect_refused(Op::Get("/d/sub/nested.txt"), refused)
            .await;
        w.expect_refused(Op::Put("/d/new.txt", false), refused)
            .await;
        w.expect_refused(Op::Mkdir("/d/newdir"), refused).await;
        w.expect_refused(Op::Rmdir("/d/sub"), refused).await;
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_swapped_for_a_symlink_during_an_upload() {
    let mut w = World::new().await;
    std::fs::create_dir(w.alice.join("d")).unwrap();
    w.record();
    // Larger than the uploads the server reads whole before creating their temp file
    // (256 KiB), so the temp exists while the data still arrives.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let data = &data[..];
    let id = 1000;
    w.raw
        .send(&ClientMessage::Put {
            id,
            path: "/d/late.txt".into(),
            size: data.len() as u64,
            overwrite: false,
            offset: 0,
            prefix_sha256: None,
        })
        .await;
    w.raw.send_data(&data[..4]).await;
    // Wait until the server has its temp file open in d, then swap d for a link outside.
    let dir = w.alice.join("d");
    let start = Instant::now();
    while !names_in(&dir).iter().any(|n| n.starts_with(".ferry-tmp.")) {
        assert!(start.elapsed() < DEADLINE, "no temp file appeared in d");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::rename(&dir, w.alice.join("d.orig")).unwrap();
    symlink(&w.outside, &dir).unwrap();
    w.raw.send_data(&data[4..]).await;
    w.raw
        .send(&ClientMessage::End {
            id,
            sha256: sha256_hex(data),
        })
        .await;
    let r = read_reply(&mut w.raw, id).await;
    // The commit renames relative to the directory the temp was created in, which is now
    // d.orig inside the home; nothing lands outside.
    assert!(matches!(r.last, ServerMessage::Ok { .. }), "{r:?}");
    assert_eq!(
        std::fs::read(w.alice.join("d.orig/late.txt")).unwrap(),
        data
    );
    assert!(!w.outside.join("late.txt").exists());
    assert!(
        names_in(&w.outside)
            .iter()
            .all(|n| !n.starts_with(".ferry-")),
        "{:?}",
        names_in(&w.outside)
    );
    w.assert_outside_unchanged("after the mid-upload swap");
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_messages_name_no_server_paths() {
    let mut w = World::new().await;
    let home = w.alice.clone();
    std::fs::write(home.join("distinctive-file.txt"), b"x").unwrap();
    std::fs::create_dir_all(home.join("distinctive-dir/child")).unwrap();
    symlink(w.outside.join("secret.txt"), home.join("distinctive-link")).unwrap();
    w.record();
    use ErrorCode::*;
    let cases: Vec<(Op, ErrorCode)> = vec![
        (Op::Stat("/distinctive-missing"), NotFound),
        (Op::Get("/distinctive-missing/x"), NotFound),
        (Op::Get("/distinctive-file.txt/x"), NotADirectory),
        (Op::Get("/distinctive-dir"), IsADirectory),
        (Op::Get("/distinctive-link"), PermissionDenied),
        (Op::List("/distinctive-link"), PermissionDenied),
        (Op::Put("/distinctive-file.txt", false), AlreadyExists),
        (Op::Put("/distinctive-dir", true), IsADirectory),
        (Op::Put("/distinctive-missing/x", false), NotFound),
        (Op::Mkdir("/distinctive-dir"), AlreadyExists),
        (Op::Rmdir("/distinctive-dir"), DirectoryNotEmpty),
        (Op::Rmdir("/distinctive-file.txt"), NotADirectory),
        (Op::Rmdir("/"), PermissionDenied),
        (Op::Remove("/distinctive-dir"), IsADirectory),
        (Op::Remove("/"), IsADirectory),
        (
            Op::Rename("/distinctive-dir", "/distinctive-dir/child/x", false),
            BadRequest,
        ),
        (
            Op::Rename("/distinctive-file.txt", "/distinctive-dir", false),
            AlreadyExists,
        ),
        (Op::Rename("/", "/distinctive-x", false), PermissionDenied),
        (Op::Stat("/distinctive-\u{202E}"), InvalidPath),
        (Op::Stat("/distinctive/../x"), InvalidPath),
    ];
    for (op, code) in cases {
        w.expect_refused(op, &[code]).await;
    }
    // Integrity and size errors carry client text only.
    let r = w
        .raw_put_hash("/distinctive-new", b"hello\n", &"0".repeat(64))
        .await;
    assert_error(&r, IntegrityMismatch);
    w.check_message(&r.last);
    // The refused upload's temp came and went (so the home's mtime moved); nothing stayed.
    w.assert_outside_unchanged("after a digest mismatch");
    let names = names_in(&home);
    assert!(
        !names
            .iter()
            .any(|n| n == "distinctive-new" || n.starts_with(".ferry-")),
        "{names:?}"
    );
    w.finish().await;
}

// ---------------------------------------------------------------------------------------------
// The confinement world
// ---------------------------------------------------------------------------------------------

/// A server, alice logged in twice (library client and raw frames), bob's home with a secret,
/// and an `outside` directory beside the data root with a secret of its own.
struct World {
    server: TestServer,
    conn: Connection,
    raw: Raw,
    next_raw_id: u64,
    alice: PathBuf,
    bob: PathBuf,
    outside: PathBuf,
    /// Client-side files: what is uploaded, where downloads land.
    local: tempfile::TempDir,
    upload: PathBuf,
    /// Strings that must never appear in a message: the server's paths, OS error text.
    forbidden: Vec<String>,
    before: Option<[Snapshot; 3]>,
}

impl World {
    async fn new() -> World {
        let server = TestServer::start().await;
        // Homes are made at first login.
        server.connect("bob", "bob-pw").await.close().await.unwrap();
        let bob = server.home("bob");
        std::fs::write(bob.join("bob-secret.txt"), BOB_SECRET).unwrap();
        let outside = server.dir().join("outside");
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::create_dir_all(outside.join("sub2")).unwrap();
        std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
        std::fs::write(outside.join("sub2/nested.txt"), SECRET).unwrap();
        let conn = server.alice().await;
        let mut raw = server.raw().await;
        raw.login("alice", "alice-pw").await;
        let local = tempfile::tempdir().unwrap();
        let upload = local.path().join("payload.txt");
        std::fs::write(&upload, b"attack payload").unwrap();
        let mut forbidden = vec!["os error".to_string()];
        for p in [
            server.dir().to_path_buf(),
            server.dir().canonicalize().unwrap(),
        ] {
            forbidden.push(p.to_string_lossy().into_owned());
        }
        forbidden.push(String::from_utf8_lossy(SECRET).into_owned());
        World {
            alice: server.home("alice"),
            bob,
            outside,
            conn,
            raw,
            next_raw_id: 100,
            server,
            local,
            upload,
            forbidden,
            before: None,
        }
    }

    /// Takes the snapshots later attacks are compared with.
    fn record(&mut self) {
        self.before = Some(self.snapshots());
    }

    /// Re-records alice's home only, after a legitimate change to it.
    fn alice_changed(&mut self) {
        if let Some(b) = self.before.as_mut() {
            b[2] = snapshot(&self.alice);
        }
    }

    fn snapshots(&self) -> [Snapshot; 3] {
        [
            snapshot(&self.outside),
            snapshot(&self.bob),
            snapshot(&self.alice),
        ]
    }

    fn assert_unchanged(&self, after: &str) {
        let before = self.before.as_ref().expect("record() first");
        let now = self.snapshots();
        for (i, what) in ["outside", "bob's home", "alice's home"].iter().enumerate() {
            assert_eq!(now[i], before[i], "{what} changed {after}");
        }
    }

    fn assert_outside_unchanged(&self, after: &str) {
        let before = self.before.as_ref().expect("record() first");
        assert_eq!(
            snapshot(&self.outside),
            before[0],
            "outside changed {after}"
        );
        assert_eq!(snapshot(&self.bob), before[1], "bob's home changed {after}");
    }

    fn check_message(&self, msg: &ServerMessage) {
        if let ServerMessage::Error { message, .. } = msg {
            self.check_text(message);
        }
    }

    fn check_text(&self, message: &str) {
        for f in &self.forbidden {
            assert!(
                !message.contains(f.as_str()),
                "message {message:?} contains {f:?}"
            );
        }
    }

    /// Runs `op` through the library client and through raw frames; both must fail with one
    /// of `codes`, deliver no content, leak nothing in the message, and change nothing.
    async fn expect_refused(&mut self, op: Op<'_>, codes: &[ErrorCode]) {
        if self.before.is_none() {
            self.record();
        }
        let e = self.client_op(op).await;
        assert!(
            codes.contains(&e.code),
            "client {op:?}: got {:?} ({:?}), want one of {codes:?}",
            e.code,
            e.message
        );
        self.check_text(&e.message);
        if let Some(path) = op.single_path().filter(|p| p.len() >= 8) {
            assert!(
                !e.message.contains(path),
                "{op:?}: message repeats the path"
            );
        }
        self.assert_unchanged(&format!("after client {op:?}"));

        let r = self.raw_op(op).await;
        let ServerMessage::Error { code, message, .. } = &r.last else {
            panic!("raw {op:?}: not refused: {r:?}");
        };
        assert!(
            codes.contains(code),
            "raw {op:?}: got {code:?} ({message:?}), want one of {codes:?}"
        );
        assert!(
            r.file.is_none() && r.data.is_empty() && r.entries.is_empty(),
            "raw {op:?}: content delivered before the error: {r:?}"
        );
        self.check_message(&r.last);
        assert_eq!(
            e.code, *code,
            "{op:?}: client and raw frames got different codes"
        );
        self.assert_unchanged(&format!("after raw {op:?}"));
    }

    /// Runs `op` through the library client and returns its error; panics if it succeeded.
    async fn client_op(&mut self, op: Op<'_>) -> WireError {
        let dl = self.local.path().join("download");
        let result = match op {
            Op::Stat(p) => self.conn.stat(p).await.map(|e| format!("{e:?}")),
            Op::List(p) => self.conn.list(p).await.map(|e| format!("{e:?}")),
            Op::Get(p) => {
                let r = self.conn.get(p, &dl, false, &mut no_progress()).await;
                if r.is_err() {
                    assert!(!dl.exists(), "{op:?}: a refused download left a file");
                }
                r.map(|t| format!("{t:?}: {:?}", std::fs::read(&dl)))
            }
            Op::Put(p, overwrite) => self
                .conn
                .put(&self.upload, p, overwrite, &mut no_progress())
                .await
                .map(|t| format!("{t:?}")),
            Op::Mkdir(p) => self.conn.mkdir(p).await.map(|()| "ok".into()),
            Op::Rmdir(p) => self.conn.rmdir(p).await.map(|()| "ok".into()),
            Op::Remove(p) => self.conn.remove(p).await.map(|()| "ok".into()),
            Op::Rename(from, to, overwrite) => self
                .conn
                .rename(from, to, overwrite)
                .await
                .map(|()| "ok".into()),
        };
        match result {
            Err(ClientError::Remote(e)) => e,
            Err(other) => panic!("client {op:?}: not a remote refusal: {other:?}"),
            Ok(what) => panic!("client {op:?} was not refused: {what}"),
        }
    }

    /// Runs `op` over raw frames and returns everything the server sent for it.
    async fn raw_op(&mut self, op: Op<'_>) -> Reply {
        self.next_raw_id += 1;
        let id = self.next_raw_id;
        let msg = match op {
            Op::Put(p, overwrite) => {
                return raw_put(&mut self.raw, id, p, b"raw payload", overwrite).await;
            }
            Op::Stat(p) => ClientMessage::Stat { id, path: p.into() },
            Op::List(p) => ClientMessage::List { id, path: p.into() },
            Op::Get(p) => ClientMessage::Get {
                id,
                path: p.into(),
                offset: 0,
                prefix_sha256: None,
            },
            Op::Mkdir(p) => ClientMessage::Mkdir { id, path: p.into() },
            Op::Rmdir(p) => ClientMessage::Rmdir { id, path: p.into() },
            Op::Remove(p) => ClientMessage::Remove { id, path: p.into() },
            Op::Rename(from, to, overwrite) => ClientMessage::Rename {
                id,
                from: from.into(),
                to: to.into(),
                overwrite,
            },
        };
        raw_request(&mut self.raw, &msg).await
    }

    /// A raw upload whose `end` carries `sha256` instead of the real digest.
    async fn raw_put_hash(&mut self, path: &str, data: &[u8], sha256: &str) -> Reply {
        self.next_raw_id += 1;
        let id = self.next_raw_id;
        self.raw
            .send(&ClientMessage::Put {
                id,
                path: path.into(),
                size: data.len() as u64,
                overwrite: false,
                offset: 0,
                prefix_sha256: None,
            })
            .await;
        self.raw.send_data(data).await;
        self.raw
            .send(&ClientMessage::End {
                id,
                sha256: sha256.into(),
            })
            .await;
        read_reply(&mut self.raw, id).await
    }

    /// Checks that both sessions are still alive and nothing outside changed, then stops.
    async fn finish(mut self) {
        self.conn.stat("/").await.unwrap();
        let r = self.raw_op(Op::Stat("/")).await;
        assert!(matches!(r.last, ServerMessage::Ok { .. }), "{r:?}");
        self.assert_outside_unchanged("at the end");
        assert_eq!(
            std::fs::read(self.outside.join("secret.txt")).unwrap(),
            SECRET
        );
        assert_eq!(
            std::fs::read(self.bob.join("bob-secret.txt")).unwrap(),
            BOB_SECRET
        );
        self.conn.close().await.unwrap();
        self.server.stop().await;
    }
}

/// One request, as a value, so that the same attack can go through both clients.
#[derive(Debug, Clone, Copy)]
enum Op<'a> {
    Stat(&'a str),
    List(&'a str),
    Get(&'a str),
    Put(&'a str, bool),
    Mkdir(&'a str),
    Rmdir(&'a str),
    Remove(&'a str),
    Rename(&'a str, &'a str, bool),
}

impl<'a> Op<'a> {
    /// Every request that takes `path`, on either side of a rename.
    fn every_use_of(path: &'a str) -> Vec<Op<'a>> {
        vec![
            Op::Stat(path),
            Op::List(path),
            Op::Get(path),
            Op::Put(path, false),
            Op::Put(path, true),
            Op::Mkdir(path),
            Op::Rmdir(path),
            Op::Remove(path),
            Op::Rename(path, "/renamed", false),
            Op::Rename("/inside.txt", path, false),
            Op::Rename("/inside.txt", path, true),
        ]
    }

    /// The path of a one-path request.
    fn single_path(&self) -> Option<&'a str> {
        match *self {
            Op::Stat(p)
            | Op::List(p)
            | Op::Get(p)
            | Op::Put(p, _)
            | Op::Mkdir(p)
            | Op::Rmdir(p)
            | Op::Remove(p) => Some(p),
            Op::Rename(..) => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What the server sent for one raw request: its final reply and anything before it.
#[derive(Debug)]
struct Reply {
    last: ServerMessage,
    file: Option<u64>,
    data: Vec<u8>,
    entries: Vec<Entry>,
}

async fn raw_request(raw: &mut Raw, msg: &ClientMessage) -> Reply {
    raw.send(msg).await;
    read_reply(raw, msg.id().unwrap()).await
}

/// An upload over raw frames: request, data, `end` with the right digest, then the reply.
async fn raw_put(raw: &mut Raw, id: u64, path: &str, data: &[u8], overwrite: bool) -> Reply {
    raw.send(&ClientMessage::Put {
        id,
        path: path.into(),
        size: data.len() as u64,
        overwrite,
        offset: 0,
        prefix_sha256: None,
    })
    .await;
    for chunk in data.chunks(256 * 1024) {
        raw.writer.queue_data(chunk).unwrap();
    }
    raw.writer
        .queue_message(&ClientMessage::End {
            id,
            sha256: sha256_hex(data),
        })
        .unwrap();
    raw.writer.flush().await.unwrap();
    read_reply(raw, id).await
}

/// Reads until the final reply to `id`, collecting pages, file headers and data.
async fn read_reply(raw: &mut Raw, id: u64) -> Reply {
    let mut reply = Reply {
        last: ServerMessage::ok(0),
        file: None,
        data: Vec::new(),
        entries: Vec::new(),
    };
    loop {
        let msg = match raw.frame().await {
            Some(Frame::Data(d)) => {
                reply.data.extend_from_slice(&d);
                continue;
            }
            Some(Frame::Message(m)) => decode_server_message(&m).unwrap(),
            None => panic!("the connection closed while waiting for the reply to {id}"),
        };
        match msg {
            ServerMessage::Entries { id: rid, entries } if rid == id => {
                reply.entries.extend(entries);
            }
            ServerMessage::File { id: rid, size, .. } if rid == id => reply.file = Some(size),
            ServerMessage::Ok { id: rid, .. } | ServerMessage::Error { id: Some(rid), .. }
                if rid == id =>
            {
                reply.last = msg;
                return reply;
            }
            other => panic!("unexpected message while waiting for the reply to {id}: {other:?}"),
        }
    }
}

fn assert_error(r: &Reply, want: ErrorCode) {
    match &r.last {
        ServerMessage::Error { code, .. } if *code == want => {}
        other => panic!("expected {want:?}, got {other:?}"),
    }
}

/// The wire error of a refused library call.
fn wire_error(r: Result<(), ClientError>) -> WireError {
    match r {
        Err(ClientError::Remote(e)) => e,
        other => panic!("expected a remote refusal, got {other:?}"),
    }
}

fn login(id: u64, user: &str, password: &str) -> ClientMessage {
    ClientMessage::Login {
        id,
        user: user.into(),
        password: password.into(),
    }
}

/// One failed login (id 7) on a fresh connection; returns the reply's bytes after checking
/// that the session stays open for another attempt, which then succeeds.
async fn failed_login_reply(server: &TestServer, user: &str, password: &str) -> Vec<u8> {
    let mut raw = server.raw().await;
    raw.hello().await;
    raw.send(&login(7, user, password)).await;
    let bytes = raw.recv_bytes().await;
    raw.send(&login(8, "alice", "alice-pw")).await;
    match raw.recv().await {
        ServerMessage::Ok {
            id: 8,
            user: Some(u),
            ..
        } => assert_eq!(u, "alice"),
        other => panic!("{user:?}: login after one failure: {other:?}"),
    }
    bytes
}

/// A login with id 7; returns the reply bytes and how long the reply took.
async fn timed_login(raw: &mut Raw, user: &str, password: &str) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    raw.send(&login(7, user, password)).await;
    let bytes = raw.recv_bytes().await;
    (bytes, start.elapsed())
}

/// An argon2id hash of `password` whose verification takes at least about `target` here.
fn costly_hash(password: &str, target: Duration) -> (String, Duration) {
    let pw = Password::new(password.to_string());
    let (m, p) = (19 * 1024, 1);
    let start = Instant::now();
    users::hash_password_with(&pw, m, 2, p).unwrap();
    let per_pass = start.elapsed().as_secs_f64() / 2.0;
    let t = ((target.as_secs_f64() / per_pass).ceil() as u32).clamp(2, users::MAX_T_COST);
    let start = Instant::now();
    let hash = users::hash_password_with(&pw, m, t, p).unwrap();
    (hash, start.elapsed())
}

/// Reads until the server ends the connection; fails on any frame or if it stays open.
async fn assert_closed_silently(raw: &mut Raw, when: &str) {
    match tokio::time::timeout(DEADLINE, raw.reader.read_frame()).await {
        Err(_) => panic!("{when}: the connection is still open"),
        Ok(Ok(Some(frame))) => panic!("{when}: the server sent {frame:?} instead of closing"),
        Ok(Ok(None) | Err(_)) => {}
    }
}

/// The bytes of a message frame, built by hand (no cap checks on the way out).
fn message_frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    let json = serde_json::to_vec(msg).unwrap();
    let mut frame = u32::try_from(json.len() + 1)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    frame.push(ferry::protocol::KIND_MESSAGE);
    frame.extend_from_slice(&json);
    frame
}

/// A TLS 1.3 client configuration that trusts the test CA and offers exactly `alpn`.
fn tls_with_alpn(server: &TestServer, alpn: Vec<Vec<u8>>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ferry::tls::load_certs(&server.ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn;
    Arc::new(config)
}

/// What a directory tree holds, without following symlinks: kind, content or link target,
/// permission bits and modification time of every entry (directories' mtimes change when
/// names are added or removed).
type Snapshot = BTreeMap<PathBuf, Node>;

#[derive(Debug, PartialEq, Eq)]
enum Node {
    File {
        data: Vec<u8>,
        mode: u32,
        mtime: (i64, i64),
    },
    Dir {
        mode: u32,
        mtime: (i64, i64),
    },
    Link(PathBuf),
    Other(u32),
}

fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn walk(root: &Path, rel: &Path, out: &mut Snapshot) {
    let path = root.join(rel);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    let mode = meta.mode() & 0o7777;
    let mtime = (meta.mtime(), meta.mtime_nsec());
    let ft = meta.file_type();
    let node = if ft.is_symlink() {
        Node::Link(std::fs::read_link(&path).unwrap())
    } else if ft.is_dir() {
        Node::Dir { mode, mtime }
    } else if ft.is_file() {
        Node::File {
            data: std::fs::read(&path).unwrap(),
            mode,
            mtime,
        }
    } else {
        Node::Other(meta.mode())
    };
    out.insert(rel.to_path_buf(), node);
    if ft.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for name in names {
            walk(root, &rel.join(name), out);
        }
    }
}
