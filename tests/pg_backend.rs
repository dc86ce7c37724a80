//! The `postgres` backend beyond its contract suites: several nodes (each a pool of its own)
//! on one real database, racing for a quota, dying with leases held, guessing passwords
//! through every node, and a database that goes down and comes back.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::accounts::{AccountError, User};
use ferry::domain::{Footprint, Quota, Refused};
use ferry::pg::{PenaltySettings, PgBackend, PgConfig};
use ferry::state::{Counting, StateError, UsageLedger};
use ferry::users::{self, Password};

use crate::util::CHEAP;
use crate::util::pg::{PgCluster, fresh_db};

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

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn node(url: &str) -> PgBackend {
    ferry::pg::connect(&PgConfig::from_url(url).unwrap())
        .await
        .unwrap()
}

/// Counts `home` as `used` through `ledger` (it must not be counted yet).
async fn count(ledger: &Arc<dyn UsageLedger>, home: &str, used: Footprint) {
    match ledger
        .claim_count(home, Duration::from_secs(60))
        .await
        .unwrap()
    {
        Counting::Yours(claim) => ledger.set_counted(claim, used).await.unwrap(),
        other => panic!("{home} should be uncounted: {other:?}"),
    }
}

async fn reserved(ledger: &Arc<dyn UsageLedger>, home: &str) -> Footprint {
    ledger.usage(home).await.unwrap().unwrap().reserved
}

/// Hundreds of reservations of mixed sizes racing from two pools: what is admitted never
/// passes the quota, the ledger says exactly what was admitted, and racing growth of the
/// admitted ones passes it neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_two_pools_never_admit_more_than_the_quota() {
    let url = fresh_db().await;
    let nodes = [node(&url).await, node(&url).await];
    let ledgers = [nodes[0].ledger(), nodes[1].ledger()];
    let home = "race";
    count(&ledgers[0], home, fp(1_000, 1)).await;
    let q = quota(100_000, 150);
    let mut tasks = Vec::new();
    for i in 0..300u64 {
        let ledger = Arc::clone(&ledgers[(i % 2) as usize]);
        let size = 300 * (i % 7 + 1);
        tasks.push(tokio::spawn(async move {
            let r = ledger
                .reserve(home, q, size, fp(size, 1), Duration::from_secs(60))
                .await;
            (size, r)
        }));
    }
    let mut admitted = Vec::new();
    let mut held = fp(0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (size, Ok(id)) => {
                held = held.plus(fp(size, 1));
                admitted.push(id);
            }
            (_, Err(StateError::Refused(Refused::Quota(_)))) => {}
            (_, Err(e)) => panic!("a reservation failed otherwise: {e:?}"),
        }
    }
    assert!(held.bytes + 1_000 <= 100_000, "admitted {held:?}");
    assert!(held.files < 150, "admitted {held:?}");
    assert!(
        held.bytes + 1_000 > 100_000 - 2_100,
        "the quota was used, not left idle: {held:?}"
    );
    assert_eq!(reserved(&ledgers[1], home).await, held);

    // Every admitted one tries to grow at once, from both nodes.
    let mut tasks = Vec::new();
    for (i, id) in admitted.iter().enumerate() {
        let ledger = Arc::clone(&ledgers[i % 2]);
        let id = *id;
        tasks.push(tokio::spawn(async move {
            ledger.grow(id, fp(500, 0)).await.is_ok()
        }));
    }
    let mut grown = 0u64;
    for t in tasks {
        grown += u64::from(t.await.unwrap());
    }
    let after = reserved(&ledgers[0], home).await;
    assert_eq!(after.bytes, held.bytes + 500 * grown);
    assert!(after.bytes + 1_000 <= 100_000, "{after:?}");
    for (i, id) in admitted.into_iter().enumerate() {
        ledgers[i % 2].release(id).await.unwrap();
    }
    assert_eq!(reserved(&ledgers[1], home).await, fp(0, 0));
}

