//! Quota accounting against the truth: random sequences of changes, made from several
//! sessions of one user with limits, after which the server's counters (the `usage` reply)
//! must equal a fresh walk of the home, done here independently of the server's code.
//!
//! Each seed gets a home of its own, first filled "by the admin" (files, directories, hard
//! links, a symlink), so that the login's walk is checked too. Replay one seed with
//! `FERRY_PROP_SEED=<n> cargo test --test tests accounting::` (it prints every operation).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry::protocol::{
    ClientMessage, DATA_CHUNK_LEN, FrameReader, FrameWriter, MAX_FRAME_LEN, ServerMessage,
};
use ferry::users::UserDb;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::util::{CHEAP, Raw, TestServer, quota_walk, sha256_hex, test_limits};

/// How many seeds, and operations per seed.
const SEEDS: u64 = 200;
const OPS: usize = 50;
/// Sessions of the one user, all open at once.
const SESSIONS: usize = 3;
/// The whole property test must stay quick enough to run with every `cargo test`.
const TIME_BUDGET: Duration = Duration::from_secs(60);

const USER: &str = "quinn";
const PASSWORD: &str = "quinn-pw";
/// Limits small enough that the random operations run into them now and then.
const QUOTA_BYTES: u64 = 1_500_000;
const QUOTA_FILES: u64 = 30;
const MAX_FILE_SIZE: u64 = 1_200_000;

/// Names the operations pick from: few, so that they collide (same name, a name onto itself,
/// a directory into itself).
const FILES: &[&str] = &["a", "b", "c", "d/a", "d/b", "d/e/a", "e/a", "d/e/f/a"];
const DIRS: &[&str] = &["d", "e", "d/e", "d/f", "d/e/f", "e/g"];

/// A fresh server whose world lives in memory (tmpfs) when the machine has one: the test does
/// thousands of commits, each fsynced.
async fn server() -> TestServer {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    ferry::certs::generate(&dir.path().join("certs"), &[], false).unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    write_users(&dir.path().join("users.toml"), 0);
    TestServer::start_in(dir, test_limits()).await
}

/// The users file: quinn, with limits, whose home is `seeds/<seed>`.
fn write_users(path: &Path, seed: u64) {
    let hash = ferry::users::hash_password_with(
        &ferry::users::Password::new(PASSWORD.to_string()),
        CHEAP.0,
        CHEAP.1,
        CHEAP.2,
    )
    .unwrap();
    let text = format!(
        "[users.{USER}]\npassword = \"{hash}\"\nhome = \"seeds/{seed}\"\n\
         quota_bytes = {QUOTA_BYTES}\nquota_files = {QUOTA_FILES}\n\
         max_file_size = {MAX_FILE_SIZE}\n"
    );
    std::fs::write(path, text).unwrap();
}

/// One logged-in session of quinn, with its own request ids.
struct Session {
    raw: Raw,
    next_id: u64,
}

