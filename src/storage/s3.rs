//! [`Storage`] in an S3-compatible object store (issue 15), through `object_store`'s S3
//! client: one home is a key prefix (`<bucket prefix>/<home>/`) in a bucket.
//!
//! # Keys
//! A file `a/b.txt` is the object `<root>a/b.txt`. A directory `a` is the marker object
//! `<root>a/.ferry-dir` (empty), made by [`Storage::mkdir`] and removed by
//! [`Storage::remove_dir`]; its children are the keys under `<root>a/`. Names starting with
//! `.ferry-` are the server's ([`RemotePath`] refuses them), so a marker never meets a user's
//! name and listings leave them out.
//!
//! # The verified commit
//! An upload hashes while it streams. Up to one part it is held in memory and written with one
//! `PutObject` at its commit; a larger one goes out as a multipart upload (parts of
//! [`S3Config::part_size`], at least 5 MiB), up to [`PARTS_IN_FLIGHT`] parts on their way at
//! once: those and the part being filled are all it holds, whatever the file's size. Nothing is visible under the
//! key before `CompleteMultipartUpload`, which runs only after the SHA-256 matched; a mismatch,
//! an abort or a dropped upload aborts the multipart upload (a dropped one in a task of its
//! own). No-overwrite cannot rely on a conditional write (Garage 2.5 ignores
//! `If-None-Match: *`): a commit takes the name in [`NameLocks`] (shared by every node),
//! looks at the target (`HeadObject`) while it holds it, and only then completes. The digest
//! is recorded in a [`DigestIndex`] under the object's key and the ETag the store gave it, so
//! a download of the unchanged object ends with it without rehashing.
//!
//! # Kept partials
//! A kept partial is the multipart upload itself, recorded in the [`PartialIndex`] (findable
//! from any node) with its upload id, each part's ETag and the SHA-256 state after each part
//! (sha2 0.11 serialises a hasher: 104 bytes, of which the block buffer is empty at a part
//! boundary). Only whole parts are kept (an upload's unfinished parts cannot be read back,
//! and a part under 5 MiB could not be followed by another), so a resume continues at a part
//! boundary, with the prefix verified from the recorded state without reading a byte; an
//! offset inside a part is [`Resume::Short`] at the boundary before it. A partial of less than
//! one part keeps nothing but its record (length 0).
//!
//! An upload that supersedes a partial key (the key it would be kept under) records itself
//! there after each part, so that when its node dies another node resumes it from its last
//! part; the record goes when the upload commits or ends.
//!
//! # What differs from the local store
//! - A rename is copy + delete, not atomic: between the copy and the delete both names exist
//!   (a reader may see the file twice, a listing may show both); a directory's rename copies
//!   every key under it, then deletes the old keys, so a failure in between leaves both trees
//!   (the old one whole). No-replace of a rename holds through the name lock of the target.
//! - A commit is durable when it returns: [`super::Durability::Batched`] commits at once (it never
//!   returns [`Landed::Staged`]).
//! - Listings are in byte order (S3's); a directory's mtime in a listing is 0 (a common prefix
//!   has none; [`Storage::stat`] gives the marker's).
//! - [`Storage::usage`] counts files, directories (their markers) and kept partials; an upload
//!   in flight is not counted (its parts cannot be listed without ListMultipartUploads; the
//!   usage ledger reserves its room instead).
//! - An object that another client replaces under a download fails it (`If-Match` on the
//!   ETag), as `UnexpectedEof`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload,
    RetryConfig,
};
use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest, Sha256};

use super::{
    BoxFuture, Commit, Committed, Copied, CopyOptions, Download, Fetched, LIST_PAGE_MAX, Landed,
    Landing, ListLimit, ListPage, ListToken, PartialKey, ReadEvent, ReadOptions, Resume, SMALL_MAX,
    Sha256Digest, SmallOptions, SmallPut, Space, Staged, Stat, Storage, Upload, UploadOptions,
};
use crate::domain::{Entry, EntryKind, Footprint};
use crate::jail::{MAX_FREE_NAME_TRIES, RESERVED_PREFIX, RemotePath, StorageError, numbered_name};
use crate::state::digests::DigestIndex;
use crate::state::{NameLock, NameLocks, PartialIndex, PartialRecord};

/// Parts of one upload on their way to the store at once, besides the one filling: while
/// one part's PUT waits on the store's replicas, the next is sent, as S3 clients do. An
/// upload holds at most this many parts and one more in memory.
pub const PARTS_IN_FLIGHT: usize = 2;

/// The part size when the configuration names none.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;

/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// S3's largest part.
pub const MAX_PART_SIZE: usize = 512 * 1024 * 1024;

/// The marker object of a directory, under its prefix.
const DIR_MARKER: &str = ".ferry-dir";

/// Bytes per [`ReadEvent::Data`] of a download: a ferry/1 data frame's worth, as the local
/// store reads.
const READ_CHUNK_LEN: usize = 256 * 1024;

/// A download that hashes a prefix says how far it got every this many bytes.
const PROGRESS_EVERY: u64 = 8 * 1024 * 1024;

/// How long a commit waits for a name another commit holds.
const NAME_WAIT: Duration = Duration::from_secs(30);

/// A record of a running upload's progress younger than this is taken for one whose owner
/// is alive: the owner settles what the counters hold for it, so whoever takes the record
/// (a put that supersedes it, a resume) takes nothing off them. Older, its node is taken for
/// dead and the taker settles it. Well above [`PROGRESS_HEARTBEAT`] and the stall timeout an
/// upload's session ends on when its client sends nothing (60 s by default).
const PROGRESS_LIVE_WITHIN: Duration = Duration::from_secs(10 * 60);

/// A running upload records its progress again at least this often while data arrives (a
/// part landing records it too), so its record stays young while it runs.
const PROGRESS_HEARTBEAT: Duration = Duration::from_secs(30);

/// One request's limit (a part of up to 512 MiB over a slow link included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Small puts one session runs side by side ([`Storage::small_puts_in_flight`]): each is a
/// name lock, a look at the target, the room and a digest record in shared state, and a PUT,
/// all round trips, so more at once keep a pipelining client's files moving while each waits.
/// Each holds its data (at most [`SMALL_MAX`]) until its PUT is done: 4 MiB a session at
/// most, and the server's [`crate::server`] cap on small puts running (64) bounds them all.
/// 1,000 × 4 KiB through a 3-node cluster, ratio to rclone in the same round, alternating
/// builds (stop 25): 8 at once 0.95-1.18 (mean 1.08), 16 at once 1.23-1.48 (mean 1.34); in a
/// second run 16 gave 1.26-1.57 (mean 1.42) and 32 gave 1.48-1.63 (mean 1.54), at twice the
/// memory and a quarter of the server's cap for one session.
const SMALL_PUTS_IN_FLIGHT: usize = 16;

/// Where an object store lives and how to reach it. Credentials never come from the command
/// line: see [`S3Credentials`].
#[derive(Debug, Clone)]
pub struct S3Config {
    /// `https://host[:port]`; plain `http://` only to a loopback address.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Keys of every home start with `<prefix>/` (none: homes sit at the bucket's top).
    pub prefix: Option<String>,
    pub credentials: S3Credentials,
    /// Bytes per part of a multipart upload ([`MIN_PART_SIZE`] to [`MAX_PART_SIZE`]); an
    /// upload holds at most [`PARTS_IN_FLIGHT`] + 1 parts in memory (one filling).
    pub part_size: usize,
}

impl S3Config {
    /// A bucket at `endpoint`, keys from the environment, parts of [`DEFAULT_PART_SIZE`].
    pub fn new(endpoint: &str, region: &str, bucket: &str) -> S3Config {
        S3Config {
            endpoint: endpoint.to_string(),
            region: region.to_string(),
            bucket: bucket.to_string(),
            prefix: None,
            credentials: S3Credentials::Environment,
            part_size: DEFAULT_PART_SIZE,
        }
    }
}

/// Where the access key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum S3Credentials {
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    Environment,
    /// A file in the AWS shared-credentials format: `aws_access_key_id = ...` and
    /// `aws_secret_access_key = ...`, in its `[default]` section (or before any section).
    File(PathBuf),
}

/// An access key pair; the secret never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
}

impl fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessKey")
            .field("id", &self.id)
            .field("secret", &"*******")
            .finish()
    }
}

/// Why an object store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum S3ConfigError {
    #[error("s3 credentials: {0}")]
    Credentials(String),
    #[error("s3 endpoint: {0}")]
    Endpoint(String),
    #[error("s3 configuration: {0}")]
    Invalid(String),
    #[error("s3 client: {0}")]
    Client(String),
}

impl S3Credentials {
    /// Reads the key pair.
    pub fn load(&self) -> Result<AccessKey, S3ConfigError> {
        match self {
            S3Credentials::Environment => {
                let get = |name: &str| {
                    std::env::var(name)
                        .ok()
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| S3ConfigError::Credentials(format!("{name} is not set")))
                };
                Ok(AccessKey {
                    id: get("AWS_ACCESS_KEY_ID")?,
                    secret: get("AWS_SECRET_ACCESS_KEY")?,
                })
            }
            S3Credentials::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| S3ConfigError::Credentials(format!("{}: {e}", path.display())))?;
                parse_credentials(&text).ok_or_else(|| {
                    S3ConfigError::Credentials(format!(
                        "{}: no aws_access_key_id and aws_secret_access_key in [default]",
                        path.display()
                    ))
                })
            }
        }
    }
}

/// The `[default]` key pair of an AWS shared-credentials file.
fn parse_credentials(text: &str) -> Option<AccessKey> {
    let (mut id, mut secret) = (None, None);
    let mut section = "default".to_string();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        if section != "default" {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim() {
            "aws_access_key_id" => id = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            _ => {}
        }
    }
    Some(AccessKey {
        id: id.filter(|v| !v.is_empty())?,
        secret: secret.filter(|v| !v.is_empty())?,
    })
}

/// Accepts `https://...`, and `http://...` only to a loopback host.
fn check_endpoint(endpoint: &str) -> Result<bool, S3ConfigError> {
    let bad = |why: &str| S3ConfigError::Endpoint(why.to_string());
    let (https, rest) = if let Some(r) = endpoint.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = endpoint.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad(
            "must start with https:// (or http:// to a loopback address)",
        ));
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("no host, or a user name in it"));
    }
    if https {
        return Ok(false);
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(bad("plain http is allowed to a loopback address only"));
    }
    Ok(true)
}

