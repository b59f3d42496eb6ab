//! The `Master` gRPC service: checks each request and hands it to the room that does the work
//! ([`crate::reserve`] for placements, [`crate::commit`] for commits, [`crate::state`] for the
//! registry).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_protocol::pb;
use sluice_protocol::pb::master_server::Master;
use sluice_protocol::ShuffleKey;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::auth::Need;
use crate::config::MasterConfig;
use crate::core::Core;
use crate::error::MasterError;
use crate::reserve;
use crate::state::{self, not_registered, CommitState, MapResult, Shape, WorkerEntry};

use pb::master_command::Command as Cmd;

/// Shortest heartbeat interval a worker is believed to keep.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);
/// Longest worker id, host, node or zone label.
const MAX_LABEL: usize = 253;
/// Longest a layout request waits for the commit before answering "not yet".
const MAX_LAYOUT_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct MasterService {
    core: Arc<Core>,
}

fn shuffle_key(key: Option<&pb::ShuffleKey>) -> Result<ShuffleKey, Status> {
    ShuffleKey::from_pb(key).map_err(|e| MasterError::InvalidRequest(e).into())
}

impl MasterService {
    /// Starts the master's Raft node (restoring its state from `data_dir`) and the service.
    pub async fn start(
        config: MasterConfig,
        listening: std::net::SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<MasterService, MasterError> {
        let core = Arc::new(Core::start(config, listening, shutdown).await?);
        crate::metrics::collect_on_scrape(&core);
        Ok(MasterService { core })
    }

    /// Starts the tasks that declare silent workers lost, expire silent applications, and
    /// resume the commits a former leader left running.
    pub fn spawn_background(&self, shutdown: CancellationToken) {
        crate::background::spawn(&self.core, shutdown);
    }

    /// The routes of the admin port: status page, metrics, health, JSON API.
    pub fn admin_router(&self) -> axum::Router {
        crate::admin::router(self.core.clone())
    }

    /// A map's end, recorded in the log unless it ended already.
    async fn map_end(
        &self,
        request: pb::MapperEndRequest,
    ) -> Result<pb::MapperEndResponse, Status> {
        let key = shuffle_key(request.shuffle.as_ref())?;
        {
            let mut state = self.core.lock();
            state.touch_app(&key.app_id);
            let entry = state
                .shuffles
                .get(&key)
                .ok_or_else(|| not_registered(&key))?;
            if request.map_id >= entry.shape.num_maps {
                return Err(MasterError::InvalidRequest(format!(
                    "map {} of shuffle {key} with {} maps",
                    request.map_id, entry.shape.num_maps
                ))
                .into());
            }
            for stats in &request.partitions {
                entry.check_partition(&key, stats.partition)?;
            }
            // A map that ended already is answered from the registry, not logged again.
            if let Some(winner) = entry.maps.get(&request.map_id) {
                return Ok(answer_map_end(&request, winner));
            }
        }
        let command = state::command(Cmd::MapEnded(pb::MapEnded {
            shuffle: Some(key.to_pb()),
            map_id: request.map_id,
            attempt: request.attempt,
            partitions: request.partitions.clone(),
        }));
        let reply = self.core.propose(command).await?;
        if !reply.error.is_empty() {
            return Err(not_registered(&key).into());
        }
        if reply.complete {
            crate::commit::start(&self.core, key.clone());
        }
        let state = self.core.lock();
        let winner = state
            .shuffles
            .get(&key)
            .and_then(|entry| entry.maps.get(&request.map_id))
            .ok_or_else(|| not_registered(&key))?;
        Ok(answer_map_end(&request, winner))
    }

    /// The Raft service the other masters call.
    pub fn raft_server(&self) -> crate::raft::RaftServer {
        crate::raft::RaftServer::new(self.core.raft.clone(), self.core.verifier.clone())
    }

    /// Stops the Raft node.
    pub async fn stop(&self) {
        if let Err(e) = self.core.raft.shutdown().await {
            tracing::warn!(error = %e, "raft node did not stop cleanly");
        }
    }
}

#[tonic::async_trait]
impl Master for MasterService {
    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<Response<pb::RegisterWorkerResponse>, Status> {
        let id = request.get_ref().worker.as_ref().map(|w| w.id.clone());
        self.core
            .authorize(&request, Need::Worker(id.as_deref().unwrap_or_default()))?;
        let request = request.into_inner();
        let state = request.state();
        let info = request
            .worker
            .ok_or_else(|| MasterError::InvalidRequest("missing worker info".into()))?;
        if info.id.is_empty()
            || info.push_port == 0
            || info.fetch_port == 0
            || info.push_port > 65535
            || info.fetch_port > 65535
            || info.admin_port > 65535
        {
            return Err(
                MasterError::InvalidRequest(format!("invalid worker info {info:?}")).into(),
            );
        }
        let labels = [&info.id, &info.host, &info.node, &info.zone];
        if labels.iter().any(|l| l.len() > MAX_LABEL) {
            return Err(MasterError::InvalidRequest(format!(
                "worker id, host, node and zone must be at most {MAX_LABEL} characters"
            ))
            .into());
        }
        let interval = match request.heartbeat_interval_ms {
            0 => self.core.config.worker_timeout / 4,
            ms => Duration::from_millis(ms)
                .clamp(MIN_HEARTBEAT_INTERVAL, self.core.config.worker_timeout),
        };
        let (push, fetch) = (info.push_addr(), info.fetch_addr());
        let (id, node, zone) = (info.id.clone(), info.node.clone(), info.zone.clone());
        let refused = |e: &MasterError| tracing::warn!(worker = %id, push = %push, error = %e, "worker registration refused");
        // A worker back at new addresses: the shuffles that list it point at them before the
        // worker shows as registered there, so nobody who saw it registered reads a layout
        // with its old addresses.
        let (_, moving) = self.core.lock().admits(&info).inspect_err(refused)?;
        if moving && self.core.leader_check().is_ok() {
            let command = state::command(Cmd::WorkerMoved(pb::WorkerMoved {
                worker: Some(info.clone()),
            }));
            self.core.propose(command).await?;
        }
        let (returning, moved) = self
            .core
            .lock()
            .register_worker(info.clone(), request.disks, interval, state)
            .inspect_err(refused)?;
        tracing::info!(worker = %id, push = %push, fetch = %fetch, node = %node, zone = %zone, heartbeat_interval = ?interval, returning, "worker registered");
        let again = if returning { " again" } else { "" };
        let leaving = match state {
            pb::WorkerState::Decommissioning => ", decommissioning",
            _ => "",
        };
        self.core.events.worker(
            crate::events::Kind::WorkerRegistered,
            &id,
            format!("worker {id} registered{again} at {push}{leaving}"),
        );
        // Every master hears every worker; the leader records a move for all of them (again,
        // should a shuffle have listed the old addresses meanwhile).
        if moved && self.core.leader_check().is_ok() {
            let command = state::command(Cmd::WorkerMoved(pb::WorkerMoved { worker: Some(info) }));
            self.core.propose(command).await?;
        }
        Ok(Response::new(pb::RegisterWorkerResponse {}))
    }

