//! `usage`: space used and available, for the client's `df`.

use super::super::session::{End, Session};
use super::reply_core;
use crate::protocol::ServerMessage;

pub(super) async fn run(sess: &mut Session, id: u64) -> Result<(), End> {
    match sess.home.usage().await {
        Ok(usage) => sess.send(&ServerMessage::ok_usage(id, usage)).await,
        Err(e) => reply_core(sess, id, "usage", &e).await,
    }
}
