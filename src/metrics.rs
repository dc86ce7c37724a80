//! What a server counts for its operators, in Prometheus' terms (OpenMetrics text), through
//! the Prometheus project's own client crate.
//!
//! One [`Metrics`] per server, built with it and held by it (never a global: tests run many
//! servers in one process, and each must count only its own). The front-ends count where they
//! write their audit lines; the listener's admin port (`server::admin`) encodes it on
//! `GET /metrics`.
//!
//! Every label value is a `&'static str` from a fixed set written here or in the wire's
//! code list: no user name, path or address can become a label, so the number of series stays
//! small and the output tells nothing about who did what.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use bytes::Bytes;

use crate::domain::BoxFuture;
use crate::storage::{
    Commit, Committed, Copied, CopyOptions, Download, Fetched, Footprint, Kept, Landed, ListLimit,
    ListPage, ListToken, Mark, PartialKey, ReadOptions, RemotePath, Resume, Sha256Digest,
    SmallOptions, SmallPut, Space, Staged, Stat, Storage, StorageError, Upload, UploadOptions,
};

/// One label, name and value, both fixed at compile time.
type Label = (&'static str, &'static str);

/// A histogram family's constructor (a plain function, so the family stays `Send + Sync`).
type Buckets = fn() -> Histogram;

/// The front-end a session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A logged-in ferry/1 session.
    Ferry,
    /// An HTTPS connection that proved a user, token or link (the web app, curl, tus).
    Http,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Ferry => "ferry",
            Protocol::Http => "http",
        }
    }
}

/// Which way a file went, seen from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Into the server (a put, an HTTP `PUT`, a tus upload).
    Upload,
    /// Out of it (a get, an HTTP `GET`).
    Download,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (an upload) or sent (a download).
    Ok,
    /// Refused or failed with an error code.
    Error,
    /// Cut off: the client left or cancelled it, or the shutdown's grace period ran out.
    Interrupted,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Interrupted => "interrupted",
        }
    }

    /// The outcome an audit line's `result` field names: `ok`, `interrupted` or
    /// `disconnected`, or an error code (`cancelled`: the client's own choice, not a
    /// failure).
    pub fn of_audit(result: &str) -> Outcome {
        match result {
            "ok" => Outcome::Ok,
            "interrupted" | "disconnected" | "cancelled" => Outcome::Interrupted,
            _ => Outcome::Error,
        }
    }
}

/// Why a connection was closed at accept, before any TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server's connection cap (`--max-connections`).
    Capacity,
    /// The source's connection cap (`--max-connections-per-source`).
    PerSource,
    /// The source is penalised.
    Penalised,
    /// Too many connections not logged in (`--max-startups`).
    Prelogin,
    /// Not a trusted balancer while `--proxy-protocol` is on.
    UntrustedProxy,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Capacity => "capacity",
            Refusal::PerSource => "per_source",
            Refusal::Penalised => "penalised",
            Refusal::Prelogin => "prelogin",
            Refusal::UntrustedProxy => "untrusted_proxy",
        }
    }
}

/// The error codes the front-ends send: ferry/1's (docs/PROTOCOL.md §9) and HTTP's own
/// (docs/HTTP.md, *Errors*). A code not in this list is counted as `other`, so a new code
/// forgotten here shows up instead of being lost, and nothing else can become a label.
pub const ERROR_CODES: &[&str] = &[
    // ferry/1, shared by HTTP.
    "bad_request",
    "unsupported_version",
    "auth_required",
    "auth_failed",
    "not_found",
    "already_exists",
    "permission_denied",
    "invalid_path",
    "is_a_directory",
    "not_a_directory",
    "directory_not_empty",
    "integrity_mismatch",
    "size_mismatch",
    "quota_exceeded",
    "no_space",
    "too_large",
    "busy",
    "timeout",
    "cancelled",
    "resume_refused",
    "internal",
    // HTTP only.
    "bad_digest",
    "method_not_allowed",
    "offset_mismatch",
    "upload_busy",
    "tus_version",
    "bad_content_type",
    "too_many_uploads",
    "too_many_attempts",
    "checksum_mismatch",
    "length_required",
    "range_not_satisfiable",
    "shutting_down",
    "home_unavailable",
    "csrf",
    "link_used_up",
    "link_expired",
    "link_refused",
    "too_many_links",
    "too_many_sessions",
];

