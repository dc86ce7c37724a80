//! The command line end to end: the real `ferry` binary for `certs`, `user`, `serve` and
//! `connect`, as issue 2's command-line contract describes them. Servers are real `ferry serve`
//! processes on 127.0.0.1:0; clients are real `ferry connect` processes fed commands on stdin.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ferry::users::{self, Password};

use crate::util::{CHEAP, names_in, random_file, sha256_hex};

/// The binary under test.
pub(crate) const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// How long any one short-lived `ferry` run may take before the test fails.
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `ferry serve` may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long `ferry serve` may take to stop after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The line `ferry serve` prints once it listens.
const LISTENING: &str = "ferry listening on ";

/// The hash prefix of the production argon2id parameters.
const PRODUCTION_HASH_PREFIX: &str = "$argon2id$v=19$m=19456,t=2,p=1$";

// ---------------------------------------------------------------------------------------------
// Harness: running the binary
// ---------------------------------------------------------------------------------------------

/// What a finished `ferry` run left behind.
#[derive(Debug)]
pub(crate) struct Out {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    /// Asserts the run exited with `code`, showing everything otherwise.
    #[track_caller]
    pub(crate) fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.status.code(), Some(code), "{self:#?}");
        self
    }

    #[track_caller]
    pub(crate) fn expect_ok(&self) -> &Self {
        self.expect_code(0)
    }

    /// Asserts the run failed (any non-zero exit code).
    #[track_caller]
    pub(crate) fn expect_failure(&self) -> &Self {
        assert!(
            self.status.code().is_some_and(|c| c != 0),
            "expected a failure: {self:#?}"
        );
        self
    }
}

/// One run of the binary: working directory, environment and stdin.
pub(crate) struct Ferry {
    cmd: Command,
    stdin: Option<Vec<u8>>,
}

