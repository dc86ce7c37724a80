//! Drop links and API tokens in PostgreSQL beyond their contract suites: two nodes (each a
//! pool of its own, on one real database) racing through one link for its last file, byte and
//! download, committing one use through both at once, and revoking a token through one node
//! while the other keeps checking; and `ferry link|token --accounts` (the real binary).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry::pg::PgConfig;
use ferry::pg::links::PgLinks;
use ferry::pg::tokens::PgTokens;
use ferry::state::links::{Link, LinkKind, LinkRefused, LinkSpec, LinkStore, issue};
use ferry::state::tokens::{self, ApiTokens, TokenScope, check, whole_seconds};

use crate::cli::Ferry;
use crate::util::pg::fresh_db;

const LEASE: Duration = Duration::from_secs(60);

fn now() -> SystemTime {
    whole_seconds(SystemTime::now())
}

/// Two nodes' link stores on one fresh database: each its own pool.
async fn two_link_nodes() -> (Arc<PgLinks>, Arc<PgLinks>) {
    let url = fresh_db().await;
    let cfg = PgConfig::from_url(&url).unwrap();
    let a = ferry::pg::links::open(&cfg).await.unwrap();
    let b = ferry::pg::links::open(&cfg).await.unwrap();
    (Arc::new(a), Arc::new(b))
}

fn upload(max_files: Option<u64>, max_bytes: Option<u64>) -> LinkSpec {
    LinkSpec {
        owner: "alice".into(),
        folder: "/drop".into(),
        kind: LinkKind::Upload,
        ttl: Some(Duration::from_secs(3600)),
        max_files,
        max_bytes,
        max_downloads: None,
        password: None,
        note: None,
    }
}

async fn added(store: &PgLinks, spec: LinkSpec) -> Link {
    let (_, l) = issue(spec, now(), |_| false).unwrap();
    store.add(&l).await.unwrap();
    l
}

async fn used(store: &PgLinks, l: &Link) -> (u64, u64, u64) {
    let l = store.get(l.id).await.unwrap().unwrap();
    (l.used_files, l.used_bytes, l.used_downloads)
}

/// Senders race through two nodes for a link's `--max-files 3`: each reserves and commits
/// through its node; exactly three files count, however the race goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_max_files_raced_from_two_pools() {
    let (a, b) = two_link_nodes().await;
    let l = added(&a, upload(Some(3), None)).await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let u = node.reserve_use(l.id, 1, LEASE).await?;
            node.commit_use(u, 1).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(e) => assert_eq!(e, LinkRefused::Files),
        }
    }
    assert_eq!(won, 3, "exactly --max-files uploads land");
    assert_eq!(used(&b, &l).await, (3, 3, 0));
    assert_eq!(
        a.reserve_use(l.id, 0, LEASE).await,
        Err(LinkRefused::Files),
        "full through either node"
    );
    assert_eq!(b.reserve_use(l.id, 0, LEASE).await, Err(LinkRefused::Files));
}

/// `--max-bytes` raced through two nodes: the bytes committed never pass the limit, and
/// every reservation that won is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_max_bytes_raced_from_two_pools() {
    let (a, b) = two_link_nodes().await;
    let l = added(&a, upload(None, Some(100))).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let u = node.reserve_use(l.id, 7, LEASE).await?;
            node.commit_use(u, 7).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(e) => assert_eq!(e, LinkRefused::Bytes),
        }
    }
    assert_eq!(won, 14, "100 / 7 files of 7 bytes");
    assert_eq!(used(&a, &l).await, (14, 98, 0));
}

/// One use committed through both nodes at once (its id is the database's, so a holder who
/// learns it can try): it counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_one_use_committed_through_both_nodes_counts_once() {
    let (a, b) = two_link_nodes().await;
    let l = added(&a, upload(Some(10), Some(1000))).await;
    for _ in 0..10 {
        let u = a.reserve_use(l.id, 5, LEASE).await.unwrap();
        let (ra, rb) = tokio::join!(a.commit_use(u, 5), b.commit_use(u, 5));
        let oks = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
        assert_eq!(oks, 1, "{ra:?} {rb:?}");
        for r in [ra, rb] {
            if let Err(e) = r {
                assert_eq!(e, LinkRefused::LeaseGone);
            }
        }
    }
    assert_eq!(used(&b, &l).await, (10, 50, 0));
    // Renewing or releasing through the other node acts on the same lease.
    let full = b.reserve_use(l.id, 0, LEASE).await;
    assert_eq!(full, Err(LinkRefused::Files));
}

