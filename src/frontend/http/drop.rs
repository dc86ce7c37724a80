//! Drop links: `/d/<token>`. Anyone holding the URL can upload into the link's folder and do
//! nothing else: no listing, no download, no replacing (a taken name lands beside it,
//! `report (1).pdf`). The folder is opened as a store of its own, so nothing outside it can
//! even be named, with the upload-only scope, so the core refuses everything but new files
//! whatever a front-end asks; uploads count against the owner's quota and the link's own
//! limits. Every use is an audit line with the link's id.
//!
//! A token that opens no link is answered like any unknown link (`404`, the same bytes) and
//! costs the source a failed login's penalty, so guessing is as slow as guessing passwords. A
//! link with a password also needs it, as HTTP Basic credentials (any user name): a wrong one
//! is a failed login too.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use base64::Engine as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::router::{Body, error, full};
use super::{Conn, auth, files};
use crate::domain::EntryKind;
use crate::server::login;
use crate::server::penalty::Offence;
use crate::state::links::{AllowanceKey, Link, LinkKind, LinkRefused, ResumeAllowances};
use crate::storage::{ListLimit, ListToken, RemotePath};
use crate::users::Password;

/// `GET|HEAD /l/<token>[/<path>]`: a download link.
///
/// A file link serves its one file at `/l/<token>`, with everything a `GET /f/` sends
/// (ranges, digests); nothing else can be named through it. A folder link serves a page
/// listing its folder at `/l/<token>` and `/l/<token>/` (JSON with `?format=json` or `Accept:
/// application/json`), the same for each folder beneath it at `/l/<token>/<path>/`, and each
/// file beneath it at `/l/<token>/<path>`. The folder is opened as a store of its own,
/// read-only, so nothing above it can be named.
///
/// Counting: see [`LinkMeter`]. A link used up, expired or revoked refuses everything, the
/// listing too.
pub async fn download(conn: &Arc<Conn>, req: Request<Incoming>, rest: &[String]) -> Response<Body> {
    let Some((token, inside)) = rest.split_first() else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such page");
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return method_not_allowed("GET, HEAD");
    }
    let link = match find(conn, token).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let kind = if link.kind.is_download() {
        link.kind
    } else {
        LinkKind::Download
    };
    // A file link names nothing beneath it but its own file's name (the address it is given
    // out with, so a browser keeps its password for this link only); nor does an upload link.
    let file_name = RemotePath::parse(&link.folder)
        .ok()
        .and_then(|p| p.file_name().map(str::to_owned));
    if link.kind != LinkKind::DownloadFolder
        && !inside.is_empty()
        && (link.kind != LinkKind::Download || inside != [file_name.clone().unwrap_or_default()])
    {
        return error(StatusCode::NOT_FOUND, "not_found", "no such page");
    }
    // A browser opening a password link by its bare address is sent beneath it first: it
    // keeps Basic credentials for the folder of the address that asked for them, and
    // `/l/<token>` would make that `/l/`, so it would offer this link's password to every
    // other link (each refusal a failed login). curl is answered where it asked.
    if link.password.is_some()
        && inside.is_empty()
        && !req.uri().path().ends_with('/')
        && req
            .headers()
            .get("sec-fetch-mode")
            .is_some_and(|m| m.as_bytes() == b"navigate")
        && let Some(to) = bare_path(&link, token)
    {
        let mut r = Response::new(super::router::empty());
        *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
        if let Ok(v) = HeaderValue::from_str(&to) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    match link.refusal(kind, SystemTime::now()) {
        // Used up, a range may still be a resume the client's allowance covers: the meter
        // decides once it knows the file and the range, and refuses anything else.
        Some(LinkRefused::Downloads)
            if req.method() == Method::GET && req.headers().contains_key(header::RANGE) => {}
        Some(r) => return files::link_refused(&r),
        None => {}
    }
    if let Err(r) = check_password(conn, &link, req.headers()).await {
        return r;
    }
    let acct = match auth::link_account(conn, &link).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let meter = LinkMeter { link: &link };
    if link.kind == LinkKind::DownloadFolder {
        let path = if inside.is_empty() {
            RemotePath::root()
        } else {
            match files::remote_path(inside) {
                Ok(p) => p,
                Err(r) => return r,
            }
        };
        let entry = match acct.home.stat(&path).await {
            Ok(e) => e,
            Err(e) => return super::status::core_error(&e, conn.peer, &link.owner, "stat"),
        };
        let used_up = link.refusal(kind, SystemTime::now()).is_some();
        return match entry.kind {
            EntryKind::Dir if used_up => files::link_refused(&LinkRefused::Downloads),
            EntryKind::Dir => listing(conn, &acct, &link, &req, token, &path).await,
            EntryKind::File => files::get_metered(conn, &acct, &req, &path, Some(&meter)).await,
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such file"),
        };
    }
    let Some(name) = file_name else {
        return no_such_link();
    };
    let Ok(path) = RemotePath::parse(&name) else {
        return no_such_link();
    };
    files::get_metered(conn, &acct, &req, &path, Some(&meter)).await
}