/// A key prefix (or a home name) as segments S3 and `object_store` both take.
fn check_prefix(what: &str, s: &str) -> Result<String, S3ConfigError> {
    let s = s.trim_matches('/');
    let bad = || S3ConfigError::Invalid(format!("{what} {s:?}"));
    if s.is_empty() {
        return Err(bad());
    }
    for seg in s.split('/') {
        if seg.is_empty()
            || seg == "."
            || seg == ".."
            || seg.chars().any(|c| c.is_control() || c == '\\')
            || seg
                .get(..RESERVED_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
        {
            return Err(bad());
        }
    }
    Ok(s.to_string())
}

/// One bucket of one object store, shared by every home a server opens in it (one HTTP
/// client and its connection pool).
pub struct S3Bucket {
    store: AmazonS3,
    bucket: String,
    /// `""` or `"<prefix>/"`.
    prefix: String,
    part_size: usize,
    /// The node's metrics, which every request to the store is timed into (once set).
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

impl fmt::Debug for S3Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Bucket")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl S3Bucket {
    /// Opens the bucket as `config` says (no request is made yet).
    pub fn open(config: &S3Config) -> Result<Arc<S3Bucket>, S3ConfigError> {
        let plain_http = check_endpoint(&config.endpoint)?;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&config.part_size) {
            return Err(S3ConfigError::Invalid(format!(
                "part size {} is outside {MIN_PART_SIZE}..={MAX_PART_SIZE}",
                config.part_size
            )));
        }
        if config.bucket.is_empty() || config.bucket.contains('/') {
            return Err(S3ConfigError::Invalid("bucket name".into()));
        }
        let prefix = match &config.prefix {
            Some(p) if !p.trim_matches('/').is_empty() => {
                format!("{}/", check_prefix("prefix", p)?)
            }
            _ => String::new(),
        };
        let key = config.credentials.load()?;
        // reqwest is built without a crypto provider of its own: it uses the process default,
        // the ring provider every other TLS configuration of ferry uses. Installing fails
        // only when one is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = ClientOptions::new()
            .with_allow_http(plain_http)
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
            ..RetryConfig::default()
        };
        let store = AmazonS3Builder::new()
            .with_endpoint(&config.endpoint)
            .with_region(&config.region)
            .with_bucket_name(&config.bucket)
            .with_access_key_id(key.id)
            .with_secret_access_key(key.secret)
            .with_allow_http(plain_http)
            // Path-style requests: Garage and MinIO serve them without DNS per bucket.
            .with_virtual_hosted_style_request(false)
            // The content is hashed (SHA-256) on its way in by the upload itself; signing
            // each request's payload would hash it a second time.
            .with_unsigned_payload(true)
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map_err(|e| S3ConfigError::Client(e.to_string()))?;
        Ok(Arc::new(S3Bucket {
            store,
            bucket: config.bucket.clone(),
            prefix,
            part_size: config.part_size,
            metrics: std::sync::OnceLock::new(),
        }))
    }

    /// Times every request to the store into `metrics` from now on (once: a later call is
    /// ignored).
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// The `object_store` client underneath (for tools and tests).
    pub fn object_store(&self) -> &AmazonS3 {
        &self.store
    }

    /// The key prefix of `home`'s files: `<prefix>/<home>/`.
    pub fn home_prefix(&self, home: &str) -> Result<String, S3ConfigError> {
        Ok(format!("{}{}/", self.prefix, check_prefix("home", home)?))
    }
}

/// The shared state an S3 home needs: name reservations for no-replace commits, the digest
/// index, and the kept partials. Each is a trait with an in-memory implementation for one
/// node and a PostgreSQL one shared by many.
#[derive(Clone)]
pub struct S3State {
    pub locks: Arc<dyn NameLocks>,
    pub digests: Arc<dyn DigestIndex>,
    pub partials: Arc<dyn PartialIndex>,
}

/// One home in a bucket.
#[derive(Clone)]
pub struct S3Storage {
    inner: Arc<Inner>,
}

struct Inner {
    bucket: Arc<S3Bucket>,
    /// `<prefix>/<home>/`: every key of the home starts with it.
    root: String,
    /// The home's name in shared state (name locks, partials): `s3:<bucket>/<root>`.
    ns: String,
    state: S3State,
    part_size: usize,
    /// The most bytes any upload of this home held at once (the part being filled and the
    /// part in flight): what bounds an upload's memory, for tests and metrics.
    peak: AtomicU64,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("bucket", &self.inner.bucket.bucket)
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

impl S3Storage {
    /// The home `home` (a key prefix under the bucket's prefix) with its shared state.
    pub fn open(
        bucket: &Arc<S3Bucket>,
        home: &str,
        state: S3State,
    ) -> Result<S3Storage, S3ConfigError> {
        let root = bucket.home_prefix(home)?;
        let ns = format!("s3:{}/{}", bucket.bucket, root);
        Ok(S3Storage {
            inner: Arc::new(Inner {
                part_size: bucket.part_size,
                bucket: Arc::clone(bucket),
                root,
                ns,
                state,
                peak: AtomicU64::new(0),
            }),
        })
    }

    /// The most bytes one upload of this home has held in memory at once so far.
    pub fn peak_upload_memory(&self) -> u64 {
        self.inner.peak.load(Ordering::Relaxed)
    }

    /// The key prefix of this home (`<prefix>/<home>/`).
    pub fn root_prefix(&self) -> &str {
        &self.inner.root
    }
}

/// An `object_store` error as the storage's: paths and request details stay in the text,
/// which goes to the server log only.
fn os_err(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound,
        object_store::Error::AlreadyExists { .. } => StorageError::AlreadyExists,
        object_store::Error::Precondition { .. } => StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the object changed under the read",
        )),
        other => StorageError::Io(std::io::Error::other(other.to_string())),
    }
}

fn state_err(e: crate::state::StateError) -> StorageError {
    StorageError::Io(std::io::Error::other(e.to_string()))
}

fn other(why: &str) -> StorageError {
    StorageError::Io(std::io::Error::other(why.to_string()))
}

fn mtime(meta: &ObjectMeta) -> i64 {
    meta.last_modified.timestamp()
}

fn file_entry(name: &str, meta: &ObjectMeta) -> Entry {
    Entry {
        name: name.to_string(),
        kind: EntryKind::File,
        size: meta.size,
        mtime: mtime(meta),
        mode: 0o644,
    }
}

fn dir_entry(name: &str, mtime: i64) -> Entry {
    Entry {
        name: name.to_string(),
        kind: EntryKind::Dir,
        size: 0,
        mtime,
        mode: 0o755,
    }
}

fn is_reserved(name: &str) -> bool {
    name.get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX))
}

fn entry_name(path: &RemotePath) -> String {
    path.file_name().unwrap_or("/").to_string()
}

/// What a name is in the store.
enum What {
    Root,
    Dir(ObjectMeta),
    File(ObjectMeta),
    Missing,
}

fn footprint_of(what: &What) -> Footprint {
    match what {
        What::File(m) => Footprint {
            bytes: m.size,
            files: 1,
        },
        _ => Footprint::NONE,
    }
}

impl Inner {
    fn store(&self) -> &AmazonS3 {
        &self.bucket.store
    }

    /// A request to the store, timed into `ferry_object_store_seconds` (by `request`, a fixed
    /// name) when the node has metrics.
    async fn timed<T>(&self, request: &'static str, f: impl Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let out = f.await;
        if let Some(m) = self.bucket.metrics.get() {
            m.object_store(request, started.elapsed());
        }
        out
    }

    fn key_str(&self, path: &RemotePath) -> String {
        format!("{}{}", self.root, path.components().join("/"))
    }

    fn key(&self, path: &RemotePath) -> Result<Key, StorageError> {
        Key::parse(self.key_str(path)).map_err(|_| StorageError::InvalidArgument)
    }

    /// The prefix of a directory's children: `<root>` or `<root>dir/`.
    fn dir_prefix(&self, dir: &RemotePath) -> String {
        if dir.is_root() {
            self.root.clone()
        } else {
            format!("{}/", self.key_str(dir))
        }
    }

    fn marker(&self, dir: &RemotePath) -> Result<Key, StorageError> {
        Key::parse(format!("{}{DIR_MARKER}", self.dir_prefix(dir)))
            .map_err(|_| StorageError::InvalidArgument)
    }

    /// The key as the digest index names it: `<bucket>/<key>`.
    fn full(&self, key: &Key) -> String {
        format!("{}/{}", self.bucket.bucket, key)
    }

    fn partial_id(&self, key: &PartialKey) -> String {
        format!("{}#{}", self.ns, key.as_str())
    }

    fn lock_name(path: &RemotePath) -> String {
        path.to_string()
    }

    async fn head(&self, key: &Key) -> Result<Option<ObjectMeta>, StorageError> {
        match self.timed("head", self.store().head(key)).await {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(os_err(e)),
        }
    }

    async fn what(&self, path: &RemotePath) -> Result<What, StorageError> {
        if path.is_root() {
            return Ok(What::Root);
        }
        // Both looks at once: one round trip's wait, whatever the name is.
        let (file, marker) = (self.key(path)?, self.marker(path)?);
        let (file, dir) = tokio::join!(self.head(&file), self.head(&marker));
        Ok(match (file?, dir?) {
            (Some(m), _) => What::File(m),
            (None, Some(m)) => What::Dir(m),
            (None, None) => What::Missing,
        })
    }

    /// `NotFound` unless the parent of `path` is a directory.
    async fn parent_exists(&self, path: &RemotePath) -> Result<(), StorageError> {
        match path.parent() {
            None => Err(StorageError::InvalidArgument),
            Some(p) if p.is_root() => Ok(()),
            Some(p) => match self.head(&self.marker(&p)?).await? {
                Some(_) => Ok(()),
                None => Err(StorageError::NotFound),
            },
        }
    }

