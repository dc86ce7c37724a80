//! The parts of HTTP request handling that are ours: pure functions over bytes, each fuzzed.
//!
//! hyper frames requests and checks HTTP's generic grammar; everything a route reads out of a
//! request target or a header value goes through one function here. They take `&str` (the
//! router calls `HeaderValue::to_str`, so values are visible ASCII) and return our own types, so
//! the fuzz targets call exactly what the router calls. Each one caps its input before doing any
//! work and allocates at most in proportion to it. Surrounding spaces and tabs in a header
//! value are ignored (RFC 9110 §5.5); everything else is strict.
//!
//! - URL path and query: [`split_query`], [`decode_path`], [`encode_segment`], [`parse_query`].
//!   Each path segment is percent-decoded on its own and refused when it decodes to a
//!   separator, a control character, `.`, `..` or bytes that are not UTF-8 (which catches
//!   overlong forms and surrogates). [`crate::jail::RemotePath::parse`] runs after this.
//! - Digests, RFC 9530 over an RFC 8941 dictionary: [`parse_digest_field`],
//!   [`parse_want_digest`], [`format_digest_field`].
//! - tus 1.0: [`parse_upload_checksum`], [`parse_upload_metadata`], [`parse_u64_header`].
//! - Downloads, RFC 9110 §13-14: [`parse_range`], [`if_none_match`], [`if_range`].
//! - [`cookie_value`] (RFC 6265 §4.2) and [`content_disposition_attachment`] (RFC 6266, 8187).

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::domain::{MAX_NAME_LEN, MAX_PATH_DEPTH, MAX_PATH_LEN};

/// Cap on a raw (still percent-encoded) URL path: the longest remote path with every byte
/// encoded, plus room for a route prefix such as `/d/<token>/`.
pub const MAX_RAW_PATH_LEN: usize = 3 * MAX_PATH_LEN + 256;
/// Cap on path segments: the deepest remote path plus a route prefix (`/d/<tok>/tus/<id>`).
pub const MAX_SEGMENTS: usize = MAX_PATH_DEPTH + 8;
/// Cap on a raw query string: a `path` parameter may be the longest remote path with every
/// byte encoded, beside a paging cursor (a name) and a sort key.
pub const MAX_QUERY_LEN: usize = 3 * MAX_PATH_LEN + 1024;
/// Cap on `key=value` pairs in a query; our routes read two or three.
pub const MAX_QUERY_PAIRS: usize = 16;
/// Cap on a `Content-Digest`/`Repr-Digest`/`Want-*` value: a few digests of 512 bits fit.
pub const MAX_DIGEST_FIELD_LEN: usize = 4096;
/// Cap on dictionary members (duplicates included).
const MAX_DICT_MEMBERS: usize = 32;
/// Cap on an `Upload-Metadata` value (tus-js-client sends a few names and types).
pub const MAX_METADATA_LEN: usize = 4096;
/// Cap on `Upload-Metadata` pairs.
pub const MAX_METADATA_PAIRS: usize = 16;
/// Cap on the header values that need no more: `Range`, `If-Range`, `If-None-Match`, numbers.
const MAX_SHORT_HEADER_LEN: usize = 1024;
/// Cap on entity-tags in an `If-None-Match` list.
const MAX_ETAGS: usize = 32;
/// Cap on a `Cookie` header; browsers send at most a few KiB per origin.
pub const MAX_COOKIE_HEADER_LEN: usize = 8192;
/// Cap on the one cookie value we read (a session id is 22 characters).
const MAX_COOKIE_VALUE_LEN: usize = 256;

/// Standard base64 that accepts a value with or without its `=` padding (RFC 8941 §4.2.7 asks
/// parsers not to fail on missing padding) but not one with non-zero trailing bits.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a URL path or query was refused: the request gets 400 and nothing is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathRefused {
    /// Longer than [`MAX_RAW_PATH_LEN`] or [`MAX_QUERY_LEN`].
    #[error("URL path or query too long")]
    TooLong,
    /// More than [`MAX_SEGMENTS`] segments or [`MAX_QUERY_PAIRS`] pairs.
    #[error("too many path segments or query pairs")]
    TooMany,
    /// The path does not start with `/` (`*`, an authority, a relative reference).
    #[error("path does not start with /")]
    NotAbsolute,
    /// `//` inside the path, or a path that is `//`.
    #[error("empty path segment")]
    EmptySegment,
    /// A decoded segment longer than a name may be.
    #[error("path segment too long")]
    SegmentTooLong,
    /// `%` not followed by two hex digits.
    #[error("bad percent escape")]
    BadEscape,
    /// The decoded bytes are not UTF-8 (overlong forms, surrogates, stray bytes).
    #[error("not UTF-8 after decoding")]
    NotUtf8,
    /// A segment that is `.` or `..` once decoded.
    #[error("dot segment in path")]
    DotSegment,
    /// `/` or `\` inside a decoded segment, or a raw `\`.
    #[error("separator inside a path segment")]
    Separator,
    /// A control character (C0, DEL, C1), raw or decoded.
    #[error("control character in URL")]
    Control,
    /// A raw character a URL never carries unencoded (space, non-ASCII, `#`, `?` in a path).
    #[error("character not allowed in a URL")]
    BadChar,
}

