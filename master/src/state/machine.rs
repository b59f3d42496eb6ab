//! The replicated half of the state as a Raft state machine: the commands that change it and
//! its snapshot. Applying is pure: a command changes the registry (and wakes local waiters), it
//! never calls anyone. Soft state (workers, application heartbeats, marks of calls in
//! progress) is each master's own and is not here.

use std::sync::Arc;

use prost::Message;
use sluice_protocol::{pb, ShuffleKey};

use super::{CommitState, Location, MapResult, Placement, Shape, ShuffleEntry, State, NO_REPLICA};
use crate::raft::Machine;

use pb::master_command::Command as C;

/// A command's shuffle key, checked.
fn key_of(key: Option<&pb::ShuffleKey>) -> Result<ShuffleKey, String> {
    ShuffleKey::from_pb(key)
}

/// `(primary, replica)` worker indexes from the parallel lists of a placement, checked
/// against the worker table's length.
fn copies_of(
    primary: &[u32],
    replica: &[u32],
    workers: usize,
) -> Result<Vec<(u32, Option<u32>)>, String> {
    if primary.len() != replica.len() {
        return Err(format!(
            "{} primaries and {} replicas",
            primary.len(),
            replica.len()
        ));
    }
    let check = |w: u32| {
        if (w as usize) < workers {
            Ok(w)
        } else {
            Err(format!("worker index {w} of a table of {workers}"))
        }
    };
    primary
        .iter()
        .zip(replica)
        .map(|(p, r)| {
            let replica = if *r == NO_REPLICA {
                None
            } else {
                Some(check(*r)?)
            };
            Ok((check(*p)?, replica))
        })
        .collect()
}

/// The command that records a registration's placement.
pub fn shuffle_placed(key: &ShuffleKey, shape: Shape, placement: Placement) -> pb::MasterCommand {
    let (primary_worker, replica_worker) = placement
        .copies
        .iter()
        .map(|(p, r)| (*p, r.unwrap_or(NO_REPLICA)))
        .unzip();
    command(C::ShufflePlaced(pb::ShufflePlaced {
        shuffle: Some(key.to_pb()),
        num_maps: shape.num_maps,
        num_partitions: shape.num_partitions,
        replication: shape.replication,
        workers: placement.workers,
        primary_worker,
        replica_worker,
    }))
}

/// The command that records a revive's placement of `targets` (`(partition, epoch)` pairs).
pub fn epochs_placed(
    key: &ShuffleKey,
    targets: &[(u32, u32)],
    placement: &Placement,
) -> pb::MasterCommand {
    command(C::EpochsPlaced(pb::EpochsPlaced {
        shuffle: Some(key.to_pb()),
        workers: placement.workers.clone(),
        partition: targets.iter().map(|(p, _)| *p).collect(),
        epoch: targets.iter().map(|(_, e)| *e).collect(),
        primary_worker: placement.copies.iter().map(|(p, _)| *p).collect(),
        replica_worker: placement
            .copies
            .iter()
            .map(|(_, r)| r.unwrap_or(NO_REPLICA))
            .collect(),
    }))
}

pub fn command(command: C) -> pb::MasterCommand {
    pb::MasterCommand {
        command: Some(command),
    }
}

fn failed(error: String) -> pb::MasterReply {
    pb::MasterReply {
        error,
        ..Default::default()
    }
}

impl State {
    /// The key a command names and its registered shuffle.
    fn registered(
        &mut self,
        key: Option<&pb::ShuffleKey>,
    ) -> Result<(ShuffleKey, &mut ShuffleEntry), String> {
        let key = key_of(key)?;
        match self.shuffles.get_mut(&key) {
            Some(entry) => Ok((key, entry)),
            None => Err(format!("shuffle {key} is not registered")),
        }
    }

    fn apply_placed(&mut self, placed: &pb::ShufflePlaced) -> Result<pb::MasterReply, String> {
        let key = key_of(placed.shuffle.as_ref())?;
        if self.shuffles.contains_key(&key) {
            return Err(format!("shuffle {key} is registered already"));
        }
        let copies = copies_of(
            &placed.primary_worker,
            &placed.replica_worker,
            placed.workers.len(),
        )?;
        if copies.len() != placed.num_partitions as usize {
            return Err(format!(
                "{} placed partitions of {}",
                copies.len(),
                placed.num_partitions
            ));
        }
        let shape = Shape {
            num_maps: placed.num_maps,
            num_partitions: placed.num_partitions,
            replication: placed.replication,
        };
        self.touch_app(&key.app_id);
        tracing::info!(shuffle = %key, maps = shape.num_maps, partitions = shape.num_partitions, workers = placed.workers.len(), "shuffle registered");
        let entry = ShuffleEntry::new(shape, placed.workers.clone(), copies);
        self.shuffles.insert(key, entry);
        Ok(pb::MasterReply::default())
    }

