//! The interactive shell under a real pseudo-terminal (rexpect): the prompt, Tab completion
//! of commands, remote and local paths (and the cache forgetting a directory after a change;
//! completion is checked by what the completed command does, since the line editor redraws
//! only what changed),
//! progress bars on the terminal, Ctrl-C cancelling a transfer without ending the session,
//! persistent history, and Ctrl-D.

use std::process::Command;

use rexpect::process::WaitStatus;
use rexpect::session::{PtySession, spawn_command};

use crate::cli::{ALICE_PW, FERRY, World};
use crate::util::{names_in, random_file, sha256_hex};

/// Longest wait for any expected output.
const EXPECT_MS: u64 = 30_000;

/// `ferry connect` on a pty of 120x40 (rexpect leaves the size at 0x0, which no terminal
/// program sees in real life; `stty` sets it before `exec` hands the pty to ferry).
fn shell(w: &World, state: &std::path::Path) -> PtySession {
    let mut cmd = Command::new("sh");
    cmd.current_dir(&w.local)
        .env_remove("FERRY_LOG")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", &w.local)
        .env("XDG_STATE_HOME", state)
        .env("TERM", "xterm-256color")
        .env("FERRY_PASSWORD", ALICE_PW)
        .args([
            "-c",
            "stty cols 120 rows 40 && exec \"$0\" connect \"$1\" --ca \"$2\"",
            FERRY,
            &w.server.target("alice"),
            w.ca.to_str().unwrap(),
        ]);
    spawn_command(cmd, Some(EXPECT_MS)).expect("cannot start ferry on a pty")
}

