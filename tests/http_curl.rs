//! Debian's curl against the real server: the commands README.md and docs/HTTP.md give, run as
//! written (with `--cacert` for the test CA). Named `needs_curl_*` and ignored by a plain
//! `cargo test`; `.ci/run` installs curl and runs them. Without curl they fail with the reason.

use std::path::Path;
use std::process::{Command, Output};

use crate::util::http::{digest_field, token_for};
use crate::util::{TestServer, random_file, sha256_hex};

/// Runs curl with `args`, failing loudly if it is not installed.
fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["--silent", "--show-error"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("needs curl (.ci/run installs it): cannot run curl: {e}"))
}

fn url(server: &TestServer, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", server.addr.port())
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ca(server: &TestServer) -> String {
    server.ca.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs curl; .ci/run installs it"]
async fn needs_curl_uploads_verified_and_downloads_resumably_with_a_token() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let auth = format!("Authorization: Bearer {token}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.pdf");
    let data = random_file(&file, 3 * 1024 * 1024 + 5, 11);
    let (file_s, ca) = (file.display().to_string(), ca(&server));
    let target = url(&server, "/f/");

    // `curl -T FILE URL/` appends the file's name; Content-Digest makes the server verify.
    let digest = format!("Content-Digest: {}", digest_field(&data));
    let out = curl(&[
        "--fail-with-body",
        "--cacert",
        &ca,
        "-H",
        &auth,
        "-H",
        &digest,
        "-T",
        &file_s,
        &target,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["receipt"]["sha256"], sha256_hex(&data));
    assert_eq!(reply["receipt"]["verified"], "sender");
    assert_eq!(
        std::fs::read(server.home("alice").join("report.pdf")).unwrap(),
        data
    );

    // Over both HTTP versions; a wrong digest fails the command and stores nothing.
    for (flag, name) in [("--http1.1", "a.bin"), ("--http2", "b.bin")] {
        let wrong = format!("Content-Digest: {}", digest_field(b"other"));
        let out = curl(&[
            flag,
            "--fail-with-body",
            "--cacert",
            &ca,
            "-H",
            &auth,
            "-H",
            &wrong,
            "-T",
            &file_s,
            &url(&server, &format!("/f/{name}")),
        ]);
        assert_eq!(out.status.code(), Some(22), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("integrity_mismatch"));
        assert!(!server.home("alice").join(name).exists());
    }

    // Download: Repr-Digest in the headers, and `-C -` resumes a cut download.
    let got = dir.path().join("got.pdf");
    let got_s = got.display().to_string();
    let headers = dir.path().join("headers");
    let out = curl(&[
        "--fail",
        "--cacert",
        &ca,
        "-H",
        &auth,
        "-D",
        &headers.display().to_string(),
        "-o",
        &got_s,
        &url(&server, "/f/report.pdf"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(&got).unwrap(), data);
    let head = std::fs::read_to_string(&headers).unwrap().to_lowercase();
    assert!(
        head.contains(&format!(
            "repr-digest: {}",
            digest_field(&data).to_lowercase()
        )),
        "{head}"
    );
    std::fs::write(&got, &data[..1_000_000]).unwrap();
    let out = curl(&[
        "--fail",
        "--cacert",
        &ca,
        "-H",
        &auth,
        "-C",
        "-",
        "-o",
        &got_s,
        &url(&server, "/f/report.pdf"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(&got).unwrap(),
        data,
        "the resumed download differs"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs curl; .ci/run installs it"]
async fn needs_curl_without_a_token_is_refused_and_the_front_page_loads() {
    let server = TestServer::start().await;
    let ca = ca(&server);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("x");
    std::fs::write(&file, "x").unwrap();
    let out = curl(&[
        "--fail-with-body",
        "--cacert",
        &ca,
        "-T",
        &file.display().to_string(),
        &url(&server, "/f/"),
    ]);
    assert_eq!(out.status.code(), Some(22), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("auth_failed"));
    let page = curl(&["--fail", "--cacert", &ca, &url(&server, "/")]);
    assert!(page.status.success(), "{}", text(&page));
    assert!(String::from_utf8_lossy(&page.stdout).contains("ferry"));
    // A large body refused before it is read (over carol's 600,000-byte file limit). Over
    // HTTP/1.1 curl waits for `100 Continue` and reads the answer. Over h2 the server answers,
    // then resets the rest of the upload with NO_ERROR, as RFC 9113 §8.1 says; Debian 12's
    // curl 7.88 reports that reset (exit 92) instead of the answer. Either way the upload
    // fails and nothing is stored.
    let token = token_for(&server, "carol", false).await;
    let auth = format!("Authorization: Bearer {token}");
    let big = dir.path().join("big");
    random_file(&big, 5_000_000, 2);
    for flag in ["--http1.1", "--http2"] {
        let out = curl(&[
            flag,
            "--fail-with-body",
            "--cacert",
            &ca,
            "-H",
            &auth,
            "-T",
            &big.display().to_string(),
            &url(&server, "/f/"),
        ]);
        if flag == "--http1.1" || out.status.code() == Some(22) {
            assert_eq!(out.status.code(), Some(22), "{flag}: {}", text(&out));
            let body = String::from_utf8_lossy(&out.stdout);
            assert!(body.contains("too_large"), "{flag}: {}", text(&out));
        } else {
            assert_eq!(out.status.code(), Some(92), "{flag}: {}", text(&out));
        }
    }
    assert!(!Path::new(&server.home("carol").join("big")).exists());
    server.stop().await;
}

/// The shell commands of README.md's "Files over HTTPS" section, continuation lines joined.
fn readme_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Files over HTTPS")
        .nth(1)
        .expect("README.md has a 'Files over HTTPS' section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section has a sh block");
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim_end();
        if line.trim_start().starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs curl and openssl; .ci/run installs them"]
async fn needs_curl_the_readme_commands_run_as_written() {
    let server = TestServer::start().await;
    let token = token_for(&server, "alice", false).await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_file(&dir.path().join("report.pdf"), 2_000_000, 5);
    let curls: Vec<String> = readme_commands()
        .into_iter()
        .filter(|c| c.starts_with("curl "))
        .collect();
    assert_eq!(curls.len(), 2, "{curls:?}");
    for (i, cmd) in curls.iter().enumerate() {
        // Only the address and the CA differ from the README: this server's.
        let cmd = cmd
            .replace("https://localhost:7443", &url(&server, ""))
            .replace("certs/ca.pem", &ca(&server));
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "set -e; {cmd} --fail-with-body --silent --show-error"
            ))
            .env("TOKEN", &token)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {}", text(&out));
        if i == 0 {
            let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(reply["receipt"]["verified"], "sender", "{cmd}");
            assert_eq!(reply["receipt"]["sha256"], sha256_hex(&data));
            // The download below writes report.pdf again: start from a cut copy.
            std::fs::write(dir.path().join("report.pdf"), &data[..500_000]).unwrap();
        }
    }
    assert_eq!(std::fs::read(dir.path().join("report.pdf")).unwrap(), data);
    assert_eq!(
        std::fs::read(server.home("alice").join("report.pdf")).unwrap(),
        data
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs curl; .ci/run installs it"]
async fn needs_curl_a_drop_link_from_ferry_link_add_takes_curl_t() {
    let server = TestServer::start().await;
    std::fs::create_dir_all(server.home("alice")).unwrap();
    // The real binary makes the link, as the README says; the server sees it at once.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "link",
            "add",
            "alice:/inbox",
            "--upload-only",
            "--create",
            "--max-files",
            "2",
        ])
        .args(["--note", "Scans for the audit"])
        .arg("--public-url")
        .arg(url(&server, ""))
        .arg("--users")
        .arg(&server.users_file)
        .arg("--root")
        .arg(&server.root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let link = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(link.starts_with(&url(&server, "/d/dl_")), "{link}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scan.pdf");
    let data = random_file(&file, 1_500_000, 9);
    let ca = ca(&server);
    let page = curl(&["--fail", "--cacert", &ca, &link]);
    assert!(
        String::from_utf8_lossy(&page.stdout).contains("Scans for the audit"),
        "{}",
        text(&page)
    );
    for round in 0..2 {
        let out = curl(&[
            "--fail-with-body",
            "--cacert",
            &ca,
            "-T",
            &file.display().to_string(),
            &format!("{link}/"),
        ]);
        assert!(out.status.success(), "round {round}: {}", text(&out));
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply["receipt"]["sha256"], sha256_hex(&data));
        let expected = if round == 0 {
            "scan.pdf"
        } else {
            "scan (1).pdf"
        };
        assert_eq!(reply["receipt"]["name"], expected);
        // The receipt verifies offline with the server's key.
        let receipt = dir.path().join(format!("r{round}.json"));
        std::fs::write(&receipt, &out.stdout).unwrap();
        let check = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["receipt", "verify"])
            .arg(&receipt)
            .arg("--key")
            .arg(server.dir().join("certs/receipt.key"))
            .arg("--file")
            .arg(&file)
            .output()
            .unwrap();
        assert!(check.status.success(), "{}", text(&check));
    }
    // Its limit of two files holds.
    let out = curl(&[
        "--fail-with-body",
        "--cacert",
        &ca,
        "-T",
        &file.display().to_string(),
        &format!("{link}/"),
    ]);
    assert_eq!(out.status.code(), Some(22), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("link_used_up"));
    // Used up, its page says so.
    let page = curl(&["--cacert", &ca, &link]);
    assert!(
        String::from_utf8_lossy(&page.stdout).contains("no more files"),
        "{}",
        text(&page)
    );
    server.stop().await;
}
