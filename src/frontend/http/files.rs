//! `GET`, `HEAD` and `PUT /f/<path>`: an account's files for curl and scripts.
//!
//! A `PUT` is the same verified, durable commit as a ferry/1 `put`: the body is hashed as it
//! is written, and with a `Content-Digest: sha-256=:…:` (RFC 9530) the file lands only if the
//! digest matches; without one it lands with the digest the server computed, and the reply
//! says which (`"verified": "sender"` or `"server-only"`). An existing name is never replaced
//! unless the request says `Overwrite: T` (WebDAV's header). The reply carries `Repr-Digest`.
//!
//! A `GET` sends `Repr-Digest` and a strong `ETag` (`"sha256-<hex>"`) when the store knows the
//! file's digest (every file ferry committed), a weak one from size and time otherwise; one
//! `Range` (so `curl -C -` resumes), `If-Range`, `If-None-Match`. Downloads are data, never
//! pages of ours: `Content-Disposition: attachment`, `Content-Security-Policy: sandbox`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use std::sync::Arc;

use super::auth::{Account, Via};
use super::router::{Body, error, full};
use super::{Conn, headers, parse, status};
use crate::domain::{EntryKind, hex_digest};
use crate::metrics::{Direction, Outcome};
use crate::receipt::Receipt;
use crate::service::{Expect, Put, PutRequest, Sealing};
use crate::state::links::{LinkRefused, LinkStore, LinkUse};
use crate::storage::{Download, Durability, ReadEvent, RemotePath, SMALL_MAX, Sha256Digest};

/// Uploads are written to the store in pieces of up to this much (hyper hands over frames of
/// 16 KiB and less; the store's calls are cheaper when fewer).
pub(super) const WRITE_PIECE: usize = 256 * 1024;

pub(super) static REPR_DIGEST: HeaderName = HeaderName::from_static("repr-digest");
static CONTENT_DIGEST: HeaderName = HeaderName::from_static("content-digest");
static OVERWRITE: HeaderName = HeaderName::from_static("overwrite");

/// The path a route's segments name, relative to the home.
pub fn remote_path(segments: &[String]) -> Result<RemotePath, Response<Body>> {
    RemotePath::parse(&segments.join("/")).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            &format!("invalid path: {e}"),
        )
    })
}

/// `GET` or `HEAD /f/<path>`.
pub async fn get(
    conn: &Conn,
    acct: &Account,
    req: &Request<Incoming>,
    path: &RemotePath,
) -> Response<Body> {
    get_metered(conn, acct, req, path, None).await
}

