//! The data-plane frame codec.
//!
//! Every message on a push or fetch connection is one frame:
//!
//! ```text
//!  0        4     5     6        8                  16          20          24          28
//!  +--------+-----+-----+--------+------------------+-----------+-----------+-----------+
//!  | magic  | ver | type| flags  |    request id    | header len|  body len |   crc32   |
//!  | "SLUC" | u8  | u8  |  u16   |       u64        |    u32    |    u32    |    u32    |
//!  +--------+-----+-----+--------+------------------+-----------+-----------+-----------+
//!  | tag: 32 bytes, present only when flag FLAG_AUTH is set                               |
//!  +--------------------------------------------------------------------------------------+
//!  | header: `header len` bytes, a protobuf message chosen by `type`                      |
//!  +--------------------------------------------------------------------------------------+
//!  | body: `body len` raw bytes (batches for pushes and chunks)                           |
//!  +--------------------------------------------------------------------------------------+
//! ```
//!
//! All integers are big-endian. When flag [`FLAG_CRC`] is set, `crc32` is the CRC32 of the
//! header followed by the body; chunk responses leave it unset because every batch they carry
//! has its own CRC, verified by the reader, so the server can send file bytes untouched.
//!
//! When flag [`FLAG_AUTH`] is set (every frame after the `Hello`/`Welcome` handshake of an
//! authenticated connection), a [`TAG_LEN`]-byte MAC sits between head and header. The head's
//! lengths do not count it, but [`FrameHead::frame_len`] and [`FrameHead::rest_len`] do; the CRC
//! still covers header and body only. The tag is computed and checked by
//! `crate::auth::{Sealer, Opener}`; this module only carries it. Frames without the flag are
//! byte-identical to those of peers that know nothing of authentication.
//!
//! Decoding never trusts a length: [`check`] rejects a bad magic, version or type and any length
//! above [`FrameLimits`] before a byte of the frame is buffered, so a garbage or hostile peer
//! costs at most one frame head of work before its connection is closed.

use bytes::{Buf, Bytes, BytesMut};

/// `"SLUC"`.
pub const MAGIC: u32 = 0x534C_5543;
/// 2: batches carry their partition (32-byte batch head), pushes must carry a frame CRC, and
/// OpenStream pages its answers. A peer speaking 1 is refused at its first frame head.
pub const VERSION: u8 = 2;
pub const HEAD_LEN: usize = 28;
/// The frame carries a CRC32 of header and body.
pub const FLAG_CRC: u16 = 1;
/// A push a primary forwards to its replica. Workers admit these into the replication headroom
/// above their memory budget, so primaries forwarding to each other cannot deadlock; the flag
/// is read from the head, before any of the frame's bytes are buffered.
pub const FLAG_REPLICA: u16 = 2;
/// The frame carries a [`TAG_LEN`]-byte MAC between head and header (an authenticated session).
pub const FLAG_AUTH: u16 = 4;
/// Length of the tag of a frame flagged [`FLAG_AUTH`] (an HMAC-SHA256).
pub const TAG_LEN: usize = 32;

