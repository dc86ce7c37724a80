//! One file per command. Each handler validates its input, does the work on the blocking pool
//! (file system calls block), and sends exactly one final reply.

mod copy;
mod get;
mod list;
mod mkdir;
mod partial;
pub(super) mod put;
mod remove;
mod rename;
mod rmdir;
mod sha256;
mod stat;
mod usage;

use super::error::{path_reply, storage_reply};
use super::session::{End, Session};
use crate::domain::Op;
use crate::domain::hex_digest;
use crate::protocol::{ClientMessage, ErrorCode, ServerMessage};
use crate::service::CoreError;
use crate::storage::{PathError, RemotePath, StorageError};

/// Runs one request to its final reply, then writes its audit line if it moved or changed
/// data. `Err` ends the session.
pub(super) async fn dispatch(sess: &mut Session, msg: ClientMessage) -> Result<(), End> {
    let audited = request_op(&msg)
        .filter(|(_, op, _)| op.audited())
        .and_then(|(id, op, _)| {
            let path = match msg.paths() {
                [Some(from), Some(to)] => format!("{from} -> {to}"),
                [Some(path), None] => path.to_string(),
                _ => return None,
            };
            Some((id, op.name(), path))
        });
    // Every request sees the effects of the ones before it: uploads waiting for the group
    // commit are committed first. Small puts may join the group instead (one to a name
    // another waiting upload takes is refused at the commit, as it would have been in
    // order); a large one flushes first, so earlier replies do not wait for it, and that
    // flush is part of the put (its time and, if the flush fails, its audit line).
    let flush = match &msg {
        ClientMessage::Put { size, offset, .. } if put::flushes_first(*size, *offset) => {
            Flush::AsPartOfThisRequest
        }
        ClientMessage::Put { .. } => Flush::No,
        _ => Flush::First,
    };
    if flush == Flush::First {
        sess.flush_unsynced().await?;
    }
    let started = std::time::Instant::now();
    sess.last_final = None;
    let result = match flush {
        Flush::AsPartOfThisRequest => match sess.flush_unsynced().await {
            Ok(()) => run(sess, msg).await,
            Err(end) => Err(end),
        },
        _ => run(sess, msg).await,
    };
    if let Some((id, op, path)) = audited {
        match sess.unsynced.last_mut() {
            // A put waiting for its group commit: its audit line goes out with its reply.
            Some(u) if u.id == id => u.audit = Some(AuditInfo { op, path, started }),
            _ => audit(sess, id, op, &path, started, &result),
        }
    }
    result
}

/// When a request commits the uploads waiting for the group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flush {
    /// Before it starts.
    First,
    /// As its own first step (a large put).
    AsPartOfThisRequest,
    /// Not at all: it may join the group (a small put).
    No,
}

/// The request id, the core operation and whether it asks to replace an existing file, for
/// every message that is a request of the core (`None` for session-level messages).
fn request_op(msg: &ClientMessage) -> Option<(u64, Op, bool)> {
    Some(match *msg {
        ClientMessage::Stat { id, .. } => (id, Op::Stat, false),
        ClientMessage::List { id, .. } => (id, Op::List, false),
        ClientMessage::Get { id, .. } => (id, Op::Get, false),
        ClientMessage::Put { id, overwrite, .. } => (id, Op::Put, overwrite),
        ClientMessage::Partial { id, .. } => (id, Op::Partial, false),
        ClientMessage::Sha256 { id, .. } => (id, Op::Sha256, false),
        ClientMessage::Copy { id, overwrite, .. } => (id, Op::Copy, overwrite),
        ClientMessage::Usage { id } => (id, Op::Usage, false),
        ClientMessage::Mkdir { id, .. } => (id, Op::Mkdir, false),
        ClientMessage::Rmdir { id, .. } => (id, Op::Rmdir, false),
        ClientMessage::Remove { id, .. } => (id, Op::Remove, false),
        ClientMessage::Rename { id, overwrite, .. } => (id, Op::Rename, overwrite),
        ClientMessage::Hello { .. }
        | ClientMessage::Login { .. }
        | ClientMessage::End { .. }
        | ClientMessage::Abort { .. }
        | ClientMessage::Cancel { .. } => return None,
    })
}

