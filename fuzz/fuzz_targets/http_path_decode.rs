//! `decode_path`, `encode_segment`, `split_query` and `parse_query` from
//! `frontend::http::parse` on arbitrary text (bytes that are not UTF-8 are converted lossily).
//!
//! Checked besides "no panic":
//! - an accepted path has at most `MAX_SEGMENTS` segments, each non-empty UTF-8 of at most
//!   `MAX_NAME_LEN` bytes, never `.` or `..`, with no `/`, `\` or control character; it has a
//!   trailing slash exactly when the raw path ends in `/` and is not `/`;
//! - encoding the accepted segments again gives a path that decodes to the same;
//! - the whole input taken as a name: `/` + `encode_segment(name)` decodes to exactly that name
//!   when the name is valid by the rules above (written out here again), and is refused otherwise
//!   (the empty name gives `/`, the root);
//! - an accepted query has at most `MAX_QUERY_PAIRS` pairs with no control character, and its
//!   pairs encoded again parse to the same pairs.
#![no_main]

use ferry::domain::MAX_NAME_LEN;
use ferry::frontend::http::parse::{
    MAX_QUERY_PAIRS, MAX_SEGMENTS, decode_path, encode_segment, parse_query, split_query,
};
use libfuzzer_sys::fuzz_target;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (path, query) = split_query(&text);
    assert!(!path.contains('?'));

    if let Ok(decoded) = decode_path(path) {
        assert!(decoded.segments.len() <= MAX_SEGMENTS);
        assert!(
            decoded.segments.iter().all(|s| valid_name(s)),
            "{decoded:?}"
        );
        assert_eq!(
            decoded.trailing_slash,
            path.len() > 1 && path.ends_with('/')
        );
        let mut again: String = decoded
            .segments
            .iter()
            .map(|s| format!("/{}", encode_segment(s)))
            .collect();
        if decoded.trailing_slash || again.is_empty() {
            again.push('/');
        }
        assert_eq!(decode_path(&again).as_ref(), Ok(&decoded), "{again:?}");
    }

    // `/` + the encoded name; the empty name makes `/`, the root.
    let encoded = format!("/{}", encode_segment(&text));
    match decode_path(&encoded) {
        Ok(p) if text.is_empty() => assert!(p.segments.is_empty() && !p.trailing_slash),
        Ok(p) => {
            assert!(valid_name(&text) && p.segments == [text.to_string()] && !p.trailing_slash)
        }
        Err(e) => assert!(!valid_name(&text), "{text:?} refused: {e}"),
    }

    if let Some(query) = query
        && let Ok(pairs) = parse_query(query)
    {
        assert!(pairs.len() <= MAX_QUERY_PAIRS);
        assert!(
            pairs
                .iter()
                .all(|(k, v)| !k.chars().chain(v.chars()).any(char::is_control))
        );
        let again: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode_segment(k), encode_segment(v)))
            .collect();
        assert_eq!(parse_query(&again.join("&")).as_ref(), Ok(&pairs));
    }
});
