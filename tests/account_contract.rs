//! The contract of an `AccountStore`: what every store of accounts must do, written once and
//! run against each store. A new store (PostgreSQL, issue 15) proves itself by passing it
//! unchanged: give [`account_contract!`] an expression that makes a fresh, empty backing and
//! returns a function opening a store on it (each call another instance on the same backing,
//! as another process or node would open one).
//!
//! Run here against the users file (`TomlAccounts`), starting from no file and from a file an
//! admin wrote by hand.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry::accounts::toml::TomlAccounts;
use ferry::accounts::{AccountError, AccountStore, User, UserChange};
use ferry::users::{self, Password};

use crate::util::CHEAP;

/// Opens one more store on a test's backing.
pub type Open = dyn Fn() -> Arc<dyn AccountStore> + Send + Sync;

/// Longest wait for a change notice that a store owes.
const NOTICE_WAIT: Duration = Duration::from_secs(5);

/// One test per case of the contract, each on a fresh, empty backing made by `$fresh`: an
/// expression whose value is a `Fn() -> Arc<dyn AccountStore>` that owns the backing (dropping
/// it at the end of the test removes it) and opens one more store on it at each call.
macro_rules! account_contract {
    // Each case with the attribute given first (such as `#[ignore = "needs postgres; ..."]`).
    (#[$attr:meta] $fresh:expr) => {
        $crate::account_contract::account_contract!(@cases [$attr] $fresh;
            add_get_list,
            add_of_a_taken_name_fails,
            writes_to_a_missing_name_fail_with_not_found,
            set_changes_only_what_it_names,
            passwd_changes_the_hash,
            del_then_get_is_none,
            changes_fire_after_each_write,
            a_second_store_sees_the_writes_of_the_first,
            invalid_names_are_refused,
            invalid_hashes_homes_and_limits_are_refused,
            concurrent_adds_of_one_name_one_wins,
            concurrent_adds_of_different_names_all_land,
            dummy_hash_is_usable_and_matches_the_users
        );
    };
    ($fresh:expr) => {
        $crate::account_contract::account_contract!(@cases [allow(unused)] $fresh;
            add_get_list,
            add_of_a_taken_name_fails,
            writes_to_a_missing_name_fail_with_not_found,
            set_changes_only_what_it_names,
            passwd_changes_the_hash,
            del_then_get_is_none,
            changes_fire_after_each_write,
            a_second_store_sees_the_writes_of_the_first,
            invalid_names_are_refused,
            invalid_hashes_homes_and_limits_are_refused,
            concurrent_adds_of_one_name_one_wins,
            concurrent_adds_of_different_names_all_land,
            dummy_hash_is_usable_and_matches_the_users
        );
    };
    (@cases [$attr:meta] $fresh:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[$attr]
            async fn $case() {
                let open = $fresh;
                $crate::account_contract::$case(&open).await;
            }
        )*
    };
}
pub(crate) use account_contract;

fn hash(password: &str) -> String {
    users::hash_password_with(&Password::new(password.into()), CHEAP.0, CHEAP.1, CHEAP.2).unwrap()
}

/// A user with every setting set, so a store that drops or mixes up a field is caught.
fn full_user(name: &str) -> User {
    User {
        home: Some(PathBuf::from(format!("/srv/homes/{name}"))),
        read_only: true,
        quota_bytes: Some(10 << 30),
        quota_files: Some(1000),
        max_file_size: Some(1 << 30),
        ..User::new(name, hash(&format!("{name}-pw")))
    }
}

async fn names(store: &dyn AccountStore) -> Vec<String> {
    store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect()
}

/// Waits for the notice `rx` owes, and marks it seen.
async fn notice(rx: &mut tokio::sync::watch::Receiver<u64>, after: &str) {
    match tokio::time::timeout(NOTICE_WAIT, rx.changed()).await {
        Ok(Ok(())) => {
            rx.borrow_and_update();
        }
        Ok(Err(_)) => panic!("the change notice ended (its sender was dropped) after {after}"),
        Err(_) => panic!("no change notice within {NOTICE_WAIT:?} after {after}"),
    }
}

