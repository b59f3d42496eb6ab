//! One shuffle: where its partitions are (every epoch), what its maps reported, and its
//! committed layout.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use prost::Message;
use sluice_protocol::{pb, ShuffleKey};
use tokio::sync::watch;

use crate::error::{MasterError, MasterResult};

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

/// The index of `worker` in a worker table, adding it at the end when it is not there.
pub fn worker_index(table: &mut Vec<pb::WorkerInfo>, worker: &pb::WorkerInfo) -> u32 {
    match table.iter().position(|w| w.id == worker.id) {
        Some(index) => index as u32,
        None => {
            table.push(worker.clone());
            (table.len() - 1) as u32
        }
    }
}

/// The output that counts for one map.
#[derive(Debug, Clone)]
pub struct MapResult {
    pub attempt: u32,
    /// Sorted by partition.
    pub partitions: Vec<pb::PartitionStats>,
}

impl MapResult {
    /// Bytes the map wrote, over every partition.
    pub fn bytes(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| p.stats.map_or(0, |s| s.bytes))
            .sum()
    }
}

#[derive(Debug, Clone, Default)]
pub enum CommitState {
    #[default]
    Waiting,
    /// Commit results, indexed like `ShuffleEntry::locations` (partition, then copy).
    Done(Arc<Vec<Vec<pb::CommittedLocation>>>),
}

/// What a registration asks for; a second registration of a shuffle must ask the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub num_maps: u32,
    pub num_partitions: u32,
    pub replication: u32,
}

impl Shape {
    pub(super) fn check_same(&self, key: &ShuffleKey, registered: &Shape) -> MasterResult<()> {
        if self == registered {
            return Ok(());
        }
        Err(MasterError::InvalidRequest(format!(
            "shuffle {key} is already registered with {} maps, {} partitions, replication {}",
            registered.num_maps, registered.num_partitions, registered.replication
        )))
    }
}

#[derive(Debug)]
pub struct ShuffleEntry {
    pub shape: Shape,
    pub workers: Vec<pb::WorkerInfo>,
    /// Every copy of every partition, by partition.
    pub locations: Vec<Vec<Location>>,
    /// The winning result of each map that has ended, by map id. Filled as maps end: nothing
    /// is allocated per map up front.
    pub maps: BTreeMap<u32, MapResult>,
    /// Built when the last map ends: what each winning map reported, by partition.
    pub expected_by_partition: Vec<Vec<pb::ExpectedMap>>,
    /// Built when the last map ends: the winning attempt of every map, by map id.
    pub winning_attempt: Arc<Vec<u32>>,
    /// Partitions a revive is moving to a new epoch right now.
    pub reviving: HashSet<u32>,
    /// Bumped when a revive ends, so revives waiting on its partitions look again.
    pub revived: watch::Sender<u64>,
    pub commit: watch::Sender<CommitState>,
    /// Running figures for the status page, kept as the entry changes so a listing of every
    /// shuffle costs nothing per partition or map.
    pub figures: Figures,
}

/// What the status page shows of a shuffle, kept up to date as it changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Bytes the winning attempts of the ended maps reported.
    pub bytes_written: u64,
    /// Epochs placed beyond the first, over every partition (one per partition revived).
    pub revives: u64,
    /// The highest epoch of any partition.
    pub max_epoch: u32,
    /// Once committed: partitions with an epoch none of whose copies committed, and that hold
    /// fewer bytes than their maps reported (data lost).
    pub lost_partitions: u32,
}

impl ShuffleEntry {
    /// A registered shuffle whose partition `p` is at epoch 0 on `copies[p]` (primary, replica).
    pub fn new(
        shape: Shape,
        workers: Vec<pb::WorkerInfo>,
        copies: Vec<(u32, Option<u32>)>,
    ) -> ShuffleEntry {
        ShuffleEntry {
            shape,
            workers,
            locations: copies
                .into_iter()
                .map(|(primary, replica)| Location::copies(0, primary, replica).collect())
                .collect(),
            maps: BTreeMap::new(),
            expected_by_partition: Vec::new(),
            winning_attempt: Arc::default(),
            reviving: HashSet::new(),
            revived: watch::channel(0).0,
            commit: watch::channel(CommitState::Waiting).0,
            figures: Figures::default(),
        }
    }