/// The address a link is given out with: `/d/<token>` for an upload link, `/l/<token>/<name>`
/// for a file (so a download saves under the file's name, and a browser keeps a password
/// for this link only) and `/l/<token>/` for a folder.
pub fn link_path(link: &Link, token: &str) -> String {
    match link.kind {
        LinkKind::Upload => format!("/d/{token}"),
        _ => bare_path(link, token).unwrap_or_else(|| format!("/l/{token}")),
    }
}

/// Where the bare `/l/<token>` of a download link sends a browser: beneath it.
fn bare_path(link: &Link, token: &str) -> Option<String> {
    match link.kind {
        LinkKind::DownloadFolder => Some(format!("/l/{token}/")),
        LinkKind::Download => {
            let path = RemotePath::parse(&link.folder).ok()?;
            let name = path.file_name()?;
            Some(format!("/l/{token}/{}", super::parse::encode_segment(name)))
        }
        LinkKind::Upload => None,
    }
}

/// How a download link counts what it sends, for a file link and a folder link alike.
///
/// Called by [`files::get_metered`] once the answer is decided and only its sending is left,
/// so a `HEAD`, a `304`, a `416` or an error never counts. Every answer that carries a
/// file's first byte (whatever the `Range` spelling: a whole file, `bytes=0-`, a suffix
/// covering it, a multi-range answered whole, an `If-Range` that no longer matches) counts
/// one download, atomically in the link store, and is refused with `403 link_used_up` when
/// `max_downloads` is reached. An answer that starts later (a resume, a segmented download)
/// counts nothing when the same client address has a resume allowance for that file's
/// version left, and counts one download otherwise
/// ([`ResumeAllowances`](crate::state::links::ResumeAllowances)). On a folder link the count
/// is shared by every file in it.
pub struct LinkMeter<'a> {
    link: &'a Link,
}

/// An answer's draw on a resume allowance: what the client did not take goes back.
pub struct Refund {
    table: Arc<Mutex<ResumeAllowances>>,
    key: AllowanceKey,
}

impl Refund {
    /// Gives `unsent` bytes back to the allowance.
    pub fn give_back(self, unsent: u64) {
        if unsent > 0 {
            self.table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .give_back(&self.key, unsent);
        }
    }
}

impl LinkMeter<'_> {
    /// Counts (or draws on an allowance for) an answer of `len` bytes from `start` of the file
    /// `path` (in the link's store), `size` bytes in the version `etag`. `Ok(Some(refund))`:
    /// free, drawn on an allowance; `Ok(None)`: counted; `Err`: the answer to send instead.
    pub async fn admit(
        &self,
        conn: &Conn,
        path: &RemotePath,
        etag: &str,
        start: u64,
        len: u64,
        size: u64,
    ) -> Result<Option<Refund>, Response<Body>> {
        let link = self.link;
        let shown = path.to_string();
        let key = AllowanceKey::new(link, &shown, etag, conn.peer.ip());
        let table = Arc::clone(conn.server.web.resume_allowances());
        let audit = |counted: bool, result: &str| {
            tracing::info!(target: "ferry::audit", event = "link_download", peer = %conn.peer,
                link = %link.id, user = %link.owner, path = %crate::sanitize::for_log(&shown),
                start, bytes = len, counted, result);
        };
        if start > 0
            && table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .draw(&key, len, Instant::now())
        {
            audit(false, "ok");
            return Ok(Some(Refund { table, key }));
        }
        match conn.server.web.links().count_download(link.id).await {
            Ok(true) => {}
            Ok(false) => {
                audit(false, "used_up");
                return Err(files::link_refused(&LinkRefused::Downloads));
            }
            Err(e) => {
                audit(false, "refused");
                return Err(files::link_refused(&LinkRefused::from(e)));
            }
        }
        table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .grant(key, size, Instant::now());
        audit(true, "ok");
        Ok(None)
    }
}

