//! Three ferry nodes behind HAProxy, files in a 3-node Garage, accounts and shared state in
//! PostgreSQL (`scripts/cluster`, the real binary): the single-node promises held across
//! nodes. Each test brings a cluster of its own up and down, one at a time.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferry::client::{ClientError, Connection};
use ferry::protocol::ErrorCode;
use ferry::users::Password;
use tokio::task::JoinSet;

use crate::util::cluster::Cluster;
use crate::util::{no_progress, random_file, sha256_hex};

const IGNORE: &str = "needs postgres, garage and haproxy; .ci/run installs them";

fn code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Remote(w) => Some(w.code),
        _ => None,
    }
}

/// A cheap password for test users (the CLI's rule: 12 characters at least).
const PW: &str = "correct-horse-battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres, garage and haproxy; .ci/run installs them"]
async fn needs_cluster_upload_through_one_node_and_download_through_another() {
    let _ = IGNORE;
    let cluster = Cluster::up().await;
    cluster.add_user("alice", PW, &[]);
    let local = tempfile::tempdir().unwrap();
    // Two parts and a bit, so the object store sees a multipart upload.
    let src = local.path().join("big.bin");
    let data = random_file(&src, 11 << 20, 1);
    let mut a = cluster.connect_node(1, "alice", PW).await;
    let put = a
        .put(&src, "/big.bin", false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(put.sha256, sha256_hex(&data));
    let small = local.path().join("small.txt");
    std::fs::write(&small, "hello from node 1").unwrap();
    a.put(&small, "/small.txt", false, &mut no_progress())
        .await
        .unwrap();
    let mut b = cluster.connect_node(2, "alice", PW).await;
    let mut names: Vec<String> = b
        .list("/")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, ["big.bin", "small.txt"]);
    let back = local.path().join("back.bin");
    let got = b
        .get("/big.bin", &back, false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(got.sha256, sha256_hex(&data));
    assert_eq!(std::fs::read(&back).unwrap(), data);
    // And node 3 sees the same through HAProxy's own choice.
    let mut c = cluster.connect_node(3, "alice", PW).await;
    let back = local.path().join("small.back");
    c.get("/small.txt", &back, false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), b"hello from node 1");
}

/// Two sessions on different nodes create the same name at once: exactly one wins, the
/// other gets `already_exists`, and the file is whole and one of theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres, garage and haproxy; .ci/run installs them"]
async fn needs_cluster_the_same_name_from_two_nodes_at_once_lands_once() {
    let cluster = Cluster::up().await;
    cluster.add_user("alice", PW, &[]);
    let local = tempfile::tempdir().unwrap();
    for round in 0..5u64 {
        let mut tasks = JoinSet::new();
        let mut digests = Vec::new();
        for node in [1u16, 2] {
            let src = local.path().join(format!("r{round}n{node}"));
            let data = random_file(&src, 6 << 20, round * 10 + u64::from(node));
            digests.push(sha256_hex(&data));
            let mut conn = cluster.connect_node(node, "alice", PW).await;
            let target = format!("/race-{round}.bin");
            tasks.spawn(async move { conn.put(&src, &target, false, &mut no_progress()).await });
        }
        let mut won = Vec::new();
        let mut lost = 0;
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Ok(t) => won.push(t.sha256),
                Err(e) => {
                    assert_eq!(
                        code(&e),
                        Some(ErrorCode::AlreadyExists),
                        "round {round}: {e}"
                    );
                    lost += 1;
                }
            }
        }
        assert_eq!((won.len(), lost), (1, 1), "round {round}");
        let mut conn = cluster.connect_node(3, "alice", PW).await;
        let back = local.path().join(format!("back{round}"));
        let got = conn
            .get(
                &format!("/race-{round}.bin"),
                &back,
                false,
                &mut no_progress(),
            )
            .await
            .unwrap();
        assert_eq!(got.sha256, won[0]);
        assert!(digests.contains(&got.sha256));
    }
}