/// `--max-downloads 5` raced through two nodes: five counted, never six.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_max_downloads_raced_from_two_pools() {
    let (a, b) = two_link_nodes().await;
    let l = added(
        &a,
        LinkSpec {
            folder: "/report.pdf".into(),
            kind: LinkKind::Download,
            max_downloads: Some(5),
            ..upload(None, None)
        },
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { node.count_download(l.id).await }));
    }
    let mut granted = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            granted += 1;
        }
    }
    assert_eq!(granted, 5);
    assert_eq!(used(&b, &l).await, (0, 0, 5));
}

/// A link revoked through one node during an upload through the other: the upload cannot
/// commit, and the link is refused through both at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_a_link_revoked_through_one_node_is_refused_by_the_other() {
    let (a, b) = two_link_nodes().await;
    let (t, l) = issue(upload(None, None), now(), |_| false).unwrap();
    a.add(&l).await.unwrap();
    assert_eq!(b.by_token(t.expose()).await.unwrap(), Some(l.clone()));
    let u = b.reserve_use(l.id, 10, LEASE).await.unwrap();
    a.revoke(l.id).await.unwrap();
    assert_eq!(b.by_token(t.expose()).await.unwrap(), None);
    assert_eq!(b.commit_use(u, 10).await, Err(LinkRefused::Gone));
}

/// A token revoked through one node is refused by the other at its very next check: no
/// cache, no notice to wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_token_revoked_through_one_pool_is_refused_by_the_other_at_once() {
    let url = fresh_db().await;
    let cfg = PgConfig::from_url(&url).unwrap();
    let a: PgTokens = ferry::pg::tokens::open(&cfg).await.unwrap();
    let b: PgTokens = ferry::pg::tokens::open(&cfg).await.unwrap();
    for _ in 0..20 {
        let (t, rec) = tokens::issue(
            "alice",
            "ci",
            TokenScope::Full,
            Some(Duration::from_secs(60)),
            now(),
            |_| false,
        )
        .unwrap();
        a.add(&rec).await.unwrap();
        assert!(check(&b, t.expose(), now()).await.is_ok());
        a.revoke(rec.id).await.unwrap();
        let refused = check(&b, t.expose(), now()).await.unwrap_err();
        assert_eq!(refused.reason(), "unknown token id");
    }
    // A user's tokens revoked through one node are all refused through the other.
    let (t, rec) = tokens::issue("bob", "x", TokenScope::ReadOnly, None, now(), |_| false).unwrap();
    b.add(&rec).await.unwrap();
    assert!(check(&a, t.expose(), now()).await.is_ok());
    assert_eq!(b.revoke_user("bob").await.unwrap(), 1);
    assert!(check(&a, t.expose(), now()).await.is_err());
    assert_eq!(a.list(None).await.unwrap(), vec![]);
}