    /// Takes the name `path` in the shared name locks, waiting (a bounded while) for a
    /// holder that commits to the same name.
    async fn lock(&self, path: &RemotePath) -> Result<NameLock, StorageError> {
        let name = Inner::lock_name(path);
        let deadline = tokio::time::Instant::now() + NAME_WAIT;
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(lock) = NameLock::try_take(&self.state.locks, &self.ns, &name)
                .await
                .map_err(state_err)?
            {
                return Ok(lock);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StorageError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "another commit holds the name",
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// The checks of an upload's target at its start: `IsADirectory`, `AlreadyExists`,
    /// `NotFound` for a missing parent. Returns what the target takes.
    async fn check_target(
        &self,
        path: &RemotePath,
        no_replace: bool,
        landing: Landing,
    ) -> Result<Footprint, StorageError> {
        self.check_target_what(path, no_replace, landing)
            .await
            .map(|(replaces, _)| replaces)
    }

    /// [`Inner::check_target`], also giving what the name was: the name and its parent are
    /// looked at together (one round trip's wait).
    async fn check_target_what(
        &self,
        path: &RemotePath,
        no_replace: bool,
        landing: Landing,
    ) -> Result<(Footprint, What), StorageError> {
        if path.is_root() {
            return Err(StorageError::IsADirectory);
        }
        let (what, parent) = tokio::join!(self.what(path), self.parent_exists(path));
        let what = what?;
        if no_replace && landing == Landing::NextFreeName {
            // A taken name (a directory too) is no refusal: the commit lands beside it.
            parent?;
            return Ok((Footprint::NONE, what));
        }
        let replaces = match &what {
            What::Root | What::Dir(_) => return Err(StorageError::IsADirectory),
            What::File(_) if no_replace && landing == Landing::Exact => {
                return Err(StorageError::AlreadyExists);
            }
            _ if no_replace => Footprint::NONE,
            w => footprint_of(w),
        };
        if matches!(what, What::Missing) {
            parent?;
        }
        Ok((replaces, what))
    }

    /// Aborts a multipart upload, ignoring a store that forgot it already.
    async fn abort(&self, key: &Key, id: &str) {
        let id = id.to_string();
        if let Err(e) = self
            .timed("abort_multipart", self.store().abort_multipart(key, &id))
            .await
        {
            tracing::debug!(error = %e, "abort of a multipart upload failed");
        }
    }

    /// Removes a kept partial's stored parts (after its record left the index).
    async fn drop_partial(&self, record: &PartialRecord) {
        if let Ok(h) = PartialHandle::decode(&record.handle)
            && let (Some(id), Ok(key)) = (&h.upload_id, Key::parse(&h.key))
        {
            self.abort(&key, id).await;
        }
    }

    /// Takes the partial `key` out of the index and removes its parts; its length.
    async fn remove_partial(&self, key: &PartialKey) -> Result<Option<u64>, StorageError> {
        let taken = self
            .state
            .partials
            .take(&self.partial_id(key))
            .await
            .map_err(state_err)?;
        Ok(match taken {
            Some(r) => {
                self.drop_partial(&r).await;
                taken_count(&r)
            }
            None => None,
        })
    }

    /// Makes a verified object the target, under the target's name lock: looks at the
    /// target, asks `admit`, writes (`body`), tells `placed`, records the digest. `held` is
    /// the name's lock and what the name was, if the caller took and looked already.
    async fn land(
        &self,
        path: &RemotePath,
        body: Body,
        sha256: Sha256Digest,
        commit: Commit,
        held: Option<(NameLock, What)>,
    ) -> Result<Landed, StorageError> {
        let (no_replace, landing) = (commit.no_replace, commit.landing);
        let (admit, placed) = (commit.admit, commit.placed);
        let mut target = path.clone();
        let mut n = 0u32;
        let mut held = held;
        let (lock, replaced, landed_as) = loop {
            let (mut lock, what) = match held.take() {
                Some(h) => h,
                None => {
                    let lock = self.lock(&target).await?;
                    (lock, self.what(&target).await?)
                }
            };
            match what {
                What::Root | What::Dir(_) if landing == Landing::Exact => {
                    return Err(StorageError::IsADirectory);
                }
                What::File(_) if no_replace && landing == Landing::Exact => {
                    return Err(StorageError::AlreadyExists);
                }
                What::Missing | What::File(_) if !no_replace || matches!(what, What::Missing) => {
                    // The name must still be ours: a lock taken or renewed less than a
                    // third of its lease ago has two thirds left (no round trip); an older
                    // one is renewed now.
                    lock.renew_if_due().await.map_err(state_err)?;
                    let name = (n > 0).then(|| entry_name(&target));
                    break (lock, footprint_of(&what), name);
                }
                _ => {}
            }
            // Taken: the next numbered name.
            drop(lock);
            n += 1;
            if n > MAX_FREE_NAME_TRIES {
                return Err(StorageError::AlreadyExists);
            }
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(StorageError::IsADirectory);
            };
            target = parent
                .join(&numbered_name(name, n))
                .map_err(StorageError::InvalidPath)?;
        };
        if let Some(admit) = admit {
            admit(replaced)?;
        }
        let key = self.key(&target)?;
        let write = async {
            match body {
                Body::Put(data) => Ok(self
                    .timed("put", self.store().put(&key, data))
                    .await
                    .map_err(os_err)?
                    .e_tag),
                Body::Complete { id, parts } => {
                    let done = self
                        .timed(
                            "complete_multipart",
                            self.store().complete_multipart(&key, &id, parts),
                        )
                        .await;
                    match done {
                        Ok(r) => Ok(r.e_tag),
                        Err(e) => {
                            self.abort(&key, &id).await;
                            Err(os_err(e))
                        }
                    }
                }
            }
        };
        // A write may take longer than the name's lease (requests may take REQUEST_TIMEOUT):
        // the lease is kept alive meanwhile, so no other commit takes the name under it.
        let mut lock = lock;
        let etag = {
            tokio::pin!(write);
            loop {
                tokio::select! {
                    done = &mut write => break done?,
                    () = tokio::time::sleep(crate::state::DEFAULT_LEASE / 3) => {
                        if let Err(e) = lock.confirm().await {
                            tracing::warn!(error = %e, "s3: could not keep a name held during a long write");
                        }
                    }
                }
            }
        };
        // The digest is recorded while the counters take the change (two database round
        // trips at once), and before the name is let go: a later commit of the same name,
        // with an ETag that may collide with this one's (ETags are MD5s), records after it.
        let (full, digests) = (self.full(&key), Arc::clone(&self.state.digests));
        let record = tokio::spawn(async move {
            match &etag {
                Some(etag) => digests.put(&full, etag, sha256).await,
                None => digests.forget(&full).await,
            }
        });
        if let Some(placed) = placed {
            placed(replaced);
        }
        let recorded = record.await.unwrap_or_else(|e| {
            Err(crate::state::StateError::Unavailable(format!(
                "the digest record stopped: {e}"
            )))
        });
        if let Err(e) = recorded {
            // The object is in place and verified; only the shortcut for reads is missing
            // (a read then hashes).
            tracing::warn!(error = %e, "s3: could not record a committed object's digest");
        }
        drop(lock);
        Ok(Landed::Committed(Committed {
            replaced,
            name: landed_as,
        }))
    }
}

/// What a commit writes.
enum Body {
    /// A whole object in one `PutObject`.
    Put(PutPayload),
    /// A multipart upload's parts, completed.
    Complete { id: String, parts: Vec<PartId> },
}

// ---- listing ----

/// A listing token: an 8-byte tag of the directory (its path and its marker's mtime, hashed)
/// and the last name the page gave, in lowercase hex. The next page starts after that name
/// (S3's `start-after`), so a name present for the whole listing is listed once whatever
/// comes and goes. Not signed: a forged name reads this directory from another point.
struct ListAt {
    tag: [u8; 8],
    after: String,
}

impl ListAt {
    fn tag(ns: &str, dir: &RemotePath, marker_mtime: i64) -> [u8; 8] {
        let mut h = Sha256::new();
        h.update(b"ferry s3 list token v1\0");
        h.update(ns.as_bytes());
        h.update([0]);
        h.update(dir.to_string().as_bytes());
        h.update([0]);
        h.update(marker_mtime.to_be_bytes());
        let d = h.finalize();
        let mut tag = [0; 8];
        tag.copy_from_slice(&d[..8]);
        tag
    }

    fn encode(&self) -> ListToken {
        let mut raw = self.tag.to_vec();
        raw.extend_from_slice(self.after.as_bytes());
        ListToken::from_string(hex::encode(raw))
    }

    fn decode(token: &ListToken) -> Option<ListAt> {
        let s = token.as_str();
        // 8 bytes of tag and a name of 1 to 255 bytes.
        if s.len() < 18 || s.len() > 16 + 2 * 255 || !s.len().is_multiple_of(2) {
            return None;
        }
        if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let raw = hex::decode(s).ok()?;
        let mut tag = [0; 8];
        tag.copy_from_slice(&raw[..8]);
        let after = String::from_utf8(raw[8..].to_vec()).ok()?;
        if after.contains('/') || after.chars().any(char::is_control) {
            return None;
        }
        Some(ListAt { tag, after })
    }
}

// ---- kept partials ----

/// A kept partial's record in the [`PartialIndex`] (its `handle`, as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartialHandle {
    /// The object key the multipart upload will complete to.
    key: String,
    /// The multipart upload, if a part was written.
    upload_id: Option<String>,
    part_size: u64,
    /// Each part's ETag and the SHA-256 state after it (sha2's serialised state, hex).
    parts: Vec<KeptPart>,
    /// What the quota's counters hold for this record (absent in records from before it was
    /// written down: counted as kept, one file of `len` bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    counted: Option<Counted>,
    /// A running upload's progress (its node may still be working on it), not a partial
    /// kept for a resume. Absent in kept records and in records from before it was written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    progress: bool,
}

/// What the counters hold for a partial's record. A kept partial is counted as one file of
/// its length. The progress an upload records as it goes is not counted (its reservation
/// holds its room), or counted as the prefix it resumed from: what the counters held when
/// its node died, if it died, which whoever takes the record up next must know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Counted {
    Nothing,
    File(u64),
}

/// What the counters hold for `record`: `None` for nothing, else one file of that many
/// bytes.
fn counted(record: &PartialRecord) -> Option<u64> {
    match PartialHandle::decode(&record.handle).map(|h| h.counted) {
        Ok(Some(Counted::Nothing)) => None,
        Ok(Some(Counted::File(n))) => Some(n),
        // From before counts were written down, or damaged: as every record was then.
        Ok(None) | Err(_) => Some(record.len),
    }
}

/// The counters' footprint of `record` (see [`counted`]).
fn counted_footprint(record: &PartialRecord) -> Footprint {
    one_file(counted(record))
}

/// One file of that many bytes, or nothing.
fn one_file(bytes: Option<u64>) -> Footprint {
    bytes.map_or(Footprint::NONE, |bytes| Footprint { bytes, files: 1 })
}

