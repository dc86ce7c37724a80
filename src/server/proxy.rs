//! The PROXY protocol, versions 1 and 2, as HAProxy and most TCP load balancers send it.
//!
//! With `--proxy-protocol` on, every connection from a trusted balancer (`--proxy-from`) must
//! begin with a PROXY header naming the client the balancer accepted; ferry then uses that
//! address for limits, penalties and logs. The TLS ClientHello follows the header at once, so
//! [`read_header`] reads exactly the header's bytes and not one more.
//!
//! # Who does what
//! The grammar of both versions is the `ppp` crate's: it parses a complete header. This module
//! only frames it (where does the header end, without reading past it) and applies ferry's
//! policy on top (caps, which address families a TCP service accepts, TLV framing):
//! [`parse`] says how many bytes it still needs at the least, and the reader asks the socket
//! for no more than that.
//!
//! # The two formats, briefly
//! - Version 1 is one text line: `PROXY TCP4 <src> <dst> <srcport> <dstport>\r\n` (or `TCP6`
//!   with IPv6 addresses), or `PROXY UNKNOWN ...\r\n` when the balancer speaks for itself
//!   (health checks). The whole line, CRLF included, is at most 107 bytes.
//! - Version 2 is binary: a 12-byte signature, a version/command byte, an address
//!   family/transport byte and a big-endian 16-bit length, then that many bytes: the address
//!   block for the family, followed by type-length-value extensions (TLVs).
//!
//! # What is accepted
//! Parsing is strict: a malformed header means a broken or hostile peer, and the caller drops
//! the connection.
//! - v1: what `ppp` accepts (`TCP4`, `TCP6` or `UNKNOWN`, single spaces, addresses of the
//!   named family, decimal ports without leading zeros), ending in CRLF within 107 bytes, with
//!   no line feed before the CR.
//! - v2: command LOCAL (the balancer's own connection, i.e. a health check: the rest of the
//!   header is skipped, as the specification asks) or PROXY; for PROXY, family/transport one
//!   of UNSPEC, TCP over IPv4 or IPv6, or UNIX (UDP on a stream connection is refused); the
//!   length must cover the family's address block and may not exceed [`MAX_V2_PAYLOAD`]; the
//!   TLVs are not interpreted, but their framing must fill the rest of the header exactly
//!   (HAProxy enforces the same). The CRC32C TLV is not verified.
//! - Anything else, a TLS ClientHello, HTTP, SSH banners or noise, is [`ProxyError::NotProxy`]:
//!   with the option on, the header is mandatory.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How a v1 header starts.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included (the specification's worst case).
const V1_MAX_LEN: usize = 107;
/// The shortest v1 header: `PROXY UNKNOWN\r\n`.
const V1_MIN_LEN: usize = 15;
/// How a v2 header starts.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport and length.
const V2_FIXED_LEN: usize = 16;
/// Cap on the v2 length field (address block plus TLVs). The largest address block (UNIX,
/// 216 bytes) plus the TLVs balancers actually send (ALPN, authority, SSL details, cloud
/// endpoint ids) fit easily; 1 KiB leaves room for custom TLVs while the whole header still
/// lives in a small fixed buffer. Larger headers are refused as [`ProxyError::TooLong`].
pub const MAX_V2_PAYLOAD: usize = 1024;
/// The most bytes [`read_header`] ever reads.
pub const MAX_HEADER_LEN: usize = V2_FIXED_LEN + MAX_V2_PAYLOAD;

/// Why a PROXY header was refused. Every case ends the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The stream does not start with a PROXY signature (TLS, HTTP, noise, ...).
    #[error("no proxy protocol header")]
    NotProxy,
    /// A v1 header that breaks the grammar.
    #[error("malformed proxy v1 header: {0}")]
    BadV1(String),
    /// A v2 header that breaks the format.
    #[error("malformed proxy v2 header: {0}")]
    BadV2(String),
    /// Longer than 107 bytes (v1) or than [`MAX_V2_PAYLOAD`] after the fixed part (v2).
    #[error("proxy header too long")]
    TooLong,
    /// The whole header did not arrive within the timeout.
    #[error("timed out waiting for the proxy header")]
    Timeout,
    /// The peer closed (or reset) the connection before sending a single byte: what a
    /// balancer's connect-only health check looks like.
    #[error("connection closed before any byte")]
    Empty,
    /// The peer closed the connection inside the header.
    #[error("connection closed inside the proxy header")]
    Closed,
    /// Reading from the socket failed.
    #[error("i/o error reading the proxy header: {0}")]
    Io(#[from] std::io::Error),
}