/// A listing page's budget. A name is written twice: escaped as text (up to 6 bytes per
/// byte) and percent-encoded in its link (3 per byte); the rest of a row is about 200 bytes.
const LISTING_PAGE: ListLimit = ListLimit {
    entries: 500,
    bytes: (1024 * 1024) / 9,
    per_entry: 200 / 9,
};

/// The page (or JSON) of one folder beneath a folder link, one page of entries at a time
/// (`?cursor=` from the previous page's `next`): never more of the folder in memory.
async fn listing(
    conn: &Conn,
    acct: &auth::Account,
    link: &Link,
    req: &Request<Incoming>,
    token: &str,
    path: &RemotePath,
) -> Response<Body> {
    let query = match super::parse::parse_query(req.uri().query().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("bad query: {e}"),
            );
        }
    };
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let as_json = param("format") == Some("json")
        || req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"));
    let cursor = param("cursor").map(|c| ListToken::from_string(c.to_string()));
    let mut page = match acct.home.list(path, cursor.as_ref(), LISTING_PAGE).await {
        Ok(p) => p,
        Err(e) => return super::status::core_error(&e, conn.peer, &link.owner, "list"),
    };
    tracing::info!(target: "ferry::audit", event = "link_list", peer = %conn.peer,
        link = %link.id, user = %link.owner,
        path = %crate::sanitize::for_log(&path.to_string()), entries = page.entries.len());
    // Folders first, then by name, within the page (pages come in the store's order).
    page.entries.sort_by(|a, b| {
        (a.kind != EntryKind::Dir)
            .cmp(&(b.kind != EntryKind::Dir))
            .then_with(|| a.name.cmp(&b.name))
    });
    let base = link_href(token, path);
    let next = page.next.as_ref().map(|t| {
        format!(
            "{base}?{}cursor={}",
            if as_json { "format=json&" } else { "" },
            super::parse::encode_segment(t.as_str())
        )
    });
    let (body, content_type) = if as_json {
        let entries: Vec<serde_json::Value> = page
            .entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File | EntryKind::Dir))
            .map(|e| {
                let dir = e.kind == EntryKind::Dir;
                serde_json::json!({
                    "name": e.name,
                    "kind": e.kind,
                    "size": if dir { None } else { Some(e.size) },
                    "mtime": e.mtime,
                    "href": entry_href(&base, &e.name, dir),
                })
            })
            .collect();
        let v = serde_json::json!({
            "path": path.to_string(),
            "entries": entries,
            "next": page.next.as_ref().map(ListToken::as_str),
            "next_href": next,
        });
        (v.to_string(), "application/json")
    } else {
        (
            listing_page(link, token, path, &page.entries, next.as_deref()),
            "text/html; charset=utf-8",
        )
    };
    let body = if req.method() == Method::HEAD {
        super::router::empty()
    } else {
        full(body)
    };
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `/l/<token>/<path>/`: a folder's address beneath a folder link, each name encoded.
fn link_href(token: &str, path: &RemotePath) -> String {
    let mut href = format!("/l/{}/", super::parse::encode_segment(token));
    for c in path.components() {
        href.push_str(&super::parse::encode_segment(c));
        href.push('/');
    }
    href
}

/// An entry's address in the folder at `base` (which ends in `/`); a folder's ends in `/`.
fn entry_href(base: &str, name: &str, dir: bool) -> String {
    let mut href = format!("{base}{}", super::parse::encode_segment(name));
    if dir {
        href.push('/');
    }
    href
}