/// What a frame carries. Requests and their responses share the request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Client -> worker: batches for one partition location. Header: `PushHeader`.
    PushData = 1,
    /// Client -> worker: batches for many partition locations of one worker. Header: `PushHeader`.
    PushMergedData = 2,
    /// Success with no payload. Header: `Ack`.
    Ack = 3,
    /// Failure of the request with the same id. Header: `ErrorHeader`.
    Error = 4,
    /// Reader -> worker: list the chunks of a committed location. Header: `OpenStreamHeader`.
    OpenStream = 5,
    /// Answer to `OpenStream`. Header: `StreamOpenedHeader`.
    StreamOpened = 6,
    /// Reader -> worker: read one chunk. Header: `FetchChunkHeader`.
    FetchChunk = 7,
    /// Answer to `FetchChunk`; the body is the chunk's bytes. Header empty.
    ChunkData = 8,
    /// Master -> worker: reserve locations. Header: `ReserveHeader`.
    Reserve = 9,
    /// Master -> worker: commit locations. Header: `CommitHeader`.
    Commit = 10,
    /// Answer to `Commit`. Header: `CommittedHeader`.
    Committed = 11,
    /// Master -> worker: delete a shuffle or an application. Header: `DestroyHeader`.
    Destroy = 12,
    /// Client -> server, the first frame of an authenticated connection: who the client is and
    /// its nonce. Header: `HelloHeader`. Never tagged.
    Hello = 13,
    /// Server -> client, the answer to `Hello`: the server's nonce and its proof of the session
    /// key. Header: `WelcomeHeader`. Never tagged.
    Welcome = 14,
    /// Reader -> worker: list the chunks of many committed locations of one worker.
    /// Header: `OpenStreamsHeader`.
    OpenStreams = 15,
    /// Answer to `OpenStreams`: one page or one error per location. Header:
    /// `StreamsOpenedHeader`.
    StreamsOpened = 16,
    /// Reader -> worker: read many chunks of one worker. Header: `FetchChunksHeader`.
    FetchChunks = 17,
    /// Answer to `FetchChunks`; the body is the chunks read, back to back. Header:
    /// `ChunksDataHeader` (each chunk's length or its own error).
    ChunksData = 18,
    /// Worker -> worker, while draining: a piece of a committed location's data file.
    /// Header: `HandOverHeader`. Answer: `Ack`.
    HandOver = 19,
}

impl MessageType {
    pub fn from_u8(value: u8) -> Option<MessageType> {
        use MessageType::*;
        Some(match value {
            1 => PushData,
            2 => PushMergedData,
            3 => Ack,
            4 => Error,
            5 => OpenStream,
            6 => StreamOpened,
            7 => FetchChunk,
            8 => ChunkData,
            9 => Reserve,
            10 => Commit,
            11 => Committed,
            12 => Destroy,
            13 => Hello,
            14 => Welcome,
            15 => OpenStreams,
            16 => StreamsOpened,
            17 => FetchChunks,
            18 => ChunksData,
            19 => HandOver,
            _ => return None,
        })
    }
}

/// Caps applied while decoding. A frame above them is an error, not an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub max_header: u32,
    pub max_body: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_header: 16 << 20,
            max_body: 256 << 20,
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not enough bytes buffered yet: read more. Cheap, returned on the hot path.
    #[error("incomplete frame")]
    Incomplete,
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("header of {len} bytes exceeds the limit of {max}")]
    HeaderTooLarge { len: u32, max: u32 },
    #[error("body of {len} bytes exceeds the limit of {max}")]
    BodyTooLarge { len: u32, max: u32 },
    #[error("checksum mismatch: frame says {expected:#010x}, bytes give {actual:#010x}")]
    Checksum { expected: u32, actual: u32 },
}

/// The decoded fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub kind: MessageType,
    pub flags: u16,
    pub request_id: u64,
    pub header_len: u32,
    pub body_len: u32,
    pub crc: u32,
}

impl FrameHead {
    /// Whether the frame carries a tag ([`FLAG_AUTH`]).
    pub fn is_tagged(&self) -> bool {
        self.flags & FLAG_AUTH != 0
    }

    /// [`TAG_LEN`] for a tagged frame, else 0.
    pub fn tag_len(&self) -> usize {
        if self.is_tagged() {
            TAG_LEN
        } else {
            0
        }
    }

    /// Head plus tag (if any) plus header plus body.
    pub fn frame_len(&self) -> usize {
        HEAD_LEN + self.tag_len() + self.header_len as usize + self.body_len as usize
    }

    /// Tag (if any) plus header plus body: what a reader buffers after the head.
    pub fn rest_len(&self) -> u64 {
        self.tag_len() as u64 + u64::from(self.header_len) + u64::from(self.body_len)
    }

    pub fn encode(&self) -> [u8; HEAD_LEN] {
        let mut out = [0u8; HEAD_LEN];
        out[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        out[4] = VERSION;
        out[5] = self.kind as u8;
        out[6..8].copy_from_slice(&self.flags.to_be_bytes());
        out[8..16].copy_from_slice(&self.request_id.to_be_bytes());
        out[16..20].copy_from_slice(&self.header_len.to_be_bytes());
        out[20..24].copy_from_slice(&self.body_len.to_be_bytes());
        out[24..28].copy_from_slice(&self.crc.to_be_bytes());
        out
    }
}

/// A decoded frame. `header` and `body` share the read buffer's allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: MessageType,
    /// The head's flags ([`FLAG_CRC`], [`FLAG_REPLICA`], [`FLAG_AUTH`]).
    pub flags: u16,
    pub request_id: u64,
    /// The MAC of a frame flagged [`FLAG_AUTH`], not yet verified; `None` for untagged frames.
    pub tag: Option<[u8; TAG_LEN]>,
    pub header: Bytes,
    pub body: Bytes,
}

