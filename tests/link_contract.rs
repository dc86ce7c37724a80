//! The contract of a `LinkStore` (`ferry::state::links`), written once and run against each
//! store: in memory (`MemoryLinks`) and in `links.toml` (`TomlLinks`). A new store proves
//! itself by passing it unchanged: give [`link_contract!`] an expression that makes a fresh,
//! empty backing and returns a function opening one more store on it (as another process
//! would). Reservations are a process's own: the cases that race for a slot use one store.
//!
//! Many cases are an attacker's sequence of legal requests that would make a counter lie.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry::accounts::links::TomlLinks;
use ferry::state::links::{
    Link, LinkError, LinkId, LinkKind, LinkRefused, LinkSpec, LinkStore, LinkUse,
    MAX_LINKS_PER_OWNER, MemoryLinks, NewLink, issue,
};
use ferry::state::tokens::whole_seconds;

/// Opens one more store on a test's backing.
pub type Open = dyn Fn() -> Arc<dyn LinkStore> + Send + Sync;

macro_rules! link_contract {
    // Each case with the attribute given first (such as `#[ignore = "needs postgres; ..."]`).
    (#[$attr:meta] $fresh:expr) => {
        $crate::link_contract::link_contract!(@attr_cases [$attr] $fresh;
            add_get_list_revoke,
            add_of_a_taken_id_fails_and_changes_nothing,
            by_token_refuses_every_variant_of_the_token,
            a_reissued_id_never_revives_the_old_token,
            a_second_store_sees_the_writes_of_the_first,
            revoke_user_removes_all_of_theirs_and_only_theirs,
            an_owner_has_at_most_the_cap_of_live_links,
            invalid_records_are_refused,
            two_uploads_racing_for_the_last_slot_cannot_both_win,
            reservations_count_against_max_bytes,
            an_abandoned_reservation_expires_and_cannot_commit_later,
            a_commit_of_more_than_was_reserved_is_refused,
            revoke_during_an_upload_refuses_its_commit,
            a_link_made_again_under_the_same_id_takes_no_old_reservation,
            an_expired_link_refuses_new_uploads_and_commits,
            released_and_committed_uses_end,
            uses_of_the_wrong_kind_are_refused,
            downloads_are_counted_atomically_up_to_the_limit,
            a_dropped_use_gives_its_slot_back
        );
    };
    ($fresh:expr) => {
        $crate::link_contract::link_contract!(@cases $fresh;
            add_get_list_revoke,
            add_of_a_taken_id_fails_and_changes_nothing,
            by_token_refuses_every_variant_of_the_token,
            a_reissued_id_never_revives_the_old_token,
            a_second_store_sees_the_writes_of_the_first,
            revoke_user_removes_all_of_theirs_and_only_theirs,
            an_owner_has_at_most_the_cap_of_live_links,
            invalid_records_are_refused,
            two_uploads_racing_for_the_last_slot_cannot_both_win,
            reservations_count_against_max_bytes,
            an_abandoned_reservation_expires_and_cannot_commit_later,
            a_commit_of_more_than_was_reserved_is_refused,
            revoke_during_an_upload_refuses_its_commit,
            a_link_made_again_under_the_same_id_takes_no_old_reservation,
            an_expired_link_refuses_new_uploads_and_commits,
            released_and_committed_uses_end,
            uses_of_the_wrong_kind_are_refused,
            downloads_are_counted_atomically_up_to_the_limit,
            a_dropped_use_gives_its_slot_back
        );
    };
    (@attr_cases [$attr:meta] $fresh:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[$attr]
            async fn $case() {
                let open = $fresh;
                $crate::link_contract::$case(&open).await;
            }
        )*
    };
    (@cases $fresh:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let open = $fresh;
                $crate::link_contract::$case(&open).await;
            }
        )*
    };
}
pub(crate) use link_contract;

const LEASE: Duration = Duration::from_secs(60);

fn now() -> SystemTime {
    whole_seconds(SystemTime::now())
}

