//! Listing a directory in pages, for every front-end: ferry/1 streams all pages of one
//! listing; a web page or an S3 `ListObjectsV2` hands the token to its client and gets it
//! back with the next request.

use super::{CoreError, Home};
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
