//! The wire rules of docs/PROTOCOL.md, checked frame by frame with a raw client that can break
//! them on purpose.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry::protocol::{
    ClientMessage, EntryKind, ErrorCode, Frame, KIND_DATA, KIND_MESSAGE, MAX_DATA_LEN,
    PROTOCOL_VERSION, ServerMessage,
};
use ferry::server::Limits;
use serde_json::json;

use crate::util::{Raw, TestServer, names_in, random_file, sha256_hex};

/// SHA-256 of nothing (docs/PROTOCOL.md §9).
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
/// SHA-256 of `hello\n` (docs/PROTOCOL.md §9).
const HELLO_SHA256: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

/// How long the server gets to clean up after a client that vanished.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(5);

async fn logged_in(server: &TestServer) -> Raw {
    let mut raw = server.raw().await;
    raw.login("alice", "alice-pw").await;
    raw
}

fn put(id: u64, path: &str, size: u64, overwrite: bool) -> ClientMessage {
    ClientMessage::Put {
        id,
        path: path.into(),
        size,
        overwrite,
        offset: 0,
        prefix_sha256: None,
    }
}

fn end(id: u64, sha256: &str) -> ClientMessage {
    ClientMessage::End {
        id,
        sha256: sha256.into(),
    }
}

fn stat(id: u64, path: &str) -> ClientMessage {
    ClientMessage::Stat {
        id,
        path: path.into(),
    }
}

/// One frame as it travels: length (kind + payload), kind, payload.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = u32::try_from(payload.len() + 1)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    v.push(kind);
    v.extend_from_slice(payload);
    v
}

/// Deterministic bytes for in-memory uploads.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Asserts an `error` reply with this id and code; returns its message.
#[track_caller]
fn expect_error(msg: ServerMessage, id: Option<u64>, code: ErrorCode) -> String {
    match msg {
        ServerMessage::Error {
            id: got_id,
            code: got_code,
            message,
        } if got_id == id && got_code == code => message,
        other => panic!("expected error {code:?} with id {id:?}, got {other:?}"),
    }
}

/// Asserts a bare `ok` with this id.
#[track_caller]
fn expect_ok(msg: ServerMessage, id: u64) -> ServerMessage {
    match msg {
        ServerMessage::Ok { id: got, .. } if got == id => msg,
        other => panic!("expected ok with id {id}, got {other:?}"),
    }
}

/// Writes raw bytes, ignoring errors: the server may already have closed on the first bytes.
async fn send_bytes_lossy(raw: &mut Raw, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let w = raw.writer.get_mut();
    let _ = w.write_all(bytes).await;
    let _ = w.flush().await;
}

/// The server closes without sending anything (more).
async fn expect_silent_close(raw: &mut Raw) {
    if let Some(f) = raw.frame().await {
        panic!("expected the connection to close without a reply, got {f:?}");
    }
}

/// A session-level error (no id) whose message contains `text`, then the close.
async fn expect_session_error(raw: &mut Raw, code: ErrorCode, text: &str) {
    let message = expect_error(raw.recv().await, None, code);
    assert!(message.contains(text), "{message:?} lacks {text:?}");
    expect_silent_close(raw).await;
}

/// A normal client still gets served.
async fn serves_others(server: &TestServer) {
    let mut conn = server.alice().await;
    let root = conn.stat("/").await.unwrap();
    assert_eq!(root.kind, EntryKind::Dir);
    conn.close().await.unwrap();
}

/// Server temp files (`.ferry-tmp.*`) in `dir`.
fn server_temps(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| n.starts_with(".ferry-tmp."))
        .collect()
}

/// Names in `dir` apart from the hidden directory where interrupted uploads are kept.
fn visible(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| n != ".ferry-partials")
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

