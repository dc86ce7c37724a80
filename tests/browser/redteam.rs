//! The pages under attack, in a real headless Chromium: what a page does when the session
//! changes under it, when an answer is lost, and when a name is one the server refuses.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use fantoccini::Locator;
use ferry::server::Limits;
use ferry::server::penalty::PenaltyConfig;

use crate::util::browser::Browser;
use crate::util::http::link_for;
use crate::util::{TestServer, test_limits};

fn url(server: &TestServer, path: &str) -> String {
    format!("https://localhost:{}{path}", server.addr.port())
}

/// Holds every `XMLHttpRequest.send` until `window.__release()` (a slow network, made
/// deterministic); counts the requests that were sent and ended.
const HOLD_SENDS: &str = "window.__held = []; window.__ended = 0; \
    const send = XMLHttpRequest.prototype.send; \
    XMLHttpRequest.prototype.send = function (b) { \
      this.addEventListener('loadend', () => { window.__ended += 1; }); \
      if (window.__go) return send.call(this, b); \
      window.__held.push(() => { try { send.call(this, b); } catch (_) { /* aborted */ } }); }; \
    window.__release = () => { window.__go = true; for (const f of window.__held.splice(0)) f(); }; \
    return true;";

/// Alice starts uploads, logs out while they are under way, and Bob logs in in the same tab:
/// nothing Alice queued may land in Bob's home (the page used to send her queued files with
/// whatever session the tab held by then, so they were stored as Bob's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_uploads_queued_before_a_logout_never_land_in_the_next_users_home() {
    let server = TestServer::start().await;
    let b = Browser::start(&server).await;
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    b.eval(HOLD_SENDS).await;
    let src = tempfile::tempdir().unwrap();
    let names = ["alice-1.txt", "alice-2.txt", "alice-3.txt"];
    let paths: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let p = src.path().join(n);
            crate::util::random_file(&p, 20_000, 60 + i as u64);
            p
        })
        .collect();
    b.pick("#pick-files", &paths).await;
    // Two are hashed and waiting to be sent (the queue runs two at once); the third waits.
    b.wait_until(
        "return window.__held.length === 2",
        Duration::from_secs(30),
        "logout_mid_upload_held",
        "two uploads to be under way",
    )
    .await;
    b.client
        .find(Locator::Css("#logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait_until(
        "return document.querySelector('form#login') !== null",
        Duration::from_secs(20),
        "logout_mid_upload_form",
        "the login form after logging out",
    )
    .await;
    b.log_in_here("bob", "bob-pw").await;
    // The network comes back: whatever the page still wants to send goes now.
    b.eval("window.__release(); return true;").await;
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let landed = crate::util::names_in(&server.home("bob"));
        assert!(
            landed.iter().all(|n| !n.starts_with("alice-")),
            "Alice's uploads landed in Bob's home: {landed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.screenshot("logout_mid_upload").await;
    b.close().await;
    server.stop().await;
}

/// The drop page sends a file, the server stores it, and the answer is lost (a dropped
/// connection): the page retries. The sender must not end up with the file stored twice
/// (`notes (1).txt`), each copy counted against the link's limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_a_drop_retry_after_a_lost_answer_stores_the_file_once() {
    let server = TestServer::start().await;
    let inbox = server.home("alice").join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let (token, _) = link_for(&server, "alice", "/inbox", |_| {}).await;
    let b = Browser::start(&server).await;
    b.client
        .goto(&url(&server, &format!("/d/{token}")))
        .await
        .unwrap();
    b.wait_until(
        "return document.querySelector('#dropzone') !== null",
        Duration::from_secs(20),
        "drop_retry",
        "the drop zone",
    )
    .await;
    // The first answer is lost after the server committed: the page sees what a dropped
    // connection looks like (an XHR error, status 0).
    b.eval(
        "let first = true; const send = XMLHttpRequest.prototype.send; \
         XMLHttpRequest.prototype.send = function (b) { \
           if (first) { first = false; const err = this.onerror; \
             this.onload = () => err.call(this); } \
           return send.call(this, b); }; return true;",
    )
    .await;
    let src = tempfile::tempdir().unwrap();
    let notes = crate::util::random_file(&src.path().join("notes.txt"), 50_000, 61);
    b.pick("#pick-files", &[src.path().join("notes.txt")]).await;
    b.wait_until(
        "const r = document.querySelector('li.transfer'); \
         return r !== null && ['done', 'failed'].includes(r.dataset.state)",
        Duration::from_secs(30),
        "drop_retry_end",
        "the upload to settle",
    )
    .await;
    b.screenshot("drop_retry").await;
    assert_eq!(
        crate::util::names_in(&inbox),
        vec!["notes.txt"],
        "one file sent once was stored more than once"
    );
    assert_eq!(std::fs::read(inbox.join("notes.txt")).unwrap(), notes);
    // The page asked the server where the upload stood (tus's HEAD), learned it was whole,
    // and took the receipt rather than sending anything again.
    let text = b
        .eval("return document.querySelector('li.transfer .t-status').textContent")
        .await;
    assert!(
        text.as_str().unwrap().starts_with("Stored"),
        "the page says: {text}"
    );
    b.close().await;
    server.stop().await;
}

