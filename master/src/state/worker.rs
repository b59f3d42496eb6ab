//! What the master knows of one worker, and when it counts as live.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use sluice_protocol::pb;

/// Heartbeats a worker may miss before placement skips it and its id may be taken over.
pub const MISSED_HEARTBEATS: u32 = 2;

#[derive(Debug)]
pub struct WorkerEntry {
    pub info: pb::WorkerInfo,
    pub disks: Vec<pb::DiskStatus>,
    pub last_seen: Instant,
    pub alive: bool,
    pub memory_used: u64,
    pub memory_budget: u64,
    pub active_partitions: u64,
    /// What the worker reports of itself (it says DECOMMISSIONING once told to go).
    pub state: pb::WorkerState,
    /// An operator asked this master to decommission the worker: heartbeat answers tell it so
    /// until it reports DECOMMISSIONING itself.
    pub decommission_requested: bool,
    /// An operator asked this master to drain the worker by then: heartbeat answers tell it so
    /// until it asks for its drain plan.
    pub drain_deadline: Option<Instant>,
    /// Traffic totals of the last heartbeat, and the throughput since the one before.
    pub traffic: Traffic,
    /// How often the worker heartbeats (it says so when it registers).
    pub heartbeat_interval: Duration,
    /// A reservation on this worker failed to reach it: no new partitions until then.
    pub avoid_until: Option<Instant>,
    /// Mean push latency over the last heartbeat interval, in microseconds (0: no push).
    pub push_latency_us: u64,
    /// The latest mean flush latency its heartbeats carried (the slowest disk's, in
    /// microseconds), and when. Heartbeats of an idle interval carry none and leave it; it is
    /// forgotten after [`LATENCY_MEMORY`].
    pub flush_latency: Option<(u64, Instant)>,
    /// What its heartbeats said of its replicas: per replica push address, the latest mean time
    /// it took to ack this worker's forwards (microseconds), and when; forgotten after
    /// [`LATENCY_MEMORY`].
    pub replica_latency: HashMap<String, (u64, Instant)>,
    /// How long this master's last reservation on it took (microseconds), and when; forgotten
    /// after [`LATENCY_MEMORY`].
    pub reserve_latency: Option<(u64, Instant)>,
}

impl WorkerEntry {
    pub fn new(
        info: pb::WorkerInfo,
        disks: Vec<pb::DiskStatus>,
        heartbeat_interval: Duration,
    ) -> WorkerEntry {
        WorkerEntry {
            info,
            disks,
            last_seen: Instant::now(),
            alive: true,
            memory_used: 0,
            memory_budget: 0,
            active_partitions: 0,
            state: pb::WorkerState::Active,
            decommission_requested: false,
            drain_deadline: None,
            traffic: Traffic::default(),
            heartbeat_interval,
            avoid_until: None,
            push_latency_us: 0,
            flush_latency: None,
            replica_latency: HashMap::new(),
            reserve_latency: None,
        }
    }

