//! The PROXY protocol, versions 1 and 2, as HAProxy and most TCP load balancers send it.
//!
//! With `--proxy-protocol` on, every connection must begin with a PROXY header naming the
//! client the balancer accepted; ferry then uses that address for limits, penalties and logs.
//! The TLS ClientHello follows the header immediately, so [`read_header`] reads exactly the
//! header's bytes and not one more: the pure parser [`parse`] says how many bytes it still
//! needs at the least, and the reader asks the socket for no more than that.
//!
//! # The two formats, briefly
//! - Version 1 is one text line: `PROXY TCP4 <src> <dst> <srcport> <dstport>\r\n` (or `TCP6`
//!   with IPv6 addresses), or `PROXY UNKNOWN ...\r\n` when the balancer does not know the
//!   client. The whole line, CRLF included, is at most 107 bytes.
//! - Version 2 is binary: a 12-byte signature, a version/command byte, an address
//!   family/transport byte and a big-endian 16-bit length, then that many bytes: the address
//!   block for the family, followed by type-length-value extensions (TLVs).
//!
//! # What is accepted
//! Parsing is strict: a malformed header means a broken or hostile peer (a balancer never
//! sends one), and the caller drops the connection.
//! - v1: the protocol is exactly `TCP4`, `TCP6` or `UNKNOWN`; fields are separated by single
//!   spaces; addresses must parse and belong to the named family; ports are decimal 0..=65535
//!   without sign or leading zeros; the line ends in CRLF within 107 bytes. After `UNKNOWN`
//!   the rest of the line is ignored, as the specification asks.
//! - v2: version 2; command LOCAL (health checks: the socket peer is the real one, the address
//!   block is ignored) or PROXY; family/transport one of the specification's values. TCP over
//!   IPv4 or IPv6 yields the client's address; UNSPEC and UNIX yield `None` (use the socket
//!   peer); UDP on a stream connection is refused. The length must cover the family's
//!   address block and may not exceed [`MAX_V2_PAYLOAD`]. TLVs are not interpreted, but
//!   their framing must fill the rest of the header exactly (HAProxy enforces the same);
//!   the CRC32C TLV is not verified.
//! - Anything else, a TLS ClientHello, HTTP, SSH banners or noise, is [`ProxyError::NotProxy`]:
//!   with the option on, the header is mandatory.
//!
//! A failed header says nothing certain about the client: the socket peer is normally the
//! balancer, so per-source penalties should not be charged to it (see `server::penalty`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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

/// Address block sizes of the v2 families.
const V2_INET_LEN: usize = 12;
const V2_INET6_LEN: usize = 36;
const V2_UNIX_LEN: usize = 216;

/// Why a PROXY header was refused. Every case ends the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The stream does not start with a PROXY signature (TLS, HTTP, noise, ...).
    #[error("no proxy protocol header")]
    NotProxy,
    /// A v1 header that breaks the grammar.
    #[error("malformed proxy v1 header: {0}")]
    BadV1(&'static str),
    /// A v2 header that breaks the format.
    #[error("malformed proxy v2 header: {0}")]
    BadV2(&'static str),
    /// Longer than 107 bytes (v1) or than [`MAX_V2_PAYLOAD`] after the fixed part (v2).
    #[error("proxy header too long")]
    TooLong,
    /// The whole header did not arrive within the timeout.
    #[error("timed out waiting for the proxy header")]
    Timeout,
    /// The peer closed the connection before the header was complete.
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
    /// The client's address, or `None` when the socket peer is to be used (v1 `UNKNOWN`, v2
    /// LOCAL, UNSPEC or UNIX).
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
    /// The bytes so far are a valid beginning; at least this many more (always >= 1) are
    /// needed. Reading that many more can never run past the end of a valid header.
    Incomplete(usize),
}

/// Reads and removes a PROXY header (v1 or v2) from the front of a fresh stream and returns
/// the client's real address, or `None` when the socket peer should be used (v1 `UNKNOWN`,
/// v2 LOCAL, or an address family other than TCP over IPv4/IPv6).
///
/// Never reads past the header, so the stream can be handed to the TLS acceptor afterwards.
/// `timeout` covers the whole header: a peer that trickles it in slowly is cut off on time.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyError> {
    match tokio::time::timeout(timeout, read_parsed(stream)).await {
        Ok(header) => Ok(header?.source),
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
        let n = stream.read(dst).await?;
        if n == 0 {
            return Err(ProxyError::Closed);
        }
        filled += n;
    }
}

