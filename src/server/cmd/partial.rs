//! `partial`: how much of an interrupted upload to `path` the server kept for this user, so
//! the client knows where a resume starts.

use std::sync::Arc;

use super::super::session::{End, Session};
use super::{blocking, partial_key, reply_storage};
use crate::jail::{RemotePath, StorageError};
use crate::protocol::ServerMessage;

pub(super) async fn run(sess: &mut Session, id: u64, path: RemotePath) -> Result<(), End> {
    let key = partial_key(&sess.user, &path);
    let jail = Arc::clone(&sess.jail);
    match blocking(move || jail.partial_size(&key)).await {
        Ok(Some(size)) => {
            let mut msg = ServerMessage::ok(id);
            if let ServerMessage::Ok { size: s, .. } = &mut msg {
                *s = Some(size);
            }
            sess.send(&msg).await
        }
        Ok(None) => reply_storage(sess, id, "partial", &StorageError::NotFound).await,
        Err(e) => reply_storage(sess, id, "partial", &e).await,
    }
}
