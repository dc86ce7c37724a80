//! The admin's side, end to end with the real binary: the text log cannot be forged by a user
//! name or a path, the first-run password stays off the log stream, `ferry user` changes take
//! effect without a signal, and `ferry certs` keeps the CA unless told otherwise.

use ferry::client::ClientError;
use ferry::logfmt::parse_fields;
use ferry::users::Password;

use crate::cli::{ALICE_PW, World};
use crate::reload::login;
use crate::util::{CHEAP, no_progress};

/// The parsed fields of every text log line of the server whose fields include `key=value`.
fn log_lines_with(stderr: &str, key: &str, value: &str) -> Vec<Vec<(String, String)>> {
    stderr
        .lines()
        .filter_map(|line| {
            let fields = parse_fields(line)
                .unwrap_or_else(|| panic!("a log line that does not parse: {line:?}"));
            fields
                .iter()
                .any(|(k, v)| k == key && v == value)
                .then_some(fields)
        })
        .collect()
}

fn values<'a>(fields: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    fields
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A user name and a path carrying ` result="ok"` once forged a second `result` field in the
/// text audit line; every value is quoted now, so each line has exactly one, the true one.
#[test]
fn text_log_injection_cannot_forge_a_result_field() {
    let world = World::start_with(&["--no-penalties"]);
    let forged_user = "mallory result=\"ok\"";
    world
        .session(forged_user, "wrong-password", "ls\n")
        .expect_code(3);

    std::fs::write(world.local.join("f.txt"), b"hello").unwrap();
    let forged_path = "up result=\"refused\" x.txt";
    world
        .session("alice", ALICE_PW, &format!("put f.txt '{forged_path}'\n"))
        .expect_ok();
    assert!(world.alice_home().join(forged_path).is_file());

    let stderr = world.server.stderr_so_far();
    let logins = log_lines_with(&stderr, "event", "login");
    let failed: Vec<_> = logins
        .iter()
        .filter(|f| values(f, "user") == [forged_user])
        .collect();
    assert_eq!(failed.len(), 1, "{stderr}");
    assert_eq!(values(failed[0], "result"), ["auth_failed"], "{stderr}");

    let puts: Vec<_> = log_lines_with(&stderr, "op", "put");
    assert_eq!(puts.len(), 1, "{stderr}");
    assert_eq!(
        values(&puts[0], "path"),
        [format!("/{forged_path}")],
        "{stderr}"
    );
    assert_eq!(values(&puts[0], "result"), ["ok"], "{stderr}");
    assert_eq!(values(&puts[0], "user"), ["alice"], "{stderr}");
}

/// `ferry user ...` with `args`, the users file of `world`, and `stdin`.
fn user_cmd(world: &World, args: &[&str], stdin: Option<&str>) -> crate::cli::Out {
    let users_file = world._dir.path().join("users.toml");
    let mut all = vec!["user"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--users", users_file.to_str().unwrap()]);
    let mut f = crate::cli::Ferry::new(&world.local);
    if let Some(input) = stdin {
        f = f.stdin(input);
    }
    f.run(&all)
}

/// `ferry user passwd` once needed a SIGHUP that nothing mentioned: the old password kept
/// working. The server now notices the changed file at the next login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_passwd_takes_effect_on_a_running_server_without_a_signal() {
    let world = World::start_with(&["--no-penalties"]);
    let ca = world.ca.clone();
    let open = login(&world, &ca, "alice", ALICE_PW).await.unwrap();

    let new_pw = "alice-new-password";
    user_cmd(
        &world,
        &["passwd", "alice", "--password-stdin"],
        Some(&format!("{new_pw}\n")),
    )
    .expect_ok();
    // At once: no signal, no polling.
    assert!(matches!(
        login(&world, &ca, "alice", ALICE_PW).await,
        Err(ClientError::Auth)
    ));
    login(&world, &ca, "alice", new_pw)
        .await
        .expect("the new password works at once");
    // The session that was open goes on.
    let mut open = open;
    open.stat("/").await.expect("the open session goes on");

    // A new user works at once too, and a deleted one is refused at once.
    user_cmd(
        &world,
        &["add", "zoe", "--password-stdin"],
        Some("zoe-long-password\n"),
    )
    .expect_ok();
    login(&world, &ca, "zoe", "zoe-long-password")
        .await
        .unwrap();
    user_cmd(&world, &["del", "zoe"], None).expect_ok();
    assert!(matches!(
        login(&world, &ca, "zoe", "zoe-long-password").await,
        Err(ClientError::Auth)
    ));

    // A broken file is refused, logged once, and the users in force stay.
    let users_file = world._dir.path().join("users.toml");
    let good = std::fs::read_to_string(&users_file).unwrap();
    std::fs::write(&users_file, "[users.alice\npassword = ").unwrap();
    for _ in 0..2 {
        login(&world, &ca, "alice", new_pw)
            .await
            .expect("the previous users stay in force");
    }
    let log = world.server.stderr_so_far();
    assert_eq!(
        log.matches("users file not reloaded").count(),
        1,
        "logged once per change:\n{log}"
    );
    // Repaired (a password changed by hand in the same edit): in force at once.
    let hash = ferry::users::hash_password_with(
        &Password::new("repaired-password".into()),
        CHEAP.0,
        CHEAP.1,
        CHEAP.2,
    )
    .unwrap();
    let alice_hash = ferry::users::UserDb::parse(&good)
        .unwrap()
        .get("alice")
        .unwrap()
        .password_hash
        .clone();
    std::fs::write(&users_file, good.replace(&alice_hash, &hash)).unwrap();
    login(&world, &ca, "alice", "repaired-password")
        .await
        .expect("the repaired file is in force");
}

