//! Registration with the master and the heartbeat loop.

use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::pb;
use sluice_protocol::pb::master_client::MasterClient;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::shared::Shared;

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
) -> Result<(), tonic::Status> {
    client
        .register_worker(pb::RegisterWorkerRequest {
            worker: Some(shared.info.clone()),
            disks: disks(shared).await,
            heartbeat_interval_ms: u64::try_from(shared.config.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
        })
        .await?;
    tracing::info!(worker = %shared.info.id, node = %shared.info.node, zone = %shared.info.zone, master = %shared.config.master, "registered with the master");
    Ok(())
}

/// Registers, then heartbeats every `heartbeat_interval` until shutdown. A master that cannot
/// be reached, or that refuses the registration (the id is held by a live worker elsewhere), is
/// retried forever (logged once per failure streak).
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) {
    let endpoint = match Channel::from_shared(format!("http://{}", shared.config.master)) {
        Ok(endpoint) => endpoint.connect_timeout(Duration::from_secs(3)),
        Err(e) => {
            tracing::error!(master = %shared.config.master, error = %e, "invalid master address");
            return;
        }
    };
    let mut client = MasterClient::new(endpoint.connect_lazy());
    let mut registered = false;
    // The code of the current failure streak's error: each streak, and each change of what
    // fails, is logged once.
    let mut failing: Option<tonic::Code> = None;
    loop {
        let result = if registered {
            client
                .worker_heartbeat(pb::WorkerHeartbeatRequest {
                    worker_id: shared.info.id.clone(),
                    disks: disks(&shared).await,
                    memory_used_bytes: shared.store.memory().used(),
                    memory_budget_bytes: shared.store.memory().budget(),
                    active_partitions: shared.store.active_partitions(),
                    state: pb::WorkerState::Active as i32,
                    shuffles: Vec::new(),
                })
                .await
                .map(|r| registered = !r.into_inner().reregister)
        } else {
            register(&mut client, &shared).await.map(|()| {
                registered = true;
                shared.registered.send_replace(true);
            })
        };
        match result {
            Ok(()) => {
                if failing.take().is_some() {
                    tracing::info!(master = %shared.config.master, "master reachable again");
                }
            }
            Err(status) => {
                if failing != Some(status.code()) {
                    if status.code() == tonic::Code::InvalidArgument {
                        tracing::error!(worker = %shared.info.id, master = %shared.config.master, error = %status.message(), "the master refused the registration, retrying");
                    } else {
                        tracing::warn!(master = %shared.config.master, error = %status.message(), "heartbeat failed");
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
            _ = tokio::time::sleep(shared.config.heartbeat_interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