/// Which version of the protocol a header used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text format.
    V1,
    /// The binary format.
    V2,
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The format it came in.
    pub version: Version,
    /// The balancer speaks for itself (v2 LOCAL, v1 `UNKNOWN`): a health check, not a client.
    pub local: bool,
    /// The client's address, or `None` when the header names none (LOCAL, `UNKNOWN`, v2
    /// UNSPEC or UNIX).
    pub source: Option<SocketAddr>,
    /// The address the client connected to on the balancer; `None` exactly when `source` is.
    pub destination: Option<SocketAddr>,
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header occupying the first `len` bytes; anything after it is not looked at.
    Complete {
        /// The header.
        header: Header,
        /// Its length in bytes.
        len: usize,
    },
    /// The bytes so far may begin a valid header; at least this many more (always >= 1) are
    /// needed. Reading that many more can never run past the end of a valid header.
    Incomplete(usize),
}

/// Reads and removes a PROXY header (v1 or v2) from the front of a fresh stream.
///
/// Never reads past the header, so the stream can be handed to the TLS acceptor afterwards.
/// `timeout` covers the whole header: a peer that trickles it in slowly is cut off on time. A
/// peer that closes or resets the connection before sending anything gets
/// [`ProxyError::Empty`], so that the caller can tell a health check from a broken header.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Header, ProxyError> {
    match tokio::time::timeout(timeout, read_parsed(stream)).await {
        Ok(header) => header,
        Err(_) => Err(ProxyError::Timeout),
    }
}

async fn read_parsed<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Header, ProxyError> {
    let mut buf = [0u8; MAX_HEADER_LEN];
    let mut filled = 0;
    loop {
        let got = buf.get(..filled).ok_or(ProxyError::TooLong)?;
        let need = match parse(got)? {
            Parsed::Complete { header, len } => {
                debug_assert_eq!(len, filled, "the reader never reads past the header");
                return Ok(header);
            }
            Parsed::Incomplete(need) => need,
        };
        // `parse` never asks for more than MAX_HEADER_LEN in total; a miss would be a bug,
        // reported as an error rather than a panic.
        let dst = buf
            .get_mut(filled..filled + need)
            .ok_or(ProxyError::TooLong)?;
        let n = match stream.read(dst).await {
            Ok(n) => n,
            Err(e) if filled == 0 && e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(if filled == 0 {
                ProxyError::Empty
            } else {
                ProxyError::Closed
            });
        }
        filled += n;
    }
}

/// Parses a PROXY header at the start of `buf`.
///
/// Returns [`Parsed::Complete`] with the header's length (bytes after it are ignored),
/// [`Parsed::Incomplete`] with a lower bound on the bytes still missing, or an error once the
/// bytes so far cannot begin a valid header. Pure and total: any input gives an answer, never a
/// panic.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(&first) = buf.first() else {
        return Ok(Parsed::Incomplete(V1_MIN_LEN.min(V2_FIXED_LEN)));
    };
    if first == V2_SIGNATURE[0] {
        if !is_prefix(buf, V2_SIGNATURE) {
            return Err(ProxyError::NotProxy);
        }
        return parse_v2(buf);
    }
    if !is_prefix(buf, V1_PREFIX) {
        return Err(ProxyError::NotProxy);
    }
    parse_v1(buf)
}

/// Whether `buf` and `signature` agree on their common length.
fn is_prefix(buf: &[u8], signature: &[u8]) -> bool {
    let n = buf.len().min(signature.len());
    buf.get(..n) == signature.get(..n)
}