    fn apply_epochs(&mut self, placed: &pb::EpochsPlaced) -> Result<pb::MasterReply, String> {
        let (key, entry) = self.registered(placed.shuffle.as_ref())?;
        if entry.complete() {
            return Err(format!("shuffle {key} is already committed"));
        }
        let copies = copies_of(
            &placed.primary_worker,
            &placed.replica_worker,
            placed.workers.len(),
        )?;
        if copies.len() != placed.partition.len() || copies.len() != placed.epoch.len() {
            return Err("placement lists of different lengths".into());
        }
        for ((p, epoch), (primary, replica)) in
            placed.partition.iter().zip(&placed.epoch).zip(copies)
        {
            if *p >= entry.shape.num_partitions {
                return Err(format!("partition {p} of shuffle {key}"));
            }
            // Applied once: an epoch is only ever added above the current one.
            if *epoch <= entry.current_epoch(*p) && !entry.locations[*p as usize].is_empty() {
                continue;
            }
            let replica = replica.map(|r| &placed.workers[r as usize]);
            entry.add_epoch(*p, *epoch, &placed.workers[primary as usize], replica);
        }
        Ok(pb::MasterReply::default())
    }

    fn apply_map_ended(&mut self, ended: &pb::MapEnded) -> Result<pb::MasterReply, String> {
        let (key, entry) = self.registered(ended.shuffle.as_ref())?;
        if ended.map_id >= entry.shape.num_maps
            || ended
                .partitions
                .iter()
                .any(|s| s.partition >= entry.shape.num_partitions)
        {
            return Err(format!("map {} out of the shape of {key}", ended.map_id));
        }
        let (winning_attempt, complete) =
            entry.map_ended(ended.map_id, ended.attempt, ended.partitions.clone());
        if complete {
            self.completed.push(key);
        }
        Ok(pb::MasterReply {
            winning_attempt,
            complete,
            error: String::new(),
        })
    }

    fn apply_committed(&mut self, done: &pb::ShuffleCommitted) -> Result<pb::MasterReply, String> {
        let (_, entry) = self.registered(done.shuffle.as_ref())?;
        entry.set_committed(done)?;
        Ok(pb::MasterReply::default())
    }

    fn apply_worker_moved(&mut self, moved: &pb::WorkerMoved) -> Result<pb::MasterReply, String> {
        let info = moved.worker.as_ref().ok_or("no worker")?;
        for entry in self.shuffles.values_mut() {
            for known in entry.workers.iter_mut().filter(|w| w.id == info.id) {
                *known = info.clone();
            }
        }
        Ok(pb::MasterReply::default())
    }

    fn apply_copies_moved(&mut self, moved: &pb::CopiesMoved) -> Result<pb::MasterReply, String> {
        let (_, entry) = self.registered(moved.shuffle.as_ref())?;
        let n = moved.partition.len();
        if moved.epoch.len() != n || moved.role.len() != n {
            return Err("copy lists of different lengths".into());
        }
        let copies = (0..n).map(|i| (moved.partition[i], moved.epoch[i], moved.role[i]));
        entry.move_copies(&moved.from, copies, moved.to.as_ref(), &moved.reason);
        Ok(pb::MasterReply::default())
    }

    fn record(key: &ShuffleKey, entry: &ShuffleEntry) -> pb::ShuffleRecord {
        pb::ShuffleRecord {
            shuffle: Some(key.to_pb()),
            num_maps: entry.shape.num_maps,
            num_partitions: entry.shape.num_partitions,
            replication: entry.shape.replication,
            workers: entry.workers.clone(),
            partitions: entry
                .locations
                .iter()
                .map(|copies| pb::PartitionCopies {
                    epoch: copies.iter().map(|c| c.epoch).collect(),
                    role: copies.iter().map(|c| c.role as i32).collect(),
                    worker: copies.iter().map(|c| c.worker).collect(),
                })
                .collect(),
            maps: entry
                .maps
                .iter()
                .map(|(map_id, result)| pb::MapRecord {
                    map_id: *map_id,
                    attempt: result.attempt,
                    partitions: result.partitions.clone(),
                })
                .collect(),
            committed: entry.committed_command(key),
        }
    }

