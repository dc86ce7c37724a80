//! The contract of the shared-state traits (`ferry::state`), written once and run against
//! every backend: today the in-memory one; the PostgreSQL one (issue 15) runs the same
//! functions unchanged. A backend is handed over as two [`Node`]s: two handles onto one
//! shared state, as two servers side by side would hold them (in memory, two clones of the
//! same tables). Assertions are only what a database-backed store can keep too.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry::domain::{Footprint, Quota, Refused};
use ferry::server::penalty::{Penalties, PenaltyConfig};
use ferry::state::memory::{MemoryLedger, MemoryNameLocks, MemoryPartials};
use ferry::state::{
    Counting, NameLock, NameLocks, PartialIndex, PartialRecord, PenaltyStore, Reservation,
    StateError, UsageLedger,
};

/// One node's handles onto the shared state under test.
#[derive(Clone)]
struct Node {
    ledger: Arc<dyn UsageLedger>,
    names: Arc<dyn NameLocks>,
    penalties: Arc<dyn PenaltyStore>,
    partials: Arc<dyn PartialIndex>,
}

/// The penalty settings every backend under test is built with: a ban once more than
/// `BAN_AFTER` of penalty is held, sources per IPv4 address and IPv6 /64.
const BAN_AFTER: Duration = Duration::from_millis(400);

fn fp(bytes: u64, files: u64) -> Footprint {
    Footprint { bytes, files }
}

fn quota(bytes: u64, files: u64) -> Quota {
    Quota {
        bytes: Some(bytes),
        files: Some(files),
        max_file_size: None,
    }
}

/// Two nodes sharing one in-memory state.
fn memory() -> (Node, Node) {
    let penalties = Penalties::new(PenaltyConfig {
        min_before_ban: BAN_AFTER,
        max: Duration::from_secs(30),
        ..PenaltyConfig::default()
    });
    let node = Node {
        ledger: MemoryLedger::new(),
        names: MemoryNameLocks::new(),
        penalties: Arc::new(penalties),
        partials: MemoryPartials::new(),
    };
    (node.clone(), node)
}

/// Counts `home` as `used` (it must not be counted yet).
async fn count(n: &Node, home: &str, used: Footprint) {
    match n
        .ledger
        .claim_count(home, Duration::from_secs(60))
        .await
        .unwrap()
    {
        Counting::Yours(claim) => n.ledger.set_counted(claim, used).await.unwrap(),
        other => panic!("{home} should be uncounted: {other:?}"),
    }
}

async fn used(n: &Node, home: &str) -> Footprint {
    n.ledger.usage(home).await.unwrap().unwrap_or_default().used
}

async fn reserved(n: &Node, home: &str) -> Footprint {
    n.ledger
        .usage(home)
        .await
        .unwrap()
        .unwrap_or_default()
        .reserved
}

// -- the contract, generic over the backend ------------------------------------------------