/// `code` as a label value: itself if it is one of [`ERROR_CODES`], else `other`.
pub fn error_code(code: &str) -> &'static str {
    ERROR_CODES
        .iter()
        .find(|c| **c == code)
        .copied()
        .unwrap_or("other")
}

/// Storage operations that are timed, by the names their label takes.
pub mod storage_op {
    /// Opening a file to read (a download, a sha256).
    pub const OPEN: &str = "open";
    /// One page of a listing.
    pub const LIST: &str = "list";
    /// Starting an upload (the temp file made).
    pub const BEGIN_UPLOAD: &str = "begin_upload";
    /// Committing an upload: digest compared, durable, renamed into place (a whole small
    /// file included).
    pub const COMMIT: &str = "commit";
    /// The group commit's one flush for many staged files.
    pub const FLUSH: &str = "flush";
}

/// The histogram buckets of storage and database latency: 0.5 ms to about 33 s, doubling.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// A server's metrics. Cheap to share (`Arc`); every method takes `&self` and never blocks
/// for long (each series is an atomic; a family takes a short lock to find its series).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Set from the listener's permits at each scrape (see [`Metrics::set_connections`]).
    connections: Gauge,
    sessions: Family<[Label; 1], Gauge>,
    transfers: Family<[Label; 2], Counter>,
    transfer_bytes: Family<[Label; 1], Counter>,
    errors: Family<[Label; 1], Counter>,
    logins: Family<[Label; 1], Counter>,
    penalties: Family<[Label; 1], Counter>,
    refused: Family<[Label; 1], Counter>,
    storage_seconds: Family<[Label; 1], Histogram, Buckets>,
    database_seconds: Family<[Label; 1], Histogram, Buckets>,
    object_store_seconds: Family<[Label; 1], Histogram, Buckets>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric registered, and the series operators look for at zero from the start
    /// (so a rate over them is defined before the first event).
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            connections: Gauge::default(),
            sessions: Family::default(),
            transfers: Family::default(),
            transfer_bytes: Family::default(),
            errors: Family::default(),
            logins: Family::default(),
            penalties: Family::default(),
            refused: Family::default(),
            storage_seconds: Family::new_with_constructor(latency_buckets),
            database_seconds: Family::new_with_constructor(latency_buckets),
            object_store_seconds: Family::new_with_constructor(latency_buckets),
        };
        registry.register(
            "ferry_build",
            "The ferry version this server runs (which nodes of a fleet still run an old one)",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register(
            "ferry_connections",
            "Connections open, from accept on, logged in or not",
            m.connections.clone(),
        );
        registry.register(
            "ferry_sessions",
            "Logged-in ferry/1 sessions and authenticated HTTPS connections, by protocol",
            m.sessions.clone(),
        );
        registry.register(
            "ferry_transfers",
            "File transfers that ended, by direction and result",
            m.transfers.clone(),
        );
        registry.register_with_unit(
            "ferry_transfer",
            "Bytes of files moved by transfers that ended, by direction (ferry/1 counts a \
             file's size when it ends ok; HTTP counts what a download sent, and an upload's size)",
            Unit::Bytes,
            m.transfer_bytes.clone(),
        );
        registry.register(
            "ferry_errors",
            "Error answers sent, by their stable code (ferry/1 and HTTP share the codes)",
            m.errors.clone(),
        );
        registry.register(
            "ferry_logins",
            "Password logins (ferry/1 and the web app), by result",
            m.logins.clone(),
        );
        registry.register(
            "ferry_penalties",
            "Offences counted against source addresses' penalties (exempt ones included), by reason",
            m.penalties.clone(),
        );
        registry.register(
            "ferry_refused_connections",
            "Connections closed at accept before TLS, by reason",
            m.refused.clone(),
        );
        registry.register_with_unit(
            "ferry_storage",
            "Time taken by storage operations, by operation",
            Unit::Seconds,
            m.storage_seconds.clone(),
        );
        registry.register_with_unit(
            "ferry_database",
            "Time taken by database queries, by operation",
            Unit::Seconds,
            m.database_seconds.clone(),
        );
        registry.register_with_unit(
            "ferry_object_store",
            "Time taken by requests to the object store (--storage s3), by request",
            Unit::Seconds,
            m.object_store_seconds.clone(),
        );
        for p in [Protocol::Ferry, Protocol::Http] {
            let _ = m.sessions.get_or_create(&[("protocol", p.as_str())]);
        }
        for d in [Direction::Upload, Direction::Download] {
            for o in [Outcome::Ok, Outcome::Error, Outcome::Interrupted] {
                let _ = m
                    .transfers
                    .get_or_create(&[("direction", d.as_str()), ("result", o.as_str())]);
            }
            let _ = m.transfer_bytes.get_or_create(&[("direction", d.as_str())]);
        }
        for r in ["ok", "failed"] {
            let _ = m.logins.get_or_create(&[("result", r)]);
        }
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text of every metric, `# EOF` included.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; a failed encoder would only cut the text short.
        if encode(&mut out, &self.registry).is_err() {
            tracing::warn!("encoding the metrics failed");
        }
        out
    }

    /// The connections open now.
    pub fn set_connections(&self, n: usize) {
        self.connections.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A session of `protocol` began; it is counted until the value returned is dropped.
    pub fn session(&self, protocol: Protocol) -> Live {
        let gauge = self
            .sessions
            .get_or_create(&[("protocol", protocol.as_str())])
            .clone();
        gauge.inc();
        Live { gauge }
    }

    /// A transfer ended `outcome`, having moved `bytes` (none known: 0).
    pub fn transfer(&self, direction: Direction, outcome: Outcome, bytes: u64) {
        self.transfers
            .get_or_create(&[
                ("direction", direction.as_str()),
                ("result", outcome.as_str()),
            ])
            .inc();
        if bytes > 0 {
            self.transfer_bytes
                .get_or_create(&[("direction", direction.as_str())])
                .inc_by(bytes);
        }
    }

    /// What an audit line of operation `op` (`get`, `put`, ...) that ended `result` counts:
    /// a transfer for `get` and `put`, nothing for the rest.
    pub fn audited(&self, op: &str, result: &str, bytes: Option<u64>) {
        let direction = match op {
            "get" => Direction::Download,
            "put" => Direction::Upload,
            _ => return,
        };
        self.transfer(direction, Outcome::of_audit(result), bytes.unwrap_or(0));
    }

    /// An error answer with `code` was sent.
    pub fn error(&self, code: &str) {
        self.errors
            .get_or_create(&[("code", error_code(code))])
            .inc();
    }

    /// A password check ended: right (`true`) or wrong.
    pub fn login(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.logins.get_or_create(&[("result", result)]).inc();
    }

    /// An offence was charged to a source; `reason` is its short name (`authfail`, ...).
    pub fn penalty(&self, reason: &'static str) {
        self.penalties.get_or_create(&[("reason", reason)]).inc();
    }

    /// A connection was closed at accept.
    pub fn refused(&self, why: Refusal) {
        self.refused
            .get_or_create(&[("reason", why.as_str())])
            .inc();
    }

    /// A storage operation (see [`storage_op`]) took `took`.
    pub fn storage(&self, op: &'static str, took: Duration) {
        self.storage_seconds
            .get_or_create(&[("operation", op)])
            .observe(took.as_secs_f64());
    }

    /// A database query of kind `op` (a fixed name such as `login` or `reserve`, never the
    /// query text) took `took`. For the PostgreSQL backends.
    pub fn database(&self, op: &'static str, took: Duration) {
        self.database_seconds
            .get_or_create(&[("operation", op)])
            .observe(took.as_secs_f64());
    }

    /// A request of kind `request` to the object store (`put`, `get`, `put_part`, ...: a
    /// fixed name, never a key) took `took`.
    pub fn object_store(&self, request: &'static str, took: Duration) {
        self.object_store_seconds
            .get_or_create(&[("request", request)])
            .observe(took.as_secs_f64());
    }

    /// `storage` with its key operations timed into this server's `ferry_storage_seconds`.
    pub fn timed_storage(self: &Arc<Self>, storage: Arc<dyn Storage>) -> Arc<dyn Storage> {
        Arc::new(Timed {
            inner: storage,
            metrics: Arc::clone(self),
        })
    }
}

