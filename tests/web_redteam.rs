//! Attacks on what the web pages rely on, checked over plain HTTP (no browser needed).

use std::net::{IpAddr, Ipv4Addr};

use ferry::server::Limits;
use ferry::server::penalty::PenaltyConfig;
use ferry::state::links::LinkKind;

use crate::util::http::{BOTH, Client, link_for};
use crate::util::{TestServer, cheap_hash, test_limits};

/// A password link asks for its password with a Basic challenge, except when a script of a
/// page asks (`Sec-Fetch-Mode` other than `navigate`: the drop page has its own form). The
/// header only decides whether the browser may open its login box: the answer is otherwise
/// the same bytes, a missing password costs nothing and a wrong one costs the same, so a
/// client that sends the header gains nothing. A navigation (a person opening a download
/// link) still gets the challenge, as does curl, which sends no such header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_basic_challenge_is_left_out_only_for_page_scripts_and_changes_nothing_else() {
    let server = TestServer::start_with(Limits {
        penalties: Some(PenaltyConfig::default()),
        ..test_limits()
    })
    .await;
    let home = server.home("alice");
    std::fs::create_dir_all(home.join("in")).unwrap();
    std::fs::write(home.join("in/report.pdf"), b"the report").unwrap();
    let hash = cheap_hash("link-pw-123");
    let (drop_tok, _) =
        link_for(&server, "alice", "/in", |s| s.password = Some(hash.clone())).await;
    let (dl_tok, _) = link_for(&server, "alice", "/in/report.pdf", |s| {
        s.kind = LinkKind::Download;
        s.password = Some(hash.clone());
    })
    .await;
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for proto in BOTH {
        let mut c = Client::connect(&server, proto).await;
        for (method, path) in [
            // The address a download link is given out with (its bare one sends a browser
            // here first).
            ("GET", format!("/l/{dl_tok}/report.pdf")),
            ("PUT", format!("/d/{drop_tok}/a.txt")),
        ] {
            let mut bodies = Vec::new();
            for (mode, challenged) in [
                (None, true),
                (Some("navigate"), true),
                (Some("cors"), false),
                (Some("no-cors"), false),
                (Some("same-origin"), false),
            ] {
                let headers: Vec<(&str, &str)> =
                    mode.iter().map(|m| ("sec-fetch-mode", *m)).collect();
                let r = c.plain(method, &path, &headers, "x").await;
                assert_eq!(r.status(), 401, "{proto:?} {method} {mode:?}: {}", r.text());
                assert_eq!(
                    r.header("www-authenticate").is_some(),
                    challenged,
                    "{proto:?} {method} {mode:?}"
                );
                bodies.push(r.body.clone());
            }
            assert!(
                bodies.windows(2).all(|w| w[0] == w[1]),
                "{method}: bodies differ"
            );
        }
        assert_eq!(
            server.server.penalty_owed(localhost),
            None,
            "asking for a password was penalised"
        );
    }
    assert!(!home.join("in/a.txt").exists());
    server.stop().await;
}
