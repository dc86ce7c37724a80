//! The admin port's metrics (issue 15, operations): a real server with the admin listener on
//! 127.0.0.1:0, real clients over ferry/1 and HTTPS, and `/metrics` scraped with a real HTTP
//! client (hyper's here, Debian's curl against the real binary), checking that each counter
//! moved by exactly what the clients did and that nothing in the text names a user, a path or
//! an address.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use ferry::client::Connection;
use ferry::server::Limits;
use ferry::server::penalty::PenaltyConfig;
use ferry::users::Password;

use crate::cli::{FERRY, Ferry, wait_or_kill};
use crate::util::http::{Client, Proto, tls_offering, tls_to, token_for};
use crate::util::{CHEAP, TestServer, no_progress, random_file, test_limits};

const DEADLINE: Duration = Duration::from_secs(20);

/// The admin port of a test server; stops when dropped.
struct Admin {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn admin_for(server: &TestServer) -> Admin {
    let at: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let listener = ferry::server::admin::bind(at, false).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(ferry::server::admin::serve(
        Arc::clone(&server.server),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    Admin { addr, _stop: stop }
}

/// `method path` on the admin port over plain HTTP/1.1.
async fn ask(addr: SocketAddr, method: &str, path: &str) -> crate::util::http::Reply {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut c = Client::over(tcp, Proto::H1).await;
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    tokio::time::timeout(DEADLINE, c.send(req))
        .await
        .expect("the admin port did not answer")
        .unwrap()
}

/// The metrics text, checked for its form.
async fn scrape(addr: SocketAddr) -> String {
    let r = ask(addr, "GET", "/metrics").await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = r.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text
}

/// The value of one series (`name{labels}` exactly as printed) in `text`; 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Scrapes until `series` has `want` (gauges and counters moved by a connection that is
/// closing), failing after [`DEADLINE`].
async fn wait_for(addr: SocketAddr, series: &str, want: f64) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = scrape(addr).await;
        if value(&text, series) == want {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never became {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Penalties on (so failed logins are charged and counted) but never a ban, so the test's
/// own failed logins cannot lock it out.
fn limits_with_penalties() -> Limits {
    Limits {
        penalties: Some(PenaltyConfig {
            min_before_ban: Duration::from_secs(3600),
            max: Duration::from_secs(3600),
            ..PenaltyConfig::default()
        }),
        ..test_limits()
    }
}

const UP: &str = r#"{direction="upload",result="ok"}"#;
const DOWN: &str = r#"{direction="download",result="ok"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_transfers_and_errors_over_both_front_ends_move_the_counters_exactly() {
    let server = TestServer::start_with(limits_with_penalties()).await;
    let admin = admin_for(&server).await;
    let before = scrape(admin.addr).await;
    assert_eq!(value(&before, r#"ferry_sessions{protocol="ferry"}"#), 0.0);
    assert_eq!(value(&before, r#"ferry_sessions{protocol="http"}"#), 0.0);

    // ferry/1: a failed login, a login, an upload and a download.
    let mut wrong = Connection::connect("127.0.0.1", server.addr.port(), server.client_tls())
        .await
        .unwrap();
    let refused = wrong
        .login("alice", &Password::new("not-her-password".into()))
        .await;
    assert!(refused.is_err());
    drop(wrong);
    let local = tempfile::tempdir().unwrap();
    let ferry_len = 70_000;
    let data = random_file(&local.path().join("secret-report.bin"), ferry_len, 3);
    let mut alice = server.alice().await;
    alice
        .put(
            &local.path().join("secret-report.bin"),
            "secret-report.bin",
            false,
            &mut no_progress(),
        )
        .await
        .unwrap();
    alice
        .get(
            "secret-report.bin",
            &local.path().join("back.bin"),
            false,
            &mut no_progress(),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(local.path().join("back.bin")).unwrap(), data);

    // HTTPS: a failed web login, a web login, a PUT and a GET with a token.
    let http_len = 5_000usize;
    let token = token_for(&server, "alice", false).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    let login = |pw: &str| serde_json::json!({ "user": "alice", "password": pw }).to_string();
    let r = c.plain("POST", "/api/login", &[], login("nope")).await;
    assert_eq!(r.status(), 401);
    let r = c.plain("POST", "/api/login", &[], login("alice-pw")).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let body = vec![7u8; http_len];
    let r = c
        .authed("PUT", "/f/private-notes.txt", &token, &[], body.clone())
        .await;
    assert_eq!(r.status(), 201, "{}", r.text());
    let r = c
        .authed("GET", "/f/private-notes.txt", &token, &[], Vec::new())
        .await;
    assert_eq!((r.status(), r.body.len()), (200, http_len));

    // Both sessions are live while their connections are open.
    let during = scrape(admin.addr).await;
    assert_eq!(value(&during, r#"ferry_sessions{protocol="ferry"}"#), 1.0);
    assert_eq!(value(&during, r#"ferry_sessions{protocol="http"}"#), 1.0);
    assert!(value(&during, "ferry_connections") >= 2.0, "{during}");

    let after = scrape(admin.addr).await;
    let moved = |series: &str| value(&after, series) - value(&before, series);
    let both = (ferry_len + http_len) as f64;
    for (series, want) in [
        (r#"ferry_logins_total{result="ok"}"#.to_string(), 2.0),
        (r#"ferry_logins_total{result="failed"}"#.into(), 2.0),
        (r#"ferry_errors_total{code="auth_failed"}"#.into(), 2.0),
        (r#"ferry_penalties_total{reason="authfail"}"#.into(), 2.0),
        (format!("ferry_transfers_total{UP}"), 2.0),
        (format!("ferry_transfers_total{DOWN}"), 2.0),
        (
            r#"ferry_transfers_total{direction="upload",result="error"}"#.into(),
            0.0,
        ),
        (
            r#"ferry_transfers_total{direction="download",result="interrupted"}"#.into(),
            0.0,
        ),
        (
            r#"ferry_transfer_bytes_total{direction="upload"}"#.into(),
            both,
        ),
        (
            r#"ferry_transfer_bytes_total{direction="download"}"#.into(),
            both,
        ),
    ] {
        assert_eq!(moved(&series), want, "{series}:\n{after}");
    }
    // The stores were timed: each upload committed once at least, each download opened.
    assert!(
        moved(r#"ferry_storage_seconds_count{operation="commit"}"#) >= 2.0,
        "{after}"
    );
    assert!(
        moved(r#"ferry_storage_seconds_count{operation="open"}"#) >= 2.0,
        "{after}"
    );

    // Nothing in the text says who, what or from where.
    for secret in [
        "alice",
        "secret-report",
        "private-notes",
        "127.0.0.1",
        token.as_str(),
    ] {
        assert!(
            !after.contains(secret),
            "{secret:?} in the metrics:\n{after}"
        );
    }

    // Sessions leave the gauge when their connections close.
    drop(alice);
    drop(c);
    wait_for(admin.addr, r#"ferry_sessions{protocol="ferry"}"#, 0.0).await;
    wait_for(admin.addr, r#"ferry_sessions{protocol="http"}"#, 0.0).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_and_a_refused_transfer_are_counted_as_such() {
    let server = TestServer::start().await;
    let admin = admin_for(&server).await;
    let before = scrape(admin.addr).await;
    // A get of a file that is not there: an error, no bytes.
    let mut alice = server.alice().await;
    let local = tempfile::tempdir().unwrap();
    let missing = alice
        .get(
            "no-such-file",
            &local.path().join("x"),
            false,
            &mut no_progress(),
        )
        .await;
    assert!(missing.is_err());
    drop(alice);
    // A put whose client leaves half-way: interrupted.
    let mut raw = server.raw().await;
    raw.login("alice", "alice-pw").await;
    raw.send(&ferry::protocol::ClientMessage::Put {
        id: 1,
        path: "/half.bin".into(),
        size: 100_000,
        overwrite: false,
        offset: 0,
        prefix_sha256: None,
    })
    .await;
    raw.send_data(&[1u8; 1000]).await;
    drop(raw);
    let series = r#"ferry_transfers_total{direction="upload",result="interrupted"}"#;
    wait_for(admin.addr, series, value(&before, series) + 1.0).await;
    // An HTTPS download whose client leaves after the head: interrupted, with what it sent.
    let big = 32 * 1024 * 1024;
    random_file(&server.home_file("alice", "big.bin"), big, 5);
    let token = token_for(&server, "alice", false).await;
    let tls = tls_to(server.addr, tls_offering(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get("/f/big.bin")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let head = send.send_request(req).await.unwrap();
    assert_eq!(head.status(), 200);
    drop(head);
    drop(send);
    driver.abort();
    let series = r#"ferry_transfers_total{direction="download",result="interrupted"}"#;
    let after = wait_for(admin.addr, series, value(&before, series) + 1.0).await;
    let moved = |s: &str| value(&after, s) - value(&before, s);
    let sent = moved(r#"ferry_transfer_bytes_total{direction="download"}"#);
    assert!(
        sent < big as f64,
        "{sent} of {big} bytes counted for a cut download"
    );
    assert_eq!(
        moved(r#"ferry_transfers_total{direction="download",result="error"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved(r#"ferry_errors_total{code="not_found"}"#),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved(&format!("ferry_transfers_total{DOWN}")),
        0.0,
        "{after}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_source_cap_is_counted_as_refused() {
    let server = TestServer::start_with(Limits {
        max_connections_per_source: 1,
        ..test_limits()
    })
    .await;
    let admin = admin_for(&server).await;
    let series = r#"ferry_refused_connections_total{reason="per_source"}"#;
    let before = value(&scrape(admin.addr).await, series);
    let _held = server.alice().await;
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(DEADLINE, extra.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    wait_for(admin.addr, series, before + 1.0).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_serves_only_metrics_and_stays_bounded() {
    let server = TestServer::start().await;
    let admin = admin_for(&server).await;
    let r = ask(admin.addr, "GET", "/").await;
    assert_eq!(r.status(), 404);
    let r = ask(admin.addr, "GET", "/metrics/../users.toml").await;
    assert_eq!(r.status(), 404);
    let r = ask(admin.addr, "POST", "/metrics").await;
    assert_eq!((r.status(), r.header("allow")), (405, Some("GET, HEAD")));
    let r = ask(admin.addr, "HEAD", "/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(r.body.is_empty());

    // An oversized request head is refused and the port goes on serving.
    let mut big = TcpStream::connect(admin.addr).await.unwrap();
    let head = format!(
        "GET /metrics HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = big.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, big.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );

    // Connections that send nothing hold the port's few places; one more is closed at once.
    // The connections above may still hold a place for a moment after their answers (a busy
    // machine): then one of the idle ones was the one closed, and the round is tried again.
    let max = ferry::server::admin::MAX_ADMIN_CONNECTIONS;
    let mut rounds = 0;
    let idle = loop {
        rounds += 1;
        let mut idle = Vec::new();
        for _ in 0..max {
            idle.push(TcpStream::connect(admin.addr).await.unwrap());
        }
        // The listener takes them in order; give it a moment to have taken them all.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut over = TcpStream::connect(admin.addr).await.unwrap();
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf)).await;
        if matches!(closed, Ok(Ok(0)) | Ok(Err(_))) {
            break idle;
        }
        assert!(
            rounds < 3,
            "a connection past the limit was kept: {closed:?}"
        );
    };
    drop(idle);
    // Their places come back when they go.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let tcp = TcpStream::connect(admin.addr).await.unwrap();
        let mut c = Client::over(tcp, Proto::H1).await;
        let req = hyper::Request::get("/metrics")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), c.send(req)).await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the admin port never served again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// What every home's store is wrapped in to time it passes the storage contract unchanged.
mod timed_store {
    use std::sync::Arc;

    use ferry::metrics::Metrics;
    use ferry::storage::local::LocalStorage;

    use crate::storage::contract::{Home, storage_contract};

    async fn make() -> Home {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStorage::open(&dir.path().join("home"), true).unwrap();
        let timed = Arc::new(Metrics::new()).timed_storage(Arc::new(store));
        Home::new(timed, dir)
    }

    storage_contract!(make);
}

// ---------------------------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------------------------

/// A `ferry serve` started here; stopped by its PID (SIGTERM, then SIGKILL) when dropped.
struct Served {
    child: Child,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        wait_or_kill(&mut self.child, Duration::from_secs(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs curl; .ci/run installs it"]
async fn needs_curl_serve_prints_its_metrics_port_and_curl_scrapes_it() {
    let dir = tempfile::tempdir().unwrap();
    let certs = ferry::certs::generate(&dir.path().join("certs"), &[], false).unwrap();
    let users_file = dir.path().join("users.toml");
    let hash = ferry::users::hash_password_with(
        &Password::new("alice-pw".into()),
        CHEAP.0,
        CHEAP.1,
        CHEAP.2,
    )
    .unwrap();
    ferry::users::add_user(&users_file, "alice", &hash, None, false).unwrap();
    let mut child = Command::new(FERRY)
        .current_dir(dir.path())
        .env_remove("FERRY_LOG")
        .env("HOME", dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--users")
        .arg(&users_file)
        .arg("--root")
        .arg(dir.path().join("data"))
        .arg("--cert")
        .arg(&certs.paths.server_cert)
        .arg("--key")
        .arg(&certs.paths.server_key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start ferry serve");
    let stdout = child.stdout.take().unwrap();
    let served = Served { child };
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let (mut metrics_url, mut addr) = (None, None);
    while addr.is_none() {
        let line = lines
            .recv_timeout(DEADLINE)
            .expect("ferry serve did not print its addresses");
        if let Some(rest) = line.strip_prefix("metrics: ") {
            metrics_url = rest.split_whitespace().next().map(str::to_string);
        }
        if let Some(a) = line.strip_prefix("ferry listening on ") {
            addr = Some(a.trim().parse::<SocketAddr>().unwrap());
        }
    }
    let url = metrics_url.expect("no metrics line before the listening line");
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.ends_with("/metrics"), "{url}");
    assert!(!url.ends_with(":0/metrics"), "port 0 printed: {url}");
    let port = addr.unwrap().port();

    // A login and a failed one over ferry/1.
    let tls = ferry::tls::client_config(Some(&certs.paths.ca_cert), ferry::protocol::ALPN).unwrap();
    let mut ok = Connection::connect("127.0.0.1", port, Arc::clone(&tls))
        .await
        .unwrap();
    ok.login("alice", &Password::new("alice-pw".into()))
        .await
        .unwrap();
    let mut bad = Connection::connect("127.0.0.1", port, tls).await.unwrap();
    assert!(
        bad.login("alice", &Password::new("nope".into()))
            .await
            .is_err()
    );

    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("needs curl (.ci/run installs it): cannot run curl: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (fine, text) = curl(&["--fail", &url]);
    assert!(fine, "{text}");
    assert_eq!(
        value(&text, r#"ferry_logins_total{result="ok"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&text, r#"ferry_logins_total{result="failed"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(&text, r#"ferry_sessions{protocol="ferry"}"#),
        1.0,
        "{text}"
    );
    assert!(!text.contains("alice"), "{text}");
    let other = url.replace("/metrics", "/users.toml");
    let (_, code) = curl(&[
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code}",
        &other,
    ]);
    assert_eq!(code, "404");
    drop(ok);
    drop(bad);
    drop(served);
}

#[test]
fn serve_refuses_a_metrics_port_off_loopback_before_making_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = Ferry::new(dir.path()).run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "0.0.0.0:0",
    ]);
    out.expect_failure();
    assert!(
        out.stderr.contains("not a loopback address")
            && out.stderr.contains("--metrics-allow-remote"),
        "{out:#?}"
    );
    // Refused before the first start made certificates or a users file.
    let made: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(made.is_empty(), "{made:?}");
    // The escape hatch needs the address it applies to.
    Ferry::new(dir.path())
        .run(&["serve", "--metrics-allow-remote"])
        .expect_code(2);
}
