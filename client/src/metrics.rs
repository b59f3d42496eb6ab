//! The client's metrics: counters of what a process's writers and readers went through.
//!
//! Names follow `sluice_client_<what>_<unit>`. The handles are bound, when [`ClientMetrics::new`]
//! runs, to whatever `metrics` recorder is current: the embedding program's registry when it
//! calls `new` inside its `Telemetry::register`, the global recorder (or none) otherwise. This
//! crate depends on the `metrics` facade only, so the JNI library carries no exporter and no
//! HTTP stack.
//!
//! Handles cannot be read back, so every count also goes to a plain total: [`ClientMetrics::snapshot`]
//! reads them (the benchmark's report, the JVM's Spark metrics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use metrics::{describe_counter, Counter, Unit};

/// The client's counters, cheap to clone (clones count into the same totals).
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    push_bytes: Counter,
    push_retries: Counter,
    revives: Counter,
    fetch_retries: Counter,
    data_lost: Counter,
    totals: Arc<Totals>,
}

#[derive(Debug, Default)]
struct Totals {
    push_bytes: AtomicU64,
    push_retries: AtomicU64,
    revives: AtomicU64,
    fetch_retries: AtomicU64,
    data_lost: AtomicU64,
}

/// The client's totals at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientMetricsSnapshot {
    /// Bytes of batches the workers acknowledged.
    pub push_bytes: u64,
    /// Pushes sent again after a failure (a Busy answer, a failed revive, or to a revived
    /// location).
    pub push_retries: u64,
    /// Revive requests made to the master.
    pub revives: u64,
    /// Fetch requests sent again to the same copy after a failure.
    pub fetch_retries: u64,
    /// Data-loss errors returned to callers.
    pub data_lost: u64,
}

impl ClientMetricsSnapshot {
    /// The names of [`ClientMetricsSnapshot::to_array`]'s values, in its order (the JVM's
    /// `SluiceNative.clientMetrics` answers in this order too).
    pub const NAMES: [&'static str; 5] = [
        "push_bytes",
        "push_retries",
        "revives",
        "fetch_retries",
        "data_lost",
    ];

    /// The totals in the order of [`ClientMetricsSnapshot::NAMES`].
    pub fn to_array(&self) -> [u64; 5] {
        [
            self.push_bytes,
            self.push_retries,
            self.revives,
            self.fetch_retries,
            self.data_lost,
        ]
    }
}

impl Default for ClientMetrics {
    fn default() -> Self {
        ClientMetrics::new()
    }
}

impl ClientMetrics {
    /// Declares the client's metrics (with their `# HELP` lines) in the current recorder and
    /// returns their handles. Call it inside `Telemetry::register` to count into that registry.
    pub fn new() -> ClientMetrics {
        describe_counter!(
            "sluice_client_push_bytes_total",
            Unit::Bytes,
            "Bytes of batches the workers acknowledged to this process's writers."
        );
        describe_counter!(
            "sluice_client_push_retries_total",
            Unit::Count,
            "Pushes sent again after a failure (a Busy answer, a failed revive, or to a revived location)."
        );
        describe_counter!(
            "sluice_client_revives_total",
            Unit::Count,
            "Revive requests made to the master after failed pushes."
        );
        describe_counter!(
            "sluice_client_fetch_retries_total",
            Unit::Count,
            "Fetch requests sent again to the same copy after a failure."
        );
        describe_counter!(
            "sluice_client_data_lost_total",
            Unit::Count,
            "Data-loss errors returned to callers (shuffle output missing, corrupt, short or incomplete)."
        );
        ClientMetrics {
            push_bytes: metrics::counter!("sluice_client_push_bytes_total"),
            push_retries: metrics::counter!("sluice_client_push_retries_total"),
            revives: metrics::counter!("sluice_client_revives_total"),
            fetch_retries: metrics::counter!("sluice_client_fetch_retries_total"),
            data_lost: metrics::counter!("sluice_client_data_lost_total"),
            totals: Arc::default(),
        }
    }

    /// The totals so far.
    pub fn snapshot(&self) -> ClientMetricsSnapshot {
        let t = &self.totals;
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        ClientMetricsSnapshot {
            push_bytes: load(&t.push_bytes),
            push_retries: load(&t.push_retries),
            revives: load(&t.revives),
            fetch_retries: load(&t.fetch_retries),
            data_lost: load(&t.data_lost),
        }
    }

    pub(crate) fn pushed(&self, bytes: u64) {
        self.push_bytes.increment(bytes);
        self.totals.push_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn push_retry(&self) {
        self.push_retries.increment(1);
        self.totals.push_retries.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn revive(&self) {
        self.revives.increment(1);
        self.totals.revives.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fetch_retry(&self) {
        self.fetch_retries.increment(1);
        self.totals.fetch_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `error` if it reports data loss; hands it back.
    pub(crate) fn check_loss(&self, error: crate::ClientError) -> crate::ClientError {
        if error.is_data_loss() {
            self.data_lost.increment(1);
            self.totals.data_lost.fetch_add(1, Ordering::Relaxed);
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_readable_without_a_recorder_and_shared_by_clones() {
        let metrics = ClientMetrics::new();
        let clone = metrics.clone();
        metrics.pushed(100);
        clone.push_retry();
        clone.revive();
        metrics.fetch_retry();
        let lost = crate::ClientError::DataLost {
            shuffle: "a/0".into(),
            partition: 1,
            reason: "short".into(),
        };
        let _ = metrics.check_loss(lost);
        let _ = metrics.check_loss(crate::ClientError::Timeout("not a loss".into()));
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.to_array(), [100, 1, 1, 1, 1]);
        assert_eq!(ClientMetricsSnapshot::NAMES[0], "push_bytes");
    }
}
