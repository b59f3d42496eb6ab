//! Async frame reading and writing over any byte stream.
//!
//! [`FrameReader`] owns a `BytesMut` read buffer: it asks [`frame::check`] whether a whole frame
//! is there, reserves room for the whole frame once its head is known (one allocation per large
//! frame), and splits frames off without copying. A server that accounts for the memory a peer
//! makes it hold reads in two steps instead: [`FrameReader::read_head`] returns the head alone,
//! the server charges `header + body` bytes against its budget (or turns the frame away with
//! [`FrameReader::skip_rest`]), and [`FrameReader::read_rest`] reads the body into an allocation
//! of its own that the caller wraps (e.g. with a lease that lives as long as the bytes).
//! [`FrameWriter`] writes the head and header through a small buffer and large bodies straight
//! to the socket.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use crate::frame::{self, Frame, FrameError, FrameLimits, MessageType};

/// Most a reader allocates ahead of the bytes it has received. Frames up to this size are read
/// into one allocation.
const RESERVE_AHEAD: usize = 8 << 20;

/// What reading a frame can end in besides a frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("connection reset mid-frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    limits: FrameLimits,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, limits: FrameLimits) -> FrameReader<R> {
        Self::with_capacity(inner, limits, 64 * 1024)
    }

    /// A reader whose buffer starts at `capacity` bytes (servers holding many connections keep
    /// it small; it grows for large headers only when reading with [`FrameReader::read_rest`]).
    pub fn with_capacity(inner: R, limits: FrameLimits, capacity: usize) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(capacity),
            limits,
        }
    }

    /// Whether bytes of a frame not yet returned are buffered (a peer is mid-frame).
    pub fn is_mid_frame(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads until the next frame's head is buffered and valid, and returns it without
    /// consuming it. `Ok(None)` is a clean end of stream between frames. Follow with
    /// [`FrameReader::read_rest`] or [`FrameReader::skip_rest`].
    pub async fn read_head(&mut self) -> Result<Option<frame::FrameHead>, ReadError> {
        loop {
            match frame::check(&self.buf, &self.limits) {
                Ok(head) => return Ok(Some(head)),
                Err(FrameError::Incomplete) => {}
                Err(e) => return Err(e.into()),
            }
            if self.buf.capacity() - self.buf.len() < frame::HEAD_LEN {
                self.buf.reserve(4096);
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Reads more bytes into the buffer. `Ok(false)` is a clean end of stream between frames; an
    /// end inside a frame is [`ReadError::Truncated`].
    async fn fill(&mut self) -> Result<bool, ReadError> {
        if self.inner.read_buf(&mut self.buf).await? > 0 {
            return Ok(true);
        }
        if self.buf.is_empty() {
            Ok(false)
        } else {
            Err(ReadError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }

    /// Reads the header and body of the frame whose head [`FrameReader::read_head`] returned.
    /// The header is copied out of the read buffer; the body is read into a `Vec` of exactly
    /// `body_len` bytes of capacity (pages are touched only as bytes arrive), which `wrap` turns
    /// into the frame's `Bytes`. The read buffer never holds more than the header and what the
    /// socket delivered past the body, so nothing of a body stays pinned by the connection.
    pub async fn read_rest(
        &mut self,
        head: &frame::FrameHead,
        wrap: impl FnOnce(Vec<u8>) -> Bytes,
    ) -> Result<Frame, ReadError> {
        let header_end = frame::HEAD_LEN + head.tag_len() + head.header_len as usize;
        while self.buf.len() < header_end {
            self.buf.reserve(header_end - self.buf.len());
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(ReadError::Truncated {
                    buffered: self.buf.len(),
                });
            }
        }
        self.buf.advance(frame::HEAD_LEN);
        let tag = frame::split_tag(&mut self.buf, head);
        let header = Bytes::copy_from_slice(&self.buf[..head.header_len as usize]);
        self.buf.advance(head.header_len as usize);
        let body_len = head.body_len as usize;
        let mut body = Vec::with_capacity(body_len);
        let buffered = self.buf.len().min(body_len);
        body.extend_from_slice(&self.buf[..buffered]);
        self.buf.advance(buffered);
        while body.len() < body_len {
            let missing = body_len - body.len();
            if self.inner.read_buf(&mut (&mut body).limit(missing)).await? == 0 {
                return Err(ReadError::Truncated {
                    buffered: frame::HEAD_LEN + head.tag_len() + header.len() + body.len(),
                });
            }
        }
        if head.flags & frame::FLAG_CRC != 0 {
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&header);
            hasher.update(&body);
            let actual = hasher.finalize();
            if actual != head.crc {
                return Err(FrameError::Checksum {
                    expected: head.crc,
                    actual,
                }
                .into());
            }
        }
        Ok(Frame {
            kind: head.kind,
            flags: head.flags,
            request_id: head.request_id,
            tag,
            header,
            body: wrap(body),
        })
    }

    /// Reads past the header and body of the frame whose head [`FrameReader::read_head`]
    /// returned, holding at most one small scratch buffer (a frame turned away).
    pub async fn skip_rest(&mut self, head: &frame::FrameHead) -> Result<(), ReadError> {
        let mut left = frame::HEAD_LEN as u64 + head.rest_len();
        let buffered = (self.buf.len() as u64).min(left);
        self.buf.advance(buffered as usize);
        left -= buffered;
        let mut scratch = vec![0u8; 16 * 1024];
        while left > 0 {
            let want = scratch
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let read = self.inner.read(&mut scratch[..want]).await?;
            if read == 0 {
                return Err(ReadError::Truncated { buffered: 0 });
            }
            left -= read as u64;
        }
        Ok(())
    }

    /// Reads the next frame. `Ok(None)` is a clean end of stream between frames; a stream that
    /// ends inside a frame is [`ReadError::Truncated`]; garbage is a [`FrameError`] (the caller
    /// should log it and close the connection).
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            match frame::check(&self.buf, &self.limits) {
                Ok(head) => {
                    let needed = head.frame_len();
                    if self.buf.len() >= needed {
                        return Ok(Some(frame::parse(&mut self.buf, &self.limits)?));
                    }
                    // Room for the rest of the frame, but never more than RESERVE_AHEAD beyond
                    // what has arrived: a peer announcing a huge body and sending nothing
                    // cannot make us allocate it.
                    self.buf
                        .reserve((needed - self.buf.len()).min(RESERVE_AHEAD));
                }
                Err(FrameError::Incomplete) => {
                    if self.buf.capacity() - self.buf.len() < 4096 {
                        self.buf.reserve(64 * 1024);
                    }
                }
                Err(e) => return Err(e.into()),
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

pub struct FrameWriter<W: AsyncWrite> {
    inner: BufWriter<W>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> FrameWriter<W> {
        FrameWriter {
            inner: BufWriter::with_capacity(64 * 1024, inner),
        }
    }

    /// Writes one frame into the buffer (and large bodies straight through). Call
    /// [`FrameWriter::flush`] when no more frames are queued.
    pub async fn write_frame(&mut self, frame: &OutFrame) -> std::io::Result<()> {
        let mut head = frame::head_for(
            frame.kind,
            frame.request_id,
            &frame.header,
            &frame.body,
            frame.with_crc,
        )
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        head.flags |= frame.flags;
        self.inner.write_all(&head.encode()).await?;
        self.inner.write_all(&frame.header).await?;
        for piece in &frame.body {
            self.inner.write_all(piece).await?;
        }
        Ok(())
    }

    /// Writes a frame head and header whose body the caller writes itself (straight to the
    /// stream, after a [`FrameWriter::flush`]; e.g. with `sendfile`).
    pub async fn write_head(
        &mut self,
        head: &frame::FrameHead,
        header: &[u8],
    ) -> std::io::Result<()> {
        self.inner.write_all(&head.encode()).await?;
        self.inner.write_all(header).await
    }

    /// The stream, for writing a body directly. Flush first.
    pub fn get_ref(&self) -> &W {
        self.inner.get_ref()
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().await
    }

    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.inner.shutdown().await
    }
}

/// Writes every frame queued on `queue` until the queue closes (then shuts the stream down) or
/// a write fails (returned). Frames queued together are flushed together.
pub async fn write_queued<W: AsyncWrite + Unpin>(
    mut writer: FrameWriter<W>,
    mut queue: mpsc::Receiver<OutFrame>,
) -> std::io::Result<()> {
    while let Some(frame) = queue.recv().await {
        writer.write_frame(&frame).await?;
        while let Ok(next) = queue.try_recv() {
            writer.write_frame(&next).await?;
        }
        writer.flush().await?;
    }
    writer.shutdown().await
}

/// A frame to send: the body is kept in pieces so batches are never copied into one buffer.
#[derive(Debug, Clone)]
pub struct OutFrame {
    pub kind: MessageType,
    pub request_id: u64,
    pub header: Bytes,
    pub body: Vec<Bytes>,
    pub with_crc: bool,
    /// Flags set in the head besides [`frame::FLAG_CRC`] (e.g. [`frame::FLAG_REPLICA`]).
    pub flags: u16,
}

impl OutFrame {
    /// A frame whose header is the protobuf `message`.
    pub fn new(kind: MessageType, request_id: u64, message: &impl prost::Message) -> OutFrame {
        OutFrame {
            kind,
            request_id,
            header: Bytes::from(message.encode_to_vec()),
            body: Vec::new(),
            with_crc: true,
            flags: 0,
        }
    }

    /// Sets `flags` in the head (besides the CRC flag).
    pub fn with_flags(mut self, flags: u16) -> OutFrame {
        self.flags |= flags;
        self
    }

    pub fn with_body(mut self, body: Vec<Bytes>) -> OutFrame {
        self.body = body;
        self
    }

    /// Sends the body without a frame CRC (chunks: every batch carries its own).
    pub fn without_crc(mut self) -> OutFrame {
        self.with_crc = false;
        self
    }

    /// An error answer to request `request_id`.
    pub fn error(request_id: u64, code: crate::ErrorCode, message: impl Into<String>) -> OutFrame {
        OutFrame::new(
            MessageType::Error,
            request_id,
            &crate::pb::ErrorHeader {
                code: code as u32,
                message: message.into(),
            },
        )
    }

    pub fn body_len(&self) -> usize {
        self.body.iter().map(Bytes::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FLAG_AUTH, TAG_LEN};

    /// A tagged frame followed by an untagged one, as bytes.
    fn tagged_then_untagged() -> (Vec<u8>, [u8; TAG_LEN]) {
        let tag = [7u8; TAG_LEN];
        let body = [Bytes::from_static(b"body")];
        let mut head = frame::head_for(MessageType::PushData, 1, b"hdr", &body, true).unwrap();
        head.flags |= FLAG_AUTH;
        let mut bytes = frame::encode_head_to_vec(&head, Some(&tag), b"hdr", &body);
        bytes.extend(frame::encode_to_vec(MessageType::Ack, 2, b"a", &[], false).unwrap());
        (bytes, tag)
    }

    #[tokio::test]
    async fn read_rest_splits_off_the_tag() {
        let (bytes, tag) = tagged_then_untagged();
        let mut reader = FrameReader::with_capacity(&bytes[..], FrameLimits::default(), 16);
        let head = reader.read_head().await.unwrap().unwrap();
        assert_eq!(head.rest_len(), (TAG_LEN + 3 + 4) as u64);
        let frame = reader.read_rest(&head, Bytes::from).await.unwrap();
        assert_eq!(frame.tag, Some(tag));
        assert_eq!(
            (&frame.header[..], &frame.body[..]),
            (&b"hdr"[..], &b"body"[..])
        );
        let next = reader.read_frame().await.unwrap().unwrap();
        assert_eq!((next.request_id, next.tag), (2, None));
        assert!(reader.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn skip_rest_skips_the_tag_too() {
        let (bytes, _) = tagged_then_untagged();
        let mut reader = FrameReader::with_capacity(&bytes[..], FrameLimits::default(), 16);
        let head = reader.read_head().await.unwrap().unwrap();
        reader.skip_rest(&head).await.unwrap();
        let next = reader.read_frame().await.unwrap().unwrap();
        assert_eq!((next.request_id, &next.header[..]), (2, &b"a"[..]));
    }

    #[tokio::test]
    async fn read_frame_reads_tagged_and_untagged_frames() {
        let (bytes, tag) = tagged_then_untagged();
        let mut reader = FrameReader::new(&bytes[..], FrameLimits::default());
        let first = reader.read_frame().await.unwrap().unwrap();
        assert_eq!((first.tag, &first.body[..]), (Some(tag), &b"body"[..]));
        let second = reader.read_frame().await.unwrap().unwrap();
        assert_eq!(second.tag, None);
    }

    #[tokio::test]
    async fn a_tagged_frame_cut_inside_its_tag_is_truncated() {
        let (bytes, _) = tagged_then_untagged();
        let cut = &bytes[..frame::HEAD_LEN + TAG_LEN / 2];
        let mut reader = FrameReader::new(cut, FrameLimits::default());
        let head = reader.read_head().await.unwrap().unwrap();
        assert!(matches!(
            reader.read_rest(&head, Bytes::from).await,
            Err(ReadError::Truncated { .. })
        ));
    }
}
