//! Every protobuf frame header a worker, the master or a reader decodes, through the same
//! `Frame::decode_header` the servers call, followed by the checks the server makes on the
//! decoded header before it touches any state.
//!
//! Input: one byte choosing the header type, then the header bytes. For `ChunksDataHeader`
//! the bytes after the header (its length in the byte after the type) are the body that
//! `fetch::split_chunks` cuts into chunks.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::Input;
use sluice_protocol::fetch::{split_chunks, MAX_FETCH_CHUNKS, MAX_OPEN_STREAMS};
use sluice_protocol::frame::{Frame, MessageType};
use sluice_protocol::{ids, pb, ShuffleKey};

/// Decodes `header` as `M` the way the servers do; a decoded header re-encodes to one that
/// decodes to the same message.
fn decode<M: prost::Message + Default + PartialEq>(kind: MessageType, header: &[u8]) -> Option<M> {
    let frame = Frame {
        kind,
        flags: 0,
        request_id: 1,
        tag: None,
        header: Bytes::copy_from_slice(header),
        body: Bytes::new(),
    };
    let message: M = frame.decode_header("fuzz").ok()?;
    let again = M::decode(message.encode_to_vec().as_slice()).expect("re-encoded header decodes");
    assert!(again == message, "header does not survive a re-encode");
    Some(message)
}

/// `ShuffleKey::from_pb` as every handler calls it: an accepted key is a safe directory name.
fn shuffle(key: Option<&pb::ShuffleKey>) {
    if let Ok(key) = ShuffleKey::from_pb(key) {
        let app: &str = &key.app_id;
        assert!(!app.is_empty() && app != "." && app != ".." && !app.contains(['/', '\0']));
    }
}

fn locations(specs: &[pb::LocationSpec]) {
    for spec in specs {
        if let Some(replica) = &spec.replica {
            let _ = replica.push_addr();
        }
    }
}

/// What `storage::chunk_source` computes from a fetch request before opening a file.
fn chunk(chunk: pb::Chunk, data_len: u64, max_len: u64) {
    let total = chunk
        .ranges
        .iter()
        .try_fold(0u64, |sum, r| sum.checked_add(r.length))
        .unwrap_or(u64::MAX);
    if total > max_len {
        return;
    }
    for range in &chunk.ranges {
        if range.offset.saturating_add(range.length) > data_len {
            return;
        }
        assert!(range.offset <= data_len && range.length <= data_len - range.offset);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let which = input.u8();
    if which % 12 == 11 {
        // A batched fetch's answer: header, then the body it describes.
        let len = usize::from(input.u8());
        let rest = input.rest();
        let (header, body) = rest.split_at(len.min(rest.len()));
        if let Some(answer) = decode::<pb::ChunksDataHeader>(MessageType::ChunksData, header) {
            let count = answer.chunks.len();
            if let Ok(chunks) = split_chunks(&answer, Bytes::copy_from_slice(body), count) {
                assert_eq!(chunks.len(), count);
                let total: usize = chunks
                    .iter()
                    .map(|c| c.as_ref().map_or(0, Bytes::len))
                    .sum();
                assert_eq!(total, body.len(), "the chunks cover the body exactly");
            }
        }
        return;
    }
    let header = input.rest();
    match which % 12 {
        0 => {
            if let Some(push) = decode::<pb::PushHeader>(MessageType::PushMergedData, header) {
                shuffle(push.shuffle.as_ref());
                // The push server's `slices add up to the body` sum cannot overflow.
                let total = push
                    .slices
                    .iter()
                    .try_fold(0u64, |sum, s| sum.checked_add(u64::from(s.length)));
                assert!(total.is_some());
            }
        }
        1 => {
            if let Some(reserve) = decode::<pb::ReserveHeader>(MessageType::Reserve, header) {
                shuffle(reserve.shuffle.as_ref());
                locations(&reserve.locations);
            }
        }
        2 => {
            if let Some(commit) = decode::<pb::CommitHeader>(MessageType::Commit, header) {
                shuffle(commit.shuffle.as_ref());
                locations(&commit.locations);
            }
        }
        3 => {
            if let Some(destroy) = decode::<pb::DestroyHeader>(MessageType::Destroy, header) {
                let _ = ids::validate_app_id(&destroy.app_id);
            }
        }
        4 => {
            if let Some(open) = decode::<pb::OpenStreamHeader>(MessageType::OpenStream, header) {
                if let Some(location) = &open.location {
                    shuffle(location.shuffle.as_ref());
                }
            }
        }
        5 => {
            if let Some(fetch) = decode::<pb::FetchChunkHeader>(MessageType::FetchChunk, header) {
                if let Some(location) = &fetch.location {
                    shuffle(location.shuffle.as_ref());
                }
                chunk(fetch.chunk.unwrap_or_default(), 1 << 40, 256 << 20);
            }
        }
        6 => {
            let _ = decode::<pb::CommittedHeader>(MessageType::Committed, header);
        }
        7 => {
            if let Some(piece) = decode::<pb::HandOverHeader>(MessageType::HandOver, header) {
                shuffle(piece.shuffle.as_ref());
                locations(piece.location.as_slice());
            }
        }
        8 => {
            if let Some(open) = decode::<pb::OpenStreamsHeader>(MessageType::OpenStreams, header) {
                if open.streams.len() <= MAX_OPEN_STREAMS {
                    for stream in &open.streams {
                        if let Some(location) = &stream.location {
                            shuffle(location.shuffle.as_ref());
                        }
                    }
                }
            }
        }
        9 => {
            if let Some(fetch) = decode::<pb::FetchChunksHeader>(MessageType::FetchChunks, header) {
                // The worker's whole-batch byte sum cannot overflow, and each chunk is checked
                // as a single FetchChunk's.
                if fetch.chunks.len() <= MAX_FETCH_CHUNKS {
                    let _ = fetch
                        .chunks
                        .iter()
                        .map(|c| {
                            c.chunk
                                .as_ref()
                                .map_or(0, sluice_worker::storage::read::chunk_len)
                        })
                        .try_fold(0u64, |sum, len| sum.checked_add(len));
                    for c in fetch.chunks {
                        if let Some(location) = &c.location {
                            shuffle(location.shuffle.as_ref());
                        }
                        chunk(c.chunk.unwrap_or_default(), 1 << 40, 256 << 20);
                    }
                }
            }
        }
        10 => {
            if let Some(opened) =
                decode::<pb::StreamsOpenedHeader>(MessageType::StreamsOpened, header)
            {
                for stream in opened.streams {
                    let page = stream.opened.unwrap_or_default();
                    for c in page.chunks {
                        chunk(c, page.file_length, u64::MAX);
                    }
                }
            }
        }
        _ => {
            if let Some(opened) =
                decode::<pb::StreamOpenedHeader>(MessageType::StreamOpened, header)
            {
                for c in opened.chunks {
                    chunk(c, opened.file_length, u64::MAX);
                }
            }
        }
    }
});
