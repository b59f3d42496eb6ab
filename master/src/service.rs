//! The `Master` gRPC service and the master's background tasks.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::{FrameLimits, MessageType};
use sluice_protocol::pb;
use sluice_protocol::pb::master_server::Master;
use sluice_protocol::rpc::RpcPool;
use sluice_protocol::ShuffleKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::config::MasterConfig;
use crate::error::{MasterError, MasterResult};
use crate::placement::{self, Candidate};
use crate::state::{CommitState, Location, ShuffleEntry, State, WorkerEntry};

/// Longest a layout request waits for the commit before answering "not yet".
const MAX_LAYOUT_WAIT: Duration = Duration::from_secs(60);
/// Placement attempts when workers fail to reserve.
const PLACEMENT_ATTEMPTS: usize = 3;

#[derive(Debug, Clone)]
pub struct MasterService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: MasterConfig,
    state: Mutex<State>,
    workers: RpcPool,
    /// Serializes shuffle registrations, so two registrations of one shuffle cannot both place.
    registering: tokio::sync::Mutex<()>,
    /// Cancelled when the master stops: long polls answer at once.
    shutdown: CancellationToken,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn call_worker(
        &self,
        worker: &pb::WorkerInfo,
        frame: OutFrame,
        expected: MessageType,
        timeout: Duration,
    ) -> MasterResult<sluice_protocol::frame::Frame> {
        self.workers
            .call(&worker.push_addr(), frame, expected, timeout)
            .await
            .map_err(|source| MasterError::Worker {
                worker: worker.id.clone(),
                source,
            })
    }

    /// Asks workers to delete a shuffle (`Some`) or an application; failures are logged.
    fn destroy_on(
        self: &Arc<Self>,
        workers: Vec<pb::WorkerInfo>,
        app_id: &str,
        shuffle_id: Option<u32>,
    ) {
        let header = pb::DestroyHeader {
            app_id: app_id.to_string(),
            shuffle_id,
        };
        for worker in workers {
            let inner = self.clone();
            let frame = OutFrame::new(MessageType::Destroy, 0, &header);
            tokio::spawn(async move {
                let timeout = inner.config.worker_rpc_timeout;
                if let Err(e) = inner
                    .call_worker(&worker, frame, MessageType::Ack, timeout)
                    .await
                {
                    tracing::warn!(worker = %worker.id, error = %e, "delete on worker failed");
                }
            });
        }
    }
}

fn shuffle_key(key: Option<&pb::ShuffleKey>) -> Result<ShuffleKey, Status> {
    ShuffleKey::from_pb(key).map_err(|e| MasterError::InvalidRequest(e).into())
}

fn not_found(key: &ShuffleKey) -> Status {
    MasterError::NotFound(format!("shuffle {key} is not registered")).into()
}

impl MasterService {
    pub fn new(config: MasterConfig, shutdown: CancellationToken) -> MasterService {
        let workers = RpcPool::new(FrameLimits::default(), Duration::from_secs(5));
        MasterService {
            inner: Arc::new(Inner {
                config,
                state: Mutex::default(),
                workers,
                registering: tokio::sync::Mutex::new(()),
                shutdown,
            }),
        }
    }

