//! The shared harness: a real server on 127.0.0.1:0 with dev certificates, a users file with
//! cheap argon2 parameters (they live in each PHC string, so the production code path is the
//! same), and temp homes; plus a raw protocol client for tests that misbehave on purpose.

#![allow(dead_code)]

pub mod browser;
pub mod cluster;
pub mod garage;
pub mod http;
pub mod pg;
pub mod relay;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry::client::Connection;
use ferry::protocol::{
    ClientMessage, Frame, FrameReader, FrameWriter, MAX_FRAME_LEN, PROTOCOL_VERSION, ServerMessage,
    decode_server_message,
};
use ferry::server::{Limits, Server};
use ferry::users::{self, Password, UserDb};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

/// Cheap argon2 parameters for fixtures (m KiB, t, p).
pub const CHEAP: (u32, u32, u32) = (64, 1, 1);

/// A user of a test server.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: &'static str,
    pub password: &'static str,
    pub read_only: bool,
}

/// The default users: a writer, a second writer, and a read-only reader.
pub const USERS: &[TestUser] = &[
    TestUser {
        name: "alice",
        password: "alice-pw",
        read_only: false,
    },
    TestUser {
        name: "bob",
        password: "bob-pw",
        read_only: false,
    },
    TestUser {
        name: "reader",
        password: "reader-pw",
        read_only: true,
    },
];

