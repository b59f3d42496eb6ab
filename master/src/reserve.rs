//! Placing partitions on workers and reserving them there before anyone pushes: shuffle
//! registrations (epoch 0 of every partition) and revives (the next epoch of some).
//!
//! No lock is held while a worker is called. A call that places marks what it places in the
//! state first (the shuffle as registering, or its partitions as reviving); a concurrent call for
//! the same shuffle or partitions waits for that mark to go and looks again, while calls for
//! anything else go ahead. Each reservation has `reserve_timeout`: a worker that does not answer
//! in time (a stopped process, a half-dead node) is left out and its share placed elsewhere.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use sluice_protocol::{pb, ErrorCode, ShuffleKey};

use crate::core::Core;
use crate::error::{MasterError, MasterResult};
use crate::placement::{self, Candidate, Domain};
use crate::state::{
    self, not_registered, slow_workers, worker_index, Placement, Registration, ReviveStep, Shape,
    WorkerEntry,
};

/// Placement attempts when workers fail to reserve.
const PLACEMENT_ATTEMPTS: usize = 3;

/// Registers a shuffle (idempotent) and returns where its partitions go.
pub(crate) async fn register(
    core: &Arc<Core>,
    key: &ShuffleKey,
    shape: Shape,
) -> MasterResult<pb::ShuffleLocations> {
    loop {
        let decision = core.lock().begin_registration(key, shape, &core.config)?;
        match decision {
            Registration::Registered(locations) => return Ok(locations),
            // Resolves when the registration in progress ends, either way.
            Registration::Wait(mut done) => while done.changed().await.is_ok() {},
            Registration::Place => break,
        }
    }
    // Ends the registration however this call ends (an error, or the caller going away).
    let _pending = EndRegistration { core, key };
    let targets: Vec<(u32, u32)> = (0..shape.num_partitions).map(|p| (p, 0)).collect();
    let placement =
        place_and_reserve(core, key, &targets, shape.replication, HashSet::new()).await?;
    // The registration counts once the log holds it (a registration by an earlier leader that
    // got there first wins; its locations are the answer).
    core.propose(state::shuffle_placed(key, shape, placement))
        .await?;
    let state = core.lock();
    let entry = state.shuffles.get(key).ok_or_else(|| not_registered(key))?;
    Ok(entry.current_locations())
}

struct EndRegistration<'a> {
    core: &'a Core,
    key: &'a ShuffleKey,
}

impl Drop for EndRegistration<'_> {
    fn drop(&mut self) {
        self.core.lock().end_registration(self.key);
    }
}

/// Moves the partitions whose current epoch failed to a new epoch, and answers the current
/// location of every partition asked about.
pub(crate) async fn revive(
    core: &Arc<Core>,
    key: &ShuffleKey,
    failed: &[pb::FailedLocation],
    reason: &str,
) -> MasterResult<Vec<pb::RevivedLocation>> {
    loop {
        let ReviveStep {
            replication,
            targets,
            excluded,
            wait,
        } = core
            .lock()
            .begin_revive(key, failed, core.config.max_epochs_per_partition)?;
        if !targets.is_empty() {
            tracing::info!(shuffle = %key, partitions = targets.len(), excluded = ?excluded, reason, "reviving");
            let mut away: Vec<&str> = excluded.iter().map(String::as_str).collect();
            away.sort_unstable();
            core.events.shuffle(
                crate::events::Kind::Revive,
                key,
                format!(
                    "{} partition(s) moved to a new epoch, away from {}: {reason}",
                    targets.len(),
                    away.join(", ")
                ),
            );
            let _moving = EndRevive {
                core,
                key,
                targets: &targets,
            };
            let placement =
                match place_and_reserve(core, key, &targets, replication, excluded.clone()).await {
                    Ok(placement) => placement,
                    // No other worker left: anywhere live is better than failing the writer.
                    Err(_) if !excluded.is_empty() => {
                        place_and_reserve(core, key, &targets, replication, HashSet::new()).await?
                    }
                    Err(e) => return Err(e),
                };
            let reply = core
                .propose(state::epochs_placed(key, &targets, &placement))
                .await?;
            if !reply.error.is_empty() {
                // The shuffle completed (or went) meanwhile: no new epochs.
                return Err(match core.lock().shuffles.contains_key(key) {
                    true => MasterError::Committed(key.to_string()),
                    false => not_registered(key),
                });
            }
        }
        match wait {
            // Another call is moving some of these partitions: wait for it, then look again.
            Some(mut revived) => {
                let _ = revived.changed().await;
            }
            None => break,
        }
    }
    core.lock().revived_locations(key, failed)
}

/// Clears the marks of a revive however it ends, so waiting revives look again.
struct EndRevive<'a> {
    core: &'a Core,
    key: &'a ShuffleKey,
    targets: &'a [(u32, u32)],
}

impl Drop for EndRevive<'_> {
    fn drop(&mut self) {
        self.core.lock().end_revive(self.key, self.targets);
    }
}

