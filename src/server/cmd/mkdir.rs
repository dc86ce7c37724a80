//! `mkdir`: create one directory (its parent must exist). A directory counts as a file toward
//! the quota (as inode quotas count them), so a home cannot fill up with millions of them:
//! it is refused once the file quota is reached.

use super::super::session::{End, Session};
use super::reply_core;
use crate::protocol::ServerMessage;
use crate::storage::RemotePath;

pub(super) async fn run(sess: &mut Session, id: u64, path: RemotePath) -> Result<(), End> {
    match sess.home.mkdir(&path).await {
        Ok(()) => sess.send(&ServerMessage::ok(id)).await,
        Err(e) => reply_core(sess, id, "mkdir", &e).await,
    }
}
