//! Logging in from a terminal: a mistyped password is asked for again on the same
//! connection until the server closes it (issue 12, item 16), as ssh does; a password from
//! the environment or a file is tried once. The real binary on a real pseudo-terminal.

use std::process::Command;
use std::time::{Duration, Instant};

use rexpect::process::WaitStatus;
use rexpect::session::{PtySession, spawn_command};

use crate::cli::{ALICE_PW, FERRY, Ferry, World};

const EXPECT_MS: u64 = 30_000;

/// `ferry ls -1 -P PORT --ca CA alice@127.0.0.1:` on a pty, no password in the environment.
fn ls_on_a_terminal(w: &World) -> PtySession {
    let mut cmd = Command::new(FERRY);
    cmd.current_dir(&w.local)
        .env_remove("FERRY_PASSWORD")
        .env_remove("FERRY_LOG")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", &w.local)
        .args([
            "ls",
            "-1",
            "-P",
            &w.server.port().to_string(),
            "--ca",
            w.ca.to_str().unwrap(),
            "alice@127.0.0.1:",
        ]);
    spawn_command(cmd, Some(EXPECT_MS)).expect("cannot start ferry on a pty")
}

fn exit_code(p: &mut PtySession) -> i32 {
    match p.process().wait().unwrap() {
        WaitStatus::Exited(_, code) => code,
        other => panic!("ferry did not exit normally: {other:?}"),
    }
}

#[test]
fn one_typo_no_longer_ends_the_session_the_password_is_asked_again() {
    let w = World::start_with(&["--no-penalties"]);
    std::fs::create_dir_all(w.alice_home()).unwrap();
    std::fs::write(w.alice_home().join("hello.txt"), b"hi").unwrap();

    // Two typos, then the right password: one connection, and the listing arrives.
    let mut p = ls_on_a_terminal(&w);
    p.exp_string("alice@127.0.0.1's password: ").unwrap();
    p.send_line("typo-1").unwrap();
    p.exp_string("Permission denied, please try again.")
        .unwrap();
    p.exp_string("alice@127.0.0.1's password: ").unwrap();
    p.send_line("typo-2").unwrap();
    p.exp_string("Permission denied, please try again.")
        .unwrap();
    p.exp_string("alice@127.0.0.1's password: ").unwrap();
    p.send_line(ALICE_PW).unwrap();
    p.exp_string("hello.txt").unwrap();
    p.exp_eof().unwrap();
    assert_eq!(exit_code(&mut p), 0);

    // Three typos: the server (--max-auth-attempts 3) closes; no fourth prompt, status 3.
    let mut p = ls_on_a_terminal(&w);
    for i in 0..3 {
        p.exp_string("password: ").unwrap();
        p.send_line(&format!("wrong-{i}")).unwrap();
    }
    let (before, _) = p
        .exp_regex("authentication failed; the server closed the connection after 3 attempts")
        .unwrap();
    assert_eq!(
        before.matches("password: ").count(),
        0,
        "asked a fourth time: {before:?}"
    );
    p.exp_eof().unwrap();
    assert_eq!(exit_code(&mut p), 3);
}

#[test]
fn a_password_from_the_environment_that_fails_is_tried_once() {
    let w = World::start_with(&["--no-penalties", "--max-auth-attempts", "3"]);
    let started = Instant::now();
    let out = Ferry::new(&w.local).env("FERRY_PASSWORD", "wrong").run(&[
        "ls",
        "-P",
        &w.server.port().to_string(),
        "--ca",
        w.ca.to_str().unwrap(),
        "alice@127.0.0.1:",
    ]);
    out.expect_code(3);
    assert!(!out.stderr.contains("try again"), "{out:#?}");
    assert_eq!(
        out.stderr.matches("authentication failed").count(),
        1,
        "{out:#?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The server saw exactly one attempt.
    let log = w.server.stderr_so_far();
    assert_eq!(log.matches("auth_failed").count(), 1, "{log}");
}
