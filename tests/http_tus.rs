//! Resumable uploads (tus 1.0) over real TLS, on h1 and h2: a small tus client of our own
//! against the real server. Checksums per chunk, the whole-file digest, cuts and restarts,
//! kept partials damaged on disk, quota at creation, drop links, and sequences that try to
//! make the counters lie.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use sha2::Digest as _;
use tokio::io::AsyncWriteExt;

use crate::util::http::{BOTH, Client, Proto, Reply, link_for, tls_offering, tls_to, token_for};
use crate::util::{TestServer, random_file, sha256_hex, test_limits};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn sha(data: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(data).into()
}

/// A tus client: one connection, one way of proving who it is.
struct Tus {
    c: Client,
    /// `/tus/` or `/d/<token>/tus/`.
    base: String,
    auth: Vec<(String, String)>,
}

impl Tus {
    async fn account(server: &TestServer, proto: Proto, token: &str) -> Tus {
        Tus {
            c: Client::connect(server, proto).await,
            base: "/tus/".into(),
            auth: vec![("authorization".into(), format!("Bearer {token}"))],
        }
    }

    async fn link(server: &TestServer, proto: Proto, token: &str) -> Tus {
        Tus {
            c: Client::connect(server, proto).await,
            base: format!("/d/{token}/tus/"),
            auth: Vec::new(),
        }
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Reply {
        let mut h: Vec<(&str, &str)> = self
            .auth
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        h.push(("tus-resumable", "1.0.0"));
        for (k, v) in headers {
            h.push((k, v.as_str()));
        }
        self.c.plain(method, path, &h, body).await
    }

    /// `POST`: returns the reply; its `Location` is the upload's URL.
    async fn create(&mut self, name: &str, size: u64, declared: Option<[u8; 32]>) -> Reply {
        let mut meta = format!("filename {}", B64.encode(name));
        if let Some(d) = declared {
            meta.push_str(&format!(",sha256 {}", B64.encode(d)));
        }
        let base = self.base.clone();
        self.send(
            "POST",
            &base,
            &[
                ("upload-length", size.to_string()),
                ("upload-metadata", meta),
            ],
            Vec::new(),
        )
        .await
    }

    async fn created(&mut self, name: &str, size: u64, declared: Option<[u8; 32]>) -> String {
        let r = self.create(name, size, declared).await;
        assert_eq!(r.status(), 201, "{}", r.text());
        assert_eq!(r.header("upload-offset"), Some("0"));
        assert!(r.header("upload-expires").is_some());
        r.header("location").unwrap().to_string()
    }

    async fn patch(
        &mut self,
        url: &str,
        offset: u64,
        chunk: &[u8],
        checksum: Option<[u8; 32]>,
        repr: Option<[u8; 32]>,
    ) -> Reply {
        let mut h = vec![
            (
                "content-type",
                "application/offset+octet-stream".to_string(),
            ),
            ("upload-offset", offset.to_string()),
        ];
        if let Some(c) = checksum {
            h.push(("upload-checksum", format!("sha256 {}", B64.encode(c))));
        }
        if let Some(d) = repr {
            h.push((
                "repr-digest",
                ferry::frontend::http::parse::format_digest_field(&d),
            ));
        }
        self.send("PATCH", url, &h, chunk.to_vec()).await
    }

    async fn offset(&mut self, url: &str) -> Option<u64> {
        let r = self.send("HEAD", url, &[], Vec::new()).await;
        if r.status() != 200 {
            return None;
        }
        assert_eq!(r.header("cache-control"), Some("no-store"));
        r.header("upload-offset").and_then(|v| v.parse().ok())
    }

    /// Sends `data` from `from` in chunks of `chunk`, each with its checksum when `sums`, the
    /// last with the whole file's digest when `repr`; returns the final reply.
    async fn send_all(
        &mut self,
        url: &str,
        data: &[u8],
        from: usize,
        chunk: usize,
        sums: bool,
        repr: bool,
    ) -> Reply {
        let mut at = from;
        loop {
            let end = (at + chunk).min(data.len());
            let part = &data[at..end];
            let last = end == data.len();
            let r = self
                .patch(
                    url,
                    at as u64,
                    part,
                    sums.then(|| sha(part)),
                    (repr && last).then(|| sha(data)),
                )
                .await;
            assert_eq!(r.status(), 204, "at {at}: {}", r.text());
            assert_eq!(r.header("upload-offset"), Some(end.to_string().as_str()));
            if last {
                return r;
            }
            at = end;
        }
    }
}

/// The receipt a final PATCH carried (the JWS's payload), checked against the server's key.
fn receipt_of(server: &TestServer, r: &Reply) -> serde_json::Value {
    let jws = r.header("ferry-receipt").expect("a Ferry-Receipt header");
    let key = ferry::receipt::ReceiptKey::load_or_create(&server.dir().join("certs"))
        .unwrap()
        .0;
    let v = key
        .public_key()
        .verify(jws.as_bytes())
        .expect("the receipt verifies");
    serde_json::to_value(v.receipt).unwrap()
}

fn partials(home: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(home.join(".ferry-partials"))
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_uploads_with_and_without_checksums_land_verified() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_file(&dir.path().join("src"), 3 * 1024 * 1024 + 17, 5);
    for proto in BOTH {
        let mut t = Tus::account(&server, proto, &token).await;
        let opts = t.c.plain("OPTIONS", "/tus/", &[], Vec::new()).await;
        assert_eq!(opts.status(), 204);
        assert_eq!(opts.header("tus-version"), Some("1.0.0"));
        assert_eq!(opts.header("tus-checksum-algorithm"), Some("sha256"));
        assert!(opts.header("tus-extension").unwrap().contains("checksum"));
        // With a checksum per chunk and the whole digest on the last one.
        let name = format!("with-{proto:?}.bin");
        let url = t.created(&name, data.len() as u64, None).await;
        let r = t.send_all(&url, &data, 0, 1024 * 1024, true, true).await;
        assert_eq!(
            r.header("repr-digest").unwrap(),
            ferry::frontend::http::parse::format_digest_field(&sha(&data))
        );
        let receipt = receipt_of(&server, &r);
        assert_eq!(receipt["verified"], "sender");
        assert_eq!(receipt["sha256"], sha256_hex(&data));
        assert_eq!(receipt["name"], format!("/{name}"));
        assert_eq!(receipt["to"]["user"], "alice");
        assert_eq!(
            std::fs::read(server.home("alice").join(&name)).unwrap(),
            data
        );
        // The receipt stays readable, and the upload reads as complete.
        let g = t
            .send("GET", &format!("{url}/receipt"), &[], Vec::new())
            .await;
        assert_eq!(g.status(), 200, "{}", g.text());
        assert_eq!(g.json()["receipt"]["sha256"], sha256_hex(&data));
        assert_eq!(t.offset(&url).await, Some(data.len() as u64));
        // A stock client: no checksum, no digest. It lands, and the receipt says so.
        let plain = format!("plain-{proto:?}.bin");
        let url = t.created(&plain, data.len() as u64, None).await;
        let r = t.send_all(&url, &data, 0, 700_000, false, false).await;
        assert_eq!(receipt_of(&server, &r)["verified"], "server-only");
        assert_eq!(
            std::fs::read(server.home("alice").join(&plain)).unwrap(),
            data
        );
        // Declared at creation instead: checked, and "sender".
        let decl = format!("declared-{proto:?}.bin");
        let url = t.created(&decl, data.len() as u64, Some(sha(&data))).await;
        let r = t
            .send_all(&url, &data, 0, 2 * 1024 * 1024, false, false)
            .await;
        assert_eq!(receipt_of(&server, &r)["verified"], "sender");
    }
    assert!(partials(&server.home("alice")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_fails_its_checksum_gets_460_and_the_offset_stays() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    for proto in BOTH {
        let mut t = Tus::account(&server, proto, &token).await;
        let name = format!("sum-{proto:?}");
        let url = t.created(&name, data.len() as u64, None).await;
        let r = t
            .patch(&url, 0, &data[..300_000], Some(sha(&data[..300_000])), None)
            .await;
        assert_eq!(r.status(), 204, "{}", r.text());
        // The right length, the wrong bytes.
        let mut wrong = data[300_000..].to_vec();
        wrong[1000] ^= 1;
        let r = t
            .patch(&url, 300_000, &wrong, Some(sha(&data[300_000..])), None)
            .await;
        assert_eq!(r.status(), 460, "{}", r.text());
        assert_eq!(
            t.offset(&url).await,
            Some(300_000),
            "the offset did not move"
        );
        // A malformed or unknown checksum algorithm is a 400, and moves nothing either.
        let r = t
            .send(
                "PATCH",
                &url,
                &[
                    ("content-type", "application/offset+octet-stream".into()),
                    ("upload-offset", "300000".into()),
                    ("upload-checksum", "md5 AAAA".into()),
                ],
                data[300_000..].to_vec(),
            )
            .await;
        assert_eq!(r.status(), 400);
        // The wrong offset: 409, with where it stands.
        let r = t.patch(&url, 299_999, &data[299_999..], None, None).await;
        assert_eq!(r.status(), 409);
        assert_eq!(r.header("upload-offset"), Some("300000"));
        assert_eq!(t.offset(&url).await, Some(300_000));
        let r = t
            .patch(
                &url,
                300_000,
                &data[300_000..],
                Some(sha(&data[300_000..])),
                Some(sha(&data)),
            )
            .await;
        assert_eq!(r.status(), 204, "{}", r.text());
        assert_eq!(
            std::fs::read(server.home("alice").join(&name)).unwrap(),
            data
        );
    }
}

/// Sends a PATCH's head and `sent` of its `len` body bytes on a raw HTTP/1.1 connection, then
/// cuts the connection.
async fn cut_patch(
    server: &TestServer,
    path: &str,
    token: &str,
    offset: u64,
    body: &[u8],
    len: usize,
    sum: Option<[u8; 32]>,
) {
    let mut tls = tls_to(server.addr, tls_offering(server, &[b"http/1.1"]))
        .await
        .unwrap();
    let mut head = format!(
        "PATCH {path} HTTP/1.1\r\nhost: localhost\r\ntus-resumable: 1.0.0\r\n\
         authorization: Bearer {token}\r\ncontent-type: application/offset+octet-stream\r\n\
         upload-offset: {offset}\r\ncontent-length: {len}\r\n"
    );
    if let Some(s) = sum {
        head.push_str(&format!("upload-checksum: sha256 {}\r\n", B64.encode(s)));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(tls);
}

/// HEAD until the offset is `want` (a cut PATCH ends on the server a moment later).
async fn wait_offset(t: &mut Tus, url: &str, want: u64) {
    let mut last = None;
    for _ in 0..100 {
        last = t.offset(url).await;
        if last == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("offset {last:?}, expected {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_cut_mid_way_resumes_after_head() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let mut t = Tus::account(&server, Proto::H2, &token).await;
    // No checksum: what came is kept.
    let url = t.created("cut.bin", data.len() as u64, None).await;
    cut_patch(&server, &url, &token, 0, &data[..700_001], data.len(), None).await;
    wait_offset(&mut t, &url, 700_001).await;
    let r = t
        .send_all(&url, &data, 700_001, 1_000_000, true, true)
        .await;
    assert_eq!(receipt_of(&server, &r)["sha256"], sha256_hex(&data));
    assert_eq!(
        std::fs::read(server.home("alice").join("cut.bin")).unwrap(),
        data
    );
    // With a checksum promised, a cut chunk is not taken.
    let url = t.created("cut-sum.bin", data.len() as u64, None).await;
    t.send_all(&url, &data[..500_000], 0, 500_000, true, false)
        .await;
    cut_patch(
        &server,
        &url,
        &token,
        500_000,
        &data[500_000..900_000],
        1_500_000,
        Some(sha(&data[500_000..])),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_offset(&mut t, &url, 500_000).await;
    let r = t
        .send_all(&url, &data, 500_000, 1_500_000, true, true)
        .await;
    assert_eq!(receipt_of(&server, &r)["verified"], "sender");
    assert_eq!(
        std::fs::read(server.home("alice").join("cut-sum.bin")).unwrap(),
        data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_chunks_resumes_from_the_kept_partial() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 249) as u8).collect();
    let (url, url2) = {
        let mut t = Tus::account(&server, Proto::H1, &token).await;
        let url = t
            .created("big.bin", data.len() as u64, Some(sha(&data)))
            .await;
        let r = t
            .patch(
                &url,
                0,
                &data[..4_200_000],
                Some(sha(&data[..4_200_000])),
                None,
            )
            .await;
        assert_eq!(r.status(), 204, "{}", r.text());
        // A second one, to be damaged on disk while the server is down.
        let url2 = t.created("damaged.bin", data.len() as u64, None).await;
        let r = t.patch(&url2, 0, &data[..1_000_000], None, None).await;
        assert_eq!(r.status(), 204, "{}", r.text());
        (url, url2)
    };
    let server = server.restart(test_limits()).await;
    let home = server.home("alice");
    let kept = partials(&home);
    assert_eq!(kept.len(), 2, "both kept at shutdown: {kept:?}");
    // Damage the 1 MB one (the other holds 4.2 MB).
    let damaged = kept
        .iter()
        .find(|p| std::fs::metadata(p).unwrap().len() == 1_000_000)
        .unwrap();
    let mut bytes = std::fs::read(damaged).unwrap();
    bytes[123_456] ^= 0x40;
    std::fs::write(damaged, bytes).unwrap();
    let mut t = Tus::account(&server, Proto::H2, &token).await;
    assert_eq!(t.offset(&url).await, Some(4_200_000));
    let r = t
        .send_all(&url, &data, 4_200_000, 1_000_000, true, false)
        .await;
    assert_eq!(receipt_of(&server, &r)["verified"], "sender");
    assert_eq!(std::fs::read(home.join("big.bin")).unwrap(), data);
    // The damaged partial is refused at resume, and the upload starts again from 0.
    assert_eq!(t.offset(&url2).await, Some(1_000_000));
    let r = t
        .patch(&url2, 1_000_000, &data[1_000_000..], None, None)
        .await;
    assert_eq!(r.status(), 409, "{}", r.text());
    assert_eq!(r.json()["error"], "resume_refused");
    assert_eq!(r.header("upload-offset"), Some("0"));
    assert_eq!(t.offset(&url2).await, Some(0));
    assert!(!home.join("damaged.bin").exists());
    let r = t.send_all(&url2, &data, 0, 2_500_000, true, true).await;
    assert_eq!(receipt_of(&server, &r)["sha256"], sha256_hex(&data));
    assert_eq!(std::fs::read(home.join("damaged.bin")).unwrap(), data);
    assert!(partials(&home).is_empty(), "{:?}", partials(&home));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_file_mismatch_leaves_nothing() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let data = vec![9u8; 400_000];
    for proto in BOTH {
        let mut t = Tus::account(&server, proto, &token).await;
        // Declared at creation, and the content is another.
        let name = format!("m-{proto:?}");
        let url = t
            .created(&name, data.len() as u64, Some(sha(b"something else")))
            .await;
        let r = t.patch(&url, 0, &data, Some(sha(&data)), None).await;
        assert_eq!(r.status(), 409, "{}", r.text());
        assert_eq!(r.json()["error"], "integrity_mismatch");
        assert!(!server.home("alice").join(&name).exists());
        assert_eq!(t.offset(&url).await, None, "the upload is gone");
        // Repr-Digest against the declared one: 400 before a byte is taken.
        let url = t.created(&name, data.len() as u64, Some(sha(&data))).await;
        let r = t.patch(&url, 0, &data, None, Some(sha(b"other"))).await;
        assert_eq!(r.status(), 400, "{}", r.text());
        assert_eq!(t.offset(&url).await, Some(0));
        // Only Repr-Digest, wrong.
        let other = format!("r-{proto:?}");
        let url = t.created(&other, data.len() as u64, None).await;
        let r = t.patch(&url, 0, &data, None, Some(sha(b"other"))).await;
        assert_eq!(r.status(), 409);
        assert!(!server.home("alice").join(&other).exists());
    }
    let names: Vec<String> = crate::util::names_in(&server.home("alice"))
        .into_iter()
        .filter(|n| n != ".ferry-partials")
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("m-") && !n.starts_with("r-")),
        "{names:?}"
    );
    assert!(partials(&server.home("alice")).is_empty());
}

/// carol: 1 MiB quota, 5 files, 600,000 bytes a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_is_refused_at_creation_and_races_have_one_winner() {
    let server = TestServer::start().await;
    let token = token_for(&server, "carol", false).await;
    let mut t = Tus::account(&server, Proto::H1, &token).await;
    let r = t.create("too-big", 700_000, None).await;
    assert_eq!(r.status(), 413, "{}", r.text());
    // Two creations at once for the last room: one wins.
    let first = t.created("a", 500_000, None).await;
    let mut racers = Vec::new();
    for name in ["b", "c"] {
        let mut t = Tus::account(&server, Proto::H2, &token).await;
        racers.push(tokio::spawn(async move {
            t.create(name, 500_000, None).await.status()
        }));
    }
    let mut got = Vec::new();
    for r in racers {
        got.push(r.await.unwrap());
    }
    got.sort();
    assert_eq!(
        got,
        [201, 507],
        "exactly one of two racers for the last room"
    );
    // DELETE gives the room back; a PATCH after it finds nothing.
    let r = t.send("DELETE", &first, &[], Vec::new()).await;
    assert_eq!(r.status(), 204);
    let r = t.patch(&first, 0, &[1; 10], None, None).await;
    assert_eq!(r.status(), 404);
    let r = t.send("DELETE", &first, &[], Vec::new()).await;
    assert_eq!(r.status(), 404, "a second DELETE finds nothing");
    let url = t.created("d", 500_000, None).await;
    // A partial kept then cancelled gives its room back too.
    let r = t.patch(&url, 0, &[3; 200_000], None, None).await;
    assert_eq!(r.status(), 204);
    let r = t.send("DELETE", &url, &[], Vec::new()).await;
    assert_eq!(r.status(), 204);
    let u = t.c.authed("GET", "/api/usage", &token, &[], "").await;
    assert_eq!(u.status(), 200, "{}", u.text());
    let used = u.json()["used_bytes"].as_u64().unwrap();
    assert!(
        used < 600_000,
        "only the racer's reservation is held: {}",
        u.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_upload_lands_beside_a_taken_name_and_reaches_no_other_upload() {
    let server = TestServer::start().await;
    let drop_dir = server.home("alice").join("drop");
    std::fs::create_dir_all(&drop_dir).unwrap();
    std::fs::write(drop_dir.join("report.pdf"), "the owner's own").unwrap();
    let (tok_a, id_a) = link_for(&server, "alice", "/drop", |_| {}).await;
    let (tok_b, _) = link_for(&server, "alice", "/drop", |_| {}).await;
    let alice = token_for(&server, "alice", false).await;
    let bob = token_for(&server, "bob", false).await;
    let data = vec![5u8; 300_000];
    for proto in BOTH {
        let mut a = Tus::link(&server, proto, &tok_a).await;
        let url = a.created("report.pdf", data.len() as u64, None).await;
        assert!(url.starts_with(&format!("/d/{tok_a}/tus/")), "{url}");
        let id = url.rsplit('/').next().unwrap().to_string();
        // Another link, the account's own routes, another user: the id is unknown to all.
        let mut b = Tus::link(&server, proto, &tok_b).await;
        let via_b = format!("/d/{tok_b}/tus/{id}");
        assert_eq!(b.offset(&via_b).await, None);
        let r = b.patch(&via_b, 0, &data, None, None).await;
        assert_eq!(r.status(), 404);
        let r = b.send("DELETE", &via_b, &[], Vec::new()).await;
        assert_eq!(r.status(), 404);
        for token in [&alice, &bob] {
            let mut acc = Tus::account(&server, proto, token).await;
            assert_eq!(acc.offset(&format!("/tus/{id}")).await, None);
            let r = acc.patch(&format!("/tus/{id}"), 0, &data, None, None).await;
            assert_eq!(r.status(), 404);
        }
        // And the other way: a link cannot reach an account's upload.
        let mut acc = Tus::account(&server, proto, &alice).await;
        let mine = acc.created("mine.bin", 10, None).await;
        let theirs = format!("/d/{tok_a}/tus/{}", mine.rsplit('/').next().unwrap());
        assert_eq!(a.offset(&theirs).await, None);
        let r = a.send("DELETE", &theirs, &[], Vec::new()).await;
        assert_eq!(r.status(), 404);
        assert_eq!(acc.offset(&mine).await, Some(0));
        // The link's own upload lands beside the taken name.
        let r = a.send_all(&url, &data, 0, 100_000, true, true).await;
        let receipt = receipt_of(&server, &r);
        assert_eq!(receipt["to"]["link"], id_a);
        assert_eq!(receipt["sent_name"], "report.pdf");
        let name = receipt["name"].as_str().unwrap().to_string();
        assert!(
            name.starts_with("report (") && name.ends_with(").pdf"),
            "{name}"
        );
        assert_eq!(std::fs::read(drop_dir.join(&name)).unwrap(), data);
        // A path is no name: refused.
        let r = a.create("../x", 10, None).await;
        assert_eq!(r.status(), 400);
        let r = a.create("sub/x", 10, None).await;
        assert_eq!(r.status(), 400);
    }
    assert_eq!(
        std::fs::read_to_string(drop_dir.join("report.pdf")).unwrap(),
        "the owner's own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_links_limits_count_tus_uploads_once() {
    let server = TestServer::start().await;
    std::fs::create_dir_all(server.home("alice").join("drop")).unwrap();
    let (tok, _) = link_for(&server, "alice", "/drop", |s| s.max_files = Some(1)).await;
    let mut t = Tus::link(&server, Proto::H1, &tok).await;
    let first = t.created("one", 1000, None).await;
    // The link's one file is reserved by the first upload.
    let r = t.create("two", 1000, None).await;
    assert_eq!(r.status(), 403, "{}", r.text());
    // Cancelled: free again.
    assert_eq!(
        t.send("DELETE", &first, &[], Vec::new()).await.status(),
        204
    );
    let second = t.created("two", 1000, None).await;
    t.send_all(&second, &[7; 1000], 0, 1000, true, false).await;
    let r = t.create("three", 1000, None).await;
    assert_eq!(r.status(), 403, "{}", r.text());
    // The final PATCH again (a client that lost the answer) counts nothing more.
    let r = t.patch(&second, 1000, &[], None, None).await;
    assert_eq!(r.status(), 204);
    assert_eq!(receipt_of(&server, &r)["size"], 1000, "the receipt again");
    let r = t.patch(&second, 0, &[7; 1000], None, None).await;
    assert_eq!(r.status(), 409);
    let files = crate::util::names_in(&server.home("alice").join("drop"));
    assert_eq!(
        files.iter().filter(|n| !n.starts_with(".ferry-")).count(),
        1,
        "{files:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_patch_while_one_runs_gets_409_and_an_expired_upload_is_gone() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let data = vec![1u8; 1_000_000];
    let mut t = Tus::account(&server, Proto::H2, &token).await;
    let url = t.created("slow.bin", data.len() as u64, None).await;
    // A PATCH that sends half its body and then waits.
    let mut tls = tls_to(server.addr, tls_offering(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    let head = format!(
        "PATCH {url} HTTP/1.1\r\nhost: localhost\r\ntus-resumable: 1.0.0\r\n\
         authorization: Bearer {token}\r\ncontent-type: application/offset+octet-stream\r\n\
         upload-offset: 0\r\ncontent-length: {}\r\n\r\n",
        data.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&data[..400_000]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = t.patch(&url, 0, &data, None, None).await;
    assert_eq!(r.status(), 409, "{}", r.text());
    let r = t.send("DELETE", &url, &[], Vec::new()).await;
    assert_eq!(r.status(), 409, "no DELETE under a running PATCH");
    tls.write_all(&data[400_000..]).await.unwrap();
    tls.flush().await.unwrap();
    wait_offset(&mut t, &url, data.len() as u64).await;
    drop(tls);
    assert_eq!(
        std::fs::read(server.home("alice").join("slow.bin")).unwrap(),
        data
    );
    // An upload whose record expired (set back on disk, read at the next start) is gone.
    let url = t.created("late.bin", 10, None).await;
    let r = t.patch(&url, 0, &[1; 5], None, None).await;
    assert_eq!(r.status(), 204);
    drop(t);
    let id = url.rsplit('/').next().unwrap().to_string();
    let server = server.restart(test_limits()).await;
    let record = server.root.join(".ferry-tus").join(format!("{id}.json"));
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    v["expires"] = serde_json::json!({"secs_since_epoch": 1, "nanos_since_epoch": 0});
    std::fs::write(&record, serde_json::to_vec(&v).unwrap()).unwrap();
    let server = server.restart(test_limits()).await;
    let mut t = Tus::account(&server, Proto::H1, &token).await;
    assert_eq!(t.offset(&url).await, None);
    let r = t.patch(&url, 5, &[1; 5], None, None).await;
    assert_eq!(r.status(), 404);
    assert!(!server.home("alice").join("late.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_requests_need_the_version_and_credentials() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    let r = c
        .plain(
            "POST",
            "/tus/",
            &[("tus-resumable", "1.0.0"), ("upload-length", "5")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status(), 401);
    let auth = format!("Bearer {token}");
    let r = c
        .plain(
            "POST",
            "/tus/",
            &[("authorization", &auth), ("upload-length", "5")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status(), 412);
    let r = c
        .plain(
            "POST",
            "/tus/",
            &[
                ("authorization", &auth),
                ("tus-resumable", "1.0.0"),
                ("upload-defer-length", "1"),
                ("upload-metadata", "filename eA=="),
            ],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status(), 400, "no defer-length");
    let r = c
        .plain(
            "HEAD",
            "/tus/not-an-id",
            &[("authorization", &auth), ("tus-resumable", "1.0.0")],
            Vec::new(),
        )
        .await;
    assert_eq!(r.status(), 404);
    // A read-only token cannot create.
    let ro = token_for(&server, "alice", true).await;
    let mut t = Tus::account(&server, Proto::H2, &ro).await;
    let r = t.create("x", 5, None).await;
    assert_eq!(r.status(), 403, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upload_is_kept_and_resumed_from_disk() {
    let limits = ferry::server::Limits {
        idle_timeout: Duration::from_secs(1),
        ..test_limits()
    };
    let server = TestServer::start_with(limits).await;
    let token = token_for(&server, "alice", false).await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    let mut t = Tus::account(&server, Proto::H2, &token).await;
    let url = t.created("idle.bin", data.len() as u64, None).await;
    let r = t.patch(&url, 0, &data[..1_500_001], None, None).await;
    assert_eq!(r.status(), 204);
    // Unused past the idle time: kept on disk, and the record says how much.
    let home = server.home("alice");
    let mut kept = Vec::new();
    for _ in 0..100 {
        kept = partials(&home);
        if !kept.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(kept.len(), 1, "kept once idle");
    let mut t = Tus::account(&server, Proto::H1, &token).await;
    assert_eq!(t.offset(&url).await, Some(1_500_001));
    let r = t
        .send_all(&url, &data, 1_500_001, 1_000_000, true, true)
        .await;
    assert_eq!(receipt_of(&server, &r)["sha256"], sha256_hex(&data));
    assert!(partials(&home).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_held_open_at_once_are_capped_per_owner() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let mut t = Tus::account(&server, Proto::H2, &token).await;
    // A cancelled one frees its place.
    let mut open = Vec::new();
    for i in 0..16 {
        open.push(t.created(&format!("open{i}"), 1_000_000, None).await);
    }
    let r = t.create("one-too-many", 1_000_000, None).await;
    assert_eq!(r.status(), 429, "{}", r.text());
    assert_eq!(
        t.send("DELETE", &open[0], &[], Vec::new()).await.status(),
        204
    );
    t.created("now-it-fits", 1_000_000, None).await;
}

/// The web app's session works for tus as for every change: with its CSRF token, and from its
/// own origin only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_uploads_with_its_csrf_token_and_only_with_it() {
    let server = TestServer::start().await;
    for proto in BOTH {
        let mut c = Client::connect(&server, proto).await;
        let body = serde_json::json!({ "user": "alice", "password": "alice-pw" }).to_string();
        let r = c
            .plain(
                "POST",
                "/api/login",
                &[("content-type", "application/json")],
                body,
            )
            .await;
        assert_eq!(r.status(), 200, "{}", r.text());
        let cookie = r
            .header("set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let csrf = r.json()["csrf"].as_str().unwrap().to_string();
        let mut t = Tus {
            c,
            base: "/tus/".into(),
            auth: vec![("cookie".into(), cookie.clone())],
        };
        // Without the token: refused, nothing made.
        let r = t.create("page.bin", 5, None).await;
        assert_eq!(r.status(), 403, "{}", r.text());
        assert_eq!(r.json()["error"], "csrf");
        // From another origin: refused even with it.
        t.auth.push(("x-ferry-csrf".into(), csrf.clone()));
        t.auth
            .push(("origin".into(), "https://evil.example".into()));
        assert_eq!(t.create("page.bin", 5, None).await.status(), 403);
        t.auth.pop();
        let url = t.created("page.bin", 5, None).await;
        let r = t.send_all(&url, b"hello", 0, 5, true, true).await;
        assert_eq!(receipt_of(&server, &r)["to"]["user"], "alice");
        // The session's HEAD needs no token; its PATCH does.
        let url = t.created("second.bin", 5, None).await;
        t.auth.pop();
        assert_eq!(t.offset(&url).await, Some(0));
        let r = t.patch(&url, 0, b"world", None, None).await;
        assert_eq!(r.status(), 403);
        assert_eq!(t.offset(&url).await, Some(0));
        std::fs::remove_file(server.home("alice").join("page.bin")).unwrap();
    }
}
