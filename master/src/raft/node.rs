//! Starting a master's Raft node: its id and address from the configuration, its log and
//! state machine on `data_dir`, and the first membership of a fresh cluster.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, Raft, SnapshotPolicy};

use sluice_protocol::rpc::Credentials;

use super::{LogStore, Network, NodeId, StateMachineStore, TypeConfig};
use crate::config::MasterConfig;
use crate::error::{MasterError, MasterResult};
use crate::state::State;

/// Log entries kept after a snapshot, so a follower a little behind catches up from the log
/// rather than by a snapshot.
const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 1_000;
/// How long a fresh master waits for each peer's answer when it looks for a running cluster.
const PEER_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// This master's id: `id`, else the trailing number of the host name when it names one of
/// `peers` (a StatefulSet's `sluice-master-2`), else the position in `peers` of `advertise`
/// (`advertise` when set, else the address it listens on).
pub fn node_id(config: &MasterConfig, listening: std::net::SocketAddr) -> MasterResult<NodeId> {
    let advertise = match config.advertise.as_str() {
        "" => listening.to_string(),
        set => set.to_string(),
    };
    if let Some(id) = config.id {
        return Ok(id);
    }
    if config.peers.is_empty() {
        return Ok(0);
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let ordinal = host
        .trim()
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .filter(|n| *n < config.peers.len() as u64);
    if let Some(id) = ordinal {
        return Ok(id);
    }
    match config.peers.iter().position(|p| *p == advertise) {
        Some(i) => Ok(i as u64),
        None => Err(MasterError::Config(format!(
            "id: not set, the host name {:?} ends in no peer's number and advertise {advertise:?} \
             is not in peers {:?}: set id",
            host.trim(),
            config.peers
        ))),
    }
}

/// The address this master is reached at: `advertise`, else its entry in `peers`, else the
/// address it listens on.
pub fn advertise(config: &MasterConfig, id: NodeId, listening: std::net::SocketAddr) -> String {
    if !config.advertise.is_empty() {
        return config.advertise.clone();
    }
    match config.peers.get(id as usize) {
        Some(peer) => peer.clone(),
        None => listening.to_string(),
    }
}

/// The membership a fresh cluster starts with: every peer, or this master alone.
fn first_members(config: &MasterConfig, id: NodeId, addr: &str) -> BTreeMap<NodeId, BasicNode> {
    if config.peers.is_empty() {
        return BTreeMap::from([(id, BasicNode::new(addr))]);
    }
    config
        .peers
        .iter()
        .enumerate()
        .map(|(i, peer)| (i as u64, BasicNode::new(peer)))
        .collect()
}

/// Opens the log and the snapshots in `data_dir`, restores `state` from them, and starts the
/// node. A fresh node (empty log) proposes the first membership (every master of a fresh
/// cluster does so with the same one, which Raft allows), unless a peer answers as a member of
/// a running cluster: then it waits for the leader to add it.
pub async fn start(
    config: &MasterConfig,
    id: NodeId,
    addr: &str,
    state: Arc<Mutex<State>>,
    credentials: Option<Credentials>,
) -> MasterResult<Raft<TypeConfig>> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| {
        MasterError::Config(format!("data_dir {}: cannot create: {e}", dir.display()))
    })?;
    let storage = |e: &dyn std::fmt::Display| {
        MasterError::Raft(format!("opening the log in {}: {e}", dir.display()))
    };
    let log = LogStore::open(dir).map_err(|e| storage(&e))?;
    let machine = StateMachineStore::open(dir, state).map_err(|e| storage(&e))?;
    let millis = |d: std::time::Duration| d.as_millis() as u64;
    let raft_config = openraft::Config {
        cluster_name: "sluice-master".into(),
        heartbeat_interval: millis(config.raft_heartbeat_interval),
        election_timeout_min: millis(config.election_timeout),
        election_timeout_max: millis(config.election_timeout) * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        max_in_snapshot_log_to_keep: LOGS_KEPT_AFTER_SNAPSHOT,
        ..Default::default()
    }
    .validate()
    .map_err(|e| MasterError::Config(format!("raft timings: {e}")))?;
    let tls = crate::tls_client(config)?;
    let network = Network::new(id)
        .with_tls(tls.clone())
        .with_credentials(credentials.clone());
    let raft = Raft::new(id, Arc::new(raft_config), network, log, machine)
        .await
        .map_err(|e| MasterError::Raft(e.to_string()))?;
    let fresh = raft.metrics().borrow().last_log_index.is_none();
    if fresh
        && running_peer(config, addr, tls, credentials.as_ref())
            .await
            .is_some()
    {
        // A master replacing one of a running cluster: it must not found a cluster of its own;
        // the leader adds it (`sluice admin masters add`).
        tracing::info!(
            id,
            addr,
            "fresh master of a running cluster: waiting to be added"
        );
        return Ok(raft);
    }
    match raft.initialize(first_members(config, id, addr)).await {
        Ok(()) => tracing::info!(id, peers = ?config.peers, "fresh master cluster initialized"),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
        Err(e) => return Err(MasterError::Raft(format!("initializing: {e}"))),
    }
    Ok(raft)
}

/// A peer (other than `addr`) that answers as a member of a cluster with voters, if any.
async fn running_peer(
    config: &MasterConfig,
    addr: &str,
    tls: Option<sluice_protocol::tls::TlsClient>,
    credentials: Option<&Credentials>,
) -> Option<String> {
    for peer in config.peers.iter().filter(|p| *p != addr) {
        let options = sluice_protocol::MasterOptions {
            connect_timeout: PEER_PROBE_TIMEOUT,
            tls: tls.clone(),
            ..Default::default()
        };
        let Ok(mut client) = sluice_protocol::master_channel::master_client(peer, &options) else {
            continue;
        };
        let request = sluice_protocol::pb::MasterStatusRequest {};
        let request = match credentials {
            Some(c) => match sluice_protocol::auth::sign(&c.principal, &c.keys, request) {
                Ok(request) => request,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot sign a status request");
                    continue;
                }
            },
            None => tonic::Request::new(request),
        };
        let status = tokio::time::timeout(PEER_PROBE_TIMEOUT, client.master_status(request)).await;
        if let Ok(Ok(status)) = status {
            if !status.into_inner().voters.is_empty() {
                return Some(peer.clone());
            }
        }
    }
    None
}
