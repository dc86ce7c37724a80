//! The contract of `UploadSessions` (`ferry::state::uploads`), the records of resumable HTTP
//! uploads, written once and run against each table: in memory, and written through to a
//! directory. A new backend proves itself by passing it unchanged. Many cases are an
//! attacker's sequence of legal requests that would make a counter lie.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry::state::uploads::{
    MAX_UPLOADS_PER_OWNER, MemoryUploads, UPLOAD_TTL, UploadOwner, UploadRecord, UploadSessions,
    UploadsError, new_id,
};

macro_rules! upload_contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(std::sync::Arc::new(ferry::state::uploads::MemoryUploads::new()))
                        .await;
                }
            )*
        }
        mod persisted {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let t = ferry::state::uploads::MemoryUploads::persisted(
                        dir.path(),
                        std::time::SystemTime::now(),
                    )
                    .unwrap();
                    super::$name(std::sync::Arc::new(t)).await;
                }
            )*
        }
        /// The same contract against PostgreSQL (`ferry::pg::PgUploads`).
        mod needs_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs postgres; .ci/run installs it"]
                async fn $name() {
                    super::$name(super::pg_node(&crate::util::pg::fresh_db().await).await).await;
                }
            )*
        }
    };
}

/// One node's upload records on the database at `url` (a pool of its own).
async fn pg_node(url: &str) -> Arc<dyn UploadSessions> {
    let cfg = ferry::pg::PgConfig::from_url(url).unwrap();
    ferry::pg::connect(&cfg).await.unwrap().upload_sessions()
}