/// A live session's place in `ferry_sessions`; dropping it takes the session off.
#[derive(Debug)]
pub struct Live {
    gauge: Gauge,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A store whose key operations are timed (see [`storage_op`]); everything else goes straight
/// through. It knows no backend: the local store and an object store are timed alike.
#[derive(Debug)]
struct Timed {
    inner: Arc<dyn Storage>,
    metrics: Arc<Metrics>,
}

/// Runs `f` and records how long it took as `op`.
async fn time<T>(metrics: &Metrics, op: &'static str, f: impl Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = f.await;
    metrics.storage(op, started.elapsed());
    out
}

impl Storage for Timed {
    fn stat<'a>(&'a self, path: &'a RemotePath) -> BoxFuture<'a, Result<Stat, StorageError>> {
        self.inner.stat(path)
    }

    fn lstat<'a>(&'a self, path: &'a RemotePath) -> BoxFuture<'a, Result<Stat, StorageError>> {
        self.inner.lstat(path)
    }

    fn list_page<'a>(
        &'a self,
        path: &'a RemotePath,
        after: Option<&'a ListToken>,
        limit: ListLimit,
    ) -> BoxFuture<'a, Result<ListPage, StorageError>> {
        let page = self.inner.list_page(path, after, limit);
        Box::pin(time(&self.metrics, storage_op::LIST, page))
    }

    fn list<'a>(
        &'a self,
        path: &'a RemotePath,
        after: Option<&'a ListToken>,
        max: usize,
    ) -> BoxFuture<'a, Result<ListPage, StorageError>> {
        let page = self.inner.list(path, after, max);
        Box::pin(time(&self.metrics, storage_op::LIST, page))
    }

    fn mkdir<'a>(&'a self, path: &'a RemotePath) -> BoxFuture<'a, Result<(), StorageError>> {
        self.inner.mkdir(path)
    }

    fn remove_file<'a>(
        &'a self,
        path: &'a RemotePath,
    ) -> BoxFuture<'a, Result<Footprint, StorageError>> {
        self.inner.remove_file(path)
    }

    fn remove_dir<'a>(
        &'a self,
        path: &'a RemotePath,
    ) -> BoxFuture<'a, Result<Footprint, StorageError>> {
        self.inner.remove_dir(path)
    }

    fn rename<'a>(
        &'a self,
        from: &'a RemotePath,
        to: &'a RemotePath,
        no_replace: bool,
    ) -> BoxFuture<'a, Result<Footprint, StorageError>> {
        self.inner.rename(from, to, no_replace)
    }

    fn copy<'a>(
        &'a self,
        from: &'a RemotePath,
        to: &'a RemotePath,
        options: CopyOptions,
    ) -> BoxFuture<'a, Result<Copied, StorageError>> {
        self.inner.copy(from, to, options)
    }

    fn open_read<'a>(
        &'a self,
        path: &'a RemotePath,
        options: ReadOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Download>, StorageError>> {
        let opened = self.inner.open_read(path, options);
        Box::pin(time(&self.metrics, storage_op::OPEN, opened))
    }

    fn get_small<'a>(
        &'a self,
        path: &'a RemotePath,
        max: u64,
    ) -> BoxFuture<'a, Result<Fetched, StorageError>> {
        let fetched = self.inner.get_small(path, max);
        Box::pin(time(&self.metrics, storage_op::OPEN, fetched))
    }

    fn begin_upload<'a>(
        &'a self,
        path: &'a RemotePath,
        options: UploadOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Upload>, StorageError>> {
        let begun = self.inner.begin_upload(path, options);
        Box::pin(async move {
            let upload = time(&self.metrics, storage_op::BEGIN_UPLOAD, begun).await?;
            Ok(self.wrap(upload))
        })
    }

    fn resume_upload<'a>(
        &'a self,
        key: &'a PartialKey,
        path: &'a RemotePath,
        offset: u64,
        prefix: Sha256Digest,
        size_hint: Option<u64>,
    ) -> BoxFuture<'a, Result<Resume, StorageError>> {
        let resumed = self
            .inner
            .resume_upload(key, path, offset, prefix, size_hint);
        Box::pin(async move {
            Ok(match resumed.await? {
                Resume::Ready(upload) => Resume::Ready(self.wrap(upload)),
                other => other,
            })
        })
    }

    fn partial_len<'a>(
        &'a self,
        key: &'a PartialKey,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        self.inner.partial_len(key)
    }

    fn remove_partial<'a>(
        &'a self,
        key: &'a PartialKey,
    ) -> BoxFuture<'a, Result<Option<u64>, StorageError>> {
        self.inner.remove_partial(key)
    }

    fn put_small<'a>(
        &'a self,
        path: &'a RemotePath,
        data: Bytes,
        options: SmallOptions,
        commit: Commit,
    ) -> BoxFuture<'a, Result<SmallPut, StorageError>> {
        let put = self.inner.put_small(path, data, options, commit);
        Box::pin(time(&self.metrics, storage_op::COMMIT, put))
    }

    fn sweep_partials(&self, max_age: Duration) -> BoxFuture<'_, Result<Footprint, StorageError>> {
        self.inner.sweep_partials(max_age)
    }

    fn usage(&self, limit: Duration) -> BoxFuture<'_, Result<Footprint, StorageError>> {
        self.inner.usage(limit)
    }

    fn space(&self) -> BoxFuture<'_, Result<Option<Space>, StorageError>> {
        self.inner.space()
    }

    fn flush_durability(
        &self,
        staged: Vec<Staged>,
    ) -> BoxFuture<'_, Vec<Result<Committed, StorageError>>> {
        let flushed = self.inner.flush_durability(staged);
        Box::pin(time(&self.metrics, storage_op::FLUSH, flushed))
    }

    fn small_puts_in_flight(&self) -> usize {
        self.inner.small_puts_in_flight()
    }
}

