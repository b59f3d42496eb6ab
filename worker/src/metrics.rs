//! Every metric the worker exports, declared once. Names follow
//! `sluice_worker_<what>_<unit>`; every series carries `worker="<id>"`.
//!
//! Handles are made once, at start-up, inside [`Telemetry::register`], and kept here: the push
//! and fetch paths only add to an atomic or record into a histogram through them, with no
//! registry lookup and no allocation per request. Gauges that mirror state (memory, partitions,
//! disks) are set by [`collect_on_scrape`] just before each scrape, so the hot path does not
//! keep them up to date.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{
    describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Unit,
};
use sluice_ops::Telemetry;

use crate::shared::Shared;

/// Handles of the worker's metrics, registered in its own [`Telemetry`].
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    /// Bytes of pushed batches taken (from writers and from primaries' forwards).
    pub push_bytes: Counter,
    /// Push frames handled (`Busy` answers are counted apart, in `busy`).
    pub push_requests: Counter,
    /// Bytes of chunks sent to readers.
    pub fetch_bytes: Counter,
    /// Requests served on the fetch port (stream opens and chunk fetches).
    pub fetch_requests: Counter,
    /// From a push frame read in full to its answer (replica forwards included).
    pub push_latency: Histogram,
    /// From a fetch request read to its answer sent (a chunk's body included).
    pub fetch_latency: Histogram,
    /// One flush of a partition's buffer: files opened and both writes completed.
    pub flush_latency: Histogram,
    /// One commit request of the master: every location flushed, sealed and marked.
    pub commit_latency: Histogram,
    /// Frames answered `Busy` (no memory for them within `busy_wait`).
    pub busy: Counter,
    /// Connections refused at the session handshake (no, bad or unknown credentials).
    pub auth_refused_handshake: Counter,
    /// Frames refused to the session that sent them (a control frame from a non-master, an
    /// application's frame naming another application's shuffle).
    pub auth_refused_permission: Counter,
    /// Pushes forwarded to a replica, failed ones and their bytes.
    pub replication_forwards: Counter,
    pub replication_failures: Counter,
    pub replication_forward_bytes: Counter,
    /// Bytes of locations this worker handed over while draining, and took from draining peers.
    pub handed_over_bytes: Counter,
    pub handed_in_bytes: Counter,
    /// Copies a drain handed over, and copies it reported lost.
    pub drain_copies_moved: Counter,
    pub drain_copies_lost: Counter,
    /// Bytes uploaded to the DFS, and bytes of local files moved there to keep `disk_reserve`.
    pub dfs_uploaded_bytes: Counter,
    pub dfs_offloaded_bytes: Counter,
    /// DFS requests retried, and DFS requests that failed after every retry.
    pub dfs_retries: Counter,
    pub dfs_failures: Counter,
    /// Open connections per port, kept up to date as they open and close.
    pub connections_push: Gauge,
    pub connections_fetch: Gauge,
    /// Set before each scrape.
    pub memory_used: Gauge,
    pub memory_budget: Gauge,
    pub active_partitions: Gauge,
    pub active_shuffles: Gauge,
    /// Per data directory, in the order of the config's `data_dirs`.
    pub disks: Vec<DiskGauges>,
    /// 1 for the worker's state (`active` or `decommissioning`), 0 for the other.
    pub state_active: Gauge,
    pub state_decommissioning: Gauge,
    /// Running totals the heartbeat reports to the master (its status page shows throughput
    /// from them), counted whether or not metrics are on.
    pub traffic: Arc<Traffic>,
}

/// The gauges of one data directory (label `disk`: its path).
#[derive(Debug, Clone)]
pub struct DiskGauges {
    /// Bytes of the data and index files Sluice holds there.
    pub used: Gauge,
    /// Files Sluice holds there (data and index).
    pub files: Gauge,
    pub free: Gauge,
    pub capacity: Gauge,
}

/// Bytes taken and served since the worker started.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes of pushed batches taken (primary and replica copies).
    pub pushed: AtomicU64,
    /// Bytes of chunks served to readers.
    pub fetched: AtomicU64,
    /// Microseconds and count of the pushes answered since the last heartbeat took them.
    pub push_micros: AtomicU64,
    pub pushes: AtomicU64,
    /// Per replica push address: microseconds and count of the forwards to it since the last
    /// heartbeat took them.
    pub replica_micros: std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>,
}

