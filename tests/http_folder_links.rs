//! Download links for folders over HTTPS: `/l/<token>/` lists the folder (HTML or JSON, a page
//! at a time), `/l/<token>/<path>` downloads a file beneath it with the headers of `/f/`;
//! nothing above the folder can be named; one count for every file in it, which neither
//! parallel ranges nor other addresses can outrun; expiry, revocation and passwords as for a
//! file link.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use ferry::server::Limits;
use ferry::server::penalty::PenaltyConfig;
use ferry::state::links::{LinkKind, LinkStore};

use crate::util::http::{BOTH, Client, Proto, link_for, request, tls_offering};
use crate::util::{TestServer, cheap_hash, sha256_hex, test_limits};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

const HOSTILE: &str = "<img src=x onerror=alert(1)>.txt";

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A folder download link to `alice:/reports` (made with `edit` applied).
async fn folder_link(
    server: &TestServer,
    edit: impl FnOnce(&mut ferry::state::links::LinkSpec),
) -> (String, String) {
    link_for(server, "alice", "/reports", |s| {
        s.kind = LinkKind::DownloadFolder;
        edit(s);
    })
    .await
}

/// `alice:/reports` with a file, a nested folder and a file outside the folder.
fn reports(server: &TestServer) -> (Vec<u8>, Vec<u8>) {
    let home = server.home("alice");
    std::fs::create_dir_all(home.join("reports/q3/raw")).unwrap();
    let a = data(1000, 1);
    let big = data(600_000, 2);
    std::fs::write(home.join("reports/summary.txt"), &a).unwrap();
    std::fs::write(home.join("reports/q3/numbers.bin"), &big).unwrap();
    std::fs::write(home.join("reports/q3/raw/deep.txt"), "deep").unwrap();
    std::fs::write(home.join("secret.txt"), "not for link holders").unwrap();
    (a, big)
}

