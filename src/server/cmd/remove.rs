//! `remove`: delete one file, or one symlink (never what it points to).

use super::super::session::{End, Session};
use crate::jail::StorageError;

pub(super) async fn run(sess: &mut Session, id: u64, path: String) -> Result<(), End> {
    super::simple_change(sess, id, "remove", &path, |jail, p| {
        if p.is_root() {
            return Err(StorageError::IsADirectory);
        }
        jail.remove_file(p)
    })
    .await
}
