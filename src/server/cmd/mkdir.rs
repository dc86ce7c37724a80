//! `mkdir`: create one directory (its parent must exist).

use super::super::session::{End, Session};

pub(super) async fn run(sess: &mut Session, id: u64, path: String) -> Result<(), End> {
    super::simple_change(sess, id, "mkdir", &path, |jail, p| jail.mkdir(p)).await
}
