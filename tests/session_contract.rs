//! The contract of `WebSessions` (`ferry::state::sessions`), the web app's sessions, written
//! once against the trait and run against each store: in memory, and in PostgreSQL with two
//! pools standing for two nodes (a session made through one is used and ended through the
//! other).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::state::sessions::{MAX_SESSIONS_PER_USER, SessionKey, WebSession, WebSessions};

/// Two nodes' handles onto one store (for memory: the same table twice).
type Nodes = (Arc<dyn WebSessions>, Arc<dyn WebSessions>);

macro_rules! session_contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let t: std::sync::Arc<dyn ferry::state::sessions::WebSessions> =
                        std::sync::Arc::new(ferry::state::sessions::MemorySessions::new());
                    super::$name((t.clone(), t)).await;
                }
            )*
        }
        mod needs_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs postgres; .ci/run installs it"]
                async fn $name() {
                    let url = crate::util::pg::fresh_db().await;
                    super::$name((super::pg_node(&url).await, super::pg_node(&url).await)).await;
                }
            )*
        }
    };
}

session_contract!(
    a_session_made_on_one_node_is_used_on_another,
    a_logout_anywhere_ends_it_everywhere,
    sessions_expire_idle_or_at_their_end,
    use_renews_the_idle_lease,
    a_user_has_a_bounded_number_of_sessions,
    a_deleted_user_or_changed_password_ends_every_session,
    a_session_cannot_be_opened_by_another_key,
);

/// One node's sessions on the database at `url` (a pool of its own).
async fn pg_node(url: &str) -> Arc<dyn WebSessions> {
    let cfg = ferry::pg::PgConfig::from_url(url).unwrap();
    ferry::pg::connect(&cfg).await.unwrap().web_sessions()
}

const LONG: Duration = Duration::from_secs(3600);

fn key(i: u64) -> SessionKey {
    let mut k = [0xa5u8; 32];
    k[..8].copy_from_slice(&i.to_le_bytes());
    k
}

fn session(user: &str, ends: Duration) -> WebSession {
    WebSession {
        user: user.into(),
        csrf: format!("{:032x}", rand::random::<u128>()),
        ends: Instant::now() + ends,
        password_stamp: rand::random(),
    }
}

async fn a_session_made_on_one_node_is_used_on_another((a, b): Nodes) {
    let s = session("alice", LONG);
    assert!(a.create(key(1), s.clone(), LONG).await);
    let got = b
        .touch(key(1), LONG)
        .await
        .expect("live through the other node");
    assert_eq!(got.user, "alice");
    assert_eq!(got.csrf, s.csrf, "the CSRF token is the one made at login");
    assert_eq!(got.password_stamp, s.password_stamp);
    // Its end is what was set (within the clocks' rounding), not renewed by use.
    let left = got.ends.saturating_duration_since(Instant::now());
    assert!(
        left <= LONG && left > LONG - Duration::from_secs(60),
        "{left:?}"
    );
    let again = a.touch(key(1), LONG).await.unwrap();
    assert_eq!(again.csrf, s.csrf, "the same token on every use");
}

async fn a_logout_anywhere_ends_it_everywhere((a, b): Nodes) {
    assert!(a.create(key(1), session("alice", LONG), LONG).await);
    assert!(a.create(key(2), session("alice", LONG), LONG).await);
    b.delete(key(1)).await;
    assert!(a.touch(key(1), LONG).await.is_none());
    assert!(b.touch(key(1), LONG).await.is_none());
    assert!(a.touch(key(2), LONG).await.is_some(), "only that one ends");
    b.delete(key(99)).await;
}

async fn sessions_expire_idle_or_at_their_end((a, b): Nodes) {
    assert!(a.create(key(3), session("a", LONG), Duration::ZERO).await);
    assert!(b.touch(key(3), LONG).await.is_none(), "idle too long");
    assert!(a.create(key(4), session("a", Duration::ZERO), LONG).await);
    assert!(b.touch(key(4), LONG).await.is_none(), "past its end");
    assert!(
        a.create(key(5), session("a", Duration::from_millis(300)), LONG)
            .await
    );
    assert!(b.touch(key(5), LONG).await.is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(a.touch(key(5), LONG).await.is_none(), "its end came");
}

async fn use_renews_the_idle_lease((a, b): Nodes) {
    let idle = Duration::from_millis(700);
    assert!(a.create(key(6), session("a", LONG), idle).await);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(b.touch(key(6), idle).await.is_some(), "renewed by each use");
    }
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(a.touch(key(6), idle).await.is_none(), "idle past the lease");
}

async fn a_user_has_a_bounded_number_of_sessions((a, b): Nodes) {
    for i in 0..=MAX_SESSIONS_PER_USER as u64 {
        let node = if i % 2 == 0 { &a } else { &b };
        assert!(node.create(key(100 + i), session("a", LONG), LONG).await);
        // Creation order is what "oldest" means; keep it apart from the clock's grain.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        a.touch(key(100), LONG).await.is_none(),
        "the oldest was ended"
    );
    for i in 1..=MAX_SESSIONS_PER_USER as u64 {
        assert!(b.touch(key(100 + i), LONG).await.is_some(), "{i}");
    }
}

async fn a_deleted_user_or_changed_password_ends_every_session((a, b): Nodes) {
    assert!(a.create(key(7), session("a", LONG), LONG).await);
    assert!(b.create(key(8), session("a", LONG), LONG).await);
    assert!(a.create(key(9), session("b", LONG), LONG).await);
    assert_eq!(b.delete_user("a").await, 2);
    assert!(a.touch(key(7), LONG).await.is_none());
    assert!(a.touch(key(8), LONG).await.is_none());
    assert!(b.touch(key(9), LONG).await.is_some(), "another user's stay");
    assert_eq!(a.delete_user("nobody").await, 0);
}

async fn a_session_cannot_be_opened_by_another_key((a, b): Nodes) {
    assert!(a.create(key(10), session("a", LONG), LONG).await);
    let mut near = key(10);
    near[31] ^= 1;
    assert!(b.touch(near, LONG).await.is_none());
    assert!(b.touch([0; 32], LONG).await.is_none());
}

/// What PostgreSQL keeps of a session: the key the front-end gave (the SHA-256 of the
/// cookie), never more; nothing in the table is the cookie. Expired rows are swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs postgres; .ci/run installs it"]
async fn needs_postgres_the_table_holds_no_cookie() {
    use sha2::Digest as _;
    let url = crate::util::pg::fresh_db().await;
    let node = pg_node(&url).await;
    let cookie = "the-cookie-value-a-browser-holds";
    let k: SessionKey = sha2::Sha256::digest(cookie.as_bytes()).into();
    assert!(node.create(k, session("alice", LONG), LONG).await);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT key_hash, row_to_json(s)::text FROM ferry_web_sessions s",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let stored: Vec<u8> = rows[0].get(0);
    assert_eq!(stored, k.to_vec());
    let text: String = rows[0].get(1);
    assert!(!text.contains(cookie), "{text}");

    // The backend's sweep deletes expired sessions (reads ignore them already).
    let backend = ferry::pg::connect(&ferry::pg::PgConfig::from_url(&url).unwrap())
        .await
        .unwrap();
    let sessions = backend.web_sessions();
    assert!(
        sessions
            .create(key(1), session("bob", LONG), Duration::ZERO)
            .await
    );
    assert!(
        sessions
            .create(key(2), session("bob", Duration::ZERO), LONG)
            .await
    );
    backend.sweep().await.unwrap();
    let left: i64 = client
        .query_one("SELECT count(*) FROM ferry_web_sessions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1, "only the live session stays");
}
