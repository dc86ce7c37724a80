//! Load test: many concurrent clients against the real `ferry serve` for minutes, with random
//! disconnects, then a full audit of what the server kept. Not part of CI (it runs for minutes
//! and wants the machine to itself); results are in `docs/LOAD_TEST.md`.
//!
//! ```sh
//! cargo build --release && cargo run --release --example load_test -- [--clients 200] [--secs 120]
//! ```
//!
//! It starts `target/release/ferry serve` on 127.0.0.1 (a free port) with dev certificates and
//! 20 users with default argon2id parameters, in a temp dir it removes afterwards (`--keep`
//! keeps it). Each client logs in as one of the users, works in its own directory for a
//! random number of requests, logs out and in again, until the time is up:
//!
//! - `put` of a new file (random size: mostly a few KiB, some up to 1 MiB, a few up to 16 MiB)
//!   whose content is generated from a seed, so it can be regenerated for the audit;
//! - `get` of a file it committed before (the client verifies the digest, and the test compares
//!   it with what it uploaded);
//! - `ls` of its directory (every committed file must be listed with its size);
//! - `rm` of a file it committed;
//! - now and then a transfer is cut off after a random few milliseconds by dropping the
//!   connection (the client vanishes), and the client reconnects; half the cut-off uploads
//!   are resumed (`put_resume`) in the next session.
//!
//! The audit after the run, straight from the server's root directory:
//! - every committed, not removed file exists and its SHA-256 is that of what its client sent;
//! - a file whose upload was cut off may exist only if it is whole (the server committed it just
//!   before the client vanished); no removed file exists; no file exists that nobody sent;
//! - no `.ferry-tmp.*` file remains anywhere; every kept partial (for resume) belongs to a cut-off
//!   upload of the same user and path and holds a prefix of exactly what was sent;
//! - no kept partial sits beside a committed file of the same path; `ls` never shows a removed
//!   file, a temp file or a partial;
//! - every client got in and few logins were answered `busy`;
//! - the server's RSS, sampled before, during and after (15 s after every client is gone), is
//!   back within 32 MiB of where it started; after SIGTERM the server exits on its own and the
//!   whole audit still holds.
//!
//! The exit status is non-zero if any check fails.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry::client::{ClientError, Connection};
use ferry::users::Password;
use sha2::{Digest, Sha256};

const USERS: usize = 20;
const PASSWORD: &str = "load-test-password";
/// At most this many committed files per client; beyond it the client removes one first.
const MAX_FILES_PER_CLIENT: usize = 24;
/// A single request (or a login) taking longer than this counts as a hang.
const OP_TIMEOUT: Duration = Duration::from_secs(120);

/// A small, fast, seedable generator (SplitMix64): content and choices, reproducible.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The content of upload `seed`: `size` bytes, the same every time.
fn content(seed: u64, size: u64, mut sink: impl FnMut(&[u8])) {
    let mut rng = Rng(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            let w = rng.next().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
        sink(&buf[..n]);
        left -= n as u64;
    }
}

fn digest_of(seed: u64, size: u64) -> String {
    let mut h = Sha256::new();
    content(seed, size, |b| h.update(b));
    hex::encode(h.finalize())
}

fn random_size(rng: &mut Rng) -> u64 {
    match rng.next() % 100 {
        0..60 => rng.range(0, 16 * 1024),
        60..90 => rng.range(16 * 1024, 1024 * 1024),
        90..99 => rng.range(1024 * 1024, 4 * 1024 * 1024),
        _ => rng.range(4 * 1024 * 1024, 16 * 1024 * 1024),
    }
}

/// What became of one upload attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// The server acknowledged it (both digests agreed).
    Committed,
    /// The client vanished mid-upload: committed whole or not at all; maybe kept as a partial.
    CutOff,
    /// Committed, then removed by its client.
    Removed,
}

#[derive(Clone, Debug)]
struct Upload {
    user: String,
    remote: String,
    seed: u64,
    size: u64,
    fate: Fate,
}

