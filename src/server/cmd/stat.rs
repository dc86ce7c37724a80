//! `stat`: metadata of one path, following a final symlink as long as it stays in the home.

use super::super::session::{End, Session};
use super::reply_core;
use crate::protocol::ServerMessage;
use crate::storage::RemotePath;

pub(super) async fn run(sess: &mut Session, id: u64, path: RemotePath) -> Result<(), End> {
    match sess.home.stat(&path).await {
        Ok(entry) => sess.send(&ServerMessage::ok_entry(id, entry)).await,
        Err(e) => reply_core(sess, id, "stat", &e).await,
    }
}
