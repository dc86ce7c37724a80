//! Pages in a real headless Chromium (tests/util/browser.rs): what a first-time visitor sees,
//! that owners' text is shown as text, and that a browser's ordinary behaviour costs its
//! address nothing.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use fantoccini::Locator;
use ferry::server::Limits;
use ferry::server::penalty::PenaltyConfig;

use crate::util::browser::Browser;
use crate::util::http::link_for;
use crate::util::{TestServer, test_limits};

fn url(server: &TestServer, path: &str) -> String {
    format!("https://localhost:{}{path}", server.addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_pages_load_and_a_links_note_is_text() {
    let server = TestServer::start().await;
    std::fs::create_dir_all(server.home("alice").join("in")).unwrap();
    let note = "<img src=x onerror=\"document.title='owned'\"> Scans for the audit";
    let (token, _) = link_for(&server, "alice", "/in", |s| s.note = Some(note.into())).await;
    let b = Browser::start(&server).await;
    b.client.goto(&url(&server, "/")).await.unwrap();
    assert_eq!(b.client.title().await.unwrap(), "ferry");
    b.screenshot("front_page").await;
    b.client
        .goto(&url(&server, &format!("/d/{token}")))
        .await
        .unwrap();
    // The note is there as text; no element came of it and its script never ran.
    let shown = b
        .client
        .find(Locator::Css("p.note"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(shown, note);
    assert!(
        b.client
            .find_all(Locator::Css("img"))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(b.client.title().await.unwrap(), "ferry: send files");
    b.screenshot("drop_page").await;
    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_twenty_loads_earn_no_penalty() {
    // The production penalties: any offence would show.
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let b = Browser::start(&server).await;
    for i in 0..20 {
        let path = if i % 2 == 0 { "/" } else { "/no/such/page" };
        b.client.goto(&url(&server, path)).await.unwrap();
    }
    b.close().await;
    // Let the server see the browser's sockets go, preconnects and idle ones included.
    let start = std::time::Instant::now();
    while server.server.not_logged_in() > 0 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.server.penalty_owed(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        None,
        "a browser loading pages was penalised"
    );
    server.stop().await;
}
