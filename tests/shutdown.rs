//! A shutdown whose grace period runs out while transfers are still going: the real `ferry
//! serve`, SIGTERM, and clients that keep sending or reading slowly. What was cut off is treated
//! like a client disconnect: the upload is kept for `reput`, each transfer gets an audit line
//! with result `interrupted`, and the client is told why before the connection closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::protocol::{ClientMessage, ErrorCode, Frame, ServerMessage, decode_server_message};

use crate::cli::{ALICE_PW, World};
use crate::util::Raw;

const CHUNK: usize = 64 * 1024;

/// Reads until the server closes the connection; returns the messages (data frames are
/// counted, not kept). Panics if it stays open past `limit`.
async fn messages_until_closed(raw: &mut Raw, limit: Duration) -> (Vec<ServerMessage>, usize) {
    let end = tokio::time::Instant::now() + limit;
    let mut msgs = Vec::new();
    let mut data = 0;
    loop {
        match tokio::time::timeout_at(end, raw.reader.read_frame()).await {
            Err(_) => panic!("still open after {limit:?}; got {msgs:?}"),
            Ok(Ok(None) | Err(_)) => return (msgs, data),
            Ok(Ok(Some(Frame::Message(m)))) => msgs.push(decode_server_message(&m).unwrap()),
            Ok(Ok(Some(Frame::Data(d)))) => {
                data += d.len();
                // A slow reader: the download must still be running when the grace ends.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn interrupted_reply(msgs: &[ServerMessage], id: u64, resumes_with: &str) -> bool {
    msgs.iter().any(|m| {
        matches!(m, ServerMessage::Error { id: Some(i), code: ErrorCode::Busy, message }
            if *i == id && message.contains("shutting down") && message.contains(resumes_with))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_cut_off_by_shutdown_are_kept_audited_and_explained() {
    let w = World::start_with(&["--log-format", "json", "--shutdown-grace", "1s"]);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], w.server.port()));
    let tls = ferry::tls::client_config(Some(&w.ca), ferry::protocol::ALPN).unwrap();
    let home = w.alice_home();
    // A file to download slowly: far more than the socket buffers hold.
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("big.bin"), vec![7u8; 48 * 1024 * 1024]).unwrap();

    let mut up = Raw::connect(addr, Arc::clone(&tls)).await;
    up.login("alice", ALICE_PW).await;
    up.send(&ClientMessage::Put {
        id: 5,
        path: "/slow.bin".into(),
        size: 64 * 1024 * 1024,
        overwrite: false,
        offset: 0,
        prefix_sha256: None,
    })
    .await;
    up.send_data(&vec![3; CHUNK]).await;

    let mut down = Raw::connect(addr, Arc::clone(&tls)).await;
    down.login("alice", ALICE_PW).await;
    down.send(&ClientMessage::Get {
        id: 9,
        path: "/big.bin".into(),
        offset: 0,
        prefix_sha256: None,
    })
    .await;
    assert!(matches!(
        down.recv().await,
        ServerMessage::File { id: 9, .. }
    ));

    let signalled = Instant::now();
    let pid = w.server.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let upload = async {
        let Raw { reader, writer } = &mut up;
        let feed = async {
            loop {
                tokio::time::sleep(Duration::from_millis(30)).await;
                writer.queue_data(&[3; CHUNK]).unwrap();
                if writer.flush().await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await
        };
        let read = async {
            let end = tokio::time::Instant::now() + Duration::from_secs(20);
            let mut msgs = Vec::new();
            loop {
                match tokio::time::timeout_at(end, reader.read_frame()).await {
                    Err(_) => panic!("upload session still open after 20 s: {msgs:?}"),
                    Ok(Ok(None) | Err(_)) => return msgs,
                    Ok(Ok(Some(Frame::Message(m)))) => {
                        msgs.push(decode_server_message(&m).unwrap());
                    }
                    Ok(Ok(Some(Frame::Data(_)))) => panic!("data frame to an uploader"),
                }
            }
        };
        tokio::select! {
            m = read => m,
            () = feed => unreachable!(),
        }
    };
    let download = messages_until_closed(&mut down, Duration::from_secs(20));
    let (up_msgs, (down_msgs, down_bytes)) = tokio::join!(upload, download);
    let took = signalled.elapsed();
    eprintln!("sessions closed {took:?} after SIGTERM; downloaded {down_bytes} bytes");

    assert!(
        interrupted_reply(&up_msgs, 5, "reput"),
        "the uploader was not told that the server is shutting down and reput resumes: {up_msgs:?}"
    );
    assert!(
        interrupted_reply(&down_msgs, 9, "reget"),
        "the downloader was not told that the server is shutting down and reget resumes: \
         {down_msgs:?}"
    );
    assert!(
        down_bytes < 48 * 1024 * 1024,
        "the download finished: not a test of a cut-off"
    );

    let stopped = w.server.stop();
    // The upload is kept as a partial for `reput`, and nothing appeared under its name.
    assert!(!home.join("slow.bin").exists());
    let partials: Vec<u64> = std::fs::read_dir(home.join(".ferry-partials"))
        .map(|d| d.map(|e| e.unwrap().metadata().unwrap().len()).collect())
        .unwrap_or_default();
    assert_eq!(
        partials.len(),
        1,
        "no partial kept; stderr:\n{}",
        stopped.stderr
    );
    assert!(partials[0] >= CHUNK as u64, "{partials:?}");

    // One audit line each, result `interrupted`.
    let lines: Vec<serde_json::Value> = stopped
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for (op, path) in [("put", "/slow.bin"), ("get", "/big.bin")] {
        let audit: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| {
                l["target"] == "ferry::audit"
                    && l["fields"]["op"] == op
                    && l["fields"]["path"] == path
            })
            .collect();
        assert_eq!(
            audit.len(),
            1,
            "{op} {path}: want one audit line; stderr:\n{}",
            stopped.stderr
        );
        assert_eq!(audit[0]["fields"]["result"], "interrupted", "{}", audit[0]);
    }
}

/// The client's side of the same cut-off, with the real binary: it says the server is shutting
/// down and that `reput` resumes, exits with the connection code (4), and its JSON lists the
/// file as failed with `interrupted: true`. To cut off at a known point without slowing the
/// transfer down, the client is stopped (SIGSTOP) once the server holds a quarter of the file,
/// the server is sent SIGTERM, and the client continues (SIGCONT) once the server is gone.
#[test]
fn a_client_cut_off_by_shutdown_says_why_and_exits_with_the_connection_code() {
    use std::process::{Command, Stdio};

    let w = World::start_with(&["--shutdown-grace", "200ms"]);
    let size = 64 * 1024 * 1024;
    crate::util::random_file(&w.local.join("big.bin"), size, 18);
    let home = w.alice_home();
    let port = w.server.port().to_string();
    let mut client = Command::new(crate::cli::FERRY)
        .current_dir(&w.local)
        .env_remove("FERRY_LOG")
        .env("HOME", &w.local)
        .env("FERRY_PASSWORD", ALICE_PW)
        .args(["put", "--json", "big.bin", "alice@127.0.0.1:", "-P", &port])
        .args(["--ca", w.ca.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let signal = |pid: u32, sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    let largest_temp = || {
        std::fs::read_dir(&home)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while largest_temp() < size as u64 / 4 {
        assert!(
            Instant::now() < deadline,
            "the upload never reached a quarter"
        );
        assert!(
            client.try_wait().unwrap().is_none(),
            "the client ended early"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    signal(client.id(), "-STOP");
    let stopped = w.server.stop();
    signal(client.id(), "-CONT");
    let out = client.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(4),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let v: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\nstderr: {stderr}"));
    let failed = &v["failed"][0];
    assert_eq!(failed["interrupted"], true, "{v}");
    assert_eq!(failed["exit_code"], 4, "{v}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("shutting down") && error.contains("reput"),
        "the client did not say the server is shutting down and reput resumes: {v}"
    );
    // And the server kept what arrived.
    assert!(!home.join("big.bin").exists());
    let kept: Vec<u64> = std::fs::read_dir(home.join(".ferry-partials"))
        .map(|d| d.map(|e| e.unwrap().metadata().unwrap().len()).collect())
        .unwrap_or_default();
    assert!(
        kept.len() == 1 && kept[0] >= size as u64 / 4,
        "{kept:?}; server stderr:\n{}",
        stopped.stderr
    );
}