impl Timed {
    fn wrap(&self, upload: Box<dyn Upload>) -> Box<dyn Upload> {
        Box::new(TimedUpload {
            inner: upload,
            metrics: Arc::clone(&self.metrics),
        })
    }
}

/// An upload of a [`Timed`] store: its commit is timed.
struct TimedUpload {
    inner: Box<dyn Upload>,
    metrics: Arc<Metrics>,
}

impl Upload for TimedUpload {
    fn written(&self) -> u64 {
        self.inner.written()
    }

    fn replaces(&self) -> Footprint {
        self.inner.replaces()
    }

    fn superseded(&self) -> Option<u64> {
        self.inner.superseded()
    }

    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.write(chunk)
    }

    fn finish(&mut self) -> BoxFuture<'_, Result<Sha256Digest, StorageError>> {
        self.inner.finish()
    }

    fn commit(self: Box<Self>, commit: Commit) -> BoxFuture<'static, Result<Landed, StorageError>> {
        let TimedUpload { inner, metrics } = *self;
        let committed = inner.commit(commit);
        Box::pin(async move { time(&metrics, storage_op::COMMIT, committed).await })
    }

    fn keep_partial(
        self: Box<Self>,
        key: PartialKey,
    ) -> BoxFuture<'static, Result<Footprint, StorageError>> {
        self.inner.keep_partial(key)
    }

    fn keep(self: Box<Self>, key: PartialKey) -> BoxFuture<'static, Result<Kept, StorageError>> {
        self.inner.keep(key)
    }

    fn mark(&mut self) -> BoxFuture<'_, Result<Mark, StorageError>> {
        self.inner.mark()
    }

    fn rewind(&mut self, mark: Mark) -> BoxFuture<'_, Result<(), StorageError>> {
        self.inner.rewind(mark)
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        self.inner.abort()
    }
}

