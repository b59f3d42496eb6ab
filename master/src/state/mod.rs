//! The master's in-memory state: workers, applications and shuffles.
//!
//! Everything here is plain data changed under one lock by the service; nothing awaits while
//! holding it, and nothing here calls a worker. Work that does (placing, committing) marks what
//! it is doing here first, so concurrent requests for the same shuffle wait for it instead of
//! duplicating it: `registering` for a shuffle being placed, `ShuffleEntry::reviving` for
//! partitions being moved. Commits and revives are signalled through `watch` channels.
//!
//! - `worker`: what the master knows of each worker, and when it counts as live.
//! - `shuffle`: one shuffle's placement, map ends and committed layout.
//! - `limits`: the checks that keep what requests can make the master hold bounded.

mod limits;
mod machine;
mod shuffle;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_protocol::{pb, ShuffleKey};
use tokio::sync::watch;

use crate::config::MasterConfig;
use crate::error::{MasterError, MasterResult};

pub use machine::{command, epochs_placed, shuffle_placed};
pub use shuffle::{
    worker_index, CommitState, Figures, Location, MapResult, Shape, ShuffleEntry, NO_REPLICA,
};
pub use worker::{
    replica_latency_us, slow_worker_ids, slow_workers, Traffic, WorkerEntry, MISSED_HEARTBEATS,
};

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
    /// Shuffles whose commit this master is running (as leader).
    pub committing: HashSet<ShuffleKey>,
    /// Shuffles an applied map end completed, for the leader to commit (taken by
    /// `background::lead`).
    pub completed: Vec<ShuffleKey>,
    pub apps: HashMap<Arc<str>, Instant>,
    /// Registered applications and their key verifiers (replicated: `AppRegistered`, dropped
    /// with `AppRemoved`). An id registered once is only served to the same key.
    pub app_verifiers: HashMap<Arc<str>, Vec<u8>>,
    /// Per worker, the shuffles it reported holding that the registry does not know, and since
    /// when (see `orphan_grace`).
    pub orphans: HashMap<String, HashMap<ShuffleKey, Instant>>,
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

    /// Ends a registration this call placed (its entry, if any, came through the log). Waiters
    /// wake.
    pub fn end_registration(&mut self, key: &ShuffleKey) {
        self.registering.remove(key);
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

    /// Ends the revive of `targets` (their new epochs, if any, came through the log): clears
    /// their marks and wakes revives waiting on them.
    pub fn end_revive(&mut self, key: &ShuffleKey, targets: &[(u32, u32)]) {
        if let Some(entry) = self.shuffles.get_mut(key) {
            for (p, _) in targets {
                entry.reviving.remove(p);
            }
            entry.revived.send_modify(|n| *n += 1);
        }
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

    /// Notes the shuffles `worker` reports holding; returns those the registry has not known
    /// of for `grace` (they are then forgotten here: deleting them is the caller's). A shuffle
    /// being registered is known.
    pub fn orphans_of(
        &mut self,
        worker: &str,
        held: impl Iterator<Item = ShuffleKey>,
        grace: Duration,
    ) -> Vec<ShuffleKey> {
        let now = Instant::now();
        let mut previous = self.orphans.remove(worker).unwrap_or_default();
        let mut tracked = HashMap::new();
        let mut due = Vec::new();
        for key in held {
            if self.shuffles.contains_key(&key) || self.registering.contains_key(&key) {
                continue;
            }
            let since = previous.remove(&key).unwrap_or(now);
            if now.saturating_duration_since(since) >= grace {
                due.push(key);
            } else {
                tracked.insert(key, since);
            }
        }
        if !tracked.is_empty() {
            self.orphans.insert(worker.to_string(), tracked);
        }
        due
    }

    /// Registers (or registers again) a worker. An id held by a live worker at another address
    /// is refused: two workers would otherwise share one identity and the second would take
    /// over the first's partitions. A restarted worker (same id, new address) is accepted once
    /// its old incarnation missed its heartbeats, or at once at the same address. Returns
    /// whether the id was known, and whether a shuffle knows it at other addresses (the leader
    /// then records its move through the log).
    pub fn register_worker(
        &mut self,
        info: pb::WorkerInfo,
        disks: Vec<pb::DiskStatus>,
        heartbeat_interval: Duration,
        state: pb::WorkerState,
    ) -> MasterResult<(bool, bool)> {
        let (returning, moved) = self.admits(&info)?;
        // A decommissioning asked of the same incarnation (same address) that it has not heard
        // yet still holds; a new incarnation starts afresh.
        let requested = self
            .workers
            .get(&info.id)
            .is_some_and(|held| held.decommission_requested && held.same_address(&info));
        let mut entry = WorkerEntry::new(info, disks, heartbeat_interval);
        entry.decommission_requested = requested;
        if state == pb::WorkerState::Decommissioning {
            entry.state = state;
        }
        self.workers.insert(entry.info.id.clone(), entry);
        Ok((returning, moved))
    }

    /// Whether a worker registering as `info` is admitted (its id is not held by a live worker
    /// at another address), and if so whether it is `returning` (its id is known) and has
    /// `moved` (shuffles list it at other addresses). Changes nothing.
    pub fn admits(&self, info: &pb::WorkerInfo) -> MasterResult<(bool, bool)> {
        let now = Instant::now();
        if let Some(held) = self.workers.get(&info.id) {
            if !held.same_address(info) && held.is_fresh(now) {
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
        // addresses: every shuffle that placed copies on it must find it there.
        let moved = self
            .shuffles
            .values()
            .flat_map(|entry| &entry.workers)
            .any(|known| known.id == info.id && known != info);
        Ok((returning, moved))
    }
}
