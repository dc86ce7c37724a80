//! `partial`: how much of an interrupted upload to `path` the server kept for this user, so
//! the client knows where a resume starts.

use super::super::session::{End, Session};
use super::{reply_core, reply_storage};
use crate::protocol::ServerMessage;
use crate::storage::{RemotePath, StorageError};

pub(super) async fn run(sess: &mut Session, id: u64, path: RemotePath) -> Result<(), End> {
    match sess.home.partial_len(&path).await {
        Ok(Some(size)) => {
            let mut msg = ServerMessage::ok(id);
            if let ServerMessage::Ok { size: s, .. } = &mut msg {
                *s = Some(size);
            }
            sess.send(&msg).await
        }
        Ok(None) => reply_storage(sess, id, "partial", &StorageError::NotFound).await,
        Err(e) => reply_core(sess, id, "partial", &e).await,
    }
}
