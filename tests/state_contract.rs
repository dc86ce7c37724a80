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
    NameLock, NameLocks, PartialIndex, PartialRecord, PenaltyStore, Reservation, StateError,
    UsageLedger,
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

/// A home never counted is unknown (the caller counts it); a count replaces usage.
async fn usage_is_unknown_until_counted((a, b): (Node, Node)) {
    assert_eq!(a.ledger.usage("h-unknown").await.unwrap(), None);
    a.ledger.set_counted("h-unknown", fp(10, 2)).await.unwrap();
    assert_eq!(used(&b, "h-unknown").await, fp(10, 2));
    a.ledger.set_counted("h-unknown", fp(3, 1)).await.unwrap();
    assert_eq!(used(&b, "h-unknown").await, fp(3, 1));
}

/// Reservations on two nodes together never pass the quota; a dropped one gives its room
/// back; a committed one becomes usage, measured, not estimated.
async fn reservations_hold_the_quota_across_nodes((a, b): (Node, Node)) {
    let home = "h-quota";
    a.ledger.set_counted(home, fp(0, 0)).await.unwrap();
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
    drop(r1);
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
    a.ledger.set_counted(home, fp(0, 0)).await.unwrap();
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
    drop(held);
    assert_eq!(reserved(&b, home).await, fp(0, 0));
}

/// The file quota counts files (directories too), and the largest-file limit refuses
/// before any room is looked at; adding nothing needs no room even over a lowered quota.
async fn file_quota_and_largest_file((a, _b): (Node, Node)) {
    let home = "h-files";
    a.ledger.set_counted(home, fp(5_000, 3)).await.unwrap();
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
    a.ledger.set_counted(home, fp(100, 1)).await.unwrap();
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
    drop(other);
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
/// one lives on; committing an expired lease fails instead of counting twice.
async fn leases_expire_unless_renewed((a, b): (Node, Node)) {
    let home = "h-lease";
    a.ledger.set_counted(home, fp(0, 0)).await.unwrap();
    let q = quota(1_000, 10);
    let ttl = Duration::from_millis(300);
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
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        a.ledger.renew(alive, ttl).await.unwrap();
    }
    // `dead` was never renewed: after 450 ms its room is free, `alive` still holds 50.
    let again = b
        .ledger
        .reserve(home, q, 900, fp(900, 1), ttl)
        .await
        .unwrap();
    assert_eq!(reserved(&a, home).await, fp(950, 2));
    assert_eq!(
        a.ledger.commit(dead, fp(900, 1), fp(0, 0)).await,
        Err(StateError::LeaseGone)
    );
    assert_eq!(a.ledger.renew(dead, ttl).await, Err(StateError::LeaseGone));
    a.ledger.commit(alive, fp(50, 1), fp(0, 0)).await.unwrap();
    b.ledger.release(again);
    assert_eq!(used(&b, home).await, fp(50, 1));
    assert_eq!(reserved(&b, home).await, fp(0, 0));
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
    a.names.unlock(old);
    assert!(b.names.try_lock("h1", "x", ttl).await.unwrap().is_none());
    b.names.unlock(new);
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
    // A later keep of the same key replaces the record.
    b.partials.put("k-old", rec("old.iso", 1)).await.unwrap();
    assert_eq!(
        a.partials.get("k-old").await.unwrap(),
        Some(rec("old.iso", 1))
    );
}

// -- the in-memory backend ------------------------------------------------------------------

macro_rules! contract_for {
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
    usage_is_unknown_until_counted,
    reservations_hold_the_quota_across_nodes,
    racing_reservations_never_overshoot,
    file_quota_and_largest_file,
    cover_grows_only_by_what_is_missing,
    leases_expire_unless_renewed,
    a_name_is_held_by_one_upload_at_a_time,
    racing_name_locks_have_one_winner,
    penalties_add_up_across_nodes_and_decay,
    partials_are_found_anywhere_and_claimed_once,
);
