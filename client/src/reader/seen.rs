//! What a reader keeps of a partition: only batches that passed every check.
//!
//! A batch takes two steps before it counts. [`verify`] checks its CRC and that it was cut for
//! the partition being read, giving a [`Verified`] batch; [`Verified::decompress`] decodes its
//! data, giving an [`Accepted`] one. Only an [`Accepted`] batch can enter [`Seen`], so a batch is
//! marked seen and counted against its map's totals only once its bytes were checked and
//! decoded: a batch that fails a step is never taken for a repeat when another copy brings it
//! again, and never counted as read.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use sluice_protocol::batch::{self, BatchError, BatchHead};
use sluice_protocol::pb;

/// A batch whose CRC holds and which belongs to the partition being read.
#[derive(Debug)]
pub(super) struct Verified {
    head: BatchHead,
    whole: Bytes,
}

/// Checks a whole batch (`whole`, head included) read from a file of `partition`. An error means
/// the copy's bytes are damaged or misplaced; another copy may hold them intact.
pub(super) fn verify(partition: u32, head: BatchHead, whole: Bytes) -> Result<Verified, String> {
    batch::verify(&head, &whole).map_err(|e| e.to_string())?;
    if head.partition != partition {
        return Err(format!(
            "a batch of partition {} (map {}, batch {}) is in a file of partition {partition}",
            head.partition, head.map_id, head.batch_id
        ));
    }
    Ok(Verified { head, whole })
}

impl Verified {
    /// Decodes the batch's data. The CRC held, so an error here means the writer stored bytes
    /// that do not decode, and every copy holds the same.
    pub fn decompress(self) -> Result<Accepted, BatchError> {
        let raw = batch::decompress(&self.head, &self.whole)?;
        Ok(Accepted {
            head: self.head,
            stored_len: self.whole.len() as u64,
            raw,
        })
    }
}

/// A verified batch with its decoded records: the only thing [`Seen`] takes.
#[derive(Debug)]
pub(super) struct Accepted {
    head: BatchHead,
    stored_len: u64,
    raw: Bytes,
}

impl Accepted {
    /// The batch's length as stored (head included): what its writer counted for it.
    pub fn stored_len(&self) -> u64 {
        self.stored_len
    }
}

/// The batches taken from the partition being read, and their totals per map.
#[derive(Debug, Default)]
pub(super) struct Seen {
    batches: HashSet<(u32, u32)>,
    per_map: HashMap<u32, pb::BatchStats>,
}

impl Seen {
    /// Whether a batch with this head's `(map, batch id)` was taken already.
    pub fn contains(&self, head: &BatchHead) -> bool {
        self.batches.contains(&(head.map_id, head.batch_id))
    }

    /// Takes a batch: counts it for its map and returns its records, or `None` when a batch with
    /// the same `(map, batch id)` was taken before (a copy of it read again).
    pub fn take(&mut self, batch: Accepted) -> Option<Bytes> {
        let head = batch.head;
        if !self.batches.insert((head.map_id, head.batch_id)) {
            return None;
        }
        self.per_map
            .entry(head.map_id)
            .or_default()
            .add(batch.stored_len, head.crc);
        Some(batch.raw)
    }

