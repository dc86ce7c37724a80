//! The admin port: this server's metrics for Prometheus, `GET /metrics` in OpenMetrics text
//! over plain HTTP/1.1 on a listener of its own (`ferry serve --metrics-listen`).
//!
//! The one-port rule is about clients: every client, ferry/1 or a browser, comes through the
//! TLS port. This port is for operators and their Prometheus, on loopback (the default, and
//! the only choice without `--metrics-allow-remote`) or a private network. It has no TLS and
//! no authentication, so it serves nothing but counts: no user name, path or address is ever
//! a label (see [`crate::metrics`]). It is bounded like everything else that listens: a small
//! request head, one request per connection, a time limit on the whole connection and a cap
//! on connections at once; whatever a peer sends, the worst it gets is a closed socket.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::Server;
use crate::metrics::Metrics;

/// Connections the admin port serves at once; more are closed at accept. A scraper needs
/// one.
pub const MAX_ADMIN_CONNECTIONS: usize = 4;

/// The largest request head read (hyper's floor): `GET /metrics` needs a few hundred bytes.
pub const MAX_ADMIN_HEAD: usize = 8 * 1024;

/// Header fields in one request.
pub const MAX_ADMIN_HEADERS: usize = 32;

/// From accept to the last byte of the answer: a peer that sends slowly or reads slowly is
/// cut off here.
pub const ADMIN_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The media type of the answer (OpenMetrics 1.0 text, which Prometheus asks for first).
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the admin port did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A non-loopback address without `--metrics-allow-remote`.
    #[error(
        "--metrics-listen {0}: not a loopback address; the metrics port has no TLS and no \
         authentication, so it binds loopback unless --metrics-allow-remote is given (for a \
         private network behind a firewall)"
    )]
    NotLoopback(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr} for metrics: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Server {
    /// This server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Connections open now (holding one of the listener's permits).
    fn open_connections(&self) -> usize {
        let max = self.limits.max_connections.max(1);
        max.saturating_sub(self.conn_permits.available_permits())
    }
}

/// Refuses an address the admin port may not bind: anything but loopback, unless
/// `allow_remote`.
pub fn check_address(addr: SocketAddr, allow_remote: bool) -> Result<(), AdminError> {
    if allow_remote || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(AdminError::NotLoopback(addr))
    }
}

/// Binds the admin port at `addr` after [`check_address`].
pub async fn bind(addr: SocketAddr, allow_remote: bool) -> Result<TcpListener, AdminError> {
    check_address(addr, allow_remote)?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

/// Serves `server`'s metrics on `listener` until `shutdown` completes; connections in flight
/// then get their own time limit to finish.
pub async fn serve(server: Arc<Server>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(error = %e, "metrics port: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(%peer, "metrics port: connection refused: too many at once");
            continue;
        };
        let server = Arc::clone(&server);
        tracker.spawn(async move {
            let svc = service_fn(move |req| {
                let answer = answer(&server, &req);
                async move { Ok::<_, Infallible>(answer) }
            });
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(ADMIN_CONNECTION_TIMEOUT)
                .max_buf_size(MAX_ADMIN_HEAD)
                .max_headers(MAX_ADMIN_HEADERS)
                .keep_alive(false);
            let conn = b.serve_connection(TokioIo::new(stream), svc);
            match tokio::time::timeout(ADMIN_CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics port: connection failed"),
                Err(_) => tracing::debug!(%peer, "metrics port: connection timed out"),
            }
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// The answer to one request: the metrics for `GET` or `HEAD /metrics` (hyper leaves the body
/// out of a `HEAD` answer), 404 for any other path, 405 for any other method.
fn answer(server: &Server, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    server.metrics.set_connections(server.open_connections());
    let mut r = Response::new(Full::new(Bytes::from(server.metrics.encode())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_without_allow_remote() {
        let local: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let local6: SocketAddr = "[::1]:9464".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9464".parse().unwrap();
        let private: SocketAddr = "10.1.2.3:9464".parse().unwrap();
        assert!(check_address(local, false).is_ok());
        assert!(check_address(local6, false).is_ok());
        assert!(matches!(
            check_address(any, false),
            Err(AdminError::NotLoopback(_))
        ));
        assert!(check_address(private, false).is_err());
        assert!(check_address(private, true).is_ok());
    }
}
