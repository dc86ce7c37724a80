//! `S3Storage` against a real Garage: the contract, unchanged, on a fresh key prefix per test,
//! and what only an object store can be asked: multipart uploads invisible until their
//! commit and aborted on a mismatch, memory bounded by parts, no-replace through the shared
//! name locks under a race, and a kept partial resumed by another node.

mod needs_garage {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use ferry::state::digests::{DigestIndex, MemoryDigests};
    use ferry::state::memory::{MemoryNameLocks, MemoryPartials};
    use ferry::state::{NameLocks, PartialIndex};
    use ferry::storage::s3::{
        MIN_PART_SIZE, S3Bucket, S3Config, S3Credentials, S3State, S3Storage,
    };
    use ferry::storage::{
        Commit, Landed, ReadEvent, ReadOptions, RemotePath, Resume, Storage, StorageError,
        UploadOptions,
    };
    use sha2::Digest;

    use crate::storage::contract::{Home, storage_contract};
    use crate::util::garage::{Garage, fresh_home, garage};

    /// Parts of S3's smallest size, so that the contract's files of a few MiB go through
    /// multipart uploads, kept partials and rewinds across parts.
    const PART: usize = MIN_PART_SIZE;

    pub(super) fn state() -> S3State {
        S3State {
            locks: MemoryNameLocks::new() as Arc<dyn NameLocks>,
            digests: MemoryDigests::new() as Arc<dyn DigestIndex>,
            partials: MemoryPartials::new() as Arc<dyn PartialIndex>,
        }
    }

    /// The bucket of this process's Garage, as a node would open it (its own client).
    pub(super) fn bucket(g: &Garage, part_size: usize) -> Arc<S3Bucket> {
        S3Bucket::open(&config(g, part_size, "tests")).unwrap()
    }