    fn entry_of(record: pb::ShuffleRecord) -> Result<(ShuffleKey, ShuffleEntry), String> {
        let key = key_of(record.shuffle.as_ref())?;
        let shape = Shape {
            num_maps: record.num_maps,
            num_partitions: record.num_partitions,
            replication: record.replication,
        };
        if record.partitions.len() != shape.num_partitions as usize {
            return Err(format!("shuffle {key}: partitions missing"));
        }
        let mut entry = ShuffleEntry::new(shape, record.workers, Vec::new());
        for copies in record.partitions {
            let n = copies.epoch.len();
            if copies.role.len() != n || copies.worker.len() != n {
                return Err(format!("shuffle {key}: copy lists of different lengths"));
            }
            let mut locations = Vec::with_capacity(n);
            for i in 0..n {
                if copies.worker[i] as usize >= entry.workers.len() {
                    return Err(format!("shuffle {key}: worker index out of its table"));
                }
                locations.push(Location {
                    epoch: copies.epoch[i],
                    role: pb::Role::try_from(copies.role[i]).map_err(|e| e.to_string())?,
                    worker: copies.worker[i],
                });
            }
            entry.locations.push(locations);
        }
        for map in record.maps {
            if map.map_id >= shape.num_maps {
                return Err(format!(
                    "shuffle {key}: map {} out of its shape",
                    map.map_id
                ));
            }
            entry.maps.insert(
                map.map_id,
                MapResult {
                    attempt: map.attempt,
                    partitions: map.partitions,
                },
            );
        }
        if entry.complete() {
            entry.index_expected();
        }
        entry.recount();
        if let Some(committed) = &record.committed {
            entry.set_committed(committed)?;
        }
        Ok((key, entry))
    }
}

impl ShuffleEntry {
    /// Publishes the commit results (readers waiting for the layout wake).
    fn set_committed(&mut self, done: &pb::ShuffleCommitted) -> Result<(), String> {
        if done.partitions.len() != self.locations.len()
            || done
                .partitions
                .iter()
                .zip(&self.locations)
                .any(|(c, l)| c.locations.len() != l.len())
        {
            return Err("commit results do not match the shuffle's copies".into());
        }
        let results: Vec<Vec<pb::CommittedLocation>> = done
            .partitions
            .iter()
            .map(|p| p.locations.clone())
            .collect();
        self.figures.lost_partitions = self.lost_partitions(&results);
        self.commit
            .send_replace(CommitState::Done(Arc::new(results)));
        Ok(())
    }

    /// The commit results as the command that recorded them (None until committed).
    pub fn committed_command(&self, key: &ShuffleKey) -> Option<pb::ShuffleCommitted> {
        match &*self.commit.borrow() {
            CommitState::Waiting => None,
            CommitState::Done(results) => Some(pb::ShuffleCommitted {
                shuffle: Some(key.to_pb()),
                partitions: results
                    .iter()
                    .map(|locations| pb::CommittedPartition {
                        locations: locations.clone(),
                    })
                    .collect(),
            }),
        }
    }
}