/// A piece of shared state whose calls are timed into `ferry_database_seconds`: the usage
/// ledger, name locks, digest records and kept partials a cluster keeps in PostgreSQL, where
/// each call is a round trip a transfer waits for.
struct TimedState<T: ?Sized> {
    inner: Arc<T>,
    metrics: Arc<Metrics>,
}

impl<T: ?Sized> TimedState<T> {
    fn time<'a, O: Send + 'a>(&'a self, op: &'static str, f: BoxFuture<'a, O>) -> BoxFuture<'a, O> {
        let metrics = &self.metrics;
        Box::pin(async move {
            let started = std::time::Instant::now();
            let out = f.await;
            metrics.database(op, started.elapsed());
            out
        })
    }
}

impl crate::state::UsageLedger for TimedState<dyn crate::state::UsageLedger> {
    fn usage(
        &self,
        home: &str,
    ) -> BoxFuture<'_, Result<Option<crate::state::Usage>, crate::state::StateError>> {
        self.time("usage", self.inner.usage(home))
    }

    fn claim_count(
        &self,
        home: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<crate::state::Counting, crate::state::StateError>> {
        self.time("claim_count", self.inner.claim_count(home, ttl))
    }

    fn set_counted(
        &self,
        claim: crate::state::CountClaim,
        used: crate::domain::Footprint,
    ) -> BoxFuture<'_, Result<(), crate::state::StateError>> {
        self.time("set_counted", self.inner.set_counted(claim, used))
    }

