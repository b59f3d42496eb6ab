//! Registration with the masters and the heartbeat loops.
//!
//! One loop per configured master endpoint: every master, not only the leader, keeps its own
//! view of the live workers, so a newly elected leader knows them at once. Each heartbeat also
//! lists the shuffles this worker holds, so the leader can delete orphans (shuffles it does not
//! know) after a grace period, the bytes pushed and fetched so far (the master shows throughput
//! from them), and whether the worker is decommissioning. A master's answer can tell the worker
//! to decommission (an operator asked the master).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::auth::{sign, Principal, PrincipalKeys, SignedRequest};
use sluice_protocol::master_channel::{master_client, parse_endpoints, MasterOptions};
use sluice_protocol::pb;
use sluice_protocol::pb::master_client::MasterClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::shared::Shared;

/// Shuffles listed in one heartbeat at most.
const MAX_REPORTED_SHUFFLES: usize = 100_000;

async fn disks(shared: &Shared) -> Vec<pb::DiskStatus> {
    let mut out = Vec::with_capacity(shared.store.disks().len());
    for disk in shared.store.disks() {
        out.push(disk.status().await);
    }
    out
}

async fn register(
    client: &mut MasterClient<Channel>,
    shared: &Shared,
    master: &str,
) -> Result<(), tonic::Status> {
    let request = pb::RegisterWorkerRequest {
        worker: Some(shared.info.clone()),
        disks: disks(shared).await,
        heartbeat_interval_ms: u64::try_from(shared.config.heartbeat_interval.as_millis())
            .unwrap_or(u64::MAX),
        state: state(shared) as i32,
    };
    client.register_worker(signed(shared, request)?).await?;
    tracing::info!(worker = %shared.info.id, node = %shared.info.node, zone = %shared.info.zone, master = %master, "registered with the master");
    Ok(())
}

async fn heartbeat(
    client: &mut MasterClient<Channel>,
    shared: &Arc<Shared>,
) -> Result<pb::WorkerHeartbeatResponse, tonic::Status> {
    let shuffles = shared
        .store
        .shuffle_keys(MAX_REPORTED_SHUFFLES)
        .iter()
        .map(|key| key.to_pb())
        .collect();
    let traffic = &shared.metrics.traffic;
    let request = pb::WorkerHeartbeatRequest {
        worker_id: shared.info.id.clone(),
        disks: disks(shared).await,
        memory_used_bytes: shared.store.memory().used(),
        memory_budget_bytes: shared.store.memory().budget(),
        active_partitions: shared.store.active_partitions(),
        state: state(shared) as i32,
        shuffles,
        pushed_bytes: traffic.pushed.load(Ordering::Relaxed),
        fetched_bytes: traffic.fetched.load(Ordering::Relaxed),
        push_latency_us: traffic.take_push_latency(),
        replica_latency: traffic.take_replica_latency(),
    };
    let response = client
        .worker_heartbeat(signed(shared, request)?)
        .await?
        .into_inner();
    if response.decommission {
        shared.decommission("the master");
    }
    if response.drain_deadline_ms > 0 {
        shared.start_drain(
            Duration::from_millis(response.drain_deadline_ms),
            "the master",
        );
    }
    Ok(response)
}

/// `message` signed as this worker when the cluster has a secret.
fn signed<T: SignedRequest>(
    shared: &Shared,
    message: T,
) -> Result<tonic::Request<T>, tonic::Status> {
    match &shared.keyring {
        Some(keyring) => sign(
            &Principal::Worker(shared.info.id.clone()),
            &PrincipalKeys::cluster(keyring.signing()),
            message,
        )
        .map_err(|e| tonic::Status::unauthenticated(e.to_string())),
        None => Ok(tonic::Request::new(message)),
    }
}

/// What the worker tells the masters about itself: active, or decommissioning once told to go.
fn state(shared: &Shared) -> pb::WorkerState {
    match shared.is_decommissioning() {
        true => pb::WorkerState::Decommissioning,
        false => pb::WorkerState::Active,
    }
}

/// Registers with every master, then heartbeats each every `heartbeat_interval` until
/// shutdown. `shared.registered` becomes true once the first master accepts the registration.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let masters = match parse_endpoints(&shared.config.master) {
        Ok(masters) => masters,
        Err(e) => {
            tracing::error!(error = %e, "invalid master endpoints");
            return;
        }
    };
    let mut loops = tokio::task::JoinSet::new();
    for master in masters {
        loops.spawn(run_with(shared.clone(), master, shutdown.clone()));
    }
    while loops.join_next().await.is_some() {}
}

/// Registers with the master at `master`, then heartbeats it. A master that cannot be reached,
/// that refuses the registration (the id is held by a live worker elsewhere) or that asks for a
/// new registration is retried forever (logged once per failure streak).
async fn run_with(shared: Arc<Shared>, master: String, shutdown: CancellationToken) {
    let options = MasterOptions {
        connect_timeout: Duration::from_secs(3),
        tls: shared.tls_client.clone(),
        ..MasterOptions::default()
    };
    let mut client = match master_client(&master, &options) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(master = %master, error = %e, "invalid master address");
            return;
        }
    };
    let mut registered = false;
    // The code of the current failure streak's error: each streak, and each change of what
    // fails, is logged once.
    let mut failing: Option<tonic::Code> = None;
    // Heartbeats start every interval, however long the last one took to answer (a slow link
    // to the master must not make a live worker look stale), never two at once.
    let mut ticks = tokio::time::interval(shared.config.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        let result = if registered {
            heartbeat(&mut client, &shared)
                .await
                .map(|response| registered = !response.reregister)
        } else {
            register(&mut client, &shared, &master).await.map(|()| {
                registered = true;
                shared.registered.send_replace(true);
            })
        };
        match result {
            Ok(()) => {
                if failing.take().is_some() {
                    tracing::info!(master = %master, "master reachable again");
                }
            }
            Err(status) => {
                if failing != Some(status.code()) {
                    if status.code() == tonic::Code::InvalidArgument {
                        tracing::error!(worker = %shared.info.id, master = %master, error = %status.message(), "the master refused the registration, retrying");
                    } else {
                        tracing::warn!(master = %master, error = %status.message(), "heartbeat failed");
                    }
                }
                failing = Some(status.code());
                registered = false;
            }
        }
        // Re-register at once when the master asked for it.
        if !registered && failing.is_none() {
            continue;
        }
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
