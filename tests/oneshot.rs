//! The client for scripts: scp-style one-shots (`ferry get/put/ls`), `--json`, exit codes,
//! globs, recursive trees with odd names, and names planted by a hostile server. Real
//! `ferry serve` processes, the real binary, real files.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cli::{ALICE_PW, Ferry, Out, World};
use crate::util::{names_in, random_file, sha256_hex};

/// `ferry ARGS... -P PORT --ca CA` in the local dir with alice's password in the environment.
pub(crate) fn oneshot(w: &World, args: &[&str]) -> Out {
    let port = w.server.port().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["-P", &port, "--ca", w.ca.to_str().unwrap()]);
    Ferry::new(&w.local)
        .env("FERRY_PASSWORD", ALICE_PW)
        .run(&all)
}

fn json(out: &Out) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:#?}"))
}

/// Every file below `dir` as (relative path, contents), sorted; directories as (path/, []).
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                walk(base, &p, out);
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn oneshot_put_ls_get_with_json_digests() {
    let w = World::start();
    let data = random_file(&w.local.join("report.bin"), 70_000, 11);
    let digest = sha256_hex(&data);

    let out = oneshot(&w, &["put", "--json", "report.bin", "alice@127.0.0.1:"]);
    out.expect_ok();
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["files"][0]["sha256"], digest.as_str());
    assert_eq!(v["files"][0]["size"], 70_000);
    assert_eq!(v["files"][0]["destination"], "/report.bin");
    assert_eq!(v["files"][0]["verified"], true);
    assert_eq!(
        std::fs::read(w.alice_home().join("report.bin")).unwrap(),
        data
    );

    // Text mode: the one line that ends every transfer.
    std::fs::create_dir(w.alice_home().join("drops")).unwrap();
    let out = oneshot(&w, &["put", "report.bin", "alice@127.0.0.1:drops"]);
    out.expect_ok();
    assert!(
        out.stdout.contains(&format!("sha256 {digest} verified")),
        "{out:#?}"
    );
    assert_eq!(out.stderr, "", "no progress when stderr is not a terminal");
    assert!(w.alice_home().join("drops/report.bin").is_file());

    let out = oneshot(&w, &["ls", "--json", "alice@127.0.0.1:"]);
    out.expect_ok();
    let v = json(&out);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["drops", "report.bin"]);
    assert_eq!(v[1]["kind"], "file");
    assert_eq!(v[1]["size"], 70_000);
    assert_eq!(v[1]["path"], "/report.bin");

    // Plain ls: type, exact size, time, name; -l: human sizes; -1: names only.
    let out = oneshot(&w, &["ls", "alice@127.0.0.1:"]);
    out.expect_ok();
    let [kind, size, ..] = crate::cli::ls_line(&out.stdout, "report.bin");
    assert!(kind.starts_with('-'));
    assert_eq!(size, "70000");
    let out = oneshot(&w, &["ls", "-l", "alice@127.0.0.1:"]);
    assert!(out.stdout.contains("68.4 KiB"), "{out:#?}");
    assert!(out.stdout.contains("drops/"), "{out:#?}");
    let out = oneshot(&w, &["ls", "-1", "alice@127.0.0.1:"]);
    assert_eq!(out.stdout, "drops\nreport.bin\n");

    let out = oneshot(
        &w,
        &[
            "get",
            "--json",
            "alice@127.0.0.1:drops/report.bin",
            "copy.bin",
        ],
    );
    out.expect_ok();
    assert_eq!(json(&out)["files"][0]["sha256"], digest.as_str());
    assert_eq!(std::fs::read(w.local.join("copy.bin")).unwrap(), data);
}

#[test]
fn oneshot_exit_codes_and_json_failures() {
    let w = World::start();
    random_file(&w.local.join("a.bin"), 100, 12);
    oneshot(&w, &["put", "a.bin", "alice@127.0.0.1:"]).expect_ok();

    // 1: a remote error; with --json the failure is a JSON document too.
    let out = oneshot(&w, &["get", "--json", "alice@127.0.0.1:missing.bin"]);
    out.expect_code(1);
    let v = json(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(v["exit_code"], 1);
    assert!(!w.local.join("missing.bin").exists());
    // 1: no silent overwrite, on either side.
    oneshot(&w, &["put", "a.bin", "alice@127.0.0.1:"]).expect_code(1);
    let out = oneshot(&w, &["get", "alice@127.0.0.1:a.bin"]);
    out.expect_code(1);
    assert!(out.stderr.contains("already exists"), "{out:#?}");
    oneshot(&w, &["get", "-f", "alice@127.0.0.1:a.bin"]).expect_ok();

    // 2: usage (a remote spec without HOST:, a bad option, a malformed fingerprint).
    oneshot(&w, &["get", "just-a-file"]).expect_code(2);
    oneshot(&w, &["put", "a.bin"]).expect_code(2);
    oneshot(&w, &["ls", "--frobnicate", "alice@127.0.0.1:"]).expect_code(2);
    oneshot(
        &w,
        &["ls", "--accept-fingerprint", "nonsense", "alice@127.0.0.1:"],
    )
    .expect_code(2);

    // 3: authentication.
    let port = w.server.port().to_string();
    let out = Ferry::new(&w.local).env("FERRY_PASSWORD", "wrong").run(&[
        "ls",
        "-P",
        &port,
        "--ca",
        w.ca.to_str().unwrap(),
        "alice@127.0.0.1:",
    ]);
    out.expect_code(3);
    assert_eq!(out.stdout, "");

    // 4: nothing listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let out = Ferry::new(&w.local).env("FERRY_PASSWORD", ALICE_PW).run(&[
        "ls",
        "-P",
        &free,
        "--ca",
        w.ca.to_str().unwrap(),
        "alice@127.0.0.1:",
    ]);
    out.expect_code(4);
}

