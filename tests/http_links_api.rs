//! `/api/links`: an account holder makes, lists and revokes their own links over HTTP; the
//! link works at once, only its owner sees or revokes it, a read-only account cannot make an
//! upload link, and bad requests are refused without making anything.

use crate::util::http::{BOTH, Client, Proto, token_for};
use crate::util::{TestServer, sha256_hex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_makes_a_drop_link_it_works_at_once_and_revoking_ends_it() {
    let server = TestServer::start().await;
    std::fs::create_dir_all(server.home("alice").join("inbox")).unwrap();
    let alice = token_for(&server, "alice", false).await;
    let bob = token_for(&server, "bob", false).await;
    for proto in BOTH {
        made_used_and_revoked(&server, proto, &alice, &bob).await;
    }
    server.stop().await;
}

async fn made_used_and_revoked(server: &TestServer, proto: Proto, alice: &str, bob: &str) {
    let (alice, bob) = (alice.to_string(), bob.to_string());
    let mut c = Client::connect(server, proto).await;
    let body = r#"{"path":"/inbox","kind":"upload","max_files":2,"note":"Week 3"}"#;
    let r = c
        .authed(
            "POST",
            "/api/links",
            &alice,
            &[("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text());
    let made = r.json();
    let url = made["path_in_url"].as_str().unwrap().to_string();
    assert!(url.starts_with("/d/dl_"), "{url}");
    assert_eq!(made["max_files"], 2);
    assert_eq!(made["note"], "Week 3");
    let id = made["id"].as_str().unwrap().to_string();

    // It takes a file at once.
    let name = format!("{proto:?}.txt");
    let put = c.plain("PUT", &format!("{url}/{name}"), &[], "hello").await;
    assert_eq!(put.status(), 201, "{}", put.text());
    assert_eq!(
        std::fs::read(server.home("alice").join("inbox").join(&name)).unwrap(),
        b"hello"
    );
    // The owner sees it, with its use; the token is never listed.
    let list = c.authed("GET", "/api/links", &alice, &[], "").await.json();
    let links = list["links"].as_array().unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!(links[0]["used_files"], 1);
    assert!(
        !list.to_string().contains("dl_"),
        "a token was listed: {list}"
    );
    // Someone else neither sees nor revokes it.
    let theirs = c.authed("GET", "/api/links", &bob, &[], "").await.json();
    assert_eq!(theirs["links"].as_array().unwrap().len(), 0);
    let del = c
        .authed("DELETE", &format!("/api/links?id={id}"), &bob, &[], "")
        .await;
    assert_eq!(del.status(), 404, "{}", del.text());
    // Its owner does, and it stops at once.
    let del = c
        .authed("DELETE", &format!("/api/links?id={id}"), &alice, &[], "")
        .await;
    assert_eq!(del.status(), 200, "{}", del.text());
    let put = c.plain("PUT", &format!("{url}/b.txt"), &[], "x").await;
    assert_eq!(put.status(), 404, "{}", put.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_link_requests_make_nothing() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    std::fs::create_dir_all(home.join("inbox")).unwrap();
    std::fs::write(home.join("report.pdf"), b"pdf").unwrap();
    let alice = token_for(&server, "alice", false).await;
    let reader = token_for(&server, "alice", true).await;
    let mut c = Client::connect(&server, Proto::H1).await;
    let json = [("content-type", "application/json")];
    for (body, status) in [
        (r#"{"path":"/nope","kind":"upload"}"#, 404),
        (r#"{"path":"/report.pdf","kind":"upload"}"#, 409),
        (r#"{"path":"/inbox","kind":"sideways"}"#, 400),
        (r#"{"path":"/inbox","kind":"upload","max_files":0}"#, 400),
        (
            r#"{"path":"/inbox","kind":"upload","max_downloads":3}"#,
            400,
        ),
        (r#"{"path":"/inbox","kind":"upload","expires_in":0}"#, 400),
        (
            r#"{"path":"/inbox","kind":"upload","expires_in":999999999999}"#,
            400,
        ),
        (r#"{"path":"/../etc","kind":"upload"}"#, 400),
        (r#"{"path":"/inbox","kind":"upload","owner":"bob"}"#, 400),
    ] {
        let r = c.authed("POST", "/api/links", &alice, &json, body).await;
        assert_eq!(r.status(), status, "{body}: {}", r.text());
    }
    let note = format!(
        r#"{{"path":"/inbox","kind":"upload","note":"{}"}}"#,
        "n".repeat(201)
    );
    let r = c.authed("POST", "/api/links", &alice, &json, note).await;
    assert_eq!(r.status(), 400, "{}", r.text());
    // A read-only token may not let strangers write in the owner's name.
    let r = c
        .authed(
            "POST",
            "/api/links",
            &reader,
            &json,
            r#"{"path":"/inbox","kind":"upload"}"#,
        )
        .await;
    assert_eq!(r.status(), 403, "{}", r.text());
    let list = c.authed("GET", "/api/links", &alice, &[], "").await.json();
    assert_eq!(list["links"].as_array().unwrap().len(), 0, "{list}");
    // A download link with a password: the file comes only with it.
    let r = c
        .authed(
            "POST",
            "/api/links",
            &alice,
            &json,
            r#"{"path":"/report.pdf","kind":"download","max_downloads":1,"password":"open sesame"}"#,
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text());
    let url = r.json()["path_in_url"].as_str().unwrap().to_string();
    assert!(url.starts_with("/l/"), "{url}");
    let no = c.plain("GET", &url, &[], "").await;
    assert_eq!(no.status(), 401);
    let yes = c
        .plain(
            "GET",
            &url,
            &[("authorization", "Basic Om9wZW4gc2VzYW1l")],
            "",
        )
        .await;
    assert_eq!(yes.status(), 200, "{}", yes.text());
    assert_eq!(sha256_hex(yes.text().as_bytes()), sha256_hex(b"pdf"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_pile_up_links_without_end() {
    let server = TestServer::start().await;
    std::fs::create_dir_all(server.home("alice").join("inbox")).unwrap();
    let alice = token_for(&server, "alice", false).await;
    let mut c = Client::connect(&server, Proto::H2).await;
    let json = [("content-type", "application/json")];
    let body = r#"{"path":"/inbox","kind":"upload"}"#;
    for i in 0..ferry::frontend::http::links_api::MAX_LINKS_PER_USER {
        let r = c.authed("POST", "/api/links", &alice, &json, body).await;
        assert_eq!(r.status(), 201, "link {i}: {}", r.text());
    }
    let r = c.authed("POST", "/api/links", &alice, &json, body).await;
    assert_eq!(r.status(), 409, "{}", r.text());
    assert_eq!(r.json()["error"], "too_many_links");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_links_are_given_out_beneath_their_token_and_keep_their_password_to_themselves() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    std::fs::create_dir_all(home.join("out")).unwrap();
    std::fs::write(home.join("out/q3 report.pdf"), b"numbers").unwrap();
    let alice = token_for(&server, "alice", false).await;
    let mut c = Client::connect(&server, Proto::H2).await;
    let json = [("content-type", "application/json")];
    // A folder: a folder link, its address ends in `/`.
    let r = c
        .authed(
            "POST",
            "/api/links",
            &alice,
            &json,
            r#"{"path":"/out","kind":"download"}"#,
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text());
    assert_eq!(r.json()["kind"], "download-folder");
    let folder = r.json()["path_in_url"].as_str().unwrap().to_string();
    assert!(
        folder.starts_with("/l/dl_") && folder.ends_with('/'),
        "{folder}"
    );
    let page = c
        .plain("GET", &format!("{folder}?format=json"), &[], "")
        .await;
    assert_eq!(page.status(), 200, "{}", page.text());
    // A file with a password: its address ends in the file's name, which serves the file.
    let r = c
        .authed(
            "POST",
            "/api/links",
            &alice,
            &json,
            r#"{"path":"/out/q3 report.pdf","kind":"download","password":"pw"}"#,
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let file = r.json()["path_in_url"].as_str().unwrap().to_string();
    assert!(file.ends_with("/q3%20report.pdf"), "{file}");
    let basic = ("authorization", "Basic OnB3");
    let got = c.plain("GET", &file, &[basic], "").await;
    assert_eq!(got.status(), 200, "{}", got.text());
    assert_eq!(got.text(), "numbers");
    // Its challenge names its own realm, so a browser keeps the password for it alone.
    let ask = c.plain("GET", &file, &[], "").await;
    assert_eq!(ask.status(), 401);
    assert_eq!(
        ask.header("www-authenticate").unwrap(),
        format!("Basic realm=\"ferry link {id}\", charset=\"UTF-8\"")
    );
    // A browser opening the bare address is sent beneath it first; curl is answered there.
    let bare = file.rsplit_once('/').unwrap().0.to_string();
    let nav = c
        .plain("GET", &bare, &[("sec-fetch-mode", "navigate")], "")
        .await;
    assert_eq!(nav.status(), 308);
    assert_eq!(nav.header("location").unwrap(), file);
    let curl = c.plain("GET", &bare, &[basic], "").await;
    assert_eq!(curl.status(), 200, "{}", curl.text());
    // Any other name beneath a file link is nothing.
    let other = c
        .plain("GET", &format!("{bare}/other.pdf"), &[basic], "")
        .await;
    assert_eq!(other.status(), 404);
    server.stop().await;
}
