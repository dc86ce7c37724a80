//! Escaping of names that came from the network before they reach a terminal or a log.
//!
//! A file name can carry terminal escape sequences or bidi overrides that rewrite what the
//! reader sees; printed raw, `evil\x1b[2J` clears a screen and `\u{202e}gpj.exe` reads as an
//! image. Everything that is not plainly printable is shown as a Rust-style escape.

use std::borrow::Cow;

/// Whether a character must be escaped before it is printed.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}'     // zero-width and direction marks
            | '\u{2028}'..='\u{202e}'   // line/paragraph separators, bidi embeddings/overrides
            | '\u{2060}'..='\u{2069}'   // word joiner, invisible operators, bidi isolates
            | '\u{feff}'                // zero-width no-break space
        )
}

/// Returns `s` unchanged if it is safe to print, otherwise a copy with each unsafe character
/// written as `\u{XXXX}` (and `\` itself doubled, so the output is unambiguous).
pub fn for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| needs_escape(c) || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Same escaping for log fields, capped in length so a hostile peer cannot flood the log.
pub fn for_log(s: &str) -> String {
    const MAX: usize = 256;
    let escaped = for_terminal(s);
    if escaped.len() <= MAX {
        return escaped.into_owned();
    }
    let mut cut = MAX;
    while !escaped.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &escaped[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_through_borrowed() {
        assert!(matches!(for_terminal("report 2026.pdf"), Cow::Borrowed(_)));
        assert!(matches!(for_terminal("ünïcødé 文件"), Cow::Borrowed(_)));
    }

    #[test]
    fn escapes_controls_and_bidi() {
        assert_eq!(for_terminal("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(for_terminal("x\u{202e}fdp.exe"), "x\\u{202e}fdp.exe");
        assert_eq!(for_terminal("l1\nl2"), "l1\\nl2");
        assert_eq!(for_terminal("a\\b"), "a\\\\b");
        assert_eq!(for_terminal("\u{9b}"), "\\u{9b}");
    }

    #[test]
    fn log_fields_are_capped() {
        let long = "é".repeat(1000);
        let out = for_log(&long);
        assert!(out.len() <= 260);
        assert!(out.ends_with("..."));
    }
}