fn upload(owner: &str) -> LinkSpec {
    LinkSpec {
        owner: owner.into(),
        folder: "/drop".into(),
        kind: LinkKind::Upload,
        ttl: Some(Duration::from_secs(3600)),
        max_files: None,
        max_bytes: None,
        max_downloads: None,
        password: None,
        note: None,
    }
}

fn download(owner: &str, max: Option<u64>) -> LinkSpec {
    LinkSpec {
        folder: "/report.pdf".into(),
        kind: LinkKind::Download,
        max_downloads: max,
        ..upload(owner)
    }
}

async fn add(store: &dyn LinkStore, spec: LinkSpec) -> (NewLink, Link) {
    let (t, l) = issue(spec, now(), |_| false).unwrap();
    store.add(&l).await.unwrap();
    (t, l)
}

async fn used(store: &dyn LinkStore, id: LinkId) -> (u64, u64, u64) {
    let l = store.get(id).await.unwrap().unwrap();
    (l.used_files, l.used_bytes, l.used_downloads)
}

pub async fn add_get_list_revoke(open: &Open) {
    let store = open();
    assert_eq!(store.list(None).await.unwrap(), vec![]);
    let (_, b) = add(&*store, upload("bob")).await;
    let (_, a1) = add(&*store, upload("alice")).await;
    let (_, a2) = add(
        &*store,
        LinkSpec {
            ttl: None,
            note: Some("<script>alert(1)</script>".into()),
            ..download("alice", Some(3))
        },
    )
    .await;
    assert_eq!(store.get(a1.id).await.unwrap(), Some(a1.clone()));
    assert_eq!(store.get(a2.id).await.unwrap(), Some(a2.clone()));
    let all = store.list(None).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all[0].owner == "alice" && all[1].owner == "alice" && all[2] == b);
    let alices = store.list(Some("alice")).await.unwrap();
    assert!(alices.len() == 2 && alices.contains(&a1) && alices.contains(&a2));
    store.revoke(a1.id).await.unwrap();
    assert_eq!(store.get(a1.id).await.unwrap(), None);
    assert_eq!(store.revoke(a1.id).await, Err(LinkError::NotFound(a1.id)));
    assert_eq!(store.list(Some("alice")).await.unwrap(), vec![a2]);
}

pub async fn add_of_a_taken_id_fails_and_changes_nothing(open: &Open) {
    let store = open();
    let (_, first) = add(&*store, upload("alice")).await;
    let (_, mut second) = issue(upload("bob"), now(), |_| false).unwrap();
    second.id = first.id;
    assert_eq!(
        store.add(&second).await,
        Err(LinkError::AlreadyExists(first.id))
    );
    assert_eq!(store.get(first.id).await.unwrap(), Some(first));
}

pub async fn by_token_refuses_every_variant_of_the_token(open: &Open) {
    let store = open();
    let (t, l) = add(&*store, upload("alice")).await;
    let s = t.expose();
    assert_eq!(store.by_token(s).await.unwrap(), Some(l.clone()));
    let (other, _) = issue(upload("alice"), now(), |_| false).unwrap();
    let swapped = format!("dl_{}_{}", l.id, &other.expose()[12..]);
    let unknown = format!("dl_{}_{}", LinkId(l.id.0 ^ 1), &s[12..]);
    let api = s.replacen("dl_", "fy_", 1);
    // The id in capitals (an id of digits only, one in 40, has none: then a letter of the
    // secret is, which must refuse it as well).
    let upper = match s.replacen(&l.id.to_string(), &l.id.to_string().to_uppercase(), 1) {
        u if u != s => u,
        _ => {
            let at = s.rfind(|c: char| c.is_ascii_lowercase()).unwrap();
            format!("{}{}", &s[..at], s[at..].to_ascii_uppercase())
        }
    };
    assert_ne!(upper, s);
    for bad in [
        &*swapped,
        &unknown,
        &api,
        &s[..s.len() - 1],
        &format!("{s}/"),
        &format!("{s}A"),
        &upper,
        "",
        "dl_",
        "../../etc/passwd",
    ] {
        assert_eq!(store.by_token(bad).await.unwrap(), None, "{bad:?}");
    }
}

