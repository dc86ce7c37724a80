//! `ferry token add|list|del` end to end: the real binary edits `tokens.toml` beside a real
//! users file, and `ferry::state::tokens::check` (what the HTTPS front-end calls) judges the
//! tokens it printed, through a store that stays open while the binary changes the file, as a
//! running server's would.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ferry::accounts::tokens::TomlTokens;
use ferry::domain::Scope;
use ferry::state::tokens::{ApiTokens, TokenGrant, TokenRefused, check};
use ferry::users::{self, Password};

use crate::cli::{Ferry, Out};
use crate::util::CHEAP;

/// A temp directory with a users file holding `names` (cheap hashes).
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn with_users(names: &[&str]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup { dir };
        setup.write_users(names);
        setup
    }

    fn write_users(&self, names: &[&str]) {
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
        }
        std::fs::write(self.users(), text).unwrap();
    }

    fn users(&self) -> PathBuf {
        self.dir.path().join("users.toml")
    }

    fn tokens(&self) -> PathBuf {
        self.dir.path().join("tokens.toml")
    }

    /// `ferry token ARGS... --users <users>` in the directory.
    fn token(&self, args: &[&str]) -> Out {
        let users = self.users();
        let mut all = vec!["token"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--users", users.to_str().unwrap()]);
        Ferry::new(self.dir.path()).run(&all)
    }

    /// `ferry token add ARGS...`, which must succeed; the token it printed.
    fn add(&self, args: &[&str]) -> String {
        let mut all = vec!["add"];
        all.extend_from_slice(args);
        let out = self.token(&all);
        out.expect_ok();
        let token = out.stdout.trim().to_owned();
        assert_eq!(out.stdout, format!("{token}\n"), "one line on stdout");
        token
    }

    fn store(&self) -> TomlTokens {
        TomlTokens::beside_users(&self.users())
    }
}

/// The id in a token's text.
fn id_of(token: &str) -> &str {
    &token[3..11]
}

async fn judge(store: &dyn ApiTokens, token: &str) -> Result<TokenGrant, TokenRefused> {
    check(store, token, SystemTime::now()).await
}