#[test]
fn password_file_is_read_and_the_environment_is_not_needed() {
    let w = World::start();
    let pw = w.local.join("pw.txt");
    std::fs::write(&pw, format!("{ALICE_PW}\n")).unwrap();
    let port = w.server.port().to_string();
    let run = |file: &Path| {
        Ferry::new(&w.local).run(&[
            "ls",
            "-P",
            &port,
            "--ca",
            w.ca.to_str().unwrap(),
            "--password-file",
            file.to_str().unwrap(),
            "alice@127.0.0.1:",
        ])
    };
    run(&pw).expect_ok();
    std::fs::write(&pw, "wrong\n").unwrap();
    run(&pw).expect_code(3);
    // No terminal, no FERRY_PASSWORD, no file: a clear failure, not a hang.
    let out = Ferry::new(&w.local).run(&[
        "ls",
        "-P",
        &port,
        "--ca",
        w.ca.to_str().unwrap(),
        "alice@127.0.0.1:",
    ]);
    out.expect_failure();
    assert!(out.stderr.contains("password"), "{out:#?}");
}

#[test]
fn globs_on_both_sides() {
    let w = World::start();
    for n in ["a.log", "b.log", "c.txt"] {
        random_file(&w.local.join(n), 1000, 13);
    }
    // put *.log logs/ (batch), the shell expands the glob itself.
    let out = w.session("alice", ALICE_PW, "mkdir logs\nput *.log logs/\n");
    out.expect_ok();
    assert_eq!(names_in(&w.alice_home().join("logs")), ["a.log", "b.log"]);
    assert!(out.stdout.contains("2 files"), "summary: {out:#?}");

    for n in ["2026-01.csv", "2026-02.csv", "2025-12.csv"] {
        std::fs::write(w.alice_home().join(n), n).unwrap();
    }
    let dest = w.local.join("got");
    std::fs::create_dir(&dest).unwrap();
    let out = w.session("alice", ALICE_PW, "get 2026-* got\nls 2026-*\n");
    out.expect_ok();
    assert_eq!(names_in(&dest), ["2026-01.csv", "2026-02.csv"]);
    assert_eq!(out.stdout.matches(".csv").count(), 4, "{out:#?}");

    // One-shot with a remote glob; several files need a directory.
    let out = oneshot(&w, &["get", "alice@127.0.0.1:logs/*.log", "single.log"]);
    out.expect_code(2);
    let out = oneshot(&w, &["get", "--json", "alice@127.0.0.1:logs/*.log", "got"]);
    out.expect_ok();
    assert_eq!(json(&out)["files"].as_array().unwrap().len(), 2);
    assert_eq!(
        names_in(&dest),
        ["2026-01.csv", "2026-02.csv", "a.log", "b.log"]
    );

    // No match is a failure, and the batch stops there.
    let out = w.session("alice", ALICE_PW, "get *.none\nmkdir after\n");
    out.expect_code(1);
    assert!(out.stderr.contains("no match"), "{out:#?}");
    assert!(!w.alice_home().join("after").exists());
    let out = oneshot(&w, &["put", "*.none", "alice@127.0.0.1:"]);
    out.expect_code(1);

    // A name with glob characters that exists as written is taken literally.
    std::fs::write(w.alice_home().join("report [draft].txt"), b"draft").unwrap();
    let out = w.session("alice", ALICE_PW, "get \"report [draft].txt\" got/\n");
    out.expect_ok();
    assert_eq!(
        std::fs::read(dest.join("report [draft].txt")).unwrap(),
        b"draft"
    );
    std::fs::remove_file(w.alice_home().join("report [draft].txt")).unwrap();

    // rm with a glob, sha256 of a file without downloading it.
    let out = w.session("alice", ALICE_PW, "rm 2026-*\nsha256 2025-12.csv\n");
    out.expect_ok();
    assert!(!w.alice_home().join("2026-01.csv").exists());
    assert_eq!(
        out.stdout,
        format!("{}  2025-12.csv\n", sha256_hex(b"2025-12.csv"))
    );
}

