//! `usage`: space used and available, for the client's `df`.

use std::sync::Arc;

use super::super::session::{End, Session};
use super::{blocking, reply_storage};
use crate::protocol::{ServerMessage, Usage};

pub(super) async fn run(sess: &mut Session, id: u64) -> Result<(), End> {
    let jail = Arc::clone(&sess.jail);
    match blocking(move || jail.disk_space()).await {
        Ok((free, total)) => {
            let mut usage = match &sess.account {
                Some(a) => a.usage(&sess.limits),
                None => Usage::default(),
            };
            usage.disk_free_bytes = Some(free);
            usage.disk_total_bytes = Some(total);
            sess.send(&ServerMessage::ok_usage(id, usage)).await
        }
        Err(e) => reply_storage(sess, id, "usage", &e).await,
    }
}
