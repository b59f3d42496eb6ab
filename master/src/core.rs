//! The master's core: its configuration, its state, and its client for the calls it makes into
//! workers over their push port (`Reserve`, `Commit`, `Destroy`).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, ServerState};
use prost::Message;
use sluice_protocol::auth::{Keyring, Principal};
use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::{Frame, FrameLimits, MessageType};
use sluice_protocol::rpc::{Credentials, RpcPool};
use sluice_protocol::{pb, ProtocolError, ShuffleKey};
use tokio_util::sync::CancellationToken;

use crate::config::MasterConfig;
use crate::error::{MasterError, MasterResult};
use crate::metrics::MasterMetrics;
use crate::raft::{Command, NodeId, TypeConfig};
use crate::state::State;

/// Most header bytes of one paged `Reserve` or `Commit` frame (the workers accept 16 MiB).
pub const PAGE_BYTES: usize = 4 << 20;

pub(crate) struct Core {
    pub config: MasterConfig,
    /// The state; its replicated half changes only by commands applied from the Raft log.
    state: Arc<Mutex<State>>,
    pub raft: Raft<TypeConfig>,
    /// This master's Raft id and address.
    pub id: NodeId,
    pub addr: String,
    /// When this master started: workers have `worker_timeout` from then to register.
    pub started: Instant,
    /// The term in which this master leads with a state holding every earlier change
    /// (`u64::MAX`: none yet).
    ready_term: std::sync::atomic::AtomicU64,
    workers: RpcPool,
    /// Cancelled when the master stops: long polls answer at once.
    pub shutdown: CancellationToken,
    /// This master's metrics registry (served on its admin port) and its handles.
    pub telemetry: Arc<sluice_ops::Telemetry>,
    pub metrics: MasterMetrics,
    /// Recent events for operators (status page, `/api/events`).
    pub events: crate::events::Events,
    /// Checks signed calls; `None`: the master runs without a cluster secret.
    pub verifier: Option<sluice_protocol::auth::Verifier>,
    /// Each application's requests in progress (`max_inflight_requests_per_app`).
    pub inflight: crate::auth::Inflight,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Starts the Raft node on `data_dir` (restoring every shuffle it holds) and the core
    /// around it.
    pub async fn start(
        config: MasterConfig,
        listening: std::net::SocketAddr,
        shutdown: CancellationToken,
    ) -> MasterResult<Core> {
        let id = crate::raft::node::node_id(&config, listening)?;
        let addr = crate::raft::node::advertise(&config, id, listening);
        let keyring = if config.cluster_secret_file.is_empty() {
            None
        } else {
            let path = std::path::Path::new(&config.cluster_secret_file);
            let keyring = Keyring::load(path)
                .map_err(|e| MasterError::Config(format!("cluster_secret_file: {e}")))?;
            Some(Arc::new(keyring))
        };
        if keyring.is_some() && !config.tls_grpc {
            tracing::warn!(
                "cluster_secret_file is set but tls_grpc is off: calls are authenticated, yet \
                 each application's token crosses the network in clear when it registers; turn \
                 on TLS where traffic leaves a trusted network"
            );
        }
        let verifier = keyring
            .clone()
            .map(|keyring| sluice_protocol::auth::Verifier::new(keyring, config.auth_clock_skew));
        let credentials = keyring
            .as_deref()
            .map(|keyring| Credentials::cluster(Principal::Master(id.to_string()), keyring));
        let state = Arc::new(Mutex::new(State::default()));
        let raft = crate::raft::node::start(&config, id, &addr, state.clone(), credentials.clone())
            .await?;
        let telemetry = sluice_ops::Telemetry::new(config.metrics, &[("master", &id.to_string())]);
        let metrics = MasterMetrics::new(&telemetry);
        let tls = crate::tls_client(&config)?;
        Ok(Core {
            telemetry,
            metrics,
            config,
            state,
            raft,
            id,
            addr,
            started: Instant::now(),
            ready_term: std::sync::atomic::AtomicU64::new(u64::MAX),
            workers: RpcPool::new(FrameLimits::default(), Duration::from_secs(5))
                .with_credentials(credentials)
                .with_tls(tls),
            shutdown,
            events: crate::events::Events::default(),
            verifier,
            inflight: crate::auth::Inflight::default(),
        })
    }

