//! `rmdir`: remove one empty directory. The home itself cannot be removed.

use super::super::session::{End, Session};
use crate::jail::StorageError;

pub(super) async fn run(sess: &mut Session, id: u64, path: String) -> Result<(), End> {
    super::simple_change(sess, id, "rmdir", &path, |jail, p| {
        if p.is_root() {
            return Err(StorageError::PermissionDenied);
        }
        jail.remove_dir(p)
    })
    .await
}
