//! The contract of an `ApiTokens` store (`ferry::state::tokens`), written once and run against
//! each store: in memory (`MemoryTokens`) and in `tokens.toml` (`TomlTokens`). A new store
//! (PostgreSQL, issue 15) proves itself by passing it unchanged: give [`token_contract!`] an
//! expression that makes a fresh, empty backing and returns a function opening one more store
//! on it (as another process or node would).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry::accounts::tokens::TomlTokens;
use ferry::domain::Scope;
use ferry::state::tokens::{
    ApiToken, ApiTokens, MAX_TOKENS_PER_USER, MemoryTokens, NewToken, TokenError, TokenId,
    TokenScope, check, issue,
};

/// Opens one more store on a test's backing.
pub type Open = dyn Fn() -> Arc<dyn ApiTokens> + Send + Sync;

macro_rules! token_contract {
    // Each case with the attribute given first (such as `#[ignore = "needs postgres; ..."]`).
    (#[$attr:meta] $fresh:expr) => {
        $crate::token_contract::token_contract!(@attr_cases [$attr] $fresh;
            add_get_list_revoke,
            add_of_a_taken_id_fails_and_changes_nothing,
            a_reissued_id_never_revives_the_old_secret,
            a_second_store_sees_the_writes_of_the_first,
            revoke_user_removes_all_of_theirs_and_only_theirs,
            a_user_has_at_most_the_cap_of_live_tokens,
            expired_tokens_are_refused_then_dropped_by_the_next_add,
            invalid_records_are_refused,
            concurrent_adds_all_land,
            check_grants_the_scope_and_refuses_the_wrong_secret
        );
    };
    ($fresh:expr) => {
        $crate::token_contract::token_contract!(@cases $fresh;
            add_get_list_revoke,
            add_of_a_taken_id_fails_and_changes_nothing,
            a_reissued_id_never_revives_the_old_secret,
            a_second_store_sees_the_writes_of_the_first,
            revoke_user_removes_all_of_theirs_and_only_theirs,
            a_user_has_at_most_the_cap_of_live_tokens,
            expired_tokens_are_refused_then_dropped_by_the_next_add,
            invalid_records_are_refused,
            concurrent_adds_all_land,
            check_grants_the_scope_and_refuses_the_wrong_secret
        );
    };
    (@attr_cases [$attr:meta] $fresh:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[$attr]
            async fn $case() {
                let open = $fresh;
                $crate::token_contract::$case(&open).await;
            }
        )*
    };
    (@cases $fresh:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let open = $fresh;
                $crate::token_contract::$case(&open).await;
            }
        )*
    };
}
pub(crate) use token_contract;

/// Now, in whole seconds, as stores keep times.
fn now() -> SystemTime {
    ferry::state::tokens::whole_seconds(SystemTime::now())
}

fn new_token(user: &str, name: &str, ttl: Option<Duration>) -> (NewToken, ApiToken) {
    issue(user, name, TokenScope::Full, ttl, now(), |_| false).unwrap()
}

async fn add(store: &dyn ApiTokens, user: &str, name: &str) -> (NewToken, ApiToken) {
    let (t, rec) = new_token(user, name, Some(Duration::from_secs(3600)));
    store.add(&rec).await.unwrap();
    (t, rec)
}

pub async fn add_get_list_revoke(open: &Open) {
    let store = open();
    assert_eq!(store.list(None).await.unwrap(), vec![]);
    let (_, b) = add(&*store, "bob", "laptop").await;
    let (_, a1) = add(&*store, "alice", "ci").await;
    let (_, a2) = issue("alice", "backup", TokenScope::ReadOnly, None, now(), |_| {
        false
    })
    .unwrap();
    store.add(&a2).await.unwrap();

    assert_eq!(store.get(a1.id).await.unwrap(), Some(a1.clone()));
    assert_eq!(
        store.get(a2.id).await.unwrap(),
        Some(a2.clone()),
        "no expiry, read-only"
    );
    let all = store.list(None).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(
        all[0].user == "alice" && all[1].user == "alice" && all[2] == b,
        "{all:?}"
    );
    let alices = store.list(Some("alice")).await.unwrap();
    assert_eq!(alices.len(), 2);
    assert!(alices.contains(&a1) && alices.contains(&a2));
    assert_eq!(store.list(Some("carol")).await.unwrap(), vec![]);

    store.revoke(a1.id).await.unwrap();
    assert_eq!(store.get(a1.id).await.unwrap(), None);
    assert_eq!(
        store.revoke(a1.id).await,
        Err(TokenError::NotFound(a1.id)),
        "revoking twice"
    );
    assert_eq!(store.list(Some("alice")).await.unwrap(), vec![a2]);
}

