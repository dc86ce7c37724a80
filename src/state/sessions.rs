//! The web app's sessions: who a browser's cookie stands for, until when, and the token its
//! page must echo on every change (CSRF). Keyed by the SHA-256 of the cookie, so a copy of
//! the table opens no session. Each session has an idle lease (renewed by use) and an
//! absolute end; both expire without anyone's help. One server keeps them in memory
//! ([`MemorySessions`]: sessions end at a restart); several share them (issue 15).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::domain::BoxFuture;

/// The key of a session: the SHA-256 of its cookie's value.
pub type SessionKey = [u8; 32];

/// One web session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSession {
    /// The account it acts for.
    pub user: String,
    /// The token every change must carry (`X-Ferry-Csrf`), 32 lowercase hex digits.
    pub csrf: String,
    /// When it ends whatever its use.
    pub ends: Instant,
    /// A digest of the account's password hash at login: a changed password ends the
    /// session at its next use.
    pub password_stamp: [u8; 32],
}

/// Most sessions one user may have; a new one past it ends that user's oldest.
pub const MAX_SESSIONS_PER_USER: usize = 32;

/// Most sessions in all; past it a new one is refused.
pub const MAX_SESSIONS: usize = 100_000;

/// Where sessions live. Dyn-compatible, async at the boundary.
pub trait WebSessions: Send + Sync + fmt::Debug {
    /// Starts a session for `key`, idle for at most `idle` between uses. `false` when the
    /// table is full.
    fn create(&self, key: SessionKey, session: WebSession, idle: Duration) -> BoxFuture<'_, bool>;

    /// The live session of `key`, its idle lease renewed to `idle` from now; `None` when there
    /// is none or it expired (idle too long, or past its end).
    fn touch(&self, key: SessionKey, idle: Duration) -> BoxFuture<'_, Option<WebSession>>;

    /// Ends the session of `key` (logout).
    fn delete(&self, key: SessionKey) -> BoxFuture<'_, ()>;

    /// Ends every session of `user` (deleted, or their password changed).
    fn delete_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, usize>;
}

struct Entry {
    session: WebSession,
    idle_until: Instant,
    created: Instant,
}

/// Sessions of one server, in memory.
#[derive(Default)]
pub struct MemorySessions {
    table: Mutex<HashMap<SessionKey, Entry>>,
}

impl fmt::Debug for MemorySessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySessions").finish_non_exhaustive()
    }
}

impl MemorySessions {
    pub fn new() -> MemorySessions {
        MemorySessions::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, Entry>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn live(e: &Entry, now: Instant) -> bool {
    now < e.idle_until && now < e.session.ends
}

impl WebSessions for MemorySessions {
    fn create(&self, key: SessionKey, session: WebSession, idle: Duration) -> BoxFuture<'_, bool> {
        let now = Instant::now();
        let mut t = self.lock();
        if t.len() >= MAX_SESSIONS {
            t.retain(|_, e| live(e, now));
        }
        if t.len() >= MAX_SESSIONS {
            return Box::pin(std::future::ready(false));
        }
        let mine: Vec<(SessionKey, Instant)> = t
            .iter()
            .filter(|(_, e)| e.session.user == session.user)
            .map(|(k, e)| (*k, e.created))
            .collect();
        if mine.len() >= MAX_SESSIONS_PER_USER
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, c)| *c)
        {
            t.remove(oldest);
        }
        t.insert(
            key,
            Entry {
                session,
                idle_until: now + idle,
                created: now,
            },
        );
        Box::pin(std::future::ready(true))
    }

    fn touch(&self, key: SessionKey, idle: Duration) -> BoxFuture<'_, Option<WebSession>> {
        let now = Instant::now();
        let mut t = self.lock();
        let found = match t.get_mut(&key) {
            Some(e) if live(e, now) => {
                e.idle_until = now + idle;
                Some(e.session.clone())
            }
            Some(_) => {
                t.remove(&key);
                None
            }
            None => None,
        };
        Box::pin(std::future::ready(found))
    }

    fn delete(&self, key: SessionKey) -> BoxFuture<'_, ()> {
        self.lock().remove(&key);
        Box::pin(std::future::ready(()))
    }

    fn delete_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, usize> {
        let mut t = self.lock();
        let before = t.len();
        t.retain(|_, e| e.session.user != user);
        Box::pin(std::future::ready(before - t.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user: &str, ends: Duration) -> WebSession {
        WebSession {
            user: user.into(),
            csrf: "00".repeat(16),
            ends: Instant::now() + ends,
            password_stamp: [0; 32],
        }
    }

    #[tokio::test]
    async fn sessions_expire_idle_or_at_their_end_and_end_on_logout() {
        let s = MemorySessions::new();
        let long = Duration::from_secs(3600);
        assert!(s.create([1; 32], session("a", long), long).await);
        assert_eq!(s.touch([1; 32], long).await.unwrap().user, "a");
        assert!(s.touch([2; 32], long).await.is_none());
        assert!(s.create([3; 32], session("a", long), Duration::ZERO).await);
        assert!(s.touch([3; 32], long).await.is_none(), "idle too long");
        assert!(s.create([4; 32], session("a", Duration::ZERO), long).await);
        assert!(s.touch([4; 32], long).await.is_none(), "past its end");
        s.delete([1; 32]).await;
        assert!(s.touch([1; 32], long).await.is_none());
    }

    #[tokio::test]
    async fn a_user_has_a_bounded_number_of_sessions_and_loses_them_all_when_deleted() {
        let s = MemorySessions::new();
        let long = Duration::from_secs(3600);
        for i in 0..=MAX_SESSIONS_PER_USER {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            assert!(s.create(k, session("a", long), long).await);
        }
        assert!(
            s.touch([0; 32], long).await.is_none(),
            "the oldest was ended"
        );
        assert!(s.create([9; 32], session("b", long), long).await);
        assert_eq!(s.delete_user("a").await, MAX_SESSIONS_PER_USER);
        assert!(s.touch([9; 32], long).await.is_some());
    }
}