/// `user set` changes a quota, which the running server applies at the user's next login;
/// `none` removes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_set_quota_is_enforced_by_a_running_server_at_the_next_login() {
    let world = World::start();
    let ca = world.ca.clone();
    let file = world.local.join("two-kib");
    std::fs::write(&file, vec![7u8; 2048]).unwrap();

    user_cmd(&world, &["set", "alice", "--quota-bytes", "1 KiB"], None).expect_ok();
    let mut alice = login(&world, &ca, "alice", ALICE_PW).await.unwrap();
    assert_eq!(alice.usage().await.unwrap().quota_bytes, Some(1024));
    let err = alice
        .put(&file, "/big", false, &mut no_progress())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("quota"), "{err}");
    alice.close().await.unwrap();

    user_cmd(&world, &["set", "alice", "--quota-bytes", "none"], None).expect_ok();
    let mut alice = login(&world, &ca, "alice", ALICE_PW).await.unwrap();
    assert_eq!(alice.usage().await.unwrap().quota_bytes, None);
    alice
        .put(&file, "/big", false, &mut no_progress())
        .await
        .expect("no quota any more");
}

/// `user add` takes the limits, `user list` shows them, `user set` changes and clears them
/// (and the access and home), keeping the admin's comments.
#[test]
fn user_add_and_set_limits_show_in_user_list() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("users.toml");
    let f = file.to_str().unwrap();
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec!["user"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--users", f]);
        let mut cmd = crate::cli::Ferry::new(tmp.path());
        if let Some(input) = stdin {
            cmd = cmd.stdin(input);
        }
        cmd.run(&all)
    };
    run(
        &[
            "add",
            "carol",
            "--password-stdin",
            "--quota-bytes",
            "10 GiB",
            "--quota-files",
            "5000",
            "--max-file-size",
            "1G",
        ],
        Some("carol-long-password\n"),
    )
    .expect_ok();
    let db = ferry::users::UserDb::load(&file).unwrap();
    let carol = db.get("carol").unwrap();
    assert_eq!(carol.quota_bytes, Some(10 << 30));
    assert_eq!(carol.quota_files, Some(5000));
    assert_eq!(carol.max_file_size, Some(1 << 30));
    assert!(!carol.read_only);

    let list = run(&["list"], None);
    list.expect_ok();
    let line = list
        .stdout
        .lines()
        .find(|l| l.starts_with("carol "))
        .unwrap();
    for want in [
        "read-write",
        "10 GiB",
        "5000 files",
        "max file",
        "1 GiB",
        "<root>/carol",
    ] {
        assert!(line.contains(want), "{want:?} missing in {line:?}");
    }

    // A comment on a changed line stays.
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "quota_files = 5000",
        "quota_files = 5000 # agreed with carol",
    );
    std::fs::write(&file, text).unwrap();
    run(
        &[
            "set",
            "carol",
            "--quota-bytes",
            "none",
            "--quota-files",
            "7",
            "--read-only",
            "--home",
            "shared/carol",
        ],
        None,
    )
    .expect_ok();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("quota_files = 7 # agreed with carol"),
        "{text}"
    );
    let db = ferry::users::UserDb::load(&file).unwrap();
    let carol = db.get("carol").unwrap();
    assert_eq!(carol.quota_bytes, None);
    assert_eq!(carol.quota_files, Some(7));
    assert_eq!(carol.max_file_size, Some(1 << 30));
    assert!(carol.read_only);
    assert_eq!(
        carol.home.as_deref(),
        Some(std::path::Path::new("shared/carol"))
    );
    let line = run(&["list"], None).stdout;
    assert!(line.contains("read-only"), "{line}");
    assert!(line.contains("shared/carol"), "{line}");
    // A limit removed is said in words, not as a bare `-` (issue 12 item 20's `df` rule).
    assert!(line.contains("no space limit, 7 files"), "{line}");
    assert!(!line.contains(" - "), "{line}");

    run(&["set", "carol", "--read-write", "--default-home"], None).expect_ok();
    let db = ferry::users::UserDb::load(&file).unwrap();
    let carol = db.get("carol").unwrap();
    assert!(!carol.read_only);
    assert_eq!(carol.home, None);

    // Nothing to change, a bad size, a missing user: refused, file untouched.
    let before = std::fs::read(&file).unwrap();
    run(&["set", "carol"], None).expect_code(2);
    run(&["set", "carol", "--quota-bytes", "lots"], None).expect_code(2);
    let missing = run(&["set", "nobody", "--read-only"], None);
    missing.expect_failure();
    assert!(missing.stderr.contains("nobody"), "{missing:#?}");
    assert_eq!(std::fs::read(&file).unwrap(), before);
}

