//! Red-team tests of the HTTPS front-end (issue 14): what a hostile or merely careless client
//! can make the server hold, miscount or mis-sign. Each test states the rule it checks; the
//! ones marked "Failed before its fix" found a real problem, now fixed.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry::server::Limits;
use ferry::server::penalty::PenaltyConfig;
use tokio::io::AsyncWriteExt;

use crate::util::http::{Client, Proto, digest_field, tls_offering, tls_to, token_for};
use crate::util::{TestServer, cheap_hash, names_in, test_limits};

const DEADLINE: Duration = Duration::from_secs(20);

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

/// An h2 connection made with the `h2` crate directly, so the test controls what a stock
/// client hides: its flow-control windows and its pings.
async fn raw_h2(
    server: &TestServer,
    builder: &h2::client::Builder,
) -> (
    h2::client::SendRequest<Bytes>,
    Option<h2::PingPong>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tls = tls_to(server.addr, tls_offering(server, &[b"h2"]))
        .await
        .unwrap();
    let (send, mut conn) = builder.handshake::<_, Bytes>(tls).await.unwrap();
    let ping = conn.ping_pong();
    let task = tokio::spawn(conn);
    (send, ping, task)
}

fn h2_request(method: &str, path: &str, token: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("https://localhost{path}"))
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap()
}

