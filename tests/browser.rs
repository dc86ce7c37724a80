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
           if (k === 'Repr-Digest') v = 'sha-256=:' + btoa('x'.repeat(32)) + ':'; \
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_a_4_gib_upload_keeps_the_browsers_memory_bounded() {
    use std::io::{Seek, SeekFrom, Write};
    const SIZE: u64 = 4 * 1024 * 1024 * 1024 + 1;
    const MIB: usize = 1024 * 1024;
    // A sparse file with random blocks at the start, the middle and the end.
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("big.img");
    let mut f = std::fs::File::create(&path).unwrap();
    f.set_len(SIZE).unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut block = vec![0u8; MIB];
    for at in [0, SIZE / 2, SIZE - MIB as u64] {
        for b in block.iter_mut() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            *b = rng as u8;
        }
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&block).unwrap();
    }
    drop(f);
    let expected = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut f = std::fs::File::open(&path).unwrap();
        let mut buf = vec![0u8; 4 * MIB];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        hex::encode(h.finalize())
    };

    let server = TestServer::start().await;
    let b = std::sync::Arc::new(Browser::start(&server).await);
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = b.memory_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let sampler = {
        let (b, peak) = (b.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(b.memory_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let started = std::time::Instant::now();
    b.pick("#pick-files", std::slice::from_ref(&path)).await;
    b.wait_until(
        "const r = document.querySelector('li.transfer'); return r !== null && \
         (r.dataset.state === 'done' || r.dataset.state === 'failed')",
        Duration::from_secs(300),
        "upload_4gib",
        "the 4 GiB upload",
    )
    .await;
    sampler.abort();
    let took = started.elapsed();
    let state = b
        .eval("const r = document.querySelector('li.transfer'); return [r.dataset.state, r.querySelector('.t-status').textContent, r.dataset.sha256 || '']")
        .await;
    assert_eq!(state[0], "done", "the upload: {state}");
    assert_eq!(state[2], expected, "the page's SHA-256");
    let stored = std::fs::metadata(server.home_file("alice", "big.img")).unwrap();
    assert_eq!(stored.len(), SIZE);
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let grew_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "4 GiB upload through Chromium in {:.1} s; browser PSS {} MiB before, {} MiB at most (+{grew_mib} MiB)",
        took.as_secs_f64(),
        baseline / 1024,
        peak / 1024
    );
    assert!(
        grew_mib < 512,
        "the browser grew by {grew_mib} MiB while sending a 4 GiB file"
    );
    b.screenshot("upload_4gib").await;
    std::sync::Arc::into_inner(b).unwrap().close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_an_upload_cut_by_the_network_going_away_finishes_when_it_comes_back() {
    let server = TestServer::start().await;
    // The browser reaches the server through a relay that plays the network.
    let net = crate::util::relay::Relay::start(server.addr).await;
    let base = format!("https://localhost:{}", net.addr.port());
    let b = Browser::start(&server).await;
    b.log_in(&format!("{base}/"), "alice", "alice-pw").await;
    let src = tempfile::tempdir().unwrap();
    // Three chunks of the page's 8 MiB; the network goes while the second is on its way.
    let data = crate::util::random_file(&src.path().join("video.mp4"), 20 * 1024 * 1024, 21);
    net.throttle(4_000_000);
    b.pick("#pick-files", &[src.path().join("video.mp4")]).await;
    b.wait_until(
        "const r = document.querySelector('li.transfer'); return r !== null && \
         r.dataset.state === 'sending' && r.querySelector('progress').value > 11 * 1024 * 1024",
        Duration::from_secs(60),
        "offline_sending",
        "the upload to be well under way",
    )
    .await;
    net.set_offline(true);
    net.cut();
    b.wait_until(
        "return document.querySelector('li.transfer').dataset.state === 'retrying'",
        Duration::from_secs(30),
        "offline_retrying",
        "the page to notice the connection is gone",
    )
    .await;
    b.screenshot("offline_retrying").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !server.home_file("alice", "video.mp4").exists(),
        "a cut upload appeared"
    );
    net.throttle(0);
    net.set_offline(false);
    b.wait_until(
        "return document.querySelector('li.transfer').dataset.state === 'done'",
        Duration::from_secs(90),
        "offline_done",
        "the upload to finish once the network is back",
    )
    .await;
    assert_eq!(
        std::fs::read(server.home_file("alice", "video.mp4")).unwrap(),
        data
    );
    // It went on from the first chunk the server had acknowledged, not from the start.
    let at = b
        .eval("return document.querySelector('li.transfer').dataset.resumedAt")
        .await;
    assert_eq!(at, "8388608", "resumed at");
    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_after_a_reload_picking_the_same_file_goes_on_where_the_server_stands() {
    let server = TestServer::start().await;
    let net = crate::util::relay::Relay::start(server.addr).await;
    let base = format!("https://localhost:{}", net.addr.port());
    let b = Browser::start(&server).await;
    b.log_in(&format!("{base}/"), "alice", "alice-pw").await;
    let src = tempfile::tempdir().unwrap();
    let data = crate::util::random_file(&src.path().join("backup.tar"), 20 * 1024 * 1024, 33);
    net.throttle(4_000_000);
    b.pick("#pick-files", &[src.path().join("backup.tar")])
        .await;
    b.wait_until(
        "const r = document.querySelector('li.transfer'); return r !== null && \
         r.querySelector('progress').value > 11 * 1024 * 1024",
        Duration::from_secs(60),
        "reload_sending",
        "the upload to be well under way",
    )
    .await;
    // The tab goes away mid-chunk (a reload; the page's "leave?" question is answered yes).
    b.client.goto(&format!("{base}/")).await.unwrap();
    let _ = b.client.accept_alert().await;
    net.throttle(0);
    b.wait_until(
        "return document.querySelector('#pick-files') !== null",
        Duration::from_secs(20),
        "reload_again",
        "the app after the reload (still logged in)",
    )
    .await;
    assert!(!server.home_file("alice", "backup.tar").exists());
    b.pick("#pick-files", &[src.path().join("backup.tar")])
        .await;
    b.wait_until(
        "const r = document.querySelector('li.transfer'); return r !== null && r.dataset.state === 'done'",
        Duration::from_secs(60),
        "reload_done",
        "the upload picked again to finish",
    )
    .await;
    let from = b
        .eval("return document.querySelector('li.transfer').dataset.resumedFrom")
        .await;
    assert_eq!(
        from, "8388608",
        "it should go on after the acknowledged chunk"
    );
    assert_eq!(
        std::fs::read(server.home_file("alice", "backup.tar")).unwrap(),
        data
    );
    b.screenshot("reload_resumed").await;
    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_a_chunk_damaged_on_the_way_is_refused_and_sent_again() {
    let server = TestServer::start().await;
    let b = Browser::start(&server).await;
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    // The first chunk's checksum is not that of its bytes, as if they changed on the way.
    b.eval(
        "window.damaged = 0; const set = XMLHttpRequest.prototype.setRequestHeader; \
         XMLHttpRequest.prototype.setRequestHeader = function (k, v) { \
           if (k === 'Upload-Checksum' && window.damaged === 0) { \
             window.damaged = 1; v = 'sha256 ' + btoa('y'.repeat(32)); } \
           return set.call(this, k, v); }; return true;",
    )
    .await;
    let src = tempfile::tempdir().unwrap();
    let data = crate::util::random_file(&src.path().join("scan.tiff"), 10 * 1024 * 1024, 5);
    b.pick("#pick-files", &[src.path().join("scan.tiff")]).await;
    b.wait_until(
        "const r = document.querySelector('li.transfer'); return r !== null && r.dataset.state === 'done'",
        Duration::from_secs(60),
        "damaged_chunk",
        "the upload to finish after the damaged chunk was sent again",
    )
    .await;
    assert_eq!(b.eval("return window.damaged").await, 1);
    assert_eq!(
        std::fs::read(server.home_file("alice", "scan.tiff")).unwrap(),
        data
    );
    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_an_owner_shares_a_folder_a_sender_uses_the_link_and_the_owner_revokes_it() {
    let server = TestServer::start().await;
    std::fs::create_dir_all(server.home("alice").join("inbox")).unwrap();
    let b = Browser::start(&server).await;
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    // The listing comes after the login, in its own request.
    b.wait_until(
        "return document.querySelector('tr[data-name=\"inbox\"] button.share') !== null",
        Duration::from_secs(20),
        "share_folder",
        "the inbox row's Share button",
    )
    .await;
    b.client
        .find(Locator::Css("tr[data-name=\"inbox\"] button.share"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.client
        .find(Locator::Css("#link-max-files"))
        .await
        .unwrap()
        .send_keys("3")
        .await
        .unwrap();
    b.client
        .find(Locator::Css("#link-note"))
        .await
        .unwrap()
        .send_keys("Receipts for March")
        .await
        .unwrap();
    b.client
        .find(Locator::Css("#link-new button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_until(
        "return document.querySelector('#link-url') !== null",
        Duration::from_secs(20),
        "share_made",
        "the new link",
    )
    .await;
    b.screenshot("share_link_made").await;
    let link = b
        .eval("return document.querySelector('#link-url').value")
        .await;
    let link = link.as_str().unwrap().to_string();
    assert!(link.contains("/d/dl_"), "{link}");

    // A sender opens it and sends a file.
    b.client.goto(&link).await.unwrap();
    b.wait_until(
        "return document.querySelector('#dropzone') !== null",
        Duration::from_secs(20),
        "share_drop_page",
        "the drop page",
    )
    .await;
    assert_eq!(
        b.eval("return document.querySelector('p.note').textContent")
            .await,
        "Receipts for March"
    );
    let src = tempfile::tempdir().unwrap();
    let data = crate::util::random_file(&src.path().join("march.csv"), 50_000, 3);
    b.pick("#pick-files", &[src.path().join("march.csv")]).await;
    b.wait_until(
        "const r = document.querySelector('li.transfer'); return r !== null && r.dataset.state === 'done'",
        Duration::from_secs(30),
        "share_sent",
        "the file sent through the link",
    )
    .await;
    assert_eq!(
        std::fs::read(server.home("alice").join("inbox/march.csv")).unwrap(),
        data
    );

    // The owner sees the use and revokes the link; it stops at once.
    b.client.goto(&url(&server, "/")).await.unwrap();
    b.wait_until(
        "return document.querySelector('#links-button') !== null",
        Duration::from_secs(20),
        "share_back",
        "the app",
    )
    .await;
    b.client
        .find(Locator::Css("#links-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_until(
        "const t = document.querySelector('.links-table'); return t !== null && t.textContent.includes('1 of 3 files')",
        Duration::from_secs(20),
        "share_list",
        "the link's use in the list",
    )
    .await;
    b.screenshot("share_links_list").await;
    b.client
        .find(Locator::Css(".links-table button.revoke"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.client.accept_alert().await.unwrap();
    b.wait_until(
        "return document.querySelector('.links-table') === null",
        Duration::from_secs(20),
        "share_revoked",
        "the list without the link",
    )
    .await;
    b.client.goto(&link).await.unwrap();
    let text = b.eval("return document.body.textContent").await;
    assert!(text.as_str().unwrap().contains("no such link"), "{text}");
    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_a_stock_tus_client_without_checksums_uploads_and_gets_a_server_only_receipt()
 {
    let server = TestServer::start().await;
    let b = Browser::start(&server).await;
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    // tus-js-client, as Uppy uses it: a test fixture handed to the page, never served.
    let lib = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web/tus-js-client/tus.min.js"),
    )
    .unwrap();
    let loaded = b
        .eval(&format!(
            "{lib}\n;window.tus = (typeof tus !== 'undefined') ? tus : window.tus; \
             const i = document.createElement('input'); i.type = 'file'; i.id = 'stock'; \
             document.body.append(i); return typeof window.tus.Upload;"
        ))
        .await;
    assert_eq!(loaded, "function");
    let src = tempfile::tempdir().unwrap();
    let data = crate::util::random_file(&src.path().join("stock.bin"), 3 * 1024 * 1024 + 5, 77);
    b.pick("#stock", &[src.path().join("stock.bin")]).await;
    b.eval(
        "window.stock = { state: 'running' }; \
         fetch('/api/session').then((r) => r.json()).then((s) => { \
           const file = document.querySelector('#stock').files[0]; \
           const up = new window.tus.Upload(file, { \
             endpoint: '/tus/', chunkSize: 1024 * 1024, retryDelays: [0, 1000], \
             metadata: { filename: '/stock.bin' }, headers: { 'X-Ferry-Csrf': s.csrf }, \
             onError: (e) => { window.stock = { state: 'error', message: String(e) }; }, \
             onSuccess: () => { window.stock = { state: 'done', url: up.url }; } }); \
           up.start(); }); return true;",
    )
    .await;
    b.wait_until(
        "return window.stock.state !== 'running'",
        Duration::from_secs(60),
        "stock_tus",
        "tus-js-client to finish",
    )
    .await;
    let stock = b.eval("return window.stock").await;
    assert_eq!(stock["state"], "done", "{stock}");
    assert_eq!(
        std::fs::read(server.home_file("alice", "stock.bin")).unwrap(),
        data
    );
    // The receipt says the digest is the server's own: the client sent none.
    let receipt = b
        .eval(
            "const u = new URL(window.stock.url, location.href).pathname; \
             return fetch(u + '/receipt').then((r) => r.json());",
        )
        .await;
    let receipt = receipt.get("receipt").unwrap_or(&receipt);
    assert_eq!(receipt["verified"], "server-only", "{receipt}");
    assert_eq!(receipt["sha256"], crate::util::sha256_hex(&data));
    b.close().await;
    server.stop().await;
}

/// What the page's verification costs: one 1 GiB file sent by the app (tus, 8 MiB chunks,
/// hashed in the Worker), by a bare XHR `PUT` from the same page (no hashing; the server
/// computes the digest), and by curl (`-T` with `Content-Digest`), against one server in one
/// run. Prints the rates and the ratios. Run by hand, optimised:
/// `cargo test --release --test tests bench_browser_upload -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark, run by hand (see its comment)"]
async fn bench_browser_upload() {
    const SIZE: usize = 1024 * 1024 * 1024;
    let server = TestServer::start().await;
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("one.bin");
    let data = crate::util::random_file(&path, SIZE, 99);
    let digest = {
        use sha2::Digest;
        sha2::Sha256::digest(&data)
    };
    drop(data);
    let b = Browser::start(&server).await;
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    let mut rows = Vec::new();
    for round in 0..2 {
        // The app.
        let t = std::time::Instant::now();
        b.pick("#pick-files", std::slice::from_ref(&path)).await;
        b.wait_until(
            "const r = [...document.querySelectorAll('li.transfer')].pop(); \
             return r !== undefined && r.dataset.state === 'done'",
            Duration::from_secs(600),
            "bench_app",
            "the app's upload",
        )
        .await;
        let app = t.elapsed().as_secs_f64();
        std::fs::remove_file(server.home_file("alice", "one.bin")).unwrap();
        b.eval("document.querySelector('.summary button').click(); return true")
            .await;
        // A bare PUT from the same page.
        b.eval(
            "if (!document.querySelector('#bare')) { const i = document.createElement('input'); \
             i.type = 'file'; i.id = 'bare'; document.body.append(i); } return true",
        )
        .await;
        b.pick("#bare", std::slice::from_ref(&path)).await;
        let t = std::time::Instant::now();
        let status = b
            .eval(
                "return fetch('/api/session').then((r) => r.json()).then((s) => new Promise((ok) => { \
                 const x = new XMLHttpRequest(); x.open('PUT', '/f/bare.bin'); \
                 x.setRequestHeader('X-Ferry-Csrf', s.csrf); x.setRequestHeader('Overwrite', 'T'); \
                 x.onload = () => ok(x.status); x.onerror = () => ok(0); \
                 x.send(document.querySelector('#bare').files[0]); }));",
            )
            .await;
        let bare = t.elapsed().as_secs_f64();
        assert_eq!(status, 201);
        // curl, with the digest it would send.
        let token = crate::util::http::token_for(&server, "alice", false).await;
        let t = std::time::Instant::now();
        let out = std::process::Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(server.dir().join("certs/ca.pem"))
            .arg("-H")
            .arg(format!("Authorization: Bearer {token}"))
            .arg("-H")
            .arg(format!(
                "Content-Digest: sha-256=:{}:",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest)
            ))
            .args(["-H", "Overwrite: T", "-T"])
            .arg(&path)
            .arg(format!(
                "https://localhost:{}/f/curl.bin",
                server.addr.port()
            ))
            .output()
            .unwrap();
        let curl = t.elapsed().as_secs_f64();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "{out:?}");
        let mbs = |s: f64| SIZE as f64 / s / 1e6;
        eprintln!(
            "round {round}: app {:.0} MB/s, bare PUT {:.0} MB/s, curl {:.0} MB/s; app/bare {:.2}, app/curl {:.2}",
            mbs(app),
            mbs(bare),
            mbs(curl),
            bare / app,
            curl / app
        );
        rows.push((app, bare, curl));
    }
    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_a_folder_upload_keeps_its_tree() {
    let server = TestServer::start().await;
    let b = Browser::start(&server).await;
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("trip");
    std::fs::create_dir_all(root.join("day 1/raw")).unwrap();
    let files = [
        ("trip/map.png", 20_000),
        ("trip/day 1/notes.txt", 300),
        ("trip/day 1/raw/img 001.cr2", 900_000),
    ];
    let mut data = Vec::new();
    for (i, (rel, len)) in files.iter().enumerate() {
        data.push(crate::util::random_file(
            &src.path().join(rel),
            *len,
            60 + i as u64,
        ));
    }
    b.pick("#pick-folder", std::slice::from_ref(&root)).await;
    b.wait_until(
        "const r = [...document.querySelectorAll('li.transfer')]; \
         return r.length === 3 && r.every(x => x.dataset.state === 'done');",
        Duration::from_secs(60),
        "folder_upload",
        "the folder's three files",
    )
    .await;
    for ((rel, _), d) in files.iter().zip(&data) {
        assert_eq!(
            &std::fs::read(server.home("alice").join(rel)).unwrap(),
            d,
            "{rel}"
        );
    }
    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_an_upload_over_the_quota_is_refused_before_it_is_sent() {
    let server = TestServer::start().await;
    let b = Browser::start(&server).await;
    // carol may keep 1 MiB.
    b.log_in(&url(&server, "/"), "carol", "carol-pw").await;
    b.wait_until(
        "return document.querySelector('.usage-text') !== null && \
         document.querySelector('.usage-text').textContent.includes('of 1.05 MB used')",
        Duration::from_secs(10),
        "quota_usage",
        "the quota in the header",
    )
    .await;
    // Two files of 550 kB: each within carol's largest file, together over her 1 MiB.
    let src = tempfile::tempdir().unwrap();
    crate::util::random_file(&src.path().join("a.iso"), 550_000, 1);
    crate::util::random_file(&src.path().join("b.iso"), 550_000, 2);
    b.pick(
        "#pick-files",
        &[src.path().join("a.iso"), src.path().join("b.iso")],
    )
    .await;
    b.wait_until(
        "const r = [...document.querySelectorAll('li.transfer')]; return r.length === 2 && \
         r.every(x => x.dataset.state === 'done' || x.dataset.state === 'failed')",
        Duration::from_secs(30),
        "quota_refused",
        "both uploads to settle",
    )
    .await;
    let rows = b
        .eval(
            "return [...document.querySelectorAll('li.transfer')].map(x => \
             [x.dataset.state, x.querySelector('.t-status').textContent, x.querySelector('progress').value])",
        )
        .await;
    let rows = rows.as_array().unwrap();
    let failed: Vec<_> = rows.iter().filter(|r| r[0] == "failed").collect();
    assert_eq!(failed.len(), 1, "exactly one refused: {rows:?}");
    assert!(
        failed[0][1]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("quota"),
        "the row says: {}",
        failed[0][1]
    );
    // Refused at creation: nothing of it was sent.
    assert_eq!(failed[0][2], 0, "bytes were sent before the refusal");
    assert_eq!(crate::util::names_in(&server.home("carol")).len(), 1);
    b.screenshot("quota_refused").await;
    b.close().await;
    server.stop().await;
}
mod redteam;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_a_tab_looked_at_again_shows_whoever_another_tab_logged_in() {
    let server = TestServer::start().await;
    let b = Browser::start(&server).await;
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    // Another tab logs out and logs in as bob (the cookie is the browser's, not the tab's).
    b.eval(
        "const s = await (await fetch('/api/session')).json(); \
         await fetch('/api/logout', { method: 'POST', headers: { 'X-Ferry-Csrf': s.csrf } }); \
         const r = await fetch('/api/login', { method: 'POST', \
           headers: { 'Content-Type': 'application/json' }, \
           body: JSON.stringify({ user: 'bob', password: 'bob-pw' }) }); \
         document.dispatchEvent(new Event('visibilitychange')); return r.status;",
    )
    .await;
    b.wait_until(
        "const w = document.querySelector('.who'); return w !== null && w.textContent === 'bob'",
        Duration::from_secs(10),
        "other_tab",
        "the page to show bob",
    )
    .await;
    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_a_file_changed_on_disk_mid_upload_is_not_stored() {
    let server = TestServer::start().await;
    let net = crate::util::relay::Relay::start(server.addr).await;
    let base = format!("https://localhost:{}", net.addr.port());
    let b = Browser::start(&server).await;
    b.log_in(&format!("{base}/"), "alice", "alice-pw").await;
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("ledger.db");
    crate::util::random_file(&path, 24 * 1024 * 1024, 12);
    net.throttle(4_000_000);
    b.pick("#pick-files", std::slice::from_ref(&path)).await;
    b.wait_until(
        "const r = document.querySelector('li.transfer'); return r !== null && \
         r.querySelector('progress').value > 9 * 1024 * 1024",
        Duration::from_secs(60),
        "changed_sending",
        "the first chunk to be stored",
    )
    .await;
    // Someone writes to the file while it is being sent (its last MiB, not yet read).
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::End(-1024 * 1024)).unwrap();
        f.write_all(&vec![0x5a; 1024 * 1024]).unwrap();
        f.sync_all().unwrap();
    }
    net.throttle(0);
    b.wait_until(
        "const r = document.querySelector('li.transfer'); return r.dataset.state === 'failed' || r.dataset.state === 'done'",
        Duration::from_secs(60),
        "changed_end",
        "the upload to settle",
    )
    .await;
    let row = b
        .eval("const r = document.querySelector('li.transfer'); return [r.dataset.state, r.querySelector('.t-status').textContent]")
        .await;
    b.screenshot("file_changed_mid_upload").await;
    assert_eq!(row[0], "failed", "{row}");
    assert!(
        row[1].as_str().unwrap().contains("changed on disk"),
        "{row}"
    );
    assert!(
        !server.home_file("alice", "ledger.db").exists(),
        "a file that changed while it was sent was stored: {row}"
    );
    b.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_a_lost_answer_to_a_chunk_goes_on_without_hashing_the_prefix_again() {
    let server = TestServer::start().await;
    let b = Browser::start(&server).await;
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    // The first chunk's answer is lost after the server took it (what a connection that
    // breaks on the way back looks like to the page); every state the row passes is noted.
    b.eval(
        "window.states = []; new MutationObserver(() => { \
           const r = document.querySelector('li.transfer'); \
           if (r && window.states[window.states.length - 1] !== r.dataset.state) \
             window.states.push(r.dataset.state); \
         }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ['data-state'] }); \
         let first = true; const send = XMLHttpRequest.prototype.send; \
         XMLHttpRequest.prototype.send = function (b) { \
           if (first) { first = false; const err = this.onerror; this.onload = () => err.call(this); } \
           return send.call(this, b); }; return true;",
    )
    .await;
    let src = tempfile::tempdir().unwrap();
    let data = crate::util::random_file(&src.path().join("two.bin"), 12 * 1024 * 1024, 4);
    b.pick("#pick-files", &[src.path().join("two.bin")]).await;
    b.wait_until(
        "const r = document.querySelector('li.transfer'); return r !== null && \
         (r.dataset.state === 'done' || r.dataset.state === 'failed')",
        Duration::from_secs(60),
        "lost_chunk_answer",
        "the upload to settle",
    )
    .await;
    let row = b
        .eval("const r = document.querySelector('li.transfer'); return [r.dataset.state, r.dataset.resumedAt || '', window.states]")
        .await;
    assert_eq!(row[0], "done", "{row}");
    assert_eq!(
        row[1], "8388608",
        "it went on after the chunk the server had: {row}"
    );
    assert!(
        !row[2].as_array().unwrap().iter().any(|s| s == "hashing"),
        "the prefix was hashed again: {row}"
    );
    assert_eq!(
        std::fs::read(server.home_file("alice", "two.bin")).unwrap(),
        data
    );
    b.close().await;
    server.stop().await;
}
