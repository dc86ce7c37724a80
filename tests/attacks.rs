//! The attack suite of issue 3 ("Evidence"): hostile clients against the real server over real
//! sockets. Every case checks what the server does to the attacker and then that a
//! well-behaved client is still served ([`assert_serves`]: login, put, get).
//!
//! Here: slowloris before and after TLS (handshake, login, idle and stall timeouts); plain
//! text, HTTP and garbage instead of TLS; a TLS 1.2-only client; more connections than the caps
//! (in total, per source address, sessions per user); two concurrent uploads to one path; NFC
//! and NFD look-alike names, a hard link planted inside the home, a subdirectory swapped for a
//! symlink again and again during 1,000 transfers; 1,000 parallel logins against the argon2
//! permits, with the process's peak RSS measured; the timing of an unknown user against a wrong
//! password; graceful shutdown; per-source penalties (password guessing, scanners, slowloris
//! and idle connections, expiry); the PROXY protocol (the address it names is the one limits
//! and penalties use; without the option such a header is just a bad client).
//!
//! The rest of the suite lives beside it, and is not repeated here:
//! - `tests/protocol.rs`: oversized, zero-length and truncated frames (before and after login,
//!   inside an upload), frames out of order (requests before login, data without a transfer,
//!   `end` outside an upload, hello without version 1), more data than declared, clients that
//!   vanish mid-transfer (`connection_dropped_*`, `close_notify_mid_upload_*`).
//! - `tests/security.rs`: TLS without ALPN and with only a foreign ALPN (the wrong-ALPN case),
//!   an untrusted certificate; byte-identical login failures, the attempt cap, overlong and
//!   1 MiB passwords refused without hashing; hostile path strings (`..` in every position,
//!   `//`, trailing `/.`, `..\..\x`, `C:\x`, NUL, very long names, U+202E); symlinks planted
//!   inside the home pointing outside; a directory swapped for a symlink between requests and
//!   during an upload.
//! - `tests/quota.rs`: uploads past the quota and the maximum file size, two uploads in flight
//!   against one quota, a full disk (tmpfs) failing an upload cleanly.
//!
//! Timeouts are shrunk through [`Limits`] (hundreds of milliseconds) so that the cases stay
//! fast; the server runs in the test's runtime, so real clocks are used, not `pause()`. The
//! memory case runs alone among this file's tests ([`MEASURING`]); the timing case interleaves
//! its samples, so that load from neighbours falls on both sides alike.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferry::client::{ClientError, Connection};
use ferry::protocol::{
    ClientMessage, ErrorCode, Frame, FrameReader, FrameWriter, KIND_DATA, KIND_MESSAGE,
    MAX_FRAME_LEN, PROTOCOL_VERSION, ServerMessage,
};
use ferry::server::Limits;
use ferry::server::penalty::PenaltyConfig;
use ferry::users::{self, Password, UserDb};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::RwLock;
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;

use crate::util::{Raw, TestServer, names_in, no_progress, random_file, sha256_hex, test_limits};

/// How late a timer may fire on a loaded two-core machine shared with other builds.
const SLACK: Duration = Duration::from_millis(1000);
/// How long anything that should simply happen may take.
const DEADLINE: Duration = Duration::from_secs(10);
/// "At once": a refusal at accept or a parse error, well before any timeout runs out.
const AT_ONCE: Duration = Duration::from_millis(1000);
/// The usual client address; others in 127.0.0.0/8 are separate sources to the server.
const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// Memory one argon2 verification with the production parameters holds (m = 19456 KiB).
const ARGON2_KIB: u64 = 19 * 1024;

/// The case that measures memory takes this for writing, so that none of this file's other
/// cases runs beside it (the server runs in this process); the others share it.
static MEASURING: RwLock<()> = RwLock::const_new(());

// ---------------------------------------------------------------------------------------------
// Slowloris
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_before_tls_is_cut_at_the_handshake_timeout() {
    let _shared = MEASURING.read().await;
    let handshake = Duration::from_millis(400);
    let server = TestServer::start_with(Limits {
        handshake_timeout: handshake,
        ..test_limits()
    })
    .await;
    let hello = client_hello(&server);
    let limit = handshake + DEADLINE;

    // One client connects and says nothing; another trickles a real ClientHello, a byte every
    // 100 ms (it would need seconds to finish it).
    let silent = async {
        let start = Instant::now();
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let (mut rd, _wr) = tcp.split();
        let closed = drain_until_closed(&mut rd, limit).await;
        (start, closed)
    };
    let trickling = async {
        let start = Instant::now();
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let (mut rd, mut wr) = tcp.split();
        let mut sent = 0;
        let closed = tokio::select! {
            c = drain_until_closed(&mut rd, limit) => c,
            () = trickle(&mut wr, &hello, Duration::from_millis(100), &mut sent) => unreachable!(),
        };
        (start, closed, sent)
    };
    let ((start1, silent), (start2, trickled, sent)) = tokio::join!(silent, trickling);

    for (what, start, closed) in [("silent", start1, silent), ("trickling", start2, trickled)] {
        let (bytes, at) = closed.unwrap_or_else(|| panic!("{what}: still open after {limit:?}"));
        let took = at - start;
        eprintln!(
            "{what} client before TLS: closed after {took:?} (handshake timeout {handshake:?})"
        );
        assert!(bytes.is_empty(), "{what}: the server sent {bytes:?}");
        assert_timed_out(what, took, handshake);
    }
    assert!(
        (2..hello.len()).contains(&sent),
        "the trickle sent {sent} of {} bytes",
        hello.len()
    );
    assert_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_after_tls_is_cut_at_the_login_idle_and_stall_timeouts() {
    let _shared = MEASURING.read().await;
    // Distinct values, so that each cut shows which timer made it.
    let login = Duration::from_millis(400);
    let idle = Duration::from_millis(700);
    let stall = Duration::from_millis(1000);
    let server = TestServer::start_with(Limits {
        login_timeout: login,
        idle_timeout: idle,
        stall_timeout: stall,
        ..test_limits()
    })
    .await;
    let every = Duration::from_millis(100);
    let limit = stall + DEADLINE;
    let hello = message_frame(&ClientMessage::Hello {
        versions: vec![PROTOCOL_VERSION],
        software: "slowloris".into(),
    });

    // TLS done, then nothing.
    let silent = async {
        let start = Instant::now();
        let mut raw = server.raw().await;
        (start, until_closed(&mut raw.reader, limit).await)
    };
    // TLS done, then the hello frame a byte at a time.
    let slow_hello = async {
        let start = Instant::now();
        let mut raw = server.raw().await;
        let mut sent = 0;
        let closed = tokio::select! {
            c = until_closed(&mut raw.reader, limit) => c,
            () = trickle(raw.writer.get_mut(), &hello, every, &mut sent) => unreachable!(),
        };
        assert!(sent < hello.len(), "the whole hello went through");
        (start, closed)
    };
    // Logged in, then a request frame a byte at a time.
    let slow_request = async {
        let mut raw = server.raw().await;
        raw.hello().await;
        // The idle timer starts after the server has read the login: later than this.
        let start = Instant::now();
        raw.send(&login_msg(1, "alice", "alice-pw")).await;
        assert!(matches!(raw.recv().await, ServerMessage::Ok { id: 1, .. }));
        let stat = message_frame(&ClientMessage::Stat {
            id: 2,
            path: "/".into(),
        });
        let mut sent = 0;
        let closed = tokio::select! {
            c = until_closed(&mut raw.reader, limit) => c,
            () = trickle(raw.writer.get_mut(), &stat, every, &mut sent) => unreachable!(),
        };
        (start, closed)
    };
    // An upload whose data stops after 1 KiB of 64 KiB.
    let stalled_upload = async {
        let mut raw = server.raw().await;
        raw.login("alice", "alice-pw").await;
        // Before the request: the server's stall timer starts after it has read it.
        let start = Instant::now();
        raw.send(&put_msg(2, "/stalled.bin", 64 * 1024, false))
            .await;
        raw.send_data(&[7; 1024]).await;
        (start, until_closed(&mut raw.reader, limit).await)
    };
    // An upload whose one data frame comes a byte at a time.
    let trickled_upload = async {
        let mut raw = server.raw().await;
        raw.login("alice", "alice-pw").await;
        let start = Instant::now();
        raw.send(&put_msg(2, "/trickled.bin", 100, false)).await;
        let frame = frame_bytes(KIND_DATA, &[9; 100]);
        let mut sent = 0;
        let closed = tokio::select! {
            c = until_closed(&mut raw.reader, limit) => c,
            () = trickle(raw.writer.get_mut(), &frame, every, &mut sent) => unreachable!(),
        };
        (start, closed)
    };
    let (silent, slow_hello, slow_request, stalled_upload, trickled_upload) = tokio::join!(
        silent,
        slow_hello,
        slow_request,
        stalled_upload,
        trickled_upload
    );

    let timeout_error = |text: &'static str| {
        move |msgs: &[ServerMessage]| {
            matches!(msgs, [ServerMessage::Error { id: None, code: ErrorCode::Timeout, message }]
                if message == text)
        }
    };
    let nothing = |msgs: &[ServerMessage]| msgs.is_empty();
    type Check<'a> = &'a dyn Fn(&[ServerMessage]) -> bool;
    let cases: [(&str, _, Duration, Check); 5] = [
        (
            "silent after TLS",
            silent,
            login,
            &timeout_error("timed out"),
        ),
        (
            "trickled hello",
            slow_hello,
            login,
            &timeout_error("timed out"),
        ),
        (
            "trickled request",
            slow_request,
            idle,
            &timeout_error("idle too long"),
        ),
        ("stalled upload", stalled_upload, stall, &nothing),
        ("trickled data frame", trickled_upload, stall, &nothing),
    ];
    for (what, (start, closed), timeout, check) in cases {
        let (msgs, at) = closed.unwrap_or_else(|| panic!("{what}: still open after {limit:?}"));
        let took = at - start;
        eprintln!("{what}: closed after {took:?} (timeout {timeout:?}), sent {msgs:?}");
        assert!(
            check(&msgs),
            "{what}: unexpected messages before the close: {msgs:?}"
        );
        assert_timed_out(what, took, timeout);
    }

    // Neither upload appeared under its name or left a temp file; the stalled one is kept,
    // hidden, for resume (src/server/cmd/put.rs), the trickled one had no data to keep.
    let home = server.home("alice");
    assert!(!home.join("stalled.bin").exists());
    assert!(!home.join("trickled.bin").exists());
    assert_eq!(server_temps(&home), Vec::<String>::new());
    assert_eq!(kept_partials(&home), vec![1024]);
    assert_serves(&server).await;
}

