//! Drop links over HTTPS: `/d/<token>` takes uploads into one folder and nothing else; the
//! scope holds in the core; names are never replaced; limits, expiry, passwords and guessing.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ferry::server::Limits;
use ferry::server::penalty::PenaltyConfig;

use crate::util::http::{BOTH, Client, Proto, digest_field, link_for, token_for};
use crate::util::{TestServer, cheap_hash, names_in, sha256_hex, test_limits};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_link_takes_files_into_its_folder_and_nothing_else() {
    let server = TestServer::start().await;
    let drop_dir = server.home("alice").join("drop");
    std::fs::create_dir_all(&drop_dir).unwrap();
    std::fs::write(drop_dir.join("report.pdf"), "the owner's own").unwrap();
    std::fs::write(server.home("alice").join("secret.txt"), "not for senders").unwrap();
    let (token, id) = link_for(&server, "alice", "/drop", |_| {}).await;
    for proto in BOTH {
        let mut c = Client::connect(&server, proto).await;
        let body = format!("sent over {proto:?}").into_bytes();
        let r = c
            .plain(
                "PUT",
                &format!("/d/{token}/report.pdf"),
                &[("content-digest", &digest_field(&body))],
                body.clone(),
            )
            .await;
        assert_eq!(r.status(), 201, "{proto:?}: {}", r.text());
        let j = r.json();
        assert_eq!(j["receipt"]["to"]["link"], id);
        assert_eq!(j["receipt"]["sent_name"], "report.pdf");
        assert_eq!(j["receipt"]["verified"], "sender");
        assert_eq!(j["receipt"]["sha256"], sha256_hex(&body));
        let name = j["receipt"]["name"].as_str().unwrap().to_string();
        assert!(
            name.starts_with("report (") && name.ends_with(").pdf"),
            "{name}"
        );
        assert!(
            !r.text().contains("/drop"),
            "the folder leaked: {}",
            r.text()
        );
        assert_eq!(std::fs::read(drop_dir.join(&name)).unwrap(), body);
        assert!(r.header("location").is_none());
    }
    assert_eq!(
        std::fs::read_to_string(drop_dir.join("report.pdf")).unwrap(),
        "the owner's own"
    );
    // Nothing but uploads: no listing, no download, no reaching out of the folder.
    let mut c = Client::connect(&server, Proto::H1).await;
    for (method, path) in [
        ("GET", format!("/d/{token}/report.pdf")),
        ("DELETE", format!("/d/{token}/report.pdf")),
        ("PUT", format!("/d/{token}/sub/x")),
        ("PUT", format!("/d/{token}/..%2fsecret.txt")),
        ("PUT", format!("/d/{token}/%2e%2e")),
    ] {
        let r = c.plain(method, &path, &[], "x").await;
        assert!(
            matches!(r.status(), 400 | 404 | 405),
            "{method} {path}: {} {}",
            r.status(),
            r.text()
        );
        assert!(!r.text().contains("not for senders"));
    }
    // The link is no API token: /f/ stays closed to it.
    let r = c
        .plain(
            "GET",
            "/f/secret.txt",
            &[("authorization", &format!("Bearer {token}"))],
            "",
        )
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        std::fs::read_to_string(server.home("alice").join("secret.txt")).unwrap(),
        "not for senders"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_note_as_text() {
    let server = TestServer::start().await;
    std::fs::create_dir_all(server.home("alice").join("in")).unwrap();
    let note = "<img src=x onerror=alert(1)> & \"quotes\"";
    let (token, _) = link_for(&server, "alice", "/in", |s| s.note = Some(note.into())).await;
    let mut c = Client::connect(&server, Proto::H2).await;
    let page = c.plain("GET", &format!("/d/{token}"), &[], "").await;
    assert_eq!(page.status(), 200);
    let text = page.text();
    assert!(!text.contains("<img"), "{text}");
    assert!(text.contains("&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quotes&quot;"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_expiry_and_revocation_hold() {
    let server = TestServer::start().await;
    std::fs::create_dir_all(server.home("alice").join("in")).unwrap();
    let (two, _) = link_for(&server, "alice", "/in", |s| s.max_files = Some(2)).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    // A sender's wrong digest stores nothing and uses up nothing.
    let bad = c
        .plain(
            "PUT",
            &format!("/d/{two}/bad"),
            &[("content-digest", &digest_field(b"y"))],
            "x",
        )
        .await;
    assert_eq!(bad.status(), 409, "{}", bad.text());
    for i in 0..2 {
        let r = c.plain("PUT", &format!("/d/{two}/f{i}"), &[], "x").await;
        assert_eq!(r.status(), 201, "{}", r.text());
    }
    let third = c.plain("PUT", &format!("/d/{two}/f2"), &[], "x").await;
    assert_eq!(third.status(), 403, "{}", third.text());
    assert_eq!(third.json()["error"], "link_used_up");
    assert!(!server.home("alice").join("in/f2").exists());

    let (bytes, _) = link_for(&server, "alice", "/in", |s| s.max_bytes = Some(10)).await;
    let big = c
        .plain("PUT", &format!("/d/{bytes}/big"), &[], vec![0u8; 11])
        .await;
    assert_eq!(big.status(), 403, "{}", big.text());

    let (expired, _) = link_for(&server, "alice", "/in", |s| {
        s.ttl = Some(Duration::from_secs(1))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let late = c
        .plain("PUT", &format!("/d/{expired}/late"), &[], "x")
        .await;
    assert_eq!(late.status(), 410, "{}", late.text());

    let (gone, id) = link_for(&server, "alice", "/in", |_| {}).await;
    let store = ferry::accounts::links::TomlLinks::beside_users(&server.users_file);
    ferry::state::links::LinkStore::revoke(&store, id.parse().unwrap())
        .await
        .unwrap();
    let r = c.plain("PUT", &format!("/d/{gone}/x"), &[], "x").await;
    assert_eq!(r.status(), 404);
    // The owner's quota counts link uploads: carol has 1 MiB.
    std::fs::create_dir_all(server.home("carol").join("in")).unwrap();
    let (carol, _) = link_for(&server, "carol", "/in", |_| {}).await;
    for i in 0..2 {
        let r = c
            .plain("PUT", &format!("/d/{carol}/c{i}"), &[], vec![1u8; 500_000])
            .await;
        assert_eq!(r.status(), 201, "{}", r.text());
    }
    let over = c
        .plain("PUT", &format!("/d/{carol}/c2"), &[], vec![1u8; 500_000])
        .await;
    assert_eq!(over.status(), 507, "{}", over.text());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_link_tokens_is_penalised_and_passwords_are_checked() {
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    std::fs::create_dir_all(server.home("alice").join("in")).unwrap();
    let hash = cheap_hash("link-pw-123");
    let (token, _) = link_for(&server, "alice", "/in", |s| s.password = Some(hash)).await;
    let mut c = Client::connect(&server, Proto::H2).await;
    // No password: asked for one, no penalty yet.
    let ask = c.plain("PUT", &format!("/d/{token}/a"), &[], "x").await;
    assert_eq!(ask.status(), 401, "{}", ask.text());
    assert!(ask.header("www-authenticate").unwrap().starts_with("Basic"));
    assert_eq!(server.server.penalty_owed(LOCALHOST), None);
    let basic = |pw: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(":{pw}"))
        )
    };
    let ok = c
        .plain(
            "PUT",
            &format!("/d/{token}/a"),
            &[("authorization", &basic("link-pw-123"))],
            "x",
        )
        .await;
    assert_eq!(ok.status(), 201, "{}", ok.text());
    let wrong = c
        .plain(
            "PUT",
            &format!("/d/{token}/b"),
            &[("authorization", &basic("nope"))],
            "x",
        )
        .await;
    assert_eq!(wrong.status(), 401);
    assert!(server.server.penalty_owed(LOCALHOST).is_some());
    assert!(!server.home("alice").join("in/b").exists());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_link_token_gets_one_answer_and_a_penalty() {
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    std::fs::create_dir_all(server.home("alice").join("in")).unwrap();
    let (token, _) = link_for(&server, "alice", "/in", |_| {}).await;
    let mut wrong_secret = token.clone();
    let last = wrong_secret.pop().unwrap();
    wrong_secret.push(if last == 'A' { 'B' } else { 'A' });
    let mut c = Client::connect(&server, Proto::H1).await;
    let a = c
        .plain("PUT", &format!("/d/{wrong_secret}/x"), &[], "x")
        .await;
    let b = c.plain("PUT", "/d/dl_00000000_garbage/x", &[], "x").await;
    let d = c.plain("GET", "/d/nothing", &[], "").await;
    assert_eq!((a.status(), b.status(), d.status()), (404, 404, 404));
    assert_eq!(a.body, b.body);
    assert_eq!(a.body, d.body);
    assert!(server.server.penalty_owed(LOCALHOST).is_some());
    assert!(names_in(&server.home("alice").join("in")).is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_links_folder_that_leads_out_of_the_home_is_refused() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    std::fs::create_dir_all(&home).unwrap();
    let outside = server.dir().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, home.join("out")).unwrap();
    let (token, _) = link_for(&server, "alice", "/out", |_| {}).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    let r = c.plain("PUT", &format!("/d/{token}/x"), &[], "x").await;
    assert_eq!(r.status(), 503, "{}", r.text());
    assert!(names_in(&outside).is_empty());
    // And a token for the owner's account is unaffected by any of it.
    let t = token_for(&server, "alice", false).await;
    assert_eq!(c.authed("PUT", "/f/mine", &t, &[], "x").await.status(), 201);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_link_serves_its_file_and_counts_downloads() {
    use ferry::state::links::LinkKind;
    let server = TestServer::start().await;
    let home = server.home("alice");
    std::fs::create_dir_all(home.join("out")).unwrap();
    let data = vec![5u8; 300_000];
    std::fs::write(home.join("out/report.pdf"), &data).unwrap();
    std::fs::write(home.join("out/sibling.txt"), "not linked").unwrap();
    let (token, _) = link_for(&server, "alice", "/out/report.pdf", |s| {
        s.kind = LinkKind::Download;
        s.max_downloads = Some(2);
    })
    .await;
    let mut c = Client::connect(&server, Proto::H2).await;
    let got = c.plain("GET", &format!("/l/{token}"), &[], "").await;
    assert_eq!(got.status(), 200, "{}", got.text());
    assert_eq!(&got.body[..], &data[..]);
    assert!(
        got.header("content-disposition")
            .unwrap()
            .contains("report.pdf")
    );
    // A resumed range does not count; a HEAD does not either.
    let part = c
        .plain(
            "GET",
            &format!("/l/{token}"),
            &[("range", "bytes=1000-")],
            "",
        )
        .await;
    assert_eq!(part.status(), 206);
    assert_eq!(
        c.plain("HEAD", &format!("/l/{token}"), &[], "")
            .await
            .status(),
        200
    );
    assert_eq!(
        c.plain("GET", &format!("/l/{token}"), &[], "")
            .await
            .status(),
        200
    );
    let third = c.plain("GET", &format!("/l/{token}"), &[], "").await;
    assert_eq!(third.status(), 403, "{}", third.text());
    assert_eq!(third.json()["error"], "link_used_up");
    // Nothing else through it: no other name can be asked for, no upload.
    assert_eq!(
        c.plain("GET", &format!("/l/{token}/sibling.txt"), &[], "")
            .await
            .status(),
        404
    );
    assert_eq!(
        c.plain("PUT", &format!("/d/{token}/x"), &[], "x")
            .await
            .status(),
        403
    );
    assert!(!home.join("out/x").exists());
    server.stop().await;
}
