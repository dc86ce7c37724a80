//! Resumable uploads: tus 1.0 (core, creation, checksum with sha256, termination,
//! expiration), for account holders (`/tus/`) and drop links (`/d/<token>/tus/`).
//!
//! Why tus and not the IETF resumable-upload draft: docs/HTTP.md ("Resumable uploads").
//!
//! An upload is a record in [`UploadSessions`] (owner, target, size, declared digest, kept
//! partial) and, while it is in use, a live core upload parked on this node, so each `PATCH`
//! writes straight on. Every request must authenticate as the record's owner (the same user,
//! or the same drop link); the id alone grants nothing, and anyone else's id is answered as
//! an unknown one.
//!
//! The bytes are the core's verified upload: each `PATCH` marks where the upload stood; a
//! chunk whose `Upload-Checksum` does not match, or that was cut while a checksum was
//! promised, is rewound to the mark (460, and the offset does not move). A cut chunk without
//! a checksum keeps what came, as tus expects. The whole file's digest (`Repr-Digest` on the
//! final `PATCH`, or `sha256` in `Upload-Metadata`) is checked before the commit; without one
//! the file lands with the digest the server computed, and the receipt says `server-only`.
//!
//! A parked upload unused for a while (or still parked at shutdown) is kept as a partial,
//! with its length and digest in the record; the next `PATCH` takes it up through the core's
//! resume, which checks that digest again, so a partial damaged on disk is refused (409, and
//! the upload starts again from 0), never continued.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use sha2::Digest as _;

use super::auth::Account;
use super::files::{self, BodyError, value};
use super::router::{Body, empty, error, full};
use super::{Conn, parse, status};
use crate::domain::hex_digest;
use crate::metrics::{Direction, Outcome};
use crate::server::Server;
use crate::service::{CoreError, Expect, Put, PutRequest, Sealing, Upload};
use crate::state::links::{LinkId, LinkRefused, LinkStore, LinkUse};
use crate::state::uploads::{
    CREATED_TTL, MemoryUploads, UPLOAD_TTL, UploadOwner, UploadRecord, UploadSessions,
    UploadsError, valid_id,
};
use crate::storage::{Durability, RemotePath, Sha256Digest};

/// The protocol version we speak (and the only one).
pub const TUS_VERSION: &str = "1.0.0";
/// The extensions we implement. No `creation-with-upload`, no `creation-defer-length`, no
/// `concatenation`.
pub const TUS_EXTENSIONS: &str = "creation,checksum,termination,expiration";

/// Live uploads parked on this node at once, per owner (for a drop link: per link and
/// sender address) and in all: each may hold a writer thread of the blocking pool. Past it a
/// creation (or a resume of a kept upload) gets 429.
pub const MAX_PARKED_PER_OWNER: usize = 16;
pub const MAX_PARKED: usize = 128;

/// A parked upload unused this long is kept as a partial (at most the idle timeout, and
/// well inside the quota reservation's lease, which only writes renew).
const PARK_IDLE_MAX: Duration = Duration::from_secs(120);

/// How long a node holds an upload in shared records ([`UploadSessions::hold`]) unless it
/// renews the hold: its keeper renews the holds of the uploads live on it (parked or
/// streaming) every third of this, until they are kept as partials and the holds given up.
/// So an upload whose node died is taken up through another node within this time (the page
/// retries a 409 `upload_busy` for about two minutes).
const HOLD_LEASE: Duration = Duration::from_secs(60);

/// How long a request waits for another request on the same upload before it answers 409.
const BUSY_WAIT: Duration = Duration::from_secs(1);

static TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
static UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
static UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
static UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");
static UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
static UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
static UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
static FERRY_RECEIPT: HeaderName = HeaderName::from_static("ferry-receipt");

/// What the tus routes keep across requests: the records and this node's parked uploads.
#[derive(Default)]
pub struct TusState {
    records: OnceLock<Arc<dyn UploadSessions>>,
    /// This node's name as a holder of uploads in shared records (random, per start).
    node: OnceLock<String>,
    parked: Mutex<HashMap<String, Arc<Parked>>>,
    keeper: AtomicBool,
    /// The hold lease in milliseconds when not [`HOLD_LEASE`] (0), see [`set_hold_lease`].
    hold_lease_ms: std::sync::atomic::AtomicU64,
    /// When the keeper last renewed this node's holds.
    holds_renewed: Mutex<Option<Instant>>,
}

/// Sets how long `server` holds an upload unless it renews the hold (tests: a short lease
/// shows the keeper renewing it).
pub fn set_hold_lease(server: &Arc<Server>, lease: Duration) {
    let ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
    server.web.tus.hold_lease_ms.store(ms, Ordering::Release);
}

impl std::fmt::Debug for TusState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TusState").finish_non_exhaustive()
    }
}

/// One upload's place on this node. The lock is held by the request working on it.
struct Parked {
    owner: UploadOwner,
    /// Whose place it holds in the caps: the owner, and for a drop link (whose senders are
    /// strangers to each other) also the address that last took it up, so no one sender can
    /// take a link's every place.
    holder: Mutex<Option<std::net::IpAddr>>,
    slot: Arc<tokio::sync::Mutex<Live>>,
    /// The offset the last request acknowledged (what `HEAD` says while a `PATCH` runs).
    offset: AtomicU64,
    /// The slot holds (or is about to hold) a live upload: counted in the parked caps.
    live: AtomicBool,
    last: Mutex<Instant>,
}

