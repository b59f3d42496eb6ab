//! The state every task of a worker shares, and how a worker starts: config checked, data
//! directories and their engines opened, what the disks hold recovered.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_protocol::auth::{Keyring, Principal};
use sluice_protocol::frame::FrameLimits;
use sluice_protocol::pb;
use sluice_protocol::rpc::Credentials;
use sluice_protocol::tls::{TlsClient, TlsServer};
use tokio::net::TcpListener;

use crate::config::WorkerConfig;
use crate::error::{WorkerError, WorkerResult};
use crate::memory::MemoryBudget;
use crate::metrics::{DiskLabel, WorkerMetrics};
use crate::storage::disk::{Disk, FlushQueue};
use crate::storage::{self, Store};
use crate::Listeners;

/// Largest frame header accepted (a Reserve or Commit page from the master is the largest).
pub const MAX_HEADER: u32 = 16 << 20;

/// State shared by the worker's tasks.
#[derive(Debug)]
pub struct Shared {
    pub config: WorkerConfig,
    pub info: pb::WorkerInfo,
    pub store: Store,
    pub limits: FrameLimits,
    /// Connections to other workers (replicas this worker forwards to).
    pub peers: sluice_protocol::rpc::RpcPool,
    /// Becomes true once a master (the first of them to answer) has accepted this worker's
    /// registration.
    pub registered: tokio::sync::watch::Sender<bool>,
    /// Set once the worker is told to go (by the master or its own admin port): it is not
    /// ready, and the master places nothing new on it.
    pub decommissioning: std::sync::atomic::AtomicBool,
    /// Set once a drain started (it runs once).
    pub draining: std::sync::atomic::AtomicBool,
    /// When the drain under way must be done (a later, shorter request brings it forward).
    pub drain_until: std::sync::Mutex<Option<std::time::Instant>>,
    /// What the drain did, once it ended.
    pub drain_report: std::sync::Mutex<Option<crate::drain::DrainReport>>,
    /// Stops the worker's tasks; set when it starts serving (a drain ends with it).
    pub stop: std::sync::OnceLock<tokio_util::sync::CancellationToken>,
    /// This worker's metrics registry (served on its admin port) and its handles.
    pub telemetry: std::sync::Arc<sluice_ops::Telemetry>,
    pub metrics: WorkerMetrics,
    /// The cluster secrets from `cluster_secret_file`; `None`: connections are not
    /// authenticated.
    pub keyring: Option<Arc<Keyring>>,
    /// Open application sessions per port and application (`max_connections_per_app`).
    pub app_connections: crate::server::AppCounts,
    /// Connections refused at the handshake (their log lines are rate-limited by this count).
    pub handshakes_refused: std::sync::atomic::AtomicU64,
    /// The certificate the worker's TLS ports present (`tls_cert_file`, `tls_key_file`);
    /// `None` when no port has TLS on.
    pub tls_server: Option<TlsServer>,
    /// How the worker dials masters and other workers with `tls_connect`; `None`: plain TCP.
    pub tls_client: Option<TlsClient>,
}

impl Shared {
    /// Marks the worker as leaving, `by` saying who asked (idempotent). From the next heartbeat
    /// on every master knows it and places nothing new here; the worker keeps serving what it
    /// holds, and is no longer ready. Returns whether it was not leaving already.
    pub fn decommission(&self, by: &str) -> bool {
        let first = !self.decommissioning.swap(true, Ordering::SeqCst);
        if first {
            tracing::warn!(worker = %self.info.id, by, "decommissioning: no new partitions, serving what is held");
        }
        first
    }

    /// Whether the worker was told to go.
    pub fn is_decommissioning(&self) -> bool {
        self.decommissioning.load(Ordering::SeqCst)
    }

    /// Starts a drain within `deadline` (see [`crate::drain`]) unless one runs already; the
    /// worker stops when it ends.
    pub fn start_drain(self: &Arc<Self>, deadline: std::time::Duration, by: &'static str) {
        let shared = self.clone();
        tokio::spawn(async move { crate::drain::drain(shared, deadline, by).await });
    }
}