    /// How a node is configured for this process's Garage, its keys under `prefix`.
    pub(super) fn config(g: &Garage, part_size: usize, prefix: &str) -> S3Config {
        let creds = g.dir.join("credentials");
        if !creds.exists() {
            let text = format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                g.key_id, g.secret
            );
            let tmp = g.dir.join(format!("credentials.{}", rand::random::<u32>()));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &creds).unwrap();
        }
        S3Config {
            endpoint: g.endpoint.clone(),
            region: g.region.clone(),
            bucket: g.bucket.clone(),
            prefix: Some(prefix.into()),
            credentials: S3Credentials::File(creds),
            part_size,
        }
    }

    fn open(home: &str, state: S3State) -> S3Storage {
        S3Storage::open(&bucket(garage(), PART), home, state).unwrap()
    }

    async fn make() -> Home {
        let store = open(&fresh_home("contract"), state());
        Home::new(Arc::new(store), ())
    }

    storage_contract!(make, #[ignore = "needs garage; .ci/run installs it"]);

    pub(super) fn p(s: &str) -> RemotePath {
        RemotePath::parse(s).unwrap()
    }

    fn sha(data: &[u8]) -> [u8; 32] {
        sha2::Sha256::digest(data).into()
    }

    /// Deterministic bytes that differ per seed.
    pub(super) fn data(len: usize, seed: u8) -> Vec<u8> {
        let mut x = (seed as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    async fn write_all(up: &mut dyn ferry::storage::Upload, bytes: &[u8]) {
        for c in bytes.chunks(256 * 1024) {
            up.write(Bytes::copy_from_slice(c)).await.unwrap();
        }
    }

    async fn read(s: &dyn Storage, path: &str) -> (Vec<u8>, Option<[u8; 32]>) {
        let options = ReadOptions {
            hash: true,
            ..ReadOptions::default()
        };
        let mut d = s.open_read(&p(path), options).await.unwrap();
        let mut out = Vec::new();
        loop {
            match d.next().await.unwrap() {
                ReadEvent::Data(b) => out.extend_from_slice(&b),
                ReadEvent::End { sha256 } => return (out, sha256),
                ReadEvent::Progress(_) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    async fn invisible(s: &S3Storage, path: &str) {
        assert!(matches!(
            s.stat(&p(path)).await,
            Err(StorageError::NotFound)
        ));
        let page = s.list(&RemotePath::root(), None, 1000).await.unwrap();
        assert!(
            page.entries.iter().all(|e| e.name != path),
            "{path} listed before its commit"
        );
    }

    /// Uploads in progress under a home, waiting a moment for aborts sent by `Drop`.
    async fn uploads_left(g: &Garage, s: &S3Storage, want: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = g.multipart_uploads(s.root_prefix()).len();
            if n == want || Instant::now() > deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs garage; .ci/run installs it"]
    async fn multipart_upload_is_invisible_until_its_commit() {
        let g = garage();
        let s = open(&fresh_home("invisible"), state());
        let bytes = data(3 * PART + 1234, 1);
        let options = UploadOptions {
            size_hint: Some(bytes.len() as u64),
            no_replace: true,
            ..UploadOptions::default()
        };
        let mut up = s.begin_upload(&p("big"), options).await.unwrap();
        write_all(up.as_mut(), &bytes[..2 * PART + 10]).await;
        // Parts are in the store, under a multipart upload, and nothing under the name.
        assert_eq!(g.multipart_uploads(s.root_prefix()).len(), 1);
        invisible(&s, "big").await;
        write_all(up.as_mut(), &bytes[2 * PART + 10..]).await;
        let digest = up.finish().await.unwrap();
        assert_eq!(digest, sha(&bytes));
        invisible(&s, "big").await;
        let landed = up.commit(Commit::new(digest, true)).await.unwrap();
        assert!(matches!(landed, Landed::Committed(_)), "{landed:?}");
        assert_eq!(uploads_left(g, &s, 0).await, 0);
        let (got, end) = read(&s, "big").await;
        assert!(got == bytes, "content differs");
        assert_eq!(end, Some(digest));
        // The digest was recorded at the commit: a read of the unchanged object has it
        // before any byte.
        let d = s
            .open_read(&p("big"), ReadOptions::default())
            .await
            .unwrap();
        assert_eq!(d.stat().sha256, Some(digest));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs garage; .ci/run installs it"]
    async fn a_mismatch_an_abort_or_a_drop_leaves_no_multipart_upload() {
        let g = garage();
        let s = open(&fresh_home("mismatch"), state());
        let bytes = data(2 * PART + 77, 2);
        // Another digest at the commit.
        let mut up = s
            .begin_upload(&p("f"), UploadOptions::default())
            .await
            .unwrap();
        write_all(up.as_mut(), &bytes).await;
        assert_eq!(g.multipart_uploads(s.root_prefix()).len(), 1);
        let digest = up.finish().await.unwrap();
        match up.commit(Commit::new(sha(b"else"), true)).await.unwrap() {
            Landed::Mismatch { actual } => assert_eq!(actual, digest),
            other => panic!("{other:?}"),
        }
        assert_eq!(uploads_left(g, &s, 0).await, 0, "the mismatch aborted it");
        invisible(&s, "f").await;
        // An abort.
        let mut up = s
            .begin_upload(&p("f"), UploadOptions::default())
            .await
            .unwrap();
        write_all(up.as_mut(), &bytes).await;
        up.abort().await;
        assert_eq!(g.multipart_uploads(s.root_prefix()).len(), 0, "aborted");
        // A drop (a session gone): aborted in the background.
        let mut up = s
            .begin_upload(&p("f"), UploadOptions::default())
            .await
            .unwrap();
        write_all(up.as_mut(), &bytes).await;
        drop(up);
        assert_eq!(uploads_left(g, &s, 0).await, 0, "dropped");
        invisible(&s, "f").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs garage; .ci/run installs it"]
    async fn upload_memory_is_bounded_by_parts_not_the_file() {
        let _ = garage();
        let s = open(&fresh_home("memory"), state());
        let size = 64 * 1024 * 1024;
        let bytes = data(size, 3);
        let options = UploadOptions {
            size_hint: Some(size as u64),
            ..UploadOptions::default()
        };
        let mut up = s.begin_upload(&p("64m"), options).await.unwrap();
        write_all(up.as_mut(), &bytes).await;
        let digest = up.finish().await.unwrap();
        up.commit(Commit::new(digest, true)).await.unwrap();
        let peak = s.peak_upload_memory();
        // One part filling and PARTS_IN_FLIGHT on their way, whatever the size of the file.
        assert!(
            peak <= (ferry::storage::s3::PARTS_IN_FLIGHT + 1) as u64 * PART as u64,
            "peak {peak} bytes for a {size}-byte upload"
        );
        assert!(
            peak >= PART as u64,
            "peak {peak}: the measure measures nothing"
        );
        let (got, end) = read(&s, "64m").await;
        assert!(got == bytes);
        assert_eq!(end, Some(sha(&bytes)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs garage; .ci/run installs it"]
    async fn two_nodes_committing_one_name_without_replace_land_exactly_one() {
        let _ = garage();
        let home = fresh_home("race");
        // Two nodes: their own clients, one shared state (as PostgreSQL would be).
        let shared = state();
        let nodes = [open(&home, shared.clone()), open(&home, shared)];
        for round in 0..3u8 {
            let name = format!("same{round}");
            let size = if round == 0 { 1000 } else { PART + 500 };
            let mut uploads = Vec::new();
            for (i, node) in nodes.iter().enumerate() {
                let body = data(size, 10 + round * 2 + i as u8);
                let options = UploadOptions {
                    no_replace: true,
                    ..UploadOptions::default()
                };
                let mut up = node.begin_upload(&p(&name), options).await.unwrap();
                write_all(up.as_mut(), &body).await;
                let digest = up.finish().await.unwrap();
                uploads.push((up, digest, body));
            }
            // Both commit at once.
            let tasks: Vec<_> = uploads
                .into_iter()
                .map(|(up, digest, body)| {
                    tokio::spawn(async move { (up.commit(Commit::new(digest, true)).await, body) })
                })
                .collect();
            let mut won = Vec::new();
            for t in tasks {
                let (r, body) = t.await.unwrap();
                match r {
                    Ok(Landed::Committed(_)) => won.push(body),
                    Err(StorageError::AlreadyExists) => {}
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(won.len(), 1, "round {round}: exactly one lands");
            let (got, _) = read(&nodes[1], &name).await;
            assert!(got == won[0], "round {round}: the winner's bytes");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs garage; .ci/run installs it"]
    async fn another_node_resumes_a_kept_partial_at_a_part_boundary() {
        let g = garage();
        let home = fresh_home("resume");
        let shared = state();
        let a = open(&home, shared.clone());
        let whole = data(3 * PART + 4321, 5);
        let key = ferry::storage::PartialKey::new("resumeme").unwrap();
        let mut up = a
            .begin_upload(&p("f"), UploadOptions::default())
            .await
            .unwrap();
        write_all(up.as_mut(), &whole[..2 * PART + 999]).await;
        let kept = up.keep(key.clone()).await.unwrap();
        assert_eq!(kept.len, 2 * PART as u64, "whole parts are kept");
        assert_eq!(kept.sha256, sha(&whole[..2 * PART]));
        drop(a);
        // Node B: its own client, the shared state only.
        let b = open(&home, shared);
        assert_eq!(b.partial_len(&key).await.unwrap(), Some(kept.len));
        invisible(&b, "f").await;
        // Inside a part: the boundary before it.
        match b
            .resume_upload(
                &key,
                &p("f"),
                PART as u64 + 5,
                sha(&whole[..PART + 5]),
                None,
            )
            .await
            .unwrap()
        {
            Resume::Short { kept } => assert_eq!(kept, PART as u64),
            other => panic!("{other:?}"),
        }
        // Another prefix: refused from the recorded state, without reading a part.
        match b
            .resume_upload(&key, &p("f"), kept.len, sha(b"not the prefix"), None)
            .await
            .unwrap()
        {
            Resume::Mismatch { actual, .. } => assert_eq!(actual, kept.sha256),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.partial_len(&key).await.unwrap(), Some(kept.len));
        let Resume::Ready(mut up) = b
            .resume_upload(&key, &p("f"), kept.len, kept.sha256, None)
            .await
            .unwrap()
        else {
            panic!("resume at the kept length");
        };
        assert_eq!(up.written(), kept.len);
        write_all(up.as_mut(), &whole[kept.len as usize..]).await;
        let digest = up.finish().await.unwrap();
        assert_eq!(digest, sha(&whole), "the prefix's state continued");
        up.commit(Commit::new(digest, true)).await.unwrap();
        let (got, end) = read(&b, "f").await;
        assert!(got == whole);
        assert_eq!(end, Some(digest));
        assert_eq!(b.partial_len(&key).await.unwrap(), None);
        assert_eq!(uploads_left(g, &b, 0).await, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs garage; .ci/run installs it"]
    async fn an_upload_whose_node_died_resumes_on_another_from_its_last_part() {
        let g = garage();
        let home = fresh_home("crash");
        let shared = state();
        let a = open(&home, shared.clone());
        let whole = data(3 * PART + 100, 6);
        let key = ferry::storage::PartialKey::new("crashed").unwrap();
        let options = UploadOptions {
            supersede: Some(key.clone()),
            ..UploadOptions::default()
        };
        let mut up = a.begin_upload(&p("f"), options).await.unwrap();
        assert_eq!(a.partial_len(&key).await.unwrap(), None);
        // Three parts sent: the first has landed (PARTS_IN_FLIGHT are on their way at most).
        write_all(up.as_mut(), &whole[..3 * PART + 99]).await;
        // The node dies: no abort, no keep, nothing after this point runs for it.
        std::mem::forget(up);
        drop(a);
        let b = open(&home, shared);
        let kept = b
            .partial_len(&key)
            .await
            .unwrap()
            .expect("progress was recorded");
        assert!(kept >= PART as u64 && kept % PART as u64 == 0, "{kept}");
        let Resume::Ready(mut up) = b
            .resume_upload(&key, &p("f"), kept, sha(&whole[..kept as usize]), None)
            .await
            .unwrap()
        else {
            panic!("resume at {kept}");
        };
        write_all(up.as_mut(), &whole[kept as usize..]).await;
        let digest = up.finish().await.unwrap();
        assert_eq!(digest, sha(&whole));
        up.commit(Commit::new(digest, true)).await.unwrap();
        assert!(read(&b, "f").await.0 == whole);
        assert_eq!(
            b.partial_len(&key).await.unwrap(),
            None,
            "the record went with the commit"
        );
        assert_eq!(uploads_left(g, &b, 0).await, 0);
    }

    /// A node that dies right after its upload began a multipart upload (no part landed):
    /// the record of that progress is there for the sweep, which aborts the upload; it is no
    /// partial to resume, and the counters never held it (usage, the sweep and a fresh
    /// upload superseding it all say nothing was counted).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs garage; .ci/run installs it"]
    async fn an_upload_whose_node_died_before_its_first_part_is_swept_not_orphaned() {
        let g = garage();
        let home = fresh_home("early");
        let shared = state();
        let a = open(&home, shared.clone());
        let key = ferry::storage::PartialKey::new("early").unwrap();
        let options = UploadOptions {
            supersede: Some(key.clone()),
            ..UploadOptions::default()
        };
        let mut up = a.begin_upload(&p("f"), options.clone()).await.unwrap();
        // One part and a byte: the part goes out, nothing has landed when the node dies.
        write_all(up.as_mut(), &data(PART + 1, 8)).await;
        std::mem::forget(up);
        drop(a);
        let b = open(&home, shared.clone());
        assert_eq!(
            uploads_left(g, &b, 1).await,
            1,
            "the multipart upload is there"
        );
        assert_eq!(
            b.partial_len(&key).await.unwrap(),
            None,
            "nothing to resume"
        );
        let usage = b.usage(Duration::from_secs(30)).await.unwrap();
        assert_eq!(usage, ferry::domain::Footprint::NONE, "never counted");
        assert_eq!(
            b.sweep_partials(Duration::ZERO).await.unwrap(),
            ferry::domain::Footprint::NONE
        );
        assert_eq!(uploads_left(g, &b, 0).await, 0, "the sweep aborted it");

        // The same death, then a fresh upload of the name: it removes the record and its
        // multipart upload, and says it superseded nothing counted.
        let mut up = b.begin_upload(&p("g"), options.clone()).await.unwrap();
        write_all(up.as_mut(), &data(3 * PART + 1, 9)).await;
        std::mem::forget(up);
        let c = open(&home, shared);
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.partial_len(&key).await.unwrap().is_none() {
            assert!(Instant::now() < deadline, "no part recorded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let fresh = c.begin_upload(&p("g"), options).await.unwrap();
        assert_eq!(
            fresh.superseded(),
            None,
            "the dead upload's parts were never counted"
        );
        fresh.abort().await;
        assert_eq!(uploads_left(g, &c, 0).await, 0);
    }

    /// A put over a name whose resumed upload is running (one user, two clients): the put
    /// supersedes the running upload's record and drops its parts, but takes nothing off the
    /// counters for it. The running upload fails and gives its prefix back itself. Before,
    /// the put took the prefix off too, so the counters lost a prefix's worth each time this
    /// was done, and a quota could be beaten by doing it over and over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs garage; .ci/run installs it"]
    async fn a_put_over_a_running_resumed_upload_takes_nothing_off_the_counters_for_it() {
        let g = garage();
        let home = fresh_home("running");
        let shared = state();
        let key = ferry::storage::PartialKey::new("running").unwrap();
        let options = UploadOptions {
            supersede: Some(key.clone()),
            ..UploadOptions::default()
        };
        let whole = data(4 * PART + 10, 11);
        // Kept: two whole parts, counted as one file of their length.
        let a = open(&home, shared.clone());
        let mut up = a.begin_upload(&p("f"), options.clone()).await.unwrap();
        write_all(up.as_mut(), &whole[..2 * PART + 5]).await;
        let kept = up.keep(key.clone()).await.unwrap();
        assert_eq!(kept.len, 2 * PART as u64);

        // Resumed through node B: it takes the kept partial's count over, and runs.
        let b = open(&home, shared.clone());
        let Resume::Ready(mut resumed) = b
            .resume_upload(&key, &p("f"), kept.len, kept.sha256, None)
            .await
            .unwrap()
        else {
            panic!("resume at the kept length");
        };
        assert_eq!(resumed.superseded(), Some(kept.len), "the kept count");
        let at = kept.len as usize;
        write_all(resumed.as_mut(), &whole[at..at + 100]).await;
        assert_eq!(
            b.partial_len(&key).await.unwrap(),
            Some(kept.len),
            "the running upload is on record"
        );

        // A put of the name through node C supersedes it.
        let c = open(&home, shared.clone());
        let small = b"small".to_vec();
        let put = c
            .put_small(
                &p("f"),
                Bytes::from(small.clone()),
                ferry::storage::SmallOptions {
                    supersede: Some(key.clone()),
                    reserve: None,
                },
                Commit::new(sha(&small), false),
            )
            .await
            .unwrap();
        assert!(
            matches!(put.landed, Landed::Committed(_)),
            "{:?}",
            put.landed
        );
        assert_eq!(
            put.superseded, None,
            "a running upload's prefix is its own to give back"
        );
        assert_eq!(c.partial_len(&key).await.unwrap(), None);
        // Its parts went with the record: the running upload cannot complete.
        let rest = async {
            resumed
                .write(Bytes::copy_from_slice(&whole[at + 100..]))
                .await?;
            resumed.finish().await
        };
        assert!(rest.await.is_err(), "the superseded upload completed");
        resumed.abort().await;
        assert!(read(&c, "f").await.0 == small);

        // A kept partial (no upload runs for it) is still taken off by whoever takes it.
        let mut up = a.begin_upload(&p("g"), options.clone()).await.unwrap();
        write_all(up.as_mut(), &whole[..PART + 5]).await;
        let kept = up.keep(key.clone()).await.unwrap();
        let fresh = c.begin_upload(&p("g"), options).await.unwrap();
        assert_eq!(fresh.superseded(), Some(kept.len));
        fresh.abort().await;
        assert_eq!(uploads_left(g, &c, 0).await, 0);
    }

    /// An upload that began before another upload of the name was kept (so it did not
    /// supersede the kept partial) records its progress later: the kept partial stays, with
    /// its parts and its count. Before, the record of progress took its place, and the kept
    /// partial's parts and count were left with nothing pointing at them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs garage; .ci/run installs it"]
    async fn progress_recorded_late_leaves_another_uploads_kept_partial_alone() {
        let g = garage();
        let home = fresh_home("late");
        let shared = state();
        let key = ferry::storage::PartialKey::new("late").unwrap();
        let options = UploadOptions {
            supersede: Some(key.clone()),
            ..UploadOptions::default()
        };
        let whole = data(3 * PART + 10, 12);
        let a = open(&home, shared.clone());
        let b = open(&home, shared.clone());
        // Begun on A, nothing shipped yet.
        let mut late = a.begin_upload(&p("f"), options.clone()).await.unwrap();
        write_all(late.as_mut(), &whole[..100]).await;
        // Begun on B after it, and kept.
        let mut up = b.begin_upload(&p("f"), options.clone()).await.unwrap();
        write_all(up.as_mut(), &whole[..2 * PART + 5]).await;
        let kept = up.keep(key.clone()).await.unwrap();
        assert_eq!(kept.len, 2 * PART as u64);
        // A's upload ships parts now, which records progress.
        write_all(late.as_mut(), &whole[100..]).await;
        assert_eq!(
            b.partial_len(&key).await.unwrap(),
            Some(kept.len),
            "the kept partial is still there"
        );
        assert_eq!(late.finish().await.unwrap(), sha(&whole));
        late.abort().await;
        assert_eq!(b.partial_len(&key).await.unwrap(), Some(kept.len));
        // The kept partial still resumes, from its own parts.
        let Resume::Ready(mut resumed) = b
            .resume_upload(&key, &p("f"), kept.len, kept.sha256, None)
            .await
            .unwrap()
        else {
            panic!("the kept partial resumes");
        };
        assert_eq!(resumed.superseded(), Some(kept.len), "still counted");
        write_all(resumed.as_mut(), &whole[kept.len as usize..]).await;
        let digest = resumed.finish().await.unwrap();
        assert_eq!(digest, sha(&whole));
        resumed.commit(Commit::new(digest, false)).await.unwrap();
        assert!(read(&a, "f").await.0 == whole);
        assert_eq!(b.partial_len(&key).await.unwrap(), None);
        assert_eq!(uploads_left(g, &b, 0).await, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs garage; .ci/run installs it"]
    async fn an_object_replaced_after_the_open_fails_the_read_not_mixes_it() {
        let _ = garage();
        let s = open(&fresh_home("replaced"), state());
        let first = data(300_000, 7);
        let mut up = s
            .begin_upload(&p("f"), UploadOptions::default())
            .await
            .unwrap();
        write_all(up.as_mut(), &first).await;
        let digest = up.finish().await.unwrap();
        up.commit(Commit::new(digest, true)).await.unwrap();
        // Opened (looked at), then replaced by another session before the first byte.
        let mut d = s.open_read(&p("f"), ReadOptions::default()).await.unwrap();
        let second = data(300_000, 8);
        let mut up = s
            .begin_upload(&p("f"), UploadOptions::default())
            .await
            .unwrap();
        write_all(up.as_mut(), &second).await;
        let digest = up.finish().await.unwrap();
        up.commit(Commit::new(digest, false)).await.unwrap();
        match d.next().await {
            Err(StorageError::Io(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(read(&s, "f").await.0 == second);
    }

    /// A server whose homes are key prefixes in Garage (as a cluster node's are), each test
    /// under a prefix of its own.
    async fn s3_server() -> crate::util::TestServer {
        s3_server_on(&config(garage(), PART, &fresh_home("server")), state()).await
    }

    /// [`s3_server`] on `config`'s bucket and prefix, with `state` (which a test may also
    /// hold, to act as another node would).
    async fn s3_server_on(config: &S3Config, state: S3State) -> crate::util::TestServer {
        let homes = ferry::storage::s3_homes::S3Homes::open(config, state).unwrap();
        let state = ferry::server::SharedState {
            homes: Some(Arc::new(homes)),
            ..ferry::server::SharedState::default()
        };
        crate::util::TestServer::start_with_state(crate::util::test_limits(), state).await
    }

    /// Every file of a `put_many`, its outcome in order: `Ok(sha256)` or the error's code.
    async fn put_all(
        conn: &mut ferry::client::Connection,
        items: &[(std::path::PathBuf, String)],
        overwrite: bool,
    ) -> Vec<Result<String, Option<ferry::protocol::ErrorCode>>> {
        let mut out = vec![Err(None); items.len()];
        conn.put_many(
            items,
            overwrite,
            &mut crate::util::no_progress(),
            &mut |i, r| {
                out[i] = r.map(|t| t.sha256).map_err(|e| match e {
                    ferry::client::ClientError::Remote(w) => Some(w.code),
                    _ => None,
                });
            },
        )
        .await
        .unwrap();
        out
    }

    /// A store of round trips runs a session's small puts side by side
    /// (`Storage::small_puts_in_flight`), and the session still answers them in order with
    /// the outcomes they would have had one by one: every file verified, a name put twice in
    /// one pipeline decided by the order of the puts, a put below a file just put refused,
    /// and a quota never passed by the puts racing for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs garage; .ci/run installs it"]
    async fn needs_garage_pipelined_small_puts_run_side_by_side_and_keep_their_order() {
        use crate::util::{random_file, sha256_hex};
        use ferry::protocol::ErrorCode;
        let server = s3_server().await;
        let local = tempfile::tempdir().unwrap();
        let mut conn = server.alice().await;

        // Many files: all verified, all listed.
        let mut items = Vec::new();
        let mut want = Vec::new();
        conn.mkdir("/many").await.unwrap();
        for i in 0..120 {
            let f = local.path().join(format!("m{i}"));
            want.push(sha256_hex(&random_file(&f, 4096 + i, i as u64)));
            items.push((f, format!("/many/f{i:03}")));
        }
        let got = put_all(&mut conn, &items, false).await;
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.as_ref().ok(), Some(&want[i]), "file {i}: {r:?}");
        }
        assert_eq!(conn.list("/many").await.unwrap().len(), 120);
        let back = local.path().join("back");
        conn.get("/many/f077", &back, false, &mut crate::util::no_progress())
            .await
            .unwrap();
        assert_eq!(sha256_hex(&std::fs::read(&back).unwrap()), want[77]);

        // Each name twice in a row: without overwrite the first wins, with it the second.
        let (mut once, mut twice) = (Vec::new(), Vec::new());
        conn.mkdir("/keep").await.unwrap();
        conn.mkdir("/replace").await.unwrap();
        let mut first_sha = Vec::new();
        let mut second_sha = Vec::new();
        for i in 0..16u64 {
            let (a, b) = (
                local.path().join(format!("a{i}")),
                local.path().join(format!("b{i}")),
            );
            first_sha.push(sha256_hex(&random_file(&a, 3000, 100 + i)));
            second_sha.push(sha256_hex(&random_file(&b, 3100, 200 + i)));
            once.push((a.clone(), format!("/keep/n{i}")));
            once.push((b.clone(), format!("/keep/n{i}")));
            twice.push((a, format!("/replace/n{i}")));
            twice.push((b, format!("/replace/n{i}")));
        }
        let got = put_all(&mut conn, &once, false).await;
        for i in 0..16 {
            assert_eq!(
                got[2 * i].as_ref().ok(),
                Some(&first_sha[i]),
                "{i}: {:?}",
                got[2 * i]
            );
            assert_eq!(got[2 * i + 1], Err(Some(ErrorCode::AlreadyExists)), "{i}");
            assert_eq!(
                conn.sha256(&format!("/keep/n{i}")).await.unwrap().1,
                first_sha[i]
            );
        }
        let got = put_all(&mut conn, &twice, true).await;
        for i in 0..16 {
            assert!(got[2 * i].is_ok() && got[2 * i + 1].is_ok(), "{i}: {got:?}");
            assert_eq!(
                conn.sha256(&format!("/replace/n{i}")).await.unwrap().1,
                second_sha[i]
            );
        }

        // A server busy with other sessions' puts (every place taken): this session's run
        // one at a time instead, with the same outcomes.
        let held = server
            .server
            .hold_small_put_places()
            .expect("all places free");
        conn.mkdir("/busy").await.unwrap();
        let busy: Vec<_> = items
            .iter()
            .take(40)
            .enumerate()
            .map(|(i, (f, _))| (f.clone(), format!("/busy/f{i:03}")))
            .collect();
        let got = put_all(&mut conn, &busy, false).await;
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.as_ref().ok(), Some(&want[i]), "busy file {i}: {r:?}");
        }
        drop(held);
        assert!(
            server.server.hold_small_put_places().is_some(),
            "every place given back"
        );

        // A file, then a file below it: the second has no directory to land in.
        let f = local.path().join("plain");
        let plain = sha256_hex(&random_file(&f, 500, 9));
        let nested = vec![
            (f.clone(), "/d".to_string()),
            (f.clone(), "/d/x".to_string()),
        ];
        let got = put_all(&mut conn, &nested, false).await;
        assert_eq!(got[0].as_ref().ok(), Some(&plain));
        assert!(got[1].is_err(), "{got:?}");
        assert_eq!(conn.sha256("/d").await.unwrap().1, plain);

        // carol may hold 5 files: of 12 racing, exactly 5 land, and her usage says so.
        let mut carol = server.connect("carol", "carol-pw").await;
        let items: Vec<_> = (0..12)
            .map(|i| {
                let f = local.path().join(format!("c{i}"));
                random_file(&f, 4096, 300 + i as u64);
                (f, format!("/c{i}"))
            })
            .collect();
        let got = put_all(&mut carol, &items, false).await;
        let landed = got.iter().filter(|r| r.is_ok()).count();
        assert_eq!(landed, 5, "{got:?}");
        assert!(
            got.iter()
                .all(|r| r.is_ok() || *r == Err(Some(ErrorCode::QuotaExceeded))),
            "{got:?}"
        );
        assert_eq!(carol.usage().await.unwrap().used_files, Some(5));
        assert_eq!(carol.list("/").await.unwrap().len(), 5);
        server.stop().await;
    }

    /// A session whose oldest small put waits (here for a name another commit holds) reads
    /// on and runs the puts sent after it, even when the client's frames arrive one at a
    /// time, as they do over a slow link: a session that stopped reading until every running
    /// put was done ran them in bursts, each as slow as its slowest. The replies still come
    /// in request order once the first is done.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs garage; .ci/run installs it"]
    async fn needs_garage_a_waiting_put_does_not_stop_its_session_reading_on() {
        use ferry::protocol::{ClientMessage, ServerMessage};
        let g = garage();
        let cfg = config(g, PART, &fresh_home("server"));
        let st = state();
        let locks = Arc::clone(&st.locks);
        let server = s3_server_on(&cfg, st).await;
        // The name another commit holds, as alice's home names it in the shared locks.
        let root = S3Bucket::open(&cfg).unwrap().home_prefix("alice").unwrap();
        let ns = format!("s3:{}/{}", g.bucket, root);
        let held = ferry::state::NameLock::try_take(&locks, &ns, "/slow")
            .await
            .unwrap()
            .expect("the name is free");

        let mut raw = server.raw().await;
        raw.login("alice", "alice-pw").await;
        let pause = || tokio::time::sleep(Duration::from_millis(20));
        let names = ["/slow", "/a", "/b", "/c", "/d"];
        let mut want = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let data = vec![i as u8 + 1; 1000 + i];
            let sha = crate::util::sha256_hex(&data);
            raw.send(&ClientMessage::Put {
                id: 10 + i as u64,
                path: name.to_string(),
                size: data.len() as u64,
                overwrite: false,
                offset: 0,
                prefix_sha256: None,
            })
            .await;
            pause().await;
            raw.send_data(&data).await;
            pause().await;
            raw.send(&ClientMessage::End {
                id: 10 + i as u64,
                sha256: sha.clone(),
            })
            .await;
            pause().await;
            want.push(sha);
        }

        // While /slow waits for its name, the four after it land.
        let mut other = server.alice().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let listed: Vec<String> = other
                .list("/")
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.name)
                .collect();
            if ["a", "b", "c", "d"]
                .iter()
                .all(|n| listed.iter().any(|l| l == n))
            {
                assert!(!listed.iter().any(|l| l == "slow"), "{listed:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the puts after a waiting one did not run: {listed:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Nothing is answered out of turn.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), raw.frame())
                .await
                .is_err(),
            "a reply came before the first put's"
        );

        held.release().await.unwrap();
        for (i, sha) in want.iter().enumerate() {
            match raw.recv().await {
                ServerMessage::Ok { id, sha256, .. } => {
                    assert_eq!(id, 10 + i as u64);
                    assert_eq!(sha256.as_ref(), Some(sha));
                }
                other => panic!("put {i}: {other:?}"),
            }
        }
        assert_eq!(other.sha256("/slow").await.unwrap().1, want[0]);
        server.stop().await;
    }
}

/// Not a test of behaviour: out of `needs_garage`, so CI's `--ignored needs_garage` leaves it.
mod bench_garage {
    /// Reads `name` whole with hashing asked; its time in seconds.
    async fn drain_timed(s: &S3Storage, name: &str, digest: [u8; 32]) -> f64 {
        let t = Instant::now();
        let options = ReadOptions {
            hash: true,
            ..ReadOptions::default()
        };
        let mut d = s.open_read(&p(name), options).await.unwrap();
        let mut n = 0u64;
        loop {
            match d.next().await.unwrap() {
                ReadEvent::Data(b) => n += b.len() as u64,
                ReadEvent::End { sha256 } => {
                    assert_eq!(sha256, Some(digest));
                    break;
                }
                _ => {}
            }
        }
        assert_eq!(n, d.stat().entry.size);
        t.elapsed().as_secs_f64()
    }

    use std::time::Instant;

    use bytes::Bytes;
    use ferry::storage::s3::{MIN_PART_SIZE, S3Storage};
    use ferry::storage::{Commit, ReadEvent, ReadOptions, Storage, UploadOptions};

    use super::needs_garage::{bucket, data, p, state};
    use crate::util::garage::{fresh_home, garage};

    /// Throughput of `S3Storage` against plain `object_store` calls on the same Garage
    /// (`-- --ignored --nocapture bench_garage`); prints, asserts nothing but content.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs garage; a measurement, run by hand"]
    async fn measure_256_mib_against_plain_object_store() {
        use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
        let g = garage();
        let size = 256 * 1024 * 1024;
        let bytes = Bytes::from(data(size, 9));
        let chunks: Vec<Bytes> = (0..size)
            .step_by(256 * 1024)
            .map(|i| bytes.slice(i..(i + 256 * 1024).min(size)))
            .collect();
        let mib = size as f64 / (1024.0 * 1024.0);
        for part in [MIN_PART_SIZE, ferry::storage::s3::DEFAULT_PART_SIZE] {
            let bucket = bucket(g, part);
            let home = fresh_home("measure");
            let s = S3Storage::open(&bucket, &home, state()).unwrap();
            let raw = bucket.object_store();
            for round in 0..2 {
                let name = format!("f{round}");
                let t = Instant::now();
                let mut up = s
                    .begin_upload(&p(&name), UploadOptions::default())
                    .await
                    .unwrap();
                for c in &chunks {
                    up.write(c.clone()).await.unwrap();
                }
                let digest = up.finish().await.unwrap();
                up.commit(Commit::new(digest, true)).await.unwrap();
                let ours_up = t.elapsed().as_secs_f64();
                let ours_down = drain_timed(&s, &name, digest).await;
                // A node that has no digest recorded (its own empty index) hashes as it reads.
                let cold = S3Storage::open(&bucket, home.as_str(), state()).unwrap();
                let ours_hashed = drain_timed(&cold, &name, digest).await;
                // The same bytes straight through object_store: one multipart upload of the
                // same part size (no hashing), then a plain GET.
                let key = object_store::path::Path::parse(format!("{}raw{round}", s.root_prefix()))
                    .unwrap();
                let t = Instant::now();
                let upload = raw.put_multipart(&key).await.unwrap();
                let mut w = WriteMultipart::new_with_chunk_size(upload, part);
                for c in &chunks {
                    w.wait_for_capacity(1).await.unwrap();
                    w.put(c.clone());
                }
                w.finish().await.unwrap();
                let raw_up = t.elapsed().as_secs_f64();
                let t = Instant::now();
                let mut stream = raw.get(&key).await.unwrap().into_stream();
                let mut got = 0;
                while let Some(b) = futures_util::StreamExt::next(&mut stream).await {
                    got += b.unwrap().len();
                }
                assert_eq!(got, size);
                let raw_down = t.elapsed().as_secs_f64();
                let t = Instant::now();
                raw.put(&key, PutPayload::from(bytes.clone()))
                    .await
                    .unwrap();
                let raw_put = t.elapsed().as_secs_f64();
                println!(
                    "part {} MiB round {round}: upload ferry {:.0} MiB/s vs object_store \
                     multipart {:.0} MiB/s (ratio {:.2}; one PUT {:.0} MiB/s); download ferry \
                     {:.0} MiB/s (digest recorded) / {:.0} MiB/s (hashed) vs GET {:.0} MiB/s \
                     (ratios {:.2} / {:.2}); peak upload memory {} MiB",
                    part >> 20,
                    mib / ours_up,
                    mib / raw_up,
                    raw_up / ours_up,
                    mib / raw_put,
                    mib / ours_down,
                    mib / ours_hashed,
                    mib / raw_down,
                    raw_down / ours_down,
                    raw_down / ours_hashed,
                    s.peak_upload_memory() >> 20,
                );
            }
        }
    }

    /// 1,000 files of 4 KiB, one after another: `put_small` (target checks, name lock,
    /// PutObject, digest record) against a plain PUT each.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs garage; a measurement, run by hand"]
    async fn measure_1000_small_files_against_plain_object_store() {
        use ferry::storage::{Landed, SmallOptions};
        use object_store::{ObjectStoreExt, PutPayload};
        let g = garage();
        let bucket = bucket(g, MIN_PART_SIZE);
        let home = fresh_home("small");
        let s = S3Storage::open(&bucket, &home, state()).unwrap();
        let raw = bucket.object_store();
        let n = 1000;
        for round in 0..2 {
            let t = Instant::now();
            for i in 0..n {
                let body = Bytes::from(data(4096, i as u8));
                let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&body).into();
                let put = s
                    .put_small(
                        &p(&format!("r{round}-{i}")),
                        body,
                        SmallOptions::default(),
                        Commit::new(digest, true),
                    )
                    .await
                    .unwrap();
                assert!(matches!(put.landed, Landed::Committed(_)));
            }
            let ours = t.elapsed().as_secs_f64();
            let t = Instant::now();
            for i in 0..n {
                let key =
                    object_store::path::Path::parse(format!("{}raw{round}-{i}", s.root_prefix()))
                        .unwrap();
                raw.put(&key, PutPayload::from(data(4096, i as u8)))
                    .await
                    .unwrap();
            }
            let plain = t.elapsed().as_secs_f64();
            println!(
                "round {round}: 1000 x 4 KiB: ferry put_small {:.0} files/s vs plain PUT {:.0} \
                 files/s (ratio {:.2})",
                n as f64 / ours,
                n as f64 / plain,
                plain / ours
            );
        }
    }
}