/// A download whose client stops granting h2 flow-control window, but answers pings, must
/// still end under the stall timeout: the response is stuck, holding a task, an open file and
/// a connection slot. The watchdog counts any byte written as progress, and PING acks (the
/// client's pings here; hyper's own keep-alive pings every 30 s do the same with no help from
/// the client, against the 60 s default stall timeout) are bytes written.
// Failed before its fix (the review of 2026-12-07): `Watch::write_stalled` looks at the socket's last write, which PING acks
// and hyper's keep-alive pings refresh, so a response that moves no byte is never "stalled".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_download_stuck_on_flow_control_is_cut_even_if_pings_flow() {
    let stall = Duration::from_secs(2);
    let server = TestServer::start_with(Limits {
        stall_timeout: stall,
        ..test_limits()
    })
    .await;
    let token = token_for(&server, "alice", false).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    let body = data(1024 * 1024, 5);
    let put = c.authed("PUT", "/f/big.bin", &token, &[], body).await;
    assert_eq!(put.status(), 201, "{}", put.text());

    // Stream windows of 0: the server may send headers but no data on any stream.
    let mut builder = h2::client::Builder::new();
    builder.initial_window_size(0);
    let (mut send, ping, task) = raw_h2(&server, &builder).await;
    let mut ping = ping.expect("ping_pong is available once");
    send = send.ready().await.unwrap();
    let (resp, _) = send
        .send_request(h2_request("GET", "/f/big.bin", &token), true)
        .unwrap();
    let resp = tokio::time::timeout(DEADLINE, resp)
        .await
        .expect("no response head")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut recv = resp.into_body();

    // Ping twice a second for three stall timeouts; the server must end the stream or the
    // connection meanwhile.
    let start = Instant::now();
    let mut cut = false;
    while start.elapsed() < 3 * stall {
        if task.is_finished() || recv.is_end_stream() {
            cut = true;
            break;
        }
        match tokio::time::timeout(Duration::from_secs(2), ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => {
                cut = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A stream the server reset shows as an error on the next read.
    if !cut {
        cut = matches!(
            tokio::time::timeout(Duration::from_millis(200), recv.data()).await,
            Ok(Some(Err(_)) | None)
        );
    }
    assert!(
        cut,
        "a response that moved no byte for {:?} was still open after {:?}",
        stall,
        start.elapsed()
    );
    task.abort();
    server.stop().await;
}

/// The adds for a user made again: `ferry user del` then `ferry user add` of the same name
/// (the CLI revokes the old tokens; the new user gets a new one).
fn recreate_carol(server: &TestServer) {
    ferry::users::remove_user(&server.users_file, "carol").unwrap();
    let mut text = std::fs::read_to_string(&server.users_file).unwrap();
    text.push_str(&format!(
        "\n[users.carol]\npassword = \"{}\"\nquota_bytes = \"1 MiB\"\n\
         quota_files = 5\nmax_file_size = 600000\n",
        cheap_hash("carol-pw")
    ));
    std::fs::write(&server.users_file, text).unwrap();
    server
        .server
        .replace_users(ferry::users::UserDb::load(&server.users_file).unwrap());
}

/// A user deleted (and their home removed) and then made again is a new account: a new
/// token's uploads land in the new home, and the new account's usage starts from what that
/// home holds. The web front-end's home cache must not hand the new user the old one's open
/// directory or usage account.
// Failed before its fix (the review of 2026-12-07): `auth::account` keys the cache by (user, scope) and compares only the home
// *path*, read-only flag and limits. The cached `Home` still holds the old `Jail` (an open fd
// of the old directory, wherever it was moved) and keeps the old quota `Account` alive (the
// registry holds homes weakly, by path), so the new user's upload is acknowledged with a
// signed receipt but written into the old user's archived directory (or, had it been
// deleted, fails with 404 for as long as requests keep the entry fresh), and a ferry/1
// login of the new user gets the old usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_made_again_does_not_inherit_the_cached_home() {
    let server = TestServer::start().await;
    let old = token_for(&server, "carol", false).await;
    let mut c = Client::connect(&server, Proto::H2).await;
    let r = c
        .authed("PUT", "/f/old.bin", &old, &[], vec![1u8; 500_000])
        .await;
    assert_eq!(r.status(), 201, "{}", r.text());

    // The admin deletes carol and archives her files, then makes a new carol.
    recreate_carol(&server);
    let archive = server.dir().join("carol-archive");
    std::fs::rename(server.home("carol"), &archive).unwrap();
    let new = token_for(&server, "carol", false).await;

    let r = c.authed("PUT", "/f/new.txt", &new, &[], "hello").await;
    assert_eq!(r.status(), 201, "{}", r.text());
    assert!(
        !archive.join("new.txt").exists(),
        "the new carol's upload was acknowledged (201, signed receipt) and written into the \
         old carol's archived home"
    );
    assert!(server.home("carol").join("new.txt").exists());
    let mut ferry1 = server.connect("carol", "carol-pw").await;
    let usage = ferry1.usage().await.unwrap();
    assert_eq!(
        (usage.used_bytes, usage.used_files),
        (Some(5), Some(1)),
        "the new carol's usage is the old carol's"
    );
    server.stop().await;
}

/// Ordinary parallelism of one client is not a session flood: a script that fires a few
/// requests at once with its token (curl --parallel, a browser's six sockets) must not be
/// refused for "too many sessions", and must not take more than one session slot per
/// token scope for longer than the requests last.
// Failed before its fix (the review of 2026-12-07): every request that misses the home cache calls `login::open_for`, which takes
// a session slot before opening the home; concurrent first requests each take one (the cache
// insert then keeps only the last), so with `max_sessions_per_user` N the (N+1)th concurrent
// request gets 429 `too_many_sessions`, and for that moment the user's ferry/1 logins are
// refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_with_one_token_take_one_session() {
    let server = TestServer::start_with(Limits {
        max_sessions_per_user: 2,
        ..test_limits()
    })
    .await;
    // carol has limits: opening her home counts it, which widens the window.
    let token = token_for(&server, "carol", false).await;
    std::fs::create_dir_all(server.home("carol").join("many")).unwrap();
    for i in 0..3 {
        std::fs::write(server.home("carol").join(format!("f{i}")), "x").unwrap();
    }
    // A home that takes a moment to count, as a real one does (the first open counts it).
    for i in 0..10_000 {
        std::fs::write(server.home("carol").join("many").join(i.to_string()), "").unwrap();
    }
    let (send, _ping, task) = raw_h2(&server, &h2::client::Builder::new()).await;
    let mut send = send.ready().await.unwrap();
    let mut answers = Vec::new();
    for i in 0..12 {
        let (resp, _) = send
            .send_request(h2_request("GET", &format!("/f/f{}", i % 3), &token), true)
            .unwrap();
        answers.push(resp);
        send = send.ready().await.unwrap();
    }
    let mut statuses = Vec::new();
    for a in answers {
        let resp = tokio::time::timeout(DEADLINE, a).await.unwrap().unwrap();
        statuses.push(resp.status().as_u16());
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "one client's parallel requests were refused: {statuses:?}"
    );
    task.abort();
    server.stop().await;
}

/// An admin who changes a user's limits (or home, or read-only flag) while they use a token
/// must not lock that user out of HTTP: the changed account is opened afresh, and the stale
/// cached one gives its session slot back first.
// Failed before its fix (the review of 2026-12-07): on a changed `AccountShape` the cache misses and `open_for` takes a *new*
// slot while the stale entry still holds the old one (it is only replaced after the open
// succeeds, or swept after `idle_timeout` unused). With `max_sessions_per_user = 1` every
// request answers 429 `too_many_sessions` until the stale entry has been unused for
// `idle_timeout` (5 min by default); with the default 16, each change leaks a slot for that
// long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_account_is_reopened_without_a_second_session() {
    let server = TestServer::start_with(Limits {
        max_sessions_per_user: 1,
        ..test_limits()
    })
    .await;
    let token = token_for(&server, "carol", false).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    let r = c.authed("PUT", "/f/a", &token, &[], "x").await;
    assert_eq!(r.status(), 201, "{}", r.text());
    // The admin raises carol's file quota.
    let text = std::fs::read_to_string(&server.users_file)
        .unwrap()
        .replace("quota_files = 5\n", "quota_files = 6\n");
    std::fs::write(&server.users_file, text).unwrap();
    server
        .server
        .replace_users(ferry::users::UserDb::load(&server.users_file).unwrap());
    let r = c.authed("GET", "/f/a", &token, &[], "").await;
    assert_eq!(
        r.status(),
        200,
        "after a quota change carol is refused: {}",
        r.text()
    );
    server.stop().await;
}