/// A home is counted once: the first claim counts it, others wait (`Busy`) and then see
/// the count; a claim that expired cannot record its count over a newer one; reservations
/// need a count; changes to an uncounted home are left to its count; `forget` makes the
/// next user count again.
async fn a_home_is_counted_once((a, b): (Node, Node)) {
    let home = "h-count";
    assert_eq!(a.ledger.usage(home).await.unwrap(), None);
    let q = quota(1000, 10);
    assert_eq!(
        Reservation::take(&a.ledger, home, q, 1, fp(1, 1))
            .await
            .unwrap_err(),
        StateError::NotCounted
    );
    a.ledger.adjust(home, fp(500, 1), fp(0, 0)).await.unwrap();
    let Counting::Yours(claim) = a
        .ledger
        .claim_count(home, Duration::from_secs(60))
        .await
        .unwrap()
    else {
        panic!("the first claim counts")
    };
    assert_eq!(
        b.ledger
            .claim_count(home, Duration::from_secs(60))
            .await
            .unwrap(),
        Counting::Busy
    );
    a.ledger.set_counted(claim, fp(10, 2)).await.unwrap();
    assert_eq!(
        b.ledger
            .claim_count(home, Duration::from_secs(60))
            .await
            .unwrap(),
        Counting::Known(ferry::state::Usage {
            used: fp(10, 2),
            reserved: fp(0, 0)
        })
    );
    assert_eq!(
        used(&b, home).await,
        fp(10, 2),
        "the early adjust was left to the count"
    );
    assert_eq!(
        a.ledger.set_counted(claim, fp(0, 0)).await,
        Err(StateError::LeaseGone),
        "a claim records once"
    );

    // A slow count whose claim expired cannot overwrite the count of the one that took over
    // nor the changes made since.
    let home = "h-slow";
    let ttl = Duration::from_millis(200);
    let Counting::Yours(slow) = a.ledger.claim_count(home, ttl).await.unwrap() else {
        panic!()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Counting::Yours(fast) = b.ledger.claim_count(home, ttl).await.unwrap() else {
        panic!("an expired claim frees the count")
    };
    b.ledger.set_counted(fast, fp(0, 0)).await.unwrap();
    let r = Reservation::take(&b.ledger, home, q, 900, fp(900, 1))
        .await
        .unwrap();
    r.commit(fp(900, 1), fp(0, 0)).await.unwrap();
    assert_eq!(
        a.ledger.set_counted(slow, fp(0, 0)).await,
        Err(StateError::LeaseGone)
    );
    assert_eq!(used(&a, home).await, fp(900, 1));

    // Forgotten: the next user counts again; live reservations stay.
    let held = Reservation::take(&a.ledger, home, q, 50, fp(50, 1))
        .await
        .unwrap();
    b.ledger.forget(home).await.unwrap();
    assert_eq!(a.ledger.usage(home).await.unwrap(), None);
    count(&b, home, fp(100, 1)).await;
    assert_eq!(reserved(&a, home).await, fp(50, 1));
    held.release().await.unwrap();
    assert_eq!(reserved(&a, home).await, fp(0, 0));
}

/// A count given up (its walk failed) frees the home for the next claim at once, on any node.
async fn an_abandoned_count_frees_the_claim((a, b): (Node, Node)) {
    let home = "h-abandon";
    let ttl = Duration::from_secs(60);
    let Counting::Yours(claim) = a.ledger.claim_count(home, ttl).await.unwrap() else {
        panic!("the first claim counts")
    };
    assert_eq!(
        b.ledger.claim_count(home, ttl).await.unwrap(),
        Counting::Busy
    );
    a.ledger.abandon_count(claim);
    let Counting::Yours(again) = b.ledger.claim_count(home, ttl).await.unwrap() else {
        panic!("an abandoned claim frees the count at once")
    };
    assert_eq!(
        a.ledger.set_counted(claim, fp(1, 1)).await,
        Err(StateError::LeaseGone),
        "the abandoned claim records nothing"
    );
    b.ledger.set_counted(again, fp(7, 1)).await.unwrap();
    assert_eq!(used(&a, home).await, fp(7, 1));
}

/// Reservations on two nodes together never pass the quota; a dropped one gives its room
/// back; a committed one becomes usage, measured, not estimated.
async fn reservations_hold_the_quota_across_nodes((a, b): (Node, Node)) {
    let home = "h-quota";
    count(&a, home, fp(0, 0)).await;
    let q = quota(1000, 10);
    let r1 = Reservation::take(&a.ledger, home, q, 600, fp(600, 1))
        .await
        .unwrap();
    let second = Reservation::take(&b.ledger, home, q, 600, fp(600, 1)).await;
    assert_eq!(
        second.unwrap_err(),
        StateError::Refused(Refused::Quota("byte quota"))
    );
    assert_eq!(reserved(&b, home).await, fp(600, 1));
    r1.release().await.unwrap();
    assert_eq!(reserved(&b, home).await, fp(0, 0));
    let r2 = Reservation::take(&b.ledger, home, q, 600, fp(600, 1))
        .await
        .unwrap();
    r2.commit(fp(590, 1), fp(0, 0)).await.unwrap();
    assert_eq!(used(&a, home).await, fp(590, 1));
    assert_eq!(reserved(&a, home).await, fp(0, 0));
    // 410 bytes left: 411 do not fit, 410 do.
    assert!(
        Reservation::take(&a.ledger, home, q, 411, fp(411, 1))
            .await
            .is_err()
    );
    assert!(
        Reservation::take(&a.ledger, home, q, 410, fp(410, 1))
            .await
            .is_ok()
    );
}

/// Many reservations racing on both nodes: the ones admitted fit the quota exactly.
async fn racing_reservations_never_overshoot((a, b): (Node, Node)) {
    let home = "h-race";
    count(&a, home, fp(0, 0)).await;
    let q = quota(10_000, 1_000);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let n = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            Reservation::take(&n.ledger, home, q, 700, fp(700, 1))
                .await
                .ok()
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        if let Some(r) = t.await.unwrap() {
            held.push(r);
        }
    }
    assert_eq!(
        held.len(),
        14,
        "10,000 bytes hold fourteen 700-byte reservations"
    );
    assert_eq!(reserved(&a, home).await, fp(9_800, 14));
    for r in held {
        r.release().await.unwrap();
    }
    assert_eq!(reserved(&b, home).await, fp(0, 0));
}