/// A core request decoded from ferry/1: every path parsed into the one validated path type.
enum Request {
    Stat(RemotePath),
    List(RemotePath),
    Get {
        path: RemotePath,
        offset: u64,
        prefix_sha256: Option<String>,
    },
    Put {
        path: RemotePath,
        size: u64,
        overwrite: bool,
        offset: u64,
        prefix_sha256: Option<String>,
    },
    Partial(RemotePath),
    Sha256(RemotePath),
    Copy {
        from: RemotePath,
        to: RemotePath,
        overwrite: bool,
    },
    Usage,
    Mkdir(RemotePath),
    Rmdir(RemotePath),
    Remove(RemotePath),
    Rename {
        from: RemotePath,
        to: RemotePath,
        overwrite: bool,
    },
}

/// A message decoded: a core request with its paths parsed (a bad path is the error, the
/// first one in the order the message names them), or a session-level message.
enum Decoded {
    Core {
        id: u64,
        op: Op,
        replace: bool,
        request: Result<Request, PathError>,
    },
    Session(ClientMessage),
}

fn decode(msg: ClientMessage) -> Decoded {
    let Some((id, op, replace)) = request_op(&msg) else {
        return Decoded::Session(msg);
    };
    let p = |raw: &str| RemotePath::parse(raw);
    let two = |from: &str, to: &str| Ok::<_, PathError>((p(from)?, p(to)?));
    let request = match msg {
        ClientMessage::Stat { path, .. } => p(&path).map(Request::Stat),
        ClientMessage::List { path, .. } => p(&path).map(Request::List),
        ClientMessage::Get {
            path,
            offset,
            prefix_sha256,
            ..
        } => p(&path).map(|path| Request::Get {
            path,
            offset,
            prefix_sha256,
        }),
        ClientMessage::Put {
            path,
            size,
            overwrite,
            offset,
            prefix_sha256,
            ..
        } => p(&path).map(|path| Request::Put {
            path,
            size,
            overwrite,
            offset,
            prefix_sha256,
        }),
        ClientMessage::Partial { path, .. } => p(&path).map(Request::Partial),
        ClientMessage::Sha256 { path, .. } => p(&path).map(Request::Sha256),
        ClientMessage::Copy {
            from,
            to,
            overwrite,
            ..
        } => two(&from, &to).map(|(from, to)| Request::Copy {
            from,
            to,
            overwrite,
        }),
        ClientMessage::Usage { .. } => Ok(Request::Usage),
        ClientMessage::Mkdir { path, .. } => p(&path).map(Request::Mkdir),
        ClientMessage::Rmdir { path, .. } => p(&path).map(Request::Rmdir),
        ClientMessage::Remove { path, .. } => p(&path).map(Request::Remove),
        ClientMessage::Rename {
            from,
            to,
            overwrite,
            ..
        } => two(&from, &to).map(|(from, to)| Request::Rename {
            from,
            to,
            overwrite,
        }),
        // request_op named every core request above; nothing else gets here.
        other => return Decoded::Session(other),
    };
    Decoded::Core {
        id,
        op,
        replace,
        request,
    }
}

/// What the audit line of a request needs, kept while its reply waits for a group commit.
#[derive(Debug)]
pub(super) struct AuditInfo {
    pub op: &'static str,
    pub path: String,
    pub started: std::time::Instant,
}

/// One audit line per transfer or change: who, from where, what, how much, the digest, how
/// long, and how it ended. Paths are escaped; nothing secret is in it.
fn audit(
    sess: &Session,
    id: u64,
    op: &'static str,
    path: &str,
    started: std::time::Instant,
    result: &Result<(), End>,
) {
    let fin = sess.last_final.as_ref().filter(|f| f.id == id);
    let outcome = match (fin, result) {
        // Cut off by the end of the shutdown grace period (its reply said `busy`).
        (_, Err(End::Shutdown)) => "interrupted",
        (Some(f), _) => f.result,
        (None, Ok(())) => "ok",
        (None, Err(_)) => "disconnected",
    };
    sess.server
        .metrics
        .audited(op, outcome, fin.and_then(|f| f.size));
    tracing::info!(
        target: "ferry::audit",
        event = "request",
        peer = %sess.peer,
        user = %sess.user,
        op,
        path = %crate::sanitize::for_log(path),
        bytes = fin.and_then(|f| f.size),
        sha256 = fin.and_then(|f| f.sha256.as_deref()),
        ms = started.elapsed().as_millis() as u64,
        result = outcome,
    );
}

