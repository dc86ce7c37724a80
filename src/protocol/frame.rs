//! Length-delimited frames, with caps checked before anything is allocated.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frame kind of a JSON message.
pub const KIND_MESSAGE: u8 = 1;
/// Frame kind of a chunk of file data.
pub const KIND_DATA: u8 = 2;

/// Length of the frame header: a big-endian `u32` that counts the kind byte and the payload.
const HEADER_LEN: usize = 4;

/// Largest frame accepted before login: hello and login messages are small.
pub const MAX_FRAME_LEN_PRE_AUTH: usize = 8 * 1024;

/// Largest data payload in one frame.
pub const MAX_DATA_LEN: usize = 1024 * 1024;

/// Largest frame accepted after login (a full data chunk plus its kind byte).
pub const MAX_FRAME_LEN: usize = MAX_DATA_LEN + 1;

/// Largest JSON message accepted after login. A path is at most 4 KiB; JSON escaping can
/// inflate it six times, and a listing page carries up to `LIST_PAGE_LEN` names.
pub const MAX_MESSAGE_LEN: usize = 512 * 1024;

/// Size of the data chunks ferry itself sends.
pub const DATA_CHUNK_LEN: usize = 256 * 1024;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON message (not yet parsed).
    Message(Bytes),
    /// A chunk of file data.
    Data(Bytes),
}

/// Why a frame could not be read. Every variant ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer claimed a frame longer than the current cap.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Length the peer claimed.
        len: usize,
        /// Cap in force.
        max: usize,
    },
    /// A frame with a zero length or an unknown kind byte.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// The connection ended in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,
    /// The transport failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame (incomplete is not invalid);
/// the length is checked against `max_len` as soon as the header is there, so a huge claimed
/// length is refused before any buffer grows for it.
pub fn decode_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len == 0 {
        return Err(FrameError::Malformed("zero-length frame"));
    }
    if len > max_len {
        return Err(FrameError::TooLarge { len, max: max_len });
    }
    let kind = if buf.len() > HEADER_LEN {
        buf[HEADER_LEN]
    } else {
        return Ok(None);
    };
    match kind {
        KIND_MESSAGE if len - 1 > MAX_MESSAGE_LEN => {
            return Err(FrameError::TooLarge {
                len,
                max: MAX_MESSAGE_LEN + 1,
            });
        }
        KIND_DATA if len - 1 > MAX_DATA_LEN => {
            return Err(FrameError::TooLarge {
                len,
                max: MAX_DATA_LEN + 1,
            });
        }
        KIND_MESSAGE | KIND_DATA => {}
        _ => return Err(FrameError::Malformed("unknown frame kind")),
    }
    if buf.len() < HEADER_LEN + len {
        // Make room for the rest of this frame only; `len` is already within the cap.
        buf.reserve(HEADER_LEN + len - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN + 1);
    let payload = buf.split_to(len - 1).freeze();
    Ok(Some(if kind == KIND_MESSAGE {
        Frame::Message(payload)
    } else {
        Frame::Data(payload)
    }))
}

