//! Ctrl-C (SIGINT to the real binary) in the middle of a transfer, and resuming afterwards.
//!
//! To interrupt at a known point without slowing anything down artificially, the test waits
//! until the receiving side's hidden partial holds half the file, stops the client
//! (SIGSTOP), queues SIGINT, and lets it continue (SIGCONT): the client then handles the
//! SIGINT exactly as it would a Ctrl-C. Every process is signalled by its own PID.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::{ALICE_PW, FERRY, Ferry, World, wait_or_kill};
use crate::util::{random_file, sha256_hex};

const MIB: u64 = 1024 * 1024;
const SIZE: u64 = 64 * MIB;
/// Interrupt once the receiver holds at least this much.
const HALF: u64 = 32 * MIB;
const WAIT: Duration = Duration::from_secs(60);

/// Starts `ferry ARGS...` in the local dir (alice's password set), output piped.
fn spawn(w: &World, args: &[&str]) -> Child {
    Command::new(FERRY)
        .current_dir(&w.local)
        .env_remove("FERRY_LOG")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_STATE_HOME")
        .env("HOME", &w.local)
        .env("FERRY_PASSWORD", ALICE_PW)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start ferry")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// Size of the largest file in `dir` (0 if none or missing).
fn largest_in(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Waits until `size()` reaches `HALF`, then delivers SIGINT as described above; returns the
/// exit code and stderr.
fn interrupt_at_half(mut child: Child, size: impl Fn() -> u64) -> (Option<i32>, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        if size() >= HALF {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("ferry ended before the interrupt ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "transfer never reached half");
        thread::sleep(Duration::from_millis(1));
    }
    signal(&child, "-STOP");
    signal(&child, "-INT");
    signal(&child, "-CONT");
    let stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let mut stderr = stderr;
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = wait_or_kill(&mut child, WAIT).expect("ferry did not end after SIGINT");
    (status.code(), reader.join().unwrap())
}

fn port_ca(w: &World) -> (String, String) {
    (
        w.server.port().to_string(),
        w.ca.to_str().unwrap().to_string(),
    )
}

fn json_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[test]
fn sigint_cancels_an_upload_cleanly_and_reput_sends_only_the_rest() {
    let w = World::start();
    let data = random_file(&w.local.join("big.bin"), SIZE as usize, 51);
    let (port, ca) = port_ca(&w);
    let home = w.alice_home();
    let partials = home.join(".ferry-partials");
    let child = spawn(
        &w,
        &[
            "put",
            "big.bin",
            "alice@127.0.0.1:",
            "-P",
            &port,
            "--ca",
            &ca,
        ],
    );
    // While it arrives the upload is a hidden `.ferry-tmp.*` file in the home.
    let (code, stderr) = interrupt_at_half(child, || largest_in(&home));
    assert_eq!(code, Some(130), "interrupted: {stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        !home.join("big.bin").exists(),
        "nothing under the final name"
    );
    let kept = largest_in(&partials);
    assert!(kept >= HALF, "the server keeps the part: {kept}");

    // reput (put -a): compares the prefix digests, sends the rest, verifies the whole.
    let out = Ferry::new(&w.local).env("FERRY_PASSWORD", ALICE_PW).run(&[
        "put",
        "-a",
        "--json",
        "big.bin",
        "alice@127.0.0.1:",
        "-P",
        &port,
        "--ca",
        &ca,
    ]);
    out.expect_ok();
    let v = json_of(&out.stdout);
    let f = &v["files"][0];
    assert_eq!(f["sha256"], sha256_hex(&data).as_str());
    assert_eq!(f["size"], SIZE);
    let resumed = f["resumed_from"].as_u64().unwrap();
    assert!(resumed >= HALF, "{v}");
    assert!(
        SIZE - resumed <= SIZE / 2,
        "far fewer bytes the second time: {v}"
    );
    assert_eq!(std::fs::read(home.join("big.bin")).unwrap(), data);
}

#[test]
fn sigint_in_a_batch_cancels_the_download_ends_the_batch_and_reget_resumes() {
    let w = World::start();
    std::fs::create_dir_all(w.alice_home()).unwrap();
    let data = random_file(&w.alice_home().join("big.bin"), SIZE as usize, 52);
    let (port, ca) = port_ca(&w);
    let batch = w.local.join("cmds");
    std::fs::write(&batch, "get big.bin\nmkdir after\n").unwrap();
    let target = format!("alice@127.0.0.1:{port}");
    let partial: PathBuf = w.local.join(".big.bin.ferry-part");
    let child = spawn(
        &w,
        &[
            "connect",
            &target,
            "--ca",
            &ca,
            "-b",
            batch.to_str().unwrap(),
        ],
    );
    let (code, stderr) = interrupt_at_half(child, || {
        std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0)
    });
    assert_eq!(code, Some(130), "interrupted: {stderr}");
    assert!(
        !w.local.join("big.bin").exists(),
        "nothing under the final name"
    );
    assert!(!w.alice_home().join("after").exists(), "the batch stopped");
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept >= HALF, "{kept}");

    let out = Ferry::new(&w.local)
        .env("FERRY_PASSWORD", ALICE_PW)
        .stdin("reget big.bin\n")
        .run(&["connect", &target, "--ca", &ca]);
    out.expect_ok();
    assert!(
        out.stdout
            .contains(&format!("sha256 {} verified", sha256_hex(&data))),
        "{out:#?}"
    );
    assert_eq!(std::fs::read(w.local.join("big.bin")).unwrap(), data);
    assert!(!partial.exists());
}

#[test]
fn resume_onto_a_corrupt_prefix_is_refused_with_exit_5() {
    let w = World::start();
    std::fs::create_dir_all(w.alice_home()).unwrap();
    random_file(&w.alice_home().join("c.bin"), 2 * MIB as usize, 53);
    std::fs::write(w.local.join(".c.bin.ferry-part"), vec![0u8; MIB as usize]).unwrap();
    let (port, ca) = port_ca(&w);
    let out = Ferry::new(&w.local).env("FERRY_PASSWORD", ALICE_PW).run(&[
        "get",
        "-a",
        "alice@127.0.0.1:c.bin",
        "-P",
        &port,
        "--ca",
        &ca,
    ]);
    out.expect_code(5);
    assert!(!w.local.join("c.bin").exists());
}

#[test]
fn sigint_during_a_pipelined_recursive_put_leaves_only_whole_verified_files() {
    let w = World::start();
    let src = w.local.join("many");
    std::fs::create_dir(&src).unwrap();
    for i in 0..400 {
        random_file(&src.join(format!("f{i:03}")), 4096, 100 + i);
    }
    let (port, ca) = port_ca(&w);
    let dest = w.alice_home().join("many");
    let count = || {
        std::fs::read_dir(&dest)
            .map(|rd| rd.count() as u64)
            .unwrap_or(0)
    };
    let child = spawn(
        &w,
        &[
            "put",
            "-r",
            "many",
            "alice@127.0.0.1:",
            "-P",
            &port,
            "--ca",
            &ca,
        ],
    );
    // Reuse the size trigger with a count: stop once 50 files (of 400) are in.
    let (code, stderr) = interrupt_at_half(child, || count() * HALF / 50);
    assert_eq!(code, Some(130), "{stderr}");
    // Hidden `.ferry-` names are the server's temp files and kept partials, never final.
    let arrived: Vec<String> = crate::util::names_in(&dest)
        .into_iter()
        .filter(|n| !n.starts_with(".ferry-"))
        .collect();
    assert!(arrived.len() < 400, "finished before the interrupt");
    assert!(arrived.len() >= 50);
    for name in &arrived {
        assert_eq!(
            std::fs::read(dest.join(name)).unwrap(),
            std::fs::read(src.join(name)).unwrap(),
            "{name} is whole"
        );
    }
}