/// `GET` or `HEAD` of a file, as [`get`], through a download link when `meter` is given: once
/// the answer is decided (a `GET` with content: not a `HEAD`, a `304`, a `416` or an error),
/// the link counts it or refuses it ([`super::drop::LinkMeter::admit`]).
pub async fn get_metered(
    conn: &Conn,
    acct: &Account,
    req: &Request<Incoming>,
    path: &RemotePath,
    meter: Option<&super::drop::LinkMeter<'_>>,
) -> Response<Body> {
    let home = &acct.home;
    let fail = |e: &crate::service::CoreError| status::core_error(e, conn.peer, &acct.user, "get");
    let whole = match home.open_range(path, 0, None).await {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    let stat = whole.stat().clone();
    if stat.entry.kind != EntryKind::File {
        return error(
            StatusCode::CONFLICT,
            "is_a_directory",
            "is a directory (list it with GET /api/ls)",
        );
    }
    let size = stat.entry.size;
    let etag = etag_of(&stat);
    let h = req.headers();
    let text = |name: HeaderName| h.get(name).and_then(|v| v.to_str().ok());
    if let Some(inm) = text(header::IF_NONE_MATCH)
        && parse::if_none_match(inm, &etag)
    {
        let mut r = Response::new(super::router::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r.headers_mut().insert(header::ETAG, value(&etag));
        return r;
    }
    let range = match text(header::RANGE) {
        Some(_) if text(header::IF_RANGE).is_some_and(|ir| !parse::if_range(ir, &etag)) => {
            parse::RangeAnswer::Full
        }
        Some(r) => parse::parse_range(r, size),
        None => parse::RangeAnswer::Full,
    };
    let (status, download, len) = match range {
        parse::RangeAnswer::Full => (StatusCode::OK, whole, size),
        parse::RangeAnswer::Unsatisfiable => {
            let mut r = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                "the range is outside the file",
            );
            r.headers_mut()
                .insert(header::CONTENT_RANGE, value(&format!("bytes */{size}")));
            return r;
        }
        parse::RangeAnswer::Partial {
            start,
            end_inclusive,
        } => {
            drop(whole);
            let len = end_inclusive - start + 1;
            let part = match home.open_range(path, start, Some(len)).await {
                Ok(d) => d,
                Err(e) => return fail(&e),
            };
            // The file changed between the two opens: the range may not be of the file the
            // client asked about.
            if part.stat().entry.size != size || part.stat().sha256 != stat.sha256 {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "the file changed while it was opened; try again",
                );
            }
            (StatusCode::PARTIAL_CONTENT, part, len)
        }
    };
    let body = if req.method() == Method::HEAD {
        drop(download);
        super::router::empty()
    } else {
        // One read of the store for a small file: its thread is done at once, whatever the
        // client's pace. A larger one holds a transfer's place.
        let slot = if len <= SMALL_MAX {
            None
        } else {
            let Some(slot) = conn.server.web.transfer_slot(&acct.user) else {
                return too_many_transfers();
            };
            Some(slot)
        };
        // Counted last, when nothing but the sending is left: a refused answer counts nothing.
        let refund = match meter {
            None => None,
            Some(m) => {
                let start = match range {
                    parse::RangeAnswer::Partial { start, .. } => start,
                    _ => 0,
                };
                match m.admit(conn, path, &etag, start, len, size).await {
                    Ok(r) => r,
                    Err(r) => return r,
                }
            }
        };
        let metrics = Arc::clone(&conn.server.metrics);
        DownloadBody::spawn(download, len, slot, refund, metrics)
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let hm = r.headers_mut();
    hm.insert(header::CONTENT_LENGTH, value(&len.to_string()));
    hm.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    hm.insert(header::ETAG, value(&etag));
    if let Some(lm) = http_date(stat.entry.mtime) {
        hm.insert(header::LAST_MODIFIED, value(&lm));
    }
    if let Some(d) = &stat.sha256 {
        hm.insert(REPR_DIGEST.clone(), value(&parse::format_digest_field(d)));
    }
    if let parse::RangeAnswer::Partial {
        start,
        end_inclusive,
    } = range
    {
        hm.insert(
            header::CONTENT_RANGE,
            value(&format!("bytes {start}-{end_inclusive}/{size}")),
        );
    }
    download_headers(hm, &stat.entry.name);
    tracing::info!(target: "ferry::audit", event = "http_get", peer = %conn.peer,
        user = %acct.user, via = %acct.via, path = %crate::sanitize::for_log(&path.to_string()),
        bytes = len, status = status.as_u16());
    r
}

/// What marks a download as data: an attachment with its name, an opaque type, and a policy
/// under which it can never run as a page of ours.
pub fn download_headers(h: &mut HeaderMap, name: &str) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        value(&parse::content_disposition_attachment(name)),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(headers::CSP_DOWNLOAD),
    );
}

/// `"sha256-<hex>"` when the digest is known, else a weak tag from size and time.
fn etag_of(stat: &crate::storage::Stat) -> String {
    match &stat.sha256 {
        Some(d) => format!("\"sha256-{}\"", hex_digest(d)),
        None => format!("W/\"{:x}-{:x}\"", stat.entry.size, stat.entry.mtime),
    }
}