/// A node that dies holding room, a name and a count claim (its pool gone, nothing given
/// back) holds them only until their leases run out; the other node then takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_a_dead_nodes_leases_expire_after_their_ttl() {
    let url = fresh_db().await;
    let dead = node(&url).await;
    let alive = node(&url).await;
    let home = "lease";
    let ttl = Duration::from_millis(1_500);
    count(&dead.ledger(), home, fp(0, 0)).await;
    let q = quota(1_000, 10);
    dead.ledger()
        .reserve(home, q, 1_000, fp(1_000, 1), ttl)
        .await
        .unwrap();
    let lock = dead
        .name_locks()
        .try_lock(home, "x.bin", ttl)
        .await
        .unwrap();
    assert!(lock.is_some());
    assert!(matches!(
        dead.ledger().claim_count("other", ttl).await.unwrap(),
        Counting::Yours(_)
    ));
    let died = Instant::now();
    drop(dead);

    let (ledger, names) = (alive.ledger(), alive.name_locks());
    assert_eq!(
        ledger.reserve(home, q, 1, fp(1, 1), ttl).await,
        Err(StateError::Refused(Refused::Quota("byte quota")))
    );
    assert_eq!(names.try_lock(home, "x.bin", ttl).await.unwrap(), None);
    assert_eq!(
        ledger.claim_count("other", ttl).await.unwrap(),
        Counting::Busy
    );

    tokio::time::sleep(
        (died + ttl + Duration::from_millis(200)).saturating_duration_since(Instant::now()),
    )
    .await;
    assert_eq!(reserved(&ledger, home).await, fp(0, 0));
    ledger
        .reserve(home, q, 1_000, fp(1_000, 1), ttl)
        .await
        .expect("the dead node's room is free");
    assert!(names.try_lock(home, "x.bin", ttl).await.unwrap().is_some());
    assert!(matches!(
        ledger.claim_count("other", ttl).await.unwrap(),
        Counting::Yours(_)
    ));
    // The sweep deletes the dead reservation for good (reads ignored it already; the lock
    // and the claim were taken over in place).
    assert_eq!(alive.sweep().await.unwrap(), 1);
    assert_eq!(reserved(&ledger, home).await, fp(1_000, 1));
    // The sweeper a server runs does the same on its own.
    names
        .try_lock(home, "y.bin", Duration::from_millis(100))
        .await
        .unwrap();
    let sweeper = alive.spawn_sweeper(Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(500)).await;
    sweeper.abort();
    assert_eq!(
        alive.sweep().await.unwrap(),
        0,
        "the sweeper left nothing expired"
    );
}

/// Sequences of legal calls that could make a counter lie: releasing twice, after a commit,
/// renewing or growing a committed lease, growth racing on two nodes, a declared size past
/// what a bigint holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_no_sequence_of_ledger_calls_makes_a_counter_lie() {
    let url = fresh_db().await;
    let (a, b) = (node(&url).await.ledger(), node(&url).await.ledger());
    let home = "liar";
    count(&a, home, fp(0, 0)).await;
    let q = quota(1_000, 10);
    let ttl = Duration::from_secs(60);

    // Released twice, and released after its commit: given back once, never below zero.
    let r = a.reserve(home, q, 400, fp(400, 1), ttl).await.unwrap();
    let keep = a.reserve(home, q, 100, fp(100, 1), ttl).await.unwrap();
    a.release(r).await.unwrap();
    b.release(r).await.unwrap();
    a.release_soon(r);
    assert_eq!(reserved(&b, home).await, fp(100, 1));
    let c = a.reserve(home, q, 300, fp(300, 1), ttl).await.unwrap();
    a.commit(home, c, fp(300, 1), fp(0, 0)).await.unwrap();
    b.release(c).await.unwrap();
    assert_eq!(reserved(&b, home).await, fp(100, 1));
    assert_eq!(a.renew(c, ttl).await, Err(StateError::LeaseGone));
    assert_eq!(a.grow(c, fp(1, 0)).await, Err(StateError::LeaseGone));
    let usage = b.usage(home).await.unwrap().unwrap();
    assert_eq!(usage.used, fp(300, 1));

    // Two reservations grow at once on two nodes into room for one of them.
    let x = a.reserve(home, q, 100, fp(100, 1), ttl).await.unwrap();
    let y = b.reserve(home, q, 100, fp(100, 1), ttl).await.unwrap();
    // 300 used + 100 + 100 + 100 reserved: 400 left, and each wants 300.
    let (gx, gy) = tokio::join!(a.grow(x, fp(300, 0)), b.grow(y, fp(300, 0)));
    assert_eq!(
        u8::from(gx.is_ok()) + u8::from(gy.is_ok()),
        1,
        "{gx:?} {gy:?}"
    );
    assert_eq!(reserved(&a, home).await, fp(600, 3));
    for id in [keep, x, y] {
        a.release(id).await.unwrap();
    }

    // A size past i64::MAX is refused against a quota, never wrapped into a small one.
    let big = Quota {
        bytes: Some(1 << 40),
        files: None,
        max_file_size: None,
    };
    assert_eq!(
        a.reserve(home, big, u64::MAX, fp(u64::MAX, 1), ttl).await,
        Err(StateError::Refused(Refused::Quota("byte quota")))
    );
    // Unlimited: held as the most a bigint holds, and the sum of two such stays there.
    let unlimited = Quota::default();
    let h1 = a
        .reserve(home, unlimited, u64::MAX, fp(u64::MAX, 1), ttl)
        .await
        .unwrap();
    let h2 = b
        .reserve(home, unlimited, u64::MAX, fp(u64::MAX, 1), ttl)
        .await
        .unwrap();
    assert_eq!(reserved(&a, home).await.bytes, i64::MAX as u64);
    assert!(a.reserve(home, q, 1, fp(1, 1), ttl).await.is_err());
    a.release(h1).await.unwrap();
    a.release(h2).await.unwrap();
    // Removing more than is there stops at zero on every node.
    a.adjust(home, fp(0, 0), fp(u64::MAX, u64::MAX))
        .await
        .unwrap();
    assert_eq!(b.usage(home).await.unwrap().unwrap().used, fp(0, 0));
}