    /// Counts the running figures from scratch (a shuffle restored from a snapshot).
    pub(super) fn recount(&mut self) {
        let mut figures = Figures {
            lost_partitions: self.figures.lost_partitions,
            ..Figures::default()
        };
        for p in 0..self.locations.len() as u32 {
            let epoch = self.current_epoch(p);
            figures.revives += u64::from(epoch);
            figures.max_epoch = figures.max_epoch.max(epoch);
        }
        figures.bytes_written = self.maps.values().map(MapResult::bytes).sum();
        self.figures = figures;
    }

    /// `running` (maps still to end), `committing`, `committed`, or `failed` (committed with
    /// partitions lost).
    pub fn state_name(&self) -> &'static str {
        if !self.complete() {
            return "running";
        }
        match &*self.commit.borrow() {
            CommitState::Waiting => "committing",
            CommitState::Done(_) if self.figures.lost_partitions > 0 => "failed",
            CommitState::Done(_) => "committed",
        }
    }

    /// How many partitions the commit `results` (indexed like `locations`) lost data of: those
    /// with an epoch none of whose copies committed, holding fewer bytes than their maps
    /// reported. Needs the maps' figures by partition (every map has ended).
    pub fn lost_partitions(&self, results: &[Vec<pb::CommittedLocation>]) -> u32 {
        let mut lost = 0;
        for (p, copies) in results.iter().enumerate() {
            let epoch_ok = |epoch: u32| copies.iter().any(|c| c.epoch == epoch && c.ok);
            if copies.iter().all(|c| epoch_ok(c.epoch)) {
                continue;
            }
            let expected: u64 = self
                .expected(p as u32)
                .iter()
                .map(|m| m.stats.map_or(0, |s| s.bytes))
                .sum();
            // Copies of one epoch hold the same batches, or one a prefix of the other's.
            let mut committed: BTreeMap<u32, u64> = BTreeMap::new();
            for copy in copies.iter().filter(|c| c.ok) {
                let bytes = copy.stats.map_or(0, |s| s.bytes);
                let held = committed.entry(copy.epoch).or_default();
                *held = (*held).max(bytes);
            }
            if committed.values().sum::<u64>() < expected {
                lost += 1;
            }
        }
        lost
    }

    /// Fails unless `p` is a partition of this shuffle.
    pub fn check_partition(&self, key: &ShuffleKey, p: u32) -> MasterResult<()> {
        if p < self.shape.num_partitions {
            return Ok(());
        }
        Err(MasterError::InvalidRequest(format!(
            "partition {p} of shuffle {key} with {} partitions",
            self.shape.num_partitions
        )))
    }

    /// Whether every map has ended (the shuffle is committing or committed).
    pub fn complete(&self) -> bool {
        self.maps.len() as u64 == u64::from(self.shape.num_maps)
    }

    /// The epoch partition `p` is written to now.
    pub fn current_epoch(&self, p: u32) -> u32 {
        self.locations[p as usize]
            .iter()
            .map(|l| l.epoch)
            .max()
            .unwrap_or(0)
    }

    /// The current location of each partition, compact.
    pub fn current_locations(&self) -> pb::ShuffleLocations {
        let mut primary_worker = Vec::with_capacity(self.locations.len());
        let mut replica_worker = Vec::with_capacity(self.locations.len());
        let mut epoch = Vec::with_capacity(self.locations.len());
        for p in 0..self.locations.len() as u32 {
            let (current, primary, replica) = self.current(p);
            primary_worker.push(primary);
            replica_worker.push(replica.unwrap_or(NO_REPLICA));
            epoch.push(current);
        }
        pb::ShuffleLocations {
            workers: self.workers.clone(),
            primary_worker,
            epoch,
            replica_worker,
        }
    }

    /// Partition `p`'s current epoch, primary and replica (indexes into `workers`).
    pub fn current(&self, p: u32) -> (u32, u32, Option<u32>) {
        let copies = &self.locations[p as usize];
        let current = self.current_epoch(p);
        let copy = |role| {
            copies
                .iter()
                .find(|l| l.epoch == current && l.role == role)
                .map(|l| l.worker)
        };
        (
            current,
            copy(pb::Role::Primary).unwrap_or(0),
            copy(pb::Role::Replica),
        )
    }

    /// Adds epoch `epoch` of partition `p` on `primary` and `replica`.
    pub fn add_epoch(
        &mut self,
        p: u32,
        epoch: u32,
        primary: &pb::WorkerInfo,
        replica: Option<&pb::WorkerInfo>,
    ) {
        let primary = worker_index(&mut self.workers, primary);
        let replica = replica.map(|r| worker_index(&mut self.workers, r));
        self.locations[p as usize].extend(Location::copies(epoch, primary, replica));
        if epoch > 0 {
            self.figures.revives += 1;
        }
        self.figures.max_epoch = self.figures.max_epoch.max(epoch);
    }

    /// Moves the copies `(partition, epoch, role)` that worker `from` holds to `to`, or with no
    /// `to` marks them lost: their commit results fail with `reason` (before the commit nothing
    /// changes: the commit finds the worker gone). Copies not on `from` are left alone.
    pub fn move_copies(
        &mut self,
        from: &str,
        copies: impl Iterator<Item = (u32, u32, i32)>,
        to: Option<&pb::WorkerInfo>,
        reason: &str,
    ) {
        let Some(from) = self.workers.iter().position(|w| w.id == from) else {
            return;
        };
        let to = to.map(|info| worker_index(&mut self.workers, info));
        let mut done = match &*self.commit.borrow() {
            CommitState::Waiting => None,
            CommitState::Done(results) => Some(results.as_ref().clone()),
        };
        for (partition, epoch, role) in copies {
            let Some(list) = self.locations.get_mut(partition as usize) else {
                continue;
            };
            let Some(i) = list
                .iter()
                .position(|l| l.epoch == epoch && l.role as i32 == role && l.worker == from as u32)
            else {
                continue;
            };
            if let Some(to) = to {
                list[i].worker = to;
            }
            if let Some(result) = done
                .as_mut()
                .and_then(|d| d.get_mut(partition as usize))
                .and_then(|copies| copies.get_mut(i))
            {
                match to {
                    Some(to) => result.worker = to,
                    None => {
                        result.ok = false;
                        result.error = reason.to_string();
                    }
                }
            }
        }
        if let Some(results) = done {
            self.figures.lost_partitions = self.lost_partitions(&results);
            self.commit
                .send_replace(CommitState::Done(Arc::new(results)));
        }
    }

    /// Records a map's end. Returns the winning attempt and whether this call completed the
    /// shuffle (every map has ended). `map_id` must be below `num_maps`.
    pub fn map_ended(
        &mut self,
        map_id: u32,
        attempt: u32,
        mut partitions: Vec<pb::PartitionStats>,
    ) -> (u32, bool) {
        if let Some(winner) = self.maps.get(&map_id) {
            return (winner.attempt, false);
        }
        partitions.sort_by_key(|p| p.partition);
        let result = MapResult {
            attempt,
            partitions,
        };
        self.figures.bytes_written += result.bytes();
        self.maps.insert(map_id, result);
        let complete = self.complete();
        if complete {
            self.index_expected();
        }
        (attempt, complete)
    }

    pub(super) fn index_expected(&mut self) {
        let mut by_partition = vec![Vec::new(); self.shape.num_partitions as usize];
        for (map_id, result) in &self.maps {
            for stats in &result.partitions {
                if let Some(list) = by_partition.get_mut(stats.partition as usize) {
                    list.push(pb::ExpectedMap {
                        map_id: *map_id,
                        stats: stats.stats,
                    });
                }
            }
        }
        self.expected_by_partition = by_partition;
        self.winning_attempt = Arc::new(self.maps.values().map(|m| m.attempt).collect());
    }

    /// What each winning map reported for `partition` (empty until every map has ended).
    pub fn expected(&self, partition: u32) -> &[pb::ExpectedMap] {
        self.expected_by_partition
            .get(partition as usize)
            .map_or(&[], Vec::as_slice)
    }

    /// The committed layout of partitions `[start, end)` (checked by the caller), refused when
    /// the answer would be larger than `limit` bytes: the caller asks for fewer partitions.
    pub fn layout(
        &self,
        key: &ShuffleKey,
        committed: &[Vec<pb::CommittedLocation>],
        start: u32,
        end: u32,
        limit: usize,
    ) -> MasterResult<pb::GetShuffleLayoutResponse> {
        let mut response = pb::GetShuffleLayoutResponse {
            committed: true,
            workers: self.workers.clone(),
            winning_attempt: self.winning_attempt.as_ref().clone(),
            partitions: Vec::new(),
        };
        let mut size = response.encoded_len();
        for partition in start..end {
            let layout = pb::PartitionLayout {
                partition,
                locations: committed[partition as usize].clone(),
                expected: self.expected(partition).to_vec(),
            };
            // The field's tag and length prefix: at most 1 + 10 bytes.
            size += layout.encoded_len() + 11;
            if size > limit {
                return Err(MasterError::Limit {
                    key: "max_message_size",
                    retryable: false,
                    message: format!(
                        "the layout of partitions [{start}, {end}) of shuffle {key} is larger \
                         than max_message_size ({limit} bytes) from partition {partition} on: \
                         ask for fewer partitions at a time"
                    ),
                });
            }
            response.partitions.push(layout);
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MasterConfig;

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
        let shape = Shape {
            num_maps,
            num_partitions: 4,
            replication: 1,
        };
        ShuffleEntry::new(shape, vec![pb::WorkerInfo::default()], vec![(0, None); 4])
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
        assert_eq!(*entry.winning_attempt, vec![3, 0]);
    }

    #[test]
    fn map_state_grows_with_ended_maps_not_with_num_maps() {
        let mut entry = shuffle(u32::MAX);
        assert!(entry.maps.is_empty());
        entry.map_ended(4_000_000_000, 0, vec![stats(0, 1)]);
        assert_eq!(entry.maps.len(), 1);
        assert!(!entry.complete());
    }

    /// Sizes `max_message_size`: a layout page of 1M partitions, each with two committed copies
    /// and one map's figures, plus the winning attempts of 100k maps.
    #[test]
    fn a_layout_page_of_a_million_partitions_fits_the_default_message_limit() {
        let stats = Some(pb::BatchStats {
            bytes: 3 << 30,
            batches: 20_000,
            checksum: u64::from(u32::MAX) * 20_000,
        });
        let copy = |role: pb::Role| pb::CommittedLocation {
            epoch: 1,
            role: role as i32,
            worker: 300,
            stats,
            ok: true,
            error: String::new(),
        };
        let partition = pb::PartitionLayout {
            partition: 999_999,
            locations: vec![copy(pb::Role::Primary), copy(pb::Role::Replica)],
            expected: vec![pb::ExpectedMap {
                map_id: 99_999,
                stats,
            }],
        };
        let one =
            partition.encoded_len() + 1 + prost::length_delimiter_len(partition.encoded_len());
        let attempts = pb::GetShuffleLayoutResponse {
            winning_attempt: vec![3; 100_000],
            ..Default::default()
        };
        let page = one * 1_000_000 + attempts.encoded_len();
        let limit = MasterConfig::default().message_limit();
        assert!(page > 64 << 20, "{page} bytes: a smaller limit would do");
        assert!(page < limit, "{page} bytes above {limit}");
    }
}