/// A connection that never proves anything may not stay pre-login forever by fetching a
/// public page now and then: the login window (`login_timeout`) runs from its start, as it
/// does for ferry/1, not from its last request.
// Failed before its fix (the review of 2026-12-07): `drive` closes a not-logged-in connection only when it is *idle* for
// `login_timeout` (no request in flight or ended for that long), so `GET /` every few
// seconds holds a pre-login place (and a connection slot) indefinitely; only pressure
// (>= `startups.start` pre-login connections) cuts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_requests_do_not_hold_a_pre_login_place_forever() {
    let window = Duration::from_secs(2);
    let server = TestServer::start_with(Limits {
        login_timeout: window,
        ..test_limits()
    })
    .await;
    let mut c = Client::connect(&server, Proto::H1).await;
    let start = Instant::now();
    let mut served = 0;
    while start.elapsed() < 4 * window {
        let req = crate::util::http::request("GET", "/")
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        match c.send(req).await {
            Ok(r) if r.status() == 200 => served += 1,
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        start.elapsed() < 4 * window,
        "{served} public requests kept an unauthenticated connection for {:?} \
         (login window {window:?}); the server still counts {} pre-login",
        start.elapsed(),
        server.server.not_logged_in()
    );
    server.stop().await;
}

/// Under pressure a browser's idle preconnects are cut at the shortened window, as ferry/1's
/// are; but by web.md §1.3 they earn nothing, and at most what a ferry/1 connection that never
/// logged in earns (`noauth_under_pressure`). Two idle preconnects must not ban the browser.
// Failed before its fix (the review of 2026-12-07): `serve` maps `Cut::Expired` to `GraceExceeded` (10 s each), so two idle
// sockets under someone else's flood reach `min_before_ban` (15 s) and the address is banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_preconnects_under_pressure_do_not_ban_a_browser() {
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        startups: ferry::server::prelogin::Startups {
            start: 1,
            rate: 0,
            full: 16,
            pressure_login_timeout: Duration::from_millis(500),
        },
        ..test_limits()
    })
    .await;
    let config = tls_offering(&server, &[b"h2", b"http/1.1"]);
    let a = tls_to(server.addr, config.clone()).await.unwrap();
    let b = tls_to(server.addr, config).await.unwrap();
    let gone = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        while server.server.not_logged_in() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(DEADLINE, gone)
        .await
        .expect("the idle connections were never cut under pressure");
    drop((a, b));
    let owed = server
        .server
        .penalty_owed(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .unwrap_or_default();
    let cfg = PenaltyConfig::default();
    assert!(
        owed <= 2 * cfg.noauth_under_pressure,
        "two idle preconnects under pressure cost {owed:?} (ban from {:?})",
        cfg.min_before_ban
    );
    server.stop().await;
}

/// A PUT cut mid-body (the client leaves, over h1 and over h2) stores nothing, leaves no
/// temp file, and gives every reserved byte back to the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_cut_mid_body_gives_its_room_back() {
    let server = TestServer::start().await;
    let token = token_for(&server, "carol", false).await;
    // h1 by hand: a head declaring 500,000 bytes, 300,000 of them, then gone.
    {
        let mut tls = tls_to(server.addr, tls_offering(&server, &[b"http/1.1"]))
            .await
            .unwrap();
        let head = format!(
            "PUT /f/cut1 HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
             content-length: 500000\r\n\r\n"
        );
        tls.write_all(head.as_bytes()).await.unwrap();
        tls.write_all(&vec![7u8; 300_000]).await.unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(tls);
    }
    // h2: the same, then the connection dropped.
    {
        let (send, _ping, task) = raw_h2(&server, &h2::client::Builder::new()).await;
        let mut send = send.ready().await.unwrap();
        let req = http::Request::builder()
            .method("PUT")
            .uri("https://localhost/f/cut2")
            .header("authorization", format!("Bearer {token}"))
            .header("content-length", "500000")
            .body(())
            .unwrap();
        let (_resp, mut body) = send.send_request(req, false).unwrap();
        body.reserve_capacity(300_000);
        body.send_data(Bytes::from(vec![8u8; 300_000]), false)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        task.abort();
    }
    // Nothing landed; the counters come back to zero (a fresh ferry/1 login reads them).
    let start = Instant::now();
    loop {
        let mut conn = server.connect("carol", "carol-pw").await;
        let u = conn.usage().await.unwrap();
        let names: Vec<String> = names_in(&server.home("carol"))
            .into_iter()
            .filter(|n| !n.starts_with(".ferry"))
            .collect();
        if (u.used_bytes, u.used_files) == (Some(0), Some(0)) && names.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "after two cut PUTs: usage {:?}/{:?}, names {names:?}",
            u.used_bytes,
            u.used_files
        );
        drop(conn);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