// ---------------------------------------------------------------------------------------------
// Not TLS at all, and the wrong TLS
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_http_and_garbage_are_closed_at_once() {
    let _shared = MEASURING.read().await;
    // The default 10 s handshake timeout: these must go long before it.
    let server = TestServer::start().await;
    assert_eq!(Limits::default().handshake_timeout, Duration::from_secs(10));
    let inputs: [(&str, Vec<u8>); 3] = [
        (
            "plain text",
            b"USER anonymous\r\nPASS guest\r\nget /etc/passwd\r\n".to_vec(),
        ),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("4 KiB of garbage", pseudo_random(4096, 3)),
    ];
    let addr = server.addr;
    let mut probes = JoinSet::new();
    for (what, bytes) in inputs {
        probes.spawn(async move {
            let start = Instant::now();
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            let (mut rd, mut wr) = tcp.split();
            // The server may close on the first bytes; later writes may fail.
            let _ = wr.write_all(&bytes).await;
            let closed = drain_until_closed(&mut rd, DEADLINE).await;
            (what, start, closed)
        });
    }
    let results = probes.join_all().await;
    for (what, start, closed) in results {
        let (back, at) = closed.unwrap_or_else(|| panic!("{what}: still open after {DEADLINE:?}"));
        let took = at - start;
        eprintln!("{what} instead of TLS: closed after {took:?}, got back {back:02x?}");
        assert!(took < AT_ONCE, "{what}: closed only after {took:?}");
        assert!(
            only_tls_alerts(&back),
            "{what}: the server sent something other than TLS alerts: {back:02x?}"
        );
    }
    assert_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_only_client_is_refused() {
    let _shared = MEASURING.read().await;
    let server = TestServer::start().await;
    let tls12 = tls_config(&server, &[&rustls::version::TLS12]);
    let start = Instant::now();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let result = tokio::time::timeout(DEADLINE, connector(tls12).connect(server_name(), tcp))
        .await
        .expect("a TLS 1.2 handshake hung");
    let Err(err) = result else {
        panic!("a TLS 1.2-only client completed a handshake");
    };
    eprintln!("TLS 1.2-only client: {err} after {:?}", start.elapsed());
    let alert = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(
        matches!(
            alert,
            Some(rustls::Error::AlertReceived(
                rustls::AlertDescription::ProtocolVersion
            ))
        ),
        "expected a protocol_version alert, got {err}"
    );
    assert!(start.elapsed() < AT_ONCE);

    // Control: the same client allowed TLS 1.3 as well gets in, with TLS 1.3.
    let both = tls_config(&server, &[&rustls::version::TLS12, &rustls::version::TLS13]);
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = connector(both).connect(server_name(), tcp).await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let mut raw = raw_of(tls);
    raw.login("alice", "alice-pw").await;
    assert_serves(&server).await;
}

// ---------------------------------------------------------------------------------------------
// Caps
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_caps_are_closed_at_accept() {
    let _shared = MEASURING.read().await;
    let server = TestServer::start_with(Limits {
        max_connections: 4,
        max_connections_per_source: 2,
        ..test_limits()
    })
    .await;
    let tls = server.client_tls();
    let addr = server.addr;
    let ip = |last: u8| Ipv4Addr::new(127, 0, 0, last);

    // Per source: two from 127.0.0.1, the third is closed at once; 127.0.0.2 still gets in.
    let local1 = admitted(addr, LOCAL, &tls).await;
    let local2 = admitted(addr, LOCAL, &tls).await;
    refused(addr, LOCAL, &tls, "a third connection from 127.0.0.1").await;
    let other = admitted(addr, ip(2), &tls).await;
    // In total: a fourth connection (from a fresh source) gets in, a fifth does not.
    let fourth = admitted(addr, ip(3), &tls).await;
    refused(addr, ip(4), &tls, "a fifth connection in all").await;
    refused(
        addr,
        LOCAL,
        &tls,
        "a third connection from 127.0.0.1 at the total cap",
    )
    .await;

    // Slots come back when connections close.
    close(fourth).await;
    let fifth = admitted_eventually(addr, ip(4), &tls).await;
    refused(addr, ip(5), &tls, "a fifth connection in all, again").await;
    close(local1).await;
    close(other).await;
    let local3 = admitted_eventually(addr, LOCAL, &tls).await;
    refused(
        addr,
        LOCAL,
        &tls,
        "a third connection from 127.0.0.1, again",
    )
    .await;

    // Everyone admitted is actually served.
    for mut raw in [local2, local3, fifth] {
        raw.send(&login_msg(1, "bob", "bob-pw")).await;
        assert!(matches!(raw.recv().await, ServerMessage::Ok { id: 1, .. }));
        close(raw).await;
    }
    serves(&server, DEADLINE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_the_per_user_cap_get_busy() {
    let _shared = MEASURING.read().await;
    let server = TestServer::start_with(Limits {
        max_sessions_per_user: 2,
        ..test_limits()
    })
    .await;
    let mut first = server.raw().await;
    first.login("alice", "alice-pw").await;
    let mut second = server.raw().await;
    second.login("alice", "alice-pw").await;

    let mut third = server.raw().await;
    third.hello().await;
    third.send(&login_msg(1, "alice", "alice-pw")).await;
    match third.recv().await {
        ServerMessage::Error {
            id: Some(1),
            code: ErrorCode::Busy,
            message,
        } => eprintln!("third session: busy: {message}"),
        other => panic!("a third session of alice got {other:?}"),
    }
    let closed = until_closed(&mut third.reader, DEADLINE).await;
    assert!(
        matches!(closed, Some((ref m, _)) if m.is_empty()),
        "{closed:?}"
    );

    // Other users are not affected; the two sessions still work.
    let mut bob = server.raw().await;
    bob.login("bob", "bob-pw").await;
    for raw in [&mut first, &mut second, &mut bob] {
        raw.send(&ClientMessage::Stat {
            id: 5,
            path: "/".into(),
        })
        .await;
        assert!(matches!(raw.recv().await, ServerMessage::Ok { id: 5, .. }));
    }
    // The slot comes back when a session ends.
    close(first).await;
    let start = Instant::now();
    let mut again = loop {
        let mut raw = server.raw().await;
        raw.hello().await;
        raw.send(&login_msg(1, "alice", "alice-pw")).await;
        match raw.recv().await {
            ServerMessage::Ok { id: 1, .. } => break raw,
            ServerMessage::Error {
                code: ErrorCode::Busy,
                ..
            } if start.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("alice after one session ended: {other:?}"),
        }
    };
    again
        .send(&ClientMessage::Stat {
            id: 2,
            path: "/".into(),
        })
        .await;
    assert!(matches!(
        again.recv().await,
        ServerMessage::Ok { id: 2, .. }
    ));
    close(again).await;
    close(second).await;
    close(bob).await;
    serves(&server, DEADLINE).await;
}

// ---------------------------------------------------------------------------------------------
// Two uploads to one path
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_to_one_path_never_mix() {
    let _shared = MEASURING.read().await;
    let server = TestServer::start().await;
    let home = server.home("alice");
    const SIZE: usize = 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    for round in 0..6u8 {
        let overwrite = round % 2 == 1;
        let path = format!("race-{round}.bin");
        if overwrite {
            // Something to replace.
            std::fs::write(server.home_file("alice", &path), b"old content").unwrap();
        }
        let a = pseudo_random(SIZE, 100 + u64::from(round));
        let b = pseudo_random(SIZE, 200 + u64::from(round));
        let mut ra = server.raw().await;
        ra.login("alice", "alice-pw").await;
        let mut rb = server.raw().await;
        rb.login("alice", "alice-pw").await;
        let remote = format!("/{path}");
        ra.send(&put_msg(10, &remote, SIZE as u64, overwrite)).await;
        rb.send(&put_msg(20, &remote, SIZE as u64, overwrite)).await;
        for (ca, cb) in a.chunks(CHUNK).zip(b.chunks(CHUNK)) {
            ra.send_data(ca).await;
            rb.send_data(cb).await;
        }
        // Both are past their checks and writing temp files: the race is at the commit.
        eventually("both uploads have temp files", || {
            server_temps(&home).len() == 2
        })
        .await;
        let end_a = ClientMessage::End {
            id: 10,
            sha256: sha256_hex(&a),
        };
        let end_b = ClientMessage::End {
            id: 20,
            sha256: sha256_hex(&b),
        };
        tokio::join!(ra.send(&end_a), rb.send(&end_b));
        let (reply_a, reply_b) = tokio::join!(ra.recv(), rb.recv());
        let stored = std::fs::read(home.join(&path)).unwrap();
        assert_eq!(stored.len(), SIZE, "round {round}: a mixed or partial file");
        let winner = if stored == a {
            "a"
        } else if stored == b {
            "b"
        } else {
            panic!("round {round}: the file is neither upload: mixed content");
        };
        let ok_with = |reply: &ServerMessage, data: &[u8]| {
            matches!(reply, ServerMessage::Ok { size: Some(s), sha256: Some(d), .. }
                if *s == SIZE as u64 && *d == sha256_hex(data))
        };
        let exists = |reply: &ServerMessage| {
            matches!(
                reply,
                ServerMessage::Error {
                    code: ErrorCode::AlreadyExists,
                    ..
                }
            )
        };
        if overwrite {
            // Both commit; the later rename wins whole.
            assert!(ok_with(&reply_a, &a), "round {round}: {reply_a:?}");
            assert!(ok_with(&reply_b, &b), "round {round}: {reply_b:?}");
        } else if winner == "a" {
            assert!(ok_with(&reply_a, &a), "round {round}: {reply_a:?}");
            assert!(exists(&reply_b), "round {round}: loser got {reply_b:?}");
        } else {
            assert!(ok_with(&reply_b, &b), "round {round}: {reply_b:?}");
            assert!(exists(&reply_a), "round {round}: loser got {reply_a:?}");
        }
        eprintln!("round {round} (overwrite {overwrite}): {winner} won");
        eventually("the loser's temp file is gone", || {
            server_temps(&home).is_empty()
        })
        .await;
        close(ra).await;
        close(rb).await;
    }
    assert_serves(&server).await;
}

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_names_are_distinct_files() {
    let _shared = MEASURING.read().await;
    let server = TestServer::start().await;
    let top = names_in(server.dir());
    let mut conn = server.alice().await;
    let local = tempfile::tempdir().unwrap();
    let files: [(&str, &[u8]); 5] = [
        // é precomposed (NFC) and e + combining acute (NFD): equal to a human, not to the disk.
        ("caf\u{e9}.txt", b"precomposed"),
        ("cafe\u{301}.txt", b"decomposed"),
        // Fullwidth full stops look like `..`; division slashes look like `/`.
        ("\u{ff0e}\u{ff0e}", b"fullwidth dots"),
        ("\u{2215}etc\u{2215}passwd", b"division slashes"),
        ("\u{ff0e}\u{ff0e}\u{2215}x", b"both"),
    ];
    for (i, (name, data)) in files.iter().enumerate() {
        let src = local.path().join(format!("src{i}"));
        std::fs::write(&src, data).unwrap();
        // Without overwrite: a name that aliased an earlier one would be refused.
        conn.put(&src, &format!("/{name}"), false, &mut no_progress())
            .await
            .unwrap_or_else(|e| panic!("put {name:?}: {e}"));
    }
    let mut expected: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
    expected.sort();
    assert_eq!(visible(&server.home("alice")), expected);
    let mut listed: Vec<String> = conn
        .list("/")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    listed.sort();
    assert_eq!(listed, expected);
    for (i, (name, data)) in files.iter().enumerate() {
        let remote = format!("/{name}");
        assert_eq!(conn.stat(&remote).await.unwrap().size, data.len() as u64);
        let dst = local.path().join(format!("dst{i}"));
        conn.get(&remote, &dst, false, &mut no_progress())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), *data, "{name:?}");
    }
    // Removing one form leaves the other.
    conn.remove("/caf\u{e9}.txt").await.unwrap();
    let dst = local.path().join("after-remove");
    conn.get("/cafe\u{301}.txt", &dst, false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), b"decomposed");
    // A directory in one form is not reachable in the other.
    conn.mkdir("/r\u{e9}sum\u{e9}").await.unwrap();
    let src = local.path().join("src0");
    let err = conn
        .put(&src, "/re\u{301}sume\u{301}/x", false, &mut no_progress())
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::NotFound), "{err}");
    conn.put(&src, "/r\u{e9}sum\u{e9}/x", false, &mut no_progress())
        .await
        .unwrap();
    assert!(server.home("alice").join("r\u{e9}sum\u{e9}/x").is_file());
    conn.close().await.unwrap();
    // Nothing appeared beside the data root (no `etc`, no `x` one level up).
    assert_eq!(names_in(server.dir()), top);
    assert_eq!(names_in(&server.root), vec!["alice".to_string()]);
    assert_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_link_planted_in_the_home_never_changes_the_outside_file() {
    let _shared = MEASURING.read().await;
    let server = TestServer::start().await;
    let outside = server.dir().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let secret = outside.join("secret.txt");
    std::fs::write(&secret, b"the outside file").unwrap();
    let before = std::fs::metadata(&secret).unwrap();
    let mut conn = server.alice().await;
    let home = server.home("alice");
    let local = tempfile::tempdir().unwrap();
    let new_data = local.path().join("new");
    std::fs::write(&new_data, b"new content from the client").unwrap();
    let plant = |name: &str| {
        if let Err(e) = std::fs::hard_link(&secret, home.join(name)) {
            panic!("cannot plant a hard link: {e}");
        }
    };
    let outside_unchanged = |when: &str| {
        let now = std::fs::metadata(&secret).unwrap();
        assert_eq!(
            std::fs::read(&secret).unwrap(),
            b"the outside file",
            "{when}"
        );
        assert_eq!(
            now.ino(),
            before.ino(),
            "{when}: the outside file was replaced"
        );
        assert_eq!(
            (now.mtime(), now.mtime_nsec()),
            (before.mtime(), before.mtime_nsec()),
            "{when}: the outside file was modified"
        );
        assert_eq!(now.mode(), before.mode(), "{when}");
    };

    // A hard link is the same file: the admin (or whoever has a shell there) put it in the
    // home, and reading it gives its content. That is documented, not a leak of the jail.
    plant("hl");
    let dst = local.path().join("hl");
    conn.get("/hl", &dst, false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dst).unwrap(), b"the outside file");

    // Without overwrite: refused. With it: the name is replaced, the shared inode is not
    // written to.
    let err = conn
        .put(&new_data, "/hl", false, &mut no_progress())
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::AlreadyExists), "{err}");
    outside_unchanged("after a refused put");
    conn.put(&new_data, "/hl", true, &mut no_progress())
        .await
        .unwrap();
    outside_unchanged("after put -f onto the link");
    assert_eq!(
        std::fs::read(home.join("hl")).unwrap(),
        b"new content from the client"
    );
    assert_ne!(
        std::fs::metadata(home.join("hl")).unwrap().ino(),
        before.ino()
    );
    assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);

    // A server-side copy onto a link, a rename over one, and a remove: names only.
    plant("hl2");
    conn.copy("/hl", "/hl2", true).await.unwrap();
    outside_unchanged("after copy -f onto the link");
    plant("hl3");
    conn.rename("/hl2", "/hl3", true).await.unwrap();
    outside_unchanged("after rename -f onto the link");
    plant("hl4");
    conn.remove("/hl4").await.unwrap();
    outside_unchanged("after removing the link");
    assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
    assert_eq!(names_in(&outside), vec!["secret.txt".to_string()]);
    conn.close().await.unwrap();
    assert_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subdirectory_swapped_for_a_symlink_during_1000_transfers() {
    let _shared = MEASURING.read().await;
    let server = TestServer::start().await;
    let home = server.home("alice");
    let sub = home.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    for i in 0..10 {
        std::fs::write(sub.join(format!("s{i}")), format!("inside {i}")).unwrap();
    }
    // Outside the data root, with the same names as inside, so that a leak would succeed.
    let outside = server.dir().join("outside");
    std::fs::create_dir_all(outside.join("nested")).unwrap();
    for i in 0..10 {
        std::fs::write(outside.join(format!("s{i}")), format!("outside {i}")).unwrap();
    }
    std::fs::write(outside.join("nested/deep"), b"deep").unwrap();
    std::fs::write(server.home_file("bob", "bob.txt"), b"bob's").unwrap();
    let outside_before = snapshot(&outside);
    let bob_before = snapshot(&server.home("bob"));
    let top_before = names_in(server.dir());

    let mut conn = server.alice().await;
    let local = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, sub) = (Arc::clone(&stop), sub.clone());
        // Absolute and relative links, to the outside directory and to bob's home.
        let targets = [
            outside.clone(),
            PathBuf::from("../../outside"),
            PathBuf::from("../bob"),
        ];
        std::thread::spawn(move || {
            let aside = sub.with_file_name("sub.real");
            let mut swaps = 0usize;
            while !stop.load(Ordering::Relaxed) {
                std::fs::rename(&sub, &aside).unwrap();
                symlink(&targets[swaps % targets.len()], &sub).unwrap();
                std::thread::sleep(Duration::from_micros(300));
                std::fs::remove_file(&sub).unwrap();
                std::fs::rename(&aside, &sub).unwrap();
                std::thread::sleep(Duration::from_micros(300));
                swaps += 1;
            }
            swaps
        })
    };

    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let mut count = |r: Result<(), &ClientError>| {
        let key = match r {
            Ok(()) => "ok".to_string(),
            Err(e) => format!(
                "{:?}",
                code_of(e).unwrap_or_else(|| panic!("not a refusal: {e}"))
            ),
        };
        *codes.entry(key).or_default() += 1;
    };
    let mut committed = Vec::new();
    let mut transfers = 0;
    for round in 0..4 {
        // 100 uploads, 100 downloads and 50 stats per round, pipelined where the client can.
        let puts: Vec<(PathBuf, String)> = (0..100)
            .map(|i| {
                let n = round * 100 + i;
                let src = local.path().join(format!("p{n}"));
                std::fs::write(&src, format!("upload {n}")).unwrap();
                (src, format!("/sub/p{n}"))
            })
            .collect();
        let mut results = Vec::new();
        conn.put_many(&puts, false, &mut no_progress(), &mut |i, r| {
            results.push((i, r))
        })
        .await
        .expect("the connection broke during the uploads");
        for (i, r) in &results {
            count(r.as_ref().map(|_| ()));
            if r.is_ok() {
                committed.push(round * 100 + i);
            }
        }
        let gets: Vec<(String, PathBuf)> = (0..100)
            .map(|i| {
                (
                    format!("/sub/s{}", i % 10),
                    local.path().join(format!("g{i}")),
                )
            })
            .collect();
        let mut results = Vec::new();
        conn.get_many(&gets, true, &mut no_progress(), &mut |i, r| {
            results.push((i, r))
        })
        .await
        .expect("the connection broke during the downloads");
        for (i, r) in &results {
            count(r.as_ref().map(|_| ()));
            if r.is_ok() {
                let got = std::fs::read(&gets[*i].1).unwrap();
                assert_eq!(
                    got,
                    format!("inside {}", i % 10).into_bytes(),
                    "a download leaked"
                );
            }
        }
        for i in 0..50 {
            let r = conn.stat(&format!("/sub/s{}", i % 10)).await;
            if let Ok(e) = &r {
                assert_eq!(e.size, "inside 0".len() as u64);
            }
            count(r.as_ref().map(|_| ()));
        }
        transfers += 250;
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().expect("the swapper failed");
    eprintln!("{transfers} transfers during {swaps} swaps: {codes:?}");
    assert_eq!(transfers, 1000);
    assert_eq!(codes.values().sum::<usize>(), 1000);
    let allowed: BTreeSet<&str> = ["ok", "PermissionDenied", "NotFound"].into();
    assert!(
        codes.keys().all(|k| allowed.contains(k.as_str())),
        "unexpected outcomes: {codes:?}"
    );
    assert!(swaps >= 20, "only {swaps} swaps happened");

    // Zero accesses outside: the outside directory and bob's home are as they were (names,
    // contents, modes and mtimes, directories included), nothing new beside the data root.
    assert_eq!(
        snapshot(&outside),
        outside_before,
        "the outside directory changed"
    );
    assert_eq!(
        snapshot(&server.home("bob")),
        bob_before,
        "bob's home changed"
    );
    assert_eq!(names_in(server.dir()), top_before);
    // Inside: every committed upload is in the real directory, whole; nothing else is.
    assert!(sub.is_dir() && !sub.is_symlink());
    for n in &committed {
        let got = std::fs::read(sub.join(format!("p{n}"))).unwrap();
        assert_eq!(got, format!("upload {n}").into_bytes());
    }
    let stored = names_in(&sub)
        .into_iter()
        .filter(|n| n.starts_with('p'))
        .count();
    assert_eq!(stored, committed.len());
    assert_eq!(server_temps(&sub), Vec::<String>::new());
    assert_eq!(server_temps(&home), Vec::<String>::new());
    conn.close().await.unwrap();
    assert_serves(&server).await;
}