/// The audit line of a request whose reply waited for a group commit.
pub(super) fn audit_line(
    sess: &Session,
    a: &AuditInfo,
    bytes: Option<u64>,
    sha256: Option<&str>,
    result: &str,
) {
    sess.server.metrics.audited(a.op, result, bytes);
    tracing::info!(
        target: "ferry::audit",
        event = "request",
        peer = %sess.peer,
        user = %sess.user,
        op = a.op,
        path = %crate::sanitize::for_log(&a.path),
        bytes,
        sha256,
        ms = a.started.elapsed().as_millis() as u64,
        result,
    );
}

async fn run(sess: &mut Session, msg: ClientMessage) -> Result<(), End> {
    // An upload's data follows its request at once: a refused one is read and dropped.
    let put_len = match &msg {
        ClientMessage::Put { size, offset, .. } => Some(size.saturating_sub(*offset)),
        _ => None,
    };
    let (id, op, replace, request) = match decode(msg) {
        Decoded::Core {
            id,
            op,
            replace,
            request,
        } => (id, op, replace, request),
        Decoded::Session(msg) => return session_message(sess, msg).await,
    };
    if matches!(op, Op::Get | Op::Put | Op::Sha256 | Op::Copy) {
        // Moving data needs buffers of its own: argon2's warm memory must not add to them.
        sess.server.memory.login.release();
    }
    let refusal =
        match &request {
            Err(e) => Some(path_reply(id, e)),
            // The operation table: the core checks it on every operation; asked here first so
            // that a refused put is answered before its data, which is then dropped.
            Ok(_) => sess.scope.check(op, replace).err().map(|denied| {
                ServerMessage::error(Some(id), ErrorCode::PermissionDenied, denied.0)
            }),
        };
    if let Some(reply) = refusal {
        sess.send(&reply).await?;
        return match put_len {
            Some(expected) => put::discard(sess, id, expected).await,
            None => Ok(()),
        };
    }
    let Ok(request) = request else {
        return Ok(());
    };
    match request {
        Request::Stat(path) => stat::run(sess, id, path).await,
        Request::List(path) => list::run(sess, id, path).await,
        Request::Get {
            path,
            offset,
            prefix_sha256,
        } => get::run(sess, id, path, offset, prefix_sha256).await,
        Request::Put {
            path,
            size,
            overwrite,
            offset,
            prefix_sha256,
        } => put::run(sess, id, path, size, overwrite, offset, prefix_sha256).await,
        Request::Partial(path) => partial::run(sess, id, path).await,
        Request::Sha256(path) => sha256::run(sess, id, path).await,
        Request::Copy {
            from,
            to,
            overwrite,
        } => copy::run(sess, id, from, to, overwrite).await,
        Request::Usage => usage::run(sess, id).await,
        Request::Mkdir(path) => mkdir::run(sess, id, path).await,
        Request::Rmdir(path) => rmdir::run(sess, id, path).await,
        Request::Remove(path) => remove::run(sess, id, path).await,
        Request::Rename {
            from,
            to,
            overwrite,
        } => rename::run(sess, id, from, to, overwrite).await,
    }
}

/// Messages that are not requests of the core.
async fn session_message(sess: &mut Session, msg: ClientMessage) -> Result<(), End> {
    match msg {
        // A cancel that arrives between requests names nothing running: ignore it.
        ClientMessage::Cancel { .. } => Ok(()),
        ClientMessage::Hello { .. } => Err(sess.protocol_error("hello sent twice").await),
        ClientMessage::Login { id, .. } => {
            let msg = ServerMessage::error(Some(id), ErrorCode::BadRequest, "already logged in");
            sess.send(&msg).await
        }
        ClientMessage::End { .. } | ClientMessage::Abort { .. } => {
            Err(sess.protocol_error("end or abort outside an upload").await)
        }
        // Every core request is decoded before this; answer rather than panic if one is not.
        other => {
            let msg = ServerMessage::error(
                other.id(),
                ErrorCode::BadRequest,
                "request not understood here",
            );
            sess.send(&msg).await
        }
    }
}

/// What a download's loop sees next: its next event, or the client's cancel.
pub(super) enum Next<T> {
    /// The next event.
    Work(T),
    /// The client cancelled this request.
    Cancelled,
}

/// What a long core call's loop sees next.
pub(super) enum Step<T> {
    /// The call ended with this.
    Done(T),
    /// The call reported the bytes done so far.
    Progress(u64),
    /// The client cancelled this request.
    Cancelled,
}

