//! The Sluice worker: takes pushed batches into memory buffers, appends them to per-partition
//! files, commits them when the master says the shuffle's maps have ended, and serves them back.
//!
//! - [`server`]: the push port (pushes from writers; reserve, commit and destroy from the master)
//!   and the fetch port (open stream, fetch chunk), with their connection limits and timeouts.
//! - [`memory`]: the memory budget and the lease that owns every pushed byte; it turns into TCP
//!   backpressure and `Busy` answers.
//! - [`shared`]: the state every task of a worker shares, and its start-up.
//! - [`storage`]: partition buffers, one write engine (flusher) per data directory, the
//!   append-only data files with their batch indexes, commit, chunked reads, deletion.
//! - [`heartbeat`]: registration with every master and heartbeats with disk and memory figures
//!   and the shuffles held.
//! - [`config`]: the worker configuration, [`WorkerConfig`].
//!
//! A push frame's body is read once into an allocation that carries its memory lease; each
//! partition's slice of it is a zero-copy `Bytes` that sits in the partition's pending list
//! (and in the forward to the replica) until its flusher writes it at the file's tail; when the
//! last slice is dropped the lease gives the memory back.

mod admin;
pub mod config;
pub mod drain;
pub mod error;
pub mod heartbeat;
pub mod memory;
pub mod metrics;
pub mod server;
pub mod shared;
pub mod storage;

use std::sync::Arc;

use sluice_protocol::pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::WorkerConfig;
pub use error::{WorkerError, WorkerResult};

use shared::Shared;
use storage::disk::FlushQueue;

/// The worker's bound listeners. The binary binds them from the config; tests bind
/// `127.0.0.1:0`.
#[derive(Debug)]
pub struct Listeners {
    pub push: TcpListener,
    pub fetch: TcpListener,
    /// The admin port (metrics, health, JSON API); `None`: none.
    pub admin: Option<TcpListener>,
}

/// Opens data directories and engines, then serves until `shutdown` is cancelled.
pub async fn run(
    config: WorkerConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> WorkerResult<()> {
    Worker::start(config, listeners)?.serve(shutdown).await
}

/// Starts a worker's drain: for the binary's SIGTERM.
#[derive(Debug, Clone)]
pub struct Drainer(Arc<Shared>);

impl Drainer {
    /// Drains within `deadline`, then stops the worker (see [`drain`]). `None` when a drain
    /// was already running.
    pub async fn drain(
        &self,
        deadline: std::time::Duration,
        by: &str,
    ) -> Option<drain::DrainReport> {
        drain::drain(self.0.clone(), deadline, by).await
    }
}

/// A worker whose data directories and engines are open and whose ports are bound, not yet
/// serving.
#[derive(Debug)]
pub struct Worker {
    shared: Arc<Shared>,
    listeners: Listeners,
    flush_queues: Vec<FlushQueue>,
}

impl Worker {
    /// Validates the config, opens every data directory and its write engine.
    pub fn start(config: WorkerConfig, listeners: Listeners) -> WorkerResult<Worker> {
        let (shared, flush_queues) = shared::start(config, &listeners)?;
        Ok(Worker {
            shared: Arc::new(shared),
            listeners,
            flush_queues,
        })
    }

    /// Id and addresses, as registered with the master.
    pub fn info(&self) -> &pb::WorkerInfo {
        &self.shared.info
    }

    /// Watches whether a master has accepted the worker's registration (true once the first
    /// has; the worker keeps registering with every master, once serving).
    pub fn registered(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shared.registered.subscribe()
    }

    /// A handle that drains this worker once it serves (see [`drain`]).
    pub fn drainer(&self) -> Drainer {
        Drainer(self.shared.clone())
    }

    /// Serves pushes and fetches and heartbeats until `shutdown` is cancelled, or a drain ends.
    pub async fn serve(self, shutdown: CancellationToken) -> WorkerResult<()> {
        let Worker {
            shared,
            listeners,
            flush_queues,
        } = self;
        let shutdown = shutdown.child_token();
        let _ = shared.stop.set(shutdown.clone());
        for (disk, queue) in shared.store.disks().iter().zip(flush_queues) {
            tokio::spawn(storage::disk::run_flusher(Arc::downgrade(disk), queue));
        }
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
        if let Some(admin) = listeners.admin {
            tracing::info!(addr = ?admin.local_addr().ok(), "worker admin port");
            crate::metrics::collect_on_scrape(&shared);
            let tls = shared
                .tls_server
                .clone()
                .filter(|_| shared.config.tls_admin);
            sluice_ops::admin::spawn_with_tls(
                admin,
                admin::router(shared.clone()),
                tls,
                shutdown.clone(),
            );
        }
        tasks.spawn(relieve_pressure(shared.clone(), shutdown.clone()));
        if shared.store.dfs().is_some() && shared.config.disk_reserve.as_u64() > 0 {
            tasks.spawn(keep_disk_reserve(shared.clone(), shutdown.clone()));
        }
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

/// Flushes every partition's buffer whenever memory use crosses half the budget, and, every
/// half `max_buffer_age`, what has waited longer than that (so a restart loses at most that
/// much of what a partition received last, and a quiet partition pins no memory).
/// With a DFS: every heartbeat interval, moves committed locations of a data directory whose
/// free space is below `disk_reserve` to the DFS until it is above again.
async fn keep_disk_reserve(shared: Arc<Shared>, shutdown: CancellationToken) {
    let reserve = shared.config.disk_reserve.as_u64();
    let mut ticks = tokio::time::interval(shared.config.heartbeat_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        for disk in shared.store.disks() {
            let status = disk.status().await;
            if status.free_bytes >= reserve {
                continue;
            }
            let freed = shared
                .store
                .offload(disk, reserve - status.free_bytes)
                .await;
            if freed > 0 {
                shared.metrics.dfs_offloaded_bytes.increment(freed);
                tracing::info!(disk = %disk.path.display(), freed, free = status.free_bytes, reserve, "below the disk reserve: locations moved to the DFS");
            }
        }
    }
}

async fn relieve_pressure(shared: Arc<Shared>, shutdown: CancellationToken) {
    let age = shared.config.max_buffer_age;
    let mut ticks = tokio::time::interval((age / 2).max(std::time::Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.store.memory().pressure() => shared.store.flush_pending(None),
            _ = ticks.tick() => shared.store.flush_pending(Some(age)),
            _ = shutdown.cancelled() => return,
        }
    }
}