pub async fn add_get_list(open: &Open) {
    let store = open();
    assert_eq!(
        store.list().await.unwrap(),
        vec![],
        "a fresh store is empty"
    );
    assert_eq!(store.get("alice").await.unwrap(), None);

    let carol = User::new("carol", hash("carol-pw"));
    let alice = full_user("alice");
    let bob = User {
        read_only: true,
        ..User::new("bob", hash("bob-pw"))
    };
    // Not in name order, and a name outside ASCII, which sorts last by its bytes.
    let zoe = User::new("zoë", hash("zoe-pw"));
    for u in [&carol, &zoe, &alice, &bob] {
        store.add(u).await.unwrap();
    }
    assert_eq!(store.get("alice").await.unwrap().as_ref(), Some(&alice));
    assert_eq!(store.get("bob").await.unwrap().as_ref(), Some(&bob));
    assert_eq!(store.get("carol").await.unwrap().as_ref(), Some(&carol));
    assert_eq!(store.get("zoë").await.unwrap().as_ref(), Some(&zoe));
    assert_eq!(store.get("Alice").await.unwrap(), None, "names are exact");
    assert_eq!(store.get("ali").await.unwrap(), None, "names are exact");
    assert_eq!(
        store.list().await.unwrap(),
        vec![alice, bob, carol, zoe],
        "list: every user, whole, sorted by name"
    );
}

pub async fn add_of_a_taken_name_fails(open: &Open) {
    let store = open();
    let first = User::new("alice", hash("first"));
    store.add(&first).await.unwrap();
    let second = full_user("alice");
    assert_eq!(
        store.add(&second).await,
        Err(AccountError::AlreadyExists("alice".into()))
    );
    assert_eq!(
        store.get("alice").await.unwrap(),
        Some(first),
        "the first stays"
    );
    assert_eq!(names(&*store).await, ["alice"]);
}

pub async fn writes_to_a_missing_name_fail_with_not_found(open: &Open) {
    let store = open();
    let ghost = || AccountError::NotFound("ghost".into());
    let change = UserChange {
        read_only: Some(true),
        ..UserChange::default()
    };
    // On an empty store, and on one with users.
    for round in 0..2 {
        assert_eq!(store.set("ghost", &change).await, Err(ghost()), "{round}");
        assert_eq!(
            store.passwd("ghost", &hash("x")).await,
            Err(ghost()),
            "{round}"
        );
        assert_eq!(store.del("ghost").await, Err(ghost()), "{round}");
        assert_eq!(store.get("ghost").await.unwrap(), None, "{round}");
        if round == 0 {
            store.add(&User::new("alice", hash("a"))).await.unwrap();
            store.del("alice").await.unwrap();
            store.add(&User::new("bob", hash("b"))).await.unwrap();
        }
    }
    assert_eq!(names(&*store).await, ["bob"], "nothing else was made");
}

pub async fn set_changes_only_what_it_names(open: &Open) {
    let store = open();
    let alice = full_user("alice");
    let bob = full_user("bob");
    store.add(&alice).await.unwrap();
    store.add(&bob).await.unwrap();

    let changes = [
        UserChange {
            read_only: Some(false),
            ..UserChange::default()
        },
        UserChange {
            quota_bytes: Some(None),
            ..UserChange::default()
        },
        UserChange {
            quota_files: Some(Some(7)),
            max_file_size: Some(None),
            ..UserChange::default()
        },
        UserChange {
            home: Some(Some(PathBuf::from("elsewhere/alice"))),
            ..UserChange::default()
        },
        UserChange {
            home: Some(None),
            quota_bytes: Some(Some(5)),
            ..UserChange::default()
        },
        // Nothing named, nothing changed.
        UserChange::default(),
        UserChange {
            read_only: Some(true),
            quota_bytes: Some(None),
            quota_files: Some(None),
            ..UserChange::default()
        },
    ];
    let mut expected = alice;
    for change in &changes {
        store.set("alice", change).await.unwrap();
        expected = change.applied_to(&expected);
        assert_eq!(
            store.get("alice").await.unwrap().as_ref(),
            Some(&expected),
            "after {change:?}"
        );
        assert_eq!(
            store.get("bob").await.unwrap().as_ref(),
            Some(&bob),
            "another user is untouched by {change:?}"
        );
    }
    // The last change left alice without limits and with the default home.
    assert_eq!(
        expected,
        User {
            read_only: true,
            ..User::new("alice", expected.password_hash.clone())
        }
    );
}

