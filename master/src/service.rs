//! The `Master` gRPC service: checks each request and hands it to the room that does the work
//! ([`crate::reserve`] for placements, [`crate::commit`] for commits, [`crate::state`] for the
//! registry).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_protocol::pb;
use sluice_protocol::pb::master_server::Master;
use sluice_protocol::ShuffleKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::commit::commit_shuffle;
use crate::config::MasterConfig;
use crate::core::Core;
use crate::error::MasterError;
use crate::reserve::place_and_reserve;
use crate::state::{CommitState, Location, ShuffleEntry, WorkerEntry};

/// Longest a layout request waits for the commit before answering "not yet".
const MAX_LAYOUT_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct MasterService {
    core: Arc<Core>,
}

fn shuffle_key(key: Option<&pb::ShuffleKey>) -> Result<ShuffleKey, Status> {
    ShuffleKey::from_pb(key).map_err(|e| MasterError::InvalidRequest(e).into())
}

fn not_found(key: &ShuffleKey) -> Status {
    MasterError::NotFound(format!("shuffle {key} is not registered")).into()
}

impl MasterService {
    pub fn new(config: MasterConfig, shutdown: CancellationToken) -> MasterService {
        MasterService {
            core: Arc::new(Core::new(config, shutdown)),
        }
    }

    /// Starts the tasks that declare silent workers lost and expire silent applications.
    pub fn spawn_background(&self, shutdown: CancellationToken) {
        crate::background::spawn(&self.core, shutdown);
    }
}

