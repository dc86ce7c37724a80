//! One file per command. Each handler validates its input, does the work on the blocking pool
//! (file system calls block), and sends exactly one final reply.

mod copy;
mod get;
mod list;
mod mkdir;
mod partial;
mod put;
mod remove;
mod rename;
mod rmdir;
mod sha256;
mod stat;
mod usage;

use super::error::{path_reply, storage_reply};
use super::session::{End, Session};
use crate::jail::{RemotePath, StorageError};
use crate::protocol::{ClientMessage, ErrorCode, ServerMessage};

/// Runs one request to its final reply, then writes its audit line if it moved or changed
/// data. `Err` ends the session.
pub(super) async fn dispatch(sess: &mut Session, msg: ClientMessage) -> Result<(), End> {
    let audited = match &msg {
        ClientMessage::Get { id, path, .. } | ClientMessage::Put { id, path, .. } => {
            Some((*id, msg.op(), path.clone()))
        }
        ClientMessage::Copy { id, from, to, .. } | ClientMessage::Rename { id, from, to, .. } => {
            Some((*id, msg.op(), format!("{from} -> {to}")))
        }
        ClientMessage::Mkdir { id, path }
        | ClientMessage::Rmdir { id, path }
        | ClientMessage::Remove { id, path } => Some((*id, msg.op(), path.clone())),
        _ => None,
    };
    if !matches!(msg, ClientMessage::Put { .. }) {
        // Every request sees the effects of the ones before it: uploads waiting for the
        // group commit are committed first. (Puts may join the group: one to a name another
        // waiting upload takes is refused at the commit, as it would have been in order.)
        sess.flush_unsynced().await?;
    }
    let started = std::time::Instant::now();
    sess.last_final = None;
    let result = run(sess, msg).await;
    if let Some((id, op, path)) = audited {
        match sess.unsynced.last_mut() {
            // A put waiting for its group commit: its audit line goes out with its reply.
            Some(u) if u.id == id => u.audit = Some(AuditInfo { op, path, started }),
            _ => audit(sess, id, op, &path, started, &result),
        }
    }
    result
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
    if matches!(
        msg,
        ClientMessage::Get { .. }
            | ClientMessage::Put { .. }
            | ClientMessage::Sha256 { .. }
            | ClientMessage::Copy { .. }
    ) {
        // Moving data needs buffers of its own: argon2's warm memory must not add to them.
        sess.server.memory.login.release();
    }
    match msg {
        ClientMessage::Stat { id, path } => stat::run(sess, id, path).await,
        ClientMessage::List { id, path } => list::run(sess, id, path).await,
        ClientMessage::Get {
            id,
            path,
            offset,
            prefix_sha256,
        } => get::run(sess, id, path, offset, prefix_sha256).await,
        ClientMessage::Put {
            id,
            path,
            size,
            overwrite,
            offset,
            prefix_sha256,
        } => put::run(sess, id, path, size, overwrite, offset, prefix_sha256).await,
        ClientMessage::Partial { id, path } => partial::run(sess, id, path).await,
        ClientMessage::Sha256 { id, path } => sha256::run(sess, id, path).await,
        ClientMessage::Copy {
            id,
            from,
            to,
            overwrite,
        } => copy::run(sess, id, from, to, overwrite).await,
        ClientMessage::Usage { id } => usage::run(sess, id).await,
        // A cancel that arrives between requests names nothing running: ignore it.
        ClientMessage::Cancel { .. } => Ok(()),
        ClientMessage::Mkdir { id, path } => mkdir::run(sess, id, path).await,
        ClientMessage::Rmdir { id, path } => rmdir::run(sess, id, path).await,
        ClientMessage::Remove { id, path } => remove::run(sess, id, path).await,
        ClientMessage::Rename {
            id,
            from,
            to,
            overwrite,
        } => rename::run(sess, id, from, to, overwrite).await,
        ClientMessage::Hello { .. } => Err(sess.protocol_error("hello sent twice").await),
        ClientMessage::Login { id, .. } => {
            let msg = ServerMessage::error(Some(id), ErrorCode::BadRequest, "already logged in");
            sess.send(&msg).await
        }
        ClientMessage::End { .. } | ClientMessage::Abort { .. } => {
            Err(sess.protocol_error("end or abort outside an upload").await)
        }
    }
}

/// What a long request's loop sees next: its worker's next message, or the client's cancel.
pub(super) enum Next<T> {
    /// The worker's next message (`None`: the worker ended).
    Work(Option<T>),
    /// The client cancelled this request.
    Cancelled,
}

/// Waits for the worker of request `id` while watching the connection for a `cancel`; other
/// frames that arrive meanwhile are kept for later requests (up to a bound, then the session
/// simply stops reading until this request is done).
pub(super) async fn next_or_cancel<T>(
    sess: &mut Session,
    id: u64,
    rx: &mut tokio::sync::mpsc::Receiver<T>,
) -> Result<Next<T>, End> {
    loop {
        let frame = tokio::select! {
            msg = rx.recv() => return Ok(Next::Work(msg)),
            frame = sess.reader.read_frame(), if sess.can_read_ahead() => frame,
        };
        match frame {
            Ok(Some(f)) => {
                if sess.absorb(f, id) {
                    return Ok(Next::Cancelled);
                }
            }
            Ok(None) => return Err(End::ClientGone),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The partial-upload key of `path` for `user`: partials are per user and per target.
pub(super) fn partial_key(user: &str, path: &RemotePath) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(user.as_bytes());
    h.update([0]);
    h.update(path.to_string().as_bytes());
    crate::protocol::hex_digest(&h.finalize())[..32].to_string()
}

/// Runs blocking file system work on the blocking pool.
pub(super) async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(join) => Err(StorageError::Io(std::io::Error::other(join.to_string()))),
    }
}

/// Parses a path from the wire; on failure sends the reply and returns `None`.
pub(super) async fn parse_path(
    sess: &mut Session,
    id: u64,
    raw: &str,
) -> Result<Option<RemotePath>, End> {
    match RemotePath::parse(raw) {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            sess.send(&path_reply(id, &e)).await?;
            Ok(None)
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

/// Refuses a changing request from a read-only user. Returns true if it refused.
pub(super) async fn refuse_read_only(sess: &mut Session, id: u64) -> Result<bool, End> {
    if !sess.read_only {
        return Ok(false);
    }
    let msg = ServerMessage::error(Some(id), ErrorCode::PermissionDenied, "read-only user");
    sess.send(&msg).await?;
    Ok(true)
}

/// Runs a simple changing command: parse, read-only check, one blocking call, one reply.
pub(super) async fn simple_change<F>(
    sess: &mut Session,
    id: u64,
    op: &'static str,
    raw: &str,
    f: F,
) -> Result<(), End>
where
    F: FnOnce(&crate::jail::Jail, &RemotePath) -> Result<(), StorageError> + Send + 'static,
{
    let Some(path) = parse_path(sess, id, raw).await? else {
        return Ok(());
    };
    if refuse_read_only(sess, id).await? {
        return Ok(());
    }
    let jail = std::sync::Arc::clone(&sess.jail);
    match blocking(move || f(&jail, &path)).await {
        Ok(()) => sess.send(&ServerMessage::ok(id)).await,
        Err(e) => reply_storage(sess, id, op, &e).await,
    }
}
