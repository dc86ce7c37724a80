//! `rename`: move a file or directory within the home. An existing target is refused unless
//! the request asks to overwrite, and the refusal is atomic (no check-then-act race).
//!
//! For the quota, what the rename replaced is measured by the jail just before, under the
//! account's change lock: renaming a name onto itself (or onto another name of the same
//! file) replaces nothing, and a directory replaced by one gives its file back.

use std::sync::Arc;

use super::super::session::{End, Session};
use super::{blocking, reply_storage};
use crate::jail::{RemotePath, StorageError};
use crate::protocol::ServerMessage;

pub(super) async fn run(
    sess: &mut Session,
    id: u64,
    from: RemotePath,
    to: RemotePath,
    overwrite: bool,
) -> Result<(), End> {
    let jail = Arc::clone(&sess.jail);
    let account = sess.account.clone();
    let result = blocking(move || {
        if from.is_root() || to.is_root() {
            return Err(StorageError::PermissionDenied);
        }
        let _changing = account.as_ref().map(|a| a.changing());
        let replaced = jail.rename(&from, &to, overwrite)?;
        if let Some(a) = &account {
            a.remove(replaced);
        }
        Ok(())
    })
    .await;
    match result {
        Ok(()) => sess.send(&ServerMessage::ok(id)).await,
        Err(e) => reply_storage(sess, id, "rename", &e).await,
    }
}