    /// Takes the latency figures of a heartbeat received at `now`: its disks' (already in
    /// `disks`) and its replicas'. Figures of an interval with no flush or no forward leave the
    /// last ones in place.
    pub fn note_latency(&mut self, now: Instant, replicas: &[pb::ReplicaLatency]) {
        let flush = self.disks.iter().map(|d| d.flush_latency_us).max();
        if let Some(flush) = flush.filter(|us| *us > 0) {
            self.flush_latency = Some((flush, now));
        }
        for replica in replicas.iter().filter(|r| r.forwards > 0) {
            self.replica_latency
                .insert(replica.push_addr.clone(), (replica.latency_us, now));
        }
        self.replica_latency
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < LATENCY_MEMORY);
    }

    /// The latest mean flush latency of its slowest disk, in microseconds (0: none within
    /// [`LATENCY_MEMORY`]).
    pub fn flush_latency_us(&self) -> u64 {
        recent(self.flush_latency)
    }

    /// How long the last reservation on it took, in microseconds (0: none within
    /// [`LATENCY_MEMORY`]).
    pub fn reserve_latency_us(&self) -> u64 {
        recent(self.reserve_latency)
    }

    pub fn free_bytes(&self) -> u64 {
        self.disks
            .iter()
            .filter(|d| d.healthy)
            .map(|d| d.free_bytes)
            .sum()
    }

    /// Whether the worker is leaving: it reported so, or an operator asked this master.
    pub fn decommissioning(&self) -> bool {
        self.decommission_requested || self.state == pb::WorkerState::Decommissioning
    }

    /// `active`, `decommissioning` or `lost` (no heartbeat within `worker_timeout`).
    pub fn state_name(&self) -> &'static str {
        if !self.alive {
            "lost"
        } else if self.decommissioning() {
            "decommissioning"
        } else {
            "active"
        }
    }

    pub fn accepts_partitions(&self) -> bool {
        self.alive && !self.decommissioning() && self.disks.iter().any(|d| d.healthy)
    }

    /// Alive and heard from within the last [`MISSED_HEARTBEATS`] heartbeat intervals. A worker
    /// that is not fresh may be stopped (SIGSTOP, a hung node) long before `worker_timeout`
    /// declares it lost.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.alive
            && now.saturating_duration_since(self.last_seen)
                <= self.heartbeat_interval * MISSED_HEARTBEATS
    }

    /// Whether placement should prefer other workers: not fresh, or a reservation on it failed
    /// recently.
    pub fn is_suspect(&self, now: Instant) -> bool {
        !self.is_fresh(now) || self.avoid_until.is_some_and(|until| now < until)
    }

    /// Whether `info` names the same address (host and push port) as this worker.
    pub fn same_address(&self, info: &pb::WorkerInfo) -> bool {
        self.info.host == info.host && self.info.push_port == info.push_port
    }
}

/// How long a worker's latency figures count after the heartbeat that carried them: a worker
/// that placement avoids gets no new traffic to show it recovered, so its slowness is forgotten
/// after this and it gets partitions again.
pub const LATENCY_MEMORY: Duration = Duration::from_secs(60);

/// A replica slower than this to ack forwarded pushes, on average, is never called slow:
/// loopback and LAN forwards take well under it, so a cluster of idle or fast workers does not
/// flap.
pub const SLOW_REPLICA_FLOOR_US: u64 = 20_000;
/// A reservation slower than this is never called slow: one sample, not a mean, so its floor
/// sits above what a busy machine's scheduling adds to a loopback call.
pub const SLOW_RESERVE_FLOOR_US: u64 = 100_000;
/// A flush slower than this on average is never called slow.
pub const SLOW_FLUSH_FLOOR_US: u64 = 40_000;
/// How many times its peers' median latency makes a worker slow.
pub const SLOW_FACTOR: u64 = 4;

/// A figure taken at `at`, while it counts; else 0.
fn recent(figure: Option<(u64, Instant)>) -> u64 {
    match figure {
        Some((us, at)) if at.elapsed() < LATENCY_MEMORY => us,
        _ => 0,
    }
}

/// The slowest mean ack time any of `workers` reported of `worker` as its replica (0: none).
pub fn replica_latency_us(worker: &WorkerEntry, workers: &[&WorkerEntry]) -> u64 {
    let addr = worker.info.push_addr();
    workers
        .iter()
        .filter_map(|w| w.replica_latency.get(&addr))
        .filter(|(_, at)| at.elapsed() < LATENCY_MEMORY)
        .map(|(us, _)| *us)
        .max()
        .unwrap_or(0)
}

