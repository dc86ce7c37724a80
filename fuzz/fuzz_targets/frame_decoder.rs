//! `decode_frame` against a reference model of `docs/PROTOCOL.md` §2, and the JSON decoders.
//!
//! Input: byte 0 picks the cap (see [`Cap::from_byte`]), byte 1 the size of the pieces the
//! stream arrives in (0: all at once), then for a custom cap 4 big-endian bytes of it, then the
//! byte stream. Every call of `decode_frame` is compared with [`reference`], which gives the
//! checks their timing: a bad length is fatal as soon as the 4 length bytes are there, a bad
//! kind as soon as the kind byte is. Checked on every call:
//! - a frame is exactly what the reference finds, so its payload is within the caps;
//! - `Ok(None)` leaves the buffered bytes alone, and grows the buffer only for a frame that
//!   passed the caps;
//! - an error leaves the buffer's capacity alone and ends the stream;
//! - feeding the stream in pieces gives the same frames and the same end as feeding it whole.
//!
//! Every message payload goes to both JSON decoders (no panic), and a decoded message,
//! serialised again with serde_json, decodes to an equal value.
#![no_main]

use bytes::BytesMut;
use ferry::protocol::{
    ClientMessage, Frame, FrameError, KIND_DATA, KIND_MESSAGE, MAX_DATA_LEN, MAX_FRAME_LEN,
    MAX_FRAME_LEN_PRE_AUTH, MAX_MESSAGE_LEN, decode_client_message, decode_frame,
    decode_server_message,
};
use libfuzzer_sys::fuzz_target;

/// The 4 length bytes.
const HEADER_LEN: usize = 4;

fuzz_target!(|data: &[u8]| run(data));

#[derive(Clone, Copy)]
enum Cap {
    Fixed(usize),
    /// Like the server: the pre-login cap until a `login` message, then the post-login cap.
    SwitchAtLogin,
}

impl Cap {
    /// Returns the cap and how many more input bytes it used.
    fn from_input(data: &[u8]) -> (Cap, usize) {
        match data.first().map(|b| b % 4) {
            None | Some(0) => (Cap::Fixed(MAX_FRAME_LEN_PRE_AUTH), 0),
            Some(1) => (Cap::Fixed(MAX_FRAME_LEN), 0),
            Some(2) => (Cap::SwitchAtLogin, 0),
            Some(_) => match data.get(1..5) {
                // Any value, including 0 and caps above the per-kind caps.
                Some(b) => (
                    Cap::Fixed(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize),
                    4,
                ),
                None => (Cap::Fixed(0), 0),
            },
        }
    }

    fn initial(self) -> usize {
        match self {
            Cap::Fixed(cap) => cap,
            Cap::SwitchAtLogin => MAX_FRAME_LEN_PRE_AUTH,
        }
    }
}

/// What the protocol says the front of a buffer is.
#[derive(Debug, PartialEq, Eq)]
enum Expected<'a> {
    Incomplete,
    Frame(Frame),
    /// Fatal; the `&str` names the rule.
    Error(&'a str),
}

/// The frame rules, written down separately from `decode_frame`.
fn reference(buf: &[u8], cap: usize) -> Expected<'static> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Expected::Incomplete;
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len == 0 {
        return Expected::Error("zero length");
    }
    if len > cap {
        return Expected::Error("over the cap");
    }
    let Some(&kind) = buf.get(HEADER_LEN) else {
        return Expected::Incomplete;
    };
    let payload_len = len - 1;
    let kind_ok = match kind {
        KIND_MESSAGE => payload_len <= MAX_MESSAGE_LEN,
        KIND_DATA => payload_len <= MAX_DATA_LEN,
        _ => return Expected::Error("unknown kind"),
    };
    if !kind_ok {
        return Expected::Error("over the kind's cap");
    }
    let Some(payload) = buf.get(HEADER_LEN + 1..HEADER_LEN + len) else {
        return Expected::Incomplete;
    };
    let payload = bytes::Bytes::copy_from_slice(payload);
    Expected::Frame(if kind == KIND_MESSAGE {
        Frame::Message(payload)
    } else {
        Frame::Data(payload)
    })
}

/// How a stream ended: the frames decoded, then the buffer left over or a fatal error.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Frame>,
    /// `None` after an error; otherwise the bytes left in the buffer (an incomplete frame).
    rest: Option<Vec<u8>>,
}