/// A symlink in the home that leads outside it is never followed by a GET, and a PUT with
/// `Overwrite: T` onto a directory or a symlink neither replaces the directory nor writes
/// through the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_and_directories_hold_against_get_and_overwrite() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let home = server.home("alice");
    std::fs::create_dir_all(&home).unwrap();
    let outside = server.dir().join("outside.txt");
    std::fs::write(&outside, "secret outside the home").unwrap();
    std::os::unix::fs::symlink(&outside, home.join("out")).unwrap();
    std::fs::create_dir(home.join("d")).unwrap();
    std::fs::write(home.join("d").join("inner"), "keep me").unwrap();
    let mut c = Client::connect(&server, Proto::H2).await;

    let got = c.authed("GET", "/f/out", &token, &[], "").await;
    assert_ne!(got.status(), 200, "a symlink out of the home was followed");
    assert!(!got.text().contains("secret outside"));
    for path in ["/f/out", "/f/d"] {
        for body in [vec![1u8; 10], vec![2u8; 300_000]] {
            let r = c
                .authed("PUT", path, &token, &[("overwrite", "T")], body)
                .await;
            assert!(
                r.status() == 201 || r.status() >= 400,
                "{path}: {}",
                r.status()
            );
        }
    }
    assert_eq!(
        std::fs::read_to_string(&outside).unwrap(),
        "secret outside the home",
        "a PUT wrote through a symlink out of the home"
    );
    assert_eq!(
        std::fs::read_to_string(home.join("d").join("inner")).unwrap(),
        "keep me"
    );
    server.stop().await;
}

/// Every answer carries the security headers: the ones hyper's defaults never add and a
/// handler might build by hand (304, 206, 416, 401, 404, 405, 400).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_security_headers() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    let put = c
        .authed("PUT", "/f/h.bin", &token, &[], vec![3u8; 1000])
        .await;
    assert_eq!(put.status(), 201);
    let tag = c
        .authed("GET", "/f/h.bin", &token, &[], "")
        .await
        .header("etag")
        .unwrap()
        .to_string();
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16);
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/f/h.bin",
            vec![("if-none-match", tag.as_str())],
            304,
        ),
        ("GET", "/f/h.bin", vec![("range", "bytes=0-9")], 206),
        ("GET", "/f/h.bin", vec![("range", "bytes=5000-")], 416),
        ("GET", "/f/nope", vec![], 404),
        ("DELETE", "/f/h.bin", vec![], 405),
        ("GET", "/f/%2e%2e/x", vec![], 400),
    ];
    for (method, path, headers, want) in cases {
        let r = c.authed(method, path, &token, &headers, "").await;
        assert_eq!(r.status(), want, "{method} {path}");
        for h in ["x-content-type-options", "content-security-policy"] {
            assert!(r.header(h).is_some(), "{method} {path} ({want}) lacks {h}");
        }
    }
    let r = c.authed("GET", "/f/h.bin", "fy_bad", &[], "").await;
    assert_eq!(r.status(), 401);
    assert!(r.header("x-content-type-options").is_some());
    server.stop().await;
}