/// Parses a PROXY header at the start of `buf`.
///
/// Returns [`Parsed::Complete`] with the header's length (bytes after it are ignored),
/// [`Parsed::Incomplete`] with a lower bound on the bytes still missing, or an error as soon
/// as the bytes so far cannot begin a valid header. Pure and total: any input gives an answer,
/// never a panic.
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

// ---------------------------------------------------------------------------------------------
// Version 1

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Tcp4,
    Tcp6,
}

impl Family {
    /// Shortest text of each field: source, destination, source port, destination port.
    fn min_lens(self) -> [usize; 4] {
        match self {
            Family::Tcp4 => [7, 7, 1, 1], // "0.0.0.0"
            Family::Tcp6 => [2, 2, 1, 1], // "::"
        }
    }

    /// Longest text of an address field (IPv6 with an embedded dotted quad).
    fn max_addr_len(self) -> usize {
        match self {
            Family::Tcp4 => 15,
            Family::Tcp6 => 45,
        }
    }

    fn addr_char(self, b: u8) -> bool {
        match self {
            Family::Tcp4 => b.is_ascii_digit() || b == b'.',
            Family::Tcp6 => b.is_ascii_hexdigit() || b == b':' || b == b'.',
        }
    }

    fn parse_addr(self, field: &[u8]) -> Option<IpAddr> {
        let text = std::str::from_utf8(field).ok()?;
        Some(match self {
            Family::Tcp4 => IpAddr::V4(text.parse::<Ipv4Addr>().ok()?),
            Family::Tcp6 => IpAddr::V6(text.parse::<Ipv6Addr>().ok()?),
        })
    }

    /// The bytes a TCP header needs after the protocol name: four fields, a space before each,
    /// and the CRLF.
    fn min_after_proto(self) -> usize {
        self.min_lens().iter().map(|m| m + 1).sum::<usize>() + 2
    }
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    // The caller checked that `buf` begins like V1_PREFIX.
    let Some(rest) = buf.get(V1_PREFIX.len()..) else {
        return Ok(Parsed::Incomplete(V1_MIN_LEN - buf.len()));
    };
    // Bytes beyond the longest possible header are never part of it.
    let rest = rest.get(..V1_MAX_LEN - V1_PREFIX.len()).unwrap_or(rest);
    match rest.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(i) => {
            let end = V1_PREFIX.len() + i; // index of the CR in `buf`
            if end + 2 > V1_MAX_LEN {
                return Err(ProxyError::TooLong);
            }
            if rest.get(i) == Some(&b'\n') {
                return Err(ProxyError::BadV1("line feed without carriage return"));
            }
            let header = parse_v1_line(rest.get(..i).unwrap_or_default())?;
            match rest.get(i + 1) {
                None => Ok(Parsed::Incomplete(1)),
                Some(b'\n') => Ok(Parsed::Complete {
                    header,
                    len: end + 2,
                }),
                Some(_) => Err(ProxyError::BadV1("carriage return without line feed")),
            }
        }
        None => {
            let have = V1_PREFIX.len() + rest.len();
            if have >= V1_MAX_LEN {
                return Err(ProxyError::TooLong);
            }
            let need = v1_needed(rest)?;
            if have + need > V1_MAX_LEN {
                return Err(ProxyError::TooLong);
            }
            Ok(Parsed::Incomplete(need))
        }
    }
}

/// Parses a complete v1 line: everything between `PROXY ` and the CRLF.
fn parse_v1_line(line: &[u8]) -> Result<Header, ProxyError> {
    let mut fields = line.split(|&b| b == b' ');
    let family = match fields.next().unwrap_or_default() {
        // The specification asks receivers to ignore whatever follows UNKNOWN.
        b"UNKNOWN" => {
            return Ok(Header {
                version: Version::V1,
                source: None,
                destination: None,
            });
        }
        b"TCP4" => Family::Tcp4,
        b"TCP6" => Family::Tcp6,
        _ => return Err(ProxyError::BadV1("unknown protocol")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(ProxyError::BadV1("wrong number of fields"));
    };
    let (Some(src), Some(dst)) = (family.parse_addr(src), family.parse_addr(dst)) else {
        return Err(ProxyError::BadV1("invalid address for the protocol"));
    };
    let sport = parse_port(sport).ok_or(ProxyError::BadV1("invalid port"))?;
    let dport = parse_port(dport).ok_or(ProxyError::BadV1("invalid port"))?;
    Ok(Header {
        version: Version::V1,
        source: Some(SocketAddr::new(src, sport)),
        destination: Some(SocketAddr::new(dst, dport)),
    })
}

/// A decimal port, 0..=65535, no sign, no leading zeros.
fn parse_port(field: &[u8]) -> Option<u16> {
    if !port_prefix_ok(field) || field.is_empty() {
        return None;
    }
    u16::try_from(port_value(field)).ok()
}

/// Whether `field` can begin a valid port: digits only, no leading zero, at most 65535 so far
/// (more digits only make it larger).
fn port_prefix_ok(field: &[u8]) -> bool {
    field.len() <= 5
        && field.iter().all(u8::is_ascii_digit)
        && !(field.len() > 1 && field.first() == Some(&b'0'))
        && port_value(field) <= u32::from(u16::MAX)
}

/// The value of up to five ASCII digits.
fn port_value(digits: &[u8]) -> u32 {
    digits
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d.wrapping_sub(b'0')))
}