/// The file quota counts files (directories too), and the largest-file limit refuses
/// before any room is looked at; adding nothing needs no room even over a lowered quota.
async fn file_quota_and_largest_file((a, _b): (Node, Node)) {
    let home = "h-files";
    count(&a, home, fp(5_000, 3)).await;
    let q = Quota {
        bytes: Some(1_000),
        files: Some(3),
        max_file_size: Some(100),
    };
    let big = Reservation::take(&a.ledger, home, q, 101, fp(0, 0)).await;
    assert_eq!(
        big.unwrap_err(),
        StateError::Refused(Refused::TooLarge(100))
    );
    let file = Reservation::take(&a.ledger, home, q, 0, fp(0, 1)).await;
    assert_eq!(
        file.unwrap_err(),
        StateError::Refused(Refused::Quota("file quota"))
    );
    // Replacing a file by a smaller one adds nothing: allowed though over the byte quota.
    let r = Reservation::take(&a.ledger, home, q, 50, fp(0, 0))
        .await
        .unwrap();
    r.commit(fp(50, 1), fp(80, 1)).await.unwrap();
    assert_eq!(used(&a, home).await, fp(4_970, 3));
}

/// `cover` reserves only what the change needs beyond what is held, and refuses what does
/// not fit; a rename onto itself (added = replaced) nets to nothing.
async fn cover_grows_only_by_what_is_missing((a, b): (Node, Node)) {
    let home = "h-cover";
    count(&a, home, fp(100, 1)).await;
    let q = quota(1_000, 10);
    let mut r = Reservation::take(&a.ledger, home, q, 300, fp(300, 1))
        .await
        .unwrap();
    // Nothing changed since the look: covering what it holds reserves nothing more.
    r.cover(fp(300, 1), fp(0, 0)).await.unwrap();
    assert_eq!(r.held(), fp(300, 1));
    // It grew to 700 while another node filled the rest.
    let other = Reservation::take(&b.ledger, home, q, 500, fp(500, 1))
        .await
        .unwrap();
    assert_eq!(
        r.cover(fp(700, 1), fp(0, 0)).await.unwrap_err(),
        StateError::Refused(Refused::Quota("byte quota"))
    );
    other.release().await.unwrap();
    r.cover(fp(700, 1), fp(0, 0)).await.unwrap();
    assert_eq!(r.held(), fp(700, 1));
    assert_eq!(reserved(&b, home).await, fp(700, 1));
    r.commit(fp(700, 1), fp(0, 0)).await.unwrap();
    assert_eq!(used(&b, home).await, fp(800, 2));
    // `mv -f a a`: nothing added, nothing removed, whatever was measured.
    let r = Reservation::take(&a.ledger, home, q, 0, fp(0, 0))
        .await
        .unwrap();
    r.commit(fp(700, 1), fp(700, 1)).await.unwrap();
    assert_eq!(used(&a, home).await, fp(800, 2));
    // Changes outside reservations saturate at zero rather than wrap.
    a.ledger
        .adjust(home, fp(0, 0), fp(5_000, 50))
        .await
        .unwrap();
    assert_eq!(used(&b, home).await, fp(0, 0));
}