/// A local tree with names people really use.
fn odd_tree(root: &Path) {
    let dirs = [
        "with space",
        "ünïcødé 文件",
        "-dash dir",
        "empty",
        "nested/deeper/empty too",
    ];
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    random_file(&root.join("with space/a file.txt"), 3000, 21);
    random_file(&root.join("ünïcødé 文件/日本.bin"), 70_000, 22);
    random_file(&root.join("-dash dir/-rf"), 10, 23);
    random_file(&root.join("nested/deeper/x"), 0, 24);
    random_file(&root.join("top.txt"), 5, 25);
}

#[test]
fn recursive_put_and_get_reproduce_a_tree_with_odd_names_and_empty_dirs() {
    let w = World::start();
    let src = w.local.join("src");
    odd_tree(&src);

    let out = w.session("alice", ALICE_PW, "put -r src backup\n");
    out.expect_ok();
    assert!(
        out.stdout.contains("5 files") && out.stdout.contains("all verified"),
        "summary line: {out:#?}"
    );
    assert_eq!(tree(&w.alice_home().join("backup")), tree(&src));

    // And back, with the one-shot, into an existing directory.
    let dest = w.local.join("restore");
    std::fs::create_dir(&dest).unwrap();
    let out = oneshot(
        &w,
        &["get", "-r", "--json", "alice@127.0.0.1:backup", "restore"],
    );
    out.expect_ok();
    let v = json(&out);
    assert_eq!(v["files"].as_array().unwrap().len(), 5, "{v}");
    assert_eq!(v["failed"].as_array().unwrap().len(), 0, "{v}");
    for f in v["files"].as_array().unwrap() {
        let local = PathBuf::from(f["destination"].as_str().unwrap());
        let data = std::fs::read(w.local.join(&local)).unwrap();
        assert_eq!(f["sha256"], sha256_hex(&data).as_str());
    }
    assert_eq!(tree(&dest.join("backup")), tree(&src));

    // Without -r a directory is refused; a second get -r refuses to overwrite, file by file,
    // and says so in its exit status.
    w.session("alice", ALICE_PW, "get backup restore\n")
        .expect_code(1);
    let out = oneshot(&w, &["get", "-r", "alice@127.0.0.1:backup", "restore"]);
    out.expect_code(1);
    assert!(out.stdout.contains("5 FAILED"), "{out:#?}");
}

#[test]
fn a_local_name_with_a_newline_is_refused_cleanly_and_the_rest_goes() {
    let w = World::start();
    let src = w.local.join("src");
    std::fs::create_dir(&src).unwrap();
    random_file(&src.join("good.txt"), 100, 31);
    random_file(&src.join("bad\nname.txt"), 100, 32);
    random_file(&src.join("esc\x1b[2J.txt"), 100, 33);
    let out = oneshot(&w, &["put", "-r", "src", "alice@127.0.0.1:"]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("bad\\nname.txt") && out.stderr.contains("esc\\u{1b}[2J"),
        "escaped names: {out:#?}"
    );
    assert!(!out.stderr.contains('\x1b') && !out.stdout.contains('\x1b'));
    assert!(
        out.stdout.contains("1 file") && out.stdout.contains("2 FAILED"),
        "{out:#?}"
    );
    assert_eq!(names_in(&w.alice_home().join("src")), ["good.txt"]);
}

