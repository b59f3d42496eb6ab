//! The batch index written beside each data file.
//!
//! One 24-byte entry per batch, in file order, appended by the flusher together with the data:
//!
//! ```text
//!  0       4         8          12                 20        24
//!  +-------+---------+----------+------------------+---------+
//!  |  map  | attempt | batch id |  offset in data  |  length |
//!  |  u32  |   u32   |   u32    |       u64        |   u32   |
//!  +-------+---------+----------+------------------+---------+
//! ```
//!
//! Big-endian. The fetch server cuts chunks from it and serves map-range reads (`[start_map,
//! end_map)`) without scanning or re-sorting the data file.

use sluice_protocol::batch::BatchHead;
use sluice_protocol::pb;

pub const ENTRY_LEN: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub map_id: u32,
    pub attempt: u32,
    pub batch_id: u32,
    pub offset: u64,
    pub length: u32,
}

impl IndexEntry {
    pub fn for_batch(head: &BatchHead, offset: u64) -> IndexEntry {
        IndexEntry {
            map_id: head.map_id,
            attempt: head.attempt,
            batch_id: head.batch_id,
            offset,
            length: head.total_len() as u32,
        }
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.map_id.to_be_bytes());
        out.extend_from_slice(&self.attempt.to_be_bytes());
        out.extend_from_slice(&self.batch_id.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

impl IndexEntry {
    /// Decodes one entry (`raw` must be [`ENTRY_LEN`] bytes).
    pub fn decode(raw: &[u8]) -> Option<IndexEntry> {
        let raw: &[u8; ENTRY_LEN] = raw.try_into().ok()?;
        let word = |i: usize| u32::from_be_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&raw[12..20]);
        Some(IndexEntry {
            map_id: word(0),
            attempt: word(4),
            batch_id: word(8),
            offset: u64::from_be_bytes(offset),
            length: word(20),
        })
    }
}

/// Decodes a whole index file. Entries must lie inside a data file of `data_len` bytes, in file
/// order, without overlapping (batches are appended back to back, so a valid index never
/// overlaps; one that does is corrupt and would serve bytes twice).
pub fn decode(bytes: &[u8], data_len: u64) -> Result<Vec<IndexEntry>, String> {
    if bytes.len() % ENTRY_LEN != 0 {
        return Err(format!(
            "index of {} bytes is not a whole number of entries",
            bytes.len()
        ));
    }
    let mut previous_end = 0u64;
    bytes
        .chunks_exact(ENTRY_LEN)
        .map(|e| {
            let entry = IndexEntry::decode(e).ok_or_else(|| "torn index entry".to_string())?;
            let end = entry.offset.checked_add(u64::from(entry.length));
            let Some(end) = end.filter(|end| *end <= data_len) else {
                return Err(format!(
                    "index entry at {} + {} runs past the data file's {data_len} bytes",
                    entry.offset, entry.length
                ));
            };
            if entry.offset < previous_end {
                return Err(format!(
                    "index entry at {} overlaps the batch before it, which ends at {previous_end}",
                    entry.offset
                ));
            }
            previous_end = end;
            Ok(entry)
        })
        .collect()
}

/// Groups the batches of maps in `[start_map, end_map)` (`end_map` `None`: no upper bound; an
/// empty range selects nothing) into chunks of at most `chunk_size` bytes (a larger batch gets a chunk of its own). Adjacent
/// batches merge into one range, so a full read is a few large sequential ranges. Entries are
/// pushed in file order, page by page.
#[derive(Debug)]
pub struct Chunker {
    start_map: u32,
    end_map: Option<u32>,
    chunk_size: u64,
    done: Vec<pb::Chunk>,
    current: pb::Chunk,
    current_len: u64,
    ranges: usize,
}

impl Chunker {
    pub fn new(start_map: u32, end_map: Option<u32>, chunk_size: u64) -> Chunker {
        Chunker {
            start_map,
            end_map,
            chunk_size,
            done: Vec::new(),
            current: pb::Chunk::default(),
            current_len: 0,
            ranges: 0,
        }
    }

    pub fn push(&mut self, entry: &IndexEntry) {
        if entry.map_id < self.start_map || self.end_map.is_some_and(|end| entry.map_id >= end) {
            return;
        }
        let length = u64::from(entry.length);
        if self.current_len > 0 && self.current_len + length > self.chunk_size {
            self.done.push(std::mem::take(&mut self.current));
            self.current_len = 0;
        }
        match self.current.ranges.last_mut() {
            Some(last) if last.offset + last.length == entry.offset => last.length += length,
            _ => {
                self.current.ranges.push(pb::Range {
                    offset: entry.offset,
                    length,
                });
                self.ranges += 1;
            }
        }
        self.current_len += length;
    }

