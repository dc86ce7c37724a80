//! The HTTPS front-end on the ferry port: ALPN picks the protocol, both HTTP versions serve,
//! and HTTP's own limits and penalties hold (docs/design/web.md §1).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::Bytes;
use ferry::server::Limits;
use ferry::server::penalty::PenaltyConfig;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::http::{BOTH, Client, Proto, request, tls_offering, tls_to};
use crate::util::{TestServer, test_limits};

const DEADLINE: Duration = Duration::from_secs(20);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn with_penalties() -> Limits {
    Limits {
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_and_h2_serve_the_front_page_with_the_security_headers() {
    let server = TestServer::start().await;
    for proto in BOTH {
        let mut c = Client::connect(&server, proto).await;
        let page = c.get("/").await;
        assert_eq!(page.status(), 200, "{proto:?}");
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(page.text().contains("<title>ferry</title>"), "{proto:?}");
        let csp = page.header("content-security-policy").unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(page.header("cache-control"), Some("no-store"));
        assert!(page.header("strict-transport-security").is_some());

        // Anything else: a JSON 404 that carries the same headers.
        let missing = c.get("/no/such/page").await;
        assert_eq!(missing.status(), 404, "{proto:?}");
        assert_eq!(missing.json()["error"], "not_found");
        assert_eq!(missing.header("x-content-type-options"), Some("nosniff"));

        // A method the page does not take.
        let post = c
            .send(
                request("DELETE", "/")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(post.status(), 405);
        assert_eq!(post.header("allow"), Some("GET, HEAD"));

        // Embedded assets: a strong ETag, revalidated.
        let js = c.get("/assets/vendor/hash-wasm/sha256.umd.min.js").await;
        assert_eq!(js.status(), 200);
        assert!(
            js.header("content-type")
                .unwrap()
                .starts_with("text/javascript")
        );
        assert!(js.text().contains("hash-wasm"));
        let etag = js.header("etag").unwrap().to_string();
        let again = c
            .send(
                request("GET", "/assets/vendor/hash-wasm/sha256.umd.min.js")
                    .header("if-none-match", &etag)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(again.status(), 304);
        assert_eq!(c.get("/assets/../Cargo.toml").await.status(), 400);
        assert_eq!(
            c.get("/assets/vendor/hash-wasm/LICENSE").await.status(),
            404
        );

        // Keep-alive: the same connection goes on serving.
        assert_eq!(c.get("/").await.status(), 200);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_offering_ferry_and_h2_gets_ferry() {
    let server = TestServer::start().await;
    let ferry_and_http: [&[&[u8]]; 2] = [
        &[b"h2", b"ferry/1", b"http/1.1"],
        &[b"http/1.1", b"ferry/1"],
    ];
    for offer in ferry_and_http {
        let tls = tls_to(server.addr, tls_offering(&server, offer))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"ferry/1"[..]));
    }
    // Offered alone, each HTTP version gets itself; both: the server prefers h2.
    let http_only: [(&[&[u8]], &[u8]); 3] = [
        (&[b"http/1.1"], b"http/1.1"),
        (&[b"h2"], b"h2"),
        (&[b"http/1.1", b"h2"], b"h2"),
    ];
    for (offer, got) in http_only {
        let tls = tls_to(server.addr, tls_offering(&server, offer))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(got));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_disabled_offers_only_ferry() {
    // `ferry serve --no-web` builds its TLS configuration from this list.
    assert_eq!(ferry::server::alpn_offered(false), &[&b"ferry/1"[..]][..]);
    let server = TestServer::start().await;
    let certs = ferry::certs::CertPaths::in_dir(&server.dir().join("certs"));
    let tls = ferry::tls::server_config(
        &certs.server_cert,
        &certs.server_key,
        ferry::server::alpn_offered(false),
    )
    .unwrap();
    let db = ferry::users::UserDb::load(&server.users_file).unwrap();
    let no_web = ferry::server::Server::new(tls, db, server.root.clone(), test_limits());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ferry::server::run(no_web, listener, async {
        let _ = stopped.await;
    }));
    for proto in BOTH {
        let err = tls_to(addr, tls_offering(&server, &[proto.alpn()]))
            .await
            .expect_err("an HTTP-only client completed the handshake");
        assert!(
            err.to_string().contains("NoApplicationProtocol"),
            "{proto:?}: {err}"
        );
    }
    let tls = tls_to(addr, tls_offering(&server, &[b"h2", b"ferry/1"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"ferry/1"[..]));
    drop(tls);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    server.stop().await;
}

/// Reads what the server sends until it closes; `None` if it stays open past `limit`.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read_all).await.ok()?;
    Some(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_head_over_64k_gets_431_and_a_penalty() {
    let server = TestServer::start_with(with_penalties()).await;
    let mut tls = tls_to(server.addr, tls_offering(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    let mut head = b"GET / HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    while head.len() < 70 * 1024 {
        head.extend_from_slice(
            b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    head.extend_from_slice(b"\r\n");
    // The server may close before it read everything: a failed write is fine.
    let _ = tls.write_all(&head).await;
    let back = read_until_closed(&mut tls, DEADLINE)
        .await
        .expect("the connection stayed open");
    let text = String::from_utf8_lossy(&back);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    wait_for_penalty(&server, LOCALHOST).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_too_many_headers_is_refused() {
    let server = TestServer::start().await;
    let mut tls = tls_to(server.addr, tls_offering(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    let mut head = b"GET / HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 0..65 {
        head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let _ = tls.write_all(&head).await;
    let back = read_until_closed(&mut tls, DEADLINE)
        .await
        .expect("the connection stayed open");
    let text = String::from_utf8_lossy(&back);
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    // 63 headers plus Host: served.
    let mut c = Client::connect(&server, Proto::H1).await;
    let mut req = request("GET", "/");
    for i in 0..63 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let ok = c
        .send(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    server.stop().await;
}

async fn wait_for_penalty(server: &TestServer, ip: IpAddr) {
    let start = std::time::Instant::now();
    while server.server.penalty_owed(ip).is_none() {
        assert!(start.elapsed() < DEADLINE, "{ip} was never penalised");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_slow_head_is_closed_and_penalised() {
    let server = TestServer::start_with(Limits {
        handshake_timeout: Duration::from_secs(1),
        ..with_penalties()
    })
    .await;
    let mut tls = tls_to(server.addr, tls_offering(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    let start = std::time::Instant::now();
    // Slowloris: a head that starts and never ends, one byte at a time.
    let drip = async {
        for b in b"GET / HTTP/1.1\r\nHost: local" {
            if tls.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = read_until_closed(&mut tls, DEADLINE).await;
    };
    tokio::time::timeout(DEADLINE, drip)
        .await
        .expect("the slow head was never cut");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(8), "cut after {took:?}");
    wait_for_penalty(&server, LOCALHOST).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_preconnected_sockets_earn_no_penalty() {
    let server = TestServer::start_with(Limits {
        handshake_timeout: Duration::from_secs(1),
        login_timeout: Duration::from_secs(2),
        ..with_penalties()
    })
    .await;
    for proto in BOTH {
        // A preconnect: TLS, then closed without a byte of HTTP.
        let tls = tls_to(server.addr, tls_offering(&server, &[proto.alpn()]))
            .await
            .unwrap();
        drop(tls);
        // An idle socket the server closes itself (head timeout or idle limit).
        let mut tls = tls_to(server.addr, tls_offering(&server, &[proto.alpn()]))
            .await
            .unwrap();
        read_until_closed(&mut tls, DEADLINE)
            .await
            .expect("an idle connection was never closed");
        // A browser's connection: a page, then idle until the server closes it.
        let mut c = Client::connect(&server, proto).await;
        assert_eq!(c.get("/").await.status(), 200);
        tokio::time::timeout(DEADLINE, &mut c.task)
            .await
            .expect("an idle keep-alive connection was never closed")
            .unwrap()
            .ok();
    }
    // Let the server see the last close, then: nothing owed.
    let start = std::time::Instant::now();
    while server.server.not_logged_in() > 0 {
        assert!(start.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.server.penalty_owed(LOCALHOST), None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_ends_the_connection_and_is_penalised() {
    let server = TestServer::start_with(with_penalties()).await;
    let tls = tls_to(server.addr, tls_offering(&server, &[b"h2"]))
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut client = client;
    // HEADERS then RST_STREAM, as fast as the window allows (CVE-2023-44487).
    let mut sent = 0;
    for _ in 0..1000 {
        let Ok(ready) = client.clone().ready().await else {
            break;
        };
        client = ready;
        let req = hyper::Request::get("https://localhost/").body(()).unwrap();
        let Ok((_resp, mut stream)) = client.send_request(req, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let ended = tokio::time::timeout(DEADLINE, driver)
        .await
        .expect("the connection survived a rapid reset")
        .unwrap();
    let err = ended.expect_err("the connection ended cleanly");
    // The server's GOAWAY says why; a client still writing when the server closes may hit
    // the closed socket before it reads the GOAWAY (a broken pipe or a reset), which on a
    // loaded machine happens. Either way the server ended it, and the penalty below says it
    // was for the resets.
    let io_cut = err.get_io().is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        )
    });
    assert!(
        err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || io_cut,
        "after {sent} resets: {err}"
    );
    wait_for_penalty(&server, LOCALHOST).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_over_the_cap_are_refused_not_queued() {
    let server = TestServer::start().await;
    let tls = tls_to(server.addr, tls_offering(&server, &[b"h2"]))
        .await
        .unwrap();
    let (client, mut conn) = h2::client::handshake(tls).await.unwrap();
    // Drive the connection a moment: the server's SETTINGS arrive.
    let _ = tokio::time::timeout(Duration::from_millis(500), &mut conn).await;
    assert_eq!(
        conn.max_concurrent_send_streams(),
        ferry::frontend::http::limits::H2_MAX_STREAMS as usize
    );
    drop(client);
    server.stop().await;
}