/// Version 1: find the CRLF within 107 bytes, then let `ppp` parse the line.
fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    // Bytes beyond the longest possible header are never part of it.
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let Some(end) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        // At least the CRLF is missing. No early verdict on the fields: ppp reports some
        // prefixes of valid lines (a port cut short) as errors, so only a whole line is parsed.
        let need = V1_MIN_LEN.saturating_sub(buf.len()).max(2);
        if buf.len() + need > V1_MAX_LEN {
            return Err(ProxyError::TooLong);
        }
        return Ok(Parsed::Incomplete(need));
    };
    // Length first: a reader that gets the bytes one at a time gives up on the length before
    // it sees what ends the line, and both must say the same (found by the fuzzer).
    let len = end + 2;
    if len > V1_MAX_LEN {
        return Err(ProxyError::TooLong);
    }
    if window.get(end) == Some(&b'\n') {
        return Err(ProxyError::BadV1(
            "line feed without carriage return".into(),
        ));
    }
    match buf.get(end + 1) {
        None => return Ok(Parsed::Incomplete(1)),
        Some(b'\n') => {}
        Some(_) => {
            return Err(ProxyError::BadV1(
                "carriage return without line feed".into(),
            ));
        }
    }
    let line = buf.get(..len).unwrap_or_default();
    let parsed = ppp::v1::Header::try_from(line).map_err(|e| ProxyError::BadV1(e.to_string()))?;
    if parsed.header.len() != len {
        // ppp stops at the first CR, as the framing above does; a mismatch would be a bug.
        return Err(ProxyError::BadV1("line length mismatch".into()));
    }
    if !matches!(parsed.addresses, ppp::v1::Addresses::Unknown) && !ports_are_digits(line) {
        // ppp reads ports with `u16::from_str`, which also takes a leading '+'.
        return Err(ProxyError::BadV1("invalid port".into()));
    }
    let (local, pair) = match parsed.addresses {
        ppp::v1::Addresses::Tcp4(a) => (
            false,
            Some((
                SocketAddr::from((a.source_address, a.source_port)),
                SocketAddr::from((a.destination_address, a.destination_port)),
            )),
        ),
        ppp::v1::Addresses::Tcp6(a) => (
            false,
            Some((
                SocketAddr::from((a.source_address, a.source_port)),
                SocketAddr::from((a.destination_address, a.destination_port)),
            )),
        ),
        ppp::v1::Addresses::Unknown => (true, None),
    };
    let (source, destination) = pair.unzip();
    Ok(Parsed::Complete {
        header: Header {
            version: Version::V1,
            local,
            source,
            destination,
        },
        len,
    })
}

/// Whether the two port fields of a `TCP4`/`TCP6` line (CRLF included) are plain digits, as
/// the specification requires.
fn ports_are_digits(line: &[u8]) -> bool {
    let body = line.strip_suffix(b"\r\n").unwrap_or(line);
    body.split(|&b| b == b' ')
        .skip(4)
        .all(|port| !port.is_empty() && port.iter().all(u8::is_ascii_digit))
}

