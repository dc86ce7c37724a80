//! `parse_digest_field`, `parse_want_digest` and `format_digest_field` from
//! `frontend::http::parse` (RFC 9530 over an RFC 8941 dictionary) on arbitrary text.
//!
//! Checked besides "no panic":
//! - format → parse gives back the digest (the first 32 input bytes, when there are 32);
//! - an accepted digest formats and parses back to itself;
//! - a dictionary that parses goes on parsing when a `sha-256` member is added after it, and
//!   the added one wins (last key wins); added before it, the input's own `sha-256` wins when
//!   it has one; the only new refusal is the member cap;
//! - an accepted `Want-*` preference is 0 to 10.
#![no_main]

use ferry::frontend::http::parse::{
    DigestRefused, format_digest_field, parse_digest_field, parse_want_digest,
};
use libfuzzer_sys::fuzz_target;

const OTHER: [u8; 32] = [0xa5; 32];

fuzz_target!(|data: &[u8]| {
    if let Some(digest) = data.get(..32) {
        let digest: [u8; 32] = digest.try_into().unwrap();
        assert_eq!(
            parse_digest_field(&format_digest_field(&digest)),
            Ok(Some(digest))
        );
    }
    let text = String::from_utf8_lossy(data);
    let parsed = parse_digest_field(&text);
    if let Ok(Some(d)) = parsed {
        assert_eq!(parse_digest_field(&format_digest_field(&d)), Ok(Some(d)));
    }
    let dictionary = text.trim_matches([' ', '\t']);
    if matches!(parsed, Ok(_)) && !dictionary.is_empty() && text.len() < 3000 {
        let after = parse_digest_field(&format!("{dictionary}, {}", format_digest_field(&OTHER)));
        assert!(
            matches!(after, Ok(Some(OTHER)) | Err(DigestRefused::TooLong)),
            "{after:?}"
        );
        let before = parse_digest_field(&format!("{}, {dictionary}", format_digest_field(&OTHER)));
        let expect = Ok(Some(parsed.unwrap().unwrap_or(OTHER)));
        assert!(
            before == expect || before == Err(DigestRefused::TooLong),
            "{before:?}"
        );
    }
    if let Ok(Some(n)) = parse_want_digest(&text) {
        assert!(n <= 10);
    }
});
