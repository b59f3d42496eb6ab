//! Every metric the master exports, declared once. Names follow
//! `sluice_master_<what>_<unit>`; every series carries `master="<id>"`.
//!
//! Counters and latencies count what the leader does (only the leader serves requests and runs
//! commits), so summing them over the masters of a cluster counts each action once. Gauges are
//! read from the master's state just before each scrape ([`collect_on_scrape`]); a follower's
//! show its replicated view of the shuffles and its own view of the workers.

use std::time::Instant;

use metrics::{
    describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Unit,
};
use sluice_ops::Telemetry;
use sluice_protocol::pb;

/// Handles of the master's metrics, registered in its own [`Telemetry`].
#[derive(Debug, Clone)]
pub(crate) struct MasterMetrics {
    /// 1 while this master leads and serves.
    pub leader: Gauge,
    /// Workers per state: alive and placing, alive and leaving, lost.
    pub workers_active: Gauge,
    pub workers_decommissioning: Gauge,
    pub workers_lost: Gauge,
    pub shuffles_active: Gauge,
    pub apps_active: Gauge,
    pub partitions_active: Gauge,
    /// Shuffle registrations served, and how long each took (placement and reservations).
    pub registers: Counter,
    pub register_latency: Histogram,
    /// Revives served, and how long each took.
    pub revives: Counter,
    pub revive_latency: Histogram,
    /// Shuffle commits recorded, by result: `ok` when every partition kept what its maps
    /// wrote, `failed` when some lost data.
    pub commits_ok: Counter,
    pub commits_failed: Counter,
    pub commit_latency: Histogram,
    /// Map ends answered.
    pub map_ends: Counter,
    /// Workers this leader declared lost.
    pub workers_lost_total: Counter,
    /// Partitions a commit found short of what their maps wrote.
    pub partitions_lost: Counter,
    /// Calls refused for missing or bad credentials, or a principal that may not make them.
    pub auth_refused: Counter,
}

impl MasterMetrics {
    /// Declares every master metric in `telemetry` (so each shows, at 0, before any request)
    /// and returns their handles.
    pub fn new(telemetry: &Telemetry) -> MasterMetrics {
        telemetry.register(|| {
            describe();
            MasterMetrics {
                leader: metrics::gauge!("sluice_master_leader"),
                workers_active: metrics::gauge!("sluice_master_workers", "state" => "active"),
                workers_decommissioning: metrics::gauge!("sluice_master_workers", "state" => "decommissioning"),
                workers_lost: metrics::gauge!("sluice_master_workers", "state" => "lost"),
                shuffles_active: metrics::gauge!("sluice_master_shuffles_active"),
                apps_active: metrics::gauge!("sluice_master_apps_active"),
                partitions_active: metrics::gauge!("sluice_master_partitions_active"),
                registers: metrics::counter!("sluice_master_registers_total"),
                register_latency: metrics::histogram!("sluice_master_register_latency_seconds"),
                revives: metrics::counter!("sluice_master_revives_total"),
                revive_latency: metrics::histogram!("sluice_master_revive_latency_seconds"),
                commits_ok: metrics::counter!("sluice_master_commits_total", "result" => "ok"),
                commits_failed: metrics::counter!("sluice_master_commits_total", "result" => "failed"),
                commit_latency: metrics::histogram!("sluice_master_commit_latency_seconds"),
                map_ends: metrics::counter!("sluice_master_map_ends_total"),
                workers_lost_total: metrics::counter!("sluice_master_workers_lost_total"),
                partitions_lost: metrics::counter!("sluice_master_partitions_lost_total"),
                auth_refused: metrics::counter!("sluice_master_auth_refused_total"),
            }
        })
    }

    /// Counts a registration served, started at `started`.
    pub fn registered(&self, started: Instant) {
        self.registers.increment(1);
        self.register_latency
            .record(started.elapsed().as_secs_f64());
    }

    /// Counts a revive served, started at `started`.
    pub fn revived(&self, started: Instant) {
        self.revives.increment(1);
        self.revive_latency.record(started.elapsed().as_secs_f64());
    }

    /// Counts a shuffle commit recorded, started at `started`, that found `lost` partitions
    /// short of what their maps wrote.
    pub fn committed(&self, started: Instant, lost: u64) {
        match lost {
            0 => self.commits_ok.increment(1),
            _ => self.commits_failed.increment(1),
        }
        self.partitions_lost.increment(lost);
        self.commit_latency.record(started.elapsed().as_secs_f64());
    }
}

