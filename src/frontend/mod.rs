//! Front-ends other than ferry/1: each decodes its own wire, calls the core
//! ([`crate::service::Home`]) and encodes the answer. [`http`] serves browsers and curl on the
//! same port as ferry/1, chosen by ALPN (issue 14; docs/design/web.md).

pub mod http;
