//! The HTTPS front-end: `h2` and `http/1.1` on the ferry port (docs/design/web.md).
//!
//! - [`parse`]: the header and path grammar that is ours (percent-decoded path segments,
//!   digests, ranges, cookies, tus headers): pure functions, fuzzed.

pub mod parse;
