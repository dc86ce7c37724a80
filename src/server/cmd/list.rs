//! `list`: a directory in pages through the core, each sent as one `entries` message while
//! the core reads the next, so a listing of any size costs the server two pages of memory,
//! reads each entry once, and no frame is unbounded.

use super::super::session::{End, Session};
use super::reply_core;
use crate::jail::RemotePath;
use crate::protocol::{LIST_PAGE_LEN, ServerMessage};
use crate::storage::ListLimit;

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
            Some(Err(e)) => return reply_core(sess, id, "list", &e).await,
        };
    }
    sess.send(&ServerMessage::ok_count(id, count)).await
}
