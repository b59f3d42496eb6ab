//! Plain snapshots of the master's state for the admin port. Each is built under the state lock
//! by copying a few figures per worker, shuffle or application (nothing per partition or map:
//! shuffles keep running figures), and serialized after the lock is released.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use crate::core::Core;
use crate::state::{ShuffleEntry, WorkerEntry};

/// `GET /api/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// This master's Raft id and gRPC address.
    pub id: u64,
    pub addr: String,
    pub leader: Option<Leader>,
    pub term: u64,
    pub version: &'static str,
    pub workers: WorkerCounts,
    pub shuffles: ShuffleCounts,
    pub apps: usize,
    /// Partitions of every registered shuffle.
    pub partitions: u64,
}

#[derive(Debug, Serialize)]
pub struct Leader {
    pub id: u64,
    pub addr: String,
}

#[derive(Debug, Default, Serialize)]
pub struct WorkerCounts {
    pub total: usize,
    pub active: usize,
    pub decommissioning: usize,
    pub lost: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct ShuffleCounts {
    pub total: usize,
    pub running: usize,
    pub committing: usize,
    pub committed: usize,
    pub failed: usize,
}

/// One worker of `GET /api/workers`.
#[derive(Debug, Serialize)]
pub struct Worker {
    pub id: String,
    pub host: String,
    pub push_port: u32,
    pub fetch_port: u32,
    pub admin_port: u32,
    /// `host:admin_port`, when the worker has an admin port.
    pub admin: Option<String>,
    pub node: String,
    pub zone: String,
    /// `active`, `decommissioning` or `lost`.
    pub state: &'static str,
    pub disks: Vec<Disk>,
    pub memory: Memory,
    /// Partition locations it holds.
    pub partitions: u64,
    /// Throughput between its last two heartbeats, bytes per second.
    pub push_bytes_per_sec: f64,
    pub fetch_bytes_per_sec: f64,
    /// Totals since the worker started, as its last heartbeat said.
    pub pushed_bytes: u64,
    pub fetched_bytes: u64,
    /// Milliseconds since its last heartbeat (or registration).
    pub last_heartbeat_ms: u64,
    /// Mean push latency over its last heartbeat interval, in microseconds (0: no push).
    pub push_latency_us: u64,
    /// The slowest mean time a primary saw it take to ack forwarded pushes as a replica, in
    /// microseconds (0: none).
    pub replica_latency_us: u64,
    /// How long the master's last reservation on it took, in microseconds (0: none lately).
    pub reserve_latency_us: u64,
    /// Far slower flushes, acks as a replica or reservations than its peers': placement gives
    /// new partitions elsewhere while enough other workers remain.
    pub slow: bool,
}

#[derive(Debug, Serialize)]
pub struct Disk {
    pub path: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    /// Of the whole file system (capacity minus free).
    pub used_bytes: u64,
    pub healthy: bool,
    /// Mean flush latency over the worker's last heartbeat interval.
    pub flush_latency_us: u64,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    pub used_bytes: u64,
    pub budget_bytes: u64,
}

/// One shuffle of `GET /api/shuffles`.
#[derive(Debug, Serialize)]
pub struct Shuffle {
    pub app: String,
    pub shuffle_id: u32,
    pub maps_done: u64,
    pub maps: u32,
    /// Bytes the ended maps reported writing.
    pub bytes_written: u64,
    pub partitions: u32,
    /// Highest epoch of any partition, and epochs placed by revives over all partitions.
    pub max_epoch: u32,
    pub revives: u64,
    pub replication: u32,
    /// `running`, `committing`, `committed` or `failed` (committed with data lost).
    pub state: &'static str,
    pub lost_partitions: u32,
    /// Workers holding a copy of some epoch of it.
    pub workers: usize,
}

/// `GET /api/shuffles`: at most `limit` shuffles, running ones first.
#[derive(Debug, Serialize)]
pub struct Shuffles {
    /// Registered shuffles, listed or not.
    pub total: usize,
    pub shuffles: Vec<Shuffle>,
}

/// One application of `GET /api/apps`.
#[derive(Debug, Serialize)]
pub struct App {
    pub id: String,
    pub shuffles: usize,
    /// Milliseconds since the application was last heard from (heartbeat or request).
    pub last_heartbeat_ms: u64,
}

fn millis(since: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX)
}