impl Session {
    async fn open(server: &TestServer) -> Session {
        // Raw::connect, with Nagle's algorithm off (as the real client has it): a racing
        // upload sends its data in two bursts, and the second would wait for a delayed ACK.
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = ferry::tls::server_name("127.0.0.1").unwrap();
        let stream = tokio_rustls::TlsConnector::from(server.client_tls())
            .connect(name, tcp)
            .await
            .unwrap();
        let (r, w) = tokio::io::split(stream);
        let mut raw = Raw {
            reader: FrameReader::new(r, MAX_FRAME_LEN),
            writer: FrameWriter::new(w),
        };
        raw.login(USER, PASSWORD).await;
        Session { raw, next_id: 2 }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The final reply to `id` (progress skipped).
    async fn reply(&mut self, id: u64) -> ServerMessage {
        loop {
            match self.raw.recv().await {
                ServerMessage::Progress { .. } => continue,
                m
                @ (ServerMessage::Ok { id: i, .. } | ServerMessage::Error { id: Some(i), .. })
                    if i == id =>
                {
                    return m;
                }
                other => panic!("unexpected reply while waiting for {id}: {other:?}"),
            }
        }
    }

    async fn request(&mut self, make: impl FnOnce(u64) -> ClientMessage) -> String {
        let id = self.id();
        self.raw.send(&make(id)).await;
        outcome(&self.reply(id).await)
    }

    /// Queues a put of `data` (from `offset`, with the prefix digest); its bytes follow with
    /// `put_data`, then `put_end` or `abort`. Returns the request id; the reply is read by the
    /// caller. (Queued and flushed at the end, as a client would: a flush per frame meets
    /// Nagle's algorithm and the peer's delayed ACK, 40 ms a put.)
    async fn put_start(&mut self, path: &str, data: &[u8], offset: usize, overwrite: bool) -> u64 {
        let id = self.id();
        self.raw
            .writer
            .queue_message(&ClientMessage::Put {
                id,
                path: path.into(),
                size: data.len() as u64,
                overwrite,
                offset: offset as u64,
                prefix_sha256: (offset > 0).then(|| sha256_hex(&data[..offset])),
            })
            .unwrap();
        id
    }

    async fn put_data(&mut self, data: &[u8]) {
        for chunk in data.chunks(DATA_CHUNK_LEN) {
            self.raw.writer.queue_data(chunk).unwrap();
            if self.raw.writer.queued() > 1 << 20 {
                self.raw.writer.flush().await.unwrap();
            }
        }
    }

    async fn put_end(&mut self, id: u64, data: &[u8]) {
        self.raw
            .send(&ClientMessage::End {
                id,
                sha256: sha256_hex(data),
            })
            .await;
    }

    async fn flush(&mut self) {
        self.raw.writer.flush().await.unwrap();
    }

    /// Ends the session and waits until the server has closed it too.
    async fn close(mut self) {
        use tokio::io::AsyncWriteExt;
        let _ = self.raw.writer.get_mut().shutdown().await;
        assert!(self.raw.closed().await);
    }

    async fn usage(&mut self) -> (u64, u64) {
        let id = self.id();
        self.raw.send(&ClientMessage::Usage { id }).await;
        match self.reply(id).await {
            ServerMessage::Ok { usage: Some(u), .. } => {
                (u.used_bytes.unwrap(), u.used_files.unwrap())
            }
            other => panic!("usage: {other:?}"),
        }
    }
}

/// `ok` or the error code, for the log of operations.
fn outcome(m: &ServerMessage) -> String {
    match m {
        ServerMessage::Ok { .. } => "ok".into(),
        ServerMessage::Error { code, .. } => code.as_str().into(),
        other => format!("{other:?}"),
    }
}

/// Random bytes of a random size: mostly small (in-memory uploads), sometimes over the
/// in-memory limit (streamed), rarely over the group-commit limit (fsynced and renamed alone).
fn random_data(rng: &mut Xoshiro256PlusPlus) -> Vec<u8> {
    let size = match rng.random_range(0..1000) {
        0..5 => rng.random_range(1_048_577..1_060_000),
        5..35 => rng.random_range(262_145..300_000),
        _ => rng.random_range(0..20_000),
    };
    // One random byte repeated, a few others random: cheap to make, and a different prefix
    // for most resumes.
    let mut data = vec![rng.random::<u8>(); size];
    for _ in 0..4.min(size) {
        let at = rng.random_range(0..size);
        data[at] = rng.random();
    }
    data
}

fn pick<'a>(rng: &mut Xoshiro256PlusPlus, names: &[&'a str]) -> &'a str {
    names[rng.random_range(0..names.len())]
}

fn any_name(rng: &mut Xoshiro256PlusPlus) -> String {
    if rng.random_bool(0.3) {
        pick(rng, DIRS).to_string()
    } else if rng.random_bool(0.1) {
        // Into a directory that may be the one moved.
        format!("{}/x", pick(rng, DIRS))
    } else {
        pick(rng, FILES).to_string()
    }
}

