//! The harness's own self-checking records.
//!
//! ```text
//!  0       4       8       12      16
//!  +-------+-------+-------+-------+-----------------------------+
//!  |  len  |  map  |  seq  | part  | payload (len - 16 bytes)    |
//!  +-------+-------+-------+-------+-----------------------------+
//! ```
//!
//! Little-endian u32 fields; `len` is the whole record. The payload is a splitmix64 stream
//! seeded by `(map, seq)`, so it does not compress and any changed byte is caught. `part` is
//! the partition the record was written to, so a reader can tell where it is in the shuffle.

/// Bytes before the payload.
pub const HEAD: usize = 16;

/// Where one record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id {
    pub map: u32,
    pub seq: u32,
}

/// One record as parsed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub id: Id,
    pub partition: u32,
    /// The payload is exactly what [`encode`] wrote for this id.
    pub intact: bool,
}

fn payload_word(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The payload words of record `id`, in order.
fn payload(id: Id) -> impl Iterator<Item = [u8; 8]> {
    let mut state = (u64::from(id.map) << 32) | u64::from(id.seq);
    std::iter::repeat_with(move || payload_word(&mut state).to_le_bytes())
}

fn payload_matches(id: Id, bytes: &[u8]) -> bool {
    bytes
        .chunks(8)
        .zip(payload(id))
        .all(|(chunk, word)| chunk == &word[..chunk.len()])
}

/// Appends the record `id` of `len` bytes (at least [`HEAD`]) bound for `partition` to `out`.
pub fn encode(out: &mut Vec<u8>, id: Id, partition: u32, len: usize) {
    let len = len.max(HEAD);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&id.map.to_le_bytes());
    out.extend_from_slice(&id.seq.to_le_bytes());
    out.extend_from_slice(&partition.to_le_bytes());
    let mut left = len - HEAD;
    for word in payload(id) {
        if left == 0 {
            break;
        }
        let n = left.min(8);
        out.extend_from_slice(&word[..n]);
        left -= n;
    }
}

/// Walks the records of one block. Errors (with the offset) on bytes that are not a record.
pub fn parse(block: &[u8], mut each: impl FnMut(Parsed)) -> Result<(), String> {
    let mut at = 0;
    while at < block.len() {
        let rest = &block[at..];
        if rest.len() < HEAD {
            return Err(format!("{} trailing bytes at offset {at}", rest.len()));
        }
        let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let len = word(0) as usize;
        if len < HEAD || len > rest.len() {
            return Err(format!("record length {len} at offset {at} does not fit"));
        }
        let id = Id {
            map: word(4),
            seq: word(8),
        };
        each(Parsed {
            id,
            partition: word(12),
            intact: payload_matches(id, &rest[HEAD..len]),
        });
        at += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_changes_are_caught() {
        let mut block = Vec::new();
        encode(&mut block, Id { map: 1, seq: 2 }, 3, 100);
        encode(&mut block, Id { map: 4, seq: 5 }, 6, 10);
        encode(&mut block, Id { map: 7, seq: 8 }, 9, 1001);
        let mut seen = Vec::new();
        parse(&block, |p| seen.push(p)).unwrap();
        let ids: Vec<_> = seen
            .iter()
            .map(|p| (p.id.map, p.id.seq, p.partition))
            .collect();
        assert_eq!(ids, vec![(1, 2, 3), (4, 5, 6), (7, 8, 9)]);
        assert!(seen.iter().all(|p| p.intact));
        block[60] ^= 0x10;
        let mut intact = Vec::new();
        parse(&block, |p| intact.push(p.intact)).unwrap();
        assert_eq!(intact, vec![false, true, true]);
        assert!(parse(&block[..block.len() - 1], |_| {}).is_err());
    }
}
