//! Listing a directory of 100,000 files, timed, with the growth of the process's peak RSS:
//! through `Storage::list` page by page, and through ferry/1 (server in this process, a raw
//! client that counts pages and keeps none). Benchmarks, so `#[ignore]`d; run one at a time:
//!
//! ```text
//! cargo test --test tests list_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! Written against calls that predate listing through the core, so the same file runs on
//! older trees for a before/after in one sitting.

use std::path::Path;
use std::time::Instant;

use ferry::protocol::{ClientMessage, ServerMessage};
use ferry::storage::local::LocalStorage;
use ferry::storage::{LIST_PAGE_MAX, ListToken, RemotePath, Storage};

use crate::util::TestServer;

const FILES: usize = 100_000;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resets the peak RSS to the current RSS and returns it (KiB).
fn reset_peak() -> u64 {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS");
    status_kib("VmRSS:")
}

fn fill(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..FILES {
        std::fs::write(dir.join(format!("file-{i:06}.dat")), b"").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: 100,000 files"]
async fn list_bench_storage_pages() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let s = LocalStorage::open(&home, true).unwrap();
    fill(&home.join("big"));
    let big = RemotePath::parse("big").unwrap();
    let base = reset_peak();
    let started = Instant::now();
    let (mut count, mut pages) = (0, 0);
    let mut token: Option<ListToken> = None;
    loop {
        let page = s.list(&big, token.as_ref(), LIST_PAGE_MAX).await.unwrap();
        count += page.entries.len();
        pages += 1;
        match page.next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:") - base;
    assert_eq!(count, FILES);
    println!(
        "BENCH storage-pages files={FILES} pages={pages} secs={secs:.3} peak_rss_growth_kib={peak}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: 100,000 files"]
async fn list_bench_ferry1() {
    let server = TestServer::start().await;
    fill(&server.home("alice").join("big"));
    let mut raw = server.raw().await;
    raw.login("alice", "alice-pw").await;
    let base = reset_peak();
    let started = Instant::now();
    raw.send(&ClientMessage::List {
        id: 2,
        path: "/big".into(),
    })
    .await;
    let (mut count, mut pages) = (0, 0);
    let total = loop {
        match raw.recv().await {
            ServerMessage::Entries { id: 2, entries } => {
                count += entries.len() as u64;
                pages += 1;
            }
            ServerMessage::Ok {
                id: 2,
                count: Some(n),
                ..
            } => break n,
            other => panic!("unexpected {other:?}"),
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:") - base;
    assert_eq!((count, total), (FILES as u64, FILES as u64));
    println!(
        "BENCH ferry1-list files={FILES} pages={pages} secs={secs:.3} peak_rss_growth_kib={peak}"
    );
}