/// A URL path cut into decoded segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedPath {
    /// Each segment decoded: non-empty UTF-8, never `.` or `..`, no `/`, `\` or control.
    pub segments: Vec<String>,
    /// The path ended in `/` after at least one segment (`/d/TOK/`: curl `-T` appends the
    /// file's name to such a URL, so a route can tell "the folder" from "a name").
    pub trailing_slash: bool,
}

/// Splits a request target at its first `?` into the path and the query.
pub fn split_query(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

/// Decodes a URL path (without its query). `/` is the root: no segments, no trailing slash.
pub fn decode_path(raw: &str) -> Result<DecodedPath, PathRefused> {
    if raw.len() > MAX_RAW_PATH_LEN {
        return Err(PathRefused::TooLong);
    }
    let rest = raw.strip_prefix('/').ok_or(PathRefused::NotAbsolute)?;
    let (body, trailing_slash) = match rest.strip_suffix('/') {
        Some(body) => (body, true),
        None => (rest, false),
    };
    let mut segments = Vec::new();
    // `/` alone is the root; `//` is one empty segment.
    if !rest.is_empty() {
        for raw_segment in body.split('/') {
            if segments.len() == MAX_SEGMENTS {
                return Err(PathRefused::TooMany);
            }
            segments.push(decode_segment(raw_segment)?);
        }
    }
    Ok(DecodedPath {
        segments,
        trailing_slash,
    })
}

fn decode_segment(raw: &str) -> Result<String, PathRefused> {
    if raw.is_empty() {
        return Err(PathRefused::EmptySegment);
    }
    check_raw(raw, b"?#")?;
    let decoded = percent_decode(raw, false)?;
    let name = String::from_utf8(decoded).map_err(|_| PathRefused::NotUtf8)?;
    if name.len() > MAX_NAME_LEN {
        return Err(PathRefused::SegmentTooLong);
    }
    if name == "." || name == ".." {
        return Err(PathRefused::DotSegment);
    }
    for c in name.chars() {
        match c {
            '/' | '\\' => return Err(PathRefused::Separator),
            c if c.is_control() => return Err(PathRefused::Control),
            _ => {}
        }
    }
    Ok(name)
}

/// Raw URL text must be visible ASCII; `\` is refused everywhere (some servers treat it as
/// `/`), and `also` names characters that end the part being read.
fn check_raw(raw: &str, also: &[u8]) -> Result<(), PathRefused> {
    for b in raw.bytes() {
        match b {
            b'\\' => return Err(PathRefused::Separator),
            ..=0x1f | 0x7f => return Err(PathRefused::Control),
            b if b == b' ' || b > 0x7f || also.contains(&b) => return Err(PathRefused::BadChar),
            _ => {}
        }
    }
    Ok(())
}

fn percent_decode(raw: &str, plus_is_space: bool) -> Result<Vec<u8>, PathRefused> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Err(PathRefused::BadEscape);
                };
                // Two hex digits make at most 0xff.
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Percent-encodes a name as one URL path segment: every byte but RFC 3986's unreserved
/// characters (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`, so the result is also safe in a
/// `Location` header and as an RFC 8187 value.
pub fn encode_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
        }
    }
    out
}

/// Parses a query string (`cursor=a%20b&sort=name`): pairs in order, duplicates kept, empty
/// pieces (`a=1&&b=2`) skipped, a piece without `=` has an empty value. `+` is a space, then
/// keys and values are percent-decoded and must be UTF-8 without control characters.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, PathRefused> {
    if query.len() > MAX_QUERY_LEN {
        return Err(PathRefused::TooLong);
    }
    check_raw(query, b"#")?;
    let mut pairs = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        if pairs.len() == MAX_QUERY_PAIRS {
            return Err(PathRefused::TooMany);
        }
        let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
        pairs.push((decode_query_part(key)?, decode_query_part(value)?));
    }
    Ok(pairs)
}

fn decode_query_part(raw: &str) -> Result<String, PathRefused> {
    let text = String::from_utf8(percent_decode(raw, true)?).map_err(|_| PathRefused::NotUtf8)?;
    if text.chars().any(char::is_control) {
        return Err(PathRefused::Control);
    }
    Ok(text)
}

/// Why a digest field was refused: the request gets 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestRefused {
    /// Longer than [`MAX_DIGEST_FIELD_LEN`], or more than 32 members.
    #[error("digest field too long")]
    TooLong,
    /// Not an RFC 8941 dictionary.
    #[error("malformed structured field dictionary")]
    Malformed,
    /// `sha-256` is there but not a byte sequence of 32 bytes (or, in `Want-*`, not 0 to 10).
    #[error("bad sha-256 member")]
    BadSha256,
}

/// The `sha-256` digest in a `Content-Digest` or `Repr-Digest` value (RFC 9530), `None` when the
/// dictionary has none. Other algorithms are ignored; a repeated key counts once, the last
/// (RFC 8941 §4.2.2); parameters are ignored.
pub fn parse_digest_field(value: &str) -> Result<Option<[u8; 32]>, DigestRefused> {
    Ok(match last_sha256(value)? {
        None => None,
        Some(Item::Bytes(bytes)) => Some(bytes.try_into().map_err(|_| DigestRefused::BadSha256)?),
        Some(_) => return Err(DigestRefused::BadSha256),
    })
}