/// Passwords under 12 characters are refused, from stdin as at the terminal, with the reason
/// and the way out; `--allow-weak` lets a test account have one.
#[test]
fn user_add_and_passwd_refuse_weak_passwords_unless_allow_weak() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("users.toml");
    let f = file.to_str().unwrap();
    let run = |args: &[&str], pw: &str| {
        let mut all = vec!["user"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--users", f, "--password-stdin"]);
        crate::cli::Ferry::new(tmp.path())
            .stdin(&format!("{pw}\n"))
            .run(&all)
    };
    let weak = run(&["add", "ann"], "elevenchars");
    weak.expect_failure();
    assert!(
        weak.stderr.contains("shorter than 12 characters") && weak.stderr.contains("--allow-weak"),
        "{weak:#?}"
    );
    assert!(!file.exists(), "nothing written");
    // Twelve characters (not bytes: 'é' is two) pass.
    run(&["add", "ann"], "twelve-chars").expect_ok();
    run(&["add", "bea"], "ééééééééééé").expect_failure();
    run(&["add", "bea", "--allow-weak"], "pw").expect_ok();

    let before = std::fs::read(&file).unwrap();
    let weak = run(&["passwd", "ann"], "short");
    weak.expect_failure();
    assert!(weak.stderr.contains("shorter than 12"), "{weak:#?}");
    assert_eq!(std::fs::read(&file).unwrap(), before);
    run(&["passwd", "ann", "--allow-weak"], "short").expect_ok();
}

/// A users file in a directory that does not exist: the OS error once, not twice
/// (`No such file or directory (os error 2): No such file or directory (os error 2)`).
#[test]
fn missing_users_directory_names_the_os_error_once() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no/such/dir/users.toml");
    let m = missing.to_str().unwrap();
    let runs = [
        crate::cli::Ferry::new(tmp.path()).run(&["user", "list", "--users", m]),
        crate::cli::Ferry::new(tmp.path()).run(&["user", "del", "x", "--users", m]),
        crate::cli::Ferry::new(tmp.path())
            .stdin("a-long-enough-password\n")
            .run(&["user", "add", "x", "--password-stdin", "--users", m]),
        crate::cli::Ferry::new(tmp.path())
            .stdin("a-long-enough-password\n")
            .run(&["user", "passwd", "x", "--password-stdin", "--users", m]),
    ];
    for out in runs {
        out.expect_failure();
        assert_eq!(
            out.stderr.matches("No such file or directory").count(),
            1,
            "{out:#?}"
        );
        assert!(out.stderr.contains("no/such/dir"), "{out:#?}");
    }
    assert!(!tmp.path().join("no").exists());
}