    fn abandon_count(&self, claim: crate::state::CountClaim) {
        self.inner.abandon_count(claim);
    }

    fn forget(&self, home: &str) -> BoxFuture<'_, Result<(), crate::state::StateError>> {
        self.time("forget", self.inner.forget(home))
    }

    fn join(&self, home: &str) -> BoxFuture<'_, Result<(), crate::state::StateError>> {
        self.time("join", self.inner.join(home))
    }

    fn leave(&self, home: &str) {
        self.inner.leave(home);
    }

    fn take_recount(
        &self,
        user: &str,
        home: &str,
    ) -> BoxFuture<'_, Result<bool, crate::state::StateError>> {
        self.time("take_recount", self.inner.take_recount(user, home))
    }

    fn reserve(
        &self,
        home: &str,
        quota: crate::domain::Quota,
        file_size: u64,
        need: crate::domain::Footprint,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<crate::state::ReservationId, crate::state::StateError>> {
        self.time(
            "reserve",
            self.inner.reserve(home, quota, file_size, need, ttl),
        )
    }

    fn grow(
        &self,
        id: crate::state::ReservationId,
        more: crate::domain::Footprint,
    ) -> BoxFuture<'_, Result<(), crate::state::StateError>> {
        self.time("grow", self.inner.grow(id, more))
    }

    fn renew(
        &self,
        id: crate::state::ReservationId,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), crate::state::StateError>> {
        self.time("renew", self.inner.renew(id, ttl))
    }

    fn commit(
        &self,
        home: &str,
        id: crate::state::ReservationId,
        added: crate::domain::Footprint,
        removed: crate::domain::Footprint,
    ) -> BoxFuture<'_, Result<(), crate::state::StateError>> {
        self.time("commit", self.inner.commit(home, id, added, removed))
    }

    fn release(
        &self,
        id: crate::state::ReservationId,
    ) -> BoxFuture<'_, Result<(), crate::state::StateError>> {
        self.time("release", self.inner.release(id))
    }

    fn release_soon(&self, id: crate::state::ReservationId) {
        self.inner.release_soon(id);
    }

    fn adjust(
        &self,
        home: &str,
        added: crate::domain::Footprint,
        removed: crate::domain::Footprint,
    ) -> BoxFuture<'_, Result<(), crate::state::StateError>> {
        self.time("adjust", self.inner.adjust(home, added, removed))
    }
}