pub async fn passwd_changes_the_hash(open: &Open) {
    let store = open();
    let alice = full_user("alice");
    let bob = full_user("bob");
    store.add(&alice).await.unwrap();
    store.add(&bob).await.unwrap();
    let new = hash("alice-new-pw");
    store.passwd("alice", &new).await.unwrap();
    let got = store.get("alice").await.unwrap().unwrap();
    assert_eq!(got.password_hash, new);
    assert!(users::verify_password(
        &got.password_hash,
        &Password::new("alice-new-pw".into())
    ));
    assert_eq!(
        got,
        User {
            password_hash: new,
            ..alice
        },
        "only the hash changed"
    );
    assert_eq!(store.get("bob").await.unwrap(), Some(bob));
}

pub async fn del_then_get_is_none(open: &Open) {
    let store = open();
    let alice = full_user("alice");
    let bob = User::new("bob", hash("b"));
    store.add(&alice).await.unwrap();
    store.add(&bob).await.unwrap();
    store.del("alice").await.unwrap();
    assert_eq!(store.get("alice").await.unwrap(), None);
    assert_eq!(store.list().await.unwrap(), vec![bob.clone()]);
    assert_eq!(
        store.del("alice").await,
        Err(AccountError::NotFound("alice".into()))
    );
    // The name is free again, and nothing of the old account comes back with it.
    let again = User::new("alice", hash("again"));
    store.add(&again).await.unwrap();
    assert_eq!(store.get("alice").await.unwrap(), Some(again));
    store.del("bob").await.unwrap();
    store.del("alice").await.unwrap();
    assert_eq!(store.list().await.unwrap(), vec![]);
}

pub async fn changes_fire_after_each_write(open: &Open) {
    let store = open();
    let mut rx = store.changes();
    rx.borrow_and_update();
    store.add(&full_user("alice")).await.unwrap();
    notice(&mut rx, "add").await;
    let change = UserChange {
        read_only: Some(false),
        ..UserChange::default()
    };
    store.set("alice", &change).await.unwrap();
    notice(&mut rx, "set").await;
    store.passwd("alice", &hash("new")).await.unwrap();
    notice(&mut rx, "passwd").await;
    store.del("alice").await.unwrap();
    notice(&mut rx, "del").await;
    // A receiver taken later starts from the present.
    let mut late = store.changes();
    late.borrow_and_update();
    store.add(&User::new("bob", hash("b"))).await.unwrap();
    notice(&mut late, "add, seen by a later receiver").await;
    notice(&mut rx, "add, seen by the first receiver").await;
}

pub async fn a_second_store_sees_the_writes_of_the_first(open: &Open) {
    let (reader, writer) = (open(), open());
    // The reader has looked before: whatever it keeps must not hide what comes next.
    assert_eq!(reader.list().await.unwrap(), vec![]);
    assert_eq!(reader.get("alice").await.unwrap(), None);
    let mut rx = reader.changes();
    rx.borrow_and_update();

    let alice = full_user("alice");
    writer.add(&alice).await.unwrap();
    assert_eq!(reader.get("alice").await.unwrap().as_ref(), Some(&alice));
    notice(&mut rx, "another store's add").await;

    let new = hash("alice-new-pw");
    writer.passwd("alice", &new).await.unwrap();
    let got = reader.get("alice").await.unwrap().unwrap();
    assert_eq!(got.password_hash, new, "another store's passwd");
    notice(&mut rx, "another store's passwd").await;

    let change = UserChange {
        read_only: Some(false),
        quota_bytes: Some(None),
        ..UserChange::default()
    };
    writer.set("alice", &change).await.unwrap();
    assert_eq!(
        reader.get("alice").await.unwrap(),
        Some(change.applied_to(&got)),
        "another store's set"
    );
    notice(&mut rx, "another store's set").await;

    writer.add(&User::new("bob", hash("b"))).await.unwrap();
    assert_eq!(names(&*reader).await, ["alice", "bob"], "list sees it too");
    writer.del("alice").await.unwrap();
    assert_eq!(
        reader.get("alice").await.unwrap(),
        None,
        "another store's del"
    );
    notice(&mut rx, "another store's del").await;

    // And the other way round: the reader writes, the writer sees it.
    reader.add(&User::new("carol", hash("c"))).await.unwrap();
    assert_eq!(names(&*writer).await, ["bob", "carol"]);
    // A taken name is taken for every store, whatever it saw before.
    assert_eq!(
        writer.add(&User::new("carol", hash("c2"))).await,
        Err(AccountError::AlreadyExists("carol".into()))
    );
}

