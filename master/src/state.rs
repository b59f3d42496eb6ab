//! The master's in-memory state: workers, applications and shuffles.
//!
//! Everything here is plain data changed under one lock by the service; nothing awaits while
//! holding it, and nothing here calls a worker. Work that does (placing, committing) marks what
//! it is doing here first, so concurrent requests for the same shuffle wait for it instead of
//! duplicating it: `registering` for a shuffle being placed, `ShuffleEntry::reviving` for
//! partitions being moved. Commits and revives are signalled through `watch` channels.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use sluice_protocol::{pb, ShuffleKey};
use tokio::sync::watch;

use crate::config::MasterConfig;
use crate::error::{MasterError, MasterResult};

/// Heartbeats a worker may miss before placement skips it and its id may be taken over.
pub const MISSED_HEARTBEATS: u32 = 2;

#[derive(Debug)]
pub struct WorkerEntry {
    pub info: pb::WorkerInfo,
    pub disks: Vec<pb::DiskStatus>,
    pub last_seen: Instant,
    pub alive: bool,
    pub memory_used: u64,
    pub active_partitions: u64,
    pub state: pb::WorkerState,
    /// How often the worker heartbeats (it says so when it registers).
    pub heartbeat_interval: Duration,
    /// A reservation on this worker failed to reach it: no new partitions until then.
    pub avoid_until: Option<Instant>,
}

impl WorkerEntry {
    pub fn new(
        info: pb::WorkerInfo,
        disks: Vec<pb::DiskStatus>,
        heartbeat_interval: Duration,
    ) -> WorkerEntry {
        WorkerEntry {
            info,
            disks,
            last_seen: Instant::now(),
            alive: true,
            memory_used: 0,
            active_partitions: 0,
            state: pb::WorkerState::Active,
            heartbeat_interval,
            avoid_until: None,
        }
    }

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