/// The workers placement may use, sorted by id: live, healthy, not `excluded`, and when there
/// are enough of those, fresh (heard from recently) with no recent failed reservation.
fn candidates(
    core: &Core,
    excluded: &HashSet<String>,
    replication: u32,
) -> Vec<(pb::WorkerInfo, Candidate)> {
    let state = core.lock();
    let now = Instant::now();
    let mut live: Vec<&WorkerEntry> = state
        .workers
        .values()
        .filter(|w| w.accepts_partitions() && !excluded.contains(&w.info.id))
        .collect();
    let trusted = live.iter().filter(|w| !w.is_suspect(now)).count();
    if trusted >= replication.max(1) as usize {
        live.retain(|w| !w.is_suspect(now));
    }
    // Slow workers (far slower flushes, replica acks or reservations than their peers') only
    // when too few others are left.
    let slow = slow_workers(&live);
    let fast = slow.iter().filter(|s| !**s).count();
    if fast >= replication.max(1) as usize && fast < live.len() {
        let mut slow = slow.into_iter();
        live.retain(|_| !slow.next().unwrap_or(false));
    }
    live.sort_by(|a, b| a.info.id.cmp(&b.info.id));
    live.iter()
        .map(|w| {
            (
                w.info.clone(),
                Candidate {
                    free_bytes: w.free_bytes(),
                    active_partitions: w.active_partitions,
                },
            )
        })
        .collect()
}

/// Places every target's copies (a primary, and with replication 2 a replica on another worker,
/// as far away as the workers' zone, node and host labels allow) and reserves them. A worker that
/// fails to reserve is excluded and the partitions it was part of are placed again;
/// reservations that succeeded stay (a primary reserved again takes its new replica).
async fn place_and_reserve(
    core: &Arc<Core>,
    key: &ShuffleKey,
    targets: &[(u32, u32)],
    replication: u32,
    mut excluded: HashSet<String>,
) -> MasterResult<Placement> {
    let mut last_error = None;
    let mut table: Vec<pb::WorkerInfo> = Vec::new();
    let mut placed: Vec<Option<(u32, Option<u32>)>> = vec![None; targets.len()];
    for _ in 0..PLACEMENT_ATTEMPTS {
        // Indexes into `targets` of the (partition, epoch) pairs still to place.
        let unplaced: Vec<usize> = (0..targets.len())
            .filter(|t| placed[*t].is_none())
            .collect();
        if unplaced.is_empty() {
            break;
        }
        let candidates = candidates(core, &excluded, replication);
        if candidates.len() < replication as usize {
            break;
        }
        let weights: Vec<Candidate> = candidates.iter().map(|(_, c)| c.clone()).collect();
        let primaries = placement::place(&weights, unplaced.len());
        let replicas = if replication > 1 {
            let domains: Vec<Domain> = candidates.iter().map(|(w, _)| Domain::of(w)).collect();
            placement::place_replicas(&weights, &domains, &primaries)
        } else {
            vec![None; primaries.len()]
        };
        // One reservation per worker: its primaries (naming their replica) and replicas.
        let mut specs: HashMap<u32, Vec<pb::LocationSpec>> = HashMap::new();
        for ((target, primary), replica) in unplaced.iter().zip(&primaries).zip(&replicas) {
            let (partition, epoch) = targets[*target];
            specs.entry(*primary).or_default().push(pb::LocationSpec {
                partition,
                epoch,
                role: pb::Role::Primary as i32,
                replica: replica.map(|r| candidates[r as usize].0.clone()),
            });
            if let Some(replica) = replica {
                specs.entry(*replica).or_default().push(pb::LocationSpec {
                    partition,
                    epoch,
                    role: pb::Role::Replica as i32,
                    replica: None,
                });
            }
        }
        let mut reservations = tokio::task::JoinSet::new();
        for (candidate, locations) in specs {
            let worker = candidates[candidate as usize].0.clone();
            let (core, key) = (core.clone(), key.clone());
            reservations.spawn(async move {
                let result = core.reserve(&worker, &key, locations).await;
                (candidate, result)
            });
        }
        let mut reserved: HashSet<u32> = HashSet::new();
        while let Some(joined) = reservations.join_next().await {
            let Ok((candidate, result)) = joined else {
                continue;
            };
            let worker = &candidates[candidate as usize].0;
            match result {
                Ok(()) => {
                    reserved.insert(candidate);
                }
                Err(e) => {
                    tracing::warn!(worker = %worker.id, shuffle = %key, error = %e, "reservation failed, placing elsewhere");
                    if matches!(e.code(), ErrorCode::Timeout | ErrorCode::Unavailable) {
                        core.avoid(&worker.id);
                    }
                    excluded.insert(worker.id.clone());
                    last_error = Some(e);
                }
            }
        }
        for ((target, primary), replica) in unplaced.iter().zip(primaries).zip(replicas) {
            let copies_reserved =
                reserved.contains(&primary) && replica.is_none_or(|r| reserved.contains(&r));
            if copies_reserved {
                let mut index = |c: u32| worker_index(&mut table, &candidates[c as usize].0);
                placed[*target] = Some((index(primary), replica.map(&mut index)));
            }
        }
    }
    match placed.into_iter().collect::<Option<Vec<_>>>() {
        Some(copies) => Ok(Placement {
            workers: table,
            copies,
        }),
        None => {
            // Reservations that succeeded are left in place (empty, and reused if the
            // registration is retried); the application's expiry deletes them everywhere.
            // Deleting them here could race with a retried registration's reservations.
            Err(last_error.unwrap_or_else(|| {
                MasterError::NoWorkers(format!(
                    "{replication} live workers are needed for replication {replication}"
                ))
            }))
        }
    }
}