#[derive(Default)]
struct Counters {
    sessions: AtomicU64,
    logins_busy: AtomicU64,
    puts: AtomicU64,
    gets: AtomicU64,
    lists: AtomicU64,
    removes: AtomicU64,
    cut_puts: AtomicU64,
    cut_gets: AtomicU64,
    resumes: AtomicU64,
    resumed_exists: AtomicU64,
    resumed_bytes_saved: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

struct Shared {
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    deadline: Instant,
    scratch: PathBuf,
    counters: Counters,
    uploads: Mutex<Vec<Upload>>,
    failures: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Shared {
    fn fail(&self, what: String) {
        eprintln!("FAIL: {what}");
        self.failures.lock().unwrap().push(what);
    }
}

fn main() -> Result<()> {
    let mut clients = 200usize;
    let mut secs = 120u64;
    let mut keep = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--clients" => clients = args.next().context("--clients N")?.parse()?,
            "--secs" => secs = args.next().context("--secs N")?.parse()?,
            "--keep" => keep = true,
            _ => bail!("usage: load_test [--clients N] [--secs N] [--keep]"),
        }
    }
    let exe = std::env::current_exe()?;
    let ferry = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("ferry"))
        .context("where is the ferry binary?")?;
    if !ferry.is_file() {
        bail!(
            "{} is missing: run `cargo build --release` first",
            ferry.display()
        );
    }

    let dir = std::env::temp_dir().join(format!("ferry-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run(&ferry, &dir, clients, secs);
    if keep {
        println!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let failures = result?;
    if failures > 0 {
        bail!("{failures} check(s) failed");
    }
    println!("all checks passed");
    Ok(())
}

fn run(ferry: &Path, dir: &Path, clients: usize, secs: u64) -> Result<usize> {
    let certs = ferry::certs::generate(&dir.join("certs"), &[], false)?;
    let users_file = dir.join("users.toml");
    for u in 0..USERS {
        let mut child = Command::new(ferry)
            .args([
                "user",
                "add",
                &format!("u{u:02}"),
                "--password-stdin",
                "--users",
            ])
            .arg(&users_file)
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(format!("{PASSWORD}\n").as_bytes())?;
        if !child.wait()?.success() {
            bail!("ferry user add failed");
        }
    }
    let root = dir.join("root");
    // Sources and downloads live in memory (/dev/shm when there is one) so the disk serves
    // the server alone.
    let shm = Path::new("/dev/shm");
    let scratch = if shm.is_dir() {
        shm.join(format!("ferry-load-{}", std::process::id()))
    } else {
        dir.join("scratch")
    };
    std::fs::create_dir_all(&scratch)?;
    let mut server = Server::start(ferry, dir, &users_file, &root, &certs.paths)?;
    let outcome = drive(
        &mut server,
        &certs.paths.ca_cert,
        &scratch,
        &root,
        clients,
        secs,
    );
    let _ = std::fs::remove_dir_all(&scratch);
    server.kill();
    outcome
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(
        ferry: &Path,
        dir: &Path,
        users: &Path,
        root: &Path,
        certs: &ferry::certs::CertPaths,
    ) -> Result<Server> {
        let log = std::fs::File::create(dir.join("server.log"))?;
        let mut child = Command::new(ferry)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--users"])
            .arg(users)
            .arg("--root")
            .arg(root)
            .arg("--cert")
            .arg(&certs.server_cert)
            .arg("--key")
            .arg(&certs.server_key)
            // Every client comes from 127.0.0.1 and vanishes on purpose now and then: without
            // these, the per-source cap and the penalties would (rightly) shut it out.
            .args([
                "--no-penalties",
                "--max-connections",
                "4096",
                "--max-connections-per-source",
                "4096",
                "--max-sessions-per-user",
                "4096",
            ])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()?;
        let mut out = BufReader::new(child.stdout.take().context("stdout")?);
        let mut line = String::new();
        let port = loop {
            line.clear();
            if out.read_line(&mut line)? == 0 {
                let _ = child.kill();
                bail!("ferry serve exited; see {}/server.log", dir.display());
            }
            if let Some(addr) = line.trim().strip_prefix("ferry listening on ") {
                break addr.rsplit(':').next().unwrap_or("").parse::<u16>()?;
            }
        };
        // Keep draining stdout so the server never blocks on it.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        Ok(Server { child, port })
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn threads(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn terminate(&mut self, within: Duration) -> Result<bool> {
        // SAFETY: kill(2) with a PID this process started and has not reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < within {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(false)
    }

    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn drive(
    server: &mut Server,
    ca: &Path,
    scratch: &Path,
    root: &Path,
    clients: usize,
    secs: u64,
) -> Result<usize> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tls = ferry::tls::client_config(Some(ca), ferry::protocol::ALPN)?;

    // Baseline: the server after one session (login, list, logout).
    rt.block_on(async {
        let mut c = Connection::connect("127.0.0.1", server.port, Arc::clone(&tls)).await?;
        c.login("u00", &Password::new(PASSWORD.into())).await?;
        c.list("/").await?;
        c.close().await
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = server.rss_kib();
    let threads_before = server.threads();

    let shared = Arc::new(Shared {
        port: server.port,
        tls,
        deadline: Instant::now() + Duration::from_secs(secs),
        scratch: scratch.to_path_buf(),
        counters: Counters::default(),
        uploads: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });

    // Sample the server's RSS every 100 ms while the clients run.
    let peak = Arc::new(AtomicU64::new(rss_before));
    let pid = server.child.id();
    let sampler = {
        let (peak, shared) = (Arc::clone(&peak), Arc::clone(&shared));
        std::thread::spawn(move || {
            while !shared.stop.load(Ordering::Relaxed) {
                let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kib) = s
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    println!(
        "load: {clients} clients for {secs} s against ferry serve on 127.0.0.1:{} (RSS {})",
        server.port,
        mib(rss_before)
    );
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..clients {
            let shared = Arc::clone(&shared);
            tasks.spawn(client(shared, c));
        }
        let hard_stop = tokio::time::sleep(Duration::from_secs(secs) + OP_TIMEOUT);
        tokio::pin!(hard_stop);
        loop {
            tokio::select! {
                r = tasks.join_next() => match r {
                    None => break,
                    Some(Err(e)) => shared.fail(format!("a client task failed: {e}")),
                    Some(Ok(())) => {}
                },
                () = &mut hard_stop => {
                    shared.fail(format!("{} clients still busy long after the end", tasks.len()));
                    tasks.abort_all();
                    break;
                }
            }
        }
    });
    let ran = started.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    drop(rt);

    // Memory once every client is gone: right away and after a few seconds.
    let rss_end = server.rss_kib();
    // Idle threads of the server's blocking pool exit after 10 s without work.
    std::thread::sleep(Duration::from_secs(15));
    let rss_after = server.rss_kib();
    let threads_after = server.threads();
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", server.child.id()))
        .unwrap_or_default();
    let field = |name: &str| {
        smaps
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (anon_after, file_after) = (field("Anonymous:"), field("Rss:") - field("Anonymous:"));

    let c = &shared.counters;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!("ran {:.1} s", ran.as_secs_f64());
    println!(
        "sessions {} (logins answered busy: {}); put {} (cut off {}), get {} (cut off {}), ls {}, rm {}",
        n(&c.sessions),
        n(&c.logins_busy),
        n(&c.puts),
        n(&c.cut_puts),
        n(&c.gets),
        n(&c.cut_gets),
        n(&c.lists),
        n(&c.removes)
    );
    println!(
        "resumed uploads {} ({} had been committed whole before the cut; {:.1} MB not resent)",
        n(&c.resumes),
        n(&c.resumed_exists),
        n(&c.resumed_bytes_saved) as f64 / 1e6
    );
    println!(
        "verified bytes: {:.1} MB up, {:.1} MB down ({:.1} MB/s together)",
        n(&c.bytes_up) as f64 / 1e6,
        n(&c.bytes_down) as f64 / 1e6,
        (n(&c.bytes_up) + n(&c.bytes_down)) as f64 / 1e6 / ran.as_secs_f64()
    );
    println!(
        "server RSS: before {}, peak {}, when the last client left {}, 15 s later {} \
         ({} anonymous, {} file-backed); threads {} -> {}",
        mib(rss_before),
        mib(peak.load(Ordering::Relaxed)),
        mib(rss_end),
        mib(rss_after),
        mib(anon_after),
        mib(file_after),
        threads_before,
        threads_after
    );

    // The run must have done real work: every client got in, and few logins were turned away.
    if n(&c.sessions) < clients as u64 || n(&c.puts) == 0 {
        shared.fail(format!(
            "too little work: {} sessions for {clients} clients, {} puts",
            n(&c.sessions),
            n(&c.puts)
        ));
    }
    if n(&c.logins_busy) * 2 > n(&c.sessions) {
        shared.fail(format!("{} logins answered busy", n(&c.logins_busy)));
    }
    // Memory must come back: at most this much above the start once every client is gone.
    const RSS_SLACK_KIB: u64 = 32 * 1024;
    if rss_after > rss_before + RSS_SLACK_KIB {
        shared.fail(format!(
            "server RSS {} 15 s after the last client, {} before",
            mib(rss_after),
            mib(rss_before)
        ));
    }

    let uploads = shared.uploads.lock().unwrap().clone();
    audit(&shared, root, &uploads)?;

    // Graceful stop: the server must exit by itself, and the audit must still hold after it.
    let clean_exit = server.terminate(Duration::from_secs(30))?;
    if !clean_exit {
        shared.fail("ferry serve did not exit cleanly within 30 s of SIGTERM".into());
    }
    println!("SIGTERM: server exited cleanly: {clean_exit}; audit again:");
    audit(&shared, root, &uploads)?;
    let failures = shared.failures.lock().unwrap().len();
    Ok(failures)
}

fn is_temp(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".ferry-tmp."))
}

/// Every regular file beneath `dir`.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

fn file_digest(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// The server's partial-upload key for `user` and `remote` (docs/PROTOCOL.md, resume).
fn partial_key(user: &str, remote: &str) -> String {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update([0]);
    h.update(remote.as_bytes());
    hex::encode(h.finalize())[..32].to_string()
}

fn audit(shared: &Shared, root: &Path, uploads: &[Upload]) -> Result<()> {
    let t = Instant::now();
    let mut by_path: HashMap<(String, String), &Upload> = HashMap::new();
    let mut by_key: HashMap<(String, String), &Upload> = HashMap::new();
    for u in uploads {
        by_path.insert((u.user.clone(), u.remote.clone()), u);
        if u.fate == Fate::CutOff {
            by_key.insert((u.user.clone(), partial_key(&u.user, &u.remote)), u);
        }
    }
    let mut seen = std::collections::HashSet::new();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for path in walk(root)? {
        let rel = path.strip_prefix(root)?;
        let mut parts = rel.iter().map(|s| s.to_string_lossy().into_owned());
        let user = parts.next().unwrap_or_default();
        let rest: Vec<String> = parts.collect();
        if is_temp(&path) {
            shared.fail(format!("temp file left: {}", rel.display()));
            continue;
        }
        if rest.first().map(String::as_str) == Some(".ferry-partials") && rest.len() == 2 {
            let Some(u) = by_key.get(&(user.clone(), rest[1].clone())) else {
                shared.fail(format!("a partial nobody left: {}", rel.display()));
                continue;
            };
            if root
                .join(&user)
                .join(u.remote.trim_start_matches('/'))
                .exists()
            {
                shared.fail(format!(
                    "partial {} kept beside its committed file {}",
                    rel.display(),
                    u.remote
                ));
            }
            let (len, got) = file_digest(&path)?;
            if len > u.size || got != digest_of(u.seed, len) {
                shared.fail(format!(
                    "partial {} is not a prefix of what was sent for {}",
                    rel.display(),
                    u.remote
                ));
            }
            *counts
                .entry("partials kept, each a true prefix")
                .or_default() += 1;
            continue;
        }
        let remote = format!("/{}", rest.join("/"));
        let Some(u) = by_path.get(&(user.clone(), remote.clone())) else {
            shared.fail(format!("a file nobody sent: {}", rel.display()));
            continue;
        };
        seen.insert((user.clone(), remote.clone()));
        match u.fate {
            Fate::Removed => shared.fail(format!("a removed file exists: {}", rel.display())),
            Fate::Committed | Fate::CutOff => {
                let (len, got) = file_digest(&path)?;
                if len != u.size || got != digest_of(u.seed, u.size) {
                    shared.fail(format!(
                        "{}: {len} bytes, sha256 {got}; sent {} bytes with another digest",
                        rel.display(),
                        u.size
                    ));
                } else if u.fate == Fate::Committed {
                    *counts
                        .entry("committed files, digest verified")
                        .or_default() += 1;
                } else {
                    *counts
                        .entry("cut-off uploads the server had committed whole")
                        .or_default() += 1;
                }
            }
        }
    }
    for u in uploads {
        if u.fate == Fate::Committed && !seen.contains(&(u.user.clone(), u.remote.clone())) {
            shared.fail(format!("committed file lost: {} {}", u.user, u.remote));
        }
    }
    let cut = uploads.iter().filter(|u| u.fate == Fate::CutOff).count();
    let removed = uploads.iter().filter(|u| u.fate == Fate::Removed).count();
    println!(
        "audit ({:.1} s): {} uploads recorded ({} cut off, {} removed later)",
        t.elapsed().as_secs_f64(),
        uploads.len(),
        cut,
        removed
    );
    for (k, v) in counts {
        println!("  {k}: {v}");
    }
    println!(
        "  temp files left: {}",
        walk(root)?.iter().filter(|p| is_temp(p)).count()
    );
    Ok(())
}

/// What a client remembers: its committed files as (remote path, seed, size, index into the
/// upload records), and an upload that was cut off, to resume in the next session.
struct Mine {
    files: Vec<(String, u64, u64, usize)>,
    cut: Option<(String, u64, u64, usize)>,
    /// Names this client removed (and never reused: every upload has a new name).
    removed: std::collections::HashSet<String>,
}

async fn client(shared: Arc<Shared>, id: usize) {
    let user = format!("u{:02}", id % USERS);
    let dir = format!("/c{id:03}");
    let scratch = shared.scratch.join(format!("c{id:03}"));
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        shared.fail(format!("client {id}: scratch: {e}"));
        return;
    }
    let mut rng = Rng(0xF0F0_0000 + id as u64);
    let mut mine = Mine {
        files: Vec::new(),
        cut: None,
        removed: std::collections::HashSet::new(),
    };
    let mut seq = 0u64;
    let mut made_dir = false;
    let password = Password::new(PASSWORD.into());
    while Instant::now() < shared.deadline {
        // Log in, retrying while the server says it is busy (its argon2 queue is full).
        let login = async {
            let mut c =
                Connection::connect("127.0.0.1", shared.port, Arc::clone(&shared.tls)).await?;
            c.login(&user, &password).await?;
            Ok::<_, ClientError>(c)
        };
        let mut conn = match tokio::time::timeout(OP_TIMEOUT, login).await {
            Ok(Ok(c)) => c,
            Ok(Err(ClientError::Remote(w))) if w.code == ferry::protocol::ErrorCode::Busy => {
                shared.counters.logins_busy.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(rng.range(50, 500))).await;
                continue;
            }
            Ok(Err(e)) => {
                shared.fail(format!("client {id}: login: {e}"));
                return;
            }
            Err(_) => {
                shared.fail(format!("client {id}: login hung"));
                return;
            }
        };
        shared.counters.sessions.fetch_add(1, Ordering::Relaxed);
        if !made_dir {
            match conn.mkdir(&dir).await {
                Ok(()) => made_dir = true,
                Err(e) => {
                    shared.fail(format!("client {id}: mkdir: {e}"));
                    return;
                }
            }
        }
        let ops = rng.range(5, 60);
        let mut vanished = false;
        // Half the uploads that were cut off are resumed first thing in the next session.
        if let Some(cut) = mine.cut.take()
            && rng.chance(50)
        {
            match resume(&shared, &mut conn, &mut mine, &mut rng, &scratch, cut).await {
                Ok(true) => {}
                Ok(false) => vanished = true,
                Err(e) => {
                    shared.fail(format!("client {id}: {e}"));
                    return;
                }
            }
        }
        for _ in 0..ops {
            if vanished {
                break;
            }
            if Instant::now() >= shared.deadline {
                break;
            }
            let roll = rng.next() % 100;
            let result = if roll < 45 || mine.files.is_empty() {
                if mine.files.len() >= MAX_FILES_PER_CLIENT {
                    remove(&shared, &mut conn, &mut mine, &mut rng, &user).await
                } else {
                    seq += 1;
                    put(
                        &shared, &mut conn, &mut mine, &mut rng, &user, &dir, &scratch, id, seq,
                    )
                    .await
                }
            } else if roll < 75 {
                get(&shared, &mut conn, &mine, &mut rng, &scratch).await
            } else if roll < 90 {
                list(&shared, &mut conn, &mine, &dir).await
            } else {
                remove(&shared, &mut conn, &mut mine, &mut rng, &user).await
            };
            match result {
                Ok(true) => {}
                Ok(false) => {
                    vanished = true;
                    break;
                }
                Err(e) => {
                    shared.fail(format!("client {id}: {e}"));
                    return;
                }
            }
        }
        if !vanished && let Err(e) = conn.close().await {
            shared.fail(format!("client {id}: logout: {e}"));
            return;
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Runs `op` to the end, or cuts it off after a random few milliseconds (3 % of transfers):
/// `None` if it was cut off.
async fn maybe_cut<T>(
    rng: &mut Rng,
    op: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<Option<T>> {
    let cut = rng.chance(3);
    let limit = if cut {
        Duration::from_millis(rng.range(1, 40))
    } else {
        OP_TIMEOUT
    };
    match tokio::time::timeout(limit, op).await {
        Ok(r) => Ok(Some(r?)),
        Err(_) if cut => Ok(None),
        Err(_) => bail!("a request hung for {} s", OP_TIMEOUT.as_secs()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn put(
    shared: &Shared,
    conn: &mut Connection,
    mine: &mut Mine,
    rng: &mut Rng,
    user: &str,
    dir: &str,
    scratch: &Path,
    id: usize,
    seq: u64,
) -> Result<bool> {
    let seed = ((id as u64) << 32) | seq;
    let size = random_size(rng);
    let local = scratch.join("up.bin");
    write_content(&local, seed, size)?;
    let remote = format!("{dir}/{seq}.bin");
    let index = {
        let mut all = shared.uploads.lock().unwrap();
        all.push(Upload {
            user: user.to_string(),
            remote: remote.clone(),
            seed,
            size,
            fate: Fate::CutOff,
        });
        all.len() - 1
    };
    shared.counters.puts.fetch_add(1, Ordering::Relaxed);
    let done = maybe_cut(rng, conn.put(&local, &remote, false, &mut |_| {}))
        .await
        .with_context(|| format!("put {remote} ({size} bytes)"))?;
    let _ = std::fs::remove_file(&local);
    let Some(t) = done else {
        shared.counters.cut_puts.fetch_add(1, Ordering::Relaxed);
        mine.cut = Some((remote, seed, size, index));
        return Ok(false);
    };
    committed(shared, mine, &t, (remote, seed, size, index))
}

/// Resumes a cut-off upload: the server checks the prefix it kept (if any) against the
/// client's digest of it, takes the rest, and verifies the whole file.
async fn resume(
    shared: &Shared,
    conn: &mut Connection,
    mine: &mut Mine,
    rng: &mut Rng,
    scratch: &Path,
    (remote, seed, size, index): (String, u64, u64, usize),
) -> Result<bool> {
    let local = scratch.join("up.bin");
    write_content(&local, seed, size)?;
    shared.counters.resumes.fetch_add(1, Ordering::Relaxed);
    // The cut-off upload may have been committed whole after all: then the name is taken.
    let done = maybe_cut(rng, conn.put_resume(&local, &remote, false, &mut |_| {})).await;
    let _ = std::fs::remove_file(&local);
    let t = match done {
        Ok(Some(t)) => t,
        Ok(None) => {
            shared.counters.cut_puts.fetch_add(1, Ordering::Relaxed);
            mine.cut = Some((remote, seed, size, index));
            return Ok(false);
        }
        Err(e)
            if e.downcast_ref::<ClientError>().is_some_and(|c| {
                matches!(c, ClientError::Remote(w)
                    if w.code == ferry::protocol::ErrorCode::AlreadyExists)
            }) =>
        {
            shared
                .counters
                .resumed_exists
                .fetch_add(1, Ordering::Relaxed);
            // The server says the cut-off upload was committed after all: it must be there,
            // whole (the audit checks).
            shared.uploads.lock().unwrap()[index].fate = Fate::Committed;
            return Ok(true);
        }
        Err(e) => return Err(e.context(format!("resume {remote} ({size} bytes)"))),
    };
    shared
        .counters
        .resumed_bytes_saved
        .fetch_add(t.resumed_from, Ordering::Relaxed);
    committed(shared, mine, &t, (remote, seed, size, index))
}

/// Records an upload the server acknowledged, after checking the client reported exactly
/// what was sent.
fn committed(
    shared: &Shared,
    mine: &mut Mine,
    t: &ferry::client::Transferred,
    (remote, seed, size, index): (String, u64, u64, usize),
) -> Result<bool> {
    if t.size != size || t.sha256 != digest_of(seed, size) {
        bail!(
            "{remote}: the client reported {} bytes, {}; sent {size}",
            t.size,
            t.sha256
        );
    }
    shared.uploads.lock().unwrap()[index].fate = Fate::Committed;
    shared
        .counters
        .bytes_up
        .fetch_add(size - t.resumed_from, Ordering::Relaxed);
    mine.files.push((remote, seed, size, index));
    Ok(true)
}

fn write_content(local: &Path, seed: u64, size: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(local)?);
    let mut err = None;
    content(seed, size, |b| {
        if err.is_none() {
            err = f.write_all(b).err();
        }
    });
    if let Some(e) = err {
        return Err(e.into());
    }
    f.flush()?;
    Ok(())
}

async fn get(
    shared: &Shared,
    conn: &mut Connection,
    mine: &Mine,
    rng: &mut Rng,
    scratch: &Path,
) -> Result<bool> {
    let (remote, seed, size, _) = &mine.files[(rng.next() % mine.files.len() as u64) as usize];
    let local = scratch.join("down.bin");
    shared.counters.gets.fetch_add(1, Ordering::Relaxed);
    let done = maybe_cut(rng, conn.get(remote, &local, true, &mut |_| {}))
        .await
        .with_context(|| format!("get {remote}"))?;
    let Some(t) = done else {
        shared.counters.cut_gets.fetch_add(1, Ordering::Relaxed);
        // Whatever the cut-off left locally is the client's business; start clean.
        for e in std::fs::read_dir(scratch)?.flatten() {
            if e.file_name() != "up.bin" {
                let _ = std::fs::remove_file(e.path());
            }
        }
        return Ok(false);
    };
    let (len, got) = file_digest(&local)?;
    let want = digest_of(*seed, *size);
    if len != *size || got != want || t.sha256 != want {
        bail!("get {remote}: {len} bytes with sha256 {got}, expected {size} bytes, {want}");
    }
    std::fs::remove_file(&local)?;
    shared
        .counters
        .bytes_down
        .fetch_add(*size, Ordering::Relaxed);
    Ok(true)
}

async fn list(shared: &Shared, conn: &mut Connection, mine: &Mine, dir: &str) -> Result<bool> {
    shared.counters.lists.fetch_add(1, Ordering::Relaxed);
    let entries = tokio::time::timeout(OP_TIMEOUT, conn.list(dir))
        .await
        .context("ls hung")?
        .with_context(|| format!("ls {dir}"))?;
    let listed: HashMap<&str, u64> = entries.iter().map(|e| (e.name.as_str(), e.size)).collect();
    for (remote, _, size, _) in &mine.files {
        let name = remote.rsplit('/').next().unwrap_or_default();
        match listed.get(name) {
            Some(s) if s == size => {}
            other => bail!("ls {dir}: {name} listed as {other:?}, committed with {size} bytes"),
        }
    }
    for name in listed.keys() {
        if name.starts_with('.') || !name.ends_with(".bin") {
            bail!("ls {dir} shows {name:?}, which no client uploaded (a temp or partial?)");
        }
        if mine.removed.contains(*name) {
            bail!("ls {dir} shows {name:?}, which was removed");
        }
    }
    Ok(true)
}

async fn remove(
    shared: &Shared,
    conn: &mut Connection,
    mine: &mut Mine,
    rng: &mut Rng,
    user: &str,
) -> Result<bool> {
    if mine.files.is_empty() {
        return Ok(true);
    }
    let i = (rng.next() % mine.files.len() as u64) as usize;
    let (remote, _, _, index) = mine.files.swap_remove(i);
    shared.counters.removes.fetch_add(1, Ordering::Relaxed);
    tokio::time::timeout(OP_TIMEOUT, conn.remove(&remote))
        .await
        .context("rm hung")?
        .with_context(|| format!("{user}: rm {remote}"))?;
    shared.uploads.lock().unwrap()[index].fate = Fate::Removed;
    mine.removed
        .insert(remote.rsplit('/').next().unwrap_or_default().to_string());
    Ok(true)
}
