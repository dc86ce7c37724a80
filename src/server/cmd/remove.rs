//! `remove`: delete one file, or one symlink (never what it points to).

use std::sync::Arc;

use super::super::session::{End, Session};
use super::{blocking, parse_path, refuse_read_only, reply_storage};
use crate::jail::StorageError;
use crate::protocol::{EntryKind, ServerMessage};

pub(super) async fn run(sess: &mut Session, id: u64, path: String) -> Result<(), End> {
    let Some(path) = parse_path(sess, id, &path).await? else {
        return Ok(());
    };
    if refuse_read_only(sess, id).await? {
        return Ok(());
    }
    let jail = Arc::clone(&sess.jail);
    let removed = blocking(move || {
        if path.is_root() {
            return Err(StorageError::IsADirectory);
        }
        // The size is read first for the quota; a race with another session only makes the
        // count drift until the next login recounts.
        let size = jail
            .lstat(&path)
            .ok()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| e.size);
        jail.remove_file(&path)?;
        Ok(size)
    })
    .await;
    match removed {
        Ok(size) => {
            if let (Some(a), Some(n)) = (&sess.account, size) {
                a.remove(n, 1);
            }
            sess.send(&ServerMessage::ok(id)).await
        }
        Err(e) => reply_storage(sess, id, "remove", &e).await,
    }
}