/// Names and partial keys as long as a path may be (4096 bytes, more than a B-tree entry of
/// PostgreSQL holds) are locked and kept like short ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_the_longest_paths_are_locked_and_kept() {
    let url = fresh_db().await;
    let (a, b) = (node(&url).await, node(&url).await);
    // Digests in hex: no repeats for PostgreSQL's compression to shrink below the limit.
    let long: String = (0u32..)
        .flat_map(|i| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(i.to_le_bytes())).into_bytes()
        })
        .take(ferry::domain::MAX_PATH_LEN)
        .map(char::from)
        .collect();
    let other = format!("{}x", &long[..long.len() - 1]);
    let ttl = Duration::from_secs(60);
    let lock = a.name_locks().try_lock("h", &long, ttl).await.unwrap();
    assert!(lock.is_some());
    assert_eq!(
        b.name_locks().try_lock("h", &long, ttl).await.unwrap(),
        None
    );
    assert!(
        b.name_locks()
            .try_lock("h", &other, ttl)
            .await
            .unwrap()
            .is_some()
    );
    let rec = ferry::state::PartialRecord {
        home: "h".into(),
        path: long.clone(),
        len: 1,
        handle: long.clone(),
        kept_at: std::time::SystemTime::now(),
    };
    assert_eq!(a.partials().put(&long, rec.clone()).await.unwrap(), None);
    assert_eq!(b.partials().get(&other).await.unwrap(), None);
    assert_eq!(b.partials().take(&long).await.unwrap(), Some(rec));
}

/// A password guesser spread over three nodes is refused by all three after the fourth
/// failure (as on one node); switching to the IPv4-mapped form of its address or to another
/// address of its IPv6 /64 does not help; further failures never push a ban past the most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_a_guesser_spread_over_nodes_is_refused_by_every_node() {
    let url = fresh_db().await;
    let settings = PenaltySettings {
        exempt: vec!["203.0.113.0/24".parse().unwrap()],
        ..PenaltySettings::default()
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(node(&url).await.penalties(settings.clone()));
    }
    let authfail = Duration::from_secs(5);
    let guesser = ip("198.51.100.7");
    let mut bans = 0;
    for i in 0..3 {
        bans += u32::from(nodes[i].add(guesser, authfail).await.unwrap());
        for n in &nodes {
            assert_eq!(
                n.refused_for(guesser).await.unwrap(),
                None,
                "three are forgiven"
            );
        }
    }
    bans += u32::from(nodes[0].add(guesser, authfail).await.unwrap());
    assert_eq!(bans, 1, "the fourth bans, reported once");
    for n in &nodes {
        let left = n.refused_for(guesser).await.unwrap().expect("refused");
        assert!(
            left > Duration::from_secs(19) && left <= Duration::from_secs(20),
            "{left:?}"
        );
        assert!(
            n.refused_for(ip("::ffff:198.51.100.7"))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(n.refused_for(ip("198.51.100.8")).await.unwrap(), None);
    }
    // One IPv6 host owns its /64: four addresses in it are one guesser.
    for (i, a) in [
        "2001:db8:5:6::1",
        "2001:db8:5:6::2",
        "2001:db8:5:6:1::",
        "2001:db8:5:6::ffff",
    ]
    .iter()
    .enumerate()
    {
        nodes[i % 3].add(ip(a), authfail).await.unwrap();
    }
    assert!(
        nodes[2]
            .refused_for(ip("2001:db8:5:6::99"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        nodes[2]
            .refused_for(ip("2001:db8:5:7::1"))
            .await
            .unwrap()
            .is_none()
    );
    // Hammering on: the ban stops at the most penalty there is (600 s).
    for i in 0..200 {
        assert!(!nodes[i % 3].add(guesser, authfail).await.unwrap());
    }
    let left = nodes[1].refused_for(guesser).await.unwrap().unwrap();
    assert!(
        left <= Duration::from_secs(600) && left > Duration::from_secs(590),
        "{left:?}"
    );
    // Exempt networks earn nothing.
    for _ in 0..10 {
        assert!(!nodes[0].add(ip("203.0.113.9"), authfail).await.unwrap());
    }
    assert_eq!(nodes[1].refused_for(ip("203.0.113.9")).await.unwrap(), None);
}

/// The table of sources is bounded: a flood of fresh sources with short penalties cannot
/// grow it past its bound, nor push out a long ban.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_a_flood_of_fresh_sources_cannot_push_out_a_ban() {
    let url = fresh_db().await;
    let settings = PenaltySettings {
        max_sources: 8,
        ..PenaltySettings::default()
    };
    let (a, b) = (
        node(&url).await.penalties(settings.clone()),
        node(&url).await.penalties(settings),
    );
    let guesser = ip("198.51.100.7");
    assert!(a.add(guesser, Duration::from_secs(20)).await.unwrap());
    for i in 0..60u32 {
        let fresh = IpAddr::from([192, 0, 2, i as u8]);
        let n = if i % 2 == 0 { &a } else { &b };
        n.add(fresh, Duration::from_secs(1)).await.unwrap();
    }
    assert!(b.refused_for(guesser).await.unwrap().is_some());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM ferry_penalties WHERE expires > now()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(rows <= 8, "{rows} sources tracked");
}

/// A write on one node moves `changes()` on another at once (LISTEN/NOTIFY), and the other
/// node reads it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_an_account_change_reaches_the_other_node_at_once() {
    let url = fresh_db().await;
    let (a, b) = (node(&url).await.accounts(), node(&url).await.accounts());
    let mut rx = b.changes();
    rx.borrow_and_update();
    let hash =
        users::hash_password_with(&Password::new("pw".into()), CHEAP.0, CHEAP.1, CHEAP.2).unwrap();
    let start = Instant::now();
    a.add(&User::new("alice", hash)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(2), rx.changed())
        .await
        .expect("noticed within 2 s")
        .unwrap();
    eprintln!("notice after {:?}", start.elapsed());
    assert!(b.get("alice").await.unwrap().is_some());
}

