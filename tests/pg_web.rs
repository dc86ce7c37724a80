//! Two real servers sharing one PostgreSQL for the web app's sessions and the records of
//! resumable uploads, as nodes behind one balancer: a browser's next connection may land on
//! either. Both nodes keep homes in one shared directory (`DirHomes`), as nodes on one object
//! store do.

use std::sync::Arc;

use base64::Engine as _;
use ferry::server::SharedState;

use crate::home_store::DirHomes;
use crate::util::http::{Client, Proto};
use crate::util::{TestServer, test_limits};

/// A node on the shared homes, its web sessions and upload records in the database at `url`.
async fn node(url: &str, homes: &tempfile::TempDir, first: Option<&TestServer>) -> TestServer {
    let state = SharedState {
        homes: Some(Arc::new(DirHomes(homes.path().to_path_buf()))),
        ..SharedState::default()
    };
    let server = match first {
        None => TestServer::start_with_state(test_limits(), state).await,
        Some(first) => TestServer::start_beside(first, test_limits(), state).await,
    };
    let backend = ferry::pg::connect(&ferry::pg::PgConfig::from_url(url).unwrap())
        .await
        .unwrap();
    server.server.set_web_sessions(backend.web_sessions());
    assert!(server.server.set_upload_sessions(backend.upload_sessions()));
    server
}