/// The `# HELP` lines and units of every master metric.
fn describe() {
    describe_gauge!(
        "sluice_master_leader",
        Unit::Count,
        "1 while this master leads the Raft group and serves requests, else 0."
    );
    describe_gauge!(
        "sluice_master_workers",
        Unit::Count,
        "Workers this master knows, by state (label state: active, decommissioning, lost)."
    );
    describe_gauge!(
        "sluice_master_shuffles_active",
        Unit::Count,
        "Shuffles registered and not yet removed."
    );
    describe_gauge!(
        "sluice_master_apps_active",
        Unit::Count,
        "Applications heard from within app_timeout (or holding shuffles)."
    );
    describe_gauge!(
        "sluice_master_partitions_active",
        Unit::Count,
        "Partitions of the registered shuffles."
    );
    describe_counter!(
        "sluice_master_registers_total",
        Unit::Count,
        "Shuffle registrations the leader served (a repeated registration counts too)."
    );
    describe_histogram!(
        "sluice_master_register_latency_seconds",
        Unit::Seconds,
        "Time to serve a shuffle registration: placement, reservations on the workers, the log."
    );
    describe_counter!(
        "sluice_master_revives_total",
        Unit::Count,
        "Revives the leader served: partitions moved to a new epoch after a failed push."
    );
    describe_histogram!(
        "sluice_master_revive_latency_seconds",
        Unit::Seconds,
        "Time to serve a revive: placement, reservations on the workers, the log."
    );
    describe_counter!(
        "sluice_master_commits_total",
        Unit::Count,
        "Shuffle commits the leader recorded (label result: ok, or failed when a partition lost data)."
    );
    describe_histogram!(
        "sluice_master_commit_latency_seconds",
        Unit::Seconds,
        "Time from a shuffle's commit start to its results recorded in the log."
    );
    describe_counter!(
        "sluice_master_map_ends_total",
        Unit::Count,
        "Map ends the leader answered (a late or repeated attempt counts too)."
    );
    describe_counter!(
        "sluice_master_auth_refused_total",
        Unit::Count,
        "Calls refused: no or bad credentials, a replay, or a principal that may not make them."
    );
    describe_counter!(
        "sluice_master_workers_lost_total",
        Unit::Count,
        "Workers the leader declared lost (no heartbeat within worker_timeout)."
    );
    describe_counter!(
        "sluice_master_partitions_lost_total",
        Unit::Count,
        "Partitions a commit found short of what their maps wrote: data loss."
    );
}

/// Sets the gauges read from the master's state before every scrape (one pass under its lock).
pub(crate) fn collect_on_scrape(core: &std::sync::Arc<crate::core::Core>) {
    // A weak reference: the registry belongs to the core and must not keep it alive.
    let weak = std::sync::Arc::downgrade(core);
    core.telemetry.on_scrape(move || {
        let Some(core) = weak.upgrade() else { return };
        let m = &core.metrics;
        m.leader.set(if core.leader_check().is_ok() {
            1.0
        } else {
            0.0
        });
        let state = core.lock();
        let (mut active, mut leaving, mut lost) = (0u64, 0u64, 0u64);
        for worker in state.workers.values() {
            match (worker.alive, worker.state) {
                (false, _) => lost += 1,
                (true, pb::WorkerState::Decommissioning) => leaving += 1,
                (true, _) => active += 1,
            }
        }
        m.workers_active.set(active as f64);
        m.workers_decommissioning.set(leaving as f64);
        m.workers_lost.set(lost as f64);
        m.shuffles_active.set(state.shuffles.len() as f64);
        m.apps_active.set(state.apps.len() as f64);
        let partitions: u64 = state
            .shuffles
            .values()
            .map(|entry| u64::from(entry.shape.num_partitions))
            .sum();
        m.partitions_active.set(partitions as f64);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_count_by_result_with_their_lost_partitions_and_latency() {
        let telemetry = Telemetry::new(true, &[("master", "1")]);
        let m = MasterMetrics::new(&telemetry);
        m.committed(Instant::now(), 1);
        m.committed(Instant::now(), 0);
        let text = telemetry.render().unwrap();
        for line in [
            r#"sluice_master_commits_total{master="1",result="ok"} 1"#,
            r#"sluice_master_commits_total{master="1",result="failed"} 1"#,
            r#"sluice_master_partitions_lost_total{master="1"} 1"#,
            "# HELP sluice_master_registers_total ",
            "sluice_master_commit_latency_seconds_bucket",
        ] {
            assert!(text.contains(line), "{line}:\n{text}");
        }
    }
}