/// The CA key sat beside the server's key although the server never needs it; it now lives
/// in `certs/ca/`, which a server runs without (the admin may keep it elsewhere), and
/// `ferry certs --force` with it brought back renews the server certificate under the same CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_never_needs_the_ca_directory_and_force_renews_under_the_same_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    crate::cli::Ferry::new(cwd)
        .run(&["certs", "--host", "files.example.org"])
        .expect_ok();
    assert!(!cwd.join("certs/ca.key").exists());
    let offline = cwd.join("offline-ca");
    std::fs::rename(cwd.join("certs/ca"), &offline).unwrap();

    // Without the CA's key, --force cannot renew: it says so and changes nothing.
    let before = std::fs::read(cwd.join("certs/server.pem")).unwrap();
    let out = crate::cli::Ferry::new(cwd).run(&["certs", "--force"]);
    out.expect_failure();
    assert!(out.stderr.contains("--new-ca"), "{out:#?}");
    assert_eq!(std::fs::read(cwd.join("certs/server.pem")).unwrap(), before);

    crate::cli::Ferry::new(cwd)
        .stdin("alice-long-password\n")
        .run(&["user", "add", "alice", "--password-stdin"])
        .expect_ok();
    let server = crate::cli::ServeProcess::start(cwd, &["--users", "users.toml"]);
    let world_ca = cwd.join("certs/ca.pem");
    let tls = ferry::tls::client_config(Some(&world_ca), ferry::protocol::ALPN).unwrap();
    let mut c = ferry::client::Connection::connect("127.0.0.1", server.port(), tls.clone())
        .await
        .unwrap();
    c.login("alice", &Password::new("alice-long-password".into()))
        .await
        .expect("the server runs without certs/ca/");

    // The CA directory back: --force renews the leaf; the same ca.pem trusts it.
    std::fs::rename(&offline, cwd.join("certs/ca")).unwrap();
    crate::cli::Ferry::new(cwd)
        .run(&["certs", "--force", "--host", "files.example.org"])
        .expect_ok();
    assert_ne!(std::fs::read(cwd.join("certs/server.pem")).unwrap(), before);
    // A server started on the renewed files is trusted through the same ca.pem.
    drop(c);
    drop(server);
    let server = crate::cli::ServeProcess::start(cwd, &["--users", "users.toml"]);
    let mut c = ferry::client::Connection::connect("127.0.0.1", server.port(), tls)
        .await
        .expect("the renewed certificate chains to the same ca.pem");
    c.login("alice", &Password::new("alice-long-password".into()))
        .await
        .unwrap();
}

/// A users file that hangs when read (here: replaced by a FIFO nobody writes; in life, a file
/// on a stuck network mount) holds one reload, never the logins: each goes on with the users
/// in force after a short wait, and later logins start no further reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_file_that_hangs_when_read_does_not_hold_logins() {
    use std::time::{Duration, Instant};

    let world = World::start_with(&["--no-penalties"]);
    let ca = world.ca.clone();
    let users_file = world._dir.path().join("users.toml");
    let good = std::fs::read(&users_file).unwrap();
    std::fs::remove_file(&users_file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&users_file)
        .status()
        .unwrap();
    assert!(made.success());
    for round in 0..3 {
        let started = Instant::now();
        let login = tokio::time::timeout(
            Duration::from_secs(10),
            login(&world, &ca, "alice", ALICE_PW),
        )
        .await
        .unwrap_or_else(|_| panic!("login {round} waited for the hung users file"));
        login.unwrap_or_else(|e| panic!("login {round}: the users in force stay: {e}"));
        eprintln!("login {round} took {:?}", started.elapsed());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    // Unblock the stuck reader (an empty file does not load), then put the file back.
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&users_file)
            .unwrap(),
    );
    std::fs::remove_file(&users_file).unwrap();
    std::fs::write(&users_file, &good).unwrap();
    login(&world, &ca, "alice", ALICE_PW)
        .await
        .expect("the repaired file serves");
}