/// Several nodes starting at once on an empty database apply each migration exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_concurrent_starts_apply_each_migration_once() {
    let url = fresh_db().await;
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { node(&url).await })
        })
        .collect();
    let mut nodes = Vec::new();
    for s in starts {
        nodes.push(s.await.unwrap());
    }
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT version, count(*) FROM ferry_migrations GROUP BY version ORDER BY version",
            &[],
        )
        .await
        .unwrap();
    let applied: Vec<(i32, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    // Every migration applied exactly once, none skipped.
    let expected: Vec<(i32, i64)> = (1..=applied.len() as i32).map(|v| (v, 1)).collect();
    assert_eq!(applied, expected);
    assert!(applied.len() >= 2, "{applied:?}");
    // A node on the server's Unix socket (its directory as `host`) shares the same state.
    let cluster = crate::util::pg::shared();
    let db = url.rsplit('/').next().unwrap();
    let by_socket = format!(
        "postgres://{}@localhost/{db}?host={}&port={}",
        crate::util::pg::USER,
        cluster.dir.display(),
        cluster.port
    );
    let local = node(&by_socket).await;
    nodes[0]
        .name_locks()
        .try_lock("h", "n", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        local
            .name_locks()
            .try_lock("h", "n", Duration::from_secs(60))
            .await
            .unwrap(),
        None
    );
    // Each works.
    for n in &nodes {
        assert_eq!(n.accounts().list().await.unwrap(), vec![]);
    }
}