impl Frame {
    /// Decodes the protobuf header as `M`.
    pub fn decode_header<M: prost::Message + Default>(
        &self,
        what: &'static str,
    ) -> Result<M, crate::ProtocolError> {
        M::decode(self.header.clone())
            .map_err(|source| crate::ProtocolError::Decode { what, source })
    }
}

/// Validates the head at the start of `buf` without consuming anything. Returns the head once
/// the head itself is buffered (the rest of the frame may still be missing: compare
/// [`FrameHead::frame_len`] with `buf.len()`), [`FrameError::Incomplete`] before that, and an
/// error for anything malformed.
pub fn check(buf: &[u8], limits: &FrameLimits) -> Result<FrameHead, FrameError> {
    if buf.len() < 4 {
        // Reject garbage as early as its first bytes allow.
        let prefix = &MAGIC.to_be_bytes()[..buf.len()];
        return if buf == prefix {
            Err(FrameError::Incomplete)
        } else {
            let mut padded = [0u8; 4];
            padded[..buf.len()].copy_from_slice(buf);
            Err(FrameError::BadMagic(u32::from_be_bytes(padded)))
        };
    }
    let magic = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if buf.len() < HEAD_LEN {
        return Err(FrameError::Incomplete);
    }
    let mut head = &buf[4..HEAD_LEN];
    let version = head.get_u8();
    if version != VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let raw_kind = head.get_u8();
    let kind = MessageType::from_u8(raw_kind).ok_or(FrameError::UnknownType(raw_kind))?;
    let flags = head.get_u16();
    let request_id = head.get_u64();
    let header_len = head.get_u32();
    let body_len = head.get_u32();
    let crc = head.get_u32();
    if header_len > limits.max_header {
        return Err(FrameError::HeaderTooLarge {
            len: header_len,
            max: limits.max_header,
        });
    }
    if body_len > limits.max_body {
        return Err(FrameError::BodyTooLarge {
            len: body_len,
            max: limits.max_body,
        });
    }
    Ok(FrameHead {
        kind,
        flags,
        request_id,
        header_len,
        body_len,
        crc,
    })
}

/// Splits one whole frame off the front of `buf`, verifying its CRC when flagged. Returns
/// [`FrameError::Incomplete`] (consuming nothing) until the whole frame is buffered.
pub fn parse(buf: &mut BytesMut, limits: &FrameLimits) -> Result<Frame, FrameError> {
    let head = check(buf, limits)?;
    if buf.len() < head.frame_len() {
        return Err(FrameError::Incomplete);
    }
    buf.advance(HEAD_LEN);
    let tag = split_tag(buf, &head);
    let header = buf.split_to(head.header_len as usize).freeze();
    let body = buf.split_to(head.body_len as usize).freeze();
    if head.flags & FLAG_CRC != 0 {
        let actual = crc_of(&header, std::slice::from_ref(&body));
        if actual != head.crc {
            return Err(FrameError::Checksum {
                expected: head.crc,
                actual,
            });
        }
    }
    Ok(Frame {
        kind: head.kind,
        flags: head.flags,
        request_id: head.request_id,
        tag,
        header,
        body,
    })
}

/// Takes the tag of a tagged frame off the front of `buf`, which starts right after the head
/// and holds at least the tag.
pub(crate) fn split_tag(buf: &mut BytesMut, head: &FrameHead) -> Option<[u8; TAG_LEN]> {
    if !head.is_tagged() {
        return None;
    }
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&buf[..TAG_LEN]);
    buf.advance(TAG_LEN);
    Some(tag)
}

/// CRC32 of a header followed by body pieces.
pub fn crc_of(header: &[u8], body: &[Bytes]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    for piece in body {
        hasher.update(piece);
    }
    hasher.finalize()
}

