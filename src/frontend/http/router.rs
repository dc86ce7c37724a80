//! Method and path to a handler. Each handler decodes, calls the core and encodes; the
//! response gets the security headers here, once, whatever the route.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::{Conn, auth, files, headers, parse, watch};

/// The body of every response.
pub type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// A whole body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// The code of an error answer, kept on the response for [`handle`] to count.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCodeSent(pub &'static str);

/// A JSON error answer (see [`headers::error_json`]).
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut r = Response::new(full(headers::error_json(code, message)));
    *r.status_mut() = status;
    r.extensions_mut()
        .insert(ErrorCodeSent(crate::metrics::error_code(code)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// hyper's entry: every request of a connection comes here.
pub async fn handle(conn: Arc<Conn>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut guard = conn.watch.request();
    let mut resp = route(&conn, req).await;
    if let Some(ErrorCodeSent(code)) = resp.extensions().get() {
        conn.server.metrics.error(code);
    }
    headers::secure(resp.headers_mut());
    guard.responding();
    let resp = resp.map(|b| {
        Tracked {
            inner: b,
            _guard: guard,
        }
        .boxed_unsync()
    });
    Ok(resp)
}

async fn route(conn: &Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
    let (raw_path, _query) =
        parse::split_query(req.uri().path_and_query().map_or("/", |p| p.as_str()));
    let decoded = match parse::decode_path(raw_path) {
        Ok(d) => d,
        Err(e) => {
            // Encoded dots, slashes, NULs, overlong UTF-8: never a real client's mistake, so
            // they cost the address. A doubled slash or a stray `%` is a typo: just a 400.
            if matches!(
                e,
                parse::PathRefused::DotSegment
                    | parse::PathRefused::Separator
                    | parse::PathRefused::Control
                    | parse::PathRefused::NotUtf8
            ) {
                conn.misbehaved();
            }
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                &format!("invalid path in the URL: {e}"),
            );
        }
    };
    let method = req.method().clone();
    let segs: Vec<&str> = decoded.segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        [] => match method {
            Method::GET | Method::HEAD => front_page(conn),
            _ => method_not_allowed("GET, HEAD"),
        },
        ["assets", ..] => super::assets::serve(&req, &decoded.segments[1..]),
        ["api", "login"] => super::api::login(conn, req).await,
        ["api", "session"] => super::api::session(conn, req, false).await,
        ["api", "logout"] => super::api::session(conn, req, true).await,
        ["api", what] => {
            let acct = match auth::account(conn, &req).await {
                Ok(a) => a,
                Err(r) => {
                    let (head, body) = req.into_parts();
                    return files::drain_then(body, &head.headers, r).await;
                }
            };
            let what = what.to_string();
            super::api::route(conn, &acct, req, &what).await
        }
        ["tus", ..] => super::tus::account_route(conn, req, &decoded.segments[1..]).await,
        ["d", ..] => super::drop::route(conn, req, &decoded.segments[1..]).await,
        ["l", ..] => super::drop::download(conn, req, &decoded.segments[1..]).await,
        [".well-known", "ferry-receipt-key"] => match method {
            Method::GET | Method::HEAD => receipt_key(conn),
            _ => method_not_allowed("GET, HEAD"),
        },
        ["f", ..] => {
            if !matches!(method, Method::GET | Method::HEAD | Method::PUT) {
                return method_not_allowed("GET, HEAD, PUT");
            }
            let acct = match auth::account(conn, &req).await {
                Ok(a) => a,
                Err(r) => {
                    let (head, body) = req.into_parts();
                    return files::drain_then(body, &head.headers, r).await;
                }
            };
            if decoded.trailing_slash || segs.len() == 1 {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_path",
                    "name a file: /f/<path>",
                );
            }
            let path = match files::remote_path(&decoded.segments[1..]) {
                Ok(p) => p,
                Err(r) => return r,
            };
            if method == Method::PUT {
                files::put(conn, &acct, req, &path, None).await
            } else {
                files::get(conn, &acct, &req, &path).await
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such page"),
    }
}

/// The answer to a credential sent on a connection that has used up its attempts: none is
/// checked any more, so the connection is no guessing oracle while it closes.
pub fn too_many_attempts() -> Response<Body> {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        "too many refused credentials on this connection; connect again later",
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
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

/// The public half of the receipt key, as a JWK (RFC 8037), for senders who check receipts.
fn receipt_key(conn: &Arc<Conn>) -> Response<Body> {
    let Some((key, _)) = conn.server.web.receipts() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this server signs no receipts",
        );
    };
    let mut r = Response::new(full(key.public_key().jwk()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk+json"),
    );
    r
}

/// The front page: the web app (`web/index.html`), which asks `/api/session` whether the
/// browser is logged in and shows the login form or the files.
fn front_page(_conn: &Arc<Conn>) -> Response<Body> {
    let mut r = Response::new(full(super::assets::INDEX));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}

/// A response body that holds its request's place in the [`watch::Watch`] until it is
/// dropped: sent whole, or abandoned by a peer that left.
struct Tracked {
    inner: Body,
    _guard: watch::Request,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            self._guard.progressed();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