/// The HTML of a folder listing. Every name is escaped as text; every address is built of
/// percent-encoded names, then escaped too. No script.
fn listing_page(
    link: &Link,
    token: &str,
    path: &RemotePath,
    entries: &[crate::domain::Entry],
    next: Option<&str>,
) -> String {
    use std::fmt::Write as _;
    let base = link_href(token, path);
    let note = link
        .note
        .as_deref()
        .map(|n| format!("<p class=\"note\">{}</p>", html_escape(n)))
        .unwrap_or_default();
    let mut rows = String::new();
    if let Some(parent) = path.parent() {
        let _ = write!(
            rows,
            "<tr><td class=\"name\"><a class=\"dir\" href=\"{}\">../</a></td>\
<td class=\"size\"></td><td class=\"mtime\"></td></tr>",
            html_escape(&link_href(token, &parent))
        );
    }
    for e in entries {
        let dir = match e.kind {
            EntryKind::Dir => true,
            EntryKind::File => false,
            _ => continue,
        };
        let size = if dir {
            String::new()
        } else {
            human_size(e.size)
        };
        let when = chrono::DateTime::from_timestamp(e.mtime, 0)
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default();
        let _ = write!(
            rows,
            "<tr><td class=\"name\"><a class=\"{}\" href=\"{}\">{}{}</a></td>\
<td class=\"size\" title=\"{} bytes\">{}</td><td class=\"mtime\">{}</td></tr>",
            if dir { "dir" } else { "file" },
            html_escape(&entry_href(&base, &e.name, dir)),
            html_escape(&e.name),
            if dir { "/" } else { "" },
            if dir { 0 } else { e.size },
            size,
            when,
        );
    }
    if rows.is_empty() {
        rows.push_str("<tr class=\"empty\"><td colspan=\"3\">This folder is empty.</td></tr>");
    }
    let next = next
        .map(|n| format!("<p><a href=\"{}\">Next page</a></p>", html_escape(n)))
        .unwrap_or_default();
    let limits = match link.max_downloads {
        Some(m) => format!(
            "<p class=\"muted\">This link allows {} more file downloads.</p>",
            m.saturating_sub(link.used_downloads)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<link rel=\"stylesheet\" href=\"/assets/style.css\">\
<title>ferry: shared files</title></head><body class=\"drop\"><h1><span class=\"brand\">ferry</span> · \
Shared files</h1>{note}<p><code>{}</code></p><table class=\"files\"><thead><tr><th>Name</th>\
<th class=\"sort-size\">Size</th><th>Modified</th></tr></thead><tbody>{rows}</tbody></table>\
{next}<p class=\"muted\">A download carries the file's SHA-256 (<code>Repr-Digest</code>) when \
the server knows it, and a cut one resumes where it stopped (<code>curl -C - -OJ URL</code>).\
</p>{limits}</body></html>\n",
        html_escape(&path.to_string()),
    )
}

/// A size for people: bytes, KiB, MiB, GiB, TiB.
fn human_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `/d/<token>[/<name>]`: `rest` holds the segments after `d`.
pub async fn route(conn: &Arc<Conn>, req: Request<Incoming>, rest: &[String]) -> Response<Body> {
    // `/d/<token>/tus/…`: resumable uploads (a file named `tus` is still a `PUT`).
    if let [token, tus, more @ ..] = rest
        && tus == "tus"
        && (!more.is_empty() || req.method() != Method::PUT)
    {
        return tus_route(conn, req, token, more).await;
    }
    let (head, body) = req.into_parts();
    let method = head.method.clone();
    let (token, name) = match rest {
        [token] => (token, None),
        [token, name] => (token, Some(name)),
        _ => return error(StatusCode::NOT_FOUND, "not_found", "no such page"),
    };
    let link = match find(conn, token).await {
        Ok(l) => l,
        Err(r) => return files::drain_then(body, &head.headers, r).await,
    };
    match (method, name) {
        (Method::GET | Method::HEAD, None) => match refusal(&link, LinkKind::Upload) {
            Some(r) => r,
            None => {
                let authority = head
                    .uri
                    .authority()
                    .map(|a| a.as_str().to_string())
                    .or_else(|| {
                        head.headers
                            .get(header::HOST)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    });
                let key = conn.server.web.receipts().map(|(k, _)| k.fingerprint());
                page(&link, authority.as_deref(), token, key.as_deref())
            }
        },
        (Method::PUT, Some(name)) => {
            if let Some(r) = refusal(&link, LinkKind::Upload) {
                return files::drain_then(body, &head.headers, r).await;
            }
            if let Err(r) = check_password(conn, &link, &head.headers).await {
                return files::drain_then(body, &head.headers, r).await;
            }
            let acct = match auth::link_account(conn, &link).await {
                Ok(a) => a,
                Err(r) => return files::drain_then(body, &head.headers, r).await,
            };
            let path = match files::remote_path(std::slice::from_ref(name)) {
                Ok(p) => p,
                Err(r) => return files::drain_then(body, &head.headers, r).await,
            };
            let store = conn.server.web.links();
            let req = Request::from_parts(head, body);
            files::put(conn, &acct, req, &path, Some(&store)).await
        }
        (Method::PUT, None) => error(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "name the file: PUT /d/<token>/<name> (curl -T FILE URL/ adds it)",
        ),
        (_, None) => method_not_allowed("GET, HEAD"),
        (_, Some(_)) => method_not_allowed("PUT"),
    }
}

/// `/d/<token>/tus/…`: the link is checked as for a `PUT` (kind, expiry, password) on every
/// request; the tus routes then act for the link alone.
async fn tus_route(
    conn: &Arc<Conn>,
    req: Request<Incoming>,
    token: &str,
    rest: &[String],
) -> Response<Body> {
    if req.method() == Method::OPTIONS {
        return super::tus::options();
    }
    let (head, body) = req.into_parts();
    let link = match find(conn, token).await {
        Ok(l) => l,
        Err(r) => return files::drain_then(body, &head.headers, r).await,
    };
    // A used-up link still answers for its uploads in flight (a creation reserves its use,
    // and the commit counts it, each under the link's limits).
    let used_up = matches!(
        link.refusal(LinkKind::Upload, SystemTime::now()),
        Some(LinkRefused::Files | LinkRefused::Bytes)
    );
    if !used_up && let Some(r) = refusal(&link, LinkKind::Upload) {
        return files::drain_then(body, &head.headers, r).await;
    }
    if let Err(r) = check_password(conn, &link, &head.headers).await {
        return files::drain_then(body, &head.headers, r).await;
    }
    let acct = match auth::link_account(conn, &link).await {
        Ok(a) => a,
        Err(r) => return files::drain_then(body, &head.headers, r).await,
    };
    let door = super::tus::Door {
        owner: crate::state::uploads::UploadOwner::Link(link.id.to_string()),
        acct,
        base: format!("/d/{}/tus/", super::parse::encode_segment(token)),
        link: Some((conn.server.web.links(), link.id)),
    };
    super::tus::route(conn, Request::from_parts(head, body), door, rest).await
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

/// The link a token opens, or the one answer every unknown token gets (and its penalty).
async fn find(conn: &Conn, token: &str) -> Result<Link, Response<Body>> {
    if conn.auth_blocked() {
        return Err(super::router::too_many_attempts());
    }
    let store = conn.server.web.links();
    match store.by_token(token).await {
        Ok(Some(link)) => {
            // A link that opens counts as logged in: the connection leaves the pre-login
            // phase (a browser on the drop page holds it open).
            conn.authenticated();
            Ok(link)
        }
        Ok(None) => {
            tracing::warn!(target: "ferry::audit", event = "link", peer = %conn.peer,
                result = "unknown_token");
            conn.server.penalise(conn.peer, Offence::AuthFail);
            conn.auth_failed();
            Err(no_such_link())
        }
        Err(e) => {
            tracing::error!(error = %e, "the link store failed");
            Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the server cannot check this link right now; try again later",
            ))
        }
    }
}