#[derive(Default)]
struct Live {
    upload: Option<Upload>,
    /// A drop link's use, reserved at creation and renewed as data comes.
    link_use: Option<LinkUse>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TusState {
    /// The records: written through to `.ferry-tus` under the data root (a reserved name no
    /// user or client can name), so kept uploads survive a restart; in memory only if that
    /// directory cannot be used.
    fn records(&self, server: &Server) -> Arc<dyn UploadSessions> {
        Arc::clone(self.records.get_or_init(|| {
            let dir = server.root().join(".ferry-tus");
            match MemoryUploads::persisted(&dir, SystemTime::now()) {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    tracing::error!(error = %e, dir = %dir.display(),
                        "resumable upload records cannot be kept on disk; kept in memory");
                    Arc::new(MemoryUploads::new())
                }
            }
        }))
    }

    /// Uses `store` for the records instead of the directory under the data root (nodes that
    /// share a database share them, so an upload is resumed through any node). Set before
    /// the first tus request: `false` (and nothing changed) when the records were in use.
    pub(crate) fn set_records(&self, store: Arc<dyn UploadSessions>) -> bool {
        self.records.set(store).is_ok()
    }

    /// How long a hold of this node lives unless renewed.
    fn hold_lease(&self) -> Duration {
        match self.hold_lease_ms.load(Ordering::Acquire) {
            0 => HOLD_LEASE,
            ms => Duration::from_millis(ms),
        }
    }

    /// This node as a holder of uploads ([`UploadSessions::hold`]).
    fn node(&self) -> &str {
        self.node.get_or_init(crate::state::uploads::new_id)
    }

    fn entry(&self, id: &str, owner: &UploadOwner) -> Arc<Parked> {
        Arc::clone(lock(&self.parked).entry(id.to_string()).or_insert_with(|| {
            Arc::new(Parked {
                owner: owner.clone(),
                holder: Mutex::new(None),
                slot: Arc::default(),
                offset: AtomicU64::new(0),
                live: AtomicBool::new(false),
                last: Mutex::new(Instant::now()),
            })
        }))
    }

    fn existing(&self, id: &str) -> Option<Arc<Parked>> {
        lock(&self.parked).get(id).cloned()
    }

    fn forget(&self, id: &str) {
        lock(&self.parked).remove(id);
    }

    /// Claims a live place for `entry`, taken up from `peer`, under the caps; false when they
    /// are full.
    fn claim_live(&self, entry: &Parked, peer: std::net::IpAddr) -> bool {
        let table = lock(&self.parked);
        if entry.live.load(Ordering::Acquire) {
            return true;
        }
        let holder = matches!(entry.owner, UploadOwner::Link(_)).then_some(peer);
        let live: Vec<&Arc<Parked>> = table
            .values()
            .filter(|p| p.live.load(Ordering::Acquire))
            .collect();
        let mine = live
            .iter()
            .filter(|p| p.owner == entry.owner && *lock(&p.holder) == holder)
            .count();
        if live.len() >= MAX_PARKED || mine >= MAX_PARKED_PER_OWNER {
            return false;
        }
        *lock(&entry.holder) = holder;
        entry.live.store(true, Ordering::Release);
        true
    }

    /// Starts the task that keeps idle parked uploads as partials, once per server.
    fn start_keeper(&self, server: &Arc<Server>) {
        if self.keeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(server);
        tokio::spawn(keeper(weak));
    }
}

