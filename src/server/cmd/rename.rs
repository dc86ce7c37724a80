//! `rename`: move a file or directory within the home. An existing target is refused unless
//! the request asks to overwrite, and the refusal is atomic (no check-then-act race).
//!
//! For the quota, what the rename replaced is measured by the jail just before, under the
//! account's change lock: renaming a name onto itself (or onto another name of the same
//! file) replaces nothing, and a directory replaced by one gives its file back.

use super::super::session::{End, Session};
use super::reply_core;
use crate::protocol::ServerMessage;
use crate::storage::RemotePath;

pub(super) async fn run(
    sess: &mut Session,
    id: u64,
    from: RemotePath,
    to: RemotePath,
    overwrite: bool,
) -> Result<(), End> {
    match sess.home.rename(&from, &to, overwrite).await {
        Ok(()) => sess.send(&ServerMessage::ok(id)).await,
        Err(e) => reply_core(sess, id, "rename", &e).await,
    }
}
