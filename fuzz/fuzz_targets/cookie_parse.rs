//! `cookie_value` from `frontend::http::parse` on arbitrary text. Byte 0 is the length of the
//! cookie name (`% 32`), then the name, then the `Cookie` header (lossy UTF-8 for both).
//!
//! Checked besides "no panic":
//! - a value found is 1 to 256 base64url characters and lies inside the header, right after
//!   `=` (no copy, no unescaping);
//! - a cookie added after the header changes nothing found (the first one wins);
//! - for a name that can be a cookie name, a cookie added before the header is the one found.
#![no_main]

use ferry::frontend::http::parse::cookie_value;
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "Zm9v-YmFy_0";

fuzz_target!(|data: &[u8]| {
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let (name, header) = rest.split_at((usize::from(len) % 32).min(rest.len()));
    let (name, header) = (
        String::from_utf8_lossy(name),
        String::from_utf8_lossy(header),
    );

    let found = cookie_value(&header, &name);
    if let Some(value) = found {
        assert!((1..=256).contains(&value.len()));
        assert!(
            value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let start = value.as_ptr() as usize - header.as_ptr() as usize;
        assert!(
            start + value.len() <= header.len()
                && header[..start].trim_end_matches([' ', '\t']).ends_with('=')
        );
        if header.len() < 4096 {
            let after = format!("{header}; {name}={TOKEN}");
            assert_eq!(cookie_value(&after, &name), Some(value));
        }
    }
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b'=');
    if plain && header.len() < 4096 {
        assert_eq!(
            cookie_value(&format!("{name}={TOKEN}; {header}"), &name),
            Some(TOKEN)
        );
    }
});