/// Fills a new home as an admin might have: files, directories, two names of one file, a
/// symlink. The first login counts all of it.
fn prefill(home: &Path, rng: &mut Xoshiro256PlusPlus, log: &mut Vec<String>) {
    std::fs::create_dir_all(home).unwrap();
    for dir in DIRS {
        if rng.random_bool(0.4) {
            let _ = std::fs::create_dir_all(home.join(dir));
        }
    }
    for name in FILES {
        if rng.random_bool(0.3) && home.join(name).parent().unwrap().is_dir() {
            let n = rng.random_range(0..5000);
            std::fs::write(home.join(name), vec![7u8; n]).unwrap();
        }
    }
    // A hard link: two names of one file (each name counts).
    let (a, b) = (pick(rng, FILES), pick(rng, FILES));
    if a != b && home.join(a).is_file() && home.join(b).parent().unwrap().is_dir() {
        let _ = std::fs::remove_file(home.join(b));
        std::fs::hard_link(home.join(a), home.join(b)).unwrap();
        log.push(format!("prefill: hard link {a} = {b}"));
    }
    if rng.random_bool(0.3) {
        let _ = std::os::unix::fs::symlink("a", home.join("s"));
    }
    log.push(format!("prefill: {:?}", quota_walk(home)));
}

/// Runs one seed: returns the log of operations, or panics with it.
async fn run_seed(server: &TestServer, seed: u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut log = Vec::new();
    write_users(&server.users_file, seed);
    server
        .server
        .replace_users(UserDb::load(&server.users_file).unwrap());
    let home = server.root.join("seeds").join(seed.to_string());
    prefill(&home, &mut rng, &mut log);
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(Session::open(server).await);
    }
    // What each kept partial holds, by path (partials are per user and path, so any session
    // of the user can resume them).
    let mut partials: HashMap<String, Vec<u8>> = HashMap::new();
    let (b, w) = quota_walk(&home);
    assert_eq!(
        sessions[0].usage().await,
        (b, w),
        "seed {seed}: the login's count differs from a walk\n{}",
        log.join("\n")
    );
    for step in 0..OPS {
        let s = rng.random_range(0..SESSIONS);
        let op_started = Instant::now();
        let kind = rng.random_range(0..100);
        let line = match kind {
            // A whole upload.
            0..20 => {
                let path = pick(&mut rng, FILES);
                let data = random_data(&mut rng);
                let overwrite = rng.random_bool(0.6);
                let sess = &mut sessions[s];
                let id = sess.put_start(path, &data, 0, overwrite).await;
                sess.put_data(&data).await;
                sess.put_end(id, &data).await;
                let r = outcome(&sess.reply(id).await);
                if r == "ok" {
                    partials.remove(path);
                }
                format!("s{s} put {path} {} ow={overwrite}: {r}", data.len())
            }
            // An upload abandoned part way: the server keeps a partial.
            20..30 => {
                let path = pick(&mut rng, FILES);
                let data = random_data(&mut rng);
                let sent = rng.random_range(0..=data.len());
                let overwrite = rng.random_bool(0.5);
                let sess = &mut sessions[s];
                let id = sess.put_start(path, &data, 0, overwrite).await;
                sess.put_data(&data[..sent]).await;
                sess.raw.send(&ClientMessage::Abort { id }).await;
                let r = outcome(&sess.reply(id).await);
                if r == "cancelled" && sent > 0 {
                    partials.insert(path.to_string(), data[..sent].to_vec());
                } else if r == "cancelled" {
                    partials.remove(path);
                }
                format!(
                    "s{s} put {path} {} ow={overwrite} aborted at {sent}: {r}",
                    data.len()
                )
            }
            // A resume of a kept partial, finished or abandoned again.
            30..40 => {
                let Some(path) = partials.keys().min().cloned() else {
                    continue;
                };
                let kept = partials[&path].clone();
                let offset = rng.random_range(1..=kept.len());
                let mut data = kept[..offset].to_vec();
                data.extend(random_data(&mut rng));
                let finish = rng.random_bool(0.7);
                let sent = if finish {
                    data.len()
                } else {
                    rng.random_range(offset..=data.len())
                };
                let overwrite = rng.random_bool(0.7);
                let sess = &mut sessions[s];
                let id = sess.put_start(&path, &data, offset, overwrite).await;
                sess.put_data(&data[offset..sent]).await;
                if finish {
                    sess.put_end(id, &data).await;
                } else {
                    sess.raw.send(&ClientMessage::Abort { id }).await;
                }
                let r = outcome(&sess.reply(id).await);
                match r.as_str() {
                    "ok" => {
                        partials.remove(&path);
                    }
                    "cancelled" => {
                        partials.insert(path.clone(), data[..sent].to_vec());
                    }
                    _ => {}
                }
                format!(
                    "s{s} resume {path} at {offset} of {} (kept {}) ow={overwrite} \
                     sent to {sent} finish={finish}: {r}",
                    data.len(),
                    kept.len()
                )
            }
            40..48 => {
                let path = any_name(&mut rng);
                let r = sessions[s]
                    .request(|id| ClientMessage::Mkdir {
                        id,
                        path: path.clone(),
                    })
                    .await;
                format!("s{s} mkdir {path}: {r}")
            }
            48..54 => {
                let path = any_name(&mut rng);
                let r = sessions[s]
                    .request(|id| ClientMessage::Rmdir {
                        id,
                        path: path.clone(),
                    })
                    .await;
                format!("s{s} rmdir {path}: {r}")
            }
            54..62 => {
                let path = any_name(&mut rng);
                let r = sessions[s]
                    .request(|id| ClientMessage::Remove {
                        id,
                        path: path.clone(),
                    })
                    .await;
                format!("s{s} remove {path}: {r}")
            }
            62..76 => {
                let from = any_name(&mut rng);
                // Onto itself now and then: the original bug.
                let to = if rng.random_bool(0.25) {
                    from.clone()
                } else {
                    any_name(&mut rng)
                };
                let overwrite = rng.random_bool(0.7);
                let r = sessions[s]
                    .request(|id| ClientMessage::Rename {
                        id,
                        from: from.clone(),
                        to: to.clone(),
                        overwrite,
                    })
                    .await;
                format!("s{s} rename {from} -> {to} ow={overwrite}: {r}")
            }
            76..86 => {
                let from = pick(&mut rng, FILES).to_string();
                let to = if rng.random_bool(0.25) {
                    from.clone()
                } else {
                    any_name(&mut rng)
                };
                let overwrite = rng.random_bool(0.7);
                let r = sessions[s]
                    .request(|id| ClientMessage::Copy {
                        id,
                        from: from.clone(),
                        to: to.clone(),
                        overwrite,
                    })
                    .await;
                format!("s{s} copy {from} -> {to} ow={overwrite}: {r}")
            }
            // An upload in flight on one session while another changes the same name.
            // The upload may be a resume, and may not overwrite: a name taken meanwhile then
            // fails its commit, and the consumed partial must go off the count.
            86..94 => {
                let resumed = partials
                    .keys()
                    .min()
                    .cloned()
                    .filter(|_| rng.random_bool(0.4));
                let (path, data, offset) = match resumed {
                    Some(p) => {
                        let kept = &partials[&p];
                        let offset = rng.random_range(1..=kept.len());
                        let mut data = kept[..offset].to_vec();
                        data.extend(random_data(&mut rng));
                        (p, data, offset)
                    }
                    None => (pick(&mut rng, FILES).to_string(), random_data(&mut rng), 0),
                };
                let path = path.as_str();
                let overwrite = rng.random_bool(0.6);
                let half = offset + (data.len() - offset) / 2;
                let other = (s + 1 + rng.random_range(0..SESSIONS - 1)) % SESSIONS;
                let id = sessions[s].put_start(path, &data, offset, overwrite).await;
                sessions[s].put_data(&data[offset..half]).await;
                sessions[s].flush().await;
                let meddle = rng.random_range(0..4);
                let r2 = match meddle {
                    0 => {
                        sessions[other]
                            .request(|id| ClientMessage::Remove {
                                id,
                                path: path.into(),
                            })
                            .await
                    }
                    1 => {
                        let from = pick(&mut rng, FILES);
                        sessions[other]
                            .request(|id| ClientMessage::Rename {
                                id,
                                from: from.into(),
                                to: path.into(),
                                overwrite: true,
                            })
                            .await
                    }
                    2 => {
                        let from = pick(&mut rng, FILES);
                        sessions[other]
                            .request(|id| ClientMessage::Copy {
                                id,
                                from: from.into(),
                                to: path.into(),
                                overwrite: true,
                            })
                            .await
                    }
                    _ => {
                        let small = vec![1u8; rng.random_range(0..3000)];
                        let o = &mut sessions[other];
                        let id2 = o.put_start(path, &small, 0, true).await;
                        o.put_data(&small).await;
                        o.put_end(id2, &small).await;
                        outcome(&o.reply(id2).await)
                    }
                };
                sessions[s].put_data(&data[half..]).await;
                sessions[s].put_end(id, &data).await;
                let r = outcome(&sessions[s].reply(id).await);
                if r == "ok" || offset > 0 && r == "already_exists" {
                    partials.remove(path);
                }
                format!(
                    "s{s} put {path} {} from {offset} ow={overwrite} racing s{other} change \
                     #{meddle} ({r2}): {r}",
                    data.len()
                )
            }
            // Several uploads in one go: they share a group commit.
            _ => {
                let n = rng.random_range(2..5);
                let sess = &mut sessions[s];
                let mut ids = Vec::new();
                let mut names = Vec::new();
                for _ in 0..n {
                    let path = pick(&mut rng, FILES);
                    let data = vec![3u8; rng.random_range(0..10_000)];
                    let overwrite = rng.random_bool(0.6);
                    let id = sess.put_start(path, &data, 0, overwrite).await;
                    sess.put_data(&data).await;
                    sess.put_end(id, &data).await;
                    ids.push((id, path));
                    names.push(format!("{path} {} ow={overwrite}", data.len()));
                }
                let mut results = Vec::new();
                for (id, path) in ids {
                    let r = outcome(&sess.reply(id).await);
                    if r == "ok" {
                        partials.remove(path);
                    }
                    results.push(r);
                }
                format!("s{s} pipelined puts {names:?}: {results:?}")
            }
        };
        log.push(format!("{step}: {line}"));
        if std::env::var_os("FERRY_PROP_SEED").is_some() {
            let (b, f) = quota_walk(&home);
            let u = sessions[0].usage().await;
            eprintln!(
                "{line}\n    {:?}; walk ({b}, {f}) usage {u:?}",
                op_started.elapsed()
            );
        }
    }
    let truth = quota_walk(&home);
    for sess in &mut sessions {
        assert_eq!(
            sess.usage().await,
            truth,
            "seed {seed}: usage (bytes, files) differs from a walk of the home; replay with \
             FERRY_PROP_SEED={seed}\n{}",
            log.join("\n")
        );
    }
    for sess in sessions {
        sess.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_agrees_with_a_walk_after_random_changes_from_several_sessions() {
    let server = server().await;
    let seeds: Vec<u64> = match std::env::var("FERRY_PROP_SEED") {
        Ok(s) => vec![s.parse().expect("FERRY_PROP_SEED is a number")],
        // FERRY_PROP_SEEDS=<n>: another number of seeds (e.g. many more, now and then).
        Err(_) => match std::env::var("FERRY_PROP_SEEDS") {
            Ok(n) => (0..n.parse().expect("FERRY_PROP_SEEDS is a number")).collect(),
            Err(_) => (0..SEEDS).collect(),
        },
    };
    let started = Instant::now();
    for seed in &seeds {
        run_seed(&server, *seed).await;
    }
    let took = started.elapsed();
    eprintln!("{} seeds of {OPS} operations in {took:?}", seeds.len());
    assert!(
        took < TIME_BUDGET || seeds.len() as u64 > SEEDS,
        "{} seeds took {took:?}, over the budget of {TIME_BUDGET:?}",
        seeds.len()
    );
}
