//! ferry: a secure file drop. One binary is both the server and the client.
//!
//! # Layers (from the bottom; a layer uses only those below it)
//! 1. [`domain`]: what every layer shares and no wire owns: limits, `Entry`, the operation
//!    table (`Op`, `Scope`), `Footprint`/`Quota`, `BoxFuture` for the traits.
//! 2. Seams and their local implementations, none of which knows the wire:
//!    [`state`] (usage reservations, name locks, penalties, kept partials: traits with leases
//!    that expire; [`state::memory`] is one server's own tables; `state::tokens`, API tokens
//!    and their check; `state::links`, drop links and their leased uses; `state::uploads`,
//!    resumable HTTP uploads), [`accounts`] (the
//!    `AccountStore` trait and `accounts::toml`, the users file as a store, reloaded before a
//!    login when it changed; a store keeps hashes and never verifies; `accounts::tokens`,
//!    `tokens.toml` beside it; `accounts::links`, `links.toml`), [`users`] (the users
//!    file's format and edits, argon2id, `Password`), [`jail`] (a home as a capability
//!    directory; `RemotePath`, the one validated path type; temp files that commit
//!    atomically), [`stored_digest`] (a committed file's SHA-256 kept in its extended
//!    attribute with the size, mtime and inode it belongs to; a download of the unchanged
//!    file sends it unhashed), [`storage`] (the `Storage` trait: one home's files as an object store
//!    could keep them too, with paged listing that resumes at a token (the local store: a
//!    readdir position), uploads committed after their digest is checked, batched
//!    durability and whole small files in one call, and a change gate that keeps the quota's
//!    measurements true; `storage::local` implements it on `jail`; `storage::s3` in an
//!    S3-compatible bucket, one key prefix per home, with name locks, digests and kept
//!    partials in shared state), [`transfer`] (the one
//!    read-and-hash loop, receiving and prefix hashing, for both ends), [`direct`] (large received files written around the page
//!    cache, in page-aligned buffers from [`mapping`]), [`platform`] (the Linux-only calls: `syncfs`, `sync_file_range`,
//!    `O_DIRECT`, `madvise`, `renameat2`, glibc's allocator tuning, and the Unix-only ones the
//!    client needs, behind one portable signature each with standard-library fallbacks
//!    compiled and unit-tested everywhere; only server-only code still calls the system
//!    directly), [`tls`] (PEM, TLS 1.3 configurations for the ALPN ids the caller names,
//!    fingerprints), [`certs`], [`receipt`] (the Ed25519 receipt key beside the certificates,
//!    signed upload receipts as JWS, and their offline verification), [`pg`] (the `postgres`
//!    backend: accounts and shared state in one PostgreSQL database that several nodes
//!    share; `PgConfig`, a pool with bounded timeouts, embedded migrations under an advisory
//!    lock, and the `AccountStore` and state traits on its tables).
//! 3. The core: [`service`]: `Home`, a logged-in view of one home (its store, its usage
//!    account, its limits and its scope), with every operation a front-end can ask for: stat,
//!    paged list, mkdir, remove, rmdir, rename, copy, usage, sha256, downloads and verified
//!    uploads (kept partials, resumes from a verified prefix, group commits). It checks the
//!    scope against the operation table, keeps the quota (`service::quota`: each home's
//!    usage in the `state::UsageLedger`, equal to a fresh walk of it), and answers in one
//!    error enum, `CoreError`. It knows no frame, message or socket.
//! 4. The wire and its front-end: [`protocol`] (the only module that knows ferry/1's
//!    frames, JSON messages, caps and codes) and [`server`]: listener (limits, trusted PROXY
//!    balancers, penalties, the pre-login cap, shutdown; dispatch on the negotiated ALPN id)
//!    -> login (argon2 on a bounded pool, penalties, the user's session slot, the home opened
//!    and counted, handed over as a `service::Home`) -> session (handshake, request loop,
//!    the group commit's replies) -> `server/cmd/`, thin handlers: decode, call the core,
//!    encode; `CoreError` becomes ferry/1's wire in one function (`cmd::core_message`).
//!    `memory` is the server's own (never global) warm login memory, cap on direct-I/O
//!    uploads and idle heap trim.
//!    [`frontend`] holds the other front-ends: [`frontend::http`] serves `h2` and `http/1.1`
//!    on the same port (the listener's dispatch hands it the connection after TLS), with
//!    HTTP's own limits and penalties, over the same core.
//! 5. The client: [`client`]: `Connection` with typed methods (the library API); on top of it
//!    `ops` (globs, recursive transfers, the check of server-sent names), the shell,
//!    one-shots, trust on first use (`trust`), host aliases (`config`), progress bars. It
//!    uses no server module.
//! 6. [`cli`]: clap definitions and subcommand runners; `main.rs` stays thin.
//!
//! Beside them: [`sanitize`] (escaping of network-supplied names before they reach a terminal
//! or log), [`logfmt`] (the text log's fields, every value quoted so input cannot forge a
//! field) and [`metrics`] (a server's own counts for operators, in Prometheus' terms, with
//! labels from fixed sets only, and a timing wrapper for any store; `server::admin` serves
//! them on the operators' port).
//!
//! `.ci/layering` checks these rules by grep on every CI run until crate boundaries let the
//! compiler check them (issue 13).

pub mod accounts;
pub mod certs;
pub mod cli;
pub mod client;
pub mod direct;
pub mod domain;
pub mod frontend;
pub mod jail;
pub mod logfmt;
pub mod mapping;
pub mod metrics;
pub mod pg;
pub mod platform;
pub mod protocol;
pub mod receipt;
pub mod sanitize;
pub mod server;
pub mod service;
pub mod state;
pub mod storage;
pub mod stored_digest;
pub mod tls;
pub mod transfer;
pub mod users;