/// A client connection from `from` (any 127.0.0.0/8 address works on loopback).
async fn connect_from(server: &TestServer, from: Ipv4Addr, proto: Proto) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let name = ferry::tls::server_name("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(tls_offering(server, &[proto.alpn()]))
        .connect(name, tcp)
        .await
        .unwrap();
    Client::over(tls, proto).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_link_lists_its_folder_and_serves_every_file_beneath_it() {
    let server = TestServer::start().await;
    let (a, big) = reports(&server);
    let (token, _) = folder_link(&server, |_| {}).await;
    for proto in BOTH {
        let mut c = Client::connect(&server, proto).await;
        for url in [format!("/l/{token}"), format!("/l/{token}/")] {
            let page = c.plain("GET", &url, &[], "").await;
            assert_eq!(page.status(), 200, "{proto:?} {url}: {}", page.text());
            assert_eq!(
                page.header("content-type"),
                Some("text/html; charset=utf-8")
            );
            let html = page.text();
            assert!(
                html.contains(&format!("href=\"/l/{token}/summary.txt\">summary.txt<")),
                "{html}"
            );
            assert!(
                html.contains(&format!("href=\"/l/{token}/q3/\">q3/<")),
                "{html}"
            );
            assert!(html.contains("title=\"1000 bytes\""), "{html}");
            assert!(!html.contains("secret.txt") && !html.contains("<script"));
            assert!(
                page.header("content-security-policy")
                    .unwrap()
                    .contains("default-src 'none'")
            );
        }
        // The same as JSON, by query or by Accept.
        for (url, accept) in [
            (format!("/l/{token}/?format=json"), None),
            (format!("/l/{token}"), Some("application/json")),
        ] {
            let headers: Vec<(&str, &str)> = accept.map(|a| ("accept", a)).into_iter().collect();
            let r = c.plain("GET", &url, &headers, "").await;
            assert_eq!(r.status(), 200, "{}", r.text());
            assert_eq!(r.header("content-type"), Some("application/json"));
            let j = r.json();
            assert_eq!(j["path"], "/");
            assert_eq!(j["next"], serde_json::Value::Null);
            let entries = j["entries"].as_array().unwrap();
            assert_eq!(entries.len(), 2, "{j}");
            assert_eq!(entries[0]["name"], "q3");
            assert_eq!(entries[0]["kind"], "dir");
            assert_eq!(entries[1]["name"], "summary.txt");
            assert_eq!(entries[1]["size"], 1000);
            assert_eq!(entries[1]["href"], format!("/l/{token}/summary.txt"));
        }
        // A nested folder, with a way back up to the link's root and no further.
        let q3 = c.plain("GET", &format!("/l/{token}/q3/"), &[], "").await;
        assert_eq!(q3.status(), 200, "{}", q3.text());
        let html = q3.text();
        assert!(
            html.contains(&format!("href=\"/l/{token}/\">../<")),
            "{html}"
        );
        assert!(html.contains(&format!("href=\"/l/{token}/q3/numbers.bin\"")));
        assert!(html.contains(&format!("href=\"/l/{token}/q3/raw/\"")));
        let deep = c
            .plain("GET", &format!("/l/{token}/q3/raw/?format=json"), &[], "")
            .await;
        assert_eq!(deep.json()["path"], "/q3/raw");
        assert_eq!(deep.json()["entries"][0]["name"], "deep.txt");

        // Files download with the headers of /f/.
        let got = c
            .plain("GET", &format!("/l/{token}/summary.txt"), &[], "")
            .await;
        assert_eq!(got.status(), 200, "{}", got.text());
        assert_eq!(&got.body[..], &a[..]);
        let got = c
            .plain("GET", &format!("/l/{token}/q3/numbers.bin"), &[], "")
            .await;
        assert_eq!(got.status(), 200);
        assert_eq!(got.body.len(), big.len());
        assert_eq!(&got.body[..], &big[..]);
        assert!(
            got.header("content-disposition")
                .unwrap()
                .starts_with("attachment")
        );
        assert!(
            got.header("content-disposition")
                .unwrap()
                .contains("numbers.bin")
        );
        assert_eq!(got.header("content-type"), Some("application/octet-stream"));
        assert!(
            got.header("content-security-policy")
                .unwrap()
                .starts_with("sandbox")
        );
        assert_eq!(got.header("accept-ranges"), Some("bytes"));
        assert!(got.header("etag").is_some());
        // A resume: the rest from where a cut download stopped.
        let rest = c
            .plain(
                "GET",
                &format!("/l/{token}/q3/numbers.bin"),
                &[("range", "bytes=250000-")],
                "",
            )
            .await;
        assert_eq!(rest.status(), 206, "{}", rest.text());
        assert_eq!(
            rest.header("content-range"),
            Some(format!("bytes 250000-{}/{}", big.len() - 1, big.len()).as_str())
        );
        assert_eq!(&rest.body[..], &big[250_000..]);
        let head = c
            .plain("HEAD", &format!("/l/{token}/q3/numbers.bin"), &[], "")
            .await;
        assert_eq!(head.status(), 200);
        assert_eq!(
            head.header("content-length"),
            Some(big.len().to_string().as_str())
        );
        // A folder named as a file and a file named as a folder both work; a name that does
        // not exist is a 404.
        let r = c.plain("GET", &format!("/l/{token}/q3"), &[], "").await;
        assert_eq!(r.status(), 200);
        assert!(r.text().contains("numbers.bin"));
        let r = c
            .plain("GET", &format!("/l/{token}/nope.txt"), &[], "")
            .await;
        assert_eq!(r.status(), 404, "{}", r.text());
        // Read-only: nothing can be written through it, on either route.
        for (method, url) in [
            ("PUT", format!("/l/{token}/new.txt")),
            ("DELETE", format!("/l/{token}/summary.txt")),
            ("PUT", format!("/d/{token}/new.txt")),
        ] {
            let r = c.plain(method, &url, &[], "x").await;
            assert!(
                matches!(r.status(), 403 | 405),
                "{method} {url}: {}",
                r.status()
            );
        }
        assert!(!server.home("alice").join("reports/new.txt").exists());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_name_is_text_in_the_listing() {
    let server = TestServer::start().await;
    reports(&server);
    std::fs::write(server.home("alice").join("reports").join(HOSTILE), "x").unwrap();
    let (token, _) = folder_link(&server, |s| {
        s.note = Some("<script>alert(2)</script>".into());
    })
    .await;
    let mut c = Client::connect(&server, Proto::H2).await;
    let page = c.plain("GET", &format!("/l/{token}/"), &[], "").await;
    assert_eq!(page.status(), 200);
    let html = page.text();
    assert!(!html.contains("<img"), "{html}");
    assert!(!html.contains("<script"), "{html}");
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;.txt</a>"),
        "{html}"
    );
    assert!(html.contains("&lt;script&gt;alert(2)&lt;/script&gt;"));
    let href = format!("/l/{token}/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.txt");
    assert!(html.contains(&format!("href=\"{href}\"")), "{html}");
    // The link it shows downloads the file; JSON carries the name as it is.
    let got = c.plain("GET", &href, &[], "").await;
    assert_eq!(got.status(), 200, "{}", got.text());
    assert_eq!(&got.body[..], b"x");
    let j = c
        .plain("GET", &format!("/l/{token}/?format=json"), &[], "")
        .await
        .json();
    let names: Vec<&str> = j["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&HOSTILE), "{names:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_link_never_reaches_above_its_folder() {
    let server = TestServer::start().await;
    reports(&server);
    let home = server.home("alice");
    // Planted inside the folder: a link to the file above it and one to the home.
    std::os::unix::fs::symlink(home.join("secret.txt"), home.join("reports/up.txt")).unwrap();
    std::os::unix::fs::symlink(&home, home.join("reports/home")).unwrap();
    std::os::unix::fs::symlink("../secret.txt", home.join("reports/rel.txt")).unwrap();
    let (token, _) = folder_link(&server, |_| {}).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    for path in [
        format!("/l/{token}/..%2fsecret.txt"),
        format!("/l/{token}/%2e%2e/secret.txt"),
        format!("/l/{token}/%2E%2E"),
        format!("/l/{token}/q3/..%2f..%2fsecret.txt"),
        format!("/l/{token}/..%5csecret.txt"),
        format!("/l/{token}/%c0%ae%c0%ae/secret.txt"),
        format!("/l/{token}/up.txt"),
        format!("/l/{token}/rel.txt"),
        format!("/l/{token}/home/secret.txt"),
        format!("/l/{token}/home/"),
        format!("/l/{token}/home/?format=json"),
    ] {
        let r = c.plain("GET", &path, &[], "").await;
        assert!(
            matches!(r.status(), 400 | 403 | 404),
            "{path}: {} {}",
            r.status(),
            r.text()
        );
        assert!(!r.text().contains("not for link holders"), "{path}");
        assert!(!r.text().contains("secret.txt\""), "{path}: {}", r.text());
    }
    // A fresh connection: the malformed paths above may have closed this one's trust.
    let mut c = Client::connect(&server, Proto::H2).await;
    let j = c
        .plain("GET", &format!("/l/{token}/?format=json"), &[], "")
        .await
        .json();
    assert_eq!(j["path"], "/");
    // The cursor is the store's and refused when it is not one.
    let r = c
        .plain("GET", &format!("/l/{token}/?cursor=..%2f..%2fetc"), &[], "")
        .await;
    assert!(matches!(r.status(), 400 | 404), "{}", r.text());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_folder_is_listed_a_page_at_a_time() {
    let server = TestServer::start().await;
    let dir = server.home("alice").join("reports");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..1234 {
        std::fs::write(dir.join(format!("f{i:04}.txt")), "").unwrap();
    }
    let (token, _) = folder_link(&server, |_| {}).await;
    let mut c = Client::connect(&server, Proto::H2).await;
    let mut url = format!("/l/{token}/?format=json");
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let r = c.plain("GET", &url, &[], "").await;
        assert_eq!(r.status(), 200, "{}", r.text());
        let j = r.json();
        let entries = j["entries"].as_array().unwrap();
        assert!(entries.len() <= 500, "{}", entries.len());
        names.extend(
            entries
                .iter()
                .map(|e| e["name"].as_str().unwrap().to_string()),
        );
        pages += 1;
        match j["next_href"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert!(pages >= 3, "{pages}");
    names.sort();
    let want: Vec<String> = (0..1234).map(|i| format!("f{i:04}.txt")).collect();
    assert_eq!(names, want);
    // The HTML page links to the next one.
    let html = c
        .plain("GET", &format!("/l/{token}/"), &[], "")
        .await
        .text();
    assert!(html.contains("Next page</a>"), "no next page");
    assert!(html.matches("<tr>").count() <= 501);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_of_any_file_share_the_count_and_a_used_up_link_refuses() {
    let server = TestServer::start().await;
    let (a, _) = reports(&server);
    let (token, id) = folder_link(&server, |s| s.max_downloads = Some(2)).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    // A listing, a HEAD, a 304 and a 416 count nothing.
    assert_eq!(
        c.plain("GET", &format!("/l/{token}/"), &[], "")
            .await
            .status(),
        200
    );
    let head = c
        .plain("HEAD", &format!("/l/{token}/summary.txt"), &[], "")
        .await;
    let etag = head.header("etag").unwrap().to_string();
    let r = c
        .plain(
            "GET",
            &format!("/l/{token}/summary.txt"),
            &[("if-none-match", &etag)],
            "",
        )
        .await;
    assert_eq!(r.status(), 304);
    let r = c
        .plain(
            "GET",
            &format!("/l/{token}/summary.txt"),
            &[("range", "bytes=5000-")],
            "",
        )
        .await;
    assert_eq!(r.status(), 416);
    let store = ferry::accounts::links::TomlLinks::beside_users(&server.users_file);
    let id: ferry::state::links::LinkId = id.parse().unwrap();
    let used = async |store: &ferry::accounts::links::TomlLinks| {
        store.get(id).await.unwrap().unwrap().used_downloads
    };
    assert_eq!(used(&store).await, 0);
    // Two files, one count.
    let r = c
        .plain("GET", &format!("/l/{token}/summary.txt"), &[], "")
        .await;
    assert_eq!(&r.body[..], &a[..]);
    let r = c
        .plain("GET", &format!("/l/{token}/q3/raw/deep.txt"), &[], "")
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(used(&store).await, 2);
    // Used up: the file link's answer, for files and for the listing.
    for url in [
        format!("/l/{token}/summary.txt"),
        format!("/l/{token}/q3/numbers.bin"),
        format!("/l/{token}/"),
        format!("/l/{token}/?format=json"),
    ] {
        let r = c.plain("GET", &url, &[], "").await;
        assert_eq!(r.status(), 403, "{url}: {}", r.text());
        assert_eq!(r.json()["error"], "link_used_up");
    }
    let r = c
        .plain(
            "GET",
            &format!("/l/{token}/q3/numbers.bin"),
            &[("range", "bytes=10-")],
            "",
        )
        .await;
    assert_eq!(r.status(), 403, "{}", r.text());
    assert_eq!(used(&store).await, 2);
    server.stop().await;
}

/// The attacker of the count: with a link of one download, many connections at once ask for
/// `bytes=1-` (all of a file but its first byte) before anyone downloaded it, then more after;
/// others ask from other addresses. At most one counted answer and one resume's worth may go
/// out, and the count must say what went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_ranges_cannot_outrun_the_count() {
    let server = TestServer::start().await;
    let (_, big) = reports(&server);
    let (token, id) = folder_link(&server, |s| s.max_downloads = Some(1)).await;
    let url = format!("/l/{token}/q3/numbers.bin");
    let mut tasks = Vec::new();
    for i in 0..12u8 {
        let (url, proto) = (url.clone(), if i % 2 == 0 { Proto::H1 } else { Proto::H2 });
        // Half from this address, half from others.
        let from = if i < 6 {
            Ipv4Addr::LOCALHOST
        } else {
            Ipv4Addr::new(127, 0, 0, 2 + i)
        };
        let mut c = connect_from(&server, from, proto).await;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for range in ["bytes=1-", "bytes=1-", "bytes=300000-"] {
                let r = c.plain("GET", &url, &[("range", range)], "").await;
                got.push((r.status(), r.body.len()));
            }
            got
        }));
    }
    let mut served = 0u64;
    let mut answers = 0;
    for t in tasks {
        for (status, len) in t.await.unwrap() {
            match status {
                206 => {
                    served += len as u64;
                    answers += 1;
                }
                // Refused, or too many transfers of the owner at once: nothing sent.
                403 | 429 => {}
                other => panic!("unexpected {other}"),
            }
        }
    }
    let store = ferry::accounts::links::TomlLinks::beside_users(&server.users_file);
    let link = store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(link.used_downloads, 1);
    let size = big.len() as u64;
    assert!(answers >= 1, "the one counted download was refused");
    // Afterwards: no first byte for anyone, nothing at all for an address that never had a
    // counted download, and from the others no more than what is left of a resume's worth.
    let fresh = Ipv4Addr::new(127, 0, 0, 99);
    for from in [Ipv4Addr::LOCALHOST, fresh, Ipv4Addr::new(127, 0, 0, 8)] {
        let mut c = connect_from(&server, from, Proto::H1).await;
        for range in [
            "bytes=0-",
            "bytes=1-",
            "bytes=-1",
            "bytes=100-200",
            "bytes=0-0",
        ] {
            let r = c.plain("GET", &url, &[("range", range)], "").await;
            if r.status() == 206 && from != fresh && !range.starts_with("bytes=0-") {
                served += r.body.len() as u64;
                answers += 1;
                continue;
            }
            assert_eq!(r.status(), 403, "{from} {range}: {}", r.text());
        }
        let r = c
            .plain("GET", &format!("/l/{token}/summary.txt"), &[], "")
            .await;
        assert_eq!(r.status(), 403);
    }
    let link = store.get(id.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(link.used_downloads, 1);
    assert!(
        served <= 2 * size,
        "{served} bytes in {answers} answers went out for one download of {size}"
    );
    server.stop().await;
}

/// A download cut half-way resumes with `Range` from the same address even when it was the
/// link's last download; from another address the same range is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_resumes_from_its_address_only() {
    let server = TestServer::start().await;
    let (_, big) = reports(&server);
    let (token, _) = folder_link(&server, |s| s.max_downloads = Some(1)).await;
    let url = format!("/l/{token}/q3/numbers.bin");
    // Read the first 100 KiB or so, then drop the connection.
    let tls = crate::util::http::tls_to(server.addr, tls_offering(&server, &[b"http/1.1"]))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    let resp = send
        .send_request(request("GET", &url).body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while got.len() < 100_000 {
        let frame = body.frame().await.unwrap().unwrap();
        if let Ok(d) = frame.into_data() {
            got.extend_from_slice(&d);
        }
    }
    drop(body);
    drop(send);
    task.abort();
    assert!(got.len() < big.len());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let range = format!("bytes={}-", got.len());
    let mut other = connect_from(&server, Ipv4Addr::new(127, 0, 0, 7), Proto::H2).await;
    let r = other.plain("GET", &url, &[("range", &range)], "").await;
    assert_eq!(r.status(), 403, "{}", r.text());
    let mut c = Client::connect(&server, Proto::H2).await;
    let r = c.plain("GET", &url, &[("range", &range)], "").await;
    assert_eq!(r.status(), 206, "{}", r.text());
    got.extend_from_slice(&r.body);
    assert_eq!(sha256_hex(&got), sha256_hex(&big));
    // And it was the resume, not another download.
    let r = c.plain("GET", &url, &[], "").await;
    assert_eq!(r.status(), 403);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_folder_links_refuse_at_once() {
    let server = TestServer::start().await;
    reports(&server);
    let (expired, _) = folder_link(&server, |s| s.ttl = Some(Duration::from_secs(1))).await;
    let (revoked, id) = folder_link(&server, |_| {}).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    assert_eq!(
        c.plain("GET", &format!("/l/{revoked}/"), &[], "")
            .await
            .status(),
        200
    );
    // Revoked by another process (the CLI's store on the same file): the next request fails.
    let store = ferry::accounts::links::TomlLinks::beside_users(&server.users_file);
    store.revoke(id.parse().unwrap()).await.unwrap();
    for url in [
        format!("/l/{revoked}/"),
        format!("/l/{revoked}/summary.txt"),
    ] {
        let r = c.plain("GET", &url, &[], "").await;
        assert_eq!(r.status(), 404, "{url}: {}", r.text());
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut c = Client::connect(&server, Proto::H2).await;
    for url in [
        format!("/l/{expired}/"),
        format!("/l/{expired}/summary.txt"),
    ] {
        let r = c.plain("GET", &url, &[], "").await;
        assert_eq!(r.status(), 410, "{url}: {}", r.text());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_links_password_guards_the_listing_and_the_files() {
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let (a, _) = reports(&server);
    let (token, _) = folder_link(&server, |s| s.password = Some(cheap_hash("folder-pw-1"))).await;
    let basic = |pw: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(":{pw}"))
        )
    };
    let mut c = Client::connect(&server, Proto::H2).await;
    for url in [format!("/l/{token}/"), format!("/l/{token}/summary.txt")] {
        let r = c.plain("GET", &url, &[], "").await;
        assert_eq!(r.status(), 401, "{url}: {}", r.text());
        assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
        assert!(!r.text().contains("summary"));
    }
    assert_eq!(server.server.penalty_owed(LOCALHOST), None);
    let ok = basic("folder-pw-1");
    let r = c
        .plain(
            "GET",
            &format!("/l/{token}/"),
            &[("authorization", &ok)],
            "",
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().contains("summary.txt"));
    let r = c
        .plain(
            "GET",
            &format!("/l/{token}/summary.txt"),
            &[("authorization", &ok)],
            "",
        )
        .await;
    assert_eq!(&r.body[..], &a[..]);
    let wrong = c
        .plain(
            "GET",
            &format!("/l/{token}/"),
            &[("authorization", &basic("nope"))],
            "",
        )
        .await;
    assert_eq!(wrong.status(), 401);
    assert!(server.server.penalty_owed(LOCALHOST).is_some());
    server.stop().await;
}

/// The command line makes a folder link of `--download` on a folder and lists its kind; the
/// URL it prints serves the folder's page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_and_lists_folder_links() {
    let server = TestServer::start().await;
    reports(&server);
    let bin = env!("CARGO_BIN_EXE_ferry");
    let root = server.root.clone();
    let users = server.users_file.to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let base = format!("https://{}", server.addr);
    let url = run(&[
        "link",
        "add",
        "alice:/reports",
        "--download",
        "--max-downloads",
        "3",
        "--users",
        &users,
        "--root",
        root.to_str().unwrap(),
        "--public-url",
        &base,
    ]);
    let url = url.trim();
    assert!(
        url.starts_with(&format!("{base}/l/dl_")) && url.ends_with('/'),
        "{url}"
    );
    let file_url = run(&[
        "link",
        "add",
        "alice:/reports/summary.txt",
        "--download",
        "--users",
        &users,
        "--root",
        root.to_str().unwrap(),
        "--public-url",
        &base,
    ]);
    assert!(!file_url.trim().ends_with('/'));
    let listed = run(&["link", "list", "--users", &users]);
    assert!(listed.contains("folder download"), "{listed}");
    assert!(listed.contains("file download"), "{listed}");
    assert!(listed.contains("downloads=0/3"), "{listed}");
    let path = &url[base.len()..];
    let mut c = Client::connect(&server, Proto::H1).await;
    let page = c.plain("GET", path, &[], "").await;
    assert_eq!(page.status(), 200, "{}", page.text());
    assert!(page.text().contains("summary.txt"));
    server.stop().await;
}