#[tokio::test]
async fn add_prints_a_token_that_check_accepts_and_the_file_keeps_no_secret() {
    let s = Setup::with_users(&["alice"]);
    let out = s.token(&["add", "ci"]);
    out.expect_ok();
    let token = out.stdout.trim();
    assert!(token.starts_with("fy_") && token.len() == 55, "{token}");
    assert!(
        out.stderr.contains("Authorization: Bearer $TOKEN") && out.stderr.contains(id_of(token)),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "a one-line hint: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains(&token[12..]),
        "the secret only on stdout"
    );

    let grant = judge(&s.store(), token).await.unwrap();
    assert_eq!(grant.user, "alice", "the only user is the default");
    assert_eq!(grant.scope, Scope::Full);
    assert_eq!(grant.id.to_string(), id_of(token));

    let text = std::fs::read_to_string(s.tokens()).unwrap();
    assert!(!text.contains(&token[12..]), "{text}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(s.tokens()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // The default expiry is 90 days.
    let listed = s.token(&["list"]);
    let expires = listed.stdout.split_whitespace().nth(4).unwrap().to_owned();
    let expires = chrono::DateTime::parse_from_rfc3339(&expires).unwrap();
    let off =
        (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()) - chrono::Duration::days(90);
    assert!(off.num_seconds().abs() < 60, "{expires} is not in 90 days");
}

#[tokio::test]
async fn list_shows_ids_users_and_names_never_the_secret_or_its_hash() {
    let s = Setup::with_users(&["alice", "bob"]);
    let a = s.add(&["ci deploy", "--user", "alice"]);
    let b = s.add(&[
        "backup",
        "--user",
        "bob",
        "--read-only",
        "--expires",
        "never",
    ]);
    let out = s.token(&["list"]);
    out.expect_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(lines[0].starts_with(id_of(&a)) && lines[0].contains("alice"));
    assert!(
        lines[0].contains(" full ") && lines[0].ends_with("ci deploy"),
        "{}",
        lines[0]
    );
    assert!(lines[1].starts_with(id_of(&b)) && lines[1].contains("read-only"));
    assert!(lines[1].contains(" never "), "{}", lines[1]);
    let file = std::fs::read_to_string(s.tokens()).unwrap();
    for t in [&a, &b] {
        assert!(!out.stdout.contains(&t[12..]) && !out.stderr.contains(&t[12..]));
    }
    for line in file.lines().filter(|l| l.starts_with("sha256")) {
        let hash = line.split('"').nth(1).unwrap();
        assert!(!out.stdout.contains(hash), "the hash is not listed either");
    }
    let only_bob = s.token(&["list", "--user", "bob"]);
    assert_eq!(only_bob.stdout.lines().count(), 1);
    assert!(only_bob.stdout.contains("bob"));
    let grant = judge(&s.store(), &b).await.unwrap();
    assert_eq!(grant.scope, Scope::ReadOnly);
}

#[tokio::test]
async fn del_revokes_for_an_open_store_and_unknown_ids_fail_clearly() {
    let s = Setup::with_users(&["alice"]);
    let server = s.store();
    // The "server" looked before the token existed.
    assert!(
        judge(
            &server,
            "fy_00000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        )
        .await
        .is_err()
    );
    let token = s.add(&["ci"]);
    assert!(
        judge(&server, &token).await.is_ok(),
        "added while the store was open: seen at once"
    );
    s.token(&["del", id_of(&token)]).expect_ok();
    let refused = judge(&server, &token).await.unwrap_err();
    assert_eq!(refused.reason(), "unknown token id");
    let again = s.token(&["del", id_of(&token)]);
    again.expect_failure();
    assert!(
        again
            .stderr
            .contains(&format!("no token {}", id_of(&token))),
        "{}",
        again.stderr
    );
    let junk = s.token(&["del", "../../x"]);
    junk.expect_failure();
    assert!(junk.stderr.contains("not a token id"), "{}", junk.stderr);
}

#[tokio::test]
async fn an_expired_token_is_refused_and_listed_as_expired() {
    let s = Setup::with_users(&["alice"]);
    // Lifetimes count from the creation time in whole seconds (as the file keeps it), so a
    // token of 3 s lives at least 2: room for a loaded machine between the two steps.
    let token = s.add(&["short", "--expires", "3s"]);
    assert!(judge(&s.store(), &token).await.is_ok());
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(
        judge(&s.store(), &token).await.unwrap_err().reason(),
        "expired token"
    );
    assert!(s.token(&["list"]).stdout.contains("(expired)"));
}

#[tokio::test]
async fn a_deleted_users_tokens_are_refused_and_a_recreated_user_does_not_get_them_back() {
    let s = Setup::with_users(&["alice", "bob"]);
    let server = s.store();
    let alice = s.add(&["ci", "--user", "alice"]);
    let bob = s.add(&["ci", "--user", "bob"]);
    let users = s.users();
    let out =
        Ferry::new(s.dir.path()).run(&["user", "del", "alice", "--users", users.to_str().unwrap()]);
    out.expect_ok();
    assert!(
        out.stderr.contains("revoked their 1 API token"),
        "{}",
        out.stderr
    );
    assert!(judge(&server, &alice).await.is_err());
    assert!(judge(&server, &bob).await.is_ok(), "only alice's");

    // Made again under the same name: the old token stays dead.
    Ferry::new(s.dir.path())
        .stdin("alice-new-pw\n")
        .run(&[
            "user",
            "add",
            "alice",
            "--users",
            users.to_str().unwrap(),
            "--password-stdin",
            "--allow-weak",
        ])
        .expect_ok();
    assert!(judge(&server, &alice).await.is_err());

    // Deleted by hand (the tokens file untouched), then made again with `ferry user add`:
    // the add revokes what was left.
    let bob_ro = s.add(&["ro", "--user", "bob", "--read-only"]);
    s.write_users(&["alice"]);
    assert!(
        judge(&server, &bob_ro).await.is_ok(),
        "the store does not know the users file"
    );
    Ferry::new(s.dir.path())
        .stdin("bob-new-pw\n")
        .run(&[
            "user",
            "add",
            "bob",
            "--users",
            users.to_str().unwrap(),
            "--password-stdin",
            "--allow-weak",
        ])
        .expect_ok();
    for t in [&bob, &bob_ro] {
        assert!(judge(&server, t).await.is_err(), "bob's old tokens");
    }
}

#[test]
fn add_needs_a_known_user_and_says_which_when_there_are_several() {
    let s = Setup::with_users(&["alice", "bob"]);
    let out = s.token(&["add", "ci"]);
    out.expect_failure();
    assert!(
        out.stderr.contains("has 2 users: say which with --user"),
        "{}",
        out.stderr
    );
    let out = s.token(&["add", "ci", "--user", "carol"]);
    out.expect_failure();
    assert!(out.stderr.contains("no user `carol`"), "{}", out.stderr);
    assert!(!s.tokens().exists(), "nothing written");
    for (args, needle) in [
        (&["add", "a\u{1b}[2Jb", "--user", "bob"][..], "control"),
        (
            &["add", "ci", "--user", "bob", "--expires", "90"][..],
            "needs a unit",
        ),
        (
            &["add", "ci", "--user", "bob", "--expires", "0d"][..],
            "longer than 0s",
        ),
    ] {
        let out = s.token(args);
        out.expect_failure();
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty());
    }
}

#[tokio::test]
async fn a_tokens_file_given_with_tokens_is_used_instead() {
    let s = Setup::with_users(&["alice"]);
    let other = s.dir.path().join("elsewhere.toml");
    let token = s.add(&["ci", "--tokens", other.to_str().unwrap()]);
    assert!(!s.tokens().exists());
    assert!(judge(&TomlTokens::new(other.clone()), &token).await.is_ok());
    assert!(judge(&s.store(), &token).await.is_err());
    let listed = s.token(&["list", "--tokens", other.to_str().unwrap()]);
    assert!(listed.stdout.starts_with(id_of(&token)));
}

#[tokio::test]
async fn a_broken_tokens_file_is_a_clear_error_and_refuses_every_token() {
    let s = Setup::with_users(&["alice"]);
    let token = s.add(&["ci"]);
    let server = s.store();
    assert!(judge(&server, &token).await.is_ok());
    let good = std::fs::read_to_string(s.tokens()).unwrap();
    let broken = format!("{good}\n[tokens.zz\n");
    std::fs::write(s.tokens(), &broken).unwrap();
    for args in [
        &["list"][..],
        &["add", "more"][..],
        &["del", id_of(&token)][..],
    ] {
        let out = s.token(args);
        out.expect_failure();
        assert!(
            out.stderr.contains("tokens file") && out.stderr.contains("tokens.toml: line "),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert_eq!(
        std::fs::read_to_string(s.tokens()).unwrap(),
        broken,
        "left untouched"
    );
    assert_eq!(
        judge(&server, &token).await.unwrap_err().reason(),
        "token store unavailable",
        "fails closed"
    );
    std::fs::write(s.tokens(), &good).unwrap();
    assert!(
        judge(&server, &token).await.is_ok(),
        "fixed: in force again"
    );
}

#[test]
fn concurrent_adds_never_lose_one() {
    const N: usize = 8;
    let s = Setup::with_users(&["alice"]);
    let tokens: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..N)
            .map(|i| {
                let s = &s;
                scope.spawn(move || s.add(&[&format!("t{i}")]))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let listed = s.token(&["list"]).stdout;
    assert_eq!(listed.lines().count(), N, "{listed}");
    for t in &tokens {
        assert!(listed.contains(id_of(t)), "{t} lost");
    }
}

/// What a users file path without a directory means: tokens.toml in the working directory.
#[test]
fn the_default_files_are_in_the_working_directory() {
    let s = Setup::with_users(&["alice"]);
    let out = Ferry::new(s.dir.path()).run(&["token", "add", "ci"]);
    out.expect_ok();
    assert!(Path::new(&s.tokens()).exists());
    let out = Ferry::new(s.dir.path()).run(&["token", "list"]);
    assert!(out.stdout.contains("alice"), "{out:?}");
}