/// For a v1 line that has no CR or LF yet: checks that it can still become valid and returns
/// the fewest bytes any valid completion needs.
fn v1_needed(rest: &[u8]) -> Result<usize, ProxyError> {
    let mut fields = rest.split(|&b| b == b' ');
    let proto = fields.next().unwrap_or_default();
    let Some(mut current) = fields.next() else {
        // Still inside the protocol name.
        if b"UNKNOWN".starts_with(proto) {
            return Ok(b"UNKNOWN".len() - proto.len() + 2);
        }
        return match proto {
            b"TCP4" => Ok(Family::Tcp4.min_after_proto()),
            b"TCP6" => Ok(Family::Tcp6.min_after_proto()),
            // A prefix of both; TCP6 allows the shorter completion.
            _ if b"TCP".starts_with(proto) => Ok(4 - proto.len() + Family::Tcp6.min_after_proto()),
            _ => Err(ProxyError::BadV1("unknown protocol")),
        };
    };
    let family = match proto {
        b"UNKNOWN" => return Ok(2),
        b"TCP4" => Family::Tcp4,
        b"TCP6" => Family::Tcp6,
        _ => return Err(ProxyError::BadV1("unknown protocol")),
    };
    // Fields before the last one are complete and must be valid; the last may be partial.
    let mut index = 0;
    for next in fields {
        let ok = if index < 2 {
            family.parse_addr(current).is_some()
        } else {
            parse_port(current).is_some()
        };
        if !ok {
            return Err(ProxyError::BadV1("invalid field"));
        }
        index += 1;
        if index >= 4 {
            return Err(ProxyError::BadV1("wrong number of fields"));
        }
        current = next;
    }
    let plausible = if index < 2 {
        current.len() <= family.max_addr_len() && current.iter().all(|&b| family.addr_char(b))
    } else {
        port_prefix_ok(current)
    };
    if !plausible {
        return Err(ProxyError::BadV1("invalid field"));
    }
    let mins = family.min_lens();
    let this = mins
        .get(index)
        .map_or(0, |m| m.saturating_sub(current.len()));
    let later: usize = mins.iter().skip(index + 1).map(|m| m + 1).sum();
    Ok(this + later + 2)
}

// ---------------------------------------------------------------------------------------------
// Version 2

/// What the address block of a v2 PROXY command holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Unspec,
    Inet,
    Inet6,
    Unix,
}

impl Block {
    /// The family/transport byte, restricted to the values the specification defines.
    fn from_byte(b: u8) -> Result<Block, ProxyError> {
        Ok(match b {
            0x00 => Block::Unspec,
            0x11 => Block::Inet,
            0x21 => Block::Inet6,
            0x31 | 0x32 => Block::Unix,
            0x12 | 0x22 => return Err(ProxyError::BadV2("udp addresses on a tcp connection")),
            _ => return Err(ProxyError::BadV2("unknown address family or transport")),
        })
    }