/// Guessing tokens is bounded per connection as guessing passwords is for ferry/1: after
/// `max_auth_attempts` refused tokens the connection ends, so one kept-open h2 connection
/// cannot try tokens at line rate while new connections from its address are banned.
// Failed before its fix (the review of 2026-12-07): `auth::account` penalises each refused token but never ends the connection,
// and a ban only refuses *new* connections; every guess on an open connection gets its 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_end_the_connection_after_the_login_attempts() {
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let real = token_for(&server, "alice", false).await;
    let max = server.server.limits().max_auth_attempts as usize;
    let mut c = Client::connect(&server, Proto::H2).await;
    let mut refused = 0;
    for i in 0..(max + 20) {
        // A real id with a wrong secret, as a guesser who learnt an id would send.
        let mut guess = real.clone();
        guess.truncate(guess.len() - 4);
        guess.push_str(&format!("{:04}", i % 10_000));
        let req = crate::util::http::request("GET", "/f/x")
            .header("authorization", format!("Bearer {guess}"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        match tokio::time::timeout(DEADLINE, c.send(req)).await {
            Ok(Ok(r)) if r.status() == 401 => refused += 1,
            _ => break,
        }
    }
    assert!(
        refused <= max,
        "{refused} wrong tokens were each answered on one connection (max_auth_attempts {max}); \
         the address owes {:?}",
        server.server.penalty_owed(IpAddr::V4(Ipv4Addr::LOCALHOST))
    );
    server.stop().await;
}

/// Sends a PUT over raw h2 with `content-length: declared` and `chunks` of body, the last
/// with END_STREAM unless `hang`; returns the status, or `None` if the stream was reset.
async fn h2_put(
    send: &mut h2::client::SendRequest<Bytes>,
    path: &str,
    token: &str,
    declared: u64,
    chunks: &[Vec<u8>],
    hang: bool,
) -> Option<u16> {
    let req = http::Request::builder()
        .method("PUT")
        .uri(format!("https://localhost{path}"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-length", declared.to_string())
        .body(())
        .unwrap();
    *send = send.clone().ready().await.unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    for (i, c) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len() && !hang;
        body.reserve_capacity(c.len());
        if body.send_data(Bytes::from(c.clone()), last).is_err() {
            break;
        }
    }
    if chunks.is_empty() && !hang {
        let _ = body.send_data(Bytes::new(), true);
    }
    let r = tokio::time::timeout(DEADLINE, resp).await.ok()?.ok()?;
    Some(r.status().as_u16())
}

/// The counters stay true whatever a PUT's body does: declared longer than sent (END_STREAM
/// early), shorter than sent, zero, stalled past the stall timeout, and two uploads of one
/// name at once. Afterwards the usage a ferry/1 login reports equals a walk of the home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_bodies_leave_the_counters_true() {
    let server = TestServer::start_with(Limits {
        stall_timeout: Duration::from_secs(1),
        ..test_limits()
    })
    .await;
    let token = token_for(&server, "carol", false).await;
    let (send, _ping, task) = raw_h2(&server, &h2::client::Builder::new()).await;
    let mut send = send.ready().await.unwrap();
    for (path, declared, chunks, hang) in [
        // Longer than sent, small and streamed.
        ("/f/long-s", 1000u64, vec![vec![1u8; 500]], false),
        ("/f/long-l", 400_000, vec![vec![1u8; 300_000]], false),
        // Shorter than sent.
        ("/f/short-s", 100, vec![vec![2u8; 200]], false),
        (
            "/f/short-l",
            300_000,
            vec![vec![2u8; 300_000], vec![2u8; 10]],
            false,
        ),
        // Zero.
        ("/f/zero", 0, vec![], false),
        // Stalled past the stall timeout, small and streamed.
        ("/f/stall-s", 1000, vec![vec![3u8; 10]], true),
        ("/f/stall-l", 400_000, vec![vec![3u8; 300_000]], true),
    ] {
        let status = h2_put(&mut send, path, &token, declared, &chunks, hang).await;
        let landed = server.home("carol").join(&path[3..]).exists();
        let whole = declared as usize == chunks.iter().map(Vec::len).sum::<usize>() && !hang;
        assert_eq!(landed, whole, "{path}: status {status:?}");
    }
    // Two at once, one name: one lands.
    let (a, b) = tokio::join!(
        {
            let mut s = send.clone();
            let t = token.clone();
            async move { h2_put(&mut s, "/f/twin", &t, 300_000, &[vec![4u8; 300_000]], false).await }
        },
        {
            let mut s = send.clone();
            let t = token.clone();
            async move { h2_put(&mut s, "/f/twin", &t, 300_000, &[vec![5u8; 300_000]], false).await }
        }
    );
    let mut both = [a, b];
    both.sort();
    assert_eq!(both, [Some(201), Some(409)]);
    task.abort();

    let walked = crate::util::quota_walk(&server.home("carol"));
    let start = Instant::now();
    loop {
        let mut conn = server.connect("carol", "carol-pw").await;
        let u = conn.usage().await.unwrap();
        if (u.used_bytes, u.used_files) == (Some(walked.0), Some(walked.1)) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "usage {:?}/{:?}, the home holds {walked:?}",
            u.used_bytes,
            u.used_files
        );
        drop(conn);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

/// Ordinary mistakes in a URL are not attacks: a doubled slash (a script joining `BASE/` and
/// `/f/x`), or a `%` typed into a file name, gets a 400 and no penalty. Only what no real
/// client sends by mistake (encoded dots and slashes, NULs, overlong UTF-8) may cost the
/// address, or a few curl runs of a buggy script ban it.
// Failed before its fix (the review of 2026-12-07): `router::route` calls `conn.misbehaved()` for every `decode_path` error,
// `EmptySegment` and `BadEscape` included, so each such connection costs `ProtocolError`
// (5 s) and the fourth bans the address (`min_before_ban` 15 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_url_mistakes_cost_no_penalty() {
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let token = token_for(&server, "alice", false).await;
    for path in ["//f/x", "/f/a//b", "/f/50%.txt", "//"] {
        let mut c = Client::connect(&server, Proto::H1).await;
        let r = c.authed("GET", path, &token, &[], "").await;
        assert_eq!(r.status(), 400, "{path}: {}", r.text());
        drop(c);
        // The connection's end is when a penalty would be counted.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        server.server.penalty_owed(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        None,
        "URL typos were penalised as attacks"
    );
    server.stop().await;
}

/// One token holder cannot starve the whole server by opening uploads and sending nothing:
/// each streamed PUT (over `SMALL_MAX`) holds a blocking-pool thread for its writer from its
/// head on, and nothing bounds a user's concurrent uploads over HTTP (the cached home takes
/// one session slot however many streams and connections use it). When the pool is full,
/// every `spawn_blocking` waits: token checks, logins (argon2), opening homes, all file work.
/// The test runs the server on a pool of 64 threads so that 90 silent PUTs fill it; the
/// default pool is 512, which one address reaches with 16 connections of 32 streams (the
/// per-source cap is 20).
// Failed before its fix (the review of 2026-12-07): no cap on a user's (or a connection's) streamed uploads in flight, and
// `LocalUpload::start` spawns the blocking writer before the first byte, so an unrelated
// request waits for the stall timeout.
#[test]
fn silent_uploads_cannot_take_every_blocking_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = TestServer::start_with(Limits {
            stall_timeout: Duration::from_secs(20),
            ..test_limits()
        })
        .await;
        let token = token_for(&server, "alice", false).await;
        // Warm the home cache so the uploads only need their writers.
        let mut c = Client::connect(&server, Proto::H1).await;
        assert_eq!(
            c.authed("GET", "/f/none", &token, &[], "").await.status(),
            404
        );
        let (mut held, mut tasks) = (Vec::new(), Vec::new());
        for conn in 0..3 {
            let (send, _ping, task) = raw_h2(&server, &h2::client::Builder::new()).await;
            let mut send = send.ready().await.unwrap();
            for i in 0..30 {
                let req = http::Request::builder()
                    .method("PUT")
                    .uri(format!("https://localhost/f/silent-{conn}-{i}"))
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-length", (1024 * 1024).to_string())
                    .body(())
                    .unwrap();
                send = send.ready().await.unwrap();
                let (resp, body) = send.send_request(req, false).unwrap();
                held.push((resp, body));
            }
            tasks.push(task);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Someone else's ordinary request.
        let mut other = Client::connect(&server, Proto::H1).await;
        let start = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            other.authed("GET", "/f/none", &token, &[], ""),
        )
        .await;
        assert!(
            answer.is_ok(),
            "an ordinary request waited {:?} and more behind 90 silent uploads",
            start.elapsed()
        );
        drop(held);
        for t in tasks {
            t.abort();
        }
        server.stop().await;
    });
    rt.shutdown_timeout(Duration::from_secs(5));
}