impl Metrics {
    /// `ledger` with its calls timed into `ferry_database_seconds` (for a ledger in a
    /// database; the in-memory one answers at once and is not worth a histogram).
    pub fn timed_ledger(
        self: &Arc<Self>,
        ledger: Arc<dyn crate::state::UsageLedger>,
    ) -> Arc<dyn crate::state::UsageLedger> {
        Arc::new(TimedState {
            inner: ledger,
            metrics: Arc::clone(self),
        })
    }

    /// `locks` with their calls timed into `ferry_database_seconds`.
    pub fn timed_name_locks(
        self: &Arc<Self>,
        locks: Arc<dyn crate::state::NameLocks>,
    ) -> Arc<dyn crate::state::NameLocks> {
        Arc::new(TimedState {
            inner: locks,
            metrics: Arc::clone(self),
        })
    }

    /// `digests` with their calls timed into `ferry_database_seconds`.
    pub fn timed_digests(
        self: &Arc<Self>,
        digests: Arc<dyn crate::state::digests::DigestIndex>,
    ) -> Arc<dyn crate::state::digests::DigestIndex> {
        Arc::new(TimedState {
            inner: digests,
            metrics: Arc::clone(self),
        })
    }

    /// `partials` with their calls timed into `ferry_database_seconds`.
    pub fn timed_partials(
        self: &Arc<Self>,
        partials: Arc<dyn crate::state::PartialIndex>,
    ) -> Arc<dyn crate::state::PartialIndex> {
        Arc::new(TimedState {
            inner: partials,
            metrics: Arc::clone(self),
        })
    }
}

impl crate::state::NameLocks for TimedState<dyn crate::state::NameLocks> {
    fn try_lock(
        &self,
        home: &str,
        name: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Option<crate::state::NameLockId>, crate::state::StateError>> {
        self.time("name_lock", self.inner.try_lock(home, name, ttl))
    }

    fn renew(
        &self,
        id: crate::state::NameLockId,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<(), crate::state::StateError>> {
        self.time("name_renew", self.inner.renew(id, ttl))
    }

    fn unlock(
        &self,
        id: crate::state::NameLockId,
    ) -> BoxFuture<'_, Result<(), crate::state::StateError>> {
        self.time("name_unlock", self.inner.unlock(id))
    }

    fn unlock_soon(&self, id: crate::state::NameLockId) {
        self.inner.unlock_soon(id);
    }
}

impl crate::state::digests::DigestIndex for TimedState<dyn crate::state::digests::DigestIndex> {
    fn put(
        &self,
        key: &str,
        etag: &str,
        sha256: [u8; 32],
    ) -> BoxFuture<'_, Result<(), crate::state::StateError>> {
        self.time("digest_put", self.inner.put(key, etag, sha256))
    }

    fn get(
        &self,
        key: &str,
        etag: &str,
    ) -> BoxFuture<'_, Result<Option<[u8; 32]>, crate::state::StateError>> {
        self.time("digest_get", self.inner.get(key, etag))
    }

    fn forget(&self, key: &str) -> BoxFuture<'_, Result<(), crate::state::StateError>> {
        self.time("digest_forget", self.inner.forget(key))
    }
}

