//! The Sluice worker: takes pushed batches into memory buffers, appends them to per-partition
//! files, commits them when the master says the shuffle's maps have ended, and serves them back.
//!
//! - [`server`]: the push port (pushes from writers; reserve, commit and destroy from the master)
//!   and the fetch port (open stream, fetch chunk).
//! - [`memory`]: the memory budget that turns into TCP backpressure and `Busy` answers.
//! - [`storage`]: partition buffers, one write engine (flusher) per data directory, the
//!   append-only data files with their batch indexes, commit, chunked reads, deletion.
//! - [`heartbeat`]: registration with the master and heartbeats with disk and memory figures.
//! - [`config`]: the worker configuration, [`WorkerConfig`].
//!
//! A push frame's body is read once into a buffer; each partition's slice of it is a zero-copy
//! `Bytes` that sits in the partition's pending list until its flusher writes it at the file's
//! tail, then the memory is released.

pub mod config;
pub mod error;
pub mod heartbeat;
pub mod memory;
pub mod server;
pub mod storage;

use std::sync::Arc;

use sluice_protocol::frame::FrameLimits;
use sluice_protocol::pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::WorkerConfig;
pub use error::{WorkerError, WorkerResult};

use memory::MemoryBudget;
use storage::disk::Disk;
use storage::Store;

/// State shared by the worker's tasks.
#[derive(Debug)]
pub struct Shared {
    pub config: WorkerConfig,
    pub info: pb::WorkerInfo,
    pub store: Store,
    pub limits: FrameLimits,
    /// Connections to other workers (replicas this worker forwards to).
    pub peers: sluice_protocol::rpc::RpcPool,
    /// Becomes true once the master has accepted this worker's registration.
    pub registered: tokio::sync::watch::Sender<bool>,
}

/// The worker's bound listeners. The binary binds them from the config; tests bind
/// `127.0.0.1:0`.
#[derive(Debug)]
pub struct Listeners {
    pub push: TcpListener,
    pub fetch: TcpListener,
}

/// Opens data directories and engines, then serves until `shutdown` is cancelled.
pub async fn run(
    config: WorkerConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> WorkerResult<()> {
    Worker::start(config, listeners)?.serve(shutdown).await
}

/// A worker whose data directories and engines are open and whose ports are bound, not yet
/// serving.
#[derive(Debug)]
pub struct Worker {
    shared: Arc<Shared>,
    listeners: Listeners,
}

impl Worker {
    /// Validates the config, opens every data directory and its write engine.
    pub fn start(config: WorkerConfig, listeners: Listeners) -> WorkerResult<Worker> {
        let shared = Arc::new(start(config, &listeners)?);
        Ok(Worker { shared, listeners })
    }

    /// Id and addresses, as registered with the master.
    pub fn info(&self) -> &pb::WorkerInfo {
        &self.shared.info
    }

    /// Watches whether the master has accepted the worker's registration (true once it has;
    /// the worker keeps registering until then, once serving).
    pub fn registered(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.registered.subscribe()
    }

    /// Serves pushes and fetches and heartbeats until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) -> WorkerResult<()> {
        let Worker { shared, listeners } = self;
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(server::accept_loop(
            listeners.push,
            shared.clone(),
            server::Port::Push,
            shutdown.clone(),
        ));
        tasks.spawn(server::accept_loop(
            listeners.fetch,
            shared.clone(),
            server::Port::Fetch,
            shutdown.clone(),
        ));
        tasks.spawn(heartbeat::run(shared.clone(), shutdown.clone()));
        tasks.spawn(relieve_pressure(shared.clone(), shutdown.clone()));
        tracing::info!(
            worker = %shared.info.id,
            push = %shared.info.push_addr(),
            fetch = %shared.info.fetch_addr(),
            "worker started"
        );
        while tasks.join_next().await.is_some() {}
        tracing::info!(worker = %shared.info.id, "worker stopped");
        Ok(())
    }
}

fn start(config: WorkerConfig, listeners: &Listeners) -> WorkerResult<Shared> {
    config.validate().map_err(WorkerError::Config)?;
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
    let info = config.worker_info(push_port, fetch_port);
    let id = &info.id;
    sluice_protocol::ids::validate_app_id(id)
        .map_err(|_| WorkerError::Config(format!("id: {id:?} must be [A-Za-z0-9._-]+")))?;
    let mut disks = Vec::new();
    for (i, dir) in config.data_dirs.iter().enumerate() {
        std::fs::create_dir_all(dir).map_err(|e| {
            WorkerError::io(format!("creating data directory {}", dir.display()), e)
        })?;
        let engine = storage::engine::open_engine(config.io_engine.into(), &i.to_string())
            .map_err(|e| WorkerError::Config(format!("io_engine: {e}")))?;
        tracing::info!(dir = %dir.display(), engine = engine.kind().as_str(), "data directory ready");
        disks.push(Arc::new(Disk::new(dir.clone(), engine)));
    }
    let memory = Arc::new(MemoryBudget::new(config.memory_budget.as_u64()));
    let limits = FrameLimits {
        max_header: 16 << 20,
        max_body: config.max_frame_body.as_u64() as u32,
    };
    let store = Store::new(disks, memory, config.fsync_on_commit);
    let recovered = store.recover();
    if recovered > 0 {
        tracing::info!(
            locations = recovered,
            "serving committed files again after a restart"
        );
    }
    Ok(Shared {
        info,
        store,
        limits,
        peers: sluice_protocol::rpc::RpcPool::new(limits, std::time::Duration::from_secs(5)),
        registered: tokio::sync::watch::channel(false).0,
        config,
    })
}

/// Flushes every partition's buffer whenever memory use crosses half the budget.
async fn relieve_pressure(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shared.store.memory().pressure() => shared.store.flush_all_pending(),
            _ = shutdown.cancelled() => return,
        }
    }
}
