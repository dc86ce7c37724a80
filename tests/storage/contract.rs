//! The `Storage` contract: what every backend keeps, written once against the trait. A
//! backend proves itself by running it unchanged:
//!
//! ```ignore
//! async fn make() -> Home { /* a fresh, empty home of the backend */ }
//! storage_contract!(make);
//! ```
//!
//! which expands to one named `#[tokio::test]` per test below. Only what an object store can
//! keep too is asserted: visibility only after a commit (or its flush), nothing left by an
//! abort or a dropped upload, listing pages (each name once, tokens bound to their directory,
//! names that stay put listed once while others change), single-threaded no-replace. Rename
//! atomicity and no-replace under a race are not part of it.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ferry::domain::EntryKind;
use ferry::jail::PathError;
use ferry::storage::{
    Commit, CopyOptions, Fetched, Footprint, LIST_PAGE_MAX, Landed, Landing, ListLimit, ListToken,
    PartialKey, ReadEvent, ReadOptions, RemotePath, Resume, SMALL_MAX, Sha256Digest, SmallOptions,
    Staged, Storage, StorageError, Upload, UploadOptions,
};
use sha2::Digest;

/// A fresh, empty home of the backend under test, and whatever must live as long as it (a
/// temp dir, a bucket prefix to clean up).
pub struct Home {
    pub store: Arc<dyn Storage>,
    _keep: Box<dyn Any + Send>,
}

impl Home {
    pub fn new(store: Arc<dyn Storage>, keep: impl Any + Send) -> Home {
        Home {
            store,
            _keep: Box::new(keep),
        }
    }
}