    /// The leader's address, when one is known.
    pub fn leader_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Whether this master passed its read barrier as leader of `term`.
    pub fn ready_in(&self, term: u64) -> bool {
        self.ready_term.load(std::sync::atomic::Ordering::Acquire) == term
    }

    /// Marks this master as serving leader of `term` (its state holds every earlier change).
    pub fn set_ready(&self, term: u64) {
        self.ready_term
            .store(term, std::sync::atomic::Ordering::Release);
    }

    /// Fails with [`MasterError::NotLeader`] unless this master leads and passed the read
    /// barrier of its term (its state holds every change committed before; see
    /// `background::lead`).
    pub fn leader_check(&self) -> MasterResult<()> {
        let metrics = self.raft.metrics();
        let ready = {
            let m = metrics.borrow();
            m.state == ServerState::Leader
                && m.current_leader == Some(self.id)
                && self.ready_in(m.current_term)
        };
        if ready {
            return Ok(());
        }
        Err(MasterError::NotLeader {
            id: self.id,
            leader: self.leader_addr().filter(|l| *l != self.addr),
        })
    }

    /// Appends `command` to the replicated log and waits until this master applied it: the
    /// answer of applying it. Fails on a master that is not (or no longer) the leader.
    pub async fn propose(&self, command: pb::MasterCommand) -> MasterResult<pb::MasterReply> {
        match self.raft.client_write(Command(command)).await {
            Ok(written) => Ok(written.data.0),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                Err(MasterError::NotLeader {
                    id: self.id,
                    leader: forward.leader_node.map(|n| n.addr),
                })
            }
            Err(e) => Err(MasterError::Raft(e.to_string())),
        }
    }

    /// The state. Nothing awaits while holding it.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `frame` to `worker` and waits up to `timeout` for an answer of type `expected`. The
    /// whole call is bounded, connecting and queueing included: a worker that accepts
    /// connections and never reads (a stopped process) costs `timeout`, no more.
    pub async fn call_worker(
        &self,
        worker: &pb::WorkerInfo,
        frame: OutFrame,
        expected: MessageType,
        timeout: Duration,
    ) -> MasterResult<Frame> {
        let addr = worker.push_addr();
        let call = self.workers.call(&addr, frame, expected, timeout);
        let answer = match tokio::time::timeout(timeout, call).await {
            Ok(answer) => answer,
            Err(_) => Err(ProtocolError::Timeout {
                peer: addr,
                millis: timeout.as_millis() as u64,
            }),
        };
        answer.map_err(|source| MasterError::Worker {
            worker: worker.id.clone(),
            source,
        })
    }

    /// Splits `specs` into the pages of one `Reserve` or `Commit` frame: at most
    /// `max_locations_per_frame` locations and [`PAGE_BYTES`] of header each, so no frame comes
    /// near the workers' 16 MiB header limit however large the shuffle or long the names.
    pub fn pages(&self, specs: Vec<pb::LocationSpec>) -> Vec<Vec<pb::LocationSpec>> {
        pages(self.config.max_locations_per_frame, specs)
    }

    /// Reserves `specs` of shuffle `key` on `worker`, one page after the other, each within
    /// `reserve_timeout`.
    pub async fn reserve(
        &self,
        worker: &pb::WorkerInfo,
        key: &ShuffleKey,
        specs: Vec<pb::LocationSpec>,
    ) -> MasterResult<()> {
        for locations in self.pages(specs) {
            let header = pb::ReserveHeader {
                shuffle: Some(key.to_pb()),
                locations,
            };
            let frame = OutFrame::new(MessageType::Reserve, 0, &header);
            let sent = Instant::now();
            self.call_worker(worker, frame, MessageType::Ack, self.config.reserve_timeout)
                .await?;
            // A reservation is the same small work on every worker: its round trip shows a
            // worker's link (and load) against its peers', even with one copy per partition.
            let took = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
            if let Some(entry) = self.lock().workers.get_mut(&worker.id) {
                entry.reserve_latency = Some((took, Instant::now()));
            }
        }
        Ok(())
    }

    /// Commits one page of locations (see [`Core::pages`]) of shuffle `key` on `worker`.
    pub async fn commit_page(
        &self,
        worker: &pb::WorkerInfo,
        key: &ShuffleKey,
        locations: Vec<pb::LocationSpec>,
    ) -> MasterResult<pb::CommittedHeader> {
        let header = pb::CommitHeader {
            shuffle: Some(key.to_pb()),
            locations,
        };
        let frame = OutFrame::new(MessageType::Commit, 0, &header);
        let timeout = self.config.commit_timeout;
        self.call_worker(worker, frame, MessageType::Committed, timeout)
            .await?
            .decode_header("committed")
            .map_err(|source| MasterError::Worker {
                worker: worker.id.clone(),
                source,
            })
    }

    /// Gives `worker` no new partitions for `worker_timeout` (a reservation could not reach it),
    /// unless nothing else is left.
    pub fn avoid(&self, worker: &str) {
        if let Some(entry) = self.lock().workers.get_mut(worker) {
            entry.avoid_until = Some(Instant::now() + self.config.worker_timeout);
        }
    }

    /// Asks workers to delete a shuffle (`Some`) or an application; failures are logged.
    pub fn destroy_on(
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
            let core = self.clone();
            let frame = OutFrame::new(MessageType::Destroy, 0, &header);
            tokio::spawn(async move {
                let timeout = core.config.worker_rpc_timeout;
                if let Err(e) = core
                    .call_worker(&worker, frame, MessageType::Ack, timeout)
                    .await
                {
                    tracing::warn!(worker = %worker.id, error = %e, "delete on worker failed");
                }
            });
        }
    }
}