    /// Compares what was taken with what the winning attempts of the maps read reported
    /// (`expected`: every map of the range that wrote to the partition). The reason of the first
    /// difference.
    pub fn check<'a>(
        &self,
        expected: impl IntoIterator<Item = &'a pb::ExpectedMap>,
    ) -> Result<(), String> {
        let mut expected_maps = 0usize;
        for expected in expected {
            let want = expected.stats.unwrap_or_default();
            let got = self
                .per_map
                .get(&expected.map_id)
                .copied()
                .unwrap_or_default();
            if want.batches > 0 {
                expected_maps += 1;
            }
            if got != want {
                return Err(format!(
                    "map {} wrote {} bytes in {} batches (checksum {:#x}) but {} bytes in {} batches (checksum {:#x}) were read",
                    expected.map_id, want.bytes, want.batches, want.checksum, got.bytes, got.batches, got.checksum
                ));
            }
        }
        let read_maps = self.per_map.values().filter(|s| s.batches > 0).count();
        if read_maps != expected_maps {
            return Err(format!(
                "read batches of {read_maps} maps but {expected_maps} maps reported data"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sluice_protocol::batch::{encode, encode_stored, parse_head, BatchTag, Codec};

    use super::*;

    fn tag(partition: u32, map_id: u32, batch_id: u32) -> BatchTag {
        BatchTag {
            partition,
            map_id,
            attempt: 0,
            batch_id,
        }
    }

    fn read(partition: u32, bytes: &Bytes) -> Result<Verified, String> {
        verify(partition, parse_head(bytes).unwrap(), bytes.clone())
    }

    fn expected(map_id: u32, batches: &[&Bytes]) -> pb::ExpectedMap {
        let mut stats = pb::BatchStats::default();
        for batch in batches {
            stats.add(batch.len() as u64, parse_head(batch).unwrap().crc);
        }
        pb::ExpectedMap {
            map_id,
            stats: Some(stats),
        }
    }

    #[test]
    fn a_batch_that_does_not_decompress_is_neither_seen_nor_counted() {
        let (_, good) = encode(tag(0, 1, 0), &[7u8; 300], Codec::Lz4).unwrap();
        // The same (map, batch id) as a CRC-valid batch whose "LZ4" data is garbage.
        let (_, bad) = encode_stored(tag(0, 1, 0), Codec::Lz4, 300, &[0xF0; 40]).unwrap();
        let mut seen = Seen::default();
        let verified = read(0, &bad).unwrap();
        assert!(verified.decompress().is_err());
        assert!(!seen.contains(&parse_head(&good).unwrap()));
        assert!(seen.check([&expected(1, &[&good])]).is_err());
        // The intact batch is still taken, and then it is a repeat.
        let accepted = read(0, &good).unwrap().decompress().unwrap();
        assert_eq!(seen.take(accepted).unwrap(), Bytes::from(vec![7u8; 300]));
        assert!(seen.contains(&parse_head(&good).unwrap()));
        let again = read(0, &good).unwrap().decompress().unwrap();
        assert_eq!(seen.take(again), None);
        seen.check([&expected(1, &[&good])]).unwrap();
    }

    #[test]
    fn damaged_or_misplaced_batches_fail_verification() {
        let (_, good) = encode(tag(4, 1, 0), b"records", Codec::None).unwrap();
        assert!(read(4, &good).is_ok());
        let error = read(5, &good).unwrap_err();
        assert!(
            error.contains("a batch of partition 4 (map 1, batch 0) is in a file of partition 5"),
            "{error}"
        );
        let mut flipped = good.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(read(4, &Bytes::from(flipped)).is_err());
    }

    #[test]
    fn the_check_finds_missing_extra_and_unexpected_maps() {
        let batch = |map, id| {
            encode(tag(0, map, id), &[id as u8; 100], Codec::Lz4)
                .unwrap()
                .1
        };
        let (a0, a1, b0) = (batch(0, 0), batch(0, 1), batch(1, 0));
        let take = |seen: &mut Seen, b: &Bytes| {
            seen.take(read(0, b).unwrap().decompress().unwrap())
                .unwrap();
        };
        let mut seen = Seen::default();
        take(&mut seen, &a0);
        let short = seen.check([&expected(0, &[&a0, &a1])]).unwrap_err();
        assert!(short.contains("map 0 wrote"), "{short}");
        take(&mut seen, &a1);
        seen.check([&expected(0, &[&a0, &a1])]).unwrap();
        take(&mut seen, &b0);
        let unexpected = seen.check([&expected(0, &[&a0, &a1])]).unwrap_err();
        assert!(
            unexpected.contains("read batches of 2 maps but 1 maps reported data"),
            "{unexpected}"
        );
        seen.check([&expected(0, &[&a0, &a1]), &expected(1, &[&b0])])
            .unwrap();
    }
}
