//! ferry: a secure file drop. One binary is both the server and the client.
//!
//! # Layout
//! - [`domain`]: limits and digest text every layer shares; no layer below the front-ends
//!   imports the wire (`protocol`) for them.
//! - [`protocol`]: the only module that knows the wire: frames, JSON messages, caps, codes.
//! - [`tls`]: PEM loading, TLS 1.3 server and client configurations, fingerprints.
//! - [`certs`]: the development CA and server certificate of `ferry certs`.
//! - [`users`]: the users file, argon2id hashing and verification, the `Password` type.
//! - [`jail`]: a user's home as a capability directory; `RemotePath`, the one validated path
//!   type; temp files that commit atomically.
//! - [`transfer`]: streaming with SHA-256, shared by both ends; [`direct`] writes large
//!   received files around the page cache, in page-aligned buffers from [`mapping`].
//! - [`platform`]: the Linux-only calls (`syncfs`, `sync_file_range`, `O_DIRECT`, `madvise`,
//!   `renameat2`, glibc's allocator tuning) and the Unix-only ones the client needs (modes,
//!   `O_NOFOLLOW`, terminal settings, SIGHUP) behind one portable signature each, with
//!   standard-library fallbacks for every other system, unit-tested on Linux too. Code outside
//!   it needs no `cfg`; only server-only code (`jail`, the users file, `serve`) still calls the
//!   system directly.
//! - [`server`]: listener (limits, trusted PROXY balancers, penalties, the pre-login cap,
//!   shutdown) -> session (handshake, login, request loop) -> `server/cmd/`, one file per
//!   command; `quota` keeps each home's usage equal to a fresh walk of it; `users_file`
//!   reloads a changed users file before a login; `memory` is the server's own (never global)
//!   warm login memory, cap on direct-I/O uploads and idle heap trim.
//! - [`client`]: `Connection` with typed methods (the library API); on top of it `ops` (globs,
//!   recursive transfers, the check of server-sent names), the shell, one-shots, trust on
//!   first use (`trust`), host aliases (`config`), progress bars.
//! - [`sanitize`]: escaping of network-supplied names before they reach a terminal or log.
//! - [`logfmt`]: the text log's fields, every value quoted so input cannot forge a field.
//! - [`cli`]: clap definitions and subcommand runners; `main.rs` stays thin.

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
pub mod tls;
pub mod transfer;
pub mod users;