impl Machine for State {
    fn apply(&mut self, command: &pb::MasterCommand) -> pb::MasterReply {
        let applied = match &command.command {
            Some(C::ShufflePlaced(placed)) => self.apply_placed(placed),
            Some(C::EpochsPlaced(placed)) => self.apply_epochs(placed),
            Some(C::MapEnded(ended)) => self.apply_map_ended(ended),
            Some(C::ShuffleCommitted(done)) => self.apply_committed(done),
            Some(C::ShuffleRemoved(removed)) => key_of(removed.shuffle.as_ref()).map(|key| {
                self.shuffles.remove(&key);
                pb::MasterReply::default()
            }),
            Some(C::AppRegistered(registered)) => {
                let app = registered.app_id.as_str();
                match self.app_verifiers.get(app) {
                    Some(verifier) if *verifier != registered.verifier => Err(format!(
                        "application {app} is registered with another secret"
                    )),
                    _ => {
                        self.app_verifiers
                            .insert(Arc::from(app), registered.verifier.clone());
                        // Its clock starts now, so an application that never calls again
                        // expires too.
                        self.touch_app(app);
                        Ok(pb::MasterReply::default())
                    }
                }
            }
            Some(C::AppRemoved(removed)) => {
                let app = removed.app_id.as_str();
                self.apps.remove(app);
                self.app_verifiers.remove(app);
                self.shuffles.retain(|key, _| *key.app_id != *app);
                Ok(pb::MasterReply::default())
            }
            Some(C::WorkerMoved(moved)) => self.apply_worker_moved(moved),
            Some(C::CopiesMoved(moved)) => self.apply_copies_moved(moved),
            None => Err("empty command".into()),
        };
        applied.unwrap_or_else(|error| {
            tracing::debug!(%error, "command changed nothing");
            failed(error)
        })
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut keys: Vec<&ShuffleKey> = self.shuffles.keys().collect();
        keys.sort();
        let mut apps: Vec<(&Arc<str>, &Vec<u8>)> = self.app_verifiers.iter().collect();
        apps.sort();
        pb::MasterSnapshot {
            shuffles: keys
                .into_iter()
                .map(|key| State::record(key, &self.shuffles[key]))
                .collect(),
            apps: apps
                .into_iter()
                .map(|(app_id, verifier)| pb::AppRecord {
                    app_id: app_id.to_string(),
                    verifier: verifier.clone(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let snapshot = pb::MasterSnapshot::decode(snapshot)
            .map_err(|e| format!("master snapshot does not decode: {e}"))?;
        let mut shuffles = std::collections::HashMap::new();
        for record in snapshot.shuffles {
            let (key, entry) = State::entry_of(record)?;
            shuffles.insert(key, entry);
        }
        self.shuffles = shuffles;
        self.registering.clear();
        self.app_verifiers = snapshot
            .apps
            .into_iter()
            .map(|record| (Arc::from(record.app_id), record.verifier))
            .collect();
        let mut apps: Vec<Arc<str>> = self.shuffles.keys().map(|k| k.app_id.clone()).collect();
        apps.extend(self.app_verifiers.keys().cloned());
        for app in apps {
            self.touch_app(&app);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str) -> pb::WorkerInfo {
        pb::WorkerInfo {
            id: id.into(),
            host: "127.0.0.1".into(),
            push_port: 1,
            fetch_port: 2,
            ..Default::default()
        }
    }

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

    fn map_ended(key: &ShuffleKey, map_id: u32, attempt: u32) -> pb::MasterCommand {
        command(C::MapEnded(pb::MapEnded {
            shuffle: Some(key.to_pb()),
            map_id,
            attempt,
            partitions: vec![stats(map_id % 3, 10 + u64::from(map_id))],
        }))
    }

    /// Registers, revives, ends maps, commits: the replicated state after each command, as
    /// the snapshot encodes it.
    fn history(key: &ShuffleKey) -> Vec<pb::MasterCommand> {
        let shape = Shape {
            num_maps: 2,
            num_partitions: 3,
            replication: 2,
        };
        let placement = Placement {
            workers: vec![worker("a"), worker("b")],
            copies: vec![(0, Some(1)), (1, Some(0)), (0, Some(1))],
        };
        let revived = Placement {
            workers: vec![worker("c"), worker("a")],
            copies: vec![(0, Some(1))],
        };
        let committed = pb::ShuffleCommitted {
            shuffle: Some(key.to_pb()),
            partitions: vec![
                pb::CommittedPartition {
                    locations: vec![pb::CommittedLocation::default(); 4],
                },
                pb::CommittedPartition {
                    locations: vec![pb::CommittedLocation::default(); 2],
                },
                pb::CommittedPartition {
                    locations: vec![pb::CommittedLocation::default(); 2],
                },
            ],
        };
        vec![
            shuffle_placed(key, shape, placement),
            epochs_placed(key, &[(0, 1)], &revived),
            map_ended(key, 1, 4),
            map_ended(key, 1, 0),
            map_ended(key, 0, 2),
            command(C::ShuffleCommitted(committed)),
        ]
    }

    #[test]
    fn a_snapshot_restores_the_same_state_after_every_command() {
        let key = ShuffleKey::new("app", 7);
        let mut state = State::default();
        for cmd in history(&key) {
            let reply = state.apply(&cmd);
            assert!(reply.error.is_empty(), "{cmd:?}: {}", reply.error);
            let snapshot = state.snapshot();
            let mut restored = State::default();
            restored.restore(&snapshot).unwrap();
            assert_eq!(restored.snapshot(), snapshot);
            assert_eq!(
                restored.shuffles[&key].figures,
                state.shuffles[&key].figures
            );
            assert_eq!(
                restored.shuffles[&key].state_name(),
                state.shuffles[&key].state_name()
            );
        }
        let entry = &state.shuffles[&key];
        assert_eq!(entry.current_epoch(0), 1);
        assert_eq!(entry.current(0).1, 2, "epoch 1 on worker c (index 2)");
        assert_eq!(*entry.winning_attempt, vec![2, 4]);
        assert!(matches!(*entry.commit.borrow(), CommitState::Done(_)));
        // Maps 0 and 1 wrote 10 and 11 bytes to partitions 0 and 1, and no copy committed:
        // both are lost; partition 2 held nothing to lose.
        let figures = entry.figures;
        assert_eq!(figures.bytes_written, 21);
        assert_eq!((figures.revives, figures.max_epoch), (1, 1));
        assert_eq!(figures.lost_partitions, 2);
        assert_eq!(entry.state_name(), "failed");
    }

    #[test]
    fn application_registrations_bind_once_survive_snapshots_and_go_with_the_app() {
        let register = |app: &str, verifier: u8| {
            command(C::AppRegistered(pb::AppRegistered {
                app_id: app.into(),
                verifier: vec![verifier; 32],
            }))
        };
        let mut state = State::default();
        assert!(state.apply(&register("a", 1)).error.is_empty());
        assert!(state.apply(&register("a", 1)).error.is_empty());
        assert!(state.apply(&register("b", 2)).error.is_empty());
        let refused = state.apply(&register("a", 9));
        assert!(
            refused.error.contains("another secret"),
            "{}",
            refused.error
        );
        assert_eq!(state.app_verifiers["a"], vec![1; 32]);
        assert!(state.apps.contains_key("a"));

        let snapshot = state.snapshot();
        let mut restored = State::default();
        restored.restore(&snapshot).unwrap();
        assert_eq!(restored.app_verifiers, state.app_verifiers);
        assert!(
            restored.apps.contains_key("b"),
            "a restored app expires too"
        );

        state.apply(&command(C::AppRemoved(pb::AppRemoved {
            app_id: "a".into(),
        })));
        assert!(!state.app_verifiers.contains_key("a"));
        assert!(state.apply(&register("a", 9)).error.is_empty());
    }

    #[test]
    fn a_failed_copy_loses_nothing_when_another_copy_of_its_epoch_committed() {
        let key = ShuffleKey::new("app", 7);
        let mut state = State::default();
        let commands = history(&key);
        for cmd in &commands[..5] {
            state.apply(cmd);
        }
        assert_eq!(state.shuffles[&key].state_name(), "committing");
        let copy = |epoch: u32, ok: bool, bytes: u64| pb::CommittedLocation {
            epoch,
            ok,
            stats: ok.then_some(pb::BatchStats {
                bytes,
                batches: 1,
                checksum: 0,
            }),
            ..Default::default()
        };
        // Partition 0: epoch 0 lost both copies, but epoch 1 holds all 10 bytes its map wrote.
        // Partition 1: its replica failed, its primary committed.
        let committed = pb::ShuffleCommitted {
            shuffle: Some(key.to_pb()),
            partitions: vec![
                pb::CommittedPartition {
                    locations: vec![
                        copy(0, false, 0),
                        copy(0, false, 0),
                        copy(1, true, 10),
                        copy(1, false, 0),
                    ],
                },
                pb::CommittedPartition {
                    locations: vec![copy(0, true, 11), copy(0, false, 0)],
                },
                pb::CommittedPartition {
                    locations: vec![copy(0, true, 0), copy(0, true, 0)],
                },
            ],
        };
        state.apply(&command(C::ShuffleCommitted(committed)));
        let entry = &state.shuffles[&key];
        assert_eq!(entry.figures.lost_partitions, 0);
        assert_eq!(entry.state_name(), "committed");
    }

    #[test]
    fn commands_that_no_longer_fit_change_nothing() {
        let key = ShuffleKey::new("app", 7);
        let mut state = State::default();
        let commands = history(&key);
        for cmd in &commands {
            state.apply(cmd);
        }
        let before = state.snapshot();
        // A second registration, a revive after the commit, a map of another shape, garbage.
        let replies = [
            state.apply(&commands[0]),
            state.apply(&commands[1]),
            state.apply(&map_ended(&key, 9, 0)),
            state.apply(&pb::MasterCommand::default()),
            state.apply(&map_ended(&ShuffleKey::new("other", 1), 0, 0)),
        ];
        for reply in replies {
            assert!(!reply.error.is_empty());
        }
        assert_eq!(state.snapshot(), before);
        state.apply(&command(C::AppRemoved(pb::AppRemoved {
            app_id: "app".into(),
        })));
        assert!(state.shuffles.is_empty());
        assert!(state.restore(b"\xff\xff not a snapshot").is_err());
    }
}