/// Whether `record` is the progress of an upload whose node is taken to be alive (see
/// [`PROGRESS_LIVE_WITHIN`]).
fn running(record: &PartialRecord) -> bool {
    PartialHandle::decode(&record.handle).is_ok_and(|h| h.progress)
        && record
            .kept_at
            .elapsed()
            .map_or(true, |age| age < PROGRESS_LIVE_WITHIN)
}

/// What whoever takes `record` out of the index takes over of the counters: what they hold
/// for it ([`counted`]), except for a running upload's progress, whose owner settles its own
/// count (a resumed prefix, given back when it fails). Without this exception, a put over a
/// name whose resumed upload is running took the prefix off once and the failing upload
/// gave it back again: every round of that took a prefix's worth off the counters.
fn taken_count(record: &PartialRecord) -> Option<u64> {
    if running(record) {
        None
    } else {
        counted(record)
    }
}

/// [`taken_count`] as a footprint.
fn taken_footprint(record: &PartialRecord) -> Footprint {
    one_file(taken_count(record))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeptPart {
    etag: String,
    state: String,
}

impl PartialHandle {
    fn encode(&self) -> String {
        // A struct of strings and numbers always serialises.
        serde_json::to_string(self).unwrap_or_default()
    }

    fn decode(s: &str) -> Result<PartialHandle, StorageError> {
        serde_json::from_str(s).map_err(|_| other("a kept partial's record is damaged"))
    }
}

/// Sha2's serialised state of a hasher.
fn save_state(h: &Sha256) -> Vec<u8> {
    h.serialize().to_vec()
}

fn load_state(bytes: &[u8]) -> Result<Sha256, StorageError> {
    let damaged = || other("a kept partial's hash state is damaged");
    let state = sha2::digest::common::hazmat::SerializedState::<Sha256>::try_from(bytes)
        .map_err(|_| damaged())?;
    Sha256::deserialize(&state).map_err(|_| damaged())
}

// ---- uploads ----

/// A part done: its id and the hash state after it.
#[derive(Clone)]
struct DonePart {
    id: PartId,
    state: Vec<u8>,
}

/// Removes the record under `key` if it is the multipart upload `upload_id`'s checkpoint.
async fn clear_checkpoint(inner: &Inner, key: Option<&PartialKey>, upload_id: Option<&str>) {
    let (Some(key), Some(upload_id)) = (key, upload_id) else {
        return;
    };
    let id = inner.partial_id(key);
    let partials = &inner.state.partials;
    if let Ok(Some(r)) = partials.take(&id).await {
        let ours = PartialHandle::decode(&r.handle)
            .is_ok_and(|h| h.upload_id.as_deref() == Some(upload_id));
        if !ours {
            let _ = partials.put(&id, r).await;
        }
    }
}

/// The part being written in the background.
struct Flight {
    len: usize,
    state: Vec<u8>,
    task: tokio::task::JoinHandle<Result<PartId, object_store::Error>>,
}

/// A mark's record: everything to go back to (the bytes of the part being filled are
/// shared, not copied).
struct S3Mark {
    serial: u64,
    hasher: Sha256,
    parts: usize,
    buf: Vec<Bytes>,
}

struct S3Upload {
    inner: Arc<Inner>,
    key: Key,
    /// Tells this upload's marks from others'.
    serial: u64,
    part_size: usize,
    hasher: Sha256,
    /// The part being filled, as the chunks received (no copy).
    buf: Vec<Bytes>,
    buf_len: usize,
    written: u64,
    /// The multipart upload, once a part went out.
    upload_id: Option<String>,
    parts: Vec<DonePart>,
    /// Parts on their way, oldest first (at most [`PARTS_IN_FLIGHT`]).
    flights: std::collections::VecDeque<Flight>,
    finished: Option<Sha256Digest>,
    /// An error ended the upload.
    broken: bool,
    /// The multipart upload was handed on (committed, kept, aborted): `Drop` leaves it.
    handed_on: bool,
    replaces: Footprint,
    superseded: Option<u64>,
    /// The partial key this upload supersedes (the one it would be kept under): after each
    /// part, the upload is recorded there, so that if this node dies another can resume it.
    checkpoint: Option<PartialKey>,
    /// What the counters hold for this upload's recorded progress: nothing for a fresh
    /// upload, the prefix for a resumed one.
    progress_counted: Counted,
    /// When the progress was last recorded: it is recorded again after
    /// [`PROGRESS_HEARTBEAT`], so the record says the upload runs.
    recorded_at: Option<std::time::Instant>,
}

impl S3Upload {
    fn new(inner: Arc<Inner>, key: Key, replaces: Footprint) -> S3Upload {
        S3Upload {
            part_size: inner.part_size,
            inner,
            key,
            serial: rand::random(),
            hasher: Sha256::new(),
            buf: Vec::new(),
            buf_len: 0,
            written: 0,
            upload_id: None,
            parts: Vec::new(),
            flights: std::collections::VecDeque::new(),
            finished: None,
            broken: false,
            handed_on: false,
            replaces,
            superseded: None,
            checkpoint: None,
            progress_counted: Counted::Nothing,
            recorded_at: None,
        }
    }

    /// The record of what this upload holds in whole parts, for the [`PartialIndex`], with
    /// what the counters hold for it.
    fn record(&self, counted: Counted, progress: bool) -> PartialRecord {
        let handle = PartialHandle {
            key: self.key.to_string(),
            upload_id: self.upload_id.clone(),
            part_size: self.part_size as u64,
            parts: self
                .parts
                .iter()
                .map(|p| KeptPart {
                    etag: p.id.content_id.clone(),
                    state: hex::encode(&p.state),
                })
                .collect(),
            counted: Some(counted),
            progress,
        };
        PartialRecord {
            home: self.inner.ns.clone(),
            path: self.path().to_string(),
            len: self.parts.len() as u64 * self.part_size as u64,
            handle: handle.encode(),
            kept_at: SystemTime::now(),
        }
    }

    /// Records the parts written so far under the checkpoint key. A failure costs only the
    /// resume after a crash of this node: the upload goes on.
    async fn checkpoint(&mut self) {
        let Some(key) = &self.checkpoint else {
            return;
        };
        let id = self.inner.partial_id(key);
        let record = self.record(self.progress_counted, true);
        let partials = &self.inner.state.partials;
        match partials.put(&id, record).await {
            // A partial another upload kept meanwhile (this one began before it was kept, so
            // did not supersede it): it stays, with its count and its parts, and this upload
            // goes on without a record (a crash of its node loses its resume, nothing else).
            Ok(Some(old)) if !self.owns(&old) && !running(&old) => {
                self.checkpoint = None;
                match partials.put(&id, old).await {
                    Ok(Some(mine)) if self.owns(&mine) => {}
                    Ok(None) => {}
                    Ok(Some(_)) | Err(_) => tracing::warn!(
                        "s3: an upload's progress met another's kept partial and could not put it back whole"
                    ),
                }
            }
            Ok(_) => self.recorded_at = Some(std::time::Instant::now()),
            Err(e) => tracing::warn!(error = %e, "s3: could not record an upload's progress"),
        }
    }

    /// Whether `record` is this upload's own.
    fn owns(&self, record: &PartialRecord) -> bool {
        self.upload_id.is_some()
            && PartialHandle::decode(&record.handle).is_ok_and(|h| h.upload_id == self.upload_id)
    }

    /// Removes this upload's checkpoint (the upload ended), leaving another's in place.
    async fn clear_checkpoint(&self) {
        clear_checkpoint(
            &self.inner,
            self.checkpoint.as_ref(),
            self.upload_id.as_deref(),
        )
        .await;
    }

    fn note_memory(&self) {
        let held = (self.buf_len + self.flights.iter().map(|f| f.len).sum::<usize>()) as u64;
        self.inner.peak.fetch_max(held, Ordering::Relaxed);
    }

    /// Waits for every part in flight, in order, and adds them to the done parts.
    async fn land_flight(&mut self) -> Result<(), StorageError> {
        while !self.flights.is_empty() {
            self.land_oldest().await?;
        }
        Ok(())
    }

    /// Waits for the oldest part in flight and adds it to the done parts (parts land in
    /// order, so the recorded progress is always a prefix).
    async fn land_oldest(&mut self) -> Result<(), StorageError> {
        let Some(f) = self.flights.pop_front() else {
            return Ok(());
        };
        match f.task.await {
            Ok(Ok(id)) => {
                self.parts.push(DonePart { id, state: f.state });
                self.checkpoint().await;
                Ok(())
            }
            Ok(Err(e)) => {
                self.broken = true;
                Err(os_err(e))
            }
            Err(e) => {
                self.broken = true;
                Err(other(&e.to_string()))
            }
        }
    }

    /// Sends the filled part, once fewer than [`PARTS_IN_FLIGHT`] are on their way.
    async fn ship(&mut self) -> Result<(), StorageError> {
        while self.flights.len() >= PARTS_IN_FLIGHT {
            self.land_oldest().await?;
        }
        let id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self
                    .inner
                    .timed(
                        "create_multipart",
                        self.inner.store().create_multipart(&self.key),
                    )
                    .await
                    .map_err(|e| {
                        self.broken = true;
                        os_err(e)
                    })?;
                self.upload_id = Some(id.clone());
                // Recorded before any part lands: a node that dies now leaves a record (of
                // no bytes yet) that the sweep of old partials finds and aborts, never a
                // multipart upload nobody knows of, holding its parts' space for good.
                self.checkpoint().await;
                id
            }
        };
        let chunks = std::mem::take(&mut self.buf);
        let len = std::mem::take(&mut self.buf_len);
        let payload: PutPayload = chunks.into_iter().collect();
        let idx = self.parts.len() + self.flights.len();
        let (inner, key) = (Arc::clone(&self.inner), self.key.clone());
        let task = tokio::spawn(async move {
            inner
                .timed("put_part", inner.store().put_part(&key, &id, idx, payload))
                .await
        });
        self.flights.push_back(Flight {
            len,
            state: save_state(&self.hasher),
            task,
        });
        self.note_memory();
        Ok(())
    }

    fn usable(&self) -> Result<(), StorageError> {
        if self.broken {
            return Err(other("the upload failed earlier"));
        }
        if self.finished.is_some() {
            return Err(StorageError::InvalidArgument);
        }
        Ok(())
    }

    /// Aborts the multipart upload, if any, now.
    async fn abort_now(&mut self) {
        for f in std::mem::take(&mut self.flights) {
            let _ = f.task.await;
        }
        self.handed_on = true;
        self.clear_checkpoint().await;
        if let Some(id) = self.upload_id.take() {
            self.inner.abort(&self.key, &id).await;
        }
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.handed_on {
            return;
        }
        let Some(id) = self.upload_id.take() else {
            return;
        };
        let flights = std::mem::take(&mut self.flights);
        let (inner, key) = (Arc::clone(&self.inner), self.key.clone());
        let checkpoint = self.checkpoint.take();
        // Best effort: without a runtime (a process going down) the store's own expiry of
        // incomplete uploads is the backstop.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for f in flights {
                    let _ = f.task.await;
                }
                clear_checkpoint(&inner, checkpoint.as_ref(), Some(&id)).await;
                inner.abort(&key, &id).await;
            });
        }
    }
}