/// A database that is down: every operation fails cleanly within the configured timeouts,
/// a new node cannot start (an error, not a hang); when it is back, the same pools work
/// again at once and the change listener reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_a_database_down_fails_cleanly_and_the_pool_recovers() {
    let cluster = Arc::new(tokio::task::spawn_blocking(PgCluster::start).await.unwrap());
    let url = format!(
        "{}?wait_timeout=1&connect_timeout=1&statement_timeout=2",
        cluster.fresh_db().await
    );
    let cfg = PgConfig::from_url(&url).unwrap();
    let bound = cfg.operation_timeout() + Duration::from_secs(1);
    let backend = ferry::pg::connect(&cfg).await.unwrap();
    let other = ferry::pg::connect(&cfg).await.unwrap();
    let (accounts, ledger, names, penalties, partials) = (
        backend.accounts(),
        backend.ledger(),
        backend.name_locks(),
        backend.penalties(PenaltySettings::default()),
        backend.partials(),
    );
    count(&ledger, "h", fp(0, 0)).await;
    assert_eq!(accounts.get("alice").await.unwrap(), None);
    let mut rx = accounts.changes();

    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap();

    let timed = async |what: &str, fut: ferry::domain::BoxFuture<'_, bool>| {
        let start = Instant::now();
        let clean = fut.await;
        let took = start.elapsed();
        eprintln!("{what}: failed in {took:?}");
        assert!(clean, "{what}: not a clean error");
        assert!(took < bound, "{what} took {took:?}");
    };
    timed(
        "accounts.get",
        Box::pin(async {
            matches!(
                accounts.get("alice").await,
                Err(AccountError::Backend { .. })
            )
        }),
    )
    .await;
    timed(
        "ledger.reserve",
        Box::pin(async {
            matches!(
                ledger
                    .reserve("h", quota(10, 10), 1, fp(1, 1), Duration::from_secs(60))
                    .await,
                Err(StateError::Unavailable(_))
            )
        }),
    )
    .await;
    timed(
        "name_locks.try_lock",
        Box::pin(async {
            matches!(
                names.try_lock("h", "x", Duration::from_secs(60)).await,
                Err(StateError::Unavailable(_))
            )
        }),
    )
    .await;
    timed(
        "penalties.refused_for",
        Box::pin(async {
            matches!(
                penalties.refused_for(ip("192.0.2.1")).await,
                Err(StateError::Unavailable(_))
            )
        }),
    )
    .await;
    timed(
        "partials.get",
        Box::pin(async { matches!(partials.get("k").await, Err(StateError::Unavailable(_))) }),
    )
    .await;
    timed(
        "connect",
        Box::pin(async { ferry::pg::connect(&cfg).await.is_err() }),
    )
    .await;

    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || c.start_again())
        .await
        .unwrap();
    // The same pools, not rebuilt: the broken connections are dropped, new ones made.
    assert_eq!(accounts.get("alice").await.unwrap(), None);
    ledger
        .reserve("h", quota(10, 10), 1, fp(1, 1), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(
        names
            .try_lock("h", "x", Duration::from_secs(60))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(penalties.refused_for(ip("192.0.2.1")).await.unwrap(), None);
    assert_eq!(partials.get("k").await.unwrap(), None);
    // The listener is back too: another node's write is noticed (its reconnection is a
    // notice of its own, so wait for the user to be there).
    let hash =
        users::hash_password_with(&Password::new("pw".into()), CHEAP.0, CHEAP.1, CHEAP.2).unwrap();
    rx.borrow_and_update();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut added = false;
    loop {
        if !added {
            added = other
                .accounts()
                .add(&User::new("alice", hash.clone()))
                .await
                .is_ok();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no notice after the database came back");
        if tokio::time::timeout(left, rx.changed()).await.is_ok() && added {
            rx.borrow_and_update();
            // One more write, noticed through the new LISTEN.
            other.accounts().del("alice").await.unwrap();
            tokio::time::timeout(Duration::from_secs(2), rx.changed())
                .await
                .expect("a notice through the reconnected listener")
                .unwrap();
            break;
        }
    }
}

/// A database that hangs (every process stopped, as behind a network that swallows
/// packets): operations fail within the configured timeouts instead of waiting, and work
/// again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_a_hung_database_gives_an_error_within_the_timeouts() {
    let cluster = Arc::new(tokio::task::spawn_blocking(PgCluster::start).await.unwrap());
    let url = format!(
        "{}?wait_timeout=1&connect_timeout=1&statement_timeout=1",
        cluster.fresh_db().await
    );
    let cfg = PgConfig::from_url(&url).unwrap();
    let bound = cfg.operation_timeout() + Duration::from_secs(1);
    let backend = ferry::pg::connect(&cfg).await.unwrap();
    let (accounts, ledger, penalties) = (
        backend.accounts(),
        backend.ledger(),
        backend.penalties(PenaltySettings::default()),
    );
    count(&ledger, "h", fp(0, 0)).await;
    // What a server checks at accept: the database, with its own table behind it.
    let local = Arc::new(ferry::server::penalty::Penalties::new(
        ferry::server::penalty::PenaltyConfig::default(),
    ));
    let at_accept = backend.penalties_with_fallback(
        PenaltySettings::default(),
        local,
        Duration::from_millis(200),
    );
    let guesser = ip("198.51.100.9");
    at_accept
        .add(guesser, Duration::from_secs(5))
        .await
        .unwrap();

    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || c.freeze())
        .await
        .unwrap();
    // Meanwhile accepts are checked against this node's own table, soon: the guesser's
    // next three failures here ban it though the database does not answer.
    let start = Instant::now();
    let mut banned = false;
    for _ in 0..3 {
        banned |= at_accept
            .add(guesser, Duration::from_secs(5))
            .await
            .unwrap();
    }
    assert!(banned);
    assert!(at_accept.refused_for(guesser).await.unwrap().is_some());
    assert_eq!(at_accept.refused_for(ip("192.0.2.1")).await.unwrap(), None);
    let took = start.elapsed();
    eprintln!("five penalty calls on a hung database, with the fallback: {took:?}");
    assert!(
        took < Duration::from_millis(200 + 300),
        "only the first call waits for the database: {took:?}"
    );

    let start = Instant::now();
    let (get, reserve, check, connect) = tokio::join!(
        accounts.get("alice"),
        ledger.reserve("h", quota(10, 10), 1, fp(1, 1), Duration::from_secs(60)),
        penalties.refused_for(ip("192.0.2.1")),
        ferry::pg::connect(&cfg),
    );
    let took = start.elapsed();
    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || c.thaw()).await.unwrap();
    eprintln!("four operations on a hung database failed within {took:?}");
    assert!(matches!(get, Err(AccountError::Backend { .. })), "{get:?}");
    assert!(
        matches!(reserve, Err(StateError::Unavailable(_))),
        "{reserve:?}"
    );
    assert!(
        matches!(check, Err(StateError::Unavailable(_))),
        "{check:?}"
    );
    assert!(connect.is_err());
    assert!(took < bound, "{took:?}");

    // Answering again: the same pool works.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ledger
            .reserve("h", quota(10, 10), 1, fp(1, 1), Duration::from_secs(60))
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "not back: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(accounts.get("alice").await.unwrap(), None);
    // And the check at accept asks the database again after its pause: a source that only
    // the database knows (banned through another node) is refused here.
    tokio::time::sleep(ferry::pg::state::FALLBACK_PAUSE).await;
    let elsewhere = ip("198.51.100.10");
    backend
        .penalties(PenaltySettings::default())
        .add(elsewhere, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(at_accept.refused_for(elsewhere).await.unwrap().is_some());
}