pub async fn invalid_names_are_refused(open: &Open) {
    let store = open();
    let long = "a".repeat(65);
    let bad = [
        "",
        "-alice",
        ".alice",
        ".",
        "..",
        "a/b",
        "a\\b",
        "a:b",
        "a@b",
        "a b",
        "a\tb",
        "a\nb",
        "a\0b",
        "\u{202e}alice",
        "al\u{200b}ice",
        long.as_str(),
    ];
    for name in bad {
        match store.add(&User::new(name, hash("pw"))).await {
            Err(AccountError::Invalid { reason }) => {
                assert!(reason.contains("invalid user name"), "{name:?}: {reason}")
            }
            other => panic!("add of {name:?}: {other:?}"),
        }
        assert_eq!(store.get(name).await.unwrap(), None, "{name:?}");
        // Nothing can be called that, so nothing is found.
        let missing = Err(AccountError::NotFound(name.into()));
        let change = UserChange {
            read_only: Some(true),
            ..UserChange::default()
        };
        assert_eq!(store.set(name, &change).await, missing, "{name:?}");
        assert_eq!(store.passwd(name, &hash("pw")).await, missing, "{name:?}");
        assert_eq!(store.del(name).await, missing, "{name:?}");
    }
    assert_eq!(store.list().await.unwrap(), vec![], "nothing was added");
    // The longest name and letters of any script are fine.
    let ok = ["a".repeat(64), "Zoë-ß_日本.x".into()];
    for name in &ok {
        store
            .add(&User::new(name.as_str(), hash("pw")))
            .await
            .unwrap();
    }
    let listed: BTreeSet<String> = names(&*store).await.into_iter().collect();
    assert_eq!(listed, ok.into_iter().collect());
}

pub async fn invalid_hashes_homes_and_limits_are_refused(open: &Open) {
    let store = open();
    let invalid = |r: Result<(), AccountError>, what: &str| match r {
        Err(AccountError::Invalid { .. }) => {}
        other => panic!("{what}: {other:?}"),
    };
    for bad in [
        "",
        "hunter2",
        "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ",
        "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
    ] {
        invalid(store.add(&User::new("alice", bad)).await, bad);
    }
    invalid(
        store
            .add(&User {
                home: Some(PathBuf::new()),
                ..User::new("alice", hash("pw"))
            })
            .await,
        "empty home",
    );
    invalid(
        store
            .add(&User {
                quota_bytes: Some(u64::MAX),
                ..User::new("alice", hash("pw"))
            })
            .await,
        "quota over i64::MAX",
    );
    assert_eq!(store.list().await.unwrap(), vec![], "nothing was added");

    let alice = User::new("alice", hash("pw"));
    store.add(&alice).await.unwrap();
    invalid(
        store.passwd("alice", "hunter2").await,
        "passwd to a non-hash",
    );
    let change = UserChange {
        max_file_size: Some(Some(u64::MAX)),
        ..UserChange::default()
    };
    invalid(store.set("alice", &change).await, "max file size too big");
    let change = UserChange {
        home: Some(Some(PathBuf::from("a\0b"))),
        ..UserChange::default()
    };
    invalid(store.set("alice", &change).await, "home with NUL");
    assert_eq!(store.get("alice").await.unwrap(), Some(alice), "unchanged");
}