    /// Starts the tasks that declare silent workers lost and expire silent applications.
    pub fn spawn_background(&self, shutdown: CancellationToken) {
        let inner = self.inner.clone();
        let token = shutdown.clone();
        tokio::spawn(async move {
            let period = (inner.config.worker_timeout / 4).max(Duration::from_millis(50));
            let mut ticker = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = ticker.tick() => expire_workers(&inner),
                    _ = token.cancelled() => return,
                }
            }
        });
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let period = (inner.config.app_timeout / 4).max(Duration::from_millis(50));
            let mut ticker = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = ticker.tick() => expire_apps(&inner),
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }

    /// Places every partition's copies (a primary, and with replication 2 a replica on another
    /// worker, on another host where there is one) and reserves them. A worker that fails to
    /// reserve is excluded and the partitions it was part of are placed again; reservations that
    /// succeeded stay (a primary reserved again takes its new replica).
    async fn place_and_reserve(
        &self,
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
                let state = self.inner.lock();
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
                placement::place_replicas(&weights, &primaries, |a, b| {
                    candidates[a].0.host == candidates[b].0.host
                })
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
                let inner = self.inner.clone();
                let frame = OutFrame::new(
                    MessageType::Reserve,
                    0,
                    &pb::ReserveHeader {
                        shuffle: Some(key.to_pb()),
                        locations,
                    },
                );
                reservations.spawn(async move {
                    let timeout = inner.config.worker_rpc_timeout;
                    let result = inner
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
}

/// Where partitions went: a worker table and, per target `(partition, epoch)`, the primary's
/// and (with replication 2) the replica's index into it.
#[derive(Debug)]
struct Placement {
    workers: Vec<pb::WorkerInfo>,
    copies: Vec<(u32, Option<u32>)>,
}

fn expire_workers(inner: &Inner) {
    let mut state = inner.lock();
    let timeout = inner.config.worker_timeout;
    for worker in state.workers.values_mut() {
        if worker.alive && worker.last_seen.elapsed() > timeout {
            worker.alive = false;
            tracing::warn!(worker = %worker.info.id, timeout = ?timeout, "worker lost: no heartbeat in time");
        }
    }
}

fn expire_apps(inner: &Arc<Inner>) {
    let timeout = inner.config.app_timeout;
    let (expired, workers) = {
        let mut state = inner.lock();
        let expired: Vec<Arc<str>> = state
            .apps
            .iter()
            .filter(|(_, seen)| seen.elapsed() > timeout)
            .map(|(app, _)| app.clone())
            .collect();
        for app in &expired {
            state.apps.remove(app);
            state.shuffles.retain(|key, _| key.app_id != *app);
        }
        let workers: Vec<pb::WorkerInfo> = state
            .workers
            .values()
            .filter(|w| w.alive)
            .map(|w| w.info.clone())
            .collect();
        (expired, workers)
    };
    for app in expired {
        tracing::info!(app = %app, timeout = ?timeout, "application expired, deleting its data");
        inner.destroy_on(workers.clone(), &app, None);
    }
}

/// Resolves once the master considers `worker` lost (or forgets it).
async fn lost(inner: &Inner, worker: &str) {
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    loop {
        poll.tick().await;
        let alive = inner.lock().workers.get(worker).is_some_and(|w| w.alive);
        if !alive {
            return;
        }
    }
}

/// Has every worker holding the shuffle commit its files, then publishes the results.
async fn commit_shuffle(inner: Arc<Inner>, key: ShuffleKey) {
    let started = Instant::now();
    let (workers, locations) = {
        let state = inner.lock();
        let Some(entry) = state.shuffles.get(&key) else {
            return;
        };
        (entry.workers.clone(), entry.locations.clone())
    };
    let mut by_worker: Vec<Vec<pb::LocationSpec>> = vec![Vec::new(); workers.len()];
    for (partition, copies) in locations.iter().enumerate() {
        for copy in copies {
            by_worker[copy.worker as usize].push(pb::LocationSpec {
                partition: partition as u32,
                epoch: copy.epoch,
                role: copy.role as i32,
                replica: None,
            });
        }
    }
    let mut calls = tokio::task::JoinSet::new();
    for (index, (worker, specs)) in workers.iter().cloned().zip(by_worker).enumerate() {
        if specs.is_empty() {
            continue;
        }
        let inner = inner.clone();
        let frame = OutFrame::new(
            MessageType::Commit,
            0,
            &pb::CommitHeader {
                shuffle: Some(key.to_pb()),
                locations: specs,
            },
        );
        calls.spawn(async move {
            let timeout = inner.config.commit_timeout;
            let call = inner.call_worker(&worker, frame, MessageType::Committed, timeout);
            // A worker declared lost while its commit is pending will not answer: stop waiting.
            let result = tokio::select! {
                result = call => result,
                _ = lost(&inner, &worker.id) => Err(MasterError::WorkerLost(worker.id.clone())),
            };
            let result = result.and_then(|frame| {
                frame
                    .decode_header::<pb::CommittedHeader>("committed")
                    .map_err(|source| MasterError::Worker {
                        worker: worker.id.clone(),
                        source,
                    })
            });
            (index as u32, result)
        });
    }
    // Every copy starts as failed; a worker's answer fills in what it committed.
    let mut results: Vec<Vec<pb::CommittedLocation>> = locations
        .iter()
        .map(|copies| {
            copies
                .iter()
                .map(|copy| pb::CommittedLocation {
                    epoch: copy.epoch,
                    role: copy.role as i32,
                    worker: copy.worker,
                    stats: None,
                    ok: false,
                    error: format!("worker {} did not commit", workers[copy.worker as usize].id),
                })
                .collect()
        })
        .collect();
    let mut failed = 0usize;
    while let Some(joined) = calls.join_next().await {
        let Ok((worker, result)) = joined else {
            continue;
        };
        match result {
            Ok(committed) => {
                for spec in committed.locations {
                    let Some(location) = spec.location else {
                        continue;
                    };
                    let slot = results
                        .get_mut(location.partition as usize)
                        .and_then(|copies| {
                            copies.iter_mut().find(|c| {
                                c.worker == worker
                                    && c.epoch == location.epoch
                                    && c.role == location.role
                            })
                        });
                    if let Some(slot) = slot {
                        slot.ok = spec.ok;
                        slot.stats = spec.stats;
                        slot.error = spec.error;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(shuffle = %key, error = %e, "commit on worker failed");
                for slot in results.iter_mut().flatten().filter(|c| c.worker == worker) {
                    slot.error = e.to_string();
                }
            }
        }
    }
    failed += results.iter().flatten().filter(|c| !c.ok).count();
    let state = inner.lock();
    if let Some(entry) = state.shuffles.get(&key) {
        entry
            .commit
            .send_replace(CommitState::Done(Arc::new(results)));
    }
    tracing::info!(shuffle = %key, failed_locations = failed, took = ?started.elapsed(), "shuffle committed");
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
        let mut state = self.inner.lock();
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
        let mut state = self.inner.lock();
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
        let config = &self.inner.config;
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
                    .inner
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
        let _registering = self.inner.registering.lock().await;
        {
            let mut state = self.inner.lock();
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
        let placement = self
            .place_and_reserve(&key, &targets, replication, HashSet::new())
            .await?;
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
        self.inner.lock().shuffles.insert(key, entry);
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
        let _placing = self.inner.registering.lock().await;
        let (replication, targets, excluded) = {
            let mut state = self.inner.lock();
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
            let placement = match self
                .place_and_reserve(&key, &targets, replication, excluded.clone())
                .await
            {
                Ok(placement) => placement,
                // No other worker left: anywhere live is better than failing the writer.
                Err(_) if !excluded.is_empty() => {
                    self.place_and_reserve(&key, &targets, replication, HashSet::new())
                        .await?
                }
                Err(e) => return Err(e.into()),
            };
            let mut state = self.inner.lock();
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
        let state = self.inner.lock();
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
            let mut state = self.inner.lock();
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
            tokio::spawn(commit_shuffle(self.inner.clone(), key));
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
            let mut state = self.inner.lock();
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
            _ = self.inner.shutdown.cancelled() => return Err(MasterError::ShuttingDown.into()),
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
        let state = self.inner.lock();
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
        let removed = self.inner.lock().shuffles.remove(&key);
        if let Some(entry) = removed {
            tracing::info!(shuffle = %key, "shuffle unregistered");
            self.inner
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
        self.inner.lock().touch_app(&app_id);
        Ok(Response::new(pb::AppHeartbeatResponse {}))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let state = self.inner.lock();
        let mut workers: Vec<pb::WorkerStatus> = state
            .workers
            .values()
            .map(|w| pb::WorkerStatus {
                worker: Some(w.info.clone()),
                alive: w.alive,
                memory_used_bytes: w.memory_used,
                active_partitions: w.active_partitions,
                disks: w.disks.clone(),
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
