//! Rough edges of the client that a first-time user and a security review hit (issue 12,
//! items 9, 10, 13 and 20): the mode of downloaded files, `rm -r` and symlinks, errors that name
//! their path and the flag that helps, escaping done once, resume lines, `df` without a quota,
//! the `put` usage line, `ls -a`, `-q` and `-p`. The real binary against real `ferry serve`
//! processes, with real files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::cli::{ALICE_PW, FERRY, Ferry, Out, RUN_TIMEOUT, World, wait_or_kill};
use tokio_util::sync::CancellationToken;

use crate::oneshot::oneshot;
use crate::util::{TestServer, random_file, sha256_hex};

/// [`oneshot`] under `umask` (set by a shell that then execs ferry).
fn oneshot_with_umask(w: &World, umask: &str, args: &[&str]) -> Out {
    let port = w.server.port().to_string();
    let mut child = Command::new("sh")
        .current_dir(&w.local)
        .env("HOME", &w.local)
        .env("FERRY_PASSWORD", ALICE_PW)
        .env_remove("FERRY_LOG")
        .env_remove("XDG_CONFIG_HOME")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(FERRY)
        .args(args)
        .args(["-P", &port, "--ca", w.ca.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_or_kill(&mut child, RUN_TIMEOUT).expect("ferry did not finish");
    let out = child.wait_with_output().unwrap();
    Out {
        status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// alice's shell in batch mode with `script` on stdin.
fn batch(w: &World, script: &str) -> Out {
    w.session("alice", ALICE_PW, script)
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

// ---------------------------------------------------------------------------------------------
// Item 9: downloads get the umask
// ---------------------------------------------------------------------------------------------

#[test]
fn r9_downloads_are_created_under_the_umask_never_wider() {
    let w = World::start();
    std::fs::create_dir_all(w.alice_home()).unwrap();
    std::fs::write(w.alice_home().join("a.txt"), b"secret").unwrap();
    std::fs::write(w.alice_home().join("b.txt"), b"plain").unwrap();
    std::fs::create_dir_all(w.alice_home().join("t")).unwrap();
    std::fs::write(w.alice_home().join("t/c.txt"), b"tree").unwrap();
    std::fs::write(w.alice_home().join("t/d.txt"), b"tree").unwrap();
    let target = w
        .server
        .target("alice")
        .replace(&format!(":{}", w.server.port()), "");

    oneshot_with_umask(&w, "077", &["get", &format!("{target}:a.txt")]).expect_ok();
    assert_eq!(mode(&w.local.join("a.txt")), 0o600, "umask 077");
    // The pipelined path of a recursive download, too.
    oneshot_with_umask(&w, "077", &["get", "-r", &format!("{target}:t")]).expect_ok();
    assert_eq!(mode(&w.local.join("t/c.txt")), 0o600, "umask 077, get -r");
    assert_eq!(mode(&w.local.join("t/d.txt")), 0o600, "umask 077, get -r");

    oneshot_with_umask(&w, "022", &["get", &format!("{target}:b.txt")]).expect_ok();
    assert_eq!(mode(&w.local.join("b.txt")), 0o644, "umask 022");
    oneshot_with_umask(&w, "027", &["get", "-f", &format!("{target}:b.txt")]).expect_ok();
    assert_eq!(mode(&w.local.join("b.txt")), 0o640, "umask 027, replacing");
}

// ---------------------------------------------------------------------------------------------
// Item 10: rm -r removes a symlink as a link
// ---------------------------------------------------------------------------------------------

#[test]
fn r10_rm_r_of_a_symlink_removes_the_link_and_the_targets_files_survive() {
    let w = World::start();
    let home = w.alice_home();
    std::fs::create_dir_all(home.join("precious/sub")).unwrap();
    std::fs::write(home.join("precious/one"), b"1").unwrap();
    std::fs::write(home.join("precious/sub/two"), b"2").unwrap();
    std::os::unix::fs::symlink("precious", home.join("link")).unwrap();
    std::fs::create_dir_all(home.join("dir")).unwrap();
    std::fs::write(home.join("dir/own"), b"3").unwrap();
    std::os::unix::fs::symlink("../precious", home.join("dir/inner")).unwrap();

    // The first line may fail without ending the batch, so the second runs either way.
    let out = batch(&w, "-rm -r link\nrm -r dir\n");

    // What the links pointed at is untouched, whatever else happened.
    assert_eq!(
        std::fs::read(home.join("precious/one")).ok(),
        Some(b"1".to_vec())
    );
    assert_eq!(
        std::fs::read(home.join("precious/sub/two")).ok(),
        Some(b"2".to_vec())
    );
    out.expect_ok();
    assert!(
        std::fs::symlink_metadata(home.join("link")).is_err(),
        "link gone"
    );
    assert!(!home.join("dir").exists(), "dir and its link gone");
}

// ---------------------------------------------------------------------------------------------
// Item 13: every error names its path and the flag that would help
// ---------------------------------------------------------------------------------------------

/// Runs `cd sub` and then `command` in a batch, so that the path in the error is one the
/// command line does not contain (the batch repeats the line before the error).
fn failing_in_sub(w: &World, command: &str) -> String {
    let out = batch(w, &format!("cd sub\n{command}\n"));
    out.expect_code(1);
    out.stderr.clone()
}

#[test]
fn r13_shell_errors_name_the_path_and_the_flag_that_helps() {
    let w = World::start();
    let home = w.alice_home();
    std::fs::create_dir_all(home.join("sub/full")).unwrap();
    std::fs::write(home.join("sub/x"), b"x").unwrap();
    std::fs::write(home.join("sub/y"), b"y").unwrap();
    std::fs::write(home.join("sub/full/z"), b"z").unwrap();
    std::fs::write(w.local.join("x"), b"local x").unwrap();

    let cases: &[(&str, &[&str])] = &[
        ("put x", &["/sub/x: already exists", "put -f"]),
        ("mkdir a/b/c", &["/sub/a/b/c: no such file", "mkdir -p"]),
        ("ls etc", &["/sub/etc: no such file"]),
        ("cd etc", &["/sub/etc: no such file"]),
        ("stat etc", &["/sub/etc: no such file"]),
        ("sha256 etc", &["/sub/etc: no such file"]),
        ("rm etc", &["/sub/etc: no such file"]),
        ("rm full", &["/sub/full: is a directory", "rm -r"]),
        ("rmdir full", &["/sub/full: directory not empty", "rm -r"]),
        ("rmdir x", &["/sub/x: not a directory"]),
        ("mv x y", &["/sub/y: already exists", "mv -f"]),
        ("mv nope y", &["/sub/nope: no such file"]),
        ("cp x y", &["/sub/y: already exists", "cp -f"]),
        ("put x nodir/x", &["/sub/nodir/x: no such file", "mkdir -p"]),
        ("get full", &["/sub/full: is a directory", "-r"]),
    ];
    for (command, wanted) in cases {
        let stderr = failing_in_sub(&w, command);
        for want in *wanted {
            assert!(
                stderr.contains(want),
                "{command}: {want:?} missing in {stderr:?}"
            );
        }
    }
    // `/` is the home: a path from the root that is missing says so.
    let out = batch(&w, "ls /etc\n");
    out.expect_code(1);
    assert!(out.stderr.contains("/ is your home"), "{out:#?}");
}

#[test]
fn r13_oneshot_errors_name_the_path_and_the_flag_that_helps() {
    let w = World::start();
    std::fs::create_dir_all(w.alice_home().join("sub")).unwrap();
    std::fs::write(w.alice_home().join("sub/x"), b"x").unwrap();
    std::fs::write(w.local.join("x"), b"local x").unwrap();
    let target = w
        .server
        .target("alice")
        .replace(&format!(":{}", w.server.port()), "");

    let out = oneshot(&w, &["put", "x", &format!("{target}:sub/")]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("/sub/x: already exists") && out.stderr.contains("put -f"),
        "{out:#?}"
    );
    let out = oneshot(&w, &["ls", &format!("{target}:sub/etc")]);
    out.expect_code(1);
    assert!(out.stderr.contains("/sub/etc: no such file"), "{out:#?}");
}

// ---------------------------------------------------------------------------------------------
// Item 20
// ---------------------------------------------------------------------------------------------

#[test]
fn r20_names_in_errors_are_escaped_once() {
    let w = World::start();
    let target = w
        .server
        .target("alice")
        .replace(&format!(":{}", w.server.port()), "");
    // A remote name: the server refuses the backslash, the client names the path.
    let out = oneshot(&w, &["get", &format!("{target}:back\\slash")]);
    out.expect_code(1);
    assert!(out.stderr.contains("/back\\\\slash: "), "{out:#?}");
    assert!(!out.stderr.contains("\\\\\\\\"), "escaped twice: {out:#?}");
    // A local name that does not exist.
    let out = oneshot(&w, &["put", "no\\such", &format!("{target}:")]);
    out.expect_code(1);
    assert!(out.stderr.contains("no\\\\such: "), "{out:#?}");
    assert!(!out.stderr.contains("\\\\\\\\"), "escaped twice: {out:#?}");
}

#[test]
fn r20_the_bidi_refusal_names_the_file() {
    let w = World::start();
    let name = "evil\u{202e}gpj.exe";
    std::fs::write(w.local.join(name), b"x").unwrap();
    let target = w
        .server
        .target("alice")
        .replace(&format!(":{}", w.server.port()), "");
    let out = oneshot(&w, &["put", name, &format!("{target}:")]);
    out.expect_code(1);
    assert!(
        out.stderr
            .contains("/evil\\u{202e}gpj.exe: invalid path: bidi control character"),
        "{out:#?}"
    );
    assert!(!out.stderr.contains('\u{202e}'), "printed raw: {out:#?}");
}

#[test]
fn r20_reget_says_where_it_resumed() {
    let w = World::start();
    std::fs::create_dir_all(w.alice_home()).unwrap();
    let data = random_file(&w.alice_home().join("big.bin"), 40_000, 9);
    std::fs::write(w.local.join(".big.bin.ferry-part"), &data[..12 * 1024]).unwrap();
    let out = batch(&w, "reget big.bin\n");
    out.expect_ok();
    assert!(
        out.stdout.contains("resumed at 12.0 KiB") && out.stdout.contains(&sha256_hex(&data)),
        "{out:#?}"
    );
    assert_eq!(std::fs::read(w.local.join("big.bin")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r20_reput_says_where_it_resumed() {
    // An upload cut off after some MiB leaves a kept partial on an in-process server; the real
    // binary then resumes it from the shell.
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = random_file(&dir.path().join("big.bin"), 8 << 20, 11);
    let mut conn = server.alice().await;
    let token = CancellationToken::new();
    conn.set_cancel(token.clone());
    let mut cancel = move |n: u64| {
        if n >= 2 << 20 {
            token.cancel();
        }
    };
    conn.put(&dir.path().join("big.bin"), "/big.bin", false, &mut cancel)
        .await
        .unwrap_err();
    conn.set_cancel(CancellationToken::new());
    let kept = conn.partial("/big.bin").await.unwrap();
    assert!(kept > 0, "nothing kept to resume");
    drop(conn);

    let (addr, ca, cwd) = (server.addr, server.ca.clone(), dir.path().to_path_buf());
    let out = tokio::task::spawn_blocking(move || {
        Ferry::new(&cwd)
            .env("FERRY_PASSWORD", "alice-pw")
            .stdin("reput big.bin\n")
            .run(&[
                "connect",
                &format!("alice@127.0.0.1:{}", addr.port()),
                "--ca",
                ca.to_str().unwrap(),
            ])
    })
    .await
    .unwrap();
    out.expect_ok();
    let at = format!("resumed at {}", ferry::client::format::human_bytes(kept));
    assert!(
        out.stdout.contains(&at) && out.stdout.contains(&sha256_hex(&data)),
        "{at:?} missing: {out:#?}"
    );
    assert_eq!(
        std::fs::read(server.home("alice").join("big.bin")).unwrap(),
        data
    );
}

#[test]
fn r20_df_without_a_quota_shows_the_usage_and_says_there_is_no_quota() {
    let w = World::start();
    std::fs::create_dir_all(w.alice_home().join("d")).unwrap();
    std::fs::write(w.alice_home().join("a"), vec![1u8; 1000]).unwrap();
    std::fs::write(w.alice_home().join("d/b"), vec![2u8; 23]).unwrap();
    let out = batch(&w, "df\n");
    out.expect_ok();
    assert!(out.stdout.contains("used:  1023 B in 2 files"), "{out:#?}");
    assert!(out.stdout.contains("quota: none"), "{out:#?}");
    assert!(!out.stdout.contains(" - "), "{out:#?}");
}

#[test]
fn r20_put_usage_line_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let out = Ferry::new(dir.path()).run(&["put"]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains("Usage: ferry put <LOCAL>... <USER@HOST:REMOTE>"),
        "{out:#?}"
    );
    let out = Ferry::new(dir.path()).run(&["put", "--help"]);
    out.expect_ok();
    assert!(
        out.stdout
            .contains("Usage: ferry put [OPTIONS] <LOCAL>... <USER@HOST:REMOTE>"),
        "{out:#?}"
    );
}

#[test]
fn r20_ls_a_is_documented() {
    let w = World::start();
    std::fs::create_dir_all(w.alice_home()).unwrap();
    std::fs::write(w.alice_home().join(".hidden"), b"h").unwrap();
    let out = batch(&w, "help ls\nls -a\n");
    out.expect_ok();
    assert!(out.stdout.contains("ls [-l|-1] [-a]"), "{out:#?}");
    assert!(out.stdout.contains(".hidden"), "{out:#?}");
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains("`ls [-l\\|-1] [-a]"),
        "README's shell table documents ls -a"
    );
    let out = Ferry::new(&w.local).run(&["ls", "--help"]);
    assert!(out.stdout.contains("-a"), "{out:#?}");
}

/// Files for the `-q` test: a few hundred, in two directories.
fn many_files(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir.join("inner")).unwrap();
    for i in 0..n {
        let sub = if i % 2 == 0 { "" } else { "inner/" };
        std::fs::write(dir.join(format!("{sub}f{i:04}")), i.to_string()).unwrap();
    }
}

#[test]
fn r20_quiet_recursive_transfers_print_only_the_summary() {
    let w = World::start();
    many_files(&w.local.join("up"), 300);
    let target = w
        .server
        .target("alice")
        .replace(&format!(":{}", w.server.port()), "");

    let out = oneshot(&w, &["put", "-r", "-q", "up", &format!("{target}:")]);
    out.expect_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{out:#?}");
    assert!(lines[0].starts_with("300 files"), "{out:#?}");

    let out = oneshot(&w, &["get", "-r", "-q", &format!("{target}:up"), "down"]);
    out.expect_ok();
    assert_eq!(out.stdout.lines().count(), 1, "{out:#?}");

    // The shell's put and get take -q too.
    let out = batch(&w, "put -r -q -f up\nget -r -q -f up down2\n");
    out.expect_ok();
    assert_eq!(out.stdout.lines().count(), 2, "{out:#?}");
    // Without -q every file has its line.
    let out = batch(&w, "put -r -f up\n");
    out.expect_ok();
    assert_eq!(out.stdout.lines().count(), 301, "{out:#?}");
}

#[test]
fn r20_get_p_keeps_the_servers_time_and_mode_and_put_p_explains() {
    let w = World::start();
    let home = w.alice_home();
    std::fs::create_dir_all(home.join("t")).unwrap();
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for (name, mode) in [("a.sh", 0o750), ("t/b.txt", 0o640), ("t/c.txt", 0o604)] {
        let p = home.join(name);
        std::fs::write(&p, name).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    let target = w
        .server
        .target("alice")
        .replace(&format!(":{}", w.server.port()), "");
    oneshot(&w, &["get", "-p", &format!("{target}:a.sh")]).expect_ok();
    let check = |p: &Path, want: u32| {
        assert_eq!(mode(p), want, "{}", p.display());
        let got = std::fs::metadata(p).unwrap().modified().unwrap();
        assert_eq!(got, when, "{}", p.display());
    };
    check(&w.local.join("a.sh"), 0o750);
    // The shell, recursive (pipelined).
    batch(&w, "get -r -p t\n").expect_ok();
    check(&w.local.join("t/b.txt"), 0o640);
    check(&w.local.join("t/c.txt"), 0o604);

    // put -p cannot keep them: it says so and what ferry does instead, and sends nothing.
    let out = oneshot(&w, &["put", "-p", "a.sh", &format!("{target}:copy.sh")]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("-p") && out.stderr.contains("mode 0600"),
        "{out:#?}"
    );
    assert!(!home.join("copy.sh").exists());
    let out = batch(&w, "put -p a.sh copy.sh\n");
    out.expect_code(2);
    assert!(out.stderr.contains("mode 0600"), "{out:#?}");
}
