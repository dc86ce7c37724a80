//! `rename`: move a file or directory within the home. An existing target is refused unless
//! the request asks to overwrite, and the refusal is atomic (no check-then-act race).

use std::sync::Arc;

use super::super::session::{End, Session};
use super::{blocking, parse_path, refuse_read_only, reply_storage};
use crate::jail::StorageError;
use crate::protocol::{EntryKind, ServerMessage};

pub(super) async fn run(
    sess: &mut Session,
    id: u64,
    from: String,
    to: String,
    overwrite: bool,
) -> Result<(), End> {
    let Some(from) = parse_path(sess, id, &from).await? else {
        return Ok(());
    };
    let Some(to) = parse_path(sess, id, &to).await? else {
        return Ok(());
    };
    if refuse_read_only(sess, id).await? {
        return Ok(());
    }
    let jail = Arc::clone(&sess.jail);
    let result = blocking(move || {
        if from.is_root() || to.is_root() {
            return Err(StorageError::PermissionDenied);
        }
        let replaced = if overwrite {
            jail.lstat(&to)
                .ok()
                .filter(|e| e.kind == EntryKind::File)
                .map(|e| e.size)
        } else {
            None
        };
        jail.rename(&from, &to, overwrite)?;
        Ok(replaced)
    })
    .await;
    match result {
        Ok(replaced) => {
            if let (Some(a), Some(n)) = (&sess.account, replaced) {
                a.remove(n, 1);
            }
            sess.send(&ServerMessage::ok(id)).await
        }
        Err(e) => reply_storage(sess, id, "rename", &e).await,
    }
}