/// Polls `check` until it holds, failing after [`CLEANUP_DEADLINE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + CLEANUP_DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Peak virtual memory of this process (the server runs in it), in KiB.
fn vm_peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmPeak:"))
        .expect("VmPeak in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Uploads: integrity, size, abort, vanishing clients

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_wrong_sha256_is_integrity_mismatch_and_stores_nothing() {
    assert_eq!(sha256_hex(b"hello\n"), HELLO_SHA256);
    let server = TestServer::start().await;
    let home = server.home("alice");
    let mut raw = logged_in(&server).await;
    let zeros = "0".repeat(64);
    raw.send(&put(8, "/x.txt", 6, false)).await;
    raw.send_data(b"hello\n").await;
    raw.send(&end(8, &zeros)).await;
    let message = expect_error(raw.recv().await, Some(8), ErrorCode::IntegrityMismatch);
    assert!(
        message.contains(&zeros) && message.contains(HELLO_SHA256),
        "both digests belong in {message:?}"
    );
    assert!(names_in(&home).is_empty(), "{:?}", names_in(&home));

    // Not fatal: the session goes on, and the name is still free.
    raw.send(&stat(9, "/x.txt")).await;
    expect_error(raw.recv().await, Some(9), ErrorCode::NotFound);
}

/// How a client vanishes in the middle of an upload.
#[derive(Debug, Clone, Copy)]
enum Vanish {
    /// Right after the `put`, before any data.
    AfterPut,
    /// After some whole data frames.
    MidData,
    /// In the middle of a data frame.
    MidFrame,
}

/// Starts a 1 MiB upload, waits until the server's temp file exists, vanishes without a TLS
/// close, and checks that the server cleans up.
async fn vanish_during_upload(how: Vanish) {
    let server = TestServer::start().await;
    let home = server.home("alice");
    let mut raw = logged_in(&server).await;
    raw.send(&put(2, "/big.bin", 1 << 20, false)).await;
    match how {
        Vanish::AfterPut => {}
        Vanish::MidData => raw.send_data(&pattern(256 * 1024, 1)).await,
        Vanish::MidFrame => {
            raw.send_data(&pattern(1000, 1)).await;
            let whole = frame(KIND_DATA, &pattern(1000, 2));
            raw.send_bytes(&whole[..500]).await;
        }
    }
    eventually("the server created its temp file", || {
        server_temps(&home).len() == 1
    })
    .await;
    drop(raw);
    eventually("the temp file is gone", || visible(&home).is_empty()).await;
    serves_others(&server).await;
    assert!(visible(&home).is_empty(), "{how:?}: {:?}", names_in(&home));
    // What arrived is kept, hidden, for a resume; an upload that sent nothing leaves nothing.
    let kept: &[u64] = match how {
        Vanish::AfterPut => &[],
        Vanish::MidData => &[256 * 1024],
        Vanish::MidFrame => &[1000],
    };
    eventually("the partial is kept", || kept_partials(&home) == kept).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_right_after_put_leaves_nothing() {
    vanish_during_upload(Vanish::AfterPut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_mid_upload_leaves_nothing() {
    vanish_during_upload(Vanish::MidData).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_inside_a_data_frame_leaves_nothing() {
    vanish_during_upload(Vanish::MidFrame).await;
}

/// Small uploads are collected in memory and written at their end; an interrupted one must
/// still leave exactly what arrived as a partial, like a large one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_upload_cut_off_keeps_what_arrived() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    let mut raw = logged_in(&server).await;
    raw.send(&put(2, "/small.bin", 200_000, false)).await;
    raw.send_data(&pattern(150_000, 3)).await;
    raw.send(&ClientMessage::Abort { id: 2 }).await;
    expect_error(raw.recv().await, Some(2), ErrorCode::Cancelled);
    assert!(visible(&home).is_empty(), "{:?}", names_in(&home));
    assert_eq!(kept_partials(&home), [150_000]);

    // Cut off: the server has no temp file for a small upload until its data is complete or
    // cut off, so there is nothing to wait for; the data goes out before the end of stream.
    raw.send(&put(3, "/other.bin", 200_000, false)).await;
    raw.send_data(&pattern(100_000, 4)).await;
    drop(raw);
    eventually("the partial is kept", || {
        let mut kept = kept_partials(&home);
        kept.sort_unstable();
        kept == [100_000, 150_000]
    })
    .await;
    assert!(visible(&home).is_empty(), "{:?}", names_in(&home));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_notify_mid_upload_gets_no_reply_and_leaves_nothing() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    let mut raw = logged_in(&server).await;
    raw.send(&put(2, "/big.bin", 1 << 20, false)).await;
    raw.send_data(&pattern(256 * 1024, 1)).await;
    eventually("the server created its temp file", || {
        server_temps(&home).len() == 1
    })
    .await;
    raw.writer.shutdown().await.unwrap();
    // A clean end of stream inside an upload is a client gone, not an answerable request.
    expect_silent_close(&mut raw).await;
    eventually("the temp file is gone", || visible(&home).is_empty()).await;
    eventually("the partial is kept", || {
        kept_partials(&home) == [256 * 1024]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_is_cancelled_and_leaves_nothing() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    let mut raw = logged_in(&server).await;
    for (id, chunks) in [(2u64, 2usize), (3, 0)] {
        raw.send(&put(id, "/big.iso", 1_000_000_000, false)).await;
        for i in 0..chunks {
            raw.send_data(&pattern(256 * 1024, i as u8)).await;
        }
        eventually("the server created its temp file", || {
            server_temps(&home).len() == 1
        })
        .await;
        raw.send(&ClientMessage::Abort { id }).await;
        let message = expect_error(raw.recv().await, Some(id), ErrorCode::Cancelled);
        assert_eq!(message, "upload cancelled");
        // The temp file is gone before the reply: kept hidden for a resume if it holds data.
        assert!(visible(&home).is_empty(), "{:?}", names_in(&home));
        let kept: &[u64] = if chunks > 0 { &[512 * 1024] } else { &[] };
        assert_eq!(kept_partials(&home), kept);
    }
    raw.send(&stat(4, "/big.iso")).await;
    expect_error(raw.recv().await, Some(4), ErrorCode::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_after_fewer_bytes_than_declared_is_size_mismatch() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    let mut raw = logged_in(&server).await;
    let data = pattern(5, 0);
    raw.send(&put(2, "/short.bin", 10, false)).await;
    raw.send_data(&data).await;
    raw.send(&end(2, &sha256_hex(&data))).await;
    let message = expect_error(raw.recv().await, Some(2), ErrorCode::SizeMismatch);
    assert_eq!(message, "declared 10 bytes, received 5");
    assert!(names_in(&home).is_empty(), "{:?}", names_in(&home));
    // Not fatal.
    raw.send(&stat(3, "/short.bin")).await;
    expect_error(raw.recv().await, Some(3), ErrorCode::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_bytes_than_declared_is_size_mismatch_and_closes() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    let mut raw = logged_in(&server).await;
    raw.send(&put(2, "/long.bin", 5, false)).await;
    raw.send_data(&pattern(3, 0)).await;
    raw.send_data(&pattern(3, 1)).await;
    expect_error(raw.recv().await, Some(2), ErrorCode::SizeMismatch);
    expect_silent_close(&mut raw).await;
    eventually("nothing is left in the home", || names_in(&home).is_empty()).await;
    serves_others(&server).await;
}

/// docs/PROTOCOL.md §4.5 and §5.4: too much data for a refused upload that is being discarded
/// is a session-level `bad_request` (no id), because the put already had its one final reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upload_overrun_is_a_session_error_not_a_second_reply() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("e"), b"old").unwrap();
    let mut raw = logged_in(&server).await;
    // Larger than the uploads the server reads whole before it checks the target (256 KiB):
    // this one is refused before its data, which is then discarded.
    raw.send(&put(2, "/e", 300_000, false)).await;
    raw.send_data(&pattern(200_000, 0)).await;
    raw.send_data(&pattern(100_001, 1)).await;
    expect_error(raw.recv().await, Some(2), ErrorCode::AlreadyExists);
    expect_session_error(
        &mut raw,
        ErrorCode::BadRequest,
        "upload longer than declared",
    )
    .await;
    assert_eq!(std::fs::read(home.join("e")).unwrap(), b"old");
}

/// docs/PROTOCOL.md §5.4 step 6 and §9: the server compares the `end` digest ASCII
/// case-insensitively.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_digest_is_compared_case_insensitively() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    let mut raw = logged_in(&server).await;
    raw.send(&put(2, "/x.txt", 6, false)).await;
    raw.send_data(b"hello\n").await;
    raw.send(&end(2, &HELLO_SHA256.to_ascii_uppercase())).await;
    match raw.recv().await {
        ServerMessage::Ok {
            id: 2,
            sha256: Some(sha),
            ..
        } => assert_eq!(sha, HELLO_SHA256, "the server's digest is lowercase"),
        other => panic!("expected ok for an upper-case digest, got {other:?}"),
    }
    assert_eq!(std::fs::read(home.join("x.txt")).unwrap(), b"hello\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_takes_data_frames_up_to_the_1_mib_cap() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    let mut raw = logged_in(&server).await;
    let data = pattern(MAX_DATA_LEN + 1, 5);
    raw.send(&put(2, "/max.bin", data.len() as u64, false))
        .await;
    raw.send_data(&data[..MAX_DATA_LEN]).await;
    raw.send_data(&data[MAX_DATA_LEN..]).await;
    raw.send(&end(2, &sha256_hex(&data))).await;
    expect_ok(raw.recv().await, 2);
    assert!(std::fs::read(home.join("max.bin")).unwrap() == data);

    // One byte over the data cap inside an upload: closed without a reply, nothing kept.
    raw.send(&put(3, "/over.bin", 2 << 20, false)).await;
    let mut header = u32::try_from(MAX_DATA_LEN + 2)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    header.push(KIND_DATA);
    send_bytes_lossy(&mut raw, &header).await;
    send_bytes_lossy(&mut raw, &pattern(MAX_DATA_LEN + 1, 6)).await;
    expect_silent_close(&mut raw).await;
    eventually("only the first upload is left", || {
        names_in(&home) == ["max.bin"]
    })
    .await;
}

/// docs/PROTOCOL.md §4.5: a frame error inside an upload closes without a reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_frame_inside_an_upload_closes_silently_and_leaves_nothing() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    // A small upload (read whole before its temp file exists) and one large enough to be
    // written as it arrives, caught with its temp file open.
    for size in [100, 1 << 20] {
        for bytes in [vec![0, 0, 0, 0], frame(9, b"x")] {
            let mut raw = logged_in(&server).await;
            raw.send(&put(2, "/x.bin", size, false)).await;
            raw.send_data(&pattern(10, 0)).await;
            if size > 256 * 1024 {
                eventually("the server created its temp file", || {
                    server_temps(&home).len() == 1
                })
                .await;
            }
            raw.send_bytes(&bytes).await;
            expect_silent_close(&mut raw).await;
            eventually("the temp file is gone", || names_in(&home).is_empty()).await;
        }
    }
    serves_others(&server).await;
}

// ---------------------------------------------------------------------------------------------
// Pipelining and the discard rule

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_pipelined_puts_are_answered_in_order() {
    const PUTS: u64 = 20;
    let server = TestServer::start().await;
    let home = server.home("alice");
    let mut raw = logged_in(&server).await;
    let files: Vec<Vec<u8>> = (0..PUTS)
        .map(|i| pattern(1 + 997 * i as usize, i as u8))
        .collect();
    // Everything goes out before a single reply is read.
    for (i, data) in files.iter().enumerate() {
        let id = 100 + i as u64;
        raw.send(&put(id, &format!("/p{i:02}"), data.len() as u64, false))
            .await;
        for chunk in data.chunks(4000) {
            raw.send_data(chunk).await;
        }
        raw.send(&end(id, &sha256_hex(data))).await;
    }
    // The effect of each request is visible to the next one.
    raw.send(&stat(200, "/p19")).await;

    for (i, data) in files.iter().enumerate() {
        let id = 100 + i as u64;
        match raw.recv().await {
            ServerMessage::Ok {
                id: got,
                size: Some(size),
                sha256: Some(sha),
                ..
            } => {
                assert_eq!(got, id, "replies come in request order");
                assert_eq!(size, data.len() as u64);
                assert_eq!(sha, sha256_hex(data));
            }
            other => panic!("expected ok for put {id}, got {other:?}"),
        }
    }
    match expect_ok(raw.recv().await, 200) {
        ServerMessage::Ok {
            entry: Some(entry), ..
        } => assert_eq!(entry.size, files[19].len() as u64),
        other => panic!("stat without entry: {other:?}"),
    }
    for (i, data) in files.iter().enumerate() {
        let on_disk = std::fs::read(home.join(format!("p{i:02}"))).unwrap();
        assert!(on_disk == *data, "p{i:02} differs on disk");
    }
    assert_eq!(names_in(&home).len(), PUTS as usize);
}

/// A put that the server refuses before it reads the data.
struct Refused {
    path: &'static str,
    overwrite: bool,
    frames: &'static [&'static [u8]],
    /// Finish the upload with `end`, or else with `abort`.
    with_end: bool,
    code: ErrorCode,
}

/// docs/PROTOCOL.md §10.2: after an early refusal the server drops the upload's data and its
/// `end`/`abort` without replying, and goes on with the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refusal_discards_the_upload_and_answers_the_next_request() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("hello.txt"), b"hello\n").unwrap();
    let mut raw = logged_in(&server).await;

    let cases = [
        Refused {
            path: "/hello.txt",
            overwrite: false,
            frames: &[b"hello\n"],
            with_end: true,
            code: ErrorCode::AlreadyExists,
        },
        Refused {
            path: "/a\\b",
            overwrite: true,
            frames: &[b"hel", b"lo\n"],
            with_end: false,
            code: ErrorCode::InvalidPath,
        },
        Refused {
            path: "/",
            overwrite: true,
            frames: &[b"hello\n"],
            with_end: true,
            code: ErrorCode::IsADirectory,
        },
        Refused {
            path: "/nodir/x",
            overwrite: false,
            frames: &[],
            with_end: true,
            code: ErrorCode::NotFound,
        },
    ];
    let mut id = 10;
    for Refused {
        path,
        overwrite,
        frames,
        with_end,
        code,
    } in cases
    {
        let size = frames.iter().map(|f| f.len() as u64).sum();
        raw.send(&put(id, path, size, overwrite)).await;
        for f in frames {
            raw.send_data(f).await;
        }
        if with_end {
            raw.send(&end(id, HELLO_SHA256)).await;
        } else {
            raw.send(&ClientMessage::Abort { id }).await;
        }
        raw.send(&stat(id + 1, "/hello.txt")).await;
        // Exactly one reply for the put, then the stat's: nothing in between.
        expect_error(raw.recv().await, Some(id), code);
        match expect_ok(raw.recv().await, id + 1) {
            ServerMessage::Ok {
                entry: Some(entry), ..
            } => assert_eq!(entry.size, 6),
            other => panic!("stat without entry: {other:?}"),
        }
        id += 2;
    }
    // And nothing trails the last stat either.
    raw.send(&stat(id, "/")).await;
    expect_ok(raw.recv().await, id);
    assert_eq!(names_in(&home), ["hello.txt"]);
    assert_eq!(std::fs::read(home.join("hello.txt")).unwrap(), b"hello\n");

    // A read-only user's put is refused early and discarded the same way.
    let mut reader = server.raw().await;
    reader.login("reader", "reader-pw").await;
    reader.send(&put(2, "/r.txt", 6, false)).await;
    reader.send_data(b"hello\n").await;
    reader.send(&end(2, HELLO_SHA256)).await;
    reader.send(&stat(3, "/")).await;
    expect_error(reader.recv().await, Some(2), ErrorCode::PermissionDenied);
    expect_ok(reader.recv().await, 3);
    assert!(names_in(&server.home("reader")).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Frame caps and broken frames

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_frame_lengths_are_refused_without_allocating() {
    let server = TestServer::start().await;
    let peak_before = vm_peak_kib();

    // Before hello: the pre-auth cap, no reply.
    let mut raw = server.raw().await;
    send_bytes_lossy(&mut raw, &[0xff, 0xff, 0xff, 0xff, KIND_MESSAGE, b'{']).await;
    expect_silent_close(&mut raw).await;
    serves_others(&server).await;

    // After hello, before login: a 16 KiB message is twice the pre-auth cap.
    let mut raw = server.raw().await;
    raw.hello().await;
    let login = json!({"op": "login", "id": 1, "user": "alice", "password": "x".repeat(16 * 1024)});
    let bytes = frame(KIND_MESSAGE, &serde_json::to_vec(&login).unwrap());
    send_bytes_lossy(&mut raw, &bytes).await;
    expect_silent_close(&mut raw).await;
    serves_others(&server).await;

    // After login: a session-level bad_request naming the frame error, then the close.
    let mut raw = logged_in(&server).await;
    send_bytes_lossy(&mut raw, &[0xff, 0xff, 0xff, 0xff, KIND_DATA, 0]).await;
    expect_session_error(
        &mut raw,
        ErrorCode::BadRequest,
        "frame of 4294967295 bytes exceeds the limit of 1048577",
    )
    .await;
    serves_others(&server).await;

    // After login: a message over the 512 KiB message cap, though within the frame cap.
    let mut raw = logged_in(&server).await;
    let mut header = u32::try_from(600 * 1024).unwrap().to_be_bytes().to_vec();
    header.push(KIND_MESSAGE);
    send_bytes_lossy(&mut raw, &header).await;
    expect_session_error(&mut raw, ErrorCode::BadRequest, "exceeds the limit").await;
    serves_others(&server).await;

    // Honouring a claimed 4 GiB would have reserved at least that much address space; the
    // margin absorbs threads and allocator arenas that tests running alongside may add.
    let grown = vm_peak_kib().saturating_sub(peak_before);
    assert!(
        grown < 2 * 1024 * 1024,
        "peak virtual memory grew by {grown} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_login_frame_cap_is_8192() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    raw.hello().await;
    // A login frame of exactly 8 192 bytes is read (and its oversized password refused).
    let login = |pad: usize| {
        let msg = json!({"op": "login", "id": 1, "user": "alice", "password": "x".repeat(pad)});
        serde_json::to_vec(&msg).unwrap()
    };
    let short = login(0).len();
    let at_cap = login(8191 - short);
    assert_eq!(frame(KIND_MESSAGE, &at_cap).len(), 4 + 8192);
    raw.send_bytes(&frame(KIND_MESSAGE, &at_cap)).await;
    expect_error(raw.recv().await, Some(1), ErrorCode::AuthFailed);
    // One byte more is over the cap: closed without a reply.
    let over = login(8192 - short);
    send_bytes_lossy(&mut raw, &frame(KIND_MESSAGE, &over)).await;
    expect_silent_close(&mut raw).await;
    serves_others(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_frames_close_the_connection_and_the_server_serves_others() {
    let server = TestServer::start().await;
    // (what, bytes, text of the session error after login)
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("zero length", vec![0, 0, 0, 0], "zero-length frame"),
        ("unknown kind", frame(9, b"{}"), "unknown frame kind"),
        (
            "malformed json",
            frame(KIND_MESSAGE, br#"{"op":"stat","id":3,"#),
            "malformed message",
        ),
        (
            "unknown op",
            frame(KIND_MESSAGE, br#"{"op":"frobnicate","id":3}"#),
            "malformed message",
        ),
        (
            "invalid utf-8",
            frame(
                KIND_MESSAGE,
                b"{\"op\":\"stat\",\"id\":3,\"path\":\"\xff\"}",
            ),
            "malformed message",
        ),
        (
            "missing field",
            frame(KIND_MESSAGE, br#"{"op":"stat","id":3}"#),
            "malformed message",
        ),
        (
            "null for a string",
            frame(KIND_MESSAGE, br#"{"op":"stat","id":3,"path":null}"#),
            "malformed message",
        ),
        (
            "not an object",
            frame(KIND_MESSAGE, b"[1,2,3]"),
            "malformed message",
        ),
    ];
    for (what, bytes, text) in cases {
        // Before login the server closes without a word.
        let mut raw = server.raw().await;
        raw.hello().await;
        send_bytes_lossy(&mut raw, &bytes).await;
        if let Some(f) = raw.frame().await {
            panic!("{what} before login: expected a silent close, got {f:?}");
        }

        // After login it says why first.
        let mut raw = logged_in(&server).await;
        send_bytes_lossy(&mut raw, &bytes).await;
        match raw.recv().await {
            ServerMessage::Error {
                id: None,
                code: ErrorCode::BadRequest,
                message,
            } => assert!(message.contains(text), "{what}: {message:?}"),
            other => panic!("{what} after login: expected a session error, got {other:?}"),
        }
        expect_silent_close(&mut raw).await;
    }
    serves_others(&server).await;
}

/// With one connection allowed, a new client gets in only once the broken session has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_frame_then_disconnect_ends_the_session() {
    let server = TestServer::start_with(Limits {
        max_connections: 1,
        ..crate::util::test_limits()
    })
    .await;
    let whole = frame(KIND_MESSAGE, br#"{"op":"stat","id":3,"path":"/"}"#);
    let truncated = &whole[..12];

    // A TLS close inside a frame: the client is gone, so no reply.
    let mut raw = raw_when_free(&server).await;
    raw.login("alice", "alice-pw").await;
    raw.send_bytes(truncated).await;
    raw.writer.shutdown().await.unwrap();
    expect_silent_close(&mut raw).await;
    drop(raw);

    // A plain TCP drop inside a frame.
    let mut raw = raw_when_free(&server).await;
    raw.login("alice", "alice-pw").await;
    raw.send_bytes(truncated).await;
    drop(raw);

    // The slot comes free again, and the next client is served normally.
    let mut raw = raw_when_free(&server).await;
    raw.login("alice", "alice-pw").await;
    raw.send(&stat(2, "/")).await;
    expect_ok(raw.recv().await, 2);
}

/// A raw connection (TLS done, nothing sent), retrying while the server turns connections away
/// at accept because its only slot is still taken.
async fn raw_when_free(server: &TestServer) -> Raw {
    let deadline = Instant::now() + CLEANUP_DEADLINE;
    loop {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let name = ferry::tls::server_name("127.0.0.1").unwrap();
        let tls = tokio_rustls::TlsConnector::from(server.client_tls())
            .connect(name, tcp)
            .await;
        if let Ok(stream) = tls {
            let (r, w) = tokio::io::split(stream);
            return Raw {
                reader: ferry::protocol::FrameReader::new(r, ferry::protocol::MAX_FRAME_LEN),
                writer: ferry::protocol::FrameWriter::new(w),
            };
        }
        assert!(
            Instant::now() < deadline,
            "the broken session still holds the only connection slot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Session phases

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_errors_after_login_name_the_problem_and_close() {
    let server = TestServer::start().await;
    // (what to send, the session error's text)
    let data = frame(KIND_DATA, b"stray");
    let hello = serde_json::to_vec(&json!({"op": "hello", "versions": [1]})).unwrap();
    let end_msg = serde_json::to_vec(&end(5, EMPTY_SHA256)).unwrap();
    let abort = serde_json::to_vec(&ClientMessage::Abort { id: 5 }).unwrap();
    let cases: [(Vec<u8>, &str); 4] = [
        (data, "data frame outside an upload"),
        (frame(KIND_MESSAGE, &hello), "hello sent twice"),
        (
            frame(KIND_MESSAGE, &end_msg),
            "end or abort outside an upload",
        ),
        (
            frame(KIND_MESSAGE, &abort),
            "end or abort outside an upload",
        ),
    ];
    for (bytes, text) in cases {
        let mut raw = logged_in(&server).await;
        raw.send_bytes(&bytes).await;
        expect_session_error(&mut raw, ErrorCode::BadRequest, text).await;
    }
    // Another request interleaved into an upload, or an `end` with another id.
    for intruder in [stat(3, "/"), end(3, HELLO_SHA256)] {
        let mut raw = logged_in(&server).await;
        raw.send(&put(2, "/x", 6, false)).await;
        raw.send_data(b"hel").await;
        raw.send(&intruder).await;
        expect_session_error(
            &mut raw,
            ErrorCode::BadRequest,
            "expected data, end or abort during an upload",
        )
        .await;
    }
    eventually("the interrupted upload is cleaned up", || {
        names_in(&server.home("alice")).is_empty()
    })
    .await;
    serves_others(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_login_are_auth_required() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    raw.hello().await;
    raw.send(&stat(7, "/")).await;
    let message = expect_error(raw.recv().await, Some(7), ErrorCode::AuthRequired);
    assert_eq!(message, "log in first");
    expect_silent_close(&mut raw).await;

    // A message without an id gets the error without an id.
    let mut raw = server.raw().await;
    raw.hello().await;
    raw.send(&ClientMessage::Hello {
        versions: vec![PROTOCOL_VERSION],
        software: "again".into(),
    })
    .await;
    expect_session_error(&mut raw, ErrorCode::AuthRequired, "log in first").await;

    // Data before login, even after hello, closes silently.
    let mut raw = server.raw().await;
    raw.hello().await;
    raw.send_data(b"x").await;
    expect_silent_close(&mut raw).await;
    serves_others(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_before_hello_closes_without_reply() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    raw.send_data(b"hello\n").await;
    expect_silent_close(&mut raw).await;

    // A first message that is valid JSON but not hello gets bad_request first.
    let mut raw = server.raw().await;
    raw.send(&stat(1, "/")).await;
    expect_session_error(&mut raw, ErrorCode::BadRequest, "expected hello").await;
    serves_others(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_without_version_1_is_unsupported_version() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    raw.send(&ClientMessage::Hello {
        versions: vec![99],
        software: "future".into(),
    })
    .await;
    expect_session_error(&mut raw, ErrorCode::UnsupportedVersion, "version 1").await;

    // Listing 1 among others is fine: the server picks 1.
    let mut raw = server.raw().await;
    raw.send(&ClientMessage::Hello {
        versions: vec![99, PROTOCOL_VERSION, 2],
        software: "future".into(),
    })
    .await;
    match raw.recv().await {
        ServerMessage::Hello { version, .. } => assert_eq!(version, PROTOCOL_VERSION),
        other => panic!("expected hello, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Downloads and ids

/// Reads a download: the `file` header, data frames up to the final message.
async fn read_download(raw: &mut Raw, id: u64) -> (u64, i64, Vec<u8>, ServerMessage) {
    let (size, mtime) = match raw.recv().await {
        ServerMessage::File {
            id: got,
            size,
            mtime,
            ..
        } if got == id => (size, mtime),
        other => panic!("expected file for {id}, got {other:?}"),
    };
    let mut data = Vec::new();
    loop {
        match raw.frame().await {
            Some(Frame::Data(bytes)) => {
                assert!(!bytes.is_empty() && bytes.len() <= MAX_DATA_LEN);
                data.extend_from_slice(&bytes);
            }
            Some(Frame::Message(m)) => {
                let msg = ferry::protocol::decode_server_message(&m).unwrap();
                return (size, mtime, data, msg);
            }
            None => panic!("connection closed during a download"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_bytes_size_and_digest_match_the_file() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    std::fs::create_dir_all(&home).unwrap();
    let content = random_file(&home.join("f.bin"), 3 * 256 * 1024 + 4321, 9);
    std::fs::write(home.join("empty"), b"").unwrap();
    let mtime = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(home.join("f.bin")).unwrap().mtime()
    };
    let mut raw = logged_in(&server).await;

    raw.send(&ClientMessage::Get {
        id: 2,
        path: "/f.bin".into(),
        offset: 0,
        prefix_sha256: None,
    })
    .await;
    let (size, got_mtime, data, last) = read_download(&mut raw, 2).await;
    assert_eq!(size, content.len() as u64);
    assert_eq!(got_mtime, mtime);
    assert!(data == content, "downloaded bytes differ from the file");
    match last {
        ServerMessage::Ok {
            id: 2,
            size: Some(n),
            sha256: Some(sha),
            ..
        } => {
            assert_eq!(n, content.len() as u64);
            assert_eq!(sha, sha256_hex(&content));
        }
        other => panic!("expected the final ok, got {other:?}"),
    }

    raw.send(&ClientMessage::Get {
        id: 3,
        path: "/empty".into(),
        offset: 0,
        prefix_sha256: None,
    })
    .await;
    let (size, _, data, last) = read_download(&mut raw, 3).await;
    assert_eq!((size, data.len()), (0, 0));
    match last {
        ServerMessage::Ok {
            id: 3,
            size: Some(0),
            sha256: Some(sha),
            ..
        } => assert_eq!(sha, EMPTY_SHA256),
        other => panic!("expected the final ok, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_echoes_its_request_id() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("a"), b"hello\n").unwrap();
    std::fs::write(home.join("b"), b"").unwrap();
    let mut raw = server.raw().await;
    raw.hello().await;

    let login = |id: u64, password: &str| ClientMessage::Login {
        id,
        user: "alice".into(),
        password: password.into(),
    };
    raw.send(&login(76, "wrong")).await;
    expect_error(raw.recv().await, Some(76), ErrorCode::AuthFailed);
    raw.send(&login(u64::MAX, "alice-pw")).await;
    expect_ok(raw.recv().await, u64::MAX);
    raw.send(&login(0, "alice-pw")).await;
    expect_error(raw.recv().await, Some(0), ErrorCode::BadRequest);

    let big = (1u64 << 53) + 1;
    raw.send(&stat(big, "/a")).await;
    expect_ok(raw.recv().await, big);
    raw.send(&stat(45, "/nope")).await;
    expect_error(raw.recv().await, Some(45), ErrorCode::NotFound);
    raw.send(&stat(46, "/.ferry-x")).await;
    expect_error(raw.recv().await, Some(46), ErrorCode::InvalidPath);

    raw.send(&ClientMessage::List {
        id: 47,
        path: "/".into(),
    })
    .await;
    match raw.recv().await {
        ServerMessage::Entries { id, entries } => {
            assert_eq!((id, entries.len()), (47, 2));
        }
        other => panic!("expected entries, got {other:?}"),
    }
    match expect_ok(raw.recv().await, 47) {
        ServerMessage::Ok { count, .. } => assert_eq!(count, Some(2)),
        other => panic!("{other:?}"),
    }

    raw.send(&ClientMessage::Get {
        id: 48,
        path: "/a".into(),
        offset: 0,
        prefix_sha256: None,
    })
    .await;
    let (_, _, _, last) = read_download(&mut raw, 48).await;
    expect_ok(last, 48);

    raw.send(&put(49, "/c", 6, false)).await;
    raw.send_data(b"hello\n").await;
    raw.send(&end(49, HELLO_SHA256)).await;
    expect_ok(raw.recv().await, 49);

    let simple: [(ClientMessage, Option<ErrorCode>); 6] = [
        (
            ClientMessage::Mkdir {
                id: 50,
                path: "/d".into(),
            },
            None,
        ),
        (
            ClientMessage::Mkdir {
                id: 51,
                path: "/d".into(),
            },
            Some(ErrorCode::AlreadyExists),
        ),
        (
            ClientMessage::Rename {
                id: 52,
                from: "/c".into(),
                to: "/d/c".into(),
                overwrite: false,
            },
            None,
        ),
        (
            ClientMessage::Remove {
                id: 53,
                path: "/d/c".into(),
            },
            None,
        ),
        (
            ClientMessage::Rmdir {
                id: 54,
                path: "/d".into(),
            },
            None,
        ),
        (
            ClientMessage::Rmdir {
                id: 55,
                path: "/d".into(),
            },
            Some(ErrorCode::NotFound),
        ),
    ];
    for (msg, code) in simple {
        let id = msg.id().unwrap();
        raw.send(&msg).await;
        match code {
            None => {
                expect_ok(raw.recv().await, id);
            }
            Some(code) => {
                expect_error(raw.recv().await, Some(id), code);
            }
        }
    }
    assert_eq!(names_in(&home), ["a", "b"]);
}

/// docs/PROTOCOL.md §3.1: unknown fields are ignored, whitespace around the object is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_and_surrounding_whitespace_are_accepted() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    let hello = br#" {"op":"hello","versions":[1],"software":"t","compression":["zstd"]}
"#;
    raw.send_bytes(&frame(KIND_MESSAGE, hello)).await;
    assert!(matches!(raw.recv().await, ServerMessage::Hello { .. }));
    let login = br#"{"id":1,"password":"alice-pw","op":"login","user":"alice","otp":null}"#;
    raw.send_bytes(&frame(KIND_MESSAGE, login)).await;
    expect_ok(raw.recv().await, 1);
    let stat = b"\t{\"op\":\"stat\",\"id\":2,\"path\":\"/\",\"future\":{\"a\":[1,{\"b\":2}]}}\r\n";
    raw.send_bytes(&frame(KIND_MESSAGE, stat)).await;
    match expect_ok(raw.recv().await, 2) {
        ServerMessage::Ok {
            entry: Some(entry), ..
        } => assert_eq!((entry.name.as_str(), entry.kind), ("/", EntryKind::Dir)),
        other => panic!("stat without entry: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_pages_are_bounded_and_counted() {
    const FILES: usize = 1100;
    let server = TestServer::start().await;
    let home = server.home("alice");
    std::fs::create_dir_all(home.join("many")).unwrap();
    std::fs::create_dir_all(home.join("empty")).unwrap();
    std::fs::write(home.join("f"), b"abc").unwrap();
    let mut expected: Vec<String> = (0..FILES).map(|i| format!("n{i:04}")).collect();
    for name in &expected {
        std::fs::write(home.join("many").join(name), b"").unwrap();
    }
    let mut raw = logged_in(&server).await;

    let list = |id: u64, path: &str| ClientMessage::List {
        id,
        path: path.into(),
    };
    raw.send(&list(2, "/many")).await;
    let mut names = Vec::new();
    let count = loop {
        match raw.recv().await {
            ServerMessage::Entries { id: 2, entries } => {
                assert!(
                    (1..=ferry::protocol::LIST_PAGE_LEN).contains(&entries.len()),
                    "page of {} entries",
                    entries.len()
                );
                names.extend(entries.into_iter().map(|e| e.name));
            }
            ServerMessage::Ok {
                id: 2,
                count: Some(count),
                ..
            } => break count,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(count, FILES as u64);
    names.sort();
    expected.sort();
    assert!(names == expected, "listed names differ");

    // An empty directory gets no page at all.
    raw.send(&list(3, "/empty")).await;
    match expect_ok(raw.recv().await, 3) {
        ServerMessage::Ok { count, .. } => assert_eq!(count, Some(0)),
        other => panic!("{other:?}"),
    }

    // A file is listed as itself.
    raw.send(&list(4, "/f")).await;
    match raw.recv().await {
        ServerMessage::Entries { id: 4, entries } => {
            assert_eq!(entries.len(), 1);
            assert_eq!((entries[0].name.as_str(), entries[0].size), ("f", 3));
        }
        other => panic!("expected one entry, got {other:?}"),
    }
    match expect_ok(raw.recv().await, 4) {
        ServerMessage::Ok { count, .. } => assert_eq!(count, Some(1)),
        other => panic!("{other:?}"),
    }
}

/// Regression: replies of committed uploads wait for a shared directory fsync (group commit),
/// but never for the client: a complete upload followed by only the header of the next one
/// must still get its reply while the server waits for that next upload's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r_group_commit_reply_does_not_wait_for_the_next_uploads_data() {
    let server = TestServer::start().await;
    let mut raw = logged_in(&server).await;
    let data = pattern(100, 3);
    raw.send(&put(2, "/a", 100, false)).await;
    raw.send_data(&data).await;
    raw.send(&ClientMessage::End {
        id: 2,
        sha256: sha256_hex(&data),
    })
    .await;
    raw.send(&put(3, "/b", 100, false)).await;
    match raw.recv().await {
        ServerMessage::Ok { id: 2, .. } => {}
        other => panic!("expected the first upload's ok, got {other:?}"),
    }
    raw.send_data(&data).await;
    raw.send(&ClientMessage::End {
        id: 3,
        sha256: sha256_hex(&data),
    })
    .await;
    assert!(matches!(raw.recv().await, ServerMessage::Ok { id: 3, .. }));
    assert_eq!(std::fs::read(server.home("alice").join("b")).unwrap(), data);
}

/// Two pipelined uploads to one new name, without overwrite, land in the same group commit:
/// the first wins whole, the second is refused (as it would be one after the other), and a
/// request after them sees the winner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_name_twice_in_one_group_commit_refuses_the_second() {
    let server = TestServer::start().await;
    let mut raw = logged_in(&server).await;
    let (first, second) = (pattern(3000, 1), pattern(3000, 2));
    for (id, data) in [(2, &first), (3, &second)] {
        raw.send(&put(id, "/same", data.len() as u64, false)).await;
        raw.send_data(data).await;
        raw.send(&end(id, &sha256_hex(data))).await;
    }
    raw.send(&stat(4, "/same")).await;
    expect_ok(raw.recv().await, 2);
    expect_error(raw.recv().await, Some(3), ErrorCode::AlreadyExists);
    expect_ok(raw.recv().await, 4);
    assert_eq!(
        std::fs::read(server.home("alice").join("same")).unwrap(),
        first
    );
    assert!(server_temps(&server.home("alice")).is_empty());
}