impl Traffic {
    /// Counts one push answered after `took`.
    pub fn push_answered(&self, took: std::time::Duration) {
        self.push_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.pushes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one forward to the replica at `replica` that took `took` (answered or not).
    pub fn forwarded(&self, replica: &str, took: std::time::Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let mut replicas = self
            .replica_micros
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match replicas.get_mut(replica) {
            Some((sum, count)) => {
                *sum = sum.saturating_add(micros);
                *count += 1;
            }
            None => {
                replicas.insert(replica.to_string(), (micros, 1));
            }
        }
    }

    /// Each replica's mean forward latency since the last call, and starts a new interval.
    pub fn take_replica_latency(&self) -> Vec<sluice_protocol::pb::ReplicaLatency> {
        let replicas = std::mem::take(
            &mut *self
                .replica_micros
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        replicas
            .into_iter()
            .map(
                |(push_addr, (sum, count))| sluice_protocol::pb::ReplicaLatency {
                    push_addr,
                    latency_us: sum.checked_div(count).unwrap_or(0),
                    forwards: count,
                },
            )
            .collect()
    }

    /// The mean push latency in microseconds since the last call (0 with no push), and starts
    /// a new interval.
    pub fn take_push_latency(&self) -> u64 {
        let micros = self.push_micros.swap(0, Ordering::Relaxed);
        let pushes = self.pushes.swap(0, Ordering::Relaxed);
        micros.checked_div(pushes).unwrap_or(0)
    }
}

/// A data directory as the metrics name it: its path and its write engine.
#[derive(Debug, Clone)]
pub struct DiskLabel {
    pub path: PathBuf,
    /// `io_uring` or `sync`.
    pub engine: &'static str,
}

impl WorkerMetrics {
    /// Declares every worker metric in `telemetry` (so each shows, at 0, before any traffic)
    /// and returns their handles. `disks`: the data directories, with their engines.
    pub fn new(telemetry: &Telemetry, disks: &[DiskLabel]) -> WorkerMetrics {
        telemetry.register(|| {
            describe();
            for disk in disks {
                let path = disk.path.display().to_string();
                metrics::gauge!("sluice_worker_io_engine", "disk" => path, "engine" => disk.engine)
                    .set(1.0);
            }
            WorkerMetrics {
                push_bytes: metrics::counter!("sluice_worker_push_bytes_total"),
                push_requests: metrics::counter!("sluice_worker_push_requests_total"),
                fetch_bytes: metrics::counter!("sluice_worker_fetch_bytes_total"),
                fetch_requests: metrics::counter!("sluice_worker_fetch_requests_total"),
                push_latency: metrics::histogram!("sluice_worker_push_latency_seconds"),
                fetch_latency: metrics::histogram!("sluice_worker_fetch_latency_seconds"),
                flush_latency: metrics::histogram!("sluice_worker_flush_latency_seconds"),
                commit_latency: metrics::histogram!("sluice_worker_commit_latency_seconds"),
                busy: metrics::counter!("sluice_worker_busy_total"),
                auth_refused_handshake: metrics::counter!("sluice_worker_auth_refused_total", "reason" => "handshake"),
                auth_refused_permission: metrics::counter!("sluice_worker_auth_refused_total", "reason" => "permission"),
                replication_forwards: metrics::counter!("sluice_worker_replication_forwards_total"),
                replication_failures: metrics::counter!("sluice_worker_replication_failures_total"),
                replication_forward_bytes: metrics::counter!(
                    "sluice_worker_replication_forward_bytes_total"
                ),
                handed_over_bytes: metrics::counter!("sluice_worker_handover_bytes_total", "direction" => "out"),
                handed_in_bytes: metrics::counter!("sluice_worker_handover_bytes_total", "direction" => "in"),
                drain_copies_moved: metrics::counter!("sluice_worker_drain_copies_total", "outcome" => "moved"),
                drain_copies_lost: metrics::counter!("sluice_worker_drain_copies_total", "outcome" => "lost"),
                dfs_uploaded_bytes: metrics::counter!("sluice_worker_dfs_uploaded_bytes_total"),
                dfs_offloaded_bytes: metrics::counter!("sluice_worker_dfs_offloaded_bytes_total"),
                dfs_retries: metrics::counter!("sluice_worker_dfs_retries_total"),
                dfs_failures: metrics::counter!("sluice_worker_dfs_failures_total"),
                connections_push: metrics::gauge!("sluice_worker_connections", "port" => "push"),
                connections_fetch: metrics::gauge!("sluice_worker_connections", "port" => "fetch"),
                memory_used: metrics::gauge!("sluice_worker_memory_used_bytes"),
                memory_budget: metrics::gauge!("sluice_worker_memory_budget_bytes"),
                active_partitions: metrics::gauge!("sluice_worker_active_partitions"),
                active_shuffles: metrics::gauge!("sluice_worker_active_shuffles"),
                disks: disks
                    .iter()
                    .map(|disk| {
                        let path = disk.path.display().to_string();
                        DiskGauges {
                            used: metrics::gauge!("sluice_worker_disk_used_bytes", "disk" => path.clone()),
                            files: metrics::gauge!("sluice_worker_disk_files", "disk" => path.clone()),
                            free: metrics::gauge!("sluice_worker_disk_free_bytes", "disk" => path.clone()),
                            capacity: metrics::gauge!("sluice_worker_disk_capacity_bytes", "disk" => path),
                        }
                    })
                    .collect(),
                state_active: metrics::gauge!("sluice_worker_state", "state" => "active"),
                state_decommissioning: metrics::gauge!("sluice_worker_state", "state" => "decommissioning"),
                traffic: Arc::default(),
            }
        })
    }

    /// Counts a push frame whose `bytes` of batches were taken.
    pub fn pushed(&self, bytes: u64) {
        self.push_bytes.increment(bytes);
        self.traffic.pushed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` of a chunk sent to a reader.
    pub fn fetched(&self, bytes: u64) {
        self.fetch_bytes.increment(bytes);
        self.traffic.fetched.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The open-connection gauge of a port.
    pub fn connections(&self, port: crate::server::Port) -> &Gauge {
        match port {
            crate::server::Port::Push => &self.connections_push,
            crate::server::Port::Fetch => &self.connections_fetch,
        }
    }
}

/// The `# HELP` lines and units of every worker metric.
fn describe() {
    describe_counter!(
        "sluice_worker_push_bytes_total",
        Unit::Bytes,
        "Bytes of pushed batches taken, from writers and from primaries' replica forwards."
    );
    describe_counter!(
        "sluice_worker_push_requests_total",
        Unit::Count,
        "Push frames handled, whatever their answer (Busy answers are counted in sluice_worker_busy_total)."
    );
    describe_counter!(
        "sluice_worker_fetch_bytes_total",
        Unit::Bytes,
        "Bytes of chunks sent to readers."
    );
    describe_counter!(
        "sluice_worker_fetch_requests_total",
        Unit::Count,
        "Requests served on the fetch port (stream opens and chunk fetches)."
    );
    describe_histogram!(
        "sluice_worker_push_latency_seconds",
        Unit::Seconds,
        "From a push frame read in full to its answer, the forward to the replica included."
    );
    describe_histogram!(
        "sluice_worker_fetch_latency_seconds",
        Unit::Seconds,
        "From a fetch request read to its answer sent, a chunk's body included."
    );
    describe_histogram!(
        "sluice_worker_flush_latency_seconds",
        Unit::Seconds,
        "One flush of a partition buffer to its data directory: files opened, data and index written."
    );
    describe_histogram!(
        "sluice_worker_commit_latency_seconds",
        Unit::Seconds,
        "One commit request of the master: its locations flushed, optionally fsynced, and marked committed."
    );
    describe_gauge!(
        "sluice_worker_memory_used_bytes",
        Unit::Bytes,
        "Memory held by pushed data not yet written (partition buffers, flushes and forwards in flight)."
    );
    describe_gauge!(
        "sluice_worker_memory_budget_bytes",
        Unit::Bytes,
        "The memory budget (memory_budget); above it pushes wait and are answered Busy."
    );
    describe_counter!(
        "sluice_worker_busy_total",
        Unit::Count,
        "Frames answered Busy: no memory for them within busy_wait."
    );
    describe_counter!(
        "sluice_worker_auth_refused_total",
        Unit::Count,
        "Refusals by reason: handshake (a connection without valid credentials), permission (a frame its session may not send)."
    );
    describe_counter!(
        "sluice_worker_replication_forwards_total",
        Unit::Count,
        "Pushes this primary forwarded to a replica."
    );
    describe_counter!(
        "sluice_worker_replication_failures_total",
        Unit::Count,
        "Forwards to a replica that failed (the writer's push is answered with the failure)."
    );
    describe_counter!(
        "sluice_worker_replication_forward_bytes_total",
        Unit::Bytes,
        "Bytes of batches this primary forwarded to replicas."
    );
    describe_counter!(
        "sluice_worker_handover_bytes_total",
        Unit::Bytes,
        "Bytes of committed locations handed over while draining (direction out) or taken from a draining peer (in)."
    );
    describe_counter!(
        "sluice_worker_dfs_uploaded_bytes_total",
        Unit::Bytes,
        "Bytes of committed locations (data and index) uploaded to the DFS tier."
    );
    describe_counter!(
        "sluice_worker_dfs_retries_total",
        Unit::Count,
        "DFS requests retried after a failure (a DFS that is slow or briefly down)."
    );
    describe_counter!(
        "sluice_worker_dfs_failures_total",
        Unit::Count,
        "DFS requests that failed after every retry: each marks the DFS down for 30 s, and new locations go to local disks meanwhile."
    );
    describe_counter!(
        "sluice_worker_dfs_offloaded_bytes_total",
        Unit::Bytes,
        "Bytes of committed local files moved to the DFS because a data directory was below disk_reserve."
    );
    describe_counter!(
        "sluice_worker_drain_copies_total",
        Unit::Count,
        "Copies a drain handed over to a peer (outcome moved) or reported lost at its deadline (lost)."
    );
    describe_gauge!(
        "sluice_worker_active_partitions",
        Unit::Count,
        "Partition locations this worker holds (reserved, buffered, flushed or committed)."
    );
    describe_gauge!(
        "sluice_worker_active_shuffles",
        Unit::Count,
        "Shuffles this worker holds locations of."
    );
    describe_gauge!(
        "sluice_worker_disk_used_bytes",
        Unit::Bytes,
        "Bytes of the data and index files Sluice holds in a data directory (label disk)."
    );
    describe_gauge!(
        "sluice_worker_disk_files",
        Unit::Count,
        "Files Sluice holds in a data directory (label disk): data and index files."
    );
    describe_gauge!(
        "sluice_worker_disk_free_bytes",
        Unit::Bytes,
        "Bytes available to the worker on the file system of a data directory (label disk), as of the last heartbeat."
    );
    describe_gauge!(
        "sluice_worker_disk_capacity_bytes",
        Unit::Bytes,
        "Size of the file system of a data directory (label disk), as of the last heartbeat."
    );
    describe_gauge!(
        "sluice_worker_io_engine",
        Unit::Count,
        "1 for the write engine of each data directory (labels disk, engine: io_uring or sync)."
    );
    describe_gauge!(
        "sluice_worker_state",
        Unit::Count,
        "1 for the worker's current state (label state: active, decommissioning), 0 for the others."
    );
    describe_gauge!(
        "sluice_worker_connections",
        Unit::Count,
        "Open connections per port (label port: push, fetch)."
    );
}

/// Sets the gauges read from the worker's state before every scrape. Cheap: no disk I/O (disk
/// space comes from the heartbeat's last `statvfs`), one pass over the shuffle map.
pub(crate) fn collect_on_scrape(shared: &Arc<Shared>) {
    // A weak reference: the registry belongs to the worker and must not keep it alive.
    let weak = Arc::downgrade(shared);
    shared.telemetry.on_scrape(move || {
        let Some(shared) = weak.upgrade() else { return };
        let m = &shared.metrics;
        let leaving = shared.decommissioning.load(Ordering::Relaxed);
        m.state_active.set(if leaving { 0.0 } else { 1.0 });
        m.state_decommissioning.set(if leaving { 1.0 } else { 0.0 });
        let memory = shared.store.memory();
        m.memory_used.set(memory.used() as f64);
        m.memory_budget.set(memory.budget() as f64);
        let (shuffles, partitions) = shared.store.counts();
        m.active_shuffles.set(shuffles as f64);
        m.active_partitions.set(partitions as f64);
        for (disk, gauges) in shared.store.disks().iter().zip(&m.disks) {
            let usage = disk.usage();
            gauges.used.set(usage.used_bytes as f64);
            gauges.files.set(usage.files as f64);
            gauges.free.set(usage.free_bytes as f64);
            gauges.capacity.set(usage.capacity_bytes as f64);
        }
    });
}

/// Holds one open connection in its port's gauge until dropped.
#[derive(Debug)]
pub(crate) struct OpenConnection(Gauge);

impl OpenConnection {
    pub fn new(gauge: &Gauge) -> OpenConnection {
        gauge.increment(1.0);
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_shows_with_its_help_before_any_traffic() {
        let telemetry = Telemetry::new(true, &[("worker", "w-1")]);
        let disks = [DiskLabel {
            path: "/data/1".into(),
            engine: "sync",
        }];
        let m = WorkerMetrics::new(&telemetry, &disks);
        m.pushed(10);
        let text = telemetry.render().unwrap();
        // Every series is declared with its help and type (the full list of names is checked
        // against a running worker in cli/tests/metrics.rs).
        let typed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(typed.len() >= 23, "{text}");
        for name in typed {
            assert!(name.starts_with("sluice_worker_"), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        }
        assert!(
            text.contains(
                r#"sluice_worker_io_engine{worker="w-1",disk="/data/1",engine="sync"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_worker_push_bytes_total{worker="w-1"} 10"#),
            "{text}"
        );
        assert_eq!(m.traffic.pushed.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn traffic_is_counted_with_metrics_off() {
        let m = WorkerMetrics::new(&Telemetry::off(), &[]);
        m.pushed(5);
        m.fetched(7);
        assert_eq!(m.traffic.pushed.load(Ordering::Relaxed), 5);
        assert_eq!(m.traffic.fetched.load(Ordering::Relaxed), 7);
    }
}
