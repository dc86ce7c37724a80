//! A real Garage (S3-compatible object store) for the `needs_garage_*` tests: one single-node
//! server per test process, started at the first use with the layout applied, one bucket and
//! one key; each test takes a fresh key prefix (a home) in it.
//!
//! The server never outlives the test process: a watchdog (a shell in its own process group,
//! so a Ctrl-C to the tests does not stop it first) waits for the test process to go, however
//! it goes (an exit, a panic, SIGKILL), then kills Garage by its PID and removes the temp dir.
//!
//! `garage` is looked up on PATH, then in ~/.cargo/bin. Without it every test that asks fails
//! with [`MISSING`].

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What a test without Garage says.
pub const MISSING: &str =
    "needs garage 2.5 (cargo install garage --version 2.5.0 --locked); .ci/run installs it";

/// How long Garage may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The running Garage of this test process.
#[derive(Debug)]
pub struct Garage {
    /// `http://127.0.0.1:PORT` (the S3 API).
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
    pub dir: PathBuf,
    pub pid: u32,
    config: PathBuf,
    bin: PathBuf,
}

static GARAGE: OnceLock<Result<Garage, String>> = OnceLock::new();

/// The Garage of this test process, started at the first call; panics with the reason when
/// it cannot run here.
pub fn garage() -> &'static Garage {
    match GARAGE.get_or_init(start) {
        Ok(g) => g,
        Err(why) => panic!("{why}"),
    }
}

/// A fresh home name for one test (a key prefix nobody else uses in this process).
pub fn fresh_home(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{what}-{n}-{:08x}", rand::random::<u32>())
}

/// `garage` on PATH, or in ~/.cargo/bin.
pub fn find_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("HOME")?;
        let p = Path::new(&home).join(".cargo/bin/garage");
        p.is_file().then_some(p)
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Garage {
    /// Runs `garage -c CONFIG ARGS` and returns its stdout, or why it failed.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        run_cli(&self.bin, &self.config, args)
    }

    /// Multipart uploads in progress under `prefix` (S3 ListMultipartUploads, through curl's
    /// SigV4), as (key, upload id).
    pub fn multipart_uploads(&self, prefix: &str) -> Vec<(String, String)> {
        let url = format!(
            "{}/{}?prefix={}&uploads=",
            self.endpoint,
            self.bucket,
            percent(prefix)
        );
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--aws-sigv4"])
            .arg(format!("aws:amz:{}:s3", self.region))
            .arg("--user")
            .arg(format!("{}:{}", self.key_id, self.secret))
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .arg(&url)
            .output()
            .expect("curl runs");
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "ListMultipartUploads: {body}");
        let mut found = Vec::new();
        for upload in body.split("<Upload>").skip(1) {
            let field = |name: &str| {
                upload
                    .split(&format!("<{name}>"))
                    .nth(1)
                    .and_then(|s| s.split(&format!("</{name}>")).next())
                    .unwrap_or("")
                    .to_string()
            };
            found.push((field("Key"), field("UploadId")));
        }
        found
    }
}

/// Percent-encodes a query value (unreserved characters stay).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

fn run_cli(bin: &Path, config: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .arg("-c")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("garage {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "garage {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value after `label` on its line of `text` (`Key ID:  GK...`).
fn field(text: &str, label: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn start() -> Result<Garage, String> {
    let bin = find_binary().ok_or_else(|| MISSING.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("ferry-garage-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    let (s3, rpc, admin) = (free_port(), free_port(), free_port());
    let config = dir.join("garage.toml");
    let secret: [u8; 32] = rand::random();
    let text = format!(
        "metadata_dir = \"{meta}\"\n\
         data_dir = \"{data}\"\n\
         db_engine = \"sqlite\"\n\
         replication_factor = 1\n\
         rpc_bind_addr = \"127.0.0.1:{rpc}\"\n\
         rpc_public_addr = \"127.0.0.1:{rpc}\"\n\
         rpc_secret = \"{secret}\"\n\
         [s3_api]\n\
         s3_region = \"garage\"\n\
         api_bind_addr = \"127.0.0.1:{s3}\"\n\
         root_domain = \".s3.garage.localhost\"\n\
         [admin]\n\
         api_bind_addr = \"127.0.0.1:{admin}\"\n",
        meta = dir.join("meta").display(),
        data = dir.join("data").display(),
        secret = hex::encode(secret),
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join("garage.log")).map_err(|e| e.to_string())?;
    let child = Command::new(&bin)
        .arg("-c")
        .arg(&config)
        .arg("server")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let pid = child.id();
    // The child is never waited for here: the watchdog kills it by PID when the test
    // process is gone (it is reaped with the test process then).
    std::mem::forget(child);
    watchdog(pid, &dir)?;
    let garage = Garage {
        endpoint: format!("http://127.0.0.1:{s3}"),
        region: "garage".into(),
        bucket: "ferry-test".into(),
        key_id: String::new(),
        secret: String::new(),
        dir,
        pid,
        config,
        bin,
    };
    set_up(garage).map_err(|e| format!("garage did not start: {e}"))
}

/// A shell in its own process group that waits for this process to end, then stops Garage
/// and removes its directory.
fn watchdog(garage_pid: u32, dir: &Path) -> Result<(), String> {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; \
         kill {garage_pid} 2>/dev/null; sleep 1; kill -9 {garage_pid} 2>/dev/null; \
         rm -rf '{}'",
        dir.display()
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("watchdog: {e}"))?;
    std::mem::forget(child);
    Ok(())
}

fn set_up(mut g: Garage) -> Result<Garage, String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let node = loop {
        match g.cli(&["node", "id", "-q"]) {
            Ok(out) => {
                let id = out.trim().split('@').next().unwrap_or("").to_string();
                if !id.is_empty() {
                    break id;
                }
            }
            Err(e) if Instant::now() >= deadline => {
                let log = std::fs::read_to_string(g.dir.join("garage.log")).unwrap_or_default();
                return Err(format!("{e}\n{log}"));
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // `node id` reads the node's key from its directory, which exists before the RPC port
    // listens: the first command that needs the server waits for it.
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match g.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]) {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    g.cli(&["layout", "apply", "--version", "1"])?;
    // Keys and buckets are refused until the layout is in force.
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match g.cli(&["bucket", "create", &g.bucket]) {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let key = g.cli(&["key", "create", "ferry-test-key"])?;
    g.key_id = field(&key, "Key ID:").ok_or_else(|| format!("no key id in {key}"))?;
    g.secret = field(&key, "Secret key:").ok_or_else(|| format!("no secret in {key}"))?;
    g.cli(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        "--owner",
        &g.bucket,
        "--key",
        "ferry-test-key",
    ])?;
    Ok(g)
}