/// Two nodes (two pools on one database) see one table: an upload created through one is
/// found, changed and finished through the other, and racing changes through both settle
/// on one row: of racing creations for one id exactly one wins, of two nodes racing to hold
/// an upload exactly one does, and of two racing to take the same expired record exactly one
/// gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_two_nodes_share_upload_records() {
    let url = crate::util::pg::fresh_db().await;
    let (a, b) = (pg_node(&url).await, pg_node(&url).await);
    let now = SystemTime::now();
    let id = new_id();
    a.create(&id, record(user("alice"), soon()), now)
        .await
        .unwrap();
    b.set_kept(&id, Some((40, [3; 32]))).await.unwrap();
    assert_eq!(
        a.get(&id, now).await.unwrap().unwrap().kept,
        Some((40, [3; 32]))
    );
    a.complete(&id, "{}".into()).await.unwrap();
    let done = b.get(&id, now).await.unwrap().unwrap();
    assert_eq!((done.kept, done.receipt.as_deref()), (None, Some("{}")));

    for _ in 0..20 {
        let id = new_id();
        let racers: Vec<_> = [&a, &b, &a, &b]
            .into_iter()
            .map(|t| {
                let (t, id) = (Arc::clone(t), id.clone());
                tokio::spawn(async move {
                    t.create(&id, record(user("bob"), soon()), SystemTime::now())
                        .await
                })
            })
            .collect();
        let mut won = 0;
        for r in racers {
            match r.await.unwrap() {
                Ok(()) => won += 1,
                Err(UploadsError::Taken) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(won, 1, "one creation per id");
        b.remove(&id).await.unwrap();
    }

    // One node at a time holds an upload: of two racing for it exactly one wins; the
    // winner's hold is renewed by it and refused to the other until given up or expired.
    for _ in 0..20 {
        let id = new_id();
        a.create(&id, record(user("dave"), soon()), now)
            .await
            .unwrap();
        let lease = Duration::from_secs(60);
        let (ha, hb) = tokio::join!(a.hold(&id, "node-a", lease), b.hold(&id, "node-b", lease));
        let (ha, hb) = (ha.unwrap(), hb.unwrap());
        assert!(ha ^ hb, "exactly one holds it: {ha} {hb}");
        let (winner, loser, w, l) = if ha {
            (&a, &b, "node-a", "node-b")
        } else {
            (&b, &a, "node-b", "node-a")
        };
        assert!(winner.hold(&id, w, lease).await.unwrap());
        assert!(!loser.hold(&id, l, lease).await.unwrap());
        loser.release(&id, l).await.unwrap();
        assert!(
            !loser.hold(&id, l, lease).await.unwrap(),
            "only the holder gives it up"
        );
        winner.release(&id, w).await.unwrap();
        assert!(
            loser
                .hold(&id, l, Duration::from_millis(100))
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            winner.hold(&id, w, lease).await.unwrap(),
            "an expired hold is free"
        );
        a.remove(&id).await.unwrap();
    }
    assert_eq!(
        a.hold(&new_id(), "node-a", Duration::from_secs(1)).await,
        Err(UploadsError::NotFound)
    );

    let short = new_id();
    a.create(
        &short,
        record(user("carol"), now + Duration::from_secs(5)),
        now,
    )
    .await
    .unwrap();
    let later = now + Duration::from_secs(6);
    let (ta, tb) = tokio::join!(a.take_expired(later), b.take_expired(later));
    let taken: Vec<String> = ta
        .unwrap()
        .into_iter()
        .chain(tb.unwrap())
        .map(|(id, _)| id)
        .collect();
    assert_eq!(taken, vec![short], "an expired record is taken by one node");
}

upload_contract!(
    create_get_remove,
    an_id_is_made_once,
    an_owner_has_at_most_the_cap_of_unfinished_uploads,
    racing_creations_for_the_last_place_cannot_all_win,
    an_expired_record_is_gone_for_every_reader_and_every_change,
    a_renewal_never_shortens_the_lease,
    kept_and_complete_are_recorded,
    a_removed_record_cannot_be_changed_again,
);

fn user(name: &str) -> UploadOwner {
    UploadOwner::User(name.into())
}

fn record(owner: UploadOwner, expires: SystemTime) -> UploadRecord {
    UploadRecord {
        owner,
        target: "/f".into(),
        size: 100,
        expected: None,
        kept: None,
        expires,
        receipt: None,
    }
}

fn soon() -> SystemTime {
    SystemTime::now() + UPLOAD_TTL
}

async fn create_get_remove(t: Arc<dyn UploadSessions>) {
    let now = SystemTime::now();
    let id = new_id();
    assert_eq!(t.get(&id, now).await.unwrap(), None);
    let r = record(user("alice"), soon());
    t.create(&id, r.clone(), now).await.unwrap();
    assert_eq!(t.get(&id, now).await.unwrap(), Some(r.clone()));
    assert_eq!(t.remove(&id).await.unwrap(), Some(r));
    assert_eq!(t.get(&id, now).await.unwrap(), None);
    assert_eq!(t.remove(&id).await.unwrap(), None);
    // Not an id of ours: never made (and never a file name).
    for bad in [
        "",
        "short",
        "../../../../etc/passwd",
        &"a".repeat(23),
        "aaaaaaaaaaaaaaaaaaaaa/",
    ] {
        assert!(
            t.create(bad, record(user("alice"), soon()), now)
                .await
                .is_err(),
            "{bad}"
        );
    }
}

async fn an_id_is_made_once(t: Arc<dyn UploadSessions>) {
    let now = SystemTime::now();
    let id = new_id();
    t.create(&id, record(user("alice"), soon()), now)
        .await
        .unwrap();
    // Another owner cannot take it over by creating it again.
    assert_eq!(
        t.create(&id, record(user("mallory"), soon()), now).await,
        Err(UploadsError::Taken)
    );
    assert_eq!(t.get(&id, now).await.unwrap().unwrap().owner, user("alice"));
}

async fn an_owner_has_at_most_the_cap_of_unfinished_uploads(t: Arc<dyn UploadSessions>) {
    let now = SystemTime::now();
    let mut ids = Vec::new();
    for _ in 0..MAX_UPLOADS_PER_OWNER {
        let id = new_id();
        t.create(&id, record(user("alice"), soon()), now)
            .await
            .unwrap();
        ids.push(id);
    }
    assert_eq!(
        t.create(&new_id(), record(user("alice"), soon()), now)
            .await,
        Err(UploadsError::Full)
    );
    // A link of alice's is another owner, and so is bob.
    t.create(
        &new_id(),
        record(UploadOwner::Link("alice".into()), soon()),
        now,
    )
    .await
    .unwrap();
    t.create(&new_id(), record(user("bob"), soon()), now)
        .await
        .unwrap();
    // A finished one frees its place (its receipt stays); a removed one too.
    t.complete(&ids[0], "{}".into()).await.unwrap();
    t.create(&new_id(), record(user("alice"), soon()), now)
        .await
        .unwrap();
    t.remove(&ids[1]).await.unwrap();
    t.create(&new_id(), record(user("alice"), soon()), now)
        .await
        .unwrap();
    assert_eq!(
        t.create(&new_id(), record(user("alice"), soon()), now)
            .await,
        Err(UploadsError::Full)
    );
    // Completing again does not free another place.
    t.complete(&ids[0], "{}".into()).await.unwrap();
    assert_eq!(
        t.create(&new_id(), record(user("alice"), soon()), now)
            .await,
        Err(UploadsError::Full)
    );
}

async fn racing_creations_for_the_last_place_cannot_all_win(t: Arc<dyn UploadSessions>) {
    let now = SystemTime::now();
    for _ in 0..MAX_UPLOADS_PER_OWNER - 1 {
        t.create(&new_id(), record(user("alice"), soon()), now)
            .await
            .unwrap();
    }
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let t = Arc::clone(&t);
            tokio::spawn(async move {
                t.create(&new_id(), record(user("alice"), soon()), SystemTime::now())
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(()) => won += 1,
            Err(UploadsError::Full) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(won, 1, "exactly one racer takes the last place");
}

async fn an_expired_record_is_gone_for_every_reader_and_every_change(t: Arc<dyn UploadSessions>) {
    let now = SystemTime::now();
    let id = new_id();
    t.create(
        &id,
        record(user("alice"), now + Duration::from_secs(10)),
        now,
    )
    .await
    .unwrap();
    let later = now + Duration::from_secs(11);
    assert_eq!(t.get(&id, later).await.unwrap(), None);
    let gone = t.take_expired(later).await.unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].0, id);
    assert_eq!(
        t.set_kept(&id, Some((5, [1; 32]))).await,
        Err(UploadsError::NotFound)
    );
    assert_eq!(
        t.renew(&id, later + UPLOAD_TTL).await,
        Err(UploadsError::NotFound)
    );
    assert_eq!(
        t.complete(&id, "{}".into()).await,
        Err(UploadsError::NotFound)
    );
    assert!(
        t.take_expired(later).await.unwrap().is_empty(),
        "taken once"
    );
    // Expired ones hold no place either.
    for _ in 0..MAX_UPLOADS_PER_OWNER {
        t.create(
            &new_id(),
            record(user("bob"), now + Duration::from_secs(10)),
            now,
        )
        .await
        .unwrap();
    }
    t.create(&new_id(), record(user("bob"), later + UPLOAD_TTL), later)
        .await
        .unwrap();
}

async fn a_renewal_never_shortens_the_lease(t: Arc<dyn UploadSessions>) {
    let now = SystemTime::now();
    let id = new_id();
    t.create(
        &id,
        record(user("alice"), now + Duration::from_secs(100)),
        now,
    )
    .await
    .unwrap();
    t.renew(&id, now + Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        t.get(&id, now).await.unwrap().unwrap().expires,
        now + Duration::from_secs(100)
    );
    t.renew(&id, now + Duration::from_secs(1000)).await.unwrap();
    assert!(
        t.get(&id, now + Duration::from_secs(500))
            .await
            .unwrap()
            .is_some()
    );
}

async fn kept_and_complete_are_recorded(t: Arc<dyn UploadSessions>) {
    let now = SystemTime::now();
    let id = new_id();
    t.create(&id, record(user("alice"), soon()), now)
        .await
        .unwrap();
    t.set_kept(&id, Some((42, [9; 32]))).await.unwrap();
    assert_eq!(
        t.get(&id, now).await.unwrap().unwrap().kept,
        Some((42, [9; 32]))
    );
    t.set_kept(&id, None).await.unwrap();
    assert_eq!(t.get(&id, now).await.unwrap().unwrap().kept, None);
    t.set_kept(&id, Some((42, [9; 32]))).await.unwrap();
    t.complete(&id, "{\"receipt\":{}}".into()).await.unwrap();
    let r = t.get(&id, now).await.unwrap().unwrap();
    assert_eq!(r.kept, None, "a committed upload keeps nothing");
    assert_eq!(r.receipt.as_deref(), Some("{\"receipt\":{}}"));
}

async fn a_removed_record_cannot_be_changed_again(t: Arc<dyn UploadSessions>) {
    let now = SystemTime::now();
    let id = new_id();
    t.create(&id, record(user("alice"), soon()), now)
        .await
        .unwrap();
    t.remove(&id).await.unwrap();
    assert_eq!(
        t.set_kept(&id, Some((1, [0; 32]))).await,
        Err(UploadsError::NotFound)
    );
    assert_eq!(
        t.complete(&id, "{}".into()).await,
        Err(UploadsError::NotFound)
    );
    assert_eq!(t.get(&id, now).await.unwrap(), None);
    // The id can be made again (by its owner's next creation only if the random id repeats).
    t.create(&id, record(user("alice"), soon()), now)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_persisted_table_comes_back_with_its_records_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let id = new_id();
    {
        let t = MemoryUploads::persisted(dir.path(), now).unwrap();
        t.create(&id, record(user("alice"), soon()), now)
            .await
            .unwrap();
        t.set_kept(&id, Some((7, [3; 32]))).await.unwrap();
    }
    let t = MemoryUploads::persisted(dir.path(), now).unwrap();
    assert_eq!(
        t.get(&id, now).await.unwrap().unwrap().kept,
        Some((7, [3; 32]))
    );
}
