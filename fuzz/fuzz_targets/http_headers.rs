//! `parse_range`, `if_none_match`, `if_range` and `content_disposition_attachment` from
//! `frontend::http::parse` on arbitrary input: bytes 0..8 give the file size (byte 0 even: byte
//! 1 is the size, so small files come up often; odd: the little-endian `u64` shifted right by
//! one), the rest is the header text (lossy UTF-8).
//!
//! Checked besides "no panic":
//! - a partial range lies within the file, and `bytes=<start>-<end>` (and, when it runs to the
//!   end, `bytes=<start>-` and `bytes=-<len>`) gives the same range back;
//! - a strong match in `If-Range` is also a weak match in `If-None-Match`; `*` matches any
//!   valid tag; a tag built from the text matches itself exactly when its characters are
//!   `etagc`, strongly unless weak;
//! - the disposition is visible ASCII and spaces only, holds exactly two `"` (the fallback
//!   cannot break out), and its `filename*` decodes back to the name.
#![no_main]

use ferry::frontend::http::parse::{
    RangeAnswer, content_disposition_attachment, if_none_match, if_range, parse_range,
};
use libfuzzer_sys::fuzz_target;

fn percent_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: String = bytes.by_ref().take(2).map(char::from).collect();
            out.push(u8::from_str_radix(&hex, 16).expect("encoder wrote two hex digits"));
        } else {
            out.push(b);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (head, rest) = data.split_at(8);
    let size = if head[0] % 2 == 0 {
        u64::from(head[1])
    } else {
        u64::from_le_bytes(head.try_into().unwrap()) >> 1
    };
    let text = String::from_utf8_lossy(rest);

    if let RangeAnswer::Partial {
        start,
        end_inclusive,
    } = parse_range(&text, size)
    {
        assert!(
            start <= end_inclusive && end_inclusive < size,
            "{text:?} of {size}"
        );
        let same = RangeAnswer::Partial {
            start,
            end_inclusive,
        };
        assert_eq!(
            parse_range(&format!("bytes={start}-{end_inclusive}"), size),
            same
        );
        if end_inclusive == size - 1 {
            assert_eq!(parse_range(&format!("bytes={start}-"), size), same);
            assert_eq!(parse_range(&format!("bytes=-{}", size - start), size), same);
        }
    }

    // Within the header caps, so only the grammar decides.
    let short = text.len() < 512;
    let etag = format!("\"{text}\"");
    let etagc = text
        .bytes()
        .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b));
    assert_eq!(if_range(&etag, &etag), etagc);
    if short {
        assert_eq!(if_none_match(&etag, &etag), etagc);
        assert_eq!(if_none_match("*", &etag), etagc);
        assert_eq!(if_none_match(&format!("W/{etag}"), &etag), etagc);
    }
    assert!(!if_range(&format!("W/{etag}"), &etag));
    for ours in ["\"sha256-ab\"", "W/\"x\""] {
        if if_range(&text, ours) {
            assert!(if_none_match(&text, ours));
        }
    }

    let value = content_disposition_attachment(&text);
    assert!(
        value.bytes().all(|b| (0x20..=0x7e).contains(&b)),
        "{value:?}"
    );
    assert_eq!(value.matches('"').count(), 2, "{value:?}");
    let (_, encoded) = value
        .split_once("; filename*=UTF-8''")
        .expect("has filename*");
    assert_eq!(percent_decode(encoded), text.as_bytes());
});