/// Builds the head for an outgoing frame whose body is `body` (in pieces, written back to back).
/// Errors if a length does not fit the wire format.
pub fn head_for(
    kind: MessageType,
    request_id: u64,
    header: &[u8],
    body: &[Bytes],
    with_crc: bool,
) -> Result<FrameHead, FrameError> {
    let body_len: usize = body.iter().map(Bytes::len).sum();
    let mut head = head_for_body(kind, request_id, header, body_len as u64)?;
    if with_crc {
        head.flags = FLAG_CRC;
        head.crc = crc_of(header, body);
    }
    Ok(head)
}

/// The head of a frame without a CRC whose body of `body_len` bytes the caller sends itself
/// (e.g. with `sendfile`). Errors if a length does not fit the wire format.
pub fn head_for_body(
    kind: MessageType,
    request_id: u64,
    header: &[u8],
    body_len: u64,
) -> Result<FrameHead, FrameError> {
    let header_len = u32::try_from(header.len()).map_err(|_| FrameError::HeaderTooLarge {
        len: u32::MAX,
        max: u32::MAX,
    })?;
    let body_len = u32::try_from(body_len).map_err(|_| FrameError::BodyTooLarge {
        len: u32::MAX,
        max: u32::MAX,
    })?;
    Ok(FrameHead {
        kind,
        flags: 0,
        request_id,
        header_len,
        body_len,
        crc: 0,
    })
}

/// Encodes a whole frame into one contiguous buffer (tests and small frames).
pub fn encode_to_vec(
    kind: MessageType,
    request_id: u64,
    header: &[u8],
    body: &[Bytes],
    with_crc: bool,
) -> Result<Vec<u8>, FrameError> {
    let head = head_for(kind, request_id, header, body, with_crc)?;
    Ok(encode_head_to_vec(&head, None, header, body))
}