pub async fn a_reissued_id_never_revives_the_old_token(open: &Open) {
    let store = open();
    let (old, l) = add(&*store, upload("alice")).await;
    store.revoke(l.id).await.unwrap();
    let (new, mut again) = issue(upload("alice"), now(), |_| false).unwrap();
    again.id = l.id;
    store.add(&again).await.unwrap();
    assert_eq!(store.by_token(old.expose()).await.unwrap(), None);
    // The new token names its own id, so it opens nothing under the old one either.
    assert_eq!(store.by_token(new.expose()).await.unwrap(), None);
}

pub async fn a_second_store_sees_the_writes_of_the_first(open: &Open) {
    let (one, two) = (open(), open());
    assert_eq!(two.list(None).await.unwrap(), vec![]);
    let (t, l) = add(&*one, upload("alice")).await;
    assert_eq!(two.by_token(t.expose()).await.unwrap(), Some(l.clone()));
    let u = one.reserve_use(l.id, 7, LEASE).await.unwrap();
    one.commit_use(u, 7).await.unwrap();
    assert_eq!(used(&*two, l.id).await, (1, 7, 0), "counters are shared");
    two.revoke(l.id).await.unwrap();
    assert_eq!(one.by_token(t.expose()).await.unwrap(), None);
    assert_eq!(
        one.reserve_use(l.id, 1, LEASE).await,
        Err(LinkRefused::Gone)
    );
}

pub async fn revoke_user_removes_all_of_theirs_and_only_theirs(open: &Open) {
    let store = open();
    add(&*store, upload("alice")).await;
    add(&*store, download("alice", None)).await;
    let (_, b) = add(&*store, upload("alice2")).await;
    assert_eq!(store.revoke_user("alice").await.unwrap(), 2);
    assert_eq!(store.revoke_user("alice").await.unwrap(), 0);
    assert_eq!(store.list(None).await.unwrap(), vec![b]);
}

pub async fn an_owner_has_at_most_the_cap_of_live_links(open: &Open) {
    let store = open();
    for _ in 0..MAX_LINKS_PER_OWNER {
        add(&*store, upload("alice")).await;
    }
    let (_, over) = issue(upload("alice"), now(), |_| false).unwrap();
    assert!(matches!(
        store.add(&over).await,
        Err(LinkError::Full { .. })
    ));
    add(&*store, upload("bob")).await;
    let first = store.list(Some("alice")).await.unwrap()[0].id;
    store.revoke(first).await.unwrap();
    store.add(&over).await.unwrap();
}

pub async fn invalid_records_are_refused(open: &Open) {
    let store = open();
    let (_, good) = issue(upload("alice"), now(), |_| false).unwrap();
    let mut bad = Vec::new();
    for folder in ["", "drop", "/../x", "/a/", "/a//b", "/.ferry-x", "/a\u{7}"] {
        bad.push(Link {
            folder: folder.into(),
            ..good.clone()
        });
    }
    for note in [&*"n".repeat(201), "a\nb", "\u{202e}fdp.exe"] {
        bad.push(Link {
            note: Some(note.into()),
            ..good.clone()
        });
    }
    for owner in ["", "al ice", &"u".repeat(65)] {
        bad.push(Link {
            owner: owner.into(),
            ..good.clone()
        });
    }
    bad.push(Link {
        password: Some("hunter2".into()),
        ..good.clone()
    });
    bad.push(Link {
        expires: Some(good.created),
        ..good.clone()
    });
    bad.push(Link {
        max_downloads: Some(1),
        ..good.clone()
    });
    bad.push(Link {
        max_bytes: Some(u64::MAX),
        ..good.clone()
    });
    for l in &bad {
        assert!(
            matches!(store.add(l).await, Err(LinkError::Invalid { .. })),
            "{l:?}"
        );
    }
    assert_eq!(store.list(None).await.unwrap(), vec![]);
}

