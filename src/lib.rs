//! ferry: a secure file drop. One binary is both the server and the client.
//!
//! # Layers (from the bottom; a layer uses only those below it)
//! 1. [`domain`]: what every layer shares and no wire owns: limits, `Entry`, the operation
//!    table (`Op`, `Scope`), `Footprint`/`Quota`, `BoxFuture` for the traits.
//! 2. Seams and their local implementations, none of which knows the wire:
//!    [`state`] (usage reservations, name locks, penalties, kept partials: traits with leases
//!    that expire; [`state::memory`] is one server's own tables), [`accounts`] (the
//!    `AccountStore` trait and `accounts::toml`, the users file as a store, reloaded before a
//!    login when it changed; a store keeps hashes and never verifies), [`users`] (the users
//!    file's format and edits, argon2id, `Password`), [`jail`] (a home as a capability
//!    directory; `RemotePath`, the one validated path type; temp files that commit
//!    atomically), [`stored_digest`] (a committed file's SHA-256 kept in its extended
//!    attribute with the size, mtime and inode it belongs to; a download of the unchanged
//!    file sends it unhashed), [`storage`] (the `Storage` trait: one home's files as an object store
//!    could keep them too, with paged listing that resumes at a token (the local store: a
//!    readdir position), uploads committed after their digest is checked, batched
//!    durability and whole small files in one call; `storage::local`
//!    implements it on `jail`, and handlers still call `jail` until the core moves onto the
//!    trait), [`transfer`] (the client's read-and-hash of an upload; receiving and prefix
//!    hashing for both ends), [`direct`] (large received files written around the page
//!    cache, in page-aligned buffers from [`mapping`]), [`platform`] (the Linux-only calls: `syncfs`, `sync_file_range`,
//!    `O_DIRECT`, `madvise`, `renameat2`, glibc's allocator tuning, and the Unix-only ones the
//!    client needs, behind one portable signature each with standard-library fallbacks
//!    compiled and unit-tested everywhere; only server-only code still calls the system
//!    directly), [`tls`] (PEM, TLS 1.3 configurations for the ALPN ids the caller names,
//!    fingerprints), [`certs`].
//! 3. The wire and its front-end: [`protocol`] (the only module that knows ferry/1's
//!    frames, JSON messages, caps and codes) and [`server`]: listener (limits, trusted PROXY
//!    balancers, penalties, the pre-login cap, shutdown; dispatch on the negotiated ALPN id)
//!    -> session (handshake, login, request loop) -> `server/cmd/`, where the dispatcher
//!    decodes each request, checks the operation table once, and calls one handler per
//!    command; `quota` keeps each home's usage equal to a fresh walk of it; `memory` is the
//!    server's own (never global) warm login memory, cap on direct-I/O uploads and idle heap
//!    trim.
//! 4. The client: [`client`]: `Connection` with typed methods (the library API); on top of it
//!    `ops` (globs, recursive transfers, the check of server-sent names), the shell,
//!    one-shots, trust on first use (`trust`), host aliases (`config`), progress bars. It
//!    uses no server module.
//! 5. [`cli`]: clap definitions and subcommand runners; `main.rs` stays thin.
//!
//! Beside them: [`sanitize`] (escaping of network-supplied names before they reach a terminal
//! or log) and [`logfmt`] (the text log's fields, every value quoted so input cannot forge a
//! field).
//!
//! `.ci/layering` checks these rules by grep on every CI run until crate boundaries let the
//! compiler check them (issue 13).

pub mod accounts;
pub mod certs;
pub mod cli;
pub mod client;
pub mod direct;
pub mod domain;
pub mod jail;
pub mod logfmt;
pub mod mapping;
pub mod platform;
pub mod protocol;
pub mod sanitize;
pub mod server;
pub mod service;
pub mod state;
pub mod storage;
pub mod stored_digest;
pub mod tls;
pub mod transfer;
pub mod users;
