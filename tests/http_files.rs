//! `GET`, `HEAD` and `PUT /f/<path>` with API tokens: the verified commit, digests, ranges,
//! entity tags, and the refusals (docs/HTTP.md).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ferry::server::Limits;
use ferry::server::penalty::PenaltyConfig;

use crate::util::http::{BOTH, Client, Proto, digest_field, token_for};
use crate::util::{TestServer, names_in, sha256_hex, test_limits};

const DEADLINE: Duration = Duration::from_secs(20);

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_then_get_round_trips_verified_on_both_protocols() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    for proto in BOTH {
        let mut c = Client::connect(&server, proto).await;
        // One small file (one store call) and one large (streamed), each with its digest.
        for (name, len) in [("small.bin", 1000), ("large.bin", 3 * 1024 * 1024 + 17)] {
            let name = format!("{proto:?}-{name}");
            let body = data(len, 7);
            let sent = c
                .authed(
                    "PUT",
                    &format!("/f/{name}"),
                    &token,
                    &[("content-digest", &digest_field(&body))],
                    body.clone(),
                )
                .await;
            assert_eq!(sent.status(), 201, "{proto:?} {name}: {}", sent.text());
            let j = sent.json();
            assert_eq!(j["receipt"]["sha256"], sha256_hex(&body));
            assert_eq!(j["receipt"]["size"], len);
            assert_eq!(j["receipt"]["verified"], "sender");
            assert_eq!(j["receipt"]["to"]["user"], "alice");
            assert_eq!(j["receipt"]["name"], format!("/{name}"));
            // The receipt verifies with the key the server publishes, as it came.
            let jwk = c.get("/.well-known/ferry-receipt-key").await;
            assert_eq!(jwk.status(), 200);
            let key = ferry::receipt::PublicKey::parse(&jwk.text()).unwrap();
            let checked = key.verify(&sent.body).unwrap();
            assert_eq!(checked.receipt.sha256, sha256_hex(&body));
            let mut forged = sent.body.to_vec();
            let at = forged.len() / 2;
            forged[at] ^= 1;
            assert!(key.verify(&forged).is_err(), "a changed receipt verified");
            assert_eq!(
                sent.header("repr-digest"),
                Some(digest_field(&body).as_str())
            );
            assert_eq!(
                std::fs::read(server.home("alice").join(&name)).unwrap(),
                body
            );

            let got = c
                .authed("GET", &format!("/f/{name}"), &token, &[], "")
                .await;
            assert_eq!(got.status(), 200);
            assert_eq!(&got.body[..], &body[..]);
            assert_eq!(
                got.header("repr-digest"),
                Some(digest_field(&body).as_str())
            );
            assert_eq!(
                got.header("etag").unwrap(),
                format!("\"sha256-{}\"", sha256_hex(&body))
            );
            assert_eq!(got.header("accept-ranges"), Some("bytes"));
            assert_eq!(got.header("content-type"), Some("application/octet-stream"));
            assert!(
                got.header("content-disposition")
                    .unwrap()
                    .starts_with("attachment")
            );
            assert!(
                got.header("content-security-policy")
                    .unwrap()
                    .starts_with("sandbox")
            );

            let head = c
                .authed("HEAD", &format!("/f/{name}"), &token, &[], "")
                .await;
            assert_eq!(head.status(), 200);
            assert!(head.body.is_empty());
            assert_eq!(
                head.header("content-length"),
                Some(len.to_string().as_str())
            );
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_stores_nothing() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    for proto in BOTH {
        let mut c = Client::connect(&server, proto).await;
        for len in [5000, 2 * 1024 * 1024] {
            let body = data(len, 1);
            let name = format!("bad-{proto:?}-{len}");
            let r = c
                .authed(
                    "PUT",
                    &format!("/f/{name}"),
                    &token,
                    &[("content-digest", &digest_field(b"something else"))],
                    body.clone(),
                )
                .await;
            assert_eq!(r.status(), 409, "{}", r.text());
            assert_eq!(r.json()["error"], "integrity_mismatch");
            assert_eq!(r.json()["server_sha256"], sha256_hex(&body));
        }
    }
    // Nothing under any name, and no temp file left behind.
    assert_eq!(names_in(&server.home("alice")), Vec::<String>::new());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_digest_the_server_computes_it_and_says_so() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    for len in [10, 1024 * 1024] {
        let body = data(len, 3);
        let r = c
            .authed("PUT", &format!("/f/plain-{len}"), &token, &[], body.clone())
            .await;
        assert_eq!(r.status(), 201, "{}", r.text());
        assert_eq!(r.json()["receipt"]["verified"], "server-only");
        assert_eq!(r.json()["receipt"]["sha256"], sha256_hex(&body));
    }
    // A malformed digest is the sender's error, not a silent "no digest".
    let r = c
        .authed(
            "PUT",
            "/f/x",
            &token,
            &[("content-digest", "sha-256=:not base64:")],
            "x",
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json()["error"], "bad_digest");
    assert!(!server.home("alice").join("x").exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_name_is_replaced_only_when_asked() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let mut c = Client::connect(&server, Proto::H2).await;
    assert_eq!(
        c.authed("PUT", "/f/a.txt", &token, &[], "one")
            .await
            .status(),
        201
    );
    let again = c.authed("PUT", "/f/a.txt", &token, &[], "two").await;
    assert_eq!(again.status(), 409);
    assert_eq!(again.json()["error"], "already_exists");
    assert_eq!(
        std::fs::read(server.home("alice").join("a.txt")).unwrap(),
        b"one"
    );
    let replaced = c
        .authed("PUT", "/f/a.txt", &token, &[("overwrite", "T")], "two")
        .await;
    assert_eq!(replaced.status(), 201);
    assert_eq!(
        std::fs::read(server.home("alice").join("a.txt")).unwrap(),
        b"two"
    );
    // Into a directory that does not exist; onto a directory.
    assert_eq!(
        c.authed("PUT", "/f/no/such/dir.txt", &token, &[], "x")
            .await
            .status(),
        404
    );
    std::fs::create_dir(server.home("alice").join("d")).unwrap();
    assert_eq!(
        c.authed("PUT", "/f/d", &token, &[], "x").await.status(),
        409
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_and_entity_tags_let_a_download_resume() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let body = data(100_000, 9);
    let mut c = Client::connect(&server, Proto::H1).await;
    assert_eq!(
        c.authed("PUT", "/f/r.bin", &token, &[], body.clone())
            .await
            .status(),
        201
    );
    let etag = format!("\"sha256-{}\"", sha256_hex(&body));
    let part = c
        .authed("GET", "/f/r.bin", &token, &[("range", "bytes=10-19")], "")
        .await;
    assert_eq!(part.status(), 206);
    assert_eq!(&part.body[..], &body[10..20]);
    assert_eq!(part.header("content-range"), Some("bytes 10-19/100000"));
    let tail = c
        .authed("GET", "/f/r.bin", &token, &[("range", "bytes=-5")], "")
        .await;
    assert_eq!(&tail.body[..], &body[99_995..]);
    let from = c
        .authed("GET", "/f/r.bin", &token, &[("range", "bytes=99990-")], "")
        .await;
    assert_eq!(&from.body[..], &body[99_990..]);
    let beyond = c
        .authed("GET", "/f/r.bin", &token, &[("range", "bytes=100000-")], "")
        .await;
    assert_eq!(beyond.status(), 416);
    assert_eq!(beyond.header("content-range"), Some("bytes */100000"));
    // If-Range with our tag: the range; with another: the whole file.
    let same = c
        .authed(
            "GET",
            "/f/r.bin",
            &token,
            &[("range", "bytes=0-0"), ("if-range", &etag)],
            "",
        )
        .await;
    assert_eq!(same.status(), 206);
    let other = c
        .authed(
            "GET",
            "/f/r.bin",
            &token,
            &[("range", "bytes=0-0"), ("if-range", "\"sha256-00\"")],
            "",
        )
        .await;
    assert_eq!(other.status(), 200);
    assert_eq!(other.body.len(), 100_000);
    let cached = c
        .authed("GET", "/f/r.bin", &token, &[("if-none-match", &etag)], "")
        .await;
    assert_eq!(cached.status(), 304);
    assert!(cached.body.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_bad_ones_penalised() {
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let token = token_for(&server, "alice", false).await;
    let reader = token_for(&server, "alice", true).await;
    let mut c = Client::connect(&server, Proto::H2).await;
    // No credentials: 401, and no penalty (a browser or a script that forgot the header).
    let none = c
        .send(
            crate::util::http::request("GET", "/f/x")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Bearer realm=\"ferry\"")
    );
    assert_eq!(
        server.server.penalty_owed(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        None
    );
    // A read-only token reads but does not write.
    assert_eq!(
        c.authed("PUT", "/f/w", &reader, &[], "x").await.status(),
        403
    );
    assert_eq!(
        c.authed("PUT", "/f/w", &token, &[], "x").await.status(),
        201
    );
    assert_eq!(
        c.authed("GET", "/f/w", &reader, &[], "").await.status(),
        200
    );
    // A wrong secret for a real id, and garbage: the same 401 bytes, and a penalty.
    let mut wrong = token.clone();
    wrong.pop();
    wrong.push(if token.ends_with('A') { 'B' } else { 'A' });
    let a = c.authed("GET", "/f/w", &wrong, &[], "").await;
    let b = c.authed("GET", "/f/w", "fy_garbage", &[], "").await;
    assert_eq!((a.status(), b.status()), (401, 401));
    assert_eq!(a.body, b.body);
    assert!(
        server
            .server
            .penalty_owed(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .is_some()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_users_token_stops_at_once() {
    let server = TestServer::start().await;
    let token = token_for(&server, "bob", false).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    assert_eq!(
        c.authed("PUT", "/f/b", &token, &[], "x").await.status(),
        201
    );
    ferry::users::remove_user(&server.users_file, "bob").unwrap();
    // This test server's users are fixed until replaced (`ferry serve` rereads the file).
    server
        .server
        .replace_users(ferry::users::UserDb::load(&server.users_file).unwrap());
    let start = std::time::Instant::now();
    loop {
        let r = c.authed("GET", "/f/b", &token, &[], "").await;
        if r.status() == 401 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the token kept working");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_dots_slashes_and_bad_utf8_never_reach_the_core() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    std::fs::write(server.dir().join("secret"), "outside").unwrap();
    for path in [
        "/f/..%2fsecret",
        "/f/%2e%2e/secret",
        "/f/%2E%2E/%2e%2e/secret",
        "/f/a%00b",
        "/f/%c0%af",
        "/f/a%5c..%5csecret",
        "/f/%ed%a0%80",
        "/f/a%2",
        // A right-to-left override would show `invoice\u{202E}fdp.exe` as `invoiceexe.pdf`.
        "/f/invoice%E2%80%AEfdp.exe",
        "/f/a%E2%81%A6b",
    ] {
        let mut c = Client::connect(&server, Proto::H1).await;
        let r = c.authed("GET", path, &token, &[], "").await;
        assert_eq!(r.status(), 400, "{path}: {}", r.text());
        assert_eq!(r.json()["error"], "invalid_path", "{path}");
        assert!(!r.text().contains("outside"));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_over_http() {
    let server = TestServer::start().await;
    // carol: at most 600,000 bytes a file, 1 MiB in all.
    let token = token_for(&server, "carol", false).await;
    let mut c = Client::connect(&server, Proto::H2).await;
    let big = c
        .authed("PUT", "/f/big", &token, &[], vec![0u8; 700_000])
        .await;
    assert_eq!(big.status(), 413, "{}", big.text());
    assert_eq!(big.json()["error"], "too_large");
    for i in 0..2 {
        let r = c
            .authed("PUT", &format!("/f/f{i}"), &token, &[], vec![1u8; 500_000])
            .await;
        assert_eq!(r.status(), 201);
    }
    let over = c
        .authed("PUT", "/f/f2", &token, &[], vec![2u8; 500_000])
        .await;
    assert_eq!(over.status(), 507, "{}", over.text());
    assert_eq!(over.json()["error"], "quota_exceeded");
    assert!(!server.home("carol").join("f2").exists());
    server.stop().await;
}