/// Median latency of a reservation (one transaction) and of a penalty check on loopback,
/// over 1000 each; printed for the record, bounded loosely so a regression to seconds fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_latency_of_a_reservation_and_a_penalty_check() {
    let url = fresh_db().await;
    let backend = node(&url).await;
    let (ledger, penalties) = (
        backend.ledger(),
        backend.penalties(PenaltySettings::default()),
    );
    count(&ledger, "lat", fp(0, 0)).await;
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mut reserve, mut release, mut check, mut add) = (vec![], vec![], vec![], vec![]);
    for i in 0..1000u32 {
        let t = Instant::now();
        let id = ledger
            .reserve(
                "lat",
                quota(1 << 40, 1 << 20),
                10,
                fp(10, 1),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        reserve.push(t.elapsed());
        let t = Instant::now();
        ledger.release(id).await.unwrap();
        release.push(t.elapsed());
        let addr = IpAddr::from([198, 18, (i >> 8) as u8, i as u8]);
        let t = Instant::now();
        penalties.refused_for(addr).await.unwrap();
        check.push(t.elapsed());
        let t = Instant::now();
        penalties.add(addr, Duration::from_secs(1)).await.unwrap();
        add.push(t.elapsed());
    }
    let (reserve, release, check, add) =
        (median(reserve), median(release), median(check), median(add));
    eprintln!(
        "median over 1000 on loopback: reserve {reserve:?}, release {release:?}, \
         penalty check {check:?}, penalty add {add:?}"
    );
    assert!(reserve < Duration::from_millis(50) && check < Duration::from_millis(50));
}

/// `ferry user ...` against the database (the real binary): add, list, set, passwd, del, seen
/// by a store on the same database; a password in the URL and a database that is down are
/// refused with a clear message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_ferry_user_edits_the_accounts_database() {
    use crate::cli::Ferry;
    let url = fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    let run = |stdin: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--accounts", url.as_str()]);
        let ferry = Ferry::new(dir.path()).stdin(stdin);
        tokio::task::block_in_place(|| ferry.run(&all))
    };
    run(
        "zoe-long-password\n",
        &["user", "add", "zoe", "--password-stdin"],
    )
    .expect_ok();
    run(
        "amy-long-password\n",
        &[
            "user",
            "add",
            "amy",
            "--password-stdin",
            "--read-only",
            "--quota-bytes",
            "1 GiB",
        ],
    )
    .expect_ok();
    let dup = run(
        "x-long-password\n",
        &["user", "add", "zoe", "--password-stdin"],
    );
    dup.expect_failure();
    assert!(dup.stderr.contains("already exists"), "{dup:?}");

    let store = node(&url).await.accounts();
    let zoe = store
        .get("zoe")
        .await
        .unwrap()
        .expect("added through the database");
    assert!(users::verify_password(
        &zoe.password_hash,
        &Password::new("zoe-long-password".into())
    ));
    let list = run("", &["user", "list"]);
    list.expect_ok();
    let names: Vec<&str> = list
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(names, ["amy", "zoe"], "{list:?}");
    assert!(list.stdout.contains("quota: 1 GiB"), "{list:?}");

    run(
        "",
        &["user", "set", "zoe", "--max-file-size", "1M", "--read-only"],
    )
    .expect_ok();
    let zoe = store.get("zoe").await.unwrap().unwrap();
    assert!(zoe.read_only);
    assert_eq!(zoe.max_file_size, Some(1 << 20));
    run(
        "zoe-other-password\n",
        &["user", "passwd", "zoe", "--password-stdin"],
    )
    .expect_ok();
    let zoe = store.get("zoe").await.unwrap().unwrap();
    assert!(users::verify_password(
        &zoe.password_hash,
        &Password::new("zoe-other-password".into())
    ));
    run("", &["user", "del", "amy"]).expect_ok();
    assert_eq!(store.get("amy").await.unwrap(), None);
    let gone = run("", &["user", "del", "amy"]);
    gone.expect_failure();
    assert!(gone.stderr.contains("no user"), "{gone:?}");

    // The password never goes on the command line, not even inside the URL.
    let with_pw = url.replacen("postgres://ferry@", "postgres://ferry:secret@", 1);
    let out = tokio::task::block_in_place(|| {
        Ferry::new(dir.path()).run(&["user", "list", "--accounts", &with_pw])
    });
    out.expect_failure();
    assert!(out.stderr.contains("PGPASSWORD"), "{out:?}");
    // Nothing listens there: a clear error, soon.
    let start = Instant::now();
    let down = tokio::task::block_in_place(|| {
        Ferry::new(dir.path()).run(&[
            "user",
            "list",
            "--accounts",
            "postgres://ferry@127.0.0.1:1/none?connect_timeout=2&wait_timeout=2",
        ])
    });
    down.expect_failure();
    assert!(down.stderr.contains("database unavailable"), "{down:?}");
    assert!(start.elapsed() < Duration::from_secs(15));
}

/// The environment variable that makes [`pg_helper_a_node_that_holds_leases`] act: the URL of
/// the database.
const HOLDER_URL: &str = "FERRY_TEST_PG_HOLDER_URL";