impl Upload for S3Upload {
    fn written(&self) -> u64 {
        self.written
    }

    fn replaces(&self) -> Footprint {
        self.replaces
    }

    fn superseded(&self) -> Option<u64> {
        self.superseded
    }

    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.usable()?;
            // Parts that have landed meanwhile are recorded now, so the progress another
            // node could resume from after a crash is never far behind.
            while self.flights.front().is_some_and(|f| f.task.is_finished()) {
                self.land_oldest().await?;
            }
            // A multipart upload (a resumed one too, before its first new part) is on record,
            // and the record is young while data arrives: see `running`.
            if self.upload_id.is_some()
                && self
                    .recorded_at
                    .is_none_or(|t| t.elapsed() >= PROGRESS_HEARTBEAT)
            {
                self.checkpoint().await;
            }
            let mut chunk = chunk;
            while !chunk.is_empty() {
                // A full part goes out only when more data follows it: the last part of an
                // upload is written at the commit (or kept whole).
                if self.buf_len == self.part_size {
                    self.ship().await?;
                }
                let room = self.part_size - self.buf_len;
                let piece = if chunk.len() <= room {
                    std::mem::take(&mut chunk)
                } else {
                    chunk.split_to(room)
                };
                self.hasher.update(&piece);
                self.written += piece.len() as u64;
                self.buf_len += piece.len();
                self.buf.push(piece);
                self.note_memory();
            }
            Ok(())
        })
    }

    fn finish(&mut self) -> BoxFuture<'_, Result<Sha256Digest, StorageError>> {
        Box::pin(async move {
            self.usable()?;
            self.land_flight().await?;
            let digest: Sha256Digest = self.hasher.clone().finalize().into();
            self.finished = Some(digest);
            Ok(digest)
        })
    }

    fn commit(
        mut self: Box<Self>,
        commit: Commit,
    ) -> BoxFuture<'static, Result<Landed, StorageError>> {
        Box::pin(async move {
            let Some(actual) = self.finished.filter(|_| !self.broken) else {
                self.abort_now().await;
                return Err(StorageError::InvalidArgument);
            };
            if actual != commit.sha256 {
                self.abort_now().await;
                return Ok(Landed::Mismatch { actual });
            }
            let body = match self.upload_id.clone() {
                None => Body::Put(std::mem::take(&mut self.buf).into_iter().collect()),
                Some(id) => {
                    // The last part goes out before the name is taken: the lock is held
                    // for a look and a completion only.
                    if self.buf_len > 0 {
                        let sent = async {
                            self.ship().await?;
                            self.land_flight().await
                        };
                        if let Err(e) = sent.await {
                            self.abort_now().await;
                            return Err(e);
                        }
                    }
                    let parts = self.parts.iter().map(|p| p.id.clone()).collect();
                    Body::Complete { id, parts }
                }
            };
            let path = self.path();
            let landed = self.inner.land(&path, body, actual, commit, None).await;
            // A completed upload is gone; a failed completion was aborted by `land`; a
            // refusal before it (admit, a taken name) leaves it for the abort here.
            if landed.is_err() {
                self.abort_now().await;
            } else {
                self.clear_checkpoint().await;
            }
            self.handed_on = true;
            landed
        })
    }

    fn keep(
        mut self: Box<Self>,
        key: PartialKey,
    ) -> BoxFuture<'static, Result<super::Kept, StorageError>> {
        Box::pin(async move {
            if self.broken {
                self.abort_now().await;
                return Err(other("the upload failed earlier"));
            }
            if let Err(e) = self.land_flight().await {
                self.abort_now().await;
                return Err(e);
            }
            // A full part waiting for more data can be kept too.
            if self.buf_len == self.part_size {
                let sent = async {
                    self.ship().await?;
                    self.land_flight().await
                };
                if let Err(e) = sent.await {
                    self.abort_now().await;
                    return Err(e);
                }
            }
            if self.parts.is_empty() {
                // Nothing whole to keep: no stored bytes, only the record.
                self.abort_now().await;
            }
            let len = self.parts.len() as u64 * self.part_size as u64;
            let sha256: Sha256Digest = match self.parts.last() {
                Some(p) => load_state(&p.state)?.finalize().into(),
                None => Sha256::digest(b"").into(),
            };
            // The core counts a kept partial as one file of the length kept.
            let record = self.record(Counted::File(len), false);
            let put = self
                .inner
                .state
                .partials
                .put(&self.inner.partial_id(&key), record)
                .await;
            let old = match put {
                Ok(old) => old,
                Err(e) => {
                    self.abort_now().await;
                    return Err(state_err(e));
                }
            };
            self.handed_on = true;
            let replaced = match old {
                // This upload's own checkpoint: nothing older was replaced.
                Some(old) if self.owns(&old) => Footprint::NONE,
                Some(old) => {
                    self.inner.drop_partial(&old).await;
                    taken_footprint(&old)
                }
                None => Footprint::NONE,
            };
            Ok(super::Kept {
                replaced,
                len,
                sha256,
            })
        })
    }

    fn mark(&mut self) -> BoxFuture<'_, Result<super::Mark, StorageError>> {
        Box::pin(async move {
            self.usable()?;
            let mark = S3Mark {
                serial: self.serial,
                hasher: self.hasher.clone(),
                parts: self.parts.len() + self.flights.len(),
                buf: self.buf.clone(),
            };
            Ok(super::Mark::new(self.written, mark))
        })
    }

    fn rewind(&mut self, mark: super::Mark) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            self.usable()?;
            let len = mark.written();
            let Some(m) = mark.into_state::<S3Mark>() else {
                return Err(StorageError::InvalidArgument);
            };
            if m.serial != self.serial || len > self.written {
                return Err(StorageError::InvalidArgument);
            }
            self.land_flight().await?;
            if m.parts > self.parts.len() {
                return Err(StorageError::InvalidArgument);
            }
            // Parts after the mark's are written again (same numbers) as data comes.
            self.parts.truncate(m.parts);
            self.buf_len = m.buf.iter().map(Bytes::len).sum();
            self.buf = m.buf;
            self.hasher = m.hasher;
            self.written = len;
            Ok(())
        })
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move { self.abort_now().await })
    }
}

impl S3Upload {
    /// The target path, from the key (the key was made from a path of this home).
    fn path(&self) -> RemotePath {
        let key = self.key.as_ref();
        let rel = key.strip_prefix(self.inner.root.as_str()).unwrap_or(key);
        RemotePath::parse(rel).unwrap_or_default()
    }
}

// ---- downloads ----

struct S3Download {
    inner: Arc<Inner>,
    key: Key,
    etag: Option<String>,
    stat: Stat,
    /// Where the GET starts (0 when a prefix is hashed) and where the caller's range starts
    /// and ends.
    from: u64,
    offset: u64,
    end: u64,
    hasher: Option<Sha256>,
    expect_prefix: Option<Sha256Digest>,
    /// The recorded digest, when it covers the range's end (the whole object).
    known: Option<Sha256Digest>,
    stream: Option<futures_stream::Stream>,
    /// Bytes received so far from `from`.
    at: u64,
    /// Bytes of the prefix hashed when `Progress` was last told.
    told: u64,
    pending: Bytes,
    done: bool,
}

/// The byte stream of a GET, boxed.
mod futures_stream {
    pub type Stream = futures_util::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>;
}

impl S3Download {
    fn new(
        inner: Arc<Inner>,
        key: Key,
        meta: &ObjectMeta,
        name: String,
        options: ReadOptions,
        known: Option<Sha256Digest>,
    ) -> Result<S3Download, StorageError> {
        let size = meta.size;
        let offset = options.offset;
        let end = match options.len {
            None if offset <= size => size,
            Some(len) => match offset.checked_add(len) {
                Some(end) if end <= size => end,
                _ => return Err(StorageError::InvalidArgument),
            },
            None => return Err(StorageError::InvalidArgument),
        };
        let hash = options.hash || options.expect_prefix.is_some();
        let recorded = known;
        let known = known.filter(|_| end == size);
        // The prefix is read only to check it, or to hash when nothing recorded covers it.
        let read_prefix = options.expect_prefix.is_some() || (hash && known.is_none());
        let hasher = (hash && known.is_none()).then(Sha256::new);
        let hasher = hasher.or_else(|| options.expect_prefix.map(|_| Sha256::new()));
        Ok(S3Download {
            stat: Stat {
                entry: file_entry(&name, meta),
                sha256: recorded,
            },
            inner,
            key,
            etag: meta.e_tag.clone(),
            from: if read_prefix { 0 } else { offset },
            offset,
            end,
            hasher,
            expect_prefix: options.expect_prefix,
            known: known.filter(|_| hash),
            stream: None,
            at: 0,
            told: 0,
            pending: Bytes::new(),
            done: false,
        })
    }

