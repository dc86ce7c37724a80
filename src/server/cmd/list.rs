//! `list`: a directory in pages through the core, each sent as one `entries` message while
//! the core reads the next, so a listing of any size costs the server two pages of memory,
//! reads each entry once, and no frame is unbounded.

use super::super::session::{End, Session};
use super::reply_core;
use crate::protocol::{LIST_PAGE_LEN, ServerMessage};
use crate::service::CoreError;
use crate::storage::{ListLimit, RemotePath, StorageError};

/// A page is cut when its names add up to this many bytes, whatever the entry count, so a
/// page of long, escape-heavy names stays far below the message cap.
const LIST_PAGE_BYTES: usize = 64 * 1024;

/// What one name byte can take on the wire: JSON escapes a control character as `\u00XX`.
const WIRE_BYTES_PER_NAME_BYTE: usize = 6;

/// What an entry's other fields and punctuation take on the wire, at most.
const WIRE_BYTES_PER_ENTRY: usize = 96;

/// One `entries` message's worth: `LIST_PAGE_LEN` entries, or fewer whose estimated wire size
/// (`6 × name + 96` each) reaches `LIST_PAGE_BYTES`, in the core's units (divided by 6).
const PAGE: ListLimit = ListLimit {
    entries: LIST_PAGE_LEN,
    bytes: LIST_PAGE_BYTES.div_ceil(WIRE_BYTES_PER_NAME_BYTE),
    per_entry: WIRE_BYTES_PER_ENTRY / WIRE_BYTES_PER_NAME_BYTE,
};

pub(super) async fn run(sess: &mut Session, id: u64, path: RemotePath) -> Result<(), End> {
    let home = sess.home.clone();
    let mut page = match home.list(&path, None, PAGE).await {
        Ok(page) => page,
        Err(e) => return reply_core(sess, id, "list", &e).await,
    };
    let mut count: u64 = 0;
    loop {
        let entries = std::mem::take(&mut page.entries);
        let next = page.next.take();
        count += entries.len() as u64;
        let send = async {
            if entries.is_empty() {
                return Ok(());
            }
            sess.send(&ServerMessage::Entries { id, entries }).await
        };
        // The next page is read while this one goes out.
        let read = async {
            match &next {
                Some(token) => Some(home.list(&path, Some(token), PAGE).await),
                None => None,
            }
        };
        let (sent, read) = tokio::join!(send, read);
        sent?;
        page = match read {
            None => break,
            Some(Ok(page)) => page,
            // The token is the server's own, so a refusal means the directory it was taken
            // in is gone (replaced under its name) since the listing began.
            Some(Err(CoreError::Storage(StorageError::InvalidArgument))) => {
                let gone = CoreError::Storage(StorageError::NotFound);
                return reply_core(sess, id, "list", &gone).await;
            }
            Some(Err(e)) => return reply_core(sess, id, "list", &e).await,
        };
    }
    sess.send(&ServerMessage::ok_count(id, count)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;
    use crate::storage::local::LocalStorage;

    /// Page sizes by the rule ferry/1 had before listing moved onto the core: a page ends at
    /// `LIST_PAGE_LEN` entries or after the entry that brings `6 × name + 96` to 64 KiB.
    fn wire_rule(lens: &[usize]) -> Vec<usize> {
        let mut sizes = Vec::new();
        let (mut n, mut bytes) = (0, 0);
        for len in lens {
            n += 1;
            bytes += len * 6 + 96;
            if n >= LIST_PAGE_LEN || bytes >= LIST_PAGE_BYTES {
                sizes.push(n);
                (n, bytes) = (0, 0);
            }
        }
        if n > 0 {
            sizes.push(n);
        }
        sizes
    }

    #[tokio::test]
    async fn pages_end_where_they_ended_before_the_core() {
        let dir = tempfile::tempdir().unwrap();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly long names, so the byte budget cuts most pages; some short ones.
            let len = if i % 4 == 0 {
                5 + (x % 20)
            } else {
                150 + (x % 106)
            } as usize;
            let name = format!("{i:04}{}", "x".repeat(len - 4));
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let store = LocalStorage::open(dir.path(), false).unwrap();
        let root = RemotePath::root();
        let (mut sizes, mut lens, mut at) = (Vec::new(), Vec::new(), None);
        loop {
            let page = store.list_page(&root, at.as_ref(), PAGE).await.unwrap();
            sizes.push(page.entries.len());
            lens.extend(page.entries.iter().map(|e| e.name.len()));
            match page.next {
                Some(n) => at = Some(n),
                None => break,
            }
        }
        assert_eq!(lens.len(), 3000);
        assert!(sizes.len() > 20, "{sizes:?}");
        assert_eq!(sizes, wire_rule(&lens));
    }
}