/// Not a test of its own: the node that [`needs_postgres_a_sigkilled_node_holds_nothing_past_its_ttl`]
/// runs in a process of its own and kills. It takes room, a name and a count claim with a
/// short lease, says so, and waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a helper process of needs_postgres_a_sigkilled_node_holds_nothing_past_its_ttl"]
async fn pg_helper_a_node_that_holds_leases() {
    let Ok(url) = std::env::var(HOLDER_URL) else {
        return;
    };
    let backend = node(&url).await;
    let ttl = Duration::from_secs(2);
    let q = quota(1_000, 10);
    backend
        .ledger()
        .reserve("killed", q, 1_000, fp(1_000, 1), ttl)
        .await
        .unwrap();
    assert!(
        backend
            .name_locks()
            .try_lock("killed", "x.bin", ttl)
            .await
            .unwrap()
            .is_some()
    );
    println!("holding");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// A node SIGKILLed while it holds room and a name (no Drop, no goodbye to the database):
/// the other node sees them held until their lease runs out, then takes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_a_sigkilled_node_holds_nothing_past_its_ttl() {
    use std::io::BufRead;
    let url = fresh_db().await;
    let alive = node(&url).await;
    count(&alive.ledger(), "killed", fp(0, 0)).await;
    let mut holder = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "pg_backend::pg_helper_a_node_that_holds_leases",
            "--nocapture",
        ])
        .env(HOLDER_URL, &url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = holder.stdout.take().unwrap();
    let said = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("holding"))
    });
    let said = tokio::time::timeout(Duration::from_secs(30), said).await;
    let _ = holder.kill(); // SIGKILL
    let _ = holder.wait();
    let killed = Instant::now();
    assert!(matches!(said, Ok(Ok(true))), "the holder never held");

    let (ledger, names) = (alive.ledger(), alive.name_locks());
    let ttl = Duration::from_secs(60);
    let q = quota(1_000, 10);
    assert_eq!(
        reserved(&ledger, "killed").await,
        fp(1_000, 1),
        "held by the dead"
    );
    assert!(ledger.reserve("killed", q, 1, fp(1, 1), ttl).await.is_err());
    assert_eq!(names.try_lock("killed", "x.bin", ttl).await.unwrap(), None);
    // Its leases were 2 s long, taken before it said so.
    tokio::time::sleep(
        (killed + Duration::from_millis(2_200)).saturating_duration_since(Instant::now()),
    )
    .await;
    assert_eq!(reserved(&ledger, "killed").await, fp(0, 0));
    ledger
        .reserve("killed", q, 1_000, fp(1_000, 1), ttl)
        .await
        .expect("the killed node's room is free");
    assert!(
        names
            .try_lock("killed", "x.bin", ttl)
            .await
            .unwrap()
            .is_some()
    );
}

/// The database's own view of this test database's connections: how many, and how many of
/// them are encrypted.
async fn connections_to(db_url: &str) -> (i64, i64) {
    let name = db_url.rsplit('/').next().unwrap().to_string();
    let admin = crate::util::pg::shared().url("postgres");
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl) FROM pg_stat_activity a \
             JOIN pg_stat_ssl s USING (pid) WHERE a.datname = $1",
            &[&name],
        )
        .await
        .unwrap();
    drop(client);
    let _ = driver.await;
    (row.get(0), row.get(1))
}

/// `sslmode=verify-full` with the database's CA: every connection of the node, the pool's
/// and the accounts' change listener's, is TLS, and an account change still reaches the
/// other node through the encrypted listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_verify_full_encrypts_every_connection() {
    let url = fresh_db().await;
    let ca = crate::util::pg::shared().ca();
    let tls_url = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    let cfg = PgConfig::from_url(&tls_url).unwrap();
    assert!(cfg.encrypted());
    let (a, b) = (node(&tls_url).await, node(&tls_url).await);
    let (a, b) = (a.accounts(), b.accounts());
    let mut rx = b.changes();
    rx.borrow_and_update();
    let hash =
        users::hash_password_with(&Password::new("pw".into()), CHEAP.0, CHEAP.1, CHEAP.2).unwrap();
    a.add(&User::new("alice", hash)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("the change reached the other node's listener")
        .unwrap();
    assert!(b.get("alice").await.unwrap().is_some());
    let (all, encrypted) = connections_to(&url).await;
    assert!(all >= 3, "two pools and two listeners: {all}");
    assert_eq!(encrypted, all, "every connection encrypted");
    // The same database in clear, for contrast: the test can tell them apart.
    let plain = node(&url).await;
    plain.accounts().get("alice").await.unwrap().unwrap();
    let (all_after, encrypted_after) = connections_to(&url).await;
    assert!(
        all_after > encrypted_after,
        "a clear connection shows as such"
    );
}

/// A certificate from another CA is refused, quickly and with the reason; nothing falls
/// back to clear text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_a_database_certificate_from_another_ca_is_refused() {
    let url = fresh_db().await;
    let other = tempfile::tempdir().unwrap();
    ferry::certs::generate(other.path(), &[], false).unwrap();
    let tls_url = format!(
        "{url}?sslmode=verify-full&sslrootcert={}&connect_timeout=5&wait_timeout=5",
        other.path().join("ca.pem").display()
    );
    let start = Instant::now();
    let err = match ferry::pg::connect(&PgConfig::from_url(&tls_url).unwrap()).await {
        Ok(_) => panic!("connected to a database whose certificate no root vouches for"),
        Err(e) => e.to_string(),
    };
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(
        err.to_lowercase().contains("certificate") || err.to_lowercase().contains("issuer"),
        "{err}"
    );
    assert_eq!(
        connections_to(&url).await,
        (0, 0),
        "nothing connected in clear"
    );
}

