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
//! - [`stored_digest`]: a committed file's SHA-256 kept in its extended attribute with the
//!   size, mtime and inode it belongs to; a download of the unchanged file sends it unhashed.
//! - [`transfer`]: streaming with SHA-256, shared by both ends.
//! - [`server`]: listener (limits, trusted PROXY balancers, penalties, the pre-login cap,
//!   shutdown) -> session (handshake, login, request loop) -> `server/cmd/`, one file per
//!   command; `quota` keeps each home's usage equal to a fresh walk of it; `users_file`
//!   reloads a changed users file before a login.
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
pub mod protocol;
pub mod sanitize;
pub mod server;
pub mod stored_digest;
pub mod tls;
pub mod transfer;
pub mod users;
