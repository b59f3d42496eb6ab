//! The batch: the unit a writer pushes, a worker appends and indexes, and a reader verifies.
//!
//! ```text
//!  0           4       8         12         16        20         24      25       28      32
//!  +-----------+-------+---------+----------+---------+----------+-------+--------+-------+------------+
//!  | partition |  map  | attempt | batch id | raw len | data len | codec | unused | crc32 | data ...   |
//!  |    u32    |  u32  |   u32   |   u32    |   u32   |   u32    |  u8   | 3 x u8 |  u32  | data len B |
//!  +-----------+-------+---------+----------+---------+----------+-------+--------+-------+------------+
//! ```
//!
//! Big-endian. `crc32` covers bytes 0..28 of the head and then the data, so a flipped byte
//! anywhere in a batch is caught. `data` is an LZ4 block (`codec` 1), a zstd frame (`codec` 2)
//! or stored as is (`codec` 0, also used when the writer's codec would not shrink it).
//! `partition` is the partition the writer cut the batch for: a worker appending it to, or a
//! reader reading it from, any other partition has a misrouted batch. `batch id` grows per `(map, attempt)`; readers drop repeats
//! of `(map, batch id)` and batches of losing attempts.

use bytes::Bytes;

pub const BATCH_HEAD_LEN: usize = 32;
/// The head bytes covered by the CRC (all but the CRC itself).
const CRC_COVERED: usize = 28;
/// Largest raw or stored size of one batch. Decoders refuse anything larger.
pub const MAX_BATCH_LEN: u32 = 128 << 20;

/// Whose a batch is: the fields a writer chooses, beside the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BatchTag {
    pub partition: u32,
    pub map_id: u32,
    pub attempt: u32,
    pub batch_id: u32,
}

/// How a batch's data is stored, and which codec a writer tries on its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Codec {
    /// Stored as is.
    None = 0,
    /// An LZ4 block: cheap on CPU, the default.
    #[default]
    Lz4 = 1,
    /// A zstd frame at [`ZSTD_LEVEL`]: about twice LZ4's CPU to write, for a smaller batch where
    /// bytes cost more than cores (a slow or billed link, a DFS tier).
    Zstd = 2,
}

/// The zstd level writers use: the fastest of the standard levels.
pub const ZSTD_LEVEL: i32 = 1;

/// Raw bytes below this are stored as they are: too few to be worth a codec's call.
const MIN_COMPRESSED: usize = 64;

impl Codec {
    /// Every codec, in the order of their bytes.
    pub const ALL: [Codec; 3] = [Codec::None, Codec::Lz4, Codec::Zstd];

    /// Its name in configuration and reports.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Codec {
    type Err = String;

    /// `none`, `lz4` or `zstd`; `true` and `false` too (LZ4 and none), the values of the
    /// boolean setting this one replaced.
    fn from_str(value: &str) -> Result<Codec, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "none" | "false" => Ok(Codec::None),
            "lz4" | "true" => Ok(Codec::Lz4),
            "zstd" => Ok(Codec::Zstd),
            _ => Err(format!("{value:?} is not a codec (none, lz4 or zstd)")),
        }
    }
}

/// The decoded head of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHead {
    /// The partition the writer cut this batch for.
    pub partition: u32,
    pub map_id: u32,
    pub attempt: u32,
    pub batch_id: u32,
    pub raw_len: u32,
    pub data_len: u32,
    pub codec: Codec,
    pub crc: u32,
}

impl BatchHead {
    pub fn tag(&self) -> BatchTag {
        BatchTag {
            partition: self.partition,
            map_id: self.map_id,
            attempt: self.attempt,
            batch_id: self.batch_id,
        }
    }