fn run(data: &[u8]) {
    let (cap, used) = Cap::from_input(data);
    let piece = data.get(1).copied().unwrap_or(0) as usize;
    let stream = data.get(2 + used..).unwrap_or(&[]);

    // Straight into the JSON decoders too: the quickest way for the fuzzer to reach serde.
    check_message(stream);

    let whole = decode_stream(stream, cap, stream.len().max(1));
    if piece != 0 {
        let pieces = decode_stream(stream, cap, piece);
        assert_eq!(
            whole, pieces,
            "feeding in pieces of {piece} changed the result"
        );
    }
}

/// Feeds `stream` into a buffer `piece` bytes at a time, decoding after each piece the way
/// `FrameReader` does, and checks every call against the reference.
fn decode_stream(stream: &[u8], cap_mode: Cap, piece: usize) -> Outcome {
    let mut cap = cap_mode.initial();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    // The buffer always holds `stream[consumed..fed]`.
    let (mut consumed, mut fed) = (0, 0);
    loop {
        let before = &stream[consumed..fed];
        assert_eq!(&buf[..], before);
        let capacity_before = buf.capacity();
        let expected = reference(before, cap);
        let got = decode_frame(&mut buf, cap);
        match (got, expected) {
            (Ok(Some(frame)), Expected::Frame(want)) => {
                assert_eq!(frame, want);
                let (payload_len, kind_cap) = match &frame {
                    Frame::Message(p) => (p.len(), MAX_MESSAGE_LEN),
                    Frame::Data(p) => (p.len(), MAX_DATA_LEN),
                };
                assert!(payload_len < cap && payload_len <= kind_cap);
                // Exactly this frame was consumed (checked at the top of the next turn).
                consumed += HEADER_LEN + 1 + payload_len;
                if let Frame::Message(payload) = &frame {
                    let msg = check_message(payload);
                    if let (Cap::SwitchAtLogin, Some(ClientMessage::Login { .. })) = (cap_mode, msg)
                    {
                        cap = MAX_FRAME_LEN;
                    }
                }
                frames.push(frame);
            }
            (Ok(None), Expected::Incomplete) => {
                assert_eq!(&buf[..], before, "Ok(None) changed the buffer");
                if buf.capacity() > capacity_before {
                    // Grown for the rest of a frame that passed both caps, and no more than
                    // the allocator's usual doubling of what that frame needs.
                    assert!(before.len() > HEADER_LEN);
                    let len = u32::from_be_bytes([before[0], before[1], before[2], before[3]]);
                    let need = HEADER_LEN + len as usize;
                    assert!(len as usize <= cap);
                    assert!(len as usize <= MAX_DATA_LEN + 1);
                    assert!(
                        buf.capacity() <= 2 * need.max(capacity_before),
                        "grew to {} for a frame of {need}",
                        buf.capacity()
                    );
                }
                if fed == stream.len() {
                    return Outcome {
                        frames,
                        rest: Some(before.to_vec()),
                    };
                }
                let next = (fed + piece).min(stream.len());
                buf.extend_from_slice(&stream[fed..next]);
                fed = next;
            }
            (Err(e), Expected::Error(_)) => {
                assert!(matches!(
                    e,
                    FrameError::TooLarge { .. } | FrameError::Malformed(_)
                ));
                assert_eq!(buf.capacity(), capacity_before, "an error grew the buffer");
                return Outcome { frames, rest: None };
            }
            (got, expected) => panic!(
                "decode_frame gave {got:?}, the protocol says {expected:?} (cap {cap}, buffer {} \
                 bytes)",
                before.len()
            ),
        }
    }
}

/// Both decoders on `payload`: no panic, and what decodes survives a serde_json round trip.
fn check_message(payload: &[u8]) -> Option<ClientMessage> {
    if let Ok(msg) = decode_server_message(payload) {
        let json = serde_json::to_vec(&msg).expect("a server message serialises");
        let again = decode_server_message(&json).expect("a re-serialised server message decodes");
        assert_eq!(msg, again);
    }
    let msg = decode_client_message(payload).ok()?;
    let json = serde_json::to_vec(&msg).expect("a client message serialises");
    let again = decode_client_message(&json).expect("a re-serialised client message decodes");
    assert_eq!(msg, again);
    // The accessors cover every variant.
    let _ = (msg.id(), msg.op());
    Some(msg)
}