/// Downloads whose client grants no h2 window hold more than a stream: each download's store
/// reader is a blocking-pool thread, parked in `blocking_send` once its channel is full. With
/// the watchdog fooled by pings (see
/// `an_h2_download_stuck_on_flow_control_is_cut_even_if_pings_flow`; hyper's own keep-alive
/// pings every 30 s fool it with no help, against the 60 s stall timeout) they are held for
/// good, so one holder of a read-only token can take every blocking thread and hang the
/// server for everyone. The test runs the server on a pool of 64 threads; the default 512
/// is reached by one address with 16 connections of 32 streams.
// Failed before its fix (the review of 2026-12-07): nothing bounds a user's downloads in flight, each parks a blocking thread,
// and a response stuck on flow control is never cut.
#[test]
fn stuck_downloads_cannot_take_every_blocking_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = TestServer::start().await;
        let token = token_for(&server, "alice", true).await;
        let mut c = Client::connect(&server, Proto::H1).await;
        assert_eq!(
            c.authed("GET", "/f/none", &token, &[], "").await.status(),
            404
        );
        std::fs::write(server.home("alice").join("big"), vec![9u8; 4 << 20]).unwrap();
        let mut builder = h2::client::Builder::new();
        builder.initial_window_size(0);
        let (mut held, mut tasks) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (send, _ping, task) = raw_h2(&server, &builder).await;
            let mut send = send.ready().await.unwrap();
            for _ in 0..30 {
                send = send.ready().await.unwrap();
                let (resp, _) = send
                    .send_request(h2_request("GET", "/f/big", &token), true)
                    .unwrap();
                held.push(resp);
            }
            tasks.push(task);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut other = Client::connect(&server, Proto::H1).await;
        let start = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            other.authed("GET", "/f/none", &token, &[], ""),
        )
        .await;
        assert!(
            answer.is_ok(),
            "an ordinary request waited {:?} and more behind 90 stalled downloads",
            start.elapsed()
        );
        drop(held);
        for t in tasks {
            t.abort();
        }
        server.stop().await;
    });
    rt.shutdown_timeout(Duration::from_secs(5));
}