    async fn worker_heartbeat(
        &self,
        request: Request<pb::WorkerHeartbeatRequest>,
    ) -> Result<Response<pb::WorkerHeartbeatResponse>, Status> {
        self.core
            .authorize(&request, Need::Worker(&request.get_ref().worker_id))?;
        let request = request.into_inner();
        let leads = self.core.leader_check().is_ok();
        let (info, orphans, decommission, started_leaving) = {
            let mut state = self.core.lock();
            let (info, decommission, started_leaving) =
                match state.workers.get_mut(&request.worker_id) {
                    Some(worker) if worker.alive => {
                        let was_leaving = worker.decommissioning();
                        let now = Instant::now();
                        worker.state = request.state();
                        worker.last_seen = now;
                        worker.disks = request.disks;
                        worker.note_latency(now, &request.replica_latency);
                        worker.memory_used = request.memory_used_bytes;
                        worker.memory_budget = request.memory_budget_bytes;
                        worker.active_partitions = request.active_partitions;
                        worker.push_latency_us = request.push_latency_us;

                        worker
                            .traffic
                            .sample(request.pushed_bytes, request.fetched_bytes, now);
                        // Told until it says it heard (a drain: until it asks for its plan).
                        let drain = worker
                            .drain_deadline
                            .map(|at| at.saturating_duration_since(now).as_millis().max(1) as u64);
                        let decommission = (worker.decommission_requested
                            && worker.state != pb::WorkerState::Decommissioning)
                            || drain.is_some();
                        (
                            worker.info.clone(),
                            (decommission, drain.unwrap_or(0)),
                            !was_leaving && worker.decommissioning(),
                        )
                    }
                    _ => {
                        return Ok(Response::new(pb::WorkerHeartbeatResponse {
                            reregister: true,
                            ..Default::default()
                        }))
                    }
                };
            let held = request
                .shuffles
                .iter()
                .filter_map(|k| ShuffleKey::from_pb(Some(k)).ok());
            // Only the leader's registry is sure to hold every shuffle committed so far.
            let orphans = match leads {
                true => state.orphans_of(&info.id, held, self.core.config.orphan_grace),
                false => Vec::new(),
            };
            (info, orphans, decommission, started_leaving)
        };
        if started_leaving {
            tracing::warn!(worker = %info.id, "worker decommissioning: no new partitions for it");
            self.core.events.worker(
                crate::events::Kind::WorkerDecommissioning,
                &info.id,
                format!("worker {} reports it is decommissioning", info.id),
            );
        }
        for key in orphans {
            tracing::warn!(worker = %info.id, shuffle = %key, grace = ?self.core.config.orphan_grace, "deleting a shuffle no master knows of");
            self.core
                .destroy_on(vec![info.clone()], &key.app_id, Some(key.shuffle_id));
        }
        Ok(Response::new(pb::WorkerHeartbeatResponse {
            reregister: false,
            decommission: decommission.0,
            drain_deadline_ms: decommission.1,
        }))
    }