/// Runs `sql` on the database of `db_url` as the cluster's superuser.
async fn sql(db_url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = driver.await;
}

/// `ferry user recount` on a shared ledger: the count is dropped only for a user who asked,
/// only by a node that takes it when no other node has the home live or a change in flight
/// in it, and only once per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_a_recount_waits_until_no_other_node_uses_the_home() {
    let url = fresh_db().await;
    let (a, b) = (node(&url).await, node(&url).await);
    let hash =
        users::hash_password_with(&Password::new("pw".into()), CHEAP.0, CHEAP.1, CHEAP.2).unwrap();
    a.accounts().add(&User::new("rita", hash)).await.unwrap();
    // One ledger per node, as a server holds it: the node is who joined.
    let (la, lb) = (a.ledger(), b.ledger());
    let home = "/data/rita";
    count(&la, home, fp(100, 1)).await;
    la.join(home).await.unwrap();
    let used =
        |l: Arc<dyn UsageLedger>| async move { l.usage(home).await.unwrap().map(|u| u.used) };

    // Nobody asked: nothing is taken.
    lb.join(home).await.unwrap();
    assert!(!lb.take_recount("rita", home).await.unwrap());
    assert!(!b.request_recount("nobody").await.unwrap(), "no such user");
    assert!(b.request_recount("rita").await.unwrap());

    // Node A has a session of the home: B may not drop the count under it.
    assert!(!lb.take_recount("rita", home).await.unwrap());
    assert_eq!(used(Arc::clone(&lb)).await, Some(fp(100, 1)));

    // A's session ends; its word lives out its lease (cut short here, as 90 s would pass).
    la.leave(home);
    let db = crate::util::pg::shared().url(url.rsplit('/').next().unwrap());
    sql(
        &db,
        "UPDATE ferry_live_homes SET expires = now() - interval '1 second'",
    )
    .await;
    lb.join(home).await.unwrap();
    // A change of A's still in flight holds it back too.
    let held = la
        .reserve(
            home,
            quota(10_000, 10),
            50,
            fp(50, 1),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(!lb.take_recount("rita", home).await.unwrap());
    la.release(held).await.unwrap();

    // Idle everywhere else: B takes it, the count is gone, and B counts the home again.
    assert!(lb.take_recount("rita", home).await.unwrap());
    assert_eq!(used(Arc::clone(&lb)).await, None);
    count(&lb, home, fp(7_000, 3)).await;
    assert_eq!(used(Arc::clone(&la)).await, Some(fp(7_000, 3)));
    // One request, one recount.
    assert!(!lb.take_recount("rita", home).await.unwrap());
    assert!(!la.take_recount("rita", home).await.unwrap());
}

/// Through a real server on the shared ledger: a file put into a home behind ferry's back is
/// not seen by the kept count, and is after `ferry user recount` and the user's next login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_ferry_user_recount_counts_a_shared_home_again_at_the_next_login() {
    use crate::cli::Ferry;
    use crate::util::{TestServer, no_progress, random_file, test_limits};
    let url = fresh_db().await;
    let backend = node(&url).await;
    let state = ferry::server::SharedState {
        ledger: backend.ledger(),
        shared_ledger: true,
        ..ferry::server::SharedState::default()
    };
    let server = TestServer::start_with_state(test_limits(), state).await;
    // carol has quotas (the test users file); the request names her in the database.
    let hash =
        users::hash_password_with(&Password::new("pw".into()), CHEAP.0, CHEAP.1, CHEAP.2).unwrap();
    backend
        .accounts()
        .add(&User::new("carol", hash))
        .await
        .unwrap();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("f");
    random_file(&src, 1_000, 1);
    let usage = || async {
        let mut conn = server.connect("carol", "carol-pw").await;
        let u = conn.usage().await.unwrap();
        (u.used_bytes, u.used_files)
    };
    {
        let mut conn = server.connect("carol", "carol-pw").await;
        conn.put(&src, "/f", false, &mut no_progress())
            .await
            .unwrap();
    }
    std::fs::write(server.home_file("carol", "by-hand"), vec![7u8; 5_000]).unwrap();
    // The count is kept across sessions on a shared ledger: the file is not seen.
    assert_eq!(usage().await, (Some(1_000), Some(1)));

    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--accounts", url.as_str()]);
        tokio::task::block_in_place(|| Ferry::new(dir.path()).run(&all))
    };
    let nobody = run(&["user", "recount", "nobody"]);
    nobody.expect_failure();
    assert!(nobody.stderr.contains("no user nobody"), "{nobody:?}");
    run(&["user", "recount", "carol"]).expect_ok();

    // The next login with no session of the home left anywhere counts it again. (This
    // node's last session may take a moment to end after its client went.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = usage().await;
        if got == (Some(6_000), Some(2)) {
            break;
        }
        assert_eq!(got, (Some(1_000), Some(1)), "neither count");
        assert!(Instant::now() < deadline, "not counted again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once: what comes after is followed again.
    std::fs::remove_file(server.home_file("carol", "by-hand")).unwrap();
    assert_eq!(usage().await, (Some(6_000), Some(2)));
}