pub async fn two_uploads_racing_for_the_last_slot_cannot_both_win(open: &Open) {
    let store = open();
    let (_, l) = add(
        &*store,
        LinkSpec {
            max_files: Some(3),
            ..upload("alice")
        },
    )
    .await;
    // Two files are in already; eight uploads race for the last slot.
    for _ in 0..2 {
        let u = store.reserve_use(l.id, 1, LEASE).await.unwrap();
        store.commit_use(u, 1).await.unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.reserve_use(l.id, 1, LEASE).await
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(u) => won.push(u),
            Err(e) => assert_eq!(e, LinkRefused::Files),
        }
    }
    assert_eq!(won.len(), 1, "exactly one reservation for the last slot");
    store.commit_use(won[0], 1).await.unwrap();
    assert_eq!(used(&*store, l.id).await, (3, 3, 0));
    assert_eq!(
        store.reserve_use(l.id, 0, LEASE).await,
        Err(LinkRefused::Files)
    );
}

pub async fn reservations_count_against_max_bytes(open: &Open) {
    let store = open();
    let (_, l) = add(
        &*store,
        LinkSpec {
            max_bytes: Some(100),
            ..upload("alice")
        },
    )
    .await;
    let a = store.reserve_use(l.id, 60, LEASE).await.unwrap();
    assert_eq!(
        store.reserve_use(l.id, 41, LEASE).await,
        Err(LinkRefused::Bytes),
        "60 reserved + 41 > 100"
    );
    let b = store.reserve_use(l.id, 40, LEASE).await.unwrap();
    // A commit of fewer bytes than reserved gives the rest back.
    store.commit_use(a, 50).await.unwrap();
    let c = store.reserve_use(l.id, 10, LEASE).await.unwrap();
    assert_eq!(
        store.reserve_use(l.id, 1, LEASE).await,
        Err(LinkRefused::Bytes)
    );
    store.commit_use(b, 40).await.unwrap();
    store.commit_use(c, 10).await.unwrap();
    assert_eq!(used(&*store, l.id).await, (3, 100, 0));
    // Empty files still fit; a byte does not.
    let d = store.reserve_use(l.id, 0, LEASE).await.unwrap();
    store.commit_use(d, 0).await.unwrap();
    assert_eq!(
        store.reserve_use(l.id, 1, LEASE).await,
        Err(LinkRefused::Bytes)
    );
}

