//! `/api/links`: an account holder's own drop and download links, from the web app or a
//! script: list them, make one (the URL with its token is in the answer, once), revoke one.
//! What `ferry link add|list|del` does on the server's machine, for the owner only.
//!
//! An upload link needs an account that may write, a download link one that may read; the
//! folder or file must exist in the home. A user has at most [`MAX_LINKS_PER_USER`] links.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::Conn;
use super::auth::Account;
use super::router::{Body, error, full};
use crate::domain::EntryKind;
use crate::domain::Op;
use crate::state::links::{Link, LinkId, LinkKind, LinkSpec, MAX_NOTE_CHARS, issue, validate_note};
use crate::storage::RemotePath;

/// Links one user may have, expired ones included (`ferry link del` or revoking frees room).
pub const MAX_LINKS_PER_USER: usize = 100;
/// A link made here lasts this long unless the request says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest lifetime a request may ask for (`null` asks for none).
pub const MAX_TTL: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// Password hashes made at once for link passwords (each takes argon2's memory and a core).
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// What `POST /api/links` takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLinkRequest {
    /// The folder (upload) or the file or folder (download), in the home.
    path: String,
    /// `upload` or `download`.
    kind: String,
    /// Seconds from now; absent: [`DEFAULT_TTL`]; `null`: never.
    #[serde(default = "default_expiry")]
    expires_in: Option<u64>,
    #[serde(default)]
    max_files: Option<u64>,
    #[serde(default)]
    max_bytes: Option<u64>,
    #[serde(default)]
    max_downloads: Option<u64>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

fn default_expiry() -> Option<u64> {
    Some(DEFAULT_TTL.as_secs())
}

/// `GET|POST|DELETE /api/links`.
pub async fn route(conn: &Conn, acct: &Account, req: Request<Incoming>) -> Response<Body> {
    let store = conn.server.web.links();
    match *req.method() {
        Method::GET | Method::HEAD => match store.list(Some(&acct.user)).await {
            Ok(mut links) => {
                links.sort_by_key(|l| std::cmp::Reverse(l.created));
                let links: Vec<_> = links.iter().map(describe).collect();
                json(StatusCode::OK, &serde_json::json!({ "links": links }))
            }
            Err(e) => store_failed(&e),
        },
        Method::POST => {
            let ask = match super::api::read_json::<NewLinkRequest>(conn, req).await {
                Ok(a) => a,
                Err(r) => return r,
            };
            create(conn, acct, ask).await
        }
        Method::DELETE => {
            let query = req.uri().query().unwrap_or("");
            let id = super::parse::parse_query(query)
                .ok()
                .and_then(|q| q.into_iter().find(|(k, _)| k == "id").map(|(_, v)| v))
                .and_then(|v| v.parse::<LinkId>().ok());
            let Some(id) = id else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "name the link: ?id=ID",
                );
            };
            // Someone else's link is answered as an unknown one.
            match store.get(id).await {
                Ok(Some(l)) if l.owner == acct.user => {}
                Ok(_) => return error(StatusCode::NOT_FOUND, "not_found", "no such link"),
                Err(e) => return store_failed(&e),
            }
            match store.revoke(id).await {
                Ok(()) => {
                    tracing::info!(target: "ferry::audit", event = "link_del", peer = %conn.peer,
                        user = %acct.user, via = %acct.via, link = %id);
                    json(StatusCode::OK, &serde_json::json!({ "ok": true }))
                }
                Err(e) => store_failed(&e),
            }
        }
        _ => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not allowed here",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            r
        }
    }
}

