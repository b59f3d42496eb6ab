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
    pub active_partitions: u64,
    pub state: pb::WorkerState,
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
            active_partitions: 0,
            state: pb::WorkerState::Active,
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

    pub fn accepts_partitions(&self) -> bool {
        self.alive
            && self.state != pb::WorkerState::Decommissioning
            && self.disks.iter().any(|d| d.healthy)
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