pub async fn an_abandoned_reservation_expires_and_cannot_commit_later(open: &Open) {
    let store = open();
    let (_, l) = add(
        &*store,
        LinkSpec {
            max_files: Some(1),
            ..upload("alice")
        },
    )
    .await;
    // Wide margins: a loaded machine may oversleep by a few hundred milliseconds.
    let short = Duration::from_millis(1500);
    let abandoned = store.reserve_use(l.id, 5, short).await.unwrap();
    assert_eq!(
        store.reserve_use(l.id, 5, LEASE).await,
        Err(LinkRefused::Files)
    );
    // Renewing keeps it alive past its first deadline.
    tokio::time::sleep(Duration::from_millis(900)).await;
    store.renew_use(abandoned, short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        store.reserve_use(l.id, 5, LEASE).await,
        Err(LinkRefused::Files),
        "renewed"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let fresh = store.reserve_use(l.id, 5, LEASE).await.unwrap();
    assert_eq!(
        store.commit_use(abandoned, 5).await,
        Err(LinkRefused::LeaseGone)
    );
    assert_eq!(
        store.renew_use(abandoned, LEASE).await,
        Err(LinkRefused::LeaseGone)
    );
    store.commit_use(fresh, 5).await.unwrap();
    assert_eq!(used(&*store, l.id).await, (1, 5, 0));
}

pub async fn a_commit_of_more_than_was_reserved_is_refused(open: &Open) {
    let store = open();
    let (_, l) = add(
        &*store,
        LinkSpec {
            max_bytes: Some(100),
            ..upload("alice")
        },
    )
    .await;
    let u = store.reserve_use(l.id, 10, LEASE).await.unwrap();
    assert_eq!(
        store.commit_use(u, 11).await,
        Err(LinkRefused::OverReserved)
    );
    assert_eq!(used(&*store, l.id).await, (0, 0, 0));
    // The reservation is kept: the honest commit still lands.
    store.commit_use(u, 10).await.unwrap();
    assert_eq!(used(&*store, l.id).await, (1, 10, 0));
    assert_eq!(
        store.commit_use(u, 10).await,
        Err(LinkRefused::LeaseGone),
        "a use commits once"
    );
    assert_eq!(used(&*store, l.id).await, (1, 10, 0));
}

pub async fn revoke_during_an_upload_refuses_its_commit(open: &Open) {
    let store = open();
    let (_, l) = add(&*store, upload("alice")).await;
    let u = store.reserve_use(l.id, 10, LEASE).await.unwrap();
    open().revoke(l.id).await.unwrap();
    assert_eq!(store.commit_use(u, 10).await, Err(LinkRefused::Gone));
    assert_eq!(store.get(l.id).await.unwrap(), None);
}

pub async fn a_link_made_again_under_the_same_id_takes_no_old_reservation(open: &Open) {
    let store = open();
    let (_, l) = add(&*store, upload("alice")).await;
    let u = store.reserve_use(l.id, 10, LEASE).await.unwrap();
    store.revoke(l.id).await.unwrap();
    let (_, mut again) = issue(
        LinkSpec {
            max_files: Some(1),
            ..upload("bob")
        },
        now(),
        |_| false,
    )
    .unwrap();
    again.id = l.id;
    store.add(&again).await.unwrap();
    assert_eq!(store.commit_use(u, 10).await, Err(LinkRefused::Gone));
    assert_eq!(used(&*store, l.id).await, (0, 0, 0));
    // And the old reservation does not hold the new link's only slot.
    let v = store.reserve_use(l.id, 1, LEASE).await.unwrap();
    store.commit_use(v, 1).await.unwrap();
}

pub async fn an_expired_link_refuses_new_uploads_and_commits(open: &Open) {
    let store = open();
    let made = now() - Duration::from_secs(10);
    let (_, old) = issue(
        LinkSpec {
            ttl: Some(Duration::from_secs(5)),
            ..upload("alice")
        },
        made,
        |_| false,
    )
    .unwrap();
    store.add(&old).await.unwrap();
    assert_eq!(
        store.reserve_use(old.id, 1, LEASE).await,
        Err(LinkRefused::Expired)
    );
    // A link that expires while an upload runs refuses its commit.
    let (_, l) = add(
        &*store,
        LinkSpec {
            ttl: Some(Duration::from_secs(2)),
            ..upload("alice")
        },
    )
    .await;
    let u = store.reserve_use(l.id, 1, LEASE).await.unwrap();
    let expires = l.expires.unwrap();
    while SystemTime::now() < expires {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.commit_use(u, 1).await, Err(LinkRefused::Expired));
    assert_eq!(used(&*store, l.id).await, (0, 0, 0));
}

pub async fn released_and_committed_uses_end(open: &Open) {
    let store = open();
    let (_, l) = add(
        &*store,
        LinkSpec {
            max_files: Some(1),
            ..upload("alice")
        },
    )
    .await;
    let u = store.reserve_use(l.id, 1, LEASE).await.unwrap();
    store.release_use(u).await.unwrap();
    store.release_use(u).await.unwrap();
    assert_eq!(store.commit_use(u, 1).await, Err(LinkRefused::LeaseGone));
    let v = store.reserve_use(l.id, 1, LEASE).await.unwrap();
    store.commit_use(v, 1).await.unwrap();
    assert_eq!(used(&*store, l.id).await, (1, 1, 0));
}

pub async fn uses_of_the_wrong_kind_are_refused(open: &Open) {
    let store = open();
    let (_, d) = add(&*store, download("alice", None)).await;
    let (_, u) = add(&*store, upload("alice")).await;
    assert_eq!(
        store.reserve_use(d.id, 1, LEASE).await,
        Err(LinkRefused::WrongKind)
    );
    assert!(matches!(
        store.count_download(u.id).await,
        Err(LinkError::Invalid { .. })
    ));
    let gone = LinkId(u.id.0 ^ 1);
    assert_eq!(
        store.count_download(gone).await,
        Err(LinkError::NotFound(gone))
    );
    assert_eq!(
        store.reserve_use(gone, 1, LEASE).await,
        Err(LinkRefused::Gone)
    );
}

pub async fn downloads_are_counted_atomically_up_to_the_limit(open: &Open) {
    let store = open();
    let (_, l) = add(&*store, download("alice", Some(5))).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        // Half through another store on the same backing, as another process would.
        let store = if i % 2 == 0 { store.clone() } else { open() };
        tasks.push(tokio::spawn(
            async move { store.count_download(l.id).await },
        ));
    }
    let mut granted = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            granted += 1;
        }
    }
    assert_eq!(granted, 5);
    assert_eq!(used(&*store, l.id).await, (0, 0, 5));
    assert!(!store.count_download(l.id).await.unwrap());
    let (_, unlimited) = add(&*store, download("alice", None)).await;
    for _ in 0..3 {
        assert!(store.count_download(unlimited.id).await.unwrap());
    }
    assert_eq!(used(&*store, unlimited.id).await, (0, 0, 3));
}