async fn create(conn: &Conn, acct: &Account, ask: NewLinkRequest) -> Response<Body> {
    let bad = |m: &str| error(StatusCode::BAD_REQUEST, "bad_request", m);
    let mut kind = match ask.kind.as_str() {
        "upload" => LinkKind::Upload,
        "download" => LinkKind::Download,
        _ => return bad("kind is \"upload\" or \"download\""),
    };
    let path = match RemotePath::parse(&ask.path) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                &format!("invalid path: {e}"),
            );
        }
    };
    // The link acts for the owner: it may do only what the owner's account may.
    let needs = if kind == LinkKind::Upload {
        Op::Put
    } else {
        Op::Get
    };
    if let Err(e) = acct.home.allowed(needs) {
        return super::status::core_error(&e, conn.peer, &acct.user, "link_add");
    }
    match acct.home.stat(&path).await {
        // A download link's kind follows what it names, as `ferry link add`'s does.
        Ok(e) if kind == LinkKind::Download && e.kind == EntryKind::Dir => {
            kind = LinkKind::DownloadFolder;
        }
        Ok(e) if kind == LinkKind::Download || e.kind == EntryKind::Dir => {}
        Ok(_) => {
            return error(
                StatusCode::CONFLICT,
                "not_a_directory",
                "a drop link goes into a folder",
            );
        }
        Err(e) => return super::status::core_error(&e, conn.peer, &acct.user, "link_add"),
    }
    let note = ask.note.filter(|n| !n.trim().is_empty());
    if let Some(n) = &note
        && validate_note(n).is_err()
    {
        return bad(&format!(
            "a note has at most {MAX_NOTE_CHARS} characters and no control or invisible formatting characters"
        ));
    }
    let ttl = match ask.expires_in {
        None => None,
        Some(0) => return bad("expires_in must be at least 1 second, or null for never"),
        Some(s) if s > MAX_TTL.as_secs() => return bad("expires_in is too far away"),
        Some(s) => Some(Duration::from_secs(s)),
    };
    if [ask.max_files, ask.max_bytes, ask.max_downloads].contains(&Some(0)) {
        return bad("a limit of 0 would make a link that cannot be used");
    }
    let (max_files, max_bytes, max_downloads) = match kind {
        LinkKind::Upload if ask.max_downloads.is_some() => {
            return bad("max_downloads is for download links");
        }
        LinkKind::Download | LinkKind::DownloadFolder
            if ask.max_files.is_some() || ask.max_bytes.is_some() =>
        {
            return bad("max_files and max_bytes are for drop (upload) links");
        }
        _ => (ask.max_files, ask.max_bytes, ask.max_downloads),
    };
    let store = conn.server.web.links();
    match store.list(Some(&acct.user)).await {
        Ok(l) if l.len() >= MAX_LINKS_PER_USER => {
            return error(
                StatusCode::CONFLICT,
                "too_many_links",
                &format!("you have {MAX_LINKS_PER_USER} links; revoke some first"),
            );
        }
        Ok(_) => {}
        Err(e) => return store_failed(&e),
    }
    let password = match ask.password.filter(|p| !p.is_empty()) {
        None => None,
        Some(p) if p.len() > 1024 => return bad("the password is too long"),
        Some(p) => match hash(p).await {
            Some(h) => Some(h),
            None => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "the server is busy; try again in a moment",
                );
            }
        },
    };
    let spec = LinkSpec {
        owner: acct.user.clone(),
        folder: path.to_string(),
        kind,
        ttl,
        max_files,
        max_bytes,
        max_downloads,
        password,
        note,
    };
    let (token, link) = match issue(spec, SystemTime::now(), |_| false) {
        Ok(x) => x,
        Err(e) => return bad(&e.to_string()),
    };
    if let Err(e) = store.add(&link).await {
        return store_failed(&e);
    }
    tracing::info!(target: "ferry::audit", event = "link_add", peer = %conn.peer,
        user = %acct.user, via = %acct.via, link = %link.id, kind = kind.as_str(),
        path = %crate::sanitize::for_log(&link.folder));
    let mut body = describe(&link);
    body["path_in_url"] = serde_json::Value::String(super::drop::link_path(&link, token.expose()));
    json(StatusCode::CREATED, &body)
}

/// A link as the owner sees it (never its token: only the answer that made it has that).
fn describe(l: &Link) -> serde_json::Value {
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    serde_json::json!({
        "id": l.id.to_string(),
        "kind": l.kind.as_str(),
        "path": l.folder,
        "created": secs(l.created),
        "expires": l.expires.map(secs),
        "expired": l.is_expired(SystemTime::now()),
        "max_files": l.max_files,
        "max_bytes": l.max_bytes,
        "max_downloads": l.max_downloads,
        "used_files": l.used_files,
        "used_bytes": l.used_bytes,
        "used_downloads": l.used_downloads,
        "password": l.password.is_some(),
        "note": l.note,
    })
}

/// An argon2id hash of a link's password, one at a time, off the async threads.
async fn hash(password: String) -> Option<String> {
    let _permit = tokio::time::timeout(Duration::from_secs(10), HASHING.acquire())
        .await
        .ok()?
        .ok()?;
    let pw = crate::users::Password::new(password);
    tokio::task::spawn_blocking(move || crate::users::hash_password(&pw).ok())
        .await
        .ok()
        .flatten()
}

fn store_failed(e: &crate::state::links::LinkError) -> Response<Body> {
    tracing::error!(error = %e, "the link store failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "the server cannot reach its links right now; try again later",
    )
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
