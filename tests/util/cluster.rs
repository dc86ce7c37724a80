//! A whole cluster on loopback for the `needs_cluster_*` tests: PostgreSQL, a 3-node Garage,
//! 3 ferry nodes (the real binary) and HAProxy in front, brought up by `scripts/cluster`, the
//! script operators try it with, so the tests cover it too. One cluster per test, one test
//! at a time ([`Cluster::up`] holds a lock): two cores run all of it.
//!
//! The cluster goes down when the [`Cluster`] is dropped, and, through the script's
//! watchdog, when the test process ends in any other way.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ferry::client::Connection;
use ferry::users::Password;

/// One cluster at a time in this process.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The ports a cluster takes above its base (see `scripts/cluster`).
const PORTS_USED: u16 = 43;

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub base: u16,
    pub admin_password: String,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// What a test needs that is not installed: a clear failure, never a silent pass.
fn require(tool: &str, how: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "command -v {tool} || test -x \"$HOME/.cargo/bin/{tool}\""
        ))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "needs {tool} ({how}); .ci/run installs it");
}

/// A base port whose whole range is free now.
fn free_base() -> u16 {
    // Below the kernel's ephemeral range: the ports are checked here and bound later by the
    // cluster's processes, and meanwhile any outgoing connection (Garage's RPC, a client) may
    // take a port of that range as its own end (HAProxy then cannot bind its port).
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let slots = (ephemeral_low.saturating_sub(10_000 + PORTS_USED) / 100).max(1);
    for _ in 0..200 {
        let base = 10_000 + (rand::random::<u16>() % slots) * 100;
        let free =
            (0..PORTS_USED).all(|i| TcpListener::bind((Ipv4Addr::LOCALHOST, base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free range of {PORTS_USED} loopback ports found");
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster")
}

impl Cluster {
    /// Brings a cluster up (about 10 s here) and waits for HAProxy to see the nodes.
    pub async fn up() -> Cluster {
        require("garage", "cargo install garage --version 2.5.0 --locked");
        require("haproxy", "Debian haproxy");
        require("pg_ctl", "Debian postgresql");
        let turn = ONE_AT_A_TIME.lock().await;
        let dir = tempfile::tempdir().unwrap();
        let base = free_base();
        let out = Command::new(script())
            .arg("up")
            .args(["--dir", dir.path().to_str().unwrap()])
            .args(["--base-port", &base.to_string()])
            .args(["--ferry", env!("CARGO_BIN_EXE_ferry")])
            .args(["--owner-pid", &std::process::id().to_string()])
            .env("PATH", path_with_cargo_bin())
            .output()
            .unwrap();
        let cluster = Cluster {
            admin_password: std::fs::read_to_string(dir.path().join("admin-password"))
                .map(|s| s.trim_end().to_string())
                .unwrap_or_default(),
            dir,
            base,
            _turn: turn,
        };
        assert!(
            out.status.success(),
            "scripts/cluster up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // HAProxy marks the nodes up after its first checks.
        for n in 1..=3 {
            cluster.wait_node_serves(n).await;
        }
        cluster
    }

    /// Where clients connect: HAProxy.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.base))
    }

    /// HAProxy's frontend straight to node `n` (1..3), for reaching one node on purpose.
    pub fn node_addr(&self, n: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.base + 6 + n))
    }

    /// Node `n`'s metrics listener.
    pub fn metrics_addr(&self, n: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.base + 3 + n))
    }

    /// The PostgreSQL URL the nodes use.
    pub fn accounts_url(&self) -> String {
        format!("postgres://ferry@127.0.0.1:{}/ferry", self.base + 10)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("certs/ca.pem")
    }

    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        ferry::tls::client_config(Some(&self.ca()), ferry::protocol::ALPN).unwrap()
    }

    /// Runs `scripts/cluster CMD [ARG]` on this cluster.
    pub fn run(&self, cmd: &str, arg: Option<u16>) {
        let mut c = Command::new(script());
        c.arg(cmd)
            .args(["--dir", self.dir.path().to_str().unwrap()]);
        if let Some(a) = arg {
            c.arg(a.to_string());
        }
        let out = c.env("PATH", path_with_cargo_bin()).output().unwrap();
        assert!(
            out.status.success(),
            "scripts/cluster {cmd} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs the real binary against the cluster's database: `ferry ARGS --accounts URL`.
    pub fn ferry(&self, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(args)
            .args(["--accounts", &self.accounts_url()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// Adds a user through the database (cheap argon2 parameters are not reachable from
    /// the CLI, so this is the real cost of one hash).
    pub fn add_user(&self, name: &str, password: &str, extra: &[&str]) {
        let mut args = vec!["user", "add", name, "--password-stdin"];
        args.extend_from_slice(extra);
        let out = self.ferry(&args, Some(&format!("{password}\n")));
        assert!(
            out.status.success(),
            "ferry user add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A logged-in connection through HAProxy (any node).
    pub async fn connect(&self, user: &str, password: &str) -> Connection {
        self.connect_to(self.addr(), user, password).await
    }

    /// A logged-in connection to node `n` (1..3).
    pub async fn connect_node(&self, n: u16, user: &str, password: &str) -> Connection {
        self.connect_to(self.node_addr(n), user, password).await
    }

    async fn connect_to(&self, addr: SocketAddr, user: &str, password: &str) -> Connection {
        let mut c = Connection::connect("localhost", addr.port(), self.client_tls())
            .await
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        c.login(user, &Password::new(password.to_string()))
            .await
            .unwrap_or_else(|e| panic!("login as {user} at {addr}: {e}"));
        c
    }

    /// Waits until a client gets through HAProxy to node `n` (its checks mark a started node
    /// up within a couple of seconds).
    pub async fn wait_node_serves(&self, n: u16) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_secs(5),
                Connection::connect("localhost", self.node_addr(n).port(), self.client_tls()),
            )
            .await;
            if let Ok(Ok(c)) = attempt {
                drop(c);
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {n} not serving through HAProxy after 30 s; logs in {}",
                self.dir.path().display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Node `n`'s metrics (`GET /metrics` on its admin listener).
    pub async fn metrics(&self, n: u16) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.metrics_addr(n))
            .await
            .unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        tcp.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        body
    }

    /// A node's log so far.
    pub fn log(&self, n: u16) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{n}.log"))).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in 1..=3 {
                let log = self.log(n);
                // Backtrace frames are indented: leave them out.
                let tail: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.starts_with(' ') && !l.contains("balancer health check"))
                    .rev()
                    .take(40)
                    .collect();
                eprintln!("--- node {n} log (last 40 lines, newest first)");
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
        let _ = Command::new(script())
            .arg("down")
            .args(["--dir", self.dir.path().to_str().unwrap_or_default()])
            .env("PATH", path_with_cargo_bin())
            .output();
    }
}

/// PATH with ~/.cargo/bin, where `cargo install garage` puts it.
fn path_with_cargo_bin() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    match std::env::var("HOME") {
        Ok(home) => format!("{home}/.cargo/bin:{path}"),
        Err(_) => path,
    }
}
