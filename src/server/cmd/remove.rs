//! `remove`: delete one file, or one symlink (never what it points to).

use super::super::session::{End, Session};
use super::reply_core;
use crate::protocol::ServerMessage;
use crate::storage::RemotePath;

pub(super) async fn run(sess: &mut Session, id: u64, path: RemotePath) -> Result<(), End> {
    match sess.home.remove(&path).await {
        Ok(()) => sess.send(&ServerMessage::ok(id)).await,
        Err(e) => reply_core(sess, id, "remove", &e).await,
    }
}