    async fn open(&mut self) -> Result<(), StorageError> {
        if self.from >= self.end {
            self.stream = Some(Box::pin(futures_util::stream::empty()));
            return Ok(());
        }
        let options = GetOptions {
            if_match: self.etag.clone(),
            range: Some(GetRange::Bounded(self.from..self.end)),
            ..GetOptions::default()
        };
        let got = self
            .inner
            .timed("get", self.inner.store().get_opts(&self.key, options))
            .await
            .map_err(|e| match e {
                // Gone or replaced since the open: what a shrinking local file gives.
                object_store::Error::NotFound { .. } | object_store::Error::Precondition { .. } => {
                    StorageError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the object changed under the read",
                    ))
                }
                e => os_err(e),
            })?;
        self.stream = Some(got.into_stream());
        Ok(())
    }

    /// The next bytes of the GET; `UnexpectedEof` if it ends before the range does.
    async fn pull(&mut self) -> Result<Bytes, StorageError> {
        use futures_util::StreamExt;
        if !self.pending.is_empty() {
            return Ok(std::mem::take(&mut self.pending));
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(other("download not open"));
        };
        match stream.next().await {
            Some(Ok(b)) => Ok(b),
            Some(Err(e)) => Err(os_err(e)),
            None => Err(StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the object ended early",
            ))),
        }
    }

    async fn step(&mut self) -> Result<ReadEvent, StorageError> {
        if self.stream.is_none() {
            self.open().await?;
        }
        let prefix_len = self.offset - self.from;
        // The prefix: hashed, checked, never yielded.
        while self.at < prefix_len {
            let mut b = self.pull().await?;
            let want = (prefix_len - self.at) as usize;
            if b.len() > want {
                self.pending = b.split_off(want);
            }
            if let Some(h) = self.hasher.as_mut() {
                h.update(&b);
            }
            self.at += b.len() as u64;
            if self.at < prefix_len && self.at - self.told >= PROGRESS_EVERY {
                self.told = self.at;
                return Ok(ReadEvent::Progress(self.at));
            }
        }
        if self.at == prefix_len
            && let (Some(want), Some(h)) = (self.expect_prefix, self.hasher.as_ref())
        {
            let actual: Sha256Digest = h.clone().finalize().into();
            // Checked once: `at` moves past the prefix with the first data.
            self.expect_prefix = None;
            if actual != want {
                self.done = true;
                return Ok(ReadEvent::PrefixMismatch { actual });
            }
            if self.known.is_some() {
                self.hasher = None;
            }
        }
        let total = self.end - self.from;
        if self.at == total {
            self.done = true;
            let sha256 = match (self.hasher.take(), self.known) {
                (Some(h), _) => Some(h.finalize().into()),
                (None, known) => known,
            };
            return Ok(ReadEvent::End { sha256 });
        }
        // Data, gathered to a chunk of up to READ_CHUNK_LEN.
        let room = ((total - self.at) as usize).min(READ_CHUNK_LEN);
        let first = self.pull().await?;
        let mut chunk = if first.len() >= room {
            let mut first = first;
            if first.len() > room {
                self.pending = first.split_off(room);
            }
            first
        } else {
            let mut buf = Vec::with_capacity(room);
            buf.extend_from_slice(&first);
            while buf.len() < room {
                let mut b = self.pull().await?;
                let want = room - buf.len();
                if b.len() > want {
                    self.pending = b.split_off(want);
                }
                buf.extend_from_slice(&b);
            }
            Bytes::from(buf)
        };
        if let Some(h) = self.hasher.as_mut() {
            h.update(&chunk);
        }
        self.at += chunk.len() as u64;
        Ok(ReadEvent::Data(std::mem::take(&mut chunk)))
    }
}

impl Download for S3Download {
    fn stat(&self) -> &Stat {
        &self.stat
    }

    fn next(&mut self) -> BoxFuture<'_, Result<ReadEvent, StorageError>> {
        Box::pin(async move {
            if self.done {
                return Ok(ReadEvent::End { sha256: None });
            }
            let event = self.step().await;
            if event.is_err() {
                self.done = true;
            }
            event
        })
    }
}

// ---- the trait ----