pub async fn add_of_a_taken_id_fails_and_changes_nothing(open: &Open) {
    let store = open();
    let (_, first) = add(&*store, "alice", "ci").await;
    let (_, mut second) = new_token("bob", "other", None);
    second.id = first.id;
    assert_eq!(
        store.add(&second).await,
        Err(TokenError::AlreadyExists(first.id))
    );
    assert_eq!(store.get(first.id).await.unwrap(), Some(first));
    assert_eq!(store.list(Some("bob")).await.unwrap(), vec![]);
}

pub async fn a_reissued_id_never_revives_the_old_secret(open: &Open) {
    let store = open();
    let (old, rec) = add(&*store, "alice", "ci").await;
    store.revoke(rec.id).await.unwrap();
    // A new token that happens to draw the same id (or is given it on purpose).
    let (new, mut again) = new_token("alice", "ci", Some(Duration::from_secs(3600)));
    let new_text = new
        .expose()
        .replacen(&again.id.to_string(), &rec.id.to_string(), 1);
    again.id = rec.id;
    store.add(&again).await.unwrap();
    assert!(
        check(&*store, old.expose(), now()).await.is_err(),
        "the revoked secret"
    );
    let grant = check(&*store, &new_text, now()).await.unwrap();
    assert_eq!(grant.id, rec.id);
}

pub async fn a_second_store_sees_the_writes_of_the_first(open: &Open) {
    let (one, two) = (open(), open());
    // The second store has looked (and may cache) before the first writes.
    assert_eq!(two.list(None).await.unwrap(), vec![]);
    let (t, rec) = add(&*one, "alice", "ci").await;
    assert_eq!(two.get(rec.id).await.unwrap(), Some(rec.clone()));
    assert!(check(&*two, t.expose(), now()).await.is_ok());
    two.revoke(rec.id).await.unwrap();
    assert!(
        check(&*one, t.expose(), now()).await.is_err(),
        "revoked elsewhere"
    );
}

pub async fn revoke_user_removes_all_of_theirs_and_only_theirs(open: &Open) {
    let store = open();
    let (a1, _) = add(&*store, "alice", "one").await;
    let (a2, _) = add(&*store, "alice", "two").await;
    let (b, _) = add(&*store, "alice2", "other").await;
    assert_eq!(store.revoke_user("alice").await.unwrap(), 2);
    assert_eq!(
        store.revoke_user("alice").await.unwrap(),
        0,
        "none left is no error"
    );
    for t in [&a1, &a2] {
        assert!(check(&*store, t.expose(), now()).await.is_err());
    }
    assert!(check(&*store, b.expose(), now()).await.is_ok());
}

pub async fn a_user_has_at_most_the_cap_of_live_tokens(open: &Open) {
    let store = open();
    for i in 0..MAX_TOKENS_PER_USER {
        add(&*store, "alice", &format!("t{i}")).await;
    }
    let (_, over) = new_token("alice", "one too many", None);
    assert!(
        matches!(store.add(&over).await, Err(TokenError::Full { .. })),
        "over the cap"
    );
    assert_eq!(
        store.list(Some("alice")).await.unwrap().len(),
        MAX_TOKENS_PER_USER
    );
    // Another user is not held back by alice's.
    add(&*store, "bob", "ci").await;
    // Deleting one makes room again.
    let first = store.list(Some("alice")).await.unwrap()[0].id;
    store.revoke(first).await.unwrap();
    store.add(&over).await.unwrap();
}

pub async fn expired_tokens_are_refused_then_dropped_by_the_next_add(open: &Open) {
    let store = open();
    let made = now() - Duration::from_secs(7200);
    let (old, rec) = issue(
        "alice",
        "old",
        TokenScope::Full,
        Some(Duration::from_secs(3600)),
        made,
        |_| false,
    )
    .unwrap();
    store.add(&rec).await.unwrap();
    let refused = check(&*store, old.expose(), now()).await.unwrap_err();
    assert_eq!(refused.reason(), "expired token");
    // Still valid at a time before its expiry: the expiry is what refuses it.
    assert!(
        check(&*store, old.expose(), made + Duration::from_secs(10))
            .await
            .is_ok()
    );
    add(&*store, "bob", "new").await;
    assert_eq!(store.get(rec.id).await.unwrap(), None, "dropped by the add");
}