// ---------------------------------------------------------------------------------------------
// Password guessing: memory and timing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flood_memory_is_bounded_by_the_argon2_permits() {
    let _alone = MEASURING.write().await;
    const FLOOD: usize = 1000;
    const PERMITS: usize = 2;
    // What the process may grow by besides the argon2 blocks: the transferring session's
    // buffers (1 MiB file, 256 KiB chunks on both ends, TLS records), the login and reply
    // buffers of 1,000 sessions, stacks of blocking threads, and allocator slack.
    const MARGIN_KIB: u64 = 32 * 1024;
    let server = TestServer::start_with(Limits {
        auth_concurrency: PERMITS,
        // Queued logins give up with `busy` after this; the flood is over in seconds.
        auth_queue_timeout: Duration::from_secs(2),
        max_connections: FLOOD + 50,
        // All of them wait for their login at once; that is this test's subject, not the
        // pre-login cap (tests/prelogin.rs).
        startups: ferry::server::prelogin::Startups {
            start: FLOOD + 50,
            full: FLOOD + 50,
            ..Default::default()
        },
        handshake_timeout: Duration::from_secs(60),
        login_timeout: Duration::from_secs(60),
        ..test_limits()
    })
    .await;
    // The target: a user with the production parameters, so every check takes ~19 MiB.
    add_victim(&server);

    // A session that is transferring while the flood comes.
    let big = random_file(&server.home_file("alice", "big.bin"), 1024 * 1024, 42);
    let mut alice = server.alice().await;
    let local = tempfile::tempdir().unwrap();

    // 1,000 connections, TLS and hello done, from 249 addresses (at most 5 from each, under
    // the per-source cap of 20).
    let tls = server.client_tls();
    let addr = server.addr;
    let rss_idle = status_kib("VmRSS");
    let opened = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut set = JoinSet::new();
    for i in 0..FLOOD {
        let ip = Ipv4Addr::new(127, 0, 0, 2 + (i % 249) as u8);
        let (tls, gate) = (Arc::clone(&tls), Arc::clone(&gate));
        set.spawn(async move {
            let _turn = gate.acquire_owned().await.unwrap();
            admitted(addr, ip, &tls).await
        });
    }
    let raws = set.join_all().await;
    let rss_connected = status_kib("VmRSS");
    eprintln!(
        "{FLOOD} connections open in {:?}: RSS {rss_idle} -> {rss_connected} KiB",
        opened.elapsed()
    );

    // Measure from here: the peak is reset to the current RSS.
    let base = reset_peak_rss();
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = {
        let flooding = Arc::clone(&flooding);
        async move {
            let start = Instant::now();
            let mut set = JoinSet::new();
            for mut raw in raws {
                set.spawn(async move {
                    let sent = Instant::now();
                    raw.send(&login_msg(1, "victim", "wrong password")).await;
                    let reply = raw.recv().await;
                    (reply, sent.elapsed())
                });
            }
            let replies = set.join_all().await;
            flooding.store(false, Ordering::SeqCst);
            (replies, start.elapsed())
        }
    };
    let transfers = async {
        let mut done = 0;
        let dst = local.path().join("big.bin");
        while flooding.load(Ordering::SeqCst) {
            let start = Instant::now();
            let got = tokio::time::timeout(
                DEADLINE,
                alice.get("/big.bin", &dst, true, &mut no_progress()),
            )
            .await
            .expect("a 1 MiB download stalled during the login flood")
            .unwrap();
            assert_eq!(got.sha256, sha256_hex(&big));
            done += 1;
            eprintln!("1 MiB download during the flood: {:?}", start.elapsed());
        }
        done
    };
    let ((replies, took), downloads) = tokio::join!(flood, transfers);
    let peak = status_kib("VmHWM");

    let mut failed = 0;
    let mut busy = 0;
    let mut slowest = Duration::ZERO;
    for (reply, t) in &replies {
        slowest = slowest.max(*t);
        match reply {
            ServerMessage::Error {
                id: Some(1),
                code: ErrorCode::AuthFailed,
                ..
            } => failed += 1,
            ServerMessage::Error {
                id: Some(1),
                code: ErrorCode::Busy,
                ..
            } => busy += 1,
            other => panic!("a flood login got {other:?}"),
        }
    }
    let growth = peak.saturating_sub(base);
    let bound = PERMITS as u64 * ARGON2_KIB + MARGIN_KIB;
    eprintln!(
        "login flood: {FLOOD} attempts in {took:?} (slowest reply {slowest:?}): \
         {failed} checked and refused, {busy} busy; {downloads} downloads meanwhile; \
         peak RSS {base} -> {peak} KiB, growth {growth} KiB, bound {bound} KiB \
         ({PERMITS} x {ARGON2_KIB} + {MARGIN_KIB})"
    );
    assert_eq!(failed + busy, FLOOD);
    assert!(
        failed >= PERMITS,
        "hardly any password was checked: {failed}"
    );
    assert!(downloads >= 1, "no download completed during the flood");
    assert!(
        growth <= bound,
        "peak RSS grew by {growth} KiB during the flood; bound {bound} KiB. (If it holds with \
         MALLOC_MMAP_THRESHOLD_=131072, the permits do bound the argon2 work, but glibc's \
         dynamic mmap threshold serves each freed 19 MiB block from the heap again, where \
         fragmentation keeps it resident: give argon2 memory from a pool of permit-sized \
         buffers instead.)"
    );

    // The right password still works, with its production hash, and others are served.
    let victim = server.connect("victim", "victim-pw").await;
    victim.close().await.unwrap();
    alice.close().await.unwrap();
    assert_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_and_wrong_password_are_identical_in_bytes_and_time() {
    let _shared = MEASURING.read().await;
    const TRIES: usize = 200;
    let server = TestServer::start_with(Limits {
        max_auth_attempts: 10 * TRIES as u32,
        login_timeout: Duration::from_secs(600),
        ..test_limits()
    })
    .await;
    // Every user of this file has the production parameters, so the dummy hash (made with the
    // file's most common ones, UserDb::dummy_hash) has them too.
    let file = server.dir().join("production-users.toml");
    for (name, password) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
        let hash = users::hash_password(&Password::new(password.into())).unwrap();
        users::add_user(&file, name, &hash, None, false).unwrap();
    }
    server.server.replace_users(UserDb::load(&file).unwrap());

    // On a shared machine a burst of load can skew one run; the bound stays 10%, but a run
    // may be repeated twice.
    let mut runs = Vec::new();
    for run in 1..=3 {
        let (unknown, wrong) = login_timings(&server, TRIES).await;
        let (mu, mw) = (median(&unknown), median(&wrong));
        let diff = mu.abs_diff(mw).as_secs_f64() / mu.max(mw).as_secs_f64();
        eprintln!(
            "run {run}: {TRIES} tries each; median unknown user {mu:?}, wrong password {mw:?} \
             ({:.1}% apart)",
            diff * 100.0
        );
        // Control: both paid for argon2 with the production parameters.
        assert!(mu > Duration::from_millis(3) && mw > Duration::from_millis(3));
        runs.push(diff);
        if diff <= 0.10 {
            break;
        }
    }
    assert!(
        runs.last().is_some_and(|d| *d <= 0.10),
        "medians more than 10% apart in every run: {runs:?}"
    );
    assert_serves(&server).await;
}

