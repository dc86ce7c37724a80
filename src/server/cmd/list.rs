//! `list`: a directory in pages, streamed in the order the file system returns it, so a
//! listing of any size costs bounded memory on the server and no frame is unbounded.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::super::session::{End, Session};
use super::reply_storage;
use crate::jail::{RemotePath, StorageError};
use crate::protocol::{Entry, LIST_PAGE_LEN, ServerMessage};

/// A page is cut when its names add up to this many bytes, whatever the entry count, so a
/// page of long, escape-heavy names stays far below the message cap.
const LIST_PAGE_BYTES: usize = 64 * 1024;

enum Page {
    Entries(Vec<Entry>),
    Failed(StorageError),
}

pub(super) async fn run(sess: &mut Session, id: u64, path: RemotePath) -> Result<(), End> {
    let jail = Arc::clone(&sess.jail);
    // Two pages in flight: the reader stays ahead of the network without running away.
    let (tx, mut rx) = mpsc::channel::<Page>(2);
    tokio::task::spawn_blocking(move || {
        let iter = match jail.list(&path) {
            Ok(it) => it,
            Err(e) => {
                let _ = tx.blocking_send(Page::Failed(e));
                return;
            }
        };
        let mut page = Vec::new();
        let mut bytes = 0;
        for entry in iter {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    let _ = tx.blocking_send(Page::Failed(e));
                    return;
                }
            };
            bytes += entry.name.len() * 6 + 96;
            page.push(entry);
            if page.len() >= LIST_PAGE_LEN || bytes >= LIST_PAGE_BYTES {
                if tx
                    .blocking_send(Page::Entries(std::mem::take(&mut page)))
                    .is_err()
                {
                    return; // the session is gone
                }
                bytes = 0;
            }
        }
        if !page.is_empty() {
            let _ = tx.blocking_send(Page::Entries(page));
        }
    });
    let mut count: u64 = 0;
    while let Some(page) = rx.recv().await {
        match page {
            Page::Entries(entries) => {
                count += entries.len() as u64;
                sess.send(&ServerMessage::Entries { id, entries }).await?;
            }
            Page::Failed(e) => return reply_storage(sess, id, "list", &e).await,
        }
    }
    sess.send(&ServerMessage::ok_count(id, count)).await
}
