//! A client connection with typed methods: the library API that the shell and the one-shot
//! commands are built on.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;

use super::ClientError;
use crate::direct::DirectLimit;
use crate::protocol::{
    ClientMessage, Entry, ErrorCode, Frame, FrameReader, FrameWriter, MAX_FRAME_LEN,
    MAX_PATH_DEPTH, MAX_PATH_LEN, PROTOCOL_VERSION, ServerMessage, Usage, WireError,
    decode_server_message,
};
use crate::transfer::is_hex_digest;
use crate::users::Password;

pub(super) type Stream = Watched<TlsStream<TcpStream>>;

/// When the client last wrote to the server. The stall rule counts bytes the client sends as
/// new bytes too, so an upload that keeps moving is not a stall while the server, as it
/// should, stays silent until its final reply.
#[derive(Debug)]
pub(super) struct WriteClock {
    base: Instant,
    /// Milliseconds from `base` to the last write that moved bytes.
    last_ms: AtomicU64,
}

impl WriteClock {
    fn new() -> Arc<WriteClock> {
        Arc::new(WriteClock {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream that tells its [`WriteClock`] whenever a write moves bytes.
pub(super) struct Watched<S> {
    inner: S,
    clock: Arc<WriteClock>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.clock.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            self.clock.touch();
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

/// Time allowed to open the TCP connection and finish the TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The stall rule: a request that brings no new bytes for this long fails instead of hanging
/// the client. New bytes are data frames and any other message; `progress` messages count
/// only for the work they report (see [`PROGRESS_CREDIT_RATE`]). Also the longest wait for
/// one write.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// While only `progress` messages arrive, each earns time for the bytes it reports beyond
/// the last one, at this many bytes a second, and only up to the size of the work (the file
/// being hashed or copied, the prefix being checked). A server that repeats itself, counts
/// past the file, or reports a trickle cannot hold a request open for longer than
/// [`STALL_TIMEOUT`] plus the size of the work at this rate.
pub const PROGRESS_CREDIT_RATE: u64 = 1024 * 1024;

/// Most entries a listing may return.
pub const MAX_LIST_ENTRIES: usize = 1_000_000;

/// Most bytes of `entries` messages one listing may take: a hostile server cannot make the
/// client's memory (or the wait) grow without end with an endless listing.
pub const MAX_LIST_BYTES: usize = 64 * 1024 * 1024;

/// The `type` of a server message, the rest unread.
#[derive(serde::Deserialize)]
struct MessageType {
    #[serde(rename = "type")]
    kind: String,
}

/// The read side of a connection, and the stall rule's state.
pub(super) struct Reader {
    frames: FrameReader<ReadHalf<Stream>>,
    stall: Duration,
    /// The client's own writes (shared with the write half).
    writes: Arc<WriteClock>,
    /// Set once `progress` is all that arrives: the next frame must come before it.
    progress_deadline: Option<Instant>,
    /// Bytes of work the running request may report progress up to (0: none expected).
    progress_bound: u64,
    /// The highest `bytes` of an accepted `progress` of the running request.
    progress_best: u64,
}

impl Reader {
    fn new(r: ReadHalf<Stream>, writes: Arc<WriteClock>) -> Reader {
        Reader {
            frames: FrameReader::new(r, MAX_FRAME_LEN),
            stall: STALL_TIMEOUT,
            writes,
            progress_deadline: None,
            progress_bound: 0,
            progress_best: 0,
        }
    }

    /// The request about to be waited for may report `progress` up to `bound` bytes.
    pub(super) fn expect_progress(&mut self, bound: u64) {
        self.progress_bound = bound;
        self.progress_best = 0;
        self.progress_deadline = None;
    }

    /// Applies the stall rule to a frame that arrived.
    fn account(&mut self, frame: &Frame) {
        let now = Instant::now();
        // Every message is looked at, whatever its length: a `progress` padded with unknown
        // fields is still a `progress`. Only its type is read here (the rest is skipped);
        // one that does not decode earns nothing, and its reader will refuse it.
        let progress = match frame {
            Frame::Message(m) => match serde_json::from_slice::<MessageType>(m) {
                Ok(t) if t.kind == "progress" => Some(match decode_server_message(m) {
                    Ok(ServerMessage::Progress { bytes, .. }) => bytes,
                    _ => 0,
                }),
                _ => None,
            },
            // An empty data frame brings no byte: like a `progress` that reports nothing new,
            // it earns no time, or a stream of them would hold a download open forever.
            Frame::Data(d) if d.is_empty() => Some(0),
            Frame::Data(_) => None,
        };
        let Some(bytes) = progress else {
            self.progress_deadline = None;
            return;
        };
        let mut growth = 0;
        if bytes <= self.progress_bound && bytes > self.progress_best {
            growth = bytes - self.progress_best;
            self.progress_best = bytes;
        }
        let credit = Duration::from_secs_f64(growth as f64 / PROGRESS_CREDIT_RATE as f64);
        let cap = now + self.stall;
        self.progress_deadline = Some(match self.progress_deadline {
            Some(d) => (d + credit).min(cap),
            None => cap,
        });
    }
}

/// Called with the number of bytes moved so far.
pub type Progress<'a> = &'a mut (dyn FnMut(u64) + Send);

/// The result of a verified transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transferred {
    /// Bytes moved.
    pub size: u64,
    /// SHA-256 both ends agreed on, hex.
    pub sha256: String,
    /// Wall time of the transfer.
    pub elapsed: Duration,
    /// Bytes that were already in place when a resumed transfer started (0 otherwise).
    pub resumed_from: u64,
}

/// One logged-in (or about to log in) session with a server.
pub struct Connection {
    pub(super) reader: Reader,
    pub(super) writer: FrameWriter<WriteHalf<Stream>>,
    next_id: u64,
    server_software: String,
    user: Option<String>,
    read_only: bool,
    /// Cancels the running transfer (Ctrl-C in the shell).
    pub(super) cancel: CancellationToken,
    /// Caps the direct writers of this connection's downloads (see [`crate::direct`]); shared
    /// with other connections through [`Connection::share_direct_limit`].
    pub(super) direct: Arc<DirectLimit>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server_software)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens TCP + TLS to `host:port`, verifies the certificate against `tls`'s roots for
    /// `host`, checks the `ferry/1` ALPN, and exchanges hellos.
    pub async fn connect(
        host: &str,
        port: u16,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Connection, ClientError> {
        let addr = format!("{host}:{port}");
        // A name TLS cannot use is refused before any connection is made.
        crate::tls::server_name(host).map_err(|e| ClientError::Usage(e.to_string()))?;
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((bare_host, port)))
            .await
            .map_err(|_| ClientError::Connect {
                addr: addr.clone(),
                reason: "timed out".into(),
            })?
            .map_err(|e| ClientError::Connect {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        Self::over(tcp, host, port, tls).await
    }

    /// [`Connection::connect`] over a TCP stream the caller opened (bound to a chosen local
    /// address, or through a tunnel): TLS for `host`, the ALPN check and the hellos.
    pub async fn over(
        tcp: TcpStream,
        host: &str,
        port: u16,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Connection, ClientError> {
        let addr = format!("{host}:{port}");
        let server_name =
            crate::tls::server_name(host).map_err(|e| ClientError::Usage(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let connector = TlsConnector::from(tls);
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(server_name, tcp))
            .await
            .map_err(|_| ClientError::Tls(format!("{addr}: handshake timed out")))?
            .map_err(|e| handshake_error(&addr, &e))?;
        if !crate::tls::alpn_is(stream.get_ref().1, crate::protocol::ALPN) {
            return Err(ClientError::Tls(format!(
                "{addr} does not speak ferry/1 (ALPN not agreed)"
            )));
        }
        let writes = WriteClock::new();
        let (r, w) = tokio::io::split(Watched {
            inner: stream,
            clock: Arc::clone(&writes),
        });
        let mut conn = Connection {
            reader: Reader::new(r, writes),
            writer: FrameWriter::new(w),
            next_id: 1,
            server_software: String::new(),
            user: None,
            read_only: false,
            cancel: CancellationToken::new(),
            direct: Arc::new(DirectLimit::new()),
        };
        conn.writer
            .send_message(&ClientMessage::Hello {
                versions: vec![PROTOCOL_VERSION],
                software: format!("ferry {}", env!("CARGO_PKG_VERSION")),
            })
            .await?;
        match conn.read_message().await? {
            ServerMessage::Hello { version, software } if version == PROTOCOL_VERSION => {
                conn.server_software = software;
            }
            ServerMessage::Error { code, message, .. } => {
                return Err(ClientError::Remote(WireError { code, message }));
            }
            other => {
                return Err(ClientError::Protocol(format!(
                    "unexpected reply to hello: {other:?}"
                )));
            }
        }
        Ok(conn)
    }

    /// The server's software string from its hello.
    pub fn server_software(&self) -> &str {
        &self.server_software
    }

    /// Whether the logged-in user may only read.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Counts this connection's direct writers in `limit`, which other connections of the
    /// process may share: a program running many connections at once keeps them all under
    /// one cap. By default each connection has a limit of its own.
    pub fn share_direct_limit(&mut self, limit: Arc<DirectLimit>) {
        self.direct = limit;
    }

    /// Logs in. A wrong user or password is `ClientError::Auth`.
    pub async fn login(&mut self, user: &str, password: &Password) -> Result<(), ClientError> {
        let id = self.id();
        let password = String::from_utf8_lossy(password.as_bytes()).into_owned();
        self.writer
            .send_message(&ClientMessage::Login {
                id,
                user: user.to_string(),
                password,
            })
            .await?;
        match self.final_reply(id).await {
            Ok(ServerMessage::Ok { read_only, .. }) => {
                self.user = Some(user.to_string());
                self.read_only = read_only.unwrap_or(false);
                Ok(())
            }
            Ok(other) => Err(unexpected(&other)),
            Err(ClientError::Remote(WireError {
                code: ErrorCode::AuthFailed,
                ..
            })) => Err(ClientError::Auth),
            Err(e) => Err(e),
        }
    }

    /// Whether the server closes the connection within `wait` (it does so after its last
    /// allowed failed login). Reading here is safe: nothing else is due from the server, and
    /// a frame cut short by the timeout stays buffered.
    pub async fn closes_within(&mut self, wait: Duration) -> bool {
        // Anything within the wait (end of stream, an error, or a frame nobody asked for)
        // leaves the session unusable.
        tokio::time::timeout(wait, self.reader.frames.read_frame())
            .await
            .is_ok()
    }

    /// Metadata of one remote path.
    pub async fn stat(&mut self, path: &str) -> Result<Entry, ClientError> {
        let id = self.id();
        self.send(&ClientMessage::Stat {
            id,
            path: path.to_string(),
        })
        .await?;
        match self.final_reply(id).await? {
            ServerMessage::Ok {
                entry: Some(entry), ..
            } => Ok(entry),
            other => Err(unexpected(&other)),
        }
    }

    /// Lists a directory (or a single file), in the server's order. A listing longer than
    /// [`MAX_LIST_ENTRIES`] entries or [`MAX_LIST_BYTES`] bytes is refused, and the session
    /// with it (the rest of it would still be on its way).
    pub async fn list(&mut self, path: &str) -> Result<Vec<Entry>, ClientError> {
        let id = self.id();
        self.send(&ClientMessage::List {
            id,
            path: path.to_string(),
        })
        .await?;
        let mut all = Vec::new();
        let mut bytes = 0usize;
        loop {
            let m = match read_frame_from(&mut self.reader).await? {
                Frame::Message(m) => m,
                Frame::Data(_) => {
                    return Err(ClientError::Protocol("unexpected data from server".into()));
                }
            };
            bytes += m.len();
            let msg = decode_server_message(&m)
                .map_err(|_| ClientError::Protocol("malformed message from server".into()))?;
            match msg {
                ServerMessage::Progress { .. } => {}
                ServerMessage::Entries { id: rid, entries } if rid == id => {
                    if all.len() + entries.len() > MAX_LIST_ENTRIES || bytes > MAX_LIST_BYTES {
                        return Err(ClientError::Protocol(format!(
                            "the listing of {} is longer than the client accepts \
                             ({MAX_LIST_ENTRIES} entries, {} MiB); the session ends",
                            crate::sanitize::for_terminal(path),
                            MAX_LIST_BYTES >> 20
                        )));
                    }
                    all.extend(entries);
                }
                ServerMessage::Ok { id: rid, .. } if rid == id => return Ok(all),
                ServerMessage::Error {
                    id: rid,
                    code,
                    message,
                } if rid == Some(id) || rid.is_none() => {
                    return Err(ClientError::Remote(WireError { code, message }));
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Creates a remote directory.
    pub async fn mkdir(&mut self, path: &str) -> Result<(), ClientError> {
        let id = self.id();
        let path = path.to_string();
        self.simple(id, ClientMessage::Mkdir { id, path }).await
    }

    /// Removes an empty remote directory.
    pub async fn rmdir(&mut self, path: &str) -> Result<(), ClientError> {
        let id = self.id();
        let path = path.to_string();
        self.simple(id, ClientMessage::Rmdir { id, path }).await
    }

    /// Removes a remote file.
    pub async fn remove(&mut self, path: &str) -> Result<(), ClientError> {
        let id = self.id();
        let path = path.to_string();
        self.simple(id, ClientMessage::Remove { id, path }).await
    }

    /// Renames a remote file or directory.
    pub async fn rename(
        &mut self,
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<(), ClientError> {
        let id = self.id();
        let msg = ClientMessage::Rename {
            id,
            from: from.to_string(),
            to: to.to_string(),
            overwrite,
        };
        self.simple(id, msg).await
    }

    /// A server-side copy, verified and committed like an upload.
    pub async fn copy(
        &mut self,
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<Transferred, ClientError> {
        let started = Instant::now();
        let bound = self.size_for_progress(from).await?;
        let id = self.id();
        self.send(&ClientMessage::Copy {
            id,
            from: from.to_string(),
            to: to.to_string(),
            overwrite,
        })
        .await?;
        self.reader.expect_progress(bound);
        match self.final_reply_cancellable(id).await? {
            ServerMessage::Ok {
                size: Some(size),
                sha256: Some(sha256),
                ..
            } if is_hex_digest(&sha256) => Ok(Transferred {
                size,
                sha256,
                elapsed: started.elapsed(),
                resumed_from: 0,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// The server's SHA-256 of a whole remote file: `(size, digest)`.
    pub async fn sha256(&mut self, path: &str) -> Result<(u64, String), ClientError> {
        let bound = self.size_for_progress(path).await?;
        let id = self.id();
        self.send(&ClientMessage::Sha256 {
            id,
            path: path.to_string(),
        })
        .await?;
        self.reader.expect_progress(bound);
        match self.final_reply_cancellable(id).await? {
            ServerMessage::Ok {
                size: Some(size),
                sha256: Some(sha256),
                ..
            } if is_hex_digest(&sha256) => Ok((size, sha256)),
            other => Err(unexpected(&other)),
        }
    }

    /// The size of the file a long request (`sha256`, `copy`) works on: the most its
    /// `progress` may report. A path the server refuses is left for the request to report.
    async fn size_for_progress(&mut self, path: &str) -> Result<u64, ClientError> {
        match self.stat(path).await {
            Ok(e) => Ok(e.size),
            Err(ClientError::Remote(_)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Space used and available, as far as the server reports it.
    pub async fn usage(&mut self) -> Result<Usage, ClientError> {
        let id = self.id();
        self.send(&ClientMessage::Usage { id }).await?;
        match self.final_reply(id).await? {
            ServerMessage::Ok {
                usage: Some(usage), ..
            } => Ok(*usage),
            other => Err(unexpected(&other)),
        }
    }

    /// Bytes of an interrupted upload to `remote` that the server kept (0 if none).
    pub async fn partial(&mut self, remote: &str) -> Result<u64, ClientError> {
        let id = self.id();
        self.send(&ClientMessage::Partial {
            id,
            path: remote.to_string(),
        })
        .await?;
        match self.final_reply(id).await {
            Ok(ServerMessage::Ok { size: Some(n), .. }) => Ok(n),
            Ok(other) => Err(unexpected(&other)),
            Err(ClientError::Remote(WireError {
                code: ErrorCode::NotFound,
                ..
            })) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Makes `token` the cancel switch of this connection's transfers: once it is cancelled,
    /// a running put sends `abort`, a running get sends `cancel`, the connection stays usable,
    /// and the call returns [`ClientError::Cancelled`]. No file appears under a final name on
    /// either side; hidden partials are kept for a resume. Set a fresh token for the next one.
    pub fn set_cancel(&mut self, token: CancellationToken) {
        self.cancel = token;
    }

    /// Ends the session politely (TLS close_notify).
    pub async fn close(mut self) -> Result<(), ClientError> {
        timed(self.writer.shutdown()).await??;
        Ok(())
    }

    pub(super) fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sets the stall rule's time (default [`STALL_TIMEOUT`]): a request that brings no new
    /// bytes for this long fails with [`ClientError::Timeout`].
    pub fn set_stall_timeout(&mut self, stall: Duration) {
        self.reader.stall = stall;
    }

    pub(super) async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        check_paths(msg)?;
        self.reader.expect_progress(0);
        timed(self.writer.send_message(msg)).await??;
        Ok(())
    }

    async fn simple(&mut self, id: u64, msg: ClientMessage) -> Result<(), ClientError> {
        self.send(&msg).await?;
        match self.final_reply(id).await? {
            ServerMessage::Ok { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    pub(super) async fn read_message(&mut self) -> Result<ServerMessage, ClientError> {
        read_message_from(&mut self.reader).await
    }

    pub(super) async fn final_reply(&mut self, id: u64) -> Result<ServerMessage, ClientError> {
        final_reply_from(&mut self.reader, id).await
    }

    /// Waits for the final reply to a long request (`copy`, `sha256`); if the cancel switch
    /// flips meanwhile, asks the server to stop and reports `Cancelled` once it has.
    async fn final_reply_cancellable(&mut self, id: u64) -> Result<ServerMessage, ClientError> {
        let cancel = self.cancel.clone();
        let reply = tokio::select! {
            r = final_reply_from(&mut self.reader, id) => return r,
            () = cancel.cancelled() => {
                self.send(&ClientMessage::Cancel { id }).await?;
                final_reply_from(&mut self.reader, id).await
            }
        };
        match reply {
            Err(ClientError::Remote(WireError {
                code: ErrorCode::Cancelled,
                ..
            })) => Err(ClientError::Cancelled),
            // It finished before the cancel arrived; the work is done, report it.
            other => other,
        }
    }
}

/// The error of a failed TLS handshake. A connection the server closed before or during the
/// handshake says why that usually happens, instead of `tls handshake eof`.
fn handshake_error(addr: &str, e: &std::io::Error) -> ClientError {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe => ClientError::Tls(format!(
            "{addr} closed the connection during the TLS handshake. The server may be refusing \
             this address for a while after failed logins or too many connections; try again \
             later."
        )),
        _ => ClientError::Tls(format!("{addr}: {e}")),
    }
}

/// Refuses a request whose path the protocol forbids (deeper than [`MAX_PATH_DEPTH`]
/// components, longer than [`MAX_PATH_LEN`] bytes) before it goes out. A real server refuses
/// them anyway; checking here caps every recursive walk a hostile server could make endless
/// (a directory in every directory).
fn check_paths(msg: &ClientMessage) -> Result<(), ClientError> {
    let paths = msg.paths();
    for path in paths.into_iter().flatten() {
        let depth = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .count();
        if depth > MAX_PATH_DEPTH || path.len() > MAX_PATH_LEN {
            return Err(ClientError::Remote(WireError {
                code: ErrorCode::InvalidPath,
                message: format!(
                    "path deeper than {MAX_PATH_DEPTH} components or longer than \
                     {MAX_PATH_LEN} bytes: not sent (the protocol's limit)"
                ),
            }));
        }
    }
    Ok(())
}

pub(super) async fn timed<F: std::future::Future>(f: F) -> Result<F::Output, ClientError> {
    tokio::time::timeout(STALL_TIMEOUT, f)
        .await
        .map_err(|_| ClientError::Timeout)
}

/// The next frame, under the stall rule: at most the stall time, and while only `progress`
/// arrives, no longer than what it has earned; bytes the client itself sends meanwhile (an
/// upload) count as new bytes too.
pub(super) async fn read_frame_from(reader: &mut Reader) -> Result<Frame, ClientError> {
    let start = Instant::now();
    let frame = loop {
        let waited = reader.progress_deadline.unwrap_or(start + reader.stall);
        let deadline = waited.max(reader.writes.last() + reader.stall);
        let read = reader.frames.read_frame();
        match tokio::time::timeout_at(deadline.into(), read).await {
            Ok(r) => break r?,
            // The client wrote since: the wait goes on from that write. (Reading again is
            // safe: a frame cut short stays buffered.)
            Err(_) if reader.writes.last() + reader.stall > Instant::now() => continue,
            Err(_) => return Err(ClientError::Timeout),
        }
    };
    match frame {
        Some(f) => {
            reader.account(&f);
            Ok(f)
        }
        None => Err(ClientError::ConnectionLost),
    }
}

/// The next message, skipping `progress` (it only shows that the server is working; the
/// stall rule decides how long it may keep a request open).
pub(super) async fn read_message_from(reader: &mut Reader) -> Result<ServerMessage, ClientError> {
    loop {
        match read_frame_from(reader).await? {
            Frame::Message(m) => match decode_server_message(&m) {
                Ok(ServerMessage::Progress { .. }) => continue,
                Ok(msg) => return Ok(msg),
                Err(_) => {
                    return Err(ClientError::Protocol(
                        "malformed message from server".into(),
                    ));
                }
            },
            Frame::Data(_) => {
                return Err(ClientError::Protocol("unexpected data from server".into()));
            }
        }
    }
}

/// Reads until the final reply to `id`: `Ok` is returned, an error reply becomes `Err`.
pub(super) async fn final_reply_from(
    reader: &mut Reader,
    id: u64,
) -> Result<ServerMessage, ClientError> {
    match read_message_from(reader).await? {
        msg @ ServerMessage::Ok { id: rid, .. } if rid == id => Ok(msg),
        ServerMessage::Error {
            id: rid,
            code,
            message,
        } if rid == Some(id) || rid.is_none() => {
            Err(ClientError::Remote(WireError { code, message }))
        }
        other => Err(unexpected(&other)),
    }
}

pub(super) fn unexpected(msg: &ServerMessage) -> ClientError {
    let what = match msg {
        ServerMessage::Hello { .. } => "hello",
        ServerMessage::Ok { .. } => "ok",
        ServerMessage::Error { .. } => "error",
        ServerMessage::Entries { .. } => "entries",
        ServerMessage::File { .. } => "file",
        ServerMessage::Progress { .. } => "progress",
    };
    ClientError::Protocol(format!("unexpected {what} message from server"))
}

/// Where a download of `remote_name` lands when the user names `local` (or nothing).
pub fn download_target(local: Option<&Path>, remote_name: &str) -> PathBuf {
    match local {
        Some(p) if p.is_dir() => p.join(remote_name),
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(remote_name),
    }
}