/// One `#[tokio::test]` per contract test, each on a fresh home from `$make` (an async fn
/// returning a [`Home`]).
///
/// A backend that needs a real component names it in its module and passes an attribute for
/// every test: `storage_contract!(make, #[ignore = "needs garage; .ci/run installs it"]);`.
macro_rules! storage_contract {
    ($make:path $(, #[$attr:meta])?) => {
        $crate::storage::contract::storage_contract!(@tests [$(#[$attr])?] $make;
            stat_root_is_a_directory,
            stat_missing_is_not_found,
            small_put_get_round_trip,
            small_put_refuses_over_the_limit,
            small_put_mismatch_leaves_nothing,
            small_put_no_replace_and_replace,
            small_put_into_a_directory_or_nowhere,
            get_small_of_a_larger_file_streams_it,
            mkdir_and_its_refusals,
            remove_file_and_its_refusals,
            remove_dir_and_its_refusals,
            rename_file_and_directory,
            rename_no_replace_and_replace,
            copy_and_its_refusals,
            copy_refuses_a_source_of_another_size,
            dropped_copy_leaves_nothing_or_the_whole,
            concurrent_work_on_distinct_names,
            upload_appears_only_at_commit,
            commits_at_the_next_free_name_never_replace,
            upload_of_nothing,
            size_hint_is_only_a_hint,
            upload_commit_with_another_digest_leaves_nothing,
            upload_abort_leaves_nothing,
            dropped_upload_leaves_nothing,
            upload_no_replace_at_begin_and_at_commit,
            upload_refusals_at_begin,
            admit_sees_the_target_and_can_refuse,
            placed_is_told_once_when_the_object_is_in_place,
            small_put_reserve_sees_the_target_and_can_refuse,
            keep_partial_then_resume_continues,
            resume_at_an_earlier_offset_cuts_the_rest,
            resume_refusals_keep_the_partial,
            fresh_upload_supersedes_a_partial,
            rewind_drops_what_came_after_the_mark,
            kept_partial_names_its_length_and_digest,
            listing_pages_give_every_name_once,
            listing_limits_and_tokens,
            listing_tokens_are_bound_to_their_directory,
            listing_while_the_directory_changes,
            listing_within_a_byte_budget,
            listing_a_file_or_nothing,
            hostile_names_are_refused_or_kept_as_data,
            deep_and_long_paths_stay_data,
            ranged_reads,
            batched_commits_then_one_flush,
            flush_refuses_a_foreign_staged_commit,
            recorded_digest_matches_when_present,
            reads_end_with_the_content_digest_recorded_or_not,
            usage_counts_files_directories_and_partials,
            sweep_removes_only_old_partials,
            space_is_sane_when_known,
        );
    };
    (@tests $attrs:tt $make:path; $($name:ident),* $(,)?) => {
        $(
            $crate::storage::contract::storage_contract!(@one $attrs $make; $name);
        )*
    };
    (@one [$($attr:tt)*] $make:path; $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $($attr)*
        async fn $name() {
            $crate::storage::contract::$name($make().await).await;
        }
    };
}
pub(crate) use storage_contract;

// ---- helpers ----

fn p(s: &str) -> RemotePath {
    RemotePath::parse(s).unwrap()
}

fn sha(data: &[u8]) -> Sha256Digest {
    sha2::Sha256::digest(data).into()
}

/// Deterministic bytes (xorshift), so a failure reproduces.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn key(s: &str) -> PartialKey {
    PartialKey::new(s).unwrap()
}

/// A durable whole-file put of a small file.
async fn put(s: &dyn Storage, path: &str, bytes: &[u8]) {
    let put = s
        .put_small(
            &p(path),
            Bytes::copy_from_slice(bytes),
            SmallOptions::default(),
            Commit::new(sha(bytes), true),
        )
        .await
        .unwrap();
    assert!(matches!(put.landed, Landed::Committed(_)), "{path}");
}

/// Streams `bytes` through an upload in chunks of `chunk` bytes and commits it durably.
async fn upload(s: &dyn Storage, path: &str, bytes: &[u8], chunk: usize) {
    let options = UploadOptions {
        size_hint: Some(bytes.len() as u64),
        ..UploadOptions::default()
    };
    let mut up = s.begin_upload(&p(path), options).await.unwrap();
    write_all(up.as_mut(), bytes, chunk).await;
    let digest = up.finish().await.unwrap();
    assert_eq!(digest, sha(bytes));
    let landed = up.commit(Commit::new(digest, true)).await.unwrap();
    assert!(matches!(landed, Landed::Committed(_)), "{path}");
}

async fn write_all(up: &mut dyn Upload, bytes: &[u8], chunk: usize) {
    for c in bytes.chunks(chunk.max(1)) {
        up.write(Bytes::copy_from_slice(c)).await.unwrap();
    }
}

/// Uploads `bytes` to `path` and keeps them as the partial `k` instead of committing; returns
/// how much the store kept: a prefix of what was written, all of it or (where the store
/// resumes only at part boundaries) less.
async fn keep(s: &dyn Storage, path: &str, bytes: &[u8], k: &PartialKey) -> usize {
    let mut up = s
        .begin_upload(&p(path), UploadOptions::default())
        .await
        .unwrap();
    write_all(up.as_mut(), bytes, 256 * 1024).await;
    up.keep_partial(k.clone()).await.unwrap();
    let kept = s
        .partial_len(k)
        .await
        .unwrap()
        .expect("a kept partial is found") as usize;
    assert!(kept <= bytes.len(), "kept {kept} of {}", bytes.len());
    kept
}

/// The whole content of a file, through a download.
async fn read(s: &dyn Storage, path: &str) -> Vec<u8> {
    let mut d = s
        .open_read(&p(path), ReadOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let (out, _) = drain(d.as_mut()).await;
    assert_eq!(out.len() as u64, d.stat().entry.size);
    out
}

/// All data of a download, and its final digest.
async fn drain(d: &mut dyn ferry::storage::Download) -> (Vec<u8>, Option<Sha256Digest>) {
    let mut out = Vec::new();
    loop {
        match d.next().await.unwrap() {
            ReadEvent::Data(b) => out.extend_from_slice(&b),
            ReadEvent::Progress(_) => {}
            ReadEvent::End { sha256 } => return (out, sha256),
            ReadEvent::PrefixMismatch { .. } => panic!("unexpected prefix mismatch"),
        }
    }
}

/// Every name of a directory, through all pages, in byte order (a store lists in its own).
async fn names(s: &dyn Storage, path: &str) -> Vec<String> {
    let mut all = listed(s, path).await;
    all.sort();
    all
}

/// Every name of a directory, through all pages, in the store's order.
async fn listed(s: &dyn Storage, path: &str) -> Vec<String> {
    let mut all = Vec::new();
    let mut token: Option<ListToken> = None;
    loop {
        let page = s
            .list(&p(path), token.as_ref(), LIST_PAGE_MAX)
            .await
            .unwrap();
        all.extend(page.entries.into_iter().map(|e| e.name));
        match page.next {
            Some(t) => {
                // A listing that does not advance must fail here, not run forever.
                assert!(token.as_ref() != Some(&t), "the token did not advance");
                assert!(all.len() < 100_000, "listing runs away");
                token = Some(t);
            }
            None => return all,
        }
    }
}

fn is<T>(r: Result<T, StorageError>, want: fn(&StorageError) -> bool, what: &str) {
    match r {
        Ok(_) => panic!("{what}: succeeded"),
        Err(e) => assert!(want(&e), "{what}: {e:?}"),
    }
}

fn invalid_argument(e: &StorageError) -> bool {
    matches!(e, StorageError::InvalidArgument)
}

fn not_found(e: &StorageError) -> bool {
    matches!(e, StorageError::NotFound)
}

fn exists(e: &StorageError) -> bool {
    matches!(e, StorageError::AlreadyExists)
}

/// Asserts nothing is visible under `path`: not by stat, not in its directory's listing, not
/// to a reader.
async fn invisible(s: &dyn Storage, path: &str) {
    let target = p(path);
    is(s.stat(&target).await, not_found, "stat");
    is(
        s.open_read(&target, ReadOptions::default()).await,
        not_found,
        "open_read",
    );
    let parent = target.parent().unwrap().to_string();
    let name = target.file_name().unwrap().to_owned();
    assert!(!names(s, &parent).await.contains(&name), "{path} is listed");
}

// ---- the contract ----

pub async fn stat_root_is_a_directory(h: Home) {
    let st = h.store.stat(&RemotePath::root()).await.unwrap();
    assert_eq!(st.entry.kind, EntryKind::Dir);
    assert_eq!(st.entry.name, "/");
    assert!(
        names(&*h.store, "/").await.is_empty(),
        "a fresh home is empty"
    );
}

pub async fn stat_missing_is_not_found(h: Home) {
    is(h.store.stat(&p("nope")).await, not_found, "stat nope");
    is(h.store.stat(&p("no/pe")).await, not_found, "stat no/pe");
}

pub async fn small_put_get_round_trip(h: Home) {
    let s = &*h.store;
    let bytes = data(10_000, 1);
    put(s, "a.bin", &bytes).await;
    let st = s.stat(&p("a.bin")).await.unwrap();
    assert_eq!((st.entry.kind, st.entry.size), (EntryKind::File, 10_000));
    assert_eq!(st.entry.name, "a.bin");
    match s.get_small(&p("a.bin"), SMALL_MAX).await.unwrap() {
        Fetched::Whole { stat, data, sha256 } => {
            assert_eq!(&data[..], &bytes[..]);
            assert_eq!(sha256, sha(&bytes));
            assert_eq!(stat.entry.size, 10_000);
        }
        other => panic!("{other:?}"),
    }
    // The largest small file, and an empty one.
    let big = data(SMALL_MAX as usize, 2);
    put(s, "max.bin", &big).await;
    assert_eq!(read(s, "max.bin").await, big);
    put(s, "empty", b"").await;
    match s.get_small(&p("empty"), SMALL_MAX).await.unwrap() {
        Fetched::Whole { data, sha256, .. } => {
            assert!(data.is_empty());
            assert_eq!(sha256, sha(b""));
        }
        other => panic!("{other:?}"),
    }
    is(
        s.get_small(&p("missing"), SMALL_MAX).await,
        not_found,
        "get_small missing",
    );
}

pub async fn small_put_refuses_over_the_limit(h: Home) {
    let s = &*h.store;
    let bytes = data(SMALL_MAX as usize + 1, 3);
    let r = s
        .put_small(
            &p("big"),
            Bytes::from(bytes.clone()),
            SmallOptions::default(),
            Commit::new(sha(&bytes), true),
        )
        .await;
    is(
        r,
        |e| matches!(e, StorageError::InvalidArgument),
        "put_small over SMALL_MAX",
    );
    invisible(s, "big").await;
}

pub async fn small_put_mismatch_leaves_nothing(h: Home) {
    let s = &*h.store;
    let put = s
        .put_small(
            &p("m"),
            Bytes::from_static(b"hello"),
            SmallOptions::default(),
            Commit::new(sha(b"other"), true),
        )
        .await
        .unwrap();
    match put.landed {
        Landed::Mismatch { actual } => assert_eq!(actual, sha(b"hello")),
        other => panic!("{other:?}"),
    }
    invisible(s, "m").await;
    assert!(names(s, "/").await.is_empty());
}

pub async fn small_put_no_replace_and_replace(h: Home) {
    let s = &*h.store;
    put(s, "f", b"first").await;
    let r = s
        .put_small(
            &p("f"),
            Bytes::from_static(b"second"),
            SmallOptions::default(),
            Commit::new(sha(b"second"), true),
        )
        .await;
    is(r, exists, "no-replace put_small over a file");
    assert_eq!(read(s, "f").await, b"first");
    let put = s
        .put_small(
            &p("f"),
            Bytes::from_static(b"second!"),
            SmallOptions::default(),
            Commit::new(sha(b"second!"), false),
        )
        .await
        .unwrap();
    assert_eq!(put.replaces, Footprint { bytes: 5, files: 1 });
    match put.landed {
        Landed::Committed(c) => assert_eq!(c.replaced, Footprint { bytes: 5, files: 1 }),
        other => panic!("{other:?}"),
    }
    assert_eq!(read(s, "f").await, b"second!");
    assert_eq!(names(s, "/").await, ["f"]);
}

pub async fn small_put_into_a_directory_or_nowhere(h: Home) {
    let s = &*h.store;
    s.mkdir(&p("d")).await.unwrap();
    let is_dir: fn(&StorageError) -> bool = |e| matches!(e, StorageError::IsADirectory);
    for (path, want) in [("d", is_dir), ("/", is_dir), ("missing/f", not_found)] {
        let r = s
            .put_small(
                &p(path),
                Bytes::from_static(b"x"),
                SmallOptions::default(),
                Commit::new(sha(b"x"), false),
            )
            .await;
        is(r, want, path);
    }
    assert_eq!(names(s, "/").await, ["d"]);
    assert!(names(s, "d").await.is_empty());
}

pub async fn get_small_of_a_larger_file_streams_it(h: Home) {
    let s = &*h.store;
    let bytes = data(300_000, 4);
    upload(s, "big", &bytes, 65_536).await;
    match s.get_small(&p("big"), SMALL_MAX).await.unwrap() {
        Fetched::Larger(mut d) => {
            assert_eq!(d.stat().entry.size, 300_000);
            let (out, digest) = drain(d.as_mut()).await;
            assert_eq!(out, bytes);
            assert_eq!(digest, Some(sha(&bytes)));
        }
        other => panic!("{other:?}"),
    }
    // A smaller limit than the file streams too.
    put(s, "small", &data(1000, 5)).await;
    assert!(matches!(
        s.get_small(&p("small"), 999).await.unwrap(),
        Fetched::Larger(_)
    ));
}

pub async fn mkdir_and_its_refusals(h: Home) {
    let s = &*h.store;
    s.mkdir(&p("d")).await.unwrap();
    s.mkdir(&p("d/e")).await.unwrap();
    let st = s.stat(&p("d/e")).await.unwrap();
    assert_eq!(st.entry.kind, EntryKind::Dir);
    is(s.mkdir(&p("d")).await, exists, "mkdir twice");
    put(s, "f", b"x").await;
    is(s.mkdir(&p("f")).await, exists, "mkdir over a file");
    is(s.mkdir(&p("x/y")).await, not_found, "mkdir without parent");
    is(s.mkdir(&RemotePath::root()).await, exists, "mkdir /");
    assert_eq!(names(s, "/").await, ["d", "f"]);
    assert_eq!(names(s, "d").await, ["e"]);
}

pub async fn remove_file_and_its_refusals(h: Home) {
    let s = &*h.store;
    put(s, "f", b"12345").await;
    s.mkdir(&p("d")).await.unwrap();
    let gone = s.remove_file(&p("f")).await.unwrap();
    assert_eq!(gone, Footprint { bytes: 5, files: 1 });
    invisible(s, "f").await;
    is(s.remove_file(&p("f")).await, not_found, "remove twice");
    is(
        s.remove_file(&p("d")).await,
        |e| matches!(e, StorageError::IsADirectory),
        "remove_file of a dir",
    );
    assert_eq!(names(s, "/").await, ["d"]);
}

pub async fn remove_dir_and_its_refusals(h: Home) {
    let s = &*h.store;
    s.mkdir(&p("d")).await.unwrap();
    s.mkdir(&p("full")).await.unwrap();
    put(s, "full/f", b"x").await;
    put(s, "f", b"x").await;
    s.remove_dir(&p("d")).await.unwrap();
    is(s.stat(&p("d")).await, not_found, "removed dir");
    is(s.remove_dir(&p("d")).await, not_found, "rmdir twice");
    is(
        s.remove_dir(&p("full")).await,
        |e| matches!(e, StorageError::DirectoryNotEmpty),
        "rmdir non-empty",
    );
    is(
        s.remove_dir(&p("f")).await,
        |e| matches!(e, StorageError::NotADirectory),
        "rmdir of a file",
    );
    is(
        s.remove_dir(&RemotePath::root()).await,
        |e| matches!(e, StorageError::PermissionDenied),
        "rmdir /",
    );
    assert_eq!(names(s, "/").await, ["f", "full"]);
    assert_eq!(read(s, "full/f").await, b"x");
}

pub async fn rename_file_and_directory(h: Home) {
    let s = &*h.store;
    put(s, "a", b"aaa").await;
    s.rename(&p("a"), &p("b"), true).await.unwrap();
    invisible(s, "a").await;
    assert_eq!(read(s, "b").await, b"aaa");
    s.mkdir(&p("d")).await.unwrap();
    s.mkdir(&p("d/sub")).await.unwrap();
    put(s, "d/sub/f", b"deep").await;
    s.rename(&p("d"), &p("e"), true).await.unwrap();
    is(s.stat(&p("d")).await, not_found, "old dir");
    assert_eq!(read(s, "e/sub/f").await, b"deep");
    s.rename(&p("b"), &p("e/b"), true).await.unwrap();
    assert_eq!(names(s, "e").await, ["b", "sub"]);
    is(
        s.rename(&p("missing"), &p("x"), true).await,
        not_found,
        "rename missing",
    );
    is(
        s.rename(&p("e/b"), &p("nowhere/b"), true).await,
        not_found,
        "rename into a missing dir",
    );
    assert_eq!(names(s, "/").await, ["e"]);
}

pub async fn rename_no_replace_and_replace(h: Home) {
    let s = &*h.store;
    put(s, "a", b"aaa").await;
    put(s, "b", b"bb").await;
    is(
        s.rename(&p("a"), &p("b"), true).await,
        exists,
        "no-replace rename",
    );
    assert_eq!(read(s, "a").await, b"aaa");
    assert_eq!(read(s, "b").await, b"bb");
    let replaced = s.rename(&p("a"), &p("b"), false).await.unwrap();
    assert_eq!(replaced, Footprint { bytes: 2, files: 1 });
    assert_eq!(read(s, "b").await, b"aaa");
    assert_eq!(names(s, "/").await, ["b"]);
}

pub async fn copy_and_its_refusals(h: Home) {
    let s = &*h.store;
    let bytes = data(700_000, 6);
    upload(s, "src", &bytes, 100_000).await;
    let progress = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&progress);
    let options = CopyOptions {
        no_replace: true,
        progress: Some(Box::new(move |n| seen.store(n, Ordering::Relaxed))),
        ..CopyOptions::default()
    };
    let copied = s.copy(&p("src"), &p("dst"), options).await.unwrap();
    assert_eq!(copied.size, 700_000);
    assert_eq!(copied.replaced, Footprint::NONE);
    if let Some(d) = copied.sha256 {
        assert_eq!(d, sha(&bytes));
    }
    assert!(progress.load(Ordering::Relaxed) <= 700_000);
    assert_eq!(read(s, "dst").await, bytes);
    assert_eq!(read(s, "src").await, bytes);
    let plain = |no_replace| CopyOptions {
        no_replace,
        ..CopyOptions::default()
    };
    put(s, "other", b"other").await;
    is(
        s.copy(&p("other"), &p("dst"), plain(true)).await,
        exists,
        "no-replace copy",
    );
    assert_eq!(read(s, "dst").await, bytes);
    let copied = s.copy(&p("other"), &p("dst"), plain(false)).await.unwrap();
    assert_eq!(
        copied.replaced,
        Footprint {
            bytes: 700_000,
            files: 1
        }
    );
    assert_eq!(read(s, "dst").await, b"other");
    is(
        s.copy(&p("missing"), &p("x"), plain(false)).await,
        not_found,
        "copy missing",
    );
    s.mkdir(&p("d")).await.unwrap();
    is(
        s.copy(&p("d"), &p("x"), plain(false)).await,
        |e| matches!(e, StorageError::IsADirectory),
        "copy a dir",
    );
    is(
        s.copy(&p("src"), &p("d"), plain(false)).await,
        |e| matches!(e, StorageError::IsADirectory),
        "copy onto a dir",
    );
    assert_eq!(names(s, "/").await, ["d", "dst", "other", "src"]);
}

/// `expect_size`: the caller sized its reservation from an earlier look at the source; a
/// source that holds another size when the store opens it is refused (kind `UnexpectedEof`)
/// before anything is written, and the target is left as it was.
pub async fn copy_refuses_a_source_of_another_size(h: Home) {
    let s = &*h.store;
    put(s, "src", &data(5000, 7)).await;
    put(s, "dst", b"old").await;
    for (want, no_replace) in [(4999, true), (5001, false), (0, false), (u64::MAX, false)] {
        let options = CopyOptions {
            no_replace,
            expect_size: Some(want),
            admit: Some(Box::new(|_| panic!("admit asked for a refused copy"))),
            ..CopyOptions::default()
        };
        match s.copy(&p("src"), &p("dst"), options).await {
            Err(StorageError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            other => panic!("expect_size {want}: {:?}", other.map(|c| c.size)),
        }
        let options = CopyOptions {
            expect_size: Some(want),
            ..CopyOptions::default()
        };
        match s.copy(&p("src"), &p("new"), options).await {
            Err(StorageError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            other => panic!("expect_size {want}: {:?}", other.map(|c| c.size)),
        }
    }
    assert_eq!(read(s, "dst").await, b"old");
    assert_eq!(names(s, "/").await, ["dst", "src"]);
    // The size it has: copied.
    let options = CopyOptions {
        no_replace: true,
        expect_size: Some(5000),
        ..CopyOptions::default()
    };
    assert_eq!(
        s.copy(&p("src"), &p("new"), options).await.unwrap().size,
        5000
    );
}

pub async fn upload_appears_only_at_commit(h: Home) {
    let s = &*h.store;
    let bytes = data(2_500_000, 7);
    let options = UploadOptions {
        size_hint: Some(bytes.len() as u64),
        no_replace: true,
        landing: Landing::Exact,
        supersede: None,
    };
    let mut up = s.begin_upload(&p("f"), options).await.unwrap();
    invisible(s, "f").await;
    write_all(up.as_mut(), &bytes[..1_000_000], 256 * 1024).await;
    assert_eq!(up.written(), 1_000_000);
    invisible(s, "f").await;
    write_all(up.as_mut(), &bytes[1_000_000..], 256 * 1024).await;
    assert_eq!(up.written(), 2_500_000);
    let digest = up.finish().await.unwrap();
    assert_eq!(digest, sha(&bytes));
    invisible(s, "f").await;
    assert!(
        names(s, "/").await.is_empty(),
        "nothing listed before the commit"
    );
    let landed = up.commit(Commit::new(digest, true)).await.unwrap();
    assert!(matches!(landed, Landed::Committed(_)));
    assert_eq!(names(s, "/").await, ["f"]);
    assert_eq!(s.stat(&p("f")).await.unwrap().entry.size, 2_500_000);
    assert_eq!(read(s, "f").await, bytes);
}

/// A drop link's commit: a taken name is neither replaced nor refused; the object lands at
/// the next free numbered name, which the store reports, for a small put and an upload alike,
/// and at the name itself when it is free.
pub async fn commits_at_the_next_free_name_never_replace(h: Home) {
    let s = &*h.store;
    put(s, "r.pdf", b"first").await;
    let small = s
        .put_small(
            &p("r.pdf"),
            Bytes::from_static(b"second"),
            SmallOptions::default(),
            Commit::new(sha(b"second"), true).at_next_free_name(),
        )
        .await
        .unwrap();
    match small.landed {
        Landed::Committed(c) => assert_eq!(c.name.as_deref(), Some("r (1).pdf")),
        _ => panic!("not committed"),
    }
    let bytes = data(700_000, 3);
    let options = UploadOptions {
        size_hint: Some(bytes.len() as u64),
        no_replace: true,
        landing: Landing::NextFreeName,
        supersede: None,
    };
    let mut up = s.begin_upload(&p("r.pdf"), options).await.unwrap();
    assert_eq!(up.replaces(), Footprint::NONE);
    write_all(up.as_mut(), &bytes, 256 * 1024).await;
    let digest = up.finish().await.unwrap();
    match up
        .commit(Commit::new(digest, true).at_next_free_name())
        .await
        .unwrap()
    {
        Landed::Committed(c) => assert_eq!(c.name.as_deref(), Some("r (2).pdf")),
        _ => panic!("not committed"),
    }
    assert_eq!(read(s, "r.pdf").await, b"first");
    assert_eq!(read(s, "r (1).pdf").await, b"second");
    assert_eq!(read(s, "r (2).pdf").await, bytes);
    let free = s
        .put_small(
            &p("free"),
            Bytes::from_static(b"x"),
            SmallOptions::default(),
            Commit::new(sha(b"x"), true).at_next_free_name(),
        )
        .await
        .unwrap();
    match free.landed {
        Landed::Committed(c) => assert_eq!(c.name, None),
        _ => panic!("not committed"),
    }
}

pub async fn upload_of_nothing(h: Home) {
    let s = &*h.store;
    let mut up = s
        .begin_upload(&p("empty"), UploadOptions::default())
        .await
        .unwrap();
    let digest = up.finish().await.unwrap();
    assert_eq!(digest, sha(b""));
    up.commit(Commit::new(digest, true)).await.unwrap();
    assert_eq!(read(s, "empty").await, b"");
    // Also with a size hint of zero.
    let options = UploadOptions {
        size_hint: Some(0),
        ..UploadOptions::default()
    };
    let mut up = s.begin_upload(&p("empty2"), options).await.unwrap();
    let digest = up.finish().await.unwrap();
    up.commit(Commit::new(digest, true)).await.unwrap();
    assert_eq!(names(s, "/").await, ["empty", "empty2"]);
}

pub async fn size_hint_is_only_a_hint(h: Home) {
    let s = &*h.store;
    for (i, (hint, size)) in [
        (10u64, 700_000usize),
        (5_000_000, 3),
        (0, 300_000),
        (300_000, 299_999),
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("f{i}");
        let bytes = data(size, 20 + i as u64);
        let options = UploadOptions {
            size_hint: Some(hint),
            ..UploadOptions::default()
        };
        let mut up = s.begin_upload(&p(&path), options).await.unwrap();
        write_all(up.as_mut(), &bytes, 100_000).await;
        let digest = up.finish().await.unwrap();
        assert_eq!(digest, sha(&bytes), "{path}");
        up.commit(Commit::new(digest, true)).await.unwrap();
        assert_eq!(read(s, &path).await, bytes, "{path}");
    }
}

pub async fn upload_commit_with_another_digest_leaves_nothing(h: Home) {
    let s = &*h.store;
    for size in [100usize, 600_000] {
        let bytes = data(size, 8);
        let options = UploadOptions {
            size_hint: Some(size as u64),
            ..UploadOptions::default()
        };
        let mut up = s.begin_upload(&p("f"), options).await.unwrap();
        write_all(up.as_mut(), &bytes, 65_536).await;
        let digest = up.finish().await.unwrap();
        let landed = up.commit(Commit::new(sha(b"else"), true)).await.unwrap();
        match landed {
            Landed::Mismatch { actual } => assert_eq!(actual, digest),
            other => panic!("{other:?}"),
        }
        invisible(s, "f").await;
    }
    assert!(names(s, "/").await.is_empty());
}

pub async fn upload_abort_leaves_nothing(h: Home) {
    let s = &*h.store;
    for (size, at) in [(100usize, 50usize), (3_000_000, 2_000_000), (100, 100)] {
        let bytes = data(size, 9);
        let options = UploadOptions {
            size_hint: Some(size as u64),
            ..UploadOptions::default()
        };
        let mut up = s.begin_upload(&p("f"), options).await.unwrap();
        write_all(up.as_mut(), &bytes[..at], 65_536).await;
        if at == size {
            up.finish().await.unwrap();
        }
        up.abort().await;
        invisible(s, "f").await;
    }
    assert!(names(s, "/").await.is_empty());
    // The name is free for a new upload.
    upload(s, "f", b"fresh", 3).await;
    assert_eq!(read(s, "f").await, b"fresh");
}

pub async fn dropped_upload_leaves_nothing(h: Home) {
    // A crash between write and commit: the upload value is simply gone.
    let s = &*h.store;
    for (size, at) in [(100usize, 60usize), (5_000_000, 4_500_000)] {
        let bytes = data(size, 10);
        let options = UploadOptions {
            size_hint: Some(size as u64),
            ..UploadOptions::default()
        };
        let mut up = s.begin_upload(&p("f"), options).await.unwrap();
        write_all(up.as_mut(), &bytes[..at], 256 * 1024).await;
        drop(up);
        invisible(s, "f").await;
        let mut up = s
            .begin_upload(&p("g"), UploadOptions::default())
            .await
            .unwrap();
        write_all(up.as_mut(), &bytes[..at], 256 * 1024).await;
        up.finish().await.unwrap();
        drop(up);
        invisible(s, "g").await;
    }
    assert!(names(s, "/").await.is_empty());
    upload(s, "f", b"after", 2).await;
    assert_eq!(names(s, "/").await, ["f"]);
}

pub async fn upload_no_replace_at_begin_and_at_commit(h: Home) {
    let s = &*h.store;
    put(s, "f", b"old").await;
    let no_replace = UploadOptions {
        no_replace: true,
        ..UploadOptions::default()
    };
    is(
        s.begin_upload(&p("f"), no_replace.clone()).await,
        exists,
        "begin no-replace over a file",
    );
    // The target appears while the upload runs: the commit refuses, the other file stays.
    let mut up = s.begin_upload(&p("g"), no_replace).await.unwrap();
    up.write(Bytes::from_static(b"mine")).await.unwrap();
    let digest = up.finish().await.unwrap();
    put(s, "g", b"theirs").await;
    is(
        up.commit(Commit::new(digest, true)).await,
        exists,
        "commit no-replace",
    );
    assert_eq!(read(s, "g").await, b"theirs");
    assert_eq!(read(s, "f").await, b"old");
    // With replace, it takes the place of the old file.
    let mut up = s
        .begin_upload(&p("f"), UploadOptions::default())
        .await
        .unwrap();
    assert_eq!(up.replaces(), Footprint { bytes: 3, files: 1 });
    up.write(Bytes::from_static(b"new!")).await.unwrap();
    let digest = up.finish().await.unwrap();
    match up.commit(Commit::new(digest, false)).await.unwrap() {
        Landed::Committed(c) => assert_eq!(c.replaced, Footprint { bytes: 3, files: 1 }),
        other => panic!("{other:?}"),
    }
    assert_eq!(read(s, "f").await, b"new!");
    assert_eq!(names(s, "/").await, ["f", "g"]);
}

pub async fn upload_refusals_at_begin(h: Home) {
    let s = &*h.store;
    s.mkdir(&p("d")).await.unwrap();
    is(
        s.begin_upload(&p("d"), UploadOptions::default()).await,
        |e| matches!(e, StorageError::IsADirectory),
        "upload onto a dir",
    );
    is(
        s.begin_upload(&RemotePath::root(), UploadOptions::default())
            .await,
        |e| matches!(e, StorageError::IsADirectory),
        "upload onto /",
    );
    is(
        s.begin_upload(&p("missing/f"), UploadOptions::default())
            .await,
        not_found,
        "upload without parent",
    );
    // Committing before finish is refused and leaves nothing.
    let mut up = s
        .begin_upload(&p("f"), UploadOptions::default())
        .await
        .unwrap();
    up.write(Bytes::from_static(b"x")).await.unwrap();
    is(
        up.commit(Commit::new(sha(b"x"), true)).await,
        |e| matches!(e, StorageError::InvalidArgument),
        "commit before finish",
    );
    invisible(s, "f").await;
    assert_eq!(names(s, "/").await, ["d"]);
}

pub async fn admit_sees_the_target_and_can_refuse(h: Home) {
    let s = &*h.store;
    put(s, "f", b"12345").await;
    let seen = Arc::new(std::sync::Mutex::new(None));
    let seen2 = Arc::clone(&seen);
    let mut up = s
        .begin_upload(&p("f"), UploadOptions::default())
        .await
        .unwrap();
    up.write(Bytes::from_static(b"replacement")).await.unwrap();
    let digest = up.finish().await.unwrap();
    let commit = Commit::new(digest, false).admit(Box::new(move |replaced| {
        *seen2.lock().unwrap() = Some(replaced);
        Err(StorageError::QuotaExceeded)
    }));
    is(
        up.commit(commit).await,
        |e| matches!(e, StorageError::QuotaExceeded),
        "refused by admit",
    );
    assert_eq!(
        *seen.lock().unwrap(),
        Some(Footprint { bytes: 5, files: 1 })
    );
    assert_eq!(read(s, "f").await, b"12345");
    // For a new name it sees nothing, and an admitted commit lands.
    let seen2 = Arc::clone(&seen);
    let commit = Commit::new(sha(b"n"), true).admit(Box::new(move |replaced| {
        *seen2.lock().unwrap() = Some(replaced);
        Ok(())
    }));
    let put = s
        .put_small(
            &p("n"),
            Bytes::from_static(b"n"),
            SmallOptions::default(),
            commit,
        )
        .await
        .unwrap();
    assert!(matches!(put.landed, Landed::Committed(_)));
    assert_eq!(*seen.lock().unwrap(), Some(Footprint::NONE));
    assert_eq!(names(s, "/").await, ["f", "n"]);
}

pub async fn keep_partial_then_resume_continues(h: Home) {
    let s = &*h.store;
    let whole = data(6_000_000, 11);
    let cut = 5 * 1024 * 1024 + 1000;
    let k = key("abc123");
    let kept = keep(s, "f", &whole[..cut], &k).await;
    invisible(s, "f").await;
    assert!(names(s, "/").await.is_empty(), "a partial is never listed");
    let resume = s
        .resume_upload(
            &k,
            &p("f"),
            kept as u64,
            sha(&whole[..kept]),
            Some(whole.len() as u64),
        )
        .await
        .unwrap();
    let Resume::Ready(mut up) = resume else {
        panic!("{resume:?}");
    };
    assert_eq!(up.written(), kept as u64);
    write_all(up.as_mut(), &whole[kept..], 256 * 1024).await;
    assert_eq!(up.written(), whole.len() as u64);
    let digest = up.finish().await.unwrap();
    assert_eq!(digest, sha(&whole));
    invisible(s, "f").await;
    up.commit(Commit::new(digest, true)).await.unwrap();
    assert_eq!(read(s, "f").await, whole);
    assert_eq!(
        s.partial_len(&k).await.unwrap(),
        None,
        "the partial was used"
    );
    // A small upload can be kept and resumed too.
    let all = b"hello world";
    let kept = keep(s, "g", b"hello ", &key("small")).await;
    let Resume::Ready(mut up) = s
        .resume_upload(
            &key("small"),
            &p("g"),
            kept as u64,
            sha(&all[..kept]),
            Some(11),
        )
        .await
        .unwrap()
    else {
        panic!("small resume");
    };
    up.write(Bytes::copy_from_slice(&all[kept..]))
        .await
        .unwrap();
    let digest = up.finish().await.unwrap();
    assert_eq!(digest, sha(all));
    up.commit(Commit::new(digest, true)).await.unwrap();
    assert_eq!(read(s, "g").await, all);
    assert_eq!(names(s, "/").await, ["f", "g"]);
}

pub async fn resume_at_an_earlier_offset_cuts_the_rest(h: Home) {
    let s = &*h.store;
    let k = key("cut");
    keep(s, "f", b"0123456789", &k).await;
    let want = b"0123ab";
    let mut up = match s
        .resume_upload(&k, &p("f"), 4, sha(b"0123"), None)
        .await
        .unwrap()
    {
        Resume::Ready(up) => up,
        // A store that can cut only at a boundary says where; a resume there works.
        Resume::Short { kept } => {
            assert!(kept <= 4, "{kept}");
            let kept = kept as usize;
            match s
                .resume_upload(&k, &p("f"), kept as u64, sha(&want[..kept]), None)
                .await
                .unwrap()
            {
                Resume::Ready(up) => up,
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    };
    let at = up.written() as usize;
    up.write(Bytes::copy_from_slice(&want[at..])).await.unwrap();
    let digest = up.finish().await.unwrap();
    assert_eq!(digest, sha(want));
    up.commit(Commit::new(digest, true)).await.unwrap();
    assert_eq!(read(s, "f").await, want);
}

pub async fn resume_refusals_keep_the_partial(h: Home) {
    let s = &*h.store;
    let k = key("keep");
    assert!(matches!(
        s.resume_upload(&k, &p("f"), 0, sha(b""), None)
            .await
            .unwrap(),
        Resume::NoPartial
    ));
    let all = b"abcdef!";
    let kept = keep(s, "f", &all[..6], &k).await;
    match s
        .resume_upload(&k, &p("f"), kept as u64 + 1, sha(&all[..kept + 1]), None)
        .await
        .unwrap()
    {
        Resume::Short { kept: k2 } => assert_eq!(k2, kept as u64),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.partial_len(&k).await.unwrap(), Some(kept as u64));
    match s
        .resume_upload(&k, &p("f"), kept as u64, sha(b"xyz"), None)
        .await
        .unwrap()
    {
        Resume::Mismatch { actual, .. } => assert_eq!(actual, sha(&all[..kept])),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.partial_len(&k).await.unwrap(), Some(kept as u64));
    // Still whole: a resume at its full length continues it.
    let Resume::Ready(mut up) = s
        .resume_upload(&k, &p("f"), kept as u64, sha(&all[..kept]), None)
        .await
        .unwrap()
    else {
        panic!("resume at {kept}");
    };
    up.write(Bytes::copy_from_slice(&all[kept..]))
        .await
        .unwrap();
    let digest = up.finish().await.unwrap();
    up.commit(Commit::new(digest, true)).await.unwrap();
    assert_eq!(read(s, "f").await, all);
    // Removing partials.
    let kept = keep(s, "g", b"1234", &key("gone")).await;
    assert_eq!(
        s.remove_partial(&key("gone")).await.unwrap(),
        Some(kept as u64)
    );
    assert_eq!(s.remove_partial(&key("gone")).await.unwrap(), None);
    assert_eq!(s.partial_len(&key("gone")).await.unwrap(), None);
    assert!(PartialKey::new("../x").is_err());
    assert!(PartialKey::new("").is_err());
    assert!(PartialKey::new("a".repeat(129)).is_err());
    assert_eq!(names(s, "/").await, ["f"]);
}

pub async fn fresh_upload_supersedes_a_partial(h: Home) {
    let s = &*h.store;
    let k = key("old");
    let first = keep(s, "f", b"stale", &k).await;
    // A second keep under the same key replaces the first and says what it took.
    let mut up = s
        .begin_upload(&p("f"), UploadOptions::default())
        .await
        .unwrap();
    up.write(Bytes::from_static(b"stale2")).await.unwrap();
    let replaced = up.keep_partial(k.clone()).await.unwrap();
    assert_eq!(
        replaced,
        Footprint {
            bytes: first as u64,
            files: 1
        }
    );
    let second = s.partial_len(&k).await.unwrap().unwrap();
    let options = UploadOptions {
        supersede: Some(k.clone()),
        ..UploadOptions::default()
    };
    let mut up = s.begin_upload(&p("f"), options).await.unwrap();
    assert_eq!(up.superseded(), Some(second));
    assert_eq!(s.partial_len(&k).await.unwrap(), None);
    up.write(Bytes::from_static(b"fresh")).await.unwrap();
    let digest = up.finish().await.unwrap();
    up.commit(Commit::new(digest, true)).await.unwrap();
    // put_small supersedes too.
    let kept = keep(s, "g", b"xy", &key("g")).await;
    let put = s
        .put_small(
            &p("g"),
            Bytes::from_static(b"g"),
            SmallOptions {
                supersede: Some(key("g")),
                reserve: None,
            },
            Commit::new(sha(b"g"), true),
        )
        .await
        .unwrap();
    assert_eq!(put.superseded, Some(kept as u64));
    assert_eq!(s.partial_len(&key("g")).await.unwrap(), None);
    assert_eq!(read(s, "f").await, b"fresh");
    assert_eq!(read(s, "g").await, b"g");
}

pub async fn listing_pages_give_every_name_once(h: Home) {
    let s = &*h.store;
    s.mkdir(&p("big")).await.unwrap();
    let mut want: Vec<String> = (0..2500)
        .map(|i| format!("n{:05}-{}", (i * 7919) % 2500, i % 3))
        .collect();
    // Files and directories both: directories are cheap, files staged and flushed in one go.
    let mut staged = Vec::new();
    for (i, name) in want.iter().enumerate() {
        let path = p(&format!("big/{name}"));
        if i % 5 == 0 {
            let body = name.as_bytes();
            let put = s
                .put_small(
                    &path,
                    Bytes::copy_from_slice(body),
                    SmallOptions::default(),
                    Commit::new(sha(body), true).batched(),
                )
                .await
                .unwrap();
            match put.landed {
                Landed::Staged(st) => staged.push(st),
                Landed::Committed(_) => {}
                other => panic!("{other:?}"),
            }
        } else {
            s.mkdir(&path).await.unwrap();
        }
    }
    for r in s.flush_durability(staged).await {
        r.unwrap();
    }
    want.sort();
    let mut got = Vec::new();
    let mut token = None;
    let mut sizes = Vec::new();
    loop {
        let page = s.list(&p("big"), token.as_ref(), 1000).await.unwrap();
        sizes.push(page.entries.len());
        got.extend(page.entries.into_iter().map(|e| e.name));
        assert!(sizes.len() <= 3, "more pages than names: {sizes:?}");
        match page.next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    assert_eq!(sizes, [1000, 1000, 500]);
    // The store's order, whatever it is, stays the same while nothing changes.
    let again = listed(s, "big").await;
    assert_eq!(
        again, got,
        "the order is stable while the directory is unchanged"
    );
    got.sort();
    assert_eq!(got, want, "every name once");
    // Kinds come through.
    let page = s.list(&p("big"), None, 10).await.unwrap();
    assert_eq!(page.entries.len(), 10);
    assert!(page.next.is_some());
    for e in &page.entries {
        let st = s.stat(&p(&format!("big/{}", e.name))).await.unwrap();
        assert_eq!(st.entry.kind, e.kind, "{}", e.name);
    }
}

pub async fn listing_limits_and_tokens(h: Home) {
    let s = &*h.store;
    for i in 0..(LIST_PAGE_MAX + 5) {
        s.mkdir(&p(&format!("d{i:05}"))).await.unwrap();
    }
    let page = s.list(&RemotePath::root(), None, usize::MAX).await.unwrap();
    assert!(page.entries.len() <= LIST_PAGE_MAX);
    assert!(page.next.is_some());
    // Exactly a page's worth: the last page has no token.
    let page = s.list(&RemotePath::root(), None, 3).await.unwrap();
    let mut seen: Vec<String> = page.entries.iter().map(|e| e.name.clone()).collect();
    assert_eq!(seen.len(), 3);
    let last = s
        .list(&RemotePath::root(), page.next.as_ref(), LIST_PAGE_MAX)
        .await
        .unwrap();
    assert_eq!(last.entries.len(), LIST_PAGE_MAX);
    let tail = s
        .list(&RemotePath::root(), last.next.as_ref(), LIST_PAGE_MAX)
        .await
        .unwrap();
    assert_eq!(tail.entries.len(), 2);
    assert_eq!(tail.next, None);
    seen.extend(
        last.entries
            .iter()
            .chain(&tail.entries)
            .map(|e| e.name.clone()),
    );
    seen.sort();
    let want: Vec<String> = (0..(LIST_PAGE_MAX + 5))
        .map(|i| format!("d{i:05}"))
        .collect();
    assert_eq!(seen, want, "each name once across the pages");
    // A token that no listing gave is refused, not followed.
    let forged = ListToken::from_string("../../etc\0".into());
    is(
        s.list(&RemotePath::root(), Some(&forged), 10).await,
        invalid_argument,
        "a forged token",
    );
    // An empty directory is one empty page.
    s.mkdir(&p("empty")).await.unwrap();
    let page = s.list(&p("empty"), None, 10).await.unwrap();
    assert!(page.entries.is_empty());
    assert_eq!(page.next, None);
}

pub async fn listing_tokens_are_bound_to_their_directory(h: Home) {
    let s = &*h.store;
    for dir in ["a", "b", "a/sub"] {
        s.mkdir(&p(dir)).await.unwrap();
        for i in 0..5 {
            s.mkdir(&p(&format!("{dir}/n{i}"))).await.unwrap();
        }
    }
    let page = s.list(&p("a"), None, 2).await.unwrap();
    let token = page.next.expect("more than one page");
    // It continues its own directory...
    let rest = s.list(&p("a"), Some(&token), 100).await.unwrap();
    assert_eq!(page.entries.len() + rest.entries.len(), 6);
    // ...and no other: not a sibling, a child, the root, or a file.
    put(s, "f", b"x").await;
    for other in ["b", "a/sub", "/", "f"] {
        is(
            s.list(&p(other), Some(&token), 100).await,
            invalid_argument,
            &format!("a token of a/ used for {other}"),
        );
    }
    // Tokens no store made, or a store's bent out of shape, are refused whole.
    let t = token.as_str();
    let mut bent = vec![
        String::new(),
        "0".into(),
        "not a token".into(),
        "\0\u{202E}".into(),
        "x".repeat(100_000),
        format!("{t}0"),
        t[..t.len() - 1].to_string(),
        format!(" {t}"),
    ];
    if t.to_uppercase() != t {
        bent.push(t.to_uppercase());
    }
    for b in bent {
        let forged = ListToken::from_string(b.clone());
        let r = s.list(&p("a"), Some(&forged), 100).await;
        assert!(
            r.as_ref().is_err_and(invalid_argument),
            "garbage token {:?}: {r:?}",
            b.get(..40)
        );
    }
    // A token of a directory that was removed and made again under its name: refused, or
    // at worst a page of the new directory's own names.
    let page = s.list(&p("b"), None, 2).await.unwrap();
    let token = page.next.expect("more than one page");
    for i in 0..5 {
        s.remove_dir(&p(&format!("b/n{i}"))).await.unwrap();
    }
    s.remove_dir(&p("b")).await.unwrap();
    s.mkdir(&p("b")).await.unwrap();
    s.mkdir(&p("b/new")).await.unwrap();
    match s.list(&p("b"), Some(&token), 100).await {
        Err(e) => assert!(invalid_argument(&e), "{e:?}"),
        Ok(page) => {
            for e in &page.entries {
                assert_eq!(e.name, "new");
            }
        }
    }
}

pub async fn listing_while_the_directory_changes(h: Home) {
    let s = &*h.store;
    s.mkdir(&p("d")).await.unwrap();
    // Names that stay for the whole listing, and names that come and go between its pages.
    let stay: Vec<String> = (0..300).map(|i| format!("stay{i:03}")).collect();
    for name in &stay {
        s.mkdir(&p(&format!("d/{name}"))).await.unwrap();
    }
    let mut going: Vec<String> = (0..300).map(|i| format!("go{i:03}")).collect();
    for name in &going {
        put(s, &format!("d/{name}"), name.as_bytes()).await;
    }
    let mut got: Vec<String> = Vec::new();
    let mut token: Option<ListToken> = None;
    let mut round = 0;
    loop {
        let page = s.list(&p("d"), token.as_ref(), 37).await.unwrap();
        got.extend(page.entries.into_iter().map(|e| e.name));
        let Some(t) = page.next else { break };
        token = Some(t);
        round += 1;
        assert!(round < 1000, "listing runs away");
        // Between pages: remove some of the others, add new ones.
        for _ in 0..7 {
            if let Some(name) = going.pop() {
                s.remove_file(&p(&format!("d/{name}"))).await.unwrap();
            }
        }
        for i in 0..11 {
            s.mkdir(&p(&format!("d/new{round:03}-{i}"))).await.unwrap();
        }
    }
    assert!(round > 5, "the listing took {round} pages");
    let mut counts = std::collections::HashMap::new();
    for name in &got {
        *counts.entry(name.as_str()).or_insert(0) += 1;
    }
    for name in &stay {
        assert_eq!(counts.get(name.as_str()), Some(&1), "{name}");
    }
    for (name, n) in counts {
        assert_eq!(n, 1, "{name} listed {n} times");
    }
}

pub async fn listing_within_a_byte_budget(h: Home) {
    let s = &*h.store;
    s.mkdir(&p("d")).await.unwrap();
    for i in 0..40 {
        let name = format!("{i:02}{}", "x".repeat(98));
        s.mkdir(&p(&format!("d/{name}"))).await.unwrap();
    }
    // Names of 100 bytes plus 10 each: a budget of 500 ends a page after its fifth entry.
    let limit = ListLimit {
        entries: 1000,
        bytes: 500,
        per_entry: 10,
    };
    let mut all = Vec::new();
    let mut token: Option<ListToken> = None;
    let mut sizes = Vec::new();
    loop {
        let page = s.list_page(&p("d"), token.as_ref(), limit).await.unwrap();
        sizes.push(page.entries.len());
        all.extend(page.entries.into_iter().map(|e| e.name));
        match page.next {
            Some(t) => token = Some(t),
            None => break,
        }
        assert!(sizes.len() <= 40, "{sizes:?}");
    }
    assert_eq!(sizes, [5; 8]);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 40);
    // A name longer than the whole budget still makes a page of its own.
    let tiny = ListLimit {
        entries: 1000,
        bytes: 1,
        per_entry: 0,
    };
    let page = s.list_page(&p("d"), None, tiny).await.unwrap();
    assert_eq!(page.entries.len(), 1);
    assert!(page.next.is_some());
}

pub async fn listing_a_file_or_nothing(h: Home) {
    let s = &*h.store;
    put(s, "f", b"xyz").await;
    let page = s.list(&p("f"), None, 10).await.unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].name, "f");
    assert_eq!(page.entries[0].size, 3);
    assert_eq!(page.next, None);
    is(
        s.list(&p("missing"), None, 10).await,
        not_found,
        "list missing",
    );
}

pub async fn hostile_names_are_refused_or_kept_as_data(h: Home) {
    let s = &*h.store;
    // Refused by the path type: a store never sees them.
    for (raw, want) in [
        ("..", PathError::ParentDir),
        ("a/../../b", PathError::ParentDir),
        ("a\0b", PathError::Nul),
        ("line\nbreak", PathError::ControlChar),
        ("cr\r", PathError::ControlChar),
        ("esc\x1b[2J", PathError::ControlChar),
        ("bidi\u{202E}txt", PathError::BidiControl),
        ("back\\slash", PathError::Backslash),
        (".ferry-tmp.0", PathError::Reserved),
        (".FERRY-partials/x", PathError::Reserved),
    ] {
        assert_eq!(RemotePath::parse(raw), Err(want), "{raw:?}");
    }
    assert_eq!(
        RemotePath::parse(&"n".repeat(256)),
        Err(PathError::NameTooLong)
    );
    assert_eq!(
        RemotePath::parse(&"a/".repeat(257)),
        Err(PathError::TooDeep)
    );
    // Accepted oddities are names like any other, inside the home.
    let odd = [
        "...",
        "..a",
        "a..",
        " lead and trail ",
        "-rf",
        "ünïcødé 日本語 🙂",
        "\u{200F}rtl-mark",
        "%2e%2e",
        "~",
        "*?[]",
        "'\"$(x)`",
    ];
    for (i, name) in odd.iter().enumerate() {
        let body = format!("body {i}");
        put(s, &format!("/{name}"), body.as_bytes()).await;
        let st = s.stat(&p(name)).await.unwrap();
        assert_eq!(st.entry.name, *name);
        assert_eq!(read(s, name).await, body.as_bytes());
    }
    // An absolute path is the home's root, not the host's.
    put(s, "/etc-passwd", b"mine").await;
    assert_eq!(read(s, "etc-passwd").await, b"mine");
    let mut want: Vec<String> = odd.iter().map(|n| n.to_string()).collect();
    want.push("etc-passwd".into());
    want.sort();
    assert_eq!(
        names(s, "/").await,
        want,
        "exactly what was made, nothing else"
    );
}

pub async fn deep_and_long_paths_stay_data(h: Home) {
    let s = &*h.store;
    let max = "m".repeat(255);
    put(s, &max, b"long name").await;
    assert_eq!(read(s, &max).await, b"long name");
    // 255 nested directories and a file at depth 256 (the deepest path allowed).
    let mut path = String::new();
    for _ in 0..255 {
        path.push_str("/d");
        s.mkdir(&p(&path)).await.unwrap();
    }
    let file = format!("{path}/f");
    put(s, &file, b"deep").await;
    assert_eq!(read(s, &file).await, b"deep");
    assert_eq!(names(s, &path).await, ["f"]);
    assert!(p(&file).join("x").is_err(), "one deeper is refused");
    let mut want = vec!["d".to_string(), max];
    want.sort();
    assert_eq!(names(s, "/").await, want);
}

pub async fn ranged_reads(h: Home) {
    let s = &*h.store;
    let bytes = data(1_000_000, 12);
    upload(s, "f", &bytes, 200_000).await;
    let range = |offset, len: Option<u64>, hash| ReadOptions {
        offset,
        len,
        hash,
        expect_prefix: None,
    };
    for (offset, len) in [
        (0u64, None),
        (1, Some(1)),
        (999_999, None),
        (300_000, Some(400_000)),
        (1_000_000, None),
        (5, Some(0)),
    ] {
        let mut d = s
            .open_read(&p("f"), range(offset, len, false))
            .await
            .unwrap();
        let (out, digest) = drain(d.as_mut()).await;
        let end = len.map_or(1_000_000, |l| offset + l) as usize;
        assert_eq!(out, &bytes[offset as usize..end], "{offset} {len:?}");
        assert_eq!(digest, None);
        // With hashing: the digest is of everything from the start to the range's end.
        let mut d = s
            .open_read(&p("f"), range(offset, len, true))
            .await
            .unwrap();
        let (out, digest) = drain(d.as_mut()).await;
        assert_eq!(out, &bytes[offset as usize..end]);
        assert_eq!(digest, Some(sha(&bytes[..end])), "{offset} {len:?}");
    }
    // A resumed download checks the prefix first.
    let good = ReadOptions {
        offset: 400_000,
        len: None,
        hash: true,
        expect_prefix: Some(sha(&bytes[..400_000])),
    };
    let mut d = s.open_read(&p("f"), good).await.unwrap();
    let (out, digest) = drain(d.as_mut()).await;
    assert_eq!(out, &bytes[400_000..]);
    assert_eq!(digest, Some(sha(&bytes)));
    let bad = ReadOptions {
        expect_prefix: Some(sha(b"not it")),
        ..good
    };
    let mut d = s.open_read(&p("f"), bad).await.unwrap();
    let mut data_seen = false;
    loop {
        match d.next().await.unwrap() {
            ReadEvent::Progress(_) => {}
            ReadEvent::Data(_) => data_seen = true,
            ReadEvent::PrefixMismatch { actual } => {
                assert_eq!(actual, sha(&bytes[..400_000]));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(!data_seen, "no data before a refused prefix");
    assert!(matches!(d.next().await.unwrap(), ReadEvent::End { .. }));
    // Out of range, not a file, not there.
    for (offset, len) in [
        (1_000_001u64, None),
        (0, Some(1_000_001)),
        (999_999, Some(2)),
        (u64::MAX, Some(2)),
    ] {
        is(
            s.open_read(&p("f"), range(offset, len, false)).await,
            |e| matches!(e, StorageError::InvalidArgument),
            "out of range",
        );
    }
    s.mkdir(&p("d")).await.unwrap();
    is(
        s.open_read(&p("d"), ReadOptions::default()).await,
        |e| matches!(e, StorageError::IsADirectory),
        "read a dir",
    );
    is(
        s.open_read(&RemotePath::root(), ReadOptions::default())
            .await,
        |e| matches!(e, StorageError::IsADirectory),
        "read /",
    );
    is(
        s.open_read(&p("missing"), ReadOptions::default()).await,
        not_found,
        "read missing",
    );
}

/// A `placed` call-back that counts its calls and keeps what it was told.
fn placed_probe() -> (
    Arc<std::sync::Mutex<Vec<Footprint>>>,
    ferry::storage::Placed,
) {
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let told2 = Arc::clone(&told);
    let placed: ferry::storage::Placed = Box::new(move |replaced| {
        told2.lock().unwrap().push(replaced);
    });
    (told, placed)
}

pub async fn placed_is_told_once_when_the_object_is_in_place(h: Home) {
    let s = &*h.store;
    put(s, "f", b"123").await;
    // A streamed upload over a file: told once, with what it replaced.
    let (told, placed) = placed_probe();
    let mut up = s
        .begin_upload(&p("f"), UploadOptions::default())
        .await
        .unwrap();
    up.write(Bytes::from_static(b"four")).await.unwrap();
    let digest = up.finish().await.unwrap();
    let landed = up
        .commit(Commit::new(digest, false).placed(placed))
        .await
        .unwrap();
    assert!(matches!(landed, Landed::Committed(_)), "{landed:?}");
    assert_eq!(*told.lock().unwrap(), [Footprint { bytes: 3, files: 1 }]);
    assert_eq!(read(s, "f").await, b"four");

    // Refused by admit, or another digest: never told, nothing changed.
    let (told, placed) = placed_probe();
    let mut up = s
        .begin_upload(&p("f"), UploadOptions::default())
        .await
        .unwrap();
    up.write(Bytes::from_static(b"five!")).await.unwrap();
    let digest = up.finish().await.unwrap();
    let commit = Commit::new(digest, false)
        .admit(Box::new(|_| Err(StorageError::QuotaExceeded)))
        .placed(placed);
    assert!(up.commit(commit).await.is_err());
    let (told2, placed2) = placed_probe();
    let put_small = s
        .put_small(
            &p("f"),
            Bytes::from_static(b"six"),
            SmallOptions::default(),
            Commit::new(sha(b"not six"), false).placed(placed2),
        )
        .await
        .unwrap();
    assert!(matches!(put_small.landed, Landed::Mismatch { .. }));
    assert!(told.lock().unwrap().is_empty());
    assert!(told2.lock().unwrap().is_empty());
    assert_eq!(read(s, "f").await, b"four");

    // Batched: told once by the time the flush returns (not before the commit), and a new
    // name replaces nothing.
    let (told, placed) = placed_probe();
    let put_small = s
        .put_small(
            &p("g"),
            Bytes::from_static(b"gee"),
            SmallOptions::default(),
            Commit::new(sha(b"gee"), true).batched().placed(placed),
        )
        .await
        .unwrap();
    match put_small.landed {
        Landed::Staged(st) => {
            for r in s.flush_durability(vec![st]).await {
                r.unwrap();
            }
        }
        Landed::Committed(_) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(*told.lock().unwrap(), [Footprint::NONE]);
    assert_eq!(read(s, "g").await, b"gee");

    // A staged commit dropped before its flush: never told, nothing visible.
    let (told, placed) = placed_probe();
    let put_small = s
        .put_small(
            &p("h"),
            Bytes::from_static(b"aitch"),
            SmallOptions::default(),
            Commit::new(sha(b"aitch"), true).batched().placed(placed),
        )
        .await
        .unwrap();
    if let Landed::Staged(st) = put_small.landed {
        drop(st);
        assert!(told.lock().unwrap().is_empty());
        invisible(s, "h").await;
    }
}

pub async fn batched_commits_then_one_flush(h: Home) {
    let s = &*h.store;
    s.mkdir(&p("a")).await.unwrap();
    s.mkdir(&p("b")).await.unwrap();
    let mut staged: Vec<Staged> = Vec::new();
    let mut want = Vec::new();
    let mut direct = 0;
    for i in 0..200u64 {
        let path = format!("{}/s{i:03}", if i % 2 == 0 { "a" } else { "b" });
        let body = data(4096 + i as usize, 100 + i);
        let put = s
            .put_small(
                &p(&path),
                Bytes::from(body.clone()),
                SmallOptions::default(),
                Commit::new(sha(&body), true).batched(),
            )
            .await
            .unwrap();
        match put.landed {
            Landed::Staged(st) => staged.push(st),
            Landed::Committed(_) => direct += 1,
            other => panic!("{other:?}"),
        }
        want.push((path, body));
    }
    // Streamed uploads too, small and large (over the group-commit threshold of local).
    for (i, size) in [10_000usize, 900_000, 1_500_000, 3_000_000]
        .into_iter()
        .enumerate()
    {
        let path = format!("a/u{i}");
        let body = data(size, 500 + i as u64);
        let options = UploadOptions {
            size_hint: Some(size as u64),
            ..UploadOptions::default()
        };
        let mut up = s.begin_upload(&p(&path), options).await.unwrap();
        write_all(up.as_mut(), &body, 256 * 1024).await;
        let digest = up.finish().await.unwrap();
        match up
            .commit(Commit::new(digest, true).batched())
            .await
            .unwrap()
        {
            Landed::Staged(st) => staged.push(st),
            Landed::Committed(_) => direct += 1,
            other => panic!("{other:?}"),
        }
        want.push((path, body));
    }
    assert_eq!(staged.len() + direct, 204);
    let results = s.flush_durability(staged).await;
    assert_eq!(results.len() + direct, 204);
    for r in results {
        assert_eq!(r.unwrap().replaced, Footprint::NONE);
    }
    for (path, body) in &want {
        assert_eq!(&read(s, path).await, body, "{path}");
    }
    assert_eq!(names(s, "a").await.len(), 104);
    assert_eq!(names(s, "b").await.len(), 100);
    // A flush of nothing is nothing.
    assert!(s.flush_durability(Vec::new()).await.is_empty());
}

pub async fn flush_refuses_a_foreign_staged_commit(h: Home) {
    let s = &*h.store;
    let body = b"mine";
    let put = s
        .put_small(
            &p("f"),
            Bytes::from_static(body),
            SmallOptions::default(),
            Commit::new(sha(body), true).batched(),
        )
        .await
        .unwrap();
    let mut batch = vec![Staged::new(42u8)];
    let mine = matches!(put.landed, Landed::Staged(_));
    if let Landed::Staged(st) = put.landed {
        batch.push(st);
    }
    let results = s.flush_durability(batch).await;
    assert!(matches!(results[0], Err(StorageError::InvalidArgument)));
    if mine {
        assert!(results[1].is_ok(), "{:?}", results[1]);
    }
    assert_eq!(read(s, "f").await, body);
}

pub async fn recorded_digest_matches_when_present(h: Home) {
    let s = &*h.store;
    let body = data(50_000, 13);
    put(s, "f", &body).await;
    upload(s, "g", &body, 7000).await;
    for name in ["f", "g"] {
        let st = s.stat(&p(name)).await.unwrap();
        if let Some(d) = st.sha256 {
            assert_eq!(d, sha(&body), "{name}");
        }
    }
    // A replaced file never keeps the old record.
    put(s, "h", b"one").await;
    s.put_small(
        &p("h"),
        Bytes::from_static(b"two"),
        SmallOptions::default(),
        Commit::new(sha(b"two"), false),
    )
    .await
    .unwrap();
    if let Some(d) = s.stat(&p("h")).await.unwrap().sha256 {
        assert_eq!(d, sha(b"two"));
    }
}

/// Whatever a store keeps of a committed file's digest, a read's digests (the opened stat's,
/// a whole small fetch's, a hashed read's end, from the start or after a checked prefix) are
/// the content's: of a put, an upload, a copy, and a file replaced since.
pub async fn reads_end_with_the_content_digest_recorded_or_not(h: Home) {
    let s = &*h.store;
    let body = data(400_000, 17);
    put(s, "small", &body[..1000]).await;
    upload(s, "large", &body, 64 * 1024).await;
    let options = CopyOptions {
        no_replace: true,
        ..CopyOptions::default()
    };
    s.copy(&p("large"), &p("copied"), options).await.unwrap();
    upload(s, "replaced", &body[..300_000], 64 * 1024).await;
    let small = Bytes::copy_from_slice(&body[..2000]);
    let commit = Commit::new(sha(&body[..2000]), false);
    let path = p("replaced");
    let r = s.put_small(&path, small, SmallOptions::default(), commit);
    r.await.unwrap();
    for (name, content) in [
        ("small", &body[..1000]),
        ("large", &body[..]),
        ("copied", &body[..]),
        ("replaced", &body[..2000]),
    ] {
        let want = sha(content);
        match s.get_small(&p(name), SMALL_MAX).await.unwrap() {
            Fetched::Whole { stat, data, sha256 } => {
                assert_eq!((&data[..], sha256), (content, want), "{name}");
                assert!(stat.sha256.is_none_or(|d| d == want), "{name}");
            }
            Fetched::Larger(mut d) => {
                assert!(d.stat().sha256.is_none_or(|d| d == want), "{name}");
                let (got, end) = drain(d.as_mut()).await;
                assert_eq!((&got[..], end), (content, Some(want)), "{name}");
            }
            Fetched::Changed => panic!("{name} changed"),
        }
        let whole = ReadOptions {
            hash: true,
            ..ReadOptions::default()
        };
        let mut d = s.open_read(&p(name), whole).await.unwrap();
        assert!(d.stat().sha256.is_none_or(|d| d == want), "{name}");
        let (got, end) = drain(d.as_mut()).await;
        assert_eq!((&got[..], end), (content, Some(want)), "{name}");
        let at = content.len() as u64 / 3;
        let resumed = ReadOptions {
            offset: at,
            len: None,
            hash: true,
            expect_prefix: Some(sha(&content[..at as usize])),
        };
        let mut d = s.open_read(&p(name), resumed).await.unwrap();
        let (got, end) = drain(d.as_mut()).await;
        assert_eq!(
            (&got[..], end),
            (&content[at as usize..], Some(want)),
            "{name}"
        );
    }
}

pub async fn usage_counts_files_directories_and_partials(h: Home) {
    let s = &*h.store;
    let limit = std::time::Duration::from_secs(60);
    assert_eq!(s.usage(limit).await.unwrap(), Footprint::NONE);
    s.mkdir(&p("d")).await.unwrap();
    s.mkdir(&p("d/e")).await.unwrap();
    put(s, "a", &data(1000, 30)).await;
    put(s, "d/e/b", &data(234, 31)).await;
    upload(s, "d/c", &data(700_000, 32), 100_000).await;
    let want = Footprint {
        bytes: 1000 + 234 + 700_000,
        files: 2 + 3,
    };
    assert_eq!(s.usage(limit).await.unwrap(), want);
    // A kept partial takes room until it is used or removed.
    let kept = keep(s, "p", &data(4321, 33), &key("usage")).await;
    let with_partial = want.plus(Footprint {
        bytes: kept as u64,
        files: 1,
    });
    assert_eq!(s.usage(limit).await.unwrap(), with_partial);
    s.remove_partial(&key("usage")).await.unwrap();
    s.remove_file(&p("a")).await.unwrap();
    let less = Footprint {
        bytes: 234 + 700_000,
        files: 4,
    };
    assert_eq!(s.usage(limit).await.unwrap(), less);
}

pub async fn sweep_removes_only_old_partials(h: Home) {
    let s = &*h.store;
    let kept = keep(s, "f", b"12345", &key("sweep")).await as u64;
    let hour = std::time::Duration::from_secs(3600);
    assert_eq!(s.sweep_partials(hour).await.unwrap(), Footprint::NONE);
    assert_eq!(s.partial_len(&key("sweep")).await.unwrap(), Some(kept));
    let swept = s.sweep_partials(std::time::Duration::ZERO).await.unwrap();
    assert_eq!(
        swept,
        Footprint {
            bytes: kept,
            files: 1
        }
    );
    assert_eq!(s.partial_len(&key("sweep")).await.unwrap(), None);
}

pub async fn space_is_sane_when_known(h: Home) {
    if let Some(space) = h.store.space().await.unwrap() {
        assert!(space.free <= space.total, "{space:?}");
        assert!(space.total > 0);
    }
}

pub async fn small_put_reserve_sees_the_target_and_can_refuse(h: Home) {
    let s = &*h.store;
    put(s, "f", b"12345").await;
    let kept = keep(s, "f", b"abc", &key("res")).await as u64;
    let seen = Arc::new(std::sync::Mutex::new(None));
    let seen2 = Arc::clone(&seen);
    let options = SmallOptions {
        supersede: Some(key("res")),
        reserve: Some(Box::new(move |replaced, superseded| {
            *seen2.lock().unwrap() = Some((replaced, superseded));
            Err(StorageError::QuotaExceeded)
        })),
    };
    let r = s
        .put_small(
            &p("f"),
            Bytes::from_static(b"new"),
            options,
            Commit::new(sha(b"new"), false),
        )
        .await;
    is(
        r,
        |e| matches!(e, StorageError::QuotaExceeded),
        "refused by reserve",
    );
    assert_eq!(
        *seen.lock().unwrap(),
        Some((Footprint { bytes: 5, files: 1 }, Some(kept)))
    );
    assert_eq!(read(s, "f").await, b"12345");
    assert_eq!(s.partial_len(&key("res")).await.unwrap(), None);
    // Admitted, it lands.
    let options = SmallOptions {
        supersede: None,
        reserve: Some(Box::new(|_, _| Ok(()))),
    };
    s.put_small(
        &p("f"),
        Bytes::from_static(b"new"),
        options,
        Commit::new(sha(b"new"), false),
    )
    .await
    .unwrap();
    assert_eq!(read(s, "f").await, b"new");
    assert_eq!(names(s, "/").await, ["f"]);
}

pub async fn dropped_copy_leaves_nothing_or_the_whole(h: Home) {
    let s = &*h.store;
    let bytes = data(8_000_000, 40);
    upload(s, "src", &bytes, 256 * 1024).await;
    for (i, wait_ms) in [0u64, 1, 5, 20].into_iter().enumerate() {
        let to = format!("dst{i}");
        let options = CopyOptions {
            no_replace: true,
            ..CopyOptions::default()
        };
        let (from, target) = (p("src"), p(&to));
        let copy = s.copy(&from, &target, options);
        let done = tokio::time::timeout(std::time::Duration::from_millis(wait_ms), copy).await;
        // Whether or not it finished in time, the target is never a part of the source.
        match done {
            Ok(r) => {
                r.unwrap();
                assert_eq!(read(s, &to).await, bytes);
            }
            Err(_) => match s.stat(&p(&to)).await {
                Err(StorageError::NotFound) => {}
                Ok(_) => assert_eq!(read(s, &to).await, bytes, "{to}"),
                Err(e) => panic!("{to}: {e:?}"),
            },
        }
    }
    let listed = names(s, "/").await;
    for name in &listed {
        assert_eq!(read(s, name).await, bytes, "{name}");
    }
}

pub async fn concurrent_work_on_distinct_names(h: Home) {
    let s = &h.store;
    let tasks: Vec<_> = (0..16u64)
        .map(|i| {
            let s = Arc::clone(s);
            tokio::spawn(async move {
                let s = &*s;
                let dir = format!("d{i}");
                s.mkdir(&p(&dir)).await.unwrap();
                let small = data(1000 + i as usize, 50 + i);
                put(s, &format!("{dir}/small"), &small).await;
                let big = data(600_000 + i as usize, 70 + i);
                upload(s, &format!("{dir}/big"), &big, 64 * 1024).await;
                s.rename(
                    &p(&format!("{dir}/small")),
                    &p(&format!("{dir}/moved")),
                    true,
                )
                .await
                .unwrap();
                assert_eq!(read(s, &format!("{dir}/moved")).await, small);
                assert_eq!(read(s, &format!("{dir}/big")).await, big);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(names(s.as_ref(), "/").await.len(), 16);
}

/// `mark` and `rewind`: bytes written after a mark go, the hash is as it was, and the upload
/// goes on from there, on every write path a store has (in memory, streamed, and a large
/// fresh file that a store may write around the page cache), at aligned and odd offsets.
pub async fn rewind_drops_what_came_after_the_mark(h: Home) {
    let s = &*h.store;
    for (i, (size, at, junk)) in [
        (100usize, 40usize, 30usize),
        (3_000_000, 1_000_000, 700_001),
        (9_000_000, 4 * 1024 * 1024, 2 * 1024 * 1024 + 5),
        (9_000_000, 1_048_577, 3_000_000),
        (9_000_000, 0, 1_000_000),
    ]
    .into_iter()
    .enumerate()
    {
        let whole = data(size, 40 + i as u64);
        let name = format!("r{i}");
        let options = UploadOptions {
            size_hint: Some(size as u64),
            ..UploadOptions::default()
        };
        let mut up = s.begin_upload(&p(&name), options).await.unwrap();
        write_all(up.as_mut(), &whole[..at], 256 * 1024).await;
        let mark = up.mark().await.unwrap();
        assert_eq!(mark.written(), at as u64);
        write_all(up.as_mut(), &data(junk, 99), 100_000).await;
        assert_eq!(up.written(), (at + junk) as u64);
        up.rewind(mark).await.unwrap();
        assert_eq!(up.written(), at as u64, "case {i}");
        // A second mark and rewind at the same point, with nothing between.
        let again = up.mark().await.unwrap();
        up.rewind(again).await.unwrap();
        write_all(up.as_mut(), &whole[at..], 256 * 1024).await;
        let digest = up.finish().await.unwrap();
        assert_eq!(
            digest,
            sha(&whole),
            "case {i}: the hash is as it was at the mark"
        );
        up.commit(Commit::new(digest, true)).await.unwrap();
        assert!(read(s, &name).await == whole, "case {i}: content differs");
    }
    // A mark past where the upload stands is refused.
    let mut a = s
        .begin_upload(&p("a"), UploadOptions::default())
        .await
        .unwrap();
    a.write(Bytes::from_static(b"0123456789")).await.unwrap();
    let late = a.mark().await.unwrap();
    let mut b = s
        .begin_upload(&p("b"), UploadOptions::default())
        .await
        .unwrap();
    b.write(Bytes::from_static(b"01")).await.unwrap();
    assert!(matches!(
        b.rewind(late).await,
        Err(StorageError::InvalidArgument)
    ));
}

/// `keep` says what it kept: a resume at that length with that digest continues it.
pub async fn kept_partial_names_its_length_and_digest(h: Home) {
    let s = &*h.store;
    let whole = data(2_000_000, 77);
    let k = key("kept1");
    let mut up = s
        .begin_upload(&p("f"), UploadOptions::default())
        .await
        .unwrap();
    write_all(up.as_mut(), &whole[..1_234_567], 100_000).await;
    let kept = up.keep(k.clone()).await.unwrap();
    assert!(kept.len <= 1_234_567);
    assert_eq!(kept.sha256, sha(&whole[..kept.len as usize]));
    assert_eq!(s.partial_len(&k).await.unwrap(), Some(kept.len));
    let Resume::Ready(mut up) = s
        .resume_upload(&k, &p("f"), kept.len, kept.sha256, Some(whole.len() as u64))
        .await
        .unwrap()
    else {
        panic!("a kept partial resumes at what keep named");
    };
    write_all(up.as_mut(), &whole[kept.len as usize..], 256 * 1024).await;
    let digest = up.finish().await.unwrap();
    assert_eq!(digest, sha(&whole));
    up.commit(Commit::new(digest, true)).await.unwrap();
    assert!(read(s, "f").await == whole);
}