/// Reads frames from a byte stream under a cap that the owner tightens or loosens per phase.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_len: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps `inner`; frames longer than `max_len` are refused.
    pub fn new(inner: R, max_len: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(16 * 1024),
            max_len,
        }
    }

    /// Whether reading the next frame would not wait for the peer: a whole frame is
    /// buffered, or a header that reading refuses at once (so [`FrameReader::fill`] never
    /// grows the buffer for a length it will refuse).
    pub fn has_buffered_frame(&self) -> bool {
        if self.buf.len() < HEADER_LEN {
            return false;
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        len == 0 || len > self.max_len || self.buf.len() >= HEADER_LEN + len
    }

    /// Reads what the peer has sent so far into the buffer, without taking a frame out;
    /// false at the end of the stream. Cancel safe: bytes read are kept in the buffer.
    pub async fn fill(&mut self) -> Result<bool, FrameError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(64 * 1024);
        }
        Ok(self.inner.read_buf(&mut self.buf).await? != 0)
    }

    /// Changes the frame cap (e.g. after login).
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// Reads the next frame. `Ok(None)` is a clean end of stream at a frame boundary.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(frame) = decode_frame(&mut self.buf, self.max_len)? {
                return Ok(Some(frame));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 * 1024);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
        }
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives back the underlying stream (buffered bytes are dropped).
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes frames to a byte stream, coalescing header and payload into one write.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(DATA_CHUNK_LEN + 64),
        }
    }

    /// Queues a JSON message frame (not flushed).
    pub fn queue_message<T: serde::Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        let start = self.buf.len();
        self.buf.put_u32(0);
        self.buf.put_u8(KIND_MESSAGE);
        let mut w = (&mut self.buf).writer();
        serde_json::to_writer(&mut w, msg).map_err(|e| FrameError::Io(std::io::Error::other(e)))?;
        let len = self.buf.len() - start - HEADER_LEN;
        let len32 = u32::try_from(len).map_err(|_| FrameError::Malformed("message too long"))?;
        self.buf[start..start + HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
        Ok(())
    }

    /// Queues a data frame (not flushed). `data` must not be empty or exceed `MAX_DATA_LEN`.
    pub fn queue_data(&mut self, data: &[u8]) -> Result<(), FrameError> {
        if data.is_empty() || data.len() > MAX_DATA_LEN {
            return Err(FrameError::Malformed("data chunk size out of range"));
        }
        // The length fits: MAX_DATA_LEN + 1 < u32::MAX.
        self.buf.put_u32((data.len() + 1) as u32);
        self.buf.put_u8(KIND_DATA);
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Writes everything queued, then one data frame, without copying `data` into the queue
    /// (a vectored write: header and payload go to the stream as they are).
    pub async fn write_data(&mut self, data: &[u8]) -> Result<(), FrameError> {
        if data.is_empty() || data.len() > MAX_DATA_LEN {
            return Err(FrameError::Malformed("data chunk size out of range"));
        }
        // The length fits: MAX_DATA_LEN + 1 < u32::MAX.
        self.buf.put_u32((data.len() + 1) as u32);
        self.buf.put_u8(KIND_DATA);
        let (mut head, mut body) = (0, 0);
        while head < self.buf.len() || body < data.len() {
            let slices = [
                std::io::IoSlice::new(&self.buf[head..]),
                std::io::IoSlice::new(&data[body..]),
            ];
            let mut n = self.inner.write_vectored(&slices).await?;
            if n == 0 {
                return Err(FrameError::Io(std::io::ErrorKind::WriteZero.into()));
            }
            let from_head = n.min(self.buf.len() - head);
            head += from_head;
            n -= from_head;
            body += n;
        }
        self.buf.clear();
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything queued and flushes the stream.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.inner.flush().await?;
        Ok(())
    }

    /// Queues and flushes one message.
    pub async fn send_message<T: serde::Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        self.queue_message(msg)?;
        self.flush().await
    }

    /// Writes everything queued without flushing when the buffer is large.
    pub async fn write_if_large(&mut self) -> Result<(), FrameError> {
        if self.buf.len() >= DATA_CHUNK_LEN {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Flushes and shuts the stream down (TLS close_notify).
    pub async fn shutdown(&mut self) -> Result<(), FrameError> {
        self.flush().await?;
        self.inner.shutdown().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(kind);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn incomplete_is_not_invalid() {
        let whole = frame(KIND_MESSAGE, b"{\"op\":\"hello\"}");
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert!(
                decode_frame(&mut buf, 1024).unwrap().is_none(),
                "cut at {cut}"
            );
        }
        let mut buf = BytesMut::from(&whole[..]);
        let f = decode_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(f, Frame::Message(Bytes::from_static(b"{\"op\":\"hello\"}")));
        assert!(buf.is_empty());
    }

    #[test]
    fn huge_claimed_length_is_refused_without_allocating() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, KIND_DATA][..]);
        let cap_before = buf.capacity();
        let err = decode_frame(&mut buf, MAX_FRAME_LEN).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert_eq!(buf.capacity(), cap_before);
    }

    #[test]
    fn message_cap_is_tighter_than_data_cap() {
        let mut buf = BytesMut::new();
        buf.put_u32((MAX_MESSAGE_LEN + 2) as u32);
        buf.put_u8(KIND_MESSAGE);
        assert!(matches!(
            decode_frame(&mut buf, MAX_FRAME_LEN),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn zero_length_and_unknown_kind_are_malformed() {
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert!(matches!(
            decode_frame(&mut buf, 10),
            Err(FrameError::Malformed(_))
        ));
        let mut buf = BytesMut::from(&frame(9, b"x")[..]);
        assert!(matches!(
            decode_frame(&mut buf, 10),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn two_frames_in_one_buffer() {
        let mut bytes = frame(KIND_DATA, b"abc");
        bytes.extend(frame(KIND_MESSAGE, b"{}"));
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            decode_frame(&mut buf, 100).unwrap(),
            Some(Frame::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(
            decode_frame(&mut buf, 100).unwrap(),
            Some(Frame::Message(Bytes::from_static(b"{}")))
        );
        assert_eq!(decode_frame(&mut buf, 100).unwrap(), None);
    }

    #[tokio::test]
    async fn writer_and_reader_round_trip() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut w = FrameWriter::new(a);
        w.queue_data(&[7u8; 1000]).unwrap();
        w.queue_message(&serde_json::json!({"op": "x"})).unwrap();
        w.flush().await.unwrap();
        drop(w);
        let mut r = FrameReader::new(b, MAX_FRAME_LEN);
        assert_eq!(
            r.read_frame().await.unwrap(),
            Some(Frame::Data(Bytes::from(vec![7u8; 1000])))
        );
        assert!(matches!(
            r.read_frame().await.unwrap(),
            Some(Frame::Message(_))
        ));
        assert!(r.read_frame().await.unwrap().is_none());
    }

    /// `fill` (reading while a session's puts run) stops at a whole frame, and at a header
    /// that claims more than the cap: it never buffers toward a length that will be refused.
    #[tokio::test]
    async fn filling_stops_at_a_whole_frame_or_a_refused_length() {
        use tokio::io::AsyncWriteExt;
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut r = FrameReader::new(b, 1024);
        let whole = frame(KIND_DATA, &[1u8; 100]);
        a.write_all(&whole[..50]).await.unwrap();
        assert!(r.fill().await.unwrap());
        assert!(!r.has_buffered_frame(), "half a frame");
        a.write_all(&whole[50..]).await.unwrap();
        while !r.has_buffered_frame() {
            assert!(r.fill().await.unwrap());
        }
        assert!(matches!(
            r.read_frame().await.unwrap(),
            Some(Frame::Data(_))
        ));
        assert!(!r.has_buffered_frame());

        // A header past the cap: reading would fail at once, so nothing more is buffered.
        a.write_all(&[0, 0, 0x10, 0, KIND_DATA]).await.unwrap();
        a.write_all(&[0u8; 512]).await.unwrap();
        while r.buf.len() < HEADER_LEN {
            assert!(r.fill().await.unwrap());
        }
        assert!(r.has_buffered_frame());
        assert!(matches!(
            r.read_frame().await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut z = FrameReader::new(tokio::io::empty(), 1024);
        assert!(!z.fill().await.unwrap(), "end of stream");
    }
}