    /// Chunks completed so far.
    pub fn chunks(&self) -> usize {
        self.done.len()
    }

    /// Ranges so far, in all chunks.
    pub fn ranges(&self) -> usize {
        self.ranges
    }

    pub fn finish(mut self) -> Vec<pb::Chunk> {
        if self.current_len > 0 {
            self.done.push(self.current);
        }
        self.done
    }
}

/// Chunks of a whole index at once (see [`Chunker`]).
pub fn chunks(
    entries: &[IndexEntry],
    start_map: u32,
    end_map: Option<u32>,
    chunk_size: u64,
) -> Vec<pb::Chunk> {
    let mut chunker = Chunker::new(start_map, end_map, chunk_size);
    entries.iter().for_each(|e| chunker.push(e));
    chunker.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(map_id: u32, offset: u64, length: u32) -> IndexEntry {
        IndexEntry {
            map_id,
            attempt: 0,
            batch_id: 0,
            offset,
            length,
        }
    }

    #[test]
    fn round_trip_and_bounds() {
        let entries = vec![entry(1, 0, 10), entry(2, 10, 20)];
        let mut bytes = Vec::new();
        entries.iter().for_each(|e| e.encode_into(&mut bytes));
        assert_eq!(decode(&bytes, 30).unwrap(), entries);
        assert!(
            decode(&bytes, 29).is_err(),
            "entry past the data file accepted"
        );
        assert!(decode(&bytes[..30], 30).is_err(), "torn entry accepted");
    }

    /// Found by the `index` fuzz target: two entries over the same bytes were accepted and
    /// `chunks` then served those bytes twice.
    #[test]
    fn overlapping_or_backward_entries_are_rejected() {
        let encode = |entries: &[IndexEntry]| {
            let mut bytes = Vec::new();
            entries.iter().for_each(|e| e.encode_into(&mut bytes));
            bytes
        };
        let overlapping = encode(&[entry(0, 0, 1280), entry(0, 0, 8_947_848)]);
        assert!(decode(&overlapping, 1 << 30).is_err());
        let backward = encode(&[entry(0, 100, 10), entry(0, 0, 10)]);
        assert!(decode(&backward, 1 << 30).is_err());
        let straddling = encode(&[entry(0, 0, 10), entry(0, 9, 10)]);
        assert!(decode(&straddling, 1 << 30).is_err());
        let with_gap = vec![entry(0, 0, 10), entry(1, 20, 10)];
        assert_eq!(decode(&encode(&with_gap), 30).unwrap(), with_gap);
        // An end past u64::MAX is outside any data file, even one of u64::MAX bytes.
        assert!(decode(&encode(&[entry(0, u64::MAX, 1)]), u64::MAX).is_err());
    }

    #[test]
    fn chunks_merge_adjacent_batches_and_respect_the_size() {
        let entries: Vec<_> = (0..10)
            .map(|i| entry(i % 2, u64::from(i) * 10, 10))
            .collect();
        let all = chunks(&entries, 0, None, 35);
        let lens: Vec<u64> = all
            .iter()
            .map(|c| c.ranges.iter().map(|r| r.length).sum())
            .collect();
        assert_eq!(lens, vec![30, 30, 30, 10]);
        assert!(all.iter().all(|c| c.ranges.len() == 1));
        // Map range [1, 2): only odd entries, none adjacent.
        let odd = chunks(&entries, 1, Some(2), 1000);
        assert_eq!(odd.len(), 1);
        assert_eq!(odd[0].ranges.len(), 5);
        assert!(odd[0].ranges.iter().all(|r| (r.offset / 10) % 2 == 1));
        // A batch larger than the chunk size is a chunk of its own.
        let big = chunks(
            &[entry(0, 0, 5), entry(0, 5, 100), entry(0, 105, 5)],
            0,
            None,
            50,
        );
        assert_eq!(big.len(), 3);
    }

    #[test]
    fn an_empty_map_range_selects_nothing() {
        let entries: Vec<_> = (0..6).map(|i| entry(i, u64::from(i) * 10, 10)).collect();
        for start in [0, 3, 6] {
            assert!(
                chunks(&entries, start, Some(start), 1000).is_empty(),
                "[{start}, {start})"
            );
        }
        assert!(chunks(&entries, 4, Some(2), 1000).is_empty());
        let from_3: u64 = chunks(&entries, 3, None, 1000)
            .iter()
            .flat_map(|c| &c.ranges)
            .map(|r| r.length)
            .sum();
        assert_eq!(from_3, 30);
    }
}
