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
