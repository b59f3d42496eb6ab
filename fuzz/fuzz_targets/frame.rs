//! Frame heads and whole frames from a peer: `frame::check` and `frame::parse`, with the
//! production limits and small ones.
//!
//! Input: one byte choosing the limits, then the bytes received.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{limits, Input};
use sluice_protocol::frame::{self, FrameError, FLAG_CRC, HEAD_LEN};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let limits = limits(input.u8());
    let bytes = input.rest();

    // The head alone.
    match frame::check(bytes, &limits) {
        Ok(head) => {
            assert!(bytes.len() >= HEAD_LEN);
            assert!(head.header_len <= limits.max_header && head.body_len <= limits.max_body);
            assert_eq!(
                head.encode()[..],
                bytes[..HEAD_LEN],
                "head does not re-encode"
            );
        }
        Err(FrameError::Incomplete) => {
            assert!(bytes.len() < HEAD_LEN);
            assert!(bytes.len() < 4 || bytes[..4] == frame::MAGIC.to_be_bytes());
        }
        Err(_) => {}
    }

    // Frames one after another, as a connection's read buffer holds them.
    let mut buf = BytesMut::from(bytes);
    loop {
        let before = buf.len();
        let head = frame::check(&buf, &limits);
        match frame::parse(&mut buf, &limits) {
            Ok(parsed) => {
                let head = head.expect("parse accepted a frame check rejected");
                assert_eq!(before - buf.len(), head.frame_len());
                assert_eq!(parsed.kind, head.kind);
                assert_eq!(parsed.request_id, head.request_id);
                assert_eq!(parsed.header.len(), head.header_len as usize);
                assert_eq!(parsed.body.len(), head.body_len as usize);
                let with_crc = head.flags & FLAG_CRC != 0;
                if with_crc {
                    let crc = frame::crc_of(&parsed.header, std::slice::from_ref(&parsed.body));
                    assert_eq!(crc, head.crc);
                }
                // What the writer would send for this frame parses back to it.
                let encoded = frame::encode_to_vec(
                    parsed.kind,
                    parsed.request_id,
                    &parsed.header,
                    &[parsed.body.clone()],
                    with_crc,
                )
                .expect("a parsed frame re-encodes");
                let again = frame::parse(&mut BytesMut::from(&encoded[..]), &limits)
                    .expect("a re-encoded frame parses");
                assert_eq!(again, parsed);
                if head.flags == 0 && head.crc == 0 || head.flags == FLAG_CRC {
                    assert_eq!(
                        encoded[..],
                        bytes[bytes.len() - before..][..head.frame_len()]
                    );
                }
            }
            Err(FrameError::Incomplete) => {
                assert_eq!(buf.len(), before, "an incomplete parse consumed bytes");
                match head {
                    Ok(head) => assert!(before < head.frame_len()),
                    Err(e) => assert_eq!(e, FrameError::Incomplete),
                }
                break;
            }
            Err(FrameError::Checksum { expected, actual }) => {
                // The whole frame was there and is dropped with the connection.
                let head = head.expect("checksum error without a valid head");
                assert!(head.flags & FLAG_CRC != 0 && expected == head.crc && actual != expected);
                break;
            }
            Err(e) => {
                assert_eq!(buf.len(), before, "a rejected frame consumed bytes");
                assert_eq!(head, Err(e));
                break;
            }
        }
    }
});
