//! Listing a directory in pages, for every front-end: ferry/1 streams all pages of one
//! listing; a web page or an S3 `ListObjectsV2` hands the token to its client and gets it
//! back with the next request.

use super::{CoreError, Home};
use crate::domain::Op;
use crate::storage::{LIST_PAGE_MAX, ListLimit, ListPage, ListToken, RemotePath, StorageError};

/// Longest token the core passes to a store: a token comes back from clients, and a store's
/// own are far shorter.
pub const MAX_LIST_TOKEN_LEN: usize = 1024;

impl Home {
    /// One page of the directory `path` (or the entry of a file), from the start or where
    /// `after` left off, within `limit` (at most [`LIST_PAGE_MAX`] entries). Across the pages
    /// of one listing each name appears once, in the store's order; a name present for the
    /// whole listing appears exactly once even while other names come and go. A token of
    /// another directory, or one no store made, is `InvalidArgument`. Server-reserved names
    /// never appear.
    pub async fn list(
        &self,
        path: &RemotePath,
        after: Option<&ListToken>,
        limit: ListLimit,
    ) -> Result<ListPage, CoreError> {
        self.allow_at(Op::List, path)?;
        if after.is_some_and(|t| t.as_str().len() > MAX_LIST_TOKEN_LEN) {
            return Err(StorageError::InvalidArgument.into());
        }
        let limit = ListLimit {
            entries: limit.entries.clamp(1, LIST_PAGE_MAX),
            ..limit
        };
        Ok(self.storage.list_page(path, after, limit).await?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::Quota;
    use crate::storage::local::LocalStorage;

    fn home(dir: &std::path::Path) -> Home {
        let storage = LocalStorage::open(dir, false).unwrap();
        Home::new("alice", Arc::new(storage), None, Quota::default())
    }

    #[tokio::test]
    async fn pages_cover_the_directory_and_refuse_oversized_tokens() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..25 {
            std::fs::write(dir.path().join(format!("f{i}")), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join(".ferry-partials")).unwrap();
        let home = home(dir.path());
        let root = RemotePath::root();
        // A limit of nothing still makes progress: one entry a page.
        let page = home.list(&root, None, ListLimit::entries(0)).await.unwrap();
        assert_eq!(page.entries.len(), 1);
        let mut names: Vec<String> = page.entries.into_iter().map(|e| e.name).collect();
        let mut next = page.next;
        while let Some(token) = next {
            let page = home
                .list(&root, Some(&token), ListLimit::entries(10))
                .await
                .unwrap();
            names.extend(page.entries.into_iter().map(|e| e.name));
            next = page.next;
        }
        names.sort();
        let mut want: Vec<String> = (0..25).map(|i| format!("f{i}")).collect();
        want.sort();
        assert_eq!(names, want);
        let huge = ListToken::from_string("0".repeat(MAX_LIST_TOKEN_LEN + 1));
        assert!(matches!(
            home.list(&root, Some(&huge), ListLimit::entries(10)).await,
            Err(CoreError::Storage(StorageError::InvalidArgument))
        ));
    }

    /// A download link's scope holds in the core, whatever a front-end asks: a file link's
    /// home (the file's folder) reads that file and nothing beside it.
    #[tokio::test]
    async fn a_read_only_one_scope_reads_its_file_and_nothing_beside_it() {
        use crate::domain::Scope;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("report.pdf"), b"linked").unwrap();
        std::fs::write(dir.path().join("sibling.txt"), b"not linked").unwrap();
        let file = home(dir.path()).scoped(Scope::ReadOnlyOne("/report.pdf".into()));
        let report = RemotePath::parse("report.pdf").unwrap();
        let sibling = RemotePath::parse("sibling.txt").unwrap();
        assert_eq!(file.stat(&report).await.unwrap().size, 6);
        assert!(file.open_range(&report, 0, None).await.is_ok());
        let denied = |r: Result<(), CoreError>| matches!(r, Err(CoreError::Denied(_)));
        assert!(denied(file.stat(&sibling).await.map(drop)));
        assert!(denied(file.open_range(&sibling, 0, None).await.map(drop)));
        assert!(denied(file.sha256(&sibling, |_| {}).await.map(drop)));
        assert!(denied(
            file.list(&RemotePath::root(), None, ListLimit::entries(10))
                .await
                .map(drop)
        ));
        assert!(denied(file.usage().await.map(drop)));
        assert!(denied(file.remove(&report).await));
        // A folder link's scope reaches all of its home (the folder), read-only.
        let folder = home(dir.path()).scoped(Scope::ReadOnlyOne("/".into()));
        assert_eq!(
            folder
                .list(&RemotePath::root(), None, ListLimit::entries(10))
                .await
                .unwrap()
                .entries
                .len(),
            2
        );
        assert!(folder.stat(&sibling).await.is_ok());
        assert!(denied(folder.remove(&sibling).await));
        assert!(denied(
            folder.mkdir(&RemotePath::parse("new").unwrap()).await
        ));
    }
}
