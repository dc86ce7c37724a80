//! `/api/…`: an account's files as JSON, for scripts and the web app: list (paged), stat,
//! usage, SHA-256, and the changes mkdir, rename, remove and rmdir. Each is one core call;
//! the scope (a read-only token, a read-only user) is the core's to check.
//!
//! Reads are `GET` with the path in the query (`?path=/docs`); changes are `POST` with a JSON
//! body of at most [`MAX_JSON`] bytes.

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;

use super::Conn;
use super::auth::Account;
use super::files::{drain_then, next_data};
use super::router::{Body, error, full};
use super::{parse, status};
use crate::domain::hex_digest;
use crate::storage::{ListLimit, ListToken, RemotePath};

/// The largest JSON body a change may have.
pub const MAX_JSON: usize = 64 * 1024;

/// A listing page's budget: at most this many entries, and about this many bytes of JSON
/// (a name byte may take 6 when escaped; each entry's other fields about 100).
const PAGE: ListLimit = ListLimit {
    entries: 1000,
    bytes: (512 * 1024) / 6,
    per_entry: 100 / 6,
};

/// `/api/<what>` for an authenticated account.
pub async fn route(
    conn: &Conn,
    acct: &Account,
    req: Request<Incoming>,
    what: &str,
) -> Response<Body> {
    let method = req.method().clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let read = |allow| -> Result<Vec<(String, String)>, Response<Body>> {
        if method != Method::GET && method != Method::HEAD {
            return Err(method_not_allowed(allow));
        }
        parse::parse_query(&query).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("bad query: {e}"),
            )
        })
    };
    let fail = |e: &crate::service::CoreError| status::core_error(e, conn.peer, &acct.user, what);
    let home = &acct.home;
    match what {
        "links" => super::links_api::route(conn, acct, req).await,
        "ls" => {
            let q = match read("GET") {
                Ok(q) => q,
                Err(r) => return r,
            };
            let path = match path_param(&q, "path") {
                Ok(p) => p,
                Err(r) => return r,
            };
            let cursor = param(&q, "cursor").map(|c| ListToken::from_string(c.to_string()));
            let limit = param(&q, "limit")
                .and_then(|l| l.parse::<usize>().ok())
                .map_or(PAGE, |n| ListLimit {
                    entries: n.clamp(1, PAGE.entries),
                    ..PAGE
                });
            match home.list(&path, cursor.as_ref(), limit).await {
                Ok(page) => json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "path": path.to_string(),
                        "entries": page.entries,
                        "next": page.next.as_ref().map(ListToken::as_str),
                    }),
                ),
                Err(e) => fail(&e),
            }
        }
        "stat" => {
            let q = match read("GET") {
                Ok(q) => q,
                Err(r) => return r,
            };
            match path_param(&q, "path") {
                Ok(path) => match home.stat(&path).await {
                    Ok(entry) => json(StatusCode::OK, &entry),
                    Err(e) => fail(&e),
                },
                Err(r) => r,
            }
        }
        "usage" => {
            if let Err(r) = read("GET") {
                return r;
            }
            match home.usage().await {
                Ok(u) => json(StatusCode::OK, &u),
                Err(e) => fail(&e),
            }
        }
        "sha256" => {
            let q = match read("GET") {
                Ok(q) => q,
                Err(r) => return r,
            };
            let path = match path_param(&q, "path") {
                Ok(p) => p,
                Err(r) => return r,
            };
            // Hashing a large file takes a while; a client that leaves stops it.
            match home.sha256(&path, |_| {}).await {
                Ok((size, d)) => json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "path": path.to_string(),
                        "size": size,
                        "sha256": hex_digest(&d),
                    }),
                ),
                Err(e) => fail(&e),
            }
        }
        "mkdir" | "remove" | "rmdir" | "rename" => {
            if method != Method::POST {
                return method_not_allowed("POST");
            }
            let change = match read_json::<Change>(conn, req).await {
                Ok(c) => c,
                Err(r) => return r,
            };
            let path = match RemotePath::parse(&change.path) {
                Ok(p) => p,
                Err(e) => return bad_path(&e),
            };
            let done = match what {
                "mkdir" => home.mkdir(&path).await,
                "remove" => home.remove(&path).await,
                "rmdir" => home.rmdir(&path).await,
                _ => {
                    let Some(to) = change.to.as_deref() else {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "bad_request",
                            "a rename needs \"to\"",
                        );
                    };
                    let to = match RemotePath::parse(to) {
                        Ok(p) => p,
                        Err(e) => return bad_path(&e),
                    };
                    home.rename(&path, &to, change.replace).await
                }
            };
            match done {
                Ok(()) => {
                    tracing::info!(target: "ferry::audit", event = "http_change", op = what,
                        peer = %conn.peer, user = %acct.user, via = %acct.via,
                        path = %crate::sanitize::for_log(&path.to_string()), result = "ok");
                    json(StatusCode::OK, &serde_json::json!({ "ok": true }))
                }
                Err(e) => fail(&e),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such page"),
    }
}

/// The body of a change: the path, and for a rename where to and whether to replace.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    path: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    replace: bool,
}

