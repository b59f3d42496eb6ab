//! A push frame as the push server takes it apart (worker/src/server.rs `append_push`): decode
//! the `PushHeader`, check the shuffle key and that the slices add up to the body, cut the body
//! into one slice per location, and append each slice to a real partition with
//! `Partition::append`, which walks its batches and indexes them.
//!
//! The cutting below mirrors `append_push` line for line (that function needs a whole running
//! worker); everything after the cut is the worker's own code.
//!
//! Input: a 2-byte header length, the header, then the body.

#![no_main]

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::Input;
use sluice_protocol::batch::{self, BatchIter};
use sluice_protocol::frame::{Frame, MessageType};
use sluice_protocol::{pb, ShuffleKey};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let header_len = input.u16() as usize;
    let header = Bytes::copy_from_slice(input.bytes(header_len));
    let body = Bytes::copy_from_slice(input.rest());
    let frame = Frame {
        kind: MessageType::PushMergedData,
        flags: sluice_protocol::frame::FLAG_CRC,
        request_id: 1,
        tag: None,
        header,
        body,
    };

    let Ok(header) = frame.decode_header::<pb::PushHeader>("push") else {
        return;
    };
    let Ok(shuffle) = ShuffleKey::from_pb(header.shuffle.as_ref()) else {
        return;
    };
    let total: u64 = header.slices.iter().map(|s| u64::from(s.length)).sum();
    if total != frame.body.len() as u64 {
        return;
    }

    let mut partitions: HashMap<(u32, u32), Arc<_>> = HashMap::new();
    let mut offset = 0usize;
    for slice in &header.slices {
        let end = offset + slice.length as usize;
        let bytes: Bytes = frame.body.slice(offset..end);
        assert_eq!(bytes[..], frame.body[offset..end]);
        offset = end;
        let partition = partitions
            .entry((slice.partition, slice.epoch))
            .or_insert_with(|| sluice_fuzz::partition(&shuffle, slice.partition, slice.epoch));
        // Never flushes: the threshold and the cap are above anything a fuzz input holds.
        let appended = partition.append(slice.partition, bytes.clone(), u64::MAX, u64::MAX);
        // A slice is taken exactly when it is whole batches of its partition back to back, each
        // passing its CRC.
        let mut walked = 0usize;
        let whole = BatchIter::new(bytes.clone()).all(|item| match item {
            Ok((head, batch)) => {
                assert_eq!(batch.len(), head.total_len());
                walked += batch.len();
                head.partition == slice.partition && batch::verify(&head, &batch).is_ok()
            }
            Err(_) => false,
        });
        assert_eq!(
            appended.is_ok(),
            whole,
            "append disagrees with the batches: {appended:?}"
        );
        if whole {
            assert_eq!(walked, bytes.len());
        }
    }
    assert_eq!(offset, frame.body.len(), "slices do not cover the body");
});
