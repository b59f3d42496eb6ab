//! What the master knows of one worker, and when it counts as live.

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
    /// Traffic totals of the last heartbeat, and the throughput since the one before.
    pub traffic: Traffic,
    /// How often the worker heartbeats (it says so when it registers).
    pub heartbeat_interval: Duration,
    /// A reservation on this worker failed to reach it: no new partitions until then.
    pub avoid_until: Option<Instant>,
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
            traffic: Traffic::default(),
            heartbeat_interval,
            avoid_until: None,
        }
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
