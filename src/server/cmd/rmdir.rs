//! `rmdir`: remove one empty directory. The home itself cannot be removed. A directory counts
//! as a file toward the quota, so removing one gives a file back.

use super::super::session::{End, Session};
use crate::jail::{RemotePath, StorageError};

pub(super) async fn run(sess: &mut Session, id: u64, path: RemotePath) -> Result<(), End> {
    let account = sess.account.clone();
    super::simple_change(sess, id, "rmdir", path, move |jail, p| {
        if p.is_root() {
            return Err(StorageError::PermissionDenied);
        }
        let _changing = account.as_ref().map(|a| a.changing());
        let gone = jail.remove_dir(p)?;
        if let Some(a) = &account {
            a.remove(gone);
        }
        Ok(())
    })
    .await
}