/// Every second: parked uploads idle past their time become kept partials; every ten,
/// expired records go (a live upload of one is dropped; a kept partial of one is left to
/// the hourly sweep of stale partials, which removes it after the partial TTL).
async fn keeper(server: Weak<Server>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    loop {
        tick.tick().await;
        let Some(server) = server.upgrade() else {
            return;
        };
        let idle = server.limits().idle_timeout.min(PARK_IDLE_MAX);
        keep_idle(&server, Some(idle), Duration::ZERO).await;
        renew_holds(&server).await;
        n += 1;
        if n.is_multiple_of(10) {
            let tus = &server.web.tus;
            let records = tus.records(&server);
            if let Ok(gone) = records.take_expired(SystemTime::now()).await {
                for (id, _) in gone {
                    if let Some(p) = tus.existing(&id) {
                        tus.forget(&id);
                        if let Ok(mut live) = p.slot.clone().try_lock_owned() {
                            p.live.store(false, Ordering::Release);
                            if let Some(u) = live.upload.take() {
                                u.abort().await;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Renews the holds of the uploads live on this node (parked, or streaming a PATCH) once a
/// third of the hold lease has passed since the last renewal. A hold found taken by another
/// node (this node could not renew it in time) is logged: that node's requests now win, and
/// the upload here ends at its next write or when it is kept.
async fn renew_holds(server: &Arc<Server>) {
    let tus = &server.web.tus;
    let lease = tus.hold_lease();
    {
        let mut renewed = lock(&tus.holds_renewed);
        if renewed.is_some_and(|at| at.elapsed() < lease / 3) {
            return;
        }
        *renewed = Some(Instant::now());
    }
    let live: Vec<String> = lock(&tus.parked)
        .iter()
        .filter(|(_, p)| p.live.load(Ordering::Acquire))
        .map(|(k, _)| k.clone())
        .collect();
    if live.is_empty() {
        return;
    }
    let records = tus.records(server);
    for id in live {
        match records.hold(&id, tus.node(), lease).await {
            Ok(true) | Err(UploadsError::NotFound) => {}
            Ok(false) => {
                tracing::warn!(upload = %id, "tus: another node took up an upload live here")
            }
            Err(e) => tracing::warn!(upload = %id, error = %e, "tus: a hold was not renewed"),
        }
    }
}

/// Keeps parked uploads idle for `idle` (all with `None`) as partials, waiting up to `wait`
/// for one a request is using.
async fn keep_idle(server: &Arc<Server>, idle: Option<Duration>, wait: Duration) {
    let tus = &server.web.tus;
    let parked: Vec<(String, Arc<Parked>)> = lock(&tus.parked)
        .iter()
        .filter(|(_, p)| p.live.load(Ordering::Acquire))
        .map(|(k, p)| (k.clone(), Arc::clone(p)))
        .collect();
    if parked.is_empty() {
        return;
    }
    let records = tus.records(server);
    for (id, p) in parked {
        if idle.is_some_and(|idle| lock(&p.last).elapsed() < idle) {
            continue;
        }
        let slot = Arc::clone(&p.slot);
        let live = if wait.is_zero() {
            slot.try_lock_owned().ok()
        } else {
            tokio::time::timeout(wait, slot.lock_owned()).await.ok()
        };
        let Some(mut live) = live else {
            continue;
        };
        let Some(upload) = live.upload.take() else {
            continue;
        };
        live.link_use = None;
        let kept = upload.keep_as_partial().await;
        let kept = kept.map(|k| (k.len, k.sha256));
        // The record first, so a HEAD never sees neither the live offset nor the kept one.
        if let Err(e) = records.set_kept(&id, kept).await {
            tracing::warn!(error = %e, "a kept upload's record could not be updated");
        }
        // Kept: any node may take it up now.
        let _ = records.release(&id, tus.node()).await;
        p.offset.store(kept.map_or(0, |k| k.0), Ordering::Release);
        p.live.store(false, Ordering::Release);
        tracing::debug!(upload = %id, kept = kept.map_or(0, |k| k.0), "parked upload kept");
    }
}

/// At shutdown: every parked upload becomes a kept partial, so a restart resumes it.
pub async fn keep_parked(server: &Arc<Server>) {
    keep_idle(server, None, server.limits().close_timeout).await;
}

/// Who a tus request is for, and where its URLs live.
pub struct Door {
    pub acct: Account,
    pub owner: UploadOwner,
    /// `/tus/` or `/d/<token>/tus/`.
    pub base: String,
    /// The drop link's store and id, for one.
    pub link: Option<(Arc<dyn LinkStore>, LinkId)>,
}

/// `/tus/…` for account holders: `rest` holds the segments after `tus`.
pub async fn account_route(
    conn: &Arc<Conn>,
    req: Request<Incoming>,
    rest: &[String],
) -> Response<Body> {
    if req.method() == Method::OPTIONS {
        return options();
    }
    let acct = match super::auth::account(conn, &req).await {
        Ok(a) => a,
        Err(r) => {
            let (head, body) = req.into_parts();
            return files::drain_then(body, &head.headers, r).await;
        }
    };
    let door = Door {
        owner: UploadOwner::User(acct.user.clone()),
        acct,
        base: "/tus/".to_string(),
        link: None,
    };
    route(conn, req, door, rest).await
}

/// `OPTIONS`: what we speak. Needs no credentials (it says nothing about anyone).
pub fn options() -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(&TUS_RESUMABLE, HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    h.insert("tus-checksum-algorithm", HeaderValue::from_static("sha256"));
    r
}

/// The tus routes below `door.base`, for an authenticated request.
pub async fn route(
    conn: &Arc<Conn>,
    req: Request<Incoming>,
    door: Door,
    rest: &[String],
) -> Response<Body> {
    let method = req.method().clone();
    if method == Method::OPTIONS {
        return options();
    }
    let (head, body) = req.into_parts();
    let mut resp = if !speaks_tus(&head.headers) && method != Method::GET {
        let mut r = error(
            StatusCode::PRECONDITION_FAILED,
            "tus_version",
            "this server speaks tus 1.0.0 (Tus-Resumable: 1.0.0)",
        );
        r.headers_mut()
            .insert("tus-version", HeaderValue::from_static(TUS_VERSION));
        files::drain_then(body, &head.headers, r).await
    } else {
        let ids: Vec<&str> = rest.iter().map(String::as_str).collect();
        match (&method, ids.as_slice()) {
            (&Method::POST, []) => create(conn, &head.headers, body, &door).await,
            (&Method::HEAD, [id]) => {
                with_body_drained(body, &head.headers, head_of(conn, &door, id).await).await
            }
            (&Method::PATCH, [id]) => patch(conn, head.headers, body, door, id.to_string()).await,
            (&Method::DELETE, [id]) => {
                with_body_drained(body, &head.headers, delete(conn, &door, id).await).await
            }
            (&Method::GET, [id, "receipt"]) => receipt(conn, &door, id).await,
            (_, []) => method_not_allowed("OPTIONS, POST"),
            (_, [_]) => method_not_allowed("OPTIONS, HEAD, PATCH, DELETE"),
            (_, [_, "receipt"]) => method_not_allowed("GET"),
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such page"),
        }
    };
    if method == Method::HEAD {
        // No body for a HEAD, whatever the answer (h2 resets a stream that gets one).
        let (mut parts, _) = resp.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_TYPE);
        resp = Response::from_parts(parts, empty());
    }
    resp.headers_mut()
        .insert(&TUS_RESUMABLE, HeaderValue::from_static(TUS_VERSION));
    resp
}

async fn with_body_drained(
    body: Incoming,
    headers: &HeaderMap,
    resp: Response<Body>,
) -> Response<Body> {
    files::drain_then(body, headers, resp).await
}

fn speaks_tus(h: &HeaderMap) -> bool {
    h.get(&TUS_RESUMABLE)
        .is_some_and(|v| v.as_bytes() == TUS_VERSION.as_bytes())
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed here",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn not_found() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not_found", "no such upload")
}

fn bad(code: &str, message: &str) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, code, message)
}

fn unavailable(e: &UploadsError) -> Response<Body> {
    match e {
        UploadsError::Full => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_uploads",
                "too many resumable uploads at once; finish or cancel one first",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
            r
        }
        UploadsError::NotFound => not_found(),
        e => {
            tracing::error!(error = %e, "upload records failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the server cannot keep this upload right now; try again later",
            )
        }
    }
}

fn busy_upload() -> Response<Body> {
    error(
        StatusCode::CONFLICT,
        "upload_busy",
        "another request is working on this upload",
    )
}

fn too_many_parked() -> Response<Body> {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "busy",
        "too many uploads in progress at once; try again when one has finished",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

fn expires_header(h: &mut HeaderMap, expires: SystemTime) {
    let secs = expires
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Some(d) = files::http_date(i64::try_from(secs).unwrap_or(i64::MAX)) {
        h.insert(&UPLOAD_EXPIRES, value(&d));
    }
}

/// The live record of `id` if it is `door`'s; anyone else's is answered as unknown.
async fn record_of(
    conn: &Conn,
    door: &Door,
    id: &str,
) -> Result<(Arc<dyn UploadSessions>, UploadRecord), Response<Body>> {
    if !valid_id(id) {
        return Err(not_found());
    }
    let records = conn.server.web.tus.records(&conn.server);
    match records.get(id, SystemTime::now()).await {
        Ok(Some(r)) if r.owner == door.owner => Ok((records, r)),
        Ok(_) => Err(not_found()),
        Err(e) => Err(unavailable(&e)),
    }
}

/// The target an upload's metadata names: `filename` (UTF-8). For an account it may be a
/// path in the home; through a drop link only a name (it lands in the link's folder).
fn target_of(meta: &[(String, Vec<u8>)], link: bool) -> Result<RemotePath, Response<Body>> {
    let Some((_, raw)) = meta.iter().find(|(k, _)| k == "filename") else {
        return Err(bad(
            "invalid_path",
            "name the file: Upload-Metadata: filename <base64>",
        ));
    };
    let Ok(name) = std::str::from_utf8(raw) else {
        return Err(bad("invalid_path", "the file name is not UTF-8"));
    };
    let path =
        RemotePath::parse(name).map_err(|e| bad("invalid_path", &format!("invalid path: {e}")))?;
    if path.is_root() || (link && path.components().len() != 1) {
        return Err(bad(
            "invalid_path",
            "a drop link takes a file name, not a path",
        ));
    }
    Ok(path)
}

/// The `sha256` of `Upload-Metadata`: 32 bytes, or their 64 hex digits.
fn declared_sha256(meta: &[(String, Vec<u8>)]) -> Result<Option<Sha256Digest>, Response<Body>> {
    let Some((_, raw)) = meta.iter().find(|(k, _)| k == "sha256") else {
        return Ok(None);
    };
    if let Ok(d) = <[u8; 32]>::try_from(raw.as_slice()) {
        return Ok(Some(d));
    }
    let text = std::str::from_utf8(raw).unwrap_or("");
    if crate::transfer::is_hex_digest(&text.to_ascii_lowercase()) {
        let mut d = [0u8; 32];
        if hex::decode_to_slice(text, &mut d).is_ok() {
            return Ok(Some(d));
        }
    }
    Err(bad(
        "bad_digest",
        "the sha256 metadata is neither 32 bytes nor 64 hex digits",
    ))
}

/// What a creation asks for: the size, the target and the declared digest.
fn creation(
    headers: &HeaderMap,
    link: bool,
) -> Result<(u64, RemotePath, Option<Sha256Digest>), Response<Body>> {
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if headers.contains_key(&UPLOAD_DEFER_LENGTH) {
        return Err(bad(
            "length_required",
            "Upload-Defer-Length is not supported: send Upload-Length",
        ));
    }
    let Some(size) = text(&UPLOAD_LENGTH).and_then(parse::parse_u64_header) else {
        return Err(bad("length_required", "a creation needs Upload-Length"));
    };
    if text(&header::CONTENT_LENGTH)
        .and_then(parse::parse_u64_header)
        .is_some_and(|n| n > 0)
    {
        return Err(bad(
            "bad_request",
            "creation-with-upload is not supported: send the data with PATCH",
        ));
    }
    let meta = match text(&UPLOAD_METADATA).map(parse::parse_upload_metadata) {
        None => Vec::new(),
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(bad("bad_request", &format!("Upload-Metadata: {e}"))),
    };
    let path = target_of(&meta, link)?;
    let expected = declared_sha256(&meta)?;
    Ok((size, path, expected))
}

/// `POST`: creates an upload. Its room is reserved now (over quota fails here), and the live
/// upload is parked for the first `PATCH`.
async fn create(
    conn: &Arc<Conn>,
    headers: &HeaderMap,
    body: Incoming,
    door: &Door,
) -> Response<Body> {
    let (size, path, expected) = match creation(headers, door.link.is_some()) {
        Ok(c) => c,
        Err(r) => return files::drain_then(body, headers, r).await,
    };
    drop(body);
    let tus = &conn.server.web.tus;
    tus.start_keeper(&conn.server);
    let records = tus.records(&conn.server);
    let id = crate::state::uploads::new_id();
    let now = SystemTime::now();
    let record = UploadRecord {
        owner: door.owner.clone(),
        target: path.to_string(),
        size,
        expected,
        kept: None,
        expires: now + CREATED_TTL,
        receipt: None,
    };
    let entry = tus.entry(&id, &door.owner);
    if !tus.claim_live(&entry, conn.peer.ip()) {
        tus.forget(&id);
        return too_many_parked();
    }
    let give_up = |entry: &Parked| {
        entry.live.store(false, Ordering::Release);
        tus.forget(&id);
    };
    if let Err(e) = records.create(&id, record.clone(), now).await {
        give_up(&entry);
        return unavailable(&e);
    }
    // Its live upload opens here: held by this node until it is kept as a partial.
    match records.hold(&id, tus.node(), tus.hold_lease()).await {
        Ok(true) => {}
        held => {
            give_up(&entry);
            let _ = records.remove(&id).await;
            return match held {
                Err(e) => unavailable(&e),
                _ => busy_upload(),
            };
        }
    }
    // A drop link's use: reserved now, under the link's own limits.
    let link_use = match &door.link {
        Some((store, link)) => {
            match LinkUse::reserve(store, *link, size, files::LINK_USE_LEASE).await {
                Ok(u) => Some(u),
                Err(r) => {
                    give_up(&entry);
                    let _ = records.remove(&id).await;
                    return files::link_refused(&r);
                }
            }
        }
        None => None,
    };
    let request = PutRequest {
        size,
        replace: false,
        resume: None,
    };
    let upload = match door
        .acct
        .home
        .begin_upload_in_slot(&path, request, &id)
        .await
    {
        Ok(u) => u,
        Err(e) => {
            give_up(&entry);
            let _ = records.remove(&id).await;
            return status::core_error(&e, conn.peer, &door.acct.user, "tus_create");
        }
    };
    {
        let mut live = entry.slot.lock().await;
        live.upload = Some(upload);
        live.link_use = link_use;
    }
    *lock(&entry.last) = Instant::now();
    tracing::info!(target: "ferry::audit", event = "tus_create", peer = %conn.peer,
        user = %door.acct.user, via = %door.acct.via, upload = %id,
        path = %crate::sanitize::for_log(&door.acct.shown(&path)), size,
        declared = expected.is_some());
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::CREATED;
    let h = r.headers_mut();
    h.insert(header::LOCATION, value(&format!("{}{id}", door.base)));
    h.insert(&UPLOAD_OFFSET, HeaderValue::from_static("0"));
    expires_header(h, record.expires);
    r
}

/// `HEAD`: where the upload stands.
async fn head_of(conn: &Arc<Conn>, door: &Door, id: &str) -> Response<Body> {
    let (_, record) = match record_of(conn, door, id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let tus = &conn.server.web.tus;
    let offset = if record.receipt.is_some() {
        record.size
    } else {
        match tus.existing(id) {
            Some(p) if p.live.load(Ordering::Acquire) => p.offset.load(Ordering::Acquire),
            _ => record.kept.map_or(0, |k| k.0),
        }
    };
    let mut r = Response::new(empty());
    let h = r.headers_mut();
    h.insert(&UPLOAD_OFFSET, value(&offset.to_string()));
    h.insert(&UPLOAD_LENGTH, value(&record.size.to_string()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    expires_header(h, record.expires);
    r
}

/// `GET …/<id>/receipt`: the receipt of a committed upload, until its record expires.
async fn receipt(conn: &Arc<Conn>, door: &Door, id: &str) -> Response<Body> {
    let (_, record) = match record_of(conn, door, id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let Some(json) = record.receipt else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this upload is not complete",
        );
    };
    let mut r = Response::new(full(json));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `DELETE`: cancels the upload; what it kept goes, and its room and link use come back.
async fn delete(conn: &Arc<Conn>, door: &Door, id: &str) -> Response<Body> {
    let (records, record) = match record_of(conn, door, id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let tus = &conn.server.web.tus;
    let entry = tus.entry(id, &door.owner);
    let Ok(mut live) = tokio::time::timeout(BUSY_WAIT, entry.slot.clone().lock_owned()).await
    else {
        return busy_upload();
    };
    // Gone first, so no request that waited for the lock finds it again.
    let removed = match records.remove(id).await {
        Ok(r) => r,
        Err(e) => return unavailable(&e),
    };
    tus.forget(id);
    entry.live.store(false, Ordering::Release);
    if let Some(u) = live.link_use.take()
        && let Err(e) = u.release().await
    {
        tracing::warn!(error = %e, "a cancelled upload's link use could not be given back");
    }
    if let Some(u) = live.upload.take() {
        u.abort().await;
    }
    if removed.and_then(|r| r.kept).is_some()
        && let Ok(path) = RemotePath::parse(&record.target)
        && let Err(e) = door.acct.home.discard_slot_partial(&path, id).await
    {
        tracing::warn!(error = %e, "a cancelled upload's partial could not be removed");
    }
    tracing::info!(target: "ferry::audit", event = "tus_delete", peer = %conn.peer,
        user = %door.acct.user, via = %door.acct.via, upload = %id);
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// `PATCH`: the next chunk. Runs in a task of its own, so a client that goes away mid-chunk
/// cannot drop the parked upload with it: the chunk ends as a cut body, and the upload is
/// parked again (or rewound).
async fn patch(
    conn: &Arc<Conn>,
    headers: HeaderMap,
    body: Incoming,
    door: Door,
    id: String,
) -> Response<Body> {
    let conn = Arc::clone(conn);
    let task = tokio::spawn(async move { patch_now(&conn, headers, body, door, id).await });
    match task.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "a tus PATCH failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the upload failed",
            )
        }
    }
}

async fn patch_now(
    conn: &Arc<Conn>,
    headers: HeaderMap,
    mut body: Incoming,
    door: Door,
    id: String,
) -> Response<Body> {
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let content_type_ok = text(&header::CONTENT_TYPE).is_some_and(|t| {
        t.split(';').next().is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/offset+octet-stream")
        })
    });
    if !content_type_ok {
        let r = error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_content_type",
            "a PATCH carries Content-Type: application/offset+octet-stream",
        );
        return files::drain_then(body, &headers, r).await;
    }
    let Some(offset) = text(&UPLOAD_OFFSET).and_then(parse::parse_u64_header) else {
        return files::drain_then(
            body,
            &headers,
            bad("bad_request", "a PATCH needs Upload-Offset"),
        )
        .await;
    };
    let checksum = match text(&UPLOAD_CHECKSUM).map(parse::parse_upload_checksum) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            return files::drain_then(
                body,
                &headers,
                bad("bad_checksum", &format!("Upload-Checksum: {e}")),
            )
            .await;
        }
    };
    // The whole file's digest (RFC 9530), meaningful on the final PATCH.
    let repr = match text(&files::REPR_DIGEST).map(parse::parse_digest_field) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(d))) => Some(d),
        Some(Err(_)) => {
            return files::drain_then(
                body,
                &headers,
                bad("bad_digest", "Repr-Digest: expected sha-256=:BASE64:"),
            )
            .await;
        }
    };
    let length = text(&header::CONTENT_LENGTH).and_then(parse::parse_u64_header);
    let (records, record) = match record_of(conn, &door, &id).await {
        Ok(r) => r,
        Err(r) => return files::drain_then(body, &headers, r).await,
    };
    if let (Some(r), Some(e)) = (repr, record.expected)
        && r != e
    {
        let r = bad(
            "bad_digest",
            "Repr-Digest differs from the sha256 declared at creation",
        );
        return files::drain_then(body, &headers, r).await;
    }
    let Ok(path) = RemotePath::parse(&record.target) else {
        return files::drain_then(body, &headers, not_found()).await;
    };
    if record.receipt.is_some() {
        // Complete already: a client that lost the final answer asks again with nothing.
        if offset == record.size && length.unwrap_or(0) == 0 {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            let h = r.headers_mut();
            h.insert(&UPLOAD_OFFSET, value(&record.size.to_string()));
            let jws = record
                .receipt
                .as_deref()
                .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
                .and_then(|v| v["jws"].as_str().map(str::to_owned));
            if let Some(jws) = jws {
                h.insert(&FERRY_RECEIPT, value(&jws));
            }
            return r;
        }
        return files::drain_then(body, &headers, offset_conflict(record.size)).await;
    }
    if length.is_some_and(|n| offset.checked_add(n).is_none_or(|end| end > record.size)) {
        let r = bad("size_mismatch", "the chunk goes past Upload-Length");
        return files::drain_then(body, &headers, r).await;
    }
    let tus = &conn.server.web.tus;
    tus.start_keeper(&conn.server);
    let entry = tus.entry(&id, &door.owner);
    let Ok(mut live) = tokio::time::timeout(BUSY_WAIT, entry.slot.clone().lock_owned()).await
    else {
        return files::drain_then(body, &headers, busy_upload()).await;
    };
    // The record again, under the lock: a DELETE or an expiry meanwhile ends here.
    let record = match records.get(&id, SystemTime::now()).await {
        Ok(Some(r)) if r.owner == door.owner => r,
        Ok(_) => return files::drain_then(body, &headers, not_found()).await,
        Err(e) => return files::drain_then(body, &headers, unavailable(&e)).await,
    };
    // One node at a time works on an upload (records shared by several nodes): held for
    // the length of a parked upload's life here, given up when it is kept as a partial.
    match records.hold(&id, tus.node(), tus.hold_lease()).await {
        Ok(true) => {}
        Ok(false) => return files::drain_then(body, &headers, busy_upload()).await,
        Err(UploadsError::NotFound) => {
            return files::drain_then(body, &headers, not_found()).await;
        }
        Err(e) => return files::drain_then(body, &headers, unavailable(&e)).await,
    }
    let Some(_slot) = conn.server.web.transfer_slot(&door.acct.user) else {
        return files::drain_then(body, &headers, files::too_many_transfers()).await;
    };
    let mut upload = match live.upload.take() {
        Some(u) => u,
        None => {
            if !tus.claim_live(&entry, conn.peer.ip()) {
                return files::drain_then(body, &headers, too_many_parked()).await;
            }
            let request = PutRequest {
                size: record.size,
                replace: false,
                resume: record.kept,
            };
            match door
                .acct
                .home
                .begin_upload_in_slot(&path, request, &id)
                .await
            {
                Ok(u) => {
                    entry.offset.store(u.written(), Ordering::Release);
                    u
                }
                Err(e) => {
                    entry.live.store(false, Ordering::Release);
                    let resume_failed = matches!(e, CoreError::ResumeRefused(_));
                    if resume_failed {
                        // The kept partial is gone or damaged: the upload starts again from
                        // 0 (a fresh start supersedes what is left of it).
                        tracing::warn!(target: "ferry::audit", event = "tus_resume",
                            peer = %conn.peer, user = %door.acct.user, via = %door.acct.via,
                            upload = %id, result = "refused", why = %e);
                        entry.offset.store(0, Ordering::Release);
                        let _ = records.set_kept(&id, None).await;
                        let r = offset_conflict_as(
                            0,
                            "resume_refused",
                            "the kept part of this upload is gone or damaged; send it again from offset 0",
                        );
                        return files::drain_then(body, &headers, r).await;
                    }
                    let r = status::core_error(&e, conn.peer, &door.acct.user, "tus_patch");
                    return files::drain_then(body, &headers, r).await;
                }
            }
        }
    };
    let park = |live: &mut Live, upload: Upload, entry: &Parked| {
        entry.offset.store(upload.written(), Ordering::Release);
        *lock(&entry.last) = Instant::now();
        live.upload = Some(upload);
    };
    if upload.written() != offset {
        let at = upload.written();
        park(&mut live, upload, &entry);
        return files::drain_then(body, &headers, offset_conflict(at)).await;
    }
    let mark = match upload.mark().await {
        Ok(m) => m,
        Err(e) => {
            entry.live.store(false, Ordering::Release);
            let _ = records.set_kept(&id, None).await;
            return status::core_error(&e, conn.peer, &door.acct.user, "tus_patch");
        }
    };
    let room = record.size - offset;
    let mut hasher = checksum.map(|_| sha2::Sha256::new());
    let streamed = stream(
        conn,
        &mut body,
        &mut upload,
        room,
        hasher.as_mut(),
        &mut live.link_use,
    )
    .await;
    let cut = match streamed {
        Ok(()) => None,
        Err(Chunk::Write(e)) => {
            // The core ended the upload: it starts again from 0.
            entry.live.store(false, Ordering::Release);
            entry.offset.store(0, Ordering::Release);
            let _ = records.set_kept(&id, None).await;
            return status::core_error(&e, conn.peer, &door.acct.user, "tus_patch");
        }
        Err(Chunk::TooLong) => Some(bad("size_mismatch", "the chunk goes past Upload-Length")),
        Err(Chunk::Link(r)) => Some(files::link_refused(&r)),
        Err(Chunk::Body(e)) if checksum.is_none() && e != BodyError::Shutdown => {
            // tus: what came of a cut chunk without a checksum is kept.
            park(&mut live, upload, &entry);
            let _ = records.renew(&id, SystemTime::now() + UPLOAD_TTL).await;
            return e.response();
        }
        Err(Chunk::Body(e)) if checksum.is_none() => {
            park(&mut live, upload, &entry);
            return e.response();
        }
        Err(Chunk::Body(e)) => Some(e.response()),
    };
    let mismatch = match (checksum, hasher) {
        (Some(want), Some(h)) if cut.is_none() => <[u8; 32]>::from(h.finalize()) != want,
        _ => false,
    };
    if cut.is_some() || mismatch {
        // The chunk is not taken: back to where it started.
        if let Err(e) = upload.rewind(mark).await {
            entry.live.store(false, Ordering::Release);
            entry.offset.store(0, Ordering::Release);
            let _ = records.set_kept(&id, None).await;
            return status::core_error(&e, conn.peer, &door.acct.user, "tus_patch");
        }
        park(&mut live, upload, &entry);
        if let Some(r) = cut {
            return r;
        }
        tracing::warn!(target: "ferry::audit", event = "tus_patch", peer = %conn.peer,
            user = %door.acct.user, via = %door.acct.via, upload = %id, offset,
            result = "checksum_mismatch");
        return error(
            StatusCode::from_u16(460).unwrap_or(StatusCode::CONFLICT),
            "checksum_mismatch",
            "the chunk does not match its Upload-Checksum; nothing of it was kept",
        );
    }
    let now = SystemTime::now();
    let _ = records.renew(&id, now + UPLOAD_TTL).await;
    // A long chunk may have outlasted the hold: renewed from now.
    let _ = records.hold(&id, tus.node(), tus.hold_lease()).await;
    if upload.written() < record.size {
        park(&mut live, upload, &entry);
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        h.insert(
            &UPLOAD_OFFSET,
            value(&entry.offset.load(Ordering::Acquire).to_string()),
        );
        expires_header(h, now + UPLOAD_TTL);
        return r;
    }
    // The last byte is in: verify, count a link's use, commit.
    let expected = repr.or(record.expected);
    let expect = expected.map_or(Expect::ServerComputed, Expect::Sha256);
    let link_use = match &door.link {
        Some((store, link)) => {
            let held = match live.link_use.take() {
                Some(mut u) => u.renew_if_due().await.is_ok().then_some(u),
                None => None,
            };
            match held {
                Some(u) => Some(u),
                None => {
                    match LinkUse::reserve(store, *link, record.size, files::LINK_USE_LEASE).await {
                        Ok(u) => Some(u),
                        Err(r) => {
                            // Kept whole and parked: a later PATCH at the end may try again.
                            park(&mut live, upload, &entry);
                            return files::link_refused(&r);
                        }
                    }
                }
            }
        }
        None => None,
    };
    // From here the upload leaves the slot for good, whatever happens.
    entry.live.store(false, Ordering::Release);
    let size = record.size;
    let finished = finish(conn, &door, &path, upload, expect, link_use).await;
    let (sha256, landed) = match finished {
        Ok(done) => done,
        Err(r) => {
            let _ = records.remove(&id).await;
            tus.forget(&id);
            return r;
        }
    };
    let landed = files::landed_path(&path, landed.as_deref());
    let verified = files::verification(expected.is_some());
    let receipt = files::receipt_of(
        &door.acct,
        id.clone(),
        &path,
        &landed,
        size,
        &sha256,
        verified,
    );
    let (json, jws) = files::receipt_json(conn, receipt);
    if let Err(e) = records.complete(&id, json).await {
        tracing::warn!(error = %e, "a committed upload's receipt could not be kept");
    }
    entry.offset.store(size, Ordering::Release);
    // Nothing is parked for it any more (a request asking again finds the receipt first).
    tus.forget(&id);
    tracing::info!(target: "ferry::audit", event = "http_tus", peer = %conn.peer,
        user = %door.acct.user, via = %door.acct.via, upload = %id,
        path = %crate::sanitize::for_log(&door.acct.shown(&landed)), size,
        sha256 = %hex_digest(&sha256), verified = verified.as_str(), result = "ok");
    conn.server
        .metrics
        .transfer(Direction::Upload, Outcome::Ok, size);
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(&UPLOAD_OFFSET, value(&size.to_string()));
    h.insert(
        files::REPR_DIGEST.clone(),
        value(&parse::format_digest_field(&sha256)),
    );
    if let Some(jws) = jws {
        h.insert(&FERRY_RECEIPT, value(&jws));
    }
    r
}

