//! A hostile server cannot hang the client (issue 12, item 11). Each test runs a real TLS
//! listener on 127.0.0.1:0 that speaks ferry/1 frames (hello, login, then lies): endless
//! `progress` that never brings a result, an endless listing, an endlessly deep tree. The
//! client is the real library (`Connection`, `Session`, the shell's command lines).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry::client::ops::Session;
use ferry::client::{ClientError, Connection, shell};
use ferry::protocol::{
    ClientMessage, Entry, EntryKind, FrameReader, FrameWriter, MAX_FRAME_LEN, PROTOCOL_VERSION,
    ServerMessage, decode_client_message,
};
use ferry::users::Password;
use tokio::net::TcpListener;

/// The longest any client call may take here before the test calls it a hang.
const HANG: Duration = Duration::from_secs(60);

/// What the hostile server does without end, after a normal hello and login.
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// `stat` says a 10-byte file; `sha256` and `copy` get `progress` every 20 ms forever:
    /// the same count, then counts past the file's size, then the same count padded with
    /// an unknown field (a client that only looks at short messages takes it for news).
    /// `get` gets its `file` header and then only `progress`.
    Progress,
    /// `list` gets pages of 512 entries with long names, forever.
    Listing,
    /// Every path is a directory holding one directory `d`.
    Tree,
    /// Every path is a directory holding two directories, `a` and `b`: the depth cap alone
    /// leaves 2^256 of them.
    WideTree,
    /// `get` gets its `file` header (10 bytes) and then empty data frames forever: frames
    /// that arrive but bring no byte.
    EmptyData,
    /// Not hostile, only slow: reads the first 30 data frames of an upload 50 ms apart, the
    /// rest at once, and answers `end` with the right digest.
    SlowReader,
}

/// A hostile ferry/1 server on 127.0.0.1:0; returns its port, the CA that signed its
/// certificate, and a counter of the requests it answered.
async fn hostile(lie: Lie, dir: &Path) -> (u16, std::path::PathBuf, Arc<AtomicU64>) {
    let certs = ferry::certs::generate(dir, &[], false).unwrap();
    let tls = ferry::tls::server_config(
        &certs.paths.server_cert,
        &certs.paths.server_key,
        ferry::server::ALPN_OFFERED,
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = Arc::clone(&tls);
            let counter = Arc::clone(&counter);
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await else {
                    return;
                };
                let (r, w) = tokio::io::split(stream);
                let mut reader = FrameReader::new(r, MAX_FRAME_LEN);
                let mut writer = FrameWriter::new(w);
                let _ = serve(lie, &mut reader, &mut writer, &counter).await;
            });
        }
    });
    (port, certs.paths.ca_cert, requests)
}

type R = FrameReader<tokio::io::ReadHalf<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>;
type W = FrameWriter<tokio::io::WriteHalf<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>;

fn entry(name: &str, kind: EntryKind, size: u64) -> Entry {
    Entry {
        name: name.to_string(),
        kind,
        size,
        mtime: 1_764_236_400,
        mode: 0o755,
    }
}

