//! `/api/…` with API tokens: list (paged), stat, usage, sha256, and the changes; the scope
//! of a read-only token holds; bad bodies and paths are refused.

use crate::util::http::{BOTH, Client, Proto, token_for};
use crate::util::{TestServer, sha256_hex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_lists_describes_and_changes_the_home() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let home = server.home("alice");
    std::fs::create_dir_all(home.join("docs")).unwrap();
    for i in 0..25 {
        std::fs::write(home.join(format!("docs/f{i:02}")), vec![b'x'; i]).unwrap();
    }
    for proto in BOTH {
        let mut c = Client::connect(&server, proto).await;
        // Paged: 10 at a time, each name once.
        let mut names = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!(
                    "/api/ls?path=/docs&limit=10&cursor={}",
                    ferry::frontend::http::parse::encode_segment(c)
                ),
                None => "/api/ls?path=/docs&limit=10".to_string(),
            };
            let r = c.authed("GET", &path, &token, &[], "").await;
            assert_eq!(r.status(), 200, "{}", r.text());
            let j = r.json();
            let entries = j["entries"].as_array().unwrap();
            assert!(entries.len() <= 10);
            names.extend(
                entries
                    .iter()
                    .map(|e| e["name"].as_str().unwrap().to_string()),
            );
            match j["next"].as_str() {
                Some(n) => cursor = Some(n.to_string()),
                None => break,
            }
        }
        names.sort();
        let expected: Vec<String> = (0..25).map(|i| format!("f{i:02}")).collect();
        assert_eq!(names, expected, "{proto:?}");

        let st = c
            .authed("GET", "/api/stat?path=/docs/f07", &token, &[], "")
            .await;
        assert_eq!(st.json()["size"], 7);
        assert_eq!(st.json()["kind"], "file");
        let h = c
            .authed("GET", "/api/sha256?path=/docs/f03", &token, &[], "")
            .await;
        assert_eq!(h.json()["sha256"], sha256_hex(b"xxx"));
        let u = c.authed("GET", "/api/usage", &token, &[], "").await;
        assert_eq!(u.status(), 200, "{}", u.text());
        assert!(u.json()["disk_total_bytes"].as_u64().is_some());
    }
    let mut c = Client::connect(&server, Proto::H1).await;
    let post = |body: &'static str| body;
    let mk = c
        .authed(
            "POST",
            "/api/mkdir",
            &token,
            &[],
            post(r#"{"path":"/new"}"#),
        )
        .await;
    assert_eq!(mk.status(), 200, "{}", mk.text());
    assert!(home.join("new").is_dir());
    let mv = c
        .authed(
            "POST",
            "/api/rename",
            &token,
            &[],
            r#"{"path":"/docs/f01","to":"/new/g"}"#,
        )
        .await;
    assert_eq!(mv.status(), 200, "{}", mv.text());
    assert!(home.join("new/g").exists() && !home.join("docs/f01").exists());
    // Never onto an existing name unless asked.
    let clash = c
        .authed(
            "POST",
            "/api/rename",
            &token,
            &[],
            r#"{"path":"/docs/f02","to":"/new/g"}"#,
        )
        .await;
    assert_eq!(clash.status(), 409);
    let rm = c
        .authed("POST", "/api/remove", &token, &[], r#"{"path":"/new/g"}"#)
        .await;
    assert_eq!(rm.status(), 200);
    let rmdir = c
        .authed("POST", "/api/rmdir", &token, &[], r#"{"path":"/new"}"#)
        .await;
    assert_eq!(rmdir.status(), 200, "{}", rmdir.text());
    assert!(!home.join("new").exists());
    // Bad input: a clear error, nothing changed.
    for (route, body, status) in [
        ("/api/mkdir", "not json", 400),
        ("/api/mkdir", r#"{"path":"/a","extra":1}"#, 400),
        ("/api/mkdir", r#"{"path":"../up"}"#, 400),
        ("/api/rename", r#"{"path":"/docs/f02"}"#, 400),
        ("/api/remove", r#"{"path":"/nothing"}"#, 404),
    ] {
        let r = c.authed("POST", route, &token, &[], body).await;
        assert_eq!(r.status(), status, "{route} {body}: {}", r.text());
    }
    let huge = format!(r#"{{"path":"{}"}}"#, "a".repeat(70_000));
    let r = c.authed("POST", "/api/mkdir", &token, &[], huge).await;
    assert_eq!(r.status(), 413);
    assert_eq!(
        c.authed("GET", "/api/mkdir", &token, &[], "")
            .await
            .status(),
        405
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_token_reads_but_changes_nothing() {
    let server = TestServer::start().await;
    let reader = token_for(&server, "alice", true).await;
    std::fs::create_dir_all(server.home("alice").join("keep")).unwrap();
    let mut c = Client::connect(&server, Proto::H2).await;
    assert_eq!(
        c.authed("GET", "/api/ls", &reader, &[], "").await.status(),
        200
    );
    for (route, body) in [
        ("/api/mkdir", r#"{"path":"/x"}"#),
        ("/api/rmdir", r#"{"path":"/keep"}"#),
        ("/api/rename", r#"{"path":"/keep","to":"/moved"}"#),
    ] {
        let r = c.authed("POST", route, &reader, &[], body).await;
        assert_eq!(r.status(), 403, "{route}: {}", r.text());
    }
    assert!(server.home("alice").join("keep").is_dir());
    assert_eq!(c.plain("GET", "/api/ls", &[], "").await.status(), 401);
    server.stop().await;
}