/// Seals the whole upload against `expect`, counts the link's use, and commits; the digest
/// and the name it landed under if another.
async fn finish(
    conn: &Conn,
    door: &Door,
    path: &RemotePath,
    upload: Upload,
    expect: Expect,
    link_use: Option<LinkUse>,
) -> Result<(Sha256Digest, Option<String>), Response<Body>> {
    let fail = |e: &CoreError| status::core_error(e, conn.peer, &door.acct.user, "tus_patch");
    let size = upload.size();
    let sealed = match upload.seal(expect).await {
        Ok(Sealing::Sealed(s)) => s,
        Ok(Sealing::Mismatch { actual }) => {
            return Err(files::mismatch(conn, &door.acct, path, size, &actual));
        }
        Err(e) => return Err(fail(&e)),
    };
    let mut link_use = link_use;
    if let Err(r) = files::count_link_use(&mut link_use, size).await {
        sealed.abort().await;
        return Err(r);
    }
    match sealed.commit(Durability::Now).await {
        Ok(Put::Committed { sha256, name }) => Ok((sha256, name)),
        Ok(Put::Staged(staged)) => {
            let sha256 = staged.sha256;
            if let Some(Err(e)) = door.acct.home.flush(vec![staged]).await.pop() {
                return Err(fail(&e));
            }
            Ok((sha256, None))
        }
        Ok(Put::Mismatch { actual }) => Err(files::mismatch(conn, &door.acct, path, size, &actual)),
        Err(e) => Err(fail(&e)),
    }
}