pub async fn concurrent_adds_of_one_name_one_wins(open: &Open) {
    const WRITERS: usize = 8;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            // Each writer a store of its own, as separate processes would be.
            let store = open();
            let user = User::new("alice", hash(&format!("pw-{i}")));
            tokio::spawn(async move {
                let result = store.add(&user).await;
                (user, result)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (user, result) = task.await.unwrap();
        match result {
            Ok(()) => winners.push(user),
            Err(AccountError::AlreadyExists(name)) => assert_eq!(name, "alice"),
            Err(e) => panic!("a concurrent add failed otherwise: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one add wins: {winners:?}");
    let store = open();
    assert_eq!(
        store.list().await.unwrap(),
        winners,
        "and its user is the one kept"
    );
}

pub async fn concurrent_adds_of_different_names_all_land(open: &Open) {
    const WRITERS: usize = 8;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|i| {
            let store = open();
            let user = User::new(format!("user{i}"), hash("pw"));
            tokio::spawn(async move { store.add(&user).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let expected: Vec<String> = (0..WRITERS).map(|i| format!("user{i}")).collect();
    assert_eq!(names(&*open()).await, expected, "no add was lost");
}

pub async fn dummy_hash_is_usable_and_matches_the_users(open: &Open) {
    let store = open();
    for name in ["alice", "bob", "carol"] {
        store.add(&User::new(name, hash("pw"))).await.unwrap();
    }
    // The dummy follows the users the store has, once it has looked at them.
    let _ = store.get("alice").await.unwrap();
    let dummy = store.dummy_hash();
    users::check_hash(&dummy).unwrap();
    let (m, t, p) = CHEAP;
    assert!(
        dummy.starts_with(&format!("$argon2id$v=19$m={m},t={t},p={p}$")),
        "made with the users' parameters: {dummy}"
    );
    assert!(!users::verify_password(&dummy, &Password::new("pw".into())));
    assert!(!users::verify_password(
        &dummy,
        &Password::new(String::new())
    ));
    assert!(
        store
            .list()
            .await
            .unwrap()
            .iter()
            .all(|u| u.password_hash != dummy),
        "not any user's hash"
    );
}

/// What "another store on the same backing" stands for with the users file: another process.
/// A `ferry user add` run is seen by a store at its next read, and a store's write by a
/// `ferry user list` run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toml_a_ferry_user_process_and_a_store_see_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    let users = path.to_str().unwrap();
    let store = TomlAccounts::new(path.clone());
    assert_eq!(store.list().await.unwrap(), vec![]);
    let mut rx = store.changes();
    rx.borrow_and_update();

    crate::cli::Ferry::new(dir.path())
        .stdin("zoe-long-password\n")
        .run(&["user", "add", "zoe", "--password-stdin", "--users", users])
        .expect_ok();
    let zoe = store
        .get("zoe")
        .await
        .unwrap()
        .expect("seen at the next read");
    assert!(users::verify_password(
        &zoe.password_hash,
        &Password::new("zoe-long-password".into())
    ));
    notice(&mut rx, "`ferry user add` in another process").await;

    store.add(&User::new("amy", hash("amy-pw"))).await.unwrap();
    let out = crate::cli::Ferry::new(dir.path()).run(&["user", "list", "--users", users]);
    out.expect_ok();
    let listed: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed, ["amy", "zoe"], "{out:?}");
}

/// A server on 127.0.0.1:0 whose users live in `store`; stops when the sender is dropped.
async fn serve_with(
    dir: &std::path::Path,
    store: Arc<dyn AccountStore>,
) -> (
    u16,
    Arc<rustls::ClientConfig>,
    tokio::sync::oneshot::Sender<()>,
) {
    let certs = ferry::certs::CertPaths::in_dir(&dir.join("certs"));
    if !certs.server_cert.exists() {
        ferry::certs::generate(&dir.join("certs"), &[], false).unwrap();
    }
    let tls = ferry::tls::server_config(
        &certs.server_cert,
        &certs.server_key,
        ferry::server::ALPN_OFFERED,
    )
    .unwrap();
    let root = dir.join("data");
    std::fs::create_dir_all(&root).unwrap();
    let server = ferry::server::Server::with_accounts(tls, store, root, crate::util::test_limits());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(ferry::server::run(server, listener, async {
        let _ = stopped.await;
    }));
    let client = ferry::tls::client_config(Some(&certs.ca_cert), ferry::protocol::ALPN).unwrap();
    (port, client, stop)
}

async fn login_result(
    port: u16,
    tls: &Arc<rustls::ClientConfig>,
    user: &str,
    password: &str,
) -> Result<(), ferry::client::ClientError> {
    let mut c = ferry::client::Connection::connect("127.0.0.1", port, Arc::clone(tls)).await?;
    c.login(user, &Password::new(password.into())).await?;
    c.stat("/").await?;
    Ok(())
}

/// A server takes its users from the store it is given, at each login: a write through
/// another store on the same backing is in force at the next login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_logs_users_in_through_its_store() {
    use ferry::client::ClientError;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    let admin = TomlAccounts::new(path.clone());
    admin
        .add(&User::new("alice", hash("alice-pw")))
        .await
        .unwrap();
    let (port, tls, _stop) =
        serve_with(dir.path(), Arc::new(TomlAccounts::load(&path).unwrap())).await;
    login_result(port, &tls, "alice", "alice-pw").await.unwrap();

    admin.add(&User::new("bob", hash("bob-pw"))).await.unwrap();
    login_result(port, &tls, "bob", "bob-pw")
        .await
        .expect("an added user, at once");
    admin.passwd("alice", &hash("alice-new")).await.unwrap();
    assert!(matches!(
        login_result(port, &tls, "alice", "alice-pw").await,
        Err(ClientError::Auth)
    ));
    login_result(port, &tls, "alice", "alice-new")
        .await
        .expect("a new password, at once");
    admin.del("bob").await.unwrap();
    assert!(matches!(
        login_result(port, &tls, "bob", "bob-pw").await,
        Err(ClientError::Auth)
    ));
}

/// A store that cannot answer (a database that is down).
#[derive(Debug, Default)]
struct Down {
    asked: std::sync::atomic::AtomicUsize,
}

impl AccountStore for Down {
    fn get<'a>(
        &'a self,
        _name: &'a str,
    ) -> ferry::accounts::BoxFuture<'a, Result<Option<User>, AccountError>> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Err(AccountError::backend("database down")) })
    }
    fn list(&self) -> ferry::accounts::BoxFuture<'_, Result<Vec<User>, AccountError>> {
        Box::pin(async { Err(AccountError::backend("database down")) })
    }
    fn add<'a>(&'a self, _: &'a User) -> ferry::accounts::BoxFuture<'a, Result<(), AccountError>> {
        Box::pin(async { Err(AccountError::backend("database down")) })
    }
    fn set<'a>(
        &'a self,
        _: &'a str,
        _: &'a UserChange,
    ) -> ferry::accounts::BoxFuture<'a, Result<(), AccountError>> {
        Box::pin(async { Err(AccountError::backend("database down")) })
    }
    fn passwd<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> ferry::accounts::BoxFuture<'a, Result<(), AccountError>> {
        Box::pin(async { Err(AccountError::backend("database down")) })
    }
    fn del<'a>(&'a self, _: &'a str) -> ferry::accounts::BoxFuture<'a, Result<(), AccountError>> {
        Box::pin(async { Err(AccountError::backend("database down")) })
    }
    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        tokio::sync::watch::channel(0).1
    }
    fn dummy_hash(&self) -> String {
        hash("nobody knows")
    }
}