    /// Head plus data.
    pub fn total_len(&self) -> usize {
        BATCH_HEAD_LEN + self.data_len as usize
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("truncated batch: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("batch length {0} exceeds the limit")]
    TooLarge(u32),
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    #[error("batch checksum mismatch (map {map_id}, batch {batch_id})")]
    Checksum { map_id: u32, batch_id: u32 },
    #[error("batch does not decompress to its length (map {map_id}, batch {batch_id}): {reason}")]
    Decompress {
        map_id: u32,
        batch_id: u32,
        reason: String,
    },
}

/// Parses a batch head from the start of `buf` (structure only; the CRC is checked by
/// [`verify`]).
pub fn parse_head(buf: &[u8]) -> Result<BatchHead, BatchError> {
    if buf.len() < BATCH_HEAD_LEN {
        return Err(BatchError::Truncated {
            needed: BATCH_HEAD_LEN,
            available: buf.len(),
        });
    }
    let word = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let raw_len = word(16);
    let data_len = word(20);
    if raw_len > MAX_BATCH_LEN {
        return Err(BatchError::TooLarge(raw_len));
    }
    if data_len > MAX_BATCH_LEN {
        return Err(BatchError::TooLarge(data_len));
    }
    let codec = match buf[24] {
        0 => Codec::None,
        1 => Codec::Lz4,
        2 => Codec::Zstd,
        other => return Err(BatchError::UnknownCodec(other)),
    };
    Ok(BatchHead {
        partition: word(0),
        map_id: word(4),
        attempt: word(8),
        batch_id: word(12),
        raw_len,
        data_len,
        codec,
        crc: word(28),
    })
}

fn head_bytes(head: &BatchHead) -> [u8; BATCH_HEAD_LEN] {
    let mut out = [0u8; BATCH_HEAD_LEN];
    out[0..4].copy_from_slice(&head.partition.to_be_bytes());
    out[4..8].copy_from_slice(&head.map_id.to_be_bytes());
    out[8..12].copy_from_slice(&head.attempt.to_be_bytes());
    out[12..16].copy_from_slice(&head.batch_id.to_be_bytes());
    out[16..20].copy_from_slice(&head.raw_len.to_be_bytes());
    out[20..24].copy_from_slice(&head.data_len.to_be_bytes());
    out[24] = head.codec as u8;
    out[28..32].copy_from_slice(&head.crc.to_be_bytes());
    out
}

fn crc_for(head_prefix: &[u8], data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&head_prefix[..CRC_COVERED]);
    hasher.update(data);
    hasher.finalize()
}

/// Encodes `raw` as one batch, compressed with `codec` when that makes it smaller, else stored.
/// Appends to `out` (so a caller can reuse one buffer) and returns the head written.
pub fn encode_into(
    out: &mut Vec<u8>,
    tag: BatchTag,
    raw: &[u8],
    codec: Codec,
) -> Result<BatchHead, BatchError> {
    let raw_len = u32::try_from(raw.len())
        .ok()
        .filter(|len| *len <= MAX_BATCH_LEN)
        .ok_or(BatchError::TooLarge(u32::MAX))?;
    let start = out.len();
    out.resize(start + BATCH_HEAD_LEN, 0);
    let codec = if compress_into(codec, raw, out) {
        codec
    } else {
        out.extend_from_slice(raw);
        Codec::None
    };
    Ok(seal_head(out, start, tag, codec, raw_len))
}

/// Appends `raw` compressed with `codec` to `out` and returns true, or leaves `out` as it was
/// and returns false when the codec is `None`, `raw` is too short to bother, or compressing
/// would not shrink it. (A batch's data; public for measuring a codec alone.)
pub fn compress_into(codec: Codec, raw: &[u8], out: &mut Vec<u8>) -> bool {
    if raw.len() < MIN_COMPRESSED {
        return false;
    }
    let start = out.len();
    let written = match codec {
        Codec::None => return false,
        Codec::Lz4 => {
            out.resize(start + max_compressed_len(raw.len()), 0);
            lz4_flex::block::compress_into(raw, &mut out[start..]).ok()
        }
        Codec::Zstd => {
            // Only a frame smaller than the raw bytes is kept, so that much room is enough: a
            // frame that would not fit fails, and the batch is stored.
            out.resize(start + raw.len() - 1, 0);
            zstd_context::compress(raw, &mut out[start..])
        }
    };
    match written {
        Some(written) if written < raw.len() => {
            out.truncate(start + written);
            true
        }
        _ => {
            out.truncate(start);
            false
        }
    }
}

/// The most bytes [`compress_into`] appends for `raw_len` raw bytes, with any codec (LZ4's bound;
/// a zstd frame is kept only when shorter than the raw bytes).
fn max_compressed_len(raw_len: usize) -> usize {
    lz4_flex::block::get_maximum_output_size(raw_len)
}

/// zstd contexts, one of each per thread: a context holds tables that cost more to set up
/// than a batch costs to compress at level 1.
mod zstd_context {
    use std::cell::RefCell;