/// `ferry link` and `ferry token` with `--accounts` (the real binary): the user comes from the
/// database, the link's URL is printed as with the files, what the binary adds and deletes is
/// in force through a store on the same database at once, and `ferry user del --accounts`
/// revokes the user's links and tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_ferry_link_and_token_edit_the_database() {
    let url = fresh_db().await;
    let dir = tempfile::tempdir().unwrap();
    // The data root, as `ferry serve` makes it.
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let run = |stdin: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--accounts", url.as_str()]);
        let ferry = Ferry::new(dir.path())
            .env("FERRY_PUBLIC_URL", "")
            .stdin(stdin);
        tokio::task::block_in_place(|| ferry.run(&all))
    };
    run(
        "alice-long-password\n",
        &["user", "add", "alice", "--password-stdin"],
    )
    .expect_ok();
    let cfg = PgConfig::from_url(&url).unwrap();
    let links = ferry::pg::links::open(&cfg).await.unwrap();
    let tokens = ferry::pg::tokens::open(&cfg).await.unwrap();

    // A link: its URL printed once, as with links.toml.
    let out = run(
        "",
        &[
            "link",
            "add",
            "alice:/inbox",
            "--upload-only",
            "--create",
            "--max-files",
            "2",
            "--public-url",
            "https://files.example.org:8443",
        ],
    );
    out.expect_ok();
    let printed = out.stdout.trim();
    assert_eq!(out.stdout, format!("{printed}\n"), "one line on stdout");
    assert!(
        printed.starts_with("https://files.example.org:8443/d/dl_"),
        "{printed}"
    );
    assert!(dir.path().join("data/alice/inbox").is_dir());
    let token = printed.rsplit('/').find(|s| s.starts_with("dl_")).unwrap();
    let link = links
        .by_token(token)
        .await
        .unwrap()
        .expect("in the database");
    assert_eq!(
        (link.owner.as_str(), link.folder.as_str(), link.max_files),
        ("alice", "/inbox", Some(2))
    );
    assert!(!dir.path().join("links.toml").exists(), "nothing in a file");
    let list = run("", &["link", "list"]);
    list.expect_ok();
    assert!(
        list.stdout.contains(&link.id.to_string()) && list.stdout.contains("files=0/2"),
        "{list:?}"
    );
    assert!(!list.stdout.contains(token), "never the token");
    let nobody = run(
        "",
        &[
            "link",
            "add",
            "bob:/inbox",
            "--upload-only",
            "--public-url",
            "https://files.example.org:8443",
        ],
    );
    nobody.expect_failure();
    assert!(nobody.stderr.contains("no user"), "{nobody:?}");
    run("", &["link", "del", &link.id.to_string()]).expect_ok();
    assert_eq!(
        links.by_token(token).await.unwrap(),
        None,
        "revoked at once"
    );

    // A token: the only user is the default; checked through another store at once.
    let out = run("", &["token", "add", "ci"]);
    out.expect_ok();
    let secret = out.stdout.trim().to_owned();
    let grant = check(&tokens, &secret, now()).await.unwrap();
    assert_eq!(grant.user, "alice");
    assert!(
        !dir.path().join("tokens.toml").exists(),
        "nothing in a file"
    );
    let list = run("", &["token", "list"]);
    list.expect_ok();
    assert!(list.stdout.contains(&grant.id.to_string()), "{list:?}");
    assert!(!list.stdout.contains(&secret[12..]), "never the secret");
    let nobody = run("", &["token", "add", "ci", "--user", "bob"]);
    nobody.expect_failure();
    assert!(nobody.stderr.contains("no user"), "{nobody:?}");
    run("", &["token", "del", &grant.id.to_string()]).expect_ok();
    assert!(
        check(&tokens, &secret, now()).await.is_err(),
        "revoked at once"
    );

    // Deleting the user revokes what is left of theirs.
    let kept = run("", &["token", "add", "kept", "--user", "alice"]);
    kept.expect_ok();
    let kept = kept.stdout.trim().to_owned();
    run(
        "",
        &[
            "link",
            "add",
            "alice:/inbox",
            "--upload-only",
            "--public-url",
            "https://files.example.org:8443",
        ],
    )
    .expect_ok();
    assert_eq!(links.list(Some("alice")).await.unwrap().len(), 1);
    let del = run("", &["user", "del", "alice"]);
    del.expect_ok();
    assert!(
        del.stderr.contains("revoked their 1 API token(s)")
            && del.stderr.contains("revoked their 1 drop link(s)"),
        "{del:?}"
    );
    assert!(check(&tokens, &kept, now()).await.is_err());
    assert_eq!(links.list(None).await.unwrap(), vec![]);

    // The password never goes on the command line, not even inside the URL.
    let with_pw = url.replacen("postgres://ferry@", "postgres://ferry:secret@", 1);
    let out = tokio::task::block_in_place(|| {
        Ferry::new(dir.path()).run(&["token", "list", "--accounts", &with_pw])
    });
    out.expect_failure();
    assert!(out.stderr.contains("PGPASSWORD"), "{out:?}");
}