fn offset_conflict(at: u64) -> Response<Body> {
    offset_conflict_as(
        at,
        "offset_mismatch",
        &format!("the upload is at offset {at}"),
    )
}

/// `409` saying where the upload stands.
fn offset_conflict_as(at: u64, code: &str, message: &str) -> Response<Body> {
    let mut r = error(StatusCode::CONFLICT, code, message);
    r.headers_mut()
        .insert(&UPLOAD_OFFSET, value(&at.to_string()));
    r
}

/// Why a chunk stopped before its end.
enum Chunk {
    Body(BodyError),
    /// More bytes than the upload has room for.
    TooLong,
    /// The core refused a write: the upload is gone.
    Write(CoreError),
    /// The drop link's use could not be renewed.
    Link(LinkRefused),
}

/// Streams the request body into `upload`, at most `room` bytes, hashing it into `hasher`.
async fn stream(
    conn: &Conn,
    body: &mut Incoming,
    upload: &mut Upload,
    room: u64,
    mut hasher: Option<&mut sha2::Sha256>,
    link_use: &mut Option<LinkUse>,
) -> Result<(), Chunk> {
    let mut piece = BytesMut::new();
    let mut got = 0u64;
    loop {
        match files::next_data(conn, body).await {
            Ok(Some(d)) => {
                got += d.len() as u64;
                if got > room {
                    return Err(Chunk::TooLong);
                }
                if let Some(h) = hasher.as_deref_mut() {
                    h.update(&d);
                }
                piece.extend_from_slice(&d);
                if piece.len() >= files::WRITE_PIECE {
                    upload
                        .write(piece.split().freeze())
                        .await
                        .map_err(Chunk::Write)?;
                    if let Some(u) = link_use.as_mut() {
                        u.renew_if_due().await.map_err(Chunk::Link)?;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                // What came before the cut goes in (kept without a checksum, else rewound).
                if !piece.is_empty() {
                    upload.write(piece.freeze()).await.map_err(Chunk::Write)?;
                }
                return Err(Chunk::Body(e));
            }
        }
    }
    if !piece.is_empty() {
        upload.write(piece.freeze()).await.map_err(Chunk::Write)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_a_target_and_a_digest() {
        let meta = parse::parse_upload_metadata("filename cmVwb3J0LnBkZg==,sha256 ").unwrap();
        assert_eq!(target_of(&meta, true).unwrap().to_string(), "/report.pdf");
        assert!(
            declared_sha256(&meta).is_err(),
            "an empty digest is no digest"
        );
        let meta = parse::parse_upload_metadata("filename YS9iLnR4dA==").unwrap();
        assert!(target_of(&meta, true).is_err(), "a link takes a name only");
        assert_eq!(target_of(&meta, false).unwrap().to_string(), "/a/b.txt");
        let hex =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "AB".repeat(32));
        let meta = parse::parse_upload_metadata(&format!("filename eA==,sha256 {hex}")).unwrap();
        assert_eq!(declared_sha256(&meta).unwrap(), Some([0xab; 32]));
        assert!(target_of(&[], false).is_err());
    }
}
