//! `ferry link add|list|del` end to end: the real binary edits `links.toml` beside a real users
//! file and checks real homes under a data root; `LinkStore::by_token` (what the HTTPS routes
//! call) judges the URLs it printed, through a store that stays open while the binary changes
//! the file, as a running server's would.

use std::path::PathBuf;
use std::time::SystemTime;

use ferry::accounts::links::TomlLinks;
use ferry::state::links::{Link, LinkKind, LinkStore};
use ferry::users::{self, Password};

use crate::cli::{Ferry, Out};
use crate::util::CHEAP;

/// A temp directory with a users file, homes under `data/`, and no public URL in the
/// environment.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn with_users(names: &[&str]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("# users\n");
        for n in names {
            let hash = users::hash_password_with(
                &Password::new(format!("{n}-pw")),
                CHEAP.0,
                CHEAP.1,
                CHEAP.2,
            )
            .unwrap();
            text.push_str(&format!("[users.{n}]\npassword = \"{hash}\"\n"));
            std::fs::create_dir_all(dir.path().join("data").join(n).join("inbox")).unwrap();
        }
        std::fs::write(dir.path().join("users.toml"), text).unwrap();
        Setup { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn ferry(&self) -> Ferry {
        Ferry::new(self.dir.path()).env("FERRY_PUBLIC_URL", "")
    }

    /// `ferry link ARGS...` in the directory (relative paths: users.toml, data, certs).
    fn link(&self, args: &[&str]) -> Out {
        let mut all = vec!["link"];
        all.extend_from_slice(args);
        self.ferry().run(&all)
    }

    /// `ferry link add ARGS... --public-url https://files.example.org:8443`, which must
    /// succeed; the URL it printed.
    fn add(&self, args: &[&str]) -> String {
        let mut all = vec!["add"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--public-url", "https://files.example.org:8443"]);
        let out = self.link(&all);
        out.expect_ok();
        let url = out.stdout.trim().to_owned();
        assert_eq!(out.stdout, format!("{url}\n"), "one line on stdout");
        url
    }

    fn store(&self) -> TomlLinks {
        TomlLinks::beside_users(&self.path("users.toml"))
    }
}

/// The token at the end of a link's URL.
/// The token in a printed URL: `…/d/<token>`, `…/l/<token>/<name>` or `…/l/<token>/`.
fn token_of(url: &str) -> &str {
    url.split('/')
        .find(|seg| seg.starts_with("dl_"))
        .unwrap_or_else(|| panic!("no token in {url}"))
}

async fn open(store: &dyn LinkStore, url: &str) -> Option<Link> {
    store.by_token(token_of(url)).await.unwrap()
}

#[tokio::test]
async fn add_prints_the_url_once_and_the_file_keeps_only_a_hash() {
    let s = Setup::with_users(&["alice"]);
    let server = s.store();
    let out = s.link(&[
        "add",
        "alice:/inbox",
        "--upload-only",
        "--public-url",
        "https://files.example.org:8443/",
        "--max-files",
        "20",
        "--max-bytes",
        "1 GiB",
    ]);
    out.expect_ok();
    let url = out.stdout.trim();
    let token = token_of(url);
    assert!(
        url.starts_with("https://files.example.org:8443/d/dl_") && token.len() == 55,
        "{url}"
    );
    assert!(
        out.stderr.contains("curl -T FILE") && out.stderr.contains(&token[3..11]),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains(&token[12..]),
        "the secret only on stdout"
    );

    let link = open(&server, url)
        .await
        .expect("the printed URL opens the link");
    assert_eq!(
        (link.owner.as_str(), link.folder.as_str(), link.kind),
        ("alice", "/inbox", LinkKind::Upload)
    );
    assert_eq!(
        (link.max_files, link.max_bytes, link.max_downloads),
        (Some(20), Some(1 << 30), None)
    );
    assert_eq!(link.password, None);
    let days = link
        .expires
        .unwrap()
        .duration_since(SystemTime::now())
        .unwrap()
        .as_secs_f64()
        / 86_400.0;
    assert!(
        (days - 7.0).abs() < 0.01,
        "the default expiry is 7 days: {days}"
    );

    let text = std::fs::read_to_string(s.path("links.toml")).unwrap();
    assert!(!text.contains(&token[12..]), "{text}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.path("links.toml"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn the_url_comes_from_the_environment_or_the_certificate() {
    let s = Setup::with_users(&["alice"]);
    let out = s
        .ferry()
        .env("FERRY_PUBLIC_URL", "https://drop.example.net")
        .run(&["link", "add", "alice:/inbox", "--upload-only"]);
    out.expect_ok();
    assert!(
        out.stdout.starts_with("https://drop.example.net/d/dl_"),
        "{}",
        out.stdout
    );

    // No URL given and no certificate: refused, and nothing is added.
    let none = s.link(&["add", "alice:/inbox", "--upload-only"]);
    none.expect_failure();
    assert!(none.stderr.contains("--public-url"), "{}", none.stderr);
    assert_eq!(s.store().list(None).await.unwrap().len(), 1);

    // The dev certificate: its first name that is not localhost, port 7443, and the CA in
    // the hint.
    s.ferry()
        .run(&["certs", "--host", "files.example.org"])
        .expect_ok();
    let out = s.link(&["add", "alice:/inbox", "--upload-only"]);
    out.expect_ok();
    assert!(
        out.stdout
            .starts_with("https://files.example.org:7443/d/dl_"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("--cacert certs/ca.pem"),
        "{}",
        out.stderr
    );
    assert!(open(&s.store(), out.stdout.trim()).await.is_some());

    // A certificate with only the default names gives localhost.
    s.ferry().run(&["certs", "--force"]).expect_ok();
    let out = s.link(&["add", "alice:/inbox", "--upload-only"]);
    out.expect_ok();
    assert!(
        out.stdout.starts_with("https://localhost:7443/d/dl_"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn the_folder_must_exist_in_the_home_unless_create_makes_it() {
    let s = Setup::with_users(&["alice"]);
    let missing = s.link(&[
        "add",
        "alice:/scans/2026",
        "--upload-only",
        "--public-url",
        "https://h",
    ]);
    missing.expect_failure();
    assert!(
        missing.stderr.contains("does not exist") && missing.stderr.contains("--create"),
        "{}",
        missing.stderr
    );
    assert!(!s.path("links.toml").exists(), "nothing written");

    std::fs::write(s.path("data/alice/inbox/report.pdf"), b"%PDF").unwrap();
    let file = s.link(&[
        "add",
        "alice:/inbox/report.pdf",
        "--upload-only",
        "--public-url",
        "https://h",
    ]);
    file.expect_failure();
    assert!(file.stderr.contains("not a folder"), "{}", file.stderr);

    // A symlink out of the home is not followed, neither to check nor to create.
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), s.path("data/alice/out")).unwrap();
    let escape = s.link(&[
        "add",
        "alice:/out/x",
        "--upload-only",
        "--create",
        "--public-url",
        "https://h",
    ]);
    escape.expect_failure();
    assert!(!outside.path().join("x").exists());

    let url = s.add(&["alice:/scans/2026", "--upload-only", "--create"]);
    assert!(s.path("data/alice/scans/2026").is_dir());
    assert_eq!(open(&s.store(), &url).await.unwrap().folder, "/scans/2026");

    // A download link names a file that exists, and prints an /l/ URL.
    let url = s.add(&[
        "alice:inbox/report.pdf",
        "--download",
        "--max-downloads",
        "3",
    ]);
    assert!(
        url.starts_with("https://files.example.org:8443/l/dl_") && url.ends_with("/report.pdf"),
        "{url}"
    );
    let link = open(&s.store(), &url).await.unwrap();
    assert_eq!(
        (link.kind, link.folder.as_str(), link.max_downloads),
        (LinkKind::Download, "/inbox/report.pdf", Some(3))
    );
    s.link(&[
        "add",
        "alice:/nope.pdf",
        "--download",
        "--public-url",
        "https://h",
    ])
    .expect_failure();
    // Options of the other kind, or no kind, are usage errors.
    s.link(&["add", "alice:/inbox", "--download", "--max-files", "1"])
        .expect_code(2);
    s.link(&["add", "alice:/inbox"]).expect_code(2);
    s.link(&[
        "add",
        "mallory:/inbox",
        "--upload-only",
        "--public-url",
        "https://h",
    ])
    .expect_failure();
}

#[tokio::test]
async fn a_note_is_stored_as_given_and_a_password_as_argon2id() {
    let s = Setup::with_users(&["alice"]);
    let note = "<script>alert(\"x\")</script> & scans, please";
    let out = s.ferry().stdin("correct horse battery\n").run(&[
        "link",
        "add",
        "alice:/inbox",
        "--upload-only",
        "--note",
        note,
        "--password-stdin",
        "--public-url",
        "https://h",
    ]);
    out.expect_ok();
    let link = open(&s.store(), out.stdout.trim()).await.unwrap();
    assert_eq!(link.note.as_deref(), Some(note));
    let hash = link.password.unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(users::verify_password(
        &hash,
        &Password::new("correct horse battery".into())
    ));
    assert!(
        !std::fs::read_to_string(s.path("links.toml"))
            .unwrap()
            .contains("correct horse")
    );
    let listed = s.link(&["list"]);
    assert!(listed.stdout.contains("password"), "{}", listed.stdout);
    assert!(listed.stdout.contains("<script>"), "{}", listed.stdout);

    for bad in ["a\nb", &"x".repeat(201), "\u{202e}fdp.exe"] {
        s.link(&[
            "add",
            "alice:/inbox",
            "--upload-only",
            "--note",
            bad,
            "--public-url",
            "https://h",
        ])
        .expect_failure();
    }
}

#[tokio::test]
async fn list_and_del_never_show_the_token_and_del_revokes_for_an_open_store() {
    let s = Setup::with_users(&["alice", "bob"]);
    let server = s.store();
    let a = s.add(&["alice:/inbox", "--upload-only", "--max-files", "2"]);
    let b = s.add(&["bob:/inbox", "--upload-only", "--expires", "never"]);
    assert!(open(&server, &a).await.is_some(), "seen at once");
    let out = s.link(&["list"]);
    out.expect_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(lines[0].starts_with(&token_of(&a)[3..11]) && lines[0].contains("alice"));
    assert!(lines[0].contains("files=0/2") && lines[0].contains("/inbox"));
    assert!(
        lines[1].contains("bob") && lines[1].contains(" never "),
        "{}",
        lines[1]
    );
    let file = std::fs::read_to_string(s.path("links.toml")).unwrap();
    for url in [&a, &b] {
        assert!(!out.stdout.contains(&token_of(url)[12..]));
    }
    for line in file.lines().filter(|l| l.starts_with("token_sha256")) {
        assert!(!out.stdout.contains(line.split('"').nth(1).unwrap()));
    }
    assert_eq!(s.link(&["list", "--user", "bob"]).stdout.lines().count(), 1);

    s.link(&["del", &token_of(&a)[3..11]]).expect_ok();
    assert!(open(&server, &a).await.is_none());
    assert!(open(&server, &b).await.is_some());
    let again = s.link(&["del", &token_of(&a)[3..11]]);
    again.expect_failure();
    assert!(again.stderr.contains("no link"), "{}", again.stderr);
    s.link(&["del", "../../x"]).expect_failure();
}

#[tokio::test]
async fn user_del_revokes_the_users_links() {
    let s = Setup::with_users(&["alice", "bob"]);
    let server = s.store();
    let a1 = s.add(&["alice:/inbox", "--upload-only"]);
    let a2 = s.add(&["alice:/inbox", "--upload-only"]);
    let b = s.add(&["bob:/inbox", "--upload-only"]);
    let out = s.ferry().run(&["user", "del", "alice"]);
    out.expect_ok();
    assert!(
        out.stderr.contains("revoked their 2 drop link(s)"),
        "{}",
        out.stderr
    );
    assert!(open(&server, &a1).await.is_none());
    assert!(open(&server, &a2).await.is_none());
    assert!(open(&server, &b).await.is_some(), "only alice's");
    assert!(
        s.link(&[
            "add",
            "alice:/inbox",
            "--upload-only",
            "--public-url",
            "https://h"
        ])
        .stderr
        .contains("no user")
    );

    // Deleted by hand (the links file untouched), then made again with `ferry user add`: the
    // add revokes what was left, so the new bob never inherits the old bob's links.
    let text = std::fs::read_to_string(s.path("users.toml")).unwrap();
    let start = text.find("[users.bob]").unwrap();
    std::fs::write(s.path("users.toml"), &text[..start]).unwrap();
    assert!(
        open(&server, &b).await.is_some(),
        "the store does not know the users file"
    );
    s.ferry()
        .stdin("bob-new-pw\n")
        .run(&["user", "add", "bob", "--password-stdin", "--allow-weak"])
        .expect_ok();
    assert!(open(&server, &b).await.is_none());
}

#[tokio::test]
async fn create_makes_a_home_no_login_has_made_yet() {
    // A fresh server's user has no home until the first login; the README's first link is
    // made before anyone logs in.
    let s = Setup::with_users(&["alice"]);
    std::fs::remove_dir_all(s.path("data/alice")).unwrap();
    let url = s.add(&["alice:/inbox", "--upload-only", "--create"]);
    assert!(s.path("data/alice/inbox").is_dir());
    assert_eq!(open(&s.store(), &url).await.unwrap().folder, "/inbox");
    // Without --create nothing is made.
    std::fs::remove_dir_all(s.path("data/alice")).unwrap();
    let out = s.link(&[
        "add",
        "alice:/inbox",
        "--upload-only",
        "--public-url",
        "https://files.example.org/",
    ]);
    assert!(!out.status.success());
    assert!(!s.path("data/alice").exists());
}