impl crate::state::PartialIndex for TimedState<dyn crate::state::PartialIndex> {
    fn put(
        &self,
        key: &str,
        record: crate::state::PartialRecord,
    ) -> BoxFuture<'_, Result<Option<crate::state::PartialRecord>, crate::state::StateError>> {
        self.time("partial_put", self.inner.put(key, record))
    }

    fn get(
        &self,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<crate::state::PartialRecord>, crate::state::StateError>> {
        self.time("partial_get", self.inner.get(key))
    }

    fn take(
        &self,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<crate::state::PartialRecord>, crate::state::StateError>> {
        self.time("partial_take", self.inner.take(key))
    }

    fn kept_before(
        &self,
        home: &str,
        before: std::time::SystemTime,
    ) -> BoxFuture<'_, Result<Vec<(String, crate::state::PartialRecord)>, crate::state::StateError>>
    {
        self.time("partial_list", self.inner.kept_before(home, before))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the series `name{labels}` in `text`, 0 if absent.
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.parse().unwrap())
    }

    #[test]
    fn counts_show_in_the_text_under_their_names() {
        let m = Arc::new(Metrics::new());
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let build = format!(
            "ferry_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&text, &build), 1.0, "{text}");
        assert_eq!(
            value(
                &text,
                r#"ferry_transfers_total{direction="upload",result="ok"}"#
            ),
            0.0
        );
        assert!(
            text.contains(r#"ferry_logins_total{result="failed"} 0"#),
            "{text}"
        );
        m.audited("put", "ok", Some(10));
        m.audited("get", "disconnected", Some(4));
        m.audited("get", "not_found", None);
        m.audited("mkdir", "ok", None);
        m.error("auth_failed");
        m.error("made_up_code");
        m.login(false);
        m.penalty("authfail");
        m.refused(Refusal::PerSource);
        m.storage(storage_op::COMMIT, Duration::from_millis(3));
        m.database("login", Duration::from_millis(1));
        let live = m.session(Protocol::Ferry);
        m.set_connections(2);
        let text = m.encode();
        for (series, want) in [
            (
                r#"ferry_transfers_total{direction="upload",result="ok"}"#,
                1.0,
            ),
            (
                r#"ferry_transfers_total{direction="download",result="interrupted"}"#,
                1.0,
            ),
            (
                r#"ferry_transfers_total{direction="download",result="error"}"#,
                1.0,
            ),
            (r#"ferry_transfer_bytes_total{direction="upload"}"#, 10.0),
            (r#"ferry_transfer_bytes_total{direction="download"}"#, 4.0),
            (r#"ferry_errors_total{code="auth_failed"}"#, 1.0),
            (r#"ferry_errors_total{code="other"}"#, 1.0),
            (r#"ferry_logins_total{result="failed"}"#, 1.0),
            (r#"ferry_penalties_total{reason="authfail"}"#, 1.0),
            (
                r#"ferry_refused_connections_total{reason="per_source"}"#,
                1.0,
            ),
            (r#"ferry_storage_seconds_count{operation="commit"}"#, 1.0),
            (r#"ferry_database_seconds_count{operation="login"}"#, 1.0),
            (r#"ferry_sessions{protocol="ferry"}"#, 1.0),
            ("ferry_connections", 2.0),
        ] {
            assert_eq!(value(&text, series), want, "{series} in\n{text}");
        }
        drop(live);
        assert_eq!(
            value(&m.encode(), r#"ferry_sessions{protocol="ferry"}"#),
            0.0
        );
    }

    #[test]
    fn every_code_of_the_wire_is_a_known_label() {
        use crate::protocol::ErrorCode::*;
        for code in [
            BadRequest,
            UnsupportedVersion,
            AuthFailed,
            AuthRequired,
            NotFound,
            AlreadyExists,
            PermissionDenied,
            NotADirectory,
            IsADirectory,
            DirectoryNotEmpty,
            InvalidPath,
            IntegrityMismatch,
            SizeMismatch,
            TooLarge,
            QuotaExceeded,
            NoSpace,
            Busy,
            Timeout,
            Cancelled,
            Internal,
        ] {
            assert_eq!(
                error_code(code.as_str()),
                code.as_str(),
                "add {code} to ERROR_CODES"
            );
        }
    }
}
