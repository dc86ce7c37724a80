//! The fields of the server's text log: `key=value` pairs in which every value that is not a
//! number or a boolean is double-quoted, with `"` and `\` escaped and control characters
//! written as escapes.
//!
//! tracing's default text format writes a `%`-recorded value as it is, so a user name or a
//! path holding `" result="ok` could add a field of its own to an audit line (a log reader
//! would see two `result` fields, or a forged one). With every value quoted and escaped, a
//! line splits back into exactly the fields the server wrote; [`parse_fields`] is that split.
//! The JSON format (`--log-format json`) was never affected: serde escapes every string.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

/// The field formatter of the text log (see the module documentation). The event's message
/// stays unquoted, for reading: messages are constant strings in this code base, never built
/// from input; control characters in it are escaped all the same.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuotedFields;

impl<'a> MakeVisitor<Writer<'a>> for QuotedFields {
    type Visitor = QuotedVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        QuotedVisitor {
            writer: target,
            empty: true,
            result: Ok(()),
        }
    }
}

/// Writes the fields of one event or span; made by [`QuotedFields`].
pub struct QuotedVisitor<'a> {
    writer: Writer<'a>,
    empty: bool,
    result: fmt::Result,
}

impl QuotedVisitor<'_> {
    /// Writes the separator and `name=`, or nothing for the message.
    fn key(&mut self, field: &Field) -> fmt::Result {
        if !self.empty {
            self.writer.write_char(' ')?;
        }
        self.empty = false;
        let name = field.name();
        if name == "message" {
            return Ok(());
        }
        write!(self.writer, "{}=", name.strip_prefix("r#").unwrap_or(name))
    }

    fn quoted(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        self.result = self.key(field).and_then(|()| {
            if field.name() == "message" {
                write_escaped(&mut self.writer, value, false)
            } else {
                self.writer.write_char('"')?;
                write_escaped(&mut self.writer, value, true)?;
                self.writer.write_char('"')
            }
        });
    }

    fn bare(&mut self, field: &Field, value: impl fmt::Display) {
        if self.result.is_err() {
            return;
        }
        self.result = self
            .key(field)
            .and_then(|()| write!(self.writer, "{value}"));
    }
}

impl Visit for QuotedVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.quoted(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%x` arrives here as a Display wrapper, `?x` as Debug: either way, text to quote.
        let text = format!("{value:?}");
        self.quoted(field, &text);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let text = value.to_string();
        self.quoted(field, &text);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.bare(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.bare(field, value);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.bare(field, value);
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.bare(field, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.bare(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.bare(field, value);
        } else {
            // `NaN` and `inf` are not numbers to a log parser.
            self.quoted(field, &value.to_string());
        }
    }
}

impl VisitOutput<fmt::Result> for QuotedVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for QuotedVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Writes `s` with control characters escaped (`\n`, `\r`, `\t`, else `\u{..}`), and, inside
/// quotes, `"` and `\` escaped too.
fn write_escaped(w: &mut impl fmt::Write, s: &str, in_quotes: bool) -> fmt::Result {
    for c in s.chars() {
        match c {
            '"' if in_quotes => w.write_str("\\\"")?,
            '\\' if in_quotes => w.write_str("\\\\")?,
            '\n' => w.write_str("\\n")?,
            '\r' => w.write_str("\\r")?,
            '\t' => w.write_str("\\t")?,
            c if c.is_control() => write!(w, "\\u{{{:x}}}", c as u32)?,
            c => w.write_char(c)?,
        }
    }
    Ok(())
}

/// Splits the fields of a text log line back into `(key, value)` pairs, values unescaped, in
/// order. Whatever comes before the first `key=` (time, level, message) is skipped. `None` if
/// the fields are not well formed: an unterminated quote, an unknown escape, or text between
/// fields that is not a field.
///
/// For log readers and tests; the server itself never parses its log.
pub fn parse_fields(line: &str) -> Option<Vec<(String, String)>> {
    let is_key = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    };
    // The first token of the form `key=`, at a word boundary.
    let mut start = None;
    let mut offset = 0;
    for word in line.split(' ') {
        if let Some((k, _)) = word.split_once('=')
            && is_key(k)
        {
            start = Some(offset);
            break;
        }
        offset += word.len() + 1;
    }
    let mut rest = &line[start?..];
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        if !is_key(key) {
            return None;
        }
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i + 1,
                    '\\' => match chars.next()?.1 {
                        '"' => value.push('"'),
                        '\\' => value.push('\\'),
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        'u' => {
                            let body = &quoted[chars.next()?.0..];
                            let body = body.strip_prefix('{')?;
                            let close = body.find('}')?;
                            let code = u32::from_str_radix(&body[..close], 16).ok()?;
                            value.push(char::from_u32(code)?);
                            for _ in 0..close + 1 {
                                chars.next()?;
                            }
                        }
                        _ => return None,
                    },
                    c => value.push(c),
                }
            };
            (value, &quoted[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let bare = &after[..end];
            if bare.contains('"') {
                return None;
            }
            (bare.to_owned(), &after[end..])
        };
        fields.push((key.to_owned(), value));
        rest = match after.strip_prefix(' ') {
            Some(r) => r,
            None if after.is_empty() => after,
            None => return None,
        };
    }
    Some(fields)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer that collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log_with(f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .with_target(false)
            .fmt_fields(QuotedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let out = buf.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_value_is_quoted_and_a_forged_field_stays_inside_its_value() {
        let user = "mallory\" result=\"ok";
        let path = "a\\b \"c\"\nresult=ok";
        let line = log_with(|| {
            tracing::info!(
                target: "ferry::audit",
                event = "request",
                user = %user,
                path = %path,
                bytes = 12u64,
                ok = false,
                result = "auth_failed",
                "audit"
            );
        });
        assert_eq!(line.lines().count(), 1, "{line}");
        let fields = parse_fields(line.trim_end()).unwrap();
        let get = |k: &str| {
            fields
                .iter()
                .filter(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("result"), ["auth_failed"], "{line}");
        assert_eq!(get("user"), [user]);
        assert_eq!(get("path"), [path]);
        assert_eq!(get("bytes"), ["12"]);
        assert_eq!(get("ok"), ["false"]);
        assert!(line.contains(" audit event=\"request\""), "{line}");
    }

    #[test]
    fn parse_fields_refuses_what_the_formatter_never_writes() {
        assert_eq!(
            parse_fields("INFO hi a=1 b=\"x y\""),
            Some(vec![("a".into(), "1".into()), ("b".into(), "x y".into())])
        );
        assert_eq!(parse_fields("INFO a=\"open"), None);
        assert_eq!(parse_fields("INFO a=x\"y"), None);
        assert_eq!(parse_fields("INFO a=\"\\q\""), None);
        assert_eq!(parse_fields("INFO a=\"x\"junk"), None);
        assert_eq!(
            parse_fields("INFO a=\"\\u{1b}\""),
            Some(vec![("a".into(), "\u{1b}".into())])
        );
    }
}