    fn len(self) -> usize {
        match self {
            Block::Unspec => 0,
            Block::Inet => V2_INET_LEN,
            Block::Inet6 => V2_INET6_LEN,
            Block::Unix => V2_UNIX_LEN,
        }
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    // The caller checked the signature as far as `buf` goes. Check each fixed byte as soon as
    // it arrives, so that junk is refused without waiting for more.
    let local = match buf.get(12) {
        None => None,
        Some(&ver_cmd) => {
            if ver_cmd >> 4 != 2 {
                return Err(ProxyError::BadV2("unsupported version"));
            }
            match ver_cmd & 0x0f {
                0 => Some(true),
                1 => Some(false),
                _ => return Err(ProxyError::BadV2("unknown command")),
            }
        }
    };
    // LOCAL ignores the family byte entirely, as the specification says.
    let block = match (local, buf.get(13)) {
        (Some(false), Some(&fam)) => Some(Block::from_byte(fam)?),
        _ => None,
    };
    let Some(&[.., len_hi, len_lo]) = buf.first_chunk::<V2_FIXED_LEN>() else {
        return Ok(Parsed::Incomplete(V2_FIXED_LEN - buf.len()));
    };
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if len > MAX_V2_PAYLOAD {
        return Err(ProxyError::TooLong);
    }
    if len < block.map_or(0, Block::len) {
        return Err(ProxyError::BadV2("length too short for the address family"));
    }
    let total = V2_FIXED_LEN + len;
    let Some(payload) = buf.get(V2_FIXED_LEN..total) else {
        return Ok(Parsed::Incomplete(total - buf.len()));
    };
    let short = || ProxyError::BadV2("length too short for the address family");
    let pair = match block {
        // LOCAL (block is None): a balancer's own health check; use the socket's endpoints.
        // UNSPEC: the balancer does not know the client; its bytes are opaque to us.
        None | Some(Block::Unspec) => None,
        Some(block) => {
            check_tlvs(payload.get(block.len()..).unwrap_or_default())?;
            match block {
                Block::Inet => Some(addr_pair::<4>(payload).ok_or_else(short)?),
                Block::Inet6 => Some(addr_pair::<16>(payload).ok_or_else(short)?),
                // A UNIX socket path says nothing useful about the client for limits.
                Block::Unix | Block::Unspec => None,
            }
        }
    };
    let (source, destination) = pair.unzip();
    Ok(Parsed::Complete {
        header: Header {
            version: Version::V2,
            source,
            destination,
        },
        len: total,
    })
}

/// Source and destination from a v2 address block: both addresses (`N` bytes each, network
/// order), then both ports.
fn addr_pair<const N: usize>(block: &[u8]) -> Option<(SocketAddr, SocketAddr)>
where
    IpAddr: From<[u8; N]>,
{
    let (src, rest) = block.split_first_chunk::<N>()?;
    let (dst, rest) = rest.split_first_chunk::<N>()?;
    let &[sp0, sp1, dp0, dp1] = rest.first_chunk::<4>()?;
    Some((
        SocketAddr::new(IpAddr::from(*src), u16::from_be_bytes([sp0, sp1])),
        SocketAddr::new(IpAddr::from(*dst), u16::from_be_bytes([dp0, dp1])),
    ))
}

/// Checks that the TLVs (type: 1 byte, length: 2 bytes big-endian, value) fill `tlvs`
/// exactly. Their contents are not interpreted.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyError> {
    while !tlvs.is_empty() {
        let Some(&[_kind, len_hi, len_lo]) = tlvs.first_chunk::<3>() else {
            return Err(ProxyError::BadV2("truncated tlv"));
        };
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        tlvs = tlvs
            .get(3 + len..)
            .ok_or(ProxyError::BadV2("tlv longer than the header"))?;
    }
    Ok(())
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
        b.extend_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
        b.extend_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
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
        max.extend(tlv(0x04, &vec![0; MAX_V2_PAYLOAD - V2_INET_LEN - 3]));
        let mut unix = vec![0u8; V2_UNIX_LEN];
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
            (b"PROXY UNKNOWN whatever \x01\xff  x\r\n".to_vec(), None),
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
        // A TCP6 line that cannot fit: refused before the limit is reached.
        let wide = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 \
                     ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        assert!(matches!(parse(wide), Err(ProxyError::TooLong)));
    }

    /// Junk is refused as soon as it cannot be a header, not after 107 bytes.
    #[test]
    fn v1_fails_early() {
        assert_bad_v1(&[
            &b"PROXY X"[..],
            b"PROXY TCP5",
            b"PROXY TCP4 1.2.3.4:",
            b"PROXY TCP4 ::1",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 00",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 70000",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 ",
            b"PROXY TCP4 1.2.3.4  ",
            b"PROXY TCP6 ::g",
            b"PROXY UNKNOWNX",
        ]);
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
            assert_eq!(read_header(&mut reader, TIMEOUT).await.unwrap(), source);
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
                assert_eq!(read_header(&mut reader, TIMEOUT).await.unwrap(), source);
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
        let mut empty: &[u8] = b"";
        assert!(matches!(
            read_header(&mut empty, TIMEOUT).await,
            Err(ProxyError::Closed)
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
            assert_eq!(read_header(&mut stream, TIMEOUT).await.unwrap(), expected);
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"hello");
            client.await.unwrap();
        }
    }
}