/// Which of `workers` are slow: its disks' mean flush latency, the time it takes to ack
/// forwarded pushes as a replica (as its primaries report it), or the time the master's last
/// reservation on it took, above both a floor and [`SLOW_FACTOR`] times the median of the
/// workers' (those with a figure). A primary's own push latency is not used: it includes the
/// wait for its replica, whose fault it is. A slow worker still works; placement gives new
/// partitions (and revived ones) to its peers while enough of them remain, so a sick disk or
/// link is left before it fails requests.
pub fn slow_workers(workers: &[&WorkerEntry]) -> Vec<bool> {
    fn median(mut values: Vec<u64>) -> u64 {
        values.retain(|v| *v > 0);
        values.sort_unstable();
        // The lower median: with two workers, the faster one sets the bar.
        values
            .get(values.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0)
    }
    let replica: Vec<u64> = workers
        .iter()
        .map(|w| replica_latency_us(w, workers))
        .collect();
    let flush: Vec<u64> = workers.iter().map(|w| w.flush_latency_us()).collect();
    let reserve: Vec<u64> = workers.iter().map(|w| w.reserve_latency_us()).collect();
    let limit = |values: &[u64], floor: u64| floor.max(median(values.to_vec()) * SLOW_FACTOR);
    let (replica_limit, flush_limit, reserve_limit) = (
        limit(&replica, SLOW_REPLICA_FLOOR_US),
        limit(&flush, SLOW_FLUSH_FLOOR_US),
        limit(&reserve, SLOW_RESERVE_FLOOR_US),
    );
    (0..workers.len())
        .map(|i| replica[i] > replica_limit || flush[i] > flush_limit || reserve[i] > reserve_limit)
        .collect()
}

/// The ids of the slow ones among `live` ([`slow_workers`]).
pub fn slow_worker_ids<'a>(live: &[&'a WorkerEntry]) -> HashSet<&'a str> {
    live.iter()
        .zip(slow_workers(live))
        .filter(|(_, slow)| *slow)
        .map(|(w, _)| w.info.id.as_str())
        .collect()
}

/// A worker's traffic as its heartbeats report it: running totals, and the throughput between
/// the last two heartbeats.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    /// When the last totals arrived, and what they were.
    pub sampled: Option<Instant>,
    pub pushed_bytes: u64,
    pub fetched_bytes: u64,
    /// Bytes per second between the last two heartbeats.
    pub push_rate: f64,
    pub fetch_rate: f64,
}

