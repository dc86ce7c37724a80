//! `mkdir`: create one directory (its parent must exist). A directory counts as a file toward
//! the quota (as inode quotas count them), so a home cannot fill up with millions of them:
//! it is refused once the file quota is reached.

use std::sync::Arc;

use super::super::session::{End, Session};
use super::{blocking, quota_reply, reply_storage};
use crate::jail::{Footprint, RemotePath, StorageError};
use crate::protocol::ServerMessage;

/// What one directory takes.
const ONE_DIR: Footprint = Footprint { bytes: 0, files: 1 };

pub(super) async fn run(sess: &mut Session, id: u64, path: RemotePath) -> Result<(), End> {
    let jail = Arc::clone(&sess.jail);
    let account = sess.account.clone();
    let limits = sess.limits;
    let made = blocking(move || {
        let _changing = account.as_ref().map(|a| a.changing());
        let reservation = match &account {
            Some(a) => match a.reserve(&limits, 0, 0, true) {
                Ok(r) => Some(r),
                Err(refused) => return Ok(Err(refused)),
            },
            None => None,
        };
        jail.mkdir(&path)?;
        if let Some(r) = reservation {
            r.commit(ONE_DIR, Footprint::NONE);
        }
        Ok::<_, StorageError>(Ok(()))
    })
    .await;
    match made {
        Ok(Ok(())) => sess.send(&ServerMessage::ok(id)).await,
        Ok(Err(refused)) => sess.send(&quota_reply(id, &refused, 0)).await,
        Err(e) => reply_storage(sess, id, "mkdir", &e).await,
    }
}
