//! Self-checking records for the benchmark and tests.
//!
//! ```text
//!  0       4       8       12
//!  +-------+-------+-------+---------------------------+
//!  |  len  |  map  |  seq  | payload (len - 12 bytes)  |
//!  +-------+-------+-------+---------------------------+
//! ```
//!
//! `len` is the whole record's length (big-endian u32). The payload is a pure function of
//! `(map, seq)`: alternating pseudo-random and repeated 8-byte words, so it compresses about
//! like real shuffle data and any changed byte is detected.

pub const RECORD_HEAD: usize = 12;

/// The identity of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordId {
    pub map: u32,
    pub seq: u32,
}

fn fill_payload(map: u32, seq: u32, out: &mut [u8]) {
    let seed = (u64::from(map) << 32 | u64::from(seq)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut state = seed;
    for (i, word) in out.chunks_mut(8).enumerate() {
        let value = if i % 2 == 0 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        } else {
            seed
        };
        word.copy_from_slice(&value.to_le_bytes()[..word.len()]);
    }
}

/// Appends record `(map, seq)` of `len` bytes (at least [`RECORD_HEAD`]) to `out`.
pub fn encode(out: &mut Vec<u8>, map: u32, seq: u32, len: usize) {
    let len = len.max(RECORD_HEAD);
    let start = out.len();
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(&map.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.resize(start + len, 0);
    fill_payload(map, seq, &mut out[start + RECORD_HEAD..]);
}

/// Walks the records of `block`, calling `each` with every record's id and, when `verify` is
/// set, whether its payload is intact (always `true` otherwise). Errors on a malformed block.
pub fn parse(
    block: &[u8],
    verify: bool,
    mut each: impl FnMut(RecordId, usize, bool),
) -> Result<(), String> {
    let mut scratch = Vec::new();
    let mut rest = block;
    while !rest.is_empty() {
        if rest.len() < RECORD_HEAD {
            return Err(format!("{} trailing bytes are not a record", rest.len()));
        }
        let word = |i: usize| u32::from_be_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let len = word(0) as usize;
        if len < RECORD_HEAD || len > rest.len() {
            return Err(format!(
                "record length {len} does not fit the {} bytes left",
                rest.len()
            ));
        }
        let id = RecordId {
            map: word(4),
            seq: word(8),
        };
        let intact = !verify || {
            scratch.resize(len - RECORD_HEAD, 0);
            fill_payload(id.map, id.seq, &mut scratch);
            scratch[..] == rest[RECORD_HEAD..len]
        };
        each(id, len, intact);
        rest = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_detect_changes() {
        let mut block = Vec::new();
        encode(&mut block, 3, 7, 100);
        encode(&mut block, 4, 0, 12);
        encode(&mut block, 5, 1, 3000);
        let mut seen = Vec::new();
        parse(&block, true, |id, len, ok| {
            seen.push((id.map, id.seq, len, ok))
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![(3, 7, 100, true), (4, 0, 12, true), (5, 1, 3000, true)]
        );
        block[50] ^= 1;
        let mut intact = Vec::new();
        parse(&block, true, |_, _, ok| intact.push(ok)).unwrap();
        assert_eq!(intact, vec![false, true, true]);
        assert!(parse(&block[..99], true, |_, _, _| {}).is_err());
    }
}
