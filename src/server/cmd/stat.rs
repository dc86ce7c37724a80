//! `stat`: metadata of one path, following a final symlink as long as it stays in the home.

use std::sync::Arc;

use super::super::session::{End, Session};
use super::{blocking, reply_storage};
use crate::jail::RemotePath;
use crate::protocol::ServerMessage;

pub(super) async fn run(sess: &mut Session, id: u64, path: RemotePath) -> Result<(), End> {
    let jail = Arc::clone(&sess.jail);
    match blocking(move || jail.stat(&path)).await {
        Ok(entry) => sess.send(&ServerMessage::ok_entry(id, entry)).await,
        Err(e) => reply_storage(sess, id, "stat", &e).await,
    }
}
