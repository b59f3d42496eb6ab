//! The verified workload: M maps × P partitions of self-checking records written through the
//! Rust client, then read back with every record id counted.
//!
//! Writing and reading advance in steps ([`Writes::until`], [`Reads::blocks`]) so a scenario
//! injects its fault at an exact point of the workload, never at a random time.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_client::{ClientResult, ShuffleReader, ShuffleWriter, SluiceClient};
use sluice_protocol::ShuffleKey;

use crate::records::{self, Id};

/// The shape of the data written.
#[derive(Debug, Clone)]
pub struct Workload {
    pub maps: u32,
    pub partitions: u32,
    pub records_per_map: u32,
    /// Average record length in bytes (lengths vary from half to one and a half times it),
    /// except in [`Shape::Alternate`].
    pub record_len: usize,
    pub shape: Shape,
}

/// Which partition each record goes to.
#[derive(Debug, Clone, Default)]
pub enum Shape {
    /// Every partition gets its share.
    #[default]
    Even,
    /// These partitions take four records in five.
    Hot(Vec<u32>),
    /// Records alternate between a cold partition (even `seq`, `cold_len` bytes each) and a hot
    /// one (odd `seq`, exactly `record_len` bytes each).
    Alternate {
        cold: u32,
        cold_len: usize,
        hot: u32,
    },
}

impl Workload {
    pub fn records(&self) -> u64 {
        u64::from(self.maps) * u64::from(self.records_per_map)
    }

    /// The partition of record `id`.
    pub fn partition(&self, id: Id) -> u32 {
        match &self.shape {
            Shape::Hot(hot) if !hot.is_empty() && id.seq % 5 != 0 => {
                hot[(id.seq / 5 + id.map) as usize % hot.len()]
            }
            Shape::Alternate { cold, hot, .. } => {
                if id.seq % 2 == 0 {
                    *cold
                } else {
                    *hot
                }
            }
            _ => (id.seq.wrapping_mul(7).wrapping_add(id.map)) % self.partitions,
        }
    }

    /// The length of record `id`.
    pub fn len(&self, id: Id) -> usize {
        match &self.shape {
            Shape::Alternate { cold_len, .. } if id.seq % 2 == 0 => *cold_len,
            Shape::Alternate { .. } => self.record_len,
            _ => {
                let spread = self.record_len.max(2);
                spread / 2 + (id.seq as usize * 131 + id.map as usize * 17) % spread
            }
        }
    }

    /// The id `fraction` of the way through the records (map-major order).
    pub fn at(&self, fraction: f64) -> Id {
        let per_map = u64::from(self.records_per_map.max(1));
        let index = (self.records() as f64 * fraction.clamp(0.0, 1.0)) as u64;
        Id {
            map: (index / per_map) as u32,
            seq: (index % per_map) as u32,
        }
    }
}

/// Writes the workload's maps one after another (attempt 0 each), or one map
/// ([`Writes::one_map`]).
pub struct Writes {
    client: SluiceClient,
    handle: Arc<sluice_client::ShuffleHandle>,
    workload: Workload,
    next: Id,
    /// The first map not to write.
    end_map: u32,
    attempt: u32,
    current: Option<ShuffleWriter>,
    record: Vec<u8>,
    /// Maps whose `finish` succeeded.
    pub finished_maps: u32,
}

impl std::fmt::Debug for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writes").field("next", &self.next).finish()
    }
}

impl Writes {
    pub fn new(
        client: SluiceClient,
        handle: Arc<sluice_client::ShuffleHandle>,
        workload: Workload,
    ) -> Writes {
        Writes {
            client,
            handle,
            end_map: workload.maps,
            workload,
            next: Id { map: 0, seq: 0 },
            attempt: 0,
            current: None,
            record: Vec::new(),
            finished_maps: 0,
        }
    }

    /// Writes only map `map`, as attempt `attempt`.
    pub fn one_map(
        client: SluiceClient,
        handle: Arc<sluice_client::ShuffleHandle>,
        workload: Workload,
        map: u32,
        attempt: u32,
    ) -> Writes {
        Writes {
            next: Id { map, seq: 0 },
            end_map: map + 1,
            attempt,
            ..Writes::new(client, handle, workload)
        }
    }