impl Ferry {
    /// `ferry` in `cwd` with a clean environment for ferry's own variables.
    pub(crate) fn new(cwd: &Path) -> Ferry {
        let mut cmd = Command::new(FERRY);
        cmd.current_dir(cwd)
            .env_remove("FERRY_PASSWORD")
            .env_remove("FERRY_LOG")
            .env_remove("XDG_STATE_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env("HOME", cwd);
        Ferry { cmd, stdin: None }
    }

    pub(crate) fn env(mut self, key: &str, value: &str) -> Ferry {
        self.cmd.env(key, value);
        self
    }

    /// Feeds `input` on stdin (a pipe, so not a terminal); without this stdin is /dev/null.
    pub(crate) fn stdin(mut self, input: &str) -> Ferry {
        self.stdin = Some(input.as_bytes().to_vec());
        self
    }

    /// Runs with `args` and waits, at most [`RUN_TIMEOUT`].
    pub(crate) fn run(mut self, args: &[&str]) -> Out {
        self.cmd.args(args);
        self.cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.cmd.spawn().expect("cannot start ferry");
        let writer = {
            let pipe = child.stdin.take();
            let input = self.stdin.take();
            thread::spawn(move || {
                if let (Some(mut pipe), Some(input)) = (pipe, input) {
                    // The process may exit without reading everything (a failed command).
                    let _ = pipe.write_all(&input);
                }
            })
        };
        let stdout = read_all(child.stdout.take().unwrap());
        let stderr = read_all(child.stderr.take().unwrap());
        let status = wait_or_kill(&mut child, RUN_TIMEOUT)
            .unwrap_or_else(|| panic!("ferry {args:?} did not finish within {RUN_TIMEOUT:?}"));
        writer.join().unwrap();
        Out {
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` up to `limit`; on timeout kills it (SIGKILL), reaps it, returns `None`.
pub(crate) fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A `ferry serve` process. Dropping it stops it: SIGTERM, then SIGKILL after a deadline.
pub(crate) struct ServeProcess {
    child: Child,
    addr: SocketAddr,
    stdout: Option<JoinHandle<String>>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
}

/// What a stopped server printed, and how it ended.
#[derive(Debug)]
pub(crate) struct Stopped {
    /// `None` if it had to be killed.
    pub(crate) status: Option<ExitStatus>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl ServeProcess {
    /// Starts `ferry serve --listen 127.0.0.1:0 EXTRA...` in `cwd` and waits for the line that
    /// names the address.
    pub(crate) fn start(cwd: &Path, extra: &[&str]) -> ServeProcess {
        let mut child = Command::new(FERRY)
            .current_dir(cwd)
            .env_remove("FERRY_LOG")
            .env("HOME", cwd)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start ferry serve");

        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_thread = {
            let pipe = child.stderr.take().unwrap();
            let buf = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    buf.lock().unwrap().push_str(&line);
                    line.clear();
                }
            })
        };

        let (lines_tx, lines) = mpsc::channel::<String>();
        let stdout = {
            let pipe = child.stdout.take().unwrap();
            thread::spawn(move || {
                let mut all = String::new();
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    all.push_str(&line);
                    all.push('\n');
                    let _ = lines_tx.send(line);
                }
                all
            })
        };

        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix(LISTENING) {
                        break addr.trim().parse::<SocketAddr>().unwrap_or_else(|e| {
                            panic!("bad address in {line:?}: {e}");
                        });
                    }
                }
                Err(e) => {
                    // Exited (stdout closed) or too slow: show what it said.
                    let status = wait_or_kill(&mut child, Duration::from_secs(2));
                    let _ = stderr_thread.join();
                    let err = stderr.lock().unwrap().clone();
                    panic!(
                        "ferry serve {extra:?} did not print its address ({e}); \
                         status {status:?}; stderr:\n{err}"
                    );
                }
            }
        };
        assert!(addr.ip().is_loopback(), "{addr}");
        ServeProcess {
            child,
            addr,
            stdout: Some(stdout),
            stderr,
            stderr_thread: Some(stderr_thread),
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The server's process id (for signals).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server has written to stderr so far.
    pub(crate) fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `USER@127.0.0.1:PORT`.
    pub(crate) fn target(&self, user: &str) -> String {
        format!("{user}@127.0.0.1:{}", self.port())
    }

    /// Waits until stderr contains `needle` and returns all of stderr so far.
    fn wait_stderr(&self, needle: &str) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let err = self.stderr.lock().unwrap().clone();
            if err.contains(needle) {
                return err;
            }
            assert!(
                Instant::now() < deadline,
                "ferry serve never printed {needle:?}; stderr:\n{err}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, wait (SIGKILL after [`STOP_TIMEOUT`]), and collect all output.
    pub(crate) fn stop(mut self) -> Stopped {
        let status = self.terminate();
        let stdout = self
            .stdout
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        if let Some(t) = self.stderr_thread.take() {
            t.join().unwrap();
        }
        let stderr = self.stderr.lock().unwrap().clone();
        Stopped {
            status,
            stdout,
            stderr,
        }
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        wait_or_kill(&mut self.child, STOP_TIMEOUT)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

// ---------------------------------------------------------------------------------------------
// Harness: a world with a running server
// ---------------------------------------------------------------------------------------------

/// A temp dir with dev certificates, a users file with cheap hashes (`alice` read-write,
/// `reader` read-only), a data root, a local dir for the client, and a `ferry serve` on it.
pub(crate) struct World {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) ca: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) local: PathBuf,
    pub(crate) server: ServeProcess,
}

pub(crate) const ALICE_PW: &str = "alice-pw";
const READER_PW: &str = "reader-pw";

impl World {
    pub(crate) fn start() -> World {
        World::start_with(&[])
    }

    /// [`World::start`] with more `ferry serve` arguments.
    pub(crate) fn start_with(extra: &[&str]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let certs = ferry::certs::generate(&dir.path().join("certs"), &[], false).unwrap();
        let users_file = dir.path().join("users.toml");
        for (name, pw, read_only) in [("alice", ALICE_PW, false), ("reader", READER_PW, true)] {
            let hash =
                users::hash_password_with(&Password::new(pw.into()), CHEAP.0, CHEAP.1, CHEAP.2)
                    .unwrap();
            users::add_user(&users_file, name, &hash, None, read_only).unwrap();
        }
        let root = dir.path().join("data");
        let local = dir.path().join("local");
        std::fs::create_dir(&local).unwrap();
        let mut args = vec![
            "--users",
            users_file.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--cert",
            certs.paths.server_cert.to_str().unwrap(),
            "--key",
            certs.paths.server_key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let server = ServeProcess::start(dir.path(), &args);
        World {
            ca: certs.paths.ca_cert,
            root,
            local,
            server,
            _dir: dir,
        }
    }

    pub(crate) fn alice_home(&self) -> PathBuf {
        self.root.join("alice")
    }

    /// `ferry connect USER@127.0.0.1:PORT --ca CA` in the local dir with `script` on stdin.
    pub(crate) fn session(&self, user: &str, password: &str, script: &str) -> Out {
        self.connect(password, &[&self.server.target(user)], Some(script))
    }

    /// `ferry connect ARGS... --ca CA` in the local dir, FERRY_PASSWORD set.
    pub(crate) fn connect(&self, password: &str, args: &[&str], script: Option<&str>) -> Out {
        let mut all = vec!["connect"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--ca", self.ca.to_str().unwrap()]);
        let mut f = Ferry::new(&self.local).env("FERRY_PASSWORD", password);
        if let Some(s) = script {
            f = f.stdin(s);
        }
        f.run(&all)
    }
}

/// The `ls` line for `name` in `stdout`, split into (type+perms, size, date, time, name).
#[track_caller]
pub(crate) fn ls_line<'a>(stdout: &'a str, name: &str) -> [&'a str; 5] {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some(name))
        .unwrap_or_else(|| panic!("no ls line for {name:?} in:\n{stdout}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 5, "{line:?}");
    [fields[0], fields[1], fields[2], fields[3], fields[4]]
}

/// Asserts an `ls` date and time are "now" (within a few minutes, local time).
#[track_caller]
fn assert_recent(date: &str, time: &str) {
    let when = chrono::NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y-%m-%d %H:%M")
        .unwrap_or_else(|e| panic!("bad ls time {date:?} {time:?}: {e}"));
    let now = chrono::Local::now().naive_local();
    let diff = (now - when).num_minutes().abs();
    assert!(diff <= 5, "ls time {when} is {diff} min from now {now}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// The four files of a certificate directory, as bytes.
fn cert_files(dir: &Path) -> Vec<Vec<u8>> {
    ["ca.pem", "ca/ca.key", "server.pem", "server.key"]
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect()
}

/// The fingerprint `ferry certs` printed, checked against the leaf of `server.pem`.
#[track_caller]
pub(crate) fn printed_fingerprint(out: &Out, dir: &Path) -> String {
    let fp = out
        .stdout
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .unwrap_or_else(|| panic!("no fingerprint in {out:#?}"));
    let hex = &fp["SHA256:".len()..];
    assert_eq!(hex.len(), 64, "{fp}");
    assert!(
        hex.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{fp}"
    );
    let chain = ferry::tls::load_certs(&dir.join("server.pem")).unwrap();
    assert_eq!(chain.len(), 2, "server.pem holds leaf + CA");
    assert_eq!(
        hex,
        sha256_hex(chain[0].as_ref()),
        "fingerprint of the leaf"
    );
    fp.to_string()
}

/// `ferry user add NAME --users FILE --password-stdin --allow-weak EXTRA...` with `password`
/// on stdin (fixtures use short passwords).
fn user_add(cwd: &Path, file: &Path, name: &str, password: &str, extra: &[&str]) -> Out {
    let mut args = vec![
        "user",
        "add",
        name,
        "--users",
        file.to_str().unwrap(),
        "--password-stdin",
        "--allow-weak",
    ];
    args.extend_from_slice(extra);
    Ferry::new(cwd).stdin(&format!("{password}\n")).run(&args)
}

/// The password hash of `name` in a users file.
fn hash_of(file: &Path, name: &str) -> String {
    users::UserDb::parse(&std::fs::read_to_string(file).unwrap())
        .unwrap()
        .get(name)
        .unwrap_or_else(|| panic!("no user {name}"))
        .password_hash
        .clone()
}

// ---------------------------------------------------------------------------------------------
// ferry certs
// ---------------------------------------------------------------------------------------------

#[test]
fn certs_writes_four_files_private_keys_0600_and_prints_fingerprint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tls");
    let out = Ferry::new(tmp.path()).run(&["certs", "--dir", dir.to_str().unwrap()]);
    out.expect_ok();
    assert_eq!(
        names_in(&dir),
        ["ca", "ca.pem", "receipt.key", "server.key", "server.pem"]
    );
    assert_eq!(names_in(&dir.join("ca")), ["ca.key"]);
    assert_eq!(mode(&dir.join("ca")), 0o700);
    assert_eq!(mode(&dir.join("ca/ca.key")), 0o600);
    assert_eq!(mode(&dir.join("server.key")), 0o600);
    let first_fp = printed_fingerprint(&out, &dir);
    assert!(out.stdout.contains("ca.pem"), "{out:#?}");

    // A second run refuses, says which flag would help, and leaves every file as it was.
    let before = cert_files(&dir);
    let again = Ferry::new(tmp.path()).run(&["certs", "--dir", dir.to_str().unwrap()]);
    again.expect_failure();
    assert!(again.stderr.contains("refusing to overwrite"), "{again:#?}");
    assert!(
        again.stderr.contains("--force") && again.stderr.contains("--new-ca"),
        "{again:#?}"
    );
    assert_eq!(cert_files(&dir), before);

    // --force issues a new server certificate with the same CA: clients keep working.
    let forced = Ferry::new(tmp.path()).run(&["certs", "--dir", dir.to_str().unwrap(), "--force"]);
    forced.expect_ok();
    let after = cert_files(&dir);
    assert_eq!(after[0], before[0], "ca.pem kept");
    assert_eq!(after[1], before[1], "ca/ca.key kept");
    assert_ne!(after[2], before[2], "server.pem new");
    assert_ne!(after[3], before[3], "server.key new");
    assert!(forced.stdout.contains("kept the CA"), "{forced:#?}");
    assert!(!forced.stderr.contains("warning"), "{forced:#?}");
    assert_eq!(mode(&dir.join("server.key")), 0o600);
    let forced_fp = printed_fingerprint(&forced, &dir);
    assert_ne!(forced_fp, first_fp);

    // --new-ca replaces all four, and warns that every client's ca.pem must follow.
    let renewed =
        Ferry::new(tmp.path()).run(&["certs", "--dir", dir.to_str().unwrap(), "--new-ca"]);
    renewed.expect_ok();
    let newest = cert_files(&dir);
    for (old, new) in after.iter().zip(&newest) {
        assert_ne!(old, new);
    }
    assert!(
        renewed.stderr.contains("warning") && renewed.stderr.contains("new CA"),
        "{renewed:#?}"
    );
    assert_eq!(mode(&dir.join("ca/ca.key")), 0o600);
    assert_eq!(mode(&dir.join("server.key")), 0o600);
    assert_ne!(printed_fingerprint(&renewed, &dir), forced_fp);
}

#[test]
fn certs_default_dir_and_extra_hosts_dns_and_ip() {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    let tmp = tempfile::tempdir().unwrap();
    let out =
        Ferry::new(tmp.path()).run(&["certs", "--host", "files.example.org", "--host", "10.1.2.3"]);
    out.expect_ok();
    let dir = tmp.path().join("certs");
    printed_fingerprint(&out, &dir);

    let chain = ferry::tls::load_certs(&dir.join("server.pem")).unwrap();
    let (_, leaf) = X509Certificate::from_der(chain[0].as_ref()).unwrap();
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap()).to_string()
            }
            GeneralName::IPAddress(b) => {
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap()).to_string()
            }
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    for name in [
        "localhost",
        "127.0.0.1",
        "::1",
        "files.example.org",
        "10.1.2.3",
    ] {
        assert!(sans.iter().any(|s| s == name), "{name} not in {sans:?}");
    }
}

#[test]
fn certs_invalid_host_is_refused_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["bad host", "*.example.org", "-x.example"] {
        let out = Ferry::new(tmp.path()).run(&["certs", &format!("--host={bad}")]);
        out.expect_failure();
        assert!(out.stderr.contains("invalid host"), "{bad:?}: {out:#?}");
        assert!(!tmp.path().join("certs").exists(), "{bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// ferry user
// ---------------------------------------------------------------------------------------------

#[test]
fn user_add_list_del_keep_other_users_and_comments() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("users.toml");
    std::fs::write(&file, "# Users of the team drop; managed by ops.\n\n").unwrap();

    user_add(tmp.path(), &file, "alice", "alice pw", &[]).expect_ok();
    user_add(
        tmp.path(),
        &file,
        "bob",
        "bob-pw",
        &["--home", "/srv/share", "--read-only"],
    )
    .expect_ok();
    user_add(tmp.path(), &file, "carol", "carol-pw", &[]).expect_ok();

    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        text.matches(PRODUCTION_HASH_PREFIX).count(),
        3,
        "production argon2id parameters:\n{text}"
    );
    assert!(text.contains("# Users of the team drop"), "{text}");
    assert!(
        !text.contains("alice pw") && !text.contains("bob-pw"),
        "{text}"
    );
    let db = users::UserDb::parse(&text).unwrap();
    let bob = db.get("bob").unwrap();
    assert!(bob.read_only);
    assert_eq!(bob.home.as_deref(), Some(Path::new("/srv/share")));
    let alice = db.get("alice").unwrap();
    assert!(!alice.read_only);
    assert_eq!(alice.home, None);
    assert!(users::verify_password(
        &alice.password_hash,
        &Password::new("alice pw".into())
    ));
    assert_eq!(mode(&file), 0o600);

    let list = Ferry::new(tmp.path()).run(&["user", "list", "--users", file.to_str().unwrap()]);
    list.expect_ok();
    let rows: Vec<Vec<&str>> = list
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["alice", "read-write", "<root>/alice"],
            vec!["bob", "read-only", "/srv/share"],
            vec!["carol", "read-write", "<root>/carol"],
        ],
        "{list:#?}"
    );

    // Adding an existing user is a clear error and changes nothing.
    let before = std::fs::read(&file).unwrap();
    let dup = user_add(tmp.path(), &file, "alice", "other", &[]);
    dup.expect_failure();
    assert!(dup.stderr.contains("already exists"), "{dup:#?}");
    assert_eq!(std::fs::read(&file).unwrap(), before);

    // Deleting removes only that user; the others and the comment stay.
    let del =
        Ferry::new(tmp.path()).run(&["user", "del", "bob", "--users", file.to_str().unwrap()]);
    del.expect_ok();
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("# Users of the team drop"), "{text}");
    let db = users::UserDb::parse(&text).unwrap();
    let names: Vec<&str> = db.users().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alice", "carol"]);
    assert_eq!(db.get("alice").unwrap().password_hash, alice.password_hash);
    assert_eq!(mode(&file), 0o600);

    // Deleting a missing user is a clear error and changes nothing.
    let before = std::fs::read(&file).unwrap();
    let missing =
        Ferry::new(tmp.path()).run(&["user", "del", "bob", "--users", file.to_str().unwrap()]);
    missing.expect_failure();
    assert!(
        missing.stderr.contains("no user") && missing.stderr.contains("bob"),
        "{missing:#?}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), before);
}

#[test]
fn user_del_and_passwd_keep_an_admins_comments_and_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("users.toml");
    let cheap = |pw: &str| {
        users::hash_password_with(&Password::new(pw.into()), CHEAP.0, CHEAP.1, CHEAP.2).unwrap()
    };
    let text = format!(
        "# Users of the team drop.\n\
         \n\
         # Alice runs the reports.\n\
         [users.alice]\n\
         password = \"{}\"  # rotated in spring\n\
         read_only = false\n\
         \n\
         [users.bob]\n\
         password = \"{}\"\n\
         \n\
         # Carol's home is on the shared disk.\n\
         [users.carol]\n\
         password = \"{}\"\n\
         home = \"/srv/carol\"   # mounted by ops\n",
        cheap("a"),
        cheap("b"),
        cheap("c"),
    );
    std::fs::write(&file, &text).unwrap();
    let carol_hash = hash_of(&file, "carol");

    Ferry::new(tmp.path())
        .run(&["user", "del", "bob", "--users", file.to_str().unwrap()])
        .expect_ok();
    Ferry::new(tmp.path())
        .stdin("new alice pw\n")
        .run(&[
            "user",
            "passwd",
            "alice",
            "--users",
            file.to_str().unwrap(),
            "--password-stdin",
        ])
        .expect_ok();

    let after = std::fs::read_to_string(&file).unwrap();
    for kept in [
        "# Users of the team drop.",
        "# Alice runs the reports.",
        "# rotated in spring",
        "# Carol's home is on the shared disk.",
        "home = \"/srv/carol\"   # mounted by ops",
    ] {
        assert!(after.contains(kept), "lost {kept:?}:\n{after}");
    }
    assert!(!after.contains("[users.bob]"), "{after}");
    let db = users::UserDb::parse(&after).unwrap();
    let names: Vec<&str> = db.users().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["alice", "carol"]);
    assert_eq!(hash_of(&file, "carol"), carol_hash);
    let alice = hash_of(&file, "alice");
    assert!(alice.starts_with(PRODUCTION_HASH_PREFIX), "{alice}");
    assert!(users::verify_password(
        &alice,
        &Password::new("new alice pw".into())
    ));
    assert_eq!(mode(&file), 0o600);
}

#[test]
fn user_add_uses_users_toml_in_cwd_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    Ferry::new(tmp.path())
        .stdin("pw\n")
        .run(&["user", "add", "dora", "--password-stdin", "--allow-weak"])
        .expect_ok();
    let file = tmp.path().join("users.toml");
    assert!(hash_of(&file, "dora").starts_with(PRODUCTION_HASH_PREFIX));
    assert_eq!(mode(&file), 0o600);
    let list = Ferry::new(tmp.path()).run(&["user", "list"]);
    list.expect_ok();
    assert!(list.stdout.starts_with("dora "), "{list:#?}");
}

#[test]
fn user_add_refuses_invalid_names() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("users.toml");
    for name in ["a/b", "..", "a b", "x@y", "tab\tname"] {
        let out = user_add(tmp.path(), &file, name, "pw", &[]);
        out.expect_failure();
        assert!(
            out.stderr.contains("invalid user name"),
            "{name:?}: {out:#?}"
        );
        assert!(!file.exists(), "{name:?} created the file");
    }
    // `-x` as a plain argument is an unknown option to clap; after `--` it is a name, refused.
    user_add(tmp.path(), &file, "-x", "pw", &[]).expect_failure();
    let out = Ferry::new(tmp.path()).stdin("pw\n").run(&[
        "user",
        "add",
        "--users",
        file.to_str().unwrap(),
        "--password-stdin",
        "--allow-weak",
        "--",
        "-x",
    ]);
    out.expect_failure();
    assert!(out.stderr.contains("invalid user name"), "{out:#?}");
    assert!(!file.exists());
}

#[test]
fn user_passwd_changes_the_hash_and_the_old_password_stops_working() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("users.toml");
    user_add(tmp.path(), &file, "alice", "old-pw", &[]).expect_ok();
    user_add(tmp.path(), &file, "bob", "bob-pw", &[]).expect_ok();
    let (alice_before, bob_before) = (hash_of(&file, "alice"), hash_of(&file, "bob"));

    Ferry::new(tmp.path())
        .stdin("new-pw\n")
        .run(&[
            "user",
            "passwd",
            "alice",
            "--users",
            file.to_str().unwrap(),
            "--password-stdin",
            "--allow-weak",
        ])
        .expect_ok();
    let alice_after = hash_of(&file, "alice");
    assert_ne!(alice_after, alice_before);
    assert!(
        alice_after.starts_with(PRODUCTION_HASH_PREFIX),
        "{alice_after}"
    );
    assert_eq!(hash_of(&file, "bob"), bob_before);
    assert_eq!(mode(&file), 0o600);

    // passwd of a missing user fails and changes nothing.
    let before = std::fs::read(&file).unwrap();
    let missing = Ferry::new(tmp.path()).stdin("x\n").run(&[
        "user",
        "passwd",
        "nobody",
        "--users",
        file.to_str().unwrap(),
        "--password-stdin",
    ]);
    missing.expect_failure();
    assert!(missing.stderr.contains("nobody"), "{missing:#?}");
    assert_eq!(std::fs::read(&file).unwrap(), before);

    // A server started now accepts only the new password.
    let server = ServeProcess::start(
        tmp.path(),
        &["--users", file.to_str().unwrap(), "--root", "data"],
    );
    let login = |pw: &str| {
        Ferry::new(tmp.path())
            .env("FERRY_PASSWORD", pw)
            .stdin("pwd\n")
            .run(&["connect", &server.target("alice"), "--ca", "certs/ca.pem"])
    };
    let old = login("old-pw");
    old.expect_code(3);
    assert!(old.stderr.contains("authentication failed"), "{old:#?}");
    let new = login("new-pw");
    new.expect_ok();
    assert_eq!(new.stdout, "/\n");
    let bob = Ferry::new(tmp.path())
        .env("FERRY_PASSWORD", "bob-pw")
        .stdin("pwd\n")
        .run(&["connect", &server.target("bob"), "--ca", "certs/ca.pem"]);
    bob.expect_ok();
}

// ---------------------------------------------------------------------------------------------
// ferry serve
// ---------------------------------------------------------------------------------------------

/// The generated admin password never goes to a log stream: stderr is a pipe here (as under
/// journald or a container runtime), so it holds only the path of a 0600 file with it.
#[test]
fn serve_first_start_writes_the_admin_password_to_a_0600_file_never_to_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(tmp.path(), &[]);
    let err = server.wait_stderr("ferry user passwd admin");
    let certs = tmp.path().join("certs");
    for f in ["ca.pem", "server.pem", "server.key"] {
        assert!(certs.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&certs.join("server.key")), 0o600);
    assert!(
        err.contains("--ca certs/ca.pem"),
        "says where the CA is:\n{err}"
    );
    let users_file = tmp.path().join("users.toml");
    assert_eq!(mode(&users_file), 0o600);
    let db = users::UserDb::load(&users_file).unwrap();
    let names: Vec<&str> = db.users().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["admin"]);
    let secret_file = tmp.path().join("users.toml.admin-password");
    assert!(
        err.contains("users.toml.admin-password"),
        "names the file:\n{err}"
    );
    assert_eq!(mode(&secret_file), 0o600);
    let password = std::fs::read_to_string(&secret_file)
        .unwrap()
        .trim_end()
        .to_string();
    assert!(password.len() >= 16, "{password:?}");
    assert!(
        !err.contains(&password),
        "the password is on stderr:\n{err}"
    );
    assert!(!err.contains("password:"), "{err}");
    assert!(tmp.path().join("data").is_dir());

    // As README's quick start does it.
    let session = Ferry::new(tmp.path())
        .stdin("pwd\nmkdir inbox\nls\n")
        .run(&[
            "connect",
            &server.target("admin"),
            "--ca",
            "certs/ca.pem",
            "--password-file",
            "users.toml.admin-password",
        ]);
    session.expect_ok();
    assert!(session.stdout.starts_with("/\n"), "{session:#?}");
    assert_eq!(
        ls_line(&session.stdout, "inbox")[0].chars().next(),
        Some('d')
    );
    assert!(tmp.path().join("data/admin/inbox").is_dir());

    let first = server.stop();
    assert!(
        first.status.is_some_and(|s| s.success()),
        "SIGTERM stops gracefully: {first:#?}"
    );
    assert!(!first.stderr.contains(&password), "{first:#?}");
    assert!(!first.stdout.contains(&password), "{first:#?}");
    assert!(
        !std::fs::read_to_string(&users_file)
            .unwrap()
            .contains(&password)
    );

    // The second start finds everything in place: no new certs, no password.
    let ca_before = std::fs::read(certs.join("ca.pem")).unwrap();
    let server = ServeProcess::start(tmp.path(), &[]);
    let session = Ferry::new(tmp.path())
        .env("FERRY_PASSWORD", &password)
        .stdin("ls\n")
        .run(&["connect", &server.target("admin"), "--ca", "certs/ca.pem"]);
    session.expect_ok();
    let second = server.stop();
    assert!(!second.stderr.contains(&password), "{second:#?}");
    assert!(!second.stderr.contains("password:"), "{second:#?}");
    assert!(!second.stderr.contains("created"), "{second:#?}");
    assert_eq!(std::fs::read(certs.join("ca.pem")).unwrap(), ca_before);
}

#[test]
fn serve_refuses_half_a_certificate_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    ferry::certs::generate(&real, &[], false).unwrap();

    for (present, missing) in [("server.pem", "server.key"), ("server.key", "server.pem")] {
        let cwd = tmp.path().join(format!("only-{present}"));
        std::fs::create_dir_all(cwd.join("certs")).unwrap();
        std::fs::copy(real.join(present), cwd.join("certs").join(present)).unwrap();
        let out = Ferry::new(&cwd).run(&["serve", "--listen", "127.0.0.1:0"]);
        out.expect_failure();
        assert!(
            out.stderr.contains(present) && out.stderr.contains(missing),
            "the error names both files: {out:#?}"
        );
        assert!(!out.stdout.contains(LISTENING), "{out:#?}");
        assert_eq!(names_in(&cwd.join("certs")), [present], "nothing generated");
        assert_eq!(
            std::fs::read(cwd.join("certs").join(present)).unwrap(),
            std::fs::read(real.join(present)).unwrap()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// ferry connect: the shell in batch mode
// ---------------------------------------------------------------------------------------------

#[test]
fn connect_batch_put_ls_get_verify_digests() {
    let w = World::start();
    let data = random_file(&w.local.join("report.bin"), 100_000, 1);
    let digest = sha256_hex(&data);
    let out = w.session(
        "alice",
        ALICE_PW,
        "put report.bin\nls\nget report.bin copy.bin\nquit\n",
    );
    out.expect_ok();
    assert_eq!(
        out.stdout
            .matches(&format!("sha256 {digest} verified"))
            .count(),
        2,
        "put and get both verify: {out:#?}"
    );
    let [kind, size, date, time, _] = ls_line(&out.stdout, "report.bin");
    assert!(kind.starts_with('-'), "{kind}");
    assert_eq!(size, "100000");
    assert_recent(date, time);
    assert_eq!(
        std::fs::read(w.alice_home().join("report.bin")).unwrap(),
        data
    );
    assert_eq!(std::fs::read(w.local.join("copy.bin")).unwrap(), data);
    assert_eq!(mode(&w.alice_home()), 0o700, "home created with mode 0700");
    // Batch mode echoes nothing but results: no prompt, no progress, nothing on stderr.
    assert_eq!(out.stderr, "", "{out:#?}");
    assert!(!out.stdout.contains("ferry> "), "{out:#?}");
    assert!(
        !out.stdout.contains("put report.bin"),
        "commands are not echoed: {out:#?}"
    );
}

#[test]
fn connect_batch_cd_pwd_mkdir_mv_rm_rmdir_help() {
    let w = World::start();
    let data = random_file(&w.local.join("a.txt"), 1000, 2);
    let script = "\
        mkdir docs\n\
        cd docs\n\
        pwd\n\
        put a.txt\n\
        mkdir sub\n\
        ls\n\
        cd /\n\
        pwd\n\
        mv docs/a.txt b.txt\n\
        mv b.txt docs/sub\n\
        ls docs/sub\n\
        rmdir docs/sub\n\
        rm docs/sub/b.txt\n";
    // rmdir of a non-empty dir fails, so the batch stops there, before `rm`.
    let out = w.session("alice", ALICE_PW, script);
    out.expect_code(1);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "/docs", "{out:#?}");
    assert!(lines[1].contains(&sha256_hex(&data)), "{out:#?}");
    let [kind, ..] = ls_line(&out.stdout, "sub");
    assert!(kind.starts_with('d'), "{kind}");
    assert!(lines.contains(&"/"), "{out:#?}");
    let [_, size, ..] = ls_line(&out.stdout, "b.txt");
    assert_eq!(size, "1000");
    assert!(out.stderr.contains("rmdir docs/sub"), "{out:#?}");
    let home = w.alice_home();
    assert_eq!(std::fs::read(home.join("docs/sub/b.txt")).unwrap(), data);
    assert_eq!(names_in(&home.join("docs")), ["sub"]);
    assert_eq!(names_in(&home), ["docs"]);

    // mv onto an existing name needs -f.
    std::fs::write(home.join("c.txt"), b"c").unwrap();
    w.session("alice", ALICE_PW, "mv c.txt docs/sub/b.txt\n")
        .expect_code(1);
    assert_eq!(std::fs::read(home.join("docs/sub/b.txt")).unwrap(), data);
    w.session("alice", ALICE_PW, "mv -f docs/sub/b.txt c.txt\n")
        .expect_ok();
    assert_eq!(std::fs::read(home.join("c.txt")).unwrap(), data);

    let out = w.session(
        "alice",
        ALICE_PW,
        "rm c.txt\nrmdir docs/sub\nrmdir docs\nls\nhelp\nhelp get\n",
    );
    out.expect_ok();
    assert!(names_in(&home).is_empty(), "{:?}", names_in(&home));
    for usage in [
        "get [-r] [-f] [-a] [-e] [-p] [-q] REMOTE... [LOCAL]",
        "put [-r] [-f] [-a] [-e] [-q] LOCAL... [REMOTE]",
        "mv [-f] FROM... TO",
    ] {
        assert!(out.stdout.contains(usage), "help shows {usage:?}: {out:#?}");
    }
}

#[test]
fn connect_batch_lcd_lls_lpwd_move_the_local_side() {
    let w = World::start();
    std::fs::create_dir(w.local.join("outbox")).unwrap();
    let data = random_file(&w.local.join("outbox/x.txt"), 3000, 5);
    std::fs::write(w.local.join("outbox/y.log"), b"y").unwrap();
    let script = "\
        lpwd\n\
        lcd outbox\n\
        lpwd\n\
        lls\n\
        put x.txt\n\
        lcd ..\n\
        -lcd no-such-dir\n\
        lpwd\n\
        get x.txt got.txt\n";
    let out = w.session("alice", ALICE_PW, script);
    out.expect_ok();
    let local = w.local.canonicalize().unwrap();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], local.to_str().unwrap(), "{out:#?}");
    assert_eq!(lines[1], local.join("outbox").to_str().unwrap(), "{out:#?}");
    let listed: Vec<&str> = lines
        .iter()
        .filter(|l| l.ends_with("x.txt") || l.ends_with("y.log"))
        .copied()
        .collect();
    assert_eq!(listed.len(), 2, "lls shows both local files: {out:#?}");
    assert!(out.stderr.contains("no-such-dir"), "{out:#?}");
    assert!(
        lines.contains(&local.to_str().unwrap()),
        "after lcd .. and a failed lcd, lpwd is back at the start: {out:#?}"
    );
    assert_eq!(std::fs::read(w.alice_home().join("x.txt")).unwrap(), data);
    assert_eq!(std::fs::read(w.local.join("got.txt")).unwrap(), data);
}

#[test]
fn connect_get_never_overwrites_a_local_file_without_f() {
    let w = World::start();
    let data = random_file(&w.local.join("report.bin"), 5000, 3);
    w.session("alice", ALICE_PW, "put report.bin\n").expect_ok();
    let copy = w.local.join("copy.bin");
    std::fs::write(&copy, b"keep me").unwrap();

    let out = w.session("alice", ALICE_PW, "get report.bin copy.bin\nmkdir after\n");
    out.expect_code(1);
    assert!(out.stderr.contains("already exists"), "{out:#?}");
    assert_eq!(std::fs::read(&copy).unwrap(), b"keep me");
    assert!(!w.alice_home().join("after").exists(), "batch went on");
    assert_eq!(
        names_in(&w.local),
        ["copy.bin", "report.bin"],
        "no temp files"
    );

    // A failed download, even with -f, leaves the local file alone.
    w.session("alice", ALICE_PW, "get -f missing.bin copy.bin\n")
        .expect_code(1);
    assert_eq!(std::fs::read(&copy).unwrap(), b"keep me");
    w.session("alice", ALICE_PW, "mkdir dir\nget dir\n")
        .expect_code(1);
    assert_eq!(names_in(&w.local), ["copy.bin", "report.bin"]);

    let out = w.session("alice", ALICE_PW, "get -f report.bin copy.bin\n");
    out.expect_ok();
    assert!(
        out.stdout
            .contains(&format!("sha256 {} verified", sha256_hex(&data))),
        "{out:#?}"
    );
    assert_eq!(std::fs::read(&copy).unwrap(), data);

    // put onto an existing remote name needs -f as well.
    std::fs::write(w.local.join("report.bin"), b"new").unwrap();
    w.session("alice", ALICE_PW, "put report.bin\n")
        .expect_code(1);
    assert_eq!(
        std::fs::read(w.alice_home().join("report.bin")).unwrap(),
        data
    );
    w.session("alice", ALICE_PW, "put -f report.bin\n")
        .expect_ok();
    assert_eq!(
        std::fs::read(w.alice_home().join("report.bin")).unwrap(),
        b"new"
    );
}

#[test]
fn connect_batch_stops_at_the_first_failure_unless_the_line_starts_with_dash() {
    let w = World::start();
    let out = w.session(
        "alice",
        ALICE_PW,
        "mkdir before\nrm missing.txt\nmkdir after\n",
    );
    out.expect_code(1);
    assert!(
        out.stderr.contains("rm missing.txt"),
        "names the command: {out:#?}"
    );
    assert!(w.alice_home().join("before").is_dir());
    assert!(!w.alice_home().join("after").exists(), "batch went on");

    let out = w.session("alice", ALICE_PW, "-rm missing.txt\nmkdir after\n");
    out.expect_ok();
    assert!(w.alice_home().join("after").is_dir());

    // A usage mistake stops the batch too (exit 2 for usage).
    let out = w.session("alice", ALICE_PW, "frobnicate\nmkdir later\n");
    out.expect_failure();
    assert!(out.stderr.contains("unknown command"), "{out:#?}");
    assert!(!w.alice_home().join("later").exists());
}

#[test]
fn connect_quit_and_end_of_input_end_cleanly() {
    let w = World::start();
    let out = w.session("alice", ALICE_PW, "mkdir one\nquit\nmkdir two\n");
    out.expect_ok();
    assert!(w.alice_home().join("one").is_dir());
    assert!(
        !w.alice_home().join("two").exists(),
        "commands after quit ran"
    );

    let out = w.session("alice", ALICE_PW, "mkdir three\nexit\nmkdir four\n");
    out.expect_ok();
    assert!(!w.alice_home().join("four").exists());

    // End of input (no quit, no trailing newline) is a clean end.
    let out = w.session("alice", ALICE_PW, "mkdir five");
    out.expect_ok();
    assert!(w.alice_home().join("five").is_dir());
    let out = w.session("alice", ALICE_PW, "");
    out.expect_ok();
    assert_eq!(out.stdout, "");
    let out = w.session("alice", ALICE_PW, "# a comment\n\n   \npwd\n");
    out.expect_ok();
    assert_eq!(out.stdout, "/\n");
}

#[test]
fn connect_batch_file_and_port_option() {
    let w = World::start();
    random_file(&w.local.join("x.bin"), 10, 4);
    let batch = w.local.join("cmds.txt");
    std::fs::write(&batch, "put x.bin\nmkdir from-batch\nls\n").unwrap();
    let port = w.server.port().to_string();
    // -b FILE with stdin at /dev/null, and -P instead of :PORT.
    let out = w.connect(
        ALICE_PW,
        &[
            "alice@127.0.0.1",
            "-P",
            &port,
            "-b",
            batch.to_str().unwrap(),
        ],
        None,
    );
    out.expect_ok();
    ls_line(&out.stdout, "from-batch");
    ls_line(&out.stdout, "x.bin");
    assert!(w.alice_home().join("from-batch").is_dir());

    // -b - reads stdin.
    let out = w.connect(
        ALICE_PW,
        &[&w.server.target("alice"), "-b", "-"],
        Some("mkdir from-stdin\n"),
    );
    out.expect_ok();
    assert!(w.alice_home().join("from-stdin").is_dir());

    // A failing command in a batch file stops it too.
    std::fs::write(&batch, "rmdir nope\nmkdir never\n").unwrap();
    let out = w.connect(
        ALICE_PW,
        &[&w.server.target("alice"), "-b", batch.to_str().unwrap()],
        None,
    );
    out.expect_code(1);
    assert!(!w.alice_home().join("never").exists());

    // A missing batch file is an error, not an empty session.
    let out = w.connect(
        ALICE_PW,
        &[&w.server.target("alice"), "-b", "no-such-file"],
        None,
    );
    out.expect_failure();
}

/// Issue 12 item 20: ssh users type `-p PORT`; `ferry connect` takes it as `-P`.
#[test]
fn connect_takes_ssh_style_lowercase_p_for_the_port() {
    let w = World::start();
    let port = w.server.port().to_string();
    let out = w.connect(
        ALICE_PW,
        &["-p", &port, "alice@127.0.0.1"],
        Some("mkdir via-p\n"),
    );
    out.expect_ok();
    assert!(w.alice_home().join("via-p").is_dir());
    // Both spellings at once is a usage error, not a silent choice.
    let out = w.connect(
        ALICE_PW,
        &["-p", &port, "-P", &port, "alice@127.0.0.1"],
        Some("pwd\n"),
    );
    out.expect_code(2);
}

/// Issue 12 item 20: habits from scp and ssh that ferry does not take get a hint that shows
/// the form it does take.
#[test]
fn scp_and_ssh_habits_that_do_not_work_get_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    // A one-shot without the colon of the home.
    let out = Ferry::new(dir.path()).run(&["ls", "alice@127.0.0.1"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("for your home: 'alice@127.0.0.1:'"),
        "{out:#?}"
    );
    // A path on connect's target.
    let out = Ferry::new(dir.path()).run(&["connect", "alice@127.0.0.1:docs"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("no path") && out.stderr.contains("ferry ls alice@127.0.0.1:docs"),
        "{out:#?}"
    );
}

#[test]
fn connect_read_only_user_can_list_and_get_but_not_change() {
    let w = World::start();
    random_file(&w.local.join("f.bin"), 100, 5);
    std::fs::create_dir_all(w.root.join("reader")).unwrap();
    std::fs::write(w.root.join("reader/shared.txt"), b"shared").unwrap();
    let out = w.session("reader", READER_PW, "ls\nget shared.txt\n");
    out.expect_ok();
    ls_line(&out.stdout, "shared.txt");
    assert_eq!(
        std::fs::read(w.local.join("shared.txt")).unwrap(),
        b"shared"
    );
    for cmd in ["put f.bin", "mkdir d", "rm shared.txt", "mv shared.txt x"] {
        let out = w.session("reader", READER_PW, &format!("{cmd}\n"));
        out.expect_code(1);
    }
    assert_eq!(names_in(&w.root.join("reader")), ["shared.txt"]);
}

// ---------------------------------------------------------------------------------------------
// ferry connect: exit codes
// ---------------------------------------------------------------------------------------------

#[test]
fn connect_exit_codes() {
    let w = World::start();
    let target = w.server.target("alice");

    // 3: wrong password, and an unknown user gets the same.
    let wrong = w.session("alice", "not-the-password", "mkdir x\n");
    wrong.expect_code(3);
    let unknown = w.session("mallory", ALICE_PW, "mkdir x\n");
    unknown.expect_code(3);
    // The same but for the name the client was given (it says as whom it tried).
    assert_eq!(wrong.stderr.replace("'alice'", "'mallory'"), unknown.stderr);
    assert!(!w.root.join("alice/x").exists());

    // 1: a failed remote command.
    w.session("alice", ALICE_PW, "rm nope\n").expect_code(1);
    w.session("alice", ALICE_PW, "cd nope\n").expect_code(1);
    let out = w.session("alice", ALICE_PW, "put no-such-local-file\n");
    out.expect_code(1);
    assert!(out.stderr.contains("no-such-local-file"), "{out:#?}");

    // 2: bad target syntax.
    for bad in [
        "nobody",
        "@127.0.0.1",
        "alice@",
        "alice@127.0.0.1:notaport",
        "a@[::1",
    ] {
        let out = w.connect(ALICE_PW, &[bad], Some("pwd\n"));
        out.expect_code(2);
        assert_eq!(out.stdout, "", "{bad}");
    }

    // 4: a CA that does not match.
    let other = tempfile::tempdir().unwrap();
    let other_ca = ferry::certs::generate(other.path(), &[], false)
        .unwrap()
        .paths
        .ca_cert;
    let out = Ferry::new(&w.local)
        .env("FERRY_PASSWORD", ALICE_PW)
        .stdin("mkdir x\n")
        .run(&["connect", &target, "--ca", other_ca.to_str().unwrap()]);
    out.expect_code(4);
    assert!(out.stderr.contains("tls"), "{out:#?}");
    assert!(!w.root.join("alice/x").exists());

    // 4: nothing listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = w.connect(
        ALICE_PW,
        &[&format!("alice@127.0.0.1:{port}")],
        Some("pwd\n"),
    );
    out.expect_code(4);
    assert!(out.stderr.contains("cannot connect"), "{out:#?}");
}

#[test]
fn connect_without_ca_does_not_trust_the_dev_certificate() {
    let w = World::start();
    let out = Ferry::new(&w.local)
        .env("FERRY_PASSWORD", ALICE_PW)
        .stdin("mkdir x\n")
        .run(&["connect", &w.server.target("alice")]);
    out.expect_code(4);
    assert!(!w.root.join("alice/x").exists());
}

// ---------------------------------------------------------------------------------------------
// Help
// ---------------------------------------------------------------------------------------------

#[test]
fn help_of_every_command_exits_0_and_has_an_example() {
    let tmp = tempfile::tempdir().unwrap();
    let commands: &[&[&str]] = &[
        &[],
        &["certs"],
        &["user"],
        &["user", "add"],
        &["user", "passwd"],
        &["user", "del"],
        &["user", "list"],
        &["serve"],
        &["connect"],
        &["get"],
        &["put"],
        &["ls"],
    ];
    let mut missing = Vec::new();
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = Ferry::new(tmp.path()).run(&args);
        out.expect_ok();
        assert!(out.stdout.contains("Usage: ferry"), "{out:#?}");
        assert!(
            out.stdout.lines().all(|l| l.chars().count() <= 100),
            "ferry {args:?} fits 100 columns:\n{}",
            out.stdout
        );
        if !out.stdout.contains("Example") {
            missing.push(format!("ferry {}", args.join(" ")));
        }
    }
    assert!(
        missing.is_empty(),
        "no \"Example\" in the long help of {missing:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The quick start of issue 2, end to end
// ---------------------------------------------------------------------------------------------

#[test]
fn quick_start_certs_user_add_serve_connect() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let report = random_file(&cwd.join("report.pdf"), 300_000, 6);

    let certs = Ferry::new(cwd).run(&["certs", "--host", "files.example.org"]);
    certs.expect_ok();
    printed_fingerprint(&certs, &cwd.join("certs"));

    Ferry::new(cwd)
        .stdin("alice's secret\n")
        .run(&["user", "add", "alice", "--password-stdin"])
        .expect_ok();

    let server = ServeProcess::start(cwd, &["--users", "users.toml", "--root", "data"]);
    let out = Ferry::new(cwd)
        .env("FERRY_PASSWORD", "alice's secret")
        .stdin("put report.pdf\nls\nget report.pdf copy.pdf\nquit\n")
        .run(&["connect", &server.target("alice"), "--ca", "certs/ca.pem"]);
    out.expect_ok();
    let digest = sha256_hex(&report);
    assert_eq!(
        out.stdout
            .matches(&format!("sha256 {digest} verified"))
            .count(),
        2,
        "{out:#?}"
    );
    let [kind, size, ..] = ls_line(&out.stdout, "report.pdf");
    assert!(kind.starts_with('-'));
    assert_eq!(size, "300000");
    assert_eq!(std::fs::read(cwd.join("copy.pdf")).unwrap(), report);
    assert_eq!(
        std::fs::read(cwd.join("data/alice/report.pdf")).unwrap(),
        report
    );
    assert_eq!(mode(&cwd.join("data/alice")), 0o700);

    let stopped = server.stop();
    assert!(stopped.status.is_some_and(|s| s.success()), "{stopped:#?}");
    assert!(!stopped.stderr.contains("alice's secret"), "{stopped:#?}");
}

/// `--log-format json`: every stderr line is one JSON object; logins, failed logins and every
/// transfer or change get an audit line (target `ferry::audit`) with user, peer, path, bytes,
/// digest, duration and result; a penalty is logged with the address and the reason; no
/// password is ever written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_has_an_audit_line_per_login_and_transfer() {
    let w = World::start_with(&["--log-format", "json"]);
    let server = &w.server;
    let tls = ferry::tls::client_config(Some(&w.ca), ferry::protocol::ALPN).unwrap();
    let connect =
        || ferry::client::Connection::connect("127.0.0.1", server.port(), Arc::clone(&tls));

    let local = w.local.join("report.txt");
    let data = b"quarterly numbers\n".repeat(1000);
    std::fs::write(&local, &data).unwrap();
    let digest = sha256_hex(&data);
    let mut c = connect().await.unwrap();
    c.login("alice", &Password::new(ALICE_PW.into()))
        .await
        .unwrap();
    c.put(&local, "/report.txt", false, &mut |_| {})
        .await
        .unwrap();
    c.get("/report.txt", &w.local.join("back.txt"), false, &mut |_| {})
        .await
        .unwrap();
    c.remove("/report.txt").await.unwrap();
    c.close().await.unwrap();
    // Four wrong passwords (5 s each) put 127.0.0.1 over the 15 s the penalties allow.
    for _ in 0..2 {
        let mut c = connect().await.unwrap();
        for _ in 0..2 {
            let _ = c
                .login("alice", &Password::new("wrong-guess-pw".into()))
                .await;
        }
    }
    server.wait_stderr("source penalised");
    assert!(connect().await.is_err(), "the penalised source was let in");
    server.wait_stderr("connection refused: source penalised");
    let stopped = w.server.stop();

    let lines: Vec<serde_json::Value> = stopped
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |what: &str, pred: &dyn Fn(&serde_json::Value) -> bool| {
        lines
            .iter()
            .find(|l| pred(&l["fields"]))
            .unwrap_or_else(|| panic!("no {what} line in:\n{}", stopped.stderr))
            .clone()
    };
    let audit = |l: &serde_json::Value| l["target"] == "ferry::audit";
    let login_ok = find("login", &|f| f["event"] == "login" && f["result"] == "ok");
    assert!(audit(&login_ok), "{login_ok}");
    assert_eq!(login_ok["fields"]["user"], "alice");
    assert!(
        login_ok["fields"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    let failed = find("failed login", &|f| {
        f["event"] == "login" && f["result"] == "auth_failed"
    });
    assert!(
        audit(&failed) && failed["fields"]["user"] == "alice",
        "{failed}"
    );
    for op in ["put", "get"] {
        let l = find(op, &|f| f["event"] == "request" && f["op"] == op);
        let f = &l["fields"];
        assert!(audit(&l), "{l}");
        assert_eq!(f["user"], "alice", "{l}");
        assert_eq!(f["path"], "/report.txt", "{l}");
        assert_eq!(f["bytes"], data.len() as u64, "{l}");
        assert_eq!(f["sha256"], digest.as_str(), "{l}");
        assert_eq!(f["result"], "ok", "{l}");
        assert!(f["ms"].is_u64(), "{l}");
        assert!(f["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{l}");
    }
    let rm = find("remove", &|f| {
        f["event"] == "request" && f["op"] == "remove"
    });
    assert_eq!(rm["fields"]["result"], "ok", "{rm}");
    let penalised = find("penalty", &|f| {
        f["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("source penalised"))
    });
    assert_eq!(penalised["fields"]["reason"], "authfail", "{penalised}");
    assert!(
        penalised["fields"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(!stopped.stderr.contains(ALICE_PW) && !stopped.stderr.contains("wrong-guess-pw"));
}

/// Regression: `ferry serve` once parsed its limit flags and then ran with the defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_limit_flags_take_effect() {
    let w = World::start_with(&["--max-sessions-per-user", "1", "--no-penalties"]);
    let server = &w.server;
    let tls = ferry::tls::client_config(Some(&w.ca), ferry::protocol::ALPN).unwrap();
    let login = || async {
        let mut c =
            ferry::client::Connection::connect("127.0.0.1", server.port(), Arc::clone(&tls))
                .await?;
        c.login("alice", &Password::new(ALICE_PW.into())).await?;
        Ok::<_, ferry::client::ClientError>(c)
    };
    let first = login().await.unwrap();
    match login().await {
        Err(ferry::client::ClientError::Remote(w)) => {
            assert_eq!(w.code, ferry::protocol::ErrorCode::Busy, "{w}");
        }
        other => panic!("a second session of alice got {other:?}"),
    }
    drop(first);
    // With --no-penalties, many failed logins never lock the source out.
    for _ in 0..6 {
        let mut c =
            ferry::client::Connection::connect("127.0.0.1", server.port(), Arc::clone(&tls))
                .await
                .expect("refused: penalties were not turned off");
        let _ = c.login("alice", &Password::new("wrong".into())).await;
    }
}
