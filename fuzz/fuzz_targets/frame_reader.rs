//! The connection's frame reader over an in-memory stream that delivers the bytes in
//! fuzzer-chosen pieces. Whatever the pieces, the reader must yield exactly the frames that
//! `frame::parse` finds in the whole stream, then end the same way: a clean end, a truncated
//! frame, or the same frame error.
//!
//! Input: one byte choosing the limits, a byte count `n`, `n` piece sizes, then the stream.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{block_on, limits, ChunkedReader, Input};
use sluice_protocol::connection::{FrameReader, ReadError};
use sluice_protocol::frame::{self, FrameError};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let limits = limits(input.u8());
    let pieces = input.u8() as usize;
    let pieces = input.bytes(pieces % 16);
    let stream = input.rest();

    // What the stream holds, parsed in one go.
    let mut whole = BytesMut::from(stream);
    let mut expected = Vec::new();
    let end = loop {
        match frame::parse(&mut whole, &limits) {
            Ok(parsed) => expected.push(parsed),
            Err(FrameError::Incomplete) if whole.is_empty() => break None,
            Err(FrameError::Incomplete) => break Some(Err(whole.len())),
            Err(e) => break Some(Ok(e)),
        }
    };

    let mut reader = FrameReader::new(ChunkedReader::new(stream, pieces), limits);
    for want in &expected {
        match block_on(reader.read_frame()) {
            Ok(Some(got)) => assert_eq!(&got, want),
            other => panic!("reader gave {other:?}, the stream holds another frame"),
        }
    }
    match (block_on(reader.read_frame()), end) {
        (Ok(None), None) => {}
        (Err(ReadError::Truncated { buffered }), Some(Err(left))) => assert_eq!(buffered, left),
        // A bad magic is reported with the bytes that had arrived when it was seen.
        (Err(ReadError::Frame(FrameError::BadMagic(_))), Some(Ok(FrameError::BadMagic(_)))) => {}
        (Err(ReadError::Frame(got)), Some(Ok(want))) => assert_eq!(got, want),
        (got, want) => panic!("reader ended with {got:?}, the stream with {want:?}"),
    }
});