/// Reads a JSON body of at most [`MAX_JSON`] bytes under the stall timeout.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    conn: &Conn,
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let (head, mut body) = req.into_parts();
    let mut data = Vec::new();
    loop {
        match next_data(conn, &mut body).await {
            Ok(Some(d)) => {
                if data.len() + d.len() > MAX_JSON {
                    let r = error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        "the JSON body is too large",
                    );
                    return Err(drain_then(body, &head.headers, r).await);
                }
                data.extend_from_slice(&d);
            }
            Ok(None) => break,
            Err(e) => return Err(e.response()),
        }
    }
    serde_json::from_slice(&data).map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body is not the JSON this route takes",
        )
    })
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The `path` parameter as a path in the home (`/` when absent).
fn path_param(q: &[(String, String)], name: &str) -> Result<RemotePath, Response<Body>> {
    match param(q, name) {
        None => Ok(RemotePath::root()),
        Some(p) => RemotePath::parse(p).map_err(|e| bad_path(&e)),
    }
}

fn bad_path(e: &crate::storage::PathError) -> Response<Body> {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_path",
        &format!("invalid path: {e}"),
    )
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

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Body> {
    let text = serde_json::to_string(v).unwrap_or_else(|_| "{}".to_string());
    let mut r = Response::new(full(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// What `POST /api/login` takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    user: String,
    password: String,
}

/// The largest login body.
const MAX_LOGIN_BODY: usize = 4 * 1024;

/// `POST /api/login` with `{"user","password"}`: the same check, pool, penalties and audit
/// line as a ferry/1 login; every failure answers the same bytes. Success starts a session:
/// the cookie (`__Host-ferry`, `Secure`, `HttpOnly`, `SameSite=Strict`) and `{"user","csrf"}`,
/// the token the page sends with every change.
pub async fn login(conn: &Conn, req: Request<Incoming>) -> Response<Body> {
    use super::auth::{COOKIE, SESSION_IDLE, SESSION_MAX, same_origin, session_key, unauthorized};
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    if conn.auth_blocked() {
        return super::router::too_many_attempts();
    }
    // Login CSRF: another site must not log a browser in under its own account.
    if !same_origin(&req) {
        return error(
            StatusCode::FORBIDDEN,
            "csrf",
            "this request did not come from ferry's own page",
        );
    }
    let (head, mut body) = req.into_parts();
    let mut data = Vec::new();
    loop {
        match next_data(conn, &mut body).await {
            Ok(Some(d)) if data.len() + d.len() <= MAX_LOGIN_BODY => data.extend_from_slice(&d),
            Ok(Some(_)) => {
                let r = error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the body is too large",
                );
                return drain_then(body, &head.headers, r).await;
            }
            Ok(None) => break,
            Err(e) => return e.response(),
        }
    }
    let Ok(creds) = serde_json::from_slice::<Credentials>(&data) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "send {\"user\": ..., \"password\": ...}",
        );
    };
    let server = &conn.server;
    let deadline = tokio::time::Instant::now() + server.limits().login_timeout;
    let password = crate::users::Password::new(creds.password);
    match crate::server::login::verify_login(
        server,
        &creds.user,
        password,
        conn.peer,
        deadline,
        "web",
    )
    .await
    {
        Ok(()) => server.metrics().login(true),
        Err(crate::server::login::Refusal::Denied) => {
            server.metrics().login(false);
            conn.auth_failed();
            return unauthorized();
        }
        Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "the server is busy; try again in a moment",
            );
        }
    }
    // The password as it was checked: a later change (ferry user passwd) ends the session.
    let password_stamp = match server.accounts().get(&creds.user).await {
        Ok(Some(u)) => super::auth::password_stamp(&u.password_hash),
        _ => return unauthorized(),
    };
    let cookie = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        rand::random::<[u8; 32]>(),
    );
    let csrf = hex::encode(rand::random::<[u8; 16]>());
    let session = crate::state::sessions::WebSession {
        user: creds.user.clone(),
        csrf: csrf.clone(),
        ends: std::time::Instant::now() + SESSION_MAX,
        password_stamp,
    };
    if !server
        .web
        .sessions()
        .create(session_key(&cookie), session, SESSION_IDLE)
        .await
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many sessions; try again later",
        );
    }
    conn.authenticated();
    let mut r = json(
        StatusCode::OK,
        &serde_json::json!({ "user": creds.user, "csrf": csrf }),
    );
    let set = format!(
        "{COOKIE}={cookie}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_MAX.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&set) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `GET /api/session`: who the cookie stands for and its CSRF token (a page that was
/// reloaded asks), or 401. `POST /api/logout` (with the CSRF header) ends it.
pub async fn session(conn: &Conn, req: Request<Incoming>, logout: bool) -> Response<Body> {
    use super::auth::{COOKIE, CSRF_HEADER, SESSION_IDLE, same_origin, session_key, unauthorized};
    let cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| parse::cookie_value(v, COOKIE))
        .map(str::to_owned);
    let Some(cookie) = cookie else {
        return unauthorized();
    };
    let sessions = conn.server.web.sessions();
    let key = session_key(&cookie);
    let Some(s) = sessions.touch(key, SESSION_IDLE).await else {
        return unauthorized();
    };
    if !logout {
        if req.method() != Method::GET {
            return method_not_allowed("GET");
        }
        conn.authenticated();
        return json(
            StatusCode::OK,
            &serde_json::json!({ "user": s.user, "csrf": s.csrf }),
        );
    }
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    let sent = req
        .headers()
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or(b"");
    if !bool::from(subtle::ConstantTimeEq::ct_eq(sent, s.csrf.as_bytes())) || !same_origin(&req) {
        return error(
            StatusCode::FORBIDDEN,
            "csrf",
            "this request did not come from ferry's own page",
        );
    }
    sessions.delete(key).await;
    tracing::info!(target: "ferry::audit", event = "logout", peer = %conn.peer, user = %s.user);
    let mut r = json(StatusCode::OK, &serde_json::json!({ "ok": true }));
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "__Host-ferry=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}
