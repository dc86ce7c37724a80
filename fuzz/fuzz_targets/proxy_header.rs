//! `server::proxy::parse`, the PROXY v1/v2 header parser (ferry's framing and policy around the
//! `ppp` crate), on arbitrary bytes. Byte 0 is the size of the pieces the reader receives
//! (0: as much as it asks for), the rest is the stream.
//!
//! Checked besides "no panic":
//! - an accepted header lies within the input and within `MAX_HEADER_LEN`, parses the same on
//!   its own (trailing bytes are never looked at), names a source exactly when it names a
//!   destination, and names none when it is the balancer's own (`local`);
//! - every proper prefix of an accepted header is `Incomplete(n)` with `n >= 1` and
//!   `prefix + n <= header length`: the reader, which asks for no more than `n`, never reads
//!   a byte past the header (the TLS ClientHello that follows belongs to the TLS acceptor);
//! - `Incomplete(n)` never asks beyond `MAX_HEADER_LEN` in total;
//! - a reader fed in pieces of any size ends exactly where the parse of the whole input does,
//!   with the same header or the same kind of error.
#![no_main]

use ferry::server::proxy::{MAX_HEADER_LEN, Parsed, ProxyError, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, stream)) = data.split_first() else {
        return;
    };
    let whole = parse(stream);
    match &whole {
        Ok(Parsed::Complete { header, len }) => {
            let len = *len;
            assert!(len >= 1 && len <= stream.len() && len <= MAX_HEADER_LEN);
            match parse(&stream[..len]) {
                Ok(Parsed::Complete { header: h, len: l }) => {
                    assert_eq!((h, l), (*header, len), "trailing bytes changed the header")
                }
                other => panic!("the header alone parses as {other:?}"),
            }
            assert_eq!(header.source.is_some(), header.destination.is_some());
            assert!(!(header.local && header.source.is_some()));
            for k in 0..len {
                match parse(&stream[..k]) {
                    Ok(Parsed::Incomplete(n)) => {
                        assert!(n >= 1 && k + n <= len, "prefix {k} of {len} asks for {n}")
                    }
                    other => panic!("prefix {k} of an accepted header: {other:?}"),
                }
            }
        }
        Ok(Parsed::Incomplete(n)) => {
            assert!(*n >= 1 && stream.len() + n <= MAX_HEADER_LEN, "asks for {n}");
        }
        Err(_) => {}
    }

    // The reader's loop, without a socket: ask for what `parse` needs, get at most `piece`.
    let mut filled = 0;
    let outcome = loop {
        match parse(&stream[..filled]) {
            Ok(Parsed::Incomplete(need)) => {
                let step = if piece == 0 { need } else { need.min(usize::from(piece)) };
                if filled + step > stream.len() {
                    break None; // the stream ends inside the header
                }
                filled += step;
            }
            other => break Some(other),
        }
    };
    match (outcome, whole) {
        (Some(Ok(Parsed::Complete { header, len })), Ok(Parsed::Complete { header: h, len: l })) => {
            assert_eq!((header, len), (h, l));
            assert_eq!(filled, len, "the reader read past the header");
        }
        (Some(Err(a)), Err(b)) => assert_eq!(kind(&a), kind(&b), "{a} / {b}"),
        (None, Ok(Parsed::Incomplete(_))) => {}
        // A cut stream may still be refused early, when the bytes so far cannot be a header;
        // the whole parse sees the same bytes and more, so it refuses too.
        (None, Err(_)) => {}
        (a, b) => panic!("in pieces of {piece}: {a:?}; whole: {b:?}"),
    }
});

fn kind(e: &ProxyError) -> std::mem::Discriminant<ProxyError> {
    std::mem::discriminant(e)
}