pub async fn invalid_records_are_refused(open: &Open) {
    let store = open();
    let (_, good) = new_token("alice", "ci", None);
    let mut bad = Vec::new();
    for name in ["", "a\nb", "x\u{1b}[2J", "\u{202e}gnp.exe", &"n".repeat(65)] {
        bad.push(ApiToken {
            name: name.into(),
            ..good.clone()
        });
    }
    for user in ["", "al ice", "a\u{7}", &"u".repeat(65)] {
        bad.push(ApiToken {
            user: user.into(),
            ..good.clone()
        });
    }
    bad.push(ApiToken {
        expires: Some(good.created),
        ..good.clone()
    });
    for t in &bad {
        assert!(
            matches!(store.add(t).await, Err(TokenError::Invalid { .. })),
            "{t:?}"
        );
    }
    assert_eq!(store.list(None).await.unwrap(), vec![]);
}

pub async fn concurrent_adds_all_land(open: &Open) {
    const N: usize = 16;
    let mut tasks = Vec::new();
    for i in 0..N {
        let store = open();
        tasks.push(tokio::spawn(async move {
            let (_, rec) = new_token(&format!("user{}", i % 3), &format!("t{i}"), None);
            store.add(&rec).await.map(|()| rec.id)
        }));
    }
    let mut ids: Vec<TokenId> = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap());
    }
    let mut listed: Vec<TokenId> = open()
        .list(None)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    ids.sort();
    listed.sort();
    assert_eq!(listed, ids, "every add landed");
}

pub async fn check_grants_the_scope_and_refuses_the_wrong_secret(open: &Open) {
    let store = open();
    let (t, rec) = issue(
        "alice",
        "ro",
        TokenScope::ReadOnly,
        Some(Duration::from_secs(60)),
        now(),
        |_| false,
    )
    .unwrap();
    store.add(&rec).await.unwrap();
    let grant = check(&*store, t.expose(), now()).await.unwrap();
    assert_eq!(
        (grant.id, grant.user.as_str(), grant.scope),
        (rec.id, "alice", Scope::ReadOnly)
    );
    // Another token's secret under this id, and this secret under an unknown id.
    let (other, _) = new_token("alice", "x", None);
    let swapped = format!("fy_{}_{}", rec.id, &other.expose()[12..]);
    assert_eq!(
        check(&*store, &swapped, now()).await.unwrap_err().reason(),
        "wrong secret"
    );
    let unknown = TokenId(rec.id.0.wrapping_add(1));
    let moved = format!("fy_{unknown}_{}", &t.expose()[12..]);
    assert!(check(&*store, &moved, now()).await.is_err());
    // Stores keep whole seconds: nothing about the token depends on a fraction.
    assert_eq!(
        rec.created
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos(),
        0
    );
}

/// One server's tokens in memory: every open is the same tables.
mod memory {
    use super::*;

    fn fresh() -> impl Fn() -> Arc<dyn ApiTokens> + Send + Sync {
        let store: Arc<dyn ApiTokens> = Arc::new(MemoryTokens::new());
        move || store.clone()
    }

    token_contract!(fresh());
}

/// `tokens.toml`, starting from no file; each open is another store on the same file, as
/// `ferry token` and `ferry serve` are.
mod toml_file {
    use super::*;

    fn fresh() -> impl Fn() -> Arc<dyn ApiTokens> + Send + Sync {
        let dir = tempfile::tempdir().unwrap();
        let users = dir.path().join("users.toml");
        move || {
            let _owns = &dir;
            Arc::new(TomlTokens::beside_users(&users))
        }
    }

    token_contract!(fresh());
}

/// PostgreSQL (issue 15): each case on a fresh database; each store another pool on it, as
/// another node would open it.
mod needs_postgres {
    use super::*;

    /// Runs `f` to its end from the synchronous `open` of the contract.
    fn wait<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
    }

    fn fresh() -> impl Fn() -> Arc<dyn ApiTokens> + Send + Sync {
        let url = wait(crate::util::pg::fresh_db());
        move || {
            let cfg = ferry::pg::PgConfig::from_url(&url).unwrap();
            Arc::new(wait(ferry::pg::tokens::open(&cfg)).unwrap())
        }
    }

    token_contract!(
        #[ignore = "needs postgres; .ci/run installs it"]
        fresh()
    );
}