/// A file whose name the server cannot take (a backslash: fine on Linux and macOS) is refused
/// by the page itself, saying why. Sent, its URL holds `%5C`, which the server treats as an
/// attack and penalises the sender's address for: a folder of such names would ban a sender
/// who did nothing wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_a_name_the_server_refuses_costs_the_sender_nothing() {
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let b = Browser::start(&server).await;
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    let src = tempfile::tempdir().unwrap();
    let name = "C:\\Users\\me\\report.txt";
    crate::util::random_file(&src.path().join(name), 1000, 62);
    b.pick("#pick-files", &[src.path().join(name)]).await;
    b.wait_until(
        "const r = document.querySelector('li.transfer'); \
         return r !== null && ['done', 'failed'].includes(r.dataset.state)",
        Duration::from_secs(30),
        "backslash_name",
        "the upload to settle",
    )
    .await;
    let text = b
        .eval("return document.querySelector('li.transfer .t-status').textContent")
        .await;
    b.screenshot("backslash_name").await;
    b.close().await;
    let start = Instant::now();
    while server.server.not_logged_in() > 0 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Connections are penalised when they end: give the server a moment to see them go.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        server.server.penalty_owed(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        None,
        "a browser sending a file with a backslash in its name was penalised"
    );
    assert!(
        text.as_str().unwrap().contains('\\'),
        "the page does not say which character: {text}"
    );
    assert!(crate::util::names_in(&server.home("alice")).is_empty());
    server.stop().await;
}