/// A home the web front-end opened for a token is let go once unused for the idle timeout,
/// whether or not another HTTP request comes: its session slot goes back, so the user's
/// ferry/1 logins are not refused by a curl request made long ago.
// Failed before its fix (the review of 2026-12-07): `WebState::sweep` runs only inside `auth::account`, i.e. on the next token
// request. With no further HTTP traffic the cached home keeps its session slot (and its open
// directory and usage account) for ever; with `max_sessions_per_user = 1` the user cannot
// log in with ferry/1 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_cached_home_gives_its_session_back() {
    let server = TestServer::start_with(Limits {
        max_sessions_per_user: 1,
        idle_timeout: Duration::from_secs(1),
        ..test_limits()
    })
    .await;
    let token = token_for(&server, "alice", false).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    assert_eq!(
        c.authed("GET", "/f/none", &token, &[], "").await.status(),
        404
    );
    drop(c);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut conn =
        ferry::client::Connection::connect("127.0.0.1", server.addr.port(), server.client_tls())
            .await
            .unwrap();
    let login = conn
        .login(
            "alice",
            &ferry::users::Password::new("alice-pw".to_string()),
        )
        .await;
    assert!(
        login.is_ok(),
        "a ferry/1 login 3.5 s after one HTTP request, idle timeout 1 s: {login:?}"
    );
    server.stop().await;
}

/// A download link's `max_downloads` counts every GET that sends the file's first byte,
/// however its `Range` header is spelt: a suffix range of the whole size, `bytes= 0-`,
/// `bytes=00-`, `BYTES=0-` and a malformed or multi-range header (answered with the whole
/// file) are all whole downloads, after which a link of one download is used up.
// Failed before its fix (the review of 2026-12-07): `drop::download` decides whether to count from the raw header text
// (`starts_with("bytes=0-")`), not from what `parse_range` will send, so any other spelling
// downloads the whole file without counting: a sender who never sends a plain GET downloads
// for ever, and `max_downloads` only stops browsers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_links_count_holds_whatever_the_range_says() {
    use ferry::state::links::LinkKind;
    let server = TestServer::start().await;
    let home = server.home("alice");
    std::fs::create_dir_all(home.join("out")).unwrap();
    let data = data(100_000, 4);
    std::fs::write(home.join("out/once.bin"), &data).unwrap();
    let whole_suffix = format!("bytes=-{}", data.len());
    let mut c = Client::connect(&server, Proto::H1).await;
    let mut uncounted = Vec::new();
    for range in [
        whole_suffix.as_str(),
        "bytes= 0-",
        "bytes=00-",
        "BYTES=0-",
        "bytes=0-10,20-30",
        "items=0-",
    ] {
        let (token, _) = crate::util::http::link_for(&server, "alice", "/out/once.bin", |s| {
            s.kind = LinkKind::Download;
            s.max_downloads = Some(1);
        })
        .await;
        let url = format!("/l/{token}");
        let r = c.plain("GET", &url, &[("range", range)], "").await;
        assert!(r.status() < 300, "{range}: {}", r.text());
        let whole = r.body[..] == data[..];
        if whole && c.plain("GET", &url, &[], "").await.status() == 200 {
            uncounted.push(range.to_string());
        }
    }
    assert!(
        uncounted.is_empty(),
        "the whole file through a link of one download did not count for Range: {uncounted:?}"
    );
    server.stop().await;
}

/// A drop link names a folder by its path: when the owner moves that folder away and makes a
/// new one of the same name, the link's uploads go to the new one (what `ferry link list`
/// shows), not into the folder that was moved.
// Failed before its fix (the review of 2026-12-07): `auth::link_account` caches the folder's opened `Jail` (a directory fd) by
// link id and compares only owner, folder *text*, token and home path, so for as long as the
// link keeps being used (each use refreshes it) uploads land in the moved directory, wherever
// it now is, with a signed receipt. Same root cause as
// `a_user_made_again_does_not_inherit_the_cached_home`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_link_follows_its_folder_name_not_a_moved_directory() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    std::fs::create_dir_all(home.join("drop")).unwrap();
    let (token, _) = crate::util::http::link_for(&server, "alice", "/drop", |_| {}).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    let r = c
        .plain("PUT", &format!("/d/{token}/one.txt"), &[], "one")
        .await;
    assert_eq!(r.status(), 201, "{}", r.text());
    // The owner archives the folder and starts a fresh one.
    std::fs::rename(home.join("drop"), home.join("drop-2025")).unwrap();
    std::fs::create_dir(home.join("drop")).unwrap();
    let r = c
        .plain("PUT", &format!("/d/{token}/two.txt"), &[], "two")
        .await;
    assert_eq!(r.status(), 201, "{}", r.text());
    assert!(
        !home.join("drop-2025/two.txt").exists(),
        "a link to /drop put its upload into the moved-away folder /drop-2025"
    );
    assert!(home.join("drop/two.txt").exists());
    server.stop().await;
}