impl S3Storage {
    /// A download of `path` (a file), looking up its recorded digest.
    async fn download(
        &self,
        path: &RemotePath,
        options: ReadOptions,
    ) -> Result<S3Download, StorageError> {
        let inner = &self.inner;
        let meta = match inner.what(path).await? {
            What::Root | What::Dir(_) => return Err(StorageError::IsADirectory),
            What::Missing => return Err(StorageError::NotFound),
            What::File(m) => m,
        };
        let key = inner.key(path)?;
        let known = match &meta.e_tag {
            Some(etag) => inner
                .state
                .digests
                .get(&inner.full(&key), etag)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "s3: digest lookup failed; hashing instead");
                    None
                }),
            None => None,
        };
        S3Download::new(
            Arc::clone(inner),
            key,
            &meta,
            entry_name(path),
            options,
            known,
        )
    }

    async fn list_impl(
        &self,
        path: &RemotePath,
        after: Option<&ListToken>,
        limit: ListLimit,
    ) -> Result<ListPage, StorageError> {
        let inner = &self.inner;
        let after = match after.map(ListAt::decode) {
            None => None,
            Some(Some(at)) => Some(at),
            Some(None) => return Err(StorageError::InvalidArgument),
        };
        let marker_mtime = match inner.what(path).await? {
            What::Root => 0,
            What::Dir(m) => mtime(&m),
            What::Missing => return Err(StorageError::NotFound),
            What::File(m) if after.is_none() => {
                return Ok(ListPage {
                    entries: vec![file_entry(&entry_name(path), &m)],
                    next: None,
                });
            }
            What::File(_) => return Err(StorageError::InvalidArgument),
        };
        let tag = ListAt::tag(&inner.ns, path, marker_mtime);
        if after.as_ref().is_some_and(|a| a.tag != tag) {
            return Err(StorageError::InvalidArgument);
        }
        let max = limit.entries.clamp(1, LIST_PAGE_MAX);
        let prefix = inner.dir_prefix(path);
        let mut last = after.map(|a| a.after);
        let mut entries = Vec::new();
        let mut cost = 0usize;
        let mut page_token: Option<String> = None;
        let mut more = false;
        let mut full = false;
        'pages: loop {
            let options = PaginatedListOptions {
                offset: match (&page_token, &last) {
                    (None, Some(name)) => Some(format!("{prefix}{name}")),
                    _ => None,
                },
                delimiter: Some("/".into()),
                // One more than the page needs: the prefix of the last directory may come
                // again, and a look past the end tells whether more remain.
                max_keys: Some((max - entries.len() + 2).min(1000)),
                page_token: page_token.take(),
                ..PaginatedListOptions::default()
            };
            let result = inner
                .timed("list", inner.store().list_paginated(Some(&prefix), options))
                .await
                .map_err(os_err)?;
            // S3 gives objects and common prefixes apart, each in key order: merge them.
            let mut found: Vec<(String, Option<ObjectMeta>)> = result
                .result
                .objects
                .into_iter()
                .map(|m| (m.location.to_string(), Some(m)))
                .chain(
                    result
                        .result
                        .common_prefixes
                        .into_iter()
                        .map(|p| (format!("{p}/"), None)),
                )
                .collect();
            found.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, meta) in found {
                let Some(rest) = key.strip_prefix(prefix.as_str()) else {
                    continue;
                };
                let name = rest.strip_suffix('/').unwrap_or(rest);
                if name.is_empty() || name.contains('/') || is_reserved(name) {
                    continue;
                }
                // A directory whose name the last page ended with comes again as a prefix
                // when the listing starts after it.
                if last.as_deref() == Some(name) {
                    continue;
                }
                if full {
                    more = true;
                    break 'pages;
                }
                let entry = match &meta {
                    Some(m) => file_entry(name, m),
                    None => dir_entry(name, 0),
                };
                cost = cost
                    .saturating_add(name.len())
                    .saturating_add(limit.per_entry);
                entries.push(entry);
                last = Some(name.to_string());
                if entries.len() >= max || cost >= limit.bytes {
                    full = true;
                }
            }
            match result.page_token {
                Some(t) => page_token = Some(t),
                None => break,
            }
        }
        let next = match (more, entries.last()) {
            (true, Some(e)) => Some(
                ListAt {
                    tag,
                    after: e.name.clone(),
                }
                .encode(),
            ),
            _ => None,
        };
        Ok(ListPage { entries, next })
    }

    async fn mkdir_impl(&self, path: &RemotePath) -> Result<(), StorageError> {
        let inner = &self.inner;
        if path.is_root() {
            return Err(StorageError::AlreadyExists);
        }
        let lock = inner.lock(path).await?;
        if !matches!(inner.what(path).await?, What::Missing) {
            return Err(StorageError::AlreadyExists);
        }
        inner.parent_exists(path).await?;
        let marker = inner.marker(path)?;
        inner
            .timed("put", inner.store().put(&marker, PutPayload::default()))
            .await
            .map_err(os_err)?;
        drop(lock);
        Ok(())
    }

    async fn remove_file_impl(&self, path: &RemotePath) -> Result<Footprint, StorageError> {
        let inner = &self.inner;
        let lock = inner.lock(path).await?;
        let gone = match inner.what(path).await? {
            What::Root | What::Dir(_) => return Err(StorageError::IsADirectory),
            What::Missing => return Err(StorageError::NotFound),
            what => footprint_of(&what),
        };
        let key = inner.key(path)?;
        inner
            .timed("delete", inner.store().delete(&key))
            .await
            .map_err(os_err)?;
        let _ = inner.state.digests.forget(&inner.full(&key)).await;
        drop(lock);
        Ok(gone)
    }

    async fn remove_dir_impl(&self, path: &RemotePath) -> Result<Footprint, StorageError> {
        let inner = &self.inner;
        if path.is_root() {
            return Err(StorageError::PermissionDenied);
        }
        let lock = inner.lock(path).await?;
        match inner.what(path).await? {
            What::Dir(_) => {}
            What::File(_) => return Err(StorageError::NotADirectory),
            _ => return Err(StorageError::NotFound),
        }
        // Anything under it but its marker: not empty.
        let options = PaginatedListOptions {
            max_keys: Some(2),
            ..PaginatedListOptions::default()
        };
        let prefix = inner.dir_prefix(path);
        let listed = inner
            .timed("list", inner.store().list_paginated(Some(&prefix), options))
            .await
            .map_err(os_err)?;
        let marker = inner.marker(path)?;
        if listed.result.objects.iter().any(|m| m.location != marker) {
            return Err(StorageError::DirectoryNotEmpty);
        }
        inner
            .timed("delete", inner.store().delete(&marker))
            .await
            .map_err(os_err)?;
        drop(lock);
        Ok(Footprint { bytes: 0, files: 1 })
    }

    async fn rename_impl(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        no_replace: bool,
    ) -> Result<Footprint, StorageError> {
        let inner = &self.inner;
        if from.is_root() || to.is_root() {
            return Err(StorageError::InvalidArgument);
        }
        if from == to {
            return match inner.what(from).await? {
                What::Missing => Err(StorageError::NotFound),
                _ if no_replace => Err(StorageError::AlreadyExists),
                _ => Ok(Footprint::NONE),
            };
        }
        if to.components().starts_with(from.components()) {
            return Err(StorageError::InvalidArgument);
        }
        let source = inner.what(from).await?;
        if matches!(source, What::Missing) {
            return Err(StorageError::NotFound);
        }
        let lock = inner.lock(to).await?;
        let target = inner.what(to).await?;
        let replaced = match (&source, &target) {
            (_, What::Missing) => Footprint::NONE,
            _ if no_replace => return Err(StorageError::AlreadyExists),
            (What::File(_), What::File(_)) => footprint_of(&target),
            (What::File(_), _) => return Err(StorageError::IsADirectory),
            (_, What::File(_)) => return Err(StorageError::NotADirectory),
            // A directory over a directory: only over an empty one, as rename(2).
            _ => return Err(StorageError::AlreadyExists),
        };
        if matches!(target, What::Missing) {
            inner.parent_exists(to).await?;
        }
        match source {
            What::File(meta) => {
                let (fk, tk) = (inner.key(from)?, inner.key(to)?);
                inner
                    .timed("copy", inner.store().copy(&fk, &tk))
                    .await
                    .map_err(os_err)?;
                self.carry_digest(&fk, &meta, &tk).await;
                inner
                    .timed("delete", inner.store().delete(&fk))
                    .await
                    .map_err(os_err)?;
                let _ = inner.state.digests.forget(&inner.full(&fk)).await;
            }
            _ => {
                // Every key under the directory, copied, then the old ones deleted.
                let (old, new) = (inner.dir_prefix(from), inner.dir_prefix(to));
                let keys = self.all_keys(&old).await?;
                for (k, meta) in &keys {
                    let rest = &k.as_ref()[old.len()..];
                    let nk = Key::parse(format!("{new}{rest}"))
                        .map_err(|_| StorageError::InvalidArgument)?;
                    inner
                        .timed("copy", inner.store().copy(k, &nk))
                        .await
                        .map_err(os_err)?;
                    self.carry_digest(k, meta, &nk).await;
                }
                for (k, _) in &keys {
                    inner
                        .timed("delete", inner.store().delete(k))
                        .await
                        .map_err(os_err)?;
                    let _ = inner.state.digests.forget(&inner.full(k)).await;
                }
            }
        }
        drop(lock);
        Ok(replaced)
    }

    /// Every object under `prefix`, with its metadata.
    async fn all_keys(&self, prefix: &str) -> Result<Vec<(Key, ObjectMeta)>, StorageError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let options = PaginatedListOptions {
                page_token: token,
                max_keys: Some(1000),
                ..PaginatedListOptions::default()
            };
            let r = self
                .inner
                .timed(
                    "list",
                    self.inner.store().list_paginated(Some(prefix), options),
                )
                .await
                .map_err(os_err)?;
            out.extend(
                r.result
                    .objects
                    .into_iter()
                    .map(|m| (m.location.clone(), m)),
            );
            match r.page_token {
                Some(t) => token = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// After a server-side copy: the copy's digest is the source's, recorded under the
    /// copy's ETag. Returns it if it was known.
    async fn carry_digest(&self, from: &Key, meta: &ObjectMeta, to: &Key) -> Option<Sha256Digest> {
        let inner = &self.inner;
        let digests = &inner.state.digests;
        let digest = digests
            .get(&inner.full(from), meta.e_tag.as_deref()?)
            .await
            .ok()??;
        let copied = inner.head(to).await.ok()??;
        let _ = digests
            .put(&inner.full(to), copied.e_tag.as_deref()?, digest)
            .await;
        Some(digest)
    }

    async fn copy_impl(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        options: CopyOptions,
    ) -> Result<Copied, StorageError> {
        let inner = &self.inner;
        let meta = match inner.what(from).await? {
            What::Root | What::Dir(_) => return Err(StorageError::IsADirectory),
            What::Missing => return Err(StorageError::NotFound),
            What::File(m) => m,
        };
        if options.expect_size.is_some_and(|want| want != meta.size) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the source changed before the copy began",
            )
            .into());
        }
        let replaces = inner
            .check_target(to, options.no_replace, Landing::Exact)
            .await?;
        if let Some(reserve) = options.reserve {
            reserve(replaces, None)?;
        }
        let lock = inner.lock(to).await?;
        let replaced = match inner.what(to).await? {
            What::Root | What::Dir(_) => return Err(StorageError::IsADirectory),
            What::File(_) if options.no_replace => return Err(StorageError::AlreadyExists),
            what => footprint_of(&what),
        };
        if let Some(admit) = options.admit {
            admit(replaced)?;
        }
        let (fk, tk) = (inner.key(from)?, inner.key(to)?);
        // CopyObject: atomic, so a dropped copy leaves nothing or the whole.
        inner
            .timed("copy", inner.store().copy(&fk, &tk))
            .await
            .map_err(os_err)?;
        if let Some(placed) = options.placed {
            placed(replaced);
        }
        let sha256 = self.carry_digest(&fk, &meta, &tk).await;
        if sha256.is_none() {
            let _ = inner.state.digests.forget(&inner.full(&tk)).await;
        }
        if let Some(progress) = &options.progress {
            progress(meta.size);
        }
        drop(lock);
        Ok(Copied {
            size: meta.size,
            sha256,
            replaced,
        })
    }

    async fn get_small_impl(&self, path: &RemotePath, max: u64) -> Result<Fetched, StorageError> {
        let inner = &self.inner;
        let max = max.min(SMALL_MAX);
        let meta = match inner.what(path).await? {
            What::Root | What::Dir(_) => return Err(StorageError::IsADirectory),
            What::Missing => return Err(StorageError::NotFound),
            What::File(m) => m,
        };
        if meta.size > max {
            let options = ReadOptions {
                hash: true,
                ..ReadOptions::default()
            };
            let download = self.download(path, options).await?;
            return Ok(Fetched::Larger(Box::new(download)));
        }
        let key = inner.key(path)?;
        let options = GetOptions {
            if_match: meta.e_tag.clone(),
            ..GetOptions::default()
        };
        let data = match inner
            .timed("get", inner.store().get_opts(&key, options))
            .await
        {
            Ok(got) => got.bytes().await.map_err(os_err)?,
            Err(
                object_store::Error::NotFound { .. } | object_store::Error::Precondition { .. },
            ) => {
                return Ok(Fetched::Changed);
            }
            Err(e) => return Err(os_err(e)),
        };
        if data.len() as u64 != meta.size {
            return Ok(Fetched::Changed);
        }
        // Hashing a small file costs less than asking the index.
        let sha256: Sha256Digest = Sha256::digest(&data).into();
        Ok(Fetched::Whole {
            stat: Stat {
                entry: file_entry(&entry_name(path), &meta),
                sha256: Some(sha256),
            },
            data,
            sha256,
        })
    }

    async fn begin_impl(
        &self,
        path: &RemotePath,
        options: UploadOptions,
    ) -> Result<Box<dyn Upload>, StorageError> {
        let inner = &self.inner;
        let replaces = inner
            .check_target(path, options.no_replace, options.landing)
            .await?;
        let superseded = match &options.supersede {
            Some(key) => inner.remove_partial(key).await?,
            None => None,
        };
        let mut upload = S3Upload::new(Arc::clone(inner), inner.key(path)?, replaces);
        upload.superseded = superseded;
        upload.checkpoint = options.supersede;
        Ok(Box::new(upload))
    }

    async fn resume_impl(
        &self,
        key: &PartialKey,
        path: &RemotePath,
        offset: u64,
        prefix: Sha256Digest,
    ) -> Result<Resume, StorageError> {
        let inner = &self.inner;
        let replaces = inner.check_target(path, false, Landing::Exact).await?;
        let id = inner.partial_id(key);
        let partials = &inner.state.partials;
        // Claimed first: of several nodes resuming at once, one gets it.
        let Some(record) = partials.take(&id).await.map_err(state_err)? else {
            return Ok(Resume::NoPartial);
        };
        let put_back = |record: PartialRecord| async move {
            let replaced = match partials.put(&id, record).await.map_err(state_err)? {
                Some(other) => {
                    // Kept by another upload meanwhile: this one takes its place again.
                    inner.drop_partial(&other).await;
                    taken_footprint(&other)
                }
                None => Footprint::NONE,
            };
            Ok::<Footprint, StorageError>(replaced)
        };
        let handle = match PartialHandle::decode(&record.handle) {
            Ok(h) => h,
            Err(e) => {
                put_back(record).await?;
                return Err(e);
            }
        };
        let target = inner.key(path)?;
        if handle.key != target.as_ref() || record.home != inner.ns {
            // Kept for another target: not this one's.
            put_back(record).await?;
            return Ok(Resume::NoPartial);
        }
        let part_size = handle.part_size.max(1);
        if record.len < offset {
            let kept = record.len;
            put_back(record).await?;
            return Ok(Resume::Short { kept });
        }
        let whole = (offset / part_size) as usize;
        if !offset.is_multiple_of(part_size) || whole > handle.parts.len() {
            put_back(record).await?;
            return Ok(Resume::Short {
                kept: whole.min(handle.parts.len()) as u64 * part_size,
            });
        }
        let hasher = match whole.checked_sub(1) {
            None => Sha256::new(),
            Some(i) => {
                let state = hex::decode(&handle.parts[i].state)
                    .map_err(|_| other("a kept partial's hash state is damaged"));
                match state.and_then(|s| load_state(&s)) {
                    Ok(h) => h,
                    Err(e) => {
                        put_back(record).await?;
                        return Err(e);
                    }
                }
            }
        };
        let actual: Sha256Digest = hasher.clone().finalize().into();
        if actual != prefix {
            let replaced = put_back(record).await?;
            return Ok(Resume::Mismatch { actual, replaced });
        }
        let mut upload = S3Upload::new(Arc::clone(inner), target, replaces);
        upload.part_size = part_size as usize;
        upload.hasher = hasher;
        upload.written = offset;
        // What the counters hold for the record (nothing, if a node died uploading it
        // fresh); from here they hold the prefix, and this upload's progress says so.
        upload.superseded = taken_count(&record);
        upload.progress_counted = Counted::File(offset);
        upload.checkpoint = Some(key.clone());
        match &handle.upload_id {
            Some(upload_id) if whole > 0 => {
                upload.upload_id = Some(upload_id.clone());
                for (i, p) in handle.parts[..whole].iter().enumerate() {
                    let state = hex::decode(&p.state)
                        .map_err(|_| other("a kept partial's hash state is damaged"))?;
                    let _ = i;
                    upload.parts.push(DonePart {
                        id: PartId {
                            content_id: p.etag.clone(),
                        },
                        state,
                    });
                }
            }
            Some(upload_id) => {
                // Resumed at 0: the old parts are of no use.
                let upload_id = upload_id.clone();
                inner.abort(&upload.key, &upload_id).await;
            }
            None => {}
        }
        Ok(Resume::Ready(Box::new(upload)))
    }

    async fn put_small_impl(
        &self,
        path: &RemotePath,
        data: Bytes,
        options: SmallOptions,
        commit: Commit,
    ) -> Result<SmallPut, StorageError> {
        let inner = &self.inner;
        if data.len() as u64 > SMALL_MAX {
            return Err(StorageError::InvalidArgument);
        }
        // The name is held from the first look to the write: one look serves both the
        // checks and the commit.
        if path.is_root() {
            return Err(StorageError::IsADirectory);
        }
        let lock = inner.lock(path).await?;
        let (replaces, what) = inner
            .check_target_what(path, commit.no_replace, commit.landing)
            .await?;
        let superseded = match &options.supersede {
            Some(key) => inner.remove_partial(key).await?,
            None => None,
        };
        if let Some(reserve) = options.reserve {
            reserve(replaces, superseded)?;
        }
        let actual: Sha256Digest = Sha256::digest(&data).into();
        if actual != commit.sha256 {
            return Ok(SmallPut {
                landed: Landed::Mismatch { actual },
                superseded,
                replaces,
            });
        }
        let landed = inner
            .land(
                path,
                Body::Put(PutPayload::from(data)),
                actual,
                commit,
                Some((lock, what)),
            )
            .await?;
        Ok(SmallPut {
            landed,
            superseded,
            replaces,
        })
    }

    async fn usage_impl(&self) -> Result<Footprint, StorageError> {
        let inner = &self.inner;
        let mut total = Footprint::NONE;
        for (key, meta) in self.all_keys(&inner.root).await? {
            let name = key.filename().unwrap_or("");
            if name == DIR_MARKER {
                total = total.plus(Footprint { bytes: 0, files: 1 });
            } else if !is_reserved(name) {
                total = total.plus(Footprint {
                    bytes: meta.size,
                    files: 1,
                });
            }
        }
        let far = SystemTime::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let kept = inner
            .state
            .partials
            .kept_before(&inner.ns, far)
            .await
            .map_err(state_err)?;
        // As the counters hold them: a kept partial as a file, the progress of an upload a
        // node died in as what was counted for it.
        for (_, r) in kept {
            total = total.plus(counted_footprint(&r));
        }
        Ok(total)
    }

    async fn sweep_impl(&self, max_age: Duration) -> Result<Footprint, StorageError> {
        let inner = &self.inner;
        let before = SystemTime::now()
            .checked_sub(max_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let old = inner
            .state
            .partials
            .kept_before(&inner.ns, before)
            .await
            .map_err(state_err)?;
        let mut swept = Footprint::NONE;
        for (id, _) in old {
            // Taken again: a resume may have claimed it meanwhile.
            if let Some(r) = inner.state.partials.take(&id).await.map_err(state_err)? {
                inner.drop_partial(&r).await;
                swept = swept.plus(taken_footprint(&r));
            }
        }
        Ok(swept)
    }
}