/// Folder names that look like markup, escapes or address syntax, reached through the
/// listing and typed into the address: the breadcrumbs and the listing show them as text, the
/// listing is of the folder shown, and an upload lands in that very folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_hostile_folder_names_and_addresses_stay_what_they_show() {
    let server = TestServer::start().await;
    let home = server.home("alice");
    let folders = [
        "<img src=x onerror=\"document.title='owned'\">",
        "100% #1 ?x=&y",
        "a%2Fb%23c",
        "javascript:document.title='owned'",
    ];
    for (i, f) in folders.iter().enumerate() {
        std::fs::create_dir_all(home.join(f)).unwrap();
        std::fs::write(home.join(f).join(format!("in-{i}.txt")), b"x").unwrap();
    }
    let b = Browser::start(&server).await;
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    let src = tempfile::tempdir().unwrap();
    for (i, f) in folders.iter().enumerate() {
        // Into the folder by its link in the listing.
        b.goto_home_and_open(&url(&server, "/#/"), f).await;
        b.wait_until(
            &format!("return document.querySelector('tr[data-name=\"in-{i}.txt\"]') !== null"),
            Duration::from_secs(10),
            "hostile_folder",
            &format!("the listing of {f:?}"),
        )
        .await;
        let crumbs = b
            .eval("return document.querySelector('nav.crumbs').textContent")
            .await;
        assert_eq!(crumbs.as_str().unwrap(), format!("Home / {f}"));
        // An upload from here lands in this folder.
        let name = format!("up-{i}.txt");
        let data = crate::util::random_file(&src.path().join(&name), 1000, 70 + i as u64);
        b.pick("#pick-files", &[src.path().join(&name)]).await;
        b.wait_until(
            &format!(
                "const r = [...document.querySelectorAll('li.transfer')].pop(); \
                 return r !== undefined && r.dataset.path.endsWith('/{name}') && \
                 ['done', 'failed'].includes(r.dataset.state)"
            ),
            Duration::from_secs(30),
            "hostile_folder_upload",
            "the upload to settle",
        )
        .await;
        assert_eq!(
            std::fs::read(home.join(f).join(&name)).unwrap(),
            data,
            "{f}"
        );
        // The address of this folder, loaded afresh, opens the same folder.
        let here = b.client.current_url().await.unwrap().to_string();
        b.client.goto(&here).await.unwrap();
        b.wait_until(
            &format!("return document.querySelector('tr[data-name=\"up-{i}.txt\"]') !== null"),
            Duration::from_secs(20),
            "hostile_folder_reload",
            &format!("{f:?} after a reload"),
        )
        .await;
    }
    assert!(
        b.client
            .find_all(Locator::Css("img"))
            .await
            .unwrap()
            .is_empty()
    );
    // The title names the folder as text (so it holds the word), and no script set it.
    assert_eq!(
        b.client.title().await.unwrap(),
        format!("ferry: /{}", folders[3])
    );
    b.screenshot("hostile_folder").await;
    b.close().await;
    server.stop().await;
}