    thread_local! {
        static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { RefCell::new(None) };
        static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { RefCell::new(None) };
    }

    /// Compresses `raw` into `out` and returns the frame's length, or None when it does not fit.
    pub fn compress(raw: &[u8], out: &mut [u8]) -> Option<usize> {
        COMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            let compressor = match cell.as_mut() {
                Some(compressor) => compressor,
                None => cell.insert(zstd::bulk::Compressor::new(super::ZSTD_LEVEL).ok()?),
            };
            compressor.compress_to_buffer(raw, out).ok()
        })
    }

    /// Decompresses the frame `data` into `out` (a slice of exactly its size, or a vector's spare
    /// capacity) and returns the bytes written.
    pub fn decompress<C: zstd::zstd_safe::WriteBuf + ?Sized>(
        data: &[u8],
        out: &mut C,
    ) -> Result<usize, String> {
        DECOMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            let decompressor = match cell.as_mut() {
                Some(decompressor) => decompressor,
                None => cell.insert(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?),
            };
            decompressor
                .decompress_to_buffer(data, out)
                .map_err(|e| e.to_string())
        })
    }
}

/// A batch built in place: the head's bytes reserved at the front of one buffer, the raw records
/// appended after them. [`BatchBuf::seal`] fills in the head, so a batch that is not compressed
/// becomes the buffer itself, with no copy; one that is compressed gives the buffer back for
/// the next batch. Empty (no reservation, no allocation) until the first append.
#[derive(Debug, Default)]
pub struct BatchBuf(Vec<u8>);

impl BatchBuf {
    /// An empty batch that can take `raw` bytes without growing.
    pub fn with_capacity(raw: usize) -> BatchBuf {
        BatchBuf::reuse(Vec::with_capacity(BATCH_HEAD_LEN + raw))
    }

    /// An empty batch in `spare`'s memory (what it held is dropped).
    pub fn reuse(mut spare: Vec<u8>) -> BatchBuf {
        spare.clear();
        spare.resize(BATCH_HEAD_LEN, 0);
        BatchBuf(spare)
    }

    /// Raw bytes appended.
    pub fn raw_len(&self) -> usize {
        self.0.len().saturating_sub(BATCH_HEAD_LEN)
    }

    pub fn is_empty(&self) -> bool {
        self.raw_len() == 0
    }

    /// Bytes of memory held.
    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }

    pub fn extend_from_slice(&mut self, raw: &[u8]) {
        if self.0.is_empty() {
            self.0.resize(BATCH_HEAD_LEN, 0);
        }
        self.0.extend_from_slice(raw);
    }

    /// Appends `len` zeroed bytes and returns them, for a caller to fill.
    pub fn append_zeroed(&mut self, len: usize) -> &mut [u8] {
        if self.0.is_empty() {
            self.0.resize(BATCH_HEAD_LEN, 0);
        }
        let start = self.0.len();
        self.0.resize(start + len, 0);
        &mut self.0[start..]
    }

    /// The raw bytes appended.
    pub fn raw(&self) -> &[u8] {
        self.0.get(BATCH_HEAD_LEN..).unwrap_or_default()
    }

    /// Makes the batch: compressed with `codec` into a new buffer when that makes it smaller
    /// (then this buffer comes back, for the next batch), else in place.
    pub fn seal(
        mut self,
        tag: BatchTag,
        codec: Codec,
    ) -> Result<(BatchHead, Bytes, Option<Vec<u8>>), BatchError> {
        if self.0.is_empty() {
            self.0.resize(BATCH_HEAD_LEN, 0);
        }
        let raw = &self.0[BATCH_HEAD_LEN..];
        let raw_len = u32::try_from(raw.len())
            .ok()
            .filter(|len| *len <= MAX_BATCH_LEN)
            .ok_or(BatchError::TooLarge(u32::MAX))?;
        if codec != Codec::None && raw.len() >= MIN_COMPRESSED {
            // Room for the largest result up front: one allocation per batch.
            let mut out = Vec::with_capacity(BATCH_HEAD_LEN + max_compressed_len(raw.len()));
            out.resize(BATCH_HEAD_LEN, 0);
            if compress_into(codec, raw, &mut out) {
                let head = seal_head(&mut out, 0, tag, codec, raw_len);
                return Ok((head, Bytes::from(out), Some(self.0)));
            }
        }
        let head = seal_head(&mut self.0, 0, tag, Codec::None, raw_len);
        Ok((head, Bytes::from(self.0), None))
    }
}