/// The `sha-256` preference (0 to 10, 0 meaning "not acceptable") in a `Want-Content-Digest`
/// or `Want-Repr-Digest` value, `None` when it is not named.
pub fn parse_want_digest(value: &str) -> Result<Option<u8>, DigestRefused> {
    Ok(match last_sha256(value)? {
        None => None,
        Some(Item::Integer(n @ 0..=10)) => Some(n as u8),
        Some(_) => return Err(DigestRefused::BadSha256),
    })
}

/// `sha-256=:<base64>:`, the value of a `Content-Digest` or `Repr-Digest` header.
pub fn format_digest_field(digest: &[u8; 32]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(digest))
}

fn last_sha256(value: &str) -> Result<Option<Item>, DigestRefused> {
    if value.len() > MAX_DIGEST_FIELD_LEN {
        return Err(DigestRefused::TooLong);
    }
    let mut members = parse_dictionary(trim_ows(value).as_bytes())?;
    Ok(members
        .iter()
        .rposition(|(key, _)| *key == b"sha-256")
        .map(|i| members.swap_remove(i).1))
}

/// A dictionary member's value, as far as digests need it.
#[derive(Debug)]
enum Item {
    Bytes(Vec<u8>),
    Integer(i64),
    /// Any other bare item, or an inner list.
    Other,
}

/// RFC 8941 §4.2.2, over a value whose surrounding whitespace is already gone.
fn parse_dictionary(input: &[u8]) -> Result<Vec<(&[u8], Item)>, DigestRefused> {
    let mut p = Sf { input, at: 0 };
    let mut members = Vec::new();
    while !p.done() {
        if members.len() == MAX_DICT_MEMBERS {
            return Err(DigestRefused::TooLong);
        }
        let key = p.key()?;
        let value = if p.eat(b'=') {
            if p.eat(b'(') {
                p.inner_list()?
            } else {
                p.bare_item()?
            }
        } else {
            Item::Other // a bare key is boolean true
        };
        p.parameters()?;
        members.push((key, value));
        p.skip(b" \t");
        if p.done() {
            break;
        }
        if !p.eat(b',') {
            return Err(DigestRefused::Malformed);
        }
        p.skip(b" \t");
        if p.done() {
            return Err(DigestRefused::Malformed); // a trailing comma
        }
    }
    Ok(members)
}

/// A cursor over a structured field value.
struct Sf<'a> {
    input: &'a [u8],
    at: usize,
}

impl<'a> Sf<'a> {
    fn done(&self) -> bool {
        self.at == self.input.len()
    }
    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }
    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.at += usize::from(hit);
        hit
    }
    fn skip(&mut self, set: &[u8]) {
        while self.peek().is_some_and(|b| set.contains(&b)) {
            self.at += 1;
        }
    }
    /// The bytes from `start` while `ok` holds.
    fn take(&mut self, ok: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.at;
        while self.peek().is_some_and(&ok) {
            self.at += 1;
        }
        &self.input[start..self.at]
    }

    fn key(&mut self) -> Result<&'a [u8], DigestRefused> {
        if !self
            .peek()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
        {
            return Err(DigestRefused::Malformed);
        }
        Ok(self.take(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.' | b'*')
        }))
    }

    fn parameters(&mut self) -> Result<(), DigestRefused> {
        while self.eat(b';') {
            self.skip(b" ");
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Ok(())
    }

    /// After the `(`: items separated by spaces, `)`, then the list's parameters.
    fn inner_list(&mut self) -> Result<Item, DigestRefused> {
        loop {
            self.skip(b" ");
            if self.eat(b')') {
                return Ok(Item::Other);
            }
            self.bare_item()?;
            self.parameters()?;
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return Err(DigestRefused::Malformed);
            }
        }
    }

    fn bare_item(&mut self) -> Result<Item, DigestRefused> {
        let bad = DigestRefused::Malformed;
        match self.peek().ok_or(bad)? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => {
                self.at += 1;
                loop {
                    match self.peek().ok_or(bad)? {
                        b'"' => break,
                        b'\\' => {
                            self.at += 1;
                            if !(self.eat(b'"') || self.eat(b'\\')) {
                                return Err(bad);
                            }
                        }
                        0x20..=0x7e => self.at += 1,
                        _ => return Err(bad),
                    }
                }
                self.at += 1;
                Ok(Item::Other)
            }
            b':' => {
                self.at += 1;
                let text =
                    self.take(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
                if !self.eat(b':') {
                    return Err(bad);
                }
                Ok(Item::Bytes(BASE64.decode(text).map_err(|_| bad)?))
            }
            b'?' => {
                self.at += 1;
                if !(self.eat(b'0') || self.eat(b'1')) {
                    return Err(bad);
                }
                Ok(Item::Other)
            }
            b'*' | b'A'..=b'Z' | b'a'..=b'z' => {
                self.take(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b));
                Ok(Item::Other)
            }
            _ => Err(bad),
        }
    }

    /// An integer (at most 15 digits) or a decimal (at most 12 digits, `.`, 1 to 3 digits).
    fn number(&mut self) -> Result<Item, DigestRefused> {
        let negative = self.eat(b'-');
        let whole = self.take(|b| b.is_ascii_digit());
        if whole.is_empty() {
            return Err(DigestRefused::Malformed);
        }
        if self.eat(b'.') {
            let fraction = self.take(|b| b.is_ascii_digit());
            if whole.len() > 12 || !(1..=3).contains(&fraction.len()) {
                return Err(DigestRefused::Malformed);
            }
            return Ok(Item::Other);
        }
        if whole.len() > 15 {
            return Err(DigestRefused::Malformed);
        }
        // At most 15 digits: no overflow.
        let n = whole.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        Ok(Item::Integer(if negative { -n } else { n }))
    }
}