fn no_such_link() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not_found", "no such link")
}

/// Why `link` cannot be used for `kind` now, as the answer to send.
fn refusal(link: &Link, kind: LinkKind) -> Option<Response<Body>> {
    link.refusal(kind, SystemTime::now()).map(|r| match r {
        LinkRefused::WrongKind => error(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "this link only takes uploads",
        ),
        r => files::link_refused(&r),
    })
}

/// A link with a password needs it as HTTP Basic credentials (the user name is ignored).
async fn check_password(
    conn: &Conn,
    link: &Link,
    headers: &hyper::HeaderMap,
) -> Result<(), Response<Body>> {
    let Some(phc) = &link.password else {
        return Ok(());
    };
    if conn.auth_blocked() {
        return Err(super::router::too_many_attempts());
    }
    let ask = || {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "auth_failed",
            "this link needs its password (curl -u :PASSWORD)",
        );
        // A script in a browser (the drop page) asks for the password in its own form: the
        // challenge would make the browser open its login box over the page instead.
        let from_script = headers
            .get("sec-fetch-mode")
            .is_some_and(|m| m.as_bytes() != b"navigate");
        // Each link its own realm: a browser never offers one link's password to another.
        if !from_script
            && let Ok(v) = HeaderValue::from_str(&format!(
                "Basic realm=\"ferry link {}\", charset=\"UTF-8\"",
                link.id
            ))
        {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        r
    };
    let Some(password) = basic_password(headers) else {
        return Err(ask());
    };
    let deadline = tokio::time::Instant::now() + conn.server.limits().login_timeout;
    match login::verify_secret(&conn.server, phc, Password::new(password), deadline).await {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::warn!(target: "ferry::audit", event = "link", peer = %conn.peer,
                link = %link.id, result = "wrong_password");
            conn.server.penalise(conn.peer, Offence::AuthFail);
            conn.auth_failed();
            Err(ask())
        }
        Err(_) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the server is busy checking passwords; try again later",
        )),
    }
}

