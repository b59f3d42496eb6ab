//! Every metric the worker exports, declared once. Names follow
//! `sluice_worker_<what>_<unit>`; every series carries `worker="<id>"`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{describe_gauge, Gauge, Unit};
use sluice_ops::Telemetry;

use crate::shared::Shared;

/// Handles of the worker's metrics, registered in its own [`Telemetry`].
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    /// 1 for the worker's state (`active` or `decommissioning`), 0 for the other.
    pub state_active: Gauge,
    pub state_decommissioning: Gauge,
    /// Running totals the heartbeat reports to the master (its status page shows throughput
    /// from them), counted whether or not metrics are on.
    pub traffic: Arc<Traffic>,
}

/// Bytes taken and served since the worker started.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Bytes of pushed batches taken (primary and replica copies).
    pub pushed: AtomicU64,
    /// Bytes of chunks served to readers.
    pub fetched: AtomicU64,
}

impl WorkerMetrics {
    pub fn new(telemetry: &Telemetry) -> WorkerMetrics {
        telemetry.register(|| {
            describe_gauge!(
                "sluice_worker_state",
                Unit::Count,
                "1 for the worker's current state (label state: active, decommissioning), 0 for the others."
            );
            WorkerMetrics {
                state_active: metrics::gauge!("sluice_worker_state", "state" => "active"),
                state_decommissioning: metrics::gauge!("sluice_worker_state", "state" => "decommissioning"),
                traffic: Arc::default(),
            }
        })
    }
}

/// Sets the gauges read from the worker's state before every scrape.
pub(crate) fn collect_on_scrape(shared: &Arc<Shared>) {
    // A weak reference: the registry belongs to the worker and must not keep it alive.
    let weak = Arc::downgrade(shared);
    shared.telemetry.on_scrape(move || {
        let Some(shared) = weak.upgrade() else { return };
        let m = &shared.metrics;
        let leaving = shared.decommissioning.load(Ordering::Relaxed);
        m.state_active.set(if leaving { 0.0 } else { 1.0 });
        m.state_decommissioning.set(if leaving { 1.0 } else { 0.0 });
    });
}
