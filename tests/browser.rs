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
    // The web app asks whether this browser is logged in, and shows the login form.
    b.wait_until(
        "return document.querySelector('form#login') !== null",
        Duration::from_secs(20),
        "front_page",
        "the login form",
    )
    .await;
    assert_eq!(b.client.title().await.unwrap(), "ferry: log in");
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

/// `(path, content)` files with names a person might use, in a temp dir.
fn sample_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let specs: &[(&str, usize)] = &[
        ("report 2026.pdf", 3 * 1024 * 1024 + 17),
        ("empty.txt", 0),
        ("naïve café ✓.txt", 1000),
        ("photo.jpg", 700 * 1024),
        ("#hash & 100%.bin", 4096),
    ];
    specs
        .iter()
        .enumerate()
        .map(|(i, (name, len))| {
            let p = dir.join(name);
            let data = crate::util::random_file(&p, *len, 40 + i as u64);
            (p, data)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_login_and_upload_many_verified() {
    let server = TestServer::start().await;
    let b = Browser::start(&server).await;
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    b.screenshot("app_empty").await;
    let src = tempfile::tempdir().unwrap();
    let files = sample_files(src.path());
    let paths: Vec<_> = files.iter().map(|(p, _)| p.clone()).collect();
    b.pick("#pick-files", &paths).await;
    b.wait_until(
        "const r = [...document.querySelectorAll('li.transfer')]; \
         return r.length === 5 && r.every(x => x.dataset.state === 'done');",
        Duration::from_secs(60),
        "upload_many",
        "five uploads to finish",
    )
    .await;
    // Each landed whole, and the digest the page computed is the file's.
    for (p, data) in &files {
        let name = p.file_name().unwrap().to_str().unwrap();
        let stored = std::fs::read(server.home_file("alice", name))
            .unwrap_or_else(|e| panic!("{name} is not in the home: {e}"));
        assert!(stored == *data, "{name} differs");
        let shown = b
            .eval(&format!(
                "return [...document.querySelectorAll('li.transfer')]\
                 .find(x => x.dataset.path === {:?}).dataset.sha256",
                format!("/{name}")
            ))
            .await;
        assert_eq!(shown, crate::util::sha256_hex(data), "{name}");
    }
    // The listing shows them, as text.
    b.wait_until(
        "return document.querySelectorAll('table.files tbody tr[data-kind=file]').length === 5",
        Duration::from_secs(10),
        "upload_many_list",
        "the listing to show the five files",
    )
    .await;
    b.screenshot("app_uploaded").await;
    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_drop_link_page_sends_files_and_gives_receipts() {
    let server = TestServer::start().await;
    let inbox = server.home("alice").join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(inbox.join("scan.pdf"), b"already here").unwrap();
    let (token, _) = link_for(&server, "alice", "/inbox", |s| {
        s.note = Some("Homework for week 3".into());
        s.max_files = Some(5);
        s.password = Some(crate::util::cheap_hash("s3cret"));
    })
    .await;
    let b = Browser::start(&server).await;
    b.client
        .goto(&url(&server, &format!("/d/{token}")))
        .await
        .unwrap();
    b.wait_until(
        "return document.querySelector('#dropzone') !== null",
        Duration::from_secs(20),
        "drop_link",
        "the drop zone",
    )
    .await;
    let src = tempfile::tempdir().unwrap();
    let scan = crate::util::random_file(&src.path().join("scan.pdf"), 200_000, 7);
    let notes = crate::util::random_file(&src.path().join("notes.txt"), 5_000, 8);
    // A wrong password: the page says so and nothing lands.
    b.client
        .find(Locator::Css("#link-password"))
        .await
        .unwrap()
        .send_keys("wrong")
        .await
        .unwrap();
    b.pick("#pick-files", &[src.path().join("notes.txt")]).await;
    b.wait_until(
        "return document.querySelector('#pw-msg').textContent.includes('wrong')",
        Duration::from_secs(30),
        "drop_link_wrong_password",
        "the wrong password to be reported",
    )
    .await;
    assert_eq!(crate::util::names_in(&inbox), vec!["scan.pdf"]);
    b.client
        .find(Locator::Css("#link-password"))
        .await
        .unwrap()
        .send_keys("s3cret")
        .await
        .unwrap();
    b.pick(
        "#pick-files",
        &[src.path().join("scan.pdf"), src.path().join("notes.txt")],
    )
    .await;
    b.wait_until(
        "const r = [...document.querySelectorAll('li.transfer')].slice(1); \
         return r.length === 2 && r.every(x => x.dataset.state === 'done');",
        Duration::from_secs(60),
        "drop_link_send",
        "two uploads through the link",
    )
    .await;
    // The taken name got a new one, and the page says which.
    assert_eq!(
        std::fs::read(inbox.join("scan (1).pdf")).unwrap(),
        scan,
        "scan (1).pdf"
    );
    assert_eq!(std::fs::read(inbox.join("notes.txt")).unwrap(), notes);
    assert_eq!(
        std::fs::read(inbox.join("scan.pdf")).unwrap(),
        b"already here"
    );
    let stored = b
        .eval(
            "return [...document.querySelectorAll('li.transfer')].map(x => x.dataset.stored || '')",
        )
        .await;
    assert_eq!(stored, serde_json::json!(["", "scan (1).pdf", "notes.txt"]));
    assert!(b.client.find(Locator::Css("#dropzone")).await.is_ok());
    b.screenshot("drop_link_sent").await;
    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_a_digest_that_does_not_match_stores_nothing_and_says_so() {
    let server = TestServer::start().await;
    let b = Browser::start(&server).await;
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    // What a corruption between the hashing and the wire looks like to the server: the digest
    // sent is not that of the bytes sent.
    b.eval(
        "const set = XMLHttpRequest.prototype.setRequestHeader; \
         XMLHttpRequest.prototype.setRequestHeader = function (k, v) { \
           if (k === 'Content-Digest') v = 'sha-256=:' + btoa('x'.repeat(32)) + ':'; \
           return set.call(this, k, v); }; return true;",
    )
    .await;
    let src = tempfile::tempdir().unwrap();
    crate::util::random_file(&src.path().join("ledger.csv"), 300_000, 9);
    b.pick("#pick-files", &[src.path().join("ledger.csv")])
        .await;
    b.wait_until(
        "const r = document.querySelector('li.transfer'); return r !== null && r.dataset.state === 'failed'",
        Duration::from_secs(30),
        "mismatch",
        "the upload to fail",
    )
    .await;
    let text = b
        .eval("return document.querySelector('li.transfer .t-status').textContent")
        .await;
    assert!(
        text.as_str().unwrap().contains("does not match"),
        "the page says: {text}"
    );
    assert!(
        crate::util::names_in(&server.home("alice")).is_empty(),
        "something was stored"
    );
    b.screenshot("digest_mismatch").await;
    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_hostile_names_are_text_and_files_can_be_managed() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    let hostile = "<img src=x onerror=\"document.title='owned'\">.txt";
    std::fs::create_dir_all(home.join("docs")).unwrap();
    std::fs::write(home.join(hostile), b"boo").unwrap();
    let data = crate::util::random_file(&home.join("docs/plan.txt"), 100_000, 11);
    let b = Browser::start(&server).await;
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    let names = b
        .eval(
            "return [...document.querySelectorAll('table.files td.name')].map(x => x.textContent)",
        )
        .await;
    assert_eq!(names, serde_json::json!(["docs/", hostile]));
    assert!(
        b.client
            .find_all(Locator::Css("img"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!b.client.title().await.unwrap().contains("owned"));
    b.screenshot("hostile_name").await;

    // Into docs; its SHA-256; a download the browser saves matches.
    b.client
        .find(Locator::Css("a.dir"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_until(
        "return document.querySelector('tr[data-name=\"plan.txt\"]') !== null",
        Duration::from_secs(10),
        "into_docs",
        "the docs folder",
    )
    .await;
    b.client
        .find(Locator::Css("tr[data-name=\"plan.txt\"] button.sha"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_until(
        "return document.querySelector('tr.detail code.digest') !== null",
        Duration::from_secs(10),
        "sha",
        "the SHA-256",
    )
    .await;
    let shown = b
        .eval("return document.querySelector('tr.detail code.digest').textContent")
        .await;
    assert_eq!(shown, crate::util::sha256_hex(&data));
    b.client
        .find(Locator::Css("tr[data-name=\"plan.txt\"] a.file"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let saved = b.downloads.path().join("plan.txt");
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read(&saved).map(|d| d.len()).unwrap_or(0) != data.len() {
        assert!(
            std::time::Instant::now() < until,
            "the download never finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(std::fs::read(&saved).unwrap(), data);

    // A new folder, a rename into it, and a delete.
    b.client
        .find(Locator::Css("#new-folder"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let input = b.client.find(Locator::Css("tr.new input")).await.unwrap();
    input.send_keys("old plans\n").await.unwrap();
    b.wait_until(
        "return document.querySelector('tr[data-name=\"old plans\"]') !== null",
        Duration::from_secs(10),
        "mkdir",
        "the new folder",
    )
    .await;
    assert!(home.join("docs/old plans").is_dir());
    b.client
        .find(Locator::Css("tr[data-name=\"plan.txt\"] button.rename"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let input = b
        .client
        .find(Locator::Css("tr[data-name=\"plan.txt\"] form.inline input"))
        .await
        .unwrap();
    input.clear().await.unwrap();
    input.send_keys("old plans/plan v1.txt\n").await.unwrap();
    b.wait_until(
        "return document.querySelector('tr[data-name=\"plan.txt\"]') === null",
        Duration::from_secs(10),
        "rename",
        "the renamed file to leave the listing",
    )
    .await;
    assert_eq!(
        std::fs::read(home.join("docs/old plans/plan v1.txt")).unwrap(),
        data
    );
    // Back home: delete the hostile file, confirming.
    b.client.goto(&url(&server, "/#/")).await.unwrap();
    b.wait_until(
        "return document.querySelector('tr[data-kind=file] button.delete') !== null",
        Duration::from_secs(10),
        "home_again",
        "the home listing",
    )
    .await;
    b.client
        .find(Locator::Css("tr[data-kind=file] button.delete"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.client.accept_alert().await.unwrap();
    b.wait_until(
        "return document.querySelector('tr[data-kind=file]') === null",
        Duration::from_secs(10),
        "delete",
        "the file to go",
    )
    .await;
    assert!(!home.join(hostile).exists());
    b.close().await;
    server.stop().await;
}
mod redteam;