    /// Writes every record before `stop` (map-major order), finishing each map whose last
    /// record is written.
    pub async fn until(&mut self, stop: Id) -> ClientResult<()> {
        let w = &self.workload;
        while self.next < stop && self.next.map < self.end_map {
            let id = self.next;
            let writer = match &mut self.current {
                Some(writer) => writer,
                None => self.current.insert(self.client.writer(
                    self.handle.clone(),
                    id.map,
                    self.attempt,
                )?),
            };
            let partition = w.partition(id);
            self.record.clear();
            records::encode(&mut self.record, id, partition, w.len(id));
            writer.write(partition, &self.record).await?;
            self.next.seq += 1;
            if self.next.seq == w.records_per_map {
                if let Some(writer) = self.current.take() {
                    writer.finish().await?;
                }
                self.finished_maps += 1;
                self.next = Id {
                    map: id.map + 1,
                    seq: 0,
                };
            }
        }
        Ok(())
    }

    /// Writes the rest.
    pub async fn all(&mut self) -> ClientResult<()> {
        let end = Id {
            map: self.end_map,
            seq: 0,
        };
        self.until(end).await
    }

    /// Records of finished maps: the records a reader must return.
    pub fn written(&self) -> u64 {
        u64::from(self.finished_maps) * u64::from(self.workload.records_per_map)
    }
}

/// What a reader returned so far.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub counts: HashMap<Id, u32>,
    /// Records delivered, repeats included.
    pub records: u64,
    pub blocks: u64,
    /// Records whose bytes differ from what was written, ids never written, and blocks that
    /// did not parse as records.
    pub corrupted: u64,
    /// The partition of the last record read.
    pub last_partition: Option<u32>,
    pub notes: Vec<String>,
}

impl Tally {
    fn take(&mut self, block: &[u8], workload: &Workload) {
        self.blocks += 1;
        let parsed = records::parse(block, |record| {
            self.records += 1;
            let id = record.id;
            let known = id.map < workload.maps && id.seq < workload.records_per_map;
            if !record.intact || !known || workload.partition(id) != record.partition {
                self.corrupted += 1;
                return;
            }
            self.last_partition = Some(record.partition);
            *self.counts.entry(id).or_insert(0) += 1;
        });
        if let Err(e) = parsed {
            self.corrupted += 1;
            if self.notes.len() < 5 {
                self.notes.push(format!("block {}: {e}", self.blocks));
            }
        }
    }

    /// Ids of the first `maps` maps (of `records_per_map` records each) never read.
    pub fn lost(&self, maps: u32, records_per_map: u32) -> u64 {
        let mut lost = 0;
        for map in 0..maps {
            for seq in 0..records_per_map {
                if !self.counts.contains_key(&Id { map, seq }) {
                    lost += 1;
                }
            }
        }
        lost
    }

    /// Ids read more than once.
    pub fn duplicated(&self) -> u64 {
        self.counts.values().filter(|c| **c > 1).count() as u64
    }
}

/// Reads every partition of a shuffle and tallies the records.
pub struct Reads {
    reader: ShuffleReader,
    workload: Workload,
    pub tally: Tally,
    done: bool,
}

impl std::fmt::Debug for Reads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reads")
            .field("tally", &self.tally.records)
            .finish()
    }
}

impl Reads {
    /// Opens a reader of all partitions (waits for the shuffle's commit).
    pub async fn open(
        client: &SluiceClient,
        key: &ShuffleKey,
        workload: &Workload,
    ) -> ClientResult<Reads> {
        Ok(Reads {
            reader: client.reader(key, 0..workload.partitions, None).await?,
            workload: workload.clone(),
            tally: Tally::default(),
            done: false,
        })
    }

    /// Reads up to `n` more blocks; `false` once the reader is at its end.
    pub async fn blocks(&mut self, n: u64) -> ClientResult<bool> {
        for _ in 0..n {
            if self.done {
                break;
            }
            match self.reader.next().await? {
                Some(block) => self.tally.take(&block, &self.workload),
                None => self.done = true,
            }
        }
        Ok(!self.done)
    }

    pub async fn to_end(&mut self) -> ClientResult<()> {
        while self.blocks(1024).await? {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_partitions_take_four_records_in_five() {
        let workload = Workload {
            maps: 2,
            partitions: 8,
            records_per_map: 100,
            record_len: 100,
            shape: Shape::Hot(vec![3]),
        };
        let hot = (0..100)
            .filter(|seq| workload.partition(Id { map: 1, seq: *seq }) == 3)
            .count();
        assert!((80..=100).contains(&hot), "{hot}");
        let mut tally = Tally::default();
        let mut block = Vec::new();
        for seq in 0..100 {
            let id = Id { map: 0, seq };
            records::encode(&mut block, id, workload.partition(id), workload.len(id));
        }
        tally.take(&block, &workload);
        tally.take(&block[..block.len() / 2 + 3], &workload);
        assert_eq!(tally.lost(1, 100), 0);
        assert_eq!(tally.lost(2, 100), 100);
        assert!(tally.duplicated() > 10);
        assert_eq!(tally.corrupted, 1);
    }
}