    /// Alive and heard from within the last [`MISSED_HEARTBEATS`] heartbeat intervals. A worker
    /// that is not fresh may be stopped (SIGSTOP, a hung node) long before `worker_timeout`
    /// declares it lost.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.alive
            && now.saturating_duration_since(self.last_seen)
                <= self.heartbeat_interval * MISSED_HEARTBEATS
    }

    /// Whether placement should prefer other workers: not fresh, or a reservation on it failed
    /// recently.
    pub fn is_suspect(&self, now: Instant) -> bool {
        !self.is_fresh(now) || self.avoid_until.is_some_and(|until| now < until)
    }

    /// Whether `info` names the same address (host and push port) as this worker.
    pub fn same_address(&self, info: &pb::WorkerInfo) -> bool {
        self.info.host == info.host && self.info.push_port == info.push_port
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
    fn check_same(&self, key: &ShuffleKey, registered: &Shape) -> MasterResult<()> {
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
        }
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
        self.maps.insert(
            map_id,
            MapResult {
                attempt,
                partitions,
            },
        );
        let complete = self.complete();
        if complete {
            self.index_expected();
        }
        (attempt, complete)
    }

    fn index_expected(&mut self) {
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

/// Where partitions went: a worker table and, per placed `(partition, epoch)`, the primary's
/// and (with replication 2) the replica's index into it.
#[derive(Debug)]
pub struct Placement {
    pub workers: Vec<pb::WorkerInfo>,
    pub copies: Vec<(u32, Option<u32>)>,
}

/// What one pass of a revive does; see [`State::begin_revive`].
#[derive(Debug)]
pub struct ReviveStep {
    pub replication: u32,
    /// `(partition, new epoch)` pairs this call places.
    pub targets: Vec<(u32, u32)>,
    /// Workers of the failed epochs.
    pub excluded: HashSet<String>,
    /// Set when another call is moving some of the partitions: it changes when that call ends.
    pub wait: Option<watch::Receiver<u64>>,
}

pub fn not_registered(key: &ShuffleKey) -> MasterError {
    MasterError::NotFound(format!("shuffle {key} is not registered"))
}

/// A shuffle being placed by its first registration; later registrations wait for it.
#[derive(Debug)]
pub struct Registering {
    pub shape: Shape,
    /// Dropped when the placement ends (either way): waiters look again.
    pub done: watch::Sender<()>,
}

#[derive(Debug, Default)]
pub struct State {
    pub workers: HashMap<String, WorkerEntry>,
    pub shuffles: HashMap<ShuffleKey, ShuffleEntry>,
    pub registering: HashMap<ShuffleKey, Registering>,
    pub apps: HashMap<Arc<str>, Instant>,
}

/// What [`State::begin_registration`] decided.
#[derive(Debug)]
pub enum Registration {
    /// Registered already: the current locations.
    Registered(pb::ShuffleLocations),
    /// Another call is placing it: wait until the receiver's sender drops, then look again.
    Wait(watch::Receiver<()>),
    /// This call places it (and must end with [`State::end_registration`]).
    Place,
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

    /// Decides who registers `key`: answered from the registry, wait for a registration in
    /// progress, or place it here (the limits checked first).
    pub fn begin_registration(
        &mut self,
        key: &ShuffleKey,
        shape: Shape,
        config: &MasterConfig,
    ) -> MasterResult<Registration> {
        self.touch_app(&key.app_id);
        if let Some(existing) = self.shuffles.get(key) {
            shape.check_same(key, &existing.shape)?;
            return Ok(Registration::Registered(existing.current_locations()));
        }
        if let Some(pending) = self.registering.get(key) {
            shape.check_same(key, &pending.shape)?;
            return Ok(Registration::Wait(pending.done.subscribe()));
        }
        self.admit(key, shape, config)?;
        self.registering.insert(
            key.clone(),
            Registering {
                shape,
                done: watch::channel(()).0,
            },
        );
        Ok(Registration::Place)
    }

    /// Ends a registration this call placed: the entry when placement succeeded. Waiters wake.
    pub fn end_registration(&mut self, key: &ShuffleKey, entry: Option<ShuffleEntry>) {
        self.registering.remove(key);
        if let Some(entry) = entry {
            self.shuffles.insert(key.clone(), entry);
        }
    }

    /// Decides what a revive of `failed` does: which partitions this call moves to the next
    /// epoch (their current epoch failed and no other call is moving them; they are marked as
    /// reviving), which workers it avoids (those of the failed epochs), and whether it must wait
    /// for another call moving some of them.
    pub fn begin_revive(
        &mut self,
        key: &ShuffleKey,
        failed: &[pb::FailedLocation],
        max_epochs: u32,
    ) -> MasterResult<ReviveStep> {
        self.touch_app(&key.app_id);
        let entry = self
            .shuffles
            .get_mut(key)
            .ok_or_else(|| not_registered(key))?;
        if entry.complete() {
            return Err(MasterError::Committed(key.to_string()));
        }
        let mut targets: Vec<(u32, u32)> = Vec::new();
        let mut excluded = HashSet::new();
        let mut waiting = false;
        for failed in failed {
            let p = failed.partition;
            entry.check_partition(key, p)?;
            let current = entry.current_epoch(p);
            // Only a failure of the current epoch moves the partition; an older one was
            // revived already (by another writer), and the answer is the current location.
            if failed.epoch != current || targets.iter().any(|(t, _)| *t == p) {
                continue;
            }
            if entry.reviving.contains(&p) {
                waiting = true;
                continue;
            }
            if current + 1 >= max_epochs {
                return Err(MasterError::Limit {
                    key: "max_epochs_per_partition",
                    retryable: false,
                    message: format!(
                        "partition {p} of shuffle {key} already has {} epochs, \
                         max_epochs_per_partition ({max_epochs}): it is not moved again",
                        current + 1
                    ),
                });
            }
            targets.push((p, current + 1));
            for copy in entry.locations[p as usize]
                .iter()
                .filter(|l| l.epoch == current)
            {
                excluded.insert(entry.workers[copy.worker as usize].id.clone());
            }
        }
        entry.reviving.extend(targets.iter().map(|(p, _)| *p));
        Ok(ReviveStep {
            replication: entry.shape.replication,
            targets,
            excluded,
            wait: waiting.then(|| entry.revived.subscribe()),
        })
    }

    /// Ends the revive of `targets`: records their new epochs when placed, clears their marks
    /// and wakes revives waiting on them. A shuffle that completed meanwhile (its commit has
    /// started) takes no new epochs.
    pub fn end_revive(
        &mut self,
        key: &ShuffleKey,
        targets: &[(u32, u32)],
        placed: Option<&Placement>,
    ) -> MasterResult<()> {
        let entry = self
            .shuffles
            .get_mut(key)
            .ok_or_else(|| not_registered(key))?;
        for (p, _) in targets {
            entry.reviving.remove(p);
        }
        entry.revived.send_modify(|n| *n += 1);
        let Some(Placement { workers, copies }) = placed else {
            return Ok(());
        };
        if entry.complete() {
            return Err(MasterError::Committed(key.to_string()));
        }
        for ((p, epoch), (primary, replica)) in targets.iter().zip(copies) {
            let replica = replica.map(|r| &workers[r as usize]);
            entry.add_epoch(*p, *epoch, &workers[*primary as usize], replica);
        }
        Ok(())
    }

    /// The current location of each partition of `failed` (each once).
    pub fn revived_locations(
        &self,
        key: &ShuffleKey,
        failed: &[pb::FailedLocation],
    ) -> MasterResult<Vec<pb::RevivedLocation>> {
        let entry = self.shuffles.get(key).ok_or_else(|| not_registered(key))?;
        let worker = |index: u32| entry.workers.get(index as usize).cloned();
        let mut seen = HashSet::new();
        let mut locations = Vec::new();
        for f in failed {
            entry.check_partition(key, f.partition)?;
            if !seen.insert(f.partition) {
                continue;
            }
            let (epoch, primary, replica) = entry.current(f.partition);
            locations.push(pb::RevivedLocation {
                partition: f.partition,
                epoch,
                primary: worker(primary),
                replica: replica.and_then(worker),
            });
        }
        Ok(locations)
    }

    /// Registers (or registers again) a worker. An id held by a live worker at another address
    /// is refused: two workers would otherwise share one identity and the second would take
    /// over the first's partitions. A restarted worker (same id, new address) is accepted once
    /// its old incarnation missed its heartbeats, or at once at the same address. Returns
    /// whether the id was known.
    pub fn register_worker(
        &mut self,
        info: pb::WorkerInfo,
        disks: Vec<pb::DiskStatus>,
        heartbeat_interval: Duration,
    ) -> MasterResult<bool> {
        let now = Instant::now();
        if let Some(held) = self.workers.get(&info.id) {
            if !held.same_address(&info) && held.is_fresh(now) {
                return Err(MasterError::WorkerIdTaken(format!(
                    "worker id {} is held by a live worker at {} (last heartbeat {} ms ago), \
                     not by {}; it is taken over once that worker misses {MISSED_HEARTBEATS} \
                     heartbeats: give every worker its own id",
                    info.id,
                    held.info.push_addr(),
                    now.saturating_duration_since(held.last_seen).as_millis(),
                    info.push_addr(),
                )));
            }
        }
        let returning = self.workers.contains_key(&info.id);
        // A worker back under the same id (a restarted pod with its disks) may have new
        // addresses: every shuffle that placed copies on it now finds it there.
        for entry in self.shuffles.values_mut() {
            for known in entry.workers.iter_mut().filter(|w| w.id == info.id) {
                *known = info.clone();
            }
        }
        self.workers.insert(
            info.id.clone(),
            WorkerEntry::new(info, disks, heartbeat_interval),
        );
        Ok(returning)
    }

    /// Checks a new shuffle against the per-shuffle, per-application and cluster limits.
    fn admit(&self, key: &ShuffleKey, shape: Shape, config: &MasterConfig) -> MasterResult<()> {
        let too_large = |key_name: &'static str, what: &str, asked: u32, limit: u32| {
            Err(MasterError::Limit {
                key: key_name,
                retryable: false,
                message: format!("{what} {asked} is above {key_name} ({limit})"),
            })
        };
        if shape.num_maps > config.max_maps_per_shuffle {
            return too_large(
                "max_maps_per_shuffle",
                "num_maps",
                shape.num_maps,
                config.max_maps_per_shuffle,
            );
        }
        if shape.num_partitions > config.max_partitions_per_shuffle {
            return too_large(
                "max_partitions_per_shuffle",
                "num_partitions",
                shape.num_partitions,
                config.max_partitions_per_shuffle,
            );
        }
        let live = self
            .shuffles
            .iter()
            .map(|(k, e)| (k, e.shape.num_partitions))
            .chain(
                self.registering
                    .iter()
                    .map(|(k, r)| (k, r.shape.num_partitions)),
            );
        let (mut app_shuffles, mut app_partitions, mut shuffles, mut partitions) =
            (0u64, 0u64, 0u64, 0u64);
        for (k, num_partitions) in live {
            if k.app_id == key.app_id {
                app_shuffles += 1;
                app_partitions += u64::from(num_partitions);
            }
            shuffles += 1;
            partitions += u64::from(num_partitions);
        }
        let new = u64::from(shape.num_partitions);
        let app = &key.app_id;
        let quotas = [
            (
                "max_live_shuffles_per_app",
                app_shuffles + 1,
                u64::from(config.max_live_shuffles_per_app),
                format!("application {app} has {app_shuffles} registered shuffles"),
            ),
            (
                "max_live_partitions_per_app",
                app_partitions + new,
                config.max_live_partitions_per_app,
                format!("application {app} has {app_partitions} partitions registered, and shuffle {key} asks for {new} more"),
            ),
            (
                "max_live_shuffles",
                shuffles + 1,
                u64::from(config.max_live_shuffles),
                format!("the cluster has {shuffles} registered shuffles"),
            ),
            (
                "max_live_partitions",
                partitions + new,
                config.max_live_partitions,
                format!("the cluster has {partitions} partitions registered, and shuffle {key} asks for {new} more"),
            ),
        ];
        for (key_name, wanted, limit, situation) in quotas {
            if wanted > limit {
                return Err(MasterError::Limit {
                    key: key_name,
                    retryable: true,
                    message: format!(
                        "{situation}: that is above {key_name} ({limit}); unregister shuffles or retry later"
                    ),
                });
            }
        }
        Ok(())
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