    async fn register_shuffle(
        &self,
        request: Request<pb::RegisterShuffleRequest>,
    ) -> Result<Response<pb::RegisterShuffleResponse>, Status> {
        self.core.leader_check()?;
        let started = Instant::now();
        let key = shuffle_key(request.get_ref().shuffle.as_ref())?;
        self.core.authorize(&request, Need::App(&key.app_id))?;
        let _slot = self.core.app_slot(&key.app_id)?;
        let request = request.into_inner();
        if request.num_partitions == 0 || request.num_maps == 0 {
            return Err(MasterError::InvalidRequest(format!(
                "a shuffle needs at least one map and one partition, got {} maps and {} partitions",
                request.num_maps, request.num_partitions
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
        let shape = Shape {
            num_maps: request.num_maps,
            num_partitions: request.num_partitions,
            replication,
        };
        let locations = reserve::register(&self.core, &key, shape).await?;
        self.core.metrics.registered(started);
        Ok(Response::new(pb::RegisterShuffleResponse {
            locations: Some(locations),
        }))
    }

    async fn revive(
        &self,
        request: Request<pb::ReviveRequest>,
    ) -> Result<Response<pb::ReviveResponse>, Status> {
        self.core.leader_check()?;
        let started = Instant::now();
        let key = shuffle_key(request.get_ref().shuffle.as_ref())?;
        self.core.authorize(&request, Need::App(&key.app_id))?;
        let _slot = self.core.app_slot(&key.app_id)?;
        let request = request.into_inner();
        let locations = reserve::revive(&self.core, &key, &request.failed, &request.reason).await?;
        self.core.metrics.revived(started);
        Ok(Response::new(pb::ReviveResponse { locations }))
    }

    async fn mapper_end(
        &self,
        request: Request<pb::MapperEndRequest>,
    ) -> Result<Response<pb::MapperEndResponse>, Status> {
        self.core.leader_check()?;
        let key = shuffle_key(request.get_ref().shuffle.as_ref())?;
        self.core.authorize(&request, Need::App(&key.app_id))?;
        let _slot = self.core.app_slot(&key.app_id)?;
        let answer = self.map_end(request.into_inner()).await?;
        self.core.metrics.map_ends.increment(1);
        Ok(Response::new(answer))
    }

    async fn get_shuffle_layout(
        &self,
        request: Request<pb::GetShuffleLayoutRequest>,
    ) -> Result<Response<pb::GetShuffleLayoutResponse>, Status> {
        self.core.leader_check()?;
        let key = shuffle_key(request.get_ref().shuffle.as_ref())?;
        self.core.authorize(&request, Need::App(&key.app_id))?;
        let request = request.into_inner();
        let mut commit = {
            let mut state = self.core.lock();
            state.touch_app(&key.app_id);
            let entry = state
                .shuffles
                .get(&key)
                .ok_or_else(|| not_registered(&key))?;
            if request.start_partition >= request.end_partition
                || request.end_partition > entry.shape.num_partitions
            {
                return Err(MasterError::InvalidRequest(format!(
                    "partition range [{}, {}) of shuffle {key} with {} partitions",
                    request.start_partition, request.end_partition, entry.shape.num_partitions
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
                CommitState::Waiting => return Err(not_registered(&key).into()),
            },
            Ok(Err(_)) => return Err(not_registered(&key).into()),
            Err(_) => {
                return Ok(Response::new(pb::GetShuffleLayoutResponse {
                    committed: false,
                    ..Default::default()
                }))
            }
        };
        let state = self.core.lock();
        let entry = state
            .shuffles
            .get(&key)
            .ok_or_else(|| not_registered(&key))?;
        let layout = entry.layout(
            &key,
            &committed,
            request.start_partition,
            request.end_partition,
            self.core.config.message_limit(),
        )?;
        Ok(Response::new(layout))
    }

    async fn unregister_shuffle(
        &self,
        request: Request<pb::UnregisterShuffleRequest>,
    ) -> Result<Response<pb::UnregisterShuffleResponse>, Status> {
        self.core.leader_check()?;
        let key = shuffle_key(request.get_ref().shuffle.as_ref())?;
        self.core.authorize(&request, Need::App(&key.app_id))?;
        let _slot = self.core.app_slot(&key.app_id)?;
        let workers = self
            .core
            .lock()
            .shuffles
            .get(&key)
            .map(|e| e.workers.clone());
        if let Some(workers) = workers {
            let command = state::command(Cmd::ShuffleRemoved(pb::ShuffleRemoved {
                shuffle: Some(key.to_pb()),
            }));
            self.core.propose(command).await?;
            tracing::info!(shuffle = %key, "shuffle unregistered");
            self.core
                .destroy_on(workers, &key.app_id, Some(key.shuffle_id));
        }
        Ok(Response::new(pb::UnregisterShuffleResponse {}))
    }

    async fn app_heartbeat(
        &self,
        request: Request<pb::AppHeartbeatRequest>,
    ) -> Result<Response<pb::AppHeartbeatResponse>, Status> {
        // The leader expires applications: it is the one that must hear them.
        self.core.leader_check()?;
        self.core
            .authorize(&request, Need::App(&request.get_ref().app_id))?;
        let app_id = request.into_inner().app_id;
        sluice_protocol::ids::validate_app_id(&app_id).map_err(MasterError::InvalidRequest)?;
        self.core.lock().touch_app(&app_id);
        Ok(Response::new(pb::AppHeartbeatResponse {}))
    }

    async fn master_status(
        &self,
        request: Request<pb::MasterStatusRequest>,
    ) -> Result<Response<pb::MasterStatusResponse>, Status> {
        self.core.authorize(&request, Need::Any)?;
        Ok(Response::new(crate::membership::status(&self.core)))
    }

    async fn change_masters(
        &self,
        request: Request<pb::ChangeMastersRequest>,
    ) -> Result<Response<pb::MasterStatusResponse>, Status> {
        self.core.leader_check()?;
        self.core.authorize(&request, Need::Cluster)?;
        crate::membership::change(&self.core, request.into_inner()).await?;
        Ok(Response::new(crate::membership::status(&self.core)))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        // The leader's view: the workers it places on, the shuffles it serves.
        self.core.leader_check()?;
        self.core.authorize(&request, Need::Any)?;
        let state = self.core.lock();
        let now = Instant::now();
        let live: Vec<&WorkerEntry> = state.workers.values().filter(|w| w.alive).collect();
        let slow = crate::state::slow_worker_ids(&live);
        let mut workers: Vec<pb::WorkerStatus> = state
            .workers
            .values()
            .map(|w| pb::WorkerStatus {
                worker: Some(w.info.clone()),
                alive: w.alive,
                memory_used_bytes: w.memory_used,
                active_partitions: w.active_partitions,
                disks: w.disks.clone(),
                heartbeat_age_ms: now.saturating_duration_since(w.last_seen).as_millis() as u64,
                slow: slow.contains(w.info.id.as_str()),
                push_latency_us: w.push_latency_us,
                replica_latency_us: crate::state::replica_latency_us(w, &live),
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

    async fn drain_plan(
        &self,
        request: Request<pb::DrainPlanRequest>,
    ) -> Result<Response<pb::DrainPlanResponse>, Status> {
        self.core.leader_check()?;
        self.core
            .authorize(&request, Need::Worker(&request.get_ref().worker_id))?;
        let plan = crate::drain::plan(&self.core, &request.get_ref().worker_id)?;
        Ok(Response::new(plan))
    }

    async fn move_copies(
        &self,
        request: Request<pb::MoveCopiesRequest>,
    ) -> Result<Response<pb::MoveCopiesResponse>, Status> {
        self.core.leader_check()?;
        self.core
            .authorize(&request, Need::Worker(&request.get_ref().worker_id))?;
        crate::drain::move_copies(&self.core, request.into_inner()).await?;
        Ok(Response::new(pb::MoveCopiesResponse {}))
    }

    async fn register_application(
        &self,
        request: Request<pb::RegisterApplicationRequest>,
    ) -> Result<Response<pb::RegisterApplicationResponse>, Status> {
        self.core.leader_check()?;
        let request = request.into_inner();
        crate::apps::register(&self.core, request)
            .await
            .map(Response::new)
    }
}

/// The answer to a map's end: the attempt that counts and, when another one won, its figures.
fn answer_map_end(request: &pb::MapperEndRequest, winner: &MapResult) -> pb::MapperEndResponse {
    if winner.attempt != request.attempt {
        tracing::debug!(
            map = request.map_id,
            attempt = request.attempt,
            winning_attempt = winner.attempt,
            "late map attempt ignored"
        );
    }
    pb::MapperEndResponse {
        winning_attempt: winner.attempt,
        winner_partitions: match winner.attempt == request.attempt {
            true => Vec::new(),
            false => winner.partitions.clone(),
        },
    }
}