#[tonic::async_trait]
impl Master for MasterService {
    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let request = request.into_inner();
        let info = request
            .worker
            .ok_or_else(|| MasterError::InvalidRequest("missing worker info".into()))?;
        if info.id.is_empty()
            || info.push_port == 0
            || info.fetch_port == 0
            || info.push_port > 65535
            || info.fetch_port > 65535
        {
            return Err(
                MasterError::InvalidRequest(format!("invalid worker info {info:?}")).into(),
            );
        }
        let mut state = self.core.lock();
        let returning = state.workers.contains_key(&info.id);
        // A worker back under the same id (a restarted pod with its disks) may have new
        // addresses: every shuffle that placed copies on it now finds it there.
        for entry in state.shuffles.values_mut() {
            for known in entry.workers.iter_mut().filter(|w| w.id == info.id) {
                *known = info.clone();
            }
        }
        tracing::info!(worker = %info.id, push = %info.push_addr(), fetch = %info.fetch_addr(), returning, "worker registered");
        state.workers.insert(
            info.id.clone(),
            WorkerEntry {
                info,
                disks: request.disks,
                last_seen: Instant::now(),
                alive: true,
                memory_used: 0,
                active_partitions: 0,
                state: pb::WorkerState::Active,
            },
        );
        Ok(Response::new(pb::RegisterWorkerResponse {}))
    }

    async fn worker_heartbeat(
        &self,
        request: Request<pb::WorkerHeartbeatRequest>,
    ) -> Result<Response<pb::WorkerHeartbeatResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.core.lock();
        let reregister = match state.workers.get_mut(&request.worker_id) {
            Some(worker) if worker.alive => {
                worker.state = request.state();
                worker.last_seen = Instant::now();
                worker.disks = request.disks;
                worker.memory_used = request.memory_used_bytes;
                worker.active_partitions = request.active_partitions;
                false
            }
            _ => true,
        };
        Ok(Response::new(pb::WorkerHeartbeatResponse { reregister }))
    }

    async fn register_shuffle(
        &self,
        request: Request<pb::RegisterShuffleRequest>,
    ) -> Result<Response<pb::RegisterShuffleResponse>, Status> {
        let request = request.into_inner();
        let key = shuffle_key(request.shuffle.as_ref())?;
        let config = &self.core.config;
        if request.num_partitions == 0 || request.num_partitions > config.max_partitions {
            return Err(MasterError::InvalidRequest(format!(
                "num_partitions must be 1 to {}, got {}",
                config.max_partitions, request.num_partitions
            ))
            .into());
        }
        if request.num_maps == 0 || request.num_maps > config.max_maps {
            return Err(MasterError::InvalidRequest(format!(
                "num_maps must be 1 to {}, got {}",
                config.max_maps, request.num_maps
            ))
            .into());
        }
        // 0 asks for the cluster's default: two copies when there are two workers to hold them.
        let replication = match request.replication {
            0 => {
                let live = self
                    .core
                    .lock()
                    .workers
                    .values()
                    .filter(|w| w.accepts_partitions())
                    .count();
                if live >= 2 {
                    2
                } else {
                    1
                }
            }
            n => n,
        };
        if replication > 2 {
            return Err(MasterError::InvalidRequest(format!(
                "replication must be 1 or 2, got {replication}"
            ))
            .into());
        }
        let _registering = self.core.registering.lock().await;
        {
            let mut state = self.core.lock();
            state.touch_app(&key.app_id);
            if let Some(existing) = state.shuffles.get(&key) {
                if (
                    existing.num_maps,
                    existing.num_partitions,
                    existing.replication,
                ) != (request.num_maps, request.num_partitions, replication)
                {
                    return Err(MasterError::InvalidRequest(format!(
                        "shuffle {key} is already registered with {} maps, {} partitions, replication {}",
                        existing.num_maps, existing.num_partitions, existing.replication
                    ))
                    .into());
                }
                return Ok(Response::new(pb::RegisterShuffleResponse {
                    locations: Some(existing.current_locations()),
                }));
            }
        }
        let targets: Vec<(u32, u32)> = (0..request.num_partitions).map(|p| (p, 0)).collect();
        let placement =
            place_and_reserve(&self.core, &key, &targets, replication, HashSet::new()).await?;
        let entry = ShuffleEntry {
            num_maps: request.num_maps,
            num_partitions: request.num_partitions,
            replication,
            workers: placement.workers,
            locations: placement
                .copies
                .into_iter()
                .map(|(primary, replica)| Location::copies(0, primary, replica).collect())
                .collect(),
            maps: vec![None; request.num_maps as usize],
            ended: 0,
            expected_by_partition: Vec::new(),
            commit: watch::channel(CommitState::Waiting).0,
        };
        let locations = entry.current_locations();
        tracing::info!(shuffle = %key, maps = request.num_maps, partitions = request.num_partitions, workers = entry.workers.len(), "shuffle registered");
        self.core.lock().shuffles.insert(key, entry);
        Ok(Response::new(pb::RegisterShuffleResponse {
            locations: Some(locations),
        }))
    }

    async fn revive(
        &self,
        request: Request<pb::ReviveRequest>,
    ) -> Result<Response<pb::ReviveResponse>, Status> {
        let request = request.into_inner();
        let key = shuffle_key(request.shuffle.as_ref())?;
        // Revives and registrations place one at a time.
        let _placing = self.core.registering.lock().await;
        let (replication, targets, excluded) = {
            let mut state = self.core.lock();
            state.touch_app(&key.app_id);
            let entry = state.shuffles.get(&key).ok_or_else(|| not_found(&key))?;
            if entry.ended == entry.num_maps {
                return Err(MasterError::Committed(key.to_string()).into());
            }
            let mut targets = Vec::new();
            let mut excluded = HashSet::new();
            for failed in &request.failed {
                let copies = entry
                    .locations
                    .get(failed.partition as usize)
                    .ok_or_else(|| {
                        MasterError::InvalidRequest(format!(
                            "partition {} of shuffle {key} with {} partitions",
                            failed.partition, entry.num_partitions
                        ))
                    })?;
                let current = copies.iter().map(|l| l.epoch).max().unwrap_or(0);
                // Only a failure of the current epoch moves the partition; an older one was
                // revived already (by another writer), and the answer is the current location.
                if failed.epoch == current && !targets.iter().any(|(p, _)| *p == failed.partition) {
                    targets.push((failed.partition, current + 1));
                    for copy in copies.iter().filter(|l| l.epoch == current) {
                        excluded.insert(entry.workers[copy.worker as usize].id.clone());
                    }
                }
            }
            (entry.replication, targets, excluded)
        };
        if !targets.is_empty() {
            tracing::info!(shuffle = %key, partitions = targets.len(), excluded = ?excluded, reason = %request.reason, "reviving");
            let placement =
                match place_and_reserve(&self.core, &key, &targets, replication, excluded.clone())
                    .await
                {
                    Ok(placement) => placement,
                    // No other worker left: anywhere live is better than failing the writer.
                    Err(_) if !excluded.is_empty() => {
                        place_and_reserve(&self.core, &key, &targets, replication, HashSet::new())
                            .await?
                    }
                    Err(e) => return Err(e.into()),
                };
            let mut state = self.core.lock();
            let entry = state
                .shuffles
                .get_mut(&key)
                .ok_or_else(|| not_found(&key))?;
            let mut index_of = |worker: &pb::WorkerInfo| -> u32 {
                match entry.workers.iter().position(|w| w.id == worker.id) {
                    Some(index) => index as u32,
                    None => {
                        entry.workers.push(worker.clone());
                        (entry.workers.len() - 1) as u32
                    }
                }
            };
            let copies: Vec<(u32, Option<u32>)> = placement
                .copies
                .iter()
                .map(|(primary, replica)| {
                    (
                        index_of(&placement.workers[*primary as usize]),
                        replica.map(|r| index_of(&placement.workers[r as usize])),
                    )
                })
                .collect();
            for ((partition, epoch), (primary, replica)) in targets.iter().zip(copies) {
                entry.locations[*partition as usize]
                    .extend(Location::copies(*epoch, primary, replica));
            }
        }
        let state = self.core.lock();
        let entry = state.shuffles.get(&key).ok_or_else(|| not_found(&key))?;
        let current = entry.current_locations();
        let worker = |index: u32| entry.workers.get(index as usize).cloned();
        let mut seen = HashSet::new();
        let locations = request
            .failed
            .iter()
            .filter(|f| seen.insert(f.partition))
            .map(|f| {
                let p = f.partition as usize;
                pb::RevivedLocation {
                    partition: f.partition,
                    epoch: current.epoch[p],
                    primary: worker(current.primary_worker[p]),
                    replica: worker(current.replica_worker[p]),
                }
            })
            .collect();
        Ok(Response::new(pb::ReviveResponse { locations }))
    }

    async fn mapper_end(
        &self,
        request: Request<pb::MapperEndRequest>,
    ) -> Result<Response<pb::MapperEndResponse>, Status> {
        let request = request.into_inner();
        let key = shuffle_key(request.shuffle.as_ref())?;
        let (winning_attempt, complete, winner_partitions) = {
            let mut state = self.core.lock();
            state.touch_app(&key.app_id);
            let entry = state
                .shuffles
                .get_mut(&key)
                .ok_or_else(|| not_found(&key))?;
            if request.map_id >= entry.num_maps {
                return Err(MasterError::InvalidRequest(format!(
                    "map {} of shuffle {key} with {} maps",
                    request.map_id, entry.num_maps
                ))
                .into());
            }
            if let Some(bad) = request
                .partitions
                .iter()
                .find(|p| p.partition >= entry.num_partitions)
            {
                return Err(MasterError::InvalidRequest(format!(
                    "partition {} of shuffle {key} with {} partitions",
                    bad.partition, entry.num_partitions
                ))
                .into());
            }
            let (winning_attempt, complete) =
                entry.map_ended(request.map_id, request.attempt, request.partitions);
            let winner_partitions = if winning_attempt == request.attempt {
                Vec::new()
            } else {
                entry.maps[request.map_id as usize]
                    .as_ref()
                    .map(|m| m.partitions.clone())
                    .unwrap_or_default()
            };
            (winning_attempt, complete, winner_partitions)
        };
        if winning_attempt != request.attempt {
            tracing::debug!(shuffle = %key, map = request.map_id, attempt = request.attempt, winning_attempt, "late map attempt ignored");
        }
        if complete {
            tokio::spawn(commit_shuffle(self.core.clone(), key));
        }
        Ok(Response::new(pb::MapperEndResponse {
            winning_attempt,
            winner_partitions,
        }))
    }

    async fn get_shuffle_layout(
        &self,
        request: Request<pb::GetShuffleLayoutRequest>,
    ) -> Result<Response<pb::GetShuffleLayoutResponse>, Status> {
        let request = request.into_inner();
        let key = shuffle_key(request.shuffle.as_ref())?;
        let mut commit = {
            let mut state = self.core.lock();
            state.touch_app(&key.app_id);
            let entry = state.shuffles.get(&key).ok_or_else(|| not_found(&key))?;
            if request.start_partition >= request.end_partition
                || request.end_partition > entry.num_partitions
            {
                return Err(MasterError::InvalidRequest(format!(
                    "partition range [{}, {}) of shuffle {key} with {} partitions",
                    request.start_partition, request.end_partition, entry.num_partitions
                ))
                .into());
            }
            entry.commit.subscribe()
        };
        let wait = Duration::from_millis(u64::from(request.wait_ms)).min(MAX_LAYOUT_WAIT);
        let done = tokio::select! {
            done = tokio::time::timeout(wait, commit.wait_for(|s| matches!(s, CommitState::Done(_)))) => done,
            _ = self.core.shutdown.cancelled() => return Err(MasterError::ShuttingDown.into()),
        };
        let committed = match done {
            Ok(Ok(state)) => match &*state {
                CommitState::Done(results) => results.clone(),
                CommitState::Waiting => return Err(not_found(&key)),
            },
            Ok(Err(_)) => return Err(not_found(&key)),
            Err(_) => {
                return Ok(Response::new(pb::GetShuffleLayoutResponse {
                    committed: false,
                    ..Default::default()
                }))
            }
        };
        let state = self.core.lock();
        let entry = state.shuffles.get(&key).ok_or_else(|| not_found(&key))?;
        let partitions = (request.start_partition..request.end_partition)
            .map(|partition| pb::PartitionLayout {
                partition,
                locations: committed[partition as usize].clone(),
                expected: entry.expected(partition),
            })
            .collect();
        Ok(Response::new(pb::GetShuffleLayoutResponse {
            committed: true,
            workers: entry.workers.clone(),
            winning_attempt: entry
                .maps
                .iter()
                .map(|m| m.as_ref().map_or(0, |m| m.attempt))
                .collect(),
            partitions,
        }))
    }

    async fn unregister_shuffle(
        &self,
        request: Request<pb::UnregisterShuffleRequest>,
    ) -> Result<Response<pb::UnregisterShuffleResponse>, Status> {
        let key = shuffle_key(request.into_inner().shuffle.as_ref())?;
        let removed = self.core.lock().shuffles.remove(&key);
        if let Some(entry) = removed {
            tracing::info!(shuffle = %key, "shuffle unregistered");
            self.core
                .destroy_on(entry.workers, &key.app_id, Some(key.shuffle_id));
        }
        Ok(Response::new(pb::UnregisterShuffleResponse {}))
    }

    async fn app_heartbeat(
        &self,
        request: Request<pb::AppHeartbeatRequest>,
    ) -> Result<Response<pb::AppHeartbeatResponse>, Status> {
        let app_id = request.into_inner().app_id;
        sluice_protocol::ids::validate_app_id(&app_id).map_err(MasterError::InvalidRequest)?;
        self.core.lock().touch_app(&app_id);
        Ok(Response::new(pb::AppHeartbeatResponse {}))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let state = self.core.lock();
        let mut workers: Vec<pb::WorkerStatus> = state
            .workers
            .values()
            .map(|w| pb::WorkerStatus {
                worker: Some(w.info.clone()),
                alive: w.alive,
                memory_used_bytes: w.memory_used,
                active_partitions: w.active_partitions,
                disks: w.disks.clone(),
                heartbeat_age_ms: w.last_seen.elapsed().as_millis() as u64,
            })
            .collect();
        workers.sort_by(|a, b| {
            a.worker
                .as_ref()
                .map(|w| &w.id)
                .cmp(&b.worker.as_ref().map(|w| &w.id))
        });
        Ok(Response::new(pb::ClusterStatusResponse {
            workers,
            shuffles: state.shuffles.len() as u64,
            applications: state.apps.len() as u64,
        }))
    }
}
