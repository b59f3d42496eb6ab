//! The master's in-memory state: workers, applications and shuffles.
//!
//! Everything here is plain data changed under one lock by the service; nothing awaits while
//! holding it. The commit of a shuffle is signalled through a `watch` channel that layout
//! requests wait on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use sluice_protocol::{pb, ShuffleKey};
use tokio::sync::watch;

#[derive(Debug)]
pub struct WorkerEntry {
    pub info: pb::WorkerInfo,
    pub disks: Vec<pb::DiskStatus>,
    pub last_seen: Instant,
    pub alive: bool,
    pub memory_used: u64,
    pub active_partitions: u64,
    pub state: pb::WorkerState,
}

impl WorkerEntry {
    pub fn free_bytes(&self) -> u64 {
        self.disks
            .iter()
            .filter(|d| d.healthy)
            .map(|d| d.free_bytes)
            .sum()
    }

    pub fn accepts_partitions(&self) -> bool {
        self.alive
            && self.state != pb::WorkerState::Decommissioning
            && self.disks.iter().any(|d| d.healthy)
    }
}

/// `replica_worker` value of a partition without a replica.
pub const NO_REPLICA: u32 = u32::MAX;

/// One copy of a partition at one epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Location {
    pub epoch: u32,
    pub role: pb::Role,
    /// Index into the shuffle's worker table.
    pub worker: u32,
}

impl Location {
    /// The copies of one epoch of a partition: its primary and, with replication 2, its replica.
    pub fn copies(
        epoch: u32,
        primary: u32,
        replica: Option<u32>,
    ) -> impl Iterator<Item = Location> {
        let primary = Location {
            epoch,
            role: pb::Role::Primary,
            worker: primary,
        };
        let replica = replica.map(|worker| Location {
            epoch,
            role: pb::Role::Replica,
            worker,
        });
        std::iter::once(primary).chain(replica)
    }
}

/// The output that counts for one map.
#[derive(Debug, Clone)]
pub struct MapResult {
    pub attempt: u32,
    /// Sorted by partition.
    pub partitions: Vec<pb::PartitionStats>,
}

#[derive(Debug, Clone, Default)]
pub enum CommitState {
    #[default]
    Waiting,
    /// Commit results, indexed like `ShuffleEntry::locations` (partition, then copy).
    Done(Arc<Vec<Vec<pb::CommittedLocation>>>),
}

#[derive(Debug)]
pub struct ShuffleEntry {
    pub num_maps: u32,
    pub num_partitions: u32,
    pub replication: u32,
    pub workers: Vec<pb::WorkerInfo>,
    /// Every copy of every partition, by partition.
    pub locations: Vec<Vec<Location>>,
    pub maps: Vec<Option<MapResult>>,
    pub ended: u32,
    /// Built when the last map ends: what each winning map reported, by partition.
    pub expected_by_partition: Vec<Vec<pb::ExpectedMap>>,
    pub commit: watch::Sender<CommitState>,
}

impl ShuffleEntry {
    /// The current location of each partition, compact.
    pub fn current_locations(&self) -> pb::ShuffleLocations {
        let mut primary_worker = Vec::with_capacity(self.locations.len());
        let mut replica_worker = Vec::with_capacity(self.locations.len());
        let mut epoch = Vec::with_capacity(self.locations.len());
        for copies in &self.locations {
            let current = copies.iter().map(|l| l.epoch).max().unwrap_or(0);
            let copy = |role| {
                copies
                    .iter()
                    .find(|l| l.epoch == current && l.role == role)
                    .map(|l| l.worker)
            };
            primary_worker.push(copy(pb::Role::Primary).unwrap_or(0));
            replica_worker.push(copy(pb::Role::Replica).unwrap_or(NO_REPLICA));
            epoch.push(current);
        }
        pb::ShuffleLocations {
            workers: self.workers.clone(),
            primary_worker,
            epoch,
            replica_worker,
        }
    }

    /// Records a map's end. Returns the winning attempt and whether this call completed the
    /// shuffle (every map has ended).
    pub fn map_ended(
        &mut self,
        map_id: u32,
        attempt: u32,
        mut partitions: Vec<pb::PartitionStats>,
    ) -> (u32, bool) {
        let slot = &mut self.maps[map_id as usize];
        if let Some(winner) = slot {
            return (winner.attempt, false);
        }
        partitions.sort_by_key(|p| p.partition);
        *slot = Some(MapResult {
            attempt,
            partitions,
        });
        self.ended += 1;
        let complete = self.ended == self.num_maps;
        if complete {
            self.index_expected();
        }
        (attempt, complete)
    }

    fn index_expected(&mut self) {
        let mut by_partition = vec![Vec::new(); self.num_partitions as usize];
        for (map_id, result) in self.maps.iter().enumerate() {
            for stats in result.iter().flat_map(|r| &r.partitions) {
                if let Some(list) = by_partition.get_mut(stats.partition as usize) {
                    list.push(pb::ExpectedMap {
                        map_id: map_id as u32,
                        stats: stats.stats,
                    });
                }
            }
        }
        self.expected_by_partition = by_partition;
    }

    /// What each winning map reported for `partition` (empty until every map has ended).
    pub fn expected(&self, partition: u32) -> Vec<pb::ExpectedMap> {
        self.expected_by_partition
            .get(partition as usize)
            .cloned()
            .unwrap_or_default()
    }
}

#[derive(Debug, Default)]
pub struct State {
    pub workers: HashMap<String, WorkerEntry>,
    pub shuffles: HashMap<ShuffleKey, ShuffleEntry>,
    pub apps: HashMap<Arc<str>, Instant>,
}

impl State {
    pub fn touch_app(&mut self, app_id: &str) {
        match self.apps.get_mut(app_id) {
            Some(seen) => *seen = Instant::now(),
            None => {
                self.apps.insert(Arc::from(app_id), Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(partition: u32, bytes: u64) -> pb::PartitionStats {
        pb::PartitionStats {
            partition,
            stats: Some(pb::BatchStats {
                bytes,
                batches: 1,
                checksum: bytes,
            }),
        }
    }

    fn shuffle(num_maps: u32) -> ShuffleEntry {
        ShuffleEntry {
            num_maps,
            num_partitions: 4,
            replication: 1,
            workers: vec![],
            locations: vec![vec![]; 4],
            maps: vec![None; num_maps as usize],
            ended: 0,
            expected_by_partition: vec![],
            commit: watch::channel(CommitState::Waiting).0,
        }
    }

    #[test]
    fn the_first_attempt_to_end_wins_and_later_ones_are_ignored() {
        let mut entry = shuffle(2);
        assert_eq!(entry.map_ended(0, 3, vec![stats(1, 10)]), (3, false));
        assert_eq!(entry.map_ended(0, 1, vec![stats(1, 99)]), (3, false));
        assert_eq!(
            entry.map_ended(1, 0, vec![stats(2, 5), stats(0, 7)]),
            (0, true)
        );
        assert_eq!(entry.map_ended(1, 4, vec![]), (0, false));
        let expected = entry.expected(1);
        assert_eq!(expected.len(), 1);
        assert_eq!(expected[0].stats.unwrap().bytes, 10);
        assert_eq!(entry.expected(0)[0].map_id, 1);
        assert!(entry.expected(3).is_empty());
    }
}