/// The sender cancels while the server is verifying what arrived (the whole file was sent):
/// the server commits it anyway, so a row that just says "Cancelled" tells the sender the
/// file did not arrive, and they send it again (a second copy through a drop link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_a_cancel_after_the_whole_file_was_sent_says_it_may_be_stored() {
    let server = TestServer::start().await;
    let inbox = server.home("alice").join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let (token, _) = link_for(&server, "alice", "/inbox", |_| {}).await;
    let b = Browser::start(&server).await;
    b.client
        .goto(&url(&server, &format!("/d/{token}")))
        .await
        .unwrap();
    b.wait_until(
        "return document.querySelector('#dropzone') !== null",
        Duration::from_secs(20),
        "cancel_committing",
        "the drop zone",
    )
    .await;
    // The answer is slow to come (a server fsyncing a large file): it is held back here.
    b.eval(
        "window.__answered = false; const send = XMLHttpRequest.prototype.send; \
         XMLHttpRequest.prototype.send = function (b) { \
           this.onload = () => { window.__answered = true; }; \
           return send.call(this, b); }; return true;",
    )
    .await;
    let src = tempfile::tempdir().unwrap();
    let data = crate::util::random_file(&src.path().join("thesis.pdf"), 80_000, 63);
    b.pick("#pick-files", &[src.path().join("thesis.pdf")])
        .await;
    b.wait_until(
        "const r = document.querySelector('li.transfer'); \
         return r !== null && r.dataset.state === 'committing' && window.__answered",
        Duration::from_secs(30),
        "cancel_committing_wait",
        "the file to be sent and answered",
    )
    .await;
    b.client
        .find(Locator::Css("li.transfer .t-actions button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let text = b
        .eval("return document.querySelector('li.transfer .t-status').textContent")
        .await;
    b.screenshot("cancel_committing").await;
    // The server has it...
    assert_eq!(std::fs::read(inbox.join("thesis.pdf")).unwrap(), data);
    // ...and the page must not say it did not arrive.
    assert!(
        text.as_str().unwrap().contains("may have been stored"),
        "the page says: {text}"
    );
    b.close().await;
    server.stop().await;
}

/// A person opens two password-protected download links of one server. After the first
/// (its password given, here in the address, as the browser's login box would send it),
/// Chromium keeps that password for every URL under `/l/` and sends it, unasked, with the
/// second link: on main that is a `wrong_password` and a failed login's penalty, so a person
/// who opens three such links is banned. A link's password must be scoped to its link (its
/// own realm and its own path, `/l/<token>/<name>`), or a password that was never typed for
/// this link must not count as a guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_two_password_download_links_cost_their_user_nothing() {
    use ferry::state::links::LinkKind;
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let home = server.home("alice");
    std::fs::create_dir_all(home.join("out")).unwrap();
    std::fs::write(home.join("out/a.txt"), b"first").unwrap();
    std::fs::write(home.join("out/b.txt"), b"second").unwrap();
    let (tok_a, _) = link_for(&server, "alice", "/out/a.txt", |s| {
        s.kind = LinkKind::Download;
        s.password = Some(crate::util::cheap_hash("pw-a"));
    })
    .await;
    let (tok_b, _) = link_for(&server, "alice", "/out/b.txt", |s| {
        s.kind = LinkKind::Download;
        s.password = Some(crate::util::cheap_hash("pw-b"));
    })
    .await;
    let b = Browser::start(&server).await;
    let port = server.addr.port();
    let _ = tokio::time::timeout(
        Duration::from_secs(15),
        b.client
            .goto(&format!("https://x:pw-a@localhost:{port}/l/{tok_a}/a.txt")),
    )
    .await;
    let saved = b.downloads.path().join("a.txt");
    let until = Instant::now() + Duration::from_secs(15);
    while !saved.exists() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saved.exists(), "a.txt was not downloaded");
    // The second link, opened as received (both as given out and by its bare address): the
    // browser has its own idea of what to send.
    for second in [format!("/l/{tok_b}/b.txt"), format!("/l/{tok_b}")] {
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            b.client.goto(&format!("https://localhost:{port}{second}")),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.close().await;
    assert_eq!(
        server.server.penalty_owed(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        None,
        "opening two password links was penalised"
    );
    server.stop().await;
}

/// The session ends while files are being sent (logged out elsewhere, expired): the page
/// goes back to the login form, and must still say which files were not stored, or the
/// person cannot know what to send again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromium-driver; .ci/run installs them"]
async fn needs_chromium_a_session_ending_mid_upload_names_the_files_not_stored() {
    let server = TestServer::start().await;
    let b = Browser::start(&server).await;
    b.log_in(&url(&server, "/"), "alice", "alice-pw").await;
    b.eval(HOLD_SENDS).await;
    let src = tempfile::tempdir().unwrap();
    let names = ["minutes.txt", "budget.ods", "photo.jpg"];
    let paths: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let p = src.path().join(n);
            crate::util::random_file(&p, 20_000, 80 + i as u64);
            p
        })
        .collect();
    b.pick("#pick-files", &paths).await;
    b.wait_until(
        "return window.__held.length === 2",
        Duration::from_secs(30),
        "session_end_held",
        "two uploads to be under way",
    )
    .await;
    // The session ends on the server (a logout in another tab does just this).
    b.eval(
        "const s = await (await fetch('/api/session')).json(); \
         await fetch('/api/logout', { method: 'POST', headers: { 'X-Ferry-Csrf': s.csrf } }); \
         window.__release(); return true;",
    )
    .await;
    b.wait_until(
        "return document.querySelector('form#login') !== null",
        Duration::from_secs(20),
        "session_end_form",
        "the login form",
    )
    .await;
    let text = b
        .eval("return document.querySelector('form#login').textContent")
        .await;
    b.screenshot("session_end_mid_upload").await;
    for n in names {
        assert!(
            text.as_str().unwrap().contains(n),
            "the login form does not name {n}: {text}"
        );
    }
    // Nothing landed under its name (the uploads begun stay resumable, as hidden partials,
    // for when she logs in again and picks the files).
    for n in names {
        assert!(!server.home_file("alice", n).exists(), "{n} was stored");
    }
    b.close().await;
    server.stop().await;
}
