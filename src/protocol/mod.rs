//! The wire: frames, messages, version and caps. Nothing else in ferry knows the byte layout.
//!
//! A session is one TLS 1.3 connection with ALPN `ferry/1`. Both directions carry frames:
//! a 4-byte big-endian length, then one kind byte, then the payload. Kind 1 is a JSON
//! message, kind 2 is a chunk of file data. See `docs/PROTOCOL.md` for the full contract.

mod frame;
mod message;

pub use crate::domain::{
    Entry, EntryKind, MAX_NAME_LEN, MAX_PASSWORD_LEN, MAX_PATH_DEPTH, MAX_PATH_LEN, MAX_USER_LEN,
    UsageReport as Usage, hex_digest,
};
pub use frame::{
    DATA_CHUNK_LEN, Frame, FrameError, FrameReader, FrameWriter, KIND_DATA, KIND_MESSAGE,
    MAX_DATA_LEN, MAX_FRAME_LEN, MAX_FRAME_LEN_PRE_AUTH, MAX_MESSAGE_LEN, decode_frame,
};
pub use message::{
    ClientMessage, ErrorCode, ServerMessage, WireError, decode_client_message,
    decode_server_message,
};

/// The ALPN protocol id both ends must agree on. A connection without it is dropped.
pub const ALPN: &[u8] = b"ferry/1";

/// The protocol version this build speaks (the `version` field of the hello exchange).
pub const PROTOCOL_VERSION: u32 = 1;

/// Entries per `entries` page of a directory listing.
pub const LIST_PAGE_LEN: usize = 512;

/// Default TCP port of a ferry server.
pub const DEFAULT_PORT: u16 = 7443;
