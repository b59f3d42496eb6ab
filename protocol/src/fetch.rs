//! Batched reads on the fetch port: many locations opened, or many chunks read, in one request.
//!
//! A reader of many small partitions would otherwise pay one round trip per location opened
//! (`OpenStream`) and one per chunk read (`FetchChunk`). `OpenStreams` carries many
//! `OpenStreamHeader`s of one worker and is answered by one `StreamsOpened` whose entries are,
//! in order, each location's page or its own error. `FetchChunks` carries many
//! `FetchChunkHeader`s and is answered by one `ChunksData` frame:
//!
//! ```text
//!  header: ChunksDataHeader { chunks: [ {length: a}, {error: ..}, {length: b}, ... ] }
//!  body:   | a bytes of chunk 0 | b bytes of chunk 2 | ...
//! ```
//!
//! A chunk that failed has an error and no bytes in the body, so one bad location never fails
//! the others. [`split_chunks`] cuts a received body back into the chunks; it trusts no length.

use bytes::Bytes;

use crate::{pb, ErrorCode};

/// Most locations one `OpenStreams` may name.
pub const MAX_OPEN_STREAMS: usize = 4096;
/// Most chunks one `FetchChunks` may name.
pub const MAX_FETCH_CHUNKS: usize = 4096;

/// One chunk of a `ChunksData` answer: its bytes, or the error the worker gave for it.
pub type ChunkResult = Result<Bytes, (ErrorCode, String)>;

/// Cuts the body of a `ChunksData` answer into its chunks, in the order of `header`. Errors
/// (naming why) when the lengths do not add up to the body exactly or `expected` chunks were
/// asked for and a different number came back.
pub fn split_chunks(
    header: &pb::ChunksDataHeader,
    mut body: Bytes,
    expected: usize,
) -> Result<Vec<ChunkResult>, String> {
    if header.chunks.len() != expected {
        return Err(format!(
            "{} chunks were asked for and {} answered",
            expected,
            header.chunks.len()
        ));
    }
    let mut out = Vec::with_capacity(header.chunks.len());
    for (i, answer) in header.chunks.iter().enumerate() {
        if let Some(error) = &answer.error {
            out.push(Err((
                ErrorCode::from_u32(error.code),
                error.message.clone(),
            )));
            continue;
        }
        let len = usize::try_from(answer.length).unwrap_or(usize::MAX);
        if len > body.len() {
            return Err(format!(
                "chunk {i} says {} bytes but {} are left in the body",
                answer.length,
                body.len()
            ));
        }
        out.push(Ok(body.split_to(len)));
    }
    if !body.is_empty() {
        return Err(format!(
            "{} bytes follow the last chunk in the body",
            body.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn answer(length: u64) -> pb::ChunkAnswer {
        pb::ChunkAnswer {
            length,
            error: None,
        }
    }

    fn failed(code: ErrorCode) -> pb::ChunkAnswer {
        pb::ChunkAnswer {
            length: 0,
            error: Some(pb::ErrorHeader {
                code: code as u32,
                message: "gone".into(),
            }),
        }
    }

    #[test]
    fn a_failed_chunk_has_no_bytes_and_fails_alone() {
        let header = pb::ChunksDataHeader {
            chunks: vec![answer(2), failed(ErrorCode::NotFound), answer(3)],
        };
        let split = split_chunks(&header, Bytes::from_static(b"abcde"), 3).unwrap();
        assert_eq!(split[0], Ok(Bytes::from_static(b"ab")));
        assert_eq!(split[1], Err((ErrorCode::NotFound, "gone".to_string())));
        assert_eq!(split[2], Ok(Bytes::from_static(b"cde")));
    }

    #[test]
    fn lengths_must_cover_the_body_exactly() {
        let header = pb::ChunksDataHeader {
            chunks: vec![answer(2), answer(3)],
        };
        assert!(split_chunks(&header, Bytes::from_static(b"abcd"), 2).is_err());
        assert!(split_chunks(&header, Bytes::from_static(b"abcdef"), 2).is_err());
        assert!(split_chunks(&header, Bytes::from_static(b"abcde"), 3).is_err());
        let huge = pb::ChunksDataHeader {
            chunks: vec![answer(u64::MAX), answer(1)],
        };
        assert!(split_chunks(&huge, Bytes::from_static(b"a"), 2).is_err());
    }

    proptest! {
        #[test]
        fn encoded_answers_split_back(
            chunks in proptest::collection::vec(
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)), 0..16),
        ) {
            let mut header = pb::ChunksDataHeader::default();
            let mut body = Vec::new();
            for chunk in &chunks {
                match chunk {
                    Some(bytes) => {
                        header.chunks.push(answer(bytes.len() as u64));
                        body.extend_from_slice(bytes);
                    }
                    None => header.chunks.push(failed(ErrorCode::PermissionDenied)),
                }
            }
            // Through the wire encoding, as a reader receives it.
            let header: pb::ChunksDataHeader =
                prost::Message::decode(prost::Message::encode_to_vec(&header).as_slice()).unwrap();
            let split = split_chunks(&header, Bytes::from(body), chunks.len()).unwrap();
            for (got, want) in split.iter().zip(&chunks) {
                match (got, want) {
                    (Ok(bytes), Some(want)) => prop_assert_eq!(&bytes[..], &want[..]),
                    (Err((code, _)), None) => prop_assert_eq!(*code, ErrorCode::PermissionDenied),
                    _ => prop_assert!(false, "chunk and answer disagree"),
                }
            }
        }

        #[test]
        fn any_header_and_body_never_panic(
            lengths in proptest::collection::vec(any::<u64>(), 0..8),
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let header = pb::ChunksDataHeader { chunks: lengths.into_iter().map(answer).collect() };
            let n = header.chunks.len();
            if let Ok(split) = split_chunks(&header, Bytes::from(body.clone()), n) {
                let total: usize = split.iter().map(|c| c.as_ref().map_or(0, Bytes::len)).sum();
                prop_assert_eq!(total, body.len());
            }
        }
    }
}