async fn serve(
    lie: Lie,
    reader: &mut R,
    writer: &mut W,
    counter: &AtomicU64,
) -> Result<(), Box<dyn std::error::Error>> {
    while let Some(frame) = reader.read_frame().await? {
        let ferry::protocol::Frame::Message(m) = frame else {
            continue;
        };
        let msg = decode_client_message(&m)?;
        counter.fetch_add(1, Ordering::Relaxed);
        match msg {
            ClientMessage::Hello { .. } => {
                writer
                    .send_message(&ServerMessage::Hello {
                        version: PROTOCOL_VERSION,
                        software: "hostile".into(),
                    })
                    .await?
            }
            ClientMessage::Login { id, .. } => writer.send_message(&ServerMessage::ok(id)).await?,
            ClientMessage::Stat { id, .. } => {
                let e = match lie {
                    Lie::Progress => entry("f", EntryKind::File, 10),
                    _ => entry("d", EntryKind::Dir, 0),
                };
                writer.send_message(&ServerMessage::ok_entry(id, e)).await?
            }
            ClientMessage::Put { id, size, .. } => {
                use sha2::Digest;
                let mut hasher = sha2::Sha256::new();
                let mut frames = 0;
                loop {
                    match reader.read_frame().await? {
                        Some(ferry::protocol::Frame::Data(d)) => {
                            hasher.update(&d);
                            frames += 1;
                            if frames <= 30 {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                        Some(ferry::protocol::Frame::Message(_)) => break,
                        None => return Ok(()),
                    }
                }
                let sha = hex::encode(hasher.finalize());
                writer
                    .send_message(&ServerMessage::ok_transfer(id, size, sha))
                    .await?
            }
            ClientMessage::Get { id, .. } if matches!(lie, Lie::EmptyData) => {
                let file = ServerMessage::File {
                    id,
                    size: 10,
                    mtime: 0,
                    offset: 0,
                };
                writer.send_message(&file).await?;
                loop {
                    // A data frame of length 1: its kind byte and no payload.
                    use tokio::io::AsyncWriteExt;
                    let w = writer.get_mut();
                    w.write_all(&[0, 0, 0, 1, ferry::protocol::KIND_DATA])
                        .await?;
                    w.flush().await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            ClientMessage::Get { id, .. } => {
                // A download that announces its file and then only ever makes progress.
                let file = ServerMessage::File {
                    id,
                    size: 10,
                    mtime: 0,
                    offset: 0,
                };
                writer.send_message(&file).await?;
                loop {
                    writer
                        .send_message(&ServerMessage::Progress { id, bytes: 5 })
                        .await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            ClientMessage::Sha256 { id, .. } | ClientMessage::Copy { id, .. } => {
                // Never a result: first the same count, then counts beyond the file's size.
                let mut bytes = 5;
                for i in 0u64.. {
                    if i > 100 {
                        let padded = serde_json::json!({
                            "type": "progress", "id": id, "bytes": 5, "pad": "p".repeat(1000)
                        });
                        writer.send_message(&padded).await?;
                    } else {
                        if i > 50 {
                            bytes += 1 << 20;
                        }
                        writer
                            .send_message(&ServerMessage::Progress { id, bytes })
                            .await?;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            ClientMessage::List { id, .. } => match lie {
                Lie::Listing => {
                    let long = "x".repeat(100);
                    for page in 0u64.. {
                        let entries = (0..512)
                            .map(|i| entry(&format!("{long}-{page}-{i}"), EntryKind::File, 1))
                            .collect();
                        writer
                            .send_message(&ServerMessage::Entries { id, entries })
                            .await?;
                    }
                }
                Lie::WideTree => {
                    let entries =
                        vec![entry("a", EntryKind::Dir, 0), entry("b", EntryKind::Dir, 0)];
                    writer
                        .send_message(&ServerMessage::Entries { id, entries })
                        .await?;
                    writer.send_message(&ServerMessage::ok_count(id, 2)).await?;
                }
                _ => {
                    let entries = vec![entry("d", EntryKind::Dir, 0)];
                    writer
                        .send_message(&ServerMessage::Entries { id, entries })
                        .await?;
                    writer.send_message(&ServerMessage::ok_count(id, 1)).await?;
                }
            },
            // Every name in the lying trees is a directory: `rm -r` removes first and descends
            // only when told so, as a real server tells it.
            ClientMessage::Remove { id, .. } if matches!(lie, Lie::Tree | Lie::WideTree) => {
                let msg = ServerMessage::error(
                    Some(id),
                    ferry::protocol::ErrorCode::IsADirectory,
                    "is a directory",
                );
                writer.send_message(&msg).await?
            }
            ClientMessage::Mkdir { id, .. }
            | ClientMessage::Rmdir { id, .. }
            | ClientMessage::Remove { id, .. } => {
                writer.send_message(&ServerMessage::ok(id)).await?
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}

async fn logged_in(port: u16, ca: &Path) -> Connection {
    let tls = ferry::tls::client_config(Some(ca), ferry::protocol::ALPN).unwrap();
    let mut c = Connection::connect("127.0.0.1", port, tls).await.unwrap();
    c.login("alice", &Password::new("pw".into())).await.unwrap();
    c
}

#[tokio::test]
async fn endless_progress_does_not_extend_a_request_forever() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ca, _) = hostile(Lie::Progress, dir.path()).await;
    let local = tempfile::tempdir().unwrap();
    for what in ["sha256", "copy", "get"] {
        let mut c = logged_in(port, &ca).await;
        c.set_stall_timeout(Duration::from_secs(3));
        let started = Instant::now();
        let result = tokio::time::timeout(HANG, async {
            match what {
                "sha256" => c.sha256("/f").await.map(|_| ()),
                "copy" => c.copy("/f", "/g", false).await.map(|_| ()),
                _ => {
                    let mut progress = |_| {};
                    let target = local.path().join("f");
                    c.get("/f", &target, false, &mut progress).await.map(|_| ())
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}: endless progress held the client for {HANG:?}"));
        let took = started.elapsed();
        assert!(
            matches!(result, Err(ClientError::Timeout)),
            "{what}: {result:?}"
        );
        // 3 s of stall plus what 10 bytes of work can earn; the lies past the file and the
        // padded repeats earn nothing.
        assert!(took < Duration::from_secs(8), "{what} took {took:?}");
    }
    // The download that never came left nothing behind, under any name.
    assert_eq!(std::fs::read_dir(local.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn endless_empty_data_frames_do_not_hold_a_download_open() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ca, _) = hostile(Lie::EmptyData, dir.path()).await;
    let local = tempfile::tempdir().unwrap();
    let mut c = logged_in(port, &ca).await;
    c.set_stall_timeout(Duration::from_secs(3));
    let started = Instant::now();
    let mut progress = |_| {};
    let target = local.path().join("f");
    let result = tokio::time::timeout(HANG, c.get("/f", &target, false, &mut progress))
        .await
        .unwrap_or_else(|_| panic!("empty data frames held the client for {HANG:?}"));
    assert!(result.is_err(), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(std::fs::read_dir(local.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn an_endless_listing_is_cut_at_the_byte_cap() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ca, _) = hostile(Lie::Listing, dir.path()).await;
    let mut c = logged_in(port, &ca).await;
    let result = tokio::time::timeout(HANG, c.list("/"))
        .await
        .expect("an endless listing held the client");
    match result {
        Err(ClientError::Protocol(msg)) => {
            assert!(msg.contains("longer than the client accepts"), "{msg}");
        }
        other => panic!(
            "expected the listing refused, got {:?}",
            other.map(|v| v.len())
        ),
    }
}

#[test]
fn an_endlessly_deep_tree_stops_at_the_depth_cap_for_get_r_and_rm_r() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (port, ca, requests) = rt.block_on(hostile(Lie::Tree, dir.path()));
    let local = tempfile::tempdir().unwrap();

    for line in [
        format!("get -r /top {}", local.path().join("got").display()),
        "rm -r /top".to_string(),
    ] {
        let conn = rt.block_on(logged_in(port, &ca));
        let mut session = Session::new(rt.handle().clone(), conn);
        let before = requests.load(Ordering::Relaxed);
        let started = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let result = shell::execute_line(&mut session, &line);
            let _ = tx.send((line, result.map_err(|e| e.for_terminal())));
        });
        let (line, result) = rx
            .recv_timeout(HANG)
            .expect("an endlessly deep tree held the client");
        worker.join().unwrap();
        let err = result.expect_err(&line);
        // rm -r stops at the first path it may not send; get -r reports that directory as
        // failed and ends.
        let expected = if line.starts_with("rm") {
            "deeper than 256"
        } else {
            "1 of 1 items failed"
        };
        assert!(err.contains(expected), "{line}: {err}");
        assert!(
            started.elapsed() < HANG / 2,
            "{line}: {:?}",
            started.elapsed()
        );
        // One listing (or stat) per level and a little more: the walk stopped near 256.
        let asked = requests.load(Ordering::Relaxed) - before;
        assert!(asked < 4 * 260, "{line}: {asked} requests");
    }
    // get -r made the levels it saw and nothing deeper than the cap.
    let mut depth = 0;
    let mut p = local.path().join("got");
    while p.join("d").is_dir() {
        depth += 1;
        p = p.join("d");
    }
    assert!((250..=257).contains(&depth), "{depth}");
}

#[test]
fn an_endlessly_wide_tree_stops_at_the_entries_a_command_may_list() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (port, ca, requests) = rt.block_on(hostile(Lie::WideTree, dir.path()));
    let local = tempfile::tempdir().unwrap();
    let conn = rt.block_on(logged_in(port, &ca));
    let mut session = Session::new(rt.handle().clone(), conn);
    // The default is 2,000,000; a smaller budget shows the rule without a long test.
    session.max_listed = 1_000;
    let line = format!("get -r /top {}", local.path().join("got").display());
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        session.begin();
        let result = shell::execute_line(&mut session, &line);
        session.end();
        let _ = tx.send(result.map_err(|e| e.for_terminal()));
    });
    let result = rx
        .recv_timeout(HANG)
        .expect("an endlessly wide tree held the client");
    worker.join().unwrap();
    let err = result.expect_err("get -r of an endless tree");
    assert!(err.contains("items failed"), "{err}");
    let asked = requests.load(Ordering::Relaxed);
    assert!(asked < 2_000, "{asked} requests");
}

/// The stall rule counts the bytes the client sends, too: an upload that keeps moving is not
/// a stalled request, however long the server stays silent until its final reply. (Before,
/// any single upload that took longer than the read timeout failed.)
#[tokio::test]
async fn an_upload_longer_than_the_stall_time_is_not_a_stall() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ca, _) = hostile(Lie::SlowReader, dir.path()).await;
    let local = dir.path().join("big.bin");
    crate::util::random_file(&local, 16 << 20, 71);
    let mut c = logged_in(port, &ca).await;
    // Far shorter than the upload takes (30 chunks at 50 ms), far longer than the pause
    // between two chunks.
    c.set_stall_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let mut progress = |_| {};
    let t = tokio::time::timeout(HANG, c.put(&local, "/big.bin", false, &mut progress))
        .await
        .expect("the upload hung");
    let took = started.elapsed();
    let t = t.unwrap_or_else(|e| panic!("upload of {took:?} failed: {e}"));
    assert_eq!(t.size, 16 << 20);
    assert!(
        took > Duration::from_millis(1000),
        "too fast to show anything: {took:?}"
    );
}