/// One user's parallel uploads, spread over all nodes, never take more than the quota
/// together: each node reserves in one shared ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres, garage and haproxy; .ci/run installs them"]
async fn needs_cluster_parallel_uploads_over_all_nodes_never_exceed_the_quota() {
    let cluster = Cluster::up().await;
    cluster.add_user("carol", PW, &["--quota-bytes", "10 MiB"]);
    let local = tempfile::tempdir().unwrap();
    let mut tasks = JoinSet::new();
    // 9 uploads of 3 MiB (27 MiB) against 10 MiB: three fit at most.
    for i in 0..9u16 {
        let src = local.path().join(format!("f{i}"));
        random_file(&src, 3 << 20, u64::from(i));
        let mut conn = cluster.connect_node(1 + i % 3, "carol", PW).await;
        tasks.spawn(async move {
            conn.put(&src, &format!("/f{i}.bin"), false, &mut no_progress())
                .await
        });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(code(&e), Some(ErrorCode::QuotaExceeded), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(ok + refused, 9);
    assert!(
        (1..=3).contains(&ok),
        "{ok} uploads of 3 MiB landed in 10 MiB"
    );
    let mut conn = cluster.connect_node(2, "carol", PW).await;
    let usage = conn.usage().await.unwrap();
    assert_eq!(usage.used_bytes, Some(ok * (3 << 20)));
    assert!(usage.used_bytes.unwrap() <= 10 << 20);
    let listed = conn.list("/").await.unwrap().len() as u64;
    assert_eq!(listed, ok);
    // Each node timed its database work for its operators: the account lookups of the
    // logins, and the reservations of the uploads. The name locks and digest records of the
    // uploads that landed were timed too, wherever they ran, and so were their PUTs to the
    // object store.
    let mut landed_calls = [0.0; 3];
    for n in 1..=3u16 {
        let m = cluster.metrics(n).await;
        for op in ["login_lookup", "reserve"] {
            let line = format!("ferry_database_seconds_count{{operation=\"{op}\"}}");
            assert!(m.contains(&line), "node {n} has no {line}:\n{m}");
        }
        for (i, series) in [
            r#"ferry_database_seconds_count{operation="name_lock"} "#,
            r#"ferry_database_seconds_count{operation="digest_put"} "#,
            r#"ferry_object_store_seconds_count{request="put"} "#,
        ]
        .iter()
        .enumerate()
        {
            landed_calls[i] += m
                .lines()
                .find_map(|l| l.strip_prefix(series))
                .map_or(0.0, |v| v.parse::<f64>().unwrap());
        }
    }
    for (i, op) in ["name_lock", "digest_put", "object store put"]
        .iter()
        .enumerate()
    {
        assert!(
            landed_calls[i] >= ok as f64,
            "{ok} uploads landed, {} {op} calls timed",
            landed_calls[i]
        );
    }
}

/// Wrong passwords spread over the three nodes: the source is refused by every node, while
/// another source still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres, garage and haproxy; .ci/run installs them"]
async fn needs_cluster_a_guesser_spread_over_the_nodes_is_refused_by_all() {
    let cluster = Cluster::up().await;
    cluster.add_user("alice", PW, &[]);
    let guesser = Ipv4Addr::new(127, 0, 0, 7);
    // 5 s a failure, ban past 15 s: four failures, one or two per node.
    for (i, node) in [1u16, 2, 3, 1].into_iter().enumerate() {
        match login_from(
            guesser,
            cluster.node_addr(node),
            &cluster,
            "wrong-password-1",
        )
        .await
        {
            Err(Some(ErrorCode::AuthFailed)) => {}
            other => panic!("attempt {i} on node {node}: {other:?}"),
        }
    }
    // Every node refuses the source within the sync interval (a second) and a bit.
    let started = Instant::now();
    for node in 1..=3u16 {
        loop {
            match login_from(guesser, cluster.node_addr(node), &cluster, PW).await {
                Err(None) => break,
                other => {
                    assert!(
                        started.elapsed() < Duration::from_secs(5),
                        "node {node} still lets the guesser in: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    // Another source is not affected.
    for node in 1..=3u16 {
        login_from(
            Ipv4Addr::new(127, 0, 0, 8),
            cluster.node_addr(node),
            &cluster,
            PW,
        )
        .await
        .unwrap_or_else(|e| panic!("node {node} refused an innocent source: {e:?}"));
    }
}

/// Logs in as alice from `source` through HAProxy at `to`: `Ok` when in, `Err(Some(code))`
/// when the server answered with an error, `Err(None)` when the connection was refused or
/// closed before an answer.
async fn login_from(
    source: Ipv4Addr,
    to: SocketAddr,
    cluster: &Cluster,
    password: &str,
) -> Result<(), Option<ErrorCode>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.into(), 0)).unwrap();
    let Ok(tcp) = socket.connect(to).await else {
        return Err(None);
    };
    let Ok(mut conn) = Connection::over(tcp, "localhost", to.port(), cluster.client_tls()).await
    else {
        return Err(None);
    };
    match conn
        .login("alice", &Password::new(password.to_string()))
        .await
    {
        Ok(_) => Ok(()),
        Err(ClientError::Auth | ClientError::AuthClosed(_)) => Err(Some(ErrorCode::AuthFailed)),
        Err(e) => Err(code(&e)),
    }
}

/// Uploads `src` to `remote` through node `node`, killing that node (SIGKILL) once `kill_at`
/// bytes went out; returns the error the client got.
async fn put_until_killed(
    cluster: &Cluster,
    node: u16,
    src: &std::path::Path,
    remote: &str,
    kill_at: u64,
) -> ClientError {
    let mut conn = cluster.connect_node(node, "alice", PW).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    let mut progress = move |sent: u64| {
        if sent >= kill_at
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(());
        }
    };
    let upload_remote = remote.to_string();
    let (src, remote) = (src.to_path_buf(), remote.to_string());
    let upload = tokio::spawn(async move {
        tokio::time::timeout(
            Duration::from_secs(120),
            conn.put(&src, &remote, false, &mut progress),
        )
        .await
    });
    rx.await
        .expect("the upload ended before it reached the kill point");
    // What the client sent may still sit in buffers: kill only once a part is recorded, as
    // another node sees it (under load the node can be far behind the client).
    let mut other = cluster.connect_node(node % 3 + 1, "alice", PW).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while other.partial(&upload_remote).await.unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "no part of the upload recorded in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.run("node-kill", Some(node));
    match upload.await.unwrap() {
        Ok(Err(e)) => e,
        Ok(Ok(t)) => panic!("the upload landed although its node was killed: {t:?}"),
        Err(_) => panic!("the client hung after its node was killed"),
    }
}

/// A node SIGKILLed mid-upload: `reput` through another node goes on from the verified
/// prefix the dead node recorded (a part boundary), not from zero, and the file is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres, garage and haproxy; .ci/run installs them"]
async fn needs_cluster_a_node_killed_mid_upload_is_resumed_through_another() {
    let cluster = Cluster::up().await;
    // A quota, so the shared counters are kept: they must come out exact after the node
    // that held the upload's reservation died and another took its parts up.
    cluster.add_user("alice", PW, &["--quota-bytes", "1 GiB"]);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("big.bin");
    let data = random_file(&src, 48 << 20, 5);
    let err = put_until_killed(&cluster, 1, &src, "/big.bin", 30 << 20).await;
    eprintln!("the client saw: {err}");
    let mut b = cluster.connect_node(2, "alice", PW).await;
    assert!(
        b.stat("/big.bin").await.is_err(),
        "a partial upload is visible under its final name"
    );
    let kept = b.partial("/big.bin").await.unwrap();
    assert!(kept >= 8 << 20, "another node finds only {kept} bytes kept");
    assert_eq!(kept % (8 << 20), 0, "not a part boundary: {kept}");
    let done = b
        .put_resume(&src, "/big.bin", false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(done.resumed_from, kept);
    assert_eq!(done.sha256, sha256_hex(&data));
    let back = local.path().join("back.bin");
    let mut c = cluster.connect_node(3, "alice", PW).await;
    c.get("/big.bin", &back, false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&back).unwrap(), data);
    // The counters hold exactly the one file, neither less (the parts the dead node recorded
    // were never counted: taking them up counts them) nor more. Read from the ledger itself:
    // what a client's `usage` adds of the dead node's reservation lapses only with its lease.
    assert_eq!(
        ledger(&cluster).await,
        [(48 << 20, 1)],
        "alice's home, as counted"
    );
    cluster.run("node-start", Some(1));
}

/// What the shared ledger holds for every counted home: (bytes, files).
async fn ledger(cluster: &Cluster) -> Vec<(i64, i64)> {
    let (db, conn) = tokio_postgres::connect(&cluster.accounts_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let rows = db
        .query(
            "SELECT used_bytes, used_files FROM ferry_usage WHERE counted",
            &[],
        )
        .await
        .unwrap();
    drop(db);
    let _ = driver.await;
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// An object put into the bucket behind ferry's back is not in the shared count, which every
/// node keeps; after `ferry user recount`, the user's next login, once no other node has a
/// session of the home, walks the home again through whichever node it lands on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres, garage and haproxy; .ci/run installs them"]
async fn needs_cluster_ferry_user_recount_sees_what_was_put_into_the_bucket_by_hand() {
    use object_store::{ObjectStoreExt, PutPayload};
    let cluster = Cluster::up().await;
    cluster.add_user("dora", PW, &["--quota-bytes", "10 MiB"]);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("a");
    random_file(&src, 1_000, 3);
    let usage = |n: u16| {
        let cluster = &cluster;
        async move {
            let mut conn = cluster.connect_node(n, "dora", PW).await;
            let u = conn.usage().await.unwrap();
            (u.used_bytes, u.used_files)
        }
    };
    {
        let mut conn = cluster.connect_node(1, "dora", PW).await;
        conn.put(&src, "/a.bin", false, &mut no_progress())
            .await
            .unwrap();
    }
    let config =
        ferry::storage::s3_homes::load_config(&cluster.dir.path().join("s3.toml")).unwrap();
    let bucket = ferry::storage::s3::S3Bucket::open(&config).unwrap();
    let key = format!("{}by-hand.bin", bucket.home_prefix("dora").unwrap());
    bucket
        .object_store()
        .put(
            &object_store::path::Path::from(key),
            PutPayload::from(vec![7u8; 5_000]),
        )
        .await
        .unwrap();
    // The count made at the first login is kept by every node: the object is not in it.
    assert_eq!(usage(2).await, (Some(1_000), Some(1)));

    let out = cluster.ferry(&["user", "recount", "dora"], None);
    assert!(out.status.success(), "{out:?}");
    // Nodes 1 and 2 said moments ago that they have sessions of the home: node 3 must not
    // walk it under them.
    assert_eq!(usage(3).await, (Some(1_000), Some(1)));
    // Their word lives 90 s; cut short here (as if that much time had passed).
    let (db, conn) = tokio_postgres::connect(&cluster.accounts_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    db.execute(
        "UPDATE ferry_live_homes SET expires = now() - interval '1 second'",
        &[],
    )
    .await
    .unwrap();
    drop(db);
    let _ = driver.await;
    // The next login (its node's own last session may take a moment to end) counts again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = usage(2).await;
        if got == (Some(6_000), Some(2)) {
            break;
        }
        assert_eq!(got, (Some(1_000), Some(1)), "neither count");
        assert!(Instant::now() < deadline, "not counted again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every node sees the new count.
    assert_eq!(usage(1).await, (Some(6_000), Some(2)));
}

/// One user, two clients, one name: a resumed upload running through node 2 while a put of
/// the same name lands through node 3. The put supersedes the running upload (its parts go,
/// it fails) and the counters end exact: the prefix the resume took over comes off once.
/// Before, it came off twice (the put took it off, and the failing upload gave it back), so
/// each round of this took a prefix's worth off the counters and the quota stopped meaning
/// anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres, garage and haproxy; .ci/run installs them"]
async fn needs_cluster_a_put_over_a_running_resume_leaves_the_counters_exact() {
    let cluster = Cluster::up().await;
    cluster.add_user("alice", PW, &["--quota-bytes", "1 GiB"]);
    let local = tempfile::tempdir().unwrap();
    let other = local.path().join("other.bin");
    random_file(&other, 3 << 20, 8);
    let mut a = cluster.connect_node(1, "alice", PW).await;
    a.put(&other, "/other.bin", false, &mut no_progress())
        .await
        .unwrap();
    let src = local.path().join("big.bin");
    random_file(&src, 160 << 20, 9);

    // An upload cut off after 24 MiB: node 1 keeps its whole parts, counted as a file.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    let cut = {
        let src = src.clone();
        tokio::spawn(async move {
            let mut progress = move |sent: u64| {
                if sent >= 24 << 20
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            };
            let _ = a.put(&src, "/big.bin", false, &mut progress).await;
        })
    };
    rx.await.expect("the upload ended before 24 MiB");
    let mut c = cluster.connect_node(3, "alice", PW).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.partial("/big.bin").await.unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no part recorded in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cut.abort();
    let _ = cut.await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let kept = loop {
        // Counted as received first, then as kept (whole parts): the second is the end.
        let now = ledger(&cluster).await;
        if now.len() == 1 && now[0].1 == 2 && (now[0].0 - (3 << 20)) % (8 << 20) == 0 {
            break now[0].0 - (3 << 20);
        }
        assert!(
            Instant::now() < deadline,
            "the partial was not kept: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(kept > 0 && kept % (8 << 20) == 0, "kept {kept}");

    // Resumed through node 2, running, its progress on record past the kept prefix.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    let mut b = cluster.connect_node(2, "alice", PW).await;
    let resume = {
        let src = src.clone();
        tokio::spawn(async move {
            let mut progress = move |sent: u64| {
                if sent >= kept as u64 + (24 << 20)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
            };
            b.put_resume(&src, "/big.bin", false, &mut progress).await
        })
    };
    rx.await.expect("the resume ended early");
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.partial("/big.bin").await.unwrap_or(0) <= kept as u64 {
        assert!(
            Instant::now() < deadline,
            "the resume recorded no part in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A put of the name through node 3 supersedes the running upload.
    let small = local.path().join("small.bin");
    let small_sha = sha256_hex(&random_file(&small, 1000, 10));
    let done = c
        .put(&small, "/big.bin", true, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(done.sha256, small_sha);
    let failed = tokio::time::timeout(Duration::from_secs(120), resume)
        .await
        .expect("the superseded upload hung")
        .unwrap();
    assert!(failed.is_err(), "the superseded upload landed: {failed:?}");
    assert_eq!(c.sha256("/big.bin").await.unwrap().1, small_sha);

    // Exactly the two files: neither the kept prefix (gone with the superseded upload) nor
    // less than what is there.
    let want = vec![((3 << 20) + 1000, 2)];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = ledger(&cluster).await;
        if now == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice's home, as counted: {now:?}, holds {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And it stays so (a counter given back late would show now).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(ledger(&cluster).await, want);
}

/// A Garage node stopped mid-transfer (replication 3: the other two hold a quorum): the
/// upload completes verified, or fails cleanly and is resumable; the object is never visible
/// corrupt. The stopped node comes back and the data is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres, garage and haproxy; .ci/run installs them"]
async fn needs_cluster_a_garage_node_stopped_mid_transfer_loses_nothing() {
    let cluster = Cluster::up().await;
    cluster.add_user("alice", PW, &[]);
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("big.bin");
    let data = random_file(&src, 40 << 20, 6);
    let mut conn = cluster.connect_node(1, "alice", PW).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut tx = Some(tx);
    let mut progress = move |sent: u64| {
        if sent >= 12 << 20
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(());
        }
    };
    let s = src.clone();
    let upload = tokio::spawn(async move {
        let r = tokio::time::timeout(
            Duration::from_secs(180),
            conn.put(&s, "/big.bin", false, &mut progress),
        )
        .await;
        (r, conn)
    });
    rx.await.unwrap();
    // Node 2's S3 API is not the one ferry talks to: the request path stays up, the
    // replicas shrink to two.
    cluster.run("garage-stop", Some(2));
    let (result, _conn) = upload.await.unwrap();
    let result = result.expect("the upload hung with a Garage node down");
    let mut b = cluster.connect_node(2, "alice", PW).await;
    match result {
        Ok(t) => assert_eq!(t.sha256, sha256_hex(&data)),
        Err(e) => {
            eprintln!("the upload failed with a Garage node down: {e}; resuming");
            assert!(
                b.stat("/big.bin").await.is_err(),
                "a failed upload is visible"
            );
            let t = b
                .put_resume(&src, "/big.bin", false, &mut no_progress())
                .await
                .unwrap();
            assert_eq!(t.sha256, sha256_hex(&data));
        }
    }
    let back = local.path().join("back.bin");
    let got = b
        .get("/big.bin", &back, false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(got.sha256, sha256_hex(&data));
    assert_eq!(std::fs::read(&back).unwrap(), data);
    cluster.run("garage-start", Some(2));
    let back2 = local.path().join("back2.bin");
    cluster
        .connect_node(3, "alice", PW)
        .await
        .get("/big.bin", &back2, false, &mut no_progress())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&back2).unwrap(), data);
}

/// PostgreSQL restarted while clients log in and upload: every failure is a clean error
/// within the timeouts (never a hang, never a dead node), and the nodes reconnect by
/// themselves: afterwards every node logs in and takes files again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres, garage and haproxy; .ci/run installs them"]
async fn needs_cluster_postgres_restarted_under_load_nodes_recover() {
    let cluster = std::sync::Arc::new(Cluster::up().await);
    cluster.add_user("alice", PW, &[]);
    let local = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for k in 0..6u16 {
        let (cluster, local, stop) = (cluster.clone(), local.clone(), stop.clone());
        clients.spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let src = local.path().join(format!("c{k}-{i}"));
                random_file(&src, 64 << 10, u64::from(k) * 1000 + u64::from(i));
                let node = 1 + k % 3;
                let attempt = tokio::time::timeout(Duration::from_secs(60), async {
                    let tcp = tokio::net::TcpStream::connect(cluster.node_addr(node))
                        .await
                        .map_err(|e| ClientError::Usage(e.to_string()))?;
                    let mut c = Connection::over(
                        tcp,
                        "localhost",
                        cluster.node_addr(node).port(),
                        cluster.client_tls(),
                    )
                    .await?;
                    c.login("alice", &Password::new(PW.to_string())).await?;
                    c.put(&src, &format!("/c{k}-{i}"), false, &mut no_progress())
                        .await
                })
                .await;
                match attempt {
                    Ok(Ok(_)) => ok += 1,
                    Ok(Err(e)) => failed.push(e.to_string()),
                    Err(_) => panic!("client {k}: an attempt hung for 60 s"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (ok, failed)
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    cluster.run("pg-restart", None);
    eprintln!("PostgreSQL restarted in {:?}", restarted.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(r) = clients.join_next().await {
        let (o, f) = r.unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!("{ok} uploads landed, {} failed: {failed:?}", failed.len());
    assert!(ok > 0);
    // Every node serves again, by itself, within seconds.
    for node in 1..=3u16 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let src = local.path().join(format!("after-{node}"));
            std::fs::write(&src, format!("after the restart, node {node}")).unwrap();
            let mut c = cluster.connect_node(node, "alice", PW).await;
            match c
                .put(&src, &format!("/after-{node}"), false, &mut no_progress())
                .await
            {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "node {node} did not recover: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    for n in 1..=3 {
        assert!(!cluster.log(n).contains("panicked"), "node {n} panicked");
    }
}

/// A rolling restart of the nodes, one at a time (SIGTERM, then start again), while 20
/// clients keep uploading through HAProxy: each client failure is a clean error after which
/// `reput` through whatever node HAProxy picks completes the file, and every committed file
/// matches its client's digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres, garage and haproxy; .ci/run installs them"]
async fn needs_cluster_a_rolling_restart_under_20_clients_loses_nothing() {
    let cluster = std::sync::Arc::new(Cluster::up().await);
    cluster.add_user("alice", PW, &[]);
    let local = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for k in 0..20u64 {
        let (cluster, local, stop) = (cluster.clone(), local.clone(), stop.clone());
        clients.spawn(async move {
            let mut landed: Vec<(String, String)> = Vec::new();
            let mut failures = 0u32;
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let name = format!("/c{k}-{i}.bin");
                let src = local.path().join(format!("c{k}-{i}"));
                let data = random_file(&src, (1 << 20) + (k as usize * 4096), k * 1000 + i);
                let want = sha256_hex(&data);
                // Until it lands: a failure must be clean and the file resumable.
                let mut tries = 0;
                let got = loop {
                    tries += 1;
                    assert!(tries <= 30, "client {k}: {name} never landed");
                    let attempt = tokio::time::timeout(Duration::from_secs(60), async {
                        let mut c = Connection::connect(
                            "localhost",
                            cluster.addr().port(),
                            cluster.client_tls(),
                        )
                        .await?;
                        c.login("alice", &Password::new(PW.to_string())).await?;
                        c.put_resume(&src, &name, false, &mut no_progress()).await
                    })
                    .await
                    .unwrap_or_else(|_| panic!("client {k}: an attempt hung for 60 s"));
                    match attempt {
                        Ok(t) => break t,
                        Err(e) if code(&e) == Some(ErrorCode::AlreadyExists) => {
                            // Landed, but the answer was lost with the node: check it.
                            let mut c = cluster.connect("alice", PW).await;
                            let (_, sha) = c.sha256(&name).await.unwrap();
                            break ferry::client::Transferred {
                                size: data.len() as u64,
                                sha256: sha,
                                elapsed: Duration::ZERO,
                                resumed_from: 0,
                            };
                        }
                        Err(_) => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                };
                assert_eq!(got.sha256, want, "client {k}: {name}");
                landed.push((name, want));
            }
            (landed, failures)
        });
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node in 1..=3u16 {
        cluster.run("node-stop", Some(node));
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.run("node-start", Some(node));
        cluster.wait_node_serves(node).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut landed, mut failures) = (Vec::new(), 0);
    while let Some(r) = clients.join_next().await {
        let (l, f) = r.unwrap();
        landed.extend(l);
        failures += f;
    }
    eprintln!(
        "{} files landed over the rolling restart; {failures} clean failures were resumed",
        landed.len()
    );
    assert!(landed.len() >= 20);
    // Every committed file is whole: its stored digest is its client's.
    let mut c = cluster.connect("alice", PW).await;
    for (name, want) in &landed {
        let (_, sha) = c.sha256(name).await.unwrap();
        assert_eq!(&sha, want, "{name}");
    }
    for n in 1..=3 {
        assert!(!cluster.log(n).contains("panicked"), "node {n} panicked");
    }
}

/// A drop link made in the database works at once through every node, and its file limit
/// holds across them: four senders through two nodes, `--max-files 3`, three files land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres, garage and haproxy; .ci/run installs them"]
async fn needs_cluster_a_drop_link_counts_once_across_nodes() {
    let cluster = Cluster::up().await;
    cluster.add_user("alice", PW, &[]);
    let out = cluster.ferry(
        &[
            "link",
            "add",
            "alice:/inbox",
            "--upload-only",
            "--max-files",
            "3",
            "--create",
            "--public-url",
            &format!("https://localhost:{}", cluster.base),
            "--s3-config",
            cluster.dir.path().join("s3.toml").to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "ferry link add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let token = printed
        .split("/d/")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c == '/' || c.is_whitespace()).next())
        .unwrap_or_else(|| panic!("no link in {printed:?}"))
        .to_string();
    let local = tempfile::tempdir().unwrap();
    let mut landed = 0;
    for (i, node) in [1u16, 2, 1, 2].into_iter().enumerate() {
        let file = local.path().join(format!("scan{i}.pdf"));
        std::fs::write(&file, format!("scan {i}")).unwrap();
        let out = std::process::Command::new("curl")
            .args(["-sS", "--cacert", cluster.ca().to_str().unwrap()])
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .arg("-T")
            .arg(&file)
            .arg(format!(
                "https://localhost:{}/d/{token}/",
                cluster.node_addr(node).port()
            ))
            .output()
            .expect("needs curl (Debian curl); .ci/run installs it");
        let status = String::from_utf8_lossy(&out.stdout).to_string();
        match status.as_str() {
            "201" => landed += 1,
            "403" | "409" | "410" | "429" | "507" => {}
            other => panic!(
                "upload {i} through node {node}: {other} {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
    assert_eq!(
        landed, 3,
        "a 3-file link took {landed} files over two nodes"
    );
    let mut conn = cluster.connect_node(3, "alice", PW).await;
    assert_eq!(conn.list("/inbox").await.unwrap().len(), 3);
}