/// Drives the core call `work` of request `id` until it ends, reports progress (sent to
/// `progress` by the call) or the client cancels the request; other frames that arrive
/// meanwhile are kept for later requests (up to a bound, then the session simply stops
/// reading until this request is done). `work` is polled in
/// place, never dropped here: call again to go on.
pub(super) async fn step_or_cancel<F: Future>(
    sess: &mut Session,
    id: u64,
    mut work: std::pin::Pin<&mut F>,
    progress: &mut tokio::sync::mpsc::Receiver<u64>,
) -> Result<Step<F::Output>, End> {
    loop {
        let frame = tokio::select! {
            out = work.as_mut() => return Ok(Step::Done(out)),
            Some(bytes) = progress.recv() => return Ok(Step::Progress(bytes)),
            frame = sess.reader.read_frame(), if sess.can_read_ahead() => frame,
        };
        match frame {
            Ok(Some(f)) => {
                if sess.absorb(f, id) {
                    return Ok(Step::Cancelled);
                }
            }
            Ok(None) => return Err(End::ClientGone),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The reply for an upload or copy that does not fit the user's limits.
pub(super) fn quota_reply(id: u64, refused: &super::quota::Refused, size: u64) -> ServerMessage {
    match refused {
        super::quota::Refused::TooLarge(max) => ServerMessage::error(
            Some(id),
            ErrorCode::TooLarge,
            format!("a file of {size} bytes exceeds your maximum file size of {max} bytes"),
        ),
        super::quota::Refused::Quota("file quota") => ServerMessage::error(
            Some(id),
            ErrorCode::QuotaExceeded,
            "one more file or directory would exceed your file quota",
        ),
        super::quota::Refused::Quota(which) => ServerMessage::error(
            Some(id),
            ErrorCode::QuotaExceeded,
            format!("a file of {size} bytes would exceed your {which}"),
        ),
    }
}

/// Sends the reply for a storage error.
pub(super) async fn reply_storage(
    sess: &mut Session,
    id: u64,
    op: &str,
    err: &StorageError,
) -> Result<(), End> {
    let msg = storage_reply(id, err, sess.peer, &sess.user, op);
    sess.send(&msg).await
}

/// The ferry/1 reply for a core error: the one place a [`CoreError`] becomes wire.
pub(super) async fn reply_core(
    sess: &mut Session,
    id: u64,
    op: &str,
    err: &CoreError,
) -> Result<(), End> {
    let msg = core_message(id, err, sess.peer, &sess.user, op);
    sess.send(&msg).await
}

/// The ferry/1 message for a core error (see [`reply_core`]).
pub(super) fn core_message(
    id: u64,
    err: &CoreError,
    peer: std::net::SocketAddr,
    user: &str,
    op: &str,
) -> ServerMessage {
    use crate::service::ResumeRefused;
    match err {
        CoreError::Storage(e) => storage_reply(id, e, peer, user, op),
        CoreError::Refused { refused, size } => quota_reply(id, refused, *size),
        CoreError::Denied(why) => ServerMessage::error(Some(id), ErrorCode::PermissionDenied, *why),
        CoreError::ResumeRefused(ResumeRefused::NoPartial) => ServerMessage::error(
            Some(id),
            ErrorCode::NotFound,
            "no partial upload of this file to resume",
        ),
        CoreError::ResumeRefused(ResumeRefused::Short { kept, offset }) => ServerMessage::error(
            Some(id),
            ErrorCode::BadRequest,
            format!("the partial upload holds {kept} bytes; cannot resume at {offset}"),
        ),
        CoreError::ResumeRefused(ResumeRefused::Mismatch { offset, actual }) => {
            ServerMessage::error(
                Some(id),
                ErrorCode::IntegrityMismatch,
                format!(
                    "resume refused: the first {offset} bytes differ (server sha256 {}); \
                     upload the whole file again",
                    hex_digest(actual)
                ),
            )
        }
        CoreError::Unavailable(why) => {
            tracing::error!(%peer, user, op, error = %why, "shared state unavailable");
            ServerMessage::error(
                Some(id),
                ErrorCode::Busy,
                "the server cannot check your usage right now; try again later",
            )
        }
        CoreError::SizeMismatch { declared, received } => ServerMessage::error(
            Some(id),
            ErrorCode::SizeMismatch,
            format!("declared {declared} bytes, received {received}"),
        ),
    }
}