/// Version 2: the fixed part gives the length; `ppp` parses the whole header.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    // Check each fixed byte as soon as it arrives, so that junk is refused without waiting.
    let local = match buf.get(12) {
        None => None,
        Some(&ver_cmd) => {
            if ver_cmd >> 4 != 2 {
                return Err(ProxyError::BadV2("unsupported version".into()));
            }
            match ver_cmd & 0x0f {
                0 => Some(true),
                1 => Some(false),
                _ => return Err(ProxyError::BadV2("unknown command".into())),
            }
        }
    };
    // Only the combinations the specification defines; LOCAL ignores this byte entirely.
    if let (Some(false), Some(&fam)) = (local, buf.get(13)) {
        match fam {
            0x00 | 0x11 | 0x21 | 0x31 | 0x32 => {}
            0x12 | 0x22 => {
                return Err(ProxyError::BadV2(
                    "udp addresses on a tcp connection".into(),
                ));
            }
            _ => {
                return Err(ProxyError::BadV2(
                    "unknown address family or transport".into(),
                ));
            }
        }
    }
    let Some(&[.., len_hi, len_lo]) = buf.first_chunk::<V2_FIXED_LEN>() else {
        return Ok(Parsed::Incomplete(V2_FIXED_LEN - buf.len()));
    };
    let payload = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if payload > MAX_V2_PAYLOAD {
        return Err(ProxyError::TooLong);
    }
    let len = V2_FIXED_LEN + payload;
    let Some(whole) = buf.get(..len) else {
        return Ok(Parsed::Incomplete(len - buf.len()));
    };
    if local == Some(true) {
        // The balancer's own connection: its addresses (if any) are not a client's.
        return Ok(Parsed::Complete {
            header: Header {
                version: Version::V2,
                local: true,
                source: None,
                destination: None,
            },
            len,
        });
    }
    let parsed = ppp::v2::Header::try_from(whole).map_err(|e| ProxyError::BadV2(e.to_string()))?;
    if parsed.len() != len {
        return Err(ProxyError::BadV2("header length mismatch".into()));
    }
    let pair = match parsed.addresses {
        ppp::v2::Addresses::IPv4(a) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        ppp::v2::Addresses::IPv6(a) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        // A UNIX socket path says nothing useful about the client for limits.
        ppp::v2::Addresses::Unix(_) => None,
        // UNSPEC: the balancer does not know the client; its bytes are opaque to us.
        ppp::v2::Addresses::Unspecified => {
            let (source, destination) = (None, None);
            return Ok(Parsed::Complete {
                header: Header {
                    version: Version::V2,
                    local: false,
                    source,
                    destination,
                },
                len,
            });
        }
    };
    for tlv in parsed.tlvs() {
        tlv.map_err(|e| ProxyError::BadV2(e.to_string()))?;
    }
    let (source, destination) = pair.unzip();
    Ok(Parsed::Complete {
        header: Header {
            version: Version::V2,
            local: false,
            source,
            destination,
        },
        len,
    })
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncWriteExt, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A v2 header with the given version/command and family bytes and payload.
    fn v2(ver_cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(fam);
        h.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    fn inet_block(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b
    }

    fn inet6_block(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&dst.parse::<std::net::Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&sport.to_be_bytes());
        b.extend_from_slice(&dport.to_be_bytes());
        b
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let mut t = vec![kind];
        t.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        t.extend_from_slice(value);
        t
    }

    const LONGEST_V1: &str = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                              ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";

    /// Valid headers and the source address each must yield.
    fn valid() -> Vec<(Vec<u8>, Option<SocketAddr>)> {
        let mut tlvs = inet_block([192, 0, 2, 1], [198, 51, 100, 2], 56324, 443);
        tlvs.extend(tlv(0x01, b"ferry/1")); // ALPN
        tlvs.extend(tlv(0x02, b"files.example.org")); // authority
        tlvs.extend(tlv(0x04, &[0; 9])); // NOOP padding
        tlvs.extend(tlv(0xEA, b"\x01vpce-0123456789abcdef")); // AWS VPC endpoint id
        tlvs.extend(tlv(0x30, b"")); // empty value
        let mut max = inet_block([10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
        max.extend(tlv(0x04, &vec![0; MAX_V2_PAYLOAD - 12 - 3]));
        let mut unix = vec![0u8; 216];
        unix[..10].copy_from_slice(b"/run/x.sck");
        vec![
            (
                b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".to_vec(),
                Some(sa("192.0.2.1:56324")),
            ),
            (
                b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n".to_vec(),
                Some(sa("[2001:db8::1]:56324")),
            ),
            (
                b"PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n".to_vec(),
                Some(sa("[::ffff:192.0.2.1]:1")),
            ),
            (
                b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n".to_vec(),
                Some(sa("0.0.0.0:0")),
            ),
            (
                b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n".to_vec(),
                Some(sa("255.255.255.255:65535")),
            ),
            (b"PROXY TCP6 :: :: 0 0\r\n".to_vec(), Some(sa("[::]:0"))),
            (
                b"PROXY TCP6 FFFF:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                  ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
                    .to_vec(),
                Some(sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), None),
            (LONGEST_V1.as_bytes().to_vec(), None),
            (b"PROXY UNKNOWN whatever \x01  x\r\n".to_vec(), None),
            (
                v2(
                    0x21,
                    0x11,
                    &inet_block([192, 0, 2, 1], [198, 51, 100, 2], 56324, 443),
                ),
                Some(sa("192.0.2.1:56324")),
            ),
            (
                v2(
                    0x21,
                    0x21,
                    &inet6_block("2001:db8::1", "2001:db8::2", 56324, 443),
                ),
                Some(sa("[2001:db8::1]:56324")),
            ),
            (v2(0x21, 0x11, &tlvs), Some(sa("192.0.2.1:56324"))),
            (v2(0x21, 0x11, &max), Some(sa("10.0.0.1:1"))),
            // LOCAL: health checks; the family and addresses are ignored.
            (v2(0x20, 0x00, &[]), None),
            (
                v2(
                    0x20,
                    0x11,
                    &inet_block([192, 0, 2, 1], [198, 51, 100, 2], 1, 2),
                ),
                None,
            ),
            (v2(0x20, 0xff, b"anything"), None),
            // UNSPEC: the balancer does not know the client.
            (v2(0x21, 0x00, &[]), None),
            (v2(0x21, 0x00, b"opaque"), None),
            (v2(0x21, 0x31, &unix), None),
            (v2(0x21, 0x32, &unix), None),
        ]
    }

    fn complete(buf: &[u8]) -> (Header, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, len }) => (header, len),
            other => panic!("expected a complete header for {buf:?}, got {other:?}"),
        }
    }

    #[test]
    fn valid_headers_parse() {
        for (h, source) in valid() {
            let (header, len) = complete(&h);
            assert_eq!(len, h.len(), "{h:?}");
            assert_eq!(header.source, source, "{h:?}");
            assert_eq!(header.source.is_some(), header.destination.is_some());
            let unknown = h.starts_with(b"PROXY UNKNOWN");
            let local = h.get(12).is_some_and(|&b| b == 0x20) && !h.starts_with(b"PROXY");
            assert_eq!(header.local, unknown || local, "{h:?}");
            let expected = if h.starts_with(b"PROXY") {
                Version::V1
            } else {
                Version::V2
            };
            assert_eq!(header.version, expected);
        }
    }

    #[test]
    fn destination_is_reported() {
        let (h, _) = complete(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n");
        assert_eq!(h.destination, Some(sa("198.51.100.2:443")));
        let (h, _) = complete(&v2(
            0x21,
            0x21,
            &inet6_block("2001:db8::1", "2001:db8::2", 56324, 443),
        ));
        assert_eq!(h.destination, Some(sa("[2001:db8::2]:443")));
    }

    #[test]
    fn longest_v1_is_exactly_107_bytes() {
        assert_eq!(LONGEST_V1.len(), V1_MAX_LEN);
    }

    /// The no-overread property, for every valid header: each proper prefix asks for a number
    /// of bytes that does not reach past the header's end, and trailing data is not consumed.
    #[test]
    fn prefixes_never_ask_past_the_end() {
        for (h, _) in valid() {
            for k in 0..h.len() {
                match parse(&h[..k]) {
                    Ok(Parsed::Incomplete(n)) => {
                        assert!(n >= 1 && k + n <= h.len(), "prefix {k} of {h:?} asks {n}")
                    }
                    other => panic!("prefix {k} of {h:?}: {other:?}"),
                }
            }
            let mut more = h.clone();
            more.extend_from_slice(b"hello\r\n\r\n");
            assert_eq!(complete(&more).1, h.len());
        }
    }

    #[test]
    fn malformed_v1() {
        let cases: &[&[u8]] = &[
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\rX",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\r\n",
            b"PROXY TCP4 192.0.2.1\n198.51.100.2 56324 443\r\n",
            b"PROXY TCP5 192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY tcp4 192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY  TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1  198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 \r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 80\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2\r\n",
            b"PROXY TCP4\r\n",
            b"PROXY TCP4 \r\n",
            b"PROXY \r\n",
            b"PROXY UNKNOWN\n",
            b"PROXY UNKNOWNX\r\n",
            b"PROXY TCP4\t192.0.2.1 198.51.100.2 56324 443\r\n",
            // Addresses.
            b"PROXY TCP4 256.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1.5 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100 56324 443\r\n",
            b"PROXY TCP4 01.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 0x7f.0.0.1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 localhost 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1 2001:db8::2 56324 443\r\n",
            b"PROXY TCP6 192.0.2.1 2001:db8::2 56324 443\r\n",
            b"PROXY TCP6 2001:db8::1 198.51.100.2 56324 443\r\n",
            b"PROXY TCP6 [2001:db8::1] 2001:db8::2 56324 443\r\n",
            b"PROXY TCP6 fe80::1%eth0 2001:db8::2 56324 443\r\n",
            b"PROXY TCP6 2001:db8:::1 2001:db8::2 56324 443\r\n",
            b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::2 56324 443\r\n",
            b"PROXY TCP4 192.0.2.1\x00 198.51.100.2 56324 443\r\n",
            b"PROXY TCP4 \xc0.0.2.1 198.51.100.2 56324 443\r\n",
            // Ports.
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 65536\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 99999 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 123456 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 01 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 00 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1a 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 0x50 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 443 \xd9\xa3\r\n",
        ];
        assert_bad_v1(cases);
    }

    /// Every case is refused as a malformed v1 header.
    #[track_caller]
    fn assert_bad_v1(cases: &[&[u8]]) {
        for &case in cases {
            assert!(
                matches!(parse(case), Err(ProxyError::BadV1(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(case),
                parse(case)
            );
        }
    }

    #[test]
    fn v1_too_long() {
        // One byte past the longest header, with and without a terminator.
        let mut long = LONGEST_V1.as_bytes()[..V1_MAX_LEN - 2].to_vec();
        long.push(b'f');
        let mut terminated = long.clone();
        terminated.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&terminated), Err(ProxyError::TooLong)));
        assert!(matches!(parse(&long), Err(ProxyError::TooLong)));
        // Missing CRLF: 107 bytes of a plausible line and no end in sight.
        let mut endless = b"PROXY UNKNOWN ".to_vec();
        endless.resize(V1_MAX_LEN, b'x');
        assert!(matches!(parse(&endless), Err(ProxyError::TooLong)));
        endless.resize(V1_MAX_LEN + 500, b'x');
        assert!(matches!(parse(&endless), Err(ProxyError::TooLong)));
        // A line feed too far out is "too long", as a reader fed byte by byte sees it before
        // the line feed arrives (the fuzzer's find: the two used to disagree).
        let mut late_lf = b"PROXY TCP4 ".to_vec();
        late_lf.resize(V1_MAX_LEN - 1, b'x');
        late_lf.push(b'\n');
        assert!(matches!(parse(&late_lf), Err(ProxyError::TooLong)));
        assert!(matches!(
            parse(&late_lf[..V1_MAX_LEN - 1]),
            Err(ProxyError::TooLong)
        ));
    }

    #[test]
    fn not_proxy() {
        let cases: &[&[u8]] = &[
            // The start of a TLS ClientHello.
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.8\r\n",
            b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY\r\n",
            b"PROXY\tTCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
            b"PROXYTCP4",
            b" PROXY TCP4",
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c",
            b"\r\n\r\n\n",
            b"\r\r",
            b"\0",
        ];
        for &case in cases {
            assert!(
                matches!(parse(case), Err(ProxyError::NotProxy)),
                "{case:?}: {:?}",
                parse(case)
            );
        }
    }

    #[test]
    fn malformed_v2() {
        let inet = inet_block([192, 0, 2, 1], [198, 51, 100, 2], 1, 2);
        let inet6 = inet6_block("2001:db8::1", "2001:db8::2", 1, 2);
        let mut short_tlv = inet.clone();
        short_tlv.extend_from_slice(&[0x04, 0x00]);
        let mut over_tlv = inet.clone();
        over_tlv.extend_from_slice(&[0x04, 0x00, 0x05, 1, 2, 3]);
        let mut one_byte = inet.clone();
        one_byte.push(0);
        let cases = [
            v2(0x11, 0x11, &inet),        // version 1 in binary
            v2(0x31, 0x11, &inet),        // version 3
            v2(0x01, 0x11, &inet),        // version 0
            v2(0x22, 0x11, &inet),        // command 2
            v2(0x2f, 0x11, &inet),        // command 15
            v2(0x21, 0x12, &inet),        // UDP over IPv4
            v2(0x21, 0x22, &inet6),       // UDP over IPv6
            v2(0x21, 0x10, &inet),        // IPv4, unspecified transport
            v2(0x21, 0x13, &inet),        // transport 3
            v2(0x21, 0x41, &inet),        // family 4
            v2(0x21, 0x01, &inet),        // UNSPEC family with a transport
            v2(0x21, 0x30, &[0; 216]),    // UNIX, unspecified transport
            v2(0x21, 0x11, &inet[..11]),  // address block one byte short
            v2(0x21, 0x11, &[]),          // no address block at all
            v2(0x21, 0x21, &inet6[..35]), // IPv6 block one byte short
            v2(0x21, 0x21, &inet),        // IPv6 family, IPv4-sized block
            v2(0x21, 0x31, &[0; 215]),    // UNIX block one byte short
            v2(0x21, 0x11, &short_tlv),   // TLV header cut off
            v2(0x21, 0x11, &over_tlv),    // TLV value longer than the header
            v2(0x21, 0x11, &one_byte),    // one stray byte after the addresses
        ];
        for case in cases {
            assert!(
                matches!(parse(&case), Err(ProxyError::BadV2(_))),
                "{case:?}: {:?}",
                parse(&case)
            );
        }
    }

    #[test]
    fn v2_huge_len_is_refused_from_the_fixed_header_alone() {
        for len in [MAX_V2_PAYLOAD + 1, 4096, 65535] {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[0x21, 0x11]);
            h.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
            assert!(matches!(parse(&h), Err(ProxyError::TooLong)), "{len}");
            // Even for LOCAL, whose payload is skipped.
            h[12] = 0x20;
            assert!(matches!(parse(&h), Err(ProxyError::TooLong)), "{len}");
        }
    }

    #[test]
    fn v2_fails_on_the_first_bad_fixed_byte() {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x11);
        assert!(matches!(parse(&h), Err(ProxyError::BadV2(_))));
        h[12] = 0x21;
        h.push(0x12);
        assert!(matches!(parse(&h), Err(ProxyError::BadV2(_))));
    }

    #[test]
    fn truncated_v2_is_incomplete() {
        let h = v2(
            0x21,
            0x11,
            &inet_block([192, 0, 2, 1], [198, 51, 100, 2], 1, 2),
        );
        assert_eq!(parse(&h[..20]).unwrap(), Parsed::Incomplete(h.len() - 20));
        assert_eq!(parse(&h[..16]).unwrap(), Parsed::Incomplete(12));
        assert_eq!(parse(&h[..5]).unwrap(), Parsed::Incomplete(11));
        assert_eq!(parse(&[]).unwrap(), Parsed::Incomplete(V1_MIN_LEN));
    }

    /// A small deterministic generator for the mutation test (no extra dependency).
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Mutated headers never panic the parser, and whenever one is accepted the no-overread
    /// property holds for it too: every proper prefix is Incomplete without asking past it.
    #[test]
    fn mutations_keep_the_invariants() {
        let seeds: Vec<Vec<u8>> = valid().into_iter().map(|(h, _)| h).collect();
        let alphabet = b" .:0123456789abcdefABCDEFPROXYTCP46UNKW\r\n\0\xff\x11\x21\x20";
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut accepted = 0;
        for _ in 0..20_000 {
            let mut buf = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(buf.len() + 1);
                match rng.below(4) {
                    0 if at < buf.len() => buf[at] = alphabet[rng.below(alphabet.len())],
                    1 if at < buf.len() => {
                        buf.remove(at);
                    }
                    2 => buf.insert(at, alphabet[rng.below(alphabet.len())]),
                    _ if at < buf.len() => buf[at] = rng.next() as u8,
                    _ => {}
                }
            }
            match parse(&buf) {
                Ok(Parsed::Complete { len, header }) => {
                    accepted += 1;
                    assert!(len <= buf.len() && len <= MAX_HEADER_LEN);
                    assert_eq!(complete(&buf[..len]), (header, len));
                    for k in 0..len {
                        match parse(&buf[..k]) {
                            Ok(Parsed::Incomplete(n)) => assert!(n >= 1 && k + n <= len),
                            other => panic!("prefix {k} of accepted {buf:?}: {other:?}"),
                        }
                    }
                }
                Ok(Parsed::Incomplete(n)) => {
                    assert!(n >= 1 && buf.len() + n <= MAX_HEADER_LEN);
                }
                Err(_) => {}
            }
        }
        assert!(
            accepted > 100,
            "the mutations should keep some headers valid"
        );
    }

    #[tokio::test]
    async fn read_header_leaves_the_rest_unread() {
        for (h, source) in valid() {
            let mut input = h.clone();
            input.extend_from_slice(b"hello");
            let mut reader = &input[..];
            assert_eq!(
                read_header(&mut reader, TIMEOUT).await.unwrap().source,
                source
            );
            assert_eq!(reader, b"hello");
        }
    }

    /// Delivers at most `chunk` bytes per read, like a socket receiving small segments.
    struct Trickle<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl AsyncRead for Trickle<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let data = self.data;
            let n = self.chunk.min(buf.remaining()).min(data.len());
            buf.put_slice(&data[..n]);
            self.data = &data[n..];
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn read_header_in_small_pieces() {
        for chunk in [1, 2, 3, 7, 64] {
            for (h, source) in valid() {
                let mut input = h.clone();
                input.extend_from_slice(b"hello");
                let mut reader = Trickle {
                    data: &input,
                    chunk,
                };
                assert_eq!(
                    read_header(&mut reader, TIMEOUT).await.unwrap().source,
                    source
                );
                assert_eq!(reader.data, b"hello");
            }
        }
    }

    #[tokio::test]
    async fn read_header_errors() {
        let mut eof: &[u8] = b"PROXY TCP4 192.0.2.1";
        assert!(matches!(
            read_header(&mut eof, TIMEOUT).await,
            Err(ProxyError::Closed)
        ));
        // Nothing at all: a connect-and-close health check, told apart from a cut header.
        let mut empty: &[u8] = b"";
        assert!(matches!(
            read_header(&mut empty, TIMEOUT).await,
            Err(ProxyError::Empty)
        ));
        let truncated = v2(0x21, 0x11, &inet_block([1, 2, 3, 4], [5, 6, 7, 8], 1, 2));
        let mut truncated = &truncated[..truncated.len() - 5];
        assert!(matches!(
            read_header(&mut truncated, TIMEOUT).await,
            Err(ProxyError::Closed)
        ));
        let mut tls: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 and more";
        assert!(matches!(
            read_header(&mut tls, TIMEOUT).await,
            Err(ProxyError::NotProxy)
        ));
        let mut bad: &[u8] = b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\nhello";
        assert!(matches!(
            read_header(&mut bad, TIMEOUT).await,
            Err(ProxyError::BadV1(_))
        ));
    }

    /// The timeout covers the whole header: a peer that sends a byte at a time, each well
    /// within any per-read timeout, is still cut off.
    #[tokio::test]
    async fn read_header_times_out_on_a_trickle() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            for &b in b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n" {
                if client.write_all(&[b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        let started = std::time::Instant::now();
        let res = read_header(&mut server, Duration::from_millis(200)).await;
        assert!(matches!(res, Err(ProxyError::Timeout)), "{res:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(server);
        writer.abort();
    }

    #[tokio::test]
    async fn read_header_times_out_on_silence() {
        let (_client, mut server) = tokio::io::duplex(64);
        let res = read_header(&mut server, Duration::from_millis(50)).await;
        assert!(matches!(res, Err(ProxyError::Timeout)), "{res:?}");
    }

    /// Over a real TCP connection, the bytes after the header stay in the socket for the next
    /// reader (in ferry, the TLS acceptor), for both versions and for a header that arrives in
    /// pieces.
    #[tokio::test]
    async fn tcp_socket_pair_keeps_the_payload() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let v2_header = v2(0x21, 0x21, &inet6_block("2001:db8::7", "::1", 40000, 443));
        let cases: Vec<(Vec<Vec<u8>>, Option<SocketAddr>)> = vec![
            (
                vec![b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nhello".to_vec()],
                Some(sa("192.0.2.1:56324")),
            ),
            (
                vec![
                    b"PROXY TCP4 192.0.2.1 198".to_vec(),
                    b".51.100.2 56324 443\r".to_vec(),
                    b"\nhel".to_vec(),
                    b"lo".to_vec(),
                ],
                Some(sa("192.0.2.1:56324")),
            ),
            (
                vec![[v2_header.clone(), b"hello".to_vec()].concat()],
                Some(sa("[2001:db8::7]:40000")),
            ),
            (
                vec![v2_header[..14].to_vec(), v2_header[14..30].to_vec(), {
                    let mut rest = v2_header[30..].to_vec();
                    rest.extend_from_slice(b"hello");
                    rest
                }],
                Some(sa("[2001:db8::7]:40000")),
            ),
            (vec![b"PROXY UNKNOWN\r\nhello".to_vec()], None),
        ];
        for (pieces, expected) in cases {
            let client = tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.set_nodelay(true).unwrap();
                for piece in pieces {
                    s.write_all(&piece).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                s.shutdown().await.unwrap();
            });
            let (mut stream, _) = listener.accept().await.unwrap();
            assert_eq!(
                read_header(&mut stream, TIMEOUT).await.unwrap().source,
                expected
            );
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"hello");
            client.await.unwrap();
        }
    }
}
