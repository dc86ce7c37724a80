//! `sha256`: the server's digest of a whole file, without sending it. A file whose stored
//! digest still describes it (see [`crate::stored_digest`]) is answered from that at once;
//! others are hashed by the core, and long ones report `progress` every few seconds; the
//! client may `cancel`.

use tokio::sync::mpsc;

use super::super::session::{End, Session};
use super::{Step, reply_core, step_or_cancel};
use crate::protocol::{ErrorCode, ServerMessage, hex_digest};
use crate::service::CoreError;
use crate::storage::{RemotePath, StorageError};

pub(super) async fn run(sess: &mut Session, id: u64, path: RemotePath) -> Result<(), End> {
    let (tx, mut progress) = mpsc::channel::<u64>(4);
    let home = sess.home.clone();
    let work = home.sha256(&path, move |bytes| {
        // A report that finds the channel full is simply skipped: a later one follows.
        let _ = tx.try_send(bytes);
    });
    tokio::pin!(work);
    loop {
        match step_or_cancel(sess, id, work.as_mut(), &mut progress).await? {
            Step::Cancelled => {
                let msg = ServerMessage::error(Some(id), ErrorCode::Cancelled, "sha256 cancelled");
                return sess.send(&msg).await;
            }
            Step::Progress(bytes) => {
                sess.send(&ServerMessage::Progress { id, bytes }).await?;
            }
            Step::Done(Ok((size, sha))) => {
                return sess
                    .send(&ServerMessage::ok_transfer(id, size, hex_digest(&sha)))
                    .await;
            }
            Step::Done(Err(CoreError::Storage(StorageError::Io(e))))
                if e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                let msg = ServerMessage::error(
                    Some(id),
                    ErrorCode::SizeMismatch,
                    "file changed on the server while it was being hashed",
                );
                return sess.send(&msg).await;
            }
            Step::Done(Err(e)) => return reply_core(sess, id, "sha256", &e).await,
        }
    }
}