/// Encodes `raw` as one batch into a fresh buffer.
pub fn encode(tag: BatchTag, raw: &[u8], codec: Codec) -> Result<(BatchHead, Bytes), BatchError> {
    let mut out = Vec::with_capacity(BATCH_HEAD_LEN + max_compressed_len(raw.len()));
    let head = encode_into(&mut out, tag, raw, codec)?;
    Ok((head, Bytes::from(out)))
}

/// Builds a batch around `data` taken as already encoded with `codec` (`raw_len` bytes once
/// decoded), with a correct CRC. Nothing checks that `data` decodes: this is for tests and
/// fuzzing that need batches whose checksum holds but whose data is wrong, as a faulty writer
/// would produce. Writers use [`encode`].
pub fn encode_stored(
    tag: BatchTag,
    codec: Codec,
    raw_len: u32,
    data: &[u8],
) -> Result<(BatchHead, Bytes), BatchError> {
    if raw_len > MAX_BATCH_LEN {
        return Err(BatchError::TooLarge(raw_len));
    }
    if data.len() > MAX_BATCH_LEN as usize {
        return Err(BatchError::TooLarge(u32::MAX));
    }
    let mut out = Vec::with_capacity(BATCH_HEAD_LEN + data.len());
    out.resize(BATCH_HEAD_LEN, 0);
    out.extend_from_slice(data);
    let head = seal_head(&mut out, 0, tag, codec, raw_len);
    Ok((head, Bytes::from(out)))
}

/// Fills in the head of the batch that starts at `out[start]` and whose data runs to the end of
/// `out`, CRC included.
fn seal_head(out: &mut [u8], start: usize, tag: BatchTag, codec: Codec, raw_len: u32) -> BatchHead {
    let data_len = (out.len() - start - BATCH_HEAD_LEN) as u32;
    let mut head = BatchHead {
        partition: tag.partition,
        map_id: tag.map_id,
        attempt: tag.attempt,
        batch_id: tag.batch_id,
        raw_len,
        data_len,
        codec,
        crc: 0,
    };
    let prefix = head_bytes(&head);
    head.crc = crc_for(&prefix, &out[start + BATCH_HEAD_LEN..]);
    out[start..start + BATCH_HEAD_LEN].copy_from_slice(&head_bytes(&head));
    head
}

/// Checks a whole batch (head and data) against its CRC.
pub fn verify(head: &BatchHead, batch: &[u8]) -> Result<(), BatchError> {
    if batch.len() < head.total_len() {
        return Err(BatchError::Truncated {
            needed: head.total_len(),
            available: batch.len(),
        });
    }
    let actual = crc_for(
        &batch[..BATCH_HEAD_LEN],
        &batch[BATCH_HEAD_LEN..head.total_len()],
    );
    if actual != head.crc {
        return Err(BatchError::Checksum {
            map_id: head.map_id,
            batch_id: head.batch_id,
        });
    }
    Ok(())
}