pub(crate) fn start(
    config: WorkerConfig,
    listeners: &Listeners,
) -> WorkerResult<(Shared, Vec<FlushQueue>)> {
    config.validate().map_err(WorkerError::Config)?;
    let keyring = if config.cluster_secret_file.is_empty() {
        None
    } else {
        let path = std::path::Path::new(&config.cluster_secret_file);
        let keyring = Keyring::load(path)
            .map_err(|e| WorkerError::Config(format!("cluster_secret_file: {e}")))?;
        Some(Arc::new(keyring))
    };
    let (tls_server, tls_client) = tls(&config)?;
    let port = |listener: &TcpListener| {
        listener
            .local_addr()
            .map(|a| u32::from(a.port()))
            .map_err(|e| WorkerError::io("reading the listener address", e))
    };
    let advertised = |configured: u16, bound: u32| {
        if configured == 0 {
            bound
        } else {
            u32::from(configured)
        }
    };
    let push_port = advertised(config.advertise_push_port, port(&listeners.push)?);
    let fetch_port = advertised(config.advertise_fetch_port, port(&listeners.fetch)?);
    let mut info = config.worker_info(push_port, fetch_port);
    if let Some(admin) = &listeners.admin {
        info.admin_port = port(admin)?;
    }
    let id = &info.id;
    sluice_protocol::ids::validate_app_id(id)
        .map_err(|_| WorkerError::Config(format!("id: {id:?} must be [A-Za-z0-9._-]+")))?;
    let mut engines = Vec::new();
    for (i, dir) in config.data_dirs.iter().enumerate() {
        std::fs::create_dir_all(dir).map_err(|e| {
            WorkerError::io(format!("creating data directory {}", dir.display()), e)
        })?;
        let mut engine = storage::engine::open_engine(config.io_engine.into(), &i.to_string())
            .map_err(|e| WorkerError::Config(format!("io_engine: {e}")))?;
        if !config.fault_write_delay.is_empty() {
            let delay = storage::engine::faulty::parse_delay(&config.fault_write_delay)
                .map_err(|e| WorkerError::Config(format!("fault_write_delay: {e}")))?;
            tracing::warn!(dir = %dir.display(), delay = %config.fault_write_delay, "fault injection: every disk write is delayed");
            engine = Arc::new(storage::engine::FaultyEngine::slow(
                engine,
                delay,
                i as u64 + 1,
            ));
        }
        tracing::info!(dir = %dir.display(), engine = engine.kind().as_str(), "data directory ready");
        engines.push((dir.clone(), engine));
    }
    // The metrics come before the disks: each disk records its flushes' latency.
    let telemetry = sluice_ops::Telemetry::new(config.metrics, &[("worker", &info.id)]);
    let labels: Vec<DiskLabel> = engines
        .iter()
        .map(|(path, engine)| DiskLabel {
            path: path.clone(),
            engine: engine.kind().as_str(),
        })
        .collect();
    let metrics = WorkerMetrics::new(&telemetry, &labels);
    let mut disks = Vec::new();
    let mut queues = Vec::new();
    for (dir, engine) in engines {
        let (disk, queue) = Disk::measured(dir, engine, metrics.flush_latency.clone());
        disks.push(Arc::new(disk));
        queues.push(queue);
    }
    let memory = Arc::new(MemoryBudget::new(config.memory_budget.as_u64()));
    let limits = FrameLimits {
        max_header: MAX_HEADER,
        max_body: config.max_frame_body.as_u64() as u32,
    };
    let store = Store::new(disks, memory, config.fsync_on_commit);
    if !config.dfs.is_empty() {
        let dfs = storage::dfs::Dfs::open(&config.dfs, &config.dfs_endpoint, &config.dfs_region)
            .map_err(|e| WorkerError::Config(format!("dfs: {e}")))?;
        tracing::info!(dfs = %config.dfs, "DFS tier configured");
        dfs.count_with(metrics.dfs_retries.clone(), metrics.dfs_failures.clone());
        dfs.set_memory(store.memory().clone());
        store.set_dfs(Arc::new(dfs));
        store.set_disk_reserve(config.disk_reserve.as_u64());
        store.set_dfs_location_size(config.dfs_location_size.as_u64());
    }
    let (committed, flushed) = store.recover();
    if committed + flushed > 0 {
        tracing::info!(
            committed,
            flushed,
            "serving the locations found on disk again after a restart"
        );
    }
    let peers = sluice_protocol::rpc::RpcPool::new(limits, std::time::Duration::from_secs(5))
        .with_credentials(
            keyring
                .as_deref()
                .map(|keyring| Credentials::cluster(Principal::Worker(info.id.clone()), keyring)),
        )
        .with_tls(tls_client.clone());
    let shared = Shared {
        decommissioning: std::sync::atomic::AtomicBool::new(false),
        draining: std::sync::atomic::AtomicBool::new(false),
        drain_until: std::sync::Mutex::new(None),
        drain_report: std::sync::Mutex::new(None),
        stop: std::sync::OnceLock::new(),
        handshakes_refused: std::sync::atomic::AtomicU64::new(0),
        app_connections: crate::server::AppCounts::default(),
        telemetry,
        metrics,
        info,
        store,
        limits,
        peers,
        keyring,
        registered: tokio::sync::watch::channel(false).0,
        tls_server,
        tls_client,
        config,
    };
    Ok((shared, queues))
}

/// The worker's TLS sides from its config: the server side when a port has TLS on, the client
/// side with `tls_connect`.
fn tls(config: &WorkerConfig) -> WorkerResult<(Option<TlsServer>, Option<TlsClient>)> {
    let server = if config.tls_push || config.tls_fetch || config.tls_admin {
        let server = TlsServer::load(
            &config.tls_cert_file,
            &config.tls_key_file,
            config.tls_reload_interval,
        )
        .map_err(|e| WorkerError::Config(e.to_string()))?;
        Some(server)
    } else {
        None
    };
    let client = if config.tls_connect {
        let client = TlsClient::load(
            &config.tls_ca_file,
            &config.tls_server_name,
            config.tls_reload_interval,
        )
        .map_err(|e| WorkerError::Config(e.to_string()))?;
        Some(client)
    } else {
        None
    };
    Ok((server, client))
}
