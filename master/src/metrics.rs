//! Every metric the master exports, declared once. Names follow
//! `sluice_master_<what>_<unit>`; every series carries `master="<id>"`.

use metrics::{describe_gauge, Gauge, Unit};
use sluice_ops::Telemetry;

/// Handles of the master's metrics, registered in its own [`Telemetry`].
#[derive(Debug, Clone)]
pub(crate) struct MasterMetrics {
    /// 1 while this master leads and serves.
    pub leader: Gauge,
}

impl MasterMetrics {
    pub fn new(telemetry: &Telemetry) -> MasterMetrics {
        telemetry.register(|| {
            describe_gauge!(
                "sluice_master_leader",
                Unit::Count,
                "1 while this master leads the Raft group and serves requests, else 0."
            );
            MasterMetrics {
                leader: metrics::gauge!("sluice_master_leader"),
            }
        })
    }
}

/// Sets the gauges read from the master's state before every scrape.
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
    });
}
