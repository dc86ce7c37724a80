//! The server's memory machinery: what it keeps warm for the next login, how many large
//! uploads may hold direct-I/O buffers at once, and when it gives free memory back. Owned by
//! the [`Server`](super::Server), never global: two servers in one process (as in the tests)
//! share none of it, and a front-end or storage backend is handed only the part it needs.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::direct::DirectLimit;
use crate::users::login_memory::Warm;

#[derive(Default)]
pub(crate) struct Memory {
    /// argon2's working memory kept warm between logins (see [`crate::users::login_memory`]);
    /// shared with the password checks on the blocking pool.
    pub login: Arc<Warm>,
    /// Caps the direct writers of all sessions' uploads (see [`crate::direct`]); shared with
    /// the writer threads.
    pub direct: Arc<DirectLimit>,
    /// A heap trim is scheduled (see `Server::trim_when_idle`).
    pub trim_pending: AtomicBool,
    /// A release of the warm login memory is scheduled (see `Server::forget_login_memory`).
    pub warm_pending: AtomicBool,
}