pub(super) fn http_date(secs: i64) -> Option<String> {
    let t = chrono::DateTime::from_timestamp(secs, 0)?;
    Some(t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
}

/// A header value from text we made (digits, hex, quoted tokens, encoded names).
pub(super) fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// A download's bytes as a response body: a task reads the store and hands chunks over a
/// small channel, so at most a few chunks wait in memory whatever the client's speed, and the
/// task ends when the client goes (the body is dropped).
struct DownloadBody {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    left: u64,
    /// The transfer's place, given back when the body goes (none for a small file).
    _slot: Option<super::auth::TransferSlot>,
    /// Through a download link, the resume allowance this answer drew on: what was not
    /// sent goes back to it when the body goes.
    refund: Option<super::drop::Refund>,
    /// Where the download is counted when the body goes: sent whole, or cut off.
    metrics: Arc<crate::metrics::Metrics>,
    len: u64,
}

impl Drop for DownloadBody {
    fn drop(&mut self) {
        if let Some(r) = self.refund.take() {
            r.give_back(self.left);
        }
        let outcome = if self.left == 0 {
            Outcome::Ok
        } else {
            Outcome::Interrupted
        };
        let sent = self.len.saturating_sub(self.left);
        self.metrics.transfer(Direction::Download, outcome, sent);
    }
}

impl DownloadBody {
    fn spawn(
        mut download: Box<dyn Download>,
        len: u64,
        slot: Option<super::auth::TransferSlot>,
        refund: Option<super::drop::Refund>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Body {
        use http_body_util::BodyExt;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                let item = match download.next().await {
                    Ok(ReadEvent::Data(b)) => Ok(b),
                    Ok(ReadEvent::Progress(_)) => continue,
                    Ok(ReadEvent::End { .. }) => return,
                    Ok(ReadEvent::PrefixMismatch { .. }) => {
                        Err(std::io::Error::other("unexpected prefix check"))
                    }
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        DownloadBody {
            rx,
            left: len,
            _slot: slot,
            refund,
            metrics,
            len,
        }
        .boxed_unsync()
    }
}

impl hyper::body::Body for DownloadBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.left = self.left.saturating_sub(b.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            // The store ended early (the file shrank): an error, so the peer sees a cut
            // transfer and not a short file.
            Poll::Ready(None) if self.left > 0 => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file ended early",
            )))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// The digest a request's headers name for its whole content: `Content-Digest`, or
/// `Repr-Digest` (the same thing for a body without a content coding). A malformed one, or
/// two that differ, is the sender's error.
pub fn sender_digest(h: &HeaderMap) -> Result<Option<Sha256Digest>, Response<Body>> {
    let bad = |what: &str| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_digest",
            &format!("{what}: expected sha-256=:BASE64: (RFC 9530)"),
        )
    };
    let mut found: Option<Sha256Digest> = None;
    for name in [&CONTENT_DIGEST, &REPR_DIGEST] {
        let Some(v) = h.get(name) else { continue };
        let text = v.to_str().map_err(|_| bad(name.as_str()))?;
        match parse::parse_digest_field(text) {
            Ok(Some(d)) => {
                if found.is_some_and(|f| f != d) {
                    return Err(bad("Content-Digest and Repr-Digest differ"));
                }
                found = Some(d);
            }
            // Only other algorithms: nothing we can check.
            Ok(None) => {}
            Err(_) => return Err(bad(name.as_str())),
        }
    }
    Ok(found)
}

/// Reads the next frame's data under the stall timeout; `Ok(None)` at the end.
pub async fn next_data(conn: &Conn, body: &mut Incoming) -> Result<Option<Bytes>, BodyError> {
    use http_body_util::BodyExt;
    let stall = conn.server.limits().stall_timeout;
    loop {
        let frame = tokio::select! {
            f = tokio::time::timeout(stall, body.frame()) => f,
            () = conn.server.grace_over.cancelled() => return Err(BodyError::Shutdown),
        };
        match frame {
            Err(_) => return Err(BodyError::Stalled),
            Ok(None) => return Ok(None),
            Ok(Some(Err(_))) => return Err(BodyError::Gone),
            Ok(Some(Ok(f))) => match f.into_data() {
                Ok(d) if d.is_empty() => continue,
                Ok(d) => return Ok(Some(d)),
                // Trailers: nothing we use.
                Err(_) => continue,
            },
        }
    }
}