/// The password of `Authorization: Basic base64(user:password)`.
fn basic_password(headers: &hyper::HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || b64.len() > 4096 {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_string())
}

/// The link's page: its note (the owner's text, escaped: never markup), a drop zone that
/// `drop.js` brings to life (each file hashed in the browser, then sent and verified), and the
/// curl command for this very link. What the script needs comes as `data-` attributes: no
/// inline script. `authority` is the host the browser asked for (only shown).
fn page(
    link: &Link,
    authority: Option<&str>,
    token: &str,
    fingerprint: Option<&str>,
) -> Response<Body> {
    let note = link
        .note
        .as_deref()
        .map(|n| format!("<p class=\"note\">{}</p>", html_escape(n)))
        .unwrap_or_default();
    let base = authority.map_or_else(|| "https://HOST".to_string(), |a| format!("https://{a}"));
    let password = if link.password.is_some() {
        "-u :PASSWORD "
    } else {
        ""
    };
    let command = html_escape(&format!("curl -T FILE {password}{base}/d/{token}/"));
    let mut data = format!(
        " data-password=\"{}\"",
        if link.password.is_some() { "yes" } else { "no" }
    );
    if let Some(n) = link.max_files {
        data += &format!(" data-files-left=\"{}\"", n.saturating_sub(link.used_files));
    }
    if let Some(n) = link.max_bytes {
        data += &format!(" data-bytes-left=\"{}\"", n.saturating_sub(link.used_bytes));
    }
    if let Some(t) = link.expires
        && let Ok(d) = t.duration_since(SystemTime::UNIX_EPOCH)
    {
        data += &format!(" data-expires=\"{}\"", d.as_secs());
    }
    let key = fingerprint
        .map(|f| {
            format!(
                " Receipts are signed by this server's key <code>{}</code>.",
                html_escape(f)
            )
        })
        .unwrap_or_default();
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<link rel=\"stylesheet\" href=\"/assets/style.css\">\
<script type=\"module\" src=\"/assets/drop.js\"></script>\
<title>ferry: send files</title></head><body class=\"drop\"{data}><main>\
<h1><span class=\"brand\">ferry</span> · Send files</h1>{note}\
<div id=\"drop-app\"><noscript><p>This page needs JavaScript to send files; without it, \
use the command below.</p></noscript></div>\
<details class=\"terminal\"><summary>Send from a terminal instead</summary>\
<pre>{command}</pre></details>\
<p class=\"muted\">Each file's SHA-256 is computed on your computer and checked by the server \
before the file is stored, so what arrives is exactly what you sent; you get a signed receipt \
for it.{key} Nothing in the folder can be listed or downloaded through this link, and a file \
whose name is taken is kept under a new one.</p></main></body></html>\n"
    );
    let mut r = Response::new(full(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// Text for an HTML text node or attribute value.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escape_leaves_no_markup() {
        assert_eq!(
            html_escape("<img src=x onerror='a(1)'>&\""),
            "&lt;img src=x onerror=&#39;a(1)&#39;&gt;&amp;&quot;"
        );
    }

    #[test]
    fn basic_credentials_give_the_password() {
        let mut h = hyper::HeaderMap::new();
        let b64 = base64::engine::general_purpose::STANDARD.encode(":s3cret:with:colons");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {b64}")).unwrap(),
        );
        assert_eq!(basic_password(&h).as_deref(), Some("s3cret:with:colons"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(basic_password(&h), None);
    }
}