fn worker(w: &WorkerEntry, live: &[&WorkerEntry], slow: bool, now: Instant) -> Worker {
    Worker {
        id: w.info.id.clone(),
        host: w.info.host.clone(),
        push_port: w.info.push_port,
        fetch_port: w.info.fetch_port,
        admin_port: w.info.admin_port,
        admin: w.info.admin_addr(),
        node: w.info.node.clone(),
        zone: w.info.zone.clone(),
        state: w.state_name(),
        disks: w
            .disks
            .iter()
            .map(|d| Disk {
                path: d.path.clone(),
                capacity_bytes: d.capacity_bytes,
                free_bytes: d.free_bytes,
                used_bytes: d.capacity_bytes.saturating_sub(d.free_bytes),
                healthy: d.healthy,
                flush_latency_us: d.flush_latency_us,
            })
            .collect(),
        memory: Memory {
            used_bytes: w.memory_used,
            budget_bytes: w.memory_budget,
        },
        partitions: w.active_partitions,
        push_bytes_per_sec: w.traffic.push_rate,
        fetch_bytes_per_sec: w.traffic.fetch_rate,
        pushed_bytes: w.traffic.pushed_bytes,
        fetched_bytes: w.traffic.fetched_bytes,
        last_heartbeat_ms: millis(w.last_seen, now),
        push_latency_us: w.push_latency_us,
        replica_latency_us: crate::state::replica_latency_us(w, live),
        reserve_latency_us: w.reserve_latency_us(),
        slow,
    }
}

fn shuffle(key: &sluice_protocol::ShuffleKey, entry: &ShuffleEntry) -> Shuffle {
    let figures = entry.figures;
    Shuffle {
        app: key.app_id.to_string(),
        shuffle_id: key.shuffle_id,
        maps_done: entry.maps.len() as u64,
        maps: entry.shape.num_maps,
        bytes_written: figures.bytes_written,
        partitions: entry.shape.num_partitions,
        max_epoch: figures.max_epoch,
        revives: figures.revives,
        replication: entry.shape.replication,
        state: entry.state_name(),
        lost_partitions: figures.lost_partitions,
        workers: entry.workers.len(),
    }
}

/// Every worker, by id.
pub fn workers(core: &Core) -> Vec<Worker> {
    let now = Instant::now();
    let mut workers: Vec<Worker> = {
        let state = core.lock();
        let live: Vec<&WorkerEntry> = state.workers.values().filter(|w| w.alive).collect();
        let slow = crate::state::slow_worker_ids(&live);
        state
            .workers
            .values()
            .map(|w| worker(w, &live, slow.contains(w.info.id.as_str()), now))
            .collect()
    };
    workers.sort_by(|a, b| a.id.cmp(&b.id));
    workers
}

/// Where a shuffle state sorts: what is still going on first.
fn order(state: &str) -> u8 {
    match state {
        "running" => 0,
        "committing" => 1,
        "failed" => 2,
        _ => 3,
    }
}

/// At most `limit` shuffles: running first, then committing, failed, committed; by key within.
pub fn shuffles(core: &Core, limit: usize) -> Shuffles {
    let mut shuffles: Vec<Shuffle> = {
        let state = core.lock();
        state
            .shuffles
            .iter()
            .map(|(key, entry)| shuffle(key, entry))
            .collect()
    };
    let total = shuffles.len();
    shuffles.sort_by(|a, b| {
        (order(a.state), &a.app, a.shuffle_id).cmp(&(order(b.state), &b.app, b.shuffle_id))
    });
    shuffles.truncate(limit);
    Shuffles { total, shuffles }
}

/// Every application, by id.
pub fn apps(core: &Core) -> Vec<App> {
    let now = Instant::now();
    let mut apps: Vec<App> = {
        let state = core.lock();
        let mut shuffles: HashMap<&str, usize> = HashMap::new();
        for key in state.shuffles.keys() {
            *shuffles.entry(&key.app_id).or_default() += 1;
        }
        state
            .apps
            .iter()
            .map(|(id, seen)| App {
                id: id.to_string(),
                shuffles: shuffles.get(id.as_ref()).copied().unwrap_or(0),
                last_heartbeat_ms: millis(*seen, now),
            })
            .collect()
    };
    apps.sort_by(|a, b| a.id.cmp(&b.id));
    apps
}

/// Who leads, this master, and counts of what the state holds.
pub fn status(core: &Core) -> Status {
    let raft = crate::membership::status(core);
    let mut workers = WorkerCounts::default();
    let mut shuffles = ShuffleCounts::default();
    let (apps, partitions) = {
        let state = core.lock();
        for w in state.workers.values() {
            workers.total += 1;
            match w.state_name() {
                "lost" => workers.lost += 1,
                "decommissioning" => workers.decommissioning += 1,
                _ => workers.active += 1,
            }
        }
        let mut partitions = 0u64;
        for entry in state.shuffles.values() {
            shuffles.total += 1;
            partitions += u64::from(entry.shape.num_partitions);
            match entry.state_name() {
                "running" => shuffles.running += 1,
                "committing" => shuffles.committing += 1,
                "failed" => shuffles.failed += 1,
                _ => shuffles.committed += 1,
            }
        }
        (state.apps.len(), partitions)
    };
    Status {
        id: core.id,
        addr: core.addr.clone(),
        leader: raft.leader.map(|l| Leader {
            id: l.id,
            addr: l.addr,
        }),
        term: raft.term,
        version: env!("CARGO_PKG_VERSION"),
        workers,
        shuffles,
        apps,
        partitions,
    }
}