#[test]
fn recursive_get_refuses_hostile_server_names_and_stays_inside_the_target() {
    let w = World::start();
    // Names a hostile (or careless) server could send, planted straight into the home on
    // disk: ferry's own server would never create them. ('/' cannot be in a name on disk;
    // the unit test of check_name covers it.)
    let evil = w.alice_home().join("evil");
    std::fs::create_dir_all(&evil).unwrap();
    std::fs::write(evil.join("ok.txt"), b"fine").unwrap();
    for name in [
        "..\\..\\escape.txt",
        "C:escape.txt",
        "new\nline",
        "esc\x1b]0;pwned\x07",
    ] {
        std::fs::write(evil.join(name), b"evil").unwrap();
    }
    std::fs::create_dir(evil.join("sub")).unwrap();
    std::fs::write(evil.join("sub/inner.txt"), b"inner").unwrap();

    let target = w.local.join("target");
    std::fs::create_dir(&target).unwrap();
    let before_local = names_in(&w.local);
    let out = oneshot(&w, &["get", "-r", "alice@127.0.0.1:evil", "target"]);
    out.expect_code(1);
    assert!(
        out.stdout.contains("2 files") && out.stdout.contains("4 FAILED"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("refused name"), "{out:#?}");
    assert!(
        !out.stderr.contains('\x1b') && !out.stderr.contains('\x07'),
        "{out:#?}"
    );
    assert_eq!(
        tree(&target),
        [
            ("evil/".to_string(), vec![]),
            ("evil/ok.txt".to_string(), b"fine".to_vec()),
            ("evil/sub/".to_string(), vec![]),
            ("evil/sub/inner.txt".to_string(), b"inner".to_vec()),
        ]
    );
    assert_eq!(
        names_in(&w.local),
        before_local,
        "nothing beside the target"
    );

    // A symlink already in the local target is not written through.
    let outside = w.local.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let t2 = w.local.join("t2");
    std::fs::create_dir_all(t2.join("evil")).unwrap();
    std::os::unix::fs::symlink(&outside, t2.join("evil/sub")).unwrap();
    let out = oneshot(&w, &["get", "-r", "-f", "alice@127.0.0.1:evil", "t2"]);
    out.expect_code(1);
    assert!(names_in(&outside).is_empty(), "wrote through a symlink");
    assert!(t2.join("evil/ok.txt").is_file());

    // ls shows such names escaped.
    let out = oneshot(&w, &["ls", "alice@127.0.0.1:evil"]);
    out.expect_ok();
    assert!(out.stdout.contains("new\\nline"), "{out:#?}");
    assert!(!out.stdout.contains('\x1b'));
}

#[test]
fn shell_mkdir_p_rm_r_cp_stat_json_and_df() {
    let w = World::start();
    let data = random_file(&w.local.join("f.bin"), 5000, 41);
    let script = "\
        mkdir -p a/b/c\n\
        put f.bin a/b/c\n\
        cp a/b/c/f.bin copy.bin\n\
        stat --json copy.bin\n\
        df\n";
    let out = w.session("alice", ALICE_PW, script);
    out.expect_ok();
    assert_eq!(
        std::fs::read(w.alice_home().join("copy.bin")).unwrap(),
        data
    );
    let digest = sha256_hex(&data);
    assert_eq!(
        out.stdout
            .matches(&format!("sha256 {digest} verified"))
            .count(),
        2
    );
    let start = out.stdout.find('{').unwrap();
    let end = out.stdout.find("\n}").unwrap() + 2;
    let v: Value = serde_json::from_str(&out.stdout[start..end]).unwrap();
    assert_eq!(v["path"], "/copy.bin");
    assert_eq!(v["size"], 5000);
    assert!(out.stdout.contains("disk:"), "{out:#?}");

    // rm without -r refuses a directory; rm -r takes the tree.
    w.session("alice", ALICE_PW, "rm a\n").expect_code(1);
    w.session("alice", ALICE_PW, "rm -r a\n").expect_ok();
    assert_eq!(names_in(&w.alice_home()), ["copy.bin"]);
}

/// The measurement of issue 4: 1,000 files of 4 KiB up with `put -r` and down with `get -r`,
/// through the real binary and a real server. Ignored by default (it measures, the suite
/// tests); run it with `cargo test --release --test tests -- --ignored thousand --nocapture`.
#[test]
#[ignore]
fn thousand_small_files_put_r_and_get_r_files_per_second() {
    let w = World::start();
    let src = w.local.join("many");
    std::fs::create_dir(&src).unwrap();
    for i in 0..1000 {
        random_file(&src.join(format!("f{i:04}")), 4096, 1000 + i);
    }
    let rate = |out: &Out| -> f64 {
        let v = json(out);
        assert_eq!(v["files"].as_array().unwrap().len(), 1000, "{v}");
        1000.0 / v["seconds"].as_f64().unwrap()
    };
    let up = oneshot(&w, &["put", "-r", "--json", "many", "alice@127.0.0.1:"]);
    up.expect_ok();
    let down = oneshot(&w, &["get", "-r", "--json", "alice@127.0.0.1:many", "back"]);
    down.expect_ok();
    assert_eq!(tree(&w.local.join("back")), tree(&src));
    println!(
        "1000 x 4 KiB: put -r {:.0} files/s, get -r {:.0} files/s",
        rate(&up),
        rate(&down)
    );
}

/// 300 small files `f000.txt`…`f299.txt` under `dir`.
fn three_hundred(dir: &Path) -> Vec<Vec<u8>> {
    std::fs::create_dir_all(dir).unwrap();
    (0..300)
        .map(|i| random_file(&dir.join(format!("f{i:03}.txt")), 4096, 700 + i))
        .collect()
}

fn count(v: &Value, key: &str) -> usize {
    v[key]
        .as_array()
        .map(Vec::len)
        .or_else(|| v[key].as_u64().map(|n| n as usize))
        .unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// The verified files of a `-e --json` report of the 300 files that stopped at one failure
/// with something skipped; every file is accounted for exactly once.
#[track_caller]
fn stopped_once(v: &Value) -> usize {
    let (files, failed, skipped) = (count(v, "files"), count(v, "failed"), count(v, "skipped"));
    assert_eq!(failed, 1, "{}", v["error"]);
    assert!(skipped > 0, "nothing was skipped: {}", v["error"]);
    assert_eq!(files + failed + skipped, 300, "{}", v["error"]);
    files
}

#[test]
fn fail_fast_stops_at_the_first_failed_file_both_ways() {
    let w = World::start();
    let data = three_hundred(&w.local.join("src"));
    let remote = w.alice_home().join("src");
    // The remote tree with only a file in the way of f010.txt.
    let fresh_remote = || {
        let _ = std::fs::remove_dir_all(&remote);
        std::fs::create_dir_all(&remote).unwrap();
        std::fs::write(remote.join("f010.txt"), b"already here").unwrap();
    };
    fresh_remote();

    // Pipelined upload: the failure stops everything not yet started.
    let out = oneshot(
        &w,
        &["put", "-r", "-e", "--json", "src", "alice@127.0.0.1:"],
    );
    out.expect_code(1);
    let v = json(&out);
    let files = stopped_once(&v);
    assert!(
        v["failed"][0]["source"]
            .as_str()
            .unwrap()
            .ends_with("f010.txt"),
        "{}",
        v["error"]
    );
    assert_eq!(
        std::fs::read(remote.join("f010.txt")).unwrap(),
        b"already here"
    );
    let names = names_in(&remote);
    assert_eq!(
        names.len(),
        files + 1,
        "only verified files arrived: {names:?}"
    );
    for n in &names {
        assert!(
            n.starts_with('f') && n.ends_with(".txt"),
            "stray file {n:?}"
        );
        let i: usize = n[1..4].parse().unwrap();
        if i != 10 {
            assert_eq!(std::fs::read(remote.join(n)).unwrap(), data[i], "{n}");
        }
    }

    // One at a time (resume mode): exactly the ten before the failure arrive.
    fresh_remote();
    let out = oneshot(&w, &["put", "-r", "-e", "-a", "src", "alice@127.0.0.1:"]);
    out.expect_code(1);
    assert!(
        out.stdout.contains("10 files (40.0 KiB)")
            && out
                .stdout
                .contains("289 not transferred (stopped at the first failure)"),
        "{out:#?}"
    );
    assert_eq!(names_in(&remote).len(), 11);

    // Without -e every other file still goes.
    fresh_remote();
    let out = oneshot(&w, &["put", "-r", "--json", "src", "alice@127.0.0.1:"]);
    out.expect_code(1);
    let v = json(&out);
    assert_eq!(
        (count(&v, "failed"), count(&v, "skipped")),
        (1, 0),
        "{}",
        v["error"]
    );
    assert_eq!(names_in(&remote).len(), 300);

    // Downloads: a local file in the way stops the pipelined get.
    let back = w.local.join("back");
    std::fs::create_dir_all(back.join("src")).unwrap();
    std::fs::write(back.join("src/f005.txt"), b"mine").unwrap();
    let out = oneshot(
        &w,
        &["get", "-r", "-e", "--json", "alice@127.0.0.1:src", "back"],
    );
    out.expect_code(1);
    let files = stopped_once(&json(&out));
    assert_eq!(std::fs::read(back.join("src/f005.txt")).unwrap(), b"mine");
    let names = names_in(&back.join("src"));
    assert_eq!(
        names.len(),
        files + 1,
        "only verified files arrived: {names:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// USER@HOST:PORT:PATH and the README's examples (issue 12, item 14)
// ---------------------------------------------------------------------------------------------

#[test]
fn user_host_port_path_goes_to_that_port_and_never_writes_a_file_named_port_colon() {
    let w = World::start();
    random_file(&w.local.join("f.bin"), 1000, 31);
    std::fs::create_dir_all(w.alice_home().join("dir")).unwrap();
    let port = w.server.port();
    let ca = w.ca.to_str().unwrap();
    let spec = format!("alice@127.0.0.1:{port}:dir/");
    let run = |args: &[&str]| {
        Ferry::new(&w.local)
            .env("FERRY_PASSWORD", ALICE_PW)
            .run(args)
    };

    // Without -P: the port in the spec is used, the file lands in dir/.
    run(&["put", "--ca", ca, "f.bin", &spec]).expect_ok();
    assert!(w.alice_home().join("dir/f.bin").is_file());
    assert_eq!(
        names_in(&w.alice_home()),
        ["dir"],
        "no file named {port}:dir"
    );
    let out = run(&["ls", "-1", "--ca", ca, &spec]);
    out.expect_ok();
    assert_eq!(out.stdout, "f.bin\n");
    run(&[
        "get",
        "--ca",
        ca,
        &format!("alice@127.0.0.1:{port}:dir/f.bin"),
        "back.bin",
    ])
    .expect_ok();

    // -P saying another port: refused with the right form, nothing written anywhere.
    let out = run(&["put", "-P", "1", "--ca", ca, "f.bin", &spec]);
    out.expect_code(2);
    assert!(out.stderr.contains("-P 1 alice@127.0.0.1:dir/"), "{out:#?}");
    // Digits that are no port: refused, showing both ways to write it.
    let out = run(&["put", "--ca", ca, "f.bin", "alice@127.0.0.1:99999:dir/"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("-P PORT") && out.stderr.contains("alice@127.0.0.1:./99999:dir/"),
        "{out:#?}"
    );
    assert_eq!(names_in(&w.alice_home()), ["dir"]);
}

/// The lines of the README's fenced block that follows `heading`.
fn readme_block(heading: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = &readme[readme.find(heading).expect("heading in README")..];
    let start = after.find("```sh\n").unwrap() + "```sh\n".len();
    let end = start + after[start..].find("```").unwrap();
    after[start..end]
        .lines()
        .map(str::to_string)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

#[test]
fn the_readme_one_shot_examples_work_as_written() {
    let w = World::start();
    let port = w.server.port().to_string();
    // `files.example.org` and `work` are aliases of the test server (address, port, CA), so
    // each line runs unchanged; only a literal `-P 8443` is pointed at the test server.
    let xdg = w.local.join(".config/ferry");
    std::fs::create_dir_all(&xdg).unwrap();
    let mut config = String::new();
    for name in ["\"files.example.org\"", "work"] {
        config.push_str(&format!(
            "[hosts.{name}]\naddress = \"127.0.0.1\"\nport = {port}\nuser = \"alice\"\n\
             ca = \"{}\"\n\n",
            w.ca.display()
        ));
    }
    std::fs::write(xdg.join("config.toml"), config).unwrap();
    // What the examples expect to find.
    random_file(&w.local.join("build.tar.gz"), 5000, 41);
    std::fs::create_dir_all(w.local.join("site/css")).unwrap();
    random_file(&w.local.join("site/index.html"), 300, 42);
    random_file(&w.local.join("site/css/a.css"), 200, 43);
    let home = w.alice_home();
    std::fs::create_dir_all(home.join("drops")).unwrap();
    std::fs::create_dir_all(home.join("logs")).unwrap();
    std::fs::create_dir_all(home.join("photos/2026")).unwrap();
    random_file(&home.join("logs/2026-01.log"), 100, 44);
    random_file(&home.join("logs/2026-02.log"), 100, 45);
    random_file(&home.join("logs/2025-12.log"), 100, 46);
    random_file(&home.join("photos/2026/a.jpg"), 1000, 47);
    std::fs::create_dir_all(w.local.join("logs")).unwrap();
    std::fs::create_dir_all(w.local.join("backup")).unwrap();

    let lines = readme_block("### One-shots for scripts");
    assert!(lines.len() >= 5, "{lines:?}");
    for line in &lines {
        let words = shlex::split(line).unwrap_or_else(|| panic!("cannot split {line:?}"));
        assert_eq!(words[0], "ferry", "{line}");
        let args: Vec<String> = words[1..]
            .iter()
            .map(|a| if a == "8443" { port.clone() } else { a.clone() })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = Ferry::new(&w.local)
            .env("FERRY_PASSWORD", ALICE_PW)
            .run(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "README line `{line}` failed: {out:#?}"
        );
    }
    assert!(home.join("drops/build.tar.gz").is_file());
    assert!(home.join("www/css/a.css").is_file());
    assert!(w.local.join("logs/2026-01.log").is_file());
    assert!(!w.local.join("logs/2025-12.log").exists());
    assert!(w.local.join("backup/photos/2026/a.jpg").is_file());
}

// ---------------------------------------------------------------------------------------------
// --json ends with one JSON object, failures included (issue 12, item 19)
// ---------------------------------------------------------------------------------------------

#[test]
fn json_prints_one_object_on_connection_tls_auth_and_usage_failures() {
    // Eighteen failures from one address would otherwise lock it out.
    let w = World::start_with(&["--no-penalties"]);
    let port = w.server.port().to_string();
    let ca = w.ca.to_str().unwrap().to_string();
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let other = tempfile::tempdir().unwrap();
    let other_ca = ferry::certs::generate(other.path(), &[], false)
        .unwrap()
        .paths
        .ca_cert;
    let other_ca = other_ca.to_str().unwrap();
    random_file(&w.local.join("up.bin"), 100, 51);

    // (what, password, arguments after the subcommand's --json, exit code, meaning)
    let cases: Vec<(&str, &str, Vec<&str>, i64, &str)> = vec![
        (
            "connection refused",
            ALICE_PW,
            vec!["-P", &free, "--ca", &ca],
            4,
            "connection or TLS",
        ),
        (
            "unknown certificate, nobody to ask",
            ALICE_PW,
            vec!["-P", &port],
            4,
            "connection or TLS",
        ),
        (
            "a CA that did not issue it",
            ALICE_PW,
            vec!["-P", &port, "--ca", other_ca],
            4,
            "connection or TLS",
        ),
        (
            "wrong password",
            "wrong",
            vec!["-P", &port, "--ca", &ca],
            3,
            "authentication failed",
        ),
        (
            "port that is no port",
            ALICE_PW,
            vec!["--ca", &ca],
            2,
            "usage",
        ),
        (
            "an option clap does not know",
            ALICE_PW,
            vec!["--frobnicate", "-P", &port, "--ca", &ca],
            2,
            "usage",
        ),
    ];
    for (what, password, extra, code, meaning) in &cases {
        for cmd in ["get", "put", "ls"] {
            let remote = if *what == "port that is no port" {
                "alice@127.0.0.1:99999:x".to_string()
            } else {
                "alice@127.0.0.1:x".to_string()
            };
            let mut args = vec![cmd, "--json"];
            args.extend(extra.iter().copied());
            if cmd == "put" {
                args.push("up.bin");
            }
            args.push(&remote);
            let out = Ferry::new(&w.local)
                .env("FERRY_PASSWORD", password)
                .run(&args);
            assert_eq!(
                out.status.code(),
                Some(*code as i32),
                "{cmd} ({what}): {out:#?}"
            );
            let v: Value = serde_json::from_str(&out.stdout)
                .unwrap_or_else(|e| panic!("{cmd} ({what}): not one JSON object ({e}): {out:#?}"));
            assert!(v.is_object(), "{cmd} ({what}): {v}");
            assert_eq!(v["ok"], false, "{cmd} ({what}): {v}");
            assert_eq!(v["exit_code"], *code, "{cmd} ({what}): {v}");
            assert_eq!(v["exit_meaning"], *meaning, "{cmd} ({what}): {v}");
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{cmd} ({what}): {v}"
            );
            if cmd != "ls" {
                assert_eq!(v["files"], serde_json::json!([]), "{cmd} ({what}): {v}");
            }
            // People still read the reason on stderr.
            assert!(
                out.stderr.contains("ferry") || out.stderr.contains("error"),
                "{out:#?}"
            );
        }
    }
    // Success says what its exit code means as well.
    let out = oneshot(&w, &["put", "--json", "up.bin", "alice@127.0.0.1:"]);
    out.expect_ok();
    let v = json(&out);
    assert_eq!(
        (v["ok"].clone(), v["exit_meaning"].clone()),
        (true.into(), "ok".into())
    );
}

/// `--json` answers a Ctrl-C that comes before the command started (here: the server accepted
/// TCP and never answers the TLS handshake) with one JSON object and exit status 130.
#[test]
fn json_answers_a_ctrl_c_during_connect_with_one_object() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let local = tempfile::tempdir().unwrap();
    let ca = tempfile::tempdir().unwrap();
    let ca = ferry::certs::generate(ca.path(), &[], false)
        .unwrap()
        .paths
        .ca_cert;
    for (what, args) in [
        ("ls", vec!["ls", "--json", "alice@127.0.0.1:"]),
        ("get", vec!["get", "--json", "alice@127.0.0.1:f"]),
    ] {
        let mut child = Command::new(crate::cli::FERRY)
            .current_dir(local.path())
            .env_remove("FERRY_LOG")
            .env("HOME", local.path())
            .env("FERRY_PASSWORD", ALICE_PW)
            .args(&args)
            .args(["-P", &port, "--ca", ca.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Accepted and left hanging in the handshake.
        let (_held, _) = silent.accept().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let ok = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "{what}: Ctrl-C did not end the client"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(130), "{what}: {stdout}");
        let v: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{what}: not one JSON object ({e}): {stdout:?}"));
        assert_eq!(v["ok"], false, "{v}");
        assert_eq!(v["exit_code"], 130, "{v}");
        assert_eq!(v["exit_meaning"], "interrupted", "{v}");
    }
}

#[test]
fn json_usage_error_names_the_missing_argument_and_the_usage() {
    // No server: clap refuses these before anything connects.
    let dir = tempfile::tempdir().unwrap();
    for (args, must) in [
        (vec!["put", "--json", "up.bin"], "<USER@HOST:REMOTE>"),
        (vec!["ls", "--json"], "<USER@HOST:[PATH]>"),
        (vec!["get", "--json", "--bogus", "a:b"], "'--bogus'"),
    ] {
        let out = Ferry::new(dir.path()).run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:#?}");
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON object ({e}): {out:#?}"));
        let error = v["error"].as_str().unwrap_or_default();
        assert!(error.contains(must), "{args:?}: {error}");
        assert!(
            !error.ends_with(':'),
            "{args:?}: a message cut short: {error}"
        );
        assert!(!error.contains('\n'), "{args:?}: {error}");
    }
}

#[test]
fn get_into_a_missing_directory_written_with_a_slash_makes_it() {
    let w = World::start();
    let home = w.alice_home();
    std::fs::create_dir_all(home.join("photos/2026")).unwrap();
    random_file(&home.join("photos/2026/a.jpg"), 1000, 61);
    random_file(&home.join("photos/b.jpg"), 100, 62);

    let out = oneshot(
        &w,
        &["get", "-r", "--json", "alice@127.0.0.1:photos", "./backup/"],
    );
    assert_eq!(out.status.code(), Some(0), "{out:#?}");
    assert_eq!(json(&out)["ok"], true);
    assert!(w.local.join("backup/photos/2026/a.jpg").is_file());

    let out = oneshot(&w, &["get", "alice@127.0.0.1:photos/*.jpg", "logs/"]);
    assert_eq!(out.status.code(), Some(0), "{out:#?}");
    assert!(w.local.join("logs/b.jpg").is_file());

    // Only one level is made, and the error names the directory that is missing.
    let out = oneshot(&w, &["get", "alice@127.0.0.1:photos/b.jpg", "no/such/"]);
    assert_eq!(out.status.code(), Some(1), "{out:#?}");
    assert!(out.stderr.contains("no/such"), "{out:#?}");
    assert!(!w.local.join("no").exists());
}

#[test]
fn a_failed_login_says_as_whom_where_and_where_the_password_came_from() {
    let w = World::start();
    let port = w.server.port().to_string();
    let ca = w.ca.to_str().unwrap().to_string();
    let out = Ferry::new(&w.local)
        .env("FERRY_PASSWORD", "stale-password-from-yesterday")
        .run(&["ls", "-P", &port, "--ca", &ca, "alice@127.0.0.1:"]);
    assert_eq!(out.status.code(), Some(3), "{out:#?}");
    for must in ["'alice'", &format!("127.0.0.1:{port}"), "FERRY_PASSWORD"] {
        assert!(out.stderr.contains(must), "no {must}: {out:#?}");
    }
    let file = w.local.join("pw.txt");
    std::fs::write(&file, "wrong-password-in-a-file\n").unwrap();
    let out = Ferry::new(&w.local).run(&[
        "ls",
        "-P",
        &port,
        "--ca",
        &ca,
        "--password-file",
        file.to_str().unwrap(),
        "alice@127.0.0.1:",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:#?}");
    assert!(out.stderr.contains("pw.txt"), "{out:#?}");
}

#[test]
fn swapped_get_and_put_arguments_get_a_hint() {
    // Refused before anything connects.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("report.pdf"), b"x").unwrap();
    let out = Ferry::new(dir.path()).run(&["put", "alice@127.0.0.1:1:drops", "report.pdf"]);
    assert_eq!(out.status.code(), Some(2), "{out:#?}");
    assert!(out.stderr.contains("use ferry get"), "{out:#?}");
    let out = Ferry::new(dir.path()).run(&["get", "report.pdf", "alice@127.0.0.1:drops/"]);
    assert_eq!(out.status.code(), Some(2), "{out:#?}");
    assert!(out.stderr.contains("use ferry put"), "{out:#?}");
    // Not swapped: no hint.
    let out = Ferry::new(dir.path()).run(&["get", "report.pdf", "x"]);
    assert_eq!(out.status.code(), Some(2), "{out:#?}");
    assert!(!out.stderr.contains("use ferry"), "{out:#?}");
}

#[test]
fn json_put_of_several_files_onto_a_file_is_a_whole_transfer_report() {
    let w = World::start();
    random_file(&w.local.join("a.bin"), 10, 71);
    random_file(&w.local.join("b.bin"), 10, 72);
    for args in [
        vec!["put", "--json", "a.bin", "b.bin", "alice@127.0.0.1:newname"],
        vec!["get", "--json", "alice@127.0.0.1:*.nothing", "x"],
    ] {
        let out = oneshot(&w, &args);
        let v = json(&out);
        assert_eq!(v["ok"], false, "{args:?}: {v}");
        assert_ne!(v["exit_code"], 0, "{args:?}: {v}");
        for key in ["files", "failed", "directories"] {
            assert!(v[key].is_array(), "{args:?}: no {key}: {v}");
        }
        assert!(
            out.stderr.contains("ferry: "),
            "{args:?}: the reason is on stderr too: {out:#?}"
        );
    }
}