/// Why a tus header was refused: 400 (tus answers an unsupported checksum algorithm with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TusRefused {
    /// Longer than [`MAX_METADATA_LEN`] or more than [`MAX_METADATA_PAIRS`] pairs.
    #[error("tus header too long")]
    TooLong,
    /// An `Upload-Checksum` algorithm other than `sha256`.
    #[error("unsupported checksum algorithm")]
    UnsupportedAlgorithm,
    /// A key that appears twice in `Upload-Metadata`.
    #[error("duplicate metadata key")]
    DuplicateKey,
    /// Anything else that breaks the grammar.
    #[error("malformed tus header")]
    Malformed,
}

/// The digest in `Upload-Checksum: sha256 <base64>` (tus checksum extension).
pub fn parse_upload_checksum(value: &str) -> Result<[u8; 32], TusRefused> {
    if value.len() > MAX_SHORT_HEADER_LEN {
        return Err(TusRefused::TooLong);
    }
    let (algorithm, encoded) = trim_ows(value)
        .split_once(' ')
        .ok_or(TusRefused::Malformed)?;
    if algorithm != "sha256" {
        return Err(TusRefused::UnsupportedAlgorithm);
    }
    let digest = BASE64.decode(encoded).map_err(|_| TusRefused::Malformed)?;
    digest.try_into().map_err(|_| TusRefused::Malformed)
}

/// `Upload-Metadata: key base64,flag` as pairs in order, a key without a value getting an
/// empty one. Keys are non-empty visible ASCII (so no space or comma) and unique; values are
/// standard base64 of any bytes (the caller checks that a `filename` is UTF-8).
pub fn parse_upload_metadata(value: &str) -> Result<Vec<(String, Vec<u8>)>, TusRefused> {
    if value.len() > MAX_METADATA_LEN {
        return Err(TusRefused::TooLong);
    }
    let value = trim_ows(value);
    let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
    if value.is_empty() {
        return Ok(pairs);
    }
    for pair in value.split(',').map(trim_ows) {
        if pairs.len() == MAX_METADATA_PAIRS {
            return Err(TusRefused::TooLong);
        }
        let (key, encoded) = pair.split_once(' ').unwrap_or((pair, ""));
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TusRefused::Malformed);
        }
        if pairs.iter().any(|(k, _)| k == key) {
            return Err(TusRefused::DuplicateKey);
        }
        let decoded = BASE64.decode(encoded).map_err(|_| TusRefused::Malformed)?;
        pairs.push((key.to_owned(), decoded));
    }
    Ok(pairs)
}

/// A decimal `u64` header (`Upload-Offset`, `Upload-Length`, `Content-Length`): ASCII digits
/// only, no sign, no overflow. Leading zeros are allowed, as RFC 9110's `1*DIGIT` allows them.
pub fn parse_u64_header(value: &str) -> Option<u64> {
    let digits = trim_ows(value);
    if digits.is_empty() {
        return None;
    }
    // No length cap needed: no allocation, and a value past 20 significant digits overflows.
    digits.bytes().try_fold(0u64, |n, b| {
        let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        n.checked_mul(10)?.checked_add(digit)
    })
}

/// What to send for a `GET` with a `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 200 with the whole file: no usable range (another unit, several ranges, malformed).
    Full,
    /// 206 with these bytes; `start <= end_inclusive < size`.
    Partial { start: u64, end_inclusive: u64 },
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Reads a `Range` header against a file of `size` bytes (RFC 9110 §14.1.2): `bytes=a-b`,
/// `bytes=a-` or `bytes=-n`. We serve one range, so a list of several gets the whole file, as
/// does an invalid header (RFC 9110 §14.2: a server may ignore it).
pub fn parse_range(value: &str, size: u64) -> RangeAnswer {
    use RangeAnswer::{Full, Partial, Unsatisfiable};
    if value.len() > MAX_SHORT_HEADER_LEN {
        return Full;
    }
    let Some((unit, set)) = trim_ows(value).split_once('=') else {
        return Full;
    };
    if !unit.eq_ignore_ascii_case("bytes") || set.contains(',') {
        return Full;
    }
    let Some((first, last)) = trim_ows(set).split_once('-') else {
        return Full;
    };
    if first.is_empty() {
        return match digits_saturating(last) {
            None => Full,
            Some(0) => Unsatisfiable,
            // An empty file has no part to select; its whole (empty) body is the answer.
            Some(_) if size == 0 => Full,
            Some(n) => Partial {
                start: size.saturating_sub(n),
                end_inclusive: size - 1,
            },
        };
    }
    let Some(first) = digits_saturating(first) else {
        return Full;
    };
    let last = match last {
        "" => u64::MAX,
        last => match digits_saturating(last) {
            Some(last) if last >= first => last,
            _ => return Full,
        },
    };
    if first >= size {
        return Unsatisfiable;
    }
    Partial {
        start: first,
        end_inclusive: last.min(size - 1),
    }
}

