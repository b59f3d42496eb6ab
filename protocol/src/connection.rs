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
//!
//! On an authenticated connection, once the `Hello`/`Welcome` handshake has run, the writer is
//! given the session's [`Sealer`] ([`FrameWriter::set_sealer`]) and the reader its [`Opener`]
//! ([`FrameReader::set_opener`]). From then on every frame written is flagged
//! [`frame::FLAG_AUTH`] and tagged, and every frame read must carry a tag that verifies, in
//! order, or the read fails with [`ReadError::Auth`] (close the connection). Without them,
//! frames are read and written exactly as before.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use crate::auth::{AuthError, Opener, Sealer};
use crate::frame::{self, Frame, FrameError, FrameLimits, MessageType, TAG_LEN};

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
    /// A frame of an authenticated session is untagged or fails its tag.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// Buffers for large frame bodies, taken again once every `Bytes` of the body they held is
/// dropped. A reader fetches chunks of megabytes one after another; the `sluice` binary's
/// allocator gives blocks of 2 MiB or more back to the system as they are freed, so without
/// reuse every chunk was read into fresh pages, and zeroing them cost the reading client more
/// CPU than decoding the chunk. At most `keep` buffers of up to `largest` bytes wait here.
#[derive(Debug)]
pub struct BodyPool {
    free: std::sync::Mutex<Vec<Vec<u8>>>,
    keep: usize,
    largest: usize,
}

impl BodyPool {
    pub const fn new(keep: usize, largest: usize) -> BodyPool {
        BodyPool {
            free: std::sync::Mutex::new(Vec::new()),
            keep,
            largest,
        }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty vector with room for `len` bytes: a waiting one if one fits, with room for at
    /// most a quarter more (about what the allocator rounds a block of that size up to), else a
    /// new one.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut free = self.free();
        let fits = |body: &Vec<u8>| (len..=len + len / 4).contains(&body.capacity());
        match free.iter().position(fits) {
            Some(i) => free.swap_remove(i),
            None => Vec::with_capacity(len),
        }
    }

    /// `body` as `Bytes` that give the vector back to this pool when the last of them drops.
    pub fn wrap(&'static self, body: Vec<u8>) -> Bytes {
        Bytes::from_owner(PooledBody { body, pool: self })
    }

    /// How many buffers wait to be taken.
    pub fn waiting(&self) -> usize {
        self.free().len()
    }
}

/// A body read into a [`BodyPool`]'s vector.
struct PooledBody {
    body: Vec<u8>,
    pool: &'static BodyPool,
}

impl AsRef<[u8]> for PooledBody {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.body.capacity() > self.pool.largest {
            return;
        }
        let mut free = self.pool.free();
        if free.len() < self.pool.keep {
            let mut body = std::mem::take(&mut self.body);
            body.clear();
            free.push(body);
        }
    }
}

pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    limits: FrameLimits,
    opener: Option<Opener>,
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
            opener: None,
        }
    }

    /// From the next frame on, requires every frame to carry a tag that `opener` verifies.
    pub fn set_opener(&mut self, opener: Opener) {
        self.opener = Some(opener);
    }

    /// Whether frames read are checked by a session's [`Opener`].
    pub fn is_authenticated(&self) -> bool {
        self.opener.is_some()
    }

    /// Checks a frame's tag with the session's opener, if there is one.
    fn open(
        &mut self,
        head: &frame::FrameHead,
        tag: Option<&[u8; TAG_LEN]>,
        header: &[u8],
    ) -> Result<(), ReadError> {
        match &mut self.opener {
            Some(opener) => Ok(opener.open(head, tag, header)?),
            None => Ok(()),
        }
    }

    /// Reads the tag and header of the frame whose head is buffered, consuming the head.
    async fn read_tag_and_header(
        &mut self,
        head: &frame::FrameHead,
    ) -> Result<(Option<[u8; TAG_LEN]>, Bytes), ReadError> {
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
        Ok((tag, header))
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
    /// With an [`Opener`], the tag is checked before a byte of the body is read.
    pub async fn read_rest(
        &mut self,
        head: &frame::FrameHead,
        wrap: impl FnOnce(Vec<u8>) -> Bytes,
    ) -> Result<Frame, ReadError> {
        self.read_rest_into(head, Vec::with_capacity, wrap).await
    }

    /// Like [`FrameReader::read_rest`], reading the body into the empty vector `alloc` returns
    /// for the body's length (e.g. one of a [`BodyPool`]). `alloc` runs only once the tag and
    /// header are checked.
    pub async fn read_rest_into(
        &mut self,
        head: &frame::FrameHead,
        alloc: impl FnOnce(usize) -> Vec<u8>,
        wrap: impl FnOnce(Vec<u8>) -> Bytes,
    ) -> Result<Frame, ReadError> {
        let (tag, header) = self.read_tag_and_header(head).await?;
        self.open(head, tag.as_ref(), &header)?;
        let body_len = head.body_len as usize;
        let mut body = alloc(body_len);
        body.clear();
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
    /// returned, holding at most one small scratch buffer (a frame turned away). With an
    /// [`Opener`], the tag and header are read and checked first, so the session's sequence
    /// stays in step with the peer's and a forged frame still fails.
    pub async fn skip_rest(&mut self, head: &frame::FrameHead) -> Result<(), ReadError> {
        let mut left = frame::HEAD_LEN as u64 + head.rest_len();
        if self.opener.is_some() {
            let (tag, header) = self.read_tag_and_header(head).await?;
            self.open(head, tag.as_ref(), &header)?;
            left = u64::from(head.body_len);
        }
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
                        let frame = frame::parse(&mut self.buf, &self.limits)?;
                        self.open(&head, frame.tag.as_ref(), &frame.header)?;
                        return Ok(Some(frame));
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
    sealer: Option<Sealer>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> FrameWriter<W> {
        FrameWriter {
            inner: BufWriter::with_capacity(64 * 1024, inner),
            sealer: None,
        }
    }

    /// From the next frame on, flags every frame [`frame::FLAG_AUTH`] and tags it with `sealer`.
    pub fn set_sealer(&mut self, sealer: Sealer) {
        self.sealer = Some(sealer);
    }

    /// Whether frames written are tagged by a session's [`Sealer`].
    pub fn is_authenticated(&self) -> bool {
        self.sealer.is_some()
    }

    /// Writes a head, its tag when sealing, and the header.
    async fn write_sealed(
        &mut self,
        mut head: frame::FrameHead,
        header: &[u8],
    ) -> std::io::Result<()> {
        match &mut self.sealer {
            Some(sealer) => {
                let tag = sealer.seal(&mut head, header);
                self.inner.write_all(&head.encode()).await?;
                self.inner.write_all(&tag).await?;
            }
            None => self.inner.write_all(&head.encode()).await?,
        }
        self.inner.write_all(header).await
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
        self.write_sealed(head, &frame.header).await?;
        for piece in &frame.body {
            self.inner.write_all(piece).await?;
        }
        Ok(())
    }

    /// Writes a frame head and header whose body the caller writes itself (straight to the
    /// stream, after a [`FrameWriter::flush`]; e.g. with `sendfile`). When sealing, the head is
    /// flagged and tagged here; the body is not covered by the tag.
    pub async fn write_head(
        &mut self,
        head: &frame::FrameHead,
        header: &[u8],
    ) -> std::io::Result<()> {
        self.write_sealed(*head, header).await
    }

    /// Writes body bytes of a frame whose head went out with [`FrameWriter::write_head`]
    /// (through the buffer; pieces larger than it go straight to the stream).
    pub async fn write_body(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(bytes).await
    }

    /// The stream itself, e.g. to hand a connection on after a handshake. Flush first: bytes
    /// still buffered are dropped.
    pub fn into_inner(self) -> W {
        self.inner.into_inner()
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

    /// Bodies read into a pool's buffers come back whole, in order, each buffer taken again
    /// only once every `Bytes` of its body is gone; the pool keeps at most `keep` buffers and
    /// none above `largest`.
    #[tokio::test]
    async fn bodies_read_into_a_pool_give_their_buffers_back_when_dropped() {
        static POOL: BodyPool = BodyPool::new(2, 64 << 10);
        let bodies: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i + 1; 40 << 10]).collect();
        let mut bytes = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            let body = [Bytes::copy_from_slice(body)];
            bytes.extend(
                frame::encode_to_vec(MessageType::FetchChunk, i as u64, b"h", &body, true).unwrap(),
            );
        }
        let huge = [Bytes::from(vec![9u8; 100 << 10])];
        bytes.extend(frame::encode_to_vec(MessageType::FetchChunk, 3, b"h", &huge, true).unwrap());
        let mut reader = FrameReader::with_capacity(&bytes[..], FrameLimits::default(), 16);
        let mut read = Vec::new();
        for _ in 0..4 {
            let head = reader.read_head().await.unwrap().unwrap();
            let frame = reader
                .read_rest_into(&head, |len| POOL.take(len), |body| POOL.wrap(body))
                .await
                .unwrap();
            read.push(frame.body);
        }
        for (body, expected) in read.iter().zip(&bodies) {
            assert_eq!(&body[..], &expected[..]);
        }
        assert_eq!(&read[3][..], &huge[0][..]);
        assert_eq!(POOL.waiting(), 0);
        let slice = read[0].slice(10..20);
        let first = read.remove(0);
        drop(first);
        assert_eq!(
            POOL.waiting(),
            0,
            "a slice of the body still holds the buffer"
        );
        drop(slice);
        assert_eq!(POOL.waiting(), 1);
        drop(read);
        assert_eq!(
            POOL.waiting(),
            2,
            "kept more than 2 or the body above 64 KiB"
        );
        let again = POOL.take(40 << 10);
        assert!(again.is_empty() && again.capacity() >= 40 << 10);
        assert_eq!(POOL.waiting(), 1);
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

    fn session() -> ((Sealer, Opener), (Sealer, Opener)) {
        use crate::auth::{Keyring, Principal, SessionKey};
        let keyring = Keyring::parse("test", &[b'k'; 40]).unwrap();
        let derive = || {
            SessionKey::derive(
                keyring.signing().frames(),
                &Principal::Master("1".into()),
                &[1; 32],
                &[2; 32],
            )
        };
        (derive().client(), derive().server())
    }

    fn frames() -> Vec<OutFrame> {
        vec![
            OutFrame::new(MessageType::Ack, 1, &crate::pb::Ack {}),
            OutFrame::error(2, crate::ErrorCode::Busy, "busy").with_flags(frame::FLAG_REPLICA),
            OutFrame::new(MessageType::PushData, 3, &crate::pb::Ack {})
                .with_body(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")]),
            OutFrame::new(MessageType::ChunkData, 4, &crate::pb::Ack {})
                .with_body(vec![Bytes::from_static(b"chunk")])
                .without_crc(),
        ]
    }

    async fn written(writer_sealer: Option<Sealer>, frames: &[OutFrame]) -> Vec<u8> {
        let mut writer = FrameWriter::new(Vec::new());
        if let Some(sealer) = writer_sealer {
            writer.set_sealer(sealer);
        }
        for frame in frames {
            writer.write_frame(frame).await.unwrap();
        }
        writer.flush().await.unwrap();
        writer.get_ref().clone()
    }

    #[tokio::test]
    async fn without_a_sealer_frames_are_written_as_before() {
        let frames = frames();
        let mut expected = Vec::new();
        for frame in &frames {
            let mut head = frame::head_for(
                frame.kind,
                frame.request_id,
                &frame.header,
                &frame.body,
                frame.with_crc,
            )
            .unwrap();
            head.flags |= frame.flags;
            expected.extend(frame::encode_head_to_vec(
                &head,
                None,
                &frame.header,
                &frame.body,
            ));
        }
        assert_eq!(written(None, &frames).await, expected);
    }

    #[tokio::test]
    async fn sealed_frames_open_on_the_other_side() {
        let ((client_seal, _), (_, server_open)) = session();
        let frames = frames();
        let bytes = written(Some(client_seal), &frames).await;
        let mut reader = FrameReader::new(&bytes[..], FrameLimits::default());
        reader.set_opener(server_open);
        for sent in &frames {
            let got = reader.read_frame().await.unwrap().unwrap();
            assert!(got.flags & FLAG_AUTH != 0 && got.tag.is_some());
            assert_eq!((got.kind, got.request_id), (sent.kind, sent.request_id));
            assert_eq!(got.flags & !FLAG_AUTH & !frame::FLAG_CRC, sent.flags);
            assert_eq!(&got.header, &sent.header);
            assert_eq!(got.body, sent.body.concat());
        }
        assert!(reader.read_frame().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn read_rest_and_skip_rest_check_tags_and_keep_the_sequence() {
        let ((client_seal, _), (_, server_open)) = session();
        let bytes = written(Some(client_seal), &frames()).await;
        let mut reader = FrameReader::with_capacity(&bytes[..], FrameLimits::default(), 16);
        reader.set_opener(server_open);
        let head = reader.read_head().await.unwrap().unwrap();
        reader.skip_rest(&head).await.unwrap();
        let head = reader.read_head().await.unwrap().unwrap();
        assert_eq!(
            reader
                .read_rest(&head, Bytes::from)
                .await
                .unwrap()
                .request_id,
            2
        );
        let head = reader.read_head().await.unwrap().unwrap();
        reader.skip_rest(&head).await.unwrap();
        let head = reader.read_head().await.unwrap().unwrap();
        let last = reader.read_rest(&head, Bytes::from).await.unwrap();
        assert_eq!((last.request_id, &last.body[..]), (4, &b"chunk"[..]));
    }

    #[tokio::test]
    async fn write_head_seals_a_frame_whose_body_follows_untouched() {
        let ((client_seal, _), (_, server_open)) = session();
        let mut writer = FrameWriter::new(Vec::new());
        writer.set_sealer(client_seal);
        let head = frame::head_for_body(MessageType::ChunkData, 5, b"h", 3).unwrap();
        writer.write_head(&head, b"h").await.unwrap();
        writer.flush().await.unwrap();
        let mut bytes = writer.get_ref().clone();
        bytes.extend_from_slice(b"xyz");
        let mut reader = FrameReader::new(&bytes[..], FrameLimits::default());
        reader.set_opener(server_open);
        let frame = reader.read_frame().await.unwrap().unwrap();
        assert_eq!((frame.request_id, &frame.body[..]), (5, &b"xyz"[..]));
    }

    #[tokio::test]
    async fn an_opener_refuses_untagged_replayed_and_reflected_frames() {
        // Untagged.
        let (_, (_, server_open)) = session();
        let plain = written(None, &frames()).await;
        let mut reader = FrameReader::new(&plain[..], FrameLimits::default());
        reader.set_opener(server_open);
        assert!(matches!(
            reader.read_frame().await,
            Err(ReadError::Auth(AuthError::Untagged { seq: 0, .. }))
        ));

        // A frame duplicated inside the stream.
        let ((client_seal, _), (_, server_open)) = session();
        let one = written(Some(client_seal), &frames()[..1]).await;
        let twice = [one.clone(), one].concat();
        let mut reader = FrameReader::new(&twice[..], FrameLimits::default());
        reader.set_opener(server_open);
        reader.read_frame().await.unwrap().unwrap();
        assert!(matches!(
            reader.read_frame().await,
            Err(ReadError::Auth(AuthError::BadTag { seq: 1, .. }))
        ));

        // A client frame sent back to the client.
        let ((client_seal, client_open), _) = session();
        let bytes = written(Some(client_seal), &frames()).await;
        let mut reader = FrameReader::new(&bytes[..], FrameLimits::default());
        reader.set_opener(client_open);
        assert!(matches!(
            reader.read_frame().await,
            Err(ReadError::Auth(AuthError::BadTag { .. }))
        ));
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
