//! What a connection's socket and requests are doing, for the limits hyper does not have: an
//! idle connection closes, a response that stops moving is dropped, and a head timeout is
//! told apart from an idle keep-alive socket.
//!
//! [`IoWatch`] counts the plaintext bytes each way. A [`Request`] guard counts a request from
//! its arrival until its response body is dropped (fully sent, or the peer gone), so a request
//! whose handler is cancelled still gives its count back. Idleness is measured between
//! requests, not bytes: h2 answers pings on its own, and a socket that only pings is idle.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counters of one connection.
#[derive(Debug)]
pub struct Watch {
    start: Instant,
    read: AtomicU64,
    written: AtomicU64,
    /// Milliseconds since `start` of the last byte written, or of a response starting.
    last_write_ms: AtomicU64,
    /// Milliseconds since `start` of the last request arriving or ending.
    last_request_ms: AtomicU64,
    /// `read` when the last request ended: bytes beyond it are the next request's.
    read_at_last_end: AtomicU64,
    /// Requests from arrival until their response body is dropped.
    in_flight: AtomicUsize,
    /// Response bodies being sent.
    responding: AtomicUsize,
    /// When each response being sent last handed hyper a frame (milliseconds since `start`),
    /// by response: socket writes alone are no proof (h2 answers pings while a response waits
    /// for a flow-control window that never opens).
    progress: std::sync::Mutex<std::collections::HashMap<u64, Arc<AtomicU64>>>,
    requests: AtomicU64,
}

impl Default for Watch {
    fn default() -> Self {
        Watch::new()
    }
}

impl Watch {
    pub fn new() -> Watch {
        Watch {
            start: Instant::now(),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
            last_write_ms: AtomicU64::new(0),
            last_request_ms: AtomicU64::new(0),
            read_at_last_end: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            responding: AtomicUsize::new(0),
            progress: std::sync::Mutex::new(std::collections::HashMap::new()),
            requests: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long the connection has been open.
    pub fn age(&self) -> Duration {
        self.start.elapsed()
    }

    /// Plaintext bytes read and written so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.written.load(Ordering::Relaxed),
        )
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// A request arrived; the guard counts it until its response is done.
    pub fn request(self: &Arc<Self>) -> Request {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.last_request_ms.store(self.now_ms(), Ordering::Relaxed);
        Request {
            id: self.requests.load(Ordering::Relaxed),
            watch: Arc::clone(self),
            responding: None,
        }
    }

    /// No request in flight, and none arrived or ended for `limit`.
    pub fn idle_for(&self, limit: Duration) -> bool {
        let since = self
            .now_ms()
            .saturating_sub(self.last_request_ms.load(Ordering::Relaxed));
        self.in_flight.load(Ordering::Acquire) == 0 && u128::from(since) >= limit.as_millis()
    }

    /// A response is being sent and has handed over nothing for `limit`: its client reads
    /// nothing (or grants no window), whatever else moves on the socket.
    pub fn write_stalled(&self, limit: Duration) -> bool {
        let now = self.now_ms();
        let progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        progress.values().any(|last| {
            u128::from(now.saturating_sub(last.load(Ordering::Relaxed))) >= limit.as_millis()
        })
    }

    /// Bytes came after the last request ended (or since the start): a head was begun.
    pub fn partial_request(&self) -> bool {
        self.read.load(Ordering::Relaxed) > self.read_at_last_end.load(Ordering::Relaxed)
    }
}

/// One request in flight (see [`Watch::request`]); its response body should own it.
#[derive(Debug)]
pub struct Request {
    id: u64,
    watch: Arc<Watch>,
    /// When its response last handed over a frame, once it is being sent.
    responding: Option<Arc<AtomicU64>>,
}

impl Request {
    /// The response's body starts: from now on a stall of it counts.
    pub fn responding(&mut self) {
        if self.responding.is_none() {
            let w = &self.watch;
            let now = w.now_ms();
            w.last_write_ms.store(now, Ordering::Relaxed);
            w.responding.fetch_add(1, Ordering::AcqRel);
            let last = Arc::new(AtomicU64::new(now));
            w.progress
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(self.id, Arc::clone(&last));
            self.responding = Some(last);
        }
    }

    /// The response handed hyper a frame.
    pub fn progressed(&self) {
        if let Some(last) = &self.responding {
            last.store(self.watch.now_ms(), Ordering::Relaxed);
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let w = &self.watch;
        if self.responding.take().is_some() {
            w.responding.fetch_sub(1, Ordering::AcqRel);
            w.progress
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.id);
        }
        w.read_at_last_end
            .store(w.read.load(Ordering::Relaxed), Ordering::Relaxed);
        w.last_request_ms.store(w.now_ms(), Ordering::Relaxed);
        w.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream whose plaintext bytes are counted into a [`Watch`].
#[derive(Debug)]
pub struct IoWatch<S> {
    inner: S,
    watch: Arc<Watch>,
}

impl<S> IoWatch<S> {
    pub fn new(inner: S, watch: Arc<Watch>) -> Self {
        IoWatch { inner, watch }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IoWatch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.watch.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IoWatch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            let w = &self.watch;
            w.written.fetch_add(n as u64, Ordering::Relaxed);
            w.last_write_ms.store(w.now_ms(), Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            let w = &self.watch;
            w.written.fetch_add(n as u64, Ordering::Relaxed);
            w.last_write_ms.store(w.now_ms(), Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_counts_until_its_guard_drops() {
        let w = Arc::new(Watch::new());
        assert!(w.idle_for(Duration::ZERO));
        let mut r = w.request();
        assert!(!w.idle_for(Duration::ZERO));
        r.responding();
        assert!(w.write_stalled(Duration::ZERO));
        assert!(!w.write_stalled(Duration::from_secs(60)));
        r.progressed();
        drop(r);
        assert!(!w.write_stalled(Duration::ZERO));
        assert!(w.idle_for(Duration::ZERO));
        assert!(!w.idle_for(Duration::from_secs(60)));
    }

    #[test]
    fn bytes_after_the_last_request_are_a_partial_head() {
        let w = Arc::new(Watch::new());
        assert!(!w.partial_request());
        w.read.fetch_add(10, Ordering::Relaxed);
        assert!(w.partial_request());
        drop(w.request());
        assert!(!w.partial_request());
    }
}