/// Returns the raw bytes of a verified batch: the data itself when stored, else a freshly
/// decompressed buffer. `batch` is the whole batch (head and data).
pub fn decompress(head: &BatchHead, batch: &Bytes) -> Result<Bytes, BatchError> {
    let data = batch.slice(BATCH_HEAD_LEN..head.total_len());
    match head.codec {
        Codec::None => {
            if data.len() != head.raw_len as usize {
                return Err(BatchError::Decompress {
                    map_id: head.map_id,
                    batch_id: head.batch_id,
                    reason: format!("stored {} bytes, head says {}", data.len(), head.raw_len),
                });
            }
            Ok(data)
        }
        Codec::Lz4 | Codec::Zstd => {
            let out =
                decompress_to_vec(head.codec, &data, head.raw_len as usize).map_err(|reason| {
                    BatchError::Decompress {
                        map_id: head.map_id,
                        batch_id: head.batch_id,
                        reason,
                    }
                })?;
            if out.len() != head.raw_len as usize {
                return Err(BatchError::Decompress {
                    map_id: head.map_id,
                    batch_id: head.batch_id,
                    reason: format!("{} bytes, head says {}", out.len(), head.raw_len),
                });
            }
            Ok(Bytes::from(out))
        }
    }
}

/// Decodes `data`, compressed with `codec` (not `None`), into a new buffer of at most `raw_len`
/// bytes. The buffer is not zeroed first (the codec writes every byte it keeps): zeroing each
/// batch's buffer, then touching it again to decode, cost a reader a third of its CPU.
fn decompress_to_vec(codec: Codec, data: &[u8], raw_len: usize) -> Result<Vec<u8>, String> {
    match codec {
        Codec::None => Err("stored data is not decoded".into()),
        Codec::Lz4 => lz4_flex::block::decompress(data, raw_len).map_err(|e| e.to_string()),
        Codec::Zstd => {
            let mut out = Vec::with_capacity(raw_len);
            zstd_context::decompress(data, &mut out)?;
            Ok(out)
        }
    }
}

/// Decodes `data`, compressed with `codec` (not `None`), into `out`, which must be exactly as
/// long as the raw bytes, and returns the bytes written. (A batch's data; public for measuring
/// a codec alone.)
pub fn decompress_into(codec: Codec, data: &[u8], out: &mut [u8]) -> Result<usize, String> {
    match codec {
        Codec::None => Err("stored data is not decoded".into()),
        Codec::Lz4 => lz4_flex::block::decompress_into(data, out).map_err(|e| e.to_string()),
        Codec::Zstd => zstd_context::decompress(data, out),
    }
}

/// Walks the batches of a buffer holding whole batches back to back, yielding each head with the
/// whole batch's bytes (zero-copy slices). Stops at the first malformed batch with its error.
pub struct BatchIter {
    buf: Bytes,
    failed: bool,
}

impl BatchIter {
    pub fn new(buf: Bytes) -> BatchIter {
        BatchIter { buf, failed: false }
    }
}