impl Storage for S3Storage {
    fn stat<'a>(&'a self, path: &'a RemotePath) -> BoxFuture<'a, Result<Stat, StorageError>> {
        Box::pin(async move {
            let entry = match self.inner.what(path).await? {
                What::Root => dir_entry("/", 0),
                What::Dir(m) => dir_entry(&entry_name(path), mtime(&m)),
                What::File(m) => file_entry(&entry_name(path), &m),
                What::Missing => return Err(StorageError::NotFound),
            };
            Ok(Stat {
                entry,
                sha256: None,
            })
        })
    }

    fn list_page<'a>(
        &'a self,
        path: &'a RemotePath,
        after: Option<&'a ListToken>,
        limit: ListLimit,
    ) -> BoxFuture<'a, Result<ListPage, StorageError>> {
        Box::pin(self.list_impl(path, after, limit))
    }

    fn mkdir<'a>(&'a self, path: &'a RemotePath) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(self.mkdir_impl(path))
    }

    fn remove_file<'a>(
        &'a self,
        path: &'a RemotePath,
    ) -> BoxFuture<'a, Result<Footprint, StorageError>> {
        Box::pin(self.remove_file_impl(path))
    }

    fn remove_dir<'a>(
        &'a self,
        path: &'a RemotePath,
    ) -> BoxFuture<'a, Result<Footprint, StorageError>> {
        Box::pin(self.remove_dir_impl(path))
    }

    fn rename<'a>(
        &'a self,
        from: &'a RemotePath,
        to: &'a RemotePath,
        no_replace: bool,
    ) -> BoxFuture<'a, Result<Footprint, StorageError>> {
        Box::pin(self.rename_impl(from, to, no_replace))
    }

    fn copy<'a>(
        &'a self,
        from: &'a RemotePath,
        to: &'a RemotePath,
        options: CopyOptions,
    ) -> BoxFuture<'a, Result<Copied, StorageError>> {
        Box::pin(self.copy_impl(from, to, options))
    }

    fn open_read<'a>(
        &'a self,
        path: &'a RemotePath,
        options: ReadOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Download>, StorageError>> {
        Box::pin(async move {
            let d = self.download(path, options).await?;
            Ok(Box::new(d) as Box<dyn Download>)
        })
    }

    fn get_small<'a>(
        &'a self,
        path: &'a RemotePath,
        max: u64,
    ) -> BoxFuture<'a, Result<Fetched, StorageError>> {
        Box::pin(self.get_small_impl(path, max))
    }

    fn begin_upload<'a>(
        &'a self,
        path: &'a RemotePath,
        options: UploadOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Upload>, StorageError>> {
        Box::pin(self.begin_impl(path, options))
    }

    fn resume_upload<'a>(
        &'a self,
        key: &'a PartialKey,
        path: &'a RemotePath,
        offset: u64,
        prefix: Sha256Digest,
        _size_hint: Option<u64>,
    ) -> BoxFuture<'a, Result<Resume, StorageError>> {
        Box::pin(self.resume_impl(key, path, offset, prefix))
    }

    fn partial_len<'a>(
        &'a self,
        key: &'a PartialKey,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        Box::pin(async move {
            let id = self.inner.partial_id(key);
            let r = self
                .inner
                .state
                .partials
                .get(&id)
                .await
                .map_err(state_err)?;
            // A record of no whole part and no count (a multipart upload just begun when its
            // node died) is nothing to resume from: only the sweep needs it.
            Ok(r.filter(|r| r.len > 0 || counted(r).is_some())
                .map(|r| r.len))
        })
    }

    fn remove_partial<'a>(
        &'a self,
        key: &'a PartialKey,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        Box::pin(self.inner.remove_partial(key))
    }

    fn put_small<'a>(
        &'a self,
        path: &'a RemotePath,
        data: Bytes,
        options: SmallOptions,
        commit: Commit,
    ) -> BoxFuture<'a, Result<SmallPut, StorageError>> {
        Box::pin(self.put_small_impl(path, data, options, commit))
    }

    fn sweep_partials(&self, max_age: Duration) -> BoxFuture<'_, Result<Footprint, StorageError>> {
        Box::pin(self.sweep_impl(max_age))
    }

    fn usage(&self, limit: Duration) -> BoxFuture<'_, Result<Footprint, StorageError>> {
        Box::pin(async move {
            match tokio::time::timeout(limit, self.usage_impl()).await {
                Ok(r) => r,
                Err(_) => Err(StorageError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "counting the home took too long",
                ))),
            }
        })
    }

    fn space(&self) -> BoxFuture<'_, Result<Option<Space>, StorageError>> {
        Box::pin(async { Ok(None) })
    }

    fn small_puts_in_flight(&self) -> usize {
        SMALL_PUTS_IN_FLIGHT
    }

    fn flush_durability(
        &self,
        staged: Vec<Staged>,
    ) -> BoxFuture<'_, Vec<Result<Committed, StorageError>>> {
        // This store never stages: every commit is durable when it returns, so any staged
        // commit is another store's.
        let results = staged
            .into_iter()
            .map(|_| Err(StorageError::InvalidArgument))
            .collect();
        Box::pin(async move { results })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(!check_endpoint("https://s3.example.org").unwrap());
        assert!(check_endpoint("http://127.0.0.1:3900").unwrap());
        assert!(check_endpoint("http://[::1]:3900/").unwrap());
        assert!(check_endpoint("http://localhost:3900").unwrap());
        for bad in [
            "http://10.0.0.1:3900",
            "http://s3.example.org",
            "ftp://x",
            "s3.example.org",
            "http://",
            "https://user@host",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_file_default_section() {
        let text = "# c\n[other]\naws_access_key_id = no\n[default]\naws_access_key_id = GK1\n\
                    aws_secret_access_key = s3cr3t\n";
        let k = parse_credentials(text).unwrap();
        assert_eq!((k.id.as_str(), k.secret.as_str()), ("GK1", "s3cr3t"));
        assert!(!format!("{k:?}").contains("s3cr3t"));
        assert!(parse_credentials("[other]\naws_access_key_id = a\n").is_none());
        let top = "aws_access_key_id=a\naws_secret_access_key=b\n";
        assert!(parse_credentials(top).is_some());
    }

    #[test]
    fn hash_state_survives_a_round_trip() {
        let mut h = Sha256::new();
        h.update(vec![7u8; 5 * 1024 * 1024]);
        let saved = save_state(&h);
        // The core's state and block count, and the block buffer (empty at a part boundary).
        assert_eq!(saved.len(), 40 + 64);
        let mut back = load_state(&saved).unwrap();
        h.update(b"more");
        back.update(b"more");
        assert_eq!(h.finalize(), back.finalize());
        assert!(load_state(&saved[..10]).is_err());
    }

    #[test]
    fn list_tokens_refuse_garbage() {
        let t = ListAt {
            tag: [1; 8],
            after: "name".into(),
        }
        .encode();
        let back = ListAt::decode(&t).unwrap();
        assert_eq!((back.tag, back.after.as_str()), ([1; 8], "name"));
        for bad in [
            "",
            "0",
            "zz",
            &t.as_str().to_uppercase(),
            &format!("{}0", t.as_str()),
        ] {
            assert!(
                ListAt::decode(&ListToken::from_string(bad.into())).is_none(),
                "{bad}"
            );
        }
        // A name with a slash is not one name.
        let slash = ListToken::from_string(hex::encode([&[1u8; 8][..], b"a/b"].concat()));
        assert!(ListAt::decode(&slash).is_none());
    }
}