/// The same bound for a drop link's password: whoever holds a link's URL but not its password
/// gets `max_auth_attempts` tries on a connection, as a ferry/1 login does. Each try is an
/// argon2 verification on the pool ferry/1 logins share, so unbounded tries on a kept-open
/// connection also starve everyone's logins.
// Failed before its fix (the review of 2026-12-07): `drop::check_password` penalises a wrong password but the connection goes on,
// and the ban the penalties reach only refuses new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_link_passwords_end_the_connection_after_the_login_attempts() {
    use base64::Engine as _;
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    std::fs::create_dir_all(server.home("alice").join("in")).unwrap();
    let hash = cheap_hash("link-pw-123");
    let (token, _) =
        crate::util::http::link_for(&server, "alice", "/in", |s| s.password = Some(hash)).await;
    let max = server.server.limits().max_auth_attempts as usize;
    let mut c = Client::connect(&server, Proto::H2).await;
    let mut refused = 0;
    for i in 0..(max + 10) {
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(":guess-{i}"))
        );
        let req = crate::util::http::request("PUT", &format!("/d/{token}/f{i}"))
            .header("authorization", basic)
            .body(http_body_util::Full::new(Bytes::from_static(b"x")))
            .unwrap();
        match tokio::time::timeout(DEADLINE, c.send(req)).await {
            Ok(Ok(r)) if r.status() == 401 => refused += 1,
            _ => break,
        }
    }
    assert!(
        refused <= max,
        "{refused} wrong link passwords were each checked on one connection \
         (max_auth_attempts {max})"
    );
    server.stop().await;
}

/// A drop link's `max_files` counts files that landed. A streamed upload whose content does
/// not match the sender's digest lands nothing (409), so it must not use up the link: the
/// next, correct upload still lands. (Small uploads already check the digest before counting.)
// Failed before its fix (the review of 2026-12-07): in `files::put`'s streamed branch `count_link_use` runs before
// `upload.finish`, which is where the digest is compared; a mismatch (a sender's bug, a
// corrupting proxy, or anyone holding the URL on purpose) counts a file that never landed,
// and a link of one file is used up with nothing in the folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_mismatch_does_not_use_up_a_drop_link() {
    let server = TestServer::start().await;
    std::fs::create_dir_all(server.home("alice").join("in")).unwrap();
    let (token, _) = crate::util::http::link_for(&server, "alice", "/in", |s| {
        s.max_files = Some(1);
    })
    .await;
    let mut c = Client::connect(&server, Proto::H2).await;
    let big = data(300_000, 8);
    let bad = c
        .plain(
            "PUT",
            &format!("/d/{token}/big.bin"),
            &[("content-digest", &digest_field(b"not this"))],
            big.clone(),
        )
        .await;
    assert_eq!(bad.status(), 409, "{}", bad.text());
    assert_eq!(
        names_in(&server.home("alice").join("in")),
        Vec::<String>::new()
    );
    let good = c
        .plain(
            "PUT",
            &format!("/d/{token}/big.bin"),
            &[("content-digest", &digest_field(&big))],
            big.clone(),
        )
        .await;
    assert_eq!(
        good.status(),
        201,
        "a link of one file took nothing and is used up: {}",
        good.text()
    );
    server.stop().await;
}

/// The same through a drop link, where the attacker needs no account, only a URL that was
/// handed out: one link admits `MAX_USES_PER_LINK` (64) uploads in flight, each holding a
/// blocking thread from its head on, so eight links' URLs fill the default pool of 512. The
/// test runs the server on a pool of 48 and opens 60 silent uploads through one link.
// Failed before its fix (the review of 2026-12-07): as `silent_uploads_cannot_take_every_blocking_thread`, anonymously.
#[test]
fn silent_uploads_through_a_drop_link_cannot_take_every_blocking_thread() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(48)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = TestServer::start().await;
        std::fs::create_dir_all(server.home("alice").join("in")).unwrap();
        let (link, _) = crate::util::http::link_for(&server, "alice", "/in", |_| {}).await;
        let token = token_for(&server, "bob", false).await;
        let (mut held, mut tasks) = (Vec::new(), Vec::new());
        for conn in 0..2 {
            let (send, _ping, task) = raw_h2(&server, &h2::client::Builder::new()).await;
            let mut send = send.ready().await.unwrap();
            for i in 0..30 {
                let req = http::Request::builder()
                    .method("PUT")
                    .uri(format!("https://localhost/d/{link}/silent-{conn}-{i}"))
                    .header("content-length", (1024 * 1024).to_string())
                    .body(())
                    .unwrap();
                send = send.ready().await.unwrap();
                let (resp, body) = send.send_request(req, false).unwrap();
                held.push((resp, body));
            }
            tasks.push(task);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Another user's ordinary request.
        let mut other = Client::connect(&server, Proto::H1).await;
        let start = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            other.authed("GET", "/f/none", &token, &[], ""),
        )
        .await;
        assert!(
            answer.is_ok(),
            "bob's request waited {:?} and more behind 60 silent uploads through a drop link",
            start.elapsed()
        );
        drop(held);
        for t in tasks {
            t.abort();
        }
        server.stop().await;
    });
    rt.shutdown_timeout(Duration::from_secs(5));
}