/// Logs in; returns (cookie header value, csrf token).
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
    let cookie = set.split(';').next().unwrap().to_string();
    (cookie, r.json()["csrf"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_a_session_and_an_upload_move_between_nodes() {
    let url = crate::util::pg::fresh_db().await;
    let homes = tempfile::tempdir().unwrap();
    let a = node(&url, &homes, None).await;
    let b = node(&url, &homes, Some(&a)).await;
    let mut ca = Client::connect(&a, Proto::H1).await;
    let mut cb = Client::connect(&b, Proto::H2).await;

    // Logged in through A, the cookie works through B, with the same CSRF token.
    let (cookie, csrf) = login(&mut ca, "alice", "alice-pw").await;
    let who = cb
        .plain("GET", "/api/session", &[("cookie", &cookie)], "")
        .await;
    assert_eq!(who.status(), 200, "{}", who.text());
    assert_eq!(who.json()["user"], "alice");
    assert_eq!(who.json()["csrf"], csrf.as_str());

    // A tus upload made through A, its first half sent through A and kept there as a
    // partial (as an idle or stopping node keeps it, giving up its hold), resumed and
    // finished through B.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let half = data.len() / 2;
    let auth = |extra: &[(&'static str, String)]| {
        let mut h = vec![
            ("cookie", cookie.clone()),
            ("x-ferry-csrf", csrf.clone()),
            ("tus-resumable", "1.0.0".to_string()),
        ];
        h.extend_from_slice(extra);
        h
    };
    let meta = format!(
        "filename {}",
        base64::engine::general_purpose::STANDARD.encode("moved.bin")
    );
    let r = send(
        &mut ca,
        "POST",
        "/tus/",
        auth(&[
            ("upload-length", data.len().to_string()),
            ("upload-metadata", meta),
        ]),
        Vec::new(),
    )
    .await;
    assert_eq!(r.status(), 201, "{}", r.text());
    let url_of = r.header("location").unwrap().to_string();
    let chunk = |from: usize| {
        auth(&[
            (
                "content-type",
                "application/offset+octet-stream".to_string(),
            ),
            ("upload-offset", from.to_string()),
        ])
    };
    let r = send(&mut ca, "PATCH", &url_of, chunk(0), data[..half].to_vec()).await;
    assert_eq!(r.status(), 204, "{}", r.text());
    // Live on A (parked there, A holds it): B refuses to take it up meanwhile, so the two
    // nodes never write it at once.
    let r = send(
        &mut cb,
        "PATCH",
        &url_of,
        chunk(half),
        data[half..].to_vec(),
    )
    .await;
    assert_eq!(r.status(), 409, "{}", r.text());
    assert!(r.text().contains("upload_busy"), "{}", r.text());
    ferry::frontend::http::tus::keep_parked(&a.server).await;
    let r = send(&mut cb, "HEAD", &url_of, auth(&[]), Vec::new()).await;
    assert_eq!(r.status(), 200, "{}", r.text());
    assert_eq!(r.header("upload-offset"), Some(half.to_string().as_str()));
    let r = send(
        &mut cb,
        "PATCH",
        &url_of,
        chunk(half),
        data[half..].to_vec(),
    )
    .await;
    assert_eq!(r.status(), 204, "{}", r.text());
    assert_eq!(
        r.header("upload-offset"),
        Some(data.len().to_string().as_str())
    );
    let landed = walkdir(homes.path(), "moved.bin");
    assert_eq!(
        std::fs::read(&landed).unwrap(),
        data,
        "{}",
        landed.display()
    );
    // Finished: both nodes answer for it from the one record.
    let r = send(&mut ca, "HEAD", &url_of, auth(&[]), Vec::new()).await;
    assert_eq!(
        r.header("upload-offset"),
        Some(data.len().to_string().as_str())
    );

    // A logout through B ends the session through A too.
    let r = send(&mut cb, "POST", "/api/logout", auth(&[]), Vec::new()).await;
    assert!((200..300).contains(&r.status()), "{}", r.text());
    let who = ca
        .plain("GET", "/api/session", &[("cookie", &cookie)], "")
        .await;
    assert_eq!(who.status(), 401);
}

async fn send(
    c: &mut Client,
    method: &str,
    path: &str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
) -> crate::util::http::Reply {
    let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    c.plain(method, path, &h, body).await
}

/// The one file named `name` under `dir`.
fn walkdir(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if e.file_name() == name {
                return p;
            }
        }
    }
    panic!("{name} not found under {}", dir.display());
}

/// A PATCH through A and one through B race on one upload at one offset: exactly one is
/// taken (204), the other refused (409 upload_busy: the node where the upload is live holds
/// it); the rest, sent through the loser's node once the winner kept its part, makes the
/// file whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_racing_patches_through_two_nodes_have_one_winner() {
    let url = crate::util::pg::fresh_db().await;
    let homes = tempfile::tempdir().unwrap();
    let a = node(&url, &homes, None).await;
    let b = node(&url, &homes, Some(&a)).await;
    let mut ca = Client::connect(&a, Proto::H1).await;
    let (cookie, csrf) = login(&mut ca, "alice", "alice-pw").await;
    let auth = |extra: &[(&'static str, String)]| {
        let mut h = vec![
            ("cookie", cookie.clone()),
            ("x-ferry-csrf", csrf.clone()),
            ("tus-resumable", "1.0.0".to_string()),
        ];
        h.extend_from_slice(extra);
        h
    };
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    for round in 0..5 {
        let name = format!("race-{round}.bin");
        let meta = format!(
            "filename {}",
            base64::engine::general_purpose::STANDARD.encode(&name)
        );
        let r = send(
            &mut ca,
            "POST",
            "/tus/",
            auth(&[
                ("upload-length", data.len().to_string()),
                ("upload-metadata", meta),
            ]),
            Vec::new(),
        )
        .await;
        assert_eq!(r.status(), 201, "{}", r.text());
        let at = r.header("location").unwrap().to_string();
        let patch = auth(&[
            (
                "content-type",
                "application/offset+octet-stream".to_string(),
            ),
            ("upload-offset", "0".to_string()),
        ]);
        let mut c1 = Client::connect(&a, Proto::H1).await;
        let mut c2 = Client::connect(&b, Proto::H1).await;
        let half = data.len() / 2;
        let (r1, r2) = tokio::join!(
            send(&mut c1, "PATCH", &at, patch.clone(), data[..half].to_vec()),
            send(&mut c2, "PATCH", &at, patch.clone(), data[..half].to_vec()),
        );
        let mut got = [r1.status(), r2.status()];
        got.sort();
        assert_eq!(got, [204, 409], "{} / {}", r1.text(), r2.text());
        let lost = if r1.status() == 409 { &r1 } else { &r2 };
        assert!(lost.text().contains("upload_busy"), "{}", lost.text());
        // The winner keeps what it took; the rest goes through the other node.
        let (winner, mut other) = if r1.status() == 204 {
            (&a, c2)
        } else {
            (&b, c1)
        };
        ferry::frontend::http::tus::keep_parked(&winner.server).await;
        let rest = auth(&[
            (
                "content-type",
                "application/offset+octet-stream".to_string(),
            ),
            ("upload-offset", half.to_string()),
        ]);
        let r = send(&mut other, "PATCH", &at, rest, data[half..].to_vec()).await;
        assert_eq!(r.status(), 204, "{}", r.text());
        let landed = walkdir(homes.path(), &name);
        assert_eq!(std::fs::read(&landed).unwrap(), data);
    }
}

/// A node renews its hold on an upload live on it: another node's PATCH gets 409
/// `upload_busy` for as long as the upload stays live there, well past one hold lease (a
/// node that died stops renewing, and its hold lapses within one). Once kept, the other node
/// takes it up and the file is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_a_node_renews_its_hold_on_an_upload_live_on_it() {
    let url = crate::util::pg::fresh_db().await;
    let homes = tempfile::tempdir().unwrap();
    let a = node(&url, &homes, None).await;
    let b = node(&url, &homes, Some(&a)).await;
    let lease = std::time::Duration::from_secs(3);
    ferry::frontend::http::tus::set_hold_lease(&a.server, lease);
    ferry::frontend::http::tus::set_hold_lease(&b.server, lease);
    let mut ca = Client::connect(&a, Proto::H1).await;
    let (cookie, csrf) = login(&mut ca, "alice", "alice-pw").await;
    let auth = |extra: &[(&'static str, String)]| {
        let mut h = vec![
            ("cookie", cookie.clone()),
            ("x-ferry-csrf", csrf.clone()),
            ("tus-resumable", "1.0.0".to_string()),
        ];
        h.extend_from_slice(extra);
        h
    };
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 239) as u8).collect();
    let half = data.len() / 2;
    let meta = format!(
        "filename {}",
        base64::engine::general_purpose::STANDARD.encode("held.bin")
    );
    let r = send(
        &mut ca,
        "POST",
        "/tus/",
        auth(&[
            ("upload-length", data.len().to_string()),
            ("upload-metadata", meta),
        ]),
        Vec::new(),
    )
    .await;
    assert_eq!(r.status(), 201, "{}", r.text());
    let at = r.header("location").unwrap().to_string();
    let patch = |offset: usize| {
        auth(&[
            (
                "content-type",
                "application/offset+octet-stream".to_string(),
            ),
            ("upload-offset", offset.to_string()),
        ])
    };
    let r = send(&mut ca, "PATCH", &at, patch(0), data[..half].to_vec()).await;
    assert_eq!(r.status(), 204, "{}", r.text());
    // More than two leases later, A still holds the upload parked on it.
    tokio::time::sleep(lease * 2 + lease / 2).await;
    let mut cb = Client::connect(&b, Proto::H1).await;
    let r = send(&mut cb, "PATCH", &at, patch(half), data[half..].to_vec()).await;
    assert_eq!(r.status(), 409, "{}", r.text());
    assert!(r.text().contains("upload_busy"), "{}", r.text());
    // Kept as a partial, A gives its hold up: B takes the upload up and finishes it.
    ferry::frontend::http::tus::keep_parked(&a.server).await;
    let r = send(&mut cb, "PATCH", &at, patch(half), data[half..].to_vec()).await;
    assert_eq!(r.status(), 204, "{}", r.text());
    assert_eq!(
        std::fs::read(walkdir(homes.path(), "held.bin")).unwrap(),
        data
    );
}