/// A lease not renewed expires and its room is free again (a node that died); a renewed
/// one lives on. A change made under an expired lease is still counted (once), but the
/// last check before a change (`cover`) refuses it, since its room went to others.
async fn leases_expire_unless_renewed((a, b): (Node, Node)) {
    let home = "h-lease";
    count(&a, home, fp(0, 0)).await;
    let q = quota(1_000, 10);
    let ttl = Duration::from_secs(1);
    let dead = a
        .ledger
        .reserve(home, q, 900, fp(900, 1), ttl)
        .await
        .unwrap();
    let alive = a.ledger.reserve(home, q, 50, fp(50, 1), ttl).await.unwrap();
    assert!(
        b.ledger
            .reserve(home, q, 900, fp(900, 1), ttl)
            .await
            .is_err()
    );
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        a.ledger.renew(alive, ttl).await.unwrap();
    }
    // `dead` was never renewed: after 1.5 s its room is free, `alive` still holds 50.
    let again = b
        .ledger
        .reserve(home, q, 900, fp(900, 1), ttl)
        .await
        .unwrap();
    assert_eq!(reserved(&a, home).await, fp(950, 2));
    assert_eq!(a.ledger.renew(dead, ttl).await, Err(StateError::LeaseGone));
    assert_eq!(
        a.ledger.grow(dead, fp(1, 0)).await,
        Err(StateError::LeaseGone)
    );
    // The file made under `dead` landed anyway (a storage commit cannot be taken back):
    // it is counted once, and takes no room of the reservations alive.
    a.ledger
        .commit(home, dead, fp(900, 1), fp(0, 0))
        .await
        .unwrap();
    assert_eq!(used(&b, home).await, fp(900, 1));
    assert_eq!(reserved(&b, home).await, fp(950, 2));
    a.ledger
        .commit(home, alive, fp(50, 1), fp(0, 0))
        .await
        .unwrap();
    b.ledger.release(again).await.unwrap();
    assert_eq!(used(&b, home).await, fp(950, 2));
    assert_eq!(reserved(&b, home).await, fp(0, 0));

    // The value refuses a change once its lease is gone, even one that needs no more room;
    // renewing as the work goes keeps it.
    let ttl = Duration::from_millis(600);
    let mut kept = Reservation::take_for(&a.ledger, home, q, 10, fp(10, 1), ttl)
        .await
        .unwrap();
    let mut lost = Reservation::take_for(&a.ledger, home, q, 10, fp(10, 1), ttl)
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        kept.renew_if_due().await.unwrap();
    }
    kept.cover(fp(10, 1), fp(0, 0)).await.unwrap();
    assert_eq!(
        lost.cover(fp(10, 1), fp(0, 0)).await,
        Err(StateError::LeaseGone)
    );
    kept.release().await.unwrap();
}

