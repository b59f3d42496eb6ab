//! Batches as a reader gets them in a chunk (and a worker in a push slice): `BatchIter` walks
//! them, `parse_head` reads each head, `verify` checks the CRC and `decompress` restores the
//! raw bytes. `decompress` never panics and never returns more than the head's `raw_len`
//! (exactly `raw_len` when it succeeds).
//!
//! Input: one flag byte, then batches back to back. With bit 0 of the flag set, each batch's
//! CRC is recomputed before it is checked, so the fuzzer reaches past `verify` with arbitrary
//! data (a reader only decompresses verified batches; LZ4 sees hostile data either way).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::Input;
use sluice_protocol::batch::{self, BatchIter, Codec, BATCH_HEAD_LEN};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let fix_crc = input.u8() & 1 == 1;
    let mut bytes = input.rest().to_vec();

    if fix_crc {
        // Give every structurally whole batch a correct CRC.
        let mut at = 0;
        while let Ok(head) = batch::parse_head(&bytes[at..]) {
            if bytes.len() - at < head.total_len() {
                break;
            }
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&bytes[at..at + 24]);
            hasher.update(&bytes[at + BATCH_HEAD_LEN..at + head.total_len()]);
            let crc = hasher.finalize();
            bytes[at + 24..at + BATCH_HEAD_LEN].copy_from_slice(&crc.to_be_bytes());
            at += head.total_len();
        }
    }

    let buf = Bytes::from(bytes);
    let mut walked = 0usize;
    for item in BatchIter::new(buf.clone()) {
        let Ok((head, whole)) = item else {
            assert!(walked < buf.len());
            break;
        };
        assert_eq!(whole.len(), head.total_len());
        assert_eq!(whole[..], buf[walked..walked + head.total_len()]);
        assert_eq!(batch::parse_head(&whole), Ok(head));
        walked += whole.len();

        let verified = batch::verify(&head, &whole).is_ok();
        match batch::decompress(&head, &whole) {
            Ok(raw) => {
                assert_eq!(
                    raw.len(),
                    head.raw_len as usize,
                    "decompressed to the wrong length"
                );
                if head.codec == Codec::None {
                    assert_eq!(raw[..], whole[BATCH_HEAD_LEN..]);
                }
                if verified {
                    // A writer encoding the same raw bytes gets a batch that reads back to them.
                    let (again, encoded) = batch::encode(head.tag(), &raw, batch::Codec::Lz4)
                        .expect("raw bytes of a batch re-encode");
                    batch::verify(&again, &encoded).expect("a fresh batch verifies");
                    assert_eq!(
                        batch::decompress(&again, &encoded).expect("a fresh batch decompresses"),
                        raw
                    );
                }
            }
            Err(e) => assert!(matches!(e, batch::BatchError::Decompress { .. }), "{e:?}"),
        }
    }
});