/// A running server and the temp world around it.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The temp world; `None` only while it moves to a restarted server.
    pub dir: Option<tempfile::TempDir>,
    pub ca: PathBuf,
    pub root: PathBuf,
    pub users_file: PathBuf,
    pub server: Arc<Server>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with [`USERS`] and [`test_limits`].
    pub async fn start() -> TestServer {
        Self::start_with(test_limits()).await
    }

    /// Starts a server with [`USERS`] and the given limits.
    pub async fn start_with(limits: Limits) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        ferry::certs::generate(&dir.path().join("certs"), &[], false).unwrap();
        let users_file = dir.path().join("users.toml");
        for u in USERS {
            let hash = users::hash_password_with(
                &Password::new(u.password.to_string()),
                CHEAP.0,
                CHEAP.1,
                CHEAP.2,
            )
            .unwrap();
            users::add_user(&users_file, u.name, &hash, None, u.read_only).unwrap();
        }
        // carol has limits: 1 MiB, 5 files, 600,000 bytes a file.
        let hash = cheap_hash("carol-pw");
        let mut text = std::fs::read_to_string(&users_file).unwrap();
        text.push_str(&format!(
            "\n[users.carol]\npassword = \"{hash}\"\nquota_bytes = \"1 MiB\"\n\
             quota_files = 5\nmax_file_size = 600000\n"
        ));
        std::fs::write(&users_file, text).unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        Self::start_in(dir, limits).await
    }

    /// Starts a server on an existing world (certs, users file and data from an earlier one).
    pub async fn start_in(dir: tempfile::TempDir, limits: Limits) -> TestServer {
        Self::start_node(dir, limits, None).await
    }

    /// Starts a server with [`USERS`] as one node of a cluster: its users from its own
    /// users file, its usage counters and shared penalties from `state`.
    pub async fn start_with_state(limits: Limits, state: ferry::server::SharedState) -> TestServer {
        let world = Self::start_with(limits.clone()).await;
        let dir = world.dir_out().await;
        Self::start_node(dir, limits, Some(state)).await
    }

    /// Starts another node of `first`'s cluster with `state`: its own world, but a copy of
    /// `first`'s users file, so the accounts (and their password hashes, which web sessions
    /// are stamped with) are one, as nodes on one account database have them.
    pub async fn start_beside(
        first: &TestServer,
        limits: Limits,
        state: ferry::server::SharedState,
    ) -> TestServer {
        let world = Self::start_with(limits.clone()).await;
        let dir = world.dir_out().await;
        std::fs::copy(&first.users_file, dir.path().join("users.toml")).unwrap();
        Self::start_node(dir, limits, Some(state)).await
    }

    /// Stops this server and hands over its world.
    async fn dir_out(mut self) -> tempfile::TempDir {
        let dir = self.dir.take().unwrap();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        dir
    }

    async fn start_node(
        dir: tempfile::TempDir,
        limits: Limits,
        state: Option<ferry::server::SharedState>,
    ) -> TestServer {
        // FERRY_LOG=debug shows the server's log in a failing test's output.
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let certs = ferry::certs::CertPaths::in_dir(&dir.path().join("certs"));
        let users_file = dir.path().join("users.toml");
        let root = dir.path().join("data");
        let tls = ferry::tls::server_config(
            &certs.server_cert,
            &certs.server_key,
            ferry::server::ALPN_OFFERED,
        )
        .unwrap();
        let server = match state {
            None => Server::new(
                tls,
                UserDb::load(&users_file).unwrap(),
                root.clone(),
                limits,
            ),
            Some(state) => {
                let users = ferry::accounts::toml::TomlAccounts::load(&users_file).unwrap();
                Server::with_state(tls, Arc::new(users), state, root.clone(), limits)
            }
        };
        // API tokens as `ferry serve` finds them: tokens.toml beside the users file.
        server.set_tokens(Arc::new(ferry::accounts::tokens::TomlTokens::beside_users(
            &users_file,
        )));
        server.set_links(Arc::new(ferry::accounts::links::TomlLinks::beside_users(
            &users_file,
        )));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Receipts signed as `ferry serve` signs them: the key beside the certificates.
        let (key, _) =
            ferry::receipt::ReceiptKey::load_or_create(&dir.path().join("certs")).unwrap();
        server.set_receipt_key(Arc::new(key), addr.to_string());
        let (stop, stopped) = oneshot::channel::<()>();
        let s = Arc::clone(&server);
        let task = tokio::spawn(async move {
            ferry::server::run(s, listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            addr,
            ca: certs.ca_cert.clone(),
            dir: Some(dir),
            root,
            users_file,
            server,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops this server and starts a new one on the same certificates, users and data.
    pub async fn restart(mut self, limits: Limits) -> TestServer {
        let dir = self.dir.take().unwrap();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        Self::start_in(dir, limits).await
    }

    /// The temp directory holding this server's world (certs, users file, data).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).unwrap()
    }

    /// The home directory of a user.
    pub fn home(&self, user: &str) -> PathBuf {
        self.root.join(user)
    }

    /// A path in a user's home (the home is created if needed), for planting files.
    pub fn home_file(&self, user: &str, name: &str) -> PathBuf {
        let home = self.home(user);
        std::fs::create_dir_all(&home).unwrap();
        home.join(name)
    }

    /// A client TLS configuration that trusts this server's CA.
    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        ferry::tls::client_config(Some(&self.ca), ferry::protocol::ALPN).unwrap()
    }

    /// A logged-in library connection.
    pub async fn connect(&self, user: &str, password: &str) -> Connection {
        let mut c = Connection::connect("127.0.0.1", self.addr.port(), self.client_tls())
            .await
            .unwrap();
        c.login(user, &Password::new(password.to_string()))
            .await
            .unwrap();
        c
    }

    /// A logged-in connection as alice.
    pub async fn alice(&self) -> Connection {
        self.connect("alice", "alice-pw").await
    }

    /// A raw protocol connection after the TLS handshake (no hello sent yet).
    pub async fn raw(&self) -> Raw {
        Raw::connect(self.addr, self.client_tls()).await
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A raw protocol connection: frames and messages by hand, for tests that break the rules.
pub struct Raw {
    pub reader: FrameReader<ReadHalf<TlsStream<TcpStream>>>,
    pub writer: FrameWriter<WriteHalf<TlsStream<TcpStream>>>,
}

impl Raw {
    /// TCP + TLS (ALPN ferry/1) to `addr`.
    pub async fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Raw {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ferry::tls::server_name("127.0.0.1").unwrap();
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .unwrap();
        let (r, w) = tokio::io::split(stream);
        Raw {
            reader: FrameReader::new(r, MAX_FRAME_LEN),
            writer: FrameWriter::new(w),
        }
    }

    /// Sends a message (any serializable value, so tests can send malformed ones).
    pub async fn send<T: serde::Serialize>(&mut self, msg: &T) {
        self.writer.send_message(msg).await.unwrap();
    }

    /// Sends one data frame.
    pub async fn send_data(&mut self, data: &[u8]) {
        self.writer.queue_data(data).unwrap();
        self.writer.flush().await.unwrap();
    }

    /// Writes raw bytes to the TLS stream (for broken frames).
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let w = self.writer.get_mut();
        w.write_all(bytes).await.unwrap();
        w.flush().await.unwrap();
    }

    /// The next frame, or `None` at end of stream (or error).
    pub async fn frame(&mut self) -> Option<Frame> {
        tokio::time::timeout(std::time::Duration::from_secs(30), self.reader.read_frame())
            .await
            .expect("server did not answer within 30 s")
            .ok()
            .flatten()
    }

    /// The next message; panics on data or end of stream.
    pub async fn recv(&mut self) -> ServerMessage {
        match self.frame().await {
            Some(Frame::Message(m)) => decode_server_message(&m).unwrap(),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The raw bytes of the next message frame.
    pub async fn recv_bytes(&mut self) -> Vec<u8> {
        match self.frame().await {
            Some(Frame::Message(m)) => m.to_vec(),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// True once the server has closed the connection (reads end of stream or an error).
    pub async fn closed(&mut self) -> bool {
        loop {
            match self.frame().await {
                None => return true,
                Some(_) => continue,
            }
        }
    }

    /// Sends hello and expects the server's hello.
    pub async fn hello(&mut self) {
        self.send(&ClientMessage::Hello {
            versions: vec![PROTOCOL_VERSION],
            software: "test".into(),
        })
        .await;
        assert!(matches!(self.recv().await, ServerMessage::Hello { .. }));
    }

    /// Hello + login; panics unless the login succeeds.
    pub async fn login(&mut self, user: &str, password: &str) {
        self.hello().await;
        self.send(&ClientMessage::Login {
            id: 1,
            user: user.into(),
            password: password.into(),
        })
        .await;
        let reply = self.recv().await;
        assert!(
            matches!(reply, ServerMessage::Ok { id: 1, .. }),
            "{reply:?}"
        );
    }
}

/// The production limits without per-source penalties: tests log in and fail on purpose from
/// 127.0.0.1 many times, and penalties get tests of their own.
pub fn test_limits() -> Limits {
    Limits {
        penalties: None,
        ..Limits::default()
    }
}

/// An argon2id hash of `password` with [`CHEAP`] parameters.
pub fn cheap_hash(password: &str) -> String {
    users::hash_password_with(
        &Password::new(password.to_string()),
        CHEAP.0,
        CHEAP.1,
        CHEAP.2,
    )
    .unwrap()
}

/// Writes `len` pseudo-random bytes (seeded, so failures reproduce) to `path`.
pub fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect();
    std::fs::write(path, &data).unwrap();
    data
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Names in a directory (sorted), including hidden ones.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A no-op progress callback.
pub fn no_progress() -> impl FnMut(u64) + Send {
    |_| {}
}

/// Bytes and files under `home` as the quota counts them: each name of a regular file, and
/// each directory but the home and the server's `.ferry-*` ones (whose contents count).
pub fn quota_walk(home: &Path) -> (u64, u64) {
    let (mut bytes, mut files) = (0, 0);
    let mut stack = vec![home.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_file() {
                bytes += meta.len();
                files += 1;
            } else if meta.is_dir() {
                if !e.file_name().to_string_lossy().starts_with(".ferry-") {
                    files += 1;
                }
                stack.push(e.path());
            }
        }
    }
    (bytes, files)
}