/// A reservation or a name lock dropped without release is given back soon after (a
/// remote backend may queue it), never held for good.
async fn dropped_holds_are_given_back((a, b): (Node, Node)) {
    let home = "h-drop";
    count(&a, home, fp(0, 0)).await;
    let q = quota(1_000, 10);
    let r = Reservation::take(&a.ledger, home, q, 1_000, fp(1_000, 1))
        .await
        .unwrap();
    let lock = NameLock::try_take(&a.names, home, "x")
        .await
        .unwrap()
        .unwrap();
    drop(r);
    drop(lock);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let room = reserved(&b, home).await == fp(0, 0);
        let name = b
            .names
            .try_lock(home, "x", Duration::from_secs(60))
            .await
            .unwrap();
        if room && let Some(id) = name {
            b.names.unlock(id).await.unwrap();
            break;
        }
        if let Some(id) = name {
            b.names.unlock(id).await.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dropped holds were not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A name is held by one lease at a time across nodes; dropping frees it; other homes and
/// names are independent; an expired lock is free and its old lease cannot free a new one.
async fn a_name_is_held_by_one_upload_at_a_time((a, b): (Node, Node)) {
    let lock = NameLock::try_take(&a.names, "h1", "docs/report.pdf")
        .await
        .unwrap();
    assert!(lock.is_some());
    assert!(
        NameLock::try_take(&b.names, "h1", "docs/report.pdf")
            .await
            .unwrap()
            .is_none()
    );
    let other_home = NameLock::try_take(&b.names, "h2", "docs/report.pdf")
        .await
        .unwrap();
    let other_name = NameLock::try_take(&b.names, "h1", "docs/report (1).pdf")
        .await
        .unwrap();
    assert!(other_home.is_some() && other_name.is_some());
    drop(lock);
    let again = NameLock::try_take(&b.names, "h1", "docs/report.pdf")
        .await
        .unwrap();
    assert!(again.is_some());

    let ttl = Duration::from_millis(200);
    let old = a.names.try_lock("h1", "x", ttl).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.names.renew(old, ttl).await, Err(StateError::LeaseGone));
    let new = b.names.try_lock("h1", "x", ttl).await.unwrap().unwrap();
    a.names.unlock(old).await.unwrap();
    assert!(
        b.names.try_lock("h1", "x", ttl).await.unwrap().is_none(),
        "an old lock's unlock frees nothing it no longer holds"
    );
    b.names.unlock(new).await.unwrap();
    assert!(a.names.try_lock("h1", "x", ttl).await.unwrap().is_some());
}

/// Of many sessions creating one name at once, on both nodes, exactly one gets it.
async fn racing_name_locks_have_one_winner((a, b): (Node, Node)) {
    let mut tasks = Vec::new();
    for i in 0..32 {
        let n = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            NameLock::try_take(&n.names, "h-race", "same.bin")
                .await
                .unwrap()
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        if let Some(l) = t.await.unwrap() {
            winners.push(l);
        }
    }
    assert_eq!(winners.len(), 1);
}

/// Penalties add up across nodes, ban past the threshold (reported once), stay with their
/// source and decay.
async fn penalties_add_up_across_nodes_and_decay((a, b): (Node, Node)) {
    let guesser: IpAddr = "192.0.2.10".parse().unwrap();
    let neighbour: IpAddr = "192.0.2.11".parse().unwrap();
    let step = Duration::from_millis(250);
    assert!(!a.penalties.add(guesser, step).await.unwrap());
    assert_eq!(b.penalties.refused_for(guesser).await.unwrap(), None);
    assert!(
        b.penalties.add(guesser, step).await.unwrap(),
        "over 400 ms: banned"
    );
    assert!(
        !a.penalties.add(guesser, step).await.unwrap(),
        "a ban is reported once"
    );
    let left = a.penalties.refused_for(guesser).await.unwrap().unwrap();
    assert!(left > BAN_AFTER && left <= 3 * step, "{left:?}");
    assert_eq!(b.penalties.refused_for(neighbour).await.unwrap(), None);
    // The same IPv6 /64 is one source; another /64 is not.
    let v6: IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let same: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
    let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    a.penalties.add(v6, 2 * BAN_AFTER).await.unwrap();
    assert!(b.penalties.refused_for(same).await.unwrap().is_some());
    assert!(b.penalties.refused_for(other).await.unwrap().is_none());
    tokio::time::sleep(3 * step + Duration::from_millis(100)).await;
    assert_eq!(a.penalties.refused_for(guesser).await.unwrap(), None);
}

/// The sources refused now are listed from any node, longest first, each by its network's
/// first address, and only while refused: what each node pulls into its own table.
async fn refused_sources_are_listed_from_any_node((a, b): (Node, Node)) {
    let long: IpAddr = "192.0.2.20".parse().unwrap();
    let short: IpAddr = "2001:db8:7:7::9".parse().unwrap();
    let below: IpAddr = "192.0.2.21".parse().unwrap();
    a.penalties.add(long, 3 * BAN_AFTER).await.unwrap();
    a.penalties.add(short, 2 * BAN_AFTER).await.unwrap();
    a.penalties.add(below, BAN_AFTER / 2).await.unwrap();
    let listed = b.penalties.refused_sources(10).await.unwrap();
    let addrs: Vec<IpAddr> = listed.iter().map(|(a, _)| *a).collect();
    assert_eq!(
        addrs,
        [
            "192.0.2.20".parse::<IpAddr>().unwrap(),
            "2001:db8:7:7::".parse().unwrap()
        ],
        "{listed:?}"
    );
    assert!(
        listed[0].1 > listed[1].1 && listed[0].1 <= 3 * BAN_AFTER,
        "{listed:?}"
    );
    assert_eq!(b.penalties.refused_sources(1).await.unwrap().len(), 1);
    tokio::time::sleep(3 * BAN_AFTER + Duration::from_millis(100)).await;
    assert!(a.penalties.refused_sources(10).await.unwrap().is_empty());
}

/// Kept partials are found from any node, taken by exactly one resume, and swept by age.
async fn partials_are_found_anywhere_and_claimed_once((a, b): (Node, Node)) {
    let now = SystemTime::now();
    let rec = |path: &str, age: u64| PartialRecord {
        home: "h-part".to_string(),
        path: path.to_string(),
        len: 5 * 1024 * 1024,
        handle: format!("upload-{path}"),
        kept_at: now - Duration::from_secs(age),
    };
    a.partials.put("k-new", rec("new.iso", 10)).await.unwrap();
    a.partials
        .put("k-old", rec("old.iso", 100_000))
        .await
        .unwrap();
    assert_eq!(
        b.partials.get("k-new").await.unwrap(),
        Some(rec("new.iso", 10))
    );
    let stale = b
        .partials
        .kept_before("h-part", now - Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(stale, vec![("k-old".to_string(), rec("old.iso", 100_000))]);
    assert!(
        a.partials
            .kept_before("other-home", now)
            .await
            .unwrap()
            .is_empty()
    );
    let (x, y) = tokio::join!(a.partials.take("k-new"), b.partials.take("k-new"));
    let claimed = [x.unwrap(), y.unwrap()];
    assert_eq!(claimed.iter().filter(|c| c.is_some()).count(), 1);
    assert_eq!(a.partials.get("k-new").await.unwrap(), None);
    // A later keep of the same key replaces the record and hands back the old one.
    assert_eq!(
        b.partials.put("k-old", rec("old.iso", 1)).await.unwrap(),
        Some(rec("old.iso", 100_000))
    );
    assert_eq!(
        a.partials.get("k-old").await.unwrap(),
        Some(rec("old.iso", 1))
    );
}

// -- the in-memory backend ------------------------------------------------------------------

macro_rules! contract_for {
    // A backend made by an async constructor, each case with the attribute given (such as
    // `#[ignore = "needs postgres; ..."]`).
    ($backend:ident async #[$attr:meta]: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[$attr]
                async fn $case() {
                    super::$case(super::$backend().await).await;
                }
            )*
        }
    };
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::$backend()).await;
                }
            )*
        }
    };
}