impl Traffic {
    /// Takes the totals of a heartbeat received at `now`. Totals below the last ones (the worker
    /// restarted) start a new series at zero throughput.
    pub fn sample(&mut self, pushed: u64, fetched: u64, now: Instant) {
        let rate = |total: u64, last: u64, seconds: f64| match total.checked_sub(last) {
            Some(delta) if seconds > 0.0 => delta as f64 / seconds,
            _ => 0.0,
        };
        if let Some(last) = self.sampled {
            let seconds = now.saturating_duration_since(last).as_secs_f64();
            self.push_rate = rate(pushed, self.pushed_bytes, seconds);
            self.fetch_rate = rate(fetched, self.fetched_bytes, seconds);
        }
        self.sampled = Some(now);
        self.pushed_bytes = pushed;
        self.fetched_bytes = fetched;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_far_slower_than_its_peers_is_slow() {
        // Worker i at 10.0.0.i:9098; `replicas` lists (replica, µs) this worker reported.
        let worker = |i: u32, flush: u64, replicas: &[(u32, u64)]| {
            let mut w = entry();
            w.info.host = format!("10.0.0.{i}");
            w.info.push_port = 9098;
            w.disks[0].flush_latency_us = flush;
            let replicas: Vec<_> = replicas
                .iter()
                .map(|(r, us)| pb::ReplicaLatency {
                    push_addr: format!("10.0.0.{r}:9098"),
                    latency_us: *us,
                    forwards: 1,
                })
                .collect();
            w.note_latency(Instant::now(), &replicas);
            w
        };
        let slow = |workers: &[WorkerEntry]| slow_workers(&workers.iter().collect::<Vec<_>>());
        // A disk taking 100 ms per flush among peers at 2 ms.
        let cluster = [
            worker(0, 2_000, &[]),
            worker(1, 100_000, &[]),
            worker(2, 1_500, &[]),
        ];
        assert_eq!(slow(&cluster), [false, true, false]);
        // Worker 0 behind a 150 ms link: its primaries wait on it, and it is the one blamed.
        let cluster = [
            worker(0, 1_000, &[(1, 900), (2, 1_100)]),
            worker(1, 1_000, &[(0, 300_000), (2, 800)]),
            worker(2, 1_000, &[(0, 280_000), (1, 1_000)]),
        ];
        assert_eq!(slow(&cluster), [true, false, false]);
        // Two workers: the faster one sets the bar.
        let pair = [worker(0, 0, &[(1, 90_000)]), worker(1, 0, &[(0, 1_000)])];
        assert_eq!(slow(&pair), [false, true]);
        // One copy per partition, so no replica figures: the master's own reservations tell a
        // slow link.
        let mut cluster = [worker(0, 0, &[]), worker(1, 0, &[]), worker(2, 0, &[])];
        for (w, us) in cluster.iter_mut().zip([350_000, 900, 1_200]) {
            w.reserve_latency = Some((us, Instant::now()));
        }
        assert_eq!(slow(&cluster), [true, false, false]);
        // Below the floors nothing is slow, however it compares; idle workers report 0.
        let cluster = [
            worker(0, 30_000, &[(1, 15_000)]),
            worker(1, 100, &[]),
            worker(2, 0, &[]),
        ];
        assert_eq!(slow(&cluster), [false, false, false]);
        // Every worker equally slow (a slow network): none stands out.
        let cluster = [
            worker(0, 0, &[(1, 80_000)]),
            worker(1, 0, &[(2, 90_000)]),
            worker(2, 0, &[(0, 85_000)]),
        ];
        assert_eq!(slow(&cluster), [false, false, false]);
    }

    #[test]
    fn latency_outlives_idle_heartbeats_but_not_its_memory() {
        let mut w = entry();
        let start = Instant::now();
        w.disks[0].flush_latency_us = 150_000;
        let forward = pb::ReplicaLatency {
            push_addr: "10.0.0.9:9098".into(),
            latency_us: 90_000,
            forwards: 3,
        };
        w.note_latency(start, std::slice::from_ref(&forward));
        // An idle interval: no flush, no forward.
        w.disks[0].flush_latency_us = 0;
        w.note_latency(start + Duration::from_secs(1), &[]);
        assert_eq!(w.flush_latency_us(), 150_000);
        assert_eq!(w.replica_latency["10.0.0.9:9098"].0, 90_000);
        // Past the memory the replica figure goes (the flush one ages the same way, by the clock).
        w.note_latency(start + LATENCY_MEMORY + Duration::from_secs(1), &[]);
        assert!(w.replica_latency.is_empty());
    }

    fn entry() -> WorkerEntry {
        let disk = pb::DiskStatus {
            healthy: true,
            ..Default::default()
        };
        WorkerEntry::new(
            pb::WorkerInfo::default(),
            vec![disk],
            Duration::from_secs(1),
        )
    }

    #[test]
    fn a_decommissioning_worker_takes_no_partitions_whoever_asked() {
        let mut asked = entry();
        assert!(asked.accepts_partitions());
        assert_eq!(asked.state_name(), "active");
        asked.decommission_requested = true;
        assert!(!asked.accepts_partitions());
        assert_eq!(asked.state_name(), "decommissioning");

        let mut reported = entry();
        reported.state = pb::WorkerState::Decommissioning;
        assert!(!reported.accepts_partitions());
        reported.alive = false;
        assert_eq!(reported.state_name(), "lost");
    }

    #[test]
    fn throughput_comes_from_successive_totals() {
        let start = Instant::now();
        let mut traffic = Traffic::default();
        traffic.sample(1_000, 0, start);
        assert_eq!(traffic.push_rate, 0.0, "one sample is no rate");
        traffic.sample(3_000, 500, start + Duration::from_secs(2));
        assert_eq!(traffic.push_rate, 1_000.0);
        assert_eq!(traffic.fetch_rate, 250.0);
        // A restarted worker counts from zero again.
        traffic.sample(10, 0, start + Duration::from_secs(3));
        assert_eq!(traffic.push_rate, 0.0);
        assert_eq!(traffic.pushed_bytes, 10);
    }
}
