//! `copy`: a server-side copy, committed like an upload (by the core, through the storage):
//! a temp beside the target, hashed while written, fsynced, renamed without overwrite unless
//! asked, directory fsynced, held to the user's limits. Long copies report `progress`; the
//! client may `cancel` (nothing appears then, unless the commit had begun: then it lands and
//! the reply is `ok`).

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::super::session::{End, Session};
use super::{Step, reply_core, step_or_cancel};
use crate::protocol::{ErrorCode, ServerMessage, hex_digest};
use crate::service::CoreError;
use crate::storage::{RemotePath, StorageError};

pub(super) async fn run(
    sess: &mut Session,
    id: u64,
    from: RemotePath,
    to: RemotePath,
    overwrite: bool,
) -> Result<(), End> {
    let (tx, mut progress) = mpsc::channel::<u64>(4);
    let report = Box::new(move |bytes| {
        // A report that finds the channel full is simply skipped: a later one follows.
        let _ = tx.try_send(bytes);
    });
    let cancel = CancellationToken::new();
    let home = sess.home.clone();
    let work = home.copy(&from, &to, overwrite, Some(report), cancel.clone());
    tokio::pin!(work);
    let copied = loop {
        match step_or_cancel(sess, id, work.as_mut(), &mut progress).await? {
            Step::Cancelled => {
                // The copy stops unless its commit has begun; either way its answer follows.
                cancel.cancel();
                break work.await;
            }
            Step::Progress(bytes) => {
                sess.send(&ServerMessage::Progress { id, bytes }).await?;
            }
            Step::Done(copied) => break copied,
        }
    };
    match copied {
        Ok(Some(c)) => {
            let sha = match c.sha256 {
                Some(d) => hex_digest(&d),
                None => return Err(End::Internal("the store copied without a digest".into())),
            };
            sess.send(&ServerMessage::ok_transfer(id, c.size, sha))
                .await
        }
        Ok(None) => {
            let msg = ServerMessage::error(Some(id), ErrorCode::Cancelled, "copy cancelled");
            sess.send(&msg).await
        }
        Err(CoreError::Storage(StorageError::Io(e)))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            let msg = ServerMessage::error(
                Some(id),
                ErrorCode::SizeMismatch,
                "source changed on the server during the copy",
            );
            sess.send(&msg).await
        }
        Err(e) => reply_core(sess, id, "copy", &e).await,
    }
}