/// `tries` logins of an unknown user and as many with a wrong password, interleaved (the order
/// within each pair alternates) on one connection; the two replies of each pair must be
/// byte-identical. Returns the reply times.
async fn login_timings(server: &TestServer, tries: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut raw = server.raw().await;
    raw.hello().await;
    let mut timed = async |id: u64, user: &str| {
        let start = Instant::now();
        raw.send(&login_msg(id, user, "not-the-password")).await;
        let bytes = raw.recv_bytes().await;
        (bytes, start.elapsed())
    };
    for id in 0..3 {
        // Warm-up: caches, the blocking pool's threads.
        timed(id, "ghost").await;
        timed(id, "alice").await;
    }
    let (mut unknown, mut wrong) = (Vec::new(), Vec::new());
    for i in 0..tries {
        let id = 100 + i as u64;
        let (u, w) = if i % 2 == 0 {
            let u = timed(id, "ghost").await;
            (u, timed(id, "alice").await)
        } else {
            let w = timed(id, "alice").await;
            (timed(id, "ghost").await, w)
        };
        assert_eq!(
            String::from_utf8_lossy(&u.0),
            String::from_utf8_lossy(&w.0),
            "try {i}: the replies differ"
        );
        unknown.push(u.1);
        wrong.push(w.1);
    }
    let reply: serde_json::Value = serde_json::from_slice(&timed(1, "ghost").await.0).unwrap();
    assert_eq!(reply["code"], "auth_failed");
    (unknown, wrong)
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_uploads_finish_within_the_grace_period_and_no_longer() {
    let _shared = MEASURING.read().await;
    let grace = Duration::from_millis(1500);
    let limits = Limits {
        shutdown_grace: grace,
        ..test_limits()
    };
    let mut server = TestServer::start_with(limits.clone()).await;
    // Kept here: the server's own handle would delete the world when it is dropped.
    let world = server.dir.take().unwrap();
    let home = server.home("alice");
    let chunk = 64 * 1024;

    // Committed before the shutdown.
    let mut conn = server.alice().await;
    let local = tempfile::tempdir().unwrap();
    let mut committed = Vec::new();
    for i in 0..3 {
        let src = local.path().join(format!("c{i}"));
        let data = random_file(&src, 100_000 + i, i as u64);
        conn.put(
            &src,
            &format!("/committed-{i}.bin"),
            false,
            &mut no_progress(),
        )
        .await
        .unwrap();
        committed.push(data);
    }
    conn.close().await.unwrap();

    let mut idle = server.raw().await;
    idle.login("alice", "alice-pw").await;
    // Finishes about 0.5 s after the signal: within the grace period.
    let quick = pseudo_random(16 * chunk, 1);
    let mut u1 = server.raw().await;
    u1.login("alice", "alice-pw").await;
    u1.send(&put_msg(1, "/quick.bin", quick.len() as u64, false))
        .await;
    u1.send_data(&quick[..chunk]).await;
    // Would need half a minute: still running when the grace period is over.
    let mut u2 = server.raw().await;
    u2.login("alice", "alice-pw").await;
    u2.send(&put_msg(1, "/slow.bin", 64 * 1024 * 1024, false))
        .await;
    u2.send_data(&vec![2; chunk]).await;
    eventually("both uploads have temp files", || {
        server_temps(&home).len() == 2
    })
    .await;

    let signalled = Instant::now();
    let stopping = async {
        server.stop().await;
        Instant::now()
    };
    let idle_session = async { until_closed(&mut idle.reader, DEADLINE).await };
    let quick_upload = async {
        for part in quick[chunk..].chunks(chunk) {
            tokio::time::sleep(Duration::from_millis(30)).await;
            u1.send_data(part).await;
        }
        u1.send(&ClientMessage::End {
            id: 1,
            sha256: sha256_hex(&quick),
        })
        .await;
        let reply = u1.recv().await;
        let finished = Instant::now();
        (
            reply,
            finished,
            until_closed(&mut u1.reader, DEADLINE).await,
        )
    };
    let slow_upload = async {
        let Raw { reader, writer } = &mut u2;
        let feed = async {
            loop {
                tokio::time::sleep(Duration::from_millis(30)).await;
                writer.queue_data(&vec![2; chunk]).unwrap();
                if writer.flush().await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            c = until_closed(reader, grace + SLACK) => c,
            () = feed => unreachable!(),
        }
    };
    let (stopped, idle_closed, (quick_reply, quick_done, quick_closed), slow_closed) =
        tokio::join!(stopping, idle_session, quick_upload, slow_upload);

    // The idle session is told and closed at once.
    let (msgs, at) = idle_closed.expect("the idle session was not closed");
    eprintln!("idle session closed {:?} after the signal", at - signalled);
    assert!(is_shutting_down(&msgs), "idle session got {msgs:?}");
    assert!(at - signalled < AT_ONCE, "{:?}", at - signalled);
    // The upload in flight completes, then its session is closed the same way.
    assert!(
        matches!(&quick_reply, ServerMessage::Ok { sha256: Some(d), .. } if *d == sha256_hex(&quick)),
        "{quick_reply:?}"
    );
    eprintln!(
        "upload in flight finished {:?} after the signal",
        quick_done - signalled
    );
    let (msgs, _) = quick_closed.expect("the finished upload's session stayed open");
    assert!(is_shutting_down(&msgs), "{msgs:?}");
    // The upload still running when the grace period ends is cut off.
    eprintln!("server stopped {:?} after the signal", stopped - signalled);
    assert!(
        stopped - signalled >= grace,
        "the server did not wait for the upload"
    );
    // A session cut off at the end of the grace period reads what its client still sends for
    // up to a second (so that the reply saying why is not lost to a reset); this client
    // never stops sending.
    let linger = Duration::from_secs(1);
    assert!(stopped - signalled < grace + linger + SLACK);
    let Some((msgs, at)) = slow_closed else {
        panic!(
            "the upload still running when the {grace:?} grace period ended was not cut off: \
             its session is alive {:?} after the signal, although the server has stopped \
             (src/server/mod.rs `run` returns after the grace period without ending the \
             sessions still in its TaskTracker)",
            signalled.elapsed()
        );
    };
    eprintln!(
        "slow upload cut off {:?} after the signal: {msgs:?}",
        at - signalled
    );
    assert!(at - signalled < grace + SLACK);
    // Cut off like a client that vanished: told why, and kept for `reput`.
    assert!(
        matches!(&msgs[..], [ServerMessage::Error { id: Some(1), code: ErrorCode::Busy, message }]
            if message.contains("reput")),
        "{msgs:?}"
    );
    eventually("the slow upload's temp file is gone", || {
        server_temps(&home).is_empty()
    })
    .await;
    assert!(!home.join("slow.bin").exists());
    let kept = kept_partials(&home);
    assert!(
        kept.len() == 1 && kept[0] >= chunk as u64,
        "the upload cut off by the shutdown was not kept for reput: {kept:?}"
    );

    // Committed files are intact, and a server started on the same world serves.
    assert_eq!(std::fs::read(home.join("quick.bin")).unwrap(), quick);
    for (i, data) in committed.iter().enumerate() {
        assert_eq!(
            &std::fs::read(home.join(format!("committed-{i}.bin"))).unwrap(),
            data
        );
    }
    let server = TestServer::start_in(world, limits).await;
    assert_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_are_refused_at_once_during_the_grace_period() {
    let _shared = MEASURING.read().await;
    let grace = Duration::from_secs(2);
    let limits = Limits {
        shutdown_grace: grace,
        ..test_limits()
    };
    let mut server = TestServer::start_with(limits.clone()).await;
    let world = server.dir.take().unwrap();
    let (addr, tls) = (server.addr, server.client_tls());
    let home = server.home("alice");
    // An upload in flight keeps the server in its grace period.
    let mut upload = server.raw().await;
    upload.login("alice", "alice-pw").await;
    upload
        .send(&put_msg(1, "/slow.bin", 1024 * 1024, false))
        .await;
    upload.send_data(&[1; 1024]).await;
    eventually("the upload has a temp file", || {
        server_temps(&home).len() == 1
    })
    .await;
    let mut idle = server.raw().await;
    idle.login("alice", "alice-pw").await;

    let stopping = tokio::spawn(server.stop());
    // Once the idle session hears of the shutdown, the server has stopped accepting.
    let (msgs, _) = until_closed(&mut idle.reader, DEADLINE)
        .await
        .expect("the idle session was not closed");
    assert!(is_shutting_down(&msgs), "{msgs:?}");
    let start = Instant::now();
    let attempt = tokio::time::timeout(AT_ONCE, tls_from(addr, LOCAL, &tls)).await;
    let took = start.elapsed();
    match attempt {
        Ok(Err(e)) => eprintln!("a new connection during the grace period: {e} after {took:?}"),
        Ok(Ok(_)) => panic!("a new connection was admitted during the grace period"),
        Err(_) => panic!(
            "a new connection during the grace period hung for {took:?} instead of being \
             refused: the listening socket stays open (and its backlog accepts connections) \
             until src/server/mod.rs `run` returns after the grace period"
        ),
    }
    drop(upload);
    stopping.await.unwrap();
    let server = TestServer::start_in(world, limits).await;
    assert_serves(&server).await;
}

// ---------------------------------------------------------------------------------------------
// Per-source penalties
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_gets_its_source_refused_at_accept() {
    let _shared = MEASURING.read().await;
    // The production penalties: 5 s a failed login, a ban once more than 15 s have built up.
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let (addr, tls) = (server.addr, server.client_tls());
    let guesser = Ipv4Addr::new(127, 0, 0, 2);
    let (mut answered, mut refused_at_accept) = (0, 0);
    let mut conn: Option<(Raw, u32)> = None;
    let start = Instant::now();
    for guess in 0..100u64 {
        if conn.is_none() {
            match tls_from(addr, guesser, &tls).await {
                Ok(stream) => {
                    let mut raw = raw_of(stream);
                    raw.hello().await;
                    conn = Some((raw, 0));
                }
                Err(_) => {
                    refused_at_accept += 1;
                    continue;
                }
            }
        }
        let Some((raw, tries)) = conn.as_mut() else {
            unreachable!()
        };
        raw.send(&login_msg(guess, "alice", &format!("guess-{guess}")))
            .await;
        match raw.recv().await {
            ServerMessage::Error {
                code: ErrorCode::AuthFailed,
                ..
            } => answered += 1,
            other => panic!("guess {guess}: {other:?}"),
        }
        *tries += 1;
        if *tries == 3 {
            // The server closes after three failures on one connection.
            conn = None;
        }
    }
    let took = start.elapsed();
    eprintln!(
        "100 guesses from {guesser} in {took:?}: {answered} answered, {refused_at_accept} \
         refused at accept"
    );
    // The fourth failure bans (20 s > 15 s); the connection open at that moment may use up its
    // three attempts, no new one gets through.
    assert!(
        (4..=6).contains(&answered),
        "{answered} guesses were answered"
    );
    assert_eq!(answered + refused_at_accept, 100);
    assert!(took < DEADLINE, "the refusals were not cheap: {took:?}");
    // Refused before TLS: not even a ServerHello comes back.
    refused_before_tls(addr, guesser, &client_hello(&server), "the guesser").await;

    // Other addresses are unaffected, including one with the right password for the account
    // under attack.
    logs_in(
        admitted(addr, Ipv4Addr::new(127, 0, 0, 3), &tls).await,
        "alice",
        "alice-pw",
    )
    .await;
    assert_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_the_server_is_too_busy_to_check_costs_no_penalty() {
    let _shared = MEASURING.read().await;
    // One password check at a time, and queued logins give up at once: most of a burst of
    // logins with the right password is answered `busy`. That is the server's load, not the
    // client's fault; with the production penalties (grace exceeded: 10 s, ban over 15 s) two
    // such answers would ban an innocent source if they counted.
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        auth_concurrency: 1,
        auth_queue_timeout: Duration::from_millis(1),
        ..test_limits()
    })
    .await;
    add_victim(&server);
    let (addr, tls) = (server.addr, server.client_tls());
    let source = Ipv4Addr::new(127, 0, 0, 4);
    let mut raws = Vec::new();
    for _ in 0..8 {
        raws.push(admitted(addr, source, &tls).await);
    }
    let mut set = JoinSet::new();
    for mut raw in raws {
        set.spawn(async move {
            raw.send(&login_msg(1, "victim", "victim-pw")).await;
            let reply = raw.recv().await;
            close(raw).await;
            reply
        });
    }
    let mut busy = 0;
    for reply in set.join_all().await {
        match reply {
            ServerMessage::Ok { id: 1, .. } => {}
            ServerMessage::Error {
                code: ErrorCode::Busy,
                ..
            } => busy += 1,
            other => panic!("unexpected reply: {other:?}"),
        }
    }
    assert!(busy >= 2, "only {busy} of 8 logins were answered busy");
    // Still welcome: a new connection from the same address logs in.
    logs_in(
        admitted_eventually(addr, source, &tls).await,
        "victim",
        "victim-pw",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_penalty_expires_and_the_source_gets_in_again() {
    let _shared = MEASURING.read().await;
    // Two failures make 1 s of penalty, over the 700 ms threshold (if they come within 300 ms
    // of each other, which they do by far).
    let authfail = Duration::from_millis(500);
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig {
            authfail,
            noauth: Duration::from_millis(10),
            grace_exceeded: authfail,
            protocol_error: authfail,
            min_before_ban: Duration::from_millis(700),
            max: Duration::from_secs(5),
            ..PenaltyConfig::default()
        }),
        ..test_limits()
    })
    .await;
    let (addr, tls) = (server.addr, server.client_tls());
    let hello = client_hello(&server);
    let source = Ipv4Addr::new(127, 0, 0, 2);
    let mut raw = admitted(addr, source, &tls).await;
    // The penalty runs until at least 1 s after this.
    let first = Instant::now();
    for id in 1..=2 {
        raw.send(&login_msg(id, "alice", "wrong")).await;
        assert!(matches!(
            raw.recv().await,
            ServerMessage::Error {
                code: ErrorCode::AuthFailed,
                ..
            }
        ));
    }
    let banned = Instant::now();
    refused_before_tls(addr, source, &hello, "just banned").await;
    // Another address is not affected meanwhile.
    close(admitted(addr, Ipv4Addr::new(127, 0, 0, 3), &tls).await).await;
    // Knocking while banned earns nothing: the ban still ends on time.
    let (mut again, at) = loop {
        match tls_from(addr, source, &tls).await {
            Ok(stream) => break (raw_of(stream), Instant::now()),
            Err(_) => {
                assert!(banned.elapsed() < DEADLINE, "the ban never ended");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    };
    let penalty = 2 * authfail;
    eprintln!(
        "a {penalty:?} penalty refused the source for {:?} after its second failure",
        at - banned
    );
    assert!(
        at - first >= penalty,
        "the ban ended after {:?}",
        at - first
    );
    assert!(
        at - banned <= penalty + SLACK,
        "the ban lasted {:?}",
        at - banned
    );
    again.login("alice", "alice-pw").await;
    close(again).await;
    close(raw).await;
    assert_serves(&server).await;
}

/// Nodes of a cluster share penalties: a source that guesses passwords through one node is
/// refused at accept by another node too, within the sync interval, while a third address
/// gets in everywhere. The shared store here is a penalty table of its own, as the
/// PostgreSQL store is one table for all nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_banned_through_one_node_is_refused_by_the_other() {
    let _shared = MEASURING.read().await;
    let penalties = PenaltyConfig {
        authfail: Duration::from_secs(5),
        min_before_ban: Duration::from_secs(7),
        max: Duration::from_secs(60),
        ..PenaltyConfig::default()
    };
    let limits = Limits {
        penalties: Some(penalties.clone()),
        ..test_limits()
    };
    let store: Arc<dyn ferry::state::PenaltyStore> =
        Arc::new(ferry::server::penalty::Penalties::new(penalties));
    let state = || ferry::server::SharedState {
        ledger: ferry::state::memory::MemoryLedger::new(),
        shared_ledger: false,
        penalties: Some(Arc::clone(&store)),
        homes: None,
        metrics: None,
    };
    let a = TestServer::start_with_state(limits.clone(), state()).await;
    let b = TestServer::start_with_state(limits, state()).await;
    let source = Ipv4Addr::new(127, 0, 0, 5);
    // Before: node B lets the source in.
    close(admitted(b.addr, source, &b.client_tls()).await).await;
    // Two wrong passwords through node A: 10 s of penalty, over the 7 s threshold.
    let mut raw = admitted(a.addr, source, &a.client_tls()).await;
    for id in 1..=2 {
        raw.send(&login_msg(id, "alice", "wrong")).await;
        assert!(matches!(
            raw.recv().await,
            ServerMessage::Error {
                code: ErrorCode::AuthFailed,
                ..
            }
        ));
    }
    let banned = Instant::now();
    refused_before_tls(a.addr, source, &client_hello(&a), "node A, which saw it").await;
    // Node B learns it from the shared store within the sync interval (plus the store's
    // round trip).
    while b.server.refuses(source.into()).is_none() {
        assert!(
            banned.elapsed() < ferry::server::PENALTY_SYNC_EVERY * 3,
            "node B still lets the source in {:?} after node A banned it",
            banned.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "node B refused the source {:?} after node A banned it",
        banned.elapsed()
    );
    refused_before_tls(
        b.addr,
        source,
        &client_hello(&b),
        "node B, through the shared store",
    )
    .await;
    // Another address still gets in on both.
    let other = Ipv4Addr::new(127, 0, 0, 6);
    close(admitted(a.addr, other, &a.client_tls()).await).await;
    close(admitted(b.addr, other, &b.client_tls()).await).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanners_and_idlers_are_penalised_too() {
    let _shared = MEASURING.read().await;
    let handshake = Duration::from_millis(300);
    let server = TestServer::start_with(Limits {
        handshake_timeout: handshake,
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let (addr, tls) = (server.addr, server.client_tls());
    let hello = client_hello(&server);
    let ip = |last: u8| Ipv4Addr::new(127, 0, 0, last);

    // HTTP instead of TLS: a protocol error, 5 s each; the fourth makes 20 s > 15 s.
    for i in 0..4 {
        let mut tcp = tcp_from(ip(4), addr).await.unwrap();
        let (mut rd, mut wr) = tcp.split();
        let _ = wr.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (back, _) = drain_until_closed(&mut rd, DEADLINE)
            .await
            .expect("still open");
        assert!(
            only_tls_alerts(&back) && !back.is_empty(),
            "probe {i}: {back:02x?}"
        );
    }
    banned_soon(addr, ip(4), &hello, "a scanner").await;

    // Handshake timeouts: 10 s each; two silent connections make 20 s.
    let silent = || async {
        let mut tcp = tcp_from(ip(5), addr).await.unwrap();
        drain_until_closed(&mut tcp, handshake + DEADLINE).await
    };
    let (a, b) = tokio::join!(silent(), silent());
    assert!(a.is_some() && b.is_some());
    banned_soon(addr, ip(5), &hello, "a slowloris").await;

    // Sessions that never try to log in: 1 s each; the sixteenth makes 16 s (one more, if
    // enough time drains meanwhile).
    let mut idlers = 0;
    while let Ok(stream) = tls_from(addr, ip(6), &tls).await {
        let mut raw = raw_of(stream);
        raw.hello().await;
        // The server records the offence before its close reaches us.
        close(raw).await;
        idlers += 1;
        assert!(idlers <= 20, "{idlers} idle sessions were not penalised");
    }
    assert!(idlers >= 16, "banned after only {idlers} idle sessions");
    refused_before_tls(addr, ip(6), &hello, "an idler").await;

    // Everyone else is fine.
    logs_in(admitted(addr, ip(7), &tls).await, "bob", "bob-pw").await;
    assert_serves(&server).await;
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_supplies_the_address_for_limits_and_penalties() {
    let _shared = MEASURING.read().await;
    let server = TestServer::start_with(Limits {
        proxy_protocol: true,
        proxy_from: vec!["127.0.0.1/32".parse().unwrap()],
        max_connections_per_source: 1,
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let (addr, tls) = (server.addr, server.client_tls());
    let client = |last: u8, port: u16| SocketAddr::from(([198, 51, 100, last], port));

    // All from the balancer (127.0.0.1), one connection per *named* source: v1 and v2 headers
    // naming two clients both get in, a second one naming the first client does not.
    let mut first = proxied(addr, &proxy_v1(client(1, 40001), addr), &tls)
        .await
        .expect("a v1 header naming a fresh client was refused");
    first.login("alice", "alice-pw").await;
    let mut second = proxied(addr, &proxy_v2(client(2, 40002), addr), &tls)
        .await
        .expect("a v2 header naming a fresh client was refused");
    second.login("bob", "bob-pw").await;
    let start = Instant::now();
    let third = proxied(addr, &proxy_v2(client(1, 40003), addr), &tls).await;
    assert!(
        third.is_err(),
        "a second connection naming 198.51.100.1 got in"
    );
    assert!(start.elapsed() < AT_ONCE);
    close(first).await;
    close(second).await;

    // Penalties go to the named client, not to the balancer.
    let guesser = client(9, 40009);
    let mut failures = 0;
    while failures < 4 {
        // The previous connection's slot (one per source here) comes back a moment after
        // the server closed it; until the fourth failure no penalty can refuse the guesser,
        // so a refusal now is only that moment, and is retried.
        let mut tries = 0;
        let mut raw = loop {
            match proxied(addr, &proxy_v1(guesser, addr), &tls).await {
                Ok(raw) => break raw,
                Err(e) => {
                    tries += 1;
                    assert!(
                        tries < 80,
                        "the guesser was refused before its fourth failure: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            }
        };
        raw.hello().await;
        for id in 0..(4 - failures).min(3) {
            raw.send(&login_msg(id, "alice", "wrong")).await;
            assert!(matches!(
                raw.recv().await,
                ServerMessage::Error {
                    code: ErrorCode::AuthFailed,
                    ..
                }
            ));
            failures += 1;
        }
        close(raw).await;
    }
    let start = Instant::now();
    let refused = proxied(addr, &proxy_v1(guesser, addr), &tls).await;
    assert!(
        refused.is_err(),
        "the penalised client got in through the balancer"
    );
    assert!(start.elapsed() < AT_ONCE);
    let mut other = proxied(addr, &proxy_v2(client(10, 40010), addr), &tls)
        .await
        .expect("another client behind the same balancer was refused");
    other.login("alice", "alice-pw").await;
    close(other).await;

    // With the option on the header is mandatory: a client that starts with TLS is dropped
    // at once, and one that trickles its header is cut at the handshake timeout.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = tcp.split();
    wr.write_all(&client_hello(&server)).await.unwrap();
    let start = Instant::now();
    let (back, at) = drain_until_closed(&mut rd, DEADLINE)
        .await
        .expect("a client without a PROXY header was kept");
    assert!(back.is_empty(), "{back:02x?}");
    assert!(at - start < AT_ONCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_trickled_is_cut_at_the_handshake_timeout() {
    let _shared = MEASURING.read().await;
    let handshake = Duration::from_millis(400);
    let server = TestServer::start_with(Limits {
        proxy_protocol: true,
        proxy_from: vec!["127.0.0.1/32".parse().unwrap()],
        handshake_timeout: handshake,
        ..test_limits()
    })
    .await;
    let header = proxy_v1(SocketAddr::from(([198, 51, 100, 1], 40001)), server.addr);
    let start = Instant::now();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut rd, mut wr) = tcp.split();
    let mut sent = 0;
    let closed = tokio::select! {
        c = drain_until_closed(&mut rd, handshake + DEADLINE) => c,
        () = trickle(&mut wr, &header, Duration::from_millis(100), &mut sent) => unreachable!(),
    };
    let (back, at) = closed.expect("a trickled PROXY header was kept");
    eprintln!("trickled PROXY header: closed after {:?}", at - start);
    assert!(back.is_empty());
    assert!(sent < header.len());
    assert_timed_out("trickled PROXY header", at - start, handshake);

    // The header's time counts against the handshake: header at 250 ms, then a ClientHello
    // trickled, and the whole is still cut at 400 ms.
    let start = Instant::now();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut rd, mut wr) = tcp.split();
    tokio::time::sleep(Duration::from_millis(250)).await;
    wr.write_all(&header).await.unwrap();
    let hello = client_hello(&server);
    let mut sent = 0;
    let closed = tokio::select! {
        c = drain_until_closed(&mut rd, handshake + DEADLINE) => c,
        () = trickle(&mut wr, &hello, Duration::from_millis(100), &mut sent) => unreachable!(),
    };
    let (_, at) = closed.expect("a slow handshake behind a PROXY header was kept");
    eprintln!(
        "PROXY header then a trickled handshake: closed after {:?}",
        at - start
    );
    assert_timed_out(
        "PROXY header then a trickled handshake",
        at - start,
        handshake,
    );

    // A well-behaved client behind the balancer is served.
    let mut raw = proxied(server.addr, &header, &server.client_tls())
        .await
        .unwrap();
    raw.login("alice", "alice-pw").await;
    close(raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_without_the_option_is_just_a_bad_client() {
    let _shared = MEASURING.read().await;
    let server = TestServer::start().await;
    assert!(!Limits::default().proxy_protocol, "off by default");
    let spoofed = SocketAddr::from(([198, 51, 100, 1], 40001));
    let hello = client_hello(&server);
    for (what, header) in [
        ("v1", proxy_v1(spoofed, server.addr)),
        ("v2", proxy_v2(spoofed, server.addr)),
    ] {
        let start = Instant::now();
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let (mut rd, mut wr) = tcp.split();
        let _ = wr.write_all(&[header, hello.clone()].concat()).await;
        let (back, at) = drain_until_closed(&mut rd, DEADLINE)
            .await
            .unwrap_or_else(|| panic!("{what}: still open"));
        eprintln!(
            "PROXY {what} header without the option: closed after {:?}, got {back:02x?}",
            at - start
        );
        assert!(at - start < AT_ONCE, "{what}");
        assert!(only_tls_alerts(&back), "{what}: {back:02x?}");
        // And through a TLS client: the handshake fails.
        let r = proxied(
            server.addr,
            &proxy_v1(spoofed, server.addr),
            &server.client_tls(),
        )
        .await;
        assert!(
            r.is_err(),
            "{what}: a PROXY header was accepted with the option off"
        );
    }
    assert_serves(&server).await;
}

/// Issue 12, item 4: with `--proxy-protocol`, only `--proxy-from` may speak for others. A
/// direct client claiming a victim's address is refused at once, before TLS, and the victim
/// is untouched; 600 header-less sockets from one untrusted address take no slot (each is
/// closed at accept); and a silent trusted connection is cut at the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_serves_only_trusted_balancers() {
    let _shared = MEASURING.read().await;
    let header_timeout = Duration::from_millis(400);
    let server = TestServer::start_with(Limits {
        proxy_protocol: true,
        proxy_from: vec!["127.0.0.1/32".parse().unwrap()],
        proxy_header_timeout: header_timeout,
        max_connections: 64,
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let (addr, tls) = (server.addr, server.client_tls());
    let victim = SocketAddr::from(([198, 51, 100, 7], 40007));
    let direct = Ipv4Addr::new(127, 0, 0, 2);

    // A direct client with a well-formed header naming the victim: closed at once, nothing
    // back. Twenty times over (four protocol errors would ban the named address, were they
    // charged to it).
    for i in 0..20 {
        let start = Instant::now();
        let mut tcp = tcp_from(direct, addr).await.unwrap();
        let (mut rd, mut wr) = tcp.split();
        let _ = wr
            .write_all(&[proxy_v2(victim, addr), client_hello(&server)].concat())
            .await;
        let (back, at) = drain_until_closed(&mut rd, DEADLINE)
            .await
            .unwrap_or_else(|| panic!("untrusted connection {i} was kept"));
        assert!(back.is_empty(), "{back:02x?}");
        assert!(
            at - start < AT_ONCE,
            "untrusted connection {i}: {:?}",
            at - start
        );
    }
    // The victim, through the real balancer, is served.
    let mut raw = proxied(addr, &proxy_v2(victim, addr), &tls)
        .await
        .expect("the address a direct client claimed was penalised");
    raw.login("alice", "alice-pw").await;
    close(raw).await;

    // 600 silent sockets from one untrusted address (over ten times the 64 slots): none is
    // kept, so the balancer's clients still get in.
    let mut held = Vec::new();
    for _ in 0..600 {
        if let Ok(s) = tcp_from(Ipv4Addr::new(127, 0, 0, 3), addr).await {
            held.push(s);
        }
    }
    let mut raw = proxied(addr, &proxy_v1(victim, addr), &tls)
        .await
        .expect("header-less sockets from an untrusted address filled the server");
    raw.login("alice", "alice-pw").await;
    close(raw).await;
    let mut open = 0;
    for mut s in held {
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => {}
            _ => open += 1,
        }
    }
    assert_eq!(open, 0, "untrusted sockets left open");

    // A trusted balancer that sends nothing is cut at the header timeout (not the 10 s
    // handshake timeout), without a penalty: the next proxied client is served.
    let start = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let (mut rd, _wr) = tcp.split();
    let (_, at) = drain_until_closed(&mut rd, DEADLINE)
        .await
        .expect("a silent balancer connection was kept");
    assert_timed_out("silent balancer connection", at - start, header_timeout);
    let mut raw = proxied(addr, &proxy_v1(victim, addr), &tls).await.unwrap();
    raw.login("alice", "alice-pw").await;
    close(raw).await;
}

/// Issue 12, item 4b: a balancer's health checks (connect and close, connect and reset, PROXY
/// v2 LOCAL, v1 UNKNOWN; HAProxy sends one every few seconds) were charged to the balancer's
/// own address as protocol errors, so after three of them everyone behind it was refused.
/// They are closed quietly now, and a client guessing passwords through the balancer is
/// banned alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_health_checks_never_penalise_the_balancer() {
    let _shared = MEASURING.read().await;
    let server = TestServer::start_with(Limits {
        proxy_protocol: true,
        proxy_from: vec!["127.0.0.1/32".parse().unwrap()],
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let (addr, tls) = (server.addr, server.client_tls());
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    for round in 0..10 {
        // Connect and close.
        drop(TcpStream::connect(addr).await.unwrap());
        // Connect and reset (HAProxy closes its checks with an RST).
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_zero_linger().unwrap();
        drop(s);
        // PROXY v2 LOCAL, then close; and v1 UNKNOWN, then close.
        for header in [&local[..], b"PROXY UNKNOWN\r\n"] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(header).await.unwrap();
            let mut b = [0u8; 1];
            let r = tokio::time::timeout(DEADLINE, s.read(&mut b)).await;
            assert!(
                matches!(r, Ok(Ok(0) | Err(_))),
                "round {round}: a health check was not closed: {r:?}"
            );
        }
        // A client through the balancer is served every round, also one on the balancer's
        // own host (its address is the one the health checks used to get banned).
        let client = if round % 2 == 0 {
            SocketAddr::from(([127, 0, 0, 1], 41000 + round))
        } else {
            SocketAddr::from(([198, 51, 100, 1], 41000 + round))
        };
        let mut raw = proxied(addr, &proxy_v2(client, addr), &tls)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the balancer was refused: {e}"));
        raw.login("alice", "alice-pw").await;
        close(raw).await;
    }

    // A guesser behind the balancer is banned; a neighbour behind it is not.
    let guesser = SocketAddr::from(([198, 51, 100, 66], 40066));
    let mut raw = proxied(addr, &proxy_v2(guesser, addr), &tls).await.unwrap();
    raw.hello().await;
    for id in 0..3 {
        raw.send(&login_msg(id, "alice", "wrong")).await;
        let _ = raw.recv().await;
    }
    close(raw).await;
    let mut failures = 3;
    while failures < 4 {
        if let Ok(mut raw) = proxied(addr, &proxy_v2(guesser, addr), &tls).await {
            raw.hello().await;
            raw.send(&login_msg(9, "alice", "wrong")).await;
            let _ = raw.recv().await;
            failures += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    assert!(
        proxied(addr, &proxy_v2(guesser, addr), &tls).await.is_err(),
        "the guesser was not banned"
    );
    let neighbour = SocketAddr::from(([198, 51, 100, 67], 40067));
    let mut raw = proxied(addr, &proxy_v2(neighbour, addr), &tls)
        .await
        .expect("a neighbour of the guesser behind the balancer was refused");
    raw.login("alice", "alice-pw").await;
    close(raw).await;
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// How many times [`serves`] ran, for distinct file names.
static SERVED: AtomicUsize = AtomicUsize::new(0);

/// A well-behaved client is served: it logs in, uploads a file and downloads the same bytes.
async fn assert_serves(server: &TestServer) {
    serves(server, Duration::ZERO).await;
}

/// [`assert_serves`], retrying the connection and login for up to `wait` while the slots of
/// connections that just closed come back (the server frees them when it sees the close).
async fn serves(server: &TestServer, wait: Duration) {
    let n = SERVED.fetch_add(1, Ordering::Relaxed);
    let start = Instant::now();
    let mut conn = loop {
        let attempt = async {
            let mut c =
                Connection::connect("127.0.0.1", server.addr.port(), server.client_tls()).await?;
            c.login("alice", &Password::new("alice-pw".into())).await?;
            Ok::<_, ClientError>(c)
        };
        match tokio::time::timeout(DEADLINE, attempt).await {
            Ok(Ok(c)) => break c,
            Ok(Err(e)) if start.elapsed() < wait => {
                eprintln!("well-behaved client: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Err(e)) => panic!("a well-behaved client was not served: {e}"),
            Err(_) => panic!("a well-behaved client's login hung"),
        }
    };
    let local = tempfile::tempdir().unwrap();
    let up = local.path().join("up.bin");
    let data = random_file(&up, 64 * 1024 + n, n as u64);
    let remote = format!("/well-behaved-{n}.bin");
    let put = conn
        .put(&up, &remote, false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(put.sha256, sha256_hex(&data));
    let down = local.path().join("down.bin");
    conn.get(&remote, &down, false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&down).unwrap(), data);
    conn.close().await.unwrap();
}

/// Asserts that a phase was cut by its timer: not before it ran out, not long after.
#[track_caller]
fn assert_timed_out(what: &str, took: Duration, timeout: Duration) {
    assert!(
        took >= timeout,
        "{what}: closed after {took:?}, before the {timeout:?} timeout"
    );
    assert!(
        took <= timeout + SLACK,
        "{what}: closed after {took:?}, long after the {timeout:?} timeout"
    );
}

/// The session-level `busy` a session gets when the server shuts down.
fn is_shutting_down(msgs: &[ServerMessage]) -> bool {
    matches!(msgs, [ServerMessage::Error { id: None, code: ErrorCode::Busy, message }]
        if message == "server shutting down")
}

fn code_of(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Remote(w) => Some(w.code),
        _ => None,
    }
}

/// Logs in on `raw` (hello done) as `user`, expects success, and closes.
async fn logs_in(mut raw: Raw, user: &str, password: &str) {
    raw.send(&login_msg(1, user, password)).await;
    let reply = raw.recv().await;
    assert!(
        matches!(reply, ServerMessage::Ok { id: 1, .. }),
        "login as {user}: {reply:?}"
    );
    close(raw).await;
}

/// Adds `victim` (password `victim-pw`) with the production argon2 parameters, so every check
/// of it costs ~19 MiB and tens of milliseconds, and loads it into the running server.
fn add_victim(server: &TestServer) {
    let hash = users::hash_password(&Password::new("victim-pw".into())).unwrap();
    assert!(hash.contains("m=19456,t=2,p=1"), "{hash}");
    users::add_user(&server.users_file, "victim", &hash, None, false).unwrap();
    server
        .server
        .replace_users(UserDb::load(&server.users_file).unwrap());
}

fn login_msg(id: u64, user: &str, password: &str) -> ClientMessage {
    ClientMessage::Login {
        id,
        user: user.into(),
        password: password.into(),
    }
}

fn put_msg(id: u64, path: &str, size: u64, overwrite: bool) -> ClientMessage {
    ClientMessage::Put {
        id,
        path: path.into(),
        size,
        overwrite,
        offset: 0,
        prefix_sha256: None,
    }
}

/// One frame as it travels: length (kind + payload), kind, payload.
fn frame_bytes(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = u32::try_from(payload.len() + 1)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    v.push(kind);
    v.extend_from_slice(payload);
    v
}

fn message_frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
    frame_bytes(KIND_MESSAGE, &serde_json::to_vec(msg).unwrap())
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// The first flight of a real TLS client: its ClientHello record.
fn client_hello(server: &TestServer) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(server.client_tls(), server_name()).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// True if `bytes` is a sequence of whole TLS alert records (content type 21), or empty.
fn only_tls_alerts(mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        if bytes.len() < 7 || bytes[0] != 21 || bytes[1] != 3 || bytes[3..5] != [0, 2] {
            return false;
        }
        bytes = &bytes[7..];
    }
    true
}

fn server_name() -> rustls::pki_types::ServerName<'static> {
    ferry::tls::server_name("127.0.0.1").unwrap()
}

fn connector(config: Arc<rustls::ClientConfig>) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(config)
}

/// A client configuration that trusts the test CA, offers `ferry/1` and exactly `versions`.
fn tls_config(
    server: &TestServer,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ferry::tls::load_certs(&server.ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![ferry::protocol::ALPN.to_vec()];
    Arc::new(config)
}

/// TCP from `ip` and TLS to `to`.
async fn tls_from(
    to: SocketAddr,
    ip: Ipv4Addr,
    tls: &Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(ip, to).await?;
    connector(Arc::clone(tls)).connect(server_name(), tcp).await
}

/// TCP from `ip` (any address in 127.0.0.0/8 works on loopback) to `to`.
async fn tcp_from(ip: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip.into(), 0))?;
    socket.connect(to).await
}

/// A connection from `ip` that the server closes before TLS: a real ClientHello gets no byte
/// back, at once.
async fn refused_before_tls(to: SocketAddr, ip: Ipv4Addr, hello: &[u8], what: &str) {
    let start = Instant::now();
    let mut tcp = tcp_from(ip, to).await.unwrap();
    let (mut rd, mut wr) = tcp.split();
    let _ = wr.write_all(hello).await;
    let (back, at) = drain_until_closed(&mut rd, DEADLINE)
        .await
        .unwrap_or_else(|| panic!("{what}: still open"));
    assert!(
        back.is_empty(),
        "{what}: the server answered with {back:02x?}"
    );
    assert!(
        at - start < AT_ONCE,
        "{what}: closed only after {:?}",
        at - start
    );
}

/// [`refused_before_tls`] for offences the server records only after it has dropped the
/// connection (a failed or timed-out handshake, src/server/mod.rs `handle_connection`): a
/// reconnect in that instant still gets in once. Each such retry is itself an offence.
async fn banned_soon(to: SocketAddr, ip: Ipv4Addr, hello: &[u8], what: &str) {
    for retry in 0..5 {
        let mut tcp = tcp_from(ip, to).await.unwrap();
        let (mut rd, mut wr) = tcp.split();
        let _ = wr.write_all(hello).await;
        let mut first = [0u8; 1];
        match tokio::time::timeout(AT_ONCE, rd.read(&mut first)).await {
            Ok(Ok(0) | Err(_)) => {
                if retry > 0 {
                    eprintln!("{what}: banned after {retry} more handshake(s)");
                }
                return refused_before_tls(to, ip, hello, what).await;
            }
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(_) => panic!("{what}: no answer and no close"),
        }
    }
    panic!("{what}: still admitted after five more handshakes");
}

/// A PROXY v1 header for a TCP4 connection from `client` to `server`.
fn proxy_v1(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        client.ip(),
        server.ip(),
        client.port(),
        server.port()
    )
    .into_bytes()
}

/// A PROXY v2 header (command PROXY, TCP over IPv4) from `client` to `server`.
fn proxy_v2(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let v4 = |a: SocketAddr| match a.ip() {
        std::net::IpAddr::V4(ip) => ip.octets(),
        std::net::IpAddr::V6(_) => panic!("IPv4 only"),
    };
    let mut v = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v.extend_from_slice(&[0x21, 0x11, 0, 12]);
    v.extend_from_slice(&v4(client));
    v.extend_from_slice(&v4(server));
    v.extend_from_slice(&client.port().to_be_bytes());
    v.extend_from_slice(&server.port().to_be_bytes());
    v
}

/// TCP from 127.0.0.1 (the balancer), `header`, then TLS.
async fn proxied(
    to: SocketAddr,
    header: &[u8],
    tls: &Arc<rustls::ClientConfig>,
) -> std::io::Result<Raw> {
    let mut tcp = TcpStream::connect(to).await?;
    tcp.write_all(header).await?;
    let stream = tokio::time::timeout(
        DEADLINE,
        connector(Arc::clone(tls)).connect(server_name(), tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake hung"))??;
    Ok(raw_of(stream))
}

fn raw_of(stream: TlsStream<TcpStream>) -> Raw {
    let (r, w) = tokio::io::split(stream);
    Raw {
        reader: FrameReader::new(r, MAX_FRAME_LEN),
        writer: FrameWriter::new(w),
    }
}

/// A connection from `ip` that the server admits: TLS done, hellos exchanged.
async fn admitted(to: SocketAddr, ip: Ipv4Addr, tls: &Arc<rustls::ClientConfig>) -> Raw {
    let stream = tokio::time::timeout(DEADLINE, tls_from(to, ip, tls))
        .await
        .unwrap_or_else(|_| panic!("a connection from {ip} hung"))
        .unwrap_or_else(|e| panic!("a connection from {ip} was refused: {e}"));
    let mut raw = raw_of(stream);
    raw.hello().await;
    raw
}

/// [`admitted`], retrying while a slot that was just freed comes back.
async fn admitted_eventually(to: SocketAddr, ip: Ipv4Addr, tls: &Arc<rustls::ClientConfig>) -> Raw {
    let start = Instant::now();
    loop {
        match tokio::time::timeout(DEADLINE, tls_from(to, ip, tls)).await {
            Ok(Ok(stream)) => {
                let mut raw = raw_of(stream);
                raw.hello().await;
                return raw;
            }
            _ if start.elapsed() < DEADLINE => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("a connection from {ip} was never admitted: {other:?}"),
        }
    }
}

/// A connection from `ip` that the server closes at accept: the handshake fails at once.
async fn refused(to: SocketAddr, ip: Ipv4Addr, tls: &Arc<rustls::ClientConfig>, what: &str) {
    let start = Instant::now();
    match tokio::time::timeout(DEADLINE, tls_from(to, ip, tls)).await {
        Ok(Err(e)) => {
            let took = start.elapsed();
            assert!(took < AT_ONCE, "{what}: refused only after {took:?}");
            eprintln!("{what}: refused ({e}) after {took:?}");
        }
        Ok(Ok(_)) => panic!("{what}: admitted"),
        Err(_) => panic!("{what}: the handshake hung"),
    }
}

/// Ends a raw session cleanly (close_notify) and waits until the server has closed its end.
async fn close(mut raw: Raw) {
    let _ = raw.writer.shutdown().await;
    let _ = until_closed(&mut raw.reader, DEADLINE).await;
}

/// Reads frames until the server closes the connection (end of stream or an error). Returns
/// the messages it sent meanwhile and when it closed, or `None` if it was still open at `limit`.
async fn until_closed<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    limit: Duration,
) -> Option<(Vec<ServerMessage>, Instant)> {
    let end = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout_at(end, reader.read_frame()).await {
            Err(_) => return None,
            Ok(Ok(None) | Err(_)) => return Some((got, Instant::now())),
            Ok(Ok(Some(Frame::Message(m)))) => {
                got.push(ferry::protocol::decode_server_message(&m).unwrap());
            }
            Ok(Ok(Some(Frame::Data(d)))) => panic!("unexpected data frame of {} bytes", d.len()),
        }
    }
}

/// Reads raw bytes until the peer closes; returns them and when it closed, or `None` if the
/// connection was still open at `limit`.
async fn drain_until_closed<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: Duration,
) -> Option<(Vec<u8>, Instant)> {
    let end = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(end, r.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some((got, Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes `bytes` one at a time, `every` apart, counting them in `sent`; stops writing at the
/// first error, and never returns (it is raced against a reader).
async fn trickle<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    every: Duration,
    sent: &mut usize,
) {
    for b in bytes {
        tokio::time::sleep(every).await;
        if w.write_all(&[*b]).await.is_err() || w.flush().await.is_err() {
            break;
        }
        *sent += 1;
    }
    std::future::pending::<()>().await
}

/// Polls `check` until it holds, failing after [`DEADLINE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Server temp files (`.ferry-tmp.*`) in `dir`.
fn server_temps(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| n.starts_with(".ferry-tmp."))
        .collect()
}

/// Names in `dir` apart from the server's hidden ones (`.ferry-*`).
fn visible(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| !n.starts_with(".ferry-"))
        .collect()
}

/// Sizes of the interrupted uploads the server kept for resume in `home`.
fn kept_partials(home: &Path) -> Vec<u64> {
    let dir = home.join(".ferry-partials");
    let mut sizes: Vec<u64> = names_in(&dir)
        .iter()
        .map(|n| std::fs::metadata(dir.join(n)).unwrap().len())
        .collect();
    sizes.sort();
    sizes
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// A field of /proc/self/status, in KiB (the server runs in this process).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resets the peak RSS (VmHWM) to the current RSS (Linux 4.0+) and returns it. Where that is
/// not permitted, the current peak is the baseline, which can only hide growth below it.
fn reset_peak_rss() -> u64 {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak RSS ({e}); measuring from the current peak");
    }
    status_kib("VmHWM")
}

/// What a directory tree holds, without following symlinks: for every entry its type and
/// permission bits, modification time, and content or link target.
type Snapshot = BTreeMap<PathBuf, (u32, (i64, i64), Vec<u8>)>;

fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let ft = meta.file_type();
        let content = if ft.is_symlink() {
            std::fs::read_link(&path)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if ft.is_file() {
            std::fs::read(&path).unwrap()
        } else {
            Vec::new()
        };
        if ft.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
        out.insert(
            rel,
            (meta.mode(), (meta.mtime(), meta.mtime_nsec()), content),
        );
    }
    out
}
