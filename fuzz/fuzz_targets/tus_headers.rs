//! `parse_upload_checksum`, `parse_upload_metadata` and `parse_u64_header` from
//! `frontend::http::parse` (tus 1.0 headers) on arbitrary text.
//!
//! Checked besides "no panic":
//! - an accepted checksum, written again as `sha256 <base64>`, parses to the same digest;
//! - accepted metadata has at most `MAX_METADATA_PAIRS` pairs with unique, non-empty keys of
//!   visible ASCII, and written again (`key base64` or a bare key, joined by `,`) parses to the
//!   same pairs;
//! - `parse_u64_header` agrees with a reference: the value without surrounding spaces and tabs
//!   is one or more ASCII digits whose number fits a `u64`.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ferry::frontend::http::parse::{
    MAX_METADATA_PAIRS, parse_u64_header, parse_upload_checksum, parse_upload_metadata,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    if let Ok(digest) = parse_upload_checksum(&text) {
        let again = format!("sha256 {}", STANDARD.encode(digest));
        assert_eq!(parse_upload_checksum(&again), Ok(digest));
    }

    if let Ok(pairs) = parse_upload_metadata(&text) {
        assert!(pairs.len() <= MAX_METADATA_PAIRS);
        for (i, (key, _)) in pairs.iter().enumerate() {
            assert!(!key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic() && b != b','));
            assert!(
                pairs[..i].iter().all(|(k, _)| k != key),
                "duplicate {key:?}"
            );
        }
        let again: Vec<String> = pairs
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k} {}", STANDARD.encode(v))
                }
            })
            .collect();
        assert_eq!(parse_upload_metadata(&again.join(",")).as_ref(), Ok(&pairs));
    }

    let digits = text.trim_matches([' ', '\t']);
    let reference = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let significant = digits.trim_start_matches('0');
        if significant.is_empty() {
            Some(0)
        } else {
            significant.parse::<u64>().ok()
        }
    } else {
        None
    };
    assert_eq!(parse_u64_header(&text), reference, "{text:?}");
});
