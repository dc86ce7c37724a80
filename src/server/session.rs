//! One client session: hello, login, then requests, each phase under its own timeout.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::login::{self, Refusal, UserSession};
use super::{Server, cmd};
use crate::domain::Scope;
use crate::protocol::{
    ClientMessage, ErrorCode, Frame, FrameError, FrameReader, FrameWriter, MAX_FRAME_LEN,
    MAX_FRAME_LEN_PRE_AUTH, PROTOCOL_VERSION, ServerMessage, decode_client_message,
};
use crate::users::Password;

type Stream = TlsStream<TcpStream>;

/// Why a session ended. Every variant closes the connection; only the log differs.
#[derive(Debug)]
pub(super) enum End {
    /// The client closed the connection (or vanished).
    ClientGone,
    /// A phase ran out of time.
    Timeout(&'static str),
    /// The client broke the protocol.
    Protocol(String),
    /// Too many failed logins.
    AuthFailed,
    /// The server is shutting down.
    Shutdown,
    /// Refused for a limit (e.g. too many sessions of the user); not the client's fault.
    Refused(&'static str),
    /// Something failed inside the server.
    Internal(String),
}

impl From<FrameError> for End {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(_) | FrameError::Truncated => End::ClientGone,
            other => End::Protocol(other.to_string()),
        }
    }
}

/// Frames read ahead (while a long request watched for its `cancel`) wait here for the
/// request loop; past these bounds the session stops reading until the request is done, so
/// a pipelining client is slowed by TCP, not buffered without limit.
const MAX_PENDING_FRAMES: usize = 64;
const MAX_PENDING_BYTES: usize = 4 * 1024 * 1024;

/// What a final reply said, kept for the audit log.
#[derive(Debug, Clone)]
pub(super) struct Final {
    pub id: u64,
    /// `ok` or the error code.
    pub result: &'static str,
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

/// Most uploads whose reply waits for one group commit (the reference client keeps 32 in
/// flight).
const GROUP_COMMIT_MAX: usize = 64;

/// An upload whose reply waits: for the group commit, or for its own put still running.
pub(super) struct Unsynced {
    pub id: u64,
    pub target: crate::storage::RemotePath,
    pub size: u64,
    pub waiting: Waiting,
    /// Filled in by the dispatcher once the handler returns.
    pub audit: Option<cmd::AuditInfo>,
}

/// What an [`Unsynced`] upload waits for.
pub(super) enum Waiting {
    /// Verified and staged in the core: durable after the group commit.
    Staged(crate::service::StagedPut),
    /// A small put running beside this session's others (a store that gains from it, see
    /// [`crate::storage::Storage::small_puts_in_flight`]); the client's digest is kept for
    /// the reply to a mismatch.
    Running {
        put: tokio::task::JoinHandle<Result<crate::service::Put, crate::service::CoreError>>,
        declared: String,
    },
}

impl Unsynced {
    /// Whether this upload's name is `path`, or one above or below it: a later request on
    /// such a name must see this upload done first.
    pub fn touches(&self, path: &crate::storage::RemotePath) -> bool {
        let (a, b) = (self.target.to_string(), path.to_string());
        let under = |x: &str, y: &str| {
            x.len() > y.len()
                && x.starts_with(y)
                && (y.ends_with('/') || x.as_bytes()[y.len()] == b'/')
        };
        a == b || under(&a, &b) || under(&b, &a)
    }
}

/// What a put waiting for the group commit needs for its reply.
struct Replied {
    id: u64,
    size: u64,
    sha256: String,
    audit: Option<cmd::AuditInfo>,
}

/// A logged-in session: the state every command handler works with.
pub(super) struct Session {
    pub server: Arc<Server>,
    pub peer: SocketAddr,
    pub user: String,
    /// What this session may do; the dispatcher checks it against the operation table.
    pub scope: crate::domain::Scope,
    /// The home as the core sees it: every request goes through it.
    pub home: crate::service::Home,
    pub reader: FrameReader<ReadHalf<Stream>>,
    pub writer: FrameWriter<WriteHalf<Stream>>,
    /// This session's place in the per-user session count.
    _user_slot: super::Slot<String>,
    /// The last final reply sent, for the audit line of the request it answered.
    pub last_final: Option<Final>,
    /// Uploads committed but not yet acknowledged: their directories are fsynced together
    /// (group commit) before their replies go out, in order, ahead of any later reply.
    pub unsynced: Vec<Unsynced>,
    /// Frames that arrived during a long request and belong to later ones, oldest first.
    pending: VecDeque<Frame>,
    pending_bytes: usize,
}

impl Session {
    /// Whether a long request may read ahead for a `cancel` right now.
    pub fn can_read_ahead(&self) -> bool {
        self.pending.len() < MAX_PENDING_FRAMES && self.pending_bytes < MAX_PENDING_BYTES
    }