#[test]
fn interactive_shell_prompt_completion_progress_ctrl_c_history_and_ctrl_d() {
    let w = World::start();
    std::fs::create_dir_all(w.alice_home().join("photos")).unwrap();
    let report = random_file(&w.alice_home().join("report-2026.bin"), 50_000, 61);
    std::fs::write(w.alice_home().join("photos/cat.jpg"), b"meow").unwrap();
    // Big enough that the transfer is still running when Ctrl-C comes; sparse, so cheap.
    let big = std::fs::File::create(w.local.join("local-upload.bin")).unwrap();
    big.set_len(8 << 30).unwrap();
    drop(big);
    let state = w.local.join("state");

    let mut p = shell(&w, &state);
    p.exp_string("ferry> ").unwrap();

    // A command name.
    p.send("he\t").unwrap();
    p.send_line("").unwrap();
    p.exp_string("quit | exit | bye").unwrap();
    p.exp_string("ferry> ").unwrap();

    // A remote file name: the server is asked, and the download verifies.
    p.send("get rep\t").unwrap();
    p.send_line("").unwrap();
    p.exp_string(&format!("sha256 {} verified", sha256_hex(&report)))
        .unwrap();
    p.exp_string("ferry> ").unwrap();
    assert_eq!(
        std::fs::read(w.local.join("report-2026.bin")).unwrap(),
        report
    );

    // A remote directory, then a name inside it.
    p.send("stat pho\t").unwrap();
    p.send("\t").unwrap();
    p.send_line("").unwrap();
    p.exp_string("path: /photos/cat.jpg").unwrap();
    p.exp_string("ferry> ").unwrap();

    // After mkdir the cached listing of / is forgotten, so the new name completes.
    p.send_line("mkdir newdir").unwrap();
    p.exp_string("ferry> ").unwrap();
    p.send("cd new\t").unwrap();
    p.send_line("").unwrap();
    p.exp_string("ferry> ").unwrap();
    p.send_line("pwd").unwrap();
    p.exp_string("/newdir").unwrap();
    p.exp_string("ferry> ").unwrap();

    // A local name, then a transfer long enough for a progress bar, then Ctrl-C.
    p.send("put local-up\t").unwrap();
    p.send_line("").unwrap();
    p.exp_string("ETA").unwrap();
    p.exp_string("MiB/s").unwrap();
    p.send_control('c').unwrap();
    p.exp_string("interrupted").unwrap();
    p.exp_string("ferry> ").unwrap();
    assert!(
        !w.alice_home().join("newdir/local-upload.bin").exists(),
        "nothing under the final name"
    );

    // The session survived the cancel.
    p.send_line("ls /").unwrap();
    p.exp_string("report-2026.bin").unwrap();
    p.exp_string("ferry> ").unwrap();

    // Ctrl-D ends the session with status 0 and the history is on disk.
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
    match p.process().wait().unwrap() {
        WaitStatus::Exited(_, code) => assert_eq!(code, 0),
        other => panic!("ferry ended with {other:?}"),
    }
    let history = std::fs::read_to_string(state.join("ferry/history")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.join("ferry/history"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(history.contains("get report-2026.bin"), "{history}");
    assert!(history.contains("mkdir newdir"), "{history}");
    // The cancelled upload is kept hidden for a reput, not under its name.
    assert_eq!(
        names_in(&w.alice_home()),
        [".ferry-partials", "newdir", "photos", "report-2026.bin"]
    );
    assert!(names_in(&w.alice_home().join("newdir")).is_empty());
}

/// `ferry connect` without --ca on a pty: the dev CA is unknown, so it asks.
fn tofu_shell(w: &World) -> PtySession {
    let mut cmd = Command::new("sh");
    cmd.current_dir(&w.local)
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", &w.local)
        .env("XDG_STATE_HOME", w.local.join("state"))
        .env("TERM", "xterm-256color")
        .env("FERRY_PASSWORD", ALICE_PW)
        .args([
            "-c",
            "stty cols 120 rows 40 && exec \"$0\" connect \"$1\"",
            FERRY,
            &w.server.target("alice"),
        ]);
    spawn_command(cmd, Some(EXPECT_MS)).expect("cannot start ferry on a pty")
}

#[test]
fn interactive_first_contact_asks_and_pins_on_yes() {
    let w = World::start();
    let chain = ferry::tls::load_certs(&w.ca.parent().unwrap().join("server.pem")).unwrap();
    let fp = ferry::tls::fingerprint(&chain[0]);
    let known = w.local.join(".config/ferry/known_hosts");

    // "no" refuses, pins nothing, exits 4.
    let mut p = tofu_shell(&w);
    p.exp_string(&fp).unwrap();
    p.exp_string("(yes/no)").unwrap();
    p.send_line("no").unwrap();
    p.exp_eof().unwrap();
    assert!(matches!(
        p.process().wait().unwrap(),
        WaitStatus::Exited(_, 4)
    ));
    assert!(!known.exists());

    // "yes" pins it and the session starts; the next time nobody is asked.
    let mut p = tofu_shell(&w);
    p.exp_string("(yes/no)").unwrap();
    p.send_line("yes").unwrap();
    p.exp_string("ferry> ").unwrap();
    p.send_line("quit").unwrap();
    p.exp_eof().unwrap();
    let pinned = std::fs::read_to_string(&known).unwrap();
    assert_eq!(pinned, format!("127.0.0.1:{} {fp}\n", w.server.port()));
    let mut p = tofu_shell(&w);
    p.exp_string("ferry> ").unwrap();
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
    assert!(matches!(
        p.process().wait().unwrap(),
        WaitStatus::Exited(_, 0)
    ));
}

#[test]
fn one_shot_on_a_terminal_with_q_draws_no_bar_and_ctrl_c_exits_130() {
    let w = World::start();
    let big = std::fs::File::create(w.local.join("big.bin")).unwrap();
    big.set_len(8 << 30).unwrap();
    drop(big);
    let mut cmd = Command::new("sh");
    cmd.current_dir(&w.local)
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", &w.local)
        .env("TERM", "xterm-256color")
        .env("FERRY_PASSWORD", ALICE_PW)
        .args([
            "-c",
            "stty cols 120 rows 40 && exec \"$0\" put -q big.bin \"$1\" -P \"$2\" --ca \"$3\"",
            FERRY,
            "alice@127.0.0.1:",
            &w.server.port().to_string(),
            w.ca.to_str().unwrap(),
        ]);
    let mut p = spawn_command(cmd, Some(EXPECT_MS)).unwrap();
    // Long past the moment after which a bar would show.
    let home = w.alice_home();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while crate::util::names_in(&home).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    p.send_control('c').unwrap();
    let rest = p.exp_eof().unwrap();
    assert!(rest.contains("interrupted"), "{rest:?}");
    assert!(!rest.contains("ETA") && !rest.contains("MiB/s"), "{rest:?}");
    assert!(matches!(
        p.process().wait().unwrap(),
        WaitStatus::Exited(_, 130)
    ));
    assert!(!home.join("big.bin").exists());
}

/// `sh -c 'stty …; exec ferry ARGS…'` on a pty in `cwd`, without FERRY_PASSWORD.
fn on_pty(cwd: &std::path::Path, args: &[&str]) -> PtySession {
    let mut cmd = Command::new("sh");
    cmd.current_dir(cwd)
        .env_remove("FERRY_LOG")
        .env_remove("FERRY_PASSWORD")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", cwd)
        .env("TERM", "xterm-256color")
        .arg("-c")
        .arg("stty cols 120 rows 40 && exec \"$0\" \"$@\"")
        .arg(FERRY)
        .args(args);
    spawn_command(cmd, Some(EXPECT_MS)).expect("cannot start ferry on a pty")
}

#[test]
fn passwords_are_asked_on_the_terminal_without_echo() {
    let w = World::start();
    let users = w.local.join("prompt-users.toml");
    let users = users.to_str().unwrap();

    // `user add` asks twice; on a mismatch it says so and asks both again.
    let mut p = on_pty(&w.local, &["user", "add", "carol", "--users", users]);
    p.exp_string("New password: ").unwrap();
    p.send_line("first-secret-1").unwrap();
    p.exp_string("Retype new password: ").unwrap();
    p.send_line("second-secret-2").unwrap();
    let said = p.exp_string("New password: ").unwrap();
    assert!(
        said.contains("passwords do not match; try again"),
        "{said:?}"
    );
    // A short one is refused with the reason, and asked again.
    p.send_line("tiny-pw").unwrap();
    let said = p.exp_string("New password: ").unwrap();
    assert!(said.contains("shorter than 12 characters"), "{said:?}");
    p.send_line("carol-secret-3").unwrap();
    p.exp_string("Retype new password: ").unwrap();
    p.send_line("carol-secret-3").unwrap();
    let rest = p.exp_eof().unwrap();
    for secret in [
        "first-secret-1",
        "second-secret-2",
        "tiny-pw",
        "carol-secret-3",
    ] {
        assert!(
            !rest.contains(secret) && !said.contains(secret),
            "a password was echoed: {rest:?}"
        );
    }
    assert!(matches!(
        p.process().wait().unwrap(),
        WaitStatus::Exited(_, 0)
    ));
    let db = ferry::users::UserDb::load(std::path::Path::new(users)).unwrap();
    let hash = &db.get("carol").expect("carol was added").password_hash;
    assert!(ferry::users::verify_password(
        hash,
        &ferry::users::Password::new("carol-secret-3".into())
    ));

    // Three mismatches in a row give up and add nothing.
    let mut p = on_pty(&w.local, &["user", "add", "dave", "--users", users]);
    for i in 0..3 {
        p.exp_string("New password: ").unwrap();
        p.send_line(&format!("dave-secret-{i}-a")).unwrap();
        p.exp_string("Retype new password: ").unwrap();
        p.send_line(&format!("dave-secret-{i}-b")).unwrap();
    }
    let rest = p.exp_eof().unwrap();
    assert!(rest.contains("passwords do not match"), "{rest:?}");
    assert!(matches!(p.process().wait().unwrap(), WaitStatus::Exited(_, c) if c != 0));
    assert!(!std::fs::read_to_string(users).unwrap().contains("dave"));

    // `connect` without FERRY_PASSWORD asks once, without echo.
    let target = w.server.target("alice");
    let mut p = on_pty(
        &w.local,
        &["connect", &target, "--ca", w.ca.to_str().unwrap()],
    );
    p.exp_string("alice@127.0.0.1's password: ").unwrap();
    p.send_line(ALICE_PW).unwrap();
    let before_prompt = p.exp_string("ferry> ").unwrap();
    assert!(!before_prompt.contains(ALICE_PW), "{before_prompt:?}");
    p.send_line("pwd").unwrap();
    p.exp_string("/").unwrap();
    p.send_line("quit").unwrap();
    p.exp_eof().unwrap();
}

#[test]
fn recursive_transfer_on_a_terminal_shows_an_overall_bar_and_the_current_file() {
    let w = World::start();
    let tree = w.local.join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::fs::write(tree.join("c-small.txt"), b"small").unwrap();
    for name in ["a-big.bin", "b-big.bin"] {
        // Sparse: cheap to make, long enough to transfer that the bars show.
        let f = std::fs::File::create(tree.join(name)).unwrap();
        f.set_len(8 << 30).unwrap();
    }
    let state = w.local.join("state");
    let mut p = shell(&w, &state);
    p.exp_string("ferry> ").unwrap();
    p.send_line("put -r tree").unwrap();
    // The overall bar (files done of all, bytes, rate, ETA) and the current file's name.
    p.exp_string("0/3 files").unwrap();
    p.exp_string("ETA").unwrap();
    p.exp_string("a-big.bin").unwrap();
    p.send_control('c').unwrap();
    p.exp_string("INTERRUPTED").unwrap();
    p.exp_string("ferry> ").unwrap();
    let remote = w.alice_home().join("tree");
    for name in ["a-big.bin", "b-big.bin"] {
        assert!(!remote.join(name).exists(), "{name} under its final name");
    }
    p.send_line("quit").unwrap();
    p.exp_eof().unwrap();
}
