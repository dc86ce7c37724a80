//! The web app's login: a session cookie with the `__Host-` prefix and strict flags, CSRF
//! protection on every change, byte-identical failures with penalties, logout, and a changed
//! password or deleted user ending the session.

use std::net::{IpAddr, Ipv4Addr};

use ferry::server::Limits;
use ferry::server::penalty::PenaltyConfig;

use crate::util::http::{BOTH, Client, Proto};
use crate::util::{TestServer, cheap_hash, test_limits};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Logs in and returns (cookie header value, csrf token).
async fn login(c: &mut Client, user: &str, password: &str) -> (String, String) {
    let body = serde_json::json!({ "user": user, "password": password }).to_string();
    let r = c
        .plain(
            "POST",
            "/api/login",
            &[("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    let set = r.header("set-cookie").unwrap().to_string();
    for flag in [
        "__Host-ferry=",
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
    ] {
        assert!(set.contains(flag), "{flag} missing: {set}");
    }
    assert!(!set.to_lowercase().contains("domain="), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    (cookie, r.json()["csrf"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_works_with_its_csrf_token_and_only_with_it() {
    let server = TestServer::start().await;
    for proto in BOTH {
        let mut c = Client::connect(&server, proto).await;
        let (cookie, csrf) = login(&mut c, "alice", "alice-pw").await;
        let who = c
            .plain("GET", "/api/session", &[("cookie", &cookie)], "")
            .await;
        assert_eq!(who.json()["user"], "alice");
        assert_eq!(who.json()["csrf"], csrf.as_str());
        // Reads need only the cookie.
        let ls = c.plain("GET", "/api/ls", &[("cookie", &cookie)], "").await;
        assert_eq!(ls.status(), 200, "{}", ls.text());
        // A change with the cookie alone, or a wrong token, or from another site: refused.
        let body = format!(r#"{{"path":"/{proto:?}"}}"#);
        for headers in [
            vec![("cookie", cookie.as_str())],
            vec![("cookie", cookie.as_str()), ("x-ferry-csrf", "0000")],
            vec![
                ("cookie", cookie.as_str()),
                ("x-ferry-csrf", csrf.as_str()),
                ("sec-fetch-site", "cross-site"),
            ],
            vec![
                ("cookie", cookie.as_str()),
                ("x-ferry-csrf", csrf.as_str()),
                ("origin", "https://evil.example"),
            ],
        ] {
            let r = c.plain("POST", "/api/mkdir", &headers, body.clone()).await;
            assert_eq!(r.status(), 403, "{headers:?}: {}", r.text());
            assert_eq!(r.json()["error"], "csrf");
        }
        let put = c
            .plain(
                "PUT",
                &format!("/f/{proto:?}.txt"),
                &[("cookie", &cookie)],
                "x",
            )
            .await;
        assert_eq!(put.status(), 403, "a PUT without the token: {}", put.text());
        assert!(!server.home("alice").join(format!("{proto:?}")).exists());
        // With it, from the same origin: done.
        let ok = c
            .plain(
                "POST",
                "/api/mkdir",
                &[
                    ("cookie", &cookie),
                    ("x-ferry-csrf", &csrf),
                    ("sec-fetch-site", "same-origin"),
                    ("origin", "https://localhost"),
                ],
                body.clone(),
            )
            .await;
        assert_eq!(ok.status(), 200, "{}", ok.text());
        let put = c
            .plain(
                "PUT",
                &format!("/f/{proto:?}.txt"),
                &[("cookie", &cookie), ("x-ferry-csrf", &csrf)],
                "x",
            )
            .await;
        assert_eq!(put.status(), 201, "{}", put.text());
        // Logout ends it.
        let out = c
            .plain(
                "POST",
                "/api/logout",
                &[("cookie", &cookie), ("x-ferry-csrf", &csrf)],
                "",
            )
            .await;
        assert_eq!(out.status(), 200);
        assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
        let after = c.plain("GET", "/api/ls", &[("cookie", &cookie)], "").await;
        assert_eq!(after.status(), 401);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_answer_the_same_bytes_and_are_penalised() {
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let mut c = Client::connect(&server, Proto::H2).await;
    let try_login =
        |user: &str, pw: &str| serde_json::json!({ "user": user, "password": pw }).to_string();
    let wrong = c
        .plain("POST", "/api/login", &[], try_login("alice", "nope"))
        .await;
    let unknown = c
        .plain("POST", "/api/login", &[], try_login("nobody", "nope"))
        .await;
    assert_eq!((wrong.status(), unknown.status()), (401, 401));
    assert_eq!(wrong.body, unknown.body);
    assert!(wrong.header("set-cookie").is_none());
    assert!(server.server.penalty_owed(LOCALHOST).is_some());
    // Login CSRF: another site cannot log the browser in.
    let cross = c
        .plain(
            "POST",
            "/api/login",
            &[("sec-fetch-site", "cross-site")],
            try_login("alice", "alice-pw"),
        )
        .await;
    assert_eq!(cross.status(), 403);
    // Bad bodies.
    assert_eq!(c.plain("POST", "/api/login", &[], "{}").await.status(), 400);
    assert_eq!(c.plain("GET", "/api/login", &[], "").await.status(), 405);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_password_or_a_deleted_user_ends_the_session() {
    let server = TestServer::start().await;
    let mut c = Client::connect(&server, Proto::H1).await;
    let (cookie, _) = login(&mut c, "bob", "bob-pw").await;
    assert_eq!(
        c.plain("GET", "/api/ls", &[("cookie", &cookie)], "")
            .await
            .status(),
        200
    );
    ferry::users::set_password(&server.users_file, "bob", &cheap_hash("new-bob-pw")).unwrap();
    server
        .server
        .replace_users(ferry::users::UserDb::load(&server.users_file).unwrap());
    assert_eq!(
        c.plain("GET", "/api/ls", &[("cookie", &cookie)], "")
            .await
            .status(),
        401
    );
    let (cookie, _) = login(&mut c, "bob", "new-bob-pw").await;
    ferry::users::remove_user(&server.users_file, "bob").unwrap();
    server
        .server
        .replace_users(ferry::users::UserDb::load(&server.users_file).unwrap());
    assert_eq!(
        c.plain("GET", "/api/ls", &[("cookie", &cookie)], "")
            .await
            .status(),
        401
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_and_tus_need_the_csrf_token_with_a_cookie() {
    let server = TestServer::start().await;
    std::fs::create_dir_all(server.home("alice").join("inbox")).unwrap();
    let mut c = Client::connect(&server, Proto::H2).await;
    let (cookie, csrf) = login(&mut c, "alice", "alice-pw").await;
    let link = r#"{"path":"/inbox","kind":"upload"}"#;
    let tus = [
        ("cookie", cookie.as_str()),
        ("tus-resumable", "1.0.0"),
        ("upload-length", "3"),
        ("upload-metadata", "filename L3gudHh0"),
    ];
    // A cross-site page riding the cookie: neither a link nor an upload is made.
    let r = c
        .plain("POST", "/api/links", &[("cookie", &cookie)], link)
        .await;
    assert_eq!(r.status(), 403, "{}", r.text());
    let r = c.plain("POST", "/tus/", &tus, "").await;
    assert_eq!(r.status(), 403, "{}", r.text());
    let mut with = tus.to_vec();
    with.push(("x-ferry-csrf", &csrf));
    with.push(("sec-fetch-site", "cross-site"));
    let r = c.plain("POST", "/tus/", &with, "").await;
    assert_eq!(r.status(), 403, "{}", r.text());
    let list = c
        .plain("GET", "/api/links", &[("cookie", &cookie)], "")
        .await;
    assert_eq!(list.json()["links"].as_array().unwrap().len(), 0);
    // With the token, from the page itself: both work, and so does revoking.
    let r = c
        .plain(
            "POST",
            "/api/links",
            &[("cookie", &cookie), ("x-ferry-csrf", &csrf)],
            link,
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let del = format!("/api/links?id={id}");
    let r = c.plain("DELETE", &del, &[("cookie", &cookie)], "").await;
    assert_eq!(r.status(), 403, "a revoke without the token: {}", r.text());
    let r = c
        .plain(
            "DELETE",
            &del,
            &[("cookie", &cookie), ("x-ferry-csrf", &csrf)],
            "",
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text());
    with.pop();
    let r = c.plain("POST", "/tus/", &with, "").await;
    assert_eq!(r.status(), 201, "{}", r.text());
    server.stop().await;
}