    /// Takes a frame that arrived while request `id` was running. Returns true if it is a
    /// `cancel` of `id`; a cancel of anything else is dropped (it names no running request),
    /// and every other frame is kept, in order, for the request loop.
    pub fn absorb(&mut self, frame: Frame, id: u64) -> bool {
        if let Frame::Message(m) = &frame
            && let Ok(ClientMessage::Cancel { id: target }) = decode_client_message(m)
        {
            return target == id;
        }
        self.pending_bytes += match &frame {
            Frame::Message(b) | Frame::Data(b) => b.len(),
        };
        self.pending.push_back(frame);
        false
    }

    fn take_pending(&mut self) -> Option<Frame> {
        let frame = self.pending.pop_front()?;
        self.pending_bytes -= match &frame {
            Frame::Message(b) | Frame::Data(b) => b.len(),
        };
        Some(frame)
    }

    /// Sends one message, flushed, under the stall timeout: a client that stops reading
    /// cannot hold the session forever.
    pub async fn send(&mut self, msg: &ServerMessage) -> Result<(), End> {
        // Replies go out in request order: acknowledge committed uploads first.
        self.flush_unsynced().await?;
        self.send_now(msg).await
    }

    /// The group commit: makes the uploads waiting for it durable with one flush of the store
    /// (see [`crate::service::Home::flush`]) and sends their replies in order. A flush that
    /// fails fails the replies of the files it covered. Puts still running are waited for,
    /// each answered in its place.
    pub async fn flush_unsynced(&mut self) -> Result<(), End> {
        while !self.unsynced.is_empty() {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    /// Small puts of this session running now.
    pub fn running_puts(&self) -> usize {
        self.unsynced
            .iter()
            .filter(|u| matches!(u.waiting, Waiting::Running { .. }))
            .count()
    }

    /// Answers the oldest waiting upload: a running put once it is done, or the staged ones
    /// at the front together, with one flush.
    pub async fn settle_oldest(&mut self) -> Result<(), End> {
        if self.unsynced.is_empty() {
            return Ok(());
        }
        if let Waiting::Running { put, .. } = &mut self.unsynced[0].waiting {
            let done = put.await;
            return self.settle_front(done).await;
        }
        let staged_front = self
            .unsynced
            .iter()
            .take_while(|u| matches!(u.waiting, Waiting::Staged(_)))
            .count();
        let (staged, batch): (Vec<_>, Vec<_>) = self
            .unsynced
            .drain(..staged_front)
            .map(|u| {
                let Unsynced {
                    id,
                    size,
                    waiting,
                    audit,
                    ..
                } = u;
                let Waiting::Staged(staged) = waiting else {
                    unreachable!("taken while staged")
                };
                let sha256 = crate::domain::hex_digest(&staged.sha256);
                (
                    staged,
                    Replied {
                        id,
                        size,
                        sha256,
                        audit,
                    },
                )
            })
            .unzip();
        let done = self.home.flush(staged).await;
        for (u, result) in batch.into_iter().zip(done) {
            let msg = match result {
                Ok(()) => ServerMessage::ok_transfer(u.id, u.size, u.sha256),
                Err(e) => cmd::core_message(u.id, &e, self.peer, &self.user, "put"),
            };
            self.reply_settled(msg, u.audit.as_ref()).await?;
        }
        Ok(())
    }

    /// Answers the front upload, a running put that has just finished with `done`.
    async fn settle_front(
        &mut self,
        done: Result<
            Result<crate::service::Put, crate::service::CoreError>,
            tokio::task::JoinError,
        >,
    ) -> Result<(), End> {
        let u = self.unsynced.remove(0);
        let Waiting::Running { declared, .. } = u.waiting else {
            unreachable!("only a running put is settled here")
        };
        let put = done.unwrap_or_else(|e| {
            Err(crate::service::CoreError::Storage(
                crate::storage::StorageError::Io(std::io::Error::other(format!(
                    "the put stopped: {e}"
                ))),
            ))
        });
        let msg = match cmd::put::settled(self, u.id, &u.target, u.size, put, &declared) {
            cmd::put::Settled::Reply(msg) => msg,
            cmd::put::Settled::Staged(staged) => {
                // Not from a store that runs puts side by side; flushed on its own.
                let sha256 = crate::domain::hex_digest(&staged.sha256);
                match self.home.flush(vec![staged]).await.pop() {
                    Some(Ok(())) => ServerMessage::ok_transfer(u.id, u.size, sha256),
                    Some(Err(e)) => cmd::core_message(u.id, &e, self.peer, &self.user, "put"),
                    None => ServerMessage::error(
                        Some(u.id),
                        crate::protocol::ErrorCode::Internal,
                        "the flush gave no result",
                    ),
                }
            }
        };
        self.reply_settled(msg, u.audit.as_ref()).await
    }

    /// Waits until the client's next frame is here (or reading it would fail at once) while
    /// this session's uploads go on: a running put that finishes at the front is answered
    /// meanwhile, so a client that waits for replies gets them and one that sends on is
    /// read. Uploads staged for the group commit are made durable first: nothing else
    /// would.
    pub async fn await_frame(&mut self) -> Result<(), End> {
        loop {
            if self.unsynced.is_empty()
                || !self.pending.is_empty()
                || self.reader.has_buffered_frame()
            {
                return Ok(());
            }
            let Waiting::Running { put, .. } = &mut self.unsynced[0].waiting else {
                self.settle_oldest().await?;
                continue;
            };
            tokio::select! {
                done = put => self.settle_front(done).await?,
                filled = self.reader.fill() => {
                    if !matches!(filled, Ok(true)) {
                        // The client is gone or its stream broke: answer what ran; the read
                        // that follows reports the end.
                        return self.flush_unsynced().await;
                    }
                }
            }
        }
    }

    /// Sends the reply of a waiting upload, after its audit line.
    async fn reply_settled(
        &mut self,
        msg: ServerMessage,
        audit: Option<&cmd::AuditInfo>,
    ) -> Result<(), End> {
        if let Some(a) = audit {
            let (bytes, sha) = match &msg {
                ServerMessage::Ok { size, sha256, .. } => (*size, sha256.clone()),
                _ => (None, None),
            };
            let result = match &msg {
                ServerMessage::Error { code, .. } => code.as_str(),
                _ => "ok",
            };
            cmd::audit_line(self, a, bytes, sha.as_deref(), result);
        }
        self.send_now(&msg).await
    }

    async fn send_now(&mut self, msg: &ServerMessage) -> Result<(), End> {
        count_error(&self.server, msg);
        match msg {
            ServerMessage::Ok {
                id, size, sha256, ..
            } => {
                self.last_final = Some(Final {
                    id: *id,
                    result: "ok",
                    size: *size,
                    sha256: sha256.clone(),
                });
            }
            ServerMessage::Error {
                id: Some(id), code, ..
            } => {
                self.last_final = Some(Final {
                    id: *id,
                    result: code.as_str(),
                    size: None,
                    sha256: None,
                });
            }
            _ => {}
        }
        let stall = self.server.limits.stall_timeout;
        match tokio::time::timeout(stall, self.writer.send_message(msg)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(End::Timeout("client stopped reading")),
        }
    }

    /// Reads the next frame of a transfer under the stall timeout. End of stream is an error
    /// here: a transfer never ends by closing the connection.
    pub async fn read_transfer_frame(&mut self) -> Result<Frame, End> {
        if let Some(f) = self.take_pending() {
            return Ok(f);
        }
        // About to wait for the client, which may itself be waiting for replies.
        self.await_frame().await?;
        let stall = self.server.limits.stall_timeout;
        let read = tokio::select! {
            r = tokio::time::timeout(stall, self.reader.read_frame()) => r,
            () = self.server.grace_over.cancelled() => return Err(End::Shutdown),
        };
        match read {
            Ok(Ok(Some(f))) => Ok(f),
            Ok(Ok(None)) => Err(End::ClientGone),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(End::Timeout("transfer stalled")),
        }
    }

    /// Sends a session-level protocol error and returns the matching end.
    pub async fn protocol_error(&mut self, what: &str) -> End {
        let msg = ServerMessage::error(None, ErrorCode::BadRequest, what);
        // The session ends either way; a failed send changes nothing.
        let _ = self.send(&msg).await;
        End::Protocol(what.to_string())
    }
}

/// Runs a session on an established TLS stream whose ALPN has been checked.
pub(super) async fn run(
    server: Arc<Server>,
    tls: Stream,
    peer: SocketAddr,
    token: CancellationToken,
    mut prelogin: super::prelogin::Guard,
) {
    let (r, w) = tokio::io::split(tls);
    let mut reader = FrameReader::new(r, MAX_FRAME_LEN_PRE_AUTH);
    let mut writer = FrameWriter::new(w);
    let deadline = Instant::now() + server.limits.login_timeout;
    let mut attempted = false;
    let login = tokio::select! {
        r = login_phase(&server, &mut reader, &mut writer, peer, deadline, &mut attempted) => r,
        () = token.cancelled() => Err(End::Shutdown),
        // Too many connections not logged in (see `server::prelogin`); an eviction was
        // penalised when it happened.
        cut = prelogin.cut() => Err(match cut {
            super::prelogin::Cut::Evicted => End::Refused("evicted: too many connections not logged in"),
            super::prelogin::Cut::Expired => End::Timeout("login (shortened under pressure)"),
        }),
    };
    if login.is_ok() {
        prelogin.logged_in();
    }
    let end = match login {
        Ok(UserSession {
            user,
            scope,
            home,
            slot,
        }) => {
            let _live = server.metrics.session(crate::metrics::Protocol::Ferry);
            reader.set_max_len(MAX_FRAME_LEN);
            let mut sess = Session {
                server: Arc::clone(&server),
                peer,
                user,
                scope,
                home,
                reader,
                writer,
                _user_slot: slot,
                last_final: None,
                unsynced: Vec::new(),
                pending: VecDeque::new(),
                pending_bytes: 0,
            };
            let end = request_loop(&mut sess, &token).await;
            // Uploads already renamed into place are made durable even if nobody is left to
            // hear about it.
            let _ = sess.flush_unsynced().await;
            log_end(peer, Some(&sess.user), &end);
            if matches!(end, End::Protocol(_)) {
                server.penalise(peer, super::penalty::Offence::ProtocolError);
            }
            close(&mut sess.writer, server.limits.close_timeout).await;
            if matches!(end, End::Shutdown) {
                linger(&mut sess.reader, LINGER.min(server.limits.close_timeout)).await;
            }
            return;
        }
        Err(end) => end,
    };
    log_end(peer, None, &end);
    match &end {
        End::Timeout(_) => server.penalise(peer, super::penalty::Offence::GraceExceeded),
        End::Protocol(_) => server.penalise(peer, super::penalty::Offence::ProtocolError),
        End::ClientGone if !attempted => server.penalise(peer, server.noauth_offence()),
        _ => {}
    }
    if matches!(end, End::Timeout(_) | End::Shutdown) {
        let code = if matches!(end, End::Shutdown) {
            ErrorCode::Busy
        } else {
            ErrorCode::Timeout
        };
        let msg = ServerMessage::error(None, code, end_text(&end));
        count_error(&server, &msg);
        let _ = tokio::time::timeout(server.limits.close_timeout, writer.send_message(&msg)).await;
    }
    close(&mut writer, server.limits.close_timeout).await;
}

fn end_text(end: &End) -> &'static str {
    match end {
        End::Timeout(_) => "timed out",
        End::Shutdown => "server shutting down",
        _ => "session ended",
    }
}

fn log_end(peer: SocketAddr, user: Option<&str>, end: &End) {
    let user = user.unwrap_or("-");
    match end {
        End::ClientGone => tracing::info!(%peer, user, "session closed"),
        End::Timeout(phase) => tracing::info!(%peer, user, phase, "session timed out"),
        End::Protocol(what) => tracing::warn!(%peer, user, error = %what, "protocol error"),
        End::AuthFailed => tracing::warn!(%peer, user, "too many failed logins; disconnected"),
        End::Shutdown => tracing::info!(%peer, user, "session closed for shutdown"),
        End::Refused(why) => tracing::info!(%peer, user, reason = why, "session refused"),
        End::Internal(what) => tracing::error!(%peer, user, error = %what, "internal error"),
    }
}

async fn close(writer: &mut FrameWriter<WriteHalf<Stream>>, limit: Duration) {
    let _ = tokio::time::timeout(limit, writer.shutdown()).await;
}

/// How long a session cut off by the shutdown keeps reading what its client still sends.
const LINGER: Duration = Duration::from_secs(1);

/// Reads and drops what the client still sends (the rest of an upload, say) until it closes
/// or `limit` passes. Closing a socket with unread data makes the kernel reset the connection,
/// and the reset can destroy the last reply (why the session ended) before the client reads it.
async fn linger(reader: &mut FrameReader<ReadHalf<Stream>>, limit: Duration) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    let drain = async {
        while let Ok(n) = reader.get_mut().read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(limit, drain).await;
}

async fn read_before(
    reader: &mut FrameReader<ReadHalf<Stream>>,
    deadline: Instant,
) -> Result<ClientMessage, End> {
    let frame = match tokio::time::timeout_at(deadline, reader.read_frame()).await {
        Ok(Ok(Some(f))) => f,
        Ok(Ok(None)) => return Err(End::ClientGone),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(End::Timeout("login")),
    };
    match frame {
        Frame::Message(bytes) => decode_client_message(&bytes)
            .map_err(|_| End::Protocol("malformed message before login".into())),
        Frame::Data(_) => Err(End::Protocol("data frame before login".into())),
    }
}

/// Counts an error answer in the server's metrics (by its code; nothing else of it).
fn count_error(server: &Server, msg: &ServerMessage) {
    if let ServerMessage::Error { code, .. } = msg {
        server.metrics.error(code.as_str());
    }
}

async fn send_before(
    writer: &mut FrameWriter<WriteHalf<Stream>>,
    msg: ServerMessage,
    deadline: Instant,
) -> Result<(), End> {
    match tokio::time::timeout_at(deadline, writer.send_message(&msg)).await {
        Ok(r) => r.map_err(End::from),
        Err(_) => Err(End::Timeout("login")),
    }
}

/// Hello, then up to `max_auth_attempts` logins. Returns the logged-in user.
async fn login_phase(
    server: &Arc<Server>,
    reader: &mut FrameReader<ReadHalf<Stream>>,
    writer: &mut FrameWriter<WriteHalf<Stream>>,
    peer: SocketAddr,
    deadline: Instant,
    attempted: &mut bool,
) -> Result<UserSession, End> {
    match read_before(reader, deadline).await? {
        ClientMessage::Hello { versions, software } => {
            if !versions.contains(&PROTOCOL_VERSION) {
                let msg = ServerMessage::error(
                    None,
                    ErrorCode::UnsupportedVersion,
                    format!("this server speaks protocol version {PROTOCOL_VERSION} only"),
                );
                count_error(server, &msg);
                send_before(writer, msg, deadline).await?;
                return Err(End::Protocol(format!("unsupported versions {versions:?}")));
            }
            tracing::debug!(%peer, software = %crate::sanitize::for_log(&software), "hello");
            let hello = ServerMessage::Hello {
                version: PROTOCOL_VERSION,
                software: format!("ferry {}", env!("CARGO_PKG_VERSION")),
            };
            send_before(writer, hello, deadline).await?;
        }
        _ => {
            let msg = ServerMessage::error(None, ErrorCode::BadRequest, "expected hello");
            count_error(server, &msg);
            send_before(writer, msg, deadline).await?;
            return Err(End::Protocol("first message was not hello".into()));
        }
    }

    let mut failures = 0;
    loop {
        let (id, name, password) = match read_before(reader, deadline).await? {
            ClientMessage::Login { id, user, password } => {
                *attempted = true;
                (id, user, Password::new(password))
            }
            other => {
                let msg = ServerMessage::error(other.id(), ErrorCode::AuthRequired, "log in first");
                count_error(server, &msg);
                send_before(writer, msg, deadline).await?;
                return Err(End::Protocol(format!("{} before login", other.op())));
            }
        };
        let (msg, end) = match login::login(server, name, password, peer, deadline, failures + 1)
            .await
        {
            Ok(session) => {
                server.metrics.login(true);
                let ok = ServerMessage::Ok {
                    id,
                    size: None,
                    sha256: None,
                    entry: None,
                    count: None,
                    user: Some(session.user.clone()),
                    read_only: Some(session.scope == Scope::ReadOnly),
                    usage: None,
                };
                send_before(writer, ok, deadline).await?;
                return Ok(session);
            }
            Err(Refusal::ShuttingDown) => return Err(End::Shutdown),
            Err(Refusal::Busy) => (
                ServerMessage::error(Some(id), ErrorCode::Busy, "server busy; try again later"),
                Some(End::Refused("all password checks busy")),
            ),
            Err(Refusal::StoreUnavailable) => (
                ServerMessage::error(
                    Some(id),
                    ErrorCode::Busy,
                    "the server cannot check accounts right now; try again later",
                ),
                Some(End::Refused("account store unavailable")),
            ),
            Err(Refusal::TooManySessions(max)) => (
                ServerMessage::error(
                    Some(id),
                    ErrorCode::Busy,
                    format!("too many sessions for this user (at most {max})"),
                ),
                Some(End::Refused("too many sessions for the user")),
            ),
            Err(Refusal::HomeUnavailable(reason)) => (
                ServerMessage::error(Some(id), ErrorCode::Internal, reason),
                Some(End::Internal("home unavailable".into())),
            ),
            Err(Refusal::Denied) => {
                failures += 1;
                server.metrics.login(false);
                // One generic message whether the user exists or not.
                let msg =
                    ServerMessage::error(Some(id), ErrorCode::AuthFailed, "authentication failed");
                let last = failures >= server.limits.max_auth_attempts;
                (msg, last.then_some(End::AuthFailed))
            }
        };
        count_error(server, &msg);
        send_before(writer, msg, deadline).await?;
        if let Some(end) = end {
            return Err(end);
        }
    }
}

async fn request_loop(sess: &mut Session, token: &CancellationToken) -> End {
    loop {
        // The group commit happens when enough is waiting, or when nothing more has arrived
        // to add to it (the client may be waiting for replies).
        let settled = if sess.unsynced.len() >= GROUP_COMMIT_MAX {
            sess.flush_unsynced().await
        } else {
            sess.await_frame().await
        };
        if let Err(end) = settled {
            return end;
        }
        if let Some(frame) = sess.take_pending() {
            if let Err(end) = handle_frame(sess, frame).await {
                return end;
            }
            continue;
        }
        let idle = sess.server.limits.idle_timeout;
        let frame = tokio::select! {
            r = tokio::time::timeout(idle, sess.reader.read_frame()) => r,
            () = token.cancelled() => {
                let msg = ServerMessage::error(None, ErrorCode::Busy, "server shutting down");
                let _ = sess.send(&msg).await;
                return End::Shutdown;
            }
        };
        let frame = match frame {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => return End::ClientGone,
            Ok(Err(e)) => {
                let end = End::from(e);
                if let End::Protocol(what) = &end {
                    return sess.protocol_error(what).await;
                }
                return end;
            }
            Err(_) => {
                let msg = ServerMessage::error(None, ErrorCode::Timeout, "idle too long");
                let _ = sess.send(&msg).await;
                return End::Timeout("idle");
            }
        };
        if let Err(end) = handle_frame(sess, frame).await {
            return end;
        }
    }
}

async fn handle_frame(sess: &mut Session, frame: Frame) -> Result<(), End> {
    let msg = match frame {
        Frame::Data(_) => return Err(sess.protocol_error("data frame outside an upload").await),
        Frame::Message(bytes) => match decode_client_message(&bytes) {
            Ok(m) => m,
            Err(_) => return Err(sess.protocol_error("malformed message").await),
        },
    };
    cmd::dispatch(sess, msg).await
}
