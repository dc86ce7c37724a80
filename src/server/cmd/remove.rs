//! `remove`: delete one file, or one symlink (never what it points to).

use std::sync::Arc;

use super::super::session::{End, Session};
use super::{blocking, reply_storage};
use crate::jail::{RemotePath, StorageError};
use crate::protocol::ServerMessage;

pub(super) async fn run(sess: &mut Session, id: u64, path: RemotePath) -> Result<(), End> {
    let jail = Arc::clone(&sess.jail);
    let account = sess.account.clone();
    let removed = blocking(move || {
        if path.is_root() {
            return Err(StorageError::IsADirectory);
        }
        // What goes is measured by the jail right before the unlink, under the change lock,
        // so no other session of the home can make the count wrong in between.
        let _changing = account.as_ref().map(|a| a.changing());
        let gone = jail.remove_file(&path)?;
        if let Some(a) = &account {
            a.remove(gone);
        }
        Ok(())
    })
    .await;
    match removed {
        Ok(()) => sess.send(&ServerMessage::ok(id)).await,
        Err(e) => reply_storage(sess, id, "remove", &e).await,
    }
}