/// ASCII digits as a number that sticks at `u64::MAX`: a position past any file is still a
/// valid position (and makes the range unsatisfiable), not a malformed header.
fn digits_saturating(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Whether `If-None-Match` matches our `etag` (weak comparison, RFC 9110 §13.1.2): `true`
/// means 304. `*` matches any file; a malformed list matches nothing.
pub fn if_none_match(header: &str, etag: &str) -> bool {
    if header.len() > MAX_SHORT_HEADER_LEN {
        return false;
    }
    let Some((_, ours)) = entity_tag(etag) else {
        return false;
    };
    if trim_ows(header) == "*" {
        return true;
    }
    entity_tags(trim_ows(header)).is_some_and(|tags| tags.iter().any(|(_, tag)| *tag == ours))
}

/// Whether `If-Range` names our `etag` by strong comparison (RFC 9110 §13.1.5): `true` means
/// the `Range` applies. A date, a weak tag or a malformed value means "send the whole file".
pub fn if_range(header: &str, etag: &str) -> bool {
    match (entity_tag(trim_ows(header)), entity_tag(etag)) {
        (Some((false, theirs)), Some((false, ours))) => theirs == ours,
        _ => false,
    }
}

/// One whole entity-tag: `(weak, opaque-tag without its quotes)`.
fn entity_tag(s: &str) -> Option<(bool, &str)> {
    let weak = s.starts_with("W/");
    let opaque = s
        .strip_prefix("W/")
        .unwrap_or(s)
        .strip_prefix('"')?
        .strip_suffix('"')?;
    opaque.bytes().all(is_etagc).then_some((weak, opaque))
}

/// A comma-separated list of entity-tags (`W/"x", "y"`); empty elements are allowed, as in
/// every HTTP list. An opaque tag may itself hold commas, so the list is scanned, not split.
fn entity_tags(list: &str) -> Option<Vec<(bool, &str)>> {
    let mut tags = Vec::new();
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return (!tags.is_empty()).then_some(tags);
        }
        if tags.len() == MAX_ETAGS {
            return None;
        }
        let weak = rest.starts_with("W/");
        let tail = rest.strip_prefix("W/").unwrap_or(rest).strip_prefix('"')?;
        let (opaque, after) = tail.split_once('"')?;
        if !opaque.bytes().all(is_etagc) {
            return None;
        }
        tags.push((weak, opaque));
        rest = after.trim_start_matches([' ', '\t']);
        if !(rest.is_empty() || rest.starts_with(',')) {
            return None;
        }
    }
}

/// RFC 9110's `etagc`, less `obs-text` (header values reach us as visible ASCII).
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b)
}

/// The value of cookie `name` in a `Cookie` header (`a=b; c=d`), or `None`. The first cookie
/// of that name decides: a browser sends the most specific one first, and `__Host-` cookies
/// cannot be set by another host. Its value must be 1 to 256 base64url characters (what we
/// set); anything else, including a quoted value, is `None`.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    if header.len() > MAX_COOKIE_HEADER_LEN || name.is_empty() {
        return None;
    }
    let (_, value) = header
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| trim_ows(key) == name)?;
    let value = trim_ows(value);
    let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let ok = (1..=MAX_COOKIE_VALUE_LEN).contains(&value.len()) && value.bytes().all(base64url);
    ok.then_some(value)
}

/// `Content-Disposition` for downloading a file called `name` (RFC 6266): a plain-ASCII
/// `filename` for old clients, in which anything outside printable ASCII and `"`, `\`, `;`
/// and `%` (which some browsers decode) become `_`, then the exact name as RFC 8187
/// `filename*`, which clients that know it prefer.
pub fn content_disposition_attachment(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| match c {
            '"' | '\\' | ';' | '%' => '_',
            ' '..='~' => c,
            _ => '_',
        })
        .collect();
    format!(
        "attachment; filename=\"{fallback}\"; filename*=UTF-8''{}",
        encode_segment(name)
    )
}

