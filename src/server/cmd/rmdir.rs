//! `rmdir`: remove one empty directory. The home itself cannot be removed. A directory counts
//! as a file toward the quota, so removing one gives a file back.

use super::super::session::{End, Session};
use super::reply_core;
use crate::protocol::ServerMessage;
use crate::storage::RemotePath;

pub(super) async fn run(sess: &mut Session, id: u64, path: RemotePath) -> Result<(), End> {
    match sess.home.rmdir(&path).await {
        Ok(()) => sess.send(&ServerMessage::ok(id)).await,
        Err(e) => reply_core(sess, id, "rmdir", &e).await,
    }
}