/// Reads and drops what is left of a request body, up to [`DRAIN_MAX`] bytes or
/// [`DRAIN_TIME`], then answers `resp`, keeping the rest of the body until the answer is
/// sent. An answer sent before the request's body was read makes HTTP/2 reset the stream: with
/// the answer complete the reset is `NO_ERROR` and clients read the answer, but a body dropped
/// first is `CANCEL`, and curl then reports a framing error instead of the JSON saying why.
///
/// A client that sent `Expect: 100-continue` waits for leave to send its body: reading the
/// body would give that leave, so nothing is read, and the answer tells it not to send.
pub async fn drain_then(
    mut body: Incoming,
    headers: &HeaderMap,
    resp: Response<Body>,
) -> Response<Body> {
    use http_body_util::BodyExt;
    let waits = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut left = if waits { 0 } else { DRAIN_MAX };
    let drain = async {
        while left > 0
            && let Some(Ok(frame)) = body.frame().await
        {
            let n = frame.data_ref().map_or(0, |d| d.len());
            if n >= left {
                break;
            }
            left -= n;
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    resp.map(|inner| {
        KeepBody {
            inner,
            _request: body,
        }
        .boxed_unsync()
    })
}

/// A response body that keeps the request's body alive until the response is done.
struct KeepBody {
    inner: Body,
    _request: Incoming,
}

impl hyper::body::Body for KeepBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Most of a refused request's body read before the answer (see [`drain_then`]).
pub const DRAIN_MAX: usize = 1024 * 1024;
/// Longest wait for it.
pub const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a request body stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Nothing came for the stall timeout.
    Stalled,
    /// The client went away or broke the framing.
    Gone,
    /// The server's shutdown grace is over.
    Shutdown,
}

impl BodyError {
    pub fn response(self) -> Response<Body> {
        match self {
            BodyError::Stalled => error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the request body stopped arriving",
            ),
            BodyError::Gone => error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the request body was cut",
            ),
            BodyError::Shutdown => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down",
            ),
        }
    }
}