/// Drops spaces and tabs at both ends (RFC 9110's OWS).
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(raw: &str) -> Result<(Vec<String>, bool), PathRefused> {
        decode_path(raw).map(|p| (p.segments, p.trailing_slash))
    }

    #[test]
    fn decode_path_accepts() {
        for (raw, segments, trailing) in [
            ("/", "", false),
            ("/f/a/b.txt", "f|a|b.txt", false),
            ("/d/TOK/", "d|TOK", true),
            ("/f/a%20b/%C3%A7.txt", "f|a b|ç.txt", false),
            ("/f/a+b/c%2b", "f|a+b|c+", false),
            ("/f/...%2E/.x", "f|....|.x", false),
            ("/f/%e2%80%ae", "f|\u{202e}", false), // bidi controls are RemotePath's call
        ] {
            let segments = segments
                .split('|')
                .filter(|s| !s.is_empty())
                .map(String::from);
            assert_eq!(path(raw), Ok((segments.collect(), trailing)), "{raw:?}");
        }
    }

    #[test]
    fn decode_path_refuses_attacks() {
        use PathRefused::*;
        for (raw, why) in [
            ("", NotAbsolute),
            ("*", NotAbsolute),
            ("f/a", NotAbsolute),
            ("//", EmptySegment),
            ("/f//a", EmptySegment),
            ("/f/a//", EmptySegment),
            ("/f/../etc", DotSegment),
            ("/f/.", DotSegment),
            ("/f/%2e%2e/x", DotSegment),
            ("/f/%2E%2e", DotSegment),
            ("/f/.%2e/", DotSegment),
            ("/f/a%2fb", Separator),
            ("/f/..%2f..%2fetc", Separator),
            ("/f/a%5cb", Separator),
            ("/f/a\\b", Separator),
            ("/f/..\\x", Separator),
            ("/f/a%00b", Control),
            ("/f/a%0a", Control),
            ("/f/a%7f", Control),
            ("/f/a%c2%85", Control), // NEL, a C1 control
            ("/f/a\u{1}", Control),
            ("/f/%c0%af", NotUtf8),       // overlong '/'
            ("/f/%c0%ae%c0%ae", NotUtf8), // overlong '..'
            ("/f/%e0%80%af", NotUtf8),
            ("/f/%ed%a0%80", NotUtf8), // a lone surrogate
            ("/f/%ff", NotUtf8),
            ("/f/%zz", BadEscape),
            ("/f/%4", BadEscape),
            ("/f/%", BadEscape),
            ("/f/%%32%65", BadEscape),
            ("/f/a b", BadChar),
            ("/f/ç", BadChar),
            ("/f/a#b", BadChar),
            ("/f/a?b", BadChar),
        ] {
            assert_eq!(path(raw), Err(why), "{raw:?}");
        }
    }

    #[test]
    fn decode_path_is_bounded() {
        let deep = "/a".repeat(MAX_SEGMENTS);
        assert_eq!(path(&deep).map(|p| p.0.len()), Ok(MAX_SEGMENTS));
        assert_eq!(path(&format!("{deep}/a")), Err(PathRefused::TooMany));
        let long = format!("/{}", "%41".repeat(MAX_NAME_LEN));
        assert_eq!(path(&long).map(|p| p.0[0].len()), Ok(MAX_NAME_LEN));
        assert_eq!(path(&format!("{long}B")), Err(PathRefused::SegmentTooLong));
        let huge = format!("/{}", "a/".repeat(MAX_RAW_PATH_LEN / 2));
        assert_eq!(path(&huge), Err(PathRefused::TooLong));
    }

    #[test]
    fn split_query_cuts_at_the_first_question_mark() {
        assert_eq!(split_query("/api/ls?a=1&b"), ("/api/ls", Some("a=1&b")));
        assert_eq!(split_query("/a?b?c"), ("/a", Some("b?c")));
        assert_eq!(split_query("/a"), ("/a", None));
    }

    /// Names from a palette of awkward characters, by a fixed xorshift sequence.
    fn awkward_names(count: usize) -> Vec<String> {
        let palette = [
            'a', 'Z', '0', '.', '-', '_', '~', ' ', '+', '%', '/', '\\', '?', '#', '&', '=', ';',
            '"', '\'', 'é', 'ç', '€', '𝄞', '\u{202e}', '\0', '\n', '\u{85}', '\u{7f}',
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut name = |_| {
            let r = next();
            let pick = |i| palette[(r >> (8 + 5 * i)) as usize % palette.len()];
            (0..r % 6 + 1).map(pick).collect()
        };
        (0..count).map(&mut name).collect()
    }

    #[test]
    fn encode_segment_round_trips_every_valid_name() {
        assert_eq!(encode_segment("a b/ç.txt"), "a%20b%2F%C3%A7.txt");
        for name in awkward_names(20_000) {
            let bad_char = |c: char| c == '/' || c == '\\' || c.is_control();
            let valid = name != "." && name != ".." && !name.chars().any(bad_char);
            match decode_path(&format!("/{}", encode_segment(&name))) {
                Ok(p) => assert!(valid && p.segments == [name.clone()], "{name:?}"),
                Err(e) => assert!(!valid, "{name:?}: {e}"),
            }
        }
    }

    #[test]
    fn parse_query_decodes_and_bounds() {
        use PathRefused::*;
        let many = "a&".repeat(MAX_QUERY_PAIRS + 1);
        let long = "a".repeat(MAX_QUERY_LEN + 1);
        for (query, answer) in [
            ("", Ok("")),
            ("cursor=a+b%2Bc&sort=name", Ok("cursor:a b+c|sort:name")),
            ("a=1&&b&a=%C3%A7", Ok("a:1|b:|a:ç")),
            ("x=a=b", Ok("x:a=b")),
            ("cursor=%2e%2e%2Fx", Ok("cursor:../x")), // a value, not a path
            ("a=%c0%af", Err(NotUtf8)),
            ("a=%00", Err(Control)),
            ("a=%zz", Err(BadEscape)),
            ("a=b c", Err(BadChar)),
            ("a=\\", Err(Separator)),
            (&many, Err(TooMany)),
            (&long, Err(TooLong)),
        ] {
            let pairs = parse_query(query).map(|pairs| {
                let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                pairs.join("|")
            });
            assert_eq!(pairs.as_deref().map_err(|e| *e), answer, "{query:?}");
        }
    }

    const D: [u8; 32] = [7; 32];
    const D_B64: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

    #[test]
    fn digest_field() {
        use DigestRefused::*;
        assert_eq!(format_digest_field(&D), format!("sha-256=:{D_B64}:"));
        let many = "a, ".repeat(40);
        let long = format!("sha-256=:{}:", "A".repeat(MAX_DIGEST_FIELD_LEN));
        // `$D` stands for D in base64, `$U` for the same without its padding.
        for (value, answer) in [
            ("sha-256=:$D:", Ok(Some(D))),
            ("", Ok(None)),
            ("sha-512=:AAAA:, md5=:AAAA:", Ok(None)),
            ("  sha-512=:AAAA:,\tsha-256=:$D: ", Ok(Some(D))),
            ("sha-256=:$U:", Ok(Some(D))),
            (
                "sha-256=:$D:;a=1;b, x=?1, y, z=(1 \"s\" tok);q=:AA==:",
                Ok(Some(D)),
            ),
            (
                "unixsum=30, id-sha-256=\"a,b\", foo=-1.5, sha-256=:$D:",
                Ok(Some(D)),
            ),
            ("sha-256=:AAAA:, sha-256=:$D:", Ok(Some(D))), // the last of a repeated key
            ("sha-256=:$D:, sha-256=:AAAA:", Err(BadSha256)),
            ("sha-256=:AAAA:", Err(BadSha256)),
            ("sha-256=\"$D\"", Err(BadSha256)),
            ("sha-256", Err(BadSha256)),
            ("sha-256=(:$D:)", Err(BadSha256)),
            ("SHA-256=:$D:", Err(Malformed)),
            ("sha-256=:AAA*:", Err(Malformed)),
            ("sha-256=:A:", Err(Malformed)),
            ("sha-256=:AB==:", Err(Malformed)), // non-zero trailing bits
            ("sha-256=:$D", Err(Malformed)),
            ("sha-256=:$D:,", Err(Malformed)),
            ("sha-256=:$D: x", Err(Malformed)),
            (",sha-256=:$D:", Err(Malformed)),
            ("a=1234567890123456", Err(Malformed)),
            ("a=1.2345", Err(Malformed)),
            ("a=\"\\x\"", Err(Malformed)),
            ("a=\"unterminated", Err(Malformed)),
            ("a=?2", Err(Malformed)),
            ("a=(1 2", Err(Malformed)),
            ("a=(1,2)", Err(Malformed)),
            ("a=@1", Err(Malformed)), // an RFC 9651 date: not RFC 8941
            ("a=1;B=2", Err(Malformed)),
            (&many, Err(TooLong)),
            (&long, Err(TooLong)),
        ] {
            let value = value
                .replace("$D", D_B64)
                .replace("$U", D_B64.trim_end_matches('='));
            assert_eq!(parse_digest_field(&value), answer, "{value:?}");
        }
    }

    #[test]
    fn want_digest_reads_the_preference() {
        for (value, answer) in [
            ("sha-512=3, sha-256=10", Ok(Some(10))),
            ("sha-256=0", Ok(Some(0))),
            ("sha-512=3", Ok(None)),
            ("sha-256=11", Err(DigestRefused::BadSha256)),
            ("sha-256=-1", Err(DigestRefused::BadSha256)),
        ] {
            assert_eq!(parse_want_digest(value), answer, "{value:?}");
        }
    }

    #[test]
    fn upload_checksum() {
        use TusRefused::*;
        for (value, answer) in [
            ("sha256 $D", Ok(D)),
            (" sha256 $D\t", Ok(D)),
            ("sha1 AAAA", Err(UnsupportedAlgorithm)),
            ("SHA256 $D", Err(UnsupportedAlgorithm)),
            ("sha256", Err(Malformed)),
            ("sha256 AAAA", Err(Malformed)),
            ("sha256  $D", Err(Malformed)),
            ("$D", Err(Malformed)),
            ("sha256 $D x", Err(Malformed)),
            ("sha256 $D=", Err(Malformed)),
        ] {
            let value = value.replace("$D", D_B64);
            assert_eq!(parse_upload_checksum(&value), answer, "{value:?}");
        }
        let url_safe = format!("sha256 {}", D_B64.replace('B', "-"));
        assert_eq!(parse_upload_checksum(&url_safe), Err(Malformed));
    }

    #[test]
    fn upload_metadata() {
        use TusRefused::*;
        let many: Vec<String> = (0..=MAX_METADATA_PAIRS).map(|i| format!("k{i}")).collect();
        let many = many.join(",");
        let long = "a".repeat(MAX_METADATA_LEN + 1);
        for (value, answer) in [
            (
                "filename cmVwb3J0LnBkZg==,flag, type dGV4dA",
                Ok("filename:report.pdf|flag:|type:text"),
            ),
            (" ", Ok("")),
            ("a YQ==  ", Ok("a:a")),
            ("a YQ==,a Yg==", Err(DuplicateKey)),
            ("a YQ==,", Err(Malformed)),
            (",a", Err(Malformed)),
            ("a YQ==,,b", Err(Malformed)),
            ("a  YQ==", Err(Malformed)),
            ("a YQ== x", Err(Malformed)),
            ("a *", Err(Malformed)),
            ("ké YQ==", Err(Malformed)),
            (&many, Err(TooLong)),
            (&long, Err(TooLong)),
        ] {
            let pairs = parse_upload_metadata(value).map(|pairs| {
                let pairs = pairs
                    .iter()
                    .map(|(k, v)| format!("{k}:{}", String::from_utf8_lossy(v)));
                pairs.collect::<Vec<_>>().join("|")
            });
            assert_eq!(pairs.as_deref().map_err(|e| *e), answer, "{value:?}");
        }
    }

    #[test]
    fn u64_header() {
        assert_eq!(parse_u64_header("0"), Some(0));
        assert_eq!(parse_u64_header("0042"), Some(42));
        assert_eq!(parse_u64_header(&u64::MAX.to_string()), Some(u64::MAX));
        assert_eq!(parse_u64_header("18446744073709551616"), None);
        for bad in ["", " ", "+1", "-1", "1.0", "1e3", "0x10", "1 2", "١"] {
            assert_eq!(parse_u64_header(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn range() {
        use RangeAnswer::*;
        let p = |start, end_inclusive| Partial {
            start,
            end_inclusive,
        };
        for (value, size, answer) in [
            ("bytes=0-99", 1000, p(0, 99)),
            ("bytes=500-", 1000, p(500, 999)),
            ("bytes=-100", 1000, p(900, 999)),
            ("bytes=-5000", 1000, p(0, 999)),
            ("bytes=900-5000", 1000, p(900, 999)),
            ("Bytes=0-0", 1000, p(0, 0)),
            ("bytes=999-99999999999999999999999", 1000, p(999, 999)),
            ("bytes=1000-", 1000, Unsatisfiable),
            ("bytes=99999999999999999999999-", 1000, Unsatisfiable),
            ("bytes=-0", 1000, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            ("bytes=-1", 0, Full),
            ("bytes=0-1,5-6", 1000, Full),
            ("bytes=0-1,", 1000, Full),
            ("items=0-1", 1000, Full),
            ("bytes=5-1", 1000, Full),
            ("bytes=a-b", 1000, Full),
            ("bytes=+1-2", 1000, Full),
            ("bytes=1", 1000, Full),
            ("bytes=-", 1000, Full),
            ("bytes 0-1", 1000, Full),
        ] {
            assert_eq!(parse_range(value, size), answer, "{value:?} of {size}");
        }
    }

    #[test]
    fn etags() {
        let (strong, weak) = ("\"sha256-ab\"", "W/\"sha256-ab\"");
        for (header, ours, none_match, range) in [
            (strong, strong, true, true),
            (weak, strong, true, false),
            (strong, weak, true, false),
            (weak, weak, true, false),
            ("*", strong, true, false),
            ("\"x,y\", W/\"sha256-ab\"", strong, true, false),
            ("\"sha256-ab\", \"sha256-ab\"", strong, true, false),
            ("\"sha256-abc\"", strong, false, false),
            ("\"x\" \"sha256-ab\"", strong, false, false),
            ("sha256-ab", strong, false, false),
            ("\"a\"b", strong, false, false),
            ("", strong, false, false),
            ("Wed, 21 Oct 2026 07:28:00 GMT", strong, false, false),
            (strong, "sha256-ab", false, false),
        ] {
            assert_eq!(
                if_none_match(header, ours),
                none_match,
                "{header:?} {ours:?}"
            );
            assert_eq!(if_range(header, ours), range, "{header:?} {ours:?}");
        }
    }

    #[test]
    fn cookie() {
        let long = format!("__Host-ferry={}", "a".repeat(MAX_COOKIE_VALUE_LEN + 1));
        let padded = format!(
            "{}__Host-ferry=abc",
            "x=y; ".repeat(MAX_COOKIE_HEADER_LEN / 5)
        );
        for (header, answer) in [
            (
                "theme=dark; __Host-ferry=abc-_09XYZ;other=1;  __Host-ferry=b",
                Some("abc-_09XYZ"),
            ),
            ("a=1;__Host-ferry = x ", Some("x")),
            ("x__Host-ferry=a", None),
            ("__host-ferry=a", None),
            ("__Host-ferry=\"abc\"", None),
            ("__Host-ferry=a+b/c=", None),
            ("__Host-ferry=; __Host-ferry=abc", None),
            ("__Host-ferry", None),
            (&long, None),
            (&padded, None),
        ] {
            assert_eq!(cookie_value(header, "__Host-ferry"), answer, "{header:?}");
        }
        assert_eq!(cookie_value("=abc", ""), None);
    }

    #[test]
    fn content_disposition_cannot_break_out() {
        assert_eq!(
            content_disposition_attachment("report 2026.pdf"),
            "attachment; filename=\"report 2026.pdf\"; filename*=UTF-8''report%202026.pdf"
        );
        let hostile = "a\"; filename=evil.exe\\\r\nSet-Cookie: x;%41é";
        assert_eq!(
            content_disposition_attachment(hostile),
            "attachment; filename=\"a__ filename=evil.exe___Set-Cookie: x__41_\"; \
             filename*=UTF-8''a%22%3B%20filename%3Devil.exe%5C%0D%0ASet-Cookie%3A%20x%3B%2541%C3%A9"
        );
    }
}