/// A store that fails refuses the login as busy, never as a wrong password, and earns the
/// client no penalty; the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_refuses_logins_as_busy_without_penalty() {
    let dir = tempfile::tempdir().unwrap();
    let down = Arc::new(Down::default());
    let (port, tls, _stop) =
        serve_with(dir.path(), Arc::clone(&down) as Arc<dyn AccountStore>).await;
    // More attempts than failed passwords may make before a source is refused (three cost
    // 15 s, the ban threshold): a store that is down is the server's trouble, so the client
    // hears "busy" each time and its address earns no penalty.
    for _ in 0..5 {
        match login_result(port, &tls, "alice", "alice-pw").await {
            Err(ferry::client::ClientError::Remote(w)) => {
                assert_eq!(w.code, ferry::protocol::ErrorCode::Busy, "{w:?}");
                assert!(w.message.contains("cannot check accounts"), "{w:?}");
            }
            other => panic!("expected busy, got {other:?}"),
        }
    }
    assert_eq!(down.asked.load(std::sync::atomic::Ordering::SeqCst), 5);
}

/// The users file, starting from none: `add` creates it.
mod toml_new_file {
    use super::*;

    fn fresh() -> impl Fn() -> Arc<dyn AccountStore> + Send + Sync {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        move || {
            let _owns = &dir;
            Arc::new(TomlAccounts::new(path.clone()))
        }
    }

    account_contract!(fresh());
}

/// The users file as an admin wrote it, with comments and no users yet, each store loaded
/// from it the way `ferry serve` loads it.
mod toml_written_by_hand {
    use super::*;

    fn fresh() -> impl Fn() -> Arc<dyn AccountStore> + Send + Sync {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(
            &path,
            "# Users of this host. Edit with `ferry user`.\n\n[users]\n# none yet\n",
        )
        .unwrap();
        move || {
            let _owns = &dir;
            Arc::new(TomlAccounts::load(&path).unwrap())
        }
    }

    account_contract!(fresh());
}

/// PostgreSQL (issue 15): each store another pool on one fresh database, as another node
/// would open it.
mod needs_postgres {
    use super::*;

    /// Runs `f` to its end from the synchronous `open` of the contract.
    fn wait<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
    }

    fn fresh() -> impl Fn() -> Arc<dyn AccountStore> + Send + Sync {
        let url = wait(crate::util::pg::fresh_db());
        move || {
            let cfg = ferry::pg::PgConfig::from_url(&url).unwrap();
            Arc::new(wait(ferry::pg::accounts::open(&cfg)).unwrap())
        }
    }

    account_contract!(
        #[ignore = "needs postgres; .ci/run installs it"]
        fresh()
    );
}