pub async fn a_dropped_use_gives_its_slot_back(open: &Open) {
    let store = open();
    let (_, l) = add(
        &*store,
        LinkSpec {
            max_files: Some(1),
            ..upload("alice")
        },
    )
    .await;
    let dropped = LinkUse::reserve(&store, l.id, 1, LEASE).await.unwrap();
    assert_eq!(dropped.link(), l.id);
    assert_eq!(
        store.reserve_use(l.id, 1, LEASE).await,
        Err(LinkRefused::Files)
    );
    // An upload that fails on any path drops its use: the slot comes back without waiting
    // for the lease (at once, or a moment later for a store that releases on another thread).
    drop(dropped);
    let mut again = None;
    for _ in 0..100 {
        if let Ok(u) = LinkUse::reserve(&store, l.id, 1, LEASE).await {
            again = Some(u);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut again = again.expect("the dropped use was given back");
    again.renew_if_due().await.unwrap();
    // A use that commits more than it reserved is refused and let go.
    assert_eq!(again.commit(2).await, Err(LinkRefused::OverReserved));
    let mut last = Err(LinkRefused::Files);
    for _ in 0..100 {
        last = LinkUse::reserve(&store, l.id, 1, LEASE).await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    last.unwrap().commit(1).await.unwrap();
    assert_eq!(used(&*store, l.id).await, (1, 1, 0));
}

/// One server's links in memory: every open is the same tables.
mod memory {
    use super::*;

    fn fresh() -> impl Fn() -> Arc<dyn LinkStore> + Send + Sync {
        let store: Arc<dyn LinkStore> = Arc::new(MemoryLinks::new());
        move || store.clone()
    }

    link_contract!(fresh());
}

/// `links.toml`, starting from no file; each open is another store on the same file, as
/// `ferry link` and `ferry serve` are.
mod toml_file {
    use super::*;

    fn fresh() -> impl Fn() -> Arc<dyn LinkStore> + Send + Sync {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users.toml");
        move || {
            let _owns = &dir;
            Arc::new(TomlLinks::beside_users(&users))
        }
    }

    link_contract!(fresh());
}

/// PostgreSQL (issue 15): each case on a fresh database; each store another pool on it, as
/// another node would open it.
mod needs_postgres {
    use super::*;

    /// Runs `f` to its end from the synchronous `open` of the contract.
    fn wait<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
    }

    fn fresh() -> impl Fn() -> Arc<dyn LinkStore> + Send + Sync {
        let url = wait(crate::util::pg::fresh_db());
        move || {
            let cfg = ferry::pg::PgConfig::from_url(&url).unwrap();
            Arc::new(wait(ferry::pg::links::open(&cfg)).unwrap())
        }
    }

    link_contract!(
        #[ignore = "needs postgres; .ci/run installs it"]
        fresh()
    );
}