/// Splits `specs` into pages of at most `most` locations and [`PAGE_BYTES`] of header.
fn pages(most: u32, specs: Vec<pb::LocationSpec>) -> Vec<Vec<pb::LocationSpec>> {
    let most = most as usize;
    let mut pages = Vec::new();
    let mut page = Vec::new();
    let mut bytes = 0;
    for spec in specs {
        // The field's tag and length prefix: at most 1 + 5 bytes.
        let len = spec.encoded_len() + 6;
        if !page.is_empty() && (page.len() == most || bytes + len > PAGE_BYTES) {
            pages.push(std::mem::take(&mut page));
            bytes = 0;
        }
        bytes += len;
        page.push(spec);
    }
    if !page.is_empty() {
        pages.push(page);
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(partition: u32, replica: Option<pb::WorkerInfo>) -> pb::LocationSpec {
        pb::LocationSpec {
            partition,
            epoch: 3,
            role: pb::Role::Primary as i32,
            replica,
        }
    }

    #[test]
    fn pages_hold_at_most_the_configured_locations_in_order() {
        let specs: Vec<_> = (0..40_000).map(|p| spec(p, None)).collect();
        let pages = pages(16_384, specs);
        let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![16_384, 16_384, 7_232]);
        let partitions: Vec<u32> = pages.iter().flatten().map(|s| s.partition).collect();
        assert_eq!(partitions, (0..40_000).collect::<Vec<_>>());
        assert!(super::pages(7, Vec::new()).is_empty());
    }

    #[test]
    fn a_page_header_stays_far_below_the_workers_limit_whatever_the_names() {
        // Primaries naming a replica whose every label is as long as registration allows.
        let long = "x".repeat(253);
        let replica = pb::WorkerInfo {
            id: long.clone(),
            host: long.clone(),
            push_port: 65535,
            fetch_port: 65535,
            node: long.clone(),
            zone: long,
            admin_port: 65535,
        };
        let specs: Vec<_> = (0..20_000)
            .map(|p| spec(1_000_000 + p, Some(replica.clone())))
            .collect();
        let pages = pages(16_384, specs);
        assert!(pages.len() > 4, "{} pages", pages.len());
        let key = ShuffleKey::new("x".repeat(255), u32::MAX);
        for locations in pages {
            let header = pb::ReserveHeader {
                shuffle: Some(key.to_pb()),
                locations,
            };
            assert!(header.encoded_len() <= PAGE_BYTES + 300);
            assert!(header.encoded_len() < FrameLimits::default().max_header as usize / 3);
        }
    }
}