/// `PUT /f/<path>`.
pub async fn put(
    conn: &Conn,
    acct: &Account,
    req: Request<Incoming>,
    path: &RemotePath,
    link: Option<&Arc<dyn LinkStore>>,
) -> Response<Body> {
    let (head, mut body) = req.into_parts();
    let h = &head.headers;
    let Some(size) = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(parse::parse_u64_header)
    else {
        let r = error(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "a PUT needs a Content-Length",
        );
        return drain_then(body, &head.headers, r).await;
    };
    let expected = match sender_digest(h) {
        Ok(d) => d,
        Err(r) => return drain_then(body, &head.headers, r).await,
    };
    let replace = h
        .get(&OVERWRITE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"t"));
    let expect = expected.map_or(Expect::ServerComputed, Expect::Sha256);
    let home = &acct.home;
    let fail = |e: &crate::service::CoreError| status::core_error(e, conn.peer, &acct.user, "put");
    // Through a drop link: one file of `size` bytes reserved under the link's own limits
    // before a byte is read, renewed as the data comes, counted once the file has landed.
    let mut link_use = match (link, &acct.via) {
        (Some(store), Via::Link(id)) => {
            let Ok(id) = id.parse() else {
                return drain_then(body, &head.headers, link_refused(&LinkRefused::Gone)).await;
            };
            match LinkUse::reserve(store, id, size, LINK_USE_LEASE).await {
                Ok(u) => Some(u),
                Err(r) => return drain_then(body, &head.headers, link_refused(&r)).await,
            }
        }
        _ => None,
    };
    let put = if size <= SMALL_MAX {
        let mut data = BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
        loop {
            match next_data(conn, &mut body).await {
                Ok(Some(d)) => {
                    if (data.len() + d.len()) as u64 > size {
                        return too_long();
                    }
                    data.extend_from_slice(&d);
                }
                Ok(None) => break,
                Err(e) => return e.response(),
            }
        }
        if data.len() as u64 != size {
            return error(
                StatusCode::BAD_REQUEST,
                "size_mismatch",
                "the body is shorter than its Content-Length",
            );
        }
        let data = data.freeze();
        // In memory: a sender's digest that does not match is told before the link counts.
        if let Expect::Sha256(d) = expect
            && link_use.is_some()
        {
            use sha2::Digest as _;
            let actual: Sha256Digest = sha2::Sha256::digest(&data).into();
            if actual != d {
                return mismatch(conn, acct, path, size, &actual);
            }
        }
        if let Err(r) = count_link_use(&mut link_use, size).await {
            return r;
        }
        home.put_small(path, data, replace, expect, Durability::Now)
            .await
    } else {
        let request = PutRequest {
            size,
            replace,
            resume: None,
        };
        let Some(_slot) = conn.server.web.transfer_slot(&acct.user) else {
            return drain_then(body, &head.headers, too_many_transfers()).await;
        };
        let mut upload = match home.begin_upload(path, request).await {
            Ok(u) => u,
            Err(e) => return drain_then(body, &head.headers, fail(&e)).await,
        };
        let mut piece = BytesMut::new();
        loop {
            match next_data(conn, &mut body).await {
                Ok(Some(d)) => {
                    if upload.written() + (piece.len() + d.len()) as u64 > size {
                        upload.abort().await;
                        return too_long();
                    }
                    piece.extend_from_slice(&d);
                    if piece.len() >= WRITE_PIECE {
                        if let Err(e) = upload.write(piece.split().freeze()).await {
                            return fail(&e);
                        }
                        if let Some(u) = link_use.as_mut()
                            && let Err(r) = u.renew_if_due().await
                        {
                            upload.abort().await;
                            return link_refused(&r);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    upload.abort().await;
                    return e.response();
                }
            }
        }
        if !piece.is_empty()
            && let Err(e) = upload.write(piece.freeze()).await
        {
            return fail(&e);
        }
        // Verified first: a sender's wrong digest stores nothing and uses up nothing of a
        // link; then counted; then committed.
        let sealed = match upload.seal(expect).await {
            Ok(Sealing::Sealed(s)) => s,
            Ok(Sealing::Mismatch { actual }) => return mismatch(conn, acct, path, size, &actual),
            Err(e) => return fail(&e),
        };
        if let Err(r) = count_link_use(&mut link_use, size).await {
            sealed.abort().await;
            return r;
        }
        sealed.commit(Durability::Now).await
    };
    let (sha256, landed_as) = match put {
        Ok(Put::Committed { sha256, name }) => (sha256, name),
        Ok(Put::Staged(staged)) => {
            let sha256 = staged.sha256;
            if let Some(Err(e)) = home.flush(vec![staged]).await.pop() {
                return fail(&e);
            }
            (sha256, None)
        }
        Ok(Put::Mismatch { actual }) => return mismatch(conn, acct, path, size, &actual),
        Err(e) => return fail(&e),
    };
    let landed = landed_path(path, landed_as.as_deref());
    let verified = verification(expected.is_some());
    let shown = acct.shown(&landed);
    tracing::info!(target: "ferry::audit", event = "http_put", peer = %conn.peer,
        user = %acct.user, via = %acct.via, path = %crate::sanitize::for_log(&shown),
        size, sha256 = %hex_digest(&sha256), verified = verified.as_str(), result = "ok");
    conn.server
        .metrics
        .transfer(Direction::Upload, Outcome::Ok, size);
    let receipt = receipt_of(acct, random_id(), path, &landed, size, &sha256, verified);
    let mut r = Response::new(full(receipt_json(conn, receipt).0));
    *r.status_mut() = StatusCode::CREATED;
    let hm = r.headers_mut();
    hm.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    hm.insert(
        REPR_DIGEST.clone(),
        value(&parse::format_digest_field(&sha256)),
    );
    if acct.link.is_none() {
        hm.insert(
            header::LOCATION,
            value(&format!(
                "/f/{}",
                landed
                    .components()
                    .iter()
                    .map(|c| parse::encode_segment(c))
                    .collect::<Vec<_>>()
                    .join("/")
            )),
        );
    }
    r
}

/// 128 random bits, hex: an upload's id in its receipt.
fn random_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Where an upload to `path` landed: a drop link's upload beside a taken name got `name`.
pub(super) fn landed_path(path: &RemotePath, name: Option<&str>) -> RemotePath {
    match name.zip(path.parent()) {
        Some((name, parent)) => parent.join(name).unwrap_or_else(|_| path.clone()),
        None => path.clone(),
    }
}

/// Who verified a committed upload: the sender, if it named a digest, else the server alone.
pub(super) fn verification(sender_named_one: bool) -> crate::receipt::Verification {
    if sender_named_one {
        crate::receipt::Verification::Sender
    } else {
        crate::receipt::Verification::ServerOnly
    }
}

/// The receipt of an upload to `sent` that landed at `landed` (unsigned; see
/// [`receipt_json`]).
pub(super) fn receipt_of(
    acct: &Account,
    id: String,
    sent: &RemotePath,
    landed: &RemotePath,
    size: u64,
    sha256: &Sha256Digest,
    verified: crate::receipt::Verification,
) -> Receipt {
    Receipt {
        v: crate::receipt::VERSION,
        server: String::new(),
        id,
        to: acct.recipient(),
        sent_name: acct.shown(sent),
        name: acct.shown(landed),
        size,
        sha256: hex_digest(sha256),
        verified,
        received_at: crate::receipt::timestamp(std::time::SystemTime::now()),
    }
}

/// The body of a committed upload's answer: the signed receipt (`{"receipt": …, "jws": …}`,
/// which `ferry receipt verify` checks as it is), or the bare receipt when the server has no
/// receipt key; and the compact JWS alone, when signed.
pub(super) fn receipt_json(conn: &Conn, mut receipt: Receipt) -> (String, Option<String>) {
    match conn.server.web.receipts() {
        Some((key, name)) => {
            receipt.server = name;
            let signed = key.sign(&receipt);
            (signed.json, Some(signed.jws))
        }
        None => (serde_json::json!({ "receipt": receipt }).to_string(), None),
    }
}

/// Counts an upload through a drop link once its content is verified and right before its
/// commit: a link revoked, expired or used up (by another node) since the reservation
/// refuses, and the file never lands. A commit that then fails (the disk) leaves the link
/// counted one file high, never low.
pub(super) async fn count_link_use(
    link_use: &mut Option<LinkUse>,
    size: u64,
) -> Result<(), Response<Body>> {
    match link_use.take() {
        Some(u) => u.commit(size).await.map_err(|r| link_refused(&r)),
        None => Ok(()),
    }
}

/// The answer for content whose digest is not the sender's: nothing was stored.
pub(super) fn mismatch(
    conn: &Conn,
    acct: &Account,
    path: &RemotePath,
    size: u64,
    actual: &Sha256Digest,
) -> Response<Body> {
    tracing::warn!(target: "ferry::audit", event = "http_put", peer = %conn.peer,
        user = %acct.user, via = %acct.via,
        path = %crate::sanitize::for_log(&acct.shown(path)), size,
        result = "integrity_mismatch");
    conn.server
        .metrics
        .transfer(Direction::Upload, Outcome::Error, 0);
    let body = serde_json::json!({
        "error": "integrity_mismatch",
        "message": "the content does not match the digest sent; nothing was stored",
        "server_sha256": hex_digest(actual),
    });
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = StatusCode::CONFLICT;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.extensions_mut()
        .insert(super::router::ErrorCodeSent("integrity_mismatch"));
    r
}

/// How long a drop link's reservation lives unless renewed (it is renewed as data comes).
pub const LINK_USE_LEASE: std::time::Duration = std::time::Duration::from_secs(300);

/// The answer when a drop link refuses a use. The texts name no path, owner or token.
pub fn link_refused(r: &LinkRefused) -> Response<Body> {
    let (status, code) = match r {
        LinkRefused::Gone => (StatusCode::NOT_FOUND, "not_found"),
        LinkRefused::Expired => (StatusCode::GONE, "link_expired"),
        LinkRefused::WrongKind => (StatusCode::FORBIDDEN, "permission_denied"),
        LinkRefused::Files | LinkRefused::Bytes | LinkRefused::Downloads => {
            (StatusCode::FORBIDDEN, "link_used_up")
        }
        LinkRefused::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        LinkRefused::Unavailable(why) => {
            tracing::error!(error = %why, "the link store failed");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the server cannot check this link right now; try again later",
            );
        }
        _ => (StatusCode::CONFLICT, "link_refused"),
    };
    error(status, code, &r.to_string())
}

/// The answer when the user (or the server) has as many transfers in flight as it may.
pub(super) fn too_many_transfers() -> Response<Body> {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "busy",
        "too many transfers at once; try again when one has finished",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

fn too_long() -> Response<Body> {
    error(
        StatusCode::BAD_REQUEST,
        "size_mismatch",
        "the body is longer than its Content-Length",
    )
}