impl Iterator for BatchIter {
    type Item = Result<(BatchHead, Bytes), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() || self.failed {
            return None;
        }
        let result = parse_head(&self.buf).and_then(|head| {
            if self.buf.len() < head.total_len() {
                return Err(BatchError::Truncated {
                    needed: head.total_len(),
                    available: self.buf.len(),
                });
            }
            Ok((head, self.buf.split_to(head.total_len())))
        });
        self.failed = result.is_err();
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` pseudo-random bytes (xorshift from `seed`): data LZ4 cannot shrink.
    fn noise(len: usize, mut seed: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    #[test]
    fn a_batch_built_in_place_is_the_batch_encode_makes() {
        let tag = tag(3, 1, 2, 9);
        let text: Vec<u8> = b"sluice ".iter().copied().cycle().take(5000).collect();
        let noise = noise(5000, 0x9E37_79B9_7F4A_7C15);
        for (raw, codec, compressed) in [
            (&text[..], Codec::Lz4, true),
            (&text[..], Codec::Zstd, true),
            (&text[..], Codec::None, false),
            (&noise[..], Codec::Lz4, false),
            (&noise[..], Codec::Zstd, false),
            (&text[..10], Codec::Lz4, false),
            (&[][..], Codec::Zstd, false),
        ] {
            let (want_head, want) = encode(tag, raw, codec).unwrap();
            let mut buf = BatchBuf::default();
            assert!(buf.is_empty());
            let (first, second) = raw.split_at(raw.len() / 3);
            buf.extend_from_slice(first);
            buf.append_zeroed(second.len()).copy_from_slice(second);
            assert_eq!((buf.raw_len(), buf.raw()), (raw.len(), raw));
            let (head, bytes, spare) = buf.seal(tag, codec).unwrap();
            assert_eq!((head, &bytes), (want_head, &want));
            assert_eq!(head.codec, if compressed { codec } else { Codec::None });
            assert_eq!(&decompress(&head, &bytes).unwrap()[..], raw);
            // A compressed batch gives its buffer back, which starts the next batch empty.
            assert_eq!(spare.is_some(), compressed);
            if let Some(spare) = spare {
                let capacity = spare.capacity();
                let next = BatchBuf::reuse(spare);
                assert!(next.is_empty() && next.capacity() == capacity);
            }
        }
    }
    use proptest::prelude::*;

    fn tag(partition: u32, map_id: u32, attempt: u32, batch_id: u32) -> BatchTag {
        BatchTag {
            partition,
            map_id,
            attempt,
            batch_id,
        }
    }

    fn codecs() -> impl Strategy<Value = Codec> {
        prop::sample::select(Codec::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn round_trip(raw in proptest::collection::vec(any::<u8>(), 0..8192), repeat in 1usize..8, codec in codecs(), partition: u32, map_id: u32, attempt: u32, batch_id: u32) {
            let raw = raw.repeat(repeat);
            let tag = tag(partition, map_id, attempt, batch_id);
            let (head, bytes) = encode(tag, &raw, codec).unwrap();
            let parsed = parse_head(&bytes).unwrap();
            prop_assert_eq!(parsed, head);
            prop_assert_eq!(parsed.tag(), tag);
            prop_assert_eq!(bytes.len(), head.total_len());
            verify(&parsed, &bytes).unwrap();
            prop_assert_eq!(&decompress(&parsed, &bytes).unwrap()[..], &raw[..]);
        }

        #[test]
        fn any_flipped_bit_is_detected(raw in proptest::collection::vec(any::<u8>(), 1..2048), position: prop::sample::Index, bit in 0u8..8, codec in codecs()) {
            let (_, bytes) = encode(tag(7, 1, 0, 3), &raw.repeat(3), codec).unwrap();
            let mut corrupted = bytes.to_vec();
            let at = position.index(corrupted.len());
            corrupted[at] ^= 1 << bit;
            let corrupted = Bytes::from(corrupted);
            // Either the structure is now invalid, or the CRC catches it.
            let outcome = BatchIter::new(corrupted).next().unwrap().and_then(|(head, batch)| verify(&head, &batch));
            prop_assert!(outcome.is_err());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            for (head, batch) in BatchIter::new(Bytes::from(bytes)).map_while(Result::ok) {
                if verify(&head, &batch).is_ok() {
                    let _ = decompress(&head, &batch);
                }
            }
        }
    }

    #[test]
    fn incompressible_data_is_stored() {
        let raw = noise(4096, 0x1234_5678);
        for codec in [Codec::Lz4, Codec::Zstd] {
            let (head, bytes) = encode(tag(0, 0, 0, 0), &raw, codec).unwrap();
            assert_eq!(head.codec, Codec::None);
            assert_eq!(head.data_len as usize, raw.len());
            assert_eq!(&decompress(&head, &bytes).unwrap()[..], &raw[..]);
        }
    }

    #[test]
    fn iter_walks_back_to_back_batches() {
        let mut buf = Vec::new();
        for id in 0..5 {
            encode_into(
                &mut buf,
                tag(4, 2, 1, id),
                &vec![id as u8; 100 * id as usize],
                Codec::Lz4,
            )
            .unwrap();
        }
        let heads: Vec<_> = BatchIter::new(Bytes::from(buf))
            .map(|item| item.unwrap().0.batch_id)
            .collect();
        assert_eq!(heads, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_lying_length_is_an_error_not_an_allocation() {
        let (_, bytes) = encode(tag(0, 0, 0, 0), b"hello", Codec::None).unwrap();
        for field in [16..20, 20..24] {
            let mut lying = bytes.to_vec();
            lying[field].copy_from_slice(&u32::MAX.to_be_bytes());
            assert_eq!(parse_head(&lying), Err(BatchError::TooLarge(u32::MAX)));
        }
    }

    #[test]
    fn the_partition_is_in_the_head_and_under_the_checksum() {
        let (head, bytes) = encode(tag(9, 1, 0, 2), b"records", Codec::None).unwrap();
        assert_eq!(&bytes[0..4], &9u32.to_be_bytes());
        assert_eq!(parse_head(&bytes).unwrap().partition, 9);
        // Another partition id with the old CRC: the batch fails verification.
        let mut moved = bytes.to_vec();
        moved[0..4].copy_from_slice(&8u32.to_be_bytes());
        let moved_head = parse_head(&moved).unwrap();
        assert_eq!(moved_head.partition, 8);
        assert_eq!(
            verify(&moved_head, &moved),
            Err(BatchError::Checksum {
                map_id: 1,
                batch_id: 2
            })
        );
        verify(&head, &bytes).unwrap();
    }

    #[test]
    fn a_stored_batch_can_carry_data_that_does_not_decode() {
        let garbage = [0xF0u8; 40];
        for codec in [Codec::Lz4, Codec::Zstd] {
            let (head, bytes) = encode_stored(tag(3, 1, 0, 1), codec, 500, &garbage).unwrap();
            assert_eq!(bytes.len(), BATCH_HEAD_LEN + garbage.len());
            let parsed = parse_head(&bytes).unwrap();
            assert_eq!(parsed, head);
            verify(&parsed, &bytes).unwrap();
            assert!(matches!(
                decompress(&parsed, &bytes),
                Err(BatchError::Decompress {
                    map_id: 1,
                    batch_id: 1,
                    ..
                })
            ));
        }
        assert_eq!(
            encode_stored(tag(0, 0, 0, 0), Codec::None, MAX_BATCH_LEN + 1, b""),
            Err(BatchError::TooLarge(MAX_BATCH_LEN + 1))
        );
    }

    /// A frame (zstd or LZ4) that decodes to more or fewer bytes than the head says is an error:
    /// a frame claiming more cannot make the reader allocate it, one holding less is not read
    /// short, one holding more does not write past the buffer.
    #[test]
    fn a_frame_of_another_length_is_an_error() {
        let text: Vec<u8> = b"shuffle ".iter().copied().cycle().take(4000).collect();
        let frames = [
            (
                Codec::Zstd,
                zstd::bulk::compress(&text, ZSTD_LEVEL).unwrap(),
            ),
            (Codec::Lz4, lz4_flex::block::compress(&text)),
        ];
        for (codec, frame) in frames {
            for claimed in [3999, 4001, 16] {
                let (head, bytes) = encode_stored(tag(0, 2, 0, 5), codec, claimed, &frame).unwrap();
                assert!(
                    matches!(
                        decompress(&head, &bytes),
                        Err(BatchError::Decompress {
                            map_id: 2,
                            batch_id: 5,
                            ..
                        })
                    ),
                    "{codec} claiming {claimed}"
                );
            }
            let (head, bytes) = encode_stored(tag(0, 2, 0, 5), codec, 4000, &frame).unwrap();
            assert_eq!(&decompress(&head, &bytes).unwrap()[..], &text[..]);
        }
    }

    #[test]
    fn codecs_are_named_in_configuration() {
        for codec in Codec::ALL {
            assert_eq!(codec.name().parse::<Codec>(), Ok(codec));
        }
        assert_eq!(" ZSTD ".parse::<Codec>(), Ok(Codec::Zstd));
        assert_eq!("true".parse::<Codec>(), Ok(Codec::Lz4));
        assert_eq!("false".parse::<Codec>(), Ok(Codec::None));
        assert!("snappy"
            .parse::<Codec>()
            .unwrap_err()
            .contains("none, lz4 or zstd"));
    }
}
