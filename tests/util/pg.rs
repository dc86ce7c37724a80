//! A throwaway PostgreSQL for the `needs_postgres_*` tests: a cluster in a temp dir
//! (`initdb -A trust`, `pg_ctl` on a free loopback port, its socket in the temp dir), made
//! with Debian's `postgresql` binaries.
//!
//! [`shared`] is one cluster for the whole test process, started at its first use; each test
//! takes a database of its own on it ([`fresh_db`]). [`PgCluster::start`] makes a private one
//! that a test may stop and start again. Every cluster has a watchdog: a shell in a process
//! group of its own that waits for its stdin (a pipe only this process holds) to close, which
//! happens when the cluster is dropped or the test process ends in any way (exit, panic,
//! SIGKILL); it then stops the server (`pg_ctl stop -m immediate`) and removes the dir.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a test says when PostgreSQL is not installed.
pub const MISSING: &str = "needs postgres (Debian postgresql); .ci/run installs it";

/// The user the clusters are made for (trust authentication on loopback).
pub const USER: &str = "ferry";

/// The directory of the newest installed PostgreSQL's programs.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!("{MISSING}: no /usr/lib/postgresql/*/bin/initdb"),
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// `program args...` as the `postgres` user when we are root (initdb refuses root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The same as a shell word list, for the watchdog's script.
fn as_postgres_sh(program: &Path) -> String {
    let p = quote(program);
    if is_root() {
        format!("runuser -u postgres -- {p}")
    } else {
        p
    }
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL server of the tests, stopped and removed when dropped (or when the test
/// process goes).
pub struct PgCluster {
    /// The temp dir: data, socket and log.
    pub dir: PathBuf,
    /// The loopback port it listens on.
    pub port: u16,
    bin: PathBuf,
    /// The watchdog and the pipe it waits on.
    watchdog: Option<(Child, ChildStdin)>,
}

impl PgCluster {
    /// Makes and starts a cluster of its own (blocking, about a second).
    pub fn start() -> PgCluster {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("ferry-pg-")
            .tempdir()
            .unwrap()
            .keep();
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres")
                .arg(&dir)
                .status()
                .unwrap()
                .success();
            assert!(ok, "{MISSING}: cannot chown the cluster dir to `postgres`");
        }
        // The watchdog first, so the dir goes whatever happens next.
        // A cluster a test froze (SIGSTOP) is woken first, or it could not stop.
        let script = format!(
            "read _ignored; pid=$(head -n1 {pidfile} 2>/dev/null); \
             if [ -n \"$pid\" ]; then pkill -CONT -P \"$pid\"; kill -CONT \"$pid\"; fi 2>/dev/null; \
             {} -D {} stop -m immediate >/dev/null 2>&1; rm -rf {}",
            as_postgres_sh(&bin.join("pg_ctl")),
            quote(&dir.join("data")),
            quote(&dir),
            pidfile = quote(&dir.join("data").join("postmaster.pid")),
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a ^C to the test run does not kill it before it cleans.
            .process_group(0)
            .spawn()
            .expect("the watchdog shell");
        let pipe = child.stdin.take().unwrap();
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-A",
                "trust",
                "-U",
                USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .unwrap_or_else(|e| panic!("{MISSING}: initdb: {e}"));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // TLS on, with a certificate from a CA of this cluster's own (for the tests of
        // `sslmode=verify-full`); connections that do not ask for it stay in clear.
        let certs = dir.join("certs");
        ferry::certs::generate(&certs, &[], false).unwrap();
        let data = dir.join("data");
        std::fs::copy(certs.join("server.pem"), data.join("server.crt")).unwrap();
        std::fs::copy(certs.join("server.key"), data.join("server.key")).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres")
                .arg(data.join("server.crt"))
                .arg(data.join("server.key"))
                .status()
                .unwrap()
                .success();
            assert!(ok, "cannot chown the cluster's certificate to `postgres`");
        }
        let mut cluster = PgCluster {
            dir,
            port: 0,
            bin,
            watchdog: Some((child, pipe)),
        };
        // A port found free may be taken before the server binds it: try a few.
        for _ in 0..5 {
            cluster.port = free_port();
            if cluster.try_start() {
                return cluster;
            }
        }
        panic!(
            "postgres did not start: {}",
            std::fs::read_to_string(cluster.dir.join("log")).unwrap_or_default()
        );
    }

    fn try_start(&self) -> bool {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c full_page_writes=off -c max_connections=500 -c ssl=on",
            self.port,
            self.dir.display()
        );
        as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-o", &options, "-l"])
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "30", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Stops the server at once, as a crash would (`-m immediate`); blocking.
    pub fn stop(&self) {
        let ok = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "pg_ctl stop failed");
    }

    /// Starts it again on the same port after [`PgCluster::stop`]; blocking.
    pub fn start_again(&self) {
        assert!(self.try_start(), "postgres did not start again");
    }

    /// Stops every process of the server with SIGSTOP (the postmaster and its children), as
    /// a hung machine or a network that swallows packets would look; [`PgCluster::thaw`]
    /// wakes them.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Wakes the processes [`PgCluster::freeze`] stopped.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pidfile = self.dir.join("data").join("postmaster.pid");
        let text = std::fs::read_to_string(pidfile).expect("postmaster.pid");
        let pid = text.lines().next().unwrap().trim().to_string();
        let children = Command::new("pgrep").args(["-P", &pid]).output().unwrap();
        let mut pids: Vec<String> = String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        pids.push(pid);
        let ok = Command::new("kill")
            .arg(sig)
            .args(&pids)
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pids:?}");
    }

    /// The CA that signed the cluster's certificate (for `sslrootcert`).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("certs").join("ca.pem")
    }

    /// The URL of database `db` (trust authentication: no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// A new, empty database on this cluster; its URL.
    pub async fn fresh_db(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to the test cluster: {e}"));
        let driver = tokio::spawn(conn);
        // A name made of digits and underscores: nothing to quote.
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        drop(client);
        let _ = driver.await;
        self.url(&name)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some((mut child, mut pipe)) = self.watchdog.take() {
            // Closing the pipe is what the watchdog waits for; it stops and removes.
            let _ = pipe.write_all(b"\n");
            drop(pipe);
            let _ = child.wait();
        }
    }
}

/// The cluster shared by the whole test process, started at the first call.
pub fn shared() -> &'static PgCluster {
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    SHARED.get_or_init(PgCluster::start)
}

/// A new, empty database on the shared cluster; its URL.
pub async fn fresh_db() -> String {
    // Blocks the caller's thread for the first start (about a second), once per process.
    shared().fresh_db().await
}
