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

use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::router::{Body, error, full};
use super::{Conn, auth, files};
use crate::server::login;
use crate::server::penalty::Offence;
use crate::state::links::{Link, LinkKind, LinkRefused};
use crate::users::Password;

/// `GET|HEAD /l/<token>`: the one file of a download link, with everything a `GET /f/`
/// sends (ranges, digests). Each download that starts at the first byte counts once toward
/// the link's `max_downloads`; resuming it with a range does not count again.
pub async fn download(conn: &Arc<Conn>, req: Request<Incoming>, rest: &[String]) -> Response<Body> {
    let [token] = rest else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such page");
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return method_not_allowed("GET, HEAD");
    }
    let link = match find(conn, token).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    if let Some(r) = link.refusal(LinkKind::Download, SystemTime::now()) {
        return files::link_refused(&r);
    }
    if let Err(r) = check_password(conn, &link, req.headers()).await {
        return r;
    }
    let acct = match auth::link_account(conn, &link).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(name) = crate::storage::RemotePath::parse(&link.folder)
        .ok()
        .and_then(|p| p.file_name().map(str::to_owned))
    else {
        return no_such_link();
    };
    let Ok(path) = crate::storage::RemotePath::parse(&name) else {
        return no_such_link();
    };
    // Counted whenever the answer will hold the first byte, decided by the same parse of
    // `Range` the download uses: any spelling of a whole file counts.
    let size = match acct.home.stat(&path).await {
        Ok(e) => e.size,
        Err(e) => return super::status::core_error(&e, conn.peer, &link.owner, "get"),
    };
    // An `If-Range` may turn any range into the whole file: counted, to be safe.
    let from_start = match req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(_) if req.headers().contains_key(header::IF_RANGE) => true,
        Some(r) => match super::parse::parse_range(r, size) {
            super::parse::RangeAnswer::Full => true,
            super::parse::RangeAnswer::Partial { start, .. } => start == 0,
            super::parse::RangeAnswer::Unsatisfiable => false,
        },
    };
    if req.method() == Method::GET && from_start {
        match conn.server.web.links().count_download(link.id).await {
            Ok(true) => {}
            Ok(false) => return files::link_refused(&LinkRefused::Downloads),
            Err(e) => return files::link_refused(&LinkRefused::from(e)),
        }
    }
    tracing::info!(target: "ferry::audit", event = "link_download", peer = %conn.peer,
        link = %link.id, user = %link.owner);
    files::get(conn, &acct, &req, &path).await
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
        if !from_script {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"ferry drop link\", charset=\"UTF-8\""),
            );
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