contract_for!(memory:
    a_home_is_counted_once,
    an_abandoned_count_frees_the_claim,
    reservations_hold_the_quota_across_nodes,
    racing_reservations_never_overshoot,
    file_quota_and_largest_file,
    cover_grows_only_by_what_is_missing,
    leases_expire_unless_renewed,
    dropped_holds_are_given_back,
    a_name_is_held_by_one_upload_at_a_time,
    racing_name_locks_have_one_winner,
    penalties_add_up_across_nodes_and_decay,
    refused_sources_are_listed_from_any_node,
    partials_are_found_anywhere_and_claimed_once,
);

// -- the PostgreSQL backend (issue 15) --------------------------------------------------------

/// Two nodes on one fresh database, each with a pool of its own, as two servers hold them.
async fn needs_postgres() -> (Node, Node) {
    let url = crate::util::pg::fresh_db().await;
    (pg_node(&url).await, pg_node(&url).await)
}

/// One node's handles onto the database at `url`, with the penalty settings of the suite.
async fn pg_node(url: &str) -> Node {
    let cfg = ferry::pg::PgConfig::from_url(url).unwrap();
    let backend = ferry::pg::connect(&cfg).await.unwrap();
    Node {
        ledger: backend.ledger(),
        names: backend.name_locks(),
        penalties: backend.penalties(ferry::pg::PenaltySettings {
            min_before_ban: BAN_AFTER,
            max: Duration::from_secs(30),
            ..ferry::pg::PenaltySettings::default()
        }),
        partials: backend.partials(),
    }
}

contract_for!(needs_postgres async #[ignore = "needs postgres; .ci/run installs it"]:
    a_home_is_counted_once,
    an_abandoned_count_frees_the_claim,
    reservations_hold_the_quota_across_nodes,
    racing_reservations_never_overshoot,
    file_quota_and_largest_file,
    cover_grows_only_by_what_is_missing,
    leases_expire_unless_renewed,
    dropped_holds_are_given_back,
    a_name_is_held_by_one_upload_at_a_time,
    racing_name_locks_have_one_winner,
    penalties_add_up_across_nodes_and_decay,
    refused_sources_are_listed_from_any_node,
    partials_are_found_anywhere_and_claimed_once,
);