/// Encodes a whole frame whose head is already built into one contiguous buffer. `tag` must be
/// `Some` exactly when `head` is flagged [`FLAG_AUTH`] (the tag is the one computed over this
/// head, e.g. by `crate::auth::Sealer`).
pub fn encode_head_to_vec(
    head: &FrameHead,
    tag: Option<&[u8; TAG_LEN]>,
    header: &[u8],
    body: &[Bytes],
) -> Vec<u8> {
    debug_assert_eq!(
        head.is_tagged(),
        tag.is_some(),
        "tag presence must match FLAG_AUTH"
    );
    let mut out = Vec::with_capacity(head.frame_len());
    out.extend_from_slice(&head.encode());
    if let Some(tag) = tag {
        out.extend_from_slice(tag);
    }
    out.extend_from_slice(header);
    for piece in body {
        out.extend_from_slice(piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KINDS: [MessageType; 19] = [
        MessageType::PushData,
        MessageType::PushMergedData,
        MessageType::Ack,
        MessageType::Error,
        MessageType::OpenStream,
        MessageType::StreamOpened,
        MessageType::FetchChunk,
        MessageType::ChunkData,
        MessageType::Reserve,
        MessageType::Commit,
        MessageType::Committed,
        MessageType::Destroy,
        MessageType::Hello,
        MessageType::Welcome,
        MessageType::OpenStreams,
        MessageType::StreamsOpened,
        MessageType::FetchChunks,
        MessageType::ChunksData,
        MessageType::HandOver,
    ];

    fn small_limits() -> FrameLimits {
        FrameLimits {
            max_header: 1024,
            max_body: 64 * 1024,
        }
    }

    proptest! {
        #[test]
        fn round_trip(
            kind in 0usize..KINDS.len(),
            request_id: u64,
            header in proptest::collection::vec(any::<u8>(), 0..512),
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..4096), 0..4),
            with_crc: bool,
        ) {
            let body: Vec<Bytes> = pieces.into_iter().map(Bytes::from).collect();
            let encoded = encode_to_vec(KINDS[kind], request_id, &header, &body, with_crc).unwrap();
            let mut buf = BytesMut::from(&encoded[..]);
            let frame = parse(&mut buf, &small_limits()).unwrap();
            prop_assert!(buf.is_empty());
            prop_assert_eq!(frame.kind, KINDS[kind]);
            prop_assert_eq!(frame.request_id, request_id);
            prop_assert_eq!(&frame.header[..], &header[..]);
            prop_assert_eq!(frame.body, body.concat());
        }

        #[test]
        fn every_truncation_is_incomplete(
            header in proptest::collection::vec(any::<u8>(), 0..64),
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let encoded = encode_to_vec(MessageType::PushData, 7, &header, &[Bytes::from(body)], true).unwrap();
            for cut in 0..encoded.len() {
                let mut buf = BytesMut::from(&encoded[..cut]);
                prop_assert_eq!(parse(&mut buf, &small_limits()), Err(FrameError::Incomplete));
                prop_assert_eq!(buf.len(), cut, "an incomplete parse consumed bytes");
            }
        }

        #[test]
        fn random_bytes_never_panic_and_never_over_read(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut buf = BytesMut::from(&bytes[..]);
            match parse(&mut buf, &small_limits()) {
                Ok(frame) => prop_assert!(frame.header.len() <= 1024 && frame.body.len() <= 64 * 1024),
                Err(_) => prop_assert_eq!(buf.len(), bytes.len()),
            }
        }

        #[test]
        fn a_flipped_bit_is_caught(
            body in proptest::collection::vec(any::<u8>(), 1..512),
            position: prop::sample::Index,
            bit in 0u8..8,
        ) {
            let encoded = encode_to_vec(MessageType::PushData, 1, b"hdr", &[Bytes::from(body)], true).unwrap();
            let mut corrupted = encoded.clone();
            // Corrupt the header or the body (the head's own fields are checked separately).
            let at = HEAD_LEN + position.index(encoded.len() - HEAD_LEN);
            corrupted[at] ^= 1 << bit;
            let mut buf = BytesMut::from(&corrupted[..]);
            let is_checksum_error = matches!(parse(&mut buf, &small_limits()), Err(FrameError::Checksum { .. }));
            prop_assert!(is_checksum_error);
        }

        #[test]
        fn tagged_round_trip(
            kind in 0usize..KINDS.len(),
            request_id: u64,
            tag: [u8; TAG_LEN],
            header in proptest::collection::vec(any::<u8>(), 0..512),
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..4096), 0..4),
            with_crc: bool,
            trailing in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let body: Vec<Bytes> = pieces.into_iter().map(Bytes::from).collect();
            let mut head = head_for(KINDS[kind], request_id, &header, &body, with_crc).unwrap();
            head.flags |= FLAG_AUTH;
            let encoded = encode_head_to_vec(&head, Some(&tag), &header, &body);
            prop_assert_eq!(encoded.len(), head.frame_len());
            prop_assert_eq!(encoded.len() as u64, HEAD_LEN as u64 + head.rest_len());
            let mut buf = BytesMut::from(&encoded[..]);
            buf.extend_from_slice(&trailing);
            let frame = parse(&mut buf, &small_limits()).unwrap();
            prop_assert_eq!(&buf[..], &trailing[..], "parse consumed more or less than the frame");
            prop_assert_eq!(frame.kind, KINDS[kind]);
            prop_assert_eq!(frame.flags, head.flags);
            prop_assert_eq!(frame.request_id, request_id);
            prop_assert_eq!(frame.tag, Some(tag));
            prop_assert_eq!(&frame.header[..], &header[..]);
            prop_assert_eq!(frame.body, body.concat());
        }

        #[test]
        fn every_truncation_of_a_tagged_frame_is_incomplete(
            tag: [u8; TAG_LEN],
            header in proptest::collection::vec(any::<u8>(), 0..64),
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let body = [Bytes::from(body)];
            let mut head = head_for(MessageType::PushData, 7, &header, &body, true).unwrap();
            head.flags |= FLAG_AUTH;
            let encoded = encode_head_to_vec(&head, Some(&tag), &header, &body);
            for cut in 0..encoded.len() {
                let mut buf = BytesMut::from(&encoded[..cut]);
                prop_assert_eq!(parse(&mut buf, &small_limits()), Err(FrameError::Incomplete));
                prop_assert_eq!(buf.len(), cut, "an incomplete parse consumed bytes");
            }
        }

        #[test]
        fn untagged_frames_carry_no_tag(
            header in proptest::collection::vec(any::<u8>(), 0..64),
            body in proptest::collection::vec(any::<u8>(), 0..512),
            with_crc: bool,
        ) {
            let body = [Bytes::from(body)];
            let head = head_for(MessageType::PushData, 7, &header, &body, with_crc).unwrap();
            let encoded = encode_to_vec(MessageType::PushData, 7, &header, &body, with_crc).unwrap();
            prop_assert_eq!(&encoded, &encode_head_to_vec(&head, None, &header, &body));
            prop_assert_eq!(encoded.len(), HEAD_LEN + header.len() + body[0].len());
            let frame = parse(&mut BytesMut::from(&encoded[..]), &small_limits()).unwrap();
            prop_assert_eq!(frame.tag, None);
        }
    }

    /// The exact bytes of an untagged frame, written out by hand: frames without
    /// [`FLAG_AUTH`] must stay what peers without authentication send and expect.
    #[test]
    fn untagged_frames_are_byte_identical_to_the_wire_format() {
        let encoded = encode_to_vec(
            MessageType::PushData,
            0x0102_0304_0506_0708,
            b"hd",
            &[Bytes::from_static(b"bo"), Bytes::from_static(b"dy")],
            true,
        )
        .unwrap();
        let crc = crc_of(b"hd", &[Bytes::from_static(b"body")]).to_be_bytes();
        let mut expected = vec![
            b'S', b'L', b'U', b'C', 2, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 2, 0, 0, 0, 4,
        ];
        expected.extend_from_slice(&crc);
        expected.extend_from_slice(b"hdbody");
        assert_eq!(encoded, expected);
    }

    #[test]
    fn hello_and_welcome_are_known_types() {
        assert_eq!(MessageType::from_u8(13), Some(MessageType::Hello));
        assert_eq!(MessageType::from_u8(14), Some(MessageType::Welcome));
        assert_eq!(MessageType::from_u8(20), None);
        for kind in KINDS {
            assert_eq!(MessageType::from_u8(kind as u8), Some(kind));
        }
    }

    #[test]
    fn oversized_lengths_are_rejected_from_the_head_alone() {
        let limits = small_limits();
        let mut head = head_for(MessageType::PushData, 1, b"", &[], false).unwrap();
        head.body_len = limits.max_body + 1;
        assert_eq!(
            check(&head.encode(), &limits),
            Err(FrameError::BodyTooLarge {
                len: limits.max_body + 1,
                max: limits.max_body
            })
        );
        head.body_len = 0;
        head.header_len = u32::MAX;
        assert!(matches!(
            check(&head.encode(), &limits),
            Err(FrameError::HeaderTooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_rejected_at_the_first_wrong_byte() {
        let limits = small_limits();
        assert!(matches!(check(b"G", &limits), Err(FrameError::BadMagic(_))));
        assert!(matches!(
            check(b"GET / HTTP/1.1\r\n", &limits),
            Err(FrameError::BadMagic(_))
        ));
        assert_eq!(check(b"SL", &limits), Err(FrameError::Incomplete));
        let mut head = head_for(MessageType::Ack, 1, b"", &[], false)
            .unwrap()
            .encode();
        head[4] = 9;
        assert_eq!(
            check(&head, &limits),
            Err(FrameError::UnsupportedVersion(9))
        );
        head[4] = VERSION;
        head[5] = 200;
        assert_eq!(check(&head, &limits), Err(FrameError::UnknownType(200)));
    }

    #[test]
    fn two_frames_in_one_buffer_parse_one_at_a_time() {
        let mut bytes = encode_to_vec(MessageType::Ack, 1, b"a", &[], false).unwrap();
        bytes.extend(
            encode_to_vec(
                MessageType::Ack,
                2,
                b"b",
                &[Bytes::from_static(b"xyz")],
                true,
            )
            .unwrap(),
        );
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(parse(&mut buf, &small_limits()).unwrap().request_id, 1);
        let second = parse(&mut buf, &small_limits()).unwrap();
        assert_eq!((second.request_id, &second.body[..]), (2, &b"xyz"[..]));
        assert_eq!(
            parse(&mut buf, &small_limits()),
            Err(FrameError::Incomplete)
        );
    }
}
