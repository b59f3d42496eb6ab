//! Placing partitions on workers and reserving them there before anyone pushes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::MessageType;
use sluice_protocol::pb;
use sluice_protocol::ShuffleKey;

use crate::core::Core;
use crate::error::{MasterError, MasterResult};
use crate::placement::{self, Candidate, Domain};
use crate::state::WorkerEntry;

/// Placement attempts when workers fail to reserve.
const PLACEMENT_ATTEMPTS: usize = 3;

/// Places every partition's copies (a primary, and with replication 2 a replica on another
/// worker, as far away as the workers' zone, node and host labels allow) and reserves them. A
/// worker that fails to reserve is excluded and the partitions it was part of are placed again;
/// reservations that succeeded stay (a primary reserved again takes its new replica).
pub(crate) async fn place_and_reserve(
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
        let candidates: Vec<(pb::WorkerInfo, Candidate)> = {
            let state = core.lock();
            let mut live: Vec<&WorkerEntry> = state
                .workers
                .values()
                .filter(|w| w.accepts_partitions() && !excluded.contains(&w.info.id))
                .collect();
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
        };
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
            let core = core.clone();
            let frame = OutFrame::new(
                MessageType::Reserve,
                0,
                &pb::ReserveHeader {
                    shuffle: Some(key.to_pb()),
                    locations,
                },
            );
            reservations.spawn(async move {
                let timeout = core.config.worker_rpc_timeout;
                let result = core
                    .call_worker(&worker, frame, MessageType::Ack, timeout)
                    .await;
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
                Ok(_) => {
                    reserved.insert(candidate);
                }
                Err(e) => {
                    tracing::warn!(worker = %worker.id, shuffle = %key, error = %e, "reservation failed, placing elsewhere");
                    excluded.insert(worker.id.clone());
                    last_error = Some(e);
                }
            }
        }
        let mut index_of = |candidate: u32| -> u32 {
            let worker = &candidates[candidate as usize].0;
            match table.iter().position(|w| w.id == worker.id) {
                Some(index) => index as u32,
                None => {
                    table.push(worker.clone());
                    (table.len() - 1) as u32
                }
            }
        };
        for ((target, primary), replica) in unplaced.iter().zip(primaries).zip(replicas) {
            let copies_reserved =
                reserved.contains(&primary) && replica.is_none_or(|r| reserved.contains(&r));
            if copies_reserved {
                placed[*target] = Some((index_of(primary), replica.map(&mut index_of)));
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

/// Where partitions went: a worker table and, per target `(partition, epoch)`, the primary's
/// and (with replication 2) the replica's index into it.
#[derive(Debug)]
pub(crate) struct Placement {
    pub workers: Vec<pb::WorkerInfo>,
    pub copies: Vec<(u32, Option<u32>)>,
}
