//! ferry: a secure file drop. One binary is both the server and the client.
//!
//! # Layout
//! - [`protocol`]: the only module that knows the wire: frames, JSON messages, caps, codes.
//! - `main.rs`: the command line.
pub mod protocol;
